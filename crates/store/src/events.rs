//! Events: what happened to a machine, in order, as Fly's `events` list shows it.

use hangar_types::MachineEvent;
use rusqlite::{params, Connection};

use crate::{Result, Store, StoreError};

pub(crate) fn insert_event(c: &Connection, machine_id: &str, e: &MachineEvent) -> Result<()> {
    c.execute(
        "INSERT INTO events (id, machine_id, type, status, source, timestamp, request)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            e.id,
            machine_id,
            e.kind,
            e.status,
            e.source,
            e.timestamp,
            e.request.as_ref().map(|r| r.to_string())
        ],
    )?;
    Ok(())
}

impl Store {
    /// Appends an event without changing the state.
    pub fn append_event(&self, id: &str, event: &MachineEvent) -> Result<()> {
        self.write(|c| insert_event(c, id, event))
    }

    /// A machine's events, newest first.
    pub fn events(&self, id: &str, limit: usize) -> Result<Vec<MachineEvent>> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT id, type, status, source, timestamp, request FROM events
                 WHERE machine_id = ?1 ORDER BY seq DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![id, limit as i64], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            })?;
            rows.map(|row| {
                let (id, kind, status, source, timestamp, request) = row?;
                let request = request
                    .map(|s| {
                        serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string()))
                    })
                    .transpose()?;
                Ok(MachineEvent {
                    id,
                    kind,
                    status,
                    source,
                    timestamp,
                    request,
                })
            })
            .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::*;

    #[test]
    fn events_keep_their_order_and_request() {
        let (_d, s) = store();
        s.insert_machine(&machine("m1", "web"), &event("launch", "created"))
            .unwrap();
        let mut exit = event("exit", "stopped");
        exit.request = Some(serde_json::json!({"exit_event": {"exit_code": 3}}));
        s.append_event("m1", &exit).unwrap();
        let events = s.events("m1", 10).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0], exit, "newest first, request intact");
        assert_eq!(s.events("m1", 1).unwrap().len(), 1, "the limit holds");
    }
}

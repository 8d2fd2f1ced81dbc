//! State changes: the compare-and-set every lifecycle step goes through, with what it writes
//! alongside (events, the recorded operation, a new version, a memory reservation).

use hangar_types::{MachineConfig, MachineEvent, MachineState};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde_json::Value;

use crate::events::insert_event;
use crate::machines::{is_constraint, machine_in, parse_state};
use crate::versions::insert_version;
use crate::{now_ms, to_json, MachineRecord, NewVersion, Result, Store, StoreError};

/// What a transition does to the recorded operation.
#[derive(Clone, Debug, PartialEq)]
pub enum FlowChange {
    Keep,
    Set(Value),
    Clear,
}

/// Memory a transition claims on the host: the change is refused unless, with the other
/// machines that hold resources, it fits in `capacity_mb`. Checked and written in one
/// transaction, so two machines starting at once cannot both take the last room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub memory_mb: u64,
    pub capacity_mb: u64,
}

/// One state change, applied atomically by [`Store::transition`].
#[derive(Clone, Debug)]
pub struct Transition<'a> {
    pub from: MachineState,
    pub to: MachineState,
    pub events: &'a [MachineEvent],
    pub flow: FlowChange,
    pub restart_count: Option<u32>,
    /// An update's new config, recorded together with the state change.
    pub version: Option<NewVersion<'a>>,
    /// Admission: set when the change makes the machine hold memory it did not hold.
    pub reserve: Option<Reservation>,
}

impl Store {
    /// Applies one state change atomically; see [`Transition`]. Any refusal writes nothing.
    pub fn transition(&self, id: &str, t: Transition<'_>) -> Result<MachineRecord> {
        if !t.from.can_become(t.to) {
            return Err(StoreError::Forbidden {
                from: t.from,
                to: t.to,
            });
        }
        self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current: Option<String> = tx
                .query_row("SELECT state FROM machines WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()?;
            let current = current.ok_or_else(|| StoreError::NotFound(format!("machine {id}")))?;
            let current = parse_state(&current)?;
            if current != t.from {
                return Err(StoreError::StateChanged {
                    expected: t.from,
                    current,
                });
            }
            if let Some(r) = t.reserve {
                let in_use = memory_in_use(&tx, id)?;
                if in_use.saturating_add(r.memory_mb) > r.capacity_mb {
                    return Err(StoreError::InsufficientCapacity {
                        wanted_mb: r.memory_mb,
                        free_mb: r.capacity_mb.saturating_sub(in_use),
                        capacity_mb: r.capacity_mb,
                    });
                }
            }
            let now = now_ms();
            tx.execute(
                "UPDATE machines SET state = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, t.to.as_str(), now],
            )?;
            match &t.flow {
                FlowChange::Keep => {}
                FlowChange::Set(v) => {
                    tx.execute(
                        "UPDATE machines SET flow = ?2 WHERE id = ?1",
                        params![id, v.to_string()],
                    )?;
                }
                FlowChange::Clear => {
                    tx.execute("UPDATE machines SET flow = NULL WHERE id = ?1", [id])?;
                }
            }
            if let Some(n) = t.restart_count {
                tx.execute(
                    "UPDATE machines SET restart_count = ?2 WHERE id = ?1",
                    params![id, i64::from(n)],
                )?;
            }
            if let Some(v) = &t.version {
                let config = to_json(v.config)?;
                let image_ref = to_json(v.image_ref)?;
                let renamed = tx.execute(
                    "UPDATE machines SET instance_id = ?2, config = ?3, image_ref = ?4,
                            name = COALESCE(?5, name) WHERE id = ?1",
                    params![id, v.instance_id, config, image_ref, v.name],
                );
                if is_constraint(&renamed) {
                    return Err(StoreError::Exists(format!(
                        "machine named {:?}",
                        v.name.unwrap_or_default()
                    )));
                }
                renamed?;
                insert_version(&tx, id, v.instance_id, &config, now)?;
            }
            if t.to == MachineState::Destroyed {
                tx.execute("DELETE FROM schedule_seen WHERE machine_id = ?1", [id])?;
            }
            for e in t.events {
                insert_event(&tx, id, e)?;
            }
            let rec = machine_in(&tx, id)?
                .ok_or_else(|| StoreError::NotFound(format!("machine {id}")))?;
            tx.commit()?;
            Ok(rec)
        })
    }
}

/// Memory held by this host's machines other than `except`, as the agent sizes a guest.
fn memory_in_use(c: &Connection, except: &str) -> Result<u64> {
    let mut stmt = c.prepare(
        "SELECT id, state, config FROM machines
         WHERE id != ?1 AND host = (SELECT id FROM host) AND state != 'destroyed'",
    )?;
    let rows = stmt.query_map([except], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut total = 0u64;
    for row in rows {
        let (id, state, config) = row?;
        if !parse_state(&state)?.holds_resources() {
            continue;
        }
        let config: MachineConfig = serde_json::from_str(&config)
            .map_err(|e| StoreError::Corrupt(format!("machine {id} config: {e}")))?;
        total = total.saturating_add(u64::from(config.effective_guest().memory_mb));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use crate::testutil::*;
    use crate::{FlowChange, NewVersion, Reservation, Store, StoreError, Transition};
    use hangar_types::ImageRef;
    use hangar_types::MachineState::*;

    #[test]
    fn transitions_are_compare_and_set_and_table_checked() {
        let (_d, s) = store();
        s.insert_machine(&machine("m1", "one"), &event("launch", "created"))
            .unwrap();
        let flow = serde_json::json!({"op": "start"});
        let m = s
            .transition(
                "m1",
                Transition {
                    events: &[event("start", "starting")],
                    flow: FlowChange::Set(flow.clone()),
                    ..change(Created, Starting)
                },
            )
            .unwrap();
        assert_eq!((m.state, m.flow), (Starting, Some(flow)));
        let stale = s.transition("m1", change(Created, Starting));
        assert!(matches!(
            stale,
            Err(StoreError::StateChanged {
                current: Starting,
                ..
            })
        ));
        let forbidden = s.transition("m1", change(Starting, Destroyed));
        assert!(matches!(forbidden, Err(StoreError::Forbidden { .. })));
        let m = s
            .transition(
                "m1",
                Transition {
                    events: &[event("start", "started")],
                    flow: FlowChange::Clear,
                    restart_count: Some(2),
                    ..change(Starting, Started)
                },
            )
            .unwrap();
        assert_eq!((m.state, m.flow, m.restart_count), (Started, None, 2));
        let events = s.events("m1", 10).unwrap();
        let statuses: Vec<_> = events.iter().map(|e| e.status.as_str()).collect();
        assert_eq!(statuses, ["started", "starting", "created"], "newest first");
        assert!(matches!(
            s.transition("nope", change(Created, Starting)),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn an_update_records_a_new_version_with_its_transition() {
        let (_d, s) = store();
        let first = machine("m1", "web");
        s.insert_machine(&first, &event("launch", "created"))
            .unwrap();
        s.insert_machine(&machine("m2", "taken"), &event("launch", "created"))
            .unwrap();
        let mut config = first.config.clone();
        config.env.insert("V".into(), "2".into());
        let image_ref = ImageRef::default();
        let update = |instance_id, name| Transition {
            events: &[],
            version: Some(NewVersion {
                instance_id,
                config: &config,
                image_ref: &image_ref,
                name: Some(name),
            }),
            ..change(Created, Updating)
        };
        assert!(matches!(
            s.transition("m1", update("v1", "taken")),
            Err(StoreError::Exists(_))
        ));
        assert_eq!(
            s.get_machine("m1").unwrap().unwrap().state,
            Created,
            "a refused rename changes nothing"
        );
        let m = s.transition("m1", update("v2", "web2")).unwrap();
        assert_eq!((m.instance_id.as_str(), m.name.as_str()), ("v2", "web2"));
        assert_eq!(m.config.env["V"], "2");
        let versions = s.versions("m1").unwrap();
        let ids: Vec<_> = versions.iter().map(|v| v.instance_id.as_str()).collect();
        assert_eq!(ids, ["v2", first.instance_id.as_str()], "newest first");
    }

    fn sized(id: &str, memory_mb: u32) -> crate::MachineRecord {
        let mut m = machine(id, id);
        m.config = serde_json::from_value(serde_json::json!({
            "image": "busybox",
            "guest": {"cpu_kind": "shared", "cpus": 1, "memory_mb": memory_mb}
        }))
        .unwrap();
        m
    }

    fn start(memory_mb: u64, capacity_mb: u64) -> Transition<'static> {
        Transition {
            reserve: Some(Reservation {
                memory_mb,
                capacity_mb,
            }),
            ..change(Created, Starting)
        }
    }

    #[test]
    fn a_reservation_counts_machines_that_hold_memory() {
        let (_d, s) = store();
        for id in ["held", "stopped", "new"] {
            s.insert_machine(&sized(id, 256), &event("launch", "created"))
                .unwrap();
        }
        // A machine with no guest is sized as Fly's default, shared-cpu-1x.
        s.insert_machine(&machine("default", "default"), &event("launch", "created"))
            .unwrap();
        let default_mb = u64::from(machine("x", "x").config.effective_guest().memory_mb);
        go(&s, "held", Created, Starting);
        go(&s, "default", Created, Starting);
        go(&s, "stopped", Created, Starting);
        go(&s, "stopped", Starting, Started);
        go(&s, "stopped", Started, Stopping);
        go(&s, "stopped", Stopping, Stopped);

        let capacity = 256 + default_mb + 255;
        let refused = s.transition("new", start(256, capacity));
        match refused {
            Err(StoreError::InsufficientCapacity {
                wanted_mb,
                free_mb,
                capacity_mb,
            }) => assert_eq!((wanted_mb, free_mb, capacity_mb), (256, 255, capacity)),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let m = s.get_machine("new").unwrap().unwrap();
        assert_eq!((m.state, s.events("new", 10).unwrap().len()), (Created, 1));

        let m = s.transition("new", start(256, capacity + 1)).unwrap();
        assert_eq!(m.state, Starting, "exactly full is admitted");
    }

    #[test]
    fn concurrent_starts_never_exceed_capacity() {
        const MACHINES: usize = 24;
        const MEMORY_MB: u64 = 256;
        const CAPACITY_MB: u64 = 5 * MEMORY_MB + 100;
        // Handles of their own, as separate processes would have: the writer lock of one
        // handle does not serialise them, only the database's write transaction does.
        let (dir, first) = store();
        let handles: Vec<_> = (0..3)
            .map(|_| Arc::new(Store::open(&dir.path().join("state.db")).unwrap()))
            .collect();
        let s = &first;
        for i in 0..MACHINES {
            s.insert_machine(
                &sized(&format!("m{i}"), MEMORY_MB as u32),
                &event("launch", "created"),
            )
            .unwrap();
        }
        let gate = Arc::new(Barrier::new(MACHINES));
        let threads: Vec<_> = (0..MACHINES)
            .map(|i| {
                let (s, gate) = (handles[i % handles.len()].clone(), gate.clone());
                std::thread::spawn(move || {
                    gate.wait();
                    s.transition(&format!("m{i}"), start(MEMORY_MB, CAPACITY_MB))
                })
            })
            .collect();
        let mut admitted = 0;
        for t in threads {
            match t.join().unwrap() {
                Ok(_) => admitted += 1,
                Err(StoreError::InsufficientCapacity { .. }) => {}
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert_eq!(admitted, 5, "as many as fit, and no more");
        let starting = s
            .live_machines()
            .unwrap()
            .into_iter()
            .filter(|m| m.state == Starting)
            .count();
        assert_eq!(starting, 5);
    }
}

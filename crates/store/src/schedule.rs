//! The schedule's record of the last period in which it started each scheduled machine, kept
//! here so a restarted server neither starts a machine twice in one period nor skips one.

use std::collections::HashMap;

use rusqlite::params;

use crate::{Result, Store};

impl Store {
    /// The last period seen, by machine id. A destroyed or deleted machine has no entry.
    pub fn schedule_seen(&self) -> Result<HashMap<String, i64>> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT machine_id, period FROM schedule_seen")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Records `period` as the last one seen for a machine that is not destroyed, replacing
    /// what was there. A machine that is gone or destroyed records nothing, so no row outlives
    /// its machine.
    pub fn set_schedule_seen(&self, machine_id: &str, period: i64) -> Result<()> {
        self.write(|c| {
            let n = c.execute(
                "INSERT INTO schedule_seen (machine_id, period)
                 SELECT id, ?2 FROM machines WHERE id = ?1 AND state != 'destroyed'
                 ON CONFLICT (machine_id) DO UPDATE SET period = excluded.period",
                params![machine_id, period],
            )?;
            if n == 0 {
                return Err(crate::StoreError::NotFound(format!("machine {machine_id}")));
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::*;
    use crate::{Store, StoreError};
    use hangar_types::MachineState::*;

    #[test]
    fn periods_seen_survive_a_reopen_and_go_with_their_machine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let s = Store::open(&path).unwrap();
            s.insert_machine(&machine("m1", "one"), &event("launch", "created"))
                .unwrap();
            s.insert_machine(&machine("m2", "two"), &event("launch", "created"))
                .unwrap();
            s.set_schedule_seen("m1", 41).unwrap();
            s.set_schedule_seen("m1", 42).unwrap();
            s.set_schedule_seen("m2", 7).unwrap();
        }
        let s = Store::open(&path).unwrap();
        let seen = s.schedule_seen().unwrap();
        assert_eq!((seen["m1"], seen["m2"], seen.len()), (42, 7, 2));

        go(&s, "m1", Created, Destroying);
        assert!(s.schedule_seen().unwrap().contains_key("m1"));
        go(&s, "m1", Destroying, Destroyed);
        assert!(!s.schedule_seen().unwrap().contains_key("m1"));
        assert!(matches!(
            s.set_schedule_seen("m1", 43),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            s.set_schedule_seen("nope", 1),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(s.schedule_seen().unwrap().len(), 1);
    }
}

//! Machines: the record of each machine, its creation, lookups and listings, and the changes
//! made in place (metadata, cordon). State changes are in `transition`.

use std::collections::BTreeMap;

use hangar_types::{ImageRef, MachineConfig, MachineEvent, MachineState};
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use serde_json::Value;

use crate::events::insert_event;
use crate::versions::insert_version;
use crate::{now_ms, to_json, Result, Store, StoreError};

#[derive(Clone, Debug, PartialEq)]
pub struct MachineRecord {
    pub id: String,
    pub app: String,
    pub name: String,
    pub region: String,
    pub state: MachineState,
    pub instance_id: String,
    pub config: MachineConfig,
    /// The image the config's reference resolved to when this version was made.
    pub image_ref: ImageRef,
    /// Automatic restarts since the last start a user asked for.
    pub restart_count: u32,
    /// The operation under way, recorded before it acts, cleared when it settles; a restarted
    /// agent resumes or rolls back whatever is left here.
    pub flow: Option<Value>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// The proxy routes no traffic to a cordoned machine.
    pub cordoned: bool,
}

/// Where a page of the org-wide machine list starts: after this (updated_at, id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgCursor {
    pub updated_at_ms: i64,
    pub id: String,
}

pub(crate) const MACHINE_COLUMNS: &str =
    "id, app, name, region, state, instance_id, config, image_ref, restart_count, flow, created_at, updated_at, cordoned";
/// The same columns, qualified for a join on `machines m`.
const MACHINE_COLUMNS_M: &str =
    "m.id, m.app, m.name, m.region, m.state, m.instance_id, m.config, m.image_ref, m.restart_count, m.flow, m.created_at, m.updated_at, m.cordoned";

/// A machine row before its JSON columns are decoded (decoding errors are not SQLite errors).
pub(crate) struct RawMachine {
    id: String,
    app: String,
    name: String,
    region: String,
    state: String,
    instance_id: String,
    config: String,
    image_ref: String,
    restart_count: u32,
    flow: Option<String>,
    created_at_ms: i64,
    updated_at_ms: i64,
    cordoned: bool,
}

fn raw_machine(r: &Row<'_>) -> rusqlite::Result<RawMachine> {
    Ok(RawMachine {
        id: r.get(0)?,
        app: r.get(1)?,
        name: r.get(2)?,
        region: r.get(3)?,
        state: r.get(4)?,
        instance_id: r.get(5)?,
        config: r.get(6)?,
        image_ref: r.get(7)?,
        restart_count: r.get(8)?,
        flow: r.get(9)?,
        created_at_ms: r.get(10)?,
        updated_at_ms: r.get(11)?,
        cordoned: r.get(12)?,
    })
}

impl RawMachine {
    fn decode(self) -> Result<MachineRecord> {
        let corrupt = |what: &str, e: serde_json::Error| {
            StoreError::Corrupt(format!("machine {} {what}: {e}", self.id))
        };
        Ok(MachineRecord {
            state: parse_state(&self.state)?,
            config: serde_json::from_str(&self.config).map_err(|e| corrupt("config", e))?,
            image_ref: serde_json::from_str(&self.image_ref)
                .map_err(|e| corrupt("image_ref", e))?,
            flow: self
                .flow
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| corrupt("flow", e))?,
            id: self.id,
            app: self.app,
            name: self.name,
            region: self.region,
            instance_id: self.instance_id,
            restart_count: self.restart_count,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            cordoned: self.cordoned,
        })
    }
}

pub(crate) fn parse_state(s: &str) -> Result<MachineState> {
    MachineState::parse(s)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown machine state {s:?}")))
}

/// Whether a write was refused by a constraint: the live-name index, or an id already taken.
pub(crate) fn is_constraint(res: &rusqlite::Result<usize>) -> bool {
    matches!(res, Err(rusqlite::Error::SqliteFailure(e, _))
        if e.code == rusqlite::ErrorCode::ConstraintViolation)
}

/// The machine `id` as the connection (or its open transaction) sees it.
pub(crate) fn machine_in(c: &Connection, id: &str) -> Result<Option<MachineRecord>> {
    c.query_row(
        &format!("SELECT {MACHINE_COLUMNS} FROM machines WHERE id = ?1"),
        [id],
        raw_machine,
    )
    .optional()?
    .map(RawMachine::decode)
    .transpose()
}

/// Every machine a query's rows name, decoded.
fn machines_where(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<MachineRecord>> {
    let mut stmt = c.prepare(sql)?;
    let rows = stmt.query_map(params, raw_machine)?;
    rows.map(|r| r.map_err(StoreError::from).and_then(RawMachine::decode))
        .collect()
}

impl Store {
    /// Records a new machine, placed on this host, with its first version and its first
    /// event, atomically.
    pub fn insert_machine(&self, m: &MachineRecord, event: &MachineEvent) -> Result<()> {
        let config = to_json(&m.config)?;
        let image_ref = to_json(&m.image_ref)?;
        let flow = m.flow.as_ref().map(|f| f.to_string());
        self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let res = tx.execute(
                &format!(
                    "INSERT INTO machines ({MACHINE_COLUMNS}, host)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
                ),
                params![
                    m.id,
                    m.app,
                    m.name,
                    m.region,
                    m.state.as_str(),
                    m.instance_id,
                    config,
                    image_ref,
                    m.restart_count,
                    flow,
                    m.created_at_ms,
                    m.updated_at_ms,
                    m.cordoned,
                    self.host_id,
                ],
            );
            if is_constraint(&res) {
                return Err(StoreError::Exists(format!(
                    "machine named {:?} in app {:?}",
                    m.name, m.app
                )));
            }
            res?;
            insert_version(&tx, &m.id, &m.instance_id, &config, m.created_at_ms)?;
            insert_event(&tx, &m.id, event)?;
            tx.commit()?;
            Ok(())
        })
    }

    pub fn get_machine(&self, id: &str) -> Result<Option<MachineRecord>> {
        self.read(|c| machine_in(c, id))
    }

    /// An app's machines, oldest first.
    pub fn list_machines(&self, app: &str, include_destroyed: bool) -> Result<Vec<MachineRecord>> {
        self.read(|c| {
            machines_where(
                c,
                &format!(
                    "SELECT {MACHINE_COLUMNS} FROM machines
                     WHERE app = ?1 AND (?2 OR state != 'destroyed') ORDER BY created_at, id"
                ),
                params![app, include_destroyed],
            )
        })
    }

    /// Every machine that is not destroyed, on this host.
    pub fn live_machines(&self) -> Result<Vec<MachineRecord>> {
        self.read(|c| {
            machines_where(
                c,
                &format!(
                    "SELECT {MACHINE_COLUMNS} FROM machines
                     WHERE state != 'destroyed' ORDER BY created_at, id"
                ),
                [],
            )
        })
    }

    /// Live machines with a `config.schedule`, for the scheduler's once-a-second look.
    pub fn scheduled_machines(&self) -> Result<Vec<MachineRecord>> {
        self.read(|c| {
            machines_where(
                c,
                &format!(
                    "SELECT {MACHINE_COLUMNS} FROM machines
                     WHERE state != 'destroyed' AND json_extract(config, '$.schedule') IS NOT NULL"
                ),
                [],
            )
        })
    }

    /// Changes a machine's metadata in place (no new version), optionally only if the machine
    /// is still at `expected_version`. Returns the updated record.
    pub fn update_metadata(
        &self,
        id: &str,
        expected_version: Option<&str>,
        change: impl FnOnce(&mut BTreeMap<String, String>),
    ) -> Result<MachineRecord> {
        self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut rec = machine_in(&tx, id)?
                .ok_or_else(|| StoreError::NotFound(format!("machine {id}")))?;
            if let Some(expected) = expected_version {
                if expected != rec.instance_id {
                    return Err(StoreError::StaleVersion {
                        expected: expected.to_string(),
                        current: rec.instance_id,
                    });
                }
            }
            change(&mut rec.config.metadata);
            let config = to_json(&rec.config)?;
            rec.updated_at_ms = now_ms();
            tx.execute(
                "UPDATE machines SET config = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, config, rec.updated_at_ms],
            )?;
            tx.execute(
                "UPDATE versions SET config = ?2 WHERE instance_id = ?1",
                params![rec.instance_id, config],
            )?;
            tx.commit()?;
            Ok(rec)
        })
    }

    pub fn set_cordoned(&self, id: &str, cordoned: bool) -> Result<()> {
        self.write(|c| {
            let n = c.execute(
                "UPDATE machines SET cordoned = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, cordoned, now_ms()],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("machine {id}")));
            }
            Ok(())
        })
    }

    /// Machines of an organisation in `(updated_at, id)` order, after `cursor`.
    pub fn org_machines(
        &self,
        org_slug: &str,
        cursor: Option<&OrgCursor>,
        include_destroyed: bool,
        limit: usize,
    ) -> Result<Vec<MachineRecord>> {
        let (after_ms, after_id) = match cursor {
            Some(c) => (c.updated_at_ms, c.id.as_str()),
            None => (i64::MIN, ""),
        };
        self.read(|c| {
            machines_where(
                c,
                &format!(
                    "SELECT {MACHINE_COLUMNS_M} FROM machines m JOIN apps a ON a.name = m.app
                     WHERE a.org_slug = ?1 AND (?2 OR m.state != 'destroyed')
                       AND (m.updated_at > ?3 OR (m.updated_at = ?3 AND m.id > ?4))
                     ORDER BY m.updated_at, m.id LIMIT ?5"
                ),
                params![
                    org_slug,
                    include_destroyed,
                    after_ms,
                    after_id,
                    limit as i64
                ],
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::*;
    use crate::{OrgCursor, Store, StoreError};
    use hangar_types::MachineState::*;

    #[test]
    fn names_unique_among_live_machines() {
        let (_d, s) = store();
        s.insert_machine(&machine("m1", "web"), &event("launch", "created"))
            .unwrap();
        assert!(matches!(
            s.insert_machine(&machine("m2", "web"), &event("launch", "created")),
            Err(StoreError::Exists(_))
        ));
        assert!(
            s.get_machine("m2").unwrap().is_none(),
            "a refused insert leaves nothing behind"
        );
        go(&s, "m1", Created, Destroying);
        go(&s, "m1", Destroying, Destroyed);
        s.insert_machine(&machine("m2", "web"), &event("launch", "created"))
            .unwrap();
        assert_eq!(s.list_machines("app", false).unwrap().len(), 1);
        assert_eq!(s.list_machines("app", true).unwrap().len(), 2);
        assert_eq!(s.live_machines().unwrap().len(), 1);
    }

    #[test]
    fn metadata_changes_in_place_with_a_version_precondition() {
        let (_d, s) = store();
        let m = machine("m1", "web");
        s.insert_machine(&m, &event("launch", "created")).unwrap();
        let r = s
            .update_metadata("m1", Some(&m.instance_id), |md| {
                md.insert("k".into(), "v".into());
            })
            .unwrap();
        assert_eq!(r.config.metadata["k"], "v");
        assert_eq!(
            r.instance_id, m.instance_id,
            "metadata makes no new version"
        );
        assert_eq!(s.versions("m1").unwrap()[0].config.metadata["k"], "v");
        let stale = s.update_metadata("m1", Some("old"), |md| {
            md.clear();
        });
        assert!(matches!(stale, Err(StoreError::StaleVersion { .. })));
        assert_eq!(
            s.get_machine("m1").unwrap().unwrap().config.metadata["k"],
            "v"
        );
    }

    #[test]
    fn cordons_and_schedules() {
        let (_d, s) = store();
        let mut m = machine("m1", "web");
        m.config = serde_json::from_str(r#"{"image":"busybox","schedule":"hourly"}"#).unwrap();
        s.insert_machine(&m, &event("launch", "created")).unwrap();
        s.insert_machine(&machine("m2", "db"), &event("launch", "created"))
            .unwrap();
        s.set_cordoned("m1", true).unwrap();
        assert!(s.get_machine("m1").unwrap().unwrap().cordoned);
        assert!(matches!(
            s.set_cordoned("nope", true),
            Err(StoreError::NotFound(_))
        ));
        let scheduled = s.scheduled_machines().unwrap();
        assert_eq!(
            scheduled.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["m1"]
        );
    }

    #[test]
    fn the_org_list_pages_by_update_time() {
        let (_d, s) = store();
        s.create_app(&app("app")).unwrap();
        for (i, id) in ["m1", "m2", "m3"].iter().enumerate() {
            let mut m = machine(id, id);
            m.updated_at_ms = 100 + i as i64;
            s.insert_machine(&m, &event("launch", "created")).unwrap();
        }
        let page = s.org_machines("personal", None, false, 2).unwrap();
        let ids: Vec<_> = page.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["m1", "m2"]);
        let cursor = OrgCursor {
            updated_at_ms: page[1].updated_at_ms,
            id: page[1].id.clone(),
        };
        let rest = s.org_machines("personal", Some(&cursor), false, 2).unwrap();
        assert_eq!(
            rest.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["m3"]
        );
        assert!(s.org_machines("other", None, false, 10).unwrap().is_empty());
    }

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let host = {
            let s = Store::open(&path).unwrap();
            s.create_app(&app("a")).unwrap();
            s.insert_machine(&machine("m1", "one"), &event("launch", "created"))
                .unwrap();
            s.host_id().to_string()
        };
        let s = Store::open(&path).unwrap();
        assert_eq!(
            s.get_machine("m1").unwrap().unwrap().config.image,
            "busybox"
        );
        assert!(s.get_app("a").unwrap().is_some());
        assert_eq!(s.host_id(), host, "the host keeps its id");
    }
}

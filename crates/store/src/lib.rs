//! Host-local state in embedded SQLite: apps, machines, their config versions and events.
//!
//! Every state change goes through [`Store::transition`]: a compare-and-set on the machine's
//! current state, checked against the one transition table ([`MachineState::can_become`]),
//! written together with its events and the operation record in one transaction. What the
//! API acknowledged is on disk (WAL, `synchronous=FULL`) before the answer leaves.

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use hangar_types::{ImageRef, MachineConfig, MachineEvent, MachineState};
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0} not found")]
    NotFound(String),
    /// The machine was not in the state the change expected (someone else changed it first).
    #[error("machine is {current}, not {expected}")]
    StateChanged {
        expected: MachineState,
        current: MachineState,
    },
    /// The transition table forbids the change.
    #[error("a machine cannot go from {from} to {to}")]
    Forbidden {
        from: MachineState,
        to: MachineState,
    },
    /// The machine's version is not the one the caller expected.
    #[error("machine version is {current}, not {expected}")]
    StaleVersion { expected: String, current: String },
    /// Someone else holds the machine's lease.
    #[error("lease currently held by {owner} until {expires_at_ms}")]
    LeaseHeld { owner: String, expires_at_ms: i64 },
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Clone, Debug, PartialEq)]
pub struct AppRecord {
    pub name: String,
    pub id: String,
    /// Assigned by the store on insert.
    pub numeric_id: u64,
    pub org_slug: String,
    pub network: String,
    pub created_at_ms: i64,
}

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

/// A new version of a machine's config, made by an update.
#[derive(Clone, Debug)]
pub struct NewVersion<'a> {
    pub instance_id: &'a str,
    pub config: &'a MachineConfig,
    pub image_ref: &'a ImageRef,
    pub name: Option<&'a str>,
}

/// A recorded version of a machine's config, newest first in listings.
#[derive(Clone, Debug, PartialEq)]
pub struct VersionRecord {
    pub instance_id: String,
    pub config: MachineConfig,
    pub created_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub nonce: String,
    pub owner: String,
    pub description: String,
    pub expires_at_ms: i64,
    /// The machine version it was taken on.
    pub version: String,
}

/// An app secret as stored: the value sealed by the caller (the store never sees plaintext).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRecord {
    pub name: String,
    pub sealed: Vec<u8>,
    pub digest: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Where a page of the org-wide machine list starts: after this (updated_at, id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgCursor {
    pub updated_at_ms: i64,
    pub id: String,
}

/// What a transition does to the recorded operation.
#[derive(Clone, Debug, PartialEq)]
pub enum FlowChange {
    Keep,
    Set(Value),
    Clear,
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
}

/// SQLite allows one writer at a time; reads go through their own connection so they never
/// queue behind a commit's fsync.
pub struct Store {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE apps (
    name        TEXT PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    numeric_id  INTEGER NOT NULL UNIQUE,
    org_slug    TEXT NOT NULL,
    network     TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE machines (
    id            TEXT PRIMARY KEY,
    app           TEXT NOT NULL,
    name          TEXT NOT NULL,
    region        TEXT NOT NULL,
    state         TEXT NOT NULL,
    instance_id   TEXT NOT NULL,
    config        TEXT NOT NULL,
    image_ref     TEXT NOT NULL,
    restart_count INTEGER NOT NULL DEFAULT 0,
    flow          TEXT,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX machines_by_app ON machines(app, created_at);
-- Names are unique among an app's machines that still exist.
CREATE UNIQUE INDEX machines_live_names ON machines(app, name) WHERE state != 'destroyed';
CREATE TABLE versions (
    instance_id TEXT PRIMARY KEY,
    machine_id  TEXT NOT NULL,
    config      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX versions_by_machine ON versions(machine_id, created_at);
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    machine_id TEXT NOT NULL,
    type       TEXT NOT NULL,
    status     TEXT NOT NULL,
    source     TEXT NOT NULL,
    timestamp  INTEGER NOT NULL,
    request    TEXT
);
CREATE INDEX events_by_machine ON events(machine_id, seq);
";

/// Version 2: leases, cordons, app secrets, the org-wide list's order.
const SCHEMA_V2: &str = "
ALTER TABLE machines ADD COLUMN cordoned INTEGER NOT NULL DEFAULT 0;
CREATE INDEX machines_by_update ON machines(updated_at, id);
CREATE TABLE leases (
    machine_id  TEXT PRIMARY KEY,
    nonce       TEXT NOT NULL,
    owner       TEXT NOT NULL,
    description TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    version     TEXT NOT NULL
);
ALTER TABLE apps ADD COLUMN secrets_version INTEGER NOT NULL DEFAULT 0;
CREATE TABLE secrets (
    app        TEXT NOT NULL,
    name       TEXT NOT NULL,
    sealed     BLOB NOT NULL,
    digest     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (app, name)
);
";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn connect(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        let writer = connect(path)?;
        let version: i64 = writer.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version == 0 {
            writer.execute_batch(&format!("BEGIN; {SCHEMA} PRAGMA user_version = 1; COMMIT;"))?;
        }
        if version < 2 {
            writer.execute_batch(&format!(
                "BEGIN; {SCHEMA_V2} PRAGMA user_version = 2; COMMIT;"
            ))?;
        }
        let reader = connect(path)?;
        Ok(Store {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
        })
    }

    fn write<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn)
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    }

    // ---- apps ----

    /// Inserts an app; its `numeric_id` is assigned here and returned.
    pub fn create_app(&self, app: &AppRecord) -> Result<AppRecord> {
        self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let exists: bool = tx
                .query_row("SELECT 1 FROM apps WHERE name = ?1", [&app.name], |_| Ok(true))
                .optional()?
                .unwrap_or(false);
            if exists {
                return Err(StoreError::Exists(format!("app {:?}", app.name)));
            }
            let next: i64 = tx.query_row("SELECT COALESCE(MAX(numeric_id), 0) + 1 FROM apps", [], |r| r.get(0))?;
            tx.execute(
                "INSERT INTO apps (name, id, numeric_id, org_slug, network, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![app.name, app.id, next, app.org_slug, app.network, app.created_at_ms],
            )?;
            tx.commit()?;
            Ok(AppRecord { numeric_id: next as u64, ..app.clone() })
        })
    }

    pub fn get_app(&self, name: &str) -> Result<Option<AppRecord>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT name, id, numeric_id, org_slug, network, created_at FROM apps WHERE name = ?1",
                [name],
                app_from_row,
            )
            .optional()?)
        })
    }

    pub fn list_apps(&self, org_slug: Option<&str>) -> Result<Vec<AppRecord>> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT name, id, numeric_id, org_slug, network, created_at FROM apps
                 WHERE ?1 IS NULL OR org_slug = ?1 ORDER BY name",
            )?;
            let rows = stmt.query_map([org_slug], app_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Deletes an app and everything recorded about its machines. The caller makes sure none
    /// of them is still running.
    pub fn delete_app(&self, name: &str) -> Result<()> {
        self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let ids: Vec<String> = {
                let mut stmt = tx.prepare("SELECT id FROM machines WHERE app = ?1")?;
                let rows = stmt.query_map([name], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            for id in &ids {
                tx.execute("DELETE FROM events WHERE machine_id = ?1", [id])?;
                tx.execute("DELETE FROM versions WHERE machine_id = ?1", [id])?;
                tx.execute("DELETE FROM leases WHERE machine_id = ?1", [id])?;
            }
            tx.execute("DELETE FROM secrets WHERE app = ?1", [name])?;
            tx.execute("DELETE FROM machines WHERE app = ?1", [name])?;
            if tx.execute("DELETE FROM apps WHERE name = ?1", [name])? == 0 {
                return Err(StoreError::NotFound(format!("app {name:?}")));
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Machines of an app that are not destroyed.
    pub fn live_machine_count(&self, app: &str) -> Result<u64> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM machines WHERE app = ?1 AND state != 'destroyed'",
                [app],
                |r| r.get::<_, i64>(0),
            )? as u64)
        })
    }

    // ---- machines ----

    /// Records a new machine, its first version and its first event, atomically.
    pub fn insert_machine(&self, m: &MachineRecord, event: &MachineEvent) -> Result<()> {
        let config = to_json(&m.config)?;
        let image_ref = to_json(&m.image_ref)?;
        let flow = m.flow.as_ref().map(|f| f.to_string());
        self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let res = tx.execute(
                "INSERT INTO machines (id, app, name, region, state, instance_id, config, image_ref,
                                       restart_count, flow, created_at, updated_at, cordoned)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    m.id, m.app, m.name, m.region, m.state.as_str(), m.instance_id, config, image_ref,
                    m.restart_count, flow, m.created_at_ms, m.updated_at_ms, m.cordoned
                ],
            );
            if let Err(rusqlite::Error::SqliteFailure(e, _)) = &res {
                if e.code == rusqlite::ErrorCode::ConstraintViolation {
                    return Err(StoreError::Exists(format!("machine named {:?} in app {:?}", m.name, m.app)));
                }
            }
            res?;
            tx.execute(
                "INSERT INTO versions (instance_id, machine_id, config, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![m.instance_id, m.id, config, m.created_at_ms],
            )?;
            insert_event(&tx, &m.id, event)?;
            tx.commit()?;
            Ok(())
        })
    }

    pub fn get_machine(&self, id: &str) -> Result<Option<MachineRecord>> {
        self.read(|c| {
            c.query_row(
                &format!("SELECT {MACHINE_COLUMNS} FROM machines WHERE id = ?1"),
                [id],
                raw_machine,
            )
            .optional()?
            .map(RawMachine::decode)
            .transpose()
        })
    }

    /// An app's machines, oldest first.
    pub fn list_machines(&self, app: &str, include_destroyed: bool) -> Result<Vec<MachineRecord>> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {MACHINE_COLUMNS} FROM machines WHERE app = ?1 AND (?2 OR state != 'destroyed')
                 ORDER BY created_at, id"
            ))?;
            let rows = stmt.query_map(params![app, include_destroyed], raw_machine)?;
            rows.map(|r| r.map_err(StoreError::from).and_then(RawMachine::decode)).collect()
        })
    }

    /// Every machine that is not destroyed, on this host.
    pub fn live_machines(&self) -> Result<Vec<MachineRecord>> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {MACHINE_COLUMNS} FROM machines WHERE state != 'destroyed' ORDER BY created_at, id"
            ))?;
            let rows = stmt.query_map([], raw_machine)?;
            rows.map(|r| r.map_err(StoreError::from).and_then(RawMachine::decode)).collect()
        })
    }

    /// Live machines with a `config.schedule`, for the scheduler's once-a-second look.
    pub fn scheduled_machines(&self) -> Result<Vec<MachineRecord>> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {MACHINE_COLUMNS} FROM machines
                 WHERE state != 'destroyed' AND json_extract(config, '$.schedule') IS NOT NULL"
            ))?;
            let rows = stmt.query_map([], raw_machine)?;
            rows.map(|r| r.map_err(StoreError::from).and_then(RawMachine::decode))
                .collect()
        })
    }

    /// Applies one state change atomically; see [`Transition`].
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
                if let Err(rusqlite::Error::SqliteFailure(e, _)) = &renamed {
                    if e.code == rusqlite::ErrorCode::ConstraintViolation {
                        return Err(StoreError::Exists(format!("machine named {:?}", v.name.unwrap_or_default())));
                    }
                }
                renamed?;
                tx.execute(
                    "INSERT INTO versions (instance_id, machine_id, config, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![v.instance_id, id, config, now],
                )?;
            }
            for e in t.events {
                insert_event(&tx, id, e)?;
            }
            let rec = tx
                .query_row(
                    &format!("SELECT {MACHINE_COLUMNS} FROM machines WHERE id = ?1"),
                    [id],
                    raw_machine,
                )?
                .decode()?;
            tx.commit()?;
            Ok(rec)
        })
    }

    /// Changes a machine's metadata in place (no new version), optionally only if the machine
    /// is still at `expected_version`. Returns the updated record.
    pub fn update_metadata(
        &self,
        id: &str,
        expected_version: Option<&str>,
        change: impl FnOnce(&mut std::collections::BTreeMap<String, String>),
    ) -> Result<MachineRecord> {
        self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut rec = tx
                .query_row(
                    &format!("SELECT {MACHINE_COLUMNS} FROM machines WHERE id = ?1"),
                    [id],
                    raw_machine,
                )
                .optional()?
                .ok_or_else(|| StoreError::NotFound(format!("machine {id}")))?
                .decode()?;
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

    /// A machine's config versions, newest first.
    pub fn versions(&self, id: &str) -> Result<Vec<VersionRecord>> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT instance_id, config, created_at FROM versions
                 WHERE machine_id = ?1 ORDER BY created_at DESC, rowid DESC",
            )?;
            let rows = stmt.query_map([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            rows.map(|row| {
                let (instance_id, config, created_at_ms) = row?;
                let config = serde_json::from_str(&config)
                    .map_err(|e| StoreError::Corrupt(format!("version {instance_id}: {e}")))?;
                Ok(VersionRecord {
                    instance_id,
                    config,
                    created_at_ms,
                })
            })
            .collect()
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
            let mut stmt = c.prepare(&format!(
                "SELECT {MACHINE_COLUMNS_M} FROM machines m JOIN apps a ON a.name = m.app
                 WHERE a.org_slug = ?1 AND (?2 OR m.state != 'destroyed')
                   AND (m.updated_at > ?3 OR (m.updated_at = ?3 AND m.id > ?4))
                 ORDER BY m.updated_at, m.id LIMIT ?5"
            ))?;
            let rows = stmt.query_map(
                params![
                    org_slug,
                    include_destroyed,
                    after_ms,
                    after_id,
                    limit as i64
                ],
                raw_machine,
            )?;
            rows.map(|r| r.map_err(StoreError::from).and_then(RawMachine::decode))
                .collect()
        })
    }

    // ---- leases ----

    /// The machine's lease, if one is held and has not expired at `now_ms`.
    pub fn lease(&self, id: &str, now_ms: i64) -> Result<Option<LeaseRecord>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT nonce, owner, description, expires_at, version FROM leases
                 WHERE machine_id = ?1 AND expires_at > ?2",
                params![id, now_ms],
                lease_from_row,
            )
            .optional()?)
        })
    }

    /// Takes the machine's lease, or refreshes it when `held_nonce` is the current one.
    /// A lease someone else holds (unexpired) is [`StoreError::LeaseHeld`].
    pub fn acquire_lease(
        &self,
        id: &str,
        held_nonce: Option<&str>,
        lease: &LeaseRecord,
        now_ms: i64,
    ) -> Result<LeaseRecord> {
        self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current = tx
                .query_row(
                    "SELECT nonce, owner, description, expires_at, version FROM leases
                     WHERE machine_id = ?1 AND expires_at > ?2",
                    params![id, now_ms],
                    lease_from_row,
                )
                .optional()?;
            let granted = match current {
                Some(cur) if Some(cur.nonce.as_str()) == held_nonce => LeaseRecord {
                    nonce: cur.nonce,
                    ..lease.clone()
                },
                Some(cur) => {
                    return Err(StoreError::LeaseHeld {
                        owner: cur.owner,
                        expires_at_ms: cur.expires_at_ms,
                    })
                }
                None => lease.clone(),
            };
            tx.execute(
                "INSERT OR REPLACE INTO leases (machine_id, nonce, owner, description, expires_at, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id, granted.nonce, granted.owner, granted.description, granted.expires_at_ms, granted.version],
            )?;
            tx.commit()?;
            Ok(granted)
        })
    }

    /// Releases the lease held with `nonce`. No unexpired lease is `NotFound`; another's
    /// lease is `LeaseHeld`.
    pub fn release_lease(&self, id: &str, nonce: &str, now_ms: i64) -> Result<()> {
        self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current = tx
                .query_row(
                    "SELECT nonce, owner, description, expires_at, version FROM leases
                     WHERE machine_id = ?1 AND expires_at > ?2",
                    params![id, now_ms],
                    lease_from_row,
                )
                .optional()?;
            match current {
                None => return Err(StoreError::NotFound("lease".into())),
                Some(cur) if cur.nonce != nonce => {
                    return Err(StoreError::LeaseHeld {
                        owner: cur.owner,
                        expires_at_ms: cur.expires_at_ms,
                    })
                }
                Some(_) => {}
            }
            tx.execute("DELETE FROM leases WHERE machine_id = ?1", [id])?;
            tx.commit()?;
            Ok(())
        })
    }

    // ---- secrets ----

    /// An app's secrets by name, and the app's secrets version.
    pub fn secrets(&self, app: &str) -> Result<(Vec<SecretRecord>, u64)> {
        self.read(|c| {
            let version: Option<i64> = c
                .query_row(
                    "SELECT secrets_version FROM apps WHERE name = ?1",
                    [app],
                    |r| r.get(0),
                )
                .optional()?;
            let version = version.ok_or_else(|| StoreError::NotFound(format!("app {app:?}")))?;
            let mut stmt = c.prepare(
                "SELECT name, sealed, digest, created_at, updated_at FROM secrets
                 WHERE app = ?1 ORDER BY name",
            )?;
            let rows = stmt.query_map([app], |r| {
                Ok(SecretRecord {
                    name: r.get(0)?,
                    sealed: r.get(1)?,
                    digest: r.get(2)?,
                    created_at_ms: r.get(3)?,
                    updated_at_ms: r.get(4)?,
                })
            })?;
            Ok((rows.collect::<rusqlite::Result<_>>()?, version as u64))
        })
    }

    /// Sets (`Some`) or deletes (`None`) secrets of an app in one step; returns the new
    /// secrets version. Deleting a secret that does not exist is `NotFound` when `strict`.
    pub fn update_secrets(
        &self,
        app: &str,
        changes: &[(String, Option<SecretRecord>)],
        strict: bool,
    ) -> Result<u64> {
        self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let exists: bool = tx
                .query_row("SELECT 1 FROM apps WHERE name = ?1", [app], |_| Ok(true))
                .optional()?
                .unwrap_or(false);
            if !exists {
                return Err(StoreError::NotFound(format!("app {app:?}")));
            }
            for (name, change) in changes {
                match change {
                    Some(s) => {
                        tx.execute(
                            "INSERT INTO secrets (app, name, sealed, digest, created_at, updated_at)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                             ON CONFLICT (app, name) DO UPDATE SET sealed = ?3, digest = ?4, updated_at = ?5",
                            params![app, name, s.sealed, s.digest, s.updated_at_ms],
                        )?;
                    }
                    None => {
                        let n = tx.execute(
                            "DELETE FROM secrets WHERE app = ?1 AND name = ?2",
                            params![app, name],
                        )?;
                        if n == 0 && strict {
                            return Err(StoreError::NotFound(format!("secret {name:?}")));
                        }
                    }
                }
            }
            tx.execute(
                "UPDATE apps SET secrets_version = secrets_version + 1 WHERE name = ?1",
                [app],
            )?;
            let version: i64 = tx.query_row(
                "SELECT secrets_version FROM apps WHERE name = ?1",
                [app],
                |r| r.get(0),
            )?;
            tx.commit()?;
            Ok(version as u64)
        })
    }

    /// Appends an event without changing the state.
    pub fn append_event(&self, id: &str, event: &MachineEvent) -> Result<()> {
        self.write(|c| {
            let tx = c.transaction()?;
            insert_event(&tx, id, event)?;
            tx.commit()?;
            Ok(())
        })
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

const MACHINE_COLUMNS: &str =
    "id, app, name, region, state, instance_id, config, image_ref, restart_count, flow, created_at, updated_at, cordoned";
/// The same columns, qualified for a join on `machines m`.
const MACHINE_COLUMNS_M: &str =
    "m.id, m.app, m.name, m.region, m.state, m.instance_id, m.config, m.image_ref, m.restart_count, m.flow, m.created_at, m.updated_at, m.cordoned";

/// A machine row before its JSON columns are decoded (decoding errors are not SQLite errors).
struct RawMachine {
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

fn lease_from_row(r: &Row<'_>) -> rusqlite::Result<LeaseRecord> {
    Ok(LeaseRecord {
        nonce: r.get(0)?,
        owner: r.get(1)?,
        description: r.get(2)?,
        expires_at_ms: r.get(3)?,
        version: r.get(4)?,
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

fn parse_state(s: &str) -> Result<MachineState> {
    MachineState::parse(s)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown machine state {s:?}")))
}

fn app_from_row(r: &Row<'_>) -> rusqlite::Result<AppRecord> {
    Ok(AppRecord {
        name: r.get(0)?,
        id: r.get(1)?,
        numeric_id: r.get::<_, i64>(2)? as u64,
        org_slug: r.get(3)?,
        network: r.get(4)?,
        created_at_ms: r.get(5)?,
    })
}

fn insert_event(tx: &rusqlite::Transaction<'_>, machine_id: &str, e: &MachineEvent) -> Result<()> {
    tx.execute(
        "INSERT INTO events (id, machine_id, type, status, source, timestamp, request) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![e.id, machine_id, e.kind, e.status, e.source, e.timestamp, e.request.as_ref().map(|r| r.to_string())],
    )?;
    Ok(())
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_types::MachineState::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("state.db")).unwrap();
        (dir, s)
    }

    fn event(kind: &str, status: &str) -> MachineEvent {
        MachineEvent {
            id: hangar_types::new_event_id(),
            kind: kind.into(),
            status: status.into(),
            source: "user".into(),
            timestamp: now_ms(),
            request: None,
        }
    }

    fn machine(id: &str, name: &str) -> MachineRecord {
        MachineRecord {
            id: id.into(),
            app: "app".into(),
            name: name.into(),
            region: "local".into(),
            state: Created,
            instance_id: hangar_types::new_instance_id(),
            config: serde_json::from_str(r#"{"image":"busybox"}"#).unwrap(),
            image_ref: ImageRef::default(),
            restart_count: 0,
            flow: None,
            created_at_ms: now_ms(),
            updated_at_ms: now_ms(),
            cordoned: false,
        }
    }

    fn app(name: &str) -> AppRecord {
        AppRecord {
            name: name.into(),
            id: name.into(),
            numeric_id: 0,
            org_slug: "personal".into(),
            network: "default".into(),
            created_at_ms: 1,
        }
    }

    #[test]
    fn apps() {
        let (_d, s) = store();
        assert_eq!(s.create_app(&app("a")).unwrap().numeric_id, 1);
        assert_eq!(s.create_app(&app("b")).unwrap().numeric_id, 2);
        assert!(matches!(
            s.create_app(&app("a")),
            Err(StoreError::Exists(_))
        ));
        assert_eq!(s.list_apps(Some("personal")).unwrap().len(), 2);
        assert_eq!(s.list_apps(Some("other")).unwrap().len(), 0);
        s.delete_app("a").unwrap();
        assert!(s.get_app("a").unwrap().is_none());
        assert!(matches!(s.delete_app("a"), Err(StoreError::NotFound(_))));
    }

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
                    from: Created,
                    to: Starting,
                    events: &[event("start", "starting")],
                    flow: FlowChange::Set(flow.clone()),
                    restart_count: None,
                    version: None,
                },
            )
            .unwrap();
        assert_eq!((m.state, m.flow), (Starting, Some(flow)));
        let stale = s.transition(
            "m1",
            Transition {
                from: Created,
                to: Starting,
                events: &[],
                flow: FlowChange::Keep,
                restart_count: None,
                version: None,
            },
        );
        assert!(matches!(
            stale,
            Err(StoreError::StateChanged {
                current: Starting,
                ..
            })
        ));
        let forbidden = s.transition(
            "m1",
            Transition {
                from: Starting,
                to: Destroyed,
                events: &[],
                flow: FlowChange::Keep,
                restart_count: None,
                version: None,
            },
        );
        assert!(matches!(forbidden, Err(StoreError::Forbidden { .. })));
        let m = s
            .transition(
                "m1",
                Transition {
                    from: Starting,
                    to: Started,
                    events: &[event("start", "started")],
                    flow: FlowChange::Clear,
                    restart_count: Some(2),
                    version: None,
                },
            )
            .unwrap();
        assert_eq!((m.state, m.flow, m.restart_count), (Started, None, 2));
        let events = s.events("m1", 10).unwrap();
        let statuses: Vec<_> = events.iter().map(|e| e.status.as_str()).collect();
        assert_eq!(statuses, ["started", "starting", "created"], "newest first");
    }

    #[test]
    fn names_unique_among_live_machines() {
        let (_d, s) = store();
        s.insert_machine(&machine("m1", "web"), &event("launch", "created"))
            .unwrap();
        assert!(matches!(
            s.insert_machine(&machine("m2", "web"), &event("launch", "created")),
            Err(StoreError::Exists(_))
        ));
        s.transition(
            "m1",
            Transition {
                from: Created,
                to: Destroying,
                events: &[],
                flow: FlowChange::Keep,
                restart_count: None,
                version: None,
            },
        )
        .unwrap();
        s.transition(
            "m1",
            Transition {
                from: Destroying,
                to: Destroyed,
                events: &[],
                flow: FlowChange::Keep,
                restart_count: None,
                version: None,
            },
        )
        .unwrap();
        s.insert_machine(&machine("m2", "web"), &event("launch", "created"))
            .unwrap();
        assert_eq!(s.list_machines("app", false).unwrap().len(), 1);
        assert_eq!(s.list_machines("app", true).unwrap().len(), 2);
        assert_eq!(s.live_machines().unwrap().len(), 1);
    }

    #[test]
    fn an_update_records_a_new_version_with_its_transition() {
        let (_d, s) = store();
        let first = machine("m1", "web");
        s.insert_machine(&first, &event("launch", "created"))
            .unwrap();
        let mut config = first.config.clone();
        config.env.insert("V".into(), "2".into());
        let m = s
            .transition(
                "m1",
                Transition {
                    from: Created,
                    to: Updating,
                    events: &[event("update", "updating")],
                    flow: FlowChange::Keep,
                    restart_count: None,
                    version: Some(NewVersion {
                        instance_id: "v2",
                        config: &config,
                        image_ref: &ImageRef::default(),
                        name: Some("web2"),
                    }),
                },
            )
            .unwrap();
        assert_eq!((m.instance_id.as_str(), m.name.as_str()), ("v2", "web2"));
        assert_eq!(m.config.env["V"], "2");
        let versions = s.versions("m1").unwrap();
        let ids: Vec<_> = versions.iter().map(|v| v.instance_id.as_str()).collect();
        assert_eq!(ids, ["v2", first.instance_id.as_str()], "newest first");
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
    fn leases_are_exclusive_until_they_expire() {
        let (_d, s) = store();
        s.insert_machine(&machine("m1", "web"), &event("launch", "created"))
            .unwrap();
        let lease = |nonce: &str, until: i64| LeaseRecord {
            nonce: nonce.into(),
            owner: "me".into(),
            description: String::new(),
            expires_at_ms: until,
            version: "v".into(),
        };
        s.acquire_lease("m1", None, &lease("a", 1_000), 0).unwrap();
        assert!(matches!(
            s.acquire_lease("m1", None, &lease("b", 2_000), 10),
            Err(StoreError::LeaseHeld { .. })
        ));
        let refreshed = s
            .acquire_lease("m1", Some("a"), &lease("ignored", 5_000), 10)
            .unwrap();
        assert_eq!(
            (refreshed.nonce.as_str(), refreshed.expires_at_ms),
            ("a", 5_000)
        );
        assert!(matches!(
            s.release_lease("m1", "b", 20),
            Err(StoreError::LeaseHeld { .. })
        ));
        assert_eq!(
            s.lease("m1", 4_999).unwrap().map(|l| l.nonce),
            Some("a".into())
        );
        assert!(
            s.lease("m1", 5_000).unwrap().is_none(),
            "expired leases stop counting"
        );
        s.acquire_lease("m1", None, &lease("c", 9_000), 6_000)
            .unwrap();
        s.release_lease("m1", "c", 6_001).unwrap();
        assert!(matches!(
            s.release_lease("m1", "c", 6_002),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn secrets_are_versioned_per_app() {
        let (_d, s) = store();
        s.create_app(&app("app")).unwrap();
        let secret = |name: &str| SecretRecord {
            name: name.into(),
            sealed: vec![1, 2, 3],
            digest: "d".into(),
            created_at_ms: 1,
            updated_at_ms: 1,
        };
        let v = s
            .update_secrets(
                "app",
                &[
                    ("A".into(), Some(secret("A"))),
                    ("B".into(), Some(secret("B"))),
                ],
                true,
            )
            .unwrap();
        assert_eq!(v, 1);
        let v = s
            .update_secrets("app", &[("A".into(), None)], true)
            .unwrap();
        assert_eq!(v, 2);
        let (list, version) = s.secrets("app").unwrap();
        assert_eq!((list.len(), list[0].name.as_str(), version), (1, "B", 2));
        assert!(matches!(
            s.update_secrets("app", &[("NOPE".into(), None)], true),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            s.secrets("app").unwrap().1,
            2,
            "a refused change bumps nothing"
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
    fn a_version_1_database_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(&format!("BEGIN; {SCHEMA} PRAGMA user_version = 1; COMMIT;"))
                .unwrap();
            c.execute(
                "INSERT INTO apps (name, id, numeric_id, org_slug, network, created_at)
                 VALUES ('a', 'a', 1, 'personal', 'default', 1)",
                [],
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.secrets("a").unwrap().1, 0);
        s.insert_machine(&machine("m1", "one"), &event("launch", "created"))
            .unwrap();
        assert!(!s.get_machine("m1").unwrap().unwrap().cordoned);
    }

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let s = Store::open(&path).unwrap();
            s.create_app(&app("a")).unwrap();
            s.insert_machine(&machine("m1", "one"), &event("launch", "created"))
                .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(
            s.get_machine("m1").unwrap().unwrap().config.image,
            "busybox"
        );
        assert!(s.get_app("a").unwrap().is_some());
    }
}

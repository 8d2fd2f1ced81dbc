//! Host state in embedded SQLite: apps, machines, their config versions and events, leases,
//! secrets, and the schedule's record of periods seen.
//!
//! Every state change goes through [`Store::transition`]: a compare-and-set on the machine's
//! current state, checked against the one transition table ([`MachineState::can_become`]),
//! written together with its events and the operation record in one transaction. What the
//! API acknowledged is on disk (WAL, `synchronous=FULL`) before the answer leaves.
//!
//! What many hosts will share (apps, names, placement, leases) is also reachable through
//! [`ClusterState`], the contract a multi-host backend implements; the rest stays host-local.
//!
//! One file per resource (apps, machines, their transitions, versions, leases, secrets,
//! events, the schedule); `schema` holds the tables and their migrations.
//!
//! [`MachineState::can_become`]: hangar_types::MachineState::can_become

mod apps;
mod cluster;
mod error;
mod events;
mod leases;
mod machines;
mod schedule;
mod schema;
mod secrets;
mod transition;
mod versions;

#[cfg(test)]
mod testutil;

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

pub use apps::AppRecord;
pub use cluster::{ClusterState, Placement};
pub use error::{Result, StoreError};
pub use leases::LeaseRecord;
pub use machines::{MachineRecord, OrgCursor};
pub use secrets::SecretRecord;
pub use transition::{FlowChange, Reservation, Transition};
pub use versions::{NewVersion, VersionRecord};

/// SQLite allows one writer at a time; reads go through their own connection so they never
/// queue behind a commit's fsync.
pub struct Store {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    /// This host's id, made once when the database is created (or upgraded to have hosts).
    host_id: String,
}

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
        let mut writer = connect(path)?;
        schema::migrate(&mut writer)?;
        let host_id = schema::host_id(&writer)?;
        let reader = connect(path)?;
        Ok(Store {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            host_id,
        })
    }

    /// The id of the host this database belongs to; machines created here are placed on it.
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    fn write<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn)
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Whether a row exists for `sql` (a `SELECT 1 ...` with one parameter).
fn exists(c: &Connection, sql: &str, param: &str) -> Result<bool> {
    use rusqlite::OptionalExtension;
    Ok(c.query_row(sql, [param], |_| Ok(())).optional()?.is_some())
}

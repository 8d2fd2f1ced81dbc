//! Versions: every config a machine has had, one per create or update.

use hangar_types::{ImageRef, MachineConfig};
use rusqlite::{params, Connection};

use crate::{Result, Store, StoreError};

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

/// Records a version; `config` is already JSON (the caller writes the same text to the machine).
pub(crate) fn insert_version(
    c: &Connection,
    machine_id: &str,
    instance_id: &str,
    config: &str,
    created_at_ms: i64,
) -> Result<()> {
    c.execute(
        "INSERT INTO versions (instance_id, machine_id, config, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![instance_id, machine_id, config, created_at_ms],
    )?;
    Ok(())
}

impl Store {
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
}

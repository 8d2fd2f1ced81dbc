//! The tables, and the migrations that bring a database written by an older Hangar up to date.
//! A migration is appended, never edited: users' databases went through the old ones.

use rusqlite::Connection;

use crate::{Result, StoreError};

/// Version 1: apps, machines, versions, events.
pub(crate) const SCHEMA_V1: &str = "
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
pub(crate) const SCHEMA_V2: &str = "
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

/// Version 3: this host's id and each machine's host (every machine so far is on this one),
/// and the schedule's periods seen, so a restart neither repeats nor skips a scheduled start.
const SCHEMA_V3: &str = "
CREATE TABLE host (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    id        TEXT NOT NULL
);
INSERT INTO host (singleton, id) VALUES (1, lower(hex(randomblob(7))));
ALTER TABLE machines ADD COLUMN host TEXT NOT NULL DEFAULT '';
UPDATE machines SET host = (SELECT id FROM host);
CREATE INDEX machines_by_host ON machines(host, state);
CREATE TABLE schedule_seen (
    machine_id TEXT PRIMARY KEY,
    period     INTEGER NOT NULL
);
";

/// The migrations in order; a database at `user_version` n has applied the first n.
const MIGRATIONS: [&str; 3] = [SCHEMA_V1, SCHEMA_V2, SCHEMA_V3];

/// Applies the migrations the database lacks, each in its own transaction, so an interrupted
/// upgrade resumes at the first one not committed.
pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > known {
        return Err(StoreError::SchemaTooNew { found, known });
    }
    for (done, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", done as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

pub(crate) fn host_id(conn: &Connection) -> Result<String> {
    Ok(conn.query_row("SELECT id FROM host", [], |r| r.get(0))?)
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::{SCHEMA_V1, SCHEMA_V2};
    use crate::testutil::*;
    use crate::{ClusterState, Store, StoreError};

    /// A database as the previous Hangar left it, at `version`, with an app and a started
    /// machine.
    fn old_database(version: i64) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(&format!(
            "BEGIN; {SCHEMA_V1} PRAGMA user_version = 1; COMMIT;"
        ))
        .unwrap();
        if version >= 2 {
            c.execute_batch(&format!(
                "BEGIN; {SCHEMA_V2} PRAGMA user_version = 2; COMMIT;"
            ))
            .unwrap();
        }
        c.execute(
            "INSERT INTO apps (name, id, numeric_id, org_slug, network, created_at)
             VALUES ('app', 'app', 1, 'personal', 'default', 1)",
            [],
        )
        .unwrap();
        let image_ref = serde_json::to_string(&hangar_types::ImageRef::default()).unwrap();
        c.execute(
            r#"INSERT INTO machines (id, app, name, region, state, instance_id, config, image_ref,
                                     restart_count, flow, created_at, updated_at)
               VALUES ('old', 'app', 'web', 'local', 'started', 'v1',
                       '{"image":"busybox","guest":{"cpu_kind":"shared","cpus":1,"memory_mb":512}}',
                       ?1, 0, NULL, 1, 1)"#,
            [image_ref],
        )
        .unwrap();
        (dir, path)
    }

    #[test]
    fn a_version_1_database_is_migrated() {
        let (_d, path) = old_database(1);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.secrets("app").unwrap().1, 0);
        assert!(!s.get_machine("old").unwrap().unwrap().cordoned);
        s.insert_machine(&machine("m1", "one"), &event("launch", "created"))
            .unwrap();
    }

    #[test]
    fn a_version_2_database_is_migrated_onto_this_host() {
        let (_d, path) = old_database(2);
        let s = Store::open(&path).unwrap();
        let old = s.get_machine("old").unwrap().unwrap();
        assert_eq!(
            (old.name.as_str(), old.config.image.as_str()),
            ("web", "busybox")
        );
        let placed = s.placement("old").unwrap().unwrap();
        assert_eq!(
            placed.host,
            s.host_id(),
            "existing machines are on this host"
        );
        assert!(
            matches!(
                s.insert_machine(&machine("m2", "web"), &event("launch", "created")),
                Err(StoreError::Exists(_))
            ),
            "names stay unique across the upgrade"
        );

        // The old machine's memory counts against a new start.
        s.insert_machine(&machine("m1", "one"), &event("launch", "created"))
            .unwrap();
        let start = crate::Transition {
            reserve: Some(crate::Reservation {
                memory_mb: 256,
                capacity_mb: 700,
            }),
            ..change(
                hangar_types::MachineState::Created,
                hangar_types::MachineState::Starting,
            )
        };
        assert!(matches!(
            s.transition("m1", start),
            Err(StoreError::InsufficientCapacity { free_mb: 188, .. })
        ));

        s.set_schedule_seen("old", 3).unwrap();
        drop(s);
        let again = Store::open(&path).unwrap();
        assert_eq!(again.schedule_seen().unwrap()["old"], 3);
        assert_eq!(again.placement("old").unwrap().unwrap(), placed);
    }

    #[test]
    fn a_database_from_a_newer_hangar_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::SchemaTooNew {
                found: 99,
                known: 3
            })
        ));
        let c = Connection::open(&path).unwrap();
        let tables: i64 = c
            .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 0);
    }
}

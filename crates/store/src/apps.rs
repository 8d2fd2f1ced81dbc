//! Apps: the named groups machines belong to, each in an organisation and a network.

use rusqlite::{params, OptionalExtension, Row, TransactionBehavior};

use crate::{exists, Result, Store, StoreError};

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

const APP_COLUMNS: &str = "name, id, numeric_id, org_slug, network, created_at";

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

impl Store {
    /// Inserts an app; its `numeric_id` is assigned here and returned.
    pub fn create_app(&self, app: &AppRecord) -> Result<AppRecord> {
        self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if exists(&tx, "SELECT 1 FROM apps WHERE name = ?1", &app.name)? {
                return Err(StoreError::Exists(format!("app {:?}", app.name)));
            }
            let next: i64 = tx.query_row(
                "SELECT COALESCE(MAX(numeric_id), 0) + 1 FROM apps",
                [],
                |r| r.get(0),
            )?;
            tx.execute(
                &format!("INSERT INTO apps ({APP_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
                params![
                    app.name,
                    app.id,
                    next,
                    app.org_slug,
                    app.network,
                    app.created_at_ms
                ],
            )?;
            tx.commit()?;
            Ok(AppRecord {
                numeric_id: next as u64,
                ..app.clone()
            })
        })
    }

    pub fn get_app(&self, name: &str) -> Result<Option<AppRecord>> {
        self.read(|c| {
            Ok(c.query_row(
                &format!("SELECT {APP_COLUMNS} FROM apps WHERE name = ?1"),
                [name],
                app_from_row,
            )
            .optional()?)
        })
    }

    pub fn list_apps(&self, org_slug: Option<&str>) -> Result<Vec<AppRecord>> {
        self.read(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {APP_COLUMNS} FROM apps WHERE ?1 IS NULL OR org_slug = ?1 ORDER BY name"
            ))?;
            let rows = stmt.query_map([org_slug], app_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Deletes an app and everything recorded about its machines. The caller makes sure none
    /// of them is still running.
    pub fn delete_app(&self, name: &str) -> Result<()> {
        self.write(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for table in ["events", "versions", "leases", "schedule_seen"] {
                tx.execute(
                    &format!(
                        "DELETE FROM {table} WHERE machine_id IN (SELECT id FROM machines WHERE app = ?1)"
                    ),
                    [name],
                )?;
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
}

#[cfg(test)]
mod tests {
    use crate::testutil::*;
    use crate::StoreError;

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
    fn deleting_an_app_forgets_its_machines() {
        let (_d, s) = store();
        s.create_app(&app("app")).unwrap();
        s.create_app(&app("other")).unwrap();
        s.insert_machine(&machine("m1", "web"), &event("launch", "created"))
            .unwrap();
        let mut kept = machine("m2", "web");
        kept.app = "other".into();
        s.insert_machine(&kept, &event("launch", "created"))
            .unwrap();
        s.set_schedule_seen("m1", 7).unwrap();
        s.set_schedule_seen("m2", 8).unwrap();
        s.delete_app("app").unwrap();
        assert!(s.get_machine("m1").unwrap().is_none());
        assert!(s.events("m1", 10).unwrap().is_empty());
        assert!(s.versions("m1").unwrap().is_empty());
        let seen = s.schedule_seen().unwrap();
        assert_eq!((seen.get("m1"), seen.get("m2")), (None, Some(&8)));
        assert_eq!(s.live_machine_count("other").unwrap(), 1);
    }
}

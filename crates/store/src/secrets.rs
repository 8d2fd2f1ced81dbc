//! App secrets, sealed by the caller; the store keeps the ciphertext and a version per app.

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use crate::{exists, Result, Store, StoreError};

/// An app secret as stored: the value sealed by the caller (the store never sees plaintext).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRecord {
    pub name: String,
    pub sealed: Vec<u8>,
    pub digest: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl Store {
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
            if !exists(&tx, "SELECT 1 FROM apps WHERE name = ?1", app)? {
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
            let version: i64 = tx.query_row(
                "UPDATE apps SET secrets_version = secrets_version + 1 WHERE name = ?1
                 RETURNING secrets_version",
                [app],
                |r| r.get(0),
            )?;
            tx.commit()?;
            Ok(version as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::testutil::*;
    use crate::{SecretRecord, StoreError};

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
        assert!(matches!(s.secrets("nope"), Err(StoreError::NotFound(_))));
    }
}

//! Leases: a caller's exclusive claim on a machine until a deadline (Fly's machine leases).

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use crate::{Result, Store, StoreError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub nonce: String,
    pub owner: String,
    pub description: String,
    pub expires_at_ms: i64,
    /// The machine version it was taken on.
    pub version: String,
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

/// The unexpired lease on a machine; an expired row counts as none.
fn held(c: &Connection, id: &str, now_ms: i64) -> Result<Option<LeaseRecord>> {
    Ok(c.query_row(
        "SELECT nonce, owner, description, expires_at, version FROM leases
         WHERE machine_id = ?1 AND expires_at > ?2",
        params![id, now_ms],
        lease_from_row,
    )
    .optional()?)
}

impl Store {
    /// The machine's lease, if one is held and has not expired at `now_ms`.
    pub fn lease(&self, id: &str, now_ms: i64) -> Result<Option<LeaseRecord>> {
        self.read(|c| held(c, id, now_ms))
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
            let granted = match held(&tx, id, now_ms)? {
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
                params![
                    id,
                    granted.nonce,
                    granted.owner,
                    granted.description,
                    granted.expires_at_ms,
                    granted.version
                ],
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
            match held(&tx, id, now_ms)? {
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
}

#[cfg(test)]
mod tests {
    use crate::testutil::*;
    use crate::{LeaseRecord, StoreError};

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
}

//! Machine leases: a short exclusive claim a client takes before changing a machine (flyctl
//! and deploy tools do, for every mutating call). While a lease is live, changes without its
//! nonce are refused; an expired lease stops counting without anyone releasing it.

use hangar_store::{LeaseRecord, StoreError};
use hangar_types::Lease;
use rand::Rng;

use crate::error::AgentError;
use crate::events::now_ms;
use crate::Agent;

/// flyctl's machine commands take 120 s leases; take that when none is given.
const DEFAULT_TTL_SECS: u64 = 120;
/// Leases are for the duration of an operation, not for parking a machine.
const MAX_TTL_SECS: u64 = 24 * 3600;
const OWNER: &str = "hangar";

pub(crate) fn valid_ttl(ttl: u64) -> Result<u64, AgentError> {
    if ttl == 0 || ttl > MAX_TTL_SECS {
        return Err(AgentError::InvalidArgument(format!(
            "ttl: {ttl} is not between 1 and {MAX_TTL_SECS} seconds"
        )));
    }
    Ok(ttl)
}

fn to_api(l: LeaseRecord) -> Lease {
    Lease {
        nonce: l.nonce,
        expires_at: l.expires_at_ms / 1000,
        owner: l.owner,
        description: l.description,
        version: l.version,
    }
}

fn held(id: &str, e: StoreError) -> AgentError {
    match e {
        StoreError::LeaseHeld {
            owner,
            expires_at_ms,
        } => AgentError::Conflict(format!(
            "machine ID {id} lease currently held by {owner}, expires at {}",
            crate::events::rfc3339(expires_at_ms)
        )),
        StoreError::NotFound(_) => AgentError::NotFound(format!(
            "machine {id} has no lease (it expired or was released)"
        )),
        other => other.into(),
    }
}

impl Agent {
    /// Refuses a change to a leased machine unless it carries the lease's nonce.
    pub(crate) fn check_lease(&self, id: &str, nonce: Option<&str>) -> Result<(), AgentError> {
        match self.inner.store.lease(id, now_ms())? {
            Some(l) if Some(l.nonce.as_str()) != nonce => Err(AgentError::Conflict(format!(
                "machine ID {id} lease currently held by {}, expires at {}; send its nonce in the fly-machine-lease-nonce header",
                l.owner,
                crate::events::rfc3339(l.expires_at_ms)
            ))),
            _ => Ok(()),
        }
    }

    pub fn lease(&self, app: &str, id: &str) -> Result<Lease, AgentError> {
        self.machine_record(app, id)?;
        self.inner
            .store
            .lease(id, now_ms())?
            .map(to_api)
            .ok_or_else(|| AgentError::NotFound(format!("machine {id} has no lease")))
    }

    /// Takes the lease, or extends it when `held_nonce` is the current one.
    pub fn acquire_lease(
        &self,
        app: &str,
        id: &str,
        held_nonce: Option<&str>,
        ttl: Option<u64>,
        description: Option<String>,
    ) -> Result<Lease, AgentError> {
        let rec = self.machine_record(app, id)?;
        let ttl = valid_ttl(ttl.unwrap_or(DEFAULT_TTL_SECS))?;
        let now = now_ms();
        let lease = LeaseRecord {
            nonce: format!("{:012x}", rand::rng().random::<u64>() & 0xffff_ffff_ffff),
            owner: OWNER.into(),
            description: description.unwrap_or_default(),
            expires_at_ms: now + (ttl * 1000) as i64,
            version: rec.instance_id,
        };
        let held_nonce = held_nonce.filter(|n| !n.is_empty());
        self.inner
            .store
            .acquire_lease(id, held_nonce, &lease, now)
            .map(to_api)
            .map_err(|e| held(id, e))
    }

    pub fn release_lease(&self, app: &str, id: &str, nonce: &str) -> Result<(), AgentError> {
        self.machine_record(app, id)?;
        self.inner
            .store
            .release_lease(id, nonce, now_ms())
            .map_err(|e| held(id, e))
    }
}

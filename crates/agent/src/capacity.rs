//! Placement on this host: a boot is admitted only while the machines' memory together fits
//! the host's capacity (Fly's `insufficient_capacity`). The store checks and records the
//! reservation in one transaction ([`Reservation`]); the check at create only refuses early.

use hangar_store::{Reservation, StoreError};

use crate::error::AgentError;
use crate::Inner;

impl Inner {
    /// What a boot needing `memory_mb` reserves.
    pub(crate) fn reservation(&self, memory_mb: u32) -> Reservation {
        Reservation {
            memory_mb: u64::from(memory_mb),
            capacity_mb: self.memory_capacity_mb,
        }
    }

    /// Refuses, before anything is recorded, a machine whose boot could not fit now.
    pub(crate) fn admit(&self, id: &str, memory_mb: u32) -> Result<(), AgentError> {
        let wanted = u64::from(memory_mb);
        let in_use: u64 = self
            .store
            .live_machines()?
            .iter()
            .filter(|m| m.id != id && m.state.holds_resources())
            .map(|m| u64::from(m.config.effective_guest().memory_mb))
            .sum();
        if in_use + wanted > self.memory_capacity_mb {
            return Err(insufficient(
                id,
                wanted,
                self.memory_capacity_mb.saturating_sub(in_use),
                self.memory_capacity_mb,
            ));
        }
        Ok(())
    }
}

fn insufficient(id: &str, wanted: u64, free: u64, capacity: u64) -> AgentError {
    AgentError::InsufficientCapacity(format!(
        "insufficient memory available to fulfill request: machine {id} needs {wanted} MB and this host has {free} of {capacity} MB left"
    ))
}

/// A store error of machine `id`'s transition; a refused reservation names the machine.
pub(crate) fn from_store(id: &str, e: StoreError) -> AgentError {
    match e {
        StoreError::InsufficientCapacity {
            wanted_mb,
            free_mb,
            capacity_mb,
        } => insufficient(id, wanted_mb, free_mb, capacity_mb),
        other => other.into(),
    }
}

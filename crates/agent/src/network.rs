//! The private network as the agent sees it: a machine's private address, its static egress
//! IPs, and forgetting both when the machine is destroyed. The host's networking itself (bridge,
//! interfaces, firewall and NAT rules) lives in `hangar-net`, which implements this trait.

use serde::Serialize;

use crate::error::AgentError;
use crate::Agent;

/// One static egress IP held by a machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EgressIp {
    pub ip: String,
    pub machine_id: String,
    pub created_at: String,
}

pub trait PrivateNetwork: Send + Sync + 'static {
    /// Refuses a config the network cannot honour (a resolver the operator does not allow).
    fn check_config(&self, config: &hangar_types::MachineConfig) -> Result<(), AgentError>;
    /// The machine's private IPv6 address, allocated on first use and kept until `forget`.
    fn private_ip(&self, machine_id: &str) -> Option<String>;
    /// Releases everything the machine holds on the network (its destroy).
    fn forget(&self, machine_id: &str);
    fn egress_ips(&self, machine_id: &str) -> Result<Vec<EgressIp>, AgentError>;
    fn allocate_egress_ip(&self, machine_id: &str) -> Result<EgressIp, AgentError>;
    fn release_egress_ip(&self, machine_id: &str, ip: &str) -> Result<(), AgentError>;
}

impl Agent {
    fn network(&self) -> Result<&dyn PrivateNetwork, AgentError> {
        self.inner.network.as_deref().ok_or_else(|| {
            AgentError::FailedPrecondition(
                "this server runs without a private network (start it with --private-network)"
                    .into(),
            )
        })
    }

    /// The machine must exist in the app and not be destroyed.
    fn live_machine(&self, app: &str, id: &str) -> Result<(), AgentError> {
        match self.inner.store.get_machine(id)? {
            Some(m) if m.app == app && m.state != hangar_types::MachineState::Destroyed => Ok(()),
            _ => Err(AgentError::NotFound(format!(
                "machine {id} not found in app {app}"
            ))),
        }
    }

    pub fn egress_ips(&self, app: &str, id: &str) -> Result<Vec<EgressIp>, AgentError> {
        self.live_machine(app, id)?;
        self.network()?.egress_ips(id)
    }

    pub fn allocate_egress_ip(&self, app: &str, id: &str) -> Result<EgressIp, AgentError> {
        self.live_machine(app, id)?;
        self.network()?.allocate_egress_ip(id)
    }

    pub fn release_egress_ip(&self, app: &str, id: &str, ip: &str) -> Result<(), AgentError> {
        self.live_machine(app, id)?;
        self.network()?.release_egress_ip(id, ip)
    }

    pub(crate) fn private_ip(&self, machine_id: &str) -> String {
        self.inner
            .network
            .as_ref()
            .and_then(|n| n.private_ip(machine_id))
            .unwrap_or_default()
    }
}

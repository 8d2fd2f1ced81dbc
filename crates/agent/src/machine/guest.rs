//! What talks to the running guest: signals, and the guest handed out for execs and ps.

use std::time::Duration;

use hangar_proto::ExecSpec;
use hangar_runtime::{ExecOutput, Guest, GuestError};
use hangar_types::Signal;

use super::MachineActor;
use crate::error::AgentError;

impl MachineActor {
    /// Admitted: the machine is started.
    pub(super) async fn signal(&self, signal: Signal) -> Result<(), AgentError> {
        let guest = self.guest_handout()?;
        guest.signal(signal.number()).await.map_err(|e| {
            AgentError::Unavailable(format!("the machine did not take the signal: {e}"))
        })
    }

    /// Admitted: the machine is started, so its boot has a guest.
    pub(super) fn guest_handout(&self) -> Result<Guest, AgentError> {
        self.guest.clone().ok_or_else(|| {
            AgentError::FailedPrecondition(format!("machine {} is not running", self.id))
        })
    }
}

/// Runs an exec on a started machine, outside the actor so a long command does not hold up
/// the machine's other operations.
pub(crate) async fn exec(
    guest: Guest,
    spec: ExecSpec,
    limit: Duration,
) -> Result<ExecOutput, AgentError> {
    guest.exec(spec, limit).await.map_err(|e| match e {
        GuestError::Timeout => AgentError::Timeout(format!(
            "the command did not finish within {}s",
            limit.as_secs()
        )),
        GuestError::Refused(m) => AgentError::InvalidArgument(m),
        other => AgentError::Unavailable(format!("the machine did not answer: {other}")),
    })
}

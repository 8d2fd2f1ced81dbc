//! `destroy`: kill what runs (with `force`), remove every trace of the machine, mark it
//! destroyed. The actor ends with it.

use std::ops::ControlFlow;

use hangar_store::{FlowChange, MachineRecord};
use hangar_types::{MachineState, Signal};
use tokio::time::timeout;
use tracing::info;

use super::{Flow, MachineActor, Reply, KILL_GRACE};
use crate::error::AgentError;
use crate::events::{self, Source};

use MachineState::*;

impl MachineActor {
    /// Admitted: the machine is down, or running and destroyed with `force`.
    pub(super) async fn destroy_cmd(
        &mut self,
        rec: MachineRecord,
        reply: Reply<()>,
    ) -> ControlFlow<()> {
        let event = events::event("destroy", Destroying, Source::User);
        if let Err(e) = self.transition(
            rec.state,
            Destroying,
            &[event],
            Flow::Destroy.record(),
            None,
        ) {
            let _ = reply.send(Err(e));
            return ControlFlow::Continue(());
        }
        let _ = reply.send(self.finish_destroy().await);
        ControlFlow::Break(())
    }

    /// Completes a destroy that is recorded as under way: kill, clean up, mark destroyed.
    pub(super) async fn finish_destroy(&mut self) -> Result<(), AgentError> {
        self.restart_at = None;
        let mut events = Vec::new();
        if let Some(guest) = self.guest.clone() {
            // A running machine destroyed with force: record how its process ended.
            let _ = guest.signal(Signal::KILL.number()).await;
            let status = timeout(KILL_GRACE, guest.exited())
                .await
                .ok()
                .and_then(Result::ok);
            if let Some(status) = status {
                events.push(events::exit(&status, Destroying, false, true, 0));
            }
        }
        self.set_guest(None);
        self.inner.runtime.teardown(&self.id).await.map_err(|e| {
            AgentError::Internal(format!("could not tear machine {} down: {e}", self.id))
        })?;
        let _ = std::fs::remove_file(self.inner.log_path(&self.id));
        events.push(events::event("destroy", Destroyed, Source::Host));
        self.transition(Destroying, Destroyed, &events, FlowChange::Clear, None)?;
        if let Some(network) = &self.inner.network {
            network.forget(&self.id);
        }
        info!("destroyed");
        Ok(())
    }
}

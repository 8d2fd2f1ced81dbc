//! `start`, and the boot that every verb ending in a running machine shares.

use hangar_proto::MainProcess;
use hangar_store::{FlowChange, MachineRecord, Transition};
use hangar_types::{MachineEvent, MachineState};
use tracing::{info, warn};

use super::{Flow, MachineActor, Reply};
use crate::events::{self, Source};

use MachineState::*;

impl MachineActor {
    /// Admitted: the machine is created, stopped, failed, restarting or suspended.
    pub(super) async fn start(
        &mut self,
        rec: MachineRecord,
        source: Source,
        reply: Reply<MachineState>,
    ) {
        let prev = rec.state;
        let flow = if prev == Suspended {
            Flow::Resume
        } else {
            Flow::Start
        };
        let event = events::event("start", Starting, source);
        let memory_mb = rec.config.effective_guest().memory_mb;
        match self.reserve(
            memory_mb,
            Transition {
                from: prev,
                to: Starting,
                events: &[event],
                flow: flow.record(),
                restart_count: Some(0),
                version: None,
                reserve: None,
            },
        ) {
            Ok(_) => {
                self.restart_at = None;
                let _ = reply.send(Ok(prev));
                self.boot(matches!(flow, Flow::Resume)).await;
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Boots a machine that is `starting`, recording `started` or `failed`. A suspended
    /// machine is resumed when the runtime still has it, else booted afresh.
    pub(super) async fn boot(&mut self, resume: bool) {
        let resumed = if resume {
            match self.inner.runtime.resume(&self.id).await {
                Ok(guest) => Some(guest),
                Err(e) => {
                    warn!(error = %e, "could not resume; booting afresh");
                    self.teardown().await;
                    None
                }
            }
        } else {
            None
        };
        let booted = match resumed {
            Some(g) => Ok(g),
            None => self.try_boot().await,
        };
        match booted {
            Ok(guest) => {
                let event = events::event("start", Started, Source::Host);
                match self.transition(Starting, Started, &[event], FlowChange::Clear, None) {
                    Ok(_) => {
                        if let MainProcess::Running { pid, .. } = guest.main() {
                            info!(pid, resume, "started");
                        }
                        self.set_guest(Some(guest));
                    }
                    Err(e) => {
                        // Someone else moved the machine on (cannot happen while we are its
                        // only writer, but never leave a process the store does not know of).
                        warn!(error = %e, "could not record the start; tearing the boot down");
                        self.teardown().await;
                    }
                }
            }
            Err(message) => {
                warn!(error = %message, "boot failed");
                self.teardown().await;
                let event = events::failure("start", Failed, &message);
                if let Err(e) = self.transition(Starting, Failed, &[event], FlowChange::Clear, None)
                {
                    warn!(error = %e, "could not record the failed boot");
                }
            }
        }
    }

    /// Moves a machine from `from` (restarting, after an exit or the user's restart) to
    /// `starting`, recording `before` (how the last boot ended) with it, and boots it.
    pub(super) async fn begin_boot(
        &mut self,
        from: MachineState,
        mut before: Vec<MachineEvent>,
        source: Source,
    ) {
        before.push(events::event("start", Starting, source));
        match self.transition(from, Starting, &before, Flow::Start.record(), None) {
            Ok(_) => self.boot(false).await,
            Err(e) => warn!(error = %e, "could not begin the boot"),
        }
    }

    async fn try_boot(&self) -> Result<hangar_runtime::Guest, String> {
        let rec = self.record().map_err(|e| e.to_string())?;
        let spec = self
            .inner
            .boot_spec(&rec)
            .await
            .map_err(|e| e.to_string())?;
        self.inner
            .runtime
            .boot(&spec)
            .await
            .map_err(|e| e.to_string())
    }
}

//! Picking up after a server restart: re-attach to what kept running and finish or roll
//! back the flow a crash interrupted. Each arm is one (state, machine still running) case;
//! the flow recorded with the state says how the interrupted operation was to go on.

use std::time::Duration;

use hangar_store::FlowChange;
use hangar_types::{MachineState, Signal};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{Flow, MachineActor};
use crate::error::AgentError;
use crate::events::{self, Source};

use MachineState::*;

impl MachineActor {
    pub(super) async fn recover(&mut self) -> Result<(), AgentError> {
        let rec = self.record()?;
        let flow = Flow::of(rec.flow.as_ref());
        if rec.state == Suspended {
            // Frozen on purpose: attaching would wait on a process that cannot answer.
            return Ok(());
        }
        let attached = match self.inner.runtime.attach(&self.id).await {
            Ok(g) => g,
            Err(e) => {
                warn!(error = %e, "could not attach; treating the machine as lost");
                None
            }
        };
        info!(state = %rec.state, ?flow, attached = attached.is_some(), "recovering");
        match (rec.state, attached) {
            (Started, Some(guest)) => self.set_guest(Some(guest)),
            (Started, None) => self.on_exit(Err(hangar_runtime::GuestError::Lost)).await,
            (Starting, Some(guest)) => {
                // The boot finished but its success was not recorded: record it now.
                let event = events::event("start", Started, Source::Host);
                self.transition(Starting, Started, &[event], FlowChange::Clear, None)?;
                self.set_guest(Some(guest));
            }
            (Starting, None) => {
                self.teardown().await;
                self.boot(matches!(flow, Some(Flow::Resume))).await;
            }
            (Stopping, attached) => {
                self.guest = attached;
                let (signal, grace) = match flow {
                    Some(Flow::Stop { signal, timeout_ms }) => (
                        Signal::from_number(signal).unwrap_or(Signal::KILL),
                        Duration::from_millis(timeout_ms),
                    ),
                    _ => (rec.config.stop_signal(), rec.config.stop_timeout()),
                };
                self.stop(signal, grace).await;
            }
            (Suspending, attached) => {
                // Whether the freeze happened is unknown: stop the machine, which is what a
                // failed suspend does anyway.
                self.guest = attached;
                self.stop_instead_of_suspend().await;
            }
            (Restarting, Some(guest)) if matches!(flow, Some(Flow::UserRestart { .. })) => {
                // The user's restart had not finished stopping the old process.
                let Some(Flow::UserRestart { signal, timeout_ms }) = flow else {
                    unreachable!("matched above");
                };
                self.guest = Some(guest);
                let signal = Signal::from_number(signal).unwrap_or(Signal::KILL);
                self.restart(signal, Duration::from_millis(timeout_ms))
                    .await;
            }
            (Restarting, attached) => {
                // Between boots: whatever is left of the old one goes, the new one boots now.
                if attached.is_some() {
                    self.teardown().await;
                }
                self.restart_at = Some(Instant::now());
            }
            (Updating, attached) => {
                self.guest = attached;
                match flow {
                    Some(flow @ Flow::Update { .. }) => self.update(flow).await?,
                    _ => {
                        // An update whose record is unreadable: keep the old version, stopped.
                        let (status, remains) = self.halt(Signal::KILL, Duration::ZERO).await;
                        let event = events::exit(&status, Stopped, remains.oom_killed, true, 0);
                        self.transition(Updating, Stopped, &[event], FlowChange::Clear, None)?;
                    }
                }
            }
            (Destroying, attached) => {
                self.guest = attached;
                self.finish_destroy().await?;
            }
            (_, Some(_)) => {
                // Something runs for a machine that should be down: it is a leftover.
                self.teardown().await;
            }
            (_, None) => {}
        }
        Ok(())
    }
}

//! `stop`, and the halt that every verb ending the running boot shares.

use std::time::Duration;

use hangar_proto::ExitStatus;
use hangar_runtime::{GuestError, Remains};
use hangar_store::{FlowChange, MachineRecord};
use hangar_types::{MachineState, Signal};
use tokio::time::timeout;
use tracing::{info, warn};

use super::exit::exit_status;
use super::{Flow, MachineActor, Reply, KILL_GRACE};
use crate::events::{self, Source};

use MachineState::*;

impl MachineActor {
    /// Admitted: the machine is started, restarting or suspended.
    pub(super) async fn stop_cmd(
        &mut self,
        rec: MachineRecord,
        signal: Option<Signal>,
        grace: Option<Duration>,
        reply: Reply<()>,
    ) {
        let signal = signal.unwrap_or_else(|| rec.config.stop_signal());
        let grace = grace.unwrap_or_else(|| rec.config.stop_timeout());
        let flow = Flow::Stop {
            signal: signal.number(),
            timeout_ms: grace.as_millis() as u64,
        };
        let event = events::event("stop", Stopping, Source::User);
        if let Err(e) = self.transition(rec.state, Stopping, &[event], flow.record(), None) {
            let _ = reply.send(Err(e));
            return;
        }
        self.restart_at = None;
        let _ = reply.send(Ok(()));
        self.stop(signal, grace).await;
    }

    /// Carries out a recorded stop. A machine waiting to restart, or frozen, has no process
    /// to signal: what is left of it is dropped.
    pub(super) async fn stop(&mut self, signal: Signal, grace: Duration) {
        if self.guest.is_none() {
            self.teardown().await;
            let event = events::event("stop", Stopped, Source::Host);
            if let Err(e) = self.transition(Stopping, Stopped, &[event], FlowChange::Clear, None) {
                warn!(error = %e, "could not record the stop");
            }
            return;
        }
        let (status, remains) = self.halt(signal, grace).await;
        self.record_exit(status, remains, true).await;
    }

    /// Ends the running boot: the signal, SIGKILL after the grace period, then the runtime's
    /// teardown whatever happened. Returns how the main process ended.
    pub(super) async fn halt(&mut self, signal: Signal, grace: Duration) -> (ExitStatus, Remains) {
        let res = match self.guest.clone() {
            None => Err(GuestError::Lost),
            Some(guest) => {
                if let Err(e) = guest.signal(signal.number()).await {
                    warn!(error = %e, %signal, "could not deliver the stop signal");
                }
                match timeout(grace, guest.exited()).await {
                    Ok(res) => res,
                    Err(_) => {
                        info!(%signal, ?grace, "process outlived its stop timeout; sending SIGKILL");
                        let _ = guest.signal(Signal::KILL.number()).await;
                        match timeout(KILL_GRACE, guest.exited()).await {
                            Ok(res) => res,
                            Err(_) => Err(GuestError::Lost),
                        }
                    }
                }
            }
        };
        self.set_guest(None);
        let remains = self.teardown().await;
        (exit_status(res), remains)
    }
}

//! The main process ended on its own (or the machine was lost): record how, then stop,
//! restart or destroy the machine as its config says.

use std::time::Duration;

use hangar_proto::ExitStatus;
use hangar_runtime::{GuestError, Remains};
use hangar_store::FlowChange;
use hangar_types::{MachineState, RestartPolicy};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{Flow, MachineActor};
use crate::events::{self, now_ms, Source};

use MachineState::*;

impl MachineActor {
    pub(super) async fn on_exit(&mut self, res: Result<ExitStatus, GuestError>) {
        self.set_guest(None);
        let remains = self.teardown().await;
        let mut status = exit_status(res);
        if let (Some(_), Some(why)) = (&status.error, &remains.reason) {
            // The runtime knows better than "lost contact" (a guest kernel panic, a killed VMM).
            status.error = Some(format!("lost contact with the machine: {why}"));
        }
        self.record_exit(status, remains, false).await;
    }

    /// Records how the process ended, then stops, restarts or destroys the machine as its
    /// config says. `requested_stop`: the exit was asked for (a stop), so no restart.
    pub(super) async fn record_exit(
        &mut self,
        status: ExitStatus,
        remains: Remains,
        requested_stop: bool,
    ) {
        let rec = match self.record() {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "machine vanished while exiting");
                return;
            }
        };
        let config = &rec.config;
        let restart = !requested_stop
            && match config.restart_policy() {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => {
                    !status.success() && rec.restart_count < config.max_retries()
                }
                RestartPolicy::No | RestartPolicy::SpotPrice => false,
            };
        let destroy = !restart && config.auto_destroy == Some(true);
        let next = if restart { Restarting } else { Stopped };
        info!(code = ?status.code, signal = ?status.signal, oom = remains.oom_killed, %next, "process exited");
        let restart_count = if restart {
            rec.restart_count + 1
        } else {
            rec.restart_count
        };
        let event = events::exit(
            &status,
            next,
            remains.oom_killed,
            requested_stop,
            restart_count,
        );
        let flow = if restart {
            Flow::Restart.record()
        } else {
            FlowChange::Clear
        };
        if let Err(e) = self.transition(rec.state, next, &[event], flow, Some(restart_count)) {
            warn!(error = %e, "could not record the exit");
            return;
        }
        if status.error.is_some() && !requested_stop {
            // The machine was lost rather than ended: its standbys take over.
            self.inner.wake_standbys(&self.id);
        }
        if restart {
            self.restart_at = Some(Instant::now() + restart_delay(rec.restart_count));
        } else if destroy {
            let event = events::event("destroy", Destroying, Source::Host);
            if self
                .transition(Stopped, Destroying, &[event], Flow::Destroy.record(), None)
                .is_ok()
            {
                if let Err(e) = self.finish_destroy().await {
                    warn!(error = %e, "auto-destroy failed");
                }
            }
        }
    }
}

pub(super) fn exit_status(res: Result<ExitStatus, GuestError>) -> ExitStatus {
    match res {
        Ok(status) => status,
        Err(e) => ExitStatus {
            code: None,
            signal: None,
            error: Some(format!("lost contact with the machine: {e}")),
            exited_at_ms: now_ms(),
        },
    }
}

/// Back off between automatic restarts: 200 ms, doubling, at most 5 s.
pub(super) fn restart_delay(restarts_so_far: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << restarts_so_far.min(5)))
        .min(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_backoff_grows_and_caps() {
        assert_eq!(restart_delay(0), Duration::from_millis(200));
        assert_eq!(restart_delay(1), Duration::from_millis(400));
        assert_eq!(restart_delay(4), Duration::from_millis(3200));
        assert_eq!(restart_delay(5), Duration::from_secs(5));
        assert_eq!(restart_delay(50), Duration::from_secs(5));
    }
}

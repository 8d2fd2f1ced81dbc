//! `restart`: the user's restart of a started machine, a fresh boot of the same version.

use std::time::Duration;

use hangar_store::MachineRecord;
use hangar_types::{MachineState, Signal};

use super::{Flow, MachineActor, Reply};
use crate::events::{self, Source};

use MachineState::*;

impl MachineActor {
    /// Admitted: the machine is started.
    pub(super) async fn restart_cmd(
        &mut self,
        rec: MachineRecord,
        signal: Option<Signal>,
        grace: Option<Duration>,
        force: bool,
        reply: Reply<()>,
    ) {
        let signal = if force {
            Signal::KILL
        } else {
            signal.unwrap_or_else(|| rec.config.stop_signal())
        };
        let grace = grace.unwrap_or_else(|| rec.config.stop_timeout());
        let flow = Flow::UserRestart {
            signal: signal.number(),
            timeout_ms: grace.as_millis() as u64,
        };
        let event = events::event("restart", Restarting, Source::User);
        match self.transition(Started, Restarting, &[event], flow.record(), Some(0)) {
            Ok(_) => {
                let _ = reply.send(Ok(()));
                self.restart(signal, grace).await;
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Carries out a recorded restart: halt, then boot the same version again, the old
    /// boot's exit recorded with the new one's start.
    pub(super) async fn restart(&mut self, signal: Signal, grace: Duration) {
        let (status, remains) = self.halt(signal, grace).await;
        let exit = events::exit(&status, Restarting, remains.oom_killed, true, 0);
        self.begin_boot(Restarting, vec![exit], Source::User).await;
    }
}

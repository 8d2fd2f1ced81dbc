//! `suspend`: freeze a started machine with its memory kept; `start` resumes it.

use std::time::Duration;

use hangar_store::FlowChange;
use hangar_types::{MachineState, Signal};
use tracing::{info, warn};

use super::{Flow, MachineActor, Reply};
use crate::events::{self, Source};

use MachineState::*;

impl MachineActor {
    /// Admitted: the machine is started.
    pub(super) async fn suspend_cmd(&mut self, reply: Reply<()>) {
        let event = events::event("suspend", Suspending, Source::User);
        if let Err(e) = self.transition(Started, Suspending, &[event], Flow::Suspend.record(), None)
        {
            let _ = reply.send(Err(e));
            return;
        }
        let _ = reply.send(Ok(()));
        self.suspend().await;
    }

    /// Freezes the machine; when the runtime cannot, stops it instead, as Fly does.
    pub(super) async fn suspend(&mut self) {
        match self.inner.runtime.suspend(&self.id).await {
            Ok(()) => {
                self.set_guest(None);
                let event = events::event("suspend", Suspended, Source::Host);
                if let Err(e) =
                    self.transition(Suspending, Suspended, &[event], FlowChange::Clear, None)
                {
                    warn!(error = %e, "could not record the suspend");
                }
                info!("suspended");
            }
            Err(e) => {
                warn!(error = %e, "suspend failed; stopping the machine instead");
                self.stop_instead_of_suspend().await;
            }
        }
    }

    /// A suspend that failed, or whose outcome a crash hid, ends as a stop.
    pub(super) async fn stop_instead_of_suspend(&mut self) {
        let (signal, grace) = self
            .record()
            .map(|r| (r.config.stop_signal(), r.config.stop_timeout()))
            .unwrap_or((Signal::TERM, Duration::from_secs(5)));
        let (status, remains) = self.halt(signal, grace).await;
        self.record_exit(status, remains, true).await;
    }
}

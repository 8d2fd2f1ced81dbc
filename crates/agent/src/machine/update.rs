//! `update`: stop the old version if it runs, record the new one, boot it unless asked not to.

use hangar_store::{FlowChange, MachineRecord, NewVersion, Transition};
use hangar_types::{MachineState, Signal};
use std::time::Duration;
use tracing::info;

use super::{Flow, MachineActor, PendingVersion, Reply};
use crate::error::AgentError;
use crate::events::{self, Source};

use MachineState::*;

impl MachineActor {
    /// Admitted: the machine is created, stopped, failed, started, suspended or restarting.
    pub(super) async fn update_cmd(
        &mut self,
        rec: MachineRecord,
        version: Box<PendingVersion>,
        skip_launch: bool,
        reply: Reply<()>,
    ) {
        // The new version's memory must fit before the old one is stopped.
        let memory_mb = (!skip_launch).then(|| version.config.effective_guest().memory_mb);
        let flow = Flow::Update {
            version,
            skip_launch,
            from: rec.state,
            signal: rec.config.stop_signal().number(),
            timeout_ms: rec.config.stop_timeout().as_millis() as u64,
        };
        let event = events::event("update", Updating, Source::User);
        let begin = Transition {
            from: rec.state,
            to: Updating,
            events: &[event],
            flow: flow.record(),
            restart_count: Some(0),
            version: None,
            reserve: None,
        };
        let begun = match memory_mb {
            Some(mb) => self.reserve(mb, begin),
            None => self.apply(begin),
        };
        if let Err(e) = begun {
            let _ = reply.send(Err(e));
            return;
        }
        self.restart_at = None;
        let res = self.update(flow).await;
        let _ = reply.send(res);
    }

    /// Carries out a recorded update: end the old version, record the new one, boot it.
    pub(super) async fn update(&mut self, flow: Flow) -> Result<(), AgentError> {
        let Flow::Update {
            version,
            skip_launch,
            from,
            signal,
            timeout_ms,
        } = flow
        else {
            return Err(AgentError::Internal("not an update".into()));
        };
        let mut events = Vec::new();
        if self.guest.is_some() {
            let signal = Signal::from_number(signal).unwrap_or(Signal::TERM);
            let (status, remains) = self.halt(signal, Duration::from_millis(timeout_ms)).await;
            events.push(events::exit(&status, Updating, remains.oom_killed, true, 0));
        } else {
            self.teardown().await;
        }
        let to = match (skip_launch, from) {
            (false, _) => Starting,
            (true, Created) => Created,
            (true, _) => Stopped,
        };
        events.push(events::event("update", to, Source::Host));
        let flow = if to == Starting {
            Flow::Start.record()
        } else {
            FlowChange::Clear
        };
        self.apply(Transition {
            from: Updating,
            to,
            events: &events,
            flow,
            restart_count: Some(0),
            version: Some(NewVersion {
                instance_id: &version.instance_id,
                config: &version.config,
                image_ref: &version.image_ref,
                name: version.name.as_deref(),
            }),
            reserve: None,
        })?;
        info!(version = %version.instance_id, %to, "updated");
        if to == Starting {
            self.boot(false).await;
        }
        Ok(())
    }
}

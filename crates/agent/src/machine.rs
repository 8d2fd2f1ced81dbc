//! One actor per machine: every operation on a machine runs here, one at a time, so flows
//! never interleave. A flow is recorded in the store before it acts (the `flow` column) and
//! cleared when it settles; [`MachineActor::recover`] resumes or rolls back what a crash left.

use std::sync::Arc;
use std::time::Duration;

use hangar_proto::{ExecSpec, ExitStatus, MainProcess};
use hangar_runtime::{BootSpec, ExecOutput, Guest, GuestError, Resources};
use hangar_store::{FlowChange, MachineRecord, Transition};
use hangar_types::{MachineState, RestartPolicy, Signal};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout, Instant};
use tracing::{info, warn, Instrument};

use crate::error::AgentError;
use crate::events::{self, now_ms, Source};
use crate::launch::{self, Identity};
use crate::Inner;

use MachineState::*;

/// How long a process has to die after SIGKILL before the runtime tears it down by force.
const KILL_GRACE: Duration = Duration::from_secs(10);

pub(crate) enum Command {
    Start {
        reply: oneshot::Sender<Result<MachineState, AgentError>>,
    },
    Stop {
        signal: Option<Signal>,
        timeout: Option<Duration>,
        reply: oneshot::Sender<Result<(), AgentError>>,
    },
    Destroy {
        force: bool,
        reply: oneshot::Sender<Result<(), AgentError>>,
    },
    /// Hands out the running guest, for execs (which then run outside the actor).
    Guest {
        reply: oneshot::Sender<Result<Guest, AgentError>>,
    },
}

/// The operation under way, as recorded in the store.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Flow {
    Start,
    Stop { signal: i32, timeout_ms: u64 },
    Restart,
    Destroy,
}

impl Flow {
    fn record(&self) -> FlowChange {
        FlowChange::Set(serde_json::to_value(self).expect("flows serialize"))
    }
}

pub(crate) struct MachineActor {
    inner: Arc<Inner>,
    id: String,
    guest: Option<Guest>,
    /// When set, the machine is `restarting` and boots again at this instant.
    restart_at: Option<Instant>,
}

pub(crate) fn spawn(
    inner: Arc<Inner>,
    id: String,
    recover: bool,
) -> mpsc::UnboundedSender<Command> {
    let (tx, rx) = mpsc::unbounded_channel();
    let span = tracing::info_span!("machine", machine = %id);
    let actor = MachineActor {
        inner,
        id,
        guest: None,
        restart_at: None,
    };
    tokio::spawn(actor.run(rx, recover).instrument(span));
    tx
}

impl MachineActor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>, recover: bool) {
        if recover {
            if let Err(e) = self.recover().await {
                warn!(error = %e, "recovery failed");
            }
        }
        loop {
            let guest = self.guest.clone();
            let exited = async move {
                match guest {
                    Some(g) => g.exited().await,
                    None => std::future::pending().await,
                }
            };
            let restart_at = self.restart_at;
            let restart_due = async move {
                match restart_at {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => {
                        if self.handle(cmd).await.is_break() {
                            break;
                        }
                    }
                    None => break,
                },
                res = exited => self.on_exit(res, false).await,
                _ = restart_due => {
                    self.restart_at = None;
                    self.boot_from(Restarting, Source::Host).await;
                }
            }
        }
        self.inner.forget_actor(&self.id);
    }

    fn record(&self) -> Result<MachineRecord, AgentError> {
        self.inner
            .store
            .get_machine(&self.id)?
            .ok_or_else(|| AgentError::NotFound(format!("machine {} not found", self.id)))
    }

    /// Applies a state change through the store and tells waiters about it.
    fn transition(
        &self,
        from: MachineState,
        to: MachineState,
        events: &[hangar_types::MachineEvent],
        flow: FlowChange,
        restart_count: Option<u32>,
    ) -> Result<MachineRecord, AgentError> {
        let rec = self.inner.store.transition(
            &self.id,
            Transition {
                from,
                to,
                events,
                flow,
                restart_count,
                version: None,
            },
        )?;
        self.inner.notify(&self.id);
        Ok(rec)
    }

    async fn handle(&mut self, cmd: Command) -> std::ops::ControlFlow<()> {
        match cmd {
            Command::Start { reply } => {
                let rec = match self.record() {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return std::ops::ControlFlow::Continue(());
                    }
                };
                let prev = rec.state;
                match prev {
                    Started | Starting => {
                        let _ = reply.send(Ok(prev));
                    }
                    Created | Stopped | Failed | Restarting => {
                        self.restart_at = None;
                        let event = events::event("start", Starting, Source::User);
                        match self.transition(
                            prev,
                            Starting,
                            &[event],
                            Flow::Start.record(),
                            Some(0),
                        ) {
                            Ok(_) => {
                                let _ = reply.send(Ok(prev));
                                self.boot().await;
                            }
                            Err(e) => {
                                let _ = reply.send(Err(e));
                            }
                        }
                    }
                    other => {
                        let _ = reply.send(Err(AgentError::FailedPrecondition(format!(
                            "machine {} is {other} and cannot be started",
                            self.id
                        ))));
                    }
                }
            }
            Command::Stop {
                signal,
                timeout,
                reply,
            } => {
                let rec = match self.record() {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return std::ops::ControlFlow::Continue(());
                    }
                };
                let signal = signal.unwrap_or_else(|| rec.config.stop_signal());
                let timeout = timeout.unwrap_or_else(|| rec.config.stop_timeout());
                match rec.state {
                    Started => {
                        let flow = Flow::Stop {
                            signal: signal.number(),
                            timeout_ms: timeout.as_millis() as u64,
                        };
                        let event = events::event("stop", Stopping, Source::User);
                        match self.transition(Started, Stopping, &[event], flow.record(), None) {
                            Ok(_) => {
                                let _ = reply.send(Ok(()));
                                self.stop(signal, timeout).await;
                            }
                            Err(e) => {
                                let _ = reply.send(Err(e));
                            }
                        }
                    }
                    Restarting => {
                        self.restart_at = None;
                        let event = events::event("stop", Stopped, Source::User);
                        let res =
                            self.transition(Restarting, Stopped, &[event], FlowChange::Clear, None);
                        let _ = reply.send(res.map(|_| ()));
                    }
                    // Already down: stopping is a no-op, as in Fly.
                    Created | Stopped | Failed | Stopping => {
                        let _ = reply.send(Ok(()));
                    }
                    other => {
                        let _ = reply.send(Err(AgentError::FailedPrecondition(format!(
                            "machine {} is {other} and cannot be stopped",
                            self.id
                        ))));
                    }
                }
            }
            Command::Destroy { force, reply } => {
                let rec = match self.record() {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return std::ops::ControlFlow::Continue(());
                    }
                };
                match rec.state {
                    Created | Stopped | Failed => {}
                    Started | Starting | Stopping | Restarting if force => {}
                    Destroyed | Destroying => {
                        let _ = reply.send(Err(AgentError::FailedPrecondition(format!(
                            "machine {} is already destroyed",
                            self.id
                        ))));
                        return std::ops::ControlFlow::Continue(());
                    }
                    other => {
                        let _ = reply.send(Err(AgentError::FailedPrecondition(format!(
                            "machine {} is {other}: stop it first, or destroy it with force=true",
                            self.id
                        ))));
                        return std::ops::ControlFlow::Continue(());
                    }
                }
                let event = events::event("destroy", Destroying, Source::User);
                if let Err(e) = self.transition(
                    rec.state,
                    Destroying,
                    &[event],
                    Flow::Destroy.record(),
                    None,
                ) {
                    let _ = reply.send(Err(e));
                    return std::ops::ControlFlow::Continue(());
                }
                let res = self.finish_destroy().await;
                let _ = reply.send(res);
                return std::ops::ControlFlow::Break(());
            }
            Command::Guest { reply } => {
                let res = match (&self.guest, self.record()) {
                    (Some(g), Ok(rec)) if rec.state == Started => Ok(g.clone()),
                    (_, Ok(rec)) => Err(AgentError::FailedPrecondition(format!(
                        "machine {} is {}: exec needs a started machine",
                        self.id, rec.state
                    ))),
                    (_, Err(e)) => Err(e),
                };
                let _ = reply.send(res);
            }
        }
        std::ops::ControlFlow::Continue(())
    }

    /// Boots a machine that is `starting`, recording `started` or `failed`.
    async fn boot(&mut self) {
        match self.try_boot().await {
            Ok(guest) => {
                let event = events::event("start", Started, Source::Host);
                match self.transition(Starting, Started, &[event], FlowChange::Clear, None) {
                    Ok(_) => {
                        if let MainProcess::Running { pid, .. } = guest.main() {
                            info!(pid, "started");
                        }
                        self.guest = Some(guest);
                    }
                    Err(e) => {
                        // Someone else moved the machine on (cannot happen while we are its
                        // only writer, but never leave a process the store does not know of).
                        warn!(error = %e, "could not record the start; tearing the boot down");
                        let _ = self.inner.runtime.teardown(&self.id).await;
                    }
                }
            }
            Err(message) => {
                warn!(error = %message, "boot failed");
                let _ = self.inner.runtime.teardown(&self.id).await;
                let event = events::failure("start", Failed, &message);
                if let Err(e) = self.transition(Starting, Failed, &[event], FlowChange::Clear, None)
                {
                    warn!(error = %e, "could not record the failed boot");
                }
            }
        }
    }

    /// Moves a machine that is `restarting` to `starting` and boots it.
    async fn boot_from(&mut self, from: MachineState, source: Source) {
        let event = events::event("start", Starting, source);
        match self.transition(from, Starting, &[event], Flow::Start.record(), None) {
            Ok(_) => self.boot().await,
            Err(e) => warn!(error = %e, "could not begin the restart"),
        }
    }

    async fn try_boot(&self) -> Result<Guest, String> {
        let rec = self.record().map_err(|e| e.to_string())?;
        let image = match self.inner.images.get(&rec.image_ref.digest) {
            Ok(Some(image)) => image,
            Ok(None) => self
                .inner
                .images
                .pull(&rec.config.image)
                .await
                .map_err(|e| {
                    format!(
                        "image {} is no longer on this host and could not be pulled: {e}",
                        rec.config.image
                    )
                })?,
            Err(e) => return Err(e.to_string()),
        };
        let reference = format!(
            "{}/{}:{}",
            rec.image_ref.registry, rec.image_ref.repository, rec.image_ref.tag
        );
        let who = Identity {
            app: &rec.app,
            machine_id: &rec.id,
            region: &rec.region,
            instance_id: &rec.instance_id,
            image_ref: &reference,
        };
        let launch = launch::launch_spec(&rec.config, &image.config, &who)?;
        let guest = rec.config.effective_guest();
        let spec = BootSpec {
            machine_id: rec.id.clone(),
            layers: image.layers.clone(),
            launch,
            resources: Resources {
                cpus: guest.cpus,
                memory_mb: guest.memory_mb,
            },
            log_path: self.inner.log_path(&rec.id),
        };
        self.inner
            .runtime
            .boot(&spec)
            .await
            .map_err(|e| e.to_string())
    }

    /// The graceful stop: the signal, then SIGKILL after the timeout, then the runtime's
    /// teardown if even that does not end it.
    async fn stop(&mut self, signal: Signal, grace: Duration) {
        let Some(guest) = self.guest.clone() else {
            self.on_exit(Err(GuestError::Lost), true).await;
            return;
        };
        if let Err(e) = guest.signal(signal.number()).await {
            warn!(error = %e, %signal, "could not deliver the stop signal");
        }
        let res = match timeout(grace, guest.exited()).await {
            Ok(res) => res,
            Err(_) => {
                info!(%signal, ?grace, "process outlived its stop timeout; sending SIGKILL");
                let _ = guest.signal(Signal::KILL.number()).await;
                match timeout(KILL_GRACE, guest.exited()).await {
                    Ok(res) => res,
                    Err(_) => Err(GuestError::Lost),
                }
            }
        };
        self.on_exit(res, true).await;
    }

    /// The main process ended (or the machine was lost): tear the boot down, record the exit,
    /// and stop, restart or destroy as the config says.
    async fn on_exit(&mut self, res: Result<ExitStatus, GuestError>, requested_stop: bool) {
        self.guest = None;
        let status = match res {
            Ok(status) => status,
            Err(e) => ExitStatus {
                code: None,
                signal: None,
                error: Some(format!("lost contact with the machine: {e}")),
                exited_at_ms: now_ms(),
            },
        };
        let remains = match self.inner.runtime.teardown(&self.id).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "teardown failed");
                Default::default()
            }
        };
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

    /// Completes a destroy that is recorded as under way: kill, clean up, mark destroyed.
    async fn finish_destroy(&mut self) -> Result<(), AgentError> {
        self.restart_at = None;
        if let Some(guest) = self.guest.take() {
            // A running machine destroyed with force: record how its process ended.
            let _ = guest.signal(Signal::KILL.number()).await;
            let status = timeout(KILL_GRACE, guest.exited())
                .await
                .ok()
                .and_then(Result::ok);
            if let Some(status) = status {
                let event = events::exit(&status, Destroying, false, true, 0);
                let _ = self.inner.store.append_event(&self.id, &event);
            }
        }
        self.inner.runtime.teardown(&self.id).await.map_err(|e| {
            AgentError::Internal(format!("could not tear machine {} down: {e}", self.id))
        })?;
        let _ = std::fs::remove_file(self.inner.log_path(&self.id));
        let event = events::event("destroy", Destroyed, Source::Host);
        self.transition(Destroying, Destroyed, &[event], FlowChange::Clear, None)?;
        info!("destroyed");
        Ok(())
    }

    /// Picks up after a server restart: re-attaches to what kept running and finishes or
    /// rolls back the flow a crash interrupted.
    async fn recover(&mut self) -> Result<(), AgentError> {
        let rec = self.record()?;
        let flow: Option<Flow> = rec
            .flow
            .clone()
            .and_then(|v| serde_json::from_value(v).ok());
        let attached = match self.inner.runtime.attach(&self.id).await {
            Ok(g) => g,
            Err(e) => {
                warn!(error = %e, "could not attach; treating the machine as lost");
                None
            }
        };
        info!(state = %rec.state, ?flow, attached = attached.is_some(), "recovering");
        match (rec.state, attached) {
            (Started, Some(guest)) => self.guest = Some(guest),
            (Started, None) => self.on_exit(Err(GuestError::Lost), false).await,
            (Starting, Some(guest)) => {
                // The boot finished but its success was not recorded: record it now.
                let event = events::event("start", Started, Source::Host);
                self.transition(Starting, Started, &[event], FlowChange::Clear, None)?;
                self.guest = Some(guest);
            }
            (Starting, None) => {
                let _ = self.inner.runtime.teardown(&self.id).await;
                self.boot().await;
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
            (Restarting, attached) => {
                if attached.is_some() {
                    let _ = self.inner.runtime.teardown(&self.id).await;
                }
                self.restart_at = Some(Instant::now());
            }
            (Destroying, attached) => {
                self.guest = attached;
                self.finish_destroy().await?;
            }
            (_, Some(_)) => {
                // Something runs for a machine that should be down: it is a leftover.
                let _ = self.inner.runtime.teardown(&self.id).await;
            }
            (_, None) => {}
        }
        Ok(())
    }
}

/// Back off between automatic restarts: 200 ms, doubling, at most 5 s.
fn restart_delay(restarts_so_far: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << restarts_so_far.min(5)))
        .min(Duration::from_secs(5))
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

//! One actor per machine: every operation on a machine runs here, one at a time, so flows
//! never interleave. A flow is recorded in the store before it acts (the `flow` column) and
//! cleared when it settles; [`MachineActor::recover`] resumes or rolls back what a crash left.

use std::sync::Arc;
use std::time::Duration;

use hangar_proto::{ExecSpec, ExitStatus, MainProcess};
use hangar_runtime::{BootSpec, ExecOutput, Guest, GuestError, Remains, Resources};
use hangar_store::{FlowChange, MachineRecord, NewVersion, Transition};
use hangar_types::{ImageRef, MachineConfig, MachineState, RestartPolicy, Signal};
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
    /// A restart the user asked for: stop (gracefully unless `force`), then boot again.
    Restart {
        signal: Option<Signal>,
        timeout: Option<Duration>,
        force: bool,
        reply: oneshot::Sender<Result<(), AgentError>>,
    },
    Signal {
        signal: Signal,
        reply: oneshot::Sender<Result<(), AgentError>>,
    },
    Suspend {
        reply: oneshot::Sender<Result<(), AgentError>>,
    },
    /// Replaces the machine's config with a new version; answers once it is recorded.
    Update {
        version: Box<PendingVersion>,
        skip_launch: bool,
        reply: oneshot::Sender<Result<(), AgentError>>,
    },
    Destroy {
        force: bool,
        reply: oneshot::Sender<Result<(), AgentError>>,
    },
    /// Hands out the running guest, for execs and ps (which then run outside the actor).
    Guest {
        reply: oneshot::Sender<Result<Guest, AgentError>>,
    },
}

/// A config version an update is about to install.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PendingVersion {
    pub instance_id: String,
    pub config: MachineConfig,
    pub image_ref: ImageRef,
    #[serde(default)]
    pub name: Option<String>,
}

/// The operation under way, as recorded in the store.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Flow {
    Start,
    /// A start of a suspended machine: resume it, else boot it afresh.
    Resume,
    Stop {
        signal: i32,
        timeout_ms: u64,
    },
    /// An automatic restart after the process exited (the restart policy).
    Restart,
    /// A restart the user asked for.
    UserRestart {
        signal: i32,
        timeout_ms: u64,
    },
    Suspend,
    Update {
        version: Box<PendingVersion>,
        skip_launch: bool,
        /// Where the machine was when the update began (`created` stays `created`).
        from: MachineState,
        signal: i32,
        timeout_ms: u64,
    },
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
    /// Runs the machine's health checks while it is started.
    checks: Option<tokio::task::JoinHandle<()>>,
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
        checks: None,
        restart_at: None,
    };
    tokio::spawn(actor.run(rx, recover).instrument(span));
    tx
}

type Reply<T> = oneshot::Sender<Result<T, AgentError>>;

fn precondition<T>(id: &str, state: MachineState, what: &str) -> Result<T, AgentError> {
    Err(AgentError::FailedPrecondition(format!(
        "machine {id} is {state} and cannot be {what}"
    )))
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
                res = exited => self.on_exit(res).await,
                _ = restart_due => {
                    self.restart_at = None;
                    self.boot_from(Restarting, Source::Host).await;
                }
            }
        }
        self.set_guest(None);
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
        self.apply(Transition {
            from,
            to,
            events,
            flow,
            restart_count,
            version: None,
        })
    }

    fn apply(&self, t: Transition<'_>) -> Result<MachineRecord, AgentError> {
        let to = t.to;
        let rec = self.inner.store.transition(&self.id, t)?;
        self.inner.notify(&self.id);
        if matches!(to, Failed) {
            self.inner.wake_standbys(&self.id);
        }
        Ok(rec)
    }

    /// The guest of the running boot; health checks run exactly while there is one.
    fn set_guest(&mut self, guest: Option<Guest>) {
        if let Some(task) = self.checks.take() {
            task.abort();
        }
        self.inner.clear_checks(&self.id);
        if let Some(g) = &guest {
            if let Ok(rec) = self.record() {
                self.checks = crate::checks::spawn(self.inner.clone(), &rec, g.clone());
            }
        }
        self.guest = guest;
    }

    async fn handle(&mut self, cmd: Command) -> std::ops::ControlFlow<()> {
        let rec = match self.record() {
            Ok(r) => r,
            Err(e) => {
                cmd.fail(e);
                return std::ops::ControlFlow::Continue(());
            }
        };
        match cmd {
            Command::Start { reply } => self.start(rec, reply).await,
            Command::Stop {
                signal,
                timeout,
                reply,
            } => {
                let signal = signal.unwrap_or_else(|| rec.config.stop_signal());
                let grace = timeout.unwrap_or_else(|| rec.config.stop_timeout());
                self.stop_cmd(rec, signal, grace, reply).await
            }
            Command::Restart {
                signal,
                timeout,
                force,
                reply,
            } => {
                if rec.state != Started {
                    let _ = reply.send(precondition(
                        &self.id,
                        rec.state,
                        "restarted (start it instead)",
                    ));
                    return std::ops::ControlFlow::Continue(());
                }
                let signal = if force {
                    Signal::KILL
                } else {
                    signal.unwrap_or_else(|| rec.config.stop_signal())
                };
                let grace = timeout.unwrap_or_else(|| rec.config.stop_timeout());
                let flow = Flow::UserRestart {
                    signal: signal.number(),
                    timeout_ms: grace.as_millis() as u64,
                };
                let event = events::event("restart", Restarting, Source::User);
                match self.transition(Started, Restarting, &[event], flow.record(), Some(0)) {
                    Ok(_) => {
                        let _ = reply.send(Ok(()));
                        self.user_restart(signal, grace).await;
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Signal { signal, reply } => {
                let res = match (&self.guest, rec.state) {
                    (Some(g), Started) => g.signal(signal.number()).await.map_err(|e| {
                        AgentError::Unavailable(format!("the machine did not take the signal: {e}"))
                    }),
                    (_, state) => precondition(&self.id, state, "signalled (it is not running)"),
                };
                let _ = reply.send(res);
            }
            Command::Suspend { reply } => self.suspend_cmd(rec, reply).await,
            Command::Update {
                version,
                skip_launch,
                reply,
            } => self.update_cmd(rec, version, skip_launch, reply).await,
            Command::Destroy { force, reply } => {
                match rec.state {
                    Created | Stopped | Failed | Suspended => {}
                    Started | Starting | Stopping | Restarting | Suspending if force => {}
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
                let res = match &self.guest {
                    Some(g) if rec.state == Started => Ok(g.clone()),
                    _ => Err(AgentError::FailedPrecondition(format!(
                        "machine {} is {}: this needs a started machine",
                        self.id, rec.state
                    ))),
                };
                let _ = reply.send(res);
            }
        }
        std::ops::ControlFlow::Continue(())
    }

    async fn start(&mut self, rec: MachineRecord, reply: Reply<MachineState>) {
        let prev = rec.state;
        let flow = match prev {
            Started | Starting => {
                let _ = reply.send(Ok(prev));
                return;
            }
            Suspended => Flow::Resume,
            Created | Stopped | Failed | Restarting => Flow::Start,
            other => {
                let _ = reply.send(precondition(&self.id, other, "started"));
                return;
            }
        };
        if let Err(e) = self.inner.admit(&rec) {
            let _ = reply.send(Err(e));
            return;
        }
        self.restart_at = None;
        let event = events::event("start", Starting, Source::User);
        match self.transition(prev, Starting, &[event], flow.record(), Some(0)) {
            Ok(_) => {
                let _ = reply.send(Ok(prev));
                self.boot(matches!(flow, Flow::Resume)).await;
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    async fn stop_cmd(
        &mut self,
        rec: MachineRecord,
        signal: Signal,
        grace: Duration,
        reply: Reply<()>,
    ) {
        match rec.state {
            Started => {
                let flow = Flow::Stop {
                    signal: signal.number(),
                    timeout_ms: grace.as_millis() as u64,
                };
                let event = events::event("stop", Stopping, Source::User);
                match self.transition(Started, Stopping, &[event], flow.record(), None) {
                    Ok(_) => {
                        let _ = reply.send(Ok(()));
                        self.stop(signal, grace).await;
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Restarting | Suspended => {
                // Nothing runs (or it is frozen): drop what is left and record the stop.
                self.restart_at = None;
                let _ = self.inner.runtime.teardown(&self.id).await;
                let event = events::event("stop", Stopped, Source::User);
                let res = self.transition(rec.state, Stopped, &[event], FlowChange::Clear, None);
                let _ = reply.send(res.map(|_| ()));
            }
            // Already down: stopping is a no-op, as in Fly.
            Created | Stopped | Failed | Stopping => {
                let _ = reply.send(Ok(()));
            }
            other => {
                let _ = reply.send(precondition(&self.id, other, "stopped"));
            }
        }
    }

    async fn suspend_cmd(&mut self, rec: MachineRecord, reply: Reply<()>) {
        match rec.state {
            Suspended | Suspending => {
                let _ = reply.send(Ok(()));
                return;
            }
            Started => {}
            other => {
                let _ = reply.send(precondition(&self.id, other, "suspended"));
                return;
            }
        }
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
    async fn suspend(&mut self) {
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
                let rec = self.record().ok();
                let (signal, grace) = rec
                    .map(|r| (r.config.stop_signal(), r.config.stop_timeout()))
                    .unwrap_or((Signal::TERM, Duration::from_secs(5)));
                let (status, remains) = self.halt(signal, grace).await;
                self.record_exit(status, remains, true).await;
            }
        }
    }

    async fn update_cmd(
        &mut self,
        rec: MachineRecord,
        version: Box<PendingVersion>,
        skip_launch: bool,
        reply: Reply<()>,
    ) {
        match rec.state {
            Created | Stopped | Failed | Started | Suspended | Restarting => {}
            other => {
                let _ = reply.send(precondition(
                    &self.id,
                    other,
                    "updated now; wait for it to settle",
                ));
                return;
            }
        }
        if !skip_launch {
            let mut next = rec.clone();
            next.config = version.config.clone();
            if let Err(e) = self.inner.admit(&next) {
                let _ = reply.send(Err(e));
                return;
            }
        }
        self.restart_at = None;
        let flow = Flow::Update {
            version,
            skip_launch,
            from: rec.state,
            signal: rec.config.stop_signal().number(),
            timeout_ms: rec.config.stop_timeout().as_millis() as u64,
        };
        let event = events::event("update", Updating, Source::User);
        if let Err(e) = self.transition(rec.state, Updating, &[event], flow.record(), Some(0)) {
            let _ = reply.send(Err(e));
            return;
        }
        let res = self.update(flow).await;
        let _ = reply.send(res);
    }

    /// Carries out a recorded update: end the old version, record the new one, boot it.
    async fn update(&mut self, flow: Flow) -> Result<(), AgentError> {
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
        if self.guest.is_some() {
            let signal = Signal::from_number(signal).unwrap_or(Signal::TERM);
            let (status, remains) = self.halt(signal, Duration::from_millis(timeout_ms)).await;
            let exit = events::exit(&status, Updating, remains.oom_killed, true, 0);
            let _ = self.inner.store.append_event(&self.id, &exit);
        } else {
            let _ = self.inner.runtime.teardown(&self.id).await;
        }
        let to = match (skip_launch, from) {
            (false, _) => Starting,
            (true, Created) => Created,
            (true, _) => Stopped,
        };
        let event = events::event("update", to, Source::Host);
        let flow = if to == Starting {
            Flow::Start.record()
        } else {
            FlowChange::Clear
        };
        self.apply(Transition {
            from: Updating,
            to,
            events: &[event],
            flow,
            restart_count: Some(0),
            version: Some(NewVersion {
                instance_id: &version.instance_id,
                config: &version.config,
                image_ref: &version.image_ref,
                name: version.name.as_deref(),
            }),
        })?;
        info!(version = %version.instance_id, %to, "updated");
        if to == Starting {
            self.boot(false).await;
        }
        Ok(())
    }

    /// Boots a machine that is `starting`, recording `started` or `failed`. A suspended
    /// machine is resumed when the runtime still has it, else booted afresh.
    async fn boot(&mut self, resume: bool) {
        let resumed = if resume {
            match self.inner.runtime.resume(&self.id).await {
                Ok(guest) => Some(guest),
                Err(e) => {
                    warn!(error = %e, "could not resume; booting afresh");
                    let _ = self.inner.runtime.teardown(&self.id).await;
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
            Ok(_) => self.boot(false).await,
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
        let secrets = self
            .inner
            .secrets_for(&rec.app)
            .map_err(|e| e.to_string())?;
        let who = Identity {
            app: &rec.app,
            machine_id: &rec.id,
            region: &rec.region,
            instance_id: &rec.instance_id,
            image_ref: &reference,
            secrets: &secrets,
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
            runtime: guest.runtime.clone(),
            rootfs_size_gb: rec
                .config
                .extra
                .get("rootfs")
                .and_then(|r| r.get("size_gb"))
                .and_then(|v| v.as_u64())
                .and_then(|v| u32::try_from(v).ok()),
            netns: None,
        };
        self.inner
            .runtime
            .boot(&spec)
            .await
            .map_err(|e| e.to_string())
    }

    /// Ends the running boot: the signal, SIGKILL after the grace period, then the runtime's
    /// teardown whatever happened. Returns how the main process ended.
    async fn halt(&mut self, signal: Signal, grace: Duration) -> (ExitStatus, Remains) {
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

    async fn teardown(&self) -> Remains {
        match self.inner.runtime.teardown(&self.id).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "teardown failed");
                Default::default()
            }
        }
    }

    /// The graceful stop the user asked for.
    async fn stop(&mut self, signal: Signal, grace: Duration) {
        let (status, remains) = self.halt(signal, grace).await;
        self.record_exit(status, remains, true).await;
    }

    /// A restart the user asked for: halt, then boot the same version again.
    async fn user_restart(&mut self, signal: Signal, grace: Duration) {
        let (status, remains) = self.halt(signal, grace).await;
        let exit = events::exit(&status, Restarting, remains.oom_killed, true, 0);
        let _ = self.inner.store.append_event(&self.id, &exit);
        self.boot_from(Restarting, Source::User).await;
    }

    /// The main process ended on its own (or the machine was lost).
    async fn on_exit(&mut self, res: Result<ExitStatus, GuestError>) {
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
    /// config says.
    async fn record_exit(&mut self, status: ExitStatus, remains: Remains, requested_stop: bool) {
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

    /// Completes a destroy that is recorded as under way: kill, clean up, mark destroyed.
    async fn finish_destroy(&mut self) -> Result<(), AgentError> {
        self.restart_at = None;
        if let Some(guest) = self.guest.clone() {
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
        self.set_guest(None);
        self.inner.runtime.teardown(&self.id).await.map_err(|e| {
            AgentError::Internal(format!("could not tear machine {} down: {e}", self.id))
        })?;
        let _ = std::fs::remove_file(self.inner.log_path(&self.id));
        let event = events::event("destroy", Destroyed, Source::Host);
        self.transition(Destroying, Destroyed, &[event], FlowChange::Clear, None)?;
        if let Some(network) = &self.inner.network {
            network.forget(&self.id);
        }
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
            (Started, None) => self.on_exit(Err(GuestError::Lost)).await,
            (Starting, Some(guest)) => {
                // The boot finished but its success was not recorded: record it now.
                let event = events::event("start", Started, Source::Host);
                self.transition(Starting, Started, &[event], FlowChange::Clear, None)?;
                self.set_guest(Some(guest));
            }
            (Starting, None) => {
                let _ = self.inner.runtime.teardown(&self.id).await;
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
                let (status, remains) = self
                    .halt(rec.config.stop_signal(), rec.config.stop_timeout())
                    .await;
                self.record_exit(status, remains, true).await;
            }
            (Restarting, attached) => {
                if let (Some(Flow::UserRestart { signal, timeout_ms }), Some(g)) =
                    (&flow, &attached)
                {
                    // The user's restart had not finished stopping the old process.
                    self.guest = Some(g.clone());
                    let signal = Signal::from_number(*signal).unwrap_or(Signal::KILL);
                    self.user_restart(signal, Duration::from_millis(*timeout_ms))
                        .await;
                } else {
                    if attached.is_some() {
                        let _ = self.inner.runtime.teardown(&self.id).await;
                    }
                    self.restart_at = Some(Instant::now());
                }
            }
            (Updating, attached) => {
                self.guest = attached;
                match flow {
                    Some(flow @ Flow::Update { .. }) => {
                        self.update(flow).await?;
                    }
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
                let _ = self.inner.runtime.teardown(&self.id).await;
            }
            (_, None) => {}
        }
        Ok(())
    }
}

impl Command {
    /// Answers the command with an error without acting on it.
    fn fail(self, e: AgentError) {
        match self {
            Command::Start { reply } => drop(reply.send(Err(e))),
            Command::Stop { reply, .. }
            | Command::Restart { reply, .. }
            | Command::Signal { reply, .. }
            | Command::Suspend { reply }
            | Command::Update { reply, .. }
            | Command::Destroy { reply, .. } => drop(reply.send(Err(e))),
            Command::Guest { reply } => drop(reply.send(Err(e))),
        }
    }
}

fn exit_status(res: Result<ExitStatus, GuestError>) -> ExitStatus {
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

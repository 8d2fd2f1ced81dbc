//! One actor per machine: every operation on a machine runs here, one at a time, so flows
//! never interleave. Each verb asks [`MachineState::admit`] first, records its flow in the
//! store before it acts (the `flow` column) and clears it when it settles; `recover.rs`
//! resumes or rolls back what a crash left.
//!
//! One file per verb: `start.rs` (and the boot every verb that runs the machine shares),
//! `stop.rs`, `restart.rs`, `suspend.rs`, `update.rs`, `destroy.rs`, `exit.rs` (the main
//! process ended), `recover.rs`, `guest.rs` (signals and handing the guest out).

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use hangar_runtime::{Guest, Remains};
use hangar_store::{FlowChange, MachineRecord, Transition};
use hangar_types::{Admission, MachineEvent, MachineState, Operation, Signal};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};
use tracing::{warn, Instrument};

use crate::error::AgentError;
use crate::events::Source;
use crate::Inner;

mod destroy;
mod exit;
mod flow;
mod guest;
mod recover;
mod restart;
mod start;
mod stop;
mod suspend;
mod update;

pub(crate) use flow::PendingVersion;
pub(crate) use guest::exec;

use flow::Flow;
use MachineState::*;

/// How long a process has to die after SIGKILL before the runtime tears it down by force.
const KILL_GRACE: Duration = Duration::from_secs(10);

type Reply<T> = oneshot::Sender<Result<T, AgentError>>;

pub(crate) enum Command {
    /// Answers with the state the machine was in before the start.
    Start {
        source: Source,
        reply: Reply<MachineState>,
    },
    Stop {
        signal: Option<Signal>,
        timeout: Option<Duration>,
        reply: Reply<()>,
    },
    /// A restart the user asked for: stop (gracefully unless `force`), then boot again.
    Restart {
        signal: Option<Signal>,
        timeout: Option<Duration>,
        force: bool,
        reply: Reply<()>,
    },
    Signal {
        signal: Signal,
        reply: Reply<()>,
    },
    Suspend {
        reply: Reply<()>,
    },
    /// Replaces the machine's config with a new version; answers once it is recorded.
    Update {
        version: Box<PendingVersion>,
        skip_launch: bool,
        reply: Reply<()>,
    },
    Destroy {
        force: bool,
        reply: Reply<()>,
    },
    /// Hands out the running guest, for execs and ps (which then run outside the actor).
    Guest {
        reply: Reply<Guest>,
    },
}

impl Command {
    fn operation(&self) -> Operation {
        match self {
            Command::Start { .. } => Operation::Start,
            Command::Stop { .. } => Operation::Stop,
            Command::Restart { .. } => Operation::Restart,
            Command::Signal { .. } => Operation::Signal,
            Command::Suspend { .. } => Operation::Suspend,
            Command::Update { .. } => Operation::Update,
            Command::Destroy { force: true, .. } => Operation::ForceDestroy,
            Command::Destroy { force: false, .. } => Operation::Destroy,
            Command::Guest { .. } => Operation::Exec,
        }
    }

    /// Answers the command with an error without acting on it.
    fn fail(self, e: AgentError) {
        match self {
            Command::Start { reply, .. } => drop(reply.send(Err(e))),
            Command::Stop { reply, .. }
            | Command::Restart { reply, .. }
            | Command::Signal { reply, .. }
            | Command::Suspend { reply }
            | Command::Update { reply, .. }
            | Command::Destroy { reply, .. } => drop(reply.send(Err(e))),
            Command::Guest { reply } => drop(reply.send(Err(e))),
        }
    }

    /// Answers success for a machine that already is where the command would take it.
    fn succeed_unchanged(self, state: MachineState) {
        match self {
            Command::Start { reply, .. } => drop(reply.send(Ok(state))),
            Command::Stop { reply, .. } | Command::Suspend { reply } => drop(reply.send(Ok(()))),
            // The admission table has no no-op for the others.
            other => {
                let op = other.operation();
                other.fail(AgentError::Internal(format!(
                    "no-op admitted for {op:?} in state {state}"
                )))
            }
        }
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
                    self.begin_boot(Restarting, Vec::new(), Source::Host).await;
                }
            }
        }
        self.set_guest(None);
        self.inner.forget_actor(&self.id);
    }

    /// Admits the command by the machine's state, then hands it to its verb.
    async fn handle(&mut self, cmd: Command) -> ControlFlow<()> {
        let rec = match self.record() {
            Ok(r) => r,
            Err(e) => {
                cmd.fail(e);
                return ControlFlow::Continue(());
            }
        };
        let to = match rec.state.admit(cmd.operation()) {
            Admission::Refuse(why) => {
                cmd.fail(AgentError::FailedPrecondition(format!(
                    "machine {} is {} and {why}",
                    self.id, rec.state
                )));
                return ControlFlow::Continue(());
            }
            Admission::Noop => {
                cmd.succeed_unchanged(rec.state);
                return ControlFlow::Continue(());
            }
            Admission::Begin(to) => to,
            Admission::Proceed => rec.state,
        };
        match cmd {
            Command::Start { source, reply } => self.start(rec, source, reply).await,
            Command::Stop {
                signal,
                timeout,
                reply,
            } => self.stop_cmd(rec, signal, timeout, reply).await,
            Command::Restart {
                signal,
                timeout,
                force,
                reply,
            } => self.restart_cmd(rec, signal, timeout, force, reply).await,
            Command::Signal { signal, reply } => {
                let _ = reply.send(self.signal(signal).await);
            }
            Command::Suspend { reply } => self.suspend_cmd(reply).await,
            Command::Update {
                version,
                skip_launch,
                reply,
            } => self.update_cmd(rec, version, skip_launch, reply).await,
            Command::Destroy { reply, .. } => {
                debug_assert_eq!(to, Destroying);
                return self.destroy_cmd(rec, reply).await;
            }
            Command::Guest { reply } => {
                let _ = reply.send(self.guest_handout());
            }
        }
        ControlFlow::Continue(())
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
        events: &[MachineEvent],
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
            reserve: None,
        })
    }

    /// A transition into a state that holds memory, admitted only if `memory_mb` more fits
    /// the host's capacity (Fly's `insufficient_capacity`).
    /// The check and the state change are one store transaction, so two machines starting
    /// at once cannot both take the last of the memory.
    fn reserve(&self, memory_mb: u32, t: Transition<'_>) -> Result<MachineRecord, AgentError> {
        self.apply(Transition {
            reserve: Some(self.inner.reservation(memory_mb)),
            ..t
        })
    }

    fn apply(&self, t: Transition<'_>) -> Result<MachineRecord, AgentError> {
        let to = t.to;
        let rec = self
            .inner
            .store
            .transition(&self.id, t)
            .map_err(|e| crate::capacity::from_store(&self.id, e))?;
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

    /// Removes whatever the runtime has of the machine; a failure is logged, not fatal.
    async fn teardown(&self) -> Remains {
        match self.inner.runtime.teardown(&self.id).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "teardown failed");
                Default::default()
            }
        }
    }
}

//! The host agent (Fly's "flyd" role): the authority for the machines of this host.
//!
//! It validates and records what the API asks for, pulls images, and drives each machine
//! through its lifecycle with a runtime. Each machine has an actor that runs its operations
//! one at a time (see `machine/`); flows are durable, so a restarted agent picks up where a
//! crashed one stopped and re-attaches to machines that kept running.
//!
//! One file per resource the API serves: `apps.rs`, `machines.rs` (create, read, list),
//! `verbs.rs` (start, stop, update... as requests to a machine's actor), `wait.rs`, `exec.rs`,
//! `inspect.rs` (versions, processes), `images.rs`, `leases.rs`, `metadata.rs`, `secrets.rs`,
//! `network.rs`, `org.rs`. `prepare.rs` builds what boots; `capacity.rs` admits it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_image::ImageStore;
use hangar_runtime::Runtimes;
use hangar_store::{AppRecord, MachineRecord, Store};
use hangar_types::{CheckStatus, MachineState};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{info, warn};

mod apps;
mod capacity;
mod checks;
mod error;
mod events;
mod exec;
mod images;
mod inspect;
mod launch;
mod leases;
mod logs;
mod machine;
mod machines;
mod metadata;
mod network;
mod org;
mod prepare;
mod schedule;
mod secrets;
mod verbs;
mod wait;

pub use error::AgentError;
pub use hangar_proto::Stream as OutputStream;
pub use hangar_runtime::{ExecSession, SessionEvent};
pub use inspect::PsSort;
pub use logs::LogLine;
pub use metadata::MetadataChange;
pub use network::{EgressIp, PrivateNetwork};
pub use org::OrgQuery;
pub use wait::{Wait, WaitFor, MAX_WAIT};

use events::Source;
use machine::Command;

pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub region: String,
    pub store: Arc<Store>,
    pub images: ImageStore,
    pub runtime: Arc<Runtimes>,
    /// Memory the machines of this host may use together; `None`: the host's RAM.
    pub memory_capacity_mb: Option<u64>,
    /// The length of an hour for `config.schedule` (shorter only in tests).
    pub schedule_hour: Duration,
    /// The private network, when the server runs one.
    pub network: Option<Arc<dyn PrivateNetwork>>,
}

#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    store: Arc<Store>,
    images: ImageStore,
    runtime: Arc<Runtimes>,
    region: String,
    logs_dir: PathBuf,
    actors: Mutex<HashMap<String, mpsc::UnboundedSender<Command>>>,
    /// Ids of machines whose state just changed, for waiters.
    changes: broadcast::Sender<String>,
    sealer: secrets::Sealer,
    /// Latest health-check results of started machines, by machine id then check name.
    checks: Mutex<HashMap<String, BTreeMap<String, CheckStatus>>>,
    memory_capacity_mb: u64,
    pub(crate) network: Option<Arc<dyn PrivateNetwork>>,
}

impl Inner {
    pub(crate) fn notify(&self, machine_id: &str) {
        let _ = self.changes.send(machine_id.to_string());
    }

    pub(crate) fn forget_actor(&self, machine_id: &str) {
        self.actors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(machine_id);
    }

    pub(crate) fn log_path(&self, machine_id: &str) -> PathBuf {
        self.logs_dir.join(format!("{machine_id}.log"))
    }

    /// Sends a command without waiting for its answer (the host acting on its own).
    pub(crate) fn send(&self, machine_id: &str, cmd: Command) {
        if let Some(actor) = self
            .actors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(machine_id)
        {
            let _ = actor.send(cmd);
        }
    }

    /// Starts the machine on its own (a schedule, a standby taking over), recorded as `flyd`.
    pub(crate) fn start_on_its_own(&self, machine_id: &str) {
        let (reply, _) = oneshot::channel();
        self.send(
            machine_id,
            Command::Start {
                source: Source::Host,
                reply,
            },
        );
    }

    /// A machine failed or was lost: the machines standing by for it start.
    pub(crate) fn wake_standbys(&self, machine_id: &str) {
        let Ok(machines) = self.store.live_machines() else {
            return;
        };
        for m in machines {
            if m.config.standbys.iter().any(|s| s == machine_id)
                && matches!(m.state, MachineState::Stopped | MachineState::Created)
            {
                info!(machine = %m.id, standby_for = machine_id, "starting a standby");
                self.start_on_its_own(&m.id);
            }
        }
    }

    pub(crate) fn set_check(&self, machine_id: &str, status: CheckStatus) {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(machine_id.to_string())
            .or_default()
            .insert(status.name.clone(), status);
    }

    pub(crate) fn clear_checks(&self, machine_id: &str) {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(machine_id);
    }

    fn checks_of(&self, machine_id: &str) -> Vec<CheckStatus> {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(machine_id)
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Starts the actor of a machine; `recover`: it was recorded by an earlier server.
    fn spawn_actor(self: &Arc<Self>, machine_id: &str, recover: bool) {
        let actor = machine::spawn(self.clone(), machine_id.to_string(), recover);
        self.actors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(machine_id.to_string(), actor);
    }
}

impl Agent {
    /// Opens the agent: cleans up what no machine owns, then starts an actor per machine,
    /// each of which re-attaches to its machine or finishes its interrupted flow.
    pub async fn open(config: AgentConfig) -> Result<Agent, AgentError> {
        let logs_dir = config.data_dir.join("logs");
        std::fs::create_dir_all(&logs_dir).map_err(|e| {
            AgentError::Internal(format!("cannot create {}: {e}", logs_dir.display()))
        })?;
        let (changes, _) = broadcast::channel(1024);
        let sealer = secrets::Sealer::open(&config.data_dir)?;
        let inner = Arc::new(Inner {
            store: config.store,
            images: config.images,
            runtime: config.runtime,
            region: config.region,
            logs_dir,
            actors: Mutex::new(HashMap::new()),
            changes,
            sealer,
            checks: Mutex::new(HashMap::new()),
            memory_capacity_mb: config
                .memory_capacity_mb
                .unwrap_or_else(hangar_runtime::host_memory_mb),
            network: config.network,
        });

        let live = inner.store.live_machines()?;
        let known: std::collections::HashSet<&str> = live.iter().map(|m| m.id.as_str()).collect();
        match inner.runtime.list().await {
            Ok(ids) => {
                for stray in ids.iter().filter(|id| !known.contains(id.as_str())) {
                    warn!(machine = %stray, "removing the remains of a machine that no longer exists");
                    if let Err(e) = inner.runtime.teardown(stray).await {
                        warn!(machine = %stray, error = %e, "could not remove stray machine");
                    }
                }
            }
            Err(e) => warn!(error = %e, "could not list the runtime's machines"),
        }
        for m in &live {
            inner.spawn_actor(&m.id, true);
        }
        tokio::spawn(schedule::run(inner.clone(), config.schedule_hour));
        tokio::spawn(logs::keep_bounded(inner.logs_dir.clone()));
        info!(
            machines = live.len(),
            runtime = inner.runtime.default_kind().as_str(),
            "agent ready"
        );
        Ok(Agent { inner })
    }

    /// The host's runtimes and how they were set up (the microvm's accelerator and why).
    pub fn runtime_status(&self) -> serde_json::Value {
        self.inner.runtime.status()
    }

    pub fn region(&self) -> &str {
        &self.inner.region
    }

    fn app_record(&self, name: &str) -> Result<AppRecord, AgentError> {
        self.inner
            .store
            .get_app(name)?
            .ok_or_else(|| AgentError::NotFound(format!("app {name:?} not found")))
    }

    fn machine_record(&self, app: &str, id: &str) -> Result<MachineRecord, AgentError> {
        match self.inner.store.get_machine(id)? {
            Some(m) if m.app == app => Ok(m),
            _ => Err(AgentError::NotFound(format!(
                "machine {id:?} not found in app {app:?}"
            ))),
        }
    }

    /// Sends a command to a machine's actor and waits for its answer.
    async fn command<T>(
        &self,
        id: &str,
        make: impl FnOnce(oneshot::Sender<Result<T, AgentError>>) -> Command,
    ) -> Result<T, AgentError> {
        let (tx, rx) = oneshot::channel();
        let sent = {
            let actors = self.inner.actors.lock().unwrap_or_else(|p| p.into_inner());
            actors.get(id).map(|a| a.send(make(tx)).is_ok())
        };
        match sent {
            // The actor ends when its machine is destroyed, dropping what it had not answered.
            Some(true) => rx
                .await
                .unwrap_or_else(|_| match self.inner.store.get_machine(id) {
                    Ok(Some(m)) if m.state == MachineState::Destroyed => Err(
                        AgentError::FailedPrecondition(format!("machine {id} is destroyed")),
                    ),
                    _ => Err(AgentError::Conflict(format!(
                        "machine {id} changed while the request was handled"
                    ))),
                }),
            _ => Err(AgentError::FailedPrecondition(format!(
                "machine {id} is destroyed"
            ))),
        }
    }
}

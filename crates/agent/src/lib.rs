//! The host agent (Fly's "flyd" role): the authority for the machines of this host.
//!
//! It validates and records what the API asks for, pulls images, and drives each machine
//! through its lifecycle with a runtime. Each machine has an actor that runs its operations
//! one at a time (see `machine.rs`); flows are durable, so a restarted agent picks up where a
//! crashed one stopped and re-attaches to machines that kept running.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_image::{Image, ImageStore};
use hangar_proto::{ExecSpec, ProcessSpec};
use hangar_runtime::{GuestError, Runtime};
use hangar_store::{AppRecord, MachineRecord, Store, StoreError};
use hangar_types::{
    new_instance_id, new_machine_id, valid_app_name, App, AppOrganization, CheckStatus,
    CreateAppRequest, CreateMachineRequest, ExecRequest, ExecResponse, Machine, MachineEvent,
    MachineState, StopRequest, WaitResponse,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{info, warn};

mod checks;
mod error;
mod events;
mod launch;
mod leases;
mod logs;
mod machine;
mod metadata;
mod network;
mod operations;
mod org;
mod schedule;
mod secrets;

pub use error::AgentError;
pub use hangar_proto::Stream as OutputStream;
pub use hangar_runtime::{ExecSession, SessionEvent};
pub use logs::LogLine;
pub use metadata::MetadataChange;
pub use network::{EgressIp, PrivateNetwork};
pub use operations::PsSort;
pub use org::OrgQuery;

use events::{now_ms, rfc3339, Source};
use machine::Command;

/// Events returned inline with a machine, as Fly does.
const INLINE_EVENTS: usize = 10;
/// Fly caps waits at 60 seconds.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// An exec without a timeout may run this long.
const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);

pub struct AgentConfig {
    pub data_dir: PathBuf,
    pub region: String,
    pub store: Arc<Store>,
    pub images: ImageStore,
    pub runtime: Arc<dyn Runtime>,
    /// Memory the machines of this host may use together; `None`: the host's RAM.
    pub memory_capacity_mb: Option<u64>,
    /// The length of an hour for `config.schedule` (shorter only in tests).
    pub schedule_hour: Duration,
    /// The private network, when the server runs one.
    pub network: Option<Arc<dyn PrivateNetwork>>,
}

/// A wait request: states to wait for and the conditions on them.
pub struct Wait<'a> {
    pub states: Vec<WaitFor>,
    pub version: Option<&'a str>,
    pub from_event_id: Option<&'a str>,
    pub timeout: Duration,
}

/// What `wait` waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitFor {
    State(MachineState),
    /// Any state that is not transient.
    Settled,
}

impl WaitFor {
    pub fn parse(s: &str) -> Option<WaitFor> {
        match s {
            "settled" => Some(WaitFor::Settled),
            "started" | "stopped" | "suspended" | "destroyed" | "failed" => {
                MachineState::parse(s).map(WaitFor::State)
            }
            _ => None,
        }
    }

    fn matches(self, state: MachineState) -> bool {
        match self {
            WaitFor::State(s) => s == state,
            WaitFor::Settled => !state.is_transient(),
        }
    }
}

#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    store: Arc<Store>,
    images: ImageStore,
    runtime: Arc<dyn Runtime>,
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

    /// Sends a command to a machine's actor without waiting for the answer.
    pub(crate) fn send(&self, machine_id: &str, cmd: Command) {
        let actors = self.actors.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(actor) = actors.get(machine_id) {
            let _ = actor.send(cmd);
        }
    }

    /// Starts the stopped machines that stand by for `machine_id` (`config.standbys`).
    pub(crate) fn wake_standbys(&self, machine_id: &str) {
        let Ok(machines) = self.store.live_machines() else {
            return;
        };
        for m in machines {
            if m.config.standbys.iter().any(|s| s == machine_id)
                && matches!(m.state, MachineState::Stopped | MachineState::Created)
            {
                info!(machine = %m.id, standby_for = machine_id, "starting a standby");
                let (reply, _) = oneshot::channel();
                self.send(&m.id, Command::Start { reply });
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

    /// Placement on this host: refuses a boot that would take the machines' memory past the
    /// host's capacity (Fly's `insufficient_capacity`).
    pub(crate) fn admit(&self, rec: &MachineRecord) -> Result<(), AgentError> {
        let wanted = u64::from(rec.config.effective_guest().memory_mb);
        let in_use: u64 = self
            .store
            .live_machines()?
            .iter()
            .filter(|m| m.id != rec.id && m.state.holds_resources())
            .map(|m| u64::from(m.config.effective_guest().memory_mb))
            .sum();
        if in_use + wanted > self.memory_capacity_mb {
            return Err(AgentError::InsufficientCapacity(format!(
                "insufficient memory available to fulfill request: machine {} needs {wanted} MB and this host has {} of {} MB left",
                rec.id,
                self.memory_capacity_mb.saturating_sub(in_use),
                self.memory_capacity_mb
            )));
        }
        Ok(())
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
        {
            let mut actors = inner.actors.lock().unwrap_or_else(|p| p.into_inner());
            for m in &live {
                actors.insert(
                    m.id.clone(),
                    machine::spawn(inner.clone(), m.id.clone(), true),
                );
            }
        }
        tokio::spawn(schedule::run(inner.clone(), config.schedule_hour));
        tokio::spawn(logs::keep_bounded(inner.logs_dir.clone()));
        info!(
            machines = live.len(),
            runtime = inner.runtime.kind(),
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

    pub fn images(&self) -> &ImageStore {
        &self.inner.images
    }

    // ---- apps ----

    pub fn create_app(&self, req: CreateAppRequest) -> Result<App, AgentError> {
        valid_app_name(&req.name).map_err(AgentError::InvalidArgument)?;
        let org = req
            .org_slug
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "personal".into());
        let record = AppRecord {
            id: format!("app_{}", new_machine_id()),
            name: req.name.clone(),
            numeric_id: 0,
            org_slug: org,
            network: req
                .network
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into()),
            created_at_ms: now_ms(),
        };
        let record = self.inner.store.create_app(&record).map_err(|e| match e {
            StoreError::Exists(_) => {
                AgentError::NameTaken(format!("app name {:?} is already taken", req.name))
            }
            other => other.into(),
        })?;
        self.app(record)
    }

    pub fn get_app(&self, name: &str) -> Result<App, AgentError> {
        let record = self.app_record(name)?;
        self.app(record)
    }

    pub fn list_apps(&self, org_slug: Option<&str>) -> Result<Vec<App>, AgentError> {
        self.inner
            .store
            .list_apps(org_slug)?
            .into_iter()
            .map(|a| self.app(a))
            .collect()
    }

    /// Destroys an app with all of its machines, running or not.
    pub async fn delete_app(&self, name: &str) -> Result<(), AgentError> {
        self.app_record(name)?;
        for m in self.inner.store.list_machines(name, false)? {
            match self
                .command(&m.id, |reply| Command::Destroy { force: true, reply })
                .await
            {
                Ok(()) | Err(AgentError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.inner.store.delete_app(name)?;
        info!(app = name, "app deleted");
        Ok(())
    }

    fn app_record(&self, name: &str) -> Result<AppRecord, AgentError> {
        self.inner
            .store
            .get_app(name)?
            .ok_or_else(|| AgentError::NotFound(format!("app {name:?} not found")))
    }

    fn app(&self, a: AppRecord) -> Result<App, AgentError> {
        let machines = self.inner.store.live_machine_count(&a.name)?;
        Ok(App {
            id: a.id,
            name: a.name,
            internal_numeric_id: a.numeric_id,
            machine_count: machines,
            volume_count: 0,
            network: a.network,
            organization: AppOrganization {
                name: a.org_slug.clone(),
                slug: a.org_slug,
                internal_numeric_id: 1,
            },
            status: "deployed".into(),
        })
    }

    // ---- machines ----

    /// Creates a machine: validates the config, pulls its image, records it, and (unless
    /// `skip_launch`) starts it. Nothing is recorded when any step before the record fails.
    pub async fn create_machine(
        &self,
        app: &str,
        req: CreateMachineRequest,
    ) -> Result<Machine, AgentError> {
        let app_rec = self.app_record(app)?;
        self.require_secrets_version(app, req.min_secrets_version)?;
        if let Some(ttl) = req.lease_ttl {
            leases::valid_ttl(ttl)?;
        }
        let config = req.config;
        config
            .validate()
            .map_err(|e| AgentError::InvalidArgument(e.to_string()))?;
        self.check_network_config(&config)?;
        if let Some(region) = req.region.as_deref().filter(|r| !r.is_empty()) {
            if region != self.inner.region {
                return Err(AgentError::InvalidArgument(format!(
                    "region {region:?} is not served by this installation (its regions: {})",
                    self.inner.region
                )));
            }
        }
        let wanted = config.effective_guest().runtime;
        if let Some(rt) = wanted.as_deref() {
            if !self.inner.runtime.provides(rt) {
                return Err(AgentError::Unprocessable(format!(
                    "runtime {rt:?} is not available on this host (it runs {:?})",
                    self.inner.runtime.kind()
                )));
            }
        }
        let name = match req.name.filter(|n| !n.is_empty()) {
            Some(n) => {
                valid_machine_name(&n)?;
                n
            }
            None => self.unused_name(app)?,
        };

        let pull_started = std::time::Instant::now();
        let image = self.inner.images.pull(&config.image).await?;
        let pull_ms = pull_started.elapsed().as_millis() as u64;
        let id = new_machine_id();
        let instance_id = new_instance_id();
        // Refuse now what could never boot, rather than record a machine doomed to fail.
        let secrets = self.inner.secrets_for(app)?;
        let who = launch::Identity {
            app,
            machine_id: &id,
            region: &self.inner.region,
            instance_id: &instance_id,
            image_ref: &image.reference,
            secrets: &secrets,
        };
        launch::launch_spec(&config, &image.config, &who).map_err(AgentError::InvalidArgument)?;

        let now = now_ms();
        let record = MachineRecord {
            id: id.clone(),
            app: app_rec.name,
            name,
            region: self.inner.region.clone(),
            state: MachineState::Created,
            instance_id,
            config,
            image_ref: image.image_ref.clone(),
            restart_count: 0,
            flow: None,
            cordoned: false,
            created_at_ms: now,
            updated_at_ms: now,
        };
        if !req.skip_launch {
            self.inner.admit(&record)?;
        }
        let mut launch_event = events::event("launch", MachineState::Created, Source::User);
        // What the create's pull took, for `machine status` and event consumers.
        launch_event.request = Some(serde_json::json!({
            "image": image.reference,
            "digest": image.digest,
            "layers": image.layers.len(),
            "bytes": image.size,
            "pull_ms": pull_ms,
        }));
        self.inner
            .store
            .insert_machine(&record, &launch_event)
            .map_err(|e| match e {
                StoreError::Exists(_) => AgentError::Conflict(format!(
                    "a machine named {:?} already exists in app {app:?}",
                    record.name
                )),
                other => other.into(),
            })?;
        info!(app, machine = %id, image = %image.reference, "machine created");
        self.inner
            .actors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id.clone(),
                machine::spawn(self.inner.clone(), id.clone(), false),
            );
        self.inner.notify(&id);
        let nonce = match req.lease_ttl {
            Some(ttl) => Some(self.acquire_lease(app, &id, None, Some(ttl), None)?.nonce),
            None => None,
        };
        if !req.skip_launch {
            self.command(&id, |reply| Command::Start { reply }).await?;
        }
        let mut machine = self.get_machine(app, &id)?;
        machine.nonce = nonce;
        Ok(machine)
    }

    /// A generated name no live machine of the app has yet.
    fn unused_name(&self, app: &str) -> Result<String, AgentError> {
        let taken: std::collections::HashSet<String> = self
            .inner
            .store
            .list_machines(app, false)?
            .into_iter()
            .map(|m| m.name)
            .collect();
        Ok((0..20)
            .map(|_| generated_name())
            .find(|n| !taken.contains(n))
            .unwrap_or_else(|| format!("machine-{}", new_machine_id())))
    }

    pub fn get_machine(&self, app: &str, id: &str) -> Result<Machine, AgentError> {
        let rec = self.machine_record(app, id)?;
        let events = self.inner.store.events(id, INLINE_EVENTS)?;
        let checks = self.inner.checks_of(id);
        Ok(self.with_private_ip(to_api(rec, events, checks)))
    }

    pub fn list_machines(
        &self,
        app: &str,
        include_deleted: bool,
        region: Option<&str>,
        states: &[MachineState],
        summary: bool,
    ) -> Result<Vec<Machine>, AgentError> {
        self.app_record(app)?;
        let mut out = Vec::new();
        for rec in self.inner.store.list_machines(app, include_deleted)? {
            if region.is_some_and(|r| r != rec.region)
                || (!states.is_empty() && !states.contains(&rec.state))
            {
                continue;
            }
            let (events, checks) = if summary {
                (Vec::new(), Vec::new())
            } else {
                (
                    self.inner.store.events(&rec.id, INLINE_EVENTS)?,
                    self.inner.checks_of(&rec.id),
                )
            };
            out.push(self.with_private_ip(to_api(rec, events, checks)));
        }
        Ok(out)
    }

    /// Starts a machine; returns its state before the start. The boot continues after this
    /// returns: `wait` for `started`.
    pub async fn start_machine(
        &self,
        app: &str,
        id: &str,
        nonce: Option<&str>,
    ) -> Result<MachineState, AgentError> {
        self.machine_record(app, id)?;
        self.check_lease(id, nonce)?;
        self.command(id, |reply| Command::Start { reply }).await
    }

    /// Stops a machine: the signal (the config's, else SIGINT), then SIGKILL after the
    /// timeout. Returns once the signal is on its way: `wait` for `stopped`.
    pub async fn stop_machine(
        &self,
        app: &str,
        id: &str,
        req: StopRequest,
        nonce: Option<&str>,
    ) -> Result<(), AgentError> {
        self.machine_record(app, id)?;
        self.check_lease(id, nonce)?;
        let timeout = req.timeout.map(|d| d.0);
        self.command(id, |reply| Command::Stop {
            signal: req.signal,
            timeout,
            reply,
        })
        .await
    }

    /// Destroys a machine; a running one only with `force`.
    fn with_private_ip(&self, mut m: Machine) -> Machine {
        if m.state != MachineState::Destroyed {
            m.private_ip = self.private_ip(&m.id);
        }
        m
    }

    pub async fn destroy_machine(
        &self,
        app: &str,
        id: &str,
        force: bool,
        nonce: Option<&str>,
    ) -> Result<(), AgentError> {
        let rec = self.machine_record(app, id)?;
        self.check_lease(id, nonce)?;
        if rec.state == MachineState::Destroyed {
            return Err(AgentError::FailedPrecondition(format!(
                "machine {id} is already destroyed"
            )));
        }
        self.command(id, |reply| Command::Destroy { force, reply })
            .await
    }

    /// Waits until the machine reaches one of `states`, up to `timeout` (at most 60 s).
    /// With `version`, the wait is for that version of the machine; with `from_event_id`,
    /// only a state reached after that event counts.
    pub async fn wait_machine(
        &self,
        app: &str,
        id: &str,
        w: Wait<'_>,
    ) -> Result<WaitResponse, AgentError> {
        let waits_for_stop = w.states.contains(&WaitFor::State(MachineState::Stopped));
        if waits_for_stop && w.version.is_none() {
            return Err(AgentError::InvalidArgument(
                "version: waiting for the stopped state needs the machine version (instance_id)"
                    .into(),
            ));
        }
        let mut changes = self.inner.changes.subscribe();
        let deadline = tokio::time::Instant::now() + w.timeout.min(MAX_WAIT);
        loop {
            let rec = self.machine_record(app, id)?;
            if let Some(v) = w.version {
                if v != rec.instance_id {
                    let known = self
                        .inner
                        .store
                        .versions(id)?
                        .iter()
                        .any(|old| old.instance_id == v);
                    return Err(AgentError::InvalidArgument(if known {
                        format!(
                            "machine {id} version {v} is currently replaced by version {}",
                            rec.instance_id
                        )
                    } else {
                        format!(
                            "machine {id} has no version {v:?} (its version is {})",
                            rec.instance_id
                        )
                    }));
                }
            }
            if let Some(reached) = self.reached(id, &rec, &w)? {
                return Ok(WaitResponse {
                    ok: true,
                    state: reached.0,
                    version: Some(rec.instance_id),
                    event_id: reached.1,
                });
            }
            loop {
                match tokio::time::timeout_at(deadline, changes.recv()).await {
                    Err(_) => {
                        return Err(AgentError::Timeout(format!(
                            "machine {id} did not reach the requested state in time (it is {})",
                            rec.state
                        )))
                    }
                    Ok(Ok(changed)) if changed != id => continue,
                    Ok(_) => break,
                }
            }
        }
    }

    /// The state a wait was for and the event that brought it, when it has been reached.
    fn reached(
        &self,
        id: &str,
        rec: &MachineRecord,
        w: &Wait<'_>,
    ) -> Result<Option<(MachineState, Option<String>)>, AgentError> {
        let Some(after) = w.from_event_id else {
            if !w.states.iter().any(|s| s.matches(rec.state)) {
                return Ok(None);
            }
            let event_id = self
                .inner
                .store
                .events(id, 1)?
                .into_iter()
                .next()
                .map(|e| e.id);
            return Ok(Some((rec.state, event_id)));
        };
        // Events newest first: those before `after` in the list happened after it.
        let events = self.inner.store.events(id, 500)?;
        let Some(pos) = events.iter().position(|e| e.id == after) else {
            return Err(AgentError::InvalidArgument(format!(
                "from_event_id: machine {id} has no recent event {after:?}"
            )));
        };
        Ok(events[..pos].iter().rev().find_map(|e| {
            let state = MachineState::parse(&e.status)?;
            w.states
                .iter()
                .any(|s| s.matches(state))
                .then(|| (state, Some(e.id.clone())))
        }))
    }

    /// A machine's events, newest first.
    pub fn machine_events(
        &self,
        app: &str,
        id: &str,
        limit: usize,
    ) -> Result<Vec<MachineEvent>, AgentError> {
        self.machine_record(app, id)?;
        Ok(self.inner.store.events(id, limit)?)
    }

    /// Runs a command inside a started machine and returns its output.
    pub async fn exec(
        &self,
        app: &str,
        id: &str,
        req: ExecRequest,
    ) -> Result<ExecResponse, AgentError> {
        self.machine_record(app, id)?;
        let argv = exec_argv(req.command, req.cmd)?;
        let limit = req
            .timeout
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_EXEC_TIMEOUT);
        let guest = self.command(id, |reply| Command::Guest { reply }).await?;
        let spec = ExecSpec {
            process: exec_process(argv, false),
            stdin: req.stdin.map(String::into_bytes),
            ..Default::default()
        };
        let out = machine::exec(guest, spec, limit).await?;
        Ok(ExecResponse {
            exit_code: out.status.shell_code(),
            exit_signal: out.status.signal.unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Starts an interactive command in a started machine (a shell, `exec -t`), with a
    /// terminal of `size` (rows, cols) when given.
    pub async fn exec_session(
        &self,
        app: &str,
        id: &str,
        command: Option<Vec<String>>,
        cmd: Option<String>,
        size: Option<(u16, u16)>,
    ) -> Result<ExecSession, AgentError> {
        self.machine_record(app, id)?;
        let argv = exec_argv(command, cmd)?;
        let guest = self.command(id, |reply| Command::Guest { reply }).await?;
        let (rows, cols) = size.unwrap_or_default();
        let spec = ExecSpec {
            process: exec_process(argv, size.is_some()),
            interactive: true,
            rows,
            cols,
            ..Default::default()
        };
        guest.session(spec).await.map_err(|e| match e {
            GuestError::Refused(m) => AgentError::InvalidArgument(m),
            other => AgentError::Unavailable(format!("the machine did not answer: {other}")),
        })
    }

    /// Imports an image archive or layout from a path on this host.
    pub async fn import_image(
        &self,
        path: &Path,
        reference: Option<&str>,
    ) -> Result<Image, AgentError> {
        Ok(self.inner.images.import(path, reference).await?)
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

fn to_api(rec: MachineRecord, events: Vec<MachineEvent>, checks: Vec<CheckStatus>) -> Machine {
    Machine {
        version: rec.instance_id.clone(),
        instance_id: rec.instance_id,
        id: rec.id,
        name: rec.name,
        state: rec.state,
        region: rec.region,
        private_ip: String::new(),
        config: rec.config,
        image_ref: rec.image_ref,
        created_at: rfc3339(rec.created_at_ms),
        updated_at: rfc3339(rec.updated_at_ms),
        events,
        checks,
        host_status: "ok".into(),
        incomplete_config: None,
        nonce: None,
        cordoned: rec.cordoned,
    }
}

/// The command of an exec: `command` (an argv), else fly-go's `cmd` string split as a shell
/// would.
fn exec_argv(command: Option<Vec<String>>, cmd: Option<String>) -> Result<Vec<String>, AgentError> {
    match (command, cmd) {
        (Some(argv), _) if !argv.is_empty() => Ok(argv),
        (_, Some(cmd)) if !cmd.trim().is_empty() => shlex::split(&cmd).ok_or_else(|| {
            AgentError::InvalidArgument(format!("cmd {cmd:?} has unbalanced quotes"))
        }),
        _ => Err(AgentError::InvalidArgument(
            "command: a non-empty command is required".into(),
        )),
    }
}

/// Execs run as root in the machine's root directory; init gives them the machine's
/// environment.
fn exec_process(argv: Vec<String>, tty: bool) -> ProcessSpec {
    ProcessSpec {
        argv,
        env: Vec::new(),
        cwd: String::new(),
        user: "root".into(),
        tty,
    }
}

pub(crate) fn valid_machine_name(name: &str) -> Result<(), AgentError> {
    let ok = name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(AgentError::InvalidArgument(format!(
            "name: {name:?} must be at most 63 letters, digits, dashes, dots or underscores"
        )))
    }
}

/// Fly-style names: an adjective, a noun and a number.
fn generated_name() -> String {
    use rand::seq::IndexedRandom;
    use rand::Rng;
    const ADJECTIVES: &[&str] = &[
        "quiet", "bold", "brave", "calm", "crimson", "dawn", "eager", "fancy", "gentle", "hidden",
        "icy", "jolly", "lively", "misty", "nimble", "odd", "proud", "quick", "rapid", "silent",
        "sunny", "tiny", "vivid", "wild",
    ];
    const NOUNS: &[&str] = &[
        "field", "river", "forest", "meadow", "harbor", "canyon", "glacier", "island", "lake",
        "moon", "ocean", "pine", "ridge", "star", "thunder", "valley", "wave", "willow", "breeze",
        "comet", "delta", "ember",
    ];
    let mut rng = rand::rng();
    format!(
        "{}-{}-{}",
        ADJECTIVES.choose(&mut rng).unwrap_or(&"quiet"),
        NOUNS.choose(&mut rng).unwrap_or(&"field"),
        rng.random_range(1000..10000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_states() {
        assert_eq!(
            WaitFor::parse("started"),
            Some(WaitFor::State(MachineState::Started))
        );
        assert_eq!(WaitFor::parse("settled"), Some(WaitFor::Settled));
        assert_eq!(
            WaitFor::parse("starting"),
            None,
            "only settled states can be waited for"
        );
        assert!(WaitFor::Settled.matches(MachineState::Stopped));
        assert!(!WaitFor::Settled.matches(MachineState::Stopping));
    }

    #[test]
    fn names() {
        assert!(valid_machine_name("web-1").is_ok());
        assert!(valid_machine_name("has space").is_err());
        let n = generated_name();
        assert_eq!(n.split('-').count(), 3, "{n}");
    }
}

//! The verbs of the Machines API as requests to a machine's actor: each checks the request
//! (the machine, its lease), then the actor decides by the machine's state (`machine/`).

use std::time::Duration;

use hangar_types::{
    new_instance_id, Machine, MachineState, Signal, StopRequest, UpdateMachineRequest,
};
use tracing::info;

use crate::error::AgentError;
use crate::events::Source;
use crate::machine::{Command, PendingVersion};
use crate::machines::valid_machine_name;
use crate::prepare::Draft;
use crate::Agent;

impl Agent {
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
        self.command(id, |reply| Command::Start {
            source: Source::User,
            reply,
        })
        .await
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

    /// Makes a new version of the machine from `req.config` and, unless `skip_launch`, runs
    /// it: a running machine is stopped, reconfigured and started again.
    pub async fn update_machine(
        &self,
        app: &str,
        id: &str,
        req: UpdateMachineRequest,
        nonce: Option<&str>,
    ) -> Result<Machine, AgentError> {
        let rec = self.machine_record(app, id)?;
        self.check_lease(id, nonce)?;
        if let Some(expected) = req.current_version.as_deref().filter(|v| !v.is_empty()) {
            if expected != rec.instance_id {
                return Err(AgentError::Conflict(format!(
                    "current_version: {expected} is stale; machine {id} is at version {}",
                    rec.instance_id
                )));
            }
        }
        self.require_secrets_version(app, req.min_secrets_version)?;
        let config = req.config;
        self.inner.check_config(&config)?;
        if let Some(region) = req.region.as_deref().filter(|r| !r.is_empty()) {
            if region != rec.region {
                return Err(AgentError::InvalidArgument(format!(
                    "region: an update cannot move machine {id} from {} to {region:?}; clone it instead",
                    rec.region
                )));
            }
        }
        let name = match req.name.filter(|n| !n.is_empty() && *n != rec.name) {
            Some(n) => {
                valid_machine_name(&n)?;
                if self
                    .inner
                    .store
                    .list_machines(app, false)?
                    .iter()
                    .any(|m| m.name == n)
                {
                    return Err(AgentError::Conflict(format!(
                        "a machine named {n:?} already exists in app {app:?}"
                    )));
                }
                Some(n)
            }
            None => None,
        };

        let image = self.inner.images.pull(&config.image).await?;
        let instance_id = new_instance_id();
        let draft = Draft {
            app,
            machine_id: id,
            region: &rec.region,
            instance_id: &instance_id,
            config: &config,
        };
        self.inner.launch(&draft, &image, None)?;

        let version = Box::new(PendingVersion {
            instance_id: instance_id.clone(),
            config,
            image_ref: image.image_ref.clone(),
            name,
        });
        let skip_launch = req.skip_launch;
        self.command(id, |reply| Command::Update {
            version,
            skip_launch,
            reply,
        })
        .await?;
        info!(app, machine = id, version = %instance_id, "machine updated");
        let mut machine = self.get_machine(app, id)?;
        if let Some(ttl) = req.lease_ttl {
            if nonce.is_none() {
                machine.nonce = Some(self.acquire_lease(app, id, None, Some(ttl), None)?.nonce);
            }
        }
        Ok(machine)
    }

    /// Restarts a started machine: the signal, SIGKILL after `timeout`, then a fresh boot of
    /// the same version. `force` skips the graceful part.
    pub async fn restart_machine(
        &self,
        app: &str,
        id: &str,
        signal: Option<Signal>,
        timeout: Option<Duration>,
        force: bool,
        nonce: Option<&str>,
    ) -> Result<(), AgentError> {
        self.machine_record(app, id)?;
        self.check_lease(id, nonce)?;
        self.command(id, |reply| Command::Restart {
            signal,
            timeout,
            force,
            reply,
        })
        .await
    }

    /// Sends a signal to the machine's main process.
    pub async fn signal_machine(
        &self,
        app: &str,
        id: &str,
        signal: Signal,
        nonce: Option<&str>,
    ) -> Result<(), AgentError> {
        self.machine_record(app, id)?;
        self.check_lease(id, nonce)?;
        self.command(id, |reply| Command::Signal { signal, reply })
            .await
    }

    /// Freezes a started machine with its memory kept; `start` resumes it.
    pub async fn suspend_machine(
        &self,
        app: &str,
        id: &str,
        nonce: Option<&str>,
    ) -> Result<(), AgentError> {
        self.machine_record(app, id)?;
        self.check_lease(id, nonce)?;
        self.command(id, |reply| Command::Suspend { reply }).await
    }

    /// Marks the machine cordoned (or not). Hangar has no proxy yet, so a cordon is recorded
    /// and shown but routes nothing: traffic routing arrives with the proxy.
    pub fn cordon_machine(
        &self,
        app: &str,
        id: &str,
        cordoned: bool,
        nonce: Option<&str>,
    ) -> Result<(), AgentError> {
        self.machine_record(app, id)?;
        self.check_lease(id, nonce)?;
        self.inner.store.set_cordoned(id, cordoned)?;
        self.inner.notify(id);
        Ok(())
    }
}

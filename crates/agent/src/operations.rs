//! Operations on an existing machine beyond start and stop: update, restart, signal,
//! suspend, cordon, and the read-only views of its versions and processes.

use std::time::Duration;

use hangar_types::{
    new_instance_id, ListenSocket, Machine, MachineVersion, ProcessStat, Signal,
    UpdateMachineRequest,
};
use tracing::info;

use crate::error::AgentError;
use crate::launch;
use crate::machine::{Command, PendingVersion};
use crate::{valid_machine_name, Agent};

/// What `ps` sorts by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsSort {
    Pid,
    Cpu,
    Rss,
    Rtime,
    Command,
}

impl PsSort {
    pub fn parse(s: &str) -> Option<PsSort> {
        Some(match s {
            "pid" => PsSort::Pid,
            "cpu" => PsSort::Cpu,
            "rss" | "mem" | "memory" => PsSort::Rss,
            "rtime" | "time" => PsSort::Rtime,
            "command" | "name" => PsSort::Command,
            _ => return None,
        })
    }
}

impl Agent {
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
        config
            .validate()
            .map_err(|e| AgentError::InvalidArgument(e.to_string()))?;
        self.check_network_config(&config)?;
        if let Some(region) = req.region.as_deref().filter(|r| !r.is_empty()) {
            if region != rec.region {
                return Err(AgentError::InvalidArgument(format!(
                    "region: an update cannot move machine {id} from {} to {region:?}; clone it instead",
                    rec.region
                )));
            }
        }
        if let Some(rt) = config.effective_guest().runtime.as_deref() {
            if !self.inner.runtime.provides(rt) {
                return Err(AgentError::Unprocessable(format!(
                    "runtime {rt:?} is not available on this host (it runs {:?})",
                    self.inner.runtime.kind()
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
        let secrets = self.inner.secrets_for(app)?;
        let who = launch::Identity {
            app,
            machine_id: id,
            region: &rec.region,
            instance_id: &instance_id,
            image_ref: &image.reference,
            secrets: &secrets,
        };
        launch::launch_spec(&config, &image.config, &who).map_err(AgentError::InvalidArgument)?;

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

    /// Takes the machine out of (or back into) the proxy's rotation.
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

    /// The machine's config versions, newest first.
    pub fn machine_versions(&self, app: &str, id: &str) -> Result<Vec<MachineVersion>, AgentError> {
        self.machine_record(app, id)?;
        Ok(self
            .inner
            .store
            .versions(id)?
            .into_iter()
            .map(|v| MachineVersion {
                version: v.instance_id,
                user_config: v.config,
            })
            .collect())
    }

    /// The processes inside a started machine.
    pub async fn machine_processes(
        &self,
        app: &str,
        id: &str,
        sort: PsSort,
        descending: bool,
    ) -> Result<Vec<ProcessStat>, AgentError> {
        self.machine_record(app, id)?;
        let guest = self.command(id, |reply| Command::Guest { reply }).await?;
        let processes = guest
            .ps()
            .await
            .map_err(|e| AgentError::Unavailable(format!("the machine did not answer: {e}")))?;
        let mut stats: Vec<ProcessStat> = processes
            .into_iter()
            .map(|p| ProcessStat {
                pid: p.pid,
                command: p.command,
                directory: p.cwd,
                cpu: p.utime + p.stime,
                rss: p.rss_bytes,
                rtime: p.age_ms,
                stime: p.stime,
                listen_sockets: p
                    .listening
                    .into_iter()
                    .map(|(proto, address)| ListenSocket { proto, address })
                    .collect(),
            })
            .collect();
        stats.sort_by(|a, b| match sort {
            PsSort::Pid => a.pid.cmp(&b.pid),
            PsSort::Cpu => a.cpu.cmp(&b.cpu),
            PsSort::Rss => a.rss.cmp(&b.rss),
            PsSort::Rtime => a.rtime.cmp(&b.rtime),
            PsSort::Command => a.command.cmp(&b.command),
        });
        if descending {
            stats.reverse();
        }
        Ok(stats)
    }
}

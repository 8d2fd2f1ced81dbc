//! Read-only views of a machine beyond its record: its config versions and its processes.

use hangar_types::{ListenSocket, MachineVersion, ProcessStat};

use crate::error::AgentError;
use crate::machine::Command;
use crate::Agent;

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

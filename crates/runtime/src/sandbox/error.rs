//! What goes wrong in the sandbox runtime, and what runc says about a container.

use std::fmt;
use std::path::PathBuf;

use nix::errno::Errno;
use serde::Deserialize;

use crate::keeper::KeeperError;
use crate::GuestError;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid machine id {0:?}: expected 1 to 64 letters, digits, '-', '_' or '.', starting with a letter or digit (and not \"runc\")")]
    InvalidId(String),
    /// The boot spec cannot be booted as given; the message says which part and why.
    #[error("{0}")]
    Spec(String),
    #[error("a sandbox joins a network namespace; it cannot use the tap device {0}")]
    TapAttach(String),
    #[error("image layer {} is missing or not a directory", .0.display())]
    MissingLayer(PathBuf),
    #[error("mounting the overlay root filesystem: {}", .0.desc())]
    Mount(Errno),
    #[error("unmounting {}: {}", .path.display(), .errno.desc())]
    Unmount { path: PathBuf, errno: Errno },
    #[error(transparent)]
    Runc(#[from] RuncError),
    #[error(transparent)]
    Keeper(#[from] KeeperError),
    /// Init died before it opened its control channel.
    #[error("hangar-init {how} before opening its control channel; its messages are in {}", .log.display())]
    InitDied { how: Gone, log: PathBuf },
    /// Init did not get as far as `what` before the boot's deadline.
    #[error("hangar-init did not {what} within {secs}s")]
    InitSilent { what: &'static str, secs: u64 },
    #[error("hangar-init: {0}")]
    Guest(#[from] GuestError),
    #[error("machine {machine_id} is {status} and cannot be suspended")]
    CannotSuspend {
        machine_id: String,
        status: RuncStatus,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Tags an I/O error with what was being done.
pub(super) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let context = context.into();
    move |source| SandboxError::Io { context, source }
}

#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    #[error("cannot run {}: {source}", .binary.display())]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// runc ran and failed; `message` is its last error (from its JSON log, else stderr).
    #[error("runc {command} failed: {message}")]
    Failed { command: String, message: String },
    #[error("runc {command} did not finish within {secs}s")]
    Timeout { command: String, secs: u64 },
    #[error("unreadable `runc state` of {id}: {source}")]
    State {
        id: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A container's status as `runc state` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuncStatus {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
    /// A status this code does not know (a newer runc).
    #[serde(other)]
    Unknown,
}

impl fmt::Display for RuncStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuncStatus::Creating => "creating",
            RuncStatus::Created => "created",
            RuncStatus::Running => "running",
            RuncStatus::Paused => "paused",
            RuncStatus::Stopped => "stopped",
            RuncStatus::Unknown => "in an unknown state",
        })
    }
}

/// The part of `runc state` the sandbox reads.
#[derive(Debug, Deserialize)]
pub(super) struct RuncState {
    pub status: RuncStatus,
    /// 0 for a stopped container.
    #[serde(default)]
    pub pid: i32,
}

/// How a process turned out to be gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone {
    /// No such process (reaped by someone else, or never there).
    Missing,
    Exited(i32),
    Signaled(nix::sys::signal::Signal),
    /// A zombie that is not our child, so its status is not ours to read.
    Dead,
}

impl fmt::Display for Gone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gone::Missing => f.write_str("is gone"),
            Gone::Exited(code) => write!(f, "exited with status {code}"),
            Gone::Signaled(sig) => write!(f, "was killed by {sig}"),
            Gone::Dead => f.write_str("is dead"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_states_parse_into_statuses() {
        let state: RuncState =
            serde_json::from_str(r#"{"ociVersion":"1.0.2","id":"m1","pid":42,"status":"running"}"#)
                .unwrap();
        assert_eq!((state.status, state.pid), (RuncStatus::Running, 42));
        let state: RuncState = serde_json::from_str(r#"{"status":"stopped"}"#).unwrap();
        assert_eq!((state.status, state.pid), (RuncStatus::Stopped, 0));
        let state: RuncState = serde_json::from_str(r#"{"status":"hibernating"}"#).unwrap();
        assert_eq!(state.status, RuncStatus::Unknown);
    }
}

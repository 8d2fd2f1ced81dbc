//! Runtimes boot machines; the agent decides when.
//!
//! A [`Runtime`] turns a [`BootSpec`] (image layers, the launch spec for `hangar-init`, the
//! resources) into a running, isolated process tree whose PID 1 is `hangar-init`, and hands
//! back a [`Guest`]: the host side of init's control channel. Everything a runtime creates for
//! a boot (processes, mounts, cgroups, scratch files) is removed by [`Runtime::teardown`].
//!
//! Runtimes hold no state the agent depends on across restarts: a restarted server calls
//! [`Runtime::attach`] to reconnect to machines that kept running while it was down.
//!
//! A [`Runtime`] is one backend. Which backend serves a machine, when a host runs several, is
//! [`Runtimes`]' business, not the backends'. What both backends need from the host (cgroups,
//! process states, OOM counters) is in `host`.

use std::path::PathBuf;

use async_trait::async_trait;
use hangar_proto::{LaunchSpec, NetworkSpec};
pub use hangar_types::RuntimeKind;

pub mod guest;
mod host;
pub mod keeper;
pub mod microvm;
mod multi;
pub mod sandbox;

pub use guest::{ExecOutput, ExecSession, Guest, GuestError, SessionEvent};
pub use host::host_memory_mb;
pub use microvm::{Accel, Microvm, MicrovmConfig, MicrovmError};
pub use multi::Runtimes;
pub use sandbox::{become_subreaper, Sandbox, SandboxConfig, SandboxError};

/// What a runtime needs to boot one machine.
#[derive(Clone, Debug)]
pub struct BootSpec {
    pub machine_id: String,
    /// Unpacked image layers, lowest first, shared read-only by every machine of the image.
    /// Each boot stacks a fresh, empty writable layer on top (the blank slate).
    pub layers: Vec<PathBuf>,
    /// What init runs. The runtime fills in `control` with the channel it provides.
    pub launch: LaunchSpec,
    pub resources: Resources,
    /// The machine's console (its processes' stdout and stderr) is appended here.
    pub log_path: PathBuf,
    /// The runtime the machine asked for (`config.guest.runtime`); `None`: the host's default.
    pub runtime: Option<RuntimeKind>,
    /// The root file system's size limit in GB (`config.rootfs.size_gb`); `None`: the
    /// runtime's default. Only the microvm runtime has a disk to size.
    pub rootfs_size_gb: Option<u32>,
    /// How the machine plugs into the host's network (the private network's), as the runtime's
    /// [`Runtime::net_attach`] says; `None`: no network but loopback (a sandbox gets a new,
    /// empty network namespace, a microVM no network device).
    pub netns: Option<NetAttach>,
}

/// How a machine is plugged into a network the host prepared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetAttach {
    /// Join this network namespace, whose interfaces and routes the host has configured.
    Netns(PathBuf),
    /// A virtio-net device on the host's tap device `ifname` (already on the bridge); init
    /// configures the device inside the guest as `guest` says.
    Tap { ifname: String, guest: NetworkSpec },
}

/// What a runtime needs from the host to put a machine on a network: see [`NetAttach`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetAttachKind {
    Netns,
    Tap,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resources {
    pub cpus: u32,
    pub memory_mb: u32,
}

/// What was left of a boot when it was torn down.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Remains {
    /// The kernel's OOM killer killed a process of this machine during the boot.
    pub oom_killed: bool,
    /// Why the machine was already gone when it was torn down (a guest kernel panic, a
    /// killed VMM), when the runtime can tell.
    pub reason: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The host cannot run machines this way (a missing binary, an unusable kernel feature,
    /// a runtime this host does not run).
    #[error("{0}")]
    Unavailable(String),
    #[error("the {runtime} runtime cannot {operation} machines")]
    Unsupported {
        runtime: RuntimeKind,
        operation: &'static str,
    },
    #[error("machine {0} is not running")]
    NotRunning(String),
    #[error("machine {0} was gone when it was resumed")]
    Vanished(String),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Microvm(#[from] MicrovmError),
    /// The host side of the machine's network could not be made.
    #[error("private network: {0}")]
    Network(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            context: context.into(),
            source,
        }
    }
}

/// One way of isolating machines (runc, QEMU). It does what it is asked for the machine
/// named; routing between backends is [`Runtimes`]'.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    fn kind(&self) -> RuntimeKind;

    /// What the runtime is and how it was set up (for the status endpoint).
    fn status(&self) -> serde_json::Value {
        serde_json::json!({ "kind": self.kind() })
    }

    /// How a machine of this runtime plugs into a network the host prepared.
    fn net_attach(&self) -> NetAttachKind;

    /// Whether this runtime has anything of the machine on the host.
    fn has(&self, machine_id: &str) -> bool;

    /// Boots a machine and returns once init reports the main process running (or already
    /// exited, or failed to start it). On error, nothing of the boot is left behind.
    async fn boot(&self, spec: &BootSpec) -> Result<Guest, RuntimeError>;

    /// Reconnects to a machine booted by an earlier server process. `None` when nothing of
    /// that machine is running any more.
    async fn attach(&self, machine_id: &str) -> Result<Option<Guest>, RuntimeError>;

    /// Kills whatever is still running of a machine and removes every trace of its boot.
    /// Idempotent: tearing down a machine that is already gone is not an error.
    async fn teardown(&self, machine_id: &str) -> Result<Remains, RuntimeError>;

    /// Ids of the machines this runtime has anything of on the host, running or left over.
    async fn list(&self) -> Result<Vec<String>, RuntimeError>;

    /// Freezes a running machine with its memory kept (Fly's `suspended`): its processes stop
    /// advancing until [`Runtime::resume`]. The guest handed out by `boot` may stop answering
    /// while suspended (a microVM's may go away entirely).
    async fn suspend(&self, machine_id: &str) -> Result<(), RuntimeError> {
        let _ = machine_id;
        Err(RuntimeError::Unsupported {
            runtime: self.kind(),
            operation: "suspend",
        })
    }

    /// Lets a suspended machine go on where it stopped, and returns its guest.
    async fn resume(&self, machine_id: &str) -> Result<Guest, RuntimeError> {
        let _ = machine_id;
        Err(RuntimeError::Unsupported {
            runtime: self.kind(),
            operation: "resume",
        })
    }
}

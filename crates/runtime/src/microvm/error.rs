//! What goes wrong in the microvm runtime, and what QEMU says about a VM.

use std::path::PathBuf;

use serde::Deserialize;

use crate::keeper::KeeperError;
use crate::GuestError;

const GIB: f64 = (1u64 << 30) as f64;

#[derive(Debug, thiserror::Error)]
pub enum MicrovmError {
    #[error("invalid machine id {0:?}: expected 1 to 64 letters, digits, '-', '_' or '.'")]
    InvalidId(String),
    /// The boot spec cannot be booted as given; the message says which part and why.
    #[error("{0}")]
    Spec(String),
    #[error("a microVM plugs into a tap device; it cannot join the network namespace {}", .0.display())]
    NetnsAttach(PathBuf),
    #[error("the image needs {:.2} GB, over the root file system's limit of {} GB (config.rootfs.size_gb)", *.size as f64 / GIB, *.limit as f64 / GIB)]
    ImageTooBig { size: u64, limit: u64 },
    #[error("cannot run {program}: {source}{hint}")]
    Spawn {
        program: String,
        /// How to install it, when that is known.
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A host tool ran and failed; its stderr.
    #[error("{program} failed: {stderr}")]
    Tool {
        program: &'static str,
        stderr: String,
    },
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Accel(#[from] AccelError),
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error(transparent)]
    Keeper(#[from] KeeperError),
    /// QEMU went away during the boot; `why` is what its log, the console or its exit say.
    #[error("the VM ended while booting: {why}")]
    VmEnded { why: String },
    /// Init did not get as far as `what` before the boot's deadline.
    #[error("hangar-init did not {what} within {secs}s")]
    InitSilent { what: &'static str, secs: u64 },
    #[error("hangar-init: {0}")]
    Guest(#[from] GuestError),
    #[error("machine {0} has no boot to resume")]
    NoBoot(String),
    #[error("machine {0} has no saved state to resume from")]
    NoSavedState(String),
    #[error("migration {status:?}: {desc}")]
    Migration {
        status: MigrationStatus,
        desc: String,
    },
    #[error("{what} did not finish in time")]
    TooSlow { what: &'static str },
    /// A suspend or resume failed part-way.
    #[error("{operation} machine {machine_id}: {source}")]
    During {
        operation: &'static str,
        machine_id: String,
        #[source]
        source: Box<MicrovmError>,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Tags an I/O error with what was being done.
pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> MicrovmError {
    let context = context.into();
    move |source| MicrovmError::Io { context, source }
}

/// The guest kernel, its modules and the initramfs made of them.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("no vmlinuz-* in {}", .0.display())]
    NoKernel(PathBuf),
    #[error("kernel module {0} not found")]
    MissingModule(String),
    #[error("module dependencies too deep at {0}")]
    TooDeep(String),
    #[error("{}: {why}", .path.display())]
    BadModule { path: PathBuf, why: ModinfoError },
    #[error("the guest kernel's modules in {}: {source}", .dir.display())]
    Modules {
        dir: PathBuf,
        #[source]
        source: Box<KernelError>,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl KernelError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> KernelError {
        let context = context.into();
        move |source| KernelError::Io { context, source }
    }
}

/// Why a kernel module's metadata could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModinfoError {
    #[error("not a 64-bit little-endian ELF object")]
    NotElf64,
    #[error("truncated ELF object")]
    Truncated,
    #[error("no .modinfo section")]
    NoModinfo,
}

/// Choosing between KVM and TCG, and the probe boots that decide it.
#[derive(Debug, thiserror::Error)]
pub enum AccelError {
    #[error("/dev/kvm cannot be opened: {0}")]
    NoKvm(#[source] std::io::Error),
    #[error("a probe boot under KVM failed: {0}")]
    KvmProbe(#[source] Box<AccelError>),
    #[error("--accel kvm, but KVM is unusable on this host: {0}; use --accel tcg or --accel auto")]
    KvmRequired(#[source] Box<AccelError>),
    #[error("cannot run {}: {source}", .qemu.display())]
    Spawn {
        qemu: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the guest ended before reaching /init: {last}")]
    EndedEarly { last: String },
    #[error("the guest did not reach /init within {secs}s")]
    Silent { secs: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("connecting to QMP at {}: {source}", .socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP: {0}")]
    Io(#[source] std::io::Error),
    #[error("QEMU did not answer on QMP in time")]
    Timeout,
    #[error("QEMU closed its QMP socket")]
    Closed,
    #[error("bad QMP message {line:?}: {source}")]
    BadMessage {
        line: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("not a QMP greeting: {0}")]
    NotGreeting(String),
    /// QEMU refused the command; its description.
    #[error("QMP {command}: {desc}")]
    Refused { command: String, desc: String },
}

/// A VM's run state (QMP `query-status`), the ones this runtime acts on by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Running,
    Paused,
    Inmigrate,
    Postmigrate,
    Shutdown,
    GuestPanicked,
    InternalError,
    /// Any other state QEMU reports (`prelaunch`, `io-error`, `watchdog`...).
    #[serde(other)]
    Other,
}

/// Where an outgoing migration stands (QMP `query-migrate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationStatus {
    Completed,
    Failed,
    Cancelled,
    /// Still going (`setup`, `active`, `device`...), or not started.
    #[serde(other)]
    InProgress,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qmp_states_parse_into_enums() {
        let state = |s: &str| serde_json::from_value::<RunState>(serde_json::json!(s)).unwrap();
        assert_eq!(state("running"), RunState::Running);
        assert_eq!(state("postmigrate"), RunState::Postmigrate);
        assert_eq!(state("guest-panicked"), RunState::GuestPanicked);
        assert_eq!(state("prelaunch"), RunState::Other);
        let migration =
            |s: &str| serde_json::from_value::<MigrationStatus>(serde_json::json!(s)).unwrap();
        assert_eq!(migration("completed"), MigrationStatus::Completed);
        assert_eq!(migration("cancelled"), MigrationStatus::Cancelled);
        assert_eq!(migration("active"), MigrationStatus::InProgress);
    }

    #[test]
    fn an_oversized_image_names_the_limit() {
        let e = MicrovmError::ImageTooBig {
            size: 3 << 30,
            limit: 2 << 30,
        };
        assert_eq!(
            e.to_string(),
            "the image needs 3.00 GB, over the root file system's limit of 2 GB (config.rootfs.size_gb)"
        );
    }
}

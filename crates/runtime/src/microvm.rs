//! The microvm runtime: each machine is a QEMU `microvm` guest with its own kernel, under
//! KVM where KVM works and TCG (QEMU's software CPU) where it does not.
//!
//! Per machine, under `state_dir/<id>/`:
//!
//! ```text
//! boot.json    the QEMU command line, its pid, the console log and where it stood at boot
//! qmp.sock     QEMU's QMP socket (the VMM's control)
//! ctl.sock     the host end of the virtio-serial port `hangar` (init's control channel)
//! initrd.cpio  the cached initramfs plus this boot's launch spec
//! scratch.img  the sparse ext4 disk taking this boot's writes (the blank slate)
//! qemu.log     QEMU's own messages
//! vmstate      the suspended machine's memory and devices (QEMU migration stream)
//! ```
//!
//! The image's disk is shared, read-only, from `cache_dir/images/<key>.ext4`. QEMU runs under
//! the keeper (see `keeper.rs`), so it outlives server restarts; a restarted server finds it
//! through `boot.json` and reconnects to its sockets. The console (ttyS0, where init's and the
//! main process's output go) is appended to the machine's log.

mod accel;
mod disk;
mod error;
pub mod kernel;
mod qmp;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;
use tokio::time::{sleep, timeout_at, Instant};
use tracing::{debug, info, warn};

pub use accel::{Accel, AccelChoice};
use error::io;
pub use error::{
    AccelError, KernelError, MicrovmError, MigrationStatus, ModinfoError, QmpError, RunState,
};
use hangar_types::RuntimeKind;
use kernel::Kernel;
use qmp::Qmp;

use crate::host::{self, proc_state, Cgroups};
use crate::keeper::{Ended, Keeper};
use crate::{
    BootSpec, Guest, GuestError, NetAttach, NetAttachKind, Remains, Runtime, RuntimeError,
};

/// From starting QEMU to init reporting the main process: TCG boots take seconds, and more on
/// a loaded host.
const BOOT_DEADLINE: Duration = Duration::from_secs(90);
const ATTACH_DEADLINE: Duration = Duration::from_secs(10);
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long a VM gets to power off when torn down before QEMU is killed.
const POWER_OFF_WAIT: Duration = Duration::from_secs(3);
const SOCKET_PATH_MAX: usize = 107;
/// The default root file system limit (Fly's `rootfs.size_gb`).
pub const DEFAULT_ROOTFS_GB: u32 = 8;
/// Host memory a QEMU process may use beyond its guest's RAM (device emulation, TCG's code
/// cache), in MB.
const QEMU_OVERHEAD_MB: u64 = 256;
const CGROUP: &str = "hangar-vm";
const PORT_NAME: &str = "hangar";

#[derive(Clone, Debug)]
pub struct MicrovmConfig {
    /// Machines' working directories. Keep it short: socket paths under it must fit 107 bytes.
    pub state_dir: PathBuf,
    /// The initramfs and image disks, built once and shared.
    pub cache_dir: PathBuf,
    /// The static `hangar-init`, which becomes the initramfs's `/init`.
    pub init_path: PathBuf,
    pub qemu: PathBuf,
    /// An unpacked Debian kernel package (`boot/vmlinuz-*`, `lib/modules/*`).
    pub kernel_dir: PathBuf,
    /// An operator's own kernel instead, with its modules directory (`lib/modules/VERSION`).
    pub kernel: Option<(PathBuf, PathBuf)>,
    pub accel: Accel,
    /// As in the sandbox: the command that runs a keeper. `None`: QEMU is our own child.
    pub keeper: Option<Vec<OsString>>,
}

impl MicrovmConfig {
    pub fn new(
        state_dir: impl Into<PathBuf>,
        cache_dir: impl Into<PathBuf>,
        init_path: impl Into<PathBuf>,
        kernel_dir: impl Into<PathBuf>,
    ) -> MicrovmConfig {
        MicrovmConfig {
            state_dir: state_dir.into(),
            cache_dir: cache_dir.into(),
            init_path: init_path.into(),
            qemu: PathBuf::from("qemu-system-x86_64"),
            kernel_dir: kernel_dir.into(),
            kernel: None,
            accel: Accel::Auto,
            keeper: None,
        }
    }
}

pub struct Microvm {
    state_dir: PathBuf,
    cache_dir: PathBuf,
    qemu: PathBuf,
    kernel: Kernel,
    initramfs: PathBuf,
    accel: AccelChoice,
    cgroups: Cgroups,
    keeper: Option<Arc<Keeper>>,
    host_memory_mb: u64,
    /// Image disks are built one at a time.
    building: tokio::sync::Mutex<()>,
    /// How each QEMU this server started ended, by machine id: (pid, how). Kept in memory, not
    /// in the machine's directory, which teardown may be removing at that moment.
    ended: Arc<std::sync::Mutex<std::collections::HashMap<String, (i32, String)>>>,
}

/// What a boot left for teardown and a later server: enough to find and restart its QEMU.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct BootRecord {
    argv: Vec<String>,
    pid: i32,
    log_path: PathBuf,
    /// The console log's length when the boot began: what follows is this boot's.
    log_offset: u64,
}

struct Paths {
    dir: PathBuf,
    record: PathBuf,
    qmp: PathBuf,
    ctl: PathBuf,
    initrd: PathBuf,
    scratch: PathBuf,
    qemu_log: PathBuf,
    vmstate: PathBuf,
}

fn validate_id(id: &str) -> Result<(), MicrovmError> {
    if host::is_valid_machine_id(id) {
        Ok(())
    } else {
        Err(MicrovmError::InvalidId(id.to_string()))
    }
}

fn unavailable(msg: impl Into<String>) -> RuntimeError {
    RuntimeError::Unavailable(msg.into())
}

/// The host's TSC frequency in kHz, which a TCG guest's TSC runs at (QEMU reads the host's
/// counter). The guest cannot measure it without a reference timer, and hangs without it.
fn host_tsc_khz() -> u64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .map(|mhz| (mhz * 1000.0) as u64)
        .unwrap_or(2_000_000)
}

impl Microvm {
    /// Checks the host can run microVMs (root, QEMU, e2fsprogs, a kernel), builds the
    /// initramfs if needed, and picks the accelerator (probing KVM for `auto` and `kvm`).
    pub async fn new(config: MicrovmConfig) -> Result<Microvm, RuntimeError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(unavailable(
                "the microvm runtime needs root (it mounts image layers to build disks)",
            ));
        }
        match tokio::process::Command::new(&config.qemu)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .await
        {
            Ok(out) if out.status.success() => {
                debug!(qemu = %String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or(""), "found QEMU");
            }
            Ok(out) => {
                return Err(unavailable(format!(
                    "{} --version failed: {}",
                    config.qemu.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
            Err(e) => {
                return Err(unavailable(format!(
                    "cannot run {}: {e}; install QEMU (Debian: apt-get install qemu-system-x86)",
                    config.qemu.display()
                )))
            }
        }
        if std::process::Command::new("mkfs.ext4")
            .arg("-V")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Err(unavailable(
                "cannot run mkfs.ext4; install e2fsprogs (Debian: apt-get install e2fsprogs)",
            ));
        }
        let kernel = match &config.kernel {
            Some((image, modules)) => {
                if !image.is_file() {
                    return Err(unavailable(format!(
                        "the guest kernel {} does not exist",
                        image.display()
                    )));
                }
                if !modules.is_dir() {
                    return Err(unavailable(format!(
                        "the guest kernel's modules directory {} does not exist",
                        modules.display()
                    )));
                }
                kernel::explicit(image, modules)
            }
            None => kernel::find_in(&config.kernel_dir).map_err(|e| {
                unavailable(format!(
                    "no guest kernel ({e}); fetch Debian's linux-image-cloud-amd64 with `scripts/fetch-kernel.sh {}` (or `make deps`), or pass --kernel and --initrd-modules",
                    config.kernel_dir.display()
                ))
            })?,
        };
        if !config.init_path.is_file() {
            return Err(unavailable(format!(
                "hangar-init not found at {}; build it with `make init`",
                config.init_path.display()
            )));
        }
        for dir in [&config.state_dir, &config.cache_dir] {
            std::fs::create_dir_all(dir)
                .map_err(|e| RuntimeError::io(format!("creating {}", dir.display()), e))?;
        }
        let state_dir = std::fs::canonicalize(&config.state_dir).map_err(|e| {
            RuntimeError::io(format!("resolving {}", config.state_dir.display()), e)
        })?;
        let cache_dir = std::fs::canonicalize(&config.cache_dir).map_err(|e| {
            RuntimeError::io(format!("resolving {}", config.cache_dir.display()), e)
        })?;
        let initramfs = {
            let (cache, kernel, init) =
                (cache_dir.clone(), kernel.clone(), config.init_path.clone());
            tokio::task::spawn_blocking(move || kernel::initramfs(&cache, &kernel, &init))
                .await
                .map_err(|e| unavailable(format!("initramfs task: {e}")))?
                .map_err(|e| unavailable(e.to_string()))?
        };
        let accel = accel::choose(config.accel, &config.qemu, &kernel, &initramfs, &state_dir)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        info!(accel = accel.accel.as_str(), reason = %accel.reason, kernel = %kernel.version, "microvm runtime ready");
        let keeper = match config.keeper {
            Some(command) => Some(Arc::new(
                Keeper::ensure(&state_dir, command).map_err(|e| unavailable(e.to_string()))?,
            )),
            None => None,
        };
        Ok(Microvm {
            state_dir,
            cache_dir,
            qemu: config.qemu,
            kernel,
            initramfs,
            accel,
            cgroups: Cgroups::detect(),
            keeper,
            host_memory_mb: host::host_memory_mb(),
            building: tokio::sync::Mutex::new(()),
            ended: Arc::default(),
        })
    }

    /// The accelerator machines run under, and why.
    pub fn accel(&self) -> &AccelChoice {
        &self.accel
    }

    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// Bare QEMU booting this runtime's kernel and initramfs to `/init` (the floor a machine's
    /// boot cannot beat): the time until init announces itself on the console.
    pub async fn bare_boot(&self) -> Result<Duration, AccelError> {
        accel::boot_to_init(
            &self.qemu,
            self.accel.accel,
            &self.kernel,
            &self.initramfs,
            BOOT_DEADLINE,
        )
        .await
    }

    fn paths(&self, id: &str) -> Paths {
        let dir = self.state_dir.join(id);
        Paths {
            record: dir.join("boot.json"),
            qmp: dir.join("qmp.sock"),
            ctl: dir.join("ctl.sock"),
            initrd: dir.join("initrd.cpio"),
            scratch: dir.join("scratch.img"),
            qemu_log: dir.join("qemu.log"),
            vmstate: dir.join("vmstate"),
            dir,
        }
    }

    fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        let rel = PathBuf::from(format!("{CGROUP}/{id}"));
        match &self.cgroups {
            Cgroups::V2(root) => vec![root.join(rel)],
            Cgroups::V1 { root, .. } => ["memory", "cpu", "pids"]
                .iter()
                .map(|c| root.join(c).join(&rel))
                .collect(),
        }
    }

    /// Puts QEMU in its own cgroup: guest RAM plus QEMU's overhead, and vCPUs plus one
    /// thread's worth of CPU for device emulation.
    fn confine(&self, id: &str, pid: i32, cpus: u32, memory_mb: u32) -> Result<(), MicrovmError> {
        let mem = (memory_mb as u64 + QEMU_OVERHEAD_MB) << 20;
        let quota = (cpus as u64 + 1) * 100_000;
        for dir in self.cgroup_dirs(id) {
            std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
            let controller = dir
                .parent()
                .and_then(Path::parent)
                .and_then(Path::file_name)
                .and_then(|n| n.to_str())
                .unwrap_or("");
            let limits: Vec<(&str, String)> = match (&self.cgroups, controller) {
                (Cgroups::V2(_), _) => vec![
                    ("memory.max", mem.to_string()),
                    ("cpu.max", format!("{quota} 100000")),
                ],
                (_, "memory") => vec![("memory.limit_in_bytes", mem.to_string())],
                (_, "cpu") => vec![
                    ("cpu.cfs_period_us", "100000".into()),
                    ("cpu.cfs_quota_us", quota.to_string()),
                ],
                _ => vec![],
            };
            for (file, value) in limits {
                // A controller missing from a v2 subtree is not fatal: the process is still
                // grouped, only not limited.
                if let Err(e) = std::fs::write(dir.join(file), &value) {
                    debug!(cgroup = %dir.display(), file, error = %e, "cgroup limit not set");
                }
            }
            std::fs::write(dir.join("cgroup.procs"), pid.to_string())
                .map_err(io(format!("moving QEMU into {}", dir.display())))?;
        }
        Ok(())
    }

    fn qemu_argv(&self, spec: &BootSpec, image: &Path, paths: &Paths) -> Vec<String> {
        let p = |p: &Path| p.display().to_string();
        let id = &spec.machine_id;
        let mut cmdline = String::from("console=ttyS0 quiet panic=-1 pci=off reboot=t");
        let mut argv = vec![
            p(&self.qemu),
            "-name".into(),
            format!("hangar-{id}"),
            "-M".into(),
            "microvm,acpi=on,x-option-roms=off,rtc=on".into(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
        ];
        match self.accel.accel {
            Accel::Kvm => {
                argv.extend(["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()])
            }
            _ => {
                argv.extend([
                    "-accel".into(),
                    "tcg,thread=multi,tb-size=64".into(),
                    "-cpu".into(),
                    "max".into(),
                ]);
                cmdline.push_str(&format!(" tsc_early_khz={} tsc=reliable", host_tsc_khz()));
            }
        }
        argv.extend([
            "-m".into(),
            spec.resources.memory_mb.to_string(),
            "-smp".into(),
            spec.resources.cpus.to_string(),
            "-kernel".into(),
            p(&self.kernel.image),
            "-initrd".into(),
            p(&paths.initrd),
            "-append".into(),
            cmdline,
            "-chardev".into(),
            format!("file,id=console,path={},append=on", p(&spec.log_path)),
            "-serial".into(),
            "chardev:console".into(),
            "-drive".into(),
            format!("id=image,file={},format=raw,if=none,readonly=on", p(image)),
            "-device".into(),
            "virtio-blk-device,drive=image".into(),
            "-drive".into(),
            format!(
                "id=scratch,file={},format=raw,if=none,discard=unmap",
                p(&paths.scratch)
            ),
            "-device".into(),
            "virtio-blk-device,drive=scratch".into(),
            "-device".into(),
            "virtio-serial-device".into(),
            "-chardev".into(),
            format!("socket,id=ctl,path={},server=on,wait=off", p(&paths.ctl)),
            "-device".into(),
            format!("virtserialport,chardev=ctl,name={PORT_NAME}"),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", p(&paths.qmp)),
        ]);
        if let Some(NetAttach::Tap { ifname, guest }) = &spec.netns {
            // The host made the tap (persistent, on the bridge): QEMU only opens it, and it
            // outlives QEMU, so a suspended machine's resume finds it again.
            argv.extend([
                "-netdev".into(),
                format!("tap,id=net0,ifname={ifname},script=no,downscript=no"),
                "-device".into(),
                format!("virtio-net-device,netdev=net0,mac={}", guest.mac),
            ]);
        }
        argv
    }

    fn check_spec(&self, spec: &BootSpec, paths: &Paths) -> Result<(), MicrovmError> {
        let refuse = |why: String| Err(MicrovmError::Spec(why));
        for sock in [&paths.ctl, &paths.qmp] {
            let len = sock.as_os_str().len();
            if len > SOCKET_PATH_MAX {
                return refuse(format!(
                    "the socket path {} is {len} bytes, over the {SOCKET_PATH_MAX}-byte limit; use a shorter state directory",
                    sock.display()
                ));
            }
        }
        if spec.layers.is_empty() {
            return refuse("the image has no layers".into());
        }
        match &spec.netns {
            None => {}
            Some(NetAttach::Netns(path)) => return Err(MicrovmError::NetnsAttach(path.clone())),
            Some(NetAttach::Tap { ifname, guest }) => {
                // Both go into QEMU's comma-separated options.
                if ifname.is_empty()
                    || ifname.len() > 15
                    || !ifname
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return refuse(format!("invalid tap device name {ifname:?}"));
                }
                if let Err(e) = guest.validate() {
                    return refuse(format!("the machine's network: {e}"));
                }
            }
        }
        let r = spec.resources;
        if r.cpus == 0 || r.memory_mb == 0 {
            return refuse(format!(
                "resources must be positive (got {} cpus, {} MB of memory)",
                r.cpus, r.memory_mb
            ));
        }
        if r.memory_mb as u64 > self.host_memory_mb {
            return refuse(format!(
                "guest.memory_mb {} is more than this host has ({} MB)",
                r.memory_mb, self.host_memory_mb
            ));
        }
        for path in [&spec.log_path, &self.kernel.image] {
            if path.to_string_lossy().contains(',') {
                return refuse(format!(
                    "{} cannot be given to QEMU: its path contains a comma",
                    path.display()
                ));
            }
        }
        Ok(())
    }

    /// Starts QEMU (under the keeper when there is one): its pid.
    async fn spawn(&self, id: &str, argv: Vec<String>, paths: &Paths) -> Result<i32, MicrovmError> {
        let ended = Arc::clone(&self.ended);
        let id = id.to_string();
        let record = move |pid: i32, how: String| {
            ended
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, (pid, how));
        };
        match &self.keeper {
            Some(keeper) => {
                let keeper = keeper.clone();
                let log = paths.qemu_log.clone();
                let (pid, wait) = tokio::task::spawn_blocking(move || keeper.spawn(&argv, &log))
                    .await
                    .map_err(|e| io("keeper task")(e.into()))??;
                // Records how QEMU ended, for teardown to tell why the machine went away. A
                // plain thread: the runtime must not wait for it when the server shuts down.
                std::thread::spawn(move || {
                    let how = match wait() {
                        Ok(Ended::Code(c)) => format!("exited with status {c}"),
                        Ok(Ended::Signal(s)) => format!("was killed by signal {s}"),
                        Err(e) => return debug!(error = %e, "lost track of QEMU"),
                    };
                    record(pid, how);
                });
                Ok(pid)
            }
            None => {
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&paths.qemu_log)
                    .map_err(io(format!("opening {}", paths.qemu_log.display())))?;
                let err = log
                    .try_clone()
                    .map_err(io("duplicating the log descriptor"))?;
                let (prog, args) = argv
                    .split_first()
                    .ok_or_else(|| MicrovmError::Spec("empty QEMU command".into()))?;
                let mut child = tokio::process::Command::new(prog)
                    .args(args)
                    .stdin(Stdio::null())
                    .stdout(log)
                    .stderr(err)
                    .spawn()
                    .map_err(|source| MicrovmError::Spawn {
                        program: prog.clone(),
                        hint: "",
                        source,
                    })?;
                let pid = child.id().map(|p| p as i32).unwrap_or(0);
                tokio::spawn(async move {
                    let how = match child.wait().await {
                        Ok(s) => {
                            match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                                (Some(c), _) => format!("exited with status {c}"),
                                (_, Some(sig)) => format!("was killed by signal {sig}"),
                                _ => "ended".into(),
                            }
                        }
                        Err(e) => format!("could not be waited for: {e}"),
                    };
                    record(pid, how);
                });
                Ok(pid)
            }
        }
    }

    /// Why QEMU is not running: its own last message, the guest kernel's panic, or how the
    /// process ended.
    fn why_gone(&self, paths: &Paths, record: Option<&BootRecord>) -> String {
        if let Some(rec) = record {
            if let Some(panic) = console_panic(&rec.log_path, rec.log_offset) {
                return format!("the guest kernel panicked: {panic}");
            }
        }
        let id = paths
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let how = record.and_then(|rec| self.ended_how(&id, rec.pid));
        let last = std::fs::read_to_string(&paths.qemu_log).ok().and_then(|s| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(String::from)
        });
        match (how, last) {
            (Some(how), Some(last)) => format!("QEMU {how}: {last}"),
            (Some(how), None) => format!("QEMU {how}"),
            (None, Some(last)) => format!("QEMU ended: {last}"),
            (None, None) => "the QEMU process is gone".into(),
        }
    }

    /// How this machine's QEMU `pid` ended, if this server saw it end.
    fn ended_how(&self, id: &str, pid: i32) -> Option<String> {
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        ended
            .get(id)
            .filter(|(p, _)| *p == pid)
            .map(|(_, how)| how.clone())
    }

    fn forget_ended(&self, id: &str) {
        self.ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    fn read_record(paths: &Paths) -> Option<BootRecord> {
        std::fs::read(&paths.record)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// Whether `pid` is this machine's QEMU (and not a recycled pid).
    fn qemu_alive(pid: i32, id: &str) -> bool {
        if pid <= 0 || matches!(proc_state(pid), None | Some('Z')) {
            return false;
        }
        is_qemu_of(pid, id)
    }

    /// Connects to init over the control port until it answers, QEMU dies, or the deadline.
    async fn connect_guest(
        &self,
        paths: &Paths,
        id: &str,
        pid: i32,
        deadline: Instant,
    ) -> Result<Guest, MicrovmError> {
        loop {
            if !Self::qemu_alive(pid, id) {
                let record = Self::read_record(paths);
                // Let the waiter record how it ended.
                sleep(Duration::from_millis(50)).await;
                return Err(MicrovmError::VmEnded {
                    why: self.why_gone(paths, record.as_ref()),
                });
            }
            if Instant::now() >= deadline {
                return Err(MicrovmError::InitSilent {
                    what: "answer",
                    secs: BOOT_DEADLINE.as_secs(),
                });
            }
            match UnixStream::connect(&paths.ctl).await {
                Ok(stream) => {
                    let try_until = deadline.min(Instant::now() + Duration::from_secs(2));
                    match timeout_at(try_until, Guest::connect(stream)).await {
                        Ok(Ok(guest)) => return Ok(guest),
                        Ok(Err(GuestError::Timeout)) | Err(_) => continue,
                        Ok(Err(GuestError::Lost)) => {
                            sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        Ok(Err(e)) => return Err(e.into()),
                    }
                }
                Err(_) => sleep(Duration::from_millis(5)).await,
            }
        }
    }

    async fn start(&self, spec: &BootSpec, paths: &Paths) -> Result<Guest, MicrovmError> {
        let id = spec.machine_id.as_str();
        let limit = spec.rootfs_size_gb.unwrap_or(DEFAULT_ROOTFS_GB) as u64 * disk::GIB;
        let image = {
            let _one_at_a_time = self.building.lock().await;
            disk::image_disk(&self.cache_dir.join("images"), &spec.layers, limit).await?
        };
        std::fs::create_dir_all(&paths.dir)
            .map_err(io(format!("creating {}", paths.dir.display())))?;
        disk::scratch_disk(&paths.scratch, limit).await?;

        let mut launch = spec.launch.clone();
        launch.control = format!("vport:{PORT_NAME}");
        if launch.hostname.is_empty() {
            launch.hostname = id.to_string();
        }
        let launch_json =
            serde_json::to_vec(&launch).map_err(|e| io("encoding the launch spec")(e.into()))?;
        let network_json = match &spec.netns {
            Some(NetAttach::Tap { guest, .. }) => Some(
                serde_json::to_vec(guest).map_err(|e| io("encoding the network spec")(e.into()))?,
            ),
            _ => None,
        };
        let mut files: Vec<(&str, &[u8])> = vec![("hangar/launch.json", &launch_json)];
        if let Some(json) = &network_json {
            let name = hangar_proto::NETWORK_IN_INITRAMFS.trim_start_matches('/');
            files.push((name, json));
        }
        kernel::boot_initrd(&self.initramfs, &files, &paths.initrd)?;

        if let Some(parent) = spec.log_path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io(format!("creating {}", parent.display())))?;
        }
        let log_offset = std::fs::metadata(&spec.log_path)
            .map(|m| m.len())
            .unwrap_or(0);
        let argv = self.qemu_argv(spec, &image, paths);
        let deadline = Instant::now() + BOOT_DEADLINE;
        let pid = self.spawn(id, argv.clone(), paths).await?;
        let record = BootRecord {
            argv,
            pid,
            log_path: spec.log_path.clone(),
            log_offset,
        };
        write_record(paths, &record)?;
        self.confine(id, pid, spec.resources.cpus, spec.resources.memory_mb)?;
        let guest = self.connect_guest(paths, id, pid, deadline).await?;
        timeout_at(deadline, guest.running())
            .await
            .map_err(|_| MicrovmError::InitSilent {
                what: "start the process",
                secs: BOOT_DEADLINE.as_secs(),
            })??;
        Ok(guest)
    }

    /// Asks init to end the machine and power the VM off, for a short while; a VM that does
    /// not (hung, or its control channel still held elsewhere) is killed by the caller.
    async fn power_off(&self, paths: &Paths, id: &str, pid: i32) {
        let ask = async {
            let stream = UnixStream::connect(&paths.ctl).await.ok()?;
            let guest = Guest::connect(stream).await.ok()?;
            guest.shutdown().await.ok()
        };
        if tokio::time::timeout(POWER_OFF_WAIT, ask).await.is_err() {
            debug!(machine = id, "no answer to shutdown; killing QEMU");
            return;
        }
        let deadline = Instant::now() + POWER_OFF_WAIT;
        while Self::qemu_alive(pid, id) && Instant::now() < deadline {
            sleep(Duration::from_millis(5)).await;
        }
    }

    /// Kills QEMU if it runs and waits until it is gone.
    async fn kill_qemu(&self, id: &str, pid: i32) {
        if !Self::qemu_alive(pid, id) {
            return;
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let deadline = Instant::now() + KILL_WAIT;
        while Self::qemu_alive(pid, id) {
            if Instant::now() >= deadline {
                warn!(
                    machine = id,
                    pid, "QEMU outlived SIGKILL; going on with the teardown"
                );
                return;
            }
            sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Whether process `pid` runs machine `id` (a zombie's command line is empty: then whether
/// it is called qemu).
fn is_qemu_of(pid: i32, id: &str) -> bool {
    if pid <= 0 {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if cmdline.is_empty() {
        return std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.starts_with("qemu"));
    }
    cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == format!("hangar-{id}").as_bytes())
}

fn write_record(paths: &Paths, record: &BootRecord) -> Result<(), MicrovmError> {
    let context = format!("writing {}", paths.record.display());
    let bytes = serde_json::to_vec(record).map_err(|e| io(context.clone())(e.into()))?;
    std::fs::write(&paths.record, bytes).map_err(io(context))
}

/// The guest kernel's panic message, if this boot's part of the console log has one.
fn console_panic(log: &Path, offset: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(log).ok()?;
    let len = f.metadata().ok()?.len();
    let start = offset.max(len.saturating_sub(256 << 10));
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut text = Vec::new();
    f.read_to_end(&mut text).ok()?;
    let text = String::from_utf8_lossy(&text);
    text.lines().find_map(|l| {
        l.split_once("Kernel panic - not syncing: ")
            .map(|(_, why)| why.trim().to_string())
    })
}

impl Microvm {
    async fn boot_vm(&self, spec: &BootSpec) -> Result<Guest, MicrovmError> {
        let id = spec.machine_id.as_str();
        validate_id(id)?;
        let paths = self.paths(id);
        self.check_spec(spec, &paths)?;
        if paths.dir.exists() {
            info!(machine = id, "cleaning up what an earlier boot left");
            self.remove(id).await?;
        }
        let started = std::time::Instant::now();
        match self.start(spec, &paths).await {
            Ok(guest) => {
                debug!(machine = id, elapsed = ?started.elapsed(), "booted");
                Ok(guest)
            }
            Err(reason) => {
                if let Err(e) = self.remove(id).await {
                    warn!(machine = id, error = %e, "could not clean up the failed boot");
                }
                Err(reason)
            }
        }
    }

    async fn connect(&self, machine_id: &str) -> Result<Option<Guest>, MicrovmError> {
        validate_id(machine_id)?;
        let paths = self.paths(machine_id);
        let Some(record) = Self::read_record(&paths) else {
            return Ok(None);
        };
        if !Self::qemu_alive(record.pid, machine_id) {
            return Ok(None);
        }
        let deadline = Instant::now() + ATTACH_DEADLINE;
        let guest = self
            .connect_guest(&paths, machine_id, record.pid, deadline)
            .await?;
        Ok(Some(guest))
    }

    /// Everything of the machine off the host: QEMU, its cgroups and its files.
    async fn remove(&self, machine_id: &str) -> Result<Remains, MicrovmError> {
        validate_id(machine_id)?;
        let paths = self.paths(machine_id);
        let record = Self::read_record(&paths);
        let mut remains = Remains::default();
        if let Some(rec) = &record {
            if let Some(panic) = console_panic(&rec.log_path, rec.log_offset) {
                // The guest's kernel died; QEMU may still be on its way out.
                remains.reason = Some(format!("the guest kernel panicked: {panic}"));
            }
            if Self::qemu_alive(rec.pid, machine_id) {
                self.power_off(&paths, machine_id, rec.pid).await;
                self.kill_qemu(machine_id, rec.pid).await;
            } else if remains.reason.is_none() {
                // The waiter records how QEMU ended moments after it does.
                let deadline = Instant::now() + Duration::from_millis(500);
                while self.ended_how(machine_id, rec.pid).is_none() && Instant::now() < deadline {
                    sleep(Duration::from_millis(10)).await;
                }
                remains.reason = Some(self.why_gone(&paths, Some(rec)));
            }
        }
        if let Some(rec) = &record {
            // A dead QEMU stays in its cgroup until its parent reaps it.
            let deadline = Instant::now() + KILL_WAIT;
            while proc_state(rec.pid).is_some_and(|_| is_qemu_of(rec.pid, machine_id))
                && Instant::now() < deadline
            {
                sleep(Duration::from_millis(5)).await;
            }
        }
        for dir in self.cgroup_dirs(machine_id) {
            if let Some(oom) = std::fs::read_to_string(dir.join("memory.oom_control"))
                .ok()
                .or_else(|| std::fs::read_to_string(dir.join("memory.events")).ok())
            {
                if host::parse_counter(&oom, "oom_kill") > 0 {
                    remains.oom_killed = true;
                }
            }
            if let Err(e) = std::fs::remove_dir(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(cgroup = %dir.display(), error = %e, "could not remove a cgroup");
                }
            }
        }
        self.forget_ended(machine_id);
        let mut removed = std::fs::remove_dir_all(&paths.dir);
        for _ in 0..3 {
            // Something may still be closing a file in it (a QEMU on its way out).
            match &removed {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    sleep(Duration::from_millis(20)).await;
                    removed = std::fs::remove_dir_all(&paths.dir);
                }
                _ => break,
            }
        }
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("removing {}", paths.dir.display()))(e)),
        }
        Ok(remains)
    }

    /// QEMU migrates the stopped VM to a file (memory and devices), then quits.
    async fn save(&self, machine_id: &str) -> Result<(), RuntimeError> {
        validate_id(machine_id)?;
        let paths = self.paths(machine_id);
        let record = Self::read_record(&paths)
            .ok_or_else(|| RuntimeError::NotRunning(machine_id.to_string()))?;
        if !Self::qemu_alive(record.pid, machine_id) {
            if paths.vmstate.exists() {
                return Ok(());
            }
            return Err(RuntimeError::NotRunning(machine_id.to_string()));
        }
        let during = |e: MicrovmError| MicrovmError::During {
            operation: "suspending",
            machine_id: machine_id.to_string(),
            source: Box::new(e),
        };
        self.migrate_out(&paths, &record, machine_id)
            .await
            .map_err(during)?;
        info!(
            machine = machine_id,
            "suspended to {}",
            paths.vmstate.display()
        );
        Ok(())
    }

    async fn migrate_out(
        &self,
        paths: &Paths,
        record: &BootRecord,
        machine_id: &str,
    ) -> Result<(), MicrovmError> {
        let mut qmp = Qmp::connect(&paths.qmp).await?;
        qmp.execute("stop", None).await?;
        let tmp = paths.dir.join("vmstate.tmp");
        let uri = format!("exec:cat > {}", tmp.display());
        qmp.execute("migrate", Some(serde_json::json!({ "uri": uri })))
            .await?;
        let deadline = Instant::now() + BOOT_DEADLINE;
        loop {
            match qmp.migration().await? {
                (MigrationStatus::Completed, _) => break,
                (status @ (MigrationStatus::Failed | MigrationStatus::Cancelled), desc) => {
                    let _ = qmp.execute("cont", None).await;
                    return Err(MicrovmError::Migration { status, desc });
                }
                _ if Instant::now() >= deadline => {
                    let _ = qmp.execute("migrate_cancel", None).await;
                    let _ = qmp.execute("cont", None).await;
                    return Err(MicrovmError::TooSlow { what: "migration" });
                }
                _ => sleep(Duration::from_millis(10)).await,
            }
        }
        std::fs::rename(&tmp, &paths.vmstate).map_err(io("storing the state"))?;
        let _ = qmp.execute("quit", None).await;
        drop(qmp);
        let deadline = Instant::now() + KILL_WAIT;
        while Self::qemu_alive(record.pid, machine_id) && Instant::now() < deadline {
            sleep(Duration::from_millis(5)).await;
        }
        self.kill_qemu(machine_id, record.pid).await;
        self.forget_ended(machine_id);
        Ok(())
    }

    /// A new QEMU with the same devices takes the saved state (`-incoming`) and goes on.
    async fn restore(&self, machine_id: &str) -> Result<Guest, RuntimeError> {
        validate_id(machine_id)?;
        let paths = self.paths(machine_id);
        let record = Self::read_record(&paths)
            .ok_or_else(|| MicrovmError::NoBoot(machine_id.to_string()))?;
        if Self::qemu_alive(record.pid, machine_id) {
            // Never suspended (or already resumed): the machine runs.
            return self
                .connect(machine_id)
                .await?
                .ok_or_else(|| RuntimeError::Vanished(machine_id.to_string()));
        }
        if !paths.vmstate.exists() {
            return Err(MicrovmError::NoSavedState(machine_id.to_string()).into());
        }
        let guest = self
            .migrate_in(&paths, record, machine_id)
            .await
            .map_err(|e| MicrovmError::During {
                operation: "resuming",
                machine_id: machine_id.to_string(),
                source: Box::new(e),
            })?;
        Ok(guest)
    }

    async fn migrate_in(
        &self,
        paths: &Paths,
        mut record: BootRecord,
        machine_id: &str,
    ) -> Result<Guest, MicrovmError> {
        let mut argv = record.argv.clone();
        argv.extend([
            "-incoming".into(),
            format!("exec:cat {}", paths.vmstate.display()),
        ]);
        let deadline = Instant::now() + BOOT_DEADLINE;
        let pid = self.spawn(machine_id, argv, paths).await?;
        record.pid = pid;
        write_record(paths, &record)?;
        let (cpus, mem) = parse_resources(&record.argv);
        self.confine(machine_id, pid, cpus, mem)?;
        // The VM runs by itself once the incoming migration is complete.
        loop {
            if !Self::qemu_alive(pid, machine_id) {
                return Err(MicrovmError::VmEnded {
                    why: self.why_gone(paths, Some(&record)),
                });
            }
            if let Ok(mut qmp) = Qmp::connect(&paths.qmp).await {
                match qmp.status().await {
                    Ok(RunState::Running) => break,
                    Ok(RunState::Paused | RunState::Postmigrate) => {
                        qmp.execute("cont", None).await?;
                        break;
                    }
                    _ => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(MicrovmError::TooSlow {
                    what: "loading the saved state",
                });
            }
            sleep(Duration::from_millis(10)).await;
        }
        let _ = std::fs::remove_file(&paths.vmstate);
        self.connect_guest(paths, machine_id, pid, deadline).await
    }

    fn ids(&self) -> Result<Vec<String>, MicrovmError> {
        let mut ids = BTreeSet::new();
        let entries = std::fs::read_dir(&self.state_dir)
            .map_err(io(format!("listing {}", self.state_dir.display())))?;
        for entry in entries.flatten() {
            if let Some(name) = entry.file_name().to_str() {
                if validate_id(name).is_ok() && entry.path().join("boot.json").exists() {
                    ids.insert(name.to_string());
                }
            }
        }
        Ok(ids.into_iter().collect())
    }
}

#[async_trait]
impl Runtime for Microvm {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Microvm
    }

    fn net_attach(&self) -> NetAttachKind {
        NetAttachKind::Tap
    }

    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": RuntimeKind::Microvm,
            "accel": self.accel.accel.as_str(),
            "accel_reason": self.accel.reason,
            "kernel": self.kernel.version,
        })
    }

    async fn boot(&self, spec: &BootSpec) -> Result<Guest, RuntimeError> {
        Ok(self.boot_vm(spec).await?)
    }

    async fn attach(&self, machine_id: &str) -> Result<Option<Guest>, RuntimeError> {
        Ok(self.connect(machine_id).await?)
    }

    async fn teardown(&self, machine_id: &str) -> Result<Remains, RuntimeError> {
        Ok(self.remove(machine_id).await?)
    }

    async fn list(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(self.ids()?)
    }

    fn has(&self, machine_id: &str) -> bool {
        validate_id(machine_id).is_ok() && self.paths(machine_id).record.exists()
    }

    async fn suspend(&self, machine_id: &str) -> Result<(), RuntimeError> {
        self.save(machine_id).await
    }

    async fn resume(&self, machine_id: &str) -> Result<Guest, RuntimeError> {
        self.restore(machine_id).await
    }
}

/// `-smp` and `-m` from a recorded QEMU command line.
fn parse_resources(argv: &[String]) -> (u32, u32) {
    let after = |flag: &str| {
        argv.iter()
            .position(|a| a == flag)
            .and_then(|i| argv.get(i + 1))
            .and_then(|v| v.parse::<u32>().ok())
    };
    (after("-smp").unwrap_or(1), after("-m").unwrap_or(256))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_are_found_after_the_boot_offset() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::write(&log, "old\n[ 1.0] Kernel panic - not syncing: old one\n").unwrap();
        let offset = std::fs::metadata(&log).unwrap().len();
        assert_eq!(console_panic(&log, offset), None);
        let mut text = std::fs::read_to_string(&log).unwrap();
        text.push_str("[ 2.0] Kernel panic - not syncing: sysrq triggered crash\n");
        std::fs::write(&log, text).unwrap();
        assert_eq!(
            console_panic(&log, offset).as_deref(),
            Some("sysrq triggered crash")
        );
    }

    #[test]
    fn resources_from_a_command_line() {
        let argv: Vec<String> = ["qemu", "-m", "512", "-smp", "2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(parse_resources(&argv), (2, 512));
    }
}

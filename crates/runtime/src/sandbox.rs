//! The sandbox runtime: each machine is an OCI bundle run by runc, its root filesystem an
//! overlay of the image's layers under a fresh, empty writable layer.
//!
//! Per machine, under `state_dir/<id>/`:
//!
//! ```text
//! bundle/config.json   the OCI runtime spec
//! rootfs/              the overlay mount point
//! scratch/{upper,work} the writable layer: created empty on every boot (the blank slate)
//! ctl/                 bound into the machine at /.hangar/ctl; init's control.sock lives here
//! launch.json          init's LaunchSpec, bound read-only at /.hangar/launch.json
//! init.pid, runc.log   written by `runc run`
//! ```
//!
//! runc keeps its own state under `state_dir/runc`; the container id is the machine id.
//! Nothing else is kept: a restarted server finds machines through runc and the directory.
//!
//! A detached container's init is reparented to the nearest subreaper when `runc run` exits.
//! With a keeper configured (the server's way), `runc run` runs under the keeper, which adopts
//! and reaps the init and outlives server restarts (see `keeper.rs`). Without one, the server
//! makes itself the subreaper ([`become_subreaper`]) and teardown reaps the init by pid.

mod bundle;
mod error;

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use tokio::net::UnixStream;
use tokio::process::Command;
use tokio::time::{sleep, timeout_at, Instant};
use tracing::{debug, info, warn};

use crate::host::{self, Cgroups, ElfProblem};
use crate::keeper::{Ended, Keeper};
use crate::{BootSpec, Guest, NetAttach, NetAttachKind, Remains, Runtime, RuntimeError};
use error::{io, Gone, RuncState};
pub use error::{RuncError, RuncStatus, SandboxError};
use hangar_types::RuntimeKind;
use std::sync::Arc;

/// A Unix socket path must fit `sun_path` (108 bytes with its NUL).
const SOCKET_PATH_MAX: usize = 107;
/// From `runc run` to init reporting the main process: generous, for loaded hosts.
const BOOT_DEADLINE: Duration = Duration::from_secs(20);
/// How long a killed machine's init may take to die before teardown goes on regardless.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long an attach may take to get init's answer.
const ATTACH_DEADLINE: Duration = Duration::from_secs(10);
/// The directory under `state_dir` that is runc's `--root`, not a machine.
const RUNC_DIR: &str = "runc";

const BUILD_INIT: &str =
    "RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build -p hangar-init --release \
     --target x86_64-unknown-linux-gnu --target-dir target/init";

#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Machines' working directories and runc's state. Keep it short: control socket paths
    /// under it must stay within 107 bytes.
    pub state_dir: PathBuf,
    /// The static `hangar-init` binary, bound read-only into every machine.
    pub init_path: PathBuf,
    /// The runc binary; `runc` (found in PATH) by default.
    pub runc: PathBuf,
    /// The command that runs a keeper (the keeper's directory is appended), e.g.
    /// `["/usr/bin/hangar", "keeper"]`. `None`: runc runs as the server's own child.
    pub keeper: Option<Vec<std::ffi::OsString>>,
}

impl SandboxConfig {
    pub fn new(state_dir: impl Into<PathBuf>, init_path: impl Into<PathBuf>) -> SandboxConfig {
        SandboxConfig {
            state_dir: state_dir.into(),
            init_path: init_path.into(),
            runc: PathBuf::from("runc"),
            keeper: None,
        }
    }
}

/// Makes this process the reaper of its orphaned descendants (`PR_SET_CHILD_SUBREAPER`), so
/// the init of a detached container is reparented to it and can be reaped at teardown. Call
/// it once at startup, before booting machines.
pub fn become_subreaper() -> Result<(), RuntimeError> {
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| RuntimeError::io("prctl(PR_SET_CHILD_SUBREAPER)", std::io::Error::from(e)))
}

pub struct Sandbox {
    state_dir: PathBuf,
    runc_root: PathBuf,
    init_path: PathBuf,
    runc: PathBuf,
    cgroups: Cgroups,
    keeper: Option<Arc<Keeper>>,
}

/// The files of one machine.
struct Paths {
    dir: PathBuf,
    bundle: PathBuf,
    config: PathBuf,
    rootfs: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    ctl: PathBuf,
    socket: PathBuf,
    launch: PathBuf,
    pid_file: PathBuf,
    runc_log: PathBuf,
}

/// Machine ids become directory names, cgroup names and runc container ids.
fn validate_id(id: &str) -> Result<(), SandboxError> {
    if host::is_valid_machine_id(id) && id != RUNC_DIR {
        Ok(())
    } else {
        Err(SandboxError::InvalidId(id.to_string()))
    }
}

/// The meaningful line of a runc failure: the last error in its JSON log, else its stderr.
fn runc_error(log: &Path, stderr: &[u8]) -> String {
    let from_log = std::fs::read_to_string(log).ok().and_then(|text| {
        text.lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| matches!(v["level"].as_str(), Some("error" | "fatal")))
            .find_map(|v| v["msg"].as_str().map(String::from))
    });
    from_log.unwrap_or_else(|| String::from_utf8_lossy(stderr).trim().to_string())
}

impl Sandbox {
    /// Checks the host can run sandboxes: root, a working runc, and a static init binary.
    pub fn new(config: SandboxConfig) -> Result<Sandbox, RuntimeError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(RuntimeError::Unavailable(
                "the sandbox runtime needs root (it mounts overlays and runs runc)".into(),
            ));
        }
        match std::process::Command::new(&config.runc)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => {
                let version = String::from_utf8_lossy(&out.stdout);
                debug!(runc = %version.lines().next().unwrap_or(""), "found runc");
            }
            Ok(out) => {
                return Err(RuntimeError::Unavailable(format!(
                    "{} --version failed ({}): {}",
                    config.runc.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
            Err(e) => {
                return Err(RuntimeError::Unavailable(format!(
                    "cannot run {}: {e}; install runc (Debian: apt-get install runc)",
                    config.runc.display()
                )))
            }
        }
        let init_path = std::fs::canonicalize(&config.init_path).map_err(|e| {
            RuntimeError::Unavailable(format!(
                "hangar-init not found at {}: {e}; build it with {BUILD_INIT}",
                config.init_path.display()
            ))
        })?;
        let elf = host::check_static_elf_file(&init_path).map_err(|e| {
            RuntimeError::Unavailable(format!("cannot read {}: {e}", init_path.display()))
        })?;
        let problem = match elf {
            Ok(()) => None,
            Err(ElfProblem::Dynamic(interp)) => Some(format!(
                "is dynamically linked (it needs {interp}, which images may lack)"
            )),
            Err(ElfProblem::NotElf) => Some("is not an ELF executable".into()),
            Err(ElfProblem::Not64Bit) => Some("is not a 64-bit little-endian executable".into()),
            Err(ElfProblem::Truncated) => Some("is a truncated ELF file".into()),
        };
        if let Some(problem) = problem {
            return Err(RuntimeError::Unavailable(format!(
                "{} {problem}; hangar-init must be static: build it with {BUILD_INIT}",
                init_path.display()
            )));
        }
        let runc_root = config.state_dir.join(RUNC_DIR);
        std::fs::create_dir_all(&runc_root)
            .map_err(|e| RuntimeError::io(format!("creating {}", runc_root.display()), e))?;
        let state_dir = std::fs::canonicalize(&config.state_dir).map_err(|e| {
            RuntimeError::io(format!("resolving {}", config.state_dir.display()), e)
        })?;
        let cgroups = Cgroups::detect();
        let keeper = match config.keeper {
            Some(command) => Some(Arc::new(
                Keeper::ensure(&state_dir, command)
                    .map_err(|e| RuntimeError::Unavailable(e.to_string()))?,
            )),
            None => None,
        };
        debug!(?cgroups, state_dir = %state_dir.display(), keeper = keeper.is_some(), "sandbox runtime ready");
        Ok(Sandbox {
            runc_root: state_dir.join(RUNC_DIR),
            state_dir,
            init_path,
            runc: config.runc,
            cgroups,
            keeper,
        })
    }

    fn paths(&self, id: &str) -> Paths {
        let dir = self.state_dir.join(id);
        let bundle = dir.join("bundle");
        let scratch = dir.join("scratch");
        let ctl = dir.join("ctl");
        Paths {
            config: bundle.join("config.json"),
            bundle,
            rootfs: dir.join("rootfs"),
            upper: scratch.join("upper"),
            work: scratch.join("work"),
            socket: ctl.join("control.sock"),
            ctl,
            launch: dir.join("launch.json"),
            pid_file: dir.join("init.pid"),
            runc_log: dir.join("runc.log"),
            dir,
        }
    }

    fn runc_cmd(&self) -> Command {
        let mut cmd = Command::new(&self.runc);
        cmd.arg("--root").arg(&self.runc_root).stdin(Stdio::null());
        cmd
    }

    /// Runs a runc subcommand to completion; its stdout.
    async fn runc(&self, args: &[&str]) -> Result<Vec<u8>, RuncError> {
        let out = self
            .runc_cmd()
            .args(args)
            .output()
            .await
            .map_err(|source| RuncError::Spawn {
                binary: self.runc.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(RuncError::Failed {
                command: args.join(" "),
                message: runc_error(Path::new(""), &out.stderr),
            })
        }
    }

    /// Whether runc has a container of this id: its state directory under `--root`.
    fn runc_has(&self, id: &str) -> bool {
        self.runc_root.join(id).exists()
    }

    /// What runc says of the container; `None` when runc has none of that id.
    async fn runc_state(&self, id: &str) -> Result<Option<RuncState>, RuncError> {
        if !self.runc_has(id) {
            return Ok(None);
        }
        match self.runc(&["state", id]).await {
            Ok(out) => serde_json::from_slice(&out)
                .map(Some)
                .map_err(|source| RuncError::State {
                    id: id.to_string(),
                    source,
                }),
            // Deleted between the look and the ask.
            Err(_) if !self.runc_has(id) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// [`Sandbox::runc_state`] for callers that go on without it: a failure is logged.
    async fn runc_state_or_none(&self, id: &str) -> Option<RuncState> {
        self.runc_state(id).await.unwrap_or_else(|e| {
            warn!(machine = id, error = %e, "runc state failed");
            None
        })
    }

    fn check_spec(&self, spec: &BootSpec, paths: &Paths) -> Result<(), SandboxError> {
        let socket_len = paths.socket.as_os_str().len();
        if socket_len > SOCKET_PATH_MAX {
            return Err(SandboxError::Spec(format!(
                "the control socket path {} is {socket_len} bytes, over the {SOCKET_PATH_MAX}-byte limit of Unix socket paths; use a shorter state_dir",
                paths.socket.display()
            )));
        }
        if spec.layers.is_empty() {
            return Err(SandboxError::Spec("the image has no layers".into()));
        }
        for layer in &spec.layers {
            let bytes = layer.as_os_str().as_bytes();
            if !layer.is_absolute() || bytes.iter().any(|b| matches!(b, b':' | b',' | b'\\')) {
                return Err(SandboxError::Spec(format!(
                    "layer path {} cannot be used in an overlay mount: it must be absolute and free of ':', ',' and '\\'",
                    layer.display()
                )));
            }
        }
        if spec.resources.memory_mb == 0 || spec.resources.cpus == 0 {
            return Err(SandboxError::Spec(format!(
                "resources must be positive (got {} cpus, {} MB of memory)",
                spec.resources.cpus, spec.resources.memory_mb
            )));
        }
        Ok(())
    }

    /// Mounts the layers (lowest first in the spec; overlayfs wants the top one first) under
    /// the fresh upper directory.
    fn mount_rootfs(&self, layers: &[PathBuf], paths: &Paths) -> Result<(), SandboxError> {
        let lower: Vec<&str> = layers.iter().rev().filter_map(|l| l.to_str()).collect();
        if lower.len() != layers.len() {
            return Err(SandboxError::Spec("layer paths must be UTF-8".into()));
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            paths.upper.display(),
            paths.work.display()
        );
        let limit = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096) as usize
            - 1;
        if data.len() > limit {
            return Err(SandboxError::Spec(format!(
                "the overlay mount options for {} layers are {} bytes, over the kernel's {limit}-byte limit; store layers under a shorter path",
                layers.len(),
                data.len()
            )));
        }
        mount(
            Some("overlay"),
            &paths.rootfs,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(|e| match layers.iter().find(|l| !l.is_dir()) {
            Some(missing) => SandboxError::MissingLayer(missing.clone()),
            None => SandboxError::Mount(e),
        })
    }

    /// Everything of a boot up to a connected guest; the caller tears down on error.
    async fn start(&self, spec: &BootSpec, paths: &Paths) -> Result<Guest, SandboxError> {
        let id = spec.machine_id.as_str();
        let t0 = std::time::Instant::now();
        for dir in [
            &paths.bundle,
            &paths.rootfs,
            &paths.upper,
            &paths.work,
            &paths.ctl,
        ] {
            std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        }
        self.mount_rootfs(&spec.layers, paths)?;

        let mut launch = spec.launch.clone();
        launch.control = bundle::CONTROL_IN_GUEST.to_string();
        let launch_json =
            serde_json::to_vec(&launch).map_err(|e| io("encoding the launch spec")(e.into()))?;
        std::fs::write(&paths.launch, launch_json)
            .map_err(io(format!("writing {}", paths.launch.display())))?;

        let hostname = if launch.hostname.is_empty() {
            id
        } else {
            launch.hostname.as_str()
        };
        let bundle_paths = bundle::BundlePaths {
            rootfs: &paths.rootfs,
            init: &self.init_path,
            launch: &paths.launch,
            ctl: &paths.ctl,
        };
        let netns = match &spec.netns {
            None => None,
            Some(NetAttach::Netns(path)) => Some(path.as_path()),
            Some(NetAttach::Tap { ifname, .. }) => {
                return Err(SandboxError::TapAttach(ifname.clone()))
            }
        };
        let config = bundle::spec(hostname, id, &bundle_paths, spec.resources, netns)
            .map_err(|e| SandboxError::Spec(format!("building the runtime spec: {e}")))?;
        let config_json =
            serde_json::to_vec(&config).map_err(|e| io("encoding the runtime spec")(e.into()))?;
        std::fs::write(&paths.config, config_json)
            .map_err(io(format!("writing {}", paths.config.display())))?;

        let deadline = Instant::now() + BOOT_DEADLINE;
        // With --detach and no terminal, runc hands its own stdio to the container's init:
        // the machine's console goes straight to its log.
        let mut argv: Vec<String> = vec![
            self.runc.display().to_string(),
            "--root".into(),
            self.runc_root.display().to_string(),
        ];
        argv.extend([
            "--log".into(),
            paths.runc_log.display().to_string(),
            "--log-format".into(),
            "json".into(),
        ]);
        argv.extend([
            "run".into(),
            "--detach".into(),
            "--bundle".into(),
            paths.bundle.display().to_string(),
        ]);
        argv.extend([
            "--pid-file".into(),
            paths.pid_file.display().to_string(),
            id.to_string(),
        ]);
        let prepared = t0.elapsed();
        let (runc_pid, runc_done) = self.spawn_runc(argv, &spec.log_path).await?;
        let spawned = t0.elapsed();
        tokio::pin!(runc_done);

        // runc exits right after init starts; init opens its socket moments later. Try the
        // socket while waiting for runc, so neither waits for the other.
        let early = connect_socket(&paths.socket, deadline, None);
        tokio::pin!(early);
        let mut stream = None;
        let status = loop {
            tokio::select! {
                status = &mut runc_done => break status,
                s = &mut early, if stream.is_none() => stream = Some(s?),
                _ = tokio::time::sleep_until(deadline) => {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(runc_pid), nix::sys::signal::Signal::SIGKILL);
                    let _ = runc_done.await;
                    return Err(RuncError::Timeout { command: "run".into(), secs: BOOT_DEADLINE.as_secs() }.into());
                }
            }
        };
        let runc_exited = t0.elapsed();
        let success = status?;
        if !success {
            let error = runc_error(&paths.runc_log, b"");
            return Err(RuncError::Failed {
                command: "run".into(),
                message: error.trim_start_matches("runc run failed: ").to_string(),
            }
            .into());
        }
        let stream = match stream {
            Some(s) => s,
            None => {
                let pid = std::fs::read_to_string(&paths.pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                    .ok_or_else(|| RuncError::Failed {
                        command: "run".into(),
                        message: format!("it did not write {}", paths.pid_file.display()),
                    })?;
                connect_socket(&paths.socket, deadline, Some((pid, &spec.log_path))).await?
            }
        };
        let silent = |what| SandboxError::InitSilent {
            what,
            secs: BOOT_DEADLINE.as_secs(),
        };
        let guest = timeout_at(deadline, Guest::connect(stream))
            .await
            .map_err(|_| silent("answer hello"))??;
        timeout_at(deadline, guest.running())
            .await
            .map_err(|_| silent("start the process"))??;
        debug!(
            machine = id,
            ?prepared,
            ?spawned,
            ?runc_exited,
            running = ?t0.elapsed(),
            "boot phases"
        );
        Ok(guest)
    }

    /// Starts `runc run` (under the keeper when there is one); its pid and its success.
    async fn spawn_runc(
        &self,
        argv: Vec<String>,
        log: &Path,
    ) -> Result<
        (
            i32,
            std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, SandboxError>> + Send>>,
        ),
        SandboxError,
    > {
        match &self.keeper {
            Some(keeper) => {
                let keeper = keeper.clone();
                let log = log.to_path_buf();
                let (pid, wait) = tokio::task::spawn_blocking(move || keeper.spawn(&argv, &log))
                    .await
                    .map_err(|e| io("keeper task")(e.into()))??;
                let done = async move {
                    match tokio::task::spawn_blocking(wait).await {
                        Ok(Ok(ended)) => Ok(ended == Ended::Code(0)),
                        Ok(Err(e)) => Err(e.into()),
                        Err(e) => Err(io("keeper task")(e.into())),
                    }
                };
                Ok((pid, Box::pin(done)))
            }
            None => {
                let out = open_log(log)?;
                let err = out
                    .try_clone()
                    .map_err(io("duplicating the log descriptor"))?;
                let (prog, args) = argv
                    .split_first()
                    .ok_or_else(|| SandboxError::Spec("empty runc command".into()))?;
                let mut child = Command::new(prog)
                    .args(args)
                    .stdin(Stdio::null())
                    .stdout(out)
                    .stderr(err)
                    .spawn()
                    .map_err(|source| RuncError::Spawn {
                        binary: self.runc.clone(),
                        source,
                    })?;
                let pid = child.id().map(|p| p as i32).unwrap_or(0);
                let done = async move {
                    child
                        .wait()
                        .await
                        .map(|s| s.success())
                        .map_err(io("waiting for runc"))
                };
                Ok((pid, Box::pin(done)))
            }
        }
    }

    /// Unmounts whatever is mounted under the machine's directory and removes it.
    fn remove_files(dir: &Path) -> Result<(), SandboxError> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(io("reading /proc/self/mountinfo"))?;
        for target in host::mounts_under(&mountinfo, dir) {
            match umount2(&target, MntFlags::empty()) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(nix::errno::Errno::EBUSY) => {
                    warn!(mount = %target.display(), "busy; detaching it");
                    umount2(&target, MntFlags::MNT_DETACH).map_err(|errno| {
                        SandboxError::Unmount {
                            path: target.clone(),
                            errno,
                        }
                    })?;
                }
                Err(errno) => {
                    return Err(SandboxError::Unmount {
                        path: target,
                        errno,
                    })
                }
            }
        }
        match std::fs::remove_dir_all(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(format!("removing {}", dir.display()))(e)),
        }
    }
}

fn open_log(path: &Path) -> Result<std::fs::File, SandboxError> {
    let open = || {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
    };
    match open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(io(format!("creating {}", parent.display())))?;
            }
            open()
        }
        other => other,
    }
    .map_err(io(format!("opening the machine log {}", path.display())))
}

/// Whether a process is still around; reaps it when it is a dead child of ours. Never waits
/// on a live process, so no status is taken from anyone else's waiter (tokio's included).
fn reap_if_dead(pid: i32) -> Option<Gone> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    match host::proc_state(pid) {
        None => Some(Gone::Missing),
        Some('Z') => match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Some(Gone::Exited(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => Some(Gone::Signaled(sig)),
            // A thread group leader shows as a zombie while its other threads still exit; it
            // cannot be reaped until they have.
            Ok(WaitStatus::StillAlive) => None,
            // Not our child (a server restart since the boot): nothing we can reap.
            _ => Some(Gone::Dead),
        },
        Some(_) => None,
    }
}

/// Connects to init's socket as soon as it accepts, trying every millisecond. With `init`
/// (its pid and the log), fails as soon as init is found dead.
async fn connect_socket(
    socket: &Path,
    deadline: Instant,
    init: Option<(i32, &Path)>,
) -> Result<UnixStream, SandboxError> {
    loop {
        match UnixStream::connect(socket).await {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => return Err(io(format!("connecting to {}", socket.display()))(e)),
        }
        if let Some((pid, log)) = init {
            if let Some(how) = reap_if_dead(pid) {
                return Err(SandboxError::InitDied {
                    how,
                    log: log.to_path_buf(),
                });
            }
        }
        if Instant::now() >= deadline {
            return Err(SandboxError::InitSilent {
                what: "open its control socket",
                secs: BOOT_DEADLINE.as_secs(),
            });
        }
        sleep(Duration::from_millis(1)).await;
    }
}

/// Waits until `pid` is gone, reaping it if it is our child.
async fn wait_gone(pid: i32) {
    let deadline = Instant::now() + KILL_WAIT;
    let mut delay = Duration::from_millis(1);
    while reap_if_dead(pid).is_none() {
        if Instant::now() >= deadline {
            warn!(
                pid,
                "the machine's init outlived SIGKILL; going on with the teardown"
            );
            return;
        }
        sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(20));
    }
}

impl Sandbox {
    async fn boot_sandbox(&self, spec: &BootSpec) -> Result<Guest, SandboxError> {
        let id = spec.machine_id.as_str();
        validate_id(id)?;
        let paths = self.paths(id);
        self.check_spec(spec, &paths)?;
        if paths.dir.exists() || self.runc_has(id) {
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

    async fn connect(&self, machine_id: &str) -> Result<Option<Guest>, SandboxError> {
        validate_id(machine_id)?;
        match self.runc_state_or_none(machine_id).await {
            Some(state) if state.status == RuncStatus::Running => {}
            _ => return Ok(None),
        }
        let socket = self.paths(machine_id).socket;
        let stream = UnixStream::connect(&socket)
            .await
            .map_err(io(format!("connecting to {}", socket.display())))?;
        let guest = tokio::time::timeout(ATTACH_DEADLINE, Guest::connect(stream))
            .await
            .map_err(|_| crate::GuestError::Timeout)??;
        Ok(Some(guest))
    }

    /// Everything of the machine off the host: its processes, container, cgroups and files.
    async fn remove(&self, machine_id: &str) -> Result<Remains, SandboxError> {
        validate_id(machine_id)?;
        let id = machine_id;
        let paths = self.paths(id);
        let cgroup = bundle::cgroups_path(id);
        // Before runc deletes the cgroup and its counters with it.
        let oom_kills = self.cgroups.oom_kills(&cgroup);

        if self.runc_has(id) {
            let state = self.runc_state_or_none(id).await;
            if let Some(state) = &state {
                if state.status == RuncStatus::Paused {
                    // A frozen process takes no signal until it is thawed.
                    if let Err(e) = self.runc(&["resume", id]).await {
                        warn!(machine = id, error = %e, "could not thaw a suspended machine");
                    }
                }
                if state.status != RuncStatus::Stopped {
                    // The init is the pid namespace's PID 1: killing it kills everything in it.
                    if let Err(e) = self.runc(&["kill", id, "KILL"]).await {
                        debug!(machine = id, error = %e, "runc kill");
                    }
                }
            }
            // runc reports no pid for a stopped container, but a dead init may still be our
            // zombie: the pid file from the boot says which process it was.
            let pid = state
                .as_ref()
                .map(|s| s.pid)
                .filter(|p| *p > 0)
                .or_else(|| {
                    std::fs::read_to_string(&paths.pid_file)
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                });
            if let Some(pid) = pid {
                wait_gone(pid).await;
            }
            match self.runc(&["delete", "--force", id]).await {
                Err(_) if !self.runc_has(id) => {}
                other => {
                    other?;
                }
            }
        }
        // A boot that failed half-way may leave cgroups runc never recorded.
        for dir in self.cgroups.dirs(&cgroup) {
            if let Err(e) = std::fs::remove_dir(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(cgroup = %dir.display(), error = %e, "could not remove a leftover cgroup");
                }
            }
        }
        let dir = paths.dir.clone();
        tokio::task::spawn_blocking(move || Sandbox::remove_files(&dir))
            .await
            .map_err(|e| io("teardown task")(e.into()))??;
        Ok(Remains {
            oom_killed: oom_kills > 0,
            reason: None,
        })
    }

    /// The cgroup freezer (`runc pause`): every process stops where it is, memory kept.
    async fn pause(&self, machine_id: &str) -> Result<(), RuntimeError> {
        validate_id(machine_id)?;
        match self
            .runc_state(machine_id)
            .await
            .map_err(SandboxError::from)?
        {
            Some(state) if state.status == RuncStatus::Paused => return Ok(()),
            Some(state) if state.status == RuncStatus::Running => {}
            Some(state) => {
                return Err(SandboxError::CannotSuspend {
                    machine_id: machine_id.to_string(),
                    status: state.status,
                }
                .into())
            }
            None => return Err(RuntimeError::NotRunning(machine_id.to_string())),
        }
        self.runc(&["pause", machine_id])
            .await
            .map_err(SandboxError::from)?;
        Ok(())
    }

    async fn unpause(&self, machine_id: &str) -> Result<Guest, RuntimeError> {
        validate_id(machine_id)?;
        if let Some(state) = self.runc_state_or_none(machine_id).await {
            if state.status == RuncStatus::Paused {
                self.runc(&["resume", machine_id])
                    .await
                    .map_err(SandboxError::from)?;
            }
        }
        self.connect(machine_id)
            .await?
            .ok_or_else(|| RuntimeError::Vanished(machine_id.to_string()))
    }

    async fn ids(&self) -> Result<Vec<String>, SandboxError> {
        let mut ids = BTreeSet::new();
        let entries = std::fs::read_dir(&self.state_dir)
            .map_err(io(format!("listing {}", self.state_dir.display())))?;
        for entry in entries.flatten() {
            if let Some(name) = entry.file_name().to_str() {
                if validate_id(name).is_ok() && entry.path().is_dir() {
                    ids.insert(name.to_string());
                }
            }
        }
        let out = self.runc(&["list", "--quiet"]).await?;
        ids.extend(
            String::from_utf8_lossy(&out)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from),
        );
        Ok(ids.into_iter().collect())
    }
}

#[async_trait]
impl Runtime for Sandbox {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Sandbox
    }

    fn net_attach(&self) -> NetAttachKind {
        NetAttachKind::Netns
    }

    async fn boot(&self, spec: &BootSpec) -> Result<Guest, RuntimeError> {
        Ok(self.boot_sandbox(spec).await?)
    }

    async fn attach(&self, machine_id: &str) -> Result<Option<Guest>, RuntimeError> {
        Ok(self.connect(machine_id).await?)
    }

    async fn teardown(&self, machine_id: &str) -> Result<Remains, RuntimeError> {
        Ok(self.remove(machine_id).await?)
    }

    async fn suspend(&self, machine_id: &str) -> Result<(), RuntimeError> {
        self.pause(machine_id).await
    }

    async fn resume(&self, machine_id: &str) -> Result<Guest, RuntimeError> {
        self.unpause(machine_id).await
    }

    fn has(&self, machine_id: &str) -> bool {
        validate_id(machine_id).is_ok()
            && (self.paths(machine_id).dir.exists() || self.runc_has(machine_id))
    }

    async fn list(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(self.ids().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ids() {
        for ok in ["m1", "0123456789abcd", "a.b-c_d", &"x".repeat(64)] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "runc",
            ".",
            "..",
            "../x",
            "a/b",
            "-a",
            "a b",
            &"x".repeat(65),
        ] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn runc_errors_come_from_the_json_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("runc.log");
        std::fs::write(
            &log,
            "{\"level\":\"info\",\"msg\":\"hi\"}\n{\"level\":\"error\",\"msg\":\"exec: no such file\"}\nnot json\n",
        )
        .unwrap();
        assert_eq!(runc_error(&log, b"ignored"), "exec: no such file");
        assert_eq!(
            runc_error(&dir.path().join("none"), b" stderr text \n"),
            "stderr text"
        );
    }
}

//! The first stage of a microVM boot: init runs from the initramfs Hangar built, loads the
//! kernel modules the machine needs, configures its network device, stacks the image's
//! read-only disk under a fresh scratch disk with overlayfs (the blank slate), and moves into
//! it. After that, init carries on as in any machine.
//!
//! The initramfs holds:
//! - `/init`: this binary;
//! - `/hangar/modules`: module files to load, one path a line, in dependency order;
//! - `/hangar/modules.net`: the same, for a machine with a network device;
//! - `/hangar/launch.json`: the launch spec (appended per boot). Without it the boot is the
//!   host's probe: init reports that it reached `/init` and powers off at once;
//! - `/hangar/network.json`: how to configure the network device, when the machine has one
//!   (appended per boot; see `net.rs`).

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::log;

pub const LAUNCH: &str = "/hangar/launch.json";
const MODULES: &str = "/hangar/modules";
/// The modules to load for a machine with a network, as `MODULES`.
const NETWORK_MODULES: &str = "/hangar/modules.net";
/// The network device's configuration, when the machine has one.
const NETWORK: &str = hangar_proto::NETWORK_IN_INITRAMFS;
/// The line the host's probe looks for on the console.
pub const PROBE_MARK: &str = "hangar-init: reached /init";
/// The image disk and the scratch disk, in the order the host attaches them.
const IMAGE_DISK: &str = "/dev/vda";
const SCRATCH_DISK: &str = "/dev/vdb";
const DISK_WAIT: Duration = Duration::from_secs(20);

/// Whether this is PID 1 of a microVM, running from Hangar's initramfs.
pub fn in_initramfs() -> bool {
    std::process::id() == 1 && Path::new(MODULES).exists()
}

/// Processes other than init and the kernel's own threads (`PF_KTHREAD` in /proc/PID/stat).
pub fn user_processes_left() -> usize {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != 1)
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // Fields after the command name (in parentheses): state is the 3rd, flags the 9th.
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let zombie = fields.first() == Some(&"Z");
            let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
            !zombie && flags & PF_KTHREAD == 0
        })
        .count()
}

/// Powers the VM off; the host sees QEMU exit.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    log(format_args!("power off: {e}"));
    std::process::exit(1);
}

fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    std::fs::create_dir_all(target).map_err(|e| format!("creating {target}: {e}"))?;
    mount(Some(source), target, Some(fstype), flags, data)
        .map_err(|e| format!("mounting {fstype} {source} on {target}: {}", e.desc()))
}

/// Loads a kernel module from a file (`finit_module`); one already loaded is fine.
fn load_module(path: &str) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("opening {path}: {e}"))?;
    let params = c"";
    // SAFETY: finit_module reads the open descriptor and the NUL-terminated parameter string,
    // both of which outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    match nix::errno::Errno::last() {
        nix::errno::Errno::EEXIST => Ok(()),
        e => Err(format!("loading {path}: {}", e.desc())),
    }
}

/// Loads the modules a list names, one path a line, in order.
fn load_modules(list: &str) -> Result<(), String> {
    let modules = std::fs::read_to_string(list).map_err(|e| format!("reading {list}: {e}"))?;
    for module in modules.lines().map(str::trim).filter(|l| !l.is_empty()) {
        load_module(module)?;
    }
    Ok(())
}

fn wait_for(paths: &[&str]) -> Result<(), String> {
    let deadline = Instant::now() + DISK_WAIT;
    loop {
        if paths.iter().all(|p| Path::new(p).exists()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let missing: Vec<&str> = paths
                .iter()
                .copied()
                .filter(|p| !Path::new(p).exists())
                .collect();
            return Err(format!(
                "the disks {missing:?} did not appear within {}s",
                DISK_WAIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The virtio-serial port the host named `name`, as a device path.
pub fn find_port(name: &str) -> Result<String, String> {
    let deadline = Instant::now() + DISK_WAIT;
    loop {
        if let Ok(entries) = std::fs::read_dir("/sys/class/virtio-ports") {
            for entry in entries.flatten() {
                let mut found = String::new();
                if std::fs::File::open(entry.path().join("name"))
                    .and_then(|mut f| f.read_to_string(&mut found))
                    .is_ok()
                    && found.trim() == name
                {
                    let dev = Path::new("/dev").join(entry.file_name());
                    if dev.exists() {
                        return Ok(dev.to_string_lossy().into_owned());
                    }
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("no virtio-serial port named {name:?}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Everything from the initramfs to the machine's own root. Returns the launch spec's bytes.
pub fn prepare() -> Result<Vec<u8>, String> {
    if !Path::new(LAUNCH).exists() {
        // The host's probe (and the benchmark's floor): no machine, only proof that the kernel
        // reached us.
        eprintln!("{PROBE_MARK}");
        power_off();
    }
    let none = MsFlags::empty();
    mount_fs("proc", "/proc", "proc", none, None)?;
    mount_fs("sysfs", "/sys", "sysfs", none, None)?;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    load_modules(MODULES)?;
    if Path::new(NETWORK).exists() {
        let bytes = std::fs::read(NETWORK).map_err(|e| format!("reading {NETWORK}: {e}"))?;
        let spec: hangar_proto::NetworkSpec =
            serde_json::from_slice(&bytes).map_err(|e| format!("reading {NETWORK}: {e}"))?;
        if Path::new(NETWORK_MODULES).exists() {
            load_modules(NETWORK_MODULES)?;
        }
        crate::net::configure(&spec).map_err(|e| format!("the network: {e}"))?;
    }
    let launch = std::fs::read(LAUNCH).map_err(|e| format!("reading {LAUNCH}: {e}"))?;
    wait_for(&[IMAGE_DISK, SCRATCH_DISK])?;
    mount_fs(
        IMAGE_DISK,
        "/.lower",
        "ext4",
        MsFlags::MS_RDONLY,
        Some("noload"),
    )?;
    mount_fs(SCRATCH_DISK, "/.scratch", "ext4", MsFlags::MS_NOATIME, None)?;
    for dir in ["/.scratch/upper", "/.scratch/work"] {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {dir}: {e}"))?;
    }
    mount_fs(
        "overlay",
        "/.root",
        "overlay",
        none,
        Some("lowerdir=/.lower,upperdir=/.scratch/upper,workdir=/.scratch/work"),
    )?;
    // The machine's root mounts its own /proc, /sys and /dev; these belong to the initramfs.
    for target in ["/proc", "/sys", "/dev"] {
        let _ = umount2(target, MntFlags::MNT_DETACH);
    }
    // An initramfs cannot be pivoted away from: move the new root over it and chroot.
    std::env::set_current_dir("/.root").map_err(|e| format!("entering the root: {e}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("moving the root: {}", e.desc()))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {}", e.desc()))?;
    std::env::set_current_dir("/").map_err(|e| format!("entering the root: {e}"))?;
    Ok(launch)
}

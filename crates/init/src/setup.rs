//! Preparing the machine before its process starts: filesystems, hostname, loopback, files.
//!
//! Everything is idempotent. In a sandbox runc has mounted the filesystems and set the
//! hostname already, and init lacks CAP_SYS_ADMIN; in a microVM nothing is done yet and init
//! holds every capability. So each step checks first and tolerates a refusal when the result
//! is already there.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use hangar_proto::FileSpec;
use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

use crate::env::hosts_with;

fn log(msg: impl std::fmt::Display) {
    eprintln!("hangar-init: {msg}");
}

struct Fs {
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

fn mount_points() -> HashSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| {
            // Field 5 is the mount point (octal escapes only matter for odd names we never check).
            s.lines()
                .filter_map(|l| l.split(' ').nth(4).map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn is_proc_mounted() -> bool {
    matches!(nix::sys::statfs::statfs("/proc"), Ok(s) if s.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC)
}

/// Mounts what is missing of /proc, /sys, /dev, /dev/pts, /dev/shm and /run.
pub fn mount_filesystems() {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if !is_proc_mounted() {
        try_mount(&Fs {
            target: "/proc",
            fstype: "proc",
            flags: nosuid_nodev_noexec,
            data: None,
        });
    }
    let mounted = mount_points();
    let wanted = [
        Fs {
            target: "/sys",
            fstype: "sysfs",
            flags: nosuid_nodev_noexec,
            data: None,
        },
        Fs {
            target: "/dev",
            fstype: "devtmpfs",
            flags: MsFlags::MS_NOSUID,
            data: Some("mode=0755"),
        },
        Fs {
            target: "/dev/pts",
            fstype: "devpts",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        },
        Fs {
            target: "/dev/shm",
            fstype: "tmpfs",
            flags: nosuid_nodev_noexec,
            data: Some("mode=1777"),
        },
        Fs {
            target: "/run",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=0755"),
        },
    ];
    let mut dev_mounted_now = false;
    for fs in &wanted {
        if !mounted.contains(fs.target) && try_mount(fs) && fs.target == "/dev" {
            dev_mounted_now = true;
        }
    }
    if dev_mounted_now {
        // devtmpfs lacks the links runtimes usually add.
        for (link, to) in [
            ("/dev/fd", "/proc/self/fd"),
            ("/dev/stdin", "/proc/self/fd/0"),
            ("/dev/stdout", "/proc/self/fd/1"),
            ("/dev/stderr", "/proc/self/fd/2"),
            ("/dev/ptmx", "pts/ptmx"),
        ] {
            if std::fs::symlink_metadata(link).is_err() {
                let _ = std::os::unix::fs::symlink(to, link);
            }
        }
    }
}

fn try_mount(fs: &Fs) -> bool {
    if let Err(e) = std::fs::create_dir_all(fs.target) {
        log(format_args!("cannot create {}: {e}", fs.target));
        return false;
    }
    match mount(
        Some(fs.fstype),
        fs.target,
        Some(fs.fstype),
        fs.flags,
        fs.data,
    ) {
        Ok(()) => true,
        // Without CAP_SYS_ADMIN (a sandbox) the runtime is responsible for mounts.
        Err(Errno::EPERM) => false,
        Err(e) => {
            log(format_args!(
                "cannot mount {} on {}: {}",
                fs.fstype,
                fs.target,
                e.desc()
            ));
            false
        }
    }
}

pub fn set_hostname(hostname: &str) {
    if hostname.is_empty() {
        return;
    }
    if nix::unistd::gethostname()
        .map(|h| h == hostname)
        .unwrap_or(false)
    {
        return;
    }
    if let Err(e) = nix::unistd::sethostname(hostname) {
        log(format_args!(
            "cannot set the hostname to {hostname}: {}",
            e.desc()
        ));
    }
}

/// Brings `lo` up; a fresh network namespace (or a VM) starts with it down.
pub fn loopback_up() {
    // SAFETY: a plain socket(2) call; the fd is owned right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        log(format_args!(
            "cannot bring lo up: socket: {}",
            Errno::last().desc()
        ));
        return;
    }
    // SAFETY: fd is a valid descriptor we just created and own.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&sock);
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes ifru_flags inside `req`, which we own.
    if unsafe { libc::ioctl(raw, libc::SIOCGIFFLAGS, &mut req) } < 0 {
        log(format_args!("cannot bring lo up: {}", Errno::last().desc()));
        return;
    }
    // SAFETY: SIOCGIFFLAGS just filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return;
    }
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(raw, libc::SIOCSIFFLAGS, &req) } < 0 {
        log(format_args!("cannot bring lo up: {}", Errno::last().desc()));
    }
}

fn read_only(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::EPERM)
    )
}

/// Writes /etc/hostname and makes sure /etc/hosts names localhost and the hostname; silently
/// leaves a read-only /etc alone.
pub fn write_etc(hostname: &str) {
    if hostname.is_empty() {
        return;
    }
    if let Err(e) = std::fs::create_dir_all("/etc") {
        if !read_only(&e) {
            log(format_args!("cannot create /etc: {e}"));
        }
        return;
    }
    let want = format!("{hostname}\n");
    if std::fs::read_to_string("/etc/hostname").ok().as_deref() != Some(want.as_str()) {
        if let Err(e) = std::fs::write("/etc/hostname", &want) {
            if !read_only(&e) {
                log(format_args!("cannot write /etc/hostname: {e}"));
            }
        }
    }
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    if let Some(new) = hosts_with(&hosts, hostname) {
        if let Err(e) = std::fs::write("/etc/hosts", new) {
            if !read_only(&e) {
                log(format_args!("cannot write /etc/hosts: {e}"));
            }
        }
    }
}

/// Writes the spec's files, creating parent directories; the first failure is returned.
pub fn write_files(files: &[FileSpec]) -> Result<(), String> {
    for f in files {
        let path = Path::new(&f.path);
        if !path.is_absolute() {
            return Err(format!("file path {:?} is not absolute", f.path));
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        let mode = f.mode & 0o7777;
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(path)?;
            file.write_all(&f.contents)?;
            // The umask may have narrowed the mode at creation, and an existing file keeps its own.
            file.set_permissions(std::fs::Permissions::from_mode(mode))
        };
        write().map_err(|e| format!("writing {}: {e}", f.path))?;
    }
    Ok(())
}

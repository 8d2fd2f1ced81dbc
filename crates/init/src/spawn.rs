//! Starting processes and reaping every child, as PID 1 must.
//!
//! One reaper thread blocks in `waitpid(-1)` and hands each status to whoever registered the
//! pid. `std::process::Command` cannot be used beside it: when an exec fails, std waits for the
//! failed child itself and panics if the reaper got there first. So init forks and execs
//! itself, reporting exec failures through a close-on-exec pipe, and registers the owner of a
//! new pid under the same lock the reaper takes to dispatch: the reaper can never see a pid
//! before its owner is known.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use hangar_proto::ExitStatus;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::users::User;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Why a process could not be started, with the shell's exit code for it (127: not found,
/// 126: found but could not be run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnFailure {
    pub code: i32,
    pub message: String,
}

impl SpawnFailure {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        SpawnFailure {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> ExitStatus {
        ExitStatus {
            code: Some(self.code),
            signal: None,
            error: Some(self.message.clone()),
            exited_at_ms: now_ms(),
        }
    }
}

/// Where a child's standard descriptors come from; `None` inherits init's.
#[derive(Default)]
pub struct Stdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// Make stdin (a terminal) the controlling terminal of the new session.
    pub controlling_tty: bool,
}

/// A process ready to fork: every allocation the child needs is done here, because between
/// fork and exec only async-signal-safe calls are allowed.
pub struct Prepared {
    path: CString,
    _argv: Vec<CString>,
    _env: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    env_ptrs: Vec<*const libc::c_char>,
    cwd: CString,
    user: User,
    groups: Vec<libc::gid_t>,
    stdio: Stdio,
    /// For messages: what the user asked for.
    display_cwd: String,
    display_user: String,
}

// SAFETY: the raw pointers point into the CStrings owned by the same struct, whose heap
// buffers never move while it lives; nothing else aliases them.
unsafe impl Send for Prepared {}

fn cstring(what: &str, s: &[u8]) -> Result<CString, SpawnFailure> {
    CString::new(s).map_err(|_| SpawnFailure::new(126, format!("{what} contains a NUL byte")))
}

impl Prepared {
    pub fn new(
        path: &std::path::Path,
        argv: &[String],
        env: &[String],
        cwd: &str,
        user: User,
        user_spec: &str,
        stdio: Stdio,
    ) -> Result<Prepared, SpawnFailure> {
        let path = cstring("the program path", path.as_os_str().as_bytes())?;
        let argv: Vec<CString> = argv
            .iter()
            .map(|a| cstring("an argument", a.as_bytes()))
            .collect::<Result<_, _>>()?;
        let env: Vec<CString> = env
            .iter()
            .map(|e| cstring("an environment variable", e.as_bytes()))
            .collect::<Result<_, _>>()?;
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        env_ptrs.push(std::ptr::null());
        let groups = user.groups.iter().map(|g| *g as libc::gid_t).collect();
        Ok(Prepared {
            path,
            _argv: argv,
            _env: env,
            argv_ptrs,
            env_ptrs,
            cwd: cstring("the working directory", OsStr::new(cwd).as_bytes())?,
            user,
            groups,
            stdio,
            display_cwd: cwd.to_string(),
            display_user: if user_spec.is_empty() {
                "root".into()
            } else {
                user_spec.into()
            },
        })
    }
}

// Steps the child reports a failure at.
const STEP_SETSID: u8 = 1;
const STEP_DUP: u8 = 2;
const STEP_CTTY: u8 = 3;
const STEP_USER: u8 = 4;
const STEP_CHDIR: u8 = 5;
const STEP_EXEC: u8 = 6;

fn describe(p: &Prepared, step: u8, errno: Errno) -> SpawnFailure {
    let path = p.path.to_string_lossy();
    match step {
        STEP_EXEC => match errno {
            Errno::ENOENT => SpawnFailure::new(
                127,
                format!("exec {path}: no such file or directory (or its interpreter or dynamic loader is missing)"),
            ),
            Errno::EACCES | Errno::EPERM => SpawnFailure::new(126, format!("exec {path}: permission denied")),
            Errno::ENOEXEC => SpawnFailure::new(126, format!("exec {path}: exec format error")),
            e => SpawnFailure::new(126, format!("exec {path}: {}", e.desc())),
        },
        STEP_CHDIR => SpawnFailure::new(
            126,
            format!("cannot change to working directory {}: {}", p.display_cwd, errno.desc()),
        ),
        STEP_USER => SpawnFailure::new(
            126,
            format!(
                "cannot switch to user {} (uid {}, gid {}): {}",
                p.display_user,
                p.user.uid,
                p.user.gid,
                errno.desc()
            ),
        ),
        STEP_CTTY => SpawnFailure::new(126, format!("cannot set the controlling terminal: {}", errno.desc())),
        STEP_DUP => SpawnFailure::new(126, format!("cannot set up stdio: {}", errno.desc())),
        _ => SpawnFailure::new(126, format!("cannot start a session: {}", errno.desc())),
    }
}

/// The child's side of a spawn. Never returns.
///
/// # Safety
/// Must only be called in a freshly forked child; it uses nothing but system calls on data
/// prepared before the fork.
unsafe fn child(p: &Prepared, report: RawFd) -> ! {
    let fail = |step: u8| -> ! {
        let errno = Errno::last_raw();
        let mut buf = [0u8; 5];
        buf[0] = step;
        buf[1..].copy_from_slice(&errno.to_ne_bytes());
        libc::write(report, buf.as_ptr().cast(), buf.len());
        libc::_exit(127);
    };

    // Init blocks the signals it forwards and ignores SIGPIPE; a program must start with
    // neither (ignored signals survive exec).
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }

    if libc::setsid() < 0 {
        fail(STEP_SETSID);
    }
    for (fd, target) in [
        (&p.stdio.stdin, 0),
        (&p.stdio.stdout, 1),
        (&p.stdio.stderr, 2),
    ] {
        if let Some(fd) = fd {
            if libc::dup2(fd.as_raw_fd(), target) < 0 {
                fail(STEP_DUP);
            }
        }
    }
    if p.stdio.controlling_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
        fail(STEP_CTTY);
    }
    if libc::setgroups(p.groups.len(), p.groups.as_ptr()) < 0
        || libc::setgid(p.user.gid) < 0
        || libc::setuid(p.user.uid) < 0
    {
        fail(STEP_USER);
    }
    if libc::chdir(p.cwd.as_ptr()) < 0 {
        fail(STEP_CHDIR);
    }
    // Belt and braces: nothing of init's beyond stdio leaks into the program (errors ignored:
    // close_range needs Linux 5.11, and every fd init opens is close-on-exec anyway).
    libc::syscall(
        libc::SYS_close_range,
        3u32,
        u32::MAX,
        libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
    );
    libc::execve(p.path.as_ptr(), p.argv_ptrs.as_ptr(), p.env_ptrs.as_ptr());
    fail(STEP_EXEC);
}

/// What to do with a child's status once it is reaped.
pub type Owner = Box<dyn FnOnce(ExitStatus) + Send>;

struct Table {
    owners: HashMap<i32, Owner>,
    /// Bumped on every fork, so a reaper that found no children knows when to look again.
    forks: u64,
}

pub struct Children {
    table: Mutex<Table>,
    forked: Condvar,
}

impl Default for Children {
    fn default() -> Self {
        Children {
            table: Mutex::new(Table {
                owners: HashMap::new(),
                forks: 0,
            }),
            forked: Condvar::new(),
        }
    }
}

fn status_of(ws: WaitStatus) -> Option<(i32, ExitStatus)> {
    let now = now_ms();
    match ws {
        WaitStatus::Exited(pid, code) => Some((
            pid.as_raw(),
            ExitStatus {
                code: Some(code),
                signal: None,
                error: None,
                exited_at_ms: now,
            },
        )),
        WaitStatus::Signaled(pid, sig, _) => Some((
            pid.as_raw(),
            ExitStatus {
                code: None,
                signal: Some(sig as i32),
                error: None,
                exited_at_ms: now,
            },
        )),
        _ => None,
    }
}

impl Children {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the table would leave PID 1 unable to reap: keep going with
        // the data as it is rather than poisoning every later spawn.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forks and execs `p`. On success `owner` gets the status when the process ends; on
    /// failure the reason comes back and the failed child is reaped and ignored.
    pub fn spawn(&self, mut p: Prepared, owner: Owner) -> Result<i32, SpawnFailure> {
        let (report_r, report_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| SpawnFailure::new(126, format!("cannot create a pipe: {}", e.desc())))?;
        let mut table = self.lock();
        // SAFETY: the child runs only `child`, which makes nothing but system calls on memory
        // prepared before the fork (no allocation, no locks), then execs or _exits.
        let pid = match unsafe { nix::unistd::fork() } {
            Ok(ForkResult::Child) => unsafe {
                // SAFETY: we are the freshly forked child.
                child(&p, report_w.as_raw_fd())
            },
            Ok(ForkResult::Parent { child }) => child,
            Err(e) => return Err(SpawnFailure::new(126, format!("fork: {}", e.desc()))),
        };
        table.forks += 1;
        self.forked.notify_all();
        drop(report_w);
        // The child's copies of its stdio ends must close now, or pipes never reach EOF.
        drop(std::mem::take(&mut p.stdio));
        let mut buf = [0u8; 5];
        let mut got = 0;
        while got < buf.len() {
            match nix::unistd::read(&report_r, &mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        if got == buf.len() {
            let errno = Errno::from_raw(i32::from_ne_bytes([buf[1], buf[2], buf[3], buf[4]]));
            // No owner: the reaper collects the failed child and drops its status.
            return Err(describe(&p, buf[0], errno));
        }
        table.owners.insert(pid.as_raw(), owner);
        Ok(pid.as_raw())
    }

    /// Reaps every child for ever, dispatching statuses to their owners. Orphans the kernel
    /// reparents to init have no owner; they are simply collected.
    pub fn reap_forever(&self) -> ! {
        loop {
            let forks = self.lock().forks;
            match waitpid(None::<Pid>, Some(WaitPidFlag::__WALL)) {
                Ok(ws) => {
                    if let Some((pid, status)) = status_of(ws) {
                        let owner = self.lock().owners.remove(&pid);
                        if let Some(owner) = owner {
                            owner(status);
                        }
                    }
                }
                Err(Errno::ECHILD) => {
                    let table = self.lock();
                    if table.forks == forks {
                        // The timeout only guards against a missed wake-up; nothing depends on it.
                        let _ = self.forked.wait_timeout(table, Duration::from_secs(1));
                    }
                }
                Err(Errno::EINTR) => {}
                Err(e) => {
                    eprintln!("hangar-init: waitpid: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

//! `hangar-init`: PID 1 of every Hangar machine.
//!
//! It prepares the machine, starts the main process, reaps every zombie, forwards signals to
//! the main process, and serves the host's control channel (see `hangar-proto`). When the main
//! process exits, init keeps its status and stays up until the host reads it and shuts the
//! machine down: the host may be restarting when the process ends.
//!
//! Threads and blocking I/O only; no async runtime in PID 1.

mod control;
mod env;
mod exec;
mod net;
mod probe;
mod procs;
mod setup;
mod spawn;
mod users;
mod vm;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};

use hangar_proto::{Event, ExitStatus, LaunchSpec, MainProcess};
use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::Pid;

use crate::spawn::{now_ms, Children, Prepared, SpawnFailure, Stdio};

pub const INIT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Signals init passes on to the main process.
const FORWARDED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

pub fn log(msg: impl std::fmt::Display) {
    eprintln!("hangar-init: {msg}");
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // PID 1 must keep serving after a panic on some thread; the data is still consistent
    // enough for that (every critical section is a few assignments).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Unsent output above which exec threads wait for the host to catch up.
const MAX_BACKLOG: usize = 8 << 20;

/// Bytes queued on a connection and not yet written.
#[derive(Default)]
pub struct Backlog {
    bytes: Mutex<usize>,
    drained: Condvar,
    closed: AtomicBool,
}

/// The host connection events go to. Each accepted connection gets a new generation so that
/// what belonged to an old connection (its execs' output) is not sent on a new one.
///
/// Frames go through a queue to one writer thread per connection: no thread that matters to
/// PID 1 (the reaper reporting an exit, above all) ever blocks on a host that stopped reading.
/// Only exec output waits, when the backlog grows large.
pub struct Conn {
    pub generation: u64,
    queue: mpsc::Sender<Vec<u8>>,
    backlog: Arc<Backlog>,
}

impl Conn {
    /// Starts the writer thread. `on_close` runs when it stops: the connection was replaced,
    /// or a write failed (the host is gone, or stuck past the socket's send timeout).
    pub fn open(
        generation: u64,
        mut writer: impl std::io::Write + Send + 'static,
        on_close: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<Conn> {
        let (queue, frames) = mpsc::channel::<Vec<u8>>();
        let backlog = Arc::new(Backlog::default());
        let theirs = Arc::clone(&backlog);
        std::thread::Builder::new()
            .name(format!("write-{generation}"))
            .spawn(move || {
                while let Ok(frame) = frames.recv() {
                    let result = writer.write_all(&frame).and_then(|()| writer.flush());
                    *lock(&theirs.bytes) -= frame.len();
                    theirs.drained.notify_all();
                    if let Err(e) = result {
                        log(format_args!("control connection {generation}: {e}"));
                        break;
                    }
                }
                theirs.closed.store(true, Ordering::SeqCst);
                theirs.drained.notify_all();
                on_close();
            })?;
        Ok(Conn {
            generation,
            queue,
            backlog,
        })
    }

    fn push(&self, event: &Event) {
        let frame = hangar_proto::encode(event);
        *lock(&self.backlog.bytes) += frame.len();
        if self.queue.send(frame).is_err() {
            // The writer is gone; the reader notices the dead connection on its own.
            *lock(&self.backlog.bytes) = 0;
        }
    }
}

pub struct Init {
    pub spec: LaunchSpec,
    pub children: Children,
    pub main: Mutex<MainProcess>,
    pub conn: Mutex<Option<Conn>>,
    pub execs: Mutex<HashMap<(u64, u64), exec::Handle>>,
}

impl Init {
    /// Sends an event on connection `generation`, if that is still the current one.
    pub fn send_on(&self, generation: u64, event: &Event) {
        if let Some(c) = lock(&self.conn)
            .as_ref()
            .filter(|c| c.generation == generation)
        {
            c.push(event);
        }
    }

    /// Waits while connection `generation` has too much unsent output (the host reads
    /// slowly); returns at once when that connection is gone.
    pub fn wait_for_room(&self, generation: u64) {
        let backlog = match lock(&self.conn)
            .as_ref()
            .filter(|c| c.generation == generation)
        {
            Some(c) => Arc::clone(&c.backlog),
            None => return,
        };
        let mut bytes = lock(&backlog.bytes);
        while *bytes > MAX_BACKLOG && !backlog.closed.load(Ordering::SeqCst) {
            bytes = backlog
                .drained
                .wait_timeout(bytes, std::time::Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits (at most `limit`) until everything queued on connection `generation` is written.
    pub fn flush(&self, generation: u64, limit: std::time::Duration) {
        let backlog = match lock(&self.conn)
            .as_ref()
            .filter(|c| c.generation == generation)
        {
            Some(c) => Arc::clone(&c.backlog),
            None => return,
        };
        let deadline = std::time::Instant::now() + limit;
        let mut bytes = lock(&backlog.bytes);
        while *bytes > 0 && !backlog.closed.load(Ordering::SeqCst) {
            let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else {
                return;
            };
            bytes = backlog
                .drained
                .wait_timeout(bytes, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Sends the main process's state. The main lock is held while queueing so that status
    /// events leave in the order the state changed.
    pub fn send_status(&self, id: Option<u64>, generation: Option<u64>) {
        let main = lock(&self.main);
        let event = Event::Status {
            id,
            main: main.clone(),
            init_version: INIT_VERSION.to_string(),
        };
        if let Some(c) = lock(&self.conn)
            .as_ref()
            .filter(|c| generation.is_none_or(|g| g == c.generation))
        {
            c.push(&event);
        }
    }

    fn set_main(&self, state: MainProcess) {
        *lock(&self.main) = state;
        self.send_status(None, None);
    }

    pub fn main_pid(&self) -> Option<i32> {
        match *lock(&self.main) {
            MainProcess::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Blocks the forwarded signals in every thread (threads inherit the mask, so this runs before
/// any is spawned); one thread takes them with sigwait. The kernel drops signals sent to a
/// namespace's PID 1 whose disposition is the default, so each gets a no-op handler first.
fn prepare_signals() -> SigSet {
    // An inherited SIG_IGN for SIGCHLD would make the kernel reap children itself and lose
    // their statuses.
    // SAFETY: restoring a default disposition installs no handler.
    if let Err(e) = unsafe { nix::sys::signal::signal(Signal::SIGCHLD, SigHandler::SigDfl) } {
        log(format_args!("cannot reset SIGCHLD: {e}"));
    }
    let mut set = SigSet::empty();
    let action = SigAction::new(
        SigHandler::Handler(ignore_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in FORWARDED {
        // SAFETY: the handler does nothing, so it is trivially async-signal-safe.
        if let Err(e) = unsafe { sigaction(sig, &action) } {
            log(format_args!("cannot handle {sig}: {e}"));
        }
        set.add(sig);
    }
    if let Err(e) = set.thread_block() {
        log(format_args!("cannot block signals: {e}"));
    }
    set
}

fn forward_signals(init: Arc<Init>, set: SigSet) {
    loop {
        match set.wait() {
            Ok(sig) => {
                if let Some(pid) = init.main_pid() {
                    let _ = kill(Pid::from_raw(pid), sig);
                }
            }
            Err(e) => {
                log(format_args!("sigwait: {e}"));
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

/// Starts the main process, or reports why it could not start. Its output goes where init's
/// does (the machine's log), so `tty` does not apply to it.
fn start_main(init: &Arc<Init>) -> Result<(), SpawnFailure> {
    setup::write_files(&init.spec.files).map_err(|e| SpawnFailure::new(126, e))?;
    let p = &init.spec.process;
    if p.argv.is_empty() {
        return Err(SpawnFailure::new(
            127,
            "no command to run: the image has no entrypoint or cmd and none was given",
        ));
    }
    let user = users::resolve_in_root(&p.user).map_err(|e| SpawnFailure::new(126, e.0))?;
    let env = env::build_env(&p.env, &user.home, false);
    let cwd = if p.cwd.is_empty() {
        "/"
    } else {
        p.cwd.as_str()
    };
    let path = env::find_program(
        &p.argv[0],
        env::lookup_var(&env, "PATH").unwrap_or(""),
        Path::new(cwd),
    )
    .map_err(|e| SpawnFailure::new(e.code, e.message))?;
    let null: OwnedFd = std::fs::File::open("/dev/null")
        .map_err(|e| SpawnFailure::new(126, format!("opening /dev/null: {e}")))?
        .into();
    let stdio = Stdio {
        stdin: Some(null),
        stdout: None,
        stderr: None,
        controlling_tty: false,
    };
    let prepared = Prepared::new(&path, &p.argv, &env, cwd, user, &p.user, stdio)?;

    // Holding the main lock across the spawn means the exit (dispatched by the reaper through
    // the owner below) can only be recorded after `Running`.
    let mut main = lock(&init.main);
    let owner_init = Arc::clone(init);
    let pid = init.children.spawn(
        prepared,
        Box::new(move |status: ExitStatus| owner_init.set_main(MainProcess::Exited(status))),
    )?;
    *main = MainProcess::Running {
        pid,
        started_at_ms: now_ms(),
    };
    drop(main);
    init.send_status(None, None);
    Ok(())
}

fn main() {
    let (path, bytes) = if vm::in_initramfs() {
        // A microVM: move from the initramfs into the machine's root first.
        match vm::prepare() {
            Ok(b) => (vm::LAUNCH.to_string(), Ok(b)),
            Err(e) => {
                log(format_args!("cannot prepare the machine: {e}"));
                vm::power_off();
            }
        }
    } else {
        let Some(path) = std::env::args().nth(1) else {
            log("usage: hangar-init LAUNCH_SPEC.json");
            std::process::exit(2);
        };
        let bytes = std::fs::read(&path).map_err(|e| e.to_string());
        (path, bytes)
    };
    let spec: LaunchSpec =
        match bytes.and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string())) {
            Ok(s) => s,
            Err(e) => {
                log(format_args!("cannot read the launch spec {path}: {e}"));
                std::process::exit(2);
            }
        };
    let signals = prepare_signals();

    let init = Arc::new(Init {
        spec,
        children: Children::default(),
        main: Mutex::new(MainProcess::Starting),
        conn: Mutex::new(None),
        execs: Mutex::new(HashMap::new()),
    });

    // The filesystems first: a serial control device lives in /dev.
    setup::mount_filesystems();

    let reaper = Arc::clone(&init);
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || reaper.children.reap_forever())
        .expect("PID 1 cannot run without its reaper thread");
    let forwarder = Arc::clone(&init);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || forward_signals(forwarder, signals))
        .expect("PID 1 cannot run without its signal thread");

    // Serve the host as early as possible: it connects while the rest of the setup runs and
    // sees `Starting` until the main process is up.
    let server = match control::Server::open(&init.spec.control) {
        Ok(s) => s,
        Err(e) => {
            log(format_args!(
                "cannot open the control channel {}: {e}",
                init.spec.control
            ));
            std::process::exit(2);
        }
    };
    let served = Arc::clone(&init);
    let server_thread = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || server.serve(served))
        .expect("PID 1 cannot run without its control thread");

    setup::set_hostname(&init.spec.hostname);
    setup::loopback_up();
    setup::write_etc(&init.spec.hostname);

    if let Err(failure) = start_main(&init) {
        log(format_args!(
            "cannot start {:?}: {}",
            init.spec.process.argv, failure.message
        ));
        init.set_main(MainProcess::Exited(failure.status()));
    }
    // Init lives until the host shuts it down (the control thread exits the process).
    let _ = server_thread.join();
    log("control channel closed for good; staying up to reap");
    loop {
        std::thread::park();
    }
}

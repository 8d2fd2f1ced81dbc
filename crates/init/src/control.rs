//! The control channel: a Unix socket (sandbox) or a serial device (microVM), and the requests
//! that arrive on it.

use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hangar_proto::{Decoder, Event, FrameError, Op, Request};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{exec, lock, log, Conn, Init};

/// How long a write to the host may block before the connection counts as dead.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

pub enum Server {
    Unix(UnixListener),
    Serial(std::fs::File),
}

impl Server {
    pub fn open(control: &str) -> Result<Server, String> {
        if let Some(path) = control.strip_prefix("unix:") {
            // A socket left by an earlier boot (or an image) would make bind fail.
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("removing the stale socket {path}: {e}")),
            }
            if let Some(parent) = std::path::Path::new(path).parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("creating {}: {e}", parent.display()))?;
            }
            let listener = UnixListener::bind(path).map_err(|e| format!("binding {path}: {e}"))?;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
            Ok(Server::Unix(listener))
        } else if let Some(name) = control.strip_prefix("vport:") {
            // A microVM's virtio-serial port, by the name the host gave it.
            Server::open(&format!("serial:{}", crate::vm::find_port(name)?))
        } else if let Some(path) = control.strip_prefix("serial:") {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(path)
                .map_err(|e| format!("opening {path}: {e}"))?;
            make_raw(&file);
            Ok(Server::Serial(file))
        } else {
            Err("expected unix:PATH, serial:PATH or vport:NAME".into())
        }
    }

    pub fn serve(self, init: Arc<Init>) {
        match self {
            Server::Unix(listener) => serve_unix(init, listener),
            Server::Serial(file) => serve_serial(init, file),
        }
    }
}

/// A console port is a tty that would echo and translate our bytes; a virtio-serial port is
/// not a tty and needs nothing.
fn make_raw(file: &std::fs::File) {
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
    if let Ok(mut t) = tcgetattr(file) {
        cfmakeraw(&mut t);
        let _ = tcsetattr(file, SetArg::TCSANOW, &t);
    }
}

/// Only the host may drive init. In a sandbox the host is outside the machine's pid namespace,
/// so the kernel reports its pid as 0; a process inside the machine (which could reach the
/// socket) has a visible pid and is turned away.
fn from_outside(stream: &UnixStream) -> bool {
    if std::process::id() != 1 {
        return true; // not a namespace's init (a test run): nothing to tell apart
    }
    match nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials) {
        Ok(cred) => cred.pid() == 0,
        Err(_) => false,
    }
}

fn serve_unix(init: Arc<Init>, listener: UnixListener) {
    let mut generation = 0u64;
    let mut current: Option<UnixStream> = None;
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                log(format_args!("accept: {e}"));
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if !from_outside(&stream) {
            log("refused a control connection from inside the machine");
            continue;
        }
        let (writer, on_close) = match (stream.try_clone(), stream.try_clone()) {
            (Ok(w), Ok(s)) => (w, s),
            (Err(e), _) | (_, Err(e)) => {
                log(format_args!("control connection: {e}"));
                continue;
            }
        };
        // A host that stops reading for this long is treated as gone.
        let _ = writer.set_write_timeout(Some(SEND_TIMEOUT));
        let shutdown = match on_close.try_clone() {
            Ok(s) => s,
            Err(e) => {
                log(format_args!("control connection: {e}"));
                continue;
            }
        };
        generation += 1;
        let conn = match Conn::open(generation, writer, move || {
            let _ = on_close.shutdown(std::net::Shutdown::Both);
        }) {
            Ok(c) => c,
            Err(e) => {
                log(format_args!("cannot serve a connection: {e}"));
                continue;
            }
        };
        // A new connection replaces the old one: a restarted host reconnects.
        if let Some(old) = current.replace(shutdown) {
            let _ = old.shutdown(std::net::Shutdown::Both);
        }
        *lock(&init.conn) = Some(conn);
        let conn_init = Arc::clone(&init);
        let spawned = std::thread::Builder::new()
            .name(format!("conn-{generation}"))
            .spawn(move || {
                read_requests(&conn_init, generation, stream);
                connection_closed(&conn_init, generation);
            });
        if let Err(e) = spawned {
            log(format_args!("cannot serve a connection: {e}"));
        }
    }
}

fn serve_serial(init: Arc<Init>, file: std::fs::File) {
    let conn = match file.try_clone().and_then(|w| Conn::open(1, w, || {})) {
        Ok(c) => c,
        Err(e) => {
            log(format_args!("serial control channel: {e}"));
            return;
        }
    };
    *lock(&init.conn) = Some(conn);
    let mut reader = file;
    loop {
        // A virtio port reads end-of-file while no host is attached; the decoder's magic lets
        // the next host resynchronise, so just wait and read again.
        read_requests(&init, 1, &mut reader);
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_requests(init: &Arc<Init>, generation: u64, mut r: impl Read) {
    let mut decoder = Decoder::new();
    loop {
        match hangar_proto::read_frame::<Request>(&mut r, &mut decoder) {
            Ok(Some(req)) => handle(init, generation, req),
            Ok(None) => return,
            Err(FrameError::Io(_)) => return,
            Err(e) => log(format_args!("ignoring a bad request: {e}")),
        }
    }
}

/// Execs belong to the connection that started them: nobody can read their output any more.
fn connection_closed(init: &Init, generation: u64) {
    {
        let mut conn = lock(&init.conn);
        if conn.as_ref().is_some_and(|c| c.generation == generation) {
            *conn = None;
        }
    }
    for (&(g, _), handle) in lock(&init.execs).iter() {
        if g == generation {
            handle.signal(libc::SIGKILL);
        }
    }
}

fn reply(init: &Init, generation: u64, id: u64, error: Option<String>) {
    init.send_on(generation, &Event::Reply { id, error });
}

fn handle(init: &Arc<Init>, generation: u64, req: Request) {
    let id = req.id;
    match req.op {
        Op::Hello { .. } => init.send_status(Some(id), Some(generation)),
        Op::Signal { signal } => {
            let result = match (Signal::try_from(signal), init.main_pid()) {
                (Err(_), _) => Err(format!("unknown signal {signal}")),
                (Ok(_), None) => Err("the main process is not running".to_string()),
                (Ok(sig), Some(pid)) => {
                    kill(Pid::from_raw(pid), sig).map_err(|e| format!("kill: {}", e.desc()))
                }
            };
            reply(init, generation, id, result.err());
        }
        Op::Exec(spec) => exec::start(init, generation, id, spec),
        Op::ExecInput { exec, data, eof } => {
            let result = match lock(&init.execs).get(&(generation, exec)) {
                Some(h) => h.input(data, eof),
                None => Err(format!("no exec {exec}")),
            };
            reply(init, generation, id, result.err());
        }
        Op::ExecResize { exec, rows, cols } => {
            let result = match lock(&init.execs).get(&(generation, exec)) {
                Some(h) => h.resize(rows, cols),
                None => Err(format!("no exec {exec}")),
            };
            reply(init, generation, id, result.err());
        }
        Op::ExecSignal { exec, signal } => {
            let result = match (
                Signal::try_from(signal),
                lock(&init.execs).get(&(generation, exec)),
            ) {
                (Err(_), _) => Err(format!("unknown signal {signal}")),
                (_, None) => Err(format!("no exec {exec}")),
                (Ok(_), Some(h)) => {
                    h.signal(signal);
                    Ok(())
                }
            };
            reply(init, generation, id, result.err());
        }
        Op::Shutdown => shutdown(init, generation, id),
        // Both read or wait on the outside world: off the reader thread, so a slow check
        // never holds up a signal or an exec.
        Op::Ps => answer_later(init, generation, move || Event::Processes {
            id,
            processes: crate::procs::list(),
        }),
        Op::Check(spec) => answer_later(init, generation, move || {
            let (passing, output) = crate::probe::run(&spec);
            Event::CheckResult {
                id,
                passing,
                output,
            }
        }),
    }
}

fn answer_later(init: &Arc<Init>, generation: u64, work: impl FnOnce() -> Event + Send + 'static) {
    let init = Arc::clone(init);
    let spawned = std::thread::Builder::new()
        .name("answer".into())
        .spawn(move || init.send_on(generation, &work()));
    if let Err(e) = spawned {
        log(format_args!("cannot start a worker thread: {e}"));
    }
}

/// Ends the machine: SIGTERM to everything, a short grace, SIGKILL, then exit (a sandbox:
/// PID 1 exiting ends the container) or power off (a VM, reached over a serial port).
fn shutdown(init: &Init, generation: u64, id: u64) {
    const GRACE: Duration = Duration::from_secs(1);
    if std::process::id() == 1 {
        // kill(-1) from a namespace's init reaches every other process in it. In a VM it
        // "reaches" the kernel's threads too, which never go: count only user processes there.
        let in_vm = init.spec.control.starts_with("vport:");
        let gone = || {
            if in_vm {
                crate::vm::user_processes_left() == 0
            } else {
                kill(Pid::from_raw(-1), None) == Err(Errno::ESRCH)
            }
        };
        for (sig, wait) in [(Signal::SIGTERM, GRACE), (Signal::SIGKILL, GRACE)] {
            let _ = kill(Pid::from_raw(-1), sig);
            let deadline = Instant::now() + wait;
            while !gone() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    } else if let Some(pid) = init.main_pid() {
        // Not PID 1 (a test run): kill(-1) would reach the whole host. Only what we started.
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    reply(init, generation, id, None);
    init.flush(generation, Duration::from_secs(1));
    if init.spec.control.starts_with("serial:") || init.spec.control.starts_with("vport:") {
        crate::vm::power_off();
    }
    std::process::exit(0);
}

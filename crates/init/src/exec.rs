//! Commands run beside the main process (`Op::Exec`), with pipes or a terminal.
//!
//! Each exec gets one I/O thread that polls its output and sends `ExecOutput` chunks, then
//! `ExecExit` once the process has exited and its output is drained, and, when it takes input,
//! one thread that writes stdin (a process that does not read must not block the connection).

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hangar_proto::{Event, ExecSpec, ExitStatus, Stream};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::spawn::{Prepared, SpawnFailure, Stdio};
use crate::{env, lock, users, Init};

/// One `ExecOutput` frame carries at most this much.
const CHUNK: usize = 64 * 1024;
/// How long output may keep flowing after the process exited (a background child can hold
/// the pipe open for ever; the exec is over when its process is).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

enum Input {
    Data(Vec<u8>),
    Eof,
}

/// What the control thread needs to reach a running exec.
pub struct Handle {
    pid: i32,
    stdin: Option<mpsc::Sender<Input>>,
    tty: Option<Arc<OwnedFd>>,
}

impl Handle {
    pub fn input(&self, data: Vec<u8>, eof: bool) -> Result<(), String> {
        let tx = self.stdin.as_ref().ok_or("this exec's stdin is not open")?;
        if !data.is_empty() {
            tx.send(Input::Data(data))
                .map_err(|_| "this exec's stdin is closed")?;
        }
        if eof {
            tx.send(Input::Eof)
                .map_err(|_| "this exec's stdin is closed")?;
        }
        Ok(())
    }

    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), String> {
        let tty = self.tty.as_ref().ok_or("this exec has no terminal")?;
        set_size(tty, rows, cols)
    }

    /// Signals the exec's process group (it leads its own session), so a shell's children
    /// get it too, as they would from a terminal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with plain integers.
        if unsafe { libc::kill(-self.pid, sig) } < 0 {
            // SAFETY: as above.
            unsafe { libc::kill(self.pid, sig) };
        }
    }
}

fn set_size(tty: &OwnedFd, rows: u16, cols: u16) -> Result<(), String> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which is valid for the call.
    if unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(format!("resize: {}", Errno::last().desc()));
    }
    Ok(())
}

/// A new pseudo-terminal: (master, slave). The kernel hands out the slave by ioctl, so no
/// path lookup or glibc helper (grantpt may need NSS) is involved.
fn open_pty(rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd), String> {
    let master = nix::fcntl::open(
        "/dev/ptmx",
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("opening /dev/ptmx: {}", e.desc()))?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int from the pointer, valid for the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(format!("unlocking the terminal: {}", Errno::last().desc()));
    }
    // SAFETY: TIOCGPTPEER takes open flags and returns a new descriptor or -1.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(format!("opening the terminal: {}", Errno::last().desc()));
    }
    // SAFETY: the ioctl returned a fresh descriptor that nothing else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    set_size(
        &master,
        if rows == 0 { 24 } else { rows },
        if cols == 0 { 80 } else { cols },
    )?;
    Ok((master, slave))
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {}", e.desc()))
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, String> {
    fd.try_clone().map_err(|e| format!("dup: {e}"))
}

/// Handles `Op::Exec`: replies once the process started (an exec that cannot start still
/// starts as far as the protocol goes: it ends at once with 126/127 and the reason, like a
/// shell), refuses only malformed requests.
pub fn start(init: &Arc<Init>, generation: u64, id: u64, spec: ExecSpec) {
    let refuse = |msg: String| {
        init.send_on(
            generation,
            &Event::Reply {
                id,
                error: Some(msg),
            },
        )
    };
    if spec.process.argv.is_empty() {
        return refuse("exec needs a command".into());
    }
    if lock(&init.execs).contains_key(&(generation, id)) {
        return refuse(format!("exec {id} is already running"));
    }
    let fail_fast = |failure: SpawnFailure| {
        init.send_on(generation, &Event::Reply { id, error: None });
        init.send_on(
            generation,
            &Event::ExecExit {
                exec: id,
                status: failure.status(),
            },
        );
    };
    let prepared = match prepare(init, &spec) {
        Ok(p) => p,
        Err(f) => return fail_fast(f),
    };
    let (prepared, io) = prepared;
    let (tx, rx) = mpsc::channel::<ExitStatus>();
    let pid = match init.children.spawn(
        prepared,
        Box::new(move |status| {
            let _ = tx.send(status);
        }),
    ) {
        Ok(pid) => pid,
        Err(f) => return fail_fast(f),
    };

    let stdin_tx = io.stdin.map(|(fd, tty)| {
        let (tx, rx) = mpsc::channel();
        let _ = std::thread::Builder::new()
            .name(format!("exec-{id}-in"))
            .spawn(move || write_stdin(fd, rx, tty));
        tx
    });
    if let (Some(tx), Some(bytes)) = (&stdin_tx, spec.stdin) {
        let _ = tx.send(Input::Data(bytes));
    }
    let keep_stdin = if spec.interactive {
        stdin_tx.clone()
    } else {
        if let Some(tx) = &stdin_tx {
            let _ = tx.send(Input::Eof);
        }
        None
    };
    lock(&init.execs).insert(
        (generation, id),
        Handle {
            pid,
            stdin: keep_stdin,
            tty: io.tty.clone(),
        },
    );
    init.send_on(generation, &Event::Reply { id, error: None });

    let io_init = Arc::clone(init);
    let outputs = io.outputs;
    let spawned = std::thread::Builder::new()
        .name(format!("exec-{id}"))
        .spawn(move || {
            let status = pump_output(&io_init, generation, id, outputs, rx);
            lock(&io_init.execs).remove(&(generation, id));
            io_init.send_on(generation, &Event::ExecExit { exec: id, status });
        });
    if spawned.is_err() {
        // Without its I/O thread nobody would report the exit: end it rather than leak it.
        if let Some(h) = lock(&init.execs).remove(&(generation, id)) {
            h.signal(libc::SIGKILL);
        }
    }
}

/// The parent's ends of an exec's stdio.
struct ParentIo {
    /// Where to write stdin, and whether it is a terminal.
    stdin: Option<(OwnedFd, bool)>,
    outputs: Vec<(OwnedFd, Stream)>,
    tty: Option<Arc<OwnedFd>>,
}

fn prepare(init: &Init, spec: &ExecSpec) -> Result<(Prepared, ParentIo), SpawnFailure> {
    let p = &spec.process;
    let main = &init.spec.process;
    let user_spec = if p.user.is_empty() {
        main.user.as_str()
    } else {
        p.user.as_str()
    };
    let user = users::resolve_in_root(user_spec).map_err(|e| SpawnFailure::new(126, e.0))?;
    let mut given = main.env.clone();
    given.extend(p.env.iter().cloned());
    let env = env::build_env(&given, &user.home, p.tty);
    let cwd = match (p.cwd.as_str(), main.cwd.as_str()) {
        ("", "") => "/",
        ("", main) => main,
        (own, _) => own,
    };
    let path = env::find_program(
        &p.argv[0],
        env::lookup_var(&env, "PATH").unwrap_or(""),
        Path::new(cwd),
    )
    .map_err(|e| SpawnFailure::new(e.code, e.message))?;
    let io_err = |e: String| SpawnFailure::new(126, e);
    let wants_stdin = spec.interactive || spec.stdin.is_some();

    let (stdio, io) = if p.tty {
        let (master, slave) = open_pty(spec.rows, spec.cols).map_err(io_err)?;
        let master = Arc::new(master);
        let reader = dup(&master).map_err(io_err)?;
        let stdin = if wants_stdin {
            Some((dup(&master).map_err(io_err)?, true))
        } else {
            None
        };
        let stdio = Stdio {
            stdin: Some(dup(&slave).map_err(io_err)?),
            stdout: Some(dup(&slave).map_err(io_err)?),
            stderr: Some(slave),
            controlling_tty: true,
        };
        (
            stdio,
            ParentIo {
                stdin,
                outputs: vec![(reader, Stream::Stdout)],
                tty: Some(master),
            },
        )
    } else {
        let (child_in, parent_in) = if wants_stdin {
            let (r, w) = pipe().map_err(io_err)?;
            (r, Some((w, false)))
        } else {
            let null = std::fs::File::open("/dev/null")
                .map_err(|e| io_err(format!("opening /dev/null: {e}")))?;
            (OwnedFd::from(null), None)
        };
        let (out_r, out_w) = pipe().map_err(io_err)?;
        let (err_r, err_w) = pipe().map_err(io_err)?;
        let stdio = Stdio {
            stdin: Some(child_in),
            stdout: Some(out_w),
            stderr: Some(err_w),
            controlling_tty: false,
        };
        (
            stdio,
            ParentIo {
                stdin: parent_in,
                outputs: vec![(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
                tty: None,
            },
        )
    };
    let prepared = Prepared::new(&path, &p.argv, &env, cwd, user, user_spec, stdio)?;
    Ok((prepared, io))
}

fn write_stdin(fd: OwnedFd, rx: mpsc::Receiver<Input>, tty: bool) {
    let mut file = std::fs::File::from(fd);
    while let Ok(input) = rx.recv() {
        let res = match input {
            Input::Data(bytes) => std::io::Write::write_all(&mut file, &bytes),
            // A terminal has no end of file of its own: ^D is what a user would type.
            Input::Eof if tty => {
                let _ = std::io::Write::write_all(&mut file, &[4]);
                return;
            }
            Input::Eof => return,
        };
        if res.is_err() {
            return; // the process closed its stdin
        }
    }
}

/// Sends the output until every stream ends (or the process has been gone a while), and
/// returns the process's status.
fn pump_output(
    init: &Init,
    generation: u64,
    id: u64,
    mut outputs: Vec<(OwnedFd, Stream)>,
    exited: mpsc::Receiver<ExitStatus>,
) -> ExitStatus {
    let mut buf = vec![0u8; CHUNK];
    let mut status: Option<ExitStatus> = None;
    let mut deadline: Option<Instant> = None;
    while !outputs.is_empty() {
        if status.is_none() {
            if let Ok(s) = exited.try_recv() {
                status = Some(s);
                deadline = Some(Instant::now() + DRAIN_AFTER_EXIT);
            }
        }
        // Until the exit is known, wake now and then to look for it; after, wait no longer
        // than the drain deadline.
        let timeout = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) => PollTimeout::try_from(left).unwrap_or(PollTimeout::ZERO),
                None => break,
            },
            None => PollTimeout::from(100u16),
        };
        let mut fds: Vec<PollFd> = outputs
            .iter()
            .map(|(fd, _)| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect();
        match poll(&mut fds, timeout) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let mut closed = Vec::new();
        for (i, ((fd, stream), ready)) in outputs.iter().zip(ready).enumerate() {
            if !ready {
                continue;
            }
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) => closed.push(i),
                Ok(n) => {
                    init.wait_for_room(generation);
                    init.send_on(
                        generation,
                        &Event::ExecOutput {
                            exec: id,
                            stream: *stream,
                            data: buf[..n].to_vec(),
                        },
                    );
                }
                Err(Errno::EINTR) | Err(Errno::EAGAIN) => {}
                // EIO: a terminal whose last slave descriptor closed.
                Err(_) => closed.push(i),
            }
        }
        for i in closed.into_iter().rev() {
            outputs.remove(i);
        }
    }
    match status {
        Some(s) => s,
        None => exited.recv().unwrap_or_else(|_| ExitStatus {
            error: Some("init lost track of the process".into()),
            exited_at_ms: crate::spawn::now_ms(),
            ..Default::default()
        }),
    }
}

//! The keeper: a small long-lived process per host that starts machines' processes on the
//! server's behalf, so that they are its descendants rather than the server's.
//!
//! Why: a detached container's init (or a daemonized VMM) outlives the `runc run` that
//! started it and is reparented to the nearest subreaper. If that is the server, a server that
//! crashes and restarts loses them to PID 1, and on hosts whose PID 1 never reaps (minimal
//! container images, some VM agents) every machine that ends afterwards stays a zombie. The
//! keeper is that subreaper instead: it survives server restarts, reaps whatever it adopted,
//! and leaves when it has no children and no server holds it.
//!
//! Protocol (one JSON line each way, over `state_dir/keeper.sock`):
//! - `{"op":"hold"}`: the connection stays open for the server's lifetime.
//! - `{"op":"spawn","argv":[...],"output":"/path"}`: the keeper starts `argv` with stdin from
//!   /dev/null and stdout and stderr appended to `output`, answers `{"pid":N}`, then
//!   `{"code":C}` or `{"signal":S}` when it ends (or `{"error":"..."}` if it could not start).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use serde::{Deserialize, Serialize};

const SOCKET: &str = "keeper.sock";
const LOCK: &str = "keeper.lock";
const LOG: &str = "keeper.log";
/// How long the keeper stays with nothing to keep, so a server that just started it can
/// connect, and a restarting server can come back.
const IDLE_EXIT: Duration = Duration::from_secs(3);

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Hold,
    Spawn { argv: Vec<String>, output: PathBuf },
}

#[derive(Serialize, Deserialize, Debug, Default)]
struct Answer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// What went wrong talking to, starting or being the keeper.
#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The keeper answered, but not with a running process (its own words).
    #[error("the keeper {0}")]
    Answer(String),
    #[error("no {0} command")]
    NoCommand(&'static str),
}

/// Tags an I/O error with what was being done.
fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> KeeperError {
    let context = context.into();
    move |source| KeeperError::Io { context, source }
}

fn nix_io(context: impl Into<String>) -> impl FnOnce(Errno) -> KeeperError {
    let wrap = io(context);
    move |e| wrap(std::io::Error::from(e))
}

// ---------------------------------------------------------------- the keeper process

#[derive(Default)]
struct Shared {
    holds: usize,
    /// Spawned processes whose requester waits for their end.
    waiting: HashMap<i32, mpsc::Sender<WaitStatus>>,
}

/// Runs the keeper for `dir` until it has nothing left to keep. Returns at once if another
/// keeper already serves `dir`.
pub fn run(dir: &Path) -> Result<(), KeeperError> {
    // Out of the server's session and process group: a terminal's Ctrl-C or a signal to the
    // server's group must not reach the keeper (or, through it, the machines).
    let _ = nix::unistd::setsid();
    nix::sys::prctl::set_child_subreaper(true).map_err(nix_io("prctl(PR_SET_CHILD_SUBREAPER)"))?;
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK))
        .map_err(io("opening the keeper lock"))?;
    let lock = match nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err(_) => return Ok(()), // another keeper serves this directory
    };
    let socket = dir.join(SOCKET);
    let _ = std::fs::remove_file(&socket);
    let listener =
        UnixListener::bind(&socket).map_err(io(format!("binding {}", socket.display())))?;
    let shared = Arc::new((Mutex::new(Shared::default()), Condvar::new()));

    {
        let shared = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || serve(conn, &shared));
            }
        });
    }

    reap_until_idle(&shared);
    let _ = std::fs::remove_file(&socket);
    drop(lock);
    Ok(())
}

/// Reaps every child, handing the statuses of spawned ones to their requesters, until there
/// are no children and no holds for [`IDLE_EXIT`].
fn reap_until_idle(shared: &(Mutex<Shared>, Condvar)) {
    let (state, wake) = shared;
    let mut idle_since: Option<Instant> = None;
    loop {
        match waitpid(None, None) {
            Ok(status) => {
                idle_since = None;
                if let Some(pid) = status.pid() {
                    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(tx) = s.waiting.remove(&pid.as_raw()) {
                        let _ = tx.send(status);
                    }
                }
            }
            Err(Errno::EINTR) => {}
            Err(_) => {
                // No children at all: wait for a spawn or a hold to change, or leave.
                let s = state.lock().unwrap_or_else(|p| p.into_inner());
                let busy = s.holds > 0 || !s.waiting.is_empty();
                if busy {
                    idle_since = None;
                } else if idle_since.get_or_insert_with(Instant::now).elapsed() >= IDLE_EXIT {
                    return;
                }
                let _ = wake.wait_timeout(s, Duration::from_millis(200));
            }
        }
    }
}

fn serve(conn: UnixStream, shared: &(Mutex<Shared>, Condvar)) {
    let (state, wake) = shared;
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut writer = conn;
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    match serde_json::from_str::<Request>(&line) {
        Ok(Request::Hold) => {
            state.lock().unwrap_or_else(|p| p.into_inner()).holds += 1;
            wake.notify_all();
            // Held until the server closes its end (or dies).
            let mut rest = String::new();
            while reader.read_line(&mut rest).unwrap_or(0) > 0 {
                rest.clear();
            }
            state.lock().unwrap_or_else(|p| p.into_inner()).holds -= 1;
            wake.notify_all();
        }
        Ok(Request::Spawn { argv, output }) => {
            let answer = |w: &mut UnixStream, a: Answer| {
                let mut text = serde_json::to_string(&a).unwrap_or_default();
                text.push('\n');
                let _ = w.write_all(text.as_bytes());
            };
            let (tx, rx) = mpsc::channel();
            // Spawned and registered under the lock, so the reaper cannot hand out the status
            // before there is someone to receive it.
            let pid = {
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                match spawn(&argv, &output) {
                    Ok(pid) => {
                        s.waiting.insert(pid, tx);
                        pid
                    }
                    Err(e) => {
                        drop(s);
                        answer(
                            &mut writer,
                            Answer {
                                error: Some(e.to_string()),
                                ..Default::default()
                            },
                        );
                        return;
                    }
                }
            };
            wake.notify_all();
            answer(
                &mut writer,
                Answer {
                    pid: Some(pid),
                    ..Default::default()
                },
            );
            let end = match rx.recv() {
                Ok(WaitStatus::Exited(_, code)) => Answer {
                    code: Some(code),
                    ..Default::default()
                },
                Ok(WaitStatus::Signaled(_, sig, _)) => Answer {
                    signal: Some(sig as i32),
                    ..Default::default()
                },
                _ => Answer {
                    error: Some("lost track of the process".into()),
                    ..Default::default()
                },
            };
            answer(&mut writer, end);
        }
        Err(e) => {
            let _ = writeln!(
                writer,
                "{{\"error\":\"bad request: {}\"}}",
                e.to_string().replace('"', "'")
            );
        }
    }
}

fn spawn(argv: &[String], output: &Path) -> Result<i32, KeeperError> {
    let (prog, args) = argv
        .split_first()
        .ok_or(KeeperError::NoCommand("process"))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(output)
        .map_err(io(format!("opening {}", output.display())))?;
    let err = out
        .try_clone()
        .map_err(io("duplicating the output descriptor"))?;
    let child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .current_dir("/")
        .spawn()
        .map_err(io(format!("cannot run {prog}")))?;
    // The reaper collects it; dropping the handle neither waits nor kills.
    Ok(child.id() as i32)
}

// ---------------------------------------------------------------- the server's side

/// The server's handle on the keeper: it holds the keeper while the server lives.
pub struct Keeper {
    socket: PathBuf,
    hold: Mutex<Option<UnixStream>>,
    command: Vec<OsString>,
    dir: PathBuf,
}

/// How a spawned process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Code(i32),
    Signal(i32),
}

impl Keeper {
    /// Connects to the keeper serving `dir`, starting one with `command` (argv; the keeper's
    /// directory is appended) if none runs.
    pub fn ensure(dir: &Path, command: Vec<OsString>) -> Result<Keeper, KeeperError> {
        let keeper = Keeper {
            socket: dir.join(SOCKET),
            hold: Mutex::new(None),
            command,
            dir: dir.to_path_buf(),
        };
        keeper.hold()?;
        Ok(keeper)
    }

    /// Makes sure a keeper runs and is held; starts one when needed.
    fn hold(&self) -> Result<(), KeeperError> {
        let mut hold = self.hold.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(conn) = hold.as_ref() {
            // Still alive? A peek that returns 0 bytes means the keeper went away.
            let mut buf = [0u8; 1];
            conn.set_nonblocking(true).ok();
            let gone = matches!(
                nix::sys::socket::recv(
                    std::os::fd::AsRawFd::as_raw_fd(conn),
                    &mut buf,
                    nix::sys::socket::MsgFlags::MSG_PEEK
                ),
                Ok(0)
            );
            conn.set_nonblocking(false).ok();
            if !gone {
                return Ok(());
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut started = false;
        let conn = loop {
            match UnixStream::connect(&self.socket) {
                Ok(mut c) => {
                    if c.write_all(b"{\"op\":\"hold\"}\n").is_ok() {
                        break c;
                    }
                }
                Err(_) if !started => {
                    self.start()?;
                    started = true;
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(io(format!(
                        "the keeper did not open {} (see {})",
                        self.socket.display(),
                        self.dir.join(LOG).display()
                    ))(e))
                }
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        *hold = Some(conn);
        Ok(())
    }

    fn start(&self) -> Result<(), KeeperError> {
        let (prog, args) = self
            .command
            .split_first()
            .ok_or(KeeperError::NoCommand("keeper"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(LOG))
            .map_err(io(format!("opening {}", self.dir.join(LOG).display())))?;
        let log2 = log
            .try_clone()
            .map_err(io("duplicating the log descriptor"))?;
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .current_dir("/");
        // SAFETY: setsid is async-signal-safe and touches nothing but the new child.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        cmd.spawn().map_err(io(format!(
            "cannot start the keeper ({})",
            prog.to_string_lossy()
        )))?;
        Ok(())
    }

    /// Starts `argv` through the keeper. Returns its pid once running and a blocking wait
    /// for its end; run both on a blocking thread.
    pub fn spawn(
        &self,
        argv: &[String],
        output: &Path,
    ) -> Result<(i32, impl FnOnce() -> Result<Ended, KeeperError>), KeeperError> {
        self.hold()?;
        let conn = UnixStream::connect(&self.socket).map_err(io("connecting to the keeper"))?;
        let mut request = serde_json::to_string(&Request::Spawn {
            argv: argv.to_vec(),
            output: output.to_path_buf(),
        })
        .map_err(|e| io("encoding the request")(e.into()))?;
        request.push('\n');
        (&conn)
            .write_all(request.as_bytes())
            .map_err(io("asking the keeper"))?;
        let mut reader = BufReader::new(conn);
        let first = read_answer(&mut reader)?;
        let pid = first.pid.ok_or_else(|| {
            KeeperError::Answer(
                first
                    .error
                    .map(|e| format!("could not start it: {e}"))
                    .unwrap_or_else(|| "did not start it".into()),
            )
        })?;
        Ok((pid, move || {
            let end = read_answer(&mut reader)?;
            match (end.code, end.signal) {
                (Some(c), _) => Ok(Ended::Code(c)),
                (None, Some(s)) => Ok(Ended::Signal(s)),
                _ => Err(KeeperError::Answer(
                    end.error.unwrap_or_else(|| "lost the process".into()),
                )),
            }
        }))
    }
}

fn read_answer(reader: &mut BufReader<UnixStream>) -> Result<Answer, KeeperError> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Err(KeeperError::Answer("went away".into())),
        Ok(_) => serde_json::from_str(&line)
            .map_err(|e| KeeperError::Answer(format!("answered unreadably: {e}"))),
        Err(e) => Err(io("reading from the keeper")(e)),
    }
}

//! The host side of init's control channel.
//!
//! A [`Guest`] owns one connection. A reader task decodes events and routes each to whoever
//! waits on its request id (replies, exec output), keeping the main process's last reported
//! state in a watch channel; a writer task sends whole frames, so a caller that gives up
//! half-way (a dropped future) never leaves half a frame on the wire. Every request registers
//! a stream of the events carrying its id, which is all an interactive exec (stdin, resize and
//! output as streams) will need later.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hangar_proto::{
    CheckSpec, Decoder, Event, ExecSpec, ExitStatus, MainProcess, Op, ProcessInfo, Request, Stream,
    PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tracing::{debug, warn};

/// How long init may take to answer a request that needs no work (hello, signal, shutdown).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Exec output kept per stream; the rest is dropped (and logged) so a runaway command cannot
/// exhaust the host's memory.
pub const MAX_EXEC_OUTPUT: usize = 16 << 20;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuestError {
    /// The connection closed (the machine ended, or init went away).
    #[error("lost contact with hangar-init")]
    Lost,
    /// Init sent something this host does not understand.
    #[error("control protocol error: {0}")]
    Protocol(String),
    /// Init refused the request; the message says why.
    #[error("{0}")]
    Refused(String),
    #[error("timed out waiting for hangar-init")]
    Timeout,
}

/// What an exec produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Clone, Debug)]
struct State {
    main: MainProcess,
    lost: bool,
}

#[derive(Default)]
struct Waiters {
    by_id: HashMap<u64, mpsc::UnboundedSender<Event>>,
    /// Set once the connection is gone: no new waiter may register (it would wait for ever).
    closed: bool,
}

struct Shared {
    state: watch::Sender<State>,
    waiters: Mutex<Waiters>,
}

impl Shared {
    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        // Every critical section is a map operation; a panic elsewhere cannot leave it torn.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn route(&self, id: u64, event: Event) {
        if let Some(tx) = self.waiters().by_id.get(&id) {
            let _ = tx.send(event);
        }
    }

    fn dispatch(&self, event: Event) {
        match event {
            Event::Status { id, ref main, .. } => {
                let main = main.clone();
                self.state.send_modify(|s| s.main = main);
                if let Some(id) = id {
                    self.route(id, event);
                }
            }
            Event::Reply { id, .. } => self.route(id, event),
            Event::ExecOutput { exec, .. } | Event::ExecExit { exec, .. } => {
                self.route(exec, event)
            }
            Event::Processes { id, .. } | Event::CheckResult { id, .. } => self.route(id, event),
        }
    }

    fn close(&self) {
        let mut w = self.waiters();
        w.closed = true;
        // Dropping the senders wakes every waiter with `None`: the connection is lost.
        w.by_id.clear();
        drop(w);
        self.state.send_modify(|s| s.lost = true);
    }
}

struct Inner {
    shared: Arc<Shared>,
    frames: mpsc::UnboundedSender<Vec<u8>>,
    next_id: AtomicU64,
    init_version: String,
    reader: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The writer task ends on its own when `frames` drops, closing our half; the reader
        // would otherwise wait on the socket for ever.
        self.reader.abort();
    }
}

/// The host side of one control connection to a machine's init. Cheap to clone; the
/// connection closes when the last clone drops.
#[derive(Clone)]
pub struct Guest {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest")
            .field("main", &self.main())
            .field("init_version", &self.inner.init_version)
            .finish()
    }
}

/// A registered request: the events carrying its id. Deregisters on drop, so an abandoned
/// request leaves nothing behind.
struct Pending {
    shared: Arc<Shared>,
    id: u64,
    events: mpsc::UnboundedReceiver<Event>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.shared.waiters().by_id.remove(&self.id);
    }
}

async fn read_loop<R: AsyncRead + Unpin>(mut reader: R, shared: Arc<Shared>) {
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    'conn: loop {
        loop {
            match decoder.decode::<Event>() {
                Ok(Some(event)) => shared.dispatch(event),
                Ok(None) => break,
                Err(e) => warn!(error = %e, "ignoring a bad frame from hangar-init"),
            }
        }
        match reader.read(&mut buf).await {
            Ok(0) => break 'conn,
            Ok(n) => decoder.push(&buf[..n]),
            Err(e) => {
                debug!(error = %e, "control connection read failed");
                break 'conn;
            }
        }
    }
    shared.close();
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    while let Some(frame) = frames.recv().await {
        if let Err(e) = writer.write_all(&frame).await {
            debug!(error = %e, "control connection write failed");
            return;
        }
    }
    let _ = writer.shutdown().await;
}

impl Guest {
    /// Speaks to init over `stream`: sends `Hello` and waits for the main process's state.
    pub async fn connect<S>(stream: S) -> Result<Guest, GuestError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (reader, writer) = tokio::io::split(stream);
        let (state, _) = watch::channel(State {
            main: MainProcess::Starting,
            lost: false,
        });
        let shared = Arc::new(Shared {
            state,
            waiters: Mutex::new(Waiters::default()),
        });
        let (frames, frames_rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(reader, Arc::clone(&shared))).abort_handle();
        tokio::spawn(write_loop(writer, frames_rx));
        let mut inner = Inner {
            shared,
            frames,
            next_id: AtomicU64::new(1),
            init_version: String::new(),
            reader,
        };

        let hello = Guest::register(
            &inner,
            Op::Hello {
                version: PROTOCOL_VERSION,
            },
        )?;
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, Guest::answer(hello))
            .await
            .map_err(|_| GuestError::Timeout)??;
        match answer {
            Event::Status { init_version, .. } => inner.init_version = init_version,
            other => {
                return Err(GuestError::Protocol(format!(
                    "expected a status in answer to hello, got {other:?}"
                )))
            }
        }
        Ok(Guest {
            inner: Arc::new(inner),
        })
    }

    /// Registers a request and sends it.
    fn register(inner: &Inner, op: Op) -> Result<Pending, GuestError> {
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, events) = mpsc::unbounded_channel();
        {
            let mut w = inner.shared.waiters();
            if w.closed {
                return Err(GuestError::Lost);
            }
            w.by_id.insert(id, tx);
        }
        let pending = Pending {
            shared: Arc::clone(&inner.shared),
            id,
            events,
        };
        inner
            .frames
            .send(hangar_proto::encode(&Request { id, op }))
            .map_err(|_| GuestError::Lost)?;
        Ok(pending)
    }

    /// The first event for a request: its reply (or, for hello, the status).
    async fn answer(mut pending: Pending) -> Result<Event, GuestError> {
        match pending.events.recv().await {
            Some(Event::Reply { error: Some(e), .. }) => Err(GuestError::Refused(e)),
            Some(event) => Ok(event),
            None => Err(GuestError::Lost),
        }
    }

    async fn call(&self, op: Op) -> Result<(), GuestError> {
        let pending = Guest::register(&self.inner, op)?;
        tokio::time::timeout(ANSWER_TIMEOUT, Guest::answer(pending))
            .await
            .map_err(|_| GuestError::Timeout)?
            .map(drop)
    }

    /// The version init reported.
    pub fn init_version(&self) -> &str {
        &self.inner.init_version
    }

    /// The main process's state as init last reported it.
    pub fn main(&self) -> MainProcess {
        self.inner.shared.state.borrow().main.clone()
    }

    /// Waits until init is past preparing the machine: the main process runs, or it exited
    /// (or could not be started at all).
    pub async fn running(&self) -> Result<MainProcess, GuestError> {
        let mut rx = self.inner.shared.state.subscribe();
        let state = rx
            .wait_for(|s| s.lost || !matches!(s.main, MainProcess::Starting))
            .await
            .map_err(|_| GuestError::Lost)?
            .clone();
        match state.main {
            MainProcess::Starting => Err(GuestError::Lost),
            main => Ok(main),
        }
    }

    /// Waits for the main process to exit. An exit init reported before the connection
    /// closed is returned even after the close.
    pub async fn exited(&self) -> Result<ExitStatus, GuestError> {
        let mut rx = self.inner.shared.state.subscribe();
        let state = rx
            .wait_for(|s| s.lost || matches!(s.main, MainProcess::Exited(_)))
            .await
            .map_err(|_| GuestError::Lost)?
            .clone();
        match state.main {
            MainProcess::Exited(status) => Ok(status),
            _ => Err(GuestError::Lost),
        }
    }

    /// Sends a signal to the main process.
    pub async fn signal(&self, signal: i32) -> Result<(), GuestError> {
        self.call(Op::Signal { signal }).await
    }

    /// Runs a command in the machine and collects its output. When `timeout` passes first,
    /// the command is killed and the result is [`GuestError::Timeout`]. A command that cannot
    /// start (not found, bad user) is not an error: it exits 127 or 126 with
    /// [`ExitStatus::error`] saying why.
    pub async fn exec(&self, spec: ExecSpec, timeout: Duration) -> Result<ExecOutput, GuestError> {
        let mut pending = Guest::register(&self.inner, Op::Exec(spec))?;
        let id = pending.id;
        match tokio::time::timeout(timeout, collect(&mut pending)).await {
            Ok(result) => result,
            Err(_) => {
                // Fire and forget: the answer does not matter, and init kills whatever is left
                // of an exec when its connection closes anyway.
                let _ = Guest::register(
                    &self.inner,
                    Op::ExecSignal {
                        exec: id,
                        signal: libc::SIGKILL,
                    },
                );
                Err(GuestError::Timeout)
            }
        }
    }

    /// Starts an interactive exec (a shell, `exec -t`): stdin, resizes and signals go in as
    /// they come, output comes out as it is produced. Returns once the command has started.
    pub async fn session(&self, spec: ExecSpec) -> Result<ExecSession, GuestError> {
        let mut pending = Guest::register(&self.inner, Op::Exec(spec))?;
        match tokio::time::timeout(ANSWER_TIMEOUT, pending.events.recv()).await {
            Err(_) => return Err(GuestError::Timeout),
            Ok(None) => return Err(GuestError::Lost),
            Ok(Some(Event::Reply { error: Some(e), .. })) => return Err(GuestError::Refused(e)),
            Ok(Some(_)) => {}
        }
        Ok(ExecSession {
            guest: self.clone(),
            pending,
        })
    }

    /// The machine's processes, as init sees them.
    pub async fn ps(&self) -> Result<Vec<ProcessInfo>, GuestError> {
        let pending = Guest::register(&self.inner, Op::Ps)?;
        match tokio::time::timeout(ANSWER_TIMEOUT, Guest::answer(pending))
            .await
            .map_err(|_| GuestError::Timeout)??
        {
            Event::Processes { processes, .. } => Ok(processes),
            other => Err(GuestError::Protocol(format!(
                "expected a process list, got {other:?}"
            ))),
        }
    }

    /// Runs a health check from inside the machine: `(passing, output)`.
    pub async fn check(&self, spec: CheckSpec) -> Result<(bool, String), GuestError> {
        // Init enforces the check's own timeout; this one only guards against a lost answer.
        let limit = Duration::from_millis(spec.timeout_ms) + ANSWER_TIMEOUT;
        let pending = Guest::register(&self.inner, Op::Check(spec))?;
        match tokio::time::timeout(limit, Guest::answer(pending))
            .await
            .map_err(|_| GuestError::Timeout)??
        {
            Event::CheckResult {
                passing, output, ..
            } => Ok((passing, output)),
            other => Err(GuestError::Protocol(format!(
                "expected a check result, got {other:?}"
            ))),
        }
    }

    /// Asks init to end the machine (kill everything and exit, or power off). Init going away
    /// before it answers counts as done.
    pub async fn shutdown(&self) -> Result<(), GuestError> {
        match self.call(Op::Shutdown).await {
            Ok(()) | Err(GuestError::Lost) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

async fn collect(pending: &mut Pending) -> Result<ExecOutput, GuestError> {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut truncated = false;
    loop {
        match pending.events.recv().await {
            None => return Err(GuestError::Lost),
            Some(Event::Reply { error: Some(e), .. }) => return Err(GuestError::Refused(e)),
            Some(Event::Reply { error: None, .. }) => {}
            Some(Event::ExecOutput { stream, data, .. }) => {
                let buf = if stream == Stream::Stdout {
                    &mut stdout
                } else {
                    &mut stderr
                };
                let room = MAX_EXEC_OUTPUT.saturating_sub(buf.len());
                if data.len() > room && !truncated {
                    truncated = true;
                    warn!(
                        limit = MAX_EXEC_OUTPUT,
                        "exec output over the limit; dropping the rest"
                    );
                }
                buf.extend_from_slice(&data[..data.len().min(room)]);
            }
            Some(Event::ExecExit { status, .. }) => {
                return Ok(ExecOutput {
                    status,
                    stdout,
                    stderr,
                })
            }
            Some(other) => {
                return Err(GuestError::Protocol(format!(
                    "unexpected event for an exec: {other:?}"
                )))
            }
        }
    }
}

/// What an interactive exec produces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    Output { stream: Stream, data: Vec<u8> },
    Exit(ExitStatus),
}

/// A running interactive exec. Dropping it leaves the command to init, which kills what is
/// left of an exec when its connection closes.
pub struct ExecSession {
    guest: Guest,
    pending: Pending,
}

impl ExecSession {
    /// Fire and forget: init's reply to each of these carries nothing the session needs.
    fn send(&self, op: Op) -> Result<(), GuestError> {
        Guest::register(&self.guest.inner, op).map(drop)
    }

    pub fn input(&self, data: Vec<u8>, eof: bool) -> Result<(), GuestError> {
        self.send(Op::ExecInput {
            exec: self.pending.id,
            data,
            eof,
        })
    }

    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), GuestError> {
        self.send(Op::ExecResize {
            exec: self.pending.id,
            rows,
            cols,
        })
    }

    pub fn signal(&self, signal: i32) -> Result<(), GuestError> {
        self.send(Op::ExecSignal {
            exec: self.pending.id,
            signal,
        })
    }

    /// The next output or the exit; `None` once the exit was delivered or the connection is
    /// gone.
    pub async fn next(&mut self) -> Option<SessionEvent> {
        loop {
            match self.pending.events.recv().await? {
                Event::ExecOutput { stream, data, .. } => {
                    return Some(SessionEvent::Output { stream, data })
                }
                Event::ExecExit { status, .. } => return Some(SessionEvent::Exit(status)),
                _ => continue,
            }
        }
    }
}

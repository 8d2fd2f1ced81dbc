//! A [`Runtime`] without processes, for unit-testing the agent's lifecycle logic (crash
//! recovery above all) without root, runc or QEMU. Its guests speak the real control
//! protocol over an in-memory pipe to a small stand-in for `hangar-init`, so the agent's
//! side of every exchange is the real one.
//!
//! Only logic tests use it; everything that says machines work runs the real runtimes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use hangar_proto::{Decoder, Event, ExitStatus, MainProcess, Op, Request};
use hangar_runtime::{BootSpec, Guest, NetAttachKind, Remains, Runtime, RuntimeError, RuntimeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

/// What the fake runtime was asked to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Boot(String),
    Attach(String),
    Teardown(String),
    Suspend(String),
    Resume(String),
}

#[derive(Default)]
struct State {
    /// Machines with a main process running, and how to reach their stand-in init.
    running: HashMap<String, Option<mpsc::UnboundedSender<ExitStatus>>>,
    /// Machines with anything on the "host" (running, frozen, or left over).
    present: HashSet<String>,
    suspended: HashSet<String>,
    calls: Vec<Call>,
    fail_boots: bool,
}

#[derive(Default)]
pub struct FakeRuntime {
    state: Mutex<State>,
}

impl FakeRuntime {
    pub fn new() -> Arc<FakeRuntime> {
        Arc::new(FakeRuntime::default())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// As if an earlier server had booted `machine_id` and it kept running.
    pub fn left_running(&self, machine_id: &str) {
        let mut s = self.state();
        s.running.insert(machine_id.to_string(), None);
        s.present.insert(machine_id.to_string());
    }

    /// Makes every later boot fail.
    pub fn fail_boots(&self, fail: bool) {
        self.state().fail_boots = fail;
    }

    /// Ends the main process of a running machine with exit code `code`.
    pub fn exit(&self, machine_id: &str, code: i32) {
        let tx = self.state().running.get(machine_id).cloned().flatten();
        if let Some(tx) = tx {
            let _ = tx.send(ExitStatus {
                code: Some(code),
                signal: None,
                error: None,
                exited_at_ms: 1,
            });
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    pub fn is_running(&self, machine_id: &str) -> bool {
        self.state().running.contains_key(machine_id)
    }

    /// Whether anything of the machine is left on the "host".
    pub fn has(&self, machine_id: &str) -> bool {
        self.state().present.contains(machine_id)
    }

    fn record(&self, call: Call) {
        self.state().calls.push(call);
    }

    /// A guest connected to a stand-in init whose main process runs until signalled.
    async fn guest(&self, machine_id: &str) -> Result<Guest, RuntimeError> {
        let (host, init) = tokio::io::duplex(64 * 1024);
        let (exits, exits_rx) = mpsc::unbounded_channel();
        self.state()
            .running
            .insert(machine_id.to_string(), Some(exits));
        tokio::spawn(stand_in_init(init, exits_rx));
        Ok(Guest::connect(host).await?)
    }
}

/// Answers the host as `hangar-init` would for a main process that runs until a signal (or
/// [`FakeRuntime::exit`]) ends it.
async fn stand_in_init(mut conn: DuplexStream, mut exits: mpsc::UnboundedReceiver<ExitStatus>) {
    let running = MainProcess::Running {
        pid: 100,
        started_at_ms: 1,
    };
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mut out: Vec<Event> = Vec::new();
        let mut ended: Option<ExitStatus> = None;
        while let Ok(Some(req)) = decoder.decode::<Request>() {
            match req.op {
                Op::Hello { .. } => out.push(Event::Status {
                    id: Some(req.id),
                    main: running.clone(),
                    init_version: "fake".into(),
                }),
                Op::Signal { signal } => {
                    out.push(Event::Reply {
                        id: req.id,
                        error: None,
                    });
                    ended = Some(ExitStatus {
                        code: None,
                        signal: Some(signal),
                        error: None,
                        exited_at_ms: 1,
                    });
                }
                Op::Shutdown => {
                    out.push(Event::Reply {
                        id: req.id,
                        error: None,
                    });
                    ended = Some(ExitStatus {
                        code: Some(0),
                        ..Default::default()
                    });
                }
                _ => out.push(Event::Reply {
                    id: req.id,
                    error: Some("the fake runtime's init does not do this".into()),
                }),
            }
        }
        for event in &out {
            if conn.write_all(&hangar_proto::encode(event)).await.is_err() {
                return;
            }
        }
        if let Some(status) = ended {
            let _ = conn
                .write_all(&hangar_proto::encode(&Event::Status {
                    id: None,
                    main: MainProcess::Exited(status),
                    init_version: "fake".into(),
                }))
                .await;
            return;
        }
        tokio::select! {
            n = conn.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => decoder.push(&buf[..n]),
            },
            Some(status) = exits.recv() => {
                let _ = conn
                    .write_all(&hangar_proto::encode(&Event::Status {
                        id: None,
                        main: MainProcess::Exited(status),
                        init_version: "fake".into(),
                    }))
                    .await;
                return;
            }
        }
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Sandbox
    }

    fn net_attach(&self) -> NetAttachKind {
        NetAttachKind::Netns
    }

    fn has(&self, machine_id: &str) -> bool {
        FakeRuntime::has(self, machine_id)
    }

    async fn boot(&self, spec: &BootSpec) -> Result<Guest, RuntimeError> {
        self.record(Call::Boot(spec.machine_id.clone()));
        if self.state().fail_boots {
            return Err(RuntimeError::Unavailable(
                "the fake runtime was told to fail".into(),
            ));
        }
        self.state().present.insert(spec.machine_id.clone());
        self.guest(&spec.machine_id).await
    }

    async fn attach(&self, machine_id: &str) -> Result<Option<Guest>, RuntimeError> {
        self.record(Call::Attach(machine_id.to_string()));
        if !self.state().running.contains_key(machine_id) {
            return Ok(None);
        }
        self.guest(machine_id).await.map(Some)
    }

    async fn teardown(&self, machine_id: &str) -> Result<Remains, RuntimeError> {
        self.record(Call::Teardown(machine_id.to_string()));
        let mut s = self.state();
        s.running.remove(machine_id);
        s.present.remove(machine_id);
        s.suspended.remove(machine_id);
        Ok(Remains::default())
    }

    async fn list(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(self.state().present.iter().cloned().collect())
    }

    async fn suspend(&self, machine_id: &str) -> Result<(), RuntimeError> {
        self.record(Call::Suspend(machine_id.to_string()));
        let mut s = self.state();
        s.running.remove(machine_id);
        s.suspended.insert(machine_id.to_string());
        Ok(())
    }

    async fn resume(&self, machine_id: &str) -> Result<Guest, RuntimeError> {
        self.record(Call::Resume(machine_id.to_string()));
        if !self.state().suspended.remove(machine_id) {
            return Err(RuntimeError::NotRunning(machine_id.to_string()));
        }
        self.guest(machine_id).await
    }
}

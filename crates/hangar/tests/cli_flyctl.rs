//! The `hangar` CLI as flyctl users drive it: every machine verb, `--json`, update's diff and
//! confirmation, secrets, logs, contexts, and real terminals (console, `run --shell`) driven
//! through a pseudo-terminal.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{World, APP};
use serde_json::Value;

fn cmd(w: &World, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hangar"));
    c.args(args)
        .env("HANGAR_API_URL", w.server.url())
        .env("HANGAR_API_TOKEN", w.server.token())
        .env("HANGAR_CONFIG", "/nonexistent/hangar-config.toml")
        .env_remove("HANGAR_APP")
        .env("NO_COLOR", "1");
    c
}

fn hangar(w: &World, args: &[&str]) -> Output {
    cmd(w, args).output().expect("hangar runs")
}

fn ok(w: &World, args: &[&str]) -> String {
    let out = hangar(w, args);
    assert!(
        out.status.success(),
        "hangar {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(w: &World, args: &[&str]) -> Value {
    // Before the subcommand: after a `--`, it would be part of the machine's command.
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ok(w, &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("hangar {args:?} --json: {e}: {out}"))
}

/// Fails with one line on stderr, no stack trace; returns it.
fn fails(w: &World, args: &[&str]) -> String {
    let out = hangar(w, args);
    assert!(!out.status.success(), "hangar {args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    err
}

#[test]
fn machine_verbs_with_flyctls_flags() {
    let w = World::new();
    let m = json(
        &w,
        &[
            "machine",
            "run",
            &w.image,
            "-a",
            APP,
            "--name",
            "web",
            "-e",
            "COLOR=blue",
            "-p",
            "80:8080/tcp:http",
            "--vm-size",
            "shared-cpu-2x",
            "--vm-memory",
            "1gb",
            "--metadata",
            "team=core",
            "--file-literal",
            "/etc/motd=hello",
            "--restart",
            "always",
            "--autostop",
            "suspend",
            "--",
            "sh",
            "-c",
            "sleep 1000",
        ],
    );
    let id = m["id"].as_str().unwrap().to_string();
    assert_eq!(m["state"], "started");
    assert_eq!(m["config"]["guest"]["cpus"], 2);
    assert_eq!(m["config"]["guest"]["memory_mb"], 1024);
    assert_eq!(m["config"]["services"][0]["internal_port"], 8080);
    assert_eq!(m["config"]["services"][0]["autostop"], "suspend");
    assert_eq!(m["config"]["metadata"]["team"], "core");
    assert_eq!(w.sh(&id, "cat /etc/motd"), "hello");

    let list = json(&w, &["m", "ls", "-a", APP]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let table = ok(&w, &["m", "ls", "-a", APP]);
    assert!(
        table.starts_with("ID") && table.contains("shared-cpu-2x:1024MB"),
        "{table}"
    );
    assert!(table.contains("s ago"), "relative times: {table}");
    let status = ok(&w, &["m", "status", &id, "-a", APP, "-d"]);
    assert!(
        status.contains("Event Logs") && status.contains("\"image\""),
        "{status}"
    );

    let out = hangar(
        &w,
        &[
            "m",
            "exec",
            &id,
            "-a",
            APP,
            "--",
            "sh",
            "-c",
            "echo $COLOR; exit 4",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "blue\n");
    assert_eq!(out.status.code(), Some(4));

    ok(&w, &["m", "cordon", &id, "-a", APP]);
    assert_eq!(json(&w, &["m", "status", &id, "-a", APP])["cordoned"], true);
    ok(&w, &["m", "uncordon", &id, "-a", APP]);
    assert!(fails(&w, &["m", "leases", "view", &id, "-a", APP]).contains("lease"));

    ok(&w, &["m", "restart", &id, "-a", APP, "--signal", "SIGTERM"]);
    assert_eq!(w.exits(&id).len(), 1);
    ok(&w, &["m", "suspend", &id, "-a", APP]);
    assert_eq!(w.machine(&id)["state"], "suspended");
    ok(&w, &["m", "start", &id, "-a", APP]);
    let waited = json(&w, &["m", "wait", &id, "-a", APP, "--state", "started"]);
    assert_eq!(waited["state"], "started");
    ok(&w, &["m", "kill", &id, "-a", APP]);
    // SIGKILL ends the process; restart policy "always" brings it back.
    w.wait_until(&id, "the kill's exit", |_| w.exits(&id).len() == 2);

    let copy = json(&w, &["m", "clone", &id, "-a", APP, "--name", "web-copy"]);
    assert_eq!(copy["config"]["env"]["COLOR"], "blue");
    let created = json(
        &w,
        &["m", "create", &w.image, "-a", APP, "--", "sleep", "100"],
    );
    assert_eq!(created["state"], "created");
    ok(&w, &["m", "stop", &id, "-a", APP, "--timeout", "2"]);
    w.server.wait_state(APP, &id, "stopped");
    ok(&w, &["m", "destroy", &id, "-a", APP, "--force"]);
    w.assert_no_leftovers(&id);

    // Bad input: one line, non-zero, nothing created.
    let before = json(&w, &["m", "ls", "-a", APP]).as_array().unwrap().len();
    assert!(fails(&w, &["m", "run", &w.image, "-a", APP, "-p", "eighty"]).contains("--port"));
    assert!(fails(
        &w,
        &["m", "run", &w.image, "-a", APP, "--vm-memory", "lots"]
    )
    .contains("--vm-memory"));
    assert!(fails(&w, &["m", "run", &w.image, "-a", APP, "--vm-cpus", "3"]).contains("size"));
    assert!(fails(&w, &["m", "run", &w.image, "-a", "ghost"]).contains("ghost"));
    assert!(fails(&w, &["m", "run", "--frobnicate", &w.image, "-a", APP]).contains("frobnicate"));
    assert_eq!(
        json(&w, &["m", "ls", "-a", APP]).as_array().unwrap().len(),
        before
    );
}

#[test]
fn update_shows_the_diff_and_asks_first() {
    let w = World::new();
    let id = w.run("sleep 1000", serde_json::json!({ "env": { "LEVEL": "1" } }));
    let v1 = w.machine(&id)["instance_id"].clone();

    let answer = |reply: &str| {
        let mut child = cmd(&w, &["m", "update", &id, "-a", APP, "-e", "LEVEL=2"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(reply.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let declined = answer("n\n");
    let shown = String::from_utf8_lossy(&declined.stdout);
    let changed = |sign: char, value: &str| {
        shown
            .lines()
            .any(|l| l.starts_with(sign) && l.contains(&format!("\"LEVEL\": \"{value}\"")))
    };
    assert!(changed('-', "1") && changed('+', "2"), "{shown}");
    assert!(shown.contains("Apply changes?"), "{shown}");
    assert!(!declined.status.success());
    assert_eq!(w.machine(&id)["instance_id"], v1, "declined: unchanged");

    let accepted = answer("y\n");
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    assert_ne!(w.machine(&id)["instance_id"], v1);
    assert_eq!(w.sh(&id, "echo $LEVEL"), "2\n");

    // -y applies without asking (stdin closed).
    let out = cmd(&w, &["m", "update", &id, "-a", APP, "-e", "LEVEL=3", "-y"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(w.sh(&id, "echo $LEVEL"), "3\n");
    assert!(ok(&w, &["m", "update", &id, "-a", APP, "-y"]).contains("No changes"));
}

#[test]
fn secrets_logs_status_and_contexts() {
    let w = World::new();
    ok(
        &w,
        &["secrets", "set", "TOKEN=abc123", "OTHER=x", "-a", APP],
    );
    let list = json(&w, &["secrets", "list", "-a", APP]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["OTHER", "TOKEN"]);
    assert!(!ok(&w, &["secrets", "list", "-a", APP]).contains("abc123"));
    ok(&w, &["secrets", "unset", "OTHER", "-a", APP]);
    assert_eq!(
        json(&w, &["secrets", "list", "-a", APP])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(fails(&w, &["secrets", "set", "NOVALUE", "-a", APP]).contains("NAME=VALUE"));

    let id = w.run(
        "echo first-line $TOKEN; sleep 3; echo later-line; sleep 1000",
        serde_json::json!({}),
    );
    w.wait_until(&id, "the first line", |_| {
        ok(&w, &["logs", "-a", APP]).contains("first-line abc123")
    });
    let logs = json(&w, &["logs", "-a", APP, "-i", &id]);
    assert_eq!(logs[0]["instance"], serde_json::json!(id));

    // --follow sees a line printed after it started.
    let mut follow = cmd(&w, &["logs", "-a", APP, "--follow", "-n", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = read_until(
        follow.stdout.take().unwrap(),
        "later-line",
        Duration::from_secs(30),
    );
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(seen.contains("later-line"), "{seen}");
    assert!(
        !seen.contains("first-line"),
        "-n 0 starts at the end: {seen}"
    );

    let status = ok(&w, &["status", "-a", APP]);
    assert!(
        status.contains(&id) && status.contains("Machines = 1"),
        "{status}"
    );

    // Contexts: a config file with named API endpoints.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let ctx = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hangar"));
        c.args(args)
            .env("HANGAR_CONFIG", &config)
            .env_remove("HANGAR_API_URL")
            .env_remove("HANGAR_API_TOKEN")
            .env_remove("HANGAR_APP");
        c.output().unwrap()
    };
    let url = w.server.url();
    assert!(ctx(&[
        "context",
        "add",
        "here",
        "--url",
        &url,
        "--token",
        w.server.token()
    ])
    .status
    .success());
    assert!(ctx(&[
        "context",
        "add",
        "nowhere",
        "--url",
        "http://127.0.0.1:1",
        "--token",
        "x"
    ])
    .status
    .success());
    let apps = ctx(&["apps", "list"]);
    assert!(
        String::from_utf8_lossy(&apps.stdout).contains(APP),
        "the first context is current"
    );
    assert!(ctx(&["context", "use", "nowhere"]).status.success());
    let down = ctx(&["apps", "list"]);
    assert!(!down.status.success());
    assert!(String::from_utf8_lossy(&down.stderr).contains("hangar server"));
    let bad = ctx(&["context", "use", "mars"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("mars"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let apps = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["apps", "list"])
        .env("HANGAR_CONFIG", &config)
        .env("HANGAR_API_URL", &url)
        .env("HANGAR_API_TOKEN", w.server.token())
        .output()
        .unwrap();
    assert!(
        apps.status.success(),
        "the environment overrides the context"
    );
}

#[test]
fn completions_and_man_pages() {
    let w = World::new();
    let bash = ok(&w, &["completion", "bash"]);
    assert!(
        bash.contains("hangar") && bash.contains("machine"),
        "{}",
        &bash[..200.min(bash.len())]
    );
    assert!(ok(&w, &["completion", "zsh"]).contains("#compdef hangar"));
    assert!(ok(&w, &["completion", "fish"]).contains("complete -c hangar"));
    let dir = tempfile::tempdir().unwrap();
    ok(&w, &["man", dir.path().to_str().unwrap()]);
    let page = std::fs::read_to_string(dir.path().join("hangar-machine-run.1")).unwrap();
    assert!(
        page.contains("vm\\-memory") || page.contains("vm-memory"),
        "{page}"
    );
}

// ---- pseudo-terminals ----

/// A child attached to a new pseudo-terminal as its controlling terminal.
struct PtyChild {
    master: std::fs::File,
    child: Child,
    output: mpsc::Receiver<Vec<u8>>,
    seen: String,
}

/// A failed assertion must not leave the session running.
impl Drop for PtyChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn set_size(fd: &impl AsRawFd, rows: u16, cols: u16) {
    let ws = nix::libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the winsize we pass.
    let set = unsafe { nix::libc::ioctl(fd.as_raw_fd(), nix::libc::TIOCSWINSZ, &ws) };
    assert_eq!(set, 0);
}

impl PtyChild {
    fn spawn(mut command: Command, rows: u16, cols: u16) -> PtyChild {
        let pty = nix::pty::openpty(None, None).unwrap();
        set_size(&pty.master, rows, cols);
        let slave: OwnedFd = pty.slave;
        command
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                nix::libc::setsid();
                nix::libc::ioctl(0, nix::libc::TIOCSCTTY as _, 0);
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        let master = std::fs::File::from(pty.master);
        let mut reader = master.try_clone().unwrap();
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        PtyChild {
            master,
            child,
            output,
            seen: String::new(),
        }
    }

    fn type_in(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).unwrap();
    }

    /// Reads until `needle` appears in the output (after what earlier waits consumed).
    fn expect(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(i) = self.seen.find(needle) {
                self.seen.drain(..i + needle.len());
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "never saw {needle:?}; got {:?}", self.seen);
            if let Ok(chunk) = self
                .output
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                self.seen.push_str(&String::from_utf8_lossy(&chunk));
            }
        }
    }

    fn exit_code(mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "the session did not end; output {:?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn read_until(mut r: impl Read + Send + 'static, needle: &str, limit: Duration) -> String {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + limit;
    let mut seen = String::new();
    while !seen.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            Err(_) => break,
        }
    }
    seen
}

#[test]
fn console_is_a_real_terminal() {
    let w = World::new();
    let id = w.run("sleep 1000", serde_json::json!({}));
    let mut pty = PtyChild::spawn(cmd(&w, &["m", "console", &id, "-a", APP]), 33, 101);
    pty.type_in("stty size; echo h''i\r");
    pty.expect("33 101");
    pty.expect("hi");
    // A resize of the local terminal reaches the remote one.
    set_size(&pty.master, 40, 120);
    std::thread::sleep(Duration::from_millis(300));
    pty.type_in("stty size\r");
    pty.expect("40 120");
    // Ctrl-C goes to the remote process, not to hangar.
    pty.type_in("sleep 100\r");
    std::thread::sleep(Duration::from_millis(500));
    pty.type_in("\x03");
    pty.type_in("echo after-interrupt\r");
    pty.expect("after-interrupt");
    pty.type_in("exit 3\r");
    assert_eq!(
        pty.exit_code(),
        Some(3),
        "the remote exit code passes through"
    );

    // exec -t is the same session for one command.
    let pty = PtyChild::spawn(
        cmd(
            &w,
            &[
                "m",
                "exec",
                "-t",
                &id,
                "-a",
                APP,
                "--",
                "sh",
                "-c",
                "test -t 0 && exit 7",
            ],
        ),
        24,
        80,
    );
    assert_eq!(pty.exit_code(), Some(7), "exec -t has a terminal");
}

#[test]
fn run_shell_is_a_throwaway_machine() {
    let w = World::new();
    let mut pty = PtyChild::spawn(
        cmd(&w, &["m", "run", "--shell", &w.image, "-a", APP]),
        24,
        80,
    );
    pty.type_in("echo in-the-shell; exit 5\r");
    pty.expect("in-the-shell");
    assert_eq!(pty.exit_code(), Some(5));
    let machines = w.server.get(&format!("/v1/apps/{APP}/machines")).body;
    assert_eq!(
        machines,
        serde_json::json!([]),
        "destroyed when the shell ends"
    );
}

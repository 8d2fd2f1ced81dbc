//! A real `hangar server` for integration tests: its own data directory and port, a JSON
//! client, kill/restart, and a check that machines left nothing behind.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct TestServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    token: String,
    child: Option<Child>,
    extra_args: Vec<String>,
    http: reqwest::blocking::Client,
}

/// A response: status and JSON body (`Value::Null` when the body is empty or not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    /// The `error` message of an error body.
    pub fn error(&self) -> &str {
        self.body.get("error").and_then(Value::as_str).unwrap_or("")
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl TestServer {
    /// Starts `hangar server` (the binary at `bin`, usually `env!("CARGO_BIN_EXE_hangar")`).
    pub fn start(bin: &str) -> TestServer {
        Self::start_with(bin, &[])
    }

    pub fn start_with(bin: &str, extra_args: &[&str]) -> TestServer {
        let mut s = TestServer {
            bin: PathBuf::from(bin),
            dir: tempfile::Builder::new()
                .prefix("hangar-test")
                .tempdir()
                .expect("tempdir"),
            port: free_port(),
            token: format!("test-{}", std::process::id()),
            child: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("http client"),
        };
        s.launch();
        s
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("server log");
        let child = Command::new(&self.bin)
            .arg("server")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--token")
            .arg(&self.token)
            .arg("--init")
            .arg(crate::init::init_binary())
            .args(&self.extra_args)
            .env("HANGAR_LOG", "info,hangar=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("hangar server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "hangar server exited early ({status}); its log:\n{}",
                    self.log()
                );
            }
            if let Ok(r) = self.try_request("GET", "/v1/apps", None) {
                if r.status == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "hangar server did not come up; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the server with SIGKILL (machines keep running).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for a clean exit; returns its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("server running");
        // SAFETY: kill(2) on our own child's pid; the worst case is ESRCH if it already died.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().expect("server exits")
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, None)
    }

    pub fn post(&self, path: &str, body: Value) -> Reply {
        self.request("POST", path, Some(body))
    }

    pub fn delete(&self, path: &str) -> Reply {
        self.request("DELETE", path, None)
    }

    pub fn request(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.try_request(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\nserver log:\n{}", self.log()))
    }

    /// An authenticated request with extra headers (a lease nonce, say).
    pub fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Reply {
        let auth = format!("Bearer {}", self.token);
        let mut all = vec![("authorization", auth.as_str())];
        all.extend_from_slice(headers);
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        if !bytes.is_empty() {
            all.push(("content-type", "application/json"));
        }
        self.raw(method, path, &all, bytes.as_bytes())
    }

    /// A request with a raw body and headers of the caller's choosing (for bad-input tests).
    pub fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut req = self.http.request(
            method.parse().expect("method"),
            format!("{}{path}", self.url()),
        );
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.body(body.to_vec()).send().expect("request sent");
        let status = res.status().as_u16();
        let bytes = res.bytes().expect("body");
        Reply {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Reply, reqwest::Error> {
        let mut req = self
            .http
            .request(
                method.parse().expect("method"),
                format!("{}{path}", self.url()),
            )
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send()?;
        let status = res.status().as_u16();
        let bytes = res.bytes()?;
        Ok(Reply {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        })
    }

    /// Creates an app, asserting success.
    pub fn create_app(&self, name: &str) {
        let r = self.post(
            "/v1/apps",
            serde_json::json!({ "name": name, "org_slug": "personal" }),
        );
        assert_eq!(r.status, 201, "create app {name}: {r:?}");
    }

    /// Creates a machine and returns its JSON, asserting success.
    pub fn create_machine(&self, app: &str, body: Value) -> Value {
        let r = self.post(&format!("/v1/apps/{app}/machines"), body);
        assert_eq!(
            r.status,
            200,
            "create machine: {r:?}\nserver log:\n{}",
            self.log()
        );
        r.body
    }

    /// Waits (through the API) until the machine's current version is in `state`; panics
    /// after 60 s.
    pub fn wait_state(&self, app: &str, id: &str, state: &str) -> Value {
        let m = self.get(&format!("/v1/apps/{app}/machines/{id}"));
        let version = m.body["instance_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let r = self.get(&format!(
            "/v1/apps/{app}/machines/{id}/wait?state={state}&version={version}&timeout=60"
        ));
        assert_eq!(
            r.status,
            200,
            "machine {id} never became {state}: {r:?}\nmachine: {}\nserver log:\n{}",
            self.get(&format!("/v1/apps/{app}/machines/{id}")).body,
            self.log()
        );
        r.body
    }

    /// Polls until `check` holds for the machine's JSON; panics after `limit`.
    pub fn wait_until(
        &self,
        app: &str,
        id: &str,
        limit: Duration,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let m = self.get(&format!("/v1/apps/{app}/machines/{id}")).body;
            if check(&m) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; machine: {m}\nserver log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What a machine left on the host: mounts, runc containers, cgroups, processes.
    /// Empty when it left nothing.
    pub fn leftovers(&self, machine_id: &str) -> Vec<String> {
        leftovers(&self.data_dir(), machine_id)
    }

    /// Leftovers of every machine, plus any mount under the data directory.
    pub fn all_leftovers(&self) -> Vec<String> {
        let mut out: Vec<String> = mounts_under(&self.data_dir())
            .into_iter()
            .map(|m| format!("mount {m}"))
            .collect();
        out.extend(
            runc_containers(&self.data_dir())
                .into_iter()
                .map(|c| format!("runc container {c}")),
        );
        out
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
        // A failed test must not leak machines into the next one.
        let data = self.data_dir();
        for id in runc_containers(&data) {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(data.join("sandbox/runc"))
                .args(["delete", "--force", &id])
                .stderr(Stdio::null())
                .status();
            remove_cgroups(&id);
        }
        // And no VM: QEMU runs under the keeper, not as the server's child.
        for entry in std::fs::read_dir(data.join("vm"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let id = entry.file_name().to_string_lossy().to_string();
            for pid in qemu_of(&id) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let mut mounts = mounts_under(&data);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        if std::thread::panicking() {
            eprintln!("---- hangar server log ----\n{}", self.log());
        }
    }
}

/// Pids of the QEMU processes running machine `machine_id` (the microvm runtime names each
/// `hangar-<id>`).
pub fn qemu_of(machine_id: &str) -> Vec<i32> {
    let name = format!("hangar-{machine_id}");
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .map(|c| c.split(|b| *b == 0).any(|a| a == name.as_bytes()))
                        .unwrap_or(false)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn runc_containers(data: &Path) -> Vec<String> {
    let out = Command::new("runc")
        .arg("--root")
        .arg(data.join("sandbox/runc"))
        .args(["list", "-q"])
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let prefix = dir.to_string_lossy().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

fn cgroup_dirs(machine_id: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            let p = e.path().join("hangar").join(machine_id);
            if p.exists() {
                out.push(p);
            }
        }
    }
    let unified = PathBuf::from("/sys/fs/cgroup/hangar").join(machine_id);
    if unified.exists() {
        out.push(unified);
    }
    out
}

fn remove_cgroups(machine_id: &str) {
    for d in cgroup_dirs(machine_id) {
        let _ = std::fs::remove_dir(d);
    }
}

/// Processes whose cgroup path names the machine (including zombies still in the table).
fn processes_of(machine_id: &str) -> Vec<String> {
    let needle = format!("/hangar/{machine_id}");
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !name.chars().all(|c| c.is_ascii_digit()) {
                continue;
            }
            let cg = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
            if cg.contains(&needle) {
                let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                out.push(format!("{name} ({})", comm.trim()));
            }
        }
    }
    out
}

/// Zombie children of `pid` (processes it adopted and never reaped).
pub fn zombie_children(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...
            let Some(close) = stat.rfind(')') else {
                continue;
            };
            let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
            if fields.first() == Some(&"Z")
                && fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid)
            {
                out.push(stat[..close + 1].to_string());
            }
        }
    }
    out
}

fn leftovers(data: &Path, machine_id: &str) -> Vec<String> {
    let mut out = Vec::new();
    for m in mounts_under(data) {
        if m.contains(machine_id) {
            out.push(format!("mount {m}"));
        }
    }
    for c in runc_containers(data) {
        if c == machine_id {
            out.push(format!("runc container {c}"));
        }
    }
    for d in cgroup_dirs(machine_id) {
        out.push(format!("cgroup {}", d.display()));
    }
    for p in processes_of(machine_id) {
        out.push(format!("process {p}"));
    }
    for p in qemu_of(machine_id) {
        out.push(format!("QEMU process {p}"));
    }
    for root in [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup/pids",
    ] {
        let cg = Path::new(root).join("hangar-vm").join(machine_id);
        if cg.exists() {
            out.push(format!("cgroup {}", cg.display()));
        }
    }
    if data.join("vm").join(machine_id).exists() {
        out.push(format!(
            "directory {}",
            data.join("vm").join(machine_id).display()
        ));
    }
    if data.join("sandbox").join(machine_id).exists() {
        out.push(format!(
            "directory {}",
            data.join("sandbox").join(machine_id).display()
        ));
    }
    out
}

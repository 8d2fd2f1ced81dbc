//! The sandbox runtime for real: runc, overlay mounts, cgroups, and the static hangar-init.
//!
//! Needs root and runc. The static init is built by the first test that needs it, with
//!
//! ```text
//! RUSTFLAGS="-C target-feature=+crt-static" cargo build -p hangar-init --release \
//!     --target x86_64-unknown-linux-gnu --target-dir target/init
//! ```
//!
//! (a no-op when it is up to date), or taken from `$HANGAR_INIT` when that is set. The image
//! is built per test from Debian's busybox-static: two layers (busybox with its applet links
//! and /etc, then a layer that overrides a file), so layer order is exercised too.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use hangar_proto::{ExecSpec, ExitStatus, FileSpec, LaunchSpec, MainProcess, ProcessSpec};
use hangar_runtime::{
    become_subreaper, BootSpec, ExecOutput, Guest, GuestError, Remains, Resources, Runtime,
    RuntimeError, Sandbox, SandboxConfig, SandboxError,
};

const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The static hangar-init: `$HANGAR_INIT`, or built from this checkout once per test run.
fn init_binary() -> &'static Path {
    static INIT: OnceLock<PathBuf> = OnceLock::new();
    INIT.get_or_init(|| {
        if let Some(path) = std::env::var_os("HANGAR_INIT") {
            let path = PathBuf::from(path);
            assert!(path.is_file(), "HANGAR_INIT={} does not exist", path.display());
            return path;
        }
        let root = workspace_root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .current_dir(&root)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .args([
                "build",
                "-p",
                "hangar-init",
                "--release",
                "--target",
                "x86_64-unknown-linux-gnu",
                "--target-dir",
                "target/init",
            ])
            .status()
            .expect("running cargo to build the static hangar-init");
        let path = root.join("target/init/x86_64-unknown-linux-gnu/release/hangar-init");
        assert!(
            status.success() && path.is_file(),
            "could not build the static hangar-init ({status}); build it by hand with \
             RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build -p hangar-init --release \
             --target x86_64-unknown-linux-gnu --target-dir target/init, or point HANGAR_INIT at one"
        );
        path
    })
}

/// A busybox image in two layers under `dir`; returns them lowest first.
fn build_image(dir: &Path) -> Vec<PathBuf> {
    let base = dir.join("layer0");
    let bin = base.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .expect("copying /bin/busybox (install busybox-static)");
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
    }
    std::os::unix::fs::symlink("bin", base.join("sbin")).unwrap();
    let etc = base.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(
        etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        etc.join("group"),
        "root:x:0:\nstaff:x:50:app\napp:x:1000:\n",
    )
    .unwrap();
    std::fs::write(etc.join("motd"), "from the base layer\n").unwrap();
    for d in ["root", "home/app", "tmp", "usr/bin"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    std::os::unix::fs::chown(base.join("home/app"), Some(1000), Some(1000)).unwrap();
    std::fs::set_permissions(base.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();

    let top = dir.join("layer1");
    std::fs::create_dir_all(top.join("etc")).unwrap();
    std::fs::write(top.join("etc/motd"), "from the top layer\n").unwrap();
    vec![base, top]
}

struct Harness {
    sandbox: Sandbox,
    dir: tempfile::TempDir,
    layers: Vec<PathBuf>,
    id: String,
}

impl Harness {
    fn new(name: &str) -> Harness {
        become_subreaper().expect("becoming a subreaper");
        let dir = tempfile::Builder::new()
            .prefix("hg")
            .tempdir_in("/tmp")
            .unwrap();
        let layers = build_image(&dir.path().join("image"));
        let config = SandboxConfig::new(dir.path().join("s"), init_binary());
        let sandbox =
            Sandbox::new(config).expect("the sandbox runtime should be available (root, runc)");
        Harness {
            sandbox,
            layers,
            id: format!("{name}-{}", std::process::id()),
            dir,
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("s").canonicalize().unwrap()
    }

    fn log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join("logs")
            .join(format!("{}.log", self.id))
    }

    fn spec(&self, argv: &[&str]) -> BootSpec {
        BootSpec {
            machine_id: self.id.clone(),
            layers: self.layers.clone(),
            launch: LaunchSpec {
                machine_id: self.id.clone(),
                hostname: self.id.clone(),
                process: ProcessSpec {
                    argv: argv.iter().map(|s| s.to_string()).collect(),
                    env: vec!["MAIN_VAR=from-main".into()],
                    ..Default::default()
                },
                files: vec![],
                control: String::new(),
            },
            resources: Resources {
                cpus: 1,
                memory_mb: 256,
            },
            log_path: self.log_path(),
            runtime: None,
            rootfs_size_gb: None,
            netns: None,
        }
    }

    async fn boot(&self, argv: &[&str]) -> Guest {
        self.sandbox.boot(&self.spec(argv)).await.expect("boot")
    }

    fn runc(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("runc")
            .arg("--root")
            .arg(self.state_dir().join("runc"))
            .args(args)
            .output()
            .unwrap()
    }

    /// The container init's pid on the host, from runc.
    fn init_pid(&self) -> i32 {
        let out = self.runc(&["state", &self.id]);
        assert!(
            out.status.success(),
            "runc state: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["pid"].as_i64().unwrap() as i32
    }

    /// Tears the machine down and checks that nothing of it is left: no mount, no runc
    /// container, no cgroup, no process (not even a zombie), no directory.
    async fn teardown_and_check(&self) -> Remains {
        let pid = self.init_pid();
        assert!(pid > 0);
        let remains = self.sandbox.teardown(&self.id).await.expect("teardown");
        self.assert_gone(Some(pid));
        remains
    }

    fn assert_gone(&self, init_pid: Option<i32>) {
        let machine_dir = self.state_dir().join(&self.id);
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let leftover: Vec<&str> = mountinfo
            .lines()
            .filter(|l| l.contains(machine_dir.to_str().unwrap()))
            .collect();
        assert!(leftover.is_empty(), "mounts left behind: {leftover:?}");
        let state = self.runc(&["state", &self.id]);
        assert!(!state.status.success(), "runc still knows the container");
        for ctrl in ["memory", "pids", "cpu", "unified", ""] {
            let dir = Path::new("/sys/fs/cgroup")
                .join(ctrl)
                .join("hangar")
                .join(&self.id);
            assert!(!dir.exists(), "cgroup left behind: {}", dir.display());
        }
        if let Some(pid) = init_pid {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "the container's init (pid {pid}) is still there: {:?}",
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
            );
        }
        assert!(
            !machine_dir.exists(),
            "{} left behind",
            machine_dir.display()
        );
    }
}

/// A test that fails before its teardown must not leave a running container, a mount or a
/// zombie behind (the temporary directory is removed next, and it holds the overlay).
impl Drop for Harness {
    fn drop(&mut self) {
        let Ok(state_dir) = self.dir.path().join("s").canonicalize() else {
            return;
        };
        let out = self.runc(&["state", &self.id]);
        if out.status.success() {
            let pid = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|v| v["pid"].as_i64())
                .unwrap_or(0) as i32;
            self.runc(&["kill", &self.id, "KILL"]);
            if pid > 0 {
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            }
            self.runc(&["delete", "--force", &self.id]);
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mountinfo.lines() {
            if let Some(target) = line
                .split(' ')
                .nth(4)
                .filter(|t| t.starts_with(state_dir.to_str().unwrap_or("-")))
            {
                let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

fn exec_spec(argv: &[&str]) -> ExecSpec {
    ExecSpec {
        process: ProcessSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn sh(guest: &Guest, script: &str) -> ExecOutput {
    guest
        .exec(exec_spec(&["sh", "-c", script]), EXEC_TIMEOUT)
        .await
        .expect("exec")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `script` until it succeeds: for states reached asynchronously, with no clock in the
/// assertion (the bound only turns a hang into a failure).
async fn eventually(guest: &Guest, script: &str) {
    for _ in 0..2000 {
        if sh(guest, script).await.status.success() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never true: {script}");
}

fn main_pid(guest: &Guest) -> i32 {
    match guest.main() {
        MainProcess::Running { pid, .. } => pid,
        other => panic!("main process not running: {other:?}"),
    }
}

#[tokio::test]
async fn exit_code_and_console_are_reported() {
    let t = Harness::new("exit");
    let guest = t
        .boot(&["sh", "-c", "echo hello-console; echo to-stderr >&2; exit 7"])
        .await;
    let status = guest.exited().await.unwrap();
    assert_eq!(
        (status.code, status.signal, status.error.as_deref()),
        (Some(7), None, None)
    );
    // Init stays up after the main process exits, so the status can still be read.
    let again = t
        .sandbox
        .attach(&t.id)
        .await
        .unwrap()
        .expect("init still running");
    assert_eq!(again.main(), MainProcess::Exited(status));
    let log = std::fs::read_to_string(t.log_path()).unwrap();
    assert!(
        log.contains("hello-console") && log.contains("to-stderr"),
        "log: {log}"
    );
    assert_eq!(
        t.teardown_and_check().await,
        Remains {
            oom_killed: false,
            reason: None
        }
    );
}

#[tokio::test]
async fn a_signal_stops_the_process() {
    let t = Harness::new("sig");
    let guest = t.boot(&["sleep", "100000"]).await;
    assert!(matches!(
        guest.running().await.unwrap(),
        MainProcess::Running { .. }
    ));
    guest.signal(libc::SIGTERM).await.unwrap();
    let status = guest.exited().await.unwrap();
    assert_eq!((status.code, status.signal), (None, Some(libc::SIGTERM)));
    assert_eq!(status.shell_code(), 143);
    t.teardown_and_check().await;
}

#[tokio::test]
async fn a_trapped_sigint_is_ignored_and_sigkill_ends_it() {
    let t = Harness::new("trap");
    let guest = t
        .boot(&[
            "sh",
            "-c",
            "trap '' INT; touch /tmp/trapped; exec sleep 100000",
        ])
        .await;
    let pid = main_pid(&guest);
    // The sleep that replaces the shell inherits the ignored SIGINT; wait until it has.
    eventually(
        &guest,
        &format!("test -f /tmp/trapped && grep -q sleep /proc/{pid}/comm"),
    )
    .await;
    guest.signal(libc::SIGINT).await.unwrap();
    // An ignored signal is discarded when sent, so the process is known to have survived it.
    assert_eq!(
        sh(&guest, &format!("kill -0 {pid}")).await.status.code,
        Some(0)
    );
    assert_eq!(main_pid(&guest), pid);
    guest.signal(libc::SIGKILL).await.unwrap();
    let status = guest.exited().await.unwrap();
    assert_eq!(status.signal, Some(libc::SIGKILL));
    assert_eq!(
        guest.signal(libc::SIGTERM).await,
        Err(GuestError::Refused(
            "the main process is not running".into()
        ))
    );
    t.teardown_and_check().await;
}

#[tokio::test]
async fn exec_returns_output_and_status_with_user_env_and_cwd() {
    let t = Harness::new("exec");
    let guest = t.boot(&["sleep", "100000"]).await;

    let root = sh(
        &guest,
        "echo out; echo err >&2; id -u; pwd; echo $MAIN_VAR $HOME; exit 3",
    )
    .await;
    assert_eq!(root.status.code, Some(3));
    assert_eq!(text(&root.stdout), "out\n0\n/\nfrom-main /root\n");
    assert_eq!(text(&root.stderr), "err\n");

    let mut spec = exec_spec(&[
        "sh",
        "-c",
        "id -u; id -g; id -G; pwd; echo $MAIN_VAR $EXTRA $HOME $PATH",
    ]);
    spec.process.user = "app".into();
    spec.process.cwd = "/tmp".into();
    spec.process.env = vec!["EXTRA=from-exec".into(), "MAIN_VAR=overridden".into()];
    let app = guest.exec(spec, EXEC_TIMEOUT).await.unwrap();
    assert!(app.status.success(), "{app:?}");
    assert_eq!(
        text(&app.stdout),
        "1000\n1000\n1000 50\n/tmp\noverridden from-exec /home/app /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    );

    let mut spec = exec_spec(&["sh", "-c", "id -u; id -g"]);
    spec.process.user = "4242:4343".into();
    let numeric = guest.exec(spec, EXEC_TIMEOUT).await.unwrap();
    assert_eq!(text(&numeric.stdout), "4242\n4343\n");

    let mut spec = exec_spec(&["tr", "a-z", "A-Z"]);
    spec.stdin = Some(b"piped through\n".to_vec());
    let piped = guest.exec(spec, EXEC_TIMEOUT).await.unwrap();
    assert_eq!(text(&piped.stdout), "PIPED THROUGH\n");

    // Output larger than one frame's chunk arrives whole and in order.
    let big = sh(&guest, "seq 1 100000").await;
    let expected: String = (1..=100000).map(|i| format!("{i}\n")).collect();
    assert_eq!(big.stdout.len(), expected.len());
    assert!(big.stdout == expected.as_bytes());

    let mut spec = exec_spec(&["sh", "-c", "tty; stty size; echo $TERM"]);
    spec.process.tty = true;
    spec.rows = 30;
    spec.cols = 100;
    let tty = guest.exec(spec, EXEC_TIMEOUT).await.unwrap();
    let out = text(&tty.stdout);
    assert!(tty.status.success(), "{tty:?}");
    assert!(out.starts_with("/dev/pts/"), "{out:?}");
    assert!(
        out.contains("30 100\r\n") && out.contains("xterm"),
        "{out:?}"
    );

    t.teardown_and_check().await;
}

#[tokio::test]
async fn exec_failures_are_exit_codes_with_reasons() {
    let t = Harness::new("execfail");
    let guest = t.boot(&["sleep", "100000"]).await;

    let missing = guest
        .exec(exec_spec(&["no-such-command", "x"]), EXEC_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(missing.status.code, Some(127));
    let error = missing.status.error.unwrap();
    assert!(
        error.contains("no-such-command") && error.contains("not found"),
        "{error}"
    );

    let mut spec = exec_spec(&["id"]);
    spec.process.user = "nobody-here".into();
    let bad_user = guest.exec(spec, EXEC_TIMEOUT).await.unwrap();
    assert_eq!(bad_user.status.code, Some(126));
    assert!(bad_user.status.error.unwrap().contains("nobody-here"));

    let mut spec = exec_spec(&["pwd"]);
    spec.process.cwd = "/does/not/exist".into();
    let bad_cwd = guest.exec(spec, EXEC_TIMEOUT).await.unwrap();
    assert_eq!(bad_cwd.status.code, Some(126));
    assert!(bad_cwd.status.error.unwrap().contains("/does/not/exist"));

    let not_exec = sh(&guest, "echo x > /tmp/plain; chmod 644 /tmp/plain").await;
    assert!(not_exec.status.success());
    let denied = guest
        .exec(exec_spec(&["/tmp/plain"]), EXEC_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(denied.status.code, Some(126));

    let empty = guest.exec(exec_spec(&[]), EXEC_TIMEOUT).await;
    assert!(matches!(empty, Err(GuestError::Refused(_))), "{empty:?}");

    // A command outliving its timeout is killed, and the connection stays usable.
    let slow = guest
        .exec(exec_spec(&["sleep", "4242"]), Duration::from_millis(300))
        .await;
    assert_eq!(slow, Err(GuestError::Timeout));
    eventually(&guest, "! ps | grep -v grep | grep -q 'sleep 4242'").await;

    t.teardown_and_check().await;
}

#[tokio::test]
async fn main_process_failures_are_reported_not_thrown() {
    let t = Harness::new("mainfail");
    let guest = t.boot(&["no-such-program"]).await;
    let status = guest.exited().await.unwrap();
    assert_eq!(status.code, Some(127));
    assert!(status.error.unwrap().contains("no-such-program"));
    t.teardown_and_check().await;

    let mut spec = t.spec(&["id"]);
    spec.launch.process.user = "ghost".into();
    let guest = t.sandbox.boot(&spec).await.unwrap();
    let status = guest.exited().await.unwrap();
    assert_eq!(status.code, Some(126));
    assert!(status.error.unwrap().contains("\"ghost\" not found"));
    t.teardown_and_check().await;
}

#[tokio::test]
async fn the_main_process_runs_as_the_requested_user() {
    let t = Harness::new("user");
    let mut spec = t.spec(&["sleep", "100000"]);
    spec.launch.process.user = "app".into();
    spec.launch.process.cwd = "/home/app".into();
    let guest = t.sandbox.boot(&spec).await.unwrap();
    let pid = main_pid(&guest);
    let out = sh(&guest, &format!("grep -E '^(Uid|Gid|Groups):' /proc/{pid}/status; readlink /proc/{pid}/cwd; tr '\\0' '\\n' < /proc/{pid}/environ | sort")).await;
    let out = text(&out.stdout);
    assert!(out.contains("Uid:\t1000\t1000\t1000\t1000"), "{out}");
    assert!(out.contains("Gid:\t1000\t1000\t1000\t1000"), "{out}");
    assert!(
        out.contains("Groups:\t50 1000") || out.contains("Groups:\t1000 50"),
        "{out}"
    );
    assert!(out.contains("/home/app\n"), "{out}");
    assert!(
        out.contains("HOME=/home/app\nMAIN_VAR=from-main\nPATH=/usr/local/sbin"),
        "{out}"
    );
    t.teardown_and_check().await;
}

#[tokio::test]
async fn files_from_the_spec_appear() {
    let t = Harness::new("files");
    let mut spec = t.spec(&["sleep", "100000"]);
    spec.launch.files = vec![
        FileSpec {
            path: "/etc/app/deep/config.txt".into(),
            contents: b"key=value\n".to_vec(),
            mode: 0o640,
        },
        FileSpec {
            path: "/usr/bin/hello".into(),
            contents: b"#!/bin/sh\necho hello from a file\n".to_vec(),
            mode: 0o755,
        },
    ];
    let guest = t.sandbox.boot(&spec).await.unwrap();
    let out = sh(
        &guest,
        "cat /etc/app/deep/config.txt; stat -c %a /etc/app/deep/config.txt; hello",
    )
    .await;
    assert_eq!(text(&out.stdout), "key=value\n640\nhello from a file\n");
    t.teardown_and_check().await;
}

#[tokio::test]
async fn every_boot_starts_from_a_blank_slate() {
    let t = Harness::new("slate");
    let guest = t.boot(&["sleep", "100000"]).await;
    // The top layer wins over the base layer.
    assert_eq!(
        text(&sh(&guest, "cat /etc/motd").await.stdout),
        "from the top layer\n"
    );
    let wrote = sh(
        &guest,
        "echo scribble > /scribble; echo changed > /etc/motd; rm /bin/ls",
    )
    .await;
    assert!(wrote.status.success(), "{wrote:?}");
    assert_eq!(
        text(&sh(&guest, "cat /scribble").await.stdout),
        "scribble\n"
    );
    drop(guest);
    t.teardown_and_check().await;

    let guest = t.boot(&["sleep", "100000"]).await;
    let after = sh(
        &guest,
        "test ! -e /scribble && cat /etc/motd && test -e /bin/ls",
    )
    .await;
    assert!(after.status.success(), "{after:?}");
    assert_eq!(text(&after.stdout), "from the top layer\n");
    // The image's own layers were never touched.
    assert!(!t.layers[1].join("scribble").exists() && !t.layers[0].join("scribble").exists());
    assert!(t.layers[0].join("bin/ls").exists());
    t.teardown_and_check().await;
}

#[tokio::test]
async fn hostname_is_the_machine_id_and_only_loopback_exists() {
    let t = Harness::new("host");
    let guest = t.boot(&["sleep", "100000"]).await;
    let out = sh(&guest, "hostname; cat /etc/hostname; grep -c \"$(hostname)\" /etc/hosts; grep -c localhost /etc/hosts").await;
    assert_eq!(text(&out.stdout), format!("{0}\n{0}\n1\n1\n", t.id));
    let net = sh(&guest, "ls /sys/class/net; cat /sys/class/net/lo/flags").await;
    // Only lo, and it is up (IFF_UP | IFF_LOOPBACK | IFF_RUNNING...).
    let out = text(&net.stdout);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("lo"));
    let flags = u32::from_str_radix(lines.next().unwrap().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 0x1, 0x1, "lo is down: {out}");
    assert_eq!(lines.next(), None, "{out}");
    let ping = sh(&guest, "ping -c 1 -W 5 127.0.0.1").await;
    assert!(ping.status.success(), "{ping:?}");
    t.teardown_and_check().await;
}

#[tokio::test]
async fn memory_and_cpu_limits_are_applied() {
    let t = Harness::new("limits");
    let guest = t.boot(&["sleep", "100000"]).await;
    let inside = sh(&guest, "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes").await;
    assert_eq!(
        text(&inside.stdout).trim(),
        (256u64 << 20).to_string(),
        "{inside:?}"
    );
    let v1 = Path::new("/sys/fs/cgroup/memory/hangar").join(&t.id);
    let (memory, swap, cpu) = if v1.exists() {
        (
            std::fs::read_to_string(v1.join("memory.limit_in_bytes")).unwrap(),
            std::fs::read_to_string(v1.join("memory.memsw.limit_in_bytes"))
                .unwrap_or_else(|_| (256u64 << 20).to_string()),
            std::fs::read_to_string(
                Path::new("/sys/fs/cgroup/cpu/hangar")
                    .join(&t.id)
                    .join("cpu.cfs_quota_us"),
            )
            .unwrap(),
        )
    } else {
        let v2 = Path::new("/sys/fs/cgroup/hangar").join(&t.id);
        let swap_max = std::fs::read_to_string(v2.join("memory.swap.max")).unwrap();
        assert_eq!(swap_max.trim(), "0");
        (
            std::fs::read_to_string(v2.join("memory.max")).unwrap(),
            (256u64 << 20).to_string(),
            std::fs::read_to_string(v2.join("cpu.max"))
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .to_string(),
        )
    };
    assert_eq!(memory.trim(), (256u64 << 20).to_string());
    assert_eq!(swap.trim(), (256u64 << 20).to_string());
    assert_eq!(cpu.trim(), "100000");
    t.teardown_and_check().await;
}

#[tokio::test]
async fn attach_reconnects_and_sees_an_exit_nobody_watched() {
    let t = Harness::new("attach");
    let guest = t.boot(&["sleep", "100000"]).await;
    let pid = main_pid(&guest);
    drop(guest);

    let guest = t
        .sandbox
        .attach(&t.id)
        .await
        .unwrap()
        .expect("running machine");
    assert_eq!(main_pid(&guest), pid);
    assert!(sh(&guest, "true").await.status.success());
    drop(guest);

    // With nobody connected, signal the machine from outside: init forwards SIGTERM to the
    // main process, which exits.
    let main_host_pid: i32 = {
        let init = t.init_pid();
        let children =
            std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap();
        children
            .split_whitespace()
            .next()
            .expect("the main process")
            .parse()
            .unwrap()
    };
    let kill = t.runc(&["kill", &t.id, "TERM"]);
    assert!(
        kill.status.success(),
        "{}",
        String::from_utf8_lossy(&kill.stderr)
    );
    for _ in 0..10_000 {
        if !Path::new(&format!("/proc/{main_host_pid}")).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        !Path::new(&format!("/proc/{main_host_pid}")).exists(),
        "main process never exited"
    );

    // The exit happened while nobody was connected; the new connection's hello reports it.
    let guest = t
        .sandbox
        .attach(&t.id)
        .await
        .unwrap()
        .expect("init stays up");
    match guest.main() {
        MainProcess::Exited(ExitStatus {
            signal: Some(sig), ..
        }) => assert_eq!(sig, libc::SIGTERM),
        other => panic!("expected an exit by SIGTERM, got {other:?}"),
    }
    assert_eq!(guest.exited().await.unwrap().signal, Some(libc::SIGTERM));
    t.teardown_and_check().await;
    assert!(t.sandbox.attach(&t.id).await.unwrap().is_none());
}

#[tokio::test]
async fn a_process_over_its_memory_is_oom_killed_and_teardown_says_so() {
    let t = Harness::new("oom");
    // dd allocates its 400 MiB block and fills it from /dev/zero: over the 256 MiB limit,
    // with no swap to escape to.
    let guest = t
        .boot(&["dd", "if=/dev/zero", "of=/dev/null", "bs=400M", "count=1"])
        .await;
    let status = guest.exited().await.unwrap();
    assert_eq!(status.signal, Some(libc::SIGKILL), "{status:?}");
    assert_eq!(
        t.teardown_and_check().await,
        Remains {
            oom_killed: true,
            reason: None
        }
    );
}

#[tokio::test]
async fn shutdown_ends_the_machine_and_teardown_is_idempotent() {
    let t = Harness::new("shut");
    let guest = t.boot(&["sh", "-c", "sleep 100000 & sleep 100000"]).await;
    let init = t.init_pid();
    assert_eq!(t.sandbox.list().await.unwrap(), vec![t.id.clone()]);
    guest.shutdown().await.unwrap();
    assert_eq!(
        guest.exited().await.map(|s| s.signal),
        Ok(Some(libc::SIGTERM))
    );
    let remains = t.sandbox.teardown(&t.id).await.unwrap();
    assert!(!remains.oom_killed);
    t.assert_gone(Some(init));
    assert_eq!(t.sandbox.teardown(&t.id).await.unwrap(), Remains::default());
    assert!(t.sandbox.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_failed_boot_leaves_nothing_behind() {
    let t = Harness::new("badboot");
    let mut spec = t.spec(&["true"]);
    spec.layers.push(t.dir.path().join("no-such-layer"));
    let err = t.sandbox.boot(&spec).await.unwrap_err();
    assert!(
        matches!(&err, RuntimeError::Sandbox(SandboxError::MissingLayer(p)) if p.ends_with("no-such-layer")),
        "{err}"
    );
    t.assert_gone(None);

    let mut spec = t.spec(&["true"]);
    spec.machine_id = "../escape".into();
    assert!(
        matches!(t.sandbox.boot(&spec).await, Err(RuntimeError::Sandbox(SandboxError::InvalidId(id))) if id == "../escape")
    );
    assert!(t.sandbox.teardown("../escape").await.is_err());

    let mut spec = t.spec(&["true"]);
    spec.resources.memory_mb = 0;
    assert!(
        matches!(t.sandbox.boot(&spec).await, Err(RuntimeError::Sandbox(SandboxError::Spec(m))) if m.contains("resources"))
    );
    t.assert_gone(None);
}

#[tokio::test]
async fn the_runtime_refuses_a_dynamic_init() {
    let dir = tempfile::tempdir().unwrap();
    let dynamic = std::env::current_exe().unwrap();
    let err = Sandbox::new(SandboxConfig::new(dir.path(), &dynamic))
        .err()
        .expect("a dynamic init is refused");
    assert!(
        matches!(&err, RuntimeError::Unavailable(m) if m.contains("dynamically linked") && m.contains("crt-static")),
        "{err}"
    );
    let err = Sandbox::new(SandboxConfig::new(dir.path(), dir.path().join("missing")))
        .err()
        .unwrap();
    assert!(
        matches!(&err, RuntimeError::Unavailable(m) if m.contains("not found")),
        "{err}"
    );
    let mut config = SandboxConfig::new(dir.path(), init_binary());
    config.runc = PathBuf::from("/nonexistent/runc");
    let err = Sandbox::new(config).err().unwrap();
    assert!(
        matches!(&err, RuntimeError::Unavailable(m) if m.contains("install runc")),
        "{err}"
    );
}

/// A bare protocol client, for what `Guest` does not expose yet (interactive execs).
struct Raw {
    stream: tokio::net::UnixStream,
    decoder: hangar_proto::Decoder,
}

impl Raw {
    async fn connect(path: &Path) -> Raw {
        let stream = tokio::net::UnixStream::connect(path).await.unwrap();
        Raw {
            stream,
            decoder: hangar_proto::Decoder::new(),
        }
    }

    async fn send(&mut self, id: u64, op: hangar_proto::Op) {
        use tokio::io::AsyncWriteExt;
        let frame = hangar_proto::encode(&hangar_proto::Request { id, op });
        self.stream.write_all(&frame).await.unwrap();
    }

    async fn next(&mut self) -> hangar_proto::Event {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 65536];
        loop {
            if let Some(event) = self.decoder.decode::<hangar_proto::Event>().unwrap() {
                return event;
            }
            let n = tokio::time::timeout(EXEC_TIMEOUT, self.stream.read(&mut buf))
                .await
                .expect("an event")
                .unwrap();
            assert!(n > 0, "init closed the connection");
            self.decoder.push(&buf[..n]);
        }
    }

    /// Events up to and including the first that `done` accepts.
    async fn until(
        &mut self,
        done: impl Fn(&hangar_proto::Event) -> bool,
    ) -> Vec<hangar_proto::Event> {
        let mut seen = Vec::new();
        loop {
            let event = self.next().await;
            let stop = done(&event);
            seen.push(event);
            if stop {
                return seen;
            }
        }
    }
}

fn stdout_of(events: &[hangar_proto::Event], id: u64) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            hangar_proto::Event::ExecOutput { exec, data, .. } if *exec == id => Some(text(data)),
            _ => None,
        })
        .collect()
}

fn exit_of(events: &[hangar_proto::Event], id: u64) -> Option<ExitStatus> {
    events.iter().find_map(|e| match e {
        hangar_proto::Event::ExecExit { exec, status } if *exec == id => Some(status.clone()),
        _ => None,
    })
}

fn reply_of(events: &[hangar_proto::Event], want: u64) -> Option<Option<String>> {
    events.iter().find_map(|e| match e {
        hangar_proto::Event::Reply { id, error } if *id == want => Some(error.clone()),
        _ => None,
    })
}

#[tokio::test]
async fn interactive_execs_take_input_resizes_and_signals() {
    use hangar_proto::{Event, Op};
    let t = Harness::new("interact");
    drop(t.boot(&["sleep", "100000"]).await);
    let mut raw = Raw::connect(&t.state_dir().join(&t.id).join("ctl/control.sock")).await;
    raw.send(
        1,
        Op::Hello {
            version: hangar_proto::PROTOCOL_VERSION,
        },
    )
    .await;
    assert!(matches!(
        raw.next().await,
        Event::Status {
            id: Some(1),
            main: MainProcess::Running { .. },
            ..
        }
    ));

    // Pipes: input arrives, end of file ends the command.
    let mut cat = exec_spec(&["cat"]);
    cat.interactive = true;
    raw.send(2, Op::Exec(cat)).await;
    assert_eq!(
        reply_of(
            &raw.until(|e| matches!(e, Event::Reply { id: 2, .. })).await,
            2
        ),
        Some(None)
    );
    raw.send(
        3,
        Op::ExecInput {
            exec: 2,
            data: b"hello\n".to_vec(),
            eof: false,
        },
    )
    .await;
    let seen = raw
        .until(|e| matches!(e, Event::ExecOutput { exec: 2, .. }))
        .await;
    assert_eq!(stdout_of(&seen, 2), "hello\n");
    raw.send(
        4,
        Op::ExecInput {
            exec: 2,
            data: vec![],
            eof: true,
        },
    )
    .await;
    let seen = raw
        .until(|e| matches!(e, Event::ExecExit { exec: 2, .. }))
        .await;
    assert_eq!(exit_of(&seen, 2).unwrap().code, Some(0));

    // A terminal: resized before the shell reads its input.
    let mut shell = exec_spec(&["sh"]);
    shell.process.tty = true;
    shell.interactive = true;
    shell.rows = 24;
    shell.cols = 80;
    raw.send(5, Op::Exec(shell)).await;
    raw.send(
        6,
        Op::ExecResize {
            exec: 5,
            rows: 50,
            cols: 120,
        },
    )
    .await;
    raw.send(
        7,
        Op::ExecInput {
            exec: 5,
            data: b"stty size; exit 3\n".to_vec(),
            eof: false,
        },
    )
    .await;
    let seen = raw
        .until(|e| matches!(e, Event::ExecExit { exec: 5, .. }))
        .await;
    assert_eq!(reply_of(&seen, 6), Some(None));
    assert!(
        stdout_of(&seen, 5).contains("50 120"),
        "{:?}",
        stdout_of(&seen, 5)
    );
    assert_eq!(exit_of(&seen, 5).unwrap().code, Some(3));

    // Signals reach an exec.
    raw.send(8, Op::Exec(exec_spec(&["sleep", "1000"]))).await;
    raw.until(|e| matches!(e, Event::Reply { id: 8, .. })).await;
    raw.send(
        9,
        Op::ExecSignal {
            exec: 8,
            signal: libc::SIGTERM,
        },
    )
    .await;
    let seen = raw
        .until(|e| matches!(e, Event::ExecExit { exec: 8, .. }))
        .await;
    assert_eq!(exit_of(&seen, 8).unwrap().signal, Some(libc::SIGTERM));

    // Requests about execs that do not exist are refused with a reason.
    raw.send(
        10,
        Op::ExecResize {
            exec: 8,
            rows: 1,
            cols: 1,
        },
    )
    .await;
    let seen = raw
        .until(|e| matches!(e, Event::Reply { id: 10, .. }))
        .await;
    assert_eq!(reply_of(&seen, 10), Some(Some("no exec 8".to_string())));
    raw.send(11, Op::Signal { signal: 12345 }).await;
    let seen = raw
        .until(|e| matches!(e, Event::Reply { id: 11, .. }))
        .await;
    assert_eq!(
        reply_of(&seen, 11),
        Some(Some("unknown signal 12345".to_string()))
    );

    // An exec left running when its connection closes is killed.
    raw.send(12, Op::Exec(exec_spec(&["sleep", "5151"]))).await;
    raw.until(|e| matches!(e, Event::Reply { id: 12, .. }))
        .await;
    drop(raw);
    let guest = t.sandbox.attach(&t.id).await.unwrap().unwrap();
    eventually(&guest, "! ps | grep -v grep | grep -q 'sleep 5151'").await;
    t.teardown_and_check().await;
}

#[tokio::test]
async fn paths_too_long_for_the_kernel_are_refused_clearly() {
    let t = Harness::new("paths");
    // Overlay options must fit in one page.
    let long = t.dir.path().join("l".repeat(200));
    let mut spec = t.spec(&["true"]);
    spec.layers = vec![long; 30];
    let err = t.sandbox.boot(&spec).await.unwrap_err();
    assert!(
        matches!(&err, RuntimeError::Sandbox(SandboxError::Spec(m)) if m.contains("overlay mount options")),
        "{err}"
    );
    t.assert_gone(None);

    // Control socket paths must fit sun_path.
    let deep = t.dir.path().join("d".repeat(90));
    let sandbox = Sandbox::new(SandboxConfig::new(&deep, init_binary())).unwrap();
    let err = sandbox.boot(&t.spec(&["true"])).await.unwrap_err();
    assert!(
        matches!(&err, RuntimeError::Sandbox(SandboxError::Spec(m)) if m.contains("107-byte limit")),
        "{err}"
    );
    assert!(!deep.join(&t.id).exists());
}

#[tokio::test]
async fn a_machine_that_dies_while_booting_is_cleaned_up() {
    let t = Harness::new("tiny");
    let mut spec = t.spec(&["sleep", "100000"]);
    // Too little memory for runc's own setup or for init: the boot fails inside runc or
    // right after it, and must leave nothing behind either way.
    spec.resources.memory_mb = 1;
    match t.sandbox.boot(&spec).await {
        Err(RuntimeError::Sandbox(reason)) => eprintln!("boot failed as expected: {reason}"),
        Ok(guest) => panic!("a 1 MiB machine booted: {:?}", guest.main()),
        Err(other) => panic!("unexpected error: {other}"),
    }
    t.assert_gone(None);
}

//! The microvm runtime for real: QEMU under TCG (this project's hosts have no usable KVM) with
//! Debian's cloud kernel, the static hangar-init in Hangar's initramfs, ext4 disks.
//!
//! Needs root, qemu-system-x86, e2fsprogs and the kernel `scripts/fetch-kernel.sh` unpacks
//! into /var/lib/hangar/kernel (`make deps` does all of it). Boots are slow under TCG, so
//! each test reuses its machine for several independent checks.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use hangar_proto::{ExecSpec, LaunchSpec, MainProcess, ProcessSpec};
use hangar_runtime::{
    Accel, BootSpec, Guest, GuestError, Microvm, MicrovmConfig, Resources, Runtime, RuntimeError,
};

const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
const KERNEL_DIR: &str = "/var/lib/hangar/kernel";

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
            return PathBuf::from(path);
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
        assert!(status.success(), "could not build the static hangar-init");
        root.join("target/init/x86_64-unknown-linux-gnu/release/hangar-init")
    })
}

/// A busybox image in two layers (the top one overrides a file and deletes one with a
/// whiteout); lowest first.
fn build_image(dir: &Path) -> Vec<PathBuf> {
    let base = dir.join("layer0");
    let bin = base.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("copying /bin/busybox");
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
    std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(etc.join("group"), "root:x:0:\n").unwrap();
    std::fs::write(etc.join("motd"), "from the base layer\n").unwrap();
    std::fs::write(etc.join("gone"), "deleted by the top layer\n").unwrap();
    for d in ["root", "tmp"] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    let top = dir.join("layer1");
    std::fs::create_dir_all(top.join("etc")).unwrap();
    std::fs::write(top.join("etc/motd"), "from the top layer\n").unwrap();
    nix::sys::stat::mknod(
        &top.join("etc/gone"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .expect("an overlay whiteout");
    vec![base, top]
}

struct Harness {
    vm: Microvm,
    dir: tempfile::TempDir,
    layers: Vec<PathBuf>,
}

impl Harness {
    async fn new() -> Harness {
        let dir = tempfile::Builder::new()
            .prefix("hv")
            .tempdir_in("/tmp")
            .unwrap();
        let layers = build_image(&dir.path().join("image"));
        let mut config = MicrovmConfig::new(
            dir.path().join("s"),
            dir.path().join("cache"),
            init_binary(),
            KERNEL_DIR,
        );
        config.accel = Accel::Tcg;
        let vm = Microvm::new(config).await.expect(
            "the microvm runtime (root, qemu-system-x86, the kernel from scripts/fetch-kernel.sh)",
        );
        Harness { vm, dir, layers }
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.dir.path().join("logs").join(format!("{id}.log"))
    }

    fn spec(&self, id: &str, argv: &[&str], cpus: u32, memory_mb: u32) -> BootSpec {
        BootSpec {
            machine_id: id.to_string(),
            layers: self.layers.clone(),
            launch: LaunchSpec {
                machine_id: id.to_string(),
                hostname: id.to_string(),
                process: ProcessSpec {
                    argv: argv.iter().map(|s| s.to_string()).collect(),
                    env: vec!["PATH=/bin".into()],
                    ..Default::default()
                },
                files: vec![],
                control: String::new(),
            },
            resources: Resources { cpus, memory_mb },
            log_path: self.log_path(id),
            runtime: None,
            rootfs_size_gb: None,
            netns: None,
        }
    }

    fn machine_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join("s").canonicalize().unwrap().join(id)
    }

    /// Nothing of the machine is left: no QEMU process, no directory (disks, sockets), no
    /// cgroup.
    fn assert_gone(&self, id: &str) {
        assert!(
            !self.machine_dir(id).exists(),
            "machine directory left behind"
        );
        assert!(qemu_pids(id).is_empty(), "QEMU left running for {id}");
        for ctl in ["memory", "cpu", "pids", ""] {
            let cg = Path::new("/sys/fs/cgroup")
                .join(ctl)
                .join("hangar-vm")
                .join(id);
            assert!(!cg.exists(), "cgroup {} left behind", cg.display());
        }
    }
}

/// Pids of QEMU processes running machine `id`.
fn qemu_pids(id: &str) -> Vec<i32> {
    let name = format!("hangar-{id}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|b| *b == 0).any(|a| a == name.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

async fn sh(guest: &Guest, script: &str) -> String {
    let out = guest
        .exec(
            ExecSpec {
                process: ProcessSpec {
                    argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
                    env: vec!["PATH=/bin".into()],
                    ..Default::default()
                },
                ..Default::default()
            },
            EXEC_TIMEOUT,
        )
        .await
        .expect("exec");
    assert_eq!(
        out.status.code,
        Some(0),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

const COUNTER: &str = "i=0; while true; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/counter; sleep 0.1; done";

/// One machine, many checks: the guest's own kernel, vCPUs and RAM, the image's files with
/// layers applied, exec, suspend and resume keeping memory, a blank slate on the next boot,
/// and a clean teardown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_microvm_is_a_real_vm_with_its_own_kernel() {
    let h = Harness::new().await;
    let id = unique("vm");
    let guest =
        h.vm.boot(&h.spec(&id, &["/bin/sh", "-c", COUNTER], 2, 256))
            .await
            .expect("boot");
    let pid = match guest.main() {
        MainProcess::Running { pid, .. } => pid,
        other => panic!("main process not running: {other:?}"),
    };

    // The guest kernel, not the host's.
    let uname = sh(&guest, "uname -r").await;
    assert_eq!(uname, h.vm.kernel().version);
    let host = nix::sys::utsname::uname().unwrap();
    assert_ne!(uname, host.release().to_string_lossy());
    // guest.cpus and guest.memory_mb.
    assert_eq!(sh(&guest, "nproc").await, "2");
    let mem_kb: u64 = sh(
        &guest,
        "sed -n 's/^MemTotal: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo",
    )
    .await
    .parse()
    .unwrap();
    assert!(
        mem_kb <= 256 * 1024 && mem_kb > 256 * 1024 * 3 / 4,
        "MemTotal {mem_kb} kB for a 256 MB guest"
    );
    // The image with its layers applied: the top layer's file and whiteout.
    assert_eq!(sh(&guest, "cat /etc/motd").await, "from the top layer");
    assert_eq!(
        sh(&guest, "test -e /etc/gone && echo there || echo gone").await,
        "gone"
    );
    // The QEMU process is in its cgroup.
    let qemu = qemu_pids(&id);
    assert_eq!(qemu.len(), 1);
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", qemu[0])).unwrap();
    assert!(cgroups.contains(&format!("hangar-vm/{id}")), "{cgroups}");
    sh(&guest, "echo scribble > /root/scratch-file").await;

    // Suspend: QEMU saves the VM and goes; resume: the same process goes on counting.
    let before: u64 = sh(&guest, "cat /tmp/counter").await.parse().unwrap();
    h.vm.suspend(&id).await.expect("suspend");
    assert!(qemu_pids(&id).is_empty(), "QEMU still runs after suspend");
    assert!(h.machine_dir(&id).join("vmstate").exists());
    let guest = h.vm.resume(&id).await.expect("resume");
    let after: u64 = sh(&guest, "cat /tmp/counter").await.parse().unwrap();
    assert!(
        after >= before,
        "counter went from {before} back to {after}"
    );
    match guest.main() {
        MainProcess::Running { pid: p, .. } => assert_eq!(p, pid, "a new main process"),
        other => panic!("main process not running after resume: {other:?}"),
    }
    assert_eq!(sh(&guest, "cat /root/scratch-file").await, "scribble");
    // It keeps counting.
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let now: u64 = sh(&guest, "cat /tmp/counter").await.parse().unwrap();
            if now > after {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the counter goes on after resume");

    // A signal reaches the main process; it ends, init reports it.
    guest.signal(libc::SIGKILL).await.expect("signal");
    let status = tokio::time::timeout(Duration::from_secs(60), guest.exited())
        .await
        .expect("exit reported")
        .expect("exit status");
    assert_eq!(status.signal, Some(libc::SIGKILL));
    drop(guest);
    let remains = h.vm.teardown(&id).await.expect("teardown");
    assert_eq!(
        remains.reason, None,
        "a VM torn down while running needs no reason"
    );
    h.assert_gone(&id);
    // Torn down gracefully: init ended the machine and the guest kernel powered the VM off.
    let log = std::fs::read_to_string(h.log_path(&id)).unwrap();
    assert!(log.contains("reboot: Power down"), "{log}");

    // The next boot starts from the image again (the blank slate), and the shared image disk
    // was built once.
    let guest =
        h.vm.boot(&h.spec(&id, &["/bin/sleep", "1000"], 1, 128))
            .await
            .expect("second boot");
    assert_eq!(
        sh(
            &guest,
            "test -e /root/scratch-file && echo kept || echo fresh"
        )
        .await,
        "fresh"
    );
    assert_eq!(sh(&guest, "nproc").await, "1");
    let images: Vec<_> = std::fs::read_dir(h.dir.path().join("cache/images"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(images.len(), 1, "one image disk per image");

    // A guest kernel panic ends the VM; teardown says why.
    let _ = guest
        .exec(
            ExecSpec {
                process: ProcessSpec {
                    argv: vec![
                        "/bin/sh".into(),
                        "-c".into(),
                        "echo c > /proc/sysrq-trigger".into(),
                    ],
                    ..Default::default()
                },
                ..Default::default()
            },
            Duration::from_secs(5),
        )
        .await;
    let lost = tokio::time::timeout(Duration::from_secs(60), guest.exited())
        .await
        .expect("the connection ends with the VM");
    assert_eq!(lost, Err(GuestError::Lost));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !qemu_pids(&id).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let remains = h.vm.teardown(&id).await.expect("teardown");
    let reason = remains.reason.expect("a reason");
    assert!(reason.contains("panicked"), "{reason}");
    h.assert_gone(&id);
}

/// A QEMU killed from outside: the control channel is lost and teardown says how QEMU ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_qemu_is_reported() {
    let h = Harness::new().await;
    let id = unique("killed");
    let guest =
        h.vm.boot(&h.spec(&id, &["/bin/sleep", "1000"], 1, 128))
            .await
            .expect("boot");
    let pids = qemu_pids(&id);
    assert_eq!(pids.len(), 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let lost = tokio::time::timeout(Duration::from_secs(30), guest.exited())
        .await
        .expect("the connection ends with QEMU");
    assert_eq!(lost, Err(GuestError::Lost));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let remains = h.vm.teardown(&id).await.expect("teardown");
    let reason = remains.reason.expect("a reason");
    assert!(reason.contains("signal 9"), "{reason}");
    h.assert_gone(&id);
}

/// Bad input is refused before anything is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_leaves_nothing() {
    let h = Harness::new().await;

    // More memory than the host has.
    let id = unique("huge");
    let err =
        h.vm.boot(&h.spec(&id, &["/bin/true"], 1, u32::MAX / 2))
            .await
            .expect_err("memory beyond the host");
    assert!(err.to_string().contains("more than this host has"), "{err}");
    h.assert_gone(&id);

    // An image bigger than the root file system limit (a sparse file counts at its size).
    let big = h.dir.path().join("image/big");
    std::fs::create_dir_all(&big).unwrap();
    std::fs::File::create(big.join("blob"))
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let id = unique("big");
    let mut spec = h.spec(&id, &["/bin/true"], 1, 128);
    spec.layers.push(big);
    spec.rootfs_size_gb = Some(1);
    let err = h.vm.boot(&spec).await.expect_err("image over the limit");
    assert!(err.to_string().contains("size_gb"), "{err}");
    h.assert_gone(&id);
    let leftovers: Vec<_> = std::fs::read_dir(h.dir.path().join("cache/images"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "left in the image cache: {leftovers:?}"
    );

    // A missing kernel, a missing QEMU: the runtime refuses to start, naming what to install.
    let mut config = MicrovmConfig::new(
        h.dir.path().join("s2"),
        h.dir.path().join("cache2"),
        init_binary(),
        h.dir.path().join("no-kernel"),
    );
    config.accel = Accel::Tcg;
    let err = Microvm::new(config.clone()).await.err().expect("no kernel");
    assert!(matches!(err, RuntimeError::Unavailable(_)));
    assert!(err.to_string().contains("linux-image-cloud-amd64"), "{err}");
    config.kernel_dir = KERNEL_DIR.into();
    config.qemu = "/nonexistent/qemu-system-x86_64".into();
    let err = Microvm::new(config.clone()).await.err().expect("no QEMU");
    assert!(err.to_string().contains("qemu-system-x86"), "{err}");

    // --accel kvm: used only if a probe guest boots under it; refused otherwise.
    config.qemu = "qemu-system-x86_64".into();
    config.accel = Accel::Kvm;
    match Microvm::new(config).await {
        Ok(vm) => {
            assert_eq!(vm.accel().accel, Accel::Kvm);
            assert!(vm.accel().reason.contains("probe"), "{}", vm.accel().reason);
        }
        Err(e) => assert!(e.to_string().contains("KVM is unusable"), "{e}"),
    }
}

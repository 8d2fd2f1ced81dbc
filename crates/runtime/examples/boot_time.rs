//! How long a sandbox boot takes next to a bare `runc run -d` of the same bundle.
//!
//! ```text
//! RUSTFLAGS="-C target-feature=+crt-static" cargo build -p hangar-init --release \
//!     --target x86_64-unknown-linux-gnu --target-dir target/init
//! cargo run --release -p hangar-runtime --example boot_time -- [ROUNDS]
//! ```
//!
//! Needs root, runc and busybox-static. Each round runs every variant once, in turn, so that
//! load from elsewhere on the host weighs on all of them alike. Prints medians and
//! percentiles; asserts nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hangar_proto::{LaunchSpec, ProcessSpec};
use hangar_runtime::{become_subreaper, BootSpec, Resources, Runtime, Sandbox, SandboxConfig};

fn image(dir: &Path) -> PathBuf {
    let layer = dir.join("layer");
    std::fs::create_dir_all(layer.join("bin")).unwrap();
    std::fs::create_dir_all(layer.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", layer.join("bin/busybox")).expect("busybox-static");
    for applet in ["sh", "sleep", "true"] {
        std::os::unix::fs::symlink("busybox", layer.join("bin").join(applet)).unwrap();
    }
    std::fs::write(layer.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    layer
}

fn stats(name: &str, samples: &mut [Duration]) -> Duration {
    samples.sort();
    let pct = |p: usize| samples[(samples.len() - 1) * p / 100];
    println!(
        "{name:<46} median {:>6.2} ms   p10 {:>6.2}   p90 {:>6.2}   (n={})",
        pct(50).as_secs_f64() * 1e3,
        pct(10).as_secs_f64() * 1e3,
        pct(90).as_secs_f64() * 1e3,
        samples.len()
    );
    pct(50)
}

fn runc(root: &Path, args: &[&str]) {
    let _ = std::process::Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(args)
        .output();
}

/// One bare `runc run -d`, timed; the container is then killed, reaped and deleted.
fn bare_run(root: &Path, bundle: &Path, pid_file: &Path) -> Duration {
    let cid = format!("bare-{}", std::process::id());
    let t = Instant::now();
    let status = std::process::Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["run", "--detach", "--bundle"])
        .arg(bundle)
        .arg("--pid-file")
        .arg(pid_file)
        .arg(&cid)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    let elapsed = t.elapsed();
    assert!(status.success(), "bare runc run failed");
    runc(root, &["kill", &cid, "KILL"]);
    if let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        // We are the subreaper of the detached container's init.
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    }
    runc(root, &["delete", "--force", &cid]);
    elapsed
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    become_subreaper().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let init = std::env::var_os("HANGAR_INIT")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/init/x86_64-unknown-linux-gnu/release/hangar-init"));
    let dir = tempfile::Builder::new()
        .prefix("hgb")
        .tempdir_in("/tmp")
        .unwrap();
    let layer = image(dir.path());
    let sandbox =
        Sandbox::new(SandboxConfig::new(dir.path().join("s"), &init)).expect("sandbox runtime");
    let id = format!("bench-{}", std::process::id());
    let spec = BootSpec {
        machine_id: id.clone(),
        layers: vec![layer.clone()],
        launch: LaunchSpec {
            machine_id: id.clone(),
            hostname: id.clone(),
            process: ProcessSpec {
                argv: vec!["sleep".into(), "100000".into()],
                ..Default::default()
            },
            files: vec![],
            control: String::new(),
        },
        resources: Resources {
            cpus: 1,
            memory_mb: 256,
        },
        log_path: dir.path().join("machine.log"),
        runtime: None,
        rootfs_size_gb: None,
        netns: None,
    };

    // The bare variants run the sandbox's own config.json on an overlay of the same layer,
    // with only the process changed; their init binds point at a machine directory of their
    // own.
    sandbox.boot(&spec).await.unwrap();
    let state = dir.path().join("s").canonicalize().unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join(&id).join("bundle/config.json")).unwrap())
            .unwrap();
    let launch = std::fs::read(state.join(&id).join("launch.json")).unwrap();
    sandbox.teardown(&id).await.unwrap();
    let bare = dir.path().join("bare");
    for d in ["rootfs", "upper", "work", "ctl", "sleep", "init"] {
        std::fs::create_dir_all(bare.join(d)).unwrap();
    }
    std::fs::write(bare.join("launch.json"), launch).unwrap();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        layer.display(),
        bare.join("upper").display(),
        bare.join("work").display()
    );
    nix::mount::mount(
        Some("overlay"),
        &bare.join("rootfs"),
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(data.as_str()),
    )
    .unwrap();
    config["root"]["path"] = serde_json::json!(bare.join("rootfs"));
    for mount in config["mounts"].as_array_mut().unwrap() {
        match mount["destination"].as_str() {
            Some("/.hangar/launch.json") => {
                mount["source"] = serde_json::json!(bare.join("launch.json"))
            }
            Some("/.hangar/ctl") => mount["source"] = serde_json::json!(bare.join("ctl")),
            _ => {}
        }
    }
    for (name, args) in [
        ("sleep", vec!["/bin/sleep", "100000"]),
        ("init", vec!["/.hangar/init", "/.hangar/launch.json"]),
    ] {
        let mut config = config.clone();
        config["process"]["args"] = serde_json::json!(args);
        config["linux"]["cgroupsPath"] =
            serde_json::json!(format!("/hangar/bare-{}", std::process::id()));
        std::fs::write(
            bare.join(name).join("config.json"),
            serde_json::to_vec(&config).unwrap(),
        )
        .unwrap();
    }
    let bare_root = dir.path().join("bare-runc");
    let pid_file = dir.path().join("bare.pid");

    let mut boots = Vec::new();
    let mut teardowns = Vec::new();
    let mut bare_sleep = Vec::new();
    let mut bare_init = Vec::new();
    // Three warm-up rounds fill the page cache and create the cgroup parents.
    for round in 0..rounds + 3 {
        let t = Instant::now();
        let guest = sandbox.boot(&spec).await.unwrap();
        let boot = t.elapsed();
        drop(guest);
        let t = Instant::now();
        sandbox.teardown(&id).await.unwrap();
        let teardown = t.elapsed();
        let sleep = bare_run(&bare_root, &bare.join("sleep"), &pid_file);
        let init = bare_run(&bare_root, &bare.join("init"), &pid_file);
        if round >= 3 {
            boots.push(boot);
            teardowns.push(teardown);
            bare_sleep.push(sleep);
            bare_init.push(init);
        }
    }
    nix::mount::umount(&bare.join("rootfs")).unwrap();

    println!();
    let boot = stats("Sandbox::boot (until the main process runs)", &mut boots);
    stats("Sandbox::teardown", &mut teardowns);
    let sleep = stats(
        "bare runc run -d, same bundle, process sleep",
        &mut bare_sleep,
    );
    let init = stats(
        "bare runc run -d, same bundle, process init",
        &mut bare_init,
    );
    println!(
        "\nboot / bare runc run -d: {:.2}x (sleep), {:.2}x (init)",
        boot.as_secs_f64() / sleep.as_secs_f64(),
        boot.as_secs_f64() / init.as_secs_f64()
    );
}

//! `bench/lifecycle`: how fast machines start and stop, beside bare `runc run`.
//!
//! Measures, over N runs each (default 30, or the first argument):
//! - create → started, the image already cached;
//! - stop → stopped;
//! - stopped → started (the user's process running);
//! - the baseline: `runc run --detach` of the same image layers (a fresh overlay upper each
//!   run, mounted beforehand and not timed), running the same process.
//!
//! Runs interleave Hangar and the baseline so that drift on a noisy machine hits both alike,
//! with a pause before each timed operation (see `settle`).
//! Needs root, runc, docker-registry and a release build (`make build`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use hangar_bench::{ms, report, Bench, Samples};
use hangar_image::{ImageStore, StoreOptions};
use serde_json::json;

const APP: &str = "bench";

fn main() -> anyhow::Result<()> {
    let runs = hangar_bench::runs_arg(30)?;
    let Bench {
        registry: _registry,
        server,
        image,
        ..
    } = Bench::start(APP)?;
    let config = json!({ "image": image, "init": { "exec": ["/bin/sleep", "100000"] }, "restart": { "policy": "no" } });

    // Warm up: the first create pulls the image; later ones find it cached.
    let warm = server.create_machine(APP, json!({ "config": config }));
    let warm_id = warm["id"].as_str().context("id")?.to_string();
    server.wait_state(APP, &warm_id, "started");
    // Hangar's own runtime spec, to run bare runc with the same hardening as a machine has.
    let spec_path = server
        .data_dir()
        .join(format!("sandbox/{warm_id}/bundle/config.json"));
    let hangar_spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&spec_path).with_context(|| format!("reading {}", spec_path.display()))?,
    )?;
    server.delete(&format!("/v1/apps/{APP}/machines/{warm_id}?force=true"));

    let baseline = RuncBaseline::prepare(&image)?;

    let mut create = Samples::new("create → started (image cached)");
    let mut stop = Samples::new("stop → stopped");
    let mut start = Samples::new("stopped → started");
    let mut runc = Samples::new("baseline: runc run --detach");
    let mut runc_hardened = Samples::new("runc run, Hangar's runtime spec");

    let m = server.create_machine(APP, json!({ "config": config }));
    let id = m["id"].as_str().context("id")?.to_string();
    server.wait_state(APP, &id, "started");

    for i in 0..runs {
        settle();
        runc.push(baseline.run_once(i, None)?);
        settle();
        runc_hardened.push(baseline.run_once(i, Some(&hangar_spec))?);
        settle();

        let created = create.time(|| {
            let m = server.create_machine(APP, json!({ "config": config }));
            let new_id = m["id"].as_str().unwrap_or_default().to_string();
            server.wait_state(APP, &new_id, "started");
            new_id
        });
        server.delete(&format!("/v1/apps/{APP}/machines/{created}?force=true"));
        settle();

        stop.time(|| {
            server.post(&format!("/v1/apps/{APP}/machines/{id}/stop"), json!({}));
            server.wait_state(APP, &id, "stopped");
        });
        settle();
        start.time(|| {
            server.post(&format!("/v1/apps/{APP}/machines/{id}/start"), json!({}));
            server.wait_state(APP, &id, "started");
        });
    }
    server.delete(&format!("/v1/apps/{APP}/machines/{id}?force=true"));

    report(
        &format!("bench/lifecycle: {runs} runs each, sandbox runtime (runc)"),
        &[&create, &stop, &start, &runc_hardened],
        &runc,
    );
    let ratio = start.median().as_secs_f64() / runc.median().as_secs_f64();
    println!(
        "\nstopped → started median {} vs runc run {}: {ratio:.2}x (target: at most 1.5x)",
        ms(start.median()),
        ms(runc.median())
    );
    let own = start.median().as_secs_f64() / runc_hardened.median().as_secs_f64();
    println!(
        "stopped → started vs runc run with Hangar's runtime spec {}: {own:.2}x (what Hangar adds over runc)",
        ms(runc_hardened.median())
    );
    Ok(())
}

/// Waits out the kernel's deferred work from the previous operation before timing the next.
/// A destroyed container's network namespace is torn down asynchronously, and a new namespace
/// made while that runs waits for it: without a pause, whichever operation comes right after a
/// teardown pays for it (measured: the first `runc run` of an iteration took ~14 ms, the
/// second ~22 ms, whichever spec went first).
fn settle() {
    std::thread::sleep(std::time::Duration::from_millis(250));
}

/// Bare runc over the same unpacked layers: the floor Hangar's start is measured against.
struct RuncBaseline {
    dir: tempfile::TempDir,
    layers: Vec<PathBuf>,
}

impl RuncBaseline {
    fn prepare(image: &str) -> anyhow::Result<RuncBaseline> {
        let dir = tempfile::Builder::new()
            .prefix("hangar-bench-runc")
            .tempdir()?;
        let store = ImageStore::open(dir.path().join("images"), StoreOptions::default())?;
        let rt = tokio::runtime::Runtime::new()?;
        let pulled = rt.block_on(store.pull(image))?;
        Ok(RuncBaseline {
            layers: pulled.layers.clone(),
            dir,
        })
    }

    /// One `runc run` with the minimal config, or with `template` (a machine's runtime spec)
    /// pointed at a fresh overlay and running sleep instead of hangar-init.
    fn run_once(
        &self,
        i: usize,
        template: Option<&serde_json::Value>,
    ) -> anyhow::Result<std::time::Duration> {
        let variant = if template.is_some() { "h" } else { "m" };
        let base = self.dir.path().join(format!("run{i}{variant}"));
        let (upper, work, rootfs, bundle) = (
            base.join("upper"),
            base.join("work"),
            base.join("rootfs"),
            base.join("bundle"),
        );
        for d in [&upper, &work, &rootfs, &bundle] {
            std::fs::create_dir_all(d)?;
        }
        let lower: Vec<String> = self
            .layers
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            upper.display(),
            work.display()
        );
        nix::mount::mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(opts.as_str()),
        )
        .context("mounting the baseline's overlay")?;
        let id = format!("bench-baseline-{i}{variant}");
        match template {
            None => write_config(&bundle, &rootfs, &id)?,
            Some(t) => {
                let mut config = t.clone();
                config["root"]["path"] = json!(rootfs);
                config["process"]["args"] = json!(["/bin/sleep", "100000"]);
                config["hostname"] = json!("baseline");
                config["linux"]["cgroupsPath"] = json!(format!("/hangar-bench/{id}"));
                if let Some(mounts) = config["mounts"].as_array_mut() {
                    // Hangar's binds of init and its files: nothing to bind here.
                    mounts.retain(|m| {
                        !m["destination"]
                            .as_str()
                            .unwrap_or("")
                            .starts_with("/.hangar")
                    });
                }
                std::fs::write(
                    bundle.join("config.json"),
                    serde_json::to_vec_pretty(&config)?,
                )?;
            }
        }
        let runc_root = self.dir.path().join("runc");
        let mut samples = Samples::new("runc");
        let status = samples.time(|| {
            Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["run", "--detach", "--bundle"])
                .arg(&bundle)
                .arg(&id)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        })?;
        let took = samples.median();
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["delete", "--force", &id])
            .status();
        nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH)?;
        std::fs::remove_dir_all(&base)?;
        if !status.success() {
            bail!("runc run failed for the baseline");
        }
        Ok(took)
    }
}

/// A minimal OCI config: the namespaces and cgroup limits a Hangar sandbox has, no extras.
fn write_config(bundle: &Path, rootfs: &Path, id: &str) -> anyhow::Result<()> {
    let config = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": ["/bin/sleep", "100000"],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_KILL", "CAP_CHOWN"],
                "permitted": ["CAP_KILL", "CAP_CHOWN"]
            },
            "noNewPrivileges": true
        },
        "root": { "path": rootfs, "readonly": false },
        "hostname": "baseline",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] }
        ],
        "linux": {
            "cgroupsPath": format!("/hangar-bench/{id}"),
            "resources": { "memory": { "limit": 268435456 }, "cpu": { "quota": 100000, "period": 100000 } },
            "namespaces": [{ "type": "pid" }, { "type": "network" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" }]
        }
    });
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&config)?,
    )?;
    Ok(())
}

//! `bench/microvm`: how fast microVMs start, beside bare QEMU booting the same kernel and
//! initramfs to `/init` (the floor) in the same run.
//!
//! Measures, over N runs each (default 10, or the first argument):
//! - create → started (image cached, its ext4 disk built);
//! - stopped → started (a cold boot: fresh scratch disk, kernel, init, the user's process);
//! - suspended → started (resume from QEMU's saved state);
//! - the floor: `qemu-system-x86_64 -M microvm` with the same kernel and initramfs, until
//!   hangar-init announces itself on the console.
//!
//! Also reports the accelerator the server chose (`HANGAR_ACCEL`, default `auto`: KVM only if
//! a probe guest boots under it) and the RSS of the QEMU process of an idle 128 MB microVM.
//! Needs root, qemu-system-x86, docker-registry, the kernel from scripts/fetch-kernel.sh and
//! a release build (`make build`).

use std::time::Duration;

use anyhow::{bail, Context};
use hangar_bench::{ms, report, Bench, Samples};
use hangar_image::{ImageStore, StoreOptions};
use hangar_proto::{LaunchSpec, ProcessSpec};
use hangar_runtime::{Accel, BootSpec, Microvm, MicrovmConfig, Resources, Runtime};
use hangar_testkit::server::qemu_of;
use serde_json::json;

const APP: &str = "bench";
const KERNEL_DIR: &str = "/var/lib/hangar/kernel";

fn main() -> anyhow::Result<()> {
    let runs = hangar_bench::runs_arg(10)?;
    let accel = std::env::var("HANGAR_ACCEL").unwrap_or_else(|_| "auto".into());
    let init = hangar_testkit::init::workspace_root().join("target/release/hangar-init");
    if !init.is_file() {
        bail!("{} is missing: run `make build` first", init.display());
    }
    let Bench {
        registry: _registry,
        server,
        image,
        ..
    } = Bench::start_with(APP, &["--runtime", "microvm", "--accel", &accel])?;
    let status = server.get("/v1/platform/runtime").body;
    let chosen = status["accel"].as_str().unwrap_or("?").to_string();
    let reason = status["accel_reason"].as_str().unwrap_or("").to_string();
    let config = json!({ "image": image, "init": { "exec": ["/bin/sleep", "100000"] }, "restart": { "policy": "no" } });

    // Warm up: the first create pulls the image and builds its disk.
    let warm = server.create_machine(APP, json!({ "config": config }));
    let warm_id = warm["id"].as_str().context("id")?.to_string();
    server.wait_state(APP, &warm_id, "started");
    server.delete(&format!("/v1/apps/{APP}/machines/{warm_id}?force=true"));

    // The floor: bare QEMU, same kernel and initramfs, same accelerator.
    let rt = tokio::runtime::Runtime::new()?;
    let floor_dir = tempfile::Builder::new()
        .prefix("hangar-bench-vm")
        .tempdir()?;
    let mut vm_config = MicrovmConfig::new(
        floor_dir.path().join("s"),
        server.data_dir().join("vm-cache"),
        &init,
        KERNEL_DIR,
    );
    vm_config.accel = if chosen == "kvm" {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    let vm = rt.block_on(Microvm::new(vm_config))?;

    let mut create = Samples::new("create → started");
    let mut start = Samples::new("stopped → started");
    let mut resume = Samples::new("suspended → started (resume)");
    let mut floor = Samples::new("floor: bare QEMU to /init");

    let m = server.create_machine(APP, json!({ "config": config }));
    let id = m["id"].as_str().context("id")?.to_string();
    server.wait_state(APP, &id, "started");

    for _ in 0..runs {
        floor.push(rt.block_on(vm.bare_boot()).map_err(anyhow::Error::msg)?);

        let created = create.time(|| {
            let m = server.create_machine(APP, json!({ "config": config }));
            let new_id = m["id"].as_str().unwrap_or_default().to_string();
            server.wait_state(APP, &new_id, "started");
            new_id
        });
        server.delete(&format!("/v1/apps/{APP}/machines/{created}?force=true"));

        server.post(&format!("/v1/apps/{APP}/machines/{id}/stop"), json!({}));
        server.wait_state(APP, &id, "stopped");
        start.time(|| {
            server.post(&format!("/v1/apps/{APP}/machines/{id}/start"), json!({}));
            server.wait_state(APP, &id, "started");
        });

        server.post(&format!("/v1/apps/{APP}/machines/{id}/suspend"), json!({}));
        server.wait_state(APP, &id, "suspended");
        resume.time(|| {
            server.post(&format!("/v1/apps/{APP}/machines/{id}/start"), json!({}));
            server.wait_state(APP, &id, "started");
        });
    }
    server.delete(&format!("/v1/apps/{APP}/machines/{id}?force=true"));

    // Host memory of an idle 128 MB microVM: its QEMU's RSS once booted and settled.
    let store = ImageStore::open(floor_dir.path().join("images"), StoreOptions::default())?;
    let pulled = rt.block_on(store.pull(&image))?;
    let idle = "bench-idle-rss".to_string();
    let spec = BootSpec {
        machine_id: idle.clone(),
        layers: pulled.layers.clone(),
        launch: LaunchSpec {
            machine_id: idle.clone(),
            hostname: idle.clone(),
            process: ProcessSpec {
                argv: vec!["/bin/sleep".into(), "100000".into()],
                ..Default::default()
            },
            files: vec![],
            control: String::new(),
        },
        resources: Resources {
            cpus: 1,
            memory_mb: 128,
        },
        log_path: floor_dir.path().join("idle.log"),
        runtime: None,
        rootfs_size_gb: None,
        netns: None,
    };
    let guest = rt.block_on(vm.boot(&spec))?;
    std::thread::sleep(Duration::from_secs(2));
    let rss_kb = qemu_of(&idle)
        .first()
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    drop(guest);
    rt.block_on(vm.teardown(&idle))?;

    report(
        &format!(
            "bench/microvm: {runs} runs each, microvm runtime, accelerator {chosen} ({reason})"
        ),
        &[&create, &start, &resume],
        &floor,
    );
    let overhead = start.median().as_secs_f64() / floor.median().as_secs_f64() - 1.0;
    println!(
        "\nstopped → started median {} vs bare QEMU to /init {}: Hangar's overhead {:.0} % (target: at most 15 %)",
        ms(start.median()),
        ms(floor.median()),
        overhead * 100.0
    );
    println!(
        "resume median {} vs cold start median {}: {}",
        ms(resume.median()),
        ms(start.median()),
        if resume.median() < start.median() {
            "resume is faster"
        } else {
            "resume is NOT faster"
        }
    );
    println!(
        "QEMU RSS of an idle 128 MB microVM ({chosen}): {:.1} MB",
        rss_kb as f64 / 1024.0
    );
    Ok(())
}

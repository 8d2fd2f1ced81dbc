//! The microvm runtime through the API: runtime selection per machine, the status endpoint,
//! suspend and resume, and a guest kernel panic. The shared behaviour suite for both runtimes
//! is in `lifecycle.rs`.

mod common;

use common::{World, APP};
use serde_json::json;

/// A sandbox host that can also run microVMs: machines pick theirs with
/// `config.guest.runtime`; the status endpoint says which accelerator `auto` chose and why.
#[test]
fn machines_choose_their_runtime_and_the_host_says_how_it_runs_them() {
    let w = World::with_server_args(&["--extra-runtime", "microvm", "--accel", "auto"]);
    let status = w.server.get("/v1/platform/runtime");
    assert_eq!(status.status, 200, "{status:?}");
    assert_eq!(status.body["default"], "sandbox");
    let vm = status.body["runtimes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "microvm")
        .cloned()
        .expect("microvm listed");
    // KVM only if a probe guest booted under it; on this project's hosts it cannot.
    let reason = vm["accel_reason"].as_str().unwrap_or_default();
    match vm["accel"].as_str() {
        Some("kvm") => assert!(reason.contains("probe guest booted"), "{reason}"),
        Some("tcg") => assert!(reason.contains("KVM unusable"), "{reason}"),
        other => panic!("accelerator {other:?}"),
    }
    let kernel = vm["kernel"].as_str().unwrap().to_string();

    let host_kernel = nix::sys::utsname::uname().unwrap();
    let in_vm = w.run(
        "sleep 1000",
        json!({ "guest": { "runtime": "microvm", "cpus": 2, "memory_mb": 512 } }),
    );
    assert_eq!(w.sh(&in_vm, "uname -r").trim(), kernel);
    assert_eq!(w.sh(&in_vm, "nproc").trim(), "2");
    let in_sandbox = w.run("sleep 1000", json!({}));
    assert_eq!(
        w.sh(&in_sandbox, "uname -r").trim(),
        host_kernel.release().to_string_lossy()
    );
    // Each runtime tears down its own.
    for id in [&in_vm, &in_sandbox] {
        w.stop(id, json!({ "signal": "SIGKILL" }));
        w.server.wait_state(APP, id, "stopped");
        w.assert_no_leftovers(id);
    }

    // A host without the microvm runtime refuses such machines with a 4xx.
    let plain = World::new();
    let r = plain.server.post(
        &format!("/v1/apps/{APP}/machines"),
        json!({ "config": { "image": plain.image, "guest": { "runtime": "microvm" } } }),
    );
    assert!((400..500).contains(&r.status), "{r:?}");
    assert!(r.error().contains("microvm"), "{r:?}");
}

/// Suspend saves the VM to a file; start resumes it where it was: the counter goes on.
/// A guest kernel panic then ends the machine with an event that says so.
#[test]
fn suspend_resumes_memory_and_a_kernel_panic_is_reported() {
    let w = World::with_server_args(&["--runtime", "microvm", "--accel", "tcg"]);
    let id = w.run(
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/counter; sleep 0.1; done",
        json!({ "restart": { "policy": "no" } }),
    );
    let before: u64 = w.wait_sh(&id, "cat /tmp/counter").trim().parse().unwrap();
    let r = w
        .server
        .post(&format!("/v1/apps/{APP}/machines/{id}/suspend"), json!({}));
    assert_eq!(r.status, 200, "{r:?}");
    w.server.wait_state(APP, &id, "suspended");
    assert!(
        hangar_testkit::server::qemu_of(&id).is_empty(),
        "QEMU still runs while suspended"
    );
    w.start(&id);
    w.server.wait_state(APP, &id, "started");
    let after: u64 = w.wait_sh(&id, "cat /tmp/counter").trim().parse().unwrap();
    assert!(
        after >= before,
        "the counter was reset: {before} then {after}"
    );

    // A kernel panic: the machine is lost, the exit event says why.
    let _ = w.server.post(
        &format!("/v1/apps/{APP}/machines/{id}/exec"),
        json!({ "command": ["sh", "-c", "echo c > /proc/sysrq-trigger"], "timeout": 5 }),
    );
    let m = w.wait_until(&id, "the machine to stop", |m| m["state"] == "stopped");
    assert_eq!(m["state"], "stopped");
    let exits = w.exits(&id);
    let error = exits.last().unwrap()["request"]["exit_event"]["guest_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("panicked"), "{exits:?}");
    w.assert_no_leftovers(&id);
}

/// A server that cannot run microVMs refuses to start, says what to install, and leaves no
/// QEMU behind.
#[test]
fn a_host_without_qemu_or_kernel_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hangar"))
            .arg("server")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--runtime",
                "microvm",
                "--accel",
                "tcg",
            ])
            .arg("--init")
            .arg(hangar_testkit::init::init_binary())
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run(&["--qemu", "/nonexistent/qemu-system-x86_64"]);
    assert!(err.contains("apt-get install qemu-system-x86"), "{err}");
    let err = run(&[
        "--kernel",
        "/nonexistent/vmlinuz",
        "--initrd-modules",
        "/nonexistent/modules",
    ]);
    assert!(err.contains("/nonexistent/vmlinuz"), "{err}");
    assert!(!dir
        .path()
        .join("data/vm")
        .read_dir()
        .is_ok_and(|mut d| d.next().is_some()));
}

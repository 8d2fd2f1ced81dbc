//! Machines through their lifecycle, for real: registry, server, runtime, hangar-init. One
//! behaviour suite, run against both runtimes: the sandbox (runc) and the microvm (QEMU,
//! under TCG here).

mod common;

use std::time::{Duration, Instant};

use common::{World, APP};
use serde_json::json;

fn exit_code_is_recorded_and_machine_stops(runtime: &[&str]) {
    let w = World::with_server_args(runtime);
    let id = w.create("exit 7", json!({ "restart": { "policy": "no" } }), false);
    let m = w.wait_until(&id, "the machine to stop by itself", |m| {
        m["state"] == "stopped"
    });
    assert_eq!(m["state"], "stopped");
    let exits = w.exits(&id);
    assert_eq!(exits.len(), 1, "{exits:?}");
    let exit = &exits[0]["request"]["exit_event"];
    assert_eq!(exit["exit_code"], 7);
    assert_eq!(exit["requested_stop"], false);
    assert_eq!(exit["oom_killed"], false);
    assert_eq!(exits[0]["status"], "stopped");
    w.assert_no_leftovers(&id);
}

fn stop_escalates_to_sigkill_after_the_timeout(runtime: &[&str]) {
    let w = World::with_server_args(runtime);
    let id = w.run(
        "trap '' INT; touch /tmp/ready; while true; do sleep 1; done",
        json!({ "restart": { "policy": "no" } }),
    );
    // The trap is set before the stop (a VM's shell may still be starting when it is started).
    w.wait_sh(&id, "test -e /tmp/ready && echo ready");
    let began = Instant::now();
    w.stop(&id, json!({ "signal": "SIGINT", "timeout": "2s" }));
    w.server.wait_state(APP, &id, "stopped");
    let took = began.elapsed();
    // The process ignores SIGINT, so it must outlive the two-second timeout and die by SIGKILL.
    assert!(
        took >= Duration::from_millis(1900),
        "stopped after {took:?}, before the timeout"
    );
    let exit = &w.exits(&id)[0]["request"]["exit_event"];
    assert_eq!(exit["signal"], 9, "{exit}");
    assert_eq!(exit["exit_code"], 137);
    assert_eq!(exit["requested_stop"], true);
    w.assert_no_leftovers(&id);
}

fn graceful_stop_uses_the_signal(runtime: &[&str]) {
    let w = World::with_server_args(runtime);
    let id = w.run(
        "trap 'echo bye; exit 3' TERM; touch /tmp/ready; while true; do sleep 0.1; done",
        json!({}),
    );
    w.wait_sh(&id, "test -e /tmp/ready && echo ready");
    w.stop(&id, json!({ "signal": "SIGTERM", "timeout": "10s" }));
    w.server.wait_state(APP, &id, "stopped");
    let exit = &w.exits(&id)[0]["request"]["exit_event"];
    assert_eq!(exit["exit_code"], 3, "the trap ran: {exit}");
    assert_eq!(exit["requested_stop"], true);
    // A requested stop is never restarted, whatever the policy.
    assert_eq!(w.machine(&id)["state"], "stopped");
}

fn exec_returns_stdout_stderr_and_exit_code(runtime: &[&str]) {
    let w = World::with_server_args(runtime);
    let id = w.run("sleep 1000", json!({ "env": { "GREETING": "hi there" } }));
    let out = w.exec(
        &id,
        &["sh", "-c", "echo \"$GREETING\"; echo oops >&2; exit 5"],
    );
    assert_eq!(out["stdout"], "hi there\n");
    assert_eq!(out["stderr"], "oops\n");
    assert_eq!(out["exit_code"], 5);
    // The machine's identity and the image's environment are there too.
    assert_eq!(w.sh(&id, "hostname").trim(), id);
    assert_eq!(
        w.sh(&id, "echo $FLY_MACHINE_ID $FROM_IMAGE").trim(),
        format!("{id} yes")
    );
    let missing = w.exec(&id, &["/no/such/command"]);
    assert_ne!(missing["exit_code"], 0, "{missing}");
}

fn every_start_gets_a_blank_root_filesystem(runtime: &[&str]) {
    let w = World::with_server_args(runtime);
    let id = w.run("sleep 1000", json!({}));
    w.sh(&id, "echo scribble > /etc/scribble; echo more > /tmp/more");
    assert_eq!(w.sh(&id, "cat /etc/scribble"), "scribble\n");
    w.stop(&id, json!({ "signal": "SIGKILL" }));
    w.server.wait_state(APP, &id, "stopped");
    w.assert_no_leftovers(&id);
    w.start(&id);
    w.server.wait_state(APP, &id, "started");
    let check = w.exec(&id, &["sh", "-c", "ls /etc/scribble /tmp/more"]);
    assert_ne!(
        check["exit_code"], 0,
        "files from the previous run survived: {check}"
    );
    // The image's own files are still there.
    assert_eq!(w.sh(&id, "test -x /bin/busybox && echo ok"), "ok\n");
}

fn restart_policy_always_restarts_an_exiting_process(runtime: &[&str]) {
    let w = World::with_server_args(runtime);
    let id = w.create(
        "echo run; exit 0",
        json!({ "restart": { "policy": "always" } }),
        false,
    );
    w.wait_until(&id, "two restarts", |_| w.exits(&id).len() >= 3);
    let exits = w.exits(&id);
    assert!(
        exits
            .iter()
            .all(|e| e["request"]["exit_event"]["restarting"] == true),
        "{exits:?}"
    );
    // A requested stop ends the cycle.
    w.stop(&id, json!({}));
    w.server.wait_state(APP, &id, "stopped");
    let settled = w.exits(&id).len();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        w.exits(&id).len(),
        settled,
        "restarted after a requested stop"
    );
    assert_eq!(w.machine(&id)["state"], "stopped");
}

fn restart_policy_on_failure_gives_up_after_max_retries(runtime: &[&str]) {
    let w = World::with_server_args(runtime);
    let id = w.create(
        "exit 1",
        json!({ "restart": { "policy": "on-failure", "max_retries": 2 } }),
        false,
    );
    let m = w.wait_until(&id, "the retries to run out", |m| {
        m["state"] == "stopped"
            && m["events"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|e| e["type"] == "exit" && e["status"] == "stopped")
            })
    });
    assert_eq!(m["state"], "stopped");
    let exits = w.exits(&id);
    assert_eq!(exits.len(), 3, "one run and two retries: {exits:?}");
    let restarting: Vec<_> = exits
        .iter()
        .map(|e| e["request"]["exit_event"]["restarting"].clone())
        .collect();
    assert_eq!(restarting, [json!(true), json!(true), json!(false)]);
    assert_eq!(exits[2]["request"]["restart_count"], 2);
}

fn on_failure_does_not_restart_a_success(runtime: &[&str]) {
    let w = World::with_server_args(runtime);
    let id = w.create(
        "exit 0",
        json!({ "restart": { "policy": "on-failure" } }),
        false,
    );
    w.wait_until(&id, "the machine to stop", |m| m["state"] == "stopped");
    assert_eq!(w.exits(&id).len(), 1);
}

fn auto_destroy_destroys_when_the_process_exits(runtime: &[&str]) {
    let w = World::with_server_args(runtime);
    let id = w.create("echo done", json!({ "auto_destroy": true }), false);
    let m = w.wait_until(&id, "auto destroy", |m| m["state"] == "destroyed");
    assert_eq!(m["state"], "destroyed");
    let listed = w.server.get(&format!("/v1/apps/{APP}/machines")).body;
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    w.assert_no_leftovers(&id);
}

fn skip_launch_creates_without_starting(runtime: &[&str]) {
    let w = World::with_server_args(runtime);
    let id = w.create("sleep 1000", json!({}), true);
    assert_eq!(w.machine(&id)["state"], "created");
    w.start(&id);
    w.server.wait_state(APP, &id, "started");
    let r = w.server.delete(&format!("/v1/apps/{APP}/machines/{id}"));
    assert_eq!(r.status, 412, "a started machine needs force: {r:?}");
    let r = w
        .server
        .delete(&format!("/v1/apps/{APP}/machines/{id}?force=true"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(w.machine(&id)["state"], "destroyed");
    w.assert_no_leftovers(&id);
}

fn machine_runs_as_the_image_user_with_merged_config(runtime: &[&str]) {
    let w = World::with_server_args(runtime);
    let id = w.run(
        "id -u > /tmp/main-uid; sleep 1000",
        json!({
            "env": { "FROM_IMAGE": "overridden", "EXTRA": "1" },
            "processes": [{ "user": "app" }],
            "files": [{ "guest_path": "/etc/motd", "raw_value": "d2VsY29tZQo=", "mode": 420 }]
        }),
    );
    // PID 1 is hangar-init (bound in by the sandbox, the initramfs's /init in a microVM).
    assert_eq!(w.sh(&id, "cat /proc/1/comm"), "init\n");
    assert_eq!(w.sh(&id, "echo $FROM_IMAGE $EXTRA"), "overridden 1\n");
    assert_eq!(w.sh(&id, "cat /etc/motd"), "welcome\n");
    // The main process runs as `app`; execs run as root, as on Fly.
    assert_eq!(w.wait_sh(&id, "cat /tmp/main-uid"), "1000\n");
    assert_eq!(w.sh(&id, "id -u"), "0\n");
}

fn machines_survive_a_killed_server(runtime: &[&str]) {
    let mut w = World::with_server_args(runtime);
    let id = w.run(
        "echo $$ > /tmp/pid; while true; do sleep 1; done",
        json!({ "restart": { "policy": "no" } }),
    );
    let before = w.wait_sh(&id, "cat /tmp/pid");
    w.server.kill();
    w.server.restart();
    assert_eq!(w.machine(&id)["state"], "started");
    // Same process, not a new boot: the scratch file and its pid are still there.
    assert_eq!(w.sh(&id, "cat /tmp/pid"), before);
    w.stop(&id, json!({ "signal": "SIGKILL" }));
    w.server.wait_state(APP, &id, "stopped");
    w.assert_no_leftovers(&id);
}

fn an_exit_while_the_server_is_down_is_recorded_after_restart(runtime: &[&str]) {
    let mut w = World::with_server_args(runtime);
    let id = w.run(
        "while [ ! -e /tmp/go ]; do sleep 0.1; done; exit 4",
        json!({ "restart": { "policy": "no" } }),
    );
    w.server.kill();
    // Make the process exit while nobody is listening: write the trigger file into the
    // machine's root filesystem through its mount on the host.
    let rootfs = w.server.data_dir().join("sandbox").join(&id).join("rootfs");
    std::fs::write(rootfs.join("tmp/go"), b"").expect("trigger file");
    std::thread::sleep(Duration::from_millis(500));
    w.server.restart();
    let m = w.wait_until(&id, "the exit to be recorded", |m| m["state"] == "stopped");
    assert_eq!(m["state"], "stopped");
    assert_eq!(w.exits(&id)[0]["request"]["exit_event"]["exit_code"], 4);
    w.assert_no_leftovers(&id);
}

fn sigterm_shuts_the_server_down_without_stopping_machines(runtime: &[&str]) {
    let mut w = World::with_server_args(runtime);
    let id = w.run("sleep 1000", json!({}));
    let status = w.server.terminate();
    assert!(status.success(), "clean exit: {status}");
    w.server.restart();
    assert_eq!(w.machine(&id)["state"], "started");
    assert_eq!(w.sh(&id, "echo alive"), "alive\n");
}

fn events_tell_the_story(runtime: &[&str]) {
    let w = World::with_server_args(runtime);
    let id = w.run("sleep 1000", json!({}));
    w.stop(&id, json!({ "signal": "SIGTERM" }));
    w.server.wait_state(APP, &id, "stopped");
    let mut events = w.events(&id);
    events.reverse();
    let story: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "{}/{}/{}",
                e["type"].as_str().unwrap(),
                e["status"].as_str().unwrap(),
                e["source"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        story,
        [
            "launch/created/user",
            "start/starting/user",
            "start/started/flyd",
            "stop/stopping/user",
            "exit/stopped/flyd"
        ]
    );
    let mut last = 0;
    for e in &events {
        let ts = e["timestamp"].as_i64().expect("timestamp in ms");
        assert!(ts >= last && ts > 1_600_000_000_000, "{e}");
        last = ts;
    }
    let limited = w
        .server
        .get(&format!("/v1/apps/{APP}/machines/{id}/events?limit=2"))
        .body;
    assert_eq!(limited.as_array().map(Vec::len), Some(2));
    assert_eq!(limited[0]["type"], "exit", "newest first");
}

/// The microvm runtime under TCG, the only accelerator that works on this project's hosts.
const MICROVM: &[&str] = &["--runtime", "microvm", "--accel", "tcg"];

macro_rules! suite {
    ($runtime:ident, $args:expr, [$($test:ident),* $(,)?]) => {
        mod $runtime {
            $(
                #[test]
                fn $test() {
                    super::$test($args)
                }
            )*
        }
    };
}

suite!(
    sandbox,
    &[],
    [
        exit_code_is_recorded_and_machine_stops,
        stop_escalates_to_sigkill_after_the_timeout,
        graceful_stop_uses_the_signal,
        exec_returns_stdout_stderr_and_exit_code,
        every_start_gets_a_blank_root_filesystem,
        restart_policy_always_restarts_an_exiting_process,
        restart_policy_on_failure_gives_up_after_max_retries,
        on_failure_does_not_restart_a_success,
        auto_destroy_destroys_when_the_process_exits,
        skip_launch_creates_without_starting,
        machine_runs_as_the_image_user_with_merged_config,
        machines_survive_a_killed_server,
        an_exit_while_the_server_is_down_is_recorded_after_restart,
        sigterm_shuts_the_server_down_without_stopping_machines,
        events_tell_the_story
    ]
);

// Not `an_exit_while_the_server_is_down_is_recorded_after_restart`: it reaches into the
// machine through the sandbox's root file system mount on the host, which a VM does not have.
suite!(
    microvm,
    super::MICROVM,
    [
        exit_code_is_recorded_and_machine_stops,
        stop_escalates_to_sigkill_after_the_timeout,
        graceful_stop_uses_the_signal,
        exec_returns_stdout_stderr_and_exit_code,
        every_start_gets_a_blank_root_filesystem,
        restart_policy_always_restarts_an_exiting_process,
        restart_policy_on_failure_gives_up_after_max_retries,
        on_failure_does_not_restart_a_success,
        auto_destroy_destroys_when_the_process_exits,
        skip_launch_creates_without_starting,
        machine_runs_as_the_image_user_with_merged_config,
        machines_survive_a_killed_server,
        sigterm_shuts_the_server_down_without_stopping_machines,
        events_tell_the_story
    ]
);

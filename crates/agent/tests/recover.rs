//! Crash recovery, every branch: a machine recorded in each state, with the flow a crash
//! left recorded, its process still running or gone; the agent opens on that store and
//! must finish or roll back each one. The runtime is testkit's fake, so this runs without
//! root; the real runtimes' recovery is in crates/hangar/tests.

mod common;

use std::time::Duration;

use common::{config, host, left, open, recovered, Host};
use hangar_agent::{Wait, WaitFor};
use hangar_testkit::Call;
use hangar_types::MachineState;
use serde_json::{json, Value};

use MachineState::*;

fn stop_flow() -> Value {
    json!({ "op": "stop", "signal": 15, "timeout_ms": 2000 })
}

fn user_restart_flow() -> Value {
    json!({ "op": "user_restart", "signal": 15, "timeout_ms": 2000 })
}

fn update_flow(h: &Host, id: &str, from: &str, skip_launch: bool) -> Value {
    let mut config = serde_json::to_value(config(h)).unwrap();
    config["env"] = json!({ "NEW": "1" });
    json!({
        "op": "update",
        "version": { "instance_id": format!("V2-{id}"), "config": config, "image_ref": h.image.image_ref },
        "skip_launch": skip_launch,
        "from": from,
        "signal": 15,
        "timeout_ms": 2000,
    })
}

/// One case: what the crash left, and where recovery must take it.
struct Case {
    id: &'static str,
    state: MachineState,
    flow: Option<Value>,
    running: bool,
    settles_in: MachineState,
    /// The machine is booted afresh during recovery.
    boots: bool,
    /// Something of the machine runs after recovery.
    runs_after: bool,
}

fn cases(h: &Host) -> Vec<Case> {
    let c = |id, state, flow, running, settles_in, boots, runs_after| Case {
        id,
        state,
        flow,
        running,
        settles_in,
        boots,
        runs_after,
    };
    vec![
        c("started-running", Started, None, true, Started, false, true),
        c("started-lost", Started, None, false, Stopped, false, false),
        c(
            "starting-booted",
            Starting,
            Some(json!({"op": "start"})),
            true,
            Started,
            false,
            true,
        ),
        c(
            "starting-unbooted",
            Starting,
            Some(json!({"op": "start"})),
            false,
            Started,
            true,
            true,
        ),
        c(
            "resuming-gone",
            Starting,
            Some(json!({"op": "resume"})),
            false,
            Started,
            true,
            true,
        ),
        c(
            "stopping-running",
            Stopping,
            Some(stop_flow()),
            true,
            Stopped,
            false,
            false,
        ),
        c(
            "stopping-gone",
            Stopping,
            Some(stop_flow()),
            false,
            Stopped,
            false,
            false,
        ),
        c(
            "stopping-no-flow",
            Stopping,
            None,
            true,
            Stopped,
            false,
            false,
        ),
        c(
            "suspending-running",
            Suspending,
            Some(json!({"op": "suspend"})),
            true,
            Stopped,
            false,
            false,
        ),
        c(
            "suspending-gone",
            Suspending,
            Some(json!({"op": "suspend"})),
            false,
            Stopped,
            false,
            false,
        ),
        c(
            "user-restart-running",
            Restarting,
            Some(user_restart_flow()),
            true,
            Started,
            true,
            true,
        ),
        c(
            "user-restart-gone",
            Restarting,
            Some(user_restart_flow()),
            false,
            Started,
            true,
            true,
        ),
        c(
            "auto-restart-gone",
            Restarting,
            Some(json!({"op": "restart"})),
            false,
            Started,
            true,
            true,
        ),
        c(
            "auto-restart-leftover",
            Restarting,
            Some(json!({"op": "restart"})),
            true,
            Started,
            true,
            true,
        ),
        c(
            "update-running",
            Updating,
            Some(update_flow(h, "update-running", "started", false)),
            true,
            Started,
            true,
            true,
        ),
        c(
            "update-stopped",
            Updating,
            Some(update_flow(h, "update-stopped", "stopped", true)),
            false,
            Stopped,
            false,
            false,
        ),
        c(
            "update-created",
            Updating,
            Some(update_flow(h, "update-created", "created", true)),
            false,
            Created,
            false,
            false,
        ),
        c(
            "update-unreadable",
            Updating,
            Some(json!({"op": "nonsense"})),
            true,
            Stopped,
            false,
            false,
        ),
        c(
            "destroying-running",
            Destroying,
            Some(json!({"op": "destroy"})),
            true,
            Destroyed,
            false,
            false,
        ),
        c(
            "destroying-gone",
            Destroying,
            Some(json!({"op": "destroy"})),
            false,
            Destroyed,
            false,
            false,
        ),
        c(
            "stopped-leftover",
            Stopped,
            None,
            true,
            Stopped,
            false,
            false,
        ),
        c("stopped", Stopped, None, false, Stopped, false, false),
        c("created", Created, None, false, Created, false, false),
        c("failed", Failed, None, false, Failed, false, false),
    ]
}

#[tokio::test]
async fn every_state_flow_and_process_combination_recovers() {
    let h = host().await;
    let cases = cases(&h);
    for case in &cases {
        left(&h, case.id, case.state, case.flow.clone(), case.running);
    }
    // A machine the store does not know: its remains go at open.
    h.runtime.left_running("stray");

    let _agent = open(&h).await;
    for case in &cases {
        let what = format!(
            "{} ({} with flow {:?}, running: {})",
            case.id, case.state, case.flow, case.running
        );
        recovered(&h, case.id, case.settles_in).await;
        let booted = h.runtime.calls().contains(&Call::Boot(case.id.into()));
        assert_eq!(booted, case.boots, "{what}: booted");
        assert_eq!(
            h.runtime.is_running(case.id),
            case.runs_after,
            "{what}: runs"
        );
        if !case.runs_after {
            assert!(!h.runtime.has(case.id), "{what}: remains left on the host");
        }
    }
    assert!(
        !h.runtime.has("stray"),
        "a stray machine's remains are removed"
    );
}

#[tokio::test]
async fn a_suspended_machine_is_left_frozen_and_not_attached() {
    let h = host().await;
    left(&h, "frozen", Suspended, None, false);
    let agent = open(&h).await;
    // The actor answers commands only once its recovery is over; suspending a suspended
    // machine is a no-op.
    agent.suspend_machine("app", "frozen", None).await.unwrap();
    recovered(&h, "frozen", Suspended).await;
    assert!(
        !h.runtime.calls().contains(&Call::Attach("frozen".into())),
        "attaching would wait on a frozen process"
    );
}

#[tokio::test]
async fn an_interrupted_update_installs_the_new_version() {
    let h = host().await;
    left(
        &h,
        "upd",
        Updating,
        Some(update_flow(&h, "upd", "started", false)),
        true,
    );
    let agent = open(&h).await;
    recovered(&h, "upd", Started).await;
    let m = agent.get_machine("app", "upd").unwrap();
    assert_eq!(m.instance_id, "V2-upd");
    assert_eq!(m.config.env.get("NEW").map(String::as_str), Some("1"));
    // The old boot's exit is recorded with the update's state change.
    let kinds: Vec<(String, String)> = m
        .events
        .iter()
        .rev()
        .map(|e| (e.kind.clone(), e.status.clone()))
        .collect();
    let exit = kinds
        .iter()
        .position(|k| k.0 == "exit")
        .expect("an exit event");
    assert_eq!(kinds[exit].1, "updating");
    assert_eq!(kinds[exit + 1], ("update".into(), "starting".into()));
}

#[tokio::test]
async fn a_lost_machine_records_why_its_process_ended() {
    let h = host().await;
    left(&h, "lost", Started, None, false);
    let agent = open(&h).await;
    recovered(&h, "lost", Stopped).await;
    let events = agent.machine_events("app", "lost", 5).unwrap();
    let exit = events
        .iter()
        .find(|e| e.kind == "exit")
        .expect("an exit event");
    let guest_error = &exit.request.as_ref().unwrap()["exit_event"]["guest_error"];
    assert!(
        guest_error.as_str().unwrap().contains("lost contact"),
        "{guest_error}"
    );
}

#[tokio::test]
async fn a_started_machine_whose_process_exits_after_recovery_is_stopped() {
    let h = host().await;
    left(&h, "exits", Started, None, true);
    let agent = open(&h).await;
    recovered(&h, "exits", Started).await;
    h.runtime.exit("exits", 3);
    let w = Wait {
        states: vec![WaitFor::State(Stopped)],
        version: Some("V1-exits"),
        from_event_id: None,
        timeout: Duration::from_secs(20),
    };
    agent.wait_machine("app", "exits", w).await.unwrap();
    let events = agent.machine_events("app", "exits", 5).unwrap();
    let exit = events.iter().find(|e| e.kind == "exit").unwrap();
    assert_eq!(exit.request.as_ref().unwrap()["exit_event"]["exit_code"], 3);
}

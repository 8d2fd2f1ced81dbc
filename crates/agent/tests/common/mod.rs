//! The agent on testkit's fake runtime: a store in a temporary directory, a local image,
//! and the fake runtime standing in for runc and QEMU.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use hangar_agent::{Agent, AgentConfig};
use hangar_image::{Image, ImageStore, StoreOptions};
use hangar_store::{AppRecord, MachineRecord, Store};
use hangar_testkit::{Call, FakeRuntime, ImageBuilder, Layer};
use hangar_types::{MachineConfig, MachineEvent, MachineState};
use serde_json::{json, Value};

pub struct Host {
    _dir: tempfile::TempDir,
    pub data: std::path::PathBuf,
    pub store: Arc<Store>,
    pub images: ImageStore,
    pub runtime: Arc<FakeRuntime>,
    pub image: Image,
    /// The host's memory capacity the agent opens with.
    pub capacity_mb: u64,
}

pub async fn host() -> Host {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let store = Arc::new(Store::open(&data.join("state.db")).unwrap());
    let images = ImageStore::open(data.join("images"), StoreOptions::default()).unwrap();
    let layout = dir.path().join("layout");
    ImageBuilder::new()
        .layer(Layer::new().file("bin/app", b"#!/bin/sh\n".to_vec(), 0o755))
        .entrypoint(&["/bin/app"])
        .write_oci_layout(&layout, "app:v1");
    let image = images.import(&layout, Some("local/app:v1")).await.unwrap();
    store
        .create_app(&AppRecord {
            id: "app_1".into(),
            name: "app".into(),
            numeric_id: 0,
            org_slug: "personal".into(),
            network: "default".into(),
            created_at_ms: 1,
        })
        .unwrap();
    Host {
        _dir: dir,
        data,
        store,
        images,
        runtime: FakeRuntime::new(),
        image,
        capacity_mb: 64 * 1024,
    }
}

pub fn config(h: &Host) -> MachineConfig {
    serde_json::from_value(json!({
        "image": h.image.reference,
        "restart": { "policy": "no" },
        "stop_config": { "timeout": "2s" },
    }))
    .unwrap()
}

/// Records a machine as a crashed server left it.
pub fn left(h: &Host, id: &str, state: MachineState, flow: Option<Value>, running: bool) {
    let rec = MachineRecord {
        id: id.into(),
        app: "app".into(),
        name: id.into(),
        region: "local".into(),
        state,
        instance_id: format!("V1-{id}"),
        config: config(h),
        image_ref: h.image.image_ref.clone(),
        restart_count: 0,
        flow,
        cordoned: false,
        created_at_ms: 1,
        updated_at_ms: 1,
    };
    let event = MachineEvent {
        id: format!("ev-{id}"),
        kind: "launch".into(),
        status: "created".into(),
        source: "user".into(),
        timestamp: 1,
        request: None,
    };
    h.store.insert_machine(&rec, &event).unwrap();
    if running {
        h.runtime.left_running(id);
    }
}

pub async fn open(h: &Host) -> Agent {
    Agent::open(AgentConfig {
        data_dir: h.data.clone(),
        region: "local".into(),
        store: h.store.clone(),
        images: h.images.clone(),
        runtime: std::sync::Arc::new(hangar_runtime::Runtimes::single(h.runtime.clone())),
        memory_capacity_mb: Some(h.capacity_mb),
        schedule_hour: Duration::from_secs(3600),
        network: None,
    })
    .await
    .unwrap()
}

/// Waits until `done` holds, polling; panics with the last observation after 20 s.
pub async fn eventually(what: &str, mut done: impl FnMut() -> Result<(), String>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match done() {
            Ok(()) => return,
            Err(last) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: still not so after 20 s: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Waits until recovery has looked at the machine (attached, or not tried to) and the
/// machine is recorded in `state` with no flow under way.
pub async fn recovered(h: &Host, id: &str, state: MachineState) {
    let attaches = state != MachineState::Suspended;
    eventually(&format!("machine {id} recovers to {state}"), || {
        let rec = h.store.get_machine(id).unwrap().unwrap();
        let looked = !attaches || h.runtime.calls().contains(&Call::Attach(id.into()));
        if looked && rec.state == state && rec.flow.is_none() {
            Ok(())
        } else {
            Err(format!(
                "{} with flow {:?}, attached: {looked}",
                rec.state, rec.flow
            ))
        }
    })
    .await;
}

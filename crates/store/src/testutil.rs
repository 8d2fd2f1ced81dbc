//! What the store's unit tests build their records from.

use hangar_types::{ImageRef, MachineEvent, MachineState};

use crate::{now_ms, AppRecord, FlowChange, MachineRecord, Store, Transition};

pub(crate) fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("state.db")).unwrap();
    (dir, s)
}

pub(crate) fn event(kind: &str, status: &str) -> MachineEvent {
    MachineEvent {
        id: hangar_types::new_event_id(),
        kind: kind.into(),
        status: status.into(),
        source: "user".into(),
        timestamp: now_ms(),
        request: None,
    }
}

pub(crate) fn machine(id: &str, name: &str) -> MachineRecord {
    MachineRecord {
        id: id.into(),
        app: "app".into(),
        name: name.into(),
        region: "local".into(),
        state: MachineState::Created,
        instance_id: hangar_types::new_instance_id(),
        config: serde_json::from_str(r#"{"image":"busybox"}"#).unwrap(),
        image_ref: ImageRef::default(),
        restart_count: 0,
        flow: None,
        created_at_ms: now_ms(),
        updated_at_ms: now_ms(),
        cordoned: false,
    }
}

pub(crate) fn app(name: &str) -> AppRecord {
    AppRecord {
        name: name.into(),
        id: name.into(),
        numeric_id: 0,
        org_slug: "personal".into(),
        network: "default".into(),
        created_at_ms: 1,
    }
}

/// A bare state change: no events, no flow, no version, no reservation.
pub(crate) fn change(from: MachineState, to: MachineState) -> Transition<'static> {
    Transition {
        from,
        to,
        events: &[],
        flow: FlowChange::Keep,
        restart_count: None,
        version: None,
        reserve: None,
    }
}

pub(crate) fn go(s: &Store, id: &str, from: MachineState, to: MachineState) {
    s.transition(id, change(from, to)).unwrap();
}

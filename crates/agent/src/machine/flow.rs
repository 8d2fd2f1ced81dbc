//! The operation under way, as recorded in the store so a restarted agent can finish it.

use hangar_store::FlowChange;
use hangar_types::{ImageRef, MachineConfig, MachineState};
use serde::{Deserialize, Serialize};

/// A config version an update is about to install.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PendingVersion {
    pub instance_id: String,
    pub config: MachineConfig,
    pub image_ref: ImageRef,
    #[serde(default)]
    pub name: Option<String>,
}

/// The stored shape is a wire format between server versions: add variants, never rename.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum Flow {
    Start,
    /// A start of a suspended machine: resume it, else boot it afresh.
    Resume,
    Stop {
        signal: i32,
        timeout_ms: u64,
    },
    /// An automatic restart after the process exited (the restart policy).
    Restart,
    /// A restart the user asked for.
    UserRestart {
        signal: i32,
        timeout_ms: u64,
    },
    Suspend,
    Update {
        version: Box<PendingVersion>,
        skip_launch: bool,
        /// Where the machine was when the update began (`created` stays `created`).
        from: MachineState,
        signal: i32,
        timeout_ms: u64,
    },
    Destroy,
}

impl Flow {
    pub(super) fn record(&self) -> FlowChange {
        FlowChange::Set(serde_json::to_value(self).expect("flows serialize"))
    }

    /// The flow recorded on a machine; `None` when none is, or it cannot be read.
    pub(super) fn of(recorded: Option<&serde_json::Value>) -> Option<Flow> {
        recorded.and_then(|v| serde_json::from_value(v.clone()).ok())
    }
}

//! Machines, their events, and the request and response bodies of the machine endpoints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::check::CheckStatus;
use crate::config::MachineConfig;
use crate::duration::GoDuration;
use crate::signal::Signal;
use crate::state::MachineState;

/// A machine as the API returns it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub id: String,
    pub name: String,
    pub state: MachineState,
    pub region: String,
    pub instance_id: String,
    /// fly-go's newer name for `instance_id`.
    pub version: String,
    pub private_ip: String,
    pub config: MachineConfig,
    pub image_ref: ImageRef,
    pub created_at: String,
    pub updated_at: String,
    pub events: Vec<MachineEvent>,
    #[serde(default)]
    pub checks: Vec<CheckStatus>,
    pub host_status: String,
    /// Fly sets this while a machine's config is being assembled; Hangar records configs
    /// whole, so there is none. Omitted rather than null: the spec types it as an object, and
    /// clients (fly-go's pointer) read an absent field as null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete_config: Option<MachineConfig>,
    /// The proxy routes no traffic to a cordoned machine.
    #[serde(default)]
    pub cordoned: bool,
    /// The lease nonce, only on a create or update that asked for a lease (`lease_ttl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub tag: String,
    pub digest: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// One entry of a machine's history, in Fly's shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MachineEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    /// `user` for what a caller asked for, `flyd` for what the host did on its own.
    pub source: String,
    /// Unix time in milliseconds.
    pub timestamp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Value>,
}

/// How a machine's process ended: the `request.exit_event` of an `exit` event.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExitEvent {
    pub exit_code: i32,
    pub guest_exit_code: i32,
    /// The signal that ended the process, or -1.
    pub signal: i32,
    pub guest_signal: i32,
    pub oom_killed: bool,
    pub requested_stop: bool,
    pub restarting: bool,
    pub exited_at: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub guest_error: String,
}

/// The body of a create (`POST /apps/{app}/machines`) and of an update
/// (`POST /apps/{app}/machines/{id}`, which adds `current_version`).
#[derive(Clone, Debug, Deserialize)]
pub struct CreateMachineRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    pub config: MachineConfig,
    #[serde(default)]
    pub skip_launch: bool,
    #[serde(default)]
    pub skip_service_registration: bool,
    #[serde(default)]
    pub lease_ttl: Option<u64>,
    #[serde(default)]
    pub skip_secrets: bool,
    #[serde(default)]
    pub min_secrets_version: Option<u64>,
    /// Update only: the version (`instance_id`) the caller last saw; a newer one is a conflict.
    #[serde(default)]
    pub current_version: Option<String>,
    #[serde(default)]
    pub lsvd: bool,
}

pub type UpdateMachineRequest = CreateMachineRequest;

/// `POST .../signal`: fly-go sends the number (`{"signal": 9}`), the spec a name.
#[derive(Clone, Debug, Deserialize)]
pub struct SignalRequest {
    pub signal: Signal,
}

/// `POST .../lease`: the TTL may come here or as `?ttl=` (fly-go's way, with no body).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CreateLeaseRequest {
    #[serde(default)]
    pub ttl: Option<u64>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub nonce: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub owner: String,
    pub description: String,
    /// The machine version the lease was taken on.
    pub version: String,
}

/// Leases travel wrapped, as Fly's docs show and fly-go decodes them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeaseResponse<T> {
    pub status: String,
    pub data: T,
}

impl<T> LeaseResponse<T> {
    pub fn success(data: T) -> Self {
        LeaseResponse {
            status: "success".into(),
            data,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MachineVersion {
    pub version: String,
    pub user_config: MachineConfig,
}

/// A process inside a machine, as `GET .../ps` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessStat {
    pub pid: i32,
    pub command: String,
    pub directory: String,
    /// CPU time used, in clock ticks (user + system).
    pub cpu: u64,
    /// Resident memory in bytes.
    pub rss: u64,
    /// Wall time since the process started, in milliseconds.
    pub rtime: u64,
    /// System CPU time, in clock ticks.
    pub stime: u64,
    pub listen_sockets: Vec<ListenSocket>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenSocket {
    pub proto: String,
    pub address: String,
}

/// `PUT`/`PATCH .../metadata`: a null or empty value removes its key.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct UpdateMetadataRequest {
    #[serde(default)]
    pub metadata: BTreeMap<String, Option<String>>,
    #[serde(default)]
    pub machine_version: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MetadataValue {
    pub value: String,
    #[serde(default, skip_serializing)]
    pub updated_at: Option<String>,
}

/// One machine of `GET /orgs/{org}/machines`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OrgMachine {
    pub id: String,
    pub name: String,
    pub app_name: String,
    pub state: MachineState,
    pub region: String,
    pub private_ip: String,
    pub version: String,
    pub instance_id: String,
    pub created_at: String,
    pub updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OrgMachinesResponse {
    pub machines: Vec<OrgMachine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_machine_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_at: Option<String>,
    pub error_regions: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Region {
    pub code: String,
    pub name: String,
    pub latitude: f64,
    pub longitude: f64,
    pub gateway_available: bool,
    pub requires_paid_plan: bool,
    pub deprecated: bool,
    pub geo_region: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegionsResponse {
    pub nearest: String,
    pub regions: Vec<Region>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct StopRequest {
    #[serde(default)]
    pub signal: Option<Signal>,
    #[serde(default)]
    pub timeout: Option<GoDuration>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WaitResponse {
    pub ok: bool,
    pub state: MachineState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

/// `POST .../exec`: `command` is the argv; `cmd` is fly-go's older single string.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ExecRequest {
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<String>,
    #[serde(default)]
    pub stdin: Option<String>,
    /// Seconds.
    #[serde(default)]
    pub timeout: Option<u64>,
    #[serde(default)]
    pub container: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecResponse {
    pub exit_code: i32,
    pub exit_signal: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Every error the API returns: `{"error": "..."}`, with `status` for the cases clients act on
/// (`insufficient_capacity`, `name_taken`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

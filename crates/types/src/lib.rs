//! The Fly Machines API v1 wire model, shared by the server, the agent and the CLI.
//!
//! Field names and JSON shapes follow `shared/reference/machines-openapi.json` and the habits
//! of Fly's real clients (flyctl, fly-go). Fields the host acts on are typed and validated;
//! fields that later subsystems own are kept as raw JSON so they round-trip unchanged, and
//! unknown fields are preserved rather than dropped.

mod app;
mod check;
mod config;
mod duration;
mod id;
mod machine;
mod runtime_kind;
mod secret;
mod service;
mod signal;
mod state;

pub use app::{App, AppOrganization, CreateAppRequest, ListAppsResponse};
pub use check::{CheckHeader, CheckStatus, MachineCheck};
pub use config::{
    validate_metadata, validate_metadata_entry, ConfigError, DnsConfig, EnvFrom, FieldRef,
    GuestFile, MachineConfig, MachineGuest, MachineInit, MachineProcess, MachineRestart,
    MachineSecret, RestartPolicy, StopConfig, DEFAULT_STOP_SIGNAL, DEFAULT_STOP_TIMEOUT,
};
pub use duration::{format_go_duration, parse_go_duration, GoDuration};
pub use id::{new_event_id, new_instance_id, new_machine_id, valid_app_name};
pub use machine::{
    CreateLeaseRequest, CreateMachineRequest, ErrorResponse, ExecRequest, ExecResponse, ExitEvent,
    ImageRef, Lease, LeaseResponse, ListenSocket, Machine, MachineEvent, MachineVersion,
    MetadataValue, OrgMachine, OrgMachinesResponse, ProcessStat, Region, RegionsResponse,
    SignalRequest, StopRequest, UpdateMachineRequest, UpdateMetadataRequest, WaitResponse,
};
pub use runtime_kind::{RuntimeKind, UnknownRuntime};
pub use secret::{
    valid_secret_name, AppSecret, AppSecrets, DeleteSecretResponse, SetSecretRequest,
    SetSecretResponse, UpdateSecretsRequest, UpdateSecretsResponse,
};
pub use service::{Autostop, Concurrency, MachinePort, MachineService};
pub use signal::{Signal, SignalError};
pub use state::{Admission, MachineState, Operation};

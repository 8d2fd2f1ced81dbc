use std::time::Duration;

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use hangar_agent::{Agent, MetadataChange, PsSort, Wait, WaitFor, MAX_WAIT};
use hangar_types::{
    parse_go_duration, CreateLeaseRequest, CreateMachineRequest, ExecRequest, ExecResponse, Lease,
    LeaseResponse, Machine, MachineEvent, MachineState, MachineVersion, MetadataValue, ProcessStat,
    Signal, SignalRequest, StopRequest, UpdateMachineRequest, UpdateMetadataRequest, WaitResponse,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, LeaseNonce, OptionalBody, Params};

type MachinePath = Path<(String, String)>;

pub async fn list(
    State(agent): State<Agent>,
    Path(app): Path<String>,
    params: Params,
) -> ApiResult<Json<Vec<Machine>>> {
    let states = params.states()?;
    Ok(Json(agent.list_machines(
        &app,
        params.flag("include_deleted")?,
        params.get("region"),
        &states,
        params.flag("summary")?,
    )?))
}

pub async fn create(
    State(agent): State<Agent>,
    Path(app): Path<String>,
    Body(req): Body<CreateMachineRequest>,
) -> ApiResult<Json<Machine>> {
    Ok(Json(agent.create_machine(&app, req).await?))
}

pub async fn get(
    State(agent): State<Agent>,
    Path((app, id)): MachinePath,
) -> ApiResult<Json<Machine>> {
    Ok(Json(agent.get_machine(&app, &id)?))
}

/// `force` is the spec's name; fly-go sends `kill`.
pub async fn destroy(
    State(agent): State<Agent>,
    Path((app, id)): MachinePath,
    params: Params,
    nonce: LeaseNonce,
) -> ApiResult<Json<Value>> {
    let force = params.flag("force")? || params.flag("kill")?;
    agent
        .destroy_machine(&app, &id, force, nonce.as_deref())
        .await?;
    Ok(Json(json!({ "ok": true })))
}

pub async fn start(
    State(agent): State<Agent>,
    Path((app, id)): MachinePath,
    nonce: LeaseNonce,
) -> ApiResult<Json<Value>> {
    let previous = agent.start_machine(&app, &id, nonce.as_deref()).await?;
    Ok(Json(
        json!({ "previous_state": previous, "migrated": false, "new_host": "" }),
    ))
}

pub async fn stop(
    State(agent): State<Agent>,
    Path((app, id)): MachinePath,
    nonce: LeaseNonce,
    OptionalBody(req): OptionalBody<StopRequest>,
) -> ApiResult<Json<Value>> {
    agent.stop_machine(&app, &id, req, nonce.as_deref()).await?;
    Ok(Json(json!({ "ok": true })))
}

pub async fn wait(
    State(agent): State<Agent>,
    Path((app, id)): MachinePath,
    params: Params,
) -> ApiResult<Json<WaitResponse>> {
    let mut states = Vec::new();
    for s in params.list("state") {
        states.push(WaitFor::parse(&s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state: {s:?} cannot be waited for (use started, stopped, suspended, destroyed, failed or settled)"
            ))
        })?);
    }
    if states.is_empty() {
        states.push(WaitFor::State(MachineState::Started));
    }
    let timeout = match duration_param(&params, "timeout")? {
        None => MAX_WAIT,
        Some(d) => {
            if d < Duration::from_secs(1) || d > MAX_WAIT {
                return Err(ApiError::bad_request(format!(
                    "invalid_argument: timeout must be between 1 and {} seconds",
                    MAX_WAIT.as_secs()
                )));
            }
            d
        }
    };
    let wait = Wait {
        states,
        version: params.get("version").or(params.get("instance_id")),
        from_event_id: params.get("from_event_id"),
        timeout,
    };
    Ok(Json(agent.wait_machine(&app, &id, wait).await?))
}

/// A duration given as whole seconds (fly-go) or a Go duration string (`"10s"`).
fn duration_param(params: &Params, key: &str) -> ApiResult<Option<Duration>> {
    params
        .get(key)
        .map(|t| {
            t.parse::<u64>()
                .map(Duration::from_secs)
                .or_else(|_| parse_go_duration(t))
                .map_err(|_| {
                    ApiError::bad_request(format!("{key}: {t:?} is neither seconds nor a duration"))
                })
        })
        .transpose()
}

pub async fn events(
    State(agent): State<Agent>,
    Path((app, id)): MachinePath,
    params: Params,
) -> ApiResult<Json<Vec<MachineEvent>>> {
    let limit = params.number("limit")?.unwrap_or(20).clamp(1, 50) as usize;
    Ok(Json(agent.machine_events(&app, &id, limit)?))
}

pub async fn exec(
    State(agent): State<Agent>,
    Path((app, id)): MachinePath,
    Body(req): Body<ExecRequest>,
) -> ApiResult<Json<ExecResponse>> {
    Ok(Json(agent.exec(&app, &id, req).await?))
}

pub async fn update(
    State(agent): State<Agent>,
    Path((app, id)): MachinePath,
    nonce: LeaseNonce,
    Body(req): Body<UpdateMachineRequest>,
) -> ApiResult<Json<Machine>> {
    Ok(Json(
        agent
            .update_machine(&app, &id, req, nonce.as_deref())
            .await?,
    ))
}

/// `signal` and `timeout` come as query parameters; `force_stop` (fly-go) skips the grace.
pub async fn restart(
    State(agent): State<Agent>,
    Path((app, id)): MachinePath,
    params: Params,
    nonce: LeaseNonce,
) -> ApiResult<Json<Value>> {
    let signal = params
        .get("signal")
        .map(|s| {
            s.parse::<Signal>()
                .map_err(|e| ApiError::bad_request(format!("signal: {e}")))
        })
        .transpose()?;
    let timeout = duration_param(&params, "timeout")?;
    let force = params.flag("force_stop")? || params.flag("force")?;
    agent
        .restart_machine(&app, &id, signal, timeout, force, nonce.as_deref())
        .await?;
    Ok(Json(json!({ "ok": true })))
}

pub async fn signal(
    State(agent): State<Agent>,
    Path((app, id)): MachinePath,
    nonce: LeaseNonce,
    Body(req): Body<SignalRequest>,
) -> ApiResult<Json<Value>> {
    agent
        .signal_machine(&app, &id, req.signal, nonce.as_deref())
        .await?;
    Ok(Json(json!({ "ok": true })))
}

pub async fn suspend(
    State(agent): State<Agent>,
    Path((app, id)): MachinePath,
    nonce: LeaseNonce,
) -> ApiResult<Json<Value>> {
    agent.suspend_machine(&app, &id, nonce.as_deref()).await?;
    Ok(Json(json!({ "ok": true })))
}

pub async fn cordon(
    State(agent): State<Agent>,
    Path((app, id)): MachinePath,
    nonce: LeaseNonce,
) -> ApiResult<Json<Value>> {
    agent.cordon_machine(&app, &id, true, nonce.as_deref())?;
    Ok(Json(json!({ "ok": true })))
}

pub async fn uncordon(
    State(agent): State<Agent>,
    Path((app, id)): MachinePath,
    nonce: LeaseNonce,
) -> ApiResult<Json<Value>> {
    agent.cordon_machine(&app, &id, false, nonce.as_deref())?;
    Ok(Json(json!({ "ok": true })))
}

pub async fn versions(
    State(agent): State<Agent>,
    Path((app, id)): MachinePath,
) -> ApiResult<Json<Vec<MachineVersion>>> {
    Ok(Json(agent.machine_versions(&app, &id)?))
}

pub async fn ps(
    State(agent): State<Agent>,
    Path((app, id)): MachinePath,
    params: Params,
) -> ApiResult<Json<Vec<ProcessStat>>> {
    let sort = match params.get("sort_by") {
        None => PsSort::Pid,
        Some(s) => PsSort::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "sort_by: {s:?} is not one of pid, cpu, rss, rtime, command"
            ))
        })?,
    };
    let descending = match params.get("order") {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(o) => {
            return Err(ApiError::bad_request(format!(
                "order: {o:?} is not asc or desc"
            )))
        }
    };
    Ok(Json(
        agent.machine_processes(&app, &id, sort, descending).await?,
    ))
}

// ---- leases ----

pub async fn show_lease(
    State(agent): State<Agent>,
    Path((app, id)): MachinePath,
) -> ApiResult<Json<LeaseResponse<Lease>>> {
    Ok(Json(LeaseResponse::success(agent.lease(&app, &id)?)))
}

/// The TTL comes in the body (the spec) or as `?ttl=` with no body (fly-go). Answers in
/// Fly's wrapped form, `{"status":"success","data":{...}}`, which fly-go decodes.
pub async fn create_lease(
    State(agent): State<Agent>,
    Path((app, id)): MachinePath,
    params: Params,
    nonce: LeaseNonce,
    OptionalBody(req): OptionalBody<CreateLeaseRequest>,
) -> ApiResult<(StatusCode, Json<LeaseResponse<Lease>>)> {
    let ttl = req.ttl.or(params.number("ttl")?);
    let lease = agent.acquire_lease(&app, &id, nonce.as_deref(), ttl, req.description)?;
    Ok((StatusCode::CREATED, Json(LeaseResponse::success(lease))))
}

pub async fn release_lease(
    State(agent): State<Agent>,
    Path((app, id)): MachinePath,
    nonce: LeaseNonce,
) -> ApiResult<Json<LeaseResponse<Value>>> {
    let nonce = nonce.0.ok_or_else(|| {
        ApiError::bad_request(
            "fly-machine-lease-nonce: the header with the lease's nonce is required",
        )
    })?;
    agent.release_lease(&app, &id, &nonce)?;
    Ok(Json(LeaseResponse::success(json!({ "ok": true }))))
}

// ---- metadata ----

pub async fn metadata(
    State(agent): State<Agent>,
    Path((app, id)): MachinePath,
) -> ApiResult<Json<BTreeMap<String, String>>> {
    Ok(Json(agent.metadata(&app, &id)?))
}

pub async fn replace_metadata(
    State(agent): State<Agent>,
    Path((app, id)): MachinePath,
    Body(req): Body<UpdateMetadataRequest>,
) -> ApiResult<StatusCode> {
    agent.update_metadata(&app, &id, req, MetadataChange::Replace)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn patch_metadata(
    State(agent): State<Agent>,
    Path((app, id)): MachinePath,
    Body(req): Body<UpdateMetadataRequest>,
) -> ApiResult<StatusCode> {
    agent.update_metadata(&app, &id, req, MetadataChange::Merge)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn metadata_key(
    State(agent): State<Agent>,
    Path((app, id, key)): Path<(String, String, String)>,
) -> ApiResult<Json<MetadataValue>> {
    Ok(Json(agent.metadata_key(&app, &id, &key)?))
}

#[derive(Deserialize)]
pub struct UpsertMetadataKey {
    value: String,
}

pub async fn upsert_metadata_key(
    State(agent): State<Agent>,
    Path((app, id, key)): Path<(String, String, String)>,
    Body(req): Body<UpsertMetadataKey>,
) -> ApiResult<StatusCode> {
    agent.set_metadata_key(&app, &id, &key, req.value)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn delete_metadata_key(
    State(agent): State<Agent>,
    Path((app, id, key)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    agent.delete_metadata_key(&app, &id, &key)?;
    Ok(StatusCode::NO_CONTENT)
}

use std::time::Duration;

use axum::extract::{Path, State};
use axum::Json;
use hangar_agent::{Agent, WaitFor, MAX_WAIT};
use hangar_types::{
    parse_go_duration, CreateMachineRequest, ExecRequest, ExecResponse, Machine, MachineEvent,
    MachineState, StopRequest, WaitResponse,
};
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, OptionalBody, Params};

pub async fn list(
    State(agent): State<Agent>,
    Path(app): Path<String>,
    params: Params,
) -> ApiResult<Json<Vec<Machine>>> {
    let states = params
        .list("state")
        .iter()
        .map(|s| {
            MachineState::parse(s)
                .ok_or_else(|| ApiError::bad_request(format!("state: unknown machine state {s:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
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
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Machine>> {
    Ok(Json(agent.get_machine(&app, &id)?))
}

/// `force` is the spec's name; fly-go sends `kill`.
pub async fn destroy(
    State(agent): State<Agent>,
    Path((app, id)): Path<(String, String)>,
    params: Params,
) -> ApiResult<Json<Value>> {
    let force = params.flag("force")? || params.flag("kill")?;
    agent.destroy_machine(&app, &id, force).await?;
    Ok(Json(json!({ "ok": true })))
}

pub async fn start(
    State(agent): State<Agent>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let previous = agent.start_machine(&app, &id).await?;
    Ok(Json(
        json!({ "previous_state": previous, "migrated": false, "new_host": "" }),
    ))
}

pub async fn stop(
    State(agent): State<Agent>,
    Path((app, id)): Path<(String, String)>,
    OptionalBody(req): OptionalBody<StopRequest>,
) -> ApiResult<Json<Value>> {
    agent.stop_machine(&app, &id, req).await?;
    Ok(Json(json!({ "ok": true })))
}

pub async fn wait(
    State(agent): State<Agent>,
    Path((app, id)): Path<(String, String)>,
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
    let timeout = match params.get("timeout") {
        None => MAX_WAIT,
        Some(t) => {
            let d = t
                .parse::<u64>()
                .map(Duration::from_secs)
                .or_else(|_| parse_go_duration(t))
                .map_err(|_| {
                    ApiError::bad_request(format!(
                        "timeout: {t:?} is neither seconds nor a duration"
                    ))
                })?;
            if d < Duration::from_secs(1) || d > MAX_WAIT {
                return Err(ApiError::bad_request(format!(
                    "invalid_argument: timeout must be between 1 and {} seconds",
                    MAX_WAIT.as_secs()
                )));
            }
            d
        }
    };
    let version = params.get("version").or(params.get("instance_id"));
    Ok(Json(
        agent
            .wait_machine(&app, &id, &states, version, timeout)
            .await?,
    ))
}

pub async fn events(
    State(agent): State<Agent>,
    Path((app, id)): Path<(String, String)>,
    params: Params,
) -> ApiResult<Json<Vec<MachineEvent>>> {
    let limit = params.number("limit")?.unwrap_or(20).clamp(1, 50) as usize;
    Ok(Json(agent.machine_events(&app, &id, limit)?))
}

pub async fn exec(
    State(agent): State<Agent>,
    Path((app, id)): Path<(String, String)>,
    Body(req): Body<ExecRequest>,
) -> ApiResult<Json<ExecResponse>> {
    Ok(Json(agent.exec(&app, &id, req).await?))
}

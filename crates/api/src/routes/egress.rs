//! Static egress IPs of a machine (a Hangar extension under the machine's path).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use hangar_agent::{Agent, EgressIp};

use crate::error::ApiResult;

pub async fn list(
    State(agent): State<Agent>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Vec<EgressIp>>> {
    Ok(Json(agent.egress_ips(&app, &id)?))
}

pub async fn allocate(
    State(agent): State<Agent>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<EgressIp>)> {
    Ok((
        StatusCode::CREATED,
        Json(agent.allocate_egress_ip(&app, &id)?),
    ))
}

pub async fn release(
    State(agent): State<Agent>,
    Path((app, id, ip)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    agent.release_egress_ip(&app, &id, &ip)?;
    Ok(StatusCode::NO_CONTENT)
}

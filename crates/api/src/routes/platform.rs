//! Organisation- and installation-wide endpoints, the API's own description, and the spec's
//! operations this installation does not offer.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use hangar_agent::{Agent, OrgQuery};
use hangar_types::{OrgMachinesResponse, RegionsResponse};

use crate::error::{ApiError, ApiResult};
use crate::extract::Params;

pub async fn org_machines(
    State(agent): State<Agent>,
    Path(org): Path<String>,
    params: Params,
) -> ApiResult<Json<OrgMachinesResponse>> {
    let states = params.states()?;
    let updated_after_ms = params
        .get("updated_after")
        .map(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                .map_err(|_| {
                    ApiError::bad_request(format!("updated_after: {t:?} is not an RFC 3339 time"))
                })
        })
        .transpose()?;
    let limit = params.number("limit")?.map(|n| n as usize);
    if limit == Some(0) {
        return Err(ApiError::bad_request("limit: must be at least 1"));
    }
    let query = OrgQuery {
        cursor: params.get("cursor").map(str::to_string),
        updated_after_ms,
        limit,
        include_deleted: params.flag("include_deleted")?,
        states,
        region: params.get("region").map(str::to_string),
        summary: params.flag("summary")?,
    };
    Ok(Json(agent.org_machines(&org, query)?))
}

pub async fn regions(State(agent): State<Agent>) -> Json<RegionsResponse> {
    Json(agent.regions())
}

/// Hangar's extension: the host's runtimes (for microvm: the accelerator and why).
pub async fn runtime(State(agent): State<Agent>) -> Json<serde_json::Value> {
    Json(agent.runtime_status())
}

/// Fly's schema with Hangar's extensions merged in, each marked `x-hangar-extension`.
pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::document(),
    )
}

/// Certificates, IP assignments, volumes, KMS secret keys, tokens, memory ballooning, deploy
/// tokens and placements are outside what this installation offers.
pub async fn unsupported() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not supported by this installation")
}

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use hangar_agent::Agent;
use hangar_types::{App, CreateAppRequest, ListAppsResponse};

use crate::error::ApiResult;
use crate::extract::{Body, Params};

pub async fn list(State(agent): State<Agent>, params: Params) -> ApiResult<Json<ListAppsResponse>> {
    let apps = agent.list_apps(params.get("org_slug"))?;
    Ok(Json(ListAppsResponse {
        total_apps: apps.len() as u64,
        apps,
    }))
}

/// 201 with the app: the spec documents no body, but fly-go decodes one.
pub async fn create(
    State(agent): State<Agent>,
    Body(req): Body<CreateAppRequest>,
) -> ApiResult<(StatusCode, Json<App>)> {
    Ok((StatusCode::CREATED, Json(agent.create_app(req)?)))
}

pub async fn get(State(agent): State<Agent>, Path(app): Path<String>) -> ApiResult<Json<App>> {
    Ok(Json(agent.get_app(&app)?))
}

pub async fn delete(State(agent): State<Agent>, Path(app): Path<String>) -> ApiResult<StatusCode> {
    agent.delete_app(&app).await?;
    Ok(StatusCode::ACCEPTED)
}

//! App secrets. Values go in and never come out: listings carry digests only.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use hangar_agent::Agent;
use hangar_types::{
    AppSecret, AppSecrets, DeleteSecretResponse, SetSecretRequest, SetSecretResponse,
    UpdateSecretsRequest, UpdateSecretsResponse,
};

use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Params};

/// `show_secrets=true` is refused rather than ignored: values never leave the host.
fn refuse_show(params: &Params) -> ApiResult<()> {
    if params.flag("show_secrets")? {
        return Err(ApiError::bad_request(
            "show_secrets: secret values are never returned by this installation",
        ));
    }
    Ok(())
}

fn min_version(params: &Params) -> ApiResult<Option<u64>> {
    params.number("min_version")
}

pub async fn list(
    State(agent): State<Agent>,
    Path(app): Path<String>,
    params: Params,
) -> ApiResult<Json<AppSecrets>> {
    refuse_show(&params)?;
    Ok(Json(agent.list_secrets(&app, min_version(&params)?)?))
}

pub async fn update(
    State(agent): State<Agent>,
    Path(app): Path<String>,
    Body(req): Body<UpdateSecretsRequest>,
) -> ApiResult<Json<UpdateSecretsResponse>> {
    Ok(Json(agent.update_secrets(&app, req.values)?))
}

pub async fn get(
    State(agent): State<Agent>,
    Path((app, name)): Path<(String, String)>,
    params: Params,
) -> ApiResult<Json<AppSecret>> {
    refuse_show(&params)?;
    agent.list_secrets(&app, min_version(&params)?)?;
    Ok(Json(agent.get_secret(&app, &name)?))
}

pub async fn set(
    State(agent): State<Agent>,
    Path((app, name)): Path<(String, String)>,
    Body(req): Body<SetSecretRequest>,
) -> ApiResult<(StatusCode, Json<SetSecretResponse>)> {
    Ok((
        StatusCode::CREATED,
        Json(agent.set_secret(&app, &name, &req.value)?),
    ))
}

pub async fn delete(
    State(agent): State<Agent>,
    Path((app, name)): Path<(String, String)>,
) -> ApiResult<Json<DeleteSecretResponse>> {
    Ok(Json(agent.delete_secret(&app, &name)?))
}

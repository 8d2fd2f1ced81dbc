//! Hangar extension: the host's local images (`/v1/images...`, documented in docs/images.md).
//! References contain slashes and colons, so they travel as the `ref` query parameter.

use axum::body::Body as RawBody;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use futures::StreamExt;
use hangar_agent::Agent;
use hangar_image::{Credentials, Image, ImageDetails, PruneReport, PullOptions, PullProgress};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Params};

#[derive(Serialize)]
pub struct ImageSummary {
    reference: String,
    digest: String,
    size: u64,
    layers: usize,
    local: bool,
}

impl From<&Image> for ImageSummary {
    fn from(i: &Image) -> Self {
        ImageSummary {
            reference: i.reference.clone(),
            digest: i.digest.clone(),
            size: i.size,
            layers: i.layers.len(),
            local: i.local,
        }
    }
}

fn wanted(params: &Params) -> Result<String, ApiError> {
    match params.get("ref").map(str::trim) {
        Some(r) if !r.is_empty() => Ok(r.to_string()),
        _ => Err(ApiError::bad_request(
            "the ref query parameter must name an image (a reference or a sha256: digest)",
        )),
    }
}

pub async fn list(State(agent): State<Agent>) -> ApiResult<Json<Vec<ImageSummary>>> {
    let images = agent.list_images()?;
    Ok(Json(images.iter().map(ImageSummary::from).collect()))
}

/// `GET /v1/images/inspect?ref=REF`: config, layers and sizes of a local image.
pub async fn inspect(State(agent): State<Agent>, params: Params) -> ApiResult<Json<ImageDetails>> {
    let r = wanted(&params)?;
    match agent.inspect_image(&r)? {
        Some(d) => Ok(Json(d)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no local image {r}"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    image: String,
    #[serde(default)]
    auth: Option<Credentials>,
}

/// `POST /v1/images/pull` `{"image": REF, "auth": {"username", "password"}}` (auth optional).
pub async fn pull(
    State(agent): State<Agent>,
    Body(req): Body<PullRequest>,
) -> ApiResult<(StatusCode, Json<ImageSummary>)> {
    let options = PullOptions {
        credentials: req.auth,
    };
    let image = agent.pull_image(&req.image, &options).await?;
    Ok((StatusCode::OK, Json(ImageSummary::from(&image))))
}

/// `GET /v1/images/pulls`: pulls under way, bytes received per layer.
pub async fn pulls(State(agent): State<Agent>) -> Json<Vec<PullProgress>> {
    Json(agent.image_pulls())
}

/// `DELETE /v1/images?ref=REF`: 200 with what was removed, 404, or 409 when a machine uses it.
pub async fn remove(State(agent): State<Agent>, params: Params) -> ApiResult<Json<PruneReport>> {
    let r = wanted(&params)?;
    match agent.remove_image(&r).await? {
        Some(report) => Ok(Json(report)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no local image {r}"),
        )),
    }
}

/// `POST /v1/images/prune`: removes every image no machine uses.
pub async fn prune(State(agent): State<Agent>) -> ApiResult<Json<PruneReport>> {
    Ok(Json(agent.prune_images().await?))
}

/// `POST /v1/images/import?ref=NAME` with an OCI archive or `docker save` tarball as the body.
/// The body is streamed to a temporary file, never held in memory.
pub async fn import(
    State(agent): State<Agent>,
    params: Params,
    body: RawBody,
) -> ApiResult<(StatusCode, Json<ImageSummary>)> {
    let internal = |e: std::io::Error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot store the upload: {e}"),
        )
    };
    let tmp = tempfile::NamedTempFile::new().map_err(internal)?;
    let mut file = tokio::fs::File::from_std(tmp.reopen().map_err(internal)?);
    let mut stream = body.into_data_stream();
    let mut received = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("upload interrupted: {e}")))?;
        received += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(internal)?;
    }
    file.flush().await.map_err(internal)?;
    if received == 0 {
        return Err(ApiError::bad_request(
            "the request body must be an image archive (OCI archive or docker save tarball)",
        ));
    }
    let image = agent.import_image(tmp.path(), params.get("ref")).await?;
    Ok((StatusCode::CREATED, Json(ImageSummary::from(&image))))
}

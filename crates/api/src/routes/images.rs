//! Hangar extension: the host's local images, and importing one from an archive.

use axum::body::Body as RawBody;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use futures::StreamExt;
use hangar_agent::Agent;
use hangar_image::Image;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::error::{ApiError, ApiResult};
use crate::extract::Params;

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

pub async fn list(State(agent): State<Agent>) -> ApiResult<Json<Vec<ImageSummary>>> {
    let images = agent
        .images()
        .list()
        .map_err(hangar_agent::AgentError::from)?;
    Ok(Json(images.iter().map(ImageSummary::from).collect()))
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

//! The Machines API v1 over HTTP (Fly's "flaps" role): same paths, JSON shapes, status codes
//! and error bodies as Fly's, so existing clients work by changing the base URL.
//! Extensions are additive and listed in `docs/api.md`.

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hangar_agent::Agent;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

mod auth;
mod error;
mod extract;
mod routes;

pub use error::ApiError;

/// The whole API, authenticated with `token`.
pub fn router(agent: Agent, token: String) -> Router {
    let v1 = Router::new()
        .route("/apps", get(routes::apps::list).post(routes::apps::create))
        .route(
            "/apps/{app}",
            get(routes::apps::get).delete(routes::apps::delete),
        )
        .route(
            "/apps/{app}/machines",
            get(routes::machines::list).post(routes::machines::create),
        )
        .route(
            "/apps/{app}/machines/{id}",
            get(routes::machines::get).delete(routes::machines::destroy),
        )
        .route(
            "/apps/{app}/machines/{id}/start",
            post(routes::machines::start),
        )
        .route(
            "/apps/{app}/machines/{id}/stop",
            post(routes::machines::stop),
        )
        .route(
            "/apps/{app}/machines/{id}/wait",
            get(routes::machines::wait),
        )
        .route(
            "/apps/{app}/machines/{id}/events",
            get(routes::machines::events),
        )
        .route(
            "/apps/{app}/machines/{id}/exec",
            post(routes::machines::exec),
        )
        .route(
            "/images",
            get(routes::images::list).delete(routes::images::remove),
        )
        .route("/images/import", post(routes::images::import))
        .route("/images/inspect", get(routes::images::inspect))
        .route("/images/pull", post(routes::images::pull))
        .route("/images/pulls", get(routes::images::pulls))
        .route("/images/prune", post(routes::images::prune))
        .layer(middleware::from_fn_with_state(
            Arc::new(token),
            auth::require_token,
        ))
        .with_state(agent);

    Router::new()
        .nest("/v1", v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::map_response(with_request_id))
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error (the server log has details)",
            )
            .into_response()
        }))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this path",
    )
}

/// Fly answers every request with a `fly-request-id`; clients copy it into their errors.
async fn with_request_id(mut res: Response) -> Response {
    if let Ok(v) = HeaderValue::from_str(&ulid::Ulid::new().to_string()) {
        res.headers_mut().insert("fly-request-id", v);
    }
    res
}

//! The Machines API v1 over HTTP (Fly's "flaps" role): same paths, JSON shapes, status codes
//! and error bodies as Fly's, so existing clients work by changing the base URL.
//! Extensions are additive and listed in `docs/api.md`.

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use hangar_agent::Agent;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

mod auth;
mod error;
mod extract;
mod openapi;
mod routes;

pub use error::ApiError;

/// The whole API, authenticated with `token`.
pub fn router(agent: Agent, token: String) -> Router {
    use routes::machines as m;
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
            get(m::get).post(m::update).delete(m::destroy),
        )
        .route("/apps/{app}/machines/{id}/start", post(m::start))
        .route("/apps/{app}/machines/{id}/stop", post(m::stop))
        .route("/apps/{app}/machines/{id}/restart", post(m::restart))
        .route("/apps/{app}/machines/{id}/signal", post(m::signal))
        .route("/apps/{app}/machines/{id}/suspend", post(m::suspend))
        .route("/apps/{app}/machines/{id}/cordon", post(m::cordon))
        .route("/apps/{app}/machines/{id}/uncordon", post(m::uncordon))
        .route("/apps/{app}/machines/{id}/wait", get(m::wait))
        .route("/apps/{app}/machines/{id}/events", get(m::events))
        .route("/apps/{app}/machines/{id}/versions", get(m::versions))
        .route("/apps/{app}/machines/{id}/ps", get(m::ps))
        .route("/apps/{app}/machines/{id}/exec", post(m::exec))
        .route(
            "/apps/{app}/machines/{id}/exec/ws",
            get(routes::sessions::exec_ws),
        )
        .route("/apps/{app}/logs", get(routes::sessions::logs))
        .route(
            "/apps/{app}/machines/{id}/egress_ips",
            get(routes::egress::list).post(routes::egress::allocate),
        )
        .route(
            "/apps/{app}/machines/{id}/egress_ips/{ip}",
            axum::routing::delete(routes::egress::release),
        )
        .route(
            "/apps/{app}/machines/{id}/lease",
            get(m::show_lease)
                .post(m::create_lease)
                .delete(m::release_lease),
        )
        .route(
            "/apps/{app}/machines/{id}/metadata",
            get(m::metadata)
                .put(m::replace_metadata)
                .patch(m::patch_metadata),
        )
        .route(
            "/apps/{app}/machines/{id}/metadata/{key}",
            get(m::metadata_key)
                .post(m::upsert_metadata_key)
                .delete(m::delete_metadata_key),
        )
        .route(
            "/apps/{app}/secrets",
            get(routes::secrets::list).post(routes::secrets::update),
        )
        .route(
            "/apps/{app}/secrets/{name}",
            get(routes::secrets::get)
                .post(routes::secrets::set)
                .delete(routes::secrets::delete),
        )
        .route("/orgs/{org}/machines", get(routes::platform::org_machines))
        .route("/platform/regions", get(routes::platform::regions))
        .route("/platform/runtime", get(routes::platform::runtime))
        .route("/openapi.json", get(routes::platform::openapi))
        .route(
            "/images",
            get(routes::images::list).delete(routes::images::remove),
        )
        .route("/images/import", post(routes::images::import))
        .route("/images/inspect", get(routes::images::inspect))
        .route("/images/pull", post(routes::images::pull))
        .route("/images/pulls", get(routes::images::pulls))
        .route("/images/prune", post(routes::images::prune))
        .merge(unsupported())
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

/// The spec's operations this installation does not offer: a clear 404 for each, whatever
/// the method, rather than the generic one.
fn unsupported() -> Router<Agent> {
    let mut r = Router::new();
    for prefix in openapi::UNSUPPORTED {
        let path = prefix
            .replace("{app_name}", "{app}")
            .replace("{machine_id}", "{id}")
            .replace("{org_slug}", "{org}");
        r = r.route(&path, any(routes::platform::unsupported)).route(
            &format!("{path}/{{*rest}}"),
            any(routes::platform::unsupported),
        );
    }
    r
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

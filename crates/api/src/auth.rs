//! Bearer-token auth, accepting every form Fly's clients send: `Bearer T`, `FlyV1 T`,
//! `Bearer FlyV1 T`, where T may be a comma-separated list of tokens.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

pub async fn require_token(State(token): State<Arc<String>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match presented {
        Some(h) if accepts(&h, &token) => next.run(req).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "invalid API token").into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing Authorization header (send \"Authorization: Bearer <token>\")",
        )
        .into_response(),
    }
}

fn accepts(header: &str, token: &str) -> bool {
    let mut rest = header.trim();
    for scheme in ["Bearer ", "bearer ", "FlyV1 ", "flyv1 "] {
        if let Some(r) = rest.strip_prefix(scheme) {
            rest = r.trim_start();
        }
    }
    // `Bearer FlyV1 X`: strip the inner scheme too.
    for scheme in ["FlyV1 ", "flyv1 "] {
        if let Some(r) = rest.strip_prefix(scheme) {
            rest = r.trim_start();
        }
    }
    if rest.len() == header.trim().len() {
        return false; // no scheme at all
    }
    rest.split(',')
        .map(str::trim)
        .any(|candidate| bool::from(candidate.as_bytes().ct_eq(token.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::accepts;

    #[test]
    fn schemes() {
        assert!(accepts("Bearer s3cret", "s3cret"));
        assert!(accepts("FlyV1 s3cret", "s3cret"));
        assert!(accepts("Bearer FlyV1 s3cret", "s3cret"));
        assert!(accepts("FlyV1 other,s3cret", "s3cret"));
        assert!(!accepts("s3cret", "s3cret"), "a scheme is required");
        assert!(!accepts("Basic s3cret", "s3cret"));
        assert!(!accepts("Bearer wrong", "s3cret"));
        assert!(!accepts("Bearer ", "s3cret"));
    }
}

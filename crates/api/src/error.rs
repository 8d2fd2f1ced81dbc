//! Every failure leaves as `{"error": "..."}` with the status Fly would use.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hangar_agent::AgentError;
use hangar_types::ErrorResponse;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Fly's machine-readable `status` field (`name_taken`, `insufficient_capacity`...).
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            code: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        let status = match &e {
            AgentError::NotFound(_) => StatusCode::NOT_FOUND,
            AgentError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            AgentError::Unprocessable(_) | AgentError::NameTaken(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            AgentError::Conflict(_) => StatusCode::CONFLICT,
            AgentError::FailedPrecondition(_) | AgentError::InsufficientCapacity(_) => {
                StatusCode::PRECONDITION_FAILED
            }
            AgentError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            AgentError::Upstream(_) => StatusCode::BAD_GATEWAY,
            AgentError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AgentError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let code = match &e {
            AgentError::NameTaken(_) => Some("name_taken"),
            AgentError::InsufficientCapacity(_) => Some("insufficient_capacity"),
            _ => None,
        };
        ApiError {
            status,
            message: e.to_string(),
            code,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, error = %self.message, "request failed");
        }
        let body = ErrorResponse {
            error: self.message,
            status: self.code.map(str::to_string),
        };
        (self.status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

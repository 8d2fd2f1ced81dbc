//! The agent's errors, classified by what the caller can do about them; the API maps each
//! class to one HTTP status.

use hangar_image::ImageError;
use hangar_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// 404: no such app or machine.
    #[error("{0}")]
    NotFound(String),
    /// 400: the request itself is malformed or breaks a rule.
    #[error("{0}")]
    InvalidArgument(String),
    /// 422: well-formed, but refers to something that cannot be used (an unknown image...).
    #[error("{0}")]
    Unprocessable(String),
    /// 422 with Fly's `name_taken` status.
    #[error("{0}")]
    NameTaken(String),
    /// 409: conflicts with the current state of things.
    #[error("{0}")]
    Conflict(String),
    /// 412: the machine is not in a state that allows this.
    #[error("{0}")]
    FailedPrecondition(String),
    /// 412 with Fly's `insufficient_capacity` status: the host cannot place the machine.
    #[error("{0}")]
    InsufficientCapacity(String),
    /// 408: the deadline passed before the condition held.
    #[error("{0}")]
    Timeout(String),
    /// 502: a registry failed us.
    #[error("{0}")]
    Upstream(String),
    /// 503: the host cannot do it now.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a bug or a broken host.
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for AgentError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => AgentError::NotFound(format!("{what} not found")),
            StoreError::Exists(what) => AgentError::Conflict(format!("{what} already exists")),
            StoreError::StateChanged { .. } | StoreError::Forbidden { .. } => {
                AgentError::Conflict(e.to_string())
            }
            StoreError::StaleVersion { .. } => AgentError::FailedPrecondition(e.to_string()),
            StoreError::LeaseHeld { .. } => AgentError::Conflict(e.to_string()),
            StoreError::InsufficientCapacity { .. } => {
                AgentError::InsufficientCapacity(e.to_string())
            }
            other => AgentError::Internal(other.to_string()),
        }
    }
}

impl From<ImageError> for AgentError {
    fn from(e: ImageError) -> Self {
        let msg = e.to_string();
        match e {
            ImageError::InvalidReference(_) => AgentError::InvalidArgument(msg),
            ImageError::NotFound { .. }
            | ImageError::Unauthorized { .. }
            | ImageError::UnsupportedPlatform { .. }
            | ImageError::InvalidImage(_) => AgentError::Unprocessable(msg),
            ImageError::Unavailable { .. } | ImageError::DigestMismatch { .. } => {
                AgentError::Upstream(msg)
            }
            ImageError::InUse(_) => AgentError::Conflict(msg),
            ImageError::Io { .. } => AgentError::Internal(msg),
        }
    }
}

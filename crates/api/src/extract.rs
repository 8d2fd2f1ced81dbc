//! Request extractors whose rejections are JSON errors that name the offending field.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body. A wrong type anywhere gets a 400 naming its path (`config.guest.cpus: ...`).
pub struct Body<T>(pub T);

/// A JSON body that may be absent: an empty body reads as `T::default()`.
pub struct OptionalBody<T>(pub T);

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("malformed JSON body: {inner}"))
        } else if path.is_empty() || path == "." {
            ApiError::bad_request(format!("invalid request body: {inner}"))
        } else {
            ApiError::bad_request(format!("{path}: {inner}"))
        }
    })
}

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        ApiError::new(
            e.status(),
            format!("cannot read the request body: {}", e.body_text()),
        )
    })
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request("a JSON request body is required"));
        }
        parse(&bytes).map(Body)
    }
}

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalBody(T::default()));
        }
        parse(&bytes).map(OptionalBody)
    }
}

/// Query parameters, repeated keys kept (`state=started&state=stopped`).
pub struct Params(HashMap<String, Vec<String>>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        if let Some(q) = parts.uri.query() {
            for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                map.entry(k.into_owned()).or_default().push(v.into_owned());
            }
        }
        Ok(Params(map))
    }
}

impl Params {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .and_then(|v| v.last())
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// Every value of a key, with comma-separated lists split.
    pub fn list(&self, key: &str) -> Vec<String> {
        self.0
            .get(key)
            .into_iter()
            .flatten()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Every value of a repeated key, as given (an argv: commas are not separators).
    pub fn list_raw(&self, key: &str) -> Vec<String> {
        self.0.get(key).cloned().unwrap_or_default()
    }

    /// `state=` filters: machine states, repeated or comma-separated.
    pub fn states(&self) -> Result<Vec<hangar_types::MachineState>, ApiError> {
        self.list("state")
            .iter()
            .map(|s| {
                hangar_types::MachineState::parse(s).ok_or_else(|| {
                    ApiError::bad_request(format!("state: unknown machine state {s:?}"))
                })
            })
            .collect()
    }

    /// A boolean flag: absent is false; `true`/`1`/empty (a bare `?force`) is true.
    pub fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.0.get(key).and_then(|v| v.last()).map(String::as_str) {
            None => Ok(false),
            Some("" | "true" | "1" | "t" | "yes") => Ok(true),
            Some("false" | "0" | "f" | "no") => Ok(false),
            Some(other) => Err(ApiError::bad_request(format!(
                "{key}: {other:?} is not a boolean"
            ))),
        }
    }

    pub fn number(&self, key: &str) -> Result<Option<u64>, ApiError> {
        self.get(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::bad_request(format!("{key}: {v:?} is not a whole number"))
                })
            })
            .transpose()
    }
}

/// The `fly-machine-lease-nonce` header: the caller's proof that it holds the machine's lease.
pub struct LeaseNonce(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for LeaseNonce {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let nonce = match parts.headers.get("fly-machine-lease-nonce") {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| {
                        ApiError::bad_request("fly-machine-lease-nonce: the header is not text")
                    })?
                    .trim()
                    .to_string(),
            ),
        };
        Ok(LeaseNonce(nonce.filter(|n| !n.is_empty())))
    }
}

impl LeaseNonce {
    pub fn as_deref(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

//! The one error type of the image store. Every message is a single line that names the
//! reference or registry concerned, because the API shows it to users as it is.

use std::io;

use oci_client::errors::{OciDistributionError, OciErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference is malformed (the message says how).
    #[error("{0}")]
    InvalidReference(String),
    /// The registry does not know the repository, tag or manifest.
    #[error("image {reference} was not found in registry {registry}: {detail}")]
    NotFound {
        reference: String,
        registry: String,
        detail: String,
    },
    /// The registry answered 401 or 403.
    #[error("registry {registry} denied access: {detail}")]
    Unauthorized { registry: String, detail: String },
    /// The registry is down, timed out, failed (5xx) or answered something that is not a
    /// registry's answer. `detail` is a phrase that follows the registry's name, such as
    /// "is unreachable: connection refused".
    #[error("registry {registry} {detail}")]
    Unavailable { registry: String, detail: String },
    /// A blob's content does not hash to the digest that names it.
    #[error("blob {digest} from registry {registry} does not match its digest (corrupt or tampered content); it was discarded")]
    DigestMismatch { digest: String, registry: String },
    /// No manifest for this host's platform.
    #[error("image {reference} has no manifest for this host's platform: {detail}")]
    UnsupportedPlatform { reference: String, detail: String },
    /// A bad layer, config, manifest or archive (the message names the image and the fault).
    #[error("{0}")]
    InvalidImage(String),
    /// The image is used by a machine, so it cannot be removed.
    #[error("{0}")]
    InUse(String),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

impl ImageError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> ImageError {
        ImageError::Io {
            context: context.into(),
            source,
        }
    }

    /// A copy of this error for each caller that shared one pull (io::Error is not Clone, so
    /// an I/O error is rebuilt from its kind and message).
    pub(crate) fn duplicate(&self) -> ImageError {
        use ImageError::*;
        match self {
            InvalidReference(s) => InvalidReference(s.clone()),
            NotFound {
                reference,
                registry,
                detail,
            } => NotFound {
                reference: reference.clone(),
                registry: registry.clone(),
                detail: detail.clone(),
            },
            Unauthorized { registry, detail } => Unauthorized {
                registry: registry.clone(),
                detail: detail.clone(),
            },
            Unavailable { registry, detail } => Unavailable {
                registry: registry.clone(),
                detail: detail.clone(),
            },
            DigestMismatch { digest, registry } => DigestMismatch {
                digest: digest.clone(),
                registry: registry.clone(),
            },
            UnsupportedPlatform { reference, detail } => UnsupportedPlatform {
                reference: reference.clone(),
                detail: detail.clone(),
            },
            InvalidImage(s) => InvalidImage(s.clone()),
            InUse(s) => InUse(s.clone()),
            Io { context, source } => Io {
                context: context.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
        }
    }

    /// Translates what oci-client reports about one request to `registry` for `reference`.
    /// `digest` names the blob being fetched, if any, for digest errors.
    pub(crate) fn from_registry(
        err: OciDistributionError,
        reference: &str,
        registry: &str,
        digest: Option<&str>,
    ) -> ImageError {
        let registry_s = registry.to_string();
        let unavailable = |detail: String| ImageError::Unavailable {
            registry: registry_s.clone(),
            detail,
        };
        match err {
            OciDistributionError::RequestError(e) => unavailable(describe_request_error(&e)),
            OciDistributionError::IoError(e) => match digest_error_in(&e) {
                Some(()) => ImageError::DigestMismatch {
                    digest: digest.unwrap_or("(unknown)").to_string(),
                    registry: registry_s,
                },
                None => unavailable(format!("broke off a transfer: {}", one_line(&e.to_string()))),
            },
            OciDistributionError::DigestError(_) => ImageError::DigestMismatch {
                digest: digest.unwrap_or(reference).to_string(),
                registry: registry_s,
            },
            OciDistributionError::UnauthorizedError { .. } => ImageError::Unauthorized {
                registry: registry_s,
                detail: format!("pulling {reference} requires credentials"),
            },
            OciDistributionError::AuthenticationFailure(msg) => ImageError::Unauthorized {
                registry: registry_s,
                detail: format!("token request failed: {}", one_line(&msg)),
            },
            OciDistributionError::ImageManifestNotFoundError(msg) => ImageError::NotFound {
                reference: reference.to_string(),
                registry: registry_s,
                detail: one_line(&msg),
            },
            OciDistributionError::RegistryError { envelope, .. } => {
                let first = envelope.errors.first();
                let detail = first
                    .map(|e| if e.message.is_empty() { format!("{:?}", e.code) } else { e.message.clone() })
                    .unwrap_or_else(|| "unknown error".into());
                match first.map(|e| &e.code) {
                    Some(
                        OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::ManifestBlobUnknown,
                    ) => ImageError::NotFound { reference: reference.to_string(), registry: registry_s, detail },
                    Some(OciErrorCode::Unauthorized | OciErrorCode::Denied) => {
                        ImageError::Unauthorized { registry: registry_s, detail }
                    }
                    Some(OciErrorCode::NameInvalid | OciErrorCode::TagInvalid) => {
                        ImageError::InvalidReference(format!("registry {registry} rejected reference {reference}: {detail}"))
                    }
                    _ => unavailable(format!("refused the request: {}", one_line(&detail))),
                }
            }
            OciDistributionError::ServerError { code, message, .. } => match code {
                404 => ImageError::NotFound {
                    reference: reference.to_string(),
                    registry: registry_s,
                    detail: "not found (HTTP 404)".into(),
                },
                401 | 403 => ImageError::Unauthorized { registry: registry_s, detail: format!("HTTP {code}") },
                _ => unavailable(format!("answered HTTP {code}: {}", truncate(&one_line(&message), 200))),
            },
            OciDistributionError::UnsupportedSchemaVersionError(v) => ImageError::InvalidImage(format!(
                "image {reference} uses manifest schema version {v}, which is not supported (only schema 2)"
            )),
            OciDistributionError::UnsupportedMediaTypeError(t) => {
                ImageError::InvalidImage(format!("image {reference} has a manifest of unsupported media type {t}"))
            }
            other => unavailable(format!("answered something unusable: {}", truncate(&one_line(&other.to_string()), 300))),
        }
    }
}

/// "is unreachable: connection refused", "timed out", ... from a reqwest error's cause chain.
fn describe_request_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut innermost = e.to_string();
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::ConnectionRefused => {
                    return "is unreachable: connection refused".into()
                }
                io::ErrorKind::TimedOut => return "is unreachable: timed out".into(),
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::UnexpectedEof => {
                    return "closed the connection unexpectedly".into()
                }
                _ => {}
            }
        }
        if let Some(re) = c.downcast_ref::<reqwest::Error>() {
            if re.is_timeout() {
                return "did not answer in time (timed out)".into();
            }
        }
        innermost = c.to_string();
        cause = c.source();
    }
    format!("is unreachable: {}", one_line(&innermost))
}

/// Whether an I/O error from a blob stream is oci-client's digest verification failing.
fn digest_error_in(e: &io::Error) -> Option<()> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<oci_client::errors::DigestError>())
        .map(|_| ())
}

pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

//! Health checks (`config.checks` and `services[].checks`) and their results.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::ConfigError;
use crate::duration::GoDuration;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineCheck {
    /// `tcp` or `http`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<CheckHeader>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckHeader {
    pub name: String,
    #[serde(default)]
    pub values: Vec<String>,
}

/// A check's latest result, as the machine's `checks` field shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckStatus {
    pub name: String,
    /// `passing`, `warning` (not checked yet) or `critical`.
    pub status: String,
    pub output: String,
    pub updated_at: String,
}

/// Fly's defaults for a check's timing.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(15);
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

impl MachineCheck {
    pub fn is_http(&self) -> bool {
        self.kind.as_deref() == Some("http")
    }

    pub fn interval(&self) -> Duration {
        self.interval
            .map(|d| d.0)
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_CHECK_INTERVAL)
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
            .map(|d| d.0)
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_CHECK_TIMEOUT)
    }

    pub fn grace_period(&self) -> Duration {
        self.grace_period.map(|d| d.0).unwrap_or_default()
    }

    pub(crate) fn validate(&self, field: &str) -> Result<(), ConfigError> {
        let f = |s: &str| format!("{field}.{s}");
        match self.kind.as_deref() {
            Some("tcp" | "http") => {}
            Some(other) => {
                return Err(ConfigError::new(
                    f("type"),
                    format!("unknown check type {other:?} (expected \"tcp\" or \"http\")"),
                ))
            }
            None => {
                return Err(ConfigError::new(
                    f("type"),
                    "\"tcp\" or \"http\" is required",
                ))
            }
        }
        if matches!(self.port, None | Some(0)) {
            return Err(ConfigError::new(
                f("port"),
                "a port between 1 and 65535 is required",
            ));
        }
        if let Some(p) = &self.protocol {
            if p != "http" && p != "https" {
                return Err(ConfigError::new(
                    f("protocol"),
                    format!("unknown protocol {p:?} (expected \"http\" or \"https\")"),
                ));
            }
        }
        if let Some(path) = &self.path {
            if !path.starts_with('/') || path.chars().any(|c| c.is_control() || c == ' ') {
                return Err(ConfigError::new(
                    f("path"),
                    format!("{path:?} must start with '/' and contain no spaces"),
                ));
            }
        }
        if let Some(m) = &self.method {
            if m.is_empty() || !m.chars().all(|c| c.is_ascii_alphabetic()) {
                return Err(ConfigError::new(
                    f("method"),
                    format!("{m:?} is not an HTTP method"),
                ));
            }
        }
        for h in &self.headers {
            let bad = |s: &str| s.chars().any(|c| c == '\r' || c == '\n');
            if h.name.is_empty()
                || bad(&h.name)
                || h.name.contains(':')
                || h.values.iter().any(|v| bad(v))
            {
                return Err(ConfigError::new(
                    f("headers"),
                    format!("header {:?} is not valid", h.name),
                ));
            }
        }
        Ok(())
    }
}

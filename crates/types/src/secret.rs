//! App secrets: values kept encrypted on the host and handed to machines as environment
//! variables or files. The API never returns a value, only its digest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppSecret {
    pub name: String,
    /// Identifies the value without revealing it.
    pub digest: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppSecrets {
    pub secrets: Vec<AppSecret>,
}

/// `POST /apps/{app}/secrets`: set several at once; a null value deletes.
#[derive(Clone, Debug, Deserialize)]
pub struct UpdateSecretsRequest {
    pub values: BTreeMap<String, Option<String>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpdateSecretsResponse {
    pub secrets: Vec<AppSecret>,
    pub version: u64,
    /// Deprecated spelling Fly still sends.
    #[serde(rename = "Version")]
    pub version_deprecated: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct SetSecretRequest {
    pub value: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SetSecretResponse {
    #[serde(flatten)]
    pub secret: AppSecret,
    pub version: u64,
    #[serde(rename = "Version")]
    pub version_deprecated: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeleteSecretResponse {
    pub version: u64,
    #[serde(rename = "Version")]
    pub version_deprecated: u64,
}

/// Secret names become environment variable names: letters, digits and underscores, not
/// starting with a digit.
pub fn valid_secret_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 256
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "secret name {name:?} must be letters, digits and underscores, not starting with a digit"
        ))
    }
}

//! Apps: the named groups machines belong to.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct App {
    pub id: String,
    pub name: String,
    pub internal_numeric_id: u64,
    pub machine_count: u64,
    pub volume_count: u64,
    pub network: String,
    pub organization: AppOrganization,
    pub status: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppOrganization {
    pub name: String,
    pub slug: String,
    pub internal_numeric_id: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct CreateAppRequest {
    /// The spec calls it `name`; older clients send `app_name`.
    #[serde(alias = "app_name")]
    pub name: String,
    #[serde(default)]
    pub org_slug: Option<String>,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub enable_subdomains: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListAppsResponse {
    pub apps: Vec<App>,
    pub total_apps: u64,
}

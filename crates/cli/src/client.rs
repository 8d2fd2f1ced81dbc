//! A small Machines API client: JSON in and out, errors as one readable line.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// Where the API is and how to authenticate, from the environment.
pub fn from_env() -> anyhow::Result<Client> {
    let base = std::env::var("HANGAR_API_URL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:4280".into());
    let token = match std::env::var("HANGAR_API_TOKEN")
        .ok()
        .filter(|s| !s.is_empty())
    {
        Some(t) => t,
        None => {
            let path = default_data_dir().join("token");
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .map_err(|e| {
                    anyhow!(
                        "no API token: set HANGAR_API_TOKEN, or run on the server's host where {} is readable ({e})",
                        path.display()
                    )
                })?
        }
    };
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("hangar/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot build the HTTP client")?;
    Ok(Client {
        http,
        base: base.trim_end_matches('/').to_string(),
        token,
    })
}

/// The server's default data directory: `/var/lib/hangar` as root, else under XDG_DATA_HOME.
pub fn default_data_dir() -> std::path::PathBuf {
    if nix_is_root() {
        return "/var/lib/hangar".into();
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".local/share"))
        })
        .unwrap_or_else(|| ".".into());
    base.join("hangar")
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl Client {
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<T> {
        self.call(Method::POST, path, body).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.call::<Value>(Method::DELETE, path, None)
            .await
            .map(|_| ())
    }

    /// Sends a raw body (an image archive) and decodes the JSON answer.
    pub async fn upload<T: DeserializeOwned>(
        &self,
        path: &str,
        body: reqwest::Body,
    ) -> anyhow::Result<T> {
        let req = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .body(body);
        self.finish(path, req).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<T> {
        let mut req = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.finish(path, req).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1{path}", self.base)
    }

    async fn finish<T: DeserializeOwned>(
        &self,
        path: &str,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let res = req.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow!("cannot reach the Hangar API at {}: is the server running? Start it with `hangar server`", self.base)
            } else if e.is_timeout() {
                anyhow!("the Hangar API at {} did not answer in time", self.base)
            } else {
                anyhow!("request to {} failed: {e}", self.base)
            }
        })?;
        let status = res.status();
        let bytes = res.bytes().await.context("reading the API's answer")?;
        if !status.is_success() {
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
            if status == StatusCode::UNAUTHORIZED {
                bail!("the API refused the token ({message}); check HANGAR_API_TOKEN");
            }
            bail!("{message}");
        }
        let bytes = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(bytes).with_context(|| format!("unexpected answer from {path}"))
    }
}

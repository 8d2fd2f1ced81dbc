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

/// Where the API is and how to authenticate: the environment, else the current context,
/// else the local server with the token from its data directory.
pub fn connect() -> anyhow::Result<Client> {
    let (base, token) = crate::context::Config::load()?.resolve()?;
    let token = match token {
        Some(t) => t,
        None => {
            let path = default_data_dir().join("token");
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .map_err(|e| {
                    anyhow!(
                        "no API token: set HANGAR_API_TOKEN, add a context (`hangar context add`), or run on the server's host where {} is readable ({e})",
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

    /// A POST with extra headers (a lease nonce).
    pub async fn post_with<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<T> {
        let mut req = self.http.post(self.url(path)).bearer_auth(&self.token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.finish(path, req).await
    }

    pub async fn delete_with(&self, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<()> {
        let mut req = self.http.delete(self.url(path)).bearer_auth(&self.token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.finish::<Value>(path, req).await.map(drop)
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

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// A raw GET whose body the caller streams (logs --follow).
    pub async fn stream(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        let req = self.http.get(self.url(path)).bearer_auth(&self.token);
        let res = req.send().await.map_err(|e| self.send_error(e))?;
        if !res.status().is_success() {
            let status = res.status();
            let bytes = res.bytes().await.unwrap_or_default();
            bail!("{}", error_message(status, &bytes));
        }
        Ok(res)
    }

    fn send_error(&self, e: reqwest::Error) -> anyhow::Error {
        if e.is_connect() {
            anyhow!("cannot reach the Hangar API at {}: is the server running? Start it with `hangar server`", self.base)
        } else if e.is_timeout() {
            anyhow!("the Hangar API at {} did not answer in time", self.base)
        } else {
            anyhow!("request to {} failed: {e}", self.base)
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1{path}", self.base)
    }

    async fn finish<T: DeserializeOwned>(
        &self,
        path: &str,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let res = req.send().await.map_err(|e| self.send_error(e))?;
        let status = res.status();
        let bytes = res.bytes().await.context("reading the API's answer")?;
        if !status.is_success() {
            bail!("{}", error_message(status, &bytes));
        }
        let bytes = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(bytes).with_context(|| format!("unexpected answer from {path}"))
    }
}

/// The API's error as one line; a refused token says what to check.
fn error_message(status: StatusCode, bytes: &[u8]) -> String {
    let message = serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).trim().to_string());
    if status == StatusCode::UNAUTHORIZED {
        format!(
            "the API refused the token ({message}); check HANGAR_API_TOKEN or the current context"
        )
    } else {
        message
    }
}

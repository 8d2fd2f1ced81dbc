//! Where the API is: named contexts (API URL + token) in `~/.config/hangar/config.toml`, like
//! kubectl's. `HANGAR_API_URL` / `HANGAR_API_TOKEN` override the current context; with
//! neither, the local server and the token it keeps in its data directory.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

pub const LOCAL_URL: &str = "http://127.0.0.1:4280";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Config {
    #[serde(
        default,
        rename = "current-context",
        skip_serializing_if = "Option::is_none"
    )]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, ApiContext>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ApiContext {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `$HANGAR_CONFIG`, else `$XDG_CONFIG_HOME/hangar/config.toml`, else `~/.config/...`.
pub fn path() -> PathBuf {
    if let Some(p) = std::env::var_os("HANGAR_CONFIG") {
        return p.into();
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| ".".into());
    base.join("hangar/config.toml")
}

impl Config {
    pub fn load() -> anyhow::Result<Config> {
        let path = path();
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("{} is not a valid Hangar config", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Written whole to a temporary file and renamed over, owner-only (it holds tokens).
    pub fn save(&self) -> anyhow::Result<()> {
        let path = path();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let tmp = path.with_extension("toml.tmp");
        let text = toml::to_string_pretty(self)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn use_context(&mut self, name: &str) -> anyhow::Result<()> {
        if !self.contexts.contains_key(name) {
            bail!(
                "no context named {name:?} (known: {}); add it with `hangar context add {name} --url URL --token TOKEN`",
                self.names()
            );
        }
        self.current = Some(name.to_string());
        Ok(())
    }

    pub fn names(&self) -> String {
        if self.contexts.is_empty() {
            "none".into()
        } else {
            self.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    }

    /// The API URL and token to use, and where they came from.
    pub fn resolve(&self) -> anyhow::Result<(String, Option<String>)> {
        let env = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
        let current = match &self.current {
            Some(name) => Some(self.contexts.get(name).with_context(|| {
                format!(
                    "the current context {name:?} is not defined in {}",
                    path().display()
                )
            })?),
            None => None,
        };
        let url = env("HANGAR_API_URL")
            .or_else(|| current.map(|c| c.url.clone()))
            .unwrap_or_else(|| LOCAL_URL.to_string());
        let token = env("HANGAR_API_TOKEN").or_else(|| current.and_then(|c| c.token.clone()));
        Ok((url, token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_switch() {
        let mut c = Config::default();
        c.contexts.insert(
            "prod".into(),
            ApiContext {
                url: "https://hangar.example".into(),
                token: Some("t".into()),
            },
        );
        assert!(c.use_context("nope").is_err());
        c.use_context("prod").unwrap();
        let text = toml::to_string_pretty(&c).unwrap();
        assert!(text.contains("current-context = \"prod\""), "{text}");
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), c);
    }
}

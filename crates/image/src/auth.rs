//! Registry credentials: given with a request, or found in `~/.docker/config.json`-style files
//! (`{"auths": {"HOST": {"auth": base64("user:password")}}}` or `username` / `password`
//! fields), or in the `HANGAR_REGISTRY_AUTH` form: `user:password` for any registry, or
//! whitespace-separated `HOST=user:password` entries, or a whole docker config as JSON.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

/// A user and password for a registry's basic auth (or its token server's).
#[derive(Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}:***)", self.username)
    }
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// `user:password` (the password may contain colons).
    pub fn parse(s: &str) -> Result<Credentials, String> {
        match s.split_once(':') {
            Some((u, p)) if !u.is_empty() => Ok(Credentials::new(u, p)),
            _ => Err("registry credentials must be given as user:password".into()),
        }
    }

    /// A short stable tag telling credentials apart without showing them.
    pub(crate) fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let h = Sha256::digest(format!("{}\0{}", self.username, self.password).as_bytes());
        hex::encode(&h[..8])
    }
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The keys a docker config may file `registry` under.
fn keys_for(registry: &str) -> Vec<String> {
    let mut keys = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        format!("https://{registry}/v1/"),
        format!("https://{registry}/v2/"),
    ];
    if matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    ) {
        keys.push("https://index.docker.io/v1/".into());
        keys.push("index.docker.io".into());
        keys.push("docker.io".into());
    }
    keys
}

/// The credentials a docker config holds for `registry`. Err: the document is malformed.
pub(crate) fn from_docker_config(
    json: &[u8],
    registry: &str,
) -> Result<Option<Credentials>, String> {
    let config: DockerConfig =
        serde_json::from_slice(json).map_err(|e| format!("is not a docker config: {e}"))?;
    for key in keys_for(registry) {
        let Some(a) = config.auths.get(&key) else {
            continue;
        };
        if let (Some(u), Some(p)) = (&a.username, &a.password) {
            return Ok(Some(Credentials::new(u, p)));
        }
        if let Some(encoded) = &a.auth {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|e| format!("has an invalid auth for {key}: {e}"))?;
            let text = String::from_utf8(decoded)
                .map_err(|_| format!("has an auth for {key} that is not text"))?;
            return Credentials::parse(&text)
                .map(Some)
                .map_err(|_| format!("has an auth for {key} that is not base64(user:password)"));
        }
    }
    Ok(None)
}

/// The credentials `HANGAR_REGISTRY_AUTH`'s value gives for `registry`.
pub(crate) fn from_env_value(value: &str, registry: &str) -> Result<Option<Credentials>, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    if value.starts_with('{') {
        return from_docker_config(value.as_bytes(), registry);
    }
    let entries: Vec<&str> = value.split_whitespace().collect();
    let scoped = entries.iter().all(|e| {
        e.split_once('=')
            .is_some_and(|(host, _)| looks_like_host(host))
    });
    if !scoped {
        return Credentials::parse(value).map(Some);
    }
    for e in entries {
        let Some((host, creds)) = e.split_once('=') else {
            return Err(format!(
                "entry {:?} is not HOST=user:password",
                e.split(':').next().unwrap_or_default()
            ));
        };
        if keys_for(registry).iter().any(|k| k == host) {
            return Credentials::parse(creds).map(Some);
        }
    }
    Ok(None)
}

/// `host`, `host:port`, `[v6]:port`: what a scoped `HANGAR_REGISTRY_AUTH` entry starts with.
fn looks_like_host(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            (h, Some(p))
        }
        _ => (s, None),
    };
    let _ = port;
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'))
}

/// Where the store looks for credentials, in order: the request's own, then these.
#[derive(Clone, Debug, Default)]
pub struct CredentialSources {
    /// A `HANGAR_REGISTRY_AUTH`-style value configured on the server.
    pub env_value: Option<String>,
    /// Docker-config-style files (a missing file is skipped).
    pub files: Vec<PathBuf>,
}

impl CredentialSources {
    /// The first credentials any source has for `registry`. Err names the faulty source.
    pub(crate) fn lookup(&self, registry: &str) -> Result<Option<Credentials>, String> {
        if let Some(v) = &self.env_value {
            if let Some(c) =
                from_env_value(v, registry).map_err(|e| format!("HANGAR_REGISTRY_AUTH: {e}"))?
            {
                return Ok(Some(c));
            }
        }
        for file in &self.files {
            if let Some(c) = read_file(file, registry)? {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }
}

fn read_file(path: &Path, registry: &str) -> Result<Option<Credentials>, String> {
    match std::fs::read(path) {
        Ok(bytes) => from_docker_config(&bytes, registry)
            .map_err(|e| format!("credentials file {} {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!(
            "cannot read credentials file {}: {e}",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_forms() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:pa:ss");
        let json = format!(
            r#"{{"auths":{{"reg.example:5000":{{"auth":"{b64}"}},"https://index.docker.io/v1/":{{"username":"bob","password":"pw"}}}}}}"#
        );
        assert_eq!(
            from_docker_config(json.as_bytes(), "reg.example:5000").unwrap(),
            Some(Credentials::new("alice", "pa:ss"))
        );
        assert_eq!(
            from_docker_config(json.as_bytes(), "docker.io").unwrap(),
            Some(Credentials::new("bob", "pw"))
        );
        assert_eq!(from_docker_config(json.as_bytes(), "other").unwrap(), None);
        assert!(from_docker_config(br#"{"auths": 5}"#, "x").is_err());
        assert!(from_docker_config(br#"{"auths":{"x":{"auth":"!!"}}}"#, "x")
            .unwrap_err()
            .contains("invalid auth"));
    }

    #[test]
    fn env_value_forms() {
        assert_eq!(
            from_env_value("u:p", "any:1").unwrap(),
            Some(Credentials::new("u", "p"))
        );
        let scoped = "127.0.0.1:5000=a:b other.example=c:d";
        assert_eq!(
            from_env_value(scoped, "127.0.0.1:5000").unwrap(),
            Some(Credentials::new("a", "b"))
        );
        assert_eq!(
            from_env_value(scoped, "other.example").unwrap(),
            Some(Credentials::new("c", "d"))
        );
        assert_eq!(from_env_value(scoped, "third").unwrap(), None);
        assert_eq!(from_env_value("", "x").unwrap(), None);
        assert!(from_env_value("nocolon", "x").is_err());
        assert_eq!(
            from_env_value(r#"{"auths":{"x":{"username":"j","password":"k"}}}"#, "x").unwrap(),
            Some(Credentials::new("j", "k"))
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let c = Credentials::new("u", "secret");
        assert!(!format!("{c:?}").contains("secret"));
        assert_ne!(
            c.fingerprint(),
            Credentials::new("u", "other").fingerprint()
        );
    }
}

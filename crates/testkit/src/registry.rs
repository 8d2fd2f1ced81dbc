//! A real registry for tests: Debian's `docker-registry` (distribution v2) on a free loopback
//! port, storing in a temporary directory, killed and removed on drop.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::image::Blob;

const BINARY: &str = "/usr/bin/docker-registry";

pub struct Registry {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    marks: AtomicU64,
    /// Basic-auth user and password, for a registry started with `start_with_auth`.
    credentials: Option<(String, String)>,
}

/// One request from the registry's access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub status: u16,
}

impl Request {
    /// The digest of a blob fetch (`GET /v2/<name>/blobs/<digest>`), if this is one.
    pub fn blob_fetch(&self) -> Option<&str> {
        if self.method != "GET" {
            return None;
        }
        let (_, digest) = self.path.split_once("/blobs/")?;
        (!digest.starts_with("uploads")).then_some(digest)
    }

    /// Whether this is a manifest request (GET or HEAD).
    pub fn is_manifest(&self) -> bool {
        self.path.contains("/manifests/")
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Registry {
    /// Starts a registry and waits until `GET /v2/` answers. Panics if it cannot.
    pub fn start() -> Registry {
        Self::start_inner(false)
    }

    /// A registry that requires HTTP basic auth (its generated user and password are in
    /// `credentials()`; this harness's own pushes use them).
    pub fn start_with_auth() -> Registry {
        Self::start_inner(true)
    }

    fn start_inner(auth: bool) -> Registry {
        assert!(
            Path::new(BINARY).exists(),
            "{BINARY} is missing: install Debian's docker-registry package (make deps)"
        );
        let dir = tempfile::Builder::new()
            .prefix("hangar-registry")
            .tempdir()
            .expect("tempdir");
        let mut last_log = String::new();
        // The port is free when chosen but could be taken before the registry binds it.
        for _ in 0..5 {
            let port = free_port();
            match launch(dir.path(), port, auth) {
                Ok(child) => {
                    let log = fs::read_to_string(log_path(dir.path())).unwrap_or_default();
                    let credentials = auth.then(|| provisioned_credentials(&log));
                    return Registry {
                        credentials,
                        child: Some(child),
                        dir,
                        port,
                        marks: AtomicU64::new(0),
                    };
                }
                Err(log) => last_log = log,
            }
        }
        panic!("docker-registry did not start; its log:\n{last_log}");
    }

    /// `127.0.0.1:PORT`: the registry part of references to its images.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's filesystem storage root (blobs under `docker/registry/v2/blobs`).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The basic-auth user and password of a registry started with `start_with_auth`.
    pub fn credentials(&self) -> Option<(String, String)> {
        self.credentials.clone()
    }

    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.credentials {
            Some((user, password)) => req.basic_auth(user, Some(password)),
            None => req,
        }
    }

    /// Where the registry keeps a blob's bytes (to corrupt it in tests).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Stops the registry (to test a registry that is down). Its storage stays until drop.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts a stopped registry again on the same port with the same storage.
    pub fn restart(&mut self) {
        self.kill();
        match launch(self.dir.path(), self.port, self.credentials.is_some()) {
            Ok(child) => self.child = Some(child),
            Err(log) => panic!("docker-registry did not restart; its log:\n{log}"),
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_path(&self) -> PathBuf {
        log_path(self.dir.path())
    }

    /// Everything the registry has logged.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Every request the registry has served, from its access log, in order. While it runs,
    /// a marker request is sent first and awaited in the log, so every request answered
    /// before this call is included.
    pub fn requests(&self) -> Vec<Request> {
        if self.child.is_some() {
            let n = self.marks.fetch_add(1, Ordering::SeqCst);
            let marker = format!("/v2/?hangar-mark={n}");
            let needle = format!("\"GET {marker} ");
            let _ = http_get(self.port, &marker);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !self.log().contains(&needle) {
                assert!(
                    Instant::now() < deadline,
                    "the registry never logged {marker}; its log:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.log()
            .lines()
            .filter_map(parse_access_line)
            .filter(|r| !r.path.starts_with("/v2/?hangar-mark="))
            .collect()
    }

    /// Digests of the blobs fetched with GET (any status), in order.
    pub fn blob_fetches(&self) -> Vec<String> {
        self.requests()
            .iter()
            .filter_map(|r| r.blob_fetch().map(str::to_string))
            .collect()
    }

    fn base_url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// Uploads a blob to `repo` (monolithic upload), unless the registry has it.
    pub async fn push_blob(&self, repo: &str, blob: &Blob) {
        let client = reqwest::Client::new();
        let base = self.base_url();
        let head = self
            .authed(client.head(format!("{base}/v2/{repo}/blobs/{}", blob.digest)))
            .send()
            .await
            .expect("HEAD blob");
        if head.status().is_success() {
            return;
        }
        let start = self
            .authed(client.post(format!("{base}/v2/{repo}/blobs/uploads/")))
            .send()
            .await
            .expect("POST upload");
        assert_eq!(
            start.status().as_u16(),
            202,
            "starting an upload to {repo}: {:?}",
            start.text().await
        );
        let location = start
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .expect("upload location")
            .to_string();
        let url = if location.starts_with('/') {
            format!("{base}{location}")
        } else {
            location
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let put = self
            .authed(client.put(format!("{url}{sep}digest={}", blob.digest)))
            .header("content-type", "application/octet-stream")
            .body(blob.bytes.clone())
            .send()
            .await
            .expect("PUT blob");
        assert_eq!(
            put.status().as_u16(),
            201,
            "uploading {} to {repo}: {:?}",
            blob.digest,
            put.text().await
        );
    }

    /// Stores a manifest (or index) under `reference` (a tag or digest); returns its digest.
    pub async fn push_manifest(&self, repo: &str, reference: &str, manifest: &Blob) -> String {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base_url());
        let res = self
            .authed(reqwest::Client::new().put(url))
            .header("content-type", &manifest.media_type)
            .body(manifest.bytes.clone())
            .send()
            .await
            .expect("PUT manifest");
        let status = res.status().as_u16();
        let digest = res
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        assert_eq!(
            status,
            201,
            "storing manifest {repo}:{reference}: {:?}",
            res.text().await
        );
        let digest = digest.expect("a Docker-Content-Digest header");
        assert_eq!(
            digest, manifest.digest,
            "the registry hashed the manifest differently"
        );
        digest
    }

    /// Deletes a tag's manifest (by digest, as the v2 API requires).
    pub async fn delete_manifest(&self, repo: &str, digest: &str) {
        let url = format!("{}/v2/{repo}/manifests/{digest}", self.base_url());
        let res = self
            .authed(reqwest::Client::new().delete(url))
            .send()
            .await
            .expect("DELETE manifest");
        assert_eq!(res.status().as_u16(), 202, "deleting {repo}@{digest}");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- docker-registry log ----\n{}", self.log());
        }
    }
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("registry.log")
}

/// Runs docker-registry with its storage and log in `dir`, listening on `port`, and waits
/// until it answers. Err carries its log.
fn launch(dir: &Path, port: u16, auth: bool) -> Result<Child, String> {
    let storage = dir.join("storage");
    fs::create_dir_all(&storage).expect("registry storage dir");
    let mut config = format!(
        "version: 0.1\n\
         log:\n  level: warn\n  formatter: text\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: 127.0.0.1:{port}\n  secret: hangar-test-secret\n",
        storage.display()
    );
    if auth {
        // A missing htpasswd file makes the registry provision a user and log its password.
        config.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: hangar-test\n    path: {}\n",
            dir.join("htpasswd").display()
        ));
    }
    let config_path = dir.join("config.yml");
    fs::write(&config_path, config).expect("registry config");
    // Appending: a restarted registry keeps the earlier requests in the log.
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(dir))
        .expect("registry log");
    let read_log = || fs::read_to_string(log_path(dir)).unwrap_or_default();
    let mut child = Command::new(BINARY)
        .arg("serve")
        .arg(&config_path)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run {BINARY}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}\n{}", read_log()));
        }
        // With auth, an anonymous /v2/ is answered 401 once the registry serves.
        let ready = if auth { " 401 " } else { " 200 " };
        if http_get(port, "/v2/")
            .is_some_and(|r| r.lines().next().is_some_and(|l| l.contains(ready)))
        {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no answer on /v2/ after 20 s\n{}", read_log()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The user and password the registry logged when it provisioned its htpasswd file.
fn provisioned_credentials(log: &str) -> (String, String) {
    let line = log
        .lines()
        .find(|l| l.contains("provisioning with default user"))
        .expect("the registry logs its provisioned user");
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .map(|v| v.trim_matches('"').to_string())
            .expect("user and password in the provisioning line")
    };
    (field("user"), field("password"))
}

/// A minimal HTTP/1.0 GET, usable from sync and async tests alike; None if nothing answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// `127.0.0.1 - - [date] "GET /v2/x/blobs/sha256:.. HTTP/1.1" 200 123 "" "agent"`
fn parse_access_line(line: &str) -> Option<Request> {
    let (_, rest) = line.split_once("] \"")?;
    let (request, rest) = rest.split_once('"')?;
    let mut parts = request.split(' ');
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let status = rest.trim_start().split(' ').next()?.parse().ok()?;
    Some(Request {
        method,
        path,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisioned_credentials_are_read_from_the_log() {
        let log = r#"time="x" level=warning msg="htpasswd is missing, provisioning with default user" go.version=go1.19.8 password=S6ln95X4oj5x user=docker"#;
        assert_eq!(
            provisioned_credentials(log),
            ("docker".into(), "S6ln95X4oj5x".into())
        );
    }

    #[test]
    fn access_lines_parse() {
        let r = parse_access_line(r#"127.0.0.1 - - [22/Nov/2026:08:02:09 +0000] "GET /v2/busybox/blobs/sha256:ab HTTP/1.1" 200 2 "" "curl/7.88.1""#).unwrap();
        assert_eq!(
            r,
            Request {
                method: "GET".into(),
                path: "/v2/busybox/blobs/sha256:ab".into(),
                status: 200
            }
        );
        assert_eq!(r.blob_fetch(), Some("sha256:ab"));
        assert!(parse_access_line(r#"time="2026" level=info msg="response completed""#).is_none());
        let up = Request {
            method: "GET".into(),
            path: "/v2/x/blobs/uploads/123".into(),
            status: 204,
        };
        assert_eq!(up.blob_fetch(), None);
    }
}

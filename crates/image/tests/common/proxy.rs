//! A small HTTP front for the real docker-registry, written for these tests. It forwards every
//! request to the registry and can, on demand:
//! - require bearer tokens the way Docker Hub does (401 + `WWW-Authenticate: Bearer realm=..`),
//!   issuing them from its own `/token` endpoint against a user and password (the registry
//!   behind stays anonymous): the token server of the bearer flow;
//! - break blob transfers off after some bytes (a flaky line), or hold one after some bytes
//!   until the test releases it, then break it off (the registry killed mid-transfer).
//!
//! It records what it saw (method, path, `Range`, whether a token came along).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub bearer: bool,
}

#[derive(Clone)]
pub enum Fault {
    /// Break off the next `times` blob transfers (GET) longer than `bytes` after `bytes` bytes
    /// of body.
    Cut { bytes: usize, times: usize },
    /// Send `bytes` of the next blob transfer longer than that, wait until `release` gets a permit, then
    /// break the connection off.
    Hold {
        bytes: usize,
        release: Arc<Semaphore>,
    },
}

struct State {
    upstream: String,
    addr: SocketAddr,
    bearer: Option<(String, String)>,
    tokens: Mutex<HashSet<String>>,
    token_requests: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    fault: Mutex<Option<Fault>>,
    client: reqwest::Client,
}

pub struct Proxy {
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards to `upstream` (`127.0.0.1:PORT`). With `bearer`, demands tokens issued for
    /// that user and password.
    pub async fn start(upstream: &str, bearer: Option<(&str, &str)>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            upstream: upstream.to_string(),
            addr,
            bearer: bearer.map(|(u, p)| (u.to_string(), p.to_string())),
            tokens: Mutex::new(HashSet::new()),
            token_requests: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            fault: Mutex::new(None),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        });
        let s = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let s = Arc::clone(&s);
                tokio::spawn(async move {
                    let _ = serve(s, conn).await;
                });
            }
        });
        Proxy { state, task }
    }

    /// `127.0.0.1:PORT`: the registry part of references through the proxy.
    pub fn host(&self) -> String {
        self.state.addr.to_string()
    }

    pub fn set_fault(&self, fault: Option<Fault>) {
        *self.state.fault.lock().unwrap() = fault;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn write_simple(
    conn: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body).await?;
    conn.flush().await
}

async fn serve(state: Arc<State>, conn: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers: Vec<(String, String)> = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).await? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let mut conn = reader.into_inner();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let authorization = header("authorization");

    if path.starts_with("/token") {
        state.token_requests.fetch_add(1, Ordering::SeqCst);
        let (user, pass) = state.bearer.clone().unwrap_or_default();
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        );
        if authorization.as_deref() != Some(expected.as_str()) {
            return write_simple(
                &mut conn,
                "401 Unauthorized",
                &[],
                b"{\"details\":\"bad credentials\"}",
            )
            .await;
        }
        let token = format!("tok-{}", rand_hex());
        state.tokens.lock().unwrap().insert(token.clone());
        let body = format!(r#"{{"token":"{token}","access_token":"{token}","expires_in":300}}"#);
        return write_simple(
            &mut conn,
            "200 OK",
            &[("content-type", "application/json".into())],
            body.as_bytes(),
        )
        .await;
    }

    let has_token = authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .is_some_and(|t| state.tokens.lock().unwrap().contains(t));
    state.seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        range: header("range"),
        bearer: has_token,
    });
    if state.bearer.is_some() && !has_token {
        let name = path
            .strip_prefix("/v2/")
            .and_then(|p| p.split_once("/manifests/").or(p.split_once("/blobs/")))
            .map(|(n, _)| n.to_string())
            .unwrap_or_default();
        let challenge = format!(
            r#"Bearer realm="http://{}/token",service="hangar-test",scope="repository:{name}:pull""#,
            state.addr
        );
        return write_simple(
            &mut conn,
            "401 Unauthorized",
            &[
                ("www-authenticate", challenge),
                ("content-type", "application/json".into()),
            ],
            br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#,
        )
        .await;
    }

    let url = format!("http://{}{}", state.upstream, path);
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut req = state.client.request(m, &url);
    for (k, v) in &headers {
        if matches!(k.as_str(), "accept" | "range")
            || (k == "authorization" && state.bearer.is_none())
        {
            req = req.header(k.as_str(), v.as_str());
        }
    }
    let Ok(mut res) = req.send().await else {
        // The registry is down: the connection just closes, as a dead host's would.
        return Ok(());
    };
    let is_blob = method == "GET" && path.contains("/blobs/sha256:");
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nconnection: close\r\n",
        res.status().as_u16(),
        res.status().canonical_reason().unwrap_or("")
    );
    for (k, v) in res.headers() {
        if k.as_str() == "connection" || k.as_str() == "transfer-encoding" {
            continue;
        }
        head.push_str(&format!("{}: {}\r\n", k, v.to_str().unwrap_or_default()));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).await?;
    if method == "HEAD" {
        return conn.flush().await;
    }
    let long = |bytes: usize| res.content_length().is_some_and(|n| n > bytes as u64);
    let applies = match &*state.fault.lock().unwrap() {
        Some(Fault::Cut { bytes, .. } | Fault::Hold { bytes, .. }) => long(*bytes),
        None => false,
    };
    let fault = if is_blob && res.status().is_success() && applies {
        let mut f = state.fault.lock().unwrap();
        match f.clone() {
            Some(Fault::Cut { bytes, times }) => {
                *f = if times > 1 {
                    Some(Fault::Cut {
                        bytes,
                        times: times - 1,
                    })
                } else {
                    None
                };
                Some(Fault::Cut { bytes, times })
            }
            Some(hold @ Fault::Hold { .. }) => {
                *f = None;
                Some(hold)
            }
            None => None,
        }
    } else {
        None
    };
    let mut sent = 0usize;
    while let Ok(Some(chunk)) = res.chunk().await {
        let mut chunk = &chunk[..];
        if let Some(Fault::Cut { bytes, .. } | Fault::Hold { bytes, .. }) = &fault {
            if sent + chunk.len() >= *bytes {
                chunk = &chunk[..bytes - sent];
                conn.write_all(chunk).await?;
                conn.flush().await?;
                if let Some(Fault::Hold { release, .. }) = &fault {
                    let _ = release.acquire().await;
                }
                // Break off mid-body (what was sent arrives, then the connection ends).
                return Ok(());
            }
        }
        sent += chunk.len();
        conn.write_all(chunk).await?;
    }
    conn.flush().await
}

fn rand_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .elapsed()
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    );
    format!("{:016x}", h.finish())
}

//! Interactive sessions (`console`, `exec -t`, `run --shell`): a WebSocket to the machine's
//! exec endpoint carrying the local terminal in raw mode, its size (and every resize), and the
//! remote command's exit code back.

use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use nix::sys::termios::{self, SetArg, Termios};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::client::Client;

/// Puts the terminal in raw mode for as long as it lives; restores it on drop (also when the
/// session fails half-way).
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> anyhow::Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).context("reading the terminal's mode")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
            .context("switching the terminal to raw mode")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// The local terminal's size as (rows, cols).
fn size() -> Option<(u16, u16)> {
    // SAFETY: winsize is plain integers, for which all-zero bytes are a valid value.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we own.
    let ok = unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Runs `command` in the machine attached to this terminal; returns its exit code.
pub async fn session(
    api: &Client,
    app: &str,
    id: &str,
    command: &[String],
    tty: bool,
) -> anyhow::Result<i32> {
    let tty = tty && std::io::stdin().is_terminal();
    let mut query: Vec<String> = command
        .iter()
        .map(|a| format!("command={}", crate::urlencode(a)))
        .collect();
    if tty {
        let (rows, cols) = size().unwrap_or((24, 80));
        query.push(format!("tty=true&rows={rows}&cols={cols}"));
    }
    let base = api.base();
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        bail!("cannot open a session to {base}: not an http(s) URL");
    };
    let url = format!(
        "{ws_base}/v1/apps/{app}/machines/{id}/exec/ws?{}",
        query.join("&")
    );
    let mut request = url
        .as_str()
        .into_client_request()
        .context("building the session request")?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", api.token())
            .parse()
            .context("the token is not a valid header")?,
    );
    let (socket, _) = match tokio_tungstenite::connect_async(request).await {
        Ok(ok) => ok,
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            let body = res.body().as_deref().unwrap_or_default();
            let message = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| format!("the server answered {}", res.status()));
            bail!("{message}");
        }
        Err(e) => bail!("cannot open a session to {base}: {e}"),
    };
    let (mut tx, mut rx) = socket.split();

    let _raw = if tty { Some(RawMode::enter()?) } else { None };
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        .context("watching the terminal's size")?;
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 8192];
    let mut stdin_open = true;
    loop {
        tokio::select! {
            n = stdin.read(&mut buf), if stdin_open => match n {
                Ok(0) | Err(_) => {
                    stdin_open = false;
                    tx.send(Message::Text(json!({ "eof": true }).to_string().into())).await?;
                }
                Ok(n) => tx.send(Message::Binary(buf[..n].to_vec().into())).await?,
            },
            _ = winch.recv(), if tty => {
                if let Some((rows, cols)) = size() {
                    let msg = json!({ "resize": { "rows": rows, "cols": cols } });
                    tx.send(Message::Text(msg.to_string().into())).await?;
                }
            }
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(frame))) if !frame.is_empty() => {
                    let data = &frame[1..];
                    if frame[0] == 2 {
                        let mut err = std::io::stderr();
                        err.write_all(data)?;
                        err.flush()?;
                    } else {
                        let mut out = std::io::stdout();
                        out.write_all(data)?;
                        out.flush()?;
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    let v: Value = serde_json::from_str(&text).unwrap_or_default();
                    if let Some(e) = v["error"].as_str() {
                        bail!("{e}");
                    }
                    return Ok(v["exit_code"].as_i64().unwrap_or(1) as i32);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("the session broke: {e}"),
                None => bail!("the session ended without an exit code"),
            },
        }
    }
}

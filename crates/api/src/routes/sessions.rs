//! Hangar extensions for people at a terminal: interactive execs over WebSocket (`hangar
//! machine console`, `exec -t`, `run --shell`) and the machines' logs.
//!
//! The WebSocket protocol: the client sends stdin as binary frames and control messages as
//! JSON text frames (`{"resize": {"rows": R, "cols": C}}`, `{"eof": true}`,
//! `{"signal": N}`); the server sends output as binary frames whose first byte is the stream
//! (1 stdout, 2 stderr), then one text frame `{"exit_code": N, "signal": S}` and closes.

use axum::body::Body as RawBody;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{SinkExt, StreamExt};
use hangar_agent::{Agent, LogLine, OutputStream, SessionEvent};
use serde::Deserialize;
use serde_json::json;

use crate::error::{ApiError, ApiResult};
use crate::extract::Params;

pub async fn exec_ws(
    State(agent): State<Agent>,
    Path((app, id)): Path<(String, String)>,
    params: Params,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    let command = params.list_raw("command");
    let cmd = params.get("cmd").map(str::to_string);
    let size = if params.flag("tty")? {
        let n = |k: &str, default: u64| -> ApiResult<u16> {
            let v = params.number(k)?.unwrap_or(default);
            u16::try_from(v).map_err(|_| ApiError::bad_request(format!("{k}: {v} is too large")))
        };
        Some((n("rows", 24)?, n("cols", 80)?))
    } else {
        None
    };
    // Start the command before upgrading, so a refusal is an ordinary JSON error.
    let session = agent
        .exec_session(
            &app,
            &id,
            (!command.is_empty()).then_some(command),
            cmd,
            size,
        )
        .await?;
    Ok(ws.on_upgrade(move |socket| pump(socket, session)))
}

#[derive(Deserialize)]
struct Control {
    #[serde(default)]
    resize: Option<Resize>,
    #[serde(default)]
    eof: bool,
    #[serde(default)]
    signal: Option<i32>,
}

#[derive(Deserialize)]
struct Resize {
    rows: u16,
    cols: u16,
}

async fn pump(socket: WebSocket, mut session: hangar_agent::ExecSession) {
    let (mut tx, mut rx) = socket.split();
    loop {
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(data))) => {
                    if session.input(data.to_vec(), false).is_err() { break; }
                }
                Some(Ok(Message::Text(text))) => {
                    let Ok(c) = serde_json::from_str::<Control>(&text) else { continue };
                    if let Some(r) = c.resize { let _ = session.resize(r.rows, r.cols); }
                    if let Some(s) = c.signal { let _ = session.signal(s); }
                    if c.eof { let _ = session.input(Vec::new(), true); }
                }
                Some(Ok(_)) => {}
                // The client went away: dropping the session ends the command.
                Some(Err(_)) | None => break,
            },
            event = session.next() => match event {
                Some(SessionEvent::Output { stream, data }) => {
                    let mut frame = Vec::with_capacity(data.len() + 1);
                    frame.push(match stream { OutputStream::Stdout => 1, OutputStream::Stderr => 2 });
                    frame.extend(data);
                    if tx.send(Message::Binary(frame.into())).await.is_err() { break; }
                }
                Some(SessionEvent::Exit(status)) => {
                    let exit = json!({
                        "exit_code": status.shell_code(),
                        "signal": status.signal.unwrap_or(-1),
                    });
                    let _ = tx.send(Message::Text(exit.to_string().into())).await;
                    let _ = tx.send(Message::Close(None)).await;
                    break;
                }
                None => {
                    let lost = json!({ "exit_code": -1, "error": "lost contact with the machine" });
                    let _ = tx.send(Message::Text(lost.to_string().into())).await;
                    break;
                }
            },
        }
    }
}

/// `GET /apps/{app}/logs?instance=ID&lines=N&follow=true`: the last lines of each machine's
/// console; with `follow`, an NDJSON stream of lines as they are written.
pub async fn logs(
    State(agent): State<Agent>,
    Path(app): Path<String>,
    params: Params,
) -> ApiResult<Response> {
    let instance = params.get("instance").map(str::to_string);
    let lines = params.number("lines")?.unwrap_or(100).min(10_000) as usize;
    if !params.flag("follow")? {
        let lines: Vec<LogLine> = agent.logs(&app, instance.as_deref(), lines)?;
        return Ok(Json(lines).into_response());
    }
    // Fail now (unknown app or machine) rather than inside the stream.
    agent.logs(&app, instance.as_deref(), 0)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<LogLine>(256);
    tokio::spawn(async move {
        let _ = agent
            .follow_logs(&app, instance.as_deref(), lines, tx)
            .await;
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(bytes), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        RawBody::from_stream(body),
    )
        .into_response())
}

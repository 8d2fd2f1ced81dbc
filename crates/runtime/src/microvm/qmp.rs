//! A QMP client: QEMU's JSON machine protocol on the machine's Unix socket. One JSON object
//! per line; asynchronous events are interleaved with answers and skipped here.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use super::error::{MigrationStatus, QmpError, RunState};

const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    pub async fn connect(socket: &Path) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| QmpError::Connect {
                socket: socket.to_path_buf(),
                source,
            })?;
        let (r, w) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(r),
            writer: w,
        };
        let greeting = qmp.read().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::NotGreeting(greeting.to_string()));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    async fn read(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = tokio::time::timeout(ANSWER_TIMEOUT, self.reader.read_line(&mut line))
            .await
            .map_err(|_| QmpError::Timeout)?
            .map_err(QmpError::Io)?;
        if n == 0 {
            return Err(QmpError::Closed);
        }
        serde_json::from_str(&line).map_err(|source| QmpError::BadMessage { line, source })
    }

    /// Runs a command and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command });
        if let Some(args) = arguments {
            request["arguments"] = args;
        }
        let mut text = request.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .await
            .map_err(QmpError::Io)?;
        loop {
            let msg = self.read().await?;
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = msg.get("error") {
                return Err(QmpError::Refused {
                    command: command.to_string(),
                    desc: err["desc"].as_str().unwrap_or("failed").to_string(),
                });
            }
            // An event: not ours to handle.
        }
    }

    /// The VM's run state.
    pub async fn status(&mut self) -> Result<RunState, QmpError> {
        let v = self.execute("query-status", None).await?;
        Ok(serde_json::from_value(v["status"].clone()).unwrap_or(RunState::Other))
    }

    /// Where the outgoing migration stands, and QEMU's description of a failure.
    pub async fn migration(&mut self) -> Result<(MigrationStatus, String), QmpError> {
        let v = self.execute("query-migrate", None).await?;
        let status =
            serde_json::from_value(v["status"].clone()).unwrap_or(MigrationStatus::InProgress);
        let desc = v["error-desc"].as_str().unwrap_or("").to_string();
        Ok((status, desc))
    }
}

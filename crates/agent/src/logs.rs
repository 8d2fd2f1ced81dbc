//! Machine logs: each machine's console (its processes' stdout and stderr) is appended by the
//! runtime to `DATA_DIR/logs/<id>.log`. The agent keeps those files bounded and serves their
//! tails, and follows them as they grow.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::error::AgentError;
use crate::Agent;

/// A log past this size is cut back to about half of it, oldest lines first.
const MAX_LOG_BYTES: u64 = 8 << 20;
const TRIM_EVERY: Duration = Duration::from_secs(10);
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// At most this much of a file is read to find its last lines.
const TAIL_WINDOW: u64 = 1 << 20;

/// One line a machine printed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogLine {
    pub instance: String,
    pub region: String,
    pub message: String,
}

/// Runs for the life of the agent: cuts logs that grew past the limit. The runtime's writers
/// append (O_APPEND), so cutting from the front under them is safe: collapsing the first
/// blocks where the filesystem can, else emptying the file.
pub(crate) async fn keep_bounded(dir: PathBuf) {
    let mut ticker = tokio::time::interval(TRIM_EVERY);
    loop {
        ticker.tick().await;
        let dir = dir.clone();
        let _ = tokio::task::spawn_blocking(move || trim_all(&dir, MAX_LOG_BYTES)).await;
    }
}

fn trim_all(dir: &Path, max: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            if let Err(e) = trim(&path, max) {
                warn!(log = %path.display(), error = %e, "could not trim a machine log");
            }
        }
    }
}

/// Cuts `path` back to about `max / 2` when it is over `max`.
pub(crate) fn trim(path: &Path, max: u64) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let len = file.metadata()?.len();
    if len <= max {
        return Ok(());
    }
    // Collapsing works in whole filesystem blocks.
    let cut = (len - max / 2) / 4096 * 4096;
    let collapsed = nix::fcntl::fallocate(
        file.as_fd(),
        nix::fcntl::FallocateFlags::FALLOC_FL_COLLAPSE_RANGE,
        0,
        cut as i64,
    );
    match collapsed {
        Ok(()) => debug!(log = %path.display(), cut, "trimmed a machine log"),
        Err(_) => file.set_len(0)?,
    }
    Ok(())
}

/// The last `lines` complete lines of a file, and the offset just past them.
fn tail(path: &Path, lines: usize) -> std::io::Result<(Vec<String>, u64)> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = len.saturating_sub(TAIL_WINDOW);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    // Only whole lines: drop a partial last one (it is still being written) and, when the
    // window starts mid-file, a partial first one.
    let end = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let begin = if start > 0 {
        buf.iter()
            .position(|&b| b == b'\n')
            .map_or(end, |i| (i + 1).min(end))
    } else {
        0
    };
    let text = String::from_utf8_lossy(&buf[begin..end]);
    let all: Vec<&str> = text.lines().collect();
    let keep = all.len().saturating_sub(lines);
    Ok((
        all[keep..].iter().map(|s| s.to_string()).collect(),
        start + end as u64,
    ))
}

/// New complete lines of a file from `offset`; moves `offset` past them. A file that shrank
/// (trimmed) is read again from its start.
fn read_new(path: &Path, offset: &mut u64) -> std::io::Result<Vec<String>> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len < *offset {
        *offset = 0;
    }
    if len == *offset {
        return Ok(Vec::new());
    }
    file.seek(SeekFrom::Start(*offset))?;
    let mut buf = Vec::new();
    file.by_ref().take(TAIL_WINDOW).read_to_end(&mut buf)?;
    let end = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    *offset += end as u64;
    Ok(String::from_utf8_lossy(&buf[..end])
        .lines()
        .map(str::to_string)
        .collect())
}

impl Agent {
    /// The machines whose logs a request covers: one, or every live machine of the app.
    fn log_machines(
        &self,
        app: &str,
        machine: Option<&str>,
    ) -> Result<Vec<(String, String)>, AgentError> {
        match machine {
            Some(id) => {
                let rec = self.machine_record(app, id)?;
                Ok(vec![(rec.id, rec.region)])
            }
            None => {
                self.app_record(app)?;
                Ok(self
                    .inner
                    .store
                    .list_machines(app, false)?
                    .into_iter()
                    .map(|m| (m.id, m.region))
                    .collect())
            }
        }
    }

    /// The last `lines` lines of each machine's log, machine by machine.
    pub fn logs(
        &self,
        app: &str,
        machine: Option<&str>,
        lines: usize,
    ) -> Result<Vec<LogLine>, AgentError> {
        let mut out = Vec::new();
        for (id, region) in self.log_machines(app, machine)? {
            let (tail, _) = tail(&self.inner.log_path(&id), lines)
                .map_err(|e| AgentError::Internal(format!("cannot read the log of {id}: {e}")))?;
            out.extend(tail.into_iter().map(|message| LogLine {
                instance: id.clone(),
                region: region.clone(),
                message,
            }));
        }
        Ok(out)
    }

    /// Sends the last `lines` lines, then every new line as it is written, until `tx` closes.
    /// Machines of the app created meanwhile are followed from their first line.
    pub async fn follow_logs(
        &self,
        app: &str,
        machine: Option<&str>,
        lines: usize,
        tx: mpsc::Sender<LogLine>,
    ) -> Result<(), AgentError> {
        let mut offsets: HashMap<String, u64> = HashMap::new();
        for (id, region) in self.log_machines(app, machine)? {
            let (tail, offset) = tail(&self.inner.log_path(&id), lines)
                .map_err(|e| AgentError::Internal(format!("cannot read the log of {id}: {e}")))?;
            for message in tail {
                let line = LogLine {
                    instance: id.clone(),
                    region: region.clone(),
                    message,
                };
                if tx.send(line).await.is_err() {
                    return Ok(());
                }
            }
            offsets.insert(id, offset);
        }
        loop {
            tokio::time::sleep(FOLLOW_POLL).await;
            if tx.is_closed() {
                return Ok(());
            }
            let Ok(machines) = self.log_machines(app, machine) else {
                return Ok(());
            };
            for (id, region) in machines {
                let offset = offsets.entry(id.clone()).or_insert(0);
                let new = read_new(&self.inner.log_path(&id), offset).unwrap_or_default();
                for message in new {
                    let line = LogLine {
                        instance: id.clone(),
                        region: region.clone(),
                        message,
                    };
                    if tx.send(line).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn tail_and_follow_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.log");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"one\ntwo\nthree\npart").unwrap();
        let (lines, mut offset) = tail(&path, 2).unwrap();
        assert_eq!(lines, ["two", "three"]);
        assert_eq!(read_new(&path, &mut offset).unwrap(), Vec::<String>::new());
        f.write_all(b"ial\nfour\n").unwrap();
        assert_eq!(read_new(&path, &mut offset).unwrap(), ["partial", "four"]);
        assert_eq!(
            tail(&dir.path().join("none.log"), 5).unwrap().0,
            Vec::<String>::new()
        );
    }

    #[test]
    fn trim_keeps_the_log_bounded_and_the_newest_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.log");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        for i in 0..20_000 {
            writeln!(f, "line {i:06}").unwrap();
        }
        let before = std::fs::metadata(&path).unwrap().len();
        trim(&path, 64 * 1024).unwrap();
        let after = std::fs::metadata(&path).unwrap().len();
        assert!(after <= 64 * 1024, "{before} → {after}");
        // The writer keeps appending after the cut, and the newest lines survive.
        writeln!(f, "line after").unwrap();
        let (last, _) = tail(&path, 2).unwrap();
        assert_eq!(last, ["line 019999", "line after"]);
    }
}

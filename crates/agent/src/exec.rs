//! Commands run inside a started machine: one-shot execs and interactive sessions.

use std::time::Duration;

use hangar_proto::{ExecSpec, ProcessSpec};
use hangar_runtime::{ExecSession, GuestError};
use hangar_types::{ExecRequest, ExecResponse};

use crate::error::AgentError;
use crate::machine::{self, Command};
use crate::Agent;

/// An exec without a timeout may run this long.
const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);

impl Agent {
    /// Runs a command inside a started machine and returns its output.
    pub async fn exec(
        &self,
        app: &str,
        id: &str,
        req: ExecRequest,
    ) -> Result<ExecResponse, AgentError> {
        self.machine_record(app, id)?;
        let argv = exec_argv(req.command, req.cmd)?;
        let limit = req
            .timeout
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_EXEC_TIMEOUT);
        let guest = self.command(id, |reply| Command::Guest { reply }).await?;
        let spec = ExecSpec {
            process: exec_process(argv, false),
            stdin: req.stdin.map(String::into_bytes),
            ..Default::default()
        };
        let out = machine::exec(guest, spec, limit).await?;
        Ok(ExecResponse {
            exit_code: out.status.shell_code(),
            exit_signal: out.status.signal.unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Starts an interactive command in a started machine (a shell, `exec -t`), with a
    /// terminal of `size` (rows, cols) when given.
    pub async fn exec_session(
        &self,
        app: &str,
        id: &str,
        command: Option<Vec<String>>,
        cmd: Option<String>,
        size: Option<(u16, u16)>,
    ) -> Result<ExecSession, AgentError> {
        self.machine_record(app, id)?;
        let argv = exec_argv(command, cmd)?;
        let guest = self.command(id, |reply| Command::Guest { reply }).await?;
        let (rows, cols) = size.unwrap_or_default();
        let spec = ExecSpec {
            process: exec_process(argv, size.is_some()),
            interactive: true,
            rows,
            cols,
            ..Default::default()
        };
        guest.session(spec).await.map_err(|e| match e {
            GuestError::Refused(m) => AgentError::InvalidArgument(m),
            other => AgentError::Unavailable(format!("the machine did not answer: {other}")),
        })
    }
}

/// The command of an exec: `command` (an argv), else fly-go's `cmd` string split as a shell
/// would.
fn exec_argv(command: Option<Vec<String>>, cmd: Option<String>) -> Result<Vec<String>, AgentError> {
    match (command, cmd) {
        (Some(argv), _) if !argv.is_empty() => Ok(argv),
        (_, Some(cmd)) if !cmd.trim().is_empty() => shlex::split(&cmd).ok_or_else(|| {
            AgentError::InvalidArgument(format!("cmd {cmd:?} has unbalanced quotes"))
        }),
        _ => Err(AgentError::InvalidArgument(
            "command: a non-empty command is required".into(),
        )),
    }
}

/// Execs run as root in the machine's root directory; init gives them the machine's
/// environment.
fn exec_process(argv: Vec<String>, tty: bool) -> ProcessSpec {
    ProcessSpec {
        argv,
        env: Vec::new(),
        cwd: String::new(),
        user: "root".into(),
        tty,
    }
}

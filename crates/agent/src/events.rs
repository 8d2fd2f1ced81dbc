//! Machine events in Fly's shape, and the clock they are stamped with.

use std::time::{SystemTime, UNIX_EPOCH};

use hangar_proto::ExitStatus;
use hangar_types::{new_event_id, ExitEvent, MachineEvent, MachineState};
use serde_json::json;

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 in UTC with second precision, as Fly writes `created_at`.
pub(crate) fn rfc3339(ms: i64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

/// Who caused an event: a caller of the API, or the host on its own.
#[derive(Clone, Copy)]
pub(crate) enum Source {
    User,
    Host,
}

pub(crate) fn event(kind: &str, status: MachineState, source: Source) -> MachineEvent {
    MachineEvent {
        id: new_event_id(),
        kind: kind.to_string(),
        status: status.as_str().to_string(),
        source: match source {
            Source::User => "user",
            Source::Host => "flyd",
        }
        .to_string(),
        timestamp: now_ms(),
        request: None,
    }
}

/// An event that carries an error message (a boot that failed, say).
pub(crate) fn failure(kind: &str, status: MachineState, message: &str) -> MachineEvent {
    MachineEvent {
        request: Some(json!({ "error": message })),
        ..event(kind, status, Source::Host)
    }
}

/// The `exit` event: how the process ended and what happens next.
pub(crate) fn exit(
    status: &ExitStatus,
    next: MachineState,
    oom_killed: bool,
    requested_stop: bool,
    restart_count: u32,
) -> MachineEvent {
    let exit = ExitEvent {
        exit_code: status.shell_code(),
        guest_exit_code: status.code.unwrap_or(-1),
        signal: status.signal.unwrap_or(-1),
        guest_signal: status.signal.unwrap_or(-1),
        oom_killed,
        requested_stop,
        restarting: next == MachineState::Restarting,
        exited_at: rfc3339(if status.exited_at_ms > 0 {
            status.exited_at_ms
        } else {
            now_ms()
        }),
        guest_error: status.error.clone().unwrap_or_default(),
    };
    MachineEvent {
        request: Some(json!({ "exit_event": exit, "restart_count": restart_count })),
        ..event("exit", next, Source::Host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_event_has_fly_shape() {
        let st = ExitStatus {
            code: None,
            signal: Some(9),
            error: None,
            exited_at_ms: 1_700_000_000_000,
        };
        let e = exit(&st, MachineState::Stopped, false, true, 0);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "exit");
        assert_eq!(v["status"], "stopped");
        assert_eq!(v["source"], "flyd");
        let x = &v["request"]["exit_event"];
        assert_eq!(x["exit_code"], 137);
        assert_eq!(x["signal"], 9);
        assert_eq!(x["requested_stop"], true);
        assert_eq!(x["oom_killed"], false);
        assert_eq!(x["exited_at"], "2023-11-14T22:13:20Z");
    }
}

//! Waiting for a machine to reach a state, as Fly's `/wait` does.

use std::time::Duration;

use hangar_store::MachineRecord;
use hangar_types::{MachineState, WaitResponse};

use crate::error::AgentError;
use crate::Agent;

/// Fly caps waits at 60 seconds.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// A wait request: states to wait for and the conditions on them.
pub struct Wait<'a> {
    pub states: Vec<WaitFor>,
    pub version: Option<&'a str>,
    pub from_event_id: Option<&'a str>,
    pub timeout: Duration,
}

/// What `wait` waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitFor {
    State(MachineState),
    /// Any state that is not transient.
    Settled,
}

impl WaitFor {
    pub fn parse(s: &str) -> Option<WaitFor> {
        match s {
            "settled" => Some(WaitFor::Settled),
            "started" | "stopped" | "suspended" | "destroyed" | "failed" => {
                MachineState::parse(s).map(WaitFor::State)
            }
            _ => None,
        }
    }

    fn matches(self, state: MachineState) -> bool {
        match self {
            WaitFor::State(s) => s == state,
            WaitFor::Settled => !state.is_transient(),
        }
    }
}

impl Agent {
    /// Waits until the machine reaches one of `states`, up to `timeout` (at most 60 s).
    /// With `version`, the wait is for that version of the machine; with `from_event_id`,
    /// only a state reached after that event counts.
    pub async fn wait_machine(
        &self,
        app: &str,
        id: &str,
        w: Wait<'_>,
    ) -> Result<WaitResponse, AgentError> {
        let waits_for_stop = w.states.contains(&WaitFor::State(MachineState::Stopped));
        if waits_for_stop && w.version.is_none() {
            return Err(AgentError::InvalidArgument(
                "version: waiting for the stopped state needs the machine version (instance_id)"
                    .into(),
            ));
        }
        let mut changes = self.inner.changes.subscribe();
        let deadline = tokio::time::Instant::now() + w.timeout.min(MAX_WAIT);
        loop {
            let rec = self.machine_record(app, id)?;
            if let Some(v) = w.version {
                if v != rec.instance_id {
                    let known = self
                        .inner
                        .store
                        .versions(id)?
                        .iter()
                        .any(|old| old.instance_id == v);
                    return Err(AgentError::InvalidArgument(if known {
                        format!(
                            "machine {id} version {v} is currently replaced by version {}",
                            rec.instance_id
                        )
                    } else {
                        format!(
                            "machine {id} has no version {v:?} (its version is {})",
                            rec.instance_id
                        )
                    }));
                }
            }
            if let Some(reached) = self.reached(id, &rec, &w)? {
                return Ok(WaitResponse {
                    ok: true,
                    state: reached.0,
                    version: Some(rec.instance_id),
                    event_id: reached.1,
                });
            }
            loop {
                match tokio::time::timeout_at(deadline, changes.recv()).await {
                    Err(_) => {
                        return Err(AgentError::Timeout(format!(
                            "machine {id} did not reach the requested state in time (it is {})",
                            rec.state
                        )))
                    }
                    Ok(Ok(changed)) if changed != id => continue,
                    Ok(_) => break,
                }
            }
        }
    }

    /// The state a wait was for and the event that brought it, when it has been reached.
    fn reached(
        &self,
        id: &str,
        rec: &MachineRecord,
        w: &Wait<'_>,
    ) -> Result<Option<(MachineState, Option<String>)>, AgentError> {
        let Some(after) = w.from_event_id else {
            if !w.states.iter().any(|s| s.matches(rec.state)) {
                return Ok(None);
            }
            let event_id = self
                .inner
                .store
                .events(id, 1)?
                .into_iter()
                .next()
                .map(|e| e.id);
            return Ok(Some((rec.state, event_id)));
        };
        // Events newest first: those before `after` in the list happened after it.
        let events = self.inner.store.events(id, 500)?;
        let Some(pos) = events.iter().position(|e| e.id == after) else {
            return Err(AgentError::InvalidArgument(format!(
                "from_event_id: machine {id} has no recent event {after:?}"
            )));
        };
        Ok(events[..pos].iter().rev().find_map(|e| {
            let state = MachineState::parse(&e.status)?;
            w.states
                .iter()
                .any(|s| s.matches(state))
                .then(|| (state, Some(e.id.clone())))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_states() {
        assert_eq!(
            WaitFor::parse("started"),
            Some(WaitFor::State(MachineState::Started))
        );
        assert_eq!(WaitFor::parse("settled"), Some(WaitFor::Settled));
        assert_eq!(
            WaitFor::parse("starting"),
            None,
            "only settled states can be waited for"
        );
        assert!(WaitFor::Settled.matches(MachineState::Stopped));
        assert!(!WaitFor::Settled.matches(MachineState::Stopping));
    }
}

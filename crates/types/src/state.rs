//! Machine states and the one table that says which changes between them are allowed.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A machine's state, named as in Fly's docs (machines/machine-states).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    Created,
    Starting,
    Started,
    Stopping,
    Stopped,
    Restarting,
    Suspending,
    Suspended,
    Updating,
    Replacing,
    Destroying,
    Destroyed,
    Failed,
    LaunchFailed,
    Replaced,
    Migrated,
}

impl MachineState {
    pub const ALL: [MachineState; 16] = [
        Self::Created,
        Self::Starting,
        Self::Started,
        Self::Stopping,
        Self::Stopped,
        Self::Restarting,
        Self::Suspending,
        Self::Suspended,
        Self::Updating,
        Self::Replacing,
        Self::Destroying,
        Self::Destroyed,
        Self::Failed,
        Self::LaunchFailed,
        Self::Replaced,
        Self::Migrated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Starting => "starting",
            Self::Started => "started",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Restarting => "restarting",
            Self::Suspending => "suspending",
            Self::Suspended => "suspended",
            Self::Updating => "updating",
            Self::Replacing => "replacing",
            Self::Destroying => "destroying",
            Self::Destroyed => "destroyed",
            Self::Failed => "failed",
            Self::LaunchFailed => "launch_failed",
            Self::Replaced => "replaced",
            Self::Migrated => "migrated",
        }
    }

    pub fn parse(s: &str) -> Option<MachineState> {
        Self::ALL.iter().copied().find(|st| st.as_str() == s)
    }

    /// A state the machine passes through while an operation is under way.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::Starting
                | Self::Stopping
                | Self::Restarting
                | Self::Suspending
                | Self::Updating
                | Self::Replacing
                | Self::Destroying
                | Self::LaunchFailed
        )
    }

    /// Whether a machine in this state has memory on its host (running, frozen, or about to).
    pub fn holds_resources(self) -> bool {
        matches!(
            self,
            Self::Starting
                | Self::Started
                | Self::Stopping
                | Self::Restarting
                | Self::Suspending
                | Self::Suspended
                | Self::Updating
                | Self::Replacing
        )
    }

    /// The one table of the operations a caller may ask for in each state. Every verb of the
    /// agent asks it first, so what a machine accepts is decided here and nowhere else.
    pub fn admit(self, op: Operation) -> Admission {
        use Admission::*;
        use MachineState::*;
        use Operation as Op;
        match (op, self) {
            (Op::Start, Started | Starting) => Noop,
            (Op::Start, Created | Stopped | Failed | Restarting | Suspended) => Begin(Starting),
            (Op::Start, _) => Refuse("cannot be started"),

            (Op::Stop, Created | Stopped | Failed | Stopping) => Noop,
            (Op::Stop, Started | Restarting | Suspended) => Begin(Stopping),
            (Op::Stop, _) => Refuse("cannot be stopped"),

            (Op::Restart, Started) => Begin(Restarting),
            (Op::Restart, _) => Refuse("cannot be restarted (start it instead)"),

            (Op::Signal, Started) => Proceed,
            (Op::Signal, _) => Refuse("cannot be signalled (it is not running)"),

            (Op::Suspend, Suspended | Suspending) => Noop,
            (Op::Suspend, Started) => Begin(Suspending),
            (Op::Suspend, _) => Refuse("cannot be suspended"),

            (Op::Update, Created | Stopped | Failed | Started | Suspended | Restarting) => {
                Begin(Updating)
            }
            (Op::Update, _) => Refuse("cannot be updated now; wait for it to settle"),

            (Op::Destroy | Op::ForceDestroy, Destroying | Destroyed) => {
                Refuse("cannot be destroyed again")
            }
            (Op::Destroy | Op::ForceDestroy, Created | Stopped | Failed | Suspended) => {
                Begin(Destroying)
            }
            (Op::ForceDestroy, Started | Starting | Stopping | Restarting | Suspending) => {
                Begin(Destroying)
            }
            (Op::Destroy, Started | Starting | Stopping | Restarting | Suspending) => Refuse(
                "cannot be destroyed while it runs: stop it first, or destroy it with force=true",
            ),
            (Op::Destroy | Op::ForceDestroy, _) => {
                Refuse("cannot be destroyed now; wait for it to settle")
            }

            (Op::Exec, Started) => Proceed,
            (Op::Exec, _) => Refuse("is not running: this needs a started machine"),
        }
    }

    /// The state changes the agent makes: those [`MachineState::admit`] begins, and those by
    /// which a flow settles. The store refuses any other, so an impossible change (starting a
    /// destroyed machine, say) cannot be recorded whatever the caller's bug.
    pub fn can_become(self, to: MachineState) -> bool {
        use MachineState::*;
        matches!(
            (self, to),
            // Begun by a verb (see `admit`).
            (Created | Stopped | Failed | Restarting | Suspended, Starting)
                | (Started | Restarting | Suspended, Stopping)
                | (Started, Restarting | Suspending)
                | (Created | Stopped | Failed | Started | Suspended | Restarting, Updating)
                | (
                    Created | Stopped | Failed | Suspended | Started | Starting | Stopping
                        | Restarting | Suspending,
                    Destroying
                )
                // How flows settle.
                | (Starting, Started | Failed)
                | (Stopping, Stopped)
                // The main process exited: stopped, or restarting by the restart policy.
                | (Started, Stopped)
                // A suspend that failed stops the machine instead, as Fly does.
                | (Suspending, Suspended | Stopped)
                | (Updating, Created | Starting | Stopped)
                | (Destroying, Destroyed)
        )
    }
}

/// What a caller can ask of a machine; see [`MachineState::admit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    Start,
    Stop,
    Restart,
    Signal,
    Suspend,
    Update,
    Destroy,
    /// A destroy with `force=true`: a running machine is killed first.
    ForceDestroy,
    /// Anything that talks to the running guest: exec, ps, a console.
    Exec,
}

impl Operation {
    pub const ALL: [Operation; 9] = [
        Self::Start,
        Self::Stop,
        Self::Restart,
        Self::Signal,
        Self::Suspend,
        Self::Update,
        Self::Destroy,
        Self::ForceDestroy,
        Self::Exec,
    ];
}

/// Whether an operation may go ahead in a machine's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The machine already is where the operation would take it: answer success, do nothing.
    Noop,
    /// Record the machine in this transitional state, then carry the operation out.
    Begin(MachineState),
    /// Go ahead without a state change (a signal, an exec).
    Proceed,
    /// Refused; the reason completes "machine <id> is <state> and ...".
    Refuse(&'static str),
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::MachineState::*;
    use super::*;

    #[test]
    fn names_round_trip() {
        for st in MachineState::ALL {
            assert_eq!(MachineState::parse(st.as_str()), Some(st));
            assert_eq!(
                serde_json::to_string(&st).unwrap(),
                format!("\"{}\"", st.as_str())
            );
        }
        assert_eq!(MachineState::parse("running"), None);
    }

    /// Every (operation, state) pair, written out: `.` no-op, `go` proceed, `no` refuse, else
    /// the state the operation begins in. Columns follow `MachineState::ALL`.
    #[rustfmt::skip]
    const EXPECTED: [(Operation, [&str; 16]); 9] = [
        //                    created     starting    started      stopping    stopped     restarting  suspending  suspended   updating replacing destroying destroyed failed      launch_failed replaced migrated
        (Operation::Start,   ["starting", ".",        ".",         "no",       "starting", "starting", "no",       "starting", "no",    "no",     "no",      "no",     "starting", "no",  "no", "no"]),
        (Operation::Stop,    [".",        "no",       "stopping",  ".",        ".",        "stopping", "no",       "stopping", "no",    "no",     "no",      "no",     ".",        "no",  "no", "no"]),
        (Operation::Restart, ["no",       "no",       "restarting","no",       "no",       "no",       "no",       "no",       "no",    "no",     "no",      "no",     "no",       "no",  "no", "no"]),
        (Operation::Signal,  ["no",       "no",       "go",        "no",       "no",       "no",       "no",       "no",       "no",    "no",     "no",      "no",     "no",       "no",  "no", "no"]),
        (Operation::Suspend, ["no",       "no",       "suspending","no",       "no",       "no",       ".",        ".",        "no",    "no",     "no",      "no",     "no",       "no",  "no", "no"]),
        (Operation::Update,  ["updating", "no",       "updating",  "no",       "updating", "updating", "no",       "updating", "no",    "no",     "no",      "no",     "updating", "no",  "no", "no"]),
        (Operation::Destroy, ["destroying","no",      "no",        "no",       "destroying","no",      "no",       "destroying","no",   "no",     "no",      "no",     "destroying","no", "no", "no"]),
        (Operation::ForceDestroy, ["destroying","destroying","destroying","destroying","destroying","destroying","destroying","destroying","no","no","no",  "no",     "destroying","no", "no", "no"]),
        (Operation::Exec,    ["no",       "no",       "go",        "no",       "no",       "no",       "no",       "no",       "no",    "no",     "no",      "no",     "no",       "no",  "no", "no"]),
    ];

    #[test]
    fn admission_table_is_exactly_as_written() {
        let ops: Vec<Operation> = EXPECTED.iter().map(|(op, _)| *op).collect();
        assert_eq!(ops, Operation::ALL, "every operation has a row");
        for (op, row) in EXPECTED {
            for (state, want) in MachineState::ALL.into_iter().zip(row) {
                let got = state.admit(op);
                let ok = match (want, got) {
                    (".", Admission::Noop) | ("go", Admission::Proceed) => true,
                    ("no", Admission::Refuse(reason)) => !reason.is_empty(),
                    (to, Admission::Begin(s)) => s.as_str() == to,
                    _ => false,
                };
                assert!(ok, "{op:?} in {state}: expected {want}, got {got:?}");
            }
        }
    }

    #[test]
    fn every_begin_is_an_allowed_transition() {
        for op in Operation::ALL {
            for state in MachineState::ALL {
                if let Admission::Begin(to) = state.admit(op) {
                    assert!(
                        to.is_transient(),
                        "{op:?} begins in {to}, which is not transient"
                    );
                    assert!(
                        state.can_become(to),
                        "{op:?}: {state} -> {to} is not in can_become"
                    );
                }
            }
        }
    }

    #[test]
    fn lifecycle_paths_are_allowed() {
        let path = [
            Created, Starting, Started, Stopping, Stopped, Starting, Started, Stopped, Destroying,
            Destroyed,
        ];
        for pair in path.windows(2) {
            assert!(pair[0].can_become(pair[1]), "{} -> {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn terminal_states_go_nowhere() {
        for from in [Destroyed, Replaced, Migrated] {
            for to in MachineState::ALL {
                assert!(!from.can_become(to), "{from} -> {to} must be refused");
            }
        }
    }

    #[test]
    fn refused_changes() {
        assert!(
            !Stopped.can_become(Started),
            "a start goes through starting"
        );
        assert!(!Created.can_become(Stopped));
        assert!(!Destroying.can_become(Starting));
        assert!(
            !Started.can_become(Destroyed),
            "destroy goes through destroying"
        );
        for st in MachineState::ALL {
            assert!(!st.can_become(st), "no self transitions ({st})");
        }
    }

    /// The states a machine can reach from `created`.
    fn reachable() -> Vec<MachineState> {
        let mut seen = vec![Created];
        let mut i = 0;
        while i < seen.len() {
            let from = seen[i];
            for to in MachineState::ALL {
                if from.can_become(to) && !seen.contains(&to) {
                    seen.push(to);
                }
            }
            i += 1;
        }
        seen
    }

    #[test]
    fn every_reachable_transient_state_can_settle() {
        for st in reachable().into_iter().filter(|s| s.is_transient()) {
            // Follow edges until a settled state turns up (restarting settles via starting).
            let mut seen = vec![st];
            let mut i = 0;
            while i < seen.len() && seen.iter().all(|s| s.is_transient()) {
                for to in MachineState::ALL {
                    if seen[i].can_become(to) && !seen.contains(&to) {
                        seen.push(to);
                    }
                }
                i += 1;
            }
            assert!(
                seen.iter().any(|s| !s.is_transient()),
                "{st} has no way out"
            );
        }
    }

    #[test]
    fn states_hangar_never_enters_have_no_edges() {
        let reachable = reachable();
        for st in [Replacing, LaunchFailed, Replaced, Migrated] {
            assert!(!reachable.contains(&st), "{st} is reachable");
            assert!(
                MachineState::ALL.iter().all(|to| !st.can_become(*to)),
                "{st} has an edge nothing takes"
            );
        }
    }
}

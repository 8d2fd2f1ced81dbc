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

    /// The one table of allowed state changes. Every transition the agent makes is checked
    /// against it, so an impossible change (starting a destroyed machine, say) is refused in
    /// one place instead of being guarded ad hoc at each call site.
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

    pub fn can_become(self, to: MachineState) -> bool {
        use MachineState::*;
        matches!(
            (self, to),
            (Created, Starting)
                | (Created, Updating)
                | (Created, Destroying)
                | (Starting, Started)
                | (Starting, Stopped)
                | (Starting, Failed)
                | (Starting, Stopping)
                | (Starting, Destroying)
                | (Started, Stopping)
                | (Started, Stopped)
                | (Started, Restarting)
                | (Started, Suspending)
                | (Started, Updating)
                | (Started, Destroying)
                | (Started, Failed)
                | (Stopping, Stopped)
                | (Stopping, Failed)
                | (Stopping, Destroying)
                | (Restarting, Starting)
                | (Restarting, Stopped)
                | (Restarting, Failed)
                | (Restarting, Destroying)
                | (Restarting, Updating)
                | (Stopped, Starting)
                | (Stopped, Updating)
                | (Stopped, Destroying)
                | (Suspending, Suspended)
                | (Suspending, Stopped)
                | (Suspending, Failed)
                | (Suspending, Destroying)
                | (Suspended, Starting)
                | (Suspended, Stopping)
                | (Suspended, Stopped)
                | (Suspended, Updating)
                | (Suspended, Destroying)
                | (Updating, Created)
                | (Updating, Starting)
                | (Updating, Stopped)
                | (Updating, Failed)
                | (Failed, Starting)
                | (Failed, Stopped)
                | (Failed, Updating)
                | (Failed, Destroying)
                | (Replacing, Started)
                | (Replacing, Stopped)
                | (Replacing, Failed)
                | (Destroying, Destroyed)
                | (LaunchFailed, Destroyed)
        )
    }
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
        assert!(!Stopped.can_become(Stopped), "no self transitions");
    }

    #[test]
    fn every_transient_state_can_settle() {
        for st in MachineState::ALL.into_iter().filter(|s| s.is_transient()) {
            assert!(
                MachineState::ALL
                    .iter()
                    .any(|to| !to.is_transient() && st.can_become(*to)),
                "{st} has no way out"
            );
        }
    }
}

//! Which runtime boots a machine (`config.guest.runtime`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The two ways this host isolates a machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// A runc container.
    Sandbox,
    /// A QEMU microVM.
    Microvm,
}

impl RuntimeKind {
    pub const ALL: [RuntimeKind; 2] = [RuntimeKind::Sandbox, RuntimeKind::Microvm];

    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Sandbox => "sandbox",
            RuntimeKind::Microvm => "microvm",
        }
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A runtime name this host does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown runtime {0:?} (expected \"sandbox\" or \"microvm\")")]
pub struct UnknownRuntime(pub String);

impl FromStr for RuntimeKind {
    type Err = UnknownRuntime;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RuntimeKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownRuntime(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_json() {
        for kind in RuntimeKind::ALL {
            assert_eq!(kind.to_string().parse::<RuntimeKind>(), Ok(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{kind}\""));
            assert_eq!(serde_json::from_str::<RuntimeKind>(&json).unwrap(), kind);
        }
    }

    #[test]
    fn an_unknown_name_is_named_in_the_error() {
        let err = "firecracker".parse::<RuntimeKind>().unwrap_err();
        assert_eq!(err, UnknownRuntime("firecracker".into()));
        assert!(err.to_string().contains("\"firecracker\""), "{err}");
        // Names are exact: the wire carries them lowercase.
        assert!("Sandbox".parse::<RuntimeKind>().is_err());
        assert!(serde_json::from_str::<RuntimeKind>("\"qemu\"").is_err());
    }
}

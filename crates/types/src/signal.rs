//! POSIX signals as the API names them: `"SIGTERM"`, `"TERM"` or a bare number (fly-go's
//! `fly m kill` sends `{"signal": 9}`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A Linux signal number known to the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Signal(i32);

#[derive(Debug, thiserror::Error)]
#[error("unknown signal {0:?} (expected a name such as SIGTERM, SIGINT or SIGKILL, or its number)")]
pub struct SignalError(pub String);

const NAMES: &[(&str, i32)] = &[
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGILL", 4),
    ("SIGTRAP", 5),
    ("SIGABRT", 6),
    ("SIGBUS", 7),
    ("SIGFPE", 8),
    ("SIGKILL", 9),
    ("SIGUSR1", 10),
    ("SIGSEGV", 11),
    ("SIGUSR2", 12),
    ("SIGPIPE", 13),
    ("SIGALRM", 14),
    ("SIGTERM", 15),
    ("SIGCHLD", 17),
    ("SIGCONT", 18),
    ("SIGSTOP", 19),
    ("SIGTSTP", 20),
    ("SIGWINCH", 28),
];

impl Signal {
    pub const INT: Signal = Signal(2);
    pub const KILL: Signal = Signal(9);
    pub const TERM: Signal = Signal(15);

    pub fn from_number(n: i32) -> Result<Signal, SignalError> {
        if (1..=64).contains(&n) {
            Ok(Signal(n))
        } else {
            Err(SignalError(n.to_string()))
        }
    }

    pub fn number(self) -> i32 {
        self.0
    }

    /// The `SIGxxx` name, or the number for real-time signals.
    pub fn name(self) -> String {
        NAMES
            .iter()
            .find(|(_, n)| *n == self.0)
            .map(|(name, _)| (*name).to_string())
            .unwrap_or_else(|| self.0.to_string())
    }
}

impl FromStr for Signal {
    type Err = SignalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Ok(n) = t.parse::<i32>() {
            return Signal::from_number(n);
        }
        let upper = t.to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        NAMES
            .iter()
            .find(|(name, _)| *name == full)
            .map(|(_, n)| Signal(*n))
            .ok_or_else(|| SignalError(s.to_string()))
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl Serialize for Signal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Name(String),
            Number(i32),
        }
        let wire = Wire::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a signal name such as \"SIGTERM\" or a number")
        })?;
        match wire {
            Wire::Name(s) => s.parse(),
            Wire::Number(n) => Signal::from_number(n),
        }
        .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!("SIGTERM".parse::<Signal>().unwrap(), Signal::TERM);
        assert_eq!("int".parse::<Signal>().unwrap(), Signal::INT);
        assert_eq!("9".parse::<Signal>().unwrap(), Signal::KILL);
        assert!("SIGNOPE".parse::<Signal>().is_err());
        assert!("0".parse::<Signal>().is_err());
        let s: Signal = serde_json::from_str("9").unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"SIGKILL\"");
    }
}

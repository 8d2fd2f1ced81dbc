//! `fly.MachineConfig` and its parts, with Fly's validation rules.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::check::MachineCheck;
use crate::duration::GoDuration;
use crate::service::MachineService;
use crate::signal::Signal;

/// Fly stops machines with SIGINT unless told otherwise (flyctl's `--signal` default).
pub const DEFAULT_STOP_SIGNAL: Signal = Signal::INT;
/// How long a stop waits for the process before SIGKILL, unless the config says otherwise.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A machine's configuration. Each update makes a new version of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineConfig {
    #[serde(default)]
    pub image: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<MachineInit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<MachineGuest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<MachineRestart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_destroy: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_config: Option<StopConfig>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<GuestFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<MachineProcess>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<MachineService>,
    /// Named top-level health checks.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, MachineCheck>,
    /// Owned by the volumes subsystem; kept verbatim until it lands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounts: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsConfig>,
    /// Machines this one stands by for: it is started when one of them fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub standbys: Vec<String>,
    /// Fields this version of Hangar does not model, preserved so clients get back what they sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineInit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_size_mb: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_args: Option<Vec<String>>,
}

/// CPU and memory of a machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MachineGuest {
    #[serde(default = "default_cpu_kind")]
    pub cpu_kind: String,
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
    /// Hangar extension: `sandbox` or `microvm`; the host's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn default_cpu_kind() -> String {
    "shared".into()
}
fn default_cpus() -> u32 {
    1
}
fn default_memory_mb() -> u32 {
    256
}

impl Default for MachineGuest {
    fn default() -> Self {
        MachineGuest {
            cpu_kind: default_cpu_kind(),
            cpus: default_cpus(),
            memory_mb: default_memory_mb(),
            runtime: None,
            extra: Map::new(),
        }
    }
}

impl MachineGuest {
    /// A named size such as `shared-cpu-2x` or `performance-4x` (fly-go's `MachinePresets`).
    pub fn from_preset(name: &str) -> Option<MachineGuest> {
        let (kind, rest) = if let Some(r) = name.strip_prefix("shared-cpu-") {
            ("shared", r)
        } else if let Some(r) = name.strip_prefix("performance-") {
            ("performance", r)
        } else {
            return None;
        };
        let cpus: u32 = rest.strip_suffix('x')?.parse().ok()?;
        let per_cpu = if kind == "shared" { 256 } else { 2048 };
        let guest = MachineGuest {
            cpu_kind: kind.into(),
            cpus,
            memory_mb: cpus * per_cpu,
            ..Default::default()
        };
        guest.validate().ok()?;
        Some(guest)
    }

    /// Fly's sizing rules: shared machines take 1, 2, 4, 6 or 8 CPUs and 256–2048 MB per CPU in
    /// steps of 256 MB; performance machines take 1 to 16 (even) or 32, 64, 128 CPUs and
    /// 2048–8192 MB per CPU in steps of 1024 MB.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (cpu_choices, min_per_cpu, max_per_cpu, step): (&[u32], u32, u32, u32) = match self
            .cpu_kind
            .as_str()
        {
            "shared" => (&[1, 2, 4, 6, 8], 256, 2048, 256),
            "performance" => (
                &[1, 2, 4, 6, 8, 10, 12, 14, 16, 32, 64, 128],
                2048,
                8192,
                1024,
            ),
            other => {
                return Err(ConfigError::new(
                    "guest.cpu_kind",
                    format!("unknown cpu kind {other:?} (expected \"shared\" or \"performance\")"),
                ))
            }
        };
        if !cpu_choices.contains(&self.cpus) {
            return Err(ConfigError::new(
                "guest.cpus",
                format!(
                    "{} CPUs is not a valid {} size (choose one of {:?})",
                    self.cpus, self.cpu_kind, cpu_choices
                ),
            ));
        }
        let (min, max) = (self.cpus * min_per_cpu, self.cpus * max_per_cpu);
        if self.memory_mb < min || self.memory_mb > max || !self.memory_mb.is_multiple_of(step) {
            return Err(ConfigError::new(
                "guest.memory_mb",
                format!(
                    "{} MB is not valid for {} {} CPU(s): choose {min} to {max} MB in steps of {step} MB",
                    self.memory_mb, self.cpus, self.cpu_kind
                ),
            ));
        }
        self.runtime_kind()?;
        Ok(())
    }

    /// The runtime the machine asks for; `None`: the host's default.
    pub fn runtime_kind(&self) -> Result<Option<crate::RuntimeKind>, ConfigError> {
        self.runtime
            .as_deref()
            .map(|rt| {
                rt.parse().map_err(|e: crate::UnknownRuntime| {
                    ConfigError::new("guest.runtime", e.to_string())
                })
            })
            .transpose()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    #[serde(rename = "no")]
    No,
    #[serde(rename = "always")]
    Always,
    #[serde(rename = "on-failure", alias = "on-fail")]
    OnFailure,
    #[serde(rename = "spot-price")]
    SpotPrice,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineRestart {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<RestartPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StopConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<Signal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
}

/// A file written into the machine's root filesystem before its process starts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GuestFile {
    pub guest_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_config: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineProcess {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Variables set from the machine's own fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFrom>,
    /// When set, only these app secrets reach the process (under these names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<MachineSecret>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_app_secrets: bool,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnvFrom {
    pub env_var: String,
    pub field_ref: FieldRef,
}

/// A field of the machine an environment variable can be set from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldRef {
    Id,
    Version,
    AppName,
    PrivateIp,
    Region,
    Image,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MachineSecret {
    pub env_var: String,
    /// The app secret's name, when it differs from `env_var`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DnsConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname_fqdn: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub searches: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_registration: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A config that breaks a rule, naming the field (relative to `config`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config.{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl MachineConfig {
    /// The guest size: `guest`, else the named `size`, else the default (shared-cpu-1x).
    pub fn effective_guest(&self) -> MachineGuest {
        if let Some(g) = &self.guest {
            return g.clone();
        }
        self.size
            .as_deref()
            .and_then(MachineGuest::from_preset)
            .unwrap_or_default()
    }

    pub fn restart_policy(&self) -> RestartPolicy {
        // Fly: on-failure is the default when no policy is set; `auto_destroy` machines are
        // meant to run once, so they do not restart unless asked to.
        match self.restart.as_ref().and_then(|r| r.policy) {
            Some(p) => p,
            None if self.auto_destroy == Some(true) => RestartPolicy::No,
            None => RestartPolicy::OnFailure,
        }
    }

    /// Fly's default for on-failure is 10 retries.
    pub fn max_retries(&self) -> u32 {
        self.restart
            .as_ref()
            .and_then(|r| r.max_retries)
            .unwrap_or(10)
    }

    pub fn stop_signal(&self) -> Signal {
        self.stop_config
            .as_ref()
            .and_then(|s| s.signal)
            .unwrap_or(DEFAULT_STOP_SIGNAL)
    }

    pub fn stop_timeout(&self) -> Duration {
        self.stop_config
            .as_ref()
            .and_then(|s| s.timeout)
            .map(|d| d.0)
            .unwrap_or(DEFAULT_STOP_TIMEOUT)
    }

    /// Checks every rule that does not need the host: sizes, names, paths, encodings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.image.trim().is_empty() {
            return Err(ConfigError::new("image", "an image reference is required"));
        }
        if self.guest.is_some() && self.size.is_some() {
            return Err(ConfigError::new(
                "size",
                "guest and size are mutually exclusive",
            ));
        }
        if let Some(size) = &self.size {
            if MachineGuest::from_preset(size).is_none() {
                return Err(ConfigError::new(
                    "size",
                    format!("unknown size {size:?} (expected a preset such as shared-cpu-1x or performance-2x)"),
                ));
            }
        }
        if let Some(g) = &self.guest {
            g.validate()?;
        }
        for (key, _) in self.env.iter() {
            validate_env_name(key).map_err(|m| ConfigError::new(format!("env.{key}"), m))?;
        }
        if let Some(init) = &self.init {
            for (name, argv) in [("exec", &init.exec), ("entrypoint", &init.entrypoint)] {
                if matches!(argv, Some(v) if v.is_empty()) {
                    return Err(ConfigError::new(
                        format!("init.{name}"),
                        "must not be an empty list",
                    ));
                }
            }
        }
        if let Some(r) = &self.restart {
            if r.policy == Some(RestartPolicy::SpotPrice) {
                return Err(ConfigError::new(
                    "restart.policy",
                    "spot-price applies only to GPU machines, which Hangar does not offer",
                ));
            }
        }
        for (i, f) in self.files.iter().enumerate() {
            let field = |s: &str| format!("files[{i}].{s}");
            if !f.guest_path.starts_with('/') || f.guest_path.split('/').any(|c| c == "..") {
                return Err(ConfigError::new(
                    field("guest_path"),
                    format!("{:?} must be an absolute path without \"..\"", f.guest_path),
                ));
            }
            match (&f.raw_value, &f.secret_name) {
                (Some(v), _) => {
                    base64::engine::general_purpose::STANDARD
                        .decode(v)
                        .map_err(|e| {
                            ConfigError::new(field("raw_value"), format!("not valid base64: {e}"))
                        })?;
                }
                (None, Some(_)) => {}
                (None, None) => {
                    return Err(ConfigError::new(
                        field("raw_value"),
                        "a file needs raw_value or secret_name",
                    ))
                }
            }
            if let Some(mode) = f.mode {
                if mode > 0o7777 {
                    return Err(ConfigError::new(
                        field("mode"),
                        format!("{mode} is not a file mode"),
                    ));
                }
            }
        }
        if let Some(s) = &self.schedule {
            if !matches!(s.as_str(), "hourly" | "daily" | "weekly" | "monthly") {
                return Err(ConfigError::new(
                    "schedule",
                    format!("unknown schedule {s:?} (expected hourly, daily, weekly or monthly)"),
                ));
            }
        }
        validate_metadata(&self.metadata)?;
        for (i, service) in self.services.iter().enumerate() {
            service.validate(i)?;
        }
        for (name, check) in &self.checks {
            if name.is_empty() || name.len() > 63 {
                return Err(ConfigError::new(
                    "checks",
                    format!("check name {name:?} must be 1 to 63 characters"),
                ));
            }
            check.validate(&format!("checks.{name}"))?;
        }
        if let Some(dns) = &self.dns {
            if let Some(h) = &dns.hostname {
                if !valid_hostname(h) {
                    return Err(ConfigError::new(
                        "dns.hostname",
                        format!("{h:?} is not a valid hostname (letters, digits, dashes and dots; at most 63 characters)"),
                    ));
                }
            }
        }
        for (i, id) in self.standbys.iter().enumerate() {
            if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(ConfigError::new(
                    format!("standbys[{i}]"),
                    format!("{id:?} is not a machine id"),
                ));
            }
        }
        if !self.standbys.is_empty() && !self.services.is_empty() {
            return Err(ConfigError::new(
                "standbys",
                "a machine with services cannot be a standby",
            ));
        }
        for (i, p) in self.processes.iter().enumerate() {
            for k in p.env.keys() {
                validate_env_name(k)
                    .map_err(|m| ConfigError::new(format!("processes[{i}].env.{k}"), m))?;
            }
            for (j, e) in p.env_from.iter().enumerate() {
                validate_env_name(&e.env_var).map_err(|m| {
                    ConfigError::new(format!("processes[{i}].env_from[{j}].env_var"), m)
                })?;
            }
            for (j, e) in p.secrets.iter().enumerate() {
                validate_env_name(&e.env_var).map_err(|m| {
                    ConfigError::new(format!("processes[{i}].secrets[{j}].env_var"), m)
                })?;
            }
        }
        Ok(())
    }

    /// The hostname the machine's process sees: `dns.hostname`, else the machine id.
    pub fn hostname<'a>(&'a self, machine_id: &'a str) -> &'a str {
        self.dns
            .as_ref()
            .and_then(|d| d.hostname.as_deref())
            .filter(|h| !h.is_empty())
            .unwrap_or(machine_id)
    }
}

/// The limits on metadata: Fly's keys become labels, so they are short.
pub const MAX_METADATA_KEY: usize = 256;
pub const MAX_METADATA_VALUE: usize = 4096;

/// Checks metadata keys and values; the error names the offending key.
pub fn validate_metadata(metadata: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for (key, value) in metadata {
        validate_metadata_entry(key, value)?;
    }
    Ok(())
}

pub fn validate_metadata_entry(key: &str, value: &str) -> Result<(), ConfigError> {
    if key.is_empty() || key.len() > MAX_METADATA_KEY {
        return Err(ConfigError::new(
            "metadata",
            format!("key {key:?} must be 1 to {MAX_METADATA_KEY} characters"),
        ));
    }
    if key.chars().any(|c| c.is_control()) {
        return Err(ConfigError::new(
            "metadata",
            format!("key {key:?} must not contain control characters"),
        ));
    }
    if value.len() > MAX_METADATA_VALUE {
        return Err(ConfigError::new(
            format!("metadata.{key}"),
            format!(
                "the value is {} bytes, over the {MAX_METADATA_VALUE}-byte limit",
                value.len()
            ),
        ));
    }
    Ok(())
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && h.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

pub(crate) fn validate_env_name(key: &str) -> Result<(), String> {
    if key.is_empty() || key.contains('=') || key.contains('\0') {
        return Err(format!("{key:?} is not a valid environment variable name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> MachineConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn fly_sizes() {
        assert!(MachineGuest::default().validate().is_ok());
        let g = |kind: &str, cpus, memory_mb| MachineGuest {
            cpu_kind: kind.into(),
            cpus,
            memory_mb,
            ..Default::default()
        };
        assert!(g("shared", 2, 4096).validate().is_ok());
        assert!(g("performance", 2, 4096).validate().is_ok());
        assert_eq!(
            g("shared", 0, 256).validate().unwrap_err().field,
            "guest.cpus"
        );
        assert_eq!(
            g("shared", 3, 768).validate().unwrap_err().field,
            "guest.cpus"
        );
        assert_eq!(
            g("shared", 1, 3).validate().unwrap_err().field,
            "guest.memory_mb"
        );
        assert_eq!(
            g("shared", 1, 300).validate().unwrap_err().field,
            "guest.memory_mb"
        );
        assert_eq!(
            g("shared", 1, 4096).validate().unwrap_err().field,
            "guest.memory_mb"
        );
        assert_eq!(
            g("performance", 1, 1024).validate().unwrap_err().field,
            "guest.memory_mb"
        );
        assert_eq!(
            g("burst", 1, 256).validate().unwrap_err().field,
            "guest.cpu_kind"
        );
    }

    #[test]
    fn presets() {
        let g = MachineGuest::from_preset("shared-cpu-2x").unwrap();
        assert_eq!((g.cpus, g.memory_mb), (2, 512));
        let g = MachineGuest::from_preset("performance-4x").unwrap();
        assert_eq!(
            (g.cpu_kind.as_str(), g.cpus, g.memory_mb),
            ("performance", 4, 8192)
        );
        assert!(MachineGuest::from_preset("shared-cpu-3x").is_none());
        assert!(MachineGuest::from_preset("huge").is_none());
    }

    #[test]
    fn unknown_fields_round_trip() {
        let c = config(
            r#"{"image":"busybox","statics":[{"guest_path":"/s","url_prefix":"/"}],"guest":{"cpus":1,"memory_mb":256,"cpu_kind":"shared","max_memory_mb":512}}"#,
        );
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(back["statics"][0]["url_prefix"], "/");
        assert_eq!(back["guest"]["max_memory_mb"], 512);
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(
            config(r#"{"image":""}"#).validate().unwrap_err().field,
            "image"
        );
        let e = config(r#"{"image":"x","files":[{"guest_path":"rel","raw_value":"aGk="}]}"#)
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "files[0].guest_path");
        let e = config(r#"{"image":"x","files":[{"guest_path":"/a","raw_value":"!!"}]}"#)
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "files[0].raw_value");
        let e = config(r#"{"image":"x","size":"shared-cpu-1x","guest":{"cpus":1}}"#)
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "size");
        assert!(config(r#"{"image":"x","init":{"exec":[]}}"#)
            .validate()
            .is_err());
        assert!(config(r#"{"image":"x","schedule":"fortnightly"}"#)
            .validate()
            .is_err());
    }

    #[test]
    fn wrong_types_are_refused() {
        for bad in [
            r#"{"image":"x","guest":{"cpus":"two"}}"#,
            r#"{"image":"x","env":{"A":1}}"#,
            r#"{"image":"x","restart":{"policy":"sometimes"}}"#,
            r#"{"image":"x","stop_config":{"timeout":"soon"}}"#,
            r#"{"image":"x","stop_config":{"signal":"SIGNOPE"}}"#,
            r#"{"image":"x","guest":{"memory_mb":-1}}"#,
        ] {
            assert!(serde_json::from_str::<MachineConfig>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults() {
        let c = config(r#"{"image":"x"}"#);
        assert_eq!(c.restart_policy(), RestartPolicy::OnFailure);
        assert_eq!(c.max_retries(), 10);
        assert_eq!(c.stop_signal(), Signal::INT);
        assert_eq!(c.stop_timeout(), Duration::from_secs(5));
        let c = config(r#"{"image":"x","auto_destroy":true}"#);
        assert_eq!(c.restart_policy(), RestartPolicy::No);
        let c = config(
            r#"{"image":"x","restart":{"policy":"on-fail","max_retries":2},"stop_config":{"signal":"SIGTERM","timeout":"2s"}}"#,
        );
        assert_eq!(c.restart_policy(), RestartPolicy::OnFailure);
        assert_eq!(c.max_retries(), 2);
        assert_eq!(c.stop_signal(), Signal::TERM);
        assert_eq!(c.stop_timeout(), Duration::from_secs(2));
    }
}

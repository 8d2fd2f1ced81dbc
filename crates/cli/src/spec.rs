//! The machine config flags `run`, `create` and `update` share, as flyctl spells them, and how
//! each changes a config. Every flag is checked here, so a typo is a one-line error before
//! anything is sent.

use anyhow::{bail, Context};
use base64::Engine;
use clap::Args;
use hangar_types::MachineGuest;
use serde_json::{json, Map, Value};

#[derive(Args, Debug, Default, Clone)]
pub struct ConfigFlags {
    /// Environment variable NAME=VALUE (repeatable)
    #[arg(short, long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Publish a port: PORT[:INTERNAL][/PROTO[:HANDLER...]], e.g. 80:8080/tcp:http (repeatable)
    #[arg(short, long = "port", value_name = "PORT")]
    pub port: Vec<String>,
    /// A named size: shared-cpu-1x, shared-cpu-2x, performance-1x...
    #[arg(long, value_name = "SIZE")]
    pub vm_size: Option<String>,
    /// Number of CPUs
    #[arg(long, value_name = "N")]
    pub vm_cpus: Option<u32>,
    /// Memory, in MB or with a unit (512, 1gb)
    #[arg(long, value_name = "MEMORY")]
    pub vm_memory: Option<String>,
    /// shared or performance
    #[arg(long, value_name = "KIND")]
    pub vm_cpu_kind: Option<String>,
    /// Entrypoint, replacing the image's
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Restart policy: no, always or on-failure
    #[arg(long)]
    pub restart: Option<String>,
    /// Metadata KEY=VALUE (repeatable)
    #[arg(short, long = "metadata", value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// A file from this computer: GUEST_PATH=LOCAL_PATH (repeatable)
    #[arg(long = "file-local", value_name = "GUEST=LOCAL")]
    pub file_local: Vec<String>,
    /// A file with the given contents: GUEST_PATH=CONTENTS (repeatable)
    #[arg(long = "file-literal", value_name = "GUEST=VALUE")]
    pub file_literal: Vec<String>,
    /// A file holding an app secret: GUEST_PATH=SECRET_NAME (repeatable)
    #[arg(long = "file-secret", value_name = "GUEST=SECRET")]
    pub file_secret: Vec<String>,
    /// Start the machine on a schedule: hourly, daily, weekly or monthly
    #[arg(long)]
    pub schedule: Option<String>,
    /// Stop (or suspend) the machine when idle: off, stop or suspend
    #[arg(long)]
    pub autostop: Option<String>,
    /// Start the machine when traffic arrives
    #[arg(long)]
    pub autostart: Option<bool>,
    /// The user the process runs as
    #[arg(long)]
    pub user: Option<String>,
}

fn key_value<'a>(flag: &str, kv: &'a str) -> anyhow::Result<(&'a str, &'a str)> {
    match kv.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k, v)),
        _ => bail!("{flag} {kv:?} must look like NAME=VALUE"),
    }
}

/// `512`, `512mb`, `1gb`, `1024MiB` → megabytes.
pub fn parse_memory(s: &str) -> anyhow::Result<u32> {
    let lower = s.trim().to_ascii_lowercase();
    let digits: String = lower.chars().take_while(|c| c.is_ascii_digit()).collect();
    let unit = lower[digits.len()..].trim();
    let n: u32 = digits
        .parse()
        .with_context(|| format!("--vm-memory {s:?} is not a size (e.g. 512 or 1gb)"))?;
    let mb = match unit {
        "" | "m" | "mb" | "mib" => Some(n),
        "g" | "gb" | "gib" => n.checked_mul(1024),
        _ => None,
    };
    mb.filter(|&m| m > 0)
        .with_context(|| format!("--vm-memory {s:?} is not a size (e.g. 512 or 1gb)"))
}

/// `80:8080/tcp:http:tls` → (public port, internal port, protocol, handlers).
pub fn parse_port(s: &str) -> anyhow::Result<(u16, u16, String, Vec<String>)> {
    let bad = || {
        format!("--port {s:?} must look like PORT[:INTERNAL][/PROTO[:HANDLER...]], e.g. 80:8080/tcp:http")
    };
    let (ports, rest) = s.split_once('/').unwrap_or((s, "tcp"));
    let (public, internal) = ports.split_once(':').unwrap_or((ports, ports));
    let public: u16 = public.parse().ok().filter(|p| *p > 0).with_context(bad)?;
    let internal: u16 = internal.parse().ok().filter(|p| *p > 0).with_context(bad)?;
    let mut parts = rest.split(':');
    let proto = parts.next().unwrap_or("tcp").to_string();
    if proto != "tcp" && proto != "udp" {
        bail!("{}", bad());
    }
    let handlers: Vec<String> = parts.map(str::to_string).collect();
    const KNOWN: [&str; 6] = ["http", "tls", "tcp", "pg_tls", "proxy_proto", "edge_http"];
    if let Some(h) = handlers.iter().find(|h| !KNOWN.contains(&h.as_str())) {
        bail!(
            "--port {s:?}: unknown handler {h:?} (known: {})",
            KNOWN.join(", ")
        );
    }
    Ok((public, internal, proto, handlers))
}

fn obj(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = json!({});
    }
    v.as_object_mut().expect("just made an object")
}

impl ConfigFlags {
    /// Changes `config` as the flags say; flags not given leave it as it is.
    pub fn apply(&self, config: &mut Value, command: &[String]) -> anyhow::Result<()> {
        let c = obj(config);
        for kv in &self.env {
            let (k, v) = key_value("--env", kv)?;
            obj(c.entry("env").or_insert(json!({}))).insert(k.into(), json!(v));
        }
        for kv in &self.metadata {
            let (k, v) = key_value("--metadata", kv)?;
            obj(c.entry("metadata").or_insert(json!({}))).insert(k.into(), json!(v));
        }
        if let Some(ep) = &self.entrypoint {
            let argv = shell_words(ep)
                .with_context(|| format!("--entrypoint {ep:?} has unbalanced quotes"))?;
            obj(c.entry("init").or_insert(json!({}))).insert("entrypoint".into(), json!(argv));
        }
        if !command.is_empty() {
            obj(c.entry("init").or_insert(json!({}))).insert("cmd".into(), json!(command));
        }
        if let Some(policy) = &self.restart {
            if !["no", "always", "on-failure"].contains(&policy.as_str()) {
                bail!("--restart must be one of no, always, on-failure (got {policy:?})");
            }
            c.insert("restart".into(), json!({ "policy": policy }));
        }
        self.apply_guest(c)?;
        self.apply_files(c)?;
        if let Some(s) = &self.schedule {
            if !["hourly", "daily", "weekly", "monthly"].contains(&s.as_str()) {
                bail!("--schedule must be one of hourly, daily, weekly, monthly (got {s:?})");
            }
            c.insert("schedule".into(), json!(s));
        }
        if let Some(user) = &self.user {
            let processes = c.entry("processes").or_insert(json!([{}]));
            if processes.as_array().is_none_or(Vec::is_empty) {
                *processes = json!([{}]);
            }
            processes[0]["user"] = json!(user);
        }
        self.apply_services(c)
    }

    fn apply_guest(&self, c: &mut Map<String, Value>) -> anyhow::Result<()> {
        if self.vm_size.is_none()
            && self.vm_cpus.is_none()
            && self.vm_memory.is_none()
            && self.vm_cpu_kind.is_none()
        {
            return Ok(());
        }
        let mut guest: MachineGuest = match &self.vm_size {
            Some(size) => MachineGuest::from_preset(size).with_context(|| {
                format!("--vm-size {size:?} is not a size (e.g. shared-cpu-1x, shared-cpu-2x, performance-1x)")
            })?,
            None => c
                .get("guest")
                .cloned()
                .and_then(|g| serde_json::from_value(g).ok())
                .unwrap_or_default(),
        };
        if let Some(kind) = &self.vm_cpu_kind {
            if kind != "shared" && kind != "performance" {
                bail!("--vm-cpu-kind must be shared or performance (got {kind:?})");
            }
            guest.cpu_kind = kind.clone();
        }
        if let Some(n) = self.vm_cpus {
            guest.cpus = n;
        }
        if let Some(m) = &self.vm_memory {
            guest.memory_mb = parse_memory(m)?;
        }
        guest
            .validate()
            .map_err(|e| anyhow::anyhow!("machine size: {e}"))?;
        c.insert("guest".into(), serde_json::to_value(guest)?);
        Ok(())
    }

    fn apply_files(&self, c: &mut Map<String, Value>) -> anyhow::Result<()> {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let mut files = Vec::new();
        for kv in &self.file_local {
            let (guest, local) = key_value("--file-local", kv)?;
            let bytes = std::fs::read(local)
                .with_context(|| format!("--file-local: cannot read {local}"))?;
            files.push(json!({ "guest_path": guest, "raw_value": b64(&bytes) }));
        }
        for kv in &self.file_literal {
            let (guest, value) = key_value("--file-literal", kv)?;
            files.push(json!({ "guest_path": guest, "raw_value": b64(value.as_bytes()) }));
        }
        for kv in &self.file_secret {
            let (guest, secret) = key_value("--file-secret", kv)?;
            files.push(json!({ "guest_path": guest, "secret_name": secret }));
        }
        for f in &files {
            if !f["guest_path"]
                .as_str()
                .unwrap_or_default()
                .starts_with('/')
            {
                bail!(
                    "file paths inside the machine must be absolute (got {})",
                    f["guest_path"]
                );
            }
        }
        if !files.is_empty() {
            let list = c.entry("files").or_insert(json!([]));
            let list = list.as_array_mut().context("config.files is not a list")?;
            // A file given again replaces the old one at that path.
            list.retain(|old| !files.iter().any(|f| f["guest_path"] == old["guest_path"]));
            list.extend(files);
        }
        Ok(())
    }

    fn apply_services(&self, c: &mut Map<String, Value>) -> anyhow::Result<()> {
        let autostop = match self.autostop.as_deref() {
            None => None,
            Some(a @ ("off" | "stop" | "suspend")) => Some(json!(a)),
            Some("true") => Some(json!("stop")),
            Some("false") => Some(json!("off")),
            Some(other) => bail!("--autostop must be off, stop or suspend (got {other:?})"),
        };
        let mut services: Vec<Value> = Vec::new();
        for p in &self.port {
            let (public, internal, proto, handlers) = parse_port(p)?;
            let port = json!({ "port": public, "handlers": handlers });
            match services
                .iter_mut()
                .find(|s| s["internal_port"] == json!(internal) && s["protocol"] == json!(proto))
            {
                Some(s) => s["ports"].as_array_mut().expect("ports").push(port),
                None => services
                    .push(json!({ "protocol": proto, "internal_port": internal, "ports": [port] })),
            }
        }
        if !services.is_empty() {
            c.insert("services".into(), json!(services));
        }
        if autostop.is_some() || self.autostart.is_some() {
            let Some(list) = c
                .get_mut("services")
                .and_then(Value::as_array_mut)
                .filter(|l| !l.is_empty())
            else {
                bail!("--autostop and --autostart apply to services: publish a port with --port");
            };
            for s in list {
                if let Some(a) = &autostop {
                    s["autostop"] = a.clone();
                }
                if let Some(a) = self.autostart {
                    s["autostart"] = json!(a);
                }
            }
        }
        Ok(())
    }
}

/// Whitespace splitting with double quotes, enough for an entrypoint flag.
pub fn shell_words(s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if quoted {
        return None;
    }
    if any {
        out.push(cur);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(
            parse_port("80:8080/tcp:http").unwrap(),
            (80, 8080, "tcp".into(), vec!["http".into()])
        );
        assert_eq!(
            parse_port("5432").unwrap(),
            (5432, 5432, "tcp".into(), vec![])
        );
        assert_eq!(
            parse_port("443:8080/tcp:http:tls").unwrap().3,
            ["http", "tls"]
        );
        for bad in ["", "x", "80:y", "0", "80/sctp", "80/tcp:gopher", "99999"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory() {
        assert_eq!(parse_memory("512").unwrap(), 512);
        assert_eq!(parse_memory("1gb").unwrap(), 1024);
        assert_eq!(parse_memory("2G").unwrap(), 2048);
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("0").is_err());
        assert!(parse_memory("12tb").is_err());
    }

    #[test]
    fn flags_build_a_config() {
        let flags = ConfigFlags {
            env: vec!["A=1".into()],
            port: vec!["80:8080/tcp:http".into(), "443:8080/tcp:http:tls".into()],
            vm_size: Some("shared-cpu-2x".into()),
            vm_memory: Some("1gb".into()),
            metadata: vec!["team=core".into()],
            file_literal: vec!["/etc/motd=hi".into()],
            autostop: Some("suspend".into()),
            user: Some("app".into()),
            ..Default::default()
        };
        let mut c = json!({ "image": "x" });
        flags.apply(&mut c, &["serve".into()]).unwrap();
        assert_eq!(c["env"]["A"], "1");
        assert_eq!(c["guest"]["cpus"], 2);
        assert_eq!(c["guest"]["memory_mb"], 1024);
        assert_eq!(c["services"][0]["ports"].as_array().unwrap().len(), 2);
        assert_eq!(c["services"][0]["autostop"], "suspend");
        assert_eq!(c["files"][0]["raw_value"], "aGk=");
        assert_eq!(c["init"]["cmd"], json!(["serve"]));
        assert_eq!(c["processes"][0]["user"], "app");

        let bad = ConfigFlags {
            vm_cpus: Some(3),
            ..Default::default()
        };
        assert!(bad
            .apply(&mut json!({}), &[])
            .unwrap_err()
            .to_string()
            .contains("size"));
        let bad = ConfigFlags {
            autostop: Some("stop".into()),
            ..Default::default()
        };
        assert!(
            bad.apply(&mut json!({}), &[]).is_err(),
            "autostop needs a service"
        );
    }
}

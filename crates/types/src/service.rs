//! `services`: how the edge proxy reaches a machine, and whether traffic starts and stops it.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::check::MachineCheck;
use crate::config::ConfigError;

/// One service of a machine: an internal port the proxy forwards public ports to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineService {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<MachinePort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autostart: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autostop: Option<Autostop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_machines_running: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<MachineCheck>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MachinePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub handlers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_https: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Concurrency {
    /// `connections` or `requests`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard_limit: Option<u32>,
}

/// What the proxy does with an idle machine. Fly reads `"off" | "stop" | "suspend"` and the
/// older `false | true`, and answers with booleans for off and stop so old clients still parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Autostop {
    Off,
    Stop,
    Suspend,
}

impl Serialize for Autostop {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Autostop::Off => s.serialize_bool(false),
            Autostop::Stop => s.serialize_bool(true),
            Autostop::Suspend => s.serialize_str("suspend"),
        }
    }
}

impl<'de> Deserialize<'de> for Autostop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Bool(bool),
            Name(String),
        }
        let bad =
            || serde::de::Error::custom("expected \"off\", \"stop\", \"suspend\", true or false");
        match Wire::deserialize(d).map_err(|_| bad())? {
            Wire::Bool(false) => Ok(Autostop::Off),
            Wire::Bool(true) => Ok(Autostop::Stop),
            Wire::Name(s) => match s.as_str() {
                "off" => Ok(Autostop::Off),
                "stop" => Ok(Autostop::Stop),
                "suspend" => Ok(Autostop::Suspend),
                _ => Err(bad()),
            },
        }
    }
}

impl MachineService {
    pub(crate) fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let field = |s: &str| format!("services[{i}].{s}");
        if let Some(p) = &self.protocol {
            if p != "tcp" && p != "udp" {
                return Err(ConfigError::new(
                    field("protocol"),
                    format!("unknown protocol {p:?} (expected \"tcp\" or \"udp\")"),
                ));
            }
        }
        if self.internal_port == Some(0) {
            return Err(ConfigError::new(
                field("internal_port"),
                "must be a port between 1 and 65535",
            ));
        }
        for (j, port) in self.ports.iter().enumerate() {
            let field = |s: &str| format!("services[{i}].ports[{j}].{s}");
            match (port.port, port.start_port, port.end_port) {
                (Some(0), _, _) => {
                    return Err(ConfigError::new(
                        field("port"),
                        "must be between 1 and 65535",
                    ))
                }
                (None, Some(a), Some(b)) if a == 0 || a > b => {
                    return Err(ConfigError::new(
                        field("start_port"),
                        format!("the range {a}-{b} is empty or starts at 0"),
                    ))
                }
                (None, None, None) => {
                    return Err(ConfigError::new(
                        field("port"),
                        "a port or a start_port/end_port range is required",
                    ))
                }
                _ => {}
            }
            for h in &port.handlers {
                if !matches!(
                    h.as_str(),
                    "http" | "tls" | "tcp" | "pg_tls" | "proxy_proto" | "edge_http"
                ) {
                    return Err(ConfigError::new(
                        field("handlers"),
                        format!("unknown handler {h:?} (expected http, tls, tcp, pg_tls or proxy_proto)"),
                    ));
                }
            }
        }
        if let Some(c) = &self.concurrency {
            if let Some(k) = &c.kind {
                if k != "connections" && k != "requests" {
                    return Err(ConfigError::new(
                        field("concurrency.type"),
                        format!("unknown concurrency type {k:?} (expected \"connections\" or \"requests\")"),
                    ));
                }
            }
            if let (Some(soft), Some(hard)) = (c.soft_limit, c.hard_limit) {
                if soft > hard {
                    return Err(ConfigError::new(
                        field("concurrency.soft_limit"),
                        format!("{soft} is above the hard limit {hard}"),
                    ));
                }
            }
        }
        for (j, check) in self.checks.iter().enumerate() {
            check.validate(&format!("services[{i}].checks[{j}]"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autostop_reads_both_forms_and_renders_as_fly() {
        for (input, rendered) in [
            ("\"off\"", "false"),
            ("false", "false"),
            ("\"stop\"", "true"),
            ("true", "true"),
            ("\"suspend\"", "\"suspend\""),
        ] {
            let a: Autostop = serde_json::from_str(input).unwrap();
            assert_eq!(serde_json::to_string(&a).unwrap(), rendered, "{input}");
        }
        assert!(serde_json::from_str::<Autostop>("\"sometimes\"").is_err());
        assert!(serde_json::from_str::<Autostop>("3").is_err());
    }

    #[test]
    fn services_keep_unknown_fields_and_check_ports() {
        let s: MachineService = serde_json::from_str(
            r#"{"protocol":"tcp","internal_port":8080,"autostop":"suspend","ports":[{"port":443,"handlers":["tls","http"],"tls_options":{"alpn":["h2"]}}],"force_instance_key":"x"}"#,
        )
        .unwrap();
        assert!(s.validate(0).is_ok());
        let back = serde_json::to_value(&s).unwrap();
        assert_eq!(back["ports"][0]["tls_options"]["alpn"][0], "h2");
        assert_eq!(back["force_instance_key"], "x");
        let bad: MachineService =
            serde_json::from_str(r#"{"protocol":"sctp","internal_port":1}"#).unwrap();
        assert_eq!(bad.validate(2).unwrap_err().field, "services[2].protocol");
        let bad: MachineService =
            serde_json::from_str(r#"{"internal_port":80,"ports":[{"handlers":["http"]}]}"#)
                .unwrap();
        assert_eq!(
            bad.validate(0).unwrap_err().field,
            "services[0].ports[0].port"
        );
    }
}

//! What a machine runs: the image's config merged with the machine's, as Fly does it.
//!
//! Precedence, highest first: `init.exec` (the whole command line), then `init.entrypoint` /
//! `init.cmd`, then the first entry of `processes`, then the image's Entrypoint / Cmd. As in
//! Docker, overriding the entrypoint drops the image's Cmd. The environment is the image's,
//! then Fly's runtime variables, then `config.env`, then the process's `env`.

use base64::Engine;
use hangar_image::ImageConfig;
use hangar_proto::{FileSpec, LaunchSpec, ProcessSpec};
use hangar_types::{FieldRef, MachineConfig};

use crate::secrets::Opened;

/// Who and where the machine is, for Fly's `FLY_*` variables.
pub(crate) struct Identity<'a> {
    pub app: &'a str,
    pub machine_id: &'a str,
    pub region: &'a str,
    pub instance_id: &'a str,
    /// The image reference the machine was made from, normalized (`FLY_IMAGE_REF`).
    pub image_ref: &'a str,
    /// The machine's address on the private network, when it has one (`FLY_PRIVATE_IP`).
    pub private_ip: Option<&'a str>,
    /// The app's secrets, opened; handed over as variables and files.
    pub secrets: &'a Opened,
}

pub(crate) fn launch_spec(
    config: &MachineConfig,
    image: &ImageConfig,
    who: &Identity<'_>,
) -> Result<LaunchSpec, String> {
    Ok(LaunchSpec {
        machine_id: who.machine_id.to_string(),
        hostname: config.hostname(who.machine_id).to_string(),
        process: process_spec(config, image, who)?,
        files: files(config, who.secrets)?,
        control: String::new(),
    })
}

pub(crate) fn process_spec(
    config: &MachineConfig,
    image: &ImageConfig,
    who: &Identity<'_>,
) -> Result<ProcessSpec, String> {
    let init = config.init.clone().unwrap_or_default();
    let process = config.processes.first().cloned().unwrap_or_default();

    let argv = if let Some(exec) = init.exec.clone().or(process.exec.clone()) {
        exec
    } else {
        let override_ep = init.entrypoint.clone().or(process.entrypoint.clone());
        let cmd = init.cmd.clone().or(process.cmd.clone());
        let entrypoint_overridden = override_ep.is_some();
        let mut argv = override_ep.unwrap_or_else(|| image.entrypoint.clone());
        match cmd {
            Some(cmd) => argv.extend(cmd),
            None if !entrypoint_overridden => argv.extend(image.cmd.iter().cloned()),
            None => {}
        }
        argv
    };
    if argv.is_empty() || argv[0].is_empty() {
        return Err("nothing to run: the image has no Entrypoint or Cmd, so set config.init.cmd (or init.exec)".into());
    }

    let mut env = EnvList::default();
    for kv in &image.env {
        if let Some((k, v)) = kv.split_once('=') {
            env.set(k, v);
        }
    }
    let memory_mb = config.effective_guest().memory_mb.to_string();
    env.set("FLY_APP_NAME", who.app);
    env.set("FLY_MACHINE_ID", who.machine_id);
    env.set("FLY_ALLOC_ID", who.machine_id);
    env.set("FLY_REGION", who.region);
    env.set("FLY_IMAGE_REF", who.image_ref);
    env.set("FLY_MACHINE_VERSION", who.instance_id);
    env.set("FLY_VM_MEMORY_MB", &memory_mb);
    if let Some(ip) = who.private_ip {
        env.set("FLY_PRIVATE_IP", ip);
    }
    if let Some(group) = config.metadata.get("fly_process_group") {
        env.set("FLY_PROCESS_GROUP", group);
    }
    for (k, v) in config.env.iter().chain(process.env.iter()) {
        env.set(k, v);
    }
    for from in &process.env_from {
        let value = match from.field_ref {
            FieldRef::Id => who.machine_id,
            FieldRef::Version => who.instance_id,
            FieldRef::AppName => who.app,
            FieldRef::PrivateIp => who.private_ip.unwrap_or_default(),
            FieldRef::Region => who.region,
            FieldRef::Image => who.image_ref,
        };
        env.set(&from.env_var, value);
    }
    // App secrets come last, as in Fly: a secret overrides a plain variable of its name.
    if !process.ignore_app_secrets {
        if process.secrets.is_empty() {
            for (name, value) in who.secrets {
                env.set(name, &String::from_utf8_lossy(value));
            }
        } else {
            for s in &process.secrets {
                let name = s.name.as_deref().unwrap_or(&s.env_var);
                let value = who.secrets.get(name).ok_or_else(|| {
                    format!("processes[0].secrets: app secret {name:?} is not set (set it with the secrets API)")
                })?;
                env.set(&s.env_var, &String::from_utf8_lossy(value));
            }
        }
    }

    Ok(ProcessSpec {
        argv,
        env: env.into_strings(),
        cwd: if image.working_dir.is_empty() {
            "/".into()
        } else {
            image.working_dir.clone()
        },
        user: process.user.clone().unwrap_or_else(|| image.user.clone()),
        tty: init.tty,
    })
}

fn files(config: &MachineConfig, secrets: &Opened) -> Result<Vec<FileSpec>, String> {
    config
        .files
        .iter()
        .map(|f| {
            let contents = match (&f.raw_value, &f.secret_name) {
                (Some(raw), _) => base64::engine::general_purpose::STANDARD
                    .decode(raw)
                    .map_err(|e| {
                        format!(
                            "config.files: {}: raw_value is not base64: {e}",
                            f.guest_path
                        )
                    })?,
                (None, Some(name)) => secrets.get(name).cloned().ok_or_else(|| {
                    format!(
                        "config.files: {}: app secret {name:?} is not set",
                        f.guest_path
                    )
                })?,
                (None, None) => Vec::new(),
            };
            Ok(FileSpec {
                path: f.guest_path.clone(),
                contents,
                mode: f.mode.unwrap_or(0o644),
            })
        })
        .collect()
}

/// An environment in order of first definition, where a later value replaces an earlier one.
#[derive(Default)]
struct EnvList(Vec<(String, String)>);

impl EnvList {
    fn set(&mut self, key: &str, value: &str) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.0.push((key.to_string(), value.to_string())),
        }
    }

    fn into_strings(self) -> Vec<String> {
        self.0
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static NO_SECRETS: Opened = Opened::new();

    const WHO: Identity<'static> = Identity {
        app: "app",
        machine_id: "0123456789abcd",
        region: "local",
        instance_id: "01JV",
        image_ref: "registry/img:1",
        private_ip: None,
        secrets: &NO_SECRETS,
    };

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into(), "--port=80".into()],
            env: vec![
                "PATH=/usr/bin:/bin".into(),
                "MODE=image".into(),
                "KEEP=1".into(),
            ],
            working_dir: "/srv".into(),
            user: "app".into(),
            ..Default::default()
        }
    }

    fn config(json: &str) -> MachineConfig {
        serde_json::from_str(json).unwrap()
    }

    fn env_of(p: &ProcessSpec, key: &str) -> Option<String> {
        p.env
            .iter()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
    }

    #[test]
    fn image_defaults_apply() {
        let p = process_spec(&config(r#"{"image":"x"}"#), &image(), &WHO).unwrap();
        assert_eq!(p.argv, ["/entry", "serve", "--port=80"]);
        assert_eq!(p.cwd, "/srv");
        assert_eq!(p.user, "app");
        assert_eq!(env_of(&p, "MODE").as_deref(), Some("image"));
        assert_eq!(
            env_of(&p, "FLY_MACHINE_ID").as_deref(),
            Some("0123456789abcd")
        );
        assert_eq!(env_of(&p, "FLY_VM_MEMORY_MB").as_deref(), Some("256"));
    }

    #[test]
    fn cmd_override_keeps_entrypoint() {
        let p = process_spec(
            &config(r#"{"image":"x","init":{"cmd":["other"]}}"#),
            &image(),
            &WHO,
        )
        .unwrap();
        assert_eq!(p.argv, ["/entry", "other"]);
    }

    #[test]
    fn entrypoint_override_drops_image_cmd() {
        let p = process_spec(
            &config(r#"{"image":"x","init":{"entrypoint":["/bin/sh","-c"]}}"#),
            &image(),
            &WHO,
        )
        .unwrap();
        assert_eq!(p.argv, ["/bin/sh", "-c"]);
        let p = process_spec(
            &config(r#"{"image":"x","init":{"entrypoint":["/bin/sh","-c"],"cmd":["exit 7"]}}"#),
            &image(),
            &WHO,
        )
        .unwrap();
        assert_eq!(p.argv, ["/bin/sh", "-c", "exit 7"]);
    }

    #[test]
    fn exec_wins_over_everything() {
        let c = config(
            r#"{"image":"x","init":{"exec":["/bin/true"],"cmd":["ignored"]},"processes":[{"cmd":["also"]}]}"#,
        );
        assert_eq!(
            process_spec(&c, &image(), &WHO).unwrap().argv,
            ["/bin/true"]
        );
    }

    #[test]
    fn processes_entry_applies_below_init() {
        let c = config(
            r#"{"image":"x","processes":[{"cmd":["worker"],"user":"root","env":{"MODE":"process"}}],"env":{"MODE":"config"}}"#,
        );
        let p = process_spec(&c, &image(), &WHO).unwrap();
        assert_eq!(p.argv, ["/entry", "worker"]);
        assert_eq!(p.user, "root");
        assert_eq!(env_of(&p, "MODE").as_deref(), Some("process"));
    }

    #[test]
    fn config_env_overrides_image_env_in_place() {
        let c = config(r#"{"image":"x","env":{"MODE":"config","NEW":"2"}}"#);
        let p = process_spec(&c, &image(), &WHO).unwrap();
        assert_eq!(env_of(&p, "MODE").as_deref(), Some("config"));
        assert_eq!(env_of(&p, "KEEP").as_deref(), Some("1"));
        assert_eq!(env_of(&p, "NEW").as_deref(), Some("2"));
        assert_eq!(p.env.iter().filter(|kv| kv.starts_with("MODE=")).count(), 1);
        assert!(
            p.env[1].starts_with("MODE="),
            "a replaced variable keeps its position"
        );
    }

    #[test]
    fn empty_command_is_refused() {
        let err =
            process_spec(&config(r#"{"image":"x"}"#), &ImageConfig::default(), &WHO).unwrap_err();
        assert!(err.contains("init.cmd"), "{err}");
    }

    #[test]
    fn files_are_decoded() {
        let c = config(
            r#"{"image":"x","files":[{"guest_path":"/etc/motd","raw_value":"aGk=","mode":384}]}"#,
        );
        let spec = launch_spec(&c, &image(), &WHO).unwrap();
        assert_eq!(spec.files[0].contents, b"hi");
        assert_eq!(spec.files[0].mode, 0o600);
        assert_eq!(spec.hostname, "0123456789abcd");
    }

    #[test]
    fn secrets_env_from_and_hostname() {
        let mut secrets = Opened::new();
        secrets.insert("DB".into(), b"pg://db".to_vec());
        secrets.insert("TOKEN".into(), b"t0k".to_vec());
        let who = Identity {
            secrets: &secrets,
            ..WHO
        };

        // All secrets by default, overriding plain variables of the same name.
        let c = config(
            r#"{"image":"x","env":{"DB":"plain"},"dns":{"hostname":"web"},
            "processes":[{"env_from":[{"env_var":"ME","field_ref":"id"},{"env_var":"WHERE","field_ref":"region"}]}],
            "files":[{"guest_path":"/run/tok","secret_name":"TOKEN"}]}"#,
        );
        let spec = launch_spec(&c, &image(), &who).unwrap();
        assert_eq!(env_of(&spec.process, "DB").as_deref(), Some("pg://db"));
        assert_eq!(env_of(&spec.process, "TOKEN").as_deref(), Some("t0k"));
        assert_eq!(
            env_of(&spec.process, "ME").as_deref(),
            Some("0123456789abcd")
        );
        assert_eq!(env_of(&spec.process, "WHERE").as_deref(), Some("local"));
        assert_eq!(spec.hostname, "web");
        assert_eq!(spec.files[0].contents, b"t0k");

        // A mapping picks and renames; ignore_app_secrets drops them all.
        let c = config(
            r#"{"image":"x","processes":[{"secrets":[{"env_var":"DATABASE_URL","name":"DB"}]}]}"#,
        );
        let p = process_spec(&c, &image(), &who).unwrap();
        assert_eq!(env_of(&p, "DATABASE_URL").as_deref(), Some("pg://db"));
        assert_eq!(env_of(&p, "TOKEN"), None);
        let c = config(r#"{"image":"x","processes":[{"ignore_app_secrets":true}]}"#);
        assert_eq!(
            env_of(&process_spec(&c, &image(), &who).unwrap(), "DB"),
            None
        );

        // A missing secret is a clear error.
        let c = config(r#"{"image":"x","processes":[{"secrets":[{"env_var":"NOPE"}]}]}"#);
        assert!(process_spec(&c, &image(), &who)
            .unwrap_err()
            .contains("NOPE"));
        let c = config(r#"{"image":"x","files":[{"guest_path":"/x","secret_name":"NOPE"}]}"#);
        assert!(launch_spec(&c, &image(), &who)
            .unwrap_err()
            .contains("NOPE"));
    }

    #[test]
    fn private_ip_is_set_when_the_machine_has_one() {
        let c = config(
            r#"{"image":"x","processes":[{"env_from":[{"env_var":"MY_IP","field_ref":"private_ip"}]}]}"#,
        );
        let p = process_spec(&c, &image(), &WHO).unwrap();
        assert_eq!(env_of(&p, "FLY_PRIVATE_IP"), None, "no network, no address");
        assert_eq!(env_of(&p, "MY_IP").as_deref(), Some(""));

        let who = Identity {
            private_ip: Some("fdaa:0:1::2"),
            ..WHO
        };
        let p = process_spec(&c, &image(), &who).unwrap();
        assert_eq!(env_of(&p, "FLY_PRIVATE_IP").as_deref(), Some("fdaa:0:1::2"));
        assert_eq!(env_of(&p, "MY_IP").as_deref(), Some("fdaa:0:1::2"));
        assert_eq!(
            env_of(&p, "FLY_IMAGE_REF").as_deref(),
            Some("registry/img:1")
        );
    }
}

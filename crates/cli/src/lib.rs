//! The `hangar` command line (all but `hangar server`): `fly machine`'s verbs over the REST API.
//! It talks only to the API, so it works against any Hangar installation, local or remote.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use hangar_types::{App, ExecResponse, ListAppsResponse, Machine, MachineEvent, WaitResponse};
use serde_json::{json, Value};
use std::process::ExitCode;

mod client;
mod image;
mod output;

pub use client::default_data_dir;
use client::Client;
pub use image::ImageCommand;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Manage apps
    #[command(subcommand)]
    Apps(AppsCommand),
    /// Manage machines
    #[command(subcommand, visible_alias = "m", alias = "machines")]
    Machine(MachineCommand),
    /// Manage the host's images
    #[command(subcommand)]
    Image(ImageCommand),
}

#[derive(Subcommand, Debug)]
pub enum AppsCommand {
    /// Create an app
    Create {
        name: String,
        #[arg(long, default_value = "personal")]
        org: String,
    },
    /// List apps
    #[command(visible_alias = "ls")]
    List {
        #[arg(long, default_value = "personal")]
        org: String,
    },
    /// Destroy an app and all of its machines
    #[command(visible_alias = "delete")]
    Destroy { name: String },
}

#[derive(Args, Debug)]
pub struct AppArg {
    /// App name (defaults to $HANGAR_APP)
    #[arg(short = 'a', long = "app", env = "HANGAR_APP")]
    app: String,
}

#[derive(Subcommand, Debug)]
pub enum MachineCommand {
    /// Create and start a machine from an image
    Run(RunArgs),
    /// List an app's machines
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        app: AppArg,
        /// Only print machine ids
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show a machine's details and recent events
    Status {
        id: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// Start stopped machines
    Start {
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        app: AppArg,
    },
    /// Stop running machines
    Stop {
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        app: AppArg,
        /// Signal to send (default: the machine's stop_config, else SIGINT)
        #[arg(short, long)]
        signal: Option<String>,
        /// Seconds to wait before SIGKILL
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Destroy machines
    #[command(visible_aliases = ["rm", "remove"])]
    Destroy {
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        app: AppArg,
        /// Kill running machines instead of refusing
        #[arg(short, long)]
        force: bool,
    },
    /// Run a command in a running machine and print its output
    Exec {
        id: String,
        /// The command and its arguments
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
        #[command(flatten)]
        app: AppArg,
        /// Seconds before the command is killed
        #[arg(long)]
        timeout: Option<u64>,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Image reference
    image: String,
    /// Command to run instead of the image's CMD
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
    #[command(flatten)]
    app: AppArg,
    /// Machine name
    #[arg(short, long)]
    name: Option<String>,
    /// Region to place the machine in
    #[arg(short, long)]
    region: Option<String>,
    /// Environment variable NAME=VALUE (repeatable)
    #[arg(short, long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Entrypoint, replacing the image's
    #[arg(long)]
    entrypoint: Option<String>,
    /// Restart policy: no, always or on-failure
    #[arg(long)]
    restart: Option<String>,
    /// Destroy the machine when its process exits
    #[arg(long)]
    rm: bool,
    /// Return as soon as the machine is created, without waiting for it to start
    #[arg(short, long)]
    detach: bool,
}

/// Runs a command; errors become one line on stderr and a non-zero exit.
pub async fn run(cmd: Command) -> ExitCode {
    match dispatch(cmd).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {}", output::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    let api = client::from_env()?;
    match cmd {
        Command::Apps(c) => apps(&api, c).await,
        Command::Machine(c) => machine(&api, c).await,
        Command::Image(c) => image::run(&api, c).await,
    }
}

async fn apps(api: &Client, cmd: AppsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AppsCommand::Create { name, org } => {
            let app: App = api
                .post("/apps", Some(json!({ "name": name, "org_slug": org })))
                .await?;
            println!("New app created: {}", app.name);
        }
        AppsCommand::List { org } => {
            let list: ListAppsResponse = api.get(&format!("/apps?org_slug={org}")).await?;
            let rows = list
                .apps
                .iter()
                .map(|a| {
                    vec![
                        a.name.clone(),
                        a.organization.slug.clone(),
                        a.status.clone(),
                        a.machine_count.to_string(),
                    ]
                })
                .collect();
            output::table(&["NAME", "OWNER", "STATUS", "MACHINES"], rows);
        }
        AppsCommand::Destroy { name } => {
            api.delete(&format!("/apps/{name}")).await?;
            println!("Destroyed app {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn machine(api: &Client, cmd: MachineCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        MachineCommand::Run(args) => run_machine(api, args).await?,
        MachineCommand::List { app, quiet } => {
            let machines: Vec<Machine> = api.get(&format!("/apps/{}/machines", app.app)).await?;
            if quiet {
                for m in &machines {
                    println!("{}", m.id);
                }
            } else {
                let rows = machines
                    .iter()
                    .map(|m| {
                        vec![
                            m.id.clone(),
                            m.name.clone(),
                            m.state.to_string(),
                            m.region.clone(),
                            m.config.image.clone(),
                            m.created_at.clone(),
                        ]
                    })
                    .collect();
                output::table(&["ID", "NAME", "STATE", "REGION", "IMAGE", "CREATED"], rows);
            }
        }
        MachineCommand::Status { id, app } => {
            let m: Machine = api.get(&format!("/apps/{}/machines/{id}", app.app)).await?;
            println!("Machine ID: {}", m.id);
            println!("Instance ID: {}", m.instance_id);
            println!("State: {}", m.state);
            println!();
            let image = format!(
                "{}/{}:{} ({})",
                m.image_ref.registry, m.image_ref.repository, m.image_ref.tag, m.image_ref.digest
            );
            let guest = m.config.effective_guest();
            let fields = [
                ("ID", m.id.clone()),
                ("Name", m.name.clone()),
                ("State", m.state.to_string()),
                ("Region", m.region.clone()),
                ("Image", image),
                (
                    "Size",
                    format!(
                        "{}-cpu-{}x:{}MB",
                        guest.cpu_kind, guest.cpus, guest.memory_mb
                    ),
                ),
                ("Created", m.created_at.clone()),
                ("Updated", m.updated_at.clone()),
            ];
            for (k, v) in fields {
                println!("  {k:<10} = {v}");
            }
            println!();
            println!("Event Logs");
            output::table(
                &["STATE", "EVENT", "SOURCE", "TIMESTAMP", "INFO"],
                m.events.iter().map(event_row).collect(),
            );
        }
        MachineCommand::Start { ids, app } => {
            for id in ids {
                let res: Value = api
                    .post(&format!("/apps/{}/machines/{id}/start", app.app), None)
                    .await?;
                let prev = res
                    .get("previous_state")
                    .and_then(Value::as_str)
                    .unwrap_or("?");
                println!("{id} has been started (it was {prev})");
            }
        }
        MachineCommand::Stop {
            ids,
            app,
            signal,
            timeout,
        } => {
            let mut body = json!({});
            if let Some(s) = signal {
                body["signal"] = json!(s);
            }
            if let Some(t) = timeout {
                body["timeout"] = json!(format!("{t}s"));
            }
            for id in ids {
                let _: Value = api
                    .post(
                        &format!("/apps/{}/machines/{id}/stop", app.app),
                        Some(body.clone()),
                    )
                    .await?;
                println!("Sent stop signal to machine {id}");
            }
        }
        MachineCommand::Destroy { ids, app, force } => {
            for id in ids {
                api.delete(&format!("/apps/{}/machines/{id}?force={force}", app.app))
                    .await?;
                println!("Machine {id} was destroyed");
            }
        }
        MachineCommand::Exec {
            id,
            command,
            app,
            timeout,
        } => {
            let mut body = json!({ "command": command });
            if let Some(t) = timeout {
                body["timeout"] = json!(t);
            }
            let res: ExecResponse = api
                .post(&format!("/apps/{}/machines/{id}/exec", app.app), Some(body))
                .await?;
            print!("{}", res.stdout);
            eprint!("{}", res.stderr);
            return Ok(ExitCode::from(u8::try_from(res.exit_code).unwrap_or(1)));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_machine(api: &Client, args: RunArgs) -> anyhow::Result<()> {
    let mut config = json!({ "image": args.image });
    let mut env = serde_json::Map::new();
    for kv in &args.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--env {kv:?} must look like NAME=VALUE"))?;
        env.insert(k.to_string(), json!(v));
    }
    if !env.is_empty() {
        config["env"] = Value::Object(env);
    }
    let mut init = serde_json::Map::new();
    if let Some(ep) = &args.entrypoint {
        let argv = split_words(ep)
            .with_context(|| format!("--entrypoint {ep:?} has unbalanced quotes"))?;
        init.insert("entrypoint".into(), json!(argv));
    }
    if !args.command.is_empty() {
        init.insert("cmd".into(), json!(args.command));
    }
    if !init.is_empty() {
        config["init"] = Value::Object(init);
    }
    if let Some(policy) = &args.restart {
        if !["no", "always", "on-failure"].contains(&policy.as_str()) {
            bail!("--restart must be one of no, always, on-failure (got {policy:?})");
        }
        config["restart"] = json!({ "policy": policy });
    }
    if args.rm {
        config["auto_destroy"] = json!(true);
    }
    let mut body = json!({ "config": config });
    if let Some(n) = &args.name {
        body["name"] = json!(n);
    }
    if let Some(r) = &args.region {
        body["region"] = json!(r);
    }
    let m: Machine = api
        .post(&format!("/apps/{}/machines", args.app.app), Some(body))
        .await?;
    println!("Machine {} ({}) created", m.id, m.name);
    if args.detach {
        return Ok(());
    }
    let path = format!(
        "/apps/{}/machines/{}/wait?state=started&timeout=60",
        args.app.app, m.id
    );
    let waited: anyhow::Result<WaitResponse> = api.get(&path).await;
    match waited {
        Ok(_) => println!("Machine {} is started", m.id),
        Err(e) => {
            // The machine may have started and already exited, or failed to boot: say which.
            let now: Machine = api
                .get(&format!("/apps/{}/machines/{}", args.app.app, m.id))
                .await?;
            if now
                .events
                .iter()
                .any(|e| e.kind == "start" && e.status == "started")
            {
                println!("Machine {} started and is now {}", m.id, now.state);
            } else {
                let why = now
                    .events
                    .iter()
                    .find_map(|e| {
                        e.request
                            .as_ref()?
                            .get("error")?
                            .as_str()
                            .map(str::to_string)
                    })
                    .unwrap_or_else(|| e.to_string());
                bail!("machine {} did not start: {why}", m.id);
            }
        }
    }
    Ok(())
}

fn event_row(e: &MachineEvent) -> Vec<String> {
    let info = e
        .request
        .as_ref()
        .map(|r| {
            if let Some(x) = r.get("exit_event") {
                let code = x.get("exit_code").and_then(Value::as_i64).unwrap_or(-1);
                let oom = x
                    .get("oom_killed")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let mut s = format!("exit_code={code}");
                if oom {
                    s.push_str(",oom_killed=true");
                }
                if x.get("requested_stop").and_then(Value::as_bool) == Some(true) {
                    s.push_str(",requested_stop=true");
                }
                s
            } else if let Some(err) = r.get("error").and_then(Value::as_str) {
                err.to_string()
            } else {
                String::new()
            }
        })
        .unwrap_or_default();
    vec![
        e.status.clone(),
        e.kind.clone(),
        e.source.clone(),
        output::timestamp_ms(e.timestamp),
        info,
    ]
}

fn split_words(s: &str) -> Option<Vec<String>> {
    // Whitespace splitting with simple double quotes, enough for an entrypoint flag.
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

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words() {
        assert_eq!(split_words("/bin/sh -c").unwrap(), ["/bin/sh", "-c"]);
        assert_eq!(split_words("\"a b\" c").unwrap(), ["a b", "c"]);
        assert!(split_words("\"open").is_none());
        assert_eq!(urlencode("reg:5000/a b"), "reg%3A5000%2Fa%20b");
    }
}

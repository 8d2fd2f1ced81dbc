//! The `hangar` command line (all but `hangar server`): `fly machine`'s verbs and the rest of
//! what flyctl users reach for, over the REST API only, so it works against any Hangar
//! installation, local or remote.

use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use futures::StreamExt;
use hangar_types::{App, AppSecrets, ListAppsResponse, Machine};
use serde_json::{json, Value};

mod client;
mod context;
mod image;
mod machine;
mod output;
mod spec;
mod terminal;

pub use client::default_data_dir;
use client::Client;
pub use image::ImageCommand;

/// Options every command takes.
#[derive(Args, Debug, Clone, Default)]
pub struct Globals {
    /// Print the API's JSON instead of tables and messages
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Manage apps
    #[command(subcommand)]
    Apps(AppsCommand),
    /// Manage machines
    #[command(subcommand, visible_alias = "m", alias = "machines")]
    Machine(Box<machine::MachineCommand>),
    /// Manage the host's images
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Manage an app's secrets
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Show the output of an app's machines
    Logs {
        #[command(flatten)]
        app: AppArg,
        /// Only this machine
        #[arg(short = 'i', long = "instance", alias = "machine")]
        machine: Option<String>,
        /// Keep printing new lines as they come
        #[arg(short, long)]
        follow: bool,
        /// How many recent lines to show first
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: u64,
    },
    /// Show an app and its machines
    Status {
        #[command(flatten)]
        app: AppArg,
    },
    /// Switch between Hangar installations (API URL and token)
    #[command(subcommand)]
    Context(ContextCommand),
}

#[derive(Subcommand, Debug)]
pub enum AppsCommand {
    /// Create an app
    Create {
        name: String,
        #[arg(short, long, default_value = "personal")]
        org: String,
    },
    /// List apps
    #[command(visible_alias = "ls")]
    List {
        #[arg(short, long, default_value = "personal")]
        org: String,
    },
    /// Destroy an app and all of its machines
    #[command(visible_aliases = ["delete", "rm"])]
    Destroy { name: String },
}

#[derive(Subcommand, Debug)]
pub enum SecretsCommand {
    /// Set secrets: NAME=VALUE ... (machines get them at their next start)
    Set {
        #[arg(required = true, value_name = "NAME=VALUE")]
        values: Vec<String>,
        #[command(flatten)]
        app: AppArg,
    },
    /// List secrets (names and digests; values never leave the server)
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        app: AppArg,
    },
    /// Remove secrets
    #[command(visible_alias = "rm")]
    Unset {
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        app: AppArg,
    },
}

#[derive(Subcommand, Debug)]
pub enum ContextCommand {
    /// Add (or replace) a context
    Add {
        name: String,
        #[arg(long)]
        url: String,
        #[arg(long)]
        token: Option<String>,
        /// Also make it the current context
        #[arg(long = "use")]
        use_it: bool,
    },
    /// Make a context the current one
    Use { name: String },
    /// List contexts
    #[command(visible_alias = "ls")]
    List,
    /// Remove a context
    #[command(visible_alias = "rm")]
    Remove { name: String },
    /// Show the current context
    Current,
}

#[derive(Args, Debug)]
pub struct AppArg {
    /// App name (defaults to $HANGAR_APP)
    #[arg(short = 'a', long = "app", env = "HANGAR_APP")]
    pub app: String,
}

/// Runs a command; errors become one line on stderr and a non-zero exit.
pub async fn run(cmd: Command, globals: Globals) -> ExitCode {
    match dispatch(cmd, &globals).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {}", output::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Command, g: &Globals) -> anyhow::Result<ExitCode> {
    if let Command::Context(c) = cmd {
        return contexts(c, g).map(|()| ExitCode::SUCCESS);
    }
    let api = client::connect()?;
    match cmd {
        Command::Apps(c) => apps(&api, c, g).await?,
        Command::Machine(c) => return machine::run(&api, *c, g).await,
        Command::Image(c) => return image::run(&api, c).await,
        Command::Secrets(c) => secrets(&api, c, g).await?,
        Command::Logs {
            app,
            machine,
            follow,
            lines,
        } => logs(&api, &app.app, machine.as_deref(), follow, lines, g).await?,
        Command::Status { app } => app_status(&api, &app.app, g).await?,
        Command::Context(_) => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn apps(api: &Client, cmd: AppsCommand, g: &Globals) -> anyhow::Result<()> {
    match cmd {
        AppsCommand::Create { name, org } => {
            let app: App = api
                .post("/apps", Some(json!({ "name": name, "org_slug": org })))
                .await?;
            if g.json {
                return output::json(&app);
            }
            println!("New app created: {}", app.name);
        }
        AppsCommand::List { org } => {
            let list: ListAppsResponse = api.get(&format!("/apps?org_slug={org}")).await?;
            if g.json {
                return output::json(&list.apps);
            }
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
    Ok(())
}

async fn secrets(api: &Client, cmd: SecretsCommand, g: &Globals) -> anyhow::Result<()> {
    match cmd {
        SecretsCommand::Set { values, app } => {
            let mut map = serde_json::Map::new();
            for kv in values {
                let (k, v) = kv
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .with_context(|| format!("{kv:?} must look like NAME=VALUE"))?;
                map.insert(k.to_string(), json!(v));
            }
            let res: Value = api
                .post(
                    &format!("/apps/{}/secrets", app.app),
                    Some(json!({ "values": map })),
                )
                .await?;
            if g.json {
                return output::json(&res);
            }
            println!(
                "Set {} secret(s) on {} (secrets version {}); machines get them at their next start",
                map.len(),
                app.app,
                res["version"]
            );
        }
        SecretsCommand::List { app } => {
            let list: AppSecrets = api.get(&format!("/apps/{}/secrets", app.app)).await?;
            if g.json {
                return output::json(&list.secrets);
            }
            output::table(
                &["NAME", "DIGEST", "UPDATED"],
                list.secrets
                    .iter()
                    .map(|s| vec![s.name.clone(), s.digest.clone(), output::ago(&s.updated_at)])
                    .collect(),
            );
        }
        SecretsCommand::Unset { names, app } => {
            let map: serde_json::Map<String, Value> =
                names.iter().map(|n| (n.clone(), Value::Null)).collect();
            let res: Value = api
                .post(
                    &format!("/apps/{}/secrets", app.app),
                    Some(json!({ "values": map })),
                )
                .await?;
            if g.json {
                return output::json(&res);
            }
            println!("Removed {} secret(s) from {}", names.len(), app.app);
        }
    }
    Ok(())
}

async fn logs(
    api: &Client,
    app: &str,
    machine: Option<&str>,
    follow: bool,
    lines: u64,
    g: &Globals,
) -> anyhow::Result<()> {
    let mut query = format!("/apps/{app}/logs?lines={lines}");
    if let Some(m) = machine {
        query.push_str(&format!("&instance={m}"));
    }
    let print = |line: &Value| {
        if g.json {
            println!("{line}");
        } else {
            println!(
                "{} [{}] {}",
                line["region"].as_str().unwrap_or_default(),
                line["instance"].as_str().unwrap_or_default(),
                line["message"].as_str().unwrap_or_default()
            );
        }
    };
    if !follow {
        let lines: Vec<Value> = api.get(&query).await?;
        if g.json {
            return output::json(&lines);
        }
        lines.iter().for_each(print);
        return Ok(());
    }
    let res = api.stream(&format!("{query}&follow=true")).await?;
    let mut body = res.bytes_stream();
    let mut pending = Vec::new();
    while let Some(chunk) = body.next().await {
        pending.extend_from_slice(&chunk.context("the log stream broke")?);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                print(&v);
                use std::io::Write;
                std::io::stdout().flush()?;
            }
        }
    }
    Ok(())
}

async fn app_status(api: &Client, app: &str, g: &Globals) -> anyhow::Result<()> {
    let info: App = api.get(&format!("/apps/{app}")).await?;
    let machines: Vec<Machine> = api.get(&format!("/apps/{app}/machines")).await?;
    if g.json {
        return output::json(&json!({ "app": info, "machines": machines }));
    }
    println!("App");
    println!("  Name     = {}", info.name);
    println!("  Owner    = {}", info.organization.slug);
    println!("  Machines = {}", info.machine_count);
    println!();
    if machines.is_empty() {
        println!("No machines");
        return Ok(());
    }
    output::table(
        &[
            "ID", "NAME", "STATE", "REGION", "IMAGE", "VERSION", "UPDATED",
        ],
        machines
            .iter()
            .map(|m| {
                vec![
                    m.id.clone(),
                    m.name.clone(),
                    output::state(&m.state.to_string()),
                    m.region.clone(),
                    m.config.image.clone(),
                    m.instance_id.clone(),
                    output::ago(&m.updated_at),
                ]
            })
            .collect(),
    );
    Ok(())
}

fn contexts(cmd: ContextCommand, g: &Globals) -> anyhow::Result<()> {
    let mut config = context::Config::load()?;
    match cmd {
        ContextCommand::Add {
            name,
            url,
            token,
            use_it,
        } => {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                bail!("--url {url:?} must start with http:// or https://");
            }
            config
                .contexts
                .insert(name.clone(), context::ApiContext { url, token });
            if use_it || config.current.is_none() {
                config.current = Some(name.clone());
            }
            config.save()?;
            println!("Context {name} saved in {}", context::path().display());
        }
        ContextCommand::Use { name } => {
            config.use_context(&name)?;
            config.save()?;
            println!("Now using context {name}");
        }
        ContextCommand::List => {
            if g.json {
                let list: Vec<Value> = config
                    .contexts
                    .iter()
                    .map(|(n, c)| json!({ "name": n, "url": c.url, "current": config.current.as_deref() == Some(n) }))
                    .collect();
                return output::json(&list);
            }
            let rows = config
                .contexts
                .iter()
                .map(|(n, c)| {
                    let mark = if config.current.as_deref() == Some(n) {
                        "*"
                    } else {
                        ""
                    };
                    vec![mark.to_string(), n.clone(), c.url.clone()]
                })
                .collect();
            output::table(&["CURRENT", "NAME", "URL"], rows);
        }
        ContextCommand::Remove { name } => {
            if config.contexts.remove(&name).is_none() {
                bail!("no context named {name:?} (known: {})", config.names());
            }
            if config.current.as_deref() == Some(&name) {
                config.current = None;
            }
            config.save()?;
            println!("Context {name} removed");
        }
        ContextCommand::Current => {
            let (url, _) = config.resolve()?;
            let name = config
                .current
                .clone()
                .unwrap_or_else(|| "(none: the local server)".into());
            if g.json {
                return output::json(&json!({ "name": config.current, "url": url }));
            }
            println!("{name} {url}");
        }
    }
    Ok(())
}

/// Percent-encodes a query parameter value.
pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

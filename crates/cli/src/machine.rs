//! `hangar machine` (alias `m`): flyctl's `fly machine` verbs over the Machines API.

use std::io::BufRead;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use hangar_types::{ExecResponse, Machine, MachineEvent};
use serde_json::{json, Value};

use crate::client::Client;
use crate::spec::ConfigFlags;
use crate::{output, terminal, AppArg, Globals};

/// How long `run`, `start` and friends wait for the machine to settle before giving up.
const SETTLE: Duration = Duration::from_secs(300);

#[derive(Subcommand, Debug)]
pub enum MachineCommand {
    /// Create and start a machine from an image
    Run(RunArgs),
    /// Create a machine without starting it
    Create(RunArgs),
    /// Make a copy of a machine (its config), optionally in another region
    Clone {
        id: String,
        #[command(flatten)]
        app: AppArg,
        #[arg(long)]
        name: Option<String>,
        #[arg(short, long)]
        region: Option<String>,
        /// Do not start the copy
        #[arg(long)]
        detach: bool,
    },
    /// Change a machine's config: shows the difference and asks before applying
    Update(UpdateArgs),
    /// Start stopped or suspended machines
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
    /// Stop and start machines again
    Restart {
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        app: AppArg,
        #[arg(short, long)]
        signal: Option<String>,
        /// Seconds to wait before SIGKILL
        #[arg(long)]
        time: Option<u64>,
        /// Kill at once instead of stopping gracefully
        #[arg(long)]
        force: bool,
    },
    /// Freeze machines with their memory kept; `start` resumes them
    Suspend {
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        app: AppArg,
    },
    /// Send SIGKILL to a machine's process
    Kill {
        id: String,
        #[command(flatten)]
        app: AppArg,
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
    /// List an app's machines
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        app: AppArg,
        /// Only print machine ids
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show a machine's details, checks and recent events
    Status {
        id: String,
        #[command(flatten)]
        app: AppArg,
        /// Also print the full config
        #[arg(short, long)]
        display_config: bool,
    },
    /// Run a command in a running machine
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
        /// Attach this terminal (interactive programs)
        #[arg(short = 't', long)]
        tty: bool,
    },
    /// An interactive shell in a running machine
    Console {
        id: String,
        #[command(flatten)]
        app: AppArg,
        /// What to run instead of /bin/sh
        #[arg(short = 'C', long)]
        command: Option<String>,
    },
    /// Wait for a machine to reach a state
    Wait {
        id: String,
        #[command(flatten)]
        app: AppArg,
        /// started, stopped, suspended, destroyed, failed or settled
        #[arg(long, default_value = "settled")]
        state: String,
        /// Seconds to wait
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Show or clear a machine's lease
    #[command(subcommand)]
    Leases(LeaseCommand),
    /// Static egress IPs: a machine's outbound traffic leaves with an address of its own
    #[command(subcommand, name = "egress-ip")]
    EgressIp(EgressIpCommand),
    /// Take a machine out of the proxy's rotation
    Cordon {
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        app: AppArg,
    },
    /// Put a cordoned machine back into rotation
    Uncordon {
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        app: AppArg,
    },
}

#[derive(Subcommand, Debug)]
pub enum EgressIpCommand {
    /// Give a machine an egress IP from the server's pool
    Allocate {
        id: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// List egress IPs: one machine's, or every machine's of the app
    List {
        id: Option<String>,
        #[command(flatten)]
        app: AppArg,
    },
    /// Return a machine's egress IP (all of them without IP) to the pool
    Release {
        id: String,
        ip: Option<String>,
        #[command(flatten)]
        app: AppArg,
        /// Do not ask for confirmation
        #[arg(short, long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum LeaseCommand {
    /// Show the lease on a machine
    View {
        id: String,
        #[command(flatten)]
        app: AppArg,
    },
    /// Release the lease on a machine, whoever holds it
    Clear {
        id: String,
        #[command(flatten)]
        app: AppArg,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Image reference (with --shell, default $HANGAR_SHELL_IMAGE or debian:bookworm-slim)
    #[arg(required_unless_present = "shell")]
    image: Option<String>,
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
    #[command(flatten)]
    flags: ConfigFlags,
    /// Destroy the machine when its process exits
    #[arg(long)]
    rm: bool,
    /// Return as soon as the machine is created, without waiting for it to start
    #[arg(short, long)]
    detach: bool,
    /// Open a shell in a new machine, destroyed when the shell ends
    #[arg(long)]
    shell: bool,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    id: String,
    #[command(flatten)]
    app: AppArg,
    /// A new image
    #[arg(short, long)]
    image: Option<String>,
    /// A new command (replacing the image's CMD)
    #[arg(short = 'C', long)]
    command: Option<String>,
    #[command(flatten)]
    flags: ConfigFlags,
    /// Apply without asking
    #[arg(short, long)]
    yes: bool,
    /// Record the new config without starting the machine
    #[arg(long)]
    skip_start: bool,
}

fn base(app: &AppArg, id: &str) -> String {
    format!("/apps/{}/machines/{id}", app.app)
}

pub async fn run(api: &Client, cmd: MachineCommand, g: &Globals) -> anyhow::Result<ExitCode> {
    match cmd {
        MachineCommand::Run(args) => return run_machine(api, args, false, g).await,
        MachineCommand::Create(args) => return run_machine(api, args, true, g).await,
        MachineCommand::Clone {
            id,
            app,
            name,
            region,
            detach,
        } => {
            let m: Machine = api.get(&base(&app, &id)).await?;
            let mut body = json!({ "config": m.config, "skip_launch": detach });
            if let Some(n) = name {
                body["name"] = json!(n);
            }
            body["region"] = json!(region.unwrap_or(m.region));
            let copy: Machine = api
                .post(&format!("/apps/{}/machines", app.app), Some(body))
                .await?;
            if g.json {
                output::json(&copy)?;
            } else {
                println!("Cloned machine {} into {} ({})", m.id, copy.id, copy.name);
            }
        }
        MachineCommand::Update(args) => return update(api, args, g).await,
        MachineCommand::Start { ids, app } => {
            for id in ids {
                let res: Value = api
                    .post(&format!("{}/start", base(&app, &id)), None)
                    .await?;
                let prev = res["previous_state"].as_str().unwrap_or("?");
                if g.json {
                    output::json(&res)?;
                } else {
                    println!("{id} has been started (it was {prev})");
                }
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
                    .post(&format!("{}/stop", base(&app, &id)), Some(body.clone()))
                    .await?;
                println!("Sent stop signal to machine {id}");
            }
        }
        MachineCommand::Restart {
            ids,
            app,
            signal,
            time,
            force,
        } => {
            let mut query = vec![format!("force_stop={force}")];
            if let Some(s) = signal {
                query.push(format!("signal={s}"));
            }
            if let Some(t) = time {
                query.push(format!("timeout={t}"));
            }
            for id in ids {
                let _: Value = api
                    .post(
                        &format!("{}/restart?{}", base(&app, &id), query.join("&")),
                        None,
                    )
                    .await?;
                wait_for(api, &app, &id, "started").await?;
                println!("Machine {id} restarted");
            }
        }
        MachineCommand::Suspend { ids, app } => {
            for id in ids {
                let _: Value = api
                    .post(&format!("{}/suspend", base(&app, &id)), None)
                    .await?;
                wait_for(api, &app, &id, "suspended").await?;
                println!("Machine {id} suspended");
            }
        }
        MachineCommand::Kill { id, app } => {
            let _: Value = api
                .post(
                    &format!("{}/signal", base(&app, &id)),
                    Some(json!({ "signal": "SIGKILL" })),
                )
                .await?;
            println!("Sent SIGKILL to machine {id}");
        }
        MachineCommand::Destroy { ids, app, force } => {
            for id in ids {
                api.delete(&format!("{}?force={force}", base(&app, &id)))
                    .await?;
                println!("Machine {id} was destroyed");
            }
        }
        MachineCommand::List { app, quiet } => list(api, &app, quiet, g).await?,
        MachineCommand::Status {
            id,
            app,
            display_config,
        } => status(api, &app, &id, display_config, g).await?,
        MachineCommand::Exec {
            id,
            command,
            app,
            timeout,
            tty,
        } => {
            if tty {
                let code = terminal::session(api, &app.app, &id, &command, true).await?;
                return Ok(exit_code(code));
            }
            let mut body = json!({ "command": command });
            if let Some(t) = timeout {
                body["timeout"] = json!(t);
            }
            let res: ExecResponse = api
                .post(&format!("{}/exec", base(&app, &id)), Some(body))
                .await?;
            if g.json {
                output::json(&res)?;
            } else {
                print!("{}", res.stdout);
                eprint!("{}", res.stderr);
            }
            return Ok(exit_code(res.exit_code));
        }
        MachineCommand::Console { id, app, command } => {
            let argv = match command {
                Some(c) => {
                    crate::spec::shell_words(&c).context("--command has unbalanced quotes")?
                }
                None => vec!["/bin/sh".to_string()],
            };
            let code = terminal::session(api, &app.app, &id, &argv, true).await?;
            return Ok(exit_code(code));
        }
        MachineCommand::Wait {
            id,
            app,
            state,
            timeout,
        } => {
            let reached = wait_until(api, &app, &id, &state, Duration::from_secs(timeout)).await?;
            if g.json {
                output::json(&reached)?;
            } else {
                println!(
                    "Machine {id} is {}",
                    reached["state"].as_str().unwrap_or(&state)
                );
            }
        }
        MachineCommand::Leases(LeaseCommand::View { id, app }) => {
            let lease: Value = api.get(&format!("{}/lease", base(&app, &id))).await?;
            if g.json {
                output::json(&lease)?;
            } else {
                let d = &lease["data"];
                let expires = output::timestamp_ms(d["expires_at"].as_i64().unwrap_or(0) * 1000);
                output::table(
                    &["NONCE", "OWNER", "EXPIRES", "DESCRIPTION", "VERSION"],
                    vec![vec![
                        d["nonce"].as_str().unwrap_or_default().into(),
                        d["owner"].as_str().unwrap_or_default().into(),
                        expires,
                        d["description"].as_str().unwrap_or_default().into(),
                        d["version"].as_str().unwrap_or_default().into(),
                    ]],
                );
            }
        }
        MachineCommand::Leases(LeaseCommand::Clear { id, app }) => {
            let lease: Value = api.get(&format!("{}/lease", base(&app, &id))).await?;
            let nonce = lease["data"]["nonce"]
                .as_str()
                .context("the lease has no nonce")?;
            api.delete_with(
                &format!("{}/lease", base(&app, &id)),
                &[("fly-machine-lease-nonce", nonce)],
            )
            .await?;
            println!("Cleared the lease on machine {id}");
        }
        MachineCommand::EgressIp(cmd) => egress_ip(api, g, cmd).await?,
        MachineCommand::Cordon { ids, app } => {
            for id in ids {
                let _: Value = api
                    .post(&format!("{}/cordon", base(&app, &id)), None)
                    .await?;
                println!("Machine {id} cordoned");
            }
        }
        MachineCommand::Uncordon { ids, app } => {
            for id in ids {
                let _: Value = api
                    .post(&format!("{}/uncordon", base(&app, &id)), None)
                    .await?;
                println!("Machine {id} uncordoned");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

async fn run_machine(
    api: &Client,
    args: RunArgs,
    create_only: bool,
    g: &Globals,
) -> anyhow::Result<ExitCode> {
    let image = match (&args.image, args.shell) {
        (Some(i), _) => i.clone(),
        (None, _) => std::env::var("HANGAR_SHELL_IMAGE")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "debian:bookworm-slim".into()),
    };
    let mut config = json!({ "image": image });
    // A shell machine idles until the console attaches, and goes when it ends.
    let command = if args.shell {
        vec!["sleep".to_string(), "infinity".to_string()]
    } else {
        args.command.clone()
    };
    args.flags.apply(&mut config, &command)?;
    if args.rm {
        config["auto_destroy"] = json!(true);
    }
    let mut body = json!({ "config": config, "skip_launch": create_only });
    if let Some(n) = &args.name {
        body["name"] = json!(n);
    }
    if let Some(r) = &args.region {
        body["region"] = json!(r);
    }
    let app = &args.app;
    let spinner = output::spinner(format!("Creating a machine from {image}"));
    let machines = format!("/apps/{}/machines", app.app);
    let create = api.post::<Machine>(&machines, Some(body));
    let created = if output::interactive() {
        with_pull_progress(api, &spinner, &image, create).await
    } else {
        create.await
    };
    spinner.finish_and_clear();
    let m = created?;
    if !g.json {
        println!(
            "Machine {} ({}) {}",
            m.id,
            m.name,
            if create_only {
                "created"
            } else {
                "created and starting"
            }
        );
    }
    if create_only || args.detach {
        if g.json {
            output::json(&m)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let started = wait_started(api, app, &m).await;
    if args.shell {
        let code = match started {
            Ok(()) => terminal::session(api, &app.app, &m.id, &["/bin/sh".to_string()], true).await,
            Err(e) => Err(e),
        };
        let _ = api
            .delete(&format!("{}?force=true", base(app, &m.id)))
            .await;
        return Ok(exit_code(code?));
    }
    started?;
    if g.json {
        output::json(&api.get::<Machine>(&base(app, &m.id)).await?)?;
    } else {
        println!("Machine {} is started", m.id);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `work` (a create, which pulls the image first when the host lacks it) while showing
/// the pull's bytes per layer from the image store's progress endpoint.
async fn with_pull_progress<T>(
    api: &Client,
    spinner: &indicatif::ProgressBar,
    image: &str,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            res = &mut work => return res,
            _ = tick.tick() => {
                let Ok(pulls) = api.get::<Vec<Value>>("/images/pulls").await else { continue };
                let layers: Vec<&Value> = pulls
                    .iter()
                    .flat_map(|p| p["layers"].as_array().into_iter().flatten())
                    .collect();
                if layers.is_empty() {
                    continue;
                }
                let sum = |k: &str| layers.iter().filter_map(|l| l[k].as_u64()).sum::<u64>();
                let done = layers.iter().filter(|l| l["done"] == json!(true)).count();
                spinner.set_message(format!(
                    "Pulling {image}: {} of {}, {done}/{} layers",
                    output::bytes(sum("received")),
                    output::bytes(sum("size")),
                    layers.len()
                ));
            }
        }
    }
}

/// Waits for a new machine to start; when it cannot, says why (it may also have started and
/// exited already, which is fine).
async fn wait_started(api: &Client, app: &AppArg, m: &Machine) -> anyhow::Result<()> {
    let spinner = output::spinner(format!("Waiting for machine {} to start", m.id));
    let waited = wait_until(api, app, &m.id, "started", SETTLE).await;
    spinner.finish_and_clear();
    if waited.is_ok() {
        return Ok(());
    }
    let now: Machine = api.get(&base(app, &m.id)).await?;
    if now
        .events
        .iter()
        .any(|e| e.kind == "start" && e.status == "started")
    {
        return Ok(());
    }
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
        .unwrap_or_else(|| format!("it is {}", now.state));
    bail!("machine {} did not start: {why}", m.id)
}

/// Waits for `state` of the machine's current version, looping over the API's 60 s waits.
async fn wait_until(
    api: &Client,
    app: &AppArg,
    id: &str,
    state: &str,
    limit: Duration,
) -> anyhow::Result<Value> {
    const STATES: [&str; 6] = [
        "started",
        "stopped",
        "suspended",
        "destroyed",
        "failed",
        "settled",
    ];
    if !STATES.contains(&state) {
        bail!(
            "--state must be one of {} (got {state:?})",
            STATES.join(", ")
        );
    }
    let deadline = Instant::now() + limit;
    loop {
        let m: Machine = api.get(&base(app, id)).await?;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_secs()
            .clamp(1, 60);
        let path = format!(
            "{}/wait?state={state}&version={}&timeout={left}",
            base(app, id),
            m.instance_id
        );
        match api.get::<Value>(&path).await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < deadline && e.to_string().contains("did not reach") => {
                continue
            }
            Err(e) => return Err(e),
        }
    }
}

async fn wait_for(api: &Client, app: &AppArg, id: &str, state: &str) -> anyhow::Result<()> {
    wait_until(api, app, id, state, SETTLE).await.map(drop)
}

async fn list(api: &Client, app: &AppArg, quiet: bool, g: &Globals) -> anyhow::Result<()> {
    let machines: Vec<Machine> = api.get(&format!("/apps/{}/machines", app.app)).await?;
    if g.json {
        return output::json(&machines);
    }
    if quiet {
        for m in &machines {
            println!("{}", m.id);
        }
        return Ok(());
    }
    if machines.is_empty() {
        println!("No machines in app {}", app.app);
        return Ok(());
    }
    let rows = machines
        .iter()
        .map(|m| {
            let guest = m.config.effective_guest();
            let passing = m.checks.iter().filter(|c| c.status == "passing").count();
            vec![
                m.id.clone(),
                m.name.clone(),
                output::state(&m.state.to_string()),
                if m.checks.is_empty() {
                    String::new()
                } else {
                    format!("{passing}/{}", m.checks.len())
                },
                m.region.clone(),
                m.config.image.clone(),
                m.private_ip.clone(),
                output::ago(&m.created_at),
                output::ago(&m.updated_at),
                format!(
                    "{}-cpu-{}x:{}MB",
                    guest.cpu_kind, guest.cpus, guest.memory_mb
                ),
            ]
        })
        .collect();
    output::table(
        &[
            "ID",
            "NAME",
            "STATE",
            "CHECKS",
            "REGION",
            "IMAGE",
            "IP ADDRESS",
            "CREATED",
            "LAST UPDATED",
            "SIZE",
        ],
        rows,
    );
    Ok(())
}

async fn status(
    api: &Client,
    app: &AppArg,
    id: &str,
    display_config: bool,
    g: &Globals,
) -> anyhow::Result<()> {
    let m: Machine = api.get(&base(app, id)).await?;
    if g.json {
        return output::json(&m);
    }
    println!("Machine ID: {}", m.id);
    println!("Instance ID: {}", m.instance_id);
    println!("State: {}", output::state(&m.state.to_string()));
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
        ("Private IP", m.private_ip.clone()),
        ("Cordoned", m.cordoned.to_string()),
        ("Created", m.created_at.clone()),
        ("Updated", m.updated_at.clone()),
    ];
    for (k, v) in fields {
        println!("  {k:<10} = {v}");
    }
    if !m.checks.is_empty() {
        println!();
        println!("Checks");
        output::table(
            &["NAME", "STATUS", "LAST UPDATED", "OUTPUT"],
            m.checks
                .iter()
                .map(|c| {
                    vec![
                        c.name.clone(),
                        c.status.clone(),
                        output::ago(&c.updated_at),
                        c.output.replace('\n', " "),
                    ]
                })
                .collect(),
        );
    }
    println!();
    println!("Event Logs");
    output::table(
        &["STATE", "EVENT", "SOURCE", "TIMESTAMP", "INFO"],
        m.events.iter().map(event_row).collect(),
    );
    if display_config {
        println!();
        println!("Config:");
        println!("{}", serde_json::to_string_pretty(&m.config)?);
    }
    Ok(())
}

fn event_row(e: &MachineEvent) -> Vec<String> {
    let info = e
        .request
        .as_ref()
        .map(|r| {
            if let Some(x) = r.get("exit_event") {
                let mut s = format!("exit_code={}", x["exit_code"].as_i64().unwrap_or(-1));
                if x["oom_killed"] == json!(true) {
                    s.push_str(",oom_killed=true");
                }
                if x["requested_stop"] == json!(true) {
                    s.push_str(",requested_stop=true");
                }
                s
            } else if let Some(ms) = r["pull_ms"].as_u64() {
                format!(
                    "image {} ({} layers, {}) ready in {ms} ms",
                    r["image"].as_str().unwrap_or_default(),
                    r["layers"],
                    output::bytes(r["bytes"].as_u64().unwrap_or(0))
                )
            } else {
                r["error"].as_str().unwrap_or_default().to_string()
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

/// Takes the machine's lease, shows what changes, asks, applies with the lease's nonce, and
/// waits for the new version to settle.
async fn update(api: &Client, args: UpdateArgs, g: &Globals) -> anyhow::Result<ExitCode> {
    let path = base(&args.app, &args.id);
    let m: Machine = api.get(&path).await?;
    let old = serde_json::to_value(&m.config)?;
    let mut new = old.clone();
    if let Some(image) = &args.image {
        new["image"] = json!(image);
    }
    let command = match &args.command {
        Some(c) => crate::spec::shell_words(c).context("--command has unbalanced quotes")?,
        None => Vec::new(),
    };
    args.flags.apply(&mut new, &command)?;
    if new == old && args.image.is_none() {
        println!("No changes to apply to machine {}", m.id);
        return Ok(ExitCode::SUCCESS);
    }
    let before = serde_json::to_string_pretty(&old)?;
    let after = serde_json::to_string_pretty(&new)?;
    println!(
        "Configuration changes to be applied to machine {} ({}):\n",
        m.id, m.name
    );
    for change in similar::TextDiff::from_lines(&before, &after).iter_all_changes() {
        let sign = match change.tag() {
            similar::ChangeTag::Delete => "-",
            similar::ChangeTag::Insert => "+",
            similar::ChangeTag::Equal => " ",
        };
        print!("{sign} {change}");
    }
    println!();
    if !args.yes && !confirm("Apply changes?")? {
        bail!("update cancelled; machine {} is unchanged", m.id);
    }
    let lease: Value = api.post(&format!("{path}/lease?ttl=120"), None).await?;
    let nonce = lease["data"]["nonce"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let body =
        json!({ "config": new, "current_version": m.instance_id, "skip_launch": args.skip_start });
    let updated = api
        .post_with::<Machine>(&path, Some(body), &[("fly-machine-lease-nonce", &nonce)])
        .await;
    let _ = api
        .delete_with(
            &format!("{path}/lease"),
            &[("fly-machine-lease-nonce", &nonce)],
        )
        .await;
    let updated = updated?;
    if !args.skip_start {
        let spinner = output::spinner(format!("Waiting for machine {} to settle", m.id));
        let settled = wait_until(api, &args.app, &m.id, "settled", SETTLE).await;
        spinner.finish_and_clear();
        let state = settled?["state"].as_str().unwrap_or_default().to_string();
        if state == "failed" {
            bail!("machine {} failed to start with the new config", m.id);
        }
    }
    if g.json {
        output::json(&api.get::<Machine>(&path).await?)?;
    } else {
        println!(
            "Machine {} updated to version {}",
            m.id, updated.instance_id
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks on the terminal; anything but y/yes is a no.
fn confirm(question: &str) -> anyhow::Result<bool> {
    use std::io::Write;
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

async fn egress_ip(api: &Client, g: &Globals, cmd: EgressIpCommand) -> anyhow::Result<()> {
    match cmd {
        EgressIpCommand::Allocate { id, app } => {
            let ip: Value = api
                .post(&format!("{}/egress_ips", base(&app, &id)), Some(json!({})))
                .await?;
            if g.json {
                output::json(&ip)?;
            } else {
                println!(
                    "Allocated egress IP {} to machine {id}",
                    ip["ip"].as_str().unwrap_or_default()
                );
            }
        }
        EgressIpCommand::List { id, app } => {
            let ids = match id {
                Some(id) => vec![id],
                None => {
                    let ms: Vec<Value> = api.get(&format!("/apps/{}/machines", app.app)).await?;
                    ms.iter()
                        .filter_map(|m| m["id"].as_str().map(str::to_string))
                        .collect()
                }
            };
            let mut all = Vec::new();
            for id in ids {
                let ips: Vec<Value> = api.get(&format!("{}/egress_ips", base(&app, &id))).await?;
                all.extend(ips);
            }
            if g.json {
                output::json(&all)?;
            } else {
                output::table(
                    &["IP", "MACHINE", "CREATED"],
                    all.iter()
                        .map(|e| {
                            ["ip", "machine_id", "created_at"]
                                .iter()
                                .map(|k| e[*k].as_str().unwrap_or_default().to_string())
                                .collect()
                        })
                        .collect(),
                );
            }
        }
        EgressIpCommand::Release { id, ip, app, yes } => {
            let ips = match ip {
                Some(ip) => vec![ip],
                None => {
                    let held: Vec<Value> =
                        api.get(&format!("{}/egress_ips", base(&app, &id))).await?;
                    if held.is_empty() {
                        bail!("machine {id} holds no egress IP");
                    }
                    held.iter()
                        .filter_map(|e| e["ip"].as_str().map(str::to_string))
                        .collect()
                }
            };
            if !yes && !confirm(&format!("Release {} from machine {id}?", ips.join(", ")))? {
                bail!("cancelled; machine {id} keeps its egress IPs");
            }
            for ip in ips {
                api.delete(&format!("{}/egress_ips/{ip}", base(&app, &id)))
                    .await?;
                println!("Released egress IP {ip} from machine {id}");
            }
        }
    }
    Ok(())
}

//! `hangar`: the server (`hangar server`) and the command line, in one binary.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod server;

#[derive(Parser)]
#[command(
    name = "hangar",
    version,
    about = "Self-hosted Fly Machines",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Top,
    #[command(flatten)]
    globals: hangar_cli::Globals,
}

#[derive(Subcommand)]
enum Top {
    /// Run the Hangar server: the Machines API, the host agent and the runtime
    Server(Box<server::ServerArgs>),
    #[command(flatten)]
    Client(hangar_cli::Command),
    /// Print a shell completion script: `hangar completion bash > /etc/bash_completion.d/hangar`
    Completion { shell: clap_complete::Shell },
    /// Write man pages for hangar and its subcommands into a directory
    Man { dir: std::path::PathBuf },
    /// The per-host keeper of machine processes; started by the server, not by hand
    #[command(hide = true)]
    Keeper { dir: std::path::PathBuf },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    // The keeper is a plain blocking process: no async runtime, no threads before it forks.
    if let Top::Keeper { dir } = &cli.command {
        return match hangar_runtime::keeper::run(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hangar keeper: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match &cli.command {
        Top::Completion { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "hangar", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Top::Man { dir } => {
            return match write_man_pages(dir) {
                Ok(n) => {
                    println!("Wrote {n} man pages to {}", dir.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("Error: cannot write man pages to {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Top::Server(args) => match runtime.block_on(server::run(*args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("Error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Top::Client(cmd) => {
            let code = runtime.block_on(hangar_cli::run(cmd, cli.globals));
            // An interactive session leaves a thread blocked reading stdin; do not wait for it.
            runtime.shutdown_background();
            code
        }
        Top::Keeper { .. } | Top::Completion { .. } | Top::Man { .. } => {
            unreachable!("handled before the runtime starts")
        }
    }
}

/// Help and version print as clap prints them; a usage mistake is one line naming it, and
/// exit status 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        _ => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("Error: {first} (see --help)");
            ExitCode::from(2)
        }
    }
}

/// One page per command and subcommand (`hangar-machine-run.1`...), as `man` expects them.
fn write_man_pages(dir: &std::path::Path) -> std::io::Result<usize> {
    fn walk(cmd: &clap::Command, prefix: &str, dir: &std::path::Path) -> std::io::Result<usize> {
        let name = if prefix.is_empty() {
            cmd.get_name().to_string()
        } else {
            format!("{prefix}-{}", cmd.get_name())
        };
        let page = cmd.clone().name(name.clone());
        let mut out = std::fs::File::create(dir.join(format!("{name}.1")))?;
        clap_mangen::Man::new(page).render(&mut out)?;
        let mut n = 1;
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            n += walk(sub, &name, dir)?;
        }
        Ok(n)
    }
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command();
    cmd.build();
    walk(&cmd, "", dir)
}

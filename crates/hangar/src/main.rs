//! `hangar`: the server (`hangar server`) and the command line, in one binary.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

#[derive(Subcommand)]
enum Top {
    /// Run the Hangar server: the Machines API, the host agent and the runtime
    Server(server::ServerArgs),
    #[command(flatten)]
    Client(hangar_cli::Command),
    /// The per-host keeper of machine processes; started by the server, not by hand
    #[command(hide = true)]
    Keeper { dir: std::path::PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Top::Server(args) => match runtime.block_on(server::run(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("Error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Top::Client(cmd) => runtime.block_on(hangar_cli::run(cmd)),
        Top::Keeper { .. } => unreachable!("handled before the runtime starts"),
    }
}

//! `bench/cli`: wall time of the `hangar` CLI against a server holding 1,000 machines.
//!
//! Measures, over N runs each (default 30, or the first argument), interleaved:
//! - `hangar machine list` (a table of all 1,000 machines);
//! - `hangar machine status ID`;
//! - the baseline: `hangar --version`, the cost of starting the process at all.
//!
//! Target: under 100 ms each, process start included. Needs root, runc, docker-registry and a
//! release build (`make build`).

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use hangar_bench::{report, Bench, Samples};
use serde_json::json;

const APP: &str = "bench";
const MACHINES: usize = 1000;

fn main() -> anyhow::Result<()> {
    let runs = hangar_bench::runs_arg(30)?;
    let Bench {
        registry: _registry,
        server,
        image,
        bin,
    } = Bench::start(APP)?;
    let config = json!({ "image": image, "init": { "exec": ["/bin/sleep", "100000"] } });
    let mut first = String::new();
    for i in 0..MACHINES {
        let m = server.create_machine(APP, json!({ "config": config, "skip_launch": true }));
        if i == 0 {
            first = m["id"].as_str().context("id")?.to_string();
        }
    }

    let time = |args: &[&str]| -> anyhow::Result<std::time::Duration> {
        let t = Instant::now();
        let status = Command::new(&bin)
            .args(args)
            .env("HANGAR_API_URL", server.url())
            .env("HANGAR_API_TOKEN", server.token())
            .env("HANGAR_CONFIG", "/nonexistent")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        let d = t.elapsed();
        if !status.success() {
            bail!("hangar {args:?} failed");
        }
        Ok(d)
    };
    let mut list = Samples::new("hangar machine list (1,000)");
    let mut status = Samples::new("hangar machine status");
    let mut baseline = Samples::new("baseline: hangar --version");
    for _ in 0..runs {
        list.push(time(&["machine", "list", "-a", APP])?);
        status.push(time(&["machine", "status", &first, "-a", APP])?);
        baseline.push(time(&["--version"])?);
    }
    report(
        &format!("hangar CLI wall time with {MACHINES} machines (target < 100 ms each)"),
        &[&list, &status],
        &baseline,
    );
    Ok(())
}

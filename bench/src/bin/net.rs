//! `bench/net`: the private network's throughput and latency beside a bare veth pair, and what
//! network setup adds to a machine's start.
//!
//! - The floor: iperf3 and ping between two network namespaces joined by one veth pair.
//! - Hangar: iperf3 and ping machine → host (the bridge's fdaa::1) and machine → machine (by
//!   private IP), sandbox machines on `hangar server --private-network`.
//! - Start: stopped → started on a server with the private network and on one without, runs
//!   interleaved; the difference of the medians is what network setup costs.
//!
//! Everything runs in a network namespace of its own, so the host's networking is untouched.
//! Needs root, iperf3, runc, docker-registry and a release build (`make build`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hangar_bench::{ms, report, Bench, Samples};
use hangar_testkit::image::{ImageBuilder, Layer};
use hangar_testkit::server::TestServer;
use serde_json::{json, Value};

const APP: &str = "bench";
/// Seconds each iperf3 run lasts.
const IPERF_SECS: &str = "3";

fn sh(cmd: &str) -> anyhow::Result<String> {
    let out = Command::new("sh").arg("-c").arg(cmd).output()?;
    if !out.status.success() {
        bail!("{cmd}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Bits per second received, from `iperf3 -J`.
fn iperf_bps(json_text: &str) -> anyhow::Result<f64> {
    let v: Value = serde_json::from_str(json_text)
        .with_context(|| format!("iperf3 output: {}", json_text.trim()))?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("no throughput in iperf3's output: {}", json_text.trim()))
}

/// The average round trip, in ms, from busybox ping's summary line.
fn ping_avg_ms(text: &str) -> anyhow::Result<f64> {
    let line = text
        .lines()
        .find(|l| l.contains("round-trip"))
        .with_context(|| format!("no ping summary: {text}"))?;
    let nums = line.rsplit('=').next().unwrap_or_default().trim();
    let avg = nums.split('/').nth(1).context("ping summary")?;
    Ok(avg.trim_end_matches(" ms").parse()?)
}

const PING: &str = "ping -c 20 -i 0.1";

/// iperf3 and its libraries from the host, on top of busybox.
fn iperf_image() -> anyhow::Result<ImageBuilder> {
    let mut layer = Layer::new()
        .dir("/lib", 0o755)
        .dir("/lib/x86_64-linux-gnu", 0o755)
        .dir("/lib64", 0o755)
        .dir("/usr", 0o755)
        .dir("/usr/bin", 0o755)
        .file("/usr/bin/iperf3", std::fs::read("/usr/bin/iperf3")?, 0o755);
    for line in sh("ldd /usr/bin/iperf3")?.lines() {
        let path = match line.split("=>").nth(1) {
            Some(rest) => rest.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let real = std::fs::canonicalize(path)?;
        let name = std::path::Path::new(path)
            .file_name()
            .and_then(|n| n.to_str())
            .context("library name")?;
        let into = if name.starts_with("ld-linux") {
            format!("/lib64/{name}")
        } else {
            format!("/lib/x86_64-linux-gnu/{name}")
        };
        layer = layer.file(&into, std::fs::read(&real)?, 0o755);
    }
    Ok(ImageBuilder::busybox().layer(layer))
}

/// One iperf3 run against a one-off server already listening; the client runs in `client`.
fn iperf_pair(server: &str, client: &str, addr: &str) -> anyhow::Result<f64> {
    let mut srv = Command::new("sh")
        .arg("-c")
        .arg(format!("{server} iperf3 -s -1 -B {addr}"))
        .stdout(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let out = sh(&format!("{client} iperf3 -c {addr} -t {IPERF_SECS} -J"));
    let _ = srv.wait();
    iperf_bps(&out?)
}

fn exec(server: &TestServer, id: &str, cmd: &str) -> anyhow::Result<String> {
    let r = server.post(
        &format!("/v1/apps/{APP}/machines/{id}/exec"),
        json!({ "command": ["sh", "-c", cmd], "timeout": 60 }),
    );
    if r.status != 200 || r.body["exit_code"] != 0 {
        bail!("exec {cmd}: {r:?}");
    }
    Ok(r.body["stdout"].as_str().unwrap_or_default().to_string())
}

fn gbps(bps: f64) -> String {
    format!("{:.2} Gbit/s", bps / 1e9)
}

fn main() -> anyhow::Result<()> {
    let runs = hangar_bench::runs_arg(20)?;
    // Before any thread exists, so that every thread and child is in the bench's own network.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("unshare")?;
    sh("ip link set lo up")?;

    // The floor: a bare veth pair between two namespaces.
    let tag = std::process::id();
    let (na, nb) = (format!("hbench-a-{tag}"), format!("hbench-b-{tag}"));
    let floor = (|| -> anyhow::Result<(f64, f64)> {
        sh(&format!(
            "ip netns add {na} && ip netns add {nb} && \
             ip -n {na} link add v0 type veth peer name v1 netns {nb} && \
             ip -n {na} addr add fd00:b::1/64 dev v0 nodad && ip -n {na} link set v0 up && \
             ip -n {nb} addr add fd00:b::2/64 dev v1 nodad && ip -n {nb} link set v1 up && \
             ip -n {na} link set lo up && ip -n {nb} link set lo up"
        ))?;
        let bps = iperf_pair(
            &format!("ip netns exec {na}"),
            &format!("ip netns exec {nb}"),
            "fd00:b::1",
        )?;
        let rtt = ping_avg_ms(&sh(&format!(
            "ip netns exec {nb} busybox {PING} fd00:b::1"
        ))?)?;
        Ok((bps, rtt))
    })();
    let _ = sh(&format!("ip netns del {na}; ip netns del {nb}"));
    let (floor_bps, floor_rtt) = floor?;

    // Hangar, with the private network.
    let Bench {
        registry,
        server,
        bin,
        ..
    } = Bench::start_with(APP, &["--private-network", "--allow-host-port", "5201"])?;
    iperf_image()?.push(&registry, "iperf:1");
    let image = format!("{}/iperf:1", registry.host());
    let run = |cmd: &[&str]| -> anyhow::Result<String> {
        let m = server.create_machine(
            APP,
            json!({ "config": { "image": image, "init": { "exec": cmd } } }),
        );
        let id = m["id"].as_str().context("id")?.to_string();
        server.wait_state(APP, &id, "started");
        Ok(id)
    };
    let a = run(&["/usr/bin/iperf3", "-s"])?;
    let b = run(&["/bin/sleep", "100000"])?;
    let ip_a = server.get(&format!("/v1/apps/{APP}/machines/{a}")).body["private_ip"]
        .as_str()
        .context("private_ip")?
        .to_string();

    let host_bps = {
        let mut srv = Command::new("iperf3")
            .args(["-s", "-1", "-B", "fdaa::1"])
            .stdout(Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(300));
        let out = exec(
            &server,
            &b,
            &format!("iperf3 -c fdaa::1 -t {IPERF_SECS} -J"),
        );
        let _ = srv.wait();
        iperf_bps(&out?)?
    };
    let host_rtt = ping_avg_ms(&exec(&server, &b, &format!("{PING} fdaa::1"))?)?;
    let m2m_bps = iperf_bps(&exec(
        &server,
        &b,
        &format!("iperf3 -c {ip_a} -t {IPERF_SECS} -J"),
    )?)?;
    let m2m_rtt = ping_avg_ms(&exec(&server, &b, &format!("{PING} {ip_a}"))?)?;

    println!("\nbench/net: throughput (iperf3, {IPERF_SECS} s, one stream) and latency (ping, 20 round trips)");
    println!(
        "{:<34} {:>14} {:>10} {:>12} {:>10}",
        "path", "throughput", "vs floor", "avg rtt", "vs floor"
    );
    for (name, bps, rtt) in [
        ("machine → host (sandbox)", host_bps, host_rtt),
        ("machine → machine (sandbox)", m2m_bps, m2m_rtt),
        ("floor: bare veth pair", floor_bps, floor_rtt),
    ] {
        println!(
            "{:<34} {:>14} {:>9.0}% {:>9.3} ms {:>9.2}x",
            name,
            gbps(bps),
            100.0 * bps / floor_bps,
            rtt,
            rtt / floor_rtt
        );
    }

    // What network setup adds to a start: the same machine on a server without the network.
    let plain = TestServer::start_with(bin.to_str().context("utf-8 path")?, &[]);
    plain.create_app(APP);
    let make = |s: &TestServer| -> anyhow::Result<String> {
        let m = s.create_machine(
            APP,
            json!({ "config": { "image": image, "init": { "exec": ["/bin/sleep", "100000"] }, "restart": { "policy": "no" } } }),
        );
        let id = m["id"].as_str().context("id")?.to_string();
        s.wait_state(APP, &id, "started");
        Ok(id)
    };
    let with_id = make(&server)?;
    let plain_id = make(&plain)?;
    let cycle = |s: &TestServer, id: &str| -> Duration {
        s.post(&format!("/v1/apps/{APP}/machines/{id}/stop"), json!({}));
        s.wait_state(APP, id, "stopped");
        let t = Instant::now();
        s.post(&format!("/v1/apps/{APP}/machines/{id}/start"), json!({}));
        s.wait_state(APP, id, "started");
        t.elapsed()
    };
    let mut with_net = Samples::new("stopped → started, private network");
    let mut without = Samples::new("baseline: stopped → started, no network");
    for _ in 0..runs {
        with_net.push(cycle(&server, &with_id));
        without.push(cycle(&plain, &plain_id));
    }
    report("bench/net: machine start", &[&with_net], &without);
    println!(
        "network setup adds {} to the median start",
        ms(with_net.median().saturating_sub(without.median()))
    );
    for (s, id) in [
        (&server, &a),
        (&server, &b),
        (&server, &with_id),
        (&plain, &plain_id),
    ] {
        s.delete(&format!("/v1/apps/{APP}/machines/{id}?force=true"));
        // Destroyed, not just asked: the server is gone next, and with it whoever would
        // unplug the machine.
        s.wait_state(APP, id, "destroyed");
    }
    Ok(())
}

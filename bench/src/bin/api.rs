//! `bench/api`: how fast the API answers with 1,000 machines in the store.
//!
//! Measures, against a release server with 1,000 machines (created with `skip_launch`):
//! - get-machine latency, median and p99, one request at a time;
//! - list-machines (all 1,000, with their events) latency, median;
//! - get-machine requests per second over 64 concurrent keep-alive connections;
//! - the baseline, side by side: `GET /v1/platform/regions`, which touches no database, so
//!   the ratio is what reading a machine costs over the HTTP stack itself.
//!
//! The load generator shares the host's cores with the server, so RPS is a floor.
//! Needs root, runc, docker-registry and a release build (`make build`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use hangar_bench::{ms, Bench, Samples};
use hangar_testkit::server::TestServer;
use serde_json::json;

const APP: &str = "bench";
const MACHINES: usize = 1000;
const CONNECTIONS: usize = 64;

fn main() -> anyhow::Result<()> {
    let Bench {
        registry: _registry,
        server,
        image,
        ..
    } = Bench::start(APP)?;

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run(&server, &image))
}

async fn run(server: &TestServer, image: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONNECTIONS)
        .build()?;
    let url = server.url();
    let auth = format!("Bearer {}", server.token());
    let config = json!({ "image": image, "init": { "exec": ["/bin/sleep", "100000"] } });

    let started = Instant::now();
    let ids: Vec<String> = futures::stream::iter(0..MACHINES)
        .map(|_| {
            let req = client
                .post(format!("{url}/v1/apps/{APP}/machines"))
                .header("authorization", &auth)
                .json(&json!({ "config": config, "skip_launch": true }));
            async move {
                let m: serde_json::Value = req.send().await?.error_for_status()?.json().await?;
                anyhow::Ok(m["id"].as_str().context("id")?.to_string())
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    println!(
        "created {} machines in {:.1} s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );

    let get = |path: String| {
        let req = client
            .get(format!("{url}{path}"))
            .header("authorization", &auth);
        async move {
            let t = Instant::now();
            let res = req.send().await?;
            if !res.status().is_success() {
                bail!("{path}: {}", res.status());
            }
            res.bytes().await?;
            anyhow::Ok(t.elapsed())
        }
    };

    // Latency, one at a time, interleaving the machine read and the baseline.
    let mut get_machine = Samples::new("get machine");
    let mut baseline = Samples::new("baseline: GET /v1/platform/regions");
    for i in 0..2000 {
        let id = &ids[i % ids.len()];
        get_machine.push(get(format!("/v1/apps/{APP}/machines/{id}")).await?);
        baseline.push(get("/v1/platform/regions".to_string()).await?);
    }
    let mut list = Samples::new("list 1,000 machines");
    let mut list_summary = Samples::new("list 1,000 machines (summary)");
    for _ in 0..30 {
        list.push(get(format!("/v1/apps/{APP}/machines")).await?);
        list_summary.push(get(format!("/v1/apps/{APP}/machines?summary=true")).await?);
    }

    // Throughput over 64 connections, each looping for a fixed time.
    let rps = |path_of: Arc<dyn Fn(usize) -> String + Send + Sync>| {
        let client = client.clone();
        let url = url.clone();
        let auth = auth.clone();
        async move {
            let done = Arc::new(AtomicU64::new(0));
            let until = Instant::now() + Duration::from_secs(5);
            let workers: Vec<_> = (0..CONNECTIONS)
                .map(|w| {
                    let (client, url, auth, done, path_of) = (
                        client.clone(),
                        url.clone(),
                        auth.clone(),
                        done.clone(),
                        path_of.clone(),
                    );
                    tokio::spawn(async move {
                        let mut n = w;
                        while Instant::now() < until {
                            let res = client
                                .get(format!("{url}{}", path_of(n)))
                                .header("authorization", &auth)
                                .send()
                                .await;
                            if let Ok(r) = res {
                                if r.status().is_success() && r.bytes().await.is_ok() {
                                    done.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            n += CONNECTIONS;
                        }
                    })
                })
                .collect();
            let t = Instant::now();
            for w in workers {
                let _ = w.await;
            }
            done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
        }
    };
    let ids = Arc::new(ids);
    let machine_paths = {
        let ids = ids.clone();
        Arc::new(move |n: usize| format!("/v1/apps/{APP}/machines/{}", ids[n % ids.len()]))
            as Arc<dyn Fn(usize) -> String + Send + Sync>
    };
    let baseline_paths = Arc::new(|_| "/v1/platform/regions".to_string())
        as Arc<dyn Fn(usize) -> String + Send + Sync>;
    let rps_machine = rps(machine_paths).await;
    let rps_baseline = rps(baseline_paths).await;

    println!("\nAPI with {MACHINES} machines in the store (release build, same host)");
    println!(
        "{:<36} {:>5} {:>10} {:>10} {:>10} {:>12}",
        "operation", "runs", "median", "p99", "target", "vs baseline"
    );
    let row = |s: &Samples, target: &str| {
        let ratio = s.median().as_secs_f64() / baseline.median().as_secs_f64().max(f64::EPSILON);
        println!(
            "{:<36} {:>5} {:>10} {:>10} {:>10} {:>11.2}x",
            s.name,
            s.len(),
            ms(s.median()),
            ms(s.percentile(0.99)),
            target,
            ratio
        );
    };
    row(&get_machine, "p99 < 5 ms");
    row(&list, "< 50 ms");
    row(&list_summary, "");
    row(&baseline, "");
    println!(
        "\nget machine at {CONNECTIONS} connections: {rps_machine:.0} req/s; baseline: {rps_baseline:.0} req/s ({:.2}x)",
        rps_machine / rps_baseline.max(1.0)
    );
    Ok(())
}

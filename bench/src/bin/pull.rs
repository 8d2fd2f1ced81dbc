//! `bench/pull`: pull and unpack a 200 MB, 10-layer image from a loopback registry, beside
//! `skopeo copy` to an OCI layout plus `umoci unpack` of the same image (the baseline).
//!
//! Measures, over N runs each (default 5, or the first argument), interleaved so that drift on
//! a noisy machine hits every variant alike:
//! - Hangar cold, layers downloaded in parallel and unpacked as they stream (a fresh store);
//! - Hangar cold, one layer at a time (`max_parallel_downloads = 1`);
//! - Hangar warm: the same reference again on a store that has it (what a second machine
//!   create from the image costs: one manifest HEAD, no blob);
//! - baseline: `skopeo copy docker://… oci:DIR` then `umoci unpack`.
//!
//! The image is generated here: 10 gzip layers of 20 MB each (files of text-like and random
//! data, so they compress about as real layers do). Needs root, docker-registry, skopeo and
//! umoci (Debian packages).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use hangar_bench::{report, Samples};
use hangar_image::{ImageStore, StoreOptions};
use hangar_testkit::image::{Compression, ImageBuilder, Layer};
use hangar_testkit::registry::Registry;

const LAYERS: usize = 10;
const LAYER_BYTES: usize = 20_000_000;
const FILES_PER_LAYER: usize = 20;

/// Bytes that compress to roughly half: alternating runs of words and of noise.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let words: &[&[u8]] = &[
        b"machine ",
        b"image ",
        b"layer ",
        b"start ",
        b"stop ",
        b"fly ",
        b"hangar ",
        b"\n",
    ];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        let v = next();
        if v % 2 == 0 {
            for _ in 0..64 {
                out.extend_from_slice(words[(next() % words.len() as u64) as usize]);
            }
        } else {
            for _ in 0..32 {
                out.extend_from_slice(&next().to_le_bytes());
            }
        }
    }
    out.truncate(len);
    out
}

fn image() -> ImageBuilder {
    let mut b = ImageBuilder::new().cmd(&["/bin/true"]);
    for l in 0..LAYERS {
        let mut layer = Layer::new().dir(&format!("data/{l}"), 0o755);
        for f in 0..FILES_PER_LAYER {
            layer = layer.file(
                &format!("data/{l}/file-{f}"),
                content((l * 1000 + f) as u64, LAYER_BYTES / FILES_PER_LAYER),
                0o644,
            );
        }
        b = b.layer(layer.compression(Compression::Gzip));
    }
    b
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn baseline(reference: &str, dir: &Path) -> anyhow::Result<()> {
    let layout = dir.join("oci");
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{reference}"),
        &format!("oci:{}:bench", layout.display()),
    ]))?;
    run(Command::new("umoci").args([
        "unpack",
        "--image",
        &format!("{}:bench", layout.display()),
        &dir.join("bundle").display().to_string(),
    ]))
}

async fn pull(reference: &str, parallel: usize) -> anyhow::Result<(tempfile::TempDir, ImageStore)> {
    let dir = tempfile::Builder::new()
        .prefix("bench-pull")
        .tempdir_in("/var/tmp")?;
    let store = ImageStore::open(
        dir.path().join("store"),
        StoreOptions {
            max_parallel_downloads: parallel,
            ..StoreOptions::default()
        },
    )?;
    let image = store.pull(reference).await?;
    if image.layers.len() != LAYERS {
        bail!("pulled {} layers, expected {LAYERS}", image.layers.len());
    }
    Ok((dir, store))
}

fn seconds(s: &Samples) -> f64 {
    s.median().as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(5);
    for tool in ["skopeo", "umoci"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("{tool} is missing: apt-get install skopeo umoci");
        }
    }
    let registry = Registry::start();
    let started = Instant::now();
    let built = image();
    let blobs = built.build();
    let compressed: usize = blobs.layers.iter().map(|l| l.bytes.len()).sum();
    built.push_async(&registry, "bench:1").await;
    let reference = format!("{}/bench:1", registry.host());
    let total_mb = (LAYERS * LAYER_BYTES) as f64 / 1e6;
    println!(
        "image: {LAYERS} gzip layers, {total_mb:.0} MB unpacked, {:.0} MB compressed (generated and pushed in {:.1} s)",
        compressed as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    let mut parallel = Samples::new("hangar cold, parallel layers");
    let mut sequential = Samples::new("hangar cold, one layer at a time");
    let mut warm = Samples::new("hangar warm (image cached)");
    let mut base = Samples::new("baseline: skopeo copy + umoci unpack");
    for i in 0..runs {
        let t = Instant::now();
        let (dir, store) = pull(&reference, 0).await?;
        parallel.push(t.elapsed());
        let t = Instant::now();
        store.pull(&reference).await?;
        warm.push(t.elapsed());
        drop((store, dir));

        let t = Instant::now();
        let (dir, store) = pull(&reference, 1).await?;
        sequential.push(t.elapsed());
        drop((store, dir));

        let dir = tempfile::Builder::new()
            .prefix("bench-umoci")
            .tempdir_in("/var/tmp")?;
        let t = Instant::now();
        baseline(&reference, dir.path())?;
        base.push(t.elapsed());
        drop(dir);
        eprintln!("run {}/{runs} done", i + 1);
    }

    report(
        &format!("bench/pull: {total_mb:.0} MB, {LAYERS} layers, {runs} runs each"),
        &[&parallel, &sequential, &warm],
        &base,
    );
    println!();
    for s in [&parallel, &sequential, &base] {
        println!(
            "{:<40} {:>7.2} s  {:>7.1} MB/s",
            s.name,
            seconds(s),
            total_mb / seconds(s)
        );
    }
    println!(
        "speed-up over the baseline: {:.2}x (parallel), {:.2}x (one at a time); parallel vs one at a time: {:.2}x",
        seconds(&base) / seconds(&parallel),
        seconds(&base) / seconds(&sequential),
        seconds(&sequential) / seconds(&parallel)
    );
    Ok(())
}

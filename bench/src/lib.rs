//! Shared by the benchmarks: timing samples and reporting them beside a baseline.

use std::time::{Duration, Instant};

/// Durations of repeated runs of one operation.
#[derive(Default, Clone)]
pub struct Samples {
    pub name: String,
    times: Vec<Duration>,
}

impl Samples {
    pub fn new(name: &str) -> Samples {
        Samples {
            name: name.to_string(),
            times: Vec::new(),
        }
    }

    pub fn push(&mut self, d: Duration) {
        self.times.push(d);
    }

    /// Times one run of `f` and records it.
    pub fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.push(t.elapsed());
        out
    }

    pub fn len(&self) -> usize {
        self.times.len()
    }

    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }

    fn sorted(&self) -> Vec<Duration> {
        let mut v = self.times.clone();
        v.sort();
        v
    }

    /// The value below which `p` (0..=1) of the samples fall (nearest rank).
    pub fn percentile(&self, p: f64) -> Duration {
        let v = self.sorted();
        if v.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    }

    pub fn median(&self) -> Duration {
        let v = self.sorted();
        match v.len() {
            0 => Duration::ZERO,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2,
        }
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Prints a table of samples: runs, median, p95, and each one's median over the baseline's.
pub fn report(title: &str, rows: &[&Samples], baseline: &Samples) {
    println!("\n{title}");
    println!(
        "{:<34} {:>5} {:>11} {:>11} {:>14}",
        "operation", "runs", "median", "p95", "vs baseline"
    );
    for s in rows.iter().copied().chain(std::iter::once(baseline)) {
        let ratio = s.median().as_secs_f64() / baseline.median().as_secs_f64().max(f64::EPSILON);
        println!(
            "{:<34} {:>5} {:>11} {:>11} {:>13.2}x",
            s.name,
            s.len(),
            ms(s.median()),
            ms(s.percentile(0.95)),
            ratio
        );
    }
}

/// What every API benchmark starts from: a release `hangar server`, a loopback registry
/// serving a busybox image as `bench:1`, and an app named `app`.
pub struct Bench {
    pub registry: hangar_testkit::registry::Registry,
    pub server: hangar_testkit::server::TestServer,
    /// The image reference on the registry.
    pub image: String,
    /// The release `hangar` binary.
    pub bin: std::path::PathBuf,
}

impl Bench {
    pub fn start(app: &str) -> anyhow::Result<Bench> {
        Bench::start_with(app, &[])
    }

    /// As [`Bench::start`], with extra `hangar server` arguments.
    pub fn start_with(app: &str, server_args: &[&str]) -> anyhow::Result<Bench> {
        use anyhow::Context;
        let root = hangar_testkit::init::workspace_root();
        let bin = root.join("target/release/hangar");
        if !bin.is_file() {
            anyhow::bail!("{} is missing: run `make build` first", bin.display());
        }
        let registry = hangar_testkit::registry::Registry::start();
        hangar_testkit::image::ImageBuilder::busybox().push(&registry, "bench:1");
        let image = format!("{}/bench:1", registry.host());
        let server = hangar_testkit::server::TestServer::start_with(
            bin.to_str().context("utf-8 path")?,
            server_args,
        );
        server.create_app(app);
        Ok(Bench {
            registry,
            server,
            image,
            bin,
        })
    }
}

/// The number of runs: the first argument, else `default`.
pub fn runs_arg(default: usize) -> anyhow::Result<usize> {
    Ok(std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(default))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics() {
        let mut s = Samples::new("x");
        for ms in [5u64, 1, 4, 2, 3] {
            s.push(Duration::from_millis(ms));
        }
        assert_eq!(s.median(), Duration::from_millis(3));
        assert_eq!(s.percentile(0.95), Duration::from_millis(5));
        assert_eq!(s.percentile(0.2), Duration::from_millis(1));
        s.push(Duration::from_millis(6));
        assert_eq!(s.median(), Duration::from_micros(3500));
    }
}

//! What every integration test starts from: a real registry on loopback serving a busybox
//! image the test built itself, and a real `hangar server`.
#![allow(dead_code)]

pub mod net;

use std::process::{Command, Output};
use std::time::Duration;

use hangar_testkit::image::ImageBuilder;
use hangar_testkit::registry::Registry;
use hangar_testkit::server::TestServer;
use serde_json::{json, Value};

pub struct World {
    pub registry: Registry,
    pub server: TestServer,
    /// `HOST:PORT/busybox:latest` on the test's registry.
    pub image: String,
}

pub const APP: &str = "test-app";

impl World {
    pub fn new() -> World {
        World::with_server_args(&[])
    }

    /// A world whose server gets extra command-line arguments.
    pub fn with_server_args(args: &[&str]) -> World {
        let registry = Registry::start();
        ImageBuilder::busybox()
            .env("FROM_IMAGE", "yes")
            .push(&registry, "busybox:latest");
        let image = format!("{}/busybox:latest", registry.host());
        let server = TestServer::start_with(env!("CARGO_BIN_EXE_hangar"), args);
        server.create_app(APP);
        World {
            registry,
            server,
            image,
        }
    }

    /// A started machine running `script` with `sh -c`, plus any extra config.
    pub fn run(&self, script: &str, extra: Value) -> String {
        let id = self.create(script, extra, false);
        self.server.wait_state(APP, &id, "started");
        id
    }

    pub fn create(&self, script: &str, extra: Value, skip_launch: bool) -> String {
        let mut config = json!({ "image": self.image, "init": { "cmd": ["sh", "-c", script] } });
        merge(&mut config, extra);
        let m = self
            .server
            .create_machine(APP, json!({ "config": config, "skip_launch": skip_launch }));
        m["id"].as_str().expect("machine id").to_string()
    }

    pub fn machine(&self, id: &str) -> Value {
        self.server
            .get(&format!("/v1/apps/{APP}/machines/{id}"))
            .body
    }

    pub fn exec(&self, id: &str, argv: &[&str]) -> Value {
        let r = self.server.post(
            &format!("/v1/apps/{APP}/machines/{id}/exec"),
            json!({ "command": argv }),
        );
        assert_eq!(r.status, 200, "exec {argv:?}: {r:?}");
        r.body
    }

    /// Runs a shell snippet in the machine and returns its stdout, asserting exit 0.
    pub fn sh(&self, id: &str, script: &str) -> String {
        let out = self.exec(id, &["sh", "-c", script]);
        assert_eq!(out["exit_code"], 0, "{script}: {out}");
        out["stdout"].as_str().unwrap_or_default().to_string()
    }

    /// Runs a shell snippet until it exits 0 with some output (for at most a minute) and
    /// returns that output:
    /// for what the main process does after the machine is reported started.
    pub fn wait_sh(&self, id: &str, script: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.exec(id, &["sh", "-c", script]);
            let stdout = out["stdout"].as_str().unwrap_or_default();
            // A file being written can be read while still empty: wait for its content too.
            if out["exit_code"] == 0 && !stdout.is_empty() {
                return stdout.to_string();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{script} kept failing: {out}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&self, id: &str, body: Value) {
        let r = self
            .server
            .post(&format!("/v1/apps/{APP}/machines/{id}/stop"), body);
        assert_eq!(r.status, 200, "stop: {r:?}");
    }

    pub fn start(&self, id: &str) {
        let r = self
            .server
            .post(&format!("/v1/apps/{APP}/machines/{id}/start"), json!({}));
        assert_eq!(r.status, 200, "start: {r:?}");
    }

    pub fn events(&self, id: &str) -> Vec<Value> {
        let r = self
            .server
            .get(&format!("/v1/apps/{APP}/machines/{id}/events?limit=50"));
        assert_eq!(r.status, 200);
        r.body.as_array().cloned().unwrap_or_default()
    }

    /// Exit events, oldest first.
    pub fn exits(&self, id: &str) -> Vec<Value> {
        let mut exits: Vec<Value> = self
            .events(id)
            .into_iter()
            .filter(|e| e["type"] == "exit")
            .collect();
        exits.reverse();
        exits
    }

    pub fn wait_until(&self, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        self.server
            .wait_until(APP, id, Duration::from_secs(60), what, check)
    }

    pub fn assert_no_leftovers(&self, id: &str) {
        let left = self.server.leftovers(id);
        assert!(
            left.is_empty(),
            "machine {id} left things behind: {left:#?}"
        );
    }
}

/// The `hangar` CLI against `server`, with nothing from the test's own environment that would
/// change what it does.
pub fn hangar(server: &TestServer, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(args)
        .env("HANGAR_API_URL", server.url())
        .env("HANGAR_API_TOKEN", server.token())
        .env_remove("HANGAR_APP")
        .env_remove("HANGAR_REGISTRY_AUTH")
        .output()
        .expect("hangar runs")
}

/// As [`hangar`], which must succeed; its stdout.
pub fn hangar_ok(server: &TestServer, args: &[&str]) -> String {
    let out = hangar(server, args);
    assert!(
        out.status.success(),
        "hangar {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

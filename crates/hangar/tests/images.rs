//! The image store through a real `hangar server`: many machines from one new image, layers
//! with whiteouts seen from inside a running machine, the `/v1/images...` extension endpoints
//! and `hangar image ...`, and collection past `--image-store-max-gb`.

mod common;

use std::collections::HashSet;
use std::process::Command;

use common::{hangar, hangar_ok, World, APP};
use hangar_testkit::image::{Compression, ImageBuilder, Layer};
use hangar_testkit::registry::Registry;
use hangar_testkit::server::TestServer;
use serde_json::{json, Value};

fn references(server: &TestServer) -> Vec<String> {
    let mut v: Vec<String> = server
        .get("/v1/images")
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["reference"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn twenty_machines_from_one_new_image_pull_it_once_and_see_its_whiteouts() {
    let w = World::new();
    let image = ImageBuilder::busybox()
        .layer(
            Layer::new()
                .file("etc/motd", "old\n", 0o644)
                .dir("data", 0o755)
                .file("data/stale", "s", 0o644),
        )
        .layer(
            Layer::new()
                .whiteout("etc/motd")
                .opaque("data")
                .file("data/fresh", "f", 0o644)
                .compression(Compression::Zstd),
        );
    image.push(&w.registry, "layered:1");
    let layers: HashSet<String> = image
        .build()
        .layers
        .iter()
        .map(|l| l.digest.clone())
        .collect();
    let reference = format!("{}/layered:1", w.registry.host());
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|_| {
                let (server, reference) = (&w.server, reference.clone());
                s.spawn(move || {
                    let r = server.post(
                        &format!("/v1/apps/{APP}/machines"),
                        json!({ "config": { "image": reference, "init": { "cmd": ["sleep", "1000"] } } }),
                    );
                    assert_eq!(r.status, 200, "{r:?}");
                    r.body["id"].as_str().unwrap().to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let fetches: Vec<String> = w
        .registry
        .blob_fetches()
        .into_iter()
        .filter(|d| layers.contains(d))
        .collect();
    assert_eq!(
        fetches.len(),
        layers.len(),
        "each layer downloaded once for 20 machines: {fetches:?}"
    );
    for id in &ids {
        w.server.wait_state(APP, id, "started");
    }
    assert_eq!(
        w.sh(&ids[7], "test ! -e /etc/motd && ls /data"),
        "fresh\n",
        "the whiteout and the opaque directory hold inside the machine"
    );
}

#[test]
fn image_endpoints_and_commands() {
    let w = World::new();
    let h = w.registry.host();
    ImageBuilder::busybox()
        .label("role", "keep")
        .push(&w.registry, "keep:1");
    ImageBuilder::busybox()
        .layer(Layer::new().file("x", "x", 0o644))
        .push(&w.registry, "drop:1");
    let keep = format!("{h}/keep:1");
    let drop = format!("{h}/drop:1");

    // Pull over REST and with the CLI.
    let r = w.server.post("/v1/images/pull", json!({ "image": keep }));
    assert_eq!(r.status, 200, "{r:?}");
    let keep_digest = r.body["digest"].as_str().unwrap().to_string();
    assert!(hangar_ok(&w.server, &["image", "pull", &drop]).contains("Pulled"));
    let listed = hangar_ok(&w.server, &["image", "ls"]);
    assert!(listed.contains(&keep) && listed.contains(&drop), "{listed}");

    // Inspect: config, layers, sizes.
    let r = w.server.get(&format!("/v1/images/inspect?ref={drop}"));
    assert_eq!(r.status, 200, "{r:?}");
    let layers = r.body["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    assert!(layers
        .iter()
        .all(|l| l["diff_id"].as_str().unwrap().starts_with("sha256:")
            && l["compressed_size"].as_i64().unwrap() > 0));
    assert_eq!(layers[1]["size"], 1);
    assert_eq!(r.body["references"], json!([drop]));
    let cli: Value =
        serde_json::from_str(&hangar_ok(&w.server, &["image", "inspect", &keep])).unwrap();
    assert_eq!(cli["digest"], keep_digest.as_str());
    assert_eq!(cli["config"]["config"]["Labels"]["role"], "keep");

    // A machine (stopped, even) keeps its image.
    let id = w.server.create_machine(
        APP,
        json!({ "config": { "image": keep, "init": { "cmd": ["sleep", "1000"] } } }),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    w.server.wait_state(APP, &id, "started");
    w.stop(&id, json!({}));
    w.server.wait_state(APP, &id, "stopped");
    let r = w.server.delete(&format!("/v1/images?ref={keep}"));
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.error().contains("machine"), "{r:?}");
    let out = hangar(&w.server, &["image", "rm", &keep]);
    assert!(!out.status.success());

    // Prune takes what no machine uses; busybox stays, keep's image uses it.
    let r = w.server.post("/v1/images/prune", json!({}));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["references"], json!([drop]));
    assert_eq!(r.body["layers"], 1);
    assert_eq!(references(&w.server), std::slice::from_ref(&keep));
    assert!(hangar_ok(&w.server, &["image", "prune"]).contains("Removed 0 image(s)"));
    let again = w
        .server
        .post(&format!("/v1/apps/{APP}/machines/{id}/start"), json!({}));
    assert_eq!(
        again.status, 200,
        "the stopped machine starts again: {again:?}"
    );
    w.server.wait_state(APP, &id, "started");

    // Bad input.
    assert_eq!(
        w.server
            .delete(&format!("/v1/images?ref={h}/nope:1"))
            .status,
        404
    );
    assert_eq!(w.server.delete("/v1/images?ref=Not%20A%20Ref").status, 400);
    assert_eq!(w.server.delete("/v1/images").status, 400);
    assert_eq!(w.server.get("/v1/images/inspect?ref=nope:1").status, 404);
    let r = w.server.post(
        "/v1/images/pull",
        json!({ "image": format!("{h}/keep:missing") }),
    );
    assert_eq!(r.status, 422, "{r:?}");
    assert!(r.error().contains(&h), "{r:?}");
    assert_eq!(
        w.server
            .post("/v1/images/pull", json!({ "imag": "x" }))
            .status,
        400
    );

    // A registry that wants credentials: refused naming it without, pulled with them.
    let private = Registry::start_with_auth();
    let (user, pass) = private.credentials().unwrap();
    ImageBuilder::busybox().push(&private, "secret:1");
    let secret = format!("{}/secret:1", private.host());
    let r = w.server.post("/v1/images/pull", json!({ "image": secret }));
    assert_eq!(r.status, 422, "{r:?}");
    assert!(
        r.error().contains(&private.host()) && r.error().contains("denied"),
        "{r:?}"
    );
    let r = w.server.post(
        "/v1/images/pull",
        json!({ "image": secret, "auth": { "username": user, "password": pass } }),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["image", "pull", &secret])
        .env("HANGAR_API_URL", w.server.url())
        .env("HANGAR_API_TOKEN", w.server.token())
        .env("HANGAR_REGISTRY_AUTH", format!("{user}:{pass}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Once its machine is gone, the image can go.
    let r = w
        .server
        .delete(&format!("/v1/apps/{APP}/machines/{id}?force=true"));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(hangar_ok(&w.server, &["image", "rm", &keep]).contains("Removed"));
    assert_eq!(references(&w.server), [secret]);
}

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn past_image_store_max_gb_the_least_recently_used_unused_image_goes() {
    let registry = Registry::start();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        ImageBuilder::new()
            .layer(Layer::new().file("data", noise(7 + i as u64, 1_500_000), 0o644))
            .push(&registry, &format!("{name}:1"));
    }
    let server = TestServer::start_with(
        env!("CARGO_BIN_EXE_hangar"),
        &[
            "--image-store-max-gb",
            "0.004",
            "--image-gc-grace-secs",
            "0",
        ],
    );
    let h = registry.host();
    for name in ["a", "b", "c"] {
        let r = server.post(
            "/v1/images/pull",
            json!({ "image": format!("{h}/{name}:1") }),
        );
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(
        references(&server),
        [format!("{h}/b:1"), format!("{h}/c:1")]
    );
}

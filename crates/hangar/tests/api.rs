//! The API's contract: auth, shapes, and bad input answered with a clear 4xx that leaves
//! nothing behind.

mod common;

use common::{World, APP};
use serde_json::{json, Value};

fn machine_count(w: &World) -> usize {
    w.server
        .get(&format!("/v1/apps/{APP}/machines?include_deleted=true"))
        .body
        .as_array()
        .map(Vec::len)
        .unwrap_or(usize::MAX)
}

/// Creating with `config` must fail with `status` and an error naming `mentions`, and leave
/// no machine, mount or container behind.
fn refused(w: &World, config: Value, status: u16, mentions: &str) {
    let before = machine_count(w);
    let r = w.server.post(
        &format!("/v1/apps/{APP}/machines"),
        json!({ "config": config }),
    );
    assert_eq!(r.status, status, "{config} → {r:?}");
    assert!(
        r.error().contains(mentions),
        "error {:?} should mention {mentions:?}",
        r.error()
    );
    assert_eq!(machine_count(w), before, "a refused create left a machine");
    assert!(
        w.server.all_leftovers().is_empty(),
        "{:?}",
        w.server.all_leftovers()
    );
}

#[test]
fn auth_is_required_in_every_form_fly_clients_use() {
    let w = World::new();
    let path = "/v1/apps?org_slug=personal";
    assert_eq!(w.server.raw("GET", path, &[], b"").status, 401);
    let r = w
        .server
        .raw("GET", path, &[("authorization", "Bearer wrong")], b"");
    assert_eq!(r.status, 401);
    assert!(r.body["error"].is_string(), "401 has a JSON error: {r:?}");
    let t = w.server.token().to_string();
    for header in [
        format!("Bearer {t}"),
        format!("FlyV1 {t}"),
        format!("Bearer FlyV1 {t}"),
        format!("FlyV1 fm2_other,{t}"),
    ] {
        assert_eq!(
            w.server
                .raw("GET", path, &[("authorization", &header)], b"")
                .status,
            200,
            "{header}"
        );
    }
    assert_eq!(
        w.server
            .raw("GET", path, &[("authorization", &t)], b"")
            .status,
        401,
        "a bare token has no scheme"
    );
}

#[test]
fn apps_crud_and_shapes() {
    let w = World::new();
    let app = w.server.get(&format!("/v1/apps/{APP}")).body;
    assert_eq!(app["name"], APP);
    assert_eq!(app["organization"]["slug"], "personal");
    assert_eq!(app["machine_count"], 0);
    let list = w.server.get("/v1/apps?org_slug=personal").body;
    assert_eq!(list["total_apps"], 1);
    let taken = w
        .server
        .post("/v1/apps", json!({ "name": APP, "org_slug": "personal" }));
    assert_eq!(taken.status, 422);
    assert_eq!(taken.body["status"], "name_taken");
    for bad in ["my app", "UPPER", "-dash", ""] {
        let r = w.server.post("/v1/apps", json!({ "name": bad }));
        assert_eq!(r.status, 400, "{bad:?}: {r:?}");
    }
    assert_eq!(w.server.get("/v1/apps/nope").status, 404);
    // Deleting an app destroys its machines, running or not.
    w.server.create_app("doomed");
    let m = w.server.create_machine(
        "doomed",
        json!({ "config": { "image": w.image, "init": { "cmd": ["sleep", "1000"] } } }),
    );
    let id = m["id"].as_str().unwrap();
    w.server.wait_state("doomed", id, "started");
    assert_eq!(w.server.delete("/v1/apps/doomed").status, 202);
    assert_eq!(w.server.get("/v1/apps/doomed").status, 404);
    assert!(
        w.server.leftovers(id).is_empty(),
        "{:?}",
        w.server.leftovers(id)
    );
}

#[test]
fn machine_shape_matches_fly() {
    let w = World::new();
    let id = w.run("sleep 1000", json!({ "guest": { "cpu_kind": "shared", "cpus": 2, "memory_mb": 512 }, "metadata": { "team": "a" } }));
    let m = w.machine(&id);
    assert_eq!(m["id"].as_str().unwrap().len(), 14);
    assert_eq!(m["instance_id"].as_str().unwrap().len(), 26);
    assert_eq!(m["version"], m["instance_id"]);
    assert_eq!(m["region"], "local");
    assert_eq!(m["host_status"], "ok");
    assert_eq!(m["config"]["guest"]["memory_mb"], 512);
    assert_eq!(m["config"]["metadata"]["team"], "a");
    assert!(m["image_ref"]["digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert_eq!(m["image_ref"]["repository"], "busybox");
    assert!(m["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(m["events"].as_array().is_some_and(|e| !e.is_empty()));
    // The guest's size is the machine's cgroup limit (v1 or v2, whichever the host has).
    let limit = ["/sys/fs/cgroup/memory/hangar", "/sys/fs/cgroup/hangar"]
        .iter()
        .find_map(|base| {
            let dir = std::path::Path::new(base).join(&id);
            std::fs::read_to_string(dir.join("memory.limit_in_bytes"))
                .or_else(|_| std::fs::read_to_string(dir.join("memory.max")))
                .ok()
        })
        .expect("the machine has a memory cgroup");
    assert_eq!(limit.trim(), (512u64 << 20).to_string());
    let listed = w
        .server
        .get(&format!("/v1/apps/{APP}/machines?summary=true"))
        .body;
    assert_eq!(listed[0]["id"], id.as_str());
    let filtered = w
        .server
        .get(&format!("/v1/apps/{APP}/machines?state=stopped"))
        .body;
    assert_eq!(filtered.as_array().map(Vec::len), Some(0));
}

#[test]
fn bad_machine_configs_are_refused_with_their_field() {
    let w = World::new();
    let img = w.image.clone();
    refused(
        &w,
        json!({ "image": img, "guest": { "cpus": 1, "memory_mb": 3 } }),
        400,
        "memory_mb",
    );
    refused(
        &w,
        json!({ "image": img, "guest": { "cpus": 0, "memory_mb": 256 } }),
        400,
        "cpus",
    );
    refused(
        &w,
        json!({ "image": img, "guest": { "cpus": "two" } }),
        400,
        "config.guest.cpus",
    );
    refused(
        &w,
        json!({ "image": img, "env": { "A": 1 } }),
        400,
        "config.env",
    );
    refused(
        &w,
        json!({ "image": img, "restart": { "policy": "sometimes" } }),
        400,
        "config.restart.policy",
    );
    refused(
        &w,
        json!({ "image": img, "stop_config": { "timeout": "soon" } }),
        400,
        "config.stop_config.timeout",
    );
    refused(&w, json!({ "image": "" }), 400, "image");
    refused(
        &w,
        json!({ "image": "Not A Reference!!" }),
        400,
        "Not A Reference",
    );
    refused(
        &w,
        json!({ "image": format!("{}/does-not-exist:latest", w.registry.host()) }),
        422,
        "does-not-exist",
    );
    refused(
        &w,
        json!({ "image": format!("{}/busybox:no-such-tag", w.registry.host()) }),
        422,
        "no-such-tag",
    );
}

#[test]
fn malformed_requests_get_400_not_500() {
    let w = World::new();
    let auth = format!("Bearer {}", w.server.token());
    let h = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let path = format!("/v1/apps/{APP}/machines");
    for body in [
        &b"{not json"[..],
        b"",
        b"[]",
        b"{\"config\": 5}",
        b"{\"name\": 5, \"config\": {\"image\": \"x\"}}",
    ] {
        let r = w.server.raw("POST", &path, &h, body);
        assert_eq!(r.status, 400, "{:?} → {r:?}", String::from_utf8_lossy(body));
        assert!(
            r.body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{r:?}"
        );
    }
    let r = w.server.raw(
        "POST",
        &path,
        &h,
        b"{\"config\": {\"image\": \"x\", \"guest\": {\"memory_mb\": \"lots\"}}}",
    );
    assert!(r.error().contains("config.guest.memory_mb"), "{r:?}");
    assert_eq!(machine_count(&w), 0);
    assert_eq!(w.server.get("/v1/nowhere").status, 404);
    assert_eq!(w.server.raw("PUT", "/v1/apps", &h, b"").status, 405);
}

#[test]
fn unknown_apps_and_machines_are_404() {
    let w = World::new();
    assert_eq!(w.server.get("/v1/apps/ghost/machines").status, 404);
    let r = w.server.post(
        "/v1/apps/ghost/machines",
        json!({ "config": { "image": w.image } }),
    );
    assert_eq!(r.status, 404, "{r:?}");
    for (method, suffix) in [
        ("GET", ""),
        ("POST", "/start"),
        ("POST", "/stop"),
        ("GET", "/wait"),
        ("GET", "/events"),
        ("DELETE", ""),
    ] {
        let r = w.server.request(
            method,
            &format!("/v1/apps/{APP}/machines/0123456789abcd{suffix}"),
            None,
        );
        assert_eq!(r.status, 404, "{method} {suffix}: {r:?}");
    }
    // A machine of another app is not found through this one.
    w.server.create_app("other");
    let m = w.server.create_machine(
        "other",
        json!({ "config": { "image": w.image, "init": { "cmd": ["true"] } }, "skip_launch": true }),
    );
    let r = w.server.get(&format!(
        "/v1/apps/{APP}/machines/{}",
        m["id"].as_str().unwrap()
    ));
    assert_eq!(r.status, 404);
}

#[test]
fn destroyed_machines_cannot_be_started() {
    let w = World::new();
    let id = w.create("true", json!({}), true);
    assert_eq!(
        w.server
            .delete(&format!("/v1/apps/{APP}/machines/{id}"))
            .status,
        200
    );
    let r = w
        .server
        .post(&format!("/v1/apps/{APP}/machines/{id}/start"), json!({}));
    assert_eq!(r.status, 412, "{r:?}");
    assert!(r.error().contains("destroyed"), "{r:?}");
    let r = w.server.delete(&format!("/v1/apps/{APP}/machines/{id}"));
    assert_eq!(r.status, 412, "{r:?}");
    let r = w.server.post(
        &format!("/v1/apps/{APP}/machines/{id}/exec"),
        json!({ "command": ["true"] }),
    );
    assert_eq!(r.status, 412, "{r:?}");
}

#[test]
fn wait_validates_and_times_out_with_408() {
    let w = World::new();
    let id = w.create("sleep 1000", json!({}), true);
    let base = format!("/v1/apps/{APP}/machines/{id}/wait");
    assert_eq!(
        w.server
            .get(&format!("{base}?state=started&timeout=1"))
            .status,
        408
    );
    assert_eq!(w.server.get(&format!("{base}?state=sideways")).status, 400);
    assert_eq!(
        w.server
            .get(&format!("{base}?state=started&timeout=61"))
            .status,
        400
    );
    assert_eq!(
        w.server
            .get(&format!("{base}?state=started&timeout=0"))
            .status,
        400
    );
    assert_eq!(
        w.server
            .get(&format!("{base}?state=started&timeout=abc"))
            .status,
        400
    );
    let r = w
        .server
        .get(&format!("{base}?state=started&state=created&timeout=5"));
    assert_eq!(r.status, 400, "created cannot be waited for: {r:?}");
    let settled = w.server.get(&format!("{base}?state=settled&timeout=5"));
    assert_eq!(settled.status, 200, "{settled:?}");
    assert_eq!(settled.body["state"], "created");
    w.start(&id);
    let r = w
        .server
        .get(&format!("{base}?state=started,stopped&timeout=30"));
    assert_eq!(r.status, 400, "stopped needs the version: {r:?}");
    let version = w.machine(&id)["instance_id"].as_str().unwrap().to_string();
    let r = w.server.get(&format!(
        "{base}?state=started,stopped&version={version}&timeout=30"
    ));
    assert_eq!(r.status, 200);
    assert_eq!(r.body["ok"], true);
    assert_eq!(r.body["state"], "started");
}

#[test]
fn exec_bad_input() {
    let w = World::new();
    let id = w.run("sleep 1000", json!({}));
    let path = format!("/v1/apps/{APP}/machines/{id}/exec");
    assert_eq!(w.server.post(&path, json!({})).status, 400);
    assert_eq!(w.server.post(&path, json!({ "command": [] })).status, 400);
    assert_eq!(
        w.server.post(&path, json!({ "command": "ls" })).status,
        400,
        "command is an array"
    );
    // fly-go's older string form works.
    let r = w.server.post(&path, json!({ "cmd": "echo 'two words'" }));
    assert_eq!(r.status, 200);
    assert_eq!(r.body["stdout"], "two words\n");
    let r = w
        .server
        .post(&path, json!({ "command": ["sleep", "30"], "timeout": 1 }));
    assert_eq!(r.status, 408, "{r:?}");
    let r = w
        .server
        .post(&path, json!({ "command": ["cat"], "stdin": "piped in" }));
    assert_eq!(r.body["stdout"], "piped in");
}

#[test]
fn stop_bad_input() {
    let w = World::new();
    let id = w.run("sleep 1000", json!({}));
    let path = format!("/v1/apps/{APP}/machines/{id}/stop");
    assert_eq!(
        w.server.post(&path, json!({ "signal": "SIGNOPE" })).status,
        400
    );
    assert_eq!(
        w.server.post(&path, json!({ "timeout": "forever" })).status,
        400
    );
    assert_eq!(
        w.machine(&id)["state"],
        "started",
        "a refused stop changes nothing"
    );
    // fly-go sends numbers for signals.
    assert_eq!(w.server.post(&path, json!({ "signal": 9 })).status, 200);
    w.server.wait_state(APP, &id, "stopped");
}

#[test]
fn a_registry_that_is_down_gets_502_and_leaves_nothing() {
    let mut w = World::new();
    let img = format!("{}/never-pulled:latest", w.registry.host());
    w.registry.stop();
    let before = machine_count(&w);
    let r = w.server.post(
        &format!("/v1/apps/{APP}/machines"),
        json!({ "config": { "image": img } }),
    );
    assert!(r.status == 502 || r.status == 503, "{r:?}");
    assert!(
        r.error().contains(&w.registry.host()),
        "names the registry: {r:?}"
    );
    assert_eq!(machine_count(&w), before);
}

#[test]
fn a_registry_answering_garbage_gets_502() {
    let w = World::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            use std::io::{Read, Write};
            let mut s = stream;
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\nnot a thing");
        }
    });
    let r = w.server.post(
        &format!("/v1/apps/{APP}/machines"),
        json!({ "config": { "image": format!("{addr}/junk:latest") } }),
    );
    assert!(r.status == 502 || r.status == 422, "{r:?}");
    assert!(r.status != 500);
    assert_eq!(machine_count(&w), 0);
}

#[test]
fn concurrent_creates_of_one_image_all_succeed() {
    let w = World::new();
    hangar_testkit::image::ImageBuilder::busybox()
        .env("FRESH", "1")
        .push(&w.registry, "fresh:1");
    let img = format!("{}/fresh:1", w.registry.host());
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let img = img.clone();
                let server = &w.server;
                s.spawn(move || {
                    let r = server.post(
                        &format!("/v1/apps/{APP}/machines"),
                        json!({ "config": { "image": img, "init": { "cmd": ["sleep", "1000"] } } }),
                    );
                    assert_eq!(r.status, 200, "{r:?}");
                    r.body["id"].as_str().unwrap().to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let digests: std::collections::HashSet<String> = ids
        .iter()
        .map(|id| {
            w.machine(id)["image_ref"]["digest"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(digests.len(), 1);
    for id in &ids {
        w.server.wait_state(APP, id, "started");
    }
    let images = w.server.get("/v1/images").body;
    let fresh: Vec<_> = images
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["reference"].as_str().unwrap().contains("fresh"))
        .collect();
    assert_eq!(fresh.len(), 1, "{images}");
}

#[test]
fn image_import_over_the_api() {
    let w = World::new();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("img.tar");
    hangar_testkit::image::ImageBuilder::busybox()
        .env("IMPORTED", "yes")
        .write_docker_archive(&archive, "imported:v1");
    let auth = format!("Bearer {}", w.server.token());
    let bytes = std::fs::read(&archive).unwrap();
    let r = w.server.raw(
        "POST",
        "/v1/images/import?ref=imported:v1",
        &[("authorization", &auth)],
        &bytes,
    );
    assert_eq!(r.status, 201, "{r:?}");
    let id = w.server.create_machine(
        APP,
        json!({ "config": { "image": "imported:v1", "init": { "cmd": ["sleep", "100"] } } }),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    w.server.wait_state(APP, &id, "started");
    assert_eq!(w.sh(&id, "echo $IMPORTED"), "yes\n");
    let r = w.server.raw(
        "POST",
        "/v1/images/import",
        &[("authorization", &auth)],
        b"this is not a tarball",
    );
    assert!((400..500).contains(&r.status), "{r:?}");
}

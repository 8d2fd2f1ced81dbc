//! Machines API parity: every machine endpoint of Fly's spec, exercised against real machines
//! (the update really changes the process's environment, the suspended process really stops
//! advancing, the scheduled machine really starts, the failing check really fails).

mod common;

use std::time::Duration;

use common::{World, APP};
use serde_json::{json, Value};

fn path(id: &str, rest: &str) -> String {
    format!("/v1/apps/{APP}/machines/{id}{rest}")
}

fn version(w: &World, id: &str) -> String {
    w.machine(id)["instance_id"].as_str().unwrap().to_string()
}

/// Waits for `state` of a given version.
fn wait_version(w: &World, id: &str, state: &str, v: &str) -> Value {
    let r = w.server.get(&path(
        id,
        &format!("/wait?state={state}&version={v}&timeout=60"),
    ));
    assert_eq!(r.status, 200, "wait {state} {v}: {r:?}\n{}", w.server.log());
    r.body
}

#[test]
fn update_replaces_the_version_and_the_running_environment() {
    let w = World::new();
    let id = w.run("sleep 1000", json!({ "env": { "GREETING": "one" } }));
    let v1 = version(&w, &id);
    assert_eq!(w.sh(&id, "echo $GREETING"), "one\n");

    let config = json!({ "image": w.image, "init": { "cmd": ["sh", "-c", "sleep 1000"] },
                         "env": { "GREETING": "two" }, "metadata": { "team": "core" } });
    // A stale current_version is refused and changes nothing.
    let r = w.server.post(
        &path(&id, ""),
        json!({ "config": config, "current_version": "01STALE" }),
    );
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.error().contains("current_version"), "{r:?}");
    assert_eq!(version(&w, &id), v1);

    let r = w.server.post(
        &path(&id, ""),
        json!({ "config": config, "current_version": v1 }),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let v2 = r.body["instance_id"].as_str().unwrap().to_string();
    assert_ne!(v1, v2, "an update makes a new version");
    wait_version(&w, &id, "started", &v2);
    assert_eq!(w.sh(&id, "echo $GREETING"), "two\n");
    assert_eq!(w.sh(&id, "echo $FLY_MACHINE_VERSION"), format!("{v2}\n"));
    assert_eq!(w.machine(&id)["config"]["metadata"]["team"], "core");

    // The old version is replaced: waiting on it says so.
    let r = w
        .server
        .get(&path(&id, &format!("/wait?state=started&version={v1}")));
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.error().contains("replaced"), "{r:?}");

    let versions = w.server.get(&path(&id, "/versions")).body;
    let listed: Vec<&str> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [v2.as_str(), v1.as_str()], "newest first");
    assert_eq!(versions[1]["user_config"]["env"]["GREETING"], "one");

    // The old process was stopped on request, and the event log says so.
    let exits = w.exits(&id);
    assert_eq!(exits.len(), 1, "{exits:?}");
    assert_eq!(exits[0]["request"]["exit_event"]["requested_stop"], true);

    // skip_launch on a stopped machine records the version and leaves it stopped.
    w.stop(&id, json!({}));
    wait_version(&w, &id, "stopped", &v2);
    let mut c3 = config.clone();
    c3["env"]["GREETING"] = json!("three");
    let r = w
        .server
        .post(&path(&id, ""), json!({ "config": c3, "skip_launch": true }));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["state"], "stopped");
    let v3 = r.body["instance_id"].as_str().unwrap().to_string();
    w.start(&id);
    wait_version(&w, &id, "started", &v3);
    assert_eq!(w.sh(&id, "echo $GREETING"), "three\n");

    // Bad input: a config that does not validate names the field and changes nothing.
    let mut bad = config.clone();
    bad["guest"] = json!({ "cpu_kind": "shared", "cpus": 3, "memory_mb": 256 });
    let r = w.server.post(&path(&id, ""), json!({ "config": bad }));
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.error().contains("cpus"), "{r:?}");
    assert_eq!(version(&w, &id), v3);
}

#[test]
fn suspend_freezes_the_process_and_start_resumes_it() {
    let w = World::new();
    let id = w.run(
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done",
        json!({}),
    );
    w.wait_until(&id, "the counter to run", |_| {
        w.sh(&id, "cat /tmp/count 2>/dev/null || echo 0")
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
            > 3
    });
    let pid_before = w.sh(&id, "pidof sh | tr ' ' '\\n' | sort -n | head -1");

    let r = w.server.post(&path(&id, "/suspend"), json!({}));
    assert_eq!(r.status, 200, "{r:?}");
    w.server.wait_state(APP, &id, "suspended");
    assert_eq!(w.machine(&id)["state"], "suspended");
    // Exec needs a running machine; a frozen one is refused clearly.
    let r = w
        .server
        .post(&path(&id, "/exec"), json!({ "command": ["true"] }));
    assert_eq!(r.status, 412, "{r:?}");

    // Resumed, not rebooted: the same process, its files kept (a reboot would be blank).
    w.start(&id);
    w.server.wait_state(APP, &id, "started");
    let after_resume: u64 = w.sh(&id, "cat /tmp/count").trim().parse().unwrap();
    let pid_after = w.sh(&id, "pidof sh | tr ' ' '\\n' | sort -n | head -1");
    assert_eq!(pid_before, pid_after, "the same process resumed, no reboot");
    std::thread::sleep(Duration::from_millis(500));
    let later: u64 = w.sh(&id, "cat /tmp/count").trim().parse().unwrap();
    assert!(
        later > after_resume,
        "the counter advances again: {after_resume} → {later}"
    );
    let events: Vec<String> = w
        .events(&id)
        .iter()
        .map(|e| format!("{}:{}", e["type"], e["status"]))
        .collect();
    assert!(
        events.iter().any(|e| e == "\"suspend\":\"suspended\""),
        "{events:?}"
    );

    // A suspended machine can be stopped and destroyed like a stopped one.
    let r = w.server.post(&path(&id, "/suspend"), json!({}));
    assert_eq!(r.status, 200);
    w.server.wait_state(APP, &id, "suspended");
    assert_eq!(w.server.delete(&path(&id, "")).status, 200);
    w.server.wait_state(APP, &id, "destroyed");
    w.assert_no_leftovers(&id);
}

#[test]
fn suspended_counter_does_not_advance() {
    let w = World::new();
    // The process prints a tick to its log (the host's file) every 100 ms.
    let id = w.run("while true; do echo tick; sleep 0.1; done", json!({}));
    let log = w.server.data_dir().join("logs").join(format!("{id}.log"));
    let ticks = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("tick")
            .count()
    };
    w.wait_until(&id, "ticks", |_| ticks() > 3);
    assert_eq!(w.server.post(&path(&id, "/suspend"), json!({})).status, 200);
    w.server.wait_state(APP, &id, "suspended");
    let frozen = ticks();
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        ticks(),
        frozen,
        "a suspended machine's process does not run"
    );
    w.start(&id);
    w.server.wait_state(APP, &id, "started");
    w.wait_until(&id, "ticks after resume", |_| ticks() > frozen + 2);
}

#[test]
fn restart_signal_and_ps() {
    let w = World::new();
    let id = w.run(
        "trap 'echo got >> /tmp/sig' USR1; touch /tmp/marker; while true; do sleep 0.1; done",
        json!({}),
    );
    // fly-go sends the number, the spec a name: both work. (One at a time: two of the same
    // signal sent together may arrive as one.)
    for (n, sig) in [json!(10), json!("SIGUSR1")].into_iter().enumerate() {
        let r = w
            .server
            .post(&path(&id, "/signal"), json!({ "signal": sig }));
        assert_eq!(r.status, 200, "{sig}: {r:?}");
        w.wait_until(&id, "the signal's trap", |_| {
            w.sh(&id, "cat /tmp/sig 2>/dev/null | wc -l").trim() == (n + 1).to_string()
        });
    }
    let r = w
        .server
        .post(&path(&id, "/signal"), json!({ "signal": "SIGNOPE" }));
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.error().contains("signal"), "{r:?}");

    let ps = w.server.get(&path(&id, "/ps?sort_by=pid&order=desc"));
    assert_eq!(ps.status, 200, "{ps:?}");
    let procs = ps.body.as_array().unwrap();
    assert!(
        procs
            .iter()
            .any(|p| p["command"].as_str().unwrap().contains("sh")),
        "{procs:?}"
    );
    let pids: Vec<i64> = procs.iter().map(|p| p["pid"].as_i64().unwrap()).collect();
    let mut sorted = pids.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(pids, sorted, "descending by pid");
    assert!(procs
        .iter()
        .all(|p| p["rss"].as_u64().is_some() && p["directory"].is_string()));
    assert_eq!(w.server.get(&path(&id, "/ps?sort_by=colour")).status, 400);

    // Restart: the old process gets the signal, then a fresh boot (blank slate).
    let v = version(&w, &id);
    let r = w
        .server
        .post(&path(&id, "/restart?signal=SIGTERM&timeout=2s"), json!({}));
    assert_eq!(r.status, 200, "{r:?}");
    w.wait_until(&id, "the restart", |m| {
        m["state"] == "started" && w.exits(&id).len() == 1
    });
    assert_eq!(version(&w, &id), v, "a restart keeps the version");
    w.wait_until(&id, "the new boot's marker", |_| {
        w.sh(&id, "ls /tmp").contains("marker")
    });
    assert_eq!(w.sh(&id, "cat /tmp/sig 2>/dev/null | wc -l").trim(), "0");
    let exit = &w.exits(&id)[0]["request"]["exit_event"];
    assert_eq!(exit["requested_stop"], true);

    // force_stop (fly-go) kills without the grace period.
    let r = w
        .server
        .post(&path(&id, "/restart?force_stop=true"), json!({}));
    assert_eq!(r.status, 200, "{r:?}");
    w.wait_until(&id, "the forced restart", |m| {
        m["state"] == "started" && w.exits(&id).len() == 2
    });
    assert_eq!(w.exits(&id)[1]["request"]["exit_event"]["signal"], 9);

    // A stopped machine is started, not restarted.
    w.stop(&id, json!({}));
    w.server.wait_state(APP, &id, "stopped");
    let r = w.server.post(&path(&id, "/restart"), json!({}));
    assert_eq!(r.status, 412, "{r:?}");
    assert_eq!(w.server.get(&path(&id, "/ps")).status, 412);
}

#[test]
fn leases_guard_mutations_like_fly() {
    let w = World::new();
    let id = w.run("sleep 1000", json!({}));
    // fly-go: TTL as a query parameter, no body; the answer is wrapped.
    let r = w
        .server
        .request_with("POST", &path(&id, "/lease?ttl=60"), &[], None);
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["status"], "success");
    let nonce = r.body["data"]["nonce"].as_str().unwrap().to_string();
    assert_eq!(r.body["data"]["version"], json!(version(&w, &id)));
    let expires = r.body["data"]["expires_at"].as_i64().unwrap();
    assert!(expires > 1_700_000_000, "unix seconds: {expires}");

    let shown = w.server.get(&path(&id, "/lease"));
    assert_eq!(shown.status, 200);
    assert_eq!(shown.body["data"]["nonce"], json!(nonce));

    // Mutations without the nonce are refused; nothing changes.
    let r = w.server.post(&path(&id, "/stop"), json!({}));
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.error().contains("lease"), "{r:?}");
    assert_eq!(w.machine(&id)["state"], "started");
    let wrong = [("fly-machine-lease-nonce", "000000000000")];
    assert_eq!(
        w.server
            .request_with("POST", &path(&id, "/cordon"), &wrong, None)
            .status,
        409
    );
    // Someone else cannot take it.
    let r = w.server.request_with(
        "POST",
        &path(&id, "/lease"),
        &[],
        Some(json!({ "ttl": 30 })),
    );
    assert_eq!(r.status, 409, "{r:?}");

    // The holder can: refresh keeps the nonce, mutations pass.
    let held = [("fly-machine-lease-nonce", nonce.as_str())];
    let r = w.server.request_with(
        "POST",
        &path(&id, "/lease"),
        &held,
        Some(json!({ "ttl": 90 })),
    );
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["data"]["nonce"], json!(nonce));
    let r = w
        .server
        .request_with("POST", &path(&id, "/cordon"), &held, None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(w.machine(&id)["cordoned"], true);
    let r = w
        .server
        .request_with("POST", &path(&id, "/uncordon"), &held, None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(w.machine(&id)["cordoned"], false);

    // Release needs the nonce; then mutations need none.
    assert_eq!(w.server.delete(&path(&id, "/lease")).status, 400);
    let r = w
        .server
        .request_with("DELETE", &path(&id, "/lease"), &held, None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["data"]["ok"], true);
    assert_eq!(w.server.get(&path(&id, "/lease")).status, 404);

    // An expired lease stops counting by itself.
    let r = w
        .server
        .request_with("POST", &path(&id, "/lease?ttl=1"), &[], None);
    assert_eq!(r.status, 201);
    std::thread::sleep(Duration::from_millis(1500));
    let r = w.server.post(&path(&id, "/stop"), json!({}));
    assert_eq!(r.status, 200, "an expired lease does not block: {r:?}");

    // A machine created with lease_ttl comes back holding the lease.
    let m = w.server.create_machine(
        APP,
        json!({ "config": { "image": w.image, "init": { "cmd": ["sleep", "100"] } },
                "lease_ttl": 60, "skip_launch": true }),
    );
    let nonce = m["nonce"].as_str().expect("nonce on create with lease_ttl");
    let id2 = m["id"].as_str().unwrap();
    assert_eq!(w.server.post(&path(id2, "/start"), json!({})).status, 409);
    let held = [("fly-machine-lease-nonce", nonce)];
    let r = w
        .server
        .request_with("POST", &path(id2, "/start"), &held, None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        w.server
            .request_with("POST", &path(id2, "/lease?ttl=0"), &held, None)
            .status,
        400,
        "ttl 0 is refused"
    );
}

#[test]
fn metadata_endpoints_and_preconditions() {
    let w = World::new();
    let id = w.create("sleep 1000", json!({ "metadata": { "a": "1" } }), true);
    let v = version(&w, &id);
    assert_eq!(
        w.server.get(&path(&id, "/metadata")).body,
        json!({ "a": "1" })
    );

    let r = w.server.request(
        "PATCH",
        &path(&id, "/metadata"),
        Some(json!({ "metadata": { "b": "2", "a": null }, "machine_version": v })),
    );
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(
        w.server.get(&path(&id, "/metadata")).body,
        json!({ "b": "2" })
    );

    // A stale machine_version is 412 and changes nothing.
    let r = w.server.request(
        "PUT",
        &path(&id, "/metadata"),
        Some(json!({ "metadata": { "c": "3" }, "machine_version": "01OLD" })),
    );
    assert_eq!(r.status, 412, "{r:?}");
    assert!(r.error().contains("machine_version"), "{r:?}");
    assert_eq!(
        w.server.get(&path(&id, "/metadata")).body,
        json!({ "b": "2" })
    );

    let r = w.server.request(
        "PUT",
        &path(&id, "/metadata"),
        Some(json!({ "metadata": { "c": "3" } })),
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        w.server.get(&path(&id, "/metadata")).body,
        json!({ "c": "3" })
    );

    let r = w
        .server
        .post(&path(&id, "/metadata/role"), json!({ "value": "web" }));
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(
        w.server.get(&path(&id, "/metadata/role")).body["value"],
        "web"
    );
    assert_eq!(w.machine(&id)["config"]["metadata"]["role"], "web");
    assert_eq!(version(&w, &id), v, "metadata changes make no new version");
    assert_eq!(w.server.delete(&path(&id, "/metadata/role")).status, 204);
    assert_eq!(w.server.get(&path(&id, "/metadata/role")).status, 404);
    assert_eq!(w.server.delete(&path(&id, "/metadata/role")).status, 404);

    let long = "k".repeat(300);
    let r = w.server.post(
        &path(&id, &format!("/metadata/{long}")),
        json!({ "value": "x" }),
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.error().contains("metadata"), "{r:?}");
    let r = w.server.request(
        "PATCH",
        &path(&id, "/metadata"),
        Some(json!({ "metadata": 5 })),
    );
    assert_eq!(r.status, 400);
    assert!(r.error().contains("metadata"), "{r:?}");
    assert_eq!(
        w.server.get(&path(&id, "/metadata")).body,
        json!({ "c": "3" })
    );
}

#[test]
fn secrets_are_sealed_listed_by_digest_and_injected() {
    let w = World::new();
    let r = w.server.post(
        &format!("/v1/apps/{APP}/secrets/DB_PASSWORD"),
        json!({ "value": "hunter2-secret" }),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let v1 = r.body["version"].as_u64().unwrap();
    let r = w.server.post(
        &format!("/v1/apps/{APP}/secrets"),
        json!({ "values": { "API_KEY": "k-123", "TO_DROP": "x" } }),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let r = w.server.post(
        &format!("/v1/apps/{APP}/secrets"),
        json!({ "values": { "TO_DROP": null } }),
    );
    let v3 = r.body["version"].as_u64().unwrap();
    assert!(v3 > v1);

    let list = w.server.get(&format!("/v1/apps/{APP}/secrets"));
    assert_eq!(list.status, 200);
    let names: Vec<&str> = list.body["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["API_KEY", "DB_PASSWORD"]);
    assert!(
        !list.body.to_string().contains("hunter2"),
        "values never listed"
    );
    assert_eq!(
        w.server
            .get(&format!("/v1/apps/{APP}/secrets?show_secrets=true"))
            .status,
        400
    );
    assert_eq!(
        w.server
            .get(&format!("/v1/apps/{APP}/secrets?min_version={}", v3 + 5))
            .status,
        412
    );

    // At rest: the key is owner-only and the database holds no plaintext.
    use std::os::unix::fs::PermissionsExt;
    let key = w.server.data_dir().join("secrets.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    for entry in std::fs::read_dir(w.server.data_dir()).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("state.db")
        {
            let bytes = std::fs::read(&p).unwrap();
            assert!(
                !bytes.windows(7).any(|x| x == b"hunter2"),
                "plaintext in {}",
                p.display()
            );
        }
    }

    let id = w.run(
        "sleep 1000",
        json!({ "files": [{ "guest_path": "/run/db-password", "secret_name": "DB_PASSWORD", "mode": 256 }],
                "env": { "API_KEY": "plain" } }),
    );
    assert_eq!(
        w.sh(&id, "echo $DB_PASSWORD $API_KEY"),
        "hunter2-secret k-123\n"
    );
    assert_eq!(w.sh(&id, "cat /run/db-password"), "hunter2-secret");
    assert_eq!(w.sh(&id, "stat -c %a /run/db-password"), "400\n");

    // Bad input is refused and leaves the secrets as they were.
    let r = w.server.post(
        &format!("/v1/apps/{APP}/secrets/9BAD-NAME"),
        json!({ "value": "x" }),
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.error().contains("9BAD-NAME"), "{r:?}");
    let r = w.server.post(
        &format!("/v1/apps/{APP}/machines"),
        json!({ "config": { "image": w.image, "files": [{ "guest_path": "/x", "secret_name": "MISSING" }] } }),
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.error().contains("MISSING"), "{r:?}");
    let r = w.server.delete(&format!("/v1/apps/{APP}/secrets/API_KEY"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        w.server
            .delete(&format!("/v1/apps/{APP}/secrets/API_KEY"))
            .status,
        404
    );
}

#[test]
fn checks_run_inside_and_report_results() {
    let w = World::new();
    let id = w.run(
        "mkdir -p /www && echo ok > /www/index.html && httpd -f -p 8080 -h /www",
        json!({ "checks": {
            "alive": { "type": "tcp", "port": 8080, "interval": "1s", "timeout": "2s" },
            "home": { "type": "http", "port": 8080, "path": "/", "interval": "1s" },
            "broken": { "type": "http", "port": 8080, "path": "/missing", "interval": "1s" },
            "closed": { "type": "tcp", "port": 9, "interval": "1s" }
        } }),
    );
    let m = w.wait_until(&id, "every check to have run", |m| {
        m["checks"]
            .as_array()
            .is_some_and(|c| c.len() == 4 && c.iter().all(|c| c["status"] != "warning"))
    });
    let status = |name: &str| {
        m["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["status"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(status("alive"), "passing", "{m}");
    assert_eq!(status("home"), "passing", "{m}");
    assert_eq!(status("broken"), "critical", "{m}");
    assert_eq!(status("closed"), "critical", "{m}");

    // Checks belong to a running machine: stopped, it has none.
    w.stop(&id, json!({}));
    w.server.wait_state(APP, &id, "stopped");
    let checks = w.machine(&id)["checks"].clone();
    assert!(checks.as_array().is_none_or(Vec::is_empty), "{checks}");
}

#[test]
fn scheduled_machines_start_on_their_schedule() {
    // An "hour" of 1.5 s so the test sees the schedule fire.
    let w = World::with_server_args(&["--schedule-hour-ms", "1500"]);
    let id = w.create("echo ran", json!({ "schedule": "hourly" }), false);
    w.wait_until(&id, "the scheduled runs", |_| w.exits(&id).len() >= 3);
    let starts = w
        .events(&id)
        .iter()
        .filter(|e| e["type"] == "start" && e["status"] == "starting")
        .count();
    assert!(
        starts >= 3,
        "started by the schedule, not by a user: {starts}"
    );
}

/// The host pid of a sandbox machine's init, found by its cgroup.
fn init_pid(machine_id: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let cgroup = std::fs::read_to_string(e.path().join("cgroup")).ok()?;
        (cmdline.starts_with(b"/.hangar/init") && cgroup.contains(machine_id)).then_some(pid)
    })
}

#[test]
fn standbys_start_when_their_machine_is_lost() {
    let w = World::new();
    let primary = w.run("sleep 1000", json!({ "restart": { "policy": "no" } }));
    let standby = w.create("sleep 1000", json!({ "standbys": [primary] }), true);
    assert_eq!(w.machine(&standby)["config"]["standbys"], json!([primary]));

    // A clean exit is not a failure: the standby stays down.
    let other = w.run("exit 3", json!({ "restart": { "policy": "no" } }));
    w.server.wait_state(APP, &other, "stopped");
    assert_eq!(w.machine(&standby)["state"], "created");

    // The primary's machine dies under it (its init killed from the host): the standby
    // takes over.
    let pid = init_pid(&primary).expect("the primary's init on the host");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    w.server.wait_state(APP, &standby, "started");
    let exit = &w.exits(&primary)[0]["request"]["exit_event"];
    assert!(
        exit["guest_error"]
            .as_str()
            .unwrap_or_default()
            .contains("lost"),
        "{exit}"
    );
}

#[test]
fn wait_semantics_follow_the_spec() {
    let w = World::new();
    let id = w.run("sleep 1000", json!({}));
    let v = version(&w, &id);
    // stopped needs the version; invalid states and timeouts are 400.
    let r = w.server.get(&path(&id, "/wait?state=stopped"));
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.error().contains("version"), "{r:?}");
    assert_eq!(w.server.get(&path(&id, "/wait?state=starting")).status, 400);
    assert_eq!(
        w.server
            .get(&path(&id, "/wait?state=started&timeout=61"))
            .status,
        400
    );
    assert_eq!(
        w.server
            .get(&path(&id, "/wait?state=started&timeout=soon"))
            .status,
        400
    );
    let r = w
        .server
        .get(&path(&id, "/wait?state=stopped&version=01NOPE"));
    assert_eq!(r.status, 400, "{r:?}");
    // 408 when the state is not reached in time.
    let r = w.server.get(&path(
        &id,
        &format!("/wait?state=stopped&version={v}&timeout=1"),
    ));
    assert_eq!(r.status, 408, "{r:?}");

    // from_event_id: only a state reached after that event counts.
    let last = w.events(&id)[0]["id"].as_str().unwrap().to_string();
    let r = w.server.get(&path(
        &id,
        &format!("/wait?state=started&from_event_id={last}&timeout=1"),
    ));
    assert_eq!(r.status, 408, "already started before the event: {r:?}");
    w.stop(&id, json!({}));
    let r = w.server.get(&path(
        &id,
        &format!("/wait?state=stopped,started&version={v}&from_event_id={last}"),
    ));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["state"], "stopped");
    assert_eq!(r.body["version"], json!(v));
    assert!(r.body["event_id"].is_string());
    // settled: any non-transient state.
    let r = w.server.get(&path(&id, "/wait?state=settled"));
    assert_eq!(r.body["state"], "stopped", "{r:?}");
}

#[test]
fn org_list_regions_openapi_and_unsupported_operations() {
    let w = World::new();
    let ids: Vec<String> = (0..3)
        .map(|_| w.create("sleep 1", json!({}), true))
        .collect();
    let all = w.server.get("/v1/orgs/personal/machines?summary=true");
    assert_eq!(all.status, 200, "{all:?}");
    assert_eq!(all.body["machines"].as_array().unwrap().len(), 3);
    assert!(
        all.body["machines"][0].get("config").is_none(),
        "summary omits config"
    );
    assert_eq!(all.body["machines"][0]["app_name"], APP);

    // Paging with the cursor visits every machine once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/v1/orgs/personal/machines?limit=2&cursor={c}"),
            None => "/v1/orgs/personal/machines?limit=2".to_string(),
        };
        let page = w.server.get(&q).body;
        for m in page["machines"].as_array().unwrap() {
            seen.push(m["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    seen.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(seen, want);
    assert_eq!(
        w.server
            .get("/v1/orgs/personal/machines?cursor=garbage")
            .status,
        400
    );
    assert_eq!(
        w.server
            .get("/v1/orgs/personal/machines?updated_after=yesterday")
            .status,
        400
    );
    let none = w
        .server
        .get("/v1/orgs/personal/machines?updated_after=2999-01-01T00:00:00Z");
    assert_eq!(none.body["machines"], json!([]));
    let filtered = w.server.get("/v1/orgs/personal/machines?state=started");
    assert_eq!(filtered.body["machines"], json!([]));

    let regions = w.server.get("/v1/platform/regions");
    assert_eq!(regions.status, 200);
    assert_eq!(regions.body["regions"][0]["code"], "local");
    assert_eq!(regions.body["nearest"], "local");

    let doc = w.server.get("/v1/openapi.json");
    assert_eq!(doc.status, 200);
    assert_eq!(
        doc.body["paths"]["/images"]["get"]["x-hangar-extension"],
        true
    );
    assert!(doc.body["paths"]["/apps/{app_name}/machines/{machine_id}/lease"].is_object());

    for (method, p) in [
        ("GET", format!("/v1/apps/{APP}/certificates")),
        ("POST", format!("/v1/apps/{APP}/ip_assignments")),
        ("GET", format!("/v1/apps/{APP}/volumes/vol_123")),
        ("POST", "/v1/tokens/kms".to_string()),
        ("GET", format!("/v1/apps/{APP}/machines/{}/memory", ids[0])),
        ("POST", "/v1/platform/placements".to_string()),
    ] {
        let r = w.server.request(method, &p, None);
        assert_eq!(r.status, 404, "{method} {p}: {r:?}");
        assert_eq!(r.error(), "not supported by this installation", "{p}");
    }
}

#[test]
fn capacity_refusals_say_insufficient_capacity() {
    let w = World::with_server_args(&["--memory-capacity-mb", "512"]);
    let a = w.run(
        "sleep 1000",
        json!({ "guest": { "cpu_kind": "shared", "cpus": 1, "memory_mb": 256 } }),
    );
    let r = w.server.post(
        &format!("/v1/apps/{APP}/machines"),
        json!({ "config": { "image": w.image, "init": { "cmd": ["sleep", "1000"] },
                            "guest": { "cpu_kind": "shared", "cpus": 1, "memory_mb": 512 } } }),
    );
    assert_eq!(r.status, 412, "{r:?}");
    assert_eq!(r.body["status"], "insufficient_capacity", "{r:?}");
    assert_eq!(
        w.server
            .get(&format!("/v1/apps/{APP}/machines"))
            .body
            .as_array()
            .unwrap()
            .len(),
        1,
        "nothing recorded"
    );
    // Once the first machine stops, the memory is free again.
    w.stop(&a, json!({}));
    w.server.wait_state(APP, &a, "stopped");
    let r = w.server.post(
        &format!("/v1/apps/{APP}/machines"),
        json!({ "config": { "image": w.image, "init": { "cmd": ["sleep", "1000"] },
                            "guest": { "cpu_kind": "shared", "cpus": 1, "memory_mb": 512 } } }),
    );
    assert_eq!(r.status, 200, "{r:?}");
    // And the stopped one cannot start beside it.
    let r = w.server.post(&path(&a, "/start"), json!({}));
    assert_eq!(r.status, 412, "{r:?}");
    assert_eq!(r.body["status"], "insufficient_capacity");
}

/// The request sequence of Fly's Go client (fly-go's flaps package), as flyctl sends it for
/// `fly machine update` and `fly machine destroy --force`.
#[test]
fn drives_like_fly_go() {
    let w = World::new();
    // POST /apps?wait=true with fly-go's body, decoding an App.
    let r = w.server.post(
        "/v1/apps?wait=true",
        json!({ "name": "go-app", "org_slug": "personal", "network": "", "app_role_id": "" }),
    );
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["name"], "go-app");
    let m = w.server.create_machine(
        "go-app",
        json!({ "config": { "image": w.image, "init": { "cmd": ["sleep", "1000"] },
                            "guest": { "cpu_kind": "shared", "cpus": 1, "memory_mb": 256 },
                            "restart": { "policy": "on-failure", "max_retries": 3 },
                            "stop_config": { "signal": "SIGTERM", "timeout": "3s" } },
                "region": "local" }),
    );
    for field in [
        "id",
        "name",
        "state",
        "region",
        "instance_id",
        "private_ip",
        "config",
        "image_ref",
        "created_at",
        "updated_at",
        "events",
        "host_status",
    ] {
        assert!(m.get(field).is_some(), "machine JSON lacks {field}: {m}");
    }
    for field in ["registry", "repository", "tag", "digest", "labels"] {
        assert!(
            m["image_ref"].get(field).is_some(),
            "image_ref lacks {field}: {m}"
        );
    }
    assert_eq!(
        m["config"]["stop_config"]["timeout"], "3s",
        "durations render as Go's"
    );
    let launch = m["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "launch")
        .unwrap();
    assert_eq!(
        launch["request"]["layers"], 1,
        "the launch event tells what the pull brought: {launch}"
    );
    assert!(launch["request"]["bytes"].as_u64().unwrap() > 0, "{launch}");
    let id = m["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 14);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    let base = format!("/v1/apps/go-app/machines/{id}");

    // Lease: ?ttl= and no body; nonce read from data.nonce.
    let lease = w
        .server
        .request_with("POST", &format!("{base}/lease?ttl=120"), &[], None);
    assert_eq!(lease.status, 201);
    let nonce = lease.body["data"]["nonce"].as_str().unwrap().to_string();
    let held = [("fly-machine-lease-nonce", nonce.as_str())];

    // Wait loop as fly-go does it: integer timeout, version, repeated state.
    let v1 = m["instance_id"].as_str().unwrap().to_string();
    let wait = |v: &str, states: &str| loop {
        let r = w
            .server
            .get(&format!("{base}/wait?version={v}&timeout=60&{states}"));
        if r.status != 408 {
            return r;
        }
    };
    assert_eq!(wait(&v1, "state=started").status, 200);

    // Update with the nonce and current_version, then wait for the new version.
    let mut config = m["config"].clone();
    config["env"] = json!({ "RELEASE": "2" });
    let r = w.server.request_with(
        "POST",
        &base,
        &held,
        Some(json!({ "config": config, "current_version": v1, "region": "local" })),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let v2 = r.body["instance_id"].as_str().unwrap().to_string();
    let r = wait(&v2, "state=started&state=stopped");
    assert_eq!(r.body["state"], "started", "{r:?}");
    let out = w.server.post(
        &format!("{base}/exec"),
        json!({ "cmd": "sh -c 'echo $RELEASE'" }),
    );
    assert_eq!(out.body["stdout"], "2\n", "{out:?}");

    // Destroy with kill=true (fly-go's spelling of force), holding the lease.
    let r = w
        .server
        .request_with("DELETE", &format!("{base}?kill=true"), &held, None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(wait(&v2, "state=destroyed").body["state"], "destroyed");
    // Releasing afterwards is answered (flyctl ignores a "not found" here).
    let r = w
        .server
        .request_with("DELETE", &format!("{base}/lease"), &held, None);
    assert!(r.status == 200 || r.status == 404, "{r:?}");
    w.assert_no_leftovers(&id);
}

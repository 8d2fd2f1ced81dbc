//! The private network, NAT and static egress IPs (see `common::net` for the world the tests
//! build in network namespaces).

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::process::Command;

use common::net::*;
use common::{World, APP};
use serde_json::json;

#[test]
fn private_network_nat_and_egress_ips() {
    let _internet = build_world();
    let mut w =
        World::with_server_args(&["--private-network", "--egress-ip-pool", "198.51.100.0/30"]);
    let before = snapshot();

    let a1 = w.run("httpd -f -p 8080 -h /etc", json!({}));
    let a2 = w.run("sleep 100000", json!({}));
    let ip1 = private_ip(&w, APP, &a1);
    let ip2 = private_ip(&w, APP, &a2);
    assert_ne!(ip1, ip2);
    // Same organisation: same /48.
    assert_eq!(
        ip1.split(':').take(3).collect::<Vec<_>>(),
        ip2.split(':').take(3).collect::<Vec<_>>()
    );

    // Machine to machine by private IP, and from the host.
    let out = fetch(&w, APP, &a2, &ip1, 8080, "/hosts");
    assert_eq!(out["exit_code"], 0, "{out}");
    assert!(stdout(&out).contains(&ip1), "{out}");
    let body = reqwest::blocking::get(format!("http://[{ip1}]:8080/hosts"))
        .expect("host reaches the machine")
        .text()
        .unwrap();
    assert!(body.contains(&ip1), "{body}");

    // Another organisation cannot reach it.
    let r = w.server.post(
        "/v1/apps",
        json!({ "name": "other-app", "org_slug": "other-org" }),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let b = w.server.create_machine(
        "other-app",
        json!({ "config": { "image": w.image, "init": { "cmd": ["sleep", "100000"] } } }),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    w.server.wait_state("other-app", &b, "started");
    let ipb = private_ip(&w, "other-app", &b);
    assert_ne!(
        ipb.split(':').take(3).collect::<Vec<_>>(),
        ip1.split(':').take(3).collect::<Vec<_>>()
    );
    let out = fetch(&w, "other-app", &b, &ip1, 8080, "/hosts");
    assert_ne!(
        out["exit_code"], 0,
        "another org reached the machine: {out}"
    );
    // The host's own services are off limits.
    let host_service = TcpListener::bind("[::]:0").unwrap();
    let port = host_service.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in host_service.incoming().flatten() {
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nhost");
        }
    });
    let out = fetch(&w, APP, &a2, "fdaa::1", port, "/");
    assert_ne!(out["exit_code"], 0, "a machine reached the host: {out}");

    // Outbound through NAT, with the host's address.
    assert_eq!(seen_from(&w, &a2), "203.0.113.1");

    // Static egress IPs: never shared, kept across stop/start and a server restart.
    let path2 = format!("/v1/apps/{APP}/machines/{a2}/egress_ips");
    let r = w.server.post(&path2, json!({}));
    assert_eq!(r.status, 201, "{r:?}");
    let e2 = r.body["ip"].as_str().unwrap().to_string();
    assert_eq!(seen_from(&w, &a2), e2);
    let r = w.server.post(
        &format!("/v1/apps/{APP}/machines/{a1}/egress_ips"),
        json!({}),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let e1 = r.body["ip"].as_str().unwrap().to_string();
    assert_ne!(e1, e2);
    assert_eq!(seen_from(&w, &a1), e1);
    // The pool (two addresses) is exhausted now.
    let r = w.server.post(
        &format!("/v1/apps/other-app/machines/{b}/egress_ips"),
        json!({}),
    );
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.error().contains("exhausted"), "{r:?}");
    // Releasing an address the machine does not hold.
    let r = w.server.delete(&format!("{path2}/{e1}"));
    assert_eq!(r.status, 404, "{r:?}");
    let r = w.server.delete(&format!("{path2}/not-an-ip"));
    assert_eq!(r.status, 400, "{r:?}");

    w.stop(&a2, json!({}));
    w.server.wait_state(APP, &a2, "stopped");
    w.start(&a2);
    w.server.wait_state(APP, &a2, "started");
    assert_eq!(private_ip(&w, APP, &a2), ip2);
    assert_eq!(seen_from(&w, &a2), e2);

    w.server.restart();
    assert_eq!(private_ip(&w, APP, &a2), ip2);
    assert_eq!(seen_from(&w, &a2), e2);
    let r = w.server.get(&path2);
    assert_eq!(r.status, 200);
    assert_eq!(r.body[0]["ip"], e2.as_str());

    let r = w.server.delete(&format!("{path2}/{e2}"));
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(seen_from(&w, &a2), "203.0.113.1");

    // Destroy leaves nothing behind.
    for (app, id) in [(APP, &a1), (APP, &a2), ("other-app", &b)] {
        let r = w
            .server
            .delete(&format!("/v1/apps/{app}/machines/{id}?force=true"));
        assert_eq!(r.status, 200, "{r:?}");
        w.server.wait_state(app, id, "destroyed");
    }
    let after = snapshot();
    assert_eq!(before.0, after.0, "interfaces left behind");
    assert_eq!(before.1, after.1, "addresses left behind");
    assert_eq!(before.2, after.2, "rules left behind");
}

#[test]
fn an_egress_pool_inside_the_private_network_is_refused() {
    let _internet = build_world();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args([
            "server",
            "--private-network",
            "--egress-ip-pool",
            "fdaa:1::/64",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--token", "t"])
        .arg("--init")
        .arg(hangar_testkit::init::init_binary())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("overlaps the private network"), "{err}");
    // Nothing was set up.
    assert!(!sh("ip -o link show").contains("hangar0"));
    assert!(!sh("nft list ruleset").contains("hangar"));
}

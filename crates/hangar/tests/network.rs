//! The private network, NAT and static egress IPs (see `common::net` for the world the tests
//! build in network namespaces).

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::process::Command;

use common::net::*;
use common::{hangar_ok, World, APP};

use serde_json::json;

#[test]
fn private_network_nat_and_egress_ips() {
    let _internet = build_world();
    let mut w = World::with_server_args(&[
        "--private-network",
        "--egress-ip-pool",
        "198.51.100.0/30",
        "--dns-upstream",
        UPSTREAM_DNS,
        "--allow-dns-server",
        "203.0.113.2",
    ]);
    let before = snapshot();

    let Pair { a1, a2, ip1, ip2 } = talking_pair(&w);

    // Another organisation cannot reach it.
    let b = other_org_machine(&w);
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
    // Internal DNS, answered for the asker's organisation only.
    assert_eq!(
        lookup(&w, APP, &a2, &format!("-type=AAAA {a1}.vm.{APP}.internal")).unwrap(),
        vec![ip1.clone()]
    );
    assert_eq!(
        lookup(&w, APP, &a2, &format!("-type=AAAA local.{APP}.internal"))
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        lookup(
            &w,
            APP,
            &a2,
            &format!("-type=AAAA top1.nearest.of.{APP}.internal")
        )
        .unwrap()
        .len(),
        1
    );
    assert_eq!(
        lookup(&w, APP, &a2, &format!("-type=TXT regions.{APP}.internal")).unwrap(),
        vec!["local".to_string()]
    );
    let vms = lookup(&w, APP, &a2, &format!("-type=TXT vms.{APP}.internal")).unwrap();
    assert!(
        vms.len() == 1 && vms[0].contains(&format!("{a1} local")),
        "{vms:?}"
    );
    assert_eq!(
        lookup(&w, APP, &a2, "-type=TXT _apps.internal").unwrap(),
        vec![APP.to_string()]
    );
    assert_eq!(
        lookup(&w, "other-app", &b, "-type=TXT _apps.internal").unwrap(),
        vec!["other-app".to_string()]
    );
    let err = lookup(&w, "other-app", &b, &format!("-type=AAAA {APP}.internal")).unwrap_err();
    assert!(err.contains("NXDOMAIN"), "{err}");
    // Names outside .internal go to the host's resolvers (here the internet's).
    assert_eq!(
        lookup(&w, APP, &a2, &format!("-type=A {UPSTREAM_NAME}")).unwrap(),
        vec![UPSTREAM_ADDR.to_string()]
    );
    // A machine reaches another by its app's name, and from the host by private IP.
    let out = fetch(
        &w,
        APP,
        &a2,
        &format!("{a1}.vm.{APP}.internal"),
        8080,
        "/hosts",
    );
    assert_eq!(out["exit_code"], 0, "{out}");
    assert!(stdout(&out).contains(&ip1), "{out}");

    // A config naming a resolver the operator did not allow is refused, nothing made.
    let count = |w: &World| {
        w.server
            .get(&format!("/v1/apps/{APP}/machines"))
            .body
            .as_array()
            .unwrap()
            .len()
    };
    let before_count = count(&w);
    let r = w.server.post(
        &format!("/v1/apps/{APP}/machines"),
        json!({ "config": { "image": w.image, "dns": { "nameservers": ["8.8.8.8"] } } }),
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.error().contains("8.8.8.8 is not allowed"), "{r:?}");
    assert_eq!(count(&w), before_count);
    // An allowed one is what the machine's resolv.conf names.
    let c = w.run(
        "sleep 100000",
        json!({ "dns": { "nameservers": ["203.0.113.2"], "searches": ["corp.test"] } }),
    );
    let conf = w.sh(&c, "cat /etc/resolv.conf");
    assert_eq!(conf, "nameserver 203.0.113.2\nsearch corp.test\n");
    assert_eq!(w.sh(&a2, "cat /etc/resolv.conf"), "nameserver fdaa::3\n");
    let r = w
        .server
        .delete(&format!("/v1/apps/{APP}/machines/{c}?force=true"));
    assert_eq!(r.status, 200, "{r:?}");
    w.server.wait_state(APP, &c, "destroyed");

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

    // Outbound through NAT, with the host's address, over IPv4 and IPv6.
    assert_eq!(seen_from(&w, &a2), "203.0.113.1");
    assert_eq!(seen_from6(&w, &a2), "2001:db8::1");

    // Static egress IPs: never shared, kept across stop/start and a server restart.
    let path2 = format!("/v1/apps/{APP}/machines/{a2}/egress_ips");
    let r = w.server.post(&path2, json!({}));
    assert_eq!(r.status, 201, "{r:?}");
    let e2 = r.body["ip"].as_str().unwrap().to_string();
    assert_eq!(seen_from(&w, &a2), e2);
    // The same through the CLI.
    let out = hangar_ok(
        &w.server,
        &["machine", "egress-ip", "allocate", &a1, "-a", APP, "--json"],
    );
    let e1 = serde_json::from_str::<serde_json::Value>(&out).unwrap()["ip"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(e1, e2);
    let listed = hangar_ok(&w.server, &["machine", "egress-ip", "list", "-a", APP]);
    assert!(listed.contains(&e1) && listed.contains(&e2), "{listed}");
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

    // An update (stop, new config, start) keeps both addresses.
    let mut config = w.machine(&a2)["config"].clone();
    config["env"] = json!({ "UPDATED": "1" });
    let r = w.server.post(
        &format!("/v1/apps/{APP}/machines/{a2}"),
        json!({ "config": config }),
    );
    assert_eq!(r.status, 200, "{r:?}");
    w.server.wait_state(APP, &a2, "started");
    assert_eq!(w.sh(&a2, "echo $UPDATED").trim(), "1");
    assert_eq!(private_ip(&w, APP, &a2), ip2);
    assert_eq!(seen_from(&w, &a2), e2);

    assert_eq!(seen_from(&w, &a1), e1);
    w.server.restart();
    assert_eq!(private_ip(&w, APP, &a2), ip2);
    assert_eq!(seen_from(&w, &a2), e2);
    assert_eq!(seen_from(&w, &a1), e1);
    let out = hangar_ok(
        &w.server,
        &["machine", "egress-ip", "release", &a1, "-a", APP, "-y"],
    );
    assert!(out.contains(&e1), "{out}");
    assert_eq!(seen_from(&w, &a1), "203.0.113.1");
    let r = w.server.get(&path2);
    assert_eq!(r.status, 200);
    assert_eq!(r.body[0]["ip"], e2.as_str());

    let r = w.server.delete(&format!("{path2}/{e2}"));
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(seen_from(&w, &a2), "203.0.113.1");

    // A stopped machine leaves the app's DNS answers.
    w.stop(&a1, json!({}));
    w.server.wait_state(APP, &a1, "stopped");
    assert_eq!(
        lookup(&w, APP, &a2, &format!("-type=AAAA {APP}.internal")).unwrap(),
        vec![ip2.clone()]
    );

    // Destroy leaves nothing behind.
    destroy_leaves_nothing(&w, &[(APP, &a1), (APP, &a2), ("other-app", &b)], before);
}

#[test]
fn an_ipv6_egress_ip_is_the_source_of_outbound_ipv6() {
    let _internet = build_world();
    let w = World::with_server_args(&["--private-network", "--egress-ip-pool", "2001:db8:e::/126"]);
    let id = w.run("sleep 100000", json!({}));
    assert_eq!(seen_from6(&w, &id), "2001:db8::1");
    let path = format!("/v1/apps/{APP}/machines/{id}/egress_ips");
    let r = w.server.post(&path, json!({}));
    assert_eq!(r.status, 201, "{r:?}");
    let ip = r.body["ip"].as_str().unwrap().to_string();
    assert!(ip.starts_with("2001:db8:e::"), "{ip}");
    assert_eq!(seen_from6(&w, &id), ip);
    // IPv4 has no pool here: it still leaves with the host's address.
    assert_eq!(seen_from(&w, &id), "203.0.113.1");
    // One address per family: a second allocation has nothing to give.
    let r = w.server.post(&path, json!({}));
    assert_eq!(r.status, 409, "{r:?}");
    let r = w.server.delete(&format!("{path}/{ip}"));
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(seen_from6(&w, &id), "2001:db8::1");
    let r = w
        .server
        .delete(&format!("/v1/apps/{APP}/machines/{id}?force=true"));
    assert_eq!(r.status, 200, "{r:?}");
    w.server.wait_state(APP, &id, "destroyed");
    assert!(!std::path::Path::new(&format!("/run/netns/hangar-{id}")).exists());
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

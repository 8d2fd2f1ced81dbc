//! The private network, NAT and static egress IPs with microVMs: each VM's virtio-net device
//! sits on a tap device on the bridge, and `hangar-init` configures it inside the guest. See
//! `common::net` for the world the tests build in network namespaces, and `network.rs` for the
//! same network with sandboxes (the host's services, every DNS name, bad input).

mod common;

use common::net::*;
use common::{World, APP};
use serde_json::json;

#[test]
fn microvms_reach_each_other_the_internet_and_keep_their_addresses() {
    let _internet = build_world();
    let mut w = World::with_server_args(&[
        "--private-network",
        "--runtime",
        "microvm",
        "--accel",
        "tcg",
        "--egress-ip-pool",
        "198.51.100.0/30",
        // Room for the machine that asks for more memory than the host has.
        "--memory-capacity-mb",
        "100000000",
    ]);
    let before = snapshot();

    let Pair { a1, a2, ip1, ip2 } = talking_pair(&w);

    // Init found the virtio-net device, named it, gave it the machine's addresses and the
    // default routes.
    let out = exec(
        &w,
        APP,
        &a2,
        "readlink /sys/class/net/eth0/device/driver; ip -o addr show dev eth0; ip route; ip -6 route",
    );
    let text = stdout(&out);
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.ends_with("/virtio_net")),
        "{out}"
    );
    assert!(text.contains(&format!("{ip2}/16")), "{out}");
    assert!(text.contains("default via 172.19.0.1"), "{out}");
    assert!(text.contains("default via fdaa::1"), "{out}");

    // The internal DNS, by name.
    let out = fetch(
        &w,
        APP,
        &a2,
        &format!("{a1}.vm.{APP}.internal"),
        8080,
        "/hosts",
    );
    assert_eq!(out["exit_code"], 0, "{out}");

    // A microVM of another organisation reaches neither the machine nor its name.
    let b = other_org_machine(&w);
    let out = fetch(&w, "other-app", &b, &ip1, 8080, "/hosts");
    assert_ne!(
        out["exit_code"], 0,
        "another org reached the machine: {out}"
    );
    assert!(lookup(&w, "other-app", &b, &format!("-type=AAAA {APP}.internal")).is_err());
    let r = w
        .server
        .delete(&format!("/v1/apps/other-app/machines/{b}?force=true"));
    assert_eq!(r.status, 200, "{r:?}");
    w.server.wait_state("other-app", &b, "destroyed");

    // Outbound through NAT, with the host's address; then with an egress IP of its own.
    assert_eq!(seen_from(&w, &a2), "203.0.113.1");
    let path2 = format!("/v1/apps/{APP}/machines/{a2}/egress_ips");
    let r = w.server.post(&path2, json!({}));
    assert_eq!(r.status, 201, "{r:?}");
    let e2 = r.body["ip"].as_str().unwrap().to_string();
    assert!(e2.starts_with("198.51.100."), "{e2}");
    assert_eq!(seen_from(&w, &a2), e2);

    // Stop and start: a new VM, the same addresses.
    w.stop(&a2, json!({}));
    w.server.wait_state(APP, &a2, "stopped");
    w.start(&a2);
    w.server.wait_state(APP, &a2, "started");
    assert_eq!(private_ip(&w, APP, &a2), ip2);
    assert_eq!(seen_from(&w, &a2), e2);

    // A server restart re-attaches to the running VMs, whose taps stayed on the bridge.
    w.server.restart();
    assert_eq!(private_ip(&w, APP, &a2), ip2);
    assert_eq!(seen_from(&w, &a2), e2);

    // Suspend and resume: the tap outlives the suspended QEMU, and the VM's network goes on.
    let r = w
        .server
        .post(&format!("/v1/apps/{APP}/machines/{a1}/suspend"), json!({}));
    assert_eq!(r.status, 200, "{r:?}");
    w.server.wait_state(APP, &a1, "suspended");
    w.start(&a1);
    w.server.wait_state(APP, &a1, "started");
    let out = fetch(&w, APP, &a2, &ip1, 8080, "/hosts");
    assert_eq!(out["exit_code"], 0, "after resume: {out}");
    assert_eq!(seen_from(&w, &a1), "203.0.113.1");

    // A boot that fails after the tap was made (more memory than the host has: the microvm
    // runtime refuses it) leaves no tap.
    let links = snapshot().0;
    let r = w.server.post(
        &format!("/v1/apps/{APP}/machines"),
        json!({ "config": {
            "image": w.image,
            "guest": { "cpu_kind": "performance", "cpus": 16, "memory_mb": 131072 },
            "init": { "cmd": ["sleep", "1000"] },
        } }),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let big = r.body["id"].as_str().unwrap().to_string();
    let m = w.wait_until(&big, "the boot to fail", |m| {
        !["created", "starting"].contains(&m["state"].as_str().unwrap_or(""))
    });
    assert_ne!(m["state"], "started", "{m}");
    assert_eq!(snapshot().0, links, "a failed boot left an interface");

    // Destroy leaves nothing behind: no tap, address or rule.
    destroy_leaves_nothing(&w, &[(APP, &a1), (APP, &a2), (APP, &big)], before);
}

//! The private network, NAT and static egress IPs, in a world of network namespaces that never
//! touches the real host's networking: this test process moves into its own "host" namespace
//! (where the registry and `hangar server` run) joined by a veth pair to an "internet"
//! namespace, where a TCP server answers every connection with the source address it saw.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::process::Command;

use common::{World, APP};
use serde_json::{json, Value};

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Internet {
    ns: String,
}

impl Drop for Internet {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// Moves this thread (and every process and thread it starts from now on) into a new network
/// namespace, and builds the "internet" beside it.
fn build_world() -> Internet {
    // SAFETY: unshare only changes this thread's namespaces; it takes no pointers.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
    let ns = format!("hgtest-inet-{}", std::process::id());
    let inet = Internet { ns: ns.clone() };
    sh(&format!(
        "ip link set lo up && ip netns add {ns} && \
         ip link add up0 type veth peer name wan0 netns {ns} && \
         ip addr add 203.0.113.1/24 dev up0 && ip link set up0 up && \
         ip route add default via 203.0.113.2 && \
         ip -n {ns} link set lo up && ip -n {ns} addr add 203.0.113.2/24 dev wan0 && \
         ip -n {ns} link set wan0 up && ip -n {ns} route add 198.51.100.0/24 via 203.0.113.1"
    ));
    let path = format!("/run/netns/{ns}");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("internet netns");
        // SAFETY: setns on a namespace fd we hold open; it changes only this thread.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let l = TcpListener::bind("203.0.113.2:8000").expect("echo server");
        tx.send(()).unwrap();
        for mut c in l.incoming().flatten() {
            let peer = c
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let mut buf = [0u8; 2048];
            let _ = c.read(&mut buf);
            let _ = write!(
                c,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{peer}",
                peer.len()
            );
        }
    });
    rx.recv().unwrap();
    inet
}

/// What the host's networking looks like: interface names, addresses (not link-local ones,
/// which the kernel adds by itself) and Hangar's rules.
fn snapshot() -> (String, String, String) {
    let links = sh("ip -o link show | awk '{print $2}' | sort");
    let addrs = sh("ip -o addr show | awk '$4 !~ /^fe80/ {print $2, $4}' | sort");
    (links, addrs, sh("nft list ruleset"))
}

fn exec(w: &World, app: &str, id: &str, script: &str) -> Value {
    let r = w.server.post(
        &format!("/v1/apps/{app}/machines/{id}/exec"),
        json!({ "command": ["sh", "-c", script], "timeout": 20 }),
    );
    assert_eq!(r.status, 200, "exec {script}: {r:?}");
    r.body
}

fn stdout(v: &Value) -> String {
    v["stdout"].as_str().unwrap_or_default().trim().to_string()
}

/// An HTTP GET from inside a machine with busybox `nc` (Debian's static busybox `wget` crashes in
/// a root file system without glibc's NSS modules). Returns the exec result; `stdout` holds the
/// response, headers included.
fn fetch(w: &World, app: &str, id: &str, host: &str, port: u16, path: &str) -> Value {
    exec(
        w,
        app,
        id,
        &format!(
            "r=$(printf 'GET {path} HTTP/1.0\r\n\r\n' | nc -w 5 {host} {port}) && [ -n \"$r\" ] && echo \"$r\""
        ),
    )
}

/// What the internet's echo server sees as the machine's source address.
fn seen_from(w: &World, id: &str) -> String {
    let out = fetch(w, APP, id, "203.0.113.2", 8000, "/");
    assert_eq!(out["exit_code"], 0, "{out}");
    stdout(&out).lines().last().unwrap_or_default().to_string()
}

fn private_ip(w: &World, app: &str, id: &str) -> String {
    let m = w.server.get(&format!("/v1/apps/{app}/machines/{id}")).body;
    let ip = m["private_ip"].as_str().unwrap_or_default().to_string();
    assert!(ip.starts_with("fdaa:"), "private_ip {ip:?}");
    ip
}

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

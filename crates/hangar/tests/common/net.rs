//! A world of network namespaces for the network tests, which never touches the real host's
//! networking: the test process moves into its own "host" namespace (where the registry and
//! `hangar server` run) joined by a veth pair to an "internet" namespace, where a TCP server
//! answers every connection with the source address it saw.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::process::Command;

use serde_json::{json, Value};

use super::{World, APP};

pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Internet {
    pub ns: String,
}

impl Drop for Internet {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// Moves this thread (and every process and thread it starts from now on) into a new network
/// namespace, and builds the "internet" beside it.
pub fn build_world() -> Internet {
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
         ip -n {ns} link set wan0 up && ip -n {ns} route add 198.51.100.0/24 via 203.0.113.1 && \
         ip addr add 2001:db8::1/64 dev up0 nodad && ip -6 route add default via 2001:db8::2 && \
         ip -n {ns} addr add 2001:db8::2/64 dev wan0 nodad && \
         ip -n {ns} -6 route add 2001:db8:e::/64 via 2001:db8::1"
    ));
    in_netns(&ns, || {
        let v4 = TcpListener::bind("203.0.113.2:8000").expect("echo server");
        let v6 = TcpListener::bind("[2001:db8::2]:8000").expect("echo server");
        move || {
            std::thread::spawn(move || echo(v6));
            echo(v4);
        }
    });
    in_netns(&ns, || {
        let sock = std::net::UdpSocket::bind(UPSTREAM_DNS).expect("upstream DNS");
        move || upstream_dns(sock)
    });
    inet
}

/// Runs a server on a thread of its own in the named namespace: `bind` makes its sockets
/// there and returns what serves them; this returns once they are bound.
fn in_netns<S: FnOnce() + 'static>(ns: &str, bind: impl FnOnce() -> S + Send + 'static) {
    let path = format!("/run/netns/{ns}");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("internet netns");
        // SAFETY: setns on a namespace fd we hold open; it changes only this thread.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let serve = bind();
        tx.send(()).unwrap();
        serve();
    });
    rx.recv().unwrap();
}

/// Two started machines of the test's app, and their private addresses.
pub struct Pair {
    /// Serves its `/etc` over HTTP on port 8080.
    pub a1: String,
    /// Idle.
    pub a2: String,
    pub ip1: String,
    pub ip2: String,
}

/// Starts a [`Pair`] and checks what every runtime must give it: distinct addresses in one
/// organisation /48, a2 reaching a1 by private IP, the host reaching a1, and both machines
/// answering for `<app>.internal`.
pub fn talking_pair(w: &World) -> Pair {
    let a1 = w.run("httpd -f -p 8080 -h /etc", json!({}));
    let a2 = w.run("sleep 100000", json!({}));
    let ip1 = private_ip(w, APP, &a1);
    let ip2 = private_ip(w, APP, &a2);
    assert_ne!(ip1, ip2);
    let prefix = |ip: &str| ip.split(':').take(3).collect::<Vec<_>>().join(":");
    assert_eq!(prefix(&ip1), prefix(&ip2), "one organisation, one /48");

    // The page is the server's /etc/hosts, which names it.
    let out = fetch(w, APP, &a2, &ip1, 8080, "/hosts");
    assert_eq!(out["exit_code"], 0, "{out}");
    assert!(stdout(&out).contains(&ip1), "{out}");
    let body = reqwest::blocking::get(format!("http://[{ip1}]:8080/hosts"))
        .expect("host reaches the machine")
        .text()
        .unwrap();
    assert!(body.contains(&ip1), "{body}");

    let mut both = vec![ip1.clone(), ip2.clone()];
    both.sort();
    let mut got = lookup(w, APP, &a2, &format!("-type=AAAA {APP}.internal")).unwrap();
    got.sort();
    assert_eq!(got, both);
    Pair { a1, a2, ip1, ip2 }
}

/// Destroys `machines` (app, id) and checks that the host's networking is as it was `before`:
/// no interface, address or rule left behind.
pub fn destroy_leaves_nothing(
    w: &World,
    machines: &[(&str, &str)],
    before: (String, String, String),
) {
    for (app, id) in machines {
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

/// A machine of app `other-app` in organisation `other-org`, started.
pub fn other_org_machine(w: &World) -> String {
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
    b
}

/// Answers every HTTP request with the source address it came from.
fn echo(l: TcpListener) {
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
}

/// The internet's resolver (`hangar server --dns-upstream`): it knows one name.
pub const UPSTREAM_DNS: &str = "203.0.113.2:5353";
pub const UPSTREAM_NAME: &str = "example.test";
pub const UPSTREAM_ADDR: &str = "192.0.2.7";

fn upstream_dns(sock: std::net::UdpSocket) {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    use hickory_proto::rr::{rdata::A, RData, Record, RecordType};
    let mut buf = [0u8; 1500];
    while let Ok((n, from)) = sock.recv_from(&mut buf) {
        let Ok(q) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let mut r = Message::new();
        r.set_id(q.id())
            .set_message_type(MessageType::Response)
            .set_recursion_available(true)
            .add_queries(q.queries().to_vec());
        if let Some(query) = q.queries().first() {
            let name = query.name().to_ascii();
            if name.trim_end_matches('.') != UPSTREAM_NAME {
                r.set_response_code(ResponseCode::NXDomain);
            } else if query.query_type() == RecordType::A {
                r.add_answer(Record::from_rdata(
                    query.name().clone(),
                    60,
                    RData::A(A(UPSTREAM_ADDR.parse().unwrap())),
                ));
            }
        }
        if let Ok(bytes) = r.to_vec() {
            let _ = sock.send_to(&bytes, from);
        }
    }
}

/// `nslookup` inside a machine against its configured resolver: the addresses it printed for
/// the name (not the server's own), or the failure.
pub fn lookup(w: &World, app: &str, id: &str, args: &str) -> Result<Vec<String>, String> {
    let out = exec(w, app, id, &format!("nslookup {args}"));
    let text = format!(
        "{}{}",
        stdout(&out),
        out["stderr"].as_str().unwrap_or_default()
    );
    if out["exit_code"] != 0 {
        return Err(text);
    }
    // busybox prints the server first ("Server:", "Address: fdaa::3:53"), then the answers.
    let answers = text.split("\n\n").skip(1).collect::<Vec<_>>().join("\n");
    Ok(answers
        .lines()
        .filter_map(|l| {
            l.strip_prefix("Address: ")
                .or_else(|| l.split_once("text = ").map(|(_, t)| t))
                .map(|a| a.trim().trim_matches('"').to_string())
        })
        .collect())
}

/// What the host's networking looks like: interface names, addresses (not link-local ones,
/// which the kernel adds by itself) and Hangar's rules.
pub fn snapshot() -> (String, String, String) {
    let links = sh("ip -o link show | awk '{print $2}' | sort");
    let addrs = sh("ip -o addr show | awk '$4 !~ /^fe80/ {print $2, $4}' | sort");
    (links, addrs, sh("nft list ruleset"))
}

pub fn exec(w: &World, app: &str, id: &str, script: &str) -> Value {
    let r = w.server.post(
        &format!("/v1/apps/{app}/machines/{id}/exec"),
        json!({ "command": ["sh", "-c", script], "timeout": 20 }),
    );
    assert_eq!(r.status, 200, "exec {script}: {r:?}");
    r.body
}

pub fn stdout(v: &Value) -> String {
    v["stdout"].as_str().unwrap_or_default().trim().to_string()
}

/// An HTTP GET from inside a machine with busybox `nc` (Debian's static busybox `wget` crashes in
/// a root file system without glibc's NSS modules). Returns the exec result; `stdout` holds the
/// response, headers included.
pub fn fetch(w: &World, app: &str, id: &str, host: &str, port: u16, path: &str) -> Value {
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
pub fn seen_from(w: &World, id: &str) -> String {
    seen_at(w, id, "203.0.113.2")
}

/// The same over IPv6.
pub fn seen_from6(w: &World, id: &str) -> String {
    seen_at(w, id, "2001:db8::2")
}

fn seen_at(w: &World, id: &str, server: &str) -> String {
    let out = fetch(w, APP, id, server, 8000, "/");
    assert_eq!(out["exit_code"], 0, "{out}");
    stdout(&out).lines().last().unwrap_or_default().to_string()
}

pub fn private_ip(w: &World, app: &str, id: &str) -> String {
    let m = w.server.get(&format!("/v1/apps/{app}/machines/{id}")).body;
    let ip = m["private_ip"].as_str().unwrap_or_default().to_string();
    assert!(ip.starts_with("fdaa:"), "private_ip {ip:?}");
    ip
}

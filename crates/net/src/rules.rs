//! Hangar's nftables tables, rendered from the recorded state.
//!
//! `bridge hangar` filters frames between machines' ports: no spoofed source addresses, IPv6
//! only within the sender's organisation, no IPv4 between machines. `inet hangar` keeps machines
//! off the host's own services, keeps the outside from opening connections to machines, and
//! NATs what leaves: a machine's static egress IP when it holds one, else the uplink's address.

use std::fmt::Write;
use std::net::IpAddr;

use hangar_agent::EgressIp;
use ipnet::Ipv4Net;

use crate::{host_ifname, org_prefix, Attachment, DNS6, PRIVATE_NET};

pub struct Input<'a> {
    pub bridge: &'a str,
    pub ipv4_subnet: Ipv4Net,
    pub attachments: &'a [Attachment],
    pub egress: &'a [EgressIp],
    pub allow_host_ports: &'a [u16],
}

/// Deletes Hangar's tables if they exist (declaring a table first makes the delete safe).
pub fn delete_tables() -> String {
    "table bridge hangar\ndelete table bridge hangar\ntable inet hangar\ndelete table inet hangar\n"
        .to_string()
}

/// Frames bridged between machines are filtered in `bridge hangar`. Where br_netfilter is loaded
/// (Docker loads it, and the bridge's own `nf_call_*` off cannot override the global sysctl) they
/// also cross the inet forward hook from the bridge to itself; `inet hangar` lets them by.
pub fn render(i: &Input<'_>) -> String {
    let mut s = delete_tables();
    let br = i.bridge;

    s.push_str("table bridge hangar {\n  chain prerouting {\n    type filter hook prerouting priority 0; policy accept;\n");
    for a in i.attachments {
        let port = host_ifname(&a.machine_id);
        let _ = writeln!(
            s,
            "    iifname \"{port}\" ip6 saddr != {{ {}, fe80::/10, :: }} drop",
            a.ip6
        );
        let _ = writeln!(s, "    iifname \"{port}\" ip saddr != {} drop", a.ip4);
        let _ = writeln!(s, "    iifname \"{port}\" arp saddr ip != {} drop", a.ip4);
    }
    s.push_str("  }\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n");
    s.push_str("    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept\n");
    s.push_str("    ip6 daddr ff00::/8 accept\n");
    for a in i.attachments {
        let _ = writeln!(
            s,
            "    iifname \"{}\" ip6 daddr {} accept",
            host_ifname(&a.machine_id),
            org_prefix(&a.org)
        );
    }
    s.push_str("    ether type { ip, ip6 } drop\n  }\n}\n");

    let _ = write!(
        s,
        "table inet hangar {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n\
         \x20   iifname \"{br}\" ct state established,related accept\n\
         \x20   iifname \"{br}\" meta l4proto {{ icmp, ipv6-icmp }} accept\n\
         \x20   iifname \"{br}\" ip6 daddr {DNS6} meta l4proto {{ udp, tcp }} th dport 53 accept\n"
    );
    if !i.allow_host_ports.is_empty() {
        let ports: Vec<String> = i.allow_host_ports.iter().map(|p| p.to_string()).collect();
        let _ = writeln!(
            s,
            "    iifname \"{br}\" tcp dport {{ {} }} accept",
            ports.join(", ")
        );
    }
    let _ = write!(
        s,
        "    iifname \"{br}\" drop\n  }}\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n\
         \x20   iifname \"{br}\" oifname \"{br}\" accept\n\
         \x20   oifname \"{br}\" ct state established,related accept\n\
         \x20   oifname \"{br}\" drop\n  }}\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n\
         \x20   oifname \"{br}\" accept\n"
    );
    for e in i.egress {
        let Some(a) = i.attachments.iter().find(|a| a.machine_id == e.machine_id) else {
            continue;
        };
        match e.ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => {
                let _ = writeln!(s, "    ip saddr {} snat ip to {ip}", a.ip4);
            }
            Ok(IpAddr::V6(ip)) => {
                let _ = writeln!(s, "    ip6 saddr {} snat ip6 to {ip}", a.ip6);
            }
            Err(_) => {}
        }
    }
    let _ = write!(
        s,
        "    ip saddr {} masquerade\n    ip6 saddr {PRIVATE_NET} masquerade\n  }}\n}}\n",
        i.ipv4_subnet
    );
    s
}

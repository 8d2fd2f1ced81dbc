//! A sandbox's network namespace and veth pair, made over netlink from one short-lived thread:
//! no `ip` processes, so network setup costs a start a few milliseconds rather than tens.
//!
//! The thread opens a netlink socket in the host's namespace, then unshares into a new one
//! (a socket stays in the namespace it was made in), pins it by bind-mounting it at
//! `/run/netns/<name>` (where `ip netns` and runc find it), creates the veth pair on the
//! bridge with its peer inside, and configures the inside.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::NetError;

/// Where a sandbox goes on the network.
pub struct VethPlan<'a> {
    pub netns: &'a Path,
    pub host_if: &'a str,
    pub guest_if: &'a str,
    pub bridge: &'a str,
    /// Addresses of the inside end (IPv6 ones without duplicate address detection: Hangar
    /// hands them out, and a machine must not wait a second for DAD before it can talk).
    pub addresses: Vec<(IpAddr, u8)>,
    pub gateway4: Ipv4Addr,
    pub gateway6: Ipv6Addr,
}

fn err(what: &str) -> impl Fn(rtnetlink::Error) -> NetError + '_ {
    move |e| NetError::Command(format!("{what}: {e}"))
}

fn io(what: String) -> impl Fn(std::io::Error) -> NetError {
    move |e| NetError::Command(format!("{what}: {e}"))
}

async fn index(h: &Handle, name: &str) -> Result<u32, NetError> {
    let link = h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
        .map_err(err(name))?
        .ok_or_else(|| NetError::Command(format!("no interface {name}")))?;
    Ok(link.header.index)
}

/// Makes the namespace and veth pair of `plan`. On error, the caller removes what was made
/// (see [`remove`]).
pub fn plumb_veth(plan: &VethPlan<'_>) -> Result<(), NetError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(io("tokio".into()))?;
            rt.block_on(in_new_namespace(plan))
        })
        .join()
        .unwrap_or_else(|_| Err(NetError::Command("the netlink thread panicked".into())))
    })
}

/// Runs on a thread of its own: it leaves the host's network namespace for good.
async fn in_new_namespace(plan: &VethPlan<'_>) -> Result<(), NetError> {
    let (conn, host, _) = rtnetlink::new_connection().map_err(io("netlink".into()))?;
    tokio::spawn(conn);

    unshare(CloneFlags::CLONE_NEWNET)
        .map_err(|e| NetError::Command(format!("unshare the network namespace: {e}")))?;
    let dir = plan.netns.parent().unwrap_or(Path::new("/run/netns"));
    std::fs::create_dir_all(dir).map_err(io(dir.display().to_string()))?;
    File::create(plan.netns).map_err(io(plan.netns.display().to_string()))?;
    mount(
        Some("/proc/thread-self/ns/net"),
        plan.netns,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| NetError::Command(format!("pin {}: {e}", plan.netns.display())))?;

    let (conn, inside, _) = rtnetlink::new_connection().map_err(io("netlink".into()))?;
    tokio::spawn(conn);
    // Made from the host's side with the peer born inside: moving an interface between
    // namespaces afterwards costs the kernel ~20 ms (it unregisters and re-registers it).
    let ns = File::open("/proc/thread-self/ns/net").map_err(io("new namespace".into()))?;
    let bridge = index(&host, plan.bridge).await?;
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(plan.guest_if.to_string())
        .setns_by_fd(ns.as_raw_fd())
        .build();
    host.link()
        .add(
            LinkVeth::new(plan.host_if, plan.guest_if)
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .controller(bridge)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(err("create the veth pair"))?;

    let lo = index(&inside, "lo").await?;
    inside
        .link()
        .set(LinkUnspec::new_with_index(lo).up().build())
        .execute()
        .await
        .map_err(err("loopback up"))?;
    let eth = index(&inside, plan.guest_if).await?;
    for (addr, len) in &plan.addresses {
        let mut req = inside.address().add(eth, *addr, *len);
        if addr.is_ipv6() {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute().await.map_err(err("address the machine"))?;
    }
    inside
        .link()
        .set(LinkUnspec::new_with_index(eth).up().build())
        .execute()
        .await
        .map_err(err("interface up"))?;
    for (route, what) in [
        (
            RouteMessageBuilder::<Ipv4Addr>::new()
                .output_interface(eth)
                .gateway(plan.gateway4)
                .build(),
            "IPv4 default route",
        ),
        (
            RouteMessageBuilder::<Ipv6Addr>::new()
                .output_interface(eth)
                .gateway(plan.gateway6)
                .build(),
            "IPv6 default route",
        ),
    ] {
        inside
            .route()
            .add(route)
            .execute()
            .await
            .map_err(err(what))?;
    }
    Ok(())
}

/// Unpins a namespace made by [`plumb_veth`]; its veth pair goes with it once nothing runs in
/// it.
pub fn remove(netns: &Path) {
    if netns.exists() {
        let _ = umount2(netns, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(netns);
    }
}

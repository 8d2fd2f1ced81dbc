//! Hangar's host networking: the private network of each organisation (Fly's 6PN), outbound NAT
//! and static egress IPs.
//!
//! Every machine is attached to one per-host bridge, by the runtime's choice (see
//! [`hangar_runtime::NetAttachKind`]): a sandbox through a veth pair whose inner end sits in a
//! network namespace made for the machine (`/run/netns/hangar-<id>`), which the runtime joins,
//! its addresses and routes configured from the host; a microVM through a tap device that QEMU
//! opens as a virtio-net device, configured inside the guest by `hangar-init`. Either way the
//! host side is named [`host_ifname`], which the isolation rules match on.
//! A machine's private IPv6 comes from its organisation's /48 inside `fdaa::/16`; it also gets a
//! private IPv4 for outbound IPv4 through NAT. Addresses and egress IPs are recorded in this
//! crate's own SQLite database, so they survive stop/start, update and server restarts.
//!
//! Isolation and NAT are nftables rules in tables Hangar owns (`bridge hangar` and
//! `inet hangar`), rebuilt as a whole, atomically, from the recorded state whenever it changes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hangar_agent::{AgentError, EgressIp, PrivateNetwork};
use hangar_proto::{IpPrefix, NetworkSpec};
use hangar_runtime::{NetAttach, NetAttachKind};
use hangar_store::Store;
use hangar_types::{DnsConfig, MachineConfig};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use sha2::{Digest, Sha256};
use tracing::warn;

mod cmd;
mod db;
mod dns;
mod netlink;
mod rules;
mod runtime;

pub use dns::{host_resolvers, DNS6};
pub use runtime::Networked;

/// The network all organisations' prefixes are carved from.
pub const PRIVATE_NET: &str = "fdaa::/16";
/// The host's address on the bridge, the machines' IPv6 gateway.
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfdaa, 0, 0, 0, 0, 0, 0, 1);

#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Where the allocations are recorded.
    pub data_dir: PathBuf,
    /// The per-host bridge.
    pub bridge: String,
    /// Machines' private IPv4 subnet (outbound NAT only; machines never reach each other by it).
    pub ipv4_subnet: Ipv4Net,
    /// Addresses that `allocate` hands out as static egress IPs.
    pub egress_pools: Vec<IpNet>,
    /// TCP ports of the host that machines may reach (nothing else of the host is reachable).
    pub allow_host_ports: Vec<u16>,
    /// This host's region (`<region>.<app>.internal`, `nearest.of`).
    pub region: String,
    /// Where names outside `.internal` are forwarded (the host's resolvers by default).
    pub dns_upstreams: Vec<SocketAddr>,
    /// Resolvers other than `fdaa::3` that machine configs may name in `dns.nameservers`.
    pub allow_dns_servers: Vec<IpNet>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Command(String),
    #[error("network database: {0}")]
    Db(#[from] rusqlite::Error),
}

/// The private network of one host.
pub struct Network {
    cfg: NetConfig,
    db: Mutex<rusqlite::Connection>,
    store: Arc<Store>,
    /// Whether the loaded ruleset lags the records (a new machine's addresses), so that a start
    /// that changes nothing in it skips `nft`. Held while a ruleset is rendered and loaded, so
    /// an older rendering never replaces a newer one.
    rules_stale: Mutex<bool>,
}

/// The organisation's /48 in `fdaa::/16`, derived from its slug so that every host agrees.
pub fn org_prefix(org: &str) -> Ipv6Net {
    let h = Sha256::digest(org.as_bytes());
    let mut a = u16::from_be_bytes([h[0], h[1]]);
    let b = u16::from_be_bytes([h[2], h[3]]);
    if a == 0 && b == 0 {
        // fdaa:0:0::/48 holds the host's own addresses.
        a = 1;
    }
    Ipv6Net::new(Ipv6Addr::new(0xfdaa, a, b, 0, 0, 0, 0, 0), 48).expect("48 is a valid length")
}

/// The organisations' prefixes all lie in `fdaa::/16` outside `fdaa:0:0::/48` (the host's).
pub(crate) fn org_prefix_of(ip: Ipv6Addr) -> Option<()> {
    let s = ip.segments();
    (s[0] == 0xfdaa && (s[1], s[2]) != (0, 0)).then_some(())
}

/// A machine's address in its organisation's prefix: the interface id from a hash of the
/// machine id (and an attempt counter, should two collide).
fn machine_ip6(prefix: Ipv6Net, machine_id: &str, attempt: u32) -> Ipv6Addr {
    let h = Sha256::digest(format!("{machine_id}/{attempt}").as_bytes());
    let mut iid = [0u8; 8];
    iid.copy_from_slice(&h[..8]);
    let net = u128::from(prefix.network());
    Ipv6Addr::from(net | u128::from(u64::from_be_bytes(iid)))
}

/// The host side of a machine's veth pair (interface names are at most 15 bytes).
pub fn host_ifname(machine_id: &str) -> String {
    let h = Sha256::digest(machine_id.as_bytes());
    let hex: String = h[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("hv{hex}")
}

/// The machine's MAC address on the private network (a microVM's virtio-net device), the same
/// on every boot.
pub fn mac_address(machine_id: &str) -> String {
    stable_mac(&format!("mac/{machine_id}"))
}

/// The bridge's MAC address, stable per bridge name.
fn bridge_mac(bridge: &str) -> String {
    stable_mac(&format!("bridge/{bridge}"))
}

/// A locally administered unicast MAC from a hash of `seed`.
fn stable_mac(seed: &str) -> String {
    let h = Sha256::digest(seed.as_bytes());
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&h[..6]);
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The interface's name inside the machine.
pub const GUEST_IFNAME: &str = "eth0";

pub fn netns_name(machine_id: &str) -> String {
    format!("hangar-{machine_id}")
}

pub fn netns_path(machine_id: &str) -> PathBuf {
    Path::new("/run/netns").join(netns_name(machine_id))
}

/// What a machine holds on the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub machine_id: String,
    pub org: String,
    pub ip6: Ipv6Addr,
    pub ip4: Ipv4Addr,
}

impl Network {
    /// Checks the configuration, opens the allocation database, sets up the bridge and the
    /// rules. Allocations of machines the store no longer has are dropped.
    pub fn open(cfg: NetConfig, store: Arc<Store>) -> Result<Network, NetError> {
        let private: IpNet = PRIVATE_NET.parse().expect("constant");
        for pool in &cfg.egress_pools {
            let overlaps =
                |a: &IpNet, b: &IpNet| a.contains(&b.network()) || b.contains(&a.network());
            if overlaps(pool, &private) || overlaps(pool, &IpNet::V4(cfg.ipv4_subnet)) {
                return Err(NetError::Config(format!(
                    "--egress-ip-pool {pool} overlaps the private network ({PRIVATE_NET}, {})",
                    cfg.ipv4_subnet
                )));
            }
        }
        if cfg.ipv4_subnet.prefix_len() > 28 {
            return Err(NetError::Config(format!(
                "the machines' IPv4 subnet {} is too small",
                cfg.ipv4_subnet
            )));
        }
        let conn = db::open(&cfg.data_dir.join("network.db"))?;
        let net = Network {
            cfg,
            db: Mutex::new(conn),
            store,
            rules_stale: Mutex::new(true),
        };
        net.setup_host()?;
        net.drop_forgotten()?;
        net.apply_rules()?;
        Ok(net)
    }

    fn db(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn gateway4(&self) -> Ipv4Addr {
        self.cfg
            .ipv4_subnet
            .hosts()
            .next()
            .expect("subnet checked at open")
    }

    fn setup_host(&self) -> Result<(), NetError> {
        let br = &self.cfg.bridge;
        if !cmd::link_exists(br) {
            cmd::ip(&["link", "add", br, "type", "bridge"])?;
        }
        let gw4 = format!("{}/{}", self.gateway4(), self.cfg.ipv4_subnet.prefix_len());
        cmd::ip(&["addr", "replace", &gw4, "dev", br])?;
        cmd::ip(&[
            "-6",
            "addr",
            "replace",
            &format!("{GATEWAY6}/16"),
            "dev",
            br,
            "nodad",
        ])?;
        // With br_netfilter loaded (Docker loads it), frames bridged between machines would also
        // cross the inet hooks, as if routed from the bridge to itself. Machine-to-machine
        // traffic is filtered in `bridge hangar`; keep it out of the IP hooks.
        cmd::ip(&[
            "link",
            "set",
            br,
            "type",
            "bridge",
            "nf_call_iptables",
            "0",
            "nf_call_ip6tables",
            "0",
            "nf_call_arptables",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        // A bridge without an address of its own takes its lowest port's, so it would change as
        // machines come and go, and every machine's cached gateway MAC would go stale.
        cmd::ip(&["link", "set", br, "address", &bridge_mac(br)])?;
        cmd::ip(&["link", "set", br, "up"])?;
        cmd::ip(&[
            "-6",
            "addr",
            "replace",
            &format!("{DNS6}/128"),
            "dev",
            br,
            "nodad",
        ])?;
        cmd::sysctl("net/ipv4/ip_forward", "1")?;
        cmd::sysctl("net/ipv6/conf/all/forwarding", "1")?;
        Ok(())
    }

    /// Drops the allocations of machines that are destroyed or gone from the store.
    fn drop_forgotten(&self) -> Result<(), NetError> {
        let live: std::collections::HashSet<String> = match self.store.live_machines() {
            Ok(ms) => ms.into_iter().map(|m| m.id).collect(),
            Err(e) => {
                warn!(error = %e, "cannot list machines; keeping every network allocation");
                return Ok(());
            }
        };
        let forgotten: Vec<String> = db::attachments(&self.db())?
            .into_iter()
            .map(|a| a.machine_id)
            .filter(|id| !live.contains(id))
            .collect();
        for id in forgotten {
            // A machine destroyed while the server was down may have left its interfaces.
            self.unplumb(&id);
            db::forget(&self.db(), &id)?;
        }
        Ok(())
    }

    /// Rebuilds Hangar's nftables tables from the recorded state, atomically.
    pub fn apply_rules(&self) -> Result<(), NetError> {
        self.load_rules(true)
    }

    /// Loads the ruleset if the records have moved on since it was last loaded.
    fn refresh_rules(&self) -> Result<(), NetError> {
        self.load_rules(false)
    }

    fn load_rules(&self, always: bool) -> Result<(), NetError> {
        let mut stale = self.rules_stale.lock().unwrap_or_else(|p| p.into_inner());
        if !always && !*stale {
            return Ok(());
        }
        let (atts, egress) = {
            let db = self.db();
            (db::attachments(&db)?, db::all_egress(&db)?)
        };
        let text = rules::render(&rules::Input {
            bridge: &self.cfg.bridge,
            ipv4_subnet: self.cfg.ipv4_subnet,
            attachments: &atts,
            egress: &egress,
            allow_host_ports: &self.cfg.allow_host_ports,
        });
        cmd::nft(&text)?;
        *stale = false;
        Ok(())
    }

    /// Removes Hangar's tables (nothing of Hangar's is left in the ruleset).
    pub fn remove_rules() -> Result<(), NetError> {
        cmd::nft(&rules::delete_tables())
    }

    /// The machine's allocation, made on first use from its organisation's prefix.
    pub fn attachment(&self, machine_id: &str) -> Result<Attachment, NetError> {
        if let Some(a) = db::attachment(&self.db(), machine_id)? {
            return Ok(a);
        }
        let rec = self
            .store
            .get_machine(machine_id)
            .map_err(|e| NetError::Command(e.to_string()))?
            .ok_or_else(|| NetError::Command(format!("no machine {machine_id}")))?;
        let org = self
            .store
            .get_app(&rec.app)
            .map_err(|e| NetError::Command(e.to_string()))?
            .map(|a| a.org_slug)
            .unwrap_or_else(|| "personal".to_string());
        let prefix = org_prefix(&org);
        let made = self.insert_attachment(machine_id, &org, prefix)?;
        // After the records' lock is released: `load_rules` takes the two the other way round.
        *self.rules_stale.lock().unwrap_or_else(|p| p.into_inner()) = true;
        Ok(made)
    }

    fn insert_attachment(
        &self,
        machine_id: &str,
        org: &str,
        prefix: Ipv6Net,
    ) -> Result<Attachment, NetError> {
        let db = self.db();
        let used4 = db::used_ip4(&db)?;
        let gw = self.gateway4();
        let ip4 = self
            .cfg
            .ipv4_subnet
            .hosts()
            .find(|a| *a != gw && !used4.contains(a))
            .ok_or_else(|| {
                NetError::Command(format!(
                    "the machines' IPv4 subnet {} is full",
                    self.cfg.ipv4_subnet
                ))
            })?;
        for attempt in 0..16 {
            let a = Attachment {
                machine_id: machine_id.to_string(),
                org: org.to_string(),
                ip6: machine_ip6(prefix, machine_id, attempt),
                ip4,
            };
            if db::insert_attachment(&db, &a)? {
                return Ok(a);
            }
        }
        Err(NetError::Command(format!(
            "no free address for machine {machine_id} in {prefix}"
        )))
    }

    /// Plugs the machine into the bridge the way its runtime asks, and returns what the runtime
    /// needs to use it. Whatever is left of an earlier boot is replaced; on failure nothing of
    /// this one is left.
    pub fn plumb(
        &self,
        machine_id: &str,
        kind: NetAttachKind,
    ) -> Result<(NetAttach, Attachment), NetError> {
        let a = self.attachment(machine_id)?;
        self.unplumb(machine_id);
        let result = match kind {
            NetAttachKind::Netns => self
                .plumb_netns(machine_id, &a)
                .map(|()| NetAttach::Netns(netns_path(machine_id))),
            NetAttachKind::Tap => self.plumb_tap(machine_id).map(|()| NetAttach::Tap {
                ifname: host_ifname(machine_id),
                guest: self.guest_network(&a),
            }),
        }
        .and_then(|attach| self.refresh_rules().map(|()| attach));
        match result {
            Ok(attach) => Ok((attach, a)),
            Err(e) => {
                self.unplumb(machine_id);
                Err(e)
            }
        }
    }

    /// How `hangar-init` configures a microVM's device: the same addresses and routes the host
    /// gives a sandbox's `eth0`.
    pub fn guest_network(&self, a: &Attachment) -> NetworkSpec {
        NetworkSpec {
            ifname: GUEST_IFNAME.to_string(),
            mac: mac_address(&a.machine_id),
            mtu: None,
            addresses: vec![
                IpPrefix {
                    address: IpAddr::V6(a.ip6),
                    prefix_len: 16,
                },
                IpPrefix {
                    address: IpAddr::V4(a.ip4),
                    prefix_len: self.cfg.ipv4_subnet.prefix_len(),
                },
            ],
            gateway4: Some(self.gateway4()),
            gateway6: Some(GATEWAY6),
        }
    }

    /// A persistent tap device on the bridge, for QEMU to open: it outlives QEMU, so a
    /// suspended microVM keeps its port (and its rules) until it is torn down.
    fn plumb_tap(&self, machine_id: &str) -> Result<(), NetError> {
        let tap = host_ifname(machine_id);
        cmd::ip_batch_host(&format!(
            "tuntap add dev {tap} mode tap\n\
             link set {tap} master {br} up\n",
            br = self.cfg.bridge
        ))
    }

    /// Makes sure a microVM's tap device is there and on the bridge (before a suspended
    /// machine resumes: the device does not survive a host reboot, or an operator).
    pub fn ensure_tap(&self, machine_id: &str) -> Result<(), NetError> {
        let tap = host_ifname(machine_id);
        if cmd::link_exists(&tap) {
            return cmd::ip(&["link", "set", &tap, "master", &self.cfg.bridge, "up"]);
        }
        self.attachment(machine_id)?;
        let made = self
            .plumb_tap(machine_id)
            .and_then(|()| self.refresh_rules());
        if made.is_err() {
            self.unplumb(machine_id);
        }
        made
    }

    /// The namespace and veth pair of a sandbox, its addresses and routes. Its init cannot do
    /// this itself: a sandbox runs with Docker's capabilities, without CAP_NET_ADMIN, and
    /// granting init that (to drop it before the machine's process starts) would put a
    /// capability that rewrites the machine's addressing inside every sandbox's bounding set.
    fn plumb_netns(&self, machine_id: &str, a: &Attachment) -> Result<(), NetError> {
        netlink::plumb_veth(&netlink::VethPlan {
            netns: &netns_path(machine_id),
            host_if: &host_ifname(machine_id),
            guest_if: GUEST_IFNAME,
            bridge: &self.cfg.bridge,
            addresses: vec![
                (IpAddr::V6(a.ip6), 16),
                (IpAddr::V4(a.ip4), self.cfg.ipv4_subnet.prefix_len()),
            ],
            gateway4: self.gateway4(),
            gateway6: GATEWAY6,
        })
    }

    /// Removes the machine's namespace and interfaces (its allocation stays).
    pub fn unplumb(&self, machine_id: &str) {
        let host_if = host_ifname(machine_id);
        if cmd::link_exists(&host_if) {
            let _ = cmd::ip(&["link", "del", &host_if]);
        }
        netlink::remove(&netns_path(machine_id));
    }

    /// Machines of this server's that have a namespace or a host-side interface on this host
    /// (`/run/netns` and the links are shared by every server of the host, so only machines
    /// this server has an address for count).
    pub fn plumbed(&self) -> Vec<String> {
        let ours: Vec<String> = match db::attachments(&self.db()) {
            Ok(atts) => atts.into_iter().map(|a| a.machine_id).collect(),
            Err(_) => return Vec::new(),
        };
        let links: std::collections::HashSet<String> = cmd::link_names().into_iter().collect();
        ours.into_iter()
            .filter(|id| netns_path(id).exists() || links.contains(&host_ifname(id)))
            .collect()
    }

    /// `/etc/hosts` for a machine.
    pub fn hosts_file(&self, a: &Attachment, hostname: &str) -> String {
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{hostname} {}\n",
            a.ip6, a.machine_id
        )
    }

    /// The machine's resolvers: Hangar's own (`fdaa::3`), or those its config names.
    pub fn resolv_conf(&self, dns: Option<&DnsConfig>) -> String {
        let mut out = String::new();
        let named = dns.map(|d| d.nameservers.as_slice()).unwrap_or_default();
        if named.is_empty() {
            out.push_str(&format!("nameserver {DNS6}\n"));
        }
        for ns in named {
            out.push_str(&format!("nameserver {ns}\n"));
        }
        if let Some(d) = dns.filter(|d| !d.searches.is_empty()) {
            out.push_str(&format!("search {}\n", d.searches.join(" ")));
        }
        if let Some(opts) = dns
            .and_then(|d| d.extra.get("options"))
            .and_then(|o| o.as_array())
        {
            let words: Vec<String> = opts
                .iter()
                .filter_map(|o| {
                    let name = o.get("name")?.as_str()?;
                    Some(
                        match o
                            .get("value")
                            .and_then(|v| v.as_str())
                            .filter(|v| !v.is_empty())
                        {
                            Some(v) => format!("{name}:{v}"),
                            None => name.to_string(),
                        },
                    )
                })
                .collect();
            if !words.is_empty() {
                out.push_str(&format!("options {}\n", words.join(" ")));
            }
        }
        out
    }

    /// Serves the private network's DNS on `fdaa::3` from now on.
    pub async fn serve_dns(self: &Arc<Self>) -> Result<(), NetError> {
        dns::serve(self.clone(), self.cfg.dns_upstreams.clone()).await
    }

    /// The organisation whose machine holds this private address.
    fn org_of_address(&self, ip: Ipv6Addr) -> Option<String> {
        db::org_of_ip6(&self.db(), ip).ok().flatten()
    }

    fn org_of_ip4(&self, ip: Ipv4Addr) -> Option<String> {
        db::org_of_ip4(&self.db(), ip).ok().flatten()
    }

    /// The machine's `config.dns`, as recorded.
    pub fn machine_dns(&self, machine_id: &str) -> Option<DnsConfig> {
        self.store
            .get_machine(machine_id)
            .ok()
            .flatten()?
            .config
            .dns
    }

    /// The machine's private address, if it has one (never allocates).
    fn known_address(&self, machine_id: &str) -> Option<Ipv6Addr> {
        db::attachment(&self.db(), machine_id)
            .ok()
            .flatten()
            .map(|a| a.ip6)
    }

    fn pool_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.cfg
            .egress_pools
            .iter()
            .flat_map(|p| -> Box<dyn Iterator<Item = IpAddr>> {
                match p {
                    IpNet::V4(n) if n.prefix_len() < 31 => Box::new(n.hosts().map(IpAddr::V4)),
                    IpNet::V4(n) => Box::new(n.hosts().map(IpAddr::V4)),
                    IpNet::V6(n) => Box::new(n.hosts().take(1 << 16).map(IpAddr::V6)),
                }
            })
    }
}

fn internal(e: NetError) -> AgentError {
    AgentError::Internal(e.to_string())
}

impl PrivateNetwork for Network {
    fn check_config(&self, config: &MachineConfig) -> Result<(), AgentError> {
        let Some(dns) = &config.dns else {
            return Ok(());
        };
        for ns in &dns.nameservers {
            let ip: IpAddr = ns.parse().map_err(|_| {
                AgentError::InvalidArgument(format!(
                    "config.dns.nameservers: {ns:?} is not an IP address"
                ))
            })?;
            let allowed = ip == IpAddr::V6(DNS6)
                || self.cfg.allow_dns_servers.iter().any(|n| n.contains(&ip));
            if !allowed {
                let mut list = vec![DNS6.to_string()];
                list.extend(self.cfg.allow_dns_servers.iter().map(|n| n.to_string()));
                return Err(AgentError::InvalidArgument(format!(
                    "config.dns.nameservers: {ip} is not allowed on this host (allowed: {}; the operator adds more with --allow-dns-server)",
                    list.join(", ")
                )));
            }
        }
        Ok(())
    }

    fn private_ip(&self, machine_id: &str) -> Option<String> {
        match self.attachment(machine_id) {
            Ok(a) => Some(a.ip6.to_string()),
            Err(e) => {
                warn!(machine = machine_id, error = %e, "no private address");
                None
            }
        }
    }

    fn forget(&self, machine_id: &str) {
        self.unplumb(machine_id);
        if let Err(e) = db::forget(&self.db(), machine_id) {
            warn!(machine = machine_id, error = %e, "cannot forget the machine's addresses");
        }
        if let Err(e) = self.apply_rules() {
            warn!(error = %e, "cannot update the network rules");
        }
    }

    fn egress_ips(&self, machine_id: &str) -> Result<Vec<EgressIp>, AgentError> {
        db::egress_of(&self.db(), machine_id).map_err(|e| internal(e.into()))
    }

    fn allocate_egress_ip(&self, machine_id: &str) -> Result<EgressIp, AgentError> {
        if self.cfg.egress_pools.is_empty() {
            return Err(AgentError::FailedPrecondition(
                "this server has no egress IP pool (start it with --egress-ip-pool CIDR)".into(),
            ));
        }
        let a = self.attachment(machine_id).map_err(internal)?;
        let got = {
            let db = self.db();
            let held = db::egress_of(&db, machine_id).map_err(|e| internal(e.into()))?;
            let used: std::collections::HashSet<String> = db::all_egress(&db)
                .map_err(|e| internal(e.into()))?
                .into_iter()
                .map(|e| e.ip)
                .collect();
            let families: Vec<bool> = held
                .iter()
                .filter_map(|e| e.ip.parse::<IpAddr>().ok())
                .map(|ip| ip.is_ipv4())
                .collect();
            // One address per family: a machine's traffic leaves with one source address.
            let candidate = self
                .pool_addresses()
                .filter(|ip| !families.contains(&ip.is_ipv4()))
                .find(|ip| !used.contains(&ip.to_string()));
            match candidate {
                Some(ip) => db::insert_egress(&db, &ip.to_string(), &a.machine_id)
                    .map_err(|e| internal(e.into()))?,
                None if families.len() >= 2
                    || (!families.is_empty()
                        && self.cfg.egress_pools.iter().all(|p| {
                            families.contains(&matches!(p, IpNet::V4(_)))
                        })) =>
                {
                    return Err(AgentError::Conflict(format!(
                        "machine {machine_id} already holds an egress IP of each family the pool has"
                    )))
                }
                None => {
                    return Err(AgentError::Conflict(format!(
                        "the egress IP pool ({}) is exhausted: every address is held by a machine",
                        self.cfg
                            .egress_pools
                            .iter()
                            .map(|p| p.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            }
        };
        if let Err(e) = self.apply_rules() {
            let _ = db::delete_egress(&self.db(), &got.ip, machine_id);
            return Err(internal(e));
        }
        Ok(got)
    }

    fn release_egress_ip(&self, machine_id: &str, ip: &str) -> Result<(), AgentError> {
        let parsed: IpAddr = ip
            .parse()
            .map_err(|_| AgentError::InvalidArgument(format!("{ip:?} is not an IP address")))?;
        let removed = db::delete_egress(&self.db(), &parsed.to_string(), machine_id)
            .map_err(|e| internal(e.into()))?;
        if !removed {
            return Err(AgentError::NotFound(format!(
                "machine {machine_id} holds no egress IP {parsed}"
            )));
        }
        self.apply_rules().map_err(internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_prefixes_are_stable_distinct_48s_in_fdaa() {
        let a = org_prefix("acme");
        assert_eq!(a, org_prefix("acme"));
        assert_ne!(a, org_prefix("personal"));
        assert_eq!(a.prefix_len(), 48);
        let private: Ipv6Net = PRIVATE_NET.parse().unwrap();
        assert!(private.contains(&a));
        let ip = machine_ip6(a, "0123456789abcd", 0);
        assert!(a.contains(&ip));
        assert_ne!(ip, machine_ip6(a, "0123456789abcd", 1));
    }

    #[test]
    fn macs_are_stable_local_unicast() {
        let mac = mac_address("0123456789abcd");
        assert_eq!(mac, mac_address("0123456789abcd"));
        assert_ne!(mac, mac_address("0123456789abce"));
        let bytes = hangar_proto::parse_mac(&mac).unwrap();
        assert_eq!(bytes[0] & 0x03, 0x02, "{mac}");
    }

    #[test]
    fn interface_names_fit() {
        let n = host_ifname(&"x".repeat(64));
        assert!(n.len() <= 15, "{n}");
        assert_eq!(n, host_ifname(&"x".repeat(64)));
    }
}

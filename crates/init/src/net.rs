//! A microVM's network device, configured over rtnetlink before the machine's process starts
//! (an image need not have `ip`): find the device by its MAC address, give it its name and MTU,
//! bring it up, add its addresses and default routes. Every step replaces what is there, so
//! configuring twice is harmless.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hangar_proto::{IpPrefix, NetworkSpec};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// How long the device may take to appear after its driver loaded (it normally is there at once:
/// the driver probes the devices ACPI listed while it loads).
const DEVICE_WAIT: Duration = Duration::from_secs(10);

/// Applies `spec` to the device with its MAC address.
pub fn configure(spec: &NetworkSpec) -> Result<(), String> {
    spec.validate()?;
    let mac = spec.mac_bytes()?;
    let mut rtnl = Rtnl::open()?;
    let index = rtnl.wait_for_link(&mac)?;
    rtnl.set_link(index, spec)
        .map_err(|e| format!("setting up {}: {e}", spec.ifname))?;
    for a in &spec.addresses {
        rtnl.add_address(index, a).map_err(|e| {
            format!(
                "adding {}/{} to {}: {e}",
                a.address, a.prefix_len, spec.ifname
            )
        })?;
    }
    let gateways = [spec.gateway4.map(IpAddr::V4), spec.gateway6.map(IpAddr::V6)];
    for gw in gateways.into_iter().flatten() {
        rtnl.add_default_route(index, gw)
            .map_err(|e| format!("adding the default route via {gw}: {e}"))?;
    }
    Ok(())
}

/// A route netlink socket, one request at a time.
struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    fn open() -> Result<Rtnl, String> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| format!("opening a netlink socket: {e}"))?;
        socket
            .bind_auto()
            .map_err(|e| format!("binding the netlink socket: {e}"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| format!("connecting the netlink socket: {e}"))?;
        Ok(Rtnl { socket, seq: 0 })
    }

    /// Sends one request and gathers its answer: the messages of a dump, or none once the
    /// kernel acknowledges a change. A refusal is the kernel's errno.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, std::io::Error> {
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| std::io::Error::other(format!("netlink reply: {e}")))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += (len + 3) & !3;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(std::io::Error::from_raw_os_error(-code.get())),
                        }
                    }
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    /// The index of the link with this MAC address, once it exists.
    fn wait_for_link(&mut self, mac: &[u8; 6]) -> Result<u32, String> {
        let deadline = Instant::now() + DEVICE_WAIT;
        loop {
            let links = self
                .request(
                    RouteNetlinkMessage::GetLink(LinkMessage::default()),
                    NLM_F_DUMP,
                )
                .map_err(|e| format!("listing the network devices: {e}"))?;
            for link in links {
                if let RouteNetlinkMessage::NewLink(l) = link {
                    let has_mac = l
                        .attributes
                        .iter()
                        .any(|a| matches!(a, LinkAttribute::Address(m) if m.as_slice() == mac));
                    if has_mac {
                        return Ok(l.header.index);
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no network device with MAC address {} appeared within {}s \
                     (does the guest kernel have virtio_net?)",
                    mac.iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":"),
                    DEVICE_WAIT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Names the link, sets its MTU and brings it up, in one change (the kernel renames first,
    /// while the fresh device is still down).
    fn set_link(&mut self, index: u32, spec: &NetworkSpec) -> Result<(), std::io::Error> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        link.attributes
            .push(LinkAttribute::IfName(spec.ifname.clone()));
        if let Some(mtu) = spec.mtu {
            link.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.request(RouteNetlinkMessage::SetLink(link), NLM_F_ACK)
            .map(drop)
    }

    fn add_address(&mut self, index: u32, a: &IpPrefix) -> Result<(), std::io::Error> {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        msg.header.prefix_len = a.prefix_len;
        msg.header.scope = AddressScope::Universe;
        match a.address {
            IpAddr::V4(_) => {
                msg.header.family = AddressFamily::Inet;
                msg.attributes.push(AddressAttribute::Local(a.address));
                msg.attributes.push(AddressAttribute::Address(a.address));
            }
            IpAddr::V6(_) => {
                msg.header.family = AddressFamily::Inet6;
                msg.header.flags = AddressHeaderFlags::Nodad;
                msg.attributes.push(AddressAttribute::Address(a.address));
                msg.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
        }
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    fn add_default_route(&mut self, index: u32, gateway: IpAddr) -> Result<(), std::io::Error> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = match gateway {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.header.destination_prefix_length = 0;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = RouteScope::Universe;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gateway)));
        msg.attributes.push(RouteAttribute::Oif(index));
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }
}

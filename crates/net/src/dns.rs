//! The private network's DNS server (Fly's `fdaa::3`): `.internal` names answered from the
//! machines' live state, everything else forwarded to the host's own resolvers.
//!
//! A query is answered for the organisation its source address belongs to, so one
//! organisation cannot enumerate another's apps; queries from the host itself see every app.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hangar_types::MachineState;
use hickory_proto::op::{Header, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{AAAA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{ResolveErrorKind, TokioResolver};
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;
use tracing::{debug, warn};

use crate::{org_prefix_of, NetError, Network};

/// The DNS server's address on the bridge.
pub const DNS6: Ipv6Addr = Ipv6Addr::new(0xfdaa, 0, 0, 0, 0, 0, 0, 3);

/// Short: answers follow machines starting and stopping.
const TTL: u32 = 5;

/// A `.internal` name, parsed.
#[derive(Debug, PartialEq, Eq)]
enum Internal {
    /// `_apps.internal`: TXT, the organisation's apps.
    Apps,
    /// `_instances.internal`: TXT, every started machine of the organisation.
    Instances,
    /// `<app>.internal`: AAAA, the app's started machines.
    App(String),
    /// `<region>.<app>.internal`
    Region(String, String),
    /// `<id>.vm.<app>.internal`
    Vm(String, String),
    /// `top<n>.nearest.of.<app>.internal`
    Nearest(usize, String),
    /// `regions.<app>.internal`: TXT
    Regions(String),
    /// `vms.<app>.internal`: TXT
    Vms(String),
}

impl Internal {
    /// `None` for names outside `.internal`; `Some(None)` for `.internal` names that mean
    /// nothing (NXDOMAIN, never forwarded).
    fn parse(name: &str) -> Option<Option<Internal>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let rest = name.strip_suffix("internal")?;
        if !(rest.is_empty() || rest.ends_with('.')) {
            return None;
        }
        let labels: Vec<&str> = rest.trim_end_matches('.').split('.').collect();
        let app = |s: &str| s.to_string();
        Some(match labels.as_slice() {
            ["_apps"] => Some(Internal::Apps),
            ["_instances"] => Some(Internal::Instances),
            [""] => None,
            [a] => Some(Internal::App(app(a))),
            ["regions", a] => Some(Internal::Regions(app(a))),
            ["vms", a] => Some(Internal::Vms(app(a))),
            [r, a] => Some(Internal::Region(app(r), app(a))),
            [id, "vm", a] => Some(Internal::Vm(app(id), app(a))),
            [top, "nearest", "of", a] => top
                .strip_prefix("top")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n > 0)
                .map(|n| Internal::Nearest(n, app(a))),
            _ => None,
        })
    }
}

/// A started, registered machine as DNS sees it.
struct Entry {
    id: String,
    app: String,
    region: String,
    ip6: Ipv6Addr,
}

pub(crate) struct Dns {
    net: Arc<Network>,
    forward: Option<TokioResolver>,
}

/// What a lookup found: records, or that the name does not exist.
enum Found {
    Records(Vec<RData>),
    NoSuchName,
}

impl Dns {
    fn new(net: Arc<Network>, upstreams: &[SocketAddr]) -> Dns {
        let forward = if upstreams.is_empty() {
            None
        } else {
            let mut group = NameServerConfigGroup::new();
            for u in upstreams {
                group.merge(NameServerConfigGroup::from_ips_clear(
                    &[u.ip()],
                    u.port(),
                    true,
                ));
            }
            let mut opts = ResolverOpts::default();
            opts.timeout = Duration::from_secs(2);
            opts.attempts = 1;
            // Caching is the machines' resolvers' business; answers go out as received.
            opts.cache_size = 0;
            let mut builder = TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], group),
                TokioConnectionProvider::default(),
            );
            *builder.options_mut() = opts;
            Some(builder.build())
        };
        Dns { net, forward }
    }

    /// The organisation a source address speaks for; `None`: the host, which sees everything.
    fn org_of(&self, src: IpAddr) -> Result<Option<String>, ()> {
        match src {
            IpAddr::V6(ip) if org_prefix_of(ip).is_some() => {
                self.net.org_of_address(ip).map(Some).ok_or(())
            }
            IpAddr::V4(ip)
                if self.net.cfg.ipv4_subnet.contains(&ip) && ip != self.net.gateway4() =>
            {
                self.net.org_of_ip4(ip).map(Some).ok_or(())
            }
            _ => Ok(None),
        }
    }

    fn entries(&self, app: &str, org: Option<&str>) -> Vec<Entry> {
        let store = &self.net.store;
        match store.get_app(app) {
            Ok(Some(a)) if org.is_none_or(|o| o == a.org_slug) => {}
            _ => return Vec::new(),
        }
        let machines = store.list_machines(app, false).unwrap_or_default();
        machines
            .into_iter()
            .filter(|m| m.state == MachineState::Started)
            .filter(|m| {
                !m.config
                    .dns
                    .as_ref()
                    .and_then(|d| d.skip_registration)
                    .unwrap_or(false)
            })
            .filter_map(|m| {
                let ip6 = self.net.known_address(&m.id)?;
                Some(Entry {
                    id: m.id,
                    app: m.app,
                    region: m.region,
                    ip6,
                })
            })
            .collect()
    }

    fn apps(&self, org: Option<&str>) -> Vec<String> {
        let mut apps: Vec<String> = self
            .net
            .store
            .list_apps(org)
            .unwrap_or_default()
            .into_iter()
            .map(|a| a.name)
            .collect();
        apps.sort();
        apps
    }

    fn internal(&self, q: &Internal, rtype: RecordType, org: Option<&str>) -> Found {
        let aaaa = |es: Vec<Entry>| {
            if es.is_empty() {
                return Found::NoSuchName;
            }
            Found::Records(if rtype == RecordType::AAAA {
                es.iter().map(|e| RData::AAAA(AAAA(e.ip6))).collect()
            } else {
                Vec::new()
            })
        };
        let txt = |s: String| {
            Found::Records(if rtype == RecordType::TXT {
                vec![RData::TXT(TXT::new(vec![s]))]
            } else {
                Vec::new()
            })
        };
        match q {
            Internal::App(app) => aaaa(self.entries(app, org)),
            Internal::Region(region, app) => aaaa(
                self.entries(app, org)
                    .into_iter()
                    .filter(|e| &e.region == region)
                    .collect(),
            ),
            Internal::Vm(id, app) => aaaa(
                self.entries(app, org)
                    .into_iter()
                    .filter(|e| &e.id == id)
                    .collect(),
            ),
            Internal::Nearest(n, app) => {
                // One host serves one region: its own machines are the nearest.
                let here = &self.net.cfg.region;
                let mut es = self.entries(app, org);
                es.sort_by(|a, b| (&a.region != here, &a.id).cmp(&(&b.region != here, &b.id)));
                es.truncate(*n);
                aaaa(es)
            }
            Internal::Regions(app) => {
                let mut regions: Vec<String> = self
                    .entries(app, org)
                    .into_iter()
                    .map(|e| e.region)
                    .collect();
                if regions.is_empty() && !self.app_visible(app, org) {
                    return Found::NoSuchName;
                }
                regions.sort();
                regions.dedup();
                txt(regions.join(","))
            }
            Internal::Vms(app) => {
                let es = self.entries(app, org);
                if es.is_empty() && !self.app_visible(app, org) {
                    return Found::NoSuchName;
                }
                let vms: Vec<String> = es
                    .iter()
                    .map(|e| format!("{} {}", e.id, e.region))
                    .collect();
                txt(vms.join(","))
            }
            Internal::Apps => txt(self.apps(org).join(",")),
            Internal::Instances => {
                let mut all = Vec::new();
                for app in self.apps(org) {
                    for e in self.entries(&app, org) {
                        all.push(format!(
                            "instance={};app={};ip={};region={}",
                            e.id, e.app, e.ip6, e.region
                        ));
                    }
                }
                txt(all.join(","))
            }
        }
    }

    fn app_visible(&self, app: &str, org: Option<&str>) -> bool {
        matches!(self.net.store.get_app(app), Ok(Some(a)) if org.is_none_or(|o| o == a.org_slug))
    }

    async fn forward(&self, name: &Name, rtype: RecordType) -> Result<Found, ResponseCode> {
        let Some(resolver) = &self.forward else {
            return Err(ResponseCode::Refused);
        };
        match resolver.lookup(name.clone(), rtype).await {
            Ok(lookup) => Ok(Found::Records(
                lookup.records().iter().map(|r| r.data().clone()).collect(),
            )),
            Err(e) => match e.kind() {
                ResolveErrorKind::Proto(p) if p.is_nx_domain() => Ok(Found::NoSuchName),
                ResolveErrorKind::Proto(p) if p.is_no_records_found() => {
                    Ok(Found::Records(Vec::new()))
                }
                _ => {
                    debug!(name = %name, error = %e, "forwarded query failed");
                    Err(ResponseCode::ServFail)
                }
            },
        }
    }

    /// The records for the request's name, and whether Hangar is the authority for it (an
    /// `.internal` name) rather than a forwarder.
    async fn answer(&self, request: &Request) -> Result<(Name, Found, bool), ResponseCode> {
        if request.op_code() != OpCode::Query || request.message_type() != MessageType::Query {
            return Err(ResponseCode::NotImp);
        }
        let info = request.request_info().map_err(|_| ResponseCode::FormErr)?;
        let query = info.query;
        if query.query_class() != DNSClass::IN {
            return Err(ResponseCode::Refused);
        }
        let name: Name = query.name().into();
        let rtype = query.query_type();
        let org = self
            .org_of(request.src().ip())
            .map_err(|()| ResponseCode::Refused)?;
        let internal = Internal::parse(&name.to_ascii());
        let authoritative = internal.is_some();
        let found = match internal {
            Some(Some(q)) => self.internal(&q, rtype, org.as_deref()),
            Some(None) => Found::NoSuchName,
            None => self.forward(&name, rtype).await?,
        };
        Ok((name, found, authoritative))
    }
}

#[async_trait::async_trait]
impl RequestHandler for Dns {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut header = Header::response_from_request(request.header());
        header.set_recursion_available(true);
        let result = self.answer(request).await;
        let sent = match result {
            Ok((name, found, authoritative)) => {
                header.set_authoritative(authoritative);
                let records: Vec<Record> = match found {
                    Found::Records(rdata) => rdata
                        .into_iter()
                        .map(|d| Record::from_rdata(name.clone(), TTL, d))
                        .collect(),
                    Found::NoSuchName => {
                        header.set_response_code(ResponseCode::NXDomain);
                        Vec::new()
                    }
                };
                let msg = builder.build(header, records.iter(), &[], &[], &[]);
                response.send_response(msg).await
            }
            Err(code) => {
                let msg = builder.error_msg(request.header(), code);
                response.send_response(msg).await
            }
        };
        match sent {
            Ok(info) => info,
            Err(e) => {
                debug!(error = %e, "cannot send a DNS response");
                let mut h = Header::response_from_request(request.header());
                h.set_response_code(ResponseCode::ServFail);
                h.into()
            }
        }
    }
}

/// The host's resolvers, from `/etc/resolv.conf` (port 53); the machines' queries for names
/// outside `.internal` go there, never to a resolver Hangar picked.
pub fn host_resolvers() -> Vec<SocketAddr> {
    let Ok((config, _)) = hickory_resolver::system_conf::read_system_conf() else {
        return Vec::new();
    };
    let mut addrs: Vec<SocketAddr> = config
        .name_servers()
        .iter()
        .map(|n| n.socket_addr)
        // Never forward to ourselves.
        .filter(|a| a.ip() != IpAddr::V6(DNS6))
        .collect();
    // Each server is listed once for UDP and once for TCP.
    addrs.dedup();
    addrs
}

/// Serves DNS on `[fdaa::3]:53` (UDP and TCP) until the runtime shuts down.
pub(crate) async fn serve(net: Arc<Network>, upstreams: Vec<SocketAddr>) -> Result<(), NetError> {
    let addr = SocketAddr::new(IpAddr::V6(DNS6), 53);
    let io = |e: std::io::Error| NetError::Command(format!("DNS server on {addr}: {e}"));
    let udp = tokio::net::UdpSocket::bind(addr).await.map_err(io)?;
    let tcp = tokio::net::TcpListener::bind(addr).await.map_err(io)?;
    let mut server = ServerFuture::new(Dns::new(net, &upstreams));
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5));
    tokio::spawn(async move {
        if let Err(e) = server.block_until_done().await {
            warn!(error = %e, "the DNS server stopped");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_names_parse() {
        let p = |s: &str| Internal::parse(s);
        assert_eq!(p("example.com."), None);
        assert_eq!(p("notinternal."), None);
        assert_eq!(p("web.internal."), Some(Some(Internal::App("web".into()))));
        assert_eq!(p("Web.INTERNAL"), Some(Some(Internal::App("web".into()))));
        assert_eq!(p("_apps.internal."), Some(Some(Internal::Apps)));
        assert_eq!(p("_instances.internal."), Some(Some(Internal::Instances)));
        assert_eq!(
            p("ams.web.internal."),
            Some(Some(Internal::Region("ams".into(), "web".into())))
        );
        assert_eq!(
            p("abc123.vm.web.internal."),
            Some(Some(Internal::Vm("abc123".into(), "web".into())))
        );
        assert_eq!(
            p("top2.nearest.of.web.internal."),
            Some(Some(Internal::Nearest(2, "web".into())))
        );
        assert_eq!(p("top0.nearest.of.web.internal."), Some(None));
        assert_eq!(
            p("regions.web.internal."),
            Some(Some(Internal::Regions("web".into())))
        );
        assert_eq!(
            p("vms.web.internal."),
            Some(Some(Internal::Vms("web".into())))
        );
        assert_eq!(p("internal."), Some(None));
        assert_eq!(p("a.b.c.d.e.internal."), Some(None));
    }
}

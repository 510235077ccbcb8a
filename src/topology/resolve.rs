//! Next-hop resolution for one direction of a flow: the kernel's route lookup (policy routing
//! included), the neighbour's MAC, then the walk down to the lowest egress device.
//!
//! Routes and neighbours are asked of the kernel per resolution (RTM_GETROUTE, and a single
//! RTM_GETNEIGH get, kernel ≥ 4.20) rather than mirrored: the kernel's answer is by definition the
//! path the kernel would take, which is the one the offloaded flow must take too.

use std::fmt;
use std::net::IpAddr;

use futures::StreamExt;
use futures::TryStreamExt;
use netlink_packet_core::ErrorMessage;
use netlink_packet_core::NetlinkMessage;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_core::NLM_F_REQUEST;
use netlink_packet_route::neighbour::NeighbourAddress;
use netlink_packet_route::neighbour::NeighbourAttribute;
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::route::RouteAddress;
use netlink_packet_route::route::RouteAttribute;
use netlink_packet_route::route::RouteMessage;
use netlink_packet_route::route::RouteType;
use netlink_packet_route::route::RouteVia;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::Handle;

use super::netlink::usable_neighbour_mac;
use super::L2Encap;
use super::LinkKind;
use super::Mac;
use super::Topology;

/// What to route: like `ip route get <dst> from <src> iif <dev> mark <mark>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RouteQuery {
    /// Destination address of the packets.
    pub dst: IpAddr,
    /// Source address of the packets (needed with `iif`; with `iif` unset it must be local).
    pub src: Option<IpAddr>,
    /// Device the packets arrive on (a forwarded flow): the kernel does an input route lookup,
    /// so rules matching `iif` apply.
    pub iif: Option<u32>,
    /// Firewall mark of the packets (rules with `fwmark`).
    pub mark: Option<u32>,
}

impl RouteQuery {
    /// A lookup for forwarded packets from `src` to `dst` arriving on `iif`.
    pub fn forwarded(dst: IpAddr, src: IpAddr, iif: u32) -> Self {
        RouteQuery {
            dst,
            src: Some(src),
            iif: Some(iif),
            mark: None,
        }
    }
}

/// Everything the data path needs to send a packet of the flow out itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NextHop {
    /// The device the route points at (e.g. `br-lan`, `pppoe-wan`).
    pub l3_ifindex: u32,
    /// The lowest device frames leave by (redirect target).
    pub egress_ifindex: u32,
    /// Source MAC on the wire: that of the device that writes the Ethernet header (the L3
    /// device, which for a bridge is the bridge's MAC; the session's Ethernet device for PPPoE).
    pub src_mac: Mac,
    /// Destination MAC: the neighbour's, or the PPPoE peer's.
    pub dst_mac: Mac,
    /// Tags and headers to push.
    pub encap: L2Encap,
    /// Largest IP packet that fits the whole path; bigger ones go to the kernel.
    pub mtu: u32,
    /// The route's gateway, `None` when the destination is on-link.
    pub gateway: Option<IpAddr>,
    /// The neighbour entry (device, IP) the MAC came from; `None` for PPPoE.
    pub neighbour: Option<(u32, IpAddr)>,
    /// Every device on the way down, L3 device first (a change to any of them invalidates).
    pub devices: Vec<u32>,
}

/// Why a flow direction has no next hop the data path can use. The flow stays in the kernel.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unresolved {
    /// No route, or a blackhole/unreachable/prohibit route.
    #[error("no route: {0}")]
    NoRoute(String),
    /// The destination is the router itself.
    #[error("destination is local")]
    Local,
    /// The neighbour has no usable MAC (yet): incomplete, failed or absent.
    #[error("neighbour {ip} on ifindex {ifindex} not resolved")]
    Neighbour {
        /// Device of the neighbour.
        ifindex: u32,
        /// Its IP address.
        ip: IpAddr,
    },
    /// The path exists but the data path cannot take it (tunnel, multicast, unknown device...).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The netlink exchange itself failed.
    #[error("netlink: {0}")]
    Netlink(String),
}

impl From<super::Unsupported> for Unresolved {
    fn from(u: super::Unsupported) -> Self {
        Unresolved::Unsupported(u.0)
    }
}

struct Errno(i32);

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", nix::errno::Errno::from_raw(self.0).desc())
    }
}

fn errno_of(e: &ErrorMessage) -> i32 {
    -e.raw_code()
}

fn route_request(q: &RouteQuery) -> Result<RouteMessage, Unresolved> {
    let mut msg = RouteMessage::default();
    let (family, bits) = match q.dst {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    msg.header.address_family = family;
    msg.header.destination_prefix_length = bits;
    msg.attributes
        .push(RouteAttribute::Destination(route_addr(q.dst)));
    if let Some(src) = q.src {
        if src.is_ipv4() != q.dst.is_ipv4() {
            return Err(Unresolved::Unsupported(format!(
                "source {src} and destination {} differ in family",
                q.dst
            )));
        }
        msg.header.source_prefix_length = bits;
        msg.attributes.push(RouteAttribute::Source(route_addr(src)));
    }
    if let Some(iif) = q.iif {
        msg.attributes.push(RouteAttribute::Iif(iif));
    }
    if let Some(mark) = q.mark {
        msg.attributes.push(RouteAttribute::Mark(mark));
    }
    Ok(msg)
}

fn route_addr(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

/// Asks the kernel for the route a packet would take (RTM_GETROUTE without NLM_F_DUMP).
async fn route_get(handle: &Handle, q: &RouteQuery) -> Result<RouteMessage, Unresolved> {
    let msg = route_request(q)?;
    let mut answers = handle.route().get(msg).execute();
    match answers.try_next().await {
        Ok(Some(route)) => Ok(route),
        Ok(None) => Err(Unresolved::Netlink("empty answer to RTM_GETROUTE".into())),
        Err(rtnetlink::Error::NetlinkError(e)) => {
            let errno = errno_of(&e);
            match nix::errno::Errno::from_raw(errno) {
                nix::errno::Errno::ENETUNREACH
                | nix::errno::Errno::EHOSTUNREACH
                | nix::errno::Errno::EACCES
                | nix::errno::Errno::EINVAL
                | nix::errno::Errno::ESRCH
                | nix::errno::Errno::EAGAIN => {
                    Err(Unresolved::NoRoute(format!("{}: {}", q.dst, Errno(errno))))
                }
                _ => Err(Unresolved::Netlink(format!(
                    "RTM_GETROUTE {}: {}",
                    q.dst,
                    Errno(errno)
                ))),
            }
        }
        Err(e) => Err(Unresolved::Netlink(format!("RTM_GETROUTE {}: {e}", q.dst))),
    }
}

/// Asks the kernel for one neighbour entry (RTM_GETNEIGH get, not a dump).
async fn neighbour_get(handle: &Handle, ifindex: u32, ip: IpAddr) -> Result<Mac, Unresolved> {
    let mut msg = NeighbourMessage::default();
    msg.header.family = match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.ifindex = ifindex;
    msg.attributes
        .push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNeighbour(msg));
    req.header.flags = NLM_F_REQUEST;
    let mut answers = handle
        .clone()
        .request(req)
        .map_err(|e| Unresolved::Netlink(format!("RTM_GETNEIGH: {e}")))?;
    let unresolved = Unresolved::Neighbour { ifindex, ip };
    match answers.next().await.map(|m| m.payload) {
        Some(NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n))) => {
            usable_neighbour_mac(&n).ok_or(unresolved)
        }
        Some(NetlinkPayload::Error(e)) if errno_of(&e) == nix::errno::Errno::ENOENT as i32 => {
            Err(unresolved)
        }
        Some(NetlinkPayload::Error(e)) => Err(Unresolved::Netlink(format!(
            "RTM_GETNEIGH {ip}: {}",
            Errno(errno_of(&e))
        ))),
        other => Err(Unresolved::Netlink(format!(
            "RTM_GETNEIGH {ip}: unexpected answer {other:?}"
        ))),
    }
}

impl Topology {
    /// Resolves where packets matching `q` go and how to put them on the wire there.
    ///
    /// Steps: RTM_GETROUTE (policy routing applies through `src`/`iif`/`mark`); only unicast
    /// routes go on (local → [`Unresolved::Local`], blackhole/unreachable/prohibit →
    /// [`Unresolved::NoRoute`], others → [`Unresolved::Unsupported`]); the neighbour of the
    /// gateway (or of the destination when on-link) must have a usable MAC, except on PPP, where
    /// the PPPoE peer is the destination; then the device walk ([`Topology::egress_path`]) crosses
    /// bridges by FDB, VLANs, PPPoE and DSA down to the lowest device.
    pub async fn resolve(&self, handle: &Handle, q: RouteQuery) -> Result<NextHop, Unresolved> {
        let route = route_get(handle, &q).await?;
        match route.header.kind {
            RouteType::Unicast => {}
            RouteType::Local => return Err(Unresolved::Local),
            RouteType::BlackHole
            | RouteType::Unreachable
            | RouteType::Prohibit
            | RouteType::Throw => {
                return Err(Unresolved::NoRoute(format!(
                    "{}: {:?} route",
                    q.dst, route.header.kind
                )))
            }
            other => {
                return Err(Unresolved::Unsupported(format!(
                    "{}: {other:?} route",
                    q.dst
                )))
            }
        }
        let mut oif = None;
        let mut gateway = None;
        for a in &route.attributes {
            match a {
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(IpAddr::V4(*g)),
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => gateway = Some(IpAddr::V6(*g)),
                RouteAttribute::Via(RouteVia::Inet(g)) => gateway = Some(IpAddr::V4(*g)),
                RouteAttribute::Via(RouteVia::Inet6(g)) => gateway = Some(IpAddr::V6(*g)),
                RouteAttribute::Encap(_) | RouteAttribute::EncapType(_) => {
                    return Err(Unresolved::Unsupported(format!(
                        "{}: lightweight-tunnel route",
                        q.dst
                    )))
                }
                _ => {}
            }
        }
        let oif = oif.ok_or_else(|| {
            Unresolved::Unsupported(format!("{}: route without output device", q.dst))
        })?;
        let l3 = self.link(oif).ok_or_else(|| {
            Unresolved::Unsupported(format!(
                "{}: output ifindex {oif} not in the model (topology out of date)",
                q.dst
            ))
        })?;
        let (dst_mac, neighbour) = match &l3.kind {
            LinkKind::Ppp => (None, None),
            LinkKind::Other(kind) => {
                return Err(Unresolved::Unsupported(format!(
                    "{}: output device {} is {kind}",
                    q.dst, l3.name
                )))
            }
            _ => {
                let nh = gateway.unwrap_or(q.dst);
                (Some(neighbour_get(handle, oif, nh).await?), Some((oif, nh)))
            }
        };
        let path = self.egress_path(oif, dst_mac)?;
        let dst_mac = path.dst_mac.or(dst_mac).ok_or_else(|| {
            Unresolved::Unsupported(format!("{}: no destination MAC on {}", q.dst, l3.name))
        })?;
        let src_mac = path
            .src_mac
            .ok_or_else(|| Unresolved::Unsupported(format!("{}: {} has no MAC", q.dst, l3.name)))?;
        Ok(NextHop {
            l3_ifindex: oif,
            egress_ifindex: path.lowest_ifindex,
            src_mac,
            dst_mac,
            encap: path.encap,
            mtu: path.mtu,
            gateway,
            neighbour,
            devices: path.devices,
        })
    }
}

/// The devices that carry a default route (IPv4 or IPv6, any table, next hops of multipath
/// routes included): the router's way to the Internet. A dump of the routing tables
/// (RTM_GETROUTE with NLM_F_DUMP); an error reads as "none".
pub async fn default_route_devices(handle: &Handle) -> std::collections::HashSet<u32> {
    let mut out = std::collections::HashSet::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family;
        let mut routes = handle.route().get(msg).execute();
        while let Ok(Some(r)) = routes.try_next().await {
            if r.header.destination_prefix_length != 0 || r.header.kind != RouteType::Unicast {
                continue;
            }
            for a in &r.attributes {
                match a {
                    RouteAttribute::Oif(i) => {
                        out.insert(*i);
                    }
                    RouteAttribute::MultiPath(hops) => {
                        out.extend(hops.iter().map(|h| h.interface_index));
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

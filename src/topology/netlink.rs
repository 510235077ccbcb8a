//! rtnetlink side of the model: the initial dump, applying link/address/FDB notifications, and
//! the event subscription that tells the offload manager what changed.
//!
//! Order that loses nothing: [`subscribe`] first, then [`Topology::dump`] over the subscription's
//! handle, then feed every queued and later [`NetlinkEvent`] to [`Topology::apply`]. Applying a
//! notification that the dump already reflected is harmless (it replaces an entry by itself).

use std::net::IpAddr;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;

use anyhow::Context as _;
use futures::channel::mpsc::UnboundedReceiver;
use futures::Stream;
use futures::StreamExt;
use futures::TryStreamExt;
use log::debug;
use log::warn;
use netlink_packet_core::NetlinkMessage;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::AfSpecBridge;
use netlink_packet_route::link::BridgeVlanInfoFlags;
use netlink_packet_route::link::InfoBridge;
use netlink_packet_route::link::InfoData;
use netlink_packet_route::link::InfoDsa;
use netlink_packet_route::link::InfoKind;
use netlink_packet_route::link::InfoVlan;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::link::LinkExtentMask;
use netlink_packet_route::link::LinkFlags;
use netlink_packet_route::link::LinkInfo;
use netlink_packet_route::link::LinkLayerType;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::link::State;
use netlink_packet_route::link::VlanProtocol;
use netlink_packet_route::neighbour::NeighbourAddress;
use netlink_packet_route::neighbour::NeighbourAttribute;
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::neighbour::NeighbourState;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::AsyncSocket;
use netlink_sys::SocketAddr;
use rtnetlink::Handle;
use rtnetlink::MulticastGroup;

use super::mac_from;
use super::Address;
use super::BridgeConf;
use super::BridgeVlan;
use super::FdbEntry;
use super::HostFs;
use super::Link;
use super::LinkKind;
use super::Mac;
use super::Topology;
use super::VlanProto;

/// What changed, classified for precise invalidation by the offload manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopologyEvent {
    /// A link appeared, changed (MTU, MAC, state, master, bridge VLANs) or went away: flows
    /// through this ifindex must be re-resolved.
    Link(u32),
    /// A route or routing rule changed: every flow must be re-resolved.
    Route,
    /// A neighbour entry changed: flows whose next hop is (`ifindex`, `ip`) must be updated.
    Neigh {
        /// Device of the entry.
        ifindex: u32,
        /// Neighbour's IP address.
        ip: IpAddr,
        /// Usable MAC (valid state), or `None` (deleted, incomplete, failed).
        mac: Option<Mac>,
    },
    /// A bridge FDB entry appeared, moved or went away: flows to `mac` through `bridge` must be
    /// updated.
    Fdb {
        /// The bridge.
        bridge: u32,
        /// The station.
        mac: Mac,
        /// The port it is behind now; `None` when the entry was deleted.
        port: Option<u32>,
    },
    /// An address of the router changed (what counts as "local").
    Addr {
        /// Link of the address.
        ifindex: u32,
        /// The address.
        ip: IpAddr,
    },
    /// Notifications were lost (socket overrun): dump again and re-resolve everything.
    Resync,
}

/// One notification from the kernel.
#[derive(Clone, Debug)]
pub enum NetlinkEvent {
    /// An rtnetlink notification.
    Message(RouteNetlinkMessage),
    /// The kernel dropped notifications (ENOBUFS): the model must be rebuilt.
    Overrun,
}

impl NetlinkEvent {
    /// What the offload manager must invalidate for this event, without a model; `None` for
    /// messages that matter to nobody here.
    pub fn classify(&self) -> Option<TopologyEvent> {
        let msg = match self {
            NetlinkEvent::Overrun => return Some(TopologyEvent::Resync),
            NetlinkEvent::Message(m) => m,
        };
        match msg {
            RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l) => {
                Some(TopologyEvent::Link(l.header.index))
            }
            RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => {
                address_of(a).map(|ip| TopologyEvent::Addr {
                    ifindex: a.header.index,
                    ip,
                })
            }
            RouteNetlinkMessage::NewRoute(_)
            | RouteNetlinkMessage::DelRoute(_)
            | RouteNetlinkMessage::NewRule(_)
            | RouteNetlinkMessage::DelRule(_) => Some(TopologyEvent::Route),
            RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
                let deleted = matches!(msg, RouteNetlinkMessage::DelNeighbour(_));
                if n.header.family == AddressFamily::Bridge {
                    let fdb = fdb_of(n)?;
                    Some(TopologyEvent::Fdb {
                        bridge: fdb.bridge,
                        mac: fdb.mac,
                        port: (!deleted && fdb.port != fdb.bridge).then_some(fdb.port),
                    })
                } else {
                    let ip = neighbour_ip(n)?;
                    let mac = if deleted {
                        None
                    } else {
                        usable_neighbour_mac(n)
                    };
                    Some(TopologyEvent::Neigh {
                        ifindex: n.header.ifindex,
                        ip,
                        mac,
                    })
                }
            }
            _ => None,
        }
    }
}

/// The MAC of a neighbour entry if its state makes it usable for forwarding: reachable, stale,
/// delay, probe, permanent, or noarp with an address. Incomplete/failed/none are not.
pub fn usable_neighbour_mac(n: &NeighbourMessage) -> Option<Mac> {
    let usable = matches!(
        n.header.state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    );
    if !usable {
        return None;
    }
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => mac_from(b).filter(|m| *m != [0; 6]),
        _ => None,
    })
}

fn neighbour_ip(n: &NeighbourMessage) -> Option<IpAddr> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        _ => None,
    })
}

/// A bridge FDB entry from an AF_BRIDGE neighbour message; `None` for entries that are not the
/// bridge's (a device's own `self` unicast list has no NDA_MASTER).
fn fdb_of(n: &NeighbourMessage) -> Option<FdbEntry> {
    let mut mac = None;
    let mut bridge = None;
    let mut vlan = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(b) => mac = mac_from(b),
            NeighbourAttribute::Controller(m) => bridge = Some(*m),
            NeighbourAttribute::Vlan(v) if *v != 0 => vlan = Some(*v),
            _ => {}
        }
    }
    Some(FdbEntry {
        bridge: bridge?,
        port: n.header.ifindex,
        mac: mac?,
        vlan,
    })
}

fn address_of(a: &AddressMessage) -> Option<IpAddr> {
    // IFA_LOCAL is the router's own address on point-to-point links; IFA_ADDRESS is the peer
    // there and the same as IFA_LOCAL elsewhere (IPv6 has only IFA_ADDRESS).
    let local = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

fn vlan_proto(p: VlanProtocol) -> VlanProto {
    match p {
        VlanProtocol::Ieee8021Ad => VlanProto::Dot1Ad,
        _ => VlanProto::Dot1Q,
    }
}

/// The attributes of an RTM_NEWLINK that the model keeps, gathered one attribute at a time.
struct LinkAttrs {
    name: String,
    kind: Option<InfoKind>,
    vlan: Option<(u16, VlanProto)>,
    bridge: BridgeConf,
    dsa_conduit: Option<u32>,
    lower: Option<u32>,
    lower_other_ns: bool,
    master: Option<u32>,
    mtu: u32,
    mac: Option<Mac>,
    oper_up: bool,
    phys_port_name: Option<String>,
}

impl LinkAttrs {
    fn new() -> Self {
        LinkAttrs {
            name: String::new(),
            kind: None,
            vlan: None,
            bridge: BridgeConf::default(),
            dsa_conduit: None,
            lower: None,
            lower_other_ns: false,
            master: None,
            mtu: 0,
            mac: None,
            oper_up: true,
            phys_port_name: None,
        }
    }

    fn take(&mut self, a: &LinkAttribute) {
        match a {
            LinkAttribute::IfName(n) => self.name = n.clone(),
            LinkAttribute::Mtu(m) => self.mtu = *m,
            LinkAttribute::Address(b) => self.mac = mac_from(b),
            LinkAttribute::Link(l) => self.lower = Some(*l),
            LinkAttribute::LinkNetNsId(_) => self.lower_other_ns = true,
            LinkAttribute::Controller(m) => self.master = Some(*m),
            LinkAttribute::PhysPortName(p) => self.phys_port_name = Some(p.clone()),
            LinkAttribute::OperState(s) => {
                self.oper_up = !matches!(s, State::Down | State::LowerLayerDown | State::NotPresent)
            }
            LinkAttribute::LinkInfo(infos) => infos.iter().for_each(|i| self.take_info(i)),
            _ => {}
        }
    }

    /// IFLA_LINKINFO: the kind, and the kind's data the walk needs (VLAN id and protocol,
    /// bridge VLAN settings, DSA conduit).
    fn take_info(&mut self, info: &LinkInfo) {
        match info {
            LinkInfo::Kind(k) => self.kind = Some(k.clone()),
            LinkInfo::Data(InfoData::Vlan(v)) => self.vlan = vlan_of(v),
            LinkInfo::Data(InfoData::Bridge(b)) => {
                for x in b {
                    match x {
                        InfoBridge::VlanFiltering(f) => self.bridge.vlan_filtering = *f,
                        InfoBridge::VlanProtocol(p) => self.bridge.vlan_protocol = vlan_proto(*p),
                        InfoBridge::VlanDefaultPvid(p) => self.bridge.default_pvid = *p,
                        _ => {}
                    }
                }
            }
            LinkInfo::Data(InfoData::Dsa(d)) => {
                for x in d {
                    if let InfoDsa::Conduit(c) = x {
                        self.dsa_conduit = Some(*c);
                    }
                }
            }
            _ => {}
        }
    }

    /// What the link is, from its rtnetlink kind and link-layer type.
    fn link_kind(&self, link_layer: LinkLayerType) -> LinkKind {
        match (&self.kind, link_layer) {
            (_, LinkLayerType::Loopback) => LinkKind::Other("loopback".into()),
            (Some(InfoKind::Veth), _) => LinkKind::Veth,
            (Some(InfoKind::Bridge), _) => LinkKind::Bridge,
            (Some(InfoKind::Vlan), _) => match self.vlan {
                Some((id, proto)) => LinkKind::Vlan { id, proto },
                None => LinkKind::Other("vlan (no id)".into()),
            },
            (Some(InfoKind::Dsa), _) => LinkKind::Other("dsa".into()),
            (Some(InfoKind::Other(k)), _) if k == "ppp" => LinkKind::Ppp,
            (None, LinkLayerType::Ppp) => LinkKind::Ppp,
            (None, LinkLayerType::Ether) => LinkKind::Ethernet,
            (Some(k), _) => LinkKind::Other(k.to_string()),
            (None, t) => LinkKind::Other(format!("{t}")),
        }
    }
}

/// VLAN id and protocol from IFLA_VLAN_*.
fn vlan_of(v: &[InfoVlan]) -> Option<(u16, VlanProto)> {
    let mut id = None;
    let mut proto = VlanProto::Dot1Q;
    for x in v {
        match x {
            InfoVlan::Id(i) => id = Some(*i),
            InfoVlan::Protocol(p) => proto = vlan_proto(*p),
            _ => {}
        }
    }
    id.map(|i| (i, proto))
}

/// A [`Link`] from an RTM_NEWLINK (AF_UNSPEC) message. DSA roles are derived later, with sysfs.
fn link_from(msg: &LinkMessage) -> Link {
    let h = &msg.header;
    let mut a = LinkAttrs::new();
    for attr in &msg.attributes {
        a.take(attr);
    }
    let kind = a.link_kind(h.link_layer_type);
    let is_bridge = kind == LinkKind::Bridge;
    Link {
        ifindex: h.index,
        name: a.name,
        kind,
        master: a.master,
        // A lower device in another namespace is not one the walk can follow.
        lower: a.lower.filter(|l| *l != h.index && !a.lower_other_ns),
        mtu: a.mtu,
        mac: a.mac,
        admin_up: h.flags.contains(LinkFlags::Up),
        oper_up: a.oper_up,
        phys_port_name: a.phys_port_name,
        dsa_conduit_attr: a.dsa_conduit,
        dsa_tagger: None,
        bridge: is_bridge.then_some(a.bridge),
        vlans: Vec::new(),
    }
}

/// Bridge VLAN membership from an AF_BRIDGE RTM_NEWLINK, expanding compressed ranges.
fn bridge_vlans_from(msg: &LinkMessage) -> Vec<BridgeVlan> {
    let mut out = Vec::new();
    let mut range_start: Option<u16> = None;
    for a in &msg.attributes {
        let LinkAttribute::AfSpecBridge(spec) = a else {
            continue;
        };
        for s in spec {
            let AfSpecBridge::VlanInfo(info) = s else {
                continue;
            };
            let flags = info.flags;
            let make = |vid| BridgeVlan {
                vid,
                pvid: flags.contains(BridgeVlanInfoFlags::Pvid),
                untagged: flags.contains(BridgeVlanInfoFlags::Untagged),
            };
            if flags.contains(BridgeVlanInfoFlags::RangeBegin) {
                range_start = Some(info.vid);
            } else if flags.contains(BridgeVlanInfoFlags::RangeEnd) {
                let start = range_start.take().unwrap_or(info.vid);
                out.extend((start..=info.vid).map(make));
            } else {
                out.push(make(info.vid));
            }
        }
    }
    out
}

impl Topology {
    /// Builds the model from the kernel: links, bridge VLANs, addresses and the bridge FDB, with
    /// procfs/sysfs of the running system.
    pub async fn dump(handle: &Handle) -> anyhow::Result<Topology> {
        Self::dump_with(handle, HostFs::system()).await
    }

    /// [`Topology::dump`] with procfs/sysfs read under `fs`.
    pub async fn dump_with(handle: &Handle, fs: HostFs) -> anyhow::Result<Topology> {
        let links: Vec<LinkMessage> = handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .context("dumping links (RTM_GETLINK)")?;
        let mut topo = Topology {
            fs,
            ..Topology::default()
        };
        for l in &links {
            let link = link_from(l);
            topo.links.insert(link.ifindex, link);
        }

        let brlinks: Vec<LinkMessage> = handle
            .link()
            .get()
            .set_filter_mask(AddressFamily::Bridge, vec![LinkExtentMask::Brvlan])
            .execute()
            .try_collect()
            .await
            .context("dumping bridge VLANs (RTM_GETLINK AF_BRIDGE)")?;
        for l in &brlinks {
            if let Some(link) = topo.links.get_mut(&l.header.index) {
                link.vlans = bridge_vlans_from(l);
            }
        }

        let addrs: Vec<AddressMessage> = handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .context("dumping addresses (RTM_GETADDR)")?;
        topo.addrs = addrs
            .iter()
            .filter_map(|a| {
                address_of(a).map(|ip| Address {
                    ifindex: a.header.index,
                    ip,
                    prefix_len: a.header.prefix_len,
                })
            })
            .collect();

        let fdb: Vec<NeighbourMessage> = handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .context("dumping the bridge FDB (RTM_GETNEIGH AF_BRIDGE)")?;
        for e in fdb.iter().filter_map(fdb_of) {
            topo.set_fdb(e);
        }
        topo.refresh_dsa_all();
        Ok(topo)
    }

    /// Applies a notification to the model and says what it invalidates (see
    /// [`NetlinkEvent::classify`]). Route and neighbour changes do not change the model (routes
    /// and neighbours are asked of the kernel at resolve time) but are classified all the same.
    pub fn apply(&mut self, event: &NetlinkEvent) -> Option<TopologyEvent> {
        if let NetlinkEvent::Message(msg) = event {
            match msg {
                RouteNetlinkMessage::NewLink(l)
                    if l.header.interface_family == AddressFamily::Bridge =>
                {
                    if let Some(link) = self.links.get_mut(&l.header.index) {
                        link.vlans = bridge_vlans_from(l);
                    }
                }
                RouteNetlinkMessage::DelLink(l)
                    if l.header.interface_family == AddressFamily::Bridge =>
                {
                    // The port left the bridge (or lost its VLAN info); the link itself stays.
                    if let Some(link) = self.links.get_mut(&l.header.index) {
                        link.vlans.clear();
                    }
                }
                RouteNetlinkMessage::NewLink(l) => self.apply_new_link(l),
                RouteNetlinkMessage::DelLink(l) => {
                    let ifindex = l.header.index;
                    self.links.remove(&ifindex);
                    self.addrs.retain(|a| a.ifindex != ifindex);
                    self.fdb
                        .retain(|(bridge, _, _), port| *bridge != ifindex && *port != ifindex);
                }
                RouteNetlinkMessage::NewAddress(a) => {
                    if let Some(ip) = address_of(a) {
                        let addr = Address {
                            ifindex: a.header.index,
                            ip,
                            prefix_len: a.header.prefix_len,
                        };
                        if !self.addrs.contains(&addr) {
                            self.addrs.push(addr);
                        }
                    }
                }
                RouteNetlinkMessage::DelAddress(a) => {
                    if let Some(ip) = address_of(a) {
                        self.addrs
                            .retain(|x| !(x.ifindex == a.header.index && x.ip == ip));
                    }
                }
                RouteNetlinkMessage::NewNeighbour(n)
                    if n.header.family == AddressFamily::Bridge =>
                {
                    if let Some(e) = fdb_of(n) {
                        self.set_fdb(e);
                    }
                }
                RouteNetlinkMessage::DelNeighbour(n)
                    if n.header.family == AddressFamily::Bridge =>
                {
                    if let Some(e) = fdb_of(n) {
                        self.remove_fdb(e.bridge, e.mac, e.vlan);
                    }
                }
                _ => {}
            }
        }
        event.classify()
    }
}

impl Topology {
    /// A link appeared or changed: replace it, keeping what comes from elsewhere (bridge
    /// VLANs, a conduit's tagger), and re-derive the DSA roles it may change.
    fn apply_new_link(&mut self, l: &LinkMessage) {
        let mut link = link_from(l);
        if let Some(old) = self.links.get(&link.ifindex) {
            link.vlans = old.vlans.clone();
            link.dsa_tagger = old.dsa_tagger.clone();
        }
        let ifindex = link.ifindex;
        self.links.insert(ifindex, link);
        self.refresh_dsa(ifindex);
        // A conduit that (re)appears may turn its users into DSA ports.
        let users: Vec<u32> = self
            .links
            .values()
            .filter(|u| u.lower == Some(ifindex) && u.ifindex != ifindex)
            .map(|u| u.ifindex)
            .collect();
        for u in users {
            self.refresh_dsa(u);
        }
    }
}

/// Receive buffer asked for the event socket (capped by `net.core.rmem_max`).
// An `int`, as SO_RCVBUF takes: the setter passes the value's bytes as they are.
const EVENT_RCVBUF: i32 = 4 << 20;

/// An rtnetlink connection subscribed to link, address, route, rule, neighbour and FDB
/// notifications, and its handle for requests (dump, route and neighbour lookups).
pub struct Subscription {
    /// Handle for requests over the same socket.
    pub handle: Handle,
    /// The notifications.
    pub events: Events,
}

/// Stream of [`NetlinkEvent`]s of a [`Subscription`].
pub struct Events {
    rx: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
}

impl Stream for Events {
    type Item = NetlinkEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<NetlinkEvent>> {
        loop {
            match self.rx.poll_next_unpin(cx) {
                Poll::Ready(Some((msg, _))) => match msg.payload {
                    NetlinkPayload::InnerMessage(m) => {
                        return Poll::Ready(Some(NetlinkEvent::Message(m)))
                    }
                    NetlinkPayload::Overrun(_) => return Poll::Ready(Some(NetlinkEvent::Overrun)),
                    // Errors, acks and done markers without a request are noise here.
                    other => debug!("ignoring unsolicited netlink payload {other:?}"),
                },
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Opens an rtnetlink socket in the calling thread's network namespace, joined to the link,
/// IPv4/IPv6 address, route and rule, and neighbour (ARP/ND and bridge FDB) groups, and spawns
/// its connection task on the current tokio runtime (call it from inside the runtime).
pub fn subscribe() -> anyhow::Result<Subscription> {
    let runtime = tokio::runtime::Handle::try_current()
        .context("topology::subscribe must be called inside a tokio runtime")?;
    let groups = [
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
        MulticastGroup::Ipv4Rule,
        MulticastGroup::Ipv6Rule,
        MulticastGroup::Neigh,
    ];
    let (mut connection, handle, rx) = rtnetlink::new_multicast_connection(&groups)
        .context("opening the rtnetlink event socket")?;
    // FDB and neighbour churn comes in bursts; a lost notification costs a full resync.
    if let Err(e) = connection
        .socket_mut()
        .socket_mut()
        .set_rx_buf_sz(EVENT_RCVBUF)
    {
        warn!("rtnetlink event socket: cannot raise the receive buffer: {e}");
    }
    runtime.spawn(connection);
    Ok(Subscription {
        handle,
        events: Events { rx },
    })
}

//! The router's network as the offload path sees it: links, addresses and the bridge FDB, and the
//! walk from an L3 device down to the lowest device a packet really enters or leaves by.
//!
//! This module owns:
//! - the in-memory model ([`Topology`]) of links (kind, lower link, master, MTU, MAC, state, DSA
//!   port name), addresses and bridge FDB/VLAN state, filled from an rtnetlink dump and kept
//!   current by link/address/FDB events ([`netlink`]);
//! - the walk from an L3 device to its lowest device and the L2 encapsulation on the way
//!   ([`Topology::lower_path`], [`Topology::egress_path`]): VLAN (802.1Q/802.1ad, at most two
//!   tags), PPPoE (session from `/proc/net/pppoe`, [`pppoe`]), bridge (FDB port and the port's
//!   VLAN egress policy) and DSA (conduit, port index, tagger from sysfs, [`hostfs`]);
//! - next-hop resolution for a flow direction ([`Topology::resolve`], [`resolve`]): route lookup
//!   by the kernel with policy routing, neighbour MAC, then the walk above;
//! - the event subscription that tells the offload manager what to invalidate
//!   ([`subscribe`], [`TopologyEvent`]).
//!
//! Everything it cannot express exactly is refused with a reason ([`Unsupported`],
//! [`Unresolved`]): such a flow stays in the kernel, which is slower but never wrong.

pub mod ethtool;
pub mod hostfs;
pub mod netlink;
pub mod pppoe;
pub mod resolve;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

pub use self::hostfs::HostFs;
pub use self::netlink::subscribe;
pub use self::netlink::NetlinkEvent;
pub use self::netlink::TopologyEvent;
pub use self::resolve::NextHop;
pub use self::resolve::RouteQuery;
pub use self::resolve::Unresolved;

/// A MAC address, as it goes on the wire.
pub type Mac = [u8; 6];

/// Bytes a PPPoE session header plus the PPP protocol field add inside the Ethernet payload.
pub const PPPOE_OVERHEAD: u32 = 8;

/// Deepest device stack the walk follows before it calls the topology a loop.
const MAX_DEPTH: usize = 12;

/// VLAN tag protocol (the TPID).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VlanProto {
    /// IEEE 802.1Q, TPID 0x8100 (customer tag).
    Dot1Q,
    /// IEEE 802.1ad, TPID 0x88a8 (service tag, the outer one of QinQ).
    Dot1Ad,
}

impl VlanProto {
    /// The EtherType that announces this tag on the wire.
    pub fn tpid(self) -> u16 {
        match self {
            VlanProto::Dot1Q => 0x8100,
            VlanProto::Dot1Ad => 0x88a8,
        }
    }

    /// The protocol for a TPID, if it is one of the two VLAN TPIDs.
    pub fn from_tpid(tpid: u16) -> Option<Self> {
        match tpid {
            0x8100 => Some(VlanProto::Dot1Q),
            0x88a8 => Some(VlanProto::Dot1Ad),
            _ => None,
        }
    }
}

/// What a link is, as far as the walk down the device stack cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// A plain Ethernet NIC (no rtnetlink kind): a lowest device, or a DSA conduit.
    Ethernet,
    /// One end of a veth pair: a lowest device.
    Veth,
    /// A Linux bridge.
    Bridge,
    /// A VLAN device on top of its parent ([`Link::lower`]).
    Vlan {
        /// VLAN id, 1..=4094.
        id: u16,
        /// Tag protocol.
        proto: VlanProto,
    },
    /// A PPP unit (`ppp*`, `pppoe-*`); PPPoE if a session in `/proc/net/pppoe` belongs to it.
    Ppp,
    /// A DSA user port: a switch port reached through its conduit with a tag for `port`.
    DsaUser {
        /// Ifindex of the conduit (the CPU-facing Ethernet device).
        conduit: u32,
        /// Switch port index (what the tag carries), from `phys_port_name` "p<N>".
        port: u16,
    },
    /// Anything else (rtnetlink kind, or "loopback"): never walked through, never offloaded.
    Other(String),
}

impl fmt::Display for LinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkKind::Ethernet => f.write_str("ethernet"),
            LinkKind::Veth => f.write_str("veth"),
            LinkKind::Bridge => f.write_str("bridge"),
            LinkKind::Vlan { id, proto } => write!(f, "vlan {id} ({:#06x})", proto.tpid()),
            LinkKind::Ppp => f.write_str("ppp"),
            LinkKind::DsaUser { port, .. } => write!(f, "dsa user port {port}"),
            LinkKind::Other(k) => write!(f, "{k}"),
        }
    }
}

/// The DSA tag format a conduit speaks, from `/sys/class/net/<conduit>/dsa/tagging`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DsaTagger {
    /// MediaTek: 4 bytes after the source MAC.
    Mtk,
    /// Qualcomm Atheros (qca8k): 2 bytes after the source MAC.
    Qca,
    /// Lantiq/Intel GSWIP: 8-byte special tag.
    Gswip,
    /// Any other tagger, by its sysfs name; the data path does not speak it.
    Other(String),
}

impl DsaTagger {
    /// Tagger from its sysfs name (`mtk`, `qca`, `gswip`, ...).
    pub fn from_name(name: &str) -> Self {
        match name.trim() {
            "mtk" => DsaTagger::Mtk,
            "qca" => DsaTagger::Qca,
            "gswip" => DsaTagger::Gswip,
            other => DsaTagger::Other(other.to_string()),
        }
    }
}

/// A PPPoE session as the data path must encapsulate it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PppoeSession {
    /// Session id, host order of the value on the wire.
    pub sid: u16,
    /// The access concentrator's MAC: destination of every frame of the session.
    pub peer_mac: Mac,
    /// MAC of the session's Ethernet device: source of every frame of the session.
    pub local_mac: Mac,
}

/// A DSA port as the data path must tag it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DsaPort {
    /// Tag format of the conduit.
    pub tagger: DsaTagger,
    /// Switch port index.
    pub port: u16,
}

/// The layer-2 encapsulation between the Ethernet header of the lowest device and the IP packet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct L2Encap {
    /// VLAN tags, outermost first, at most two.
    pub vlans: Vec<(VlanProto, u16)>,
    /// PPPoE session, inside the VLAN tags.
    pub pppoe: Option<PppoeSession>,
    /// DSA tag, outside everything (right after the source MAC).
    pub dsa: Option<DsaPort>,
}

/// Where an L3 device really ends: the lowest device and what lies between.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LowerPath {
    /// The device frames really enter or leave by (attach point of the data path).
    pub lowest_ifindex: u32,
    /// Encapsulation to pop on ingress / push on egress at the lowest device.
    pub encap: L2Encap,
    /// Largest IP packet the path carries (L3 MTU): the minimum over the path.
    pub mtu: u32,
    /// Every device on the path, from the L3 device down to the lowest one (for invalidation).
    pub devices: Vec<u32>,
    /// MAC of the device that writes the Ethernet header (the L3 device, or the PPPoE session's
    /// Ethernet device): the source MAC of frames sent along this path.
    pub src_mac: Option<Mac>,
    /// Destination MAC the path itself fixes (the PPPoE peer), if any.
    pub dst_mac: Option<Mac>,
}

/// Why a device cannot be walked (the flow stays in the kernel).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

/// A bridge's global VLAN settings (IFLA_BR_*).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeConf {
    /// `vlan_filtering`: FDB and egress are per VLAN.
    pub vlan_filtering: bool,
    /// Protocol of the tags the bridge filters on.
    pub vlan_protocol: VlanProto,
    /// VLAN new ports get as PVID.
    pub default_pvid: u16,
}

impl Default for BridgeConf {
    fn default() -> Self {
        BridgeConf {
            vlan_filtering: false,
            vlan_protocol: VlanProto::Dot1Q,
            default_pvid: 1,
        }
    }
}

/// One VLAN of a bridge port (or of the bridge itself) under VLAN filtering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BridgeVlan {
    /// VLAN id.
    pub vid: u16,
    /// Untagged ingress frames get this VLAN.
    pub pvid: bool,
    /// Frames of this VLAN leave the port without a tag.
    pub untagged: bool,
}

/// One link (network device) of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub ifindex: u32,
    /// Interface name.
    pub name: String,
    /// What it is.
    pub kind: LinkKind,
    /// Bridge (or other master) it is enslaved to.
    pub master: Option<u32>,
    /// IFLA_LINK when it names another device of this namespace (VLAN parent, DSA conduit).
    pub lower: Option<u32>,
    /// Device MTU.
    pub mtu: u32,
    /// Hardware address, if it has a 6-byte one.
    pub mac: Option<Mac>,
    /// Administratively up (IFF_UP).
    pub admin_up: bool,
    /// Operationally usable (oper state up or unknown, not down/lowerlayerdown/notpresent).
    pub oper_up: bool,
    /// IFLA_PHYS_PORT_NAME ("p<N>" on DSA user ports).
    pub phys_port_name: Option<String>,
    /// rtnetlink kind "dsa" with IFLA_DSA_CONDUIT (kernels that report it).
    pub dsa_conduit_attr: Option<u32>,
    /// For a DSA conduit: the tagger its switch uses (sysfs `dsa/tagging`).
    pub dsa_tagger: Option<DsaTagger>,
    /// For a bridge: its VLAN settings.
    pub bridge: Option<BridgeConf>,
    /// For a bridge port or a bridge under VLAN filtering: its VLAN membership.
    pub vlans: Vec<BridgeVlan>,
}

impl Link {
    /// A link of `kind` that is up, with MTU 1500 and no MAC, master or lower link.
    pub fn new(ifindex: u32, name: impl Into<String>, kind: LinkKind) -> Self {
        let bridge = (kind == LinkKind::Bridge).then(BridgeConf::default);
        Link {
            ifindex,
            name: name.into(),
            kind,
            master: None,
            lower: None,
            mtu: 1500,
            mac: None,
            admin_up: true,
            oper_up: true,
            phys_port_name: None,
            dsa_conduit_attr: None,
            dsa_tagger: None,
            bridge,
            vlans: Vec::new(),
        }
    }

    /// Sets the MTU.
    pub fn with_mtu(mut self, mtu: u32) -> Self {
        self.mtu = mtu;
        self
    }

    /// Sets the MAC.
    pub fn with_mac(mut self, mac: Mac) -> Self {
        self.mac = Some(mac);
        self
    }

    /// Sets the lower link (IFLA_LINK).
    pub fn with_lower(mut self, lower: u32) -> Self {
        self.lower = Some(lower);
        self
    }

    /// Sets the master (bridge).
    pub fn with_master(mut self, master: u32) -> Self {
        self.master = Some(master);
        self
    }

    /// Sets IFLA_PHYS_PORT_NAME.
    pub fn with_phys_port_name(mut self, name: impl Into<String>) -> Self {
        self.phys_port_name = Some(name.into());
        self
    }

    /// Sets the bridge VLAN settings (bridges only).
    pub fn with_bridge(mut self, conf: BridgeConf) -> Self {
        self.bridge = Some(conf);
        self
    }

    /// Sets the bridge VLAN membership (bridge ports, or the bridge itself).
    pub fn with_vlans(mut self, vlans: Vec<BridgeVlan>) -> Self {
        self.vlans = vlans;
        self
    }

    /// Sets the administrative and operational state.
    pub fn with_state(mut self, admin_up: bool, oper_up: bool) -> Self {
        self.admin_up = admin_up;
        self.oper_up = oper_up;
        self
    }

    fn usable(&self) -> bool {
        self.admin_up && self.oper_up
    }
}

/// An address configured on a link of the router.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Address {
    /// Link it is on.
    pub ifindex: u32,
    /// The router's own address.
    pub ip: IpAddr,
    /// Prefix length.
    pub prefix_len: u8,
}

/// One learned or static entry of a bridge's forwarding database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FdbEntry {
    /// The bridge.
    pub bridge: u32,
    /// The port the MAC sits behind.
    pub port: u32,
    /// The station's MAC.
    pub mac: Mac,
    /// VLAN of the entry (VLAN-filtering bridges), `None` otherwise.
    pub vlan: Option<u16>,
}

/// The network model: links, addresses, bridge FDB, and where to read procfs/sysfs.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    links: HashMap<u32, Link>,
    addrs: Vec<Address>,
    /// (bridge, mac, vid or 0) -> port.
    fdb: HashMap<(u32, Mac, u16), u32>,
    fs: HostFs,
}

impl Topology {
    /// A model from known parts (fixtures), reading procfs/sysfs on the running system.
    pub fn from_parts(links: Vec<Link>, addrs: Vec<Address>) -> Self {
        Self::from_parts_in(links, addrs, HostFs::system())
    }

    /// A model from known parts whose procfs/sysfs lives under `fs` (fixtures).
    ///
    /// DSA user ports are recognised here as in [`Topology::dump`]: a plain Ethernet link whose
    /// lower link is a DSA conduit and whose port name is "p<N>".
    pub fn from_parts_in(links: Vec<Link>, addrs: Vec<Address>, fs: HostFs) -> Self {
        let mut topo = Topology {
            links: links.into_iter().map(|l| (l.ifindex, l)).collect(),
            addrs,
            fdb: HashMap::new(),
            fs,
        };
        topo.refresh_dsa_all();
        topo
    }

    /// Adds or replaces FDB entries.
    pub fn with_fdb(mut self, entries: impl IntoIterator<Item = FdbEntry>) -> Self {
        for e in entries {
            self.set_fdb(e);
        }
        self
    }

    /// Where procfs/sysfs are read from.
    pub fn fs(&self) -> &HostFs {
        &self.fs
    }

    /// The link with this ifindex.
    pub fn link(&self, ifindex: u32) -> Option<&Link> {
        self.links.get(&ifindex)
    }

    /// The link with this name.
    pub fn link_by_name(&self, name: &str) -> Option<&Link> {
        self.links.values().find(|l| l.name == name)
    }

    /// All links, in no particular order.
    pub fn links(&self) -> impl Iterator<Item = &Link> {
        self.links.values()
    }

    /// All addresses of the router.
    pub fn addresses(&self) -> &[Address] {
        &self.addrs
    }

    /// Whether `ip` is one of the router's own addresses (traffic to/from it is not forwarded).
    pub fn is_local(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || self.addrs.iter().any(|a| a.ip == ip)
    }

    /// The bridge's own VLAN for frames it sends itself (its PVID), under VLAN filtering.
    fn bridge_pvid(&self, bridge: &Link) -> u16 {
        bridge
            .vlans
            .iter()
            .find(|v| v.pvid)
            .map(|v| v.vid)
            .or_else(|| bridge.bridge.as_ref().map(|b| b.default_pvid))
            .unwrap_or(1)
    }

    /// The port of `bridge` that frames to `mac` leave by, and the VLAN tag they carry there
    /// (`None`: untagged), for frames the bridge device itself sends.
    ///
    /// Without VLAN filtering the FDB is looked up without VLAN and frames leave as they are.
    /// With VLAN filtering, frames of the bridge device are in the bridge's PVID; the port must
    /// be a member of it (tagged or untagged). No FDB entry (the frame would be flooded), a
    /// local entry, or a port outside the VLAN are refused.
    pub fn bridge_port_for(
        &self,
        bridge_ifindex: u32,
        mac: Mac,
    ) -> Result<(u32, Option<u16>), Unsupported> {
        let bridge = self
            .links
            .get(&bridge_ifindex)
            .ok_or_else(|| Unsupported(format!("bridge ifindex {bridge_ifindex} unknown")))?;
        let vid = match &bridge.bridge {
            Some(conf) if conf.vlan_filtering => Some(self.bridge_pvid(bridge)),
            _ => None,
        };
        self.bridge_egress(bridge, mac, vid)
    }

    /// FDB lookup plus the port's egress policy for `vid` (`None`: bridge without filtering).
    fn bridge_egress(
        &self,
        bridge: &Link,
        mac: Mac,
        vid: Option<u16>,
    ) -> Result<(u32, Option<u16>), Unsupported> {
        let port = self
            .fdb
            .get(&(bridge.ifindex, mac, vid.unwrap_or(0)))
            .copied()
            .ok_or_else(|| {
                Unsupported(format!(
                    "{}: no FDB entry for {}{} (the bridge would flood)",
                    bridge.name,
                    fmt_mac(&mac),
                    vid.map(|v| format!(" vlan {v}")).unwrap_or_default()
                ))
            })?;
        if port == bridge.ifindex {
            return Err(Unsupported(format!(
                "{}: {} is the bridge's own address",
                bridge.name,
                fmt_mac(&mac)
            )));
        }
        let Some(vid) = vid else {
            return Ok((port, None));
        };
        let port_link = self
            .links
            .get(&port)
            .ok_or_else(|| Unsupported(format!("bridge port ifindex {port} unknown")))?;
        match port_link.vlans.iter().find(|v| v.vid == vid) {
            Some(v) if v.untagged => Ok((port, None)),
            Some(_) => Ok((port, Some(vid))),
            None => Err(Unsupported(format!(
                "{}: port {} is not a member of vlan {vid}",
                bridge.name, port_link.name
            ))),
        }
    }

    /// Walks the L3 device `ifindex` down to its lowest device without knowing the destination
    /// MAC: VLAN → parent, PPPoE → session's Ethernet device, DSA user port → conduit. A bridge on
    /// the way is refused (its port depends on the destination; use [`Topology::egress_path`]).
    pub fn lower_path(&self, ifindex: u32) -> Result<LowerPath, Unsupported> {
        self.egress_path(ifindex, None)
    }

    /// Walks `ifindex` down to its lowest device for frames to `dst_mac` (needed to cross a
    /// bridge; the PPPoE peer replaces it below a PPPoE device). One [`Walk::step`] per device.
    pub fn egress_path(
        &self,
        ifindex: u32,
        dst_mac: Option<Mac>,
    ) -> Result<LowerPath, Unsupported> {
        let top = self
            .links
            .get(&ifindex)
            .ok_or_else(|| Unsupported(format!("ifindex {ifindex} unknown")))?;
        let mut walk = Walk::new(self, top, dst_mac);
        let mut cur = top;
        for _ in 0..MAX_DEPTH {
            let next = match walk.step(cur)? {
                Step::Done(path) => return Ok(path),
                Step::Down(next) => next,
            };
            if walk.devices.contains(&next.ifindex) {
                return Err(Unsupported(format!("{}: device loop", top.name)));
            }
            walk.devices.push(next.ifindex);
            cur = next;
        }
        Err(Unsupported(format!(
            "{}: device stack deeper than {MAX_DEPTH}",
            top.name
        )))
    }

    fn lower_of(&self, link: &Link) -> Result<&Link, Unsupported> {
        link.lower
            .and_then(|l| self.links.get(&l))
            .ok_or_else(|| Unsupported(format!("{}: lower device unknown", link.name)))
    }

    /// Every lowest device below `ifindex`, for attaching the data path: a bridge contributes
    /// the lowest devices of all its ports. Devices that cannot be walked are left out.
    pub fn attach_points(&self, ifindex: u32) -> Vec<u32> {
        let mut out = Vec::new();
        self.collect_attach_points(ifindex, 0, &mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    fn collect_attach_points(&self, ifindex: u32, depth: usize, out: &mut Vec<u32>) {
        let Some(link) = self.links.get(&ifindex) else {
            return;
        };
        if depth > MAX_DEPTH {
            return;
        }
        match &link.kind {
            LinkKind::Bridge => {
                for port in self.links.values().filter(|l| l.master == Some(ifindex)) {
                    self.collect_attach_points(port.ifindex, depth + 1, out);
                }
            }
            LinkKind::Vlan { .. } => {
                if let Some(lower) = link.lower {
                    self.collect_attach_points(lower, depth + 1, out);
                }
            }
            LinkKind::DsaUser { conduit, .. } => out.push(*conduit),
            LinkKind::Ppp => {
                if let Ok(path) = self.lower_path(ifindex) {
                    out.push(path.lowest_ifindex);
                }
            }
            LinkKind::Ethernet | LinkKind::Veth => out.push(ifindex),
            LinkKind::Other(_) => {}
        }
    }

    fn set_fdb(&mut self, e: FdbEntry) {
        self.fdb
            .insert((e.bridge, e.mac, e.vlan.unwrap_or(0)), e.port);
    }

    fn remove_fdb(&mut self, bridge: u32, mac: Mac, vlan: Option<u16>) {
        self.fdb.remove(&(bridge, mac, vlan.unwrap_or(0)));
    }

    /// FDB entries of `bridge` (for diagnostics and tests).
    pub fn fdb_entries(&self, bridge: u32) -> Vec<FdbEntry> {
        self.fdb
            .iter()
            .filter(|((b, _, _), _)| *b == bridge)
            .map(|(&(bridge, mac, vid), &port)| FdbEntry {
                bridge,
                port,
                mac,
                vlan: (vid != 0).then_some(vid),
            })
            .collect()
    }

    /// Re-derives DSA roles of every link (after a dump or a batch of fixtures).
    fn refresh_dsa_all(&mut self) {
        let ids: Vec<u32> = self.links.keys().copied().collect();
        for id in ids {
            self.refresh_dsa(id);
        }
    }

    /// Recognises a DSA user port (and reads its conduit's tagger): an Ethernet link whose lower
    /// link is a conduit (sysfs `dsa/tagging` exists, or rtnetlink reported IFLA_DSA_CONDUIT)
    /// and whose `phys_port_name` is "p<N>" (DSA's ndo_get_phys_port_name prints the port index).
    fn refresh_dsa(&mut self, ifindex: u32) {
        let Some(link) = self.links.get(&ifindex) else {
            return;
        };
        let explicit_dsa = link.kind == LinkKind::Other("dsa".into());
        if link.kind != LinkKind::Ethernet && !explicit_dsa {
            return;
        }
        let Some(conduit) = link.dsa_conduit_attr.or(link.lower) else {
            return;
        };
        if conduit == ifindex {
            return;
        }
        let port = link
            .phys_port_name
            .as_deref()
            .and_then(|n| n.strip_prefix('p'))
            .and_then(|n| n.parse::<u16>().ok());
        let Some(conduit_name) = self.links.get(&conduit).map(|c| c.name.clone()) else {
            return;
        };
        let tagger = self
            .fs
            .dsa_tagging(&conduit_name)
            .map(|t| DsaTagger::from_name(&t));
        if tagger.is_none() && !explicit_dsa {
            return;
        }
        if let Some(c) = self.links.get_mut(&conduit) {
            if tagger.is_some() {
                c.dsa_tagger = tagger;
            }
        }
        if let Some(link) = self.links.get_mut(&ifindex) {
            link.kind = match port {
                Some(port) => LinkKind::DsaUser { conduit, port },
                None => LinkKind::Other("dsa (no port index)".into()),
            };
        }
    }
}

/// What one step of [`Topology::egress_path`] found.
enum Step<'t> {
    /// Go on with this (lower) device.
    Down(&'t Link),
    /// The lowest device is reached.
    Done(LowerPath),
}

/// The state of one walk down a device stack, from the L3 device (`top`) to the lowest one.
struct Walk<'t> {
    topo: &'t Topology,
    top: &'t Link,
    /// VLAN tags in the order devices push them (top first = innermost).
    tags: Vec<(VlanProto, u16)>,
    pppoe: Option<PppoeSession>,
    dsa: Option<DsaPort>,
    /// The frame's destination MAC (the neighbour's, or the PPPoE peer's below a PPP device).
    dst_mac: Option<Mac>,
    mtu: u32,
    devices: Vec<u32>,
    /// The device that writes the Ethernet header, when it is not `top` (PPPoE's Ethernet).
    header_dev: Option<&'t Link>,
    /// Set while the next device is a DSA conduit: DSA sizes the conduit for its tag.
    skip_mtu: bool,
}

impl<'t> Walk<'t> {
    fn new(topo: &'t Topology, top: &'t Link, dst_mac: Option<Mac>) -> Self {
        Walk {
            topo,
            top,
            tags: Vec::new(),
            pppoe: None,
            dsa: None,
            dst_mac,
            mtu: top.mtu,
            devices: vec![top.ifindex],
            header_dev: None,
            skip_mtu: false,
        }
    }

    /// Accounts `cur` (state, MTU) and decides where the walk goes next.
    fn step(&mut self, cur: &'t Link) -> Result<Step<'t>, Unsupported> {
        if !cur.usable() {
            return Err(Unsupported(format!("{} is down", cur.name)));
        }
        if !std::mem::take(&mut self.skip_mtu) {
            // Below a PPP device every frame carries the PPPoE header and PPP protocol.
            let overhead = if self.pppoe.is_some() && !matches!(cur.kind, LinkKind::Ppp) {
                PPPOE_OVERHEAD
            } else {
                0
            };
            self.mtu = self.mtu.min(cur.mtu.saturating_sub(overhead));
        }
        let next = match &cur.kind {
            LinkKind::Ethernet | LinkKind::Veth => return self.finish(cur).map(Step::Done),
            LinkKind::Vlan { id, proto } => {
                self.tags.push((*proto, *id));
                self.topo.lower_of(cur)?
            }
            LinkKind::DsaUser { conduit, port } => self.dsa_user(cur, *conduit, *port)?,
            LinkKind::Ppp => self.ppp(cur)?,
            LinkKind::Bridge => self.bridge(cur)?,
            LinkKind::Other(kind) => {
                return Err(Unsupported(format!(
                    "{}: {kind} devices are not offloaded",
                    cur.name
                )))
            }
        };
        Ok(Step::Down(next))
    }

    /// The lowest device `cur` ends the walk.
    fn finish(&mut self, cur: &Link) -> Result<LowerPath, Unsupported> {
        if self.tags.len() > 2 {
            return Err(Unsupported(format!(
                "{}: {} VLAN tags (at most 2 are offloaded)",
                self.top.name,
                self.tags.len()
            )));
        }
        let mut vlans = std::mem::take(&mut self.tags);
        vlans.reverse();
        let pppoe = self.pppoe.take();
        let dst_mac = pppoe.as_ref().map(|p| p.peer_mac);
        Ok(LowerPath {
            lowest_ifindex: cur.ifindex,
            encap: L2Encap {
                vlans,
                pppoe,
                dsa: self.dsa.take(),
            },
            mtu: self.mtu,
            devices: std::mem::take(&mut self.devices),
            src_mac: self.header_dev.unwrap_or(self.top).mac,
            dst_mac,
        })
    }

    /// A DSA user port: its frames leave by the conduit with a tag for `port`.
    fn dsa_user(&mut self, cur: &Link, conduit: u32, port: u16) -> Result<&'t Link, Unsupported> {
        if self.dsa.is_some() {
            return Err(Unsupported(format!(
                "{}: cascaded DSA switches are not offloaded",
                cur.name
            )));
        }
        let conduit_link =
            self.topo.links.get(&conduit).ok_or_else(|| {
                Unsupported(format!("{}: DSA conduit {conduit} unknown", cur.name))
            })?;
        let tagger = conduit_link.dsa_tagger.clone().ok_or_else(|| {
            Unsupported(format!(
                "{}: tagger of DSA conduit {} unknown",
                cur.name, conduit_link.name
            ))
        })?;
        self.dsa = Some(DsaPort { tagger, port });
        self.skip_mtu = true;
        Ok(conduit_link)
    }

    /// A PPP device at the top: its PPPoE session's Ethernet device, with the session header
    /// to push and the access concentrator as the destination.
    fn ppp(&mut self, cur: &Link) -> Result<&'t Link, Unsupported> {
        if cur.ifindex != self.top.ifindex || self.pppoe.is_some() {
            return Err(Unsupported(format!(
                "{}: PPP below another device is not offloaded",
                cur.name
            )));
        }
        let session = pppoe::session_for(&self.topo.fs, &cur.name, |n| {
            self.topo.link_by_name(n).is_some()
        })?;
        let eth = self.topo.link_by_name(&session.device).ok_or_else(|| {
            Unsupported(format!(
                "{}: PPPoE device {} unknown",
                cur.name, session.device
            ))
        })?;
        let local_mac = eth
            .mac
            .ok_or_else(|| Unsupported(format!("{}: {} has no MAC", cur.name, eth.name)))?;
        self.pppoe = Some(PppoeSession {
            sid: session.sid,
            peer_mac: session.peer_mac,
            local_mac,
        });
        self.dst_mac = Some(session.peer_mac);
        self.header_dev = Some(eth);
        Ok(eth)
    }

    /// A bridge: the port its FDB has for the destination MAC, with the port's VLAN egress
    /// policy under VLAN filtering.
    fn bridge(&mut self, cur: &Link) -> Result<&'t Link, Unsupported> {
        let mac = self.dst_mac.ok_or_else(|| {
            Unsupported(format!(
                "{}: a bridge's egress port depends on the destination MAC",
                cur.name
            ))
        })?;
        let filtering = cur.bridge.as_ref().filter(|c| c.vlan_filtering);
        let vid = match filtering {
            // The tag the device above pushed is the frame's VLAN inside a filtering bridge;
            // untagged frames of the bridge device get its PVID.
            Some(conf) => match self.tags.last() {
                Some(&(proto, id)) if proto == conf.vlan_protocol => {
                    self.tags.pop();
                    Some(id)
                }
                Some(_) => {
                    return Err(Unsupported(format!(
                        "{}: tag protocol differs from the bridge's",
                        cur.name
                    )))
                }
                None => Some(self.topo.bridge_pvid(cur)),
            },
            None => None,
        };
        let (port, tag) = self.topo.bridge_egress(cur, mac, vid)?;
        if let (Some(conf), Some(vid)) = (filtering, tag) {
            self.tags.push((conf.vlan_protocol, vid));
        }
        self.topo
            .links
            .get(&port)
            .ok_or_else(|| Unsupported(format!("bridge port {port} unknown")))
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case).
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A 6-byte MAC from a netlink address attribute.
fn mac_from(bytes: &[u8]) -> Option<Mac> {
    bytes.try_into().ok()
}

//! Test-side frame building and flow installation for the offload tests and benches.
//!
//! Independent of the code under test: IP/TCP/UDP packets (and their checksums) come from the
//! `etherparse` builder, L2 encapsulations are encoded here from the kernel taggers' formats
//! (net/dsa/tag_{mtk,qca,gswip}.c), and `inet_csum` is a plain RFC 1071 sum.

use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;

use bpfqos::dataplane::abi;
use bpfqos::nl;
use etherparse::PacketBuilder;
use libbpf_rs::MapCore;
use libbpf_rs::MapFlags;
use libbpf_rs::Object;

pub const MAC_CLIENT: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
pub const MAC_ROUTER_IN: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
pub const MAC_ROUTER_OUT: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x01, 0x02];
pub const MAC_SERVER: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x01, 0x03];

/// DSA tag kind with the switch port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dsa {
    None,
    Mtk(u8),
    Qca(u8),
    Gswip(u8),
}

/// An L2 encapsulation: DSA tag, VLAN tags (TPID, TCI) outer first, PPPoE session id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encap {
    pub name: &'static str,
    pub dsa: Dsa,
    pub vlans: Vec<(u16, u16)>,
    pub pppoe: Option<u16>,
}

impl Encap {
    pub fn plain() -> Self {
        Self {
            name: "plain",
            dsa: Dsa::None,
            vlans: vec![],
            pppoe: None,
        }
    }
    pub fn vlan(id: u16) -> Self {
        Self {
            name: "vlan",
            vlans: vec![(0x8100, id)],
            ..Self::plain()
        }
    }
    pub fn qinq(outer: u16, inner: u16) -> Self {
        Self {
            name: "qinq",
            vlans: vec![(0x88a8, outer), (0x8100, inner)],
            ..Self::plain()
        }
    }
    pub fn pppoe(sid: u16) -> Self {
        Self {
            name: "pppoe",
            pppoe: Some(sid),
            ..Self::plain()
        }
    }
    pub fn vlan_pppoe(id: u16, sid: u16) -> Self {
        Self {
            name: "vlan+pppoe",
            vlans: vec![(0x8100, id)],
            pppoe: Some(sid),
            ..Self::plain()
        }
    }
    pub fn mtk(port: u8) -> Self {
        Self {
            name: "mtk",
            dsa: Dsa::Mtk(port),
            ..Self::plain()
        }
    }
    pub fn qca(port: u8) -> Self {
        Self {
            name: "qca",
            dsa: Dsa::Qca(port),
            ..Self::plain()
        }
    }
    pub fn gswip(port: u8) -> Self {
        Self {
            name: "gswip",
            dsa: Dsa::Gswip(port),
            ..Self::plain()
        }
    }
    pub fn with_vlan(mut self, tpid: u16, id: u16) -> Self {
        self.vlans.push((tpid, id));
        self
    }
    /// The eight encapsulations of the case matrix.
    pub fn matrix() -> Vec<Encap> {
        vec![
            Self::plain(),
            Self::vlan(7),
            Self::qinq(100, 7),
            Self::pppoe(0x1234),
            Self::vlan_pppoe(7, 0x0bad),
            Self::mtk(3),
            Self::qca(2),
            Self::gswip(4),
        ]
    }
    pub fn dsa_proto(&self) -> u8 {
        match self.dsa {
            Dsa::None => 0,
            Dsa::Mtk(_) => 1,
            Dsa::Qca(_) => 2,
            Dsa::Gswip(_) => 3,
        }
    }
    pub fn dsa_port(&self) -> u8 {
        match self.dsa {
            Dsa::None => 0,
            Dsa::Mtk(p) | Dsa::Qca(p) | Dsa::Gswip(p) => p,
        }
    }
    /// The ABI view: in keys the VID only, on egress the TCI as given.
    pub fn l2(&self, key: bool) -> abi::L2Encap {
        let mut l2 = abi::L2Encap::default();
        for (i, (tpid, tci)) in self.vlans.iter().enumerate() {
            l2.vlan_proto[i] = tpid.to_be();
            l2.vlan_tci[i] = if key { tci & 0x0fff } else { *tci }.to_be();
        }
        if let Some(sid) = self.pppoe {
            l2.pppoe = 1;
            l2.pppoe_sid = sid.to_be();
        }
        l2.dsa_port = self.dsa_port();
        l2
    }
}

/// Which direction a DSA tag is encoded for: from the switch (RX) or to it (TX).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Rx,
    Tx,
}

/// Wraps an IP packet in Ethernet + `e`.
pub fn wrap(dst: [u8; 6], src: [u8; 6], e: &Encap, dir: Dir, ip: &[u8]) -> Vec<u8> {
    let ipv6 = ip[0] >> 4 == 6;
    let mut f = Vec::with_capacity(ip.len() + 40);
    if let Dsa::Gswip(p) = e.dsa {
        match dir {
            // 8-byte PMAC header in front of the frame; source port in byte 7 bits 6:4.
            Dir::Rx => f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, p << 4]),
            // SLPID_CPU, DPID_ELAN, PORT_MAP_EN|SEL, BIT(port+1)&0x7e | DPID_EN
            Dir::Tx => f.extend_from_slice(&[2, 0, 0xc0, ((1u8 << (p + 1)) & 0x7e) | 1]),
        }
    }
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    let mut vlans: &[(u16, u16)] = &e.vlans;
    match (e.dsa, dir) {
        // RX: 4 bytes inserted after SA, source port in bits 2:0 of the first 16 bits.
        (Dsa::Mtk(p), Dir::Rx) => f.extend_from_slice(&[0x00, p, 0x5a, 0xa5]),
        (Dsa::Mtk(p), Dir::Tx) => {
            if let Some(((tpid, tci), rest)) = vlans.split_first() {
                let kind = if *tpid == 0x88a8 { 2 } else { 1 };
                f.extend_from_slice(&[kind, 1 << p]);
                f.extend_from_slice(&tci.to_be_bytes());
                vlans = rest;
            } else {
                f.extend_from_slice(&[0, 1 << p, 0, 0]);
            }
        }
        (Dsa::Qca(p), Dir::Rx) => f.extend_from_slice(&((2u16 << 14) | u16::from(p)).to_be_bytes()),
        (Dsa::Qca(p), Dir::Tx) => {
            f.extend_from_slice(&((2u16 << 14) | (1 << 7) | (1u16 << p)).to_be_bytes())
        }
        _ => {}
    }
    for (tpid, tci) in vlans {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    if let Some(sid) = e.pppoe {
        f.extend_from_slice(&0x8864u16.to_be_bytes());
        f.extend_from_slice(&[0x11, 0x00]);
        f.extend_from_slice(&sid.to_be_bytes());
        f.extend_from_slice(&((ip.len() + 2) as u16).to_be_bytes());
        f.extend_from_slice(&(if ipv6 { 0x0057u16 } else { 0x0021 }).to_be_bytes());
    } else {
        f.extend_from_slice(&(if ipv6 { 0x86ddu16 } else { 0x0800 }).to_be_bytes());
    }
    f.extend_from_slice(ip);
    f
}

/// A connection's 5-tuple as seen in one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub udp: bool,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

impl Tuple {
    pub fn v4(udp: bool) -> Self {
        Self {
            udp,
            src: IpAddr::V4(Ipv4Addr::new(198, 18, 1, 10)),
            dst: IpAddr::V4(Ipv4Addr::new(198, 19, 2, 20)),
            sport: 40000,
            dport: 443,
        }
    }
    pub fn v6(udp: bool) -> Self {
        Self {
            udp,
            src: IpAddr::V6("fd00:1::10".parse().unwrap()),
            dst: IpAddr::V6("fd00:2::20".parse().unwrap()),
            sport: 40000,
            dport: 443,
        }
    }
    pub fn is_v6(&self) -> bool {
        self.src.is_ipv6()
    }
    /// SNAT (masquerade-like): new source address and port.
    pub fn snat(&self) -> Self {
        let src = match self.src {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1)),
            IpAddr::V6(_) => IpAddr::V6("fd00:ffff::1".parse().unwrap()),
        };
        Self {
            src,
            sport: 61000,
            ..*self
        }
    }
    /// DNAT (port forward): new destination address and port.
    pub fn dnat(&self) -> Self {
        let dst = match self.dst {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(198, 18, 7, 7)),
            IpAddr::V6(_) => IpAddr::V6("fd00:7::7".parse().unwrap()),
        };
        Self {
            dst,
            dport: 8443,
            ..*self
        }
    }
}

/// TCP flag choice for test packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tcp {
    Ack,
    Fin,
    Rst,
}

fn v4(a: IpAddr) -> [u8; 4] {
    match a {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => panic!("not v4"),
    }
}
fn v6(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(_) => panic!("not v6"),
    }
}

/// An IP packet (no L2) built by etherparse, checksums computed from scratch.
pub fn ip_packet(t: &Tuple, ttl: u8, flags: Tcp, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    macro_rules! l4 {
        ($b:expr) => {
            if t.udp {
                $b.udp(t.sport, t.dport).write(&mut out, payload).unwrap()
            } else {
                let b = $b
                    .tcp(t.sport, t.dport, 0x1000_0000, 64240)
                    .ack(0x2000_0000);
                match flags {
                    Tcp::Ack => b.write(&mut out, payload).unwrap(),
                    Tcp::Fin => b.fin().write(&mut out, payload).unwrap(),
                    Tcp::Rst => b.rst().write(&mut out, payload).unwrap(),
                }
            }
        };
    }
    if t.is_v6() {
        l4!(PacketBuilder::ipv6(v6(t.src), v6(t.dst), ttl));
    } else {
        l4!(PacketBuilder::ipv4(v4(t.src), v4(t.dst), ttl));
    }
    out
}

/// RFC 1071 Internet checksum over `data` (odd length padded), not complemented... returns the
/// final checksum value (complemented sum).
pub fn inet_csum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Verifies the IPv4 header checksum and the TCP/UDP checksum of an IP packet independently.
/// Returns (ip_header_ok, l4_ok); a zero IPv4 UDP checksum counts as ok.
pub fn verify_checksums(ip: &[u8]) -> (bool, bool) {
    let (pseudo, l4, proto) = if ip[0] >> 4 == 4 {
        let ihl = usize::from(ip[0] & 0xf) * 4;
        let tot = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let l4 = &ip[ihl..tot];
        let mut ps = Vec::new();
        ps.extend_from_slice(&ip[12..20]);
        ps.extend_from_slice(&[0, ip[9]]);
        ps.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        (ps, l4, ip[9])
    } else {
        let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        let l4 = &ip[40..40 + plen];
        let mut ps = Vec::new();
        ps.extend_from_slice(&ip[8..40]);
        ps.extend_from_slice(&(l4.len() as u32).to_be_bytes());
        ps.extend_from_slice(&[0, 0, 0, ip[6]]);
        (ps, l4, ip[6])
    };
    let hdr_ok = ip[0] >> 4 == 6 || inet_csum(&ip[..20]) == 0;
    if proto == 17 && ip[0] >> 4 == 4 && l4[6] == 0 && l4[7] == 0 {
        return (hdr_ok, true);
    }
    let mut all = pseudo;
    all.extend_from_slice(l4);
    (hdr_ok, inet_csum(&all) == 0)
}

/// One direction of an offloaded flow, as the daemon would install it.
#[derive(Clone, Debug)]
pub struct FlowSpec {
    pub ingress: u32,
    pub in_encap: Encap,
    pub orig: Tuple,
    pub egress: u32,
    pub out_encap: Encap,
    pub new: Tuple,
    pub mtu: u16,
    pub action: u8,
    /// The entry's `shaper` (FORWARD_SHAPED).
    pub shaper: u16,
    /// The entry's `nh.l2_len`: None writes [`FlowSpec::out_l2_len`]; Some(n) writes n (an
    /// entry as a daemon predating the field left it: 0).
    pub l2_len: Option<u8>,
}

fn tuple4(t: &Tuple) -> (Ipv4Addr, Ipv4Addr, u16, u16) {
    (v4(t.src).into(), v4(t.dst).into(), t.sport, t.dport)
}
fn tuple6(t: &Tuple) -> (Ipv6Addr, Ipv6Addr, u16, u16) {
    (v6(t.src).into(), v6(t.dst).into(), t.sport, t.dport)
}

impl FlowSpec {
    pub fn new(
        ingress: u32,
        in_encap: Encap,
        orig: Tuple,
        egress: u32,
        out_encap: Encap,
        new: Tuple,
    ) -> Self {
        Self {
            ingress,
            in_encap,
            orig,
            egress,
            out_encap,
            new,
            mtu: 1500,
            action: 1,
            shaper: 0,
            l2_len: None,
        }
    }

    pub fn nexthop(&self) -> abi::NextHop {
        abi::NextHop {
            ifindex: self.egress,
            h_dest: MAC_SERVER,
            h_source: MAC_ROUTER_OUT,
            l2: self.out_encap.l2(false),
            mtu: self.mtu,
            dsa_proto: self.out_encap.dsa_proto(),
            l2_len: self.l2_len.unwrap_or_else(|| self.out_l2_len()),
        }
    }

    /// Length of the egress L2 header, from this file's own frame builder (not the product's
    /// abi::l2_header_len, which the tests check against it).
    pub fn out_l2_len(&self) -> u8 {
        let ip = [if self.new.is_v6() { 0x60 } else { 0x45 }];
        let hdr = wrap(MAC_SERVER, MAC_ROUTER_OUT, &self.out_encap, Dir::Tx, &ip).len() - 1;
        u8::try_from(hdr).expect("L2 header length")
    }

    /// Entry map name, key bytes and entry bytes (the key included).
    pub fn entry(&self) -> (&'static str, Vec<u8>, Vec<u8>) {
        let proto = if self.orig.udp { 17 } else { 6 };
        if self.orig.is_v6() {
            let (s, d, sp, dp) = tuple6(&self.orig);
            let key = abi::FlowKey6 {
                ifindex: self.ingress,
                l2: self.in_encap.l2(true),
                saddr: abi::ip6(s),
                daddr: abi::ip6(d),
                sport: sp.to_be(),
                dport: dp.to_be(),
                proto,
                pad: [0; 3],
            };
            let val = abi::Flow6 {
                key,
                nh: self.nexthop(),
                nat: abi::nat6(tuple6(&self.orig), tuple6(&self.new)),
                action: self.action,
                shaper: self.shaper,
                ..Default::default()
            };
            (
                abi::FLOWS6_MAP,
                abi::bytes_of(&key).to_vec(),
                abi::bytes_of(&val).to_vec(),
            )
        } else {
            let (s, d, sp, dp) = tuple4(&self.orig);
            let key = abi::FlowKey4 {
                ifindex: self.ingress,
                l2: self.in_encap.l2(true),
                saddr: abi::ip4(s),
                daddr: abi::ip4(d),
                sport: sp.to_be(),
                dport: dp.to_be(),
                proto,
                pad: [0; 3],
            };
            let val = abi::Flow4 {
                key,
                nh: self.nexthop(),
                nat: abi::nat4(tuple4(&self.orig), tuple4(&self.new)),
                action: self.action,
                shaper: self.shaper,
                ..Default::default()
            };
            (
                abi::FLOWS4_MAP,
                abi::bytes_of(&key).to_vec(),
                abi::bytes_of(&val).to_vec(),
            )
        }
    }

    /// Installs the flow, the ingress device's DSA config and the egress devmap entry.
    pub fn install(&self, obj: &Object) {
        let (map, k, v) = self.entry();
        table_place(obj, map, &k, &v);
        set_iface_dsa(obj, self.ingress, self.in_encap.dsa_proto());
        map_update(
            obj,
            abi::TX_PORTS_MAP,
            &self.egress.to_ne_bytes(),
            &self.egress.to_ne_bytes(),
        );
    }

    pub fn remove(&self, obj: &Object) {
        let (map, k, _) = self.entry();
        assert!(table_remove(obj, map, &k), "flow to remove not installed");
    }

    /// The entry's index in its table.
    pub fn index(&self, obj: &Object) -> u32 {
        let (map, k, _) = self.entry();
        table_find(obj, map, &k).expect("flow entry").2
    }

    /// The flow's current entry bytes.
    pub fn value(&self, obj: &Object) -> Vec<u8> {
        let (map, _, _) = self.entry();
        find_map(obj, map)
            .lookup(&self.index(obj).to_ne_bytes(), MapFlags::ANY)
            .unwrap()
            .expect("flow entry")
    }

    /// (packets, bytes, flags) from the map.
    pub fn counters(&self, obj: &Object) -> abi::FlowCounters {
        abi::flow_counters(&self.value(obj)).expect("entry layout")
    }

    /// A packet of this flow as it arrives, and as it must leave.
    pub fn frames(&self, flags: Tcp, payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let ttl = 64;
        let input = wrap(
            MAC_ROUTER_IN,
            MAC_CLIENT,
            &self.in_encap,
            Dir::Rx,
            &ip_packet(&self.orig, ttl, flags, payload),
        );
        let expected = wrap(
            MAC_SERVER,
            MAC_ROUTER_OUT,
            &self.out_encap,
            Dir::Tx,
            &ip_packet(&self.new, ttl - 1, flags, payload),
        );
        (input, expected)
    }
}

pub fn find_map<'a>(obj: &'a Object, name: &str) -> libbpf_rs::Map<'a> {
    obj.maps()
        .find(|m| m.name() == name)
        .unwrap_or_else(|| panic!("map {name}"))
}

pub fn map_update(obj: &Object, name: &str, k: &[u8], v: &[u8]) {
    find_map(obj, name)
        .update(k, v, MapFlags::ANY)
        .unwrap_or_else(|e| panic!("update {name}: {e}"));
}

pub fn set_iface_dsa(obj: &Object, ifindex: u32, dsa: u8) {
    // Read-modify-write: the entry's other fields (RTT slot, flags) stay.
    let mut cfg: abi::Iface = find_map(obj, abi::IFACES_MAP)
        .lookup(&ifindex.to_ne_bytes(), MapFlags::ANY)
        .unwrap()
        .and_then(|v| abi::from_bytes(&v))
        .unwrap_or_default();
    cfg.dsa_proto = dsa;
    map_update(
        obj,
        abi::IFACES_MAP,
        &ifindex.to_ne_bytes(),
        abi::bytes_of(&cfg),
    );
}

/// CLOCK_MONOTONIC in ns (= bpf_ktime_get_ns).
pub fn now_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// The flow-table hash seeds the tests use (non-zero, so the seeded hash is what is tested).
pub const TEST_SEED: [u32; abi::HASH_SEEDS] = [
    0x9e37_79b9,
    0x7f4a_7c15,
    0xf39c_c060,
    0x5ced_c834,
    0x1082_276b,
    0xf3a2_7251,
    0xf86c_6a11,
    0x6d0c_7c2b,
    0x2545_f491,
    0x4f6c_dd1d,
    0x8422_2325,
    0xcbf2_9ce4,
    0x0100_0193,
    0xdead_beef,
];

/// Writes the control word: heartbeat `age_ns` in the past, offload on/off, RTT off,
/// [`TEST_SEED`].
pub fn set_control(obj: &Object, age_ns: u64, enabled: bool) {
    set_control_rtt(obj, age_ns, enabled, false);
}

/// [`set_control`], with passive RTT on or off.
pub fn set_control_rtt(obj: &Object, age_ns: u64, enabled: bool, rtt: bool) {
    let v = abi::control_value(now_ns().saturating_sub(age_ns), enabled, rtt, 0, &TEST_SEED);
    map_update(obj, abi::CONTROL_MAP, &0u32.to_ne_bytes(), &v);
}

/// The bucket map of an entry map.
pub fn buckets_of(entries: &str) -> &'static str {
    if entries == abi::FLOWS6_MAP {
        abi::BUCKETS6_MAP
    } else {
        abi::BUCKETS4_MAP
    }
}

/// Bucket `b` of a bucket map, as the data path reads it.
pub fn read_bucket(obj: &Object, buckets: &str, b: u32) -> abi::Bucket {
    let v = find_map(obj, buckets)
        .lookup(&b.to_ne_bytes(), MapFlags::ANY)
        .unwrap()
        .expect("bucket");
    abi::from_bytes(&v).expect("bucket layout")
}

/// (bucket, slot, entry index) of `key` in the table whose entries live in `entries`, the
/// way the data path finds it ([`TEST_SEED`]).
pub fn table_find(obj: &Object, entries: &str, key: &[u8]) -> Option<(u32, usize, u32)> {
    let (b, tag) = abi::flow_hash(key, &TEST_SEED);
    let bucket = read_bucket(obj, buckets_of(entries), b);
    let map = find_map(obj, entries);
    bucket.slot.iter().enumerate().find_map(|(i, &s)| {
        if s == 0 || abi::slot_tag(s) != tag {
            return None;
        }
        let idx = abi::slot_index(s);
        let e = map.lookup(&idx.to_ne_bytes(), MapFlags::ANY).ok()??;
        (abi::entry_key(&e) == Some(key)).then_some((b, i, idx))
    })
}

/// Puts `entry` (key last) into a table the simple way a single-threaded test can: the
/// existing entry of the key is overwritten, else the first all-zero entry is taken and the
/// first empty slot of the key's bucket pointed at it.
pub fn table_place(obj: &Object, entries: &str, key: &[u8], entry: &[u8]) {
    if let Some((_, _, idx)) = table_find(obj, entries, key) {
        map_update(obj, entries, &idx.to_ne_bytes(), entry);
        return;
    }
    let map = find_map(obj, entries);
    let idx = (0..abi::MAX_FLOWS)
        .find(|i| {
            map.lookup(&i.to_ne_bytes(), MapFlags::ANY)
                .unwrap()
                .is_some_and(|e| e.iter().all(|&b| b == 0))
        })
        .expect("a free flow entry");
    map_update(obj, entries, &idx.to_ne_bytes(), entry);
    let (b, tag) = abi::flow_hash(key, &TEST_SEED);
    let buckets = buckets_of(entries);
    let mut bucket = read_bucket(obj, buckets, b);
    let free = bucket
        .slot
        .iter()
        .position(|&s| s == 0)
        .expect("a free slot in the bucket");
    assert!(
        !bucket
            .slot
            .iter()
            .any(|&s| s != 0 && abi::slot_tag(s) == tag),
        "tag collision in bucket {b}"
    );
    bucket.slot[free] = abi::slot_word(tag, idx);
    map_update(obj, buckets, &b.to_ne_bytes(), abi::bytes_of(&bucket));
}

/// Unlinks and zeroes the entry of `key`; false if it was not there.
pub fn table_remove(obj: &Object, entries: &str, key: &[u8]) -> bool {
    let Some((b, slot, idx)) = table_find(obj, entries, key) else {
        return false;
    };
    let buckets = buckets_of(entries);
    let mut bucket = read_bucket(obj, buckets, b);
    bucket.slot[slot] = 0;
    map_update(obj, buckets, &b.to_ne_bytes(), abi::bytes_of(&bucket));
    let size = find_map(obj, entries).value_size() as usize;
    map_update(obj, entries, &idx.to_ne_bytes(), &vec![0u8; size]);
    true
}

/// Moves the calling thread into a fresh network namespace with `n` veth pairs (`bqN` and its
/// peer `bqNp`), returning the ifindexes of `bq0..bqN`. The namespace dies with the thread's last
/// reference, so nothing is left behind even if the test fails.
///
/// The veths are made over rtnetlink here, not with `ip`: the data-path tests also run on a
/// big-endian kernel booted with nothing but the test binaries (tests/s390x), where no iproute2
/// is. Creating a veth is not what these tests test.
pub fn fresh_netns(n: usize) -> Vec<u32> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    let mut idx = Vec::new();
    for i in 0..n {
        add_veth(&format!("bq{i}"), &format!("bq{i}p"));
        idx.push(nix::net::if_::if_nametoindex(format!("bq{i}").as_str()).expect("ifindex"));
    }
    idx
}

/// RTM_NEWLINK / RTM_SETLINK, IFLA_IFNAME, IFLA_LINKINFO, IFLA_INFO_KIND, IFLA_INFO_DATA,
/// VETH_INFO_PEER (linux/rtnetlink.h, if_link.h, veth.h).
const RTM_NEWLINK: u16 = 16;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;

/// `struct ifinfomsg` with `index`, `flags` and `change` (native byte order).
fn ifinfomsg(index: i32, flags: u32, change: u32) -> Vec<u8> {
    let mut m = vec![0u8; 16];
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

/// Sends one rtnetlink request and panics with the kernel's message unless it is acked.
fn rtnl(ty: u16, flags: u16, build: impl FnOnce(&mut nl::Builder), fixed: &[u8], what: &str) {
    let sock = nl::RequestSocket::open(0, "rtnetlink").expect("rtnetlink socket");
    let seq = sock.next_seq();
    let mut b = nl::Builder::new(ty, nl::NLM_F_REQUEST | nl::NLM_F_ACK | flags, seq, fixed);
    build(&mut b);
    let acks = sock.transact(&[(seq, b.finish())], 1).expect(what);
    assert_eq!(acks[0].errno, 0, "{what}: {}", acks[0].describe());
}

/// Creates the veth pair `name` / `peer` in the current namespace (down).
pub fn add_veth(name: &str, peer: &str) {
    let what = format!("create veth {name}/{peer}");
    rtnl(
        RTM_NEWLINK,
        nl::NLM_F_CREATE | nl::NLM_F_EXCL,
        |b| {
            b.attr_str(IFLA_IFNAME, name);
            let info = b.nest(IFLA_LINKINFO);
            b.attr_str(IFLA_INFO_KIND, "veth");
            let data = b.nest(IFLA_INFO_DATA);
            // VETH_INFO_PEER: an ifinfomsg, then the peer's attributes.
            let mut p = ifinfomsg(0, 0, 0);
            let mut name_attr = nl::Builder::new(0, 0, 0, &[]);
            name_attr.attr_str(IFLA_IFNAME, peer);
            p.extend_from_slice(&name_attr.finish()[16..]);
            b.attr(VETH_INFO_PEER, &p);
            b.end_nest(data);
            b.end_nest(info);
        },
        &ifinfomsg(0, 0, 0),
        &what,
    );
}

/// Sets the device `name` up.
pub fn set_up(name: &str) {
    let index = nix::net::if_::if_nametoindex(name).expect("ifindex") as i32;
    let up = nix::libc::IFF_UP as u32;
    rtnl(
        RTM_NEWLINK,
        0,
        |_| {},
        &ifinfomsg(index, up, up),
        &format!("set {name} up"),
    );
}

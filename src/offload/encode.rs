//! Translating a resolved flow direction into the data path's map entries (`bpfqos_abi.h`):
//! key from the ingress side, value from the egress next hop and the NAT rewrite.

use std::net::IpAddr;

use crate::conntrack::Tuple;
use crate::dataplane::abi;
use crate::topology;
use crate::topology::DsaTagger;
use crate::topology::NextHop;
use crate::topology::VlanProto;

/// A flow-table key of either family.
#[derive(Clone, Copy)]
pub enum FlowKey {
    /// IPv4.
    V4(abi::FlowKey4),
    /// IPv6.
    V6(abi::FlowKey6),
}

impl FlowKey {
    /// The map it lives in.
    pub fn map(&self) -> &'static str {
        match self {
            FlowKey::V4(_) => abi::FLOWS4_MAP,
            FlowKey::V6(_) => abi::FLOWS6_MAP,
        }
    }

    /// Its bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            FlowKey::V4(k) => abi::bytes_of(k),
            FlowKey::V6(k) => abi::bytes_of(k),
        }
    }
}

/// A flow-table value of either family.
#[derive(Clone, Copy)]
pub enum FlowValue {
    /// IPv4.
    V4(abi::Flow4),
    /// IPv6.
    V6(abi::Flow6),
}

impl FlowValue {
    /// Its bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            FlowValue::V4(v) => abi::bytes_of(v),
            FlowValue::V6(v) => abi::bytes_of(v),
        }
    }

    /// Carries over counters (and the teardown flag) from the entry being replaced, so a
    /// re-resolved flow keeps its statistics.
    pub fn keep_counters_of(&mut self, old: &[u8]) {
        match self {
            FlowValue::V4(v) => {
                if let Some(o) = abi::from_bytes::<abi::Flow4>(old) {
                    v.cnt = o.cnt;
                    v.flags = o.flags;
                }
            }
            FlowValue::V6(v) => {
                if let Some(o) = abi::from_bytes::<abi::Flow6>(old) {
                    v.cnt = o.cnt;
                    v.flags = o.flags;
                }
            }
        }
    }
}

/// The data path's view of a DSA tagger; `None` for taggers it cannot build.
pub fn dsa_proto(t: &DsaTagger) -> Option<u8> {
    let p = match t {
        DsaTagger::Mtk => abi::DsaProto::BPFQOS_DSA_MTK,
        DsaTagger::Qca => abi::DsaProto::BPFQOS_DSA_QCA,
        DsaTagger::Gswip => abi::DsaProto::BPFQOS_DSA_GSWIP,
        DsaTagger::Other(_) => return None,
    };
    u8::try_from(p.0).ok()
}

/// L2 encapsulation in the ABI's layout. `None` when the data path cannot express it (a DSA
/// tagger it does not know, more than two VLANs).
pub fn l2(e: &topology::L2Encap) -> Option<abi::L2Encap> {
    if e.vlans.len() > 2 {
        return None;
    }
    let mut out = abi::L2Encap::default();
    for (i, (proto, vid)) in e.vlans.iter().enumerate() {
        out.vlan_proto[i] = abi::be16(match proto {
            VlanProto::Dot1Q => abi::ETH_P_8021Q,
            VlanProto::Dot1Ad => abi::ETH_P_8021AD,
        });
        out.vlan_tci[i] = abi::be16(*vid & 0x0fff);
    }
    if let Some(s) = &e.pppoe {
        out.pppoe = 1;
        out.pppoe_sid = abi::be16(s.sid);
    }
    if let Some(d) = &e.dsa {
        dsa_proto(&d.tagger)?;
        out.dsa_port = u8::try_from(d.port).ok()?;
    }
    Some(out)
}

/// Builds the entry for packets that arrive matching `inbound` (as conntrack saw them on the
/// wire, before NAT) on the lowest device and encapsulation of `ingress`, and leave as
/// `outbound` (after NAT) through `egress`. `None` if something cannot be expressed.
pub fn entry(
    inbound: &Tuple,
    outbound: &Tuple,
    ingress: &NextHop,
    egress: &NextHop,
) -> Option<(FlowKey, FlowValue)> {
    let in_l2 = l2(&ingress.encap)?;
    let out_l2 = l2(&egress.encap)?;
    let nh = abi::NextHop {
        ifindex: egress.egress_ifindex,
        h_dest: egress.dst_mac,
        h_source: egress.src_mac,
        l2: out_l2,
        mtu: u16::try_from(egress.mtu.min(u32::from(u16::MAX))).ok()?,
        dsa_proto: match &egress.encap.dsa {
            Some(d) => dsa_proto(&d.tagger)?,
            None => 0,
        },
        ..Default::default()
    };
    let action = u8::try_from(abi::Action::BPFQOS_ACT_FORWARD.0).ok()?;
    match (inbound.src, inbound.dst, outbound.src, outbound.dst) {
        (IpAddr::V4(s), IpAddr::V4(d), IpAddr::V4(ns), IpAddr::V4(nd)) => {
            let key = abi::FlowKey4 {
                ifindex: ingress.egress_ifindex,
                l2: in_l2,
                saddr: abi::ip4(s),
                daddr: abi::ip4(d),
                sport: abi::be16(inbound.sport),
                dport: abi::be16(inbound.dport),
                proto: inbound.proto,
                ..Default::default()
            };
            let value = abi::Flow4 {
                nh,
                nat: abi::nat4(
                    (s, d, inbound.sport, inbound.dport),
                    (ns, nd, outbound.sport, outbound.dport),
                ),
                action,
                ..Default::default()
            };
            Some((FlowKey::V4(key), FlowValue::V4(value)))
        }
        (IpAddr::V6(s), IpAddr::V6(d), IpAddr::V6(ns), IpAddr::V6(nd)) => {
            let key = abi::FlowKey6 {
                ifindex: ingress.egress_ifindex,
                l2: in_l2,
                saddr: abi::ip6(s),
                daddr: abi::ip6(d),
                sport: abi::be16(inbound.sport),
                dport: abi::be16(inbound.dport),
                proto: inbound.proto,
                ..Default::default()
            };
            let value = abi::Flow6 {
                nh,
                nat: abi::nat6(
                    (s, d, inbound.sport, inbound.dport),
                    (ns, nd, outbound.sport, outbound.dport),
                ),
                action,
                ..Default::default()
            };
            Some((FlowKey::V6(key), FlowValue::V6(value)))
        }
        // NAT64 and friends: not ours.
        _ => None,
    }
}

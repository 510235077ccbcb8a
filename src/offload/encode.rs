//! Translating a resolved flow direction into the data path's map entries (`bpfqos_abi.h`):
//! key from the ingress side, value from the egress next hop and the NAT rewrite.

use std::net::IpAddr;

use super::ports::Resolver;
use crate::conntrack::Conn;
use crate::conntrack::Tuple;
use crate::dataplane::abi;
use crate::dataplane::entry::dsa_proto;
use crate::dataplane::entry::FlowKey;
use crate::dataplane::entry::FlowValue;
use crate::topology;
use crate::topology::NextHop;
use crate::topology::VlanProto;

/// How one direction of a connection passes a shaper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shaping {
    /// Not shaped: straight to the lowest egress device (XDP, or TC where XDP is not).
    Unshaped,
    /// Upload: forwarded by the TC twin to the shaped interface's L3 device `l3`, whose root
    /// qdisc shapes and which adds its own encapsulation; `mtu` is the L3 device's; `has_l2`:
    /// it takes an Ethernet header (else it is PPP and takes the IP packet).
    Upload {
        /// The L3 device.
        l3: u32,
        /// Its MTU.
        mtu: u32,
        /// Ethernet-type (not PPP).
        has_l2: bool,
    },
    /// Download: rewritten for the egress by XDP (or the TC twin), then sent through the
    /// download shaper `shaper`, whose far end sends it out of the egress.
    Download {
        /// The shaper device (the veth pair's first end).
        shaper: u32,
    },
}

/// Both entries of connection `c` whose next hops are `hops` ([towards the originator,
/// towards the responder]): the original direction arrives from the originator's side as
/// `orig` and leaves towards the responder as the reverse of `reply` (that is the NAT); the
/// reply direction the other way round. `shaping`: [original, reply] direction. `None` if
/// either cannot be expressed.
pub fn connection(
    c: &Conn,
    hops: &[NextHop; 2],
    devices: &dyn Resolver,
    shaping: [Shaping; 2],
) -> Option<[(FlowKey, FlowValue); 2]> {
    let [to_orig, to_reply] = hops;
    let mtu = |h: &NextHop| wire_mtu(h, devices.device_mtu(h.egress_ifindex).unwrap_or(h.mtu));
    let mut fwd = entry(
        &c.orig,
        &c.reply.reversed(),
        to_orig,
        to_reply,
        mtu(to_reply),
    )?;
    let mut rev = entry(
        &c.reply,
        &c.orig.reversed(),
        to_reply,
        to_orig,
        mtu(to_orig),
    )?;
    shape(&mut fwd.1, &to_orig.encap, shaping[0])?;
    shape(&mut rev.1, &to_reply.encap, shaping[1])?;
    Some([fwd, rev])
}

/// Makes `value` pass its shaper; `ingress` is the encapsulation its packets arrive with.
/// `None` when the data path cannot do it (the connection stays on the kernel path).
fn shape(value: &mut FlowValue, ingress: &topology::L2Encap, s: Shaping) -> Option<()> {
    let (nh, action, shaper) = match value {
        FlowValue::V4(v) => (&mut v.nh, &mut v.action, &mut v.shaper),
        FlowValue::V6(v) => (&mut v.nh, &mut v.action, &mut v.shaper),
    };
    let act = |a: abi::Action| u8::try_from(a.0).ok();
    match s {
        Shaping::Unshaped => {}
        Shaping::Upload { l3, mtu, has_l2 } => {
            // TC cannot shrink a frame's L2 header; the kernel strips what an L2-less device
            // does not take up to the network header, which is IP only without in-frame tags.
            let simple =
                ingress.vlans.len() <= 1 && ingress.pppoe.is_none() && ingress.dsa.is_none();
            if !simple {
                return None;
            }
            *nh = abi::NextHop {
                ifindex: l3,
                h_dest: nh.h_dest,
                h_source: nh.h_source,
                mtu: u16::try_from(mtu.min(u32::from(u16::MAX))).ok()?,
                ..Default::default()
            };
            nh.l2_len = abi::l2_header_len(nh);
            *action = if has_l2 {
                act(abi::Action::BPFQOS_ACT_FORWARD_TC)?
            } else {
                act(abi::Action::BPFQOS_ACT_FORWARD_L3)?
            };
        }
        Shaping::Download { shaper: dev } => {
            // The egress travels across the shaper in 12 bits of tc_index.
            if nh.ifindex >= abi::MAX_IFACES {
                return None;
            }
            *shaper = u16::try_from(dev).ok()?;
            *action = act(abi::Action::BPFQOS_ACT_FORWARD_SHAPED)?;
        }
    }
    Some(())
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

/// Largest IP packet the data path may send along `egress` when it writes every header in the
/// frame itself. The kernel carries one VLAN tag out of band (hardware-accelerated tagging), so a
/// device takes frames of MTU + Ethernet + one tag; tags and a PPPoE header that XDP must put in
/// the frame beyond that count against the device's MTU (a DSA conduit's MTU already includes
/// its tag). Bigger packets go to the kernel, which sends them fine.
pub fn wire_mtu(egress: &NextHop, lowest_dev_mtu: u32) -> u32 {
    const VLAN_HLEN: u32 = 4;
    let pushed = VLAN_HLEN * egress.encap.vlans.len() as u32
        + if egress.encap.pppoe.is_some() {
            crate::topology::PPPOE_OVERHEAD
        } else {
            0
        };
    egress
        .mtu
        .min((lowest_dev_mtu + VLAN_HLEN).saturating_sub(pushed))
}

/// Builds the entry for packets that arrive matching `inbound` (as conntrack saw them on the
/// wire, before NAT) on the lowest device and encapsulation of `ingress`, and leave as
/// `outbound` (after NAT) through `egress`, at most `mtu` bytes of IP packet (see [`wire_mtu`]).
/// `None` if something cannot be expressed.
pub fn entry(
    inbound: &Tuple,
    outbound: &Tuple,
    ingress: &NextHop,
    egress: &NextHop,
    mtu: u32,
) -> Option<(FlowKey, FlowValue)> {
    let in_l2 = l2(&ingress.encap)?;
    let out_l2 = l2(&egress.encap)?;
    let mut nh = abi::NextHop {
        ifindex: egress.egress_ifindex,
        h_dest: egress.dst_mac,
        h_source: egress.src_mac,
        l2: out_l2,
        mtu: u16::try_from(mtu.min(u32::from(u16::MAX))).ok()?,
        dsa_proto: match &egress.encap.dsa {
            Some(d) => dsa_proto(&d.tagger)?,
            None => 0,
        },
        ..Default::default()
    };
    nh.l2_len = abi::l2_header_len(&nh);
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
                key,
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
                key,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::L2Encap;
    use crate::topology::PppoeSession;

    fn hop(mtu: u32, vlans: usize, pppoe: bool) -> NextHop {
        NextHop {
            l3_ifindex: 1,
            egress_ifindex: 2,
            src_mac: [0; 6],
            dst_mac: [0; 6],
            encap: L2Encap {
                vlans: vec![(VlanProto::Dot1Q, 7); vlans],
                pppoe: pppoe.then_some(PppoeSession {
                    sid: 1,
                    peer_mac: [0; 6],
                    local_mac: [0; 6],
                }),
                dsa: None,
            },
            mtu,
            gateway: None,
            neighbour: None,
            devices: vec![1, 2],
        }
    }

    #[test]
    fn entries_carry_the_length_of_the_l2_header_they_push() {
        let t = |src: [u8; 4], dst: [u8; 4]| Tuple {
            src: IpAddr::from(src),
            dst: IpAddr::from(dst),
            proto: 6,
            sport: 40000,
            dport: 443,
        };
        let (a, b) = (
            t([198, 18, 1, 2], [198, 19, 0, 2]),
            t([198, 19, 0, 2], [198, 18, 1, 2]),
        );
        // Ethernet 14, + 4 per tag, + 8 for PPPoE (session header and PPP protocol).
        for (vlans, pppoe, len) in [
            (0, false, 14),
            (1, false, 18),
            (2, false, 22),
            (1, true, 26),
        ] {
            let Some((_, FlowValue::V4(v))) =
                entry(&a, &b, &hop(1500, 0, false), &hop(1500, vlans, pppoe), 1500)
            else {
                panic!("no IPv4 entry for {vlans} VLANs, PPPoE {pppoe}");
            };
            assert_eq!(v.nh.l2_len, len, "{vlans} VLANs, PPPoE {pppoe}");
        }
    }

    #[test]
    fn wire_mtu_counts_in_frame_headers_beyond_one_tag() {
        // Plain and single-tag paths: the route's MTU.
        assert_eq!(wire_mtu(&hop(1500, 0, false), 1500), 1500);
        assert_eq!(wire_mtu(&hop(1500, 1, false), 1500), 1500);
        // PPPoE over VLAN 7 on a 1500 device: 1492, as the PPPoE device says.
        assert_eq!(wire_mtu(&hop(1492, 1, true), 1500), 1492);
        // QinQ on a 1500 device: the second tag must fit in the frame.
        assert_eq!(wire_mtu(&hop(1500, 2, false), 1500), 1496);
        // A baby-jumbo device (1508) carries QinQ at full size.
        assert_eq!(wire_mtu(&hop(1500, 2, false), 1508), 1500);
    }
}

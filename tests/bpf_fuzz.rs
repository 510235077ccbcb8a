//! Differential fuzz of the XDP offload program (root only): 12,000 random and mutated frames
//! with a fixed seed. An independent Rust model of the forwarding rules (written from the
//! design, not from the C) decides for each frame whether it must be forwarded; then:
//! - a passed frame is byte-identical to the input;
//! - a frame is redirected/transmitted only if the model matched it to an installed flow, and
//!   the output equals the model's rewrite (checksums verified independently);
//! - the flows' packet counters add up to the number of forwarded frames.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::net::IpAddr;

use common::bpf::run_xdp;
use common::bpf::XDP_PASS;
use common::bpf::XDP_REDIRECT;
use common::bpf::XDP_TX;
use common::frames::inet_csum;
use common::frames::ip_packet;
use common::frames::set_control_rtt;
use common::frames::verify_checksums;
use common::frames::wrap;
use common::frames::Dir;
use common::frames::Encap;
use common::frames::FlowSpec;
use common::frames::Tcp;
use common::frames::Tuple;
use common::frames::MAC_CLIENT;
use common::frames::MAC_ROUTER_IN;
use common::frames::MAC_ROUTER_OUT;
use common::frames::MAC_SERVER;

const FRAMES: usize = 12_000;
const SEED: u64 = 0xb9f0_5eed;

/// What the model extracts from a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelKey {
    ingress: u32,
    vlans: Vec<(u16, u16)>, // (TPID, VID)
    pppoe: Option<u16>,
    dsa_port: u8,
    udp: bool,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
}

struct Parsed {
    key: ModelKey,
    l3_off: usize,
    ip_len: usize,
    ttl: u8,
    tcp_flags: u8,
    v6: bool,
    udp_csum_zero: bool,
}

fn be16(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(o)?, *b.get(o + 1)?]))
}

/// The forwarding model's parser: what the design says is understood.
fn model_parse(f: &[u8], ingress: u32, dsa: u8) -> Option<Parsed> {
    let mut o = 0usize;
    let mut dsa_port = 0u8;
    if dsa == 3 {
        dsa_port = (f.get(7)? >> 4) & 7;
        o += 8;
    }
    o += 12;
    if dsa == 1 {
        dsa_port = f.get(o + 1)? & 7;
        o += 4;
    } else if dsa == 2 {
        let h = be16(f, o)?;
        if h >> 14 != 2 || (h >> 6) & 0x1f != 0 {
            return None;
        }
        dsa_port = (h & 7) as u8;
        o += 2;
    }
    let mut et = be16(f, o)?;
    o += 2;
    let mut vlans = Vec::new();
    while et == 0x8100 || et == 0x88a8 {
        if vlans.len() == 2 {
            return None;
        }
        vlans.push((et, be16(f, o)? & 0x0fff));
        et = be16(f, o + 2)?;
        o += 4;
    }
    let mut pppoe = None;
    let mut pppoe_len = 0;
    if et == 0x8864 {
        if *f.get(o)? != 0x11 || *f.get(o + 1)? != 0 {
            return None;
        }
        pppoe = Some(be16(f, o + 2)?);
        pppoe_len = usize::from(be16(f, o + 4)?);
        et = match be16(f, o + 6)? {
            0x0021 => 0x0800,
            0x0057 => 0x86dd,
            _ => return None,
        };
        o += 8;
    }
    let l3 = o;
    let (v6, proto, ip_len, ttl, src, dst) = match et {
        0x0800 => {
            let h = f.get(l3..l3 + 20)?;
            if h[0] != 0x45 || be16(h, 6)? & 0x3fff != 0 || (h[9] != 6 && h[9] != 17) {
                return None;
            }
            let tot = usize::from(be16(h, 2)?);
            if tot < 20 || l3 + tot > f.len() || inet_csum(h) != 0 {
                return None;
            }
            let s: [u8; 4] = h[12..16].try_into().unwrap();
            let d: [u8; 4] = h[16..20].try_into().unwrap();
            (false, h[9], tot, h[8], IpAddr::from(s), IpAddr::from(d))
        }
        0x86dd => {
            let h = f.get(l3..l3 + 40)?;
            if h[0] >> 4 != 6 || (h[6] != 6 && h[6] != 17) {
                return None;
            }
            let tot = 40 + usize::from(be16(h, 4)?);
            if l3 + tot > f.len() {
                return None;
            }
            let s: [u8; 16] = h[8..24].try_into().unwrap();
            let d: [u8; 16] = h[24..40].try_into().unwrap();
            (true, h[6], tot, h[7], IpAddr::from(s), IpAddr::from(d))
        }
        _ => return None,
    };
    if pppoe.is_some() && pppoe_len != ip_len + 2 {
        return None;
    }
    let l4 = l3 + if v6 { 40 } else { 20 };
    let l4_len = ip_len - (l4 - l3);
    let (udp, tcp_flags, udp_csum_zero) = if proto == 6 {
        let h = f.get(l4..l4 + 20)?;
        let hl = usize::from(h[12] >> 4) * 4;
        if hl < 20 || hl > l4_len {
            return None;
        }
        (false, h[13], false)
    } else {
        let h = f.get(l4..l4 + 8)?;
        if usize::from(be16(h, 4)?) != l4_len || l4_len < 8 {
            return None;
        }
        (true, 0, h[6] == 0 && h[7] == 0)
    };
    Some(Parsed {
        key: ModelKey {
            ingress,
            vlans,
            pppoe,
            dsa_port,
            udp,
            src,
            dst,
            sport: be16(f, l4)?,
            dport: be16(f, l4 + 2)?,
        },
        l3_off: l3,
        ip_len,
        ttl,
        tcp_flags,
        v6,
        udp_csum_zero,
    })
}

fn spec_key(s: &FlowSpec) -> ModelKey {
    ModelKey {
        ingress: s.ingress,
        vlans: s
            .in_encap
            .vlans
            .iter()
            .map(|(t, v)| (*t, v & 0x0fff))
            .collect(),
        pppoe: s.in_encap.pppoe,
        dsa_port: s.in_encap.dsa_port(),
        udp: s.orig.udp,
        src: s.orig.src,
        dst: s.orig.dst,
        sport: s.orig.sport,
        dport: s.orig.dport,
    }
}

/// The model's rewrite of a forwarded frame; the L4 checksum bytes are compared separately.
fn model_rewrite(f: &[u8], p: &Parsed, s: &FlowSpec) -> (Vec<u8>, usize) {
    let mut ip = f[p.l3_off..p.l3_off + p.ip_len].to_vec();
    let put = |ip: &mut Vec<u8>, o: usize, b: &[u8]| ip[o..o + b.len()].copy_from_slice(b);
    let (l4, addr) = if p.v6 { (40, 8) } else { (20, 12) };
    match (s.new.src, s.new.dst) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            put(&mut ip, addr, &a.octets());
            put(&mut ip, addr + 4, &b.octets());
            ip[8] -= 1;
            ip[10] = 0;
            ip[11] = 0;
            let c = inet_csum(&ip[..20]).to_be_bytes();
            put(&mut ip, 10, &c);
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            put(&mut ip, addr, &a.octets());
            put(&mut ip, addr + 16, &b.octets());
            ip[7] -= 1;
        }
        _ => unreachable!(),
    }
    put(&mut ip, l4, &s.new.sport.to_be_bytes());
    put(&mut ip, l4 + 2, &s.new.dport.to_be_bytes());
    let csum_off = l4 + if s.orig.udp { 6 } else { 16 };
    let out = wrap(MAC_SERVER, MAC_ROUTER_OUT, &s.out_encap, Dir::Tx, &ip);
    let l2 = out.len() - ip.len();
    (out, l2 + csum_off)
}

#[test]
fn fuzz_only_installed_flows_are_forwarded_and_passes_are_untouched() {
    let Some(common::bpf::Env { mut obj, dev }) = common::bpf::setup(
        "fuzz_only_installed_flows_are_forwarded_and_passes_are_untouched",
        3,
    ) else {
        return;
    };
    // RTT on: its parsing and state must not change what is forwarded or passed.
    set_control_rtt(&obj, 0, true, true);
    // d0: no DSA, d1: mtk conduit, d2: gswip conduit.
    let dsa_of = |i: u32| {
        if i == dev[1] {
            1
        } else if i == dev[2] {
            3
        } else {
            0
        }
    };
    let mut specs = Vec::new();
    let encs0 = [
        Encap::plain(),
        Encap::vlan(7),
        Encap::qinq(100, 7),
        Encap::pppoe(0x1234),
        Encap::vlan_pppoe(7, 9),
    ];
    let outs = [
        Encap::plain(),
        Encap::pppoe(5),
        Encap::vlan(8),
        Encap::qca(1),
        Encap::mtk(2).with_vlan(0x8100, 3),
    ];
    for (i, e) in encs0.iter().enumerate() {
        for v6 in [false, true] {
            let orig = if v6 {
                Tuple::v6(i % 2 == 0)
            } else {
                Tuple::v4(i % 2 == 1)
            };
            let egress = dev[(i + usize::from(v6)) % 3];
            specs.push(FlowSpec::new(
                dev[0],
                e.clone(),
                orig,
                egress,
                outs[i].clone(),
                orig.snat(),
            ));
        }
    }
    for (i, e) in [Encap::mtk(1), Encap::mtk(2).with_vlan(0x8100, 4)]
        .iter()
        .enumerate()
    {
        let orig = Tuple::v4(i == 0).dnat();
        specs.push(FlowSpec::new(
            dev[1],
            e.clone(),
            orig,
            dev[0],
            Encap::vlan_pppoe(3, 3),
            orig,
        ));
    }
    {
        let orig = Tuple::v6(false);
        specs.push(FlowSpec::new(
            dev[2],
            Encap::gswip(3),
            orig,
            dev[2],
            Encap::gswip(5),
            orig.dnat(),
        ));
    }
    for s in &specs {
        s.install(&obj);
    }
    for (i, d) in dev.iter().enumerate() {
        common::frames::set_iface_dsa(&obj, *d, [0, 1, 3][i]);
    }
    let before: Vec<u64> = specs.iter().map(|s| s.counters(&obj).packets).collect();

    let mut rng = fastrand::Rng::with_seed(SEED);
    let (mut fwd, mut passed, mut mutated_fwd) = (0u64, 0u64, 0u64);
    for n in 0..FRAMES {
        if n % 1000 == 0 {
            set_control_rtt(&obj, 0, true, true); // keep the heartbeat fresh
        }
        let kind = rng.u8(0..10);
        let (ingress, frame, mutated) = if kind < 7 {
            let s = &specs[rng.usize(0..specs.len())];
            let flags = match rng.u8(0..20) {
                0 => Tcp::Fin,
                1 => Tcp::Rst,
                _ => Tcp::Ack,
            };
            let ttl = [1, 2, 64, 255][rng.usize(0..4)];
            let payload: Vec<u8> = (0..rng.usize(0..80)).map(|_| rng.u8(..)).collect();
            let ip = ip_packet(&s.orig, ttl, flags, &payload);
            let mut f = wrap(MAC_ROUTER_IN, MAC_CLIENT, &s.in_encap, Dir::Rx, &ip);
            let mut mutated = false;
            if kind >= 3 {
                mutated = true;
                match rng.u8(0..4) {
                    0 => {
                        for _ in 0..rng.usize(1..4) {
                            let i = rng.usize(0..f.len());
                            f[i] ^= 1 << rng.u8(0..8);
                        }
                    }
                    1 => {
                        let i = rng.usize(0..f.len());
                        f[i] = rng.u8(..);
                    }
                    2 => f.truncate(rng.usize(14..f.len())),
                    _ => f.extend((0..rng.usize(1..20)).map(|_| rng.u8(..))),
                }
            }
            (s.ingress, f, mutated)
        } else {
            let len = rng.usize(14..160);
            let mut f: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if rng.bool() {
                let et = [0x0800u16, 0x86dd, 0x8100, 0x88a8, 0x8864][rng.usize(0..5)];
                f[12..14].copy_from_slice(&et.to_be_bytes());
            }
            (dev[rng.usize(0..3)], f, true)
        };
        if frame.len() < 14 {
            continue;
        }

        let model = model_parse(&frame, ingress, dsa_of(ingress));
        let matched = model.as_ref().and_then(|p| {
            let s = specs.iter().find(|s| spec_key(s) == p.key)?;
            let ok = p.ttl > 1
                && p.tcp_flags & 0x05 == 0
                && p.ip_len <= usize::from(s.mtu)
                && !(p.v6 && p.key.udp && p.udp_csum_zero);
            ok.then_some((p, s))
        });

        let r = run_xdp(&mut obj, &frame, ingress, 1);
        let hex = || frame.iter().map(|b| format!("{b:02x}")).collect::<String>();
        match (r.ret, matched) {
            (XDP_PASS, None) => {
                assert_eq!(r.data, frame, "frame {n}: passed but changed: {}", hex());
                passed += 1;
            }
            (XDP_REDIRECT | XDP_TX, Some((p, s))) => {
                assert_eq!(
                    r.ret == XDP_TX,
                    s.egress == s.ingress,
                    "frame {n}: TX iff hairpin"
                );
                let (want, csum_at) = model_rewrite(&frame, p, s);
                assert_eq!(r.data.len(), want.len(), "frame {n}: length: {}", hex());
                let mut got = r.data.clone();
                got[csum_at..csum_at + 2].copy_from_slice(&want[csum_at..csum_at + 2]);
                assert_eq!(
                    got,
                    want,
                    "frame {n}: rewrite differs from the model: {}",
                    hex()
                );
                let ip_in = &frame[p.l3_off..p.l3_off + p.ip_len];
                let ip_out = &r.data[r.data.len() - p.ip_len..];
                let (_, l4_in) = verify_checksums(ip_in);
                let (hdr_out, l4_out) = verify_checksums(ip_out);
                assert!(
                    hdr_out,
                    "frame {n}: IPv4 header checksum invalid after rewrite"
                );
                assert_eq!(
                    l4_out,
                    l4_in,
                    "frame {n}: L4 checksum validity changed: {}",
                    hex()
                );
                if p.udp_csum_zero {
                    assert_eq!(
                        &r.data[csum_at..csum_at + 2],
                        &[0, 0],
                        "frame {n}: UDP zero checksum"
                    );
                }
                fwd += 1;
                mutated_fwd += u64::from(mutated);
            }
            (ret, m) => panic!(
                "frame {n}: program returned {ret}, model says {}: {}",
                if m.is_some() { "forward" } else { "pass" },
                hex()
            ),
        }
    }
    let after: Vec<u64> = specs.iter().map(|s| s.counters(&obj).packets).collect();
    let counted: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
    assert_eq!(counted, fwd, "flow packet counters vs forwarded frames");
    eprintln!("fuzz: {FRAMES} frames, {fwd} forwarded ({mutated_fwd} of them mutated), {passed} passed unchanged");
    assert!(
        fwd > 1000 && passed > 1000,
        "fuzz mix degenerated: fwd {fwd} passed {passed}"
    );
}

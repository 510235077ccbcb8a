//! The offload data path, packet by packet, through BPF_PROG_TEST_RUN (root only).
//!
//! Every ingress encapsulation x every egress encapsulation (plain, VLAN, QinQ, PPPoE,
//! VLAN+PPPoE, DSA mtk/qca/gswip), rotating IPv4/IPv6, TCP/UDP and no NAT/SNAT/DNAT; then the
//! edge cases. Expected frames are built independently (etherparse + the kernel taggers' formats
//! in tests/common/frames.rs), so checksums are checked against a from-scratch computation.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::bpf::run_tc;
use common::bpf::run_xdp;
use common::bpf::Env;
use common::bpf::TC_ACT_REDIRECT;
use common::bpf::TC_PASS;
use common::bpf::XDP_PASS;
use common::bpf::XDP_REDIRECT;
use common::bpf::XDP_TX;
use common::frames::verify_checksums;
use common::frames::wrap;
use common::frames::Dir;
use common::frames::Encap;
use common::frames::FlowSpec;
use common::frames::Tcp;
use common::frames::Tuple;
use common::frames::MAC_CLIENT;
use common::frames::MAC_ROUTER_IN;
use libbpf_rs::MapCore;
use libbpf_rs::MapFlags;
use libbpf_rs::Object;

const PAYLOAD: &[u8] = b"bpfqos offload test payload, 48 bytes long......";

fn hexdiff(a: &[u8], b: &[u8]) -> String {
    let mut s = String::new();
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x != y {
            s += &format!(" @{i}: got {x:02x} want {y:02x};");
        }
    }
    if a.len() != b.len() {
        s += &format!(" len got {} want {}", a.len(), b.len());
    }
    s
}

/// Two veth devices, offload on with a fresh heartbeat.
fn setup(test: &str) -> Option<Env> {
    let env = common::bpf::setup(test, 2)?;
    common::frames::set_control(&env.obj, 0, true);
    Some(env)
}

/// Runs `input` through XDP and asserts a pass with the frame unchanged.
fn assert_xdp_pass(env: &mut Env, what: &str, ingress: u32, input: &[u8]) {
    let r = run_xdp(&mut env.obj, input, ingress, 1);
    assert_eq!(r.ret, XDP_PASS, "{what}: expected XDP_PASS");
    assert_eq!(
        r.data,
        input,
        "{what}: passed frame changed:{}",
        hexdiff(&r.data, input)
    );
}

fn nat_kind(i: usize, orig: &Tuple) -> (&'static str, Tuple) {
    match i % 3 {
        0 => ("no-nat", *orig),
        1 => ("snat", orig.snat()),
        _ => ("dnat", orig.dnat()),
    }
}

#[test]
fn encap_matrix_forwards_byte_exact() {
    let Some(mut env) = setup("encap_matrix_forwards_byte_exact") else {
        return;
    };
    let (din, dout) = (env.dev[0], env.dev[1]);
    let mut n = 0;
    for (i_in, ein) in Encap::matrix().into_iter().enumerate() {
        for (i_out, eout) in Encap::matrix().into_iter().enumerate() {
            let i = i_in * 8 + i_out;
            let udp = (i / 2) % 2 == 1;
            let orig = if i % 2 == 1 {
                Tuple::v6(udp)
            } else {
                Tuple::v4(udp)
            };
            let (nat, new) = nat_kind(i / 4, &orig);
            let spec = FlowSpec::new(din, ein.clone(), orig, dout, eout.clone(), new);
            spec.install(&env.obj);
            let (input, expected) = spec.frames(Tcp::Ack, PAYLOAD);
            let what = format!(
                "#{i} {} -> {} {} {} {nat}",
                ein.name,
                eout.name,
                if orig.is_v6() { "ipv6" } else { "ipv4" },
                if udp { "udp" } else { "tcp" }
            );
            let before = spec.counters(&env.obj);
            let r = run_xdp(&mut env.obj, &input, din, 1);
            assert_eq!(
                r.ret,
                XDP_REDIRECT,
                "{what}: return code, stats {:?} input {}",
                common::bpf::stats(&env.obj),
                input.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
            assert_eq!(r.data, expected, "{what}:{}", hexdiff(&r.data, &expected));
            let after = spec.counters(&env.obj);
            let ip_len = ip_len_of(&input);
            assert_eq!(after.packets, before.packets + 1, "{what}: packet counter");
            assert_eq!(after.bytes, before.bytes + ip_len, "{what}: byte counter");
            spec.remove(&env.obj);
            n += 1;
        }
    }
    assert_eq!(n, 64);
}

/// IP total length of an input frame (found by scanning for the IP header the builder wrote).
fn ip_len_of(frame: &[u8]) -> u64 {
    // Our test frames end with the IP packet built by ip_packet(); PAYLOAD + headers.
    let hdrs = |is6: bool, udp: bool| (if is6 { 40 } else { 20 }) + if udp { 8 } else { 20 };
    for is6 in [false, true] {
        for udp in [false, true] {
            let l = hdrs(is6, udp) + PAYLOAD.len();
            if frame.len() >= l {
                let ip = &frame[frame.len() - l..];
                let ok = if is6 {
                    ip[0] >> 4 == 6 && ip[6] == if udp { 17 } else { 6 }
                } else {
                    ip[0] == 0x45 && ip[9] == if udp { 17 } else { 6 }
                };
                if ok {
                    return l as u64;
                }
            }
        }
    }
    panic!("no IP packet in frame");
}

/// The product computes each next hop's L2 header length in user space
/// (abi::l2_header_len); the data path trusts it to make room for what write_l2() writes. Checked
/// against this suite's own frame builder for every egress encapsulation the data path can write:
/// each DSA tagger or none, 0-2 VLAN tags (802.1ad outer), with and without PPPoE, both families.
#[test]
fn l2_header_len_matches_the_frame_builder_for_every_egress_encapsulation() {
    let mut checked = 0;
    for dsa in [
        Encap::plain(),
        Encap::mtk(5),
        Encap::qca(4),
        Encap::gswip(3),
    ] {
        for vlans in 0..=2 {
            for pppoe in [None, Some(0x77)] {
                let mut eout = Encap {
                    pppoe,
                    ..dsa.clone()
                };
                let tags: &[(u16, u16)] = &[(0x88a8, 100), (0x8100, 7)];
                for &(tpid, id) in &tags[2 - vlans..] {
                    eout = eout.with_vlan(tpid, id);
                }
                for t in [Tuple::v4(false), Tuple::v6(true)] {
                    let spec = FlowSpec::new(1, Encap::plain(), t, 2, eout.clone(), t);
                    let nh = spec.nexthop();
                    assert_eq!(
                        bpfqos::dataplane::abi::l2_header_len(&nh),
                        spec.out_l2_len(),
                        "egress {eout:?}, {t:?}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 4 * 3 * 2 * 2);
}

#[test]
fn dsa_with_vlans_and_pppoe_egress_formats() {
    let Some(mut env) = setup("dsa_with_vlans_and_pppoe_egress_formats") else {
        return;
    };
    let (din, dout) = (env.dev[0], env.dev[1]);
    let cases = [
        (Encap::mtk(1).with_vlan(0x8100, 7), Encap::plain()),
        (Encap::plain(), Encap::mtk(1).with_vlan(0x8100, 0x2007)), // PCP bits kept on egress
        (
            Encap::plain(),
            Encap::mtk(5).with_vlan(0x88a8, 100).with_vlan(0x8100, 7),
        ),
        (Encap::plain(), Encap::qca(4).with_vlan(0x8100, 9)),
        (Encap::gswip(2).with_vlan(0x8100, 9), Encap::gswip(5)),
        (
            Encap::qca(1),
            Encap {
                pppoe: Some(0x77),
                ..Encap::gswip(3)
            },
        ),
        (
            Encap {
                pppoe: Some(0x77),
                ..Encap::mtk(0)
            },
            Encap::qca(6),
        ),
        (Encap::mtk(2), Encap::mtk(4)),
    ];
    for (i, (ein, eout)) in cases.into_iter().enumerate() {
        for v6 in [false, true] {
            let orig = if v6 {
                Tuple::v6(i % 2 == 0)
            } else {
                Tuple::v4(i % 2 == 1)
            };
            let spec = FlowSpec::new(din, ein.clone(), orig, dout, eout.clone(), orig.snat());
            spec.install(&env.obj);
            let (input, expected) = spec.frames(Tcp::Ack, PAYLOAD);
            let r = run_xdp(&mut env.obj, &input, din, 1);
            let what = format!("dsa case {i} v6={v6} {ein:?} -> {eout:?}");
            assert_eq!(r.ret, XDP_REDIRECT, "{what}");
            assert_eq!(r.data, expected, "{what}:{}", hexdiff(&r.data, &expected));
            spec.remove(&env.obj);
        }
    }
}

#[test]
fn hairpin_uses_xdp_tx_and_forwarded_checksums_verify() {
    let Some(mut env) = setup("hairpin_uses_xdp_tx_and_forwarded_checksums_verify") else {
        return;
    };
    let din = env.dev[0];
    for orig in [
        Tuple::v4(false),
        Tuple::v4(true),
        Tuple::v6(false),
        Tuple::v6(true),
    ] {
        // Router on a stick: VLAN 7 in, VLAN 8 out on the same device.
        let spec = FlowSpec::new(
            din,
            Encap::vlan(7),
            orig,
            din,
            Encap::vlan(8),
            orig.snat().dnat(),
        );
        spec.install(&env.obj);
        let (input, expected) = spec.frames(Tcp::Ack, PAYLOAD);
        let r = run_xdp(&mut env.obj, &input, din, 1);
        assert_eq!(r.ret, XDP_TX, "{orig:?}");
        assert_eq!(r.data, expected, "{orig:?}:{}", hexdiff(&r.data, &expected));
        let ip = &r.data[18..];
        assert_eq!(verify_checksums(ip), (true, true), "{orig:?}");
        spec.remove(&env.obj);
    }
}

#[test]
fn udp_zero_checksum_stays_zero_in_ipv4_and_passes_in_ipv6() {
    let Some(mut env) = setup("udp_zero_checksum_stays_zero_in_ipv4_and_passes_in_ipv6") else {
        return;
    };
    let (din, dout) = (env.dev[0], env.dev[1]);
    let orig = Tuple::v4(true);
    let spec = FlowSpec::new(
        din,
        Encap::plain(),
        orig,
        dout,
        Encap::pppoe(5),
        orig.snat(),
    );
    spec.install(&env.obj);
    let (mut input, mut expected) = spec.frames(Tcp::Ack, PAYLOAD);
    // UDP checksum at IP + 20 + 6: zero it in both.
    input[14 + 26] = 0;
    input[14 + 27] = 0;
    let off = expected.len() - (20 + 8 + PAYLOAD.len()) + 26;
    expected[off] = 0;
    expected[off + 1] = 0;
    let r = run_xdp(&mut env.obj, &input, din, 1);
    assert_eq!(r.ret, XDP_REDIRECT);
    assert_eq!(r.data, expected, "{}", hexdiff(&r.data, &expected));

    let orig = Tuple::v6(true);
    let spec = FlowSpec::new(din, Encap::plain(), orig, dout, Encap::plain(), orig.snat());
    spec.install(&env.obj);
    let (mut input, _) = spec.frames(Tcp::Ack, PAYLOAD);
    input[14 + 46] = 0;
    input[14 + 47] = 0;
    assert_xdp_pass(&mut env, "ipv6 udp zero checksum", din, &input);
}

/// Edge cases: each must pass the frame to the kernel unchanged.
#[test]
fn edge_cases_pass_unchanged() {
    let Some(mut env) = setup("edge_cases_pass_unchanged") else {
        return;
    };
    let (din, dout) = (env.dev[0], env.dev[1]);
    let mk =
        |ein: Encap, orig: Tuple| FlowSpec::new(din, ein, orig, dout, Encap::plain(), orig.snat());

    let mut cases: Vec<(String, FlowSpec, Vec<u8>)> = Vec::new();
    let base4 = mk(Encap::vlan(7), Tuple::v4(false));
    let base6 = mk(Encap::pppoe(9), Tuple::v6(false));
    let ip4 = |ttl: u8| common::frames::ip_packet(&Tuple::v4(false), ttl, Tcp::Ack, PAYLOAD);
    let ip6 = |hl: u8| common::frames::ip_packet(&Tuple::v6(false), hl, Tcp::Ack, PAYLOAD);
    let rx = |e: &Encap, ip: &[u8]| wrap(MAC_ROUTER_IN, MAC_CLIENT, e, Dir::Rx, ip);

    cases.push(("ttl 1".into(), base4.clone(), rx(&base4.in_encap, &ip4(1))));
    cases.push(("ttl 0".into(), base4.clone(), rx(&base4.in_encap, &ip4(0))));
    cases.push((
        "hop limit 1".into(),
        base6.clone(),
        rx(&base6.in_encap, &ip6(1)),
    ));
    // IPv4 options: ihl 6 with a NOP option word (checksum fixed up so only the options differ).
    {
        let ip = ip4(64);
        let mut o = Vec::new();
        o.extend_from_slice(&ip[..20]);
        o.extend_from_slice(&[1, 1, 1, 1]);
        o.extend_from_slice(&ip[20..]);
        o[0] = 0x46;
        let tot = (o.len() as u16).to_be_bytes();
        o[2] = tot[0];
        o[3] = tot[1];
        o[10] = 0;
        o[11] = 0;
        let c = common::frames::inet_csum(&o[..24]).to_be_bytes();
        o[10] = c[0];
        o[11] = c[1];
        cases.push((
            "ipv4 options".into(),
            base4.clone(),
            rx(&base4.in_encap, &o),
        ));
    }
    for (name, frag) in [
        ("fragment MF", 0x2000u16),
        ("fragment offset", 0x0010),
        ("fragment MF+DF", 0x6000),
    ] {
        let mut ip = ip4(64);
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[10] = 0;
        ip[11] = 0;
        let c = common::frames::inet_csum(&ip[..20]).to_be_bytes();
        ip[10] = c[0];
        ip[11] = c[1];
        cases.push((name.into(), base4.clone(), rx(&base4.in_encap, &ip)));
    }
    {
        let mut ip = ip4(64);
        ip[10] ^= 0x55;
        cases.push((
            "bad ipv4 header checksum".into(),
            base4.clone(),
            rx(&base4.in_encap, &ip),
        ));
    }
    {
        let mut ip = ip4(64);
        let too_long = ((ip.len() + 10) as u16).to_be_bytes();
        ip[2..4].copy_from_slice(&too_long);
        cases.push((
            "ipv4 tot_len beyond frame".into(),
            base4.clone(),
            rx(&base4.in_encap, &ip),
        ));
    }
    // Truncation at every layer, for the QinQ+PPPoE-ish deepest stacks we parse.
    for (ein, orig) in [
        (Encap::vlan_pppoe(7, 3), Tuple::v4(false)),
        (Encap::qinq(100, 7), Tuple::v6(true)),
        (Encap::gswip(2), Tuple::v4(true)),
        (Encap::mtk(2), Tuple::v6(false)),
        (Encap::qca(2), Tuple::v4(false)),
    ] {
        let spec = mk(ein.clone(), orig);
        let (full, _) = spec.frames(Tcp::Ack, PAYLOAD);
        let l4_end = full.len() - PAYLOAD.len();
        // BPF_PROG_TEST_RUN refuses XDP frames shorter than an Ethernet header.
        let mut cut = 14;
        while cut < l4_end {
            cases.push((
                format!("{} truncated at {cut}", ein.name),
                spec.clone(),
                full[..cut].to_vec(),
            ));
            cut += 3;
        }
        cases.push((
            format!("{} truncated at l4 end - 1", ein.name),
            spec.clone(),
            full[..l4_end - 1].to_vec(),
        ));
    }
    cases.push((
        "fin".into(),
        base4.clone(),
        base4.frames(Tcp::Fin, PAYLOAD).0,
    ));
    cases.push((
        "rst".into(),
        base6.clone(),
        base6.frames(Tcp::Rst, PAYLOAD).0,
    ));
    {
        let mut s = base4.clone();
        s.mtu = (20 + 20 + PAYLOAD.len() - 1) as u16;
        let f = s.frames(Tcp::Ack, PAYLOAD).0;
        cases.push(("over egress mtu".into(), s, f));
    }
    {
        let mut s = base6.clone();
        s.action = 0;
        let f = s.frames(Tcp::Ack, PAYLOAD).0;
        cases.push(("entry not ready".into(), s, f));
        // pinned maps adopted from a daemon that predates nh.l2_len: kernel path until the
        // resync rewrites the entry.
        let mut s = base4.clone();
        s.l2_len = Some(0);
        let f = s.frames(Tcp::Ack, PAYLOAD).0;
        cases.push(("entry without L2 length".into(), s, f));
        let mut s = base6.clone();
        s.action = 2;
        let f = s.frames(Tcp::Ack, PAYLOAD).0;
        cases.push(("tc-only entry at xdp".into(), s, f));
    }
    {
        // Flow installed for VLAN 7 / PPPoE 9 / DSA port 3: packets with other ids miss.
        let f = rx(&Encap::vlan(8), &ip4(64));
        cases.push(("other vlan id".into(), base4.clone(), f));
        let f = rx(&Encap::pppoe(10), &ip6(64));
        cases.push(("other pppoe session".into(), base6.clone(), f));
        let s = mk(Encap::mtk(3), Tuple::v4(true));
        let f = rx(
            &Encap::mtk(4),
            &common::frames::ip_packet(&Tuple::v4(true), 64, Tcp::Ack, PAYLOAD),
        );
        cases.push(("other dsa port".into(), s, f));
        let f = rx(&Encap::plain(), &ip4(64));
        cases.push(("untagged when flow is tagged".into(), base4.clone(), f));
        let f = rx(&Encap::qinq(100, 7).with_vlan(0x8100, 5), &ip4(64));
        cases.push(("three vlan tags".into(), base4.clone(), f));
    }
    {
        // PPPoE: LCP instead of IP, discovery stage, wrong version, length mismatch.
        let good = rx(&base6.in_encap, &ip6(64));
        let mut lcp = good.clone();
        lcp[20..22].copy_from_slice(&0xc021u16.to_be_bytes());
        cases.push(("pppoe lcp".into(), base6.clone(), lcp));
        let mut disc = good.clone();
        disc[12..14].copy_from_slice(&0x8863u16.to_be_bytes());
        cases.push(("pppoe discovery".into(), base6.clone(), disc));
        let mut ver = good.clone();
        ver[14] = 0x12;
        cases.push(("pppoe bad version".into(), base6.clone(), ver));
        let mut len = good.clone();
        len[19] = len[19].wrapping_add(1);
        cases.push(("pppoe length mismatch".into(), base6.clone(), len));
    }
    {
        // qca: management / MIB frames (type != 0) and wrong version.
        let s = mk(Encap::qca(2), Tuple::v4(false));
        let good = s.frames(Tcp::Ack, PAYLOAD).0;
        let mut mib = good.clone();
        mib[12] |= 0x01 << 0; // type bits 10:6 -> bit 8
        cases.push(("qca mib frame".into(), s.clone(), mib));
        let mut ver = good;
        ver[12] = 0x40;
        cases.push(("qca wrong version".into(), s, ver));
    }
    {
        let s = mk(Encap::plain(), Tuple::v4(false));
        let mut ip = ip4(64);
        ip[9] = 1; // ICMP
        ip[10] = 0;
        ip[11] = 0;
        let c = common::frames::inet_csum(&ip[..20]).to_be_bytes();
        ip[10] = c[0];
        ip[11] = c[1];
        cases.push(("icmp".into(), s.clone(), rx(&Encap::plain(), &ip)));
        let mut ip = ip6(64);
        ip[6] = 0; // hop-by-hop extension header
        cases.push((
            "ipv6 extension header".into(),
            s.clone(),
            rx(&Encap::plain(), &ip),
        ));
        let mut arp = rx(&Encap::plain(), &ip4(64));
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        cases.push(("arp ethertype".into(), s, arp));
    }

    let mut n = 0;
    for (what, spec, frame) in &cases {
        spec.install(&env.obj);
        assert_xdp_pass(&mut env, what, din, frame);
        spec.remove(&env.obj);
        n += 1;
    }
    assert!(n >= 40, "{n} edge cases");
    eprintln!("{n} edge cases passed unchanged");
}

#[test]
fn fin_and_rst_mark_the_flow_for_teardown() {
    let Some(mut env) = setup("fin_and_rst_mark_the_flow_for_teardown") else {
        return;
    };
    let (din, dout) = (env.dev[0], env.dev[1]);
    for (flags, orig) in [(Tcp::Fin, Tuple::v4(false)), (Tcp::Rst, Tuple::v6(false))] {
        let spec = FlowSpec::new(din, Encap::plain(), orig, dout, Encap::plain(), orig);
        spec.install(&env.obj);
        let (input, _) = spec.frames(flags, b"");
        assert_xdp_pass(&mut env, "fin/rst", din, &input);
        let counted = spec.counters(&env.obj);
        assert_eq!(counted.packets, 0);
        assert!(counted.teardown(), "teardown flag set");
        spec.remove(&env.obj);
    }
}

/// Drains the `events` ring buffer: every record, in order.
fn drain_events(obj: &Object) -> Vec<bpfqos::dataplane::abi::Event> {
    let got = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let sink = got.clone();
    let map = common::frames::find_map(obj, bpfqos::dataplane::abi::EVENTS_MAP);
    let mut b = libbpf_rs::RingBufferBuilder::new();
    b.add(&map, move |data: &[u8]| {
        sink.borrow_mut().push(data.to_vec());
        0
    })
    .unwrap();
    b.build().unwrap().consume().unwrap();
    let raw = got.borrow().clone();
    raw.iter()
        .map(|d| {
            assert_eq!(
                d.len(),
                std::mem::size_of::<bpfqos::dataplane::abi::Event>()
            );
            bpfqos::dataplane::abi::from_bytes(d).unwrap()
        })
        .collect()
}

/// Clears the teardown flag as the daemon does when it keeps a flow (e.g. a re-admitted one).
fn clear_teardown(obj: &Object, spec: &FlowSpec) {
    let (map, _, _) = spec.entry();
    let mut v = spec.value(obj);
    // flags sit right after action + pad in both value layouts.
    let off = if spec.orig.is_v6() {
        std::mem::offset_of!(bpfqos::dataplane::abi::Flow6, flags)
    } else {
        std::mem::offset_of!(bpfqos::dataplane::abi::Flow4, flags)
    };
    v[off..off + 4].copy_from_slice(&0u32.to_ne_bytes());
    common::frames::map_update(obj, map, &spec.index(obj).to_ne_bytes(), &v);
}

#[test]
fn teardown_events_once_per_flow_in_the_ring_buffer() {
    let Some(mut env) = setup("teardown_events_once_per_flow_in_the_ring_buffer") else {
        return;
    };
    let (din, dout) = (env.dev[0], env.dev[1]);
    assert!(
        drain_events(&env.obj).is_empty(),
        "events before any packet"
    );
    for (flags, orig) in [(Tcp::Fin, Tuple::v4(false)), (Tcp::Rst, Tuple::v6(false))] {
        let v6 = orig.is_v6();
        let spec = FlowSpec::new(din, Encap::plain(), orig, dout, Encap::plain(), orig.snat());
        spec.install(&env.obj);
        let (_, key, _) = spec.entry();
        let check = |ev: &bpfqos::dataplane::abi::Event, bit: u8, what: &str| {
            let (ty, k, other) = if v6 {
                (
                    2,
                    bpfqos::dataplane::abi::bytes_of(&ev.k6),
                    bpfqos::dataplane::abi::bytes_of(&ev.k4),
                )
            } else {
                (
                    1,
                    bpfqos::dataplane::abi::bytes_of(&ev.k4),
                    bpfqos::dataplane::abi::bytes_of(&ev.k6),
                )
            };
            assert_eq!(ev.r#type, ty, "{what}: event type");
            assert_eq!(
                ev.tcp_flags & bit,
                bit,
                "{what}: tcp flags {:#x}",
                ev.tcp_flags
            );
            assert_eq!(k, &key[..], "{what}: event key = the flow's key");
            assert!(
                other.iter().all(|b| *b == 0),
                "{what}: other family's key zeroed"
            );
            assert_eq!(ev.pad, [0; 3], "{what}: padding zeroed");
        };
        let bit = |f: Tcp| if f == Tcp::Fin { 0x01 } else { 0x04 };

        // First FIN/RST: passed to the kernel, flow flagged, exactly one event.
        let (input, _) = spec.frames(flags, b"");
        assert_xdp_pass(&mut env, "first fin/rst", din, &input);
        let ev = drain_events(&env.obj);
        assert_eq!(ev.len(), 1, "one event for the first FIN/RST");
        check(&ev[0], bit(flags), "first");

        // More FIN/RST of the flagged flow (both kinds, repeated): no more events.
        let (fin, _) = spec.frames(Tcp::Fin, b"");
        let (rst, _) = spec.frames(Tcp::Rst, b"");
        assert_eq!(run_xdp(&mut env.obj, &fin, din, 5).ret, XDP_PASS);
        assert_eq!(run_xdp(&mut env.obj, &rst, din, 5).ret, XDP_PASS);
        assert!(
            drain_events(&env.obj).is_empty(),
            "a second event for a flagged flow"
        );

        // A FIN of a flow that is not offloaded: nothing.
        let other = FlowSpec::new(
            din,
            Encap::plain(),
            Tuple { sport: 1, ..orig },
            dout,
            Encap::plain(),
            orig,
        );
        let (stranger, _) = other.frames(Tcp::Fin, b"");
        assert_xdp_pass(&mut env, "fin without flow", din, &stranger);
        assert!(
            drain_events(&env.obj).is_empty(),
            "event for an unknown flow"
        );

        // User space clears the flag: the next RST reports again, once.
        clear_teardown(&env.obj, &spec);
        assert_eq!(run_xdp(&mut env.obj, &rst, din, 3).ret, XDP_PASS);
        let ev = drain_events(&env.obj);
        assert_eq!(ev.len(), 1, "one event after the flag was cleared");
        check(&ev[0], 0x04, "after clear");

        // The TC twin reports through the same ring, with the same once-only rule.
        clear_teardown(&env.obj, &spec);
        assert_eq!(run_tc(&mut env.obj, &fin, din, 3).ret, TC_PASS);
        let ev = drain_events(&env.obj);
        assert_eq!(ev.len(), 1, "one event from TC");
        check(&ev[0], 0x01, "tc");
        spec.remove(&env.obj);
    }
}

/// The daemon's own reader of the ring buffer (what the event loop awaits) yields the key of
/// the flow a FIN hit, as a FlowKey equal to the installed entry's key.
#[test]
fn the_daemons_event_reader_names_the_flow() {
    let Some(mut env) = setup("the_daemons_event_reader_names_the_flow") else {
        return;
    };
    let (din, dout) = (env.dev[0], env.dev[1]);
    let orig = Tuple::v4(false);
    let spec = FlowSpec::new(din, Encap::plain(), orig, dout, Encap::plain(), orig.snat());
    spec.install(&env.obj);
    let (_, key, _) = spec.entry();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let keys = rt.block_on(async {
        let map = common::frames::find_map(&env.obj, bpfqos::dataplane::abi::EVENTS_MAP);
        let mut events = bpfqos::dataplane::events::TeardownEvents::open(&map).unwrap();
        let (input, _) = spec.frames(Tcp::Fin, b"");
        assert_xdp_pass(&mut env, "fin", din, &input);
        tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
            .await
            .expect("an event within 5 s")
            .unwrap()
    });
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].bytes(), &key[..]);
    spec.remove(&env.obj);
}

#[test]
fn stale_heartbeat_disabled_offload_and_missing_txport_pass() {
    let Some(mut env) = setup("stale_heartbeat_disabled_offload_and_missing_txport_pass") else {
        return;
    };
    let (din, dout) = (env.dev[0], env.dev[1]);
    let orig = Tuple::v4(false);
    let spec = FlowSpec::new(din, Encap::plain(), orig, dout, Encap::vlan(3), orig.snat());
    spec.install(&env.obj);
    let (input, expected) = spec.frames(Tcp::Ack, PAYLOAD);

    common::frames::set_control(&env.obj, 3_500_000_000, true);
    assert_xdp_pass(&mut env, "stale heartbeat (3.5 s)", din, &input);
    common::frames::set_control(&env.obj, 0, false);
    assert_xdp_pass(&mut env, "offload disabled", din, &input);
    common::frames::set_control(&env.obj, 2_000_000_000, true);
    let r = run_xdp(&mut env.obj, &input, din, 1);
    assert_eq!(r.ret, XDP_REDIRECT, "heartbeat 2 s old is still fresh");
    assert_eq!(r.data, expected);

    common::frames::find_map(&env.obj, bpfqos::dataplane::abi::TX_PORTS_MAP)
        .delete(&dout.to_ne_bytes())
        .unwrap();
    assert_xdp_pass(&mut env, "egress not in tx_ports", din, &input);
}

#[test]
fn ethernet_padding_is_trimmed_before_forwarding() {
    let Some(mut env) = setup("ethernet_padding_is_trimmed_before_forwarding") else {
        return;
    };
    let (din, dout) = (env.dev[0], env.dev[1]);
    let orig = Tuple::v4(false);
    let spec = FlowSpec::new(
        din,
        Encap::plain(),
        orig,
        dout,
        Encap::pppoe(1),
        orig.snat(),
    );
    spec.install(&env.obj);
    // A bare ACK: 54 bytes, padded to 60 on the wire.
    let (mut input, expected) = spec.frames(Tcp::Ack, b"");
    input.resize(60, 0);
    let r = run_xdp(&mut env.obj, &input, din, 1);
    assert_eq!(r.ret, XDP_REDIRECT);
    assert_eq!(r.data, expected, "{}", hexdiff(&r.data, &expected));
}

/// The TC twin: same rewrite for every L2 change it supports (the header does not shrink),
/// pass unchanged otherwise; FORWARD_TC entries are forwarded by TC only.
#[test]
fn tc_twin_forwards_growing_encaps_and_passes_shrinking_ones() {
    let Some(mut env) = setup("tc_twin_forwards_growing_encaps_and_passes_shrinking_ones") else {
        return;
    };
    let (din, dout) = (env.dev[0], env.dev[1]);
    let mut fwd = 0;
    for (i, eout) in Encap::matrix().into_iter().enumerate() {
        for ein in [Encap::plain(), Encap::pppoe(4), Encap::mtk(1)] {
            let orig = if i % 2 == 0 {
                Tuple::v4(i % 4 == 0)
            } else {
                Tuple::v6(i % 3 == 0)
            };
            let mut spec = FlowSpec::new(din, ein.clone(), orig, dout, eout.clone(), orig.snat());
            spec.action = 2; // FORWARD_TC: XDP must leave it alone
            spec.install(&env.obj);
            let (input, expected) = spec.frames(Tcp::Ack, PAYLOAD);
            assert_xdp_pass(&mut env, "FORWARD_TC at XDP", din, &input);
            let shrinks = expected.len() < input.len();
            let r = run_tc(&mut env.obj, &input, din, 1);
            let what = format!("tc {} -> {} {orig:?}", ein.name, eout.name);
            if shrinks {
                assert_eq!(r.ret, TC_PASS, "{what}");
                assert_eq!(r.data, input, "{what}: passed frame changed");
            } else {
                assert_eq!(r.ret, TC_ACT_REDIRECT, "{what}");
                assert_eq!(r.data, expected, "{what}:{}", hexdiff(&r.data, &expected));
                fwd += 1;
            }
            spec.remove(&env.obj);
        }
    }
    assert!(fwd >= 8, "only {fwd} TC forwards");
}

/// Shaped flows (issue 12): a download is rewritten by XDP and passed for the TC twin to send
/// into the shaper; the TC twin does the same rewrite where XDP is not; an upload goes to the
/// shaped L3 device with a plain Ethernet header (Ethernet-type) or its L2 header untouched
/// (PPP, the kernel strips it); XDP leaves uploads to TC.
#[test]
fn shaped_flows_take_their_shapers_way() {
    let Some(mut env) = setup("shaped_flows_take_their_shapers_way") else {
        return;
    };
    let (din, dout, shaper) = (env.dev[0], env.dev[1], 77u16);
    let to_shaper = |obj: &libbpf_rs::Object| {
        common::bpf::stats(obj)
            .iter()
            .find(|(i, _)| *i == bpfqos::dataplane::abi::Stat::BPFQOS_STAT_TO_SHAPER.0)
            .map_or(0, |(_, n)| *n)
    };
    // Download: XDP undoes any encapsulation, rewrites, and passes the frame. The shaper
    // classifies circuits: the connection is found by its WAN-side tuple (circuit 9).
    use bpfqos::dataplane::abi;
    let set_shaper_flags = |obj: &libbpf_rs::Object, flags: u32| {
        let v = abi::Shaping { target: 0, flags };
        obj.maps()
            .find(|m| m.name() == abi::SHAPING_MAP)
            .expect("shaping map")
            .update(
                &u32::from(shaper).to_ne_bytes(),
                abi::bytes_of(&v),
                MapFlags::ANY,
            )
            .expect("shaping update");
    };
    let orig = Tuple::v4(false);
    let wan = bpfqos::dataplane::circuits::WanTuple {
        proto: 6,
        local: orig.dst,
        local_port: orig.dport,
        remote: orig.src,
        remote_port: orig.sport,
    };
    env.obj
        .maps()
        .find(|m| m.name() == abi::CIRCUIT_NAT_MAP)
        .expect("circuit_nat")
        .update(
            abi::bytes_of(&bpfqos::dataplane::circuits::nat_key(&wan).expect("key")),
            &9u32.to_ne_bytes(),
            MapFlags::ANY,
        )
        .expect("circuit_nat update");
    let class_9 = (u32::from(abi::SHAPER_MAJOR) << 16) | (u32::from(abi::CIRCUIT_MINOR_BASE) + 9);
    for (ein, circuits) in [
        (Encap::plain(), false),
        (Encap::plain(), true),
        (Encap::vlan_pppoe(7, 0x22), true),
        (Encap::qinq(10, 20), false),
    ] {
        set_shaper_flags(
            &env.obj,
            if circuits {
                abi::SHAPE_F_CIRCUITS_DOWN
            } else {
                0
            },
        );
        let mut spec = FlowSpec::new(din, ein.clone(), orig, dout, Encap::plain(), orig.dnat());
        spec.action = 4;
        spec.shaper = shaper;
        spec.install(&env.obj);
        let (input, expected) = spec.frames(Tcp::Ack, b"shaped download");
        let before = to_shaper(&env.obj);
        let r = run_xdp(&mut env.obj, &input, din, 1);
        assert_eq!(r.ret, XDP_PASS, "{}", ein.name);
        // BPF_PROG_TEST_RUN returns the metadata in front of the frame: the TC twin's orders.
        let (meta, frame) = r.data.split_at(12);
        assert_eq!(
            &meta[8..12],
            &(if circuits { 9u32 } else { 0 }).to_ne_bytes(),
            "{}: circuit",
            ein.name
        );
        assert_eq!(
            &meta[0..4],
            &bpfqos::dataplane::abi::META_MAGIC.to_ne_bytes(),
            "{}: magic",
            ein.name
        );
        assert_eq!(&meta[4..6], &shaper.to_ne_bytes(), "{}: shaper", ein.name);
        assert_eq!(
            &meta[6..8],
            &(dout as u16).to_ne_bytes(),
            "{}: egress",
            ein.name
        );
        assert_eq!(
            frame,
            expected,
            "{}: {}",
            ein.name,
            hexdiff(frame, &expected)
        );
        assert_eq!(to_shaper(&env.obj), before + 1, "{}", ein.name);
        assert_eq!(spec.counters(&env.obj).packets, 1);
        // Without XDP, the TC twin forwards it into the shaper itself, in its circuit.
        if ein == Encap::plain() {
            let r = run_tc(&mut env.obj, &input, din, 1);
            assert_eq!(r.ret, TC_ACT_REDIRECT);
            assert_eq!(r.data, expected, "{}", hexdiff(&r.data, &expected));
            assert_eq!(r.priority, if circuits { class_9 } else { 0 });
        }
        spec.remove(&env.obj);
    }
    // Upload to an Ethernet-type L3 device (a VLAN device, say): plain Ethernet to it.
    let orig = Tuple::v6(false);
    let mut up = FlowSpec::new(din, Encap::plain(), orig, dout, Encap::plain(), orig);
    up.action = 2;
    up.install(&env.obj);
    let (input, expected) = up.frames(Tcp::Ack, b"shaped upload");
    assert_xdp_pass(&mut env, "FORWARD_TC at XDP", din, &input);
    let r = run_tc(&mut env.obj, &input, din, 1);
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    assert_eq!(r.data, expected, "{}", hexdiff(&r.data, &expected));
    up.remove(&env.obj);
    // Upload to a PPP device: the IP packet rewritten, the L2 header left for the kernel.
    let orig = Tuple::v4(true);
    let mut ppp = FlowSpec::new(din, Encap::plain(), orig, dout, Encap::plain(), orig.snat());
    ppp.action = 3;
    ppp.install(&env.obj);
    let (input, expected) = ppp.frames(Tcp::Ack, b"to pppoe-wan");
    assert_xdp_pass(&mut env, "FORWARD_L3 at XDP", din, &input);
    let r = run_tc(&mut env.obj, &input, din, 1);
    assert_eq!(r.ret, TC_ACT_REDIRECT);
    let mut want = input[..14].to_vec();
    want.extend_from_slice(&expected[14..]);
    assert_eq!(r.data, want, "{}", hexdiff(&r.data, &want));
    // ...but only when the frame arrives without in-frame encapsulation.
    let mut tagged = FlowSpec::new(
        din,
        Encap::qinq(5, 6),
        orig,
        dout,
        Encap::plain(),
        orig.snat(),
    );
    tagged.action = 3;
    tagged.install(&env.obj);
    let (input, _) = tagged.frames(Tcp::Ack, b"");
    let r = run_tc(&mut env.obj, &input, din, 1);
    assert_eq!(
        (r.ret, r.data),
        (TC_PASS, input),
        "QinQ to an L3 device: kernel"
    );
    ppp.remove(&env.obj);
    tagged.remove(&env.obj);
}

/// After GRO, TC sees TCP super-packets: they fit the egress when their segments do.
#[test]
fn the_tc_twin_measures_gso_packets_by_their_segments() {
    let Some(mut env) = setup("the_tc_twin_measures_gso_packets_by_their_segments") else {
        return;
    };
    let (din, dout) = (env.dev[0], env.dev[1]);
    let orig = Tuple::v4(false);
    let mut spec = FlowSpec::new(din, Encap::plain(), orig, dout, Encap::plain(), orig.snat());
    spec.mtu = 1000;
    spec.install(&env.obj);
    // 1400 bytes of IP packet: too big as one packet, fine as segments of 500 bytes of payload.
    let (input, expected) = spec.frames(Tcp::Ack, &[7u8; 1360]);
    let r = run_tc(&mut env.obj, &input, din, 1);
    assert_eq!(
        r.ret, TC_PASS,
        "a 1400-byte packet over a 1000-byte MTU: kernel"
    );
    let r = common::bpf::run_tc_gso(&mut env.obj, &input, din, 1, 500);
    assert_eq!(r.ret, TC_ACT_REDIRECT, "segments of 540 bytes fit");
    assert_eq!(r.data, expected, "{}", hexdiff(&r.data, &expected));
    let r = common::bpf::run_tc_gso(&mut env.obj, &input, din, 1, 990);
    assert_eq!(r.ret, TC_PASS, "segments of 1030 bytes do not");
    spec.remove(&env.obj);
}

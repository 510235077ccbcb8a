//! Passive RTT in the data path, packet by packet, through BPF_PROG_TEST_RUN (root only).
//!
//! A LAN client C (198.18.1.10:40000 / fd00:1::10) talks to a server S behind NAT (the router's
//! W:61000). Device `lan` (dev[0]) and `wan` (dev[1]); a packet leaving is run through the TC
//! egress program `bpfqos_rtt_out` (kernel path) or forwarded by XDP (offloaded), a packet
//! arriving through `bpfqos_xdp` or its TC twin. The crafted sequences check timestamp and
//! SEQ/ACK matching, wraparound, SACK, duplicate ACKs, retransmits (Karn), reordering, window
//! probes, pure ACKs, FIN, every encapsulation of the offload's matrix, both families, and
//! the per-interface and per-circuit histograms. Samples are real times: each test sleeps
//! between a departure and its answer and checks the sample is at least that (and below a
//! bound no scheduler delay reaches).

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::net::IpAddr;
use std::time::Duration;

use bpfqos::dataplane::abi;
use bpfqos::dataplane::rtt::RttKey;
use bpfqos::rtt::hist;
use common::bpf::run_tc;
use common::bpf::run_xdp;
use common::bpf::Env;
use common::bpf::TC_PASS;
use common::bpf::XDP_PASS;
use common::bpf::XDP_REDIRECT;
use common::frames::find_map;
use common::frames::map_update;
use common::frames::wrap;
use common::frames::Dir;
use common::frames::Encap;
use common::frames::FlowSpec;
use common::frames::Tuple;
use common::frames::MAC_CLIENT;
use common::frames::MAC_ROUTER_IN;
use common::frames::MAC_ROUTER_OUT;
use common::frames::MAC_SERVER;
use etherparse::PacketBuilder;
use libbpf_rs::MapCore;
use libbpf_rs::MapFlags;
use libbpf_rs::Object;
use libbpf_rs::ProgramInput;

/// Sleep between a departure and its answer; samples must be at least this.
const GAP: Duration = Duration::from_millis(3);
/// No sample of a test may exceed this (a stalled machine, not a bug, could only approach it).
const BOUND_US: u32 = 2_000_000;

const LAN_SLOT: u8 = 1;
const WAN_SLOT: u8 = 2;

/// One TCP segment to craft.
#[derive(Clone, Copy, Debug, Default)]
struct Seg {
    seq: u32,
    ack: Option<u32>,
    len: usize,
    /// (TSval, TSecr)
    ts: Option<(u32, u32)>,
    /// The timestamp option first (no NOP NOP in front).
    ts_first: bool,
    /// One SACK block.
    sack: Option<(u32, u32)>,
    syn: bool,
    fin: bool,
}

fn seg(seq: u32, len: usize) -> Seg {
    Seg {
        seq,
        ack: Some(1),
        len,
        ..Default::default()
    }
}

fn ack(ack: u32) -> Seg {
    Seg {
        seq: 1,
        ack: Some(ack),
        ..Default::default()
    }
}

impl Seg {
    fn ts(mut self, val: u32, ecr: u32) -> Self {
        self.ts = Some((val, ecr));
        self
    }
}

fn ip_of(t: &Tuple, s: &Seg) -> Vec<u8> {
    let mut opts = Vec::new();
    if let Some((v, e)) = s.ts {
        if !s.ts_first {
            opts.extend([1, 1]);
        }
        opts.extend([8, 10]);
        opts.extend(v.to_be_bytes());
        opts.extend(e.to_be_bytes());
        if s.ts_first {
            opts.extend([1, 1]);
        }
    }
    if let Some((l, r)) = s.sack {
        opts.extend([1, 1, 5, 10]);
        opts.extend(l.to_be_bytes());
        opts.extend(r.to_be_bytes());
    }
    let payload = vec![0x5au8; s.len];
    let mut out = Vec::new();
    macro_rules! tcp {
        ($b:expr) => {{
            let mut b = $b.tcp(t.sport, t.dport, s.seq, 64240);
            if let Some(a) = s.ack {
                b = b.ack(a);
            }
            if s.syn {
                b = b.syn();
            }
            if s.fin {
                b = b.fin();
            }
            b.options_raw(&opts)
                .unwrap()
                .write(&mut out, &payload)
                .unwrap();
        }};
    }
    match (t.src, t.dst) {
        (IpAddr::V4(a), IpAddr::V4(b)) => tcp!(PacketBuilder::ipv4(a.octets(), b.octets(), 64)),
        (IpAddr::V6(a), IpAddr::V6(b)) => tcp!(PacketBuilder::ipv6(a.octets(), b.octets(), 64)),
        _ => panic!("mixed families"),
    }
    out
}

/// The connection: client's tuple (LAN), the same after SNAT (WAN), and both reversed.
struct Conn {
    /// C → S as the client sends it.
    c2s: Tuple,
    /// W → S: what leaves by the WAN.
    w2s: Tuple,
}

impl Conn {
    fn new(v6: bool) -> Self {
        let c2s = if v6 {
            Tuple::v6(false)
        } else {
            Tuple::v4(false)
        };
        Self {
            c2s,
            w2s: c2s.snat(),
        }
    }
    /// S → W: what arrives by the WAN.
    fn s2w(&self) -> Tuple {
        rev(&self.w2s)
    }
    /// S → C: what leaves by the LAN.
    fn s2c(&self) -> Tuple {
        rev(&self.c2s)
    }
}

fn rev(t: &Tuple) -> Tuple {
    Tuple {
        udp: t.udp,
        src: t.dst,
        dst: t.src,
        sport: t.dport,
        dport: t.sport,
    }
}

struct Rig {
    env: Env,
    lan: u32,
    wan: u32,
}

impl Rig {
    /// Offload on or off, RTT on; `wan` faces the Internet (slot 2), `lan` slot 1.
    fn new(test: &str, offload: bool) -> Option<Self> {
        let env = common::bpf::setup(test, 2)?;
        common::frames::set_control_rtt(&env.obj, 0, offload, true);
        let (lan, wan) = (env.dev[0], env.dev[1]);
        let mut r = Self { env, lan, wan };
        r.iface(lan, 0, LAN_SLOT, 0);
        r.iface(wan, 0, WAN_SLOT, abi::IFACE_F_WAN);
        Some(r)
    }

    fn iface(&mut self, ifindex: u32, dsa: u8, slot: u8, flags: u32) {
        let v = abi::Iface {
            dsa_proto: dsa,
            rtt_slot: slot,
            flags,
            ..Default::default()
        };
        map_update(
            &self.env.obj,
            abi::IFACES_MAP,
            &ifindex.to_ne_bytes(),
            abi::bytes_of(&v),
        );
    }

    fn obj(&mut self) -> &mut Object {
        &mut self.env.obj
    }

    /// `s` of tuple `t` leaves by `dev` (TC egress), having come in by `from`.
    fn out(&mut self, dev: u32, from: u32, e: &Encap, t: &Tuple, s: Seg) {
        let frame = wrap(MAC_SERVER, MAC_ROUTER_OUT, e, Dir::Tx, &ip_of(t, &s));
        let ret = run_egress(self.obj(), &frame, dev, from);
        assert_eq!(ret, TC_PASS, "the egress hook only looks");
    }

    /// `s` of tuple `t` arrives by `dev` through XDP (nothing installed: passed).
    fn arrive(&mut self, dev: u32, e: &Encap, t: &Tuple, s: Seg) {
        let frame = wrap(MAC_ROUTER_IN, MAC_CLIENT, e, Dir::Rx, &ip_of(t, &s));
        let r = run_xdp(self.obj(), &frame, dev, 1);
        assert_eq!(r.ret, XDP_PASS, "no flow entry: passed");
        assert_eq!(r.data, frame, "passed unchanged");
    }

    /// The same through the TC twin.
    fn arrive_tc(&mut self, dev: u32, e: &Encap, t: &Tuple, s: Seg) {
        let frame = wrap(MAC_ROUTER_IN, MAC_CLIENT, e, Dir::Rx, &ip_of(t, &s));
        let r = run_tc(self.obj(), &frame, dev, 1);
        assert_eq!(r.ret, TC_PASS, "no flow entry: passed");
    }

    fn half(&self, t: &Tuple) -> Option<abi::RttState> {
        half(&self.env.obj, t)
    }

    fn hist(&self, slot: u8, wan: bool) -> Vec<u64> {
        let key = u32::from(slot) * 2 + u32::from(wan);
        let v = find_map(&self.env.obj, abi::RTT_HIST_MAP)
            .lookup(&key.to_ne_bytes(), MapFlags::ANY)
            .unwrap()
            .unwrap();
        hist::counts(&abi::from_bytes::<abi::RttHist>(&v).unwrap())
    }

    fn stat(&self, s: abi::RttStat) -> u64 {
        find_map(&self.env.obj, abi::RTT_STATS_MAP)
            .lookup_percpu(&s.0.to_ne_bytes(), MapFlags::ANY)
            .unwrap()
            .unwrap()
            .iter()
            .map(|b| u64::from_ne_bytes(b[..8].try_into().unwrap()))
            .sum()
    }
}

/// Runs `bpfqos_rtt_out` on `frame` leaving by `ifindex`, received earlier on `ingress`.
fn run_egress(obj: &mut Object, frame: &[u8], ifindex: u32, ingress: u32) -> u32 {
    let prog = obj
        .progs_mut()
        .find(|p| p.name() == abi::RTT_OUT_PROG)
        .expect("rtt egress program");
    // struct __sk_buff: ingress_ifindex at 36, ifindex at 40.
    let mut ctx = [0u8; 192];
    ctx[36..40].copy_from_slice(&ingress.to_ne_bytes());
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 256];
    let input = ProgramInput {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat: 1,
        context_in: Some(&mut ctx[..]),
        ..Default::default()
    };
    prog.test_run(input)
        .expect("test run (rtt egress)")
        .return_value
}

/// The slot of the half of packets leaving with tuple `t`, found the data path's way (the
/// hash of bpfqos_abi.h over the key, seeded with the test's seed): (map, index, state).
fn find(obj: &Object, t: &Tuple) -> Option<(&'static str, u32, abi::RttState)> {
    let key = RttKey::new(t.src, t.sport, t.dst, t.dport).unwrap();
    let (map, v6) = match key {
        RttKey::V4(_) => (abi::RTT4_MAP, false),
        RttKey::V6(_) => (abi::RTT6_MAP, true),
    };
    let first = key.bucket(common::frames::TEST_SEED[0]);
    (first..first + 2).find_map(|i| {
        let v = find_map(obj, map)
            .lookup(&i.to_ne_bytes(), MapFlags::ANY)
            .unwrap()?;
        let (k, s) = if v6 {
            let x = abi::from_bytes::<abi::RttSlot6>(&v).unwrap();
            (RttKey::V6(x.key), x.s)
        } else {
            let x = abi::from_bytes::<abi::RttSlot4>(&v).unwrap();
            (RttKey::V4(x.key), x.s)
        };
        (s.flags & abi::RTT_F_USED != 0 && k == key).then_some((map, i, s))
    })
}

/// The half of packets leaving with tuple `t`.
fn half(obj: &Object, t: &Tuple) -> Option<abi::RttState> {
    find(obj, t).map(|(_, _, s)| s)
}

/// Frees the half's slot, as the daemon does.
fn forget(obj: &Object, t: &Tuple) {
    if let Some((map, i, _)) = find(obj, t) {
        let m = find_map(obj, map);
        let zero = vec![0u8; m.value_size() as usize];
        m.update(&i.to_ne_bytes(), &zero, MapFlags::ANY).unwrap();
    }
}

fn gap() {
    std::thread::sleep(GAP);
}

/// The sample `s` took last is a real one for a GAP-long wait.
fn assert_timed(what: &str, s: &abi::RttState) {
    let min = GAP.as_micros() as u32;
    assert!(
        (min..BOUND_US).contains(&s.last_us),
        "{what}: sample {} µs, expected at least {min} µs",
        s.last_us
    );
}

#[test]
fn timestamps_time_both_sides_through_every_encapsulation_and_family() {
    let Some(mut rig) = Rig::new(
        "timestamps_time_both_sides_through_every_encapsulation_and_family",
        true,
    ) else {
        return;
    };
    let (lan, wan) = (rig.lan, rig.wan);
    let mut timed = 0u64;
    for (n, e) in Encap::matrix().iter().enumerate() {
        let c = Conn::new(n % 2 == 1);
        rig.iface(wan, e.dsa_proto(), WAN_SLOT, abi::IFACE_F_WAN);
        let what = format!("{e:?} v6={}", n % 2 == 1);
        let base = (n as u32) * 1000;

        // WAN side: the client's data leaves by the WAN, the server's echo arrives there.
        rig.out(wan, lan, e, &c.w2s, seg(1000, 100).ts(base + 10, 7));
        let h = rig
            .half(&c.w2s)
            .unwrap_or_else(|| panic!("{what}: a half for the data leaving"));
        assert_eq!(h.flags & abi::RTT_F_WAN, abi::RTT_F_WAN, "{what}");
        assert_eq!(
            (h.slot_out, h.slot_in, h.ifindex),
            (WAN_SLOT, LAN_SLOT, wan)
        );
        assert_ne!(h.t_sent, 0, "{what}: a probe is out");
        gap();
        // An echo of an older TSval is not ours; then ours.
        rig.arrive(wan, e, &c.s2w(), ack(1050).ts(90_000, base + 9));
        assert_eq!(rig.half(&c.w2s).unwrap().samples, 0, "{what}: old echo");
        rig.arrive(wan, e, &c.s2w(), ack(1100).ts(90_001, base + 10));
        let h = rig.half(&c.w2s).unwrap();
        assert_eq!(h.samples, 1, "{what}: the echo is a sample");
        assert_timed(&what, &h);
        assert_eq!(h.t_sent, 0, "{what}: the probe is answered");
        // A second echo of the same TSval is not a second sample.
        rig.arrive(wan, e, &c.s2w(), ack(1100).ts(90_002, base + 10));
        assert_eq!(
            rig.half(&c.w2s).unwrap().samples,
            1,
            "{what}: one sample per probe"
        );

        // LAN side: the server's data leaves by the LAN, the client's echo arrives there,
        // through the TC twin this time (no XDP on lan).
        rig.out(
            lan,
            wan,
            &Encap::plain(),
            &c.s2c(),
            seg(5000, 1400).ts(70_000, 500),
        );
        gap();
        rig.arrive_tc(lan, &Encap::plain(), &c.c2s, ack(6400).ts(600, 70_000));
        let h = rig.half(&c.s2c()).unwrap();
        assert_eq!(
            (h.samples, h.flags & abi::RTT_F_WAN),
            (1, 0),
            "{what}: LAN sample"
        );
        assert_eq!((h.slot_out, h.slot_in), (LAN_SLOT, WAN_SLOT));
        assert_timed(&what, &h);
        timed += 1;
        forget(rig.obj(), &c.w2s);
        forget(rig.obj(), &c.s2c());
    }
    assert_eq!(
        timed,
        Encap::matrix().len() as u64,
        "every encapsulation timed"
    );
    // Every sample went into both interfaces' histograms, on its side.
    for (slot, wan) in [
        (WAN_SLOT, true),
        (LAN_SLOT, true),
        (WAN_SLOT, false),
        (LAN_SLOT, false),
    ] {
        assert_eq!(
            hist::total(&rig.hist(slot, wan)),
            timed,
            "slot {slot} side wan={wan}"
        );
    }
    let med = hist::quantile(&rig.hist(WAN_SLOT, true), 0.5).unwrap();
    assert!(med >= GAP.as_micros() as u64, "median {med} µs");
}

#[test]
fn timestamps_wrap_and_a_later_echo_drops_the_probe() {
    let Some(mut rig) = Rig::new("timestamps_wrap_and_a_later_echo_drops_the_probe", true) else {
        return;
    };
    let (lan, wan, p) = (rig.lan, rig.wan, Encap::plain());
    let c = Conn::new(false);
    // TSval about to wrap, in the TS-first layout.
    let mut s = seg(1, 10).ts(0xffff_fff0, 1);
    s.ts_first = true;
    rig.out(wan, lan, &p, &c.w2s, s);
    gap();
    rig.arrive(wan, &p, &c.s2w(), ack(11).ts(5, 0xffff_fff0));
    assert_eq!(rig.half(&c.w2s).unwrap().samples, 1);
    // Past the wrap: a new TSval is a new probe. The same TSval again is not.
    rig.out(wan, lan, &p, &c.w2s, seg(11, 10).ts(3, 6));
    let t_sent = rig.half(&c.w2s).unwrap().t_sent;
    assert_ne!(t_sent, 0);
    rig.out(wan, lan, &p, &c.w2s, seg(21, 10).ts(3, 6));
    assert_eq!(
        rig.half(&c.w2s).unwrap().t_sent,
        t_sent,
        "same TSval: same probe"
    );
    // The echo of a later TSval (ours was lost): the probe is dropped, no sample.
    let discarded = rig.stat(abi::RttStat::BPFQOS_RTT_STAT_DISCARDED);
    rig.arrive(wan, &p, &c.s2w(), ack(31).ts(6, 4));
    let h = rig.half(&c.w2s).unwrap();
    assert_eq!((h.samples, h.t_sent), (1, 0));
    assert_eq!(
        rig.stat(abi::RttStat::BPFQOS_RTT_STAT_DISCARDED),
        discarded + 1
    );
    // A probe across the wrap whose echo is "later" by wrapped arithmetic is dropped too.
    rig.out(wan, lan, &p, &c.w2s, seg(31, 10).ts(0xffff_fffe, 7));
    rig.arrive(wan, &p, &c.s2w(), ack(41).ts(8, 2));
    assert_eq!(rig.half(&c.w2s).unwrap().t_sent, 0);
    assert_eq!(rig.half(&c.w2s).unwrap().samples, 1);
}

#[test]
fn seq_ack_times_data_without_timestamps_and_keeps_karns_rule() {
    let Some(mut rig) = Rig::new(
        "seq_ack_times_data_without_timestamps_and_keeps_karns_rule",
        true,
    ) else {
        return;
    };
    let (lan, wan, p) = (rig.lan, rig.wan, Encap::plain());
    for v6 in [false, true] {
        let c = Conn::new(v6);
        // A pure ACK without timestamps times nothing: no half.
        rig.out(wan, lan, &p, &c.w2s, ack(77));
        assert!(rig.half(&c.w2s).is_none(), "pure ACK: no half");

        // Data [1000, 1100): a probe for ACK 1100. Duplicate ACKs and an ACK with SACK
        // beyond it do not answer it; ACK 1100 does.
        rig.out(wan, lan, &p, &c.w2s, seg(1000, 100));
        rig.out(wan, lan, &p, &c.w2s, seg(1100, 100)); // a probe is out: not a new one
        gap();
        rig.arrive(wan, &p, &c.s2w(), ack(1000));
        rig.arrive(wan, &p, &c.s2w(), ack(1000));
        let mut sack = ack(1000);
        sack.sack = Some((1100, 1200));
        rig.arrive(wan, &p, &c.s2w(), sack);
        assert_eq!(
            rig.half(&c.w2s).unwrap().samples,
            0,
            "dup ACKs, SACK: no sample"
        );
        rig.arrive(wan, &p, &c.s2w(), ack(1100));
        let h = rig.half(&c.w2s).unwrap();
        assert_eq!((h.samples, h.retrans, h.packets), (1, 0, 2), "v6={v6}");
        assert_timed("seq/ack", &h);

        // Retransmit of [1000, 1100) is counted; a probe on [1200, 1300) overlapped by a
        // retransmit of itself is worthless (Karn): its ACK is no sample.
        rig.out(wan, lan, &p, &c.w2s, seg(1000, 100));
        assert_eq!(rig.half(&c.w2s).unwrap().retrans, 1);
        rig.out(wan, lan, &p, &c.w2s, seg(1200, 100));
        rig.out(wan, lan, &p, &c.w2s, seg(1200, 100));
        let discarded = rig.stat(abi::RttStat::BPFQOS_RTT_STAT_DISCARDED);
        rig.arrive(wan, &p, &c.s2w(), ack(1300));
        let h = rig.half(&c.w2s).unwrap();
        assert_eq!((h.samples, h.retrans), (1, 2), "Karn: no sample");
        assert_eq!(
            rig.stat(abi::RttStat::BPFQOS_RTT_STAT_DISCARDED),
            discarded + 1
        );

        // A one-byte window probe/keepalive just behind the front is not a retransmit.
        rig.out(wan, lan, &p, &c.w2s, seg(1299, 1));
        assert_eq!(rig.half(&c.w2s).unwrap().retrans, 2, "keepalive byte");
        // Reordered before the router: the late segment looks like a retransmit (the only
        // evidence is the sequence going back) and times nothing.
        rig.out(wan, lan, &p, &c.w2s, seg(1400, 100));
        rig.out(wan, lan, &p, &c.w2s, seg(1300, 100));
        assert_eq!(rig.half(&c.w2s).unwrap().retrans, 3, "reordered");
        gap();
        rig.arrive(wan, &p, &c.s2w(), ack(1500));
        assert_eq!(
            rig.half(&c.w2s).unwrap().samples,
            2,
            "the probe on 1400 answered"
        );

        // FIN takes a sequence number: timed like data.
        let mut fin = seg(1500, 0);
        fin.fin = true;
        rig.out(wan, lan, &p, &c.w2s, fin);
        gap();
        rig.arrive(wan, &p, &c.s2w(), ack(1501));
        let h = rig.half(&c.w2s).unwrap();
        assert_eq!((h.samples, h.retrans), (3, 3), "FIN acknowledged");
        assert!(h.min_us >= GAP.as_micros() as u32 && h.srtt8_us >= h.min_us * 8);

        // Another connection whose sequence numbers wrap: [0xffffff00, +0x200) is
        // acknowledged by 0x100, and data after the wrap is new, not resent.
        let w = Conn::new(v6);
        let w2s = Tuple {
            sport: 62001,
            ..w.w2s
        };
        rig.out(wan, lan, &p, &w2s, seg(0xffff_ff00, 0x200));
        gap();
        rig.arrive(wan, &p, &rev(&w2s), ack(0x0000_0080));
        assert_eq!(
            rig.half(&w2s).unwrap().samples,
            0,
            "before the end: no sample"
        );
        rig.arrive(wan, &p, &rev(&w2s), ack(0x0000_0100));
        rig.out(wan, lan, &p, &w2s, seg(0x100, 0x100));
        let h = rig.half(&w2s).unwrap();
        assert_eq!((h.samples, h.retrans), (1, 0), "across the wrap");
        assert_timed("wrap", &h);
    }
}

#[test]
fn a_syn_times_the_handshake_and_starts_afresh() {
    let Some(mut rig) = Rig::new("a_syn_times_the_handshake_and_starts_afresh", true) else {
        return;
    };
    let (lan, wan, p) = (rig.lan, rig.wan, Encap::plain());
    let c = Conn::new(false);
    // An old half of the same tuple with a high sequence, answered.
    rig.out(wan, lan, &p, &c.w2s, seg(0x7000_0000, 100));
    rig.arrive(wan, &p, &c.s2w(), ack(0x7000_0064));
    assert_eq!(rig.half(&c.w2s).unwrap().samples, 1);
    // A new connection on the tuple: its SYN is not "resent" data, and it is timed by the
    // SYN-ACK.
    let syn = Seg {
        seq: 5000,
        syn: true,
        ..Default::default()
    };
    rig.out(wan, lan, &p, &c.w2s, syn);
    assert_eq!(rig.half(&c.w2s).unwrap().retrans, 0);
    let synack = Seg {
        syn: true,
        ..ack(5001)
    };
    gap();
    rig.arrive(wan, &p, &c.s2w(), synack);
    let h = rig.half(&c.w2s).unwrap();
    assert_eq!(h.samples, 2);
    assert_timed("handshake", &h);
    // The SYN sent again is a retransmit, and Karn's rule keeps its answer from timing it.
    let d = Tuple {
        sport: 62002,
        ..c.w2s
    };
    rig.out(wan, lan, &p, &d, syn);
    rig.out(wan, lan, &p, &d, syn);
    rig.arrive(wan, &p, &rev(&d), synack);
    let h = rig.half(&d).unwrap();
    assert_eq!(
        (h.samples, h.retrans),
        (0, 1),
        "SYN retransmit: counted, not timed"
    );
}

#[test]
fn offloaded_flows_are_timed_in_the_fast_path_with_nat_circuits_and_histograms() {
    let Some(mut rig) = Rig::new(
        "offloaded_flows_are_timed_in_the_fast_path_with_nat_circuits_and_histograms",
        true,
    ) else {
        return;
    };
    let (lan, wan) = (rig.lan, rig.wan);
    for v6 in [false, true] {
        let c = Conn::new(v6);
        // The client's host is circuit 7.
        let circuit = 7u32;
        match c.c2s.src {
            IpAddr::V4(a) => map_update(
                rig.obj(),
                abi::CIRCUITS4_MAP,
                abi::bytes_of(&abi::Lpm4Key {
                    prefixlen: 32,
                    addr: abi::ip4(a),
                }),
                &circuit.to_ne_bytes(),
            ),
            IpAddr::V6(a) => map_update(
                rig.obj(),
                abi::CIRCUITS6_MAP,
                abi::bytes_of(&abi::Lpm6Key {
                    prefixlen: 128,
                    addr: abi::ip6(a),
                }),
                &circuit.to_ne_bytes(),
            ),
        }
        // Upload C → S arrives on lan, leaves by wan as W → S; the reply the other way.
        let up = FlowSpec::new(lan, Encap::vlan(10), c.c2s, wan, Encap::pppoe(7), c.w2s);
        let down = FlowSpec::new(wan, Encap::pppoe(7), c.s2w(), lan, Encap::vlan(10), c.s2c());
        up.install(rig.obj());
        down.install(rig.obj());
        let frame = |spec: &FlowSpec, s: Seg| {
            wrap(
                MAC_ROUTER_IN,
                MAC_CLIENT,
                &spec.in_encap,
                Dir::Rx,
                &ip_of(&spec.orig, &s),
            )
        };
        let r = run_xdp(rig.obj(), &frame(&up, seg(1000, 100).ts(40, 9)), lan, 1);
        assert_eq!(r.ret, XDP_REDIRECT);
        let h = rig.half(&c.w2s).expect("a half for the offloaded upload");
        // Leaving by the WAN after NAT, the half is the circuit host's only through its
        // WAN-side tuple, which the daemon records once conntrack tells it (after the first
        // packets): not known yet, looked up again at the first sample.
        assert_eq!(
            (h.ifindex, h.slot_out, h.slot_in, h.circuit),
            (wan, WAN_SLOT, LAN_SLOT, 0),
            "v6={v6}"
        );
        let nat = bpfqos::dataplane::circuits::nat_key(&bpfqos::dataplane::circuits::WanTuple {
            proto: 6,
            local: c.w2s.src,
            local_port: c.w2s.sport,
            remote: c.w2s.dst,
            remote_port: c.w2s.dport,
        })
        .unwrap();
        map_update(
            rig.obj(),
            abi::CIRCUIT_NAT_MAP,
            abi::bytes_of(&nat),
            &circuit.to_ne_bytes(),
        );
        gap();
        let r = run_xdp(
            rig.obj(),
            &frame(&down, seg(1, 1400).ts(20_000, 40)),
            wan,
            1,
        );
        assert_eq!(r.ret, XDP_REDIRECT, "the echo is forwarded too");
        let h = rig.half(&c.w2s).unwrap();
        assert_eq!(h.samples, 1, "WAN sample from offloaded packets");
        assert_eq!(h.circuit, circuit, "the circuit found at the sample");
        assert_timed("offloaded wan", &h);
        // The download data started the LAN half; the client's ACK answers it.
        let l = rig
            .half(&c.s2c())
            .expect("a half for the offloaded download");
        assert_eq!(
            (l.slot_out, l.slot_in, l.circuit),
            (LAN_SLOT, WAN_SLOT, circuit)
        );
        gap();
        let r = run_xdp(rig.obj(), &frame(&up, ack(1401).ts(41, 20_000)), lan, 1);
        assert_eq!(r.ret, XDP_REDIRECT);
        let l = rig.half(&c.s2c()).unwrap();
        assert_eq!(l.samples, 1, "LAN sample");
        assert_timed("offloaded lan", &l);
        up.remove(rig.obj());
        down.remove(rig.obj());
    }
    // The circuit's histograms hold both sides of both connections.
    let circuit_hist = |wan: bool| {
        let key = 7u32 << 1 | u32::from(wan);
        let v = find_map(&rig.env.obj, abi::RTT_CIRCUIT_HIST_MAP)
            .lookup(&key.to_ne_bytes(), MapFlags::ANY)
            .unwrap()
            .expect("circuit histogram");
        hist::total(&hist::counts(&abi::from_bytes::<abi::RttHist>(&v).unwrap()))
    };
    assert_eq!((circuit_hist(true), circuit_hist(false)), (2, 2));
    assert_eq!(hist::total(&rig.hist(WAN_SLOT, true)), 2);
    assert_eq!(hist::total(&rig.hist(LAN_SLOT, false)), 2);
}

#[test]
fn rtt_is_measured_with_offload_off_and_nothing_is_measured_with_rtt_off() {
    let Some(mut rig) = Rig::new(
        "rtt_is_measured_with_offload_off_and_nothing_is_measured_with_rtt_off",
        false,
    ) else {
        return;
    };
    let (lan, wan, p) = (rig.lan, rig.wan, Encap::plain());
    let c = Conn::new(false);
    rig.out(wan, lan, &p, &c.w2s, seg(1, 10).ts(1, 1));
    gap();
    rig.arrive(wan, &p, &c.s2w(), ack(11).ts(2, 1));
    assert_eq!(rig.half(&c.w2s).unwrap().samples, 1, "offload off, RTT on");

    common::frames::set_control_rtt(rig.obj(), 0, true, false);
    let d = Conn {
        c2s: c.c2s,
        w2s: Tuple {
            sport: 62000,
            ..c.w2s
        },
    };
    rig.out(wan, lan, &p, &d.w2s, seg(1, 10).ts(1, 1));
    assert!(rig.half(&d.w2s).is_none(), "RTT off: no state");
    // With XDP on the device, the TC twin leaves arrivals to XDP (no double look).
    common::frames::set_control_rtt(rig.obj(), 0, true, true);
    rig.iface(wan, 0, WAN_SLOT, abi::IFACE_F_WAN | abi::IFACE_F_XDP);
    rig.out(wan, lan, &p, &d.w2s, seg(1, 10).ts(5, 1));
    gap();
    rig.arrive_tc(wan, &p, &d.s2w(), ack(11).ts(2, 5));
    assert_eq!(
        rig.half(&d.w2s).unwrap().samples,
        0,
        "twin ignores arrivals beside XDP"
    );
    rig.arrive(wan, &p, &d.s2w(), ack(11).ts(2, 5));
    assert_eq!(rig.half(&d.w2s).unwrap().samples, 1);
}

#[test]
fn a_full_pair_of_slots_refuses_a_third_half_until_one_is_idle() {
    let Some(mut rig) = Rig::new(
        "a_full_pair_of_slots_refuses_a_third_half_until_one_is_idle",
        true,
    ) else {
        return;
    };
    let (lan, wan, p) = (rig.lan, rig.wan, Encap::plain());
    // Three tuples whose halves hash to the same pair of slots (bounded search).
    let base = Conn::new(false).w2s;
    let bucket = |t: &Tuple| {
        RttKey::new(t.src, t.sport, t.dst, t.dport)
            .unwrap()
            .bucket(common::frames::TEST_SEED[0])
    };
    let want = bucket(&base);
    let mut same = vec![base];
    for sport in 1u16..=u16::MAX {
        let t = Tuple { sport, ..base };
        if sport != base.sport && bucket(&t) == want {
            same.push(t);
            if same.len() == 3 {
                break;
            }
        }
    }
    assert_eq!(same.len(), 3, "three colliding tuples among 65535 ports");
    rig.out(wan, lan, &p, &same[0], seg(1, 10).ts(1, 1));
    rig.out(wan, lan, &p, &same[1], seg(1, 10).ts(1, 1));
    let no_room = rig.stat(abi::RttStat::BPFQOS_RTT_STAT_NO_ROOM);
    rig.out(wan, lan, &p, &same[2], seg(1, 10).ts(1, 1));
    assert!(rig.half(&same[0]).is_some() && rig.half(&same[1]).is_some());
    assert!(rig.half(&same[2]).is_none(), "both slots busy: no half");
    assert_eq!(rig.stat(abi::RttStat::BPFQOS_RTT_STAT_NO_ROOM), no_room + 1);
    // The first half goes idle (its last packet long ago): the newcomer takes its slot.
    let (map, i, mut s) = find(&rig.env.obj, &same[0]).unwrap();
    s.seen = s.seen.wrapping_sub(10);
    let m = find_map(&rig.env.obj, map);
    let mut v = m.lookup(&i.to_ne_bytes(), MapFlags::ANY).unwrap().unwrap();
    let off = std::mem::offset_of!(abi::RttSlot4, s);
    v[off..off + std::mem::size_of::<abi::RttState>()].copy_from_slice(abi::bytes_of(&s));
    m.update(&i.to_ne_bytes(), &v, MapFlags::ANY).unwrap();
    rig.out(wan, lan, &p, &same[2], seg(1, 10).ts(1, 1));
    assert!(rig.half(&same[2]).is_some(), "the idle slot was taken");
    assert!(rig.half(&same[0]).is_none() && rig.half(&same[1]).is_some());
}

#[test]
fn excess_delay_is_each_connections_own_above_its_base() {
    let Some(mut rig) = Rig::new("excess_delay_is_each_connections_own_above_its_base", false)
    else {
        return;
    };
    let (lan, wan, p) = (rig.lan, rig.wan, Encap::plain());
    let excess = |rig: &Rig| {
        let v = find_map(&rig.env.obj, abi::RTT_EXCESS_MAP)
            .lookup(&u32::from(WAN_SLOT).to_ne_bytes(), MapFlags::ANY)
            .unwrap()
            .unwrap();
        hist::counts(&abi::from_bytes::<abi::RttHist>(&v).unwrap())
    };
    // One exchange of `t` taking `wait`, with timestamps `n`.
    let exchange = |rig: &mut Rig, t: &Tuple, n: u32, wait: Duration| {
        rig.out(wan, lan, &p, t, seg(n * 10, 10).ts(n, 1));
        std::thread::sleep(wait);
        rig.arrive(wan, &p, &rev(t), ack(n * 10 + 10).ts(1, n));
    };
    let far = Conn::new(false).w2s;
    let near = Tuple {
        sport: 62001,
        ..far
    };
    // A far server: every exchange long, none longer than the others but for scheduling.
    for n in 1..=4 {
        exchange(&mut rig, &far, n, Duration::from_millis(25));
    }
    let h = rig.half(&far).unwrap();
    assert_eq!(h.samples, 4);
    assert!(
        h.base_us >= 25_000 && h.base_us <= h.min_us + h.min_us / 512 + 1,
        "{h:?}"
    );
    let c = excess(&rig);
    assert_eq!(hist::total(&c), 4, "one excess per WAN sample");
    let worst = hist::quantile(&c, 1.0).unwrap();
    assert!(worst < 15_000, "a long path is no queue: {worst} µs");
    // A near server whose packets then meet a queue of 25 ms.
    for n in 1..=3 {
        exchange(&mut rig, &near, n, GAP);
    }
    for n in 4..=6 {
        exchange(&mut rig, &near, n, GAP + Duration::from_millis(25));
    }
    let c = hist::diff(&excess(&rig), &c);
    assert_eq!(hist::total(&c), 6);
    let queued = c
        .iter()
        .enumerate()
        .filter(|(b, _)| hist::lower_us(*b) >= 15_000)
        .map(|(_, n)| n)
        .sum::<u64>();
    assert_eq!(
        queued, 3,
        "the queued exchanges, above the near server's base: {c:?}"
    );
    // LAN-side samples are no line's queue: no excess.
    let before = excess(&rig);
    let s2c = rev(&Conn::new(false).c2s);
    rig.out(lan, wan, &p, &s2c, seg(1, 10).ts(1, 1));
    gap();
    rig.arrive(lan, &p, &rev(&s2c), ack(11).ts(2, 1));
    assert_eq!(rig.half(&s2c).unwrap().samples, 1);
    assert_eq!(excess(&rig), before);
}

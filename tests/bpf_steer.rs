//! CPU steering in the data path, frame by frame, through BPF_PROG_TEST_RUN (root only).
//!
//! The steering set is CPUs 0 and 1 with real cpumap entries (queues with the counting
//! cpumap program, which the kernel checks when the entry is written). A test run does not
//! perform the redirect; the CPU the program chose is read from its counters (`steered` or
//! `kept` of that CPU went up) and the return code must agree (XDP_PASS when it chose the
//! CPU the run happened on, XDP_REDIRECT otherwise).
//!
//! Checked: the choice is a function of the inner 5-tuple only: the same for both directions
//! of a connection and under every encapsulation of the offload's matrix (plain, VLAN, QinQ,
//! PPPoE, VLAN+PPPoE, DSA mtk/qca/gswip), whatever the MACs; it spreads; frames the parser
//! does not take (ARP, PPPoE discovery and LCP, ICMP, fragments, truncated) and frames on a
//! device that does not steer pass unchanged and uncounted; offloaded frames keep the fast
//! path; an empty set steers nothing, a set of one CPU sends everything there.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;

use bpfqos::dataplane::abi;
use common::bpf::run_xdp;
use common::bpf::Env;
use common::bpf::XDP_PASS;
use common::bpf::XDP_REDIRECT;
use common::frames::find_map;
use common::frames::ip_packet;
use common::frames::map_update;
use common::frames::wrap;
use common::frames::Dir;
use common::frames::Encap;
use common::frames::FlowSpec;
use common::frames::Tcp;
use common::frames::Tuple;
use libbpf_rs::MapCore;
use libbpf_rs::MapFlags;
use libbpf_rs::Object;

const PAYLOAD: &[u8] = b"steering test payload";
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 1];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0xbb, 2];

/// One veth (two for the offload case), steering over CPUs 0 and 1 on dev[0], `offload` on
/// or off; None when skipped (not root) .
fn setup(test: &str, offload: bool) -> Option<Env> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        assert!(
            !common::in_ci(),
            "{test}: steering needs two CPUs to test, this machine has {cpus}"
        );
        eprintln!("{test}: SKIPPED (one CPU)");
        return None;
    }
    let env = common::bpf::setup(test, 2)?;
    set_control(&env.obj, offload, 2);
    let prog = env
        .obj
        .progs()
        .find(|p| p.name() == abi::CPUMAP_PROG)
        .expect("cpumap program");
    let fd = prog.as_fd().as_raw_fd();
    for cpu in [0u32, 1] {
        let mut v = [0u8; 8];
        v[..4].copy_from_slice(&64u32.to_ne_bytes());
        v[4..].copy_from_slice(&fd.to_ne_bytes());
        map_update(&env.obj, abi::CPU_MAP, &cpu.to_ne_bytes(), &v);
        map_update(
            &env.obj,
            abi::STEER_CPUS_MAP,
            &cpu.to_ne_bytes(),
            &cpu.to_ne_bytes(),
        );
    }
    set_steer(&env.obj, env.dev[0], true, 0);
    Some(env)
}

fn set_control(obj: &Object, offload: bool, n: u32) {
    let v = abi::control_value(
        common::frames::now_ns(),
        offload,
        false,
        n,
        &common::frames::TEST_SEED,
    );
    map_update(obj, abi::CONTROL_MAP, &0u32.to_ne_bytes(), &v);
}

/// The `ifaces` entry of `ifindex`: steering on or off, the DSA tagger.
fn set_steer(obj: &Object, ifindex: u32, on: bool, dsa: u8) {
    set_steer_here(obj, ifindex, on, false, dsa);
}

/// [`set_steer`], and whether a frame hashed to the receiving CPU may stay in place.
fn set_steer_here(obj: &Object, ifindex: u32, on: bool, here: bool, dsa: u8) {
    let mut cfg: abi::Iface = find_map(obj, abi::IFACES_MAP)
        .lookup(&ifindex.to_ne_bytes(), MapFlags::ANY)
        .unwrap()
        .and_then(|v| abi::from_bytes(&v))
        .unwrap_or_default();
    cfg.dsa_proto = dsa;
    cfg.flags &= !(abi::IFACE_F_STEER | abi::IFACE_F_STEER_HERE);
    if on {
        cfg.flags |= abi::IFACE_F_STEER;
    }
    if here {
        cfg.flags |= abi::IFACE_F_STEER_HERE;
    }
    map_update(
        obj,
        abi::IFACES_MAP,
        &ifindex.to_ne_bytes(),
        abi::bytes_of(&cfg),
    );
}

/// (steered, kept) of CPUs 0 and 1, summed over the CPUs that counted.
fn counters(obj: &Object) -> [(u64, u64); 2] {
    let map = find_map(obj, abi::STEER_STATS_MAP);
    let mut out = [(0u64, 0u64); 2];
    for (cpu, slot) in out.iter_mut().enumerate() {
        let per_cpu = map
            .lookup_percpu(&(cpu as u32).to_ne_bytes(), MapFlags::ANY)
            .unwrap()
            .unwrap_or_default();
        for v in per_cpu {
            let s: abi::SteerStat = abi::from_bytes(&v).expect("steer stat layout");
            slot.0 += s.steered;
            slot.1 += s.kept;
        }
    }
    out
}

/// steered + kept of CPUs 0 and 1.
fn chosen_counts(obj: &Object) -> [u64; 2] {
    counters(obj).map(|(s, k)| s + k)
}

/// Runs `frame` on `ingress`; the CPU the program chose (None: not steered), checked against
/// the return code; a steered frame leaves the program unchanged.
fn choice(env: &mut Env, frame: &[u8], ingress: u32, what: &str) -> Option<usize> {
    let before = chosen_counts(&env.obj);
    let r = run_xdp(&mut env.obj, frame, ingress, 1);
    let after = chosen_counts(&env.obj);
    let moved: Vec<usize> = (0..2).filter(|&c| after[c] != before[c]).collect();
    assert_eq!(r.data, frame, "{what}: the frame changed");
    match moved.as_slice() {
        [] => {
            assert_eq!(
                r.ret, XDP_PASS,
                "{what}: not counted but returned {}",
                r.ret
            );
            None
        }
        [c] => {
            assert_eq!(after[*c], before[*c] + 1, "{what}");
            assert!(
                r.ret == XDP_PASS || r.ret == XDP_REDIRECT,
                "{what}: returned {}",
                r.ret
            );
            Some(*c)
        }
        _ => panic!("{what}: two CPUs counted one frame: {before:?} -> {after:?}"),
    }
}

/// Connection `i`: addresses and ports that vary with `i`, both families, TCP and UDP.
fn connection(i: u32) -> Tuple {
    let udp = i % 3 == 0;
    let (src, dst) = if i % 2 == 0 {
        (
            IpAddr::V4(Ipv4Addr::new(198, 18, (i >> 8) as u8, i as u8)),
            IpAddr::V4(Ipv4Addr::new(198, 19, 3, (i * 7) as u8)),
        )
    } else {
        (
            IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                1,
                0,
                0,
                0,
                0,
                (i >> 16) as u16,
                i as u16,
            )),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, (i * 13) as u16)),
        )
    };
    Tuple {
        udp,
        src,
        dst,
        sport: 32768 + (i as u16).wrapping_mul(97),
        dport: [443, 53, 80, 8080][(i % 4) as usize],
    }
}

fn reversed(t: &Tuple) -> Tuple {
    Tuple {
        src: t.dst,
        dst: t.src,
        sport: t.dport,
        dport: t.sport,
        ..*t
    }
}

#[test]
fn the_cpu_is_a_function_of_the_inner_5_tuple_in_both_directions_under_every_encapsulation() {
    let Some(mut env) = setup(
        "the_cpu_is_a_function_of_the_inner_5_tuple_in_both_directions_under_every_encapsulation",
        false,
    ) else {
        return;
    };
    let dev = env.dev[0];
    let mut per_cpu = [0usize; 2];
    let mut checked = 0;
    for i in 0..48u32 {
        let t = connection(i);
        let mut first: Option<usize> = None;
        for e in Encap::matrix() {
            set_steer(&env.obj, dev, true, e.dsa_proto());
            for (dir, tuple, (dst, src)) in [
                ("there", t, (MAC_A, MAC_B)),
                ("back", reversed(&t), (MAC_B, MAC_A)),
            ] {
                let frame = wrap(
                    dst,
                    src,
                    &e,
                    Dir::Rx,
                    &ip_packet(&tuple, 64, Tcp::Ack, PAYLOAD),
                );
                let what = format!("connection {i} {t:?} {dir} under {}", e.name);
                let c = choice(&mut env, &frame, dev, &what)
                    .unwrap_or_else(|| panic!("{what}: not steered"));
                match first {
                    None => first = Some(c),
                    Some(f) => assert_eq!(c, f, "{what}: another CPU than before"),
                }
                checked += 1;
            }
        }
        if let Some(f) = first {
            per_cpu[f] += 1;
        }
    }
    assert_eq!(checked, 48 * Encap::matrix().len() * 2);
    // 48 connections on two CPUs: a hash that does not spread (or ignores the tuple) puts
    // them all on one; a fair one leaves each at least 12 (binomial: p < 1e-4 to fail).
    assert!(
        per_cpu.iter().all(|&n| n >= 12),
        "connections per CPU {per_cpu:?}"
    );
}

#[test]
fn frames_the_parser_does_not_take_stay_where_they_arrived_unchanged() {
    let Some(mut env) = setup(
        "frames_the_parser_does_not_take_stay_where_they_arrived_unchanged",
        false,
    ) else {
        return;
    };
    let dev = env.dev[0];
    let eth = |ethertype: u16, body: &[u8]| {
        let mut f = Vec::new();
        f.extend_from_slice(&MAC_A);
        f.extend_from_slice(&MAC_B);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(body);
        f
    };
    let tcp = ip_packet(&connection(2), 64, Tcp::Ack, PAYLOAD);
    // IPv4 fragment: MF set (first fragment of a UDP datagram).
    let mut frag = ip_packet(&connection(3), 64, Tcp::Ack, PAYLOAD);
    frag[6] |= 0x20;
    let mut icmp = vec![
        0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0, 198, 18, 0, 1, 198, 19, 0, 1,
    ];
    icmp.extend_from_slice(&[8, 0, 0xf7, 0xff, 0, 0, 0, 0]);
    let ns = {
        // ICMPv6 neighbour solicitation, fd00::1 -> ff02::1:ff00:2
        let mut p = vec![0x60, 0, 0, 0, 0, 8, 58, 255];
        p.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p.extend_from_slice(&[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 2]);
        p.extend_from_slice(&[135, 0, 0, 0, 0, 0, 0, 0]);
        p
    };
    let pppoe = |code: u8, sid: u16, payload: &[u8]| {
        let mut b = vec![0x11, code];
        b.extend_from_slice(&sid.to_be_bytes());
        b.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        b.extend_from_slice(payload);
        b
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "ARP",
            eth(0x0806, &[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0xaa, 1]),
        ),
        (
            "PPPoE discovery (PADI)",
            eth(0x8863, &pppoe(0x09, 0, &[1, 1, 0, 0])),
        ),
        (
            "PPPoE LCP echo",
            eth(0x8864, &pppoe(0, 7, &[0xc0, 0x21, 9, 1, 0, 8, 0, 0, 0, 0])),
        ),
        ("ICMP echo", eth(0x0800, &icmp)),
        ("ICMPv6 neighbour solicitation", eth(0x86dd, &ns)),
        ("IPv4 fragment", eth(0x0800, &frag)),
        ("truncated TCP", eth(0x0800, &tcp[..30])),
        ("unknown ethertype", eth(0x88b5, &tcp)),
    ];
    for (what, frame) in &cases {
        assert_eq!(choice(&mut env, frame, dev, what), None, "{what}: steered");
    }
    // The same TCP frame is steered (the cases above are not passed for a dull reason).
    let ok = eth(0x0800, &tcp);
    assert!(choice(&mut env, &ok, dev, "plain TCP").is_some());
    // A device that does not steer, and an empty set, steer nothing.
    set_steer(&env.obj, dev, false, 0);
    assert_eq!(choice(&mut env, &ok, dev, "device off"), None);
    set_steer(&env.obj, dev, true, 0);
    set_control(&env.obj, false, 0);
    assert_eq!(choice(&mut env, &ok, dev, "no CPU set"), None);
    // A set of one CPU takes everything.
    set_control(&env.obj, false, 1);
    for i in 0..8 {
        let f = eth(
            0x0800,
            &ip_packet(&connection(i * 2), 64, Tcp::Ack, PAYLOAD),
        );
        assert_eq!(choice(&mut env, &f, dev, "set of CPU 0"), Some(0));
    }
    set_control(&env.obj, false, 2);
    assert!(choice(&mut env, &ok, dev, "on again").is_some());
}

#[test]
fn offloaded_frames_keep_the_fast_path_and_kernel_frames_are_steered() {
    let Some(mut env) = setup(
        "offloaded_frames_keep_the_fast_path_and_kernel_frames_are_steered",
        true,
    ) else {
        return;
    };
    let (din, dout) = (env.dev[0], env.dev[1]);
    for e in [Encap::plain(), Encap::vlan_pppoe(7, 0x1234)] {
        let orig = Tuple::v4(false);
        let spec = FlowSpec::new(din, e.clone(), orig, dout, Encap::plain(), orig.snat());
        spec.install(&env.obj);
        set_steer(&env.obj, din, true, 0);
        let (input, expected) = spec.frames(Tcp::Ack, PAYLOAD);
        let before = chosen_counts(&env.obj);
        let r = run_xdp(&mut env.obj, &input, din, 1);
        assert_eq!(r.ret, XDP_REDIRECT, "{}: offloaded", e.name);
        assert_eq!(r.data, expected, "{}: rewritten for the egress", e.name);
        assert_eq!(chosen_counts(&env.obj), before, "{}: not steered", e.name);
        // The connection's FIN goes to the kernel, and so to its CPU.
        let (fin, _) = spec.frames(Tcp::Fin, PAYLOAD);
        assert!(
            choice(&mut env, &fin, din, "FIN of an offloaded flow").is_some(),
            "{}: the FIN was not steered",
            e.name
        );
        // Another connection, not offloaded: steered.
        let other = wrap(
            MAC_A,
            MAC_B,
            &e,
            Dir::Rx,
            &ip_packet(&connection(5), 64, Tcp::Ack, PAYLOAD),
        );
        assert!(choice(&mut env, &other, din, "kernel-path frame").is_some());
        spec.remove(&env.obj);
    }
}

#[test]
fn a_frame_stays_on_the_receiving_cpu_only_where_receive_is_pinned() {
    let Some(mut env) = setup(
        "a_frame_stays_on_the_receiving_cpu_only_where_receive_is_pinned",
        false,
    ) else {
        return;
    };
    // Run on CPU 0, and find connections whose hash picks CPU 0.
    let mut set = nix::sched::CpuSet::new();
    set.set(0).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
    let dev = env.dev[0];
    let frame = |i: u32| {
        wrap(
            MAC_A,
            MAC_B,
            &Encap::plain(),
            Dir::Rx,
            &ip_packet(&connection(i), 64, Tcp::Ack, PAYLOAD),
        )
    };
    let mine: Vec<u32> = (0..32)
        .filter(|&i| choice(&mut env, &frame(i), dev, "probe") == Some(0))
        .collect();
    assert!(mine.len() >= 4, "connections hashed to CPU 0: {mine:?}");
    for &i in &mine {
        // A device whose receive moves between CPUs (veth): through CPU 0's own queue.
        set_steer_here(&env.obj, dev, true, false, 0);
        let before = counters(&env.obj);
        let r = run_xdp(&mut env.obj, &frame(i), dev, 1);
        let after = counters(&env.obj);
        assert_eq!(r.ret, XDP_REDIRECT, "connection {i}: queued");
        assert_eq!((after[0].0 - before[0].0, after[0].1 - before[0].1), (1, 0));
        // A NIC (receive pinned by its interrupt): passed in place.
        set_steer_here(&env.obj, dev, true, true, 0);
        let before = counters(&env.obj);
        let r = run_xdp(&mut env.obj, &frame(i), dev, 1);
        let after = counters(&env.obj);
        assert_eq!(r.ret, XDP_PASS, "connection {i}: in place");
        assert_eq!((after[0].0 - before[0].0, after[0].1 - before[0].1), (0, 1));
    }
}

#[test]
fn a_pppoe_session_with_a_stateful_ppp_stream_is_never_steered() {
    let Some(mut env) = setup(
        "a_pppoe_session_with_a_stateful_ppp_stream_is_never_steered",
        false,
    ) else {
        return;
    };
    let (dev, other) = (env.dev[0], env.dev[1]);
    set_steer(&env.obj, other, true, 0);
    let ip = |sid: u16, i: u32| {
        wrap(
            MAC_A,
            MAC_B,
            &Encap::pppoe(sid),
            Dir::Rx,
            &ip_packet(&connection(i), 64, Tcp::Ack, PAYLOAD),
        )
    };
    let ppp = |sid: u16, proto: u16| {
        let mut f = Vec::new();
        f.extend_from_slice(&MAC_A);
        f.extend_from_slice(&MAC_B);
        f.extend_from_slice(&0x8864u16.to_be_bytes());
        f.extend_from_slice(&[0x11, 0]);
        f.extend_from_slice(&sid.to_be_bytes());
        f.extend_from_slice(&22u16.to_be_bytes());
        f.extend_from_slice(&proto.to_be_bytes());
        f.extend_from_slice(&[0x5a; 20]);
        f
    };
    // Before: session 7's IP frames are steered like any.
    for i in 0..4 {
        assert!(choice(&mut env, &ip(7, i), dev, "session 7 before").is_some());
    }
    // A VJ-compressed frame: passed unchanged, not steered; it marks session 7 on dev.
    assert_eq!(choice(&mut env, &ppp(7, 0x002d), dev, "VJ frame"), None);
    for i in 0..4 {
        assert_eq!(choice(&mut env, &ip(7, i), dev, "session 7 held"), None);
        // Another session on the same device, and session 7 on another device, still steer.
        assert!(choice(&mut env, &ip(8, i), dev, "session 8").is_some());
        assert!(choice(&mut env, &ip(7, i), other, "session 7 elsewhere").is_some());
    }
    // CCP-compressed datagrams and multilink mark their sessions too; LCP does not.
    assert_eq!(choice(&mut env, &ppp(9, 0xc021), dev, "LCP"), None);
    assert!(choice(&mut env, &ip(9, 1), dev, "session 9 after LCP").is_some());
    for (sid, proto) in [(10u16, 0x00fdu16), (11, 0x003d), (12, 0x00fb), (13, 0x002f)] {
        assert_eq!(
            choice(&mut env, &ppp(sid, proto), dev, "stateful frame"),
            None
        );
        assert_eq!(
            choice(&mut env, &ip(sid, 1), dev, "held session"),
            None,
            "session {sid} after PPP protocol {proto:#06x}"
        );
    }
    let held: Vec<u32> = (0..abi::PPP_HELD)
        .filter_map(|i| {
            find_map(&env.obj, abi::PPP_HELD_MAP)
                .lookup(&i.to_ne_bytes(), MapFlags::ANY)
                .unwrap()
                .map(|v| u32::from_ne_bytes(v[..4].try_into().unwrap()))
        })
        .filter(|&v| v != 0)
        .collect();
    assert_eq!(held.len(), 5, "held sessions {held:x?}");
    assert!(held.contains(&(dev << 16 | 7)));
}

/// Real frames, not test runs: the XDP program attached in generic mode (the skb path, where
/// a cpumap redirect queues the skb itself) on bq0, frames of 32 connections sent into its
/// veth peer through a packet socket. Every steered frame must come out of its CPU's queue
/// (the cpumap program counts it there), and both CPUs must get some.
#[test]
fn generic_xdp_steers_live_frames_through_the_cpu_queues() {
    let Some(env) = setup(
        "generic_xdp_steers_live_frames_through_the_cpu_queues",
        false,
    ) else {
        return;
    };
    for d in ["bq0", "bq0p"] {
        common::frames::set_up(d);
    }
    let prog = env
        .obj
        .progs()
        .find(|p| p.name() == abi::XDP_PROG)
        .expect("xdp program");
    let xdp = libbpf_rs::Xdp::new(prog.as_fd());
    // XDP_FLAGS_SKB_MODE
    xdp.attach(env.dev[0] as i32, libbpf_rs::XdpFlags::SKB_MODE)
        .expect("attach XDP generic");
    let peer = nix::net::if_::if_nametoindex("bq0p").expect("bq0p") as i32;
    // SAFETY: plain socket(2) call; the fd is owned by the OwnedFd right after.
    let raw = unsafe {
        nix::libc::socket(
            nix::libc::AF_PACKET,
            nix::libc::SOCK_RAW,
            (nix::libc::ETH_P_ALL as u16).to_be() as i32,
        )
    };
    assert!(raw >= 0, "packet socket");
    // SAFETY: raw is a fresh, valid fd nobody else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain integers and arrays: all zeroes is a valid value.
    let mut addr: nix::libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = nix::libc::AF_PACKET as u16;
    addr.sll_ifindex = peer;
    addr.sll_halen = 6;
    let before = counters(&env.obj);
    let delivered = |obj: &Object| -> [u64; 2] {
        let map = find_map(obj, abi::STEER_STATS_MAP);
        let mut out = [0u64; 2];
        for (cpu, slot) in out.iter_mut().enumerate() {
            for v in map
                .lookup_percpu(&(cpu as u32).to_ne_bytes(), MapFlags::ANY)
                .unwrap()
                .unwrap_or_default()
            {
                *slot += abi::from_bytes::<abi::SteerStat>(&v).unwrap().delivered;
            }
        }
        out
    };
    let d0 = delivered(&env.obj);
    let frames = 64u32;
    for i in 0..frames {
        let f = wrap(
            MAC_A,
            MAC_B,
            &Encap::plain(),
            Dir::Rx,
            &ip_packet(&connection(i), 64, Tcp::Ack, PAYLOAD),
        );
        // SAFETY: sendto reads f.len() bytes from a live Vec and a sockaddr_ll on the stack.
        let n = unsafe {
            nix::libc::sendto(
                sock.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                0,
                (&addr as *const nix::libc::sockaddr_ll).cast(),
                std::mem::size_of::<nix::libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(n, f.len() as isize, "send frame {i}");
    }
    // The queues drain in microseconds; bounded wait.
    let mut got = [0u64; 2];
    for _ in 0..200 {
        let d1 = delivered(&env.obj);
        got = [d1[0] - d0[0], d1[1] - d0[1]];
        if got[0] + got[1] >= u64::from(frames) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let after = counters(&env.obj);
    let steered = [after[0].0 - before[0].0, after[1].0 - before[1].0];
    xdp.detach(env.dev[0] as i32, libbpf_rs::XdpFlags::SKB_MODE)
        .expect("detach");
    assert_eq!(
        steered[0] + steered[1],
        u64::from(frames),
        "every frame steered (a veth: through the queues)"
    );
    assert_eq!(got, steered, "delivered per CPU = steered per CPU");
    assert!(got[0] > 0 && got[1] > 0, "both CPUs: {got:?}");
}

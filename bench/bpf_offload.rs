//! ns/packet of the offload XDP program via BPF_PROG_TEST_RUN with repeat, next to a bare
//! "parse and redirect" baseline (bpf/bench.bpf.c) on the same frame in the same run.
//! Root only; prints, never asserts timings. Run: `sudo -E cargo bench --bench bpf_offload`.
//!
//! BPF_PROG_TEST_RUN repeats on the same buffer, so a rewritten frame would not match again:
//! each forwarding case installs the flow and its mirror image (the rewritten frame arriving on
//! the same device is rewritten back), with TTL 255 and at most 200 repetitions per call, so
//! every repetition does the full work. Forwarding rows are therefore the mean of both
//! directions of the pair (e.g. VLAN->PPPoE push and PPPoE->VLAN pop).

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/bpf.rs"]
mod bpf_common;

use bpf_common::bpf_frames::fresh_netns;
use bpf_common::bpf_frames::ip_packet;
use bpf_common::bpf_frames::set_control;
use bpf_common::bpf_frames::wrap;
use bpf_common::bpf_frames::Dir;
use bpf_common::bpf_frames::Encap;
use bpf_common::bpf_frames::FlowSpec;
use bpf_common::bpf_frames::Tcp;
use bpf_common::bpf_frames::Tuple;
use bpf_common::bpf_frames::MAC_CLIENT;
use bpf_common::bpf_frames::MAC_ROUTER_IN;
use libbpf_rs::MapCore;
use libbpf_rs::MapFlags;
use libbpf_rs::Object;
use libbpf_rs::ObjectBuilder;
use libbpf_rs::ProgramInput;

const OBJ_BENCH: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bench.bpfel.o"));
const REPS_PER_CALL: u32 = 200;
const CALLS: u32 = 500;

/// Mean ns per run of `prog` on `frame` over CALLS x REPS_PER_CALL repetitions.
fn measure(obj: &mut Object, prog: &str, frame: &[u8], ingress: u32) -> f64 {
    let mut total = 0f64;
    let started = std::time::Instant::now();
    for call in 0..CALLS {
        // The daemon's job: keep the heartbeat fresh (calls are slow in wall time).
        if call % 50 == 0 && obj.maps().any(|m| m.name() == bpf_common::abi::CONTROL_MAP) {
            set_control(obj, 0, true);
        }
        let p = obj.progs_mut().find(|p| p.name() == prog).expect("program");
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let input = ProgramInput {
            data_in: Some(frame),
            data_out: Some(&mut out),
            context_in: Some(&mut ctx[..]),
            repeat: REPS_PER_CALL,
            ..Default::default()
        };
        let o = p.test_run(input).expect("test run");
        total += o.duration.as_nanos() as f64;
    }
    if std::env::var_os("BPFQOS_BENCH_VERBOSE").is_some() {
        eprintln!("{prog}: {CALLS} calls in {:?}", started.elapsed());
    }
    total / f64::from(CALLS)
}

fn frame(e: &Encap, t: &Tuple) -> Vec<u8> {
    wrap(
        MAC_ROUTER_IN,
        MAC_CLIENT,
        e,
        Dir::Rx,
        &ip_packet(t, 255, Tcp::Ack, &[0u8; 18]),
    )
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("bpf_offload bench: needs root (BPF_PROG_TEST_RUN); skipped");
        return;
    }
    let dev = fresh_netns(2);
    let mut off = bpf_common::load();
    set_control(&off, 0, true);
    let mut base = ObjectBuilder::default()
        .open_memory(OBJ_BENCH)
        .unwrap()
        .load()
        .unwrap();
    let base_cfg = |base: &Object, dsa: u32| {
        let m = base.maps().find(|m| m.name() == "bench_cfg").unwrap();
        let mut v = dev[1].to_ne_bytes().to_vec();
        v.extend_from_slice(&dsa.to_ne_bytes());
        m.update(&0u32.to_ne_bytes(), &v, MapFlags::ANY).unwrap();
        let tx = base.maps().find(|m| m.name() == "bench_tx").unwrap();
        tx.update(&dev[1].to_ne_bytes(), &dev[1].to_ne_bytes(), MapFlags::ANY)
            .unwrap();
    };

    // (row, ingress encap, egress encap, tuple, nat)
    let rows: Vec<(&str, Encap, Encap, Tuple, bool)> = vec![
        (
            "IPv4 SNAT plain<->plain (pair)",
            Encap::plain(),
            Encap::plain(),
            Tuple::v4(false),
            true,
        ),
        (
            "IPv6 plain<->plain (pair)",
            Encap::plain(),
            Encap::plain(),
            Tuple::v6(false),
            true,
        ),
        (
            "VLAN->PPPoE push / PPPoE->VLAN pop (pair)",
            Encap::vlan(7),
            Encap::pppoe(0x1234),
            Tuple::v4(false),
            true,
        ),
        // mtk TX tag [0, BIT(1)] reads back as RX port 2: the pair loops on one conduit.
        (
            "DSA mtk strip + re-tag (pair)",
            Encap::mtk(2),
            Encap::mtk(1),
            Tuple::v4(true),
            true,
        ),
        (
            "QinQ->plain / plain->QinQ (pair)",
            Encap::qinq(100, 7),
            Encap::plain(),
            Tuple::v6(true),
            true,
        ),
    ];

    println!(
        "{:<44} {:>10} {:>12} {:>7}",
        "case", "offload ns", "baseline ns", "ratio"
    );
    // No match: plain IPv4 TCP with no flow installed.
    {
        let f = frame(&Encap::plain(), &Tuple::v4(false));
        base_cfg(&base, 0);
        let o = measure(&mut off, bpf_common::abi::XDP_PROG, &f, dev[0]);
        let b = measure(&mut base, "bench_parse_redirect", &f, dev[0]);
        println!(
            "{:<44} {:>10.1} {:>12.1} {:>7.2}",
            "no-match pass",
            o,
            b,
            o / b
        );
    }
    for (name, ein, eout, t, nat) in rows {
        // A single device: the flow and its mirror both arrive on dev[0]; redirect to dev[1].
        let new = if nat { t.snat() } else { t };
        let fwd = FlowSpec::new(dev[0], ein.clone(), t, dev[1], eout.clone(), new);
        // The mirror matches the rewritten frame as it would arrive (egress encap in RX form).
        let back_in = match eout.dsa {
            bpf_common::bpf_frames::Dsa::Mtk(p) => Encap {
                dsa: bpf_common::bpf_frames::Dsa::Mtk((1 << p) & 7),
                ..eout.clone()
            },
            _ => eout.clone(),
        };
        // mtk: the mirror re-tags for the port the forward leg expects (TX BIT(1) = RX 2).
        let back_out = if matches!(eout.dsa, bpf_common::bpf_frames::Dsa::Mtk(_)) {
            eout.clone()
        } else {
            ein.clone()
        };
        let back = FlowSpec::new(dev[0], back_in, new, dev[1], back_out, t);
        fwd.install(&off);
        back.install(&off);
        // Both legs arrive on dev[0]: its DSA config must serve both; only same-tagger pairs
        // can loop, so DSA pairs use the ingress tagger for the parse of either leg.
        bpf_common::bpf_frames::set_iface_dsa(&off, dev[0], ein.dsa_proto());
        let f = frame(&ein, &t);
        let before = fwd.counters(&off).0 + back.counters(&off).0;
        let o = measure(&mut off, bpf_common::abi::XDP_PROG, &f, dev[0]);
        let done = fwd.counters(&off).0 + back.counters(&off).0 - before;
        base_cfg(&base, u32::from(ein.dsa_proto()));
        let b = measure(&mut base, "bench_parse_redirect", &f, dev[0]);
        let expect = u64::from(CALLS) * u64::from(REPS_PER_CALL);
        let note = if done == expect {
            String::new()
        } else {
            format!(
                "  (only {done}/{expect} runs forwarded; stats {:?})",
                bpf_common::stats(&off)
            )
        };
        println!("{name:<44} {o:>10.1} {b:>12.1} {:>7.2}{note}", o / b);
        fwd.remove(&off);
        back.remove(&off);
    }
}

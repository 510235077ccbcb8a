//! ns/packet of the offload XDP program via BPF_PROG_TEST_RUN with repeat, next to references
//! from bench/bpf/bench.bpf.c on the same frame in the same run, calls interleaved and medians taken:
//! - baseline: the bare "parse and redirect" (parser + devmap redirect);
//! - floor: parse + the offload's own flow-table lookup (flowtable.h: same maps, hash and key
//!   comparison) + redirect to the entry's egress: the least this offload does; offload - floor
//!   is what the pass rules, L2 rebuild, NAT and counters cost;
//! - htab: the same with the flow table as a kernel hash map keyed like the offload's entries
//!   (the data path's design before the array tables; its call chain is what it costs here, see
//!   docs/bench.md);
//! - parse: the parser alone (the baseline without its redirect), which splits the baseline
//!   into its parse and its redirect;
//! - the empty program's time, printed last: BPF_PROG_TEST_RUN's own per-repetition cost,
//!   included in every column;
//! - passive RTT (a table of its own): the offload with RTT on against the same object with it
//!   off, on TCP frames carrying timestamps (the RTT code's full per-packet work), the TC egress
//!   hook that times the kernel path's departures against an empty TC program, and the memory
//!   of the RTT maps;
//! - with `BPFQOS_BENCH_BEFORE=<offload.bpfel.o>`, another build of the offload (e.g. the
//!   previous commit's, copied out of target/ by `make bpf`) as a "before" column.
//!
//! Root only; prints, never asserts timings. Run: `sudo -E cargo bench --bench bpf_offload`
//! (`BPFQOS_BENCH_CALLS` sets the call pairs per case, `BPFQOS_BENCH_VERBOSE` prints wall
//! times, `BPFQOS_BENCH_ONLY=rtt` runs the passive RTT table alone). A "before" object must
//! share this build's map layout (the rows install flows the way this build's tests do).
//!
//! What a figure is: the cost of one more packet. Every call of BPF_PROG_TEST_RUN starts cold
//! (the kernel swaps the XDP dispatcher around each call and waits for RCU, so caches and branch
//! predictors have moved on), and that start costs microseconds, more for a program that touches
//! more code and data. A call's mean per repetition carries that fixed cost divided by the
//! repeat count. So each subject is called in pairs, REPS_LO (50) and REPS_HI (250)
//! repetitions back to back (which one first alternates), and the figure is the median over
//! pairs of (time(HI) - time(LO)) / (HI - LO), taken per order and averaged: the per-packet
//! cost of a hot data path, which is what a loaded router pays. The fixed cost per call and the
//! plain mean of a HI call are printed too (second table).
//!
//! BPF_PROG_TEST_RUN repeats on the same buffer, so a rewritten frame would not match again:
//! each forwarding case installs the flow and its mirror image (the rewritten frame arriving on
//! the same device is rewritten back), with TTL 255 and at most REPS_HI = 250 repetitions per
//! call, so every repetition does the full work. Forwarding rows are therefore the mean of both
//! directions of the pair (e.g. VLAN->PPPoE push and PPPoE->VLAN pop).

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::frames::fresh_netns;
use common::frames::ip_packet;
use common::frames::set_control_rtt;
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
use libbpf_rs::ObjectBuilder;
use libbpf_rs::ProgramInput;

const OBJ_BENCH: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bench/bench.bpfel.o"));
/// Repetitions of the two calls of a pair. HI stays below 254: every repetition of a forwarding
/// row decrements the TTL of the frame (255), which must stay above 1. `BPFQOS_BENCH_REPS_LO`
/// (1..REPS_HI) overrides LO: the per-packet figures must not depend on it (docs/bench.md).
const REPS_LO: u32 = 50;
const REPS_HI: u32 = 250;

/// A positive count from the environment variable `name` below `limit`, else `default`.
fn env_count(name: &str, limit: u32, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0 && n < limit)
        .unwrap_or(default)
}

fn reps_lo() -> u32 {
    env_count("BPFQOS_BENCH_REPS_LO", REPS_HI, REPS_LO)
}

const XDP_DROP: u32 = 1;
const XDP_REDIRECT: u32 = 4;
/// Call pairs per case. Each call costs milliseconds of wall time outside the measured loop (the
/// kernel swaps the XDP dispatcher around every XDP test run), so keep the count modest: medians
/// are stable. `BPFQOS_BENCH_CALLS` overrides it.
const CALLS: u32 = 80;

fn calls() -> u32 {
    env_count("BPFQOS_BENCH_CALLS", u32::MAX, CALLS)
}

/// One program under measurement: an object, its program name and its calls' timings.
struct Subject {
    obj: Object,
    prog: &'static str,
    /// Passive RTT switched on in its control word (offload objects).
    rtt: bool,
    /// A TC program (else XDP).
    tc: bool,
    /// TC: skb->priority after the last call (the circuit classifier's verdict).
    last_prio: u32,
    /// Total ns of each pair's REPS_LO call and REPS_HI call.
    pairs: Vec<(f64, f64)>,
    /// The program's return value in the last call (XDP_REDIRECT: the floors found the flow).
    last_ret: u32,
}

/// What one subject measured on one case.
#[derive(Clone, Copy, Default)]
struct Figures {
    /// ns per packet, hot: the HI - LO difference per extra repetition; the mean of its medians
    /// over the pairs of either call order.
    per_packet: f64,
    /// ns per call that does not depend on the repeat count (cold start), median over pairs.
    fixed: f64,
    /// The plain mean per repetition of a REPS_HI call (what a single call reports), median.
    mean_hi: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

impl Subject {
    fn new(obj: Object, prog: &'static str) -> Self {
        Self {
            obj,
            prog,
            rtt: false,
            tc: false,
            last_prio: 0,
            pairs: Vec::new(),
            last_ret: 0,
        }
    }

    /// A TC program (its context is a `struct __sk_buff`; `ingress` becomes its `ifindex`).
    fn tc(obj: Object, prog: &'static str) -> Self {
        Self {
            tc: true,
            ..Self::new(obj, prog)
        }
    }

    /// One BPF_PROG_TEST_RUN of `reps` repetitions; returns its total ns (the kernel reports
    /// the duration divided by the repeat count, rounded down: < 1 ns per repetition).
    fn call(&mut self, frame: &[u8], ingress: u32, reps: u32) -> f64 {
        let p = self
            .obj
            .progs_mut()
            .find(|p| p.name() == self.prog)
            .expect("program");
        let mut ctx = [0u8; 48];
        let mut out = vec![0u8; frame.len() + 256];
        if self.tc {
            // struct __sk_buff up to tc_index: only ifindex (offset 40) set.
            ctx[40..44].copy_from_slice(&ingress.to_ne_bytes());
        } else {
            // struct xdp_md: data_end, ingress_ifindex.
            ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
            ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
        }
        // The kernel copies the whole struct __sk_buff back (192 bytes on 6.x).
        let mut ctx_out = [0u8; 256];
        let tc = self.tc;
        let input = ProgramInput {
            data_in: Some(frame),
            data_out: Some(&mut out),
            context_in: Some(if tc { &mut ctx[..] } else { &mut ctx[..24] }),
            context_out: if tc { Some(&mut ctx_out[..]) } else { None },
            repeat: reps,
            ..Default::default()
        };
        let (ret, duration) = {
            let o = p.test_run(input).expect("test run");
            (o.return_value, o.duration)
        };
        self.last_ret = ret;
        if tc {
            // struct __sk_buff.priority, offset 32.
            self.last_prio =
                u32::from_ne_bytes([ctx_out[32], ctx_out[33], ctx_out[34], ctx_out[35]]);
        }
        duration.as_nanos() as f64 * f64::from(reps)
    }

    /// One pair, in the given order (the caller alternates it, starting with LO first, so
    /// neither size always runs first).
    fn call_pair(&mut self, frame: &[u8], ingress: u32, lo_first: bool) {
        let (lo, hi) = if lo_first {
            let lo = self.call(frame, ingress, reps_lo());
            (lo, self.call(frame, ingress, REPS_HI))
        } else {
            let hi = self.call(frame, ingress, REPS_HI);
            (self.call(frame, ingress, reps_lo()), hi)
        };
        self.pairs.push((lo, hi));
    }

    /// The figures of the pairs since the last take. Medians: robust to preemption by other
    /// load; pairs: the two calls of one pair ran milliseconds apart, under the same load.
    fn take(&mut self) -> Figures {
        let pairs = std::mem::take(&mut self.pairs);
        let extra = f64::from(REPS_HI - reps_lo());
        let slope = |&(lo, hi): &(f64, f64)| (hi - lo) / extra;
        // Pairs alternate which call runs first (even: LO first): one median per order,
        // averaged, so an effect of the order cancels instead of deciding the median.
        let by_order =
            |first: usize| median(pairs.iter().skip(first).step_by(2).map(slope).collect());
        let per_packet = if pairs.len() > 1 {
            (by_order(0) + by_order(1)) / 2.0
        } else {
            by_order(0)
        };
        Figures {
            per_packet,
            fixed: median(
                pairs
                    .iter()
                    .map(|&(lo, _)| lo - f64::from(reps_lo()) * per_packet)
                    .collect(),
            ),
            mean_hi: median(
                pairs
                    .iter()
                    .map(|&(_, hi)| hi / f64::from(REPS_HI))
                    .collect(),
            ),
        }
    }
}

/// Measures every subject on `frame`, interleaved pair by pair so that load from other
/// processes on the machine hits all of them alike; returns the figures in the same order.
fn measure(subjects: &mut [&mut Subject], frame: &[u8], ingress: u32) -> Vec<Figures> {
    let started = std::time::Instant::now();
    let mut beat: Option<std::time::Instant> = None;
    for n in 0..calls() {
        // The daemon's job: keep the heartbeat fresh (once a second, as the daemon does;
        // calls are slow in wall time, and slower still on a busy machine).
        if beat.is_none_or(|b| b.elapsed() >= std::time::Duration::from_secs(1)) {
            beat = Some(std::time::Instant::now());
            for s in subjects.iter() {
                if s.obj
                    .maps()
                    .any(|m| m.name() == bpfqos::dataplane::abi::CONTROL_MAP)
                {
                    set_control_rtt(&s.obj, 0, true, s.rtt);
                }
            }
        }
        for s in subjects.iter_mut() {
            s.call_pair(frame, ingress, n % 2 == 0);
        }
    }
    if std::env::var_os("BPFQOS_BENCH_VERBOSE").is_some() {
        eprintln!("{} interleaved calls in {:?}", calls(), started.elapsed());
    }
    subjects.iter_mut().map(|s| s.take()).collect()
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

/// The offload object to compare against, from `BPFQOS_BENCH_BEFORE` (e.g. the previous
/// commit's `offload.bpfel.o`), so before/after numbers come from one interleaved run.
fn before_object() -> Option<Object> {
    let path = std::env::var_os("BPFQOS_BENCH_BEFORE")?;
    let obj = ObjectBuilder::default()
        .open_file(&path)
        .expect("open BPFQOS_BENCH_BEFORE")
        .load()
        .expect("load BPFQOS_BENCH_BEFORE");
    Some(obj)
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("bpf_offload bench: needs root (BPF_PROG_TEST_RUN); skipped");
        return;
    }
    let dev = fresh_netns(2);
    if std::env::var("BPFQOS_BENCH_ONLY").as_deref() == Ok("rtt") {
        let bench = ObjectBuilder::default()
            .open_memory(OBJ_BENCH)
            .unwrap()
            .load()
            .unwrap();
        rtt_cost(&dev, bench);
        return;
    }
    let mut off = Subject::new(common::bpf::load(), bpfqos::dataplane::abi::XDP_PROG);
    let mut before = before_object().map(|o| Subject::new(o, bpfqos::dataplane::abi::XDP_PROG));
    let bench_obj = || {
        ObjectBuilder::default()
            .open_memory(OBJ_BENCH)
            .unwrap()
            .load()
            .unwrap()
    };
    let mut base = Subject::new(bench_obj(), "bench_parse_redirect");
    let mut empty = Subject::new(bench_obj(), "bench_pass");
    let mut floor = Subject::new(bench_obj(), "bench_parse_lookup_redirect");
    let mut table = Subject::new(bench_obj(), "bench_parse_table_redirect");
    let mut parse = Subject::new(bench_obj(), "bench_parse_only");
    let base_cfg = |base: &Object, dsa: u32| {
        let m = base.maps().find(|m| m.name() == "bench_cfg").unwrap();
        let mut v = dev[1].to_ne_bytes().to_vec();
        v.extend_from_slice(&dsa.to_ne_bytes());
        for w in common::frames::TEST_SEED {
            v.extend_from_slice(&w.to_ne_bytes());
        }
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

    // Subjects, in this order: offload, baseline, empty, htab floor, table floor, parse,
    // [before]. Rows print as they are measured; the second table (cold start) at the end.
    let mut cold_rows = Vec::new();
    let mut print_row = |name: &str, m: &[Figures], note: &str| {
        let p: Vec<f64> = m.iter().map(|f| f.per_packet).collect();
        let (o, b, ht, fl, pa) = (p[0], p[1], p[3], p[4], p[5]);
        let mut line = format!(
            "{name:<42} {o:>7.0} {b:>8.0} {:>6.2} {fl:>6.0} {:>6.2} {ht:>6.0} {:>6.2} {pa:>6.0}",
            o / b,
            fl / b,
            ht / b
        );
        if p.len() > 6 {
            line += &format!(" {:>7.0} {:>6.2}", p[6], p[6] / b);
        }
        println!("{line}{note}");
        cold_rows.push(format!(
            "{name:<42} {:>7.0} {:>8.0} {:>6.2} {:>8.1} {:>8.1} {:>8.1}",
            m[0].mean_hi,
            m[1].mean_hi,
            m[0].mean_hi / m[1].mean_hi,
            m[0].fixed / 1000.0,
            m[1].fixed / 1000.0,
            m[2].fixed / 1000.0
        ));
    };
    let mut head = format!(
        "{:<42} {:>7} {:>8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
        "case (ns per packet, hot; median of pairs)",
        "offload",
        "baseline",
        "ratio",
        "floor",
        "/base",
        "htab",
        "/base",
        "parse"
    );
    if before.is_some() {
        head += &format!(" {:>7} {:>6}", "before", "ratio");
    }
    println!("{head}");
    let mut all: Vec<&mut Subject> = vec![
        &mut off, &mut base, &mut empty, &mut floor, &mut table, &mut parse,
    ];
    if let Some(b) = before.as_mut() {
        all.push(b);
    }
    // No match: plain IPv4 TCP with no flow installed.
    let mut harness_ns = Vec::new();
    let mut snat_ns = f64::NAN;
    {
        let f = frame(&Encap::plain(), &Tuple::v4(false));
        for i in [1, 3, 4, 5] {
            base_cfg(&all[i].obj, 0);
        }
        let m = measure(&mut all, &f, dev[0]);
        harness_ns.push(m[2].per_packet);
        print_row("no-match pass", &m, "");
    }
    for (name, ein, eout, t, nat) in rows {
        // A single device: the flow and its mirror both arrive on dev[0]; redirect to dev[1].
        let new = if nat { t.snat() } else { t };
        let fwd = FlowSpec::new(dev[0], ein.clone(), t, dev[1], eout.clone(), new);
        // The mirror matches the rewritten frame as it would arrive (egress encap in RX form).
        let back_in = match eout.dsa {
            common::frames::Dsa::Mtk(p) => Encap {
                dsa: common::frames::Dsa::Mtk((1 << p) & 7),
                ..eout.clone()
            },
            _ => eout.clone(),
        };
        // mtk: the mirror re-tags for the port the forward leg expects (TX BIT(1) = RX 2).
        let back_out = if matches!(eout.dsa, common::frames::Dsa::Mtk(_)) {
            eout.clone()
        } else {
            ein.clone()
        };
        let back = FlowSpec::new(dev[0], back_in, new, dev[1], back_out, t);
        let offloads: Vec<usize> = if all.len() > 6 { vec![0, 6] } else { vec![0] };
        for &i in &offloads {
            fwd.install(&all[i].obj);
            back.install(&all[i].obj);
            // Both legs arrive on dev[0]: its DSA config must serve both; only same-tagger
            // pairs can loop, so DSA pairs use the ingress tagger for the parse of either leg.
            common::frames::set_iface_dsa(&all[i].obj, dev[0], ein.dsa_proto());
        }
        let f = frame(&ein, &t);
        let done_of = |o: &Object| fwd.counters(o).packets + back.counters(o).packets;
        let before_runs: Vec<u64> = offloads.iter().map(|&i| done_of(&all[i].obj)).collect();
        for i in [1, 3, 4, 5] {
            base_cfg(&all[i].obj, u32::from(ein.dsa_proto()));
        }
        // The floor looks the forward leg up with the offload's own key bytes.
        let (map, key, _) = fwd.entry();
        let floor_map = if map == bpfqos::dataplane::abi::FLOWS6_MAP {
            "bench_flows6"
        } else {
            "bench_flows4"
        };
        all[3]
            .obj
            .maps()
            .find(|m| m.name() == floor_map)
            .unwrap()
            .update(&key, &dev[1].to_ne_bytes(), MapFlags::ANY)
            .unwrap();
        let (entries, _, entry) = fwd.entry();
        common::frames::table_place(&all[4].obj, entries, &key, &entry);
        let m = measure(&mut all, &f, dev[0]);
        harness_ns.push(m[2].per_packet);
        let expect = u64::from(calls()) * u64::from(reps_lo() + REPS_HI);
        let mut note = String::new();
        // A floor that missed the flow would pass early and look cheap: say so.
        for (i, what) in [(3, "htab floor"), (4, "floor")] {
            if all[i].last_ret != XDP_REDIRECT {
                note += &format!(
                    "  ({what} did not find the flow: returned {})",
                    all[i].last_ret
                );
            }
        }
        // XDP_DROP from the parse reference means that it parsed the whole frame.
        if all[5].last_ret != XDP_DROP {
            note += &format!("  (parse stopped early: returned {})", all[5].last_ret);
        }
        for (n, &i) in offloads.iter().enumerate() {
            let done = done_of(&all[i].obj) - before_runs[n];
            if done != expect {
                note += &format!(
                    "  ({} forwarded only {done}/{expect}; stats {:?})",
                    if i == 0 { "offload" } else { "before" },
                    common::bpf::stats(&all[i].obj)
                );
            }
        }
        if name.starts_with("IPv4 SNAT") {
            snat_ns = m[0].per_packet;
        }
        print_row(name, &m, &note);
        for &i in &offloads {
            fwd.remove(&all[i].obj);
            back.remove(&all[i].obj);
        }
    }
    println!(
        "BPF_PROG_TEST_RUN's own cost per repetition (an XDP program that only returns \
         XDP_PASS): {:.1} ns; it is included in every column above",
        median(harness_ns)
    );
    println!();
    classification(&dev, bench_obj(), snat_ns);
    println!();
    rtt_cost(&dev, bench_obj());
    println!();
    println!(
        "{:<42} {:>7} {:>8} {:>6} {:>8} {:>8} {:>8}",
        format!("case (mean ns/packet, one {REPS_HI}-rep call)"),
        "offload",
        "baseline",
        "ratio",
        "off us",
        "base us",
        "empty us"
    );
    for r in cold_rows {
        println!("{r}");
    }
    println!(
        "us columns: what one call costs besides its repetitions (offload, baseline, empty \
         program): cold caches and predictors at its start; mean = per packet + that / {REPS_HI}"
    );
}

/// Circuits for the classifier rows: 10,000 IPv4 hosts, 10,000 IPv6 /64s and 10,000
/// connections behind NAT, as many as a large config has.
const CIRCUITS: u32 = 10_000;

/// Per-packet cost of the circuit classification (the TC-egress classifier of a shaped L3
/// device, `bpfqos_up_classify`; the download side runs the same lookups in the steering and
/// the offload) next to an empty TC program, and what it adds to the offload's IPv4 SNAT
/// forwarding measured above.
fn classification(dev: &[u32], bench: Object, snat_ns: f64) {
    use bpfqos::dataplane::abi;
    use bpfqos::dataplane::circuits::nat_key;
    use bpfqos::dataplane::circuits::WanTuple;
    use std::net::IpAddr;
    use std::net::Ipv4Addr;
    use std::net::Ipv6Addr;

    let mut cls = Subject::tc(common::bpf::load(), abi::UP_CLASSIFY_PROG);
    let mut empty = Subject::tc(bench, "bench_tc_pass");
    let map = |name: &str| cls.obj.maps().find(|m| m.name() == name).unwrap();
    // 198.18.128.0/17 hosts, fd00:80::/32 /64s; NAT entries of 198.19.0.1 to 198.20.x.y.
    for i in 0..CIRCUITS {
        let id = (i % abi::MAX_CIRCUITS) + 1;
        let v4 = abi::Lpm4Key {
            prefixlen: 32,
            addr: abi::ip4(Ipv4Addr::from(0xc612_8000u32 + i)),
        };
        map(abi::CIRCUITS4_MAP)
            .update(abi::bytes_of(&v4), &id.to_ne_bytes(), MapFlags::ANY)
            .unwrap();
        let v6 = abi::Lpm6Key {
            prefixlen: 64,
            addr: abi::ip6(Ipv6Addr::from(
                (0xfd00_0080u128 << 96) | (u128::from(i) << 64),
            )),
        };
        map(abi::CIRCUITS6_MAP)
            .update(abi::bytes_of(&v6), &id.to_ne_bytes(), MapFlags::ANY)
            .unwrap();
        let t = WanTuple {
            proto: 6,
            local: IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1)),
            local_port: 20_000 + (i % 40_000) as u16,
            remote: IpAddr::V4(Ipv4Addr::from(0xc614_0000u32 + i)),
            remote_port: 443,
        };
        map(abi::CIRCUIT_NAT_MAP)
            .update(
                abi::bytes_of(&nat_key(&t).unwrap()),
                &id.to_ne_bytes(),
                MapFlags::ANY,
            )
            .unwrap();
    }
    let set_flags = |obj: &Object, flags: u32| {
        let v = abi::Shaping { target: 0, flags };
        obj.maps()
            .find(|m| m.name() == abi::SHAPING_MAP)
            .unwrap()
            .update(&dev[0].to_ne_bytes(), abi::bytes_of(&v), MapFlags::ANY)
            .unwrap();
    };
    let eth = |t: &Tuple| {
        wrap(
            MAC_ROUTER_IN,
            MAC_CLIENT,
            &Encap::plain(),
            Dir::Rx,
            &ip_packet(t, 64, Tcp::Ack, &[0u8; 18]),
        )
    };
    // An upload after NAT: from the router's address and a port in circuit_nat.
    let natted = Tuple {
        udp: false,
        src: IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1)),
        dst: IpAddr::V4(Ipv4Addr::from(0xc614_0000u32 + 4321)),
        sport: 20_000 + 4321,
        dport: 443,
    };
    let v6 = Tuple {
        udp: false,
        src: IpAddr::V6(Ipv6Addr::from(
            (0xfd00_0080u128 << 96) | (1234u128 << 64) | 0x10,
        )),
        dst: "fd00:2::20".parse().unwrap(),
        sport: 40_000,
        dport: 443,
    };
    let stranger = Tuple {
        src: IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1)),
        sport: 9,
        ..natted
    };
    let want = |id: u32| {
        ((u32::from(abi::SHAPER_MAJOR)) << 16) | (u32::from(abi::CIRCUIT_MINOR_BASE) + id)
    };
    let cases: Vec<(&str, u32, Tuple, u32)> = vec![
        ("classifier attached, no circuits configured", 0, natted, 0),
        (
            "IPv4 behind NAT: circuit_nat hit",
            abi::SHAPE_F_CIRCUITS_UP,
            natted,
            want(4322),
        ),
        (
            "IPv6: prefix hit (LPM)",
            abi::SHAPE_F_CIRCUITS_UP,
            v6,
            want(1235),
        ),
        (
            "in no circuit: both lookups miss",
            abi::SHAPE_F_CIRCUITS_UP,
            stranger,
            0,
        ),
    ];
    println!(
        "{:<48} {:>8} {:>8} {:>8}   ({CIRCUITS} circuits: IPv4 hosts, IPv6 /64s, NAT entries)",
        "circuit classification (ns per packet, hot)", "classify", "empty", "added"
    );
    for (name, flags, t, expect) in cases {
        set_flags(&cls.obj, flags);
        let f = eth(&t);
        let m = measure(&mut [&mut cls, &mut empty], &f, dev[0]);
        let added = m[0].per_packet - m[1].per_packet;
        let mut note = String::new();
        if cls.last_prio != expect {
            note = format!(
                "  (classified as {:#x}, expected {expect:#x})",
                cls.last_prio
            );
        }
        println!(
            "{name:<48} {:>8.0} {:>8.0} {added:>8.0}{note}",
            m[0].per_packet, m[1].per_packet
        );
        if flags != 0 && expect != 0 && snat_ns.is_finite() {
            println!(
                "{:<48} offload IPv4 SNAT {snat_ns:.0} ns + {added:.0} ns = ratio {:.2} to the offload without it",
                "", (snat_ns + added) / snat_ns
            );
        }
    }
}

/// A TCP frame of `t` with the timestamp option (NOP NOP TS), as most stacks send, TTL 255.
fn ts_frame(e: &Encap, t: &Tuple, tsval: u32) -> Vec<u8> {
    use std::net::IpAddr;
    let mut opts = vec![1u8, 1, 8, 10];
    opts.extend(tsval.to_be_bytes());
    opts.extend(7u32.to_be_bytes());
    let mut ip = Vec::new();
    let payload = [0u8; 18];
    macro_rules! tcp {
        ($b:expr) => {
            $b.tcp(t.sport, t.dport, 1000, 64240)
                .ack(1)
                .options_raw(&opts)
                .unwrap()
                .write(&mut ip, &payload)
                .unwrap()
        };
    }
    match (t.src, t.dst) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            tcp!(etherparse::PacketBuilder::ipv4(a.octets(), b.octets(), 255))
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            tcp!(etherparse::PacketBuilder::ipv6(a.octets(), b.octets(), 255))
        }
        _ => panic!("mixed families"),
    }
    wrap(MAC_ROUTER_IN, MAC_CLIENT, e, Dir::Rx, &ip)
}

/// `memlock` of a map as the kernel accounts it (`/proc/self/fdinfo`), bytes.
fn memlock(obj: &Object, name: &str) -> u64 {
    use std::os::fd::AsFd;
    use std::os::fd::AsRawFd;
    let m = obj.maps().find(|m| m.name() == name).unwrap();
    let fd = m.as_fd().as_raw_fd();
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Passive RTT's cost: per packet in the fast path (RTT on vs off, same object, interleaved),
/// per packet in the TC egress hook (against an empty TC program), and its maps' memory.
fn rtt_cost(dev: &[u32], bench: Object) {
    use bpfqos::dataplane::abi;

    let mut on = Subject::new(common::bpf::load(), abi::XDP_PROG);
    on.rtt = true;
    let mut off = Subject::new(common::bpf::load(), abi::XDP_PROG);
    println!(
        "{:<48} {:>8} {:>8} {:>6} {:>6}",
        "passive RTT in the fast path (ns/packet, hot)", "RTT on", "RTT off", "ratio", "added"
    );
    let rows: Vec<(&str, Encap, Encap, Tuple)> = vec![
        (
            "IPv4 SNAT TCP+TS plain<->plain (pair)",
            Encap::plain(),
            Encap::plain(),
            Tuple::v4(false),
        ),
        (
            "IPv6 TCP+TS plain<->plain (pair)",
            Encap::plain(),
            Encap::plain(),
            Tuple::v6(false),
        ),
        (
            "VLAN->PPPoE TCP+TS push/pop (pair)",
            Encap::vlan(7),
            Encap::pppoe(0x1234),
            Tuple::v4(false),
        ),
    ];
    for (name, ein, eout, t) in rows {
        let new = t.snat();
        let fwd = FlowSpec::new(dev[0], ein.clone(), t, dev[1], eout.clone(), new);
        let back = FlowSpec::new(dev[0], eout.clone(), new, dev[1], ein.clone(), t);
        for s in [&on, &off] {
            fwd.install(&s.obj);
            back.install(&s.obj);
        }
        let f = ts_frame(&ein, &t, 1234);
        let m = measure(&mut [&mut on, &mut off], &f, dev[0]);
        let mut note = String::new();
        for (s, what) in [(&on, "on"), (&off, "off")] {
            if s.last_ret != XDP_REDIRECT {
                note += &format!("  (RTT {what} returned {})", s.last_ret);
            }
        }
        println!(
            "{name:<48} {:>8.0} {:>8.0} {:>6.2} {:>6.0}{note}",
            m[0].per_packet,
            m[1].per_packet,
            m[0].per_packet / m[1].per_packet,
            m[0].per_packet - m[1].per_packet
        );
        for s in [&on, &off] {
            fwd.remove(&s.obj);
            back.remove(&s.obj);
        }
    }

    // The kernel path's departures: the TC egress hook on a frame leaving (its half exists
    // after the first call, as for a flow in progress).
    let mut out = Subject::tc(common::bpf::load(), abi::RTT_OUT_PROG);
    out.rtt = true;
    let mut empty = Subject::tc(bench, "bench_tc_pass");
    let f = ts_frame(&Encap::plain(), &Tuple::v4(false).snat(), 99);
    let m = measure(&mut [&mut out, &mut empty], &f, dev[1]);
    println!(
        "{:<48} {:>8.0} {:>8.0} {:>6} {:>6.0}",
        "TC egress hook (kernel path), IPv4 TCP+TS",
        m[0].per_packet,
        m[1].per_packet,
        "empty",
        m[0].per_packet - m[1].per_packet
    );

    // Memory: what the kernel charges for each RTT map of one loaded object.
    let maps = [
        abi::RTT4_MAP,
        abi::RTT6_MAP,
        abi::RTT_HIST_MAP,
        abi::RTT_CIRCUIT_HIST_MAP,
        abi::RTT_STATS_MAP,
    ];
    let mut total = 0;
    let mut parts = Vec::new();
    for name in maps {
        let b = memlock(&on.obj, name);
        total += b;
        parts.push(format!("{name} {} KiB", b / 1024));
    }
    let per4 = memlock(&on.obj, abi::RTT4_MAP) as f64 / f64::from(abi::RTT_FLOWS);
    let per6 = memlock(&on.obj, abi::RTT6_MAP) as f64 / f64::from(abi::RTT_FLOWS);
    println!(
        "RTT maps' memory (memlock): {} KiB in all: {}; fixed arrays, so the same at 64k flows \
         ({} slots per family, {per4:.0} bytes per IPv4 half, {per6:.0} per IPv6 half; more \
         halves than slots: the newcomers wait for idle slots)",
        total / 1024,
        parts.join(", "),
        abi::RTT_FLOWS,
    );
}

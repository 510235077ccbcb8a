//! The BPF data path under test: the built objects, the ABI view (the daemon's own
//! `bpfqos::dataplane::abi`), a fresh namespace with veths, BPF_PROG_TEST_RUN.

use bpfqos::dataplane::abi;
use libbpf_rs::Object;
use libbpf_rs::ObjectBuilder;
use libbpf_rs::ProgramInput;

use super::frames;
use super::require_root;

/// Little-endian object.
pub const OBJ_EL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/offload.bpfel.o"));
/// Big-endian object (MIPS routers).
pub const OBJ_EB: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/offload.bpfeb.o"));
/// The object this machine can load.
pub const OBJ_NATIVE: &[u8] = abi::OFFLOAD_OBJ;

/// XDP return codes.
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
/// TC return codes.
/// TC_ACT_UNSPEC: what our programs return for a packet they leave to the kernel (and to
/// later filters).
pub const TC_PASS: u32 = u32::MAX;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// What a data-path test runs against: the loaded native object and veth devices in the
/// test's own network namespace ([`frames::fresh_netns`]).
pub struct Env {
    pub obj: Object,
    /// ifindexes of the veth devices.
    pub dev: Vec<u32>,
}

/// The test's [`Env`] with `devices` veths, or None when the test is skipped (not root).
pub fn setup(test: &str, devices: usize) -> Option<Env> {
    if !require_root(test) {
        return None;
    }
    let dev = frames::fresh_netns(devices);
    Some(Env { obj: load(), dev })
}

/// Opens and loads the native object.
pub fn load() -> Object {
    ObjectBuilder::default()
        .open_memory(OBJ_NATIVE)
        .expect("open native object")
        .load()
        .expect("load native object (verifier)")
}

/// The result of one BPF_PROG_TEST_RUN.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub ret: u32,
    pub data: Vec<u8>,
    pub duration_ns: u64,
    /// TC: `skb->priority` after the run (the circuit classification); XDP: 0.
    pub priority: u32,
}

/// Runs the XDP program on `frame`; `ingress_ifindex` goes into the `xdp_md` context (the
/// device must exist in the caller's netns; 0 = none).
pub fn run_xdp(obj: &mut Object, frame: &[u8], ingress_ifindex: u32, repeat: u32) -> RunResult {
    let prog = obj
        .progs_mut()
        .find(|p| p.name() == abi::XDP_PROG)
        .expect("xdp program");
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    // The kernel wants data = 0 and data_end = the frame length in the context.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 512];
    let input = ProgramInput {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat,
        context_in: (ingress_ifindex != 0).then_some(&mut ctx[..]),
        ..Default::default()
    };
    let output = prog.test_run(input).expect("BPF_PROG_TEST_RUN (xdp)");
    let data = output.data.map(|d| d.to_vec()).unwrap_or_default();
    RunResult {
        ret: output.return_value,
        data,
        duration_ns: output.duration.as_nanos() as u64,
        priority: 0,
    }
}

/// Runs the TC program on `frame` as if received on `ifindex` (test runs cannot set
/// `ingress_ifindex`; the kernel sets `skb->dev` from `__sk_buff.ifindex`, which is what the
/// program keys flows by).
pub fn run_tc(obj: &mut Object, frame: &[u8], ifindex: u32, repeat: u32) -> RunResult {
    run_tc_gso(obj, frame, ifindex, repeat, 0)
}

/// [`run_tc`] with the skb marked as a GSO packet of `gso_size`-byte segments (what GRO makes
/// of a TCP stream before TC ingress sees it); 0: not GSO.
pub fn run_tc_gso(
    obj: &mut Object,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
    gso_size: u32,
) -> RunResult {
    let prog = obj
        .progs_mut()
        .find(|p| p.name() == abi::TC_PROG)
        .expect("tc program");
    let mut out = vec![0u8; frame.len() + 512];
    // struct __sk_buff is 192 bytes; ifindex is at offset 40 (after len, pkt_type, mark,
    // queue_mapping, protocol, vlan_present, vlan_tci, vlan_proto, priority, ingress_ifindex);
    // gso_segs at 164, gso_size at 176.
    let mut ctx = [0u8; 192];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    if gso_size != 0 {
        ctx[164..168].copy_from_slice(&2u32.to_ne_bytes());
        ctx[176..180].copy_from_slice(&gso_size.to_ne_bytes());
    }
    let mut ctx_out = [0u8; 192];
    let input = ProgramInput {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat,
        context_in: (ifindex != 0).then_some(&mut ctx[..]),
        context_out: (ifindex != 0).then_some(&mut ctx_out[..]),
        ..Default::default()
    };
    let (ret, data, duration_ns) = {
        let output = prog.test_run(input).expect("BPF_PROG_TEST_RUN (tc)");
        (
            output.return_value,
            output.data.map(|d| d.to_vec()).unwrap_or_default(),
            output.duration.as_nanos() as u64,
        )
    };
    RunResult {
        ret,
        data,
        duration_ns,
        // struct __sk_buff.priority, offset 32.
        priority: u32::from_ne_bytes([ctx_out[32], ctx_out[33], ctx_out[34], ctx_out[35]]),
    }
}

/// The `stats` counters summed over CPUs, as (name, value) for the non-zero ones.
pub fn stats(obj: &Object) -> Vec<(u32, u64)> {
    use libbpf_rs::MapCore;
    let map = obj
        .maps()
        .find(|m| m.name() == abi::STATS_MAP)
        .expect("stats map");
    let mut out = Vec::new();
    for i in 0..abi::Stat::BPFQOS_STAT_MAX.0 {
        let per_cpu = map
            .lookup_percpu(&i.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
            .expect("stats lookup")
            .unwrap_or_default();
        let sum: u64 = per_cpu
            .iter()
            .map(|v| u64::from_ne_bytes(v[..8].try_into().expect("u64")))
            .sum();
        if sum != 0 {
            out.push((i, sum));
        }
    }
    out
}

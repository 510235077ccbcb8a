//! The Rust view of the BPF data path's ABI: map and program names, and the key/value structs
//! of `bpf/include/bpfqos_abi.h`.
//!
//! The structs are not hand-kept here: libbpf-cargo generates them from the BTF of the built
//! object (`OUT_DIR/offload.skel.rs`, module `types`) and this module only gives them domain
//! names and the few helpers needed to fill them. Byte order follows the header: wire fields
//! (addresses, ports, VLAN TPID/TCI, PPPoE session id, checksum deltas) are stored in network
//! order, everything else in host order.
//!
//! Constants come from the header's enums too (`bpfqos_sizes`, `bpfqos_ctl_flags`, ...): the
//! header has no `#define` that Rust needs, so nothing here is a hand-kept copy.

use std::net::Ipv4Addr;
use std::net::Ipv6Addr;

/// The generated libbpf-rs skeleton of `bpf/offload.bpf.c` (including the `types` module).
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::restriction,
    clippy::undocumented_unsafe_blocks,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unsafe_op_in_unsafe_fn
)]
pub mod skel {
    include!(concat!(env!("OUT_DIR"), "/offload.skel.rs"));
}

use skel::types;

/// The offload object for this machine's byte order, as shipped (build.rs: no DWARF).
#[cfg(target_endian = "little")]
pub const OFFLOAD_OBJ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/offload.bpfel.ship.o"));
/// The offload object for this machine's byte order, as shipped (build.rs: no DWARF).
#[cfg(target_endian = "big")]
pub const OFFLOAD_OBJ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/offload.bpfeb.ship.o"));

/// XDP program (attach to the lowest ingress device).
pub const XDP_PROG: &str = "bpfqos_xdp";
/// TC-ingress twin of the XDP program.
pub const TC_PROG: &str = "bpfqos_tc";
/// TC program steering a shaped L3 device's ingress into its download shaper.
pub const SHAPE_IN_PROG: &str = "bpfqos_dl_steer";
/// TC program on the download shaper's far end, putting packets back.
pub const SHAPE_RETURN_PROG: &str = "bpfqos_dl_back";
/// TC-egress program of a shaped L3 device: puts uploads into their circuit's class.
pub const UP_CLASSIFY_PROG: &str = "bpfqos_up_classify";
/// TC-egress program of every lowest device the data path runs on: times departures (RTT).
pub const RTT_OUT_PROG: &str = "bpfqos_rtt_out";
/// `ARRAY[RTT_FLOWS]` of [`RttSlot4`]: IPv4 flow halves, two-way set-associative.
pub const RTT4_MAP: &str = "rtt4";
/// `ARRAY[RTT_FLOWS]` of [`RttSlot6`]: IPv6 flow halves.
pub const RTT6_MAP: &str = "rtt6";
/// `ARRAY[2 * RTT_SLOTS]` of [`RttHist`]: per interface slot and side (`slot * 2 + wan`).
pub const RTT_HIST_MAP: &str = "rtt_hist";
/// `HASH` of `circuit << 1 | wan` → [`RttHist`].
pub const RTT_CIRCUIT_HIST_MAP: &str = "rtt_circuit_hist";
/// `ARRAY[RTT_SLOTS]` of [`RttHist`]: per interface slot, the WAN-side samples' delay above
/// their half's base delay (what autorate reads).
pub const RTT_EXCESS_MAP: &str = "rtt_excess";
/// `PERCPU_ARRAY` of `u64`, indexed by [`RttStat`].
pub const RTT_STATS_MAP: &str = "rtt_stats";
/// `LPM_TRIE` of [`Lpm4Key`] → circuit id (`u32`).
pub const CIRCUITS4_MAP: &str = "circuits4";
/// `LPM_TRIE` of [`Lpm6Key`] → circuit id (`u32`).
pub const CIRCUITS6_MAP: &str = "circuits6";
/// `HASH` of [`NatKey`] → circuit id (`u32`): NATed connections of circuits' hosts.
pub const CIRCUIT_NAT_MAP: &str = "circuit_nat";
/// `ARRAY[MAX_IFACES]` of [`Shaping`], indexed by ifindex.
pub const SHAPING_MAP: &str = "shaping";
/// `PERCPU_ARRAY` of `u64`, indexed by [`ShapeStat`].
pub const SHAPE_STATS_MAP: &str = "shape_stats";
/// `ARRAY[1]` of [`Control`]: heartbeat and the offload switch.
pub const CONTROL_MAP: &str = "control";
/// `PERCPU_ARRAY[STAT_MAX]` of `u64`, indexed by [`Stat`].
pub const STATS_MAP: &str = "stats";
/// `ARRAY` of [`Iface`], indexed by ifindex (< [`MAX_IFACES`]): the DSA tagger per device.
pub const IFACES_MAP: &str = "ifaces";
/// `ARRAY` of [`Flow4`] (key included), indexed by entry number: [`flow_entries`] entries.
pub const FLOWS4_MAP: &str = "flows4";
/// `ARRAY` of [`Flow6`] (key included), indexed by entry number: [`flow_entries`] entries.
pub const FLOWS6_MAP: &str = "flows6";
/// `ARRAY[FLOW_BUCKETS]` of [`Bucket`], `BPF_F_MMAPABLE`: the hash index of `flows4`.
pub const BUCKETS4_MAP: &str = "buckets4";
/// The hash index of `flows6`.
pub const BUCKETS6_MAP: &str = "buckets6";
/// `ARRAY_OF_MAPS[1]`: an update returns after an RCU grace period (no BPF program that was
/// running still runs), the daemon's barrier before it rewrites an unlinked entry.
pub const GRACE_MAP: &str = "grace";
/// The inner map put into [`GRACE_MAP`].
pub const GRACE_INNER_MAP: &str = "grace_inner";
/// Buckets per flow table (`BPFQOS_FLOW_BUCKETS`).
pub const FLOW_BUCKETS: u32 = types::bpfqos_sizes::BPFQOS_FLOW_BUCKETS.0;
/// Slots per bucket (`BPFQOS_BUCKET_SLOTS`).
pub const BUCKET_SLOTS: usize = types::bpfqos_sizes::BPFQOS_BUCKET_SLOTS.0 as usize;
/// Entries per flow table at most (`BPFQOS_MAX_FLOWS`, what a 16-bit slot index reaches).
pub const MAX_FLOWS: u32 = types::bpfqos_sizes::BPFQOS_MAX_FLOWS.0;
/// Entries per flow table at least, whatever conntrack's size.
pub const MIN_FLOWS: u32 = 1024;

/// Entries per family's flow table for a conntrack table of `conntrack_max` connections
/// (`net.netfilter.nf_conntrack_max`; None when unknown): each connection takes two entries of
/// its family, so twice that, as a power of two within [`MIN_FLOWS`]..=[`MAX_FLOWS`]. Sized to
/// what conntrack can hold because the arrays are allocated whole (a 64k-entry IPv6 table is
/// 10 MiB of kernel memory on a router with 128 MiB); unknown takes the most.
pub fn flow_entries(conntrack_max: Option<u64>) -> u32 {
    match conntrack_max {
        None => MAX_FLOWS,
        Some(n) => n
            .saturating_mul(2)
            .checked_next_power_of_two()
            .unwrap_or(u64::MAX)
            .clamp(u64::from(MIN_FLOWS), u64::from(MAX_FLOWS)) as u32,
    }
}
/// Hash seed words in [`Control`] (`BPFQOS_HASH_SEEDS`).
pub const HASH_SEEDS: usize = types::bpfqos_sizes::BPFQOS_HASH_SEEDS.0 as usize;
/// `BPFQOS_HASH_MUL`, from its two halves.
const HASH_MUL: u64 = ((types::bpfqos_hash_mul::BPFQOS_HASH_MUL_HI.0 as u64) << 32)
    | types::bpfqos_hash_mul::BPFQOS_HASH_MUL_LO.0 as u64;
/// `DEVMAP_HASH` keyed and valued by the egress ifindex (`u32`): XDP redirect targets.
pub const TX_PORTS_MAP: &str = "tx_ports";
/// Entries of [`TX_PORTS_MAP`] (`BPFQOS_MAX_TX_PORTS`).
pub const MAX_TX_PORTS: u32 = types::bpfqos_sizes::BPFQOS_MAX_TX_PORTS.0;
/// `RINGBUF` of [`Event`]: FIN/RST seen on an offloaded flow.
pub const EVENTS_MAP: &str = "events";
/// Size of the `ifaces` array (`BPFQOS_MAX_IFACES`): devices with a larger ifindex are parsed
/// without DSA tag.
pub const MAX_IFACES: u32 = types::bpfqos_sizes::BPFQOS_MAX_IFACES.0;

/// Shared control word (`struct bpfqos_control`).
pub type Control = types::bpfqos_control;
/// Per-device config (`struct bpfqos_iface`).
pub type Iface = types::bpfqos_iface;
/// L2 encapsulation: VLANs, PPPoE, DSA port (`struct bpfqos_l2`).
pub type L2Encap = types::bpfqos_l2;
/// IPv4 flow key (`struct bpfqos_flow4_key`).
pub type FlowKey4 = types::bpfqos_flow4_key;
/// IPv6 flow key (`struct bpfqos_flow6_key`).
pub type FlowKey6 = types::bpfqos_flow6_key;
/// Where and how to send a flow's packets (`struct bpfqos_nexthop`).
pub type NextHop = types::bpfqos_nexthop;
/// IPv4 NAT rewrite with checksum deltas (`struct bpfqos_nat4`).
pub type Nat4 = types::bpfqos_nat4;
/// IPv6 NAT rewrite with checksum deltas (`struct bpfqos_nat6`).
pub type Nat6 = types::bpfqos_nat6;
/// Per-flow counters written by the data path (`struct bpfqos_counters`).
pub type Counters = types::bpfqos_counters;
/// IPv4 flow table value (`struct bpfqos_flow4`).
pub type Flow4 = types::bpfqos_flow4;
/// IPv6 flow table value (`struct bpfqos_flow6`).
pub type Flow6 = types::bpfqos_flow6;
/// A bucket of a flow table's hash index (`struct bpfqos_bucket`).
pub type Bucket = types::bpfqos_bucket;
/// Ring-buffer event (`struct bpfqos_event`).
pub type Event = types::bpfqos_event;
/// DSA tagging protocol (`enum bpfqos_dsa_proto`).
pub type DsaProto = types::bpfqos_dsa_proto;
/// Flow action (`enum bpfqos_action`).
pub type Action = types::bpfqos_action;
/// Event type (`enum bpfqos_event_type`).
pub type EventType = types::bpfqos_event_type;
/// Index into the `stats` map (`enum bpfqos_stat`).
pub type Stat = types::bpfqos_stat;
/// A device's role in download shaping (`struct bpfqos_shaping`).
pub type Shaping = types::bpfqos_shaping;
/// Index into the `shape_stats` map (`enum bpfqos_shape_stat`).
pub type ShapeStat = types::bpfqos_shape_stat;
/// IPv4 circuit prefix (`struct bpfqos_lpm4_key`).
pub type Lpm4Key = types::bpfqos_lpm4_key;
/// IPv6 circuit prefix (`struct bpfqos_lpm6_key`).
pub type Lpm6Key = types::bpfqos_lpm6_key;
/// A connection's WAN-side tuple (`struct bpfqos_nat_key`).
pub type NatKey = types::bpfqos_nat_key;
/// IPv4 RTT flow-half key (`struct bpfqos_rtt4_key`).
pub type RttKey4 = types::bpfqos_rtt4_key;
/// IPv6 RTT flow-half key (`struct bpfqos_rtt6_key`).
pub type RttKey6 = types::bpfqos_rtt6_key;
/// A flow half's RTT state (`struct bpfqos_rtt_state`).
pub type RttState = types::bpfqos_rtt_state;
/// A slot of `rtt4` (`struct bpfqos_rtt4_slot`).
pub type RttSlot4 = types::bpfqos_rtt4_slot;
/// A slot of `rtt6` (`struct bpfqos_rtt6_slot`).
pub type RttSlot6 = types::bpfqos_rtt6_slot;
/// The multiplier of the halves' hash (`BPFQOS_RTT_HASH_MUL`).
pub const RTT_HASH_MUL: u32 = types::bpfqos_rtt_consts::BPFQOS_RTT_HASH_MUL.0;
/// `rtt_state.flags`: the slot holds a half.
pub const RTT_F_USED: u16 = types::bpfqos_rtt_flags::BPFQOS_RTT_F_USED.0 as u16;
/// A log-scale RTT histogram (`struct bpfqos_rtt_hist`).
pub type RttHist = types::bpfqos_rtt_hist;
/// Index into the `rtt_stats` map (`enum bpfqos_rtt_stat`).
pub type RttStat = types::bpfqos_rtt_stat;
/// Flow halves per family (`BPFQOS_RTT_FLOWS`).
pub const RTT_FLOWS: u32 = types::bpfqos_rtt_consts::BPFQOS_RTT_FLOWS.0;
/// Interface slots of the RTT histograms, 1..this-1 (`BPFQOS_RTT_SLOTS`).
pub const RTT_SLOTS: u32 = types::bpfqos_rtt_consts::BPFQOS_RTT_SLOTS.0;
/// Buckets per RTT histogram (`BPFQOS_RTT_BUCKETS`).
pub const RTT_BUCKETS: usize = types::bpfqos_rtt_consts::BPFQOS_RTT_BUCKETS.0 as usize;
/// log2 of the buckets per octave (`BPFQOS_RTT_SUB_BITS`).
pub const RTT_SUB_BITS: u32 = types::bpfqos_rtt_consts::BPFQOS_RTT_SUB_BITS.0;
/// `rtt_state.flags`: the half leaves by a WAN-facing device.
pub const RTT_F_WAN: u16 = types::bpfqos_rtt_flags::BPFQOS_RTT_F_WAN.0 as u16;
/// `iface.flags`: XDP runs on this device (the TC twin leaves arrivals to it).
pub const IFACE_F_XDP: u32 = types::bpfqos_iface_flags::BPFQOS_IFACE_F_XDP.0;
/// `iface.flags`: the device faces the Internet (its RTTs are WAN-side RTTs).
pub const IFACE_F_WAN: u32 = types::bpfqos_iface_flags::BPFQOS_IFACE_F_WAN.0;
/// `iface.flags`: CPU steering of the frames XDP hands to the kernel on this device.
pub const IFACE_F_STEER: u32 = types::bpfqos_iface_flags::BPFQOS_IFACE_F_STEER.0;
/// `iface.flags`: steering may pass a frame in place when its hash picks the receiving CPU.
pub const IFACE_F_STEER_HERE: u32 = types::bpfqos_iface_flags::BPFQOS_IFACE_F_STEER_HERE.0;
/// The cpumap program (`SEC("xdp/cpumap")`): counts frames where they were steered to.
pub const CPUMAP_PROG: &str = "bpfqos_cpumap";
/// `CPUMAP[MAX_CPUS]`: CPU number → `struct bpf_cpumap_val` (queue size, cpumap program).
pub const CPU_MAP: &str = "cpu_map";
/// `ARRAY[MAX_CPUS]` of CPU numbers: the steering set (the first `control.steer_cpus`).
pub const STEER_CPUS_MAP: &str = "steer_cpus";
/// `ARRAY[PPP_HELD]`: PPPoE sessions with a stateful PPP stream, never steered
/// (`ifindex << 16 | session id`, 0: empty).
pub const PPP_HELD_MAP: &str = "ppp_held";
/// Slots of [`PPP_HELD_MAP`] (`BPFQOS_PPP_HELD`).
pub const PPP_HELD: u32 = types::bpfqos_sizes::BPFQOS_PPP_HELD.0;
/// `PERCPU_ARRAY[MAX_CPUS]` of [`SteerStat`], by the CPU frames were steered to.
pub const STEER_STATS_MAP: &str = "steer_stats";
/// CPU numbers steering can use are below this (`BPFQOS_MAX_CPUS`).
pub const MAX_CPUS: u32 = types::bpfqos_sizes::BPFQOS_MAX_CPUS.0;
/// A CPU's steering counters (`struct bpfqos_steer_stat`).
pub type SteerStat = types::bpfqos_steer_stat;
/// Handle major of every qdisc and class of bpfqos' shapers (`BPFQOS_SHAPER_MAJOR`).
pub const SHAPER_MAJOR: u16 = types::bpfqos_circuit_limits::BPFQOS_SHAPER_MAJOR.0 as u16;
/// A circuit's HTB class minor is this plus its id (`BPFQOS_CIRCUIT_MINOR_BASE`).
pub const CIRCUIT_MINOR_BASE: u16 =
    types::bpfqos_circuit_limits::BPFQOS_CIRCUIT_MINOR_BASE.0 as u16;
/// Circuit ids are 1..=this (`BPFQOS_MAX_CIRCUITS`).
pub const MAX_CIRCUITS: u32 = types::bpfqos_circuit_limits::BPFQOS_MAX_CIRCUITS.0;
/// Entries of each circuit prefix trie (`BPFQOS_MAX_CIRCUIT_PREFIXES`).
pub const MAX_CIRCUIT_PREFIXES: u32 = types::bpfqos_circuit_limits::BPFQOS_MAX_CIRCUIT_PREFIXES.0;
/// `shaping.flags`: classify downloads into circuits (L3 device, and the shaper's first end).
pub const SHAPE_F_CIRCUITS_DOWN: u32 = types::bpfqos_shape_flags::BPFQOS_SHAPE_F_CIRCUITS_DOWN.0;
/// `shaping.flags`: classify uploads into circuits (L3 device's TC egress).
pub const SHAPE_F_CIRCUITS_UP: u32 = types::bpfqos_shape_flags::BPFQOS_SHAPE_F_CIRCUITS_UP.0;
/// `shaping.flags`: the L3 device's egress packets start at IP (PPP).
pub const SHAPE_F_UP_NO_L2: u32 = types::bpfqos_shape_flags::BPFQOS_SHAPE_F_UP_NO_L2.0;
/// `struct bpfqos_xdp_meta.magic`: the frame was rewritten by XDP for a download shaper.
pub const META_MAGIC: u32 = types::bpfqos_meta_magic::BPFQOS_META_MAGIC.0;
/// `shaping.flags`: steer this L3 device's ingress into the shaper.
pub const SHAPE_F_TO_SHAPER: u32 = types::bpfqos_shape_flags::BPFQOS_SHAPE_F_TO_SHAPER.0;
/// `shaping.flags`: this is a shaper's far end; put packets back into `target`'s ingress.
pub const SHAPE_F_RETURN: u32 = types::bpfqos_shape_flags::BPFQOS_SHAPE_F_RETURN.0;
/// `shaping.flags`: the L3 device carries no L2 header (PPP); add one for the shaper.
pub const SHAPE_F_ADD_ETH: u32 = types::bpfqos_shape_flags::BPFQOS_SHAPE_F_ADD_ETH.0;

/// `control.flags` bit: offload enabled.
pub const CTL_F_OFFLOAD: u32 = types::bpfqos_ctl_flags::BPFQOS_CTL_F_OFFLOAD.0;
/// `control.flags` bit: passive RTT enabled.
pub const CTL_F_RTT: u32 = types::bpfqos_ctl_flags::BPFQOS_CTL_F_RTT.0;
/// Heartbeat age after which the data path passes everything to the kernel.
pub const HEARTBEAT_MAX_AGE_NS: u64 =
    types::bpfqos_heartbeat::BPFQOS_HEARTBEAT_MAX_AGE_MS.0 as u64 * 1_000_000;
/// `flow.flags` bit set by the data path on FIN/RST: user space should tear the flow down.
pub const FLOW_F_TEARDOWN: u32 = types::bpfqos_flow_flags::BPFQOS_FLOW_F_TEARDOWN.0;

/// EtherType of an 802.1Q tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// EtherType of an 802.1ad (QinQ service) tag.
pub const ETH_P_8021AD: u16 = 0x88a8;

/// Types whose bytes are exactly what the BPF side sees: `#[repr(C)]`, `Copy`, every padding
/// byte an explicit field (the header guarantees it; tests/bpf_objects.rs checks it against the BTF).
///
/// # Safety
/// Implement only for the generated ABI structs (no implicit padding, no pointers, every bit
/// pattern valid).
pub unsafe trait Pod: Copy + Default {}

// SAFETY: all of these are generated from bpfqos_abi.h, which spells out every padding byte;
// their fields are integers and arrays of integers, for which every bit pattern is valid.
unsafe impl Pod for Control {}
// SAFETY: see above.
unsafe impl Pod for Iface {}
// SAFETY: see above.
unsafe impl Pod for RttKey4 {}
// SAFETY: see above.
unsafe impl Pod for RttKey6 {}
// SAFETY: see above.
unsafe impl Pod for RttState {}
// SAFETY: see above.
unsafe impl Pod for RttHist {}
// SAFETY: see above.
unsafe impl Pod for RttSlot4 {}
// SAFETY: see above.
unsafe impl Pod for RttSlot6 {}
// SAFETY: see above.
unsafe impl Pod for FlowKey4 {}
// SAFETY: see above.
unsafe impl Pod for FlowKey6 {}
// SAFETY: see above.
unsafe impl Pod for Flow4 {}
// SAFETY: see above.
unsafe impl Pod for Flow6 {}
// SAFETY: see above.
unsafe impl Pod for Event {}
// SAFETY: see above.
unsafe impl Pod for Bucket {}
// SAFETY: see above.
unsafe impl Pod for Shaping {}
// SAFETY: see above.
unsafe impl Pod for Lpm4Key {}
// SAFETY: see above.
unsafe impl Pod for Lpm6Key {}
// SAFETY: see above.
unsafe impl Pod for NatKey {}
// SAFETY: see above.
unsafe impl Pod for SteerStat {}

/// The bytes of an ABI struct, as a map key or value.
pub fn bytes_of<T: Pod>(v: &T) -> &[u8] {
    // SAFETY: T is Pod: no implicit padding (so every byte is initialized), and the slice
    // borrows `v` for its whole lifetime with exactly size_of::<T>() bytes.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// An ABI struct from map bytes; `None` if the length does not match.
pub fn from_bytes<T: Pod>(b: &[u8]) -> Option<T> {
    if b.len() != std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the length was checked, every bit pattern is a valid T (Pod), and
    // read_unaligned copes with the Vec<u8>'s alignment.
    Some(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
}

/// The `control` map value: heartbeat (CLOCK_MONOTONIC ns), the offload and RTT switches and
/// the flow tables' hash seeds.
pub fn control_value(
    heartbeat_ns: u64,
    enabled: bool,
    rtt: bool,
    steer_cpus: u32,
    seed: &[u32; HASH_SEEDS],
) -> Vec<u8> {
    let c = Control {
        heartbeat_ns,
        flags: if enabled { CTL_F_OFFLOAD } else { 0 } | if rtt { CTL_F_RTT } else { 0 },
        steer_cpus,
        seed: *seed,
    };
    bytes_of(&c).to_vec()
}

/// What a flow entry counted, as the data path wrote it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowCounters {
    /// Packets forwarded.
    pub packets: u64,
    /// IP bytes forwarded.
    pub bytes: u64,
    /// `BPFQOS_FLOW_F_*` flags the data path set.
    pub flags: u32,
}

impl FlowCounters {
    /// The data path saw a FIN or RST: the flow should go back to the kernel.
    pub fn teardown(&self) -> bool {
        self.flags & FLOW_F_TEARDOWN != 0
    }
}

/// The counters of a `flows4` or `flows6` entry (told apart by size).
pub fn flow_counters(value: &[u8]) -> Option<FlowCounters> {
    let (cnt, flags) = if let Some(f) = from_bytes::<Flow4>(value) {
        (f.cnt, f.flags)
    } else {
        let f = from_bytes::<Flow6>(value)?;
        (f.cnt, f.flags)
    };
    Some(FlowCounters {
        packets: cnt.packets,
        bytes: cnt.bytes,
        flags,
    })
}

/// The key of a `flows4` or `flows6` entry (its last bytes), by the entry's length.
pub fn entry_key(entry: &[u8]) -> Option<&[u8]> {
    let key_len = if entry.len() == std::mem::size_of::<Flow4>() {
        std::mem::size_of::<FlowKey4>()
    } else if entry.len() == std::mem::size_of::<Flow6>() {
        std::mem::size_of::<FlowKey6>()
    } else {
        return None;
    };
    entry.get(entry.len() - key_len..)
}

/// The bytes of an entry the data path writes (`flags`, `cnt`), the same range in both
/// layouts.
pub const ENTRY_BPF_WRITTEN: std::ops::Range<usize> =
    std::mem::offset_of!(Flow4, flags)..std::mem::offset_of!(Flow4, nat);

/// Where a flow key (its bytes: a [`FlowKey4`] or a [`FlowKey6`]) lives in its table's hash
/// index: (bucket, tag), exactly as bpfqos_abi.h defines it and flowtable.h computes it.
pub fn flow_hash(key: &[u8], seed: &[u32; HASH_SEEDS]) -> (u32, u16) {
    let word = |i: usize| -> u32 {
        let mut b = [0u8; 4];
        if let Some(src) = key.get(4 * i..4 * i + 4) {
            b.copy_from_slice(src);
        }
        u32::from_ne_bytes(b)
    };
    let mut h: u64 = 0;
    for i in 0..(key.len() / 8).min(HASH_SEEDS / 2) {
        let x = word(2 * i).wrapping_add(seed[2 * i]);
        let y = word(2 * i + 1).wrapping_add(seed[2 * i + 1]);
        h = h.wrapping_add(u64::from(x) * u64::from(y));
    }
    let m = (h ^ (h >> 32)).wrapping_mul(HASH_MUL);
    (
        ((m >> 32) as u32) & (FLOW_BUCKETS - 1),
        ((m >> 48) as u16) | 1,
    )
}

/// A hash-index slot pointing at entry `index` with `tag` (never 0: 0 is an empty slot).
pub fn slot_word(tag: u16, index: u32) -> u32 {
    (u32::from(tag) << 16) | (index & 0xffff)
}

/// The tag of a non-empty slot.
pub fn slot_tag(slot: u32) -> u16 {
    (slot >> 16) as u16
}

/// The entry index of a non-empty slot.
pub fn slot_index(slot: u32) -> u32 {
    slot & 0xffff
}

/// An IPv4 address as the BPF side stores it (network order in memory).
pub fn ip4(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

/// The address [`ip4`] stored.
pub fn ip4_of(w: u32) -> Ipv4Addr {
    Ipv4Addr::from(w.to_ne_bytes())
}

/// The address [`ip6`] stored.
pub fn ip6_of(w: [u32; 4]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, word) in w.iter().enumerate() {
        o[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    Ipv6Addr::from(o)
}

/// An IPv6 address as the BPF side stores it (four network-order words).
pub fn ip6(a: Ipv6Addr) -> [u32; 4] {
    let o = a.octets();
    let mut w = [0u32; 4];
    for (i, chunk) in o.chunks_exact(4).enumerate() {
        w[i] = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    w
}

/// The L2 header the data path writes in front of the IP header for `nh` (`write_l2()` in
/// offload.bpf.c, in the kernel taggers' transmit formats), in bytes: what `nh.l2_len` must
/// hold. Ethernet (14), 4 per VLAN tag, 8 for the PPPoE session header and PPP protocol (the
/// outer EtherType is Ethernet's), and the DSA TX tag: gswip 4 in front of the MACs, qca 2 after
/// them, mtk 4 after them unless a VLAN follows (the tag then replaces that VLAN's TPID).
pub fn l2_header_len(nh: &NextHop) -> u8 {
    const ETH_HLEN: u8 = 14;
    const VLAN_HLEN: u8 = 4;
    const PPPOE_SES_HLEN: u8 = 8;
    let vlans = nh.l2.vlan_proto.iter().filter(|&&p| p != 0).count() as u8;
    let dsa = match types::bpfqos_dsa_proto(u32::from(nh.dsa_proto)) {
        DsaProto::BPFQOS_DSA_GSWIP => 4,
        DsaProto::BPFQOS_DSA_QCA => 2,
        DsaProto::BPFQOS_DSA_MTK if vlans == 0 => 4,
        _ => 0,
    };
    let pppoe = if nh.l2.pppoe != 0 { PPPOE_SES_HLEN } else { 0 };
    ETH_HLEN + VLAN_HLEN * vlans + pppoe + dsa
}

/// A 16-bit wire value (port, TPID, TCI, session id) as the BPF side stores it.
pub fn be16(v: u16) -> u16 {
    v.to_be()
}

/// One's-complement checksum delta for rewriting `old` into `new` (equal lengths, even, as
/// network-order bytes): the sum of `~old + new` over 16-bit words, folded, returned as stored
/// in the map (network order, like the checksum field it is added to).
pub fn csum_delta(old: &[u8], new: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
        sum += u32::from(!u16::from_be_bytes([o[0], o[1]]));
        sum += u32::from(u16::from_be_bytes([n[0], n[1]]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // A change that cancels out gives 0xffff (one's-complement -0); store +0 so that
    // "no NAT" is an all-zero entry and adding it never flips a 0xffff checksum to 0.
    let d = if sum == 0xffff { 0 } else { sum as u16 };
    d.to_be()
}

/// NAT rewrite for an IPv4 flow whose packets arrive with `orig` (saddr, daddr, sport, dport)
/// and leave with `new`; equal tuples mean no NAT (deltas 0).
pub fn nat4(orig: (Ipv4Addr, Ipv4Addr, u16, u16), new: (Ipv4Addr, Ipv4Addr, u16, u16)) -> Nat4 {
    let addrs = |t: &(Ipv4Addr, Ipv4Addr, u16, u16)| [t.0.octets(), t.1.octets()].concat();
    let ports =
        |t: &(Ipv4Addr, Ipv4Addr, u16, u16)| [t.2.to_be_bytes(), t.3.to_be_bytes()].concat();
    Nat4 {
        saddr: ip4(new.0),
        daddr: ip4(new.1),
        sport: be16(new.2),
        dport: be16(new.3),
        addr_csum: csum_delta(&addrs(&orig), &addrs(&new)),
        port_csum: csum_delta(&ports(&orig), &ports(&new)),
    }
}

/// NAT rewrite for an IPv6 flow (see [`nat4`]).
pub fn nat6(orig: (Ipv6Addr, Ipv6Addr, u16, u16), new: (Ipv6Addr, Ipv6Addr, u16, u16)) -> Nat6 {
    let addrs = |t: &(Ipv6Addr, Ipv6Addr, u16, u16)| [t.0.octets(), t.1.octets()].concat();
    let ports =
        |t: &(Ipv6Addr, Ipv6Addr, u16, u16)| [t.2.to_be_bytes(), t.3.to_be_bytes()].concat();
    Nat6 {
        saddr: ip6(new.0),
        daddr: ip6(new.1),
        sport: be16(new.2),
        dport: be16(new.3),
        addr_csum: csum_delta(&addrs(&orig), &addrs(&new)),
        port_csum: csum_delta(&ports(&orig), &ports(&new)),
    }
}

#[cfg(test)]
mod tests {
    use super::control_value;
    use super::csum_delta;
    use super::Control;
    use super::Event;
    use super::Flow4;
    use super::Flow6;
    use super::FlowKey4;
    use super::FlowKey6;
    use super::L2Encap;
    use super::NextHop;

    #[test]
    fn flow_tables_are_sized_from_conntrack() {
        use super::flow_entries;
        // OpenWrt's default nf_conntrack_max: two entries per connection.
        assert_eq!(flow_entries(Some(16384)), 32768);
        assert_eq!(flow_entries(Some(10000)), 32768);
        assert_eq!(flow_entries(Some(32768)), super::MAX_FLOWS);
        assert_eq!(flow_entries(Some(262144)), super::MAX_FLOWS);
        assert_eq!(flow_entries(Some(u64::MAX)), super::MAX_FLOWS);
        assert_eq!(flow_entries(Some(100)), super::MIN_FLOWS);
        assert_eq!(flow_entries(Some(0)), super::MIN_FLOWS);
        assert_eq!(flow_entries(None), super::MAX_FLOWS);
        assert_eq!(super::MAX_FLOWS, 65536, "slot indexes are 16 bits");
    }

    #[test]
    fn abi_sizes_match_the_header_guards() {
        assert_eq!(std::mem::size_of::<L2Encap>(), 12);
        assert_eq!(std::mem::size_of::<FlowKey4>(), 32);
        assert_eq!(std::mem::size_of::<FlowKey6>(), 56);
        assert_eq!(std::mem::size_of::<NextHop>(), 32);
        assert_eq!(std::mem::size_of::<Flow4>(), 112);
        assert_eq!(std::mem::size_of::<Flow6>(), 160);
        assert_eq!(std::mem::size_of::<Control>(), 72);
        assert_eq!(std::mem::size_of::<super::Bucket>(), 64);
        // The shared prefix of both entry layouts (bpfqos_abi.h).
        assert_eq!(std::mem::offset_of!(Flow4, nat), 64);
        assert_eq!(std::mem::offset_of!(Flow6, nat), 64);
        assert_eq!(
            std::mem::offset_of!(Flow4, cnt),
            std::mem::offset_of!(Flow6, cnt)
        );
        assert_eq!(
            std::mem::offset_of!(Flow4, flags),
            std::mem::offset_of!(Flow6, flags)
        );
        assert_eq!(super::ENTRY_BPF_WRITTEN, 36..64);
        assert_eq!(std::mem::size_of::<Event>(), 96);
    }

    #[test]
    fn csum_delta_matches_rfc1624_example() {
        // Identity rewrite: no change.
        assert_eq!(csum_delta(&[1, 2, 3, 4], &[1, 2, 3, 4]), 0);
        // 0x0001 -> 0x0002 adds one.
        assert_eq!(u16::from_be(csum_delta(&[0, 1], &[0, 2])), 1);
    }

    #[test]
    fn control_value_layout() {
        let mut seed = [0u32; super::HASH_SEEDS];
        seed[13] = 0xdead_beef;
        let v = control_value(0x0102_0304_0506_0708, true, false, 3, &seed);
        assert_eq!(v.len(), 72);
        assert_eq!(&v[0..8], &0x0102_0304_0506_0708u64.to_ne_bytes());
        assert_eq!(&v[8..12], &1u32.to_ne_bytes());
        assert_eq!(&v[12..16], &3u32.to_ne_bytes());
        let v = control_value(0, false, true, 0, &seed);
        assert_eq!(&v[8..12], &super::CTL_F_RTT.to_ne_bytes());
        assert_eq!(&v[68..72], &0xdead_beefu32.to_ne_bytes());
    }
}

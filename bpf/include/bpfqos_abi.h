/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The one definition of every structure shared between the BPF data path and
 * the Rust control plane. libbpf-cargo turns the BTF of these types into the
 * Rust `types` module of the skeleton (re-exported by src/dataplane/abi.rs), so
 * there is no second, hand-kept copy; tests/bpf_objects.rs checks sizes and field
 * offsets in the object's BTF against the Rust view.
 *
 * Rules for this file:
 *  - fixed-width types only, every padding byte spelled out (hash keys are
 *    compared bytewise, so padding must be zero and visible to user space);
 *  - byte order: anything copied from or to the wire (addresses, ports, VLAN
 *    TPID/TCI, PPPoE session id, checksum deltas) is in network byte order;
 *    everything else (ifindex, MTU, counters, flags, enums) in host order.
 */
#ifndef BPFQOS_ABI_H
#define BPFQOS_ABI_H

#include <linux/types.h>

/* DSA tagging protocols understood by the parser (per attach point). */
enum bpfqos_dsa_proto {
	BPFQOS_DSA_NONE = 0,
	BPFQOS_DSA_MTK = 1,   /* 4 bytes after the source MAC */
	BPFQOS_DSA_QCA = 2,   /* 2 bytes after the source MAC */
	BPFQOS_DSA_GSWIP = 3, /* RX: 8 bytes before the MACs, TX: 4 bytes */
};

/* Per-attach-point configuration: `ifaces` array, indexed by ifindex. */
struct bpfqos_iface {
	__u8 dsa_proto; /* enum bpfqos_dsa_proto of this device's tagger */
	__u8 rtt_slot;	/* passive RTT: the config interface's slot, 0: none */
	__u8 pad[2];
	__u32 flags; /* enum bpfqos_iface_flags */
};

enum bpfqos_iface_flags {
	/* XDP runs here: the TC twin does not look at arrivals again. */
	BPFQOS_IFACE_F_XDP = 1 << 0,
	/* Faces the Internet: RTTs timed here are WAN-side RTTs. */
	BPFQOS_IFACE_F_WAN = 1 << 1,
	/* CPU steering: frames XDP hands to the kernel here go to the CPU their
	 * flow hashes to (cpu_map), see steer.h. */
	BPFQOS_IFACE_F_STEER = 1 << 2,
	/* Steering: a frame whose hash picks the CPU that received it is passed
	 * in place. Only where receive runs on one fixed CPU (a NIC's interrupt):
	 * on a device whose receive moves between CPUs (veth: the sender's CPU)
	 * that shortcut would overtake the flow's frames still queued. */
	BPFQOS_IFACE_F_STEER_HERE = 1 << 3,
};

/*
 * L2 encapsulation between the Ethernet header and IP. In a flow key it is
 * what the packet arrived with; in a next hop what to put on the way out.
 * vlan_proto[i] == 0 means "no tag at this level"; [0] is the outer tag.
 * In keys only the VID bits of the TCI are used (PCP/DEI are masked off by
 * the parser); on egress the TCI is written as given.
 */
struct bpfqos_l2 {
	__be16 vlan_proto[2]; /* ETH_P_8021Q or ETH_P_8021AD, network order */
	__be16 vlan_tci[2];   /* network order */
	__be16 pppoe_sid;     /* network order, valid if pppoe != 0 */
	__u8 pppoe;	      /* 1: PPPoE session header present */
	__u8 dsa_port;	      /* switch port of the DSA tag (0 without DSA) */
};

struct bpfqos_flow4_key {
	__u32 ifindex; /* ingress device (the one the program is attached to) */
	struct bpfqos_l2 l2;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad[3];
};

struct bpfqos_flow6_key {
	__u32 ifindex;
	struct bpfqos_l2 l2;
	__be32 saddr[4];
	__be32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* What to do with a matching packet. */
enum bpfqos_action {
	BPFQOS_ACT_PASS = 0,	/* entry not ready: hand to the kernel */
	BPFQOS_ACT_FORWARD = 1, /* forward from XDP or TC */
	/*
	 * Upload through a shaper: XDP passes, the TC twin rewrites and
	 * redirects to nh.ifindex, the shaped interface's L3 device (an
	 * Ethernet-type device: a plain Ethernet header is written; it adds
	 * its own encapsulation), whose root qdisc shapes.
	 */
	BPFQOS_ACT_FORWARD_TC = 2,
	/*
	 * The same for an L3 device without L2 header (PPP): the TC twin
	 * rewrites IP only and redirects; the kernel strips the L2 header.
	 * nh.l2_len is not used (but must be non-zero: ready).
	 */
	BPFQOS_ACT_FORWARD_L3 = 3,
	/*
	 * Download through a shaper: XDP rewrites the frame for nh.ifindex and
	 * passes it with struct bpfqos_xdp_meta; the TC twin on the same device
	 * sends it into the shaper (entry's `shaper`), whose far end sends it
	 * out of nh.ifindex (skb->tc_index carries it across). Without XDP,
	 * the TC twin does the rewrite itself where it can.
	 */
	BPFQOS_ACT_FORWARD_SHAPED = 4,
};

/* XDP metadata in front of a frame XDP rewrote for a download shaper. */
enum bpfqos_meta_magic {
	BPFQOS_META_MAGIC = 0x5b9f05a9,
};

struct bpfqos_xdp_meta {
	__u32 magic;   /* BPFQOS_META_MAGIC */
	__u16 shaper;  /* ifindex of the shaper's first end */
	__u16 target;  /* ifindex the frame leaves by after the shaper */
	__u32 circuit; /* the flow's circuit id, 0: none */
};

struct bpfqos_nexthop {
	__u32 ifindex; /* lowest egress device; key of `tx_ports` for XDP */
	__u8 h_dest[6];
	__u8 h_source[6];
	struct bpfqos_l2 l2; /* encapsulation to push */
	__u16 mtu; /* max IP packet length (the L3 device's MTU, e.g. 1492) */
	__u8 dsa_proto; /* egress conduit's tagger, enum bpfqos_dsa_proto */
	/*
	 * Bytes of L2 header the data path writes in front of the IP header
	 * for this next hop (Ethernet, DSA TX tag, VLANs, PPPoE), computed by
	 * user space like the checksum deltas. 0: entry not ready (an entry
	 * written by a daemon that predates the field).
	 */
	__u8 l2_len;
};

/*
 * Checksum deltas are 16-bit one's-complement sums, stored like a checksum
 * field (network order): for every 16-bit word that NAT changes,
 * delta += ~old + new, with end-around carry, folded to 16 bits.
 * addr_csum covers the address words (IPv4 header checksum and the TCP/UDP
 * pseudo-header), port_csum the port words (TCP/UDP only). Zero if no NAT.
 */
struct bpfqos_nat4 {
	__be32 saddr; /* rewritten source (equal to the key's if no SNAT) */
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u16 addr_csum;
	__u16 port_csum;
};

struct bpfqos_nat6 {
	__be32 saddr[4];
	__be32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u16 addr_csum;
	__u16 port_csum;
};

/* Written by the data path; the daemon reads, and keeps them on updates. */
struct bpfqos_counters {
	__u64 packets;	    /* atomic adds: exact across CPUs */
	__u64 bytes;	    /* IP packet bytes (like conntrack), atomic adds */
	__u64 last_seen_ns; /* coarse CLOCK_MONOTONIC of the last forwarded packet */
};

/* Flow flags set by the data path. */
enum bpfqos_flow_flags {
	BPFQOS_FLOW_F_TEARDOWN = 1
				 << 0, /* FIN or RST seen: tear the flow down */
};

/*
 * A flow-table entry (`flows4` / `flows6` arrays, indexed by entry number).
 * Both families share the first 64 bytes (next hop, action, flags,
 * counters) at the same offsets, so the data path handles either through one
 * pointer; the NAT rewrite follows, and the key comes last: a lookup finds a
 * candidate through the hash index (`buckets4` / `buckets6`, below) and then
 * compares the whole key. User space writes an entry only while no bucket
 * slot points at it; the data path writes only `flags` and `cnt`.
 */
struct bpfqos_flow4 {
	struct bpfqos_nexthop nh;
	__u8 action; /* enum bpfqos_action */
	__u8 pad;
	__u16 shaper; /* BPFQOS_ACT_FORWARD_SHAPED: the shaper's first end */
	__u32 flags;  /* BPFQOS_FLOW_F_*, set by BPF, cleared by user space */
	struct bpfqos_counters cnt;
	struct bpfqos_nat4 nat;
	struct bpfqos_flow4_key key;
};

struct bpfqos_flow6 {
	struct bpfqos_nexthop nh;
	__u8 action;
	__u8 pad;
	__u16 shaper;
	__u32 flags;
	struct bpfqos_counters cnt;
	struct bpfqos_nat6 nat;
	struct bpfqos_flow6_key key;
};

/*
 * The hash index of a flow table: BPFQOS_FLOW_BUCKETS buckets of
 * BPFQOS_BUCKET_SLOTS 32-bit slots (one 64-byte cache line each), in a
 * BPF_F_MMAPABLE array so that user space publishes a slot with one atomic
 * 32-bit store. A slot is 0 (empty) or `tag << 16 | entry index`.
 *
 * The hash of a key, computed the same way by BPF (flowtable.h, from header
 * fields in registers) and by user space (src/dataplane/flowtable.rs, from the
 * key's bytes):
 *   w[i]   = the key's i-th 32-bit word, as a native-endian load of its bytes
 *            (8 words for IPv4, 14 for IPv6);
 *   h      = sum over pairs of (u64)(u32)(w[2i] + seed[2i])
 *                             * (u32)(w[2i+1] + seed[2i+1])   (mod 2^64, NH)
 *   m      = (h ^ h >> 32) * BPFQOS_HASH_MUL                 (mod 2^64)
 *   bucket = (m >> 32) & (BPFQOS_FLOW_BUCKETS - 1)
 *   tag    = (m >> 48) | 1                                   (never 0)
 * with the random seeds of `control` (chosen by the daemon when it creates
 * the tables, so that nobody can aim flows at one bucket). User space never
 * puts two slots with the same tag into one bucket, so the data path takes
 * the first slot whose tag matches and needs one key comparison per packet.
 *
 * Publication protocol (user space): write the entry, then store the slot
 * (release); readers reach the entry through the slot's index, an address
 * dependency that orders their loads on every architecture. An entry whose
 * slot was cleared or repointed is only written again after an RCU grace
 * period (an ARRAY_OF_MAPS update waits for every running BPF program), so
 * no packet ever sees a half-written entry.
 */
enum bpfqos_sizes {
	BPFQOS_FLOW_BUCKETS = 8192,
	BPFQOS_BUCKET_SLOTS = 16,
	/*
	 * Entries per family at most (indexes fit 16 bits). The daemon sizes
	 * the entry arrays below this at load, from nf_conntrack_max (two
	 * entries per connection); the bucket index keeps its size (512 KiB
	 * per family), so that the hash mask stays a constant.
	 */
	BPFQOS_MAX_FLOWS = 65536,
	BPFQOS_HASH_SEEDS = 14, /* one per 32-bit word of the IPv6 key */
	BPFQOS_MAX_IFACES =
		4096, /* `ifaces` entries: the largest ifindex + 1 */
	BPFQOS_MAX_TX_PORTS = 256, /* `tx_ports` entries */
	BPFQOS_MAX_CPUS = 256,	   /* `cpu_map`, `steer_cpus`, `steer_stats` */
	BPFQOS_PPP_HELD = 256,	   /* `ppp_held` slots (a power of two) */
};

/* The hash's odd 64-bit multiplier, in two halves (enums are 32-bit). */
enum bpfqos_hash_mul {
	BPFQOS_HASH_MUL_HI = 0x9E3779B9,
	BPFQOS_HASH_MUL_LO = 0x7F4A7C15,
};
#define BPFQOS_HASH_MUL                                                        \
	(((__u64)BPFQOS_HASH_MUL_HI << 32) | (__u64)BPFQOS_HASH_MUL_LO)

struct bpfqos_bucket {
	__u32 slot[BPFQOS_BUCKET_SLOTS];
};

/* The daemon's side of the contract: `control` array, one entry. */
enum bpfqos_ctl_flags {
	BPFQOS_CTL_F_OFFLOAD = 1 << 0, /* offload enabled */
	BPFQOS_CTL_F_RTT = 1 << 1,     /* passive RTT enabled */
};

/* A heartbeat older than this means the daemon is gone: pass everything. */
enum bpfqos_heartbeat {
	BPFQOS_HEARTBEAT_MAX_AGE_MS = 3000,
};
#define BPFQOS_HEARTBEAT_MAX_AGE_NS                                            \
	((__u64)BPFQOS_HEARTBEAT_MAX_AGE_MS * 1000000)

struct bpfqos_control {
	__u64 heartbeat_ns; /* CLOCK_MONOTONIC (= bpf_ktime_get_ns) */
	__u32 flags;	    /* BPFQOS_CTL_F_* */
	__u32 steer_cpus;   /* CPU steering: entries of `steer_cpus` in use */
	__u32 seed[BPFQOS_HASH_SEEDS]; /* flow-table hash seeds, never change */
};

/*
 * CPU steering counters (`steer_stats`, per CPU, indexed by the CPU a frame
 * was steered to; user space sums the per-CPU copies).
 */
struct bpfqos_steer_stat {
	__u64 steered; /* sent there through cpu_map (counted where received) */
	__u64 kept;    /* its hash chose the receiving CPU: passed in place */
	__u64 delivered; /* arrived there through cpu_map (the cpumap program) */
};

/* Ring-buffer events (`events`). */
enum bpfqos_event_type {
	BPFQOS_EV_TEARDOWN4 = 1, /* FIN/RST on an offloaded IPv4 flow */
	BPFQOS_EV_TEARDOWN6 = 2,
};

struct bpfqos_event {
	__u32 type;	/* enum bpfqos_event_type */
	__u8 tcp_flags; /* the TCP flags byte that triggered it */
	__u8 pad[3];
	struct bpfqos_flow4_key k4; /* valid for BPFQOS_EV_TEARDOWN4 */
	struct bpfqos_flow6_key k6; /* valid for BPFQOS_EV_TEARDOWN6 */
};

/*
 * The download shaper: a veth pair per shaped interface. Packets arriving on
 * the interface's L3 device (TC ingress, before conntrack and routing) are
 * sent into the pair's first end, whose root qdisc shapes them; from the
 * other end they are put back into the L3 device's ingress, marked as shaped,
 * and go on as if just received. `shaping` is indexed by ifindex: for the L3
 * device it names the shaper's first end, for the second end the L3 device.
 */
enum bpfqos_shape_flags {
	BPFQOS_SHAPE_F_TO_SHAPER = 1 << 0, /* L3 ingress: into the shaper */
	BPFQOS_SHAPE_F_RETURN = 1 << 1,	   /* shaper's far end: back */
	BPFQOS_SHAPE_F_ADD_ETH = 1 << 2,   /* L3 device without L2 (PPP) */
	/*
	 * Per-circuit classes (see "Circuits" below). On a shaped L3 device:
	 * CIRCUITS_DOWN classifies what bpfqos_dl_steer sends into the shaper,
	 * CIRCUITS_UP what leaves the device (bpfqos_up_classify, TC egress),
	 * whose packets start at IP when UP_NO_L2 is set (PPP). On a download
	 * shaper's first end, CIRCUITS_DOWN classifies offloaded frames sent
	 * into it.
	 */
	BPFQOS_SHAPE_F_CIRCUITS_DOWN = 1 << 3,
	BPFQOS_SHAPE_F_CIRCUITS_UP = 1 << 4,
	BPFQOS_SHAPE_F_UP_NO_L2 = 1 << 5,
};

struct bpfqos_shaping {
	__u32 target; /* ifindex to redirect to */
	__u32 flags;  /* BPFQOS_SHAPE_F_* */
};

/*
 * skb->tc_index across the download shaper (the veth pair keeps it): SHAPED
 * for a kernel-path packet going back into the L3 device's ingress;
 * OFFLOADED | ifindex for an offloaded frame to send out of that device.
 */
enum bpfqos_tc_index {
	BPFQOS_TC_INDEX_SHAPED = 0x8000,
	BPFQOS_TC_INDEX_OFFLOADED = 0x4000,
	BPFQOS_TC_INDEX_TARGET = 0x0fff, /* ifindex < BPFQOS_MAX_IFACES */
};

/*
 * Circuits: hosts and prefixes with their own rate limit, an HTB class per
 * circuit under each shaper's link class (handle MAJOR:MINOR_BASE+id). The
 * data path finds a packet's circuit and sets skb->priority to that class,
 * which HTB takes as the classification (a class that does not exist falls
 * back to the default class). The circuit is the one of the LAN-side host:
 *  - by longest-prefix match of its address (`circuits4` / `circuits6`);
 *  - behind NAT, where the packet on the WAN side carries the router's
 *    address, through `circuit_nat`: the WAN-side tuple of every connection
 *    of a circuit's host, fed by the daemon from conntrack (its original
 *    tuple names the host before NAT); both directions use one key.
 */
enum bpfqos_circuit_limits {
	BPFQOS_SHAPER_MAJOR = 0xb9f,	   /* handle major of bpfqos' shapers */
	BPFQOS_CIRCUIT_MINOR_BASE = 0x100, /* class minor = base + circuit id */
	BPFQOS_MAX_CIRCUITS = 16384,	   /* ids 1..=MAX */
	BPFQOS_MAX_CIRCUIT_PREFIXES = 65536, /* per family */
	BPFQOS_MAX_CIRCUIT_NAT = 65536,	     /* `circuit_nat` entries */
};

struct bpfqos_lpm4_key {
	__u32 prefixlen;
	__be32 addr;
};

struct bpfqos_lpm6_key {
	__u32 prefixlen;
	__be32 addr[4];
};

/* A connection on the WAN side, as the router's end sees it. */
struct bpfqos_nat_key {
	__be32 local[4]; /* the router's WAN-side address (IPv4: [0], rest 0) */
	__be32 remote[4]; /* the far end's */
	__be16 local_port;
	__be16 remote_port;
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 ipv6;  /* 0 or 1 */
	__u8 pad[2];
};

/* Per-CPU counters, `stats` array index. */
enum bpfqos_stat {
	BPFQOS_STAT_SEEN = 0, /* unused: user space sums the outcomes below */
	BPFQOS_STAT_PASS_DISABLED,  /* offload off or heartbeat stale */
	BPFQOS_STAT_PASS_PARSE,	    /* not understood / malformed / truncated */
	BPFQOS_STAT_PASS_NO_FLOW,   /* parsed, no flow entry */
	BPFQOS_STAT_PASS_NOT_READY, /* entry present but not for this hook */
	BPFQOS_STAT_PASS_TTL,	    /* TTL / hop limit <= 1 */
	BPFQOS_STAT_PASS_MTU,	    /* too big for the egress MTU */
	BPFQOS_STAT_PASS_TCP_END,   /* FIN or RST: teardown requested */
	BPFQOS_STAT_PASS_CSUM,	    /* IPv6 UDP with zero checksum */
	BPFQOS_STAT_PASS_NO_TXPORT, /* egress not in tx_ports */
	BPFQOS_STAT_PASS_L2,	    /* could not resize the L2 header */
	BPFQOS_STAT_REDIRECT,	    /* forwarded to another device */
	BPFQOS_STAT_TX,	       /* XDP_TX: out of the device it came in on */
	BPFQOS_STAT_TO_SHAPER, /* forwarded into a shaper */
	BPFQOS_STAT_MAX,
};

/* Per-CPU counters of the shaper's steering, `shape_stats` array index. */
enum bpfqos_shape_stat {
	BPFQOS_SHAPE_STAT_STEERED = 0, /* sent into a download shaper */
	BPFQOS_SHAPE_STAT_RETURNED,    /* put back after it */
	BPFQOS_SHAPE_STAT_PASSED, /* not steered: heartbeat stale, no room */
	BPFQOS_SHAPE_STAT_CIRCUIT_UP,	/* upload packets put into a circuit */
	BPFQOS_SHAPE_STAT_CIRCUIT_DOWN, /* download packets put into a circuit */
	BPFQOS_SHAPE_STAT_MAX,
};

/*
 * Passive RTT (bpf/include/rtt.h). State per flow *half*: one direction of a
 * TCP connection as it leaves the router, keyed by the addresses and ports
 * its packets carry on that wire (after NAT), so that the answers, which
 * arrive on the same wire, find it by their reversed tuple whatever NAT did
 * in between; each direction arrives on one side only, so the tuple alone
 * tells the halves apart.
 *
 * The halves live in two-way set-associative arrays (`rtt4`, `rtt6`, slots
 * of key + state): a key may sit in slot b or b + 1, b the even index
 *   h = seed[0]; for each 32-bit word w of the key (native-endian loads of
 *   its bytes: 3 for IPv4, 9 for IPv6): h = (h ^ w) * BPFQOS_RTT_HASH_MUL;
 *   h ^= h >> 16; b = (h & (BPFQOS_RTT_FLOWS / 2 - 1)) * 2
 * (seed: the flow tables' first seed word, in `control`). Array lookups are
 * inlined by the verifier: no hash-map helper call per packet. A new half
 * takes a free slot of its pair or one idle for BPFQOS_RTT_IDLE_S; with both
 * busy it is not made (fewer samples). A slot is free when its state lacks
 * BPFQOS_RTT_F_USED; user space frees one by zeroing it.
 */
struct bpfqos_rtt4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
};

struct bpfqos_rtt6_key {
	__be32 saddr[4];
	__be32 daddr[4];
	__be16 sport;
	__be16 dport;
};

enum bpfqos_rtt_consts {
	BPFQOS_RTT_FLOWS = 16384, /* slots per family (two per bucket) */
	BPFQOS_RTT_HASH_MUL = 0x9E3779B1,
	BPFQOS_RTT_IDLE_S = 3, /* in `seen` units (~1.07 s): a slot to reuse */
	BPFQOS_RTT_SLOTS = 64, /* interface slots, 1..63 used */
	BPFQOS_RTT_SUB_BITS = 3,  /* 8 buckets per octave (~9 % wide) */
	BPFQOS_RTT_BUCKETS = 160, /* 0..15 µs exact, then up to ~4.2 s */
	BPFQOS_RTT_CIRCUIT_HISTS = 4096, /* (circuit, side) histograms */
	BPFQOS_RTT_PROBE_MAX_MS = 4000,	 /* an unanswered probe is dropped */
};

enum bpfqos_rtt_flags {
	BPFQOS_RTT_F_WAN = 1 << 0,	 /* timed on a WAN-facing device */
	BPFQOS_RTT_F_PROBE_TS = 1 << 1,	 /* the probe waits for a TSecr */
	BPFQOS_RTT_F_KARN = 1 << 2,	 /* its range was sent again */
	BPFQOS_RTT_F_SEQ_VALID = 1 << 3, /* max_seq holds a value */
	BPFQOS_RTT_F_TS_VALID = 1 << 4,	 /* last_tsval holds a value */
	BPFQOS_RTT_F_USED = 1 << 5,	 /* the slot holds a half */
};

/*
 * Written by the data path only (user space reads, and deletes stale ones).
 * Samples are in microseconds; clocks are CLOCK_MONOTONIC, shifted (no
 * 64-bit division on 32-bit JITs) and truncated to 32 bits.
 */
struct bpfqos_rtt_state {
	__u32 t_sent;	  /* probe sent: CLOCK_MONOTONIC ns >> 10, 0: none */
	__u32 tsval;	  /* probe: TSval to be echoed */
	__u32 seq_end;	  /* probe: sequence end to be acknowledged */
	__u32 last_tsval; /* newest TSval seen leaving */
	__u32 max_seq;	  /* highest sequence end seen leaving */
	__u32 last_us;	  /* newest sample */
	__u32 min_us;	  /* smallest sample */
	__u32 srtt8_us;	  /* smoothed (RFC 6298 alpha 1/8), times 8 */
	__u32 samples;
	__u32 retrans; /* data packets sent again (sequence going back) */
	__u32 packets; /* data packets seen leaving */
	__u32 seen;    /* coarse CLOCK_MONOTONIC >> 30 (~1.07 s) of the last */
	__u32 circuit; /* circuit of the LAN host, 0: none */
	__u32 ifindex; /* device it leaves by */
	/*
	 * The path's delay without queues, for autorate's excess delay: the
	 * smallest sample, creeping up by 1/2048 of each larger one (a path
	 * that got longer is followed within a few thousand samples; a
	 * queue of seconds moves it by a few percent).
	 */
	__u32 base_us;
	__u8 slot_out; /* rtt_slot of the interface it leaves by (0: none) */
	__u8 slot_in;  /* rtt_slot of the interface it came in by */
	__u16 flags;   /* enum bpfqos_rtt_flags */
};

/* A slot of `rtt4` / `rtt6`. */
struct bpfqos_rtt4_slot {
	struct bpfqos_rtt4_key key;
	struct bpfqos_rtt_state s;
};

struct bpfqos_rtt6_slot {
	struct bpfqos_rtt6_key key;
	struct bpfqos_rtt_state s;
};

/* Per-CPU event counters of the RTT code (`rtt_stats`). */
enum bpfqos_rtt_stat {
	BPFQOS_RTT_STAT_SAMPLES = 0, /* RTT samples taken */
	BPFQOS_RTT_STAT_PROBES,	     /* probes started */
	BPFQOS_RTT_STAT_DISCARDED,   /* probes dropped: Karn, later echo */
	BPFQOS_RTT_STAT_EXPIRED,     /* probes never answered */
	BPFQOS_RTT_STAT_HALVES,	     /* flow halves created */
	BPFQOS_RTT_STAT_NO_ROOM,     /* a half or histogram not created */
	BPFQOS_RTT_STAT_MAX,
};

/* Log-scale histogram of samples (see rtt_hist_bucket() in rtt.h). */
struct bpfqos_rtt_hist {
	__u32 bucket[BPFQOS_RTT_BUCKETS];
};

/*
 * Never used by the programs: a global of this type puts every enum above
 * into the BTF of each object that includes this header, from which
 * libbpf-cargo generates the Rust constants (src/dataplane/abi.rs). Rust reads
 * no #define: whatever user space needs is here, in an enum.
 */
struct bpfqos_btf_anchor {
	struct bpfqos_event event;
	enum bpfqos_dsa_proto dsa_proto;
	enum bpfqos_action action;
	enum bpfqos_event_type event_type;
	enum bpfqos_stat stat;
	enum bpfqos_sizes sizes;
	enum bpfqos_hash_mul hash_mul;
	enum bpfqos_flow_flags flow_flags;
	enum bpfqos_ctl_flags ctl_flags;
	enum bpfqos_heartbeat heartbeat;
	struct bpfqos_shaping shaping;
	enum bpfqos_shape_flags shape_flags;
	enum bpfqos_tc_index tc_index;
	enum bpfqos_shape_stat shape_stat;
	enum bpfqos_meta_magic meta_magic;
	struct bpfqos_xdp_meta xdp_meta;
	enum bpfqos_circuit_limits circuit_limits;
	struct bpfqos_lpm4_key lpm4_key;
	struct bpfqos_lpm6_key lpm6_key;
	struct bpfqos_nat_key nat_key;
	enum bpfqos_iface_flags iface_flags;
	struct bpfqos_steer_stat steer_stat;
	struct bpfqos_rtt4_key rtt4_key;
	struct bpfqos_rtt6_key rtt6_key;
	enum bpfqos_rtt_consts rtt_consts;
	enum bpfqos_rtt_flags rtt_flags;
	enum bpfqos_rtt_stat rtt_stat;
	struct bpfqos_rtt_state rtt_state;
	struct bpfqos_rtt_hist rtt_hist;
	struct bpfqos_rtt4_slot rtt4_slot;
	struct bpfqos_rtt6_slot rtt6_slot;
};

/*
 * Layout guards: the Rust side asserts the same numbers (dataplane::abi tests),
 * and both are checked against the BTF of the built object.
 */
_Static_assert(sizeof(struct bpfqos_l2) == 12, "bpfqos_l2 layout");
_Static_assert(sizeof(struct bpfqos_flow4_key) == 32, "flow4 key layout");
_Static_assert(sizeof(struct bpfqos_flow6_key) == 56, "flow6 key layout");
_Static_assert(sizeof(struct bpfqos_nexthop) == 32, "nexthop layout");
_Static_assert(sizeof(struct bpfqos_flow4) == 112, "flow4 layout");
_Static_assert(sizeof(struct bpfqos_flow6) == 160, "flow6 layout");
_Static_assert(sizeof(struct bpfqos_bucket) == 64, "bucket layout");
_Static_assert(__builtin_offsetof(struct bpfqos_flow4, nat) == 64 &&
		       __builtin_offsetof(struct bpfqos_flow6, nat) == 64,
	       "both entry layouts share their first 64 bytes");
_Static_assert(sizeof(struct bpfqos_control) == 72, "control layout");
_Static_assert(sizeof(struct bpfqos_steer_stat) == 24, "steer stat layout");
_Static_assert(BPFQOS_MAX_FLOWS <= 65536, "entry indexes are 16 bits");
_Static_assert(sizeof(struct bpfqos_event) == 96, "event layout");
_Static_assert(sizeof(struct bpfqos_shaping) == 8, "shaping layout");
_Static_assert(sizeof(struct bpfqos_xdp_meta) == 12, "meta layout");
_Static_assert(sizeof(struct bpfqos_nat_key) == 40, "nat key layout");
_Static_assert(sizeof(struct bpfqos_lpm6_key) == 20, "lpm6 key layout");
_Static_assert(BPFQOS_CIRCUIT_MINOR_BASE + BPFQOS_MAX_CIRCUITS <= 0xffff,
	       "a circuit's class minor fits 16 bits");
_Static_assert(sizeof(struct bpfqos_rtt4_key) == 12, "rtt4 key layout");
_Static_assert(sizeof(struct bpfqos_rtt6_key) == 36, "rtt6 key layout");
_Static_assert(sizeof(struct bpfqos_rtt_state) == 64, "rtt state layout");
_Static_assert(sizeof(struct bpfqos_rtt4_slot) == 76 &&
		       sizeof(struct bpfqos_rtt6_slot) == 100,
	       "rtt slot layouts");
_Static_assert(BPFQOS_RTT_BUCKETS == (21 - BPFQOS_RTT_SUB_BITS + 2)
					     << BPFQOS_RTT_SUB_BITS,
	       "buckets reach 2^22 us");
_Static_assert(BPFQOS_MAX_IFACES - 1 <= BPFQOS_TC_INDEX_TARGET,
	       "an ifindex fits tc_index");

#endif /* BPFQOS_ABI_H */

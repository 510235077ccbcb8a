// SPDX-License-Identifier: GPL-2.0-only
/*
 * bpfqos flow offload: the XDP program and its TC-ingress twin, one source.
 *
 * A packet is forwarded here only when all of this holds; anything else goes
 * to the kernel byte-for-byte unchanged (XDP_PASS / TC_ACT_UNSPEC, see TC_PASS):
 *  - offload is enabled and the daemon's heartbeat is younger than 3 s;
 *  - the shared parser understands every header (parse.h);
 *  - a flow entry matches {ingress ifindex, L2 encap, 5-tuple} and is ready
 *    for this hook;
 *  - not a TCP FIN/RST (those mark the flow for teardown), TTL / hop limit
 *    > 1, IP length within the egress MTU, IPv6 UDP checksum non-zero;
 *  - the egress is reachable (XDP: in tx_ports, or the ingress device itself);
 *    XDP resolves the redirect first, before any write;
 *  - the L2 header can be resized (TC: only growth, see tc_forward()).
 * Then: L2 header rebuilt from the next hop (MACs, DSA TX tag, 0-2 VLAN,
 * PPPoE), TTL/hop limit decremented, NAT applied with incremental checksums,
 * counters updated, and the frame redirected (XDP_TX if egress == ingress).
 *
 * No loops; every helper that can fail is called before the first write, so
 * a failure still leaves the frame untouched.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "bpfqos_abi.h"
#include "flowtable.h"
#include "parse.h"
#include "rtt.h"
#include "steer.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bpfqos_control);
} control SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BPFQOS_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BPFQOS_MAX_IFACES);
	__type(key, __u32);
	__type(value, struct bpfqos_iface);
} ifaces SEC(".maps");

/*
 * Never read by the programs. Updating `grace` from user space returns only
 * after every BPF program that was running has finished (the kernel waits
 * for an RCU grace period on map-in-map updates, 4.20+): the daemon's way to
 * know that no packet still uses a flow entry it unlinked.
 */
struct grace_inner_map {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} grace_inner SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct grace_inner_map);
} grace SEC(".maps");

/* Keyed and valued by egress ifindex. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, BPFQOS_MAX_TX_PORTS);
	__type(key, __u32);
	__type(value, __u32);
} tx_ports SEC(".maps");

/*
 * Per-CPU cache of the coarse clock, valid for one jiffy (see coarse_now()).
 * Private to the data path: user space never reads it.
 */
struct clock_cache {
	__u64 jiffies;
	__u64 ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct clock_cache);
} clock SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps");

/* Puts the ABI enums into this object's BTF (see bpfqos_abi.h). */
struct bpfqos_btf_anchor bpfqos_btf_anchor = {};

enum hook { HOOK_XDP, HOOK_TC };

/*
 * What a TC program of ours returns for a packet it leaves alone: "not mine,
 * go on", so that later filters on the same hook still run (other users' and
 * our own: the download steering sits behind the offload's twin). TC_ACT_OK
 * would end the chain there.
 */
#define TC_PASS TC_ACT_UNSPEC

_Static_assert(BPFQOS_MAX_L2 < 64, "wan_circuit() masks the L3 offset to 63");

/* The fragment offset bits of iphdr.frag_off (host order). */
#define IP_OFFSET_MASK 0x1fff

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	if (v)
		*v += 1; /* per-CPU slot: no atomic needed */
}

/* Array lookups are inlined by the verifier: cheap on every packet. */
static __always_inline struct bpfqos_iface *iface_cfg(__u32 ifindex)
{
	return bpf_map_lookup_elem(&ifaces, &ifindex);
}

/*
 * bpf_ktime_get_coarse_ns(), at a fraction of the cost. The coarse clock only
 * moves on a timer tick, when jiffies moves too, so its value is cached per
 * CPU for as long as jiffies is unchanged. bpf_jiffies64() is inlined by the
 * verifier on 64-bit JITs (a load), and so is the per-CPU array lookup,
 * whereas the clock is a helper call: measured 25-30 ns per packet here
 * (bench/bpf_offload.rs). On 32-bit JITs bpf_jiffies64() stays a (cheap)
 * helper call. A value may lag the coarse clock by at most the
 * tick in which timekeeping and jiffies are updated, which the heartbeat
 * check tolerates anyway.
 */
static __always_inline __u64 coarse_now(void)
{
	__u32 zero = 0;
	struct clock_cache *c = bpf_map_lookup_elem(&clock, &zero);
	__u64 j = bpf_jiffies64();

	if (!c)
		return bpf_ktime_get_coarse_ns();
	if (c->jiffies != j || !c->ns) {
		c->ns = bpf_ktime_get_coarse_ns();
		c->jiffies = j;
	}
	return c->ns;
}

/* ---- checksums (RFC 1071 / RFC 1624) ------------------------------------ */

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* HC' = ~(~HC + delta), RFC 1624 eqn. 3; delta as stored in the flow entry. */
static __always_inline __u16 csum_apply(__u16 check, __u16 delta)
{
	return ~csum_fold((__u32)(__u16)~check + delta);
}

/* Same arithmetic as the kernel's ip_decrease_ttl(), so results are equal. */
static __always_inline void ipv4_decrease_ttl(struct iphdr *iph)
{
	__u32 check = iph->check;

	check += bpf_htons(0x0100);
	iph->check = (__u16)(check + (check >= 0xffff));
	iph->ttl--;
}

/* ---- the flow entry, for both families ---------------------------------- */

/*
 * An entry of either family, through the first 64 bytes both layouts share
 * (next hop, action, flags, counters): one pointer for the whole fast path.
 * Only the NAT rewrite and the key differ, reached through flow6() for IPv6.
 */
struct flow_ref {
	struct bpfqos_flow4 *e;
};

static __always_inline struct bpfqos_flow6 *flow6(struct flow_ref *f)
{
	return (struct bpfqos_flow6 *)f->e;
}

/* FIN/RST on an offloaded flow: flag it and tell user space (once). */
static __always_inline void request_teardown(struct flow_ref *f,
					     const struct pkt *p)
{
	struct bpfqos_event *ev;

	if (f->e->flags & BPFQOS_FLOW_F_TEARDOWN)
		return;
	/* Plain RMW: user space only clears the bit, a lost race re-sets it. */
	f->e->flags |= BPFQOS_FLOW_F_TEARDOWN;
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev)
		return;
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->tcp_flags = p->tcp_flags;
	if (p->ipv6) {
		ev->type = BPFQOS_EV_TEARDOWN6;
		__builtin_memcpy(&ev->k6, &flow6(f)->key, sizeof(ev->k6));
	} else {
		ev->type = BPFQOS_EV_TEARDOWN4;
		__builtin_memcpy(&ev->k4, &f->e->key, sizeof(ev->k4));
	}
	bpf_ringbuf_submit(ev, 0);
}

/* Where a frame for the kernel should be processed (XDP only, steer.h). */
struct steer_ref {
	__u32 hash;    /* 0: where it arrived */
	__u32 n;       /* CPUs in steer_cpus */
	__u32 here_ok; /* BPFQOS_IFACE_F_STEER_HERE */
};

/*
 * Parse, look the flow up and apply every "hand it to the kernel" rule.
 * Returns 0 with *f filled when the packet is to be forwarded; the packet
 * has not been touched either way. `st` (XDP only, else NULL) gets the CPU
 * steering hash of a frame that goes to the kernel, when this device steers.
 */
static __always_inline int classify(void *data, void *data_end, __u32 ifindex,
				    __be16 vlan0_tpid, __be16 vlan0_tci,
				    enum hook hook, __u32 gso_size,
				    struct pkt *p, struct flow_ref *f,
				    struct rtt_pkt *rp, struct steer_ref *st)
{
	struct pkt_hdrs h = {};
	struct bpfqos_control *ctl;
	struct bpfqos_iface *cfg = iface_cfg(ifindex);
	struct ft_l2w l2w;
	__u32 zero = 0, ports, protow;
	__u8 action;
	__u64 now;
	__s64 age;

	/* No "seen" counter: every outcome is counted, user space sums them. */
	ctl = bpf_map_lookup_elem(&control, &zero);
	if (!ctl ||
	    (!(ctl->flags & (BPFQOS_CTL_F_OFFLOAD | BPFQOS_CTL_F_RTT)) &&
	     (!st || !ctl->steer_cpus))) {
		stat_inc(BPFQOS_STAT_PASS_DISABLED);
		return -1;
	}
	if (parse_packet(data, data_end, cfg ? cfg->dsa_proto : BPFQOS_DSA_NONE,
			 vlan0_tpid, vlan0_tci, p, &h)) {
		if (st && cfg && (cfg->flags & BPFQOS_IFACE_F_STEER))
			ppp_hold(ifindex, p);
		goto not_parsed;
	}
	/* Whatever happens below, a frame for the kernel goes there. */
	if (st && cfg && (cfg->flags & BPFQOS_IFACE_F_STEER) &&
	    ctl->steer_cpus && !ppp_is_held(ifindex, p)) {
		st->hash = steer_hash(&h, ctl->seed[1]);
		st->n = ctl->steer_cpus;
		st->here_ok = cfg->flags & BPFQOS_IFACE_F_STEER_HERE;
	}

	if (ft_key_words(p, &h, &l2w, &ports, &protow))
		goto not_parsed; /* cannot happen: the parser found TCP or UDP */

	/*
	 * Passive RTT looks at every TCP packet arriving, forwarded here or
	 * not; the TC twin leaves that to XDP where XDP runs too. rp keeps
	 * the TCP fields for the departure if the packet is forwarded.
	 */
	if (h.th && (ctl->flags & BPFQOS_CTL_F_RTT) &&
	    !rtt_tcp_fields(h.th, data_end, p->ip_len, p->l4_off - p->l3_off,
			    &rp->t)) {
		if (h.iph)
			rtt_pkt_of(rp, &h.iph->saddr, &h.iph->daddr, 0, h.th,
				   ctl->seed[0]);
		else if (h.ip6h)
			rtt_pkt_of(rp, h.ip6h->saddr.in6_u.u6_addr32,
				   h.ip6h->daddr.in6_u.u6_addr32, 1, h.th,
				   ctl->seed[0]);
		if (hook == HOOK_XDP || !cfg ||
		    !(cfg->flags & BPFQOS_IFACE_F_XDP))
			bpfqos_rtt_arrival(rp);
	}
	if (!(ctl->flags & BPFQOS_CTL_F_OFFLOAD)) {
		stat_inc(BPFQOS_STAT_PASS_DISABLED);
		return -1;
	}

	if (!p->ipv6) {
		struct bpfqos_flow4 *v;

		if (!h.iph)
			goto not_parsed;
		v = ft_lookup4(ctl->seed, ifindex, &l2w, h.iph, ports, protow);
		if (!v)
			goto no_flow;
		f->e = v;
		if (h.iph->ttl <= 1)
			goto ttl;
	} else {
		struct bpfqos_flow6 *v;

		if (!h.ip6h)
			goto not_parsed;
		/* Zero is invalid for IPv6 UDP: the kernel decides. */
		if (h.uh && !h.uh->check) {
			stat_inc(BPFQOS_STAT_PASS_CSUM);
			return -1;
		}
		v = ft_lookup6(ctl->seed, ifindex, &l2w, h.ip6h, ports, protow);
		if (!v)
			goto no_flow;
		f->e = (struct bpfqos_flow4 *)v;
		if (h.ip6h->hop_limit <= 1)
			goto ttl;
	}

	action = f->e->action;
	if (action != BPFQOS_ACT_FORWARD &&
	    action != BPFQOS_ACT_FORWARD_SHAPED &&
	    !((action == BPFQOS_ACT_FORWARD_TC ||
	       action == BPFQOS_ACT_FORWARD_L3) &&
	      hook == HOOK_TC)) {
		stat_inc(BPFQOS_STAT_PASS_NOT_READY);
		return -1;
	}
	if (!f->e->nh.ifindex || !f->e->nh.mtu || !f->e->nh.l2_len) {
		stat_inc(BPFQOS_STAT_PASS_NOT_READY);
		return -1;
	}
	/*
	 * Only now pay for the clock: unmatched traffic never reads it. The
	 * coarse clock (jiffies resolution, 5.11+) is plenty for a 3 s
	 * heartbeat and last-seen, and much cheaper than a clocksource read;
	 * cached per CPU and jiffy, cheaper still.
	 */
	now = coarse_now();
	/* The coarse clock may lag a fresh CLOCK_MONOTONIC write by a tick. */
	age = (__s64)(now - ctl->heartbeat_ns);
	if (age > (__s64)BPFQOS_HEARTBEAT_MAX_AGE_NS ||
	    age < -(__s64)BPFQOS_HEARTBEAT_MAX_AGE_NS) {
		stat_inc(BPFQOS_STAT_PASS_DISABLED);
		return -1;
	}
	if (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)) {
		request_teardown(f, p);
		stat_inc(BPFQOS_STAT_PASS_TCP_END);
		return -1;
	}
	/*
	 * A GSO packet (TC, after GRO) is sent as segments of gso_size bytes of
	 * payload behind the same headers: those must fit.
	 */
	if ((gso_size ? (__u32)(p->l4_off - p->l3_off) +
				(h.th ? h.th->doff * 4 : sizeof(*h.uh)) +
				gso_size
		      : p->ip_len) > f->e->nh.mtu) {
		stat_inc(BPFQOS_STAT_PASS_MTU);
		return -1;
	}
	f->e->cnt.last_seen_ns = now;
	return 0;

not_parsed:
	stat_inc(BPFQOS_STAT_PASS_PARSE);
	return -1;
no_flow:
	stat_inc(BPFQOS_STAT_PASS_NO_FLOW);
	return -1;
ttl:
	stat_inc(BPFQOS_STAT_PASS_TTL);
	return -1;
}

/* Counters are shared by all CPUs: atomic adds (BPF_ATOMIC_ADD / XADD). */
static __always_inline void count(struct flow_ref *f, __u16 ip_len)
{
	__sync_fetch_and_add(&f->e->cnt.packets, 1);
	__sync_fetch_and_add(&f->e->cnt.bytes, ip_len);
}

/* ---- L2 rebuild ---------------------------------------------------------- */

typedef __u16 __attribute__((__may_alias__)) mac_u16;

/*
 * Both MACs in 16-bit words (a byte-wise memcpy is 24 instructions): h_dest
 * and h_source are adjacent and 4-aligned in the entry, and frames start
 * 2-aligned in XDP and skb buffers alike.
 */
static __always_inline void put_macs(__u8 *b, const struct bpfqos_nexthop *nh)
{
	const mac_u16 *src = (const mac_u16 *)nh->h_dest;
	mac_u16 *dst = (mac_u16 *)b;

	dst[0] = src[0];
	dst[1] = src[1];
	dst[2] = src[2];
	dst[3] = src[3];
	dst[4] = src[4];
	dst[5] = src[5];
}

static __always_inline int put16(struct cursor *c, __be16 v)
{
	__be16 *w = cursor_pull(c, sizeof(*w));

	if (!w)
		return -1;
	*w = v;
	return 0;
}

static __always_inline int put_vlan(struct cursor *c, __be16 tpid, __be16 tci)
{
	__be16 *w = cursor_pull(c, VLAN_HLEN);

	if (!w)
		return -1;
	w[0] = tpid;
	w[1] = tci;
	return 0;
}

/*
 * Writes the next hop's L2 header at the start of the frame, in the exact
 * transmit formats of the kernel's DSA taggers; returns 0 and leaves the
 * cursor at the IP header. It is nh->l2_len bytes long: user space computes
 * that length (abi::l2_header_len), so the data path does not branch over
 * the encapsulation twice; the tests check both against an independent
 * frame builder for every egress encapsulation.
 */
static __always_inline int write_l2(struct cursor *c,
				    const struct bpfqos_nexthop *nh,
				    __u16 ip_len, int ipv6)
{
	const struct bpfqos_l2 *l2 = &nh->l2;
	__u8 port_bit = 1 << (nh->l2.dsa_port & 7);
	int vlan_done = 0;
	__u8 *b;

	/* The common case, plain Ethernet out: 14 bytes, no branches below. */
	if (!nh->dsa_proto && !l2->vlan_proto[0] && !l2->pppoe) {
		b = cursor_pull(c, ETH_HLEN);
		if (!b)
			return -1;
		put_macs(b, nh);
		((mac_u16 *)b)[6] = bpf_htons(ipv6 ? ETH_P_IPV6 : ETH_P_IP);
		return 0;
	}
	if (nh->dsa_proto == BPFQOS_DSA_GSWIP) {
		/* tag_gswip.c xmit: 4 bytes in front of the destination MAC. */
		b = cursor_pull(c, DSA_GSWIP_TX_LEN);
		if (!b)
			return -1;
		b[0] = 2;	    /* GSWIP_TX_SLPID_CPU */
		b[1] = 0;	    /* GSWIP_TX_DPID_ELAN */
		b[2] = 0x80 | 0x40; /* PORT_MAP_EN | PORT_MAP_SEL */
		/* BIT(port + 1) & PORT_MAP_MASK(6:1), | DPID_EN */
		b[3] = ((1 << ((nh->l2.dsa_port & 7) + 1)) & 0x7e) | 0x01;
	}
	b = cursor_pull(c, 2 * ETH_ALEN);
	if (!b)
		return -1;
	put_macs(b, nh);

	if (nh->dsa_proto == BPFQOS_DSA_MTK) {
		/*
		 * tag_mtk.c xmit: 4 bytes after the source MAC. A tagged frame
		 * has the tag combined with its outer VLAN header: the TPID is
		 * replaced by {1: 802.1Q | 2: 802.1ad, port bit}, the TCI stays.
		 */
		b = cursor_pull(c, DSA_MTK_LEN);
		if (!b)
			return -1;
		b[1] = port_bit & 0x3f;
		if (l2->vlan_proto[0]) {
			b[0] = l2->vlan_proto[0] == bpf_htons(ETH_P_8021AD) ? 2
									    : 1;
			__builtin_memcpy(b + 2, &l2->vlan_tci[0], 2);
			vlan_done = 1;
		} else {
			b[0] = 0;
			b[2] = 0;
			b[3] = 0;
		}
	} else if (nh->dsa_proto == BPFQOS_DSA_QCA) {
		/* tag_qca.c xmit: version 2 << 14 | FROM_CPU | BIT(port). */
		if (put16(c,
			  bpf_htons((2 << 14) | (1 << 7) | (port_bit & 0x7f))))
			return -1;
	}

	if (l2->vlan_proto[0] && !vlan_done) {
		if (put_vlan(c, l2->vlan_proto[0], l2->vlan_tci[0]))
			return -1;
	}
	if (l2->vlan_proto[1]) {
		if (put_vlan(c, l2->vlan_proto[1], l2->vlan_tci[1]))
			return -1;
	}
	if (l2->pppoe) {
		struct pppoe_ses_hdr *ph;

		if (put16(c, bpf_htons(ETH_P_PPP_SES)))
			return -1;
		ph = cursor_pull(c, sizeof(*ph));
		if (!ph)
			return -1;
		ph->ver_type = 0x11;
		ph->code = 0;
		ph->sid = l2->pppoe_sid;
		ph->length = bpf_htons(ip_len + 2);
		ph->ppp_proto = bpf_htons(ipv6 ? PPP_IPV6 : PPP_IP);
		return 0;
	}
	return put16(c, bpf_htons(ipv6 ? ETH_P_IPV6 : ETH_P_IP));
}

/* ---- L3/L4 rewrite -------------------------------------------------------- */

/*
 * Rewrites TTL/hop limit, addresses and ports at the cursor (the IP header).
 * L4 checksums are updated here for XDP; for TC (*l4_csum_off set) the caller
 * uses bpf_l4_csum_replace(), which also handles CHECKSUM_PARTIAL skbs.
 */
static __always_inline int rewrite_l3(struct cursor *c, const struct pkt *p,
				      struct flow_ref *f, enum hook hook,
				      __u16 *addr_delta, __u16 *port_delta)
{
	int udp = p->l4_proto == IPPROTO_UDP;
	__be16 sport, dport;
	__u16 *check;
	__u16 delta;

	if (!p->ipv6) {
		struct bpfqos_nat4 *nat = &f->e->nat;
		struct iphdr *iph = cursor_pull(c, sizeof(*iph));

		if (!iph)
			return -1;
		ipv4_decrease_ttl(iph);
		iph->saddr = nat->saddr;
		iph->daddr = nat->daddr;
		/* The IP header checksum covers the same address words. */
		iph->check = csum_apply(iph->check, nat->addr_csum);
		*addr_delta = nat->addr_csum;
		*port_delta = nat->port_csum;
		sport = nat->sport;
		dport = nat->dport;
	} else {
		struct bpfqos_nat6 *nat = &flow6(f)->nat;
		struct ipv6hdr *ip6h = cursor_pull(c, sizeof(*ip6h));

		if (!ip6h)
			return -1;
		ip6h->hop_limit--;
		__builtin_memcpy(&ip6h->saddr, nat->saddr, 16);
		__builtin_memcpy(&ip6h->daddr, nat->daddr, 16);
		*addr_delta = nat->addr_csum;
		*port_delta = nat->port_csum;
		sport = nat->sport;
		dport = nat->dport;
	}

	if (udp) {
		struct udphdr *uh = cursor_pull(c, sizeof(*uh));

		if (!uh)
			return -1;
		uh->source = sport;
		uh->dest = dport;
		check = &uh->check;
	} else {
		struct tcphdr *th = cursor_pull(c, sizeof(*th));

		if (!th)
			return -1;
		th->source = sport;
		th->dest = dport;
		check = &th->check;
	}
	if (hook == HOOK_TC)
		return 0;

	delta = csum_fold((__u32)*addr_delta + *port_delta);
	if (udp) {
		/* IPv4 UDP without checksum stays without (RFC 768). */
		if (!*check)
			return 0;
		*check = csum_apply(*check, delta);
		/* A computed 0 is sent as 0xffff (CSUM_MANGLED_0). */
		if (!*check)
			*check = 0xffff;
	} else {
		*check = csum_apply(*check, delta);
	}
	return 0;
}

/* ---- shaping: the maps, and circuits ------------------------------------ */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BPFQOS_MAX_IFACES);
	__type(key, __u32);
	__type(value, struct bpfqos_shaping);
} shaping SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BPFQOS_SHAPE_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} shape_stats SEC(".maps");

static __always_inline void shape_stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&shape_stats, &idx);

	if (v)
		*v += 1;
}

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, BPFQOS_MAX_CIRCUIT_PREFIXES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct bpfqos_lpm4_key);
	__type(value, __u32);
} circuits4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, BPFQOS_MAX_CIRCUIT_PREFIXES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct bpfqos_lpm6_key);
	__type(value, __u32);
} circuits6 SEC(".maps");

/* Allocated per entry: memory follows the connections of circuits' hosts. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BPFQOS_MAX_CIRCUIT_NAT);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct bpfqos_nat_key);
	__type(value, __u32);
} circuit_nat SEC(".maps");

/* The circuit whose prefix holds addr (IPv4: addr[0]); 0: none. */
static __always_inline __u32 lan_circuit(int ipv6, const __be32 *addr)
{
	__u32 *id;

	if (ipv6) {
		struct bpfqos_lpm6_key k = {.prefixlen = 128};

		__builtin_memcpy(k.addr, addr, sizeof(k.addr));
		id = bpf_map_lookup_elem(&circuits6, &k);
	} else {
		struct bpfqos_lpm4_key k = {.prefixlen = 32, .addr = addr[0]};

		id = bpf_map_lookup_elem(&circuits4, &k);
	}
	return id ? *id : 0;
}

/*
 * The circuit of the connection whose router-side end is k (WAN side, after
 * NAT): a circuit host's NATed connection by its tuple, else the router-side
 * address itself (no NAT: the host's own).
 */
static __always_inline __u32 nat_key_circuit(const struct bpfqos_nat_key *k,
					     int ipv6)
{
	__u32 *id = bpf_map_lookup_elem(&circuit_nat, k);

	/* ipv6 as the caller knows it (k->ipv6 too): a constant per path. */
	return id ? *id : lan_circuit(ipv6, k->local);
}

/*
 * The circuit of a packet on the WAN side of a shaped interface, from its IP
 * header at data + l3_off (anything past end is not read): `upload` when it leaves by
 * the link, so that the router's end is the source. A connection NATed for a
 * circuit's host is found by its WAN-side tuple, anything else by the
 * router-side address itself (no NAT: the host's own). 0: no circuit.
 */
static __always_inline __u32 wan_circuit(void *data, __u32 l3_off, void *end,
					 int ipv6, int upload)
{
	struct bpfqos_nat_key k = {};
	__be16 *ports = NULL;
	void *l3;

	/*
	 * Bounded for the verifier (a packet offset it can track). clang would
	 * fold a mask into the comparison and reload l3_off after it, unbounded:
	 * the empty asm hides the range from clang, so the mask stays and is
	 * what the verifier sees.
	 */
	if (l3_off > BPFQOS_MAX_L2)
		return 0;
	asm volatile("" : "+r"(l3_off));
	l3 = data + (l3_off & 63);

	if (ipv6) {
		struct ipv6hdr *ip6 = l3;

		if ((void *)(ip6 + 1) > end)
			return 0;
		k.ipv6 = 1;
		k.proto = ip6->nexthdr;
		if (upload) {
			__builtin_memcpy(k.local, &ip6->saddr, 16);
			__builtin_memcpy(k.remote, &ip6->daddr, 16);
		} else {
			__builtin_memcpy(k.local, &ip6->daddr, 16);
			__builtin_memcpy(k.remote, &ip6->saddr, 16);
		}
		ports = (void *)(ip6 + 1);
	} else {
		struct iphdr *ip = l3;

		if ((void *)(ip + 1) > end)
			return 0;
		k.proto = ip->protocol;
		k.local[0] = upload ? ip->saddr : ip->daddr;
		k.remote[0] = upload ? ip->daddr : ip->saddr;
		/* A later fragment has no ports: its address decides. */
		if (!(ip->frag_off & bpf_htons(IP_OFFSET_MASK)))
			ports = l3 + ip->ihl * 4;
	}
	if (ports && (k.proto == IPPROTO_TCP || k.proto == IPPROTO_UDP) &&
	    (void *)(ports + 2) <= end) {
		k.local_port = upload ? ports[0] : ports[1];
		k.remote_port = upload ? ports[1] : ports[0];
		return nat_key_circuit(&k, ipv6);
	}
	return lan_circuit(ipv6, k.local);
}

/* Puts the packet into circuit `id`'s class of the shaper it goes to. */
static __always_inline void to_circuit(struct __sk_buff *skb, __u32 id,
				       __u32 stat)
{
	if (!id || id > BPFQOS_MAX_CIRCUITS)
		return;
	skb->priority = ((__u32)BPFQOS_SHAPER_MAJOR << 16) |
			(BPFQOS_CIRCUIT_MINOR_BASE + id);
	shape_stat_inc(stat);
}

/* Whether the shaper (or L3 device) `ifindex` has all of `flags`. */
static __always_inline int shaping_has(__u32 ifindex, __u32 flags)
{
	struct bpfqos_shaping *cfg = bpf_map_lookup_elem(&shaping, &ifindex);

	return cfg && (cfg->flags & flags) == flags;
}

/* ---- passive RTT: the entry points --------------------------------------- */

/*
 * The circuit of the LAN host of the half with key k: leaving by the WAN
 * (`wan`) from its source, found by the WAN-side tuple if a circuit's
 * connection was NATed, else by address; leaving by the LAN to its
 * destination.
 */
static __always_inline __u32 rtt_circuit(int ipv6, const union rtt_key *k,
					 int wan)
{
	struct bpfqos_nat_key n = {};

	if (!wan)
		return lan_circuit(ipv6, ipv6 ? k->k6.daddr : &k->k4.daddr);
	n.ipv6 = ipv6;
	n.proto = IPPROTO_TCP;
	if (ipv6) {
		__builtin_memcpy(n.local, k->k6.saddr, 16);
		__builtin_memcpy(n.remote, k->k6.daddr, 16);
		n.local_port = k->k6.sport;
		n.remote_port = k->k6.dport;
	} else {
		n.local[0] = k->k4.saddr;
		n.remote[0] = k->k4.daddr;
		n.local_port = k->k4.sport;
		n.remote_port = k->k4.dport;
	}
	return nat_key_circuit(&n, ipv6);
}

__noinline int bpfqos_rtt_excess(__u32 excess_us, __u32 slot_out, __u32 slot_in)
{
	__u32 b = rtt_hist_bucket(excess_us);
	struct bpfqos_rtt_hist *h;

	/* Bounded already, but clang drops a check it can prove: the verifier
	 * cannot, so the bound is made opaque and checked again. */
	asm volatile("" : "+r"(b));
	if (b >= BPFQOS_RTT_BUCKETS)
		return 0;
	if (slot_out) {
		h = bpf_map_lookup_elem(&rtt_excess, &slot_out);
		if (h)
			rtt_hist_add(h, b);
	}
	if (slot_in && slot_in != slot_out) {
		h = bpf_map_lookup_elem(&rtt_excess, &slot_in);
		if (h)
			rtt_hist_add(h, b);
	}
	return 0;
}

__noinline int bpfqos_rtt_arrival(struct rtt_pkt *p)
{
	struct bpfqos_rtt_state *s;
	union rtt_key k;
	__u32 us = 0;

	if (!p || !p->t.valid)
		return 0;
	s = rtt_answered(p, &k, p->seed, &us);
	if (!s)
		return 0;
	/*
	 * A circuit's NATed connection is known by its WAN-side tuple only
	 * once the daemon saw it in conntrack, after its first packets: look
	 * again while there is none (once per sample, not per packet).
	 */
	if (!s->circuit)
		s->circuit =
			rtt_circuit(p->ipv6, &k, s->flags & BPFQOS_RTT_F_WAN);
	rtt_sample(s, us);
	return 0;
}

/*
 * A packet leaving by out_ifindex, having come in by in_ifindex (0: made by
 * the router): its half, made if missing and worth it, counts and probes.
 */
__noinline int bpfqos_rtt_departure(struct rtt_pkt *p, __u32 out_ifindex,
				    __u32 in_ifindex)
{
	struct bpfqos_rtt_state *s;
	struct bpfqos_iface *o, *i;
	__u64 now = coarse_now();
	__u32 wan, first;
	union rtt_key k;

	if (!p || !p->t.valid)
		return 0;
	rtt_key_of(p, &k);
	s = rtt_half(p->ipv6, &k, p->seed, &first);
	if (!s) {
		if (!rtt_worth_a_half(&p->t))
			return 0;
		o = iface_cfg(out_ifindex);
		i = iface_cfg(in_ifindex);
		wan = o && (o->flags & BPFQOS_IFACE_F_WAN);
		s = rtt_new_half(p->ipv6, &k, first, (__u32)(now >> 30),
				 out_ifindex, o ? o->rtt_slot : 0,
				 i ? i->rtt_slot : 0, wan,
				 rtt_circuit(p->ipv6, &k, wan));
		if (!s)
			return 0;
	}
	rtt_departure(s, &p->t, now);
	return 0;
}

/*
 * A packet the XDP fast path sends out of `egress` (XDP-sent frames never
 * reach a TC egress hook): it leaves with the entry's NAT tuple.
 */
static __always_inline void rtt_xdp_departure(struct flow_ref *f,
					      struct rtt_pkt *rp, __u32 ingress,
					      __u32 egress)
{
	if (!rp->t.valid)
		return;
	if (rp->ipv6) {
		struct bpfqos_nat6 *nat = &flow6(f)->nat;

		__builtin_memcpy(rp->saddr, nat->saddr, 16);
		__builtin_memcpy(rp->daddr, nat->daddr, 16);
		rp->sport = nat->sport;
		rp->dport = nat->dport;
	} else {
		rp->saddr[0] = f->e->nat.saddr;
		rp->daddr[0] = f->e->nat.daddr;
		rp->sport = f->e->nat.sport;
		rp->dport = f->e->nat.dport;
	}
	bpfqos_rtt_departure(rp, egress, ingress);
}

/*
 * TC egress of every lowest device the data path runs on: whatever leaves
 * by it that XDP did not send (the kernel's forwarding and the router's own
 * traffic, the TC twin's redirects, the download shaper's output), parsed
 * like arrivals (with the DSA tagger's TX tag), timed as departures. Never
 * changes or drops a packet.
 */
SEC("tc")
int bpfqos_rtt_out(struct __sk_buff *skb)
{
	__be16 tpid = skb->vlan_present ? (__be16)skb->vlan_proto : 0;
	struct bpfqos_control *ctl;
	struct bpfqos_iface *out;
	struct pkt_hdrs h = {};
	struct rtt_pkt rp = {};
	struct pkt p = {};
	void *data, *data_end;
	__u32 zero = 0, need;

	ctl = bpf_map_lookup_elem(&control, &zero);
	if (!ctl || !(ctl->flags & BPFQOS_CTL_F_RTT))
		return TC_PASS;
	/* The headers in the linear part (a locally made skb may not be). */
	need = skb->len < 128 ? skb->len : 128;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (data + need > data_end) {
		if (bpf_skb_pull_data(skb, need))
			return TC_PASS;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	out = iface_cfg(skb->ifindex);
	if (parse_packet_dir(data, data_end,
			     out ? out->dsa_proto : BPFQOS_DSA_NONE, tpid,
			     bpf_htons(skb->vlan_tci), &p, &h, 1) ||
	    !h.th)
		return TC_PASS;
	if (rtt_tcp_fields(h.th, data_end, p.ip_len, p.l4_off - p.l3_off,
			   &rp.t))
		return TC_PASS;
	if (skb->gso_segs > 1)
		rp.t.segs = skb->gso_segs;
	if (h.iph)
		rtt_pkt_of(&rp, &h.iph->saddr, &h.iph->daddr, 0, h.th,
			   ctl->seed[0]);
	else if (h.ip6h)
		rtt_pkt_of(&rp, h.ip6h->saddr.in6_u.u6_addr32,
			   h.ip6h->daddr.in6_u.u6_addr32, 1, h.th,
			   ctl->seed[0]);
	else
		return TC_PASS;
	bpfqos_rtt_departure(&rp, skb->ifindex, skb->ingress_ifindex);
	return TC_PASS;
}

/* ---- XDP ------------------------------------------------------------------ */

/*
 * Drops Ethernet padding after the IP packet (as ip_rcv() does; the PPPoE
 * length we write must match the packet) and moves the head to the next
 * hop's L2 length. 0, or -1 with the frame untouched.
 */
static __always_inline int xdp_fit_l2(struct xdp_md *ctx, const struct pkt *p,
				      __u32 new_l2)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	void *ip_end = data + p->l3_off + p->ip_len;
	/*
	 * Pointer arithmetic stays 64-bit: with ALU32 clang would otherwise
	 * narrow it to the int it ends up as, which the verifier refuses.
	 */
	long excess = data_end - ip_end;

	if (excess > 0 && bpf_xdp_adjust_tail(ctx, -(int)excess))
		return -1;
	if (new_l2 != p->l3_off &&
	    bpf_xdp_adjust_head(ctx, (int)p->l3_off - (int)new_l2))
		return -1;
	return 0;
}

/*
 * Download through a shaper (BPFQOS_ACT_FORWARD_SHAPED): the frame is
 * rewritten for its egress here, where every encapsulation can be undone,
 * and passed with metadata naming the shaper and the egress; the TC twin on
 * this device sends it into the shaper (XDP cannot: a redirect skips every
 * qdisc). A driver without XDP metadata gets the frame untouched: the kernel
 * path, which the shaper sees too.
 */
static __always_inline int xdp_to_shaper(struct xdp_md *ctx, struct pkt *p,
					 struct flow_ref *f)
{
	struct bpfqos_xdp_meta *meta;
	__u16 addr_delta, port_delta;
	__u32 target = f->e->nh.ifindex;
	struct cursor c;
	__u32 circuit;
	void *data;

	if (!f->e->shaper || target > BPFQOS_TC_INDEX_TARGET) {
		stat_inc(BPFQOS_STAT_PASS_NOT_READY);
		return XDP_PASS;
	}
	/* Room for the metadata first: all that can fail comes before writes. */
	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(*meta))) {
		stat_inc(BPFQOS_STAT_PASS_L2);
		return XDP_PASS;
	}
	data = (void *)(long)ctx->data;
	meta = (void *)(long)ctx->data_meta;
	if ((void *)(meta + 1) > data)
		return XDP_PASS;
	/* Not ours until the frame is: a failure below leaves no magic. */
	meta->magic = 0;
	/* The circuit from the headers as they arrived (before NAT is undone). */
	circuit = 0;
	if (shaping_has(f->e->shaper, BPFQOS_SHAPE_F_CIRCUITS_DOWN))
		circuit = wan_circuit(data, p->l3_off,
				      (void *)(long)ctx->data_end, p->ipv6, 0);
	if (xdp_fit_l2(ctx, p, f->e->nh.l2_len)) {
		stat_inc(BPFQOS_STAT_PASS_L2);
		return XDP_PASS;
	}
	c.pos = (void *)(long)ctx->data;
	c.end = (void *)(long)ctx->data_end;
	if (write_l2(&c, &f->e->nh, p->ip_len, p->ipv6))
		return XDP_DROP;
	if (rewrite_l3(&c, p, f, HOOK_XDP, &addr_delta, &port_delta))
		return XDP_DROP;
	/* The head moved: the metadata moved with it. */
	data = (void *)(long)ctx->data;
	meta = (void *)(long)ctx->data_meta;
	if ((void *)(meta + 1) > data)
		return XDP_DROP; /* cannot happen: the kernel keeps it */
	meta->shaper = f->e->shaper;
	meta->target = target;
	meta->circuit = circuit;
	meta->magic = BPFQOS_META_MAGIC;
	count(f, p->ip_len);
	stat_inc(BPFQOS_STAT_TO_SHAPER);
	return XDP_PASS;
}

SEC("xdp")
int bpfqos_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 ingress = ctx->ingress_ifindex;
	struct steer_ref st = {};
	struct flow_ref f = {};
	struct rtt_pkt rt = {};
	struct pkt p = {};
	struct cursor c;
	__u16 addr_delta, port_delta;
	__u32 egress, new_l2;
	int act;

	if (classify(data, data_end, ingress, 0, 0, HOOK_XDP, 0, &p, &f, &rt,
		     &st))
		return st.hash ? xdp_steer(st.hash, st.n, st.here_ok)
			       : XDP_PASS;
	if (f.e->action == BPFQOS_ACT_FORWARD_SHAPED)
		return xdp_to_shaper(ctx, &p, &f);

	/*
	 * Resolve the redirect before touching the frame: with XDP_PASS in the
	 * flags, bpf_redirect_map() returns XDP_PASS when the egress is not in
	 * the devmap (kernel 5.6+), which replaces a separate lookup of the same
	 * key. The target it records is only used if we return XDP_REDIRECT.
	 */
	egress = f.e->nh.ifindex;
	if (egress == ingress) {
		act = XDP_TX;
	} else {
		act = bpf_redirect_map(&tx_ports, egress, XDP_PASS);
		if (act != XDP_REDIRECT) {
			stat_inc(BPFQOS_STAT_PASS_NO_TXPORT);
			return XDP_PASS;
		}
	}

	new_l2 = f.e->nh.l2_len;
	if (xdp_fit_l2(ctx, &p, new_l2)) {
		stat_inc(BPFQOS_STAT_PASS_L2);
		return XDP_PASS;
	}

	/* From here the frame is ours; the checks below cannot fail. */
	c.pos = (void *)(long)ctx->data;
	c.end = (void *)(long)ctx->data_end;
	if (write_l2(&c, &f.e->nh, p.ip_len, p.ipv6))
		return XDP_DROP;
	if (rewrite_l3(&c, &p, &f, HOOK_XDP, &addr_delta, &port_delta))
		return XDP_DROP;
	count(&f, p.ip_len);
	rtt_xdp_departure(&f, &rt, ingress, egress);
	stat_inc(act == XDP_TX ? BPFQOS_STAT_TX : BPFQOS_STAT_REDIRECT);
	return act;
}

/*
 * Runs on the CPU a frame was steered to, as cpu_map takes it off its queue,
 * before the kernel builds the skb: counts the arrival (the proof that the
 * work moved, and with `steered` the queue's losses) and passes it on.
 */
SEC("xdp/cpumap")
int bpfqos_cpumap(struct xdp_md *ctx)
{
	__u32 cpu = bpf_get_smp_processor_id();
	struct bpfqos_steer_stat *s = bpf_map_lookup_elem(&steer_stats, &cpu);

	if (s)
		s->delivered++;
	return XDP_PASS;
}

/* ---- TC ------------------------------------------------------------------- */

/*
 * A frame XDP rewrote for a download shaper (xdp_to_shaper): into the shaper,
 * its egress in tc_index for the shaper's far end. 1 when it was one.
 */
static __always_inline int tc_from_xdp_to_shaper(struct __sk_buff *skb,
						 int *verdict)
{
	void *data = (void *)(long)skb->data;
	struct bpfqos_xdp_meta *meta = (void *)(long)skb->data_meta;

	if ((void *)(meta + 1) > data || meta->magic != BPFQOS_META_MAGIC)
		return 0;
	skb->tc_index = BPFQOS_TC_INDEX_OFFLOADED |
			(meta->target & BPFQOS_TC_INDEX_TARGET);
	to_circuit(skb, meta->circuit, BPFQOS_SHAPE_STAT_CIRCUIT_DOWN);
	*verdict = bpf_redirect(meta->shaper, 0);
	return 1;
}

/*
 * The TC twin keeps shaping working for offloaded flows (bpf_redirect goes
 * through the egress qdisc). skb helpers can grow the head of any skb but
 * only shrink it for plain IP skbs, where the data L2 header is already the
 * minimum; so TC forwards only flows whose L2 header does not shrink (an
 * outer VLAN in skb metadata is dropped with bpf_skb_vlan_pop) and passes
 * the others (PPPoE/VLAN-in-data/DSA decapsulation is XDP's job).
 * skb->protocol is left as the kernel set it. By action:
 *  - FORWARD: to the lowest egress device (XDP could not attach here);
 *  - FORWARD_TC: to a shaped L3 device, with a plain Ethernet header;
 *  - FORWARD_L3: to a shaped L3 device without L2 header (PPP): IP rewritten,
 *    the kernel strips the L2 header (the network header is at IP: user space
 *    only uses it for flows arriving without in-data encapsulation);
 *  - FORWARD_SHAPED: rewritten for the egress, into the download shaper.
 */
SEC("tc")
int bpfqos_tc(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__be16 tpid = skb->vlan_present ? (__be16)skb->vlan_proto : 0;
	struct flow_ref f = {};
	struct rtt_pkt rt = {};
	struct pkt p = {};
	struct cursor c;
	__u16 addr_delta = 0, port_delta = 0;
	__u32 new_l2, csum_off = 0, l4_off, target, circuit = 0;
	__u64 mm0;
	int grow, verdict, l3_only;

	if (tc_from_xdp_to_shaper(skb, &verdict))
		return verdict;
	/* At TC ingress skb->ifindex is the device the hook runs on. */
	if (classify(data, data_end, skb->ifindex, tpid,
		     bpf_htons(skb->vlan_tci), HOOK_TC, skb->gso_size, &p, &f,
		     &rt, NULL))
		return TC_PASS;

	l3_only = f.e->action == BPFQOS_ACT_FORWARD_L3;
	target = f.e->nh.ifindex;
	if (f.e->action == BPFQOS_ACT_FORWARD_SHAPED &&
	    (!f.e->shaper || target > BPFQOS_TC_INDEX_TARGET)) {
		stat_inc(BPFQOS_STAT_PASS_NOT_READY);
		return TC_PASS;
	}
	/* Into a download shaper: the circuit from the headers as they came. */
	if (f.e->action == BPFQOS_ACT_FORWARD_SHAPED &&
	    shaping_has(f.e->shaper, BPFQOS_SHAPE_F_CIRCUITS_DOWN))
		circuit = wan_circuit(data, p.l3_off, data_end, p.ipv6, 0);
	new_l2 = l3_only ? p.l3_off : f.e->nh.l2_len;
	grow = (int)new_l2 - (int)p.l3_off;
	/* FORWARD_L3: the kernel finds IP at the network header (no tags). */
	if (grow < 0 || (l3_only && (p.l3_off != ETH_HLEN || tpid))) {
		stat_inc(BPFQOS_STAT_PASS_L2);
		return TC_PASS;
	}
	if (skb->len > p.l3_off + p.ip_len && !skb->gso_size &&
	    bpf_skb_change_tail(skb, p.l3_off + p.ip_len, 0)) {
		stat_inc(BPFQOS_STAT_PASS_L2);
		return TC_PASS;
	}
	if (grow > 0 && bpf_skb_change_head(skb, grow, 0)) {
		stat_inc(BPFQOS_STAT_PASS_L2);
		return TC_PASS;
	}
	if (tpid)
		bpf_skb_vlan_pop(skb); /* clears the metadata tag only */

	c.pos = (void *)(long)skb->data;
	c.end = (void *)(long)skb->data_end;
	if (l3_only) {
		/* l3_off was checked to be ETH_HLEN: a constant for the verifier. */
		if (!cursor_pull(&c, ETH_HLEN))
			return TC_ACT_SHOT;
	} else if (write_l2(&c, &f.e->nh, p.ip_len, p.ipv6)) {
		return TC_ACT_SHOT;
	}
	if (rewrite_l3(&c, &p, &f, HOOK_TC, &addr_delta, &port_delta))
		return TC_ACT_SHOT;

	/* Checksums last: the helpers invalidate packet pointers. */
	l4_off = new_l2 +
		 (p.ipv6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr));
	if (p.l4_proto == IPPROTO_UDP) {
		csum_off = l4_off + __builtin_offsetof(struct udphdr, check);
		mm0 = BPF_F_MARK_MANGLED_0;
	} else {
		csum_off = l4_off + __builtin_offsetof(struct tcphdr, check);
		mm0 = 0;
	}
	if (addr_delta)
		bpf_l4_csum_replace(skb, csum_off, 0, addr_delta,
				    BPF_F_PSEUDO_HDR | mm0);
	if (port_delta)
		bpf_l4_csum_replace(skb, csum_off, 0, port_delta, mm0);
	count(&f, p.ip_len);
	if (f.e->action == BPFQOS_ACT_FORWARD_SHAPED) {
		skb->tc_index = BPFQOS_TC_INDEX_OFFLOADED | target;
		to_circuit(skb, circuit, BPFQOS_SHAPE_STAT_CIRCUIT_DOWN);
		stat_inc(BPFQOS_STAT_TO_SHAPER);
		return bpf_redirect(f.e->shaper, 0);
	}
	/* An upload to a shaped L3 device goes into its root qdisc: a shaper too. */
	stat_inc(f.e->action == BPFQOS_ACT_FORWARD ? BPFQOS_STAT_REDIRECT
						   : BPFQOS_STAT_TO_SHAPER);
	return bpf_redirect(target, 0);
}

/* ---- shaping: steering through the download shaper ---------------------- */

/*
 * Puts an skb whose IP header is at l3_off into its circuit's class: a
 * download on its way into the shaper, or (`upload`) a packet leaving by the
 * link. Headers beyond the linear part are pulled in first (TC only).
 */
static __always_inline void classify_here(struct __sk_buff *skb, __u32 l3_off,
					  int upload)
{
	void *data, *data_end;
	__u32 need;
	int ipv6;

	if (skb->protocol == bpf_htons(ETH_P_IP))
		ipv6 = 0;
	else if (skb->protocol == bpf_htons(ETH_P_IPV6))
		ipv6 = 1;
	else
		return;
	/* IP header with options, or IPv6's, and the ports. */
	need = l3_off + (ipv6 ? sizeof(struct ipv6hdr) : 60) + 4;
	if (need > skb->len)
		need = skb->len;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (data + need > data_end) {
		if (bpf_skb_pull_data(skb, need))
			return;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	to_circuit(skb, wan_circuit(data, l3_off, data_end, ipv6, upload),
		   upload ? BPFQOS_SHAPE_STAT_CIRCUIT_UP
			  : BPFQOS_SHAPE_STAT_CIRCUIT_DOWN);
}

/*
 * TC egress of a shaped interface's L3 device with circuits: everything
 * leaving by the link, forwarded by the kernel (already NATed) or by the
 * offload, router-local or not, gets its circuit's class in the upload
 * shaper (the root qdisc, which runs after this). Never drops, never
 * redirects.
 */
SEC("tc")
int bpfqos_up_classify(struct __sk_buff *skb)
{
	struct bpfqos_shaping *cfg;
	__u32 ifindex = skb->ifindex;

	cfg = bpf_map_lookup_elem(&shaping, &ifindex);
	if (!cfg || !(cfg->flags & BPFQOS_SHAPE_F_CIRCUITS_UP))
		return TC_PASS;
	classify_here(skb, cfg->flags & BPFQOS_SHAPE_F_UP_NO_L2 ? 0 : ETH_HLEN,
		      1);
	return TC_PASS;
}

/* The daemon is alive (its heartbeat is fresh). */
static __always_inline int daemon_alive(void)
{
	struct bpfqos_control *ctl;
	__u32 zero = 0;
	__s64 age;

	ctl = bpf_map_lookup_elem(&control, &zero);
	if (!ctl)
		return 0;
	age = (__s64)(coarse_now() - ctl->heartbeat_ns);
	return age <= (__s64)BPFQOS_HEARTBEAT_MAX_AGE_NS &&
	       age >= -(__s64)BPFQOS_HEARTBEAT_MAX_AGE_NS;
}

/*
 * TC ingress of a shaped interface's L3 device: every packet arriving from
 * the link goes through the download shaper first (once: what comes back is
 * marked). With a stale heartbeat (the daemon is gone) nothing is steered,
 * so download is unshaped rather than lost.
 */
SEC("tc")
int bpfqos_dl_steer(struct __sk_buff *skb)
{
	struct bpfqos_shaping *cfg;
	__u32 ifindex = skb->ifindex;
	struct ethhdr *eth;
	void *data, *data_end;

	if (skb->tc_index & BPFQOS_TC_INDEX_SHAPED) {
		skb->tc_index &= ~BPFQOS_TC_INDEX_SHAPED;
		return TC_PASS;
	}
	cfg = bpf_map_lookup_elem(&shaping, &ifindex);
	if (!cfg || !(cfg->flags & BPFQOS_SHAPE_F_TO_SHAPER))
		return TC_PASS;
	if (!daemon_alive()) {
		shape_stat_inc(BPFQOS_SHAPE_STAT_PASSED);
		return TC_PASS;
	}
	if (cfg->flags & BPFQOS_SHAPE_F_CIRCUITS_DOWN)
		classify_here(
			skb, cfg->flags & BPFQOS_SHAPE_F_ADD_ETH ? 0 : ETH_HLEN,
			0);
	if (cfg->flags & BPFQOS_SHAPE_F_ADD_ETH) {
		/*
		 * The shaper is an Ethernet device: a packet of an L2-less
		 * device (PPP) gets a header, stripped again on the way back.
		 */
		if (bpf_skb_change_head(skb, ETH_HLEN, 0)) {
			shape_stat_inc(BPFQOS_SHAPE_STAT_PASSED);
			return TC_PASS;
		}
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		eth = data;
		if ((void *)(eth + 1) > data_end)
			return TC_ACT_SHOT; /* cannot happen: 14 bytes were added */
		__builtin_memset(eth, 0, 2 * ETH_ALEN);
		eth->h_proto = skb->protocol;
	}
	shape_stat_inc(BPFQOS_SHAPE_STAT_STEERED);
	return bpf_redirect(cfg->target, 0);
}

/*
 * TC ingress of the download shaper's far end: back into the L3 device's
 * ingress, marked so that bpfqos_dl_steer lets it through. Whatever else
 * arrives here goes to the kernel, which drops it (the device has no address).
 */
SEC("tc")
int bpfqos_dl_back(struct __sk_buff *skb)
{
	struct bpfqos_shaping *cfg;
	__u32 ifindex = skb->ifindex;

	cfg = bpf_map_lookup_elem(&shaping, &ifindex);
	if (!cfg || !(cfg->flags & BPFQOS_SHAPE_F_RETURN))
		return TC_PASS;
	if (skb->tc_index & BPFQOS_TC_INDEX_OFFLOADED) {
		/* An offloaded frame, already rewritten: out of its egress. */
		__u32 target = skb->tc_index & BPFQOS_TC_INDEX_TARGET;

		skb->tc_index = 0;
		shape_stat_inc(BPFQOS_SHAPE_STAT_RETURNED);
		return bpf_redirect(target, 0);
	}
	skb->tc_index |= BPFQOS_TC_INDEX_SHAPED;
	shape_stat_inc(BPFQOS_SHAPE_STAT_RETURNED);
	return bpf_redirect(cfg->target, BPF_F_INGRESS);
}

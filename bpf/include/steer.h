/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * CPU steering: the receive work of frames the XDP program hands to the
 * kernel, spread over the CPUs by a hash of their inner flow.
 *
 * A NIC with one receive queue, or one that cannot hash inside PPPoE (most
 * cannot), delivers a line's every frame to one CPU, which then runs the
 * whole kernel path (PPPoE, VLAN, conntrack, NAT, routing, the firewall) for
 * all of them. The XDP program already parses every frame on the lowest
 * device: for a TCP/UDP frame it understood and does not forward itself, it
 * picks a CPU from a symmetric hash of the inner 5-tuple (the same for both
 * directions of a connection on one wire, so a flow's packets stay in order
 * and on one CPU) and redirects the untouched frame to that CPU through
 * `cpu_map`; the kernel builds the skb there and the frame takes the kernel
 * path exactly as it would have, on another CPU. Everything else (ARP, PPPoE
 * discovery and LCP, ICMP, fragments, anything the parser does not
 * understand) stays on the receiving CPU, and offloaded frames keep the fast
 * path there.
 *
 * The CPU set is `steer_cpus[0 .. control.steer_cpus)` (CPU numbers); the
 * frame's share of it is (hash * n) >> 32. When the hash names the receiving
 * CPU itself the frame is simply passed (no queue, no extra copy), if the
 * device receives on one fixed CPU (BPFQOS_IFACE_F_STEER_HERE: a NIC's
 * interrupt); elsewhere every frame goes through its CPU's queue, which keeps
 * a flow's order even when receive moves between CPUs (one receive queue's
 * NAPI runs on one CPU at a time and flushes its redirects before it ends).
 * A set of one CPU moves all of that work off the CPUs that receive.
 */
#ifndef BPFQOS_STEER_H
#define BPFQOS_STEER_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "bpfqos_abi.h"
#include "parse.h"

struct {
	__uint(type, BPF_MAP_TYPE_CPUMAP);
	__uint(max_entries, BPFQOS_MAX_CPUS);
	__type(key, __u32);
	__type(value, struct bpf_cpumap_val);
} cpu_map SEC(".maps");

/* Index -> CPU number, the first control.steer_cpus entries in use. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BPFQOS_MAX_CPUS);
	__type(key, __u32);
	__type(value, __u32);
} steer_cpus SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BPFQOS_MAX_CPUS);
	__type(key, __u32);
	__type(value, struct bpfqos_steer_stat);
} steer_stats SEC(".maps");

/* murmur3's finaliser: every input bit reaches every output bit. */
static __always_inline __u32 steer_mix(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* One end of the flow: address words and port. */
static __always_inline __u32 steer_end(const __u32 *a, int words, __u16 port,
				       __u32 seed)
{
	__u32 h = steer_mix(seed ^ port);
	int i;

#pragma unroll
	for (i = 0; i < 4; i++)
		if (i < words)
			h = steer_mix(h ^ a[i]);
	return h;
}

/*
 * The flow's hash: the two ends mixed on their own and added (addition does
 * not care which end is the source), then the protocol. Inputs in network
 * order as they are on the wire: a function of the 5-tuple alone.
 */
static __always_inline __u32 steer_hash(const struct pkt_hdrs *h, __u32 seed)
{
	__u16 sport, dport;
	__u32 sum;
	__u8 proto;

	if (h->th) {
		sport = h->th->source;
		dport = h->th->dest;
		proto = IPPROTO_TCP;
	} else if (h->uh) {
		sport = h->uh->source;
		dport = h->uh->dest;
		proto = IPPROTO_UDP;
	} else {
		return 0;
	}
	if (h->iph)
		sum = steer_end(&h->iph->saddr, 1, sport, seed) +
		      steer_end(&h->iph->daddr, 1, dport, seed);
	else if (h->ip6h)
		sum = steer_end(h->ip6h->saddr.in6_u.u6_addr32, 4, sport,
				seed) +
		      steer_end(h->ip6h->daddr.in6_u.u6_addr32, 4, dport, seed);
	else
		return 0;
	return steer_mix(sum ^ proto);
}

/*
 * PPPoE sessions whose PPP stream carries state across frames: compression
 * (CCP: Deflate, BSD, MPPC; the receiver's history follows every frame, the
 * uncompressed ones included), Van Jacobson header compression, multilink
 * fragments, encryption. Their frames must reach ppp_input() in order, so
 * they are never steered: a session is marked here the first time one of
 * those frames arrives, and its frames then stay where they arrive. Indexed
 * by a hash of (ifindex, session id); a collision only keeps an innocent
 * session unsteered. Value: ifindex << 16 | session id (host order).
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BPFQOS_PPP_HELD);
	__type(key, __u32);
	__type(value, __u32);
} ppp_held SEC(".maps");

static __always_inline int ppp_proto_stateful(__be16 proto)
{
	switch (bpf_ntohs(proto)) {
	case 0x002d: /* VJ compressed TCP/IP */
	case 0x002f: /* VJ uncompressed TCP/IP */
	case 0x003d: /* multilink */
	case 0x0053: /* encrypted datagram (ECP) */
	case 0x0055: /* individual link encrypted */
	case 0x00fb: /* individual link compressed */
	case 0x00fd: /* compressed datagram (CCP) */
		return 1;
	}
	return 0;
}

static __always_inline __u32 ppp_held_key(__u32 ifindex, __be16 sid)
{
	return ifindex << 16 | bpf_ntohs(sid);
}

static __always_inline __u32 ppp_held_slot(__u32 key)
{
	return steer_mix(key) & (BPFQOS_PPP_HELD - 1);
}

/* A PPPoE frame the parser refused: mark its session if its stream is stateful. */
static __always_inline void ppp_hold(__u32 ifindex, const struct pkt *p)
{
	__u32 key, slot, *v;

	if (!p->ppp_proto || !ppp_proto_stateful(p->ppp_proto))
		return;
	key = ppp_held_key(ifindex, p->l2.pppoe_sid);
	slot = ppp_held_slot(key);
	v = bpf_map_lookup_elem(&ppp_held, &slot);
	if (v && *v != key)
		*v = key;
}

/* Whether a parsed PPPoE frame belongs to a session marked by ppp_hold(). */
static __always_inline int ppp_is_held(__u32 ifindex, const struct pkt *p)
{
	__u32 key, slot, *v;

	if (!p->l2.pppoe)
		return 0;
	key = ppp_held_key(ifindex, p->l2.pppoe_sid);
	slot = ppp_held_slot(key);
	v = bpf_map_lookup_elem(&ppp_held, &slot);
	return v && *v == key;
}

/*
 * Sends the frame to the CPU `hash` picks among the first `n` of steer_cpus
 * (n >= 1, checked by the caller), or passes it in place: the hash picked
 * this CPU and `here_ok`, or that CPU has no cpu_map entry
 * (bpf_redirect_map's XDP_PASS default: the frame stays here, never lost).
 */
static __always_inline int xdp_steer(__u32 hash, __u32 n, int here_ok)
{
	__u32 idx, here = bpf_get_smp_processor_id();
	struct bpfqos_steer_stat *s;
	__u32 *cpu;
	int act;

	if (n > BPFQOS_MAX_CPUS)
		return XDP_PASS;
	idx = (__u32)(((__u64)hash * n) >> 32);
	cpu = bpf_map_lookup_elem(&steer_cpus, &idx);
	if (!cpu)
		return XDP_PASS;
	s = bpf_map_lookup_elem(&steer_stats, cpu);
	if (*cpu == here && here_ok) {
		if (s)
			s->kept++;
		return XDP_PASS;
	}
	act = bpf_redirect_map(&cpu_map, *cpu, XDP_PASS);
	if (act == XDP_REDIRECT && s)
		s->steered++;
	return act;
}

#endif /* BPFQOS_STEER_H */

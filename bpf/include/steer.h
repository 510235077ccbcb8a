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
 * CPU itself the frame is simply passed (no queue, no extra copy). A set of
 * one CPU moves all of that work off the CPUs that receive.
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
 * Sends the frame to the CPU `hash` picks among the first `n` of steer_cpus
 * (n >= 1, checked by the caller), or passes it in place: the hash picked
 * this CPU, or that CPU has no cpu_map entry (bpf_redirect_map's XDP_PASS
 * default: the frame stays here, never lost).
 */
static __always_inline int xdp_steer(__u32 hash, __u32 n)
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
	if (*cpu == here) {
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

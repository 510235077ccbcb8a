// SPDX-License-Identifier: GPL-2.0-only
/*
 * References for bench/bpf_offload.rs, which reports the offload program's
 * cost relative to them:
 *  - bench_parse_redirect, the baseline: the shared parser plus a devmap
 *    redirect, no flow lookup and no rewrite;
 *  - bench_parse_table_redirect, the floor of this offload: the same plus the
 *    offload's own flow-table lookup (flowtable.h);
 *  - bench_parse_lookup_redirect, the same with a kernel hash map keyed like
 *    the offload's entries (the design the offload had before: kept to show
 *    what the hash map's call chain costs);
 *  - bench_parse_only: the shared parser and nothing else (the baseline without
 *    its redirect: splits the baseline's cost);
 *  - bench_pass: nothing, i.e. BPF_PROG_TEST_RUN's own cost per repetition;
 *  - bench_tc_pass: the same for a TC program (the circuit classifier's
 *    reference: what any program on TC egress costs).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "bpfqos_abi.h"
#include "flowtable.h"
#include "parse.h"

char LICENSE[] SEC("license") = "GPL";

struct bench_cfg {
	__u32 ifindex;	 /* redirect target, also the devmap key */
	__u32 dsa_proto; /* tagger the parser expects */
	__u32 seed[BPFQOS_HASH_SEEDS]; /* flow-table hash seeds (table floor) */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_cfg);
} bench_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u32);
} bench_tx SEC(".maps");

/* Same key, shape and size as the offload's flow maps; value: egress. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, struct bpfqos_flow4_key);
	__type(value, __u32);
} bench_flows4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, struct bpfqos_flow6_key);
	__type(value, __u32);
} bench_flows6 SEC(".maps");

/* The offload's flow keys, built the same way as in classify(). */
static __always_inline void key4(struct bpfqos_flow4_key *k, __u32 ifindex,
				 const struct pkt *p, const struct pkt_hdrs *h)
{
	k->ifindex = ifindex;
	__builtin_memcpy(&k->l2, &p->l2, sizeof(k->l2));
	k->saddr = h->iph->saddr;
	k->daddr = h->iph->daddr;
	k->proto = p->l4_proto;
	k->sport = h->th ? h->th->source : h->uh ? h->uh->source : 0;
	k->dport = h->th ? h->th->dest : h->uh ? h->uh->dest : 0;
}

static __always_inline void key6(struct bpfqos_flow6_key *k, __u32 ifindex,
				 const struct pkt *p, const struct pkt_hdrs *h)
{
	k->ifindex = ifindex;
	__builtin_memcpy(&k->l2, &p->l2, sizeof(k->l2));
	__builtin_memcpy(k->saddr, &h->ip6h->saddr, 16);
	__builtin_memcpy(k->daddr, &h->ip6h->daddr, 16);
	k->proto = p->l4_proto;
	k->sport = h->th ? h->th->source : h->uh ? h->uh->source : 0;
	k->dport = h->th ? h->th->dest : h->uh ? h->uh->dest : 0;
}

SEC("xdp")
int bench_parse_redirect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct pkt_hdrs h = {};
	struct pkt p = {};
	struct bench_cfg *cfg;
	__u32 zero = 0;

	cfg = bpf_map_lookup_elem(&bench_cfg, &zero);
	if (!cfg)
		return XDP_PASS;
	if (parse_packet(data, data_end, cfg->dsa_proto, 0, 0, &p, &h))
		return XDP_PASS;
	return bpf_redirect_map(&bench_tx, cfg->ifindex, 0);
}

SEC("xdp")
int bench_parse_only(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct pkt_hdrs h = {};
	struct pkt p = {};
	struct bench_cfg *cfg;
	__u32 zero = 0;

	cfg = bpf_map_lookup_elem(&bench_cfg, &zero);
	if (!cfg)
		return XDP_PASS;
	/* The verdict depends on the whole parse, so none of it is optimised away. */
	if (parse_packet(data, data_end, cfg->dsa_proto, 0, 0, &p, &h))
		return XDP_PASS;
	return p.l4_off ? XDP_DROP : XDP_PASS;
}

SEC("xdp")
int bench_parse_lookup_redirect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct pkt_hdrs h = {};
	struct pkt p = {};
	struct bench_cfg *cfg;
	__u32 zero = 0, *egress;
	union {
		struct bpfqos_flow4_key k4;
		struct bpfqos_flow6_key k6;
	} k;

	__builtin_memset(&k, 0, sizeof(k));
	cfg = bpf_map_lookup_elem(&bench_cfg, &zero);
	if (!cfg)
		return XDP_PASS;
	if (parse_packet(data, data_end, cfg->dsa_proto, 0, 0, &p, &h))
		return XDP_PASS;
	if (h.iph) {
		key4(&k.k4, ctx->ingress_ifindex, &p, &h);
		egress = bpf_map_lookup_elem(&bench_flows4, &k.k4);
		/*
		 * Redirect from each branch: with one shared call site clang
		 * passes the map as a variable, and the verifier then cannot
		 * inline the lookup as it does for the offload program.
		 */
		if (!egress)
			return XDP_PASS;
		return bpf_redirect_map(&bench_tx, *egress, XDP_PASS);
	}
	if (h.ip6h) {
		key6(&k.k6, ctx->ingress_ifindex, &p, &h);
		egress = bpf_map_lookup_elem(&bench_flows6, &k.k6);
		if (!egress)
			return XDP_PASS;
		return bpf_redirect_map(&bench_tx, *egress, XDP_PASS);
	}
	return XDP_PASS;
}

/*
 * Nothing but the return: what BPF_PROG_TEST_RUN's loop costs per repetition,
 * included in every other number.
 */
SEC("xdp")
int bench_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

/* The same for TC: a program that leaves the packet alone. */
SEC("tc")
int bench_tc_pass(struct __sk_buff *skb)
{
	return TC_ACT_UNSPEC;
}

/*
 * The floor of this offload: parse, the offload's own flow-table lookup
 * (flowtable.h: the same maps, hash and key comparison), redirect to the
 * entry's egress. Everything the offload costs beyond it is the pass rules,
 * the L2 rebuild, NAT and the counters.
 */
SEC("xdp")
int bench_parse_table_redirect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct pkt_hdrs h = {};
	struct pkt p = {};
	struct bench_cfg *cfg;
	struct ft_l2w l2w;
	__u32 zero = 0, ports, protow;

	cfg = bpf_map_lookup_elem(&bench_cfg, &zero);
	if (!cfg)
		return XDP_PASS;
	if (parse_packet(data, data_end, cfg->dsa_proto, 0, 0, &p, &h))
		return XDP_PASS;
	if (ft_key_words(&p, &h, &l2w, &ports, &protow))
		return XDP_PASS;
	if (h.iph) {
		struct bpfqos_flow4 *e =
			ft_lookup4(cfg->seed, ctx->ingress_ifindex, &l2w, h.iph,
				   ports, protow);

		if (!e)
			return XDP_PASS;
		return bpf_redirect_map(&bench_tx, e->nh.ifindex, XDP_PASS);
	}
	if (h.ip6h) {
		struct bpfqos_flow6 *e =
			ft_lookup6(cfg->seed, ctx->ingress_ifindex, &l2w,
				   h.ip6h, ports, protow);

		if (!e)
			return XDP_PASS;
		return bpf_redirect_map(&bench_tx, e->nh.ifindex, XDP_PASS);
	}
	return XDP_PASS;
}

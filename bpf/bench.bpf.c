// SPDX-License-Identifier: GPL-2.0-only
/*
 * References for bench/bpf_offload.rs, which reports the offload program's
 * cost relative to them:
 *  - bench_parse_redirect, the baseline: the shared parser plus a devmap
 *    redirect, no flow lookup and no rewrite;
 *  - bench_parse_lookup_redirect, the floor of any flow offload: the same plus
 *    the flow-table lookup with the offload's own key and map shape;
 *  - bench_pass: nothing, i.e. BPF_PROG_TEST_RUN's own cost per repetition.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "bpfqos_abi.h"
#include "parse.h"

char LICENSE[] SEC("license") = "GPL";

struct bench_cfg {
	__u32 ifindex;	 /* redirect target, also the devmap key */
	__u32 dsa_proto; /* tagger the parser expects */
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

/*
 * Experiment: the same floor with the flow table as a direct-mapped array
 * (slot = multiplicative hash of the key words computed here, key compared
 * here): no kernel function call at all.
 */
#define TBL_SLOTS 65536
struct tbl4_ent {
	struct bpfqos_flow4_key key;
	__u32 egress;
	__u32 pad;
};
struct tbl6_ent {
	struct bpfqos_flow6_key key;
	__u32 egress;
	__u32 pad;
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TBL_SLOTS);
	__type(key, __u32);
	__type(value, struct tbl4_ent);
} bench_tbl4 SEC(".maps");
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TBL_SLOTS);
	__type(key, __u32);
	__type(value, struct tbl6_ent);
} bench_tbl6 SEC(".maps");

#define TBL_MUL 0x9E3779B97F4A7C15ULL
/*
 * The key was written through its struct type: reading it back as __u64
 * needs a may_alias type (through a plain __u64 union member clang hoisted the
 * loads above the stores), and 8-byte alignment (keys and values are
 * 8-aligned: the stack union below, map values by the kernel).
 */
typedef __u64 __attribute__((__may_alias__)) tbl_u64;

static __always_inline __u64 tbl_word(const void *key, int i)
{
	return ((const tbl_u64 *)key)[i];
}

static __always_inline __u32 tbl_hash(const void *key, int n)
{
	__u64 h = 0;
	int i;

#pragma unroll
	for (i = 0; i < n; i++)
		h = (h ^ tbl_word(key, i)) * TBL_MUL;
	return (__u32)(h >> 32) & (TBL_SLOTS - 1);
}

static __always_inline int tbl_eq(const void *a, const void *b, int n)
{
	__u64 d = 0;
	int i;

#pragma unroll
	for (i = 0; i < n; i++)
		d |= tbl_word(a, i) ^ tbl_word(b, i);
	return d == 0;
}

SEC("xdp")
int bench_parse_table_redirect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct pkt_hdrs h = {};
	struct pkt p = {};
	struct bench_cfg *cfg;
	__u32 zero = 0, slot;
	union {
		struct bpfqos_flow4_key k4;
		struct bpfqos_flow6_key k6;
	} k __attribute__((aligned(8)));

	__builtin_memset(&k, 0, sizeof(k));
	cfg = bpf_map_lookup_elem(&bench_cfg, &zero);
	if (!cfg)
		return XDP_PASS;
	if (parse_packet(data, data_end, cfg->dsa_proto, 0, 0, &p, &h))
		return XDP_PASS;
	if (h.iph) {
		struct tbl4_ent *e;

		key4(&k.k4, ctx->ingress_ifindex, &p, &h);
		slot = tbl_hash(&k.k4, 4);
		e = bpf_map_lookup_elem(&bench_tbl4, &slot);
		if (!e || !tbl_eq(&e->key, &k.k4, 4))
			return XDP_PASS;
		return bpf_redirect_map(&bench_tx, e->egress, XDP_PASS);
	}
	if (h.ip6h) {
		struct tbl6_ent *e;

		key6(&k.k6, ctx->ingress_ifindex, &p, &h);
		slot = tbl_hash(&k.k6, 7);
		e = bpf_map_lookup_elem(&bench_tbl6, &slot);
		if (!e || !tbl_eq(&e->key, &k.k6, 7))
			return XDP_PASS;
		return bpf_redirect_map(&bench_tx, e->egress, XDP_PASS);
	}
	return XDP_PASS;
}

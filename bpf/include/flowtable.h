/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Flow-table lookup, the BPF side of the layout and hash described in
 * bpfqos_abi.h (user space: src/dataplane/flowtable.rs).
 *
 * Why not a BPF hash map: its lookup is a chain of kernel calls (hash, bucket
 * walk, memcmp) over a key the program first has to assemble on the stack
 * with narrow stores and the kernel then reads back in wide words (store
 * forwarding fails). Measured (bench/bpf_offload.rs) it cost more than the
 * whole rest of the offload. Here the hash is computed from header fields
 * already in registers, both arrays are looked up by index (inlined by the
 * verifier: no call at all), and the key is compared word by word against
 * map memory. The maps are defined here too, so that every object including
 * this header (the offload, the bench's floor) has the very same tables.
 */
#ifndef BPFQOS_FLOWTABLE_H
#define BPFQOS_FLOWTABLE_H

#include <linux/types.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "bpfqos_abi.h"
#include "parse.h"

/* Key words are read from map memory written by user space as bytes. */
typedef __u32 __attribute__((__may_alias__)) ft_u32;

/*
 * Key words as a native 32-bit load of the key's bytes sees them: first is
 * the field at the lower address.
 */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define FT_W16(first, second) ((__u32)(first) | ((__u32)(second) << 16))
#define FT_B16(first, second) ((__u16)((first) | ((second) << 8)))
#else
#define FT_W16(first, second) (((__u32)(first) << 16) | (__u32)(second))
#define FT_B16(first, second) ((__u16)(((first) << 8) | (second)))
#endif
/* The word holding the protocol byte followed by three zero pad bytes. */
#define FT_PROTO_WORD(proto) FT_W16(FT_B16(proto, 0), 0)

/* The three words of struct bpfqos_l2 (12 bytes), from the parser's fields. */
struct ft_l2w {
	__u32 w[3];
};

static __always_inline void ft_l2_words(const struct bpfqos_l2 *l2,
					struct ft_l2w *out)
{
	out->w[0] = FT_W16(l2->vlan_proto[0], l2->vlan_proto[1]);
	out->w[1] = FT_W16(l2->vlan_tci[0], l2->vlan_tci[1]);
	out->w[2] = FT_W16(l2->pppoe_sid, FT_B16(l2->pppoe, l2->dsa_port));
}

/*
 * The key words of a parsed packet besides its addresses: L2 words, port pair
 * and protocol word. Port pairs by halves: an L4 header is only 2-aligned
 * after qca tags. -1 without a TCP/UDP header (the parser never returns that).
 */
static __always_inline int ft_key_words(const struct pkt *p,
					const struct pkt_hdrs *h,
					struct ft_l2w *l2w, __u32 *ports,
					__u32 *protow)
{
	ft_l2_words(&p->l2, l2w);
	*protow = FT_PROTO_WORD(p->l4_proto);
	if (h->th)
		*ports = FT_W16(h->th->source, h->th->dest);
	else if (h->uh)
		*ports = FT_W16(h->uh->source, h->uh->dest);
	else
		return -1;
	return 0;
}

/* One NH term: 32-bit additions, one 64-bit product. */
static __always_inline __u64 ft_pair(__u32 a, __u32 b, const __u32 *seed, int i)
{
	__u32 x = a + seed[i];
	__u32 y = b + seed[i + 1];

	return (__u64)x * y;
}

static __always_inline __u64 ft_mix(__u64 h)
{
	return (h ^ (h >> 32)) * BPFQOS_HASH_MUL;
}

static __always_inline __u32 ft_bucket(__u64 m)
{
	return (__u32)(m >> 32) & (BPFQOS_FLOW_BUCKETS - 1);
}

static __always_inline __u32 ft_tag(__u64 m)
{
	return (__u32)(m >> 48) | 1;
}

/*
 * Entry index of the first slot carrying `tag`, or -1. Each slot is read
 * once (volatile): its tag and index must come from the same store.
 */
static __always_inline int ft_scan(const struct bpfqos_bucket *b, __u32 tag)
{
#pragma unroll
	for (int i = 0; i < BPFQOS_BUCKET_SLOTS; i++) {
		__u32 s = *(volatile const __u32 *)&b->slot[i];

		if ((s >> 16) == tag)
			return s & 0xffff;
	}
	return -1;
}

/* The flow tables: entries by index, and their hash index (bpfqos_abi.h).
 * Entries are mmapable: the daemon reads their counters and flags from a
 * read-only mapping instead of one bpf() call per entry. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, BPFQOS_MAX_FLOWS);
	__type(key, __u32);
	__type(value, struct bpfqos_flow4);
} flows4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, BPFQOS_MAX_FLOWS);
	__type(key, __u32);
	__type(value, struct bpfqos_flow6);
} flows6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, BPFQOS_FLOW_BUCKETS);
	__type(key, __u32);
	__type(value, struct bpfqos_bucket);
} buckets4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, BPFQOS_FLOW_BUCKETS);
	__type(key, __u32);
	__type(value, struct bpfqos_bucket);
} buckets6 SEC(".maps");

/*
 * ---- lookups ------------------------------------------------------------
 *
 * One function per family on purpose, not one taking the maps as arguments:
 * clang merges such calls and passes the map as a variable, and the verifier
 * only inlines array lookups on a constant map.
 */

/*
 * The IPv4 entry for these header values, or NULL. The key words are never
 * assembled in memory: hashed and compared from registers (flowtable.h).
 */
static __always_inline struct bpfqos_flow4 *
ft_lookup4(const __u32 *seed, __u32 ifindex, const struct ft_l2w *l2,
	   const struct iphdr *iph, __u32 ports, __u32 protow)
{
	__u32 saddr = iph->saddr, daddr = iph->daddr;
	struct bpfqos_bucket *b;
	struct bpfqos_flow4 *e;
	const ft_u32 *kw;
	__u32 bi, idx;
	__u64 m;
	int i;

	m = ft_mix(ft_pair(ifindex, l2->w[0], seed, 0) +
		   ft_pair(l2->w[1], l2->w[2], seed, 2) +
		   ft_pair(saddr, daddr, seed, 4) +
		   ft_pair(ports, protow, seed, 6));
	bi = ft_bucket(m);
	b = bpf_map_lookup_elem(&buckets4, &bi);
	if (!b)
		return NULL;
	i = ft_scan(b, ft_tag(m));
	if (i < 0)
		return NULL;
	idx = i;
	e = bpf_map_lookup_elem(&flows4, &idx);
	if (!e)
		return NULL;
	kw = (const ft_u32 *)&e->key;
	if ((kw[0] ^ ifindex) | (kw[1] ^ l2->w[0]) | (kw[2] ^ l2->w[1]) |
	    (kw[3] ^ l2->w[2]) | (kw[4] ^ saddr) | (kw[5] ^ daddr) |
	    (kw[6] ^ ports) | (kw[7] ^ protow))
		return NULL;
	return e;
}

static __always_inline struct bpfqos_flow6 *
ft_lookup6(const __u32 *seed, __u32 ifindex, const struct ft_l2w *l2,
	   const struct ipv6hdr *ip6h, __u32 ports, __u32 protow)
{
	const __u32 *sa = ip6h->saddr.in6_u.u6_addr32;
	const __u32 *da = ip6h->daddr.in6_u.u6_addr32;
	struct bpfqos_bucket *b;
	struct bpfqos_flow6 *e;
	const ft_u32 *kw;
	__u32 bi, idx, d;
	__u64 m;
	int i;

	m = ft_mix(ft_pair(ifindex, l2->w[0], seed, 0) +
		   ft_pair(l2->w[1], l2->w[2], seed, 2) +
		   ft_pair(sa[0], sa[1], seed, 4) +
		   ft_pair(sa[2], sa[3], seed, 6) +
		   ft_pair(da[0], da[1], seed, 8) +
		   ft_pair(da[2], da[3], seed, 10) +
		   ft_pair(ports, protow, seed, 12));
	bi = ft_bucket(m);
	b = bpf_map_lookup_elem(&buckets6, &bi);
	if (!b)
		return NULL;
	i = ft_scan(b, ft_tag(m));
	if (i < 0)
		return NULL;
	idx = i;
	e = bpf_map_lookup_elem(&flows6, &idx);
	if (!e)
		return NULL;
	kw = (const ft_u32 *)&e->key;
	d = (kw[0] ^ ifindex) | (kw[1] ^ l2->w[0]) | (kw[2] ^ l2->w[1]) |
	    (kw[3] ^ l2->w[2]) | (kw[12] ^ ports) | (kw[13] ^ protow);
	d |= (kw[4] ^ sa[0]) | (kw[5] ^ sa[1]) | (kw[6] ^ sa[2]) |
	     (kw[7] ^ sa[3]);
	d |= (kw[8] ^ da[0]) | (kw[9] ^ da[1]) | (kw[10] ^ da[2]) |
	     (kw[11] ^ da[3]);
	return d ? NULL : e;
}

#endif /* BPFQOS_FLOWTABLE_H */

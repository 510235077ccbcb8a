/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Passive RTT of the TCP traffic the router forwards, offloaded or not.
 *
 * A flow *half* is one direction of a connection as it leaves the router by
 * one device (struct bpfqos_rtt_state, keyed by its tuple on that wire). The
 * programs time packets as they leave ("departures": the XDP fast path when it
 * redirects, the TC egress hook of every lowest device for everything else)
 * and look at every TCP packet that arrives ("arrivals": the parse path of the
 * XDP program or its TC twin), whose reversed tuple names the half it
 * answers. A sample is the time from the router sending a packet out of one
 * side to the router seeing the answer come back on that side: the RTT
 * beyond that side of the router, with no probe sent. Queueing in the
 * router's shapers above the lowest device is not in it; a root qdisc of the
 * lowest device itself runs after TC egress, so its wait is in it
 * (docs/latency.md).
 *
 * Two ways to time a packet, one outstanding probe per half (so at most one
 * sample per half and RTT):
 *  - TCP timestamps: the first packet leaving with a new TSval, matched by
 *    the first packet coming back with that TSecr (as pping/ePPing do); the
 *    echo of a later TSval means ours will not come (lost, coalesced).
 *  - without timestamps, SEQ/ACK: the end of a new data range, matched by the
 *    first ACK covering it; a range sent again while its probe is out makes
 *    the probe worthless (Karn's rule). A half that only sends pure ACKs
 *    (the WAN side of a download) has nothing to time this way, except its
 *    SYN.
 * Departures also count retransmits: data ending at or before the highest
 * sequence end already seen leaving (a keepalive's one old byte excepted).
 *
 * Nothing here changes a packet or a forwarding decision; a packet without
 * a half, a malformed TCP header, a full map only mean fewer samples. The
 * precise clock is read only to start or complete a probe.
 */
#ifndef BPFQOS_RTT_H
#define BPFQOS_RTT_H

#include <linux/types.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "bpfqos_abi.h"

/* Two-way set-associative tables of halves (see bpfqos_abi.h). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BPFQOS_RTT_FLOWS);
	__type(key, __u32);
	__type(value, struct bpfqos_rtt4_slot);
} rtt4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BPFQOS_RTT_FLOWS);
	__type(key, __u32);
	__type(value, struct bpfqos_rtt6_slot);
} rtt6 SEC(".maps");

/* Per (interface slot, side): index slot * 2 + (WAN side). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * BPFQOS_RTT_SLOTS);
	__type(key, __u32);
	__type(value, struct bpfqos_rtt_hist);
} rtt_hist SEC(".maps");

/*
 * Per interface slot: the WAN-side samples' excess delay (sample minus its
 * half's base_us), what autorate reads to see queues building on the line.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BPFQOS_RTT_SLOTS);
	__type(key, __u32);
	__type(value, struct bpfqos_rtt_hist);
} rtt_excess SEC(".maps");

/* Per (circuit, side): circuit << 1 | WAN side, made on its first sample. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BPFQOS_RTT_CIRCUIT_HISTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct bpfqos_rtt_hist);
} rtt_circuit_hist SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BPFQOS_RTT_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} rtt_stats SEC(".maps");

static __always_inline void rtt_stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&rtt_stats, &idx);

	if (v)
		*v += 1;
}

#define RTT_TCP_SYN 0x02
#define RTT_TCP_ACK 0x10
#define RTT_TCP_FIN_SYN 0x03

/* What RTT needs of a TCP packet. */
struct rtt_tcp {
	__u32 seq;   /* host order */
	__u32 ack;   /* host order */
	__u32 len;   /* payload + SYN + FIN: sequence space used */
	__u32 tsval; /* host order, valid if has_ts */
	__u32 tsecr; /* host order, valid if has_ts */
	__u16 segs;  /* packets it stands for (GSO), at least 1 */
	__u8 flags;  /* TCP flags byte */
	__u8 has_ts;
	__u8 valid; /* the fields were read */
};

/* Either family's half key. */
union rtt_key {
	struct bpfqos_rtt4_key k4;
	struct bpfqos_rtt6_key k6;
};

/*
 * One TCP packet as the RTT code sees it, copied out of its headers by the
 * caller: the tuple (IPv4 in word 0 of the addresses), the TCP fields, and
 * the seed of the halves' hash (`control`, which the caller has read).
 */
struct rtt_pkt {
	__be32 saddr[4];
	__be32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u32 ipv6;
	__u32 seed;
	struct rtt_tcp t;
};

/*
 * The two entry points, global (non-static, not inlined) functions: the
 * verifier checks each once, on its own, instead of once per path of every
 * caller (the parser has dozens); a call costs a few ns. Defined in the
 * program's source, after the maps they use.
 */
__noinline int bpfqos_rtt_arrival(struct rtt_pkt *p);
__noinline int bpfqos_rtt_excess(__u32 excess_us, __u32 slot_out,
				 __u32 slot_in);
__noinline int bpfqos_rtt_departure(struct rtt_pkt *p, __u32 out_ifindex,
				    __u32 in_ifindex);

/* a is before b in sequence space (RFC 1982 arithmetic). */
static __always_inline int seq_before(__u32 a, __u32 b)
{
	return (__s32)(a - b) < 0;
}

/*
 * The fields of th (doff already checked by the parser) of a packet whose
 * IP packet is ip_len bytes, the TCP header l4_rel bytes into it. The
 * timestamp option is found in the two layouts stacks send (NOP NOP TS, and
 * TS first); anything else is timed by SEQ/ACK. 0 on success.
 */
static __always_inline int rtt_tcp_fields(struct tcphdr *th, void *data_end,
					  __u32 ip_len, __u32 l4_rel,
					  struct rtt_tcp *t)
{
	__u8 *opt = (__u8 *)(th + 1);
	__u32 hlen;
	__u8 flags;

	if ((void *)(th + 1) > data_end)
		return -1;
	hlen = th->doff * 4;
	if (hlen < sizeof(*th) || ip_len < l4_rel + hlen)
		return -1;
	flags = ((__u8 *)th)[13];
	t->flags = flags;
	t->seq = bpf_ntohl(th->seq);
	t->ack = bpf_ntohl(th->ack_seq);
	t->len = ip_len - l4_rel - hlen + !!(flags & RTT_TCP_SYN) +
		 !!(flags & 0x01);
	t->segs = 1;
	t->has_ts = 0;
	t->valid = 1;
	if (hlen >= sizeof(*th) + 12 && (void *)(opt + 12) <= data_end) {
		__u8 *w;

		if (opt[0] == 1 && opt[1] == 1 && opt[2] == 8 && opt[3] == 10)
			w = opt + 4;
		else if (opt[0] == 8 && opt[1] == 10)
			w = opt + 2;
		else
			return 0;
		if ((void *)(w + 8) > data_end)
			return 0;
		/* Byte loads: the option is only 2-byte aligned. */
		t->tsval = (__u32)w[0] << 24 | (__u32)w[1] << 16 |
			   (__u32)w[2] << 8 | w[3];
		t->tsecr = (__u32)w[4] << 24 | (__u32)w[5] << 16 |
			   (__u32)w[6] << 8 | w[7];
		t->has_ts = 1;
	}
	return 0;
}

/* The precise clock in ~1.024 µs ticks, never 0 (0 means "no probe"). */
static __always_inline __u32 rtt_ticks(void)
{
	__u32 t = (__u32)(bpf_ktime_get_ns() >> 10);

	return t ? t : 1;
}

/* Ticks of 1.024 µs to µs: x * (1 + 1/64 + 1/128 + 1/2048), 0.007 % off. */
static __always_inline __u32 rtt_ticks_to_us(__u32 t)
{
	return t + (t >> 6) + (t >> 7) + (t >> 11);
}

/*
 * Log-scale bucket of a sample: exact below 16 µs, then 8 buckets per
 * octave (bucket = (e - 2) * 8 + the 3 bits below the top one, e = its top
 * bit), the last one holding everything from ~3.9 s on.
 */
static __always_inline __u32 rtt_hist_bucket(__u32 us)
{
	__u32 e = 0, v = us, b;

	if (us < 16)
		return us;
	if (v >= 1 << 16) {
		e += 16;
		v >>= 16;
	}
	if (v >= 1 << 8) {
		e += 8;
		v >>= 8;
	}
	if (v >= 1 << 4) {
		e += 4;
		v >>= 4;
	}
	if (v >= 1 << 2) {
		e += 2;
		v >>= 2;
	}
	if (v >= 1 << 1)
		e += 1;
	/* e >= 4 here. */
	b = ((e - 2) << BPFQOS_RTT_SUB_BITS) |
	    ((us >> (e - BPFQOS_RTT_SUB_BITS)) & 7);
	return b < BPFQOS_RTT_BUCKETS ? b : BPFQOS_RTT_BUCKETS - 1;
}

static __always_inline void rtt_hist_add(struct bpfqos_rtt_hist *h, __u32 b)
{
	if (b < BPFQOS_RTT_BUCKETS)
		__sync_fetch_and_add(&h->bucket[b], 1);
}

static __always_inline void rtt_slot_add(__u32 slot, __u32 wan, __u32 b)
{
	struct bpfqos_rtt_hist *h;
	__u32 key = slot * 2 + wan;

	h = bpf_map_lookup_elem(&rtt_hist, &key);
	if (h)
		rtt_hist_add(h, b);
}

/*
 * A WAN-side sample's delay above its half's base (the queues it met), into
 * the excess histograms of the interfaces it crossed (bpfqos_rtt_excess(),
 * a global function: inlined, its branches multiplied the arrival's paths
 * for the verifier, 88k instructions to 274k).
 */
static __always_inline void rtt_excess_sample(struct bpfqos_rtt_state *s,
					      __u32 us)
{
	if (!s->base_us || us < s->base_us)
		s->base_us = us;
	else
		s->base_us += (us - s->base_us) >> 11;
	bpfqos_rtt_excess(us - s->base_us, s->slot_out, s->slot_in);
}

/* One sample of half s: per flow, per interface and side, per circuit. */
static __always_inline void rtt_sample(struct bpfqos_rtt_state *s, __u32 us)
{
	struct bpfqos_rtt_hist *h;
	__u32 b = rtt_hist_bucket(us), key;
	__u32 wan = s->flags & BPFQOS_RTT_F_WAN ? 1 : 0;

	s->last_us = us;
	if (!s->min_us || us < s->min_us)
		s->min_us = us;
	if (wan)
		rtt_excess_sample(s, us);
	/* Smoothed as TCP does (RFC 6298, alpha 1/8), kept x8. */
	if (!s->srtt8_us)
		s->srtt8_us = us << 3;
	else
		s->srtt8_us += us - (s->srtt8_us >> 3);
	s->samples++;
	rtt_stat_inc(BPFQOS_RTT_STAT_SAMPLES);
	if (s->slot_out)
		rtt_slot_add(s->slot_out, wan, b);
	if (s->slot_in && s->slot_in != s->slot_out)
		rtt_slot_add(s->slot_in, wan, b);
	if (s->circuit) {
		struct bpfqos_rtt_hist *zero;

		key = s->circuit << 1 | wan;
		h = bpf_map_lookup_elem(&rtt_circuit_hist, &key);
		if (!h) {
			/* A zeroed value: the histogram map of slot 0 side 0,
			 * never written (slots start at 1). */
			__u32 z = 0;

			zero = bpf_map_lookup_elem(&rtt_hist, &z);
			if (!zero ||
			    bpf_map_update_elem(&rtt_circuit_hist, &key, zero,
						BPF_NOEXIST))
				rtt_stat_inc(BPFQOS_RTT_STAT_NO_ROOM);
			h = bpf_map_lookup_elem(&rtt_circuit_hist, &key);
		}
		if (h)
			rtt_hist_add(h, b);
	}
}

/* The first slot of the pair key k may sit in (the hash of bpfqos_abi.h). */
static __always_inline __u32 rtt_bucket(int ipv6, const union rtt_key *k,
					__u32 seed)
{
	const __u32 *w = (const __u32 *)k;
	__u32 h = seed;

	h = (h ^ w[0]) * BPFQOS_RTT_HASH_MUL;
	h = (h ^ w[1]) * BPFQOS_RTT_HASH_MUL;
	h = (h ^ w[2]) * BPFQOS_RTT_HASH_MUL;
	if (ipv6) {
		h = (h ^ w[3]) * BPFQOS_RTT_HASH_MUL;
		h = (h ^ w[4]) * BPFQOS_RTT_HASH_MUL;
		h = (h ^ w[5]) * BPFQOS_RTT_HASH_MUL;
		h = (h ^ w[6]) * BPFQOS_RTT_HASH_MUL;
		h = (h ^ w[7]) * BPFQOS_RTT_HASH_MUL;
		h = (h ^ w[8]) * BPFQOS_RTT_HASH_MUL;
	}
	h ^= h >> 16;
	return (h & (BPFQOS_RTT_FLOWS / 2 - 1)) * 2;
}

static __always_inline int rtt_key_eq(int ipv6, const void *slot_key,
				      const union rtt_key *k)
{
	const __u32 *a = slot_key, *b = (const __u32 *)k;

	if (a[0] != b[0] || a[1] != b[1] || a[2] != b[2])
		return 0;
	if (!ipv6)
		return 1;
	return a[3] == b[3] && a[4] == b[4] && a[5] == b[5] && a[6] == b[6] &&
	       a[7] == b[7] && a[8] == b[8];
}

/* Slot i of the family's table: its key and state. */
static __always_inline void *rtt_slot(int ipv6, __u32 i,
				      struct bpfqos_rtt_state **s)
{
	if (ipv6) {
		struct bpfqos_rtt6_slot *x = bpf_map_lookup_elem(&rtt6, &i);

		if (!x)
			return NULL;
		*s = &x->s;
		return &x->key;
	} else {
		struct bpfqos_rtt4_slot *x = bpf_map_lookup_elem(&rtt4, &i);

		if (!x)
			return NULL;
		*s = &x->s;
		return &x->key;
	}
}

/* The half with key k, if there is one; *first: its pair's first slot. */
static __always_inline struct bpfqos_rtt_state *
rtt_half(int ipv6, const union rtt_key *k, __u32 seed, __u32 *first)
{
	struct bpfqos_rtt_state *s = NULL;
	__u32 i = rtt_bucket(ipv6, k, seed);
	void *key;

	*first = i;
	key = rtt_slot(ipv6, i, &s);
	if (key && s && (s->flags & BPFQOS_RTT_F_USED) &&
	    rtt_key_eq(ipv6, key, k))
		return s;
	key = rtt_slot(ipv6, i + 1, &s);
	if (key && s && (s->flags & BPFQOS_RTT_F_USED) &&
	    rtt_key_eq(ipv6, key, k))
		return s;
	return NULL;
}

/*
 * A packet arriving: does it answer the probe of the half going the other way
 * (the half of its reversed tuple, whose key is left in k)? Returns that half
 * with the sample in *us when it does (the caller records it: rtt_sample()),
 * NULL otherwise.
 */
static __always_inline struct bpfqos_rtt_state *
rtt_answered(const struct rtt_pkt *p, union rtt_key *k, __u32 seed, __u32 *us)
{
	const struct rtt_tcp *t = &p->t;
	struct bpfqos_rtt_state *s;
	__u32 first;

	if (p->ipv6) {
		__builtin_memcpy(k->k6.saddr, p->daddr, 16);
		__builtin_memcpy(k->k6.daddr, p->saddr, 16);
		k->k6.sport = p->dport;
		k->k6.dport = p->sport;
	} else {
		k->k4.saddr = p->daddr[0];
		k->k4.daddr = p->saddr[0];
		k->k4.sport = p->dport;
		k->k4.dport = p->sport;
	}
	s = rtt_half(p->ipv6, k, seed, &first);
	if (!s || !s->t_sent)
		return NULL;
	if (s->flags & BPFQOS_RTT_F_PROBE_TS) {
		if (!t->has_ts)
			return NULL;
		if (t->tsecr == s->tsval) {
			*us = rtt_ticks_to_us(rtt_ticks() - s->t_sent);
			s->t_sent = 0;
			return s;
		}
		if (seq_before(s->tsval, t->tsecr)) {
			/* A later TSval echoed: ours never will be. */
			rtt_stat_inc(BPFQOS_RTT_STAT_DISCARDED);
			s->t_sent = 0;
		}
		return NULL;
	}
	if (!(t->flags & RTT_TCP_ACK) || seq_before(t->ack, s->seq_end))
		return NULL;
	*us = rtt_ticks_to_us(rtt_ticks() - s->t_sent);
	s->t_sent = 0;
	if (s->flags & BPFQOS_RTT_F_KARN) {
		rtt_stat_inc(BPFQOS_RTT_STAT_DISCARDED);
		return NULL;
	}
	return s;
}

/* The key of the half a packet leaving with p's tuple belongs to. */
static __always_inline void rtt_key_of(const struct rtt_pkt *p,
				       union rtt_key *k)
{
	if (p->ipv6) {
		__builtin_memcpy(k->k6.saddr, p->saddr, 16);
		__builtin_memcpy(k->k6.daddr, p->daddr, 16);
		k->k6.sport = p->sport;
		k->k6.dport = p->dport;
	} else {
		k->k4.saddr = p->saddr[0];
		k->k4.daddr = p->daddr[0];
		k->k4.sport = p->sport;
		k->k4.dport = p->dport;
	}
}

/* Copies what the RTT code needs out of a parsed TCP packet. */
static __always_inline void rtt_pkt_of(struct rtt_pkt *r, const __be32 *saddr,
				       const __be32 *daddr, int ipv6,
				       const struct tcphdr *th, __u32 seed)
{
	if (ipv6) {
		__builtin_memcpy(r->saddr, saddr, 16);
		__builtin_memcpy(r->daddr, daddr, 16);
	} else {
		r->saddr[0] = saddr[0];
		r->daddr[0] = daddr[0];
	}
	r->sport = th->source;
	r->dport = th->dest;
	r->ipv6 = ipv6;
	r->seed = seed;
}

/*
 * Makes the half of a packet leaving with key k in the pair starting at
 * `first` (the caller found none there): in a free slot, or one whose half
 * has been idle for BPFQOS_RTT_IDLE_S. The caller passes what only it knows:
 * the slots, side and circuit. NULL when both slots are busy (counted).
 * Two CPUs making halves in the same slot at once may mix them: the race is
 * as rare as the collision, and costs at most a wrong sample.
 */
static __always_inline struct bpfqos_rtt_state *
rtt_new_half(int ipv6, const union rtt_key *k, __u32 first, __u32 seen,
	     __u32 ifindex, __u8 slot_out, __u8 slot_in, __u32 wan,
	     __u32 circuit)
{
	struct bpfqos_rtt_state *s = NULL;
	void *key = rtt_slot(ipv6, first, &s);

	if (!key || !s ||
	    ((s->flags & BPFQOS_RTT_F_USED) &&
	     seen - s->seen < BPFQOS_RTT_IDLE_S)) {
		key = rtt_slot(ipv6, first + 1, &s);
		if (!key || !s ||
		    ((s->flags & BPFQOS_RTT_F_USED) &&
		     seen - s->seen < BPFQOS_RTT_IDLE_S)) {
			rtt_stat_inc(BPFQOS_RTT_STAT_NO_ROOM);
			return NULL;
		}
	}
	/* The state first, the key and the USED flag last. */
	__builtin_memset(s, 0, sizeof(*s));
	s->ifindex = ifindex;
	s->slot_out = slot_out;
	s->slot_in = slot_in;
	s->circuit = circuit;
	s->seen = seen;
	if (ipv6)
		__builtin_memcpy(key, &k->k6, sizeof(k->k6));
	else
		__builtin_memcpy(key, &k->k4, sizeof(k->k4));
	s->flags = BPFQOS_RTT_F_USED | (wan ? BPFQOS_RTT_F_WAN : 0);
	rtt_stat_inc(BPFQOS_RTT_STAT_HALVES);
	return s;
}

/*
 * Whether a packet leaving is worth a new half: it can start a probe (a
 * timestamp, data, a SYN). A pure ACK without timestamps never times
 * anything, and a FIN or RST half is not worth starting.
 */
static __always_inline int rtt_worth_a_half(const struct rtt_tcp *t)
{
	if (t->flags & 0x05) /* FIN, RST */
		return 0;
	return t->has_ts || t->len;
}

/*
 * A packet leaving for half s: count a retransmit, start a probe when none
 * is outstanding. coarse_ns is the cheap clock, for giving up on a probe
 * whose echo never came and for the half's last-seen time.
 */
static __always_inline void rtt_departure(struct bpfqos_rtt_state *s,
					  const struct rtt_tcp *t,
					  __u64 coarse_ns)
{
	__u32 end = t->seq + t->len;
	__u32 now = (__u32)(coarse_ns >> 10);
	__u32 seen = (__u32)(coarse_ns >> 30);
	int resent = 0, new_ts;

	if (s->seen != seen)
		s->seen = seen;
	/*
	 * A SYN starts the sequence and timestamp spaces afresh (a tuple used
	 * again), unless it is the same SYN again (a retransmit, below).
	 */
	if ((t->flags & RTT_TCP_SYN) &&
	    !((s->flags & BPFQOS_RTT_F_SEQ_VALID) && end == s->max_seq))
		s->flags &= ~(BPFQOS_RTT_F_SEQ_VALID | BPFQOS_RTT_F_TS_VALID);
	if (t->len) {
		s->packets += t->segs;
		if ((s->flags & BPFQOS_RTT_F_SEQ_VALID) &&
		    !seq_before(s->max_seq, end)) {
			/* A keepalive sends one old byte; a window probe one
			 * new byte, which is not behind. */
			if (!(t->len == 1 && end == s->max_seq &&
			      !(t->flags & RTT_TCP_FIN_SYN))) {
				resent = 1;
				s->retrans += t->segs;
			}
			/* Karn: an outstanding SEQ probe inside it times nothing. */
			if (s->t_sent && !(s->flags & BPFQOS_RTT_F_PROBE_TS) &&
			    seq_before(t->seq, s->seq_end))
				s->flags |= BPFQOS_RTT_F_KARN;
		} else {
			s->max_seq = end;
			s->flags |= BPFQOS_RTT_F_SEQ_VALID;
		}
	}
	new_ts = t->has_ts && (!(s->flags & BPFQOS_RTT_F_TS_VALID) ||
			       t->tsval != s->last_tsval);
	if (new_ts) {
		s->last_tsval = t->tsval;
		s->flags |= BPFQOS_RTT_F_TS_VALID;
	}
	if (s->t_sent) {
		/* Unanswered for BPFQOS_RTT_PROBE_MAX_MS: try again. */
		if ((__s32)(now - s->t_sent) <
		    (__s32)(BPFQOS_RTT_PROBE_MAX_MS * 1000 / 1024 * 1000))
			return;
		rtt_stat_inc(BPFQOS_RTT_STAT_EXPIRED);
		s->t_sent = 0;
	}
	if (new_ts) {
		/* Only the first packet with a TSval: later ones share it. */
		s->tsval = t->tsval;
		s->flags =
			(s->flags & ~BPFQOS_RTT_F_KARN) | BPFQOS_RTT_F_PROBE_TS;
	} else if (!t->has_ts && t->len && !resent) {
		s->seq_end = end;
		s->flags &= ~(BPFQOS_RTT_F_KARN | BPFQOS_RTT_F_PROBE_TS);
	} else {
		return;
	}
	s->t_sent = rtt_ticks();
	rtt_stat_inc(BPFQOS_RTT_STAT_PROBES);
}

#endif /* BPFQOS_RTT_H */

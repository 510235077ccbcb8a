/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The one packet parser of bpfqos, shared by every program.
 *
 * One helper per protocol: each checks that its header lies inside the
 * packet, advances the cursor past it and returns the next protocol (or a
 * negative value when the packet is not something we understand). Callers
 * chain them; there are no loops, so the verifier sees a straight path with
 * at most two VLAN steps.
 *
 * Walk: [gswip RX tag] MACs [mtk | qca RX tag] ethertype, 0-2 VLAN tags,
 * PPPoE session (PPP IPv4 / IPv6), IPv4 without options or fragments, IPv6
 * with TCP/UDP directly after the fixed header, TCP or UDP.
 *
 * Verifier notes: every packet access is preceded by a `pos + len > end`
 * check on the very pointer that is dereferenced (the verifier does not
 * carry a range across pointer arithmetic done on a different register), and
 * cursors only move forward by constants, so packet offsets stay bounded.
 */
#ifndef BPFQOS_PARSE_H
#define BPFQOS_PARSE_H

#include <linux/types.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "bpfqos_abi.h"

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif
#ifndef ETH_P_PPP_SES
#define ETH_P_PPP_SES 0x8864
#endif
#define PPP_IP 0x0021
#define PPP_IPV6 0x0057

#define DSA_MTK_LEN 4
#define DSA_QCA_LEN 2
#define DSA_GSWIP_RX_LEN 8
#define DSA_GSWIP_TX_LEN 4
#define DSA_MTK_TX_LEN 4
#define PPPOE_SES_HLEN 8 /* 6 bytes PPPoE header + 2 bytes PPP protocol */
#define VLAN_HLEN 4

/* Largest L2 header we ever read or write: gswip + MACs + 2 VLAN + PPPoE. */
#define BPFQOS_MAX_L2                                                          \
	(DSA_GSWIP_RX_LEN + ETH_HLEN + 2 * VLAN_HLEN + PPPOE_SES_HLEN)

struct cursor {
	void *pos;
	void *end;
};

struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

struct pppoe_ses_hdr {
	__u8 ver_type; /* 0x11 */
	__u8 code;     /* 0x00 for session data */
	__be16 sid;
	__be16 length; /* PPP payload length, including the protocol field */
	__be16 ppp_proto;
};

/* What the parser found, for the offload program. */
struct pkt {
	struct bpfqos_l2
		l2;   /* ingress encapsulation, as it goes into the key */
	__u16 l3_off; /* offset of the IP header from the start of the frame */
	__u16 l4_off;
	__u16 ip_len;	 /* IP total length (IPv4 tot_len, IPv6 40 + payload) */
	__u16 pppoe_len; /* PPPoE length field (host order) if pppoe */
	__u8 ipv6;	 /* 0: IPv4, 1: IPv6 */
	__u8 l4_proto;
	__u8 tcp_flags; /* flags byte (13) of the TCP header, 0 for UDP */
	__u8 pad;
	__be16 ppp_proto; /* PPP protocol of a PPPoE session frame (even one
			   * the parser then refused), 0 without PPPoE */
	__u16 pad2;
};

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_RST 0x04

/* Moves the cursor by len if len bytes are there; returns the old position. */
static __always_inline void *cursor_pull(struct cursor *c, __u32 len)
{
	void *p = c->pos;

	if (p + len > c->end)
		return NULL;
	c->pos = p + len;
	return p;
}

/* gswip puts its 8-byte RX header in front of the destination MAC. */
static __always_inline int parse_dsa_gswip_rx(struct cursor *c, __u8 *port)
{
	__u8 *tag = cursor_pull(c, DSA_GSWIP_RX_LEN);

	if (!tag)
		return -1;
	/* byte 7, bits 6:4: source port (tag_gswip.c GSWIP_RX_SPPID) */
	*port = (tag[7] >> 4) & 0x7;
	return 0;
}

/* mtk: 4 bytes between source MAC and ethertype; port in bits 2:0. */
static __always_inline int parse_dsa_mtk_rx(struct cursor *c, __u8 *port)
{
	__u8 *tag = cursor_pull(c, DSA_MTK_LEN);

	if (!tag)
		return -1;
	*port = tag[1] & 0x7;
	return 0;
}

/*
 * qca: 2 bytes between source MAC and ethertype. Bits 15:14 version (2),
 * 10:6 frame type (0 = normal; MIB and register replies are not packets),
 * 2:0 source port.
 */
static __always_inline int parse_dsa_qca_rx(struct cursor *c, __u8 *port)
{
	__u8 *tag = cursor_pull(c, DSA_QCA_LEN);
	__u16 hdr;

	if (!tag)
		return -1;
	hdr = ((__u16)tag[0] << 8) | tag[1];
	if ((hdr >> 14) != 2 || ((hdr >> 6) & 0x1f) != 0)
		return -1;
	*port = hdr & 0x7;
	return 0;
}

/*
 * Ethernet, with the DSA tag of the attach point: returns the ethertype
 * (network order) or -1.
 */
static __always_inline int parse_eth(struct cursor *c, __u8 dsa_proto,
				     __u8 *dsa_port)
{
	__be16 *type;

	if (dsa_proto == BPFQOS_DSA_GSWIP && parse_dsa_gswip_rx(c, dsa_port))
		return -1;
	if (!cursor_pull(c, 2 * ETH_ALEN))
		return -1;
	if (dsa_proto == BPFQOS_DSA_MTK && parse_dsa_mtk_rx(c, dsa_port))
		return -1;
	if (dsa_proto == BPFQOS_DSA_QCA && parse_dsa_qca_rx(c, dsa_port))
		return -1;
	type = cursor_pull(c, sizeof(*type));
	if (!type)
		return -1;
	return *type;
}

/*
 * Ethernet as it leaves by a DSA conduit, with the TX tag the tagger put in
 * (for TC egress, which only reads addresses and ports past it): gswip 4
 * bytes before the MACs, mtk 4 after them (carrying the outer VLAN, if any,
 * in place of the 802.1Q header), qca 2 after them (version 2). Returns the
 * ethertype (network order) or -1; there is no source port to record.
 */
static __always_inline int parse_eth_tx(struct cursor *c, __u8 dsa_proto)
{
	__be16 *type;
	__u8 *tag;

	if (dsa_proto == BPFQOS_DSA_GSWIP && !cursor_pull(c, DSA_GSWIP_TX_LEN))
		return -1;
	if (!cursor_pull(c, 2 * ETH_ALEN))
		return -1;
	if (dsa_proto == BPFQOS_DSA_MTK && !cursor_pull(c, DSA_MTK_TX_LEN))
		return -1;
	if (dsa_proto == BPFQOS_DSA_QCA) {
		tag = cursor_pull(c, DSA_QCA_LEN);
		if (!tag || (tag[0] >> 6) != 2)
			return -1;
	}
	type = cursor_pull(c, sizeof(*type));
	if (!type)
		return -1;
	return *type;
}

static __always_inline int proto_is_vlan(__be16 proto)
{
	return proto == bpf_htons(ETH_P_8021Q) ||
	       proto == bpf_htons(ETH_P_8021AD);
}

/* One VLAN tag: records TPID and VID (PCP/DEI masked), returns inner type. */
static __always_inline int parse_vlan(struct cursor *c, __be16 tpid,
				      __be16 *out_tpid, __be16 *out_tci)
{
	struct vlan_hdr *vh = cursor_pull(c, sizeof(*vh));

	if (!vh)
		return -1;
	*out_tpid = tpid;
	*out_tci = vh->tci & bpf_htons(0x0fff);
	return vh->encap_proto;
}

/*
 * A 16-bit length from the wire in host order, with a range the verifier can
 * see. Kernels before 6.13 or so forget a register's bounds across BPF_END
 * (the byte swap), and 6.12 then rejects packet-pointer arithmetic with it
 * ("math between pkt pointer and register with unbounded min value"). The
 * empty asm keeps clang from dropping the mask, which it knows is redundant.
 */
static __always_inline __u32 wire_len16(__be16 v)
{
	__u32 x = bpf_ntohs(v);

	asm volatile("" : "+r"(x));
	return x & 0xffff;
}

/* PPPoE session: returns ETH_P_IP / ETH_P_IPV6 (network order) or -1. */
static __always_inline int parse_pppoe(struct cursor *c, __be16 *sid,
				       __u16 *len, __be16 *ppp_proto)
{
	struct pppoe_ses_hdr *ph = cursor_pull(c, sizeof(*ph));

	if (!ph)
		return -1;
	if (ph->ver_type != 0x11 || ph->code != 0)
		return -1;
	*sid = ph->sid;
	*len = wire_len16(ph->length);
	*ppp_proto = ph->ppp_proto;
	if (ph->ppp_proto == bpf_htons(PPP_IP))
		return bpf_htons(ETH_P_IP);
	if (ph->ppp_proto == bpf_htons(PPP_IPV6))
		return bpf_htons(ETH_P_IPV6);
	return -1;
}

/* RFC 1071 sum over the 20-byte option-less header; 0 when valid. */
static __always_inline __u16 ipv4_hdr_csum_check(struct iphdr *iph)
{
	__u16 *w = (__u16 *)iph;
	__u32 sum = 0;

	/* Unrolled by the compiler: constant trip count, no loop for the verifier. */
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*iph) / 2); i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/*
 * IPv4: version 4, no options, not a fragment, TCP or UDP, total length
 * inside the frame, header checksum valid. Returns the L4 protocol or -1.
 */
static __always_inline int parse_ipv4(struct cursor *c, struct iphdr **out,
				      __u16 *ip_len)
{
	struct iphdr *iph = cursor_pull(c, sizeof(*iph));
	__u16 tot;

	if (!iph)
		return -1;
	if (iph->version != 4 || iph->ihl != 5)
		return -1;
	/* MF set or a non-zero offset: a fragment; DF alone is fine. */
	if (iph->frag_off & bpf_htons(0x3fff))
		return -1;
	if (iph->protocol != IPPROTO_TCP && iph->protocol != IPPROTO_UDP)
		return -1;
	tot = wire_len16(iph->tot_len);
	if (tot < sizeof(*iph) || (void *)iph + tot > c->end)
		return -1;
	if (ipv4_hdr_csum_check(iph))
		return -1;
	*out = iph;
	*ip_len = tot;
	return iph->protocol;
}

/* IPv6: TCP or UDP right after the fixed header, no jumbograms. */
static __always_inline int parse_ipv6(struct cursor *c, struct ipv6hdr **out,
				      __u16 *ip_len)
{
	struct ipv6hdr *ip6h = cursor_pull(c, sizeof(*ip6h));
	__u32 tot;

	if (!ip6h)
		return -1;
	if (ip6h->version != 6)
		return -1;
	if (ip6h->nexthdr != IPPROTO_TCP && ip6h->nexthdr != IPPROTO_UDP)
		return -1;
	tot = sizeof(*ip6h) + wire_len16(ip6h->payload_len);
	if (tot > 0xffff || (void *)ip6h + tot > c->end)
		return -1;
	*out = ip6h;
	*ip_len = tot;
	return ip6h->nexthdr;
}

/* TCP: data offset sane and the header (with options) inside the packet. */
static __always_inline int parse_tcp(struct cursor *c, __u16 l4_len,
				     struct tcphdr **out)
{
	struct tcphdr *th = cursor_pull(c, sizeof(*th));
	__u16 hlen;

	if (!th)
		return -1;
	hlen = th->doff * 4;
	if (hlen < sizeof(*th) || hlen > l4_len)
		return -1;
	*out = th;
	return 0;
}

/* UDP: the length field must equal the IP payload length. */
static __always_inline int parse_udp(struct cursor *c, __u16 l4_len,
				     struct udphdr **out)
{
	struct udphdr *uh = cursor_pull(c, sizeof(*uh));

	if (!uh)
		return -1;
	if (bpf_ntohs(uh->len) != l4_len || l4_len < sizeof(*uh))
		return -1;
	*out = uh;
	return 0;
}

/* The headers a successful parse points at. */
struct pkt_hdrs {
	struct iphdr *iph;    /* NULL for IPv6 */
	struct ipv6hdr *ip6h; /* NULL for IPv4 */
	struct tcphdr *th;    /* NULL for UDP */
	struct udphdr *uh;    /* NULL for TCP */
};

/*
 * The whole walk. `vlan0_tpid`/`vlan0_tci` carry an outer tag the kernel has
 * already taken out of the data (TC on a VLAN-accelerated device; 0 from XDP).
 * `tx`: the frame is leaving (its DSA tag is the TX one). Returns 0 when the
 * packet is a TCP/UDP packet we understand.
 */
static __always_inline int parse_packet_dir(void *data, void *data_end,
					    __u8 dsa_proto, __be16 vlan0_tpid,
					    __be16 vlan0_tci, struct pkt *p,
					    struct pkt_hdrs *h, int tx)
{
	struct cursor c = {.pos = data, .end = data_end};
	__u16 l4_len;
	int proto;

	if (tx)
		proto = parse_eth_tx(&c, dsa_proto);
	else
		proto = parse_eth(&c, dsa_proto, &p->l2.dsa_port);
	if (proto < 0)
		return -1;
	/*
	 * VLAN slots are written with constant indexes: variable-offset stack
	 * writes are refused by older verifiers.
	 */
	if (vlan0_tpid) {
		/* Outer tag already in skb metadata: one more may be in the data. */
		p->l2.vlan_proto[0] = vlan0_tpid;
		p->l2.vlan_tci[0] = vlan0_tci & bpf_htons(0x0fff);
		if (proto_is_vlan(proto)) {
			proto = parse_vlan(&c, proto, &p->l2.vlan_proto[1],
					   &p->l2.vlan_tci[1]);
			if (proto < 0)
				return -1;
		}
	} else if (proto_is_vlan(proto)) {
		proto = parse_vlan(&c, proto, &p->l2.vlan_proto[0],
				   &p->l2.vlan_tci[0]);
		if (proto < 0)
			return -1;
		if (proto_is_vlan(proto)) {
			proto = parse_vlan(&c, proto, &p->l2.vlan_proto[1],
					   &p->l2.vlan_tci[1]);
			if (proto < 0)
				return -1;
		}
	}
	/* A third tag is not ours to understand. */
	if (proto_is_vlan(proto))
		return -1;
	if (proto == bpf_htons(ETH_P_PPP_SES)) {
		proto = parse_pppoe(&c, &p->l2.pppoe_sid, &p->pppoe_len,
				    &p->ppp_proto);
		if (proto < 0)
			return -1;
		p->l2.pppoe = 1;
	}

	p->l3_off = c.pos - data;
	if (proto == bpf_htons(ETH_P_IP)) {
		proto = parse_ipv4(&c, &h->iph, &p->ip_len);
		l4_len = p->ip_len - sizeof(struct iphdr);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		proto = parse_ipv6(&c, &h->ip6h, &p->ip_len);
		l4_len = p->ip_len - sizeof(struct ipv6hdr);
		p->ipv6 = 1;
	} else {
		return -1;
	}
	if (proto < 0)
		return -1;
	/* PPPoE must carry exactly the IP packet (kernel: pppoe_rcv trims). */
	if (p->l2.pppoe && p->pppoe_len != p->ip_len + 2)
		return -1;

	p->l4_off = c.pos - data;
	p->l4_proto = proto;
	if (proto == IPPROTO_TCP) {
		if (parse_tcp(&c, l4_len, &h->th))
			return -1;
		p->tcp_flags = ((__u8 *)h->th)[13];
	} else {
		if (parse_udp(&c, l4_len, &h->uh))
			return -1;
	}
	return 0;
}

/* A frame as it arrives (see parse_packet_dir()). */
static __always_inline int parse_packet(void *data, void *data_end,
					__u8 dsa_proto, __be16 vlan0_tpid,
					__be16 vlan0_tci, struct pkt *p,
					struct pkt_hdrs *h)
{
	return parse_packet_dir(data, data_end, dsa_proto, vlan0_tpid,
				vlan0_tci, p, h, 0);
}

#endif /* BPFQOS_PARSE_H */

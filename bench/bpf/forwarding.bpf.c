// SPDX-License-Identifier: GPL-2.0-only
/*
 * The forwarding bench's own XDP programs (bench/forwarding.sh), one object:
 *
 *  bench_gen   the traffic generator: run through BPF_PROG_RUN with
 *              BPF_F_TEST_XDP_LIVE_FRAMES in the client namespace, it sends
 *              the test frame out of the veth named in gen_target (the frame
 *              is then received by the veth's peer, the router's LAN port);
 *              it rewrites the frame from gen_frame every time, see below;
 *  bench_gen_flows  bench_gen over gen_flows[0] flows: the UDP source port
 *              of each frame is the template's plus a per-CPU counter modulo
 *              the flow count (UDP checksum 0: no fix-up), for the CPU
 *              steering bench (bench/steering.sh);
 *  bench_bare  the ceiling: redirect every frame to the devmap's only slot,
 *              without even parsing it;
 *  bench_gen_tcp  the same with a TCP frame (gen_frame_tcp: 78 bytes, the
 *              timestamp option and 12 bytes of data, IP ID BENCH_TCP_ID), for
 *              the passive RTT phase;
 *  bench_sink  on the server's veth: count and drop IPv4 UDP and the TCP
 *              frames of bench_gen_tcp (the bench traffic) so the server's
 *              stack costs nothing; everything else (ARP, real TCP of the
 *              warm-up and admission-latency phases) passes.
 *
 * Configuration is written by the script with bpftool into pinned maps: ifindexes
 * only exist once the namespaces do.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} gen_target SEC(".maps");

#define GEN_FRAME_LEN 60

struct gen_frame {
	__u8 bytes[GEN_FRAME_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_frame);
} gen_frame SEC(".maps");

#define GEN_TCP_FRAME_LEN 78
#define BENCH_TCP_ID 0xb9f0

struct gen_tcp_frame {
	__u8 bytes[GEN_TCP_FRAME_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_tcp_frame);
} gen_frame_tcp SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} bare_tx SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sink_count SEC(".maps");

SEC("xdp")
int bench_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	__u32 *ifindex = bpf_map_lookup_elem(&gen_target, &zero);
	struct gen_frame *tmpl = bpf_map_lookup_elem(&gen_frame, &zero);

	/* Live-frame mode: XDP_DROP frees the frame, nothing is sent. */
	if (!ifindex || !*ifindex || !tmpl)
		return XDP_DROP;
	if (data + GEN_FRAME_LEN > data_end)
		return XDP_DROP;
	/*
	 * Live frames come from a page pool that is filled with the input once;
	 * a redirected frame's page comes back to it after the router has
	 * rewritten it in place (MACs, TTL, NAT: XDP and kernel path alike). So
	 * every frame is written afresh: 60 bytes, a few stores.
	 */
	__builtin_memcpy(data, tmpl->bytes, GEN_FRAME_LEN);
	return bpf_redirect(*ifindex, 0);
}

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} gen_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} gen_seq SEC(".maps");

SEC("xdp")
int bench_gen_flows(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	__u32 *ifindex = bpf_map_lookup_elem(&gen_target, &zero);
	struct gen_frame *tmpl = bpf_map_lookup_elem(&gen_frame, &zero);
	__u32 *flows = bpf_map_lookup_elem(&gen_flows, &zero);
	__u32 *seq = bpf_map_lookup_elem(&gen_seq, &zero);
	__u16 *sport;
	__u32 n;

	if (!ifindex || !*ifindex || !tmpl || !flows || !seq)
		return XDP_DROP;
	if (data + GEN_FRAME_LEN > data_end)
		return XDP_DROP;
	__builtin_memcpy(data, tmpl->bytes, GEN_FRAME_LEN);
	n = *flows ? *flows : 1;
	/* Ethernet 14 + IPv4 20: the UDP source port. */
	sport = data + 34;
	*sport = bpf_htons(bpf_ntohs(*sport) + (__u16)(*seq % n));
	*seq += 1;
	return bpf_redirect(*ifindex, 0);
}

SEC("xdp")
int bench_gen_tcp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	__u32 *ifindex = bpf_map_lookup_elem(&gen_target, &zero);
	struct gen_tcp_frame *tmpl = bpf_map_lookup_elem(&gen_frame_tcp, &zero);

	if (!ifindex || !*ifindex || !tmpl)
		return XDP_DROP;
	if (data + GEN_TCP_FRAME_LEN > data_end)
		return XDP_DROP;
	__builtin_memcpy(data, tmpl->bytes, GEN_TCP_FRAME_LEN);
	return bpf_redirect(*ifindex, 0);
}

SEC("xdp")
int bench_bare(struct xdp_md *ctx)
{
	/* XDP_PASS when the slot is empty, so a misconfiguration shows as 0 pps. */
	return bpf_redirect_map(&bare_tx, 0, XDP_PASS);
}

SEC("xdp")
int bench_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = data + sizeof(*eth);
	__u32 zero = 0;
	__u64 *n;

	if ((void *)(iph + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	if (iph->protocol != IPPROTO_UDP &&
	    !(iph->protocol == IPPROTO_TCP &&
	      iph->id == bpf_htons(BENCH_TCP_ID)))
		return XDP_PASS;
	n = bpf_map_lookup_elem(&sink_count, &zero);
	if (n)
		*n += 1; /* per-CPU slot: no atomic needed */
	return XDP_DROP;
}

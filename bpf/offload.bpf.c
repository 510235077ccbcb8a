// SPDX-License-Identifier: GPL-2.0-only
/*
 * bpfqos flow offload: XDP program and its TC-ingress twin, one source.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "bpfqos_abi.h"
#include "parse.h"

char LICENSE[] SEC("license") = "GPL";

#define MAX_IFACES 4096
#define MAX_FLOWS 32768

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
	__uint(max_entries, MAX_IFACES);
	__type(key, __u32);
	__type(value, struct bpfqos_iface);
} ifaces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_FLOWS);
	__type(key, struct bpfqos_flow4_key);
	__type(value, struct bpfqos_flow4);
} flows4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_FLOWS);
	__type(key, struct bpfqos_flow6_key);
	__type(value, struct bpfqos_flow6);
} flows6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} tx_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps");

/*
 * Never used by the programs: it puts the event layout and the enums into the
 * object's BTF, from which libbpf-cargo generates the Rust types.
 */
struct bpfqos_btf_anchor {
	struct bpfqos_event event;
	enum bpfqos_dsa_proto dsa_proto;
	enum bpfqos_action action;
	enum bpfqos_event_type event_type;
	enum bpfqos_stat stat;
} bpfqos_btf_anchor = {};

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	if (v)
		*v += 1; /* per-CPU slot: no atomic needed */
}

static __always_inline __u8 iface_dsa_proto(__u32 ifindex)
{
	struct bpfqos_iface *cfg = bpf_map_lookup_elem(&ifaces, &ifindex);

	return cfg ? cfg->dsa_proto : BPFQOS_DSA_NONE;
}

static __always_inline int offload(void *data, void *data_end, __u32 ifindex,
				   __be16 vlan0_tpid, __be16 vlan0_tci)
{
	struct pkt p = {};
	struct pkt_hdrs h = {};

	stat_inc(BPFQOS_STAT_SEEN);
	if (parse_packet(data, data_end, iface_dsa_proto(ifindex), vlan0_tpid,
			 vlan0_tci, &p, &h)) {
		stat_inc(BPFQOS_STAT_PASS_PARSE);
		return -1;
	}
	stat_inc(BPFQOS_STAT_PASS_NO_FLOW);
	return -1;
}

SEC("xdp")
int bpfqos_xdp(struct xdp_md *ctx)
{
	offload((void *)(long)ctx->data, (void *)(long)ctx->data_end,
		ctx->ingress_ifindex, 0, 0);
	return XDP_PASS;
}

SEC("tc")
int bpfqos_tc(struct __sk_buff *skb)
{
	__be16 tpid = skb->vlan_present ? (__be16)skb->vlan_proto : 0;

	/* At TC ingress skb->ifindex is the device the hook runs on. */
	offload((void *)(long)skb->data, (void *)(long)skb->data_end,
		skb->ifindex, tpid, bpf_htons(skb->vlan_tci));
	return TC_ACT_OK;
}

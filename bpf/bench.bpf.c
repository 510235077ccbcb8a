// SPDX-License-Identifier: GPL-2.0-only
/*
 * Baseline for bench/bpf_offload.rs: the bare minimum an offload needs, the
 * shared parser plus a devmap redirect, no flow lookup and no rewrite. The
 * offload program's cost is reported relative to this.
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

/*
 * Nothing but the return: what BPF_PROG_TEST_RUN's loop costs per repetition,
 * included in every other number.
 */
SEC("xdp")
int bench_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

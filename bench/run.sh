#!/usr/bin/env bash
# `make bench`: every benchmark, each printing ratios measured side by side in one run. Timing
# never fails anything (this machine is shared and noisy); a broken bench does.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench: needs root (BPF, network namespaces)" >&2; exit 1; }

echo "== per-packet cost of the data path (BPF_PROG_TEST_RUN, offload vs parse-and-redirect baseline)"
cargo bench --locked --bench bpf_offload

echo
echo "== 64-byte UDP forwarding through a namespace router (kernel vs bpfqos XDP/TC vs bare redirect)"
bash bench/forwarding.sh target/release/bpfqos

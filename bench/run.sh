#!/usr/bin/env bash
# `make bench`: every benchmark, each printing ratios measured side by side in one run. Timing
# never fails anything (this machine is shared and noisy); a broken bench does.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench: needs root (BPF, network namespaces)" >&2; exit 1; }

echo "== per-packet cost of the data path (BPF_PROG_TEST_RUN, offload vs parse-and-redirect baseline; circuit classification)"
cargo bench --locked --bench bpf_offload

echo
echo "== circuits: the control plane's cost of 10,000 circuits (reloads, next to tc -batch)"
cargo bench --locked --bench circuits

echo
echo "== 64-byte UDP forwarding through a namespace router (kernel vs bpfqos XDP/TC vs bare redirect; through a shaper that never limits)"
bash bench/forwarding.sh target/release/bpfqos

echo
echo "== against the kernel's nft flowtable (OpenWrt's software offloading), in the 6.12 VM: kernel vs flowtable vs bpfqos XDP/TC (emulated: ratios indicative)"
if command -v vng >/dev/null && ls /boot/vmlinuz-6.12.*-amd64 >/dev/null 2>&1; then
	bash bench/vm-flowtable.sh target/release/bpfqos
else
	echo "skipped: no VM (sudo bash .ci/vm-deps.sh installs virtme-ng and the 6.12 kernel)"
fi

echo
echo "== CPU steering: kernel-path forwarding of 256 UDP flows received on one CPU (off vs RPS vs bpfqos steering)"
bash bench/steering.sh target/release/bpfqos

echo
echo "== scale: the daemon with 10,000 and 65,536 conntrack connections (admission, idle CPU, RSS, stalls, a route change)"
bash bench/scale.sh target/release/bpfqos

echo
echo "== churn soak: 20,000 long-lived flows and 500 new connections a second for 10 minutes, a forced event loss (RSS, rate, table against conntrack)"
bash bench/soak.sh

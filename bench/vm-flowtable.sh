#!/usr/bin/env bash
# bpfqos against the incumbent, the kernel's nft flowtable (OpenWrt's "software flow
# offloading"), which the host kernel here lacks: boots Debian's 6.12 kernel under virtme-ng
# (as tests/vm/run.sh does; software-emulated, TCG) and runs bench/forwarding.sh inside it with
# the variants kernel, flowtable, xdp and tc: 64-byte UDP packets per second through the same
# namespace router, the same admitted flow, interleaved in rounds, counted at the far
# namespace over fixed windows. Prints the table with ratios against the kernel path and
# against the flowtable.
#
# Emulated: every instruction is translated by QEMU, so absolute rates mean nothing and the
# ratios are indicative only (the kernel's own code and a BPF program's JITed code are slowed by
# different factors). A benchmark, never a test: nothing here fails on a figure.
#
# Usage: bench/vm-flowtable.sh [path/to/bpfqos]   (root; default target/release/bpfqos)
# Environment: ROUNDS (3), WINDOW seconds (2), VM_CPUS (1), VM_MEMORY (2G), VM_KERNEL,
#   BENCH_BPF_OBJ (bench/bpf/forwarding.bpf.c's object; default: the newest under target/).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BIN=$(realpath "${1:-$ROOT/target/release/bpfqos}")

die() { echo "vm-flowtable bench: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root"
[ -x "$BIN" ] || die "$BIN missing: run 'make release' first"
# shellcheck disable=SC2012 # plain build output names
obj=${BENCH_BPF_OBJ:-$(ls -t "$ROOT"/target/*/build/bpfqos-*/out/bench/forwarding.bpfel.o 2>/dev/null | head -n1)}
[ -r "${obj:-/nonexistent}" ] || die "no forwarding.bpfel.o under target/: build first (or set BENCH_BPF_OBJ)"
# shellcheck disable=SC2012
kernel=${VM_KERNEL:-$(ls /boot/vmlinuz-6.12.*-amd64 2>/dev/null | sort -V | tail -n1)}
[ -r "${kernel:-/nonexistent}" ] || die "no /boot/vmlinuz-6.12.*-amd64 (sudo bash .ci/vm-deps.sh)"
command -v vng >/dev/null || die "vng (virtme-ng) not found (sudo bash .ci/vm-deps.sh)"

q() { printf '%q' "$1"; }
guest="modprobe -a nf_flow_table nf_flow_table_inet nft_flow_offload nf_conntrack nf_nat nft_masq"
guest+=" nft_chain_nat veth bridge 2>&1;"
guest+=" echo \"guest: kernel \$(uname -r), \$(nproc) cpu(s), software-emulated (TCG)\";"
guest+=" env VARIANTS='kernel flowtable xdp tc' PARTS= ROUNDS=$(q "${ROUNDS:-3}") WINDOW=$(q "${WINDOW:-2}")"
guest+=" BENCH_BPF_OBJ=$(q "$obj") bash $(q "$HERE/forwarding.sh") $(q "$BIN"); echo \"VM-BENCH-EXIT \$?\""

echo "vm-flowtable: $(basename "$kernel"), TCG, bpfqos $BIN"
log=$(mktemp /tmp/bpfqos-vm-flowtable.XXXXXX.log)
timeout -k 10 "${VM_TIMEOUT:-900}" vng --run "$kernel" --disable-kvm --user root \
	--memory "${VM_MEMORY:-2G}" --cpus "${VM_CPUS:-1}" -- "$guest" </dev/null 2>&1 | tee "$log"
grep -q '^VM-BENCH-EXIT 0' "$log" || die "the bench did not finish in the VM (log: $log)"
echo "(software-emulated 6.12 VM: absolute rates mean nothing, ratios are indicative)"
rm -f "$log"

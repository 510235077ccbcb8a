#!/bin/bash
# Full-kernel test harness: boots Debian's bookworm-backports 6.12 kernel (the kernel of OpenWrt
# 25.12) under virtme-ng with the host's root filesystem, software-emulated, and runs the
# scenarios in tests/vm/scenarios/ in ONE boot. See docs/testing-vm.md.
#
#   tests/vm/run.sh                    all scenarios
#   tests/vm/run.sh pppoe-vlan-nat mtu only these
#   tests/vm/run.sh --list             scenario names
#
# Environment:
#   BPFQOS_BIN             bpfqos binary (default: target/debug/bpfqos if built)
#   BPFQOS_EXPECT_OFFLOAD  0 = skip each scenario's strict "most of the transfer offloaded" check
#                          (default 1: it runs, in CI too)
#   BPFQOS_BPF_OBJ         BPF object for the verifier scenario (default: newest
#                          target/*/build/bpfqos-*/out/offload.bpfel.o)
#   VM_KERNEL VM_CPUS VM_MEMORY VM_TIMEOUT   (defaults: newest /boot/vmlinuz-6.12.*-amd64, 1, 2G, 1500
#                          per boot; a scenario's "# vm-cpus: N" line boots it with N vCPUs)
#                          (1 vCPU: measured faster than 2 under TCG on a shared 2-core host)
# Output: one line per scenario (PASS name / FAIL name / PENDING name/part: reason), the failed
# checks' own words again ("---- why"; also written to $BPFQOS_VM_WHY if set), then exactly
# "N passed, M failed". Exit status 0 only if nothing failed.
set -uo pipefail

VMDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$VMDIR/../.." && pwd)
ALL_SCENARIOS=(pppoe-vlan-nat qinq-ipv6 mtu pppoe-reconnect flowtable verifier qdisc shaping circuits rtt autorate steering)

if [ "${1:-}" = "--list" ]; then
    printf '%s\n' "${ALL_SCENARIOS[@]}"
    exit 0
fi
if [ "$#" -gt 0 ]; then scenarios=("$@"); else scenarios=("${ALL_SCENARIOS[@]}"); fi
for sc in "${scenarios[@]}"; do
    [ -f "$VMDIR/scenarios/$sc.sh" ] || { echo "run.sh: unknown scenario '$sc' (see --list)" >&2; exit 2; }
done

missing=()
[ "$(id -u)" -eq 0 ] || missing+=("root")
# shellcheck disable=SC2012 # plain file names: the newest kernel by version, object by time
kernel=${VM_KERNEL:-$(ls /boot/vmlinuz-6.12.*-amd64 2>/dev/null | sort -V | tail -n1)}
[ -n "$kernel" ] && [ -r "$kernel" ] || missing+=("kernel /boot/vmlinuz-6.12.*-amd64")
command -v vng >/dev/null || missing+=("vng (virtme-ng)")
command -v qemu-system-x86_64 >/dev/null || missing+=("qemu-system-x86_64")
if [ "${#missing[@]}" -gt 0 ]; then
    echo "run.sh: missing prerequisites: ${missing[*]} (install with: sudo bash .ci/vm-deps.sh)" >&2
    exit 3
fi

bin=${BPFQOS_BIN:-}
[ -z "$bin" ] && [ -x "$REPO/target/debug/bpfqos" ] && bin=$REPO/target/debug/bpfqos
# shellcheck disable=SC2012
obj=${BPFQOS_BPF_OBJ:-$(ls -t "$REPO"/target/*/build/bpfqos-*/out/offload.bpfel.o 2>/dev/null | head -n1)}

cpus=${VM_CPUS:-1}
mem=${VM_MEMORY:-2G}
vm_timeout=${VM_TIMEOUT:-1500}
log=$(mktemp /tmp/bpfqos-vm-run.XXXXXX.log)

q() { printf '%q' "$1"; }
base_cmd="env BPFQOS_BIN=$(q "$bin") BPFQOS_BPF_OBJ=$(q "$obj") BPFQOS_EXPECT_OFFLOAD=$(q "${BPFQOS_EXPECT_OFFLOAD:-1}") BPFQOS_VM_TRACE=$(q "${BPFQOS_VM_TRACE:-0}")"
base_cmd+=" SCENARIO_TIMEOUT=$(q "${SCENARIO_TIMEOUT:-240}") bash $(q "$VMDIR/guest.sh")"

# One boot per vCPU count: a scenario asks for more than $cpus with a "# vm-cpus: N" line (CPU
# steering needs two); the rest share the first boot.
declare -A group
for sc in "${scenarios[@]}"; do
    n=$(sed -n 's/^# vm-cpus: \([0-9][0-9]*\)$/\1/p' "$VMDIR/scenarios/$sc.sh" | head -n1)
    group[${n:-$cpus}]+=" $sc"
done
boots=$(printf '%s\n' "${!group[@]}" | sort -n)

echo "run.sh: $(basename "$kernel"), --memory $mem, TCG (--disable-kvm); scenarios: ${scenarios[*]}"
echo "run.sh: bpfqos binary: ${bin:-none}; BPF object: ${obj:-none}; log: $log"
t0=$(date +%s)
: >"$log"
vm_rc=0
nboots=0
for n in $boots; do
    guest_cmd=$base_cmd
    # shellcheck disable=SC2086 # the group is a space-separated list of names
    for sc in ${group[$n]}; do guest_cmd+=" $(q "$sc")"; done
    echo "run.sh: boot with --cpus $n:${group[$n]}" | tee -a "$log"
    nboots=$((nboots + 1))
    # No stdin: vng must not wait for a terminal. The VM sees the host's root filesystem
    # read-only with throw-away overlays (/etc, /tmp, /var, ...): nothing it does reaches the host.
    timeout -k 10 "$vm_timeout" vng --run "$kernel" --disable-kvm --user root \
        --memory "$mem" --cpus "$n" -- "$guest_cmd" </dev/null 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    [ "$rc" -ne 0 ] && vm_rc=$rc
done
t1=$(date +%s)

# Count the guest's result lines; a scenario without a result (VM died, timeout) fails.
[ "$(grep -c '^VM-DONE' "$log")" -ge "$nboots" ] || echo "run.sh: a guest did not finish (vng exit $vm_rc)"
results=$(grep -E '^(PASS|FAIL|PENDING) [^ ]+' "$log")
passed=0
failed=0
pend=0
for sc in "${scenarios[@]}"; do
    if grep -qx "PASS $sc" <<<"$results"; then
        passed=$((passed + 1))
    elif grep -qx "FAIL $sc" <<<"$results"; then
        failed=$((failed + 1))
    else
        echo "FAIL $sc: no result from the VM (vng exit $vm_rc; see $log)"
        failed=$((failed + 1))
    fi
done
passed=$((passed + $(grep -c '^PASS .*/' <<<"$results")))
failed=$((failed + $(grep -c '^FAIL .*/' <<<"$results")))
pend=$(grep -c '^PENDING ' <<<"$results")

echo "==== VM results ($(basename "$kernel"), $((t1 - t0)) s wall including boot)"
[ -n "$results" ] && printf '%s\n' "$results"
[ "$pend" -gt 0 ] && echo "$pend pending (not counted as passed)"
if [ "$failed" -gt 0 ]; then
    # The failed checks in their own words, once more at the end (where a CI excerpt looks),
    # and for the caller (tests/vm.rs puts them in its panic message).
    # Per failed scenario: its last console lines (notes, the check that failed, the command's
    # last words).
    # shellcheck disable=SC2013 # scenario names are single words
    why=$(for sc in $(sed -n 's/^FAIL \([^ :]*\).*/\1/p' <<<"$results" | sort -u); do
        grep -E "^  \[$sc( [^]]*)?\] |^      \| " "$log" | grep -v '\] daemon: libbpf: ' | tail -n 6
    done | tail -n 24)
    if [ -n "$why" ]; then
        echo "---- why"
        printf '%s\n' "$why"
    fi
    if [ -n "${BPFQOS_VM_WHY:-}" ]; then printf '%s\n' "$why" >"$BPFQOS_VM_WHY"; fi
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]

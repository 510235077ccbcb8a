#!/bin/bash
# Runs inside the VM (started by tests/vm/run.sh): loads the modules, then runs each scenario in
# its own subshell, namespaces and time limit, and prints one result line per scenario:
#   PASS name | FAIL name | PENDING name/part: reason   (plus PASS/FAIL name/part sub-results)
# right after each scenario, and at the end a "VM-DONE" marker that tells run.sh the guest
# finished.
set -uo pipefail

VMDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export VMDIR
SCENARIO_TIMEOUT=${SCENARIO_TIMEOUT:-240}

echo "guest: kernel $(uname -r), $(nproc) cpu(s), up $(cut -d' ' -f1 /proc/uptime) s"
if ! modprobe -a 8021q pppoe pppox ppp_generic sch_cake sch_fq_codel sch_netem sch_htb \
    nf_flow_table nf_flow_table_inet nft_flow_offload nf_conntrack nf_nat nft_masq \
    nft_chain_nat veth bridge dummy ifb cls_bpf act_mirred 2>&1; then
    echo "guest: modprobe failed; scenarios that need the missing modules will fail"
fi
# The root namespace does nothing but host the scenarios' namespaces.
sysctl -qw net.ipv4.ip_forward=0 kernel.panic_on_oops=1 2>/dev/null || true
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true

times=()
for sc in "$@"; do
    file=$VMDIR/scenarios/$sc.sh
    work=$(mktemp -d "/tmp/bpfqos-vm-$sc.XXXXXX")
    : >"$work/results"
    echo "---- $sc"
    t0=$(date +%s.%N)
    if [ ! -f "$file" ]; then
        echo "no such scenario: $file" >"$work/log"
        rc=1
    else
        # A scenario may ask for more with a "# vm-timeout: SECONDS" line.
        limit=$(sed -n 's/^# vm-timeout: \([0-9][0-9]*\)$/\1/p' "$file" | head -n1)
        limit=${limit:-$SCENARIO_TIMEOUT}
        SC=$sc WORK=$work RESULTS=$work/results timeout -k 10 "$limit" \
            bash -c 'source "$VMDIR/lib.sh" && source "$1" && scenario_main' _ "$file" \
            3>&1 >"$work/log" 2>&1
        rc=$?
    fi
    t1=$(date +%s.%N)
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
    # Safety sweep: nothing a scenario created outlives it.
    for ns in $(ip netns list | awk -v p="$sc-" 'index($1,p)==1{print $1}'); do
        for p in $(ip netns pids "$ns"); do kill -9 "$p" 2>/dev/null; done
        ip netns del "$ns"
    done
    if [ "$rc" -eq 0 ]; then
        line="PASS $sc"
    else
        [ "$rc" -eq 124 ] && echo "scenario exceeded ${limit:-$SCENARIO_TIMEOUT}s" >>"$work/log"
        echo "---- log of $sc (last 120 lines) ----"
        tail -n 120 "$work/log"
        [ -f "$work/diag.txt" ] && cat "$work/diag.txt"
        echo "---- end log of $sc ----"
        line="FAIL $sc"
    fi
    echo "$line"
    cat "$work/results"
    times+=("$(printf '%-22s %6s s' "$sc" "$secs")")
done
echo "---- scenario times (software-emulated VM; behaviour, not performance)"
printf '  %s\n' "${times[@]}"
echo "VM-DONE up $(cut -d' ' -f1 /proc/uptime) s"

#!/usr/bin/env bash
# CPU steering bench (issue 15): kernel-path forwarding (bridge, conntrack, NAT, routing) of
# many UDP flows whose receive work all lands on one CPU, three ways side by side in
# interleaved rounds:
#   off    nothing spreads the work: CPU 0 does it all;
#   rps    the kernel's RPS on lan1 (rps_cpus = every CPU): it hashes in the receive path and
#          queues each packet to its CPU's backlog;
#   steer  bpfqos' CPU steering (option steering '1'; offload and RTT off, so every frame takes
#          the kernel path): its XDP program hashes the inner 5-tuple, cpumap queues to the CPU;
#   steer-rest  the same with steering_cpus = every CPU but 0 (the receiving one): all of the
#          kernel work moved off the receiving CPU, as RPS users do on two-core routers;
#   steer-nic  `steer` as on a NIC: frames whose hash picks the receiving CPU are passed in place
#          instead of going through that CPU's queue. bpfqos does that only where receive is
#          pinned to a CPU by an interrupt (a NIC); a veth receives where its sender runs, so the
#          daemon never sets it here. The generator is pinned to CPU 0, so receive is pinned
#          too, and the bench sets the device flag itself (bpftool, `ifaces` entry of lan1).
#
#   LAN client            router                                   WAN server
#   c0 198.18.1.2 ── lan1 [br-lan 198.18.1.1]  NAT  wan0 198.19.0.1 ── s0 198.19.0.2
#   bench_gen_flows, pinned to CPU 0                                   bench_sink (count, drop)
#
# The generator (BPF_PROG_RUN with live frames) runs pinned to CPU 0; lan1's NAPI then runs
# there too, as a NIC with one receive queue would put it. It sends 60-byte UDP frames over
# FLOWS source ports (each a conntrack entry, masqueraded). Printed: packets per second at the
# server and each CPU's busy and softirq share during the window, per variant, and the
# ratios against `off`. Timing never fails the bench; a broken setup does.
#
# Usage: bench/steering.sh [path/to/bpfqos]   (root; default target/release/bpfqos)
# Environment: ROUNDS (3), WINDOW seconds (3), FLOWS (256).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BIN=$(realpath "${1:-$ROOT/target/release/bpfqos}")
ROUNDS=${ROUNDS:-3}
WINDOW=${WINDOW:-3}
FLOWS=${FLOWS:-256}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
HELPER=$HERE/forwarding_gen.py
VARIANTS=(off rps steer steer-nic steer-rest)

die() { echo "steering bench: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, BPF)"
[ -x "$BIN" ] || die "$BIN missing: run 'make release' first"
for t in ip nft ethtool bpftool taskset; do
	command -v "$t" >/dev/null || die "$t not found (.ci/install-deps.sh installs it)"
done
NCPU=$(nproc)
[ "$NCPU" -ge 2 ] || die "one CPU: nothing to steer to"

P=bqst$$
WORK=$(mktemp -d /tmp/bpfqos-steer-XXXXXX)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

say "namespace router $P ($NCPU CPUs, $FLOWS flows)"
bench_router
bench_programs
# shellcheck disable=SC2046 # le32 prints four separate byte arguments
bpftool map update pinned "$BB/maps/gen_flows" key 0 0 0 0 value $(le32 "$FLOWS")
ip -n "$SRV" link set dev s0 xdpdrv pinned "$BB/progs/bench_sink"

mkdir -p "$WORK/etc"
write_config() {
	cat >"$WORK/etc/bpfqos" <<UCI
config globals 'globals'
	option offload '0'
	option rtt '0'
	option steering '$1'
	option steering_cpus '${2:-0-$((NCPU - 1))}'

config interface 'lan'
	option device 'br-lan'

config interface 'wan'
	option device 'wan0'
UCI
}
write_config 0
SOCK=$WORK/bpfqos.sock
nsx "$RTR" "$BIN" daemon --config-dir "$WORK/etc" --socket "$SOCK" \
	--pin-dir "$WORK/bpffs/bpfqos" 2>"$WORK/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
[ -S "$SOCK" ] || { cat "$WORK/daemon.log" >&2; die "daemon did not start"; }

RPS_FILE=/sys/class/net/lan1/queues/rx-0/rps_cpus
ALL_CPUS=$(printf '%x' $(((1 << NCPU) - 1)))
use_variant() {
	local want=false
	nsx "$RTR" sh -c "echo 0 > $RPS_FILE"
	case $1 in
	rps) nsx "$RTR" sh -c "echo $ALL_CPUS > $RPS_FILE" ;;
	steer | steer-rest | steer-nic) want=true ;;
	esac
	if [ "$1" = steer-rest ]; then
		write_config 1 "1-$((NCPU - 1))"
	else
		write_config "$([ "$want" = true ] && echo 1 || echo 0)"
	fi
	"$BIN" reload --socket "$SOCK" >/dev/null || die "reload failed"
	for _ in $(seq 50); do
		[ "$(status | jget steering.active)" = "$([ "$want" = true ] && echo True || echo False)" ] && break
		sleep 0.1
	done
	[ "$(status | jget steering.active)" = "$([ "$want" = true ] && echo True || echo False)" ] ||
		die "$1: steering.active is not $want: $(status | jget steering)"
	if [ "$1" = steer-nic ]; then
		# ifaces[lan1].flags |= BPFQOS_IFACE_F_STEER_HERE (1 << 3); struct bpfqos_iface is
		# {u8 dsa_proto, u8 rtt_slot, u8 pad[2], u32 flags}, flags' low byte at offset 4.
		local map key val
		map=$(bpftool map show -j | "$PY" -c 'import json,sys
ids = [m["id"] for m in json.load(sys.stdin) if m.get("name") == "ifaces"]
print(max(ids))')
		key=$(le32 "$LAN1_IDX")
		# shellcheck disable=SC2086
		val=$(bpftool map lookup id "$map" key $key -j | "$PY" -c 'import json,sys
v = [int(b, 16) for b in json.load(sys.stdin)["value"]]
v[4] |= 8
print(" ".join(str(b) for b in v))')
		# shellcheck disable=SC2086
		bpftool map update id "$map" key $key value $val
	fi
}

RESULTS=$WORK/results
: >"$RESULTS"
measure() {
	local v=$1 round=$2 out
	use_variant "$v"
	out=$(taskset -c 0 ip netns exec "$LAN" "$PY" "$HELPER" gen --prog "$BB/progs/bench_gen_flows" \
		--count-map "$BB/maps/sink_count" --frame-map "$BB/maps/gen_frame" --src-mac "$C0_MAC" \
		--dst-mac "$BR_MAC" --src-ip 198.18.1.2 --dst-ip 198.19.0.2 --sport 20000 --dport 9000 \
		--window "$WINDOW") || die "$v: generator failed: $out"
	echo "$v $round $out" >>"$RESULTS"
	"$PY" - "$v" "$round" "$out" <<'PY' >&2
import json, sys
v, r, o = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
cpus = "  ".join(f"cpu{c} busy {s['busy']:.0%} softirq {s['softirq']:.0%}"
                 for c, s in sorted(o["cpus"].items(), key=lambda x: int(x[0])))
print(f"   round {r}  {v:<10} {o['pps'] / 1e6:6.3f} Mpps   {cpus}")
PY
}

say "$ROUNDS rounds x ${#VARIANTS[@]} variants, ${WINDOW} s windows, order rotated per round"
for ((r = 0; r < ROUNDS; r++)); do
	for ((i = 0; i < ${#VARIANTS[@]}; i++)); do
		measure "${VARIANTS[$(((i + r) % ${#VARIANTS[@]}))]}" $((r + 1))
	done
done
# What the data path counted, as proof the steered variant spread the work.
status | jget steering.per_cpu >&2
CT=$(nsx "$RTR" sh -c 'cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo ?')

"$PY" - "$RESULTS" "$FLOWS" "$CT" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    v, r, o = line.split(" ", 2)
    rows.setdefault(v, []).append(json.loads(o))
med = {v: statistics.median(x["pps"] for x in xs) for v, xs in rows.items()}
print(f"\nCPU steering: kernel-path forwarding of {sys.argv[2]} UDP flows (conntrack entries "
      f"{sys.argv[3]}), receive on CPU 0; median of {len(rows['off'])} rounds")
print(f"  {'variant':<11}{'Mpps':>8}{'vs off':>9}   per-CPU busy / softirq (mean)")
for v in ("off", "rps", "steer", "steer-nic", "steer-rest"):
    xs = rows[v]
    cpus = sorted(xs[0]["cpus"], key=int)
    share = "  ".join(
        f"cpu{c} {statistics.mean(x['cpus'][c]['busy'] for x in xs):.0%}"
        f"/{statistics.mean(x['cpus'][c]['softirq'] for x in xs):.0%}" for c in cpus)
    print(f"  {v:<11}{med[v] / 1e6:>8.3f}{med[v] / med['off']:>8.2f}x   {share}")
best = max(("steer", "steer-nic", "steer-rest"), key=lambda v: med[v])
goal = med[best] >= 1.6 * med["off"]
rps = med[best] >= med["rps"]
print(f"  goal steering >= 1.6x off: {'met' if goal else 'NOT met'} "
      f"({best}: {med[best] / med['off']:.2f}x); at least as good as RPS: "
      f"{'yes' if rps else 'no'} ({med[best] / med['rps']:.2f}x RPS)")
PY

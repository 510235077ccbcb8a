#!/usr/bin/env bash
# Scale bench (issue 17, "Footprint", "Event loop never stalls"): the daemon with tens of
# thousands of offloaded connections in the demo router (tests/demo/router.sh).
#
# The connections are conntrack entries made over ctnetlink by bench/ct_inject.py (established
# TCP, client ports 20000+, both families interleaved): the kernel announces them with the same
# NEW events as real ones, and the daemon admits them through the same path (route lookups,
# bridge port, liberal TCP tracking, two flow entries each). Phases:
#   1. SMALL connections (default 10,000): admission time, daemon CPU over WINDOW idle seconds
#      (no packet moves: the cost of keeping idle flows), RSS;
#   2. a route change that moves every flow's route (a more specific route to the server's
#      prefix, both families): the daemon's own measure of the re-resolution
#      (status offload.reresolution), and the longest event-loop stall;
#   3. up to LARGE connections (default 65,536): admission, idle CPU, RSS, the longest stall;
#   4. every entry deleted: how long until the table is empty, the longest stall.
# Figures are printed, never judged: a broken bench exits non-zero, a slow machine does not.
#
# Usage: bench/scale.sh [path/to/bpfqos]   (root; default target/release/bpfqos)
# Environment: SMALL (10000), LARGE (65536), WINDOW idle seconds (20); PERF_DATA=path: profile
# each idle window with perf (path.1, path.2, ...).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BIN=$(realpath "${1:-$ROOT/target/release/bpfqos}")
SMALL=${SMALL:-10000}
LARGE=${LARGE:-65536}
WINDOW=${WINDOW:-20}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
CT=$HERE/ct_inject.py

die() {
	echo "scale bench: $*" >&2
	[ -f "${WORK:-}/daemon.log" ] && tail -n 20 "$WORK/daemon.log" >&2
	exit 1
}
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, BPF)"
[ -x "$BIN" ] || die "$BIN missing: run 'make release' first"
if [ "$LARGE" -lt "$SMALL" ] || [ $((SMALL % 2)) -ne 0 ]; then die "LARGE must be at least SMALL, SMALL even"; fi

P=bqscl$$
WORK=$(mktemp -d /tmp/bpfqos-scale-XXXXXX)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

say "namespace router $P"
bench_router
mkdir -p "$WORK/bpffs"
mount -t bpf bpf "$WORK/bpffs"
# Static everything the daemon resolves, so that admission never waits for ARP/ND or learning.
# C0_MAC and S0_MAC come from bench_router.
ip -n "$RTR" neigh replace fd00:1::2 lladdr "$C0_MAC" dev br-lan nud permanent
ip -n "$RTR" neigh replace fd00:2::2 lladdr "$S0_MAC" dev wan0 nud permanent
bridge -n "$RTR" fdb replace "$C0_MAC" dev lan1 master static

mkdir -p "$WORK/etc"
cat >"$WORK/etc/bpfqos" <<UCI
config globals 'globals'
	option enabled '1'
	option offload '1'
	option log_level '${LOG_LEVEL:-info}'

config interface 'lan'
	option device 'br-lan'

config interface 'wan'
	option device 'wan0'
UCI
SOCK=$WORK/bpfqos.sock
# Not through nsx (a function: `&` would fork a subshell): ip execs the daemon, so $! is its pid.
ip netns exec "$RTR" "$BIN" daemon --config-dir "$WORK/etc" --socket "$SOCK" \
	--pin-dir "$WORK/bpffs/bpfqos" 2>"$WORK/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
[ -S "$SOCK" ] || { cat "$WORK/daemon.log" >&2; die "daemon did not start"; }

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$DAEMON_PID/status"; }
# What of it is the daemon's own memory (heap, stacks: RssAnon), the rest being mapped files
# and the BPF maps it maps (the flow entries and their index: kernel memory that exists
# whether or not the daemon maps it).
anon_kib() { awk '/^RssAnon:/ { print $2 }' "/proc/$DAEMON_PID/status"; }
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$DAEMON_PID/status"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$DAEMON_PID/stat"; }
now_ms() { date +%s%3N; }
connections() { status | jget offload.connections; }

# idle_cpu PHASE: percent of one core the daemon used over WINDOW seconds.
idle_cpu() {
	local t0 c0 t1 c1
	t0=$(now_ms) c0=$(cpu_ticks)
	if [ -n "${PERF_DATA:-}" ]; then # where the idle time goes: perf report -i $PERF_DATA.N
		perf record -q -F 499 --call-graph dwarf,16384 -o "$PERF_DATA.$1" -p "$DAEMON_PID" -- sleep "$WINDOW"
	else
		sleep "$WINDOW"
	fi
	t1=$(now_ms) c1=$(cpu_ticks)
	"$PY" -c 'import os,sys
c0, c1, t0, t1 = map(int, sys.argv[1:])
hz = os.sysconf("SC_CLK_TCK")
print("%.3f" % ((c1 - c0) / hz * 1000 / (t1 - t0) * 100))' "$c0" "$c1" "$t0" "$t1"
}

# settle N SECONDS [STILL_MS]: from T0 (ms, the phase's start; now if unset), until the daemon reports N offloaded connections, or the count has
# not moved for STILL_MS (3000; a connection the hash index cannot place stays on the kernel path: counted in
# offload.manager.rejected); prints "MS COUNT", MS when the count last moved.
settle() {
	local want=$1 limit=$2 still=${3:-3000} t0 n=-1 last=-1 moved
	t0=${T0:-$(now_ms)} moved=$t0
	while [ $(($(now_ms) - t0)) -lt $((limit * 1000)) ]; do
		n=$(connections)
		[ "$n" != "$last" ] && { last=$n moved=$(now_ms); }
		if [ "$n" -eq "$want" ] || [ $(($(now_ms) - moved)) -ge "$still" ]; then
			echo $((moved - t0)) "$n"
			return 0
		fi
		sleep 0.05
	done
	echo "scale bench: $n of $want connections offloaded after ${limit}s" >&2
	return 1
}

# status_ms: the median time of 9 status requests, one after another (what a LuCI page or
# `ubus call bpfqos status` waits for; the daemon's event loop is blocked that long).
status_ms() {
	local t0 all=()
	for _ in 1 2 3 4 5 6 7 8 9; do
		t0=$(date +%s%N)
		status >/dev/null
		all+=($((($(date +%s%N) - t0) / 1000000)))
	done
	printf '%s\n' "${all[@]}" | sort -n | sed -n 5p
}

# The longest event-loop stall since the last call (the daemon's last-minute maximum is a
# sliding window: read it right after each phase).
stall() { status | jget event_loop | "$PY" -c 'import json,sys
e = json.load(sys.stdin)
g = e.get if isinstance(e, dict) else lambda k: "?"
print("%s ms (%s); since start %s ms (%s)" % (g("max_last_minute_ms"), g("max_last_minute_what"), g("max_ms"), g("max_what")))'; }

sleep 2
RSS0=$(rss_kib) ANON0=$(anon_kib)
CPU0=$(idle_cpu 0)
say "no connections: RSS $RSS0 KiB, idle CPU $CPU0 % of a core"

half() { echo $(($1 / 2)) $(($1 - $1 / 2)); }
# grow PHASE TOTAL LIMIT: conntrack up to TOTAL connections (both families, those of earlier
# phases kept), then admission, stall, idle CPU and RSS into ADMIT<PHASE> N<PHASE> ...
grow() {
	local phase=$1 total=$2 limit=$3 admit n st cpu rss
	read -r V4 V6 <<<"$(half "$total")"
	say "phase $phase: up to $total connections ($V4 IPv4, $V6 IPv6)"
	T0=$(now_ms)
	nsx "$RTR" "$PY" "$CT" add --v4 "$V4" --v6 "$V6" --skip "${SKIP:-0}" >/dev/null
	read -r admit n <<<"$(settle "$total" "$limit")" || die "admission of $total did not complete"
	st=$(stall)
	sleep 2
	cpu=$(idle_cpu "$phase")
	rss=$(rss_kib) anon=$(anon_kib)
	sms=$(status_ms)
	say "  $n admitted in $admit ms; idle CPU $cpu %; RSS $rss KiB (anonymous $anon); stall $st; status request $sms ms"
	printf -v "ADMIT$phase" %s "$admit"
	printf -v "N$phase" %s "$n"
	printf -v "STALL$phase" %s "$st"
	printf -v "CPU$phase" %s "$cpu"
	printf -v "RSS$phase" %s "$rss"
	printf -v "ANON$phase" %s "$anon"
	printf -v "SMS$phase" %s "$sms"
	SKIP=$V4
}
grow 1 "$SMALL" 300

say "phase 2: a route change under $SMALL flows"
ip -n "$RTR" route add 198.19.0.0/25 dev wan0
ip -n "$RTR" -6 route add fd00:2::/96 dev wan0
sleep 3
RERES=$(status | jget offload.manager.last_reresolution)
STALL2=$(stall)
[ "$(connections)" -eq "$N1" ] || die "flows lost by the route change"
say "  re-resolution: $RERES; stall $STALL2"

grow 3 "$LARGE" 600

say "phase 4: every entry deleted"
T0=$(now_ms)
nsx "$RTR" "$PY" "$CT" delete --v4 "$V4" --v6 "$V6" >/dev/null
# Deletions lost with the events are found by the refresh (every 10 s at most): wait for that.
read -r DEL4 N4 <<<"$(settle 0 300 25000)" || die "the table did not empty"
[ "$N4" -eq 0 ] || die "$N4 connections left after every entry was deleted"
STALL4=$(stall)
HWM=$(hwm_kib)
say "  empty after $DEL4 ms; stall $STALL4; peak RSS $HWM KiB"

# shellcheck disable=SC2153 # ADMITn, Nn, CPUn, RSSn, ANONn, SMSn, STALLn are set by grow (printf -v)
cat <<EOF

scale bench ($(uname -r), $(nproc) CPUs; $BIN)
  connections   admission     idle CPU (% core)   RSS (KiB)   of which anonymous (KiB)
  0             -             $CPU0               $RSS0        $ANON0
  $N1 of $SMALL   ${ADMIT1} ms      $CPU1               $RSS1        $ANON1
  $N3 of $LARGE   ${ADMIT3} ms      $CPU3               $RSS3        $ANON3   (peak RSS $HWM)
  not admitted (by reason): $(status | jget offload.manager.rejected)
  conntrack event losses (ENOBUFS, each followed by a resync): $(status | jget offload.manager.conntrack_events_lost)
  status request (median of 9, client's view): $SMS1 ms at $N1, $SMS3 ms at $N3
  route change under $SMALL flows: $RERES
  longest event-loop stall: phase 1 $STALL1
                            phase 2 $STALL2
                            phase 3 $STALL3
                            phase 4 $STALL4
  goals (issue 17): RSS at 64k <= 10 MiB (10240 KiB); idle CPU at 10k <= 0.5 %;
                    stall < 50 ms; route change re-resolved within 50 ms
EOF

#!/usr/bin/env bash
# Forwarding bench (issue 4, "Bench"): 64-byte UDP packets per second through a namespace router,
# four data paths side by side in one run, interleaved in rounds; then admission latency.
#
#   LAN client            router                                        WAN server
#   c0 198.18.1.2 ── lan1 [br-lan 198.18.1.1]  NAT  wan0 198.19.0.1 ── s0 198.19.0.2
#   bench_gen (live frames)  variant on lan1 ingress       bench_sink (count + XDP_DROP)
#
# Variants, switched on lan1's ingress while one bpfqos daemon keeps running with the flow
# admitted (so every variant forwards the same frames of the same ASSURED, NATed UDP flow):
#   kernel  nothing on lan1: bridge, ip_forward, conntrack, nftables masquerade;
#   xdp     the daemon's own XDP program (the one it attached natively), re-attached by id;
#   tc      the daemon's own TC twin (bpfqos_tc of the same loaded object, so the same maps),
#           attached as a direct-action cls_bpf filter on clsact ingress, XDP detached: what the
#           daemon attaches itself when XDP fails;
#   bare    bench_bare (bench/bpf/forwarding.bpf.c): bpf_redirect_map to wan0, nothing else;
#   flowtable  (only when asked for, needs nf_flow_table: bench/vm-flowtable.sh runs it in the
#           6.12 VM) nothing on lan1, the kernel's nft flowtable on lan1 and wan0 (`flow add
#           @ft` in forward: OpenWrt's software flow offloading). The table is added for the
#           measurement and deleted after it; each change is a firewall reload to the daemon,
#           which flushes and re-admits the flow ~2 s later: the next variant waits for that;
# and with the WAN's upload shaped (HTB at 100 Gbit/s, so high that it never limits: what
# passing a qdisc costs; the daemon reloaded into that config, the flow re-admitted):
#   kernel+htb  nothing on lan1: the kernel path, through wan0's HTB;
#   tc+htb      the daemon's TC twin on lan1 (XDP detached), its shaped flow entry: rewrite,
#               bpf_redirect into wan0's HTB;
#   xdp+htb     the daemon's XDP (which passes shaped flows) and TC twin on lan1, as the
#               daemon attaches them when the WAN is shaped.
# Generator: bench_gen run by bench/forwarding_gen.py through BPF_PROG_RUN with
# BPF_F_TEST_XDP_LIVE_FRAMES in the client namespace; counted by bench_sink on s0.
#
# Usage: bench/forwarding.sh [path/to/bpfqos]   (root; default target/release/bpfqos)
# Environment: ROUNDS (5), WINDOW seconds per measurement (2), LAT_CONNS (20), VARIANTS (the
# list above without flowtable), PARTS ("rtt latency": which sections
# run after the pps rounds), BENCH_BPF_OBJ
# (bench/bpf/forwarding.bpf.c's object; default: the newest build.rs wrote under target/).
# Prints a table and whether the issue's goals are met; exits non-zero only when the bench
# itself broke, never on a timing.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BIN=$(realpath "${1:-$ROOT/target/release/bpfqos}")
ROUNDS=${ROUNDS:-5}
WINDOW=${WINDOW:-2}
LAT_CONNS=${LAT_CONNS:-20}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
HELPER=$HERE/forwarding_gen.py
read -ra VARIANTS <<<"${VARIANTS:-kernel xdp tc bare kernel+htb tc+htb xdp+htb}"
PARTS=" ${PARTS-rtt latency} "

die() { echo "forwarding bench: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, BPF)"
[ -x "$BIN" ] || die "$BIN missing: run 'make release' first"
for t in ip tc nft ethtool bpftool tcpdump; do
	command -v "$t" >/dev/null || die "$t not found (.ci/install-deps.sh installs it)"
done

P=bqfwd$$
WORK=$(mktemp -d /tmp/bpfqos-fwd-XXXXXX) # no dot: libbpf 1.1 turns pin path dots into _
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

# ---- topology ------------------------------------------------------------------------------
say "namespace router $P"
bench_router

# ---- the bench's BPF programs --------------------------------------------------------------
say "loading bench/bpf/forwarding.bpf.c (built by build.rs)"
bench_programs
# A devmap resolves the ifindex in the caller's namespace.
# shellcheck disable=SC2046
nsx "$RTR" bpftool map update pinned "$BB/maps/bare_tx" key 0 0 0 0 value $(le32 "$WAN_IDX")

# ---- the daemon and the admitted flow ------------------------------------------------------
say "starting bpfqos ($BIN)"
mkdir -p "$WORK/etc"
# write_config [UPLOAD_KBIT] [RTT]: the daemon's config, the WAN's upload shaped when given,
# passive RTT on unless RTT is 0.
write_config() {
	cat >"$WORK/etc/bpfqos" <<UCI
config globals 'globals'
	option enabled '1'
	option offload '1'
	option rtt '${2:-1}'
	option log_level 'info'

config interface 'lan'
	option device 'br-lan'

config interface 'wan'
	option device 'wan0'
	option upload '${1:-0}'
	option qdisc 'fifo'
UCI
}
write_config
MODE=plain
SOCK=$WORK/bpfqos.sock
nsx "$RTR" "$BIN" daemon --config-dir "$WORK/etc" --socket "$SOCK" \
	--pin-dir "$WORK/bpffs/bpfqos" 2>"$WORK/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
[ -S "$SOCK" ] || { cat "$WORK/daemon.log" >&2; die "daemon did not start"; }

# The daemon's programs: XDP from lan1 (it attached natively), its TC twin by the maps it
# shares with it (the flow tables).
XDP_ID=0
for _ in $(seq 50); do
	XDP_ID=$(ip -n "$RTR" -j link show dev lan1 | jget 0.xdp.prog.id)
	[ "$XDP_ID" != 0 ] && break
	sleep 0.1
done
[ "$XDP_ID" != 0 ] || { cat "$WORK/daemon.log" >&2; die "daemon did not attach XDP to lan1"; }
XDP_MAPS=$(bpftool prog show id "$XDP_ID" -j | jget map_ids)
TC_ID=$(bpftool prog show -j | "$PY" -c 'import json,sys
for p in json.load(sys.stdin):
    if p.get("name") == "bpfqos_tc" and set(p.get("map_ids", [])) & set(json.loads(sys.argv[1])):
        print(p["id"]); break
else:
    print(0)' "$XDP_MAPS")
[ "$TC_ID" != 0 ] || die "the daemon's bpfqos_tc program (maps $XDP_MAPS) not found"
bpftool prog pin id "$XDP_ID" "$BB/daemon_xdp"
bpftool prog pin id "$TC_ID" "$BB/daemon_tc"

SPORT=40000 DPORT=9000
say "warm-up: two-way UDP 198.18.1.2:$SPORT -> 198.19.0.2:$DPORT until the daemon admits it"
nsx "$SRV" "$PY" "$HELPER" udp-echo --bind 198.19.0.2 --port "$DPORT" --seconds 12 &
BG_PIDS+=($!)
sleep 0.2
admitted=0
for _ in 1 2 3; do # UDP is ASSURED after ~2 s of two-way traffic: 3 tries of 3 s
	nsx "$LAN" "$PY" "$HELPER" udp-ping --bind 198.18.1.2 --sport "$SPORT" \
		--dst 198.19.0.2 --dport "$DPORT" --seconds 3 >/dev/null || true
	admitted=$(status | jget offload.connections)
	[ "$admitted" -ge 1 ] && break
done
[ "$admitted" -ge 1 ] || { cat "$WORK/daemon.log" >&2; die "the UDP flow was not offloaded"; }
# From now on s0 drops the bench's UDP at XDP (and that XDP program is s0's NAPI).
ip -n "$SRV" link set dev s0 xdpdrv pinned "$BB/progs/bench_sink"

# ---- variants on lan1's ingress ------------------------------------------------------------
# set_mode plain|htb: reload the daemon into the unshaped or shaped config (its flow entries
# are rewritten for the new way through) and wait until the flow is offloaded again.
set_mode() {
	[ "$MODE" = "$1" ] && return
	if [ "$1" = htb ]; then write_config 100000000; else write_config; fi
	"$BIN" reload --socket "$SOCK" >/dev/null || die "reload into $1 failed"
	MODE=$1
	for _ in $(seq 50); do
		[ "$(status | jget offload.connections)" -ge 1 ] && break
		sleep 0.1
	done
	[ "$(status | jget offload.connections)" -ge 1 ] || die "$1: the flow was not re-admitted"
	if [ "$1" = htb ]; then
		tc -n "$RTR" -j qdisc show dev wan0 | grep -q '"kind":"htb"' || die "no HTB on wan0"
	fi
}

FT_ON=0
FT_NFT='table inet bench_ft {
	flowtable ft {
		hook ingress priority 0
		devices = { "lan1", "wan0" }
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		meta l4proto { tcp, udp } ct state established flow add @ft
	}
}'
# flowtable_set 1|0: the kernel flowtable in or out. Out again, the daemon (which took the
# change for a firewall reload) must have re-admitted the flow before an offload variant runs.
flowtable_set() {
	[ "$FT_ON" = "$1" ] && return
	if [ "$1" = 1 ]; then
		nsx "$RTR" nft -f - <<<"$FT_NFT" || die "flowtable: nft refused the table"
	else
		nsx "$RTR" nft delete table inet bench_ft || die "flowtable: could not delete the table"
		sleep 0.5 # the daemon reads the reload (flush) before it is asked anything
		for _ in $(seq 100); do
			[ "$(status | jget offload.connections)" -ge 1 ] && break
			sleep 0.1
		done
		[ "$(status | jget offload.connections)" -ge 1 ] || die "flowtable: the flow was not re-admitted after the table went"
	fi
	FT_ON=$1
}

use_variant() {
	case $1 in
	*+htb) set_mode htb ;;
	*) set_mode plain ;;
	esac
	ip -n "$RTR" link set dev lan1 xdpdrv off
	tc -n "$RTR" qdisc del dev lan1 clsact 2>/dev/null || true
	flowtable_set "$([ "$1" = flowtable ] && echo 1 || echo 0)"
	case $1 in
	kernel | kernel+htb | flowtable) ;;
	xdp) ip -n "$RTR" link set dev lan1 xdpdrv pinned "$BB/daemon_xdp" ;;
	tc | tc+htb | xdp+htb)
		tc -n "$RTR" qdisc add dev lan1 clsact
		tc -n "$RTR" filter add dev lan1 ingress bpf direct-action object-pinned "$BB/daemon_tc"
		if [ "$1" = xdp+htb ]; then
			ip -n "$RTR" link set dev lan1 xdpdrv pinned "$BB/daemon_xdp"
		fi
		;;
	bare) ip -n "$RTR" link set dev lan1 xdpdrv pinned "$BB/progs/bench_bare" ;;
	esac
}

# Packets the data path forwarded so far (straight out, or into a shaper).
forwarded() { status | "$PY" -c 'import json,sys; d=json.load(sys.stdin)["datapath"]; print(d.get("redirect", 0) + d.get("to_shaper", 0))'; }

RESULTS=$WORK/results
: >"$RESULTS"
measure() {
	local v=$1 round=$2 red0 red1 out pps rx share
	use_variant "$v"
	sleep 0.2 # let the daemon digest the link event (it re-resolves, keeps the flow)
	case $v in kernel* | bare | flowtable) ;; *)
		[ "$(status | jget offload.connections)" -ge 1 ] || die "$v: flow no longer offloaded"
		;;
	esac
	red0=$(forwarded)
	out=$(nsx "$LAN" "$PY" "$HELPER" gen --prog "$BB/progs/bench_gen" \
		--count-map "$BB/maps/sink_count" --frame-map "$BB/maps/gen_frame" --src-mac "$C0_MAC" --dst-mac "$BR_MAC" \
		--src-ip 198.18.1.2 --dst-ip 198.19.0.2 --sport "$SPORT" --dport "$DPORT" \
		--window "$WINDOW") || die "$v: generator failed: $out"
	red1=$(forwarded)
	if [ -n "${DEBUG:-}" ]; then
		echo "$out" >&2
		nsx "$LAN" ethtool -S c0 | grep -v ': 0$' >&2
		nsx "$RTR" ethtool -S lan1 | grep -v ': 0$' >&2
		nsx "$RTR" ethtool -S wan0 | grep -v ': 0$' >&2
		nsx "$SRV" ethtool -S s0 | grep -v ': 0$' >&2
		nsx "$RTR" nstat -a | grep -iE 'drop|err|Forw|InRec|OutReq|InAddr|NoRoute' >&2
		status | jget datapath >&2
	fi
	pps=$(jget pps <<<"$out")
	rx=$(jget rx_total <<<"$out")
	# Which path the packets took: the data path's redirect counter against all that arrived.
	share=$("$PY" -c 'import sys; d, n = int(sys.argv[1]), int(sys.argv[2]); print(f"{d / n:.3f}" if n else "-")' \
		$((red1 - red0)) "$rx")
	echo "$v $round $pps $share $(jget gen_pps <<<"$out")" >>"$RESULTS"
	printf '   round %d  %-10s %6.3f Mpps  (generator %.2f Mpps, bpfqos redirect share %s)\n' \
		"$round" "$v" "$("$PY" -c "print($pps / 1e6)")" \
		"$("$PY" -c "print($(jget gen_pps <<<"$out") / 1e6)")" "$share" >&2
}

say "$ROUNDS rounds x ${#VARIANTS[@]} variants, ${WINDOW} s windows, order rotated per round"
for ((r = 0; r < ROUNDS; r++)); do
	for ((i = 0; i < ${#VARIANTS[@]}; i++)); do
		measure "${VARIANTS[$(((i + r) % ${#VARIANTS[@]}))]}" $((r + 1))
	done
done

# ---- passive RTT: an offloaded TCP connection, RTT on vs off ---------------------------------
# One real TCP connection is held open (conntrack ESTABLISHED, offloaded by the daemon); the
# generator then sends frames of its tuple carrying the timestamp option and data
# (bench_gen_tcp), which the XDP fast path forwards and passive RTT parses, looks up and
# books. The daemon is reloaded with `option rtt` on and off in turn (the flow is re-admitted
# from the conntrack dump each time), interleaved per round.
if [[ $PARTS == *" rtt "* ]]; then
TSPORT=40001 TDPORT=9001
RTT_RESULTS=$WORK/rtt-results
: >"$RTT_RESULTS"
say "passive RTT: an offloaded TCP connection's frames (timestamps, 12 bytes of data), RTT on vs off"
use_variant xdp
set_mode plain
nsx "$SRV" "$PY" "$HELPER" tcp-hold --listen --bind 198.19.0.2 --port "$TDPORT" --seconds 300 &
BG_PIDS+=($!)
sleep 0.3
before=$(status | jget offload.connections)
nsx "$LAN" "$PY" "$HELPER" tcp-hold --bind 198.18.1.2 --sport "$TSPORT" --dst 198.19.0.2 \
	--port "$TDPORT" --seconds 300 &
BG_PIDS+=($!)
for _ in $(seq 50); do
	[ "$(status | jget offload.connections)" -gt "$before" ] && break
	sleep 0.1
done
[ "$(status | jget offload.connections)" -gt "$before" ] || die "the TCP connection was not offloaded"
WANT=$(status | jget offload.connections)
RTT_NOW=1
set_rtt() { # 1|0: reload the daemon with passive RTT on or off; wait for re-admission
	[ "$RTT_NOW" = "$1" ] && return
	write_config "" "$1"
	"$BIN" reload --socket "$SOCK" >/dev/null || die "reload with rtt $1 failed"
	RTT_NOW=$1
	for _ in $(seq 50); do
		[ "$(status | jget offload.connections)" -ge "$WANT" ] && break
		sleep 0.1
	done
	[ "$(status | jget offload.connections)" -ge "$WANT" ] || die "rtt $1: the flows were not re-admitted"
	[ "$(status | jget rtt.enabled)" = "$([ "$1" = 1 ] && echo True || echo False)" ] ||
		die "rtt $1: status says rtt.enabled=$(status | jget rtt.enabled)"
}
for ((r = 0; r < ROUNDS; r++)); do
	for rtt in $([ $((r % 2)) = 0 ] && echo "1 0" || echo "0 1"); do
		set_rtt "$rtt"
		sleep 0.2
		red0=$(forwarded)
		out=$(nsx "$LAN" "$PY" "$HELPER" gen --tcp --prog "$BB/progs/bench_gen_tcp" \
			--count-map "$BB/maps/sink_count" --frame-map "$BB/maps/gen_frame_tcp" --src-mac "$C0_MAC" \
			--dst-mac "$BR_MAC" --src-ip 198.18.1.2 --dst-ip 198.19.0.2 --sport "$TSPORT" \
			--dport "$TDPORT" --window "$WINDOW") || die "rtt $rtt: generator failed: $out"
		red1=$(forwarded)
		pps=$(jget pps <<<"$out")
		rx=$(jget rx_total <<<"$out")
		echo "$rtt $pps $((red1 - red0)) $rx" >>"$RTT_RESULTS"
		printf '   round %d  xdp, TCP, rtt %s  %6.3f Mpps  (redirected %s of %s)\n' $((r + 1)) "$rtt" \
			"$("$PY" -c "print($pps / 1e6)")" $((red1 - red0)) "$rx" >&2
	done
done
set_rtt 1
"$PY" - "$RTT_RESULTS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
med = {r: statistics.median(float(x[1]) for x in rows if x[0] == r) for r in ("1", "0")}
print(f"passive RTT, offloaded TCP with timestamps through XDP: RTT on {med['1'] / 1e6:.3f} Mpps, "
      f"off {med['0'] / 1e6:.3f} Mpps: on/off = {med['1'] / med['0']:.3f} "
      f"(median of {len(rows) // 2} rounds each, interleaved)")
PY
fi

# ---- admission latency ---------------------------------------------------------------------
# Internal: the daemon's own figure (conntrack event handled -> both map entries written).
# External: the probe sends a 16-byte message every PROBE_US from the moment connect() returns.
# tcpdump on c0 sees every packet the client sends, tcpdump on br-lan only those that still take
# the kernel path (offloaded ones never reach the bridge). Per connection: handshake ACK (its
# conntrack ESTABLISHED event starts admission) -> first packet not on br-lan, the whole
# admission seen from outside, event delivery and wake-up included.
if [[ $PARTS == *" latency "* ]]; then
LPORT=5201 PROBE_US=50 PROBE_S=0.02
say "admission latency: $LAT_CONNS new TCP connections, bpfqos XDP on lan1"
use_variant xdp
set_mode plain
capture() { # namespace device file
	nsx "$1" timeout 60 tcpdump -Z root -U -i "$2" -n -s 128 --immediate-mode -w "$3.pcap" \
		"tcp dst port $LPORT" 2>"$3.log" &
	BG_PIDS+=($!)
	for _ in $(seq 30); do grep -q listening "$3.log" && break; sleep 0.1; done
}
capture "$LAN" c0 "$WORK/lat-c0"
TD1=$!
capture "$RTR" br-lan "$WORK/lat-br"
TD2=$!
nsx "$SRV" "$PY" "$HELPER" tcp-sink --bind 198.19.0.2 --port "$LPORT" --count "$LAT_CONNS" \
	--seconds 40 &
BG_PIDS+=($!)
sleep 0.3
: >"$WORK/lat.internal"
for ((i = 0; i < LAT_CONNS; i++)); do
	before=$(status | jget offload.manager.admitted)
	port=$(nsx "$LAN" "$PY" "$HELPER" tcp-probe --dst 198.19.0.2 --port "$LPORT" \
		--interval-us "$PROBE_US" --seconds "$PROBE_S") || { echo "   probe $i failed" >&2; continue; }
	for _ in $(seq 20); do
		[ "$(status | jget offload.manager.admitted)" -gt "$before" ] && break
		sleep 0.05
	done
	if [ "$(status | jget offload.manager.admitted)" -gt "$before" ]; then
		echo "$port $(status | jget offload.manager.last_admit_us)" >>"$WORK/lat.internal"
	else
		echo "   connection from port $port was not admitted" >&2
	fi
done
sleep 0.2
kill -TERM "$TD1" "$TD2" 2>/dev/null || true # (SIGINT would hit this script too)
wait "$TD1" "$TD2" 2>/dev/null || true
for f in lat-c0 lat-br; do tcpdump -r "$WORK/$f.pcap" -n -tt 2>/dev/null >"$WORK/$f.txt" || true; done
[ -n "${DEBUG:-}" ] && cp "$WORK"/lat* /tmp/

fi
"$PY" "$HELPER" report --results "$RESULTS"
[[ $PARTS != *" latency "* ]] || "$PY" "$HELPER" latency --internal "$WORK/lat.internal" --client "$WORK/lat-c0.txt" \
	--bridge "$WORK/lat-br.txt"

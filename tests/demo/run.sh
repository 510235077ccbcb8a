#!/usr/bin/env bash
# The demo router: three network namespaces (LAN client, router, WAN server), NAT on the router,
# bpfqos running on it with tests/demo/config/bpfqos, real TCP and UDP traffic through it, and
# `bpfqos status` before and after. Everything is torn down on exit, also on failure or Ctrl-C.
# The router itself: tests/demo/router.sh.
set -euo pipefail
BIN=${1:-target/release/bpfqos}
BIN=$(realpath "$BIN")
HERE=$(cd "$(dirname "$0")" && pwd)
[ "$(id -u)" -eq 0 ] || { echo "demo: needs root (network namespaces, BPF)" >&2; exit 1; }

P=bqdemo$$
LAN=$P-lan RTR=$P-rtr SRV=$P-srv
WORK=$(mktemp -d /tmp/bpfqos-demo.XXXXXX)
DAEMON_PID=

cleanup() {
	set +e
	[ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
	for ns in "$LAN" "$RTR" "$SRV"; do ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null; done
	for ns in "$LAN" "$RTR" "$SRV"; do ip netns del "$ns" 2>/dev/null; done
	umount "$WORK/bpffs" 2>/dev/null
	rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

say "building the namespace router"
# shellcheck source=tests/demo/router.sh
. "$HERE/router.sh"
router_build

say "starting bpfqos (config: tests/demo/config/bpfqos)"
mkdir -p "$WORK/bpffs" "$WORK/etc"
mount -t bpf bpf "$WORK/bpffs"
cp "$HERE/config/bpfqos" "$WORK/etc/bpfqos"
"$BIN" check-config --config-dir "$WORK/etc"
SOCK=$WORK/bpfqos.sock
nsx "$RTR" "$BIN" daemon --config-dir "$WORK/etc" --socket "$SOCK" --pin-dir "$WORK/bpffs/bpfqos" \
	2> >(sed 's/^/  daemon: /' >&2) &
DAEMON_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
[ -S "$SOCK" ] || { echo "demo: daemon did not start" >&2; exit 1; }
"$BIN" status --socket "$SOCK"

say "traffic: TCP and UDP, LAN client -> WAN server, through NAT (bounded: 6 s each)"
nsx "$SRV" iperf3 -s -D -B 198.19.0.2 --logfile "$WORK/iperf-s.log"
sleep 0.3
nsx "$LAN" iperf3 -c 198.19.0.2 -t 6 -f m --connect-timeout 2000 --logfile "$WORK/iperf-tcp.log" &
TCP_PID=$!
sleep 3
say "bpfqos status while the TCP transfer runs (the connection is offloaded)"
"$BIN" status --socket "$SOCK"
wait "$TCP_PID"
grep -E 'sender|receiver' "$WORK/iperf-tcp.log"
nsx "$LAN" iperf3 -c 198.19.0.2 -u -b 100M -l 1200 -t 6 -f m --connect-timeout 2000 | grep -E 'sender|receiver'
nsx "$LAN" ping -c 2 -W 1 -q fd00:2::2 | tail -1

say "bpfqos status after the traffic (counters include finished connections)"
"$BIN" status --socket "$SOCK"
say "bpfqos status --json (what ubus call bpfqos status returns)"
"$BIN" status --json --socket "$SOCK"
echo
say "demo done; tearing down"

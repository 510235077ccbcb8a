# shellcheck shell=bash
# Shared by the namespace-router benches (bench/forwarding.sh, bench/steering.sh). Source it
# after setting P (namespace prefix), PY, BIN, ROOT, WORK and the script's die(); it sets
# LAN RTR SRV and BB, installs the cleanup trap, and gives:
#   say, nsx, jget (a dotted path from the JSON on stdin), status (the daemon's JSON, socket
#   $SOCK), le32 (a u32 as the four bytes bpftool takes),
#   bench_router: the demo router (tests/demo/router.sh) with static neighbours everywhere (no
#     ARP during a measurement), C0_MAC BR_MAC WAN_MAC S0_MAC, C0_IDX LAN1_IDX WAN_IDX;
#   bench_programs: bench/bpf/forwarding.bpf.c (built by build.rs) loaded and pinned under
#     $BB (progs/, maps/), the generator aimed at c0.
LAN=$P-lan RTR=$P-rtr SRV=$P-srv
BB=$WORK/bpffs/bench # the bench's pins: programs, maps, the daemon's programs by id
DAEMON_PID=
BG_PIDS=()

cleanup() {
	set +e
	for pid in "${BG_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
	[ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
	for ns in "$LAN" "$RTR" "$SRV"; do
		ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null
	done
	for ns in "$LAN" "$RTR" "$SRV"; do ip netns del "$ns" 2>/dev/null; done
	umount "$WORK/bpffs" 2>/dev/null
	rm -rf "$WORK"
}
trap '[ -n "${KEEP_LOG:-}" ] && cp "$WORK/daemon.log" "$KEEP_LOG" 2>/dev/null; cleanup' EXIT
trap 'exit 130' INT TERM

say() { printf '== %s\n' "$*" >&2; }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
jget() { "$PY" -c 'import json,sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v[int(k)] if isinstance(v, list) else v.get(k, 0) if isinstance(v, dict) else 0
print(json.dumps(v) if isinstance(v, (dict, list)) else v)' "$1"; }
status() { "$BIN" status --json --socket "$SOCK"; }
le32() { printf '%d %d %d %d' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24)); }

bench_router() {
	# shellcheck source=tests/demo/router.sh
	. "$ROOT/tests/demo/router.sh"
	router_build
	C0_MAC=$(nsx "$LAN" cat /sys/class/net/c0/address)
	BR_MAC=$(nsx "$RTR" cat /sys/class/net/br-lan/address)
	WAN_MAC=$(nsx "$RTR" cat /sys/class/net/wan0/address)
	S0_MAC=$(nsx "$SRV" cat /sys/class/net/s0/address)
	ip -n "$LAN" neigh replace 198.18.1.1 lladdr "$BR_MAC" dev c0 nud permanent
	ip -n "$RTR" neigh replace 198.18.1.2 lladdr "$C0_MAC" dev br-lan nud permanent
	ip -n "$RTR" neigh replace 198.19.0.2 lladdr "$S0_MAC" dev wan0 nud permanent
	ip -n "$SRV" neigh replace 198.19.0.1 lladdr "$WAN_MAC" dev s0 nud permanent
	C0_IDX=$(nsx "$LAN" cat /sys/class/net/c0/ifindex)
	# shellcheck disable=SC2034 # used by the scripts that source this
	LAN1_IDX=$(nsx "$RTR" cat /sys/class/net/lan1/ifindex)
	# shellcheck disable=SC2034
	WAN_IDX=$(nsx "$RTR" cat /sys/class/net/wan0/ifindex)
}

bench_programs() {
	local obj
	mkdir -p "$WORK/bpffs"
	mount -t bpf bpf "$WORK/bpffs"
	# shellcheck disable=SC2012 # build output names are plain
	obj=${BENCH_BPF_OBJ:-$(ls -t "$ROOT"/target/*/build/bpfqos-*/out/bench/forwarding.bpfel.o \
		"$ROOT"/target/*/*/build/bpfqos-*/out/bench/forwarding.bpfel.o 2>/dev/null | head -n1)}
	[ -n "$obj" ] || die "no forwarding.bpfel.o under target/: run cargo build first"
	mkdir -p "$BB/maps"
	bpftool prog loadall "$obj" "$BB/progs" pinmaps "$BB/maps"
	# shellcheck disable=SC2046 # le32 prints four separate byte arguments
	bpftool map update pinned "$BB/maps/gen_target" key 0 0 0 0 value $(le32 "$C0_IDX")
}

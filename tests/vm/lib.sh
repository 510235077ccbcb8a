# Helpers for VM scenarios. Sourced by tests/vm/guest.sh into one subshell per scenario.
#
# A scenario is a file tests/vm/scenarios/NAME.sh defining `scenario_main`. It builds its own
# network namespaces (named "$SC-<role>", registered with `ns_add`), runs bounded traffic, and
# asserts with `check`/`fail`. Exiting non-zero (or `fail`) makes it FAIL; the EXIT trap prints
# diagnostics of the router namespace ($DIAG_NS) on failure, then tears everything down.
# Parts that depend on unfinished bpfqos features report with `pending SUBNAME "reason"`: such a
# line says PENDING, never PASS.
#
# Addresses: only 198.18.0.0/15 and fd00::/8, only between namespaces created here.

# shellcheck shell=bash
# PID_<name> variables are made by `bg` (eval); SRV_NS, SRV4... are for the scenarios. $XFER and
# $PY are command lines (split on purpose); single-quoted scripts (sh -c, python -c, awk)
# expand their own variables.
# shellcheck disable=SC2034,SC2154,SC2086,SC2016

: "${SC:?SC (scenario name) must be set}"
: "${WORK:?WORK (scratch dir) must be set}"
: "${RESULTS:?RESULTS (results file) must be set}"
VMDIR=${VMDIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
PY=/usr/bin/python3
XFER="$PY $VMDIR/tools/xfer.py"
NAMESPACES=()
BG_PIDS=()
DIAG_NS=
DAEMON_LOG=

# Console progress line (the full command log is in $WORK/log, shown on failure).
step() { printf '  [%s +%ss] %s\n' "$SC" "$SECONDS" "$*" >&3; echo "== +${SECONDS}s $*"; }
fail() {
    printf '  [%s] check failed: %s\n' "$SC" "$*" >&3
    echo "FAILED: $*"
    exit 1
}
# check "what is expected" cmd args...: run cmd, fail with the description if it fails.
check() {
    local what=$1 out=$WORK/check.out
    shift
    if "$@" >"$out" 2>&1; then
        cat "$out"
        echo "ok: $what"
    else
        cat "$out"
        # The command's last words go to the console too: they say what was wrong.
        tail -n 8 "$out" | sed 's/^/      | /' >&3
        fail "$what (command: $*)"
    fi
}
# wait_until SECONDS "what" cmd...: poll cmd every 0.2 s until it succeeds or time runs out.
wait_until() {
    local secs=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + secs))
    while ! "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${secs}s waiting for: $what"
        sleep 0.2
    done
    echo "ok: $what"
}
# A sub-result beside the scenario's own PASS/FAIL line, e.g. NAME/bpfqos.
pending() { echo "PENDING $SC/$1: $2" >>"$RESULTS"; printf '  [%s] PENDING %s: %s\n' "$SC" "$1" "$2" >&3; }
subpass() { echo "PASS $SC/$1" >>"$RESULTS"; }
note() { printf '  [%s] %s\n' "$SC" "$*" >&3; echo "note: $*"; }

nsx() {
    local ns=$1
    shift
    ip netns exec "$SC-$ns" "$@"
}
ns_add() {
    local n
    for n in "$@"; do
        ip netns add "$SC-$n"
        NAMESPACES+=("$SC-$n")
        nsx "$n" ip link set lo up
        nsx "$n" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
    done
}
# veth NS1 DEV1 NS2 DEV2: a veth pair between two namespaces, both ends up.
veth() {
    ip link add "$2" netns "$SC-$1" type veth peer name "$4" netns "$SC-$3"
    nsx "$1" ip link set "$2" up
    nsx "$3" ip link set "$4" up
}
# Traffic ends (clients/servers) send full checksums and MTU-sized frames, as real NICs deliver
# them, and receive with NAPI (GRO on: veth frames that XDP redirects to them are dropped
# otherwise); an XDP data path needs both (shared/testing.md), the kernel path does not mind.
host_nic() { nsx "$1" ethtool -K "$2" tx off tso off gso off gro on >/dev/null 2>&1 || true; }
# isp_tags_in_frame NS DEV: DEV (the ISP's end of the WAN veth) sends its VLAN tags inside the
# frame, as a NIC that does not strip tags hands them to XDP. With veth's VLAN offload (the
# default) the tags travel in skb metadata, which XDP cannot see: the router's download then
# matches no flow at w0 and stays on the kernel path whatever the daemon admitted (measured:
# 1,267 of ~4,000 packets offloaded in pppoe-vlan-nat, 650 in qinq-ipv6: the upload only).
isp_tags_in_frame() { nsx "$1" ethtool -K "$2" txvlan off tx-vlan-stag-hw-insert off >/dev/null 2>&1 || true; }
# bg NAME NS cmd...: start cmd in NS in the background, log to $WORK/NAME.log, killed at teardown.
bg() {
    local name=$1 ns=$2
    shift 2
    ip netns exec "$SC-$ns" "$@" >"$WORK/$name.log" 2>&1 &
    BG_PIDS+=($!)
    eval "PID_${name//[^A-Za-z0-9_]/_}=$!"
}
WITH_PPP_DIR=$VMDIR/tools/with-ppp-dir.sh
# listening NS FILE PORT: a socket of NS is bound to PORT, in /proc/net/FILE of the namespace
# (tcp, tcp6: in LISTEN; udp, udp6: bound).
listening() {
    local ns=$1 file=$2 hex
    hex=$(printf '%04X' "$3")
    nsx "$ns" awk -v p=":$hex" -v tcp="${file%6}" \
        'FNR > 1 && substr($2, length($2) - 4) == p && (tcp != "tcp" || $4 == "0A") {f = 1} END {exit !f}' \
        "/proc/net/$file"
}
# serve NAME NS FILE PORT CMD...: `bg NAME NS CMD...`, then wait until it listens on PORT (FILE:
# tcp, tcp6, udp or udp6, as for `listening`: the family the server binds). Every scenario starts
# its servers this way: a client started before its server listens fails with "Connection
# refused" on a loaded machine (seen once in qinq-ipv6), a fixed sleep only makes it rarer.
serve() {
    local name=$1 ns=$2 file=$3 port=$4
    shift 4
    bg "$name" "$ns" "$@"
    wait_until 30 "$name listening ($file port $port in $ns)" listening "$ns" "$file" "$port"
}

# Capture: cap_start NAME NS DEV [filter...]; cap_stop NAME -> $WORK/NAME.pcap
# --immediate-mode: libpcap's default TPACKET_V3 ring hands packets over only when a block
# fills or its timeout expires, and on SIGINT the block in progress is lost: a short capture
# (one half-second transfer under TCG) then came out empty (0 frames) although tcpdump was up.
cap_start() {
    local name=$1 ns=$2 dev=$3
    shift 3
    bg "cap_$name" "$ns" timeout 120 tcpdump -i "$dev" -nn -U --immediate-mode -s 256 -w "$WORK/$name.pcap" "$@"
    wait_until 10 "tcpdump on $dev ready" grep -q "listening on" "$WORK/cap_$name.log"
}
cap_stop() {
    local v="PID_cap_$1"
    sleep 0.3
    kill -INT "${!v}" 2>/dev/null || true
    wait "${!v}" 2>/dev/null || true
}

# Router-namespace diagnostics, printed when a scenario fails.
diagnostics() {
    local ns=$DIAG_NS
    echo "---- diagnostics ($SC, namespace $ns) ----"
    if [ -n "$ns" ] && ip netns list | grep -qw "$ns"; then
        echo "# ip -d link"; ip netns exec "$ns" ip -d link 2>&1
        echo "# ip addr"; ip netns exec "$ns" ip -br addr 2>&1
        echo "# ip route"; ip netns exec "$ns" ip route 2>&1
        echo "# ip -6 route"; ip netns exec "$ns" ip -6 route 2>&1
        echo "# /proc/net/pppoe"; ip netns exec "$ns" cat /proc/net/pppoe 2>&1
        echo "# conntrack -L"; ip netns exec "$ns" conntrack -L 2>&1 | head -50
        echo "# nft list ruleset"; ip netns exec "$ns" nft list ruleset 2>&1 | head -60
        echo "# tc -s qdisc"; ip netns exec "$ns" tc -s qdisc 2>&1 | head -40
    fi
    local f
    for f in "$WORK"/*.log; do
        if [ ! -f "$f" ] || [ "$f" = "$DAEMON_LOG" ]; then continue; fi
        echo "# $(basename "$f") (last 40 lines)"
        tail -n 40 "$f"
    done
    if [ -n "$DAEMON_LOG" ]; then
        echo "# bpfqos daemon log"
        tail -n 80 "$DAEMON_LOG" 2>&1
    fi
    echo "---- end diagnostics ----"
}

teardown() {
    local p ns
    for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for ns in "${NAMESPACES[@]}"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
    done
    sleep 0.2
    for ns in "${NAMESPACES[@]}"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    for p in "${BG_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}

on_exit() {
    local rc=$?
    trap - EXIT TERM INT
    # guest.sh prints the end of the log, then diag.txt, for a failed scenario.
    [ "$rc" -ne 0 ] && diagnostics >>"$WORK/diag.txt" 2>&1
    teardown >/dev/null 2>&1
    exit "$rc"
}
trap on_exit EXIT
trap 'fail "scenario timed out or was interrupted"' TERM INT
trap 'echo "error: line $LINENO: $BASH_COMMAND (exit $?)"' ERR

# ---------- bpfqos (the product under test) ----------
BPFQOS_BIN=${BPFQOS_BIN:-}
BPFQOS_EXPECT_OFFLOAD=${BPFQOS_EXPECT_OFFLOAD:-1}

# daemon_start NS CONFIG_TEXT: run `bpfqos daemon` in NS with CONFIG_TEXT as /etc/config/bpfqos.
daemon_start() {
    local ns=$1 cfg=$2
    mkdir -p "$WORK/bpfqos-config"
    printf '%s\n' "$cfg" >"$WORK/bpfqos-config/bpfqos"
    # /etc/config/network's stand-in, for configs naming logical networks (option network).
    if [ -n "${NETWORK_CFG:-}" ]; then printf '%s\n' "$NETWORK_CFG" >"$WORK/bpfqos-config/network"; fi
    DAEMON_LOG=$WORK/bpfqos-daemon.log
    BPFQOS_SOCK=$WORK/bpfqos.sock
    # bpffs private to the daemon's mount namespace; pins vanish with it.
    bg bpfqos-daemon "$ns" unshare -m --propagation private sh -c \
        'mount -t bpf bpf /sys/fs/bpf && exec "$0" daemon --config-dir "$1" --socket "$2" --pin-dir /sys/fs/bpf/bpfqos' \
        "$BPFQOS_BIN" "$WORK/bpfqos-config" "$BPFQOS_SOCK"
    wait_until 20 "bpfqos daemon answers status" "$BPFQOS_BIN" status --json --socket "$BPFQOS_SOCK"
}
daemon_status() { "$BPFQOS_BIN" status --json --socket "$BPFQOS_SOCK"; }
daemon_stop() {
    kill -TERM "$PID_bpfqos_daemon" 2>/dev/null || true
    local _
    for _ in $(seq 200); do kill -0 "$PID_bpfqos_daemon" 2>/dev/null || break; sleep 0.1; done
}
# json_get JSON_FILE python-expression-on-d : print the value
json_get() { $PY -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }
have_bpfqos() { [ -n "$BPFQOS_BIN" ] && [ -x "$BPFQOS_BIN" ]; }

# ---------- PPPoE (kernel mode, rp-pppoe server + pppd pppoe.so client) ----------
PPP_USER=bpfqos-test
PPP_SECRET=not-a-secret

# pppoe_server_start NS DEV LOCAL REMOTE [extra pppoe-server args]
pppoe_server_start() {
    local ns=$1 dev=$2 local_ip=$3 remote_ip=$4
    shift 4
    local d=$WORK/ppp-isp
    mkdir -p "$d"
    printf '"%s" * "%s" *\n' "$PPP_USER" "$PPP_SECRET" >"$d/pap-secrets"
    chmod 600 "$d/pap-secrets"
    cat >"$d/pppoe-server-options" <<OPTS
require-pap
mtu 1492
mru 1492
nodefaultroute
lcp-echo-interval 5
lcp-echo-failure 3
debug
logfile $WORK/pppd-isp.log
OPTS
    # Debian's pppoe-server has no kernel mode (-k is rejected), so the ISP end runs rp-pppoe in
    # user mode; the router end, the one under test, is kernel-mode (pppd's pppoe.so).
    bg pppoe-server "$ns" "$WITH_PPP_DIR" "$d" pppoe-server -F -I "$dev" -L "$local_ip" -R "$remote_ip" \
        -N 4 -O /etc/ppp/pppoe-server-options "$@"
}
# pppoe_client_start NS DEV: pppd on DEV (e.g. w0.7), interface pppoe-wan like OpenWrt.
pppoe_client_start() {
    local ns=$1 dev=$2
    local d=$WORK/ppp-rtr
    mkdir -p "$d"
    printf '"%s" * "%s"\n' "$PPP_USER" "$PPP_SECRET" >"$d/pap-secrets"
    chmod 600 "$d/pap-secrets"
    bg pppd "$ns" "$WITH_PPP_DIR" "$d" pppd plugin pppoe.so "nic-$dev" user "$PPP_USER" noauth nodetach \
        defaultroute noipdefault mtu 1492 mru 1492 ifname pppoe-wan \
        lcp-echo-interval 2 lcp-echo-failure 5 maxfail 1 debug logfile "$WORK/pppd-rtr.log"
}
pppoe_server_listening() { nsx "$1" awk 'NR>1 && tolower($4)=="8863" {f=1} END {exit !f}' /proc/net/packet; }
ppp_addr() { nsx "$1" ip -4 -o addr show dev pppoe-wan | awk '{split($4, a, "/"); print a[1]; exit}'; }
ppp_has_ip() { nsx "$1" ip -4 -o addr show dev "$2" 2>/dev/null | grep -q inet; }
# The session id (decimal) of pppoe-wan's session, from /proc/net/pppoe in NS.
# The kernel prints the __be16 sid raw with %08X, so on little-endian hosts the bytes are swapped.
pppoe_sid() {
    nsx "$1" awk 'NR>1 {print $1; exit}' /proc/net/pppoe |
        $PY -c 'import sys,socket; v=int(sys.stdin.read().strip(),16); print(socket.ntohs(v) if sys.byteorder=="little" else v)'
}

# ---------- LAN side shared by the router scenarios ----------
# lan_topology: br-lan (198.18.1.1/24, fd00:1::1/64) in rtr with ports l1, l2 to lan1, lan2
# (e0: 198.18.1.1N/24, fd00:1::1N/64, default routes via the router). Forwarding on in rtr.
lan_topology() {
    nsx rtr ip link add br-lan type bridge
    nsx rtr ip link set br-lan up
    nsx rtr ip addr add 198.18.1.1/24 dev br-lan
    nsx rtr ip addr add fd00:1::1/64 dev br-lan nodad
    local n
    for n in 1 2; do
        veth rtr "l$n" "lan$n" e0
        nsx rtr ip link set "l$n" master br-lan
        nsx "lan$n" ip addr add "198.18.1.1$n/24" dev e0
        nsx "lan$n" ip addr add "fd00:1::1$n/64" dev e0 nodad
        nsx "lan$n" ip route add default via 198.18.1.1
        nsx "lan$n" ip -6 route add default via fd00:1::1
        host_nic "lan$n" e0
    done
    nsx rtr sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
}

# ---------- The classic OpenWrt router: PPPoE over VLAN 7 on the WAN, NAT, LAN bridge ----------
#   lan1 e0 198.18.1.11 ─ l1 ┐
#                            br-lan 198.18.1.1 [rtr] pppoe-wan 198.18.100.10 ─ w0.7 ─ w0
#   lan2 e0 198.18.1.12 ─ l2 ┘                                                          │ veth
#                        [isp] srv0 198.19.0.1 (the "internet"), ppp0 198.18.100.1 ─ i0.7 ─ i0
# pppoe_topology [VLAN_ID]: builds it, NAT (masquerade on pppoe-wan) included, session up.
SRV4=198.19.0.1
WAN4=198.18.100.10
pppoe_topology() {
    local vid=${1:-7}
    ns_add isp rtr lan1 lan2
    DIAG_NS=$SC-rtr
    veth rtr w0 isp i0
    nsx rtr ip link set w0 address 02:00:00:00:01:01
    nsx isp ip link set i0 address 02:00:00:00:02:01
    nsx rtr ip link add link w0 name "w0.$vid" type vlan id "$vid"
    nsx isp ip link add link i0 name "i0.$vid" type vlan id "$vid"
    nsx rtr ip link set "w0.$vid" up
    nsx isp ip link set "i0.$vid" up
    host_nic isp i0
    isp_tags_in_frame isp i0
    if [ "${PPPOE_SRV_NS:-0}" = 1 ]; then
        # The server in its own namespace behind the ISP, on a 1500-byte link: its TCP MSS is 1460
        # and the PPPoE link (1492) is the bottleneck only the middle knows about.
        ns_add srv
        veth isp s0 srv e0
        nsx isp ip addr add 198.19.0.254/24 dev s0
        nsx isp sysctl -qw net.ipv4.ip_forward=1
        nsx srv ip addr add "$SRV4/24" dev e0
        nsx srv ip route add default via 198.19.0.254
        host_nic srv e0
        SRV_NS=srv
    else
        nsx isp ip link add srv0 type dummy
        nsx isp ip addr add "$SRV4/32" dev srv0
        nsx isp ip link set srv0 up
        SRV_NS=isp
    fi
    lan_topology
    nsx rtr nft -f - <<NFT
table inet bpfqos_test_nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "pppoe-wan" masquerade
    }
}
NFT
    pppoe_server_start isp "i0.$vid" 198.18.100.1 "$WAN4"
    # A PADI sent before the server listens costs pppd a discovery timeout (5 s, then 10 s...).
    wait_until 15 "pppoe-server listening (packet socket for 0x8863)" pppoe_server_listening isp
    pppoe_client_start rtr "w0.$vid"
    wait_until 60 "PPPoE session up (pppoe-wan has an address)" ppp_has_ip rtr pppoe-wan
    wait_until 10 "default route via pppoe-wan" sh -c "ip netns exec $SC-rtr ip route show default | grep -q pppoe-wan"
}

# ---- A plain Ethernet WAN: lan1, lan2 - br-lan [rtr] wan0 (NAT) - i0 [isp] s0 - e0 [srv] ----
# eth_wan_topology: rtr's wan0 198.18.100.10/24 + fd00:100::10/64 (default routes via the ISP),
# the server srv at $SRV4 and fd00:200::1 behind the ISP (198.19.0.254, fd00:200::254), the
# LAN of lan_topology, IPv4 masqueraded on wan0, IPv6 routed. No delay: callers add netem.
eth_wan_topology() {
    ns_add isp rtr lan1 lan2 srv
    DIAG_NS=$SC-rtr
    veth rtr wan0 isp i0
    veth isp s0 srv e0
    nsx rtr ip addr add 198.18.100.10/24 dev wan0
    nsx rtr ip addr add fd00:100::10/64 dev wan0 nodad
    nsx rtr ip route add default via 198.18.100.1
    nsx rtr ip -6 route add default via fd00:100::1
    nsx isp ip addr add 198.18.100.1/24 dev i0
    nsx isp ip addr add fd00:100::1/64 dev i0 nodad
    nsx isp ip addr add 198.19.0.254/24 dev s0
    nsx isp ip addr add fd00:200::254/64 dev s0 nodad
    nsx isp ip -6 route add fd00:1::/64 via fd00:100::10
    nsx isp sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
    nsx srv ip addr add "$SRV4/24" dev e0
    nsx srv ip addr add fd00:200::1/64 dev e0 nodad
    nsx srv ip route add default via 198.19.0.254
    nsx srv ip -6 route add default via fd00:200::254
    host_nic isp i0
    host_nic srv e0
    lan_topology
    nsx rtr nft -f - <<NFT
table inet bpfqos_test_nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan0" meta nfproto ipv4 masquerade
    }
}
NFT
}

# tcp_xfer NS DST PORT UP DOWN: one bounded bidirectional TCP transfer with hash checks.
tcp_xfer() { nsx "$1" timeout 60 $XFER client --connect "$2" --port "$3" --up "$4" --down "$5" "${@:6}"; }
udp_echo() { nsx "$1" timeout 60 $XFER client --udp --connect "$2" --port "$3" --count "$4" --size "$5" "${@:6}"; }
# peers_only FILE ADDR: every peer the server saw is ADDR (NAT check)
peers_only() { [ -s "$1" ] && ! awk -v a="$2" '$2 != a {bad=1} END {exit !bad}' "$1"; }
ping_ttl() { nsx "$1" ping -c 3 -i 0.3 -W 2 "$2" | grep -q "ttl=$3 "; }

# bpfqos_part SUBNAME CONFIG TRAFFIC_FN: run the daemon in rtr with CONFIG, run TRAFFIC_FN again
# with the daemon attached (payloads must stay intact); it must be attached to the lowest devices
# and its data path must have carried packets; then the scenario's strict check ("most of the
# transfer offloaded", NAME_offload_check), unless BPFQOS_EXPECT_OFFLOAD=0. Sub-result
# NAME/SUBNAME; never exits.
bpfqos_part() {
    local sub=$1 cfg=$2 traffic=$3 expect_attach=$4
    if ! have_bpfqos; then
        pending "$sub" "no bpfqos binary (set BPFQOS_BIN or cargo build); offload checks not run"
        return 0
    fi
    DAEMON_LOG=$WORK/bpfqos-daemon.log
    if (
        trap - EXIT
        trap 'fail "bpfqos part interrupted"' TERM INT
        step "bpfqos: daemon in rtr, same traffic with the data path attached"
        daemon_start rtr "$cfg"
        daemon_status >"$WORK/status-before.json"
        "$traffic"
        daemon_status >"$WORK/status-after.json" ||
            note "bpfqos status failed: $(head -c 300 "$WORK/status-after.json")"
        local attach pkts
        attach=$(json_get "$WORK/status-after.json" '",".join(sorted(a["device"]+":"+a["mode"] for a in d.get("attach",[])))')
        pkts=$(json_get "$WORK/status-after.json" 'd["offload"]["packets"]-0')
        note "bpfqos status: attach=[$attach] offload.packets=$pkts"
        # What the data path did with the frames it did not forward, for a failed strict check.
        note "bpfqos datapath: $(json_get "$WORK/status-after.json" '" ".join("%s=%s" % (k, v) for k, v in sorted(d.get("datapath", {}).items()) if isinstance(v, int) and v)')"
        echo "$attach" >"$WORK/bpfqos-attach"
        daemon_stop
        grep -iE 'warn|error' "$DAEMON_LOG" | head -n 4 | while read -r l; do note "daemon: $l"; done
        local dev
        for dev in ${expect_attach//,/ }; do
            check "bpfqos attached to $dev" grep -q "\"$dev\"" "$WORK/status-after.json"
        done
        check "bpfqos data path carried part of the traffic ($pkts packets)" test "$pkts" -ge 100
        if [ "$BPFQOS_EXPECT_OFFLOAD" = 1 ]; then
            "${traffic}_offload_check"
        fi
    ); then
        subpass "$sub"
    else
        echo "FAIL $SC/$sub" >>"$RESULTS"
        printf '  [%s] FAIL %s (see daemon log in the scenario log)\n' "$SC" "$sub" >&3
        [ -n "$DAEMON_LOG" ] && { echo "# bpfqos daemon log"; tail -n 60 "$DAEMON_LOG"; } >&3
    fi
    return 0
}

# ---------- Shaping measurements (shaping, circuits) ----------
# goodput_kbit NS ARGS...: iperf3 to the server, the receiver's goodput in kbit/s.
goodput_kbit() {
    local ns=$1
    shift
    nsx "$ns" timeout 40 iperf3 -c "$SRV4" -J "$@" |
        $PY -c 'import json,sys; d=json.load(sys.stdin); print(int(d["end"]["sum_received"]["bits_per_second"]/1000))'
}

# rtt_ms NS COUNT: median ping RTT to the server in ms.
rtt_ms() {
    nsx "$1" ping -c "$2" -i 0.2 -W 2 "$SRV4" |
        $PY -c 'import re,statistics,sys; v=[float(m) for m in re.findall(r"time=([0-9.]+)", sys.stdin.read())]; print(round(statistics.median(v), 1) if v else 9999)'
}

# qdisc_snap DEV: "seconds bytes packets drops" of DEV's root qdisc in rtr, for the wire rate
# the shaper achieved while a goodput test ran (tells an idle link from a slow shaper).
qdisc_snap() {
    nsx rtr tc -s -j qdisc show dev "$1" |
        $PY -c 'import json,sys,time; q=[q for q in json.load(sys.stdin) if q.get("root")][0]; print(time.monotonic(), q["bytes"], q["packets"], q.get("drops", 0))'
}

# wire_note DEV OVERHEAD BEFORE AFTER: note the wire rate (bytes + OVERHEAD per packet)
# between two snapshots.
wire_note() {
    note "$1 shaper: $($PY -c 'import sys; o=int(sys.argv[1]); a=[float(x) for x in sys.argv[2].split()]; b=[float(x) for x in sys.argv[3].split()]; dt=b[0]-a[0]; print("%.0f kbit/s on the wire over %.1f s, %d packets, %d drops" % ((b[1]-a[1]+o*(b[2]-a[2]))*8/dt/1000, dt, b[2]-a[2], b[3]-a[3]))' "$2" "$3" "$4")"
}

# within PCT GOT WANT: |GOT - WANT| <= PCT % of WANT
within() { awk -v g="$2" -v w="$3" -v p="$1" 'BEGIN { d = g - w; if (d < 0) d = -d; exit !(d <= w * p / 100) }'; }

# cake_opt DEV KEY: a field of the root CAKE's options in rtr
cake_opt() {
    nsx rtr tc -j -d qdisc show dev "$1" |
        $PY -c 'import json,sys; q=[q for q in json.load(sys.stdin) if q.get("root")]; print(q[0]["options"].get(sys.argv[1]) if q and q[0]["kind"]=="cake" else "not-cake")' "$2"
}

# shellcheck shell=bash disable=SC2154,SC2034  # PID_<name> come from lib.sh bg(); DIAG_NS is read there
# Shaping on a plain Ethernet WAN (NAT, 20 ms base RTT), then per-circuit limits: CAKE goodput
# both ways within 5 % of the rate minus overhead, the shaped flows offloaded through the
# shapers, and a circuit (lan2) held to its limit while lan1 gets the rest, both ways, both
# busy at once; IPv6 of the circuit's host classified by address.

UP_KBIT=3000
DOWN_KBIT=5000
OVERHEAD=18 # DOCSIS-like: CAKE's `docsis` keyword

circuits_config() {
    printf '%s\n' "config globals 'globals'
	option log_level 'debug'

config interface 'lan'
	option device 'br-lan'

config interface 'wan'
	option device 'wan0'
	option upload '$UP_KBIT'
	option download '$DOWN_KBIT'
	option overhead '$OVERHEAD'
$1"
}

# share_kbit NS PORT ARGS...: iperf3 goodput (kbit/s) of one of two concurrent clients.
share_kbit() {
    local ns=$1 port=$2
    shift 2
    nsx "$ns" timeout 40 iperf3 -c "$SRV4" -p "$port" -J "$@" >"$WORK/share-$ns-$port.json"
    $PY -c 'import json,sys; d=json.load(open(sys.argv[1])); print(int(d["end"]["sum_received"]["bits_per_second"]/1000))' "$WORK/share-$ns-$port.json"
}

scenario_main() {
    step "topology: LAN bridge (lan1, lan2) - rtr - wan0 (Ethernet, NAT) - isp - srv, 20 ms base RTT"
    eth_wan_topology
    nsx isp tc qdisc add dev i0 root netem delay 10ms limit 10000
    nsx isp tc qdisc add dev s0 root netem delay 10ms limit 10000
    local h
    for h in lan1 lan2 srv; do nsx "$h" sysctl -qw net.ipv4.tcp_ecn=1; done
    serve iperf_a srv tcp6 5201 timeout 400 iperf3 -s -p 5201
    serve iperf_b srv tcp6 5202 timeout 400 iperf3 -s -p 5202
    wait_until 10 "iperf3 servers up" sh -c "ip netns exec $SC-srv ss -Hltn 'sport = :5202' | grep -q 5202"
    wait_until 10 "lan1 reaches the server" nsx lan1 ping -c 1 -W 1 "$SRV4"
    wait_until 10 "lan2 reaches the server over IPv6" nsx lan2 ping -c 1 -W 1 fd00:200::1

    step "CAKE on wan0 (upload $UP_KBIT kbit/s) and bqd-wan (download $DOWN_KBIT kbit/s), overhead $OVERHEAD"
    daemon_start rtr "$(circuits_config "")"
    wait_until 20 "download shaper device bqd-wan" nsx rtr ip link show dev bqd-wan
    check "wan0 root is CAKE at $UP_KBIT kbit/s, overhead $OVERHEAD" \
        sh -c "[ \"$(cake_opt wan0 bandwidth)\" = $((UP_KBIT * 125)) ] && [ \"$(cake_opt wan0 overhead)\" = $OVERHEAD ]"
    # CAKE charges IP length + 18; TCP with timestamps carries 1448 of every 1500 bytes.
    local want_up want_down up down
    want_up=$((UP_KBIT * 1448 / 1518))
    want_down=$((DOWN_KBIT * 1448 / 1518))
    up=$(goodput_kbit lan1 -t 12 -O 3 -P 4)
    note "upload goodput $up kbit/s (rate minus overhead: $want_up)"
    check "upload goodput within 5 % of $want_up kbit/s (got $up)" within 5 "$up" "$want_up"
    down=$(goodput_kbit lan1 -t 12 -O 3 -P 4 -R)
    note "download goodput $down kbit/s (rate minus overhead: $want_down)"
    check "download goodput within 5 % of $want_down kbit/s (got $down)" within 5 "$down" "$want_down"
    daemon_status >"$WORK/status-eth.json"
    check "most packets through the shapers came from the offload (datapath.to_shaper)" $PY -c '
import json,sys
d = json.load(open(sys.argv[1]))
w = [i for i in d["interfaces"] if i["name"] == "wan"][0]["shaper"]
shaped = w["upload"]["packets"] + w["download"]["packets"]
print("to_shaper", d["datapath"]["to_shaper"], "of", shaped, "shaped packets")
assert d["datapath"]["to_shaper"] * 2 > shaped, (d["datapath"], d["offload"])
' "$WORK/status-eth.json"

    step "a circuit for lan2 (upload 1000, download 2000 kbit/s) by reload: HTB classes, CAKE leaves"
    printf '%s\n' "$(circuits_config "
config circuit
	option name 'lan2'
	list ip '198.18.1.12'
	list ip 'fd00:1::12'
	option upload '1000'
	option download '2000'")" >"$WORK/bpfqos-config/bpfqos"
    check "reload accepted" "$BPFQOS_BIN" reload --socket "$BPFQOS_SOCK"
    check "wan0: HTB root, the circuit's class b9f:101 ceiled at 1 Mbit/s, CAKE leaves" sh -c "
        ip netns exec $SC-rtr tc class show dev wan0 | grep -q 'class htb b9f:101 parent b9f:1 .*ceil 1Mbit' &&
        ip netns exec $SC-rtr tc qdisc show dev wan0 | grep -q 'qdisc cake ba1: parent b9f:101'"
    local a b want_a want_b dir
    for dir in upload download; do
        local rev="" circ=1000
        [ "$dir" = download ] && rev=-R && circ=2000
        local rate=$UP_KBIT
        [ "$dir" = download ] && rate=$DOWN_KBIT
        want_b=$((circ * 1448 / 1518))
        want_a=$(((rate - circ) * 1448 / 1518))
        # Both hosts busy at once: lan2 in the background, lan1 in the foreground.
        share_kbit lan2 5202 -t 12 -O 3 -P 2 $rev >"$WORK/share-b" &
        local pid=$!
        a=$(share_kbit lan1 5201 -t 12 -O 3 -P 2 $rev)
        wait "$pid"
        b=$(cat "$WORK/share-b")
        note "$dir: circuit lan2 $b kbit/s (limit minus overhead $want_b), lan1 $a kbit/s (the rest: $want_a)"
        check "$dir: lan2 within 5 % of its limit ($b vs $want_b)" within 5 "$b" "$want_b"
        check "$dir: lan1 within 5 % of the rest ($a vs $want_a)" within 5 "$a" "$want_a"
    done
    check "IPv6 of lan2 classified by address (its class counts it)" sh -c "
        before=\$(ip netns exec $SC-rtr tc -s class show dev wan0 | awk '/class htb b9f:101/ {f=1} f && /Sent/ {print \$2; exit}')
        ip netns exec $SC-lan2 ping -6 -c 20 -i 0.05 -s 1000 -W 2 -q fd00:200::1 >/dev/null
        after=\$(ip netns exec $SC-rtr tc -s class show dev wan0 | awk '/class htb b9f:101/ {f=1} f && /Sent/ {print \$2; exit}')
        echo \"class b9f:101: \$before -> \$after bytes\"
        [ \$((after - before)) -ge 20000 ]"
    daemon_status >"$WORK/status-circuits.json"
    check "status: the circuit's counters both ways, classification and NAT entries" $PY -c '
import json,sys
d = json.load(open(sys.argv[1]))
c = [c for c in d["circuits"] if c["name"] == "lan2"][0]
assert c["upload"]["bytes"] > 500000 and c["download"]["bytes"] > 500000, c
s = d["shaping"]
assert s["datapath"]["circuit_upload"] > 500 and s["datapath"]["circuit_download"] > 500, s
w = [i for i in d["interfaces"] if i["name"] == "wan"][0]["shaper"]
assert w["upload"]["circuit_classes"] == 1 and w["download"]["circuit_classes"] == 1, w
assert len(w["upload"]["tins"]) == 1, w
print("ok", c["upload"], c["download"], s)
' "$WORK/status-circuits.json"
    daemon_stop
    check "stop removed the shapers" sh -c "! ip netns exec $SC-rtr ip link show dev bqd-wan 2>/dev/null && ! ip netns exec $SC-rtr tc qdisc show dev wan0 | grep -q b9f:"
}

# shellcheck shell=bash disable=SC2154,SC2034  # PID_<name> come from lib.sh bg(); DIAG_NS is read there
# Shaping with CAKE and fq_codel (only this kernel has them): the codec's CAKE/fq_codel options
# against tc, then the classic OpenWrt WAN (PPPoE over VLAN 7, NAT) with 20 ms of base RTT,
# shaped by bpfqos like sqm's piece_of_cake: what tc shows, goodput within 5 % of the rate
# minus the overhead, and latency under load in both directions from two LAN hosts.

UP_KBIT=3000
DOWN_KBIT=5000

shaping_config() {
    printf '%s\n' "config globals 'globals'
	option log_level 'debug'

config interface 'lan'
	option device 'br-lan'

config interface 'wan'
	option device 'pppoe-wan'
	option upload '$UP_KBIT'
	option download '$DOWN_KBIT'
	option qdisc '$1'
	option overhead '34'"
}

scenario_main() {
    step "the tc codec: every CAKE and fq_codel option as tc reads it back"
    local codec_bin
    codec_bin=$(ls -t "$(dirname "$BPFQOS_BIN")"/deps/tc_codec-* 2>/dev/null | grep -v '\.d$' | head -n1)
    check "tests/tc_codec.rs test binary built (make test builds it before the VM runs)" test -x "$codec_bin"
    check "CAKE and fq_codel options read back as asked (tc -j -d qdisc)" \
        env CI=true "$codec_bin" --ignored --exact cake_and_fq_codel_options_read_back_as_asked --test-threads=1

    step "topology: PPPoE over VLAN 7, 20 ms base RTT (netem at the ISP), server behind the ISP"
    PPPOE_SRV_NS=1 pppoe_topology 7
    # The ISP's VLAN tag inside the frame, as a NIC that does not strip tags hands it to XDP.
    # With veth's VLAN offload the tag travels in skb metadata, which XDP cannot see: the
    # download would not match its flow at XDP and, since TC cannot take the PPPoE header off,
    # stay on the (shaped) kernel path (docs/ARCHITECTURE.md, "Shaping").
    nsx isp ethtool -K i0 txvlan off >/dev/null
    nsx isp tc qdisc add dev i0 root netem delay 10ms limit 10000
    nsx isp tc qdisc add dev s0 root netem delay 10ms limit 10000
    # End hosts negotiate ECN, as most do today: CAKE marks instead of dropping.
    local h
    for h in lan1 lan2 srv; do nsx "$h" sysctl -qw net.ipv4.tcp_ecn=1; done
    serve iperf_a srv tcp6 5201 timeout 300 iperf3 -s -p 5201
    wait_until 10 "iperf3 server up" sh -c "ip netns exec $SC-srv ss -Hltn 'sport = :5201' | grep -q 5201"
    local idle
    idle=$(rtt_ms lan1 10)
    note "idle RTT lan1 -> server: $idle ms"
    check "base RTT about 20 ms (got $idle)" awk -v r="$idle" 'BEGIN { exit !(r >= 19 && r <= 40) }'

    # What the emulated path carries with no shaper (about 12 Mbit/s each way on one emulated
    # CPU, the ISP side being user-mode PPPoE): the rates must stay well under it,
    # or the check measures the emulator instead of the shaper.
    note "unshaped path: upload $(goodput_kbit lan1 -t 5 -O 1 -P 4) kbit/s, download $(goodput_kbit lan1 -t 5 -O 1 -P 4 -R) kbit/s"

    step "bpfqos: CAKE on pppoe-wan (upload $UP_KBIT kbit/s) and on bqd-wan (download $DOWN_KBIT kbit/s)"
    daemon_start rtr "$(shaping_config cake)"
    wait_until 20 "download shaper device bqd-wan" nsx rtr ip link show dev bqd-wan
    check "pppoe-wan root is CAKE at $UP_KBIT kbit/s" test "$(cake_opt pppoe-wan bandwidth)" = "$((UP_KBIT * 125))"
    check "upload CAKE: overhead 34" test "$(cake_opt pppoe-wan overhead)" = 34
    check "upload CAKE: dual-srchost" test "$(cake_opt pppoe-wan flowmode)" = dual-srchost
    check "upload CAKE: nat" test "$(cake_opt pppoe-wan nat)" = True
    check "upload CAKE: besteffort" test "$(cake_opt pppoe-wan diffserv)" = besteffort
    check "download CAKE at $DOWN_KBIT kbit/s" test "$(cake_opt bqd-wan bandwidth)" = "$((DOWN_KBIT * 125))"
    check "download CAKE: dual-dsthost ingress" \
        sh -c "[ \"$(cake_opt bqd-wan flowmode)\" = dual-dsthost ] && [ \"$(cake_opt bqd-wan ingress)\" = True ]"
    check "pppoe-wan ingress steers into bqd-wan" \
        sh -c "ip netns exec $SC-rtr tc filter show dev pppoe-wan ingress | grep -q bpfqos_dl_steer"

    # Goodput: CAKE accounts IP length + 34 per packet; TCP over PPPoE (MTU 1492, MSS 1452,
    # timestamps: 1440 bytes of payload per packet) gets rate * 1440 / (1492 + 34).
    local want_up want_down up down
    want_up=$((UP_KBIT * 1440 / 1526))
    want_down=$((DOWN_KBIT * 1440 / 1526))
    local s0 s1
    s0=$(qdisc_snap pppoe-wan)
    up=$(goodput_kbit lan1 -t 12 -O 3 -P 4)
    s1=$(qdisc_snap pppoe-wan)
    wire_note pppoe-wan 34 "$s0" "$s1"
    note "upload goodput $up kbit/s (rate minus overhead: $want_up)"
    check "upload goodput within 5 % of $want_up kbit/s (got $up)" within 5 "$up" "$want_up"
    s0=$(qdisc_snap bqd-wan)
    down=$(goodput_kbit lan1 -t 12 -O 3 -P 4 -R)
    s1=$(qdisc_snap bqd-wan)
    wire_note bqd-wan 20 "$s0" "$s1"
    note "download goodput $down kbit/s (rate minus overhead: $want_down)"
    check "download goodput within 5 % of $want_down kbit/s (got $down)" within 5 "$down" "$want_down"

    step "latency under load: bulk both ways from lan1 and lan2, ping from lan1"
    serve iperf_b srv tcp6 5202 timeout 300 iperf3 -s -p 5202
    serve iperf_c srv tcp6 5203 timeout 300 iperf3 -s -p 5203
    serve iperf_d srv tcp6 5204 timeout 300 iperf3 -s -p 5204
    sleep 1
    bg load_up1 lan1 timeout 40 iperf3 -c "$SRV4" -p 5201 -t 14 -P 1
    bg load_dn1 lan1 timeout 40 iperf3 -c "$SRV4" -p 5202 -t 14 -P 1 -R
    bg load_up2 lan2 timeout 40 iperf3 -c "$SRV4" -p 5203 -t 14 -P 1
    bg load_dn2 lan2 timeout 40 iperf3 -c "$SRV4" -p 5204 -t 14 -P 1 -R
    sleep 3
    local loaded
    loaded=$(rtt_ms lan1 40)
    note "RTT under load $loaded ms (idle $idle ms; the goal: at most 15 ms above idle)"
    # The 15 ms goal is a figure (the note above; +9 ms on a quiet machine, +21 ms once on a
    # loaded one, where the emulator itself slows every packet: a timing, not a test). What is
    # checked is that the shapers keep the queue short under four bulk transfers.
    check "ping under load at most 40 ms above idle: the shapers hold the queue ($loaded vs $idle)" \
        awk -v l="$loaded" -v i="$idle" 'BEGIN { exit !(l <= i + 40) }'
    wait "$PID_load_up1" "$PID_load_dn1" "$PID_load_up2" "$PID_load_dn2" 2>/dev/null || true
    daemon_status >"$WORK/status-cake.json"
    check "status: upload and download shapers with counters and tins" $PY -c '
import json,sys
d = json.load(open(sys.argv[1]))
w = [i for i in d["interfaces"] if i["name"] == "wan"][0]["shaper"]
for k in ("upload", "download"):
    s = w[k]
    assert s["qdisc"] == "cake" and s["bytes"] > 1000000, (k, s)
    assert s["ecn_marks"] is not None and len(s["tins"]) == 1, (k, s)
print("ok", {k: (w[k]["bytes"], w[k]["drops"], w[k]["ecn_marks"]) for k in ("upload", "download")})
' "$WORK/status-cake.json"
    # With offload on, the shaped flows were forwarded by the data path, through the shapers.
    check "most packets through the shapers came from the offload (datapath.to_shaper)" $PY -c '
import json,sys
d = json.load(open(sys.argv[1]))
w = [i for i in d["interfaces"] if i["name"] == "wan"][0]["shaper"]
shaped = w["upload"]["packets"] + w["download"]["packets"]
to_shaper = d["datapath"]["to_shaper"]
print("to_shaper", to_shaper, "of", shaped, "shaped packets")
assert to_shaper * 2 > shaped, (to_shaper, shaped, d["datapath"], d["offload"])
' "$WORK/status-cake.json"

    step "fq_codel under HTB, by reload: tree and goodput"
    printf '%s\n' "$(shaping_config fq_codel)" >"$WORK/bpfqos-config/bpfqos"
    check "reload accepted" "$BPFQOS_BIN" reload --socket "$BPFQOS_SOCK"
    check "pppoe-wan: HTB root with an fq_codel leaf" \
        sh -c "ip netns exec $SC-rtr tc -j qdisc show dev pppoe-wan | grep -q '\"kind\":\"htb\"' && ip netns exec $SC-rtr tc -j qdisc show dev pppoe-wan | grep -q '\"kind\":\"fq_codel\"'"
    up=$(goodput_kbit lan2 -t 12 -O 3 -P 4)
    note "fq_codel upload goodput $up kbit/s"
    check "fq_codel upload goodput within 5 % of $want_up kbit/s (got $up)" within 5 "$up" "$want_up"
    daemon_stop
    check "stop removed the shapers (bqd-wan gone)" sh -c "! ip netns exec $SC-rtr ip link show dev bqd-wan 2>/dev/null"
}

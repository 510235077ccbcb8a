# shellcheck shell=bash disable=SC2154,SC2034  # PID_<name> come from lib.sh bg(); DIAG_NS is read there
# CAKE and fq_codel are there and shape: the smoke check the QoS work (issue: SQM) builds on.
# A veth between two namespaces; CAKE at 2 Mbit/s, then fq_codel, on the sender's egress;
# bounded transfers; counters read back with `tc -s -j qdisc`. Also CAKE with PPPoE overhead on
# an ingress-shaping IFB, as sqm-scripts sets it up.

qdisc_stat() {  # qdisc_stat NS DEV KIND FIELD
    nsx "$1" tc -s -j qdisc show dev "$2" |
        $PY -c 'import json,sys; q=[q for q in json.load(sys.stdin) if q["kind"]==sys.argv[1]]; print(q[0][sys.argv[2]] if q else -1)' "$3" "$4"
}

scenario_main() {
    step "topology: a (198.18.50.1) - b (198.18.50.2)"
    ns_add a b
    DIAG_NS=$SC-a
    veth a a0 b b0
    nsx a ip addr add 198.18.50.1/24 dev a0
    nsx b ip addr add 198.18.50.2/24 dev b0
    host_nic a a0
    host_nic b b0
    serve srv b tcp 5201 timeout 120 $XFER server --bind 198.18.50.2 --port 5201 --count 3 --timeout 110

    step "CAKE bandwidth 2mbit on a0"
    nsx a tc qdisc add dev a0 root cake bandwidth 2mbit
    check "tc shows cake at 2 Mbit/s" \
        sh -c "ip netns exec $SC-a tc -j qdisc show dev a0 | grep -q '\"kind\":\"cake\"'"
    local t0 t1 sent
    t0=$(date +%s.%N)
    check "512 KiB through CAKE, hashes equal" tcp_xfer a 198.18.50.2 5201 524288 1024
    t1=$(date +%s.%N)
    sent=$(qdisc_stat a a0 cake bytes)
    note "cake: $sent bytes sent in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s (2 Mbit/s needs >= 2.1 s)"
    check "cake counted the transfer (>= 524288 bytes, got $sent)" test "$sent" -ge 524288
    # A lower bound only: the shaper must have held the rate down (a slow VM only adds time).
    check "cake held the rate: 512 KiB took >= 1.6 s" awk -v a="$t0" -v b="$t1" 'BEGIN{exit !(b-a >= 1.6)}'

    step "fq_codel on a0"
    nsx a tc qdisc replace dev a0 root fq_codel
    check "512 KiB through fq_codel, hashes equal" tcp_xfer a 198.18.50.2 5201 524288 1024
    sent=$(qdisc_stat a a0 fq_codel bytes)
    check "fq_codel counted the transfer (>= 524288 bytes, got $sent)" test "$sent" -ge 524288

    step "ingress shaping like sqm-scripts: IFB + CAKE (overhead 34, ingress mode) on b0"
    nsx b ip link add ifb4b0 type ifb
    nsx b ip link set ifb4b0 up
    nsx b tc qdisc add dev b0 handle ffff: ingress
    nsx b tc filter add dev b0 parent ffff: matchall action mirred egress redirect dev ifb4b0
    nsx b tc qdisc add dev ifb4b0 root cake bandwidth 5mbit overhead 34 ingress
    check "256 KiB through the IFB + CAKE ingress shaper, hashes equal" tcp_xfer a 198.18.50.2 5201 262144 1024
    sent=$(qdisc_stat b ifb4b0 cake packets)
    check "ingress CAKE counted packets ($sent)" test "$sent" -ge 100
}

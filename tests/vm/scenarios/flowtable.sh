# shellcheck shell=bash disable=SC2154,SC2034  # PID_<name> come from lib.sh bg(); DIAG_NS is read there
# The incumbent: the kernel's nftables flowtable (OpenWrt's "software flow offloading") on the
# same PPPoE/VLAN 7 router. Same traffic, same payload and NAT checks as pppoe-vlan-nat, plus
# proof that the flowtable carried it: conntrack shows [OFFLOAD] and the forward chain saw only
# the first packets of each flow. A functional parity check to extend into a comparison bench.

FT_NFT='table inet bpfqos_test_ft {
    flowtable ft {
        hook ingress priority 0
        devices = { "w0", "l1", "l2" }
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        meta l4proto { tcp, udp } ct state established counter flow add @ft
    }
}'

scenario_main() {
    step "topology: PPPoE/VLAN 7 router + nft flowtable on w0, l1, l2"
    pppoe_topology 7
    nsx rtr nft -f - <<<"$FT_NFT"
    local sid
    sid=$(pppoe_sid rtr)

    step "traffic through the flowtable; capture at the ISP"
    : >"$WORK/peers"
    serve srv_tcp isp tcp 5201 timeout 90 $XFER server --bind "$SRV4" --port 5201 --count 2 --timeout 80 --peers "$WORK/peers"
    serve srv_udp isp udp 5202 timeout 90 $XFER server --udp --bind "$SRV4" --port 5202 --timeout 60 --peers "$WORK/peers"
    cap_start isp isp i0 -c 1200
    # A paced UDP flow that is still running while conntrack is inspected. It shares the link with
    # two bulk TCP transfers through a user-mode PPPoE server under software emulation: a
    # datagram or two may be dropped by congestion; none may arrive corrupted.
    bg udp_flow lan2 timeout 60 $XFER client --udp --connect "$SRV4" --port 5202 --count 60 --size 800 --io-timeout 2 --interval 0.2 --max-loss 2
    check "lan1: 1 MiB up + 1 MiB down, hashes equal" tcp_xfer lan1 "$SRV4" 5201 1048576 1048576
    nsx rtr conntrack -L >"$WORK/conntrack.txt" 2>&1 || true
    check "lan2: 512 KiB up + 1 MiB down, hashes equal" tcp_xfer lan2 "$SRV4" 5201 524288 1048576
    cap_stop isp
    check "paced UDP flow: echoed intact (at most 2 of 60 lost to congestion)" wait "$PID_udp_flow"
    check "conntrack shows the running UDP flow [OFFLOAD]" \
        sh -c "grep 'src=198.18.1.12' '$WORK/conntrack.txt' | grep '^udp' | grep -q 'OFFLOAD'"
    check "server saw only the router's WAN address (NAT)" peers_only "$WORK/peers" "$WAN4"
    check "ISP side: VLAN 7 + PPPoE sid $sid + length fields both ways; NATed, TTL 63 (flowtable decrements too)" \
        $PY "$VMDIR/tools/pcapcheck.py" "$WORK/isp.pcap" \
        "src=$WAN4,dst=$SRV4,vlan=7,sid=$sid,ttl=63,min=50" \
        "src=$SRV4,dst=$WAN4,vlan=7,sid=$sid,ttl=64,min=50"
    local fwd
    fwd=$(nsx rtr nft -j list table inet bpfqos_test_ft |
        $PY -c 'import json,sys; print(sum(e["counter"]["packets"] for r in json.load(sys.stdin)["nftables"] if "rule" in r for e in r["rule"]["expr"] if "counter" in e))')
    note "forward chain saw $fwd established packets of ~4,000 forwarded"
    check "the flowtable, not the forward chain, carried the bulk (forward saw $fwd < 1000)" test "$fwd" -lt 1000
    check "ping through the flowtable router: TTL 63" ping_ttl lan1 "$SRV4" 63
}

# shellcheck shell=bash disable=SC2154,SC2034  # PID_<name> come from lib.sh bg(); DIAG_NS is read there
# The classic OpenWrt WAN: kernel-mode PPPoE over VLAN 7, masquerade on pppoe-wan, a LAN bridge
# with two ports. Kernel path first (the oracle), then bpfqos attached (see bpfqos_part in
# lib.sh).

# Bulk both ways from both LAN ports, UDP echo, with every payload hash checked.
wan_traffic() {
    : >"$WORK/peers"
    serve srv_tcp isp tcp 5201 timeout 90 $XFER server --bind "$SRV4" --port 5201 --count 2 --timeout 80 --peers "$WORK/peers"
    serve srv_udp isp udp 5202 timeout 90 $XFER server --udp --bind "$SRV4" --port 5202 --timeout 40 --peers "$WORK/peers"
    check "lan1: 1 MiB up + 1 MiB down over PPPoE, hashes equal" tcp_xfer lan1 "$SRV4" 5201 1048576 1048576
    check "lan2: 256 KiB up + 2 MiB down over PPPoE, hashes equal" tcp_xfer lan2 "$SRV4" 5201 262144 2097152
    check "conntrack in rtr: lan1's flow NATed to $WAN4" \
        sh -c "ip netns exec $SC-rtr conntrack -L 2>/dev/null | grep 'src=198.18.1.11 dst=$SRV4' | grep -q 'dst=$WAN4'"
    check "lan1: 200 UDP datagrams echoed intact" udp_echo lan1 "$SRV4" 5202 200 1200
    kill "$PID_srv_udp" 2>/dev/null || true
    check "server saw only the router's WAN address (NAT)" peers_only "$WORK/peers" "$WAN4"
}
wan_traffic_offload_check() {
    local before after
    before=$(json_get "$WORK/status-before.json" 'd["offload"]["packets"]')
    after=$(json_get "$WORK/status-after.json" 'd["offload"]["packets"]')
    # ~1,700 full-size TCP segments per MiB each way; most must have taken the offload path.
    check "bpfqos offload counters carried the transfer ($before -> $after packets)" \
        test "$((after - before))" -ge 3000
}

scenario_main() {
    step "topology: lan1,lan2 - br-lan [rtr] pppoe-wan/w0.7 - i0.7 [isp]"
    pppoe_topology 7
    local sid
    sid=$(pppoe_sid rtr)
    check "PPPoE session id known from /proc/net/pppoe ($sid)" test "${sid:-0}" -gt 0
    check "/proc/net/pppoe names w0.7" nsx rtr grep -q "w0.7" /proc/net/pppoe
    note "PPPoE session 0x$(printf %04x "$sid") on w0.7"

    step "kernel path: traffic both ways, capture at the ISP and on lan1"
    # The first frames of each capture are checked (scapy in a TCG guest does ~100 frames/s).
    cap_start isp isp i0 -c 1200
    cap_start lan lan1 e0 -c 600 ip
    wan_traffic
    check "ping lan1 -> server: reply TTL 63 (decremented once by the router)" ping_ttl lan1 "$SRV4" 63
    cap_stop isp
    cap_stop lan
    check "ISP side: VLAN 7 + PPPoE sid $sid + length fields both ways; NATed source, TTL 63 upstream" \
        $PY "$VMDIR/tools/pcapcheck.py" "$WORK/isp.pcap" \
        "src=$WAN4,dst=$SRV4,vlan=7,sid=$sid,ttl=63,min=50" \
        "src=$SRV4,dst=$WAN4,vlan=7,sid=$sid,ttl=64,min=50"
    check "LAN side, downstream: plain Ethernet, de-NATed destination, TTL 63" \
        $PY "$VMDIR/tools/pcapcheck.py" "$WORK/lan.pcap" "src=$SRV4,dst=198.18.1.11,ttl=63,min=100"

    bpfqos_part bpfqos "config globals 'globals'
	option enabled '1'
	option offload '1'
	option log_level 'debug'

config interface 'wan'
	option device 'pppoe-wan'

config interface 'lan'
	option device 'br-lan'" wan_traffic "w0,l1,l2"
}

# shellcheck shell=bash disable=SC2154,SC2034,SC2086,SC2153  # PID_<name> come from lib.sh bg(); DIAG_NS is read there; $XFER/$PY are command lines; SRV4 is lib.sh's
# QinQ WAN: 802.1ad outer tag 100, 802.1Q inner tag 7, IPoE (as fibre ISPs hand out).
# IPv4 is masqueraded; IPv6 is routed without NAT (the ISP routes the LAN's fd00:1::/64 to the
# router). Kernel path first, then bpfqos attached (offload: see bpfqos_part in lib.sh).
#
#   lan1/lan2 ─ br-lan [rtr] w0.100.7 (198.18.200.2, fd00:200::2) ─ w0 ══ i0 ─ i0.100.7 [isp]
#   [isp] srv0: 198.19.0.1, fd00:99::1

SRV6=fd00:99::1
QWAN4=198.18.200.2

qinq_traffic() {
    : >"$WORK/peers"
    serve srv_tcp4 isp tcp 5201 timeout 90 $XFER server --bind "$SRV4" --port 5201 --count 1 --timeout 80 --peers "$WORK/peers"
    serve srv_tcp6 isp tcp6 5201 timeout 90 $XFER server --bind "$SRV6" --port 5201 --count 2 --timeout 80 --peers "$WORK/peers"
    serve srv_udp6 isp udp6 5202 timeout 90 $XFER server --udp --bind "$SRV6" --port 5202 --timeout 40 --peers "$WORK/peers"
    check "IPv4 lan1: 1 MiB up + 2 MiB down over QinQ, hashes equal" tcp_xfer lan1 "$SRV4" 5201 1048576 2097152
    check "IPv6 lan2: 1 MiB up + 2 MiB down over QinQ, hashes equal" tcp_xfer lan2 "$SRV6" 5201 1048576 2097152
    check "IPv6 lan1: 256 KiB up + 1 MiB down, hashes equal" tcp_xfer lan1 "$SRV6" 5201 262144 1048576
    check "IPv6 lan2: 200 UDP datagrams echoed intact" udp_echo lan2 "$SRV6" 5202 200 1200
    kill "$PID_srv_udp6" 2>/dev/null || true
    check "IPv4 was masqueraded to $QWAN4" grep -q "^tcp $QWAN4 " "$WORK/peers"
    check "IPv6 kept the LAN hosts' own addresses (routed, no NAT)" \
        sh -c "grep -q '^tcp fd00:1::12 ' '$WORK/peers' && grep -q '^tcp fd00:1::11 ' '$WORK/peers' && grep -q '^udp fd00:1::12 ' '$WORK/peers'"
    check "no IPv4 LAN address leaked to the ISP" sh -c "! grep -q ' 198\.18\.1\.' '$WORK/peers'"
}
qinq_traffic_offload_check() {
    local before after
    before=$(json_get "$WORK/status-before.json" 'd["offload"]["packets"]')
    after=$(json_get "$WORK/status-after.json" 'd["offload"]["packets"]')
    check "bpfqos offload counters carried the transfers ($before -> $after packets)" \
        test "$((after - before))" -ge 3000
}

scenario_main() {
    step "topology: lan1,lan2 - br-lan [rtr] w0.100.7 (802.1ad 100 / 802.1Q 7) - [isp]"
    ns_add isp rtr lan1 lan2
    DIAG_NS=$SC-rtr
    veth rtr w0 isp i0
    host_nic isp i0
    isp_tags_in_frame isp i0
    local side dev
    for side in rtr:w0 isp:i0; do
        dev=${side#*:}
        nsx "${side%%:*}" ip link add link "$dev" name "$dev.100" type vlan proto 802.1ad id 100
        nsx "${side%%:*}" ip link add link "$dev.100" name "$dev.100.7" type vlan proto 802.1Q id 7
        nsx "${side%%:*}" ip link set "$dev.100" up
        nsx "${side%%:*}" ip link set "$dev.100.7" up
        # Room for both tags in the frame (a veth drops what exceeds its MTU + 14 + 4): the
        # ISP sends them in the data (isp_tags_in_frame) and XDP's upload carries them too.
        # Set after the VLAN devices exist, which keep their MTU of 1500.
        nsx "${side%%:*}" ip link set "$dev" mtu 1504
    done
    nsx isp ip addr add 198.18.200.1/24 dev i0.100.7
    nsx isp ip addr add fd00:200::1/64 dev i0.100.7 nodad
    nsx isp ip link add srv0 type dummy
    nsx isp ip addr add "$SRV4/32" dev srv0
    nsx isp ip addr add "$SRV6/128" dev srv0 nodad
    nsx isp ip link set srv0 up
    nsx isp sysctl -qw net.ipv6.conf.all.forwarding=1
    nsx isp ip -6 route add fd00:1::/64 via fd00:200::2
    nsx rtr ip addr add "$QWAN4/24" dev w0.100.7
    nsx rtr ip addr add fd00:200::2/64 dev w0.100.7 nodad
    lan_topology
    nsx rtr ip route add default via 198.18.200.1
    nsx rtr ip -6 route add default via fd00:200::1
    nsx rtr nft -f - <<NFT
table inet bpfqos_test_nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "w0.100.7" meta nfproto ipv4 masquerade
    }
}
NFT

    step "kernel path: IPv4 NAT + IPv6 routed, capture at the ISP"
    cap_start isp4 isp i0 -c 500 "vlan 100 and vlan 7 and ip"
    cap_start isp6 isp i0 -c 800 "vlan 100 and vlan 7 and ip6"
    qinq_traffic
    check "ping6 lan1 -> server: reply hop limit 63" ping_ttl lan1 "$SRV6" 63
    check "ping lan2 -> server: reply TTL 63" ping_ttl lan2 "$SRV4" 63
    cap_stop isp4
    cap_stop isp6
    check "ISP side: 802.1ad 100 + 802.1Q 7 on IPv4, NATed, TTL 63" \
        $PY "$VMDIR/tools/pcapcheck.py" "$WORK/isp4.pcap" "src=$QWAN4,dst=$SRV4,outer-vlan=100,vlan=7,ttl=63,min=100"
    check "ISP side: 802.1ad 100 + 802.1Q 7 on IPv6, LAN source kept, hop limit 63 up / 64 down" \
        $PY "$VMDIR/tools/pcapcheck.py" "$WORK/isp6.pcap" \
        "src=fd00:1::12,dst=$SRV6,outer-vlan=100,vlan=7,ttl=63,min=100" \
        "src=$SRV6,dst=fd00:1::12,outer-vlan=100,vlan=7,ttl=64,min=20"

    bpfqos_part bpfqos "config globals 'globals'
	option enabled '1'
	option offload '1'
	option log_level 'debug'

config interface 'wan'
	option device 'w0.100.7'

config interface 'lan'
	option device 'br-lan'" qinq_traffic "w0,l1,l2"
}

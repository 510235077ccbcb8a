# shellcheck shell=bash disable=SC2154,SC2034  # PID_<name> come from lib.sh bg(); DIAG_NS is read there
# PPPoE reconnect: kill pppd, start it again. The new session must get a new session id, traffic
# must work again, and no frame may leave with the old session id (a stale flow would do exactly
# that). A UDP flow keeps running across the reconnect, so a stale flow would have traffic to
# carry. Kernel path first; then the same with bpfqos attached (offload: see bpfqos_part in lib.sh
# lands: the daemon must follow the new session and drop the flows of the old one).

# reconnect_cycle: one disconnect/reconnect with a paced UDP flow running across it; checks the
# session id changed and every frame captured afterwards carries the new id. Sets OLD_SID/NEW_SID.
reconnect_cycle() {
    OLD_SID=$(pppoe_sid rtr)
    WAN_BEFORE=$(ppp_addr rtr)
    serve srv_udp isp udp 5202 timeout 90 $XFER server --udp --bind "$SRV4" --port 5202 --timeout 80
    serve srv_tcp isp tcp 5201 timeout 90 $XFER server --bind "$SRV4" --port 5201 --count 2 --timeout 80
    check "TCP before the reconnect: 512 KiB each way, hashes equal" tcp_xfer lan1 "$SRV4" 5201 524288 524288
    # ~40 s of paced UDP (5 datagrams/s), one socket, spanning the reconnect.
    bg udp_flow lan2 timeout 60 $XFER client --udp --connect "$SRV4" --port 5202 --count 200 --size 600 --io-timeout 0.3 --interval 0.2
    sleep 2
    step "kill pppd (session $OLD_SID), wait for the link to go, start pppd again"
    kill -TERM "$PID_pppd"
    wait_until 15 "pppoe-wan gone" sh -c "! ip netns exec $SC-rtr ip link show pppoe-wan"
    wait_until 10 "session gone from /proc/net/pppoe" sh -c "[ \$(ip netns exec $SC-rtr wc -l < /proc/net/pppoe) -le 1 ]"
    pppoe_client_start rtr w0.7
    wait_until 60 "PPPoE session up again" ppp_has_ip rtr pppoe-wan
    wait_until 10 "default route via pppoe-wan again" sh -c "ip netns exec $SC-rtr ip route show default | grep -q pppoe-wan"
    NEW_SID=$(pppoe_sid rtr)
    NEW_WAN=$(ppp_addr rtr)
    note "session id $OLD_SID -> $NEW_SID, WAN address $WAN_BEFORE -> $NEW_WAN"
    check "new session id differs ($OLD_SID -> $NEW_SID)" test "$NEW_SID" != "$OLD_SID"
    cap_start after isp i0 -c 1500
    check "TCP after the reconnect: 512 KiB each way, hashes equal" tcp_xfer lan1 "$SRV4" 5201 524288 524288
    # Let the UDP flow that started before the reconnect go on for a while under the new session.
    sleep 3
    check "the UDP flow from before the reconnect is NATed to the new address $NEW_WAN" \
        sh -c "ip netns exec $SC-rtr conntrack -L -p udp 2>/dev/null | grep 'src=198.18.1.12' | grep -q 'dst=$NEW_WAN '"
    cap_stop after
    kill "$PID_udp_flow" 2>/dev/null || true
    check "after the reconnect only session $NEW_SID is on the wire (UDP flow from before + new TCP)" \
        $PY "$VMDIR/tools/pcapcheck.py" "$WORK/after.pcap" \
        "src=$NEW_WAN,dst=$SRV4,proto=udp,vlan=7,sid=$NEW_SID,ttl=63,min=5" \
        "src=$NEW_WAN,dst=$SRV4,proto=tcp,vlan=7,sid=$NEW_SID,ttl=63,min=100" \
        "src=$SRV4,dst=$NEW_WAN,vlan=7,sid=$NEW_SID,min=100"
    check "nothing left with the old session $OLD_SID or the old address $WAN_BEFORE" \
        $PY "$VMDIR/tools/pcapcheck.py" "$WORK/after.pcap" "src=$WAN_BEFORE,dst=$SRV4,min=0,max=0" "src=$SRV4,dst=$WAN_BEFORE,min=0,max=0"
    kill "$PID_srv_udp" "$PID_srv_tcp" 2>/dev/null || true
}
reconnect_cycle_offload_check() {
    local before after
    before=$(json_get "$WORK/status-before.json" 'd["offload"]["packets"]')
    after=$(json_get "$WORK/status-after.json" 'd["offload"]["packets"]')
    check "bpfqos offloaded traffic in the new session ($before -> $after packets)" test "$((after - before))" -ge 500
    check "bpfqos still attached to w0 after the reconnect" grep -q '"w0"' "$WORK/status-after.json"
}

scenario_main() {
    step "topology: PPPoE/VLAN 7 router"
    pppoe_topology 7
    step "kernel path: reconnect with traffic running"
    reconnect_cycle

    # Logical networks here, as on a router: resolved through the network config with netifd's
    # naming (wan, proto pppoe -> pppoe-wan) and walked down to w0 / the bridge ports.
    NETWORK_CFG="config interface 'lan'
	option device 'br-lan'
	option proto 'static'

config interface 'wan'
	option device 'w0.7'
	option proto 'pppoe'" bpfqos_part bpfqos "config globals 'globals'
	option enabled '1'
	option offload '1'
	option log_level 'debug'

config interface 'wan'
	option network 'wan'

config interface 'lan'
	option network 'lan'" reconnect_cycle "w0,l1,l2"
}

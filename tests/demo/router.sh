# shellcheck shell=bash
# The demo's namespace router, shared by tests/demo/run.sh (make demo) and bench/forwarding.sh
# (make bench). Source it, set LAN RTR SRV (namespace names) and call router_build:
#
#   LAN client            router                                  WAN server
#   c0 198.18.1.2 ── lan1 [br-lan 198.18.1.1]  wan0 198.19.0.1 ── s0 198.19.0.2
#      fd00:1::2                 fd00:1::1           fd00:2::1       fd00:2::2
#
# NAT (masquerade) on wan0, forwarding on, rp_filter off, and ../shared/testing.md's veth rules:
# the end hosts send full checksums and unsegmented frames like real NICs, and every veth that
# receives redirected frames runs NAPI (GRO on; lan1 needs it whenever no XDP is attached).
# Removing the namespaces is the caller's job (its cleanup trap).

router_build() {
	local ns
	for ns in "$LAN" "$RTR" "$SRV"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
	ip -n "$LAN" link add c0 type veth peer name lan1 netns "$RTR"
	ip -n "$SRV" link add s0 type veth peer name wan0 netns "$RTR"
	ip -n "$RTR" link add br-lan type bridge
	ip -n "$RTR" link set lan1 master br-lan
	for d in lan1 br-lan wan0; do ip -n "$RTR" link set "$d" up; done
	ip -n "$LAN" link set c0 up
	ip -n "$SRV" link set s0 up
	ip -n "$RTR" addr add 198.18.1.1/24 dev br-lan
	ip -n "$RTR" addr add fd00:1::1/64 dev br-lan nodad
	ip -n "$RTR" addr add 198.19.0.1/24 dev wan0
	ip -n "$RTR" addr add fd00:2::1/64 dev wan0 nodad
	ip -n "$LAN" addr add 198.18.1.2/24 dev c0
	ip -n "$LAN" addr add fd00:1::2/64 dev c0 nodad
	ip -n "$LAN" route add default via 198.18.1.1
	ip -n "$LAN" -6 route add default via fd00:1::1
	ip -n "$SRV" addr add 198.19.0.2/24 dev s0
	ip -n "$SRV" addr add fd00:2::2/64 dev s0 nodad
	ip -n "$SRV" -6 route add default via fd00:2::1
	# The router's way out is the WAN, as on a real one (bpfqos takes wan0 for the WAN side).
	ip -n "$RTR" route add default via 198.19.0.2
	ip -n "$RTR" -6 route add default via fd00:2::2
	ip netns exec "$RTR" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
		net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
		net.ipv4.conf.br-lan.rp_filter=0 net.ipv4.conf.wan0.rp_filter=0
	ip netns exec "$RTR" nft -f - <<'NFT'
table inet bpfqos_demo_nat {
	chain post { type nat hook postrouting priority srcnat; oifname "wan0" masquerade; }
}
NFT
	ip netns exec "$LAN" ethtool -K c0 tx off tso off gso off gro on >/dev/null
	ip netns exec "$SRV" ethtool -K s0 tx off tso off gso off gro on >/dev/null
	ip netns exec "$RTR" ethtool -K lan1 gro on >/dev/null
	ip netns exec "$RTR" ethtool -K wan0 gro on >/dev/null
}

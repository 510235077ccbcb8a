# shellcheck shell=bash disable=SC2154,SC2034  # PID_<name> come from lib.sh bg(); DIAG_NS is read there
# Passive latency against netem: 40 ms on the ISP side, 5 ms on the LAN side. TCP transfers
# both ways, with offload on and off, with and without TCP timestamps: the RTT bpfqos reports
# per flow (its smallest sample) never below netem's delay and within 2 ms or 5 % of ping's
# minimum on the WAN side, 1 ms on the LAN side, the per-interface median consistent with it;
# then 1 % loss on the ISP side: the retransmits counted at the router within 10 % of what the
# sender counts.
#
# The half that carries no data (the LAN side of an upload, the WAN side of a download) is timed
# by timestamps only, as often as the far end sends (iperf3's paced sender: in bursts, a few
# samples); without timestamps it has one sample only: the handshake. One sample carries the far end's scheduling
# delay in full (a loaded VM: +2 ms seen), so it is checked against the delay and ping's median
# with a wider margin, and the data-bearing half must have many samples. Each transfer runs
# under a fresh daemon: its window and its `rtt.top` (the 20 slowest halves) hold that transfer
# only, whatever earlier transfers left behind.

LAN1=198.18.1.11
WAN_DELAY_MS=40
LAN_DELAY_MS=5

rtt_config() {
    printf '%s\n' "config globals 'globals'
	option offload '$1'
	option rtt '1'
	option log_level 'debug'

config interface 'lan'
	option device 'br-lan'

config interface 'wan'
	option device 'wan0'"
}

# ping_ms NS DST: "min median" of 20 pings, in ms.
ping_ms() {
    nsx "$1" ping -c 20 -i 0.1 -W 2 "$2" |
        $PY -c 'import re,statistics,sys; v=[float(m) for m in re.findall(r"time=([0-9.]+)", sys.stdin.read())]; print(min(v), round(statistics.median(v), 2)) if v else print(9999, 9999)'
}

# transfer NAME ARGS...: a paced iperf3 transfer lan1 -> server (ARGS: -R for a download) of
# 10 s from client port $CPORT (a new one each time: halves of earlier transfers stay in the
# status for a while); the daemon's status 7 s in, in $WORK/status-NAME.json.
CPORT=41000
transfer() {
    local name=$1
    shift
    CPORT=$((CPORT + 1))
    nsx lan1 timeout 40 iperf3 -c "$SRV4" -p 5201 --cport "$CPORT" -t 10 -b 4M "$@" -J >"$WORK/iperf-$name.json" &
    local pid=$!
    sleep 7
    daemon_status >"$WORK/status-$name.json"
    wait "$pid" || true
}

# check_rtt NAME TS DIR: the transfer's WAN and LAN RTT against netem's delay and ping
# (WAN_PING, LAN_PING: "min median" in ms).
check_rtt() {
    local out rc
    out=$($PY - "$WORK/status-$1.json" "$WAN_PING" "$LAN_PING" "$SRV4" "$CPORT" "$2" "$3" \
        "$WAN_DELAY_MS" "$LAN_DELAY_MS" 2>&1 <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
wan_pmin, wan_ping = (float(x) * 1000 for x in sys.argv[2].split())
lan_pmin, lan_ping = (float(x) * 1000 for x in sys.argv[3].split())
srv, cport, ts, up = sys.argv[4], sys.argv[5], sys.argv[6] == "1", sys.argv[7] == "up"
wan_delay, lan_delay = float(sys.argv[8]) * 1000, float(sys.argv[9]) * 1000
r = d["rtt"]
assert r["enabled"], r
# The data connection's halves: leaving by the WAN from the client's port (masquerade keeps
# it here), and leaving by the LAN to it.
wan = [h for h in r["top"] if h["side"] == "wan" and h["dst"] == srv + ":5201"
       and h["src"].endswith(":" + cport)]
lan = [h for h in r["top"] if h["side"] == "lan" and h["dst"].endswith(":" + cport)]
assert wan and lan, ("the transfer's halves", cport, r["top"])
wan, lan = wan[0], lan[0]
print("WAN half", wan)
print("LAN half", lan)
def check_half(name, h, delay, pmin, pmed, tol):
    # netem holds every packet for `delay`: no sample can be shorter.
    assert h["min_us"] >= delay, (name, "below netem's delay", h["min_us"], delay)
    if (name == "WAN") == up:
        # The data leaves by this half: dozens of samples.
        assert h["samples"] >= 20, (name, "samples", h)
    if ts or (name == "WAN") == up:
        # Data or timestamps (echoed whenever the far end sends: a paced sender's bursts): the
        # smallest sample as close to the path as ping's smallest.
        assert abs(h["min_us"] - pmin) <= tol, (name, h["min_us"], pmin, tol)
    else:
        # The handshake only: one sample, the far end's scheduling delay included.
        assert h["min_us"] <= pmed + max(4000, 0.1 * pmed), (name, "handshake", h, pmed)
check_half("WAN", wan, wan_delay, wan_pmin, wan_ping, max(2000, 0.05 * wan_pmin))
check_half("LAN", lan, lan_delay, lan_pmin, lan_ping, 1000)
i = {x["name"]: x for x in d["interfaces"]}
for name in ("wan", "lan"):
    s = i[name]["rtt"]
    print(name, "interface:", s)
    w, l = s["wan"], s["lan"]
    assert w["samples"] > 0 and l["samples"] > 0, s
    assert w["min_us"] <= w["median_us"] <= w["p95_us"], s
    # The window's median: one bucket (<= 12 %) around what the flows saw, queueing aside. Not
    # for the side that carries no data when timestamps time it: its samples are the far end's
    # echoes, sent when that end next sends, so an application-limited sender's gaps are in
    # them (CI once: LAN median 215 ms, min 5.2 ms, for a 5 ms LAN during a paced upload; a
    # known limit, docs/latency.md). There the smallest sample must match the path instead, to
    # the window's resolution: a histogram bucket (<= 12 %) whose lower edge it reports.
    data_free = "lan" if up else "wan"
    if not (ts and data_free == "wan"):
        assert 0.9 * wan_ping <= w["median_us"] <= 1.3 * wan_ping, ("wan median", w, wan_ping)
    else:
        assert 0.85 * wan_delay <= w["min_us"] <= wan_pmin + max(2000, 0.05 * wan_pmin), ("wan min", w)
    if not (ts and data_free == "lan"):
        assert 0.85 * lan_ping <= l["median_us"] <= lan_ping + 3000, ("lan median", l, lan_ping)
    else:
        assert 0.85 * lan_delay <= l["min_us"] <= lan_pmin + 1000, ("lan min", l)
assert i["wan"]["wan"] is True and i["lan"]["wan"] is False, "WAN side from the default route"
# Offloaded connections report the same per flow.
flows = 0
for f in d["flows"]:
    if f["proto"] == "tcp" and f["rtt"] and f["rtt"]["samples"] > 20:
        print("flow", f["orig"], f["rtt"])
        assert f["rtt"]["wan_min_us"] is not None and f["rtt"]["lan_min_us"] is not None, f
        assert f["rtt"]["wan_min_us"] >= wan_delay, f
        assert f["rtt"]["wan_min_us"] <= wan_ping + max(4000, 0.1 * wan_ping), f
        flows += 1
w = i["wan"]["rtt"]["wan"]
l = i["lan"]["rtt"]["lan"]
print(f"WAN min {wan['min_us']} us srtt {wan['srtt_us']} ({wan['samples']} samples), "
      f"LAN min {lan['min_us']} us srtt {lan['srtt_us']} ({lan['samples']}); interface medians "
      f"WAN {w['median_us']} LAN {l['median_us']} us; offloaded flows checked: {flows}; "
      f"retransmits {wan['retransmits']}/{lan['retransmits']}")
PY
    )
    rc=$?
    note "$1: $(tail -n 1 <<<"$out")"
    echo "$out"
    check "$1: WAN RTT >= ${WAN_DELAY_MS} ms, within 2 ms or 5 % of ping ($WAN_PING ms), LAN RTT >= ${LAN_DELAY_MS} ms, within 1 ms ($LAN_PING ms)" \
        test "$rc" = 0
}

scenario_main() {
    step "topology: lan1 - br-lan [rtr] wan0 (NAT, default route) - isp - srv; netem ${WAN_DELAY_MS} ms ISP side, ${LAN_DELAY_MS} ms LAN side"
    eth_wan_topology
    nsx isp tc qdisc add dev i0 root netem delay "${WAN_DELAY_MS}ms" limit 10000
    nsx lan1 tc qdisc add dev e0 root netem delay "${LAN_DELAY_MS}ms" limit 10000
    serve iperf_s srv tcp6 5201 timeout 600 iperf3 -s -p 5201
    wait_until 10 "iperf3 server up" sh -c "ip netns exec $SC-srv ss -Hltn 'sport = :5201' | grep -q 5201"
    wait_until 10 "lan1 reaches the server" nsx lan1 ping -c 1 -W 2 "$SRV4"
    WAN_PING=$(ping_ms rtr "$SRV4")
    LAN_PING=$(ping_ms rtr "$LAN1")
    note "ping from the router (min median): server $WAN_PING ms, lan1 $LAN_PING ms"

    local offload ts dir name
    for offload in 1 0; do
        for ts in 1 0; do
            nsx lan1 sysctl -qw net.ipv4.tcp_timestamps=$ts
            nsx srv sysctl -qw net.ipv4.tcp_timestamps=$ts
            for dir in up down; do
                name="offload$offload-ts$ts-$dir"
                step "$name: bpfqos with offload $offload, RTT on; paced TCP transfer, ${dir}load, timestamps $ts"
                daemon_start rtr "$(rtt_config "$offload")"
                if [ "$dir" = down ]; then transfer "$name" -R; else transfer "$name"; fi
                check_rtt "$name" "$ts" "$dir"
                daemon_stop
            done
        done
    done

    step "1 % loss on the ISP side, download, offload on: retransmits at the router vs the sender's"
    nsx lan1 sysctl -qw net.ipv4.tcp_timestamps=1
    nsx srv sysctl -qw net.ipv4.tcp_timestamps=1
    nsx isp tc qdisc change dev i0 root netem delay "${WAN_DELAY_MS}ms" loss 1% limit 10000
    daemon_start rtr "$(rtt_config 1)"
    local before after
    before=$(nsx srv awk '/^Tcp:/ && ++n == 2 {print $13}' /proc/net/snmp)
    CPORT=$((CPORT + 1))
    nsx lan1 timeout 60 iperf3 -c "$SRV4" -p 5201 --cport "$CPORT" -t 15 -b 8M -R -J >"$WORK/iperf-loss.json" || true
    after=$(nsx srv awk '/^Tcp:/ && ++n == 2 {print $13}' /proc/net/snmp)
    daemon_status >"$WORK/status-loss.json"
    note "sender (server) RetransSegs: $before -> $after"
    local out rc
    out=$($PY - "$WORK/status-loss.json" "$((after - before))" "$SRV4" "$CPORT" 2>&1 <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
sent, srv, cport = int(sys.argv[2]), sys.argv[3], sys.argv[4]
halves = [h for h in d["rtt"]["top"] if h["side"] == "lan" and h["src"] == srv + ":5201"
          and h["dst"].endswith(":" + cport)]
print(halves)
seen = max(h["retransmits"] for h in halves)
print(f"router counted {seen} retransmits, the sender {sent}")
assert sent >= 20, "netem loss made retransmits"
assert abs(seen - sent) <= 0.1 * sent, (seen, sent)
PY
    )
    rc=$?
    note "$(tail -n 1 <<<"$out")"
    echo "$out"
    check "retransmits counted at the router within 10 % of the sender's ($((after - before)))" \
        test "$rc" = 0
    daemon_stop
}

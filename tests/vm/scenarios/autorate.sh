# shellcheck shell=bash disable=SC2154,SC2034  # PID_<name> come from lib.sh bg(); DIAG_NS is read there
# vm-timeout: 600
# Autorate against an emulated line whose capacity steps: netem at the ISP with a rate and a
# deep FIFO (the bufferbloat autorate is for), 20 ms base RTT, download 8 -> 3.2 -> 8 Mbit/s
# and upload 2 -> 0.8 -> 2 (the issue's 20 -> 8 -> 20 and 5 -> 2 -> 5, scaled to what one
# emulated CPU carries), 30 s per phase, bulk TCP both ways from the LAN with offload on and
# ping from the LAN all along. Side by side: static CAKE at the maximum rates, static CAKE at
# the minimum rates, and bpfqos autorate. Per run and phase: ping p95 from 5 s after the
# change (against idle) and goodput against the line's capacity; the daemon's CPU time.
#
# The issue's goals (p95 at most 15 ms above idle, goodput at least 85 % of the capacity) are
# performance figures of an emulator here: printed, and reported on the issue. What is checked
# is what autorate must do whatever the emulator's speed: follow the capacity down and back
# up, keep latency far below the static maximum's, and carry far more than the static
# minimum when the line allows.

UP_HI=2000
UP_LO=800
DOWN_HI=8000
DOWN_LO=3200
PHASE_S=30
# The ISP's buffer, packets: 300 full frames are 450 ms at 8 Mbit/s, 1.8 s at 2 Mbit/s.
LINE_LIMIT=300

autorate_config() {
    local mode=$1 up=$2 down=$3
    printf '%s\n' "config globals 'globals'
	option offload '1'
	option log_level 'info'

config interface 'lan'
	option device 'br-lan'

config interface 'wan'
	option device 'wan0'
	option upload '$up'
	option download '$down'
	option qdisc 'cake'"
    if [ "$mode" = autorate ]; then
        printf '%s\n' "	option autorate '1'
	option min_upload '400'
	option max_upload '2400'
	option min_download '1600'
	option max_download '9600'"
    fi
}

# line UP DOWN: the line's capacity now, kbit/s (netem changed in place: its queue stays).
line() {
    nsx isp tc qdisc change dev i0 root netem delay 10ms rate "${2}kbit" limit $LINE_LIMIT
    nsx isp tc qdisc change dev s0 root netem delay 10ms rate "${1}kbit" limit $LINE_LIMIT
}

daemon_cpu_ticks() {
    local pid
    pid=$(pgrep -n -f "bpfqos daemon --config-dir $WORK/bpfqos-config") || { echo 0; return; }
    awk '{print $14 + $15}' "/proc/$pid/stat"
}

# run_line NAME: bulk both ways and ping through the three phases; results in $WORK/NAME-*.
run_line() {
    local name=$1 t0 c0 c1
    line $UP_HI $DOWN_HI
    sleep 2
    # The transfers outlast the three phases with room to spare (the emulator stretches every
    # step between them): the last phase must not end early for lack of traffic.
    local secs=$((PHASE_S * 3 + 20))
    bg "up_$name" lan1 timeout $((secs + 30)) iperf3 -c "$SRV4" -p 5201 -t $secs -i 1 -J
    bg "dn_$name" lan1 timeout $((secs + 30)) iperf3 -c "$SRV4" -p 5202 -t $secs -i 1 -J -R
    bg "ping_$name" lan1 timeout $((secs + 30)) ping -D -i 0.2 -W 2 -c $((secs * 5)) "$SRV4"
    sleep 5
    t0=$(date +%s.%N)
    c0=$(daemon_cpu_ticks)
    echo "$t0" >"$WORK/$name-t0"
    sleep $PHASE_S
    line $UP_LO $DOWN_LO
    step "$name: the line drops to $UP_LO / $DOWN_LO kbit/s"
    sleep $PHASE_S
    line $UP_HI $DOWN_HI
    step "$name: the line is back at $UP_HI / $DOWN_HI kbit/s"
    sleep $PHASE_S
    c1=$(daemon_cpu_ticks)
    echo "$((c1 - c0))" >"$WORK/$name-cpu"
    daemon_status >"$WORK/$name-status.json"
    # bg() names its PID variables with anything but [A-Za-z0-9_] made "_".
    local key=${name//[^A-Za-z0-9_]/_}
    eval "wait \$PID_up_$key \$PID_dn_$key \$PID_ping_$key" 2>/dev/null || true
    cp "$WORK/up_$name.log" "$WORK/$name-up.json"
    cp "$WORK/dn_$name.log" "$WORK/$name-dn.json"
    cp "$WORK/ping_$name.log" "$WORK/$name-ping.txt"
}

scenario_main() {
    step "topology: lan1 - br-lan [rtr] wan0 (NAT) - isp - srv; the line at the ISP: netem 10 ms each way, rate, $LINE_LIMIT packets of buffer"
    eth_wan_topology
    nsx isp tc qdisc add dev i0 root netem delay 10ms rate "${DOWN_HI}kbit" limit $LINE_LIMIT
    nsx isp tc qdisc add dev s0 root netem delay 10ms rate "${UP_HI}kbit" limit $LINE_LIMIT
    local h
    for h in lan1 srv; do nsx "$h" sysctl -qw net.ipv4.tcp_ecn=1; done
    serve iperf_up srv tcp6 5201 timeout 900 iperf3 -s -p 5201
    serve iperf_dn srv tcp6 5202 timeout 900 iperf3 -s -p 5202
    wait_until 10 "iperf3 servers up" sh -c "ip netns exec $SC-srv ss -Hltn 'sport = :5202' | grep -q 5202"
    wait_until 10 "lan1 reaches the server" nsx lan1 ping -c 1 -W 2 "$SRV4"
    local idle
    idle=$(rtt_ms lan1 15)
    echo "$idle" >"$WORK/idle"
    note "idle RTT lan1 -> server: $idle ms"
    check "base RTT about 20 ms (got $idle)" awk -v r="$idle" 'BEGIN { exit !(r >= 19 && r <= 40) }'

    local mode
    for mode in static-max static-min autorate; do
        step "$mode: bpfqos with CAKE$([ $mode = autorate ] && echo ", autorate")"
        case $mode in
            static-max) daemon_start rtr "$(autorate_config $mode $UP_HI $DOWN_HI)" ;;
            static-min) daemon_start rtr "$(autorate_config $mode $UP_LO $DOWN_LO)" ;;
            autorate)
                export BPFQOS_AUTORATE_TRACE=1
                daemon_start rtr "$(autorate_config $mode $UP_HI $DOWN_HI)"
                unset BPFQOS_AUTORATE_TRACE
                ;;
        esac
        wait_until 20 "download shaper device bqd-wan" nsx rtr ip link show dev bqd-wan
        run_line "$mode"
        daemon_stop
    done
    # Every tick of the autorate run (inputs and rates): in this log, and on the console with
    # BPFQOS_VM_TRACE=1, for recording (tests/data/autorate/, docs/autorate.md).
    grep -o 'autorate-trace .*' "$DAEMON_LOG" >"$WORK/autorate-trace.txt" || true
    echo "autorate trace: $(wc -l <"$WORK/autorate-trace.txt") ticks"
    if [ "${BPFQOS_VM_TRACE:-0}" = 1 ]; then sed 's/^/TRACE /' "$WORK/autorate-trace.txt" >&3; fi

    local out rc
    out=$($PY - "$WORK" "$PHASE_S" "$UP_HI $DOWN_HI $UP_LO $DOWN_LO" "$(getconf CLK_TCK)" 2>&1 <<'PY'
import json, re, statistics, sys
work, phase_s = sys.argv[1], float(sys.argv[2])
up_hi, down_hi, up_lo, down_lo = (int(x) for x in sys.argv[3].split())
clk = int(sys.argv[4])
idle = float(open(f"{work}/idle").read())
caps = [(up_hi, down_hi), (up_lo, down_lo), (up_hi, down_hi)]
res = {}
for mode in ("static-max", "static-min", "autorate"):
    t0 = float(open(f"{work}/{mode}-t0").read())
    pings = [(float(t), float(ms)) for t, ms in
             re.findall(r"\[(\d+\.\d+)\].*time=([0-9.]+)", open(f"{work}/{mode}-ping.txt").read())]
    def goodput(f):
        d = json.load(open(f))
        start = d["start"]["timestamp"]["timesecs"]
        return [(start + i["sum"]["start"], i["sum"]["bits_per_second"] / 1000) for i in d["intervals"]]
    up, dn = goodput(f"{work}/{mode}-up.json"), goodput(f"{work}/{mode}-dn.json")
    phases = []
    for p in range(3):
        a, b = t0 + p * phase_s, t0 + (p + 1) * phase_s
        lat = sorted(ms for t, ms in pings if a + 5 <= t < b)
        p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else None
        gu = [k for t, k in up if a <= t < b]
        gd = [k for t, k in dn if a <= t < b]
        gu = statistics.mean(gu) if gu else 0.0
        gd = statistics.mean(gd) if gd else 0.0
        cu, cd = caps[p]
        late = [t for t, ms in pings if b - 5 <= t < b + 5]
        phases.append({"p95": p95, "above_idle": None if p95 is None else p95 - idle,
                       "up": gu / cu, "down": gd / cd, "pings": len(lat), "late": len(late)})
    cpu_s = int(open(f"{work}/{mode}-cpu").read()) / clk
    res[mode] = (phases, cpu_s)
    for p, ph in enumerate(phases):
        print(f"{mode:10} phase {p + 1} ({caps[p][0]}/{caps[p][1]} kbit/s): ping p95 "
              f"{ph['p95']} ms ({ph['above_idle'] if ph['above_idle'] is None else round(ph['above_idle'], 1)} above idle, "
              f"{ph['pings']} pings), goodput up {ph['up']:.0%} down {ph['down']:.0%} of the line")
    print(f"{mode:10} daemon CPU {cpu_s:.2f} s in {3 * phase_s:.0f} s ({cpu_s / (3 * phase_s):.1%} of a core)")
st = json.load(open(f"{work}/autorate-status.json"))
a = [i for i in st["interfaces"] if i["name"] == "wan"][0]["autorate"]
print("autorate: changes", a["changes"], "cuts", a["cuts"], "failures", a["failures"])
hd = [x for x in a["history"]["download_kbit"] if x is not None]
hu = [x for x in a["history"]["upload_kbit"] if x is not None]
print("history: download rate (kbit/s)", hd[-48:])
print("history: download carried", [x for x in a["history"]["download_achieved_kbit"] if x is not None][-48:])
print("history: upload rate (kbit/s)", hu[-48:])
print("history: upload carried", [x for x in a["history"]["upload_achieved_kbit"] if x is not None][-48:])
print("history: excess (ms)", [None if x is None else round(x / 1000, 1) for x in a["history"]["excess_us"]][-48:])
print("history: decisions", {k: sum(1 for d in a["decisions"] if d["reason"] == k) for k in ("bufferbloat", "load", "drift")}, a["decisions"][:3])
goals = all(ph["above_idle"] is not None and ph["above_idle"] <= 15 and ph["up"] >= 0.85 and ph["down"] >= 0.85
            for ph in res["autorate"][0])
print("issue goals (p95 <= idle + 15 ms from 5 s after each change, goodput >= 85 % each phase):",
      "met" if goals else "NOT met")
ar, mx, mn = res["autorate"][0], res["static-max"][0], res["static-min"][0]
for mode, (phases, _) in res.items():
    # Ping ran through every phase: replies up to its end, and at least 40 % of the 125 sent
    # after the first 5 s. Not all of them: static-max overfills the line's 300-packet buffer
    # after the drop (2.6 s of queue in CI), and a full tail-drop queue loses pings too.
    assert all(ph["pings"] >= 0.4 * (phase_s - 5) / 0.2 and ph["late"] > 0 for ph in phases), \
        ("ping ran through every phase", mode, phases)
# What autorate must do whatever the emulator's speed.
assert a["cuts"] > 0 and a["failures"] == 0, a
assert min(hd) <= 1.2 * down_lo, ("the download rate followed the drop", min(hd))
assert max(hd[-int(phase_s / 2):]) >= 0.75 * down_hi, ("the download rate came back", hd[-15:])
assert ar[1]["p95"] < 0.5 * mx[1]["p95"], ("latency after the drop far below static max", ar[1], mx[1])
hi = lambda r: (r[0]["down"] + r[2]["down"]) / 2  # the two phases with the line at its best
assert hi(ar) >= 1.5 * hi(mn), ("more than static min carries", ar, mn)
print(f"autorate daemon CPU {res['autorate'][1]:.2f} s vs static {res['static-max'][1]:.2f} s")
PY
    )
    rc=$?
    echo "$out"
    while IFS= read -r l; do note "$l"; done < <(grep -E "phase|CPU|goals|changes|history" <<<"$out")
    check "autorate follows the line down and up, latency far below static max, goodput far above static min" \
        test "$rc" = 0
}

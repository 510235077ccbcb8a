# shellcheck shell=bash disable=SC2154,SC2034,SC2086,SC2016  # PID_<name> from lib.sh bg(); $XFER is a command line; sh -c scripts in single quotes
# Not part of the suite (run it by name: tests/vm/run.sh admission-trace): a timeline of one
# connection's admission on the PPPoE/VLAN 7 router, from outside the daemon.
#   - tcpdump -tt on lan1's e0: the SYN and every segment of the transfer;
#   - tcpdump -tt on pppoe-wan in rtr: only the kernel path (XDP forwards from w0, bypassing it),
#     so its last data segment is the moment the data path took over;
#   - conntrack -E -o timestamp,id in rtr: NEW and the UPDATEs (ESTABLISHED, ASSURED, liberal);
#   - the daemon's debug log, each line time-stamped as it arrives (same clock);
#   - a second connection with strace -f -tt -T on the daemon (syscalls and their durations).
# Prints the timeline per connection (ms from its SYN) as TRACE lines on the console.

trace_conn() {
    local port=$1 up=$2 down=$3 tag=$4
    check "lan1 ($tag): $up up + $down down, hashes equal" \
        nsx lan1 timeout 60 $XFER client --connect "$SRV4" --port 5201 --up "$up" --down "$down"
}

REPO_BENCH=$(cd "$VMDIR/../../bench" && pwd)

scenario_main() {
    step "topology: lan1,lan2 - br-lan [rtr] pppoe-wan/w0.7 - i0.7 [isp]"
    pppoe_topology 7
    nsx rtr sysctl -qw net.netfilter.nf_conntrack_acct=1 net.netfilter.nf_conntrack_timestamp=1
    serve srv_tcp isp tcp 5201 timeout 200 $XFER server --bind "$SRV4" --port 5201 --count 3 --timeout 190

    step "daemon (log_level debug, lines time-stamped) and the observers"
    mkdir -p "$WORK/bpfqos-config"
    printf '%s\n' "config globals 'globals'
	option enabled '1'
	option offload '1'
	option log_level 'debug'
config interface 'wan'
	option device 'pppoe-wan'
config interface 'lan'
	option device 'br-lan'" >"$WORK/bpfqos-config/bpfqos"
    BPFQOS_SOCK=$WORK/bpfqos.sock
    DAEMON_LOG=$WORK/bpfqos-daemon.log
    # The daemon's stderr through a time-stamper (the daemon logs without times; procd's
    # syslog adds them on a router).
    bg bpfqos-daemon rtr unshare -m --propagation private sh -c \
        'mount -t bpf bpf /sys/fs/bpf && "$0" daemon --config-dir "$1" --socket "$2" --pin-dir /sys/fs/bpf/bpfqos 2>&1 |
            "$3" -u -c "import sys,time
for l in sys.stdin: sys.stdout.write(\"%.6f %s\" % (time.time(), l))"' \
        "$BPFQOS_BIN" "$WORK/bpfqos-config" "$BPFQOS_SOCK" "$PY"
    wait_until 20 "bpfqos daemon answers status" "$BPFQOS_BIN" status --json --socket "$BPFQOS_SOCK"
    bg ct_events rtr stdbuf -oL conntrack -E -o timestamp,id -p tcp
    bg cap_lan_tt lan1 timeout 150 tcpdump -i e0 -nn -tt -l --immediate-mode "tcp port 5201 or tcp port 5203"
    bg cap_ppp_tt rtr timeout 150 tcpdump -i pppoe-wan -nn -tt -l --immediate-mode "tcp port 5201 or tcp port 5203"
    sleep 3

    step "connection 0: idle (a held connection: handshake, 5 bytes each way, silence)"
    serve hold_srv isp tcp 5203 timeout 30 $PY "$REPO_BENCH/forwarding_gen.py" tcp-hold --listen --bind "$SRV4" --port 5203 --seconds 8
    nsx lan1 timeout 30 $PY "$REPO_BENCH/forwarding_gen.py" tcp-hold --bind 198.18.1.11 --sport 40100 --dst "$SRV4" --port 5203 --seconds 6 || true
    "$BPFQOS_BIN" status --json --socket "$BPFQOS_SOCK" >"$WORK/status-idle.json" || true
    note "idle: $(json_get "$WORK/status-idle.json" '"last_admit_us=%s event_loop=%s" % (d["offload"]["manager"].get("last_admit_us"), d.get("event_loop"))')"
    sleep 1
    step "connection 1: 256 KiB up + 2 MiB down, no strace; perf record -a meanwhile"
    bg perf rtr perf record -a -g -F 499 -o "$WORK/perf.data" -- sleep 4
    sleep 0.5
    trace_conn 5201 262144 2097152 "conn 1"
    wait "$PID_perf" 2>/dev/null || true
    { perf report -i "$WORK/perf.data" --stdio --no-children --sort comm 2>/dev/null | grep -E '^ +[0-9]' | head -n 8
      perf report -i "$WORK/perf.data" --stdio --no-children --comm bpfqos --sort dso,sym -g none 2>/dev/null |
        grep -E '^ +[0-9]' | head -n 30; } | sed 's/^/PERF /' >&3 || true
    sleep 1
    step "connection 2: the same with strace -f -tt -T on the daemon"
    local dpid
    dpid=$(pgrep -n -f "bpfqos daemon --config-dir $WORK/bpfqos-config" || true)
    bg strace rtr strace -f -tt -T -s 64 -o "$WORK/strace.txt" -p "$dpid"
    sleep 2
    trace_conn 5201 262144 2097152 "conn 2"
    sleep 1
    kill "$PID_strace" 2>/dev/null || true
    "$BPFQOS_BIN" status --json --socket "$BPFQOS_SOCK" >"$WORK/status.json" || true
    note "end: $(json_get "$WORK/status.json" '"last_admit_us=%s event_loop=%s" % (d["offload"]["manager"].get("last_admit_us"), d.get("event_loop"))')"
    sleep 1
    kill -INT "$PID_cap_lan_tt" "$PID_cap_ppp_tt" "$PID_ct_events" 2>/dev/null || true
    if [ -n "$dpid" ]; then kill -TERM "$dpid" 2>/dev/null || true; fi
    sleep 1
    step "timeline"
    $PY - "$WORK" <<'PY' >"$WORK/timeline.txt" 2>&1 || true
import re, sys, os
w = sys.argv[1]
def lines(n):
    p = os.path.join(w, n)
    return open(p, errors="replace").read().splitlines() if os.path.exists(p) else []
# client ports from lan1's SYNs
lan = lines("cap_lan_tt.log"); ppp = lines("cap_ppp_tt.log")
syns = []
for l in lan:
    m = re.match(r"(\d+\.\d+) IP 198\.18\.1\.11\.(\d+) > [\d.]+\.520[13]: Flags \[S\],", l)
    if m: syns.append((float(m.group(1)), m.group(2)))
ct = lines("ct_events.log"); dl = lines("bpfqos-daemon.log"); st = lines("strace.txt")
for t0, port in syns:
    print("connection sport %s, SYN at lan1 t0=%.6f" % (port, t0))
    ev = []
    for l in lan:
        if ("198.18.1.11.%s " % port) in l or ("198.18.1.11.%s:" % port) in l:
            ev.append((float(l.split()[0]), "lan1 " + " ".join(l.split()[1:8])))
    lanp = [e for e in ev]
    print("  lan1 e0: %d segments, last at +%.1f ms" % (len(lanp), (lanp[-1][0]-t0)*1e3 if lanp else -1))
    for e in lanp[:6]: print("   +%8.1f ms %s" % ((e[0]-t0)*1e3, e[1]))
    for l in ct:
        m = re.match(r"\[(\d+\.\d+)\]\s+\[(\w+)\] (.*)", l)
        if m and ("sport=%s " % port) in m.group(3):
            s = m.group(3)
            short = " ".join(x for x in s.split() if not x.startswith(("src=", "dst=", "dport=", "sport=")))
            print("   +%8.1f ms conntrack %s %s" % ((float(m.group(1))-t0)*1e3, m.group(2), short[:90]))
    for l in dl:
        p = l.split(" ", 1)
        if len(p) == 2 and (":%s " % port in p[1] or ":%s:" % port in p[1] or (":%s" % port) in p[1]):
            try: print("   +%8.1f ms daemon %s" % ((float(p[0])-t0)*1e3, p[1][:140]))
            except ValueError: pass
    # kernel path: segments on pppoe-wan (NATed source; match by the server's side of the flow)
    kp = [float(l.split()[0]) for l in ppp if re.match(r"\d+\.\d+ IP ", l) and (".%s " % port in l or ".%s:" % port in l)]
    if kp:
        print("  pppoe-wan (kernel path) segments from t0: %d, last at +%.1f ms" % (len(kp), (kp[-1]-t0)*1e3))
PY
    sed 's/^/TRACE /' "$WORK/timeline.txt" >&3
    # strace: the daemon's syscalls up to the admission's log line, runs of the same call on
    # the same fd folded into one line (count, first and last time, total time in the calls).
    if [ -s "$WORK/strace.txt" ]; then
        $PY - "$WORK/strace.txt" <<'PY' | sed 's/^/STRACE /' >&3 || true
import re, sys
ls = open(sys.argv[1], errors="replace").read().splitlines()
end = next((i for i, l in enumerate(ls) if "offloaded in" in l or '"offloaded' in l), len(ls) - 1)
# the log line is written in pieces: find the piece "offloaded in"
for i, l in enumerate(ls):
    if 'offloaded in' in l:
        end = i
        break
win = ls[max(0, end - 6000):end + 2]
out = []
for l in win:
    m = re.match(r"(\d+)\s+(\S+) (\w+)\(([^,)]*)(.*?)(?:= (.*?))? <([\d.]+)>$", l)
    if not m:
        out.append([l[:150], 1, None, None, 0.0, None]); continue
    pid, t, call, a0, rest, ret, dur = m.groups()
    key = (pid, call, a0 if call != "bpf" else a0 + re.sub(r"key=0x\w+|value=0x\w+|batch=.*", "", rest)[:40])
    if out and out[-1][5] == key:
        out[-1][1] += 1; out[-1][3] = t; out[-1][4] += float(dur)
    else:
        out.append([l[:150], 1, t, t, float(dur), key])
for o in out[-150:]:
    print(("x%-5d %s..%s sum %.4f | " % (o[1], o[2], o[3], o[4]) if o[1] > 1 else "") + o[0])
PY
    fi
    grep -E 'offloaded|kernel' "$DAEMON_LOG" | tail -n 20 | sed 's/^/DAEMON /' >&3
}

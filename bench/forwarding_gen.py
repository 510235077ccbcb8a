#!/usr/bin/env python3
"""Helpers of the forwarding bench (bench/forwarding.sh); standard library only.

  gen       the packet generator: runs the pinned XDP program bench_gen through BPF_PROG_RUN
            with BPF_F_TEST_XDP_LIVE_FRAMES (batch 64) on a fixed 60-byte IPv4/UDP frame, in a
            thread, for lead + window + tail seconds, while the main thread samples the pinned
            per-CPU counter of bench_sink (the server side) at the window's edges. Prints JSON.
            Must run in the client namespace: live frames are redirected to an ifindex of the
            calling thread's namespace.
  udp-echo  UDP echo server (bounded in time), for the warm-up that makes the flow ASSURED.
  udp-ping  UDP client from a fixed source port, one datagram every 20 ms (bounded).
  tcp-sink  TCP server: accepts and drains connections (bounded in count and time).
  tcp-probe TCP client for the admission-latency phase: connects, then sends small numbered
            messages at a fixed interval for a fixed time, so the moment the connection leaves
            the kernel path shows on the router's bridge (tcpdump). Prints the local port.
  report    the pps table and the goals, from the script's results file.
  latency   admission latency: the daemon's figures and the two tcpdump captures.
"""

import argparse
import ctypes
import json
import os
import statistics
import socket
import struct
import sys
import threading
import time

BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
SYS_BPF = {"x86_64": 321, "aarch64": 280}[os.uname().machine]

LIBC = ctypes.CDLL(None, use_errno=True)  # CDLL releases the GIL around calls


class TestRunAttr(ctypes.Structure):
    """The BPF_PROG_TEST_RUN member of union bpf_attr (include/uapi/linux/bpf.h)."""

    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


class ObjGetAttr(ctypes.Structure):
    _fields_ = [
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
        ("path_fd", ctypes.c_int32),
        ("_pad", ctypes.c_uint32),
    ]


class MapElemAttr(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


def bpf(cmd, attr):
    ret = LIBC.syscall(SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf(cmd {cmd}): {os.strerror(err)}")
    return ret


def obj_get(path):
    name = ctypes.create_string_buffer(path.encode())
    return bpf(BPF_OBJ_GET, ObjGetAttr(pathname=ctypes.addressof(name)))


def possible_cpus():
    n = 0
    with open("/sys/devices/system/cpu/possible") as f:
        for part in f.read().strip().split(","):
            lo, _, hi = part.partition("-")
            n += int(hi or lo) - int(lo) + 1
    return n


class PerCpuCounter:
    """Slot 0 of a pinned BPF_MAP_TYPE_PERCPU_ARRAY of u64, summed over CPUs."""

    def __init__(self, path):
        self.fd = obj_get(path)
        self.ncpu = possible_cpus()
        self.key = ctypes.c_uint32(0)
        self.value = (ctypes.c_uint64 * self.ncpu)()

    def read(self):
        attr = MapElemAttr(
            map_fd=self.fd,
            key=ctypes.addressof(self.key),
            value=ctypes.addressof(self.value),
        )
        bpf(BPF_MAP_LOOKUP_ELEM, attr)
        return sum(self.value)


def map_update(path, key, value):
    fd = obj_get(path)
    k = ctypes.c_uint32(key)
    v = ctypes.create_string_buffer(value, len(value))
    try:
        bpf(
            BPF_MAP_UPDATE_ELEM,
            MapElemAttr(map_fd=fd, key=ctypes.addressof(k), value=ctypes.addressof(v)),
        )
    finally:
        os.close(fd)


def csum16(data):
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_frame(src_mac, dst_mac, src_ip, dst_ip, sport, dport):
    """A 60-byte Ethernet frame (no FCS): IPv4 (valid checksum), UDP (checksum 0), 18 bytes of
    payload. TTL 64 so the router forwards it."""
    payload = b"bpfqos-bench-fwd!!"
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        0,
        0x4000,
        64,
        socket.IPPROTO_UDP,
        0,
        socket.inet_aton(src_ip),
        socket.inet_aton(dst_ip),
    )
    ip = ip[:10] + struct.pack("!H", csum16(ip)) + ip[12:]
    eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
    frame = eth + b"\x08\x00" + ip + udp
    assert len(frame) == 60, len(frame)
    return frame


def tcp_frame(src_mac, dst_mac, src_ip, dst_ip, sport, dport):
    """A 78-byte Ethernet frame: IPv4 (ID 0xb9f0, the sink's mark), TCP ACK with the timestamp
    option (NOP NOP TS) and 12 bytes of data, checksums valid. The offload forwards it as a
    packet of the established connection of the same tuple; passive RTT does its whole
    per-packet work on it (timestamps read, arrival lookup, departure bookkeeping)."""
    payload = b"bpfqos-bench"
    opts = b"\x01\x01\x08\x0a" + struct.pack("!II", 1000, 2000)
    src, dst = socket.inet_aton(src_ip), socket.inet_aton(dst_ip)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, (20 + len(opts)) // 4 << 4, 0x10, 65535, 0, 0)
    seg = tcp + opts + payload
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(seg))
    seg = seg[:16] + struct.pack("!H", csum16(pseudo + seg)) + seg[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 0xB9F0, 0x4000, 64, socket.IPPROTO_TCP, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum16(ip)) + ip[12:]
    eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
    frame = eth + b"\x08\x00" + ip + seg
    assert len(frame) == 78, len(frame)
    return frame


def cmd_tcp_hold(a):
    """Keeps one TCP connection open for --seconds (the server side with --listen), so that
    conntrack has it ESTABLISHED and bpfqos offloads it; the bench's TCP frames use its tuple."""
    if a.listen:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((a.bind, a.port))
        srv.listen(1)
        srv.settimeout(a.seconds)
        c, _ = srv.accept()
    else:
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.bind((a.bind, a.sport))
        c.settimeout(5)
        c.connect((a.dst, a.port))
        # A little two-way traffic, then silence: ESTABLISHED, nothing else on the wire.
        c.send(b"hello")
    end = time.monotonic() + a.seconds
    c.settimeout(0.5)
    while time.monotonic() < end:
        try:
            data = c.recv(4096)
            if a.listen and data:
                c.send(data)
        except socket.timeout:
            pass
    c.close()
    return 0


def cpu_stat():
    """Per CPU: (busy, softirq, total) jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            parts = line.split()
            if not parts[0].startswith("cpu") or parts[0] == "cpu":
                continue
            v = [int(x) for x in parts[1:]]
            total = sum(v[:8])
            idle = v[3] + v[4]
            out[parts[0][3:]] = (total - idle, v[6], total)
    return out


def cpu_shares(s0, s1):
    """Per CPU over a window: busy and softirq, as fractions of the CPU."""
    out = {}
    for cpu, (b1, si1, t1) in s1.items():
        b0, si0, t0 = s0.get(cpu, (b1, si1, t1))
        dt = t1 - t0
        if dt > 0:
            out[cpu] = {"busy": round((b1 - b0) / dt, 3), "softirq": round((si1 - si0) / dt, 3)}
    return out


def cmd_gen(a):
    prog_fd = obj_get(a.prog)
    sink = PerCpuCounter(a.count_map)
    make = tcp_frame if a.tcp else udp_frame
    frame = make(a.src_mac, a.dst_mac, a.src_ip, a.dst_ip, a.sport, a.dport)
    # bench_gen copies this template over every frame (recycled pages come back rewritten).
    map_update(a.frame_map, 0, frame)
    buf = ctypes.create_string_buffer(frame, len(frame))
    total_s = a.lead + a.window + a.tail
    deadline = time.monotonic() + total_s
    sent = [0]
    errors = []

    def run():
        # Bounded: at most max_calls syscalls of `chunk` frames, and never past the deadline.
        for _ in range(a.max_calls):
            if time.monotonic() >= deadline:
                return
            attr = TestRunAttr(
                prog_fd=prog_fd,
                data_size_in=len(frame),
                data_in=ctypes.addressof(buf),
                repeat=a.chunk,
                flags=BPF_F_TEST_XDP_LIVE_FRAMES,
                batch_size=64,
            )
            try:
                bpf(BPF_PROG_TEST_RUN, attr)
            except OSError as e:
                errors.append(str(e))
                return
            sent[0] += a.chunk

    rx0 = sink.read()
    t_start = time.monotonic()
    stat0 = None
    th = threading.Thread(target=run, daemon=True)
    th.start()
    time.sleep(a.lead)
    c0, t0, stat0 = sink.read(), time.monotonic(), cpu_stat()
    time.sleep(a.window)
    c1, t1, stat1 = sink.read(), time.monotonic(), cpu_stat()
    th.join(timeout=total_s + 5)
    gen_s = time.monotonic() - t_start
    time.sleep(0.05)  # let the rings drain before the final count
    rx_total = sink.read() - rx0
    out = {
        "pps": (c1 - c0) / (t1 - t0),
        "window_s": t1 - t0,
        "rx_window": c1 - c0,
        "rx_total": rx_total,
        "sent": sent[0],
        "gen_pps": sent[0] / gen_s if gen_s > 0 else 0.0,
        "cpus": cpu_shares(stat0, stat1),
        "error": errors[0] if errors else None,
    }
    if th.is_alive():
        out["error"] = "generator thread did not stop"
    print(json.dumps(out))
    return 0 if out["error"] is None else 1


def cmd_udp_echo(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a.bind, a.port))
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        s.settimeout(max(0.01, end - time.monotonic()))
        try:
            data, peer = s.recvfrom(2048)
        except socket.timeout:
            break
        s.sendto(data, peer)
    return 0


def cmd_udp_ping(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a.bind, a.sport))
    s.setblocking(False)
    got = 0
    for i in range(int(a.seconds / 0.02)):
        s.sendto(b"warm-up %d" % i, (a.dst, a.dport))
        time.sleep(0.02)
        try:
            while s.recv(2048):
                got += 1
        except BlockingIOError:
            pass
    print(json.dumps({"replies": got}))
    return 0 if got else 1


def cmd_tcp_sink(a):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((a.bind, a.port))
    srv.listen(64)
    end = time.monotonic() + a.seconds
    for _ in range(a.count):
        left = end - time.monotonic()
        if left <= 0:
            break
        srv.settimeout(left)
        try:
            c, _ = srv.accept()
        except socket.timeout:
            break
        with c:
            c.settimeout(max(0.01, end - time.monotonic()))
            try:
                while c.recv(65536):
                    pass
            except socket.timeout:
                pass
    return 0


def cmd_tcp_probe(a):
    interval = a.interval_us / 1e6
    n = int(a.seconds / interval)
    msgs = [struct.pack("!I12x", i) for i in range(n)]
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.setblocking(False)
    # Non-blocking connect, then spin on send(): the first message leaves right behind the
    # handshake ACK instead of after a scheduler wake-up (hundreds of us on a busy machine).
    c.connect_ex((a.dst, a.port))
    give_up = time.monotonic() + 2
    while True:
        try:
            c.send(msgs[0])
            break
        except (BlockingIOError, InterruptedError):
            if time.monotonic() > give_up:
                raise TimeoutError("connect")
    c.setblocking(True)
    c.settimeout(2)
    nxt = time.perf_counter()
    for m in msgs[1:]:
        nxt += interval
        while time.perf_counter() < nxt:  # busy wait: sleep() is too coarse for 50 us
            pass
        c.send(m)
    port = c.getsockname()[1]
    c.close()
    print(port)
    return 0


def cmd_report(a):
    rows = {}
    with open(a.results) as f:
        for line in f:
            v, _round, pps, share, _gen = line.split()
            rows.setdefault(v, []).append((float(pps), share))
    if not rows:
        print("no pps results")
        return 0
    med = {v: statistics.median(p for p, _ in r) for v, r in rows.items()}
    kernel, bare, ft = med.get("kernel", 0.0), med.get("bare", 0.0), med.get("flowtable", 0.0)

    def ratio(x, base):
        return f"{x / base:.2f}x" if base else "-"

    print()
    print("64-byte UDP through the namespace router (median of %d rounds)" % max(map(len, rows.values())))
    # The kernel flowtable (bench/vm-flowtable.sh) is the incumbent: a column of its own.
    ft_col = f" {'vs flowtable':>12}" if ft else ""
    print(f"{'variant':<10} {'Mpps':>7} {'min..max':>15} {'vs kernel':>10}{ft_col} {'vs bare':>8}  offloaded")
    for v in ("kernel", "flowtable", "xdp", "tc", "bare", "kernel+htb", "tc+htb", "xdp+htb"):
        if v not in med:
            continue
        ps = [p for p, _ in rows[v]]
        shares = sorted({s for _, s in rows[v]}) if not v.startswith(("kernel", "bare", "flowtable")) else ["n/a"]
        ft_val = f" {ratio(med[v], ft):>12}" if ft else ""
        print(
            f"{v:<10} {med[v] / 1e6:>7.3f} {min(ps) / 1e6:>7.3f}..{max(ps) / 1e6:<6.3f} "
            f"{ratio(med[v], kernel):>10}{ft_val} {ratio(med[v], bare):>8}  {'/'.join(shares)}"
        )
    if "kernel+htb" in med:
        print()
        print("through a shaper that never limits (HTB at 100 Gbit/s on wan0):")
        for shaped, plain, what in (("kernel+htb", "kernel", "kernel path"), ("tc+htb", "tc", "offload, TC twin"),
                                    ("xdp+htb", "tc", "offload, XDP passes to the TC twin")):
            if shaped in med and plain in med:
                print(f"  {what:<36} {ratio(med[shaped], med[plain])} of the same path unshaped ({plain}), "
                      f"{ratio(med[shaped], med['kernel+htb'])} of the shaped kernel path")
    xdp = med.get("xdp", 0.0)
    goals = [("XDP >= 2.5x kernel", kernel and xdp / kernel >= 2.5, ratio(xdp, kernel))]
    if bare:
        goals.append(("XDP >= 0.85x bare redirect", xdp / bare >= 0.85, ratio(xdp, bare)))
    if ft:
        goals.append(("XDP >= 2x flowtable", xdp / ft >= 2, ratio(xdp, ft)))
    print()
    for name, met, val in goals:
        print(f"goal {name:<28} {'met' if met else 'NOT met'} ({val})")
    return 0


def parse_capture(path, ports):
    """tcpdump -tt -n text -> {client port: [(time, flags, seq range or None)]}, client->server."""
    out = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 6 or parts[1] != "IP":
                continue
            port = int(parts[2].rsplit(".", 1)[1])
            if port not in ports:
                continue
            flags = line.split("Flags [", 1)[1].split("]", 1)[0]
            seq = None
            if ", seq " in line:
                rng = line.split(", seq ", 1)[1].split(",", 1)[0]
                if ":" in rng:
                    seq = rng
            out.setdefault(port, []).append((float(parts[0]), flags, seq))
    return out


def cmd_latency(a):
    """Admission latency from the daemon (status) and from outside (tcpdump: c0 sees every
    packet the client sends, br-lan only those that still take the kernel path)."""
    internal = []
    with open(a.internal) as f:
        for line in f:
            port, us = line.split()
            internal.append((int(port), int(us)))
    ports = {p for p, _ in internal}
    client = parse_capture(a.client, ports)
    bridge = parse_capture(a.bridge, ports)
    upper, lower, never, late = [], [], 0, 0
    for port in ports:
        pkts = client.get(port, [])
        ack = next((t for t, fl, seq in pkts if fl == "." and seq is None), None)
        if ack is None:
            continue
        on_kernel = {seq for _, _, seq in bridge.get(port, []) if seq}
        data = [(t, seq) for t, _, seq in pkts if seq and t >= ack]
        first_off = next((t for t, seq in data if seq not in on_kernel), None)
        if first_off is None:
            never += 1
            continue
        last_kernel = max((t for t, seq in data if seq in on_kernel and t < first_off), default=ack)
        late += any(seq in on_kernel for t, seq in data if t > first_off)
        upper.append((first_off - ack) * 1e6)
        lower.append((last_kernel - ack) * 1e6)

    def pct(xs, q):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]

    def line(xs):
        return (
            f"median {statistics.median(xs):.0f} us, p95 {pct(xs, 0.95):.0f} us, "
            f"max {max(xs):.0f} us"
        )

    us = [u for _, u in internal]
    print()
    print(f"admission latency over {len(us)} new TCP connections (goal: < 10 ms)")
    if us:
        print(f"  daemon: conntrack event handled -> both entries written (last_admit_us): {line(us)}")
    if upper:
        print(f"  on the wire: handshake ACK -> first offloaded packet:                   {line(upper)}")
        print(f"               handshake ACK -> last packet on the kernel path:           {line(lower)}")
    if never:
        print(f"  {never} connection(s) never left the kernel path during their probe")
    if late:
        print(f"  {late} connection(s) had packets on the kernel path again after the first offloaded one")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--prog", required=True, help="pinned bench_gen program")
    g.add_argument("--count-map", required=True, help="pinned sink_count map")
    g.add_argument("--frame-map", required=True, help="pinned gen_frame map")
    g.add_argument("--src-mac", required=True)
    g.add_argument("--dst-mac", required=True)
    g.add_argument("--src-ip", required=True)
    g.add_argument("--dst-ip", required=True)
    g.add_argument("--sport", type=int, required=True)
    g.add_argument("--dport", type=int, required=True)
    g.add_argument("--lead", type=float, default=0.5)
    g.add_argument("--window", type=float, default=2.0)
    g.add_argument("--tail", type=float, default=0.3)
    g.add_argument("--chunk", type=int, default=131072, help="frames per BPF_PROG_RUN call")
    g.add_argument("--max-calls", type=int, default=400)
    g.add_argument("--tcp", action="store_true", help="TCP frames with timestamps (bench_gen_tcp)")
    e = sub.add_parser("udp-echo")
    e.add_argument("--bind", required=True)
    e.add_argument("--port", type=int, required=True)
    e.add_argument("--seconds", type=float, default=10)
    u = sub.add_parser("udp-ping")
    u.add_argument("--bind", required=True)
    u.add_argument("--sport", type=int, required=True)
    u.add_argument("--dst", required=True)
    u.add_argument("--dport", type=int, required=True)
    u.add_argument("--seconds", type=float, default=3)
    t = sub.add_parser("tcp-sink")
    t.add_argument("--bind", required=True)
    t.add_argument("--port", type=int, required=True)
    t.add_argument("--count", type=int, default=20)
    t.add_argument("--seconds", type=float, default=30)
    c = sub.add_parser("tcp-probe")
    c.add_argument("--dst", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--interval-us", type=int, default=200)
    c.add_argument("--seconds", type=float, default=0.04)
    h = sub.add_parser("tcp-hold")
    h.add_argument("--listen", action="store_true", help="the server side")
    h.add_argument("--bind", required=True)
    h.add_argument("--port", type=int, required=True, help="the server's port")
    h.add_argument("--sport", type=int, default=0, help="the client's port")
    h.add_argument("--dst", default="")
    h.add_argument("--seconds", type=float, default=60)
    r = sub.add_parser("report")
    r.add_argument("--results", required=True)
    lt = sub.add_parser("latency")
    lt.add_argument("--internal", required=True, help="lines: client port, last_admit_us")
    lt.add_argument("--client", required=True, help="tcpdump -tt -n text of c0 (everything)")
    lt.add_argument("--bridge", required=True, help="tcpdump -tt -n text of br-lan (kernel path)")
    a = p.parse_args()
    return {
        "gen": cmd_gen,
        "udp-echo": cmd_udp_echo,
        "udp-ping": cmd_udp_ping,
        "tcp-sink": cmd_tcp_sink,
        "tcp-probe": cmd_tcp_probe,
        "tcp-hold": cmd_tcp_hold,
        "report": cmd_report,
        "latency": cmd_latency,
    }[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())

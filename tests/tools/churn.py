#!/usr/bin/env python3
"""Connection churn through the namespace router (tests/soak.rs, bench/soak.sh).

    churn.py server --v4 ADDR --v6 ADDR --ports P,Q --seconds S
    churn.py client --v4 ADDR --v6 ADDR --long-port P --short-port Q --long N --rate R
                    --seconds S --report FILE

The server echoes every TCP byte and every UDP datagram on each address and port, for at most
S seconds.

The client keeps N long-lived flows open to the long port (three TCP connections for every UDP
flow, in both families), each exchanging a message of random length and content every
few seconds; and opens R short connections a second to the short port for S seconds, each
ending one of three ways: a TCP transfer closed with FIN, a TCP transfer closed with RST
(SO_LINGER 0), or a UDP exchange that simply stops (conntrack's timeout ends it). Every echo is
compared with what was sent: a difference, a reset, a timeout or a refused connection is an
error. Everything is bounded: S seconds of churn, a few seconds per exchange.

The client writes one JSON report to FILE twice: when the churn stops ("phase": "quiet"; the
long-lived flows stay open and keep exchanging) and when it is told to finish by a line on
stdin, after closing every long-lived flow ("phase": "done").
"""

import argparse
import asyncio
import json
import os
import random
import resource
import socket
import struct
import subprocess
import sys
import time

EXCHANGE_TIMEOUT = 5.0
UDP_TRIES = 3
MAX_SHORT_IN_FLIGHT = 512
MAX_ERRORS_KEPT = 20


class Stats:
    def __init__(self):
        self.errors = 0
        self.first_errors = []
        self.long_open = 0
        self.long_exchanges = 0
        self.long_bytes = 0
        self.udp_retries = 0
        self.short = {"fin": 0, "rst": 0, "udp_timeout": 0}
        self.short_bytes = 0
        self.short_skipped = 0

    def error(self, what):
        self.errors += 1
        if len(self.first_errors) < MAX_ERRORS_KEPT:
            self.first_errors.append(what)


def payload(rng, lo, hi):
    return rng.randbytes(rng.randint(lo, hi))


async def tcp_exchange(reader, writer, data):
    writer.write(data)
    await writer.drain()
    back = await reader.readexactly(len(data))
    if back != data:
        raise ValueError("echo differs")


class UdpFlow(asyncio.DatagramProtocol):
    """One UDP socket; exchanges are one at a time."""

    def __init__(self):
        self.transport = None
        self.waiting = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_result(data)

    def error_received(self, exc):
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_exception(exc)

    async def exchange(self, data, stats):
        for attempt in range(UDP_TRIES):
            self.waiting = asyncio.get_running_loop().create_future()
            self.transport.sendto(data)
            try:
                back = await asyncio.wait_for(self.waiting, EXCHANGE_TIMEOUT / UDP_TRIES)
            except asyncio.TimeoutError:
                stats.udp_retries += 1
                continue
            if back != data:
                raise ValueError("echo differs")
            return
        raise TimeoutError("no echo after %d tries" % UDP_TRIES)


async def udp_open(addr, port):
    loop = asyncio.get_running_loop()
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    _, proto = await loop.create_datagram_endpoint(UdpFlow, remote_addr=(addr, port), family=fam)
    return proto


async def long_flow(i, addr, port, udp, stats, stop, rng, gate):
    """One long-lived flow: open (at most `gate` at once) and exchange at once, then an
    exchange every 5-15 s until `stop`."""
    what = "long %d %s %s" % (i, "udp" if udp else "tcp", addr)
    try:
        await gate.acquire()
        if udp:
            flow = await udp_open(addr, port)
            exchange = lambda d: flow.exchange(d, stats)  # noqa: E731
            close = flow.transport.close
        else:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(addr, port), EXCHANGE_TIMEOUT)
            exchange = lambda d: tcp_exchange(reader, writer, d)  # noqa: E731
            close = writer.close
    except Exception as e:  # noqa: BLE001 - every failure is a reported error
        gate.release()
        stats.error("%s: open: %r" % (what, e))
        return
    stats.long_open += 1
    try:
        # The first exchange at once: the flow is established (and offloadable) early.
        first = True
        while not stop.is_set():
            if not first:
                try:
                    await asyncio.wait_for(stop.wait(), rng.uniform(5.0, 15.0))
                    break
                except asyncio.TimeoutError:
                    pass
            data = payload(rng, 16, 1400)
            await asyncio.wait_for(exchange(data), EXCHANGE_TIMEOUT)
            if first:
                first = False
                gate.release()
            stats.long_exchanges += 1
            stats.long_bytes += len(data)
    except Exception as e:  # noqa: BLE001
        stats.error("%s: %r" % (what, e))
    finally:
        if first:
            gate.release()
        close()
        stats.long_open -= 1


async def short_conn(i, addr, port, kind, stats, rng):
    what = "short %d %s %s" % (i, kind, addr)
    stage = "open"
    t0 = time.monotonic()
    try:
        if kind == "udp_timeout":
            flow = await udp_open(addr, port)
            try:
                for _ in range(2):
                    data = payload(rng, 16, 1400)
                    await flow.exchange(data, stats)
                    stats.short_bytes += len(data)
            finally:
                flow.transport.close()
        else:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(addr, port), EXCHANGE_TIMEOUT)
            try:
                stage = "exchange from port %d" % writer.get_extra_info("sockname")[1]
                data = payload(rng, 1, 32768)
                await asyncio.wait_for(tcp_exchange(reader, writer, data), EXCHANGE_TIMEOUT)
                stats.short_bytes += len(data)
                if kind == "rst":
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                else:
                    stage = "close" + stage[len("exchange"):]
                    writer.write_eof()
                    # The server closes its side on EOF: wait for that, the FIN both ways.
                    rest = await asyncio.wait_for(reader.read(), EXCHANGE_TIMEOUT)
                    if rest:
                        raise ValueError("bytes after the echo")
            finally:
                writer.close()
        stats.short[kind] += 1
    except Exception as e:  # noqa: BLE001
        stats.error("%s: %s at %s, %.1f s in: %r" % (what, stage, time.strftime("%H:%M:%S"),
                                                   time.monotonic() - t0, e))


def report(path, stats, phase, started, churn_seconds):
    doc = {
        "phase": phase,
        "errors": stats.errors,
        "first_errors": stats.first_errors,
        "long_open": stats.long_open,
        "long_exchanges": stats.long_exchanges,
        "long_bytes": stats.long_bytes,
        "udp_retries": stats.udp_retries,
        "short": stats.short,
        "short_total": sum(stats.short.values()),
        "short_bytes": stats.short_bytes,
        "short_skipped": stats.short_skipped,
        "short_per_s": round(sum(stats.short.values()) / churn_seconds, 1) if churn_seconds else None,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f)
    os.replace(path + ".tmp", path)


async def client(args):
    stats = Stats()
    rng = random.Random(args.seed)
    stop_long = asyncio.Event()
    started = time.monotonic()
    addrs = [args.v4, args.v6]
    # Long-lived flows, opened at most 500 at a time.
    longs = []
    gate = asyncio.Semaphore(500)
    for i in range(args.long):
        longs.append(asyncio.ensure_future(long_flow(
            i, addrs[i % 2], args.long_port, (i // 2) % 4 == 3, stats, stop_long,
            random.Random(rng.random()), gate)))
    # Wait until they are all open (or failed), bounded.
    deadline = time.monotonic() + 60
    while stats.long_open + stats.errors < args.long and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    print("long-lived flows open: %d (errors %d)" % (stats.long_open, stats.errors), flush=True)

    # Churn: R short connections a second for S seconds, started every 10 ms.
    kinds = ["fin"] * 5 + ["rst"] * 3 + ["udp_timeout"] * 2
    in_flight = set()
    churn_start = time.monotonic()
    n = 0
    tick = 0.01
    while time.monotonic() - churn_start < args.seconds:
        due = int((time.monotonic() - churn_start) * args.rate)
        while n < due:
            if len(in_flight) >= MAX_SHORT_IN_FLIGHT:
                stats.short_skipped += due - n
                n = due
                break
            t = asyncio.ensure_future(short_conn(n, addrs[n % 2], args.short_port,
                                                 kinds[rng.randrange(len(kinds))], stats,
                                                 random.Random(rng.random())))
            in_flight.add(t)
            t.add_done_callback(in_flight.discard)
            n += 1
        await asyncio.sleep(tick)
    churn_seconds = time.monotonic() - churn_start
    if in_flight:
        await asyncio.wait(in_flight, timeout=2 * EXCHANGE_TIMEOUT + 1)
    report(args.report, stats, "quiet", started, churn_seconds)
    print("churn stopped", flush=True)

    # Long-lived flows keep exchanging until a line on stdin (or EOF), bounded.
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), args.hold)
    except asyncio.TimeoutError:
        stats.error("not told to finish within %d s" % args.hold)
    stop_long.set()
    await asyncio.wait(longs, timeout=2 * EXCHANGE_TIMEOUT + 1)
    report(args.report, stats, "done", started, churn_seconds)
    print("done", flush=True)
    return 0 if stats.errors == 0 else 1


async def server(args):
    loop = asyncio.get_running_loop()

    async def echo(reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    class UdpEcho(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.transport.sendto(data, addr)

    servers = []
    for port in args.ports:
        for addr in (args.v4, args.v6):
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            servers.append(await asyncio.start_server(echo, addr, port, family=fam,
                                                      backlog=4096, reuse_address=True,
                                                      reuse_port=True))
            await loop.create_datagram_endpoint(UdpEcho, local_addr=(addr, port), family=fam,
                                                reuse_port=True)
    print("listening", flush=True)
    await asyncio.sleep(args.seconds)
    return 0


def sum_reports(docs):
    """One report of several workers' (counts added, errors concatenated)."""
    out = dict(docs[0])
    for d in docs[1:]:
        for k, v in d.items():
            if k == "first_errors":
                out[k] = (out[k] + v)[:MAX_ERRORS_KEPT]
            elif k == "short":
                out[k] = {kind: out[k][kind] + v[kind] for kind in v}
            elif k == "elapsed_s":
                out[k] = max(out[k], v)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = round(out[k] + v, 1) if isinstance(v, float) else out[k] + v
    return out


def spawn_workers(args, n):
    """Runs the mode in `n` processes, each with its share (a process holds at most a few
    thousand sockets: the file limit is the hard one, which root cannot always raise)."""
    procs = []
    for i in range(n):
        argv = [sys.executable, __file__, args.mode, "--v4", args.v4, "--v6", args.v6,
                "--procs", "1", "--seed", str(args.seed * 1000 + i),
                "--seconds", str(args.seconds), "--hold", str(args.hold)]
        if args.mode == "server":
            argv += ["--ports", ",".join(str(p) for p in args.ports)]
        else:
            share = lambda total: total // n + (1 if i < total % n else 0)  # noqa: E731
            argv += ["--long-port", str(args.long_port), "--short-port", str(args.short_port),
                     "--long", str(share(args.long)), "--rate", str(share(args.rate)),
                     "--report", "%s.%d" % (args.report, i)]
        procs.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True))
    return procs


def expect(procs, prefix):
    for p in procs:
        for line in p.stdout:
            if line.startswith(prefix):
                break
        else:
            raise SystemExit("a worker ended before printing %r" % prefix)


def supervise(args):
    n = max(1, args.procs)
    procs = spawn_workers(args, n)
    try:
        if args.mode == "server":
            expect(procs, "listening")
            print("listening", flush=True)
            return max(p.wait() for p in procs)
        reports = ["%s.%d" % (args.report, i) for i in range(n)]

        def merge():
            docs = [json.load(open(r)) for r in reports]
            with open(args.report + ".tmp", "w") as f:
                json.dump(sum_reports(docs), f)
            os.replace(args.report + ".tmp", args.report)

        expect(procs, "long-lived flows open")
        print("long-lived flows open", flush=True)
        expect(procs, "churn stopped")
        merge()
        print("churn stopped", flush=True)
        sys.stdin.readline()
        for p in procs:
            p.stdin.write("finish\n")
            p.stdin.flush()
        expect(procs, "done")
        codes = [p.wait() for p in procs]
        merge()
        print("done", flush=True)
        return max(codes)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["server", "client"])
    p.add_argument("--v4", required=True)
    p.add_argument("--v6", required=True)
    p.add_argument("--ports", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--long-port", type=int)
    p.add_argument("--short-port", type=int)
    p.add_argument("--long", type=int, default=20000)
    p.add_argument("--rate", type=int, default=500)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--hold", type=float, default=120, help="longest wait for the finish line")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--report")
    p.add_argument("--procs", type=int, default=0,
                   help="processes to spread the sockets over (0: one per 3,000 flows, fewer "
                   "flows per process when the file limit is lower)")
    args = p.parse_args()
    if args.procs == 0:
        # A process holds at most 3,000 flows, fewer when the file limit is lower.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        per = 3000 if hard == resource.RLIM_INFINITY else max(100, min(3000, hard - 256))
        args.procs = max(1, -(-args.long // per))
    if args.procs > 1:
        return supervise(args)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.mode == "server":
        return asyncio.run(server(args))
    return asyncio.run(client(args))


if __name__ == "__main__":
    sys.exit(main())

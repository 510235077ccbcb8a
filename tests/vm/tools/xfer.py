#!/usr/bin/python3
"""Bounded traffic with end-to-end payload checks, for the VM scenarios.

TCP: the client sends a 16-byte header (upload size, download size) and `up` random bytes; the
server hashes what it got, answers with that SHA-256, then `down` random bytes followed by their
SHA-256. Both directions are checked end to end. UDP: ping-pong of `count` datagrams that the
server echoes; every echo must come back byte-identical.

The server records each peer address (to check NAT) in --peers FILE, serves at most --count
connections/datagram sessions, and exits at --timeout seconds whatever happens. Every socket
operation has a timeout. Exit status 0 only if every check held.
"""

import argparse
import hashlib
import os
import socket
import struct
import sys
import time


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def recv_exact(sock, n, h=None):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(65536, n - len(buf)))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    if h is not None:
        h.update(buf)
    return bytes(buf)


def recv_hashed(sock, n):
    h = hashlib.sha256()
    left = n
    while left:
        chunk = sock.recv(min(65536, left))
        if not chunk:
            raise EOFError(f"connection closed after {n - left} of {n} bytes")
        h.update(chunk)
        left -= len(chunk)
    return h.digest()


def send_random(sock, n):
    h = hashlib.sha256()
    left = n
    while left:
        chunk = os.urandom(min(65536, left))
        h.update(chunk)
        sock.sendall(chunk)
        left -= len(chunk)
    return h.digest()


def record_peer(path, proto, peer):
    if path:
        with open(path, "a") as f:
            f.write(f"{proto} {peer[0]} {peer[1]}\n")


def serve(a):
    deadline = time.monotonic() + a.timeout
    s = socket.socket(family(a.bind), socket.SOCK_DGRAM if a.udp else socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a.bind, a.port))
    if a.udp and a.no_df and family(a.bind) == socket.AF_INET:
        s.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER = IP_PMTUDISC_DONT
    if a.udp:
        seen = set()
        while time.monotonic() < deadline:
            # Once a client was served, a pause of --idle seconds means it is done.
            wait = deadline - time.monotonic()
            if seen and a.idle:
                wait = min(wait, a.idle)
            s.settimeout(max(0.1, wait))
            try:
                data, peer = s.recvfrom(65535)
            except socket.timeout:
                break
            if peer not in seen:
                seen.add(peer)
                record_peer(a.peers, "udp", peer)
            s.sendto(data, peer)
        return 0
    s.listen(8)
    served = 0
    while served < a.count and time.monotonic() < deadline:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            c, peer = s.accept()
        except socket.timeout:
            break
        served += 1
        record_peer(a.peers, "tcp", peer)
        c.settimeout(a.io_timeout)
        try:
            up, down = struct.unpack("!QQ", recv_exact(c, 16))
            c.sendall(recv_hashed(c, up))
            c.sendall(send_random(c, down))
        except (OSError, EOFError) as e:
            print(f"server: {peer}: {e}", file=sys.stderr)
        finally:
            c.close()
    return 0


def client(a):
    if a.udp:
        return udp_client(a)
    s = socket.socket(family(a.connect), socket.SOCK_STREAM)
    s.settimeout(a.io_timeout)
    if a.mss:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, a.mss)
    if a.bind:
        s.bind((a.bind, 0))
    s.connect((a.connect, a.port))
    s.sendall(struct.pack("!QQ", a.up, a.down))
    up_sent = send_random(s, a.up)
    up_seen = recv_exact(s, 32)
    down_got = recv_hashed(s, a.down)
    down_sent = recv_exact(s, 32)
    s.close()
    ok_up = up_sent == up_seen
    ok_down = down_got == down_sent
    print(f"tcp {a.connect}:{a.port} up={a.up} {'ok' if ok_up else 'MISMATCH'} "
          f"down={a.down} {'ok' if ok_down else 'MISMATCH'}")
    return 0 if ok_up and ok_down else 1


def udp_client(a):
    s = socket.socket(family(a.connect), socket.SOCK_DGRAM)
    s.settimeout(a.io_timeout)
    if a.no_df and family(a.connect) == socket.AF_INET:
        s.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER = IP_PMTUDISC_DONT
    if a.bind:
        s.bind((a.bind, 0))
    s.connect((a.connect, a.port))
    good = corrupt = 0
    for i in range(a.count):
        if i and a.interval:
            time.sleep(a.interval)
        payload = struct.pack("!I", i) + os.urandom(a.size - 4)
        s.send(payload)
        try:
            while True:
                echo = s.recv(65535)
                if echo[:4] == payload[:4]:
                    break
        except socket.timeout:
            continue
        if echo == payload:
            good += 1
        else:
            corrupt += 1
    print(f"udp {a.connect}:{a.port} size={a.size} echoed {good}/{a.count}"
          f" corrupt={corrupt} lost={a.count - good - corrupt}")
    # A corrupted echo always fails; lost datagrams only beyond --max-loss (UDP may drop under
    # congestion, which is the network working, not breaking).
    return 0 if corrupt == 0 and good >= a.count - a.max_loss else 1


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["server", "client"])
    p.add_argument("--bind")
    p.add_argument("--connect")
    p.add_argument("--port", type=int, default=5201)
    p.add_argument("--udp", action="store_true")
    p.add_argument("--up", type=int, default=1 << 20)
    p.add_argument("--down", type=int, default=1 << 20)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--size", type=int, default=1000)
    p.add_argument("--mss", type=int, default=0)
    p.add_argument("--no-df", action="store_true")
    p.add_argument("--interval", type=float, default=0, help="UDP client: pause between datagrams")
    p.add_argument("--max-loss", type=int, default=0,
                   help="UDP client: datagrams that may be lost (never corrupted) without failing")
    p.add_argument("--peers")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--idle", type=float, default=0,
                   help="UDP server: exit after this long without a datagram, once one came")
    p.add_argument("--io-timeout", type=float, default=10)
    a = p.parse_args()
    try:
        return serve(a) if a.mode == "server" else client(a)
    except (OSError, EOFError) as e:
        print(f"{a.mode}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

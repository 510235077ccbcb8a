#!/usr/bin/env python3
"""Creates conntrack entries over ctnetlink, thousands per datagram (bench/scale.sh).

A router's day is tens of thousands of connections; opening that many real sockets in a test
would measure the sockets. The daemon only sees conntrack, so the scale bench gives conntrack
the entries a busy LAN would have made: established TCP connections (no NAT) from the LAN
client to the WAN server, each with its own client port, in both families. The kernel sends
its NEW events exactly as for real connections; what bpfqos does with them is what is measured.

    ct_inject.py add --v4 N --v6 N [--skip K] [--first-port P] [--timeout S] [--udp]
    ct_inject.py delete --v4 N --v6 N [--first-port P] [--udp]

Addresses are the demo router's (tests/demo/router.sh): client 198.18.1.2 / fd00:1::2, server
198.19.0.2 / fd00:2::2; connection i uses client port first-port + i % 40000 and server port
9000 + i // 40000. Prints how many requests the kernel refused (an entry that exists already
counts as refused); exits 1 if any was.
"""

import argparse
import ipaddress
import os
import socket
import struct
import sys

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_DELETE = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLMSG_ERROR = 2
NLA_F_NESTED = 0x8000

CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO, CTA_TIMEOUT = 1, 2, 3, 4, 7
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
TCP_CONNTRACK_ESTABLISHED = 3
IPS_SEEN_REPLY, IPS_ASSURED, IPS_CONFIRMED = 1 << 1, 1 << 2, 1 << 3

CLIENT = {4: "198.18.1.2", 6: "fd00:1::2"}
SERVER = {4: "198.19.0.2", 6: "fd00:2::2"}
PORTS_PER_SERVER_PORT = 40000


def attr(kind, payload):
    a = struct.pack("=HH", 4 + len(payload), kind) + payload
    return a + b"\0" * (-len(a) % 4)


def nest(kind, *attrs):
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def tuple_attr(kind, fam, src, dst, proto, sport, dport):
    s, d = (CTA_IP_V4_SRC, CTA_IP_V4_DST) if fam == 4 else (CTA_IP_V6_SRC, CTA_IP_V6_DST)
    return nest(
        kind,
        nest(CTA_TUPLE_IP, attr(s, src), attr(d, dst)),
        nest(
            CTA_TUPLE_PROTO,
            attr(CTA_PROTO_NUM, bytes([proto])),
            attr(CTA_PROTO_SRC_PORT, struct.pack("!H", sport)),
            attr(CTA_PROTO_DST_PORT, struct.pack("!H", dport)),
        ),
    )


def message(op, seq, fam, i, args):
    proto = socket.IPPROTO_UDP if args.udp else socket.IPPROTO_TCP
    c = ipaddress.ip_address(CLIENT[fam]).packed
    s = ipaddress.ip_address(SERVER[fam]).packed
    sport = args.first_port + i % PORTS_PER_SERVER_PORT
    dport = 9000 + i // PORTS_PER_SERVER_PORT
    body = tuple_attr(CTA_TUPLE_ORIG, fam, c, s, proto, sport, dport)
    flags = NLM_F_REQUEST | NLM_F_ACK
    if op == "add":
        flags |= NLM_F_CREATE | NLM_F_EXCL
        body += tuple_attr(CTA_TUPLE_REPLY, fam, s, c, proto, dport, sport)
        body += attr(CTA_STATUS, struct.pack("!I", IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED))
        # (CONFIRMED: the kernel sets it before applying CTA_STATUS and refuses to clear it.)
        body += attr(CTA_TIMEOUT, struct.pack("!I", args.timeout))
        if proto == socket.IPPROTO_TCP:
            body += nest(
                CTA_PROTOINFO,
                nest(
                    CTA_PROTOINFO_TCP,
                    attr(CTA_PROTOINFO_TCP_STATE, bytes([TCP_CONNTRACK_ESTABLISHED])),
                ),
            )
    kind = NFNL_SUBSYS_CTNETLINK << 8 | (IPCTNL_MSG_CT_NEW if op == "add" else IPCTNL_MSG_CT_DELETE)
    family = socket.AF_INET if fam == 4 else socket.AF_INET6
    body = struct.pack("=BBH", family, 0, 0) + body
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


def acks(sock, want, deadline_s=30.0):
    """Reads `want` acknowledgements; returns how many carried an error."""
    refused, seen = 0, 0
    sock.settimeout(deadline_s)
    while seen < want:
        data = sock.recv(1 << 20)
        off = 0
        while off + 16 <= len(data):
            length, kind, _, _, _ = struct.unpack_from("=IHHII", data, off)
            if length < 16:
                break
            if kind == NLMSG_ERROR:
                seen += 1
                (err,) = struct.unpack_from("=i", data, off + 16)
                if err != 0:
                    refused += 1
                    if refused <= 3:
                        print(f"ct_inject: kernel refused one: {os.strerror(-err)}", file=sys.stderr)
            off += (length + 3) & ~3
    return refused


def main():
    p = argparse.ArgumentParser()
    p.add_argument("op", choices=["add", "delete"])
    p.add_argument("--v4", type=int, default=0)
    p.add_argument("--v6", type=int, default=0)
    p.add_argument("--first-port", type=int, default=20000)
    p.add_argument("--timeout", type=int, default=3600)
    p.add_argument("--udp", action="store_true")
    p.add_argument("--skip", type=int, default=0, help="start at connection SKIP of each family")
    args = p.parse_args()
    if args.first_port + min(max(args.v4, args.v6), PORTS_PER_SERVER_PORT) > 65536:
        p.error("ports beyond 65535")
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((0, 0))
    refused, seq = 0, 0
    todo = [(4, i) for i in range(args.skip, args.v4)] + [(6, i) for i in range(args.skip, args.v6)]
    # Interleave the families, like real traffic; 256 requests per datagram.
    todo.sort(key=lambda t: (t[1], t[0]))
    for at in range(0, len(todo), 256):
        batch = b""
        for fam, i in todo[at : at + 256]:
            seq += 1
            batch += message(args.op, seq, fam, i, args)
        sock.send(batch)
        refused += acks(sock, len(todo[at : at + 256]))
    print(f"{args.op}: {len(todo)} requests, {refused} refused")
    sys.exit(1 if refused else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Check the frames of a capture with scapy (the independent oracle for encapsulation).

Usage: pcapcheck.py FILE CHECK [CHECK...], each CHECK a comma-separated list of key=value
(src, dst, vlan, outer-vlan, sid, ttl, proto, syn-mss, max-ip-len, min, max) or bare flags
(expect-frags), e.g. "src=198.18.100.10,dst=198.19.0.1,vlan=7,sid=1,ttl=63,min=200". The capture
is read once (scapy is slow in a software-emulated VM). For each CHECK it selects IPv4/IPv6 packets from --src to --dst (whatever the encapsulation) and checks, for each:
the VLAN tags (--outer-vlan with TPID 0x88a8, --vlan with 0x8100), the PPPoE session (--sid,
code 0, length field == PPP payload length), the hop limit (--ttl), the IP header checksum, and
optionally the TCP SYN MSS (--syn-mss) or fragmentation (--expect-frags). Prints a summary and
the first problems; exit status 0 only if at least --min packets matched and all checks held.
"""

import argparse
import sys

from scapy.all import IP, IPv6, TCP, Dot1AD, Dot1Q, PPPoE, PPP, rdpcap  # noqa: E402


def layers_of(pkt):
    out = []
    p = pkt
    while p is not None and p.__class__.__name__ != "NoPayload":
        out.append(p)
        p = p.payload
    return out


def parse_check(spec):
    ap = argparse.ArgumentParser(prog="CHECK")
    ap.add_argument("--src", required=True)
    ap.add_argument("--dst", required=True)
    ap.add_argument("--vlan", type=int)
    ap.add_argument("--outer-vlan", type=int)
    ap.add_argument("--sid", type=int)
    ap.add_argument("--ttl", type=int)
    ap.add_argument("--proto", choices=["tcp", "udp", "icmp", "any"], default="any")
    ap.add_argument("--syn-mss", type=int)
    ap.add_argument("--expect-frags", action="store_true")
    ap.add_argument("--max-ip-len", type=int)
    ap.add_argument("--min", type=int, default=1)
    ap.add_argument("--max", type=int)
    argv = []
    for item in spec.split(","):
        k, _, v = item.partition("=")
        argv += [f"--{k}"] + ([v] if v else [])
    return ap.parse_args(argv)


def check(path, pkts, a):
    problems = []
    n = 0
    syns = 0
    frags = 0
    total = 0
    for i, pkt in enumerate(pkts):
        total += 1
        ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
        if ip is None or ip.src != a.src or ip.dst != a.dst:
            continue
        v6 = isinstance(ip, IPv6)
        proto = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}.get(ip.nh if v6 else ip.proto, "?")
        if a.proto != "any" and proto != a.proto:
            continue
        n += 1
        where = f"frame {i + 1}"
        ls = layers_of(pkt)
        tags = [(l.__class__.__name__, l.vlan) for l in ls if isinstance(l, (Dot1Q, Dot1AD))]
        want = []
        if a.outer_vlan is not None:
            want.append(("Dot1AD", a.outer_vlan))
        if a.vlan is not None:
            want.append(("Dot1Q", a.vlan))
        if tags != want:
            problems.append(f"{where}: VLAN tags {tags}, want {want}")
        pppoe = pkt.getlayer(PPPoE)
        if a.sid is not None:
            if pppoe is None:
                problems.append(f"{where}: no PPPoE session header")
            else:
                if pppoe.code != 0 or pppoe.sessionid != a.sid:
                    problems.append(f"{where}: PPPoE code {pppoe.code} sid {pppoe.sessionid}, want 0/{a.sid}")
                ip_len = (ip.plen + 40) if v6 else ip.len
                if pppoe.len != ip_len + 2:
                    problems.append(f"{where}: PPPoE length {pppoe.len}, want IP length {ip_len} + 2")
                ppp = pkt.getlayer(PPP)
                want_proto = 0x57 if v6 else 0x21
                if ppp is None or ppp.proto != want_proto:
                    problems.append(f"{where}: PPP protocol {ppp and hex(ppp.proto)}, want {hex(want_proto)}")
        elif pppoe is not None:
            problems.append(f"{where}: unexpected PPPoE header")
        hop = ip.hlim if v6 else ip.ttl
        if a.ttl is not None and hop != a.ttl:
            problems.append(f"{where}: TTL/hop limit {hop}, want {a.ttl}")
        if not v6:
            raw = bytes(ip)[: ip.ihl * 4]
            s = sum(int.from_bytes(raw[j:j + 2], "big") for j in range(0, len(raw), 2))
            while s >> 16:
                s = (s & 0xFFFF) + (s >> 16)
            if s != 0xFFFF:
                problems.append(f"{where}: bad IPv4 header checksum {ip.chksum:#06x}")
            if ip.flags.MF or ip.frag:
                frags += 1
        if a.max_ip_len is not None:
            ip_len = (ip.plen + 40) if v6 else ip.len
            if ip_len > a.max_ip_len:
                problems.append(f"{where}: IP length {ip_len} > {a.max_ip_len}")
        tcp = pkt.getlayer(TCP)
        if a.syn_mss is not None and tcp is not None and tcp.flags.S:
            syns += 1
            mss = dict((k, v) for k, v in tcp.options if isinstance(k, str)).get("MSS")
            if mss != a.syn_mss:
                problems.append(f"{where}: SYN MSS {mss}, want {a.syn_mss}")
    if a.syn_mss is not None and syns == 0:
        problems.append("no TCP SYN seen")
    if a.expect_frags and frags == 0:
        problems.append("no IPv4 fragments seen")
    if a.max is not None and n > a.max:
        problems.append(f"{n} matching packets, want at most {a.max}")
    if n < a.min:
        problems.append(f"only {n} matching packets, want at least {a.min}")
    print(f"pcapcheck {path}: {total} frames, {n} {a.src} -> {a.dst} ({a.proto}) checked"
          f"{f', {syns} SYN' if syns else ''}{f', {frags} fragments' if frags else ''}: "
          f"{'ok' if not problems else f'{len(problems)} problems'}")
    for p in problems[:10]:
        print("  " + p)
    return not problems


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    checks = [parse_check(c) for c in sys.argv[2:]]
    pkts = rdpcap(sys.argv[1])
    results = [check(sys.argv[1], pkts, a) for a in checks]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())

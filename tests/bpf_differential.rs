//! Differential test of the XDP data path against the kernel (root only).
//!
//! One namespace router (lan1 — wan0, nftables masquerade to wan0, IPv4 and IPv6 forwarding)
//! between a client and a server namespace. The same crafted frames (IPv4 TCP and UDP that the
//! router masquerades, IPv6 TCP and UDP that it routes) are sent twice from the client:
//!
//! 1. through the kernel (ip_forward + conntrack + masquerade, no bpfqos),
//! 2. through the offload XDP program attached to lan1, with the flows installed the way the
//!    daemon installs them: the NAT tuple read from conntrack's entry of run 1 (`conntrack -L`),
//!    the MACs those of the router's wan0 and the server (the router's neighbour), and
//! 3. through its TC twin.
//!
//! The server captures every run with an AF_PACKET socket, and every frame must be
//! byte-identical: Ethernet (destination/source MAC, EtherType), IP (TOS/traffic class, flow
//! label, length, ID, flags, TTL/hop limit, header checksum, addresses after NAT), L4 (ports,
//! checksum, sequence numbers, payload). The frames vary what a rewrite could get wrong: payload
//! lengths (odd, empty, near the MTU), IPv4 ID, DF, DSCP/ECN, TTL 2 (arrives as 1), an IPv4 UDP
//! datagram without checksum (stays 0 in both).
//!
//! Fields that may legitimately differ, and why they do not here:
//! - the NAT source port: conntrack keeps the client's port unless it clashes; the flow is
//!   installed with whatever conntrack chose, so both runs carry the same port;
//! - the IPv4 ID: neither path touches it (equal by construction, still compared);
//! - L4 checksums: the kernel's NAT and the XDP path both update incrementally (RFC 1624) and a
//!   computed UDP 0 is sent as 0xffff by both; the test also verifies every checksum from
//!   scratch, so "equal" never means "equally wrong";
//! - GRO on the server's veth could merge TCP segments in the capture: every data segment
//!   carries PSH, which makes GRO flush each one unmerged.
//!
//! Run 3 repeats run 2 with the TC twin (clsact ingress on lan1, `bpf_redirect` through the
//! egress qdisc, L4 checksums by `bpf_l4_csum_replace`), the path used when shaping.
//!
//! Runs 2 and 3 also check that the kernel did not forward anything: the flows' counters in the
//! map count every frame, and the router's conntrack entries see no new packets.
//!
//! Addresses: 198.18.0.0/15 and fd00::/8 only, in namespaces the test creates and removes.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::io::BufRead;
use std::io::BufReader;
use std::io::Read;
use std::io::Write;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::process::Stdio;

use common::frames::inet_csum;
use common::frames::set_control;
use common::frames::verify_checksums;
use common::frames::Encap;
use common::frames::FlowSpec;
use common::frames::Tuple;
use common::frames::MAC_CLIENT;
use common::frames::MAC_ROUTER_IN;
use common::frames::MAC_ROUTER_OUT;
use common::frames::MAC_SERVER;
use common::netns::Netns;
use etherparse::PacketBuilder;
use libbpf_rs::Object;
use libbpf_rs::TcHookBuilder;
use libbpf_rs::TC_INGRESS;

const SERVER4: &str = "198.19.0.2";
const ROUTER_WAN4: &str = "198.19.0.1";
const SERVER6: &str = "fd00:2::2";

/// Captures, on `iface`, the frames received (not sent) whose L4 destination port is in the
/// given list, until `count` have arrived or `timeout` seconds pass; prints "ready" once the
/// socket is bound, then one hex frame per line.
const CAPTURE_PY: &str = r#"
import select, socket, sys, time
iface, count, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ports = {int(p) for p in sys.argv[4].split(",")}
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((iface, 0))
print("ready", flush=True)
got, deadline = [], time.monotonic() + timeout
while len(got) < count:
    left = deadline - time.monotonic()
    if left <= 0 or not select.select([s], [], [], left)[0]:
        break
    f, addr = s.recvfrom(65536)
    if addr[2] == socket.PACKET_OUTGOING or len(f) < 14:
        continue
    et = int.from_bytes(f[12:14], "big")
    if et == 0x0800 and len(f) >= 34:
        proto, l4 = f[23], 14 + (f[14] & 15) * 4
    elif et == 0x86dd and len(f) >= 54:
        proto, l4 = f[20], 54
    else:
        continue
    if proto in (6, 17) and len(f) >= l4 + 4 and int.from_bytes(f[l4 + 2:l4 + 4], "big") in ports:
        got.append(f.hex())
for g in got:
    print(g)
"#;

/// Sends the hex frames read from stdin (one per line) on `iface`, in order.
const SEND_PY: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
for line in sys.stdin:
    if line.strip():
        s.send(bytes.fromhex(line.strip()))
        time.sleep(0.002)
"#;

/// Client — router (lan1 | wan0, masquerade on wan0) — server.
struct Lab {
    cli: Netns,
    rtr: Netns,
    srv: Netns,
}

impl Lab {
    fn new() -> Self {
        let cli = Netns::new("bqdc");
        let rtr = Netns::new("bqdr");
        let srv = Netns::new("bqds");
        cli.ip(&[
            "link", "add", "c0", "type", "veth", "peer", "name", "lan1", "netns", &rtr.name,
        ]);
        srv.ip(&[
            "link", "add", "s0", "type", "veth", "peer", "name", "wan0", "netns", &rtr.name,
        ]);
        let mac = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        rtr.sh(&format!(
            "ip link set lan1 address {lan} up
             ip link set wan0 address {wan} up
             ip addr add 198.18.1.1/24 dev lan1
             ip addr add fd00:1::1/64 dev lan1 nodad
             ip addr add {ROUTER_WAN4}/24 dev wan0
             ip addr add fd00:2::1/64 dev wan0 nodad
             sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
             sysctl -qw net.netfilter.nf_conntrack_acct=1
             # The crafted TCP segments are picked up mid-stream (no handshake).
             sysctl -qw net.netfilter.nf_conntrack_tcp_loose=1
             sysctl -qw net.netfilter.nf_conntrack_tcp_be_liberal=1
             nft -f - <<'NFT'
table inet bqd_nat {{
	chain post {{ type nat hook postrouting priority srcnat; oifname \"wan0\" meta nfproto ipv4 masquerade; }}
}}
NFT",
            lan = mac(MAC_ROUTER_IN),
            wan = mac(MAC_ROUTER_OUT),
        ));
        cli.sh(&format!(
            "ip link set c0 address {} up
             ip addr add 198.18.1.10/24 dev c0
             ip addr add fd00:1::10/64 dev c0 nodad
             ethtool -K c0 tx off tso off gso off >/dev/null",
            mac(MAC_CLIENT)
        ));
        // GRO on s0: the NAPI the XDP-redirected frames into wan0 need (testing.md rule 2).
        // The server drops the test's TCP/UDP before its stack (after the capture tap), so no
        // RST or ICMP goes back to disturb conntrack between the runs.
        srv.sh(&format!(
            "ip link set s0 address {} up
             ip addr add {SERVER4}/24 dev s0
             ip addr add {SERVER6}/64 dev s0 nodad
             ethtool -K s0 tx off tso off gso off gro on >/dev/null
             nft -f - <<'NFT'
table inet bqd_sink {{
	chain pre {{ type filter hook prerouting priority raw; meta l4proto {{ tcp, udp }} drop; }}
}}
NFT",
            mac(MAC_SERVER)
        ));
        // Neighbours resolved before the first forwarded frame (bounded pings).
        rtr.sh(&format!(
            "ping -c 1 -W 2 {SERVER4} >/dev/null; ping -c 1 -W 2 {SERVER6} >/dev/null"
        ));
        Self { cli, rtr, srv }
    }

    /// Sends `frames` from the client and returns what the server received, in order.
    fn exchange(&self, frames: &[Vec<u8>], ports: &[u16]) -> Vec<Vec<u8>> {
        let ports = ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut cap = self
            .srv
            .command("/usr/bin/python3")
            .args(["-c", CAPTURE_PY, "s0", &frames.len().to_string(), "8"])
            .arg(&ports)
            .stdout(Stdio::piped())
            .spawn()
            .expect("capture");
        let mut out = BufReader::new(cap.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "capture did not start");

        let mut send = self
            .cli
            .command("/usr/bin/python3")
            .args(["-c", SEND_PY, "c0"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("sender");
        {
            let mut stdin = send.stdin.take().unwrap();
            for f in frames {
                let hex: String = f.iter().map(|b| format!("{b:02x}")).collect();
                writeln!(stdin, "{hex}").unwrap();
            }
        }
        assert!(send.wait().unwrap().success(), "sender failed");

        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        assert!(cap.wait().unwrap().success(), "capture failed");
        rest.lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                (0..l.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap())
                    .collect()
            })
            .collect()
    }

    /// The (address, port) conntrack translated `t`'s source to, from its reply tuple.
    fn masquerade_of(&self, t: &Tuple) -> (IpAddr, u16) {
        let proto = if t.udp { "udp" } else { "tcp" };
        let out = self.rtr.sh(&format!(
            "conntrack -L -p {proto} --orig-port-src {} 2>/dev/null",
            t.sport
        ));
        let line = out
            .lines()
            .find(|l| l.contains(&format!("sport={}", t.sport)))
            .unwrap_or_else(|| panic!("no conntrack entry for {t:?}:\n{out}"));
        // "... src=C dst=S sport=c dport=s ... src=S dst=NAT sport=s dport=NATPORT ..."
        let field = |name: &str| -> Vec<&str> {
            line.split_whitespace()
                .filter_map(|w| w.strip_prefix(name))
                .collect()
        };
        let dst = field("dst=");
        let dport = field("dport=");
        assert!(dst.len() >= 2 && dport.len() >= 2, "conntrack line: {line}");
        (dst[1].parse().unwrap(), dport[1].parse().unwrap())
    }

    /// Kernel-side packet count of `t`'s conntrack entry (original direction).
    fn conntrack_packets(&self, t: &Tuple) -> u64 {
        let proto = if t.udp { "udp" } else { "tcp" };
        let out = self.rtr.sh(&format!(
            "conntrack -L -p {proto} --orig-port-src {} 2>/dev/null",
            t.sport
        ));
        out.split_whitespace()
            .find_map(|w| w.strip_prefix("packets="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

/// How one test frame differs from the plain defaults.
#[derive(Clone, Copy)]
struct Variant {
    payload: usize,
    ttl: u8,
    /// IPv4: (ID, DF); ignored for IPv6.
    id: u16,
    df: bool,
    /// IPv4 TOS / IPv6 traffic class (DSCP and ECN bits).
    tos: u8,
    /// IPv4 UDP sent without checksum.
    udp_no_csum: bool,
}

const fn v(payload: usize, ttl: u8, id: u16, df: bool, tos: u8) -> Variant {
    Variant {
        payload,
        ttl,
        id,
        df,
        tos,
        udp_no_csum: false,
    }
}

fn variants() -> Vec<Variant> {
    vec![
        v(64, 64, 0x1234, true, 0),
        v(1, 64, 0x0001, false, 0),
        v(0, 64, 0xffff, true, 0xb8),
        v(333, 2, 0x8000, true, 0x03),
        v(1400, 255, 0x4242, true, 0x2a),
        Variant {
            udp_no_csum: true,
            ..v(47, 17, 0x0bad, false, 0x10)
        },
    ]
}

/// One Ethernet frame of `t` from the client to the router, checksums computed from scratch
/// (etherparse) and patched where the variant changes a header field.
fn client_frame(t: &Tuple, seq: u32, var: Variant) -> Vec<u8> {
    let payload: Vec<u8> = (0..var.payload)
        .map(|i| (i as u8).wrapping_mul(31) ^ 0x5a)
        .collect();
    let mut ip = Vec::new();
    macro_rules! l4 {
        ($b:expr) => {
            if t.udp {
                $b.udp(t.sport, t.dport).write(&mut ip, &payload).unwrap()
            } else {
                let b = $b.tcp(t.sport, t.dport, seq, 64240).ack(0x2000_0000);
                // PSH on data segments: GRO on the server's veth flushes them unmerged.
                if payload.is_empty() {
                    b.write(&mut ip, &payload).unwrap()
                } else {
                    b.psh().write(&mut ip, &payload).unwrap()
                }
            }
        };
    }
    match (t.src, t.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            l4!(PacketBuilder::ipv4(s.octets(), d.octets(), var.ttl));
            ip[1] = var.tos;
            ip[4..6].copy_from_slice(&var.id.to_be_bytes());
            ip[6] = if var.df { 0x40 } else { 0 };
            ip[10..12].fill(0);
            let c = inet_csum(&ip[..20]);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            if t.udp && var.udp_no_csum {
                ip[26..28].fill(0);
            }
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            l4!(PacketBuilder::ipv6(s.octets(), d.octets(), var.ttl));
            // Version 6, traffic class, a flow label: not covered by any checksum.
            let w = (6u32 << 28) | (u32::from(var.tos) << 20) | (u32::from(var.id) & 0xfffff);
            ip[0..4].copy_from_slice(&w.to_be_bytes());
        }
        _ => unreachable!("mixed families"),
    }
    let mut f = Vec::with_capacity(ip.len() + 14);
    f.extend_from_slice(&MAC_ROUTER_IN);
    f.extend_from_slice(&MAC_CLIENT);
    f.extend_from_slice(&(if t.is_v6() { 0x86ddu16 } else { 0x0800 }).to_be_bytes());
    f.extend_from_slice(&ip);
    f
}

fn tuple(udp: bool, v6: bool, sport: u16, dport: u16) -> Tuple {
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        ("fd00:1::10".parse().unwrap(), SERVER6.parse().unwrap())
    } else {
        ("198.18.1.10".parse().unwrap(), SERVER4.parse().unwrap())
    };
    Tuple {
        udp,
        src,
        dst,
        sport,
        dport,
    }
}

fn hexdiff(a: &[u8], b: &[u8], path: &str) -> String {
    let mut s = String::new();
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x != y {
            s += &format!(" @{i}: {path} {x:02x} kernel {y:02x};");
        }
    }
    if a.len() != b.len() {
        s += &format!(" len {path} {} kernel {}", a.len(), b.len());
    }
    s
}

/// Sends `frames` with the offload attached; checks that the data path, not the kernel,
/// forwarded every one of them (flow counters in the map, conntrack counters unchanged).
fn offloaded_run(
    lab: &Lab,
    obj: &Object,
    specs: &[FlowSpec],
    frames: &[Vec<u8>],
    ports: &[u16],
    path: &str,
) -> Vec<Vec<u8>> {
    let count = |obj: &Object| -> u64 { specs.iter().map(|s| s.counters(obj).packets).sum() };
    let nat: Vec<&Tuple> = specs
        .iter()
        .map(|s| &s.orig)
        .filter(|t| !t.is_v6())
        .collect();
    let ct_before: Vec<u64> = nat.iter().map(|t| lab.conntrack_packets(t)).collect();
    let before = count(obj);
    set_control(obj, 0, true);
    let got = lab.exchange(frames, ports);
    let forwarded = count(obj) - before;
    assert_eq!(
        forwarded,
        frames.len() as u64,
        "{path} forwarded {forwarded} of {} frames; stats {:?}",
        frames.len(),
        common::bpf::stats(obj)
    );
    let ct_after: Vec<u64> = nat.iter().map(|t| lab.conntrack_packets(t)).collect();
    assert_eq!(
        ct_before, ct_after,
        "the {path} run went through the kernel"
    );
    got
}

/// Frame by frame: `offload` equal to `kernel`, after sanity checks of the kernel's own output.
fn compare(offload: &[Vec<u8>], kernel: &[Vec<u8>], path: &str) {
    assert_eq!(
        offload.len(),
        kernel.len(),
        "frames received: {path} vs kernel"
    );
    for (i, (x, k)) in offload.iter().zip(kernel).enumerate() {
        // Sanity: the kernel really rewrote what we expect, and every checksum is valid.
        let v6 = k[12..14] == [0x86, 0xdd];
        assert_eq!(&k[0..6], &MAC_SERVER, "frame {i}: kernel dst MAC");
        assert_eq!(&k[6..12], &MAC_ROUTER_OUT, "frame {i}: kernel src MAC");
        if !v6 {
            let wan: std::net::Ipv4Addr = ROUTER_WAN4.parse().unwrap();
            assert_eq!(&k[26..30], &wan.octets(), "frame {i}: kernel SNAT");
        }
        let (hdr_ok, l4_ok) = verify_checksums(&k[14..]);
        assert!(hdr_ok && l4_ok, "frame {i}: kernel checksums");
        let (hdr_ok, l4_ok) = verify_checksums(&x[14..]);
        assert!(hdr_ok && l4_ok, "frame {i}: {path} checksums");
        assert!(x == k, "frame {i} differs ({path}):{}", hexdiff(x, k, path));
    }
}

/// Moves the calling thread into `ns` (the test thread only; its children inherit it).
fn enter(ns: &Netns) {
    let f = std::fs::File::open(format!("/run/netns/{}", ns.name)).unwrap();
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

#[test]
fn xdp_and_tc_paths_match_kernel_forwarding_byte_for_byte() {
    if !common::require_root("xdp_and_tc_paths_match_kernel_forwarding_byte_for_byte") {
        return;
    }
    let lab = Lab::new();
    // Fresh source ports per process, so no conntrack clash can change the NAT port.
    let base = 20000 + (std::process::id() % 2000) as u16 * 8;
    let flows = [
        tuple(true, false, base, 5001),
        tuple(false, false, base + 1, 5002),
        tuple(true, true, base + 2, 5003),
        tuple(false, true, base + 3, 5004),
    ];
    let ports: Vec<u16> = flows.iter().map(|t| t.dport).collect();
    let mut frames = Vec::new();
    for t in &flows {
        let mut seq = 0x1000_0000u32;
        for var in variants() {
            // Only IPv4 UDP may go without a checksum.
            if var.udp_no_csum && (!t.udp || t.is_v6()) {
                continue;
            }
            frames.push(client_frame(t, seq, var));
            seq = seq.wrapping_add(var.payload as u32);
        }
    }

    // Run 1: the kernel.
    let kernel = lab.exchange(&frames, &ports);
    assert_eq!(
        kernel.len(),
        frames.len(),
        "the kernel forwarded {} of {} frames",
        kernel.len(),
        frames.len()
    );

    // Run 2: the XDP path, flows installed from conntrack's decisions.
    enter(&lab.rtr);
    let lan1 = nix::net::if_::if_nametoindex("lan1").unwrap();
    let wan0 = nix::net::if_::if_nametoindex("wan0").unwrap();
    let obj = common::bpf::load();
    let specs: Vec<FlowSpec> = flows
        .iter()
        .map(|t| {
            let new = if t.is_v6() {
                *t // routed, no NAT
            } else {
                let (addr, port) = lab.masquerade_of(t);
                assert_eq!(addr.to_string(), ROUTER_WAN4, "masquerade address");
                Tuple {
                    src: addr,
                    sport: port,
                    ..*t
                }
            };
            FlowSpec::new(lan1, Encap::plain(), *t, wan0, Encap::plain(), new)
        })
        .collect();
    for s in &specs {
        s.install(&obj);
    }
    let link = obj
        .progs_mut()
        .find(|p| p.name() == bpfqos::dataplane::abi::XDP_PROG)
        .unwrap()
        .attach_xdp(lan1 as i32)
        .expect("attach XDP to lan1");
    let xdp = offloaded_run(&lab, &obj, &specs, &frames, &ports, "XDP");
    drop(link);
    compare(&xdp, &kernel, "XDP");

    // Run 3: the TC twin (the shaped path), same flows, from lan1's clsact ingress.
    let tc_fd = obj
        .progs()
        .find(|p| p.name() == bpfqos::dataplane::abi::TC_PROG)
        .unwrap()
        .as_fd()
        .try_clone_to_owned()
        .unwrap();
    let mut hook = TcHookBuilder::new(tc_fd.as_fd())
        .ifindex(lan1 as i32)
        .replace(true)
        .handle(1)
        .priority(1)
        .hook(TC_INGRESS);
    hook.create().expect("clsact on lan1");
    hook.attach().expect("attach TC to lan1");
    let tc = offloaded_run(&lab, &obj, &specs, &frames, &ports, "TC");
    let _ = hook.detach();
    compare(&tc, &kernel, "TC");

    // The IPv4 UDP datagram without checksum arrived without one on both paths.
    let no_csum = kernel
        .iter()
        .filter(|k| k[12..14] == [0x08, 0x00] && k[23] == 17 && k[40..42] == [0, 0])
        .count();
    assert_eq!(no_csum, 1, "IPv4 UDP zero checksum kept");
    eprintln!(
        "{} frames (IPv4 SNAT TCP+UDP, IPv6 routed TCP+UDP) byte-identical: kernel, XDP, TC",
        kernel.len()
    );
}

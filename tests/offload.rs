//! Flow offload end to end on the host kernel: a namespace router (LAN bridge, NAT to a WAN
//! port) running the daemon, real TCP and UDP through it, checked from outside: payload hashes
//! (xfer.py), the peer address the server saw (NAT), the TTL it received, `conntrack`, and the
//! daemon's own counters. Root only.

mod common;

use std::process::Child;
use std::process::Stdio;
use std::time::Duration;

use common::daemon::Daemon;
use common::lab::finish;
use common::lab::xfer;
use common::lab::Lab;
use common::netns::Netns;

/// tcpdump in `ns` (an independent view of the wire): at most `count` packets or `secs` seconds.
fn capture(ns: &Netns, secs: u32, count: u32, flags: &str, dev: &str, filter: &str) -> Child {
    ns.command("timeout")
        .arg(secs.to_string())
        .args([
            "tcpdump",
            "-c",
            &count.to_string(),
            flags,
            "-i",
            dev,
            filter,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("tcpdump: {e}"))
}

/// Waits (bounded) until the daemon reports at least `n` offloaded connections.
fn wait_offloaded(d: &Daemon, n: u64, within: Duration) {
    let ok = common::wait_for(within, || {
        d.status()["offload"]["connections"].as_u64().unwrap_or(0) >= n
    });
    assert!(
        ok,
        "not {n} connection(s) offloaded: {}\n{}",
        d.status(),
        d.log_text()
    );
}

/// Stops a UDP echo server (it would otherwise serve until its deadline).
fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Packets the client's interface sent and received (the whole conversation, both directions).
fn client_packets(lab: &Lab) -> u64 {
    let out = lab.lan.ip(&["-j", "-s", "link", "show", "dev", "c0"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let s = &v[0]["stats64"];
    s["rx"]["packets"].as_u64().unwrap_or(0) + s["tx"]["packets"].as_u64().unwrap_or(0)
}

#[test]
fn tcp_ipv4_nat_is_offloaded_and_intact() {
    if !common::require_root("tcp_ipv4_nat_is_offloaded_and_intact") {
        return;
    }
    let lab = Lab::new("bqo");
    let d = lab.daemon();
    let (server, peers) = lab.server("198.19.0.2", &[]);
    let before = client_packets(&lab);
    // 24 MiB each way, hashed end to end by xfer.py.
    let client = lab.client("198.19.0.2", &["--up", "25165824", "--down", "25165824"]);
    // While the transfer runs, the daemon shows the connection as offloaded.
    let mut seen = serde_json::Value::Null;
    common::wait_for(Duration::from_secs(20), || {
        let st = d.status();
        if st["offload"]["connections"].as_u64().unwrap_or(0) >= 1 {
            seen = st;
            true
        } else {
            false
        }
    });
    finish(client, "client");
    finish(server, "server");
    assert!(
        !seen.is_null(),
        "connection never offloaded:\n{}\n{}",
        d.status(),
        d.log_text()
    );
    let flow = &seen["flows"][0];
    assert_eq!(flow["proto"], "tcp", "{seen}");
    // The tables were sized from conntrack's: two entries per connection.
    let ct_max = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    assert_eq!(
        seen["offload"]["flows_max"],
        u64::from(bpfqos::dataplane::abi::flow_entries(ct_max)),
        "{seen}"
    );
    assert!(
        flow["orig"]
            .as_str()
            .is_some_and(|o| o.contains("198.18.1.2")),
        "{flow}"
    );
    // NAT: the server saw the router's WAN address.
    let peer = std::fs::read_to_string(&peers).unwrap_or_default();
    assert!(
        peer.contains("198.19.0.1"),
        "server saw {peer:?}, not the NAT address"
    );
    // The data path, not the kernel, carried (nearly) all of it.
    let total = client_packets(&lab) - before;
    let st = d.status();
    let offloaded = st["offload"]["packets"].as_u64().unwrap_or(0);
    eprintln!(
        "offloaded {offloaded} of {total} packets; data path: {}",
        st["datapath"]
    );
    assert!(
        offloaded * 10 >= total * 9,
        "only {offloaded} of {total} packets offloaded\n{st}\n{}",
        d.log_text()
    );
}

/// Conntrack entries of the router, as `conntrack -L -o id` prints them.
fn conntrack(lab: &Lab, args: &str) -> String {
    lab.rtr
        .sh(&format!("conntrack -L {args} -o id 2>/dev/null || true"))
}

/// The `id=` of the first conntrack line matching `args`.
fn conntrack_id(lab: &Lab, args: &str) -> Option<String> {
    conntrack(lab, args)
        .lines()
        .next()?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("id=").map(str::to_string))
}

#[test]
fn ipv6_tcp_routed_is_offloaded_with_hop_limit_decremented() {
    if !common::require_root("ipv6_tcp_routed_is_offloaded_with_hop_limit_decremented") {
        return;
    }
    let lab = Lab::new("bq6");
    let d = lab.daemon();
    let (server, peers) = lab.server("fd00:2::2", &[]);
    // The server's side captures hop limits as received (independent oracle: tcpdump).
    let capture = capture(
        &lab.srv,
        10,
        40,
        "-nv",
        "s0",
        "ip6 and tcp and src fd00:1::2",
    );
    std::thread::sleep(Duration::from_millis(500));
    let client = lab.client("fd00:2::2", &["--up", "16777216", "--down", "16777216"]);
    let mut offloaded_during = false;
    common::wait_for(Duration::from_secs(20), || {
        offloaded_during |= d.status()["offload"]["connections"].as_u64().unwrap_or(0) >= 1;
        offloaded_during
    });
    finish(client, "client");
    finish(server, "server");
    let dump = String::from_utf8_lossy(
        &capture
            .wait_with_output()
            .unwrap_or_else(|e| panic!("{e}"))
            .stdout,
    )
    .into_owned();
    assert!(
        offloaded_during,
        "never offloaded: {}\n{}",
        d.status(),
        d.log_text()
    );
    // No NAT for IPv6: the server saw the client itself.
    let peer = std::fs::read_to_string(&peers).unwrap_or_default();
    assert!(peer.contains("fd00:1::2"), "server saw {peer:?}");
    // The client sends with hop limit 64; one router hop, whichever path carried it.
    assert!(
        dump.contains("hlim 63"),
        "no hop limit 63 at the server:\n{dump}"
    );
    assert!(
        !dump.contains("hlim 64"),
        "a packet arrived with hop limit 64:\n{dump}"
    );
    let st = d.status();
    assert!(
        st["offload"]["packets"].as_u64().unwrap_or(0) > 10_000,
        "{st}"
    );
}

#[test]
fn udp_is_offloaded_once_assured_and_conntrack_kept_alive() {
    if !common::require_root("udp_is_offloaded_once_assured_and_conntrack_kept_alive") {
        return;
    }
    let lab = Lab::new("bqu");
    // A short stream timeout: without refreshes the entry would expire during the test.
    lab.rtr
        .sh("sysctl -qw net.netfilter.nf_conntrack_udp_timeout_stream=6");
    let d = lab.daemon();
    let (server, _) = lab.server("198.19.0.2", &["--udp"]);
    let capture = capture(&lab.srv, 20, 20, "-nv", "s0", "udp and dst port 5201");
    std::thread::sleep(Duration::from_millis(500));
    // 15 s of ping-pong, 20 datagrams a second, every echo checked by xfer.py.
    let client = lab.client(
        "198.19.0.2",
        &[
            "--udp",
            "--count",
            "300",
            "--interval",
            "0.05",
            "--size",
            "600",
        ],
    );
    // UDP becomes ASSURED after ~2 s of two-way traffic, then it is offloaded.
    let offloaded = common::wait_for(Duration::from_secs(8), || {
        d.status()["offload"]["connections"].as_u64().unwrap_or(0) >= 1
    });
    assert!(
        offloaded,
        "UDP never offloaded: {}\n{}",
        d.status(),
        d.log_text()
    );
    let id = conntrack_id(&lab, "-p udp --dport 5201").unwrap_or_default();
    assert!(!id.is_empty(), "no conntrack entry");
    // Well past the 6 s timeout, with conntrack seeing none of the offloaded packets...
    std::thread::sleep(Duration::from_secs(9));
    // ...the same entry is still there: the daemon refreshed it.
    assert_eq!(
        conntrack_id(&lab, "-p udp --dport 5201").unwrap_or_default(),
        id,
        "conntrack entry expired or was replaced while offloaded:\n{}",
        conntrack(&lab, "-p udp")
    );
    finish(client, "client");
    stop(server);
    let dump = String::from_utf8_lossy(
        &capture
            .wait_with_output()
            .unwrap_or_else(|e| panic!("{e}"))
            .stdout,
    )
    .into_owned();
    assert!(dump.contains("ttl 63"), "TTL not decremented:\n{dump}");
    assert!(dump.contains("198.19.0.1."), "source not NATed:\n{dump}");
    let st = d.status();
    assert!(
        st["offload"]["packets"].as_u64().unwrap_or(0) >= 300,
        "{st}"
    );
}

#[test]
fn kill_9_under_load_loses_nothing_and_restart_resumes() {
    if !common::require_root("kill_9_under_load_loses_nothing_and_restart_resumes") {
        return;
    }
    let lab = Lab::new("bqk");
    let mut d = lab.daemon();
    let (server, _) = lab.server("198.19.0.2", &["--udp"]);
    // A TCP stream too (iperf3 fails if its connection breaks).
    let iperf_s = lab
        .srv
        .command("iperf3")
        .args(["-s", "-1", "-B", "198.19.0.2", "-p", "5301"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("iperf3 -s: {e}"));
    std::thread::sleep(Duration::from_millis(300));
    let iperf_c = lab
        .lan
        .command("iperf3")
        .args([
            "-c",
            "198.19.0.2",
            "-p",
            "5301",
            "-t",
            "13",
            "-b",
            "50M",
            "--connect-timeout",
            "2000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("iperf3 -c: {e}"));
    // 12 s of ping-pong; xfer.py fails if any echo is lost or corrupted.
    let client = lab.client(
        "198.19.0.2",
        &[
            "--udp",
            "--count",
            "240",
            "--interval",
            "0.05",
            "--size",
            "800",
        ],
    );
    // Both the TCP data connection (plus iperf3's control connection) and the UDP one.
    wait_offloaded(&d, 3, Duration::from_secs(8));
    d.signal("KILL");
    // Killed by a signal: no exit code.
    assert_eq!(d.wait_exit(Duration::from_secs(5)), None);
    // The programs stay attached; with the heartbeat stale (3 s) they pass everything to the
    // kernel, which still has the connection: the ping-pong goes on.
    std::thread::sleep(Duration::from_secs(4));
    let d2 = lab.daemon();
    // The new daemon adopts the pinned maps and re-admits the live connection from conntrack.
    let resumed = common::wait_for(Duration::from_secs(5), || {
        d2.status()["offload"]["connections"].as_u64().unwrap_or(0) >= 3
    });
    assert!(
        resumed,
        "offload did not resume: {}\n{}",
        d2.status(),
        d2.log_text()
    );
    let before = d2.status()["datapath"]["redirect"].as_u64().unwrap_or(0);
    std::thread::sleep(Duration::from_secs(1));
    let after = d2.status()["datapath"]["redirect"].as_u64().unwrap_or(0);
    assert!(
        after > before,
        "data path not forwarding after restart ({before} -> {after})"
    );
    // The re-adopted per-CPU counters show the data path handed packets to the kernel while
    // nobody fed the heartbeat.
    let st = d2.status();
    assert!(
        st["datapath"]["pass_disabled"].as_u64().unwrap_or(0) > 0,
        "no packet passed for a stale heartbeat: {st}"
    );
    finish(client, "client");
    stop(server);
    let tcp = finish(iperf_c, "iperf3 client (TCP through kill -9 and restart)");
    assert!(tcp.contains("receiver"), "{tcp}");
    let mut iperf_s = iperf_s;
    let _ = iperf_s.wait();
    assert!(
        d2.log_text().contains("re-adopted pinned maps"),
        "{}",
        d2.log_text()
    );
}

/// Echoes that came back, from xfer.py's UDP client summary line ("echoed N/M").
fn echoed(child: Child) -> (u64, u64, String) {
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("client: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let counts = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("echoed "))
        .or_else(|| {
            text.split("echoed ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
        })
        .and_then(|r| r.split_once('/'))
        .and_then(|(g, t)| Some((g.trim().parse().ok()?, t.trim().parse().ok()?)));
    let (good, total) = counts.unwrap_or((0, 0));
    (good, total, text)
}

fn ifindex(ns: &Netns, dev: &str) -> u64 {
    let out = ns.ip(&["-j", "link", "show", "dev", dev]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v[0]["ifindex"].as_u64().unwrap_or(0)
}

#[test]
fn route_change_moves_the_offloaded_flow() {
    if !common::require_root("route_change_moves_the_offloaded_flow") {
        return;
    }
    let lab = Lab::new("bqr");
    // A second WAN path to a service address on the server.
    lab.srv.ip(&[
        "link",
        "add",
        "s1",
        "type",
        "veth",
        "peer",
        "name",
        "wan1",
        "netns",
        &lab.rtr.name,
    ]);
    lab.srv
        .sh("ip link set s1 up; ip addr add 198.19.1.2/24 dev s1
         ip addr add 198.19.9.9/32 dev lo
         ethtool -K s1 tx off tso off gso off gro on >/dev/null");
    lab.rtr
        .sh("ip link set wan1 up; ip addr add 198.19.1.1/24 dev wan1
         ip route add 198.19.9.9/32 via 198.19.0.2 dev wan0
         ping -c 1 -W 2 198.19.1.2 >/dev/null");
    lab.work.write(
        "bpfqos",
        "config globals 'globals'\n\toption log_level 'debug'\n\n\
         config interface 'lan'\n\toption device 'br-lan'\n\n\
         config interface 'wan'\n\toption device 'wan0'\n\n\
         config interface 'wan2'\n\toption device 'wan1'\n",
    );
    let d = lab.daemon();
    let (server, client) =
        lab.udp_pingpong("198.19.9.9", 200, &["--size", "500", "--io-timeout", "1"]);
    wait_offloaded(&d, 1, Duration::from_secs(8));
    let (wan0, wan1) = (ifindex(&lab.rtr, "wan0"), ifindex(&lab.rtr, "wan1"));
    assert_eq!(d.status()["flows"][0]["egress_ifindex"], wan0);
    // The route moves; the kernel would now send the flow out of wan1, so must the data path.
    let capture = capture(&lab.srv, 6, 10, "-n", "s1", "udp and dst host 198.19.9.9");
    std::thread::sleep(Duration::from_millis(500));
    lab.rtr.ip(&[
        "route",
        "replace",
        "198.19.9.9/32",
        "via",
        "198.19.1.2",
        "dev",
        "wan1",
    ]);
    let moved = common::wait_for(Duration::from_secs(2), || {
        d.status()["flows"][0]["egress_ifindex"] == wan1
    });
    assert!(
        moved,
        "flow still leaves by wan0: {}\n{}",
        d.status(),
        d.log_text()
    );
    let (good, total, text) = echoed(client);
    stop(server);
    let dump = String::from_utf8_lossy(
        &capture
            .wait_with_output()
            .unwrap_or_else(|e| panic!("{e}"))
            .stdout,
    )
    .into_owned();
    assert!(
        dump.matches("198.19.9.9").count() >= 5,
        "nothing arrived over wan1:\n{dump}"
    );
    assert!(good + 3 >= total && total == 200, "echoes lost: {text}");
    let st = d.status();
    let redirected = st["attach"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["device"] == "wan1"))
        .map(|p| p["tx_packets"].as_u64().unwrap_or(0))
        .unwrap_or(0);
    assert!(
        redirected > 0,
        "the data path sent nothing out of wan1: {st}"
    );
}

#[test]
fn neighbour_mac_change_is_followed() {
    if !common::require_root("neighbour_mac_change_is_followed") {
        return;
    }
    let lab = Lab::new("bqn");
    let d = lab.daemon();
    let (server, client) =
        lab.udp_pingpong("198.19.0.2", 200, &["--size", "500", "--io-timeout", "1"]);
    wait_offloaded(&d, 1, Duration::from_secs(8));
    // The server gets a new MAC (NIC swapped, VM moved...) and the router learns it.
    let new_mac = "02:00:5e:10:00:99";
    lab.srv.ip(&["link", "set", "s0", "address", new_mac]);
    lab.rtr.ip(&[
        "neigh",
        "replace",
        "198.19.0.2",
        "lladdr",
        new_mac,
        "dev",
        "wan0",
        "nud",
        "reachable",
    ]);
    // The flow entry towards the server now carries the new MAC (read from the pinned map by
    // bpftool, independently of the daemon).
    let followed = common::wait_for(Duration::from_secs(2), || {
        let dump = lab.rtr.sh(&format!(
            "bpftool -j map dump pinned {}/flows4",
            lab.pin_dir.display()
        ));
        let want: Vec<String> = new_mac.split(':').map(|b| format!("0x{b}")).collect();
        dump.contains(&want.join("\",\""))
    });
    assert!(followed, "no flow entry with the new MAC: {}", d.log_text());
    let (good, total, text) = echoed(client);
    stop(server);
    // A stale MAC would lose every echo after the change (~150); allow the change window.
    assert!(good + 5 >= total && total == 200, "echoes lost: {text}");
}

#[test]
fn firewall_reload_drops_flows_and_readmits_only_what_still_flows() {
    if !common::require_root("firewall_reload_drops_flows_and_readmits_only_what_still_flows") {
        return;
    }
    let lab = Lab::new("bqf");
    let d = lab.daemon();
    let (server, client) =
        lab.udp_pingpong("198.19.0.2", 300, &["--size", "300", "--io-timeout", "0.5"]);
    let connections = || d.status()["offload"]["connections"].as_u64().unwrap_or(0);
    assert!(
        common::wait_for(Duration::from_secs(8), || connections() >= 1),
        "never offloaded"
    );
    // A ruleset change that does not touch this traffic: dropped, then offloaded again.
    lab.rtr.sh("nft add table inet bq_probe");
    assert!(
        common::wait_for(Duration::from_secs(1), || d.status()["offload"]["manager"]
            ["flushes"]
            .as_u64()
            .unwrap_or(0)
            >= 1),
        "no flush on a ruleset change: {}",
        d.log_text()
    );
    assert!(
        common::wait_for(Duration::from_secs(6), || connections() >= 1),
        "not re-admitted after a harmless reload: {}",
        d.log_text()
    );
    // A ruleset that drops the flow in the forward path: it must stay in the kernel, which drops.
    lab.rtr.sh(
        "nft add chain inet bq_probe filt '{ type filter hook forward priority 0; }'
         nft add rule inet bq_probe filt udp dport 5201 counter drop",
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        connections(),
        0,
        "re-admitted a flow the firewall now drops: {}",
        d.status()
    );
    // The kernel's drop rule sees the flow's packets: the offload does not bypass it.
    let rule = lab.rtr.sh("nft list chain inet bq_probe filt");
    let dropped: u64 = rule
        .split("packets ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(dropped >= 5, "the drop rule saw {dropped} packets:\n{rule}");
    stop(client);
    stop(server);
}

#[test]
fn connections_to_the_router_itself_stay_in_the_kernel() {
    if !common::require_root("connections_to_the_router_itself_stay_in_the_kernel") {
        return;
    }
    let lab = Lab::new("bql");
    let d = lab.daemon();
    let peers = lab.work.path.join("peers-local");
    let server = lab
        .rtr
        .command("/usr/bin/python3")
        .arg(xfer())
        .args([
            "server",
            "--bind",
            "198.18.1.1",
            "--timeout",
            "30",
            "--peers",
        ])
        .arg(&peers)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("xfer server: {e}"));
    std::thread::sleep(Duration::from_millis(300));
    let client = lab.client("198.18.1.1", &["--up", "1048576", "--down", "1048576"]);
    finish(client, "client");
    finish(server, "server");
    assert_only_rejected(
        &d.status(),
        "local",
        "the local connection was not seen and refused",
    );
}

#[test]
fn full_flow_table_leaves_new_connections_in_the_kernel() {
    if !common::require_root("full_flow_table_leaves_new_connections_in_the_kernel") {
        return;
    }
    let lab = Lab::new("bqm");
    let d = lab.daemon();
    // Status answers once the data path is loaded and its maps pinned.
    assert_eq!(d.status()["offload"]["enabled"], true);
    // Fill every slot of the IPv4 hash index behind the daemon's back (slots pointing at an
    // entry no packet matches): the daemon reads the index before it places a flow.
    use libbpf_rs::MapCore;
    let map = libbpf_rs::MapHandle::from_pinned_path(lab.pin_dir.join("buckets4"))
        .unwrap_or_else(|e| panic!("pinned buckets4: {e}"));
    let slots = map.value_size() as usize / 4;
    let mut value = Vec::new();
    for i in 0..slots as u32 {
        // tag i + 1 (non-zero, distinct within the bucket), entry index 0xffff.
        value.extend_from_slice(&(((i + 1) << 16) | 0xffff).to_ne_bytes());
    }
    for b in 0..map.max_entries() {
        map.update(&b.to_ne_bytes(), &value, libbpf_rs::MapFlags::ANY)
            .unwrap_or_else(|e| panic!("filling bucket {b}: {e}"));
    }
    let (server, _) = lab.server("198.19.0.2", &[]);
    let client = lab.client("198.19.0.2", &["--up", "4194304", "--down", "4194304"]);
    finish(client, "client");
    finish(server, "server");
    assert_only_rejected(&d.status(), "map_full", "a full table was not counted");
}

/// Status says the manager refused at least one connection for `reason` and admitted none.
fn assert_only_rejected(st: &serde_json::Value, reason: &str, what: &str) {
    let rejected = st["offload"]["manager"]["rejected"][reason]
        .as_u64()
        .unwrap_or(0);
    assert!(rejected >= 1, "{what}: {st}");
    assert_eq!(st["offload"]["manager"]["admitted"], 0, "{st}");
}

/// A client that resets its connection after the offload carried data: conntrack must take the
/// RST (CLOSE), as it would on the kernel path. Its record of the highest ACK is stale by then
/// (the data bypassed it); unless the offload clears it, conntrack doubts the RST, keeps the
/// entry ESTABLISHED for 10 s "for a challenge ACK", and a client that reuses the port at once
/// (a reset leaves no TIME_WAIT) meets a dying entry: found by the churn soak (tests/soak.rs).
#[test]
fn a_reset_after_offloaded_data_closes_the_conntrack_entry() {
    let test = "a_reset_after_offloaded_data_closes_the_conntrack_entry";
    if !common::require_root(test) {
        return;
    }
    if common::which("conntrack").is_none() {
        common::missing(test, "conntrack");
        return;
    }
    let lab = Lab::new("bqr");
    let d = lab.daemon();
    let flag = lab.work.path.join("offloaded");
    // An echo server, and a client that exchanges 1 KiB every 20 ms until told the flow is
    // offloaded, 50 more times (through the data path), then resets (SO_LINGER 0).
    let server = lab
        .srv
        .command("timeout")
        .args(["30", "/usr/bin/python3", "-c"])
        .arg(
            "import socket\n\
             s = socket.create_server(('198.19.0.2', 7200))\n\
             c, _ = s.accept()\n\
             try:\n    while (d := c.recv(65536)):\n        c.sendall(d)\n\
             except ConnectionResetError:\n    pass\n",
        )
        .spawn()
        .unwrap_or_else(|e| panic!("server: {e}"));
    std::thread::sleep(Duration::from_millis(300));
    let client = lab
        .lan
        .command("timeout")
        .args(["30", "/usr/bin/python3", "-c"])
        .arg(format!(
            "import os, socket, struct, time\n\
             c = socket.create_connection(('198.19.0.2', 7200), timeout=5)\n\
             def xch():\n    c.sendall(b'x' * 1024)\n    n = 0\n    \
             while n < 1024:\n        n += len(c.recv(1024 - n))\n\
             for _ in range(1000):\n    xch()\n    time.sleep(0.02)\n    \
             if os.path.exists('{flag}'):\n        break\n\
             for _ in range(50):\n    xch()\n\
             print(c.getsockname()[1], flush=True)\n\
             c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n\
             c.close()\n",
            flag = flag.display()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("client: {e}"));
    wait_offloaded(&d, 1, Duration::from_secs(10));
    std::fs::write(&flag, b"").unwrap();
    let port = finish(client, "client");
    let port = port.trim();
    let _ = server.wait_with_output();
    let entry = lab.rtr.sh(&format!(
        "conntrack -L -p tcp --orig-port-src {port} --orig-port-dst 7200 2>/dev/null"
    ));
    assert!(
        entry.contains(" CLOSE "),
        "conntrack did not take the reset: {entry}\n{}",
        d.status()["offload"]
    );
    // The data really went through the data path (else the test proves nothing).
    assert!(
        d.status()["offload"]["packets"].as_u64().unwrap_or(0) >= 50,
        "{}",
        d.status()["offload"]
    );
}

//! Topology dump, next-hop resolution and events against a real kernel, checked with iproute2
//! (`ip -j route get`, `ip -j neigh`, `ip -j link`, `bridge -j fdb`) as independent oracles.
//!
//! Needs root (network namespaces). Without root the tests skip with a message, except under
//! `CI=true`, where they fail. Everything lives in namespaces created here (router `r`, LAN hosts
//! `h1` and `h2` behind the router's bridge, WAN host `w` behind two links), addressed only from
//! 198.18.0.0/15 and fd00::/8, and deleted on drop, panics included.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bpfqos::topology;
use common::netns::Netns;

use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt;
use topology::NetlinkEvent;
use topology::RouteQuery;
use topology::Topology;
use topology::TopologyEvent;
use topology::Unresolved;

struct Lab {
    r: Netns,
    h1: Netns,
    h2: Netns,
    w: Netns,
}

const H1_MAC: &str = "02:00:00:00:01:11";
const H2_MAC: &str = "02:00:00:00:01:12";
const BR_MAC: &str = "02:00:00:00:01:01";

/// Router r: br-lan (198.18.1.1/24, fd00:1::1/64) with ports vr1 → h1 (198.18.1.11) and
/// vr2 → h2 (198.18.1.12); wan0 (198.18.2.1/24) → w (198.18.2.2) and wan1 (198.18.4.1/24)
/// → w (198.18.4.2). 198.18.100.0/24 is behind w: via wan0 in the main table, via wan1 in
/// table 100 for traffic from h2 (`ip rule add from 198.18.1.12 table 100`).
fn build_lab() -> Lab {
    let lab = Lab {
        r: Netns::new("r"),
        h1: Netns::new("h1"),
        h2: Netns::new("h2"),
        w: Netns::new("w"),
    };
    let (r, h1, h2, w) = (&lab.r, &lab.h1, &lab.h2, &lab.w);
    r.sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1");
    r.sh(&format!(
        "ip link add br-lan type bridge && ip link set br-lan address {BR_MAC} && \
         ip link set br-lan up && \
         ip addr add 198.18.1.1/24 dev br-lan && ip addr add fd00:1::1/64 dev br-lan nodad"
    ));
    for (i, (h, mac)) in [(h1, H1_MAC), (h2, H2_MAC)].into_iter().enumerate() {
        let n = i + 1;
        r.sh(&format!(
            "ip link add vr{n} type veth peer name eth0 netns {} && \
             ip link set vr{n} master br-lan && ip link set vr{n} up",
            h.name
        ));
        h.sh(&format!(
            "ip link set eth0 address {mac} && ip link set eth0 up && \
             ip addr add 198.18.1.1{n}/24 dev eth0 && ip addr add fd00:1::1{n}/64 dev eth0 nodad && \
             ip route add default via 198.18.1.1"
        ));
    }
    for (n, net) in [(0, 2), (1, 4)] {
        r.sh(&format!(
            "ip link add wan{n} type veth peer name wan{n} netns {} && \
             ip link set wan{n} up && ip addr add 198.18.{net}.1/24 dev wan{n}",
            w.name
        ));
        w.sh(&format!(
            "ip link set wan{n} up && ip addr add 198.18.{net}.2/24 dev wan{n}"
        ));
    }
    r.sh("ip route add 198.18.100.0/24 via 198.18.2.2 && \
          ip route add 198.18.100.0/24 via 198.18.4.2 table 100 && \
          ip rule add from 198.18.1.12 table 100 && \
          ip route add blackhole 198.18.200.0/24 && \
          ip route add unreachable 198.18.201.0/24");
    // Dynamic neighbours: traffic resolves them (and makes the bridge learn h1, h2).
    h1.sh("ping -c 1 -W 1 198.18.1.1 >/dev/null");
    h2.sh("ping -c 1 -W 1 198.18.1.1 >/dev/null");
    h1.sh("ping -6 -c 1 -W 1 fd00:1::1 >/dev/null");
    r.sh("ping -c 1 -W 1 198.18.2.2 >/dev/null && ping -c 1 -W 1 198.18.4.2 >/dev/null");
    // A static neighbour: h2 pinned with its real MAC.
    r.sh(&format!(
        "ip neigh replace 198.18.1.12 lladdr {H2_MAC} dev br-lan nud permanent"
    ));
    lab
}

/// What `ip -j route get` says: (output device, gateway).
fn oracle_route(r: &Netns, args: &str) -> (String, Option<IpAddr>) {
    let v = r.json(&format!("ip -j route get {args}"));
    let dev = v[0]["dev"].as_str().unwrap().to_string();
    let gw = v[0]["gateway"].as_str().map(|g| g.parse().unwrap());
    (dev, gw)
}

/// What `ip -j neigh` says the MAC of `ip` on `dev` is.
fn oracle_neigh(r: &Netns, ip: IpAddr, dev: &str) -> [u8; 6] {
    let v = r.json(&format!("ip -j neigh show {ip} dev {dev}"));
    topology::parse_mac(v[0]["lladdr"].as_str().unwrap()).unwrap()
}

/// What `bridge -j fdb` says: the port `mac` is behind on `br`.
fn oracle_fdb_port(r: &Netns, br: &str, mac: &[u8; 6]) -> String {
    let v = r.json(&format!("bridge -j fdb show br {br}"));
    let want = topology::fmt_mac(mac);
    v.as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["mac"].as_str() == Some(want.as_str())
                && e["ifname"].as_str() != Some(br)
                && !e["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "self"))
        })
        .and_then(|e| e["ifname"].as_str())
        .unwrap_or_else(|| panic!("bridge fdb has no port for {want}: {v}"))
        .to_string()
}

#[test]
fn dump_and_resolve_match_iproute2() {
    if !common::require_root("dump_and_resolve_match_iproute2") {
        return;
    }
    let lab = build_lab();
    let r = &lab.r;
    let idx = |d: &str| r.ifindex(d);
    let (br, vr1, vr2, wan0, wan1) = (
        idx("br-lan"),
        idx("vr1"),
        idx("vr2"),
        idx("wan0"),
        idx("wan1"),
    );
    let links_oracle = r.json("ip -j -d link show");
    let addrs_oracle = r.json("ip -j addr show");

    let (topo, results) = r.block_on_in(move || async move {
        let sub = topology::subscribe().unwrap();
        let topo = Topology::dump(&sub.handle).await.unwrap();
        let q = |dst: &str, src: Option<&str>, iif: Option<u32>| RouteQuery {
            dst: dst.parse().unwrap(),
            src: src.map(|s| s.parse().unwrap()),
            iif,
            mark: None,
        };
        let queries = vec![
            // 0: router → LAN host h1 (dynamic neighbour), across the bridge.
            q("198.18.1.11", None, None),
            // 1: forwarded w → h1.
            q("198.18.1.11", Some("198.18.100.5"), Some(wan0)),
            // 2: forwarded h1 → 198.18.100.5: main table, via wan0.
            q("198.18.100.5", Some("198.18.1.11"), Some(br)),
            // 3: forwarded h2 → 198.18.100.5: rule → table 100, via wan1.
            q("198.18.100.5", Some("198.18.1.12"), Some(br)),
            // 4: to h2: static neighbour.
            q("198.18.1.12", None, None),
            // 5: on-link on wan0 but nobody there: the neighbour never resolves.
            q("198.18.2.99", None, None),
            // 6: the router itself, forwarded path and output path.
            q("198.18.1.1", Some("198.18.100.5"), Some(wan0)),
            q("198.18.2.1", None, None),
            // 8: blackhole and unreachable routes.
            q("198.18.200.1", None, None),
            q("198.18.201.1", None, None),
            // 10: IPv6 to h1 across the bridge.
            q("fd00:1::11", None, None),
        ];
        let mut results = Vec::new();
        for query in queries {
            results.push(topo.resolve(&sub.handle, query).await);
        }
        (topo, results)
    });

    // The dump against `ip -j -d link` / `ip -j addr`.
    for l in links_oracle.as_array().unwrap() {
        let ifindex = l["ifindex"].as_u64().unwrap() as u32;
        let link = topo
            .link(ifindex)
            .unwrap_or_else(|| panic!("{l} missing from the dump"));
        assert_eq!(link.name, l["ifname"].as_str().unwrap());
        assert_eq!(u64::from(link.mtu), l["mtu"].as_u64().unwrap());
        if let Some(mac) = l["address"].as_str() {
            if l["link_type"] == "ether" {
                assert_eq!(link.mac, topology::parse_mac(mac), "{}", link.name);
            }
        }
        let master = l["master"]
            .as_str()
            .map(|m| topo.link_by_name(m).unwrap().ifindex);
        assert_eq!(link.master, master, "{}", link.name);
        let expected_kind = match l["linkinfo"]["info_kind"].as_str() {
            Some("veth") => topology::LinkKind::Veth,
            Some("bridge") => topology::LinkKind::Bridge,
            _ if l["link_type"] == "loopback" => topology::LinkKind::Other("loopback".into()),
            Some(other) => topology::LinkKind::Other(other.into()),
            None => topology::LinkKind::Ethernet,
        };
        assert_eq!(link.kind, expected_kind, "{}", link.name);
    }
    assert_eq!(topo.links().count(), links_oracle.as_array().unwrap().len());
    for l in addrs_oracle.as_array().unwrap() {
        for a in l["addr_info"].as_array().unwrap() {
            let ip: IpAddr = a["local"].as_str().unwrap().parse().unwrap();
            assert!(topo.is_local(ip), "{ip} not recognised as local");
        }
    }
    assert!(!topo.is_local("198.18.1.11".parse().unwrap()));
    assert_eq!(topo.attach_points(br), vec![vr1, vr2]);

    // Resolutions against `ip route get` + `ip neigh` + `bridge fdb`.
    let check = |i: usize, get_args: &str| {
        let nh = results[i]
            .as_ref()
            .unwrap_or_else(|e| panic!("query {i} ({get_args}): {e}"));
        let (dev, gw) = oracle_route(r, get_args);
        assert_eq!(nh.l3_ifindex, idx(&dev), "query {i}: device");
        assert_eq!(nh.gateway, gw, "query {i}: gateway");
        let nh_ip: IpAddr =
            gw.unwrap_or_else(|| get_args.split(' ').next().unwrap().parse().unwrap());
        assert_eq!(nh.dst_mac, oracle_neigh(r, nh_ip, &dev), "query {i}: MAC");
        assert_eq!(nh.neighbour, Some((idx(&dev), nh_ip)));
        let (port, lowest_mtu) = if dev == "br-lan" {
            let port = oracle_fdb_port(r, "br-lan", &nh.dst_mac);
            (
                port.clone(),
                r.json(&format!("ip -j link show {port}"))[0]["mtu"]
                    .as_u64()
                    .unwrap(),
            )
        } else {
            (
                dev.clone(),
                r.json(&format!("ip -j link show {dev}"))[0]["mtu"]
                    .as_u64()
                    .unwrap(),
            )
        };
        assert_eq!(nh.egress_ifindex, idx(&port), "query {i}: egress port");
        assert_eq!(nh.src_mac, r.mac(&dev), "query {i}: source MAC");
        assert_eq!(u64::from(nh.mtu), lowest_mtu.min(1500), "query {i}: MTU");
        assert_eq!(
            nh.encap,
            topology::L2Encap::default(),
            "query {i}: no encap"
        );
    };
    check(0, "198.18.1.11");
    check(1, "198.18.1.11 from 198.18.100.5 iif wan0");
    check(2, "198.18.100.5 from 198.18.1.11 iif br-lan");
    check(3, "198.18.100.5 from 198.18.1.12 iif br-lan");
    check(4, "198.18.1.12");
    check(10, "fd00:1::11");
    assert_eq!(results[0].as_ref().unwrap().egress_ifindex, vr1);
    assert_eq!(results[2].as_ref().unwrap().l3_ifindex, wan0);
    assert_eq!(results[3].as_ref().unwrap().l3_ifindex, wan1);
    assert_eq!(results[4].as_ref().unwrap().egress_ifindex, vr2);
    assert_eq!(
        results[5],
        Err(Unresolved::Neighbour {
            ifindex: wan0,
            ip: "198.18.2.99".parse().unwrap()
        })
    );
    assert_eq!(results[6], Err(Unresolved::Local));
    assert_eq!(results[7], Err(Unresolved::Local));
    assert!(
        matches!(results[8], Err(Unresolved::NoRoute(_))),
        "{:?}",
        results[8]
    );
    assert!(
        matches!(results[9], Err(Unresolved::NoRoute(_))),
        "{:?}",
        results[9]
    );
    drop(lab);
}

#[test]
fn failed_neighbour_and_unlearned_fdb_stay_in_the_kernel() {
    if !common::require_root("failed_neighbour_and_unlearned_fdb_stay_in_the_kernel") {
        return;
    }
    let lab = build_lab();
    let r = &lab.r;
    // Make 198.18.2.99 INCOMPLETE/FAILED by trying it; a static neighbour with a MAC the bridge
    // has never seen cannot be given a port.
    assert!(!r.try_sh("ping -c 1 -W 1 198.18.2.99 >/dev/null"));
    r.sh("ip neigh replace 198.18.1.50 lladdr 02:00:00:00:01:50 dev br-lan nud permanent");
    let wan0 = r.ifindex("wan0");
    let state = r.json("ip -j neigh show 198.18.2.99 dev wan0");
    let (a, b) = r.block_on_in(move || async move {
        let sub = topology::subscribe().unwrap();
        let topo = Topology::dump(&sub.handle).await.unwrap();
        let q = |dst: &str| RouteQuery {
            dst: dst.parse().unwrap(),
            src: None,
            iif: None,
            mark: None,
        };
        (
            topo.resolve(&sub.handle, q("198.18.2.99")).await,
            topo.resolve(&sub.handle, q("198.18.1.50")).await,
        )
    });
    assert_eq!(
        a,
        Err(Unresolved::Neighbour {
            ifindex: wan0,
            ip: "198.18.2.99".parse().unwrap()
        }),
        "neighbour state per ip: {state}"
    );
    match b {
        Err(Unresolved::Unsupported(reason)) => {
            assert!(reason.contains("no FDB entry"), "{reason}")
        }
        other => panic!("expected no FDB entry, got {other:?}"),
    }
}

/// Waits for the first event matching `want`, applying every event to `topo` on the way.
async fn wait_for(
    events: &mut topology::netlink::Events,
    topo: &mut Topology,
    what: &str,
    want: impl Fn(&TopologyEvent) -> bool,
) -> TopologyEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ev: NetlinkEvent = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| panic!("no {what} event within 5 s"))
            .unwrap_or_else(|| panic!("event stream ended waiting for {what}"));
        if let Some(t) = topo.apply(&ev) {
            if want(&t) {
                return t;
            }
        }
    }
}

#[test]
fn events_keep_the_model_current() {
    if !common::require_root("events_keep_the_model_current") {
        return;
    }
    let lab = build_lab();
    let r_name = lab.r.name.clone();
    let (br, vr1, vr2) = (
        lab.r.ifindex("br-lan"),
        lab.r.ifindex("vr1"),
        lab.r.ifindex("vr2"),
    );
    let h1_mac = topology::parse_mac(H1_MAC).unwrap();
    lab.r.block_on_in(move || async move {
        let ip = |cmd: &str| common::run("ip", &["netns", "exec", &r_name, "sh", "-c", cmd]);
        let mut sub = topology::subscribe().unwrap();
        let mut topo = Topology::dump(&sub.handle).await.unwrap();
        assert_eq!(topo.bridge_port_for(br, h1_mac), Ok((vr1, None)));

        // Link change: MTU.
        ip("ip link set vr1 mtu 1400");
        wait_for(&mut sub.events, &mut topo, "link", |e| {
            *e == TopologyEvent::Link(vr1)
        })
        .await;
        assert_eq!(topo.link(vr1).unwrap().mtu, 1400);

        // Route change.
        ip("ip route add 198.18.150.0/24 via 198.18.2.2");
        wait_for(&mut sub.events, &mut topo, "route", |e| {
            *e == TopologyEvent::Route
        })
        .await;

        // Neighbour change: h2's MAC replaced.
        ip("ip neigh replace 198.18.1.12 lladdr 02:00:00:00:01:99 dev br-lan nud permanent");
        let ev = wait_for(&mut sub.events, &mut topo, "neighbour", |e| {
            matches!(e, TopologyEvent::Neigh { .. })
        })
        .await;
        assert_eq!(
            ev,
            TopologyEvent::Neigh {
                ifindex: br,
                ip: "198.18.1.12".parse().unwrap(),
                mac: Some([2, 0, 0, 0, 1, 0x99]),
            }
        );

        // FDB move: h1's MAC now behind vr2 (a static entry replaces the learned one).
        ip(&format!(
            "bridge fdb replace {H1_MAC} dev vr2 master static"
        ));
        let ev = wait_for(
            &mut sub.events,
            &mut topo,
            "fdb",
            |e| matches!(e, TopologyEvent::Fdb { mac, .. } if *mac == h1_mac),
        )
        .await;
        assert_eq!(
            ev,
            TopologyEvent::Fdb {
                bridge: br,
                mac: h1_mac,
                port: Some(vr2)
            }
        );
        assert_eq!(topo.bridge_port_for(br, h1_mac), Ok((vr2, None)));

        // FDB delete.
        ip(&format!("bridge fdb del {H1_MAC} dev vr2 master"));
        wait_for(
            &mut sub.events,
            &mut topo,
            "fdb delete",
            |e| matches!(e, TopologyEvent::Fdb { mac, port: None, .. } if *mac == h1_mac),
        )
        .await;
        assert!(topo.bridge_port_for(br, h1_mac).is_err());

        // Address added, and a link going away.
        ip("ip addr add 198.18.9.1/32 dev br-lan");
        wait_for(&mut sub.events, &mut topo, "address", |e| {
            matches!(e, TopologyEvent::Addr { .. })
        })
        .await;
        assert!(topo.is_local("198.18.9.1".parse().unwrap()));
        ip("ip link del vr2");
        wait_for(&mut sub.events, &mut topo, "link delete", |e| {
            *e == TopologyEvent::Link(vr2)
        })
        .await;
        // Several notifications may concern vr2; wait until it is gone from the model.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while topo.link(vr2).is_some() {
            let ev = tokio::time::timeout_at(deadline, sub.events.next())
                .await
                .expect("vr2 still in the model after 5 s")
                .unwrap();
            topo.apply(&ev);
        }
    });
}

/// Whether `bridge -j vlan show` says `dev` sends VLAN `vid` untagged.
fn oracle_vlan_untagged(r: &Netns, dev: &str, vid: u64) -> bool {
    let v = r.json(&format!("bridge -j vlan show dev {dev}"));
    let entry = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["ifname"] == dev)
        .unwrap_or_else(|| panic!("no vlan entry for {dev}: {v}"));
    let vlan = entry["vlans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["vlan"].as_u64() == Some(vid))
        .unwrap_or_else(|| panic!("{dev} not in vlan {vid}: {v}"));
    vlan["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "Egress Untagged"))
}

#[test]
fn vlan_filtering_bridge_egress_tagging() {
    if !common::require_root("vlan_filtering_bridge_egress_tagging") {
        return;
    }
    let lab = build_lab();
    let r = &lab.r;
    if !r.try_sh("ip link set br-lan type bridge vlan_filtering 1") {
        // A kernel capability, not an installable prerequisite: the host kernel of these
        // machines lacks CONFIG_BRIDGE_VLAN_FILTERING; the VM kernel has it.
        eprintln!(
            "skipping vlan_filtering_bridge_egress_tagging: kernel without bridge VLAN filtering"
        );
        return;
    }
    // vr1 stays the untagged PVID member of VLAN 1; vr2 becomes a tagged member.
    r.sh("bridge vlan del dev vr2 vid 1 && bridge vlan add dev vr2 vid 1");
    r.sh(&format!(
        "bridge fdb replace {H2_MAC} dev vr2 master static vlan 1"
    ));
    lab.h1.sh("ping -c 1 -W 1 198.18.1.1 >/dev/null");
    let (vr1, vr2, br) = (r.ifindex("vr1"), r.ifindex("vr2"), r.ifindex("br-lan"));
    assert!(oracle_vlan_untagged(r, "vr1", 1));
    assert!(!oracle_vlan_untagged(r, "vr2", 1));
    assert_eq!(
        oracle_fdb_port(r, "br-lan", &topology::parse_mac(H1_MAC).unwrap()),
        "vr1"
    );
    let r_name = r.name.clone();
    r.block_on_in(move || async move {
        let mut sub = topology::subscribe().unwrap();
        let mut topo = Topology::dump(&sub.handle).await.unwrap();
        assert!(
            topo.link(br)
                .unwrap()
                .bridge
                .as_ref()
                .unwrap()
                .vlan_filtering
        );
        let q = |dst: &str| RouteQuery {
            dst: dst.parse().unwrap(),
            src: None,
            iif: None,
            mark: None,
        };
        let to_h1 = topo.resolve(&sub.handle, q("198.18.1.11")).await.unwrap();
        assert_eq!(to_h1.egress_ifindex, vr1);
        assert!(to_h1.encap.vlans.is_empty());
        let to_h2 = topo.resolve(&sub.handle, q("198.18.1.12")).await.unwrap();
        assert_eq!(to_h2.egress_ifindex, vr2);
        assert_eq!(to_h2.encap.vlans, vec![(topology::VlanProto::Dot1Q, 1)]);

        // vr1 turns into a tagged member: the AF_BRIDGE notification updates the model.
        common::run(
            "ip",
            &[
                "netns", "exec", &r_name, "bridge", "vlan", "add", "dev", "vr1", "vid", "1", "pvid",
            ],
        );
        let h1 = topology::parse_mac(H1_MAC).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while topo.bridge_port_for(br, h1) != Ok((vr1, Some(1))) {
            let ev = tokio::time::timeout_at(deadline, sub.events.next())
                .await
                .expect("vr1's VLAN change not seen within 5 s")
                .unwrap();
            topo.apply(&ev);
        }
    });
}

/// A background process of the test, killed (by its pid) when dropped.
struct Background(std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_in(ns: &Netns, args: &[&str], log: &std::path::Path) -> Background {
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    Background(
        std::process::Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(args)
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?}: {e}")),
    )
}

/// What pppd's PPPoE plugin logged: (session id, access concentrator MAC).
fn pppd_session(log: &std::path::Path) -> Option<(u16, [u8; 6])> {
    let text = std::fs::read_to_string(log).ok()?;
    let sid = text
        .lines()
        .find_map(|l| l.split("PPP session is ").nth(1))?
        .trim()
        .parse()
        .ok()?;
    let mac = text
        .lines()
        .find_map(|l| l.split("Connected to ").nth(1))?
        .split_whitespace()
        .next()?;
    Some((sid, topology::parse_mac(mac)?))
}

/// Real 802.1Q/802.1ad devices and two kernel-mode PPPoE sessions (pppd + pppoe-server): the
/// dump's VLAN kinds, QinQ, and each ppp unit tied to its own session through its pppd, with
/// the session id and peer MAC pppd logged as the oracle. Needs a kernel with 8021q and pppoe
/// (the VM kernel; the host kernel of these machines has neither, and the test then skips):
///
///     vng --run /boot/vmlinuz-6.12.*-amd64 --disable-kvm --user root --memory 2G --cpus 2 -- \
///         target/debug/deps/topology-<hash> kernel_vlan_qinq_and_pppoe --nocapture
#[test]
fn kernel_vlan_qinq_and_pppoe() {
    if !common::require_root("kernel_vlan_qinq_and_pppoe") {
        return;
    }
    let _ = std::process::Command::new("modprobe")
        .args(["-q", "-a", "8021q", "pppoe"])
        .status();
    let r = Netns::new("r");
    let i = Netns::new("i");
    r.sh(&format!(
        "ip link add wan0 type veth peer name i0 netns {} && \
         ip link set wan0 address 02:00:00:00:05:01 up",
        i.name
    ));
    if !r.try_sh("ip link add link wan0 name wan0.7 type vlan id 7")
        || !r.try_sh("test -e /proc/net/pppoe")
    {
        eprintln!("skipping kernel_vlan_qinq_and_pppoe: kernel without 8021q/pppoe (VM harness)");
        return;
    }
    for tool in ["pppd", "pppoe-server"] {
        if !r.try_sh(&format!("command -v {tool} >/dev/null")) {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{tool} missing (Debian packages ppp, pppoe)"
            );
            eprintln!("skipping kernel_vlan_qinq_and_pppoe: {tool} not installed");
            return;
        }
    }
    r.sh("ip link set wan0.7 up && \
          ip link add link wan0 name wan0.100 type vlan proto 802.1ad id 100 && \
          ip link add link wan0.100 name wan0.100.7 type vlan id 7 && \
          ip link set wan0.100 up && ip link set wan0.100.7 up");
    i.sh("ip link set i0 address 02:00:00:00:05:02 up && \
          ip link add link i0 name i0.7 type vlan id 7 && ip link set i0.7 up && \
          ip link add link i0 name i0.100 type vlan proto 802.1ad id 100 && \
          ip link add link i0.100 name i0.100.7 type vlan id 7 && \
          ip link set i0.100.7 address 02:00:00:00:05:03 && \
          ip link set i0.100 up && ip link set i0.100.7 up");

    let dir = std::env::temp_dir().join(format!("bqtopo-{}-ppp", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let opts = dir.join("server-options");
    std::fs::write(&opts, "noauth\nlcp-echo-interval 10\nlcp-echo-failure 3\n").unwrap();
    let opts = opts.to_str().unwrap().to_string();
    let mut procs = Vec::new();
    let mut logs = Vec::new();
    for (n, (srv_dev, cli_dev, unit)) in [
        ("i0.7", "wan0.7", "pppoe-wan"),
        ("i0.100.7", "wan0.100.7", "pppoe-wan2"),
    ]
    .into_iter()
    .enumerate()
    {
        let (local, remote) = (format!("198.18.5{n}.1"), format!("198.18.5{n}.2"));
        // Both servers would hand out session 1 first: the second one permutes its ids, so the
        // ids usually differ too.
        let mut server = vec![
            "pppoe-server",
            "-F",
            "-k",
            "-I",
            srv_dev,
            "-L",
            &local,
            "-R",
            &remote,
            "-N",
            "2",
            "-O",
            &opts,
        ];
        if n == 1 {
            server.push("-r");
        }
        procs.push(spawn_in(&i, &server, &dir.join(format!("server{n}.log"))));
        let log = dir.join(format!("pppd{n}.log"));
        procs.push(spawn_in(
            &r,
            &[
                "pppd",
                "plugin",
                "pppoe.so",
                &format!("nic-{cli_dev}"),
                "noauth",
                "nodetach",
                "ifname",
                unit,
                "mtu",
                "1492",
                "mru",
                "1492",
                "logfile",
                log.to_str().unwrap(),
            ],
            &dir.join(format!("pppd{n}.out")),
        ));
        logs.push(log);
    }
    // Both sessions up: each unit has its IPCP address (bounded wait; emulated VMs are slow).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(r.try_sh("ip -4 addr show dev pppoe-wan | grep -q 198.18.50.2")
        && r.try_sh("ip -4 addr show dev pppoe-wan2 | grep -q \"inet 198.18.51.\""))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "PPPoE sessions not up within 60 s: {}",
            r.sh("cat /proc/net/pppoe; ip -br addr")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let s1 = pppd_session(&logs[0]).expect("pppd log: session id and peer");
    let s2 = pppd_session(&logs[1]).expect("pppd log: session id and peer");
    // Session ids may coincide (two servers); the peers differ, and so do the devices.
    assert_ne!(s1.1, s2.1);
    r.sh("ip route add 198.18.60.0/24 dev pppoe-wan && ip route add 198.18.61.0/24 dev pppoe-wan2");
    let proc_text = r.sh("cat /proc/net/pppoe");
    let (wan0, wan0_7, wan0_100, wan0_100_7, ppp1, ppp2) = (
        r.ifindex("wan0"),
        r.ifindex("wan0.7"),
        r.ifindex("wan0.100"),
        r.ifindex("wan0.100.7"),
        r.ifindex("pppoe-wan"),
        r.ifindex("pppoe-wan2"),
    );
    let wan_mac = r.mac("wan0.7");
    r.block_on_in(move || async move {
        use topology::LinkKind;
        use topology::VlanProto::Dot1Ad;
        use topology::VlanProto::Dot1Q;
        let sub = topology::subscribe().unwrap();
        let topo = Topology::dump(&sub.handle).await.unwrap();
        let kind = |i| topo.link(i).unwrap().kind.clone();
        assert_eq!(
            kind(wan0_7),
            LinkKind::Vlan {
                id: 7,
                proto: Dot1Q
            }
        );
        assert_eq!(
            kind(wan0_100),
            LinkKind::Vlan {
                id: 100,
                proto: Dot1Ad
            }
        );
        assert_eq!(kind(ppp1), LinkKind::Ppp);
        let qinq = topo.lower_path(wan0_100_7).unwrap();
        assert_eq!(qinq.lowest_ifindex, wan0);
        assert_eq!(qinq.encap.vlans, vec![(Dot1Ad, 100), (Dot1Q, 7)]);

        for (unit, sess, vlans, net) in [
            (ppp1, s1, vec![(Dot1Q, 7)], "198.18.60.1"),
            (ppp2, s2, vec![(Dot1Ad, 100), (Dot1Q, 7)], "198.18.61.1"),
        ] {
            let path = topo
                .lower_path(unit)
                .unwrap_or_else(|e| panic!("{e}; /proc/net/pppoe:\n{proc_text}"));
            let pppoe = path.encap.pppoe.clone().unwrap();
            assert_eq!(pppoe.sid, sess.0, "/proc/net/pppoe:\n{proc_text}");
            assert_eq!(pppoe.peer_mac, sess.1);
            assert_eq!(pppoe.local_mac, wan_mac);
            assert_eq!(path.lowest_ifindex, wan0);
            assert_eq!(path.encap.vlans, vlans);
            assert_eq!(path.mtu, 1492);

            let nh = topo
                .resolve(
                    &sub.handle,
                    RouteQuery {
                        dst: net.parse().unwrap(),
                        src: None,
                        iif: None,
                        mark: None,
                    },
                )
                .await
                .unwrap();
            assert_eq!(nh.l3_ifindex, unit);
            assert_eq!(nh.egress_ifindex, wan0);
            assert_eq!(nh.dst_mac, sess.1);
            assert_eq!(nh.src_mac, wan_mac);
            assert_eq!(nh.gateway, None);
            assert_eq!(nh.neighbour, None);
            assert_eq!(nh.encap, path.encap);
        }
    });
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}

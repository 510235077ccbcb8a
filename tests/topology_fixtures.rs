//! Topology model and device walk on fixtures: no root, no kernel state. procfs/sysfs come from
//! fixture trees under tests/data/topology/ (the layout of `/`), `/proc/net/pppoe` texts in the
//! kernel's exact format.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bpfqos::topology;

use std::path::PathBuf;

use topology::pppoe::parse_proc_pppoe;
use topology::pppoe::session_for;
use topology::pppoe::ProcByteOrder;
use topology::BridgeConf;
use topology::BridgeVlan;
use topology::DsaPort;
use topology::DsaTagger;
use topology::FdbEntry;
use topology::HostFs;
use topology::L2Encap;
use topology::Link;
use topology::LinkKind;
use topology::PppoeSession;
use topology::Topology;
use topology::VlanProto;

const CONDUIT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const WAN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const LAN1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
const BR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const HOST_A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0a];
const HOST_B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0b];
const PEER: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/topology")
        .join(rel)
}

fn fs(rel: &str) -> HostFs {
    HostFs::at(data(rel))
}

fn text(rel: &str) -> String {
    std::fs::read_to_string(data(rel)).unwrap()
}

/// The wire sid 0x0c5e as the fixtures (captured on a little-endian kernel) carry it, read by
/// this machine's native parser: what a router of this byte order would report for that text.
fn native_sid_of_le_fixture() -> u16 {
    if cfg!(target_endian = "little") {
        0x0c5e
    } else {
        0x5e0c
    }
}

/// A DSA switch behind conduit eth0 (ifindex 2): lan1 (p1), lan2 (p2), wan (p4), as a dump of
/// a mt7622/qca8k/gswip router reports them (plain Ethernet links whose IFLA_LINK is the
/// conduit and whose phys_port_name is "p<N>").
fn dsa_links() -> Vec<Link> {
    vec![
        Link::new(1, "lo", LinkKind::Other("loopback".into())).with_mtu(65536),
        Link::new(2, "eth0", LinkKind::Ethernet)
            .with_mtu(1504)
            .with_mac(CONDUIT_MAC),
        Link::new(3, "lan1", LinkKind::Ethernet)
            .with_lower(2)
            .with_phys_port_name("p1")
            .with_mac(LAN1_MAC),
        Link::new(4, "lan2", LinkKind::Ethernet)
            .with_lower(2)
            .with_phys_port_name("p2")
            .with_mac(LAN1_MAC),
        Link::new(5, "wan", LinkKind::Ethernet)
            .with_lower(2)
            .with_phys_port_name("p4")
            .with_mac(WAN_MAC),
    ]
}

#[test]
fn dsa_user_ports_are_recognised_for_each_tagger() {
    for (dir, tagger) in [
        ("fs-dsa-mtk", DsaTagger::Mtk),
        ("fs-dsa-qca", DsaTagger::Qca),
        ("fs-dsa-gswip", DsaTagger::Gswip),
        ("fs-dsa-ocelot", DsaTagger::Other("ocelot".into())),
    ] {
        let topo = Topology::from_parts_in(dsa_links(), vec![], fs(dir));
        assert_eq!(
            topo.link(3).unwrap().kind,
            LinkKind::DsaUser {
                conduit: 2,
                port: 1
            },
            "{dir}"
        );
        assert_eq!(topo.link(2).unwrap().dsa_tagger, Some(tagger.clone()));
        // The conduit itself stays a plain Ethernet device.
        assert_eq!(topo.link(2).unwrap().kind, LinkKind::Ethernet);

        let path = topo.lower_path(5).unwrap();
        assert_eq!(path.lowest_ifindex, 2, "{dir}");
        assert_eq!(
            path.encap,
            L2Encap {
                vlans: vec![],
                pppoe: None,
                dsa: Some(DsaPort { tagger, port: 4 }),
            }
        );
        // The user port's MTU bounds the path; DSA sizes the conduit (1504) for its tag.
        assert_eq!(path.mtu, 1500);
        assert_eq!(path.devices, vec![5, 2]);
        assert_eq!(path.src_mac, Some(WAN_MAC));
        assert_eq!(path.dst_mac, None);
    }
}

#[test]
fn without_sysfs_dsa_evidence_a_lower_link_is_not_a_dsa_port() {
    // No dsa/tagging for eth0: lan1 stays Ethernet and is its own lowest device.
    let topo = Topology::from_parts_in(dsa_links(), vec![], fs("fs-pppoe-samedev"));
    assert_eq!(topo.link(3).unwrap().kind, LinkKind::Ethernet);
    assert_eq!(topo.lower_path(3).unwrap().lowest_ifindex, 3);
}

#[test]
fn dsa_port_without_port_name_is_unsupported() {
    let mut links = dsa_links();
    links[2].phys_port_name = None;
    let topo = Topology::from_parts_in(links, vec![], fs("fs-dsa-mtk"));
    let err = topo.lower_path(3).unwrap_err();
    assert!(err.0.contains("dsa"), "{err}");
}

#[test]
fn vlan_on_a_dsa_user_port() {
    let mut links = dsa_links();
    links.push(
        Link::new(
            10,
            "lan1.20",
            LinkKind::Vlan {
                id: 20,
                proto: VlanProto::Dot1Q,
            },
        )
        .with_lower(3)
        .with_mac(LAN1_MAC),
    );
    let topo = Topology::from_parts_in(links, vec![], fs("fs-dsa-qca"));
    let path = topo.lower_path(10).unwrap();
    assert_eq!(path.lowest_ifindex, 2);
    assert_eq!(path.encap.vlans, vec![(VlanProto::Dot1Q, 20)]);
    assert_eq!(
        path.encap.dsa,
        Some(DsaPort {
            tagger: DsaTagger::Qca,
            port: 1
        })
    );
    assert_eq!(path.devices, vec![10, 3, 2]);
}

#[test]
fn qinq_gives_two_tags_outermost_first() {
    let links = vec![
        Link::new(2, "eth1", LinkKind::Ethernet).with_mac(WAN_MAC),
        Link::new(
            3,
            "eth1.100",
            LinkKind::Vlan {
                id: 100,
                proto: VlanProto::Dot1Ad,
            },
        )
        .with_lower(2)
        .with_mac(WAN_MAC),
        Link::new(
            4,
            "eth1.100.7",
            LinkKind::Vlan {
                id: 7,
                proto: VlanProto::Dot1Q,
            },
        )
        .with_lower(3)
        .with_mtu(1496)
        .with_mac(WAN_MAC),
    ];
    let topo = Topology::from_parts_in(links.clone(), vec![], fs("fs-dsa-mtk"));
    let path = topo.lower_path(4).unwrap();
    assert_eq!(path.lowest_ifindex, 2);
    assert_eq!(
        path.encap.vlans,
        vec![(VlanProto::Dot1Ad, 100), (VlanProto::Dot1Q, 7)]
    );
    assert_eq!(path.mtu, 1496);

    // A third tag is more than the data path parses.
    let mut three = links;
    three.push(
        Link::new(
            5,
            "eth1.100.7.9",
            LinkKind::Vlan {
                id: 9,
                proto: VlanProto::Dot1Q,
            },
        )
        .with_lower(4),
    );
    let topo = Topology::from_parts_in(three, vec![], fs("fs-dsa-mtk"));
    assert!(topo.lower_path(5).unwrap_err().0.contains("VLAN tags"));
}

/// pppoe-wan (ppp, 1492) over wan.7 over DSA user port wan (p4) on conduit eth0.
fn pppoe_links() -> Vec<Link> {
    let mut links = dsa_links();
    links.push(
        Link::new(
            20,
            "wan.7",
            LinkKind::Vlan {
                id: 7,
                proto: VlanProto::Dot1Q,
            },
        )
        .with_lower(5)
        .with_mac(WAN_MAC),
    );
    links.push(Link::new(21, "pppoe-wan", LinkKind::Ppp).with_mtu(1492));
    links
}

#[test]
fn pppoe_over_vlan_over_dsa_single_session() {
    let topo = Topology::from_parts_in(pppoe_links(), vec![], fs("fs-pppoe-single"));
    let path = topo.lower_path(21).unwrap();
    assert_eq!(path.lowest_ifindex, 2);
    assert_eq!(
        path.encap,
        L2Encap {
            vlans: vec![(VlanProto::Dot1Q, 7)],
            pppoe: Some(PppoeSession {
                sid: native_sid_of_le_fixture(),
                peer_mac: PEER,
                local_mac: WAN_MAC,
            }),
            dsa: Some(DsaPort {
                tagger: DsaTagger::Mtk,
                port: 4
            }),
        }
    );
    // Frames are built by the session's Ethernet device, to the access concentrator.
    assert_eq!(path.src_mac, Some(WAN_MAC));
    assert_eq!(path.dst_mac, Some(PEER));
    assert_eq!(path.mtu, 1492);
    assert_eq!(path.devices, vec![21, 20, 5, 2]);
}

#[test]
fn pppoe_mtu_is_the_ethernet_mtu_less_the_session_header() {
    // The ppp unit claims 1500 but wan.7 carries 1500-byte Ethernet payloads: 1492 for IP.
    let mut links = pppoe_links();
    links.last_mut().unwrap().mtu = 1500;
    let topo = Topology::from_parts_in(links, vec![], fs("fs-pppoe-single"));
    assert_eq!(topo.lower_path(21).unwrap().mtu, 1492);
}

#[test]
fn pppoe_multi_session_is_matched_through_pppd() {
    let mut links = pppoe_links();
    links.push(Link::new(30, "eth1", LinkKind::Ethernet).with_mac(HOST_B));
    links.push(Link::new(31, "pppoe-wan2", LinkKind::Ppp).with_mtu(1492));
    links.push(Link::new(32, "pppoe-wan3", LinkKind::Ppp).with_mtu(1492));
    let topo = Topology::from_parts_in(links, vec![], fs("fs-pppoe-multi"));

    let wan = topo.lower_path(21).unwrap();
    assert_eq!(
        wan.encap.pppoe.as_ref().unwrap().sid,
        native_sid_of_le_fixture()
    );
    assert_eq!(wan.encap.pppoe.as_ref().unwrap().peer_mac, PEER);
    assert_eq!(wan.lowest_ifindex, 2);

    let wan2 = topo.lower_path(31).unwrap();
    let s = wan2.encap.pppoe.unwrap();
    assert_eq!(s.peer_mac, [0x00, 0x1b, 0x21, 0x0a, 0x0b, 0x0d]);
    assert_eq!(s.local_mac, HOST_B);
    assert_eq!(wan2.lowest_ifindex, 30);
    assert!(wan2.encap.vlans.is_empty());
    assert!(wan2.encap.dsa.is_none());

    // No pppd owns pppoe-wan3 (the logread line only mentions it): refuse, do not guess.
    let err = topo.lower_path(32).unwrap_err();
    assert!(err.0.contains("2 PPPoE sessions"), "{err}");
}

#[test]
fn pppoe_sessions_on_one_device_cannot_be_told_apart() {
    let links = vec![
        Link::new(30, "eth1", LinkKind::Ethernet).with_mac(HOST_B),
        Link::new(31, "pppoe-a", LinkKind::Ppp).with_mtu(1492),
    ];
    let topo = Topology::from_parts_in(links, vec![], fs("fs-pppoe-samedev"));
    assert!(topo.lower_path(31).is_err());
}

#[test]
fn ppp_without_a_kernel_session_is_unsupported() {
    let links = vec![Link::new(31, "ppp0", LinkKind::Ppp).with_mtu(1492)];
    // No proc/net/pppoe at all under this root (pppoe module not loaded).
    let topo = Topology::from_parts_in(links, vec![], fs("fs-dsa-mtk"));
    let err = topo.lower_path(31).unwrap_err();
    assert!(err.0.contains("no kernel PPPoE session"), "{err}");
}

#[test]
fn proc_net_pppoe_parsing_follows_the_printing_byte_order() {
    let le =
        parse_proc_pppoe(&text("proc-net-pppoe/single-le.txt"), ProcByteOrder::Little).unwrap();
    let be = parse_proc_pppoe(&text("proc-net-pppoe/single-be.txt"), ProcByteOrder::Big).unwrap();
    assert_eq!(le, be);
    assert_eq!(le.len(), 1);
    assert_eq!(le[0].sid, 0x0c5e);
    assert_eq!(le[0].peer_mac, PEER);
    assert_eq!(le[0].device, "wan.7");

    let multi =
        parse_proc_pppoe(&text("proc-net-pppoe/multi-le.txt"), ProcByteOrder::Little).unwrap();
    assert_eq!(multi.len(), 2);
    assert_eq!(multi[0].sid, 1);
    assert_eq!(multi[0].peer_mac, [0x00, 0x1b, 0x21, 0x0a, 0x0b, 0x0c]);
    assert_eq!(multi[1].sid, 2);
    assert_eq!(multi[1].device, "eth1.100");

    assert!(
        parse_proc_pppoe(&text("proc-net-pppoe/empty.txt"), ProcByteOrder::Native)
            .unwrap()
            .is_empty()
    );
    assert!(parse_proc_pppoe(&text("proc-net-pppoe/bad-sid.txt"), ProcByteOrder::Native).is_err());
    assert!(parse_proc_pppoe(&text("proc-net-pppoe/bad-mac.txt"), ProcByteOrder::Native).is_err());
}

#[test]
fn session_for_filters_sessions_on_unknown_devices() {
    // Of the two sessions only eth1's device exists: it is the one.
    let s = session_for(&fs("fs-pppoe-multi"), "pppoe-x", |d| d == "eth1").unwrap();
    assert_eq!(s.device, "eth1");
}

/// br-lan (10) with ports lan1 (DSA p1), lan2 (DSA p2) and a veth; vlan filtering optional.
fn bridge_links(filtering: bool) -> Vec<Link> {
    let mut links = dsa_links();
    links.push(
        Link::new(10, "br-lan", LinkKind::Bridge)
            .with_mac(BR_MAC)
            .with_bridge(BridgeConf {
                vlan_filtering: filtering,
                ..BridgeConf::default()
            })
            .with_vlans(if filtering {
                vec![BridgeVlan {
                    vid: 1,
                    pvid: true,
                    untagged: true,
                }]
            } else {
                vec![]
            }),
    );
    links.push(
        Link::new(11, "veth-lan", LinkKind::Veth)
            .with_master(10)
            .with_mtu(1400)
            .with_mac(HOST_B),
    );
    for l in links
        .iter_mut()
        .filter(|l| l.ifindex == 3 || l.ifindex == 4)
    {
        l.master = Some(10);
    }
    if filtering {
        for l in links.iter_mut() {
            match l.ifindex {
                // lan1: untagged member of VLAN 1 (PVID) and tagged member of VLAN 30.
                3 => {
                    l.vlans = vec![
                        BridgeVlan {
                            vid: 1,
                            pvid: true,
                            untagged: true,
                        },
                        BridgeVlan {
                            vid: 30,
                            pvid: false,
                            untagged: false,
                        },
                    ]
                }
                // lan2: tagged member of VLAN 1 only.
                4 => {
                    l.vlans = vec![BridgeVlan {
                        vid: 1,
                        pvid: false,
                        untagged: false,
                    }]
                }
                // veth-lan: only VLAN 30.
                11 => {
                    l.vlans = vec![BridgeVlan {
                        vid: 30,
                        pvid: true,
                        untagged: true,
                    }]
                }
                _ => {}
            }
        }
    }
    links
}

#[test]
fn bridge_port_from_the_fdb() {
    let topo = Topology::from_parts_in(bridge_links(false), vec![], fs("fs-dsa-mtk")).with_fdb([
        FdbEntry {
            bridge: 10,
            port: 3,
            mac: HOST_A,
            vlan: None,
        },
        FdbEntry {
            bridge: 10,
            port: 11,
            mac: HOST_B,
            vlan: None,
        },
        // The bridge's own address.
        FdbEntry {
            bridge: 10,
            port: 10,
            mac: BR_MAC,
            vlan: None,
        },
    ]);
    assert_eq!(topo.bridge_port_for(10, HOST_A), Ok((3, None)));
    assert_eq!(topo.bridge_port_for(10, HOST_B), Ok((11, None)));
    assert!(topo.bridge_port_for(10, BR_MAC).is_err());
    assert!(topo.bridge_port_for(10, [0x02, 9, 9, 9, 9, 9]).is_err());

    // Crossing the bridge: to HOST_A via lan1 (DSA p1 on eth0), source MAC is the bridge's.
    let path = topo.egress_path(10, Some(HOST_A)).unwrap();
    assert_eq!(path.lowest_ifindex, 2);
    assert_eq!(path.devices, vec![10, 3, 2]);
    assert_eq!(path.src_mac, Some(BR_MAC));
    assert_eq!(
        path.encap.dsa,
        Some(DsaPort {
            tagger: DsaTagger::Mtk,
            port: 1
        })
    );
    assert!(path.encap.vlans.is_empty());

    // To HOST_B via the veth: the port's smaller MTU is the path's.
    let path = topo.egress_path(10, Some(HOST_B)).unwrap();
    assert_eq!(path.lowest_ifindex, 11);
    assert_eq!(path.mtu, 1400);

    // Without a destination MAC the bridge cannot be crossed.
    assert!(topo.lower_path(10).is_err());
    // Attach points of the bridge: the conduit (for lan1, lan2) and the veth.
    assert_eq!(topo.attach_points(10), vec![2, 11]);
}

#[test]
fn vlan_filtering_bridge_egress_untagged_tagged_and_not_a_member() {
    let mut links = bridge_links(true);
    links.push(
        Link::new(
            12,
            "br-lan.30",
            LinkKind::Vlan {
                id: 30,
                proto: VlanProto::Dot1Q,
            },
        )
        .with_lower(10)
        .with_mac(BR_MAC),
    );
    let topo = Topology::from_parts_in(links, vec![], fs("fs-dsa-gswip")).with_fdb([
        FdbEntry {
            bridge: 10,
            port: 3,
            mac: HOST_A,
            vlan: Some(1),
        },
        FdbEntry {
            bridge: 10,
            port: 4,
            mac: HOST_B,
            vlan: Some(1),
        },
        FdbEntry {
            bridge: 10,
            port: 3,
            mac: HOST_A,
            vlan: Some(30),
        },
        FdbEntry {
            bridge: 10,
            port: 11,
            mac: HOST_B,
            vlan: Some(30),
        },
    ]);
    // Bridge device frames are in its PVID 1: lan1 untagged, lan2 tagged.
    assert_eq!(topo.bridge_port_for(10, HOST_A), Ok((3, None)));
    assert_eq!(topo.bridge_port_for(10, HOST_B), Ok((4, Some(1))));
    let p = topo.egress_path(10, Some(HOST_B)).unwrap();
    assert_eq!(p.encap.vlans, vec![(VlanProto::Dot1Q, 1)]);
    assert_eq!(p.encap.dsa.unwrap().port, 2);

    // br-lan.30: the tag is the bridge VLAN; lan1 is a tagged member of 30, veth untagged.
    let p = topo.egress_path(12, Some(HOST_A)).unwrap();
    assert_eq!(p.lowest_ifindex, 2);
    assert_eq!(p.encap.vlans, vec![(VlanProto::Dot1Q, 30)]);
    assert_eq!(p.devices, vec![12, 10, 3, 2]);
    let p = topo.egress_path(12, Some(HOST_B)).unwrap();
    assert_eq!(p.lowest_ifindex, 11);
    assert!(p.encap.vlans.is_empty());

    // An FDB entry on a port that is not in the VLAN: refused.
    let topo = topo.with_fdb([FdbEntry {
        bridge: 10,
        port: 4,
        mac: [0x02, 7, 7, 7, 7, 7],
        vlan: Some(30),
    }]);
    assert!(topo
        .egress_path(12, Some([0x02, 7, 7, 7, 7, 7]))
        .unwrap_err()
        .0
        .contains("not a member"));
}

#[test]
fn vlan_over_a_non_filtering_bridge_keeps_its_tag() {
    let mut links = bridge_links(false);
    links.push(
        Link::new(
            12,
            "br-lan.5",
            LinkKind::Vlan {
                id: 5,
                proto: VlanProto::Dot1Q,
            },
        )
        .with_lower(10)
        .with_mac(BR_MAC),
    );
    let topo = Topology::from_parts_in(links, vec![], fs("fs-dsa-mtk")).with_fdb([FdbEntry {
        bridge: 10,
        port: 3,
        mac: HOST_A,
        vlan: None,
    }]);
    let p = topo.egress_path(12, Some(HOST_A)).unwrap();
    assert_eq!(p.encap.vlans, vec![(VlanProto::Dot1Q, 5)]);
    assert_eq!(p.encap.dsa.unwrap().port, 1);
}

#[test]
fn mtu_is_the_minimum_along_the_path() {
    let links = vec![
        Link::new(2, "eth1", LinkKind::Ethernet)
            .with_mtu(1480)
            .with_mac(WAN_MAC),
        Link::new(
            3,
            "eth1.10",
            LinkKind::Vlan {
                id: 10,
                proto: VlanProto::Dot1Q,
            },
        )
        .with_lower(2)
        .with_mtu(1500)
        .with_mac(WAN_MAC),
    ];
    let topo = Topology::from_parts(links, vec![]);
    assert_eq!(topo.lower_path(3).unwrap().mtu, 1480);
}

#[test]
fn unsupported_kinds_and_states_are_refused_with_a_reason() {
    let links = vec![
        Link::new(1, "lo", LinkKind::Other("loopback".into())),
        Link::new(2, "wg0", LinkKind::Other("wireguard".into())),
        Link::new(3, "gre1", LinkKind::Other("gre".into())),
        Link::new(4, "eth1", LinkKind::Ethernet).with_state(true, false),
        Link::new(
            5,
            "eth1.9",
            LinkKind::Vlan {
                id: 9,
                proto: VlanProto::Dot1Q,
            },
        )
        .with_lower(4),
        // A VLAN whose parent is not in the model.
        Link::new(
            6,
            "orphan.3",
            LinkKind::Vlan {
                id: 3,
                proto: VlanProto::Dot1Q,
            },
        )
        .with_lower(99),
    ];
    let topo = Topology::from_parts(links, vec![]);
    assert!(topo.lower_path(1).unwrap_err().0.contains("loopback"));
    assert!(topo.lower_path(2).unwrap_err().0.contains("wireguard"));
    assert!(topo.lower_path(3).unwrap_err().0.contains("gre"));
    assert!(topo.lower_path(5).unwrap_err().0.contains("down"));
    assert!(topo.lower_path(6).unwrap_err().0.contains("lower device"));
    assert!(topo.lower_path(42).is_err());
    assert!(topo.attach_points(2).is_empty());
}

#[test]
fn local_addresses_are_recognised() {
    let topo = Topology::from_parts(
        vec![Link::new(2, "eth1", LinkKind::Ethernet)],
        vec![topology::Address {
            ifindex: 2,
            ip: "198.18.0.1".parse().unwrap(),
            prefix_len: 24,
        }],
    );
    assert!(topo.is_local("198.18.0.1".parse().unwrap()));
    assert!(topo.is_local("::1".parse().unwrap()));
    assert!(!topo.is_local("198.18.0.2".parse().unwrap()));
}

/// Netlink notifications as the kernel sends them, applied to the model.
mod notifications {
    use netlink_packet_route::address::AddressAttribute;
    use netlink_packet_route::address::AddressMessage;
    use netlink_packet_route::link::AfSpecBridge;
    use netlink_packet_route::link::BridgeVlanInfo;
    use netlink_packet_route::link::BridgeVlanInfoFlags;
    use netlink_packet_route::link::InfoData;
    use netlink_packet_route::link::InfoDsa;
    use netlink_packet_route::link::InfoKind;
    use netlink_packet_route::link::InfoVlan;
    use netlink_packet_route::link::LinkAttribute;
    use netlink_packet_route::link::LinkFlags;
    use netlink_packet_route::link::LinkInfo;
    use netlink_packet_route::link::LinkLayerType;
    use netlink_packet_route::link::LinkMessage;
    use netlink_packet_route::link::VlanProtocol;
    use netlink_packet_route::neighbour::NeighbourAddress;
    use netlink_packet_route::neighbour::NeighbourAttribute;
    use netlink_packet_route::neighbour::NeighbourMessage;
    use netlink_packet_route::neighbour::NeighbourState;
    use netlink_packet_route::AddressFamily;
    use netlink_packet_route::RouteNetlinkMessage;

    use super::fs;
    use super::topology::BridgeVlan;
    use super::topology::DsaTagger;
    use super::topology::LinkKind;
    use super::topology::NetlinkEvent;
    use super::topology::Topology;
    use super::topology::TopologyEvent;
    use super::topology::VlanProto;
    use super::HOST_A;

    fn link(index: u32, name: &str, attrs: Vec<LinkAttribute>) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.link_layer_type = LinkLayerType::Ether;
        m.header.flags = LinkFlags::Up | LinkFlags::Running;
        m.attributes = vec![
            LinkAttribute::IfName(name.into()),
            LinkAttribute::Mtu(1500),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, index as u8]),
        ];
        m.attributes.extend(attrs);
        m
    }

    fn kind(k: InfoKind, data: Option<InfoData>) -> LinkAttribute {
        let mut infos = vec![LinkInfo::Kind(k)];
        infos.extend(data.map(LinkInfo::Data));
        LinkAttribute::LinkInfo(infos)
    }

    fn new_link(m: LinkMessage) -> NetlinkEvent {
        NetlinkEvent::Message(RouteNetlinkMessage::NewLink(m))
    }

    fn apply_all(topo: &mut Topology, events: Vec<NetlinkEvent>) {
        for e in events {
            topo.apply(&e);
        }
    }

    #[test]
    fn link_kinds_from_rtnetlink() {
        let mut topo = Topology::from_parts_in(vec![], vec![], fs("fs-dsa-mtk"));
        let mut ppp = link(8, "ppp0", vec![]);
        ppp.header.link_layer_type = LinkLayerType::Ppp;
        let mut veth = link(
            9,
            "veth0",
            vec![
                kind(InfoKind::Veth, None),
                LinkAttribute::Link(3),
                LinkAttribute::LinkNetNsId(0),
            ],
        );
        veth.header.flags = LinkFlags::empty();
        let mut lo = link(1, "lo", vec![]);
        lo.header.link_layer_type = LinkLayerType::Loopback;
        apply_all(
            &mut topo,
            vec![
                new_link(lo),
                // The user port before its conduit, as a dump may order them.
                new_link(link(
                    3,
                    "lan1",
                    vec![
                        LinkAttribute::Link(2),
                        LinkAttribute::PhysPortName("p1".into()),
                    ],
                )),
                new_link(link(2, "eth0", vec![LinkAttribute::Link(2)])),
                // Kernels with the "dsa" rtnl kind name the conduit explicitly.
                new_link(link(
                    4,
                    "lan2",
                    vec![
                        kind(
                            InfoKind::Dsa,
                            Some(InfoData::Dsa(vec![InfoDsa::Conduit(2)])),
                        ),
                        LinkAttribute::Link(2),
                        LinkAttribute::PhysPortName("p2".into()),
                    ],
                )),
                new_link(link(
                    5,
                    "lan1.100",
                    vec![
                        kind(
                            InfoKind::Vlan,
                            Some(InfoData::Vlan(vec![
                                InfoVlan::Id(100),
                                InfoVlan::Protocol(VlanProtocol::Ieee8021Ad),
                            ])),
                        ),
                        LinkAttribute::Link(3),
                    ],
                )),
                new_link(link(6, "br-lan", vec![kind(InfoKind::Bridge, None)])),
                new_link(link(7, "wg0", vec![kind(InfoKind::Wireguard, None)])),
                new_link(ppp),
                new_link(veth),
            ],
        );
        let k = |i| topo.link(i).unwrap().kind.clone();
        assert_eq!(k(1), LinkKind::Other("loopback".into()));
        assert_eq!(k(2), LinkKind::Ethernet);
        assert_eq!(topo.link(2).unwrap().lower, None, "IFLA_LINK to itself");
        assert_eq!(topo.link(2).unwrap().dsa_tagger, Some(DsaTagger::Mtk));
        assert_eq!(
            k(3),
            LinkKind::DsaUser {
                conduit: 2,
                port: 1
            }
        );
        assert_eq!(
            k(4),
            LinkKind::DsaUser {
                conduit: 2,
                port: 2
            }
        );
        assert_eq!(
            k(5),
            LinkKind::Vlan {
                id: 100,
                proto: VlanProto::Dot1Ad
            }
        );
        assert_eq!(topo.link(5).unwrap().lower, Some(3));
        assert_eq!(k(6), LinkKind::Bridge);
        assert_eq!(k(7), LinkKind::Other("wireguard".into()));
        assert_eq!(k(8), LinkKind::Ppp);
        assert_eq!(k(9), LinkKind::Veth);
        let veth = topo.link(9).unwrap();
        assert_eq!(
            veth.lower, None,
            "a peer in another namespace is no lower device"
        );
        assert!(!veth.admin_up);
        assert_eq!(veth.mac, Some([2, 0, 0, 0, 0, 9]));

        let p = topo.lower_path(5).unwrap();
        assert_eq!(p.lowest_ifindex, 2);
        assert_eq!(p.encap.vlans, vec![(VlanProto::Dot1Ad, 100)]);
        assert_eq!(p.encap.dsa.unwrap().port, 1);
    }

    fn fdb(
        port: u32,
        master: u32,
        mac: [u8; 6],
        vlan: Option<u16>,
        state: NeighbourState,
    ) -> NeighbourMessage {
        let mut n = NeighbourMessage::default();
        n.header.family = AddressFamily::Bridge;
        n.header.ifindex = port;
        n.header.state = state;
        n.attributes = vec![
            NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
            NeighbourAttribute::Controller(master),
        ];
        n.attributes.extend(vlan.map(NeighbourAttribute::Vlan));
        n
    }

    #[test]
    fn bridge_vlans_and_fdb_from_notifications() {
        let mut topo = Topology::from_parts_in(vec![], vec![], fs("fs-dsa-mtk"));
        let port = |i, name: &str| {
            new_link(link(
                i,
                name,
                vec![kind(InfoKind::Veth, None), LinkAttribute::Controller(10)],
            ))
        };
        apply_all(
            &mut topo,
            vec![
                new_link(link(10, "br0", vec![kind(InfoKind::Bridge, None)])),
                port(11, "p1"),
                port(12, "p2"),
            ],
        );
        // AF_BRIDGE RTM_NEWLINK, compressed: 1 PVID untagged, 20..=22 tagged.
        let mut br = LinkMessage::default();
        br.header.interface_family = AddressFamily::Bridge;
        br.header.index = 11;
        let vi = |flags, vid| AfSpecBridge::VlanInfo(BridgeVlanInfo { flags, vid });
        br.attributes = vec![LinkAttribute::AfSpecBridge(vec![
            vi(BridgeVlanInfoFlags::Pvid | BridgeVlanInfoFlags::Untagged, 1),
            vi(BridgeVlanInfoFlags::RangeBegin, 20),
            vi(BridgeVlanInfoFlags::RangeEnd, 22),
        ])];
        let ev = topo.apply(&new_link(br));
        assert_eq!(ev, Some(TopologyEvent::Link(11)));
        let vids: Vec<BridgeVlan> = topo.link(11).unwrap().vlans.clone();
        assert_eq!(vids.len(), 4);
        assert!(vids[0].pvid && vids[0].untagged && vids[0].vid == 1);
        assert_eq!(
            vids[1..]
                .iter()
                .map(|v| (v.vid, v.untagged))
                .collect::<Vec<_>>(),
            vec![(20, false), (21, false), (22, false)]
        );
        // A later AF_UNSPEC notification for the port keeps its bridge VLANs.
        topo.apply(&port(11, "p1"));
        assert_eq!(topo.link(11).unwrap().vlans.len(), 4);

        // FDB: learned on p1, moved to p2, deleted.
        let ev = topo.apply(&NetlinkEvent::Message(RouteNetlinkMessage::NewNeighbour(
            fdb(11, 10, HOST_A, None, NeighbourState::Reachable),
        )));
        assert_eq!(
            ev,
            Some(TopologyEvent::Fdb {
                bridge: 10,
                mac: HOST_A,
                port: Some(11)
            })
        );
        assert_eq!(topo.bridge_port_for(10, HOST_A), Ok((11, None)));
        topo.apply(&NetlinkEvent::Message(RouteNetlinkMessage::NewNeighbour(
            fdb(12, 10, HOST_A, None, NeighbourState::Reachable),
        )));
        assert_eq!(topo.bridge_port_for(10, HOST_A), Ok((12, None)));
        let ev = topo.apply(&NetlinkEvent::Message(RouteNetlinkMessage::DelNeighbour(
            fdb(12, 10, HOST_A, None, NeighbourState::Reachable),
        )));
        assert_eq!(
            ev,
            Some(TopologyEvent::Fdb {
                bridge: 10,
                mac: HOST_A,
                port: None
            })
        );
        assert!(topo.bridge_port_for(10, HOST_A).is_err());

        // A device's own unicast list (no NDA_MASTER) is not the bridge's FDB.
        let mut own = fdb(11, 10, HOST_A, None, NeighbourState::Permanent);
        own.attributes
            .retain(|a| !matches!(a, NeighbourAttribute::Controller(_)));
        topo.apply(&NetlinkEvent::Message(RouteNetlinkMessage::NewNeighbour(
            own,
        )));
        assert!(topo.bridge_port_for(10, HOST_A).is_err());

        // Deleting a port forgets what was behind it.
        topo.apply(&NetlinkEvent::Message(RouteNetlinkMessage::NewNeighbour(
            fdb(12, 10, HOST_A, None, NeighbourState::Reachable),
        )));
        let mut del = LinkMessage::default();
        del.header.index = 12;
        let ev = topo.apply(&NetlinkEvent::Message(RouteNetlinkMessage::DelLink(del)));
        assert_eq!(ev, Some(TopologyEvent::Link(12)));
        assert!(topo.link(12).is_none());
        assert!(topo.fdb_entries(10).is_empty());
    }

    fn neigh(state: NeighbourState, mac: Option<[u8; 6]>) -> NeighbourMessage {
        let mut n = NeighbourMessage::default();
        n.header.family = AddressFamily::Inet;
        n.header.ifindex = 4;
        n.header.state = state;
        n.attributes = vec![NeighbourAttribute::Destination(NeighbourAddress::Inet(
            "198.18.2.2".parse().unwrap(),
        ))];
        n.attributes
            .extend(mac.map(|m| NeighbourAttribute::LinkLayerAddress(m.to_vec())));
        n
    }

    #[test]
    fn neighbour_states_route_and_address_events() {
        let ip = "198.18.2.2".parse().unwrap();
        let classify = |m| NetlinkEvent::Message(m).classify();
        for (state, usable) in [
            (NeighbourState::Reachable, true),
            (NeighbourState::Stale, true),
            (NeighbourState::Delay, true),
            (NeighbourState::Probe, true),
            (NeighbourState::Permanent, true),
            (NeighbourState::Noarp, true),
            (NeighbourState::Incomplete, false),
            (NeighbourState::Failed, false),
            (NeighbourState::None, false),
        ] {
            let ev = classify(RouteNetlinkMessage::NewNeighbour(neigh(
                state,
                Some(HOST_A),
            )));
            assert_eq!(
                ev,
                Some(TopologyEvent::Neigh {
                    ifindex: 4,
                    ip,
                    mac: usable.then_some(HOST_A)
                }),
                "{state:?}"
            );
        }
        // NOARP without an address (e.g. on a point-to-point device) gives no MAC.
        assert_eq!(
            classify(RouteNetlinkMessage::NewNeighbour(neigh(
                NeighbourState::Noarp,
                None
            ))),
            Some(TopologyEvent::Neigh {
                ifindex: 4,
                ip,
                mac: None
            })
        );
        assert_eq!(
            classify(RouteNetlinkMessage::DelNeighbour(neigh(
                NeighbourState::Reachable,
                Some(HOST_A)
            ))),
            Some(TopologyEvent::Neigh {
                ifindex: 4,
                ip,
                mac: None
            })
        );
        assert_eq!(
            classify(RouteNetlinkMessage::NewRoute(Default::default())),
            Some(TopologyEvent::Route)
        );
        assert_eq!(
            classify(RouteNetlinkMessage::DelRule(Default::default())),
            Some(TopologyEvent::Route)
        );
        assert_eq!(
            NetlinkEvent::Overrun.classify(),
            Some(TopologyEvent::Resync)
        );

        // Addresses: IFA_LOCAL is the router's own on point-to-point links.
        let mut topo = Topology::from_parts(vec![], vec![]);
        let mut a = AddressMessage::default();
        a.header.family = AddressFamily::Inet;
        a.header.index = 7;
        a.header.prefix_len = 32;
        a.attributes = vec![
            AddressAttribute::Address("198.18.7.2".parse().unwrap()),
            AddressAttribute::Local("198.18.7.1".parse().unwrap()),
        ];
        let ev = topo.apply(&NetlinkEvent::Message(RouteNetlinkMessage::NewAddress(
            a.clone(),
        )));
        assert_eq!(
            ev,
            Some(TopologyEvent::Addr {
                ifindex: 7,
                ip: "198.18.7.1".parse().unwrap()
            })
        );
        assert!(topo.is_local("198.18.7.1".parse().unwrap()));
        assert!(!topo.is_local("198.18.7.2".parse().unwrap()));
        topo.apply(&NetlinkEvent::Message(RouteNetlinkMessage::DelAddress(a)));
        assert!(!topo.is_local("198.18.7.1".parse().unwrap()));
    }
}

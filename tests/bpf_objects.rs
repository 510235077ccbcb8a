//! The built BPF objects: both byte orders open with libbpf and agree on programs and maps, the
//! native one passes the verifier, a parse-and-pass run leaves frames untouched, and the object's
//! BTF agrees with the Rust view of the ABI (sizes and field offsets).

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::mem::offset_of;
use std::mem::size_of;

use libbpf_rs::btf::types::MemberAttr;
use libbpf_rs::btf::types::Struct;
use libbpf_rs::btf::Btf;
use libbpf_rs::btf::HasSize;
use libbpf_rs::ObjectBuilder;

use bpfqos::dataplane::abi;
use common::bpf::OBJ_EB;
use common::bpf::OBJ_EL;

fn names(obj: &[u8]) -> (BTreeSet<String>, BTreeSet<String>) {
    let open = ObjectBuilder::default()
        .open_memory(obj)
        .expect("libbpf opens the object");
    let progs = open
        .progs()
        .map(|p| p.name().to_string_lossy().into_owned())
        .collect();
    let maps = open
        .maps()
        .map(|m| m.name().to_string_lossy().into_owned())
        // libbpf names internal maps `<object name prefix>.bss`: keep only the suffix.
        .map(|n| match n.split_once('.') {
            Some((_, section)) => format!(".{section}"),
            None => n,
        })
        .collect();
    (progs, maps)
}

#[test]
fn both_byte_orders_open_with_the_same_programs_and_maps() {
    let (el_progs, el_maps) = names(OBJ_EL);
    let (eb_progs, eb_maps) = names(OBJ_EB);
    assert_eq!(el_progs, eb_progs);
    assert_eq!(el_maps, eb_maps);
    for p in [
        abi::XDP_PROG,
        abi::TC_PROG,
        abi::RTT_OUT_PROG,
        abi::SHAPE_IN_PROG,
        abi::SHAPE_RETURN_PROG,
        abi::UP_CLASSIFY_PROG,
    ] {
        assert!(el_progs.contains(p), "missing program {p}: {el_progs:?}");
    }
    for m in [
        abi::CONTROL_MAP,
        abi::STATS_MAP,
        abi::IFACES_MAP,
        abi::FLOWS4_MAP,
        abi::FLOWS6_MAP,
        abi::BUCKETS4_MAP,
        abi::BUCKETS6_MAP,
        abi::GRACE_MAP,
        abi::GRACE_INNER_MAP,
        abi::TX_PORTS_MAP,
        abi::EVENTS_MAP,
        abi::RTT4_MAP,
        abi::RTT6_MAP,
        abi::RTT_HIST_MAP,
        abi::RTT_CIRCUIT_HIST_MAP,
        abi::RTT_STATS_MAP,
    ] {
        assert!(el_maps.contains(m), "missing map {m}: {el_maps:?}");
    }
    // ELF header byte order: EI_DATA 1 = little, 2 = big.
    assert_eq!(OBJ_EL[5], 1);
    assert_eq!(OBJ_EB[5], 2);
}

#[test]
fn native_object_loads_and_passes_an_unknown_frame_unchanged() {
    if !common::require_root("native_object_loads_and_passes_an_unknown_frame_unchanged") {
        return;
    }
    let mut obj = common::bpf::load();
    // An ARP request: not ours, must come back untouched.
    let mut frame = vec![0xffu8; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
    frame.extend_from_slice(&[0u8; 28]);
    frame.resize(60, 0);
    let r = common::bpf::run_xdp(&mut obj, &frame, 0, 1);
    assert_eq!(r.ret, common::bpf::XDP_PASS);
    assert_eq!(r.data, frame);
    let r = common::bpf::run_tc(&mut obj, &frame, 0, 1);
    assert_eq!(r.ret, common::bpf::TC_PASS);
    assert_eq!(r.data, frame);
}

/// Checks one struct: BTF size equals Rust size, and each named field sits at the same offset.
fn check_struct(btf: &Btf<'_>, name: &str, rust_size: usize, fields: &[(&str, usize)]) {
    let s: Struct<'_> = btf
        .type_by_name(name)
        .unwrap_or_else(|| panic!("struct {name} not in the object's BTF"));
    assert_eq!(s.size(), rust_size, "size of {name}");
    let btf_fields: Vec<(String, u32)> = s
        .iter()
        .map(|m| {
            let off = match m.attr {
                MemberAttr::Normal { offset } => offset,
                MemberAttr::BitField { .. } => panic!("{name}: bitfields are not ABI-safe"),
            };
            (
                m.name
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                off,
            )
        })
        .collect();
    assert_eq!(
        btf_fields.len(),
        fields.len(),
        "{name}: field count {btf_fields:?}"
    );
    for ((bname, boff), (rname, roff)) in btf_fields.iter().zip(fields) {
        assert_eq!(bname, rname, "{name}: field order");
        assert_eq!(*boff as usize, roff * 8, "{name}.{rname}: offset");
    }
    // Explicit padding: the fields must tile the struct exactly (checked by summing sizes is not
    // possible from here; the header's _Static_asserts pin the sizes).
}

#[test]
fn btf_layout_matches_the_rust_types() {
    for obj in [OBJ_EL, OBJ_EB] {
        let btf = Btf::from_raw("offload", obj)
            .expect("parse BTF")
            .expect("object has BTF");
        use abi::Control;
        use abi::Counters;
        use abi::Event;
        use abi::Flow4;
        use abi::Flow6;
        use abi::FlowKey4;
        use abi::FlowKey6;
        use abi::Iface;
        use abi::L2Encap;
        use abi::Nat4;
        use abi::Nat6;
        use abi::NextHop;
        check_struct(
            &btf,
            "bpfqos_control",
            size_of::<Control>(),
            &[
                ("heartbeat_ns", offset_of!(Control, heartbeat_ns)),
                ("flags", offset_of!(Control, flags)),
                ("steer_cpus", offset_of!(Control, steer_cpus)),
                ("seed", offset_of!(Control, seed)),
            ],
        );
        check_struct(
            &btf,
            "bpfqos_steer_stat",
            size_of::<abi::SteerStat>(),
            &[
                ("steered", offset_of!(abi::SteerStat, steered)),
                ("kept", offset_of!(abi::SteerStat, kept)),
                ("delivered", offset_of!(abi::SteerStat, delivered)),
            ],
        );
        check_struct(
            &btf,
            "bpfqos_bucket",
            size_of::<abi::Bucket>(),
            &[("slot", offset_of!(abi::Bucket, slot))],
        );
        check_struct(
            &btf,
            "bpfqos_iface",
            size_of::<Iface>(),
            &[
                ("dsa_proto", offset_of!(Iface, dsa_proto)),
                ("rtt_slot", offset_of!(Iface, rtt_slot)),
                ("pad", offset_of!(Iface, pad)),
                ("flags", offset_of!(Iface, flags)),
            ],
        );
        check_struct(
            &btf,
            "bpfqos_l2",
            size_of::<L2Encap>(),
            &[
                ("vlan_proto", offset_of!(L2Encap, vlan_proto)),
                ("vlan_tci", offset_of!(L2Encap, vlan_tci)),
                ("pppoe_sid", offset_of!(L2Encap, pppoe_sid)),
                ("pppoe", offset_of!(L2Encap, pppoe)),
                ("dsa_port", offset_of!(L2Encap, dsa_port)),
            ],
        );
        check_struct(
            &btf,
            "bpfqos_flow4_key",
            size_of::<FlowKey4>(),
            &[
                ("ifindex", offset_of!(FlowKey4, ifindex)),
                ("l2", offset_of!(FlowKey4, l2)),
                ("saddr", offset_of!(FlowKey4, saddr)),
                ("daddr", offset_of!(FlowKey4, daddr)),
                ("sport", offset_of!(FlowKey4, sport)),
                ("dport", offset_of!(FlowKey4, dport)),
                ("proto", offset_of!(FlowKey4, proto)),
                ("pad", offset_of!(FlowKey4, pad)),
            ],
        );
        check_struct(
            &btf,
            "bpfqos_flow6_key",
            size_of::<FlowKey6>(),
            &[
                ("ifindex", offset_of!(FlowKey6, ifindex)),
                ("l2", offset_of!(FlowKey6, l2)),
                ("saddr", offset_of!(FlowKey6, saddr)),
                ("daddr", offset_of!(FlowKey6, daddr)),
                ("sport", offset_of!(FlowKey6, sport)),
                ("dport", offset_of!(FlowKey6, dport)),
                ("proto", offset_of!(FlowKey6, proto)),
                ("pad", offset_of!(FlowKey6, pad)),
            ],
        );
        check_struct(
            &btf,
            "bpfqos_nexthop",
            size_of::<NextHop>(),
            &[
                ("ifindex", offset_of!(NextHop, ifindex)),
                ("h_dest", offset_of!(NextHop, h_dest)),
                ("h_source", offset_of!(NextHop, h_source)),
                ("l2", offset_of!(NextHop, l2)),
                ("mtu", offset_of!(NextHop, mtu)),
                ("dsa_proto", offset_of!(NextHop, dsa_proto)),
                ("l2_len", offset_of!(NextHop, l2_len)),
            ],
        );
        check_struct(
            &btf,
            "bpfqos_nat4",
            size_of::<Nat4>(),
            &[
                ("saddr", offset_of!(Nat4, saddr)),
                ("daddr", offset_of!(Nat4, daddr)),
                ("sport", offset_of!(Nat4, sport)),
                ("dport", offset_of!(Nat4, dport)),
                ("addr_csum", offset_of!(Nat4, addr_csum)),
                ("port_csum", offset_of!(Nat4, port_csum)),
            ],
        );
        check_struct(
            &btf,
            "bpfqos_nat6",
            size_of::<Nat6>(),
            &[
                ("saddr", offset_of!(Nat6, saddr)),
                ("daddr", offset_of!(Nat6, daddr)),
                ("sport", offset_of!(Nat6, sport)),
                ("dport", offset_of!(Nat6, dport)),
                ("addr_csum", offset_of!(Nat6, addr_csum)),
                ("port_csum", offset_of!(Nat6, port_csum)),
            ],
        );
        check_struct(
            &btf,
            "bpfqos_counters",
            size_of::<Counters>(),
            &[
                ("packets", offset_of!(Counters, packets)),
                ("bytes", offset_of!(Counters, bytes)),
                ("last_seen_ns", offset_of!(Counters, last_seen_ns)),
            ],
        );
        for (name, size, nh, nat_off, action, pad, shaper, flags, cnt, key) in [
            (
                "bpfqos_flow4",
                size_of::<Flow4>(),
                offset_of!(Flow4, nh),
                offset_of!(Flow4, nat),
                offset_of!(Flow4, action),
                offset_of!(Flow4, pad),
                offset_of!(Flow4, shaper),
                offset_of!(Flow4, flags),
                offset_of!(Flow4, cnt),
                offset_of!(Flow4, key),
            ),
            (
                "bpfqos_flow6",
                size_of::<Flow6>(),
                offset_of!(Flow6, nh),
                offset_of!(Flow6, nat),
                offset_of!(Flow6, action),
                offset_of!(Flow6, pad),
                offset_of!(Flow6, shaper),
                offset_of!(Flow6, flags),
                offset_of!(Flow6, cnt),
                offset_of!(Flow6, key),
            ),
        ] {
            check_struct(
                &btf,
                name,
                size,
                &[
                    ("nh", nh),
                    ("action", action),
                    ("pad", pad),
                    ("shaper", shaper),
                    ("flags", flags),
                    ("cnt", cnt),
                    ("nat", nat_off),
                    ("key", key),
                ],
            );
        }
        check_struct(
            &btf,
            "bpfqos_rtt4_key",
            size_of::<abi::RttKey4>(),
            &[
                ("saddr", offset_of!(abi::RttKey4, saddr)),
                ("daddr", offset_of!(abi::RttKey4, daddr)),
                ("sport", offset_of!(abi::RttKey4, sport)),
                ("dport", offset_of!(abi::RttKey4, dport)),
            ],
        );
        check_struct(
            &btf,
            "bpfqos_rtt6_key",
            size_of::<abi::RttKey6>(),
            &[
                ("saddr", offset_of!(abi::RttKey6, saddr)),
                ("daddr", offset_of!(abi::RttKey6, daddr)),
                ("sport", offset_of!(abi::RttKey6, sport)),
                ("dport", offset_of!(abi::RttKey6, dport)),
            ],
        );
        {
            use abi::RttState as S;
            check_struct(
                &btf,
                "bpfqos_rtt_state",
                size_of::<S>(),
                &[
                    ("t_sent", offset_of!(S, t_sent)),
                    ("tsval", offset_of!(S, tsval)),
                    ("seq_end", offset_of!(S, seq_end)),
                    ("last_tsval", offset_of!(S, last_tsval)),
                    ("max_seq", offset_of!(S, max_seq)),
                    ("last_us", offset_of!(S, last_us)),
                    ("min_us", offset_of!(S, min_us)),
                    ("srtt8_us", offset_of!(S, srtt8_us)),
                    ("samples", offset_of!(S, samples)),
                    ("retrans", offset_of!(S, retrans)),
                    ("packets", offset_of!(S, packets)),
                    ("seen", offset_of!(S, seen)),
                    ("circuit", offset_of!(S, circuit)),
                    ("ifindex", offset_of!(S, ifindex)),
                    ("base_us", offset_of!(S, base_us)),
                    ("slot_out", offset_of!(S, slot_out)),
                    ("slot_in", offset_of!(S, slot_in)),
                    ("flags", offset_of!(S, flags)),
                ],
            );
        }
        check_struct(
            &btf,
            "bpfqos_rtt_hist",
            size_of::<abi::RttHist>(),
            &[("bucket", offset_of!(abi::RttHist, bucket))],
        );
        check_struct(
            &btf,
            "bpfqos_event",
            size_of::<Event>(),
            &[
                ("type", offset_of!(Event, r#type)),
                ("tcp_flags", offset_of!(Event, tcp_flags)),
                ("pad", offset_of!(Event, pad)),
                ("k4", offset_of!(Event, k4)),
                ("k6", offset_of!(Event, k6)),
            ],
        );
    }
}

//! The device features bpfqos reads over ethtool netlink (CPU steering's VLAN check) against
//! `ethtool -k`, on a veth in a fresh namespace, before and after `ethtool -K rxvlan off`
//! (root only).

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use bpfqos::topology::ethtool;

fn ethtool_k(dev: &str) -> Vec<(String, bool)> {
    let out = std::process::Command::new("ethtool")
        .args(["-k", dev])
        .output()
        .expect("run ethtool -k");
    assert!(out.status.success(), "ethtool -k {dev}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().split_once(": ")?;
            Some((name.to_string(), rest.starts_with("on")))
        })
        .collect()
}

#[test]
fn active_features_match_ethtool_and_follow_a_change() {
    if !common::require_root("active_features_match_ethtool_and_follow_a_change") {
        return;
    }
    common::frames::fresh_netns(1);
    for round in 0..2 {
        let ours = ethtool::active_features("bq0").expect("features over netlink");
        let theirs = ethtool_k("bq0");
        let on = |name: &str| {
            theirs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, on)| *on)
                .unwrap_or_else(|| panic!("ethtool -k shows no {name}"))
        };
        // Every feature we read as active that ethtool shows under its kernel name is on there.
        for name in &ours {
            if let Some((_, o)) = theirs.iter().find(|(n, _)| n == name) {
                assert!(*o, "round {round}: we read {name} active, ethtool says off");
            }
        }
        // The two that matter, under the names ethtool shows them by (rx-vlan-hw-parse is its
        // "rx-vlan-offload").
        assert_eq!(
            ours.iter().any(|n| n == "rx-vlan-hw-parse"),
            on("rx-vlan-offload"),
            "round {round}: {ours:?}"
        );
        assert_eq!(
            ours.iter().any(|n| n == "rx-vlan-stag-hw-parse"),
            on("rx-vlan-stag-hw-parse"),
            "round {round}: {ours:?}"
        );
        let expect = on("rx-vlan-offload") || on("rx-vlan-stag-hw-parse");
        assert_eq!(ethtool::vlan_rx_offload("bq0").unwrap(), expect);
        if round == 0 {
            assert!(expect, "a veth takes VLAN tags out on receive by default");
            let st = std::process::Command::new("ethtool")
                .args(["-K", "bq0", "rxvlan", "off", "rx-vlan-stag-hw-parse", "off"])
                .status()
                .expect("run ethtool -K");
            assert!(st.success());
        } else {
            assert!(!expect, "rxvlan off");
        }
    }
    assert!(ethtool::active_features("no-such-dev0").is_err());
}

use super::*;

fn dev(name: &str, rx_queues: u32, rps: bool, pppoe: bool, xdp: bool) -> DeviceFacts {
    DeviceFacts {
        name: name.into(),
        ifindex: 10 + rx_queues,
        rx_queues,
        rps,
        pppoe,
        xdp,
        nic: true,
        vlan_offload: Some(false),
    }
}

fn globals(steering: Steering, cpus: Option<Vec<u32>>) -> Globals {
    Globals {
        steering,
        steering_cpus: cpus,
        ..Globals::default()
    }
}

fn decision<'a>(p: &'a Plan, name: &str) -> &'a DeviceDecision {
    p.devices
        .iter()
        .find(|d| d.device == name)
        .unwrap_or_else(|| panic!("no decision for {name}: {p:?}"))
}

#[test]
fn auto_steers_one_queue_devices_and_pppoe_not_rss_or_rps_or_tc() {
    let devs = [
        dev("eth0", 1, false, false, true),
        dev("eth1", 4, false, true, true),
        dev("eth2", 4, false, false, true),
        dev("eth3", 1, true, false, true),
        dev("eth4", 1, false, false, false),
    ];
    let p = plan(&globals(Steering::Auto, None), &[0, 1, 2, 3], &devs);
    assert_eq!(p.cpus, vec![0, 1, 2, 3]);
    assert!(decision(&p, "eth0").steering, "{p:?}");
    assert!(decision(&p, "eth1").steering, "PPPoE: {p:?}");
    assert!(!decision(&p, "eth2").steering, "RSS: {p:?}");
    assert!(decision(&p, "eth2").reason.contains("4 receive queues"));
    assert!(!decision(&p, "eth3").steering, "RPS: {p:?}");
    assert!(decision(&p, "eth3").reason.contains("RPS"));
    assert!(!decision(&p, "eth4").steering, "TC: {p:?}");
    assert!(decision(&p, "eth4").reason.contains("XDP"));
    assert_eq!(p.steering_devices(), vec![(11, true), (14, true)]);
    assert_eq!(p.queue, crate::config::STEERING_QUEUE);
}

#[test]
fn on_overrides_rss_and_rps_but_not_missing_xdp_or_one_cpu() {
    let devs = [
        dev("eth2", 4, false, false, true),
        dev("eth3", 1, true, false, true),
        dev("eth4", 1, false, false, false),
    ];
    let p = plan(&globals(Steering::On, None), &[0, 1], &devs);
    assert!(decision(&p, "eth2").steering);
    assert!(decision(&p, "eth3").steering);
    assert!(!decision(&p, "eth4").steering);

    let p = plan(&globals(Steering::On, None), &[0], &devs);
    assert!(p.devices.iter().all(|d| !d.steering), "{p:?}");
    assert!(p.cpus.is_empty());
    assert!(p
        .cpus_problem
        .as_deref()
        .is_some_and(|m| m.contains("1 online CPU")));
}

#[test]
fn off_steers_nothing_and_has_no_problem() {
    let devs = [dev("eth0", 1, false, true, true)];
    let p = plan(&globals(Steering::Off, None), &[0, 1, 2], &devs);
    assert!(!decision(&p, "eth0").steering);
    assert!(p.cpus.is_empty());
    assert_eq!(p.cpus_problem, None);
}

#[test]
fn the_cpu_set_is_the_configured_cpus_that_are_online() {
    let devs = [dev("eth0", 1, false, false, true)];
    let p = plan(
        &globals(Steering::Auto, Some(vec![1, 2, 3, 7])),
        &[0, 1, 2, 3],
        &devs,
    );
    assert_eq!(p.cpus, vec![1, 2, 3]);
    // One of them online: all the work goes there.
    let p = plan(
        &globals(Steering::Auto, Some(vec![3, 7])),
        &[0, 1, 2, 3],
        &devs,
    );
    assert_eq!(p.cpus, vec![3]);
    assert!(decision(&p, "eth0").steering);
    // None online: nothing, and status says why.
    let p = plan(
        &globals(Steering::Auto, Some(vec![7, 9])),
        &[0, 1, 2, 3],
        &devs,
    );
    assert!(p.cpus.is_empty());
    assert!(!decision(&p, "eth0").steering);
    let why = p.cpus_problem.unwrap_or_default();
    assert!(why.contains("[7, 9]") && why.contains("none"), "{why}");
}

#[test]
fn facts_come_from_sysfs_queues_and_rps_masks() {
    let root = std::env::temp_dir().join(format!("bpfqos-steer-{}", std::process::id()));
    let q = root.join("sys/class/net/eth0/queues");
    for d in ["rx-0", "rx-1", "tx-0"] {
        std::fs::create_dir_all(q.join(d)).unwrap();
    }
    std::fs::write(q.join("rx-0/rps_cpus"), "00\n").unwrap();
    std::fs::write(q.join("rx-1/rps_cpus"), "0\n").unwrap();
    let cpu = root.join("sys/devices/system/cpu");
    std::fs::create_dir_all(&cpu).unwrap();
    std::fs::write(cpu.join("online"), "0-2,5\n").unwrap();
    let fs = HostFs::at(&root);

    let f = DeviceFacts::read(&fs, "eth0", 3, false, true, Some(false));
    assert_eq!((f.rx_queues, f.rps, f.nic), (2, false, false));
    std::fs::create_dir_all(root.join("sys/class/net/eth0/device")).unwrap();
    assert!(DeviceFacts::read(&fs, "eth0", 3, false, true, None).nic);
    std::fs::write(q.join("rx-1/rps_cpus"), "0000,00000006\n").unwrap();
    assert!(DeviceFacts::read(&fs, "eth0", 3, false, true, None).rps);
    // A device without a queues directory (virtual devices may lack it) counts as one queue.
    assert_eq!(
        DeviceFacts::read(&fs, "ppp0", 4, false, true, None).rx_queues,
        1
    );
    assert_eq!(online_cpus(&fs), vec![0, 1, 2, 5]);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn status_lists_the_set_and_every_cpu_that_counted() {
    let devs = [dev("eth0", 1, false, false, true)];
    let g = globals(Steering::Auto, None);
    let p = plan(&g, &[0, 1], &devs);
    let mut counters = BTreeMap::new();
    counters.insert(
        1,
        CpuCounters {
            cpu: 1,
            steered: 5,
            kept: 0,
            delivered: 5,
        },
    );
    // A CPU that left the set still shows what it counted.
    counters.insert(
        3,
        CpuCounters {
            cpu: 3,
            steered: 2,
            kept: 1,
            delivered: 2,
        },
    );
    let s = SteeringStatus::of(&g, &p, &counters, &[(2, 0x1234)]);
    assert!(s.active);
    assert_eq!(s.mode, "auto");
    let cpus: Vec<u32> = s.per_cpu.iter().map(|c| c.cpu).collect();
    assert_eq!(cpus, vec![0, 1, 3]);
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["devices"][0]["device"], "eth0");
    assert_eq!(v["devices"][0]["steering"], true);
    assert!(v["problem"].is_null());
    assert_eq!(v["held_pppoe_sessions"][0]["session"], 0x1234);
}

#[test]
fn a_vlan_tag_outside_the_frame_rules_steering_out_even_when_forced() {
    let nic = |name: &str, vlan: Option<bool>| DeviceFacts {
        vlan_offload: vlan,
        ..dev(name, 1, false, true, true)
    };
    let virt = |name: &str| DeviceFacts {
        nic: false,
        vlan_offload: Some(false),
        ..dev(name, 1, false, true, true)
    };
    let devs = [
        nic("eth0", Some(true)),
        nic("eth1", None),
        nic("eth2", Some(false)),
        virt("veth0"),
    ];
    for mode in [Steering::Auto, Steering::On] {
        let p = plan(&globals(mode, None), &[0, 1], &devs);
        assert!(!decision(&p, "eth0").steering, "{mode:?}: {p:?}");
        assert!(decision(&p, "eth0").reason.contains("rxvlan off"));
        assert!(!decision(&p, "eth1").steering, "{mode:?}: {p:?}");
        assert!(decision(&p, "eth1").reason.contains("could not be read"));
        assert!(decision(&p, "eth2").steering, "{mode:?}: {p:?}");
        assert!(decision(&p, "eth2").in_place);
        // A veth: only when forced, and never in place (it receives where the sender ran).
        assert_eq!(decision(&p, "veth0").steering, mode == Steering::On);
        assert!(!decision(&p, "veth0").in_place);
    }
}

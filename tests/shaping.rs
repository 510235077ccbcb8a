//! Shaping on the host kernel (HTB, clsact, veth; no CAKE or fq_codel here: `qdisc 'fifo'`),
//! checked from outside with `tc` and iperf3 on the namespace router: the trees bpfqos sets up,
//! the rates they hold, in-place changes, removal, and refusals. Root only.

mod common;

use std::process::Child;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use common::lab::Lab;
use common::netns::Netns;

fn config(offload: bool, upload: u64, download: u64, qdisc: &str, overhead: i32) -> String {
    format!(
        "config globals 'globals'\n\toption log_level 'debug'\n\toption offload '{}'\n\n\
         config interface 'lan'\n\toption device 'br-lan'\n\n\
         config interface 'wan'\n\toption device 'wan0'\n\toption upload '{upload}'\n\
         \toption download '{download}'\n\toption qdisc '{qdisc}'\n\toption overhead '{overhead}'\n",
        u8::from(offload)
    )
}

/// The root qdisc of `dev` in `ns` as `tc -s -j` shows it.
fn root_qdisc(ns: &Netns, dev: &str) -> serde_json::Value {
    let all = ns.json(&format!("tc -s -j qdisc show dev {dev}"));
    all.as_array()
        .and_then(|a| a.iter().find(|q| q["root"] == true).cloned())
        .unwrap_or_default()
}

/// `tc class show` text of `dev`.
fn classes(ns: &Netns, dev: &str) -> String {
    ns.sh(&format!("tc -s -d class show dev {dev}"))
}

/// The bpfqos filters on `dev`'s clsact ingress (names of the programs).
fn ingress_filters(ns: &Netns, dev: &str) -> String {
    ns.sh(&format!(
        "tc filter show dev {dev} ingress 2>/dev/null || true"
    ))
}

/// An iperf3 server for one test, listening before this returns.
fn iperf_server(srv: &Netns) -> Child {
    let child = srv
        .command("iperf3")
        .args(["-s", "-1", "-B", "198.19.0.2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("iperf3 server: {e}"));
    let listening = common::wait_for(Duration::from_secs(5), || {
        srv.sh("ss -Hltn 'sport = :5201'").contains("5201")
    });
    assert!(listening, "iperf3 server not listening");
    child
}

/// Waits (bounded) for a one-test iperf3 server to exit by itself; kills it after that.
fn reap(mut server: Child) {
    let gone = common::wait_for(Duration::from_secs(10), || {
        server.try_wait().is_ok_and(|s| s.is_some())
    });
    if !gone {
        let _ = server.kill();
        let _ = server.wait();
    }
}

/// Bytes the root qdisc of `dev` sent per second over a `secs` window, while iperf3 pushes
/// TCP upload (`reverse` false) or download (true) through the router.
fn shaped_rate(lab: &Lab, dev: &str, reverse: bool, secs: f64) -> f64 {
    let server = iperf_server(&lab.srv);
    let total = (secs + 1.5).ceil() as u32;
    let mut args = vec![
        "20".to_string(),
        "iperf3".into(),
        "-c".into(),
        "198.19.0.2".into(),
        "-t".into(),
        total.to_string(),
        "-P".into(),
        "2".into(),
    ];
    if reverse {
        args.push("-R".into());
    }
    let client = lab
        .lan
        .command("timeout")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("iperf3 client: {e}"));
    // Past slow start, then one window read off the shaper's own counter.
    std::thread::sleep(Duration::from_millis(1000));
    let bytes = |v: serde_json::Value| v["bytes"].as_u64().unwrap_or(0);
    let (b0, t0) = (bytes(root_qdisc(&lab.rtr, dev)), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (b1, t1) = (bytes(root_qdisc(&lab.rtr, dev)), Instant::now());
    let out = client.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "iperf3: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    reap(server);
    (b1 - b0) as f64 / (t1 - t0).as_secs_f64()
}

#[test]
fn shapers_are_set_up_as_configured_and_removed_on_stop() {
    if !common::require_root("shapers_are_set_up_as_configured_and_removed_on_stop") {
        return;
    }
    let lab = Lab::new("bqq");
    lab.config(&config(true, 10_000, 20_000, "fifo", 34));
    let mut d = lab.daemon();
    let ready = common::wait_for(Duration::from_secs(10), || {
        lab.rtr.try_sh("ip link show dev bqd-wan")
            && ingress_filters(&lab.rtr, "wan0").contains("bpfqos_dl_steer")
    });
    assert!(ready, "no download shaper:\n{}", d.log_text());
    // Upload: HTB on wan0 at 10 Mbit/s; overhead 34 minus the 14 header bytes HTB already sees.
    let root = root_qdisc(&lab.rtr, "wan0");
    assert_eq!(root["kind"], "htb", "{root}");
    assert_eq!(root["handle"], "b9f:", "{root}");
    let up = classes(&lab.rtr, "wan0");
    assert!(
        up.contains("class htb b9f:1 root rate 10Mbit overhead 20 ceil 10Mbit"),
        "{up}"
    );
    assert!(up.contains("class htb b9f:10 parent b9f:1"), "{up}");
    // Download: the same on the shaper device, fed from wan0's ingress, back through bqr-wan.
    let down = classes(&lab.rtr, "bqd-wan");
    assert!(
        down.contains("class htb b9f:1 root rate 20Mbit overhead 20 ceil 20Mbit"),
        "{down}"
    );
    assert!(ingress_filters(&lab.rtr, "bqr-wan").contains("bpfqos_dl_back"));
    let st = d.status();
    let wan = st["interfaces"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == "wan").cloned())
        .unwrap_or_default();
    assert_eq!(wan["shaper"]["upload"]["rate_kbit"], 10_000, "{wan}");
    assert_eq!(wan["shaper"]["upload"]["device"], "wan0");
    assert_eq!(wan["shaper"]["upload"]["qdisc"], "fifo");
    assert_eq!(wan["shaper"]["download"]["device"], "bqd-wan");
    assert_eq!(wan["shaper"]["download"]["rate_kbit"], 20_000);
    assert!(
        wan["shaper"]["upload"]["ecn_marks"].is_null(),
        "FIFO keeps no ECN count: null, not 0: {wan}"
    );
    // Traffic passes both ways (the steering loses nothing).
    lab.lan.sh(
        "ping -c 5 -i 0.05 -W 2 -q 198.19.0.2 >/dev/null && ping -c 3 -W 2 -q fd00:2::2 >/dev/null",
    );
    let st = d.status();
    let down_pkts = st["interfaces"][1]["shaper"]["download"]["packets"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        down_pkts >= 8,
        "download shaper saw {down_pkts} packets: {st}"
    );
    // Stop: everything bpfqos created is gone, wan0 has its default queue again.
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        !lab.rtr.try_sh("ip link show dev bqd-wan"),
        "shaper device left behind"
    );
    assert_ne!(root_qdisc(&lab.rtr, "wan0")["kind"], "htb");
    assert!(!ingress_filters(&lab.rtr, "wan0").contains("bpfqos"));
    lab.lan.sh("ping -c 2 -W 2 -q 198.19.0.2 >/dev/null");
}

#[test]
fn htb_holds_1_10_and_50_mbit_with_offload_on_and_off() {
    if !common::require_root("htb_holds_1_10_and_50_mbit_with_offload_on_and_off") {
        return;
    }
    let lab = Lab::new("bqr");
    let mut report = Vec::new();
    // Offload on first: the daemon is killed (no cleanup) before the one with offload off
    // starts, whose steering must then still see every packet (a left-over TC twin in front of
    // it passes them on, it does not end the filter chain).
    for offload in [true, false] {
        for mbit in [1u64, 10, 50] {
            // Overhead 14: HTB charges exactly the frames a veth carries, so the shaper's own
            // byte counter must show the configured rate.
            lab.config(&config(offload, mbit * 1000, mbit * 1000, "fifo", 14));
            let d = lab.daemon();
            common::wait_for(Duration::from_secs(10), || {
                ingress_filters(&lab.rtr, "wan0").contains("bpfqos_dl_steer")
            });
            let want = (mbit * 1_000_000 / 8) as f64;
            let secs = if mbit == 1 { 3.0 } else { 2.0 };
            for (dev, reverse, what) in [("wan0", false, "upload"), ("bqd-wan", true, "download")] {
                let got = shaped_rate(&lab, dev, reverse, secs);
                let ratio = got / want;
                report.push(format!(
                    "offload {offload} {mbit:>2} Mbit/s {what:<8}: {:.3} Mbit/s ({ratio:.3})",
                    got * 8.0 / 1e6
                ));
                assert!(
                    (0.95..=1.05).contains(&ratio),
                    "{what} at {mbit} Mbit/s, offload {offload}: {got} B/s, want {want}\n{}\n{}",
                    report.join("\n"),
                    d.log_text()
                );
            }
            let st = d.status();
            let (offloaded, to_shaper) = (
                st["offload"]["packets"].as_u64().unwrap_or(0),
                st["datapath"]["to_shaper"].as_u64().unwrap_or(0),
            );
            report.push(format!(
                "  offloaded packets {offloaded}, into a shaper {to_shaper}"
            ));
            if offload {
                // The shaped flows were offloaded, through the shapers.
                assert!(offloaded > 1000 && to_shaper > 1000, "{st}");
            } else {
                assert_eq!(offloaded, 0, "{st}");
            }
            drop(d);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn a_rate_change_keeps_the_qdisc_and_loses_no_packet() {
    if !common::require_root("a_rate_change_keeps_the_qdisc_and_loses_no_packet") {
        return;
    }
    let lab = Lab::new("bqc");
    lab.config(&config(true, 20_000, 20_000, "fifo", 14));
    let d = lab.daemon();
    common::wait_for(Duration::from_secs(10), || {
        ingress_filters(&lab.rtr, "wan0").contains("bpfqos_dl_steer")
    });
    // A paced UDP flow through both shapers (each datagram echoed back), while the rates
    // change 20 times.
    let (server, client) = lab.udp_pingpong("198.19.0.2", 100, &[]);
    let sent_before = root_qdisc(&lab.rtr, "wan0")["bytes"].as_u64().unwrap_or(0);
    for i in 0..20u64 {
        let rate = 10_000 + 1_000 * (i % 7);
        lab.config(&config(true, rate, rate + 500, "fifo", 14));
        let out = d.client(&["reload"]);
        assert!(out.status.success(), "reload: {}", common::describe(&out));
        let cls = classes(&lab.rtr, "wan0");
        assert!(
            cls.contains(&format!("rate {}Mbit", rate / 1000))
                || cls.contains(&format!("rate {rate}Kbit")),
            "rate {rate} not applied:\n{cls}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = common::lab::finish(client, "udp client");
    common::lab::finish(server, "udp server");
    assert!(out.contains("100/100") || !out.contains("lost"), "{out}");
    // The same qdisc all along (its counters kept counting), and never replaced.
    let root = root_qdisc(&lab.rtr, "wan0");
    assert_eq!(root["handle"], "b9f:");
    assert!(root["bytes"].as_u64().unwrap_or(0) > sent_before, "{root}");
    assert!(
        !d.log_text().contains("shaping not applied"),
        "{}",
        d.log_text()
    );
}

#[test]
fn a_missing_qdisc_kind_is_an_error_naming_the_option_and_offload_goes_on() {
    if !common::require_root(
        "a_missing_qdisc_kind_is_an_error_naming_the_option_and_offload_goes_on",
    ) {
        return;
    }
    if common::which("modprobe").is_some()
        && std::process::Command::new("modprobe")
            .arg("sch_cake")
            .status()
            .is_ok_and(|s| s.success())
    {
        eprintln!("this kernel has CAKE: the refusal case runs in the VM only");
        return;
    }
    let lab = Lab::new("bqm");
    // A foreign root qdisc first: bpfqos replaces it and says so.
    lab.rtr
        .sh("tc qdisc add dev wan0 root handle 1: htb default 1");
    lab.config(&config(true, 10_000, 0, "cake", 34));
    let d = lab.daemon();
    let st = d.status();
    let wan = &st["interfaces"][1];
    let err = wan["shaper"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(err.contains("option qdisc 'cake'"), "{wan}");
    assert!(err.contains("kmod-sched-cake"), "{wan}");
    assert!(
        d.log_text().contains("put there by someone else"),
        "{}",
        d.log_text()
    );
    // Nothing half-applied: wan0 is back to its default, no tree of ours.
    assert_ne!(root_qdisc(&lab.rtr, "wan0")["handle"], "b9f:");
    // And the rest works: the LAN still reaches the WAN.
    lab.lan.sh("ping -c 2 -W 2 -q 198.19.0.2 >/dev/null");
}

/// A config with the WAN shaped at `up`/`down` kbit/s (FIFO, overhead 14: HTB charges the
/// frames exactly) and `circuits` appended (UCI text).
fn circuit_config(offload: bool, up: u64, down: u64, circuits: &str) -> String {
    format!("{}\n{circuits}", config(offload, up, down, "fifo", 14))
}

/// `config circuit` text.
fn circuit(name: &str, ips: &[&str], up: u64, down: u64) -> String {
    let mut s = format!("config circuit\n\toption name '{name}'\n");
    for ip in ips {
        s.push_str(&format!("\tlist ip '{ip}'\n"));
    }
    s.push_str(&format!(
        "\toption upload '{up}'\n\toption download '{down}'\n\n"
    ));
    s
}

/// Bytes sent per HTB class of `dev` (handle → bytes), from `tc -s class show` (this
/// iproute2 prints HTB classes as text even with `-j`).
fn class_bytes(ns: &Netns, dev: &str) -> std::collections::HashMap<String, u64> {
    let text = ns.sh(&format!("tc -s class show dev {dev}"));
    let mut out = std::collections::HashMap::new();
    let mut handle: Option<String> = None;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"class") {
            handle = words.get(2).map(|h| h.to_string());
        } else if words.first() == Some(&"Sent") {
            if let (Some(h), Some(b)) = (handle.take(), words.get(1)) {
                out.insert(h, b.parse().unwrap_or(0));
            }
        }
    }
    out
}

/// An iperf3 server for one test on `port`, listening before this returns.
fn iperf_server_on(srv: &Netns, bind: &str, port: u16) -> Child {
    let child = srv
        .command("iperf3")
        .args(["-s", "-1", "-B", bind, "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("iperf3 server: {e}"));
    let listening = common::wait_for(Duration::from_secs(5), || {
        srv.sh(&format!("ss -Hltn 'sport = :{port}'"))
            .contains(&port.to_string())
    });
    assert!(listening, "iperf3 server on {port} not listening");
    child
}

/// Rates (bytes/s) of the classes of `dev` over a `secs` window while two bulk TCP transfers
/// run at once, one from each of `sources` (bound to that address) to the server.
fn class_rates(
    lab: &Lab,
    dev: &str,
    sources: &[(&str, &str)],
    reverse: bool,
    secs: f64,
) -> std::collections::HashMap<String, f64> {
    let total = (secs + 2.0).ceil() as u32;
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for (i, (src, dst)) in sources.iter().enumerate() {
        let port = 5201 + i as u16;
        servers.push(iperf_server_on(&lab.srv, dst, port));
        let mut args = vec![
            "20".to_string(),
            "iperf3".into(),
            "-c".into(),
            dst.to_string(),
            "-B".into(),
            src.to_string(),
            "-p".into(),
            port.to_string(),
            "-t".into(),
            total.to_string(),
            "-P".into(),
            "2".into(),
        ];
        if reverse {
            args.push("-R".into());
        }
        clients.push(
            lab.lan
                .command("timeout")
                .args(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("iperf3 client: {e}")),
        );
    }
    std::thread::sleep(Duration::from_millis(1500));
    let (b0, t0) = (class_bytes(&lab.rtr, dev), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (b1, t1) = (class_bytes(&lab.rtr, dev), Instant::now());
    for c in clients {
        let out = c.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "iperf3: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    servers.into_iter().for_each(reap);
    let dt = (t1 - t0).as_secs_f64();
    b1.iter()
        .map(|(h, b)| {
            (
                h.clone(),
                b.saturating_sub(b0.get(h).copied().unwrap_or(0)) as f64 / dt,
            )
        })
        .collect()
}

#[test]
fn a_circuit_gets_its_limit_and_the_others_the_rest_through_nat_with_offload_on_and_off() {
    if !common::require_root(
        "a_circuit_gets_its_limit_and_the_others_the_rest_through_nat_with_offload_on_and_off",
    ) {
        return;
    }
    let lab = Lab::new("bqk");
    // A second host on the LAN side: the circuit's.
    lab.lan.sh(
        "ip addr add 198.18.1.3/24 dev c0 && ip addr add fd00:1::3/64 dev c0 nodad
         ping -c 1 -W 2 -I 198.18.1.3 198.18.1.1 >/dev/null",
    );
    let guest = circuit("guest", &["198.18.1.3", "fd00:1::3"], 5_000, 5_000);
    let mut report = Vec::new();
    for offload in [true, false] {
        lab.config(&circuit_config(offload, 20_000, 20_000, &guest));
        let d = lab.daemon();
        common::wait_for(Duration::from_secs(10), || {
            ingress_filters(&lab.rtr, "wan0").contains("bpfqos_dl_steer")
        });
        let up = classes(&lab.rtr, "wan0");
        assert!(
            up.contains("class htb b9f:101 parent b9f:1") && up.contains("ceil 5Mbit"),
            "{up}"
        );
        // IPv4 through the masquerade: the circuit's class by the NATed tuple (conntrack),
        // the other host's in the default class; both busy at once, both ways.
        for (dev, reverse, what) in [("wan0", false, "upload"), ("bqd-wan", true, "download")] {
            let rates = class_rates(
                &lab,
                dev,
                &[("198.18.1.3", "198.19.0.2"), ("198.18.1.2", "198.19.0.2")],
                reverse,
                3.0,
            );
            let guest_r = rates.get("b9f:101").copied().unwrap_or(0.0) / 625_000.0;
            let other_r = rates.get("b9f:10").copied().unwrap_or(0.0) / 1_875_000.0;
            report.push(format!(
                "offload {offload} {what:<8} IPv4: circuit {guest_r:.3} of 5 Mbit/s, \
                 the other host {other_r:.3} of the remaining 15"
            ));
            assert!(
                (0.95..=1.05).contains(&guest_r) && (0.95..=1.05).contains(&other_r),
                "{}\n{rates:?}\n{}",
                report.join("\n"),
                d.log_text()
            );
        }
        // IPv6 (no NAT): by address alone.
        for (dev, reverse) in [("wan0", false), ("bqd-wan", true)] {
            let rates = class_rates(&lab, dev, &[("fd00:1::3", "fd00:2::2")], reverse, 1.5);
            let guest_r = rates.get("b9f:101").copied().unwrap_or(0.0);
            let default_r = rates.get("b9f:10").copied().unwrap_or(0.0);
            assert!(
                guest_r > 500_000.0 && default_r < guest_r / 20.0,
                "IPv6 {dev}: circuit {guest_r} B/s, default {default_r} B/s"
            );
        }
        let st = d.status();
        let c = &st["circuits"][0];
        assert_eq!(c["name"], "guest", "{st}");
        assert!(
            c["upload"]["bytes"].as_u64().unwrap_or(0) > 1_000_000,
            "{c}"
        );
        assert!(
            c["download"]["bytes"].as_u64().unwrap_or(0) > 1_000_000,
            "{c}"
        );
        let wan = &st["interfaces"][1]["shaper"];
        assert_eq!(wan["upload"]["circuit_classes"], 1, "{wan}");
        assert_eq!(wan["download"]["circuit_classes"], 1, "{wan}");
        assert_eq!(st["circuits_total"], 1, "{st}");
        assert_eq!(c["upload_kbit"], 5_000, "{c}");
        let classified = &st["shaping"]["datapath"];
        assert!(
            classified["circuit_upload"].as_u64().unwrap_or(0) > 1000
                && classified["circuit_download"].as_u64().unwrap_or(0) > 1000,
            "{classified}"
        );
        assert!(
            st["shaping"]["circuit_nat_entries"].as_u64().unwrap_or(0) >= 1,
            "{}",
            st["shaping"]
        );
        if offload {
            assert!(
                st["datapath"]["to_shaper"].as_u64().unwrap_or(0) > 1000,
                "{st}"
            );
            // The LuCI status page renders what this daemon sends (two polls, LuCI stubbed).
            if common::which("node").is_some() {
                let a = lab.work.write("status-a.json", &st.to_string());
                std::thread::sleep(Duration::from_millis(500));
                let b = lab.work.write("status-b.json", &d.status().to_string());
                let text = common::packaging::render_status_view(&[
                    a.to_str().unwrap_or_default(),
                    b.to_str().unwrap_or_default(),
                ]);
                assert!(
                    text.contains("Shaper: wan")
                        && text.contains("guest")
                        && text.contains("bqd-wan"),
                    "{text}"
                );
            }
        }
        drop(d);
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn circuit_changes_touch_only_their_classes_and_lose_no_packet() {
    if !common::require_root("circuit_changes_touch_only_their_classes_and_lose_no_packet") {
        return;
    }
    let lab = Lab::new("bqi");
    let others: String = (1..=20)
        .map(|i| circuit(&format!("c{i}"), &[&format!("198.18.2.{i}")], 1_000, 2_000))
        .collect();
    let with = |paced_rate: u64, other_rate: u64, extra: bool| {
        let mut c = circuit(
            "paced",
            &["198.18.1.2", "fd00:1::2"],
            paced_rate,
            paced_rate,
        );
        c.push_str(&others.replace(
            "option upload '1000'\n\toption download '2000'",
            &format!("option upload '1000'\n\toption download '{other_rate}'"),
        ));
        if extra {
            c.push_str(&circuit("extra", &["198.18.3.0/24"], 3_000, 3_000));
        }
        circuit_config(true, 30_000, 30_000, &c)
    };
    lab.config(&with(10_000, 2_000, false));
    let d = lab.daemon();
    common::wait_for(Duration::from_secs(10), || {
        ingress_filters(&lab.rtr, "wan0").contains("bpfqos_dl_steer")
    });
    let count = |dev: &str| classes(&lab.rtr, dev).matches("class htb").count();
    assert_eq!(count("wan0"), 2 + 21, "{}", classes(&lab.rtr, "wan0"));

    // One reload that changes one circuit's rate: one class change per shaper, nothing else
    // (tc monitor, the kernel's own account of every qdisc/class message).
    let monitor = lab
        .rtr
        .command("timeout")
        .args(["3", "tc", "monitor"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("tc monitor: {e}"));
    std::thread::sleep(Duration::from_millis(300));
    lab.config(&with(12_000, 2_000, false));
    let out = d.client(&["reload"]);
    assert!(out.status.success(), "reload: {}", common::describe(&out));
    let seen = monitor
        .wait_with_output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let changes: Vec<&str> = seen
        .lines()
        .filter(|l| l.contains("qdisc") || l.contains("class"))
        .collect();
    assert_eq!(changes.len(), 2, "{seen}");
    assert!(
        changes
            .iter()
            .all(|l| l.contains("b9f:101") && l.contains("12Mbit")),
        "{seen}"
    );

    // A paced UDP flow in the circuit's class both ways while 100 reloads change its rate,
    // another circuit's, and add and remove a third: no datagram lost, the root and the
    // circuit's class never recreated (their counters only grow).
    let (server, client) = lab.udp_pingpong("198.19.0.2", 200, &[]);
    let mut last = (0u64, 0u64);
    let mut reload_time = Duration::ZERO;
    for i in 0..100u64 {
        lab.config(&with(
            8_000 + 100 * (i % 40),
            1_000 + 100 * (i % 9),
            i % 2 == 0,
        ));
        let t = Instant::now();
        let out = d.client(&["reload"]);
        reload_time += t.elapsed();
        assert!(out.status.success(), "reload: {}", common::describe(&out));
        let root = root_qdisc(&lab.rtr, "wan0")["bytes"].as_u64().unwrap_or(0);
        let class = class_bytes(&lab.rtr, "wan0")
            .get("b9f:101")
            .copied()
            .unwrap_or(0);
        assert!(
            root >= last.0 && class >= last.1,
            "counters went back at reload {i}: {last:?} -> {:?}",
            (root, class)
        );
        last = (root, class);
        let has_extra = classes(&lab.rtr, "wan0").contains("ceil 3Mbit");
        assert_eq!(has_extra, i % 2 == 0, "reload {i}: extra circuit");
        std::thread::sleep(Duration::from_millis(30));
    }
    eprintln!(
        "100 reloads: {:.1} ms each",
        reload_time.as_secs_f64() * 10.0
    );
    let out = common::lab::finish(client, "udp client");
    common::lab::finish(server, "udp server");
    assert!(out.contains("200/200") || !out.contains("lost"), "{out}");
    assert!(
        last.1 > 0,
        "the paced flow did not go through the circuit's class"
    );
    assert!(
        !d.log_text().contains("shaping not applied"),
        "{}",
        d.log_text()
    );
}

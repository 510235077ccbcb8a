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

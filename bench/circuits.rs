//! What circuits cost the control plane: a daemon on the namespace router (tests/common/lab.rs)
//! shaping its WAN both ways, then reloads timed end to end (`bpfqos reload` returns once the
//! new configuration is applied): 10,000 circuits added to a running shaper (each with an
//! IPv4 host and an IPv6 /64, limits both ways: 20,000 HTB classes, 20,000 prefixes), one
//! circuit's rate changed, and a reload that changes nothing; next to `tc -batch` adding the
//! same 20,000 classes, the floor of doing it through the kernel, in the same run.
//!
//! Root only; prints, never asserts timings. Run: `sudo -E cargo bench --bench circuits`.
//! Host kernel: no CAKE or fq_codel here, so the leaves are HTB's own FIFOs (`qdisc 'fifo'`);
//! with CAKE or fq_codel every class also gets a leaf qdisc (twice the netlink messages).

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write;
use std::time::Duration;
use std::time::Instant;

use common::lab::Lab;

const CIRCUITS: u32 = 10_000;
const ROUNDS: usize = 5;

fn config(circuits: u32, changed_rate: u64) -> String {
    let mut s = String::from(
        "config globals 'globals'\n\toption log_level 'debug'\n\n\
         config interface 'lan'\n\toption device 'br-lan'\n\n\
         config interface 'wan'\n\toption device 'wan0'\n\toption upload '900000'\n\
         \toption download '900000'\n\toption qdisc 'fifo'\n\n",
    );
    for i in 0..circuits {
        let rate = if i == 0 { changed_rate } else { 10_000 };
        let _ = write!(
            s,
            "config circuit\n\toption name 'c{i}'\n\tlist ip '198.18.{}.{}'\n\
             \tlist ip 'fd00:80:{i:x}::/64'\n\toption upload '{rate}'\n\toption download '{rate}'\n\n",
            128 + i / 250,
            1 + i % 250
        );
    }
    s
}

/// The daemon's own timings of its last reloads (where the time goes).
fn timings(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains(" in ")
                && ["applied", "synchronised", "reloaded", "dumped"]
                    .iter()
                    .any(|w| l.contains(w))
        })
        .collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("circuits bench: needs root (namespaces, BPF); skipped");
        return;
    }
    let lab = Lab::new("bqb");
    let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
    let mut add = Vec::new();
    let mut change = Vec::new();
    let mut same = Vec::new();
    let mut remove = Vec::new();
    let mut tc_batch = Vec::new();
    let batch = lab.work.path.join("classes.tc");
    let mut text = String::new();
    // As bpfqos has them: one HTB per direction, each with a class per circuit.
    for dev in ["tcref0", "tcref1"] {
        let _ = writeln!(
            text,
            "qdisc replace dev {dev} root handle 1: htb default 10"
        );
        let _ = writeln!(
            text,
            "class replace dev {dev} parent 1: classid 1:1 htb rate 900mbit"
        );
        for i in 0..CIRCUITS {
            let _ = writeln!(
                text,
                "class replace dev {dev} parent 1:1 classid 1:{:x} htb rate 1kbit ceil 10mbit quantum 1514",
                0x100 + i
            );
        }
    }
    std::fs::write(&batch, text).unwrap();

    lab.config(&config(0, 10_000));
    let d = lab.daemon();
    let reload = |d: &common::daemon::Daemon| {
        let t = Instant::now();
        let out = d.client(&["reload"]);
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        assert!(
            out.status.success(),
            "{}\n{}",
            common::describe(&out),
            timings(&d.log_text())
        );
        ms
    };
    for round in 0..ROUNDS {
        lab.config(&config(CIRCUITS, 10_000));
        add.push(reload(&d));
        let classes = lab.rtr.sh("tc class show dev wan0 | wc -l");
        assert_eq!(
            classes.trim().parse::<u32>().unwrap_or(0),
            CIRCUITS + 2,
            "classes on wan0"
        );
        lab.config(&config(CIRCUITS, 20_000 + round as u64));
        change.push(reload(&d));
        same.push(reload(&d));
        lab.config(&config(0, 10_000));
        remove.push(reload(&d));
        // The reference: tc adds as many classes (both shapers' worth) on devices of its
        // own, a fresh pair each round (nothing of the last round's left).
        lab.rtr.sh("ip link del tcref0 2>/dev/null || true
             ip link add tcref0 type veth peer name tcref1
             ip link set tcref0 up && ip link set tcref1 up");
        let t = Instant::now();
        lab.rtr.sh(&format!("tc -batch {}", batch.display()));
        tc_batch.push(t.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(100));
    }
    rows.push((format!("add {CIRCUITS} circuits (reload)"), add));
    rows.push(("change one circuit's rate (reload)".into(), change));
    rows.push((
        format!("reload, nothing changed ({CIRCUITS} circuits)"),
        same,
    ));
    rows.push((format!("remove {CIRCUITS} circuits (reload)"), remove));
    rows.push((
        format!("reference: tc -batch, 2 x {CIRCUITS} HTB classes"),
        tc_batch,
    ));
    println!(
        "{:<48} {:>10} {:>10} {:>10}   ({ROUNDS} rounds)",
        "circuits, control plane (ms, wall)", "median", "min", "max"
    );
    for (name, v) in rows {
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(0.0, f64::max);
        println!("{name:<48} {:>10.1} {min:>10.1} {max:>10.1}", median(v));
    }
    println!(
        "where the last reloads' time went (daemon log):\n{}",
        timings(&d.log_text())
    );
    let st = d.status();
    println!(
        "daemon memory after the runs: {} (VmRSS of the daemon)",
        lab.rtr
            .sh("for p in $(pgrep -f 'bpfqos daemon'); do grep VmRSS /proc/$p/status; done | head -1")
            .trim()
    );
    drop(st);
}

//! Connection churn soak (issue 17; root only): the daemon in the namespace router of
//! `common::lab` with 20,000 long-lived flows (TCP and UDP, both families) and 500 new short
//! connections a second for a minute, ending by FIN, RST and conntrack's timeout
//! (tests/tools/churn.py, every echo compared with what was sent). Halfway through, the daemon
//! is stopped (SIGSTOP) while 40,000 conntrack events pile up behind it, so that its event
//! socket overflows (ENOBUFS) and it must resynchronise from a dump.
//!
//! Checked: no transfer broken or altered (long-lived flows included: they live through the
//! stop, the resync and the churn); the event loss counted in status; when the churn has
//! stopped, the flow table read from the pinned maps holds exactly the live connections
//! conntrack lists (each offloaded connection's two keys match its conntrack tuples; none that
//! ended remains; the only live ones missing are those the daemon counted as refused for room);
//! after the long-lived flows close, the table and its index are empty. RSS is printed after
//! warm-up and at the end (the bench, bench/soak.sh, runs it for 10 minutes and compares).
//!
//! Environment (for the bench): BPFQOS_SOAK_SECS (churn seconds, 60), BPFQOS_SOAK_LONG
//! (long-lived flows, 20000), BPFQOS_SOAK_RATE (short connections a second, 500). For
//! diagnosis: BPFQOS_SOAK_LOG (the daemon's log level), BPFQOS_SOAK_KEEP_LOG=path (its log,
//! copied on failure and at the end), BPFQOS_SOAK_CT_EVENTS=path (`conntrack -E` in the
//! router, with timestamps and ids), BPFQOS_SOAK_OFFLOAD=0 (the same churn without offload).
//!
//! Found so far (each fixed, with a test of its own): admissions lost after an event overflow
//! (the queue must be emptied before the dump), a connection torn down by a FIN brought back
//! by a dump, and conntrack keeping an entry ESTABLISHED after an RST whose sequence number it
//! could not check (the liberal request now clears its stale highest ACK).

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::io::BufRead;
use std::io::BufReader;
use std::io::Write;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::path::Path;
use std::process::Child;
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use bpfqos::dataplane::abi;
use common::lab::Lab;
use libbpf_rs::MapCore;
use libbpf_rs::MapFlags;
use libbpf_rs::MapHandle;

const LONG_PORT: u16 = 7000;
const SHORT_PORT: u16 = 7001;
/// Conntrack's UDP timeouts in the router: short UDP exchanges end by the first (unreplied or
/// young), long-lived UDP flows (an exchange every 5-15 s) live by the second.
const UDP_TIMEOUT: u64 = 10;
const UDP_TIMEOUT_STREAM: u64 = 30;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Raises the host's `nf_conntrack_max` (shared by every namespace's table) to at least what the
/// soak needs (20,000 long-lived connections, 30,000 in TIME_WAIT or CLOSE, 20,000 injected)
/// while it runs, and puts the old value back afterwards. Kernels on machines with less than
/// 4 GiB of memory default to 65,536.
struct ConntrackMax(Option<String>);

const CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

impl ConntrackMax {
    fn at_least(n: u64) -> Self {
        let was = std::fs::read_to_string(CONNTRACK_MAX).unwrap_or_default();
        match was.trim().parse::<u64>() {
            Ok(v) if v < n => {
                std::fs::write(CONNTRACK_MAX, n.to_string())
                    .unwrap_or_else(|e| panic!("raising {CONNTRACK_MAX} to {n}: {e}"));
                eprintln!("nf_conntrack_max raised from {v} to {n} for the soak");
                Self(Some(was))
            }
            _ => Self(None),
        }
    }
}

impl Drop for ConntrackMax {
    fn drop(&mut self) {
        if let Some(was) = &self.0 {
            let _ = std::fs::write(CONNTRACK_MAX, was.trim());
        }
    }
}

fn churn_py() -> String {
    common::repo()
        .join("tests/tools/churn.py")
        .display()
        .to_string()
}

/// One direction of a connection as the flow table keys it and conntrack lists it.
type Tuple = (u8, IpAddr, IpAddr, u16, u16);

/// The tuples the daemon's tables hold (read from the pinned maps: every slot of the index,
/// the entry it points at, the key in that entry), and how many slots are in use.
fn table_tuples(pin_dir: &Path) -> (BTreeSet<Tuple>, usize) {
    let mut tuples = BTreeSet::new();
    let mut slots = 0;
    for (entries, buckets) in [
        (abi::FLOWS4_MAP, abi::BUCKETS4_MAP),
        (abi::FLOWS6_MAP, abi::BUCKETS6_MAP),
    ] {
        let entries = MapHandle::from_pinned_path(pin_dir.join(entries)).unwrap();
        let buckets = MapHandle::from_pinned_path(pin_dir.join(buckets)).unwrap();
        for b in 0..abi::FLOW_BUCKETS {
            let bucket = buckets
                .lookup(&b.to_ne_bytes(), MapFlags::ANY)
                .unwrap()
                .unwrap();
            let bucket: abi::Bucket = abi::from_bytes(&bucket).unwrap();
            for s in bucket.slot.iter().filter(|&&s| s != 0) {
                slots += 1;
                let index = abi::slot_index(*s);
                let entry = entries
                    .lookup(&index.to_ne_bytes(), MapFlags::ANY)
                    .unwrap()
                    .unwrap();
                let key = abi::entry_key(&entry).unwrap();
                let t = if let Some(k) = abi::from_bytes::<abi::FlowKey4>(key) {
                    (
                        k.proto,
                        IpAddr::V4(Ipv4Addr::from(u32::from_be(k.saddr))),
                        IpAddr::V4(Ipv4Addr::from(u32::from_be(k.daddr))),
                        u16::from_be(k.sport),
                        u16::from_be(k.dport),
                    )
                } else {
                    let k: abi::FlowKey6 = abi::from_bytes(key).unwrap();
                    let addr = |w: [u32; 4]| {
                        let mut b = [0u8; 16];
                        for (i, x) in w.iter().enumerate() {
                            b[4 * i..4 * i + 4].copy_from_slice(&x.to_ne_bytes());
                        }
                        IpAddr::V6(Ipv6Addr::from(b))
                    };
                    (
                        k.proto,
                        addr(k.saddr),
                        addr(k.daddr),
                        u16::from_be(k.sport),
                        u16::from_be(k.dport),
                    )
                };
                assert!(tuples.insert(t), "two slots for {t:?}");
            }
        }
    }
    (tuples, slots)
}

/// One conntrack entry of `conntrack -L`: protocol, TCP state (None for UDP), both tuples.
struct CtEntry {
    line: String,
    state: Option<String>,
    orig: Tuple,
    reply: Tuple,
}

/// Conntrack's entries in `lab`'s router, both families (the independent oracle).
fn conntrack(lab: &Lab) -> Vec<CtEntry> {
    let text = lab
        .rtr
        .sh("conntrack -L -f ipv4 2>/dev/null; conntrack -L -f ipv6 2>/dev/null");
    let mut out = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let proto = match words.first() {
            Some(&"tcp") => 6u8,
            Some(&"udp") => 17,
            _ => continue,
        };
        let state = (proto == 6).then(|| words[3].to_string());
        let vals = |k: &str| -> Vec<&str> {
            words
                .iter()
                .filter_map(|w| w.strip_prefix(k))
                .collect::<Vec<_>>()
        };
        let (src, dst, sport, dport) = (vals("src="), vals("dst="), vals("sport="), vals("dport="));
        if src.len() < 2 || dst.len() < 2 || sport.len() < 2 || dport.len() < 2 {
            continue;
        }
        let t = |i: usize| -> Tuple {
            (
                proto,
                src[i].parse().unwrap(),
                dst[i].parse().unwrap(),
                sport[i].parse().unwrap(),
                dport[i].parse().unwrap(),
            )
        };
        out.push(CtEntry {
            line: line.to_string(),
            state,
            orig: t(0),
            reply: t(1),
        });
    }
    out
}

/// Reads `child`'s stdout lines until one starts with `want`, bounded.
fn wait_line(lines: &mut impl Iterator<Item = String>, want: &str, what: &str) -> String {
    for line in lines.by_ref() {
        eprintln!("{what}: {line}");
        if line.starts_with(want) {
            return line;
        }
    }
    panic!("{what} ended before printing {want:?}");
}

fn kill(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

#[test]
fn churn_for_a_minute_with_event_loss_breaks_nothing_and_leaves_the_table_exact() {
    let test = "churn_for_a_minute_with_event_loss_breaks_nothing_and_leaves_the_table_exact";
    if !common::require_root(test) {
        return;
    }
    if common::which("conntrack").is_none() {
        common::missing(test, "conntrack");
        return;
    }
    let secs = env_or("BPFQOS_SOAK_SECS", 60);
    let long = env_or("BPFQOS_SOAK_LONG", 20000);
    let rate = env_or("BPFQOS_SOAK_RATE", 500);
    let lab = Lab::new("sk");
    // (After the lab: its masquerade rule loads conntrack.)
    let _max = ConntrackMax::at_least(131_072);
    lab.rtr.sh(&format!(
        "sysctl -qw net.netfilter.nf_conntrack_udp_timeout={UDP_TIMEOUT} \
         net.netfilter.nf_conntrack_udp_timeout_stream={UDP_TIMEOUT_STREAM}"
    ));
    let log_level = std::env::var("BPFQOS_SOAK_LOG").unwrap_or_else(|_| "info".into());
    let offload = std::env::var("BPFQOS_SOAK_OFFLOAD").unwrap_or_else(|_| "1".into());
    lab.config(&format!(
        "config globals 'globals'\n\toption log_level '{log_level}'\n\toption offload '{offload}'\n\n\
         config interface 'lan'\n\toption device 'br-lan'\n\n\
         config interface 'wan'\n\toption device 'wan0'\n",
    ));
    let d = lab.daemon();
    let _events = std::env::var("BPFQOS_SOAK_CT_EVENTS").ok().map(|path| {
        lab.rtr
            .command("/bin/sh")
            .arg("-c")
            .arg(format!(
                "exec timeout 600 conntrack -E -o timestamp,id > {path} 2>&1"
            ))
            .spawn()
            .unwrap()
    });
    let pid = d.child.as_ref().unwrap().id();
    let bound = secs + 600;
    let mut server = lab
        .srv
        .command("/usr/bin/python3")
        .arg(churn_py())
        .args(["server", "--v4", "198.19.0.2", "--v6", "fd00:2::2"])
        .arg("--ports")
        .arg(format!("{LONG_PORT},{SHORT_PORT}"))
        .arg("--seconds")
        .arg(bound.to_string())
        .arg("--long")
        .arg(long.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut slines = BufReader::new(server.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    wait_line(&mut slines, "listening", "server");
    let report = lab.work.path.join("churn.json");
    let mut client = lab
        .lan
        .command("/usr/bin/python3")
        .arg(churn_py())
        .args(["client", "--v4", "198.19.0.2", "--v6", "fd00:2::2"])
        .arg("--long-port")
        .arg(LONG_PORT.to_string())
        .arg("--short-port")
        .arg(SHORT_PORT.to_string())
        .arg("--long")
        .arg(long.to_string())
        .arg("--rate")
        .arg(rate.to_string())
        .arg("--seconds")
        .arg(secs.to_string())
        .arg("--hold")
        .arg(bound.to_string())
        .arg("--report")
        .arg(&report)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut clines = BufReader::new(client.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    wait_line(&mut clines, "long-lived flows open", "client");
    let connections = |d: &common::daemon::Daemon| d.status()["offload"]["connections"].as_u64();
    // Warm-up: the long-lived flows offloaded (UDP ones once conntrack calls them assured).
    let warm = Instant::now();
    while connections(&d).unwrap_or(0) < long * 9 / 10 && warm.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(500));
    }
    let rss_warm = common::rss_kib(pid);
    eprintln!(
        "warm-up: {:?} connections offloaded after {:?}; RSS {rss_warm} KiB",
        connections(&d),
        warm.elapsed()
    );
    // RSS through the churn, every 10 s (printed, not judged: a memory figure is the bench's).
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let on = sampling.clone();
        std::thread::spawn(move || {
            let (start, mut samples) = (Instant::now(), Vec::new());
            while on.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(secs + 120) {
                let at = start.elapsed().as_secs();
                samples.push((
                    at,
                    common::rss_kib(pid),
                    common::status_kib(pid, "RssAnon:"),
                ));
                let next = Instant::now() + Duration::from_secs(10);
                while on.load(Ordering::Relaxed) && Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            samples
        })
    };

    // Halfway: stop the daemon while 20,000 conntrack entries are made and deleted (40,000
    // events) on top of the churn's, then let it go on. The data path's heartbeat lapses, so
    // offloaded flows take the kernel path meanwhile.
    std::thread::sleep(Duration::from_secs(secs / 2));
    let lost_before = d.status()["offload"]["manager"]["conntrack_events_lost"]
        .as_u64()
        .unwrap();
    eprintln!("stopping the daemon at {}", lab.rtr.sh("date +%T.%N"));
    d.signal("STOP");
    let ct = common::repo()
        .join("bench/ct_inject.py")
        .display()
        .to_string();
    let inject = lab.rtr.sh(&format!(
        "/usr/bin/python3 {ct} add --v4 10000 --v6 10000 && \
         /usr/bin/python3 {ct} delete --v4 10000 --v6 10000"
    ));
    d.signal("CONT");
    eprintln!("injected while stopped: {inject}");
    eprintln!("stop/inject window ended at {}", lab.rtr.sh("date +%T.%N"));

    wait_line(&mut clines, "churn stopped", "client");
    let rss_end = common::rss_kib(pid);
    sampling.store(false, Ordering::Relaxed);
    let samples = sampler.join().unwrap_or_default();
    let listed: Vec<String> = samples
        .iter()
        .map(|(t, rss, anon)| format!("{t}s {rss}/{anon}"))
        .collect();
    eprintln!("RSS every 10 s (VmRSS/RssAnon KiB): {}", listed.join(", "));
    let half = samples.len() / 2;
    let mean = |s: &[(u64, u64, u64)]| s.iter().map(|x| x.2).sum::<u64>() / s.len().max(1) as u64;
    eprintln!(
        "RssAnon mean over the first half of the churn {} KiB, over the second half {} KiB",
        mean(&samples[..half]),
        mean(&samples[half..])
    );
    let quiet: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    eprintln!("churn: {quiet}");
    eprintln!("RSS: {rss_warm} KiB after warm-up, {rss_end} KiB at the end of the churn");
    if quiet["errors"] != 0 {
        // What conntrack and the table say about the failed transfers' connections.
        let ports: Vec<String> = quiet["first_errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_str()?.split("from port ").nth(1)?.split(' ').next())
            .map(|p| format!("sport={p} "))
            .collect();
        let (table, _) = table_tuples(&lab.pin_dir);
        for e in conntrack(&lab) {
            if ports.iter().any(|p| e.line.contains(p.as_str())) {
                eprintln!(
                    "{} | in table: {} {}",
                    e.line,
                    table.contains(&e.orig),
                    table.contains(&e.reply)
                );
            }
        }
        for p in &ports {
            let p = p.trim_start_matches("sport=").trim();
            eprintln!(
                "client sockets of port {p}: {}\nserver sockets: {}",
                lab.lan
                    .sh(&format!("ss -tanoi '( sport = :{p} )' | tail -n +2")),
                lab.srv
                    .sh(&format!("ss -tanoi '( dport = :{p} )' | tail -n +2"))
            );
        }
        eprintln!("router conntrack -S: {}", lab.rtr.sh("conntrack -S"));
        if let Ok(path) = std::env::var("BPFQOS_SOAK_KEEP_LOG") {
            let _ = std::fs::copy(&d.log, path);
        }
    }
    assert_eq!(quiet["errors"], 0, "transfers failed: {quiet}");
    assert!(
        quiet["short_total"].as_u64().unwrap() > 0 && quiet["long_exchanges"].as_u64().unwrap() > 0,
        "{quiet}"
    );
    for kind in ["fin", "rst", "udp_timeout"] {
        assert!(quiet["short"][kind].as_u64().unwrap() > 0, "{quiet}");
    }
    let st = d.status();
    let lost = st["offload"]["manager"]["conntrack_events_lost"]
        .as_u64()
        .unwrap();
    assert!(
        lost > lost_before,
        "no event loss counted after the stop: {}",
        st["offload"]["manager"]
    );

    // Quiet: every short connection has ended (UDP ones by conntrack's timeout, after which
    // the daemon hears of their end). The table must then match conntrack's live connections.
    let quiet_at = Instant::now();
    let check = |final_try: bool| -> bool {
        let (table, slots) = table_tuples(&lab.pin_dir);
        let ct = conntrack(&lab);
        let live: Vec<&CtEntry> = ct
            .iter()
            .filter(|e| e.orig.4 == LONG_PORT)
            // What the daemon offloads: assured, and for TCP established.
            .filter(|e| e.line.contains("[ASSURED]"))
            .filter(|e| e.state.as_deref().is_none_or(|s| s == "ESTABLISHED"))
            .collect();
        let mut expected = BTreeSet::new();
        for e in &live {
            expected.insert(e.orig);
            expected.insert(e.reply);
        }
        let leaked: Vec<&Tuple> = table.difference(&expected).collect();
        let missed: Vec<&Tuple> = expected.difference(&table).collect();
        let missing = missed.len();
        let missed_lines: Vec<&str> = live
            .iter()
            .filter(|e| !table.contains(&e.orig))
            .take(4)
            .map(|e| e.line.as_str())
            .collect();
        let st = d.status();
        let refused = st["offload"]["manager"]["rejected"]["map_full"]
            .as_u64()
            .unwrap_or(0);
        let conns = st["offload"]["connections"].as_u64().unwrap();
        let ok = leaked.is_empty()
            && missing as u64 <= 2 * refused
            && slots == table.len()
            && conns as usize * 2 == table.len()
            && st["offload"]["flows"].as_u64() == Some(table.len() as u64);
        if final_try || ok {
            eprintln!(
                "table {} entries ({slots} slots, {conns} connections); conntrack {} live \
                 long-lived connections; missing {missing}, refused for room {refused}; \
                 leaked {}: {:?}; missing {:?} {missed_lines:#?}; manager {}",
                table.len(),
                live.len(),
                leaked.len(),
                leaked.iter().take(5).collect::<Vec<_>>(),
                missed.iter().take(6).collect::<Vec<_>>(),
                st["offload"]["manager"]
            );
        }
        if final_try {
            if let Ok(path) = std::env::var("BPFQOS_SOAK_KEEP_LOG") {
                let _ = std::fs::copy(&d.log, path);
            }
            assert!(leaked.is_empty(), "entries for connections that ended");
            assert!(
                missing as u64 <= 2 * refused,
                "live connections not offloaded"
            );
            assert_eq!(slots, table.len());
            assert_eq!(
                conns as usize * 2,
                table.len(),
                "status disagrees with the maps"
            );
        }
        ok
    };
    let limit = Duration::from_secs(UDP_TIMEOUT_STREAM + 20);
    while !check(false) {
        if quiet_at.elapsed() > limit {
            check(true);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        table_tuples(&lab.pin_dir).0.len() as u64 >= long * 2 * 9 / 10,
        "most long-lived flows offloaded"
    );

    // Finish: the long-lived flows close (TCP by FIN; UDP ones stop and time out). Every
    // exchange up to here was checked; the table must empty.
    writeln!(client.stdin.as_mut().unwrap(), "finish").unwrap();
    wait_line(&mut clines, "done", "client");
    let done: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    eprintln!("done: {done}");
    assert_eq!(done["errors"], 0, "long-lived flows broke: {done}");
    assert_eq!(client.wait().unwrap().code(), Some(0));
    let closing = Instant::now();
    // Long-lived UDP entries expire up to a refresh period (a third of the timeout) plus the
    // timeout after their last packet, and conntrack's garbage collector reports them late.
    let limit = Duration::from_secs(3 * UDP_TIMEOUT_STREAM);
    loop {
        let (table, slots) = table_tuples(&lab.pin_dir);
        let conns = connections(&d);
        if table.is_empty() && slots == 0 && conns == Some(0) {
            break;
        }
        assert!(
            closing.elapsed() < limit,
            "table not empty {:?} after the flows closed: {} entries, {slots} slots, {conns:?} \
             connections; first {:?}",
            closing.elapsed(),
            table.len(),
            table.iter().take(5).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!("table empty {:?} after the flows closed", closing.elapsed());
    if let Ok(path) = std::env::var("BPFQOS_SOAK_KEEP_LOG") {
        let _ = std::fs::copy(&d.log, path);
    }
    kill(server);
}

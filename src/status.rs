//! The status document: what `bpfqos status`, `ubus call bpfqos status` and LuCI show.
//!
//! The daemon assembles it from sections that the modules owning the numbers build
//! ([`OffloadStatus`] and [`FlowStatus`] from the flow manager, [`AttachPoint`] and
//! [`DatapathStats`] from the data plane, [`InterfaceStatus`] from the interfaces); clients
//! render it. The JSON shape is a public interface (the rpcd plugin and the LuCI page read it),
//! so fields are only ever added, and a section an older daemon did not send reads as empty.

use std::fmt::Write;

use serde::Deserialize;
use serde::Serialize;

pub use crate::dataplane::attach::AttachMode;
pub use crate::dataplane::attach::AttachPoint;
pub use crate::dataplane::attach::Hook;
pub use crate::dataplane::stats::DatapathStats;
pub use crate::dataplane::stats::ShapeStats;
pub use crate::offload::report::FlowStatus;
pub use crate::offload::report::ManagerStats;
pub use crate::offload::report::OffloadStatus;
pub use crate::qos::status::CircuitStatus;
pub use crate::qos::status::ShaperStatus;
pub use crate::rtt::RttStatus;
pub use crate::rtt::RttSummary;

/// The whole status document.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    /// bpfqos version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// Configuration state.
    pub config: ConfigStatus,
    /// Flow offload summary.
    pub offload: OffloadStatus,
    /// Where the data path is attached.
    pub attach: Vec<AttachPoint>,
    /// Configured interfaces.
    pub interfaces: Vec<InterfaceStatus>,
    /// Offloaded connections with their counters.
    #[serde(default)]
    pub flows: Vec<FlowStatus>,
    /// The data path's own counters (packets passed by reason, redirected, seen).
    #[serde(default)]
    pub datapath: DatapathStats,
    /// Shaping as a whole: the data path's steering and classification.
    #[serde(default)]
    pub shaping: ShapingStatus,
    /// Configured circuits with their counters (at most
    /// [`crate::qos::status::MAX_LISTED_CIRCUITS`]: the busiest, when there are more).
    #[serde(default)]
    pub circuits: Vec<CircuitStatus>,
    /// How many circuits are configured (more than `circuits` lists when there are many).
    #[serde(default)]
    pub circuits_total: usize,
    /// Passive latency monitoring as a whole: counters and the slowest flow halves.
    #[serde(default)]
    pub rtt: RttStatus,
    /// CPU steering: the CPU set, per device whether it steers and why, frames per CPU.
    #[serde(default)]
    pub steering: crate::steering::SteeringStatus,
    /// How long single events kept the daemon's event loop (the longest, since start and over
    /// the last minute, and of which kind): what every other event waited.
    #[serde(default)]
    pub event_loop: EventLoopStatus,
}

/// Shaping as a whole.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ShapingStatus {
    /// The download steering's and the circuit classification's packet counters.
    pub datapath: ShapeStats,
    /// Connections of circuits' hosts behind NAT the data path classifies by their WAN-side
    /// tuple.
    pub circuit_nat_entries: u64,
    /// Why circuits are not (all) in use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_error: Option<String>,
}

/// A configured interface.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InterfaceStatus {
    /// UCI section name.
    pub name: String,
    /// Device, when resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Whether offload is enabled on it.
    pub offload: bool,
    /// Configured upload shaping rate (kbit/s, 0 = none).
    pub upload_kbit: u64,
    /// Configured download shaping rate (kbit/s, 0 = none).
    pub download_kbit: u64,
    /// Problem preventing it from being used, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its shapers, when it has a rate configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shaper: Option<ShaperStatus>,
    /// Latency of the flows through it, WAN and LAN side, over the window (`null` with
    /// passive RTT off).
    #[serde(default)]
    pub rtt: Option<RttSummary>,
    /// It faces the Internet (`option wan`; by default shaped, or holding a default route):
    /// what is timed on its devices is WAN-side latency.
    #[serde(default)]
    pub wan: bool,
    /// What autorate does on it (`null`: its rates are fixed).
    #[serde(default)]
    pub autorate: Option<crate::autorate::AutorateStatus>,
}

/// Configuration state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConfigStatus {
    /// The UCI file in use.
    pub file: String,
    /// Warnings from the running configuration (unknown options...).
    pub warnings: Vec<String>,
    /// Error of the last rejected reload, if the last reload failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reload_error: Option<String>,
    /// Number of successful reloads since start.
    pub reloads: u64,
}

/// A count, or "-" when the shaper does not keep it.
fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn render_shaper(s: &mut String, sh: &ShaperStatus) {
    for (dir, d) in [("upload", &sh.upload), ("download", &sh.download)] {
        let Some(d) = d else { continue };
        let _ = writeln!(
            s,
            "    {dir:<8} {:<14} {:<8} {:<14} sent {} B / {} pkts  drops {}  ecn {}  backlog {} B",
            d.device,
            d.qdisc,
            kbit(d.rate_kbit),
            opt(d.bytes),
            opt(d.packets),
            opt(d.drops),
            opt(d.ecn_marks),
            opt(d.backlog_bytes)
        );
    }
    if let Some(e) = &sh.error {
        let _ = writeln!(s, "    shaping error: {e}");
    }
}

fn render_autorate(s: &mut String, a: &crate::autorate::AutorateStatus) {
    let _ = writeln!(
        s,
        "    autorate: {}  latency above base {} (median {}, threshold {})  changes {} (cuts {}){}",
        if a.bloated { "BUFFERBLOAT" } else { "ok" },
        ms(a.excess_p25_us),
        ms(a.excess_median_us),
        ms(Some(a.threshold_us)),
        a.changes,
        a.cuts,
        if a.failures > 0 {
            format!("  failed changes {}", a.failures)
        } else {
            String::new()
        }
    );
    for (dir, d) in [("upload", &a.upload), ("download", &a.download)] {
        let Some(d) = d else { continue };
        let _ = writeln!(
            s,
            "      {dir:<8} {} (base {}, {}..{})  carrying {}{}",
            kbit(d.rate_kbit),
            kbit(d.base_kbit),
            kbit(d.min_kbit),
            kbit(d.max_kbit),
            d.achieved_kbit
                .map_or("-".into(), |k| if k == 0 { "0".into() } else { kbit(k) }),
            d.load_pct.map_or(String::new(), |p| format!(" ({p} %)"))
        );
    }
    if let Some(e) = &a.last_error {
        let _ = writeln!(s, "      last error: {e}");
    }
    for d in a.decisions.iter().take(3) {
        let _ = writeln!(
            s,
            "      {:>6.1} s ago {:<8} {} -> {}: {}",
            d.ago_s,
            d.direction,
            kbit(d.from_kbit),
            kbit(d.to_kbit),
            d.why
        );
    }
}

fn render_circuits(s: &mut String, st: &Status) {
    if st.circuits.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\ncircuits ({}):",
        st.circuits_total.max(st.circuits.len())
    );
    let counters = |c: &Option<crate::qos::status::CircuitCounters>| {
        c.as_ref().map_or_else(
            || "-".to_string(),
            |c| format!("{} B / {} pkts, drops {}", c.bytes, c.packets, c.drops),
        )
    };
    for c in st.circuits.iter().take(50) {
        let _ = writeln!(
            s,
            "  {:<16} up {:<14} down {:<14} {}",
            c.name,
            kbit(c.upload_kbit),
            kbit(c.download_kbit),
            c.ips.join(" ")
        );
        let _ = writeln!(
            s,
            "    upload {}  download {}",
            counters(&c.upload),
            counters(&c.download)
        );
    }
    if st.circuits.len() > 50 {
        let _ = writeln!(
            s,
            "  ... {} more (bpfqos status --json)",
            st.circuits.len() - 50
        );
    }
    let d = &st.shaping.datapath;
    let _ = writeln!(
        s,
        "  classified: {} upload / {} download packets; {} connections behind NAT",
        d.circuit_upload, d.circuit_download, st.shaping.circuit_nat_entries
    );
    if let Some(e) = &st.shaping.circuit_error {
        let _ = writeln!(s, "  error: {e}");
    }
}

fn kbit(k: u64) -> String {
    match k {
        0 => "-".to_string(),
        k if k >= 1000 && k % 1000 == 0 => format!("{} Mbit/s", k / 1000),
        k => format!("{k} kbit/s"),
    }
}

/// Milliseconds with one decimal (microseconds below one), or `-` without a measurement.
fn ms(us: Option<u64>) -> String {
    match us {
        None => "-".to_string(),
        Some(u) if u < 1000 => format!("{u} µs"),
        Some(u) => format!("{:.1} ms", u as f64 / 1000.0),
    }
}

/// `wan min/median/p95 (n)  lan ...`, in ms.
fn summary(r: &RttSummary) -> String {
    let side = |x: &crate::rtt::SideRtt| {
        if x.samples == 0 {
            "-".to_string()
        } else {
            format!(
                "{}/{}/{} ({} samples)",
                ms(x.min_us),
                ms(x.median_us),
                ms(x.p95_us),
                x.samples
            )
        }
    };
    format!(
        "min/median/p95 over the last window: wan {}  lan {}",
        side(&r.wan),
        side(&r.lan)
    )
}

fn render_rtt(s: &mut String, r: &RttStatus) {
    let _ = writeln!(
        s,
        "\nlatency monitoring: {}  flow halves {}/{}  samples {}  probes {} (expired {}, \
         discarded {})",
        if r.enabled { "on" } else { "off" },
        r.halves,
        r.halves_max,
        r.samples,
        r.probes,
        r.expired,
        r.discarded
    );
    for h in r.top.iter().take(10) {
        let _ = writeln!(
            s,
            "  {:<3} {} -> {}  srtt {}  min {}  retrans {}/{}",
            h.side,
            h.src,
            h.dst,
            ms(h.srtt_us),
            ms(h.min_us),
            h.retransmits,
            h.packets
        );
    }
}

/// `event loop: N events, longest X ms (kind), last minute Y ms (kind)`; nothing before any.
fn render_event_loop(s: &mut String, ev: &EventLoopStatus) {
    if let (Some(max), Some(what)) = (ev.max_ms, &ev.max_what) {
        let _ = write!(
            s,
            "\nevent loop: {} events, longest {max:.1} ms ({what})",
            ev.handled
        );
        if let (Some(m), Some(w)) = (ev.max_last_minute_ms, &ev.max_last_minute_what) {
            let _ = write!(s, ", last minute {m:.1} ms ({w})");
        }
        s.push('\n');
    }
}

fn render_steering(s: &mut String, st: &crate::steering::SteeringStatus) {
    let _ = write!(
        s,
        "\nCPU steering: {} (option steering '{}')",
        if st.active { "on" } else { "off" },
        st.mode
    );
    if st.active {
        let _ = write!(s, "  CPUs {:?}  queue {} frames", st.cpus, st.queue);
    }
    if let Some(p) = &st.problem {
        let _ = write!(s, "  ({p})");
    }
    s.push('\n');
    for d in &st.devices {
        let _ = writeln!(s, "  {:<16} {}", d.device, d.reason);
    }
    for c in &st.per_cpu {
        let _ = writeln!(
            s,
            "  cpu {:<3} steered to it {}  kept where received {}  delivered {}",
            c.cpu, c.steered, c.kept, c.delivered
        );
    }
}

impl Status {
    /// Renders the human-readable view.
    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = writeln!(s, "bpfqos {}, up {} s", self.version, self.uptime_s);
        let _ = writeln!(
            s,
            "offload: {}  connections {}  flow entries {}{}  packets {}  bytes {}",
            if self.offload.enabled { "on" } else { "off" },
            self.offload.connections,
            self.offload.flows,
            self.offload
                .flows_max
                .map(|m| format!(" (tables of {m} per family)"))
                .unwrap_or_default(),
            self.offload.packets,
            self.offload.bytes
        );
        let _ = writeln!(s, "\nattach points:");
        if self.attach.is_empty() {
            let _ = writeln!(s, "  (none)");
        }
        for a in &self.attach {
            let _ = write!(
                s,
                "  {:<16} ifindex {:<5} {:<4} {}",
                a.device,
                a.ifindex,
                if a.hook == Hook::Xdp { "xdp" } else { "tc" },
                a.mode.name()
            );
            let _ = write!(
                s,
                "  rx {} pkts / {} B  tx {} pkts / {} B",
                a.rx_packets, a.rx_bytes, a.tx_packets, a.tx_bytes
            );
            if let Some(r) = &a.fallback_reason {
                let _ = write!(s, "  ({r})");
            }
            s.push('\n');
        }
        if !self.flows.is_empty() {
            let _ = writeln!(s, "\noffloaded connections ({}):", self.flows.len());
            for f in self.flows.iter().take(20) {
                let _ = write!(
                    s,
                    "  {}  pkts {}/{}  bytes {}",
                    f.orig, f.packets_orig, f.packets_reply, f.bytes
                );
                if let Some(r) = &f.rtt {
                    let _ = write!(
                        s,
                        "  rtt wan {} lan {}  retrans {}",
                        ms(r.wan_us),
                        ms(r.lan_us),
                        r.retransmits
                    );
                }
                s.push('\n');
            }
            if self.flows.len() > 20 {
                let _ = writeln!(
                    s,
                    "  ... {} more (bpfqos status --json)",
                    self.flows.len() - 20
                );
            }
        }
        let _ = writeln!(s, "\ninterfaces:");
        if self.interfaces.is_empty() {
            let _ = writeln!(s, "  (none configured)");
        }
        for i in &self.interfaces {
            let _ = write!(
                s,
                "  {:<12} {:<16} offload {:<3} up {:<14} down {}",
                i.name,
                i.device.as_deref().unwrap_or("?"),
                if i.offload { "on" } else { "off" },
                kbit(i.upload_kbit),
                kbit(i.download_kbit)
            );
            if let Some(e) = &i.error {
                let _ = write!(s, "  error: {e}");
            }
            s.push('\n');
            if let Some(r) = &i.rtt {
                let _ = writeln!(s, "    latency {}", summary(r));
            }
            if let Some(sh) = &i.shaper {
                render_shaper(&mut s, sh);
            }
            if let Some(a) = &i.autorate {
                render_autorate(&mut s, a);
            }
        }
        render_circuits(&mut s, self);
        render_rtt(&mut s, &self.rtt);
        render_steering(&mut s, &self.steering);
        render_event_loop(&mut s, &self.event_loop);
        let _ = writeln!(
            s,
            "\nconfig: {} (reloads: {})",
            self.config.file, self.config.reloads
        );
        for w in &self.config.warnings {
            let _ = writeln!(s, "  warning: {w}");
        }
        if let Some(e) = &self.config.last_reload_error {
            let _ = writeln!(s, "  last reload rejected, running config kept: {e}");
        }
        s
    }
}

/// The `event_loop` status section. Durations in milliseconds; `null` before anything ran.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventLoopStatus {
    /// Events handled since start.
    pub handled: u64,
    /// Longest one event kept the loop since start.
    pub max_ms: Option<f64>,
    /// Which kind of event that was (`tick`, `conntrack`, `netlink`, `request`, ...).
    pub max_what: Option<String>,
    /// Longest over the last one to two minutes (the minute in progress and the one before).
    pub max_last_minute_ms: Option<f64>,
    /// Which kind of event that was.
    pub max_last_minute_what: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_documented_shape() {
        let st = Status {
            version: "0.1.0".into(),
            uptime_s: 3,
            attach: vec![AttachPoint {
                device: "eth0".into(),
                ifindex: 2,
                hook: Hook::Xdp,
                mode: AttachMode::Native,
                fallback_reason: None,
                tc_ingress: false,
                tc_egress: false,
                rtt: false,
                rx_packets: 0,
                rx_bytes: 0,
                tx_packets: 0,
                tx_bytes: 0,
            }],
            ..Default::default()
        };
        let v = serde_json::to_value(&st).unwrap_or_default();
        assert_eq!(v["version"], "0.1.0");
        assert_eq!(v["uptime_s"], 3);
        assert_eq!(v["offload"]["enabled"], false);
        assert_eq!(v["offload"]["flows"], 0);
        assert_eq!(v["attach"][0]["hook"], "xdp");
        assert_eq!(v["attach"][0]["mode"], "native");
        assert!(st.render().contains("eth0"));
        // Passive RTT: the section is always there; off, its figures are absent, not 0.
        assert_eq!(v["rtt"]["enabled"], false);
        assert!(v["rtt"]["top"].as_array().is_some_and(Vec::is_empty));
    }

    #[test]
    fn latency_keeps_its_contract_in_json_and_text() {
        let side = |median: Option<u64>, samples: u64| crate::rtt::SideRtt {
            min_us: median.map(|m| m - 500),
            median_us: median,
            p95_us: median.map(|m| m + 4000),
            samples,
            packets: 100,
            retransmits: 1,
        };
        let st = Status {
            interfaces: vec![InterfaceStatus {
                name: "wan".into(),
                wan: true,
                rtt: Some(RttSummary {
                    wan: side(Some(40_500), 12),
                    lan: side(None, 0),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let v = serde_json::to_value(&st).unwrap();
        let r = &v["interfaces"][0]["rtt"];
        assert_eq!(r["wan"]["median_us"], 40_500);
        assert_eq!(r["wan"]["samples"], 12);
        assert!(r["lan"]["median_us"].is_null() && r["lan"]["min_us"].is_null());
        assert_eq!(r["lan"]["samples"], 0);
        assert_eq!(v["interfaces"][0]["wan"], true);
        let text = st.render();
        assert!(
            text.contains("wan 40.0 ms/40.5 ms/44.5 ms (12 samples)  lan -"),
            "{text}"
        );
        assert_eq!(ms(Some(850)), "850 µs");
    }

    #[test]
    fn rates_are_human() {
        assert_eq!(kbit(0), "-");
        assert_eq!(kbit(40000), "40 Mbit/s");
        assert_eq!(kbit(1500), "1500 kbit/s");
    }

    #[test]
    fn autorate_keeps_its_contract_in_json_and_text() {
        use crate::autorate::AutorateDirection;
        use crate::autorate::AutorateStatus;
        use crate::autorate::DecisionStatus;
        let st = Status {
            interfaces: vec![
                InterfaceStatus {
                    name: "wan".into(),
                    autorate: Some(AutorateStatus {
                        download: Some(AutorateDirection {
                            rate_kbit: 17_500,
                            applied_kbit: Some(17_500),
                            base_kbit: 20_000,
                            min_kbit: 4_000,
                            max_kbit: 24_000,
                            achieved_kbit: Some(16_900),
                            load_pct: Some(96),
                        }),
                        threshold_us: 8_000,
                        bloated: true,
                        excess_p25_us: Some(12_400),
                        changes: 3,
                        cuts: 1,
                        decisions: vec![DecisionStatus {
                            ago_s: 0.4,
                            direction: "download".into(),
                            from_kbit: 20_000,
                            to_kbit: 17_500,
                            reason: "bufferbloat".into(),
                            why: "latency 12.4 ms above the connections' base".into(),
                        }],
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                InterfaceStatus {
                    name: "lan".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let v = serde_json::to_value(&st).unwrap();
        let a = &v["interfaces"][0]["autorate"];
        assert_eq!(a["download"]["rate_kbit"], 17_500);
        assert_eq!(a["download"]["load_pct"], 96);
        assert!(a["upload"].is_null(), "a fixed direction is null");
        assert!(a["excess_median_us"].is_null() && a["samples"].is_null());
        assert_eq!(a["decisions"][0]["reason"], "bufferbloat");
        for k in ["upload_kbit", "download_kbit", "excess_us"] {
            assert!(a["history"][k].is_array(), "{k}");
        }
        assert!(v["interfaces"][1]["autorate"].is_null());
        let text = st.render();
        assert!(text.contains("autorate: BUFFERBLOAT"), "{text}");
        assert!(
            text.contains("download 17500 kbit/s (base 20 Mbit/s"),
            "{text}"
        );
        assert!(text.contains("20 Mbit/s -> 17500 kbit/s"), "{text}");
    }
}

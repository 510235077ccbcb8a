//! The `shaper` section of an interface in `bpfqos status`: per direction the configured rate
//! and what the shaper counted (the root qdisc's counters, CAKE's tins, fq_codel's ECN marks).
//! A counter the shaper does not keep is `null`, never 0.

use serde::Deserialize;
use serde::Serialize;

use super::circuits::CircuitIds;
use super::client::TcSocket;
use super::plan;
use super::plan::CircuitLimit;
use super::plan::Direction;
use super::plan::Params;
use super::tc;
use super::tc::Handle;
use crate::dataplane::Device;

/// One interface's shapers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShaperStatus {
    /// Upload (egress of the L3 device).
    pub upload: Option<DirectionStatus>,
    /// Download (the interface's shaper device).
    pub download: Option<DirectionStatus>,
    /// Why the interface is not shaped as configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One direction's shaper.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DirectionStatus {
    /// The device whose root qdisc shapes.
    pub device: String,
    /// `cake`, `fq_codel` or `fifo`.
    pub qdisc: String,
    /// Shaped rate, kbit/s.
    pub rate_kbit: u64,
    /// Link-layer overhead per packet, bytes.
    pub overhead: i32,
    /// Bytes sent.
    pub bytes: Option<u64>,
    /// Packets sent.
    pub packets: Option<u64>,
    /// Packets dropped (queue overflow or AQM).
    pub drops: Option<u64>,
    /// Times the rate held a packet back.
    pub overlimits: Option<u64>,
    /// ECN marks (CAKE, fq_codel; null for FIFO).
    pub ecn_marks: Option<u64>,
    /// Bytes queued now.
    pub backlog_bytes: Option<u64>,
    /// Packets queued now.
    pub backlog_packets: Option<u64>,
    /// CAKE's tins (empty for the other kinds); with circuits, summed over the CAKE leaves
    /// (delays: the largest).
    pub tins: Vec<TinStatus>,
    /// How many circuits have a class of their own here (their counters are in the
    /// status' `circuits` section).
    pub circuit_classes: usize,
    /// The circuits' classes with their counters (summed into `circuits`; not sent: with
    /// thousands of circuits they would be most of the document).
    #[serde(skip)]
    pub circuits: Vec<CircuitClassStatus>,
}

/// A configured circuit: its hosts, limits, and what its classes counted, summed over the
/// shaped interfaces (`null` where no shaper limits it in that direction).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CircuitStatus {
    /// Its name.
    pub name: String,
    /// Its prefixes.
    pub ips: Vec<String>,
    /// Configured upload limit, kbit/s (0: none).
    pub upload_kbit: u64,
    /// Configured download limit, kbit/s (0: none).
    pub download_kbit: u64,
    /// Upload counters.
    pub upload: Option<CircuitCounters>,
    /// Download counters.
    pub download: Option<CircuitCounters>,
    /// Latency of its hosts' flows, both sides, over the window (with passive RTT on; else
    /// `null`).
    #[serde(default)]
    pub rtt: Option<crate::rtt::RttSummary>,
}

/// Counters of a circuit's classes in one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CircuitCounters {
    /// Bytes sent.
    pub bytes: u64,
    /// Packets sent.
    pub packets: u64,
    /// Packets dropped.
    pub drops: u64,
    /// Bytes queued now.
    pub backlog_bytes: u64,
}

impl CircuitCounters {
    fn add(&mut self, c: &CircuitClassStatus) {
        self.bytes += c.bytes.unwrap_or(0);
        self.packets += c.packets.unwrap_or(0);
        self.drops += c.drops.unwrap_or(0);
        self.backlog_bytes += c.backlog_bytes.unwrap_or(0);
    }
}

/// At most this many circuits are listed in the status document (the busiest, when there
/// are more): it travels over ubus to LuCI, whose messages are limited to 1 MiB.
pub const MAX_LISTED_CIRCUITS: usize = 1000;

/// The `circuits` section: the configured circuits with their counters from `shapers`, in
/// configuration order; beyond [`MAX_LISTED_CIRCUITS`], only the ones that sent the most.
pub fn circuits_status(
    circuits: &[crate::config::Circuit],
    shapers: &[&ShaperStatus],
) -> Vec<CircuitStatus> {
    let by_name: std::collections::HashMap<(&str, bool), CircuitCounters> = {
        let mut m: std::collections::HashMap<(&str, bool), CircuitCounters> =
            std::collections::HashMap::new();
        for s in shapers {
            for (d, upload) in [(&s.upload, true), (&s.download, false)] {
                for class in d.iter().flat_map(|d| d.circuits.iter()) {
                    m.entry((class.name.as_str(), upload))
                        .or_default()
                        .add(class);
                }
            }
        }
        m
    };
    let mut out: Vec<CircuitStatus> = circuits
        .iter()
        .map(|c| CircuitStatus {
            name: c.name.clone(),
            ips: c.ips.iter().map(ToString::to_string).collect(),
            upload_kbit: c.upload_kbit,
            download_kbit: c.download_kbit,
            upload: by_name.get(&(c.name.as_str(), true)).cloned(),
            download: by_name.get(&(c.name.as_str(), false)).cloned(),
            rtt: None,
        })
        .collect();
    if out.len() > MAX_LISTED_CIRCUITS {
        let bytes = |c: &CircuitStatus| {
            c.upload.as_ref().map_or(0, |x| x.bytes) + c.download.as_ref().map_or(0, |x| x.bytes)
        };
        let mut order: Vec<usize> = (0..out.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(bytes(&out[i])));
        let mut keep: Vec<usize> = order.into_iter().take(MAX_LISTED_CIRCUITS).collect();
        keep.sort_unstable();
        let mut n = 0;
        out.retain(|_| {
            let k = keep.binary_search(&n).is_ok();
            n += 1;
            k
        });
    }
    out
}

/// A circuit's class in one shaper.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CircuitClassStatus {
    /// The circuit's name.
    pub name: String,
    /// Its limit here, kbit/s.
    pub rate_kbit: u64,
    /// Bytes sent (null: the class could not be read).
    pub bytes: Option<u64>,
    /// Packets sent.
    pub packets: Option<u64>,
    /// Packets dropped (class and leaf).
    pub drops: Option<u64>,
    /// ECN marks of its leaf (null for FIFO).
    pub ecn_marks: Option<u64>,
    /// Bytes queued now.
    pub backlog_bytes: Option<u64>,
    /// Packets queued now.
    pub backlog_packets: Option<u64>,
}

/// One CAKE tin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TinStatus {
    /// Bytes sent.
    pub bytes: u64,
    /// Packets sent.
    pub packets: u64,
    /// Packets dropped.
    pub drops: u64,
    /// Packets ECN-marked.
    pub ecn_marks: u64,
    /// Bytes queued.
    pub backlog_bytes: u64,
    /// Peak queue delay, µs.
    pub peak_delay_us: u64,
    /// Average queue delay, µs.
    pub avg_delay_us: u64,
    /// Base queue delay, µs.
    pub base_delay_us: u64,
}

impl DirectionStatus {
    /// The status of the shaper of `params` on `device`, with its counters read from the
    /// kernel when `tc` can (`null` counters otherwise), and its circuits' classes.
    pub fn read(
        tc: Option<&TcSocket>,
        device: &Device,
        params: &Params,
        circuits: &[CircuitLimit],
        ids: &CircuitIds,
    ) -> Self {
        let mut st = DirectionStatus {
            device: device.name.clone(),
            qdisc: match params.qdisc {
                crate::config::Qdisc::Cake => "cake",
                crate::config::Qdisc::FqCodel => "fq_codel",
                crate::config::Qdisc::Fifo => "fifo",
            }
            .to_string(),
            rate_kbit: params.rate_kbit,
            overhead: params.overhead,
            ..Default::default()
        };
        st.circuit_classes = circuits.len();
        st.circuits = circuits
            .iter()
            .map(|c| CircuitClassStatus {
                name: ids.name(c.id).unwrap_or_default().to_string(),
                rate_kbit: c.rate_kbit,
                ..Default::default()
            })
            .collect();
        let Some(qdiscs) = tc.and_then(|tc| tc.qdiscs(device.ifindex).ok()) else {
            return st;
        };
        if !circuits.is_empty() {
            if let Some(classes) = tc.and_then(|tc| tc.classes(device.ifindex).ok()) {
                for (c, out) in circuits.iter().zip(st.circuits.iter_mut()) {
                    circuit_counters(c.id, &classes, &qdiscs, out);
                }
            }
        }
        let Some(root) = qdiscs.iter().find(|d| d.item.parent == Handle::ROOT) else {
            return st;
        };
        let s = &root.stats;
        st.bytes = Some(s.bytes);
        st.packets = Some(s.packets);
        st.drops = Some(s.drops);
        st.overlimits = Some(s.overlimits);
        st.backlog_bytes = Some(u64::from(s.backlog));
        st.backlog_packets = Some(u64::from(s.qlen));
        // CAKE counts its own marks; under HTB, the fq_codel leaf does.
        st.ecn_marks = s.ecn_marks.or_else(|| {
            let leaves: Vec<u64> = qdiscs
                .iter()
                .filter(|d| d.item.parent != Handle::ROOT)
                .filter_map(|d| d.stats.ecn_marks)
                .collect();
            (!leaves.is_empty()).then(|| leaves.iter().sum())
        });
        st.tins = s
            .tins
            .iter()
            .map(|t| TinStatus {
                bytes: t.bytes,
                packets: t.packets,
                drops: t.drops,
                ecn_marks: t.ecn_marks,
                backlog_bytes: t.backlog,
                peak_delay_us: t.peak_delay_us,
                avg_delay_us: t.avg_delay_us,
                base_delay_us: t.base_delay_us,
            })
            .collect();
        if st.tins.is_empty() {
            st.tins = leaf_tins(&qdiscs);
        }
        st
    }

    /// Which way it shapes, for people.
    pub fn direction_name(d: Direction) -> &'static str {
        match d {
            Direction::Upload => "upload",
            Direction::Download => "download",
        }
    }
}

/// The counters of circuit `id`'s class and leaf.
fn circuit_counters(
    id: u16,
    classes: &[tc::Dumped<tc::Class>],
    qdiscs: &[tc::Dumped<tc::Qdisc>],
    out: &mut CircuitClassStatus,
) {
    let handle = plan::circuit_class(id);
    let Some(class) = classes.iter().find(|c| c.item.handle == handle) else {
        return;
    };
    let leaf = qdiscs.iter().find(|q| q.item.parent == handle);
    let s = &class.stats;
    out.bytes = Some(s.bytes);
    out.packets = Some(s.packets);
    // HTB counts drops at the class only for what its own queue dropped; a leaf's AQM
    // drops are the leaf's.
    out.drops = Some(s.drops.max(leaf.map_or(0, |l| l.stats.drops)));
    out.ecn_marks = leaf.and_then(|l| l.stats.ecn_marks);
    let (backlog, qlen) = leaf.map_or((s.backlog, s.qlen), |l| (l.stats.backlog, l.stats.qlen));
    out.backlog_bytes = Some(u64::from(backlog));
    out.backlog_packets = Some(u64::from(qlen));
}

/// CAKE's tins summed over the CAKE leaves of an HTB tree (delays: the largest).
fn leaf_tins(qdiscs: &[tc::Dumped<tc::Qdisc>]) -> Vec<TinStatus> {
    let mut out: Vec<TinStatus> = Vec::new();
    for q in qdiscs.iter().filter(|q| q.item.parent != Handle::ROOT) {
        for (i, t) in q.stats.tins.iter().enumerate() {
            if out.len() <= i {
                out.resize(i + 1, TinStatus::default());
            }
            let o = &mut out[i];
            o.bytes += t.bytes;
            o.packets += t.packets;
            o.drops += t.drops;
            o.ecn_marks += t.ecn_marks;
            o.backlog_bytes += t.backlog;
            o.peak_delay_us = o.peak_delay_us.max(t.peak_delay_us);
            o.avg_delay_us = o.avg_delay_us.max(t.avg_delay_us);
            o.base_delay_us = o.base_delay_us.max(t.base_delay_us);
        }
    }
    out
}

//! The `shaper` section of an interface in `bpfqos status`: per direction the configured rate
//! and what the shaper counted (the root qdisc's counters, CAKE's tins, fq_codel's ECN marks).
//! A counter the shaper does not keep is `null`, never 0.

use serde::Deserialize;
use serde::Serialize;

use super::client::TcSocket;
use super::plan::Direction;
use super::plan::Params;
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
    /// CAKE's tins (empty for the other kinds).
    pub tins: Vec<TinStatus>,
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
    /// kernel when `tc` can (`null` counters otherwise).
    pub fn read(tc: Option<&TcSocket>, device: &Device, params: &Params) -> Self {
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
        let Some(qdiscs) = tc.and_then(|tc| tc.qdiscs(device.ifindex).ok()) else {
            return st;
        };
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

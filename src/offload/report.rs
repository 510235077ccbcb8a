//! The flow manager's numbers as `bpfqos status` shows them: the `offload` section, the `flows`
//! list and per-device counters. Field names are a public contract (LuCI, ubus clients): only
//! ever added to.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;

/// Counters of the manager's decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ManagerStats {
    /// Connections installed (both directions) since start.
    pub admitted: u64,
    /// Connections removed since start.
    pub removed: u64,
    /// Admission refusals by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Re-resolutions after topology changes.
    pub reresolved: u64,
    /// Times everything was dropped (firewall reload, offload switched off).
    pub flushes: u64,
    /// Duration of the last admission, microseconds (event to both entries written).
    pub last_admit_us: u64,
    /// Connections torn down on a FIN/RST event from the data path.
    pub teardown_events: u64,
    /// Times conntrack events were lost (the kernel's ENOBUFS on the event socket) and the
    /// table was resynchronised from a dump.
    pub conntrack_events_lost: u64,
    /// The last topology change that touched offloaded flows: how many it re-resolved and how
    /// long that took, microseconds from the event's arrival; `null` before the first.
    pub last_reresolution: Option<Reresolution>,
}

/// One topology change's re-resolution (`offload.manager.last_reresolution`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Reresolution {
    /// Offloaded connections the change could affect, all re-resolved.
    pub flows: u64,
    /// From the event's arrival to the last of them written, microseconds.
    pub us: u64,
}

/// The `offload` section of the status document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OffloadStatus {
    /// Offload is configured on and the data path is loaded.
    pub enabled: bool,
    /// Flow entries currently installed (one per direction).
    pub flows: u64,
    /// Flow entries each family's table holds (sized from `nf_conntrack_max` at load: two per
    /// connection); `null` without a data path.
    pub flows_max: Option<u64>,
    /// Connections offloaded (each is two flow entries).
    pub connections: u64,
    /// The flow manager's decisions: admitted, removed, rejected by reason.
    pub manager: ManagerStats,
    /// Packets forwarded by the data path.
    pub packets: u64,
    /// Bytes forwarded by the data path.
    pub bytes: u64,
}

/// One offloaded connection in `bpfqos status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowStatus {
    /// `tcp`/`udp`.
    pub proto: String,
    /// Original direction, as the client sent it.
    pub orig: String,
    /// Reply direction, as the server sent it.
    pub reply: String,
    /// Packets forwarded by the data path, original direction.
    pub packets_orig: u64,
    /// Packets forwarded by the data path, reply direction.
    pub packets_reply: u64,
    /// Bytes forwarded by the data path, both directions.
    pub bytes: u64,
    /// Lowest ingress device of the original direction.
    pub ingress_ifindex: u32,
    /// Lowest egress device of the original direction.
    pub egress_ifindex: u32,
    /// Its latency, both sides (TCP with passive RTT on; else `null`).
    #[serde(default)]
    pub rtt: Option<crate::rtt::FlowRtt>,
}

/// Offloaded traffic of one lowest device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// Packets received (and forwarded by the data path).
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets the data path sent out of it.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// Offloaded packets and bytes, in total and per lowest device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets forwarded by the data path.
    pub packets: u64,
    /// Bytes (IP packet bytes) forwarded by the data path.
    pub bytes: u64,
    /// Per ifindex.
    pub devices: BTreeMap<u32, DeviceCounters>,
}

impl Counters {
    /// Counts `packets`/`bytes` forwarded from `ingress` to `egress`.
    pub fn add(&mut self, (ingress, egress): (u32, u32), packets: u64, bytes: u64) {
        self.packets += packets;
        self.bytes += bytes;
        let i = self.devices.entry(ingress).or_default();
        i.rx_packets += packets;
        i.rx_bytes += bytes;
        let e = self.devices.entry(egress).or_default();
        e.tx_packets += packets;
        e.tx_bytes += bytes;
    }
}

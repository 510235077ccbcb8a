//! The data path's own per-CPU counters (`stats` map, indexed by `enum bpfqos_stat`), summed
//! over CPUs into named fields: what `bpfqos status` shows as `datapath`.

use libbpf_rs::MapCore;
use libbpf_rs::MapFlags;
use serde::Deserialize;
use serde::Serialize;

use super::abi::Stat;

/// Counter `index` of a per-CPU array of `u64`, summed over CPUs; 0 when it cannot be read
/// (status must not fail because one lookup did).
pub(crate) fn percpu_sum(map: &dyn MapCore, index: u32) -> u64 {
    map.lookup_percpu(&index.to_ne_bytes(), MapFlags::ANY)
        .ok()
        .flatten()
        .map(|cpus| {
            cpus.iter()
                .filter_map(|b| b.get(..8).and_then(|b| b.try_into().ok()))
                .map(u64::from_ne_bytes)
                .sum()
        })
        .unwrap_or(0)
}

/// How every packet the offload saw ended. The data path counts outcomes only: `seen` is their
/// sum, computed here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DatapathStats {
    /// Offload switched off, or the daemon's heartbeat stale.
    pub pass_disabled: u64,
    /// Not understood, malformed or truncated: handed to the kernel unchanged.
    pub pass_not_parsed: u64,
    /// Parsed, but no flow entry.
    pub pass_no_flow: u64,
    /// An entry not ready for this hook.
    pub pass_not_ready: u64,
    /// TTL / hop limit at most 1.
    pub pass_ttl: u64,
    /// Too big for the egress MTU.
    pub pass_mtu: u64,
    /// TCP FIN or RST (the flow goes back to the kernel).
    pub pass_fin_rst: u64,
    /// IPv6 UDP with a zero checksum.
    pub pass_udp6_zero_csum: u64,
    /// The egress device is not a redirect target.
    pub pass_no_tx_port: u64,
    /// The L2 header could not be resized.
    pub pass_l2_resize: u64,
    /// Forwarded to another device.
    pub redirect: u64,
    /// Sent back out of the device it came in on (XDP_TX).
    pub tx: u64,
    /// Forwarded into a shaper (shaped flows: upload to the L3 device, download into the
    /// download shaper).
    pub to_shaper: u64,
    /// Every packet the programs saw (the sum of the outcomes above).
    pub seen: u64,
}

impl DatapathStats {
    /// The field counting `stat`, if it is an outcome.
    fn slot(&mut self, stat: Stat) -> Option<&mut u64> {
        Some(match stat {
            Stat::BPFQOS_STAT_PASS_DISABLED => &mut self.pass_disabled,
            Stat::BPFQOS_STAT_PASS_PARSE => &mut self.pass_not_parsed,
            Stat::BPFQOS_STAT_PASS_NO_FLOW => &mut self.pass_no_flow,
            Stat::BPFQOS_STAT_PASS_NOT_READY => &mut self.pass_not_ready,
            Stat::BPFQOS_STAT_PASS_TTL => &mut self.pass_ttl,
            Stat::BPFQOS_STAT_PASS_MTU => &mut self.pass_mtu,
            Stat::BPFQOS_STAT_PASS_TCP_END => &mut self.pass_fin_rst,
            Stat::BPFQOS_STAT_PASS_CSUM => &mut self.pass_udp6_zero_csum,
            Stat::BPFQOS_STAT_PASS_NO_TXPORT => &mut self.pass_no_tx_port,
            Stat::BPFQOS_STAT_PASS_L2 => &mut self.pass_l2_resize,
            Stat::BPFQOS_STAT_REDIRECT => &mut self.redirect,
            Stat::BPFQOS_STAT_TX => &mut self.tx,
            Stat::BPFQOS_STAT_TO_SHAPER => &mut self.to_shaper,
            _ => return None,
        })
    }

    /// Reads the `stats` map.
    pub fn read(map: &dyn MapCore) -> Self {
        let mut out = Self::default();
        for i in 0..Stat::BPFQOS_STAT_MAX.0 {
            let Some(field) = out.slot(super::abi::skel::types::bpfqos_stat(i)) else {
                continue;
            };
            *field = percpu_sum(map, i);
        }
        out.seen = out.outcomes().iter().sum();
        out
    }

    fn outcomes(&self) -> [u64; 13] {
        [
            self.pass_disabled,
            self.pass_not_parsed,
            self.pass_no_flow,
            self.pass_not_ready,
            self.pass_ttl,
            self.pass_mtu,
            self.pass_fin_rst,
            self.pass_udp6_zero_csum,
            self.pass_no_tx_port,
            self.pass_l2_resize,
            self.redirect,
            self.tx,
            self.to_shaper,
        ]
    }
}

/// The download shapers' steering, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShapeStats {
    /// Packets sent into a download shaper.
    pub steered: u64,
    /// Packets put back after it.
    pub returned: u64,
    /// Packets not steered (daemon gone, no room for a header).
    pub passed: u64,
    /// Upload packets put into a circuit's class.
    pub circuit_upload: u64,
    /// Download packets put into a circuit's class.
    pub circuit_download: u64,
}

impl ShapeStats {
    /// Reads the `shape_stats` map (0 for what cannot be read).
    pub fn read(map: &dyn MapCore) -> Self {
        use super::abi::ShapeStat;
        let sum = |i: u32| percpu_sum(map, i);
        ShapeStats {
            steered: sum(ShapeStat::BPFQOS_SHAPE_STAT_STEERED.0),
            returned: sum(ShapeStat::BPFQOS_SHAPE_STAT_RETURNED.0),
            passed: sum(ShapeStat::BPFQOS_SHAPE_STAT_PASSED.0),
            circuit_upload: sum(ShapeStat::BPFQOS_SHAPE_STAT_CIRCUIT_UP.0),
            circuit_download: sum(ShapeStat::BPFQOS_SHAPE_STAT_CIRCUIT_DOWN.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_a_field_and_the_json_keeps_its_names() {
        let mut s = DatapathStats::default();
        let mut named = 0;
        for i in 0..Stat::BPFQOS_STAT_MAX.0 {
            if let Some(f) = s.slot(super::super::abi::skel::types::bpfqos_stat(i)) {
                *f = u64::from(i);
                named += 1;
            }
        }
        // Everything but the unused SEEN slot is an outcome.
        assert_eq!(named, Stat::BPFQOS_STAT_MAX.0 - 1);
        assert_eq!(s.outcomes().len(), named as usize);
        let v = serde_json::to_value(&s).unwrap_or_default();
        for k in [
            "pass_disabled",
            "pass_not_parsed",
            "pass_no_flow",
            "pass_not_ready",
            "pass_ttl",
            "pass_mtu",
            "pass_fin_rst",
            "pass_udp6_zero_csum",
            "pass_no_tx_port",
            "pass_l2_resize",
            "redirect",
            "tx",
            "to_shaper",
            "seen",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert_eq!(v["redirect"], 11);
    }
}

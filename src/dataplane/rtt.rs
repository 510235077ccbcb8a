//! The passive RTT maps as user space reads them (`bpf/include/rtt.h` writes them): flow
//! halves by key, the per-interface and per-circuit histograms, the RTT code's counters. Only
//! reads and deletions: the data path alone writes them.

use std::net::IpAddr;

use libbpf_rs::MapCore;
use libbpf_rs::MapFlags;

use super::abi;
use super::abi::RttStat;
use super::stats::percpu_sum;
use super::Dataplane;

/// A flow half's key: the tuple its packets carry as they leave the router.
#[derive(Clone, Copy, Debug)]
pub enum RttKey {
    /// IPv4.
    V4(abi::RttKey4),
    /// IPv6.
    V6(abi::RttKey6),
}

impl RttKey {
    /// The half of packets leaving with source `src:sport` and destination `dst:dport`
    /// (`None` for mixed families).
    pub fn new(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Option<Self> {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Some(RttKey::V4(abi::RttKey4 {
                saddr: abi::ip4(s),
                daddr: abi::ip4(d),
                sport: abi::be16(sport),
                dport: abi::be16(dport),
            })),
            (IpAddr::V6(s), IpAddr::V6(d)) => Some(RttKey::V6(abi::RttKey6 {
                saddr: abi::ip6(s),
                daddr: abi::ip6(d),
                sport: abi::be16(sport),
                dport: abi::be16(dport),
            })),
            _ => None,
        }
    }

    /// Source address and port, destination address and port.
    pub fn tuple(&self) -> (IpAddr, u16, IpAddr, u16) {
        match self {
            RttKey::V4(k) => (
                IpAddr::V4(abi::ip4_of(k.saddr)),
                u16::from_be(k.sport),
                IpAddr::V4(abi::ip4_of(k.daddr)),
                u16::from_be(k.dport),
            ),
            RttKey::V6(k) => (
                IpAddr::V6(abi::ip6_of(k.saddr)),
                u16::from_be(k.sport),
                IpAddr::V6(abi::ip6_of(k.daddr)),
                u16::from_be(k.dport),
            ),
        }
    }
}

// Compared and hashed as the data path compares keys: byte for byte.
impl PartialEq for RttKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for RttKey {}

impl std::hash::Hash for RttKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes().hash(state);
    }
}

impl RttKey {
    fn map(&self) -> &'static str {
        match self {
            RttKey::V4(_) => abi::RTT4_MAP,
            RttKey::V6(_) => abi::RTT6_MAP,
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            RttKey::V4(k) => abi::bytes_of(k),
            RttKey::V6(k) => abi::bytes_of(k),
        }
    }

    /// The first slot of the pair the key may sit in: the data path's `rtt_bucket()` (the
    /// hash is specified in `bpfqos_abi.h`).
    pub fn bucket(&self, seed: u32) -> u32 {
        let mut h = seed;
        for w in self.bytes().chunks_exact(4) {
            let w = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]);
            h = (h ^ w).wrapping_mul(abi::RTT_HASH_MUL);
        }
        h ^= h >> 16;
        (h & (abi::RTT_FLOWS / 2 - 1)) * 2
    }
}

/// A slot read from a table: its key (if any) and state.
fn slot_of(ipv6: bool, v: &[u8]) -> Option<(RttKey, abi::RttState)> {
    let (k, s) = if ipv6 {
        let x = abi::from_bytes::<abi::RttSlot6>(v)?;
        (RttKey::V6(x.key), x.s)
    } else {
        let x = abi::from_bytes::<abi::RttSlot4>(v)?;
        (RttKey::V4(x.key), x.s)
    };
    (s.flags & abi::RTT_F_USED != 0).then_some((k, s))
}

/// The RTT code's counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RttCounters {
    /// Samples taken.
    pub samples: u64,
    /// Probes started.
    pub probes: u64,
    /// Probes dropped unanswerable (Karn's rule, a later echo).
    pub discarded: u64,
    /// Probes never answered within `BPFQOS_RTT_PROBE_MAX_MS`.
    pub expired: u64,
    /// Flow halves made.
    pub halves: u64,
    /// Halves or circuit histograms that found no room.
    pub no_room: u64,
}

/// Entries fetched per `bpf_map_lookup_batch` call.
const BATCH: u32 = 1024;

impl Dataplane {
    /// The slot of the half named by `key`, with the half, if the data path keeps one.
    fn rtt_find(&self, key: &RttKey) -> Option<(u32, abi::RttState)> {
        let map = self.object.map(key.map()).ok()?;
        let first = key.bucket(self.tables.borrow().seed()[0]);
        let v6 = matches!(key, RttKey::V6(_));
        (first..first + 2).find_map(|i| {
            let v = map.lookup(&i.to_ne_bytes(), MapFlags::ANY).ok()??;
            let (k, s) = slot_of(v6, &v)?;
            (k == *key).then_some((i, s))
        })
    }

    /// Every flow half of both families (batched reads of the slot tables; an unreadable map
    /// reads as empty).
    pub fn rtt_halves(&self) -> Vec<(RttKey, abi::RttState)> {
        let mut out = Vec::new();
        for (name, v6) in [(abi::RTT4_MAP, false), (abi::RTT6_MAP, true)] {
            let Ok(map) = self.object.map(name) else {
                continue;
            };
            let Ok(iter) = map.lookup_batch(BATCH, MapFlags::ANY, MapFlags::ANY) else {
                continue;
            };
            out.extend(iter.filter_map(|(_, v)| slot_of(v6, &v)));
        }
        out
    }

    /// Forgets flow halves (gone already: nothing to do): their slots are zeroed, free for
    /// new halves.
    pub fn rtt_forget(&self, keys: &[RttKey]) {
        for k in keys {
            let Some((i, _)) = self.rtt_find(k) else {
                continue;
            };
            if let Ok(map) = self.object.map(k.map()) {
                let zero = vec![0u8; map.value_size() as usize];
                let _ = map.update(&i.to_ne_bytes(), &zero, MapFlags::ANY);
            }
        }
    }

    /// The histograms of every interface slot and side, index `slot * 2 + wan`: one batched
    /// read (the event loop's tick takes it every 5 s; 128 single lookups held the loop ~1 s
    /// in the emulated VM under strace), one lookup per entry where batches are not supported.
    pub fn rtt_slot_hists(&self) -> Vec<abi::RttHist> {
        let Ok(map) = self.object.map(abi::RTT_HIST_MAP) else {
            return Vec::new();
        };
        let n = 2 * abi::RTT_SLOTS as usize;
        if let Ok(iter) = map.lookup_batch(BATCH, MapFlags::ANY, MapFlags::ANY) {
            let mut out = vec![abi::RttHist::default(); n];
            let mut read = 0;
            for (k, v) in iter {
                let Some(i) = k
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_ne_bytes)
                else {
                    continue;
                };
                if let (Some(slot), Some(h)) = (out.get_mut(i as usize), abi::from_bytes(&v)) {
                    *slot = h;
                    read += 1;
                }
            }
            if read == n {
                return out;
            }
        }
        (0..2 * abi::RTT_SLOTS)
            .map(|i| {
                map.lookup(&i.to_ne_bytes(), MapFlags::ANY)
                    .ok()
                    .flatten()
                    .and_then(|v| abi::from_bytes(&v))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// The excess-delay histogram of interface slot `slot` (`None`: unreadable): the WAN-side
    /// samples of the halves crossing it, each minus its half's base delay.
    pub fn rtt_excess_hist(&self, slot: u8) -> Option<abi::RttHist> {
        let map = self.object.map(abi::RTT_EXCESS_MAP).ok()?;
        map.lookup(&u32::from(slot).to_ne_bytes(), MapFlags::ANY)
            .ok()
            .flatten()
            .and_then(|v| abi::from_bytes(&v))
    }

    /// The histograms of every circuit and side that has had a sample: `(circuit << 1 | wan,
    /// histogram)`.
    pub fn rtt_circuit_hists(&self) -> Vec<(u32, abi::RttHist)> {
        let Ok(map) = self.object.map(abi::RTT_CIRCUIT_HIST_MAP) else {
            return Vec::new();
        };
        let Ok(iter) = map.lookup_batch(BATCH, MapFlags::ANY, MapFlags::ANY) else {
            return Vec::new();
        };
        iter.filter_map(|(k, v)| {
            let k = u32::from_ne_bytes(k.get(..4)?.try_into().ok()?);
            Some((k, abi::from_bytes(&v)?))
        })
        .collect()
    }

    /// The RTT code's counters.
    pub fn rtt_counters(&self) -> RttCounters {
        let Ok(map) = self.object.map(abi::RTT_STATS_MAP) else {
            return RttCounters::default();
        };
        let get = |s: RttStat| percpu_sum(&map, s.0);
        RttCounters {
            samples: get(RttStat::BPFQOS_RTT_STAT_SAMPLES),
            probes: get(RttStat::BPFQOS_RTT_STAT_PROBES),
            discarded: get(RttStat::BPFQOS_RTT_STAT_DISCARDED),
            expired: get(RttStat::BPFQOS_RTT_STAT_EXPIRED),
            halves: get(RttStat::BPFQOS_RTT_STAT_HALVES),
            no_room: get(RttStat::BPFQOS_RTT_STAT_NO_ROOM),
        }
    }
}

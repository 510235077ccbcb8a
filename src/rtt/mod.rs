//! Passive latency: what the data path's RTT code (`bpf/include/rtt.h`) measured, as people
//! read it. Per flow (from the flow halves the data path keeps), per interface and per
//! circuit (min, median and p95 over a sliding window, from the log-scale histograms), and
//! the RTT code's own counters.
//!
//! The data path keeps cumulative histograms; [`Monitor`] reads them every
//! [`SNAPSHOT_EVERY`] and reports the difference between now and the read closest to
//! [`WINDOW`] ago (or the first one, just after start). Its other job is housekeeping: flow
//! halves nobody sent on for [`STALE_AFTER`] are deleted (the data path would also reuse their
//! slots, but only when a new half collides with them), and it decides which devices belong
//! to which interface slot.
//!
//! Sides: a sample timed on a WAN-facing device (`option wan`; by default an interface that
//! is shaped or whose L3 device holds a default route) is a WAN-side RTT (router → Internet host → router), any other a LAN-side RTT
//! (router → LAN host → router). An interface's summary holds both sides of the flows that
//! pass it; a circuit's both sides of its hosts' flows.

pub mod hist;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Duration;
use std::time::Instant;

use serde::Deserialize;
use serde::Serialize;

use crate::config;
use crate::conntrack::codec::Conn;
use crate::conntrack::codec::IPPROTO_TCP;
use crate::dataplane::abi;
use crate::dataplane::rtt::RttCounters;
use crate::dataplane::rtt::RttKey;
use crate::dataplane::Dataplane;
use crate::interfaces::Interfaces;

/// Length of the sliding window of the per-interface and per-circuit figures.
pub const WINDOW: Duration = Duration::from_secs(30);
/// How often the histograms are read for the window.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(5);
/// Flow halves with no packet leaving for this long are deleted.
pub const STALE_AFTER: Duration = Duration::from_secs(120);
/// How often stale halves are looked for.
const CLEAN_EVERY: Duration = Duration::from_secs(30);
/// Flow halves listed in the status' `rtt.top`.
pub const TOP_FLOWS: usize = 20;

/// One side's figures over the window. Fields are `null` without samples.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SideRtt {
    /// Smallest sample (to the histogram's resolution), µs.
    pub min_us: Option<u64>,
    /// Median, µs.
    pub median_us: Option<u64>,
    /// 95th percentile, µs.
    pub p95_us: Option<u64>,
    /// Samples in the window.
    pub samples: u64,
    /// Data packets the connections tracked now sent out on this side (their lifetime).
    pub packets: u64,
    /// How many of those were sent again (retransmits; reordering before the router too).
    pub retransmits: u64,
}

impl SideRtt {
    fn of(c: &[u64], sent: Sent) -> Self {
        Self {
            min_us: hist::quantile(c, 0.0),
            median_us: hist::quantile(c, 0.5),
            p95_us: hist::quantile(c, 0.95),
            samples: hist::total(c),
            packets: sent.packets,
            retransmits: sent.retransmits,
        }
    }
}

/// The window's figures per interface name and per circuit id ([`Monitor::summaries`]).
#[derive(Debug, Default)]
pub struct Summaries {
    /// Per configured interface (with a slot).
    pub interfaces: HashMap<String, RttSummary>,
    /// Per circuit id that has samples.
    pub circuits: HashMap<u16, RttSummary>,
}

/// Data packets and retransmits of a set of flow halves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Data packets seen leaving.
    pub packets: u64,
    /// Of which sent again.
    pub retransmits: u64,
}

impl Sent {
    fn add(&mut self, s: &abi::RttState) {
        self.packets += u64::from(s.packets);
        self.retransmits += u64::from(s.retrans);
    }
}

/// What the halves tracked now sent, per (interface slot, WAN side) and per (circuit, WAN
/// side): a half counts for the interface it leaves by and the one it came in by.
#[derive(Debug, Default)]
pub struct Totals {
    slots: HashMap<(u8, bool), Sent>,
    circuits: HashMap<(u32, bool), Sent>,
}

impl Totals {
    /// Sums `halves`.
    pub fn of(halves: &[(RttKey, abi::RttState)]) -> Self {
        let mut t = Self::default();
        for (_, s) in halves {
            let wan = s.flags & abi::RTT_F_WAN != 0;
            if s.slot_out != 0 {
                t.slots.entry((s.slot_out, wan)).or_default().add(s);
            }
            if s.slot_in != 0 && s.slot_in != s.slot_out {
                t.slots.entry((s.slot_in, wan)).or_default().add(s);
            }
            if s.circuit != 0 {
                t.circuits.entry((s.circuit, wan)).or_default().add(s);
            }
        }
        t
    }
}

/// `interfaces[].rtt` and `circuits[].rtt`: both sides, over the window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RttSummary {
    /// WAN side: router → Internet host → router.
    pub wan: SideRtt,
    /// LAN side: router → LAN host → router.
    pub lan: SideRtt,
}

/// `flows[].rtt`: one connection's two sides, `null` where a side has no sample.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowRtt {
    /// WAN side, smoothed (RFC 6298), µs.
    pub wan_us: Option<u64>,
    /// LAN side, smoothed, µs.
    pub lan_us: Option<u64>,
    /// WAN side, smallest, µs.
    pub wan_min_us: Option<u64>,
    /// LAN side, smallest, µs.
    pub lan_min_us: Option<u64>,
    /// Samples, both sides.
    pub samples: u64,
    /// Data packets sent again, both directions, as they left the router.
    pub retransmits: u64,
}

/// One flow half in `rtt.top`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HalfStatus {
    /// `src:port` as it leaves the router (after NAT).
    pub src: String,
    /// `dst:port`: the end whose answers are timed.
    pub dst: String,
    /// `wan` or `lan`.
    pub side: String,
    /// Device it leaves by.
    pub ifindex: u32,
    /// Smoothed RTT, µs.
    pub srtt_us: Option<u64>,
    /// Smallest, µs.
    pub min_us: Option<u64>,
    /// Newest, µs.
    pub last_us: Option<u64>,
    /// Samples.
    pub samples: u64,
    /// Data packets sent again.
    pub retransmits: u64,
    /// Data packets seen leaving.
    pub packets: u64,
}

/// The `rtt` section of the status document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RttStatus {
    /// Passive latency monitoring is on (`option rtt`) and the data path is loaded.
    pub enabled: bool,
    /// Length of the window of the interface and circuit figures, seconds.
    pub window_s: u64,
    /// Flow halves the data path keeps now (one per direction and connection).
    pub halves: u64,
    /// Halves the data path can keep, per address family.
    pub halves_max: u64,
    /// Samples taken since the data path was loaded.
    pub samples: u64,
    /// Probes started.
    pub probes: u64,
    /// Probes dropped unanswerable (Karn's rule, a later echo).
    pub discarded: u64,
    /// Probes never answered.
    pub expired: u64,
    /// Halves or circuit histograms that found no room (fewer samples, nothing else).
    pub no_room: u64,
    /// Stale halves deleted by the daemon.
    pub cleaned: u64,
    /// The flow halves with the highest smoothed RTT.
    pub top: Vec<HalfStatus>,
}

/// One interface's histogram slot.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot {
    interface: String,
    wan: bool,
}

/// A read of every histogram.
struct Snapshot {
    at: Instant,
    slots: Vec<hist::Counts>,
    circuits: HashMap<u32, hist::Counts>,
}

impl Snapshot {
    fn read(dp: &Dataplane, at: Instant) -> Self {
        Self {
            at,
            slots: dp.rtt_slot_hists().iter().map(hist::counts).collect(),
            circuits: dp
                .rtt_circuit_hists()
                .iter()
                .map(|(k, h)| (*k, hist::counts(h)))
                .collect(),
        }
    }
}

/// The daemon's side of passive RTT.
#[derive(Default)]
pub struct Monitor {
    /// Interface slots, index = slot - 1.
    slots: Vec<Slot>,
    /// Reads, oldest first, spanning at least [`WINDOW`] once the daemon has run that long.
    snapshots: VecDeque<Snapshot>,
    last_clean: Option<Instant>,
    cleaned: u64,
}

/// Whether `i` faces the Internet: `option wan`; by default whether it is shaped or its L3
/// device (`l3`) is one of `default_routes`' devices.
pub fn is_wan(
    i: &config::Interface,
    l3: Option<u32>,
    default_routes: &std::collections::HashSet<u32>,
) -> bool {
    i.wan.unwrap_or_else(|| {
        i.upload_kbit > 0 || i.download_kbit > 0 || l3.is_some_and(|d| default_routes.contains(&d))
    })
}

impl Monitor {
    /// Gives every configured interface a histogram slot (config order; beyond the table's
    /// size, none) and every device below it the slot and side: its L3 device, its lowest
    /// devices and `extra` devices of its own (the download shaper's far end, whose packets
    /// came in by the interface). A device shared by interfaces gets no slot (its samples
    /// still count per flow and per circuit) and the WAN side only if all of them face the
    /// Internet.
    pub fn assign(
        &mut self,
        config: &config::Config,
        interfaces: &Interfaces,
        extra: &HashMap<String, Vec<u32>>,
        default_routes: &std::collections::HashSet<u32>,
        dp: &mut Dataplane,
    ) {
        let max = abi::RTT_SLOTS as usize - 1;
        let wan_of = |i: &config::Interface| {
            is_wan(
                i,
                interfaces.get(&i.name).and_then(|r| r.ifindex),
                default_routes,
            )
        };
        self.slots = config
            .interfaces
            .iter()
            .take(max)
            .map(|i| Slot {
                interface: i.name.clone(),
                wan: wan_of(i),
            })
            .collect();
        // ifindex → (slot, wan) per owner.
        let mut owners: BTreeMap<u32, Vec<(u8, bool)>> = BTreeMap::new();
        for (n, i) in config.interfaces.iter().enumerate() {
            let slot = if n < max { (n + 1) as u8 } else { 0 };
            let wan = wan_of(i);
            let Some(r) = interfaces.get(&i.name) else {
                continue;
            };
            let mut devices: Vec<u32> = r.ifindex.into_iter().collect();
            if let Ok(lowest) = &r.lowest {
                devices.extend(lowest.iter().map(|d| d.ifindex));
            }
            devices.extend(extra.get(&i.name).into_iter().flatten());
            devices.sort_unstable();
            devices.dedup();
            for d in devices {
                owners.entry(d).or_default().push((slot, wan));
            }
        }
        let codes: Vec<(u32, u8, bool)> = owners
            .iter()
            .map(|(&ifindex, o)| {
                let slot = if o.len() == 1 { o[0].0 } else { 0 };
                (ifindex, slot, o.iter().all(|x| x.1))
            })
            .collect();
        dp.set_rtt_codes(&codes);
    }

    /// The histogram slot of interface `name` (as of the last [`Monitor::assign`]).
    pub fn slot_of(&self, name: &str) -> Option<u8> {
        let i = self.slots.iter().position(|s| s.interface == name)?;
        u8::try_from(i + 1).ok()
    }

    /// Whether interface `name` faces the Internet (as of the last [`Monitor::assign`]).
    pub fn is_wan_interface(&self, name: &str) -> Option<bool> {
        self.slots
            .iter()
            .find(|s| s.interface == name)
            .map(|s| s.wan)
    }

    /// The one-second tick: a histogram read every [`SNAPSHOT_EVERY`], stale halves deleted
    /// every [`CLEAN_EVERY`].
    pub fn tick(&mut self, dp: &Dataplane, now: Instant) {
        if !dp.rtt_enabled() {
            self.snapshots.clear();
            return;
        }
        if self
            .snapshots
            .back()
            .is_none_or(|s| now.duration_since(s.at) >= SNAPSHOT_EVERY)
        {
            self.snapshots.push_back(Snapshot::read(dp, now));
            // Keep one read at least WINDOW old: the base of the window.
            while self.snapshots.len() > 2
                && self
                    .snapshots
                    .get(1)
                    .is_some_and(|s| now.duration_since(s.at) >= WINDOW)
            {
                self.snapshots.pop_front();
            }
        }
        if self
            .last_clean
            .is_none_or(|t| now.duration_since(t) >= CLEAN_EVERY)
        {
            self.last_clean = Some(now);
            self.cleaned += clean(dp, STALE_AFTER) as u64;
        }
    }

    /// The window's summaries per interface name and per circuit id (circuits without
    /// samples are absent), from one read of the histograms; both empty when RTT is off.
    /// `totals` from the halves tracked now.
    pub fn summaries(&self, dp: Option<&Dataplane>, totals: &Totals) -> Summaries {
        let (Some(dp), Some(base)) = (dp.filter(|d| d.rtt_enabled()), self.snapshots.front())
        else {
            return Summaries::default();
        };
        let now = Snapshot::read(dp, Instant::now());
        let side = |slot: usize, wan: bool| {
            let i = slot * 2 + usize::from(wan);
            let sent = u8::try_from(slot)
                .ok()
                .and_then(|s| totals.slots.get(&(s, wan)).copied())
                .unwrap_or_default();
            match (now.slots.get(i), base.slots.get(i)) {
                (Some(n), Some(b)) => SideRtt::of(&hist::diff(n, b), sent),
                (Some(n), None) => SideRtt::of(n, sent),
                _ => SideRtt {
                    packets: sent.packets,
                    retransmits: sent.retransmits,
                    ..Default::default()
                },
            }
        };
        let interfaces = self
            .slots
            .iter()
            .enumerate()
            .map(|(n, s)| {
                (
                    s.interface.clone(),
                    RttSummary {
                        wan: side(n + 1, true),
                        lan: side(n + 1, false),
                    },
                )
            })
            .collect();
        let mut circuits: HashMap<u16, RttSummary> = HashMap::new();
        for (&key, counts) in &now.circuits {
            let Ok(id) = u16::try_from(key >> 1) else {
                continue;
            };
            let c = match base.circuits.get(&key) {
                Some(b) => hist::diff(counts, b),
                None => counts.clone(),
            };
            let wan = key & 1 == 1;
            let sent = totals
                .circuits
                .get(&(u32::from(id), wan))
                .copied()
                .unwrap_or_default();
            let e = circuits.entry(id).or_default();
            if wan {
                e.wan = SideRtt::of(&c, sent);
            } else {
                e.lan = SideRtt::of(&c, sent);
            }
        }
        Summaries {
            interfaces,
            circuits,
        }
    }

    /// The `rtt` section, from `halves` (the flow halves tracked now).
    pub fn status(&self, dp: Option<&Dataplane>, halves: &[(RttKey, abi::RttState)]) -> RttStatus {
        let Some(dp) = dp.filter(|d| d.rtt_enabled()) else {
            return RttStatus {
                window_s: WINDOW.as_secs(),
                halves_max: u64::from(abi::RTT_FLOWS),
                cleaned: self.cleaned,
                ..Default::default()
            };
        };
        let RttCounters {
            samples,
            probes,
            discarded,
            expired,
            halves: _,
            no_room,
        } = dp.rtt_counters();
        let mut measured: Vec<&(RttKey, abi::RttState)> =
            halves.iter().filter(|(_, s)| s.samples > 0).collect();
        measured.sort_by_key(|(_, s)| std::cmp::Reverse(s.srtt8_us));
        RttStatus {
            enabled: true,
            window_s: WINDOW.as_secs(),
            halves: halves.len() as u64,
            halves_max: u64::from(abi::RTT_FLOWS),
            samples,
            probes,
            discarded,
            expired,
            no_room,
            cleaned: self.cleaned,
            top: measured
                .into_iter()
                .take(TOP_FLOWS)
                .map(|(k, s)| half_status(k, s))
                .collect(),
        }
    }
}

fn endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn us(v: u32) -> Option<u64> {
    (v > 0).then_some(u64::from(v))
}

fn half_status(k: &RttKey, s: &abi::RttState) -> HalfStatus {
    let (src, sport, dst, dport) = k.tuple();
    HalfStatus {
        src: endpoint(src, sport),
        dst: endpoint(dst, dport),
        side: if s.flags & abi::RTT_F_WAN != 0 {
            "wan"
        } else {
            "lan"
        }
        .to_string(),
        ifindex: s.ifindex,
        srtt_us: (s.samples > 0).then_some(u64::from(s.srtt8_us >> 3)),
        min_us: (s.samples > 0).then(|| us(s.min_us)).flatten(),
        last_us: (s.samples > 0).then_some(u64::from(s.last_us)),
        samples: u64::from(s.samples),
        retransmits: u64::from(s.retrans),
        packets: u64::from(s.packets),
    }
}

/// CLOCK_MONOTONIC in the data path's coarse units (ns >> 30, about 1.07 s).
fn coarse_now() -> Option<u32> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
    let ns = t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64;
    Some((ns >> 30) as u32)
}

/// Deletes the halves no packet left by for `after`; how many.
fn clean(dp: &Dataplane, after: Duration) -> usize {
    let Some(now) = coarse_now() else {
        return 0;
    };
    let limit = ((after.as_nanos() >> 30) as u32).max(1);
    let stale: Vec<RttKey> = dp
        .rtt_halves()
        .into_iter()
        .filter(|(_, s)| now.wrapping_sub(s.seen) > limit)
        .map(|(k, _)| k)
        .collect();
    dp.rtt_forget(&stale);
    stale.len()
}

/// The two halves of a conntrack connection: the original direction as it leaves the router
/// (after NAT: the reverse of the reply tuple), and the reply direction as it leaves (the
/// reverse of the original tuple).
pub fn conn_halves(c: &Conn) -> Option<[RttKey; 2]> {
    if c.orig.proto != IPPROTO_TCP {
        return None;
    }
    Some([
        RttKey::new(c.reply.dst, c.reply.dport, c.reply.src, c.reply.sport)?,
        RttKey::new(c.orig.dst, c.orig.dport, c.orig.src, c.orig.sport)?,
    ])
}

/// The halves read from the data path, by key (for [`flow_rtt`]).
pub type HalfIndex = HashMap<RttKey, abi::RttState>;

/// Indexes `halves` by key.
pub fn index(halves: &[(RttKey, abi::RttState)]) -> HalfIndex {
    halves.iter().map(|(k, s)| (*k, *s)).collect()
}

/// A connection's two sides, from the halves read for this status (`None` when RTT is off:
/// pass `None`). The half leaving by a WAN-facing device is the WAN side; when neither or
/// both do (LAN to LAN), the original direction's (towards the responder) is reported as the
/// WAN side. `None` for anything but TCP.
pub fn flow_rtt(halves: Option<&HalfIndex>, c: &Conn) -> Option<FlowRtt> {
    let halves = halves?;
    let [orig, reply] = conn_halves(c)?;
    let (o, r) = (halves.get(&orig).copied(), halves.get(&reply).copied());
    let wan_flag = |s: &Option<abi::RttState>| s.is_some_and(|s| s.flags & abi::RTT_F_WAN != 0);
    let (wan, lan) = if wan_flag(&r) && !wan_flag(&o) {
        (r, o)
    } else {
        (o, r)
    };
    let srtt = |s: &Option<abi::RttState>| {
        s.filter(|s| s.samples > 0)
            .map(|s| u64::from(s.srtt8_us >> 3))
    };
    let min = |s: &Option<abi::RttState>| s.filter(|s| s.samples > 0).and_then(|s| us(s.min_us));
    let sum = |f: fn(&abi::RttState) -> u32| {
        [wan, lan]
            .iter()
            .flatten()
            .map(|s| u64::from(f(s)))
            .sum::<u64>()
    };
    Some(FlowRtt {
        wan_us: srtt(&wan),
        lan_us: srtt(&lan),
        wan_min_us: min(&wan),
        lan_min_us: min(&lan),
        samples: sum(|s| s.samples),
        retransmits: sum(|s| s.retrans),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::codec::Tuple;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn conn() -> Conn {
        Conn::new(
            1,
            Tuple {
                src: ip("198.18.1.2"),
                dst: ip("198.19.0.9"),
                proto: IPPROTO_TCP,
                sport: 40000,
                dport: 443,
            },
            Tuple {
                src: ip("198.19.0.9"),
                dst: ip("198.18.0.1"),
                proto: IPPROTO_TCP,
                sport: 443,
                dport: 61000,
            },
        )
    }

    #[test]
    fn a_natted_connection_has_one_half_per_wire() {
        let Some([o, r]) = conn_halves(&conn()) else {
            panic!("TCP has halves");
        };
        // Leaving by the WAN: from the router's address and port, to the server.
        assert_eq!(o.tuple(), (ip("198.18.0.1"), 61000, ip("198.19.0.9"), 443));
        // Leaving by the LAN: from the server, to the client's own address and port.
        assert_eq!(r.tuple(), (ip("198.19.0.9"), 443, ip("198.18.1.2"), 40000));
        let mut udp = conn();
        udp.orig.proto = 17;
        assert!(conn_halves(&udp).is_none());
    }

    #[test]
    fn a_side_without_samples_is_null_not_zero() {
        let s = SideRtt::of(&vec![0; abi::RTT_BUCKETS], Sent::default());
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"min_us": null, "median_us": null, "p95_us": null, "samples": 0,
                               "packets": 0, "retransmits": 0})
        );
    }
}

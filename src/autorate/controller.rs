//! Autorate's controller: a pure, deterministic function of what one tick saw (the excess
//! delay of the line's TCP samples, each direction's throughput and drops, the time) that
//! moves each direction's shaped rate between its bounds. No I/O, no clock: the glue
//! (`super`) reads the data path and the shapers and applies what this decides.
//!
//! The rules follow cake-autorate's, translated from pings to passive samples (the reasoning,
//! with the numbers tuned on the unit tests' line model and the VM scenario, is in
//! docs/autorate.md):
//! - **Delay.** Every WAN-side TCP sample is compared with its own connection's base delay
//!   (the data path keeps it per flow half: the smallest sample, creeping up slowly), so a
//!   far-away server is not a congested line. A tick is *delayed* when a quarter of its
//!   samples or fewer stay under [`Tuning::threshold_us`] of excess (its 25th percentile is
//!   above): a queue on the line delays every packet crossing it, while noise (delayed ACKs,
//!   a slow server, the host's scheduling) only delays some. Ticks without samples add
//!   nothing. The line is *bloated* when [`Tuning::delayed`] of the last [`Tuning::window`]
//!   ticks with samples were delayed.
//! - **Blame.** An RTT crosses both directions, so a bloated line cuts each direction that
//!   carries at least [`Tuning::blame_share`] of the busier direction's load (throughput over
//!   its rate): a download saturating the line does not cut an upload carrying its ACKs, and
//!   the other way round. When both directions are busy the delay cannot be told apart: both
//!   are cut, and the one that was not to blame climbs back quickly under its load.
//! - **Cut.** At most once per [`Tuning::refractory_ms`]: to the smaller of the rate and the
//!   measured throughput (which, when the line lost capacity, is what it carries now), times
//!   a factor that drains the queue just measured in [`Tuning::drain_ms`] (20 ms of excess:
//!   ×0.95), between [`Tuning::cut_shallow`] and [`Tuning::cut_deep`]. The delayed ticks
//!   are then forgotten: the next cut needs new evidence, measured after this one.
//! - **Raise.** When the line is not bloated, has samples (within [`Tuning::samples_within_ms`])
//!   and a direction is loaded (throughput at least [`Tuning::high_load`] of its rate, or its
//!   shaper dropping or holding a queue), its rate rises by up to [`Tuning::raise`] per tick,
//!   less as the excess approaches the threshold; only [`Tuning::raise_near`] from 90 % of
//!   the throughput the line last bloated at (remembered for [`Tuning::memory_ms`]), and half
//!   that above it, until a second passes there with no queue (the capacity came back: full
//!   speed again). Quick to find capacity, careful where it ran out.
//! - **Drift.** Otherwise (light load, or no samples to judge by) the rate moves towards the
//!   configured base by [`Tuning::drift`] every [`Tuning::drift_every_ms`].
//! - Always within `min`..`max`.

use std::collections::VecDeque;

/// How often the glue calls [`Controller::tick`], ms.
pub const TICK_MS: u64 = 200;

/// One direction's configured rates, kbit/s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Where it starts and drifts back to (`option upload` / `download`).
    pub base_kbit: u64,
    /// Lower bound (`option min_upload` / `min_download`).
    pub min_kbit: u64,
    /// Upper bound (`option max_upload` / `max_download`).
    pub max_kbit: u64,
}

impl Bounds {
    fn clamp(&self, kbit: f64) -> u64 {
        let lo = self.min_kbit.min(self.max_kbit) as f64;
        let hi = self.max_kbit.max(self.min_kbit) as f64;
        kbit.clamp(lo, hi).round() as u64
    }
}

/// The controller's constants (docs/autorate.md says why these values).
#[derive(Debug, Clone, PartialEq)]
pub struct Tuning {
    /// A tick is delayed when its 25th percentile of excess delay is above this, µs.
    pub threshold_us: u64,
    /// Ticks with samples looked at for bufferbloat.
    pub window: usize,
    /// Delayed ticks among them that make the line bloated.
    pub delayed: usize,
    /// After a cut, no other change of that direction for this long, ms.
    pub refractory_ms: u64,
    /// Load (throughput / rate) from which a direction is loaded.
    pub high_load: f64,
    /// A bloated line cuts the directions with at least this share of the busier one's load.
    pub blame_share: f64,
    /// Below this load a direction is idle: never cut.
    pub idle_load: f64,
    /// Smallest cut (factor).
    pub cut_shallow: f64,
    /// Deepest cut (factor).
    pub cut_deep: f64,
    /// A cut aims at draining the queue seen in this long, ms: the factor is one minus the
    /// excess delay over this (and one percent), between the deepest and the smallest cut.
    pub drain_ms: u64,
    /// Largest raise per tick (fraction).
    pub raise: f64,
    /// Raise per tick near the throughput the line last bloated at (fraction).
    pub raise_near: f64,
    /// How long that throughput is remembered, ms.
    pub memory_ms: u64,
    /// Raising needs a tick with samples within this, ms.
    pub samples_within_ms: u64,
    /// Step towards the base rate (fraction).
    pub drift: f64,
    /// How often a drift step is taken, ms.
    pub drift_every_ms: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            threshold_us: 8_000,
            window: 6,
            delayed: 2,
            refractory_ms: 300,
            high_load: 0.75,
            blame_share: 0.25,
            idle_load: 0.02,
            cut_shallow: 0.99,
            cut_deep: 0.75,
            drain_ms: 500,
            raise: 0.04,
            raise_near: 0.005,
            memory_ms: 60_000,
            samples_within_ms: 1_000,
            drift: 0.01,
            drift_every_ms: 1_000,
        }
    }
}

/// Upload or download.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dir {
    /// Out of the router into the line.
    Upload,
    /// From the line into the router.
    Download,
}

impl Dir {
    /// Both, upload first.
    pub const BOTH: [Dir; 2] = [Dir::Upload, Dir::Download];

    /// `upload` / `download`.
    pub fn name(self) -> &'static str {
        match self {
            Dir::Upload => "upload",
            Dir::Download => "download",
        }
    }

    /// 0 for upload, 1 for download.
    pub fn index(self) -> usize {
        match self {
            Dir::Upload => 0,
            Dir::Download => 1,
        }
    }
}

/// The excess delay of one tick's WAN-side samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Excess {
    /// Samples in the tick (> 0).
    pub samples: u64,
    /// Their 25th percentile, µs.
    pub low_us: u64,
    /// Their median, µs.
    pub median_us: u64,
}

/// What one direction's shaper did during the tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Throughput out of the shaper, kbit/s.
    pub achieved_kbit: u64,
    /// Packets it dropped or ECN-marked during the tick (its AQM at work: it is where the
    /// direction's TCP meets its bottleneck).
    pub drops: u64,
    /// Bytes queued in it at the end of the tick.
    pub backlog_bytes: u64,
}

/// One tick's inputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Input {
    /// Time, ms (monotonic, any origin).
    pub now_ms: u64,
    /// The tick's excess delay; `None` without samples.
    pub excess: Option<Excess>,
    /// Upload shaper's traffic (`None`: not controlled or unreadable).
    pub upload: Option<Traffic>,
    /// Download shaper's traffic.
    pub download: Option<Traffic>,
}

impl Input {
    fn traffic(&self, d: Dir) -> Option<Traffic> {
        match d {
            Dir::Upload => self.upload,
            Dir::Download => self.download,
        }
    }
}

/// Why a rate changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reason {
    /// The line was bloated: excess delay (µs) and this direction's load.
    Bufferbloat {
        /// The largest delayed tick's excess, µs.
        excess_us: u64,
        /// Throughput / rate.
        load: f64,
    },
    /// Loaded with low delay: probing for more.
    Load {
        /// Throughput / rate.
        load: f64,
        /// The tick's excess (25th percentile), µs.
        excess_us: u64,
    },
    /// Light load or no samples: back towards the base rate.
    Drift,
}

impl Reason {
    /// A short word for it (`bufferbloat`, `load`, `drift`).
    pub fn kind(&self) -> &'static str {
        match self {
            Reason::Bufferbloat { .. } => "bufferbloat",
            Reason::Load { .. } => "load",
            Reason::Drift => "drift",
        }
    }

    /// For people.
    pub fn describe(&self) -> String {
        match self {
            Reason::Bufferbloat { excess_us, load } => format!(
                "latency {:.1} ms above the connections' base at {:.0} % load",
                *excess_us as f64 / 1000.0,
                load * 100.0
            ),
            Reason::Load { load, excess_us } => format!(
                "{:.0} % load, latency {:.1} ms above base: probing",
                load * 100.0,
                *excess_us as f64 / 1000.0
            ),
            Reason::Drift => "light load or no samples: back towards the base rate".into(),
        }
    }
}

/// A rate change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Which direction.
    pub dir: Dir,
    /// When (the tick's `now_ms`).
    pub at_ms: u64,
    /// Rate before, kbit/s.
    pub from_kbit: u64,
    /// Rate after, kbit/s.
    pub to_kbit: u64,
    /// Why.
    pub reason: Reason,
}

#[derive(Debug, Clone)]
struct DirState {
    bounds: Bounds,
    rate_kbit: u64,
    last_cut_ms: Option<u64>,
    last_drift_ms: Option<u64>,
    /// Throughput at the last bufferbloat and when.
    bloated_at: Option<(u64, u64)>,
    /// Ticks in a row above that throughput with no queue to speak of.
    clean_above: u64,
    /// The last tick its shaper dropped or marked.
    last_aqm_ms: Option<u64>,
}

/// One interface's controller: both directions, one delay window (an RTT crosses both).
#[derive(Debug, Clone)]
pub struct Controller {
    tuning: Tuning,
    dirs: [Option<DirState>; 2],
    /// The 25th-percentile excess of the last ticks with samples, oldest first.
    window: VecDeque<u64>,
    last_samples_ms: Option<u64>,
    threshold_now_us: u64,
}

/// Bits of a full Ethernet frame.
const FRAME_BITS: u64 = 1514 * 8;
/// A download shaper whose AQM acted this recently is the download's bottleneck, ms.
const AQM_RECENT_MS: u64 = 400;

impl Controller {
    /// A controller for the directions given (`None`: that direction is not controlled),
    /// each starting at its base rate.
    pub fn new(tuning: Tuning, upload: Option<Bounds>, download: Option<Bounds>) -> Self {
        let state = |b: Bounds| DirState {
            rate_kbit: b.clamp(b.base_kbit as f64),
            bounds: b,
            last_cut_ms: None,
            last_drift_ms: None,
            bloated_at: None,
            clean_above: 0,
            last_aqm_ms: None,
        };
        Self {
            threshold_now_us: tuning.threshold_us,
            tuning,
            dirs: [upload.map(state), download.map(state)],
            window: VecDeque::new(),
            last_samples_ms: None,
        }
    }

    /// Takes a new base threshold (a reload), µs.
    pub fn set_threshold(&mut self, threshold_us: u64) {
        self.tuning.threshold_us = threshold_us;
    }

    /// Takes new bounds (a reload), keeping the current rate where it is still inside them.
    pub fn set_bounds(&mut self, dir: Dir, bounds: Option<Bounds>) {
        let slot = &mut self.dirs[dir.index()];
        match (slot.as_mut(), bounds) {
            (Some(s), Some(b)) => {
                s.bounds = b;
                s.rate_kbit = b.clamp(s.rate_kbit as f64);
            }
            (None, Some(b)) => {
                *slot = Controller::new(self.tuning.clone(), Some(b), None).dirs[0].take();
            }
            (_, None) => *slot = None,
        }
    }

    /// The current rate of `dir`, kbit/s.
    pub fn rate_kbit(&self, dir: Dir) -> Option<u64> {
        self.dirs[dir.index()].as_ref().map(|s| s.rate_kbit)
    }

    /// The bounds of `dir`.
    pub fn bounds(&self, dir: Dir) -> Option<Bounds> {
        self.dirs[dir.index()].as_ref().map(|s| s.bounds)
    }

    /// Whether the line is bloated now (as of the last tick).
    pub fn bloated(&self) -> bool {
        self.window
            .iter()
            .filter(|&&e| e > self.threshold_now_us)
            .count()
            >= self.tuning.delayed
    }

    /// The threshold in use now, µs: [`Tuning::threshold_us`], or one and a half full
    /// frames' time at the slower controlled direction's rate when that is longer.
    pub fn threshold_us(&self) -> u64 {
        self.threshold_now_us
    }

    /// The tuning in use.
    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    /// One tick: takes `input` and returns the rate changes it decided (at most one per
    /// direction), already in the controller's state.
    pub fn tick(&mut self, input: &Input) -> Vec<Decision> {
        let t = self.tuning.clone();
        if let Some(e) = input.excess.filter(|e| e.samples > 0) {
            self.window.push_back(e.low_us);
            while self.window.len() > t.window {
                self.window.pop_front();
            }
            self.last_samples_ms = Some(input.now_ms);
        }
        // One full frame takes 12 ms at 1 Mbit/s: a frame or two queued on a slow line is
        // its normal state, not congestion; the threshold is at least one and a half frames.
        let slowest = Dir::BOTH
            .iter()
            .filter_map(|d| self.dirs[d.index()].as_ref().map(|s| s.rate_kbit))
            .min()
            .unwrap_or(u64::MAX)
            .max(1);
        self.threshold_now_us = t.threshold_us.max(3 * FRAME_BITS * 1000 / 2 / slowest);
        let t = Tuning {
            threshold_us: self.threshold_now_us,
            ..t
        };
        let bloated = self.bloated();
        // The queue now: the latest tick with samples.
        let worst = self.window.back().copied().unwrap_or(0);
        let recent = self
            .last_samples_ms
            .is_some_and(|at| input.now_ms.saturating_sub(at) <= t.samples_within_ms);
        let tick_excess = input.excess.map_or(0, |e| e.low_us);
        let load_of = |d: Dir, s: &DirState| {
            input.traffic(d).map_or(0.0, |tr| {
                tr.achieved_kbit as f64 / s.rate_kbit.max(1) as f64
            })
        };
        let busiest = Dir::BOTH
            .iter()
            .filter_map(|&d| self.dirs[d.index()].as_ref().map(|s| load_of(d, s)))
            .fold(0.0f64, f64::max);
        let mut out = Vec::new();
        let mut cut_any = false;
        for d in Dir::BOTH {
            let Some(s) = self.dirs[d.index()].as_mut() else {
                continue;
            };
            let traffic = input.traffic(d).unwrap_or_default();
            let load = load_of(d, s);
            let queued = traffic.drops > 0 || traffic.backlog_bytes > 0;
            let resting = s
                .last_cut_ms
                .is_some_and(|at| input.now_ms.saturating_sub(at) < t.refractory_ms);
            // A download shaper whose AQM dropped or marked within two ticks is where
            // that direction's TCP meets its bottleneck: the line's download buffer is not
            // what fills (the upload one may be). A shaper above the line's rate never holds
            // the standing queue its AQM acts on.
            if traffic.drops > 0 {
                s.last_aqm_ms = Some(input.now_ms);
            }
            let exonerated = d == Dir::Download
                && s.last_aqm_ms
                    .is_some_and(|at| input.now_ms.saturating_sub(at) <= AQM_RECENT_MS);
            let blamed =
                bloated && !exonerated && load >= t.idle_load && load >= t.blame_share * busiest;
            let (to, reason) = if blamed {
                if resting {
                    continue;
                }
                // Down far enough to drain the queue measured in about `drain_ms`.
                let f = (1.0 - worst as f64 / 1000.0 / t.drain_ms.max(1) as f64 - 0.01)
                    .clamp(t.cut_deep, t.cut_shallow);
                let by_rate = s.rate_kbit as f64 * f;
                let by_achieved = traffic.achieved_kbit as f64 * f;
                let to = if by_achieved > s.bounds.min_kbit as f64 && by_achieved < by_rate {
                    by_achieved
                } else {
                    by_rate
                };
                s.last_cut_ms = Some(input.now_ms);
                s.bloated_at = Some((traffic.achieved_kbit.max(1), input.now_ms));
                cut_any = true;
                (
                    s.bounds.clamp(to),
                    Reason::Bufferbloat {
                        excess_us: worst,
                        load,
                    },
                )
            } else if !bloated && recent && (load >= t.high_load || queued) {
                if resting {
                    continue;
                }
                // Where the line last ran out, if that is still worth knowing: a ceiling
                // passed with no queue for a second is gone (the capacity came back). With
                // none, a queue starting to form is one (as TCP's HyStart leaves slow start
                // when delay starts to rise): the next steps are small.
                let fresh = |b: &Option<(u64, u64)>| {
                    b.is_some_and(|(_, at)| input.now_ms.saturating_sub(at) <= t.memory_ms)
                };
                if !fresh(&s.bloated_at) && tick_excess > t.threshold_us / 4 {
                    s.bloated_at = Some((traffic.achieved_kbit.max(1), input.now_ms));
                }
                let ceiling = s
                    .bloated_at
                    .filter(|&(_, at)| input.now_ms.saturating_sub(at) <= t.memory_ms)
                    .map(|(kbit, _)| kbit as f64);
                let rate = s.rate_kbit as f64;
                if ceiling.is_some_and(|c| rate > c) && tick_excess < t.threshold_us / 4 {
                    s.clean_above += 1;
                    if s.clean_above >= 1000 / TICK_MS {
                        s.bloated_at = None;
                        s.clean_above = 0;
                    }
                } else {
                    s.clean_above = 0;
                }
                let room =
                    1.0 - (tick_excess as f64 / t.threshold_us.max(1) as f64).clamp(0.0, 1.0);
                let step = match ceiling {
                    Some(c) if rate > c => t.raise_near / 2.0,
                    Some(c) if rate >= 0.9 * c => t.raise_near,
                    _ => t.raise,
                } * room;
                // A raise of less than one kbit/s would never move the rate.
                let to = (s.rate_kbit as f64 * (1.0 + step)).max(s.rate_kbit as f64 + 1.0);
                (
                    s.bounds
                        .clamp(if step > 0.0 { to } else { s.rate_kbit as f64 }),
                    Reason::Load {
                        load,
                        excess_us: tick_excess,
                    },
                )
            } else {
                let base = s.bounds.base_kbit;
                let due = s
                    .last_drift_ms
                    .is_none_or(|at| input.now_ms.saturating_sub(at) >= t.drift_every_ms);
                if resting || !due || s.rate_kbit == base {
                    continue;
                }
                s.last_drift_ms = Some(input.now_ms);
                let r = s.rate_kbit as f64;
                let to = if s.rate_kbit > base {
                    (r * (1.0 - t.drift)).min(r - 1.0).max(base as f64)
                } else {
                    (r * (1.0 + t.drift)).max(r + 1.0).min(base as f64)
                };
                (s.bounds.clamp(to), Reason::Drift)
            };
            if to != s.rate_kbit {
                out.push(Decision {
                    dir: d,
                    at_ms: input.now_ms,
                    from_kbit: s.rate_kbit,
                    to_kbit: to,
                    reason,
                });
                s.rate_kbit = to;
            }
        }
        if cut_any {
            self.window.clear();
        }
        out
    }
}

/// Prefix of [`trace_line`]'s lines.
pub const TRACE_PREFIX: &str = "autorate-trace";

/// One tick as a line of text, for the log at debug level and for replaying recorded runs
/// ([`parse_trace_line`]): `autorate-trace NAME T ex=N/P25/MEDIAN|- up=KBIT/DROPS/BACKLOG|-
/// down=... rates=UP|-/DOWN|- bounds=BASE/MIN/MAX|-,BASE/MIN/MAX|-` (the rates after the tick).
pub fn trace_line(name: &str, input: &Input, c: &Controller) -> String {
    let ex = input.excess.map_or("-".to_string(), |e| {
        format!("{}/{}/{}", e.samples, e.low_us, e.median_us)
    });
    let tr = |t: Option<Traffic>| {
        t.map_or("-".to_string(), |t| {
            format!("{}/{}/{}", t.achieved_kbit, t.drops, t.backlog_bytes)
        })
    };
    let rate = |d: Dir| c.rate_kbit(d).map_or("-".to_string(), |r| r.to_string());
    let bounds = |d: Dir| {
        c.bounds(d).map_or("-".to_string(), |b| {
            format!("{}/{}/{}", b.base_kbit, b.min_kbit, b.max_kbit)
        })
    };
    format!(
        "{TRACE_PREFIX} {name} {} ex={ex} up={} down={} rates={}/{} bounds={},{}",
        input.now_ms,
        tr(input.upload),
        tr(input.download),
        rate(Dir::Upload),
        rate(Dir::Download),
        bounds(Dir::Upload),
        bounds(Dir::Download)
    )
}

/// A line of [`trace_line`] (anywhere in `line`) back as the tick's input, the rates after
/// it and the bounds; `None` if it is not one.
#[allow(clippy::type_complexity)]
pub fn parse_trace_line(line: &str) -> Option<(Input, [Option<u64>; 2], [Option<Bounds>; 2])> {
    let rest = &line[line.find(TRACE_PREFIX)? + TRACE_PREFIX.len()..];
    let mut f = rest.split_whitespace().skip(1);
    let now_ms = f.next()?.parse().ok()?;
    let field =
        |s: Option<&str>, key: &str| -> Option<String> { s?.strip_prefix(key).map(str::to_string) };
    let nums = |s: &str| -> Option<Vec<u64>> { s.split('/').map(|x| x.parse().ok()).collect() };
    let ex = field(f.next(), "ex=")?;
    let excess = match ex.as_str() {
        "-" => None,
        v => match nums(v)?.as_slice() {
            [n, p, m] => Some(Excess {
                samples: *n,
                low_us: *p,
                median_us: *m,
            }),
            _ => return None,
        },
    };
    let traffic = |v: String| -> Option<Option<Traffic>> {
        if v == "-" {
            return Some(None);
        }
        match nums(&v)?.as_slice() {
            [k, d, b] => Some(Some(Traffic {
                achieved_kbit: *k,
                drops: *d,
                backlog_bytes: *b,
            })),
            _ => None,
        }
    };
    let upload = traffic(field(f.next(), "up=")?)?;
    let download = traffic(field(f.next(), "down=")?)?;
    let rates = field(f.next(), "rates=")?;
    let (ru, rd) = rates.split_once('/')?;
    let rate = |v: &str| {
        if v == "-" {
            Some(None)
        } else {
            v.parse().ok().map(Some)
        }
    };
    let bounds = field(f.next(), "bounds=")?;
    let (bu, bd) = bounds.split_once(',')?;
    let bound = |v: &str| -> Option<Option<Bounds>> {
        if v == "-" {
            return Some(None);
        }
        match nums(v)?.as_slice() {
            [base, min, max] => Some(Some(Bounds {
                base_kbit: *base,
                min_kbit: *min,
                max_kbit: *max,
            })),
            _ => None,
        }
    };
    Some((
        Input {
            now_ms,
            excess,
            upload,
            download,
        },
        [rate(ru)?, rate(rd)?],
        [bound(bu)?, bound(bd)?],
    ))
}

#[cfg(test)]
mod tests;

//! Autorate: each shaped interface with `option autorate '1'` has its rates moved by a
//! [`controller::Controller`], fed every [`controller::TICK_MS`] by what the router already
//! has: the excess delay of the WAN-side TCP samples crossing the interface (the data path's
//! `rtt_excess` histogram of its slot: each sample minus its own connection's base delay) and
//! each shaper's own counters (bytes out, drops, backlog: its root qdisc over tc netlink). No
//! probe traffic is sent.
//!
//! A decided rate is applied as an in-place change of the shaper's CAKE qdisc or HTB link
//! class ([`crate::qos::Shaping::set_rate`]: every ACK checked, the queue kept). A change that
//! fails is logged and retried on the next tick (the controller's rate stays the wanted one
//! until the kernel has it); the configured rates are the starting point and what an idle
//! line drifts back to.

pub mod controller;

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::time::Instant;

use log::info;
use log::warn;
use serde::Deserialize;
use serde::Serialize;

use crate::config;
use crate::dataplane::Dataplane;
use crate::qos::plan::Direction;
use crate::qos::ShaperCounters;
use crate::qos::Shaping;
use crate::rtt::hist;
use controller::Bounds;
use controller::Controller;
use controller::Decision;
use controller::Dir;
use controller::Excess;
use controller::Input;
use controller::Traffic;
use controller::Tuning;

/// Decisions kept for the status.
const DECISIONS_KEPT: usize = 12;
/// One history point every this many ticks (2 s).
const HISTORY_EVERY: u64 = 10;
/// History points kept (5 minutes).
const HISTORY_KEPT: usize = 150;

fn qos_dir(d: Dir) -> Direction {
    match d {
        Dir::Upload => Direction::Upload,
        Dir::Download => Direction::Download,
    }
}

/// The bounds of direction `d` of `i` when autorate controls it (both bounds given and a
/// starting rate: the configuration's checks guarantee the rest).
pub fn bounds_of(i: &config::Interface, d: Dir) -> Option<Bounds> {
    if !i.autorate {
        return None;
    }
    let (base, min, max) = match d {
        Dir::Upload => (i.upload_kbit, i.min_upload_kbit, i.max_upload_kbit),
        Dir::Download => (i.download_kbit, i.min_download_kbit, i.max_download_kbit),
    };
    match (min, max) {
        (Some(min), Some(max)) if base > 0 => Some(Bounds {
            base_kbit: base,
            min_kbit: min,
            max_kbit: max,
        }),
        _ => None,
    }
}

/// A shaper counter read, and when.
#[derive(Debug, Clone, Copy)]
struct Read {
    at: Instant,
    counters: ShaperCounters,
}

/// One controlled interface.
#[derive(Debug)]
struct Line {
    controller: Controller,
    /// The rate the kernel has, per direction (`None`: not known to be applied yet).
    applied: [Option<u64>; 2],
    prev_excess: Option<hist::Counts>,
    prev: [Option<Read>; 2],
    /// The last tick's traffic per direction.
    traffic: [Option<Traffic>; 2],
    /// The last tick with samples: its excess, and the tick number.
    last_excess: Option<(Excess, u64)>,
    decisions: VecDeque<(Instant, Decision)>,
    changes: u64,
    cuts: u64,
    failures: u64,
    last_error: Option<String>,
    history: VecDeque<Point>,
    /// Sums over the current history step.
    step: StepSums,
}

#[derive(Debug, Clone, Copy, Default)]
struct StepSums {
    ticks: u64,
    achieved: [u64; 2],
    excess_sum_us: u64,
    excess_ticks: u64,
}

#[derive(Debug, Clone, Copy)]
struct Point {
    rate: [Option<u64>; 2],
    achieved: [Option<u64>; 2],
    excess_us: Option<u64>,
}

impl Line {
    fn new(controller: Controller) -> Self {
        Self {
            controller,
            applied: [None; 2],
            prev_excess: None,
            prev: [None; 2],
            traffic: [None; 2],
            last_excess: None,
            decisions: VecDeque::new(),
            changes: 0,
            cuts: 0,
            failures: 0,
            last_error: None,
            history: VecDeque::new(),
            step: StepSums::default(),
        }
    }
}

/// Every controlled interface.
#[derive(Debug, Default)]
pub struct Autorate {
    lines: BTreeMap<String, Line>,
    ticks: u64,
    /// Every tick logged at info level ([`TRACE_ENV`] set): for recording runs.
    trace: bool,
}

/// Set in the daemon's environment, every tick's inputs and rates are logged at info level
/// (`autorate-trace` lines, [`controller::trace_line`]); at debug level they always are.
pub const TRACE_ENV: &str = "BPFQOS_AUTORATE_TRACE";

impl Autorate {
    /// Whether any interface is controlled (the tick is needed).
    pub fn active(&self) -> bool {
        !self.lines.is_empty()
    }

    /// Follows the configuration: interfaces with autorate get (or keep) a controller, the
    /// others lose theirs. `shaping` is told each controlled direction's current rate, so
    /// that a reload re-applies that rather than the configured base.
    pub fn configure(&mut self, config: &config::Config, shaping: &mut Shaping) {
        self.trace = std::env::var_os(TRACE_ENV).is_some();
        let enabled = config.globals.enabled;
        let wanted: Vec<&config::Interface> = config
            .interfaces
            .iter()
            .filter(|i| enabled && Dir::BOTH.iter().any(|&d| bounds_of(i, d).is_some()))
            .collect();
        self.lines
            .retain(|name, _| wanted.iter().any(|i| &i.name == name));
        for i in &config.interfaces {
            for d in Dir::BOTH {
                shaping.set_rate_override(&i.name, qos_dir(d), None);
            }
        }
        for i in wanted {
            let (up, down) = (bounds_of(i, Dir::Upload), bounds_of(i, Dir::Download));
            let threshold_us = u64::from(i.autorate_delay_ms) * 1000;
            let line = self.lines.entry(i.name.clone()).or_insert_with(|| {
                info!(
                    "interface '{}': autorate on (upload {}, download {}, delay threshold {} ms)",
                    i.name,
                    describe(up),
                    describe(down),
                    i.autorate_delay_ms
                );
                Line::new(Controller::new(
                    Tuning {
                        threshold_us,
                        ..Tuning::default()
                    },
                    up,
                    down,
                ))
            });
            line.controller.set_threshold(threshold_us);
            line.controller.set_bounds(Dir::Upload, up);
            line.controller.set_bounds(Dir::Download, down);
            for d in Dir::BOTH {
                let rate = line.controller.rate_kbit(d);
                shaping.set_rate_override(&i.name, qos_dir(d), rate);
                // Applied with the shapers, right after this.
                line.applied[d.index()] = rate;
            }
        }
    }

    /// One tick ([`controller::TICK_MS`]): reads, decides, applies. `place(name)`: the
    /// interface's RTT slot, and whether its upload shaper sits where departures are timed
    /// (its device is also a lowest device: a plain Ethernet WAN, whose root qdisc comes after
    /// TC egress), so that its samples include that shaper's own queue.
    pub fn tick(
        &mut self,
        now: Instant,
        dp: Option<&Dataplane>,
        place: &dyn Fn(&str) -> (Option<u8>, bool),
        shaping: &mut Shaping,
    ) {
        self.ticks += 1;
        let tick_no = self.ticks;
        let ms = tick_no * controller::TICK_MS;
        for (name, line) in self.lines.iter_mut() {
            let (slot, shaper_timed) = place(name);
            let mut own_upload_us = 0;
            for d in Dir::BOTH {
                let i = d.index();
                // A fixed direction is read only for its queue's delay (below).
                let needed =
                    line.controller.rate_kbit(d).is_some() || (d == Dir::Upload && shaper_timed);
                let read = needed
                    .then(|| shaping.shaper_counters(name, qos_dir(d)))
                    .flatten()
                    .map(|counters| Read { at: now, counters });
                if d == Dir::Upload && shaper_timed {
                    own_upload_us = read.map_or(0, |r| r.counters.delay_us);
                }
                line.traffic[i] = match (line.prev[i], read) {
                    (Some(p), Some(r)) => Some(traffic(&p, &r)),
                    _ => None,
                };
                line.prev[i] = read;
            }
            // Samples timed before the upload shaper include its queue: not the line's.
            let excess = read_excess(line, dp, slot).map(|e| Excess {
                low_us: e.low_us.saturating_sub(own_upload_us),
                median_us: e.median_us.saturating_sub(own_upload_us),
                ..e
            });
            if let Some(e) = excess {
                line.last_excess = Some((e, tick_no));
            }
            let input = Input {
                now_ms: ms,
                excess,
                upload: line.traffic[0],
                download: line.traffic[1],
            };
            for decision in line.controller.tick(&input) {
                log::debug!(
                    "interface '{name}': {} {} -> {} kbit/s: {}",
                    decision.dir.name(),
                    decision.from_kbit,
                    decision.to_kbit,
                    decision.reason.describe()
                );
                line.changes += 1;
                if decision.reason.kind() == "bufferbloat" {
                    line.cuts += 1;
                }
                line.decisions.push_front((now, decision));
                line.decisions.truncate(DECISIONS_KEPT);
            }
            if self.trace {
                info!("{}", controller::trace_line(name, &input, &line.controller));
            } else if log::log_enabled!(log::Level::Debug) {
                log::debug!("{}", controller::trace_line(name, &input, &line.controller));
            }
            apply(name, line, shaping);
            record(line, excess);
        }
    }

    /// `interfaces[].autorate` of `name` (`None`: not controlled).
    pub fn status(&self, name: &str, now: Instant) -> Option<AutorateStatus> {
        let line = self.lines.get(name)?;
        let c = &line.controller;
        let dir = |d: Dir| {
            let b = c.bounds(d)?;
            let rate = c.rate_kbit(d)?;
            let achieved = line.traffic[d.index()].map(|t| t.achieved_kbit);
            Some(AutorateDirection {
                rate_kbit: rate,
                applied_kbit: line.applied[d.index()],
                base_kbit: b.base_kbit,
                min_kbit: b.min_kbit,
                max_kbit: b.max_kbit,
                achieved_kbit: achieved,
                load_pct: achieved.map(|a| (a * 100).checked_div(rate).unwrap_or(0)),
            })
        };
        // The latest excess, if it is recent (a second).
        let recent = line
            .last_excess
            .filter(|(_, at)| self.ticks.saturating_sub(*at) <= 1000 / controller::TICK_MS)
            .map(|(e, _)| e);
        let series = |f: &dyn Fn(&Point) -> Option<u64>| line.history.iter().map(f).collect();
        Some(AutorateStatus {
            upload: dir(Dir::Upload),
            download: dir(Dir::Download),
            bloated: c.bloated(),
            threshold_us: c.threshold_us(),
            excess_p25_us: recent.map(|e| e.low_us),
            excess_median_us: recent.map(|e| e.median_us),
            samples: recent.map(|e| e.samples),
            changes: line.changes,
            cuts: line.cuts,
            failures: line.failures,
            last_error: line.last_error.clone(),
            decisions: line
                .decisions
                .iter()
                .map(|(at, d)| DecisionStatus {
                    ago_s: now.saturating_duration_since(*at).as_secs_f64(),
                    direction: d.dir.name().to_string(),
                    from_kbit: d.from_kbit,
                    to_kbit: d.to_kbit,
                    reason: d.reason.kind().to_string(),
                    why: d.reason.describe(),
                })
                .collect(),
            history: History {
                step_s: (HISTORY_EVERY * controller::TICK_MS) as f64 / 1000.0,
                upload_kbit: series(&|p| p.rate[0]),
                download_kbit: series(&|p| p.rate[1]),
                upload_achieved_kbit: series(&|p| p.achieved[0]),
                download_achieved_kbit: series(&|p| p.achieved[1]),
                excess_us: series(&|p| p.excess_us),
            },
        })
    }
}

fn describe(b: Option<Bounds>) -> String {
    b.map_or("fixed".into(), |b| {
        format!("{}..{} kbit/s from {}", b.min_kbit, b.max_kbit, b.base_kbit)
    })
}

/// The tick's excess delay from the slot's histogram (difference with the last read).
fn read_excess(line: &mut Line, dp: Option<&Dataplane>, slot: Option<u8>) -> Option<Excess> {
    let now = hist::counts(&dp?.rtt_excess_hist(slot?)?);
    let before = line.prev_excess.replace(now.clone())?;
    let c = hist::diff(&now, &before);
    let samples = hist::total(&c);
    (samples > 0).then(|| Excess {
        samples,
        low_us: hist::quantile(&c, 0.25).unwrap_or(0),
        median_us: hist::quantile(&c, 0.5).unwrap_or(0),
    })
}

/// What a shaper passed between two reads.
fn traffic(prev: &Read, now: &Read) -> Traffic {
    let secs = now.at.saturating_duration_since(prev.at).as_secs_f64();
    let bytes = now.counters.bytes.saturating_sub(prev.counters.bytes);
    Traffic {
        achieved_kbit: if secs > 0.0 {
            (bytes as f64 * 8.0 / 1000.0 / secs).round() as u64
        } else {
            0
        },
        drops: (now.counters.drops + now.counters.marks)
            .saturating_sub(prev.counters.drops + prev.counters.marks),
        backlog_bytes: now.counters.backlog_bytes,
    }
}

/// Gives the kernel the controller's rates where it does not have them yet.
fn apply(name: &str, line: &mut Line, shaping: &mut Shaping) {
    for d in Dir::BOTH {
        let Some(want) = line.controller.rate_kbit(d) else {
            continue;
        };
        if !worth_applying(line.applied[d.index()], want, line.controller.bounds(d)) {
            continue;
        }
        match shaping.set_rate(name, qos_dir(d), want) {
            Ok(()) => {
                line.applied[d.index()] = Some(want);
                if line.last_error.take().is_some() {
                    info!("interface '{name}': {} rate applied again", d.name());
                }
            }
            Err(e) => {
                line.failures += 1;
                // Once per problem; it is retried every tick.
                if line.last_error.as_deref() != Some(e.as_str()) {
                    warn!(
                        "interface '{name}': {} rate {want} kbit/s not applied, retrying: {e}",
                        d.name()
                    );
                }
                line.last_error = Some(e);
            }
        }
    }
}

/// Whether the kernel should be given `want` when it has `applied`: any first rate, any
/// decrease of half a percent (cuts, drift down), increases once they add up to a percent
/// (probing moves by fractions of one: a netlink change each tick would be most of the cost),
/// and the bounds and base exactly.
fn worth_applying(applied: Option<u64>, want: u64, bounds: Option<Bounds>) -> bool {
    let Some(a) = applied else {
        return true;
    };
    if want == a {
        return false;
    }
    let exact = bounds.is_some_and(|b| [b.min_kbit, b.max_kbit, b.base_kbit].contains(&want));
    exact || want * 200 <= a * 199 || want * 100 >= a * 101
}

/// Adds the tick to the history step, closing it every [`HISTORY_EVERY`] ticks.
fn record(line: &mut Line, excess: Option<Excess>) {
    let s = &mut line.step;
    s.ticks += 1;
    for d in Dir::BOTH {
        s.achieved[d.index()] += line.traffic[d.index()].map_or(0, |t| t.achieved_kbit);
    }
    if let Some(e) = excess {
        s.excess_sum_us += e.low_us;
        s.excess_ticks += 1;
    }
    if s.ticks < HISTORY_EVERY {
        return;
    }
    let step = std::mem::take(&mut line.step);
    let c = &line.controller;
    line.history.push_back(Point {
        rate: [c.rate_kbit(Dir::Upload), c.rate_kbit(Dir::Download)],
        achieved: [Dir::Upload, Dir::Download].map(|d| {
            c.rate_kbit(d)
                .map(|_| step.achieved[d.index()] / step.ticks.max(1))
        }),
        excess_us: step
            .excess_sum_us
            .checked_div(step.excess_ticks)
            .filter(|_| step.excess_ticks > 0),
    });
    while line.history.len() > HISTORY_KEPT {
        line.history.pop_front();
    }
}

/// `interfaces[].autorate`: what autorate does on an interface.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AutorateStatus {
    /// Upload, `null` when its rate is fixed.
    pub upload: Option<AutorateDirection>,
    /// Download, `null` when its rate is fixed.
    pub download: Option<AutorateDirection>,
    /// The line is bloated now (enough delayed ticks).
    pub bloated: bool,
    /// Excess delay from which a tick counts as delayed, µs.
    pub threshold_us: u64,
    /// Excess delay over the connections' base, 25th percentile of the latest tick with
    /// samples (within a second; `null`: none), µs.
    pub excess_p25_us: Option<u64>,
    /// Its median, µs.
    pub excess_median_us: Option<u64>,
    /// Samples in that tick.
    pub samples: Option<u64>,
    /// Rate changes decided since start.
    pub changes: u64,
    /// Of which cuts for bufferbloat.
    pub cuts: u64,
    /// Rate changes the kernel refused or that could not be sent (each is retried).
    pub failures: u64,
    /// The last such failure, while it lasts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The latest decisions, newest first.
    pub decisions: Vec<DecisionStatus>,
    /// Rates, throughput and excess delay over the last minutes, oldest first.
    pub history: History,
}

/// One direction under autorate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AutorateDirection {
    /// The rate autorate wants now, kbit/s.
    pub rate_kbit: u64,
    /// The rate the kernel has (`null` until the first change is acknowledged).
    pub applied_kbit: Option<u64>,
    /// Configured starting rate (`option upload` / `download`).
    pub base_kbit: u64,
    /// Lower bound.
    pub min_kbit: u64,
    /// Upper bound.
    pub max_kbit: u64,
    /// Throughput out of the shaper over the last tick (`null`: not read yet), kbit/s.
    pub achieved_kbit: Option<u64>,
    /// That throughput over the rate, percent.
    pub load_pct: Option<u64>,
}

/// One rate change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DecisionStatus {
    /// How long ago, seconds.
    pub ago_s: f64,
    /// `upload` or `download`.
    pub direction: String,
    /// Rate before, kbit/s.
    pub from_kbit: u64,
    /// Rate after, kbit/s.
    pub to_kbit: u64,
    /// `bufferbloat`, `load` or `drift`.
    pub reason: String,
    /// For people.
    pub why: String,
}

/// Time series, one point per `step_s`, oldest first (the last point is the latest).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct History {
    /// Seconds between points.
    pub step_s: f64,
    /// Upload rate (`null` entries: fixed rate), kbit/s.
    pub upload_kbit: Vec<Option<u64>>,
    /// Download rate, kbit/s.
    pub download_kbit: Vec<Option<u64>>,
    /// Upload throughput, kbit/s.
    pub upload_achieved_kbit: Vec<Option<u64>>,
    /// Download throughput, kbit/s.
    pub download_achieved_kbit: Vec<Option<u64>>,
    /// Excess delay (25th percentile, averaged over the step; `null`: no samples), µs.
    pub excess_us: Vec<Option<u64>>,
}

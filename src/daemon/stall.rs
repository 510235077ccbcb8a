//! How long the event loop is kept from its other events: every branch of the daemon's
//! `select!` loop (a tick, a conntrack batch, a netlink event, a control request, ...) runs to
//! its end before the next event is looked at, so the time one branch takes is the time every
//! other event waits. Recorded per branch, reported in status (`event_loop`, issue 17).

use std::time::Duration;
use std::time::Instant;

use crate::status::EventLoopStatus;

/// Length of the window `max_last_minute_ms` covers.
const WINDOW: Duration = Duration::from_secs(60);

/// The event loop's longest handlers: over the whole run and over the last minute.
#[derive(Debug)]
pub struct LoopStats {
    handled: u64,
    max: Option<(Duration, &'static str)>,
    /// Maximum of the minute in progress, and of the one before it.
    current: Option<(Duration, &'static str)>,
    previous: Option<(Duration, &'static str)>,
    window_start: Instant,
}

fn bigger(
    a: Option<(Duration, &'static str)>,
    b: Option<(Duration, &'static str)>,
) -> Option<(Duration, &'static str)> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.0 > x.0 { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl LoopStats {
    /// Empty, with its minute starting at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            handled: 0,
            max: None,
            current: None,
            previous: None,
            window_start: now,
        }
    }

    fn roll(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.window_start);
        if age >= 2 * WINDOW {
            self.previous = None;
            self.current = None;
            self.window_start = now;
        } else if age >= WINDOW {
            self.previous = self.current.take();
            self.window_start += WINDOW;
        }
    }

    /// One event of kind `what` took `took`, ending at `now`.
    pub fn record(&mut self, what: &'static str, took: Duration, now: Instant) {
        self.roll(now);
        self.handled += 1;
        self.max = bigger(self.max, Some((took, what)));
        self.current = bigger(self.current, Some((took, what)));
    }

    /// The status section at `now`.
    pub fn status(&mut self, now: Instant) -> EventLoopStatus {
        self.roll(now);
        let recent = bigger(self.current, self.previous);
        EventLoopStatus {
            handled: self.handled,
            max_ms: self.max.map(|m| ms(m.0)),
            max_what: self.max.map(|m| m.1.to_string()),
            max_last_minute_ms: recent.map(|m| ms(m.0)),
            max_last_minute_what: recent.map(|m| m.1.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_recorded_is_null_not_zero() {
        let t0 = Instant::now();
        let st = LoopStats::new(t0).status(t0);
        assert_eq!(st, EventLoopStatus::default());
        let json = serde_json::to_value(&st).unwrap_or_default();
        assert!(json["max_ms"].is_null() && json["max_last_minute_ms"].is_null());
    }

    #[test]
    fn keeps_the_longest_overall_and_forgets_old_minutes() {
        let t0 = Instant::now();
        let mut s = LoopStats::new(t0);
        s.record("tick", Duration::from_millis(3), t0);
        s.record(
            "conntrack",
            Duration::from_micros(41_500),
            t0 + Duration::from_secs(1),
        );
        s.record(
            "netlink",
            Duration::from_millis(7),
            t0 + Duration::from_secs(2),
        );
        let st = s.status(t0 + Duration::from_secs(3));
        assert_eq!(st.handled, 3);
        assert_eq!(
            (st.max_ms, st.max_what.as_deref()),
            (Some(41.5), Some("conntrack"))
        );
        assert_eq!(st.max_last_minute_ms, Some(41.5));
        // A minute on, the conntrack batch is still in the window (the minute before).
        s.record(
            "tick",
            Duration::from_millis(2),
            t0 + Duration::from_secs(70),
        );
        let st = s.status(t0 + Duration::from_secs(70));
        assert_eq!(st.max_last_minute_what.as_deref(), Some("conntrack"));
        // Two minutes on, only what happened since counts; the overall maximum stays.
        s.record(
            "request",
            Duration::from_millis(5),
            t0 + Duration::from_secs(125),
        );
        let st = s.status(t0 + Duration::from_secs(126));
        assert_eq!(
            (st.max_last_minute_ms, st.max_last_minute_what.as_deref()),
            (Some(5.0), Some("request"))
        );
        assert_eq!(st.max_ms, Some(41.5));
        // Long silence: the window empties, the overall maximum does not.
        let st = s.status(t0 + Duration::from_secs(600));
        assert_eq!(st.max_last_minute_ms, None);
        assert_eq!(st.max_ms, Some(41.5));
    }
}

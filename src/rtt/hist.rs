//! The data path's log-scale RTT histograms (`struct bpfqos_rtt_hist`, filled by
//! `rtt_hist_bucket()` in `bpf/include/rtt.h`) as numbers: bucket bounds, differences between two
//! reads (a sliding window), quantiles.
//!
//! Buckets: one per microsecond below 16 µs, then `2^RTT_SUB_BITS` per octave: bucket
//! `(e - 2) * 8 + m` holds `[(8 + m) << (e - 3), (9 + m) << (e - 3))` µs, `e` the top bit. A value
//! is reported at the interpolated rank inside its bucket, so the error is below a bucket's
//! width (6-12 % of the value) and usually far less.

use crate::dataplane::abi;

/// Counts per bucket, as read or as a difference of two reads.
pub type Counts = Vec<u64>;

/// Lower bound of bucket `b`, µs.
pub fn lower_us(b: usize) -> u64 {
    let sub = 1usize << abi::RTT_SUB_BITS;
    if b < 2 * sub {
        return b as u64;
    }
    let e = b / sub + 2;
    let m = b % sub;
    ((sub + m) as u64) << (e - abi::RTT_SUB_BITS as usize)
}

/// Upper bound of bucket `b` (the next one's lower bound), µs.
pub fn upper_us(b: usize) -> u64 {
    lower_us(b + 1)
}

/// The bucket the data path puts `us` in (its `rtt_hist_bucket()`, for tests and tools).
pub fn bucket_of(us: u32) -> usize {
    if us < 16 {
        return us as usize;
    }
    let e = 31 - us.leading_zeros();
    let b = ((e - 2) << abi::RTT_SUB_BITS) | ((us >> (e - abi::RTT_SUB_BITS)) & 7);
    (b as usize).min(abi::RTT_BUCKETS - 1)
}

/// The counts of a histogram as read.
pub fn counts(h: &abi::RttHist) -> Counts {
    h.bucket.iter().map(|&c| u64::from(c)).collect()
}

/// `now - then`, bucket by bucket. The data path's 32-bit counters wrap; a bucket that went
/// backwards wrapped once (or the map was recreated: then `then` is too new and the
/// difference is only approximate, for one window).
pub fn diff(now: &[u64], then: &[u64]) -> Counts {
    now.iter()
        .enumerate()
        .map(|(i, &n)| {
            let t = then.get(i).copied().unwrap_or(0);
            if n >= t {
                n - t
            } else {
                n + (1u64 << 32) - t
            }
        })
        .collect()
}

/// Samples counted.
pub fn total(c: &[u64]) -> u64 {
    c.iter().sum()
}

/// The `q` quantile (0..=1) of the counted samples, µs; `None` without samples. The rank is
/// interpolated inside its bucket (samples spread evenly over it).
pub fn quantile(c: &[u64], q: f64) -> Option<u64> {
    let n = total(c);
    if n == 0 {
        return None;
    }
    // Rank of the sample wanted, centred in its slot: q = 0 is the middle of the first one.
    let rank = (q.clamp(0.0, 1.0) * (n - 1) as f64) + 0.5;
    let mut below = 0u64;
    for (b, &k) in c.iter().enumerate() {
        if k == 0 {
            continue;
        }
        if (below + k) as f64 >= rank {
            let frac = (rank - below as f64) / k as f64;
            let (lo, hi) = (lower_us(b) as f64, upper_us(b) as f64);
            return Some((lo + frac * (hi - lo)).round() as u64);
        }
        below += k;
    }
    c.iter()
        .rposition(|&k| k > 0)
        .map(|b| (lower_us(b) + upper_us(b)) / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_agree_with_the_bounds() {
        for b in 0..abi::RTT_BUCKETS - 1 {
            assert!(lower_us(b) < upper_us(b), "bucket {b}");
            assert_eq!(upper_us(b), lower_us(b + 1));
        }
        for us in [
            0u32, 1, 7, 15, 16, 17, 31, 32, 100, 999, 1000, 4095, 4096, 40_000, 1_000_000,
        ] {
            let b = bucket_of(us);
            assert!(
                lower_us(b) <= u64::from(us) && u64::from(us) < upper_us(b),
                "{us} µs in bucket {b} [{}, {})",
                lower_us(b),
                upper_us(b)
            );
        }
        // Everything from the last bucket's lower bound on lands there (~3.9 s).
        assert_eq!(bucket_of(u32::MAX), abi::RTT_BUCKETS - 1);
        assert_eq!(lower_us(abi::RTT_BUCKETS - 1), 15 << 18);
    }

    #[test]
    fn quantiles_of_a_known_spread() {
        let mut c = vec![0u64; abi::RTT_BUCKETS];
        assert_eq!(quantile(&c, 0.5), None);
        // 100 samples of exactly 40 ms land in one bucket: every quantile is inside it.
        c[bucket_of(40_000)] = 100;
        let (lo, hi) = (lower_us(bucket_of(40_000)), upper_us(bucket_of(40_000)));
        for q in [0.0, 0.5, 0.95] {
            let v = quantile(&c, q).unwrap_or(0);
            assert!(lo <= v && v <= hi, "q{q}: {v} not in [{lo}, {hi}]");
        }
        // 90 at 5 ms, 10 at 40 ms: the median is near 5 ms, p95 near 40 ms.
        let mut c = vec![0u64; abi::RTT_BUCKETS];
        c[bucket_of(5_000)] = 90;
        c[bucket_of(40_000)] = 10;
        let med = quantile(&c, 0.5).unwrap_or(0);
        let p95 = quantile(&c, 0.95).unwrap_or(0);
        assert!((4_600..=5_400).contains(&med), "median {med}");
        assert!((36_000..=44_000).contains(&p95), "p95 {p95}");
    }

    #[test]
    fn a_window_is_the_difference_of_two_reads_even_across_a_wrap() {
        let then = vec![5u64, u64::from(u32::MAX) - 1, 0];
        let now = vec![7u64, 3, 0];
        assert_eq!(diff(&now, &then), vec![2, 5, 0]);
    }
}

//! A latency histogram with fixed buckets, recorded with atomics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::PREFIX;

/// Upper bounds of the lookup latency buckets, in microseconds.
pub(super) const LOOKUP_BUCKETS_US: &[u64] = &[
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Upper bounds of the network latency buckets (probes, fetches), in
/// microseconds.
pub(super) const NETWORK_BUCKETS_US: &[u64] = &[
    5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000, 30_000_000, 60_000_000,
];

/// A histogram with fixed buckets; lock-free to record.
pub struct Histogram {
    bounds_us: &'static [u64],
    /// Per bucket (not cumulative); the last one is `+Inf`.
    buckets: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

impl Histogram {
    pub(super) fn new(bounds_us: &'static [u64]) -> Histogram {
        Histogram {
            bounds_us,
            buckets: (0..=bounds_us.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = self.bounds_us.partition_point(|b| *b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Observations so far (the sum of the buckets: no separate counter
    /// to update on the request path).
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    pub(super) fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le = match self.bounds_us.get(i) {
                Some(us) => seconds(*us),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(
                out,
                "{PREFIX}{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{PREFIX}{name}_sum{braces} {}",
            seconds(self.sum_us.load(Ordering::Relaxed))
        );
        // The count is the sum of the buckets as rendered, so a scrape
        // racing an observation stays consistent.
        let _ = writeln!(out, "{PREFIX}{name}_count{braces} {cumulative}");
    }
}

/// Microseconds as decimal seconds without exponent (`0.00025`).
pub(super) fn seconds(us: u64) -> String {
    let whole = us / 1_000_000;
    let frac = us % 1_000_000;
    if frac == 0 {
        whole.to_string()
    } else {
        let f = format!("{frac:06}");
        format!("{whole}.{}", f.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_without_exponent() {
        assert_eq!(seconds(0), "0");
        assert_eq!(seconds(25), "0.000025");
        assert_eq!(seconds(250_000), "0.25");
        assert_eq!(seconds(1_000_000), "1");
        assert_eq!(seconds(2_500_000), "2.5");
        assert_eq!(seconds(60_000_000), "60");
    }

    #[test]
    fn histogram_buckets_at_their_bounds() {
        let h = Histogram::new(&[100, 1_000]);
        // A value equal to a bound belongs to that bucket (le = "less or
        // equal"); one microsecond more goes to the next.
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_micros(1_000));
        h.observe(Duration::from_micros(1_001));
        let mut s = String::new();
        h.render(&mut s, "x", "a=\"b\"");
        assert_eq!(
            s,
            "tls_policyd_x_bucket{a=\"b\",le=\"0.0001\"} 1\n\
             tls_policyd_x_bucket{a=\"b\",le=\"0.001\"} 3\n\
             tls_policyd_x_bucket{a=\"b\",le=\"+Inf\"} 4\n\
             tls_policyd_x_sum{a=\"b\"} 0.002202\n\
             tls_policyd_x_count{a=\"b\"} 4\n"
        );
        let mut s = String::new();
        Histogram::new(&[1]).render(&mut s, "y", "");
        assert!(s.contains("tls_policyd_y_bucket{le=\"+Inf\"} 0\n"), "{s}");
        assert!(s.contains("tls_policyd_y_count 0\n"), "{s}");
    }
}

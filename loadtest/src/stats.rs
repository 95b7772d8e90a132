//! Percentiles over exact samples (sorted once; a run holds at most a few million).

use serde_json::{Value, json};

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub count: usize,
    pub p50: u32,
    pub p90: u32,
    pub p99: u32,
    pub p999: u32,
    pub max: u32,
    pub mean: f64,
}

/// Sorts `samples` in place and summarizes them.
pub fn summarize(samples: &mut [u32]) -> Summary {
    samples.sort_unstable();
    let sum: u64 = samples.iter().map(|v| u64::from(*v)).sum();
    Summary {
        count: samples.len(),
        p50: percentile(samples, 50.0),
        p90: percentile(samples, 90.0),
        p99: percentile(samples, 99.0),
        p999: percentile(samples, 99.9),
        max: samples.last().copied().unwrap_or(0),
        mean: if samples.is_empty() {
            0.0
        } else {
            sum as f64 / samples.len() as f64
        },
    }
}

fn ms(us: f64) -> f64 {
    (us / 1000.0 * 1000.0).round() / 1000.0
}

impl Summary {
    /// Microsecond samples as milliseconds, 3 decimals.
    pub fn json_ms(&self) -> Value {
        json!({
            "count": self.count,
            "p50": ms(self.p50 as f64),
            "p90": ms(self.p90 as f64),
            "p99": ms(self.p99 as f64),
            "p999": ms(self.p999 as f64),
            "max": ms(self.max as f64),
            "mean": ms(self.mean),
        })
    }

    pub fn text_ms(&self) -> String {
        format!(
            "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  (n={})",
            self.p50 as f64 / 1000.0,
            self.p90 as f64 / 1000.0,
            self.p99 as f64 / 1000.0,
            self.p999 as f64 / 1000.0,
            self.max as f64 / 1000.0,
            self.count
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut v: Vec<u32> = (1..=100).rev().collect();
        let s = summarize(&mut v);
        assert_eq!((s.p50, s.p90, s.p99, s.max), (50, 90, 99, 100));
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[7], 99.9), 7);
    }
}

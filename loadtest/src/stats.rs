//! Latency percentiles: p50, p90, p99, max and mean of a set of durations.

use std::time::Duration;

use serde::Serialize;

/// The summary of one latency (submit, queue, run or end-to-end) over the runs that have it.
/// Values are milliseconds; every field but `count` is `None` when there are no samples.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub mean_ms: Option<f64>,
}

impl LatencySummary {
    /// Summarises `samples` with exact nearest-rank percentiles (p50 of 1..=10 is 5).
    ///
    /// Hand-written rather than an HdrHistogram: the test keeps one record per run anyway
    /// (`--runs` is bounded), and exact values keep small tests readable and comparable, where
    /// a histogram reports the top of a sample's bucket (753 ms shows as 753.2 ms).
    pub fn from_durations<I>(samples: I) -> Self
    where
        I: IntoIterator<Item = Duration>,
    {
        let mut sorted: Vec<Duration> = samples.into_iter().collect();
        if sorted.is_empty() {
            return Self::default();
        }
        sorted.sort_unstable();
        let total: Duration = sorted
            .iter()
            .fold(Duration::ZERO, |sum, sample| sum.saturating_add(*sample));
        let count = sorted.len();
        let ms = |duration: Duration| Some(round_ms(duration.as_secs_f64() * 1000.0));
        Self {
            count: count as u64,
            p50_ms: ms(nearest_rank(&sorted, 50)),
            p90_ms: ms(nearest_rank(&sorted, 90)),
            p99_ms: ms(nearest_rank(&sorted, 99)),
            max_ms: ms(sorted[count - 1]),
            mean_ms: Some(round_ms(total.as_secs_f64() * 1000.0 / count as f64)),
        }
    }
}

/// A commit-latency histogram as a coordinator reports it: (upper bound in µs, count) per
/// non-empty bucket, lowest first.
pub type Buckets = Vec<(u64, u64)>;

/// Percentiles of a bucketed histogram, in milliseconds: each is the upper bound of the bucket
/// holding that rank (the coordinator's buckets are about 9 % wide).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HistogramSummary {
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl HistogramSummary {
    pub fn from_buckets(buckets: &[(u64, u64)]) -> Self {
        let count: u64 = buckets.iter().map(|(_, n)| n).sum();
        if count == 0 {
            return Self::default();
        }
        let at = |percent: u64| {
            let rank = (percent * count).div_ceil(100).max(1);
            let mut seen = 0;
            for (upper, n) in buckets {
                seen += n;
                if seen >= rank {
                    return Some(round_ms(*upper as f64 / 1000.0));
                }
            }
            None
        };
        Self {
            count,
            p50_ms: at(50),
            p90_ms: at(90),
            p99_ms: at(99),
            max_ms: at(100),
        }
    }
}

/// What `after` counted that `before` had not (both cumulative, from one process).
pub fn bucket_difference(before: &[(u64, u64)], after: &[(u64, u64)]) -> Buckets {
    after
        .iter()
        .filter_map(|(upper, n)| {
            let earlier = before
                .iter()
                .find(|(b, _)| b == upper)
                .map_or(0, |(_, m)| *m);
            let added = n.saturating_sub(earlier);
            (added > 0).then_some((*upper, added))
        })
        .collect()
}

/// The `percent`-th percentile of non-empty `sorted` samples: the smallest sample with at least
/// `percent` % of the samples at or below it.
fn nearest_rank(sorted: &[Duration], percent: usize) -> Duration {
    let rank = (percent * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// Rounds to microseconds, so that reports do not show float noise.
fn round_ms(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests;

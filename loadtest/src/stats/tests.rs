//! Tests of the percentile summary.

use std::time::Duration;

use super::{bucket_difference, HistogramSummary, LatencySummary};

fn ms(values: impl IntoIterator<Item = u64>) -> Vec<Duration> {
    values.into_iter().map(Duration::from_millis).collect()
}

fn assert_ms(actual: Option<f64>, expected: f64) {
    assert_eq!(actual, Some(expected));
}

#[test]
fn no_samples_give_an_empty_summary() {
    let summary = LatencySummary::from_durations(Vec::new());
    assert_eq!(summary, LatencySummary::default());
    assert_eq!(summary.count, 0);
    assert!(summary.p50_ms.is_none() && summary.max_ms.is_none());
}

#[test]
fn one_sample_is_every_percentile() {
    let summary = LatencySummary::from_durations(ms([42]));
    assert_eq!(summary.count, 1);
    for value in [
        summary.p50_ms,
        summary.p90_ms,
        summary.p99_ms,
        summary.max_ms,
        summary.mean_ms,
    ] {
        assert_ms(value, 42.0);
    }
}

#[test]
fn percentiles_use_nearest_rank() {
    // 1..=100 ms in a scrambled order: the p-th percentile is p ms.
    let samples: Vec<Duration> = (0..100u64)
        .map(|i| Duration::from_millis((i * 37) % 100 + 1))
        .collect();
    let summary = LatencySummary::from_durations(samples);
    assert_eq!(summary.count, 100);
    assert_ms(summary.p50_ms, 50.0);
    assert_ms(summary.p90_ms, 90.0);
    assert_ms(summary.p99_ms, 99.0);
    assert_eq!(summary.max_ms, Some(100.0));
    assert_eq!(summary.mean_ms, Some(50.5));
}

#[test]
fn a_slow_outlier_shows_in_p99_and_max_only() {
    let mut samples = ms(std::iter::repeat_n(10, 99));
    samples.push(Duration::from_secs(30));
    let summary = LatencySummary::from_durations(samples);
    assert_ms(summary.p50_ms, 10.0);
    assert_ms(summary.p90_ms, 10.0);
    assert_ms(summary.p99_ms, 10.0);
    assert_eq!(summary.max_ms, Some(30_000.0));
}

#[test]
fn values_are_exact() {
    let summary = LatencySummary::from_durations([
        Duration::from_micros(753_000),
        Duration::from_micros(1_000_002),
    ]);
    assert_ms(summary.p50_ms, 753.0);
    assert_ms(summary.p90_ms, 1000.002);
    assert_ms(summary.max_ms, 1000.002);
    assert_ms(summary.mean_ms, 876.501);
}

#[test]
fn small_sets_use_the_rank_rounded_up() {
    // Four samples: p50 is the 2nd, p90 and p99 the 4th.
    let summary = LatencySummary::from_durations(ms([40, 10, 30, 20]));
    assert_ms(summary.p50_ms, 20.0);
    assert_ms(summary.p90_ms, 40.0);
    assert_ms(summary.p99_ms, 40.0);
    // Three samples: p50 is the 2nd (rank 1.5 rounds up).
    let summary = LatencySummary::from_durations(ms([3, 1, 2]));
    assert_ms(summary.p50_ms, 2.0);
}

#[test]
fn sub_millisecond_samples_keep_microseconds() {
    let summary =
        LatencySummary::from_durations([Duration::from_micros(250), Duration::from_micros(750)]);
    assert_eq!(summary.p50_ms, Some(0.25));
    assert_eq!(summary.max_ms, Some(0.75));
    assert_eq!(summary.mean_ms, Some(0.5));
}

#[test]
fn zero_durations_are_counted() {
    let summary = LatencySummary::from_durations([Duration::ZERO, Duration::ZERO]);
    assert_eq!(summary.count, 2);
    assert_eq!(summary.p50_ms, Some(0.0));
    assert_eq!(summary.max_ms, Some(0.0));
}

#[test]
fn histogram_percentiles_are_the_upper_bound_of_the_ranked_bucket() {
    // 50 samples ≤ 1000 µs, 45 ≤ 2000 µs, 5 ≤ 9000 µs.
    let buckets = vec![(1000, 50), (2000, 45), (9000, 5)];
    let summary = HistogramSummary::from_buckets(&buckets);
    assert_eq!(summary.count, 100);
    assert_ms(summary.p50_ms, 1.0);
    assert_ms(summary.p90_ms, 2.0);
    assert_ms(summary.p99_ms, 9.0);
    assert_ms(summary.max_ms, 9.0);
    assert_eq!(
        HistogramSummary::from_buckets(&[]),
        HistogramSummary::default()
    );
}

#[test]
fn bucket_difference_keeps_what_was_added() {
    let before = vec![(1000, 10), (2000, 3)];
    let after = vec![(500, 2), (1000, 10), (2000, 7), (4000, 1)];
    assert_eq!(
        bucket_difference(&before, &after),
        vec![(500, 2), (2000, 4), (4000, 1)]
    );
}

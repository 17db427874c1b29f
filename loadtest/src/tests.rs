//! Tests of the command line: defaults, limits and which arguments go together.

use std::time::Duration;

use clap::Parser;

use super::{plan_from, Args};

fn parse(args: &[&str]) -> Result<Args, clap::Error> {
    Args::try_parse_from(std::iter::once("kiln-loadtest").chain(args.iter().copied()))
}

#[test]
fn defaults_make_a_bounded_plan() {
    let args = parse(&[]).expect("no argument is required");
    assert_eq!(args.coordinator, "http://127.0.0.1:7878");
    assert!(!args.allow_remote && !args.json);
    let plan = plan_from(&args).expect("the defaults are valid");
    assert_eq!(plan.runs, 50);
    assert_eq!(plan.rate, 5.0);
    assert_eq!(plan.concurrency_limit, 200);
    assert_eq!(plan.max_duration, Duration::from_secs(600));
    assert_eq!(plan.poll_interval, Duration::from_millis(500));
}

#[test]
fn the_documented_command_line_parses() {
    let args = parse(&[
        "--coordinator",
        "http://127.0.0.1:7878",
        "--runs",
        "20",
        "--rate",
        "2",
        "--concurrency-limit",
        "50",
        "--cmd",
        "127.0.0.1:5000/base/busybox:latest true",
        "--platform",
        "linux/arm64",
        "--timeout-seconds",
        "120",
        "--max-seconds",
        "300",
        "--json",
    ])
    .expect("valid arguments");
    assert_eq!(
        args.cmd.as_deref(),
        Some("127.0.0.1:5000/base/busybox:latest true")
    );
    assert_eq!(args.timeout_seconds, 120);
    let plan = plan_from(&args).expect("a valid plan");
    assert_eq!(
        (plan.runs, plan.rate, plan.concurrency_limit),
        (20, 2.0, 50)
    );
    assert_eq!(plan.max_duration, Duration::from_secs(300));
}

#[test]
fn cmd_and_task_exclude_each_other() {
    assert!(parse(&["--cmd", "img true", "--task", "acb.yaml"]).is_err());
}

#[test]
fn out_of_range_numbers_are_refused() {
    for bad in [
        &["--runs", "0"][..],
        &["--runs", "100001"],
        &["--rate=-1"],
        &["--rate", "NaN"],
        &["--rate", "inf"],
        &["--concurrency-limit", "0"],
        &["--max-seconds", "0"],
        &["--poll-ms", "1"],
    ] {
        let args = parse(bad).expect("parses as numbers");
        assert!(plan_from(&args).is_err(), "{bad:?} should be refused");
    }
}

#[test]
fn rate_zero_means_as_fast_as_possible() {
    let args = parse(&["--rate", "0"]).expect("valid");
    assert_eq!(plan_from(&args).expect("valid").rate, 0.0);
}

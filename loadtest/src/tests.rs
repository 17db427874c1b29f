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

#[test]
fn sim_agents_default_to_none_and_parse_alongside_the_load() {
    let args = parse(&[]).expect("valid");
    assert_eq!(args.sim.sim_agents, 0);
    assert!(args.command.is_none());
    let args = parse(&[
        "--sim-agents",
        "3",
        "--sim-capacity",
        "8",
        "--sim-step-ms",
        "50",
        "--sim-pool",
        "fast",
        "--submitter",
        "me",
    ])
    .expect("valid");
    assert_eq!(
        (
            args.sim.sim_agents,
            args.sim.sim_capacity,
            args.sim.sim_step_ms
        ),
        (3, 8, 50)
    );
    assert_eq!(args.sim.sim_pool, "fast");
    assert_eq!(args.submitter, "me");
    let platform = kiln_state::PlatformSpec::parse("linux/amd64").unwrap();
    let config = super::sim_config(&args.sim, "http://127.0.0.1:1", &platform, false)
        .expect("valid")
        .expect("agents asked for");
    assert_eq!(config.agents, 3);
    assert_eq!(config.step, Duration::from_millis(50));
    assert!(config.id_prefix.starts_with("sim-"));
}

#[test]
fn bad_sim_numbers_are_refused_with_the_flag_named() {
    let platform = kiln_state::PlatformSpec::parse("linux/amd64").unwrap();
    for (bad, flag) in [
        (
            &["--sim-agents", "1", "--sim-capacity", "0"][..],
            "--sim-capacity",
        ),
        (&["--sim-agents", "1001"], "--sim-agents"),
        (
            &["--sim-agents", "1", "--sim-step-ms", "3600001"],
            "--sim-step-ms",
        ),
    ] {
        let args = parse(bad).expect("parses as numbers");
        let error = super::sim_config(&args.sim, "http://127.0.0.1:1", &platform, false)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with(flag), "{bad:?}: {error}");
    }
}

#[test]
fn subcommands_parse_with_their_defaults() {
    let args = parse(&["fairness", "--sim-agents", "2", "--sim-step-ms", "1000"]).expect("valid");
    let Some(super::Command::Fairness {
        conn,
        sim,
        queued,
        lone,
        lone_every_ms,
        concurrency_limit,
        json,
    }) = args.command
    else {
        panic!("not the fairness benchmark");
    };
    assert_eq!((queued, lone, lone_every_ms), (10_000, 20, 1000));
    assert_eq!(conn.coordinator, "http://127.0.0.1:7878");
    assert!(!json);
    let plan = super::fairness_plan(&conn, &sim, queued, lone, lone_every_ms, concurrency_limit)
        .expect("valid");
    assert_eq!(plan.lone_every, Duration::from_secs(1));

    let args = parse(&["dispatch", "--sim-agents", "4", "--runs", "500"]).expect("valid");
    let Some(super::Command::Dispatch {
        conn,
        sim,
        runs,
        concurrency_limit,
        light_runs,
        ..
    }) = args.command
    else {
        panic!("not the dispatch benchmark");
    };
    let plan =
        super::dispatch_plan(&conn, &sim, runs, concurrency_limit, light_runs).expect("valid");
    assert_eq!(
        (plan.runs, plan.concurrency, plan.light_runs),
        (500, 200, 100)
    );

    assert!(matches!(
        parse(&["sim-agents", "--sim-agents", "2"])
            .expect("valid")
            .command,
        Some(super::Command::SimAgents { .. })
    ));
}

#[test]
fn dispatch_needs_simulated_agents_and_a_loopback_coordinator() {
    let dispatch = |extra: &[&str]| {
        let mut all = vec!["dispatch"];
        all.extend_from_slice(extra);
        let Some(super::Command::Dispatch {
            conn,
            sim,
            runs,
            concurrency_limit,
            light_runs,
            ..
        }) = parse(&all).expect("parses").command
        else {
            panic!("not the dispatch benchmark");
        };
        super::dispatch_plan(&conn, &sim, runs, concurrency_limit, light_runs)
            .unwrap_err()
            .to_string()
    };
    assert!(dispatch(&[]).contains("--sim-agents"));
    assert!(dispatch(&["--sim-agents", "1", "--runs", "0"]).starts_with("--runs"));
    assert!(
        dispatch(&["--sim-agents", "1", "--coordinator", "http://10.0.0.1:7878"])
            .starts_with("refusing")
    );
}

#[test]
fn load_flags_do_not_mix_with_subcommands() {
    assert!(parse(&["--runs", "5", "fairness"]).is_err());
    assert!(parse(&["fairness", "--runs", "5"]).is_err());
}

//! Tests of `State::apply` and the scheduler.

use prost::Message;

use super::*;
use crate::pb::{Platform, PushedImage};
use crate::scheduler::{self, AgentView};

fn request(platform: &str) -> RunRequest {
    let spec = PlatformSpec::parse(platform).unwrap();
    RunRequest {
        task_yaml: "steps:\n  - cmd: busybox echo hi\n".to_string(),
        registry: "127.0.0.1:5000".to_string(),
        platform: Some(spec.to_pb()),
        kind: "run".to_string(),
        ..RunRequest::default()
    }
}

fn cmd(at_ms: u64, kind: command::Kind) -> Command {
    Command {
        at_ms,
        kind: Some(kind),
    }
}

fn submit(state: &mut State, platform: &str) -> String {
    let outcome = state.apply(&cmd(
        1,
        command::Kind::SubmitRun(SubmitRun {
            request: Some(request(platform)),
        }),
    ));
    assert_eq!(outcome.result.error, "");
    outcome.result.run_id
}

fn assign(state: &mut State, run_id: &str, agent: &str) -> ApplyOutcome {
    state.apply(&cmd(
        2,
        command::Kind::AssignRun(AssignRun {
            run_id: run_id.to_string(),
            agent_id: agent.to_string(),
            agent_platform: Some(Platform::default()),
            emulated: false,
        }),
    ))
}

fn update(state: &mut State, run_id: &str, step: &str, status: StepStatus) -> ApplyOutcome {
    state.apply(&cmd(
        3,
        command::Kind::UpdateStep(UpdateStep {
            run_id: run_id.to_string(),
            step_id: step.to_string(),
            status: status as i32,
            ..UpdateStep::default()
        }),
    ))
}

#[test]
fn run_ids_are_short_unique_and_increasing() {
    let mut state = State::default();
    assert_eq!(submit(&mut state, "linux/amd64"), "ca1");
    assert_eq!(submit(&mut state, "linux/amd64"), "ca2");
    assert_eq!(seq_from_run_id("ca2"), Some(2));
    for bad in ["", "ca", "ca0", "ca01", "cb1", "ca-1", "ca1x"] {
        assert_eq!(seq_from_run_id(bad), None, "{bad}");
    }
}

#[test]
fn a_run_goes_through_its_lifecycle() {
    let mut state = State::default();
    let id = submit(&mut state, "linux/amd64");
    assert_eq!(assign(&mut state, &id, "agent-1").result.error, "");
    let planned = state.apply(&cmd(
        3,
        command::Kind::PlanRun(PlanRun {
            run_id: id.clone(),
            step_ids: vec!["build".into(), "push".into()],
        }),
    ));
    assert_eq!(planned.result.error, "");
    assert_eq!(
        update(&mut state, &id, "build", StepStatus::Running)
            .result
            .error,
        ""
    );
    assert_eq!(
        update(&mut state, &id, "build", StepStatus::Succeeded)
            .result
            .error,
        ""
    );
    // A repeated terminal report is accepted without change; a different one is rejected.
    let repeat = update(&mut state, &id, "build", StepStatus::Succeeded);
    assert_eq!(
        (repeat.result.error.as_str(), repeat.changed_run),
        ("", None)
    );
    assert!(update(&mut state, &id, "build", StepStatus::Failed)
        .result
        .error
        .contains("already ended"));
    let image = PushedImage {
        step_id: "push".into(),
        image: "127.0.0.1:5000/app:ca1".into(),
        digest: format!("sha256:{}", "a".repeat(64)),
    };
    let recorded = state.apply(&cmd(
        4,
        command::Kind::RecordImage(RecordImage {
            run_id: id.clone(),
            image: Some(image),
        }),
    ));
    assert_eq!(recorded.result.error, "");
    assert_eq!(
        update(&mut state, &id, "push", StepStatus::Running)
            .result
            .error,
        ""
    );
    let finished = state.apply(&cmd(
        9,
        command::Kind::FinishRun(FinishRun {
            run_id: id.clone(),
            status: RunStatus::Failed as i32,
            reason: "step push failed".into(),
            agent_id: "agent-1".into(),
        }),
    ));
    assert_eq!(finished.result.error, "");
    let run = state.run(&id).unwrap();
    assert_eq!(run.status(), RunStatus::Failed);
    assert_eq!(run.finished_at_ms, 9);
    assert_eq!(run.images.len(), 1);
    assert_eq!(run.steps[0].status(), StepStatus::Succeeded);
    assert_eq!(run.steps[1].status(), StepStatus::Canceled);
    // Nothing changes a finished run.
    assert!(update(&mut state, &id, "push", StepStatus::Succeeded)
        .result
        .error
        .contains("already finished"));
}

#[test]
fn finish_from_another_agent_is_rejected() {
    let mut state = State::default();
    let id = submit(&mut state, "linux/amd64");
    assign(&mut state, &id, "agent-1");
    let outcome = state.apply(&cmd(
        5,
        command::Kind::FinishRun(FinishRun {
            run_id: id.clone(),
            status: RunStatus::Succeeded as i32,
            reason: String::new(),
            agent_id: "agent-2".into(),
        }),
    ));
    assert!(outcome.result.error.contains("not assigned"));
    assert_eq!(state.run(&id).unwrap().status(), RunStatus::Running);
}

#[test]
fn cancel_finishes_a_queued_run_and_flags_a_running_one() {
    let mut state = State::default();
    let queued = submit(&mut state, "linux/amd64");
    let running = submit(&mut state, "linux/amd64");
    assign(&mut state, &running, "agent-1");
    for id in [&queued, &running] {
        let outcome = state.apply(&cmd(
            7,
            command::Kind::RequestCancel(RequestCancel { run_id: id.clone() }),
        ));
        assert_eq!(outcome.result.error, "");
    }
    assert_eq!(state.run(&queued).unwrap().status(), RunStatus::Canceled);
    let run = state.run(&running).unwrap();
    assert_eq!(run.status(), RunStatus::Running);
    assert!(run.cancel_requested);
    let again = state.apply(&cmd(
        8,
        command::Kind::RequestCancel(RequestCancel {
            run_id: queued.clone(),
        }),
    ));
    assert!(again.result.error.contains("already finished: Canceled"));
}

#[test]
fn bad_requests_are_rejected_with_reasons() {
    let mut state = State::default();
    let mut empty = request("linux/amd64");
    empty.task_yaml = "  \n".into();
    let mut big = request("linux/amd64");
    big.task_yaml = "x".repeat(MAX_TASK_BYTES + 1);
    let mut digest = request("linux/amd64");
    digest.context_digest = "sha256:xyz".into();
    let mut platform = request("linux/amd64");
    platform.platform = Some(Platform {
        os: "linux".into(),
        architecture: "mips".into(),
        variant: String::new(),
    });
    for (bad, expected) in [
        (empty, "empty"),
        (big, "at most"),
        (digest, "sha256:<64"),
        (platform, "unknown platform"),
    ] {
        let outcome = state.apply(&cmd(
            1,
            command::Kind::SubmitRun(SubmitRun { request: Some(bad) }),
        ));
        assert!(
            outcome.result.error.contains(expected),
            "{}",
            outcome.result.error
        );
        assert_eq!(outcome.changed_run, None);
    }
    assert_eq!(state.runs().count(), 0);
}

/// A small deterministic generator, so the property tests need no extra crate and print a seed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() as usize) % items.len()]
    }
}

fn random_command(rng: &mut Lcg) -> Command {
    let run_id = rng
        .pick(&["ca1", "ca2", "ca3", "ca0", "zz", ""])
        .to_string();
    let step_id = rng.pick(&["build", "push", "", "acb_step_0"]).to_string();
    let status = (rng.next() % 12) as i32 - 1;
    let kind = match rng.next() % 8 {
        0 => command::Kind::SubmitRun(SubmitRun {
            request: (!rng.next().is_multiple_of(4))
                .then(|| request(rng.pick(&["linux/amd64", "linux/arm64", "linux/arm"]))),
        }),
        1 => command::Kind::AssignRun(AssignRun {
            run_id,
            agent_id: rng.pick(&["a1", "a2", ""]).to_string(),
            agent_platform: None,
            emulated: rng.next().is_multiple_of(2),
        }),
        2 => command::Kind::PlanRun(PlanRun {
            run_id,
            step_ids: (0..rng.next() % 4)
                .map(|_| rng.pick(&["build", "push", "build", ""]).to_string())
                .collect(),
        }),
        3 => command::Kind::UpdateStep(UpdateStep {
            run_id,
            step_id,
            status,
            has_exit_code: rng.next().is_multiple_of(2),
            exit_code: rng.next() as i32,
            reason: "x".repeat((rng.next() % 5000) as usize),
            log_digest: String::new(),
            log_size: rng.next(),
        }),
        4 => command::Kind::RecordImage(RecordImage {
            run_id,
            image: Some(PushedImage {
                step_id,
                image: rng.pick(&["", "r/a:1"]).to_string(),
                digest: rng.pick(&["", "sha256:1"]).to_string(),
            }),
        }),
        5 => command::Kind::FinishRun(FinishRun {
            run_id,
            status,
            reason: String::new(),
            agent_id: rng.pick(&["a1", ""]).to_string(),
        }),
        _ => command::Kind::RequestCancel(RequestCancel { run_id }),
    };
    Command {
        at_ms: rng.next(),
        kind: (!rng.next().is_multiple_of(20)).then_some(kind),
    }
}

#[test]
fn apply_is_deterministic_and_total() {
    for seed in 0..200u64 {
        let mut rng = Lcg(seed);
        let commands: Vec<Command> = (0..200).map(|_| random_command(&mut rng)).collect();
        let mut first = State::default();
        let mut second = State::default();
        for command in &commands {
            // Round-trip through the wire encoding, as the Raft log does.
            let decoded = Command::decode(command.encode_to_vec().as_slice()).unwrap();
            let a = first.apply(command);
            let b = second.apply(&decoded);
            assert_eq!(a, b, "seed {seed}");
        }
        assert_eq!(first, second, "seed {seed}");
        for run in first.runs() {
            assert!(run.reason.len() <= MAX_REASON_BYTES + 4, "seed {seed}");
            for step in &run.steps {
                assert!(step.reason.len() <= MAX_REASON_BYTES + 4, "seed {seed}");
            }
        }
    }
}

#[test]
fn garbage_bytes_never_panic() {
    let mut rng = Lcg(42);
    let mut state = State::default();
    for _ in 0..5000 {
        let bytes: Vec<u8> = (0..rng.next() % 64).map(|_| rng.next() as u8).collect();
        if let Ok(command) = Command::decode(bytes.as_slice()) {
            state.apply(&command);
        }
    }
}

fn agent(id: &str, platforms: &[(&str, bool)], capacity: u32, running: u32) -> AgentView {
    AgentView {
        agent_id: id.into(),
        platforms: platforms
            .iter()
            .map(|(p, e)| (PlatformSpec::parse(p).unwrap(), *e))
            .collect(),
        capacity,
        running,
    }
}

#[test]
fn scheduler_matches_platforms_and_prefers_native() {
    let mut state = State::default();
    let arm = submit(&mut state, "linux/arm64");
    let amd = submit(&mut state, "linux/amd64");
    let riscv_like = submit(&mut state, "linux/arm/v7");
    let agents = [
        agent(
            "emu",
            &[("linux/amd64", false), ("linux/arm64", true)],
            4,
            0,
        ),
        agent("native-arm", &[("linux/arm64", false)], 1, 0),
    ];
    let assignments = scheduler::solve(&state, &agents);
    assert_eq!(assignments.len(), 2);
    assert_eq!(
        (
            assignments[0].run_id.as_str(),
            assignments[0].agent_id.as_str(),
            assignments[0].emulated
        ),
        (arm.as_str(), "native-arm", false)
    );
    assert_eq!(
        (
            assignments[1].run_id.as_str(),
            assignments[1].agent_id.as_str()
        ),
        (amd.as_str(), "emu")
    );
    let reason = scheduler::queued_reason(state.run(&riscv_like).unwrap(), &agents);
    assert!(
        reason.contains("no connected agent can run linux/arm/v7"),
        "{reason}"
    );
    assert!(reason.contains("linux/arm64 (emulated)"), "{reason}");
}

#[test]
fn scheduler_uses_emulation_when_no_native_agent_and_respects_capacity() {
    let mut state = State::default();
    let first = submit(&mut state, "linux/arm64");
    let second = submit(&mut state, "linux/arm64");
    let agents = [agent(
        "emu",
        &[("linux/amd64", false), ("linux/arm64", true)],
        1,
        0,
    )];
    let assignments = scheduler::solve(&state, &agents);
    assert_eq!(assignments.len(), 1);
    assert_eq!(assignments[0].run_id, first);
    assert!(assignments[0].emulated);
    let busy = [agent("emu", &[("linux/arm64", true)], 1, 1)];
    assert!(scheduler::solve(&state, &busy).is_empty());
    let reason = scheduler::queued_reason(state.run(&second).unwrap(), &busy);
    assert!(reason.contains("all busy"), "{reason}");
    assert!(scheduler::queued_reason(state.run(&second).unwrap(), &[])
        .contains("no agent is connected"));
}

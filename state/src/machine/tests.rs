//! Tests of `State::apply` and the scheduler.

use prost::Message;

use super::*;
use crate::pb::{KeyValue, LogSegment, Platform, PushedImage};
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
    let outcome = state.apply(
        NO_INDEX,
        &cmd(
            1,
            command::Kind::SubmitRun(SubmitRun {
                request: Some(request(platform)),
                ..Default::default()
            }),
        ),
    );
    assert_eq!(outcome.result.error, "");
    outcome.result.run_id
}

/// The log index of commands whose index does not matter to the test.
const NO_INDEX: u64 = 1;
/// The log index (and so the lease epoch) of assignments made by `assign`.
const EPOCH: u64 = 7;

fn lease(agent: &str) -> Option<Lease> {
    Some(Lease {
        agent_id: agent.to_string(),
        epoch: EPOCH,
    })
}

fn assign(state: &mut State, run_id: &str, agent: &str) -> ApplyOutcome {
    state.apply(
        EPOCH,
        &cmd(
            2,
            command::Kind::AssignRun(AssignRun {
                run_id: run_id.to_string(),
                agent_id: agent.to_string(),
                agent_platform: Some(Platform::default()),
                emulated: false,
            }),
        ),
    )
}

fn update(state: &mut State, run_id: &str, step: &str, status: StepStatus) -> ApplyOutcome {
    state.apply(
        NO_INDEX,
        &cmd(
            3,
            command::Kind::UpdateStep(UpdateStep {
                run_id: run_id.to_string(),
                step_id: step.to_string(),
                status: status as i32,
                lease: lease("agent-1"),
                ..UpdateStep::default()
            }),
        ),
    )
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
    let planned = state.apply(
        NO_INDEX,
        &cmd(
            3,
            command::Kind::PlanRun(PlanRun {
                run_id: id.clone(),
                step_ids: vec!["build".into(), "push".into()],
                lease: lease("agent-1"),
            }),
        ),
    );
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
    let recorded = state.apply(
        NO_INDEX,
        &cmd(
            4,
            command::Kind::RecordImage(RecordImage {
                run_id: id.clone(),
                image: Some(image),
                lease: lease("agent-1"),
            }),
        ),
    );
    assert_eq!(recorded.result.error, "");
    assert_eq!(
        update(&mut state, &id, "push", StepStatus::Running)
            .result
            .error,
        ""
    );
    let finished = state.apply(
        NO_INDEX,
        &cmd(
            9,
            command::Kind::FinishRun(FinishRun {
                run_id: id.clone(),
                status: RunStatus::Failed as i32,
                reason: "step push failed".into(),
                agent_id: "agent-1".into(),
                lease: lease("agent-1"),
            }),
        ),
    );
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
        .contains("stale lease"));
}

#[test]
fn finish_from_another_agent_is_rejected() {
    let mut state = State::default();
    let id = submit(&mut state, "linux/amd64");
    assign(&mut state, &id, "agent-1");
    let outcome = state.apply(
        NO_INDEX,
        &cmd(
            5,
            command::Kind::FinishRun(FinishRun {
                run_id: id.clone(),
                status: RunStatus::Succeeded as i32,
                reason: String::new(),
                agent_id: "agent-2".into(),
                lease: lease("agent-2"),
            }),
        ),
    );
    assert!(outcome.result.error.contains("stale lease"), "{outcome:?}");
    assert_eq!(state.run(&id).unwrap().status(), RunStatus::Running);
}

#[test]
fn cancel_finishes_a_queued_run_and_flags_a_running_one() {
    let mut state = State::default();
    let queued = submit(&mut state, "linux/amd64");
    let running = submit(&mut state, "linux/amd64");
    assign(&mut state, &running, "agent-1");
    for id in [&queued, &running] {
        let outcome = state.apply(
            NO_INDEX,
            &cmd(
                7,
                command::Kind::RequestCancel(RequestCancel { run_id: id.clone() }),
            ),
        );
        assert_eq!(outcome.result.error, "");
    }
    assert_eq!(state.run(&queued).unwrap().status(), RunStatus::Canceled);
    let run = state.run(&running).unwrap();
    assert_eq!(run.status(), RunStatus::Running);
    assert!(run.cancel_requested);
    let again = state.apply(
        NO_INDEX,
        &cmd(
            8,
            command::Kind::RequestCancel(RequestCancel {
                run_id: queued.clone(),
            }),
        ),
    );
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
        let outcome = state.apply(
            NO_INDEX,
            &cmd(
                1,
                command::Kind::SubmitRun(SubmitRun {
                    request: Some(bad),
                    ..Default::default()
                }),
            ),
        );
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
    let lease = match rng.next() % 4 {
        0 => None,
        n => Some(Lease {
            agent_id: rng.pick(&["a1", "a2"]).to_string(),
            epoch: n,
        }),
    };
    let kind = match rng.next() % 11 {
        0 => command::Kind::SubmitRun(SubmitRun {
            request: (!rng.next().is_multiple_of(4))
                .then(|| request(rng.pick(&["linux/amd64", "linux/arm64", "linux/arm"]))),
            request_id: rng.pick(&["", "", "r1", "r2"]).to_string(),
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
            lease,
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
            lease,
        }),
        4 => command::Kind::RecordImage(RecordImage {
            run_id,
            image: Some(PushedImage {
                step_id,
                image: rng.pick(&["", "r/a:1"]).to_string(),
                digest: rng.pick(&["", "sha256:1"]).to_string(),
            }),
            lease,
        }),
        5 => command::Kind::FinishRun(FinishRun {
            run_id,
            status,
            reason: String::new(),
            agent_id: rng.pick(&["a1", ""]).to_string(),
            lease,
        }),
        6 => command::Kind::AcknowledgeRun(AcknowledgeRun { run_id, lease }),
        7 => command::Kind::RequeueRun(RequeueRun {
            run_id,
            lease,
            reason: "lost".into(),
            only_if_unstarted: rng.next().is_multiple_of(2),
        }),
        8 => command::Kind::RecordLog(RecordLog {
            run_id,
            step_id,
            segment: Some(crate::pb::LogSegment {
                index: (rng.next() % 3) as u32,
                digest: format!("sha256:{}", rng.pick(&["a", "b"]).repeat(64)),
                size: rng.next(),
            }),
            lease,
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
        for (index, command) in commands.iter().enumerate() {
            // Round-trip through the wire encoding, as the Raft log does. Small indexes, so
            // that random leases sometimes match an assignment's epoch.
            let decoded = Command::decode(command.encode_to_vec().as_slice()).unwrap();
            let index = (index % 4) as u64;
            let a = first.apply(index, command);
            let b = second.apply(index, &decoded);
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
            state.apply(rng.next() % 4, &command);
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
        ..AgentView::default()
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

fn planned_run(state: &mut State) -> String {
    let id = submit(state, "linux/amd64");
    assert_eq!(assign(state, &id, "agent-1").result.error, "");
    let planned = state.apply(
        NO_INDEX,
        &cmd(
            3,
            command::Kind::PlanRun(PlanRun {
                run_id: id.clone(),
                step_ids: vec!["build".into(), "push".into()],
                lease: lease("agent-1"),
            }),
        ),
    );
    assert_eq!(planned.result.error, "");
    id
}

fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

/// Every kind of report, for the run `id`, under `lease`.
fn every_report(id: &str, lease: Option<Lease>) -> Vec<(&'static str, command::Kind)> {
    vec![
        (
            "plan",
            command::Kind::PlanRun(PlanRun {
                run_id: id.into(),
                step_ids: vec!["other".into()],
                lease: lease.clone(),
            }),
        ),
        (
            "step update",
            command::Kind::UpdateStep(UpdateStep {
                run_id: id.into(),
                step_id: "build".into(),
                status: StepStatus::Succeeded as i32,
                lease: lease.clone(),
                ..UpdateStep::default()
            }),
        ),
        (
            "image pushed",
            command::Kind::RecordImage(RecordImage {
                run_id: id.into(),
                image: Some(PushedImage {
                    step_id: "push".into(),
                    image: "r/a:1".into(),
                    digest: digest('a'),
                }),
                lease: lease.clone(),
            }),
        ),
        (
            "log segment",
            command::Kind::RecordLog(RecordLog {
                run_id: id.into(),
                step_id: "build".into(),
                segment: Some(LogSegment {
                    index: 0,
                    digest: digest('b'),
                    size: 10,
                }),
                lease: lease.clone(),
            }),
        ),
        (
            "acknowledgement",
            command::Kind::AcknowledgeRun(AcknowledgeRun {
                run_id: id.into(),
                lease: lease.clone(),
            }),
        ),
        (
            "finish",
            command::Kind::FinishRun(FinishRun {
                run_id: id.into(),
                status: RunStatus::Succeeded as i32,
                lease,
                ..FinishRun::default()
            }),
        ),
    ]
}

#[test]
fn every_report_from_a_stale_or_forged_lease_is_rejected_and_changes_nothing() {
    let mut state = State::default();
    let id = planned_run(&mut state);
    let before = state.clone();
    let forged = [
        ("another agent", lease("agent-2")),
        (
            "an old epoch",
            Some(Lease {
                agent_id: "agent-1".into(),
                epoch: EPOCH - 1,
            }),
        ),
        ("no lease", None),
    ];
    for (who, lease) in forged {
        for (what, kind) in every_report(&id, lease) {
            let outcome = state.apply(NO_INDEX, &cmd(5, kind));
            assert_ne!(outcome.result.error, "", "{what} from {who} was accepted");
            assert_eq!(outcome.changed_run, None, "{what} from {who}");
            assert_eq!(
                outcome.result.stale_lease,
                who != "no lease",
                "{what} from {who}: {}",
                outcome.result.error
            );
        }
    }
    assert_eq!(state, before);
}

#[test]
fn every_report_is_applied_once_when_it_is_sent_again() {
    let mut state = State::default();
    let id = planned_run(&mut state);
    // The plan is already applied; each other report twice (a resend after a lost ack).
    for (what, kind) in every_report(&id, lease("agent-1")).into_iter().skip(1) {
        let first = state.apply(NO_INDEX, &cmd(5, kind.clone()));
        assert_eq!(first.result.error, "", "{what}");
        let snapshot = state.clone();
        let again = state.apply(NO_INDEX, &cmd(6, kind));
        assert_eq!(again.result.error, "", "{what}");
        assert_eq!(again.changed_run, None, "{what}");
        assert_eq!(state, snapshot, "{what}");
    }
    let run = state.run(&id).unwrap();
    assert_eq!(run.status(), RunStatus::Succeeded);
    assert_eq!(run.images.len(), 1);
    assert_eq!(run.steps[0].log_segments.len(), 1);

    // The run has ended; the agent reconnects and sends every report again, in order (their
    // acknowledgements were lost): each is answered as applied, none changes anything.
    let snapshot = state.clone();
    for (what, kind) in every_report(&id, lease("agent-1")).into_iter().skip(1) {
        let again = state.apply(NO_INDEX, &cmd(7, kind));
        assert_eq!(again.result.error, "", "{what} after the run ended");
        assert!(!again.result.stale_lease, "{what} after the run ended");
        assert_eq!(again.changed_run, None, "{what}");
    }
    assert_eq!(state, snapshot);
    // What the ended run does not hold is still refused as stale.
    let other_step = command::Kind::UpdateStep(UpdateStep {
        run_id: id.clone(),
        step_id: "build".into(),
        status: StepStatus::Failed as i32,
        lease: lease("agent-1"),
        ..UpdateStep::default()
    });
    let refused = state.apply(NO_INDEX, &cmd(8, other_step));
    assert!(refused.result.stale_lease, "{}", refused.result.error);
    assert_eq!(state, snapshot);
}

#[test]
fn a_requeue_and_an_acknowledgement_race_and_exactly_one_wins() {
    // Requeue first: the late acknowledgement is stale.
    let mut state = State::default();
    let id = submit(&mut state, "linux/amd64");
    assign(&mut state, &id, "agent-1");
    let requeue = command::Kind::RequeueRun(RequeueRun {
        run_id: id.clone(),
        lease: lease("agent-1"),
        reason: "not acknowledged within 5s".into(),
        only_if_unstarted: true,
    });
    assert_eq!(
        state.apply(NO_INDEX, &cmd(4, requeue.clone())).result.error,
        ""
    );
    let run = state.run(&id).unwrap();
    assert_eq!(run.status(), RunStatus::Queued);
    assert_eq!(run.agent_id, "");
    assert_eq!(run.requeues.len(), 1);
    assert!(
        run.requeues[0].contains("agent agent-1"),
        "{:?}",
        run.requeues
    );
    let ack = command::Kind::AcknowledgeRun(AcknowledgeRun {
        run_id: id.clone(),
        lease: lease("agent-1"),
    });
    assert!(state.apply(NO_INDEX, &cmd(5, ack)).result.stale_lease);
    // The next assignment is a new lease, with a new epoch and attempt.
    assert_eq!(
        state
            .apply(
                EPOCH + 10,
                &cmd(
                    6,
                    command::Kind::AssignRun(AssignRun {
                        run_id: id.clone(),
                        agent_id: "agent-2".into(),
                        ..AssignRun::default()
                    })
                )
            )
            .result
            .error,
        ""
    );
    let run = state.run(&id).unwrap();
    assert_eq!((run.lease_epoch, run.attempt), (EPOCH + 10, 2));

    // A step started first: the unstarted-only requeue is refused.
    let mut state = State::default();
    let id = planned_run(&mut state);
    assert_eq!(
        update(&mut state, &id, "build", StepStatus::Running)
            .result
            .error,
        ""
    );
    let requeue = command::Kind::RequeueRun(RequeueRun {
        run_id: id.clone(),
        lease: lease("agent-1"),
        reason: "agent lost".into(),
        only_if_unstarted: true,
    });
    let outcome = state.apply(NO_INDEX, &cmd(7, requeue));
    assert!(
        outcome.result.error.contains("started a step"),
        "{:?}",
        outcome
    );
    assert_eq!(state.run(&id).unwrap().status(), RunStatus::Running);
}

#[test]
fn requeues_are_bounded() {
    let mut state = State::default();
    let id = submit(&mut state, "linux/amd64");
    for attempt in 0..MAX_ATTEMPTS as u64 {
        let epoch = 100 + attempt;
        let assigned = state.apply(
            epoch,
            &cmd(
                1,
                command::Kind::AssignRun(AssignRun {
                    run_id: id.clone(),
                    agent_id: "a".into(),
                    ..AssignRun::default()
                }),
            ),
        );
        assert_eq!(assigned.result.error, "", "attempt {attempt}");
        let requeued = state.apply(
            NO_INDEX,
            &cmd(
                2,
                command::Kind::RequeueRun(RequeueRun {
                    run_id: id.clone(),
                    lease: Some(Lease {
                        agent_id: "a".into(),
                        epoch,
                    }),
                    reason: "x".into(),
                    only_if_unstarted: false,
                }),
            ),
        );
        if attempt + 1 < MAX_ATTEMPTS as u64 {
            assert_eq!(requeued.result.error, "", "attempt {attempt}");
        } else {
            assert!(requeued.result.error.contains("not requeued"));
        }
    }
    let run = state.run(&id).unwrap();
    assert_eq!(run.status(), RunStatus::Running);
    assert_eq!(run.attempt, MAX_ATTEMPTS);
    assert!(run.requeues.len() <= MAX_ATTEMPTS as usize);
}

#[test]
fn log_segments_are_recorded_in_order() {
    let mut state = State::default();
    let id = planned_run(&mut state);
    let segment = |index: u32, c: char| {
        command::Kind::RecordLog(RecordLog {
            run_id: id.clone(),
            step_id: "build".into(),
            segment: Some(LogSegment {
                index,
                digest: digest(c),
                size: 5,
            }),
            lease: lease("agent-1"),
        })
    };
    assert!(state
        .apply(NO_INDEX, &cmd(1, segment(1, 'a')))
        .result
        .error
        .contains("out of order"));
    assert_eq!(
        state.apply(NO_INDEX, &cmd(1, segment(0, 'a'))).result.error,
        ""
    );
    assert!(state
        .apply(NO_INDEX, &cmd(1, segment(0, 'c')))
        .result
        .error
        .contains("another digest"));
    assert_eq!(
        state.apply(NO_INDEX, &cmd(1, segment(1, 'b'))).result.error,
        ""
    );
    let step = &state.run(&id).unwrap().steps[0];
    assert_eq!(
        step.log_segments
            .iter()
            .map(|s| s.digest.clone())
            .collect::<Vec<_>>(),
        vec![digest('a'), digest('b')]
    );
}

#[test]
fn request_bounds_are_enforced_with_reasons() {
    let mut state = State::default();
    let mut long = request("linux/amd64");
    long.timeout_seconds = MAX_RUN_TIMEOUT_SECONDS + 1;
    let mut sets = request("linux/amd64");
    sets.set = (0..=MAX_SET_VALUES)
        .map(|i| KeyValue {
            key: format!("k{i}"),
            value: String::new(),
        })
        .collect();
    let mut name = request("linux/amd64");
    name.agent_pool = "p".repeat(MAX_NAME_BYTES + 1);
    for (bad, expected) in [
        (long, "8 hours"),
        (sets, "values; at most"),
        (name, "agent pool"),
    ] {
        let outcome = state.apply(
            NO_INDEX,
            &cmd(
                1,
                command::Kind::SubmitRun(SubmitRun {
                    request: Some(bad),
                    ..Default::default()
                }),
            ),
        );
        assert!(
            outcome.result.error.contains(expected),
            "{}",
            outcome.result.error
        );
    }
    assert_eq!(state.runs().count(), 0);
}

fn submit_as(state: &mut State, submitter: &str, pool: &str) -> String {
    let mut req = request("linux/amd64");
    req.submitter = submitter.into();
    req.agent_pool = pool.into();
    let outcome = state.apply(
        NO_INDEX,
        &cmd(
            1,
            command::Kind::SubmitRun(SubmitRun {
                request: Some(req),
                ..Default::default()
            }),
        ),
    );
    assert_eq!(outcome.result.error, "");
    outcome.result.run_id
}

#[test]
fn scheduler_is_fair_across_submitters() {
    let mut state = State::default();
    for _ in 0..50 {
        submit_as(&mut state, "flood", "");
    }
    let lone = submit_as(&mut state, "lone", "");
    let agents = [agent("a", &[("linux/amd64", false)], 2, 0)];
    let assignments = scheduler::solve(&state, &agents);
    assert_eq!(assignments.len(), 2);
    // The flood's oldest run and the lone submitter's run share the first round.
    assert_eq!(assignments[0].run_id, "ca1");
    assert_eq!(assignments[1].run_id, lone);

    // With the flood already running on every other slot, a single free slot goes to the
    // lone submitter's run, not to the flood's next one.
    let mut state = State::default();
    for _ in 0..10 {
        submit_as(&mut state, "flood", "");
    }
    for run in ["ca1", "ca2", "ca3"] {
        assert_eq!(assign(&mut state, run, "a").result.error, "");
    }
    let lone = submit_as(&mut state, "lone", "");
    let one_free = [agent("a", &[("linux/amd64", false)], 4, 3)];
    let assignments = scheduler::solve(&state, &one_free);
    assert_eq!(assignments.len(), 1);
    assert_eq!(assignments[0].run_id, lone);
}

#[test]
fn the_queue_indexes_follow_every_status_change() {
    let mut state = State::default();
    let id = planned_run(&mut state);
    let other = submit(&mut state, "linux/amd64");
    let ids = |runs: Vec<&Run>| runs.into_iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(state.running_runs().collect()), vec![id.clone()]);
    assert_eq!(ids(state.queued_runs().collect()), vec![other.clone()]);
    let rebuilt = State::from_runs(state.runs().cloned());
    assert_eq!(rebuilt, state);
    state.apply(
        NO_INDEX,
        &cmd(
            9,
            command::Kind::FinishRun(FinishRun {
                run_id: id.clone(),
                status: RunStatus::Succeeded as i32,
                lease: lease("agent-1"),
                ..FinishRun::default()
            }),
        ),
    );
    state.apply(
        NO_INDEX,
        &cmd(
            9,
            command::Kind::RequestCancel(RequestCancel { run_id: other }),
        ),
    );
    assert_eq!(state.running_runs().count(), 0);
    assert_eq!(state.queued_runs().count(), 0);
}

#[test]
fn scheduler_keeps_runs_in_their_pool_and_says_why_they_wait() {
    let mut state = State::default();
    let gpu = submit_as(&mut state, "u", "gpu");
    let plain = submit_as(&mut state, "u", "");
    let mut pooled = agent("g1", &[("linux/amd64", false)], 4, 0);
    pooled.pool = "gpu".into();
    let default_pool = agent("d1", &[("linux/amd64", false)], 4, 0);
    let assignments = scheduler::solve(&state, &[pooled.clone(), default_pool.clone()]);
    let placed: Vec<(&str, &str)> = assignments
        .iter()
        .map(|a| (a.run_id.as_str(), a.agent_id.as_str()))
        .collect();
    assert_eq!(placed, vec![(gpu.as_str(), "g1"), (plain.as_str(), "d1")]);
    let alone = scheduler::solve(&state, std::slice::from_ref(&default_pool));
    assert_eq!(alone.len(), 1);
    let reason = scheduler::queued_reason(state.run(&gpu).unwrap(), &[default_pool]);
    assert!(reason.contains("pool 'gpu'"), "{reason}");

    // Labels: only an agent with every asked-for label takes the run.
    let mut labelled = request("linux/amd64");
    labelled.agent_labels = vec![KeyValue {
        key: "disk".into(),
        value: "ssd".into(),
    }];
    let mut state = State::default();
    state.apply(
        NO_INDEX,
        &cmd(
            1,
            command::Kind::SubmitRun(SubmitRun {
                request: Some(labelled),
                ..Default::default()
            }),
        ),
    );
    let mut ssd = agent("ssd", &[("linux/amd64", false)], 1, 0);
    ssd.labels = vec![KeyValue {
        key: "disk".into(),
        value: "ssd".into(),
    }];
    let hdd = agent("hdd", &[("linux/amd64", false)], 1, 0);
    assert!(scheduler::solve(&state, std::slice::from_ref(&hdd)).is_empty());
    assert_eq!(scheduler::solve(&state, &[hdd, ssd])[0].agent_id, "ssd");
}

//! The simulated agent's protocol, message by message, without a coordinator.

use std::time::{Duration, Instant};

use kiln_proto::v1::{
    agent_message, coordinator_message, AgentMessage, AgentPlatform, Assignment, CancelRun,
    CoordinatorMessage, Drain, ReportAck, StopRun, Welcome,
};
use kiln_state::pb::{Platform, RunRequest, RunStatus, StepStatus};

use super::{Action, Identity, Machine, STEP_ID};

const STEP: Duration = Duration::from_millis(250);

fn machine(capacity: u32) -> Machine {
    Machine::new(Identity {
        agent_id: "sim-1".to_string(),
        platforms: vec![AgentPlatform {
            platform: Some(Platform {
                os: "linux".to_string(),
                architecture: "amd64".to_string(),
                variant: String::new(),
            }),
            emulated: false,
        }],
        capacity,
        pool: "fast".to_string(),
        step: STEP,
    })
}

fn msg(msg: coordinator_message::Msg) -> CoordinatorMessage {
    CoordinatorMessage { msg: Some(msg) }
}

fn assign(run_id: &str, epoch: u64) -> CoordinatorMessage {
    msg(coordinator_message::Msg::Assign(Assignment {
        run_id: run_id.to_string(),
        epoch,
        request: Some(RunRequest {
            submitter: "flood".to_string(),
            ..RunRequest::default()
        }),
        ..Assignment::default()
    }))
}

fn ack(report_id: u64) -> CoordinatorMessage {
    msg(coordinator_message::Msg::ReportAck(ReportAck {
        report_id,
        ..ReportAck::default()
    }))
}

fn sent(actions: &[Action]) -> Vec<AgentMessage> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Send(message) => Some(message.clone()),
            _ => None,
        })
        .collect()
}

/// The report id of the step update with `status` among `messages`.
fn step_report(messages: &[AgentMessage], status: StepStatus) -> u64 {
    messages
        .iter()
        .find_map(|m| match &m.msg {
            Some(agent_message::Msg::StepUpdate(u)) if u.status == status as i32 => {
                Some(m.report_id)
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {status:?} step update in {messages:?}"))
}

fn finish_report(messages: &[AgentMessage]) -> (u64, i32) {
    messages
        .iter()
        .find_map(|m| match &m.msg {
            Some(agent_message::Msg::RunFinished(f)) => Some((m.report_id, f.status)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no RunFinished in {messages:?}"))
}

#[test]
fn hello_speaks_protocol_2_with_identity() {
    let m = machine(3);
    let Some(agent_message::Msg::Hello(hello)) = m.hello().msg else {
        panic!("not a hello");
    };
    assert_eq!(hello.agent_id, "sim-1");
    assert_eq!(hello.protocol_version, kiln_proto::PROTOCOL_VERSION);
    assert_eq!(hello.capacity, 3);
    assert_eq!(hello.pool, "fast");
    assert!(!hello.draining && hello.leases.is_empty());
    assert_eq!(hello.platforms[0].platform.as_ref().unwrap().os, "linux");
}

#[test]
fn welcome_of_an_old_protocol_is_refused() {
    let mut m = machine(1);
    let old = Welcome {
        protocol_version: 1,
        ..Welcome::default()
    };
    assert!(m.welcome(&old).unwrap_err().contains("protocol 1"));
    let current = Welcome {
        protocol_version: kiln_proto::PROTOCOL_VERSION,
        ..Welcome::default()
    };
    assert_eq!(m.welcome(&current).unwrap(), Vec::new());
}

#[test]
fn a_run_goes_through_ack_plan_running_step_and_finish() {
    let mut m = machine(2);
    let now = Instant::now();
    let actions = m.handle(assign("r1", 7), now);
    let out = sent(&actions);
    // Ack first, without a report id; then the plan and the step's start, as reports.
    match &out[0].msg {
        Some(agent_message::Msg::AssignmentAck(a)) => {
            assert_eq!((a.run_id.as_str(), a.epoch), ("r1", 7));
        }
        other => panic!("first message is not the ack: {other:?}"),
    }
    assert_eq!(out[0].report_id, 0);
    match &out[1].msg {
        Some(agent_message::Msg::RunPlanned(p)) => {
            assert_eq!(p.step_ids, vec![STEP_ID.to_string()]);
            assert_eq!(p.epoch, 7);
        }
        other => panic!("second message is not the plan: {other:?}"),
    }
    let running = step_report(&out, StepStatus::Running);
    assert!(out[1].report_id > 0 && running > out[1].report_id);
    assert_eq!(m.active(), 1);

    // No timer before the Running update is committed.
    let after_plan_ack = m.handle(ack(out[1].report_id), now);
    assert!(!after_plan_ack
        .iter()
        .any(|a| matches!(a, Action::Wake { .. })));
    let after_running_ack = m.handle(ack(running), now + Duration::from_millis(3));
    assert!(after_running_ack.contains(&Action::Acked(Duration::from_millis(3))));
    assert!(after_running_ack.contains(&Action::Wake {
        run_id: "r1".to_string(),
        epoch: 7,
        after: STEP,
    }));

    let done = sent(&m.step_done("r1", 7, now));
    let succeeded = step_report(&done, StepStatus::Succeeded);
    let (finished, status) = finish_report(&done);
    assert_eq!(status, RunStatus::Succeeded as i32);
    assert!(finished > succeeded && succeeded > running);
    assert!(done.iter().all(|m| report_epoch(m) == Some(7)));
    m.handle(ack(succeeded), now);
    assert_eq!(m.active(), 1, "held until RunFinished is committed");
    let last = m.handle(ack(finished), now);
    assert!(last.contains(&Action::Finished {
        run_id: "r1".to_string(),
        submitter: "flood".to_string(),
        status: RunStatus::Succeeded,
    }));
    assert_eq!(m.active(), 0);
    assert_eq!(m.unacknowledged(), 0);
    assert_eq!(m.counters.succeeded, 1);
}

fn report_epoch(message: &AgentMessage) -> Option<u64> {
    match &message.msg {
        Some(agent_message::Msg::StepUpdate(u)) => Some(u.epoch),
        Some(agent_message::Msg::RunFinished(f)) => Some(f.epoch),
        Some(agent_message::Msg::RunPlanned(p)) => Some(p.epoch),
        _ => None,
    }
}

#[test]
fn report_ids_are_unique_and_increasing_across_runs() {
    let mut m = machine(4);
    let now = Instant::now();
    let mut ids = Vec::new();
    for run in ["a", "b", "c"] {
        ids.extend(
            sent(&m.handle(assign(run, 1), now))
                .iter()
                .map(|m| m.report_id)
                .filter(|id| *id > 0),
        );
    }
    assert_eq!(ids.len(), 6);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}

#[test]
fn a_duplicate_assignment_is_acknowledged_again_without_restarting() {
    let mut m = machine(2);
    let now = Instant::now();
    m.handle(assign("r1", 3), now);
    let again = sent(&m.handle(assign("r1", 3), now));
    assert_eq!(again.len(), 1);
    assert!(matches!(
        again[0].msg,
        Some(agent_message::Msg::AssignmentAck(_))
    ));
    assert_eq!(m.counters.duplicate_assignments, 1);
    assert_eq!(m.counters.assigned, 1);
    // An older lease is ignored; a newer one restarts the run under it.
    assert!(sent(&m.handle(assign("r1", 2), now)).is_empty());
    let newer = sent(&m.handle(assign("r1", 9), now));
    assert_eq!(newer.len(), 3);
    assert_eq!(m.active(), 1);
    assert_eq!(
        m.unacknowledged(),
        2,
        "the old lease's reports are forgotten"
    );
}

#[test]
fn over_capacity_assignments_are_taken_and_counted() {
    let mut m = machine(1);
    let now = Instant::now();
    m.handle(assign("a", 1), now);
    m.handle(assign("b", 2), now);
    assert_eq!(m.active(), 2);
    assert_eq!(m.counters.over_capacity, 1);
    assert_eq!(m.counters.max_active, 2);
}

#[test]
fn a_stale_ack_drops_the_run() {
    let mut m = machine(1);
    let now = Instant::now();
    let out = sent(&m.handle(assign("r1", 1), now));
    let running = step_report(&out, StepStatus::Running);
    let actions = m.handle(
        msg(coordinator_message::Msg::ReportAck(ReportAck {
            report_id: running,
            stale: true,
            error: "stale lease".to_string(),
        })),
        now,
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::Wake { .. })));
    assert_eq!(m.active(), 0);
    assert_eq!(m.unacknowledged(), 0);
    assert_eq!(m.counters.stale, 1);
}

#[test]
fn a_rejected_report_is_recorded_and_the_run_abandoned() {
    let mut m = machine(1);
    let now = Instant::now();
    let out = sent(&m.handle(assign("r1", 1), now));
    m.handle(
        msg(coordinator_message::Msg::ReportAck(ReportAck {
            report_id: out[1].report_id,
            error: "no such run".to_string(),
            stale: false,
        })),
        now,
    );
    assert_eq!(m.counters.report_errors, 1);
    assert!(m.first_error.as_deref().unwrap().contains("no such run"));
    assert_eq!(m.active(), 0);
}

#[test]
fn stop_run_drops_the_run_and_its_timer_does_nothing() {
    let mut m = machine(1);
    let now = Instant::now();
    let out = sent(&m.handle(assign("r1", 4), now));
    m.handle(ack(step_report(&out, StepStatus::Running)), now);
    // A stop for another lease is ignored; epoch 0 means whatever lease is held.
    let stop = |epoch| {
        msg(coordinator_message::Msg::Stop(StopRun {
            run_id: "r1".to_string(),
            epoch,
            reason: "reassigned".to_string(),
        }))
    };
    m.handle(stop(5), now);
    assert_eq!(m.active(), 1);
    m.handle(stop(0), now);
    assert_eq!(m.active(), 0);
    assert_eq!(m.counters.stopped, 1);
    assert!(m.step_done("r1", 4, now).is_empty());
}

#[test]
fn cancel_finishes_the_run_canceled() {
    let mut m = machine(1);
    let now = Instant::now();
    let out = sent(&m.handle(assign("r1", 1), now));
    m.handle(ack(step_report(&out, StepStatus::Running)), now);
    let canceled = sent(&m.handle(
        msg(coordinator_message::Msg::Cancel(CancelRun {
            run_id: "r1".to_string(),
        })),
        now,
    ));
    step_report(&canceled, StepStatus::Canceled);
    let (finished, status) = finish_report(&canceled);
    assert_eq!(status, RunStatus::Canceled as i32);
    // The step's timer firing later sends nothing more.
    assert!(m.step_done("r1", 1, now).is_empty());
    m.handle(ack(finished), now);
    assert_eq!(m.counters.canceled, 1);
    assert_eq!(m.active(), 0);
}

#[test]
fn draining_refuses_new_runs_and_shows_in_heartbeats() {
    let mut m = machine(2);
    let now = Instant::now();
    m.handle(assign("held", 1), now);
    m.handle(
        msg(coordinator_message::Msg::Drain(Drain { drain: true })),
        now,
    );
    assert!(m.handle(assign("new", 2), now).is_empty());
    assert_eq!(m.counters.refused_draining, 1);
    let Some(agent_message::Msg::Heartbeat(first)) = m.heartbeat().msg else {
        panic!("not a heartbeat");
    };
    assert!(first.draining);
    assert_eq!(first.active.len(), 1);
    assert_eq!(
        (first.active[0].run_id.as_str(), first.active[0].epoch),
        ("held", 1)
    );
    let Some(agent_message::Msg::Heartbeat(second)) = m.heartbeat().msg else {
        panic!("not a heartbeat");
    };
    assert_eq!(second.seq, first.seq + 1);
}

#[test]
fn a_reconnect_resends_unacknowledged_reports_in_order_and_lists_leases() {
    let mut m = machine(2);
    let now = Instant::now();
    let out = sent(&m.handle(assign("r1", 5), now));
    m.handle(ack(out[1].report_id), now);
    let resend = m
        .welcome(&Welcome {
            protocol_version: kiln_proto::PROTOCOL_VERSION,
            ..Welcome::default()
        })
        .unwrap();
    assert_eq!(
        resend,
        vec![out[2].clone()],
        "only the unacknowledged Running update"
    );
    let Some(agent_message::Msg::Hello(hello)) = m.hello().msg else {
        panic!("not a hello");
    };
    assert_eq!(hello.active_runs, vec!["r1".to_string()]);
    assert_eq!(hello.leases[0].epoch, 5);
    // An ack for an unknown report (answered twice) changes nothing.
    assert!(m.handle(ack(999), now).is_empty());
}

#[test]
fn a_stop_while_finishing_still_counts_the_committed_finish() {
    let mut m = machine(1);
    let now = Instant::now();
    let out = sent(&m.handle(assign("r1", 2), now));
    m.handle(ack(step_report(&out, StepStatus::Running)), now);
    let done = sent(&m.step_done("r1", 2, now));
    let (finished, _) = finish_report(&done);
    m.handle(
        msg(coordinator_message::Msg::Stop(StopRun {
            run_id: "r1".to_string(),
            epoch: 2,
            reason: "run r1 already ended Succeeded".to_string(),
        })),
        now,
    );
    assert_eq!(m.active(), 0);
    assert_eq!(
        m.unacknowledged(),
        1,
        "only the RunFinished is still awaited"
    );
    let last = m.handle(ack(finished), now);
    assert!(last.contains(&Action::Finished {
        run_id: "r1".to_string(),
        submitter: "flood".to_string(),
        status: RunStatus::Succeeded,
    }));
    assert_eq!((m.counters.succeeded, m.counters.stopped), (1, 1));
}

//! What runs report to the coordinator, and the report state kept for replay.
//!
//! Runners send `Report`s into one bounded channel; the session forwards them on the gRPC
//! stream and records the latest state of every run in `RunReports`. After a reconnect the
//! session replays that state (the coordinator applies repeats idempotently), so runs keep
//! going while the agent is disconnected. Finished runs stay replayable for a bounded time
//! and count, because the protocol has no acknowledgement.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use kiln_proto::v1::{
    agent_message, AgentMessage, ImagePushed, LogChunk, RunFinished, RunPlanned, StepUpdate,
};
use tokio::sync::mpsc;

/// How long a finished run's final report is replayed after reconnects.
pub const FINISHED_RETENTION: Duration = Duration::from_secs(15 * 60);
/// At most this many finished runs are kept for replay (oldest dropped first).
pub const FINISHED_MAX: usize = 256;

/// One report of a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    Planned(RunPlanned),
    Step(StepUpdate),
    Log(LogChunk),
    Image(ImagePushed),
    Finished(RunFinished),
}

impl Report {
    /// The run the report is about.
    pub fn run_id(&self) -> &str {
        match self {
            Report::Planned(m) => &m.run_id,
            Report::Step(m) => &m.run_id,
            Report::Log(m) => &m.run_id,
            Report::Image(m) => &m.run_id,
            Report::Finished(m) => &m.run_id,
        }
    }

    /// The report as a message on the session stream.
    pub fn into_message(self) -> AgentMessage {
        let msg = match self {
            Report::Planned(m) => agent_message::Msg::RunPlanned(m),
            Report::Step(m) => agent_message::Msg::StepUpdate(m),
            Report::Log(m) => agent_message::Msg::Log(m),
            Report::Image(m) => agent_message::Msg::ImagePushed(m),
            Report::Finished(m) => agent_message::Msg::RunFinished(m),
        };
        AgentMessage { msg: Some(msg) }
    }
}

/// The sending half of the report channel (cheap to clone).
#[derive(Debug, Clone)]
pub struct ReportSender(mpsc::Sender<Report>);

impl ReportSender {
    /// Sends a report, waiting while the channel is full (backpressure). Reports sent after
    /// the session has stopped are dropped: there is nobody left to tell.
    pub async fn send(&self, report: Report) {
        let _ = self.0.send(report).await;
    }
}

/// A bounded report channel of `capacity` reports.
pub fn report_channel(capacity: usize) -> (ReportSender, mpsc::Receiver<Report>) {
    let (tx, rx) = mpsc::channel(capacity);
    (ReportSender(tx), rx)
}

#[derive(Debug, Default)]
struct RunReport {
    planned: Option<RunPlanned>,
    /// Latest update per step, in the order steps were first reported.
    steps: Vec<StepUpdate>,
    images: Vec<ImagePushed>,
    finished: Option<RunFinished>,
}

/// The latest reported state of every active run and of recently finished ones.
#[derive(Debug, Default)]
pub struct RunReports {
    runs: BTreeMap<String, RunReport>,
    finished: VecDeque<(String, Instant)>,
}

impl RunReports {
    /// Records a report (log chunks are not replayed and leave no state).
    pub fn record(&mut self, report: &Report, now: Instant) {
        if let Report::Log(_) = report {
            return;
        }
        let run = self.runs.entry(report.run_id().to_string()).or_default();
        match report {
            Report::Planned(m) => run.planned = Some(m.clone()),
            Report::Step(m) => match run.steps.iter_mut().find(|s| s.step_id == m.step_id) {
                Some(existing) => *existing = m.clone(),
                None => run.steps.push(m.clone()),
            },
            Report::Image(m) => {
                if !run.images.contains(m) {
                    run.images.push(m.clone());
                }
            }
            Report::Finished(m) => {
                if run.finished.is_none() {
                    self.finished.push_back((m.run_id.clone(), now));
                }
                run.finished = Some(m.clone());
            }
            Report::Log(_) => {}
        }
        self.prune(now);
    }

    /// Every message needed to bring a coordinator up to date, run by run.
    pub fn replay(&self) -> Vec<AgentMessage> {
        let mut out = Vec::new();
        for run in self.runs.values() {
            if let Some(planned) = &run.planned {
                out.push(Report::Planned(planned.clone()).into_message());
            }
            for step in &run.steps {
                out.push(Report::Step(step.clone()).into_message());
            }
            for image in &run.images {
                out.push(Report::Image(image.clone()).into_message());
            }
            if let Some(finished) = &run.finished {
                out.push(Report::Finished(finished.clone()).into_message());
            }
        }
        out
    }

    /// Whether the run is known (active or recently finished).
    pub fn contains(&self, run_id: &str) -> bool {
        self.runs.contains_key(run_id)
    }

    /// Runs that reported something but have not finished.
    pub fn active_runs(&self) -> Vec<String> {
        self.runs
            .iter()
            .filter(|(_, run)| run.finished.is_none())
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn prune(&mut self, now: Instant) {
        while let Some((run_id, at)) = self.finished.front() {
            let expired = now.duration_since(*at) > FINISHED_RETENTION;
            if !expired && self.finished.len() <= FINISHED_MAX {
                break;
            }
            self.runs.remove(run_id);
            self.finished.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_proto::pb::{RunStatus, StepStatus};

    fn step(run: &str, step: &str, status: StepStatus) -> Report {
        Report::Step(StepUpdate {
            run_id: run.into(),
            step_id: step.into(),
            status: status as i32,
            ..Default::default()
        })
    }

    fn finished(run: &str) -> Report {
        Report::Finished(RunFinished {
            run_id: run.into(),
            status: RunStatus::Succeeded as i32,
            reason: String::new(),
        })
    }

    #[test]
    fn replay_keeps_the_latest_step_state_in_order() {
        let now = Instant::now();
        let mut reports = RunReports::default();
        reports.record(
            &Report::Planned(RunPlanned {
                run_id: "r1".into(),
                step_ids: vec!["a".into(), "b".into()],
            }),
            now,
        );
        reports.record(&step("r1", "a", StepStatus::Running), now);
        reports.record(&step("r1", "b", StepStatus::Running), now);
        reports.record(&step("r1", "a", StepStatus::Succeeded), now);
        let replay = reports.replay();
        assert_eq!(replay.len(), 3);
        match &replay[1].msg {
            Some(agent_message::Msg::StepUpdate(u)) => {
                assert_eq!(u.step_id, "a");
                assert_eq!(u.status, StepStatus::Succeeded as i32);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(reports.active_runs(), vec!["r1".to_string()]);
        reports.record(&finished("r1"), now);
        assert!(reports.active_runs().is_empty());
        assert_eq!(reports.replay().len(), 4);
    }

    #[test]
    fn finished_runs_are_bounded_in_time_and_count() {
        let start = Instant::now();
        let mut reports = RunReports::default();
        for i in 0..FINISHED_MAX + 10 {
            reports.record(&finished(&format!("r{i}")), start);
        }
        assert!(!reports.contains("r0"));
        assert!(reports.contains(&format!("r{}", FINISHED_MAX + 9)));
        assert_eq!(reports.replay().len(), FINISHED_MAX);
        reports.record(&step("active", "a", StepStatus::Running), start);
        let later = start + FINISHED_RETENTION + Duration::from_secs(1);
        reports.record(&step("active", "a", StepStatus::Running), later);
        assert_eq!(reports.replay().len(), 1);
        assert!(reports.contains("active"));
    }
}

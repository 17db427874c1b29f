//! What runs report to the coordinator, and the channel they report through.
//!
//! Runners send `Report`s into one bounded channel; the session stamps each with its run's
//! lease epoch, spools it on disk (`spool.rs`) and sends it until the coordinator acknowledges
//! it, so runs keep going while the agent is disconnected and nothing reported is lost. A
//! runner that must know a report is committed before it goes on (a step about to start) uses
//! [`ReportSender::send_committed`].

use kiln_proto::v1::{
    agent_message, AgentMessage, ImagePushed, LogChunk, LogStored, RunFinished, RunPlanned,
    StepUpdate,
};
use tokio::sync::{mpsc, oneshot};

/// One report of a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    Planned(RunPlanned),
    Step(StepUpdate),
    Log(LogChunk),
    Image(ImagePushed),
    Finished(RunFinished),
    /// A segment of a running step's log was stored in the registry.
    LogStored(LogStored),
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
            Report::LogStored(m) => &m.run_id,
        }
    }

    /// Stamps the lease epoch the agent holds for the report's run (the session does this:
    /// runners do not know about leases).
    pub fn set_epoch(&mut self, epoch: u64) {
        match self {
            Report::Planned(m) => m.epoch = epoch,
            Report::Step(m) => m.epoch = epoch,
            Report::Log(_) => {}
            Report::Image(m) => m.epoch = epoch,
            Report::Finished(m) => m.epoch = epoch,
            Report::LogStored(m) => m.epoch = epoch,
        }
    }

    /// Whether the report must reach the coordinator (spooled, acknowledged). Live log chunks
    /// need not: the stored log segments carry the same bytes.
    pub fn is_durable(&self) -> bool {
        !matches!(self, Report::Log(_))
    }

    /// The report from a message, if the message is a report.
    pub fn from_message(message: AgentMessage) -> Option<Report> {
        Some(match message.msg? {
            agent_message::Msg::RunPlanned(m) => Report::Planned(m),
            agent_message::Msg::StepUpdate(m) => Report::Step(m),
            agent_message::Msg::Log(m) => Report::Log(m),
            agent_message::Msg::ImagePushed(m) => Report::Image(m),
            agent_message::Msg::RunFinished(m) => Report::Finished(m),
            agent_message::Msg::LogStored(m) => Report::LogStored(m),
            _ => return None,
        })
    }

    /// The report as a message on the session stream.
    pub fn into_message(self) -> AgentMessage {
        let msg = match self {
            Report::Planned(m) => agent_message::Msg::RunPlanned(m),
            Report::Step(m) => agent_message::Msg::StepUpdate(m),
            Report::Log(m) => agent_message::Msg::Log(m),
            Report::Image(m) => agent_message::Msg::ImagePushed(m),
            Report::Finished(m) => agent_message::Msg::RunFinished(m),
            Report::LogStored(m) => agent_message::Msg::LogStored(m),
        };
        AgentMessage {
            msg: Some(msg),
            report_id: 0,
        }
    }
}

/// Why a report sent with [`ReportSender::send_committed`] was not committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The agent no longer holds the run's lease (the coordinator ended the run or gave it to
    /// another agent): stop the run without doing anything more.
    #[error("the coordinator no longer assigns this run to this agent: {0}")]
    Stale(String),
    /// The coordinator refused the report for another reason.
    #[error("the coordinator refused the report: {0}")]
    Rejected(String),
    /// The agent is shutting down; nobody will acknowledge the report.
    #[error("the agent's session has stopped")]
    Closed,
}

/// What a commit waiter learns.
pub type CommitResult = Result<(), ReportError>;

/// One report on its way to the session, with whoever waits for its commit.
#[derive(Debug)]
pub struct Envelope {
    pub report: Report,
    pub committed: Option<oneshot::Sender<CommitResult>>,
}

/// The sending half of the report channel (cheap to clone).
#[derive(Debug, Clone)]
pub struct ReportSender(mpsc::Sender<Envelope>);

impl ReportSender {
    /// Sends a report, waiting while the channel is full (backpressure). The session spools
    /// it on disk and resends it until the coordinator acknowledges it. Reports sent after
    /// the session has stopped are dropped: there is nobody left to tell.
    pub async fn send(&self, report: Report) {
        let _ = self
            .0
            .send(Envelope {
                report,
                committed: None,
            })
            .await;
    }

    /// Sends a report and waits until the coordinator has committed it: used before a step
    /// starts, so that a step never starts under a lease the coordinator has taken back. While
    /// the coordinator is unreachable this waits (the report is resent after reconnecting).
    pub async fn send_committed(&self, report: Report) -> CommitResult {
        let (tx, rx) = oneshot::channel();
        self.0
            .send(Envelope {
                report,
                committed: Some(tx),
            })
            .await
            .map_err(|_| ReportError::Closed)?;
        rx.await.unwrap_or(Err(ReportError::Closed))
    }
}

/// The receiving half. Tests read plain reports with `recv`/`try_recv`, which count a report
/// sent with `send_committed` as committed at once; the session takes whole envelopes.
#[derive(Debug)]
pub struct ReportReceiver(mpsc::Receiver<Envelope>);

impl ReportReceiver {
    pub async fn recv(&mut self) -> Option<Report> {
        self.0.recv().await.map(commit_now)
    }

    pub fn try_recv(&mut self) -> Result<Report, mpsc::error::TryRecvError> {
        self.0.try_recv().map(commit_now)
    }

    pub async fn recv_envelope(&mut self) -> Option<Envelope> {
        self.0.recv().await
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn commit_now(envelope: Envelope) -> Report {
    if let Some(committed) = envelope.committed {
        let _ = committed.send(Ok(()));
    }
    envelope.report
}

/// A bounded report channel of `capacity` reports.
pub fn report_channel(capacity: usize) -> (ReportSender, ReportReceiver) {
    let (tx, rx) = mpsc::channel(capacity);
    (ReportSender(tx), ReportReceiver(rx))
}

//! The coordinator in-process with scripted agents over real gRPC: scheduling by platform, the
//! lease protocol (epochs, acknowledgements, fencing), liveness, live logs, cancellation, and
//! restarts on the same data directory.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use kiln_coordinator::control::LivenessConfig;
use kiln_proto::pb::{Platform, RunRequest, RunStatus, StepStatus};
use kiln_proto::v1::agent_service_client::AgentServiceClient;
use kiln_proto::v1::control_client::ControlClient;
use kiln_proto::v1::{
    agent_message, coordinator_message, ActiveRun, AgentMessage, AgentPlatform, Assignment,
    AssignmentAck, CancelRunRequest, CoordinatorMessage, DrainAgentRequest, GetInfoRequest,
    GetRunRequest, GetRunResponse, Heartbeat, Hello, ImagePushed, LogChunk, ReportAck, RunFinished,
    RunPlanned, StepUpdate, StreamLogsRequest, SubmitRunRequest,
};

const WAIT: Duration = Duration::from_secs(20);

/// Short limits, so that loss and acknowledgement timeouts happen within a test.
fn liveness() -> LivenessConfig {
    LivenessConfig {
        heartbeat_interval: Duration::from_millis(100),
        lost_after: Duration::from_millis(800),
        agent_grace: Duration::from_secs(2),
        ack_timeout: Duration::from_millis(700),
        timeout_slack: Duration::from_secs(120),
    }
}

struct Coordinator {
    address: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(data_dir: &std::path::Path) -> Coordinator {
    let client = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", client.local_addr().unwrap());
    let config = kiln_coordinator::Config {
        listen: client.local_addr().unwrap(),
        peer_listen: peer.local_addr().unwrap(),
        http_listen: None,
        data_dir: data_dir.to_path_buf(),
        // Never contacted: no step here stores a log blob.
        registry: "127.0.0.1:1".to_string(),
        membership: kiln_coordinator::cluster::Membership {
            node_id: 1,
            peer_url: String::new(),
            client_url: String::new(),
            initial_members: Vec::new(),
            initial_state: kiln_coordinator::cluster::InitialClusterState::New,
            cluster_token: "test".to_string(),
            join: None,
            restore: None,
            force_new_cluster: false,
        },
        raft: Default::default(),
        liveness: liveness(),
        retention: Default::default(),
    };
    let shutdown = CancellationToken::new();
    let listeners = kiln_coordinator::Listeners {
        client,
        peer,
        http: None,
    };
    let task = tokio::spawn(kiln_coordinator::serve(listeners, config, shutdown.clone()));
    Coordinator {
        address,
        shutdown,
        task,
    }
}

impl Coordinator {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }

    async fn control(&self) -> ControlClient<tonic::transport::Channel> {
        ControlClient::connect(self.address.clone()).await.unwrap()
    }
}

/// A scripted agent: says Hello, sends heartbeats while `beating`, and hands back what the
/// coordinator sends.
struct Agent {
    tx: mpsc::Sender<AgentMessage>,
    inbound: tonic::Streaming<CoordinatorMessage>,
    heartbeats: tokio::task::JoinHandle<()>,
    next_report: u64,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.heartbeats.abort();
    }
}

fn hello(id: &str, platforms: &[(&str, &str, bool)], leases: Vec<ActiveRun>) -> Hello {
    Hello {
        agent_id: id.to_string(),
        platforms: platforms
            .iter()
            .map(|(os, arch, emulated)| AgentPlatform {
                platform: Some(Platform {
                    os: os.to_string(),
                    architecture: arch.to_string(),
                    variant: String::new(),
                }),
                emulated: *emulated,
            })
            .collect(),
        capacity: 2,
        version: "test".to_string(),
        protocol_version: kiln_proto::PROTOCOL_VERSION,
        leases,
        ..Hello::default()
    }
}

async fn open_session(
    address: &str,
    hello: Hello,
) -> Result<
    (
        mpsc::Sender<AgentMessage>,
        tonic::Streaming<CoordinatorMessage>,
    ),
    tonic::Status,
> {
    let (tx, rx) = mpsc::channel(64);
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(hello)),
        report_id: 0,
    })
    .await
    .unwrap();
    let mut client = AgentServiceClient::connect(address.to_string())
        .await
        .unwrap();
    let inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    Ok((tx, inbound))
}

async fn connect_agent(address: &str, id: &str, platforms: &[(&str, &str, bool)]) -> Agent {
    connect_with(address, hello(id, platforms, vec![])).await
}

/// Connects, retrying while the coordinator refuses the id (it has not seen the previous
/// connection of this agent end yet).
async fn reconnect(address: &str, hello: Hello) -> Agent {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match open_session(address, hello.clone()).await {
            Ok(session) => return agent_on(session, hello.leases.clone()).await,
            Err(status) if status.code() == tonic::Code::AlreadyExists => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still refused: {status}"
                );
                tokio::task::yield_now().await;
            }
            Err(status) => panic!("cannot reconnect: {status}"),
        }
    }
}

async fn connect_with(address: &str, hello: Hello) -> Agent {
    let leases = hello.leases.clone();
    agent_on(open_session(address, hello).await.unwrap(), leases).await
}

async fn agent_on(
    (tx, mut inbound): (
        mpsc::Sender<AgentMessage>,
        tonic::Streaming<CoordinatorMessage>,
    ),
    // What its heartbeats say it executes (as a real agent lists its runs).
    leases: Vec<ActiveRun>,
) -> Agent {
    let first = inbound.message().await.unwrap().unwrap().msg.unwrap();
    let coordinator_message::Msg::Welcome(welcome) = first else {
        panic!("the coordinator's first message is Welcome, not {first:?}")
    };
    assert_eq!(welcome.protocol_version, kiln_proto::PROTOCOL_VERSION);
    let beat_tx = tx.clone();
    let heartbeats = tokio::spawn(async move {
        let mut seq = 0;
        loop {
            seq += 1;
            let beat = AgentMessage {
                msg: Some(agent_message::Msg::Heartbeat(Heartbeat {
                    seq,
                    active: leases.clone(),
                    ..Heartbeat::default()
                })),
                report_id: 0,
            };
            if beat_tx.send(beat).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Agent {
        tx,
        inbound,
        heartbeats,
        next_report: 1,
    }
}

impl Agent {
    /// The next message that is not a heartbeat.
    async fn next(&mut self) -> coordinator_message::Msg {
        loop {
            let message = tokio::time::timeout(WAIT, self.inbound.message())
                .await
                .expect("a message in time");
            match message.unwrap().unwrap().msg.unwrap() {
                coordinator_message::Msg::Heartbeat(_) => continue,
                other => return other,
            }
        }
    }

    async fn next_assignment(&mut self) -> Assignment {
        loop {
            match self.next().await {
                coordinator_message::Msg::Assign(assignment) => return assignment,
                coordinator_message::Msg::ReportAck(_) | coordinator_message::Msg::Drain(_) => {
                    continue
                }
                other => panic!("expected an assignment, got {other:?}"),
            }
        }
    }

    async fn ack_assignment(&self, assignment: &Assignment) {
        self.send_raw(
            agent_message::Msg::AssignmentAck(AssignmentAck {
                run_id: assignment.run_id.clone(),
                epoch: assignment.epoch,
            }),
            0,
        )
        .await;
    }

    async fn send_raw(&self, msg: agent_message::Msg, report_id: u64) {
        self.tx
            .send(AgentMessage {
                msg: Some(msg),
                report_id,
            })
            .await
            .unwrap();
    }

    /// Sends a report and waits for its acknowledgement.
    async fn report(&mut self, msg: agent_message::Msg) -> ReportAck {
        let id = self.next_report;
        self.next_report += 1;
        self.send_raw(msg, id).await;
        loop {
            match self.next().await {
                coordinator_message::Msg::ReportAck(ack) if ack.report_id == id => return ack,
                coordinator_message::Msg::ReportAck(_) | coordinator_message::Msg::Stop(_) => {}
                other => panic!("expected the ack of report {id}, got {other:?}"),
            }
        }
    }

    /// Stops heartbeats (a frozen agent).
    fn freeze(&self) {
        self.heartbeats.abort();
    }
}

fn request(arch: &str) -> RunRequest {
    RunRequest {
        task_yaml: "steps:\n  - cmd: busybox echo hi\n".to_string(),
        registry: "127.0.0.1:5000".to_string(),
        platform: Some(Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: String::new(),
        }),
        kind: "run".to_string(),
        ..RunRequest::default()
    }
}

async fn submit(control: &mut ControlClient<tonic::transport::Channel>, arch: &str) -> String {
    control
        .submit_run(SubmitRunRequest {
            request: Some(request(arch)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run_id
}

async fn get_run(
    control: &mut ControlClient<tonic::transport::Channel>,
    run_id: &str,
) -> GetRunResponse {
    control
        .get_run(GetRunRequest {
            run_id: run_id.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn wait_for_status(
    control: &mut ControlClient<tonic::transport::Channel>,
    run_id: &str,
    status: RunStatus,
) -> kiln_proto::pb::Run {
    tokio::time::timeout(WAIT, async {
        loop {
            let run = get_run(control, run_id).await.run.unwrap();
            if run.status() == status {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("run {run_id} did not become {status:?}"))
}

fn step(run_id: &str, epoch: u64, status: StepStatus) -> agent_message::Msg {
    agent_message::Msg::StepUpdate(StepUpdate {
        run_id: run_id.to_string(),
        step_id: "acb_step_0".into(),
        status: status as i32,
        has_exit_code: status == StepStatus::Succeeded,
        epoch,
        ..StepUpdate::default()
    })
}

fn planned(run_id: &str, epoch: u64) -> agent_message::Msg {
    agent_message::Msg::RunPlanned(RunPlanned {
        run_id: run_id.to_string(),
        step_ids: vec!["acb_step_0".into()],
        epoch,
    })
}

fn finished(run_id: &str, epoch: u64, status: RunStatus) -> agent_message::Msg {
    agent_message::Msg::RunFinished(RunFinished {
        run_id: run_id.to_string(),
        status: status as i32,
        reason: String::new(),
        epoch,
    })
}

#[tokio::test]
async fn runs_are_scheduled_by_platform_reported_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = start(dir.path()).await;
    let mut control = coordinator.control().await;

    // An arm64 run with only an amd64 agent stays queued and says why.
    let arm = submit(&mut control, "arm64").await;
    let mut amd_agent =
        connect_agent(&coordinator.address, "amd", &[("linux", "amd64", false)]).await;
    let amd = submit(&mut control, "amd64").await;
    assert_eq!((arm.as_str(), amd.as_str()), ("ca1", "ca2"));

    let assignment = amd_agent.next_assignment().await;
    assert_eq!(assignment.run_id, amd);
    assert!(assignment.epoch > 0);
    amd_agent.ack_assignment(&assignment).await;
    let queued = get_run(&mut control, &arm).await;
    assert!(
        queued
            .queued_reason
            .contains("no connected agent can run linux/arm64"),
        "{}",
        queued.queued_reason
    );

    // The agent reports under its lease; a follower sees the live log and the stream ends
    // with the run.
    let epoch = assignment.epoch;
    assert_eq!(amd_agent.report(planned(&amd, epoch)).await.error, "");
    let mut follower = control
        .stream_logs(StreamLogsRequest {
            run_id: amd.clone(),
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        amd_agent
            .report(step(&amd, epoch, StepStatus::Running))
            .await
            .error,
        ""
    );
    amd_agent
        .send_raw(
            agent_message::Msg::Log(LogChunk {
                run_id: amd.clone(),
                step_id: "acb_step_0".into(),
                data: b"hi\n".to_vec(),
                offset: Some(0),
            }),
            0,
        )
        .await;
    amd_agent
        .report(step(&amd, epoch, StepStatus::Succeeded))
        .await;
    amd_agent
        .report(finished(&amd, epoch, RunStatus::Succeeded))
        .await;
    let mut log = Vec::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, follower.message())
        .await
        .unwrap()
        .unwrap()
    {
        log.extend(chunk.data);
    }
    assert_eq!(log, b"hi\n");
    let run = wait_for_status(&mut control, &amd, RunStatus::Succeeded).await;
    assert!(run.acknowledged);
    assert_eq!(run.lease_epoch, epoch);

    // An emulating agent takes the arm64 run; cancelling it reaches that agent.
    let mut emulator = connect_agent(
        &coordinator.address,
        "emu",
        &[("linux", "amd64", false), ("linux", "arm64", true)],
    )
    .await;
    let assignment = emulator.next_assignment().await;
    assert_eq!(
        (assignment.run_id.as_str(), assignment.emulated),
        (arm.as_str(), true)
    );
    emulator.ack_assignment(&assignment).await;
    control
        .cancel_run(CancelRunRequest {
            run_id: arm.clone(),
        })
        .await
        .unwrap();
    let coordinator_message::Msg::Cancel(cancel) = emulator.next().await else {
        panic!("expected a cancellation")
    };
    assert_eq!(cancel.run_id, arm);
    emulator
        .report(finished(&arm, assignment.epoch, RunStatus::Canceled))
        .await;
    wait_for_status(&mut control, &arm, RunStatus::Canceled).await;

    // Nothing is lost across a restart, and run ids keep increasing.
    drop((amd_agent, emulator, control));
    coordinator.stop().await;
    let coordinator = start(dir.path()).await;
    let mut control = coordinator.control().await;
    let run = get_run(&mut control, &amd).await.run.unwrap();
    assert_eq!(run.status(), RunStatus::Succeeded);
    assert_eq!(run.steps[0].status(), StepStatus::Succeeded);
    assert_eq!(
        get_run(&mut control, &arm).await.run.unwrap().status(),
        RunStatus::Canceled
    );
    assert_eq!(submit(&mut control, "amd64").await, "ca3");
    coordinator.stop().await;
}

#[tokio::test]
async fn reports_from_another_stream_or_an_old_lease_change_nothing_and_are_told_to_stop() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = start(dir.path()).await;
    let mut control = coordinator.control().await;
    let mut owner =
        connect_agent(&coordinator.address, "owner", &[("linux", "amd64", false)]).await;
    let run_id = submit(&mut control, "amd64").await;
    let assignment = owner.next_assignment().await;
    owner.ack_assignment(&assignment).await;
    let epoch = assignment.epoch;
    owner.report(planned(&run_id, epoch)).await;
    owner
        .report(step(&run_id, epoch, StepStatus::Running))
        .await;

    // Another agent, knowing the run id and even the epoch, forges every kind of report.
    let mut forger =
        connect_agent(&coordinator.address, "forger", &[("linux", "amd64", false)]).await;
    let forged = [
        planned(&run_id, epoch),
        step(&run_id, epoch, StepStatus::Succeeded),
        agent_message::Msg::ImagePushed(ImagePushed {
            run_id: run_id.clone(),
            step_id: "acb_step_0".into(),
            image: "127.0.0.1:5000/evil:1".into(),
            digest: format!("sha256:{}", "e".repeat(64)),
            epoch,
        }),
        agent_message::Msg::LogStored(kiln_proto::v1::LogStored {
            run_id: run_id.clone(),
            step_id: "acb_step_0".into(),
            epoch,
            index: 0,
            digest: format!("sha256:{}", "f".repeat(64)),
            size: 1,
            offset: 0,
        }),
        finished(&run_id, epoch, RunStatus::Succeeded),
    ];
    for msg in forged {
        let ack = forger.report(msg).await;
        assert!(ack.stale, "a forged report was not refused: {ack:?}");
    }
    // The owner, under an old epoch, is refused too.
    let ack = owner
        .report(step(&run_id, epoch - 1, StepStatus::Succeeded))
        .await;
    assert!(ack.stale && ack.error.contains("stale lease"), "{ack:?}");
    let run = get_run(&mut control, &run_id).await.run.unwrap();
    assert_eq!(run.status(), RunStatus::Running);
    assert_eq!(run.steps[0].status(), StepStatus::Running);
    assert!(run.images.is_empty());
    assert!(run.steps[0].log_segments.is_empty());

    // A report sent twice (its first ack was lost) is applied once.
    let image = agent_message::Msg::ImagePushed(ImagePushed {
        run_id: run_id.clone(),
        step_id: "acb_step_0".into(),
        image: "127.0.0.1:5000/app:1".into(),
        digest: format!("sha256:{}", "a".repeat(64)),
        epoch,
    });
    assert_eq!(owner.report(image.clone()).await.error, "");
    assert_eq!(owner.report(image).await.error, "");
    assert_eq!(
        get_run(&mut control, &run_id)
            .await
            .run
            .unwrap()
            .images
            .len(),
        1
    );
    drop((owner, forger, control));
    coordinator.stop().await;
}

#[tokio::test]
async fn a_second_live_agent_with_the_same_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = start(dir.path()).await;
    let _first = connect_agent(&coordinator.address, "twin", &[("linux", "amd64", false)]).await;
    let error = open_session(
        &coordinator.address,
        hello("twin", &[("linux", "amd64", false)], vec![]),
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), tonic::Code::AlreadyExists);
    assert!(
        error.message().contains("already connected"),
        "{}",
        error.message()
    );
    // An old agent (protocol 1) is refused with what to do.
    let mut old = hello("old", &[("linux", "amd64", false)], vec![]);
    old.protocol_version = 1;
    let error = open_session(&coordinator.address, old).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::FailedPrecondition);
    assert!(error.message().contains("upgrade"), "{}", error.message());
    // Unknown platforms are ignored, not a reason to refuse the agent.
    let _odd = connect_agent(
        &coordinator.address,
        "odd",
        &[("linux", "amd64", false), ("linux", "riscv64", true)],
    )
    .await;
    coordinator.stop().await;
}

#[tokio::test]
async fn an_unacknowledged_assignment_goes_to_another_agent_and_the_late_ack_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = start(dir.path()).await;
    let mut control = coordinator.control().await;
    // The deaf agent heartbeats but never acknowledges; ties between free agents go by id,
    // so the other one ("a-…") is chosen once the run is back in the queue.
    let mut deaf =
        connect_agent(&coordinator.address, "z-deaf", &[("linux", "amd64", false)]).await;
    let run_id = submit(&mut control, "amd64").await;
    let first = deaf.next_assignment().await;
    assert_eq!(first.run_id, run_id);
    let mut other = connect_agent(
        &coordinator.address,
        "a-other",
        &[("linux", "amd64", false)],
    )
    .await;
    let second = other.next_assignment().await;
    assert_eq!(second.run_id, run_id);
    assert!(second.epoch > first.epoch);
    let run = get_run(&mut control, &run_id).await.run.unwrap();
    assert_eq!(run.attempt, 2);
    assert!(
        run.requeues[0].contains("did not acknowledge"),
        "{:?}",
        run.requeues
    );
    drop((deaf, other, control));
    coordinator.stop().await;
}

#[tokio::test]
async fn a_silent_agent_is_declared_lost_and_its_unstarted_run_is_requeued() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = start(dir.path()).await;
    let mut control = coordinator.control().await;
    let mut frozen =
        connect_agent(&coordinator.address, "frozen", &[("linux", "amd64", false)]).await;
    let run_id = submit(&mut control, "amd64").await;
    let assignment = frozen.next_assignment().await;
    frozen.ack_assignment(&assignment).await;
    frozen.report(planned(&run_id, assignment.epoch)).await;
    frozen.freeze();
    // Within the liveness limit it is lost, listed as such, and gets nothing new.
    let lost = tokio::time::timeout(WAIT, async {
        loop {
            let info = control
                .get_info(GetInfoRequest {})
                .await
                .unwrap()
                .into_inner();
            if info
                .agents
                .iter()
                .any(|a| a.agent_id == "frozen" && a.state == "lost")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(lost.is_ok(), "the frozen agent was not declared lost");
    let run = wait_for_status(&mut control, &run_id, RunStatus::Queued).await;
    assert!(
        run.requeues[0].contains("before any step started"),
        "{:?}",
        run.requeues
    );
    // Its late report, on its old stream, changes nothing.
    let _ = frozen
        .tx
        .send(AgentMessage {
            msg: Some(step(&run_id, assignment.epoch, StepStatus::Running)),
            report_id: 99,
        })
        .await;
    let mut healthy = connect_agent(
        &coordinator.address,
        "healthy",
        &[("linux", "amd64", false)],
    )
    .await;
    let again = healthy.next_assignment().await;
    assert_eq!(again.run_id, run_id);
    healthy.ack_assignment(&again).await;
    let run = get_run(&mut control, &run_id).await.run.unwrap();
    assert_eq!(run.agent_id, "healthy");
    assert!(run.steps.is_empty());

    // A frozen agent that comes back under the same id is told to stop the run it held.
    drop(frozen);
    let mut back = connect_with(
        &coordinator.address,
        hello(
            "frozen",
            &[("linux", "amd64", false)],
            vec![ActiveRun {
                run_id: run_id.clone(),
                epoch: assignment.epoch,
            }],
        ),
    )
    .await;
    let stop = loop {
        match back.next().await {
            coordinator_message::Msg::Stop(stop) => break stop,
            _ => continue,
        }
    };
    assert_eq!(
        (stop.run_id.as_str(), stop.epoch),
        (run_id.as_str(), assignment.epoch)
    );
    drop((back, healthy, control));
    coordinator.stop().await;
}

#[tokio::test]
async fn a_run_assigned_just_before_a_restart_is_delivered_or_requeued_never_lost() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = start(dir.path()).await;
    let mut control = coordinator.control().await;
    let mut agent = connect_agent(&coordinator.address, "a", &[("linux", "amd64", false)]).await;
    let run_id = submit(&mut control, "amd64").await;
    let assignment = agent.next_assignment().await;
    // The coordinator goes down after committing AssignRun, before any acknowledgement.
    drop((agent, control));
    coordinator.stop().await;
    let coordinator = start(dir.path()).await;
    let mut control = coordinator.control().await;
    let run = get_run(&mut control, &run_id).await.run.unwrap();
    assert_eq!(run.status(), RunStatus::Running);
    assert!(!run.acknowledged);
    // Another agent comes; the unacknowledged run goes to it.
    let mut other = connect_agent(&coordinator.address, "b", &[("linux", "amd64", false)]).await;
    let again = other.next_assignment().await;
    assert_eq!(again.run_id, run_id);
    assert!(again.epoch > assignment.epoch);
    other.ack_assignment(&again).await;
    other.report(planned(&run_id, again.epoch)).await;
    other
        .report(step(&run_id, again.epoch, StepStatus::Succeeded))
        .await;
    other
        .report(finished(&run_id, again.epoch, RunStatus::Succeeded))
        .await;
    let run = wait_for_status(&mut control, &run_id, RunStatus::Succeeded).await;
    assert_eq!(run.agent_id, "b");
    drop((other, control));
    coordinator.stop().await;
}

#[tokio::test]
async fn a_drained_agent_takes_no_runs_until_undrained() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = start(dir.path()).await;
    let mut control = coordinator.control().await;
    let mut agent = connect_agent(&coordinator.address, "d", &[("linux", "amd64", false)]).await;
    let state = control
        .drain_agent(DrainAgentRequest {
            agent_id: "d".into(),
            drain: true,
        })
        .await
        .unwrap()
        .into_inner()
        .state;
    assert_eq!(state, "draining");
    let coordinator_message::Msg::Drain(drain) = agent.next().await else {
        panic!("expected the drain to reach the agent")
    };
    assert!(drain.drain);
    let run_id = submit(&mut control, "amd64").await;
    let reason = get_run(&mut control, &run_id).await.queued_reason;
    assert!(
        reason.contains("no agent is connected and ready"),
        "{reason}"
    );
    control
        .drain_agent(DrainAgentRequest {
            agent_id: "d".into(),
            drain: false,
        })
        .await
        .unwrap();
    let assignment = agent.next_assignment().await;
    assert_eq!(assignment.run_id, run_id);
    let error = control
        .drain_agent(DrainAgentRequest {
            agent_id: "nobody".into(),
            drain: true,
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound);
    drop((agent, control));
    coordinator.stop().await;
}

#[tokio::test]
async fn bad_requests_and_unknown_runs_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = start(dir.path()).await;
    let mut control = coordinator.control().await;
    let mut bad = request("mips");
    let error = control
        .submit_run(SubmitRunRequest {
            request: Some(bad.clone()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(
        error.message().contains("unknown platform"),
        "{}",
        error.message()
    );
    bad = request("amd64");
    bad.task_yaml = String::new();
    let error = control
        .submit_run(SubmitRunRequest {
            request: Some(bad),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        error.message().contains("task file is empty"),
        "{}",
        error.message()
    );
    let mut long = request("amd64");
    long.timeout_seconds = 100_000;
    let error = control
        .submit_run(SubmitRunRequest {
            request: Some(long),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(error.message().contains("8 hours"), "{}", error.message());
    let error = control
        .get_run(GetRunRequest {
            run_id: "ca42".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound);
    drop(control);
    coordinator.stop().await;
}

#[tokio::test]
async fn every_report_resent_after_its_agent_died_before_the_ack_is_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = start(dir.path()).await;
    let mut control = coordinator.control().await;
    let platforms = [("linux", "amd64", false)];
    let mut agent = connect_agent(&coordinator.address, "crashy", &platforms).await;
    let run_id = submit(&mut control, "amd64").await;
    let assignment = agent.next_assignment().await;
    agent.ack_assignment(&assignment).await;
    let epoch = assignment.epoch;
    let lease = vec![ActiveRun {
        run_id: run_id.clone(),
        epoch,
    }];
    // A run whose agent dies before a step started is requeued (nothing of it ran), so the
    // resends that matter are those of a run with a step under way.
    assert_eq!(agent.report(planned(&run_id, epoch)).await.error, "");
    assert_eq!(
        agent
            .report(step(&run_id, epoch, StepStatus::Running))
            .await
            .error,
        ""
    );
    let reports = [
        agent_message::Msg::LogStored(kiln_proto::v1::LogStored {
            run_id: run_id.clone(),
            step_id: "acb_step_0".into(),
            epoch,
            index: 0,
            digest: format!("sha256:{}", "c".repeat(64)),
            size: 3,
            offset: 0,
        }),
        agent_message::Msg::ImagePushed(ImagePushed {
            run_id: run_id.clone(),
            step_id: "acb_step_0".into(),
            image: "127.0.0.1:5000/app:1".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            epoch,
        }),
        step(&run_id, epoch, StepStatus::Succeeded),
        finished(&run_id, epoch, RunStatus::Succeeded),
    ];
    for (n, report) in reports.into_iter().enumerate() {
        // Sent and committed, then the agent dies before it acts on the acknowledgement (after
        // kill -9 the report is still in its spool)...
        let first = agent.report(report.clone()).await;
        assert_eq!(first.error, "", "report {n}: {first:?}");
        drop(agent);
        // ...and the restarted agent sends it again on a new session (retrying while the
        // coordinator still sees the old one, as a real agent does).
        agent = reconnect(
            &coordinator.address,
            hello("crashy", &platforms, lease.clone()),
        )
        .await;
        let ack = agent.report(report).await;
        assert_eq!(ack.error, "", "report {n}: {ack:?}");
    }
    let run = wait_for_status(&mut control, &run_id, RunStatus::Succeeded).await;
    assert_eq!(run.images.len(), 1);
    assert_eq!(run.steps.len(), 1);
    assert_eq!(run.steps[0].status(), StepStatus::Succeeded);
    assert_eq!(run.steps[0].log_segments.len(), 1);
    drop((agent, control));
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_sent_without_waiting_are_applied_and_acknowledged_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = start(dir.path()).await;
    let mut control = coordinator.control().await;
    let mut agent =
        connect_agent(&coordinator.address, "eager", &[("linux", "amd64", false)]).await;
    // Capacity 2: two runs whose reports interleave.
    let runs = [
        submit(&mut control, "amd64").await,
        submit(&mut control, "amd64").await,
    ];
    let mut epochs = Vec::new();
    for _ in &runs {
        let assignment = agent.next_assignment().await;
        agent.ack_assignment(&assignment).await;
        epochs.push((assignment.run_id, assignment.epoch));
    }
    epochs.sort();
    // Every report of both runs, one after another without waiting for any acknowledgement.
    // Applied out of order, the later ones would be refused: a step already Succeeded cannot
    // become Running, a finished run takes no step update.
    let makers: [fn(&str, u64) -> agent_message::Msg; 4] = [
        planned,
        |r, e| step(r, e, StepStatus::Running),
        |r, e| step(r, e, StepStatus::Succeeded),
        |r, e| finished(r, e, RunStatus::Succeeded),
    ];
    let mut reports = Vec::new();
    for make in makers {
        for (run_id, epoch) in &epochs {
            reports.push(make(run_id, *epoch));
        }
    }
    let first_id = agent.next_report;
    for report in &reports {
        let id = agent.next_report;
        agent.next_report += 1;
        agent.send_raw(report.clone(), id).await;
    }
    let mut acks = Vec::new();
    while acks.len() < reports.len() {
        match agent.next().await {
            coordinator_message::Msg::ReportAck(ack) => acks.push(ack),
            coordinator_message::Msg::Stop(stop) => panic!("told to stop: {stop:?}"),
            _ => {}
        }
    }
    let expected: Vec<u64> = (first_id..first_id + reports.len() as u64).collect();
    let got: Vec<u64> = acks.iter().map(|a| a.report_id).collect();
    assert_eq!(
        got, expected,
        "acknowledgements in the order of the reports"
    );
    for ack in &acks {
        assert_eq!((ack.error.as_str(), ack.stale), ("", false), "{ack:?}");
    }
    for (run_id, _) in &epochs {
        let run = get_run(&mut control, run_id).await.run.unwrap();
        assert_eq!(run.status(), RunStatus::Succeeded);
        assert_eq!(run.steps.len(), 1);
        assert_eq!(run.steps[0].status(), StepStatus::Succeeded);
        assert!(run.steps[0].started_at_ms > 0 && run.steps[0].finished_at_ms > 0);
    }
    drop((agent, control));
    coordinator.stop().await;
}

//! The coordinator in-process with a scripted agent over real gRPC: scheduling by platform,
//! the report protocol, live logs, cancellation, and a restart on the same data directory.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use kiln_proto::pb::{Platform, RunRequest, RunStatus, StepStatus};
use kiln_proto::v1::agent_service_client::AgentServiceClient;
use kiln_proto::v1::control_client::ControlClient;
use kiln_proto::v1::{
    agent_message, coordinator_message, AgentMessage, AgentPlatform, CancelRunRequest,
    CoordinatorMessage, GetRunRequest, GetRunResponse, Hello, LogChunk, RunFinished, RunPlanned,
    StepUpdate, StreamLogsRequest, SubmitRunRequest,
};

const WAIT: Duration = Duration::from_secs(20);

struct Coordinator {
    address: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(data_dir: &std::path::Path) -> Coordinator {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let config = kiln_coordinator::Config {
        listen: listener.local_addr().unwrap(),
        data_dir: data_dir.to_path_buf(),
        // Never contacted: no step here stores a log blob.
        registry: "127.0.0.1:1".to_string(),
        node_id: 1,
        agent_grace: Duration::from_secs(30),
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(kiln_coordinator::serve(listener, config, shutdown.clone()));
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

/// A scripted agent: says Hello and hands back what the coordinator sends.
struct Agent {
    tx: mpsc::Sender<AgentMessage>,
    inbound: tonic::Streaming<CoordinatorMessage>,
}

async fn connect_agent(address: &str, id: &str, platforms: &[(&str, &str, bool)]) -> Agent {
    let (tx, rx) = mpsc::channel(16);
    let hello = Hello {
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
        active_runs: vec![],
        version: "test".to_string(),
    };
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(hello)),
    })
    .await
    .unwrap();
    let mut client = AgentServiceClient::connect(address.to_string())
        .await
        .unwrap();
    let inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    Agent { tx, inbound }
}

impl Agent {
    async fn next(&mut self) -> coordinator_message::Msg {
        let message = tokio::time::timeout(WAIT, self.inbound.message())
            .await
            .expect("a message in time");
        message.unwrap().unwrap().msg.unwrap()
    }

    async fn send(&self, msg: agent_message::Msg) {
        self.tx.send(AgentMessage { msg: Some(msg) }).await.unwrap();
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
) {
    tokio::time::timeout(WAIT, async {
        loop {
            let run = get_run(control, run_id).await.run.unwrap();
            if run.status() == status {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("run {run_id} did not become {status:?}"));
}

#[tokio::test]
async fn runs_are_scheduled_by_platform_reported_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = start(dir.path()).await;
    let mut control = coordinator.control().await;

    // An arm64 run with only an amd64 agent stays queued and says why.
    let arm = control
        .submit_run(SubmitRunRequest {
            request: Some(request("arm64")),
        })
        .await
        .unwrap()
        .into_inner()
        .run_id;
    let mut amd_agent =
        connect_agent(&coordinator.address, "amd", &[("linux", "amd64", false)]).await;
    let amd = control
        .submit_run(SubmitRunRequest {
            request: Some(request("amd64")),
        })
        .await
        .unwrap()
        .into_inner()
        .run_id;
    assert_eq!((arm.as_str(), amd.as_str()), ("ca1", "ca2"));

    let coordinator_message::Msg::Assign(assignment) = amd_agent.next().await else {
        panic!("expected an assignment")
    };
    assert_eq!(assignment.run_id, amd);
    let queued = get_run(&mut control, &arm).await;
    assert!(
        queued
            .queued_reason
            .contains("no connected agent can run linux/arm64"),
        "{}",
        queued.queued_reason
    );

    // The agent reports; a follower sees the live log and the stream ends with the run.
    amd_agent
        .send(agent_message::Msg::RunPlanned(RunPlanned {
            run_id: amd.clone(),
            step_ids: vec!["acb_step_0".into()],
        }))
        .await;
    let mut follower = control
        .stream_logs(StreamLogsRequest {
            run_id: amd.clone(),
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    let step = |status: StepStatus| {
        agent_message::Msg::StepUpdate(StepUpdate {
            run_id: amd.clone(),
            step_id: "acb_step_0".into(),
            status: status as i32,
            has_exit_code: status == StepStatus::Succeeded,
            ..StepUpdate::default()
        })
    };
    amd_agent.send(step(StepStatus::Running)).await;
    amd_agent
        .send(agent_message::Msg::Log(LogChunk {
            run_id: amd.clone(),
            step_id: "acb_step_0".into(),
            data: b"hi\n".to_vec(),
        }))
        .await;
    amd_agent.send(step(StepStatus::Succeeded)).await;
    amd_agent
        .send(agent_message::Msg::RunFinished(RunFinished {
            run_id: amd.clone(),
            status: RunStatus::Succeeded as i32,
            reason: String::new(),
        }))
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
    wait_for_status(&mut control, &amd, RunStatus::Succeeded).await;

    // An emulating agent takes the arm64 run; cancelling it reaches that agent.
    let mut emulator = connect_agent(
        &coordinator.address,
        "emu",
        &[("linux", "amd64", false), ("linux", "arm64", true)],
    )
    .await;
    let coordinator_message::Msg::Assign(assignment) = emulator.next().await else {
        panic!("expected an assignment")
    };
    assert_eq!(
        (assignment.run_id.as_str(), assignment.emulated),
        (arm.as_str(), true)
    );
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
        .send(agent_message::Msg::RunFinished(RunFinished {
            run_id: arm.clone(),
            status: RunStatus::Canceled as i32,
            reason: "canceled".into(),
        }))
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
    let next = control
        .submit_run(SubmitRunRequest {
            request: Some(request("amd64")),
        })
        .await
        .unwrap()
        .into_inner()
        .run_id;
    assert_eq!(next, "ca3");
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
        .submit_run(SubmitRunRequest { request: Some(bad) })
        .await
        .unwrap_err();
    assert!(
        error.message().contains("task file is empty"),
        "{}",
        error.message()
    );
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

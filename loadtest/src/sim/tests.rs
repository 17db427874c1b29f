//! The simulated agents' limits, timers and summary, without a coordinator.

use std::time::Duration;

use tokio::time::Instant;

use super::{validate, SimSummary, Timers};
use crate::stats::LatencySummary;

#[test]
fn numbers_out_of_range_are_refused() {
    assert!(validate(1, 1, 0).is_ok());
    assert!(validate(1000, 10_000, 3_600_000).is_ok());
    for (agents, capacity, step_ms, flag) in [
        (0, 1, 0, "--sim-agents"),
        (1001, 1, 0, "--sim-agents"),
        (1, 0, 0, "--sim-capacity"),
        (1, 10_001, 0, "--sim-capacity"),
        (1, 1, 3_600_001, "--sim-step-ms"),
    ] {
        let error = validate(agents, capacity, step_ms).unwrap_err().to_string();
        assert!(error.starts_with(flag), "{error}");
    }
}

#[test]
fn timers_fire_earliest_first_and_only_when_due() {
    let mut timers = Timers::default();
    let now = Instant::now();
    timers.set(now + Duration::from_millis(30), 1, "late".to_string());
    timers.set(now + Duration::from_millis(10), 2, "early".to_string());
    assert_eq!(timers.next(), Some(now + Duration::from_millis(10)));
    assert_eq!(timers.pop_due(now), None);
    let later = now + Duration::from_millis(20);
    assert_eq!(timers.pop_due(later), Some((2, "early".to_string())));
    assert_eq!(timers.pop_due(later), None);
    assert_eq!(
        timers.pop_due(now + Duration::from_millis(30)),
        Some((1, "late".to_string()))
    );
    assert_eq!(timers.next(), None);
}

fn summary() -> SimSummary {
    SimSummary {
        agents: 2,
        capacity: 4,
        step_ms: 0,
        assigned: 10,
        succeeded: 10,
        canceled: 0,
        stopped: 0,
        stale: 0,
        report_errors: 0,
        duplicate_assignments: 0,
        over_capacity: 0,
        refused_draining: 0,
        held: 0,
        unacknowledged: 0,
        sessions: 2,
        session_errors: 0,
        first_error: None,
        report_ack_ms: LatencySummary::from_durations([Duration::from_millis(2)]),
    }
}

#[test]
fn a_clean_run_has_no_anomalies() {
    let clean = summary();
    assert!(clean.anomalies().is_empty());
    let table = clean.to_table();
    assert!(table.contains("2 x capacity 4"), "{table}");
    assert!(table.contains("succeeded 10"), "{table}");
    assert!(!table.contains("sim noticed"), "{table}");
}

#[test]
fn anomalies_are_named() {
    let odd = SimSummary {
        over_capacity: 3,
        stale: 1,
        ..summary()
    };
    assert_eq!(
        odd.anomalies(),
        vec![
            "3 assignments beyond an agent's capacity".to_string(),
            "1 reports answered stale".to_string()
        ]
    );
    assert!(odd.to_table().contains("sim noticed"));
}

mod session {
    //! The session loop against an in-process fake coordinator on loopback gRPC.

    use std::pin::Pin;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tokio_stream::{Stream, StreamExt};
    use tonic::{Request, Response, Status, Streaming};

    use kiln_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
    use kiln_proto::v1::{
        agent_message, coordinator_message, AgentMessage, Assignment, CoordinatorMessage,
        ReportAck, Welcome,
    };
    use kiln_state::pb::RunRequest;
    use kiln_state::PlatformSpec;

    use crate::sim::{SimConfig, SimFarm};

    /// Welcomes every agent, assigns it `runs` runs of submitter `fake`, and acknowledges every
    /// report; or refuses every session with `refuse`.
    struct FakeCoordinator {
        runs: u32,
        refuse: Option<tonic::Code>,
    }

    type Outbound = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

    #[tonic::async_trait]
    impl AgentService for FakeCoordinator {
        type SessionStream = Outbound;

        async fn session(
            &self,
            request: Request<Streaming<AgentMessage>>,
        ) -> Result<Response<Outbound>, Status> {
            if let Some(code) = self.refuse {
                return Err(Status::new(code, "agent id taken"));
            }
            let mut inbound = request.into_inner();
            let Some(Ok(AgentMessage {
                msg: Some(agent_message::Msg::Hello(hello)),
                ..
            })) = inbound.next().await
            else {
                return Err(Status::invalid_argument("no Hello"));
            };
            let (tx, rx) = mpsc::channel(64);
            let runs = self.runs;
            tokio::spawn(async move {
                let send = |msg| CoordinatorMessage { msg: Some(msg) };
                let welcome = Welcome {
                    protocol_version: kiln_proto::PROTOCOL_VERSION,
                    heartbeat_interval_ms: 100,
                    lost_after_ms: 10_000,
                    ..Welcome::default()
                };
                if tx
                    .send(Ok(send(coordinator_message::Msg::Welcome(welcome))))
                    .await
                    .is_err()
                {
                    return;
                }
                for index in 0..runs {
                    let assignment = Assignment {
                        run_id: format!("{}-run{index}", hello.agent_id),
                        epoch: u64::from(index) + 1,
                        request: Some(RunRequest {
                            submitter: "fake".to_string(),
                            ..RunRequest::default()
                        }),
                        ..Assignment::default()
                    };
                    let _ = tx
                        .send(Ok(send(coordinator_message::Msg::Assign(assignment))))
                        .await;
                }
                while let Some(Ok(message)) = inbound.next().await {
                    if message.report_id > 0 {
                        let ack = ReportAck {
                            report_id: message.report_id,
                            ..ReportAck::default()
                        };
                        if tx
                            .send(Ok(send(coordinator_message::Msg::ReportAck(ack))))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
            Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
        }
    }

    async fn serve(fake: FakeCoordinator) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let address = listener.local_addr().expect("a bound address");
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AgentServiceServer::from_arc(Arc::new(fake)))
                .serve_with_incoming(incoming),
        );
        format!("http://{address}")
    }

    fn config(coordinator: String, agents: u32) -> SimConfig {
        SimConfig {
            coordinator,
            agents,
            capacity: 4,
            step: Duration::from_millis(5),
            pool: String::new(),
            platform: PlatformSpec::parse("linux/amd64").expect("a platform"),
            id_prefix: "test".to_string(),
        }
    }

    #[tokio::test]
    async fn agents_finish_their_assignments_through_the_stream() {
        let address = serve(FakeCoordinator {
            runs: 3,
            refuse: None,
        })
        .await;
        let farm = SimFarm::start(config(address, 2));
        farm.wait_connected(Duration::from_secs(10))
            .await
            .expect("both agents connect");
        let tally = farm
            .wait_finished("fake", 6, Duration::from_secs(30))
            .await
            .expect("runs finished");
        assert_eq!(tally.finished, 6);
        let summary = farm.stop().await;
        assert_eq!((summary.assigned, summary.succeeded), (6, 6));
        assert_eq!(summary.sessions, 2);
        assert!(summary.anomalies().is_empty(), "{:?}", summary.anomalies());
        // Plan, Running, Succeeded and Finished per run, every one acknowledged.
        assert_eq!(summary.report_ack_ms.count, 24);
        assert_eq!(summary.unacknowledged, 0);
    }

    #[tokio::test]
    async fn a_taken_agent_id_is_a_clear_error() {
        let address = serve(FakeCoordinator {
            runs: 0,
            refuse: Some(tonic::Code::AlreadyExists),
        })
        .await;
        let farm = SimFarm::start(config(address, 1));
        let error = farm
            .wait_connected(Duration::from_secs(10))
            .await
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains("refused") && error.contains("agent id taken"),
            "{error}"
        );
        farm.stop().await;
    }
}

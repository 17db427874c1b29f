//! A step's stored log, read back from the registry for `StreamLogs`: its segments in index
//! order (or, for runs of protocol-1 agents, the single blob named by `log_digest`), each
//! streamed from `<registry>/kiln/logs` in pieces of at most `LOG_PIECE` bytes, so a follower
//! of a long log never makes the coordinator hold a whole blob in memory. The sender waits
//! while the client's stream is full.

use futures::TryStreamExt;
use kiln_proto::v1::LogChunk;
use kiln_registry::{Registry, LOGS_REPOSITORY};
use kiln_state::pb::Step;
use tokio::sync::mpsc;
use tonic::Status;

use crate::logs::Cursor;

/// Largest `LogChunk` sent for a stored log.
pub const LOG_PIECE: usize = 64 * 1024;

/// Where the chunks go: the client's log stream.
pub type LogSender = mpsc::Sender<Result<LogChunk, Status>>;

/// Whether the step has a stored log (segments, or the single blob of protocol-1 agents).
pub fn has_stored_log(step: &Step) -> bool {
    !step.log_segments.is_empty() || !step.log_digest.is_empty()
}

/// One blob of a step's log: where it starts in the step's log and how long it is (`None` for
/// the single blob of protocol-1 agents, whose size the state may not know).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogBlob {
    pub digest: String,
    pub offset: u64,
    pub size: Option<u64>,
}

/// The blobs holding the step's log, in log order, with their offsets.
pub fn log_blobs(step: &Step) -> Vec<LogBlob> {
    if step.log_segments.is_empty() {
        return if step.log_digest.is_empty() {
            Vec::new()
        } else {
            vec![LogBlob {
                digest: step.log_digest.clone(),
                offset: 0,
                size: None,
            }]
        };
    }
    let mut segments: Vec<_> = step.log_segments.iter().collect();
    segments.sort_by_key(|s| s.index);
    let mut offset = 0;
    segments
        .into_iter()
        .map(|s| {
            let blob = LogBlob {
                digest: s.digest.clone(),
                offset,
                size: Some(s.size),
            };
            offset += s.size;
            blob
        })
        .collect()
}

/// Sends the stored log of `step` (of run `run_id`) to `tx`, blob after blob, in pieces of at
/// most `LOG_PIECE` bytes, each with its offset in the step's log, leaving out what `cursor`
/// says this stream already sent (a blob wholly sent is not read at all). Sends nothing for a
/// step without a stored log (see `has_stored_log`). Fails with `unavailable` when a blob
/// cannot be read, `data_loss` when one does not match its digest (the pieces before the
/// error have been sent), and `cancelled` when the client went away.
pub async fn send_step_log(
    registry: &Registry,
    run_id: &str,
    step: &Step,
    cursor: &mut Cursor,
    tx: &LogSender,
) -> Result<(), Status> {
    for blob in log_blobs(step) {
        if blob
            .size
            .is_some_and(|size| blob.offset + size <= cursor.sent(&step.id))
        {
            continue;
        }
        let stream = registry
            .pull_blob_stream(LOGS_REPOSITORY, &blob.digest, LOG_PIECE)
            .await
            .map_err(|error| {
                Status::unavailable(format!("cannot read the log of step {}: {error}", step.id))
            })?;
        let mut stream = std::pin::pin!(stream);
        let mut offset = blob.offset;
        loop {
            let piece = stream.try_next().await.map_err(|error| match error {
                kiln_registry::Error::DigestMismatch { .. } => Status::data_loss(format!(
                    "the stored log of step {} is damaged: {error}",
                    step.id
                )),
                other => {
                    Status::unavailable(format!("cannot read the log of step {}: {other}", step.id))
                }
            })?;
            let Some(piece) = piece else { break };
            let chunk = LogChunk {
                run_id: run_id.to_string(),
                step_id: step.id.clone(),
                data: piece.to_vec(),
                offset: Some(offset),
            };
            offset += piece.len() as u64;
            let Some(chunk) = cursor.admit(chunk) else {
                continue;
            };
            tx.send(Ok(chunk))
                .await
                .map_err(|_| Status::cancelled("the client disconnected"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use kiln_state::pb::LogSegment;

    use super::*;

    /// A registry to test against (`KILN_REGISTRY`), if one is set.
    fn test_registry() -> Option<Registry> {
        let host = std::env::var("KILN_REGISTRY").ok()?;
        Some(Registry::new(&host).expect("client"))
    }

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Runs `send_step_log` with a small client stream, reading concurrently.
    async fn read_log(registry: &Registry, step: &Step) -> (Vec<LogChunk>, Result<(), Status>) {
        let (tx, mut rx): (LogSender, _) = mpsc::channel(2);
        let reader = tokio::spawn(async move {
            let mut chunks = Vec::new();
            while let Some(chunk) = rx.recv().await {
                chunks.push(chunk.expect("chunk"));
            }
            chunks
        });
        let result = send_step_log(registry, "ca7", step, &mut Cursor::default(), &tx).await;
        drop(tx);
        (reader.await.expect("reader"), result)
    }

    #[test]
    fn blobs_come_in_index_order_and_old_runs_use_the_digest() {
        let step = Step {
            log_segments: vec![
                LogSegment {
                    index: 1,
                    digest: "sha256:b".into(),
                    size: 1,
                },
                LogSegment {
                    index: 0,
                    digest: "sha256:a".into(),
                    size: 1,
                },
            ],
            ..Default::default()
        };
        let blobs = log_blobs(&step);
        let digests: Vec<&str> = blobs.iter().map(|b| b.digest.as_str()).collect();
        assert_eq!(digests, vec!["sha256:a", "sha256:b"]);
        assert_eq!((blobs[0].offset, blobs[1].offset), (0, 1));
        assert!(has_stored_log(&step));
        let old = Step {
            log_digest: "sha256:c".into(),
            ..Default::default()
        };
        assert_eq!(
            log_blobs(&old),
            vec![LogBlob {
                digest: "sha256:c".into(),
                offset: 0,
                size: None
            }]
        );
        let none = Step::default();
        assert!(log_blobs(&none).is_empty() && !has_stored_log(&none));
    }

    #[tokio::test]
    async fn segments_stream_in_order_in_bounded_pieces() {
        let Some(registry) = test_registry() else {
            return;
        };
        let first = bytes(150_000, 1);
        let second = bytes(70_000, 2);
        let mut segments = Vec::new();
        for (index, data) in [&first, &second].into_iter().enumerate() {
            let digest = registry
                .push_blob_bytes(LOGS_REPOSITORY, data.clone())
                .await
                .expect("push");
            segments.push(LogSegment {
                index: index as u32,
                digest,
                size: data.len() as u64,
            });
        }
        segments.reverse();
        let step = Step {
            id: "build".into(),
            log_segments: segments,
            ..Default::default()
        };
        let (chunks, result) = read_log(&registry, &step).await;
        result.expect("sent");
        assert!(chunks
            .iter()
            .all(|c| c.data.len() <= LOG_PIECE && !c.data.is_empty()));
        assert!(chunks
            .iter()
            .all(|c| c.run_id == "ca7" && c.step_id == "build"));
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.data.clone()).collect();
        let whole = [first.clone(), second.clone()].concat();
        assert_eq!(all, whole);
        let mut expected = 0;
        for chunk in &chunks {
            assert_eq!(chunk.offset, Some(expected));
            expected += chunk.data.len() as u64;
        }

        // A stream that already sent part of the log gets the rest only, from its offset.
        let mut cursor = Cursor::default();
        let sent = 160_000u64;
        cursor.admit(LogChunk {
            run_id: "ca7".into(),
            step_id: "build".into(),
            data: whole[..sent as usize].to_vec(),
            offset: Some(0),
        });
        let (tx, mut rx): (LogSender, _) = mpsc::channel(64);
        send_step_log(&registry, "ca7", &step, &mut cursor, &tx)
            .await
            .expect("sent");
        drop(tx);
        let first_rest = rx.recv().await.expect("a chunk").expect("ok");
        assert_eq!(first_rest.offset, Some(sent));
        let mut rest = first_rest.data;
        while let Some(chunk) = rx.recv().await {
            rest.extend(chunk.expect("ok").data);
        }
        assert_eq!(rest, whole[sent as usize..]);
    }

    #[tokio::test]
    async fn old_single_blob_logs_and_missing_blobs() {
        let Some(registry) = test_registry() else {
            return;
        };
        let data = bytes(1000, 3);
        let digest = registry
            .push_blob_bytes(LOGS_REPOSITORY, data.clone())
            .await
            .expect("push");
        let step = Step {
            id: "old".into(),
            log_digest: digest,
            ..Default::default()
        };
        let (chunks, result) = read_log(&registry, &step).await;
        result.expect("sent");
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.data.clone()).collect();
        assert_eq!(all, data);

        let missing = Step {
            id: "gone".into(),
            log_digest: kiln_registry::sha256_digest(b"kiln: never stored"),
            ..Default::default()
        };
        let (chunks, result) = read_log(&registry, &missing).await;
        assert!(chunks.is_empty());
        let status = result.expect_err("missing blob");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("gone"), "{}", status.message());
    }

    #[tokio::test]
    async fn a_client_that_went_away_stops_the_send() {
        let Some(registry) = test_registry() else {
            return;
        };
        let digest = registry
            .push_blob_bytes(LOGS_REPOSITORY, bytes(200_000, 4))
            .await
            .expect("push");
        let step = Step {
            id: "s".into(),
            log_digest: digest,
            ..Default::default()
        };
        let (tx, rx): (LogSender, _) = mpsc::channel(1);
        drop(rx);
        let status = send_step_log(&registry, "ca7", &step, &mut Cursor::default(), &tx)
            .await
            .expect_err("no client");
        assert_eq!(status.code(), tonic::Code::Cancelled);
    }
}

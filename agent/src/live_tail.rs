//! The live output a new leader has not seen: per running step, the bytes sent live since the
//! end of the last log segment whose `LogStored` the coordinator acknowledged.
//!
//! Live `LogChunk`s are not durable: those sent to a leader that dies are gone with it, and
//! those produced while no coordinator is reachable are not sent at all. The stored segments
//! carry the same bytes, but a segment is stored only every `SEGMENT_INTERVAL` or
//! `SEGMENT_BYTES`. So the session keeps each step's unacknowledged tail and sends it again,
//! with its offsets, on every new session: a follower of the new leader then sees the step's
//! stored segments and this tail meet or overlap (the coordinator cuts the overlap by offset),
//! and no line goes missing. Each tail is bounded ([`MAX_TAIL_BYTES`]); a step that outruns it
//! while its segments go unacknowledged loses its oldest tail bytes, which the client reports
//! as a gap (the stored log still has them).

use std::collections::{HashMap, VecDeque};

use kiln_proto::v1::LogChunk;

/// Most unacknowledged live output kept per step.
pub const MAX_TAIL_BYTES: usize = 4 * 1024 * 1024;

/// The chunks of one step after its last acknowledged segment.
#[derive(Debug, Default)]
struct Tail {
    chunks: VecDeque<LogChunk>,
    bytes: usize,
}

#[derive(Debug, Default)]
pub struct LiveTails {
    steps: HashMap<(String, String), Tail>,
}

impl LiveTails {
    /// Keeps a live chunk of a step's output (notices without an offset are not kept).
    pub fn record(&mut self, chunk: &LogChunk) {
        if chunk.offset.is_none() || chunk.step_id.is_empty() || chunk.data.is_empty() {
            return;
        }
        let tail = self
            .steps
            .entry((chunk.run_id.clone(), chunk.step_id.clone()))
            .or_default();
        tail.bytes += chunk.data.len();
        tail.chunks.push_back(chunk.clone());
        while tail.bytes > MAX_TAIL_BYTES {
            match tail.chunks.pop_front() {
                Some(old) => tail.bytes -= old.data.len(),
                None => break,
            }
        }
    }

    /// The coordinator committed the step's log up to byte `end`: drops the chunks before it.
    pub fn stored(&mut self, run_id: &str, step_id: &str, end: u64) {
        let key = (run_id.to_string(), step_id.to_string());
        let Some(tail) = self.steps.get_mut(&key) else {
            return;
        };
        while let Some(first) = tail.chunks.front() {
            let first_end = first.offset.unwrap_or(0) + first.data.len() as u64;
            if first_end > end {
                break;
            }
            tail.bytes -= first.data.len();
            tail.chunks.pop_front();
        }
        if tail.chunks.is_empty() {
            self.steps.remove(&key);
        }
    }

    /// The run ended: its tails are no longer needed (its finish report is durable, and every
    /// segment of it was reported before).
    pub fn run_ended(&mut self, run_id: &str) {
        self.steps.retain(|(run, _), _| run != run_id);
    }

    /// Every kept chunk, step by step in offset order, to send on a new session.
    pub fn replay(&self) -> impl Iterator<Item = &LogChunk> {
        self.steps.values().flat_map(|tail| tail.chunks.iter())
    }

    pub fn bytes(&self) -> usize {
        self.steps.values().map(|t| t.bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(run: &str, step: &str, offset: u64, data: &[u8]) -> LogChunk {
        LogChunk {
            run_id: run.into(),
            step_id: step.into(),
            data: data.to_vec(),
            offset: Some(offset),
        }
    }

    fn replayed(tails: &LiveTails, step: &str) -> Vec<(u64, Vec<u8>)> {
        tails
            .replay()
            .filter(|c| c.step_id == step)
            .map(|c| (c.offset.unwrap(), c.data.clone()))
            .collect()
    }

    #[test]
    fn a_tail_keeps_what_no_acknowledged_segment_covers() {
        let mut tails = LiveTails::default();
        tails.record(&chunk("ca1", "a", 0, b"one\n"));
        tails.record(&chunk("ca1", "a", 4, b"two\n"));
        tails.record(&chunk("ca1", "a", 8, b"three\n"));
        tails.record(&chunk("ca1", "b", 0, b"x"));
        // A notice is not the step's output.
        tails.record(&LogChunk {
            run_id: "ca1".into(),
            step_id: String::new(),
            data: b"[notice]".to_vec(),
            offset: None,
        });
        // A segment of bytes 0..6 ends inside the second chunk: that chunk stays whole.
        tails.stored("ca1", "a", 6);
        assert_eq!(
            replayed(&tails, "a"),
            vec![(4, b"two\n".to_vec()), (8, b"three\n".to_vec())]
        );
        tails.stored("ca1", "a", 14);
        assert!(replayed(&tails, "a").is_empty());
        assert_eq!(replayed(&tails, "b"), vec![(0, b"x".to_vec())]);
        tails.run_ended("ca1");
        assert_eq!(tails.bytes(), 0);
        assert_eq!(tails.replay().count(), 0);
    }

    #[test]
    fn a_tail_is_bounded_and_drops_its_oldest_bytes() {
        let mut tails = LiveTails::default();
        let piece = vec![b'x'; 1024 * 1024];
        for i in 0..6u64 {
            tails.record(&chunk("ca1", "a", i * piece.len() as u64, &piece));
        }
        assert!(tails.bytes() <= MAX_TAIL_BYTES);
        let kept = replayed(&tails, "a");
        assert_eq!(kept.first().map(|(o, _)| *o), Some(2 * 1024 * 1024));
        assert_eq!(kept.last().map(|(o, _)| *o), Some(5 * 1024 * 1024));
    }
}

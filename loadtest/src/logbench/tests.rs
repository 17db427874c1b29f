//! The log benchmarks' parsing and arithmetic, without a farm.

use kiln_state::PlatformSpec;

use super::*;
use crate::workload::Workload;

fn lines_of(splitter: &mut LineSplitter, chunks: &[&[u8]]) -> Vec<String> {
    let mut lines = Vec::new();
    for chunk in chunks {
        splitter.push(chunk, |line| {
            lines.push(String::from_utf8_lossy(line).into_owned());
        });
    }
    splitter.finish(|line| lines.push(String::from_utf8_lossy(line).into_owned()));
    lines
}

#[test]
fn lines_are_whole_however_the_stream_is_cut() {
    let mut splitter = LineSplitter::new(100);
    let lines = lines_of(&mut splitter, &[b"one\ntw", b"o", b"\n\nthr", b"ee"]);
    assert_eq!(lines, ["one", "two", "", "three"]);
    assert_eq!(splitter.overlong, 0);
}

#[test]
fn an_overlong_line_is_skipped_and_counted() {
    let mut splitter = LineSplitter::new(4);
    let lines = lines_of(&mut splitter, &[b"ok\nabc", b"defgh", b"ij\nend\n12345\n"]);
    assert_eq!(lines, ["ok", "end"]);
    assert_eq!(splitter.overlong, 2);
}

#[test]
fn stamps_are_read_in_microseconds() {
    assert_eq!(
        parse_stamp(b"kiln-lat 7 1796187436.524365"),
        Some((7, 1_796_187_436_524_365))
    );
    // Fewer or more digits than microseconds; a carriage return.
    assert_eq!(parse_stamp(b"kiln-lat 0 12.5\r"), Some((0, 12_500_000)));
    assert_eq!(parse_stamp(b"kiln-lat 0 12.1234567"), Some((0, 12_123_456)));
    assert_eq!(parse_stamp(b"kiln-lat 1 12"), Some((1, 12_000_000)));
    // The script's own text, an empty $EPOCHREALTIME, other lines.
    assert_eq!(parse_stamp(b"kiln-lat $i $EPOCHREALTIME"), None);
    assert_eq!(parse_stamp(b"kiln-lat 3 "), None);
    assert_eq!(parse_stamp(b"kiln-lat 3"), None);
    assert_eq!(parse_stamp(b"kiln-lat 3 1.5 extra"), None);
    assert_eq!(parse_stamp(b"kiln-lat 3 -1.5"), None);
    assert_eq!(parse_stamp(b"Executing step ID: acb_step_0"), None);
}

#[test]
fn percentiles_are_nearest_rank_in_milliseconds() {
    let summary = MicroSummary::from_micros((1..=100).map(|ms| ms * 1000).rev().collect());
    assert_eq!(summary.count, 100);
    assert_eq!(summary.min_ms, Some(1.0));
    assert_eq!(summary.p50_ms, Some(50.0));
    assert_eq!(summary.p95_ms, Some(95.0));
    assert_eq!(summary.p99_ms, Some(99.0));
    assert_eq!(summary.max_ms, Some(100.0));
    assert_eq!(summary.mean_ms, Some(50.5));
    let one = MicroSummary::from_micros(vec![-1500]);
    assert_eq!(one.p99_ms, Some(-1.5));
    assert_eq!(
        MicroSummary::from_micros(Vec::new()),
        MicroSummary::default()
    );
}

#[test]
fn the_latency_tally_measures_each_line_once() {
    let mut tally = LatencyTally::new(3);
    tally.chunk("s", b"Executing step\nkiln-lat 0 10.000", 10_002_000);
    tally.chunk("s", b"000\nkiln-lat 1 10.5\n", 10_510_000);
    tally.chunk("s", b"kiln-lat 1 10.5\nkiln-lat 9 10.5\n", 10_600_000);
    tally.chunk(
        "",
        b"\n[kiln] this client fell behind and missed 3 log chunks\n",
        0,
    );
    // The first line's arrival is that of the chunk that completed it.
    assert_eq!(tally.latencies_us, [(0, 510_000), (1, 10_000)]);
    assert_eq!(tally.slowest(1), [(0, 510.0)]);
    assert_eq!(tally.received(), 2);
    assert_eq!(tally.missing(), 1);
    assert_eq!(tally.duplicates, 1);
    assert_eq!(tally.unexpected, 1);
    assert_eq!(tally.lag_notices, 1);
}

#[test]
fn payload_lines_have_the_asked_length() {
    for bytes in [64, 128, 4096, 16384] {
        let line = payload_line(bytes);
        assert_eq!(line.len() as u64 + 1, bytes);
        assert!(line.starts_with(PAYLOAD_MARK));
        assert!(line.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    }
}

#[test]
fn the_payload_tally_counts_whole_payload_lines() {
    let line = format!("{}\n", payload_line(64));
    let mut text = String::from("Executing step ID: s\n");
    for _ in 0..5 {
        text.push_str(&line);
    }
    text.push_str(&line[..20]);
    let mut tally = PayloadTally::new(payload_line(64));
    for piece in text.as_bytes().chunks(7) {
        tally.chunk("s", piece);
    }
    tally.finish();
    assert_eq!(tally.payload_lines, 5);
    assert_eq!(tally.payload_bytes(), 5 * 64);
    assert_eq!(tally.other_lines, 1, "the cut last line");
    assert_eq!(tally.bytes, text.len() as u64);
}

#[test]
fn the_scripts_are_valid_quick_runs() {
    let platform = PlatformSpec::parse("linux/amd64").unwrap();
    for script in [
        latency_script(10, 20),
        latency_script(10, 0),
        throughput_script(1 << 20, 64),
        throughput_script(1 << 20, 16384),
    ] {
        let cmd = shell_cmd("127.0.0.1:5000/base/busybox:latest", &script).unwrap();
        let request = Workload::cmd(&cmd)
            .unwrap()
            .run_request("127.0.0.1:5000", &platform, 60)
            .unwrap();
        assert!(request.task_yaml.contains("EPOCHREALTIME") || request.task_yaml.contains("yes"));
    }
    assert!(latency_script(3, 20).contains("usleep 20000;"));
    assert!(!latency_script(3, 0).contains("usleep"));
    assert!(shell_cmd("img", "echo 'x'").is_err());
}

#[test]
fn limits() {
    assert!(validate_latency(0, 10, 600).is_err());
    assert!(validate_latency(MAX_LINES + 1, 0, 600).is_err());
    assert!(validate_latency(1000, 20, 600).is_ok());
    assert!(validate_latency(1000, 1000, 600).is_err());
    assert!(validate_latency(10, 10_001, 600).is_err());
    assert!(validate_throughput(0, 64).is_err());
    assert!(validate_throughput(1024, 64).is_ok());
    assert!(validate_throughput(MAX_MIB + 1, 64).is_err());
    assert!(validate_throughput(1, 100).is_err());
    assert!(validate_throughput(1, 32).is_err());
    assert!(validate_throughput(1, 32 * 1024).is_err());
    assert!((mib_per_second(100 * 1024 * 1024, 2.0) - 50.0).abs() < 1e-9);
    assert_eq!(mib_per_second(1, 0.0), 0.0);
}

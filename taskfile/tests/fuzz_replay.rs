//! Deterministic replay of the fuzzing inputs on the stable toolchain: every hand-written
//! hostile seed (`fuzz/seeds`), every saved crash or hang (`fuzz/regressions`), the minimised
//! fuzz corpus (`fuzz/corpus-min`) and the conformance files go through the same entry points
//! as the fuzz targets (`kiln_taskfile::fuzzing`). Each input runs on a thread with a 2 MiB
//! stack (a tokio worker's) and must return without panicking within a generous time bound
//! — a guard against hangs, not a performance goal.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Per-input bound. Debug builds are an order of magnitude slower than the fuzzer's
/// optimised build, where every input takes well under a second.
const LIMIT: Duration = if cfg!(debug_assertions) {
    Duration::from_secs(10)
} else {
    Duration::from_secs(2)
};

/// Stack of the thread each input runs on.
const STACK: usize = 2 << 20;

fn files(dirs: &[&str]) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for d in dirs {
        let dir = root.join(d);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        out.extend(
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && !p.ends_with(".gitkeep")),
        );
    }
    out.sort();
    out
}

/// Runs every file through `run` and reports each panic or slow input.
fn replay(dirs: &[&str], min_files: usize, run: fn(&[u8])) {
    let all = files(dirs);
    assert!(
        all.len() >= min_files,
        "expected at least {min_files} inputs in {dirs:?}, found {}",
        all.len()
    );
    let mut failures = Vec::new();
    let mut slowest = (Duration::ZERO, PathBuf::new());
    for path in all {
        let data = std::fs::read(&path).expect("read input");
        let name = path.display().to_string();
        let start = Instant::now();
        let outcome = std::thread::Builder::new()
            .name(name.clone())
            .stack_size(STACK)
            .spawn(move || run(&data))
            .expect("spawn")
            .join();
        let took = start.elapsed();
        if outcome.is_err() {
            failures.push(format!("{name}: panicked"));
        }
        if took > LIMIT {
            failures.push(format!("{name}: took {took:?} (limit {LIMIT:?})"));
        }
        if took > slowest.0 {
            slowest = (took, path);
        }
    }
    eprintln!("slowest input: {} ({:?})", slowest.1.display(), slowest.0);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn plan_inputs_replay_without_panics_or_hangs() {
    replay(
        &[
            "fuzz/seeds/plan",
            "fuzz/regressions/plan",
            "fuzz/corpus-min/plan",
            "tests/conformance/valid",
            "tests/conformance/invalid",
        ],
        100,
        kiln_taskfile::fuzzing::plan_input,
    );
}

#[test]
fn template_inputs_replay_without_panics_or_hangs() {
    replay(
        &[
            "fuzz/seeds/template",
            "fuzz/regressions/template",
            "fuzz/corpus-min/template",
        ],
        20,
        kiln_taskfile::fuzzing::template_input,
    );
}

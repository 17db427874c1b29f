//! Disk clean-up by policy: old images, build cache and scratch files.
//!
//! `PrunePolicy` says what is old enough to go; `prune_loop` applies it every `interval` to the
//! agent's engine and work directory and logs what was freed. Nothing it meets stops the agent:
//! every error is logged as a warning and the next pass tries again.
//!
//! What a pass removes:
//! * dangling (untagged) images created at least `image_max_age` ago that no container uses;
//! * build-cache records unused for `build_cache_max_age` (keeping `keep_storage_bytes` of
//!   cache on engines that support it);
//! * entries of `<work_dir>/scratch` (build-context tarballs) not modified for
//!   `scratch_max_age`;
//! * directories `<work_dir>/runs/<run>` of runs the agent no longer runs: not named by
//!   `active_runs` and with nothing in them modified for `scratch_max_age`, and never before
//!   `LONGEST_RUN` (a run directory is created when its run starts and no run lasts longer,
//!   so even a step that writes nothing for hours keeps its workspace).
//!
//! What it deliberately keeps:
//! * tagged images. The engine cannot tell the farm's base images, or an image an earlier step
//!   of a running run built for a later one, from images nobody needs any more, and marking
//!   the images kiln builds with a label would change the images users push. So only images
//!   that lost their tag (rebuilt tags, base images re-pulled for another platform, failed
//!   builds' last layers) are removed; the engine itself never removes an image a container
//!   uses;
//! * `<work_dir>/spool` (reports the coordinator has not acknowledged) and everything else
//!   outside `scratch/` and `runs/`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::executor::{ContainerRuntime, ImagePrune, PruneReport};

/// How often the policy runs, by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);
/// Age from which unused dangling images are removed, by default.
pub const DEFAULT_IMAGE_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// How long build cache may stay unused, by default.
pub const DEFAULT_BUILD_CACHE_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Age from which scratch files and leftover run directories are removed, by default.
pub const DEFAULT_SCRATCH_MAX_AGE: Duration = Duration::from_secs(6 * 3600);

/// The longest a run directory can belong to a running run: the coordinator accepts run
/// timeouts up to 8 hours and the agent ends a run at its timeout; half an hour covers the
/// clean-up after it.
pub const LONGEST_RUN: Duration = Duration::from_secs(8 * 3600 + 30 * 60);

/// Entries visited to find the newest modification inside one scratch entry or run directory;
/// a bigger tree is judged by what was visited (the directory's own time is always included).
const WALK_LIMIT: usize = 10_000;

/// Entries of `scratch/` or `runs/` looked at per pass; the rest wait for the next one.
const ENTRIES_PER_PASS: usize = 1_000;

/// What the agent removes from its disk, and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunePolicy {
    /// Time between passes; zero disables pruning.
    pub interval: Duration,
    /// Unused dangling images created at least this long ago are removed.
    pub image_max_age: Duration,
    /// Build cache unused for this long is removed.
    pub build_cache_max_age: Duration,
    /// Scratch files and run directories of finished runs unmodified for this long are
    /// removed (run directories never before `LONGEST_RUN`).
    pub scratch_max_age: Duration,
    /// Build cache to keep whatever its age (`None`: no floor). Engines older than API 1.48
    /// ignore it.
    pub keep_storage_bytes: Option<u64>,
}

impl Default for PrunePolicy {
    fn default() -> Self {
        PrunePolicy {
            interval: DEFAULT_INTERVAL,
            image_max_age: DEFAULT_IMAGE_MAX_AGE,
            build_cache_max_age: DEFAULT_BUILD_CACHE_MAX_AGE,
            scratch_max_age: DEFAULT_SCRATCH_MAX_AGE,
            keep_storage_bytes: None,
        }
    }
}

impl PrunePolicy {
    /// Whether pruning runs at all.
    pub fn enabled(&self) -> bool {
        !self.interval.is_zero()
    }

    /// The image prune a pass asks the engine for: dangling images only.
    pub fn image_prune(&self) -> ImagePrune {
        ImagePrune {
            dangling_only: true,
            older_than: self.image_max_age,
            labels: Vec::new(),
        }
    }

    /// Age from which a run directory not named as active is removed.
    pub fn run_dir_max_age(&self) -> Duration {
        self.scratch_max_age.max(LONGEST_RUN)
    }
}

/// What one pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneSummary {
    /// The engine's image prune (`None`: it failed, see `warnings`).
    pub images: Option<PruneReport>,
    /// The engine's build-cache prune (`None`: it failed, see `warnings`).
    pub build_cache: Option<PruneReport>,
    /// Scratch entries and run directories removed.
    pub files: Vec<PathBuf>,
    /// Bytes in the removed files (as far as they were walked).
    pub file_bytes: u64,
    /// What went wrong; the pass went on.
    pub warnings: Vec<String>,
}

impl PruneSummary {
    /// Every byte the pass freed.
    pub fn total_bytes(&self) -> u64 {
        let engine = |r: &Option<PruneReport>| r.as_ref().map_or(0, |r| r.reclaimed_bytes);
        engine(&self.images)
            .saturating_add(engine(&self.build_cache))
            .saturating_add(self.file_bytes)
    }
}

/// Applies `policy` every `policy.interval` (the first pass at once) until `shutdown`; returns
/// at once when the policy is disabled. `active_runs` names the run directories (under
/// `runs/`) in use; it is called once per pass and must be cheap.
pub async fn prune_loop<R, F>(
    runtime: Arc<R>,
    work_dir: PathBuf,
    policy: PrunePolicy,
    active_runs: F,
    shutdown: CancellationToken,
) where
    R: ContainerRuntime,
    F: Fn() -> Vec<String> + Send + 'static,
{
    if !policy.enabled() {
        tracing::info!("disk pruning disabled");
        return;
    }
    let mut ticks = tokio::time::interval(policy.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let active = active_runs();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            summary = prune_once(&*runtime, &work_dir, &policy, &active) => log_summary(&summary),
        }
    }
}

/// One pass of `policy`: images, build cache, then scratch files and run directories.
pub async fn prune_once<R: ContainerRuntime>(
    runtime: &R,
    work_dir: &Path,
    policy: &PrunePolicy,
    active_runs: &[String],
) -> PruneSummary {
    let mut summary = PruneSummary::default();
    match runtime.prune_images(&policy.image_prune()).await {
        Ok(report) => summary.images = Some(report),
        Err(error) => summary
            .warnings
            .push(format!("cannot prune images: {error}")),
    }
    match runtime
        .prune_build_cache(policy.build_cache_max_age, policy.keep_storage_bytes)
        .await
    {
        Ok(report) => summary.build_cache = Some(report),
        Err(error) => summary
            .warnings
            .push(format!("cannot prune the build cache: {error}")),
    }
    let (dir, files_policy, active) =
        (work_dir.to_path_buf(), policy.clone(), active_runs.to_vec());
    let files = tokio::task::spawn_blocking(move || {
        prune_files(&dir, &files_policy, &active, SystemTime::now())
    })
    .await;
    match files {
        Ok(files) => {
            summary.files = files.removed;
            summary.file_bytes = files.bytes;
            summary.warnings.extend(files.warnings);
        }
        Err(error) => summary
            .warnings
            .push(format!("cannot prune scratch files: {error}")),
    }
    summary
}

fn log_summary(summary: &PruneSummary) {
    for warning in &summary.warnings {
        tracing::warn!("disk pruning: {warning}");
    }
    let count = |r: &Option<PruneReport>| r.as_ref().map_or(0, |r| r.removed.len());
    let bytes = |r: &Option<PruneReport>| r.as_ref().map_or(0, |r| r.reclaimed_bytes);
    let removed = count(&summary.images) + count(&summary.build_cache) + summary.files.len();
    if removed == 0 && summary.total_bytes() == 0 {
        tracing::debug!("disk pruning: nothing to remove");
        return;
    }
    tracing::info!(
        image_deletions = count(&summary.images),
        image_bytes = bytes(&summary.images),
        cache_records = count(&summary.build_cache),
        cache_bytes = bytes(&summary.build_cache),
        files = summary.files.len(),
        file_bytes = summary.file_bytes,
        freed_bytes = summary.total_bytes(),
        "disk pruned"
    );
}

/// A scratch entry or run directory old enough to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub path: PathBuf,
    /// Bytes of the files in it (as far as walked).
    pub bytes: u64,
}

/// What `prune_files` removed.
#[derive(Debug, Default)]
struct FilePrune {
    removed: Vec<PathBuf>,
    bytes: u64,
    warnings: Vec<String>,
}

/// Removes what `expired_files` selects (blocking).
fn prune_files(
    work_dir: &Path,
    policy: &PrunePolicy,
    active_runs: &[String],
    now: SystemTime,
) -> FilePrune {
    let (expired, warnings) = expired_files(work_dir, policy, active_runs, now);
    let mut result = FilePrune {
        warnings,
        ..FilePrune::default()
    };
    for entry in expired {
        let removal = match std::fs::symlink_metadata(&entry.path) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&entry.path),
            Ok(_) => std::fs::remove_file(&entry.path),
            Err(error) => Err(error),
        };
        match removal {
            Ok(()) => {
                result.bytes = result.bytes.saturating_add(entry.bytes);
                result.removed.push(entry.path);
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => result
                .warnings
                .push(format!("cannot remove {}: {error}", entry.path.display())),
        }
    }
    result
}

/// The entries of `<work_dir>/scratch` and `<work_dir>/runs` the policy removes at `now`, and
/// what could not be read (blocking; reads the file system, removes nothing).
pub fn expired_files(
    work_dir: &Path,
    policy: &PrunePolicy,
    active_runs: &[String],
    now: SystemTime,
) -> (Vec<Expired>, Vec<String>) {
    let mut expired = Vec::new();
    let mut warnings = Vec::new();
    let places = [
        (work_dir.join("scratch"), policy.scratch_max_age, false),
        (work_dir.join("runs"), policy.run_dir_max_age(), true),
    ];
    for (dir, max_age, runs) in places {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                warnings.push(format!("cannot read {}: {error}", dir.display()));
                continue;
            }
        };
        for entry in entries.take(ENTRIES_PER_PASS) {
            let Ok(entry) = entry else { continue };
            if runs {
                let name = entry.file_name();
                if active_runs.iter().any(|active| name == active.as_str()) {
                    continue;
                }
            }
            let path = entry.path();
            let Some((newest, bytes)) = newest_modification(&path) else {
                continue;
            };
            // A time in the future (clock changes) counts as now.
            let age = now.duration_since(newest).unwrap_or(Duration::ZERO);
            if age >= max_age {
                expired.push(Expired { path, bytes });
            }
        }
    }
    expired.sort_by(|a, b| a.path.cmp(&b.path));
    (expired, warnings)
}

/// The newest modification time of `path` and of what is inside it (symbolic links are not
/// followed), and the bytes of its files; at most `WALK_LIMIT` entries are visited. `None` when
/// `path` itself cannot be read.
fn newest_modification(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let mut newest = meta.modified().ok()?;
    let mut bytes = if meta.is_file() { meta.len() } else { 0 };
    let mut pending = if meta.is_dir() {
        vec![path.to_path_buf()]
    } else {
        Vec::new()
    };
    let mut visited = 0usize;
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            visited += 1;
            if visited > WALK_LIMIT {
                return Some((newest, bytes));
            }
            let Ok(entry) = entry else { continue };
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if let Ok(modified) = meta.modified() {
                newest = newest.max(modified);
            }
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                bytes = bytes.saturating_add(meta.len());
            }
        }
    }
    Some((newest, bytes))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::executor::fake::{Call, FakeRuntime};
    use crate::executor::RuntimeError;

    const HOUR: Duration = Duration::from_secs(3600);

    /// Sets the modification time of `path` (a file or a directory) to `age` before `now`.
    fn age(path: &Path, now: SystemTime, age: Duration) {
        let file = std::fs::File::open(path).expect("open");
        file.set_modified(now - age).expect("set mtime");
    }

    fn write(path: &Path, bytes: usize) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, vec![b'x'; bytes]).expect("write");
    }

    #[test]
    fn defaults_keep_a_day_of_images_and_cache_and_six_hours_of_scratch() {
        let policy = PrunePolicy::default();
        assert_eq!(policy.interval, HOUR);
        assert_eq!(policy.image_max_age, 24 * HOUR);
        assert_eq!(policy.build_cache_max_age, 24 * HOUR);
        assert_eq!(policy.scratch_max_age, 6 * HOUR);
        assert_eq!(policy.keep_storage_bytes, None);
        assert!(policy.enabled());
        assert_eq!(
            policy.image_prune(),
            ImagePrune {
                dangling_only: true,
                older_than: 24 * HOUR,
                labels: Vec::new(),
            }
        );
        assert_eq!(policy.run_dir_max_age(), LONGEST_RUN);
        let long = PrunePolicy {
            scratch_max_age: 48 * HOUR,
            ..PrunePolicy::default()
        };
        assert_eq!(long.run_dir_max_age(), 48 * HOUR);
    }

    #[tokio::test]
    async fn a_pass_asks_the_engine_for_old_dangling_images_and_unused_cache() {
        let fake = FakeRuntime::new();
        fake.script_image_prune(Ok(PruneReport {
            removed: vec!["sha256:a".into(), "sha256:b".into()],
            reclaimed_bytes: 3000,
        }));
        fake.script_cache_prune(Ok(PruneReport {
            removed: vec!["c1".into()],
            reclaimed_bytes: 500,
        }));
        let work = tempfile::tempdir().expect("tempdir");
        let policy = PrunePolicy {
            image_max_age: 2 * HOUR,
            build_cache_max_age: 3 * HOUR,
            keep_storage_bytes: Some(1 << 30),
            ..PrunePolicy::default()
        };
        let summary = prune_once(&fake, work.path(), &policy, &[]).await;
        assert_eq!(
            fake.calls(),
            vec![
                Call::PruneImages(ImagePrune {
                    dangling_only: true,
                    older_than: 2 * HOUR,
                    labels: Vec::new(),
                }),
                Call::PruneBuildCache {
                    unused_for: 3 * HOUR,
                    keep_bytes: Some(1 << 30),
                },
            ]
        );
        assert_eq!(summary.images.as_ref().map(|r| r.removed.len()), Some(2));
        assert_eq!(summary.total_bytes(), 3500);
        assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    }

    #[tokio::test]
    async fn engine_errors_become_warnings_and_the_pass_goes_on() {
        let fake = FakeRuntime::new();
        fake.script_image_prune(Err(RuntimeError::Engine(
            "a prune operation is already running".into(),
        )));
        fake.script_cache_prune(Err(RuntimeError::Engine("no builder".into())));
        let work = tempfile::tempdir().expect("tempdir");
        let now = SystemTime::now();
        let old = work.path().join("scratch/context-1-0.tar");
        write(&old, 10);
        age(&old, now, 7 * HOUR);
        let summary = prune_once(&fake, work.path(), &PrunePolicy::default(), &[]).await;
        assert_eq!(summary.images, None);
        assert_eq!(summary.build_cache, None);
        assert_eq!(summary.warnings.len(), 2, "{:?}", summary.warnings);
        assert!(summary.warnings[0].contains("already running"));
        assert_eq!(summary.files, vec![old.clone()]);
        assert_eq!(summary.file_bytes, 10);
        assert!(!old.exists());
    }

    #[test]
    fn scratch_and_finished_runs_go_by_age_active_and_recent_ones_stay() {
        let work = tempfile::tempdir().expect("tempdir");
        let root = work.path();
        let now = SystemTime::now();
        // Scratch: by the entry's own age against scratch_max_age (6 h).
        let old_tar = root.join("scratch/context-7-1.tar");
        let new_tar = root.join("scratch/context-7-2.tar");
        write(&old_tar, 100);
        write(&new_tar, 100);
        age(&old_tar, now, 7 * HOUR);
        age(&new_tar, now, HOUR);
        // Run directories, each with one file; the directory's time is set last.
        let run = |name: &str, file_age: Duration, dir_age: Duration| {
            let dir = root.join("runs").join(name);
            let file = dir.join("workspace/out.txt");
            write(&file, 50);
            age(&file, now, file_age);
            age(&dir.join("workspace"), now, dir_age);
            age(&dir, now, dir_age);
            dir
        };
        let finished = run("ca1", 20 * HOUR, 20 * HOUR);
        let still_written = run("ca2", HOUR, 20 * HOUR);
        let active = run("ca3", 20 * HOUR, 20 * HOUR);
        let within_longest_run = run("ca4", 7 * HOUR, 7 * HOUR);
        // Outside scratch/ and runs/ nothing is touched.
        let spool = root.join("spool/000001.report");
        write(&spool, 10);
        age(&spool, now, 100 * HOUR);

        let policy = PrunePolicy::default();
        let (expired, warnings) = expired_files(root, &policy, &["ca3".to_string()], now);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            expired,
            vec![
                Expired {
                    path: finished.clone(),
                    bytes: 50
                },
                Expired {
                    path: old_tar.clone(),
                    bytes: 100
                },
            ]
        );

        let removed = prune_files(root, &policy, &["ca3".to_string()], now);
        assert_eq!(removed.removed, vec![finished.clone(), old_tar.clone()]);
        assert_eq!(removed.bytes, 150);
        assert!(!finished.exists() && !old_tar.exists());
        for kept in [
            &new_tar,
            &still_written,
            &active,
            &within_longest_run,
            &spool,
        ] {
            assert!(kept.exists(), "{} was removed", kept.display());
        }
    }

    #[test]
    fn missing_directories_are_nothing_to_do() {
        let work = tempfile::tempdir().expect("tempdir");
        let (expired, warnings) = expired_files(
            &work.path().join("absent"),
            &PrunePolicy::default(),
            &[],
            SystemTime::now(),
        );
        assert!(expired.is_empty() && warnings.is_empty());
    }

    #[tokio::test]
    async fn a_disabled_policy_returns_at_once() {
        let fake = FakeRuntime::new();
        let work = tempfile::tempdir().expect("tempdir");
        let policy = PrunePolicy {
            interval: Duration::ZERO,
            ..PrunePolicy::default()
        };
        prune_loop(
            Arc::new(fake),
            work.path().to_path_buf(),
            policy,
            Vec::new,
            CancellationToken::new(),
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_prunes_at_once_then_every_interval_until_shutdown() {
        let fake = Arc::new(FakeRuntime::new());
        let work = tempfile::tempdir().expect("tempdir");
        let shutdown = CancellationToken::new();
        let passes = Arc::new(AtomicUsize::new(0));
        let active_runs = {
            let (passes, shutdown) = (Arc::clone(&passes), shutdown.clone());
            move || {
                // The third pass is asked for after two intervals; stop there.
                if passes.fetch_add(1, Ordering::SeqCst) == 2 {
                    shutdown.cancel();
                }
                Vec::new()
            }
        };
        let started = tokio::time::Instant::now();
        prune_loop(
            Arc::clone(&fake),
            work.path().to_path_buf(),
            PrunePolicy::default(),
            active_runs,
            shutdown,
        )
        .await;
        assert_eq!(passes.load(Ordering::SeqCst), 3);
        assert!(started.elapsed() >= 2 * HOUR);
        let image_prunes = fake
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::PruneImages(_)))
            .count();
        assert_eq!(image_prunes, 2, "{:?}", fake.calls());
    }
}

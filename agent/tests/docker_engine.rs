//! Runner tests on a real Docker Engine and registry.
//!
//! They need `DOCKER_HOST` (or `/var/run/docker.sock`) and `KILN_REGISTRY` (a registry such as
//! `127.0.0.1:5000` holding the multi-platform `base/busybox:latest`), and fail loudly when
//! either is missing. The arm64 test also needs a QEMU binfmt handler for aarch64.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use kiln_agent::blobs::RegistryBlobStore;
use kiln_agent::executor::docker::DockerRuntime;
use kiln_agent::reports::{report_channel, Report};
use kiln_agent::runner::{execute, RunnerEnv};
use kiln_proto::pb::{Platform, RunRequest, RunStatus, StepStatus};
use kiln_proto::v1::{Assignment, LogStored, StepUpdate};
use kiln_registry::{Registry, CONTEXTS_REPOSITORY, LOGS_REPOSITORY};
use tokio_util::sync::CancellationToken;

fn docker_host() -> String {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => host,
        _ if Path::new("/var/run/docker.sock").exists() => {
            "unix:///var/run/docker.sock".to_string()
        }
        _ => panic!("these tests need a Docker Engine: set DOCKER_HOST or start one on /var/run/docker.sock"),
    }
}

fn registry() -> String {
    std::env::var("KILN_REGISTRY")
        .ok()
        .filter(|r| !r.is_empty())
        .expect("these tests need KILN_REGISTRY (e.g. 127.0.0.1:5000 with base/busybox:latest)")
}

/// One engine keeps one image per tag, so a build for arm64 and a native build of the same
/// base would race over `base/busybox:latest`; the tests in this binary take turns.
static ENGINE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn unique_run_id(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}{nanos}")
}

struct Finished {
    status: RunStatus,
    reason: String,
    log: String,
    reports: Vec<Report>,
}

impl Finished {
    fn step(&self, id: &str) -> StepUpdate {
        self.reports
            .iter()
            .rev()
            .find_map(|r| match r {
                Report::Step(u) if u.step_id == id => Some(u.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no update for step {id}"))
    }

    /// The log segments the step stored, in report order.
    fn segments(&self, id: &str) -> Vec<LogStored> {
        self.reports
            .iter()
            .filter_map(|r| match r {
                Report::LogStored(s) if s.step_id == id => Some(s.clone()),
                _ => None,
            })
            .collect()
    }
}

async fn run_task(
    run_id: &str,
    task_yaml: &str,
    context_digest: &str,
    platform: (&str, &str),
    emulated: bool,
) -> Finished {
    run_task_with(
        run_id,
        task_yaml,
        context_digest,
        platform,
        emulated,
        |_| {},
    )
    .await
}

/// Like `run_task`, with `tweak` applied to the run's request.
async fn run_task_with(
    run_id: &str,
    task_yaml: &str,
    context_digest: &str,
    platform: (&str, &str),
    emulated: bool,
    tweak: impl FnOnce(&mut RunRequest),
) -> Finished {
    let _turn = ENGINE.lock().await;
    let work_dir = tempfile::tempdir().expect("tempdir");
    let runtime = DockerRuntime::connect(&docker_host(), &work_dir.path().join("scratch"))
        .await
        .expect("connect to the Docker Engine");
    let (reports, mut rx) = report_channel(64);
    let env = Arc::new(RunnerEnv {
        name_scope: "kiln-agent-it".to_string(),
        platform_gate: Default::default(),
        secrets: Arc::new(kiln_agent::secrets::NoSecretStore),
        engine_socket: None,
        runtime,
        blobs: RegistryBlobStore,
        reports,
        work_dir: work_dir.path().to_path_buf(),
    });
    let mut request = RunRequest {
        task_yaml: task_yaml.to_string(),
        task_file_name: "acb.yaml".into(),
        context_digest: context_digest.to_string(),
        registry: registry(),
        timeout_seconds: 600,
        ..Default::default()
    };
    tweak(&mut request);
    let assignment = Assignment {
        run_id: run_id.to_string(),
        request: Some(request),
        created_at_ms: 0,
        platform: Some(Platform {
            os: platform.0.into(),
            architecture: platform.1.into(),
            variant: String::new(),
        }),
        emulated,
        ..Default::default()
    };
    let task = tokio::spawn(execute(env, assignment, CancellationToken::new()));
    let mut reports = Vec::new();
    let mut log = String::new();
    while let Some(report) = rx.recv().await {
        if let Report::Log(chunk) = &report {
            log.push_str(&String::from_utf8_lossy(&chunk.data));
        }
        let done = matches!(report, Report::Finished(_));
        reports.push(report);
        if done {
            break;
        }
    }
    task.await.expect("run task");
    let (status, reason) = reports
        .iter()
        .find_map(|r| match r {
            Report::Finished(f) => Some((
                RunStatus::try_from(f.status).unwrap_or(RunStatus::Unspecified),
                f.reason.clone(),
            )),
            _ => None,
        })
        .expect("RunFinished");
    Finished {
        status,
        reason,
        log,
        reports,
    }
}

/// Uploads a context tarball holding `files` and returns its digest.
async fn upload_context(files: &[(&str, &str)]) -> String {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, name, content.as_bytes())
            .expect("tar entry");
    }
    let bytes = builder.into_inner().expect("tar");
    Registry::new(&registry())
        .expect("registry client")
        .push_blob_bytes(CONTEXTS_REPOSITORY, bytes)
        .await
        .expect("upload context")
}

#[tokio::test]
async fn builds_and_pushes_an_image_and_reports_its_digest() {
    let registry_host = registry();
    let dockerfile =
        format!("FROM {registry_host}/base/busybox:latest\nRUN echo built > /built.txt\n");
    let digest = upload_context(&[("Dockerfile", &dockerfile)]).await;
    let run_id = unique_run_id("itb");
    let task = "steps:\n  - id: build\n    build: -t {{.Run.Registry}}/kiln-agent-it/app:{{.Run.ID}} .\n  - id: push\n    push: [\"{{.Run.Registry}}/kiln-agent-it/app:{{.Run.ID}}\"]\n";
    let out = run_task(&run_id, task, &digest, ("linux", "amd64"), false).await;
    assert_eq!(
        out.status,
        RunStatus::Succeeded,
        "{}\n{}",
        out.reason,
        out.log
    );
    let pushed = out
        .reports
        .iter()
        .find_map(|r| match r {
            Report::Image(i) => Some(i.clone()),
            _ => None,
        })
        .expect("ImagePushed");
    assert_eq!(
        pushed.image,
        format!("{registry_host}/kiln-agent-it/app:{run_id}")
    );
    assert!(pushed.digest.starts_with("sha256:"), "{}", pushed.digest);
    let client = Registry::new(&registry_host).expect("registry client");
    let in_registry = client
        .manifest_digest("kiln-agent-it/app", &run_id)
        .await
        .expect("pushed manifest");
    assert_eq!(in_registry, pushed.digest);
    // The build step's complete log is in the registry, in the segments it reported.
    let build = out.step("build");
    assert_eq!(build.status, StepStatus::Succeeded as i32);
    assert!(build.log_size > 0);
    assert!(build.log_digest.is_empty());
    let segments = out.segments("build");
    assert!(!segments.is_empty());
    let mut log = Vec::new();
    for (i, segment) in segments.iter().enumerate() {
        assert_eq!(segment.index as usize, i);
        let bytes = client
            .pull_blob_bytes(LOGS_REPOSITORY, &segment.digest, 1 << 20)
            .await
            .expect("log segment");
        assert_eq!(bytes.len() as u64, segment.size);
        log.extend(bytes);
    }
    assert_eq!(log.len() as u64, build.log_size);
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("Executing step ID: build."), "{log}");
    assert!(log.contains("Successfully built"), "{log}");
}

#[tokio::test]
async fn cmd_steps_stream_output_and_report_exit_codes() {
    let task = "steps:\n  - id: hello\n    cmd: {{.Run.Registry}}/base/busybox:latest sh -c 'echo hello-from-step; ls /workspace; exit 4'\n  - id: after\n    cmd: {{.Run.Registry}}/base/busybox:latest true\n";
    let digest = upload_context(&[("marker-file", "x")]).await;
    let out = run_task(
        &unique_run_id("itc"),
        task,
        &digest,
        ("linux", "amd64"),
        false,
    )
    .await;
    assert_eq!(out.status, RunStatus::Failed, "{}", out.log);
    assert_eq!(out.reason, "step hello failed: exit code 4");
    let hello = out.step("hello");
    assert_eq!(hello.status, StepStatus::Failed as i32);
    assert!(hello.has_exit_code && hello.exit_code == 4);
    assert!(hello.log_size > 0);
    assert!(!out.segments("hello").is_empty());
    assert!(out.log.contains("hello-from-step"), "{}", out.log);
    assert!(out.log.contains("marker-file"), "{}", out.log);
    assert_eq!(out.step("after").status, StepStatus::Skipped as i32);
}

#[tokio::test]
async fn missing_images_fail_the_step_with_the_reason() {
    let task = "steps:\n  - id: ghost\n    cmd: {{.Run.Registry}}/kiln-agent-it/does-not-exist:nope true\n";
    let out = run_task(&unique_run_id("itm"), task, "", ("linux", "amd64"), false).await;
    assert_eq!(out.status, RunStatus::Failed);
    assert!(
        out.reason.contains("kiln-agent-it/does-not-exist:nope"),
        "{}",
        out.reason
    );
}

#[tokio::test]
async fn failing_builds_report_the_command_exit_code() {
    let registry_host = registry();
    let dockerfile = format!("FROM {registry_host}/base/busybox:latest\nRUN exit 3\n");
    let digest = upload_context(&[("Dockerfile", &dockerfile)]).await;
    let task = "steps:\n  - id: build\n    build: -t kiln-agent-it/fail:{{.Run.ID}} .\n";
    let out = run_task(
        &unique_run_id("itf"),
        task,
        &digest,
        ("linux", "amd64"),
        false,
    )
    .await;
    assert_eq!(out.status, RunStatus::Failed);
    assert!(
        out.reason
            .contains("The command '/bin/sh -c exit 3' returned a non-zero code: 3"),
        "{}",
        out.reason
    );
    let build = out.step("build");
    assert!(build.has_exit_code && build.exit_code == 3);
}

#[tokio::test]
async fn arm64_builds_run_under_qemu() {
    let registry_host = registry();
    let dockerfile = format!("FROM {registry_host}/base/busybox:latest\nRUN uname -m\n");
    let digest = upload_context(&[("Dockerfile", &dockerfile)]).await;
    let task = "steps:\n  - id: build\n    build: -t kiln-agent-it/arm:{{.Run.ID}} --no-cache .\n  - id: run\n    cmd: kiln-agent-it/arm:{{.Run.ID}} uname -m\n";
    let out = run_task(
        &unique_run_id("ita"),
        task,
        &digest,
        ("linux", "arm64"),
        true,
    )
    .await;
    assert_eq!(
        out.status,
        RunStatus::Succeeded,
        "{}\n{}",
        out.reason,
        out.log
    );
    assert!(out.log.matches("aarch64").count() >= 2, "{}", out.log);
}

#[tokio::test]
async fn run_limits_reach_the_engine() {
    let run_id = unique_run_id("itl");
    let task = "steps:\n  - id: limited\n    keep: true\n    cmd: {{.Run.Registry}}/base/busybox:latest true\n";
    let out = run_task_with(&run_id, task, "", ("linux", "amd64"), false, |request| {
        request.cpu_millis = 500;
        request.memory_bytes = 64 << 20;
    })
    .await;
    assert_eq!(
        out.status,
        RunStatus::Succeeded,
        "{}\n{}",
        out.reason,
        out.log
    );
    let docker = bollard::Docker::connect_with_defaults().expect("docker client");
    let name = kiln_agent::runner::container_name(&format!("kiln-agent-it-{run_id}"), "limited");
    let inspected = docker
        .inspect_container(
            &name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await;
    let _ = docker
        .remove_container(
            &name,
            Some(
                bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .build(),
            ),
        )
        .await;
    let host_config = inspected
        .expect("the kept container")
        .host_config
        .expect("host config");
    assert_eq!(host_config.nano_cpus, Some(500_000_000));
    assert_eq!(host_config.memory, Some(64 << 20));
}

/// A tar archive of `files`.
fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(946_684_800);
        header.set_cksum();
        builder
            .append_data(&mut header, name, *content)
            .expect("tar entry");
    }
    builder.into_inner().expect("tar")
}

/// Loads a one-layer image created on 2000-01-01 (so any age filter passes) as `tag`, with
/// `label` (`key=value`) and a layer holding `content`; returns its id.
async fn load_old_image(docker: &bollard::Docker, tag: &str, label: &str, content: &str) -> String {
    use futures::StreamExt;
    use sha2::Digest;
    let layer = tar_of(&[("round", content.as_bytes())]);
    let diff_id = hex::encode(sha2::Sha256::digest(&layer));
    let (key, value) = label.split_once('=').expect("key=value");
    let created = "2000-01-01T00:00:00Z";
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","created":"{created}","config":{{"Labels":{{"{key}":"{value}"}}}},"rootfs":{{"type":"layers","diff_ids":["sha256:{diff_id}"]}},"history":[{{"created":"{created}"}}]}}"#
    );
    let manifest =
        format!(r#"[{{"Config":"config.json","RepoTags":["{tag}"],"Layers":["layer.tar"]}}]"#);
    let archive = tar_of(&[
        ("config.json", config.as_bytes()),
        ("layer.tar", &layer),
        ("manifest.json", manifest.as_bytes()),
    ]);
    let options = bollard::query_parameters::ImportImageOptionsBuilder::default().build();
    let mut stream = docker.import_image(
        options,
        bollard::body_full(bytes::Bytes::from(archive)),
        None,
    );
    while let Some(item) = stream.next().await {
        item.expect("image load");
    }
    docker
        .inspect_image(tag)
        .await
        .expect("loaded image")
        .id
        .expect("image id")
}

/// Removes every image carrying `label` (this test's own), tagged or not.
async fn remove_labelled_images(docker: &bollard::Docker, label: &str) {
    let filters = std::collections::HashMap::from([("label", vec![label.to_string()])]);
    let options = bollard::query_parameters::ListImagesOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let images = docker.list_images(Some(options)).await.unwrap_or_default();
    // Children first: newer images are listed first.
    for image in images {
        let options = bollard::query_parameters::RemoveImageOptionsBuilder::default()
            .force(true)
            .build();
        let _ = docker.remove_image(&image.id, Some(options), None).await;
    }
}

#[tokio::test]
async fn image_prune_removes_dangling_images_and_keeps_tagged_ones() {
    use kiln_agent::executor::{ContainerRuntime, ImagePrune};

    let _turn = ENGINE.lock().await;
    let docker = bollard::Docker::connect_with_defaults().expect("docker client");
    let base = format!("{}/base/busybox:latest", registry());
    docker
        .inspect_image(&base)
        .await
        .expect("the base image is present");
    // Giving a tag to a second image leaves the first one dangling. Only images carrying this
    // test's own label are pruned: the engine is shared with other tests.
    let marker = unique_run_id("prune");
    let label = format!("kiln.test.prune={marker}");
    let tag = format!("kiln-agent-it/prune:{marker}");
    let first = load_old_image(&docker, &tag, &label, "first").await;
    let second = load_old_image(&docker, &tag, &label, "second").await;
    assert_ne!(first, second);

    let work_dir = tempfile::tempdir().expect("tempdir");
    let runtime = DockerRuntime::connect(&docker_host(), &work_dir.path().join("scratch"))
        .await
        .expect("connect to the Docker Engine");
    // The default policy's prune, narrowed to this test's images.
    let prune = ImagePrune {
        labels: vec![label.clone()],
        ..kiln_agent::prune::PrunePolicy::default().image_prune()
    };
    let report = runtime.prune_images(&prune).await;
    // The build cache call works on this engine (nothing is ten years unused).
    let cache = runtime
        .prune_build_cache(std::time::Duration::from_secs(10 * 365 * 24 * 3600), None)
        .await;
    let first_left = docker.inspect_image(&first).await.is_ok();
    let second_left = docker.inspect_image(&second).await.is_ok();
    remove_labelled_images(&docker, &label).await;

    let report = report.expect("image prune");
    assert!(report.removed.contains(&first), "{report:?} lacks {first}");
    assert!(report.reclaimed_bytes > 0, "{report:?}");
    assert!(!first_left, "the dangling image is still there");
    assert!(second_left, "the tagged image was removed");
    assert!(!report.removed.contains(&second), "{report:?}");
    assert!(cache.is_ok(), "{cache:?}");
    docker
        .inspect_image(&base)
        .await
        .expect("the base image is still present");
}

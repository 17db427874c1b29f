//! End-to-end: quick builds, quick runs and task files through a real coordinator and agent on
//! the real Docker Engine, registry and QEMU.

use kiln_e2e::{block_on, context, pushed, run_id, text, unique, Farm};

/// The row of `kiln runs show` output for one step.
fn step_line(show: &str, step: &str) -> String {
    show.lines()
        .find(|line| line.trim_start().starts_with(step))
        .unwrap_or_default()
        .to_string()
}

fn dockerfile(registry: &str, body: &str) -> String {
    format!("FROM {registry}/base/busybox:latest\n{body}\n")
}

#[test]
fn quick_build_pushes_and_the_printed_digest_is_the_registrys() {
    let farm = Farm::start();
    let repo = unique("e2e/hello");
    // Unique content, so that no earlier run's layer cache hides the RUN output. The build
    // fails if the file .dockerignore excludes reached the builder.
    let greeting = format!("hello from kiln {repo}\n");
    let ctx = context(&[
        (
            "Dockerfile",
            &dockerfile(
                &farm.registry,
                "COPY . /ctx/\nRUN cat /ctx/greeting.txt && test ! -e /ctx/secret.txt && uname -m",
            ),
        ),
        ("greeting.txt", &greeting),
        (".dockerignore", "secret.txt\n"),
        ("secret.txt", "must not be sent\n"),
    ]);
    let tag = format!("{repo}:{{{{.Run.ID}}}}");
    let output = farm.kiln(&["build", "-t", &tag, ctx.path().to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}\n{}",
        text(&output),
        farm.logs()
    );
    let id = run_id(&output);
    let log = text(&output);
    assert!(log.contains(greeting.trim()), "{log}");
    assert!(log.contains("Status: Succeeded"), "{log}");
    let images = pushed(&output);
    let expected_image = format!("{}/{repo}:{id}", farm.registry);
    assert_eq!(images.len(), 1, "{log}");
    assert_eq!(images[0].0, expected_image);
    let served = block_on(farm.registry_client().manifest_digest(&repo, &id))
        .expect("the pushed tag exists");
    assert_eq!(images[0].1, served);
    // The same context again is not uploaded twice.
    let again = farm.kiln(&["build", "--no-push", ctx.path().to_str().unwrap()]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("upload skipped"), "{}", text(&again));
}

#[test]
fn a_failing_build_ends_failed_with_the_exit_code_and_no_push_pushes_nothing() {
    let farm = Farm::start();
    let repo = unique("e2e/failing");
    let ctx = context(&[(
        "Dockerfile",
        &dockerfile(&farm.registry, "RUN echo about to fail && exit 3"),
    )]);
    let output = farm.kiln(&[
        "build",
        "-t",
        &format!("{repo}:v1"),
        ctx.path().to_str().unwrap(),
    ]);
    assert!(!output.status.success(), "{}", text(&output));
    let id = run_id(&output);
    assert!(
        text(&output).contains("Status: Failed"),
        "{}",
        text(&output)
    );
    let show = text(&farm.kiln(&["runs", "show", &id]));
    let build_line = step_line(&show, "build");
    assert!(
        build_line.contains("Failed") && build_line.contains(" 3 "),
        "{show}"
    );
    assert!(show.contains("push") && show.contains("Skipped"), "{show}");
    assert!(block_on(farm.registry_client().manifest_digest(&repo, "v1")).is_err());

    let ok = context(&[("Dockerfile", &dockerfile(&farm.registry, "RUN true"))]);
    let no_push = farm.kiln(&[
        "build",
        "--no-push",
        "-t",
        &format!("{repo}:v2"),
        ok.path().to_str().unwrap(),
    ]);
    assert!(no_push.status.success(), "{}", text(&no_push));
    assert!(pushed(&no_push).is_empty());
    assert!(
        block_on(farm.registry_client().manifest_digest(&repo, "v2")).is_err(),
        "--no-push pushed"
    );
}

#[test]
fn an_arm64_build_runs_under_qemu_and_pushes_an_arm64_image() {
    let farm = Farm::start();
    let repo = unique("e2e/arm");
    // The repository name makes the RUN line unique, so no cached layer hides its output.
    let run_line = format!("RUN echo {repo} machine=$(uname -m)");
    let ctx = context(&[("Dockerfile", &dockerfile(&farm.registry, &run_line))]);
    let output = farm.kiln(&[
        "build",
        "--platform",
        "linux/arm64",
        "-t",
        &format!("{repo}:v1"),
        ctx.path().to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}\n{}",
        text(&output),
        farm.logs()
    );
    assert!(
        text(&output).contains("machine=aarch64"),
        "{}",
        text(&output)
    );
    let platforms =
        block_on(farm.registry_client().image_platforms(&repo, "v1")).expect("the image exists");
    assert!(
        platforms
            .iter()
            .any(|p| p.architecture == "arm64" && p.os == "linux"),
        "{platforms:?}"
    );
    assert!(
        platforms.iter().all(|p| p.architecture != "amd64"),
        "{platforms:?}"
    );
    let id = run_id(&output);
    assert!(farm.run_field(&id, "Agent:").contains("emulated"));
}

#[test]
fn quick_run_of_an_image_streams_its_output() {
    let farm = Farm::start();
    let cmd = format!("{}/base/busybox:latest echo hello-from-cmd", farm.registry);
    let output = farm.kiln(&["run", "--cmd", &cmd, "/dev/null"]);
    assert!(
        output.status.success(),
        "{}\n{}",
        text(&output),
        farm.logs()
    );
    assert!(
        text(&output).contains("hello-from-cmd"),
        "{}",
        text(&output)
    );
    let failing = farm.kiln(&[
        "run",
        "--cmd",
        &format!("{}/base/busybox:latest sh -c 'exit 7'", farm.registry),
        "/dev/null",
    ]);
    assert!(!failing.status.success());
    assert!(
        text(&failing).contains("Status: Failed"),
        "{}",
        text(&failing)
    );
}

#[test]
fn a_three_step_task_builds_runs_the_image_and_pushes() {
    let farm = Farm::start();
    let repo = unique("e2e/three");
    let ctx = context(&[
        ("Dockerfile", &dockerfile(&farm.registry, "RUN echo built > /built.txt\nCMD [\"cat\", \"/built.txt\"]")),
        (
            "task.yaml",
            &format!(
                "version: v1.1.0\nsteps:\n  - build: -t {{{{.Run.Registry}}}}/{repo}:{{{{.Run.ID}}}} .\n  - cmd: {{{{.Run.Registry}}}}/{repo}:{{{{.Run.ID}}}}\n  - push:\n    - {{{{.Run.Registry}}}}/{repo}:{{{{.Run.ID}}}}\n"
            ),
        ),
    ]);
    let task = ctx.path().join("task.yaml");
    let output = farm.kiln(&[
        "run",
        "-f",
        task.to_str().unwrap(),
        ctx.path().to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}\n{}",
        text(&output),
        farm.logs()
    );
    let id = run_id(&output);
    assert!(text(&output).contains("built"), "{}", text(&output));
    let images = pushed(&output);
    assert_eq!(images.len(), 1, "{}", text(&output));
    let served = block_on(farm.registry_client().manifest_digest(&repo, &id)).expect("pushed");
    assert_eq!(images[0].1, served);
    let show = text(&farm.kiln(&["runs", "show", &id]));
    assert_eq!(show.matches("Succeeded").count(), 4, "{show}");
}

#[test]
fn logs_survive_a_coordinator_restart_and_queued_runs_wait_for_an_agent() {
    let mut farm = Farm::start();
    let cmd = format!(
        "{}/base/busybox:latest sh -c 'for i in 1 2 3; do echo line-$i; done'",
        farm.registry
    );
    let output = farm.kiln(&["run", "--cmd", &cmd, "/dev/null"]);
    assert!(
        output.status.success(),
        "{}\n{}",
        text(&output),
        farm.logs()
    );
    let first = run_id(&output);

    farm.stop_coordinator();
    farm.start_coordinator();
    assert_eq!(farm.run_field(&first, "Status:"), "Succeeded");
    let logs = text(&farm.kiln(&["logs", &first]));
    for line in ["line-1", "line-2", "line-3"] {
        assert!(logs.contains(line), "{logs}\n{}", farm.logs());
    }

    farm.stop_agent();
    let queued = farm.kiln(&[
        "run",
        "--no-wait",
        "--cmd",
        &format!("{}/base/busybox:latest echo after-restart", farm.registry),
        "/dev/null",
    ]);
    assert!(queued.status.success(), "{}", text(&queued));
    let second = run_id(&queued);
    assert_eq!(farm.run_field(&second, "Status:"), "Queued");
    assert!(farm
        .run_field(&second, "Waiting:")
        .contains("no agent is connected"));
    farm.start_agent();
    farm.wait_for("the queued run to succeed", || {
        farm.run_field(&second, "Status:") == "Succeeded"
    });
    assert!(text(&farm.kiln(&["logs", &second])).contains("after-restart"));
}

#[test]
fn bad_input_gets_one_line_errors_and_a_non_zero_exit() {
    let farm = Farm::start();
    let no_dockerfile = context(&[("README", "no dockerfile here")]);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "build".into(),
                "-t".into(),
                "x:1".into(),
                "/nonexistent/context".into(),
            ],
            "does not exist",
        ),
        (
            vec![
                "build".into(),
                "-t".into(),
                "x:1".into(),
                no_dockerfile.path().to_str().unwrap().into(),
            ],
            "no Dockerfile",
        ),
        (
            vec![
                "build".into(),
                "--platform".into(),
                "linux/sparc".into(),
                "-t".into(),
                "x:1".into(),
                no_dockerfile.path().to_str().unwrap().into(),
            ],
            "unknown platform",
        ),
        (
            vec!["runs".into(), "show".into(), "ca999999".into()],
            "does not exist",
        ),
        (
            vec![
                "run".into(),
                "--cmd".into(),
                "x".into(),
                "--set".into(),
                "novalue".into(),
                "/dev/null".into(),
            ],
            "KEY=VALUE",
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = farm.kiln(&args);
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let unreachable = std::process::Command::new(farm.bin_dir.join("kiln"))
        .args(["runs", "list"])
        .env("KILN_COORDINATOR", "http://127.0.0.1:1")
        .output()
        .expect("kiln runs");
    assert!(!unreachable.status.success());
    assert!(
        String::from_utf8_lossy(&unreachable.stderr).contains("cannot reach the kiln coordinator")
    );
}

#[test]
fn cancel_stops_a_running_run_and_removes_its_container() {
    let farm = Farm::start();
    let cmd = format!("{}/base/busybox:latest sleep 300", farm.registry);
    let queued = farm.kiln(&["run", "--no-wait", "--cmd", &cmd, "/dev/null"]);
    assert!(queued.status.success(), "{}", text(&queued));
    let id = run_id(&queued);
    farm.wait_for_running_step(&id);
    let container = format!("{}-{id}-", farm.agent_id);
    assert_eq!(farm.containers(&container).len(), 1);
    let cancel = farm.kiln(&["runs", "cancel", &id]);
    assert!(cancel.status.success(), "{}", text(&cancel));
    farm.wait_for("the run to be canceled", || {
        farm.run_field(&id, "Status:") == "Canceled"
    });
    farm.wait_for("the container to be removed", || {
        farm.containers(&container).is_empty()
    });
    let again = farm.kiln(&["runs", "cancel", &id]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("already finished: Canceled"),
        "{}",
        text(&again)
    );
}

#[test]
fn a_run_past_its_timeout_ends_timeout() {
    let farm = Farm::start();
    let cmd = format!("{}/base/busybox:latest sleep 120", farm.registry);
    let output = farm.kiln(&["run", "--timeout", "3", "--cmd", &cmd, "/dev/null"]);
    assert!(!output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("Status: Timeout"),
        "{}\n{}",
        text(&output),
        farm.logs()
    );
}

#[test]
fn a_run_whose_agent_vanishes_ends_in_error_with_the_reason() {
    let mut farm = Farm::start();
    let cmd = format!("{}/base/busybox:latest sleep 300", farm.registry);
    let queued = farm.kiln(&["run", "--no-wait", "--cmd", &cmd, "/dev/null"]);
    let id = run_id(&queued);
    farm.wait_for_running_step(&id);
    farm.kill_agent();
    farm.wait_for("the run to end in Error", || {
        farm.run_field(&id, "Status:") == "Error"
    });
    let reason = farm.run_field(&id, "Reason:");
    assert!(reason.contains("disconnected mid-run"), "{reason}");
    // The agent's next start removes what its killed predecessor left behind.
    farm.start_agent();
    let container = format!("{}-{id}-", farm.agent_id);
    farm.wait_for("the orphaned container to be removed", || {
        farm.containers(&container).is_empty()
    });
}

#[test]
fn a_push_the_registry_refuses_fails_the_run_with_the_reason() {
    let farm = Farm::start();
    let ctx = context(&[("Dockerfile", &dockerfile(&farm.registry, "RUN true"))]);
    // Nothing listens on port 1: the context still goes to the farm's registry, the push fails.
    let output = farm.kiln(&[
        "build",
        "-r",
        "127.0.0.1:1",
        "-t",
        "refused:v1",
        ctx.path().to_str().unwrap(),
    ]);
    assert!(!output.status.success(), "{}", text(&output));
    let id = run_id(&output);
    assert!(
        text(&output).contains("Status: Failed"),
        "{}",
        text(&output)
    );
    let show = text(&farm.kiln(&["runs", "show", &id]));
    let push_line = step_line(&show, "push");
    assert!(
        push_line.contains("Failed") && push_line.contains("127.0.0.1:1"),
        "{show}"
    );
    // The build step's log was stored in the farm's registry and reads back.
    assert!(text(&farm.kiln(&["logs", &id])).contains("Successfully tagged 127.0.0.1:1/refused:v1"));
}

#[test]
fn a_context_linking_to_a_host_directory_ends_error_naming_the_entry() {
    let farm = Farm::start();
    // A host directory with a canary the run must never see.
    let host = tempfile::tempdir().expect("host directory");
    let canary = format!("host-canary-{}", unique("c"));
    std::fs::write(host.path().join("canary.txt"), &canary).expect("write the canary");
    std::fs::write(
        host.path().join("Dockerfile"),
        dockerfile(&farm.registry, "COPY . /h/\nRUN cat /h/canary.txt"),
    )
    .expect("write the host Dockerfile");
    let ctx = context(&[(
        "task.yaml",
        "version: v1.1.0\nsteps:\n  - build: -t {{.Run.Registry}}/e2e/hostile:{{.Run.ID}} -f h/Dockerfile h\n",
    )]);
    std::os::unix::fs::symlink(host.path(), ctx.path().join("h")).expect("symlink");
    let task = ctx.path().join("task.yaml");
    let output = farm.kiln(&[
        "run",
        "-f",
        task.to_str().unwrap(),
        ctx.path().to_str().unwrap(),
    ]);
    let log = text(&output);
    assert!(!output.status.success(), "{log}");
    assert!(
        !log.contains(&canary),
        "the host file reached the build: {log}"
    );
    let id = run_id(&output);
    let show = text(&farm.kiln(&["runs", "show", &id]));
    assert!(show.contains("Error"), "{show}");
    assert!(
        show.contains("\"h\"") && show.contains("outside the context"),
        "the reason names the entry: {show}"
    );
}

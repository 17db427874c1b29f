//! End-to-end: multi-step task files with ACR semantics on the real engine and registry — the
//! `examples/multistep` scenario (parallel builds, a detached app reached by its step id, tests
//! that gate the push), step timeouts, secrets from the agent's store with masked logs and
//! secret volumes, the step environment (HOME, the engine socket), and the container-level step
//! properties (entryPoint, user, workingDirectory, env, privileged, ports, expose, keep, pull)
//! together with retries, repeat, startDelay and ignoreErrors.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use kiln_e2e::{block_on, context, copy_dir, examples_dir, pushed, run_id, text, unique, Farm};

/// The row of `kiln runs show` output for one step: (status, exit code).
fn step_row(show: &str, step: &str) -> (String, String) {
    let line = show
        .lines()
        .find(|line| line.split_whitespace().next() == Some(step))
        .unwrap_or_else(|| panic!("no step {step} in:\n{show}"));
    let mut fields = line.split_whitespace().skip(1);
    (
        fields.next().unwrap_or_default().to_string(),
        fields.next().unwrap_or_default().to_string(),
    )
}

/// The multistep example with one extra, never-cached `RUN` in each image that prints the
/// host's uptime (one clock for both builds) before and after a two-second pause.
fn multistep_context(label: &str) -> tempfile::TempDir {
    let ctx = copy_dir(&examples_dir().join("multistep"));
    for (dir, name) in [("app", "app"), ("test", "tests")] {
        let path = ctx.path().join(dir).join("Dockerfile");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("the example's Dockerfile");
        writeln!(
            file,
            "RUN echo \"{label} {name}-start $(cut -d' ' -f1 /proc/uptime)\" && sleep 2 && echo \"{label} {name}-end $(cut -d' ' -f1 /proc/uptime)\""
        )
        .expect("an appended RUN line");
    }
    ctx
}

/// The uptime a build printed for `what` (`app-start`, …), from the build log.
fn uptime(log: &str, label: &str, what: &str) -> f64 {
    let prefix = format!("{label} {what} ");
    log.lines()
        .find_map(|line| line.trim().strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no '{prefix}<uptime>' line in the log:\n{log}"))
}

fn run_task(farm: &Farm, ctx: &Path, task: &str, extra: &[&str]) -> std::process::Output {
    let task_path = ctx.join(task);
    let mut args = vec!["run", "-f", task_path.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    farm.kiln(&args)
}

#[test]
fn the_multistep_example_builds_in_parallel_tests_the_detached_app_by_name_and_pushes() {
    let farm = Farm::start();
    let repo = unique("e2e/multistep");
    let label = unique("build");
    let ctx = multistep_context(&label);
    let output = run_task(
        &farm,
        ctx.path(),
        "acb.yaml",
        &["--set", &format!("repo={repo}")],
    );
    let log = text(&output);
    assert!(output.status.success(), "{log}\n{}", farm.logs());
    let id = run_id(&output);
    assert!(log.contains("Status: Succeeded"), "{log}");

    // The test step reached the detached app by its step id and found its page.
    assert!(log.contains("GET http://app:80/:"), "{log}");
    assert!(
        log.contains("PASS: the page says 'Hello from the kiln multistep example'"),
        "{log}"
    );

    // The two builds overlapped in time.
    let stored = text(&farm.kiln(&["logs", &id]));
    let (app_start, app_end) = (
        uptime(&stored, &label, "app-start"),
        uptime(&stored, &label, "app-end"),
    );
    let (tests_start, tests_end) = (
        uptime(&stored, &label, "tests-start"),
        uptime(&stored, &label, "tests-end"),
    );
    assert!(
        app_start < tests_end && tests_start < app_end,
        "the builds did not overlap: app {app_start}..{app_end}, tests {tests_start}..{tests_end}"
    );

    // Both images were pushed, with the digests the registry serves.
    let images = pushed(&output);
    let registry = farm.registry_client();
    for part in ["app", "test"] {
        let image = format!("{}/{repo}/{part}:{id}", farm.registry);
        let digest = images
            .iter()
            .find(|(name, _)| *name == image)
            .map(|(_, digest)| digest.clone())
            .unwrap_or_else(|| panic!("{image} not pushed: {images:?}\n{log}"));
        let served = block_on(registry.manifest_digest(&format!("{repo}/{part}"), &id))
            .expect("the pushed tag exists");
        assert_eq!(digest, served, "{image}");
    }

    let show = text(&farm.kiln(&["runs", "show", &id]));
    for step in ["build-app", "build-test", "app", "test", "push"] {
        assert_eq!(step_row(&show, step).0, "Succeeded", "{step}:\n{show}");
    }
    // The detached app, every step container and the run's network are gone.
    assert_eq!(farm.run_resources(&id), Vec::<String>::new());
    assert!(!farm.agent_run_dir(&id).exists());
}

#[test]
fn a_failing_test_step_fails_the_run_and_nothing_is_pushed() {
    let farm = Farm::start();
    let repo = unique("e2e/multistep-failing");
    let ctx = copy_dir(&examples_dir().join("multistep"));
    let output = run_task(
        &farm,
        ctx.path(),
        "acb.yaml",
        &[
            "--set",
            &format!("repo={repo}"),
            "--set",
            "expect=This text is not on the page",
        ],
    );
    let log = text(&output);
    assert!(!output.status.success(), "{log}");
    let id = run_id(&output);
    assert!(log.contains("Status: Failed"), "{log}\n{}", farm.logs());
    assert!(
        log.contains("FAIL: the page does not say 'This text is not on the page'"),
        "{log}"
    );
    assert!(pushed(&output).is_empty(), "{log}");

    let show = text(&farm.kiln(&["runs", "show", &id]));
    assert_eq!(
        step_row(&show, "test"),
        ("Failed".to_string(), "1".to_string()),
        "{show}"
    );
    assert_eq!(step_row(&show, "push").0, "Skipped", "{show}");
    for step in ["build-app", "build-test", "app"] {
        assert_eq!(step_row(&show, step).0, "Succeeded", "{step}:\n{show}");
    }
    assert!(
        farm.run_field(&id, "Reason:").contains("step test failed"),
        "{show}"
    );
    let registry = farm.registry_client();
    for part in ["app", "test"] {
        assert!(
            block_on(registry.manifest_digest(&format!("{repo}/{part}"), &id)).is_err(),
            "{repo}/{part}:{id} was pushed"
        );
    }
    assert_eq!(farm.run_resources(&id), Vec::<String>::new());
}

#[test]
fn a_step_past_its_timeout_ends_the_run_timeout_and_skips_the_rest() {
    let farm = Farm::start();
    let ctx = copy_dir(&examples_dir().join("multistep"));
    let started = std::time::Instant::now();
    let output = run_task(&farm, ctx.path(), "acb-timeout.yaml", &[]);
    let log = text(&output);
    assert!(!output.status.success(), "{log}");
    let id = run_id(&output);
    assert!(log.contains("Status: Timeout"), "{log}\n{}", farm.logs());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(120),
        "the 3 s step ran for {:?}",
        started.elapsed()
    );
    let show = text(&farm.kiln(&["runs", "show", &id]));
    assert_eq!(step_row(&show, "slow").0, "Timeout", "{show}");
    assert_eq!(step_row(&show, "after").0, "Skipped", "{show}");
    assert!(
        farm.run_field(&id, "Reason:")
            .contains("timed out after 3s"),
        "{show}"
    );
    assert!(!log.contains("this never runs\n"), "{log}");
    assert_eq!(farm.run_resources(&id), Vec::<String>::new());
}

fn sha256_hex(data: &str) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data.as_bytes())
        .expect("written");
    let output = child.wait_with_output().expect("sha256sum ends");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn secrets_come_from_the_agents_store_and_never_show_in_any_output() {
    let secrets = tempfile::tempdir().expect("a secrets directory");
    let vault = secrets.path().join("kiln-example.vault.azure.net");
    std::fs::create_dir_all(&vault).expect("the vault directory");
    let value = unique("tok").replace('-', "x");
    std::fs::write(vault.join("api-token"), format!("{value}\n")).expect("the secret file");
    let farm = Farm::start_with_secrets_dir(secrets.path());
    let ctx = copy_dir(&examples_dir().join("multistep"));

    let output = run_task(&farm, ctx.path(), "acb-secrets.yaml", &[]);
    let live = text(&output);
    assert!(output.status.success(), "{live}\n{}", farm.logs());
    let id = run_id(&output);
    // The steps saw the value (the file's hash is the value's), the log shows ***.
    assert!(live.contains("the token is ***"), "{live}");
    assert!(live.contains("the file says ***"), "{live}");
    assert!(live.contains(&sha256_hex(&value)), "{live}");
    assert!(live.contains("-r--------"), "secret file mode:\n{live}");
    let stored = text(&farm.kiln(&["logs", &id]));
    assert!(stored.contains("the token is ***"), "{stored}");
    for (what, out) in [
        ("kiln run", live.clone()),
        ("kiln logs", stored),
        ("kiln runs show", text(&farm.kiln(&["runs", "show", &id]))),
        ("kiln runs list", text(&farm.kiln(&["runs", "list"]))),
    ] {
        assert!(!out.contains(&value), "{what} shows the secret:\n{out}");
    }
    assert!(
        !farm.agent_run_dir(&id).exists(),
        "secret volume left behind"
    );
    assert_eq!(farm.run_resources(&id), Vec::<String>::new());

    // A declared secret the store lacks: the run ends Error saying which file to create.
    let missing = context(&[(
        "task.yaml",
        "secrets:\n  - id: dbPassword\n    keyvault: https://kiln-example.vault.azure.net/secrets/db-password\nsteps:\n  - cmd: busybox echo {{.Secrets.dbPassword}}\n",
    )]);
    let failed = run_task(&farm, missing.path(), "task.yaml", &[]);
    assert!(!failed.status.success(), "{}", text(&failed));
    let failed_id = run_id(&failed);
    assert_eq!(farm.run_field(&failed_id, "Status:"), "Error");
    let reason = farm.run_field(&failed_id, "Reason:");
    let expected_file = vault.join("db-password");
    assert!(reason.contains("secret dbPassword"), "{reason}");
    assert!(
        reason.contains(&format!("create the file {}", expected_file.display())),
        "{reason}"
    );
}

#[test]
fn steps_get_a_home_directory_and_the_engine_socket_like_on_acr() {
    let farm = Farm::start();
    let task = format!(
        "steps:\n  - cmd: {}/base/busybox:latest sh -c 'echo home=$HOME; touch $HOME/written && echo home-writable; test -S /var/run/docker.sock && echo engine-socket-mounted'\n  - cmd: {}/base/busybox:latest sh -c 'test -e $HOME/written && echo home-shared'\n",
        farm.registry, farm.registry
    );
    let ctx = context(&[("task.yaml", &task)]);
    let output = run_task(&farm, ctx.path(), "task.yaml", &[]);
    let log = text(&output);
    assert!(output.status.success(), "{log}\n{}", farm.logs());
    for expected in [
        "home=/acb/home",
        "home-writable",
        "engine-socket-mounted",
        "home-shared",
    ] {
        assert!(log.contains(expected), "{expected}:\n{log}");
    }
}

/// `docker inspect --format FORMAT NAME` on the farm's engine.
fn inspect(farm: &Farm, name: &str, format: &str) -> String {
    farm.docker(&["inspect", "--format", format, name])
        .trim()
        .to_string()
}

#[test]
fn step_properties_reach_the_engine_retries_repeat_and_ignored_errors_behave_like_acr() {
    let farm = Farm::start();
    let image = format!("{}/base/busybox:latest", farm.registry);
    let task = format!(
        r#"version: v1.1.0
steps:
  - id: options
    cmd: {image} -c 'echo "uid=$(id -u) pwd=$(pwd) greeting=$GREETING"; echo "cap_sys_admin=$(( (0x$(grep CapBnd /proc/self/status | cut -f2) >> 21) & 1 ))"'
    entryPoint: sh
    user: "1234"
    workingDirectory: /tmp
    env: ["GREETING=hi there"]
    privileged: true
    ports: ["127.0.0.1::8080"]
    expose: ["9090"]
    keep: true
  - id: flaky
    cmd: {image} sh -c 'if test -e flaky-seen; then echo flaky-second-try; else touch flaky-seen; echo flaky-first-try; exit 7; fi'
    retries: 1
    retryDelay: 1
  - id: repeated
    cmd: {image} sh -c 'echo repeat-ran'
    repeat: 2
  - id: ignored
    cmd: {image} sh -c 'exit 3'
    ignoreErrors: true
  - id: delayed
    cmd: {image} sh -c 'echo delayed-ran'
    startDelay: 1
    pull: true
"#
    );
    let ctx = context(&[("task.yaml", &task)]);
    let output = run_task(&farm, ctx.path(), "task.yaml", &[]);
    let log = text(&output);
    assert!(output.status.success(), "{log}\n{}", farm.logs());
    let id = run_id(&output);

    // entryPoint, user, workingDirectory, env and privileged took effect inside the container.
    assert!(log.contains("uid=1234 pwd=/tmp greeting=hi there"), "{log}");
    // Only a privileged container keeps CAP_SYS_ADMIN (bit 21) in its bounding set.
    assert!(log.contains("cap_sys_admin=1"), "{log}");
    // The first attempt failed, the retry ran in the same workspace and succeeded.
    assert!(log.contains("flaky-first-try"), "{log}");
    assert!(log.contains("flaky-second-try"), "{log}");
    // repeat: 2 runs the container three times.
    assert_eq!(log.matches("repeat-ran").count(), 3, "{log}");
    assert!(log.contains("delayed-ran"), "{log}");

    let show = text(&farm.kiln(&["runs", "show", &id]));
    for step in ["options", "flaky", "repeated", "ignored", "delayed"] {
        assert_eq!(step_row(&show, step).0, "Succeeded", "{step}:\n{show}");
    }
    assert!(show.contains("error ignored"), "{show}");

    // `keep` left the options container behind; its configuration is what the step asked for.
    let kept = format!("kiln-{}-{id}-options", farm.agent_id);
    assert_eq!(farm.run_resources(&id), vec![kept.clone()]);
    assert_eq!(
        inspect(
            &farm,
            &kept,
            "{{.Config.User}} {{.Config.WorkingDir}} {{json .Config.Entrypoint}} {{.HostConfig.Privileged}}"
        ),
        r#"1234 /tmp ["sh"] true"#
    );
    let ports = inspect(&farm, &kept, "{{json .HostConfig.PortBindings}}");
    assert!(
        ports.contains(r#""8080/tcp":[{"HostIp":"127.0.0.1","HostPort":""}]"#),
        "{ports}"
    );
    let exposed = inspect(&farm, &kept, "{{json .Config.ExposedPorts}}");
    assert!(
        exposed.contains("9090/tcp") && exposed.contains("8080/tcp"),
        "{exposed}"
    );
    farm.docker(&["rm", "--force", &kept]);
}

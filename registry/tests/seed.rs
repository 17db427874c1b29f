//! Tests `kiln-seed` end to end: the binary pushes a four-platform index to a real registry.

mod common;

use std::path::Path;
use std::process::Command;

use kiln_registry::Registry;

use common::TestRegistry;

fn rootfs(root: &Path, name: &str) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
    std::fs::write(dir.join("bin/busybox"), format!("busybox for {name}")).expect("write");
    for applet in ["sh", "ls", "uname"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).expect("symlink");
    }
    dir
}

fn run_seed(host: &str, tag: &str, platforms: &[(&str, &Path)], extra: &[&str]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln-seed"));
    command.args([
        "--registry",
        host,
        "--repository",
        "base/busybox",
        "--tag",
        tag,
    ]);
    for (platform, dir) in platforms {
        command
            .arg("--platform")
            .arg(format!("{platform}={}", dir.display()));
    }
    command.args(extra);
    let output = command.output().expect("run kiln-seed");
    assert!(
        output.status.success(),
        "kiln-seed failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

#[tokio::test]
async fn seeds_a_four_platform_index() {
    let registry = TestRegistry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let amd64 = rootfs(dir.path(), "amd64");
    let arm64 = rootfs(dir.path(), "arm64");
    let armhf = rootfs(dir.path(), "armhf");
    let i386 = rootfs(dir.path(), "i386");
    let platforms: [(&str, &Path); 4] = [
        ("linux/amd64", &amd64),
        ("linux/arm64", &arm64),
        ("linux/arm/v7", &armhf),
        ("linux/386", &i386),
    ];

    let index_digest = run_seed(&registry.host, "latest", &platforms, &[]);
    let client = Registry::new(&registry.host).expect("client");
    assert_eq!(
        client
            .manifest_digest("base/busybox", "latest")
            .await
            .expect("resolve"),
        index_digest
    );

    // image_platforms checks each entry against its child's config.
    let found = client
        .image_platforms("base/busybox", "latest")
        .await
        .expect("platforms");
    let names: Vec<String> = found.iter().map(|p| p.platform()).collect();
    assert_eq!(
        names,
        vec!["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/386"]
    );
    let raw = client
        .pull_manifest("base/busybox", "latest")
        .await
        .expect("index");
    let index = raw.parse().expect("parse");
    assert_eq!(
        index.media_type.as_deref(),
        Some(kiln_registry::manifest::OCI_INDEX)
    );
    for platform in &found {
        let child = client
            .pull_manifest("base/busybox", &platform.manifest_digest)
            .await
            .expect("child")
            .parse()
            .expect("parse");
        let layers = child.layers.expect("layers");
        assert_eq!(layers.len(), 1);
        assert!(client
            .blob_exists("base/busybox", &layers[0].digest)
            .await
            .expect("layer exists"));
        assert!(
            registry.blob_data_path(&layers[0].digest).exists(),
            "layer stored in the registry"
        );
    }

    // Seeding the same folders again gives the same digest.
    assert_eq!(
        run_seed(&registry.host, "latest", &platforms, &[]),
        index_digest
    );

    // Docker media types produce a manifest list with the same platforms.
    let list_digest = run_seed(
        &registry.host,
        "docker",
        &platforms,
        &["--docker-media-types"],
    );
    assert_ne!(list_digest, index_digest);
    let raw = client
        .pull_manifest("base/busybox", "docker")
        .await
        .expect("list");
    assert_eq!(
        raw.parse().expect("parse").media_type.as_deref(),
        Some(kiln_registry::manifest::DOCKER_MANIFEST_LIST)
    );
    let found = client
        .image_platforms("base/busybox", "docker")
        .await
        .expect("platforms");
    assert_eq!(found.len(), 4);
}

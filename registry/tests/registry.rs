//! Integration tests of the registry client against a real CNCF Distribution registry.

mod common;

use std::io::Write;

use kiln_registry::manifest::{self, Descriptor, Manifest, Platform};
use kiln_registry::{sha256_digest, Error, Registry, CONTEXTS_REPOSITORY, LOGS_REPOSITORY};
use sha2::{Digest, Sha256};

use common::TestRegistry;

fn client(registry: &TestRegistry) -> Registry {
    Registry::new(&registry.host).expect("client")
}

/// Writes `size` bytes of a deterministic pattern and returns the digest.
fn write_pattern(path: &std::path::Path, size: usize, seed: u8) -> String {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 1024 * 1024];
    let mut written = 0;
    let mut state = seed as u32;
    while written < size {
        for byte in chunk.iter_mut() {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            *byte = (state >> 16) as u8;
        }
        let n = chunk.len().min(size - written);
        file.write_all(&chunk[..n]).expect("write");
        hasher.update(&chunk[..n]);
        written += n;
    }
    file.flush().expect("flush");
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

fn file_digest(path: &std::path::Path) -> String {
    sha256_digest(&std::fs::read(path).expect("read"))
}

#[tokio::test]
async fn push_twice_skips_and_pulls_back() {
    let registry = TestRegistry::start();
    let client = client(&registry);
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("context.tar");
    let digest = write_pattern(&src, 300_000, 1);

    assert!(!client
        .blob_exists(CONTEXTS_REPOSITORY, &digest)
        .await
        .expect("exists"));
    client
        .push_blob_file(CONTEXTS_REPOSITORY, &src, &digest)
        .await
        .expect("first push");
    assert!(client
        .blob_exists(CONTEXTS_REPOSITORY, &digest)
        .await
        .expect("exists"));

    // The second push must not upload: with different bytes under the same digest the registry
    // would refuse an upload, so success proves it was skipped.
    std::fs::write(&src, b"other content").expect("overwrite");
    client
        .push_blob_file(CONTEXTS_REPOSITORY, &src, &digest)
        .await
        .expect("second push is skipped");

    let dest = dir.path().join("pulled.tar");
    let size = client
        .pull_blob_to_file(CONTEXTS_REPOSITORY, &digest, &dest)
        .await
        .expect("pull");
    assert_eq!(size, 300_000);
    assert_eq!(file_digest(&dest), digest);

    let bytes = client
        .pull_blob_bytes(CONTEXTS_REPOSITORY, &digest, 1024 * 1024)
        .await
        .expect("pull bytes");
    assert_eq!(sha256_digest(&bytes), digest);
    let err = client
        .pull_blob_bytes(CONTEXTS_REPOSITORY, &digest, 1000)
        .await
        .expect_err("too large");
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
}

#[tokio::test]
async fn large_blob_streams_both_ways() {
    let registry = TestRegistry::start();
    let client = client(&registry);
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("big.bin");
    let size = 50 * 1024 * 1024;
    let digest = write_pattern(&src, size, 7);
    client
        .push_blob_file(CONTEXTS_REPOSITORY, &src, &digest)
        .await
        .expect("push 50 MiB");
    assert_eq!(
        std::fs::metadata(registry.blob_data_path(&digest))
            .expect("stored")
            .len(),
        size as u64
    );

    let dest = dir.path().join("big.out");
    let pulled = client
        .pull_blob_to_file(CONTEXTS_REPOSITORY, &digest, &dest)
        .await
        .expect("pull 50 MiB");
    assert_eq!(pulled, size as u64);
    assert_eq!(file_digest(&dest), digest);
}

#[tokio::test]
async fn digest_mismatch_is_detected() {
    let registry = TestRegistry::start();
    let client = client(&registry);
    let dir = tempfile::tempdir().expect("tempdir");

    let log = b"step 1: ok\nstep 2: ok\n".to_vec();
    let digest = client
        .push_blob_bytes(LOGS_REPOSITORY, log.clone())
        .await
        .expect("push log");
    assert_eq!(digest, sha256_digest(&log));
    assert_eq!(
        client
            .pull_blob_bytes(LOGS_REPOSITORY, &digest, 1024)
            .await
            .expect("pull log"),
        log
    );

    // Corrupt the stored blob (same length, different bytes) behind the registry's back.
    let stored = registry.blob_data_path(&digest);
    let mut corrupted = std::fs::read(&stored).expect("read stored");
    corrupted[0] ^= 0xff;
    std::fs::write(&stored, &corrupted).expect("corrupt");

    let dest = dir.path().join("log.txt");
    let err = client
        .pull_blob_to_file(LOGS_REPOSITORY, &digest, &dest)
        .await
        .expect_err("corrupt blob");
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(
        !dest.exists(),
        "a blob that failed verification must not be left at the destination"
    );
    let err = client
        .pull_blob_bytes(LOGS_REPOSITORY, &digest, 1024)
        .await
        .expect_err("corrupt blob");
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");

    // Uploading a file under a digest it does not have is refused by the registry.
    let src = dir.path().join("wrong.bin");
    std::fs::write(&src, b"these bytes do not hash to the digest").expect("write");
    let wrong = sha256_digest(b"something else");
    let err = client
        .push_blob_file(LOGS_REPOSITORY, &src, &wrong)
        .await
        .expect_err("wrong digest");
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
}

#[tokio::test]
async fn missing_things_have_clear_errors() {
    let registry = TestRegistry::start();
    let client = client(&registry);
    let absent = sha256_digest(b"never pushed");
    assert!(!client
        .blob_exists(LOGS_REPOSITORY, &absent)
        .await
        .expect("exists"));
    let err = client
        .pull_blob_bytes(LOGS_REPOSITORY, &absent, 1024)
        .await
        .expect_err("absent");
    assert!(matches!(err, Error::BlobNotFound { .. }), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let err = client
        .pull_blob_to_file(LOGS_REPOSITORY, &absent, &dir.path().join("x"))
        .await
        .expect_err("absent");
    assert!(matches!(err, Error::BlobNotFound { .. }), "{err}");
    let err = client
        .manifest_digest("app", "nope")
        .await
        .expect_err("absent tag");
    assert!(matches!(err, Error::ManifestNotFound { .. }), "{err}");
    let err = client
        .blob_exists("Bad_Repo", &absent)
        .await
        .expect_err("bad repository");
    assert!(matches!(err, Error::InvalidRepository { .. }), "{err}");
    let err = client
        .blob_exists(LOGS_REPOSITORY, "sha256:xyz")
        .await
        .expect_err("bad digest");
    assert!(matches!(err, Error::InvalidDigest { .. }), "{err}");
}

#[tokio::test]
async fn unreachable_registry_says_so() {
    // Bind a port and close it again so nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let client = Registry::new(&format!("127.0.0.1:{port}")).expect("client");
    let err = client
        .blob_exists(LOGS_REPOSITORY, &sha256_digest(b"x"))
        .await
        .expect_err("nothing listens");
    let text = err.to_string();
    assert!(matches!(err, Error::Unreachable { .. }), "{text}");
    assert!(
        text.contains("is not reachable")
            && text.contains("connection refused")
            && text.contains("is the registry running?"),
        "{text}"
    );
}

/// Pushes a one-layer image with the given config platform; returns (manifest digest, manifest size).
async fn push_image(
    client: &Registry,
    repository: &str,
    os: &str,
    arch: &str,
    variant: Option<&str>,
    tag: Option<&str>,
) -> (String, u64) {
    let layer = client
        .push_blob_bytes(repository, format!("layer for {arch}").into_bytes())
        .await
        .expect("layer");
    let mut config = serde_json::json!({"os": os, "architecture": arch, "rootfs": {"type": "layers", "diff_ids": [layer]}});
    if let Some(variant) = variant {
        config["variant"] = variant.into();
    }
    let config_bytes = serde_json::to_vec(&config).expect("json");
    let config_size = config_bytes.len() as u64;
    let config_digest = client
        .push_blob_bytes(repository, config_bytes)
        .await
        .expect("config");
    let image = Manifest {
        schema_version: 2,
        media_type: Some(manifest::OCI_MANIFEST.to_string()),
        config: Some(Descriptor {
            media_type: manifest::OCI_CONFIG.into(),
            digest: config_digest,
            size: config_size,
            platform: None,
            annotations: None,
        }),
        layers: Some(vec![Descriptor {
            media_type: manifest::OCI_LAYER_GZIP.into(),
            digest: layer,
            size: 13,
            platform: None,
            annotations: None,
        }]),
        manifests: None,
    };
    let body = serde_json::to_vec(&image).expect("json");
    let size = body.len() as u64;
    let expected = sha256_digest(&body);
    let reference = tag.map(str::to_string).unwrap_or_else(|| expected.clone());
    let digest = client
        .push_manifest(repository, &reference, manifest::OCI_MANIFEST, body)
        .await
        .expect("push manifest");
    assert_eq!(digest, expected);
    (digest, size)
}

#[tokio::test]
async fn manifest_digest_and_platforms() {
    let registry = TestRegistry::start();
    let client = client(&registry);

    let (digest, _) = push_image(&client, "app", "linux", "arm64", Some("v8"), Some("v1")).await;
    assert_eq!(
        client
            .manifest_digest("app", "v1")
            .await
            .expect("resolve tag"),
        digest
    );
    assert_eq!(
        client
            .manifest_digest("app", &digest)
            .await
            .expect("resolve digest"),
        digest
    );
    let platforms = client
        .image_platforms("app", "v1")
        .await
        .expect("platforms");
    assert_eq!(platforms.len(), 1);
    assert_eq!(platforms[0].platform(), "linux/arm64/v8");
    assert_eq!(platforms[0].manifest_digest, digest);

    // An index whose platform disagrees with its image's config is reported.
    let (amd64, size) = push_image(&client, "app", "linux", "amd64", None, None).await;
    let index = Manifest {
        schema_version: 2,
        media_type: Some(manifest::OCI_INDEX.to_string()),
        config: None,
        layers: None,
        manifests: Some(vec![Descriptor {
            media_type: manifest::OCI_MANIFEST.into(),
            digest: amd64.clone(),
            size,
            platform: Some(Platform {
                architecture: "arm".into(),
                os: "linux".into(),
                variant: Some("v7".into()),
            }),
            annotations: None,
        }]),
    };
    let body = serde_json::to_vec(&index).expect("json");
    let index_digest = client
        .push_manifest("app", "lying", manifest::OCI_INDEX, body)
        .await
        .expect("push index");
    assert_eq!(
        client
            .manifest_digest("app", "lying")
            .await
            .expect("resolve"),
        index_digest
    );
    let err = client
        .image_platforms("app", "lying")
        .await
        .expect_err("mismatch");
    assert!(matches!(err, Error::PlatformMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("linux/arm/v7") && err.to_string().contains("linux/amd64"),
        "{err}"
    );
}

//! Builds multi-platform base images from root filesystems and pushes them (the `kiln-seed` binary).
//!
//! Docker Hub is out of reach on kiln's machines, so base images are assembled locally: each
//! platform's root filesystem folder becomes one gzip'd layer, an image config with the right
//! `os`/`architecture`/`variant` and `rootfs.diff_ids`, and an image manifest; an index with the
//! platform fields ties them together under one tag. Everything is deterministic (fixed
//! timestamps and owners), so seeding the same folders again yields the same digests.

use std::fmt;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::json;

use crate::context::{append_tree, HashingWriter};
use crate::manifest::{self, Descriptor, Manifest, Platform};
use crate::{Error, Registry};

/// Creation time written into configs: the same instant as the layers' file times.
const CREATED: &str = "2000-01-01T00:00:00Z";

/// Which family of media types the manifests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MediaTypes {
    /// OCI image-spec media types (the default).
    #[default]
    Oci,
    /// Docker distribution schema 2 media types, for engines that only select platforms in Docker manifest lists.
    Docker,
}

impl MediaTypes {
    fn index(self) -> &'static str {
        match self {
            MediaTypes::Oci => manifest::OCI_INDEX,
            MediaTypes::Docker => manifest::DOCKER_MANIFEST_LIST,
        }
    }
    fn manifest(self) -> &'static str {
        match self {
            MediaTypes::Oci => manifest::OCI_MANIFEST,
            MediaTypes::Docker => manifest::DOCKER_MANIFEST,
        }
    }
    fn config(self) -> &'static str {
        match self {
            MediaTypes::Oci => manifest::OCI_CONFIG,
            MediaTypes::Docker => "application/vnd.docker.container.image.v1+json",
        }
    }
    fn layer(self) -> &'static str {
        match self {
            MediaTypes::Oci => manifest::OCI_LAYER_GZIP,
            MediaTypes::Docker => "application/vnd.docker.image.rootfs.diff.tar.gzip",
        }
    }
}

/// One platform to seed: `os/architecture[/variant]=DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedPlatform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    /// The root filesystem folder that becomes the image's only layer.
    pub rootfs: PathBuf,
}

impl SeedPlatform {
    /// `os/architecture[/variant]`.
    pub fn platform(&self) -> String {
        manifest::format_platform(&self.os, &self.architecture, self.variant.as_deref())
    }
}

impl FromStr for SeedPlatform {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let usage = || {
            format!("invalid platform {text:?}: expected OS/ARCH[/VARIANT]=DIR, e.g. linux/arm/v7=./rootfs-armhf")
        };
        let (platform, dir) = text.split_once('=').ok_or_else(usage)?;
        let parts: Vec<&str> = platform.split('/').collect();
        let valid = |part: &&str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(valid) || dir.is_empty() {
            return Err(usage());
        }
        Ok(SeedPlatform {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
            rootfs: PathBuf::from(dir),
        })
    }
}

/// What [`seed_image`] pushed.
#[derive(Debug, Clone)]
pub struct SeededImage {
    /// Digest of the index the tag now points to.
    pub index_digest: String,
    /// `(platform, manifest digest)` per platform, in the order given.
    pub manifests: Vec<(String, String)>,
}

impl fmt::Display for SeededImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.index_digest)
    }
}

/// Builds one image per platform from its root filesystem, pushes them and an index to
/// `repository:tag`, and returns the digests.
pub async fn seed_image(
    registry: &Registry,
    repository: &str,
    tag: &str,
    platforms: &[SeedPlatform],
    media_types: MediaTypes,
) -> Result<SeededImage, Error> {
    crate::validate_repository(repository)?;
    if platforms.is_empty() {
        return Err(Error::InvalidManifest {
            what: "seed request".to_string(),
            detail: "give at least one platform".to_string(),
        });
    }
    let mut entries = Vec::with_capacity(platforms.len());
    let mut pushed = Vec::with_capacity(platforms.len());
    for platform in platforms {
        let rootfs = platform.rootfs.clone();
        let layer = tokio::task::spawn_blocking(move || build_layer(&rootfs))
            .await
            .map_err(|err| Error::io("pack", &platform.rootfs, std::io::Error::other(err)))??;
        registry
            .push_blob_file(repository, layer.file.path(), &layer.digest)
            .await?;

        let config = json!({
            "created": CREATED,
            "architecture": platform.architecture,
            "os": platform.os,
            "variant": platform.variant,
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["sh"],
            },
            "rootfs": { "type": "layers", "diff_ids": [layer.diff_id] },
            "history": [{ "created": CREATED, "created_by": format!("kiln-seed {}", platform.platform()) }],
        });
        let mut config = config;
        if platform.variant.is_none() {
            if let Some(object) = config.as_object_mut() {
                object.remove("variant");
            }
        }
        let config_bytes = to_json(&config)?;
        let config_size = config_bytes.len() as u64;
        let config_digest = registry.push_blob_bytes(repository, config_bytes).await?;

        let image_manifest = Manifest {
            schema_version: 2,
            media_type: Some(media_types.manifest().to_string()),
            config: Some(descriptor(
                media_types.config(),
                config_digest,
                config_size,
                None,
            )),
            layers: Some(vec![descriptor(
                media_types.layer(),
                layer.digest.clone(),
                layer.size,
                None,
            )]),
            manifests: None,
        };
        let manifest_bytes = to_json(&image_manifest)?;
        let manifest_size = manifest_bytes.len() as u64;
        let manifest_digest = crate::sha256_digest(&manifest_bytes);
        registry
            .push_manifest(
                repository,
                &manifest_digest,
                media_types.manifest(),
                manifest_bytes,
            )
            .await?;

        let platform_field = Platform {
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            variant: platform.variant.clone(),
        };
        entries.push(descriptor(
            media_types.manifest(),
            manifest_digest.clone(),
            manifest_size,
            Some(platform_field),
        ));
        pushed.push((platform.platform(), manifest_digest));
    }

    let index = Manifest {
        schema_version: 2,
        media_type: Some(media_types.index().to_string()),
        config: None,
        layers: None,
        manifests: Some(entries),
    };
    let index_digest = registry
        .push_manifest(repository, tag, media_types.index(), to_json(&index)?)
        .await?;
    Ok(SeededImage {
        index_digest,
        manifests: pushed,
    })
}

fn descriptor(
    media_type: &str,
    digest: String,
    size: u64,
    platform: Option<Platform>,
) -> Descriptor {
    Descriptor {
        media_type: media_type.to_string(),
        digest,
        size,
        platform,
        annotations: None,
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|err| Error::InvalidManifest {
        what: "generated JSON".to_string(),
        detail: err.to_string(),
    })
}

/// A gzip'd layer tarball of a root filesystem.
struct Layer {
    file: tempfile::NamedTempFile,
    /// sha256 of the compressed bytes (what the registry stores).
    digest: String,
    /// sha256 of the uncompressed tar (what the config's `rootfs.diff_ids` lists).
    diff_id: String,
    size: u64,
}

fn build_layer(rootfs: &Path) -> Result<Layer, Error> {
    if !rootfs.is_dir() {
        return Err(Error::io(
            "use as a root filesystem",
            rootfs,
            std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    let file = tempfile::Builder::new()
        .prefix("kiln-layer-")
        .suffix(".tar.gz")
        .tempfile()
        .map_err(|err| Error::io("create a temporary file in", std::env::temp_dir(), err))?;
    let path = file.path().to_path_buf();
    let write_err = |err: std::io::Error| Error::io("write", &path, err);
    let out = file.as_file().try_clone().map_err(write_err)?;
    let compressed = HashingWriter::new(BufWriter::with_capacity(256 * 1024, out));
    let gzip = flate2::GzBuilder::new().write(compressed, flate2::Compression::default());
    let uncompressed = HashingWriter::new(gzip);
    let mut builder = tar::Builder::new(uncompressed);
    append_tree(&mut builder, rootfs)?;
    let uncompressed = builder.into_inner().map_err(write_err)?;
    let (gzip, diff_hasher, _) = uncompressed.finish();
    let compressed = gzip.finish().map_err(write_err)?;
    let (mut buffered, hasher, size) = compressed.finish();
    buffered.flush().map_err(write_err)?;
    use sha2::Digest as _;
    Ok(Layer {
        file,
        digest: format!("sha256:{}", hex::encode(hasher.finalize())),
        diff_id: format!("sha256:{}", hex::encode(diff_hasher.finalize())),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_platform_arguments() {
        let p: SeedPlatform = "linux/arm/v7=/tmp/rootfs".parse().expect("valid");
        assert_eq!(
            (p.os.as_str(), p.architecture.as_str(), p.variant.as_deref()),
            ("linux", "arm", Some("v7"))
        );
        assert_eq!(p.rootfs, PathBuf::from("/tmp/rootfs"));
        assert_eq!(p.platform(), "linux/arm/v7");
        let p: SeedPlatform = "linux/amd64=dir".parse().expect("valid");
        assert_eq!(p.variant, None);
        for bad in [
            "linux/amd64",
            "linux=dir",
            "linux/amd64/v1/x=dir",
            "linux//v7=dir",
            "Linux/amd64=dir",
            "linux/amd64=",
        ] {
            assert!(
                bad.parse::<SeedPlatform>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn layers_are_deterministic() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("bin")).expect("mkdir");
        std::fs::write(dir.path().join("bin/busybox"), b"\x7fELF fake").expect("write");
        std::os::unix::fs::symlink("busybox", dir.path().join("bin/sh")).expect("symlink");
        let first = build_layer(dir.path()).expect("layer");
        let second = build_layer(dir.path()).expect("layer");
        assert_eq!(first.digest, second.digest);
        assert_eq!(first.diff_id, second.diff_id);
        assert_ne!(first.digest, first.diff_id);
        let bytes = std::fs::read(first.file.path()).expect("read");
        assert_eq!(crate::sha256_digest(&bytes), first.digest);
        assert_eq!(bytes.len() as u64, first.size);
        let mut tar_bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&bytes[..]),
            &mut tar_bytes,
        )
        .expect("gunzip");
        assert_eq!(crate::sha256_digest(&tar_bytes), first.diff_id);
    }
}

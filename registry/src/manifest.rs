//! The few manifest, index and image-config fields kiln reads or writes, for both OCI and Docker media types.
//!
//! These are deliberately small serde types rather than a full image-spec model: kiln only needs
//! descriptors, platforms and the config's `os`/`architecture`/`variant`, and unknown fields are kept
//! out of the way so manifests written by other tools still parse.

use std::fmt;

use serde::{Deserialize, Serialize};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (multi-platform).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip'd layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Docker image manifest (schema 2).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-platform).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Media types a manifest request accepts.
pub(crate) const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
];

/// The platform of one image: what `docker pull --platform` selects on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImagePlatform {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// CPU architecture in Go's spelling, e.g. `amd64`, `arm64`, `arm`, `386`.
    pub architecture: String,
    /// CPU variant, e.g. `v7` for `linux/arm/v7`.
    pub variant: Option<String>,
    /// Digest of the platform's image manifest.
    pub manifest_digest: String,
}

impl ImagePlatform {
    /// `os/architecture[/variant]`, the form `--platform` takes.
    pub fn platform(&self) -> String {
        format_platform(&self.os, &self.architecture, self.variant.as_deref())
    }
}

impl fmt::Display for ImagePlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.platform())
    }
}

pub(crate) fn format_platform(os: &str, architecture: &str, variant: Option<&str>) -> String {
    match variant {
        Some(variant) if !variant.is_empty() => format!("{os}/{architecture}/{variant}"),
        _ => format!("{os}/{architecture}"),
    }
}

/// A content descriptor: what a manifest or index points at.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The platform object of an index entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest or an index, told apart by whether `manifests` or `config` is present.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<Descriptor>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifests: Option<Vec<Descriptor>>,
}

/// The fields of an image config that name its platform.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ConfigPlatform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// A manifest as the registry served it.
#[derive(Debug, Clone)]
pub struct RawManifest {
    /// Digest of `bytes` (what the registry addresses the manifest by).
    pub digest: String,
    /// The exact bytes; their sha256 is `digest`.
    pub bytes: Vec<u8>,
}

impl RawManifest {
    /// Parses the manifest or index.
    pub fn parse(&self) -> Result<Manifest, crate::Error> {
        serde_json::from_slice(&self.bytes).map_err(|err| crate::Error::InvalidManifest {
            what: format!("manifest {}", self.digest),
            detail: err.to_string(),
        })
    }
}

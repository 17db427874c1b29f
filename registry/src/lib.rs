//! kiln's registry module: the only place that speaks the registry HTTP API (OCI Distribution).
//!
//! - [`Registry`] uploads and downloads blobs (build contexts in [`CONTEXTS_REPOSITORY`], step logs in
//!   [`LOGS_REPOSITORY`]), resolves tags to digests, and reads image platforms, also through
//!   multi-platform indexes.
//! - [`context`] packs a build context directory into a deterministic tarball (honouring
//!   `.dockerignore` as Docker does) and unpacks one safely.
//! - [`seed`] assembles multi-platform base images from root filesystems (used by the `kiln-seed` binary).

mod client;
pub mod context;
mod error;
pub mod manifest;
mod reference;
pub mod seed;
mod tls;

pub use client::{sha256_digest, Credential, Registry, MAX_IN_MEMORY_BLOB};
pub use error::Error;
pub use manifest::ImagePlatform;
pub use reference::{
    parse_image_reference, validate_digest, validate_repository, ImageReference, DEFAULT_HOST,
};

/// Repository that holds build contexts as blobs.
pub const CONTEXTS_REPOSITORY: &str = "kiln/contexts";

/// Repository that holds step logs as blobs.
pub const LOGS_REPOSITORY: &str = "kiln/logs";

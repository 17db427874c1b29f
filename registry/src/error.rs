//! The crate's error type: every message says what went wrong and, where it helps, what to do about it.

use std::path::PathBuf;

/// Everything that can go wrong talking to a registry or packing a build context.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The registry host given to [`crate::Registry::new`] is not a host name or address with an optional port.
    #[error("invalid registry host {host:?}: {reason}")]
    InvalidHost { host: String, reason: String },

    /// An image reference (`host/repository:tag` or `@sha256:…`) could not be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    /// A repository name does not follow the registry's naming rules.
    #[error(
        "invalid repository name {repository:?}: use lowercase letters, digits and separators \
         ('.', '_', '__', '-') in '/'-separated components"
    )]
    InvalidRepository { repository: String },

    /// A digest is not `sha256:` followed by 64 lowercase hexadecimal characters.
    #[error(
        "invalid digest {digest:?}: expected \"sha256:\" followed by 64 lowercase hex characters"
    )]
    InvalidDigest { digest: String },

    /// The registry could not be reached at all.
    #[error("registry {host} is not reachable: {detail} (is the registry running?)")]
    Unreachable { host: String, detail: String },

    /// The registry wants credentials this client does not have, or refused the ones it has.
    #[error(
        "registry {host} refused access to repository {repository}: {detail} \
         (configure credentials for this registry, or use a registry without authentication)"
    )]
    Unauthorized {
        host: String,
        repository: String,
        detail: String,
    },

    /// The blob does not exist in that repository.
    #[error("blob {digest} not found in {host}/{repository}")]
    BlobNotFound {
        host: String,
        repository: String,
        digest: String,
    },

    /// The tag or digest does not name a manifest in that repository.
    #[error("manifest {reference} not found in {host}/{repository} (was the image pushed?)")]
    ManifestNotFound {
        host: String,
        repository: String,
        reference: String,
    },

    /// Downloaded or uploaded content does not hash to the digest it should have.
    #[error("digest mismatch for {what}: expected {expected}, got {actual} (the content was corrupted in transit or in the registry's storage)")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    /// A blob or manifest is larger than the caller allowed.
    #[error("{what} is larger than the limit of {max_bytes} bytes")]
    TooLarge { what: String, max_bytes: u64 },

    /// The registry answered with an error that has no more specific variant.
    #[error("registry {host} failed to {operation}: {detail}")]
    Registry {
        host: String,
        operation: String,
        detail: String,
    },

    /// A manifest, index or image config is not what the registry protocol says it should be.
    #[error("invalid {what}: {detail}")]
    InvalidManifest { what: String, detail: String },

    /// An index entry's platform disagrees with the config of the image it points to.
    #[error(
        "platform mismatch in {image}: the index says {index_platform} but the config of {manifest_digest} \
         says {config_platform} (rebuild and push the index)"
    )]
    PlatformMismatch {
        image: String,
        manifest_digest: String,
        index_platform: String,
        config_platform: String,
    },

    /// A local file could not be read or written.
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A `.dockerignore` line is not a valid pattern.
    #[error("invalid pattern {pattern:?} in .dockerignore: {reason}")]
    DockerIgnore { pattern: String, reason: String },

    /// The Dockerfile is not inside the build context directory.
    #[error("the Dockerfile {dockerfile} is not inside the build context {context} (move it into the context)")]
    DockerfileOutsideContext {
        dockerfile: PathBuf,
        context: PathBuf,
    },

    /// A build context archive has an entry that would land outside the destination.
    #[error("refusing to unpack {entry:?} from {archive}: {reason}")]
    UnsafeEntry {
        archive: PathBuf,
        entry: String,
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

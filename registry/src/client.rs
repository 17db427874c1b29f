//! [`Registry`]: the registry HTTP client (OCI Distribution API) that the CLI, agent, coordinator and tests share.
//!
//! It wraps the maintained `oci-client` crate, which covers everything kiln needs: blob existence
//! checks, streaming blob upload (monolithic `PUT` with a known length), streaming blob download
//! into an `AsyncWrite` with sha256 verification, and manifest/index fetch and push with digests.
//! It is built with `rustls-tls-no-provider` so no aws-lc is compiled; the `ring` provider is
//! installed as rustls' process default before the first client is made. Hosts on the loopback
//! interface are spoken to over plain HTTP, every other host over HTTPS.
//!
//! Authentication: requests are anonymous by default; [`Registry::with_credential`] takes basic or
//! bearer credentials, which `oci-client` then uses (including the token handshake).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use futures::TryStreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};

use crate::manifest::{self, ConfigPlatform, ImagePlatform, RawManifest};
use crate::reference::{
    is_loopback_host, is_valid_tag, validate_digest, validate_host, validate_repository,
};
use crate::Error;

/// The largest blob the in-memory helpers ([`Registry::push_blob_bytes`]) accept.
pub const MAX_IN_MEMORY_BLOB: u64 = 64 * 1024 * 1024;

/// The largest manifest or image config that is read into memory.
const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// Size of the reads that feed a streaming upload.
const UPLOAD_READ_SIZE: usize = 256 * 1024;

/// Credentials for a registry.
#[derive(Clone, Default)]
pub enum Credential {
    /// No credentials (the default).
    #[default]
    Anonymous,
    /// HTTP basic authentication (also used for the token handshake when the registry asks for one).
    Basic { username: String, password: String },
    /// A bearer token, sent as is.
    Bearer { token: String },
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secret values never appear in logs.
        match self {
            Credential::Anonymous => f.write_str("Anonymous"),
            Credential::Basic { username, .. } => write!(
                f,
                "Basic {{ username: {username:?}, password: <redacted> }}"
            ),
            Credential::Bearer { .. } => f.write_str("Bearer { token: <redacted> }"),
        }
    }
}

/// A client for one registry host. Cheap to clone; clones share connections and tokens.
#[derive(Clone)]
pub struct Registry {
    host: String,
    client: Client,
    credential: Credential,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("host", &self.host)
            .field("credential", &self.credential)
            .finish()
    }
}

impl Registry {
    /// Makes a client for `host` (`127.0.0.1:5000`, `localhost:5000`, `registry.example.com`), without contacting it.
    pub fn new(host: &str) -> Result<Self, Error> {
        validate_host(host)?;
        crate::tls::install_ring_provider();
        let protocol = if is_loopback_host(host) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            use_monolithic_push: true,
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(120)),
            user_agent: concat!("kiln-registry/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let client = Client::try_from(config).map_err(|err| Error::Registry {
            host: host.to_string(),
            operation: "set up an HTTP client".to_string(),
            detail: error_chain(&err),
        })?;
        Ok(Registry {
            host: host.to_string(),
            client,
            credential: Credential::Anonymous,
        })
    }

    /// Uses `credential` for every later request.
    pub fn with_credential(mut self, credential: Credential) -> Self {
        self.credential = credential;
        self
    }

    /// The registry host this client talks to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether `repository` holds the blob `digest`.
    pub async fn blob_exists(&self, repository: &str, digest: &str) -> Result<bool, Error> {
        let image = self.blob_reference(repository, digest).await?;
        self.client
            .blob_exists(&image, digest)
            .await
            .map_err(|err| self.map_error(err, repository, Op::Blob(digest), "check for a blob"))
    }

    /// Uploads the file at `path` as blob `digest`, streaming it; does nothing if the registry already has it.
    ///
    /// The registry checks the digest of what it receives, so a file whose content does not match
    /// `digest` is refused with [`Error::DigestMismatch`].
    pub async fn push_blob_file(
        &self,
        repository: &str,
        path: &Path,
        digest: &str,
    ) -> Result<(), Error> {
        if self.blob_exists(repository, digest).await? {
            return Ok(());
        }
        let image = self.blob_reference(repository, digest).await?;
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|err| Error::io("open", path, err))?;
        let size = file
            .metadata()
            .await
            .map_err(|err| Error::io("read metadata of", path, err))?
            .len();
        let stream = tokio_util::io::ReaderStream::with_capacity(file, UPLOAD_READ_SIZE)
            .map_err(OciDistributionError::from);
        self.client
            .push_blob_stream(&image, stream, digest, Some(size))
            .await
            .map_err(|err| {
                self.map_upload_error(err, repository, digest, &path.display().to_string())
            })?;
        Ok(())
    }

    /// Uploads a small in-memory blob (at most [`MAX_IN_MEMORY_BLOB`] bytes) and returns its digest.
    pub async fn push_blob_bytes(&self, repository: &str, bytes: Vec<u8>) -> Result<String, Error> {
        if bytes.len() as u64 > MAX_IN_MEMORY_BLOB {
            return Err(Error::TooLarge {
                what: format!(
                    "an in-memory blob of {} bytes (use push_blob_file)",
                    bytes.len()
                ),
                max_bytes: MAX_IN_MEMORY_BLOB,
            });
        }
        let digest = sha256_digest(&bytes);
        let image = self.blob_reference(repository, &digest).await?;
        self.client
            .push_blob(&image, bytes, &digest)
            .await
            .map_err(|err| self.map_upload_error(err, repository, &digest, "in-memory blob"))?;
        Ok(digest)
    }

    /// Downloads blob `digest` to `dest`, verifying its sha256, and returns its size.
    ///
    /// The blob is streamed into a temporary file beside `dest` that replaces `dest` only once the
    /// digest has been verified; on any error `dest` is left as it was.
    pub async fn pull_blob_to_file(
        &self,
        repository: &str,
        digest: &str,
        dest: &Path,
    ) -> Result<u64, Error> {
        let image = self.blob_reference(repository, digest).await?;
        let dir = match dest.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let temp = tempfile::NamedTempFile::new_in(dir)
            .map_err(|err| Error::io("create a temporary file in", dir, err))?;
        let std_file = temp
            .as_file()
            .try_clone()
            .map_err(|err| Error::io("open", temp.path(), err))?;
        let file = tokio::fs::File::from_std(std_file);
        let writer = tokio::io::BufWriter::with_capacity(UPLOAD_READ_SIZE, file);
        self.client
            .pull_blob(&image, digest, writer)
            .await
            .map_err(|err| self.map_error(err, repository, Op::Blob(digest), "download a blob"))?;
        let file = temp.as_file();
        file.sync_all()
            .map_err(|err| Error::io("flush", temp.path(), err))?;
        let size = file
            .metadata()
            .map_err(|err| Error::io("read metadata of", temp.path(), err))?
            .len();
        temp.persist(dest)
            .map_err(|err| Error::io("move the downloaded blob to", dest, err.error))?;
        Ok(size)
    }

    /// Downloads a small blob into memory, refusing blobs larger than `max_bytes`, and verifies its sha256.
    pub async fn pull_blob_bytes(
        &self,
        repository: &str,
        digest: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, Error> {
        let image = self.blob_reference(repository, digest).await?;
        let op = Op::Blob(digest);
        let mut sized = self
            .client
            .pull_blob_stream(&image, digest)
            .await
            .map_err(|err| self.map_error(err, repository, op, "download a blob"))?;
        let too_large = || Error::TooLarge {
            what: format!("blob {digest} in {}/{repository}", self.host),
            max_bytes,
        };
        if sized.content_length.is_some_and(|len| len > max_bytes) {
            return Err(too_large());
        }
        let capacity = sized.content_length.unwrap_or(0).min(max_bytes);
        let mut bytes = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
        while let Some(chunk) = sized
            .stream
            .try_next()
            .await
            .map_err(|err| self.map_stream_error(err, repository, digest))?
        {
            if (bytes.len() + chunk.len()) as u64 > max_bytes {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        let actual = sha256_digest(&bytes);
        if actual != digest {
            return Err(Error::DigestMismatch {
                what: format!("blob {}/{repository}@{digest}", self.host),
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Downloads blob `digest` as a stream of pieces of at most `max_piece` bytes (at least 1),
    /// holding no more than one piece of the registry's response at a time, and verifies its
    /// sha256 as it goes: the stream ends with an [`Error::DigestMismatch`] item (after the
    /// pieces read) when the blob does not match, so callers must not trust the pieces before
    /// the stream has ended without an error.
    pub async fn pull_blob_stream(
        &self,
        repository: &str,
        digest: &str,
        max_piece: usize,
    ) -> Result<impl futures::Stream<Item = Result<bytes::Bytes, Error>> + Send + 'static, Error>
    {
        let image = self.blob_reference(repository, digest).await?;
        let sized = self
            .client
            .pull_blob_stream(&image, digest)
            .await
            .map_err(|err| self.map_error(err, repository, Op::Blob(digest), "download a blob"))?;
        let state = BlobPieces {
            registry: self.clone(),
            repository: repository.to_string(),
            digest: digest.to_string(),
            stream: sized.stream,
            pending: bytes::Bytes::new(),
            hasher: Some(Sha256::new()),
            max_piece: max_piece.max(1),
        };
        Ok(futures::stream::try_unfold(state, |mut state| async move {
            Ok(state.next_piece().await?.map(|piece| (piece, state)))
        }))
    }

    /// The digest a tag (or digest) resolves to: the index digest for a multi-platform image, else the manifest's.
    pub async fn manifest_digest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<String, Error> {
        let image = self.manifest_reference(repository, reference).await?;
        let digest = self
            .client
            .fetch_manifest_digest(&image, &self.auth())
            .await
            .map_err(|err| {
                self.map_error(
                    err,
                    repository,
                    Op::Manifest(reference),
                    "resolve a manifest digest",
                )
            })?;
        validate_digest(&digest).map_err(|_| Error::InvalidManifest {
            what: format!("answer for {}/{repository}:{reference}", self.host),
            detail: format!(
                "the registry returned the digest {digest:?}, which is not a sha256 digest"
            ),
        })?;
        Ok(digest)
    }

    /// Fetches a manifest or index by tag or digest, verifying its digest.
    pub async fn pull_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<RawManifest, Error> {
        let image = self.manifest_reference(repository, reference).await?;
        let (bytes, digest) = self
            .client
            .pull_manifest_raw(&image, &self.auth(), manifest::ACCEPTED_MANIFESTS)
            .await
            .map_err(|err| {
                self.map_error(err, repository, Op::Manifest(reference), "fetch a manifest")
            })?;
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(Error::TooLarge {
                what: format!("manifest {}/{repository}:{reference}", self.host),
                max_bytes: MAX_MANIFEST_BYTES,
            });
        }
        let actual = sha256_digest(&bytes);
        if digest != actual || (reference.starts_with("sha256:") && reference != actual) {
            let expected = if reference.starts_with("sha256:") {
                reference.to_string()
            } else {
                digest
            };
            return Err(Error::DigestMismatch {
                what: format!("manifest {}/{repository}:{reference}", self.host),
                expected,
                actual,
            });
        }
        Ok(RawManifest {
            digest: actual,
            bytes: bytes.to_vec(),
        })
    }

    /// Uploads a manifest or index under `reference` (a tag, or its own digest) and returns its digest.
    ///
    /// Every blob and child manifest it references must already be in `repository`.
    pub async fn push_manifest(
        &self,
        repository: &str,
        reference: &str,
        media_type: &str,
        body: Vec<u8>,
    ) -> Result<String, Error> {
        let digest = sha256_digest(&body);
        if reference.starts_with("sha256:") && reference != digest {
            return Err(Error::DigestMismatch {
                what: format!("manifest pushed by digest to {}/{repository}", self.host),
                expected: reference.to_string(),
                actual: digest,
            });
        }
        let image = self.manifest_reference(repository, reference).await?;
        let content_type =
            http::HeaderValue::from_str(media_type).map_err(|_| Error::InvalidManifest {
                what: "media type".to_string(),
                detail: format!("{media_type:?} is not a valid Content-Type"),
            })?;
        self.client
            .push_manifest_raw(&image, body, content_type)
            .await
            .map_err(|err| {
                self.map_error(err, repository, Op::Manifest(reference), "push a manifest")
            })?;
        Ok(digest)
    }

    /// The platforms of an image: for a single manifest the `os`/`architecture`/`variant` of its
    /// config; for an index each entry's platform, checked against the config of the image it points to.
    ///
    /// Index entries with platform `unknown/unknown` (build attestations) are left out.
    pub async fn image_platforms(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Vec<ImagePlatform>, Error> {
        let raw = self.pull_manifest(repository, reference).await?;
        let parsed = raw.parse()?;
        let Some(entries) = parsed.manifests else {
            let config = self
                .image_config_platform(repository, &raw.digest, &parsed)
                .await?;
            return Ok(vec![ImagePlatform {
                os: config.os,
                architecture: config.architecture,
                variant: non_empty(config.variant),
                manifest_digest: raw.digest,
            }]);
        };
        let image_name = format!("{}/{repository}@{}", self.host, raw.digest);
        let mut platforms = Vec::with_capacity(entries.len());
        for entry in entries {
            let Some(platform) = entry.platform else {
                return Err(Error::InvalidManifest {
                    what: format!("index {image_name}"),
                    detail: format!("entry {} has no platform", entry.digest),
                });
            };
            if platform.os == "unknown" && platform.architecture == "unknown" {
                continue;
            }
            let child_raw = self.pull_manifest(repository, &entry.digest).await?;
            let child = child_raw.parse()?;
            if child.manifests.is_some() {
                return Err(Error::InvalidManifest {
                    what: format!("index {image_name}"),
                    detail: format!("entry {} is itself an index", entry.digest),
                });
            }
            let config = self
                .image_config_platform(repository, &entry.digest, &child)
                .await?;
            let index_variant = non_empty(platform.variant);
            let config_variant = non_empty(config.variant);
            // An index may name a variant its image's config leaves out (Docker does so for arm64/v8).
            let variants_agree = config_variant.is_none() || config_variant == index_variant;
            if platform.os != config.os
                || platform.architecture != config.architecture
                || !variants_agree
            {
                return Err(Error::PlatformMismatch {
                    image: image_name,
                    manifest_digest: entry.digest,
                    index_platform: manifest::format_platform(
                        &platform.os,
                        &platform.architecture,
                        index_variant.as_deref(),
                    ),
                    config_platform: manifest::format_platform(
                        &config.os,
                        &config.architecture,
                        config_variant.as_deref(),
                    ),
                });
            }
            platforms.push(ImagePlatform {
                os: platform.os,
                architecture: platform.architecture,
                variant: index_variant,
                manifest_digest: entry.digest,
            });
        }
        Ok(platforms)
    }

    async fn image_config_platform(
        &self,
        repository: &str,
        manifest_digest: &str,
        manifest: &manifest::Manifest,
    ) -> Result<ConfigPlatform, Error> {
        let Some(config) = &manifest.config else {
            return Err(Error::InvalidManifest {
                what: format!("manifest {}/{repository}@{manifest_digest}", self.host),
                detail: "it has no config descriptor".to_string(),
            });
        };
        let bytes = self
            .pull_blob_bytes(repository, &config.digest, MAX_MANIFEST_BYTES)
            .await?;
        serde_json::from_slice(&bytes).map_err(|err| Error::InvalidManifest {
            what: format!("image config {}/{repository}@{}", self.host, config.digest),
            detail: err.to_string(),
        })
    }

    fn auth(&self) -> RegistryAuth {
        match &self.credential {
            Credential::Anonymous => RegistryAuth::Anonymous,
            Credential::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Credential::Bearer { token } => RegistryAuth::Bearer(token.clone()),
        }
    }

    async fn blob_reference(&self, repository: &str, digest: &str) -> Result<Reference, Error> {
        validate_repository(repository)?;
        validate_digest(digest)?;
        self.client
            .store_auth_if_needed(&self.host, &self.auth())
            .await;
        Ok(Reference::with_digest(
            self.host.clone(),
            repository.to_string(),
            digest.to_string(),
        ))
    }

    async fn manifest_reference(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Reference, Error> {
        validate_repository(repository)?;
        self.client
            .store_auth_if_needed(&self.host, &self.auth())
            .await;
        if reference.starts_with("sha256:") {
            validate_digest(reference)?;
            Ok(Reference::with_digest(
                self.host.clone(),
                repository.to_string(),
                reference.to_string(),
            ))
        } else if is_valid_tag(reference) {
            Ok(Reference::with_tag(
                self.host.clone(),
                repository.to_string(),
                reference.to_string(),
            ))
        } else {
            Err(Error::InvalidReference {
                reference: reference.to_string(),
                reason: "expected a tag (letters, digits, '_', '.', '-'; at most 128) or a sha256 digest".to_string(),
            })
        }
    }

    fn map_upload_error(
        &self,
        err: OciDistributionError,
        repository: &str,
        digest: &str,
        source: &str,
    ) -> Error {
        if error_codes(&err)
            .iter()
            .any(|code| code == "DIGEST_INVALID")
        {
            return Error::DigestMismatch {
                what: format!("upload of {source} to {}/{repository}", self.host),
                expected: digest.to_string(),
                actual: "different content (the registry refused it)".to_string(),
            };
        }
        self.map_error(err, repository, Op::Blob(digest), "upload a blob")
    }

    fn map_stream_error(&self, err: std::io::Error, repository: &str, digest: &str) -> Error {
        // The verifying stream reports a digest mismatch as an I/O error wrapping the digest error.
        if let Some(DigestError::VerificationError { expected, actual }) = err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<DigestError>())
        {
            return Error::DigestMismatch {
                what: format!("blob {}/{repository}@{digest}", self.host),
                expected: expected.clone(),
                actual: actual.clone(),
            };
        }
        let detail = error_chain(&err);
        self.unreachable_or(&err, "download a blob", detail)
    }

    fn map_error(
        &self,
        err: OciDistributionError,
        repository: &str,
        op: Op<'_>,
        operation: &str,
    ) -> Error {
        let host = self.host.clone();
        let repository_name = repository.to_string();
        let not_found = || match op {
            Op::Blob(digest) => Error::BlobNotFound {
                host: host.clone(),
                repository: repository_name.clone(),
                digest: digest.to_string(),
            },
            Op::Manifest(reference) => Error::ManifestNotFound {
                host: host.clone(),
                repository: repository_name.clone(),
                reference: reference.to_string(),
            },
        };
        let unauthorized = |detail: String| Error::Unauthorized {
            host: host.clone(),
            repository: repository_name.clone(),
            detail,
        };
        let codes = error_codes(&err);
        let has = |wanted: &[&str]| codes.iter().any(|code| wanted.contains(&code.as_str()));
        if has(&[
            "BLOB_UNKNOWN",
            "MANIFEST_UNKNOWN",
            "NAME_UNKNOWN",
            "NOT_FOUND",
        ]) {
            return not_found();
        }
        if has(&["UNAUTHORIZED", "DENIED"]) {
            return unauthorized(error_chain(&err));
        }
        match &err {
            OciDistributionError::DigestError(DigestError::VerificationError {
                expected,
                actual,
            }) => {
                let what = match op {
                    Op::Blob(digest) => format!("blob {}/{repository}@{digest}", self.host),
                    Op::Manifest(reference) => {
                        format!("manifest {}/{repository}:{reference}", self.host)
                    }
                };
                return Error::DigestMismatch {
                    what,
                    expected: expected.clone(),
                    actual: actual.clone(),
                };
            }
            OciDistributionError::RequestError(request) => {
                return self.unreachable_or(request, operation, error_chain(&err));
            }
            OciDistributionError::ImageManifestNotFoundError(_) => return not_found(),
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => {
                return unauthorized(error_chain(&err))
            }
            OciDistributionError::ServerError { code: 404, .. } => return not_found(),
            OciDistributionError::ServerError {
                code: 401 | 403, ..
            } => return unauthorized(error_chain(&err)),
            _ => {}
        }
        Error::Registry {
            host: self.host.clone(),
            operation: operation.to_string(),
            detail: error_chain(&err),
        }
    }

    /// Turns a transport error into [`Error::Unreachable`] when no connection could be made.
    fn unreachable_or(
        &self,
        err: &(dyn std::error::Error + 'static),
        operation: &str,
        detail: String,
    ) -> Error {
        let unreachable = |reason: &str| Error::Unreachable {
            host: self.host.clone(),
            detail: reason.to_string(),
        };
        let chain = || std::iter::successors(Some(err), |current| current.source());
        for current in chain() {
            if let Some(io) = current.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind::*;
                match io.kind() {
                    ConnectionRefused => return unreachable("connection refused"),
                    ConnectionReset => return unreachable("connection reset"),
                    TimedOut => return unreachable("connection timed out"),
                    HostUnreachable | NetworkUnreachable => return unreachable("no route to host"),
                    AddrNotAvailable => return unreachable("address not available"),
                    _ => {}
                }
            }
        }
        for current in chain() {
            if let Some(request) = current.downcast_ref::<reqwest::Error>() {
                if request.is_connect() {
                    return unreachable(&detail_without_url(&detail));
                }
                if request.is_timeout() {
                    return unreachable("request timed out");
                }
            }
        }
        Error::Registry {
            host: self.host.clone(),
            operation: operation.to_string(),
            detail,
        }
    }
}

/// Which kind of object an operation addressed, to name it in "not found" errors.
#[derive(Clone, Copy)]
enum Op<'a> {
    Blob(&'a str),
    Manifest(&'a str),
}

/// The registry's error codes (`BLOB_UNKNOWN`, `DIGEST_INVALID`, …) carried by an error, whether
/// `oci-client` parsed the error envelope or left it as the text of a server error.
fn error_codes(err: &OciDistributionError) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: String,
    }
    let code_name = |code: &OciErrorCode| {
        serde_json::to_value(code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
    };
    match err {
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .filter_map(|e| code_name(&e.code))
            .collect(),
        OciDistributionError::ServerError { message, .. } => {
            serde_json::from_str::<Envelope>(message)
                .map(|envelope| envelope.errors.into_iter().map(|e| e.code).collect())
                .unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// An error and its sources, joined with ": ".
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(current) = source {
        let part = current.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = current.source();
    }
    text
}

fn detail_without_url(detail: &str) -> String {
    detail.rsplit(": ").next().unwrap_or(detail).to_string()
}

/// The state of a [`Registry::pull_blob_stream`] download.
struct BlobPieces {
    registry: Registry,
    repository: String,
    digest: String,
    stream: futures::stream::BoxStream<'static, Result<bytes::Bytes, std::io::Error>>,
    /// What is left of the last piece the registry sent.
    pending: bytes::Bytes,
    /// `None` once the digest has been checked.
    hasher: Option<Sha256>,
    max_piece: usize,
}

impl BlobPieces {
    async fn next_piece(&mut self) -> Result<Option<bytes::Bytes>, Error> {
        while self.pending.is_empty() {
            let Some(hasher) = self.hasher.as_mut() else {
                return Ok(None);
            };
            match self.stream.try_next().await.map_err(|err| {
                self.registry
                    .map_stream_error(err, &self.repository, &self.digest)
            })? {
                Some(chunk) => {
                    hasher.update(&chunk);
                    self.pending = chunk;
                }
                None => {
                    let hasher = self.hasher.take().unwrap_or_default();
                    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
                    if actual != self.digest {
                        return Err(Error::DigestMismatch {
                            what: format!(
                                "blob {}/{}@{}",
                                self.registry.host, self.repository, self.digest
                            ),
                            expected: self.digest.clone(),
                            actual,
                        });
                    }
                    return Ok(None);
                }
            }
        }
        let take = self.pending.len().min(self.max_piece);
        Ok(Some(self.pending.split_to(take)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_for_loopback_and_remote_hosts() {
        // Building an HTTPS client exercises the ring provider installation (reqwest panics without one).
        let remote = Registry::new("registry.example.com").expect("remote client");
        assert_eq!(remote.host(), "registry.example.com");
        let local = Registry::new("127.0.0.1:5000").expect("local client");
        assert_eq!(local.clone().host(), "127.0.0.1:5000");
        assert!(matches!(
            Registry::new("http://127.0.0.1:5000"),
            Err(Error::InvalidHost { .. })
        ));
        assert!(matches!(Registry::new(""), Err(Error::InvalidHost { .. })));
    }

    #[test]
    fn credentials_are_redacted() {
        let registry = Registry::new("127.0.0.1:5000")
            .expect("client")
            .with_credential(Credential::Basic {
                username: "kiln".to_string(),
                password: "s3cret-value".to_string(),
            });
        let text = format!("{registry:?}");
        assert!(
            text.contains("kiln") && !text.contains("s3cret-value"),
            "{text}"
        );
        let bearer = format!(
            "{:?}",
            Credential::Bearer {
                token: "tok3n-value".to_string()
            }
        );
        assert!(!bearer.contains("tok3n-value"), "{bearer}");
    }

    /// A registry to test against (`KILN_REGISTRY`), if one is set.
    fn test_registry() -> Option<Registry> {
        let host = std::env::var("KILN_REGISTRY").ok()?;
        Some(Registry::new(&host).expect("client"))
    }

    async fn collect(
        stream: impl futures::Stream<Item = Result<bytes::Bytes, Error>>,
    ) -> (Vec<bytes::Bytes>, Option<Error>) {
        let mut stream = std::pin::pin!(stream);
        let mut pieces = Vec::new();
        loop {
            match stream.try_next().await {
                Ok(Some(piece)) => pieces.push(piece),
                Ok(None) => return (pieces, None),
                Err(err) => return (pieces, Some(err)),
            }
        }
    }

    #[tokio::test]
    async fn blobs_stream_in_bounded_pieces() {
        let Some(registry) = test_registry() else {
            return;
        };
        let mut blob = Vec::with_capacity(300_000);
        for i in 0..300_000u32 {
            blob.push((i % 251) as u8);
        }
        let digest = registry
            .push_blob_bytes(crate::LOGS_REPOSITORY, blob.clone())
            .await
            .expect("push");
        let stream = registry
            .pull_blob_stream(crate::LOGS_REPOSITORY, &digest, 64 * 1024)
            .await
            .expect("stream");
        let (pieces, error) = collect(stream).await;
        assert!(error.is_none(), "{error:?}");
        assert!(pieces.iter().all(|p| !p.is_empty() && p.len() <= 64 * 1024));
        assert!(pieces.len() >= 5);
        assert_eq!(pieces.concat(), blob);
    }

    #[tokio::test]
    async fn missing_blobs_fail_before_streaming() {
        let Some(registry) = test_registry() else {
            return;
        };
        let missing = sha256_digest(b"kiln: a blob nobody pushed");
        let result = registry
            .pull_blob_stream(crate::LOGS_REPOSITORY, &missing, 1024)
            .await;
        assert!(result.is_err());
        let result = registry
            .pull_blob_stream(crate::LOGS_REPOSITORY, "sha256:not-hex", 1024)
            .await;
        assert!(result.is_err());
    }

    #[test]
    fn digests() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}

//! The blobs a run needs from its registry: the build context it starts from and the step
//! logs it leaves behind. `BlobStore` is the seam; `RegistryBlobStore` uses `kiln-registry`.

use std::future::Future;
use std::io::Read;
use std::path::Path;

use kiln_registry::{Registry, CONTEXTS_REPOSITORY, LOGS_REPOSITORY};
use sha2::{Digest, Sha256};

/// Where a run's context comes from and its logs go.
pub trait BlobStore: Send + Sync + 'static {
    /// Downloads context blob `digest` from `registry` and unpacks it into `dest_dir`.
    fn fetch_context(
        &self,
        registry: &str,
        digest: &str,
        dest_dir: &Path,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// Uploads one segment file of a step log and returns its digest and size.
    fn upload_log(
        &self,
        registry: &str,
        path: &Path,
    ) -> impl Future<Output = Result<(String, u64), String>> + Send;
}

/// `BlobStore` on the run's registry (`kiln/contexts`, `kiln/logs`).
#[derive(Debug, Default, Clone)]
pub struct RegistryBlobStore;

impl BlobStore for RegistryBlobStore {
    async fn fetch_context(
        &self,
        registry: &str,
        digest: &str,
        dest_dir: &Path,
    ) -> Result<(), String> {
        let client = Registry::new(registry).map_err(|e| e.to_string())?;
        tokio::fs::create_dir_all(dest_dir)
            .await
            .map_err(|e| format!("cannot create workspace: {e}"))?;
        let parent = dest_dir.parent().unwrap_or(dest_dir);
        let tar_path = parent.join("context.tar");
        client
            .pull_blob_to_file(CONTEXTS_REPOSITORY, digest, &tar_path)
            .await
            .map_err(|e| format!("cannot download context {digest}: {e}"))?;
        let dest = dest_dir.to_path_buf();
        let tar = tar_path.clone();
        let result = tokio::task::spawn_blocking(move || unpack(&tar, &dest))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| format!("cannot unpack context {digest}: {e}")));
        let _ = tokio::fs::remove_file(&tar_path).await;
        result
    }

    async fn upload_log(&self, registry: &str, path: &Path) -> Result<(String, u64), String> {
        let client = Registry::new(registry).map_err(|e| e.to_string())?;
        let file = path.to_path_buf();
        let (digest, size) = tokio::task::spawn_blocking(move || file_digest(&file))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot read log: {e}"))?;
        client
            .push_blob_file(LOGS_REPOSITORY, path, &digest)
            .await
            .map_err(|e| e.to_string())?;
        Ok((digest, size))
    }
}

/// The sha256 digest (`sha256:<hex>`) and size of a file.
pub fn file_digest(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), size))
}

/// Unpacks a (possibly gzip-compressed) context tarball into `dest` with kiln-registry's
/// hardened unpacker: escaping entries, links out and device files are refused (naming the
/// entry), setuid/setgid bits dropped, size, entry count and gzip expansion bounded.
fn unpack(tar_path: &Path, dest: &Path) -> Result<(), String> {
    kiln_registry::context::unpack(tar_path, dest).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").expect("write");
        let (digest, size) = file_digest(&path).expect("digest");
        assert_eq!(
            digest,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(size, 3);
    }

    #[test]
    fn unpacks_plain_and_gzip_tarballs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).expect("mkdir");
        std::fs::write(src.join("sub/Dockerfile"), b"FROM x\n").expect("write");
        let tar_path = dir.path().join("c.tar");
        {
            let mut builder = tar::Builder::new(std::fs::File::create(&tar_path).expect("create"));
            builder.append_dir_all(".", &src).expect("append");
            builder.finish().expect("finish");
        }
        let out = dir.path().join("out");
        unpack(&tar_path, &out).expect("unpack");
        assert_eq!(
            std::fs::read(out.join("sub/Dockerfile")).expect("read"),
            b"FROM x\n"
        );

        let gz_path = dir.path().join("c.tar.gz");
        {
            let gz = flate2::write::GzEncoder::new(
                std::fs::File::create(&gz_path).expect("create"),
                flate2::Compression::default(),
            );
            let mut builder = tar::Builder::new(gz);
            builder.append_dir_all(".", &src).expect("append");
            builder
                .into_inner()
                .expect("inner")
                .finish()
                .expect("finish");
        }
        let out = dir.path().join("out-gz");
        unpack(&gz_path, &out).expect("unpack");
        assert!(out.join("sub/Dockerfile").is_file());
    }

    #[test]
    fn refuses_links_to_host_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tar_path = dir.path().join("evil.tar");
        {
            let mut builder = tar::Builder::new(std::fs::File::create(&tar_path).expect("create"));
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            header.set_mode(0o777);
            builder
                .append_link(&mut header, "h", "/etc")
                .expect("append");
            builder.finish().expect("finish");
        }
        let error = unpack(&tar_path, &dir.path().join("out")).expect_err("refused");
        assert!(
            error.contains("\"h\"") && error.contains("outside the context"),
            "{error}"
        );
        assert!(std::fs::symlink_metadata(dir.path().join("out/h")).is_err());
    }
}

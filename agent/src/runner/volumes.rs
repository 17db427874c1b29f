//! Secret volumes: decoding, the run's masker over their contents, and the read-only files
//! written outside the workspace.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::MAX_MASKED_VOLUME_FILE;
use crate::mask::Masker;
use crate::task::Plan;

/// Every file of every secret volume: (volume name, file name, decoded content).
pub(super) type VolumeFiles = Vec<(String, String, Vec<u8>)>;

/// Decodes the base64 content of the plan's secret volumes.
pub(super) fn decode_volumes(plan: &Plan) -> Result<VolumeFiles, String> {
    use base64::Engine as _;
    let mut files = Vec::new();
    for volume in &plan.volumes {
        if !is_plain_name(&volume.name) {
            return Err(format!("volume name {:?} cannot be used", volume.name));
        }
        for (name, encoded) in &volume.secret {
            if !is_plain_name(name) {
                return Err(format!(
                    "volume {}: file name {name:?} cannot be used",
                    volume.name
                ));
            }
            let compact: String = encoded
                .chars()
                .filter(|c| !c.is_ascii_whitespace())
                .collect();
            let content = base64::engine::general_purpose::STANDARD
                .decode(compact.as_bytes())
                .map_err(|_| {
                    format!(
                        "volume {}: file {name}: failed to decode Base64 value. please make sure value provided is Base64 encoded",
                        volume.name
                    )
                })?;
            files.push((volume.name.clone(), name.clone(), content));
        }
    }
    Ok(files)
}

/// A volume or file name that is one safe path component.
pub(super) fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The masker of a run: its secret values and the contents of its secret-volume files (also
/// without a trailing newline, as `$(cat file)` prints them).
pub(super) fn run_masker(secrets: &BTreeMap<String, String>, volume_files: &VolumeFiles) -> Masker {
    let mut values: Vec<Vec<u8>> = secrets.values().map(|v| v.as_bytes().to_vec()).collect();
    for (volume, file, content) in volume_files {
        if content.len() > MAX_MASKED_VOLUME_FILE {
            tracing::warn!(
                volume,
                file,
                "secret-volume file too large to be masked in logs"
            );
            continue;
        }
        values.push(content.clone());
        let mut trimmed = content.as_slice();
        while let Some(rest) = trimmed.strip_suffix(b"\n") {
            trimmed = rest.strip_suffix(b"\r").unwrap_or(rest);
        }
        values.push(trimmed.to_vec());
    }
    Masker::new(values)
}

/// Writes the secret volumes under `dir` (`<dir>/<volume>/<file>`, directories 0700, files
/// 0400) and returns each volume's directory.
pub(super) async fn write_volumes(
    dir: &Path,
    files: &VolumeFiles,
) -> Result<HashMap<String, PathBuf>, String> {
    let mut dirs = HashMap::new();
    for (volume, name, content) in files {
        let volume_dir = dir.join(volume);
        if !dirs.contains_key(volume) {
            create_private_dir(&volume_dir)
                .await
                .map_err(|e| format!("cannot create secret volume {volume}: {e}"))?;
            dirs.insert(volume.clone(), volume_dir.clone());
        }
        write_private_file(&volume_dir.join(name), content)
            .await
            .map_err(|e| format!("cannot write secret volume {volume}, file {name}: {e}"))?;
    }
    Ok(dirs)
}

pub(super) async fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = tokio::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder.create(path).await
}

pub(super) async fn write_private_file(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o400);
    let mut file = options.open(path).await?;
    file.write_all(content).await?;
    file.flush().await
}

/// Removes the run's secret volumes (also after a failure or a cancel).
pub(super) async fn remove_volumes(run_id: &str, dir: &Path) {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(run_id, %error, "cannot remove the run's secret volumes"),
    }
}

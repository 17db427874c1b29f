//! Build contexts: packing a directory into a deterministic tarball, and unpacking one safely.
//!
//! [`pack`] walks the directory the way Docker's CLI does when it sends a context to the engine
//! (moby's `TarWithOptions` with the `.dockerignore` patterns, the Dockerfile and `.dockerignore`
//! always kept), but writes every header the same way each time: entries sorted by name, owner
//! 0:0 without names, and one fixed modification time, so the same tree always has the same sha256
//! and an unchanged context is never uploaded twice. Symbolic links are stored as links; sockets,
//! FIFOs and device files are left out; hard links are stored as separate copies.

mod dockerignore;
mod unpack;

use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use sha2::{Digest as _, Sha256};

pub use dockerignore::{DockerIgnore, MatchInfo};
pub use unpack::{unpack, unpack_with, UnpackLimits};

use crate::Error;

/// Modification time written into every entry: 2000-01-01T00:00:00Z. Fixed so packing is
/// deterministic, and after 1980 so tools that zip copied files (Python wheels) accept it.
pub const FIXED_MTIME: u64 = 946_684_800;

/// A packed build context.
#[derive(Debug)]
pub struct PackedContext {
    /// The tarball; deleted when this is dropped.
    pub file: tempfile::NamedTempFile,
    /// `sha256:<hex>` of the tarball.
    pub digest: String,
    /// Size of the tarball in bytes.
    pub size: u64,
}

/// Packs a build context directory as a tar archive into a temporary file, honouring `.dockerignore`
/// with Docker's semantics (patterns, `!` exceptions, `**`; the Dockerfile and `.dockerignore` are
/// always included even if ignored, as Docker does). Deterministic: sorted entries, fixed
/// mtimes/uid/gid so the same tree gives the same sha256.
///
/// `dockerfile` is relative to `dir` (or absolute, inside `dir`); `None` means `Dockerfile`, kept if present.
pub fn pack(dir: &Path, dockerfile: Option<&Path>) -> Result<PackedContext, Error> {
    let metadata =
        fs::metadata(dir).map_err(|err| Error::io("read the build context directory", dir, err))?;
    if !metadata.is_dir() {
        return Err(Error::io(
            "use as a build context",
            dir,
            io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }

    let mut ignore = match fs::read_to_string(dir.join(".dockerignore")) {
        Ok(text) => DockerIgnore::parse(&text)?,
        Err(err) if err.kind() == io::ErrorKind::NotFound => DockerIgnore::default(),
        Err(err) => return Err(Error::io("read", dir.join(".dockerignore"), err)),
    };
    // As the Docker CLI does (TrimBuildFilesFromExcludes): if .dockerignore or the Dockerfile is
    // ignored, an exception is appended so the engine still receives them.
    let dockerfile_rel = dockerfile_in_context(dir, dockerfile)?;
    for keep in [".dockerignore", dockerfile_rel.as_str()] {
        if ignore.matches(keep) {
            ignore.keep(keep)?;
        }
    }

    let temp = tempfile::Builder::new()
        .prefix("kiln-context-")
        .suffix(".tar")
        .tempfile()
        .map_err(|err| Error::io("create a temporary file in", std::env::temp_dir(), err))?;
    let temp_path = temp.path().to_path_buf();
    let file = temp
        .as_file()
        .try_clone()
        .map_err(|err| Error::io("open", &temp_path, err))?;
    let writer = HashingWriter::new(BufWriter::with_capacity(256 * 1024, file));
    let mut builder = tar::Builder::new(writer);
    builder.mode(tar::HeaderMode::Deterministic);

    walk(&mut builder, dir, "", &ignore, &MatchInfo::default())?;

    let writer = builder
        .into_inner()
        .map_err(|err| Error::io("write", &temp_path, err))?;
    let (buffered, hasher, size) = writer.finish();
    buffered
        .into_inner()
        .map_err(|err| Error::io("write", &temp_path, err.into_error()))?
        .sync_all()
        .map_err(|err| Error::io("write", &temp_path, err))?;
    Ok(PackedContext {
        file: temp,
        digest: format!("sha256:{}", hex::encode(hasher.finalize())),
        size,
    })
}

/// The Dockerfile's path relative to the context, `/`-separated.
fn dockerfile_in_context(dir: &Path, dockerfile: Option<&Path>) -> Result<String, Error> {
    let Some(dockerfile) = dockerfile else {
        return Ok("Dockerfile".to_string());
    };
    let outside = || Error::DockerfileOutsideContext {
        dockerfile: dockerfile.to_path_buf(),
        context: dir.to_path_buf(),
    };
    let full = if dockerfile.is_absolute() {
        dockerfile.to_path_buf()
    } else {
        dir.join(dockerfile)
    };
    let full = full
        .canonicalize()
        .map_err(|err| Error::io("find the Dockerfile", &full, err))?;
    let root = dir
        .canonicalize()
        .map_err(|err| Error::io("resolve", dir, err))?;
    let relative = full.strip_prefix(&root).map_err(|_| outside())?;
    let parts: Option<Vec<&str>> = relative
        .components()
        .map(|c| c.as_os_str().to_str())
        .collect();
    match parts {
        Some(parts) if !parts.is_empty() => Ok(parts.join("/")),
        _ => Err(outside()),
    }
}

/// Adds the children of `dir/rel` in byte order of their names, recursing into directories.
fn walk<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    rel: &str,
    ignore: &DockerIgnore,
    parent_info: &MatchInfo,
) -> Result<(), Error> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(&dir).map_err(|err| Error::io("list", &dir, err))? {
        let entry = entry.map_err(|err| Error::io("list", &dir, err))?;
        let name = entry.file_name().into_string().map_err(|name| {
            Error::io(
                "pack",
                dir.join(&name),
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the file name is not valid UTF-8",
                ),
            )
        })?;
        names.push(name);
    }
    names.sort();

    for name in names {
        let rel_path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let full = root.join(&rel_path);
        let metadata =
            fs::symlink_metadata(&full).map_err(|err| Error::io("read metadata of", &full, err))?;
        let file_type = metadata.file_type();
        let (excluded, info) = ignore.matches_using_parent(&rel_path, parent_info);
        if excluded {
            // An excluded directory is still walked when an exception could re-include something in it.
            if file_type.is_dir()
                && ignore.has_exceptions()
                && ignore.may_reinclude_below(&rel_path)
            {
                walk(builder, root, &rel_path, ignore, &info)?;
            }
            continue;
        }

        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(FIXED_MTIME);
        header.set_mode(metadata.permissions().mode() & 0o7777);
        let write_err = |err: io::Error| Error::io("add to the context archive", &full, err);
        if file_type.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder
                .append_data(&mut header, format!("{rel_path}/"), io::empty())
                .map_err(write_err)?;
            walk(builder, root, &rel_path, ignore, &info)?;
        } else if file_type.is_file() {
            let mut file = fs::File::open(&full).map_err(|err| Error::io("open", &full, err))?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(metadata.size());
            // A file that changes size while it is read would corrupt the archive; refuse instead.
            let mut limited = (&mut file).take(metadata.size());
            builder
                .append_data(&mut header, &rel_path, &mut limited)
                .map_err(write_err)?;
            if limited.limit() != 0 {
                return Err(write_err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was packed",
                )));
            }
        } else if file_type.is_symlink() {
            let target = fs::read_link(&full)
                .map_err(|err| Error::io("read the symbolic link", &full, err))?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            header.set_mode(0o777);
            builder
                .append_link(&mut header, &rel_path, &target)
                .map_err(write_err)?;
        }
        // Sockets, FIFOs and device files are not build inputs; they are left out.
    }
    Ok(())
}

/// Adds every file, directory and symbolic link under `root` with deterministic headers, as [`pack`]
/// does but without `.dockerignore` rules (used for image layers).
pub(crate) fn append_tree<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
) -> Result<(), Error> {
    walk(
        builder,
        root,
        "",
        &DockerIgnore::default(),
        &MatchInfo::default(),
    )
}

/// A writer that hashes and counts what passes through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    pub(crate) fn finish(self) -> (W, Sha256, u64) {
        (self.inner, self.hasher, self.written)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

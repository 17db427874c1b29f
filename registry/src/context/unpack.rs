//! The one hardened context unpacker: what the agent uses for every run's context, and what the
//! fuzz target and the malicious-context tests exercise.
//!
//! Refused (the whole unpack fails, naming the entry): absolute names, names with `..`, entries
//! written through a symbolic link, symbolic links whose target is absolute or climbs out (also
//! through chains of links), hard links to anything outside the archive's tree or to a symbolic
//! link, device files and FIFOs, sparse entries. Setuid and setgid bits are dropped. The unpacked
//! size, the number of entries and the gzip expansion are bounded by [`UnpackLimits`].

use std::cell::Cell;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use crate::Error;

/// Bounds on what one context may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Sum of the sizes of all files, in bytes.
    pub max_total_bytes: u64,
    /// Number of entries (files, directories, links).
    pub max_entries: u64,
    /// For a gzip-compressed archive: at most this many decompressed bytes per compressed byte
    /// (checked once more than [`GZIP_RATIO_GRACE`] bytes came out).
    pub max_gzip_ratio: u64,
}

/// Decompressed bytes allowed before the gzip ratio is checked (tiny archives compress well).
pub const GZIP_RATIO_GRACE: u64 = 1024 * 1024;

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_total_bytes: 4 * 1024 * 1024 * 1024,
            max_entries: 1_000_000,
            max_gzip_ratio: 100,
        }
    }
}

/// [`unpack_with`] under the default limits.
pub fn unpack(tar_path: &Path, dest: &Path) -> Result<(), Error> {
    unpack_with(tar_path, dest, &UnpackLimits::default())
}

/// Unpacks a context tarball (plain or gzip-compressed) into `dest`, refusing entries that
/// escape it, special files and archives beyond `limits`. On an error `dest` may hold part of
/// the archive; remove it.
pub fn unpack_with(tar_path: &Path, dest: &Path, limits: &UnpackLimits) -> Result<(), Error> {
    fs::create_dir_all(dest).map_err(|err| Error::io("create", dest, err))?;
    let root = dest
        .canonicalize()
        .map_err(|err| Error::io("resolve", dest, err))?;
    let open = || fs::File::open(tar_path).map_err(|err| Error::io("open", tar_path, err));
    let mut magic = [0u8; 2];
    let gzip = open()?.read(&mut magic).unwrap_or(0) == 2 && magic == [0x1f, 0x8b];
    let file = io::BufReader::new(open()?);
    let reader: Box<dyn Read> = if gzip {
        let compressed = Rc::new(Cell::new(0u64));
        Box::new(RatioReader {
            inner: flate2::read::GzDecoder::new(CountingReader {
                inner: file,
                count: Rc::clone(&compressed),
            }),
            compressed,
            decompressed: 0,
            max_ratio: limits.max_gzip_ratio,
        })
    } else {
        Box::new(file)
    };
    let mut archive = tar::Archive::new(reader);
    let read_err = |err: io::Error| Error::io("read the context archive", tar_path, err);
    let mut symlinks = Vec::new();
    let mut entries = 0u64;
    let mut total = 0u64;

    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let unsafe_entry = |reason: &str| Error::UnsafeEntry {
            archive: tar_path.to_path_buf(),
            entry: raw_name.clone(),
            reason: reason.to_string(),
        };
        entries += 1;
        if entries > limits.max_entries {
            return Err(unsafe_entry(&format!(
                "the context has more than {} entries (the agent's context entry limit)",
                limits.max_entries
            )));
        }
        let entry_type = entry.header().entry_type();
        match entry_type {
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(unsafe_entry("device files are not allowed in a context"))
            }
            tar::EntryType::Fifo => return Err(unsafe_entry("FIFOs are not allowed in a context")),
            tar::EntryType::GNUSparse => {
                return Err(unsafe_entry("sparse files are not allowed in a context"))
            }
            // Extension records the reader did not fold into an entry carry nothing to write.
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => continue,
            _ => {}
        }
        let Some(rel) = safe_relative(Path::new(&raw_name)).map_err(&unsafe_entry)? else {
            continue; // "." or "./": the root itself
        };
        let target = root.join(&rel);
        ensure_no_symlink_in_parents(&root, &rel).map_err(|reason| unsafe_entry(&reason))?;
        // Setuid and setgid are dropped; the sticky bit and the permissions are kept.
        let mode = entry.header().mode().unwrap_or(0o644) & 0o1777;
        let write_err = |err: io::Error| Error::io("unpack into", &target, err);

        match entry_type {
            tar::EntryType::Directory => {
                if fs::symlink_metadata(&target).is_ok_and(|m| !m.is_dir()) {
                    fs::remove_file(&target).map_err(write_err)?;
                }
                fs::create_dir_all(&target).map_err(write_err)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode | 0o700))
                    .map_err(write_err)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                let room = limits.max_total_bytes.saturating_sub(total);
                if size > room {
                    return Err(unsafe_entry(&format!(
                        "the context would unpack to more than {} bytes (the agent's context size limit)",
                        limits.max_total_bytes
                    )));
                }
                create_parent(&target)?;
                remove_non_dir(&target).map_err(write_err)?;
                let mut out = fs::File::create(&target).map_err(write_err)?;
                let copied = io::copy(&mut (&mut entry).take(room), &mut out).map_err(write_err)?;
                total += copied;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(write_err)?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(read_err)?
                    .ok_or_else(|| unsafe_entry("symbolic link without a target"))?;
                let parent = rel.parent().unwrap_or(Path::new(""));
                if link.is_absolute() || !stays_inside(&parent.join(&link)) {
                    return Err(unsafe_entry(&format!(
                        "symbolic link to {} points outside the context",
                        link.display()
                    )));
                }
                create_parent(&target)?;
                remove_non_dir(&target).map_err(write_err)?;
                std::os::unix::fs::symlink(&link, &target).map_err(write_err)?;
                symlinks.push(rel.clone());
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(read_err)?
                    .ok_or_else(|| unsafe_entry("hard link without a target"))?;
                let Ok(Some(link_rel)) = safe_relative(&link) else {
                    return Err(unsafe_entry(&format!(
                        "hard link to {} points outside the context",
                        link.display()
                    )));
                };
                ensure_no_symlink_in_parents(&root, &link_rel)
                    .map_err(|reason| unsafe_entry(&reason))?;
                let source = root.join(&link_rel);
                match fs::symlink_metadata(&source) {
                    Ok(meta) if meta.is_file() => {}
                    // A hard link to a symbolic link is the link again, in another directory,
                    // where its relative target may climb out.
                    Ok(_) => {
                        return Err(unsafe_entry(&format!(
                            "hard link to {} is not a link to a regular file",
                            link.display()
                        )))
                    }
                    Err(_) => {
                        return Err(unsafe_entry(&format!(
                            "hard link to {}, which is not earlier in the archive",
                            link.display()
                        )))
                    }
                }
                create_parent(&target)?;
                remove_non_dir(&target).map_err(write_err)?;
                fs::hard_link(&source, &target).map_err(write_err)?;
            }
            other => {
                return Err(unsafe_entry(&format!(
                    "entries of type {other:?} are not allowed in a context"
                )))
            }
        }
    }

    // A chain of links can still lead out (`a -> .`, `b -> a/..`): resolve every link now that all exist.
    for rel in symlinks {
        let path = root.join(&rel);
        if let Ok(resolved) = path.canonicalize() {
            if !resolved.starts_with(&root) {
                return Err(Error::UnsafeEntry {
                    archive: tar_path.to_path_buf(),
                    entry: rel.display().to_string(),
                    reason: "symbolic link resolves outside the context".to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Counts the bytes read through it into a shared cell.
struct CountingReader<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// Fails the read once the decompressed stream outgrows `max_ratio` times the compressed bytes.
struct RatioReader<R> {
    inner: R,
    compressed: Rc<Cell<u64>>,
    decompressed: u64,
    max_ratio: u64,
}

impl<R: Read> Read for RatioReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.decompressed += n as u64;
        let allowed = self.compressed.get().saturating_mul(self.max_ratio);
        if self.decompressed > GZIP_RATIO_GRACE && self.decompressed > allowed {
            return Err(io::Error::other(format!(
                "the gzip stream expands more than {} times (the agent's gzip expansion limit): refusing a compression bomb",
                self.max_ratio
            )));
        }
        Ok(n)
    }
}

/// Checks an entry name: `Ok(None)` for the root itself, the relative path otherwise.
fn safe_relative(path: &Path) -> Result<Option<PathBuf>, &'static str> {
    let mut rel = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("the name contains '..'"),
            Component::RootDir | Component::Prefix(_) => {
                return Err("the name is an absolute path")
            }
        }
    }
    Ok(if rel.as_os_str().is_empty() {
        None
    } else {
        Some(rel)
    })
}

/// Whether a relative path, resolved lexically, stays inside its root.
fn stays_inside(path: &Path) -> bool {
    let mut depth: usize = 0;
    for component in path.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Refuses to write below a symbolic link, which could point anywhere.
fn ensure_no_symlink_in_parents(root: &Path, rel: &Path) -> Result<(), String> {
    let mut current = root.to_path_buf();
    let mut components = rel.components().peekable();
    while let Some(component) = components.next() {
        if components.peek().is_none() {
            break;
        }
        current.push(component);
        if fs::symlink_metadata(&current).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(format!(
                "it would be written through the symbolic link {}",
                current.display()
            ));
        }
    }
    Ok(())
}

fn create_parent(target: &Path) -> Result<(), Error> {
    match target.parent() {
        Some(parent) => fs::create_dir_all(parent).map_err(|err| Error::io("create", parent, err)),
        None => Ok(()),
    }
}

/// Removes a file or link that an entry replaces (tar semantics: the later entry wins).
fn remove_non_dir(target: &Path) -> io::Result<()> {
    match fs::symlink_metadata(target) {
        Ok(m) if !m.is_dir() => fs::remove_file(target),
        _ => Ok(()),
    }
}

//! Tests of build-context packing (`.dockerignore`, determinism) and safe unpacking.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use kiln_registry::context::{pack, unpack, unpack_with, UnpackLimits, FIXED_MTIME};
use kiln_registry::Error;

fn write(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().expect("test paths have parents")).expect("create parent");
    fs::write(path, content).expect("write test file");
}

/// Entry name -> (type, content or link target), read back from a packed archive.
fn entries(tar_path: &Path) -> BTreeMap<String, (char, String)> {
    let mut archive = tar::Archive::new(fs::File::open(tar_path).expect("open archive"));
    let mut out = BTreeMap::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").to_string_lossy().into_owned();
        let header = entry.header().clone();
        assert_eq!(
            header.mtime().expect("mtime"),
            FIXED_MTIME,
            "{name}: fixed mtime"
        );
        assert_eq!(header.uid().expect("uid"), 0);
        assert_eq!(header.gid().expect("gid"), 0);
        let value = match header.entry_type() {
            tar::EntryType::Directory => ('d', String::new()),
            tar::EntryType::Symlink => (
                'l',
                entry
                    .link_name()
                    .expect("link")
                    .expect("target")
                    .to_string_lossy()
                    .into_owned(),
            ),
            _ => {
                let mut content = String::new();
                entry.read_to_string(&mut content).expect("read");
                ('f', content)
            }
        };
        out.insert(name.trim_end_matches('/').to_string(), value);
    }
    out
}

fn names(tar_path: &Path) -> Vec<String> {
    entries(tar_path).into_keys().collect()
}

#[test]
fn dockerignore_is_honoured_like_docker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(root, "Dockerfile", "FROM scratch\n");
    write(root, ".dockerignore", "# comment\n*.log\nbuild\n!build/keep.txt\ndocs/**\n**/*.tmp\n/secret\nnode_modules\nDockerfile\n.dockerignore\n");
    write(root, "app.log", "x");
    write(root, "src/main.rs", "fn main() {}");
    write(root, "src/sub/x.tmp", "tmp");
    write(root, "src/sub/y.txt", "y");
    write(root, "build/out.bin", "bin");
    write(root, "build/keep.txt", "keep");
    write(root, "docs/a/b.md", "doc");
    write(root, "secret", "s");
    write(root, "nested/secret", "not excluded: /secret is anchored");
    write(root, "node_modules/pkg/index.js", "js");

    let packed = pack(root, None).expect("pack");
    assert_eq!(
        names(packed.file.path()),
        vec![
            ".dockerignore",
            "Dockerfile",
            "build/keep.txt",
            // "docs/**" excludes what is below docs, not docs itself (moby's prefix match on "docs/").
            "docs",
            "nested",
            "nested/secret",
            "src",
            "src/main.rs",
            "src/sub",
            "src/sub/y.txt",
        ]
    );
}

#[test]
fn custom_dockerfile_is_kept_and_must_be_inside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(root, "ci/build.Dockerfile", "FROM scratch\n");
    write(root, "ci/other", "x");
    write(root, ".dockerignore", "ci\n");
    let packed = pack(root, Some(Path::new("ci/build.Dockerfile"))).expect("pack");
    assert_eq!(
        names(packed.file.path()),
        vec![".dockerignore", "ci/build.Dockerfile"]
    );

    let outside = tempfile::tempdir().expect("tempdir");
    write(outside.path(), "Dockerfile", "FROM scratch\n");
    let err = pack(root, Some(&outside.path().join("Dockerfile")))
        .expect_err("outside Dockerfile is refused");
    assert!(
        matches!(err, Error::DockerfileOutsideContext { .. }),
        "{err}"
    );
    let err = pack(root, Some(Path::new("missing.Dockerfile")))
        .expect_err("missing Dockerfile is refused");
    assert!(err.to_string().contains("missing.Dockerfile"), "{err}");
}

#[test]
fn packing_is_deterministic_and_tracks_content() {
    let make = |content: &str| {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "Dockerfile", "FROM scratch\n");
        write(dir.path(), "b/z.txt", content);
        write(dir.path(), "a.txt", "a");
        std::os::unix::fs::symlink("a.txt", dir.path().join("link")).expect("symlink");
        fs::set_permissions(dir.path().join("a.txt"), fs::Permissions::from_mode(0o755))
            .expect("chmod");
        dir
    };
    let first = make("z");
    let second = make("z");
    // Different mtimes on the same tree must not change the digest.
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    fs::File::options()
        .write(true)
        .open(second.path().join("a.txt"))
        .expect("open")
        .set_modified(old)
        .expect("set mtime");

    let p1 = pack(first.path(), None).expect("pack");
    let p2 = pack(second.path(), None).expect("pack");
    let again = pack(first.path(), None).expect("pack");
    assert_eq!(p1.digest, p2.digest);
    assert_eq!(p1.digest, again.digest);
    assert_eq!(p1.size, fs::metadata(p1.file.path()).expect("stat").len());
    let bytes = fs::read(p1.file.path()).expect("read");
    assert_eq!(p1.digest, kiln_registry::sha256_digest(&bytes));

    let listed = entries(p1.file.path());
    assert_eq!(listed.get("link"), Some(&('l', "a.txt".to_string())));
    assert_eq!(listed.get("b/z.txt"), Some(&('f', "z".to_string())));

    let changed = make("zz");
    assert_ne!(pack(changed.path(), None).expect("pack").digest, p1.digest);
}

#[test]
fn pack_then_unpack_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "Dockerfile", "FROM scratch\n");
    write(dir.path(), "deep/er/file.sh", "#!/bin/sh\n");
    fs::set_permissions(
        dir.path().join("deep/er/file.sh"),
        fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    std::os::unix::fs::symlink("er/file.sh", dir.path().join("deep/link")).expect("symlink");
    let long_name = format!("{}/{}", "d".repeat(120), "f".repeat(120));
    write(dir.path(), &long_name, "long");

    let packed = pack(dir.path(), None).expect("pack");
    let out = tempfile::tempdir().expect("tempdir");
    unpack(packed.file.path(), out.path()).expect("unpack");
    assert_eq!(
        fs::read_to_string(out.path().join("deep/er/file.sh")).expect("read"),
        "#!/bin/sh\n"
    );
    let mode = fs::metadata(out.path().join("deep/er/file.sh"))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        fs::read_link(out.path().join("deep/link")).expect("readlink"),
        Path::new("er/file.sh")
    );
    assert_eq!(
        fs::read_to_string(out.path().join(&long_name)).expect("read"),
        "long"
    );
}

/// Writes a tar whose entries are given raw, bypassing the tar crate's own path checks.
fn raw_tar(path: &Path, entries: &[(&str, tar::EntryType, &str)]) {
    let mut builder = tar::Builder::new(fs::File::create(path).expect("create"));
    for (name, kind, data_or_link) in entries {
        let mut header = tar::Header::new_old();
        let name_field = &mut header.as_old_mut().name;
        name_field[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(*kind);
        header.set_mode(0o644);
        let data: &[u8] = match kind {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let link = &mut header.as_old_mut().linkname;
                link[..data_or_link.len()].copy_from_slice(data_or_link.as_bytes());
                &[]
            }
            _ => data_or_link.as_bytes(),
        };
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data).expect("append");
    }
    builder.finish().expect("finish");
}

fn assert_refused(entries: &[(&str, tar::EntryType, &str)], what: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let tar_path = dir.path().join("evil.tar");
    raw_tar(&tar_path, entries);
    let dest = dir.path().join("dest");
    match unpack(&tar_path, &dest) {
        Err(Error::UnsafeEntry { .. }) => {}
        Err(other) => panic!("{what}: expected UnsafeEntry, got {other}"),
        Ok(()) => panic!("{what}: unpack should have been refused"),
    }
    assert!(
        !dir.path().join("escaped").exists(),
        "{what}: nothing may be written outside dest"
    );
}

#[test]
fn unpack_refuses_escapes() {
    use tar::EntryType::{Link, Regular, Symlink};
    assert_refused(&[("../escaped", Regular, "x")], "parent-directory entry");
    assert_refused(
        &[("a/../../escaped", Regular, "x")],
        "parent-directory inside entry",
    );
    assert_refused(&[("/tmp/escaped-abs", Regular, "x")], "absolute entry");
    assert_refused(&[("link", Symlink, "/etc")], "absolute symlink");
    assert_refused(&[("link", Symlink, "../..")], "relative symlink out");
    assert_refused(
        &[("a/link", Symlink, "../../escaped")],
        "nested relative symlink out",
    );
    assert_refused(&[("hard", Link, "../escaped")], "hard link out");
    assert_refused(&[("hard", Link, "/etc/passwd")], "absolute hard link");
    assert_refused(
        &[("dir", Symlink, "sub"), ("dir/file", Regular, "x")],
        "write through a symlink",
    );
    assert_refused(
        &[("a", Symlink, "."), ("b", Symlink, "a/..")],
        "symlink chain out",
    );
    // `sub/up -> ../top` is fine in sub/, but hard-linked at the top it would point out.
    assert_refused(
        &[("sub/up", Symlink, "../top"), ("hl", Link, "sub/up")],
        "hard link to a symlink",
    );
    assert_refused(&[("hard", Link, "missing")], "hard link to nothing");
    assert_refused(&[("zero", tar::EntryType::Char, "")], "character device");
    assert_refused(&[("disk", tar::EntryType::Block, "")], "block device");
    assert_refused(&[("pipe", tar::EntryType::Fifo, "")], "FIFO");
}

#[test]
fn unpack_names_the_refused_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tar_path = dir.path().join("evil.tar");
    raw_tar(
        &tar_path,
        &[
            ("ok.txt", tar::EntryType::Regular, "fine"),
            ("h", tar::EntryType::Symlink, "/etc"),
        ],
    );
    let error = unpack(&tar_path, &dir.path().join("dest")).expect_err("refused");
    let text = error.to_string();
    assert!(text.contains("\"h\""), "{text}");
    assert!(text.contains("points outside the context"), "{text}");
}

/// A tar with one entry of `mode`, written with the tar crate's checked builder.
fn tar_with_mode(path: &Path, name: &str, mode: u32) {
    let mut builder = tar::Builder::new(fs::File::create(path).expect("create"));
    let mut header = tar::Header::new_gnu();
    header.set_size(2);
    header.set_mode(mode);
    header.set_cksum();
    builder
        .append_data(&mut header, name, &b"#!"[..])
        .expect("append");
    builder.finish().expect("finish");
}

#[test]
fn unpack_drops_setuid_and_setgid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tar_path = dir.path().join("suid.tar");
    tar_with_mode(&tar_path, "suid-shell", 0o6755);
    let dest = dir.path().join("dest");
    unpack(&tar_path, &dest).expect("unpack");
    let mode = fs::metadata(dest.join("suid-shell"))
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o7777,
        0o755,
        "setuid/setgid must be dropped: {mode:o}"
    );
}

#[test]
fn unpack_bounds_size_entries_and_gzip_expansion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = UnpackLimits {
        max_total_bytes: 1000,
        max_entries: 10,
        max_gzip_ratio: 20,
    };

    // A header that claims more than the size limit is refused before anything is written.
    let big = dir.path().join("big.tar");
    {
        let mut builder = tar::Builder::new(fs::File::create(&big).expect("create"));
        let mut header = tar::Header::new_gnu();
        header.set_size(4096);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "big.bin", &vec![0u8; 4096][..])
            .expect("append");
        builder.finish().expect("finish");
    }
    let error = unpack_with(&big, &dir.path().join("d1"), &limits).expect_err("too big");
    assert!(error.to_string().contains("size limit"), "{error}");
    assert!(error.to_string().contains("big.bin"), "{error}");
    assert!(!dir.path().join("d1/big.bin").exists());

    // Many small entries.
    let many = dir.path().join("many.tar");
    {
        let mut builder = tar::Builder::new(fs::File::create(&many).expect("create"));
        for i in 0..11 {
            let mut header = tar::Header::new_gnu();
            header.set_size(1);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, format!("f{i}"), &b"x"[..])
                .expect("append");
        }
        builder.finish().expect("finish");
    }
    let error = unpack_with(&many, &dir.path().join("d2"), &limits).expect_err("too many");
    assert!(
        error.to_string().contains("more than 10 entries"),
        "{error}"
    );

    // A gzip bomb: 8 MiB of zeros compress about 1000 times.
    let bomb = dir.path().join("bomb.tar.gz");
    {
        let gz = flate2::write::GzEncoder::new(
            fs::File::create(&bomb).expect("create"),
            flate2::Compression::best(),
        );
        let mut builder = tar::Builder::new(gz);
        let zeros = vec![0u8; 8 * 1024 * 1024];
        let mut header = tar::Header::new_gnu();
        header.set_size(zeros.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "zeros", &zeros[..])
            .expect("append");
        builder
            .into_inner()
            .expect("inner")
            .finish()
            .expect("finish");
    }
    let roomy = UnpackLimits {
        max_total_bytes: 1 << 30,
        ..limits
    };
    let error = unpack_with(&bomb, &dir.path().join("d3"), &roomy).expect_err("bomb");
    assert!(
        error.to_string().contains("gzip expansion limit"),
        "{error}"
    );
    // The same archive passes when the ratio allows it.
    let lenient = UnpackLimits {
        max_gzip_ratio: 100_000,
        ..roomy
    };
    unpack_with(&bomb, &dir.path().join("d4"), &lenient).expect("lenient unpack");
    assert_eq!(
        fs::metadata(dir.path().join("d4/zeros"))
            .expect("stat")
            .len(),
        8 * 1024 * 1024
    );
}

#[test]
fn unpack_accepts_links_inside() {
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    let dir = tempfile::tempdir().expect("tempdir");
    let tar_path = dir.path().join("ok.tar");
    raw_tar(
        &tar_path,
        &[
            ("./", Directory, ""),
            ("sub/", Directory, ""),
            ("sub/file", Regular, "content"),
            ("sub/up", Symlink, "../top"),
            ("top", Regular, "top"),
            ("hard", Link, "sub/file"),
        ],
    );
    let dest = dir.path().join("dest");
    unpack(&tar_path, &dest).expect("unpack");
    assert_eq!(
        fs::read_to_string(dest.join("hard")).expect("read"),
        "content"
    );
    assert_eq!(
        fs::read_to_string(dest.join("sub/up")).expect("read through link"),
        "top"
    );
}

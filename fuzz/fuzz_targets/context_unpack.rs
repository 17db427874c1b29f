//! Unpacks arbitrary bytes as a build context and checks that nothing was written outside the
//! destination directory, and that nothing inside it is setuid or setgid, or a link out.
#![no_main]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let root = tempfile::tempdir().expect("temporary directory");
    let archive = root.path().join("context.tar");
    std::fs::write(&archive, data).expect("write the archive");
    let dest = root.path().join("dest");
    let _ = kiln_registry::context::unpack(&archive, &dest);
    // Only the archive and the destination may exist at the top.
    for entry in std::fs::read_dir(root.path()).expect("list") {
        let name = entry.expect("entry").file_name();
        assert!(
            name == "context.tar" || name == "dest",
            "the unpacker wrote {name:?} outside its destination"
        );
    }
    if dest.exists() {
        check_tree(&dest.canonicalize().expect("resolve dest"), &dest);
    }
});

fn check_tree(root: &Path, dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("list") {
        let path = entry.expect("entry").path();
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o6000, 0, "{path:?} kept a setuid/setgid bit");
        if meta.file_type().is_symlink() {
            if let Ok(target) = path.canonicalize() {
                assert!(target.starts_with(root), "{path:?} links out to {target:?}");
            }
        } else if meta.is_dir() {
            check_tree(root, &path);
        }
    }
}

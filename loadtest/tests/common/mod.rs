//! Shared by the load tester's integration tests.

use std::path::PathBuf;

/// The `kiln-coordinator` binary to test against: from `KILN_BIN_DIR` (test.sh sets it), else
/// beside `kiln-loadtest` in this build's target directory.
pub fn coordinator_binary() -> PathBuf {
    let dir = match std::env::var_os("KILN_BIN_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_kiln-loadtest"))
            .parent()
            .expect("the binary has a directory")
            .to_path_buf(),
    };
    let binary = dir.join("kiln-coordinator");
    assert!(
        binary.is_file(),
        "{} is missing: build it with `cargo build -p kiln-coordinator --bin kiln-coordinator` or set KILN_BIN_DIR",
        binary.display()
    );
    binary
}

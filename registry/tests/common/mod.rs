//! Test helper: a real CNCF Distribution registry (`docker-registry serve`) on a free loopback port.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Where Debian's `docker-registry` package installs the registry binary.
const REGISTRY_BINARY: &str = "/usr/bin/docker-registry";

/// A running registry; stopped when dropped.
pub struct TestRegistry {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub host: String,
    /// Filesystem storage root (`docker/registry/v2/...` below it).
    pub storage: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestRegistry {
    /// Starts a registry with filesystem storage in a temporary directory, listening on port 0
    /// (the kernel picks a free one), and waits until its log says it is listening.
    pub fn start() -> TestRegistry {
        let binary = std::env::var("KILN_TEST_REGISTRY_BINARY")
            .unwrap_or_else(|_| REGISTRY_BINARY.to_string());
        assert!(
            Path::new(&binary).exists(),
            "registry binary {binary} is missing: install Debian's docker-registry package \
             (apt-get install docker-registry) or set KILN_TEST_REGISTRY_BINARY"
        );
        let dir = tempfile::tempdir().expect("create a temporary directory for the registry");
        let storage = dir.path().join("storage");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n  secret: kiln-test-secret\n",
                storage.display()
            ),
        )
        .expect("write registry config");
        let mut child = Command::new(&binary)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("failed to start {binary}: {err}"));
        let stderr = child.stderr.take().expect("stderr is piped");

        // A thread reads the log: it reports the address once, then keeps draining so the pipe never fills.
        let (tx, rx) = mpsc::sync_channel::<String>(1);
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                        .collect();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let host = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(host) => host,
            Err(_) => {
                let _ = child.kill();
                panic!("the registry did not report its listening address within 30 s");
            }
        };
        TestRegistry {
            child,
            host,
            storage,
            _dir: dir,
        }
    }

    /// Path of a blob's data file in the registry's filesystem storage.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

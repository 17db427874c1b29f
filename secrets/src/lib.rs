//! Secret values sealed under the farm key.
//!
//! Values that must outlive the call that submitted them (`kiln build --secret-build-arg`,
//! `kiln run --set-secret`) are sealed by the coordinator as soon as it receives them and
//! stored, replicated and handed to agents only in that form. The farm key is a file of 32
//! random bytes (`farm.key`, beside the farm's certificates, mode 0600) given to the
//! coordinators and the agents with `--farm-key-file`; it never enters Raft or RocksDB.
//!
//! The AEAD is ChaCha20-Poly1305 from `ring` (the crypto provider the workspace's rustls
//! already uses). A sealed value is `ks1` ‖ key id (8 bytes) ‖ nonce (12 random bytes) ‖
//! ciphertext ‖ tag; the associated data binds it to its kind and name, so a sealed value
//! cannot be moved to another name. The key id (a hash of the key) lets an agent with
//! another farm key say so instead of "cannot decrypt".

use std::fmt;
use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

/// Length of the farm key file, in bytes.
pub const KEY_LEN: usize = 32;
const MAGIC: &[u8; 3] = b"ks1";
const KEY_ID_LEN: usize = 8;
/// Largest value accepted for sealing (bytes), like the agent's secret store limit.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("farm key {path}: cannot read it: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("farm key {path} holds {len} bytes; it must hold exactly {KEY_LEN} random bytes (create it with: head -c 32 /dev/urandom > {path} && chmod 600 {path})")]
    BadLength { path: PathBuf, len: usize },
    #[error("farm key {path} is readable by group or others (mode {mode:o}): chmod 600 {path}")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("secret {name}: its value is larger than {MAX_VALUE_BYTES} bytes")]
    TooLarge { name: String },
    #[error("secret {name}: sealed under another farm key (key id {found}, this one is {ours}): give this process the farm's farm.key with --farm-key-file")]
    OtherKey {
        name: String,
        found: String,
        ours: String,
    },
    #[error("secret {name}: the sealed value is damaged or was not sealed for this name")]
    Damaged { name: String },
    #[error("no random source for sealing")]
    Random,
}

/// What a sealed value is for; part of the associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `--secret-build-arg`: a build argument of every build step.
    BuildArg,
    /// `--set-secret`: a template value (`{{.Values.K}}`).
    Value,
}

impl Kind {
    fn label(self) -> &'static [u8] {
        match self {
            Kind::BuildArg => b"build-arg",
            Kind::Value => b"value",
        }
    }
}

/// The farm key, loaded from its file. Debug never prints the key.
pub struct FarmKey {
    key: LessSafeKey,
    id: [u8; KEY_ID_LEN],
}

impl fmt::Debug for FarmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FarmKey(id {})", hex_id(&self.id))
    }
}

fn hex_id(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

impl FarmKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> FarmKey {
        let mut hasher = Sha256::new();
        hasher.update(b"kiln farm key id\0");
        hasher.update(bytes);
        let digest = hasher.finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("32-byte key");
        FarmKey {
            key: LessSafeKey::new(unbound),
            id,
        }
    }

    /// Loads the key file: exactly 32 bytes, not readable by group or others.
    pub fn load(path: &Path) -> Result<FarmKey, SecretsError> {
        let unreadable = |source| SecretsError::Unreadable {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(unreadable)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(SecretsError::TooOpen {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        let bytes = std::fs::read(path).map_err(unreadable)?;
        let key: [u8; KEY_LEN] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| SecretsError::BadLength {
                    path: path.to_path_buf(),
                    len: bytes.len(),
                })?;
        Ok(FarmKey::from_bytes(&key))
    }

    /// Writes a new random key to `path` (mode 0600; fails if the file exists).
    pub fn generate_file(path: &Path) -> Result<(), SecretsError> {
        let mut key = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| SecretsError::Random)?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let unreadable = |source| SecretsError::Unreadable {
            path: path.to_path_buf(),
            source,
        };
        let mut file = options.open(path).map_err(unreadable)?;
        std::io::Write::write_all(&mut file, &key).map_err(unreadable)?;
        file.sync_all().map_err(unreadable)
    }

    /// The key's id, in hex (safe to print).
    pub fn id(&self) -> String {
        hex_id(&self.id)
    }

    /// Seals `value` as the secret `name` of kind `kind`.
    pub fn seal(&self, kind: Kind, name: &str, value: &str) -> Result<Vec<u8>, SecretsError> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(SecretsError::TooLarge {
                name: name.to_string(),
            });
        }
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SecretsError::Random)?;
        let mut data = value.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(kind, name)),
                &mut data,
            )
            .map_err(|_| SecretsError::Random)?;
        let mut out = Vec::with_capacity(MAGIC.len() + KEY_ID_LEN + NONCE_LEN + data.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(out)
    }

    /// Opens what [`FarmKey::seal`] made for the same kind and name.
    pub fn open(&self, kind: Kind, name: &str, sealed: &[u8]) -> Result<String, SecretsError> {
        let damaged = || SecretsError::Damaged {
            name: name.to_string(),
        };
        let header = MAGIC.len() + KEY_ID_LEN + NONCE_LEN;
        if sealed.len() < header || &sealed[..MAGIC.len()] != MAGIC {
            return Err(damaged());
        }
        let id = &sealed[MAGIC.len()..MAGIC.len() + KEY_ID_LEN];
        if id != self.id {
            return Err(SecretsError::OtherKey {
                name: name.to_string(),
                found: hex_id(id),
                ours: self.id(),
            });
        }
        let nonce: [u8; NONCE_LEN] = sealed[MAGIC.len() + KEY_ID_LEN..header]
            .try_into()
            .map_err(|_| damaged())?;
        let mut data = sealed[header..].to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(kind, name)),
                &mut data,
            )
            .map_err(|_| damaged())?;
        String::from_utf8(plain.to_vec()).map_err(|_| damaged())
    }
}

fn aad(kind: Kind, name: &str) -> Vec<u8> {
    let mut aad = b"kiln-secret\0".to_vec();
    aad.extend_from_slice(kind.label());
    aad.push(0);
    aad.extend_from_slice(name.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> FarmKey {
        FarmKey::from_bytes(&[byte; KEY_LEN])
    }

    #[test]
    fn seals_and_opens_and_the_value_is_not_in_the_sealed_bytes() {
        let k = key(7);
        let sealed = k.seal(Kind::Value, "TOKEN", "canary-s3cret").unwrap();
        assert!(!sealed
            .windows(b"canary-s3cret".len())
            .any(|w| w == b"canary-s3cret"));
        assert_eq!(
            k.open(Kind::Value, "TOKEN", &sealed).unwrap(),
            "canary-s3cret"
        );
        // Fresh nonces: sealing twice gives different bytes.
        assert_ne!(
            sealed,
            k.seal(Kind::Value, "TOKEN", "canary-s3cret").unwrap()
        );
    }

    #[test]
    fn refuses_another_name_kind_key_or_damage() {
        let k = key(7);
        let sealed = k.seal(Kind::BuildArg, "A", "v").unwrap();
        assert!(matches!(
            k.open(Kind::BuildArg, "B", &sealed),
            Err(SecretsError::Damaged { .. })
        ));
        assert!(matches!(
            k.open(Kind::Value, "A", &sealed),
            Err(SecretsError::Damaged { .. })
        ));
        let other = key(8)
            .open(Kind::BuildArg, "A", &sealed)
            .unwrap_err()
            .to_string();
        assert!(
            other.contains("another farm key") && other.contains("--farm-key-file"),
            "{other}"
        );
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            k.open(Kind::BuildArg, "A", &flipped),
            Err(SecretsError::Damaged { .. })
        ));
        assert!(matches!(
            k.open(Kind::BuildArg, "A", b"ks1"),
            Err(SecretsError::Damaged { .. })
        ));
        assert!(matches!(
            k.open(Kind::BuildArg, "A", b""),
            Err(SecretsError::Damaged { .. })
        ));
        let big = "x".repeat(MAX_VALUE_BYTES + 1);
        assert!(matches!(
            k.seal(Kind::Value, "A", &big),
            Err(SecretsError::TooLarge { .. })
        ));
    }

    #[test]
    fn key_files_are_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("farm.key");
        FarmKey::generate_file(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let a = FarmKey::load(&path).unwrap();
        let sealed = a.seal(Kind::Value, "n", "v").unwrap();
        assert_eq!(
            FarmKey::load(&path)
                .unwrap()
                .open(Kind::Value, "n", &sealed)
                .unwrap(),
            "v"
        );
        assert!(
            FarmKey::generate_file(&path).is_err(),
            "never overwrites a key"
        );
        assert!(!format!("{a:?}").contains(&format!("{:?}", std::fs::read(&path).unwrap())));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let open = FarmKey::load(&path).unwrap_err().to_string();
        assert!(open.contains("chmod 600"), "{open}");

        let short = dir.path().join("short.key");
        std::fs::write(&short, b"abc").unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = FarmKey::load(&short).unwrap_err().to_string();
        assert!(
            e.contains("holds 3 bytes") && e.contains("exactly 32"),
            "{e}"
        );
        let missing = FarmKey::load(&dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("cannot read"), "{missing}");
    }
}

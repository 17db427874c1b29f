//! Resolving the secrets a task file declares (`secrets:` entries with a `keyvault:` URL).
//!
//! ACR reads them from Azure Key Vault; a self-hosted agent cannot, so it asks a
//! [`SecretResolver`]. [`FileSecretStore`] is the one shipped: the secret with Key Vault URL
//! `https://<vault-host>/secrets/<name>[/<version>]` is the file `<dir>/<vault-host>/<name>`
//! (one trailing newline stripped). Another store (a real Key Vault client, a secrets manager)
//! is another implementation of the trait.
//!
//! Errors say which secret failed and what to do about it; they never carry a value, so they
//! can go into run reasons and logs as they are.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;

/// Largest secret value accepted (bytes). Values are masked in logs with a look-behind of this
/// size, so the limit also bounds the memory masking needs.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
/// Limit for resolving one secret (ACR's is also two minutes).
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(120);

/// One declared secret, as the task file names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretRef {
    /// The id templates use: `{{.Secrets.<id>}}`.
    pub id: String,
    /// The Key Vault secret URL (empty when the declaration has none).
    pub keyvault: String,
    /// The managed identity's client id (unused by the file store).
    pub client_id: String,
}

/// Why a secret could not be resolved. Messages never contain a secret value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret {id} ({keyvault}) cannot be resolved: this agent has no secret store; start kiln-agent with --secrets-dir DIR and put the value in DIR/<vault-host>/<secret-name>")]
    NoStore { id: String, keyvault: String },
    #[error("secret {id} has no keyvault URL: kiln agents resolve Key Vault secrets only")]
    NotKeyVault { id: String },
    #[error("secret {id}: {keyvault} is not a Key Vault secret URL (https://<vault-host>/secrets/<name>[/<version>]): {why}")]
    BadUrl {
        id: String,
        keyvault: String,
        why: String,
    },
    #[error("secret {id} ({keyvault}) is not in the agent's secret store: create the file {path} holding its value")]
    Missing {
        id: String,
        keyvault: String,
        path: PathBuf,
    },
    #[error("secret {id}: cannot read {path}: {source}")]
    Unreadable {
        id: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret {id}: {path} is not UTF-8 text")]
    NotText { id: String, path: PathBuf },
    #[error("secret {id}: {path} is larger than {MAX_SECRET_BYTES} bytes")]
    TooLarge { id: String, path: PathBuf },
    #[error("secret {id}: timed out after {}s resolving it", RESOLVE_TIMEOUT.as_secs())]
    Timeout { id: String },
    #[error("secret {id}: the value is larger than {MAX_SECRET_BYTES} bytes")]
    ValueTooLarge { id: String },
}

/// Where an agent gets secret values from.
pub trait SecretResolver: Send + Sync + fmt::Debug {
    /// The value of one declared secret.
    fn resolve<'a>(&'a self, secret: &'a SecretRef) -> BoxFuture<'a, Result<String, SecretError>>;
}

/// The resolver of an agent started without a secret store: every secret fails with a reason
/// that says how to configure one.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSecretStore;

impl SecretResolver for NoSecretStore {
    fn resolve<'a>(&'a self, secret: &'a SecretRef) -> BoxFuture<'a, Result<String, SecretError>> {
        Box::pin(async move {
            if secret.keyvault.is_empty() {
                return Err(SecretError::NotKeyVault {
                    id: secret.id.clone(),
                });
            }
            Err(SecretError::NoStore {
                id: secret.id.clone(),
                keyvault: secret.keyvault.clone(),
            })
        })
    }
}

/// Secrets as files: `<dir>/<vault-host>/<secret-name>`.
#[derive(Debug, Clone)]
pub struct FileSecretStore {
    dir: PathBuf,
}

impl FileSecretStore {
    pub fn new(dir: impl Into<PathBuf>) -> FileSecretStore {
        FileSecretStore { dir: dir.into() }
    }

    /// The file that holds the secret with this Key Vault URL.
    pub fn path_for(&self, secret: &SecretRef) -> Result<PathBuf, SecretError> {
        if secret.keyvault.is_empty() {
            return Err(SecretError::NotKeyVault {
                id: secret.id.clone(),
            });
        }
        let url = parse_keyvault_url(&secret.keyvault).map_err(|why| SecretError::BadUrl {
            id: secret.id.clone(),
            keyvault: secret.keyvault.clone(),
            why,
        })?;
        Ok(self.dir.join(url.host).join(url.name))
    }
}

impl SecretResolver for FileSecretStore {
    fn resolve<'a>(&'a self, secret: &'a SecretRef) -> BoxFuture<'a, Result<String, SecretError>> {
        Box::pin(async move {
            let path = self.path_for(secret)?;
            read_secret_file(&secret.id, &secret.keyvault, &path).await
        })
    }
}

async fn read_secret_file(id: &str, keyvault: &str, path: &Path) -> Result<String, SecretError> {
    let unreadable = |source| SecretError::Unreadable {
        id: id.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let meta = match tokio::fs::metadata(path).await {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SecretError::Missing {
                id: id.to_string(),
                keyvault: keyvault.to_string(),
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(unreadable(e)),
    };
    // One extra byte for the trailing newline that is stripped.
    if meta.len() > MAX_SECRET_BYTES as u64 + 2 {
        return Err(SecretError::TooLarge {
            id: id.to_string(),
            path: path.to_path_buf(),
        });
    }
    let bytes = tokio::fs::read(path).await.map_err(unreadable)?;
    let mut text = String::from_utf8(bytes).map_err(|_| SecretError::NotText {
        id: id.to_string(),
        path: path.to_path_buf(),
    })?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.len() > MAX_SECRET_BYTES {
        return Err(SecretError::TooLarge {
            id: id.to_string(),
            path: path.to_path_buf(),
        });
    }
    Ok(text)
}

/// Fixed values by secret id, for tests and embedding.
#[derive(Debug, Clone, Default)]
pub struct StaticSecrets(pub BTreeMap<String, String>);

impl SecretResolver for StaticSecrets {
    fn resolve<'a>(&'a self, secret: &'a SecretRef) -> BoxFuture<'a, Result<String, SecretError>> {
        Box::pin(async move {
            self.0
                .get(&secret.id)
                .cloned()
                .ok_or_else(|| SecretError::Missing {
                    id: secret.id.clone(),
                    keyvault: secret.keyvault.clone(),
                    path: PathBuf::from(&secret.id),
                })
        })
    }
}

/// Resolves every declared secret, one after the other, each under [`RESOLVE_TIMEOUT`].
/// Returns the values by id, or the first failure.
pub async fn resolve_all(
    resolver: &dyn SecretResolver,
    secrets: &[SecretRef],
) -> Result<BTreeMap<String, String>, SecretError> {
    let mut values = BTreeMap::new();
    for secret in secrets {
        if values.contains_key(&secret.id) {
            continue;
        }
        let value = tokio::time::timeout(RESOLVE_TIMEOUT, resolver.resolve(secret))
            .await
            .map_err(|_| SecretError::Timeout {
                id: secret.id.clone(),
            })??;
        // The masking look-behind is as long as the longest value: keep it bounded whatever
        // the store.
        if value.len() > MAX_SECRET_BYTES {
            return Err(SecretError::ValueTooLarge {
                id: secret.id.clone(),
            });
        }
        values.insert(secret.id.clone(), value);
    }
    Ok(values)
}

/// The parts of a Key Vault secret URL the file store uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVaultUrl {
    pub host: String,
    pub name: String,
    pub version: Option<String>,
}

/// Parses `https://<vault-host>/secrets/<name>[/<version>][/]`, the only form ACR accepts.
///
/// Hand-written rather than with a URL crate: the accepted form is this narrow, and the host
/// and name become path components, so every character is checked here anyway.
pub fn parse_keyvault_url(url: &str) -> Result<KeyVaultUrl, String> {
    let rest = url
        .get(..8)
        .filter(|scheme| scheme.eq_ignore_ascii_case("https://"))
        .map(|_| &url[8..])
        .ok_or_else(|| "only https URLs are accepted".to_string())?;
    if rest.contains(['?', '#', '@']) {
        return Err("query strings, fragments and user names are not accepted".to_string());
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let parts: Vec<&str> = rest.split('/').collect();
    let (host, name, version) = match parts.as_slice() {
        [host, "secrets", name] => (*host, *name, None),
        [host, "secrets", name, version] => (*host, *name, Some(*version)),
        _ => return Err("the path must be /secrets/<name>[/<version>]".to_string()),
    };
    let host_ok = !host.is_empty()
        && !host.starts_with('.')
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
    if !host_ok {
        return Err(format!("{host:?} is not a host name"));
    }
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(format!(
            "secret name {name:?} may only hold letters, digits and -"
        ));
    }
    if let Some(v) = version {
        if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!(
                "secret version {v:?} may only hold letters and digits"
            ));
        }
    }
    Ok(KeyVaultUrl {
        host: host.to_ascii_lowercase(),
        name: name.to_string(),
        version: version.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(id: &str, keyvault: &str) -> SecretRef {
        SecretRef {
            id: id.into(),
            keyvault: keyvault.into(),
            client_id: String::new(),
        }
    }

    #[test]
    fn parses_key_vault_urls() {
        assert_eq!(
            parse_keyvault_url("https://MyVault.vault.azure.net/secrets/db-password").unwrap(),
            KeyVaultUrl {
                host: "myvault.vault.azure.net".into(),
                name: "db-password".into(),
                version: None
            }
        );
        let with_version =
            parse_keyvault_url("https://v.vault.azure.net/secrets/x/0123abcd/").unwrap();
        assert_eq!(with_version.version.as_deref(), Some("0123abcd"));
        for bad in [
            "http://v.vault.azure.net/secrets/x",
            "https://v.vault.azure.net/keys/x",
            "https://v.vault.azure.net/secrets/",
            "https://v.vault.azure.net/secrets/../x",
            "https://../secrets/x",
            "https://v.vault.azure.net/secrets/x?api=1",
            "https://u@v/secrets/x",
            "https://v/secrets/x/1/2",
            "https://v/secrets/a_b",
            "",
        ] {
            assert!(parse_keyvault_url(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn file_store_reads_the_value_without_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let vault = dir.path().join("v.vault.azure.net");
        std::fs::create_dir_all(&vault).unwrap();
        std::fs::write(vault.join("token"), "s3cret value\n").unwrap();
        std::fs::write(vault.join("crlf"), "line\r\n").unwrap();
        std::fs::write(vault.join("two-lines"), "a\nb\n\n").unwrap();
        let store = FileSecretStore::new(dir.path());
        let get = |name: &str| {
            let s = secret(
                "id",
                &format!("https://V.vault.azure.net/secrets/{name}/abc"),
            );
            let store = store.clone();
            async move { store.resolve(&s).await }
        };
        assert_eq!(get("token").await.unwrap(), "s3cret value");
        assert_eq!(get("crlf").await.unwrap(), "line");
        assert_eq!(get("two-lines").await.unwrap(), "a\nb\n");
    }

    #[tokio::test]
    async fn errors_name_the_secret_and_the_file_never_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileSecretStore::new(dir.path());
        let missing = store
            .resolve(&secret("db", "https://v.vault.azure.net/secrets/pw"))
            .await
            .unwrap_err()
            .to_string();
        let expected = dir.path().join("v.vault.azure.net").join("pw");
        assert!(missing.contains("secret db"), "{missing}");
        assert!(
            missing.contains(&format!("create the file {}", expected.display())),
            "{missing}"
        );
        assert_eq!(missing.lines().count(), 1);

        std::fs::create_dir_all(dir.path().join("v")).unwrap();
        std::fs::write(
            dir.path().join("v").join("big"),
            vec![b'x'; MAX_SECRET_BYTES + 10],
        )
        .unwrap();
        std::fs::write(dir.path().join("v").join("bin"), [0xff, 0xfe, b'x']).unwrap();
        let big = store
            .resolve(&secret("b", "https://v/secrets/big"))
            .await
            .unwrap_err()
            .to_string();
        assert!(big.contains("larger than") && !big.contains("xxx"), "{big}");
        let bin = store
            .resolve(&secret("n", "https://v/secrets/bin"))
            .await
            .unwrap_err();
        assert!(matches!(bin, SecretError::NotText { .. }));

        let no_vault = store.resolve(&secret("m", "")).await.unwrap_err();
        assert!(no_vault.to_string().contains("no keyvault URL"));
        let no_store = NoSecretStore
            .resolve(&secret("t", "https://v/secrets/t"))
            .await
            .unwrap_err()
            .to_string();
        assert!(no_store.contains("--secrets-dir"), "{no_store}");
    }

    #[tokio::test]
    async fn resolve_all_stops_at_the_first_failure() {
        let store = StaticSecrets(BTreeMap::from([("a".to_string(), "1".to_string())]));
        let ok = resolve_all(&store, &[secret("a", "https://v/secrets/a")])
            .await
            .unwrap();
        assert_eq!(ok.get("a").map(String::as_str), Some("1"));
        let err = resolve_all(
            &store,
            &[
                secret("a", "https://v/secrets/a"),
                secret("b", "https://v/secrets/b"),
            ],
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("secret b"));
        let huge = StaticSecrets(BTreeMap::from([(
            "h".to_string(),
            "x".repeat(MAX_SECRET_BYTES + 1),
        )]));
        let err = resolve_all(&huge, &[secret("h", "https://v/secrets/h")])
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("larger than") && !err.contains("xxx"), "{err}");
    }
}

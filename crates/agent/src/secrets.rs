//! App secrets at rest: sealed with ChaCha20-Poly1305 under a key kept in the data dir, so a
//! copy of the database alone reveals nothing. Values are opened only to launch a machine.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sha2::{Digest, Sha256};

use hangar_store::{SecretRecord, StoreError};
use hangar_types::{
    valid_secret_name, AppSecret, AppSecrets, DeleteSecretResponse, SetSecretResponse,
    UpdateSecretsResponse,
};
use tracing::info;

use crate::error::AgentError;
use crate::events::{now_ms, rfc3339};
use crate::{Agent, Inner};

const KEY_FILE: &str = "secrets.key";
const NONCE_LEN: usize = 12;

pub(crate) struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl Sealer {
    /// Reads the host's secrets key, making one (mode 0600) on first use.
    pub(crate) fn open(data_dir: &Path) -> Result<Sealer, AgentError> {
        let path = data_dir.join(KEY_FILE);
        let key = match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == 32 => bytes,
            Ok(bytes) => {
                return Err(AgentError::Internal(format!(
                    "{} holds {} bytes, not a 32-byte key",
                    path.display(),
                    bytes.len()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = ChaCha20Poly1305::generate_key(&mut OsRng).to_vec();
                let tmp = path.with_extension("key.tmp");
                let written = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .and_then(|mut f| {
                        f.write_all(&key)?;
                        f.sync_all()
                    })
                    .and_then(|()| std::fs::rename(&tmp, &path));
                written.map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    AgentError::Internal(format!("cannot write {}: {e}", path.display()))
                })?;
                key
            }
            Err(e) => {
                return Err(AgentError::Internal(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        Ok(Sealer {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        })
    }

    /// `nonce || ciphertext`, with the secret's name bound in so sealed values cannot be
    /// swapped between names.
    pub(crate) fn seal(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, AgentError> {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let payload = chacha20poly1305::aead::Payload {
            msg: value,
            aad: name.as_bytes(),
        };
        let sealed = self
            .cipher
            .encrypt(&nonce, payload)
            .map_err(|_| AgentError::Internal("secret encryption failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend(sealed);
        Ok(out)
    }

    pub(crate) fn open_value(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, AgentError> {
        if sealed.len() < NONCE_LEN {
            return Err(AgentError::Internal(format!("secret {name} is corrupt")));
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let payload = chacha20poly1305::aead::Payload {
            msg: body,
            aad: name.as_bytes(),
        };
        self.cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .map_err(|_| {
                AgentError::Internal(format!(
                    "secret {name} cannot be decrypted with this host's key (was secrets.key replaced?)"
                ))
            })
    }
}

/// What identifies a value in listings without revealing it.
pub(crate) fn digest(value: &[u8]) -> String {
    hex::encode(&Sha256::digest(value)[..8])
}

/// An app's secrets, opened, for a launch.
pub(crate) type Opened = BTreeMap<String, Vec<u8>>;

impl Inner {
    /// The app's secrets, opened, for a launch.
    pub(crate) fn secrets_for(&self, app: &str) -> Result<Opened, AgentError> {
        let (records, _) = self.store.secrets(app)?;
        records
            .into_iter()
            .map(|r| Ok((r.name.clone(), self.sealer.open_value(&r.name, &r.sealed)?)))
            .collect()
    }
}

fn to_api(r: SecretRecord) -> AppSecret {
    AppSecret {
        name: r.name,
        digest: r.digest,
        created_at: rfc3339(r.created_at_ms),
        updated_at: rfc3339(r.updated_at_ms),
    }
}

/// The longest value a secret may hold: it ends up in an environment or a small file.
const MAX_SECRET_BYTES: usize = 64 * 1024;

impl Agent {
    /// Fails when the app's secrets have not reached `min` yet (a client that just set a
    /// secret asks for at least that version).
    pub(crate) fn require_secrets_version(
        &self,
        app: &str,
        min: Option<u64>,
    ) -> Result<(), AgentError> {
        let Some(min) = min else { return Ok(()) };
        let (_, version) = self.inner.store.secrets(app)?;
        if version < min {
            return Err(AgentError::FailedPrecondition(format!(
                "min_secrets_version: app {app:?} secrets are at version {version}, not yet {min}"
            )));
        }
        Ok(())
    }

    pub fn list_secrets(
        &self,
        app: &str,
        min_version: Option<u64>,
    ) -> Result<AppSecrets, AgentError> {
        self.app_record(app)?;
        self.require_secrets_version(app, min_version)?;
        let (records, _) = self.inner.store.secrets(app)?;
        Ok(AppSecrets {
            secrets: records.into_iter().map(to_api).collect(),
        })
    }

    pub fn get_secret(&self, app: &str, name: &str) -> Result<AppSecret, AgentError> {
        self.app_record(app)?;
        let (records, _) = self.inner.store.secrets(app)?;
        records
            .into_iter()
            .find(|r| r.name == name)
            .map(to_api)
            .ok_or_else(|| AgentError::NotFound(format!("app {app:?} has no secret {name:?}")))
    }

    /// Sets and removes secrets in one step (a `None` value removes); returns the new version.
    pub fn update_secrets(
        &self,
        app: &str,
        values: BTreeMap<String, Option<String>>,
    ) -> Result<UpdateSecretsResponse, AgentError> {
        self.app_record(app)?;
        let mut changes = Vec::with_capacity(values.len());
        let now = now_ms();
        for (name, value) in values {
            valid_secret_name(&name).map_err(AgentError::InvalidArgument)?;
            let record = match value {
                None => None,
                Some(v) => Some(self.seal_record(&name, &v, now)?),
            };
            changes.push((name, record));
        }
        let version = self.inner.store.update_secrets(app, &changes, false)?;
        info!(app, version, "secrets updated");
        let (records, _) = self.inner.store.secrets(app)?;
        Ok(UpdateSecretsResponse {
            secrets: records.into_iter().map(to_api).collect(),
            version,
            version_deprecated: version,
        })
    }

    pub fn set_secret(
        &self,
        app: &str,
        name: &str,
        value: &str,
    ) -> Result<SetSecretResponse, AgentError> {
        self.app_record(app)?;
        valid_secret_name(name).map_err(AgentError::InvalidArgument)?;
        let record = self.seal_record(name, value, now_ms())?;
        let version =
            self.inner
                .store
                .update_secrets(app, &[(name.to_string(), Some(record))], true)?;
        info!(app, version, secret = name, "secret set");
        Ok(SetSecretResponse {
            secret: self.get_secret(app, name)?,
            version,
            version_deprecated: version,
        })
    }

    pub fn delete_secret(&self, app: &str, name: &str) -> Result<DeleteSecretResponse, AgentError> {
        self.app_record(app)?;
        let version = self
            .inner
            .store
            .update_secrets(app, &[(name.to_string(), None)], true)
            .map_err(|e| match e {
                StoreError::NotFound(_) => {
                    AgentError::NotFound(format!("app {app:?} has no secret {name:?}"))
                }
                other => other.into(),
            })?;
        info!(app, version, secret = name, "secret deleted");
        Ok(DeleteSecretResponse {
            version,
            version_deprecated: version,
        })
    }

    fn seal_record(&self, name: &str, value: &str, now: i64) -> Result<SecretRecord, AgentError> {
        if value.len() > MAX_SECRET_BYTES {
            return Err(AgentError::InvalidArgument(format!(
                "secret {name:?}: the value is {} bytes, over the {MAX_SECRET_BYTES}-byte limit",
                value.len()
            )));
        }
        Ok(SecretRecord {
            name: name.to_string(),
            sealed: self.inner.sealer.seal(name, value.as_bytes())?,
            digest: digest(value.as_bytes()),
            created_at_ms: now,
            updated_at_ms: now,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_and_binding() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::open(dir.path()).unwrap();
        let sealed = sealer.seal("DB_URL", b"postgres://x").unwrap();
        assert!(!sealed.windows(8).any(|w| w == b"postgres"));
        assert_eq!(
            sealer.open_value("DB_URL", &sealed).unwrap(),
            b"postgres://x"
        );
        assert!(
            sealer.open_value("OTHER", &sealed).is_err(),
            "name is bound in"
        );

        // The key persists across opens, with owner-only permissions.
        let again = Sealer::open(dir.path()).unwrap();
        assert_eq!(
            again.open_value("DB_URL", &sealed).unwrap(),
            b"postgres://x"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

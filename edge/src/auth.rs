//! API keys: a key maps to exactly one (tenant, environment). Keys are stored as SHA-256 hashes;
//! lookup is by hash and the final comparison is constant-time, so neither the file nor timing
//! reveals a key. API keys are 192-bit random strings, so a fast hash is the right tool (a
//! password KDF protects low-entropy secrets and would cost every request milliseconds).

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of every key `sluicectl keys new` generates; lets secret scanners find leaked keys.
pub const KEY_PREFIX: &str = "slk_";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    #[serde(default)]
    pub keys: Vec<KeyEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// Public identifier for listing and revocation (never the secret).
    pub id: String,
    /// `sha256:<hex>` of the secret key.
    pub hash: String,
    pub tenant: String,
    pub env: String,
    #[serde(default)]
    pub revoked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub tenant: String,
    pub env: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing API key (send `Authorization: Bearer <key>` or `X-Api-Key: <key>`)")]
    Missing,
    #[error("unknown API key")]
    Unknown,
    #[error("API key has been revoked")]
    Revoked,
}

#[derive(Debug, thiserror::Error)]
pub enum KeysFileError {
    #[error("reading {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("parsing {path}: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("key {id}: hash must be `sha256:` followed by 64 hex digits")]
    BadHash { id: String },
}

pub fn hash_key(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

pub fn format_hash(hash: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(hash))
}

fn parse_hash(s: &str) -> Option<[u8; 32]> {
    let hex_part = s.strip_prefix("sha256:")?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).ok()?;
    Some(out)
}

/// An immutable snapshot of the keys file, indexed by key hash.
#[derive(Debug, Default)]
pub struct KeyStore {
    by_hash: HashMap<[u8; 32], KeyEntry>,
}

impl KeyStore {
    pub fn from_file(file: KeysFile) -> Result<Self, KeysFileError> {
        let mut by_hash = HashMap::with_capacity(file.keys.len());
        for entry in file.keys {
            let hash = parse_hash(&entry.hash).ok_or_else(|| KeysFileError::BadHash { id: entry.id.clone() })?;
            by_hash.insert(hash, entry);
        }
        Ok(Self { by_hash })
    }

    pub fn load(path: &Path) -> Result<Self, KeysFileError> {
        Self::from_file(read_keys_file(path)?)
    }

    pub fn authenticate(&self, secret: Option<&str>) -> Result<Principal, AuthError> {
        let secret = secret.ok_or(AuthError::Missing)?;
        let presented = hash_key(secret);
        let (stored, entry) = self.by_hash.get_key_value(&presented).ok_or(AuthError::Unknown)?;
        if !bool::from(stored.ct_eq(&presented)) {
            return Err(AuthError::Unknown);
        }
        if entry.revoked {
            return Err(AuthError::Revoked);
        }
        Ok(Principal { key_id: entry.id.clone(), tenant: entry.tenant.clone(), env: entry.env.clone() })
    }
}

pub fn read_keys_file(path: &Path) -> Result<KeysFile, KeysFileError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| KeysFileError::Io { path: display.clone(), source })?;
    toml::from_str(&text).map_err(|source| KeysFileError::Parse { path: display, source })
}

/// Creates a new random key for (tenant, env); returns the entry to store and the secret to hand
/// out once.
pub fn new_key(tenant: &str, env: &str) -> (KeyEntry, String) {
    use rand::Rng;
    let mut rng = rand::rng();
    let secret_bytes: [u8; 24] = rng.random();
    let id_bytes: [u8; 6] = rng.random();
    let secret = format!("{KEY_PREFIX}{}", hex::encode(secret_bytes));
    let entry = KeyEntry {
        id: format!("key_{}", hex::encode(id_bytes)),
        hash: format_hash(&hash_key(&secret)),
        tenant: tenant.into(),
        env: env.into(),
        revoked: false,
    };
    (entry, secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authenticates_known_refuses_unknown_and_revoked() {
        let (a, secret_a) = new_key("acme", "prod");
        let (mut b, secret_b) = new_key("acme", "dev");
        b.revoked = true;
        let store = KeyStore::from_file(KeysFile { keys: vec![a.clone(), b] }).unwrap();
        let p = store.authenticate(Some(&secret_a)).unwrap();
        assert_eq!((p.tenant.as_str(), p.env.as_str(), p.key_id), ("acme", "prod", a.id));
        assert_eq!(store.authenticate(Some(&secret_b)), Err(AuthError::Revoked));
        assert_eq!(store.authenticate(Some("slk_nope")), Err(AuthError::Unknown));
        assert_eq!(store.authenticate(None), Err(AuthError::Missing));
    }

    #[test]
    fn the_file_never_holds_the_secret() {
        let (entry, secret) = new_key("t", "e");
        let text = toml::to_string(&KeysFile { keys: vec![entry] }).unwrap();
        assert!(!text.contains(&secret));
        assert!(!text.contains(&secret[KEY_PREFIX.len()..]));
    }
}

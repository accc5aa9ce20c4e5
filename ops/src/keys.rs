//! `sluicectl keys new|list|revoke`: edits the edge's keys file, which holds only key hashes.
//! The edge's file is replaced atomically so a running edge never reads a half-written file.

use std::path::Path;

use anyhow::Context;
use sluice_edge::ingest::auth::{KeysFile, TenantEnv, new_key, read_keys_file};

fn load_or_empty(path: &Path) -> anyhow::Result<KeysFile> {
    if path.exists() { Ok(read_keys_file(path)?) } else { Ok(KeysFile::default()) }
}

/// Writes `file` to `path` via a temporary file and rename.
pub fn save(path: &Path, file: &KeysFile) -> anyhow::Result<()> {
    let text = toml::to_string_pretty(file).context("encoding keys file")?;
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// Adds a key for (tenant, env) and returns `(key id, secret)`; the secret is shown once.
pub fn add(path: &Path, tenant: &str, env: &str) -> anyhow::Result<(String, String)> {
    add_with_signing(path, tenant, env, None)
}

/// Like [`add`], optionally requiring `X-Signature` HMACs made with `signing_secret` (hex).
pub fn add_with_signing(
    path: &Path,
    tenant: &str,
    env: &str,
    signing_secret: Option<String>,
) -> anyhow::Result<(String, String)> {
    let mut file = load_or_empty(path)?;
    let (mut entry, secret) = new_key(tenant, env);
    entry.signing_secret = signing_secret;
    let id = entry.id.clone();
    file.keys.push(entry);
    save(path, &file)?;
    Ok((id, secret))
}

pub fn list(path: &Path) -> anyhow::Result<KeysFile> {
    load_or_empty(path)
}

pub fn revoke(path: &Path, id: &str) -> anyhow::Result<()> {
    let mut file = load_or_empty(path)?;
    let entry = file
        .keys
        .iter_mut()
        .find(|k| k.id == id)
        .with_context(|| format!("no key with id {id} in {}", path.display()))?;
    entry.revoked = true;
    save(path, &file)
}

/// Sets a tenant's events/s quota (`[tenants.<name>] events_per_sec`).
pub fn set_quota(path: &Path, tenant: &str, events_per_sec: u32) -> anyhow::Result<()> {
    let mut file = load_or_empty(path)?;
    file.tenants.entry(tenant.into()).or_default().events_per_sec = Some(events_per_sec);
    save(path, &file)
}

/// Routes a tenant's accepted events to the overflow lane, or back (`[tenants.<name>] overflow`).
pub fn set_overflow(path: &Path, tenant: &str, overflow: bool) -> anyhow::Result<()> {
    let mut file = load_or_empty(path)?;
    file.tenants.entry(tenant.into()).or_default().overflow = overflow;
    save(path, &file)
}

/// Turns the kill switch for a tenant (`env: None`) or one environment on or off.
pub fn set_disabled(path: &Path, tenant: &str, env: Option<&str>, disabled: bool) -> anyhow::Result<()> {
    let mut file = load_or_empty(path)?;
    match env {
        None => {
            file.disabled_tenants.retain(|t| t != tenant);
            if disabled {
                file.disabled_tenants.push(tenant.into());
            }
        }
        Some(env) => {
            let entry = TenantEnv { tenant: tenant.into(), env: env.into() };
            file.disabled_envs.retain(|e| *e != entry);
            if disabled {
                file.disabled_envs.push(entry);
            }
        }
    }
    save(path, &file)
}

/// 32 random bytes, hex: an HMAC-SHA256 key.
pub fn new_signing_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_list_revoke_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let (id, secret) = add(&path, "acme", "prod").unwrap();
        let (_, signed) = add_with_signing(&path, "acme", "prod", Some(new_signing_secret())).unwrap();
        revoke(&path, &id).unwrap();
        let file = list(&path).unwrap();
        assert_eq!(file.keys.len(), 2);
        assert!(file.keys[0].revoked && !file.keys[1].revoked);
        assert_eq!(file.keys[1].signing_secret.as_ref().map(String::len), Some(64));
        let store = sluice_edge::ingest::auth::KeyStore::load(&path).unwrap();
        assert_eq!(store.authenticate(Some(&secret)), Err(sluice_edge::ingest::auth::AuthError::Revoked));
        assert!(store.authenticate(Some(&signed)).unwrap().signing_secret.is_some());
        assert!(revoke(&path, "key_missing").is_err());
    }

    #[test]
    fn quotas_and_kill_switch_round_trip_through_the_file() {
        use sluice_edge::ingest::auth::AuthError;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let (_, prod) = add(&path, "acme", "prod").unwrap();
        let (_, dev) = add(&path, "acme", "dev").unwrap();
        set_overflow(&path, "acme", true).unwrap();
        set_quota(&path, "acme", 250).unwrap();
        set_disabled(&path, "acme", Some("dev"), true).unwrap();
        let store = sluice_edge::ingest::auth::KeyStore::load(&path).unwrap();
        assert_eq!(store.quota("acme"), Some(250));
        assert!(store.overflow_tenants().contains("acme"), "a quota change keeps the overflow route");
        set_overflow(&path, "acme", false).unwrap();
        let store = sluice_edge::ingest::auth::KeyStore::load(&path).unwrap();
        assert!(store.overflow_tenants().is_empty());
        assert_eq!(store.quota("acme"), Some(250), "and un-routing keeps the quota");
        assert_eq!(store.authenticate(Some(&dev)), Err(AuthError::EnvDisabled));
        assert!(store.authenticate(Some(&prod)).is_ok());
        set_disabled(&path, "acme", None, true).unwrap();
        set_disabled(&path, "acme", None, true).unwrap();
        assert_eq!(list(&path).unwrap().disabled_tenants, vec!["acme".to_string()], "no duplicate entries");
        let store = sluice_edge::ingest::auth::KeyStore::load(&path).unwrap();
        assert_eq!(store.authenticate(Some(&prod)), Err(AuthError::TenantDisabled));
        set_disabled(&path, "acme", None, false).unwrap();
        set_disabled(&path, "acme", Some("dev"), false).unwrap();
        let store = sluice_edge::ingest::auth::KeyStore::load(&path).unwrap();
        assert!(store.authenticate(Some(&dev)).is_ok());
    }
}

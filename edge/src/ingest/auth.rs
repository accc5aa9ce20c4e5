//! API keys: a key maps to exactly one (tenant, environment). Keys are stored as SHA-256 hashes;
//! lookup is by hash and the final comparison is constant-time, so neither the file nor timing
//! reveals a key. API keys are 192-bit random strings, so a fast hash is the right tool (a
//! password KDF protects low-entropy secrets and would cost every request milliseconds).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sluice_wire::Stream;
use subtle::ConstantTimeEq;

/// Prefix of every key `sluicectl keys new` generates; lets secret scanners find leaked keys.
pub const KEY_PREFIX: &str = "slk_";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysFile {
    /// Kill switch: every key of these tenants gets 403, without touching the keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disabled_tenants: Vec<String>,
    /// Kill switch for one environment of a tenant: its keys get 403, the tenant's other
    /// environments keep working.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disabled_envs: Vec<TenantEnv>,
    /// Per-tenant settings (quotas), by tenant name. Tenants not listed get the edge's defaults.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tenants: BTreeMap<String, TenantSettings>,
    #[serde(default)]
    pub keys: Vec<KeyEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantEnv {
    pub tenant: String,
    pub env: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantSettings {
    /// Events per second this tenant may send to one edge, burst 3×; `0` means unlimited. Unset:
    /// the edge's `admission.tenant_events_per_sec`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_per_sec: Option<u32>,
    /// Route every environment of the tenant to the overflow lane (`events.<region>.overflow`)
    /// instead of its region's topic. Default false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub overflow: bool,
}

/// A whole tenant, or one of its environments: what an operator blocks or routes to overflow at
/// runtime (admin API).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantScope {
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

impl TenantScope {
    fn covers(&self, p: &Principal) -> bool {
        self.tenant == p.tenant && self.env.as_ref().is_none_or(|e| *e == p.env)
    }
}

/// What operators set through the admin API, stored durably (the edge's state store) before the
/// call answers and restored at startup: it lasts until undone, across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Controls {
    /// Kill switch: these get `403`.
    pub blocks: BTreeSet<TenantScope>,
    /// Their accepted events go to the overflow lane.
    pub overflow: BTreeSet<TenantScope>,
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
    /// Hex HMAC-SHA256 secret. When set, every request with this key must carry a valid
    /// `X-Signature`. (Unlike the key itself it cannot be stored hashed: the edge must compute
    /// the HMAC.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub tenant: String,
    pub env: String,
    pub signing_secret: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing API key (send `Authorization: Bearer <key>`, `X-Api-Key: <key>` or `?api_key=<key>`)")]
    Missing,
    /// An `Authorization` header of another scheme than `Bearer`, and no key elsewhere.
    #[error(
        "`Authorization: {0}` is not supported: send the key as `Authorization: Bearer <key>`, `X-Api-Key: <key>` or `?api_key=<key>`"
    )]
    UnsupportedScheme(String),
    #[error("unknown API key")]
    Unknown,
    #[error("API key has been revoked")]
    Revoked,
    #[error("tenant is disabled")]
    TenantDisabled,
    #[error("this environment of the tenant is disabled")]
    EnvDisabled,
}

#[derive(Debug, thiserror::Error)]
pub enum KeysFileError {
    #[error("reading {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("parsing {path}: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("key {id}: hash must be `sha256:` followed by 64 hex digits")]
    BadHash { id: String },
    #[error("key {id}: signing_secret must be hex")]
    BadSigningSecret { id: String },
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
    by_hash: HashMap<[u8; 32], Principal>,
    revoked: HashSet<[u8; 32]>,
    disabled_tenants: HashSet<String>,
    disabled_envs: HashSet<(String, String)>,
    quotas: BTreeMap<String, u32>,
    overflow_tenants: BTreeSet<String>,
}

impl KeyStore {
    pub fn from_file(file: KeysFile) -> Result<Self, KeysFileError> {
        let mut store = KeyStore {
            disabled_tenants: file.disabled_tenants.into_iter().collect(),
            disabled_envs: file.disabled_envs.into_iter().map(|b| (b.tenant, b.env)).collect(),
            quotas: file.tenants.iter().filter_map(|(t, s)| Some((t.clone(), s.events_per_sec?))).collect(),
            overflow_tenants: file.tenants.into_iter().filter(|(_, s)| s.overflow).map(|(t, _)| t).collect(),
            ..Self::default()
        };
        for entry in file.keys {
            let hash = parse_hash(&entry.hash).ok_or_else(|| KeysFileError::BadHash { id: entry.id.clone() })?;
            let signing_secret = match &entry.signing_secret {
                Some(h) => Some(hex::decode(h).map_err(|_| KeysFileError::BadSigningSecret { id: entry.id.clone() })?),
                None => None,
            };
            if entry.revoked {
                store.revoked.insert(hash);
            }
            store
                .by_hash
                .insert(hash, Principal { key_id: entry.id, tenant: entry.tenant, env: entry.env, signing_secret });
        }
        Ok(store)
    }

    pub fn load(path: &Path) -> Result<Self, KeysFileError> {
        Self::from_file(read_keys_file(path)?)
    }

    pub fn authenticate(&self, secret: Option<&str>) -> Result<Principal, AuthError> {
        let secret = secret.ok_or(AuthError::Missing)?;
        let presented = hash_key(secret);
        let (stored, principal) = self.by_hash.get_key_value(&presented).ok_or(AuthError::Unknown)?;
        if !bool::from(stored.ct_eq(&presented)) {
            return Err(AuthError::Unknown);
        }
        if self.revoked.contains(stored) {
            return Err(AuthError::Revoked);
        }
        if self.disabled_tenants.contains(&principal.tenant) {
            return Err(AuthError::TenantDisabled);
        }
        if self.disabled_envs.contains(&(principal.tenant.clone(), principal.env.clone())) {
            return Err(AuthError::EnvDisabled);
        }
        Ok(principal.clone())
    }

    /// The tenant's configured events/s, if the keys file sets one.
    pub fn quota(&self, tenant: &str) -> Option<u32> {
        self.quotas.get(tenant).copied()
    }

    /// Every tenant with a configured quota (bounded by the file: the metric label set).
    pub fn quotas(&self) -> &BTreeMap<String, u32> {
        &self.quotas
    }

    /// Tenants the keys file routes to the overflow lane.
    pub fn overflow_tenants(&self) -> &BTreeSet<String> {
        &self.overflow_tenants
    }
}

/// The live key store, swapped atomically when the keys file changes: rotation without restart
/// (add the new key, roll clients, revoke the old one) and an instant kill switch.
pub struct KeyRing {
    path: PathBuf,
    current: ArcSwap<KeyStore>,
    stamp: Mutex<Option<FileStamp>>,
    /// Blocks and overflow routes set through the admin API.
    controls: ArcSwap<Controls>,
    /// Held while a change is stored, so the stored state is always the newest one.
    changing: Mutex<()>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp { modified: m.modified().ok(), len: m.len() })
}

impl KeyRing {
    pub fn load(path: &Path) -> Result<Self, KeysFileError> {
        let before = stamp(path);
        let store = KeyStore::load(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            current: ArcSwap::from_pointee(store),
            stamp: Mutex::new(before),
            controls: ArcSwap::default(),
            changing: Mutex::new(()),
        })
    }

    pub fn authenticate(&self, secret: Option<&str>) -> Result<Principal, AuthError> {
        let principal = self.current.load().authenticate(secret)?;
        match self.controls.load().blocks.iter().find(|b| b.covers(&principal)) {
            None => Ok(principal),
            Some(b) if b.env.is_some() => Err(AuthError::EnvDisabled),
            Some(_) => Err(AuthError::TenantDisabled),
        }
    }

    /// The keys file as last loaded (quotas, disabled tenants).
    pub fn snapshot(&self) -> Arc<KeyStore> {
        self.current.load_full()
    }

    /// Where `principal`'s accepted events go: the overflow lane if the keys file or an operator
    /// routed its tenant (or this environment) there.
    pub fn lane(&self, principal: &Principal) -> Stream {
        let routed = self.current.load().overflow_tenants.contains(&principal.tenant)
            || self.controls.load().overflow.iter().any(|s| s.covers(principal));
        if routed { Stream::Overflow } else { Stream::Events }
    }

    /// The blocks and overflow routes set through the admin API.
    pub fn controls(&self) -> Arc<Controls> {
        self.controls.load_full()
    }

    /// Puts the controls restored from the state store in force (startup).
    pub fn restore_controls(&self, controls: Controls) {
        self.controls.store(Arc::new(controls));
    }

    /// Applies `change` (which says whether it changed anything); a change is handed to `store`
    /// and in force only once that succeeded, so what an operator was told took effect is
    /// exactly what a restart restores. Blocking (the store fsyncs).
    pub fn change_controls<E>(
        &self,
        change: impl FnOnce(&mut Controls) -> bool,
        store: impl FnOnce(&Controls) -> Result<(), E>,
    ) -> Result<bool, E> {
        let _one_at_a_time = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = Controls::clone(&self.controls.load());
        if !change(&mut next) {
            return Ok(false);
        }
        store(&next)?;
        self.controls.store(Arc::new(next));
        Ok(true)
    }

    /// Reloads the file if it changed since the last look. A file that fails to parse keeps the
    /// previous keys in force (a typo must not lock every client out) and is logged.
    pub fn reload_if_changed(&self) -> Result<bool, KeysFileError> {
        let now = stamp(&self.path);
        let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if now == *last {
            return Ok(false);
        }
        let store = KeyStore::load(&self.path)?;
        self.current.store(Arc::new(store));
        *last = now;
        Ok(true)
    }

    /// Polls the file every `every` until the ring is dropped by everyone else.
    pub fn spawn_reloader(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(ring) = weak.upgrade() else { return };
                match tokio::task::block_in_place(|| ring.reload_if_changed()) {
                    Ok(true) => tracing::info!(path = %ring.path.display(), "auth: keys file reloaded"),
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %e, "auth: keys file invalid; keeping the previous keys"),
                }
            }
        })
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
        signing_secret: None,
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
        let store = KeyStore::from_file(KeysFile { keys: vec![a.clone(), b], ..KeysFile::default() }).unwrap();
        let p = store.authenticate(Some(&secret_a)).unwrap();
        assert_eq!((p.tenant.as_str(), p.env.as_str(), p.key_id), ("acme", "prod", a.id));
        assert_eq!(store.authenticate(Some(&secret_b)), Err(AuthError::Revoked));
        assert_eq!(store.authenticate(Some("slk_nope")), Err(AuthError::Unknown));
        assert_eq!(store.authenticate(None), Err(AuthError::Missing));
    }

    #[test]
    fn disabled_tenant_is_forbidden_and_ring_reloads_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let (a, secret) = new_key("acme", "prod");
        let write = |file: &KeysFile| std::fs::write(&path, toml::to_string(file).unwrap()).unwrap();
        let mut file = KeysFile { keys: vec![a], ..KeysFile::default() };
        write(&file);
        let ring = KeyRing::load(&path).unwrap();
        assert!(ring.authenticate(Some(&secret)).is_ok());
        assert!(!ring.reload_if_changed().unwrap(), "unchanged file is not reparsed");
        file.disabled_tenants.push("acme".into());
        write(&file);
        assert!(ring.reload_if_changed().unwrap());
        assert_eq!(ring.authenticate(Some(&secret)), Err(AuthError::TenantDisabled));
        std::fs::write(&path, "this is [not toml").unwrap();
        assert!(ring.reload_if_changed().is_err());
        assert_eq!(ring.authenticate(Some(&secret)), Err(AuthError::TenantDisabled), "bad file keeps old keys");
    }

    #[test]
    fn environment_kill_switch_and_runtime_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let (prod, prod_secret) = new_key("acme", "prod");
        let (dev, dev_secret) = new_key("acme", "dev");
        let (other, other_secret) = new_key("globex", "prod");
        let mut file = KeysFile { keys: vec![prod, dev, other], ..KeysFile::default() };
        file.disabled_envs.push(TenantEnv { tenant: "acme".into(), env: "dev".into() });
        file.tenants.insert("acme".into(), TenantSettings { events_per_sec: Some(50), ..TenantSettings::default() });
        std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
        let ring = KeyRing::load(&path).unwrap();
        assert!(ring.authenticate(Some(&prod_secret)).is_ok());
        assert_eq!(ring.authenticate(Some(&dev_secret)), Err(AuthError::EnvDisabled));
        assert_eq!(ring.snapshot().quota("acme"), Some(50));
        assert_eq!(ring.snapshot().quota("globex"), None);

        let stored = Mutex::new(Vec::new());
        let store = |c: &Controls| {
            stored.lock().unwrap().push(c.clone());
            Ok::<_, ()>(())
        };
        let block = |scope: TenantScope| ring.change_controls(|c| c.blocks.insert(scope), store).unwrap();
        let block_prod = TenantScope { tenant: "acme".into(), env: Some("prod".into()) };
        assert!(block(block_prod.clone()));
        assert!(!block(block_prod.clone()), "already blocked");
        assert_eq!(ring.authenticate(Some(&prod_secret)), Err(AuthError::EnvDisabled));
        assert!(ring.authenticate(Some(&other_secret)).is_ok(), "other tenants are untouched");
        let block_globex = TenantScope { tenant: "globex".into(), env: None };
        block(block_globex.clone());
        assert_eq!(ring.authenticate(Some(&other_secret)), Err(AuthError::TenantDisabled));
        let unblock = |scope: &TenantScope| ring.change_controls(|c| c.blocks.remove(scope), store).unwrap();
        assert!(unblock(&block_prod));
        assert!(!unblock(&block_prod));
        assert!(ring.authenticate(Some(&prod_secret)).is_ok());
        let blocks: Vec<_> = ring.controls().blocks.iter().cloned().collect();
        assert_eq!(blocks, vec![block_globex.clone()]);
        let stored = stored.into_inner().unwrap();
        assert_eq!(stored.len(), 3, "every change, and only a change, is stored");
        assert_eq!(stored.last(), Some(&*ring.controls()));
    }

    /// A change the store refuses is not in force (the operator gets the error, and a restart
    /// could not restore it).
    #[test]
    fn a_change_that_cannot_be_stored_does_not_take_effect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let (prod, secret) = new_key("acme", "prod");
        std::fs::write(&path, toml::to_string(&KeysFile { keys: vec![prod], ..KeysFile::default() }).unwrap()).unwrap();
        let ring = KeyRing::load(&path).unwrap();
        let scope = TenantScope { tenant: "acme".into(), env: None };
        let r = ring.change_controls(|c| c.blocks.insert(scope.clone()), |_| Err("disk full"));
        assert_eq!(r, Err("disk full"));
        assert!(ring.authenticate(Some(&secret)).is_ok());
        assert_eq!(*ring.controls(), Controls::default());
    }

    /// The overflow lane: from the keys file (a tenant), from the admin API (a tenant or one
    /// environment); everyone else stays on the events stream; un-routing returns them.
    #[test]
    fn overflow_lane_from_the_keys_file_and_runtime_routes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let principal = |tenant: &str, env: &str| Principal {
            key_id: "k".into(),
            tenant: tenant.into(),
            env: env.into(),
            signing_secret: None,
        };
        let mut file = KeysFile::default();
        file.tenants.insert("heavy".into(), TenantSettings { overflow: true, ..TenantSettings::default() });
        file.tenants.insert("metered".into(), TenantSettings { events_per_sec: Some(5), overflow: false });
        std::fs::write(&path, toml::to_string(&file).unwrap()).unwrap();
        let ring = KeyRing::load(&path).unwrap();
        assert_eq!(ring.lane(&principal("heavy", "prod")), Stream::Overflow);
        assert_eq!(ring.lane(&principal("metered", "prod")), Stream::Events);
        assert_eq!(ring.lane(&principal("acme", "prod")), Stream::Events);
        assert_eq!(ring.snapshot().overflow_tenants().iter().collect::<Vec<_>>(), ["heavy"]);

        let dev = TenantScope { tenant: "acme".into(), env: Some("dev".into()) };
        let ok = |_: &Controls| Ok::<_, ()>(());
        assert_eq!(ring.change_controls(|c| c.overflow.insert(dev.clone()), ok), Ok(true));
        assert_eq!(ring.lane(&principal("acme", "dev")), Stream::Overflow);
        assert_eq!(ring.lane(&principal("acme", "prod")), Stream::Events, "only the routed environment");
        assert_eq!(ring.change_controls(|c| c.overflow.remove(&dev), ok), Ok(true));
        assert_eq!(ring.lane(&principal("acme", "dev")), Stream::Events);
    }

    #[test]
    fn the_file_never_holds_the_secret() {
        let (entry, secret) = new_key("t", "e");
        let text = toml::to_string(&KeysFile { keys: vec![entry], ..KeysFile::default() }).unwrap();
        assert!(!text.contains(&secret));
        assert!(!text.contains(&secret[KEY_PREFIX.len()..]));
    }
}

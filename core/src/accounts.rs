//! The accounts a process serves: those of the config file and those added at run time
//! (docs/contract.md §1.5). Gateways and workers look accounts up here, never in
//! [`Config::accounts`] directly, so a runtime change reaches every lookup.
//!
//! A [`Registry`] holds an immutable [`Snapshot`] behind a lock that is only held to clone an
//! `Arc`: lookups never wait for a reload, and a reload swaps the whole snapshot at once, so a
//! request sees either the old or the new set of accounts, never a mix.
//!
//! Runtime accounts live in Redis ([`RuntimeAccounts`]): the hash `{ns}:accounts` (id → the
//! JSON of an [`AccountSpec`], secrets included: Redis is the only copy), the counter
//! `{ns}:accounts:version`, bumped after every change, and `{ns}:accounts:generation`, a
//! random value set whenever the counter is created. [`Registry::watch`] checks the counter
//! and the generation every [`CHECK_EVERY`] and reloads the hash when either moved: a counter
//! rebuilt after Redis lost its data may reach the very number a process loaded last, but not
//! with the same generation. Every call touches one key (Redis Cluster works).
//!
//! When Redis cannot be reached the last snapshot keeps being served. When the counter
//! vanishes after this process loaded runtime accounts (Redis restarted without persistence)
//! the accounts it had are kept too, and the loss is reported loudly (an error log,
//! `wxgate_accounts_version_lost` = 1 and [`Registry::problem`] for `/readyz`). When the
//! counter is absent but the hash holds entries (the key was evicted or deleted, or a restore
//! left it out), the hash is served anyway and reported the same way.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Account, AccountSpec, Config, ConfigError};
use crate::keys::Keys;
use crate::metrics::{AccountsMetrics, OriginLabel};
use crate::store::{Store, StoreError};

/// How often [`Registry::watch`] checks `{ns}:accounts:version` (the contract asks for at
/// least once a second).
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Bound on each Redis call of [`RuntimeAccounts`].
pub const STORE_DEADLINE: Duration = Duration::from_secs(3);

/// Where an account comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `[[accounts]]` of the config file: read-only through the API.
    File,
    /// Added through `Accounts.Upsert`, stored in Redis (`{ns}:accounts`).
    Runtime,
}

impl Origin {
    /// `file` or `runtime`, for logs and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Runtime => "runtime",
        }
    }
}

/// One account with its origin.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The validated account.
    pub account: Arc<Account>,
    /// Where it comes from.
    pub origin: Origin,
}

/// An immutable set of accounts, indexed by id and by appid.
#[derive(Debug, Default)]
pub struct Snapshot {
    by_id: HashMap<String, Entry>,
    by_appid: HashMap<String, Arc<Account>>,
    runtime: usize,
}

impl Snapshot {
    /// The file accounts of `config` plus `runtime` ones; a runtime account whose id is a file
    /// account's is ignored (the file wins; the API refuses to create such an account).
    pub fn new(config: &Config, runtime: impl IntoIterator<Item = Account>) -> Self {
        let file: Vec<Arc<Account>> = config.accounts.iter().cloned().map(Arc::new).collect();
        Self::build(&file, runtime.into_iter().map(Arc::new))
    }

    /// Like [`Snapshot::new`], from file accounts already shared (a reload rebuilds the
    /// indexes, never the accounts).
    pub fn build(file: &[Arc<Account>], runtime: impl IntoIterator<Item = Arc<Account>>) -> Self {
        let runtime = runtime.into_iter();
        let mut snapshot = Self {
            by_id: HashMap::with_capacity(file.len() + runtime.size_hint().0),
            by_appid: HashMap::with_capacity(file.len() + runtime.size_hint().0),
            runtime: 0,
        };
        for account in file {
            snapshot.insert(Arc::clone(account), Origin::File);
        }
        for account in runtime {
            if !snapshot.by_id.contains_key(account.id.as_str()) {
                snapshot.insert(account, Origin::Runtime);
                snapshot.runtime += 1;
            }
        }
        snapshot
    }

    fn insert(&mut self, account: Arc<Account>, origin: Origin) {
        self.by_appid
            .entry(account.appid.clone())
            .or_insert_with(|| Arc::clone(&account));
        self.by_id
            .insert(account.id.as_str().to_owned(), Entry { account, origin });
    }

    /// The account with this id.
    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.by_id.get(id)
    }

    /// The first account (file accounts first) with this appid.
    pub fn by_appid(&self, appid: &str) -> Option<&Arc<Account>> {
        self.by_appid.get(appid)
    }

    /// Every account, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.by_id.values()
    }

    /// How many accounts there are.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// How many of them are runtime accounts.
    pub fn runtime_len(&self) -> usize {
        self.runtime
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// What [`Registry::watch`] last found, for `/readyz` and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncStatus {
    /// Whether the runtime accounts have been checked at least once since the start: before
    /// that, only the file accounts are served.
    pub loaded: bool,
    /// The `{ns}:accounts:version` of the snapshot served; `None` before the first load or
    /// while the key is absent.
    pub version: Option<i64>,
    /// The version key is absent while runtime accounts are served: it vanished after this
    /// process had loaded some (they are still served), or the hash holds entries without it
    /// (they are served). See the module doc.
    pub version_lost: bool,
    /// Whether the last check could not reach Redis (the last snapshot is served).
    pub store_failing: bool,
}

/// The accounts of one process, replaced as a whole when the runtime set changes.
#[derive(Debug)]
pub struct Registry {
    current: RwLock<Arc<Snapshot>>,
    file: Vec<Arc<Account>>,
    file_ids: HashSet<String>,
    status: Mutex<SyncStatus>,
}

impl Registry {
    /// A registry holding the file accounts of `config` only; [`Registry::watch`] adds the
    /// runtime ones.
    pub fn from_config(config: &Config) -> Self {
        let file: Vec<Arc<Account>> = config.accounts.iter().cloned().map(Arc::new).collect();
        Self {
            current: RwLock::new(Arc::new(Snapshot::build(&file, []))),
            file_ids: file.iter().map(|a| a.id.as_str().to_owned()).collect(),
            file,
            status: Mutex::new(SyncStatus::default()),
        }
    }

    /// The current snapshot. Cheap (an `Arc` clone); hold it for the duration of one request
    /// so every lookup in it agrees.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        // A poisoned lock only means a panic elsewhere while swapping an Arc: the value is
        // still a complete snapshot.
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The account with this id, if served.
    pub fn get(&self, id: &str) -> Option<Arc<Account>> {
        self.snapshot().get(id).map(|e| Arc::clone(&e.account))
    }

    /// Whether `id` is an account of the config file (which the API may not change).
    pub fn is_file_account(&self, id: &str) -> bool {
        self.file_ids.contains(id)
    }

    /// The file accounts, in file order.
    pub fn file_accounts(&self) -> &[Arc<Account>] {
        &self.file
    }

    /// Replaces the snapshot.
    pub fn replace(&self, snapshot: Snapshot) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
    }

    /// What the runtime account sync last found.
    pub fn status(&self) -> SyncStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the runtime accounts have been checked once (see [`SyncStatus::loaded`]).
    pub fn is_loaded(&self) -> bool {
        self.status().loaded
    }

    /// A line for `/readyz` when something about the accounts needs an operator, else
    /// `None`. Names the problem, never a secret.
    pub fn problem(&self) -> Option<String> {
        let status = self.status();
        status.version_lost.then(|| {
            format!(
                "accounts: the runtime accounts version key vanished from redis (it lost its data, or the key was evicted or deleted); serving the {} runtime accounts last read; re-add missing ones with Accounts.Upsert (any change recreates the key) and run redis with persistence (AOF) and maxmemory-policy noeviction",
                self.snapshot().runtime_len()
            )
        })
    }

    fn update_status(&self, change: impl FnOnce(&mut SyncStatus)) {
        change(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Keeps the runtime accounts current until `shutdown`: checks `{ns}:accounts:version`
    /// every [`CHECK_EVERY`] and reloads `{ns}:accounts` when it moved (see the module doc
    /// for Redis failures and a vanished version). Invalid stored entries are skipped with
    /// an error log naming the id. Run it on a task of its own; the first check is at once.
    pub async fn watch(
        self: Arc<Self>,
        runtime: RuntimeAccounts,
        metrics: AccountsMetrics,
        shutdown: CancellationToken,
    ) {
        let mut sync = RuntimeSync::new(self, runtime, metrics);
        let mut ticks = tokio::time::interval(CHECK_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = sync.check() => {}
            }
        }
    }
}

/// The version and generation a snapshot was loaded at.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Loaded {
    version: i64,
    /// `None` while `{ns}:accounts:generation` is absent (a writer died between creating the
    /// counter and setting it): still compared, so its appearance is a change too.
    generation: Option<Vec<u8>>,
}

/// The state of one process's runtime account sync: the version loaded and the stored
/// entries it was built from, so a reload validates only the entries that changed (10,000
/// accounts is a test case). [`Registry::watch`] drives it; tests call [`RuntimeSync::check`].
pub struct RuntimeSync {
    registry: Arc<Registry>,
    runtime: RuntimeAccounts,
    metrics: AccountsMetrics,
    known: Option<Loaded>,
    cache: HashMap<String, (Vec<u8>, Arc<Account>)>,
}

impl RuntimeSync {
    /// A sync that has loaded nothing yet.
    pub fn new(
        registry: Arc<Registry>,
        runtime: RuntimeAccounts,
        metrics: AccountsMetrics,
    ) -> Self {
        let file = registry.file.len();
        metrics
            .accounts
            .get_or_create(&OriginLabel { origin: "file" })
            .set(i64::try_from(file).unwrap_or(i64::MAX));
        metrics
            .accounts
            .get_or_create(&OriginLabel { origin: "runtime" })
            .set(0);
        Self {
            registry,
            runtime,
            metrics,
            known: None,
            cache: HashMap::new(),
        }
    }

    /// One check: reads the version and the generation and reloads when either differs
    /// from the ones loaded; reads the hash when the version is absent and nothing was
    /// loaded yet. Cancel-safe (it only reads Redis; the snapshot is swapped at the very end).
    pub async fn check(&mut self) {
        let version = match self.runtime.version().await {
            Ok(version) => version,
            Err(e) => return self.store_failed(&e),
        };
        let Some(version) = version else {
            return self.version_absent().await;
        };
        // Read after the version: a writer sets the generation after creating the counter,
        // so a generation that changes later is seen by the next check.
        let generation = match self.runtime.generation().await {
            Ok(generation) => generation,
            Err(e) => return self.store_failed(&e),
        };
        let seen = Loaded {
            version,
            generation,
        };
        if self.known.as_ref() == Some(&seen) {
            return self.store_works();
        }
        if self.known.as_ref().is_some_and(|k| k.version == version) {
            tracing::warn!(
                version,
                "the runtime accounts counter was recreated (new generation, same version): redis lost its data; reloading"
            );
        }
        self.reload(seen).await;
    }

    fn store_failed(&self, error: &RuntimeError) {
        if !self.registry.status().store_failing {
            tracing::warn!(
                error = %crate::ErrorChain(error),
                "cannot check the runtime accounts; serving the accounts loaded before"
            );
        }
        self.registry.update_status(|s| s.store_failing = true);
    }

    fn store_works(&self) {
        if self.registry.status().store_failing {
            tracing::info!("runtime accounts can be checked again");
        }
        self.registry.update_status(|s| s.store_failing = false);
    }

    async fn version_absent(&mut self) {
        let status = self.registry.status();
        let had = self.known.is_some() || !self.cache.is_empty();
        if had || status.version_lost {
            self.store_works();
            if !status.version_lost {
                tracing::error!(
                    key = %self.runtime.keys.accounts_version(),
                    runtime_accounts = self.cache.len(),
                    "the runtime accounts version key vanished from redis (it lost its data?); still serving the accounts loaded before; re-add them with Accounts.Upsert and run redis with persistence (AOF)"
                );
            }
            self.report_lost();
            return;
        }
        // Nothing was loaded from redis yet: the hash may hold entries all the same (the
        // key was evicted or deleted, or a restore left it out). Serve what it holds.
        let Some(stored) = self.load().await else {
            return;
        };
        if stored == 0 {
            // No runtime account was ever added: the file accounts are the whole set.
            self.registry.update_status(|s| s.loaded = true);
            return;
        }
        tracing::error!(
            key = %self.runtime.keys.accounts_version(),
            stored,
            runtime_accounts = self.cache.len(),
            "the runtime accounts version key is missing from redis but the accounts hash holds entries (the key was evicted or deleted, or a restore left it out); serving them; any Accounts.Upsert or Remove recreates the key; run redis with persistence (AOF) and maxmemory-policy noeviction"
        );
        self.report_lost();
    }

    /// The version key is absent while runtime accounts are served.
    fn report_lost(&mut self) {
        // Any version that appears now, even the one known before, is a new history.
        self.known = None;
        self.metrics.version_lost.set(1);
        self.registry.update_status(|s| {
            s.version_lost = true;
            s.version = None;
            s.loaded = true;
        });
    }

    async fn reload(&mut self, seen: Loaded) {
        if self.load().await.is_none() {
            return;
        }
        let version = seen.version;
        self.known = Some(seen);
        let was_lost = self.registry.status().version_lost;
        if was_lost {
            tracing::warn!(
                version,
                "the runtime accounts version key is back; serving what redis holds now"
            );
        }
        self.metrics.version_lost.set(0);
        self.registry.update_status(|s| {
            s.loaded = true;
            s.version = Some(version);
            s.version_lost = false;
        });
        tracing::info!(
            version,
            runtime_accounts = self.registry.snapshot().runtime_len(),
            "runtime accounts loaded"
        );
    }

    /// Reads the hash and serves it; returns how many entries it held (valid or not), or
    /// `None` when Redis failed (the snapshot is kept).
    async fn load(&mut self) -> Option<usize> {
        let entries = match self.runtime.entries().await {
            Ok(entries) => entries,
            Err(e) => {
                self.store_failed(&e);
                return None;
            }
        };
        self.store_works();
        let stored = entries.len();
        let mut cache = HashMap::with_capacity(entries.len());
        for (id, json) in entries {
            if self.registry.is_file_account(&id) {
                tracing::error!(account_id = %id, "a runtime account in redis has the id of a file account; the file account is served");
                continue;
            }
            let account = match self.cache.remove(&id) {
                Some((old, account)) if old == json => account,
                _ => match parse_entry(&id, &json) {
                    Ok(account) => Arc::new(account),
                    Err(e) => {
                        tracing::error!(account_id = %id, error = %crate::ErrorChain(&e), "a runtime account in redis is invalid; skipped");
                        continue;
                    }
                },
            };
            cache.insert(id, (json, account));
        }
        let runtime = cache.values().map(|(_, account)| Arc::clone(account));
        let snapshot = Snapshot::build(&self.registry.file, runtime);
        let served = snapshot.runtime_len();
        self.registry.replace(snapshot);
        self.cache = cache;
        self.metrics
            .accounts
            .get_or_create(&OriginLabel { origin: "runtime" })
            .set(i64::try_from(served).unwrap_or(i64::MAX));
        Some(stored)
    }
}

/// Why a stored runtime account could not be used. Never carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// The stored value is not the JSON of an account spec. Only where, not what: the
    /// value holds secrets.
    #[error(
        "stored value is not an account spec ({category} error at line {line}, column {column})"
    )]
    Json {
        /// serde_json's class of error (`syntax`, `data`, `eof`, `io`).
        category: &'static str,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// The JSON's `id` is not the hash field it is stored under.
    #[error("stored spec has another id than its hash field")]
    IdMismatch,
    /// The spec does not validate.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// Parses a stored value into a spec without letting serde_json quote it (it holds secrets).
pub fn parse_spec(id: &str, json: &[u8]) -> Result<AccountSpec, EntryError> {
    let spec: AccountSpec = serde_json::from_slice(json).map_err(|e| EntryError::Json {
        category: match e.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "data",
            serde_json::error::Category::Eof => "eof",
        },
        line: e.line(),
        column: e.column(),
    })?;
    if spec.id != id {
        return Err(EntryError::IdMismatch);
    }
    Ok(spec)
}

fn parse_entry(id: &str, json: &[u8]) -> Result<Account, EntryError> {
    Ok(parse_spec(id, json)?.validate("")?)
}

/// Why a [`RuntimeAccounts`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Redis failed.
    #[error("runtime accounts store failed")]
    Store(#[source] StoreError),
    /// Redis did not answer within [`STORE_DEADLINE`].
    #[error("runtime accounts store did not answer in time")]
    Timeout,
    /// `{ns}:accounts:version` holds something that is not an integer.
    #[error("the runtime accounts version key does not hold an integer")]
    BadVersion,
    /// The spec could not be encoded (not expected: it is strings and lists).
    #[error("cannot encode the account spec")]
    Encode(#[source] serde_json::Error),
    /// A stored entry is unusable.
    #[error("runtime account {id:?} in redis is unusable")]
    Entry {
        /// The account id.
        id: String,
        /// Why.
        #[source]
        source: EntryError,
    },
}

async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, RuntimeError> {
    tokio::time::timeout(STORE_DEADLINE, call)
        .await
        .map_err(|_| RuntimeError::Timeout)?
        .map_err(RuntimeError::Store)
}

/// The runtime accounts in Redis: `{ns}:accounts`, `{ns}:accounts:version` and
/// `{ns}:accounts:generation`. Each call is bounded by [`STORE_DEADLINE`]. Writes are
/// `HSET`/`HDEL` and then `INCR` of the version, and a `SET` of a new random generation when
/// that `INCR` created the counter (one key per operation, never one spanning several, so
/// Redis Cluster works): a reader that sees the new version also sees the change.
#[derive(Clone)]
pub struct RuntimeAccounts {
    store: Arc<dyn Store>,
    keys: Keys,
}

impl RuntimeAccounts {
    /// The runtime accounts of the namespace of `keys`.
    pub fn new(store: Arc<dyn Store>, keys: Keys) -> Self {
        Self { store, keys }
    }

    /// `GET {ns}:accounts:version`; `None` when absent.
    pub async fn version(&self) -> Result<Option<i64>, RuntimeError> {
        let Some(raw) = bounded(self.store.get(&self.keys.accounts_version())).await? else {
            return Ok(None);
        };
        std::str::from_utf8(&raw)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .map(Some)
            .ok_or(RuntimeError::BadVersion)
    }

    /// `GET {ns}:accounts:generation`; `None` when absent.
    pub async fn generation(&self) -> Result<Option<Vec<u8>>, RuntimeError> {
        bounded(self.store.get(&self.keys.accounts_generation())).await
    }

    /// Every stored entry, raw (id, JSON).
    pub async fn entries(&self) -> Result<Vec<(String, Vec<u8>)>, RuntimeError> {
        bounded(self.store.hgetall(&self.keys.accounts())).await
    }

    /// The stored spec of `id`, secrets included; `None` when there is none.
    pub async fn get(&self, id: &str) -> Result<Option<AccountSpec>, RuntimeError> {
        let Some(json) = bounded(self.store.hget(&self.keys.accounts(), id)).await? else {
            return Ok(None);
        };
        parse_spec(id, &json)
            .map(Some)
            .map_err(|source| RuntimeError::Entry {
                id: id.to_owned(),
                source,
            })
    }

    /// Stores `spec` under its id and bumps the version; returns the new version. The caller
    /// has validated it.
    pub async fn put(&self, spec: &AccountSpec) -> Result<i64, RuntimeError> {
        let json = serde_json::to_vec(spec).map_err(RuntimeError::Encode)?;
        bounded(self.store.hset(&self.keys.accounts(), &spec.id, &json)).await?;
        self.bump().await
    }

    /// Removes `id` and bumps the version; `None` (and no bump) when it was not stored.
    pub async fn remove(&self, id: &str) -> Result<Option<i64>, RuntimeError> {
        if !bounded(self.store.hdel(&self.keys.accounts(), id)).await? {
            return Ok(None);
        }
        self.bump().await.map(Some)
    }

    async fn bump(&self) -> Result<i64, RuntimeError> {
        let version = bounded(self.store.incr(&self.keys.accounts_version(), None)).await?;
        if version == 1 {
            // A new counter: a new history, told apart from any earlier one that reached
            // the same numbers (module doc).
            let generation = format!("{:032x}", rand::random::<u128>());
            bounded(self.store.set(
                &self.keys.accounts_generation(),
                generation.as_bytes(),
                None,
            ))
            .await?;
        }
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_toml(
            "[[accounts]]\nid = \"a\"\nappid = \"wx1\"\ntoken = \"t\"\nmode = \"plain\"\n",
            |_| None,
        )
        .unwrap()
    }

    #[test]
    fn file_accounts_win_over_runtime_ones_with_the_same_id() {
        let config = config();
        let mut runtime = config.accounts[0].clone();
        runtime.appid = "wx2".to_owned();
        let snapshot = Snapshot::new(&config, [runtime]);
        let entry = snapshot.get("a").unwrap();
        assert_eq!(entry.origin, Origin::File);
        assert_eq!(entry.account.appid, "wx1");
        assert_eq!(snapshot.len(), 1);
    }

    #[test]
    fn a_replaced_snapshot_is_seen_by_later_lookups_only() {
        let config = config();
        let registry = Registry::from_config(&config);
        let before = registry.snapshot();
        let mut runtime = config.accounts[0].clone();
        runtime.id = crate::config::AccountId::parse("b").unwrap();
        registry.replace(Snapshot::new(&config, [runtime]));
        assert!(before.get("b").is_none());
        assert_eq!(registry.get("b").unwrap().id.as_str(), "b");
        assert_eq!(
            registry.snapshot().by_appid("wx1").unwrap().id.as_str(),
            "a"
        );
    }
}

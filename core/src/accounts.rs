//! The accounts a process serves: those of the config file and those added at run time
//! (docs/contract.md §1.5). Gateways and workers look accounts up here, never in
//! [`Config::accounts`] directly, so a runtime change reaches every lookup.
//!
//! A [`Registry`] holds an immutable [`Snapshot`] behind a lock that is only held to clone an
//! `Arc`: lookups never wait for a reload, and a reload swaps the whole snapshot at once, so a
//! request sees either the old or the new set of accounts, never a mix.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::config::{Account, Config};

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
}

impl Snapshot {
    /// The file accounts of `config` plus `runtime` ones; a runtime account whose id is a file
    /// account's is ignored (the file wins; the API refuses to create such an account).
    pub fn new(config: &Config, runtime: impl IntoIterator<Item = Account>) -> Self {
        let mut snapshot = Self::default();
        for account in &config.accounts {
            snapshot.insert(Arc::new(account.clone()), Origin::File);
        }
        for account in runtime {
            if !snapshot.by_id.contains_key(account.id.as_str()) {
                snapshot.insert(Arc::new(account), Origin::Runtime);
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

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// The accounts of one process, replaced as a whole when the runtime set changes.
#[derive(Debug)]
pub struct Registry {
    current: RwLock<Arc<Snapshot>>,
}

impl Registry {
    /// A registry holding the file accounts of `config` only.
    pub fn from_config(config: &Config) -> Self {
        Self {
            current: RwLock::new(Arc::new(Snapshot::new(config, []))),
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

    /// Replaces the snapshot.
    pub fn replace(&self, snapshot: Snapshot) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
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

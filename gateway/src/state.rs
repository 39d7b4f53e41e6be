//! The gateway's shared state: config, the accounts registry, the store and the bus.

use std::sync::Arc;

use wechat::Limits;

use crate::dedup::{AnswerLog, Claims, claim_ttl};
use crate::pipeline::CallbackError;
use wxgate_core::accounts::Registry;
use wxgate_core::config::{Account, Config};
use wxgate_core::keys::Keys;
use wxgate_core::metrics::GatewayMetrics;
use wxgate_core::topology::Names;
use wxgate_core::{Bus, Store};

/// Everything a request needs; shared by all connections.
pub struct Gateway {
    /// The validated config.
    pub config: Arc<Config>,
    /// The accounts served: the file's and the runtime ones ([`Registry::watch`] keeps
    /// them current once [`crate::serve_with`] started it).
    pub accounts: Arc<Registry>,
    /// Dedup store.
    pub store: Arc<dyn Store>,
    /// Event bus.
    pub bus: Arc<dyn Bus>,
    /// Redis key names.
    pub keys: Keys,
    /// `{ns}.events`.
    pub exchange: String,
    /// XML parser limits.
    pub limits: Limits,
    /// Metrics.
    pub metrics: GatewayMetrics,
    /// Dedup claims on their way to the store.
    pub claims: Claims,
    /// Answers being recorded for WeChat's retries.
    pub answers: AnswerLog,
}

impl Gateway {
    /// Builds the state from a config and the store/bus to use. Must be called on a tokio
    /// runtime (it starts the answer log's writer task).
    pub fn new(config: Arc<Config>, store: Arc<dyn Store>, bus: Arc<dyn Bus>) -> Self {
        Self {
            keys: Keys::new(&config.namespace),
            exchange: Names::new(&config.namespace).events_exchange(),
            metrics: GatewayMetrics::new(config.gateway.metrics_per_account),
            claims: Claims::start(Arc::clone(&store), claim_ttl(config.gateway.request_budget)),
            answers: AnswerLog::start(Arc::clone(&store), config.gateway.dedup_ttl),
            store,
            bus,
            limits: config.message_limits(),
            accounts: Arc::new(Registry::from_config(&config)),
            config,
        }
    }

    /// The account `/wx/{id}` names, file or runtime: a read lock, a hash lookup and two
    /// `Arc` clones (accounts are never copied; 10,000 of them are a test case). See
    /// [`lookup`] for an id not served.
    pub fn account(&self, id: &str) -> Result<Arc<Account>, CallbackError> {
        lookup(&self.accounts, id)
    }

    /// Whether callbacks can be accepted (see [`Gateway::not_ready`]).
    pub fn is_ready(&self) -> bool {
        self.not_ready().is_none()
    }

    /// Why callbacks cannot be accepted yet, for `/readyz`; `None` when they can: store
    /// reachable, broker connected and topology declared, runtime accounts loaded once.
    pub fn not_ready(&self) -> Option<&'static str> {
        not_ready(self.store.is_ready(), self.bus.is_ready(), &self.accounts)
    }
}

/// The account `id` of `accounts`. An id not served is [`CallbackError::UnknownAccount`]
/// (404) once the runtime accounts are loaded, and [`CallbackError::AccountsNotLoaded`]
/// (503, WeChat retries) before: it may be a runtime account not read yet.
pub fn lookup(accounts: &Registry, id: &str) -> Result<Arc<Account>, CallbackError> {
    match accounts.get(id) {
        Some(account) => Ok(account),
        None if accounts.is_loaded() => Err(CallbackError::UnknownAccount),
        None => Err(CallbackError::AccountsNotLoaded),
    }
}

/// Why a gateway whose store and bus are in the given state, serving `accounts`, cannot
/// accept callbacks; `None` when it can.
pub fn not_ready(store_ready: bool, bus_ready: bool, accounts: &Registry) -> Option<&'static str> {
    if !store_ready {
        Some("redis not connected")
    } else if !bus_ready {
        Some("broker not connected or topology not declared")
    } else if !accounts.is_loaded() {
        Some("runtime accounts not loaded yet (the first sync with redis has not completed)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wxgate_core::accounts::{RuntimeAccounts, RuntimeSync};
    use wxgate_core::config::AccountSpec;
    use wxgate_core::metrics::AccountsMetrics;
    use wxgate_core::store::MemoryStore;

    /// Before the first runtime-accounts sync an unknown id may be a runtime account not
    /// read yet: 503 (WeChat retries) and not ready; after it, 404 and ready.
    #[tokio::test]
    async fn unknown_ids_answer_503_and_readyz_fails_until_the_accounts_are_loaded() {
        let config = Config::from_toml(
            "[[accounts]]\nid = \"file\"\nappid = \"wxfile\"\ntoken = \"t\"\nmode = \"plain\"\n",
            |_| None,
        )
        .unwrap();
        let registry = Arc::new(Registry::from_config(&config));
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let runtime = RuntimeAccounts::new(store, Keys::new("t"));
        runtime
            .put(&AccountSpec {
                id: "rt".to_owned(),
                appid: "wxrt".to_owned(),
                token: "t".to_owned(),
                mode: Some(wxgate_core::config::Mode::Plain),
                ..AccountSpec::default()
            })
            .await
            .unwrap();

        assert!(
            lookup(&registry, "file").is_ok(),
            "file accounts are served at once"
        );
        let error = lookup(&registry, "rt").unwrap_err();
        assert!(matches!(error, CallbackError::AccountsNotLoaded), "{error}");
        assert_eq!(error.status().0, http::StatusCode::SERVICE_UNAVAILABLE);
        let reason = not_ready(true, true, &registry).unwrap();
        assert!(reason.contains("runtime accounts not loaded"), "{reason}");
        assert_eq!(
            not_ready(false, true, &registry),
            Some("redis not connected")
        );

        RuntimeSync::new(Arc::clone(&registry), runtime, AccountsMetrics::default())
            .check()
            .await;
        assert_eq!(lookup(&registry, "rt").unwrap().appid, "wxrt");
        let error = lookup(&registry, "nope").unwrap_err();
        assert!(matches!(error, CallbackError::UnknownAccount), "{error}");
        assert_eq!(error.status().0, http::StatusCode::NOT_FOUND);
        assert_eq!(not_ready(true, true, &registry), None);
    }
}

//! The gateway's shared state: config, the accounts registry, the store and the bus.

use std::sync::Arc;

use wechat::Limits;

use crate::dedup::{AnswerLog, Claims, claim_ttl};
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
    /// `Arc` clones (accounts are never copied; 10,000 of them are a test case).
    pub fn account(&self, id: &str) -> Option<Arc<Account>> {
        self.accounts.get(id)
    }

    /// Whether callbacks can be accepted: store reachable, broker connected, topology declared.
    pub fn is_ready(&self) -> bool {
        self.store.is_ready() && self.bus.is_ready()
    }
}

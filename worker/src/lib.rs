//! The wxgate worker (docs/contract.md §1.3): consumes `{ns}.worker`, answers events through
//! WeChat's customer-service API with the access token shared in Redis, retries and
//! dead-letters per docs/contract.md §6, and serves `/healthz`, `/readyz` and `/metrics`.
//!
//! It keeps no state of its own: events live in RabbitMQ, tokens and sent markers in Redis.
//! It never logs access tokens, secrets or message bodies. It also serves the gRPC API of
//! docs/contract.md §1.5 and §5 on `worker.grpc_listen` ([`grpc`]).

pub mod client;
mod consumer;
pub mod custom;
pub mod grpc;
mod health;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wxgate_core::accounts::{Registry, RuntimeAccounts};
use wxgate_core::bus::{Bus, BusError};
use wxgate_core::config::Config;
use wxgate_core::keys::Keys;
use wxgate_core::metrics::{AccountLabel, AccountResult, WorkerMetrics};
use wxgate_core::rabbit::{RabbitBus, TopologyMismatch};
use wxgate_core::store::{RedisStore, Store, StoreError};
use wxgate_core::tokens::{TokenObserver, TokenService, TokenSettings};
use wxgate_core::topology::{Names, Topology};
use wxgate_serve::ConnectionLimits;

pub use client::{ApiAnswer, CallError, WechatClient};
pub use consumer::{
    ATTEMPT_HEADER, ATTEMPTS_HEADER, DEAD_AT_HEADER, ERRCODE_HEADER, REASON_HEADER,
};
pub use custom::{CustomBody, CustomMessage};

/// Bound on one Redis command.
const REDIS_COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the worker could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// `worker.http_listen` could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// `redis.url` / `redis.urls` is not usable.
    #[error("bad redis url")]
    Redis(#[source] StoreError),
    /// The WeChat client could not be built.
    #[error(transparent)]
    Client(#[from] client::ClientError),
    /// The consumer could not start.
    #[error("cannot consume")]
    Consume(#[from] BusError),
    /// The gRPC API could not be set up (TLS files).
    #[error(transparent)]
    Grpc(#[from] grpc::GrpcError),
    /// The worker task panicked or was cancelled.
    #[error("worker task failed")]
    Task(#[source] tokio::task::JoinError),
    /// The broker holds a queue or exchange with other arguments than this configuration
    /// declares: a configuration error no retry can fix. The worker stopped as on shutdown.
    #[error(transparent)]
    Topology(#[from] TopologyMismatch),
}

/// A started worker.
#[derive(Debug)]
pub struct Worker {
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
    task: JoinHandle<Result<(), WorkerError>>,
}

impl Worker {
    /// The address `/healthz`, `/readyz` and `/metrics` are served on (useful with port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The address the gRPC API is served on (useful with port 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Waits until the worker has stopped (after `shutdown` was cancelled).
    pub async fn wait(self) -> Result<(), WorkerError> {
        self.task.await.map_err(WorkerError::Task)?
    }
}

/// Runs the worker until `shutdown` is cancelled, then stops consuming, requeues what it had
/// not started, finishes what is in progress (up to 10 s) and returns.
pub async fn run(config: Arc<Config>, shutdown: CancellationToken) -> Result<(), WorkerError> {
    start(config, shutdown).await?.wait().await
}

/// Binds `worker.http_listen`, connects to Redis and RabbitMQ (in the background, declaring
/// the topology) and starts consuming; returns once listening.
pub async fn start(
    config: Arc<Config>,
    shutdown: CancellationToken,
) -> Result<Worker, WorkerError> {
    // Redis and RabbitMQ outlive `shutdown`: in-progress events still need them to settle.
    let connections = CancellationToken::new();
    let store: Arc<dyn Store> = Arc::new(
        RedisStore::connect_config(&config.redis, REDIS_COMMAND_TIMEOUT, connections.clone())
            .map_err(WorkerError::Redis)?,
    );
    let rabbit = RabbitBus::connect_any(
        &config.rabbitmq.urls,
        Topology::for_config(&config),
        connections.clone(),
    );
    // A topology the broker refuses stops the worker as a shutdown would.
    let stop = shutdown.child_token();
    let gave_up = rabbit.stop_on_give_up(stop.clone());
    let started = start_with(config, Arc::new(rabbit.clone()), store, stop).await;
    let worker = match started {
        Ok(worker) => worker,
        Err(e) => {
            gave_up.finish().await;
            connections.cancel();
            return Err(e);
        }
    };
    let Worker {
        http_addr,
        grpc_addr,
        task,
    } = worker;
    let task = tokio::spawn(async move {
        let result = task.await.map_err(WorkerError::Task).and_then(|r| r);
        let mismatch = gave_up.finish().await;
        rabbit.close().await;
        connections.cancel();
        match mismatch {
            Some(mismatch) => Err(mismatch.into()),
            None => result,
        }
    });
    Ok(Worker {
        http_addr,
        grpc_addr,
        task,
    })
}

/// Like [`start`], on a bus and store the caller made (e.g. the in-memory pair of
/// `wxgate dev`). The bus must have declared the topology of
/// [`wxgate_core::topology::Topology::for_config`]; the caller closes both after
/// [`Worker::wait`].
pub async fn start_with(
    config: Arc<Config>,
    bus: Arc<dyn Bus>,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) -> Result<Worker, WorkerError> {
    let addr = config.worker.http_listen;
    let backlog = config.worker.listen_backlog;
    let listener =
        wxgate_serve::bind(addr, backlog).map_err(|source| WorkerError::Bind { addr, source })?;
    let http_addr = listener
        .local_addr()
        .map_err(|source| WorkerError::Bind { addr, source })?;
    let tls = config
        .worker
        .grpc_tls
        .as_ref()
        .map(grpc::tls_config)
        .transpose()?;
    let grpc_tls_on = tls.is_some();
    let grpc_server = grpc::server(tls)?;
    let grpc_bind = config.worker.grpc_listen;
    let grpc_listener =
        wxgate_serve::bind(grpc_bind, backlog).map_err(|source| WorkerError::Bind {
            addr: grpc_bind,
            source,
        })?;
    let grpc_addr = grpc_listener
        .local_addr()
        .map_err(|source| WorkerError::Bind {
            addr: grpc_bind,
            source,
        })?;
    let client = WechatClient::new(&config.wechat.api_base, config.wechat.http_timeout)?;
    let metrics = Arc::new(WorkerMetrics::new());
    let accounts = Arc::new(Registry::from_config(&config));
    let keys = Keys::new(&config.namespace);
    // Runtime accounts are kept current until the worker stops.
    tokio::spawn(Arc::clone(&accounts).watch(
        RuntimeAccounts::new(Arc::clone(&store), keys.clone()),
        metrics.accounts.clone(),
        shutdown.clone(),
    ));
    let observer = Arc::new(MetricsObserver::new(
        Arc::clone(&accounts),
        Arc::clone(&metrics),
    ));
    let tokens = TokenService::with_observer(
        Arc::clone(&store),
        Arc::new(client.clone()),
        TokenSettings {
            namespace: config.namespace.clone(),
            mode: config.wechat.token_mode,
            refresh_ahead: config.wechat.refresh_ahead,
            http_timeout: config.wechat.http_timeout,
        },
        Some(observer),
    );
    let api = Arc::new(grpc::Api {
        config: Arc::clone(&config),
        accounts: Arc::clone(&accounts),
        tokens: tokens.clone(),
        client: client.clone(),
        bus: Arc::clone(&bus),
        store: Arc::clone(&store),
        names: Names::new(&config.namespace),
        keys: keys.clone(),
        metrics: Arc::clone(&metrics),
        shutdown: shutdown.clone(),
    });
    let mut dropped_task = tokio::spawn(grpc::events::count_dropped(
        Arc::clone(&bus),
        Names::new(&config.namespace),
        Arc::clone(&metrics),
        shutdown.clone(),
    ));
    let ctx = Arc::new(consumer::Context {
        accounts: Arc::clone(&accounts),
        names: Names::new(&config.namespace),
        keys,
        bus: Arc::clone(&bus),
        store: Arc::clone(&store),
        tokens,
        client,
        metrics: Arc::clone(&metrics),
        config,
    });
    let health = Arc::new(health::Health {
        accounts,
        bus,
        store,
        metrics,
    });
    let http_task = tokio::spawn(health::serve(
        listener,
        health,
        ConnectionLimits {
            max_connections: api.config.worker.http_max_connections,
            header_read_timeout: api.config.worker.http_header_timeout,
            ..ConnectionLimits::default()
        },
        shutdown.clone(),
    ));
    tracing::info!(%http_addr, "worker listening for health and metrics");
    let grpc_task = tokio::spawn(grpc::serve(
        grpc_server,
        grpc_listener,
        api,
        shutdown.clone(),
    ));
    tracing::info!(%grpc_addr, tls = grpc_tls_on, "worker serving the grpc api");

    let task = tokio::spawn(async move {
        let result = consumer::run(ctx, shutdown).await;
        http_task.abort();
        // It stops on `shutdown`, counting what it had taken already.
        if tokio::time::timeout(Duration::from_secs(10), &mut dropped_task)
            .await
            .is_err()
        {
            dropped_task.abort();
            tracing::warn!("group drop counter still running after 10 s; stopping anyway");
        }
        // The server stops on `shutdown` too and lets calls in progress finish.
        match tokio::time::timeout(Duration::from_secs(10), grpc_task).await {
            Ok(_) => {}
            Err(_) => tracing::warn!("grpc calls still running after 10 s; stopping anyway"),
        }
        tracing::info!("worker stopped");
        result.map_err(WorkerError::from)
    });
    Ok(Worker {
        http_addr,
        grpc_addr,
        task,
    })
}

/// Feeds token refreshes into the metrics, labelled by account id (file and runtime
/// accounts alike, looked up in the registry's current snapshot).
struct MetricsObserver {
    metrics: Arc<WorkerMetrics>,
    accounts: Arc<Registry>,
}

impl MetricsObserver {
    fn new(accounts: Arc<Registry>, metrics: Arc<WorkerMetrics>) -> Self {
        Self { metrics, accounts }
    }

    /// The account id of `appid` ("" for an appid no account has). Always set, whatever
    /// `gateway.metrics_per_account` says: token series are one per account at most.
    fn account(&self, appid: &str) -> String {
        self.accounts
            .snapshot()
            .by_appid(appid)
            .map(|account| account.id.as_str().to_owned())
            .unwrap_or_default()
    }
}

impl TokenObserver for MetricsObserver {
    fn refreshed(&self, appid: &str, result: &'static str) {
        self.metrics
            .token_refresh
            .get_or_create(&AccountResult {
                account: self.account(appid),
                result,
            })
            .inc();
    }

    fn requests_today(&self, appid: &str, count: i64) {
        self.metrics
            .token_requests_today
            .get_or_create(&AccountLabel {
                account: self.account(appid),
            })
            .set(count);
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// `error` says `display` and carries its cause as a source, not in its own text (a log
    /// prints the chain, so the cause would show twice).
    fn check(error: &WorkerError, display: &str) {
        assert_eq!(error.to_string(), display);
        let source = error.source().expect("the cause is kept as the source");
        assert!(
            !display.contains(&source.to_string()),
            "{display} repeats {source}"
        );
    }

    #[tokio::test]
    async fn a_bad_redis_url_keeps_the_store_error_as_source() {
        let mut config =
            Config::from_toml("[worker]\nhttp_listen = \"127.0.0.1:0\"\n", |_| None).unwrap();
        // Config loading refuses such a URL; a config built in code can still carry one.
        config.redis = wxgate_core::config::RedisConfig::standalone("redis://127.0.0.1:notaport/0");
        let error = start(Arc::new(config), CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(error, WorkerError::Redis(_)), "{error:?}");
        check(&error, "bad redis url");
    }

    #[tokio::test]
    async fn a_failed_task_keeps_the_join_error_as_source() {
        let task = tokio::spawn(std::future::pending());
        task.abort();
        let worker = Worker {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            task,
        };
        let error = worker.wait().await.unwrap_err();
        assert!(matches!(error, WorkerError::Task(_)), "{error:?}");
        check(&error, "worker task failed");
    }

    #[test]
    fn token_metrics_name_the_account_whatever_the_gateway_switch() {
        let config = Config::from_toml(
            "[gateway]\nmetrics_per_account = false\n\n[[accounts]]\nid = \"demo\"\nappid = \"wx1\"\ntoken = \"t\"\nmode = \"plain\"\n",
            |_| None,
        )
        .unwrap();
        let metrics = Arc::new(WorkerMetrics::new());
        let observer = MetricsObserver::new(
            Arc::new(Registry::from_config(&config)),
            Arc::clone(&metrics),
        );
        observer.refreshed("wx1", "ok");
        observer.requests_today("wx1", 3);
        let text = metrics.encode();
        assert!(
            text.contains("wxgate_token_refresh_total{account=\"demo\",result=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wxgate_token_requests_today{account=\"demo\"} 3"),
            "{text}"
        );
    }
}

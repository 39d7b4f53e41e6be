//! wx-gateway: the HTTP edge of wxgate (docs/contract.md §1.1). Verifies WeChat callbacks, decrypts
//! safe-mode bodies, deduplicates WeChat's retries in the store, publishes every accepted
//! event to the bus with a publisher confirm, and only then answers.
//!
//! Holds no state of its own beyond the process: run as many as you like.

pub mod dedup;
pub mod event;
pub mod http;
pub mod pipeline;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wxgate_core::accounts::RuntimeAccounts;
use wxgate_core::rabbit::{RabbitBus, TopologyMismatch};
use wxgate_core::topology::Topology;
use wxgate_core::{Bus, Config, RedisStore, Store};

pub use state::Gateway;

/// Builds the runtime `gateway.threads` asks for, with timers and I/O. `1` is a current-thread
/// runtime: a callback, its dedup claim and its publish confirm wake each other without
/// crossing threads, which costs less CPU per callback than a work-stealing runtime. `0` is
/// one worker per CPU.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if threads > 1 {
            builder.worker_threads(threads);
        }
        builder
    };
    builder.enable_all().build()
}

/// Why [`serve`] could not serve or stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// `redis.url` / `redis.urls` is not usable.
    #[error("cannot use the redis url")]
    Redis(#[source] wxgate_core::StoreError),
    /// The broker holds a queue or exchange with other arguments than this configuration
    /// declares: a configuration error no retry can fix.
    #[error(transparent)]
    Topology(#[from] TopologyMismatch),
}

/// Serves callbacks on `listener` against the Redis and RabbitMQ of `config` until `shutdown`
/// is cancelled; then drains in-flight requests and closes the broker connection.
///
/// Redis and RabbitMQ are connected (and reconnected) in the background: while either is
/// down, `/readyz` and callbacks answer 503. If the broker refuses the topology
/// ([`TopologyMismatch`]), the gateway stops as on `shutdown` and returns the error.
pub async fn serve(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let background = CancellationToken::new();
    let store = RedisStore::connect_config(
        &config.redis,
        config.gateway.request_budget,
        background.clone(),
    )
    .map_err(ServeError::Redis)?;
    let bus = RabbitBus::connect_any(
        &config.rabbitmq.urls,
        Topology::for_config(&config),
        background.clone(),
    );
    let stop = shutdown.child_token();
    let gave_up = bus.stop_on_give_up(stop.clone());
    serve_with(
        config,
        listener,
        Arc::new(store),
        Arc::new(bus.clone()),
        stop,
    )
    .await;
    let mismatch = gave_up.finish().await;
    bus.close().await;
    background.cancel();
    match mismatch {
        Some(mismatch) => Err(mismatch.into()),
        None => Ok(()),
    }
}

/// Like [`serve`], with the store and bus given (in-memory ones for `wxgate dev`).
pub async fn serve_with(
    config: Arc<Config>,
    listener: TcpListener,
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    shutdown: CancellationToken,
) {
    let gateway = Arc::new(Gateway::new(config, store, bus));
    // Runtime accounts are kept current while the gateway serves, and stop with it.
    let sync = shutdown.child_token();
    tokio::spawn(Arc::clone(&gateway.accounts).watch(
        RuntimeAccounts::new(Arc::clone(&gateway.store), gateway.keys.clone()),
        gateway.metrics.accounts.clone(),
        sync.clone(),
    ));
    let _stop_sync = sync.drop_guard();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, file_accounts = gateway.config.accounts.len(), "wx-gateway listening");
    }
    if !gateway.bus.wait_ready(Duration::from_secs(5)).await {
        tracing::warn!("broker not ready yet; answering 503 until it is");
    }
    http::serve(Arc::clone(&gateway), listener, shutdown).await;
    // Answers of the last requests are still on their way to the store.
    gateway.answers.flush().await;
}

#[cfg(test)]
mod tests {
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn threads_choose_the_runtime() {
        let one = super::runtime(1).unwrap();
        assert_eq!(one.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        // Timers and I/O are enabled.
        one.block_on(async {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
        });

        let three = super::runtime(3).unwrap();
        assert_eq!(three.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(three.metrics().num_workers(), 3);

        let per_cpu = super::runtime(0).unwrap();
        assert_eq!(
            per_cpu.handle().runtime_flavor(),
            RuntimeFlavor::MultiThread
        );
        assert!(per_cpu.metrics().num_workers() >= 1);
    }
}

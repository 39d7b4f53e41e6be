//! Clean-up that runs however a test ends: Redis keys of a namespace, and work for `Drop`
//! (where the test's runtime may be unwinding).

use std::future::Future;
use std::time::Duration;

/// How long deleting a namespace's Redis keys may take.
const REDIS_CLEANUP: Duration = Duration::from_secs(10);

/// Runs `work` to its end on a thread with a runtime of its own, and waits for it: for
/// `Drop`, which cannot await and may run while the test's runtime is unwinding from a
/// panic. Bound `work` yourself; a runtime that cannot be built skips it.
pub fn on_own_runtime<F>(work: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let _ = std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(work);
        }
    })
    .join();
}

/// The Redis keys `{ns}:*` of a test: deleted by [`RedisKeys::remove`] at the end of the test,
/// or when dropped if the test ended first (a failed assertion), so no run leaves keys behind.
#[derive(Debug)]
pub struct RedisKeys {
    ns: String,
    redis_url: String,
    removed: bool,
}

impl RedisKeys {
    /// Guards the keys `{ns}:*` on the Redis at `redis_url`.
    pub fn guard(ns: &str, redis_url: &str) -> RedisKeys {
        RedisKeys {
            ns: ns.to_owned(),
            redis_url: redis_url.to_owned(),
            removed: false,
        }
    }

    /// Deletes the keys now; panics when that fails or takes over 10 s.
    pub async fn remove(mut self) {
        self.removed = true;
        match tokio::time::timeout(REDIS_CLEANUP, purge_redis(&self.ns, &self.redis_url)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("deleting the keys {}:*: {e}", self.ns),
            Err(_) => panic!(
                "deleting the keys {}:* took over {REDIS_CLEANUP:?}",
                self.ns
            ),
        }
    }
}

impl Drop for RedisKeys {
    /// Deletes the keys when the test ended without [`RedisKeys::remove`]; errors are
    /// ignored, the test has failed already.
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let (ns, redis_url) = (self.ns.clone(), self.redis_url.clone());
        on_own_runtime(async move {
            let _ = tokio::time::timeout(REDIS_CLEANUP, purge_redis(&ns, &redis_url)).await;
        });
    }
}

/// Deletes every Redis key `{ns}:*`: SCAN MATCH, then DEL of each batch found.
pub(crate) async fn purge_redis(ns: &str, redis_url: &str) -> Result<(), String> {
    let client = redis::Client::open(redis_url).map_err(|e| format!("Redis: {e}"))?;
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("Redis: {e}"))?;
    let pattern = format!("{ns}:*");
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            // The database may be shared with many other keys: few, large steps.
            .arg("COUNT")
            .arg(20_000)
            .query_async(&mut redis)
            .await
            .map_err(|e| format!("Redis SCAN: {e}"))?;
        if !keys.is_empty() {
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<i64>(&mut redis)
                .await
                .map_err(|e| format!("Redis DEL: {e}"))?;
        }
        cursor = next;
        if cursor == 0 {
            return Ok(());
        }
    }
}

/// How long deleting a namespace's queues, exchange and keys may take when dropped.
const NAMESPACE_CLEANUP: std::time::Duration = std::time::Duration::from_secs(60);

/// Everything a test created under namespace `ns` — `{ns}.worker`, its `retry_queues` retry
/// queues, `{ns}.worker.dead`, the exchange `{ns}.events` and the Redis keys `{ns}:*` —
/// deleted when the guard is dropped, however the test ends. For tests that do not run a
/// whole [`crate::TestEnv`].
#[derive(Debug)]
pub struct Namespace {
    /// The namespace.
    pub ns: String,
    retry_queues: usize,
}

impl Namespace {
    /// A fresh random namespace `t<hex>` with `retry_queues` retry queues to delete.
    pub fn random(retry_queues: usize) -> Namespace {
        Namespace {
            ns: format!("t{:016x}", rand::random::<u64>()),
            retry_queues,
        }
    }
}

impl Drop for Namespace {
    /// Deletes the namespace's objects; errors are ignored (a missing queue is fine).
    fn drop(&mut self) {
        let (ns, retry_queues) = (self.ns.clone(), self.retry_queues);
        on_own_runtime(async move {
            let _ = tokio::time::timeout(
                NAMESPACE_CLEANUP,
                crate::remove_namespace(
                    &ns,
                    &crate::redis_url(),
                    &crate::rabbitmq_url(),
                    retry_queues,
                ),
            )
            .await;
        });
    }
}

impl Namespace {
    /// Declares `{ns}.worker` as a durable classic queue, as a deployment from before
    /// `rabbitmq.queue_type` applied to every queue might hold it.
    pub async fn declare_classic_worker_queue(&self) {
        use lapin::options::QueueDeclareOptions;
        use lapin::types::{AMQPValue, FieldTable, LongString};

        let connection = lapin::Connection::connect(
            &crate::rabbitmq_url(),
            lapin::ConnectionProperties::default(),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RabbitMQ is not reachable at {} ({e}); start it with: rabbitmq-server -detached",
                crate::rabbitmq_url()
            )
        });
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from(b"classic".to_vec())),
        );
        connection
            .create_channel()
            .await
            .unwrap()
            .queue_declare(
                format!("{}.worker", self.ns).as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await
            .unwrap();
        let _ = connection.close(200, "declared".into()).await;
    }
}

/// A [`wxgate_core::store::RedisStore`] on [`crate::redis_url`], connected and answering;
/// panics with how to start Redis when it is not within 10 s. `shutdown` stops its
/// background task.
pub async fn ready_redis_store(
    shutdown: &tokio_util::sync::CancellationToken,
) -> wxgate_core::store::RedisStore {
    use wxgate_core::store::Store;

    let url = crate::redis_url();
    let store =
        wxgate_core::store::RedisStore::connect(&url, Duration::from_secs(2), shutdown.clone())
            .unwrap_or_else(|e| panic!("{url:?} is not a Redis URL: {e}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !store.is_ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis at {url} is not reachable; start it with: redis-server --daemonize yes --port 6379 --save ''"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store
}

//! The key-value store (docs/contract.md §1): the narrow set of Redis operations wxgate needs, as a
//! trait with a Redis implementation and an in-memory one with the same semantics.
//!
//! Every key is a full key (`{ns}:dedup:…`); implementations add no prefix.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};
use tokio_util::sync::CancellationToken;

use crate::config::{RedisConfig, RedisMode};

/// A store failure. Callers treat every variant as "the store is unavailable right now"
/// unless they can act on the kind ([`StoreError::WrongType`] and
/// [`StoreError::NotAnInteger`] mean another writer put an unexpected value under a key).
///
/// `Clone`, so one failed pipeline can fail every request that rode on it; the source is
/// shared.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Not connected (yet, or any more).
    #[error("store is not connected")]
    Unavailable,
    /// A URL of `redis.url` / `redis.urls` is not a valid Redis URL.
    #[error("invalid redis url")]
    Url(#[source] Arc<redis::RedisError>),
    /// `redis.mode = "sentinel"` without `redis.sentinel_master`.
    #[error("sentinel mode needs the master's name (redis.sentinel_master)")]
    NoSentinelMaster,
    /// The command failed, timed out or the connection broke while it ran.
    #[error("store command failed")]
    Command(#[source] Arc<redis::RedisError>),
    /// The key holds a value of another type (a hash where a string was expected, or the
    /// reverse).
    #[error("key holds a value of another type")]
    WrongType,
    /// `INCR` on a value that is not an integer, or an increment past `i64::MAX`.
    #[error("value is not an integer or would overflow")]
    NotAnInteger,
}

impl StoreError {
    fn command(error: redis::RedisError) -> Self {
        Self::Command(Arc::new(error))
    }
}

/// Result of [`Store::set_nx_get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetNx {
    /// The key was absent and now holds the value.
    Set,
    /// The key already existed; its value is returned and nothing changed.
    Exists(Vec<u8>),
}

/// The store operations. All are atomic on their own; none waits longer than the
/// implementation's command timeout.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `GET key`.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// `SET key value NX GET PX ttl` in one round trip: sets the key if absent, else returns
    /// the current value.
    async fn set_nx_get(&self, key: &str, value: &[u8], ttl: Duration)
    -> Result<SetNx, StoreError>;
    /// [`Store::set_nx_get`] for every key, sent together (one round trip for Redis); the
    /// results in the order of `keys`.
    async fn set_nx_get_many(
        &self,
        keys: &[String],
        value: &[u8],
        ttl: Duration,
    ) -> Result<Vec<SetNx>, StoreError>;
    /// `SET key value NX PX ttl`; true when it was set.
    async fn set_nx(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError>;
    /// `SET key value XX PX ttl`; true when the key existed and was overwritten.
    async fn set_xx(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError>;
    /// `SET key value XX PX ttl` for every entry, sent together (one round trip for Redis);
    /// returns how many keys existed and were overwritten.
    async fn set_xx_many(
        &self,
        entries: &[(String, Vec<u8>)],
        ttl: Duration,
    ) -> Result<usize, StoreError>;
    /// `SET key value [PX ttl]` unconditionally.
    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError>;
    /// `DEL key`; true when a key was removed.
    async fn del(&self, key: &str) -> Result<bool, StoreError>;
    /// Deletes `key` only if it holds exactly `expected` (by script); true when deleted.
    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, StoreError>;
    /// Sets `key` to expire `ttl` from now only if it holds exactly `expected` (by script),
    /// so only the owner of a lock can extend it; true when extended.
    async fn compare_and_expire(
        &self,
        key: &str,
        expected: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError>;
    /// `INCR key`, setting `ttl` when the key was created by this call.
    async fn incr(&self, key: &str, ttl: Option<Duration>) -> Result<i64, StoreError>;
    /// `PTTL key` as a duration; `None` when the key is absent or has no expiry.
    async fn pttl(&self, key: &str) -> Result<Option<Duration>, StoreError>;
    /// `HGET key field`.
    async fn hget(&self, key: &str, field: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// `HSET key field value`.
    async fn hset(&self, key: &str, field: &str, value: &[u8]) -> Result<(), StoreError>;
    /// `HDEL key field`; true when removed.
    async fn hdel(&self, key: &str, field: &str) -> Result<bool, StoreError>;
    /// `HGETALL key`.
    async fn hgetall(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Whether the last health check reached the store.
    fn is_ready(&self) -> bool;
}

/// Redis implementation for the three `redis.mode`s: one multiplexed connection shared by
/// every caller ([`ConnectionManager`] to a standalone server or to the master the sentinels
/// name; [`ClusterConnection`] to a Redis Cluster, which routes each command to the master of
/// its key's slot), (re)connected in the background. Commands fail fast with
/// [`StoreError::Unavailable`] until the first connection is up.
///
/// Every operation touches one key, so every one is valid on a cluster; the batched ones
/// ([`Store::set_nx_get_many`], [`Store::set_xx_many`]) are pipelined per slot there.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<RedisShared>,
}

struct RedisShared {
    link: RwLock<Option<Link>>,
    ready: AtomicBool,
}

/// The live connection; clones share it.
#[derive(Clone)]
enum Link {
    /// A standalone server, or the master a sentinel named.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Link {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

const COMPARE_AND_DELETE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
const COMPARE_AND_EXPIRE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
const INCR_WITH_TTL: &str = "local v = redis.call('INCR', KEYS[1]) if v == 1 and tonumber(ARGV[1]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return v";

/// How often the supervisor checks the connection (and asks the sentinels who the master is,
/// or a cluster's seeds who the masters are).
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);

/// How soon the supervisor checks again after a failed check.
const HEALTH_RETRY_INTERVAL: Duration = Duration::from_millis(250);

/// How long a health check may take before it counts as failed.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// Failed health checks in a row after which a cluster connection is built anew (so that the
/// slot map is read again).
const CLUSTER_REBUILD_AFTER: u32 = 2;

/// The longest wait between cluster connections built anew because pings keep failing (a
/// master down with no replica to take over): 1 s, doubling up to this.
const CLUSTER_REBUILD_MAX_WAIT: Duration = Duration::from_secs(8);

/// A cluster connection that stayed up this long before pings failed starts the waits between
/// rebuilds from the beginning again.
const CLUSTER_STABLE: Duration = Duration::from_secs(30);

/// Why [`RedisStore::watch`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watched {
    /// `shutdown` was cancelled.
    Shutdown,
    /// The future it watched resolved.
    Until,
    /// Health checks failed `give_up_after` times in a row.
    Unhealthy,
}

impl RedisStore {
    /// A standalone Redis at `url`: [`RedisStore::connect_config`] with
    /// [`RedisConfig::standalone`].
    pub fn connect(
        url: &str,
        command_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Result<Self, StoreError> {
        Self::connect_config(&RedisConfig::standalone(url), command_timeout, shutdown)
    }

    /// Starts connecting as `config` says (standalone, cluster or sentinel) in the background
    /// and health-checks every 500 ms until `shutdown` is cancelled. `command_timeout` bounds
    /// every command (and each connection attempt).
    ///
    /// Fails only when a URL of `config` is not a valid Redis URL, or a sentinel
    /// configuration names no master.
    pub fn connect_config(
        config: &RedisConfig,
        command_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Result<Self, StoreError> {
        let infos = config
            .urls
            .iter()
            .map(|url| url.as_str().into_connection_info())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Url(Arc::new(e)))?;
        let shared = Arc::new(RedisShared {
            link: RwLock::new(None),
            ready: AtomicBool::new(false),
        });
        let store = Self {
            shared: Arc::clone(&shared),
        };
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(command_timeout))
            .set_response_timeout(Some(command_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        match config.mode {
            RedisMode::Standalone => {
                let client = redis::Client::open(infos[0].clone())
                    .map_err(|e| StoreError::Url(Arc::new(e)))?;
                tokio::spawn(async move {
                    let Some(manager) = retry("redis connect", &shutdown, || {
                        ConnectionManager::new_with_config(client.clone(), manager_config.clone())
                    })
                    .await
                    else {
                        return;
                    };
                    tracing::info!(mode = "standalone", "redis connected");
                    store.set_link(Link::Single(manager));
                    store.watch(&shutdown, std::future::pending(), None).await;
                });
            }
            RedisMode::Cluster => {
                let seeds = Probe::new(&infos, command_timeout.min(HEALTH_TIMEOUT));
                let client = ClusterClientBuilder::new(infos)
                    .connection_timeout(command_timeout)
                    .response_timeout(command_timeout)
                    .retries(2)
                    .min_retry_wait(50)
                    .max_retry_wait(500)
                    .build()
                    .map_err(|e| StoreError::Url(Arc::new(e)))?;
                tokio::spawn(async move {
                    store.follow_cluster(&client, &seeds, &shutdown).await;
                });
            }
            RedisMode::Sentinel => {
                let master = config
                    .sentinel_master
                    .clone()
                    .ok_or(StoreError::NoSentinelMaster)?;
                let sentinels = Sentinels {
                    probe: Probe::new(&infos, command_timeout),
                    infos,
                    master,
                };
                tokio::spawn(async move {
                    store
                        .follow_sentinels(&sentinels, &manager_config, &shutdown)
                        .await;
                });
            }
        }
        Ok(Self { shared })
    }

    /// Cluster mode: connects from the seeds, and connects anew — which reads the slot map
    /// again — when the seeds name other masters (a failover) or the masters stop answering
    /// pings, until `shutdown`.
    ///
    /// The cluster connection follows `MOVED` on its own, but a master that died never answers
    /// one: its slots stay routed to it until the slot map is read again, and the client's own
    /// repair can stall for seconds on the dead node.
    async fn follow_cluster(
        &self,
        client: &ClusterClient,
        seeds: &Probe,
        shutdown: &CancellationToken,
    ) {
        let mut wait = Duration::ZERO;
        loop {
            // Read before connecting, so that a failover in between usually shows as a change
            // below. Not always: the seed asked here and the node the client reads may differ,
            // and a failover between the two reads is then left to the pings.
            let known = tokio::select! {
                () = shutdown.cancelled() => return,
                read = tokio::time::timeout(HEALTH_TIMEOUT, masters(seeds)) => {
                    read.ok().and_then(Result::ok)
                }
            };
            let Some(connection) = retry("redis cluster connect", shutdown, || {
                client.get_async_connection()
            })
            .await
            else {
                return;
            };
            tracing::info!(mode = "cluster", "redis connected");
            self.set_link(Link::Cluster(connection));
            let connected = Instant::now();
            match self
                .watch(
                    shutdown,
                    masters_change(seeds, known.clone()),
                    Some(CLUSTER_REBUILD_AFTER),
                )
                .await
            {
                Watched::Shutdown => return,
                Watched::Until => {
                    tracing::warn!(
                        "redis cluster: the seeds name other masters (a failover); reading the slot map again"
                    );
                    wait = Duration::ZERO;
                }
                Watched::Unhealthy => {
                    // The masters may stay unreachable (a master down with no replica to take
                    // over): do not reconnect in a tight loop, but follow a failover at once.
                    if connected.elapsed() >= CLUSTER_STABLE {
                        wait = Duration::ZERO;
                    }
                    tracing::warn!(
                        retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        "redis cluster: the masters do not answer pings; reading the slot map again"
                    );
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(wait) => {}
                        () = masters_change(seeds, known) => {}
                    }
                    wait = (wait * 2)
                        .max(Duration::from_secs(1))
                        .min(CLUSTER_REBUILD_MAX_WAIT);
                }
            }
        }
    }

    /// Sentinel mode: connects to the master the sentinels name, and moves to the new one
    /// when they name another (a failover), until `shutdown`.
    async fn follow_sentinels(
        &self,
        sentinels: &Sentinels,
        manager_config: &ConnectionManagerConfig,
        shutdown: &CancellationToken,
    ) {
        loop {
            let Some((master, manager)) = retry("redis sentinel connect", shutdown, || async {
                let master = sentinels.master_addr().await?;
                let client = redis::Client::open(sentinels.master_info(&master))?;
                let mut manager =
                    ConnectionManager::new_with_config(client, manager_config.clone()).await?;
                // A sentinel may answer from before a failover it has not seen yet.
                let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut manager).await?;
                match role.first() {
                    Some(redis::Value::BulkString(role)) if role.as_slice() == b"master" => {
                        Ok((master, manager))
                    }
                    _ => Err(redis::RedisError::from((
                        redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
                        "the node the sentinels named is not a master",
                    ))),
                }
            })
            .await
            else {
                return;
            };
            tracing::info!(mode = "sentinel", master = %master, "redis connected to the master");
            self.set_link(Link::Single(manager));
            let moved = async {
                loop {
                    tokio::time::sleep(HEALTH_INTERVAL).await;
                    match sentinels.master_addr().await {
                        Ok(now) if now != master => {
                            tracing::warn!(from = %master, to = %now, "redis master moved (failover)");
                            return;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "no sentinel answered; keeping the master")
                        }
                    }
                }
            };
            if self.watch(shutdown, moved, None).await == Watched::Shutdown {
                return;
            }
            self.shared.ready.store(false, Ordering::Relaxed);
            if let Ok(mut slot) = self.shared.link.write() {
                *slot = None;
            }
        }
    }

    fn set_link(&self, link: Link) {
        if let Ok(mut slot) = self.shared.link.write() {
            *slot = Some(link);
        }
    }

    /// Pings every [`HEALTH_INTERVAL`] ([`HEALTH_RETRY_INTERVAL`] after a failed ping) and
    /// keeps `ready` up to date until `shutdown`, `until` resolves, or `give_up_after` pings in
    /// a row failed ([`Watched::Unhealthy`]).
    async fn watch(
        &self,
        shutdown: &CancellationToken,
        until: impl Future<Output = ()>,
        give_up_after: Option<u32>,
    ) -> Watched {
        let mut until = std::pin::pin!(until);
        let mut failed_in_row = 0_u32;
        loop {
            let ping = async {
                let Ok(mut link) = self.link() else {
                    return false;
                };
                let ping = redis::cmd("PING");
                matches!(
                    tokio::time::timeout(
                        HEALTH_TIMEOUT,
                        ping.query_async::<redis::Value>(&mut link)
                    )
                    .await,
                    Ok(Ok(_))
                )
            };
            // `until` is watched during the ping too: a ping may hang for HEALTH_TIMEOUT
            // exactly when `until` has news (a failover).
            let ok = tokio::select! {
                () = shutdown.cancelled() => return Watched::Shutdown,
                () = &mut until => return Watched::Until,
                ok = ping => ok,
            };
            if self.shared.ready.swap(ok, Ordering::Relaxed) != ok {
                if ok {
                    tracing::info!("redis reachable");
                } else {
                    tracing::warn!("redis unreachable");
                }
            }
            failed_in_row = if ok { 0 } else { failed_in_row + 1 };
            if give_up_after.is_some_and(|limit| failed_in_row >= limit) {
                return Watched::Unhealthy;
            }
            let next = if ok {
                HEALTH_INTERVAL
            } else {
                HEALTH_RETRY_INTERVAL
            };
            tokio::select! {
                () = shutdown.cancelled() => return Watched::Shutdown,
                () = &mut until => return Watched::Until,
                () = tokio::time::sleep(next) => {}
            }
        }
    }

    fn link(&self) -> Result<Link, StoreError> {
        self.shared
            .link
            .read()
            .ok()
            .and_then(|slot| slot.clone())
            .ok_or(StoreError::Unavailable)
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut link = self.link()?;
        cmd.query_async(&mut link).await.map_err(|e| self.failed(e))
    }

    /// Sends `commands` (one per key, `keys[i]` for `commands[i]`) together: one pipeline on a
    /// single server; on a cluster one pipeline per slot (a pipeline may not cross slots),
    /// sent concurrently. The replies in the order of `commands`.
    async fn query_each<T: redis::FromRedisValue>(
        &self,
        keys: &[&str],
        commands: Vec<redis::Cmd>,
    ) -> Result<Vec<T>, StoreError> {
        let link = self.link()?;
        if let Link::Cluster(_) = link {
            let mut groups: HashMap<Slot, (redis::Pipeline, Vec<usize>)> = HashMap::new();
            for (i, (key, cmd)) in keys.iter().zip(commands).enumerate() {
                let (pipe, positions) = groups.entry(Slot::for_key(key)).or_default();
                pipe.add_command(cmd);
                positions.push(i);
            }
            let sent = groups.into_values().map(|(pipe, positions)| {
                let mut link = link.clone();
                async move {
                    let replies: Vec<T> = pipe.query_async(&mut link).await?;
                    Ok::<_, redis::RedisError>((positions, replies))
                }
            });
            let answered = futures_util::future::try_join_all(sent)
                .await
                .map_err(|e| self.failed(e))?;
            let mut ordered: Vec<Option<T>> = (0..keys.len()).map(|_| None).collect();
            for (positions, replies) in answered {
                for (i, reply) in positions.into_iter().zip(replies) {
                    ordered[i] = Some(reply);
                }
            }
            ordered
                .into_iter()
                .map(|reply| {
                    reply.ok_or_else(|| {
                        StoreError::command(redis::RedisError::from((
                            redis::ErrorKind::Client,
                            "a pipeline answered fewer replies than it had commands",
                        )))
                    })
                })
                .collect()
        } else {
            let mut pipe = redis::pipe();
            for cmd in commands {
                pipe.add_command(cmd);
            }
            let mut link = link;
            pipe.query_async(&mut link)
                .await
                .map_err(|e| self.failed(e))
        }
    }

    /// A failed command: not ready until the next health check says otherwise.
    fn failed(&self, error: redis::RedisError) -> StoreError {
        self.shared.ready.store(false, Ordering::Relaxed);
        StoreError::command(error)
    }

    async fn script<T: redis::FromRedisValue>(
        &self,
        script: &str,
        key: &str,
        args: &[&[u8]],
    ) -> Result<T, StoreError> {
        let mut link = self.link()?;
        let script = redis::Script::new(script);
        let mut invocation = script.key(key);
        for arg in args {
            invocation.arg(*arg);
        }
        invocation
            .invoke_async(&mut link)
            .await
            .map_err(|e| self.failed(e))
    }
}

/// Calls `attempt` until it succeeds (then `Some`) or `shutdown` is cancelled (`None`),
/// backing off from 100 ms to 2 s and logging each failure as `what`.
async fn retry<T, F, Fut>(
    what: &'static str,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = redis::RedisResult<T>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => return None,
            r = attempt() => r,
        };
        match result {
            Ok(value) => return Some(value),
            Err(e) => {
                tracing::warn!(error = %e, "{what} failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// A plain connection to whichever of some servers answers first, kept while it keeps
/// answering: the sentinels, or a cluster's seed nodes.
struct Probe {
    /// The servers, with the username and password of their URLs and database 0 (sentinels
    /// have no databases, a cluster only 0).
    infos: Vec<ConnectionInfo>,
    timeout: Duration,
    /// The connection to the server that answered last.
    connection: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl Probe {
    fn new(infos: &[ConnectionInfo], timeout: Duration) -> Self {
        let infos = infos
            .iter()
            .map(|info| {
                info.clone()
                    .set_redis_settings(info.redis_settings().clone().set_db(0))
            })
            .collect();
        Self {
            infos,
            timeout,
            connection: tokio::sync::Mutex::new(None),
        }
    }

    /// `command`'s answer from the server that answered last, else from the first that
    /// answers, each within the timeout, as `usable` makes of it. An answer it makes `None` of
    /// counts as no answer: the next server is asked (a sentinel that does not know the
    /// master, a node that has left its cluster), and `unusable` is the error when no server
    /// had a usable one.
    async fn query<T: redis::FromRedisValue, U>(
        &self,
        command: &redis::Cmd,
        usable: impl Fn(T) -> Option<U>,
        unusable: &'static str,
    ) -> redis::RedisResult<U> {
        let unusable = || redis::RedisError::from((redis::ErrorKind::Client, unusable));
        let mut cached = self.connection.lock().await;
        if let Some(connection) = cached.as_mut()
            && let Ok(answer) = self.ask(connection, command).await
            && let Some(answer) = usable(answer)
        {
            return Ok(answer);
        }
        *cached = None;
        let mut last = redis::RedisError::from((redis::ErrorKind::Client, "no server configured"));
        for info in &self.infos {
            let connected = async {
                redis::Client::open(info.clone())?
                    .get_multiplexed_async_connection()
                    .await
            };
            let mut connection = match tokio::time::timeout(self.timeout, connected).await {
                Ok(Ok(connection)) => connection,
                Ok(Err(e)) => {
                    last = e;
                    continue;
                }
                Err(_) => {
                    last = timed_out("a server did not accept a connection in time");
                    continue;
                }
            };
            match self.ask(&mut connection, command).await.map(&usable) {
                Ok(Some(answer)) => {
                    *cached = Some(connection);
                    return Ok(answer);
                }
                Ok(None) => last = unusable(),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn ask<T: redis::FromRedisValue>(
        &self,
        connection: &mut MultiplexedConnection,
        command: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        match tokio::time::timeout(self.timeout, command.query_async(connection)).await {
            Ok(answer) => answer,
            Err(_) => Err(timed_out("a server did not answer in time")),
        }
    }
}

/// The masters holding slots, as a cluster node's `CLUSTER SLOTS` says: their `host:port`,
/// sorted, each once. Slot ranges and replicas are left out, so that a failover shows as a
/// difference but a resharding (which `MOVED` and `ASK` handle) does not.
async fn masters(seeds: &Probe) -> redis::RedisResult<Vec<String>> {
    let ranges: Vec<redis::Value> = seeds
        .query(
            redis::cmd("CLUSTER").arg("SLOTS"),
            |ranges: Vec<redis::Value>| (!ranges.is_empty()).then_some(ranges),
            "no seed node has slots: not a cluster, or it left its cluster",
        )
        .await?;
    let mut masters: Vec<String> = ranges
        .iter()
        .filter_map(|range| match range {
            redis::Value::Array(fields) => match fields.get(2) {
                Some(redis::Value::Array(node)) => {
                    let host = redis::from_redis_value_ref::<String>(node.first()?).ok()?;
                    let port = redis::from_redis_value_ref::<u16>(node.get(1)?).ok()?;
                    Some(format!("{host}:{port}"))
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    masters.sort();
    masters.dedup();
    Ok(masters)
}

/// Resolves when the seeds name masters other than `known` (`None`: what they name the first
/// time they answer), asking every [`HEALTH_INTERVAL`]; never while no seed answers, which is
/// logged once.
async fn masters_change(seeds: &Probe, mut known: Option<Vec<String>>) {
    let mut answering = true;
    loop {
        tokio::time::sleep(HEALTH_INTERVAL).await;
        match masters(seeds).await {
            Ok(now) => {
                if !answering {
                    tracing::info!("redis cluster: a seed answers CLUSTER SLOTS again");
                    answering = true;
                }
                match &known {
                    Some(known) if *known != now => return,
                    Some(_) => {}
                    None => known = Some(now),
                }
            }
            Err(e) => {
                if answering {
                    tracing::warn!(
                        error = %e,
                        "redis cluster: no seed answers CLUSTER SLOTS; failovers are followed by pings only"
                    );
                    answering = false;
                }
            }
        }
    }
}

/// The sentinels of `redis.urls` and the master they watch.
struct Sentinels {
    /// As configured: the address of each sentinel, with the username, password and database
    /// the master connection uses.
    infos: Vec<ConnectionInfo>,
    master: String,
    /// The sentinels, asked in turn.
    probe: Probe,
}

fn timed_out(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, what))
}

impl Sentinels {
    /// `SENTINEL get-master-addr-by-name`, on the sentinel that answered last, else asking
    /// each in turn until one answers.
    async fn master_addr(&self) -> redis::RedisResult<ConnectionAddr> {
        let mut command = redis::cmd("SENTINEL");
        command.arg("get-master-addr-by-name").arg(&self.master);
        let (host, port) = self
            .probe
            .query(
                &command,
                |answer: Option<(String, u16)>| answer,
                "no sentinel knows the master named by redis.sentinel_master",
            )
            .await?;
        Ok(ConnectionAddr::Tcp(host, port))
    }

    /// How to reach the master at `addr`: the credentials and database of the first sentinel
    /// URL.
    fn master_info(&self, addr: &ConnectionAddr) -> ConnectionInfo {
        self.infos[0].clone().set_addr(addr.clone())
    }
}

/// `SET key value` with room for `args` arguments in all, sized up front: growing a command
/// argument by argument cost a dozen reallocations per callback.
fn set_cmd(key: &str, value: &[u8], args: usize) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(args, 3 + key.len() + value.len() + 32);
    cmd.arg("SET").arg(key).arg(value);
    cmd
}

fn px(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl Store for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.query(redis::cmd("GET").arg(key)).await
    }

    async fn set_nx_get(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<SetNx, StoreError> {
        let old: Option<Vec<u8>> = self
            .query(
                set_cmd(key, value, 7)
                    .arg("NX")
                    .arg("GET")
                    .arg("PX")
                    .arg(px(ttl)),
            )
            .await?;
        Ok(match old {
            None => SetNx::Set,
            Some(v) => SetNx::Exists(v),
        })
    }

    async fn set_nx_get_many(
        &self,
        keys: &[String],
        value: &[u8],
        ttl: Duration,
    ) -> Result<Vec<SetNx>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let px = px(ttl);
        let commands = keys
            .iter()
            .map(|key| {
                let mut set = set_cmd(key, value, 7);
                set.arg("NX").arg("GET").arg("PX").arg(px);
                set
            })
            .collect();
        let names: Vec<&str> = keys.iter().map(String::as_str).collect();
        let replies: Vec<Option<Vec<u8>>> = self.query_each(&names, commands).await?;
        Ok(replies
            .into_iter()
            .map(|old| match old {
                None => SetNx::Set,
                Some(v) => SetNx::Exists(v),
            })
            .collect())
    }

    async fn set_nx(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        let r: Option<String> = self
            .query(set_cmd(key, value, 6).arg("NX").arg("PX").arg(px(ttl)))
            .await?;
        Ok(r.is_some())
    }

    async fn set_xx(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        let r: Option<String> = self
            .query(set_cmd(key, value, 6).arg("XX").arg("PX").arg(px(ttl)))
            .await?;
        Ok(r.is_some())
    }

    async fn set_xx_many(
        &self,
        entries: &[(String, Vec<u8>)],
        ttl: Duration,
    ) -> Result<usize, StoreError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let px = px(ttl);
        let commands = entries
            .iter()
            .map(|(key, value)| {
                let mut set = set_cmd(key, value, 6);
                set.arg("XX").arg("PX").arg(px);
                set
            })
            .collect();
        let names: Vec<&str> = entries.iter().map(|(key, _)| key.as_str()).collect();
        let replies: Vec<Option<String>> = self.query_each(&names, commands).await?;
        Ok(replies.iter().filter(|r| r.is_some()).count())
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(px(ttl));
        }
        let _: Option<String> = self.query(&cmd).await?;
        Ok(())
    }

    async fn del(&self, key: &str) -> Result<bool, StoreError> {
        let n: i64 = self.query(redis::cmd("DEL").arg(key)).await?;
        Ok(n > 0)
    }

    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, StoreError> {
        let n: i64 = self.script(COMPARE_AND_DELETE, key, &[expected]).await?;
        Ok(n > 0)
    }

    async fn compare_and_expire(
        &self,
        key: &str,
        expected: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let ms = px(ttl).to_string();
        let n: i64 = self
            .script(COMPARE_AND_EXPIRE, key, &[expected, ms.as_bytes()])
            .await?;
        Ok(n > 0)
    }

    async fn incr(&self, key: &str, ttl: Option<Duration>) -> Result<i64, StoreError> {
        let ms = ttl.map_or(0, px).to_string();
        self.script(INCR_WITH_TTL, key, &[ms.as_bytes()]).await
    }

    async fn pttl(&self, key: &str) -> Result<Option<Duration>, StoreError> {
        let ms: i64 = self.query(redis::cmd("PTTL").arg(key)).await?;
        Ok(u64::try_from(ms).ok().map(Duration::from_millis))
    }

    async fn hget(&self, key: &str, field: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.query(redis::cmd("HGET").arg(key).arg(field)).await
    }

    async fn hset(&self, key: &str, field: &str, value: &[u8]) -> Result<(), StoreError> {
        let _: i64 = self
            .query(redis::cmd("HSET").arg(key).arg(field).arg(value))
            .await?;
        Ok(())
    }

    async fn hdel(&self, key: &str, field: &str) -> Result<bool, StoreError> {
        let n: i64 = self.query(redis::cmd("HDEL").arg(key).arg(field)).await?;
        Ok(n > 0)
    }

    async fn hgetall(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.query(redis::cmd("HGETALL").arg(key)).await
    }

    fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Relaxed)
    }
}

/// In-memory implementation with Redis's semantics (expiry checked on access), for
/// `wxgate dev` and tests. Cheap to clone; clones share the data.
#[derive(Clone, Default)]
pub struct MemoryStore {
    data: Arc<Mutex<HashMap<String, Entry>>>,
}

#[derive(Clone)]
enum Value {
    Bytes(Vec<u8>),
    Hash(HashMap<String, Vec<u8>>),
}

#[derive(Clone)]
struct Entry {
    value: Value,
    expires_at: Option<Instant>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Entry>, Instant) -> T) -> T {
        // A poisoned lock only means another task panicked mid-update of a plain map; the
        // map itself is still consistent, so keep serving.
        let mut data = self
            .data
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        f(&mut data, now)
    }
}

fn live<'a>(
    data: &'a mut HashMap<String, Entry>,
    key: &str,
    now: Instant,
) -> Option<&'a mut Entry> {
    if data
        .get(key)
        .is_some_and(|e| e.expires_at.is_some_and(|t| t <= now))
    {
        data.remove(key);
    }
    data.get_mut(key)
}

fn bytes_of(entry: Option<&mut Entry>) -> Result<Option<Vec<u8>>, StoreError> {
    match entry {
        None => Ok(None),
        Some(Entry {
            value: Value::Bytes(b),
            ..
        }) => Ok(Some(b.clone())),
        Some(_) => Err(StoreError::WrongType),
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|d, now| bytes_of(live(d, key, now)))
    }

    async fn set_nx_get(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<SetNx, StoreError> {
        self.with(|d, now| {
            if let Some(old) = bytes_of(live(d, key, now))? {
                return Ok(SetNx::Exists(old));
            }
            d.insert(
                key.to_owned(),
                Entry {
                    value: Value::Bytes(value.to_vec()),
                    expires_at: Some(now + ttl),
                },
            );
            Ok(SetNx::Set)
        })
    }

    async fn set_nx_get_many(
        &self,
        keys: &[String],
        value: &[u8],
        ttl: Duration,
    ) -> Result<Vec<SetNx>, StoreError> {
        let mut results = Vec::with_capacity(keys.len());
        for key in keys {
            results.push(self.set_nx_get(key, value, ttl).await?);
        }
        Ok(results)
    }

    async fn set_nx(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        Ok(self.set_nx_get(key, value, ttl).await? == SetNx::Set)
    }

    async fn set_xx(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        self.with(|d, now| match live(d, key, now) {
            None => Ok(false),
            Some(entry) => {
                *entry = Entry {
                    value: Value::Bytes(value.to_vec()),
                    expires_at: Some(now + ttl),
                };
                Ok(true)
            }
        })
    }

    async fn set_xx_many(
        &self,
        entries: &[(String, Vec<u8>)],
        ttl: Duration,
    ) -> Result<usize, StoreError> {
        let mut set = 0;
        for (key, value) in entries {
            if self.set_xx(key, value, ttl).await? {
                set += 1;
            }
        }
        Ok(set)
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        self.with(|d, now| {
            d.insert(
                key.to_owned(),
                Entry {
                    value: Value::Bytes(value.to_vec()),
                    expires_at: ttl.map(|t| now + t),
                },
            );
            Ok(())
        })
    }

    async fn del(&self, key: &str) -> Result<bool, StoreError> {
        self.with(|d, now| Ok(live(d, key, now).is_some() && d.remove(key).is_some()))
    }

    async fn compare_and_delete(&self, key: &str, expected: &[u8]) -> Result<bool, StoreError> {
        self.with(|d, now| {
            let matches = matches!(live(d, key, now), Some(Entry { value: Value::Bytes(b), .. }) if b == expected);
            if matches {
                d.remove(key);
            }
            Ok(matches)
        })
    }

    async fn compare_and_expire(
        &self,
        key: &str,
        expected: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.with(|d, now| match live(d, key, now) {
            Some(entry) if matches!(&entry.value, Value::Bytes(b) if b == expected) => {
                entry.expires_at = Some(now + ttl);
                Ok(true)
            }
            _ => Ok(false),
        })
    }

    async fn incr(&self, key: &str, ttl: Option<Duration>) -> Result<i64, StoreError> {
        self.with(|d, now| {
            let current = match bytes_of(live(d, key, now))? {
                None => None,
                Some(b) => Some(
                    std::str::from_utf8(&b)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                        .ok_or(StoreError::NotAnInteger)?,
                ),
            };
            let next = current
                .unwrap_or(0)
                .checked_add(1)
                .ok_or(StoreError::NotAnInteger)?;
            let expires_at = match (current, ttl) {
                (None, Some(t)) => Some(now + t),
                (None, None) => None,
                (Some(_), _) => d.get(key).and_then(|e| e.expires_at),
            };
            d.insert(
                key.to_owned(),
                Entry {
                    value: Value::Bytes(next.to_string().into_bytes()),
                    expires_at,
                },
            );
            Ok(next)
        })
    }

    async fn pttl(&self, key: &str) -> Result<Option<Duration>, StoreError> {
        self.with(|d, now| {
            Ok(live(d, key, now)
                .and_then(|e| e.expires_at)
                .map(|t| t.saturating_duration_since(now)))
        })
    }

    async fn hget(&self, key: &str, field: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|d, now| match live(d, key, now) {
            None => Ok(None),
            Some(Entry {
                value: Value::Hash(h),
                ..
            }) => Ok(h.get(field).cloned()),
            Some(_) => Err(StoreError::WrongType),
        })
    }

    async fn hset(&self, key: &str, field: &str, value: &[u8]) -> Result<(), StoreError> {
        self.with(|d, now| {
            if live(d, key, now).is_none() {
                d.insert(
                    key.to_owned(),
                    Entry {
                        value: Value::Hash(HashMap::new()),
                        expires_at: None,
                    },
                );
            }
            match d.get_mut(key) {
                Some(Entry {
                    value: Value::Hash(h),
                    ..
                }) => {
                    h.insert(field.to_owned(), value.to_vec());
                    Ok(())
                }
                _ => Err(StoreError::WrongType),
            }
        })
    }

    async fn hdel(&self, key: &str, field: &str) -> Result<bool, StoreError> {
        self.with(|d, now| match live(d, key, now) {
            None => Ok(false),
            Some(Entry {
                value: Value::Hash(h),
                ..
            }) => Ok(h.remove(field).is_some()),
            Some(_) => Err(StoreError::WrongType),
        })
    }

    async fn hgetall(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.with(|d, now| match live(d, key, now) {
            None => Ok(Vec::new()),
            Some(Entry {
                value: Value::Hash(h),
                ..
            }) => Ok(h.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            Some(_) => Err(StoreError::WrongType),
        })
    }

    fn is_ready(&self) -> bool {
        true
    }
}

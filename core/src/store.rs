//! The key-value store (docs/contract.md §1): the narrow set of Redis operations wxgate needs, as a
//! trait with a Redis implementation and an in-memory one with the same semantics.
//!
//! Every key is a full key (`{ns}:dedup:…`); implementations add no prefix.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;

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
    /// `redis.url` is not a valid Redis URL.
    #[error("invalid redis url")]
    Url(#[source] Arc<redis::RedisError>),
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

/// Redis implementation: one multiplexed [`ConnectionManager`] shared by every caller,
/// (re)connected in the background; commands fail fast with [`StoreError::Unavailable`]
/// until the first connection is up.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<RedisShared>,
}

struct RedisShared {
    connection: RwLock<Option<ConnectionManager>>,
    ready: AtomicBool,
}

const COMPARE_AND_DELETE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";
const COMPARE_AND_EXPIRE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
const INCR_WITH_TTL: &str = "local v = redis.call('INCR', KEYS[1]) if v == 1 and tonumber(ARGV[1]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return v";

impl RedisStore {
    /// Starts connecting to `url` in the background and health-checks every second until
    /// `shutdown` is cancelled. `command_timeout` bounds every command.
    ///
    /// Fails only when `url` is not a valid Redis URL.
    pub fn connect(
        url: &str,
        command_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::Url(Arc::new(e)))?;
        let shared = Arc::new(RedisShared {
            connection: RwLock::new(None),
            ready: AtomicBool::new(false),
        });
        let task_shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(command_timeout))
                .set_response_timeout(Some(command_timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1));
            let mut backoff = Duration::from_millis(100);
            let manager = loop {
                let attempt = tokio::select! {
                    () = shutdown.cancelled() => return,
                    r = ConnectionManager::new_with_config(client.clone(), config.clone()) => r,
                };
                match attempt {
                    Ok(m) => break m,
                    Err(e) => {
                        tracing::warn!(error = %e, "redis connect failed; retrying");
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            };
            tracing::info!("redis connected");
            if let Ok(mut slot) = task_shared.connection.write() {
                *slot = Some(manager.clone());
            }
            // The manager reconnects on its own; this loop only tracks readiness.
            let mut manager = manager;
            loop {
                let ok = redis::cmd("PING")
                    .query_async::<String>(&mut manager)
                    .await
                    .is_ok();
                if task_shared.ready.swap(ok, Ordering::Relaxed) != ok {
                    if ok {
                        tracing::info!("redis reachable");
                    } else {
                        tracing::warn!("redis unreachable");
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        });
        Ok(Self { shared })
    }

    fn manager(&self) -> Result<ConnectionManager, StoreError> {
        self.shared
            .connection
            .read()
            .ok()
            .and_then(|slot| slot.clone())
            .ok_or(StoreError::Unavailable)
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut manager = self.manager()?;
        cmd.query_async(&mut manager)
            .await
            .map_err(|e| self.failed(e))
    }

    /// Sends `pipe` as one request; the replies in order.
    async fn query_pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let mut manager = self.manager()?;
        pipe.query_async(&mut manager)
            .await
            .map_err(|e| self.failed(e))
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
        let mut manager = self.manager()?;
        let script = redis::Script::new(script);
        let mut invocation = script.key(key);
        for arg in args {
            invocation.arg(*arg);
        }
        invocation
            .invoke_async(&mut manager)
            .await
            .map_err(|e| self.failed(e))
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
        let mut pipe = redis::pipe();
        for key in keys {
            let mut set = set_cmd(key, value, 7);
            set.arg("NX").arg("GET").arg("PX").arg(px);
            pipe.add_command(set);
        }
        let replies: Vec<Option<Vec<u8>>> = self.query_pipeline(&pipe).await?;
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
        let mut pipe = redis::pipe();
        for (key, value) in entries {
            let mut set = set_cmd(key, value, 6);
            set.arg("XX").arg("PX").arg(px);
            pipe.add_command(set);
        }
        let replies: Vec<Option<String>> = self.query_pipeline(&pipe).await?;
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

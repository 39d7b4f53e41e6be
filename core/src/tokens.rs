//! Access tokens shared in Redis (docs/contract.md §1.4): one token per appid for every worker, CLI
//! and gRPC caller, refreshed by one process at a time.
//!
//! The store holds `{ns}:token:{appid}` = `{"access_token", "expires_at_ms", "fetched_at_ms"}`
//! with a TTL at the expiry. [`TokenService::get`] uses it while more than `refresh_ahead` is
//! left; otherwise one caller takes `{ns}:token-lock:{appid}` (`SET NX PX 10000`, random
//! owner, released by compare-and-delete) and asks WeChat through a [`TokenFetcher`]. While
//! the fetch runs the owner extends the lock (compare-and-extend every few seconds), so the
//! lock outlives any `wechat.http_timeout_ms`. The others keep the still-valid old token or
//! poll the key for the new one for up to `http_timeout_ms` + 1 s. They never call WeChat
//! themselves.
//!
//! WeChat failing (network, 5xx, an answer that is not the token endpoint's JSON, or an
//! errcode `wechat::errcode::classify` calls transient) sets `{ns}:token-backoff:{appid}` (1 s
//! doubling to 60 s); while it runs, callers without a valid token fail fast with
//! [`TokenError::BackingOff`]. Every call to a token endpoint increments
//! `{ns}:token-quota:{appid}:{YYYYMMDD}` (Beijing date, kept two days). WeChat refusing
//! the credentials (an errcode that is neither transient nor success) is kept for a minute
//! in `{ns}:token-refused:{appid}`, for the secret it refused: callers without a valid token
//! get the same error meanwhile, without a call.
//!
//! This module does no HTTP itself: the worker supplies the fetcher.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::{Secret, TokenMode};
use crate::keys::Keys;
use crate::refresh_lock::{self, POLL_EVERY};
use crate::store::{Store, StoreError};

/// How much longer than one token call a caller waits for another process's refresh.
const POLL_SLACK: Duration = Duration::from_secs(1);
/// Least time between two `force_refresh` calls per appid (docs/protocol.md §5.2).
const FORCE_INTERVAL: Duration = Duration::from_secs(30);
/// First back-off after WeChat failed.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest back-off.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How long the back-off record is remembered after it ran out, so the next failure doubles it.
const BACKOFF_MEMORY: Duration = Duration::from_secs(120);
/// How long a refusal of the credentials (a configuration error: IP whitelist, AppSecret) is
/// answered from the store instead of asking WeChat again. A changed secret asks at once.
const REFUSAL_MEMORY: Duration = Duration::from_secs(60);
/// How long a day's quota counter is kept.
const QUOTA_TTL: Duration = Duration::from_secs(2 * 86_400);
/// A token fetched this recently is not refreshed ahead of time again, even when WeChat
/// handed out one with less than `refresh_ahead` left (stable mode renews only in the last
/// five minutes): without this floor a large `refresh_ahead` would call WeChat on every get.
const MIN_AHEAD_INTERVAL_MS: i64 = 60_000;

/// A token as WeChat returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedToken {
    /// `access_token`.
    pub access_token: Secret,
    /// `expires_in`.
    pub expires_in: Duration,
}

/// Why a token endpoint call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// WeChat answered a non-zero errcode.
    #[error("token endpoint answered errcode {errcode}: {errmsg}")]
    Errcode {
        /// WeChat's errcode.
        errcode: i64,
        /// WeChat's errmsg (no secrets in it).
        errmsg: String,
    },
    /// No usable answer: connection error, timeout, HTTP 5xx.
    #[error("token endpoint unreachable")]
    Unreachable(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// An answer that is not the token endpoint's JSON (a proxy's error page, a truncated
    /// body): `what` says which part was wrong.
    #[error("token endpoint answered something unexpected: {what}")]
    BadAnswer {
        /// What was wrong, e.g. `no access_token`.
        what: &'static str,
    },
}

impl FetchError {
    /// Whether WeChat is failing (retry later) rather than refusing (configuration error):
    /// unreachable, and the errcodes [`wechat::errcode::classify`] calls transient.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable(_) | Self::BadAnswer { .. } => true,
            Self::Errcode { errcode, .. } => {
                wechat::errcode::classify(*errcode) == wechat::errcode::Class::Transient
            }
        }
    }
}

/// Calls WeChat's token endpoint. The worker implements it over HTTP; tests count calls.
#[async_trait]
pub trait TokenFetcher: Send + Sync + 'static {
    /// Asks WeChat for `appid`'s token: `POST /cgi-bin/stable_token` in
    /// [`TokenMode::Stable`] (with `force_refresh`), `GET /cgi-bin/token` in
    /// [`TokenMode::Classic`] (`force_refresh` ignored). Bounded in time by the implementation.
    async fn fetch(
        &self,
        mode: TokenMode,
        appid: &str,
        secret: &Secret,
        force_refresh: bool,
    ) -> Result<FetchedToken, FetchError>;
}

/// Observes refreshes, for metrics.
pub trait TokenObserver: Send + Sync + 'static {
    /// A refresh of `appid` ended with `result` (`ok`, `error`, `stale`).
    fn refreshed(&self, appid: &str, result: &'static str);
    /// `appid`'s token endpoint calls today, after an increment.
    fn requests_today(&self, appid: &str, count: i64);
}

/// An access token to put in `?access_token=`. Its `Debug` is redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    /// The token.
    pub token: Secret,
    /// When WeChat said it expires, Unix milliseconds.
    pub expires_at_ms: i64,
}

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The store failed.
    #[error("token store unavailable")]
    Store(#[from] StoreError),
    /// A value could not be encoded for the store.
    #[error("cannot encode the stored value")]
    Encode(#[source] Arc<serde_json::Error>),
    /// WeChat failed recently; no call is made until the back-off ends.
    #[error("token endpoint backing off for {retry_in_ms} ms")]
    BackingOff {
        /// Time left in the back-off.
        retry_in_ms: u64,
    },
    /// Another process is refreshing and no fresh token appeared within
    /// `wechat.http_timeout_ms` + 1 s.
    #[error("timed out waiting for another process's token refresh")]
    WaitTimeout,
    /// WeChat keeps returning the token it just rejected and a force refresh is not allowed
    /// yet (at most one per 30 s).
    #[error("wechat returned the rejected token again")]
    StillRejected,
    /// The token endpoint failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

impl TokenError {
    /// Whether trying again later may succeed. Only WeChat refusing the credentials (wrong
    /// secret, unknown appid, IP not whitelisted, …) is not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Fetch(e) => e.is_transient(),
            _ => true,
        }
    }

    /// WeChat's errcode, when WeChat answered one.
    pub fn errcode(&self) -> Option<i64> {
        match self {
            Self::Fetch(FetchError::Errcode { errcode, .. }) => Some(*errcode),
            _ => None,
        }
    }
}

/// Settings of a [`TokenService`].
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// The namespace of the Redis keys.
    pub namespace: String,
    /// Which token endpoint to use.
    pub mode: TokenMode,
    /// Refresh when less than this is left (`wechat.refresh_ahead_s`).
    pub refresh_ahead: Duration,
    /// The bound on one token endpoint call (`wechat.http_timeout_ms`): callers waiting for
    /// another process's refresh wait this plus 1 s.
    pub http_timeout: Duration,
}

/// Which stored token a caller accepts.
#[derive(Debug, Clone, Copy)]
enum Want<'a> {
    /// Any valid one not due for a refresh ahead of time.
    Current,
    /// One other than this token, which WeChat rejected.
    NotRejected(&'a str),
    /// One fetched at or after this time (Unix ms): a forced refresh.
    FetchedSince(i64),
}

/// The stored value of `{ns}:token:{appid}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    access_token: String,
    expires_at_ms: i64,
    fetched_at_ms: i64,
}

impl Stored {
    fn to_token(&self) -> AccessToken {
        AccessToken {
            token: Secret::new(self.access_token.clone()),
            expires_at_ms: self.expires_at_ms,
        }
    }
}

/// The stored value of `{ns}:token-backoff:{appid}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Backoff {
    until_ms: i64,
    delay_ms: u64,
}

/// The stored value of `{ns}:token-refused:{appid}`: WeChat's answer, and which secret it
/// refused (a SHA-256 prefix, so a rotated secret is tried at once; the secret itself is
/// never stored here).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Refusal {
    errcode: i64,
    errmsg: String,
    secret_sha256: String,
}

/// The first 16 hex digits of the SHA-256 of `secret`: enough to tell two secrets apart.
fn secret_digest(secret: &Secret) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(secret.expose().as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The shared token service. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct TokenService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    fetcher: Arc<dyn TokenFetcher>,
    observer: Option<Arc<dyn TokenObserver>>,
    keys: Keys,
    mode: TokenMode,
    refresh_ahead_ms: i64,
    wait_for_refresh: Duration,
}

impl TokenService {
    /// A service over `store`, calling WeChat through `fetcher`.
    pub fn new(
        store: Arc<dyn Store>,
        fetcher: Arc<dyn TokenFetcher>,
        settings: TokenSettings,
    ) -> Self {
        Self::with_observer(store, fetcher, settings, None)
    }

    /// Like [`TokenService::new`], reporting refreshes to `observer`.
    pub fn with_observer(
        store: Arc<dyn Store>,
        fetcher: Arc<dyn TokenFetcher>,
        settings: TokenSettings,
        observer: Option<Arc<dyn TokenObserver>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                fetcher,
                observer,
                keys: Keys::new(&settings.namespace),
                mode: settings.mode,
                refresh_ahead_ms: millis(settings.refresh_ahead),
                wait_for_refresh: settings.http_timeout + POLL_SLACK,
            }),
        }
    }

    /// `appid`'s token: the shared one while more than `refresh_ahead` is left, else a
    /// refreshed one (this process or another refreshes; see the module doc).
    ///
    /// Waits at most `http_timeout` + 1 s for another process's refresh, plus the fetcher's
    /// own bound when this process refreshes. A refresh that needs two token calls (WeChat
    /// handed out the rejected token again, then `force_refresh`) can outlast that wait:
    /// waiters then fail with [`TokenError::WaitTimeout`] and retry.
    pub async fn get(&self, appid: &str, secret: &Secret) -> Result<AccessToken, TokenError> {
        self.get_inner(appid, secret, Want::Current).await
    }

    /// A token fetched from WeChat within the last 30 s: for a caller that needs a new token
    /// now (it saw the shared one rejected, or suspects a leak).
    ///
    /// Rate-limited per appid and single-refresher like every refresh: when the shared token
    /// was fetched less than 30 s ago it is returned as it is, so any number of concurrent
    /// callers in any number of processes cause at most one token call per 30 s. The one
    /// refresher takes `{ns}:token-lock:{appid}`; in stable mode it asks WeChat with
    /// `force_refresh: true` (which invalidates the previous token at once) when
    /// `{ns}:token-force:{appid}` allows it (at most one force per 30 s per appid, shared with
    /// [`TokenService::refresh_after_invalid`]), else in normal mode. The others wait for its
    /// result as in [`TokenService::get`].
    pub async fn force_refresh(
        &self,
        appid: &str,
        secret: &Secret,
    ) -> Result<AccessToken, TokenError> {
        let since = crate::now_ms().saturating_sub(millis(FORCE_INTERVAL));
        self.get_inner(appid, secret, Want::FetchedSince(since))
            .await
    }

    /// Deletes the shared token only if it still is `failed` (compare-and-delete), so a token
    /// another process already replaced survives. True when deleted.
    pub async fn invalidate(&self, appid: &str, failed: &Secret) -> Result<bool, TokenError> {
        let key = self.inner.keys.token(appid);
        let Some(raw) = self.inner.store.get(&key).await? else {
            return Ok(false);
        };
        match serde_json::from_slice::<Stored>(&raw) {
            Ok(stored) if stored.access_token == failed.expose() => {
                Ok(self.inner.store.compare_and_delete(&key, &raw).await?)
            }
            Ok(_) => Ok(false),
            // A value that is not ours is useless: drop it if it is still there.
            Err(_) => Ok(self.inner.store.compare_and_delete(&key, &raw).await?),
        }
    }

    /// After an API call answered "invalid token" (40001, 40014, 42001) with `failed`:
    /// invalidates it and returns a fresh token, never `failed` itself. In stable mode, when
    /// WeChat hands out `failed` again, one `force_refresh` is made, at most once per 30 s
    /// per appid; otherwise [`TokenError::StillRejected`].
    pub async fn refresh_after_invalid(
        &self,
        appid: &str,
        secret: &Secret,
        failed: &Secret,
    ) -> Result<AccessToken, TokenError> {
        self.invalidate(appid, failed).await?;
        self.get_inner(appid, secret, Want::NotRejected(failed.expose()))
            .await
    }

    async fn read(&self, appid: &str) -> Result<Option<Stored>, TokenError> {
        let raw = self.inner.store.get(&self.inner.keys.token(appid)).await?;
        Ok(raw.and_then(|raw| serde_json::from_slice::<Stored>(&raw).ok()))
    }

    async fn backoff(&self, appid: &str, now: i64) -> Result<Option<Backoff>, TokenError> {
        let raw = self
            .inner
            .store
            .get(&self.inner.keys.token_backoff(appid))
            .await?;
        Ok(raw
            .and_then(|raw| serde_json::from_slice::<Backoff>(&raw).ok())
            .filter(|b| b.until_ms > now))
    }

    /// The remembered refusal of `secret` for `appid`, if any.
    async fn refusal(&self, appid: &str, secret: &Secret) -> Result<Option<Refusal>, TokenError> {
        let raw = self
            .inner
            .store
            .get(&self.inner.keys.token_refused(appid))
            .await?;
        let digest = secret_digest(secret);
        Ok(raw
            .and_then(|raw| serde_json::from_slice::<Refusal>(&raw).ok())
            .filter(|r| r.secret_sha256 == digest))
    }

    async fn get_inner(
        &self,
        appid: &str,
        secret: &Secret,
        want: Want<'_>,
    ) -> Result<AccessToken, TokenError> {
        let usable = |s: &Stored, now: i64| {
            s.expires_at_ms > now
                && match want {
                    Want::Current => true,
                    Want::NotRejected(rejected) => s.access_token != rejected,
                    Want::FetchedSince(since) => s.fetched_at_ms >= since,
                }
        };
        // Usable and not due for a refresh ahead of time.
        let current = |s: &Stored, now: i64| {
            usable(s, now)
                && (s.expires_at_ms - now > self.inner.refresh_ahead_ms
                    || now - s.fetched_at_ms < MIN_AHEAD_INTERVAL_MS)
        };
        let deadline = tokio::time::Instant::now() + self.inner.wait_for_refresh;
        loop {
            let now = crate::now_ms();
            let cached = self.read(appid).await?.filter(|s| usable(s, now));
            if let Some(s) = cached.as_ref().filter(|s| current(s, now)) {
                return Ok(s.to_token());
            }
            if cached.is_none()
                && let Some(refusal) = self.refusal(appid, secret).await?
            {
                return Err(TokenError::Fetch(FetchError::Errcode {
                    errcode: refusal.errcode,
                    errmsg: refusal.errmsg,
                }));
            }
            if let Some(b) = self.backoff(appid, now).await? {
                return match cached {
                    Some(s) => Ok(s.to_token()),
                    None => Err(TokenError::BackingOff {
                        retry_in_ms: u64::try_from(b.until_ms - now).unwrap_or(0),
                    }),
                };
            }
            let owner = refresh_lock::owner();
            let lock = self.inner.keys.token_lock(appid);
            if refresh_lock::try_take(&*self.inner.store, &lock, &owner).await? {
                // Another process may have stored a token between our read and our lock.
                let refresh = async {
                    match self.read(appid).await {
                        Ok(Some(s)) if current(&s, crate::now_ms()) => Ok(s.to_token()),
                        Ok(_) => self.refresh_locked(appid, secret, want).await,
                        Err(e) => Err(e),
                    }
                };
                let store = &*self.inner.store;
                let result =
                    refresh_lock::holding(store, "token", appid, &lock, &owner, refresh).await;
                refresh_lock::release(store, "token", appid, &lock, &owner).await;
                return match (result, cached) {
                    (Ok(token), _) => Ok(token),
                    // A refresh ahead of time failed: the old token still works.
                    (Err(e), Some(s)) => {
                        tracing::warn!(appid, error = %crate::ErrorChain(&e), "token refresh ahead of expiry failed; keeping the current token");
                        Ok(s.to_token())
                    }
                    (Err(e), None) => Err(e),
                };
            }
            // Another process refreshes. The old token, while valid, is good enough.
            if let Some(s) = cached {
                return Ok(s.to_token());
            }
            // Wait for its result; if the lock goes away without one, try to take it.
            loop {
                if tokio::time::Instant::now() >= deadline {
                    return Err(TokenError::WaitTimeout);
                }
                tokio::time::sleep(POLL_EVERY).await;
                let now = crate::now_ms();
                if let Some(s) = self.read(appid).await?.filter(|s| usable(s, now)) {
                    return Ok(s.to_token());
                }
                if self.inner.store.get(&lock).await?.is_none() {
                    break;
                }
            }
        }
    }

    /// Fetches, stores and returns a token; the caller holds the lock.
    async fn refresh_locked(
        &self,
        appid: &str,
        secret: &Secret,
        want: Want<'_>,
    ) -> Result<AccessToken, TokenError> {
        let rejected = match want {
            Want::NotRejected(rejected) => Some(rejected),
            Want::Current | Want::FetchedSince(_) => None,
        };
        let force = matches!(want, Want::FetchedSince(_))
            && self.inner.mode == TokenMode::Stable
            && self
                .inner
                .store
                .set_nx(&self.inner.keys.token_force(appid), b"1", FORCE_INTERVAL)
                .await?;
        if force {
            tracing::info!(appid, "force refresh asked for");
        }
        let mut fetched = self.fetch(appid, secret, force).await?;
        if rejected == Some(fetched.access_token.expose()) {
            let allowed = self.inner.mode == TokenMode::Stable
                && self
                    .inner
                    .store
                    .set_nx(&self.inner.keys.token_force(appid), b"1", FORCE_INTERVAL)
                    .await?;
            if !allowed {
                self.observe(appid, "stale");
                return Err(TokenError::StillRejected);
            }
            tracing::warn!(
                appid,
                "wechat returned the rejected token again; force refresh"
            );
            fetched = self.fetch(appid, secret, true).await?;
            if rejected == Some(fetched.access_token.expose()) {
                self.observe(appid, "stale");
                return Err(TokenError::StillRejected);
            }
        }
        let now = crate::now_ms();
        let expires_in = millis(fetched.expires_in).max(1);
        let stored = Stored {
            access_token: fetched.access_token.expose().to_owned(),
            expires_at_ms: now.saturating_add(expires_in),
            fetched_at_ms: now,
        };
        let value = serde_json::to_vec(&stored).map_err(|e| TokenError::Encode(Arc::new(e)))?;
        self.inner
            .store
            .set(
                &self.inner.keys.token(appid),
                &value,
                Some(Duration::from_millis(
                    u64::try_from(expires_in).unwrap_or(1),
                )),
            )
            .await?;
        self.inner
            .store
            .del(&self.inner.keys.token_backoff(appid))
            .await?;
        self.observe(appid, "ok");
        tracing::info!(
            appid,
            expires_in_s = expires_in / 1000,
            "access token refreshed"
        );
        Ok(stored.to_token())
    }

    /// One call to the token endpoint: counts it, and starts or doubles the back-off when
    /// WeChat is failing.
    async fn fetch(
        &self,
        appid: &str,
        secret: &Secret,
        force_refresh: bool,
    ) -> Result<FetchedToken, TokenError> {
        let now = crate::now_ms();
        let quota_key = self.inner.keys.token_quota(appid, &beijing_date(now));
        match self.inner.store.incr(&quota_key, Some(QUOTA_TTL)).await {
            Ok(count) => {
                if let Some(observer) = &self.inner.observer {
                    observer.requests_today(appid, count);
                }
            }
            Err(e) => {
                tracing::warn!(appid, error = %crate::ErrorChain(&e), "cannot count token request")
            }
        }
        match self
            .inner
            .fetcher
            .fetch(self.inner.mode, appid, secret, force_refresh)
            .await
        {
            Ok(fetched) => Ok(fetched),
            Err(e) => {
                self.observe(appid, "error");
                if e.is_transient() {
                    self.start_backoff(appid, now).await?;
                    tracing::warn!(appid, error = %crate::ErrorChain(&e), "token endpoint failing; backing off");
                } else {
                    tracing::error!(appid, error = %crate::ErrorChain(&e), "token endpoint refused the credentials; answering the same for a minute (or until the secret changes)");
                    if let FetchError::Errcode { errcode, errmsg } = &e {
                        self.remember_refusal(appid, secret, *errcode, errmsg).await;
                    }
                }
                Err(e.into())
            }
        }
    }

    /// Stores WeChat's refusal of `secret` for [`REFUSAL_MEMORY`]; a store failure only
    /// means the next caller asks WeChat again.
    async fn remember_refusal(&self, appid: &str, secret: &Secret, errcode: i64, errmsg: &str) {
        let refusal = Refusal {
            errcode,
            errmsg: errmsg.to_owned(),
            secret_sha256: secret_digest(secret),
        };
        let Ok(value) = serde_json::to_vec(&refusal) else {
            return;
        };
        let key = self.inner.keys.token_refused(appid);
        if let Err(e) = self
            .inner
            .store
            .set(&key, &value, Some(REFUSAL_MEMORY))
            .await
        {
            tracing::warn!(appid, error = %crate::ErrorChain(&e), "cannot remember the token refusal");
        }
    }

    async fn start_backoff(&self, appid: &str, now: i64) -> Result<(), TokenError> {
        let key = self.inner.keys.token_backoff(appid);
        let previous = self
            .inner
            .store
            .get(&key)
            .await?
            .and_then(|raw| serde_json::from_slice::<Backoff>(&raw).ok());
        let min = u64::try_from(BACKOFF_MIN.as_millis()).unwrap_or(1000);
        let max = u64::try_from(BACKOFF_MAX.as_millis()).unwrap_or(60_000);
        let delay_ms = previous
            .map(|b| b.delay_ms.saturating_mul(2))
            .unwrap_or(min)
            .clamp(min, max);
        let backoff = Backoff {
            until_ms: now.saturating_add(i64::try_from(delay_ms).unwrap_or(i64::MAX)),
            delay_ms,
        };
        let value = serde_json::to_vec(&backoff).map_err(|e| TokenError::Encode(Arc::new(e)))?;
        self.inner
            .store
            .set(
                &key,
                &value,
                Some(Duration::from_millis(delay_ms) + BACKOFF_MEMORY),
            )
            .await?;
        Ok(())
    }

    fn observe(&self, appid: &str, result: &'static str) {
        if let Some(observer) = &self.inner.observer {
            observer.refreshed(appid, result);
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `YYYYMMDD` of `unix_ms` in Beijing time (UTC+8), the day WeChat counts quotas in.
pub fn beijing_date(unix_ms: i64) -> String {
    let days = (unix_ms + 8 * 3_600_000).div_euclid(86_400_000);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}")
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::store::MemoryStore;

    /// Counts calls; answers `token-{n}` (or `same` when told to) after a short latency.
    #[derive(Default)]
    struct FakeFetcher {
        calls: AtomicU64,
        forced: AtomicU64,
        fail_with: Mutex<Option<FetchError>>,
        same_unless_forced: Mutex<Option<String>>,
        expires_in: Mutex<Option<Duration>>,
    }

    #[async_trait]
    impl TokenFetcher for FakeFetcher {
        async fn fetch(
            &self,
            _mode: TokenMode,
            _appid: &str,
            _secret: &Secret,
            force_refresh: bool,
        ) -> Result<FetchedToken, FetchError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if force_refresh {
                self.forced.fetch_add(1, Ordering::SeqCst);
            }
            // Latency of a real endpoint, so concurrent callers overlap with the refresh.
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(e) = self.fail_with.lock().unwrap().clone() {
                return Err(e);
            }
            let same = self.same_unless_forced.lock().unwrap().clone();
            let token = match same {
                Some(same) if !force_refresh => same,
                _ => format!("token-{n}"),
            };
            Ok(FetchedToken {
                access_token: Secret::new(token),
                expires_in: self
                    .expires_in
                    .lock()
                    .unwrap()
                    .unwrap_or(Duration::from_secs(7200)),
            })
        }
    }

    fn service(store: &MemoryStore, fetcher: &Arc<FakeFetcher>) -> TokenService {
        TokenService::new(
            Arc::new(store.clone()),
            fetcher.clone(),
            TokenSettings {
                namespace: "t".into(),
                mode: TokenMode::Stable,
                refresh_ahead: Duration::from_secs(300),
                http_timeout: Duration::from_secs(5),
            },
        )
    }

    fn secret() -> Secret {
        Secret::new("s3cret")
    }

    async fn put(store: &MemoryStore, token: &str, expires_in_ms: i64, fetched_ago_ms: i64) {
        let now = crate::now_ms();
        let stored = Stored {
            access_token: token.into(),
            expires_at_ms: now + expires_in_ms,
            fetched_at_ms: now - fetched_ago_ms,
        };
        store
            .set("t:token:wx1", &serde_json::to_vec(&stored).unwrap(), None)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn concurrent_gets_fetch_once() {
        let store = MemoryStore::new();
        let fetcher = Arc::new(FakeFetcher::default());
        let tokens = service(&store, &fetcher);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let tokens = tokens.clone();
            tasks.spawn(async move { tokens.get("wx1", &secret()).await });
        }
        while let Some(result) = tasks.join_next().await {
            assert_eq!(result.unwrap().unwrap().token.expose(), "token-1");
        }
        assert_eq!(fetcher.calls.load(Ordering::SeqCst), 1);
        let stored: Stored =
            serde_json::from_slice(&store.get("t:token:wx1").await.unwrap().unwrap()).unwrap();
        assert_eq!(stored.access_token, "token-1");
        assert!(stored.expires_at_ms > stored.fetched_at_ms);
        let ttl = store.pttl("t:token:wx1").await.unwrap().unwrap();
        assert!(ttl > Duration::from_secs(7100) && ttl <= Duration::from_secs(7200));
        let quota = format!("t:token-quota:wx1:{}", beijing_date(crate::now_ms()));
        assert_eq!(store.get(&quota).await.unwrap().unwrap(), b"1");
        assert!(store.pttl(&quota).await.unwrap().is_some());
        // The lock was released.
        assert!(store.get("t:token-lock:wx1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_fresh_token_is_used_as_is() {
        let store = MemoryStore::new();
        let fetcher = Arc::new(FakeFetcher::default());
        put(&store, "cached", 3_600_000, 3_600_000).await;
        let token = service(&store, &fetcher)
            .get("wx1", &secret())
            .await
            .unwrap();
        assert_eq!(token.token.expose(), "cached");
        assert_eq!(fetcher.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_token_near_expiry_is_refreshed_ahead() {
        let store = MemoryStore::new();
        let fetcher = Arc::new(FakeFetcher::default());
        put(&store, "old", 100_000, 7_000_000).await;
        let token = service(&store, &fetcher)
            .get("wx1", &secret())
            .await
            .unwrap();
        assert_eq!(token.token.expose(), "token-1");
        assert_eq!(fetcher.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn while_another_process_refreshes_ahead_the_old_token_is_used() {
        let store = MemoryStore::new();
        let fetcher = Arc::new(FakeFetcher::default());
        put(&store, "old", 100_000, 7_000_000).await;
        store
            .set("t:token-lock:wx1", b"someone", Some(refresh_lock::LOCK_TTL))
            .await
            .unwrap();
        let token = service(&store, &fetcher)
            .get("wx1", &secret())
            .await
            .unwrap();
        assert_eq!(token.token.expose(), "old");
        assert_eq!(fetcher.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_failed_refresh_ahead_keeps_the_old_token() {
        let store = MemoryStore::new();
        let fetcher = Arc::new(FakeFetcher::default());
        *fetcher.fail_with.lock().unwrap() = Some(FetchError::Unreachable(Arc::new(
            std::io::Error::other("down"),
        )));
        put(&store, "old", 100_000, 7_000_000).await;
        let tokens = service(&store, &fetcher);
        assert_eq!(
            tokens.get("wx1", &secret()).await.unwrap().token.expose(),
            "old"
        );
        // Backing off now: the old token is still handed out without calling WeChat.
        assert_eq!(
            tokens.get("wx1", &secret()).await.unwrap().token.expose(),
            "old"
        );
        assert_eq!(fetcher.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn invalidate_deletes_only_the_failed_token() {
        let store = MemoryStore::new();
        let fetcher = Arc::new(FakeFetcher::default());
        let tokens = service(&store, &fetcher);
        put(&store, "current", 3_600_000, 0).await;
        assert!(
            !tokens
                .invalidate("wx1", &Secret::new("older"))
                .await
                .unwrap()
        );
        assert!(store.get("t:token:wx1").await.unwrap().is_some());
        assert!(
            tokens
                .invalidate("wx1", &Secret::new("current"))
                .await
                .unwrap()
        );
        assert!(store.get("t:token:wx1").await.unwrap().is_none());
        assert!(
            !tokens
                .invalidate("wx1", &Secret::new("current"))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn refresh_after_invalid_gets_a_new_token() {
        let store = MemoryStore::new();
        let fetcher = Arc::new(FakeFetcher::default());
        let tokens = service(&store, &fetcher);
        put(&store, "bad", 3_600_000, 0).await;
        let token = tokens
            .refresh_after_invalid("wx1", &secret(), &Secret::new("bad"))
            .await
            .unwrap();
        assert_eq!(token.token.expose(), "token-1");
        assert_eq!(fetcher.forced.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn the_same_rejected_token_forces_one_refresh_per_30_s() {
        let store = MemoryStore::new();
        let fetcher = Arc::new(FakeFetcher::default());
        *fetcher.same_unless_forced.lock().unwrap() = Some("bad".into());
        let tokens = service(&store, &fetcher);
        put(&store, "bad", 3_600_000, 0).await;
        let token = tokens
            .refresh_after_invalid("wx1", &secret(), &Secret::new("bad"))
            .await
            .unwrap();
        assert_eq!(token.token.expose(), "token-2");
        assert_eq!(fetcher.calls.load(Ordering::SeqCst), 2);
        assert_eq!(fetcher.forced.load(Ordering::SeqCst), 1);
        assert!(store.get("t:token-force:wx1").await.unwrap().is_some());

        // Rejected again within 30 s: no second force refresh.
        *fetcher.same_unless_forced.lock().unwrap() = Some("token-2".into());
        let err = tokens
            .refresh_after_invalid("wx1", &secret(), &Secret::new("token-2"))
            .await
            .unwrap_err();
        assert!(matches!(err, TokenError::StillRejected), "{err:?}");
        assert!(err.is_transient());
        assert_eq!(fetcher.forced.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_force_refreshes_make_one_forced_call() {
        let store = MemoryStore::new();
        let fetcher = Arc::new(FakeFetcher::default());
        let tokens = service(&store, &fetcher);
        put(&store, "old", 3_600_000, 60_000).await;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let tokens = tokens.clone();
            tasks.spawn(async move { tokens.force_refresh("wx1", &secret()).await });
        }
        while let Some(result) = tasks.join_next().await {
            assert_eq!(result.unwrap().unwrap().token.expose(), "token-1");
        }
        assert_eq!(fetcher.calls.load(Ordering::SeqCst), 1);
        assert_eq!(fetcher.forced.load(Ordering::SeqCst), 1);

        // Within 30 s of that refresh, another force refresh gets the same token.
        let again = tokens.force_refresh("wx1", &secret()).await.unwrap();
        assert_eq!(again.token.expose(), "token-1");
        assert_eq!(fetcher.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_force_refresh_while_the_force_slot_is_taken_asks_in_normal_mode() {
        let store = MemoryStore::new();
        let fetcher = Arc::new(FakeFetcher::default());
        let tokens = service(&store, &fetcher);
        put(&store, "old", 3_600_000, 60_000).await;
        store
            .set("t:token-force:wx1", b"1", Some(FORCE_INTERVAL))
            .await
            .unwrap();
        let token = tokens.force_refresh("wx1", &secret()).await.unwrap();
        assert_eq!(token.token.expose(), "token-1");
        assert_eq!(fetcher.calls.load(Ordering::SeqCst), 1);
        assert_eq!(fetcher.forced.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn wechat_failing_starts_a_doubling_backoff() {
        let store = MemoryStore::new();
        let fetcher = Arc::new(FakeFetcher::default());
        *fetcher.fail_with.lock().unwrap() = Some(FetchError::Errcode {
            errcode: -1,
            errmsg: "system error".into(),
        });
        let tokens = service(&store, &fetcher);
        let err = tokens.get("wx1", &secret()).await.unwrap_err();
        assert_eq!(err.errcode(), Some(-1));
        assert!(err.is_transient());
        // Fails fast, without calling WeChat, while the back-off runs.
        let err = tokens.get("wx1", &secret()).await.unwrap_err();
        assert!(
            matches!(err, TokenError::BackingOff { retry_in_ms } if retry_in_ms <= 1000),
            "{err:?}"
        );
        assert_eq!(fetcher.calls.load(Ordering::SeqCst), 1);
        let backoff: Backoff =
            serde_json::from_slice(&store.get("t:token-backoff:wx1").await.unwrap().unwrap())
                .unwrap();
        assert_eq!(backoff.delay_ms, 1000);

        // The next failure after it ran out doubles it.
        let expired = Backoff {
            until_ms: crate::now_ms() - 1,
            delay_ms: 1000,
        };
        store
            .set(
                "t:token-backoff:wx1",
                &serde_json::to_vec(&expired).unwrap(),
                None,
            )
            .await
            .unwrap();
        tokens.get("wx1", &secret()).await.unwrap_err();
        assert_eq!(fetcher.calls.load(Ordering::SeqCst), 2);
        let backoff: Backoff =
            serde_json::from_slice(&store.get("t:token-backoff:wx1").await.unwrap().unwrap())
                .unwrap();
        assert_eq!(backoff.delay_ms, 2000);

        // Success clears it.
        *fetcher.fail_with.lock().unwrap() = None;
        let expired = Backoff {
            until_ms: crate::now_ms() - 1,
            delay_ms: 60_000,
        };
        store
            .set(
                "t:token-backoff:wx1",
                &serde_json::to_vec(&expired).unwrap(),
                None,
            )
            .await
            .unwrap();
        tokens.get("wx1", &secret()).await.unwrap();
        assert!(store.get("t:token-backoff:wx1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn refused_credentials_are_permanent_and_do_not_back_off() {
        let store = MemoryStore::new();
        let fetcher = Arc::new(FakeFetcher::default());
        *fetcher.fail_with.lock().unwrap() = Some(FetchError::Errcode {
            errcode: 40125,
            errmsg: "invalid appsecret".into(),
        });
        let err = service(&store, &fetcher)
            .get("wx1", &secret())
            .await
            .unwrap_err();
        assert!(!err.is_transient());
        assert!(store.get("t:token-backoff:wx1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_refusal_is_answered_from_the_store_until_the_secret_changes() {
        let store = MemoryStore::new();
        let fetcher = Arc::new(FakeFetcher::default());
        *fetcher.fail_with.lock().unwrap() = Some(FetchError::Errcode {
            errcode: 40164,
            errmsg: "invalid ip 10.0.0.7, not in whitelist".into(),
        });
        let tokens = service(&store, &fetcher);
        for _ in 0..3 {
            let err = tokens.get("wx1", &secret()).await.unwrap_err();
            assert_eq!(err.errcode(), Some(40164));
            // The errmsg names the IP to whitelist: it reaches the error and the logs.
            assert!(
                crate::ErrorChain(&err).to_string().contains("10.0.0.7"),
                "{err}"
            );
        }
        assert_eq!(
            fetcher.calls.load(Ordering::SeqCst),
            1,
            "one call for three gets"
        );
        let stored = store.get("t:token-refused:wx1").await.unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&stored).contains(secret().expose()));
        // A new secret is tried at once.
        *fetcher.fail_with.lock().unwrap() = None;
        tokens.get("wx1", &Secret::new("rotated")).await.unwrap();
        assert_eq!(fetcher.calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn beijing_dates() {
        assert_eq!(beijing_date(0), "19700101");
        // 2024-02-29T15:59:59Z is 23:59:59 in Beijing; one second later is March 1st there.
        assert_eq!(beijing_date(1_709_222_399_000), "20240229");
        assert_eq!(beijing_date(1_709_222_400_000), "20240301");
    }
}

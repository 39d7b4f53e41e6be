//! JS-SDK tickets shared in Redis (docs/contract.md §1.4, docs/protocol.md §11.1): one
//! `jsapi_ticket` per appid for every worker, refreshed by one process at a time, exactly as
//! the access token is.
//!
//! The store holds `{ns}:ticket:{appid}:jsapi` = `{"ticket", "expires_at_ms", "fetched_at_ms"}`
//! with a TTL at the expiry. [`TicketService::get`] uses it while more than `refresh_ahead` is
//! left; otherwise one caller takes `{ns}:ticket-lock:{appid}:jsapi` (`SET NX PX 10000`,
//! random owner, extended while the fetch runs, released by compare-and-delete) and runs the
//! fetch the caller supplied (the worker's `GET /cgi-bin/ticket/getticket?type=jsapi` with
//! the shared access token). The others keep the still-valid old ticket, or poll the key
//! every 50 ms until the wait bound for the new one. They never call WeChat themselves.
//!
//! Unlike the token service there is no back-off key: a failed ticket fetch is reported to
//! its caller, and the access token it needs already backs off when WeChat is failing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::keys::Keys;
use crate::refresh_lock::{self, POLL_EVERY};
use crate::store::{Store, StoreError};

/// A ticket fetched this recently is not refreshed ahead of time again, even when it has
/// less than `refresh_ahead` left.
const MIN_AHEAD_INTERVAL_MS: i64 = 60_000;

/// A ticket as WeChat returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedTicket {
    /// `ticket`.
    pub ticket: Secret,
    /// `expires_in`.
    pub expires_in: Duration,
}

/// A shared ticket. Its `Debug` is redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The ticket.
    pub ticket: Secret,
    /// When WeChat said it expires, Unix milliseconds.
    pub expires_at_ms: i64,
}

/// Why the shared ticket could not be read, stored or waited for.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TicketError {
    /// The store failed.
    #[error("ticket store unavailable")]
    Store(#[from] StoreError),
    /// A value could not be encoded for the store.
    #[error("cannot encode the stored ticket")]
    Encode(#[source] Arc<serde_json::Error>),
    /// Another process is refreshing and no fresh ticket appeared within the wait bound.
    #[error("timed out waiting for another process's ticket refresh")]
    WaitTimeout,
}

/// Why [`TicketService::get`] failed: the sharing machinery, or the caller's fetch.
#[derive(Debug, thiserror::Error)]
pub enum GetTicketError<E> {
    /// The store or the wait for another process failed.
    #[error(transparent)]
    Ticket(#[from] TicketError),
    /// The fetch this process ran failed.
    #[error("ticket fetch failed")]
    Fetch(#[source] E),
}

/// The stored value of `{ns}:ticket:{appid}:jsapi`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    ticket: String,
    expires_at_ms: i64,
    fetched_at_ms: i64,
}

impl Stored {
    fn to_ticket(&self) -> Ticket {
        Ticket {
            ticket: Secret::new(self.ticket.clone()),
            expires_at_ms: self.expires_at_ms,
        }
    }
}

/// The shared JS-SDK ticket service. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct TicketService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    keys: Keys,
    refresh_ahead_ms: i64,
    wait_for_refresh: Duration,
}

impl TicketService {
    /// A service over `store` in namespace `namespace`. A ticket with less than
    /// `refresh_ahead` left is refreshed; a caller waits at most `wait_for_refresh` for
    /// another process's refresh (make it longer than one fetch, including the access-token
    /// refresh and retry a fetch may need).
    pub fn new(
        store: Arc<dyn Store>,
        namespace: &str,
        refresh_ahead: Duration,
        wait_for_refresh: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                keys: Keys::new(namespace),
                refresh_ahead_ms: i64::try_from(refresh_ahead.as_millis()).unwrap_or(i64::MAX),
                wait_for_refresh,
            }),
        }
    }

    /// `appid`'s `jsapi_ticket`: the shared one while more than `refresh_ahead` is left, else
    /// one refreshed by this process (running `fetch` under the lock) or by another.
    ///
    /// `fetch` runs at most once per call and only while this process holds the lock; a
    /// failed refresh ahead of time keeps the old, still valid ticket.
    pub async fn get_jsapi<F, Fut, E>(
        &self,
        appid: &str,
        fetch: F,
    ) -> Result<Ticket, GetTicketError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<FetchedTicket, E>>,
        E: std::error::Error + 'static,
    {
        let key = self.inner.keys.jsapi_ticket(appid);
        let lock = self.inner.keys.jsapi_ticket_lock(appid);
        let current = |s: &Stored, now: i64| {
            s.expires_at_ms - now > self.inner.refresh_ahead_ms
                || (s.expires_at_ms > now && now - s.fetched_at_ms < MIN_AHEAD_INTERVAL_MS)
        };
        let deadline = tokio::time::Instant::now() + self.inner.wait_for_refresh;
        let mut fetch = Some(fetch);
        loop {
            let now = crate::now_ms();
            let cached = self.read(&key).await?.filter(|s| s.expires_at_ms > now);
            if let Some(s) = cached.as_ref().filter(|s| current(s, now)) {
                return Ok(s.to_ticket());
            }
            let owner = refresh_lock::owner();
            if refresh_lock::try_take(&*self.inner.store, &lock, &owner)
                .await
                .map_err(TicketError::from)?
            {
                // Taken once per call: a round that wins the lock always returns.
                let Some(fetch) = fetch.take() else {
                    return Err(TicketError::WaitTimeout.into());
                };
                let refresh = async {
                    // Another process may have stored a ticket between our read and lock.
                    match self.read(&key).await {
                        Ok(Some(s)) if current(&s, crate::now_ms()) => Ok(s.to_ticket()),
                        Ok(_) => self.refresh_locked(&key, fetch).await,
                        Err(e) => Err(GetTicketError::Ticket(e)),
                    }
                };
                let store = &*self.inner.store;
                let result =
                    refresh_lock::holding(store, "ticket", appid, &lock, &owner, refresh).await;
                refresh_lock::release(store, "ticket", appid, &lock, &owner).await;
                return match (result, cached) {
                    (Ok(ticket), _) => Ok(ticket),
                    (Err(e), Some(s)) => {
                        tracing::warn!(appid, error = %crate::ErrorChain(&e), "jsapi ticket refresh ahead of expiry failed; keeping the current ticket");
                        Ok(s.to_ticket())
                    }
                    (Err(e), None) => Err(e),
                };
            }
            // Another process refreshes. The old ticket, while valid, is good enough.
            if let Some(s) = cached {
                return Ok(s.to_ticket());
            }
            // Wait for its result; if the lock goes away without one, try to take it.
            loop {
                if tokio::time::Instant::now() >= deadline {
                    return Err(TicketError::WaitTimeout.into());
                }
                tokio::time::sleep(POLL_EVERY).await;
                let now = crate::now_ms();
                if let Some(s) = self.read(&key).await?.filter(|s| s.expires_at_ms > now) {
                    return Ok(s.to_ticket());
                }
                if self
                    .inner
                    .store
                    .get(&lock)
                    .await
                    .map_err(TicketError::from)?
                    .is_none()
                {
                    break;
                }
            }
        }
    }

    async fn read(&self, key: &str) -> Result<Option<Stored>, TicketError> {
        let raw = self.inner.store.get(key).await?;
        Ok(raw.and_then(|raw| serde_json::from_slice::<Stored>(&raw).ok()))
    }

    async fn refresh_locked<F, Fut, E>(
        &self,
        key: &str,
        fetch: F,
    ) -> Result<Ticket, GetTicketError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<FetchedTicket, E>>,
    {
        let fetched = fetch().await.map_err(GetTicketError::Fetch)?;
        let now = crate::now_ms();
        let expires_in = i64::try_from(fetched.expires_in.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let stored = Stored {
            ticket: fetched.ticket.expose().to_owned(),
            expires_at_ms: now.saturating_add(expires_in),
            fetched_at_ms: now,
        };
        let value = serde_json::to_vec(&stored).map_err(|e| TicketError::Encode(Arc::new(e)))?;
        let ttl = Duration::from_millis(u64::try_from(expires_in).unwrap_or(1));
        self.inner
            .store
            .set(key, &value, Some(ttl))
            .await
            .map_err(TicketError::from)?;
        tracing::info!(expires_in_s = expires_in / 1000, "jsapi ticket refreshed");
        Ok(stored.to_ticket())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::store::MemoryStore;

    fn service(store: &MemoryStore) -> TicketService {
        TicketService::new(
            Arc::new(store.clone()),
            "t",
            Duration::from_secs(300),
            Duration::from_secs(5),
        )
    }

    /// A fetch that counts itself and answers `ticket-{n}` after a short latency.
    async fn fetch(calls: &AtomicU64) -> Result<FetchedTicket, std::io::Error> {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(FetchedTicket {
            ticket: Secret::new(format!("ticket-{n}")),
            expires_in: Duration::from_secs(7200),
        })
    }

    #[tokio::test]
    async fn concurrent_gets_fetch_once_and_share_the_ticket() {
        let store = MemoryStore::new();
        let tickets = service(&store);
        let calls = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..30 {
            let tickets = tickets.clone();
            let calls = Arc::clone(&calls);
            tasks.spawn(async move { tickets.get_jsapi("wx1", || fetch(&calls)).await });
        }
        while let Some(result) = tasks.join_next().await {
            assert_eq!(result.unwrap().unwrap().ticket.expose(), "ticket-1");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let ttl = store.pttl("t:ticket:wx1:jsapi").await.unwrap().unwrap();
        assert!(ttl > Duration::from_secs(7100));
        assert!(
            store
                .get("t:ticket-lock:wx1:jsapi")
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_failed_fetch_is_reported_and_releases_the_lock() {
        let store = MemoryStore::new();
        let tickets = service(&store);
        let err = tickets
            .get_jsapi("wx1", || async {
                Err::<FetchedTicket, _>(std::io::Error::other("down"))
            })
            .await
            .unwrap_err();
        assert!(matches!(err, GetTicketError::Fetch(_)), "{err:?}");
        assert!(
            store
                .get("t:ticket-lock:wx1:jsapi")
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_ticket_near_expiry_is_refreshed_and_kept_when_the_refresh_fails() {
        let store = MemoryStore::new();
        let now = crate::now_ms();
        let old = Stored {
            ticket: "old".into(),
            expires_at_ms: now + 100_000,
            fetched_at_ms: now - 7_000_000,
        };
        store
            .set(
                "t:ticket:wx1:jsapi",
                &serde_json::to_vec(&old).unwrap(),
                None,
            )
            .await
            .unwrap();
        let tickets = service(&store);
        let kept = tickets
            .get_jsapi("wx1", || async {
                Err::<FetchedTicket, _>(std::io::Error::other("down"))
            })
            .await
            .unwrap();
        assert_eq!(kept.ticket.expose(), "old");
        let calls = AtomicU64::new(0);
        let fresh = tickets.get_jsapi("wx1", || fetch(&calls)).await.unwrap();
        assert_eq!(fresh.ticket.expose(), "ticket-1");
    }
}

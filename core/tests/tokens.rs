//! The shared access token across processes on the real Redis (`WXGATE__REDIS__URL`,
//! default redis://127.0.0.1:6379/0): one token call per appid even when WeChat answers more
//! slowly than the refresh lock's first TTL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use wxgate_core::config::{Secret, TokenMode};
use wxgate_core::store::{RedisStore, Store};
use wxgate_core::tokens::{FetchError, FetchedToken, TokenFetcher, TokenService, TokenSettings};

/// The refresh lock's TTL before any extension (10 s).
const LOCK_TTL: Duration = Duration::from_secs(10);
/// WeChat's answer takes longer than that.
const SLOW: Duration = Duration::from_secs(12);

/// A process's own Redis connection, ready.
async fn store(shutdown: &CancellationToken) -> Arc<RedisStore> {
    Arc::new(wxgate_tests::ready_redis_store(shutdown).await)
}

/// A token endpoint that answers after [`SLOW`], counting its calls.
#[derive(Default)]
struct SlowEndpoint {
    calls: AtomicU64,
}

#[async_trait]
impl TokenFetcher for SlowEndpoint {
    async fn fetch(
        &self,
        _mode: TokenMode,
        _appid: &str,
        _secret: &Secret,
        _force_refresh: bool,
    ) -> Result<FetchedToken, FetchError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(SLOW).await;
        Ok(FetchedToken {
            access_token: Secret::new(format!("token-{n}")),
            expires_in: Duration::from_secs(7200),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_call_slower_than_the_lock_ttl_is_made_once_for_all_processes() {
    let ns = format!("t{:016x}", rand::random::<u64>());
    let keys = wxgate_tests::RedisKeys::guard(&ns, &wxgate_tests::redis_url());
    let appid = "wx0123456789abcdef";
    let shutdown = CancellationToken::new();
    let endpoint = Arc::new(SlowEndpoint::default());
    // Four processes: each its own Redis connection and token service.
    let mut processes = Vec::new();
    for _ in 0..4 {
        processes.push(TokenService::new(
            store(&shutdown).await,
            endpoint.clone(),
            TokenSettings {
                namespace: ns.clone(),
                mode: TokenMode::Stable,
                refresh_ahead: Duration::from_secs(300),
                http_timeout: SLOW + Duration::from_secs(3),
            },
        ));
    }
    let get = |service: TokenService| {
        tokio::spawn(async move { service.get(appid, &Secret::new("s")).await })
    };

    let mut gets = vec![get(processes[0].clone())];
    // The first process holds the lock and waits for WeChat.
    let observer = store(&shutdown).await;
    let lock = format!("{ns}:token-lock:{appid}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while observer.get(&lock).await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "the lock is taken");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let locked_at = tokio::time::Instant::now();
    gets.push(get(processes[1].clone()));
    gets.push(get(processes[2].clone()));
    // The last one arrives after the lock's first TTL has run out: the owner extended it.
    tokio::time::sleep_until(locked_at + LOCK_TTL + Duration::from_millis(500)).await;
    assert!(
        observer.get(&lock).await.unwrap().is_some(),
        "the lock outlives its first TTL while the fetch runs"
    );
    gets.push(get(processes[3].clone()));

    for (i, result) in futures_util::future::join_all(gets)
        .await
        .into_iter()
        .enumerate()
    {
        let token = result
            .unwrap()
            .unwrap_or_else(|e| panic!("process {i}: {e}"));
        assert_eq!(token.token.expose(), "token-1", "process {i}");
    }
    assert_eq!(endpoint.calls.load(Ordering::SeqCst), 1, "one token call");
    assert!(
        observer.get(&lock).await.unwrap().is_none(),
        "the owner released the lock"
    );
    shutdown.cancel();
    keys.remove().await;
}

//! Waiting for a condition without sleeping to synchronise: poll it, with a deadline.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often [`eventually`] checks again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Runs `check` until it returns `Ok`, at most for `within`; returns the value.
///
/// Panics when the deadline passes, naming `what` and the last `Err` seen, so a failing test
/// says what it was waiting for and how far it got.
pub async fn eventually<T, E, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + within;
    loop {
        let last = match tokio::time::timeout_at(deadline, check()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(e)) => format!("{e:?}"),
            Err(_) => "the last check itself did not finish".to_owned(),
        };
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}; last: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Awaits `future`, at most for `limit`; panics naming `what` when it takes longer.
pub async fn bounded<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {limit:?}"))
}

//! The single-refresher lock shared by the access token ([`crate::tokens`]) and the JS-SDK
//! ticket ([`crate::tickets`]) (docs/contract.md §1.4): `SET lock owner NX PX` to take it, the
//! owner extends it (compare-and-expire) while its fetch runs, and releases it with
//! compare-and-delete; others poll the shared value meanwhile.

use std::future::Future;
use std::time::Duration;

use crate::store::{Store, StoreError};

/// How long a lock lives unless its owner extends it: a crashed owner blocks other refreshers
/// for this long at most.
pub(crate) const LOCK_TTL: Duration = Duration::from_millis(10_000);
/// How often the owner extends the lock while its fetch runs; a third of the TTL, so two
/// extensions may fail (a slow Redis) before the lock lapses.
pub(crate) const LOCK_EXTEND_EVERY: Duration = Duration::from_millis(3_333);
/// How often a caller waiting for another process's refresh re-reads the shared value.
pub(crate) const POLL_EVERY: Duration = Duration::from_millis(50);

/// A random lock owner.
pub(crate) fn owner() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Takes `lock` for `owner` if nobody holds it.
pub(crate) async fn try_take(
    store: &dyn Store,
    lock: &str,
    owner: &str,
) -> Result<bool, StoreError> {
    store.set_nx(lock, owner.as_bytes(), LOCK_TTL).await
}

/// Runs `work` while extending `lock` (held by `owner`) every [`LOCK_EXTEND_EVERY`], so the
/// lock outlives any fetch. A lost lock (expired, taken over) stops the extending, with a
/// warning naming `what` (`token`, `ticket`); `work` still finishes.
pub(crate) async fn holding<T>(
    store: &dyn Store,
    what: &'static str,
    appid: &str,
    lock: &str,
    owner: &str,
    work: impl Future<Output = T>,
) -> T {
    let extend = async {
        loop {
            tokio::time::sleep(LOCK_EXTEND_EVERY).await;
            match store
                .compare_and_expire(lock, owner.as_bytes(), LOCK_TTL)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        appid,
                        what,
                        "refresh lock lost while refreshing; another process may refresh too"
                    );
                    return;
                }
                Err(e) => {
                    tracing::warn!(appid, what, error = %crate::ErrorChain(&e), "cannot extend the refresh lock; retrying");
                }
            }
        }
    };
    tokio::pin!(work);
    tokio::select! {
        output = &mut work => output,
        // Only when the lock was lost: finish without extending.
        () = extend => work.await,
    }
}

/// Releases `lock` if `owner` still holds it; a failure only means it expires by itself.
pub(crate) async fn release(
    store: &dyn Store,
    what: &'static str,
    appid: &str,
    lock: &str,
    owner: &str,
) {
    if let Err(e) = store.compare_and_delete(lock, owner.as_bytes()).await {
        tracing::warn!(appid, what, error = %crate::ErrorChain(&e), "cannot release the refresh lock; it expires by itself");
    }
}

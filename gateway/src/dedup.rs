//! WeChat retries deduplicated across every gateway process (docs/contract.md §1.1 step 6, §3).
//!
//! `{ns}:dedup:{event_id}` holds `P` while a request is on it and `A<answer>` once answered.
//! The `P` claim expires shortly after the request budget, before WeChat retries (5 s), so a
//! gateway that dies mid-request never turns the retry into a drop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use wxgate_core::Store;
use wxgate_core::store::{SetNx, StoreError};

use crate::pipeline::CallbackError;
use crate::state::Gateway;

const IN_PROGRESS: &[u8] = b"P";
const POLL: Duration = Duration::from_millis(20);

/// The outcome of [`claim`].
pub enum Claim {
    /// This request owns the event now.
    Claimed,
    /// The event was answered before; here is the answer to repeat.
    Answered(Bytes),
}

/// How long a claim holds: shortly past the request budget, before WeChat retries (5 s).
pub fn claim_ttl(request_budget: Duration) -> Duration {
    request_budget + Duration::from_millis(500)
}

/// Claims the event, or returns the stored answer. Waits (polling) while another request
/// holds the claim; the caller's budget timeout bounds the wait.
pub async fn claim(gateway: &Gateway, key: &str) -> Result<Claim, CallbackError> {
    // Fail fast while Redis is known to be down, instead of spending the budget on timeouts.
    if !gateway.store.is_ready() {
        return Err(CallbackError::Store(StoreError::Unavailable));
    }
    loop {
        match gateway
            .claims
            .claim(key)
            .await
            .map_err(CallbackError::Store)?
        {
            SetNx::Set => return Ok(Claim::Claimed),
            SetNx::Exists(value) => {
                if let Some(answer) = value.strip_prefix(b"A") {
                    return Ok(Claim::Answered(Bytes::copy_from_slice(answer)));
                }
            }
        }
        // Another request is on it: wait for its answer or for the claim to vanish
        // (published failed, or its gateway died), then take over.
        loop {
            tokio::time::sleep(POLL).await;
            match gateway.store.get(key).await.map_err(CallbackError::Store)? {
                None => break,
                Some(value) => {
                    if let Some(answer) = value.strip_prefix(b"A") {
                        return Ok(Claim::Answered(Bytes::copy_from_slice(answer)));
                    }
                }
            }
        }
    }
}

/// Claims of concurrent callbacks, sent to Redis together by one task (`SET … NX GET PX`,
/// one pipeline per round): while a pipeline is on its way, the claims that come in collect
/// and go out in the next one, so Redis reads one request per round instead of one per
/// callback. A callback waits for its own result exactly as for a single command.
pub struct Claims {
    queue: mpsc::Sender<(String, oneshot::Sender<Result<SetNx, StoreError>>)>,
}

impl Claims {
    /// Starts the claiming task on the current runtime; it ends when `Claims` is dropped.
    /// `ttl` is [`claim_ttl`] of the request budget.
    pub fn start(store: Arc<dyn Store>, ttl: Duration) -> Self {
        let (queue, claims) = mpsc::channel(QUEUE);
        tokio::spawn(send_claims(store, ttl, claims));
        Self { queue }
    }

    /// `SET key P NX GET PX ttl`, batched with the claims of other callbacks.
    pub async fn claim(&self, key: &str) -> Result<SetNx, StoreError> {
        let (done, result) = oneshot::channel();
        self.queue
            .send((key.to_owned(), done))
            .await
            .map_err(|_| StoreError::Unavailable)?;
        result.await.map_err(|_| StoreError::Unavailable)?
    }
}

async fn send_claims(
    store: Arc<dyn Store>,
    ttl: Duration,
    mut claims: mpsc::Receiver<(String, oneshot::Sender<Result<SetNx, StoreError>>)>,
) {
    let mut keys = Vec::new();
    let mut waiting = Vec::new();
    while next_round(&mut claims, |(key, done)| {
        // A callback that gave up (its budget ran out) while queued claims nothing: a claim
        // nobody answers would only hold its retry back until the claim expires.
        if done.is_closed() {
            return false;
        }
        keys.push(key);
        waiting.push(done);
        true
    })
    .await
    {
        if keys.is_empty() {
            continue;
        }
        match store.set_nx_get_many(&keys, IN_PROGRESS, ttl).await {
            Ok(results) => {
                for (done, result) in waiting.drain(..).zip(results) {
                    let _ = done.send(Ok(result));
                }
            }
            Err(e) => {
                for done in waiting.drain(..) {
                    let _ = done.send(Err(e.clone()));
                }
            }
        }
        // A short answer (it should not happen) leaves waiters behind: they see Unavailable.
        waiting.clear();
        keys.clear();
    }
}

/// Waits for the next item of `queue`, then takes every item already queued behind it until
/// `take` has accepted `BATCH` of them (`take` says whether it kept one). False once the
/// queue is closed and empty.
async fn next_round<T>(queue: &mut mpsc::Receiver<T>, mut take: impl FnMut(T) -> bool) -> bool {
    let Some(first) = queue.recv().await else {
        return false;
    };
    let mut taken = usize::from(take(first));
    while taken < BATCH {
        let Ok(item) = queue.try_recv() else {
            break;
        };
        taken += usize::from(take(item));
    }
    true
}

/// Answers waiting to be recorded for WeChat's retries (`SET … XX`, `gateway.dedup_ttl_s`),
/// written by one task in batches: one Redis round trip for every answer queued meanwhile,
/// and no request waits for it.
///
/// Recording after the answer is safe: until the record lands (well under a millisecond), a
/// retry finds the claim and waits for it; if the gateway dies first, the claim expires and
/// the retry publishes again (at-least-once, never a drop). A full queue or a Redis failure
/// loses records the same way, with a warning.
pub struct AnswerLog {
    queue: mpsc::Sender<Record>,
    /// Records dropped on a full queue since the writer last reported them.
    dropped: Arc<AtomicU64>,
}

enum Record {
    Answer { key: String, value: Vec<u8> },
    Flush(oneshot::Sender<()>),
}

/// Claims or answers queued at most. Claims beyond it wait to be queued; answers beyond it are
/// dropped (see [`AnswerLog`]).
const QUEUE: usize = 16_384;
/// Claims or answers per Redis pipeline at most. One pipeline is in flight per task at a time,
/// so this bounds what a round trip carries: large enough that a slow Redis (say 1 s per
/// round trip) still takes thousands of callbacks per second.
const BATCH: usize = 4_096;

impl AnswerLog {
    /// Starts the writer task on the current runtime; it ends when the log is dropped.
    pub fn start(store: Arc<dyn Store>, ttl: Duration) -> Self {
        Self::with_capacity(store, ttl, QUEUE)
    }

    fn with_capacity(store: Arc<dyn Store>, ttl: Duration, capacity: usize) -> Self {
        let (queue, records) = mpsc::channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_records(store, ttl, records, Arc::clone(&dropped)));
        Self { queue, dropped }
    }

    /// Queues `body` as the answer stored under `key`. Never waits.
    pub fn record(&self, key: String, body: &[u8]) {
        let mut value = Vec::with_capacity(body.len() + 1);
        value.push(b'A');
        value.extend_from_slice(body);
        if self.queue.try_send(Record::Answer { key, value }).is_err() {
            // Counted, not logged here: a stalled Redis would make this one line per callback.
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until every answer queued before this call was written (or failed).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.queue.send(Record::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn write_records(
    store: Arc<dyn Store>,
    ttl: Duration,
    mut records: mpsc::Receiver<Record>,
    dropped: Arc<AtomicU64>,
) {
    let mut batch: Vec<(String, Vec<u8>)> = Vec::new();
    let mut flushed = Vec::new();
    while next_round(&mut records, |record| match record {
        Record::Answer { key, value } => {
            batch.push((key, value));
            true
        }
        Record::Flush(done) => {
            flushed.push(done);
            false
        }
    })
    .await
    {
        if !batch.is_empty() {
            if let Err(e) = store.set_xx_many(&batch, ttl).await {
                tracing::warn!(error = %wxgate_core::ErrorChain(&e), answers = batch.len(), "cannot store answers for retries; their retries will be published again");
            }
            batch.clear();
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            tracing::warn!(
                answers = lost,
                "answer log was full; retries of these events will be published again"
            );
        }
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store holding the claims `k0`..`k{n-1}`, as callbacks in progress leave them.
    async fn claimed_store(n: usize) -> Arc<dyn Store> {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        for i in 0..n {
            store
                .set(&format!("k{i}"), IN_PROGRESS, None)
                .await
                .expect("set");
        }
        store
    }
    use wxgate_core::MemoryStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_claims_give_each_key_to_exactly_one() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let claims = Arc::new(Claims::start(Arc::clone(&store), Duration::from_secs(5)));
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let claims = Arc::clone(&claims);
                tokio::spawn(async move { (i % 20, claims.claim(&format!("k{}", i % 20)).await) })
            })
            .collect();
        let mut winners = [0; 20];
        for task in tasks {
            let (key, result) = task.await.expect("task");
            match result.expect("claim") {
                SetNx::Set => winners[key] += 1,
                SetNx::Exists(value) => assert_eq!(value, IN_PROGRESS),
            }
        }
        assert_eq!(winners, [1; 20], "one claim per key succeeds");
        let ttl = store.pttl("k0").await.expect("pttl");
        assert!(ttl.is_some_and(|t| t <= Duration::from_secs(5)), "{ttl:?}");
    }

    #[tokio::test]
    async fn a_claim_given_up_before_it_is_sent_claims_nothing() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let claims = Claims::start(Arc::clone(&store), Duration::from_secs(5));
        {
            // Polled once (queued), then dropped: one runtime thread, so the task has not run.
            let mut gone = std::pin::pin!(claims.claim("k-gone"));
            let polled =
                std::future::poll_fn(|cx| std::task::Poll::Ready(gone.as_mut().poll(cx))).await;
            assert!(polled.is_pending());
        }
        assert_eq!(claims.claim("k-kept").await.expect("claim"), SetNx::Set);
        assert_eq!(store.get("k-gone").await.expect("get"), None);
    }

    #[tokio::test]
    async fn answers_are_recorded_over_claims_only() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        store
            .set("ns:dedup:claimed", IN_PROGRESS, None)
            .await
            .expect("set");
        let log = AnswerLog::start(Arc::clone(&store), Duration::from_secs(600));
        log.record("ns:dedup:claimed".to_owned(), b"success");
        log.record("ns:dedup:never-claimed".to_owned(), b"<xml/>");
        log.flush().await;

        assert_eq!(
            store.get("ns:dedup:claimed").await.expect("get").as_deref(),
            Some(b"Asuccess".as_slice())
        );
        let ttl = store.pttl("ns:dedup:claimed").await.expect("pttl");
        assert!(ttl.is_some_and(|t| t > Duration::from_secs(590)), "{ttl:?}");
        // SET … XX: a claim that vanished (expired, released) is not brought back.
        assert_eq!(
            store.get("ns:dedup:never-claimed").await.expect("get"),
            None
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_records_and_counts_them() {
        let store = claimed_store(10).await;
        let log = AnswerLog::with_capacity(Arc::clone(&store), Duration::from_secs(60), 1);
        // One runtime thread and no await in between: the writer cannot drain the queue.
        for i in 0..10 {
            log.record(format!("k{i}"), b"success");
        }
        assert_eq!(log.dropped.load(Ordering::Relaxed), 9);
        log.flush().await;
        assert_eq!(
            store.get("k0").await.expect("get").as_deref(),
            Some(b"Asuccess".as_slice())
        );
        assert_eq!(
            store.get("k9").await.expect("get").as_deref(),
            Some(IN_PROGRESS),
            "a dropped record leaves the claim to expire"
        );
        assert_eq!(
            log.dropped.load(Ordering::Relaxed),
            0,
            "reported by the writer"
        );
    }

    #[tokio::test]
    async fn many_answers_queued_at_once_are_all_recorded() {
        let store = claimed_store(2000).await;
        let log = AnswerLog::start(Arc::clone(&store), Duration::from_secs(60));
        for i in 0..2000 {
            log.record(format!("k{i}"), format!("answer {i}").as_bytes());
        }
        log.flush().await;
        for i in 0..2000 {
            assert_eq!(
                store.get(&format!("k{i}")).await.expect("get"),
                Some(format!("Aanswer {i}").into_bytes()),
            );
        }
    }
}

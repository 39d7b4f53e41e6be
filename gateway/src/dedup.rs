//! WeChat retries deduplicated across every gateway process (DESIGN.md §1.1 step 6, §3).
//!
//! `{ns}:dedup:{event_id}` holds `P` while a request is on it and `A<answer>` once answered.
//! The `P` claim expires shortly after the request budget, before WeChat retries (5 s), so a
//! gateway that dies mid-request never turns the retry into a drop.

use std::time::Duration;

use bytes::Bytes;
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

fn claim_ttl(gateway: &Gateway) -> Duration {
    gateway.config.gateway.request_budget + Duration::from_millis(500)
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
            .store
            .set_nx_get(key, IN_PROGRESS, claim_ttl(gateway))
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

/// Records the answer for WeChat's retries (`SET … XX`, `gateway.dedup_ttl_s`).
pub async fn store_answer(gateway: &Gateway, key: &str, body: &[u8]) -> Result<(), StoreError> {
    let mut value = Vec::with_capacity(body.len() + 1);
    value.push(b'A');
    value.extend_from_slice(body);
    gateway
        .store
        .set_xx(key, &value, gateway.config.gateway.dedup_ttl)
        .await
        .map(|_| ())
}

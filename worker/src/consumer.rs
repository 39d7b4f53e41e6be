//! The consumer of `{ns}.worker` (docs/contract.md §1.3, §6): decode, decide with the account's
//! custom rules, send through `custom/send` once per event id, and settle every delivery
//! exactly one way: acked after a send or a skip, re-published to a retry queue, or parked in
//! `{ns}.worker.dead`. A delivery whose retry or dead-letter publish fails is nacked with
//! requeue, never dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use wechat::Decision;
use wechat::errcode::{Class, classify};
use wxgate_core::ErrorChain;
use wxgate_core::accounts::{Registry, RuntimeAccounts};
use wxgate_core::bus::{
    Bus, BusError, Delivery, DeliveryStream, HeaderValue, Message, PublishError,
};
use wxgate_core::config::{Account, Config};
use wxgate_core::keys::Keys;
use wxgate_core::metrics::WorkerMetrics;
use wxgate_core::store::Store;
use wxgate_core::tokens::{AccessToken, TokenService};
use wxgate_core::topology::Names;

use crate::client::{CallError, WechatClient};
use crate::custom::CustomMessage;

/// Header counting retries (docs/contract.md §1.2).
pub const ATTEMPT_HEADER: &str = "x-wxgate-attempt";
/// Dead-letter header: why.
pub const REASON_HEADER: &str = "x-wxgate-reason";
/// Dead-letter header: WeChat's errcode, when there was one.
pub const ERRCODE_HEADER: &str = "x-wxgate-errcode";
/// Dead-letter header: attempts made.
pub const ATTEMPTS_HEADER: &str = "x-wxgate-attempts";
/// Header of a dead letter: when it was parked, Unix milliseconds.
pub const DEAD_AT_HEADER: &str = "x-wxgate-dead-at-ms";

/// Bound on one retry or dead-letter publish.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on finishing the events in progress at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a delivery needs; shared by all of them.
pub(crate) struct Context {
    pub(crate) config: Arc<Config>,
    pub(crate) accounts: Arc<Registry>,
    pub(crate) names: Names,
    pub(crate) keys: Keys,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) tokens: TokenService,
    pub(crate) client: WechatClient,
    pub(crate) metrics: Arc<WorkerMetrics>,
}

/// How one delivery ended, before settling.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// WeChat accepted the send.
    Sent,
    /// Nothing to send (passive reply, no rule, already sent).
    Skipped(&'static str),
    /// May succeed later: retry while attempts remain.
    Transient {
        reason: &'static str,
        errcode: Option<i64>,
    },
    /// Will not succeed: dead at once.
    Permanent {
        reason: &'static str,
        errcode: Option<i64>,
    },
}

/// Consumes `{ns}.worker` until `shutdown`, then stops consuming, requeues what is buffered,
/// and waits (bounded) for the events in progress.
pub(crate) async fn run(ctx: Arc<Context>, shutdown: CancellationToken) -> Result<(), BusError> {
    let queue = ctx.names.worker_queue();
    let mut stream = ctx.bus.consume(&queue, ctx.config.worker.prefetch).await?;
    let permits = Arc::new(Semaphore::new(ctx.config.worker.concurrency));
    let mut tasks = JoinSet::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let delivery = tokio::select! {
            () = shutdown.cancelled() => break,
            delivery = stream.recv() => match delivery {
                Some(delivery) => delivery,
                None => break,
            },
        };
        let span = tracing::info_span!(
            "delivery",
            account_id = tracing::field::Empty,
            event_id = tracing::field::Empty,
        );
        let ctx = Arc::clone(&ctx);
        tasks.spawn(
            async move {
                handle(&ctx, delivery).await;
                drop(permit);
            }
            .instrument(span),
        );
        while tasks.try_join_next().is_some() {}
    }
    tracing::info!("stopping consumer");
    stream.stop();
    requeue_buffered(&mut stream).await;
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        // Unsettled deliveries go back to the queue when the channel closes.
        tracing::warn!("events still in progress after the drain deadline; abandoning them");
        tasks.abort_all();
    }
    requeue_buffered(&mut stream).await;
    Ok(())
}

/// Gives back the deliveries taken from the broker but not started.
async fn requeue_buffered(stream: &mut DeliveryStream) {
    while let Some(delivery) = stream.try_recv() {
        if let Err(e) = delivery.nack(true).await {
            tracing::warn!(error = %ErrorChain(&e), "cannot requeue a buffered delivery");
        }
    }
}

/// Processes and settles one delivery.
async fn handle(ctx: &Context, delivery: Delivery) {
    let attempt = delivery
        .message
        .properties
        .header_int(ATTEMPT_HEADER)
        .unwrap_or(0)
        .max(0)
        .saturating_add(1);
    let outcome = process(ctx, &delivery.message).await;
    tracing::debug!(?outcome, attempt, "processed");
    let settled = match outcome {
        Outcome::Sent => {
            ctx.metrics.event("sent");
            delivery.ack().await
        }
        Outcome::Skipped(why) => {
            tracing::debug!(why, "nothing to send");
            ctx.metrics.event("skipped");
            delivery.ack().await
        }
        Outcome::Transient { reason, errcode }
            if attempt < i64::from(ctx.config.worker.max_attempts) =>
        {
            retry(ctx, delivery, attempt, reason, errcode).await
        }
        Outcome::Transient { errcode, .. } => {
            dead(ctx, delivery, attempt, "attempts_exhausted", errcode).await
        }
        Outcome::Permanent { reason, errcode } => {
            dead(ctx, delivery, attempt, reason, errcode).await
        }
    };
    if let Err(e) = settled {
        tracing::warn!(error = %ErrorChain(&e), "cannot settle delivery; the broker will redeliver it");
    }
}

/// Publishes a copy to the next retry queue, then acks; nacks with requeue if the publish
/// fails.
async fn retry(
    ctx: &Context,
    delivery: Delivery,
    attempt: i64,
    reason: &'static str,
    errcode: Option<i64>,
) -> Result<(), BusError> {
    let mut copy = copy_of(&delivery.message);
    copy.properties
        .set_header(ATTEMPT_HEADER, HeaderValue::Int(attempt));
    let last = ctx.config.worker.retry_delays.len().saturating_sub(1);
    let index = usize::try_from(attempt - 1).unwrap_or(0).min(last);
    let queue = ctx.names.retry_queue(index);
    match publish(ctx, &queue, &copy).await {
        Ok(()) => {
            tracing::info!(reason, errcode, attempt, %queue, "send failed; retrying later");
            ctx.metrics.event("retried");
            delivery.ack().await
        }
        Err(e) => {
            tracing::warn!(error = %ErrorChain(&e), %queue, "cannot publish retry; requeueing");
            delivery.nack(true).await
        }
    }
}

/// Publishes a copy to `{ns}.worker.dead` with the dead-letter headers, then acks; nacks with
/// requeue if the publish fails.
async fn dead(
    ctx: &Context,
    delivery: Delivery,
    attempts: i64,
    reason: &'static str,
    errcode: Option<i64>,
) -> Result<(), BusError> {
    let mut copy = copy_of(&delivery.message);
    copy.properties
        .set_header(REASON_HEADER, HeaderValue::Str(reason.to_owned()));
    if let Some(errcode) = errcode {
        copy.properties
            .set_header(ERRCODE_HEADER, HeaderValue::Int(errcode));
    }
    copy.properties
        .set_header(ATTEMPTS_HEADER, HeaderValue::Int(attempts));
    copy.properties
        .set_header(DEAD_AT_HEADER, HeaderValue::Int(wxgate_core::now_ms()));
    let queue = ctx.names.dead_queue();
    match publish(ctx, &queue, &copy).await {
        Ok(()) => {
            tracing::warn!(
                reason,
                errcode,
                attempts,
                "event parked in the dead-letter queue"
            );
            ctx.metrics.event("dead");
            ctx.metrics.dead_letter(errcode);
            delivery.ack().await
        }
        Err(e) => {
            tracing::warn!(error = %ErrorChain(&e), "cannot publish dead letter; requeueing");
            delivery.nack(true).await
        }
    }
}

/// Why a retry or dead-letter copy was not published; the original is requeued.
#[derive(Debug, thiserror::Error)]
enum RepublishError {
    /// The broker refused the copy or the connection failed.
    #[error("broker did not take the copy")]
    Publish(#[source] PublishError),
    /// No confirm within [`PUBLISH_TIMEOUT`].
    #[error("broker did not confirm the copy in time")]
    Timeout,
}

async fn publish(ctx: &Context, queue: &str, message: &Message) -> Result<(), RepublishError> {
    match tokio::time::timeout(PUBLISH_TIMEOUT, ctx.bus.publish("", queue, message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(RepublishError::Publish(e)),
        Err(_) => Err(RepublishError::Timeout),
    }
}

/// The original body and properties, without the broker's dead-lettering headers (`x-death`
/// and friends, added when a retry queue's TTL sends it back).
fn copy_of(message: &Message) -> Message {
    let mut copy = message.clone();
    copy.properties.headers.retain(|(name, _)| {
        !(name == "x-death"
            || name.starts_with("x-first-death")
            || name.starts_with("x-last-death"))
    });
    copy
}

/// Decides what to do with one event and does it, short of settling.
async fn process(ctx: &Context, message: &Message) -> Outcome {
    let Ok(event) = wxgate_proto::v1::Event::decode(message.body.clone()) else {
        return Outcome::Permanent {
            reason: "undecodable",
            errcode: None,
        };
    };
    // Arbitrary bytes sometimes decode as a protobuf; an event without a proper id is not one.
    if event.event_id.len() != 32
        || !event.event_id.bytes().all(|b| b.is_ascii_hexdigit())
        || event.account_id.is_empty()
    {
        return Outcome::Permanent {
            reason: "undecodable",
            errcode: None,
        };
    }
    let span = tracing::Span::current();
    span.record("account_id", event.account_id.as_str());
    span.record("event_id", event.event_id.as_str());

    if event.passive_reply.is_some() {
        return Outcome::Skipped("answered with a passive reply");
    }
    let Some(account) = ctx.accounts.get(&event.account_id) else {
        // Before the first look at the runtime accounts only the file's are known: the
        // event may be for a runtime account, so it waits for a retry instead of dying.
        if !ctx.accounts.is_loaded() {
            return Outcome::Transient {
                reason: "accounts_not_loaded",
                errcode: None,
            };
        }
        // A gateway may already serve an account added a moment ago that this worker has
        // not loaded yet (each process looks once a second): Redis decides.
        return match RuntimeAccounts::new(Arc::clone(&ctx.store), ctx.keys.clone())
            .get(&event.account_id)
            .await
        {
            Ok(Some(_)) => Outcome::Transient {
                reason: "account_not_loaded_yet",
                errcode: None,
            },
            Ok(None) => Outcome::Permanent {
                reason: "unknown_account",
                errcode: None,
            },
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "cannot look the account up in redis");
                Outcome::Transient {
                    reason: "store_unavailable",
                    errcode: None,
                }
            }
        };
    };
    let msg = match wechat::parse(event.raw_xml.as_bytes(), &ctx.config.message_limits()) {
        Ok(msg) => msg,
        Err(e) => {
            tracing::warn!(error = %ErrorChain(&e), "event xml does not parse");
            return Outcome::Permanent {
                reason: "unparsable_xml",
                errcode: None,
            };
        }
    };
    let reply = match account.custom.decide(&msg) {
        Decision::Nothing => return Outcome::Skipped("no rule matched"),
        Decision::Reply(reply) => reply,
    };
    let touser = if event.from_user.is_empty() {
        msg.from_user_name.clone()
    } else {
        event.from_user.clone()
    };
    let messages = CustomMessage::from_reply(touser, &reply);
    if messages.is_empty() {
        return Outcome::Skipped("reply has no customer-service form");
    }

    let sent_key = ctx.keys.sent(&event.event_id);
    match ctx.store.get(&sent_key).await {
        Ok(Some(_)) => return Outcome::Skipped("already sent"),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %ErrorChain(&e), "cannot check the sent marker");
            return Outcome::Transient {
                reason: "store_unavailable",
                errcode: None,
            };
        }
    }

    let outcome = send_all(
        ctx,
        &account,
        &event.event_id,
        &messages,
        event.received_at_ms,
    )
    .await;
    if outcome == Outcome::Sent
        && let Err(e) = ctx
            .store
            .set(&sent_key, b"1", Some(ctx.config.worker.sent_ttl))
            .await
    {
        // WeChat has it; a redelivery (rare) could send it again. Settle as sent anyway.
        tracing::warn!(error = %ErrorChain(&e), "cannot write the sent marker");
    }
    outcome
}

/// Sends `messages` in order and stops at the first that is not sent. A reply of several
/// messages marks each part sent (`{ns}:sent:{event_id}:{part}`), so a redelivery after a
/// failure resumes with the first part not yet sent instead of repeating the others.
async fn send_all(
    ctx: &Context,
    account: &Account,
    event_id: &str,
    messages: &[CustomMessage],
    received_at_ms: i64,
) -> Outcome {
    let several = messages.len() > 1;
    for (part, message) in messages.iter().enumerate() {
        let part_key = several.then(|| ctx.keys.sent_part(event_id, part));
        if let Some(key) = &part_key {
            match ctx.store.get(key).await {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %ErrorChain(&e), "cannot check the part's sent marker");
                    return Outcome::Transient {
                        reason: "store_unavailable",
                        errcode: None,
                    };
                }
            }
        }
        // The end-to-end latency is the first message's.
        let received_at_ms = if part == 0 { received_at_ms } else { 0 };
        let outcome = send(ctx, account, message, received_at_ms).await;
        if let Outcome::Permanent {
            errcode: Some(errcode @ (45047 | 45015)),
            ..
        } = outcome
            && part > 0
        {
            // The user's reply window ran out of messages (45047: 3 after an event, 5 after
            // a message) or closed (45015) part-way: what went out is the reply, and no retry
            // or replay could send the rest. Settle as sent rather than park a half-sent event.
            tracing::warn!(
                part,
                parts = messages.len(),
                errcode,
                "reply window exhausted; the remaining parts are not sent"
            );
            return Outcome::Sent;
        }
        if outcome != Outcome::Sent {
            return outcome;
        }
        if let Some(key) = &part_key
            && let Err(e) = ctx
                .store
                .set(key, b"1", Some(ctx.config.worker.sent_ttl))
                .await
        {
            // WeChat has this part; only a redelivery could repeat it.
            tracing::warn!(error = %ErrorChain(&e), part, "cannot write the part's sent marker");
        }
    }
    Outcome::Sent
}

/// Sends with the shared token; on an invalid token, refreshes and tries once more.
async fn send(
    ctx: &Context,
    account: &Account,
    message: &CustomMessage,
    received_at_ms: i64,
) -> Outcome {
    let token = match ctx.tokens.get(&account.appid, &account.secret).await {
        Ok(token) => token,
        Err(e) => return token_failure(&e),
    };
    let first = send_once(ctx, &token, message, received_at_ms).await;
    let Err(SendFailure::TokenInvalid(errcode)) = first else {
        return outcome_of(first);
    };
    tracing::info!(errcode, "access token rejected; refreshing");
    let token = match ctx
        .tokens
        .refresh_after_invalid(&account.appid, &account.secret, &token.token)
        .await
    {
        Ok(token) => token,
        Err(e) => return token_failure(&e),
    };
    match send_once(ctx, &token, message, received_at_ms).await {
        Err(SendFailure::TokenInvalid(errcode)) => Outcome::Transient {
            reason: "token_invalid",
            errcode: Some(errcode),
        },
        other => outcome_of(other),
    }
}

fn token_failure(e: &wxgate_core::tokens::TokenError) -> Outcome {
    tracing::warn!(error = %ErrorChain(e), "no access token");
    if e.is_transient() {
        Outcome::Transient {
            reason: "token_unavailable",
            errcode: e.errcode(),
        }
    } else {
        Outcome::Permanent {
            reason: "token_refused",
            errcode: e.errcode(),
        }
    }
}

enum SendFailure {
    TokenInvalid(i64),
    Other(Outcome),
}

fn outcome_of(result: Result<(), SendFailure>) -> Outcome {
    match result {
        Ok(()) => Outcome::Sent,
        Err(SendFailure::Other(outcome)) => outcome,
        Err(SendFailure::TokenInvalid(errcode)) => Outcome::Transient {
            reason: "token_invalid",
            errcode: Some(errcode),
        },
    }
}

async fn send_once(
    ctx: &Context,
    token: &AccessToken,
    message: &CustomMessage,
    received_at_ms: i64,
) -> Result<(), SendFailure> {
    let started = Instant::now();
    let answer = ctx.client.custom_send(&token.token, message).await;
    ctx.metrics
        .send_seconds
        .observe(started.elapsed().as_secs_f64());
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => {
            tracing::warn!(error = %ErrorChain(&e), "custom/send failed");
            let reason = match e {
                CallError::Unreachable(_) => "wechat_unreachable",
                CallError::Status(_) => "wechat_http_status",
                CallError::NotJson(_) | CallError::BadAnswer { .. } => "wechat_bad_answer",
                CallError::Encode(_) => "request_unencodable",
            };
            return Err(SendFailure::Other(if e.is_transient() {
                Outcome::Transient {
                    reason,
                    errcode: None,
                }
            } else {
                Outcome::Permanent {
                    reason,
                    errcode: None,
                }
            }));
        }
    };
    if received_at_ms > 0 {
        let elapsed_ms = wxgate_core::now_ms().saturating_sub(received_at_ms).max(0);
        // Milliseconds to seconds; precision loss far beyond any real latency is harmless.
        #[allow(clippy::cast_precision_loss)]
        ctx.metrics
            .end_to_end_seconds
            .observe(elapsed_ms as f64 / 1000.0);
    }
    match classify(answer.errcode) {
        Class::Ok => Ok(()),
        Class::TokenInvalid => Err(SendFailure::TokenInvalid(answer.errcode)),
        Class::Transient => {
            tracing::warn!(errcode = answer.errcode, errmsg = %answer.errmsg, "custom/send: wechat busy");
            Err(SendFailure::Other(Outcome::Transient {
                reason: "wechat_busy",
                errcode: Some(answer.errcode),
            }))
        }
        Class::Permanent => {
            tracing::warn!(errcode = answer.errcode, errmsg = %answer.errmsg, "custom/send: wechat refused");
            Err(SendFailure::Other(Outcome::Permanent {
                reason: "wechat_refused",
                errcode: Some(answer.errcode),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use wxgate_core::tokens::{FetchError, TokenError};

    use super::*;

    /// A token endpoint answering `errcode` settles the event the way a send answering it
    /// does: retried when the code is transient, dead otherwise.
    #[test]
    fn token_errcodes_are_classified_like_send_errcodes() {
        for errcode in [-1, 45009, 45011, 45066, 61450, 40001, 40013, 40125, 48001] {
            let error = TokenError::Fetch(FetchError::Errcode {
                errcode,
                errmsg: String::new(),
            });
            let retried = matches!(token_failure(&error), Outcome::Transient { .. });
            assert_eq!(
                retried,
                classify(errcode) == Class::Transient,
                "errcode {errcode}"
            );
        }
    }
}

//! The callback pipeline of docs/contract.md §1.1, steps 3–9, and the mapping of its errors to HTTP
//! answers (the one place that decides status codes).

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use prost::Message as _;
use wechat::{AesKey, Decision, DecryptError, InboundMessage, Limits, ParseError};
use wxgate_core::bus::{Message, PublishError};
use wxgate_core::config::{Account, Mode};
use wxgate_core::store::StoreError;

use crate::dedup::{self, Claim};
use crate::event::{self, Arrival};
use crate::state::Gateway;

/// Why a callback was not accepted. Every variant maps to one status in [`CallbackError::status`].
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// No account with this id.
    #[error("unknown account")]
    UnknownAccount,
    /// No account with this id yet, and the runtime accounts have not been loaded: it may be
    /// one of them, so WeChat is asked to retry.
    #[error("unknown account, runtime accounts not loaded yet")]
    AccountsNotLoaded,
    /// Body over `gateway.max_body_bytes`.
    #[error("body too large")]
    BodyTooLarge,
    /// The body could not be read.
    #[error("cannot read body")]
    BodyRead,
    /// `timestamp` missing or not an integer.
    #[error("timestamp missing or not an integer")]
    BadTimestamp,
    /// `timestamp` outside the allowed window.
    #[error("timestamp outside the allowed window")]
    StaleTimestamp,
    /// An encrypted body for a plain account.
    #[error("encrypted callback for a plain-mode account")]
    EncryptedRefused,
    /// A plain body for a safe account.
    #[error("plain callback for a safe-mode account")]
    PlainRefused,
    /// A GET without `echostr`.
    #[error("echostr missing")]
    MissingEchostr,
    /// A query parameter that percent-decodes to bytes that are not UTF-8.
    #[error("query parameter {0} is not UTF-8 once percent-decoded")]
    QueryNotUtf8(&'static str),
    /// A query parameter the gateway reads appears more than once: which one counts would be
    /// a guess (a proxy in front may have checked the other), so the request is refused.
    #[error("query parameter {0} appears more than once")]
    QueryRepeated(&'static str),
    /// The encrypted body has no usable `<Encrypt>`.
    #[error("encrypted envelope invalid")]
    BadEnvelope(#[source] ParseError),
    /// Signature or msg_signature mismatch (or missing).
    #[error("signature mismatch")]
    BadSignature,
    /// Decryption failed.
    #[error("decrypt failed")]
    Decrypt(#[source] DecryptError),
    /// The (decrypted) XML is not a valid message.
    #[error("invalid message xml")]
    BadXml(#[source] ParseError),
    /// Redis failed.
    #[error("dedup store unavailable")]
    Store(#[source] StoreError),
    /// The broker did not confirm.
    #[error("publish failed")]
    Publish(#[source] PublishError),
    /// The broker did not confirm in time.
    #[error("publish not confirmed in time")]
    PublishTimeout,
    /// The request budget ran out.
    #[error("request budget exceeded")]
    BudgetExceeded,
}

impl CallbackError {
    /// The HTTP status and the metric outcome of this error.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            Self::UnknownAccount => (StatusCode::NOT_FOUND, "unknown_account"),
            Self::AccountsNotLoaded => (StatusCode::SERVICE_UNAVAILABLE, "accounts_not_loaded"),
            Self::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Self::BodyRead => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::BadTimestamp => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::StaleTimestamp => (StatusCode::FORBIDDEN, "stale"),
            Self::EncryptedRefused
            | Self::PlainRefused
            | Self::MissingEchostr
            | Self::QueryNotUtf8(_)
            | Self::QueryRepeated(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::BadEnvelope(_) | Self::BadXml(_) => (StatusCode::BAD_REQUEST, "bad_xml"),
            Self::BadSignature => (StatusCode::FORBIDDEN, "bad_signature"),
            Self::Decrypt(_) => (StatusCode::BAD_REQUEST, "bad_crypto"),
            Self::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            Self::Publish(_) | Self::PublishTimeout => {
                (StatusCode::SERVICE_UNAVAILABLE, "publish_failed")
            }
            Self::BudgetExceeded => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
        }
    }
}

/// The query parameters WeChat signs, as received (form-decoded: `+` is a space, `%XX` a
/// byte, a `%` not followed by two hex digits stays as written), borrowed from the request
/// line unless decoding changed them.
#[derive(Debug, Default)]
pub struct CallbackQuery<'q> {
    /// `signature`.
    pub signature: Option<Cow<'q, str>>,
    /// `timestamp`.
    pub timestamp: Option<Cow<'q, str>>,
    /// `nonce`.
    pub nonce: Option<Cow<'q, str>>,
    /// `echostr` (GET verification).
    pub echostr: Option<Cow<'q, str>>,
    /// `encrypt_type`.
    pub encrypt_type: Option<Cow<'q, str>>,
    /// `msg_signature`.
    pub msg_signature: Option<Cow<'q, str>>,
}

impl<'q> CallbackQuery<'q> {
    /// Parses a raw query string. Unknown parameters (`openid`, …) are ignored unread.
    ///
    /// Errors with [`CallbackError::QueryRepeated`] when a parameter above appears twice.
    ///
    /// Errors with [`CallbackError::QueryNotUtf8`] when a parameter above decodes to bytes
    /// that are not UTF-8: it is refused rather than rewritten, since `echostr` must come back
    /// exactly as sent and the others are signed.
    pub fn parse(query: &'q str) -> Result<Self, CallbackError> {
        let mut q = Self::default();
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (name, slot) = match name {
                "signature" => ("signature", &mut q.signature),
                "timestamp" => ("timestamp", &mut q.timestamp),
                "nonce" => ("nonce", &mut q.nonce),
                "echostr" => ("echostr", &mut q.echostr),
                "encrypt_type" => ("encrypt_type", &mut q.encrypt_type),
                "msg_signature" => ("msg_signature", &mut q.msg_signature),
                _ => continue,
            };
            if slot.is_some() {
                return Err(CallbackError::QueryRepeated(name));
            }
            *slot = Some(form_decode(value).ok_or(CallbackError::QueryNotUtf8(name))?);
        }
        Ok(q)
    }

    fn encrypted(&self) -> bool {
        self.encrypt_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("aes"))
    }
}

/// One `application/x-www-form-urlencoded` value, as `form_urlencoded` decodes it but
/// without its lossy UTF-8 step: `None` when the bytes are not UTF-8.
fn form_decode(value: &str) -> Option<Cow<'_, str>> {
    if !value.contains('+') {
        return percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .ok();
    }
    // `+` is a space in a query (WeChat's reference servers decode it so), and replacing it
    // first leaves a `%2B` to decode to `+`.
    let spaced = value.replace('+', " ");
    let decoded = percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()?;
    Some(Cow::Owned(decoded.into_owned()))
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The body: `success`, a reply XML or an encrypted reply envelope.
    pub body: Bytes,
    /// Metric outcome: `ok`, `passive` or `duplicate`.
    pub outcome: &'static str,
}

/// GET server verification (docs/protocol.md §1.2): the `echostr` when the signature holds.
pub fn verify_get(account: &Account, query: &CallbackQuery) -> Result<Bytes, CallbackError> {
    let echostr = query
        .echostr
        .as_deref()
        .ok_or(CallbackError::MissingEchostr)?;
    let timestamp = query.timestamp.as_deref().unwrap_or("");
    let nonce = query.nonce.as_deref().unwrap_or("");
    let signature = query
        .signature
        .as_deref()
        .ok_or(CallbackError::BadSignature)?;
    tokens(account)
        .find(|token| wechat::verify_url_signature(token, timestamp, nonce, signature).is_ok())
        .ok_or(CallbackError::BadSignature)?;
    Ok(Bytes::copy_from_slice(echostr.as_bytes()))
}

fn tokens(account: &Account) -> impl Iterator<Item = &str> {
    std::iter::once(account.token.expose())
        .chain(account.previous_token.as_ref().map(|t| t.expose()))
}

fn keys(account: &Account) -> impl Iterator<Item = &AesKey> {
    account
        .aes_key
        .iter()
        .chain(account.previous_aes_key.iter())
}

/// What step 4–5 produced: the message and how to answer it.
struct Opened {
    msg: InboundMessage,
    raw_xml: String,
    arrival: Arrival,
    /// For encrypted requests: the key and token that verified, to seal the reply with.
    seal: Option<(AesKey, String)>,
}

fn check_timestamp(
    gateway: &Gateway,
    query: &CallbackQuery<'_>,
    now_s: i64,
) -> Result<(), CallbackError> {
    let ts: i64 = query
        .timestamp
        .as_deref()
        .and_then(|t| t.parse().ok())
        .ok_or(CallbackError::BadTimestamp)?;
    if let Some(window) = gateway.config.gateway.timestamp_window {
        let window = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
        if now_s.saturating_sub(ts).abs() > window {
            return Err(CallbackError::StaleTimestamp);
        }
    }
    Ok(())
}

fn open(
    account: &Account,
    query: &CallbackQuery<'_>,
    body: &[u8],
    limits: &Limits,
) -> Result<Opened, CallbackError> {
    let timestamp = query.timestamp.as_deref().unwrap_or("");
    let nonce = query.nonce.as_deref().unwrap_or("");
    if !query.encrypted() {
        if account.mode == Mode::Safe {
            return Err(CallbackError::PlainRefused);
        }
        let signature = query
            .signature
            .as_deref()
            .ok_or(CallbackError::BadSignature)?;
        tokens(account)
            .find(|token| wechat::verify_url_signature(token, timestamp, nonce, signature).is_ok())
            .ok_or(CallbackError::BadSignature)?;
        let text =
            std::str::from_utf8(body).map_err(|_| CallbackError::BadXml(ParseError::BadUtf8))?;
        let msg = wechat::parse_str(text, limits).map_err(CallbackError::BadXml)?;
        let raw_xml = text.to_owned();
        return Ok(Opened {
            msg,
            raw_xml,
            arrival: Arrival::Plain,
            seal: None,
        });
    }
    if account.mode == Mode::Plain {
        return Err(CallbackError::EncryptedRefused);
    }
    let envelope = wechat::parse_envelope(body, limits).map_err(CallbackError::BadEnvelope)?;
    let encrypt = envelope
        .encrypt
        .ok_or(CallbackError::BadEnvelope(ParseError::Missing("Encrypt")))?;
    let msg_signature = query
        .msg_signature
        .as_deref()
        .ok_or(CallbackError::BadSignature)?;
    let token = tokens(account)
        .find(|token| {
            wechat::verify_msg_signature(token, timestamp, nonce, &encrypt, msg_signature).is_ok()
        })
        .ok_or(CallbackError::BadSignature)?;
    let mut first_error = None;
    for key in keys(account) {
        match wechat::decrypt_utf8(key, &account.appid, &encrypt) {
            Ok(raw_xml) => {
                let msg = wechat::parse_str(&raw_xml, limits).map_err(CallbackError::BadXml)?;
                let arrival = if memchr(body, b"<MsgType") {
                    Arrival::Compat
                } else {
                    Arrival::Safe
                };
                return Ok(Opened {
                    msg,
                    raw_xml,
                    arrival,
                    seal: Some((key.clone(), token.to_owned())),
                });
            }
            // During key rotation the previous key is tried next (docs/protocol.md §2.9).
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(CallbackError::Decrypt(
        first_error.unwrap_or(DecryptError::AppIdMismatch),
    ))
}

fn memchr(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Runs steps 3–9 for one POST. The caller bounds it with the request budget.
#[tracing::instrument(level = "debug", skip_all, fields(account_id = %account.id, event_id = tracing::field::Empty))]
pub async fn handle_post(
    gateway: &Arc<Gateway>,
    account: &Account,
    query: &CallbackQuery<'_>,
    body: &[u8],
) -> Result<Answer, CallbackError> {
    let received_at_ms = wxgate_core::now_ms();
    let now_s = received_at_ms / 1000;
    check_timestamp(gateway, query, now_s)?;
    let opened = open(account, query, body, &gateway.limits)?;
    let msg = &opened.msg;
    let event_id = wechat::event_id(account.id.as_str(), msg);
    tracing::Span::current().record("event_id", event_id.as_str());

    let dedup_key = gateway.keys.dedup(event_id.as_str());
    match dedup::claim(gateway, &dedup_key).await? {
        Claim::Answered(body) => {
            gateway.metrics.dedup_hits.inc();
            return Ok(Answer {
                body,
                outcome: "duplicate",
            });
        }
        Claim::Claimed => {}
    }

    let reply = match account.passive.decide(msg) {
        Decision::Reply(reply) => Some(reply),
        Decision::Nothing => None,
    };
    // The answer is computed before the event takes the message apart; it is only sent
    // after the confirm.
    let body = match &reply {
        None => Bytes::from_static(b"success"),
        Some(reply) => {
            let xml = wechat::render(reply, &msg.from_user_name, &msg.to_user_name, now_s);
            Bytes::from(match &opened.seal {
                None => xml,
                Some((key, token)) => wechat::seal_reply(
                    key,
                    &account.appid,
                    token,
                    rand::random::<[u8; 16]>(),
                    query.timestamp.as_deref().unwrap_or(""),
                    query.nonce.as_deref().unwrap_or(""),
                    &xml,
                ),
            })
        }
    };
    let routing_key = wxgate_core::topology::routing_key(
        account.id.as_str(),
        &msg.msg_type,
        msg.event.as_deref(),
    );
    let event = event::to_proto(
        opened.msg,
        event::Envelope {
            event_id: event_id.as_str(),
            account_id: account.id.as_str(),
            appid: &account.appid,
            raw_xml: opened.raw_xml,
            received_at_ms,
            passive_reply: reply.as_ref(),
            arrival: opened.arrival,
        },
    );
    let message = Message {
        body: Bytes::from(event.encode_to_vec()),
        properties: event::properties(event_id.as_str(), account.id.as_str(), now_s),
    };
    let published = tokio::time::timeout(
        gateway.config.gateway.publish_timeout,
        gateway
            .bus
            .publish(&gateway.exchange, &routing_key, &message),
    )
    .await;
    let publish_error = match published {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(CallbackError::Publish(e)),
        Err(_) => Some(CallbackError::PublishTimeout),
    };
    if let Some(error) = publish_error {
        gateway
            .metrics
            .publish
            .get_or_create(&wxgate_core::metrics::ResultLabel { result: "failed" })
            .inc();
        // WeChat's retry must start afresh, not find our claim.
        if let Err(e) = gateway.store.del(&dedup_key).await {
            tracing::warn!(error = %wxgate_core::ErrorChain(&e), "cannot release dedup claim; it expires on its own");
        }
        return Err(error);
    }
    gateway
        .metrics
        .publish
        .get_or_create(&wxgate_core::metrics::ResultLabel {
            result: "confirmed",
        })
        .inc();
    let outcome = if reply.is_some() {
        gateway
            .metrics
            .passive_replies
            .get_or_create(&wxgate_core::metrics::AccountLabel {
                account: gateway.metrics.account_label(account.id.as_str()),
            })
            .inc();
        "passive"
    } else {
        "ok"
    };
    // The event is confirmed: from here on a failure must not turn into a non-2xx answer,
    // or WeChat's retry would publish a duplicate for nothing. A lost answer record only
    // means a retry gets published again (at-least-once).
    gateway.answers.record(dedup_key, &body);
    Ok(Answer { body, outcome })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_parsed_and_decoded() {
        let q = CallbackQuery::parse(
            "signature=ab&timestamp=1&nonce=a%2Bb&encrypt_type=aes&msg_signature=cd&openid=x&echostr=e+f",
        )
        .unwrap();
        assert_eq!(q.signature.as_deref(), Some("ab"));
        assert_eq!(q.timestamp.as_deref(), Some("1"));
        assert_eq!(q.nonce.as_deref(), Some("a+b"));
        assert!(q.encrypted());
        assert_eq!(q.msg_signature.as_deref(), Some("cd"));
        assert_eq!(q.echostr.as_deref(), Some("e f"));
    }

    /// `echostr=raw` decodes to `decoded`, or is refused when `None`.
    fn check(raw: &str, decoded: Option<&str>) {
        let query = format!("echostr={raw}");
        let parsed = CallbackQuery::parse(&query);
        match (parsed, decoded) {
            (Ok(q), Some(want)) => assert_eq!(q.echostr.as_deref(), Some(want), "{raw}"),
            (Err(e), None) => assert!(
                matches!(e, CallbackError::QueryNotUtf8("echostr")),
                "{raw}: {e}"
            ),
            (parsed, want) => panic!("{raw}: got {parsed:?}, want {want:?}"),
        }
    }

    #[test]
    fn values_are_form_decoded_and_broken_escapes_kept() {
        check("", Some(""));
        // A plus is a space, an escaped one a plus; hex digits in either case.
        check("a+b", Some("a b"));
        check("a%2Bb", Some("a+b"));
        check("%E4%B8%96", Some("世"));
        check("%e4%b8%96", Some("世"));
        // Nothing after the `%`, one digit, or not hex digits: kept as written.
        check("a%", Some("a%"));
        check("%4", Some("%4"));
        check("%G1", Some("%G1"));
        check("%zz+", Some("%zz "));
    }

    #[test]
    fn values_that_are_not_utf8_are_refused() {
        check("%FF", None);
        check("a+%FF", None);
        check("%E4%B8", None);
        // Unknown parameters are not read, so they cannot be refused.
        assert!(CallbackQuery::parse("openid=%FF&nonce=1").is_ok());
        assert!(matches!(
            CallbackQuery::parse("nonce=1&signature=%C0%AF"),
            Err(CallbackError::QueryNotUtf8("signature"))
        ));
    }
}

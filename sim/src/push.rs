//! WeChat's pushing side: sign, encrypt and deliver a push to a gateway
//! with WeChat's timeout and retries, then judge the answer the way WeChat
//! would (docs/protocol.md §1, §2, §3.4, §4.4).

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, USER_AGENT};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use rand::distr::Alphanumeric;
use wechat::{AesKey, InboundMessage, Limits, MessageKind, Reply};

use crate::config::Interaction;
use crate::query;
use crate::server::Sim;

/// Largest answer body read from a gateway.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// How an account's pushes are encrypted (the console's 消息加解密方式).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushMode {
    /// 明文: plain XML, `signature` only.
    Plain,
    /// 兼容: the plain fields plus `<Encrypt>`, `encrypt_type=aes`, `msg_signature`.
    Compat,
    /// 安全: only `ToUserName` and `Encrypt`; replies must be encrypted.
    Safe,
}

impl FromStr for PushMode {
    type Err = String;

    /// `plain`, `compat` or `safe`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "plain" => Ok(PushMode::Plain),
            "compat" => Ok(PushMode::Compat),
            "safe" => Ok(PushMode::Safe),
            other => Err(format!("unknown mode {other:?}: use plain, compat or safe")),
        }
    }
}

/// An account as WeChat's pushing side knows it.
#[derive(Clone)]
pub struct PushAccount {
    /// The gateway's account id: pushes go to `{gateway_base}/{id}`.
    pub id: String,
    /// The AppID (sealed into encrypted pushes).
    pub appid: String,
    /// The callback Token (signatures).
    pub token: String,
    /// The 43-character EncodingAESKey; required for compat and safe mode.
    pub encoding_aes_key: Option<String>,
    /// The encryption mode.
    pub mode: PushMode,
    /// The account's original id (`gh_…`), used as `ToUserName`.
    pub original_id: String,
}

impl std::fmt::Debug for PushAccount {
    // The token and key are secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushAccount")
            .field("id", &self.id)
            .field("appid", &self.appid)
            .field("token", &"[redacted]")
            .field("encoding_aes_key", &"[redacted]")
            .field("mode", &self.mode)
            .field("original_id", &self.original_id)
            .finish()
    }
}

/// Why a push could not be attempted at all. Delivery failures (timeouts,
/// refused connections, HTTP errors) are not errors: they end in
/// [`Answer::ServiceUnavailable`].
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Compat and safe mode need `encoding_aes_key`.
    #[error("compat and safe mode need an encoding_aes_key")]
    MissingAesKey,
    /// The EncodingAESKey is not 43 characters of `[A-Za-z0-9]`.
    #[error("invalid encoding_aes_key")]
    BadAesKey(#[source] wechat::KeyError),
    /// The gateway URL does not make a valid `http://` URI.
    #[error("invalid gateway url: {0}")]
    BadUrl(String),
    /// The gateway could not be reached (URL verification only).
    #[error("gateway unreachable: {0}")]
    Unreachable(String),
}

/// How WeChat judged the gateway's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `success` or an empty body: nothing shown to the user.
    Acknowledged,
    /// A valid passive reply, decrypted if it was encrypted.
    Reply(Reply),
    /// What the user would see as "该公众号暂时无法提供服务，请稍后再试",
    /// with the reason: no valid answer in time after every attempt, or an
    /// invalid answer.
    ServiceUnavailable(String),
}

impl Answer {
    /// The reply, when the answer was one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Answer::Reply(reply) => Some(reply),
            _ => None,
        }
    }
}

/// The result of one push with its retries.
#[derive(Debug, Clone)]
pub struct PushOutcome {
    /// Deliveries made (1 when the first got an HTTP 200).
    pub attempts: u32,
    /// HTTP status of each delivery in order; 0 for a timeout or a
    /// connection failure.
    pub statuses: Vec<u16>,
    /// The verdict on the last answer.
    pub answer: Answer,
    /// From the first delivery to the verdict.
    pub latency: Duration,
    /// The last answer's body as received (empty when there was none).
    pub body: Bytes,
    /// Whether the reply came in the encrypted envelope.
    pub reply_encrypted: bool,
}

/// The gateway's answer to a GET URL verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOutcome {
    /// HTTP status.
    pub status: u16,
    /// The body (should be the `echostr` exactly).
    pub body: String,
}

/// Delivers pushes like WeChat: one HTTP client with connection reuse,
/// a per-delivery timeout (5 s), up to 3 deliveries 5 s apart with the
/// same query and body.
///
/// Cheap to clone; clones share connections.
#[derive(Debug, Clone)]
pub struct PushClient {
    client: Client<HttpConnector, Full<Bytes>>,
    attempts: u32,
    timeout: Duration,
    retry_interval: Duration,
    sim: Option<Sim>,
}

impl Default for PushClient {
    fn default() -> Self {
        PushClient::new()
    }
}

impl PushClient {
    /// WeChat's defaults: 3 deliveries, 5 s timeout, 5 s between starts.
    pub fn new() -> PushClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        PushClient {
            client,
            attempts: 3,
            timeout: Duration::from_secs(5),
            retry_interval: Duration::from_secs(5),
            sim: None,
        }
    }

    /// Deliveries in total, at least 1.
    pub fn attempts(mut self, attempts: u32) -> PushClient {
        self.attempts = attempts.max(1);
        self
    }

    /// Time allowed for each delivery (connect, request, whole answer).
    pub fn timeout(mut self, timeout: Duration) -> PushClient {
        self.timeout = timeout;
        self
    }

    /// Least time between the starts of two deliveries of one push.
    pub fn retry_interval(mut self, interval: Duration) -> PushClient {
        self.retry_interval = interval;
        self
    }

    /// Tells `sim` about each pushed user action (message, follow, QR scan,
    /// menu click, unfollow) before delivering it, so the strict OpenID
    /// policy opens windows the way a real user would.
    pub fn with_sim(mut self, sim: Sim) -> PushClient {
        self.sim = Some(sim);
        self
    }

    /// Pushes `xml` (a plain push, e.g. from [`crate::Inbound`]) to
    /// `{gateway_base}/{account.id}` (e.g. `http://127.0.0.1:8080/wx`) in
    /// the account's mode, and judges the answer.
    ///
    /// The push is signed with the current system time and a random nonce.
    /// `xml` that does not parse is still delivered (for negative tests),
    /// without the `openid` parameter or the reply addressing check.
    pub async fn push(
        &self,
        gateway_base: &str,
        account: &PushAccount,
        xml: &str,
    ) -> Result<PushOutcome, PushError> {
        let key = match account.mode {
            PushMode::Plain => None,
            PushMode::Compat | PushMode::Safe => {
                let text = account
                    .encoding_aes_key
                    .as_deref()
                    .ok_or(PushError::MissingAesKey)?;
                Some(AesKey::from_encoding_aes_key(text).map_err(PushError::BadAesKey)?)
            }
        };
        let message = wechat::parse(xml.as_bytes(), &Limits::default()).ok();
        let timestamp = unix_seconds().to_string();
        let nonce = rand::rng()
            .random_range(100_000_000_u64..10_000_000_000)
            .to_string();
        let signature = wechat::url_signature(&account.token, &timestamp, &nonce);

        let mut pairs = vec![
            ("signature", signature.as_str()),
            ("timestamp", timestamp.as_str()),
            ("nonce", nonce.as_str()),
        ];
        if let Some(message) = &message {
            pairs.push(("openid", message.from_user_name.as_str()));
        }
        let body;
        let msg_signature;
        match &key {
            None => body = Bytes::from(xml.to_owned()),
            Some(key) => {
                let encrypt = wechat::encrypt(key, &account.appid, random16(), xml.as_bytes());
                msg_signature = wechat::msg_signature(&account.token, &timestamp, &nonce, &encrypt);
                body = Bytes::from(encrypted_body(account, message.as_ref(), xml, &encrypt));
                pairs.push(("encrypt_type", "aes"));
                pairs.push(("msg_signature", msg_signature.as_str()));
            }
        }
        let uri = push_uri(gateway_base, &account.id, &query::build(&pairs))?;

        if let (Some(sim), Some(message)) = (&self.sim, &message)
            && let Some(interaction) = interaction_of(message)
            && let Err(error) =
                sim.record_interaction(&account.appid, &message.from_user_name, interaction)
        {
            tracing::warn!(%error, "push interaction not recorded in the simulator");
        }

        let started = tokio::time::Instant::now();
        let mut statuses = Vec::with_capacity(self.attempts as usize);
        let mut last_failure = String::new();
        let mut last_body = Bytes::new();
        for attempt in 1..=self.attempts {
            let attempt_started = tokio::time::Instant::now();
            match self.deliver(Method::POST, &uri, body.clone()).await {
                Ok((200, answer)) => {
                    statuses.push(200);
                    let (verdict, reply_encrypted) =
                        judge(&answer, account, key.as_ref(), message.as_ref());
                    return Ok(PushOutcome {
                        attempts: attempt,
                        statuses,
                        answer: verdict,
                        latency: started.elapsed(),
                        body: answer,
                        reply_encrypted,
                    });
                }
                Ok((status, answer)) => {
                    statuses.push(status);
                    last_failure = format!("http status {status}");
                    last_body = answer;
                }
                Err(failure) => {
                    statuses.push(0);
                    last_failure = failure;
                    last_body = Bytes::new();
                }
            }
            tracing::debug!(attempt, failure = %last_failure, "push delivery failed");
            if attempt < self.attempts {
                tokio::time::sleep_until(attempt_started + self.retry_interval).await;
            }
        }
        Ok(PushOutcome {
            attempts: self.attempts,
            statuses,
            answer: Answer::ServiceUnavailable(format!(
                "no answer after {} deliveries: {last_failure}",
                self.attempts
            )),
            latency: started.elapsed(),
            body: last_body,
            reply_encrypted: false,
        })
    }

    /// Performs the GET URL verification (docs/protocol.md §1.2) against
    /// `{gateway_base}/{account.id}` with `echostr`, once, and returns the
    /// answer. A correct gateway answers 200 with the body `echostr`.
    pub async fn verify_get(
        &self,
        gateway_base: &str,
        account: &PushAccount,
        echostr: &str,
    ) -> Result<VerifyOutcome, PushError> {
        let timestamp = unix_seconds().to_string();
        let nonce = rand::rng()
            .random_range(100_000_000_u64..10_000_000_000)
            .to_string();
        let signature = wechat::url_signature(&account.token, &timestamp, &nonce);
        let query = query::build(&[
            ("signature", &signature),
            ("timestamp", &timestamp),
            ("nonce", &nonce),
            ("echostr", echostr),
        ]);
        let uri = push_uri(gateway_base, &account.id, &query)?;
        let (status, body) = self
            .deliver(Method::GET, &uri, Bytes::new())
            .await
            .map_err(PushError::Unreachable)?;
        Ok(VerifyOutcome {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// One delivery within the timeout: the status and the whole body, or
    /// why there was none. On timeout the connection is dropped, as WeChat does.
    async fn deliver(
        &self,
        method: Method,
        uri: &Uri,
        body: Bytes,
    ) -> Result<(u16, Bytes), String> {
        let request = Request::builder()
            .method(method)
            .uri(uri.clone())
            .header(CONTENT_TYPE, "text/xml")
            .header(USER_AGENT, "Mozilla/4.0")
            .body(Full::new(body))
            .map_err(|error| format!("cannot build request: {error}"))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|error| format!("connection failed: {error}"))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|error| format!("reading the answer failed: {error}"))?
                .to_bytes();
            Ok((status, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!("timeout after {} ms", self.timeout.as_millis())),
        }
    }
}

/// Judges a 200 answer per docs/protocol.md §4.4; returns the verdict and whether
/// the reply was encrypted.
fn judge(
    answer: &[u8],
    account: &PushAccount,
    key: Option<&AesKey>,
    message: Option<&InboundMessage>,
) -> (Answer, bool) {
    if answer.is_empty() || answer == b"success" {
        return (Answer::Acknowledged, false);
    }
    let unavailable = |why: String| (Answer::ServiceUnavailable(why), false);
    let (plain, encrypted) = match wechat::parse_sealed_reply(answer) {
        Ok(sealed) => {
            let Some(key) = key else {
                return unavailable("encrypted reply to a plain push".to_owned());
            };
            if wechat::verify_msg_signature(
                &account.token,
                &sealed.timestamp,
                &sealed.nonce,
                &sealed.encrypt,
                &sealed.msg_signature,
            )
            .is_err()
            {
                return unavailable("reply MsgSignature does not match".to_owned());
            }
            match wechat::decrypt_utf8(key, &account.appid, &sealed.encrypt) {
                Ok(plain) => (plain.into_bytes(), true),
                Err(error) => return unavailable(format!("reply cannot be decrypted: {error}")),
            }
        }
        Err(_) => {
            if account.mode == PushMode::Safe && wechat::parse_reply(answer).is_ok() {
                return unavailable("plain reply to a safe-mode push".to_owned());
            }
            (answer.to_vec(), false)
        }
    };
    let rendered = match wechat::parse_reply(&plain) {
        Ok(rendered) => rendered,
        Err(error) => return unavailable(format!("answer is not a valid reply: {error}")),
    };
    if let Some(message) = message
        && (rendered.to_user != message.from_user_name
            || rendered.from_user != message.to_user_name)
    {
        return unavailable("reply ToUserName/FromUserName do not answer the push".to_owned());
    }
    (Answer::Reply(rendered.reply), encrypted)
}

/// The interaction a push stands for (docs/protocol.md §6.4), if any.
fn interaction_of(message: &InboundMessage) -> Option<Interaction> {
    if message.msg_type != "event" {
        return Some(Interaction::Message);
    }
    match &message.kind {
        MessageKind::Subscribe { event_key, .. } => Some(
            if event_key
                .as_deref()
                .is_some_and(|key| key.starts_with("qrscene_"))
            {
                Interaction::QrScan
            } else {
                Interaction::Follow
            },
        ),
        MessageKind::Scan { .. } => Some(Interaction::QrScan),
        MessageKind::Click { .. } | MessageKind::ScanCode { .. } => Some(Interaction::MenuClick),
        MessageKind::Unsubscribe => Some(Interaction::Unfollow),
        _ => None,
    }
}

/// The body of an encrypted push: safe mode `ToUserName` + `Encrypt`;
/// compat mode the plain document with `Encrypt` added at the end.
fn encrypted_body(
    account: &PushAccount,
    message: Option<&InboundMessage>,
    xml: &str,
    encrypt: &str,
) -> String {
    let element = format!("<Encrypt><![CDATA[{encrypt}]]></Encrypt>\n");
    match account.mode {
        PushMode::Compat => match xml.rfind("</xml>") {
            Some(end) => {
                let (head, tail) = xml.split_at(end);
                format!("{head}{element}{tail}")
            }
            None => format!("{xml}{element}"),
        },
        PushMode::Safe | PushMode::Plain => {
            let to_user = message.map_or(account.original_id.as_str(), |m| m.to_user_name.as_str());
            format!("<xml><ToUserName><![CDATA[{to_user}]]></ToUserName>\n{element}</xml>")
        }
    }
}

fn push_uri(gateway_base: &str, account_id: &str, query: &str) -> Result<Uri, PushError> {
    let url = format!(
        "{}/{}?{query}",
        gateway_base.trim_end_matches('/'),
        query::path_segment(account_id)
    );
    let uri: Uri = url
        .parse()
        .map_err(|_| PushError::BadUrl(gateway_base.to_owned()))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(PushError::BadUrl(gateway_base.to_owned()));
    }
    Ok(uri)
}

/// 16 random ASCII letters and digits, as the official samples use.
fn random16() -> [u8; 16] {
    let mut random = [0u8; 16];
    for (slot, byte) in random.iter_mut().zip(rand::rng().sample_iter(Alphanumeric)) {
        *slot = byte;
    }
    random
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

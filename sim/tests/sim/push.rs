//! The push client against a tiny in-test gateway that answers `success`,
//! passive replies, encrypted replies, garbage, errors, or nothing.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use wechat::{AesKey, InboundMessage, Limits, Reply};
use wxgate_sim::{Answer, Inbound, PushAccount, PushClient, PushError, PushMode};

use crate::support::*;

const TOKEN: &str = "spamtest";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const ORIGINAL_ID: &str = "gh_10f6c3c3ac5a";

fn account(mode: PushMode) -> PushAccount {
    PushAccount {
        id: "demo".to_owned(),
        appid: APP.to_owned(),
        token: TOKEN.to_owned(),
        encoding_aes_key: Some(AES_KEY.to_owned()),
        mode,
        original_id: ORIGINAL_ID.to_owned(),
    }
}

fn key() -> AesKey {
    AesKey::from_encoding_aes_key(AES_KEY).unwrap()
}

fn hello(user: &str) -> String {
    Inbound::new(ORIGINAL_ID, user, 1_700_000_000).text(24_000_000_000_000_001, "hello")
}

/// A request the test gateway received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    query: HashMap<String, String>,
    raw_query: String,
    body: String,
}

impl Seen {
    fn q(&self, name: &str) -> &str {
        self.query.get(name).map(String::as_str).unwrap_or_default()
    }

    /// Verifies the signatures like a gateway and returns the plain push.
    fn open(&self) -> InboundMessage {
        assert_eq!(
            wechat::verify_url_signature(
                TOKEN,
                self.q("timestamp"),
                self.q("nonce"),
                self.q("signature")
            ),
            Ok(())
        );
        let xml = if self.q("encrypt_type") == "aes" {
            let envelope =
                wechat::parse_envelope(self.body.as_bytes(), &Limits::default()).unwrap();
            let encrypt = envelope.encrypt.unwrap();
            assert_eq!(
                wechat::verify_msg_signature(
                    TOKEN,
                    self.q("timestamp"),
                    self.q("nonce"),
                    &encrypt,
                    self.q("msg_signature")
                ),
                Ok(())
            );
            wechat::decrypt_utf8(&key(), APP, &encrypt).unwrap()
        } else {
            self.body.clone()
        };
        wechat::parse(xml.as_bytes(), &Limits::default()).unwrap()
    }

    /// A text reply addressed back to the sender.
    fn text_reply(&self, content: &str) -> String {
        let message = self.open();
        wechat::render(
            &Reply::Text {
                content: content.to_owned(),
            },
            &message.from_user_name,
            &message.to_user_name,
            message.create_time + 1,
        )
    }

    /// The same reply sealed in the encrypted envelope.
    fn sealed_reply(&self, content: &str) -> String {
        wechat::seal_reply(
            &key(),
            APP,
            TOKEN,
            *b"1234567890123456",
            self.q("timestamp"),
            self.q("nonce"),
            &self.text_reply(content),
        )
    }
}

enum Behaviour {
    Answer(u16, String),
    Hang,
}

type Handler = dyn Fn(&Seen, usize) -> Behaviour + Send + Sync;
type AnswerFn = dyn Fn(&Seen) -> String + Send + Sync;

struct Gateway {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Gateway {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Serves `handler` on a fresh port; `handler` gets each request and its
/// index (0 for the first).
async fn gateway(handler: impl Fn(&Seen, usize) -> Behaviour + Send + Sync + 'static) -> Gateway {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let handler: Arc<Handler> = Arc::new(handler);
    let recorded = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let handler = Arc::clone(&handler);
            let recorded = Arc::clone(&recorded);
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let handler = Arc::clone(&handler);
                    let recorded = Arc::clone(&recorded);
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let raw_query = parts.uri.query().unwrap_or_default().to_owned();
                        let seen = Seen {
                            path: parts.uri.path().to_owned(),
                            query: form_urlencoded::parse(raw_query.as_bytes())
                                .into_owned()
                                .collect(),
                            raw_query,
                            body: String::from_utf8(body.to_vec()).unwrap(),
                        };
                        let index = {
                            let mut recorded = recorded.lock().unwrap();
                            recorded.push(seen.clone());
                            recorded.len() - 1
                        };
                        match handler(&seen, index) {
                            Behaviour::Answer(status, body) => {
                                let mut response = Response::new(Full::new(Bytes::from(body)));
                                *response.status_mut() =
                                    http::StatusCode::from_u16(status).unwrap();
                                Ok::<_, Infallible>(response)
                            }
                            Behaviour::Hang => std::future::pending().await,
                        }
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Gateway {
        base: format!("http://{addr}/wx"),
        seen,
    }
}

fn client() -> PushClient {
    PushClient::new()
        .timeout(Duration::from_millis(300))
        .retry_interval(Duration::ZERO)
}

#[tokio::test]
async fn plain_push_acknowledged_with_success() {
    let gw = gateway(|seen, _| {
        seen.open();
        Behaviour::Answer(200, "success".to_owned())
    })
    .await;
    let user = openid(1);
    let outcome = client()
        .push(&gw.base, &account(PushMode::Plain), &hello(&user))
        .await
        .unwrap();
    assert_eq!(outcome.answer, Answer::Acknowledged);
    assert_eq!((outcome.attempts, outcome.statuses.clone()), (1, vec![200]));
    let seen = gw.seen();
    assert_eq!(seen[0].path, "/wx/demo");
    assert_eq!(seen[0].q("openid"), user);
    assert!(!seen[0].query.contains_key("encrypt_type"));
    assert!(!seen[0].query.contains_key("msg_signature"));
    let order: Vec<String> = form_urlencoded::parse(seen[0].raw_query.as_bytes())
        .map(|(name, _)| name.into_owned())
        .collect();
    assert_eq!(order, ["signature", "timestamp", "nonce", "openid"]);
    assert_eq!(seen[0].body, hello(&user));
}

#[tokio::test]
async fn empty_body_is_acknowledged() {
    let gw = gateway(|_, _| Behaviour::Answer(200, String::new())).await;
    let outcome = client()
        .push(&gw.base, &account(PushMode::Safe), &hello(&openid(1)))
        .await
        .unwrap();
    assert_eq!(outcome.answer, Answer::Acknowledged);
}

#[tokio::test]
async fn plain_passive_reply_is_parsed() {
    let gw = gateway(|seen, _| Behaviour::Answer(200, seen.text_reply("echo: hello"))).await;
    let outcome = client()
        .push(&gw.base, &account(PushMode::Plain), &hello(&openid(1)))
        .await
        .unwrap();
    assert_eq!(
        outcome.answer,
        Answer::Reply(Reply::Text {
            content: "echo: hello".to_owned()
        })
    );
    assert!(!outcome.reply_encrypted);
}

#[tokio::test]
async fn safe_push_carries_only_the_envelope_and_gets_an_encrypted_reply() {
    let gw = gateway(|seen, _| {
        assert!(seen.body.contains("<Encrypt>"));
        assert!(
            !seen.body.contains("<Content>"),
            "safe mode hides the fields"
        );
        assert!(seen.body.contains(ORIGINAL_ID));
        assert_eq!(seen.q("encrypt_type"), "aes");
        let message = seen.open();
        assert_eq!(message.field("Content"), Some("hello"));
        Behaviour::Answer(200, seen.sealed_reply("你好"))
    })
    .await;
    let outcome = client()
        .push(&gw.base, &account(PushMode::Safe), &hello(&openid(1)))
        .await
        .unwrap();
    assert_eq!(
        outcome.answer,
        Answer::Reply(Reply::Text {
            content: "你好".to_owned()
        })
    );
    assert!(outcome.reply_encrypted);
    let order: Vec<String> = form_urlencoded::parse(gw.seen()[0].raw_query.as_bytes())
        .map(|(name, _)| name.into_owned())
        .collect();
    assert_eq!(
        order,
        [
            "signature",
            "timestamp",
            "nonce",
            "openid",
            "encrypt_type",
            "msg_signature"
        ]
    );
}

#[tokio::test]
async fn compat_push_has_plain_fields_and_accepts_plain_or_encrypted_replies() {
    let gw = gateway(|seen, index| {
        assert!(seen.body.contains("<Content><![CDATA[hello]]></Content>"));
        assert!(seen.body.contains("<Encrypt>"));
        seen.open();
        if index == 0 {
            Behaviour::Answer(200, seen.text_reply("plain"))
        } else {
            Behaviour::Answer(200, seen.sealed_reply("sealed"))
        }
    })
    .await;
    let client = client();
    let first = client
        .push(&gw.base, &account(PushMode::Compat), &hello(&openid(1)))
        .await
        .unwrap();
    assert_eq!(
        first.answer.reply(),
        Some(&Reply::Text {
            content: "plain".to_owned()
        })
    );
    let second = client
        .push(&gw.base, &account(PushMode::Compat), &hello(&openid(1)))
        .await
        .unwrap();
    assert_eq!(
        second.answer.reply(),
        Some(&Reply::Text {
            content: "sealed".to_owned()
        })
    );
    assert!(second.reply_encrypted);
}

#[tokio::test]
async fn invalid_answers_are_service_unavailable() {
    let cases: Vec<(PushMode, Box<AnswerFn>, &str)> = vec![
        (
            PushMode::Plain,
            Box::new(|_| "<html>oops</html>".to_owned()),
            "not a valid reply",
        ),
        (
            PushMode::Plain,
            Box::new(|_| r#"{"ok":true}"#.to_owned()),
            "not a valid reply",
        ),
        (
            PushMode::Plain,
            Box::new(|_| "success\n".to_owned()),
            "not a valid reply",
        ),
        (
            PushMode::Safe,
            Box::new(|seen| seen.text_reply("x")),
            "plain reply",
        ),
        (
            PushMode::Plain,
            Box::new(|seen| seen.sealed_reply("x")),
            "encrypted reply",
        ),
        (
            PushMode::Safe,
            Box::new(|seen| {
                seen.sealed_reply("x")
                    .replace("<MsgSignature><![CDATA[", "<MsgSignature><![CDATA[0")
            }),
            "MsgSignature",
        ),
        (
            PushMode::Plain,
            Box::new(|_| {
                wechat::render(
                    &Reply::Text {
                        content: "x".to_owned(),
                    },
                    "someone-else",
                    ORIGINAL_ID,
                    1,
                )
            }),
            "ToUserName",
        ),
    ];
    for (mode, answer, why) in cases {
        let answer: Arc<AnswerFn> = Arc::from(answer);
        let gw = gateway(move |seen, _| Behaviour::Answer(200, answer(seen))).await;
        let outcome = client()
            .push(&gw.base, &account(mode), &hello(&openid(1)))
            .await
            .unwrap();
        match &outcome.answer {
            Answer::ServiceUnavailable(reason) => assert!(reason.contains(why), "{reason} / {why}"),
            other => panic!("{why}: {other:?}"),
        }
        assert_eq!(outcome.attempts, 1, "invalid answers are not retried");
    }
}

#[tokio::test]
async fn slow_gateway_gets_three_identical_deliveries() {
    let gw = gateway(|_, _| Behaviour::Hang).await;
    let outcome = client()
        .push(&gw.base, &account(PushMode::Safe), &hello(&openid(1)))
        .await
        .unwrap();
    assert_eq!(outcome.attempts, 3);
    assert_eq!(outcome.statuses, vec![0, 0, 0]);
    assert!(matches!(&outcome.answer, Answer::ServiceUnavailable(why) if why.contains("timeout")));
    let seen = gw.seen();
    assert_eq!(seen.len(), 3);
    for retry in &seen[1..] {
        assert_eq!(retry.raw_query, seen[0].raw_query);
        assert_eq!(retry.body, seen[0].body);
    }
}

#[tokio::test]
async fn error_status_is_retried_until_success() {
    let gw = gateway(|_, index| {
        if index == 0 {
            Behaviour::Answer(503, "busy".to_owned())
        } else {
            Behaviour::Answer(200, "success".to_owned())
        }
    })
    .await;
    let outcome = client()
        .push(&gw.base, &account(PushMode::Plain), &hello(&openid(1)))
        .await
        .unwrap();
    assert_eq!(outcome.answer, Answer::Acknowledged);
    assert_eq!((outcome.attempts, outcome.statuses), (2, vec![503, 200]));
}

#[tokio::test]
async fn unreachable_gateway_is_service_unavailable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    drop(listener);
    let outcome = client()
        .attempts(2)
        .push(
            &format!("http://{addr}/wx"),
            &account(PushMode::Plain),
            &hello(&openid(1)),
        )
        .await
        .unwrap();
    assert_eq!(outcome.statuses, vec![0, 0]);
    assert!(matches!(outcome.answer, Answer::ServiceUnavailable(_)));
}

#[tokio::test]
async fn url_verification_echoes() {
    let gw = gateway(|seen, _| {
        let valid = wechat::verify_url_signature(
            TOKEN,
            seen.q("timestamp"),
            seen.q("nonce"),
            seen.q("signature"),
        )
        .is_ok();
        if valid {
            Behaviour::Answer(200, seen.q("echostr").to_owned())
        } else {
            Behaviour::Answer(403, String::new())
        }
    })
    .await;
    let outcome = client()
        .verify_get(&gw.base, &account(PushMode::Safe), "4375120948345356249")
        .await
        .unwrap();
    assert_eq!(outcome.status, 200);
    assert_eq!(outcome.body, "4375120948345356249");
}

#[tokio::test]
async fn local_errors() {
    let mut no_key = account(PushMode::Safe);
    no_key.encoding_aes_key = None;
    let error = client()
        .push("http://127.0.0.1:1/wx", &no_key, "<xml/>")
        .await
        .unwrap_err();
    assert!(matches!(error, PushError::MissingAesKey));
    let mut bad_key = account(PushMode::Compat);
    bad_key.encoding_aes_key = Some("short".to_owned());
    let error = client()
        .push("http://127.0.0.1:1/wx", &bad_key, "<xml/>")
        .await
        .unwrap_err();
    assert!(matches!(error, PushError::BadAesKey(_)));
    let error = client()
        .push(
            "https://example.com/wx",
            &account(PushMode::Plain),
            "<xml/>",
        )
        .await
        .unwrap_err();
    assert!(matches!(error, PushError::BadUrl(_)));
}

#[tokio::test]
async fn pushes_open_windows_in_a_strict_simulator() {
    let sim = start(strict_config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    let gw = gateway(|_, _| Behaviour::Answer(200, "success".to_owned())).await;
    let client = client().with_sim(sim.clone());
    let user = openid(1);
    assert_eq!(send_text(&sim, &token, &user).await, 40003);

    client
        .push(&gw.base, &account(PushMode::Safe), &hello(&user))
        .await
        .unwrap();
    for _ in 0..5 {
        assert_eq!(send_text(&sim, &token, &user).await, 0);
    }
    assert_eq!(send_text(&sim, &token, &user).await, 45047);

    let inbound = Inbound::new(ORIGINAL_ID, user.as_str(), 1_700_000_000);
    client
        .push(&gw.base, &account(PushMode::Plain), &inbound.click("V1001"))
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(send_text(&sim, &token, &user).await, 0);
    }
    assert_eq!(send_text(&sim, &token, &user).await, 45047);

    client
        .push(&gw.base, &account(PushMode::Plain), &inbound.unsubscribe())
        .await
        .unwrap();
    assert_eq!(send_text(&sim, &token, &user).await, 45015);
}

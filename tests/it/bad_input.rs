//! Callbacks that fail a step of the pipeline (docs/contract.md §1.1 steps 1–5) are answered at
//! once with that step's status and publish nothing. Each one is a valid callback with one
//! thing broken, so a missing check would show up as a 200 and an event.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use wechat::AesKey;
use wxgate_tests::{Options, TestEnv, nonce, now_s, query, raw_exchange};

const WAIT: Duration = Duration::from_secs(10);
/// `gateway.max_body_bytes` in this test.
const MAX_BODY: usize = 1024;
/// The protocol's crypto vectors; its `decrypt_error` group supplies bodies that no
/// encrypting client would produce (bad padding, length overflow, …).
const VECTORS: &str = include_str!("../../wechat/testdata/wechat-crypto.json");
/// The account in this test that holds the vectors' AppID, Token and EncodingAESKey.
const VECTOR_ACCOUNT: &str = "vectors";

/// One request and the status it must get.
struct Case {
    name: String,
    path: String,
    body: Vec<u8>,
    want: u16,
}

fn case(name: &str, path: String, body: impl Into<Vec<u8>>, want: u16) -> Case {
    Case {
        name: name.to_owned(),
        path,
        body: body.into(),
        want,
    }
}

/// `/wx/{account}?signature&timestamp&nonce`, signed with `token`.
fn plain_path(account: &str, token: &str, timestamp: &str) -> String {
    let nonce = nonce();
    let signature = wechat::url_signature(token, timestamp, &nonce);
    format!(
        "/wx/{account}?{}",
        query(&[
            ("signature", &signature),
            ("timestamp", timestamp),
            ("nonce", &nonce),
        ])
    )
}

/// The query of an encrypted push of `encrypt`, with `msg_signature` signed by `token`.
fn encrypted_path(account: &str, token: &str, timestamp: &str, encrypt: &str) -> String {
    let nonce = nonce();
    let signature = wechat::url_signature(token, timestamp, &nonce);
    let msg_signature = wechat::msg_signature(token, timestamp, &nonce, encrypt);
    format!(
        "/wx/{account}?{}",
        query(&[
            ("signature", &signature),
            ("timestamp", timestamp),
            ("nonce", &nonce),
            ("encrypt_type", "aes"),
            ("msg_signature", &msg_signature),
        ])
    )
}

/// A safe-mode body: `ToUserName` and `Encrypt` only.
fn envelope(to_user: &str, encrypt: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{to_user}]]></ToUserName>\n<Encrypt><![CDATA[{encrypt}]]></Encrypt>\n</xml>"
    )
}

fn key(account: &wxgate_sim::PushAccount) -> AesKey {
    AesKey::from_encoding_aes_key(account.encoding_aes_key.as_deref().unwrap()).unwrap()
}

/// A text message with the header elements except `skip`, and an optional prologue.
fn text_xml(prologue: &str, skip: &str, content: &str) -> String {
    let elements = [
        ("ToUserName", "<![CDATA[gh_plain0000000]]>".to_owned()),
        (
            "FromUserName",
            "<![CDATA[oBadInput0000000000000000000]]>".to_owned(),
        ),
        ("CreateTime", now_s().to_string()),
        ("MsgType", "<![CDATA[text]]>".to_owned()),
        ("Content", content.to_owned()),
        ("MsgId", "1234567890123456".to_owned()),
    ];
    let body: String = elements
        .iter()
        .filter(|(name, _)| *name != skip)
        .map(|(name, value)| format!("<{name}>{value}</{name}>\n"))
        .collect();
    format!("{prologue}<xml>{body}</xml>")
}

/// A text message whose `Content` holds a byte that is not UTF-8.
fn not_utf8() -> Vec<u8> {
    let mut bytes = text_xml("", "", "AB").into_bytes();
    let at = bytes
        .windows(2)
        .position(|w| w == b"AB")
        .expect("the content is in the XML");
    bytes[at] = 0xff;
    bytes
}

fn vectors_account_toml(vector: &Value) -> String {
    format!(
        r#"
[[accounts]]
id = "{VECTOR_ACCOUNT}"
appid = "{}"
token = "{}"
encoding_aes_key = "{}"
mode = "safe"
"#,
        vector["appid"].as_str().unwrap(),
        vector["token"].as_str().unwrap(),
        vector["encoding_aes_key"].as_str().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_callbacks_are_refused_and_publish_nothing() {
    let vectors: Value = serde_json::from_str(VECTORS).unwrap();
    let decrypt_errors = vectors["decrypt_error"].as_array().unwrap();
    let padding = decrypt_errors
        .iter()
        .find(|v| v["error"] == "bad_padding")
        .expect("a bad_padding vector");
    let env = TestEnv::with(
        Options::new()
            .gateway(&format!("max_body_bytes = {MAX_BODY}"))
            .accounts(&vectors_account_toml(padding)),
    )
    .await;
    let mut events = env.consumer().await;
    // The vectors' account works: what it refuses below is refused for the one defect.
    let vectors_account = wxgate_sim::PushAccount {
        id: VECTOR_ACCOUNT.to_owned(),
        appid: padding["appid"].as_str().unwrap().to_owned(),
        token: padding["token"].as_str().unwrap().to_owned(),
        encoding_aes_key: padding["encoding_aes_key"].as_str().map(str::to_owned),
        mode: wxgate_sim::PushMode::Safe,
        original_id: "gh_10f6c3c3ac5a".to_owned(),
    };
    let control = env.text(&vectors_account, "control");
    assert_eq!(env.push(&vectors_account, &control).await.statuses, [200]);
    assert!(
        env.marker(&mut events).await.len() == 1,
        "the control is published"
    );
    let now = now_s().to_string();
    let (plain, safe) = (&env.plain, &env.safe);
    let good_text = env.text(plain, "should not be published");
    let mut cases = Vec::new();

    // Step 1: the account.
    cases.push(case(
        "unknown account",
        plain_path("nobody", &plain.token, &now),
        good_text.clone(),
        404,
    ));

    // Step 3: the timestamp.
    let no_timestamp = {
        let nonce = nonce();
        let signature = wechat::url_signature(&plain.token, "", &nonce);
        format!(
            "/wx/plain?{}",
            query(&[("signature", &signature), ("nonce", &nonce)])
        )
    };
    cases.push(case(
        "timestamp missing",
        no_timestamp,
        good_text.clone(),
        400,
    ));
    cases.push(case(
        "timestamp missing and the signature wrong",
        format!("/wx/plain?{}", query(&[("signature", "0"), ("nonce", "1")])),
        good_text.clone(),
        400,
    ));
    for bad in ["", "12a", "1.5e9", "99999999999999999999999"] {
        cases.push(case(
            &format!("timestamp {bad:?}"),
            plain_path("plain", &plain.token, bad),
            good_text.clone(),
            400,
        ));
    }
    for (name, skew) in [
        ("timestamp too old", -400),
        ("timestamp in the future", 400),
    ] {
        cases.push(case(
            name,
            plain_path("plain", &plain.token, &(now_s() + skew).to_string()),
            good_text.clone(),
            403,
        ));
    }

    // Step 4: signatures and the account's mode.
    cases.push(case(
        "signature with another token",
        plain_path("plain", "not-the-token", &now),
        good_text.clone(),
        403,
    ));
    cases.push(case(
        "signature missing",
        format!(
            "/wx/plain?{}",
            query(&[("timestamp", &now), ("nonce", "12345")])
        ),
        good_text.clone(),
        403,
    ));
    let safe_text = env.text(safe, "should not be published");
    let safe_encrypt = wechat::encrypt(
        &key(safe),
        &safe.appid,
        *b"0123456789abcdef",
        safe_text.as_bytes(),
    );
    cases.push(case(
        "msg_signature with another token",
        encrypted_path("safe", "not-the-token", &now, &safe_encrypt),
        envelope(&safe.original_id, &safe_encrypt),
        403,
    ));
    cases.push(case(
        "msg_signature over another Encrypt",
        encrypted_path("safe", &safe.token, &now, "c29tZXRoaW5nIGVsc2U="),
        envelope(&safe.original_id, &safe_encrypt),
        403,
    ));
    cases.push(case(
        "msg_signature missing",
        format!("{}&encrypt_type=aes", plain_path("safe", &safe.token, &now)),
        envelope(&safe.original_id, &safe_encrypt),
        403,
    ));
    cases.push(case(
        "plain body to a safe account",
        plain_path("safe", &safe.token, &now),
        safe_text.clone(),
        400,
    ));
    let plain_encrypt = wechat::encrypt(
        &key(safe),
        &plain.appid,
        *b"0123456789abcdef",
        good_text.as_bytes(),
    );
    cases.push(case(
        "encrypted body to a plain account",
        encrypted_path("plain", &plain.token, &now, &plain_encrypt),
        envelope(&plain.original_id, &plain_encrypt),
        400,
    ));

    // Step 5: the envelope, decryption and the message XML.
    cases.push(case(
        "envelope without Encrypt",
        encrypted_path("safe", &safe.token, &now, ""),
        format!(
            "<xml><ToUserName><![CDATA[{}]]></ToUserName></xml>",
            safe.original_id
        ),
        400,
    ));
    let other_appid = wechat::encrypt(
        &key(safe),
        "wx9999999999999999",
        *b"0123456789abcdef",
        safe_text.as_bytes(),
    );
    cases.push(case(
        "encrypted for another appid",
        encrypted_path("safe", &safe.token, &now, &other_appid),
        envelope(&safe.original_id, &other_appid),
        400,
    ));
    let other_key = AesKey::from_bytes([7; 32]);
    let wrong_key = wechat::encrypt(
        &other_key,
        &safe.appid,
        *b"0123456789abcdef",
        safe_text.as_bytes(),
    );
    cases.push(case(
        "encrypted with another key",
        encrypted_path("safe", &safe.token, &now, &wrong_key),
        envelope(&safe.original_id, &wrong_key),
        400,
    ));
    for bad in ["not*base64!", "QUJD", "QUJDRA"] {
        cases.push(case(
            &format!("Encrypt {bad:?} is not usable base64"),
            encrypted_path("safe", &safe.token, &now, bad),
            envelope(&safe.original_id, bad),
            400,
        ));
    }
    let broken_inside = wechat::encrypt(
        &key(safe),
        &safe.appid,
        *b"0123456789abcdef",
        b"<xml><ToUserName>",
    );
    cases.push(case(
        "encrypted XML is malformed",
        encrypted_path("safe", &safe.token, &now, &broken_inside),
        envelope(&safe.original_id, &broken_inside),
        400,
    ));
    // The vectors carry old timestamps: each is signed again with the current time, so only
    // the Encrypt itself is wrong.
    for vector in decrypt_errors.iter().filter(|v| {
        matches!(
            v["error"].as_str(),
            Some(
                "bad_base64"
                    | "bad_ciphertext_length"
                    | "bad_padding"
                    | "length_overflow"
                    | "appid_mismatch"
                    | "empty"
                    | "bad_utf8"
            )
        ) && v["encoding_aes_key"] == padding["encoding_aes_key"]
            && v["appid"] == padding["appid"]
    }) {
        let encrypt = vector["encrypt"].as_str().unwrap();
        cases.push(case(
            &format!("vector {}", vector["name"].as_str().unwrap()),
            encrypted_path(
                VECTOR_ACCOUNT,
                vector["token"].as_str().unwrap(),
                &now,
                encrypt,
            ),
            vector["body_xml"].as_str().unwrap(),
            400,
        ));
    }
    cases.push(case(
        "malformed XML",
        plain_path("plain", &plain.token, &now),
        "<xml><ToUserName><![CDATA[gh_plain0000000]]></ToUserName><FromUserName>",
        400,
    ));
    cases.push(case(
        "not XML at all",
        plain_path("plain", &plain.token, &now),
        "hello",
        400,
    ));
    cases.push(case(
        "body not UTF-8",
        plain_path("plain", &plain.token, &now),
        not_utf8(),
        400,
    ));
    cases.push(case(
        "DOCTYPE with an entity",
        plain_path("plain", &plain.token, &now),
        text_xml(r#"<!DOCTYPE xml [<!ENTITY e "pong">]>"#, "", "&e;"),
        400,
    ));
    cases.push(case(
        "DOCTYPE with an external entity",
        plain_path("plain", &plain.token, &now),
        text_xml(
            r#"<!DOCTYPE xml [<!ENTITY e SYSTEM "file:///etc/passwd">]>"#,
            "",
            "&e;",
        ),
        400,
    ));
    for missing in ["MsgType", "FromUserName", "ToUserName", "CreateTime"] {
        cases.push(case(
            &format!("{missing} missing"),
            plain_path("plain", &plain.token, &now),
            text_xml("", missing, "hi"),
            400,
        ));
    }
    cases.push(case(
        "CreateTime not a number",
        plain_path("plain", &plain.token, &now),
        text_xml("", "", "hi").replacen(&format!("<CreateTime>{}", now_s()), "<CreateTime>soon", 1),
        400,
    ));

    let mut failures = Vec::new();
    for case in &cases {
        let (status, body) = env.post(&case.path, case.body.clone()).await;
        if status != case.want {
            failures.push(format!(
                "{}: got {status} ({:?}), want {}",
                case.name,
                String::from_utf8_lossy(&body),
                case.want
            ));
        }
    }

    // Step 2: the body size, declared and streamed. Raw requests, so the gateway may answer
    // before reading the body without the client calling it an error.
    let large = env.text(plain, &"x".repeat(MAX_BODY * 2));
    let path = plain_path("plain", &plain.token, &now);
    let declared = format!(
        "POST {path} HTTP/1.1\r\nHost: wxgate\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{large}",
        large.len()
    );
    let response = raw_exchange(env.addr, declared.as_bytes(), WAIT).await;
    if response.status != 413 {
        failures.push(format!(
            "body over max_body_bytes (Content-Length): got {}",
            response.status
        ));
    }
    // The steps go in order: the account before the size, the size before the timestamp.
    for (name, path, want) in [
        (
            "unknown account with a body over max_body_bytes",
            plain_path("nobody", &plain.token, &now),
            404,
        ),
        (
            "body over max_body_bytes without a timestamp",
            "/wx/plain?signature=0&nonce=1".to_owned(),
            413,
        ),
    ] {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: wxgate\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{large}",
            large.len()
        );
        let response = raw_exchange(env.addr, request.as_bytes(), WAIT).await;
        if response.status != want {
            failures.push(format!("{name}: got {}, want {want}", response.status));
        }
    }
    let (head, tail) = large.split_at(large.len() / 2);
    let chunked = format!(
        "POST {path} HTTP/1.1\r\nHost: wxgate\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{head}\r\n{:x}\r\n{tail}\r\n0\r\n\r\n",
        head.len(),
        tail.len()
    );
    let response = raw_exchange(env.addr, chunked.as_bytes(), WAIT).await;
    if response.status != 413 {
        failures.push(format!(
            "body over max_body_bytes (chunked): got {}",
            response.status
        ));
    }

    assert!(
        failures.is_empty(),
        "{} of {} bad callbacks got the wrong status:\n{}",
        failures.len(),
        cases.len() + 4,
        failures.join("\n")
    );
    let published = env.marker(&mut events).await;
    assert!(
        published.is_empty(),
        "refused callbacks were published: {:?}",
        published
            .iter()
            .map(|r| (&r.routing_key, &r.event.raw_xml))
            .collect::<Vec<_>>()
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_of_exactly_max_body_bytes_is_accepted() {
    let env = TestEnv::with(Options::new().gateway(&format!("max_body_bytes = {MAX_BODY}"))).await;
    let mut events = env.consumer().await;
    let user = env.inbound(&env.plain);
    let msg_id = env.msg_ids.next_id();
    let base = user.text(msg_id, "").len();
    let xml = user.text(msg_id, &"x".repeat(MAX_BODY - base));
    assert_eq!(xml.len(), MAX_BODY);

    let outcome = env.push(&env.plain, &xml).await;
    assert_eq!(outcome.statuses, [200], "{:?}", outcome.body);
    let (before, _) = events
        .until(&wxgate_tests::event_id_of("plain", &xml), WAIT)
        .await;
    assert!(before.is_empty());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_escapes_are_decoded_once_and_what_is_not_utf8_is_refused() {
    let env = TestEnv::start().await;
    let mut events = env.consumer().await;
    let plain = &env.plain;
    // Each row: the query after signature and timestamp, as written (not encoded); the nonce
    // the signature covers; the status.
    let cases = [
        ("nonce=12+34", "12 34", 200),
        ("nonce=12%2B34", "12+34", 200),
        ("nonce=%G1", "%G1", 200),
        ("nonce=12%", "12%", 200),
        // Parameters the gateway does not read are not decoded.
        ("nonce=1&openid=%FF", "1", 200),
        // A plus is not kept as written.
        ("nonce=12+34", "12+34", 403),
        // Not UTF-8, signed as a lossy decoder would read it: refused before the signature.
        ("nonce=%FF", "\u{fffd}", 400),
        ("nonce=%E4%B8", "\u{fffd}", 400),
        ("nonce=1&encrypt_type=%FF", "1", 400),
    ];
    let mut accepted = HashSet::new();
    let mut failures = Vec::new();
    for (rest, signed_nonce, want) in cases {
        let timestamp = now_s().to_string();
        let signature = wechat::url_signature(&plain.token, &timestamp, signed_nonce);
        let xml = env.text(plain, rest);
        let path = format!("/wx/plain?signature={signature}&timestamp={timestamp}&{rest}");
        let (status, body) = env.post(&path, xml.clone()).await;
        if status != want {
            failures.push(format!(
                "{rest} (signed as {signed_nonce:?}): got {status} ({:?}), want {want}",
                String::from_utf8_lossy(&body)
            ));
        }
        if want == 200 {
            accepted.insert(wxgate_tests::event_id_of(&plain.id, &xml));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let published: HashSet<String> = env
        .marker(&mut events)
        .await
        .into_iter()
        .map(|r| r.event.event_id)
        .collect();
    assert_eq!(
        published, accepted,
        "exactly the accepted callbacks are published"
    );
    env.cleanup().await;
}

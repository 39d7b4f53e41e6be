//! The reference pushes of `wechat/testdata/wechat-crypto.json` (`decrypt_ok`: the official
//! samples, other SDKs' tests and our own vectors), delivered as recorded, with their own
//! timestamps, nonces and `msg_signature`s, are accepted and published as decrypted.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use wxgate_proto::v1 as pb;
use wxgate_tests::{Options, TestEnv, event_id_of, query};

const WAIT: Duration = Duration::from_secs(10);
const VECTORS: &str = include_str!("../../wechat/testdata/wechat-crypto.json");

fn text<'v>(vector: &'v Value, field: &str) -> &'v str {
    vector[field]
        .as_str()
        .unwrap_or_else(|| panic!("vector field {field}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_pushes_are_accepted_with_their_original_signatures() {
    let vectors: Value = serde_json::from_str(VECTORS).unwrap();
    // Pushes only: the plaintext is a message, the key a valid EncodingAESKey.
    let mut ids = HashSet::new();
    let pushes: Vec<&Value> = vectors["decrypt_ok"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| {
            text(v, "encoding_aes_key").len() == 43
                && !text(v, "appid").is_empty()
                && wechat::parse(text(v, "plaintext").as_bytes(), &wechat::Limits::default())
                    .is_ok()
        })
        .collect();
    let mut accounts: Vec<(&str, &str, &str)> = Vec::new();
    for v in &pushes {
        let account = (
            text(v, "appid"),
            text(v, "token"),
            text(v, "encoding_aes_key"),
        );
        if !accounts.contains(&account) {
            accounts.push(account);
        }
    }
    let account_id = |v: &Value| {
        let account = (
            text(v, "appid"),
            text(v, "token"),
            text(v, "encoding_aes_key"),
        );
        let i = accounts.iter().position(|a| *a == account).unwrap();
        format!("v{i}")
    };
    let toml: String = accounts
        .iter()
        .enumerate()
        .map(|(i, (appid, token, key))| {
            format!(
                "[[accounts]]\nid = \"v{i}\"\nappid = \"{appid}\"\ntoken = \"{token}\"\nencoding_aes_key = \"{key}\"\nmode = \"safe\"\n"
            )
        })
        .collect();
    // The recorded timestamps are years old.
    let env = TestEnv::with(
        Options::new()
            .gateway("timestamp_window_s = 0")
            .accounts(&toml),
    )
    .await;
    let mut events = env.consumer().await;
    assert!(pushes.len() >= 10, "only {} usable vectors", pushes.len());

    for v in &pushes {
        let name = text(v, "name");
        let account_id = account_id(v);
        let plaintext = text(v, "plaintext");
        let event_id = event_id_of(&account_id, plaintext);
        if !ids.insert(event_id.clone()) {
            continue;
        }
        let (timestamp, nonce) = (text(v, "timestamp"), text(v, "nonce"));
        let path = format!(
            "/wx/{account_id}?{}",
            query(&[
                (
                    "signature",
                    &wechat::url_signature(text(v, "token"), timestamp, nonce),
                ),
                ("timestamp", timestamp),
                ("nonce", nonce),
                ("encrypt_type", "aes"),
                ("msg_signature", text(v, "msg_signature")),
            ])
        );
        let body = text(v, "body_xml");
        let (status, answer) = env.post(&path, body.to_owned()).await;
        assert_eq!(status, 200, "{name}: {answer:?}");
        assert_eq!(answer, "success", "{name}");
        let (before, received) = events.until(&event_id, WAIT).await;
        assert!(before.is_empty(), "{name}: other events {before:?}");
        assert_eq!(received.event.raw_xml, plaintext, "{name}: raw_xml");
        let mode = if body.contains("<MsgType") {
            pb::EncryptMode::Compat
        } else {
            pb::EncryptMode::Safe
        };
        assert_eq!(received.event.encrypt_mode, mode as i32, "{name}");
    }
    env.cleanup().await;
}

//! The tutorial bot the whole way, in every callback mode: the simulator pushes as WeChat
//! (signed, and encrypted in compat and safe mode) → wx-gateway → RabbitMQ → wx-worker →
//! the simulator's custom/send. Plus WeChat's retries of one message → one send.

// Test support: a failed step should fail the test at once, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use wxgate_sim::{Answer, Inbound, PushAccount, PushClient, random_openid};

/// Pushes `xml` until the gateway acknowledges it (it may still be connecting at first:
/// WeChat would retry a 503, so does this).
async fn push_acknowledged(client: &PushClient, base: &str, account: &PushAccount, xml: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let outcome = client.push(base, account, xml).await.unwrap();
        if matches!(outcome.answer, Answer::Acknowledged) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never acknowledged {xml}: {:?}",
            account.id,
            outcome
        );
    }
}

/// Every behaviour of the tutorial bot for one account: (callback XML, recipient, the
/// custom/send body expected, or `None` when no rule matches).
fn tutorial_cases(account: &PushAccount) -> Vec<(String, String, Option<Value>)> {
    let mut cases = Vec::new();
    let mut case = |build: &dyn Fn(&Inbound) -> String, reply: Option<&str>| {
        let user = random_openid();
        let xml = build(&Inbound::now(&account.original_id, &user));
        let body = reply.map(
            |content| json!({"touser": user, "msgtype": "text", "text": {"content": content}}),
        );
        cases.push((xml, user, body));
    };
    let echo = format!("你好 {} <&> ]]>", account.id);
    case(&|i| i.text(rand::random(), &echo), Some(&echo));
    case(
        &|i| i.voice(rand::random(), "MEDIA", "amr", Some("今天天气怎么样")),
        Some("今天天气怎么样"),
    );
    case(
        &|i| i.voice(rand::random(), "MEDIA", "amr", None),
        Some("未识别"),
    );
    case(&|i| i.subscribe(), Some("感谢您的关注!"));
    case(
        &|i| i.subscribe_qr("2024", "TICKET"),
        Some("感谢您的关注!场景值是:2024"),
    );
    case(&|i| i.scan("scene-7", "TICKET"), Some("scene-7"));
    case(
        &|i| i.image(rand::random(), "http://mmbiz/pic", "IMG"),
        Some("哈哈哈哈"),
    );
    case(
        &|i| i.location(rand::random(), 23.134521, 113.358803, 20, "广州"),
        Some("哈哈哈哈"),
    );
    // No rule matches a menu click: acknowledged, published, skipped by the worker.
    case(&|i| i.click("MENU_KEY"), None);
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_tutorial_behaviour_arrives_through_custom_send_in_each_mode() {
    let mut h = Harness::new(&[]).await;
    let worker = h.start_worker().await;
    let base = h.start_gateway().await;
    let client = PushClient::new().timeout(Duration::from_secs(4));

    let mut expected: HashMap<String, Value> = HashMap::new();
    let mut events = 0;
    for id in ["plain", "compat", "demo"] {
        let account = h.push_account(id);
        for (xml, user, body) in tutorial_cases(&account) {
            push_acknowledged(&client, &base, &account, &xml).await;
            events += 1;
            if let Some(body) = body {
                expected.insert(user, body);
            }
        }
    }

    h.sim
        .wait_for_calls(SEND, expected.len() as u64, WAIT)
        .await
        .unwrap();
    let skipped = events - expected.len();
    wait_metric(
        worker,
        "wxgate_worker_events_total{outcome=\"sent\"}",
        expected.len() as f64,
    )
    .await;
    wait_metric(
        worker,
        "wxgate_worker_events_total{outcome=\"skipped\"}",
        skipped as f64,
    )
    .await;
    let mut sent: HashMap<String, Value> = HashMap::new();
    for call in h.sim.calls_to(SEND) {
        let user = call.body["touser"].as_str().unwrap().to_owned();
        assert!(
            sent.insert(user.clone(), call.body.clone()).is_none(),
            "{user} was sent two replies"
        );
    }
    assert_eq!(sent, expected);
    // One token per account, fetched once, whatever the number of sends.
    for id in ["plain", "compat", "demo"] {
        let appid = h.push_account(id).appid;
        assert_eq!(h.sim.token_requests(&appid), 1, "token requests of {id}");
    }

    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wechat_retries_of_one_message_through_the_gateway_are_sent_once() {
    let mut h = Harness::new(&[]).await;
    let worker = h.start_worker().await;
    let base = h.start_gateway().await;
    let client = PushClient::new().timeout(Duration::from_secs(4));

    for id in ["plain", "compat", "demo"] {
        let account = h.push_account(id);
        let user = random_openid();
        // WeChat delivers the same MsgId three times when it does not hear back in time;
        // each delivery is signed afresh (new nonce and timestamp) around the same XML.
        let xml = Inbound::now(&account.original_id, &user).text(rand::random(), "only once");
        for _ in 0..3 {
            push_acknowledged(&client, &base, &account, &xml).await;
        }
    }

    h.sim.wait_for_calls(SEND, 3, WAIT).await.unwrap();
    wait_metric(worker, "wxgate_worker_events_total{outcome=\"sent\"}", 3.0).await;
    // The retries were answered from the dedup store and never published.
    let gateway = base
        .strip_suffix("/wx")
        .unwrap()
        .strip_prefix("http://")
        .unwrap();
    let gateway: std::net::SocketAddr = gateway.parse().unwrap();
    assert_eq!(
        metric(
            gateway,
            "wxgate_gateway_publish_total{result=\"confirmed\"}"
        )
        .await,
        3.0
    );
    assert_eq!(
        metric(gateway, "wxgate_gateway_dedup_hits_total").await,
        6.0
    );
    assert_eq!(h.sim.call_count(SEND), 3);
    // Every event was sent: none skipped, retried or dead.
    assert_eq!(
        samples(worker, "wxgate_worker_events_total{").await,
        BTreeMap::from([(
            "wxgate_worker_events_total{outcome=\"sent\"}".to_owned(),
            3.0
        )])
    );

    h.finish().await;
}

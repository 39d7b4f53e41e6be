//! End-to-end tests of the worker against real Redis and RabbitMQ and the WeChat simulator.
//! Events are published as the gateway publishes them.

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use common::*;
use serde_json::{Value, json};
use wx_worker::{ATTEMPT_HEADER, ATTEMPTS_HEADER, ERRCODE_HEADER, REASON_HEADER};
use wxgate_core::bus::{HeaderValue, Message, Properties};
use wxgate_sim::{Fault, Inbound, random_openid};

fn inbound(openid: &str) -> Inbound {
    Inbound::now(ORIGINAL_ID, openid)
}

/// The custom/send bodies by recipient.
fn sends_by_user(sim: &wxgate_sim::Sim) -> HashMap<String, Vec<Value>> {
    let mut out: HashMap<String, Vec<Value>> = HashMap::new();
    for call in sim.calls_to(SEND) {
        let touser = call.body["touser"].as_str().unwrap_or_default().to_owned();
        out.entry(touser).or_default().push(call.body.clone());
    }
    out
}

fn text_body(touser: &str, content: &str) -> Value {
    json!({"touser": touser, "msgtype": "text", "text": {"content": content}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tutorial_bot_answers_through_custom_send() {
    let mut h = Harness::new(&[]).await;
    let addr = h.start_worker().await;

    let mut expected = HashMap::new();
    let mut push = |xml: String, openid: &str, body: Option<Value>| {
        if let Some(body) = body {
            expected.insert(openid.to_owned(), body);
        }
        xml
    };
    let users: Vec<String> = (0..9).map(|_| random_openid()).collect();
    let xmls = vec![
        push(
            inbound(&users[0]).text(1001, "hello 你好"),
            &users[0],
            Some(text_body(&users[0], "hello 你好")),
        ),
        push(
            inbound(&users[1]).voice(1002, "MEDIA", "amr", Some("语音识别")),
            &users[1],
            Some(text_body(&users[1], "语音识别")),
        ),
        push(
            inbound(&users[2]).voice(1003, "MEDIA", "amr", None),
            &users[2],
            Some(text_body(&users[2], "未识别")),
        ),
        push(
            inbound(&users[3]).subscribe(),
            &users[3],
            Some(text_body(&users[3], "感谢您的关注!")),
        ),
        push(
            inbound(&users[4]).subscribe_qr("123", "TICKET"),
            &users[4],
            Some(text_body(&users[4], "感谢您的关注!场景值是:123")),
        ),
        push(
            inbound(&users[5]).scan("456", "TICKET"),
            &users[5],
            Some(text_body(&users[5], "456")),
        ),
        push(
            inbound(&users[6]).image(1007, "http://pic", "IMG"),
            &users[6],
            Some(text_body(&users[6], "哈哈哈哈")),
        ),
        // No rule matches an unsubscribe: skipped.
        push(inbound(&users[7]).unsubscribe(), &users[7], None),
    ];
    for xml in &xmls {
        h.publish_xml(xml).await;
    }
    // Answered on the HTTP path already: skipped.
    let (key, message) = event_message(
        &inbound(&users[8]).text(1009, "ping"),
        Some(wxgate_proto::v1::Reply {
            kind: Some(wxgate_proto::v1::reply::Kind::Text("pong".into())),
        }),
    );
    h.publish(&key, &message).await;

    h.sim.wait_for_calls(SEND, 7, WAIT).await.unwrap();
    wait_metric(addr, "wxgate_worker_events_total{outcome=\"sent\"}", 7.0).await;
    wait_metric(addr, "wxgate_worker_events_total{outcome=\"skipped\"}", 2.0).await;

    let sends = sends_by_user(&h.sim);
    assert_eq!(sends.len(), 7, "{sends:?}");
    for (openid, body) in &expected {
        assert_eq!(sends.get(openid), Some(&vec![body.clone()]), "{openid}");
    }
    assert_eq!(h.sim.call_count(SEND), 7);
    assert_eq!(h.sim.token_requests(APPID), 1);

    let (status, _) = http_get(addr, "/healthz").await;
    assert_eq!(status, 200);
    let (status, body) = http_get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let metrics = http_get(addr, "/metrics").await.1;
    assert!(metrics.contains("wxgate_worker_send_seconds"));
    assert!(metrics.contains("wxgate_worker_end_to_end_seconds"));
    assert!(
        metrics.contains("wxgate_token_refresh_total{account=\"demo\",result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wxgate_token_requests_today{account=\"demo\"} 1"),
        "{metrics}"
    );

    // The sent markers are written with the configured TTL.
    let mut redis = redis_connection().await;
    let marker = format!(
        "{}:sent:{}",
        h.ns,
        message.properties.message_id.clone().unwrap()
    );
    let exists: bool = redis::cmd("EXISTS")
        .arg(&marker)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!exists, "a passive-reply event gets no sent marker");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:sent:*", h.ns))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(keys.len(), 7);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&keys[0])
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(ttl > 86_000 && ttl <= 86_400, "{ttl}");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_event_delivered_three_times_is_sent_once() {
    let mut h = Harness::new(&[]).await;
    let addr = h.start_worker().await;
    let user = random_openid();
    let xml = inbound(&user).text(42, "once");
    h.publish_xml(&xml).await;
    h.sim.wait_for_calls(SEND, 1, WAIT).await.unwrap();
    wait_metric(addr, "wxgate_worker_events_total{outcome=\"sent\"}", 1.0).await;
    // Redeliveries (a gateway retry, a crash before the ack) carry the same event id.
    h.publish_xml(&xml).await;
    h.publish_xml(&xml).await;
    wait_metric(addr, "wxgate_worker_events_total{outcome=\"skipped\"}", 2.0).await;
    assert_eq!(h.sim.call_count(SEND), 1);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_share_one_token_request() {
    let mut h = Harness::new(&[]).await;
    for _ in 0..3 {
        h.start_worker().await;
    }
    let user = random_openid();
    let at = inbound(&user);
    for i in 0..200 {
        h.publish_xml(&at.text(10_000 + i, &format!("n{i}"))).await;
    }
    h.sim.wait_for_calls(SEND, 200, WAIT).await.unwrap();
    assert_eq!(h.sim.token_requests(APPID), 1);
    assert_eq!(h.sim.call_count("/cgi-bin/stable_token"), 1);
    let ok = h
        .sim
        .calls_to(SEND)
        .iter()
        .filter(|c| c.errcode == Some(0))
        .count();
    assert_eq!(ok, 200);
    let mut redis = redis_connection().await;
    let quota: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:token-quota:{APPID}:*", h.ns))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(quota.len(), 1);
    let count: i64 = redis::cmd("GET")
        .arg(&quota[0])
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(count, 1);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invalidated_token_is_refreshed_once_and_sends_succeed() {
    let mut h = Harness::new(&[]).await;
    h.start_worker().await;
    let user = random_openid();
    let at = inbound(&user);
    h.publish_xml(&at.text(1, "first")).await;
    h.sim.wait_for_calls(SEND, 1, WAIT).await.unwrap();
    assert_eq!(h.sim.token_requests(APPID), 1);

    assert!(h.sim.invalidate_tokens(APPID) > 0);
    for i in 0..20 {
        h.publish_xml(&at.text(100 + i, &format!("after {i}")))
            .await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ok = h
            .sim
            .calls_to(SEND)
            .iter()
            .filter(|c| c.errcode == Some(0))
            .count();
        if ok == 21 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {ok} sends succeeded"
        );
        h.sim
            .wait_for_calls(
                SEND,
                h.sim.call_count(SEND) + 1,
                std::time::Duration::from_millis(200),
            )
            .await
            .ok();
    }
    assert_eq!(h.sim.token_requests(APPID), 2);
    let rejected = h
        .sim
        .calls_to(SEND)
        .iter()
        .filter(|c| c.errcode == Some(40001))
        .count();
    assert!((1..=20).contains(&rejected), "{rejected}");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transient_errors_are_retried_until_delivered() {
    let mut h = Harness::new(&[]).await;
    let addr = h.start_worker().await;
    h.sim.inject(SEND, Fault::errcode(-1).times(1));
    h.sim.inject(SEND, Fault::status(500).times(1));
    let user = random_openid();
    h.publish_xml(&inbound(&user).text(7, "retry me")).await;
    let calls = h.sim.wait_for_calls(SEND, 3, WAIT).await.unwrap();
    let outcomes: Vec<_> = calls.iter().map(|c| (c.http_status, c.errcode)).collect();
    assert_eq!(outcomes, [(200, Some(-1)), (500, None), (200, Some(0))]);
    assert_eq!(calls[2].body, text_body(&user, "retry me"));
    wait_metric(addr, "wxgate_worker_events_total{outcome=\"sent\"}", 1.0).await;
    assert_eq!(
        metric(addr, "wxgate_worker_events_total{outcome=\"retried\"}").await,
        2.0
    );
    assert_eq!(h.sim.call_count(SEND), 3);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_closed_window_is_parked_in_dead_without_retry() {
    let mut h = Harness::new(&[]).await;
    let addr = h.start_worker().await;
    h.sim.inject(SEND, Fault::errcode(45015).times(1));
    let user = random_openid();
    let event_id = h.publish_xml(&inbound(&user).text(8, "too late")).await;
    let dead = h.dead_letters(1).await;
    let letter = &dead[0];
    assert_eq!(
        letter.properties.message_id.as_deref(),
        Some(event_id.as_str())
    );
    assert_eq!(
        letter.properties.kind.as_deref(),
        Some(wxgate_proto::EVENT_TYPE)
    );
    assert_eq!(header_int(letter, ERRCODE_HEADER), Some(45015));
    assert_eq!(
        header_str(letter, REASON_HEADER).as_deref(),
        Some("wechat_refused")
    );
    assert_eq!(header_int(letter, ATTEMPTS_HEADER), Some(1));
    assert_eq!(header_str(letter, "account_id").as_deref(), Some(ACCOUNT));
    let event = <wxgate_proto::v1::Event as prost::Message>::decode(letter.body.clone()).unwrap();
    assert_eq!(event.event_id, event_id);
    assert_eq!(h.sim.call_count(SEND), 1);
    wait_metric(addr, "wxgate_worker_dead_total{errcode=\"45015\"}", 1.0).await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exhausted_attempts_end_in_dead() {
    let mut h = Harness::new(&[("WXGATE__WORKER__MAX_ATTEMPTS", "3")]).await;
    h.start_worker().await;
    h.sim.inject(SEND, Fault::errcode(-1));
    let user = random_openid();
    h.publish_xml(&inbound(&user).text(9, "never")).await;
    let dead = h.dead_letters(1).await;
    assert_eq!(
        header_str(&dead[0], REASON_HEADER).as_deref(),
        Some("attempts_exhausted")
    );
    assert_eq!(header_int(&dead[0], ERRCODE_HEADER), Some(-1));
    assert_eq!(header_int(&dead[0], ATTEMPTS_HEADER), Some(3));
    assert_eq!(header_int(&dead[0], ATTEMPT_HEADER), Some(2));
    assert_eq!(h.sim.call_count(SEND), 3);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_undecodable_body_is_dead_as_undecodable() {
    let mut h = Harness::new(&[]).await;
    h.start_worker().await;
    let message = Message {
        body: Bytes::from_static(b"\xff\xfe this is not a protobuf event"),
        properties: Properties {
            message_id: Some("garbage".into()),
            headers: vec![("account_id".into(), HeaderValue::Str(ACCOUNT.into()))],
            ..Properties::default()
        },
    };
    h.publish("demo.msg.text", &message).await;
    let dead = h.dead_letters(1).await;
    assert_eq!(
        header_str(&dead[0], REASON_HEADER).as_deref(),
        Some("undecodable")
    );
    assert_eq!(header_int(&dead[0], ERRCODE_HEADER), None);
    assert_eq!(dead[0].body, message.body);
    assert_eq!(h.sim.call_count(SEND), 0);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_in_progress_at_shutdown_are_finished_or_requeued() {
    let mut h = Harness::new(&[
        ("WXGATE__WORKER__CONCURRENCY", "2"),
        ("WXGATE__WORKER__PREFETCH", "10"),
    ])
    .await;
    h.start_worker().await;
    h.sim
        .inject(SEND, Fault::latency(std::time::Duration::from_millis(300)));
    let user = random_openid();
    let at = inbound(&user);
    for i in 0..10 {
        h.publish_xml(&at.text(500 + i, &format!("m{i}"))).await;
    }
    h.sim.wait_for_calls(SEND, 1, WAIT).await.unwrap();
    h.stop_worker(0).await;
    h.sim.clear_faults();
    let second = h.start_worker().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut sent: Vec<String> = h
            .sim
            .calls_to(SEND)
            .iter()
            .filter(|c| c.errcode == Some(0))
            .filter_map(|c| c.body["text"]["content"].as_str().map(str::to_owned))
            .collect();
        sent.sort();
        sent.dedup();
        if sent.len() == 10 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 10 sent: {sent:?}",
            sent.len()
        );
        h.sim
            .wait_for_calls(
                SEND,
                h.sim.call_count(SEND) + 1,
                std::time::Duration::from_millis(200),
            )
            .await
            .ok();
    }
    assert_eq!(h.sim.call_count(SEND), 10, "no event was sent twice");
    // The first worker settled what it finished before it stopped: nothing it sent came back
    // to the second one (which would skip it by the sent marker).
    let outcomes = samples(second, "wxgate_worker_events_total{").await;
    assert!(
        outcomes.keys().all(|series| !series.contains("skipped")),
        "the second worker got events the first had sent: {outcomes:?}"
    );
    h.finish().await;
}

/// The harness declared the queues as classic ones; a worker configured for quorum queues
/// stops with an error naming the queue and the argument instead of retrying forever.
#[tokio::test]
async fn a_queue_of_another_type_stops_the_worker_naming_it() {
    let harness = Harness::new(&[]).await;
    let mut config = (*harness.config).clone();
    config.rabbitmq.queue_type = wxgate_core::config::QueueType::Quorum;
    let worker = wx_worker::start(
        std::sync::Arc::new(config),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    let result = tokio::time::timeout(std::time::Duration::from_secs(30), worker.wait())
        .await
        .expect("the worker stops by itself");
    match result {
        Err(wx_worker::WorkerError::Topology(mismatch)) => {
            assert_eq!(mismatch.name, format!("{}.worker", harness.ns));
            assert_eq!(mismatch.argument, "x-queue-type");
        }
        other => panic!("expected a topology mismatch, got {other:?}"),
    }
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_for_an_account_not_loaded_yet_waits_for_it_instead_of_dying() {
    // A gateway may serve an account added a moment ago before this worker has looked at
    // the runtime accounts again (once a second). Here the worker cannot see it at all until
    // the version moves: the account is in Redis, the version is not bumped yet. Retries
    // every 300 ms for up to 30 attempts: room for the steps below on a loaded machine.
    let mut h = Harness::new(&[
        ("WXGATE__WORKER__RETRY_DELAYS_MS", "300"),
        ("WXGATE__WORKER__MAX_ATTEMPTS", "30"),
    ])
    .await;
    let addr = h.start_ready_worker().await;
    let (id, appid, secret) = ("late", "wx1a7e000000000001", "late-secret");
    h.sim.add_account(appid, secret);
    let spec = json!({
        "id": id, "appid": appid, "secret": secret, "token": "late-token", "mode": "plain",
        "custom": [{ "match": { "msg_type": "text" }, "reply": { "echo": true } }],
    });
    let keys = wxgate_core::keys::Keys::new(&h.ns);
    let mut redis = redis_connection().await;
    let _: i64 = redis::cmd("HSET")
        .arg(keys.accounts())
        .arg(id)
        .arg(serde_json::to_vec(&spec).unwrap())
        .query_async(&mut redis)
        .await
        .unwrap();

    // The event as a gateway that already serves `late` publishes it.
    let user = random_openid();
    let (_, demo) = event_message(&inbound(&user).text(41, "are you there"), None);
    let mut event = <wxgate_proto::v1::Event as prost::Message>::decode(demo.body.clone()).unwrap();
    event.account_id = id.into();
    event.appid = appid.into();
    let message = Message {
        body: Bytes::from(prost::Message::encode_to_vec(&event)),
        properties: Properties {
            headers: vec![("account_id".into(), HeaderValue::Str(id.into()))],
            ..demo.properties.clone()
        },
    };
    h.publish("late.msg.text", &message).await;
    wait_metric(addr, "wxgate_worker_events_total{outcome=\"retried\"}", 1.0).await;
    let dead = samples(addr, "wxgate_worker_events_total{outcome=\"dead\"}").await;
    assert!(dead.is_empty(), "not parked as unknown_account: {dead:?}");

    // The version moves: the worker loads the account and the retry is sent.
    let _: i64 = redis::cmd("INCR")
        .arg(keys.accounts_version())
        .query_async(&mut redis)
        .await
        .unwrap();
    let calls = h.sim.wait_for_calls(SEND, 1, WAIT).await.unwrap();
    assert_eq!(calls[0].body, text_body(&user, "are you there"));
    wait_metric(addr, "wxgate_worker_events_total{outcome=\"sent\"}", 1.0).await;
    h.finish().await;
}

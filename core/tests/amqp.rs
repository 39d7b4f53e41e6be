//! The lean publisher against the real RabbitMQ (`WXGATE__RABBITMQ__URL`, default
//! amqp://guest:guest@127.0.0.1:5672/%2f): confirms, content split over frames, properties,
//! unroutable messages, broker-side errors and closing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use tokio_util::sync::CancellationToken;
use wxgate_core::amqp::{ConnectError, Publisher};
use wxgate_core::bus::{HeaderValue, Properties, PublishError};
use wxgate_tests::{on_own_runtime, rabbitmq_url as url};

/// A topic exchange and a queue bound to it with `#`, or (unbound) an exchange alone;
/// deleted by [`Broker::finish`].
struct Broker {
    connection: Connection,
    channel: lapin::Channel,
    exchange: String,
    queue: String,
}

impl Broker {
    async fn new(bound: bool) -> Broker {
        let ns = format!("t{:016x}", rand::random::<u64>());
        let connection = Connection::connect(&url(), ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ is not reachable at {}: {e}", url()));
        let channel = connection.create_channel().await.unwrap();
        let exchange = format!("{ns}.events");
        let queue = format!("{ns}.q");
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        if bound {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    "#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        Broker {
            connection,
            channel,
            exchange,
            queue,
        }
    }

    async fn finish(self) {
        let _ = self.connection.close(200, "done".into()).await;
        // Drop deletes the queue and the exchange.
    }
}

/// Deletes the test's queue and exchange however the test ends, on a runtime of its own
/// (a panicking test's runtime may be unusable).
impl Drop for Broker {
    fn drop(&mut self) {
        let (queue, exchange) = (self.queue.clone(), self.exchange.clone());
        on_own_runtime(async move {
            let Ok(connection) = Connection::connect(&url(), ConnectionProperties::default()).await
            else {
                return;
            };
            if let Ok(channel) = connection.create_channel().await {
                let _ = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
                let _ = channel
                    .exchange_delete(exchange.as_str().into(), Default::default())
                    .await;
            }
            let _ = connection.close(200, "cleanup".into()).await;
        });
    }
}

fn properties(id: &str) -> Properties {
    Properties {
        message_id: Some(id.to_owned()),
        timestamp_s: Some(1_700_000_000),
        content_type: Some("application/x-protobuf".into()),
        kind: Some("wxgate.v1.Event".into()),
        headers: vec![
            ("account_id".into(), HeaderValue::Str("demo".into())),
            ("attempt".into(), HeaderValue::Int(3)),
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_are_confirmed_and_arrive_intact() {
    let broker = Broker::new(true).await;
    let stop = CancellationToken::new();
    let publisher = Publisher::connect(&url(), stop.clone()).await.unwrap();

    // Sizes around the frame limit (131072 − 8 per body frame) and an empty body.
    let sizes = [0usize, 1, 100, 131_063, 131_064, 131_065, 300_000];
    let mut tasks = Vec::new();
    for i in 0..500usize {
        let publisher = publisher.clone();
        let exchange = broker.exchange.clone();
        let size = sizes[i % sizes.len()];
        tasks.push(tokio::spawn(async move {
            let body: Vec<u8> = (0..size).map(|b| (b % 251) as u8 ^ (i as u8)).collect();
            publisher
                .publish(
                    &exchange,
                    &format!("demo.text.{i}"),
                    &properties(&format!("id-{i}")),
                    &body,
                )
                .await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }

    let mut consumer = broker
        .channel
        .basic_consume(
            broker.queue.as_str().into(),
            "t".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 500 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("all 500 messages arrive")
            .unwrap()
            .unwrap();
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .to_string();
        let i: usize = id.strip_prefix("id-").unwrap().parse().unwrap();
        let size = sizes[i % sizes.len()];
        let body: Vec<u8> = (0..size).map(|b| (b % 251) as u8 ^ (i as u8)).collect();
        assert_eq!(delivery.data, body, "body of {id}");
        assert_eq!(delivery.routing_key.as_str(), format!("demo.text.{i}"));
        let p = &delivery.properties;
        assert_eq!(*p.delivery_mode(), Some(2), "persistent");
        assert_eq!(*p.timestamp(), Some(1_700_000_000));
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/x-protobuf")
        );
        assert_eq!(
            p.kind().as_ref().map(|s| s.as_str()),
            Some("wxgate.v1.Event")
        );
        let headers = p.headers().as_ref().unwrap().inner();
        assert!(matches!(
            headers.get("account_id"),
            Some(AMQPValue::LongString(s)) if s.as_bytes() == b"demo"
        ));
        assert!(matches!(
            headers.get("attempt"),
            Some(AMQPValue::LongLongInt(3))
        ));
        assert!(seen.insert(i), "{id} delivered twice");
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }

    assert!(publisher.is_alive());
    stop.cancel();
    broker.finish().await;
}

/// `url` with heartbeats turned off: a heartbeat is a write of its own, and how many fall due
/// depends on how long the broker takes.
fn without_heartbeats(url: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}heartbeat=0")
}

// One thread: the publisher's writer task cannot run until this test yields.
#[tokio::test(flavor = "current_thread")]
async fn publishes_made_while_the_writer_waits_go_out_in_one_write() {
    let broker = Broker::new(true).await;
    let stop = CancellationToken::new();
    let publisher = Publisher::connect(&without_heartbeats(&url()), stop.clone())
        .await
        .unwrap();
    let writes_before = publisher.writes();

    let properties: Vec<Properties> = (0..1000).map(|i| properties(&format!("id-{i}"))).collect();
    let publishes = properties.iter().map(|properties| {
        publisher.publish(
            &broker.exchange,
            "demo.msg.text",
            properties,
            b"<xml>a callback</xml>",
        )
    });
    // The join polls every publish once before this task yields, and a publish queues its
    // frames before it waits for its confirm: all 1,000 are queued before the writer first
    // runs, however slow the machine or the broker. `unconstrained`, or tokio's cooperative
    // budget would make the join yield after about 128 confirm polls and let the writer in.
    for result in tokio::task::unconstrained(join_all(publishes)).await {
        result.unwrap();
    }
    // One write per publish would be 1,000.
    let writes = publisher.writes() - writes_before;
    assert_eq!(
        writes, 1,
        "1,000 publishes queued together took {writes} writes"
    );

    stop.cancel();
    broker.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_message_is_reported_and_the_connection_stays_usable() {
    let broker = Broker::new(false).await;
    let stop = CancellationToken::new();
    let publisher = Publisher::connect(&url(), stop.clone()).await.unwrap();
    let result = publisher
        .publish(&broker.exchange, "demo.text", &properties("lost"), b"x")
        .await;
    assert!(
        matches!(result, Err(PublishError::Unroutable)),
        "{result:?}"
    );
    broker
        .channel
        .queue_bind(
            broker.queue.as_str().into(),
            broker.exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    publisher
        .publish(&broker.exchange, "demo.text", &properties("kept"), b"y")
        .await
        .unwrap();
    assert!(publisher.is_alive());
    stop.cancel();
    broker.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_error_fails_the_publish_and_every_later_one() {
    let stop = CancellationToken::new();
    let publisher = Publisher::connect(&url(), stop.clone()).await.unwrap();
    // The broker closes the channel (404 NOT_FOUND) for a missing exchange.
    let missing = format!("t{:016x}.missing", rand::random::<u64>());
    let result = publisher
        .publish(&missing, "demo.text", &properties("a"), b"x")
        .await;
    assert!(
        matches!(result, Err(PublishError::Connection(_))),
        "{result:?}"
    );
    tokio::time::timeout(Duration::from_secs(5), publisher.died())
        .await
        .expect("the publisher reports its death");
    assert!(!publisher.is_alive());
    let later = publisher
        .publish(&missing, "demo.text", &properties("b"), b"x")
        .await;
    assert!(
        matches!(later, Err(PublishError::Connection(_))),
        "{later:?}"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_fails_new_publishes_at_once() {
    let broker = Broker::new(true).await;
    let stop = CancellationToken::new();
    let publisher = Publisher::connect(&url(), stop.clone()).await.unwrap();
    publisher
        .publish(&broker.exchange, "k", &properties("a"), b"x")
        .await
        .unwrap();
    publisher.drain_and_close(Duration::from_secs(2)).await;
    assert!(!publisher.is_alive());
    let result = publisher
        .publish(&broker.exchange, "k", &properties("b"), b"x")
        .await;
    assert!(
        matches!(result, Err(PublishError::Connection(_))),
        "{result:?}"
    );
    stop.cancel();
    broker.finish().await;
}

#[tokio::test]
async fn wrong_credentials_and_bad_urls_are_connect_errors() {
    let stop = CancellationToken::new();
    let bad_login = url().replacen("guest:guest", "guest:not-the-password", 1);
    let result = Publisher::connect(&bad_login, stop.clone()).await;
    assert!(
        matches!(
            result,
            Err(ConnectError::Handshake(_) | ConnectError::Io(_))
        ),
        "{:?}",
        result.err()
    );
    let result = Publisher::connect("not a url", stop.clone()).await;
    assert!(matches!(result, Err(ConnectError::Url(_))));
    let result = Publisher::connect("amqps://guest:guest@127.0.0.1:5671/%2f", stop).await;
    assert!(matches!(result, Err(ConnectError::Tls)));
}

/// Returns are matched to publishes by content, not by the next confirm: with routed and
/// unroutable publishes in flight together, each learns its own fate. A message in flight
/// twice that comes back cannot be told apart from its copy, so neither copy may be
/// reported confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_and_routed_publishes_in_flight_each_get_their_own_answer() {
    let broker = Broker::new(false).await;
    broker
        .channel
        .queue_bind(
            broker.queue.as_str().into(),
            broker.exchange.as_str().into(),
            "routed.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let publisher = Publisher::connect(&url(), stop.clone()).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..400usize {
        let publisher = publisher.clone();
        let exchange = broker.exchange.clone();
        tasks.push(tokio::spawn(async move {
            // Even: routed; odd: no queue. i % 4 < 2: one id shared by many publishes in
            // flight; otherwise an id of its own.
            let routed = i % 2 == 0;
            let shared = i % 4 < 2;
            let key = if routed { "routed.text" } else { "lost.text" };
            let id = if shared {
                "same".to_owned()
            } else {
                format!("id-{i}")
            };
            let result = publisher
                .publish(&exchange, key, &properties(&id), b"x")
                .await;
            (i, routed, shared, result)
        }));
    }
    for task in tasks {
        let (i, routed, shared, result) = task.await.unwrap();
        match (routed, shared) {
            (true, _) => assert!(result.is_ok(), "publish {i} was routed: {result:?}"),
            (false, false) => assert!(
                matches!(result, Err(PublishError::Unroutable)),
                "publish {i} had no queue: {result:?}"
            ),
            (false, true) => assert!(
                matches!(
                    result,
                    Err(PublishError::Unroutable | PublishError::NotConfirmed)
                ),
                "publish {i} had no queue and must not be reported confirmed: {result:?}"
            ),
        }
    }
    // The same id once more, routed: no stale return of an earlier publish is left to spoil it.
    publisher
        .publish(&broker.exchange, "routed.text", &properties("same"), b"y")
        .await
        .unwrap();
    assert!(publisher.is_alive());
    stop.cancel();
    broker.finish().await;
}

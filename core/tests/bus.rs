//! Bus behaviour, written once and run against the in-memory bus (`memory::…`) and the
//! RabbitMQ one (`rabbit::…`, on `WXGATE__RABBITMQ__URL`, default
//! amqp://guest:guest@127.0.0.1:5672/%2f). Each test runs in a namespace of its own whose
//! queues and exchanges are deleted however it ends.
//!
//! Nothing here sleeps to synchronise: waits are on a delivery, or polls with a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wxgate_core::Config;
use wxgate_core::bus::{
    Bus, Decide, Delivery, DeliveryStream, Disposition, GroupError, GroupSpec, HeaderValue,
    Message, Properties, PublishError,
};
use wxgate_core::memory_bus::MemoryBus;
use wxgate_core::rabbit::RabbitBus;
use wxgate_core::topology::{Names, Topology, group_spec};
use wxgate_tests::{Namespace, bounded, eventually, on_own_runtime, rabbitmq_url};

/// How long one expected delivery or state may take to show up.
const WAIT: Duration = Duration::from_secs(10);
/// The retry delays of the test topology (ms).
const RETRY_DELAYS_MS: [u64; 2] = [50, 100];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Memory,
    Rabbit,
}

/// What a scenario needs besides the bus and the names.
struct Env {
    kind: Kind,
    config: Config,
    /// Group queues declared, deleted at the end.
    groups: Arc<Mutex<Vec<String>>>,
}

impl Env {
    /// The spec of consumer group `group` (dead-lettering to `{ns}.groups.dropped`); its
    /// queue is deleted when the test ends.
    fn group(&self, group: &str, bindings: &[&str], max_length: u64, ttl: Duration) -> GroupSpec {
        let spec = group_spec(
            &self.config,
            group,
            bindings.iter().map(|key| (*key).to_owned()).collect(),
            max_length,
            ttl,
        );
        self.groups.lock().unwrap().push(spec.queue.clone());
        spec
    }
}

/// One test's bus, in a namespace of its own.
struct Fixture {
    bus: Arc<dyn Bus>,
    names: Names,
    env: Env,
    shutdown: CancellationToken,
    // Dropped after `Fixture::drop` has deleted the group queues.
    _namespace: Option<Namespace>,
}

impl Fixture {
    async fn start(kind: Kind, topology: fn(&Config) -> Topology) -> Fixture {
        let namespace = match kind {
            Kind::Memory => None,
            Kind::Rabbit => Some(Namespace::random(RETRY_DELAYS_MS.len())),
        };
        let ns = namespace.as_ref().map_or_else(
            || format!("t{:016x}", rand::random::<u64>()),
            |n| n.ns.clone(),
        );
        let delays = RETRY_DELAYS_MS.map(|d| d.to_string()).join(", ");
        let config = Config::from_toml(
            &format!(
                "namespace = \"{ns}\"\n[rabbitmq]\nurl = \"{}\"\n[worker]\nretry_delays_ms = [{delays}]\n",
                rabbitmq_url()
            ),
            |_| None,
        )
        .unwrap();
        let topology = topology(&config);
        let shutdown = CancellationToken::new();
        let bus: Arc<dyn Bus> = match kind {
            Kind::Memory => Arc::new(MemoryBus::new(topology)),
            Kind::Rabbit => {
                let bus = RabbitBus::connect(&config.rabbitmq.url, topology, shutdown.clone());
                assert!(
                    bus.wait_ready(Duration::from_secs(30)).await,
                    "RabbitMQ is not reachable at {} or refused the topology; start it with: \
                     rabbitmq-server -detached",
                    config.rabbitmq.url
                );
                Arc::new(bus)
            }
        };
        Fixture {
            bus,
            names: Names::new(&ns),
            env: Env {
                kind,
                config,
                groups: Arc::new(Mutex::new(Vec::new())),
            },
            shutdown,
            _namespace: namespace,
        }
    }
}

impl Drop for Fixture {
    /// Deletes the group queues on the broker (the namespace guard deletes the rest), however
    /// the test ended; errors are ignored.
    fn drop(&mut self) {
        self.shutdown.cancel();
        if self.env.kind != Kind::Rabbit {
            return;
        }
        let groups =
            std::mem::take(&mut *self.env.groups.lock().unwrap_or_else(|e| e.into_inner()));
        if groups.is_empty() {
            return;
        }
        on_own_runtime(async move {
            let _ = tokio::time::timeout(Duration::from_secs(30), delete_queues(groups)).await;
        });
    }
}

async fn delete_queues(queues: Vec<String>) {
    let Ok(connection) =
        lapin::Connection::connect(&rabbitmq_url(), lapin::ConnectionProperties::default()).await
    else {
        return;
    };
    for queue in queues {
        // A failed delete closes its channel: one channel each.
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(
                    queue.as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await;
            let _ = channel.close(200, "deleted".into()).await;
        }
    }
    let _ = connection.close(200, "done".into()).await;
}

/// The topology of the configuration.
fn standard(config: &Config) -> Topology {
    Topology::for_config(config)
}

/// The topology of the configuration with `{ns}.worker` bound to nothing, so the events
/// exchange routes only to consumer groups.
fn without_worker_binding(config: &Config) -> Topology {
    let mut topology = Topology::for_config(config);
    for queue in &mut topology.queues {
        queue.bindings.clear();
    }
    topology
}

/// Generates `memory::name` and `rabbit::name` for each `name(topology)`.
macro_rules! scenarios {
    ($($name:ident($topology:ident)),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    let fixture = super::Fixture::start(super::Kind::Memory, super::$topology).await;
                    super::$name(&*fixture.bus, &fixture.names, &fixture.env).await;
                }
            )*
        }
        mod rabbit {
            $(
                #[tokio::test]
                async fn $name() {
                    let fixture = super::Fixture::start(super::Kind::Rabbit, super::$topology).await;
                    super::$name(&*fixture.bus, &fixture.names, &fixture.env).await;
                }
            )*
        }
    };
}

scenarios! {
    a_round_trip_keeps_the_body_and_every_property(standard),
    topic_bindings_route_like_amqp(without_worker_binding),
    the_default_exchange_routes_to_the_queue_named_by_the_key(standard),
    publishing_to_an_unknown_exchange_fails(standard),
    prefetch_bounds_the_unsettled_deliveries_of_a_consumer(standard),
    an_ack_removes_the_message(standard),
    a_nack_with_requeue_redelivers(standard),
    a_nack_without_requeue_drops_a_message_with_no_dead_letter_exchange(standard),
    a_nack_without_requeue_dead_letters_a_group_message_as_rejected(standard),
    a_retry_queue_returns_its_messages_to_the_worker_after_the_delay(standard),
    a_full_group_drops_its_oldest_message_as_maxlen(standard),
    a_group_message_past_its_ttl_is_dropped_as_expired(standard),
    declaring_a_group_again_with_other_retention_is_a_mismatch(standard),
    declaring_a_group_again_replaces_its_bindings(standard),
    deleting_a_group_returns_its_ready_messages_and_cancels_its_consumers(standard),
    group_stats_count_ready_messages_and_consumers(standard),
    a_dropped_stream_returns_its_unsettled_deliveries(standard),
    a_sweep_keeps_removes_and_moves(standard),
    a_sweep_stops_at_max_and_before_the_messages_it_kept(standard),
}

// ---- helpers ----

fn message(id: &str) -> Message {
    Message {
        body: Bytes::from(format!("body of {id}")),
        properties: Properties {
            message_id: Some(id.to_owned()),
            ..Properties::default()
        },
    }
}

fn id_of(message: &Message) -> String {
    message.properties.message_id.clone().unwrap_or_default()
}

fn str_header(message: &Message, name: &str) -> Option<String> {
    match message.properties.header(name)? {
        HeaderValue::Str(s) => Some(s.clone()),
        HeaderValue::Int(i) => Some(i.to_string()),
    }
}

async fn publish(bus: &dyn Bus, exchange: &str, key: &str, id: &str) {
    bounded(WAIT, "a publish", bus.publish(exchange, key, &message(id)))
        .await
        .unwrap_or_else(|e| panic!("publish of {id} to {exchange:?} with {key:?}: {e}"));
}

async fn consume(bus: &dyn Bus, queue: &str, prefetch: u16) -> DeliveryStream {
    bounded(WAIT, "consume", bus.consume(queue, prefetch))
        .await
        .unwrap()
}

async fn recv(stream: &mut DeliveryStream) -> Delivery {
    bounded(WAIT, "a delivery", stream.recv())
        .await
        .expect("the stream ended")
}

/// Receives `n` deliveries.
async fn recv_n(stream: &mut DeliveryStream, n: usize) -> Vec<Delivery> {
    let mut deliveries = Vec::with_capacity(n);
    for _ in 0..n {
        deliveries.push(recv(stream).await);
    }
    deliveries
}

fn ids(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(|d| id_of(&d.message)).collect()
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

/// Waits until `queue` holds `depth` ready messages and has `consumers` consumers.
async fn wait_for_stats(bus: &dyn Bus, queue: &str, depth: u64, consumers: u32) {
    eventually(
        WAIT,
        &format!("{queue} at depth {depth} with {consumers} consumers"),
        || async {
            match bus.group_stats(queue).await {
                Ok(Some(stats)) if stats.depth == depth && stats.consumers == consumers => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

async fn declare(bus: &dyn Bus, spec: &GroupSpec, unbind: &[String]) {
    bounded(WAIT, "declare_group", bus.declare_group(spec, unbind))
        .await
        .unwrap_or_else(|e| panic!("declare {}: {e}", spec.queue));
}

/// A sweep decider that records what it saw.
struct Recorder<F> {
    seen: Vec<String>,
    decide: F,
    stop_after: Option<usize>,
}

impl<F: FnMut(&Message) -> Disposition + Send> Decide for Recorder<F> {
    fn decide(&mut self, message: &Message) -> Disposition {
        self.seen.push(id_of(message));
        (self.decide)(message)
    }

    fn done(&self) -> bool {
        self.stop_after.is_some_and(|n| self.seen.len() >= n)
    }
}

fn recorder<F: FnMut(&Message) -> Disposition + Send>(decide: F) -> Recorder<F> {
    Recorder {
        seen: Vec::new(),
        decide,
        stop_after: None,
    }
}

fn keep(_: &Message) -> Disposition {
    Disposition::Keep
}

// ---- scenarios ----

async fn a_round_trip_keeps_the_body_and_every_property(bus: &dyn Bus, names: &Names, _: &Env) {
    let sent = Message {
        body: Bytes::from_static(b"\x00\x01binary\xffbody"),
        properties: Properties {
            message_id: Some("0123456789abcdef0123456789abcdef".into()),
            timestamp_s: Some(1_700_000_000),
            content_type: Some("application/x-protobuf".into()),
            kind: Some("wxgate.v1.Event".into()),
            headers: vec![
                ("account_id".into(), HeaderValue::Str("acct".into())),
                ("x-wxgate-attempt".into(), HeaderValue::Int(3)),
                ("negative".into(), HeaderValue::Int(-42)),
                ("empty".into(), HeaderValue::Str(String::new())),
            ],
        },
    };
    let mut worker = consume(bus, &names.worker_queue(), 1).await;
    bus.publish(&names.events_exchange(), "acct.msg.text", &sent)
        .await
        .unwrap();
    let delivery = recv(&mut worker).await;
    assert_eq!(delivery.routing_key, "acct.msg.text");
    assert!(!delivery.redelivered);
    let got = &delivery.message;
    assert_eq!(got.body, sent.body);
    let without_headers = |p: &Properties| Properties {
        headers: Vec::new(),
        ..p.clone()
    };
    assert_eq!(
        without_headers(&got.properties),
        without_headers(&sent.properties)
    );
    // AMQP tables do not keep the order of their entries.
    let mut got_headers = got.properties.headers.clone();
    let mut sent_headers = sent.properties.headers.clone();
    got_headers.sort_by(|a, b| a.0.cmp(&b.0));
    sent_headers.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got_headers, sent_headers);
    delivery.ack().await.unwrap();
}

async fn topic_bindings_route_like_amqp(bus: &dyn Bus, names: &Names, env: &Env) {
    let ttl = Duration::from_secs(600);
    let one_word = env.group("one", &["acct.msg.*"], 100, ttl);
    let any_words = env.group("any", &["acct.#"], 100, ttl);
    // Two bindings that both match `acct.event.subscribe`.
    let events = env.group("events", &["*.event.#", "acct.event.subscribe"], 100, ttl);
    for spec in [&one_word, &any_words, &events] {
        declare(bus, spec, &[]).await;
    }
    let exchange = names.events_exchange();
    publish(bus, &exchange, "acct.msg.text", "text").await;
    publish(bus, &exchange, "acct.event.subscribe", "subscribe").await;
    publish(bus, &exchange, "acct.msg", "two-words").await;
    publish(bus, &exchange, "acct.msg.text.more", "four-words").await;
    publish(bus, &exchange, "other.event", "other-event").await;
    let unroutable = bus
        .publish(&exchange, "other.msg.text", &message("none"))
        .await;
    assert!(
        matches!(unroutable, Err(PublishError::Unroutable)),
        "{unroutable:?}"
    );
    let expected: [(&GroupSpec, &[&str]); 3] = [
        (&one_word, &["text"]),
        (
            &any_words,
            &["four-words", "subscribe", "text", "two-words"],
        ),
        (&events, &["other-event", "subscribe"]),
    ];
    for (spec, want) in expected {
        // Every publish was confirmed: the depths are final, so a copy too many would show.
        wait_for_stats(bus, &spec.queue, want.len() as u64, 0).await;
        let mut stream = consume(bus, &spec.queue, 10).await;
        let got = recv_n(&mut stream, want.len()).await;
        assert_eq!(sorted(ids(&got)), want, "{}", spec.queue);
        for delivery in got {
            delivery.ack().await.unwrap();
        }
    }
}

async fn the_default_exchange_routes_to_the_queue_named_by_the_key(
    bus: &dyn Bus,
    names: &Names,
    _: &Env,
) {
    let mut dead = consume(bus, &names.dead_queue(), 1).await;
    publish(bus, "", &names.dead_queue(), "direct").await;
    let delivery = recv(&mut dead).await;
    assert_eq!(id_of(&delivery.message), "direct");
    assert_eq!(delivery.routing_key, names.dead_queue());
    delivery.ack().await.unwrap();
    let missing = format!("{}.no-such-queue", names.worker_queue());
    let unroutable = bus.publish("", &missing, &message("lost")).await;
    assert!(
        matches!(unroutable, Err(PublishError::Unroutable)),
        "{unroutable:?}"
    );
}

async fn publishing_to_an_unknown_exchange_fails(bus: &dyn Bus, names: &Names, _: &Env) {
    let exchange = format!("{}.no-such-exchange", names.events_exchange());
    let result = bounded(
        WAIT,
        "a publish",
        bus.publish(&exchange, "k", &message("m")),
    )
    .await;
    match result {
        Err(PublishError::Unroutable) | Ok(()) => {
            panic!("a publish to a missing exchange must fail: {result:?}")
        }
        Err(_) => {}
    }
}

async fn prefetch_bounds_the_unsettled_deliveries_of_a_consumer(
    bus: &dyn Bus,
    names: &Names,
    _: &Env,
) {
    let queue = names.dead_queue();
    for i in 1..=5 {
        publish(bus, "", &queue, &format!("m{i}")).await;
    }
    let mut first = consume(bus, &queue, 2).await;
    let held = recv_n(&mut first, 2).await;
    assert_eq!(ids(&held), ["m1", "m2"]);
    // Whatever the first consumer took beyond its prefetch, the second could not get.
    let mut second = consume(bus, &queue, 10).await;
    let rest = recv_n(&mut second, 3).await;
    assert_eq!(ids(&rest), ["m3", "m4", "m5"]);
    assert!(first.try_recv().is_none());
    for delivery in held.into_iter().chain(rest) {
        delivery.ack().await.unwrap();
    }
    wait_for_stats(bus, &queue, 0, 2).await;
}

async fn an_ack_removes_the_message(bus: &dyn Bus, names: &Names, _: &Env) {
    let queue = names.dead_queue();
    publish(bus, "", &queue, "acked").await;
    let mut stream = consume(bus, &queue, 1).await;
    recv(&mut stream).await.ack().await.unwrap();
    drop(stream);
    wait_for_stats(bus, &queue, 0, 0).await;
    publish(bus, "", &queue, "marker").await;
    let mut next = consume(bus, &queue, 1).await;
    let delivery = recv(&mut next).await;
    assert_eq!(id_of(&delivery.message), "marker");
    assert!(!delivery.redelivered);
}

async fn a_nack_with_requeue_redelivers(bus: &dyn Bus, names: &Names, _: &Env) {
    let queue = names.dead_queue();
    publish(bus, "", &queue, "again").await;
    let mut stream = consume(bus, &queue, 1).await;
    let first = recv(&mut stream).await;
    assert!(!first.redelivered);
    first.nack(true).await.unwrap();
    let second = recv(&mut stream).await;
    assert_eq!(id_of(&second.message), "again");
    assert!(second.redelivered);
    second.ack().await.unwrap();
}

async fn a_nack_without_requeue_drops_a_message_with_no_dead_letter_exchange(
    bus: &dyn Bus,
    names: &Names,
    _: &Env,
) {
    let queue = names.worker_queue();
    publish(bus, "", &queue, "rejected").await;
    let mut stream = consume(bus, &queue, 1).await;
    recv(&mut stream).await.nack(false).await.unwrap();
    publish(bus, "", &queue, "marker").await;
    let next = recv(&mut stream).await;
    assert_eq!(id_of(&next.message), "marker");
    next.ack().await.unwrap();
    wait_for_stats(bus, &names.groups_dropped(), 0, 0).await;
}

async fn a_nack_without_requeue_dead_letters_a_group_message_as_rejected(
    bus: &dyn Bus,
    names: &Names,
    env: &Env,
) {
    let group = env.group("crm", &["acct.#"], 100, Duration::from_secs(600));
    declare(bus, &group, &[]).await;
    let mut sent = message("rejected");
    sent.properties.content_type = Some("application/x-protobuf".into());
    sent.properties
        .set_header("account_id", HeaderValue::Str("acct".into()));
    bus.publish(&names.events_exchange(), "acct.msg.text", &sent)
        .await
        .unwrap();
    let mut dropped = consume(bus, &names.groups_dropped(), 10).await;
    let mut stream = consume(bus, &group.queue, 1).await;
    recv(&mut stream).await.nack(false).await.unwrap();
    let record = recv(&mut dropped).await;
    let got = &record.message;
    assert_eq!(id_of(got), "rejected");
    assert_eq!(record.routing_key, "acct.msg.text");
    assert_eq!(got.body, sent.body);
    assert_eq!(
        got.properties.content_type.as_deref(),
        Some("application/x-protobuf")
    );
    assert_eq!(str_header(got, "account_id").as_deref(), Some("acct"));
    assert_eq!(
        str_header(got, "x-first-death-reason").as_deref(),
        Some("rejected")
    );
    assert_eq!(
        str_header(got, "x-first-death-queue").as_deref(),
        Some(group.queue.as_str())
    );
    record.ack().await.unwrap();
    wait_for_stats(bus, &group.queue, 0, 1).await;
}

async fn a_retry_queue_returns_its_messages_to_the_worker_after_the_delay(
    bus: &dyn Bus,
    names: &Names,
    _: &Env,
) {
    let mut worker = consume(bus, &names.worker_queue(), 1).await;
    let start = Instant::now();
    publish(bus, "", &names.retry_queue(0), "retried").await;
    let delivery = recv(&mut worker).await;
    // Never before its delay (no upper bound: timing depends on the machine).
    assert!(
        start.elapsed() >= Duration::from_millis(RETRY_DELAYS_MS[0]),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(id_of(&delivery.message), "retried");
    assert_eq!(delivery.routing_key, names.worker_queue());
    assert_eq!(
        str_header(&delivery.message, "x-first-death-reason").as_deref(),
        Some("expired")
    );
    assert_eq!(
        str_header(&delivery.message, "x-first-death-queue"),
        Some(names.retry_queue(0))
    );
    delivery.ack().await.unwrap();
    wait_for_stats(bus, &names.retry_queue(0), 0, 0).await;
}

async fn a_full_group_drops_its_oldest_message_as_maxlen(bus: &dyn Bus, names: &Names, env: &Env) {
    let group = env.group("small", &["acct.#"], 2, Duration::from_secs(600));
    declare(bus, &group, &[]).await;
    for id in ["oldest", "middle", "newest"] {
        publish(bus, &names.events_exchange(), "acct.msg.text", id).await;
    }
    let mut dropped = consume(bus, &names.groups_dropped(), 10).await;
    let record = recv(&mut dropped).await;
    assert_eq!(id_of(&record.message), "oldest");
    assert_eq!(
        str_header(&record.message, "x-first-death-reason").as_deref(),
        Some("maxlen")
    );
    assert_eq!(
        str_header(&record.message, "x-first-death-queue"),
        Some(group.queue.clone())
    );
    record.ack().await.unwrap();
    wait_for_stats(bus, &group.queue, 2, 0).await;
    let mut stream = consume(bus, &group.queue, 10).await;
    assert_eq!(ids(&recv_n(&mut stream, 2).await), ["middle", "newest"]);
}

async fn a_group_message_past_its_ttl_is_dropped_as_expired(
    bus: &dyn Bus,
    names: &Names,
    env: &Env,
) {
    let group = env.group("brief", &["acct.#"], 100, Duration::from_millis(100));
    declare(bus, &group, &[]).await;
    let mut dropped = consume(bus, &names.groups_dropped(), 10).await;
    publish(bus, &names.events_exchange(), "acct.msg.text", "stale").await;
    let record = recv(&mut dropped).await;
    assert_eq!(id_of(&record.message), "stale");
    assert_eq!(
        str_header(&record.message, "x-first-death-reason").as_deref(),
        Some("expired")
    );
    assert_eq!(
        str_header(&record.message, "x-first-death-queue"),
        Some(group.queue.clone())
    );
    record.ack().await.unwrap();
    wait_for_stats(bus, &group.queue, 0, 0).await;
}

async fn declaring_a_group_again_with_other_retention_is_a_mismatch(
    bus: &dyn Bus,
    names: &Names,
    env: &Env,
) {
    let group = env.group("fixed", &["acct.#"], 100, Duration::from_secs(600));
    declare(bus, &group, &[]).await;
    declare(bus, &group, &[]).await;
    let other_exchange = GroupSpec {
        dead_letter_exchange: format!("{}.elsewhere", names.groups_dropped()),
        ..group.clone()
    };
    let changes = [
        (
            GroupSpec {
                max_length: 50,
                ..group.clone()
            },
            "x-max-length",
        ),
        (
            GroupSpec {
                message_ttl: Duration::from_secs(60),
                ..group.clone()
            },
            "x-message-ttl",
        ),
        (other_exchange, "x-dead-letter-exchange"),
    ];
    for (changed, argument) in changes {
        match bus.declare_group(&changed, &[]).await {
            Err(GroupError::Mismatch {
                queue,
                argument: named,
            }) => {
                assert_eq!(queue, group.queue);
                assert_eq!(named, argument);
            }
            other => panic!("declaring with another {argument}: {other:?}"),
        }
    }
    // The queue is as it was and still works.
    declare(bus, &group, &[]).await;
    publish(bus, &names.events_exchange(), "acct.msg.text", "kept").await;
    wait_for_stats(bus, &group.queue, 1, 0).await;
}

async fn declaring_a_group_again_replaces_its_bindings(bus: &dyn Bus, names: &Names, env: &Env) {
    let before = env.group("moving", &["old.#"], 100, Duration::from_secs(600));
    declare(bus, &before, &[]).await;
    let after = GroupSpec {
        bindings: vec!["new.#".into()],
        ..before.clone()
    };
    declare(bus, &after, &before.bindings).await;
    let exchange = names.events_exchange();
    publish(bus, &exchange, "old.msg.text", "old").await;
    publish(bus, &exchange, "new.msg.text", "new").await;
    wait_for_stats(bus, &after.queue, 1, 0).await;
    let mut stream = consume(bus, &after.queue, 10).await;
    assert_eq!(id_of(&recv(&mut stream).await.message), "new");
}

async fn deleting_a_group_returns_its_ready_messages_and_cancels_its_consumers(
    bus: &dyn Bus,
    names: &Names,
    env: &Env,
) {
    let group = env.group("doomed", &["acct.#"], 100, Duration::from_secs(600));
    declare(bus, &group, &[]).await;
    for i in 0..3 {
        publish(
            bus,
            &names.events_exchange(),
            "acct.msg.text",
            &format!("m{i}"),
        )
        .await;
    }
    let mut stream = consume(bus, &group.queue, 1).await;
    let _held = recv(&mut stream).await;
    wait_for_stats(bus, &group.queue, 2, 1).await;
    let deleted = bounded(WAIT, "delete_group", bus.delete_group(&group.queue))
        .await
        .unwrap();
    assert_eq!(deleted, 2, "the ready messages");
    assert_eq!(bus.group_stats(&group.queue).await.unwrap(), None);
    assert_eq!(bus.delete_group(&group.queue).await.unwrap(), 0);
    if env.kind == Kind::Memory {
        // The RabbitMQ bus keeps resubscribing a stream until it is stopped.
        assert!(
            bounded(WAIT, "the stream's end", stream.recv())
                .await
                .is_none()
        );
    }
}

async fn group_stats_count_ready_messages_and_consumers(bus: &dyn Bus, names: &Names, env: &Env) {
    assert_eq!(
        bus.group_stats(&names.group_queue("never-declared"))
            .await
            .unwrap(),
        None
    );
    let group = env.group("counted", &["acct.#"], 100, Duration::from_secs(600));
    declare(bus, &group, &[]).await;
    wait_for_stats(bus, &group.queue, 0, 0).await;
    publish(bus, &names.events_exchange(), "acct.msg.text", "a").await;
    publish(bus, &names.events_exchange(), "acct.msg.text", "b").await;
    wait_for_stats(bus, &group.queue, 2, 0).await;
    let mut stream = consume(bus, &group.queue, 1).await;
    let delivery = recv(&mut stream).await;
    wait_for_stats(bus, &group.queue, 1, 1).await;
    let mut other = consume(bus, &group.queue, 1).await;
    let _second = recv(&mut other).await;
    wait_for_stats(bus, &group.queue, 0, 2).await;
    drop(delivery);
    drop(stream);
    wait_for_stats(bus, &group.queue, 1, 1).await;
}

async fn a_dropped_stream_returns_its_unsettled_deliveries(bus: &dyn Bus, names: &Names, _: &Env) {
    let queue = names.dead_queue();
    publish(bus, "", &queue, "a").await;
    publish(bus, "", &queue, "b").await;
    let mut first = consume(bus, &queue, 2).await;
    let mut held = recv_n(&mut first, 2).await;
    let b = held.pop().unwrap();
    // Dropped unsettled while its stream lives: still in flight, so the first consumer has
    // no room and the next message goes to the second.
    drop(held);
    let mut second = consume(bus, &queue, 10).await;
    publish(bus, "", &queue, "c").await;
    let c = recv(&mut second).await;
    assert_eq!(id_of(&c.message), "c");
    c.ack().await.unwrap();
    drop(first);
    drop(b);
    let returned = recv_n(&mut second, 2).await;
    assert_eq!(sorted(ids(&returned)), ["a", "b"]);
    assert!(returned.iter().all(|d| d.redelivered));
    for delivery in returned {
        delivery.ack().await.unwrap();
    }
}

async fn a_sweep_keeps_removes_and_moves(bus: &dyn Bus, names: &Names, _: &Env) {
    let dead = names.dead_queue();
    for i in 1..=5 {
        publish(bus, "", &dead, &format!("d{i}")).await;
    }
    let worker = names.worker_queue();
    let mut decide = recorder(|message: &Message| match id_of(message).as_str() {
        "d2" | "d5" => Disposition::Remove,
        "d3" => {
            let mut moved = message.clone();
            moved
                .properties
                .set_header("x-test-moved", HeaderValue::Int(1));
            Disposition::Move {
                queue: worker.clone(),
                message: moved,
            }
        }
        _ => Disposition::Keep,
    });
    let swept = bounded(WAIT, "a sweep", bus.sweep(&dead, 100, &mut decide))
        .await
        .unwrap();
    assert_eq!(decide.seen, ["d1", "d2", "d3", "d4", "d5"]);
    assert_eq!(
        (swept.scanned, swept.removed, swept.moved, swept.behind),
        (5, 3, 1, 0)
    );
    wait_for_stats(bus, &dead, 2, 0).await;
    let mut stream = consume(bus, &worker, 1).await;
    let moved = recv(&mut stream).await;
    assert_eq!(id_of(&moved.message), "d3");
    assert_eq!(
        str_header(&moved.message, "x-test-moved").as_deref(),
        Some("1")
    );
    let mut again = recorder(keep);
    let swept = bus.sweep(&dead, 100, &mut again).await.unwrap();
    assert_eq!(again.seen, ["d1", "d4"]);
    assert_eq!((swept.scanned, swept.removed, swept.behind), (2, 0, 0));
}

async fn a_sweep_stops_at_max_and_before_the_messages_it_kept(
    bus: &dyn Bus,
    names: &Names,
    _: &Env,
) {
    let dead = names.dead_queue();
    for i in 0..5 {
        publish(bus, "", &dead, &format!("m{i}")).await;
    }
    let mut first = recorder(keep);
    let swept = bus.sweep(&dead, 2, &mut first).await.unwrap();
    assert_eq!(first.seen, ["m0", "m1"]);
    assert_eq!((swept.scanned, swept.behind), (2, 3));
    // Kept messages went to the tail; a walk ends before it would meet them again.
    let mut whole = recorder(keep);
    let swept = bus.sweep(&dead, 100, &mut whole).await.unwrap();
    assert_eq!(whole.seen, ["m2", "m3", "m4", "m0", "m1"]);
    assert_eq!((swept.scanned, swept.behind), (5, 0));
    let mut early = Recorder {
        stop_after: Some(1),
        ..recorder(keep)
    };
    let swept = bus.sweep(&dead, 100, &mut early).await.unwrap();
    assert_eq!(early.seen, ["m2"]);
    assert_eq!((swept.scanned, swept.behind), (1, 4));
    wait_for_stats(bus, &dead, 5, 0).await;
    let missing = format!("{dead}.no-such-queue");
    assert!(bus.sweep(&missing, 10, &mut recorder(keep)).await.is_err());
}

//! The RabbitMQ bus against the real broker (`WXGATE__RABBITMQ__URL`, default
//! amqp://guest:guest@127.0.0.1:5672/%2f): the queue type of every queue, and a topology the
//! broker refuses.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::time::Duration;

use bytes::Bytes;
use lapin::{Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;
use wxgate_core::Config;
use wxgate_core::bus::{Bus, Message, Properties};
use wxgate_core::rabbit::{DeclareError, RabbitBus, declare};
use wxgate_core::topology::Topology;
use wxgate_tests::{Namespace, rabbitmq_url as url};

async fn connect() -> Connection {
    Connection::connect(&url(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RabbitMQ is not reachable at {}: {e}; start it with: rabbitmq-server -detached",
                url()
            )
        })
}

fn config(ns: &str, queue_type: &str) -> Config {
    Config::from_toml(
        &format!(
            "namespace = \"{ns}\"\n[rabbitmq]\nurl = \"{}\"\nqueue_type = \"{queue_type}\"\n[worker]\nretry_delays_ms = [100, 200]\n",
            url()
        ),
        |_| None,
    )
    .unwrap()
}

#[tokio::test]
async fn every_queue_takes_the_configured_queue_type() {
    let namespace = Namespace::random(2);
    let ns = namespace.ns.clone();
    let quorum = Topology::for_config(&config(&ns, "quorum"));
    let connection = connect().await;
    declare(&connection.create_channel().await.unwrap(), &quorum)
        .await
        .unwrap();
    // Declaring each queue again as a classic queue is refused naming `x-queue-type`: the
    // broker holds every one of them as a quorum queue.
    let classic = Topology::for_config(&config(&ns, "classic"));
    assert_eq!(classic.queues.len(), 4, "worker, two retry queues, dead");
    for queue in &classic.queues {
        let one = Topology {
            exchange: classic.exchange.clone(),
            queues: vec![queue.clone()],
            fanouts: Vec::new(),
        };
        let channel = connection.create_channel().await.unwrap();
        match declare(&channel, &one).await {
            Err(DeclareError::Mismatch(mismatch)) => {
                assert_eq!(mismatch.kind, "queue");
                assert_eq!(mismatch.name, queue.name);
                assert_eq!(mismatch.argument, "x-queue-type", "{mismatch}");
            }
            other => panic!("{} was declared as a quorum queue: {other:?}", queue.name),
        }
    }
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn a_queue_with_other_arguments_makes_the_bus_give_up_naming_it() {
    let namespace = Namespace::random(2);
    let ns = namespace.ns.clone();
    let config = config(&ns, "quorum");
    let topology = Topology::for_config(&config);
    // Someone declared the worker queue as a classic queue before.
    namespace.declare_classic_worker_queue().await;

    let stop = CancellationToken::new();
    let bus = RabbitBus::connect(&config.rabbitmq.url, topology, stop.clone());
    let mismatch = tokio::time::timeout(Duration::from_secs(30), bus.gave_up())
        .await
        .expect("the bus gives up instead of retrying forever");
    assert_eq!(mismatch.kind, "queue");
    assert_eq!(mismatch.name, format!("{ns}.worker"));
    assert_eq!(mismatch.argument, "x-queue-type");
    let message = mismatch.to_string();
    assert!(
        message.contains(&format!("`{ns}.worker`")) && message.contains("`x-queue-type`"),
        "the message names the queue and the argument: {message}"
    );
    assert!(!wxgate_core::Bus::is_ready(&bus));
    stop.cancel();
}

/// Publishes `id` to the events exchange; the broker's answer.
async fn publish(bus: &RabbitBus, exchange: &str, id: &str) -> Result<(), String> {
    let message = Message {
        body: Bytes::from(format!("body of {id}")),
        properties: Properties {
            message_id: Some(id.to_owned()),
            ..Properties::default()
        },
    };
    match tokio::time::timeout(
        Duration::from_secs(10),
        Bus::publish(bus, exchange, "demo.msg.text", &message),
    )
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no confirm within 10 s".to_owned()),
    }
}

/// A RabbitMQ cluster of the test's own, a fresh namespace, a config on all its nodes and its
/// topology.
async fn on_a_cluster() -> (wxgate_tests::RabbitCluster, String, Config, Topology) {
    let cluster = wxgate_tests::RabbitCluster::up()
        .await
        .expect("a RabbitMQ cluster of the test's own");
    let ns = format!("t{:016x}", rand::random::<u64>());
    let config = Config::from_toml(
        &format!(
            "namespace = \"{ns}\"\n[rabbitmq]\nurls = {:?}\n",
            cluster.amqp_urls()
        ),
        |_| None,
    )
    .unwrap();
    let topology = Topology::for_config(&config);
    (cluster, ns, config, topology)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_moves_to_another_node_and_keeps_every_confirmed_event() {
    let (cluster, ns, config, topology) = on_a_cluster().await;
    let stop = CancellationToken::new();
    let exchange = topology.exchange.clone();
    let bus = RabbitBus::connect_any(&config.rabbitmq.urls, topology, stop.clone());
    assert!(
        Bus::wait_ready(&bus, Duration::from_secs(60)).await,
        "the bus connects to one of the three nodes"
    );
    let first = bus.node().expect("connected to a node");

    let mut confirmed = Vec::new();
    for i in 0..50 {
        let id = format!("before-{i}");
        publish(&bus, &exchange, &id).await.unwrap();
        confirmed.push(id);
    }
    // The node the bus is connected to goes away; the bus moves to another one.
    cluster.stop_node(first).await.expect("the node stopped");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut i = 0;
    while confirmed.len() < 100 {
        let id = format!("after-{i}");
        i += 1;
        match publish(&bus, &exchange, &id).await {
            Ok(()) => confirmed.push(id),
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no publish confirmed within 90 s of the node's stop: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let now = bus.node().expect("connected again");
    assert_ne!(now, first, "the bus moved to another node");

    // Every confirmed event is in the worker queue, through a consumer on the new node.
    let mut stream = Bus::consume(&bus, &format!("{ns}.worker"), 50)
        .await
        .expect("consuming the worker queue");
    let mut seen = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while confirmed.iter().any(|id| !seen.contains(id)) {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let delivery = tokio::time::timeout(remaining, stream.recv())
            .await
            .unwrap_or_else(|_| {
                let missing: Vec<_> = confirmed.iter().filter(|id| !seen.contains(*id)).collect();
                panic!("confirmed events missing after 60 s: {missing:?}")
            })
            .expect("the stream ended");
        seen.insert(
            delivery
                .message
                .properties
                .message_id
                .clone()
                .unwrap_or_default(),
        );
        delivery.ack().await.unwrap();
    }
    stream.stop();
    stop.cancel();
    cluster.down().await.expect("the cluster stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_under_load_on_the_killed_leaders_node_publishes_again_while_it_stays_down() {
    // RabbitMQ 3.10 nacked every publish of a channel opened during the quorum queue's
    // leader election (the old leader's node killed) for as long as that node stayed down;
    // the bus replaces such a connection.
    let (cluster, ns, config, topology) = on_a_cluster().await;
    let stop = CancellationToken::new();
    let exchange = topology.exchange.clone();
    // The queue exists once one bus has declared it; then find a bus on its leader's node.
    let first = RabbitBus::connect_any(&config.rabbitmq.urls, topology.clone(), stop.clone());
    assert!(Bus::wait_ready(&first, Duration::from_secs(60)).await);
    let leader = cluster
        .queue_leader(&format!("{ns}.worker"))
        .await
        .expect("the worker queue's leader");
    let mut bus = first;
    for _ in 0..50 {
        if bus.node() == Some(leader) {
            break;
        }
        bus.close().await;
        bus = RabbitBus::connect_any(&config.rabbitmq.urls, topology.clone(), stop.clone());
        assert!(Bus::wait_ready(&bus, Duration::from_secs(60)).await);
    }
    assert_eq!(bus.node(), Some(leader), "a bus on the leader's node");
    let bus = std::sync::Arc::new(bus);

    // Load: 16 publishers, as a gateway under callbacks has.
    let load = CancellationToken::new();
    let mut publishers = tokio::task::JoinSet::new();
    for p in 0..16 {
        let (bus, exchange, load) = (bus.clone(), exchange.clone(), load.clone());
        publishers.spawn(async move {
            let mut i = 0_u64;
            while !load.is_cancelled() {
                let _ = publish(&bus, &exchange, &format!("load-{p}-{i}")).await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }
    publish(&bus, &exchange, "before").await.unwrap();
    cluster
        .kill_node(leader)
        .await
        .expect("the leader's node killed");
    // The node stays down; publishes must be confirmed again, on another node.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    while let Err(e) = publish(&bus, &exchange, &format!("after-{i}")).await {
        i += 1;
        assert!(
            tokio::time::Instant::now() < deadline,
            "no publish confirmed within 60 s of the leader's loss: {e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(bus.node(), Some(leader));
    load.cancel();
    while publishers.join_next().await.is_some() {}
    stop.cancel();
    cluster.down().await.expect("the cluster stopped");
}

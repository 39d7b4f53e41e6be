//! The RabbitMQ bus against the real broker (`WXGATE__RABBITMQ__URL`, default
//! amqp://guest:guest@127.0.0.1:5672/%2f): the queue type of every queue, and a topology the
//! broker refuses.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;
use wxgate_core::Config;
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

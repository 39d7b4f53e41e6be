//! The RabbitMQ bus against the real broker (`WXGATE__RABBITMQ__URL`, default
//! amqp://guest:guest@127.0.0.1:5672/%2f): the queue type of every queue, and a topology the
//! broker refuses.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::time::Duration;

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;
use wxgate_core::Config;
use wxgate_core::rabbit::{DeclareError, RabbitBus, declare};
use wxgate_core::topology::Topology;

fn url() -> String {
    std::env::var("WXGATE__RABBITMQ__URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

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

/// Deletes every queue and the exchange of a namespace's topology however the test ends, on
/// a runtime of its own (a panicking test's runtime may be unusable).
struct Cleanup(Topology);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let topology = self.0.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(connection) =
                    Connection::connect(&url(), ConnectionProperties::default()).await
                else {
                    return;
                };
                if let Ok(channel) = connection.create_channel().await {
                    for queue in &topology.queues {
                        let _ = channel
                            .queue_delete(queue.name.as_str().into(), QueueDeleteOptions::default())
                            .await;
                    }
                    let _ = channel
                        .exchange_delete(topology.exchange.as_str().into(), Default::default())
                        .await;
                }
                let _ = connection.close(200, "cleanup".into()).await;
            });
        })
        .join();
    }
}

#[tokio::test]
async fn every_queue_takes_the_configured_queue_type() {
    let ns = format!("t{:016x}", rand::random::<u64>());
    let quorum = Topology::for_config(&config(&ns, "quorum"));
    let _cleanup = Cleanup(quorum.clone());
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
    let ns = format!("t{:016x}", rand::random::<u64>());
    let config = config(&ns, "quorum");
    let topology = Topology::for_config(&config);
    let _cleanup = Cleanup(topology.clone());
    // Someone declared the worker queue as a classic queue before.
    let connection = connect().await;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(b"classic".to_vec())),
    );
    connection
        .create_channel()
        .await
        .unwrap()
        .queue_declare(
            format!("{ns}.worker").as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .unwrap();

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
    let _ = connection.close(200, "done".into()).await;
}

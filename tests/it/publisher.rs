//! The lean AMQP publisher (`wxgate_core::amqp`) when the broker stops reading (a memory or
//! disk alarm blocks publishers; here a stalled TCP proxy): publishes fail at once when the
//! unsent buffer is full instead of holding memory for as long as the stall lasts.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use wxgate_core::amqp::Publisher;
use wxgate_core::bus::{Properties, PublishError};
use wxgate_tests::{TcpProxy, rabbitmq_url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_fail_fast_when_the_broker_stops_reading() {
    let proxy = TcpProxy::in_front_of(&rabbitmq_url()).await;
    let stop = CancellationToken::new();
    let publisher = Publisher::connect(&proxy.url_for(&rabbitmq_url()), stop.clone())
        .await
        .expect("publisher connects through the proxy");
    proxy.stall();

    // 100 MiB against a 64 MiB buffer (plus what the sockets hold): the last ones cannot fit.
    let body = vec![0x5a_u8; 1 << 20];
    let mut publishes = JoinSet::new();
    for i in 0..100 {
        let publisher = publisher.clone();
        let body = body.clone();
        publishes.spawn(async move {
            let properties = Properties {
                message_id: Some(format!("m{i}")),
                ..Properties::default()
            };
            publisher
                .publish("amq.topic", "stalled", &properties, &body)
                .await
        });
    }
    let first = tokio::time::timeout(Duration::from_secs(10), publishes.join_next())
        .await
        .expect("a publish is refused while the broker is stalled")
        .expect("a publish finished")
        .expect("the publish task did not panic");
    match first {
        Err(PublishError::Backlogged) => {}
        other => panic!("expected a full buffer, got {other:?}"),
    }
    // Nothing stalled was confirmed; closing fails the rest.
    publisher.close();
    while let Some(result) = publishes.join_next().await {
        assert!(result.expect("no panic").is_err());
    }
    stop.cancel();
}

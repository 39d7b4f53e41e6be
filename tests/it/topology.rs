//! A broker holding the worker queue with other arguments than the configuration declares:
//! the gateway stops with an error naming the queue and the argument instead of retrying
//! forever (the binary turns it into exit status 2).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wx_gateway::ServeError;
use wxgate_core::Config;
use wxgate_tests::{Namespace, rabbitmq_url, redis_url};

#[tokio::test]
async fn a_worker_queue_of_another_type_stops_the_gateway_naming_it() {
    let namespace = Namespace::random(0);
    let ns = namespace.ns.clone();
    namespace.declare_classic_worker_queue().await;

    let config = Config::from_toml(
        &format!(
            "namespace = \"{ns}\"\n[redis]\nurl = \"{}\"\n[rabbitmq]\nurl = \"{}\"\nqueue_type = \"quorum\"\n[gateway]\nlisten = \"127.0.0.1:0\"\n",
            redis_url(),
            rabbitmq_url()
        ),
        |_| None,
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        wx_gateway::serve(Arc::new(config), listener, CancellationToken::new()),
    )
    .await
    .expect("the gateway stops by itself");
    match result {
        Err(ServeError::Topology(mismatch)) => {
            assert_eq!(mismatch.name, format!("{ns}.worker"));
            assert_eq!(mismatch.argument, "x-queue-type");
        }
        other => panic!("expected a topology mismatch, got {other:?}"),
    }
}

//! Graceful shutdown (docs/contract.md §1.1, "SIGTERM"): stop accepting, finish the callbacks in
//! flight, record their answers, then return.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wxgate_tests::{RawResponse, TestEnv, event_id_of, eventually, nonce, now_s, query};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_callback_in_flight() {
    let mut env = TestEnv::start().await;
    let mut events = env.consumer().await;
    let xml = env.text(&env.plain, "in flight at shutdown");
    let timestamp = now_s().to_string();
    let nonce = nonce();
    let signature = wechat::url_signature(&env.plain.token, &timestamp, &nonce);
    let path = format!(
        "/wx/plain?{}",
        query(&[
            ("signature", &signature),
            ("timestamp", &timestamp),
            ("nonce", &nonce),
        ])
    );

    // `Expect: 100-continue` makes the gateway say when it starts reading the body, that
    // is, when the callback is being handled: the moment to cancel.
    let mut stream = TcpStream::connect(env.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: wxgate\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        xml.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let interim = RawResponse::read(&mut stream, WAIT).await;
    assert_eq!(interim.status, 100, "the gateway asks for the body");

    env.cancel();
    let addr = env.addr;
    eventually(
        WAIT,
        "the gateway to stop accepting connections",
        move || async move {
            match TcpStream::connect(addr).await {
                Err(_) => Ok(()),
                Ok(_) => Err("still accepting"),
            }
        },
    )
    .await;

    stream.write_all(xml.as_bytes()).await.unwrap();
    let response = RawResponse::read(&mut stream, WAIT).await;
    assert_eq!(response.status, 200, "the callback in flight completes");
    assert_eq!(response.body, b"success");
    drop(stream);

    env.stopped(WAIT)
        .await
        .expect("serve returns Ok after draining");
    let event_id = event_id_of("plain", &xml);
    let (before, received) = events.until(&event_id, WAIT).await;
    assert!(before.is_empty());
    assert_eq!(received.event.raw_xml, xml);
    // Answers are recorded after they are sent; stopping flushes them, so WeChat's retry
    // of the last callback finds its answer instead of being published again.
    assert_eq!(
        env.redis_get(&env.dedup_key(&event_id)).await.as_deref(),
        Some(b"Asuccess".as_slice()),
        "the answer was recorded before the gateway stopped"
    );
    env.cleanup().await;
}

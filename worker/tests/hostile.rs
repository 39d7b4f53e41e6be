//! Hostile input at the worker's listeners (issue 15): on `worker.http_listen` slow headers,
//! connections past the cap, header floods and a lying Content-Length; on `worker.grpc_listen`
//! an oversized message, bytes that are not HTTP/2, a flood of streams, connections that
//! never send the preface and connections past the cap. Each is refused, cut or queued, and
//! the worker goes on answering `/healthz` and gRPC health.

// Test support: a failed step fails the test at once, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use wxgate_proto::v1::SubscribeRequest;
use wxgate_proto::v1::events_client::EventsClient;
use wxgate_tests::{read_until_closed, statuses};

async fn assert_healthz(addr: SocketAddr, after: &str) {
    let (status, body) = http_get(addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"), "after {after}");
}

/// A harness whose worker's health listener allows 4 connections and 500 ms for headers.
async fn small_http_worker() -> (Harness, SocketAddr) {
    let mut h = Harness::new(&[
        ("WXGATE__WORKER__HTTP_MAX_CONNECTIONS", "4"),
        ("WXGATE__WORKER__HTTP_HEADER_TIMEOUT_MS", "500"),
    ])
    .await;
    let addr = h.start_worker().await;
    (h, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_slow_headers_are_cut_while_healthz_is_answered() {
    let (h, addr) = small_http_worker().await;
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: worker\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let (mut reader, mut writer) = slow.split();
    // One byte every 50 ms: the head would take 5 s.
    let write = async {
        for byte in request {
            if writer.write_all(&[*byte]).await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    };
    // The worker must close the connection (still open after WAIT fails the test); the
    // trickle lasts far longer than the 500 ms header deadline.
    let read = read_until_closed(&mut reader, WAIT);
    let (cut, ()) = tokio::join!(
        async {
            tokio::select! {
                seen = read => (seen, false),
                finished = write => (Vec::new(), finished),
            }
        },
        assert_healthz(addr, "nothing: while a slow client trickles")
    );
    let (seen, wrote_everything) = cut;
    assert!(!wrote_everything, "the slow request was never cut");
    assert!(
        statuses(&seen).iter().all(|s| *s >= 400),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
    drop(slow);
    assert_healthz(addr, "a slow client").await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connections_past_the_cap_wait_and_are_served_once_slots_free() {
    let mut h = Harness::new(&[
        ("WXGATE__WORKER__HTTP_MAX_CONNECTIONS", "4"),
        ("WXGATE__WORKER__HTTP_HEADER_TIMEOUT_MS", "20000"),
    ])
    .await;
    let addr = h.start_worker().await;
    let mut holders = Vec::new();
    for _ in 0..4 {
        holders.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut waiting = TcpStream::connect(addr).await.unwrap();
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut excess = Vec::new();
    for _ in 0..1000 {
        excess.push(TcpStream::connect(addr).await.unwrap());
    }
    // Past the cap a connection waits in the listen queue: no answer, no close.
    let mut first = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), waiting.read(&mut first)).await;
    assert!(early.is_err(), "answered or closed past the cap: {early:?}");
    drop(excess);
    drop(holders);
    let seen = read_until_closed(&mut waiting, WAIT).await;
    assert_eq!(
        statuses(&seen),
        [200],
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
    assert_healthz(addr, "a connection flood").await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_header_floods_and_lying_lengths_are_refused() {
    let (h, addr) = small_http_worker().await;
    let many: String = (0..1000).map(|i| format!("X-Flood-{i}: {i}\r\n")).collect();
    let huge = format!("X-Huge: {}\r\n", "a".repeat(1024 * 1024));
    for (name, extra) in [("1,000 headers", many), ("a 1 MiB header", huge)] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET /healthz HTTP/1.1\r\nHost: worker\r\n{extra}\r\n");
        let _ = stream.write_all(request.as_bytes()).await;
        let got = statuses(&read_until_closed(&mut stream, WAIT).await);
        assert!(
            got.is_empty() || got == [431],
            "{name}: got {got:?}, want 431 or a close"
        );
        assert_healthz(addr, name).await;
    }
    // A Content-Length shorter than the body: the rest is not a request (400, then close).
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: worker\r\nContent-Length: 2\r\n\r\nnot a request at all\r\n\r\n")
        .await
        .unwrap();
    let got = statuses(&read_until_closed(&mut stream, WAIT).await);
    assert!(
        got.first() == Some(&200) && got[1..].iter().all(|s| *s == 400),
        "Content-Length shorter than the body: got {got:?}"
    );
    assert_healthz(addr, "a short Content-Length").await;
    // Longer than the body: the connection is cut by the header deadline of the next
    // request at the latest, not held.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: worker\r\nContent-Length: 100\r\n\r\nshort")
        .await
        .unwrap();
    let seen = read_until_closed(&mut stream, WAIT).await;
    assert!(
        statuses(&seen).iter().all(|s| *s == 200),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
    assert_healthz(addr, "a long Content-Length").await;
    h.finish().await;
}

/// Polls gRPC health on `channel` until SERVING (the worker reports it once a second); panics
/// after [`WAIT`] or when a check is not answered.
async fn assert_serving(channel: tonic::transport::Channel, after: &str) {
    let mut health = HealthClient::new(channel);
    let deadline = Instant::now() + WAIT;
    loop {
        let status = tokio::time::timeout(
            WAIT,
            health.check(HealthCheckRequest {
                service: String::new(),
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("no health answer after {after}"))
        .unwrap_or_else(|e| panic!("health failed after {after}: {e}"))
        .into_inner()
        .status;
        if status == ServingStatus::Serving as i32 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not SERVING after {after}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_an_oversized_message_is_refused_before_it_is_decoded() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let channel = h.channel(0).await;
    assert_serving(channel.clone(), "start").await;
    // 5 MiB against tonic's 4 MiB decoding limit. tonic answers OUT_OF_RANGE, not the
    // RESOURCE_EXHAUSTED of the gRPC spec; the message is refused from its length prefix.
    let status = status_of(
        HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: "x".repeat(5 * 1024 * 1024),
            })
            .await,
    );
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    assert_serving(channel, "an oversized message").await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bytes_that_are_not_http2_close_the_connection() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let addr = h.grpc_addr(0);
    for (name, garbage) in [
        (
            "HTTP/1.1",
            b"GET / HTTP/1.1\r\nHost: worker\r\n\r\n".to_vec(),
        ),
        (
            "random bytes",
            (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ),
        (
            "a preface, then a frame of 16 MiB",
            [
                &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
                &[0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01],
            ]
            .concat(),
        ),
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream.write_all(&garbage).await;
        read_until_closed(&mut stream, WAIT).await;
        assert_serving(h.channel(0).await, name).await;
    }
    h.finish().await;
}

/// The server's `SETTINGS_MAX_CONCURRENT_STREAMS`, read off a raw HTTP/2 handshake.
async fn advertised_max_concurrent_streams(addr: SocketAddr) -> Option<u32> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut header = [0u8; 9];
    tokio::time::timeout(WAIT, stream.read_exact(&mut header))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(header[3], 4, "the server's first frame is SETTINGS");
    let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).await.unwrap();
    payload.chunks_exact(6).find_map(|setting| {
        (u16::from_be_bytes([setting[0], setting[1]]) == 3)
            .then(|| u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_a_flood_of_streams_is_bounded_and_health_still_answers() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let addr = h.grpc_addr(0);
    assert_eq!(
        advertised_max_concurrent_streams(addr).await,
        Some(wx_worker::grpc::MAX_CONCURRENT_STREAMS),
        "the server bounds the streams of one connection"
    );
    // 1,000 Subscribe opens on one connection that never send their start request: the
    // server holds at most MAX_CONCURRENT_STREAMS of them, the client queues the rest.
    let flood = h.stream_channel(0).await;
    let mut opens = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let channel = flood.clone();
        opens.spawn(async move {
            let never = futures_util::stream::pending::<SubscribeRequest>();
            EventsClient::new(channel)
                .subscribe(authed(ADMIN_KEY, never))
                .await
        });
    }
    // Another connection is answered meanwhile, repeatedly.
    for i in 0..20 {
        assert_serving(h.channel(0).await, &format!("stream flood, check {i}")).await;
    }
    opens.abort_all();
    while opens.join_next().await.is_some() {}
    drop(flood);
    assert_serving(h.channel(0).await, "the stream flood ended").await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_connections_that_never_send_the_preface_are_closed_at_the_deadline() {
    let mut h = Harness::new(&[("WXGATE__WORKER__GRPC_PREFACE_TIMEOUT_MS", "500")]).await;
    h.start_ready_worker().await;
    let addr = h.grpc_addr(0);
    // Silent, and a third of the preface: the worker sends its SETTINGS, then closes both
    // (read_until_closed fails the test if they are still open after WAIT). Without the
    // deadline they were held for as long as the client liked.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial.write_all(b"PRI * HT").await.unwrap();
    for stream in [&mut silent, &mut partial] {
        read_until_closed(stream, WAIT).await;
    }
    assert_serving(h.channel(0).await, "connections that never spoke").await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_connections_past_the_cap_wait_and_are_served_once_slots_free() {
    let mut h = Harness::new(&[
        ("WXGATE__WORKER__GRPC_MAX_CONNECTIONS", "4"),
        ("WXGATE__WORKER__GRPC_PREFACE_TIMEOUT_MS", "60000"),
    ])
    .await;
    h.start_ready_worker().await;
    let addr = h.grpc_addr(0);
    let mut holders = Vec::new();
    for _ in 0..4 {
        holders.push(TcpStream::connect(addr).await.unwrap());
    }
    // A client past the cap: its handshake waits in the listen queue, unanswered.
    let mut waiting = TcpStream::connect(addr).await.unwrap();
    waiting
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    // (An answer cannot be awaited to be absent; a worker without the cap answers within
    // milliseconds, so half a second tells the two apart.)
    let mut header = [0u8; 9];
    let early = tokio::time::timeout(Duration::from_millis(500), waiting.read(&mut header)).await;
    assert!(early.is_err(), "answered past the cap: {early:?}");
    drop(holders);
    tokio::time::timeout(WAIT, waiting.read_exact(&mut header))
        .await
        .expect("served once a slot is free")
        .unwrap();
    assert_eq!(header[3], 4, "the server's first frame is SETTINGS");
    drop(waiting);
    assert_serving(h.channel(0).await, "connections past the cap").await;
    h.finish().await;
}

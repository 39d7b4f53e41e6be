//! Hostile input at the HTTP edge (issue 15): slow headers, connection floods, header floods,
//! pipelining behind a broken request, bodies that lie about their length, repeated query
//! parameters and XML built to exhaust the parser. Each attack is refused (or cut) without
//! publishing anything, and the gateway goes on answering good callbacks; `bad_input.rs`
//! covers the single-defect callbacks of the pipeline's steps.
//!
//! After every attack, [`TestEnv::marker`] pushes a good callback: its 200 shows the gateway
//! still serves, and the empty list of events before it shows the attack published nothing.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wxgate_tests::{Options, RawResponse, TestEnv, nonce, now_s, query};
use wxgate_tests::{read_until_closed, statuses};

const WAIT: Duration = Duration::from_secs(10);

/// `/wx/plain?signature&timestamp&nonce`, signed now with the plain account's token.
fn signed_path(env: &TestEnv) -> String {
    let timestamp = now_s().to_string();
    let nonce = nonce();
    let signature = wechat::url_signature(&env.plain.token, &timestamp, &nonce);
    format!(
        "/wx/plain?{}",
        query(&[
            ("signature", &signature),
            ("timestamp", &timestamp),
            ("nonce", &nonce),
        ])
    )
}

/// A complete, good POST of `body` to `path`, keep-alive unless `close`.
fn post(path: &str, body: &[u8], close: bool) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: wxgate\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// Asserts that nothing was published since `events` last looked and a good callback is
/// answered 200 now.
async fn nothing_published_and_still_serving(
    env: &TestEnv,
    events: &mut wxgate_tests::EventConsumer,
    attack: &str,
) {
    let published = env.marker(events).await;
    assert!(
        published.is_empty(),
        "{attack}: published {:?}",
        published
            .iter()
            .map(|r| &r.event.raw_xml)
            .collect::<Vec<_>>()
    );
}

/// Sockets of `port` (either end, listener excepted) that a process still holds: entries of
/// `/proc/net/tcp` with the port on either side and an inode. A socket whose descriptor was
/// closed has inode 0 while the kernel finishes with it (TIME_WAIT, LAST_ACK), so it does not
/// count. Unlike a count of this process's descriptors, it ignores what the tests running
/// alongside open and close meanwhile.
fn sockets_held_on(port: u16) -> usize {
    const LISTEN: &str = "0A";
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let on_port = |field: Option<&&str>| {
                field.and_then(|f| f.rsplit_once(':')).map(|(_, p)| p) == Some(port.as_str())
            };
            (on_port(fields.get(1)) || on_port(fields.get(2)))
                && fields.get(3) != Some(&LISTEN)
                && fields.get(9).is_some_and(|inode| *inode != "0")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_at_the_header_deadline_while_others_are_served() {
    let env = TestEnv::with(Options::new().gateway("header_timeout_ms = 1000")).await;
    let mut events = env.consumer().await;
    let xml = env.text(&env.plain, "slowloris");
    let request = post(&signed_path(&env), xml.as_bytes(), true);
    let mut slow = TcpStream::connect(env.addr).await.unwrap();
    // One byte every 50 ms: the head alone would take more than 10 s.
    let (mut reader, mut writer) = slow.split();
    let write = async {
        for byte in &request {
            if writer.write_all(&[*byte]).await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    };
    // The gateway must close the connection: still open after WAIT fails the test. The
    // trickle lasts far longer than both, so a close before it ends is the header deadline.
    let read = read_until_closed(&mut reader, WAIT);
    // A good callback on another connection is answered while the slow one trickles. On a
    // connection of its own, closed after the answer: a keep-alive connection left in the
    // pusher's pool would reach the 1 s header deadline about when the marker below reuses
    // it, and the gateway's close would fail the marker (it did, under load).
    let good = async {
        let xml = env.text(&env.plain, "answered meanwhile");
        let request = post(&signed_path(&env), xml.as_bytes(), true);
        vec![
            wxgate_tests::raw_exchange(env.addr, &request, WAIT)
                .await
                .status,
        ]
    };
    let (seen, good) = tokio::join!(
        async {
            tokio::select! {
                seen = read => (seen, false),
                finished = write => (Vec::new(), finished),
            }
        },
        good
    );
    assert_eq!(good, [200], "a good callback is answered meanwhile");
    let (seen, wrote_everything) = seen;
    assert!(!wrote_everything, "the slow request was never cut");
    assert!(
        statuses(&seen).iter().all(|s| *s >= 400),
        "the slow request was answered: {:?}",
        String::from_utf8_lossy(&seen)
    );
    drop(slow);
    // The good callback above was published; the slow one was not.
    let published = env.marker(&mut events).await;
    assert_eq!(published.len(), 1, "only the good callback is published");
    assert!(!published[0].event.raw_xml.contains("slowloris"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_in_the_backlog_and_are_served_once_slots_free() {
    const CAP: usize = 8;
    const EXCESS: usize = 1000;
    let env = TestEnv::with(
        Options::new()
            .gateway(&format!("max_connections = {CAP}"))
            .gateway("header_timeout_ms = 20000"),
    )
    .await;
    let mut events = env.consumer().await;

    // Idle connections take every slot (the header deadline is far away).
    let mut holders = Vec::new();
    for _ in 0..CAP {
        holders.push(TcpStream::connect(env.addr).await.unwrap());
    }
    // Next in the queue: a good callback, sent whole.
    let xml = env.text(&env.plain, "waited for a slot");
    let mut waiting = TcpStream::connect(env.addr).await.unwrap();
    waiting
        .write_all(&post(&signed_path(&env), xml.as_bytes(), true))
        .await
        .unwrap();
    // And 1,000 more behind it: the kernel completes their handshakes in the listen queue.
    let mut excess = Vec::new();
    for _ in 0..EXCESS {
        excess.push(TcpStream::connect(env.addr).await.unwrap());
    }
    // The waiting callback is not served while every slot is held: it waits, it is not
    // refused (no answer, no close).
    let mut first = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), waiting.read(&mut first)).await;
    assert!(
        early.is_err(),
        "a connection past the cap was answered or closed: {early:?}"
    );
    // The gateway itself is fine: the queued connections cost it nothing.
    assert!(env.config.gateway.max_connections == CAP);

    // The excess leave, then the holders: the waiting callback gets a slot and is answered.
    drop(excess);
    drop(holders);
    let response = RawResponse::read(&mut waiting, WAIT).await;
    assert_eq!(
        response.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&response.body)
    );
    drop(waiting);
    let (before, _) = events
        .until(&wxgate_tests::event_id_of("plain", &xml), WAIT)
        .await;
    assert!(before.is_empty());
    nothing_published_and_still_serving(&env, &mut events, "connection flood").await;

    // Every socket of the flood is released, client and server ends alike (both ends of the
    // keep-alive connections pooled by the test's two HTTP clients may remain).
    let port = env.addr.port();
    let deadline = Instant::now() + WAIT;
    loop {
        let held = sockets_held_on(port);
        if held <= 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{held} sockets of port {port} still held after the flood"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.cleanup().await;
}

/// Sends `request` on a new connection; returns everything received until the close.
async fn exchange_until_close(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The gateway may answer and close before it read everything: a failed write is fine.
    let _ = stream.write_all(request).await;
    read_until_closed(&mut stream, WAIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_floods_are_refused_with_431_or_a_close() {
    let env = TestEnv::start().await;
    let mut events = env.consumer().await;
    let xml = env.text(&env.plain, "header flood");
    let path = signed_path(&env);
    let many: String = (0..1000).map(|i| format!("X-Flood-{i}: {i}\r\n")).collect();
    let huge = format!("X-Huge: {}\r\n", "a".repeat(1024 * 1024));
    for (name, extra) in [("1,000 headers", many), ("a 1 MiB header", huge)] {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: wxgate\r\n{extra}Content-Length: {}\r\n\r\n",
            xml.len()
        )
        .into_bytes();
        request.extend_from_slice(xml.as_bytes());
        let seen = exchange_until_close(env.addr, &request).await;
        let got = statuses(&seen);
        assert!(
            got.is_empty() || got == [431],
            "{name}: got {got:?}, want 431 or a close"
        );
        nothing_published_and_still_serving(&env, &mut events, name).await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_pipelined_behind_a_broken_one_are_not_processed() {
    let env = TestEnv::with(Options::new().gateway("max_body_bytes = 1024")).await;
    let mut events = env.consumer().await;
    let behind = |env: &TestEnv| {
        let xml = env.text(&env.plain, "pipelined behind a broken request");
        post(&signed_path(env), xml.as_bytes(), false)
    };
    // A header line without a colon; a Content-Length that is not a number; two different
    // Content-Lengths; a body declared over max_body_bytes whose "body" is the next request.
    let path = signed_path(&env);
    let cases: [(&str, String, &[u16]); 4] = [
        (
            "header without a colon",
            format!("POST {path} HTTP/1.1\r\nHost: wxgate\r\nbroken header\r\n\r\n"),
            &[400],
        ),
        (
            "Content-Length not a number",
            format!("POST {path} HTTP/1.1\r\nHost: wxgate\r\nContent-Length: 12a\r\n\r\n"),
            &[400],
        ),
        (
            "two Content-Lengths",
            format!(
                "POST {path} HTTP/1.1\r\nHost: wxgate\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n"
            ),
            &[400],
        ),
        (
            "Content-Length over max_body_bytes",
            format!("POST {path} HTTP/1.1\r\nHost: wxgate\r\nContent-Length: 1000000\r\n\r\n"),
            &[413],
        ),
    ];
    for (name, broken, want) in cases {
        let mut request = broken.into_bytes();
        request.extend_from_slice(&behind(&env));
        request.extend_from_slice(&behind(&env));
        let seen = exchange_until_close(env.addr, &request).await;
        assert_eq!(
            statuses(&seen),
            want,
            "{name}: {:?}",
            String::from_utf8_lossy(&seen)
        );
        nothing_published_and_still_serving(&env, &mut events, name).await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_past_the_limit_is_refused_before_it_ends() {
    const MAX: usize = 1024;
    let env = TestEnv::with(Options::new().gateway(&format!("max_body_bytes = {MAX}"))).await;
    let mut events = env.consumer().await;
    // One chunk that claims 16 MiB; the client sends 4 KiB of it and then waits. The 413
    // arrives before the body ends: the gateway stopped reading at the limit.
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: wxgate\r\nTransfer-Encoding: chunked\r\n\r\n1000000\r\n",
        signed_path(&env)
    );
    let mut stream = TcpStream::connect(env.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[b'x'; 4 * MAX]).await.unwrap();
    let response = RawResponse::read(&mut stream, WAIT).await;
    assert_eq!(response.status, 413);
    drop(stream);
    nothing_published_and_still_serving(&env, &mut events, "chunked past the limit").await;

    // Many small chunks past the limit: the same.
    let mut request = format!(
        "POST {} HTTP/1.1\r\nHost: wxgate\r\nTransfer-Encoding: chunked\r\n\r\n",
        signed_path(&env)
    )
    .into_bytes();
    for _ in 0..(4 * MAX) {
        request.extend_from_slice(b"1\r\nx\r\n");
    }
    let mut stream = TcpStream::connect(env.addr).await.unwrap();
    // The gateway answers and closes once past the limit, possibly before it has read all
    // of this: a failed write is fine, the answer is read all the same.
    let _ = stream.write_all(&request).await;
    let response = RawResponse::read(&mut stream, WAIT).await;
    assert_eq!(response.status, 413);
    drop(stream);
    nothing_published_and_still_serving(&env, &mut events, "many chunks past the limit").await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_that_lies_is_refused_and_publishes_nothing() {
    // The default budget (3 s) and publish timeout (2 s): a shorter publish timeout fails the
    // marker callbacks when a loaded broker confirms slowly.
    let env = TestEnv::start().await;
    let mut events = env.consumer().await;

    // Shorter than the body: the first 10 bytes are not a message (400); the rest is not a
    // request (400, and the connection closes).
    let xml = env.text(&env.plain, "content-length too short");
    let mut request = format!(
        "POST {} HTTP/1.1\r\nHost: wxgate\r\nContent-Length: 10\r\n\r\n",
        signed_path(&env)
    )
    .into_bytes();
    request.extend_from_slice(xml.as_bytes());
    let seen = exchange_until_close(env.addr, &request).await;
    let got = statuses(&seen);
    assert!(
        !got.is_empty() && got.iter().all(|s| *s == 400),
        "Content-Length shorter than the body: got {got:?}"
    );
    nothing_published_and_still_serving(&env, &mut events, "Content-Length too short").await;

    // Longer than the body, and the client ends its side: the body cannot be read (400).
    let xml = env.text(&env.plain, "content-length too long");
    let mut request = format!(
        "POST {} HTTP/1.1\r\nHost: wxgate\r\nContent-Length: {}\r\n\r\n",
        signed_path(&env),
        xml.len() + 100
    )
    .into_bytes();
    request.extend_from_slice(xml.as_bytes());
    let mut stream = TcpStream::connect(env.addr).await.unwrap();
    stream.write_all(&request).await.unwrap();
    stream.shutdown().await.unwrap();
    let response = RawResponse::read(&mut stream, WAIT).await;
    assert_eq!(response.status, 400, "Content-Length longer, then EOF");
    drop(stream);
    nothing_published_and_still_serving(&env, &mut events, "Content-Length too long, EOF").await;

    // Longer than the body, and the client waits: the request budget ends it (503, as any
    // body too slow to arrive), and the connection is not held beyond it.
    let mut stream = TcpStream::connect(env.addr).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let response = RawResponse::read(&mut stream, WAIT).await;
    assert_eq!(response.status, 503, "Content-Length longer, client waits");
    read_until_closed(&mut stream, WAIT).await;
    drop(stream);
    nothing_published_and_still_serving(&env, &mut events, "Content-Length too long, waiting")
        .await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_query_parameters_are_refused() {
    let env = TestEnv::start().await;
    let mut events = env.consumer().await;
    let plain = &env.plain;
    let timestamp = now_s().to_string();
    let nonce = nonce();
    let signature = wechat::url_signature(&plain.token, &timestamp, &nonce);
    let wrong = "0".repeat(40);
    let signed = format!("signature={signature}&timestamp={timestamp}&nonce={nonce}");
    // Each query is valid if either copy of the repeated parameter is read: refusing them
    // is the only answer that does not depend on which one a proxy in front checked.
    let cases = [
        (
            "the same signature twice",
            format!("{signed}&signature={signature}"),
        ),
        (
            "a wrong signature first",
            format!("signature={wrong}&{signed}"),
        ),
        (
            "a wrong signature last",
            format!("{signed}&signature={wrong}"),
        ),
        ("two timestamps", format!("{signed}&timestamp=1")),
        ("two nonces", format!("{signed}&nonce={nonce}")),
    ];
    for (name, query) in &cases {
        let xml = env.text(plain, name);
        let (status, body) = env.post(&format!("/wx/plain?{query}"), xml).await;
        assert_eq!(status, 400, "{name}: {:?}", String::from_utf8_lossy(&body));
    }
    // Verification: two echostr values, either could be echoed.
    let (status, _) = env
        .get(&format!("/wx/plain?{signed}&echostr=first&echostr=second"))
        .await;
    assert_eq!(status, 400, "two echostr");
    // A parameter the gateway does not read may repeat.
    let xml = env.text(plain, "openid twice");
    let (status, _) = env
        .post(&format!("/wx/plain?{signed}&openid=a&openid=b"), xml)
        .await;
    assert_eq!(
        status, 200,
        "a repeated parameter the gateway does not read"
    );
    let published = env.marker(&mut events).await;
    assert_eq!(published.len(), 1, "only the openid callback is published");
    env.cleanup().await;
}

/// A plain text message whose `Content` is `inner` (markup, not text).
fn message_with(inner: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_plain0000000]]></ToUserName><FromUserName><![CDATA[oHostile000000000000000000000]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content>{inner}</Content><MsgId>1234567890123456</MsgId></xml>",
        now_s()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xml_built_to_exhaust_the_parser_is_refused() {
    const MAX: usize = 1024 * 1024;
    let env = TestEnv::with(Options::new().gateway(&format!("max_body_bytes = {MAX}"))).await;
    let mut events = env.consumer().await;
    let deep = message_with(&format!(
        "{}{}",
        "<a>".repeat(50_000),
        "</a>".repeat(50_000)
    ));
    let wide = message_with(&"<a/>".repeat(100_000));
    let huge = message_with(&"x".repeat(2 * MAX));
    let unclosed = message_with(&"<a>".repeat(200_000));
    let cases = [
        ("50,000 levels deep", deep, 400),
        ("100,000 elements", wide, 400),
        ("200,000 unclosed elements", unclosed, 400),
        ("2 MiB of text", huge, 413),
    ];
    for (name, xml, want) in cases {
        assert!(
            name.contains("MiB") || xml.len() <= MAX,
            "{name} fits the body limit"
        );
        // The answer comes within WAIT: the parser's limits end the parse early. For 2 MiB
        // the gateway refuses from the Content-Length and closes while the body is still
        // being written: the write may fail, the answer is read all the same.
        let mut stream = TcpStream::connect(env.addr).await.unwrap();
        let _ = stream
            .write_all(&post(&signed_path(&env), xml.as_bytes(), true))
            .await;
        let response = RawResponse::read(&mut stream, WAIT).await;
        assert_eq!(response.status, want, "{name}");
        drop(stream);
        nothing_published_and_still_serving(&env, &mut events, name).await;
    }
    env.cleanup().await;
}

//! The attacks on the worker's gRPC listener: streams past the limit, huge header blocks, an
//! oversized message, a length prefix that lies, bytes that are not HTTP/2, idle
//! connections, rapid reset and a subscriber that never reads. Each returns a one-line
//! summary of what the worker answered.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use prost::Message as _;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};
use wxgate_proto::v1::accounts_client::AccountsClient;
use wxgate_proto::v1::subscribe_request::Kind as RequestKind;
use wxgate_proto::v1::{
    Event, EventsFilter, EventsStart, ListAccountsRequest, SubscribeRequest, Text, event,
};

use wxgate_bench::{authed, queue_depth};

use super::h2raw::{self, Tally};

/// How long an attack's reader waits for the server's frames.
const LISTEN: Duration = Duration::from_secs(5);
/// Bound on one good call, a connect, or a read of an attack.
const WAIT: Duration = Duration::from_secs(10);
/// The health method: unauthenticated, so what is measured is HTTP/2, not the API keys.
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
/// A server-streaming method that waits for its request: its streams stay open.
const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";
/// SETTINGS_INITIAL_WINDOW_SIZE.
const INITIAL_WINDOW_SIZE: u16 = 0x4;

/// The worker's gRPC listener and an API key for the good calls.
pub struct Grpc {
    /// The gRPC address.
    pub addr: SocketAddr,
    /// An API key allowed `Accounts.List`.
    pub api_key: String,
}

impl Grpc {
    async fn channel(&self) -> Result<Channel> {
        Ok(Endpoint::from_shared(format!("http://{}", self.addr))?
            .connect_timeout(WAIT)
            .timeout(WAIT)
            .connect()
            .await?)
    }

    fn authed<T>(&self, message: T) -> tonic::Request<T> {
        authed(&self.api_key, message)
    }

    /// One `Accounts.List` on a new connection: `OK`, or what failed.
    pub async fn good_call(&self) -> String {
        let call = async {
            let channel = self.channel().await?;
            AccountsClient::new(channel)
                .list(self.authed(ListAccountsRequest::default()))
                .await?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(WAIT, call).await {
            Ok(Ok(())) => "OK".to_owned(),
            Ok(Err(e)) => match e.downcast_ref::<tonic::Status>() {
                Some(status) => format!("{:?}", status.code()),
                None => format!("failed: {e}"),
            },
            Err(_) => "no answer in 10 s".to_owned(),
        }
    }
}

/// Runs `copies` of a raw-connection attack at once; the summed tallies.
async fn on_connections<F, Fut>(copies: usize, attack: F) -> String
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Tally> + Send + 'static,
{
    let mut set = JoinSet::new();
    for _ in 0..copies {
        set.spawn(attack());
    }
    let mut tallies = Vec::new();
    let mut failed = 0;
    while let Some(tally) = set.join_next().await {
        match tally {
            Ok(tally) => tallies.push(tally),
            Err(_) => failed += 1,
        }
    }
    let summary = h2raw::summary(&tallies);
    if failed > 0 {
        format!("{summary}; {failed} attackers failed")
    } else {
        summary
    }
}

/// Connects, writes `bytes` (a failed write ends the writing), and tallies what the server
/// sends for [`LISTEN`].
async fn send_and_tally(addr: SocketAddr, bytes: Vec<u8>) -> Tally {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return Tally::default();
    };
    let (mut reader, mut writer) = stream.into_split();
    let reading = tokio::spawn(async move { h2raw::tally(&mut reader, LISTEN).await });
    let _ = writer.write_all(&bytes).await;
    let tally = reading.await.unwrap_or_default();
    drop(writer);
    tally
}

/// `streams` streams on one connection, none of which ends.
pub async fn stream_flood(addr: SocketAddr, copies: usize, streams: u32) -> String {
    on_connections(copies, move || {
        let mut bytes = h2raw::client_start();
        let block = h2raw::grpc_request(HEALTH_WATCH, &[]);
        for i in 0..streams {
            bytes.extend_from_slice(&h2raw::headers(2 * i + 1, &block, false));
        }
        send_and_tally(addr, bytes)
    })
    .await
}

/// One request whose header block is `block_bytes` of metadata: one value, or `entries`
/// entries of about equal size, in HEADERS + CONTINUATION frames.
pub async fn header_block(
    addr: SocketAddr,
    copies: usize,
    block_bytes: usize,
    entries: usize,
) -> String {
    on_connections(copies, move || {
        let mut extra_block = Vec::new();
        let each = (block_bytes / entries.max(1)).max(1);
        for i in 0..entries.max(1) {
            h2raw::literal(&format!("x-m{i}"), &vec![b'a'; each], &mut extra_block);
        }
        let mut block = h2raw::grpc_request(HEALTH_CHECK, &[]);
        block.extend_from_slice(&extra_block);
        let mut bytes = h2raw::client_start();
        bytes.extend_from_slice(&h2raw::headers(1, &block, false));
        send_and_tally(addr, bytes)
    })
    .await
}

/// A message of `bytes` (over the 4 MiB decoding limit) through a real client.
pub async fn oversized_message(grpc: &Grpc, copies: usize, bytes: usize) -> String {
    let mut set = JoinSet::new();
    for _ in 0..copies {
        let channel = grpc.channel().await;
        let request = grpc.authed(ListAccountsRequest {
            page_size: 0,
            page_token: "x".repeat(bytes),
        });
        set.spawn(async move {
            let Ok(channel) = channel else {
                return "connect failed".to_owned();
            };
            match AccountsClient::new(channel).list(request).await {
                Ok(_) => "OK (accepted!)".to_owned(),
                Err(status) => format!("{:?}", status.code()),
            }
        });
    }
    super::count(&mut set).await
}

/// A message whose length prefix claims 4 GiB, followed by 100 bytes and silence.
pub async fn lying_prefix(addr: SocketAddr, copies: usize) -> String {
    on_connections(copies, move || {
        let mut bytes = h2raw::client_start();
        bytes.extend_from_slice(&h2raw::headers(
            1,
            &h2raw::grpc_request(HEALTH_CHECK, &[]),
            false,
        ));
        let mut payload = vec![0u8, 0xff, 0xff, 0xff, 0xff];
        payload.extend_from_slice(&[b'x'; 100]);
        bytes.extend_from_slice(&h2raw::frame(h2raw::DATA, 0, 1, &payload));
        send_and_tally(addr, bytes)
    })
    .await
}

/// Bytes that are not HTTP/2: an HTTP/1.1 request, random bytes, a preface followed by a
/// frame header announcing 16 MiB.
pub async fn not_http2(addr: SocketAddr, copies: usize) -> String {
    let garbage: [(&str, Vec<u8>); 3] = [
        (
            "HTTP/1.1",
            b"GET / HTTP/1.1\r\nHost: worker\r\n\r\n".to_vec(),
        ),
        (
            "random",
            (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ),
        (
            "16 MiB frame",
            [h2raw::PREFACE, &[0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1]].concat(),
        ),
    ];
    let mut parts = Vec::new();
    for (name, bytes) in garbage {
        let answer = on_connections(copies, move || send_and_tally(addr, bytes.clone())).await;
        parts.push(format!("{name}: {answer}"));
    }
    parts.join("; ")
}

/// HEADERS then RST_STREAM, `resets` times on one connection.
pub async fn rapid_reset(addr: SocketAddr, copies: usize, resets: u32) -> String {
    on_connections(copies, move || async move {
        let Ok(stream) = TcpStream::connect(addr).await else {
            return Tally::default();
        };
        let (mut reader, mut writer) = stream.into_split();
        let reading = tokio::spawn(async move { h2raw::tally(&mut reader, WAIT).await });
        let block = h2raw::grpc_request(HEALTH_CHECK, &[]);
        let _ = writer.write_all(&h2raw::client_start()).await;
        // In batches of 100 pairs: as fast as the socket takes them.
        for batch in (0..resets).collect::<Vec<_>>().chunks(100) {
            let mut bytes = Vec::new();
            for i in batch {
                let stream = 2 * i + 1;
                bytes.extend_from_slice(&h2raw::headers(stream, &block, true));
                bytes.extend_from_slice(&h2raw::rst_stream(stream, h2raw::CANCEL));
            }
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
        drop(writer);
        reading.await.unwrap_or_default()
    })
    .await
}

/// What idle connections cost and whether calls are served while they are open.
pub struct Idle {
    /// Connections opened.
    pub opened: usize,
    /// Of those, closed by the server within the hold.
    pub closed_by_server: usize,
    /// The good call made while they were all open.
    pub call_meanwhile: String,
    /// The worker's RSS while they were all open, KiB.
    pub rss_open_kib: u64,
}

/// Opens `count` connections that never send a byte, or (with `handshake`) that complete
/// the HTTP/2 handshake and then idle (answering pings); holds them for `hold`, makes a good
/// call meanwhile, and counts those the server closed.
pub async fn idle(
    grpc: &Grpc,
    pid: u32,
    count: usize,
    handshake: bool,
    hold: Duration,
) -> Result<Idle> {
    let mut open = JoinSet::new();
    let mut opened = 0;
    for _ in 0..count {
        let Ok(Ok(stream)) = tokio::time::timeout(WAIT, TcpStream::connect(grpc.addr)).await else {
            continue;
        };
        opened += 1;
        if handshake {
            open.spawn(async move {
                if let Ok((client, connection)) = h2::client::handshake(stream).await {
                    // Holding the client handle keeps the connection up (answering pings)
                    // until the server closes it.
                    let _ = connection.await;
                    drop(client);
                }
            });
        } else {
            open.spawn(async move {
                let mut stream = stream;
                let mut byte = [0u8; 1];
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut byte).await;
            });
        }
    }
    let call_meanwhile = grpc.good_call().await;
    let rss_open_kib = super::rss_kib(pid)?;
    let deadline = Instant::now() + hold;
    let mut closed_by_server = 0;
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline.into(), open.join_next()).await {
        closed_by_server += 1;
    }
    open.abort_all();
    while open.join_next().await.is_some() {}
    Ok(Idle {
        opened,
        closed_by_server,
        call_meanwhile,
        rss_open_kib,
    })
}

/// The AMQP side of the slow-consumer attack: where to publish the events.
pub struct Broker {
    /// The AMQP URL the worker uses.
    pub url: String,
    /// The worker's namespace.
    pub namespace: String,
    /// The account whose events are published.
    pub account: String,
    /// Its appid.
    pub appid: String,
}

/// `subscribers` streams of `Events.Subscribe` on one group that never read (their HTTP/2
/// stream window is 0, so the worker cannot send them a byte), then `events` events published
/// to the group; returns once every event is in the group's queue or delivered to them.
pub async fn slow_consumers(
    grpc: &Grpc,
    broker: &Broker,
    subscribers: usize,
    events: u64,
) -> Result<String> {
    let group = "hostile";
    let start = SubscribeRequest {
        kind: Some(RequestKind::Start(EventsStart {
            group: group.to_owned(),
            filter: Some(EventsFilter {
                accounts: vec![broker.account.clone()],
                msg_types: vec!["text".to_owned()],
                events: Vec::new(),
            }),
            max_in_flight: 1024,
            ..Default::default()
        })),
    }
    .encode_to_vec();
    let auth = format!("Bearer {}", grpc.api_key);
    let mut streams = Vec::new();
    for _ in 0..subscribers {
        let mut stream = TcpStream::connect(grpc.addr)
            .await
            .context("connecting a subscriber")?;
        let mut bytes = h2raw::PREFACE.to_vec();
        bytes.extend_from_slice(&h2raw::settings(&[(INITIAL_WINDOW_SIZE, 0)]));
        bytes.extend_from_slice(&h2raw::headers(
            1,
            &h2raw::grpc_request(
                "/wxgate.v1.Events/Subscribe",
                &[("authorization", auth.as_bytes())],
            ),
            false,
        ));
        bytes.extend_from_slice(&h2raw::grpc_data(1, &start, false));
        stream.write_all(&bytes).await?;
        streams.push(stream);
    }
    let amqp = Connection::connect(&broker.url, ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")?;
    let queue = format!("{}.group.{group}", broker.namespace);
    // The group exists and has every subscriber before anything is published.
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, consumers) = queue_depth(&amqp, &queue).await.unwrap_or((0, 0));
        if consumers as usize >= subscribers {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{queue} has {consumers} consumers, not {subscribers}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publish(&amqp, broker, events).await?;
    // Every event is either ready in the queue or delivered to a subscriber (unacked).
    let in_flight_max = subscribers as u64 * 1024;
    let expected_ready = events.saturating_sub(in_flight_max);
    let deadline = Instant::now() + WAIT;
    let mut ready = 0;
    while Instant::now() < deadline {
        ready = u64::from(queue_depth(&amqp, &queue).await?.0);
        if ready <= expected_ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(streams);
    amqp.close(200, ShortString::from("done")).await.ok();
    Ok(format!(
        "{} of {events} events in flight to streams that read nothing",
        events.saturating_sub(ready)
    ))
}

/// Publishes `count` text events of the broker's account to `{ns}.events`, confirmed.
async fn publish(amqp: &Connection, broker: &Broker, count: u64) -> Result<()> {
    let channel = amqp.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let exchange = format!("{}.events", broker.namespace);
    let key = format!("{}.msg.text", broker.account);
    let mut pending = Vec::with_capacity(1000);
    for seq in 0..count {
        let content = format!("hostile {seq}");
        let raw_xml = format!(
            "<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA[oHostile{seq:020}]]></FromUserName><CreateTime>1</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content><MsgId>{seq}</MsgId></xml>"
        );
        let event = Event {
            event_id: format!("{:032x}", u128::from(seq) | (1 << 101)),
            account_id: broker.account.clone(),
            appid: broker.appid.clone(),
            to_user: "gh_bench".to_owned(),
            from_user: format!("oHostile{seq:020}"),
            create_time: 1,
            msg_type: "text".to_owned(),
            msg_id: seq,
            raw_xml,
            payload: Some(event::Payload::Text(Text {
                content,
                ..Default::default()
            })),
            ..Default::default()
        };
        let properties = BasicProperties::default()
            .with_content_type(ShortString::from(wxgate_proto::EVENT_CONTENT_TYPE))
            .with_message_id(ShortString::from(event.event_id.as_str()));
        pending.push(
            channel
                .basic_publish(
                    ShortString::from(exchange.as_str()),
                    ShortString::from(key.as_str()),
                    BasicPublishOptions::default(),
                    &event.encode_to_vec(),
                    properties,
                )
                .await?,
        );
        if pending.len() == 1000 {
            for confirm in pending.drain(..) {
                confirm.await?;
            }
        }
    }
    for confirm in pending {
        confirm.await?;
    }
    channel
        .close(200, ShortString::from("published"))
        .await
        .ok();
    Ok(())
}

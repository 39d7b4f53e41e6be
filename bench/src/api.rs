//! `wxgate-api`: measures the gRPC API of a running `wx-worker` (and, for `latency`, the
//! gateway in front of it) against the targets of the API: `Events.Subscribe` throughput
//! next to a bare lapin consumer of the same queue, the time from the gateway's 200 to a
//! subscriber's receipt, and the worker's memory with many groups and open streams
//! (`Tokens.GetAccessToken` has its own tool, `wxgate-tokens`).
//!
//! It reads the configuration the gateway and worker run with (with the same `WXGATE__…`
//! overrides), so it knows the namespace, the addresses and the accounts. It is a measuring tool,
//! not a test: it asserts nothing, prints a JSON summary on stdout, and leaves cleaning up the
//! namespace to its caller (`bench/api.sh`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use prost::Message as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};
use wxgate_bench::{
    authed, gateway_base, nearest_rank, parse_duration, push_account, queue_depth, status_kib,
};
use wxgate_core::config::{Account, Config};
use wxgate_proto::v1::events_client::EventsClient;
use wxgate_proto::v1::subscribe_request::Kind as RequestKind;
use wxgate_proto::v1::subscribe_response::Kind as ResponseKind;
use wxgate_proto::v1::{
    Event, EventsAck, EventsDeleteGroupRequest, EventsFilter, EventsListGroupsRequest, EventsStart,
    SubscribeRequest, Text, event,
};
use wxgate_sim::{Inbound, MsgIdGen, PushClient};

/// Measures the gRPC API of a running wx-worker.
#[derive(Debug, Parser)]
#[command(
    name = "wxgate-api",
    version,
    after_long_help = "Example (worker running on bench.toml with an admin key):\n  wxgate-api --config bench.toml --api-key bench-key subscribe --events 50000 --rounds 3"
)]
struct Args {
    /// The configuration the worker (and gateway) run with; WXGATE__SECTION__KEY overrides
    /// apply here too.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,

    /// An API key with `accounts = ["*"]`.
    #[arg(long, value_name = "KEY", env = "WXGATE_API_KEY")]
    api_key: String,

    /// The worker's process id: its RSS and CPU time go into the summary.
    #[arg(long, value_name = "PID")]
    worker_pid: Option<u32>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Events.Subscribe with an ack per event against a bare lapin consumer with the same
    /// prefetch, draining the same pre-filled group queue, alternately, round by round.
    Subscribe {
        /// Events per drain.
        #[arg(long, default_value_t = 50_000)]
        events: u64,
        /// max_in_flight of the subscriber and prefetch of the lapin consumer.
        #[arg(long, default_value_t = 256)]
        prefetch: u32,
        /// Rounds (each drains once through gRPC and once through lapin).
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
    /// Pushes through the gateway at a fixed rate with one subscriber connected; the time
    /// from each push's 200 to the subscriber's receipt.
    Latency {
        /// Pushes per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// How long to push.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
    },
    /// Creates `groups` groups and keeps `streams` subscriptions open, then reads the
    /// worker's RSS (needs --worker-pid); deletes the groups at the end.
    Hold {
        /// Groups created.
        #[arg(long, default_value_t = 100)]
        groups: usize,
        /// Subscriptions held open at once.
        #[arg(long, default_value_t = 50)]
        streams: usize,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(summary) => {
            println!("{summary:#}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wxgate-api: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<Value> {
    let config = Config::load(&args.config, |k| std::env::var(k).ok())
        .with_context(|| format!("loading {}", args.config.display()))?;
    let api = Api::connect(&config, &args.api_key).await?;
    let mut summary = match args.command {
        Command::Subscribe {
            events,
            prefetch,
            rounds,
        } => subscribe(&config, &api, events, prefetch, rounds).await?,
        Command::Latency { rate, duration } => latency(&config, &api, rate, duration).await?,
        Command::Hold { groups, streams } => hold(&api, groups, streams, args.worker_pid).await?,
    };
    if let (Some(pid), Value::Object(map)) = (args.worker_pid, &mut summary) {
        map.insert("worker_rss_kib".into(), json!(rss_kib(pid)));
    }
    Ok(summary)
}

/// The worker's gRPC API.
struct Api {
    key: String,
    channel: Channel,
}

impl Api {
    async fn connect(config: &Config, key: &str) -> anyhow::Result<Self> {
        let listen = config.worker.grpc_listen;
        let addr = if listen.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], listen.port()))
        } else {
            listen
        };
        let channel = channel(addr).await?;
        Ok(Self {
            key: key.to_owned(),
            channel,
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        authed(&self.key, message)
    }
}

async fn channel(addr: SocketAddr) -> anyhow::Result<Channel> {
    Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to the grpc api at {addr}"))
}

/// A subscription: deliveries come out of `deliveries`, acks go in through `acks`.
struct Subscription {
    acks: mpsc::UnboundedSender<SubscribeRequest>,
    responses: tonic::Streaming<wxgate_proto::v1::SubscribeResponse>,
}

impl Subscription {
    /// Opens a stream on `group` for text messages of `account` and waits for the start
    /// confirmation.
    async fn open(api: &Api, group: &str, account: &str, prefetch: u32) -> anyhow::Result<Self> {
        let (acks, requests) = mpsc::unbounded_channel();
        let start = SubscribeRequest {
            kind: Some(RequestKind::Start(EventsStart {
                group: group.to_owned(),
                filter: Some(EventsFilter {
                    accounts: vec![account.to_owned()],
                    msg_types: vec!["text".to_owned()],
                    events: Vec::new(),
                }),
                max_in_flight: prefetch,
                ..Default::default()
            })),
        };
        acks.send(start).ok();
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(requests);
        let mut responses = EventsClient::new(api.channel.clone())
            .subscribe(api.request(stream))
            .await
            .context("Events.Subscribe")?
            .into_inner();
        match responses.message().await? {
            Some(wxgate_proto::v1::SubscribeResponse {
                kind: Some(ResponseKind::Started(_)),
            }) => Ok(Self { acks, responses }),
            other => bail!("expected a start confirmation, got {other:?}"),
        }
    }

    /// The next delivery: its id and event.
    async fn next(&mut self) -> anyhow::Result<(u64, Event)> {
        loop {
            match self.responses.message().await? {
                Some(wxgate_proto::v1::SubscribeResponse {
                    kind: Some(ResponseKind::Delivery(delivery)),
                }) => {
                    let event = delivery.event.context("a delivery without its event")?;
                    return Ok((delivery.delivery_id, event));
                }
                Some(_) => {}
                None => bail!("the subscription ended"),
            }
        }
    }

    /// Ends the request stream and waits (10 s at most) for the server to end the response
    /// stream: requests are handled in order, so every ack sent before has been settled.
    async fn close(self) -> anyhow::Result<()> {
        let Self {
            acks,
            mut responses,
        } = self;
        drop(acks);
        tokio::time::timeout(Duration::from_secs(10), async {
            while responses.message().await?.is_some() {}
            Ok::<_, tonic::Status>(())
        })
        .await
        .context("the subscription did not end within 10 s")??;
        Ok(())
    }

    fn ack(&self, delivery_id: u64) {
        self.acks
            .send(SubscribeRequest {
                kind: Some(RequestKind::Ack(EventsAck { delivery_id })),
            })
            .ok();
    }
}

/// A realistic text event of `account` (about the size the gateway publishes).
fn text_event(account: &Account, seq: u64) -> Event {
    let content = format!("bench {seq}");
    let now_ms = wxgate_core::now_ms();
    let raw_xml = format!(
        "<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName><FromUserName><![CDATA[oBench{seq:022}]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content><MsgId>{seq}</MsgId></xml>",
        now_ms / 1000
    );
    Event {
        event_id: format!("{:032x}", u128::from(seq) | (1 << 100)),
        account_id: account.id.as_str().to_owned(),
        appid: account.appid.clone(),
        to_user: "gh_0123456789ab".to_owned(),
        from_user: format!("oBench{seq:022}"),
        create_time: now_ms / 1000,
        msg_type: "text".to_owned(),
        msg_id: seq,
        fields: HashMap::from([("Content".to_owned(), content.clone())]),
        raw_xml,
        received_at_ms: now_ms,
        payload: Some(event::Payload::Text(Text {
            content,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Publishes `count` text events of `account` to `{ns}.events`, waiting for every confirm.
async fn fill(
    amqp: &Connection,
    config: &Config,
    account: &Account,
    count: u64,
) -> anyhow::Result<()> {
    let channel = amqp.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let exchange = format!("{}.events", config.namespace);
    let key = format!("{}.msg.text", account.id);
    let mut pending = Vec::with_capacity(1000);
    for seq in 0..count {
        let event = text_event(account, seq);
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from(wxgate_proto::EVENT_CONTENT_TYPE))
            .with_message_id(ShortString::from(event.event_id.as_str()));
        let confirm = channel
            .basic_publish(
                ShortString::from(exchange.as_str()),
                ShortString::from(key.as_str()),
                BasicPublishOptions::default(),
                &event.encode_to_vec(),
                properties,
            )
            .await?;
        pending.push(confirm);
        if pending.len() == 1000 {
            for confirm in pending.drain(..) {
                confirm.await?;
            }
        }
    }
    for confirm in pending {
        confirm.await?;
    }
    channel.close(200, ShortString::from("filled")).await.ok();
    Ok(())
}

/// Polls until `queue` holds `ready` ready messages and no consumer (60 s at most).
async fn settle(amqp: &Connection, queue: &str, ready: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (count, consumers) = queue_depth(amqp, queue).await?;
        if u64::from(count) == ready && consumers == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{queue} holds {count} ready with {consumers} consumers, expected {ready} and 0");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Drains `events` distinct events through a subscription; returns the time and how many
/// deliveries were repeats of an event already received (redeliveries).
async fn drain_grpc(
    api: &Api,
    group: &str,
    account: &str,
    prefetch: u32,
    events: u64,
) -> anyhow::Result<(Duration, u64)> {
    let started = Instant::now();
    let mut subscription = Subscription::open(api, group, account, prefetch).await?;
    let mut seen = std::collections::HashSet::new();
    let mut repeats = 0;
    while (seen.len() as u64) < events {
        let (id, event) = subscription.next().await?;
        subscription.ack(id);
        if !seen.insert(event.event_id) {
            repeats += 1;
        }
    }
    let elapsed = started.elapsed();
    subscription.close().await?;
    Ok((elapsed, repeats))
}

async fn drain_lapin(
    amqp: &Connection,
    queue: &str,
    prefetch: u32,
    events: u64,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let channel = amqp.create_channel().await?;
    channel
        .basic_qos(
            u16::try_from(prefetch).unwrap_or(u16::MAX),
            BasicQosOptions::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            ShortString::from(queue),
            ShortString::from("wxgate-api-bench"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for _ in 0..events {
        let delivery = consumer.next().await.context("the consumer ended")??;
        // Decode like the subscriber's server side does, for a like-for-like comparison.
        let _event = Event::decode(delivery.data.as_slice())?;
        delivery.acker.ack(BasicAckOptions::default()).await?;
    }
    let elapsed = started.elapsed();
    channel.close(200, ShortString::from("drained")).await.ok();
    Ok(elapsed)
}

// Event counts to rates: far below 2^52, no precision lost.
#[allow(clippy::cast_precision_loss)]
async fn subscribe(
    config: &Config,
    api: &Api,
    events: u64,
    prefetch: u32,
    rounds: u32,
) -> anyhow::Result<Value> {
    let account = config
        .accounts
        .first()
        .context("the config has no account")?;
    let amqp = Connection::connect(&config.rabbitmq.url, ConnectionProperties::default()).await?;
    let group = "bench-subscribe";
    let queue = format!("{}.group.{group}", config.namespace);
    // Create (or rebind) the group, then leave it empty.
    Subscription::open(api, group, account.id.as_str(), prefetch)
        .await?
        .close()
        .await?;
    settle(&amqp, &queue, 0).await?;
    let mut rows = Vec::new();
    for round in 0..rounds {
        let mut grpc_rate = 0.0;
        let mut lapin_rate = 0.0;
        let mut repeats = 0;
        let order: [bool; 2] = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for through_grpc in order {
            fill(&amqp, config, account, events).await?;
            settle(&amqp, &queue, events).await?;
            eprintln!(
                "round {round}: filled; draining through {}",
                if through_grpc { "grpc" } else { "lapin" }
            );
            if through_grpc {
                let (took, again) =
                    drain_grpc(api, group, account.id.as_str(), prefetch, events).await?;
                grpc_rate = events as f64 / took.as_secs_f64();
                repeats = again;
            } else {
                let took = drain_lapin(&amqp, &queue, prefetch, events).await?;
                lapin_rate = events as f64 / took.as_secs_f64();
            }
            settle(&amqp, &queue, 0).await?;
        }
        eprintln!("round {round}: grpc {grpc_rate:.0}/s, lapin {lapin_rate:.0}/s");
        rows.push(json!({
            "round": round,
            "grpc_per_s": grpc_rate.round(),
            "lapin_per_s": lapin_rate.round(),
            "ratio": (grpc_rate / lapin_rate * 1000.0).round() / 1000.0,
            "grpc_redelivered": repeats,
        }));
    }
    EventsClient::new(api.channel.clone())
        .delete_group(api.request(EventsDeleteGroupRequest {
            group: group.to_owned(),
        }))
        .await
        .ok();
    Ok(json!({ "events": events, "prefetch": prefetch, "rounds": rows }))
}

async fn latency(
    config: &Config,
    api: &Api,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<Value> {
    let account = config
        .accounts
        .first()
        .context("the config has no account")?;
    let group = "bench-latency";
    let mut subscription = Subscription::open(api, group, account.id.as_str(), 1024).await?;
    let receipts: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let received = Arc::clone(&receipts);
    let reader = tokio::spawn(async move {
        while let Ok((id, event)) = subscription.next().await {
            let at = Instant::now();
            subscription.ack(id);
            if let Some(content) = event.fields.get("Content") {
                received
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(content.clone(), at);
            }
        }
    });
    let push_account = push_account(account, "gh_0123456789ab".to_owned());
    let base = gateway_base(config);
    let client = PushClient::new().attempts(1);
    let ids = MsgIdGen::new();
    let answered: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    let start = tokio::time::Instant::now();
    let total = rate * duration.as_secs().max(1);
    for seq in 0..total {
        #[allow(clippy::cast_precision_loss)]
        let due = start + Duration::from_secs_f64(seq as f64 / rate as f64);
        tokio::time::sleep_until(due).await;
        let content = format!("latency {seq}");
        let xml = Inbound::now(
            push_account.original_id.clone(),
            format!("oLat{:024}", seq % 1000),
        )
        .text(ids.next_id(), &content);
        let (client, base, account) = (client.clone(), base.clone(), push_account.clone());
        let (answered, failed) = (Arc::clone(&answered), Arc::clone(&failed));
        tasks.spawn(async move {
            match client.push(&base, &account, &xml).await {
                Ok(outcome) if outcome.statuses.last() == Some(&200) => answered
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((content, Instant::now())),
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    // Let the last receipts arrive.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (done, want) = {
            let answered = answered.lock().unwrap_or_else(PoisonError::into_inner);
            let receipts = receipts.lock().unwrap_or_else(PoisonError::into_inner);
            (
                answered
                    .iter()
                    .filter(|(c, _)| receipts.contains_key(c))
                    .count(),
                answered.len(),
            )
        };
        if done == want || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reader.abort();
    EventsClient::new(api.channel.clone())
        .delete_group(api.request(EventsDeleteGroupRequest {
            group: group.to_owned(),
        }))
        .await
        .ok();
    let answered = std::mem::take(&mut *answered.lock().unwrap_or_else(PoisonError::into_inner));
    let receipts = std::mem::take(&mut *receipts.lock().unwrap_or_else(PoisonError::into_inner));
    let mut micros = Vec::new();
    let mut before_answer = 0_u64;
    let mut missing = 0_u64;
    for (content, at) in answered.iter() {
        match receipts.get(content) {
            Some(received) if received >= at => {
                micros.push(
                    u64::try_from(received.duration_since(*at).as_micros()).unwrap_or(u64::MAX),
                );
            }
            // The subscriber had it before the pusher read the 200: zero.
            Some(_) => {
                before_answer += 1;
                micros.push(0);
            }
            None => missing += 1,
        }
    }
    micros.sort_unstable();
    #[allow(clippy::cast_precision_loss)]
    let ms = |q: f64| nearest_rank(&micros, q) as f64 / 1000.0;
    Ok(json!({
        "rate": rate,
        "pushes": total,
        "answered_200": answered.len(),
        "failed": failed.load(Ordering::Relaxed),
        "received": micros.len(),
        "received_before_answer": before_answer,
        "missing": missing,
        "ms": { "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": ms(1.0) },
    }))
}

async fn hold(
    api: &Api,
    groups: usize,
    streams: usize,
    worker_pid: Option<u32>,
) -> anyhow::Result<Value> {
    let names: Vec<String> = (0..groups).map(|i| format!("bench-hold-{i}")).collect();
    let before = worker_pid.map(rss_kib);
    let mut held = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let subscription = Subscription::open(api, name, "bench0", 16).await?;
        if i < streams {
            held.push(subscription);
        }
    }
    // Wait until the broker counts every held stream as a consumer.
    let deadline = Instant::now() + Duration::from_secs(30);
    let consumers = loop {
        let listed = EventsClient::new(api.channel.clone())
            .list_groups(api.request(EventsListGroupsRequest::default()))
            .await?
            .into_inner();
        let consumers: u32 = listed
            .groups
            .iter()
            .filter(|g| g.group.starts_with("bench-hold-"))
            .map(|g| g.consumers)
            .sum();
        if consumers as usize >= held.len() || Instant::now() > deadline {
            break consumers;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let with = worker_pid.map(rss_kib);
    drop(held);
    for name in &names {
        EventsClient::new(api.channel.clone())
            .delete_group(api.request(EventsDeleteGroupRequest {
                group: name.clone(),
            }))
            .await
            .ok();
    }
    Ok(json!({
        "groups": groups,
        "streams": streams,
        "consumers_seen": consumers,
        "worker_rss_kib_before": before,
        "worker_rss_kib_holding": with,
    }))
}

/// VmRSS of `pid` in KiB (0 when unreadable).
fn rss_kib(pid: u32) -> u64 {
    status_kib(&pid.to_string(), "VmRSS:").unwrap_or(0)
}

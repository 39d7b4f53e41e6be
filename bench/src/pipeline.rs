//! `wxgate-pipeline`: the gateway's work without HTTP, to measure what the dependencies cost.
//!
//! For each event it does what wx-gateway does around a callback, with no HTTP and no
//! protocol work: the dedup claim (`SET NX GET`, batched through the gateway's `Claims`), a
//! publish of a realistic event to `{ns}.events` with the properties of docs/contract.md §1.2 and
//! its confirm awaited, and the answer record (`SET XX`, through the gateway's `AnswerLog`).
//! `--in-flight` events run at once, as concurrent callbacks would.
//!
//! `--client wxgate` publishes through the gateway's bus (`RabbitBus`, the lean publisher
//! with group commit); `--client lapin` publishes through lapin 4 on a few confirm channels,
//! the reference client of the gateway issue. Either way, how much CPU the broker and Redis
//! spend per event (`--watch rabbitmq=PID --watch redis=PID`) shows how many events per
//! second this machine can carry before any HTTP is added; `bench/pipeline.sh` runs it.
//!
//! It reads a gateway config (`--config`) for the namespace, URLs and queue type and
//! declares the topology as the gateway does. A measuring tool: never point it at a
//! namespace in use.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{Channel, Connection, ConnectionProperties};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use wx_gateway::dedup::{AnswerLog, Claims, claim_ttl};
use wx_gateway::event;
use wxgate_bench::{Watched, nearest_rank, parse_watch};
use wxgate_core::keys::Keys;
use wxgate_core::rabbit::{RabbitBus, to_amqp};
use wxgate_core::topology::{Names, Topology};
use wxgate_core::{Bus, Config, Message, RedisStore, SetNx, Store};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Which AMQP client publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Client {
    /// The gateway's own bus (`wxgate_core::rabbit::RabbitBus`).
    Wxgate,
    /// lapin 4, publishes spread over `--lapin-channels` confirm channels.
    Lapin,
}

/// The gateway's Redis and RabbitMQ work per callback, without HTTP.
#[derive(Debug, Parser)]
#[command(name = "wxgate-pipeline", version)]
struct Args {
    /// Gateway config: namespace, `redis.url`, `rabbitmq.url`, `rabbitmq.queue_type`.
    #[arg(long, value_name = "FILE")]
    config: std::path::PathBuf,
    /// AMQP client that publishes.
    #[arg(long, value_enum, default_value = "wxgate")]
    client: Client,
    /// Confirm channels of the lapin client.
    #[arg(long, value_name = "N", default_value_t = 4)]
    lapin_channels: usize,
    /// Events in progress at once.
    #[arg(long, value_name = "N", default_value_t = 512)]
    in_flight: usize,
    /// Events to run (after the warm-up).
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    events: u64,
    /// Events run before measuring.
    #[arg(long, value_name = "N", default_value_t = 5_000)]
    warmup: u64,
    /// Skip Redis: only the confirmed publish.
    #[arg(long, default_value_t = false)]
    no_redis: bool,
    /// Tokio worker threads (the gateway uses one per core).
    #[arg(long, value_name = "N", default_value_t = 2)]
    threads: usize,
    /// Another process to report CPU per event for, e.g. rabbitmq=PID (repeatable).
    #[arg(long = "watch", value_name = "NAME=PID", value_parser = parse_watch)]
    watch: Vec<(String, u32)>,
    /// Print the summary as one line of JSON.
    #[arg(long, default_value_t = false)]
    json: bool,
}

/// Where events are published.
enum Publisher {
    Wxgate(RabbitBus),
    Lapin {
        _connection: Box<Connection>,
        channels: Vec<Channel>,
        next: AtomicU64,
    },
}

struct Ctx {
    publisher: Publisher,
    redis: Option<(Claims, AnswerLog)>,
    keys: Keys,
    exchange: String,
    /// A text-message event as the gateway encodes it (the body of every publish).
    body: Bytes,
    /// Next event number; each event gets its own id.
    next: AtomicU64,
    /// Random per run, so runs in one namespace do not find each other's claims.
    run: u32,
}

impl Ctx {
    /// One event: claim, publish with confirm, record the answer.
    async fn run_one(&self, n: u64) -> anyhow::Result<()> {
        let event_id = format!("pipeline:{:08x}{n:016x}", self.run);
        if let Some((claims, _)) = &self.redis {
            let key = self.keys.dedup(&event_id);
            match claims.claim(&key).await.context("claim")? {
                SetNx::Set => {}
                SetNx::Exists(_) => bail!("event {event_id} claimed twice"),
            }
        }
        let routing_key = "pipeline.msg.text";
        let properties = event::properties(&event_id, "pipeline", wxgate_core::now_ms() / 1000);
        match &self.publisher {
            Publisher::Wxgate(bus) => {
                let message = Message {
                    body: self.body.clone(),
                    properties,
                };
                bus.publish(&self.exchange, routing_key, &message)
                    .await
                    .context("publish")?;
            }
            Publisher::Lapin { channels, next, .. } => {
                #[allow(clippy::cast_possible_truncation)]
                // Only the low bits pick a channel.
                let channel =
                    &channels[next.fetch_add(1, Ordering::Relaxed) as usize % channels.len()];
                let confirm = channel
                    .basic_publish(
                        ShortString::from(self.exchange.as_str()),
                        ShortString::from(routing_key),
                        BasicPublishOptions::default(),
                        &self.body,
                        to_amqp(&properties),
                    )
                    .await
                    .context("publish")?
                    .await
                    .context("confirm")?;
                if !confirm.is_ack() {
                    bail!("the broker nacked event {event_id}");
                }
            }
        }
        if let Some((_, answers)) = &self.redis {
            answers.record(self.keys.dedup(&event_id), b"success");
        }
        Ok(())
    }
}

/// A text message event exactly as wx-gateway encodes it (`wx_gateway::event::to_proto`):
/// a typical plain-mode XML of ~240 bytes, its parsed fields and typed payload.
fn sample_body() -> anyhow::Result<Bytes> {
    use prost::Message as _;
    let raw = "<xml><ToUserName><![CDATA[gh_0000pipeline]]></ToUserName><FromUserName><![CDATA[oPipelineUser000000000000000]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hello pipeline]]></Content><MsgId>1234567890123456</MsgId></xml>";
    let msg = wechat::parse(raw.as_bytes(), &wechat::Limits::default())
        .context("parsing the sample message")?;
    let event = event::to_proto(
        msg,
        event::Envelope {
            event_id: "pipeline:0000000000000000",
            account_id: "pipeline",
            appid: "wx0000pipeline00",
            raw_xml: raw.to_owned(),
            received_at_ms: wxgate_core::now_ms(),
            passive_reply: None,
            arrival: event::Arrival::Plain,
        },
    );
    Ok(Bytes::from(event.encode_to_vec()))
}

async fn connect(
    args: &Args,
    config: &Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<Ctx> {
    let topology = Topology::for_config(config);
    // The bus declares the topology either way, as the gateway does at start.
    let bus = RabbitBus::connect_any(&config.rabbitmq.urls, topology, shutdown.clone());
    if !bus.wait_ready(Duration::from_secs(30)).await {
        bail!("RabbitMQ at the configured url not ready within 30 s");
    }
    let publisher = match args.client {
        Client::Wxgate => Publisher::Wxgate(bus),
        Client::Lapin => {
            let connection =
                Connection::connect(&config.rabbitmq.url, ConnectionProperties::default())
                    .await
                    .context("lapin connect")?;
            let mut channels = Vec::with_capacity(args.lapin_channels.max(1));
            for _ in 0..args.lapin_channels.max(1) {
                let channel = connection.create_channel().await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                channels.push(channel);
            }
            Publisher::Lapin {
                _connection: Box::new(connection),
                channels,
                next: AtomicU64::new(0),
            }
        }
    };
    let redis = if args.no_redis {
        None
    } else {
        let store: Arc<dyn Store> = Arc::new(RedisStore::connect_config(
            &config.redis,
            config.gateway.request_budget,
            shutdown.clone(),
        )?);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !store.is_ready() {
            if Instant::now() >= deadline {
                bail!("Redis not ready within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some((
            Claims::start(Arc::clone(&store), claim_ttl(config.gateway.request_budget)),
            AnswerLog::start(store, config.gateway.dedup_ttl),
        ))
    };
    Ok(Ctx {
        publisher,
        redis,
        keys: Keys::new(&config.namespace),
        exchange: Names::new(&config.namespace).events_exchange(),
        body: sample_body()?,
        next: AtomicU64::new(0),
        run: rand::random(),
    })
}

/// Runs `count` events with `in_flight` at once; returns each event's latency in µs.
async fn drive(ctx: &Arc<Ctx>, count: u64, in_flight: usize) -> anyhow::Result<Vec<u64>> {
    let end = ctx.next.load(Ordering::Relaxed) + count;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight.max(1) {
        let ctx = Arc::clone(ctx);
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = ctx.next.fetch_add(1, Ordering::Relaxed);
                if n >= end {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let started = Instant::now();
                ctx.run_one(n).await?;
                latencies.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.context("event task panicked")??);
    }
    Ok(all)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = Config::load(&args.config, |k| std::env::var(k).ok())
        .with_context(|| format!("loading {}", args.config.display()))?;
    let watched = Watched::new("pipeline", &args.watch)?;
    let shutdown = CancellationToken::new();
    let ctx = Arc::new(connect(&args, &config, &shutdown).await?);
    drive(&ctx, args.warmup, args.in_flight).await?;

    let cpu_before = watched.cpu()?;
    let started = Instant::now();
    let mut latencies = drive(&ctx, args.events, args.in_flight).await?;
    let elapsed = started.elapsed();
    let cpu_after = watched.cpu()?;
    if let Some((_, answers)) = &ctx.redis {
        answers.flush().await;
    }
    shutdown.cancel();

    latencies.sort_unstable();
    #[allow(clippy::cast_precision_loss)]
    // Event counts stay far below 2^52.
    let events = args.events.max(1) as f64;
    let rate = events / elapsed.as_secs_f64();
    let ms = |fraction: f64| {
        #[allow(clippy::cast_precision_loss)]
        // Latencies in µs stay far below 2^52.
        let us = nearest_rank(&latencies, fraction) as f64;
        us / 1000.0
    };
    let mut cpu = serde_json::Map::new();
    for (name, used) in cpu_after.since(&cpu_before) {
        #[allow(clippy::cast_precision_loss)]
        // CPU µs stay far below 2^52.
        let used = used as f64;
        cpu.insert(name, json!((used / events * 10.0).round() / 10.0));
    }
    let summary = json!({
        "client": format!("{:?}", args.client).to_lowercase(),
        "redis": !args.no_redis,
        "in_flight": args.in_flight,
        "events": args.events,
        "events_per_sec": rate.round(),
        "latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "max": ms(1.0)},
        "cpu_us_per_event": cpu,
    });
    if args.json {
        println!("{summary}");
    } else {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wxgate-pipeline: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wxgate-pipeline: {e:#}");
            ExitCode::FAILURE
        }
    }
}

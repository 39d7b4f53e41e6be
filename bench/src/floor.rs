//! `wxgate-floor`: the cost floor under wx-gateway, to measure beside it.
//!
//! Serves the callback route with hyper 1.x exactly as the gateway sets it up (the runtime of
//! `gateway.threads`, jemalloc, HTTP/1.1 keep-alive, the same header read timeout, the same body
//! limit), but stops short of the gateway's work:
//!
//! - `--work http`: reads the body and answers `success`; what HTTP alone costs here.
//! - `--work protocol`: also checks the timestamp and the URL signature against the account's
//!   token, parses the XML and computes the event id, with no Redis and no RabbitMQ: what the
//!   gateway costs before any I/O to its dependencies.
//! - `--work redis`: protocol, then the gateway's two dedup commands (the claim awaited through
//!   the gateway's `Claims`, the answer through its `AnswerLog`), no RabbitMQ.
//! - `--work publish`: protocol, then a publish of the body to `{ns}.events` through the
//!   gateway's bus with the confirm awaited, no Redis.
//!
//! It reads the gateway's own config file (`--config`), so `bench/profile.sh` starts it like
//! the gateway; `GET` on any path answers 200, which makes `/readyz` ready at once. Plain
//! callbacks only. A measuring tool: never deploy it.

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use wechat::Limits;
use wx_gateway::dedup::{AnswerLog, Claims, claim_ttl};
use wx_gateway::pipeline::CallbackQuery;
use wxgate_core::keys::Keys;
use wxgate_core::rabbit::RabbitBus;
use wxgate_core::topology::{Names, Topology};
use wxgate_core::{Bus, Config, Message, Properties, RedisStore, Store};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// What the floor server does per callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Work {
    /// Read the body, answer `success`.
    Http,
    /// Also verify the signature, parse the XML and compute the event id.
    Protocol,
    /// Protocol plus the dedup claim and answer record in Redis.
    Redis,
    /// Protocol plus a confirmed publish to RabbitMQ.
    Publish,
}

/// The gateway's cost floor: hyper as the gateway runs it, without Redis or RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "wxgate-floor", version)]
struct Args {
    /// The gateway config to take `gateway.listen`, the body limit and the accounts from.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// How much of the callback to handle.
    #[arg(long, value_enum, default_value = "http")]
    work: Work,
}

struct Floor {
    config: Config,
    work: Work,
    limits: Limits,
    keys: Keys,
    exchange: String,
    claims: Option<Claims>,
    answers: Option<AnswerLog>,
    bus: Option<RabbitBus>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args.config, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wxgate-floor: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match wx_gateway::runtime(config.gateway.threads) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wxgate-floor: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let background = CancellationToken::new();
        let (claims, answers) = if args.work == Work::Redis {
            let store: Arc<dyn Store> = match RedisStore::connect_config(
                &config.redis,
                config.gateway.request_budget,
                background.clone(),
            ) {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    eprintln!("wxgate-floor: {e}");
                    return ExitCode::from(2);
                }
            };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while !store.is_ready() {
                if tokio::time::Instant::now() >= deadline {
                    eprintln!("wxgate-floor: Redis not ready within 30 s");
                    return ExitCode::FAILURE;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let claims =
                Claims::start(Arc::clone(&store), claim_ttl(config.gateway.request_budget));
            let answers = AnswerLog::start(Arc::clone(&store), config.gateway.dedup_ttl);
            (Some(claims), Some(answers))
        } else {
            (None, None)
        };
        let bus = (args.work == Work::Publish).then(|| {
            RabbitBus::connect_any(
                &config.rabbitmq.urls,
                Topology::for_config(&config),
                background.clone(),
            )
        });
        if let Some(bus) = &bus
            && !bus.wait_ready(Duration::from_secs(30)).await
        {
            eprintln!("wxgate-floor: RabbitMQ not ready within 30 s");
            return ExitCode::FAILURE;
        }
        let floor = Arc::new(Floor {
            limits: config.message_limits(),
            keys: Keys::new(&config.namespace),
            exchange: Names::new(&config.namespace).events_exchange(),
            claims,
            answers,
            bus,
            config,
            work: args.work,
        });
        serve(floor).await
    })
}

async fn serve(floor: Arc<Floor>) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(floor.config.gateway.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "wxgate-floor: cannot listen on {}: {e}",
                floor.config.gateway.listen
            );
            return ExitCode::FAILURE;
        }
    };
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("wxgate-floor: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let floor = Arc::clone(&floor);
        let service = service_fn(move |req| {
            let floor = Arc::clone(&floor);
            async move { Ok::<_, Infallible>(handle(&floor, req).await) }
        });
        tokio::spawn(
            http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service),
        );
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn handle(floor: &Floor, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() == Method::GET {
        return text(StatusCode::OK, "ok");
    }
    let (head, body) = req.into_parts();
    let Ok(body) = Limited::new(body, floor.config.gateway.max_body_bytes)
        .collect()
        .await
    else {
        return text(StatusCode::BAD_REQUEST, "cannot read body");
    };
    let body = body.to_bytes();
    if floor.work != Work::Http {
        let account = head
            .uri
            .path()
            .rsplit('/')
            .next()
            .and_then(|id| floor.config.account(id));
        let Some(account) = account else {
            return text(StatusCode::NOT_FOUND, "unknown account");
        };
        let Ok(query) = CallbackQuery::parse(head.uri.query().unwrap_or("")) else {
            return text(StatusCode::BAD_REQUEST, "query not utf-8");
        };
        let timestamp = query.timestamp.as_deref().unwrap_or("");
        let nonce = query.nonce.as_deref().unwrap_or("");
        let signature = query.signature.as_deref().unwrap_or("");
        if timestamp.parse::<i64>().is_err()
            || wechat::verify_url_signature(account.token.expose(), timestamp, nonce, signature)
                .is_err()
        {
            return text(StatusCode::FORBIDDEN, "bad signature");
        }
        let Ok(msg) = wechat::parse(&body, &floor.limits) else {
            return text(StatusCode::BAD_REQUEST, "bad xml");
        };
        let event_id = wechat::event_id(account.id.as_str(), &msg);
        if let (Some(claims), Some(answers)) = (&floor.claims, &floor.answers) {
            let key = floor.keys.dedup(event_id.as_str());
            if claims.claim(&key).await.is_err() {
                return text(StatusCode::SERVICE_UNAVAILABLE, "redis failed");
            }
            answers.record(key, b"success");
        }
        if let Some(bus) = &floor.bus {
            let routing_key =
                wxgate_core::topology::routing_key(account.id.as_str(), &msg.msg_type, None);
            let message = Message {
                body,
                properties: Properties {
                    message_id: Some(event_id.as_str().to_owned()),
                    ..Properties::default()
                },
            };
            if bus
                .publish(&floor.exchange, &routing_key, &message)
                .await
                .is_err()
            {
                return text(StatusCode::SERVICE_UNAVAILABLE, "publish failed");
            }
        }
    }
    text(StatusCode::OK, "success")
}

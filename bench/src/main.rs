//! `wxgate-load`: drives a running `wx-gateway` with signed WeChat text-message callbacks
//! over HTTP/1.1 keep-alive and reports throughput, latency and CPU per request.
//!
//! Each of `--connections` tasks owns one hyper client connection and has one request in
//! flight at a time (closed loop), optionally paced by a global schedule (`--rate`, open
//! loop). Every request is a distinct message (unique `MsgId`), so the gateway publishes each
//! one instead of answering from its dedup record. It is a measuring tool, not a test: it
//! asserts nothing and never sends anything but callbacks and `GET /healthz`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http::header::{CONNECTION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rand::Rng as _;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use wechat::crypto::{AesKey, decrypt_utf8, encrypt, parse_sealed_reply};
use wechat::reply::{Reply, parse_reply};
use wechat::signature::{msg_signature, url_signature, verify_msg_signature};
use wxgate_bench::{Watched, nearest_rank, parse_duration, parse_watch, status_kib};

/// Above this many `--requests`, bodies are generated in the tasks instead of up front
/// (about 1 KiB each in safe mode).
const PREGENERATE_LIMIT: u64 = 1_000_000;
/// Idle connections opened at the same time.
const IDLE_OPEN_PARALLELISM: usize = 100;
/// Pause before a task reconnects after a failed connect, so a dead gateway is not spun on.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// Load generator for wx-gateway: signed WeChat text-message callbacks at a fixed concurrency.
#[derive(Debug, Parser)]
#[command(
    name = "wxgate-load",
    version,
    after_long_help = "Example:\n  wxgate-load --url http://127.0.0.1:8080/wx/benchsafe --mode safe \\\n    --token benchtoken --aes-key <43 chars> --appid wx0000000000bench \\\n    --connections 128 --duration 10s --gateway-pid $(pidof wx-gateway)"
)]
struct Args {
    /// Callback URL of the account, used when --account-count is 1 (http only).
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:8080/wx/bench"
    )]
    url: String,

    /// URL the account id is appended to when --account-count is more than 1.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080/wx/")]
    url_prefix: String,

    /// Spread requests round-robin over this many accounts {account-prefix}0..{account-prefix}{N-1}.
    #[arg(long, value_name = "N", default_value_t = 1)]
    account_count: u32,

    /// Account id prefix used when --account-count is more than 1.
    #[arg(long, value_name = "PREFIX", default_value = "bench")]
    account_prefix: String,

    /// Callback Token of the account(s).
    #[arg(long, value_name = "TOKEN", default_value = "benchtoken")]
    token: String,

    /// EncodingAESKey of the account(s), 43 characters; used in safe and compat mode.
    #[arg(
        long,
        value_name = "KEY",
        default_value = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
    )]
    aes_key: String,

    /// AppID the messages are encrypted for (safe and compat mode).
    #[arg(long, value_name = "APPID", default_value = "wx0000000000bench")]
    appid: String,

    /// How callbacks are sent: plain XML, encrypted envelope (safe), or both (compat).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = Mode::Plain)]
    mode: Mode,

    /// Keep-alive connections, each with one request in flight at a time.
    #[arg(long, value_name = "N", default_value_t = 32)]
    connections: usize,

    /// Length of the measured window (500ms, 10s, 2m); ignored with --requests.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    duration: Duration,

    /// Measure exactly this many requests instead of a duration (0 = use --duration).
    #[arg(long, value_name = "N", default_value_t = 0)]
    requests: u64,

    /// Target rate over all connections in requests/s, paced open-loop (then latency from each
    /// request's due time is reported too); 0 = as fast as possible.
    #[arg(long, value_name = "REQ_PER_S", default_value_t = 0.0)]
    rate: f64,

    /// Unmeasured load before the measured window.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,

    /// Gateway process to report CPU µs/request (utime+stime) and VmRSS for (0 = none).
    #[arg(long, value_name = "PID", default_value_t = 0)]
    gateway_pid: u32,

    /// Another process to report CPU µs/request for, e.g. rabbitmq=PID (repeatable); in the
    /// JSON summary under `cpu_us_per_req`, beside this generator as `load`.
    #[arg(long = "watch", value_name = "NAME=PID", value_parser = parse_watch)]
    watch: Vec<(String, u32)>,

    /// Print the summary as one line of JSON.
    #[arg(long, default_value_t = false)]
    json: bool,

    /// Extra keep-alive connections opened (one `GET /healthz` each) and held idle throughout.
    #[arg(long, value_name = "N", default_value_t = 0)]
    idle_connections: usize,

    /// Interval of one `GET /healthz` on each idle connection, so a server idle timeout does not
    /// close it (the gateway closes connections idle for 10 s); 0 = never.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    idle_refresh: Duration,

    /// Distinct sender openids to pick from at random.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    openids: usize,

    /// Timeout of one request, connect included.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,

    /// Tokio worker threads of the generator (keep it small when sharing cores with the gateway).
    #[arg(long, value_name = "N", default_value_t = 1)]
    threads: usize,

    /// What a 200 answer must hold to count as OK: the body `success`, or a passive text reply
    /// echoing the message's content to its sender (plain XML in plain mode; in safe mode an
    /// encrypted envelope whose `MsgSignature` verifies and which decrypts for --appid; either
    /// in compat mode).
    #[arg(long, value_enum, value_name = "ANSWER", default_value_t = Expect::Success)]
    expect: Expect,
}

/// What a successful answer looks like (`--expect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Expect {
    /// The body is exactly `success`.
    Success,
    /// A text passive reply with the message's content, to its sender, from the account.
    Echo,
}

/// How callbacks are encrypted (docs/protocol.md §1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Plain XML, `signature` only.
    Plain,
    /// `<xml><ToUserName/><Encrypt/></xml>` with `encrypt_type=aes&msg_signature=`.
    Safe,
    /// The plain message plus an `<Encrypt>` copy, with `encrypt_type=aes&msg_signature=`.
    Compat,
}

impl Expect {
    fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Echo => "echo",
        }
    }
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Safe => "safe",
            Self::Compat => "compat",
        }
    }
}

/// One ready-to-send callback.
#[derive(Clone)]
struct Prepared {
    /// Origin-form path and query.
    uri: Uri,
    body: Bytes,
    /// With `--expect echo`: the reply the answer must hold.
    echo: Option<Arc<EchoExpected>>,
}

/// The passive reply an echoing server must answer a callback with.
struct EchoExpected {
    /// `ToUserName` of the reply: the sender's openid.
    to_user: String,
    /// `FromUserName` of the reply: the account's original id.
    from_user: String,
    /// `Content` of the reply: the message's own content.
    content: String,
}

/// One account the load is spread over.
struct AccountTarget {
    /// Path part of its callback URL.
    path: String,
    /// `ToUserName` of its messages (the account's original id).
    to_user: String,
}

/// Builds distinct signed callbacks.
struct Generator {
    accounts: Vec<AccountTarget>,
    openids: Vec<String>,
    token: String,
    appid: String,
    aes_key: Option<AesKey>,
    mode: Mode,
    expect: Expect,
    /// Unique per run (start time in ms × 10⁶), so reruns against one namespace never collide.
    msg_id_base: u64,
    next_msg: AtomicU64,
}

impl Generator {
    fn generate(&self) -> anyhow::Result<Prepared> {
        let sequence = self.next_msg.fetch_add(1, Ordering::Relaxed);
        let msg_id = self.msg_id_base.wrapping_add(sequence);
        let account_count = u64::try_from(self.accounts.len()).unwrap_or(1).max(1);
        let account_index = usize::try_from(sequence % account_count).unwrap_or(0);
        let Some(account) = self.accounts.get(account_index) else {
            bail!("account index out of range");
        };
        let mut rng = rand::rng();
        let openid = self
            .openids
            .get(rng.random_range(0..self.openids.len().max(1)))
            .map_or("oBenchUser", String::as_str);
        let timestamp = unix_seconds().to_string();
        let nonce = rng.random::<u32>().to_string();
        let signature = url_signature(&self.token, &timestamp, &nonce);

        let mut message = String::with_capacity(512);
        write!(
            message,
            "<xml><ToUserName><![CDATA[{to}]]></ToUserName>\
             <FromUserName><![CDATA[{openid}]]></FromUserName>\
             <CreateTime>{timestamp}</CreateTime>\
             <MsgType><![CDATA[text]]></MsgType>\
             <Content><![CDATA[wxgate bench {msg_id}]]></Content>\
             <MsgId>{msg_id}</MsgId></xml>",
            to = account.to_user,
        )?;

        let mut path_and_query = String::with_capacity(account.path.len() + 200);
        write!(
            path_and_query,
            "{path}?signature={signature}&timestamp={timestamp}&nonce={nonce}&openid={openid}",
            path = account.path,
        )?;
        let body = match (self.mode, &self.aes_key) {
            (Mode::Plain, _) => message,
            (Mode::Safe | Mode::Compat, None) => bail!("safe and compat mode need --aes-key"),
            (Mode::Safe | Mode::Compat, Some(key)) => {
                let sealed = encrypt(key, &self.appid, rng.random(), message.as_bytes());
                let signature = msg_signature(&self.token, &timestamp, &nonce, &sealed);
                write!(
                    path_and_query,
                    "&encrypt_type=aes&msg_signature={signature}"
                )?;
                let encrypt_element = format!("<Encrypt><![CDATA[{sealed}]]></Encrypt>");
                if self.mode == Mode::Safe {
                    format!(
                        "<xml><ToUserName><![CDATA[{}]]></ToUserName>{encrypt_element}</xml>",
                        account.to_user
                    )
                } else {
                    let plain_fields = message.strip_suffix("</xml>").unwrap_or(&message);
                    format!("{plain_fields}{encrypt_element}</xml>")
                }
            }
        };
        let echo = (self.expect == Expect::Echo).then(|| {
            Arc::new(EchoExpected {
                to_user: openid.to_owned(),
                from_user: account.to_user.clone(),
                content: format!("wxgate bench {msg_id}"),
            })
        });
        Ok(Prepared {
            uri: Uri::try_from(path_and_query).context("building the request uri")?,
            body: Bytes::from(body),
            echo,
        })
    }

    /// Whether `body` is the echo reply `expected` describes, in this run's mode.
    fn is_echo(&self, expected: &EchoExpected, body: &[u8]) -> bool {
        let sealed = parse_sealed_reply(body).ok();
        let plain_xml = match (self.mode, sealed, &self.aes_key) {
            (Mode::Plain, None, _) | (Mode::Compat, None, _) => {
                return is_echo_reply(expected, body);
            }
            (Mode::Safe | Mode::Compat, Some(sealed), Some(key)) => {
                if verify_msg_signature(
                    &self.token,
                    &sealed.timestamp,
                    &sealed.nonce,
                    &sealed.encrypt,
                    &sealed.msg_signature,
                )
                .is_err()
                {
                    return false;
                }
                match decrypt_utf8(key, &self.appid, &sealed.encrypt) {
                    Ok(xml) => xml,
                    Err(_) => return false,
                }
            }
            _ => return false,
        };
        is_echo_reply(expected, plain_xml.as_bytes())
    }
}

/// Whether `xml` is a plain text reply matching `expected`.
fn is_echo_reply(expected: &EchoExpected, xml: &[u8]) -> bool {
    let Ok(rendered) = parse_reply(xml) else {
        return false;
    };
    rendered.to_user == expected.to_user
        && rendered.from_user == expected.from_user
        && matches!(&rendered.reply, Reply::Text { content } if *content == expected.content)
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The gateway's address, shared by every account URL.
struct Target {
    /// `host:port`, for connecting.
    connect_to: String,
    /// The `Host` header.
    host: HeaderValue,
}

/// Splits an `http://host[:port]/path` URL into its target and path.
fn split_url(url: &str) -> anyhow::Result<(Target, String)> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("invalid url `{url}`"))?;
    if uri.scheme_str() != Some("http") {
        bail!("only http:// urls are supported, got `{url}`");
    }
    let Some(authority) = uri.authority() else {
        bail!("url `{url}` has no host");
    };
    let port = authority.port_u16().unwrap_or(80);
    let target = Target {
        connect_to: format!("{}:{port}", authority.host()),
        host: HeaderValue::from_str(authority.as_str()).context("host header")?,
    };
    Ok((target, uri.path().to_owned()))
}

/// When the measured window starts and ends, and how requests are paced.
struct Plan {
    start: Instant,
    measure_start: Instant,
    /// `None` in `--requests` mode.
    measure_end: Option<Instant>,
    /// Requests to measure in `--requests` mode.
    requests: Option<u64>,
    /// Seconds between two scheduled requests over all connections; `None` = unpaced.
    interval: Option<f64>,
    timeout: Duration,
}

struct Shared {
    target: Arc<Target>,
    generator: Generator,
    pregenerated: Option<Vec<Prepared>>,
    plan: Plan,
    /// Next pacing slot.
    next_ticket: AtomicU64,
    /// Measured requests started so far (counts against `--requests`).
    measured_started: AtomicU64,
    stop: AtomicBool,
}

/// What one connection task saw in the measured window.
#[derive(Default)]
struct TaskReport {
    ok: u64,
    /// Response time of successful requests, µs from send to full body.
    latency_us: Vec<u32>,
    /// With `--rate`: µs from the scheduled send time to the full body (includes queueing
    /// behind a slow connection, i.e. corrected for coordinated omission).
    scheduled_latency_us: Vec<u32>,
    status: BTreeMap<u16, u64>,
    /// Requests of the warmup answered as expected (not measured, but the server did the work).
    warmup_ok: u64,
    connect_errors: u64,
    request_errors: u64,
    timeouts: u64,
    bad_bodies: u64,
}

impl TaskReport {
    fn merge(&mut self, other: TaskReport) {
        self.ok += other.ok;
        self.warmup_ok += other.warmup_ok;
        self.latency_us.extend(other.latency_us);
        self.scheduled_latency_us.extend(other.scheduled_latency_us);
        for (code, count) in other.status {
            *self.status.entry(code).or_default() += count;
        }
        self.connect_errors += other.connect_errors;
        self.request_errors += other.request_errors;
        self.timeouts += other.timeouts;
        self.bad_bodies += other.bad_bodies;
    }

    fn errors(&self) -> u64 {
        self.status.values().sum::<u64>()
            + self.connect_errors
            + self.request_errors
            + self.timeouts
            + self.bad_bodies
    }
}

fn micros(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}

async fn connect(target: &Target) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(&target.connect_to).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // The sender sees the failure on its next request; nothing to report here.
        let _ = connection.await;
    });
    Ok(sender)
}

/// What to send next, or `None` when this task is done.
enum Next {
    Send {
        request: Prepared,
        measured: bool,
        scheduled: Option<Instant>,
    },
    Done,
}

async fn next_request(shared: &Shared) -> anyhow::Result<Next> {
    let plan = &shared.plan;
    let scheduled = match plan.interval {
        Some(interval) => {
            let ticket = shared.next_ticket.fetch_add(1, Ordering::Relaxed);
            #[allow(clippy::cast_precision_loss)] // Tickets stay far below 2^52.
            let offset =
                Duration::try_from_secs_f64(ticket as f64 * interval).unwrap_or(Duration::MAX);
            let Some(at) = plan.start.checked_add(offset) else {
                return Ok(Next::Done);
            };
            if plan.measure_end.is_some_and(|end| at >= end) {
                return Ok(Next::Done);
            }
            sleep_until(at).await;
            Some(at)
        }
        None => None,
    };
    if shared.stop.load(Ordering::Relaxed) {
        return Ok(Next::Done);
    }
    let now = Instant::now();
    if plan.measure_end.is_some_and(|end| now >= end) {
        return Ok(Next::Done);
    }
    let measured = scheduled.unwrap_or(now) >= plan.measure_start;
    if !measured {
        return Ok(Next::Send {
            request: shared.generator.generate()?,
            measured,
            scheduled,
        });
    }
    let index = shared.measured_started.fetch_add(1, Ordering::Relaxed);
    if plan.requests.is_some_and(|limit| index >= limit) {
        shared.stop.store(true, Ordering::Relaxed);
        return Ok(Next::Done);
    }
    let pregenerated = shared
        .pregenerated
        .as_ref()
        .and_then(|all| all.get(usize::try_from(index).ok()?))
        .cloned();
    let request = match pregenerated {
        Some(request) => request,
        None => shared.generator.generate()?,
    };
    Ok(Next::Send {
        request,
        measured,
        scheduled,
    })
}

/// How one request ended.
enum Outcome {
    Ok,
    Status(StatusCode),
    BadBody,
    ConnectError,
    RequestError,
    Timeout,
}

async fn send(
    shared: &Shared,
    sender: &mut Option<SendRequest<Full<Bytes>>>,
    prepared: Prepared,
) -> Outcome {
    let deadline = Instant::now() + shared.plan.timeout;
    let mut connection = match sender.take() {
        Some(existing) if !existing.is_closed() => existing,
        _ => match timeout(shared.plan.timeout, connect(&shared.target)).await {
            Ok(Ok(fresh)) => fresh,
            Ok(Err(_)) => return Outcome::ConnectError,
            Err(_) => return Outcome::Timeout,
        },
    };
    let echo = prepared.echo;
    let mut request = Request::new(Full::new(prepared.body));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = prepared.uri;
    request
        .headers_mut()
        .insert(HOST, shared.target.host.clone());
    request
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    let exchange = async {
        connection.ready().await?;
        let response = connection.send_request(request).await?;
        let status = response.status();
        // A server that closes after each answer (gunicorn's sync workers) says so; the next
        // request then opens a new connection instead of failing on this one.
        let closing = response
            .headers()
            .get(CONNECTION)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, body, closing))
    };
    let (status, body, closing) = match tokio::time::timeout_at(deadline, exchange).await {
        Err(_) => return Outcome::Timeout,
        Ok(Err(_)) => return Outcome::RequestError,
        Ok(Ok(answer)) => answer,
    };
    if !closing {
        *sender = Some(connection);
    }
    if status != StatusCode::OK {
        return Outcome::Status(status);
    }
    let expected = match &echo {
        Some(expected) => shared.generator.is_echo(expected, &body),
        None => body.as_ref() == b"success",
    };
    if expected {
        Outcome::Ok
    } else {
        Outcome::BadBody
    }
}

async fn run_connection(shared: Arc<Shared>) -> anyhow::Result<TaskReport> {
    let mut report = TaskReport::default();
    let mut sender = None;
    loop {
        let (prepared, measured, scheduled) = match next_request(&shared).await? {
            Next::Done => break,
            Next::Send {
                request,
                measured,
                scheduled,
            } => (request, measured, scheduled),
        };
        let sent_at = Instant::now();
        let outcome = send(&shared, &mut sender, prepared).await;
        let done_at = Instant::now();
        if matches!(outcome, Outcome::ConnectError) {
            sleep(RECONNECT_PAUSE).await;
        }
        if !measured {
            if matches!(outcome, Outcome::Ok) {
                report.warmup_ok += 1;
            }
            continue;
        }
        match outcome {
            Outcome::Ok => {
                report.ok += 1;
                report.latency_us.push(micros(done_at - sent_at));
                if let Some(at) = scheduled {
                    report
                        .scheduled_latency_us
                        .push(micros(done_at.saturating_duration_since(at)));
                }
            }
            Outcome::Status(status) => *report.status.entry(status.as_u16()).or_default() += 1,
            Outcome::BadBody => report.bad_bodies += 1,
            Outcome::ConnectError => report.connect_errors += 1,
            Outcome::RequestError => report.request_errors += 1,
            Outcome::Timeout => report.timeouts += 1,
        }
    }
    Ok(report)
}

/// Makes one `GET /healthz` on an idle connection.
async fn ping(sender: &mut SendRequest<Empty<Bytes>>, target: &Target) -> anyhow::Result<()> {
    let mut request = Request::new(Empty::new());
    *request.uri_mut() = Uri::from_static("/healthz");
    request.headers_mut().insert(HOST, target.host.clone());
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    if status != StatusCode::OK {
        bail!("GET /healthz answered {status}");
    }
    Ok(())
}

/// Opens one idle keep-alive connection and makes one `GET /healthz` on it, so the server has
/// accepted and served it.
async fn open_idle(target: Arc<Target>) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(&target.connect_to).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    ping(&mut sender, &target).await?;
    Ok(sender)
}

/// Idle connections held open for the whole run; dropping this closes them.
struct IdleConnections {
    /// One keeper task per open connection.
    keepers: JoinSet<()>,
    /// Connections still open (a keeper decrements it when its connection fails).
    open: Arc<AtomicU64>,
    /// Connections that could not be opened.
    failed: u64,
}

/// Keeps one idle connection open: a `GET /healthz` every `refresh` (first one at a random
/// offset, so the pings are spread out), or no request at all when `refresh` is zero.
/// Returns when the connection fails.
async fn keep_idle(
    mut sender: SendRequest<Empty<Bytes>>,
    target: Arc<Target>,
    refresh: Duration,
    per_request: Duration,
    open: Arc<AtomicU64>,
) {
    if refresh.is_zero() {
        // No request ever: only notice when the server closes the connection.
        while !sender.is_closed() {
            sleep(Duration::from_secs(1)).await;
        }
    } else {
        let first = refresh.mul_f64(rand::rng().random::<f64>());
        sleep(first).await;
        loop {
            if sender.is_closed()
                || !matches!(
                    timeout(per_request, ping(&mut sender, &target)).await,
                    Ok(Ok(()))
                )
            {
                break;
            }
            sleep(refresh).await;
        }
    }
    open.fetch_sub(1, Ordering::Relaxed);
}

async fn open_idle_connections(
    target: Arc<Target>,
    count: usize,
    refresh: Duration,
    per_request: Duration,
) -> IdleConnections {
    let open = Arc::new(AtomicU64::new(0));
    let mut keepers = JoinSet::new();
    let mut failed = 0;
    let mut pending = JoinSet::new();
    let mut launched = 0;
    while launched < count || !pending.is_empty() {
        while launched < count && pending.len() < IDLE_OPEN_PARALLELISM {
            let target = Arc::clone(&target);
            pending.spawn(async move { timeout(per_request, open_idle(target)).await });
            launched += 1;
        }
        match pending.join_next().await {
            Some(Ok(Ok(Ok(sender)))) => {
                open.fetch_add(1, Ordering::Relaxed);
                keepers.spawn(keep_idle(
                    sender,
                    Arc::clone(&target),
                    refresh,
                    per_request,
                    Arc::clone(&open),
                ));
            }
            Some(_) => failed += 1,
            None => break,
        }
    }
    IdleConnections {
        keepers,
        open,
        failed,
    }
}

/// Nearest-rank percentile of sorted samples, in ms.
fn percentile_ms(sorted_us: &[u32], fraction: f64) -> f64 {
    f64::from(nearest_rank(sorted_us, fraction)) / 1000.0
}

struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Latency {
    fn of(samples: &mut [u32]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        Some(Self {
            p50: percentile_ms(samples, 0.50),
            p90: percentile_ms(samples, 0.90),
            p99: percentile_ms(samples, 0.99),
            max: percentile_ms(samples, 1.0),
        })
    }

    fn json(&self) -> String {
        format!(
            "{{\"p50\":{:.3},\"p90\":{:.3},\"p99\":{:.3},\"max\":{:.3}}}",
            self.p50, self.p90, self.p99, self.max
        )
    }

    fn text(&self) -> String {
        format!(
            "p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            self.p50, self.p90, self.p99, self.max
        )
    }
}

/// Per-request CPU in µs; `None` when nothing was measured.
fn per_request(cpu_us: u64, requests: u64) -> Option<f64> {
    #[allow(clippy::cast_precision_loss)] // Both stay far below 2^52.
    (requests > 0).then(|| cpu_us as f64 / requests as f64)
}

fn json_number(value: Option<f64>) -> String {
    value.map_or_else(|| "null".to_owned(), |v| format!("{v:.2}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("starting the tokio runtime")
        .and_then(|runtime| runtime.block_on(run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wxgate-load: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        bail!("--rate must be a non-negative number");
    }
    let aes_key = match args.mode {
        Mode::Plain => None,
        Mode::Safe | Mode::Compat => Some(
            AesKey::from_encoding_aes_key(&args.aes_key)
                .map_err(|e| anyhow::anyhow!("--aes-key: {e}"))?,
        ),
    };

    let (target, accounts) = if args.account_count <= 1 {
        let (target, path) = split_url(&args.url)?;
        let account = AccountTarget {
            path,
            to_user: "gh_000000000000".to_owned(),
        };
        (target, vec![account])
    } else {
        let (target, prefix_path) = split_url(&args.url_prefix)?;
        let accounts = (0..args.account_count)
            .map(|index| AccountTarget {
                path: format!("{prefix_path}{}{index}", args.account_prefix),
                to_user: format!("gh_{index:012x}"),
            })
            .collect();
        (target, accounts)
    };
    let openids = (0..args.openids.max(1))
        .map(|index| format!("oBench{index:022}"))
        .collect();
    let start_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
    let generator = Generator {
        accounts,
        openids,
        token: args.token.clone(),
        appid: args.appid.clone(),
        aes_key,
        mode: args.mode,
        expect: args.expect,
        msg_id_base: start_ms.wrapping_mul(1_000_000),
        next_msg: AtomicU64::new(0),
    };

    let requests = (args.requests > 0).then_some(args.requests);
    let pregenerated = match requests {
        Some(count) if count <= PREGENERATE_LIMIT => {
            let capacity = usize::try_from(count).unwrap_or(0);
            let mut all = Vec::with_capacity(capacity);
            for _ in 0..count {
                all.push(generator.generate()?);
            }
            Some(all)
        }
        _ => None,
    };

    let target = Arc::new(target);
    let gateway_pid = (args.gateway_pid > 0).then(|| args.gateway_pid.to_string());
    let watched = Watched::new("load", &args.watch)?.with("gateway", args.gateway_pid)?;
    let idle = open_idle_connections(
        Arc::clone(&target),
        args.idle_connections,
        args.idle_refresh,
        args.timeout,
    )
    .await;
    let idle_failed = idle.failed;
    // Read right after opening, before any load: RSS attributable to the open connections.
    let gateway_rss_idle_kib = match (&gateway_pid, args.idle_connections) {
        (Some(pid), 1..) => Some(rss_kib(pid)?),
        _ => None,
    };

    let start = Instant::now();
    let measure_start = start + args.warmup;
    let plan = Plan {
        start,
        measure_start,
        measure_end: match requests {
            Some(_) => None,
            None => Some(measure_start + args.duration),
        },
        requests,
        interval: (args.rate > 0.0).then(|| 1.0 / args.rate),
        timeout: args.timeout,
    };
    let shared = Arc::new(Shared {
        target,
        generator,
        pregenerated,
        plan,
        next_ticket: AtomicU64::new(0),
        measured_started: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });

    let mut tasks = JoinSet::new();
    for _ in 0..args.connections {
        tasks.spawn(run_connection(Arc::clone(&shared)));
    }

    sleep_until(measure_start).await;
    let window_start = Instant::now();
    let cpu_before = watched.cpu()?;

    let mut report = TaskReport::default();
    while let Some(joined) = tasks.join_next().await {
        report.merge(joined.context("connection task panicked")??);
    }
    let elapsed = window_start.elapsed();
    let cpu_used = watched.cpu()?.since(&cpu_before);
    let self_cpu_us = cpu_used.get("load").copied().unwrap_or(0);
    let gateway_cpu_us = cpu_used.get("gateway").copied();
    let gateway_rss_kib = gateway_pid.as_deref().map(rss_kib).transpose()?;
    let idle_open = idle.open.load(Ordering::Relaxed);
    drop(idle.keepers);

    let errors = report.errors();
    let total = report.ok + errors;
    #[allow(clippy::cast_precision_loss)] // Counts stay far below 2^52.
    let throughput = report.ok as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    let latency = Latency::of(&mut report.latency_us);
    let scheduled_latency = Latency::of(&mut report.scheduled_latency_us);
    let gateway_per_request = gateway_cpu_us.and_then(|cpu| per_request(cpu, report.ok));
    let self_per_request = per_request(self_cpu_us, report.ok);
    let mut watched_per_request = String::new();
    for (index, (name, used)) in cpu_used.iter().enumerate() {
        if index > 0 {
            watched_per_request.push(',');
        }
        write!(
            watched_per_request,
            "\"{name}\":{}",
            json_number(per_request(*used, report.ok))
        )?;
    }

    if args.json {
        let mut status = String::new();
        for (index, (code, count)) in report.status.iter().enumerate() {
            if index > 0 {
                status.push(',');
            }
            write!(status, "\"{code}\":{count}")?;
        }
        println!(
            "{{\"mode\":\"{mode}\",\"connections\":{connections},\"accounts\":{accounts},\
             \"rate_target\":{rate},\"elapsed_s\":{elapsed:.3},\"requests\":{total},\"ok\":{ok},\
             \"warmup_ok\":{warmup_ok},\"expect\":\"{expect}\",\
             \"errors\":{{\"total\":{errors},\"status\":{{{status}}},\"connect\":{connect},\
             \"request\":{request},\"timeout\":{timeouts},\"body\":{body}}},\
             \"req_per_s\":{throughput:.1},\"latency_ms\":{latency},\
             \"scheduled_latency_ms\":{scheduled},\"gateway_cpu_us_per_req\":{gateway_cpu},\
             \"gateway_rss_kib\":{gateway_rss},\"gateway_rss_after_idle_open_kib\":{gateway_rss_idle},\"load_cpu_us_per_req\":{self_cpu},\
             \"cpu_us_per_req\":{{{watched_per_request}}},\
             \"idle_connections\":{{\"requested\":{idle_requested},\"failed\":{idle_failed},\
             \"open_at_end\":{idle_open}}}}}",
            mode = args.mode.as_str(),
            connections = args.connections,
            accounts = args.account_count.max(1),
            rate = args.rate,
            elapsed = elapsed.as_secs_f64(),
            ok = report.ok,
            warmup_ok = report.warmup_ok,
            expect = args.expect.as_str(),
            connect = report.connect_errors,
            request = report.request_errors,
            timeouts = report.timeouts,
            body = report.bad_bodies,
            latency = latency
                .as_ref()
                .map_or_else(|| "null".to_owned(), Latency::json),
            scheduled = scheduled_latency
                .as_ref()
                .map_or_else(|| "null".to_owned(), Latency::json),
            gateway_cpu = json_number(gateway_per_request),
            gateway_rss = gateway_rss_kib.map_or_else(|| "null".to_owned(), |v| v.to_string()),
            gateway_rss_idle =
                gateway_rss_idle_kib.map_or_else(|| "null".to_owned(), |v| v.to_string()),
            self_cpu = json_number(self_per_request),
            idle_requested = args.idle_connections,
        );
    } else {
        let rate = if args.rate > 0.0 {
            format!("{} req/s", args.rate)
        } else {
            "unpaced".to_owned()
        };
        println!(
            "wxgate-load: mode {} | {} connections | {} account(s) | {rate} | window {:.2} s",
            args.mode.as_str(),
            args.connections,
            args.account_count.max(1),
            elapsed.as_secs_f64()
        );
        println!(
            "requests     {total}  (ok {}, errors {errors}; {} ok in the warmup)",
            report.ok, report.warmup_ok
        );
        if errors > 0 {
            let mut kinds: Vec<String> = report
                .status
                .iter()
                .map(|(code, count)| format!("status {code}: {count}"))
                .collect();
            for (name, count) in [
                ("connect", report.connect_errors),
                ("request", report.request_errors),
                ("timeout", report.timeouts),
                ("body not as --expect says", report.bad_bodies),
            ] {
                if count > 0 {
                    kinds.push(format!("{name}: {count}"));
                }
            }
            println!("errors       {}", kinds.join(", "));
        }
        println!("throughput   {throughput:.1} req/s (successful)");
        if let Some(latency) = &latency {
            println!("latency      {}", latency.text());
        }
        if let Some(latency) = &scheduled_latency {
            println!("from sched.  {}", latency.text());
        }
        if let Some(cpu) = gateway_per_request {
            println!("gateway cpu  {cpu:.1} µs/request");
        }
        if let Some(rss) = gateway_rss_kib {
            #[allow(clippy::cast_precision_loss)] // KiB counts stay far below 2^52.
            let mib = rss as f64 / 1024.0;
            println!("gateway rss  {mib:.1} MiB");
        }
        if let Some(rss) = gateway_rss_idle_kib {
            #[allow(clippy::cast_precision_loss)] // KiB counts stay far below 2^52.
            let mib = rss as f64 / 1024.0;
            println!("gateway rss  {mib:.1} MiB right after opening the idle connections");
        }
        if let Some(cpu) = self_per_request {
            println!("load cpu     {cpu:.1} µs/request (this generator)");
        }
        if !args.watch.is_empty() {
            println!("cpu µs/req   {watched_per_request}");
        }
        if args.idle_connections > 0 {
            println!(
                "idle conns   {} requested, {idle_failed} failed to open, {idle_open} open at end",
                args.idle_connections
            );
        }
    }
    if report.ok == 0 {
        bail!("no request succeeded");
    }
    Ok(())
}

/// `VmRSS` of a process in KiB.
fn rss_kib(pid: &str) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS:")
}

#[cfg(test)]
mod tests {
    use super::*;
    use wechat::crypto::seal_reply;
    use wechat::reply::render;

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    fn generator(mode: Mode) -> Generator {
        Generator {
            accounts: Vec::new(),
            openids: Vec::new(),
            token: "benchtoken".to_owned(),
            appid: "wx0000000000bench".to_owned(),
            aes_key: Some(AesKey::from_encoding_aes_key(KEY).unwrap()),
            mode,
            expect: Expect::Echo,
            msg_id_base: 0,
            next_msg: AtomicU64::new(0),
        }
    }

    fn expected() -> EchoExpected {
        EchoExpected {
            to_user: "oUser".to_owned(),
            from_user: "gh_000000000000".to_owned(),
            content: "wxgate bench 7".to_owned(),
        }
    }

    fn reply(content: &str) -> String {
        let reply = Reply::Text {
            content: content.to_owned(),
        };
        render(&reply, "oUser", "gh_000000000000", 1)
    }

    fn sealed(token: &str, xml: &str) -> String {
        let key = AesKey::from_encoding_aes_key(KEY).unwrap();
        seal_reply(&key, "wx0000000000bench", token, [7; 16], "1", "2", xml)
    }

    #[test]
    fn plain_mode_accepts_only_the_plain_echo() {
        let generator = generator(Mode::Plain);
        let expected = expected();
        assert!(generator.is_echo(&expected, reply("wxgate bench 7").as_bytes()));
        assert!(!generator.is_echo(&expected, reply("wxgate bench 8").as_bytes()));
        assert!(!generator.is_echo(&expected, b"success"));
        let encrypted = sealed("benchtoken", &reply("wxgate bench 7"));
        assert!(!generator.is_echo(&expected, encrypted.as_bytes()));
    }

    #[test]
    fn safe_mode_accepts_only_a_verified_encrypted_echo() {
        let generator = generator(Mode::Safe);
        let expected = expected();
        let good = sealed("benchtoken", &reply("wxgate bench 7"));
        assert!(generator.is_echo(&expected, good.as_bytes()));
        let wrong_token = sealed("othertoken", &reply("wxgate bench 7"));
        assert!(!generator.is_echo(&expected, wrong_token.as_bytes()));
        let wrong_content = sealed("benchtoken", &reply("something else"));
        assert!(!generator.is_echo(&expected, wrong_content.as_bytes()));
        assert!(!generator.is_echo(&expected, reply("wxgate bench 7").as_bytes()));
        assert!(!generator.is_echo(&expected, b"success"));
    }

    #[test]
    fn compat_mode_accepts_either_form() {
        let generator = generator(Mode::Compat);
        let expected = expected();
        assert!(generator.is_echo(&expected, reply("wxgate bench 7").as_bytes()));
        let encrypted = sealed("benchtoken", &reply("wxgate bench 7"));
        assert!(generator.is_echo(&expected, encrypted.as_bytes()));
    }
}

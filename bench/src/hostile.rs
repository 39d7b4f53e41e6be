//! wxgate-hostile: runs hostile-input attacks against a running wx-gateway or wx-worker and
//! prints a markdown table: attack, what the process answered, whether a good request right
//! after was served, and the process's RSS before, at its peak during, and after the attack,
//! with the CPU time it spent. `bench/hostile.sh` starts a release gateway or worker with a
//! small connection cap and header timeout and runs this against it.
//!
//! Against the gateway the good request is a signed callback (200). Against the worker it is
//! `GET /readyz` (200) and, on the gRPC listener, `Accounts.List` on a new connection (OK);
//! the worker also gets the HTTP/2 attacks of [`grpc`].

#[path = "hostile/grpc.rs"]
mod grpc;
#[path = "hostile/h2raw.rs"]
mod h2raw;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// What is attacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// wx-gateway: `--addr` is its callback listener.
    Gateway,
    /// wx-worker: `--addr` is `worker.http_listen`, `--grpc-addr` its gRPC listener.
    Worker,
}

#[derive(Parser, Debug)]
#[command(about = "Hostile-input attacks against a running wx-gateway or wx-worker, with its RSS")]
struct Args {
    /// What `--addr` and `--pid` are.
    #[arg(long, value_enum, default_value_t = Kind::Gateway)]
    target: Kind,
    /// Address of the gateway, or of the worker's HTTP listener.
    #[arg(long, default_value = "127.0.0.1:18080")]
    addr: SocketAddr,
    /// Pid of the process attacked, for its RSS and CPU time (/proc/PID).
    #[arg(long)]
    pid: u32,
    /// A plain-mode account id of the gateway (the worker: the account whose events the slow
    /// subscribers receive).
    #[arg(long, default_value = "bench")]
    account: String,
    /// Its token.
    #[arg(long, default_value = "benchtoken")]
    token: String,
    /// Its original id (ToUserName).
    #[arg(long, default_value = "gh_bench")]
    to_user: String,
    /// Its appid (worker: put in the events published).
    #[arg(long, default_value = "wx0000000000bench")]
    appid: String,
    /// The connection cap of `--addr` (`gateway.max_connections`,
    /// `worker.http_max_connections`).
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// Connections opened beyond the cap in the flood.
    #[arg(long, default_value_t = 1000)]
    beyond: usize,
    /// Parallel copies of each attack.
    #[arg(long, default_value_t = 50)]
    copies: usize,
    /// Worker: its gRPC address.
    #[arg(long, default_value = "127.0.0.1:18051")]
    grpc_addr: SocketAddr,
    /// Worker: an API key allowed Accounts.List (and Events.Subscribe on `--account`).
    #[arg(long, env = "WXGATE_API_KEY", default_value = "")]
    api_key: String,
    /// Worker: streams opened on each connection of the stream flood.
    #[arg(long, default_value_t = 1000)]
    streams: u32,
    /// Worker: HEADERS + RST_STREAM pairs sent on each connection of the rapid reset.
    #[arg(long, default_value_t = 10_000)]
    resets: u32,
    /// Worker: idle gRPC connections opened (each kind).
    #[arg(long, default_value_t = 5000)]
    idle: usize,
    /// Worker: how long the idle connections are held.
    #[arg(long, default_value = "15s", value_parser = wxgate_bench::parse_duration)]
    hold: Duration,
    /// Worker: the AMQP URL and namespace of the worker, for the slow subscribers' events;
    /// the slow-subscriber attack is skipped without them.
    #[arg(long)]
    amqp_url: Option<String>,
    /// Worker: its namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// Worker: slow subscribers (Events.Subscribe streams that never read).
    #[arg(long, default_value_t = 20)]
    subscribers: usize,
    /// Worker: events published to them.
    #[arg(long, default_value_t = 30_000)]
    events: u64,
}

/// Resident set of `pid` in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status: is the gateway running?"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct Target {
    kind: Kind,
    addr: SocketAddr,
    account: String,
    token: String,
    to_user: String,
}

impl Target {
    fn signed_query(&self) -> String {
        let timestamp = now_s().to_string();
        let nonce = format!("{}", rand::random::<u32>());
        let signature = wechat::url_signature(&self.token, &timestamp, &nonce);
        format!("signature={signature}&timestamp={timestamp}&nonce={nonce}")
    }

    /// The method of the attacks' requests: a callback POST, or the worker's GET.
    fn method(&self) -> &'static str {
        match self.kind {
            Kind::Gateway => "POST",
            Kind::Worker => "GET",
        }
    }

    /// The path of the attacks' requests: a signed callback, or the worker's `/readyz`.
    fn path(&self) -> String {
        match self.kind {
            Kind::Gateway => format!("/wx/{}?{}", self.account, self.signed_query()),
            Kind::Worker => "/readyz".to_owned(),
        }
    }

    /// A body with `content`: a text message for the gateway; the worker reads no body.
    fn message(&self, content: &str) -> String {
        match self.kind {
            Kind::Gateway => format!(
                "<xml><ToUserName><![CDATA[{}]]></ToUserName><FromUserName><![CDATA[oHostile00000000000000000000]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content>{content}</Content><MsgId>{}</MsgId></xml>",
                self.to_user,
                now_s(),
                rand::random::<u32>()
            ),
            Kind::Worker => content.to_owned(),
        }
    }

    /// A complete request of `body` to `path`, `Connection: close`.
    fn post(&self, path: &str, body: &[u8]) -> Vec<u8> {
        let mut request = format!(
            "{} {path} HTTP/1.1\r\nHost: wxgate\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.method(),
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        request
    }

    /// The good request: a signed callback, or `GET /readyz`.
    fn good_request(&self) -> Vec<u8> {
        match self.kind {
            Kind::Gateway => self.post(&self.path(), self.message("good").as_bytes()),
            Kind::Worker => {
                b"GET /readyz HTTP/1.1\r\nHost: wxgate\r\nConnection: close\r\n\r\n".to_vec()
            }
        }
    }
}

/// Sends `request`, returns the first status seen ("close" when none) and the time taken.
async fn exchange(addr: SocketAddr, request: Vec<u8>, shutdown: bool) -> String {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return "connect failed".to_owned();
    };
    let _ = stream.write_all(&request).await;
    if shutdown {
        let _ = stream.shutdown().await;
    }
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut seen)).await;
    status_of(&seen)
}

fn status_of(seen: &[u8]) -> String {
    let text = String::from_utf8_lossy(seen);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .map_or_else(|| "close".to_owned(), str::to_owned)
}

/// Runs `copies` of `attack` at once; the distinct answers, with counts.
async fn many<F, Fut>(copies: usize, attack: F) -> String
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = String> + Send + 'static,
{
    let mut set = JoinSet::new();
    for _ in 0..copies {
        set.spawn(attack());
    }
    count(&mut set).await
}

/// Waits for every task of `set`; the distinct answers, with counts.
async fn count(set: &mut JoinSet<String>) -> String {
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    while let Some(answer) = set.join_next().await {
        *answers
            .entry(answer.unwrap_or_else(|e| format!("panic: {e}")))
            .or_default() += 1;
    }
    answers
        .iter()
        .map(|(a, n)| format!("{a} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Samples the RSS of `pid` every 20 ms while an attack runs; [`Peak::stop`] returns the
/// largest value seen.
struct Peak {
    peak: Arc<AtomicU64>,
    running: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Peak {
    fn start(pid: u32) -> Peak {
        let peak = Arc::new(AtomicU64::new(rss_kib(pid).unwrap_or(0)));
        let running = Arc::new(AtomicBool::new(true));
        let task = tokio::spawn({
            let (peak, running) = (Arc::clone(&peak), Arc::clone(&running));
            async move {
                while running.load(Ordering::Relaxed) {
                    if let Ok(rss) = rss_kib(pid) {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Peak {
            peak,
            running,
            task,
        }
    }

    async fn stop(self, pid: u32) -> u64 {
        self.running.store(false, Ordering::Relaxed);
        let _ = self.task.await;
        if let Ok(rss) = rss_kib(pid) {
            self.peak.fetch_max(rss, Ordering::Relaxed);
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// CPU time (user + system) of `pid` in ms.
fn cpu_ms(pid: u32) -> u64 {
    wxgate_bench::process_cpu_us(&pid.to_string(), wxgate_bench::ticks_per_second())
        .map_or(0, |us| us / 1000)
}

/// A slow writer: one byte every 100 ms until the gateway cuts it; "cut after N s".
async fn slowloris(addr: SocketAddr, request: Vec<u8>) -> String {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return "connect failed".to_owned();
    };
    let started = Instant::now();
    for byte in request {
        if stream.write_all(&[byte]).await.is_err() {
            break;
        }
        let mut probe = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut probe)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(_)) => return "answered".to_owned(),
            Err(_) => {}
        }
    }
    format!("cut after {} s", started.elapsed().as_secs())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let target = Arc::new(Target {
        kind: args.target,
        addr: args.addr,
        account: args.account.clone(),
        token: args.token.clone(),
        to_user: args.to_user.clone(),
    });
    let grpc = (args.target == Kind::Worker).then(|| grpc::Grpc {
        addr: args.grpc_addr,
        api_key: args.api_key.clone(),
    });
    let addr = args.addr;
    let copies = args.copies;
    let pid = args.pid;
    let good = || async {
        let http = exchange(target.addr, target.good_request(), false).await;
        match &grpc {
            Some(grpc) => format!("{http}, {}", grpc.good_call().await),
            None => http,
        }
    };
    let first = good().await;
    match args.target {
        Kind::Gateway if first != "200" => bail!(
            "the gateway does not answer a good callback 200 ({first}): check --account and --token"
        ),
        Kind::Worker if first != "200, OK" => bail!(
            "the worker does not answer /readyz 200 and Accounts.List OK ({first}): check --addr, --grpc-addr and --api-key"
        ),
        _ => {}
    }
    println!(
        "| attack | answer | {} | RSS before MiB | RSS peak MiB | RSS after MiB | CPU ms |",
        match args.target {
            Kind::Gateway => "good callback after",
            Kind::Worker => "/readyz, Accounts.List after",
        }
    );
    println!("|---|---|---|---|---|---|---|");
    let mib = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);

    macro_rules! attack {
        ($name:expr, $run:expr) => {{
            let before = rss_kib(pid)?;
            let cpu_before = cpu_ms(pid);
            let peak = Peak::start(pid);
            let answer: String = $run;
            let peak = peak.stop(pid).await;
            let after = rss_kib(pid)?;
            let cpu = cpu_ms(pid).saturating_sub(cpu_before);
            let good = good().await;
            println!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                $name,
                answer,
                good,
                mib(before),
                mib(peak),
                mib(after),
                cpu
            );
        }};
    }

    attack!(format!("slowloris ×{copies}, 1 byte / 100 ms"), {
        let t = std::sync::Arc::clone(&target);
        many(copies, move || {
            let request = t.post(&t.path(), t.message("slow").as_bytes());
            slowloris(addr, request)
        })
        .await
    });
    attack!(
        format!(
            "{} idle connections ({} beyond the cap)",
            args.max_connections + args.beyond,
            args.beyond
        ),
        {
            let mut open = Vec::new();
            for _ in 0..(args.max_connections + args.beyond) {
                if let Ok(stream) = TcpStream::connect(addr).await {
                    open.push(stream);
                }
            }
            let opened = open.len();
            let waiting = exchange(
                addr,
                target.post(&target.path(), target.message("waiting").as_bytes()),
                false,
            );
            let early = tokio::time::timeout(Duration::from_millis(500), waiting).await;
            drop(open);
            format!(
                "{opened} open; a request past the cap {}",
                match early {
                    Ok(status) => format!("answered at once: {status}"),
                    Err(_) => "waits".to_owned(),
                }
            )
        }
    );
    attack!(format!("1,000 headers ×{copies}"), {
        let t = std::sync::Arc::clone(&target);
        many(copies, move || {
            let flood: String = (0..1000).map(|i| format!("X-F{i}: {i}\r\n")).collect();
            let request = format!(
                "{} {} HTTP/1.1\r\nHost: w\r\n{flood}\r\n",
                t.method(),
                t.path()
            )
            .into_bytes();
            exchange(addr, request, false)
        })
        .await
    });
    attack!(format!("a 1 MiB header ×{copies}"), {
        let t = std::sync::Arc::clone(&target);
        many(copies, move || {
            let request = format!(
                "{} {} HTTP/1.1\r\nHost: w\r\nX-Huge: {}\r\n\r\n",
                t.method(),
                t.path(),
                "a".repeat(1 << 20)
            )
            .into_bytes();
            exchange(addr, request, false)
        })
        .await
    });
    attack!(format!("chunked body claiming 16 MiB ×{copies}"), {
        let t = std::sync::Arc::clone(&target);
        many(copies, move || {
            let mut request = format!(
                "{} {} HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\n\r\n1000000\r\n",
                t.method(),
                t.path()
            )
            .into_bytes();
            request.extend_from_slice(&vec![b'x'; 2 << 20]);
            exchange(addr, request, false)
        })
        .await
    });
    attack!(format!("Content-Length 16 MiB ×{copies}"), {
        let t = std::sync::Arc::clone(&target);
        many(copies, move || {
            let request = format!(
                "{} {} HTTP/1.1\r\nHost: w\r\nContent-Length: 16777216\r\n\r\n",
                t.method(),
                t.path()
            )
            .into_bytes();
            exchange(addr, request, false)
        })
        .await
    });
    attack!(format!("Content-Length shorter than the body ×{copies}"), {
        let t = std::sync::Arc::clone(&target);
        many(copies, move || {
            let mut request = format!(
                "{} {} HTTP/1.1\r\nHost: w\r\nContent-Length: 10\r\n\r\n",
                t.method(),
                t.path()
            )
            .into_bytes();
            request.extend_from_slice(t.message("short").as_bytes());
            exchange(addr, request, false)
        })
        .await
    });
    attack!(
        format!("Content-Length longer than the body, EOF ×{copies}"),
        {
            let t = std::sync::Arc::clone(&target);
            many(copies, move || {
                let body = t.message("long");
                let mut request = format!(
                    "{} {} HTTP/1.1\r\nHost: w\r\nContent-Length: {}\r\n\r\n",
                    t.method(),
                    t.path(),
                    body.len() + 100
                )
                .into_bytes();
                request.extend_from_slice(body.as_bytes());
                exchange(addr, request, true)
            })
            .await
        }
    );
    attack!(format!("broken request with 2 pipelined ×{copies}"), {
        let t = std::sync::Arc::clone(&target);
        many(copies, move || {
            let mut request = format!(
                "{} {} HTTP/1.1\r\nHost: w\r\nbroken\r\n\r\n",
                t.method(),
                t.path()
            )
            .into_bytes();
            for _ in 0..2 {
                request.extend_from_slice(&t.post(&t.path(), t.message("behind").as_bytes()));
            }
            exchange(addr, request, false)
        })
        .await
    });
    if let Some(grpc) = &grpc {
        let grpc_addr = grpc.addr;
        attack!(
            format!(
                "gRPC: {} streams on one connection ({} allowed) ×{copies}",
                args.streams,
                wx_worker::grpc::MAX_CONCURRENT_STREAMS
            ),
            grpc::stream_flood(grpc_addr, copies, args.streams).await
        );
        attack!(
            format!("gRPC: a 1 MiB metadata value (HEADERS + 64 CONTINUATION) ×{copies}"),
            grpc::header_block(grpc_addr, copies, 1 << 20, 1).await
        );
        attack!(
            format!("gRPC: 16,384 metadata entries of 64 bytes ×{copies}"),
            grpc::header_block(grpc_addr, copies, 16_384 * 64, 16_384).await
        );
        attack!(
            format!("gRPC: a 5 MiB message (4 MiB allowed) ×{copies}"),
            grpc::oversized_message(grpc, copies, 5 << 20).await
        );
        attack!(
            format!("gRPC: a length prefix of 4 GiB, 100 bytes, then silence ×{copies}"),
            grpc::lying_prefix(grpc_addr, copies).await
        );
        attack!(
            format!("gRPC: bytes that are not HTTP/2, 3 kinds ×{copies}"),
            grpc::not_http2(grpc_addr, copies).await
        );
        attack!(
            format!(
                "gRPC: rapid reset, HEADERS + RST_STREAM ×{} per connection ×{copies}",
                args.resets
            ),
            grpc::rapid_reset(grpc_addr, copies, args.resets).await
        );
        for (handshake, kind) in [
            (false, "TCP connections that never send the preface"),
            (
                true,
                "idle HTTP/2 connections (handshake done, pings answered)",
            ),
        ] {
            attack!(
                format!("gRPC: {} {kind}, held {:?}", args.idle, args.hold),
                {
                    let idle = grpc::idle(grpc, pid, args.idle, handshake, args.hold).await?;
                    format!(
                        "{} open ({} MiB); Accounts.List meanwhile: {}; closed by the worker: {}",
                        idle.opened,
                        mib(idle.rss_open_kib),
                        idle.call_meanwhile,
                        idle.closed_by_server
                    )
                }
            );
        }
        if let (Some(url), Some(namespace)) = (&args.amqp_url, &args.namespace) {
            let broker = grpc::Broker {
                url: url.clone(),
                namespace: namespace.clone(),
                account: args.account.clone(),
                appid: args.appid.clone(),
            };
            attack!(
                format!(
                    "gRPC: {} Events.Subscribe streams that never read (window 0), {} events",
                    args.subscribers, args.events
                ),
                grpc::slow_consumers(grpc, &broker, args.subscribers, args.events).await?
            );
        }
        return Ok(());
    }
    // The callback-only attacks: repeated signatures and XML.
    attack!(format!("two signatures ×{copies}"), {
        let t = std::sync::Arc::clone(&target);
        many(copies, move || {
            let path = format!("{}&signature=0", t.path());
            exchange(addr, t.post(&path, t.message("twice").as_bytes()), false)
        })
        .await
    });
    for (name, inner) in [
        (
            "XML 50,000 levels deep",
            format!("{}{}", "<a>".repeat(50_000), "</a>".repeat(50_000)),
        ),
        ("XML with 100,000 elements", "<a/>".repeat(100_000)),
    ] {
        attack!(format!("{name} ×{copies}"), {
            let t = std::sync::Arc::clone(&target);
            let body = std::sync::Arc::new(t.message(&inner));
            many(copies, move || {
                exchange(addr, t.post(&t.path(), body.as_bytes()), false)
            })
            .await
        });
    }
    Ok(())
}

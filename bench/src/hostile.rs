//! wxgate-hostile: runs hostile-input attacks against a running wx-gateway and prints a
//! markdown table: attack, what the gateway answered, whether a good callback right after was
//! answered 200, and the gateway's RSS before and after. `bench/hostile.sh` starts a release
//! gateway with a small connection cap and header timeout and runs this against it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

#[derive(Parser, Debug)]
#[command(about = "Hostile-input attacks against a running wx-gateway, with its RSS")]
struct Args {
    /// Address of the gateway.
    #[arg(long, default_value = "127.0.0.1:18080")]
    addr: SocketAddr,
    /// Pid of the gateway, for its RSS (/proc/PID/status).
    #[arg(long)]
    pid: u32,
    /// A plain-mode account id of the gateway.
    #[arg(long, default_value = "bench")]
    account: String,
    /// Its token.
    #[arg(long, default_value = "benchtoken")]
    token: String,
    /// Its original id (ToUserName).
    #[arg(long, default_value = "gh_bench")]
    to_user: String,
    /// The gateway's `gateway.max_connections`.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// Connections opened beyond the cap in the flood.
    #[arg(long, default_value_t = 1000)]
    beyond: usize,
    /// Parallel copies of each attack.
    #[arg(long, default_value_t = 50)]
    copies: usize,
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

    fn path(&self) -> String {
        format!("/wx/{}?{}", self.account, self.signed_query())
    }

    fn message(&self, content: &str) -> String {
        format!(
            "<xml><ToUserName><![CDATA[{}]]></ToUserName><FromUserName><![CDATA[oHostile00000000000000000000]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content>{content}</Content><MsgId>{}</MsgId></xml>",
            self.to_user,
            now_s(),
            rand::random::<u32>()
        )
    }

    fn post(&self, path: &str, body: &[u8]) -> Vec<u8> {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: wxgate\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        request
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
    let target = std::sync::Arc::new(Target {
        addr: args.addr,
        account: args.account.clone(),
        token: args.token.clone(),
        to_user: args.to_user.clone(),
    });
    let addr = args.addr;
    let copies = args.copies;
    let good = |target: &Target| {
        let request = target.post(&target.path(), target.message("good").as_bytes());
        exchange(target.addr, request, false)
    };
    if good(&target).await != "200" {
        bail!("the gateway does not answer a good callback 200: check --account and --token");
    }
    println!("| attack | answer | good callback after | RSS before MiB | RSS after MiB |");
    println!("|---|---|---|---|---|");
    let mib = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);

    macro_rules! attack {
        ($name:expr, $run:expr) => {{
            let before = rss_kib(args.pid)?;
            let answer: String = $run;
            let after = rss_kib(args.pid)?;
            let good = good(&target).await;
            println!(
                "| {} | {} | {} | {} | {} |",
                $name,
                answer,
                good,
                mib(before),
                mib(after)
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
            let request =
                format!("POST {} HTTP/1.1\r\nHost: w\r\n{flood}\r\n", t.path()).into_bytes();
            exchange(addr, request, false)
        })
        .await
    });
    attack!(format!("a 1 MiB header ×{copies}"), {
        let t = std::sync::Arc::clone(&target);
        many(copies, move || {
            let request = format!(
                "POST {} HTTP/1.1\r\nHost: w\r\nX-Huge: {}\r\n\r\n",
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
                "POST {} HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\n\r\n1000000\r\n",
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
                "POST {} HTTP/1.1\r\nHost: w\r\nContent-Length: 16777216\r\n\r\n",
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
                "POST {} HTTP/1.1\r\nHost: w\r\nContent-Length: 10\r\n\r\n",
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
                    "POST {} HTTP/1.1\r\nHost: w\r\nContent-Length: {}\r\n\r\n",
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
            let mut request =
                format!("POST {} HTTP/1.1\r\nHost: w\r\nbroken\r\n\r\n", t.path()).into_bytes();
            for _ in 0..2 {
                request.extend_from_slice(&t.post(&t.path(), t.message("behind").as_bytes()));
            }
            exchange(addr, request, false)
        })
        .await
    });
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

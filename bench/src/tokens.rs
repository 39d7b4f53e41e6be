//! Load on `Tokens.GetAccessToken`: one worker started in this process (real Redis and
//! RabbitMQ from the configuration), the WeChat simulator in this process, and `--clients`
//! concurrent gRPC callers for `--duration-s`. Reports calls per second, latency percentiles
//! and WeChat token calls per appid, which must be exactly one each (docs/contract.md §1.4).
//!
//! Uses a fresh namespace and removes its queues and keys at the end.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use wxgate_core::config::{ApiKey, Config};
use wxgate_proto::v1::GetAccessTokenRequest;
use wxgate_proto::v1::tokens_client::TokensClient;
use wxgate_sim::{Quotas, SimConfig};

/// How long the first call per account may take (the worker connecting, the one token fetch).
const WARMUP: Duration = Duration::from_secs(20);

/// Load generator for `Tokens.GetAccessToken` against an in-process worker and simulator.
#[derive(Debug, Parser)]
#[command(
    name = "wxgate-tokens",
    version,
    after_long_help = "Example:\n  wxgate-tokens --config config/tutorial.toml --clients 64 --duration-s 10"
)]
struct Args {
    /// Configuration with the accounts, Redis and RabbitMQ; the namespace, API base, listen
    /// addresses and API keys are replaced. WXGATE__SECTION__KEY overrides apply.
    #[arg(long, value_name = "FILE", default_value = "config/tutorial.toml")]
    config: PathBuf,
    /// Concurrent callers, each with one call in flight.
    #[arg(long, value_name = "N", default_value_t = 64)]
    clients: usize,
    /// HTTP/2 connections the callers share.
    #[arg(long, value_name = "N", default_value_t = 8)]
    connections: usize,
    /// Length of the measured phase.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    duration_s: u64,
    /// Tokio worker threads.
    #[arg(long, value_name = "N", default_value_t = 2)]
    threads: usize,
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
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("wxgate-tokens: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let sim = wxgate_sim::start(
        SimConfig {
            quotas: Quotas::unlimited(),
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse()?,
    )
    .await?;
    let namespace = format!("bench{:016x}", rand::random::<u64>());
    let overrides: BTreeMap<&str, String> = [
        ("WXGATE__NAMESPACE", namespace.clone()),
        ("WXGATE__WECHAT__API_BASE", sim.base_url()),
        ("WXGATE__WORKER__HTTP_LISTEN", "127.0.0.1:0".to_owned()),
        ("WXGATE__WORKER__GRPC_LISTEN", "127.0.0.1:0".to_owned()),
    ]
    .into_iter()
    .collect();
    let mut config = Config::load(&args.config, |key| {
        overrides
            .get(key)
            .cloned()
            .or_else(|| std::env::var(key).ok())
    })
    .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    let key = format!("{:032x}", rand::random::<u128>());
    config.api_keys = vec![ApiKey {
        name: "bench".to_owned(),
        sha256: {
            use sha2::Digest as _;
            hex::encode(sha2::Sha256::digest(key.as_bytes()))
        },
        accounts: vec!["*".to_owned()],
    }];
    for account in &config.accounts {
        sim.add_account(&account.appid, account.secret.expose());
    }
    let accounts: Vec<(String, String)> = config
        .accounts
        .iter()
        .map(|a| (a.id.as_str().to_owned(), a.appid.clone()))
        .collect();
    anyhow::ensure!(
        !accounts.is_empty(),
        "no accounts in {}",
        args.config.display()
    );
    let config = Arc::new(config);
    let shutdown = CancellationToken::new();
    let worker = wx_worker::start(Arc::clone(&config), shutdown.clone()).await?;
    let endpoint = format!("http://{}", worker.grpc_addr());

    let outcome = measure(&args, &endpoint, &key, &accounts, &sim).await;

    shutdown.cancel();
    if tokio::time::timeout(Duration::from_secs(20), worker.wait())
        .await
        .is_err()
    {
        eprintln!("wxgate-tokens: the worker did not stop within 20 s");
    }
    let removed = tokio::time::timeout(
        Duration::from_secs(60),
        wxgate_tests::remove_namespace(
            &namespace,
            &config.redis.url,
            &config.rabbitmq.url,
            config.worker.retry_delays.len(),
        ),
    )
    .await;
    if !matches!(removed, Ok(Ok(()))) {
        eprintln!("wxgate-tokens: could not remove namespace {namespace}: {removed:?}");
    }
    sim.shutdown().await;
    outcome
}

fn request(key: &str, account: &str) -> anyhow::Result<tonic::Request<GetAccessTokenRequest>> {
    let mut request = tonic::Request::new(GetAccessTokenRequest {
        account_id: account.to_owned(),
        force_refresh: false,
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse()?);
    Ok(request)
}

async fn measure(
    args: &Args,
    endpoint: &str,
    key: &str,
    accounts: &[(String, String)],
    sim: &wxgate_sim::Sim,
) -> anyhow::Result<bool> {
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(
            tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(10))
                .connect()
                .await?,
        );
    }
    // Warm-up: one call per account, retried until the worker is connected to Redis.
    let deadline = Instant::now() + WARMUP;
    for (account, _) in accounts {
        let mut client = TokensClient::new(channels[0].clone());
        loop {
            match client.get_access_token(request(key, account)?).await {
                Ok(_) => break,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(status) => anyhow::bail!("warm-up call for {account} failed: {status}"),
            }
        }
    }

    let until = Instant::now() + Duration::from_secs(args.duration_s);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.clients.max(1) {
        let mut client = TokensClient::new(channels[i % channels.len()].clone());
        let account = accounts[i % accounts.len()].0.clone();
        let key = key.to_owned();
        tasks.spawn(async move {
            let mut latencies_us = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < until {
                let started = Instant::now();
                let Ok(request) = request(&key, &account) else {
                    errors += 1;
                    break;
                };
                match client.get_access_token(request).await {
                    Ok(_) => latencies_us
                        .push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)),
                    Err(_) => errors += 1,
                }
            }
            (latencies_us, errors)
        });
    }
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut errors = 0;
    while let Some(joined) = tasks.join_next().await {
        let (mut mine, failed) = joined?;
        latencies.append(&mut mine);
        errors += failed;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| {
        let index = ((latencies.len() as f64 - 1.0) * p).round();
        latencies
            .get(index.max(0.0) as usize)
            .map_or(0.0, |us| *us as f64 / 1000.0)
    };
    let calls = latencies.len() as u64;
    let token_calls: BTreeMap<&str, u64> = accounts
        .iter()
        .map(|(_, appid)| (appid.as_str(), sim.token_requests(appid)))
        .collect();
    let one_each = token_calls.values().all(|n| *n == 1);
    let report = json!({
        "clients": args.clients,
        "connections": args.connections,
        "threads": args.threads,
        "seconds": elapsed,
        "calls": calls,
        "errors": errors,
        "calls_per_s": calls as f64 / elapsed,
        "latency_ms": {"p50": pct(0.50), "p99": pct(0.99), "max": pct(1.0)},
        "wechat_token_calls": token_calls,
    });
    println!("{report}");
    eprintln!(
        "GetAccessToken: {calls} calls in {elapsed:.1} s = {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {errors} errors; WeChat token calls per appid: {token_calls:?}",
        calls as f64 / elapsed,
        pct(0.50),
        pct(0.99),
    );
    Ok(errors == 0 && one_each)
}

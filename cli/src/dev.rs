//! `wxgate dev`: gateway, worker, gRPC API and the simulated WeChat API in one process, on
//! the in-memory bus and store ([`MemoryBus`], [`MemoryStore`]) by default, so nothing needs
//! to be installed; `--redis` and `--amqp` put it on the real services instead.
//!
//! The in-memory pair keeps everything in this process: stopping it loses queued events,
//! tokens and accounts added at run time. It is for trying wxgate and for developing
//! against its API, not for production.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wxgate_core::bus::Bus;
use wxgate_core::config::Config;
use wxgate_core::memory_bus::MemoryBus;
use wxgate_core::rabbit::RabbitBus;
use wxgate_core::store::{MemoryStore, RedisStore, Store};
use wxgate_core::topology::Topology;
use wxgate_sim::{OpenIdPolicy, Sim};

use crate::sim::{LoadedConfig, http_base, load_config, sim_config};
use crate::{Failure, Outcome};

/// The API key of the built-in dev config (`[[api_keys]]` in config/dev.toml holds its
/// SHA-256). Not a secret: it only opens a `wxgate dev` on your machine.
pub const DEV_API_KEY: &str = "wxgate-dev-key";

/// `wxgate dev`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Examples:\n  wxgate dev\n  wxgate dev --config my.toml\n  wxgate dev --redis redis://127.0.0.1:6379/0 --amqp amqp://guest:guest@127.0.0.1:5672/%2f"
)]
pub struct DevArgs {
    /// The configuration [default: the built-in config/dev.toml: the tutorial bot on a
    /// plain, a compat and a safe account]. `WXGATE__…` overrides apply.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Use this Redis instead of the in-memory store.
    #[arg(long, value_name = "URL", requires = "amqp")]
    pub redis: Option<String>,
    /// Use this RabbitMQ instead of the in-memory bus.
    #[arg(long, value_name = "URL", requires = "redis")]
    pub amqp: Option<String>,
    /// Don't start the simulated WeChat API (when `wechat.api_base` is a real one).
    #[arg(long)]
    pub no_sim: bool,
}

/// A running `wxgate dev`.
pub struct Dev {
    /// The configuration in effect (listen addresses as asked; `wechat.api_base` pointing at
    /// the simulator when one runs).
    pub config: Arc<Config>,
    /// Where the gateway listens.
    pub gateway_addr: SocketAddr,
    /// Where the gRPC API listens.
    pub api_addr: SocketAddr,
    /// Where the worker's /healthz, /readyz and /metrics are.
    pub worker_http_addr: SocketAddr,
    /// The simulated WeChat API, unless `--no-sim` or a non-local `api_base`.
    pub sim: Option<Sim>,
    /// Where the configuration came from.
    pub source: String,
    shutdown: CancellationToken,
    worker: wx_worker::Worker,
    gateway: JoinHandle<()>,
    rabbit: Option<RabbitBus>,
    connections: CancellationToken,
}

impl Dev {
    /// Stops everything: the gateway drains, the worker finishes what it started.
    pub async fn stop(self) -> Outcome {
        self.shutdown.cancel();
        let _ = self.gateway.await;
        let result = self.worker.wait().await;
        if let Some(rabbit) = &self.rabbit {
            rabbit.close().await;
        }
        self.connections.cancel();
        if let Some(sim) = &self.sim {
            sim.shutdown().await;
        }
        result.map_err(|e| {
            Failure::failed(format!(
                "the worker failed: {}",
                wxgate_core::ErrorChain(&e)
            ))
        })
    }

    /// The lines printed on start: URLs, the API address and key, what to try next.
    pub fn banner(&self) -> String {
        let gateway = http_base(self.gateway_addr);
        let prefix = &self.config.gateway.path_prefix;
        let mut lines = vec![
            format!("wxgate dev is running ({}).", self.source),
            String::new(),
        ];
        lines.push("Callback URLs (what you would give WeChat):".to_owned());
        for account in &self.config.accounts {
            lines.push(format!(
                "  {gateway}{prefix}/{:<10} {} mode, appid {}",
                account.id.as_str(),
                format!("{:?}", account.mode).to_ascii_lowercase(),
                account.appid
            ));
        }
        lines.push(String::new());
        let api = http_base(self.api_addr);
        lines.push(format!("gRPC API:   {api}   key: {DEV_API_KEY}"));
        if let Some(sim) = &self.sim {
            lines.push(format!(
                "WeChat API (simulated): {}   calls: {}/_sim/calls",
                sim.base_url(),
                sim.base_url()
            ));
        }
        lines.push(format!(
            "Health:     {}/readyz  {gateway}/readyz   metrics: {}/metrics",
            http_base(self.worker_http_addr),
            http_base(self.worker_http_addr)
        ));
        lines.push(String::new());
        lines.push("Try, in another terminal:".to_owned());
        lines.push(format!(
            "  export WXGATE_API={api} WXGATE_API_KEY={DEV_API_KEY}"
        ));
        lines.push("  wxgate tail                              # events as they arrive".to_owned());
        lines.push(
            "  wxgate sim push demo text 你好            # WeChat pushes a message".to_owned(),
        );
        lines.push(
            "  wxgate send text demo oDEMOuser0000000000000000000 'hello from the API'".to_owned(),
        );
        lines.push(String::new());
        lines.push("Ctrl-C stops it (everything is in memory and is lost).".to_owned());
        lines.join("\n")
    }
}

/// Starts `wxgate dev` as `args` asks; returns once everything listens.
pub async fn start(args: &DevArgs) -> Result<Dev, Failure> {
    let loaded = load_config(args.config.as_ref())?;
    start_with(loaded, args).await
}

/// Like [`start`], with the configuration already loaded.
pub async fn start_with(loaded: LoadedConfig, args: &DevArgs) -> Result<Dev, Failure> {
    let LoadedConfig {
        mut config,
        specs,
        source,
    } = loaded;
    let sim = match local_api(&config.wechat.api_base) {
        Some(listen) if !args.no_sim => {
            let sim = wxgate_sim::start(sim_config(&specs, OpenIdPolicy::AnyFollower, true), listen)
                .await
                .map_err(|e| {
                    Failure::failed(format!(
                        "cannot start the simulated WeChat API on {listen} ({}); is another wxgate dev running? Stop it, or change wechat.api_base",
                        wxgate_core::ErrorChain(&e)
                    ))
                })?;
            // Port 0 in the config: the real one.
            config.wechat.api_base = sim.base_url();
            config.wechat.mp_base = sim.base_url();
            config.wechat.open_base = sim.base_url();
            Some(sim)
        }
        _ => None,
    };
    if let Some(url) = &args.redis {
        config.redis = wxgate_core::config::RedisConfig::standalone(url);
    }
    if let Some(url) = &args.amqp {
        config.rabbitmq.url = url.clone();
        config.rabbitmq.urls = vec![url.clone()];
    }
    let config = Arc::new(config);
    let connections = CancellationToken::new();
    let (store, bus, rabbit): (Arc<dyn Store>, Arc<dyn Bus>, Option<RabbitBus>) =
        match (&args.redis, &args.amqp) {
            (Some(_), Some(_)) => {
                let store = RedisStore::connect(
                    &config.redis.url,
                    Duration::from_secs(2),
                    connections.clone(),
                )
                .map_err(|e| {
                    Failure::usage(format!(
                        "--redis {:?}: {}",
                        config.redis.url,
                        wxgate_core::ErrorChain(&e)
                    ))
                })?;
                let rabbit = RabbitBus::connect(
                    &config.rabbitmq.url,
                    Topology::for_config(&config),
                    connections.clone(),
                );
                if !rabbit.wait_ready(Duration::from_secs(10)).await {
                    connections.cancel();
                    return Err(Failure::failed(format!(
                        "RabbitMQ at --amqp is not ready after 10 s; is it running? ({})",
                        redact(&config.rabbitmq.url)
                    )));
                }
                (Arc::new(store), Arc::new(rabbit.clone()), Some(rabbit))
            }
            _ => (
                Arc::new(MemoryStore::new()),
                Arc::new(MemoryBus::new(Topology::for_config(&config))),
                None,
            ),
        };
    let shutdown = CancellationToken::new();
    let gateway_listener = wxgate_serve::bind(config.gateway.listen, config.gateway.listen_backlog)
        .map_err(|e| {
            Failure::failed(format!(
                "cannot listen on {} for the gateway ({e}); is another wxgate dev running? Stop it, or set WXGATE__GATEWAY__LISTEN",
                config.gateway.listen
            ))
        })?;
    let gateway_addr = gateway_listener
        .local_addr()
        .map_err(|e| Failure::failed(format!("gateway listener: {e}")))?;
    let worker = wx_worker::start_with(
        Arc::clone(&config),
        Arc::clone(&bus),
        Arc::clone(&store),
        shutdown.clone(),
    )
    .await
    .map_err(|e| {
        Failure::failed(format!(
            "cannot start the worker: {}; is another wxgate dev running? Stop it, or set WXGATE__WORKER__HTTP_LISTEN / WXGATE__WORKER__GRPC_LISTEN",
            wxgate_core::ErrorChain(&e)
        ))
    })?;
    let gateway = tokio::spawn(wx_gateway::serve_with(
        Arc::clone(&config),
        gateway_listener,
        store,
        bus,
        shutdown.clone(),
    ));
    Ok(Dev {
        api_addr: wx_worker::grpc::dialable(worker.grpc_addr()),
        worker_http_addr: wx_worker::grpc::dialable(worker.http_addr()),
        gateway_addr,
        config,
        sim,
        source,
        shutdown,
        worker,
        gateway,
        rabbit,
        connections,
    })
}

/// The address to run the simulator on when `api_base` is a local `http://` address.
fn local_api(api_base: &str) -> Option<SocketAddr> {
    let rest = api_base.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    let authority = authority.replace("localhost", "127.0.0.1");
    let addr: SocketAddr = authority.parse().ok()?;
    addr.ip().is_loopback().then_some(addr)
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://[credentials]@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Runs `wxgate dev` until Ctrl-C, printing the WeChat API calls the worker makes.
pub async fn run(args: DevArgs) -> Outcome {
    let dev = start(&args).await?;
    println!("{}\n", dev.banner());
    if let Some(sim) = &dev.sim {
        let mut calls = sim.subscribe();
        tokio::spawn(async move {
            while let Ok(live) = calls.recv().await {
                let call = live.call;
                // Token fetches are noise here; everything else is what the worker did.
                if call.path.contains("token") {
                    continue;
                }
                println!(
                    "WeChat API ← {} {} {}",
                    call.method,
                    call.path,
                    summary(&call.body)
                );
            }
        });
    }
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("stopping");
    dev.stop().await
}

fn summary(body: &serde_json::Value) -> String {
    let to = body["touser"].as_str().unwrap_or_default();
    match body["msgtype"].as_str() {
        Some("text") => format!(
            "to {to}: text {:?}",
            body["text"]["content"].as_str().unwrap_or_default()
        ),
        Some(kind) => format!("to {to}: {kind}"),
        None if body.is_null() => String::new(),
        None => {
            let text = body.to_string();
            if text.len() > 120 {
                format!("{}…", text.chars().take(120).collect::<String>())
            } else {
                text
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simulator_runs_only_on_a_local_api_base() {
        assert_eq!(
            local_api("http://127.0.0.1:9099"),
            Some("127.0.0.1:9099".parse().unwrap())
        );
        assert_eq!(
            local_api("http://localhost:0/"),
            Some("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!(local_api("https://api.weixin.qq.com"), None);
        assert_eq!(local_api("http://10.0.0.5:9099"), None);
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redact("amqp://guest:secret@rabbit:5672/%2f"),
            "amqp://[credentials]@rabbit:5672/%2f"
        );
        assert_eq!(redact("amqp://rabbit"), "amqp://rabbit");
    }
}

//! `wx-gateway --config FILE`: the HTTP edge of wxgate.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use wxgate_core::Config;

/// jemalloc: it returns the pages freed after config parsing (10,000 accounts make a large
/// transient TOML tree) to the system, where glibc kept them, and allocates faster under load.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Receives WeChat callbacks, publishes them to RabbitMQ with confirms and answers at once.
///
/// Example: wx-gateway --config config/example.toml
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The TOML config file (docs/contract.md §2); every key can be overridden with
    /// WXGATE__SECTION__KEY environment variables.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    wxgate_core::logging::init();
    // Purge freed pages from a background thread, so RSS follows the live heap when idle.
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "jemalloc background purging not enabled");
    }
    let config = match Config::load(&args.config, |k| std::env::var(k).ok()) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("wx-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match wx_gateway::runtime(config.gateway.threads) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wx-gateway: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener =
            match wxgate_serve::bind(config.gateway.listen, config.gateway.listen_backlog) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!(
                        "wx-gateway: cannot listen on {}: {e}",
                        config.gateway.listen
                    );
                    return ExitCode::FAILURE;
                }
            };
        let shutdown = CancellationToken::new();
        tokio::spawn(wait_for_signal(shutdown.clone()));
        match wx_gateway::serve(config, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            // The configuration disagrees with the broker: a configuration error.
            Err(e @ wx_gateway::ServeError::Topology(_)) => {
                eprintln!("wx-gateway: {}", wxgate_core::ErrorChain(&e));
                ExitCode::from(2)
            }
            Err(e) => {
                eprintln!("wx-gateway: {}", wxgate_core::ErrorChain(&e));
                ExitCode::FAILURE
            }
        }
    })
}

async fn wait_for_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received");
    shutdown.cancel();
}

//! `wx-worker --config FILE`: the wxgate worker (docs/contract.md §1.3).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use wxgate_core::config::Config;

/// jemalloc, as in wx-gateway: freed pages (the config's transient TOML tree, bursts of
/// in-flight events) go back to the system.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Consumes wxgate events and answers them through WeChat's customer-service API.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The wxgate TOML configuration; every key can be overridden as WXGATE__SECTION__KEY.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    wxgate_core::logging::init();
    // Purge freed pages from a background thread, so RSS follows the live heap when idle.
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "jemalloc background purging not enabled");
    }
    let args = Args::parse();
    let config = match Config::load(&args.config, |k| std::env::var(k).ok()) {
        Ok(config) => Arc::new(config),
        Err(e) => {
            eprintln!("wx-worker: {}: {e}", args.config.display());
            return ExitCode::from(2);
        }
    };
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        // The configuration disagrees with the broker: a configuration error.
        Err(e @ wx_worker::WorkerError::Topology(_)) => {
            tracing::error!(error = %wxgate_core::ErrorChain(&e), "worker stopped");
            eprintln!("wx-worker: {}", wxgate_core::ErrorChain(&e));
            ExitCode::from(2)
        }
        Err(e) => {
            tracing::error!(error = %wxgate_core::ErrorChain(&e), "worker failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Arc<Config>) -> Result<(), wx_worker::WorkerError> {
    let shutdown = CancellationToken::new();
    let worker = wx_worker::start(config, shutdown.clone()).await?;
    tokio::spawn(async move {
        terminate().await;
        tracing::info!("signal received; shutting down");
        shutdown.cancel();
    });
    worker.wait().await?;
    Ok(())
}

/// Waits for SIGTERM or Ctrl-C.
async fn terminate() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                tokio::select! {
                    _ = sigterm.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

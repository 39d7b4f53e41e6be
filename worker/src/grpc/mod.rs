//! The gRPC API for other teams (docs/contract.md §1.5, §5), served on `worker.grpc_listen`
//! with TLS (and mTLS) when `worker.grpc_tls_*` is set, gRPC health and server reflection.
//!
//! Each service lives in its own module and holds an `Arc<Api>`; errors become statuses in
//! [`status`] only, and callers are checked by [`auth`]. WeChat is called through
//! [`Api::call`], which adds the shared access token and retries once with a fresh one when
//! WeChat rejects it (docs/contract.md §1.4).

pub mod accounts;
pub mod auth;
pub mod dead_letters;
pub mod events;
pub mod incoming;
pub mod media;
pub mod menus;
pub mod messages;
pub mod qrcodes;
pub mod status;
pub mod tokens;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use wechat::errcode::{Class, classify};
use wxgate_core::accounts::Registry;
use wxgate_core::bus::Bus;
use wxgate_core::config::{Account, Config, GrpcTls, Secret};
use wxgate_core::keys::Keys;
use wxgate_core::metrics::WorkerMetrics;
use wxgate_core::store::Store;
use wxgate_core::tokens::TokenService;
use wxgate_core::topology::Names;

use crate::client::{ApiAnswer, CallError, WechatClient};
pub use auth::{Auth, Caller};
pub use status::ApiError;

/// Everything an RPC needs: the accounts, the shared tokens, the WeChat client, the bus and
/// the store.
pub struct Api {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The accounts served (file and runtime).
    pub accounts: Arc<Registry>,
    /// The shared access tokens.
    pub tokens: TokenService,
    /// The WeChat API client.
    pub client: WechatClient,
    /// The event bus.
    pub bus: Arc<dyn Bus>,
    /// The key-value store.
    pub store: Arc<dyn Store>,
    /// RabbitMQ names of this namespace.
    pub names: Names,
    /// Redis keys of this namespace.
    pub keys: Keys,
    /// The worker's metrics.
    pub metrics: Arc<WorkerMetrics>,
    /// Cancelled when the worker shuts down: open streams (`Events.Subscribe`) end with
    /// `UNAVAILABLE` so the server can drain.
    pub shutdown: CancellationToken,
}

impl Api {
    /// Calls WeChat for `account` with the shared token: `call` gets the token and makes one
    /// request. An answer with errcode 0 is returned; an invalid-token answer (40001, 40014,
    /// 42001) invalidates the token, fetches a fresh one and calls once more; any other
    /// non-zero errcode is [`ApiError::Wechat`].
    pub async fn call<F, Fut>(&self, account: &Account, call: F) -> Result<ApiAnswer, ApiError>
    where
        F: Fn(Secret) -> Fut,
        Fut: Future<Output = Result<ApiAnswer, CallError>>,
    {
        let token = self.tokens.get(&account.appid, &account.secret).await?;
        let answer = call(token.token.clone()).await?;
        let answer = match classify(answer.errcode) {
            Class::TokenInvalid => {
                tracing::info!(account = %account.id, errcode = answer.errcode, "access token rejected; refreshing");
                let fresh = self
                    .tokens
                    .refresh_after_invalid(&account.appid, &account.secret, &token.token)
                    .await?;
                call(fresh.token).await?
            }
            _ => answer,
        };
        match classify(answer.errcode) {
            Class::Ok => Ok(answer),
            _ => Err(ApiError::Wechat {
                errcode: answer.errcode,
                errmsg: answer.errmsg,
            }),
        }
    }
}

/// Why the gRPC server could not start.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// A TLS file could not be read.
    #[error("cannot read {key} ({path})")]
    TlsFile {
        /// The config key naming the file.
        key: &'static str,
        /// The path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TLS files are not a usable certificate and key.
    #[error("worker.grpc_tls_cert / worker.grpc_tls_key are not a usable PEM certificate and key")]
    Tls(#[source] tonic::transport::Error),
}

/// Reads `worker.grpc_tls_*` into tonic's server TLS configuration.
pub fn tls_config(tls: &GrpcTls) -> Result<ServerTlsConfig, GrpcError> {
    let read = |key: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| GrpcError::TlsFile {
            key,
            path: path.display().to_string(),
            source,
        })
    };
    let cert = read("worker.grpc_tls_cert", &tls.cert)?;
    let key = read("worker.grpc_tls_key", &tls.key)?;
    let mut config = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .timeout(Duration::from_secs(10));
    if let Some(ca) = &tls.client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(
            "worker.grpc_tls_client_ca",
            ca,
        )?));
    }
    Ok(config)
}

/// Concurrent streams (calls) one HTTP/2 connection may have open; clients queue the rest.
/// tonic sets no limit by default, so one connection could open streams without bound.
pub const MAX_CONCURRENT_STREAMS: u32 = 128;

/// The server's transport: HTTP/2 keep-alives, at most [`MAX_CONCURRENT_STREAMS`] streams per
/// connection, and TLS when `tls` is set (its certificate and key are parsed here, so a bad
/// file stops the worker before it serves anything).
pub fn server(tls: Option<ServerTlsConfig>) -> Result<Server, GrpcError> {
    let server = Server::builder()
        .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_nodelay(true);
    match tls {
        Some(tls) => server.tls_config(tls).map_err(GrpcError::Tls),
        None => Ok(server),
    }
}

/// Serves the API on `listener` with `server` (see [`server`]) until `shutdown` is
/// cancelled, then lets calls in progress finish. At most `worker.grpc_max_connections`
/// connections are open, and each must send its first bytes within
/// `worker.grpc_preface_timeout_ms` ([`incoming`]). Streams (`Events.Subscribe`) end when
/// `shutdown` is cancelled.
pub async fn serve(
    mut server: Server,
    listener: TcpListener,
    api: Arc<Api>,
    shutdown: CancellationToken,
) {
    let auth = Auth::new(&api.config.api_keys);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(wxgate_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1();
    // The reporter starts at SERVING; say NOT_SERVING until Redis and RabbitMQ are there.
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    tokio::spawn(report_health(
        health_reporter,
        Arc::clone(&api),
        shutdown.clone(),
    ));

    let mut router = server.add_service(health);
    match reflection {
        Ok(reflection) => router = router.add_service(reflection),
        // The descriptor sets are generated at build time: a failure is a build bug, and
        // the API works without reflection.
        Err(error) => tracing::error!(%error, "cannot build the reflection service"),
    }
    let router = add_services(router, &api, &auth);
    let limits = incoming::GrpcLimits {
        max_connections: api.config.worker.grpc_max_connections,
        preface_timeout: api.config.worker.grpc_preface_timeout,
    };
    let incoming = incoming::incoming(listener, limits);
    let result = router
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await;
    if let Err(error) = result {
        tracing::error!(error = %wxgate_core::ErrorChain(&error), "grpc server failed");
    }
}

/// Adds the wxgate services, each behind the API-key interceptor.
fn add_services(
    router: tonic::transport::server::Router,
    api: &Arc<Api>,
    auth: &Auth,
) -> tonic::transport::server::Router {
    use wxgate_proto::v1::accounts_server::AccountsServer;
    use wxgate_proto::v1::dead_letters_server::DeadLettersServer;
    use wxgate_proto::v1::events_server::EventsServer;
    use wxgate_proto::v1::media_server::MediaServer;
    use wxgate_proto::v1::menus_server::MenusServer;
    use wxgate_proto::v1::messages_server::MessagesServer;
    use wxgate_proto::v1::qrcodes_server::QrcodesServer;
    use wxgate_proto::v1::tokens_server::TokensServer;
    router
        .add_service(authenticated(
            TokensServer::new(tokens::TokensService::new(Arc::clone(api))),
            auth,
        ))
        .add_service(authenticated(
            QrcodesServer::new(qrcodes::QrcodesService::new(Arc::clone(api))),
            auth,
        ))
        .add_service(authenticated(
            MenusServer::new(menus::MenusService::new(Arc::clone(api))),
            auth,
        ))
        .add_service(authenticated(
            AccountsServer::new(accounts::AccountsService::new(Arc::clone(api))),
            auth,
        ))
        .add_service(authenticated(
            DeadLettersServer::new(dead_letters::DeadLettersService::new(Arc::clone(api))),
            auth,
        ))
        .add_service(authenticated(
            EventsServer::new(events::EventsService::new(Arc::clone(api))),
            auth,
        ))
        .add_service(authenticated(
            MessagesServer::new(messages::MessagesService::new(Arc::clone(api))),
            auth,
        ))
        .add_service(authenticated(
            MediaServer::new(media::MediaService::new(Arc::clone(api)))
                .max_decoding_message_size(media::MAX_REQUEST_BYTES),
            auth,
        ))
}

/// Wraps a service in the API-key interceptor.
pub fn authenticated<S>(service: S, auth: &Auth) -> InterceptedService<S, Auth> {
    InterceptedService::new(service, auth.clone())
}

/// Keeps the overall health (`""`) at SERVING while Redis and RabbitMQ are connected and
/// NOT_SERVING otherwise, checked every second.
async fn report_health(
    reporter: tonic_health::server::HealthReporter,
    api: Arc<Api>,
    shutdown: CancellationToken,
) {
    let mut last = None;
    loop {
        let ready = api.bus.is_ready() && api.store.is_ready();
        if last != Some(ready) {
            let status = if ready {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            last = Some(ready);
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
}

/// The address to tell clients: `0.0.0.0` / `::` become the loopback address.
pub fn dialable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

//! The worker's small HTTP server on `worker.http_listen`: `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wxgate_core::accounts::Registry;
use wxgate_core::bus::Bus;
use wxgate_core::metrics::{self, WorkerMetrics};
use wxgate_core::store::Store;
use wxgate_serve::{self as connections, ConnectionLimits};

/// What the server reports on.
pub(crate) struct Health {
    pub(crate) accounts: Arc<Registry>,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) metrics: Arc<WorkerMetrics>,
}

/// Serves until `shutdown`, within `limits` (a connection cap and a header deadline, as on
/// the gateway's listener); then lets in-flight requests finish.
pub(crate) async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let handler = move |request: Request<Incoming>| std::future::ready(answer(&health, &request));
    connections::serve(listener, limits, shutdown, handler).await;
}

fn answer(health: &Health, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String, content_type: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        response
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
            "text/plain",
        );
    }
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" => {
            let bus = health.bus.is_ready();
            let store = health.store.is_ready();
            let status = if bus && store {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let mut body = format!("rabbitmq: {}\nredis: {}\n", up(bus), up(store));
            // Reported, not a 503: the accounts loaded before are still served (see the
            // gateway's /readyz).
            if let Some(problem) = health.accounts.problem() {
                body.push_str(&problem);
                body.push('\n');
            }
            text(status, body, "text/plain")
        }
        "/metrics" => text(
            StatusCode::OK,
            health.metrics.encode(),
            metrics::CONTENT_TYPE,
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}

fn up(ready: bool) -> &'static str {
    if ready { "up" } else { "down" }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use wxgate_core::config::Config;
    use wxgate_core::rabbit::RabbitBus;
    use wxgate_core::store::MemoryStore;
    use wxgate_core::topology::Topology;

    use super::*;

    /// Bound on anything a test expects to happen.
    const WAIT: Duration = Duration::from_secs(10);

    /// The servers' dependencies: a store in memory and a bus that never connects (nothing
    /// here needs a broker; readiness stays false).
    struct World {
        config: Arc<Config>,
        bus: Arc<dyn Bus>,
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
    }

    impl World {
        fn new() -> Self {
            let config = Arc::new(Config::from_toml("", |_| None).unwrap());
            let shutdown = CancellationToken::new();
            let bus = RabbitBus::connect(
                "amqp://127.0.0.1:1/%2f",
                Topology::for_config(&config),
                shutdown.clone(),
            );
            Self {
                config,
                bus: Arc::new(bus),
                store: Arc::new(MemoryStore::new()),
                shutdown,
            }
        }

        /// Starts the worker's health server with `limits`; returns its address.
        async fn worker(&self, limits: ConnectionLimits) -> SocketAddr {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let health = Arc::new(Health {
                accounts: Arc::new(Registry::from_config(&self.config)),
                bus: Arc::clone(&self.bus),
                store: Arc::clone(&self.store),
                metrics: Arc::new(WorkerMetrics::new()),
            });
            tokio::spawn(serve(listener, health, limits, self.shutdown.clone()));
            addr
        }

        /// Starts the gateway's HTTP server; returns its address.
        async fn gateway(&self) -> SocketAddr {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let gateway = wx_gateway::Gateway::new(
                Arc::clone(&self.config),
                Arc::clone(&self.store),
                Arc::clone(&self.bus),
            );
            tokio::spawn(wx_gateway::http::serve(
                Arc::new(gateway),
                listener,
                self.shutdown.clone(),
            ));
            addr
        }
    }

    impl Drop for World {
        fn drop(&mut self) {
            self.shutdown.cancel();
        }
    }

    /// Sends `GET path`; with `close`, reads the whole answer, else (keep-alive) reads until
    /// the answer's `Content-Length` bytes of body are in.
    async fn get(stream: &mut TcpStream, path: &str, close: bool) -> String {
        let connection = if close { "close" } else { "keep-alive" };
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let mut raw = Vec::new();
        if close {
            stream.read_to_end(&mut raw).await.unwrap();
            return String::from_utf8(raw).unwrap();
        }
        loop {
            let text = String::from_utf8_lossy(&raw);
            if let Some((head, body)) = text.split_once("\r\n\r\n")
                && head_value(head, "content-length")
                    .and_then(|n| n.parse::<usize>().ok())
                    .is_some_and(|n| body.len() >= n)
            {
                return text.into_owned();
            }
            let mut chunk = [0; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed mid-answer");
            raw.extend_from_slice(&chunk[..n]);
        }
    }

    /// The value of header `name` in an answer's head.
    fn head_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim().eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim())
    }

    #[tokio::test]
    async fn gateway_and_worker_serve_metrics_with_one_content_type() {
        let world = World::new();
        for addr in [
            world.worker(ConnectionLimits::default()).await,
            world.gateway().await,
        ] {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let answer = get(&mut stream, "/metrics", true).await;
            let (head, _) = answer.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with("HTTP/1.1 200"), "{addr}: {head}");
            assert_eq!(
                head_value(head, "content-type"),
                Some(metrics::CONTENT_TYPE),
                "{addr}"
            );
        }
    }

    #[tokio::test]
    async fn a_connection_without_complete_headers_is_closed() {
        let world = World::new();
        let addr = world
            .worker(ConnectionLimits {
                header_read_timeout: Duration::from_millis(100),
                ..ConnectionLimits::default()
            })
            .await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
            .await
            .expect("the server closes a connection whose headers do not arrive")
            .ok();
        let text = String::from_utf8_lossy(&raw);
        assert!(!text.contains(" 200 "), "answered anyway: {text}");
    }

    #[tokio::test]
    async fn connections_past_the_cap_wait_for_a_free_slot() {
        let world = World::new();
        let addr = world
            .worker(ConnectionLimits {
                max_connections: 2,
                ..ConnectionLimits::default()
            })
            .await;
        // Two connections take both slots; each has been answered, so both were accepted.
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        for stream in [&mut first, &mut second] {
            assert!(
                get(stream, "/healthz", false)
                    .await
                    .starts_with("HTTP/1.1 200")
            );
        }
        // A third is left in the backlog: its request gets no answer while both are open.
        // (An answer cannot be awaited to be absent; a server without the cap answers it
        // within milliseconds, so a quarter of a second tells the two apart.)
        let mut third = TcpStream::connect(addr).await.unwrap();
        let waiting = tokio::time::timeout(
            Duration::from_millis(250),
            get(&mut third, "/healthz", true),
        )
        .await;
        assert!(waiting.is_err(), "answered past the cap: {waiting:?}");
        // Closing one frees its slot; the third is accepted and its request answered.
        drop(first);
        let mut raw = Vec::new();
        tokio::time::timeout(WAIT, third.read_to_end(&mut raw))
            .await
            .expect("the third connection is served once a slot is free")
            .unwrap();
        assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"));
    }
}

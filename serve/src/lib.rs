//! Serving HTTP/1 connections with the protections every wxgate listener needs: a cap on open
//! connections, a deadline for request headers, and a bounded drain at shutdown. The gateway's
//! callback listener and the worker's health listener both serve through it, so their
//! protections cannot drift apart.
//!
//! Only connection mechanics live here: no routes, no status codes, no knowledge of WeChat,
//! Redis or RabbitMQ. What a request means belongs to the binary that passes the handler.

use std::convert::Infallible;
use std::error::Error;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections at most; further ones wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Time a connection has to deliver a request's complete headers. It also closes a
    /// keep-alive connection idle for that long, so a client cannot hold a slot for free.
    pub header_read_timeout: Duration,
    /// Time in-flight requests get to finish once shutdown is asked for.
    pub drain_timeout: Duration,
}

impl Default for ConnectionLimits {
    /// 16,384 connections, 10 s for headers, 10 s to drain.
    fn default() -> Self {
        Self {
            max_connections: 16_384,
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Where Linux publishes the largest listen backlog it grants.
const SOMAXCONN: &str = "/proc/sys/net/core/somaxconn";

/// Binds `addr` with `SO_REUSEADDR` and a listen queue of `backlog` connections, for
/// listeners whose backlog is configured (`gateway.listen_backlog`, `worker.listen_backlog`).
///
/// The kernel silently caps the backlog at `net.core.somaxconn`; when `backlog` is above it,
/// a warning names both, and the effective value is logged either way. Where that file does
/// not exist (not Linux), `backlog` is passed as asked.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let somaxconn = std::fs::read_to_string(SOMAXCONN)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok());
    let effective = effective_backlog(backlog, somaxconn);
    if effective < backlog {
        tracing::warn!(
            %addr,
            asked = backlog,
            somaxconn = effective,
            "listen backlog above net.core.somaxconn; the kernel grants somaxconn"
        );
    }
    let listener = socket.listen(backlog)?;
    tracing::info!(%addr, backlog = effective, "listen backlog");
    Ok(listener)
}

/// The backlog the kernel grants when `asked` for it with `net.core.somaxconn` at `somaxconn`.
fn effective_backlog(asked: u32, somaxconn: Option<u32>) -> u32 {
    somaxconn.map_or(asked, |max| asked.min(max))
}

/// Serves `listener` with `handler` until `shutdown` is cancelled, then stops accepting and
/// lets in-flight requests finish within [`ConnectionLimits::drain_timeout`].
///
/// A connection slot is taken before `accept`, so past
/// [`ConnectionLimits::max_connections`] clients wait in the kernel's backlog rather than in
/// memory here. A failed `accept` (out of file descriptors, …) is logged and retried after
/// 50 ms.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    // Cancelled when the drain deadline passes: connections still open are cut then, so
    // nothing keeps serving while the caller closes what requests need.
    let cut = CancellationToken::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => permit,
        };
        // Only a closed semaphore fails, and nothing closes it.
        let Ok(permit) = permit else { break };
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        // `map`, not an async block: hyper keeps a slot of the service future's size per
        // connection, and an async block awaiting `response` would hold it twice.
        let service = service_fn(move |request| handler(request).map(Ok::<_, Infallible>));
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        let cut = cut.clone();
        tokio::spawn(async move {
            tokio::select! {
                ended = connection => {
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                () = cut.cancelled() => {}
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("stopped accepting; draining in-flight requests");
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed; closing the connections still open");
        cut.cancel();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Notify;

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    #[test]
    fn the_backlog_is_capped_at_somaxconn() {
        assert_eq!(effective_backlog(1024, Some(4096)), 1024);
        assert_eq!(effective_backlog(8192, Some(4096)), 4096);
        assert_eq!(effective_backlog(8192, None), 8192);
    }

    #[tokio::test]
    async fn bind_listens_with_the_backlog_asked() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), 64).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (_server, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_request_still_running_at_the_drain_deadline_is_cut() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let started = Arc::new(Notify::new());
        let handler = {
            let started = Arc::clone(&started);
            move |_request: Request<Incoming>| {
                let started = Arc::clone(&started);
                async move {
                    started.notify_one();
                    std::future::pending::<()>().await;
                    Response::new(String::new())
                }
            }
        };
        let limits = ConnectionLimits {
            drain_timeout: Duration::from_millis(100),
            ..ConnectionLimits::default()
        };
        let server = tokio::spawn(serve(listener, limits, shutdown.clone(), handler));

        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        tokio::time::timeout(WAIT, started.notified())
            .await
            .expect("the request reaches the handler");
        shutdown.cancel();
        tokio::time::timeout(WAIT, server)
            .await
            .expect("serve returns once the drain deadline passed")
            .unwrap();
        // The connection was closed under the request that never finished: the client sees
        // the end of the stream (or a reset), not a connection kept open.
        let mut rest = Vec::new();
        let read = tokio::time::timeout(WAIT, client.read_to_end(&mut rest))
            .await
            .expect("the connection is closed, not left serving");
        assert!(
            read.is_err() || rest.is_empty(),
            "no answer was due: {rest:?}"
        );
    }
}

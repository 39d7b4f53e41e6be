//! A TCP proxy in front of Redis or RabbitMQ that a test can cut and restore, to take a
//! service away from one gateway without disturbing the other tests that share it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Forwards every connection accepted on `127.0.0.1:<port>` to an upstream address.
///
/// [`TcpProxy::cut`] closes every open connection and drops new ones as soon as they are
/// accepted, until [`TcpProxy::restore`]. [`TcpProxy::stall`] keeps connections open but
/// forwards nothing (a network partition), until [`TcpProxy::resume`]. Dropping the proxy
/// stops it and closes everything.
pub struct TcpProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stalled: watch::Sender<bool>,
    stop: CancellationToken,
}

struct State {
    cut: bool,
    /// Cancelled on every cut: closes the connections opened before it.
    generation: CancellationToken,
}

impl TcpProxy {
    /// Starts a proxy on a free port of 127.0.0.1 forwarding to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free local port for the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let stop = CancellationToken::new();
        let state = Arc::new(Mutex::new(State {
            cut: false,
            generation: stop.child_token(),
        }));
        let (stalled, _) = watch::channel(false);
        tokio::spawn(accept_loop(
            listener,
            upstream.to_owned(),
            Arc::clone(&state),
            stalled.clone(),
            stop.clone(),
        ));
        TcpProxy {
            addr,
            state,
            stalled,
            stop,
        }
    }

    /// Starts a proxy forwarding to the host and port of the service URL `url`
    /// (`redis://…` or `amqp://…`; the scheme's default port when none is given).
    pub async fn in_front_of(url: &str) -> TcpProxy {
        let default_port = if url.starts_with("redis") { 6379 } else { 5672 };
        TcpProxy::start(&upstream_of(url, default_port)).await
    }

    /// The proxy's own address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `url` (`scheme://[userinfo@]host:port/rest`) with its host and port replaced by the
    /// proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let userinfo = authority
            .rsplit_once('@')
            .map(|(userinfo, _)| format!("{userinfo}@"))
            .unwrap_or_default();
        format!("{scheme}://{userinfo}{}{path}", self.addr)
    }

    /// Closes every open connection and drops new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        let mut state = self.state.lock().expect("proxy state lock");
        state.cut = true;
        state.generation.cancel();
        state.generation = self.stop.child_token();
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.state.lock().expect("proxy state lock").cut = false;
    }

    /// Stops forwarding bytes in both directions on every connection, open or new, without
    /// closing any: to both ends the peer has gone silent.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Forwards bytes again, starting with those held back during the stall.
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// `host:port` of a service URL (`scheme://[userinfo@]host[:port][/rest]`), with the
/// scheme's default port when none is given.
pub(crate) fn upstream_of(url: &str, default_port: u16) -> String {
    let (_, rest) = url.split_once("://").expect("a URL with a scheme");
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host_port)| host_port);
    if host_port
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: String,
    state: Arc<Mutex<State>>,
    stalled: watch::Sender<bool>,
    stop: CancellationToken,
) {
    loop {
        let inbound = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let generation = {
            let state = state.lock().expect("proxy state lock");
            if state.cut {
                // Dropped at once: the client sees its connection closed before any answer.
                continue;
            }
            state.generation.clone()
        };
        let upstream = upstream.clone();
        let (up_stalled, down_stalled) = (stalled.subscribe(), stalled.subscribe());
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(&upstream).await else {
                return;
            };
            let (inbound_read, inbound_write) = inbound.into_split();
            let (outbound_read, outbound_write) = outbound.into_split();
            tokio::select! {
                () = generation.cancelled() => {}
                _ = pump(inbound_read, outbound_write, up_stalled) => {}
                _ = pump(outbound_read, inbound_write, down_stalled) => {}
            }
        });
    }
}

/// Copies `from` to `to` until either side ends, holding bytes back while `stalled` is true.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let _ = stalled.wait_for(|s| !*s).await;
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            return Ok(());
        }
        // The read may have been pending when the stall began.
        let _ = stalled.wait_for(|s| !*s).await;
        to.write_all(&buffer[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_is_host_and_port() {
        assert_eq!(
            upstream_of("amqp://guest:guest@127.0.0.1:5672/%2f", 5672),
            "127.0.0.1:5672"
        );
        assert_eq!(upstream_of("redis://localhost/0", 6379), "localhost:6379");
        assert_eq!(
            upstream_of("redis://127.0.0.1:6380", 6379),
            "127.0.0.1:6380"
        );
    }
}

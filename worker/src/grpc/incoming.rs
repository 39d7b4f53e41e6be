//! The gRPC listener's accept loop, with the protections tonic leaves out: at most
//! `worker.grpc_max_connections` connections open (further ones wait in the listen backlog,
//! as on the HTTP listeners), and `worker.grpc_preface_timeout_ms` for a new connection to
//! send its first bytes (the HTTP/2 preface, or a TLS ClientHello). Without them a client
//! holds as many connections as it opens, each for as long as it likes, by never speaking:
//! HTTP/2 keep-alive pings start only after the handshake.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The length of the HTTP/2 client preface (RFC 9113 §3.4); a TLS ClientHello is longer.
const PREFACE_LEN: usize = 24;

/// Bounds of the gRPC listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcLimits {
    /// Connections open at most; further ones wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Time a new connection has to send its first [`PREFACE_LEN`] bytes; it is closed
    /// otherwise.
    pub preface_timeout: Duration,
}

/// The connections accepted on `listener`, as tonic's incoming stream. An accept task runs
/// until the stream is dropped (tonic drops it when the server stops), then closes the
/// listener. A connection slot is taken before `accept`; a failed `accept` (out of file
/// descriptors, …) is logged and retried after 50 ms rather than at once.
pub fn incoming(listener: TcpListener, limits: GrpcLimits) -> ReceiverStream<io::Result<Guarded>> {
    let (sender, receiver) = mpsc::channel(1);
    tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        loop {
            let permit = tokio::select! {
                () = sender.closed() => break,
                permit = Arc::clone(&permits).acquire_owned() => permit,
            };
            // Only a closed semaphore fails, and nothing closes it.
            let Ok(permit) = permit else { break };
            let accepted = tokio::select! {
                () = sender.closed() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let guarded = Guarded {
                        stream,
                        _permit: permit,
                        preface: Some((
                            PREFACE_LEN,
                            Box::pin(tokio::time::sleep(limits.preface_timeout)),
                        )),
                    };
                    if sender.send(Ok(guarded)).await.is_err() {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "grpc accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    ReceiverStream::new(receiver)
}

/// An accepted connection: holds its slot until dropped, and fails its reads once the
/// preface deadline passes without the first bytes.
#[derive(Debug)]
pub struct Guarded {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Bytes still due before the deadline, and the deadline; `None` once they came.
    preface: Option<(usize, Pin<Box<Sleep>>)>,
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some((due, deadline)) = &mut this.preface else {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        };
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                // 0 is the end of the stream: nothing more to wait for.
                if read == 0 || read >= *due {
                    this.preface = None;
                } else {
                    *due -= read;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => match deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface within worker.grpc_preface_timeout_ms",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

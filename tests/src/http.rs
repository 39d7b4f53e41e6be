//! Raw HTTP/1.1 over a TCP stream, for requests an HTTP client would not send as written
//! (chunked bodies over the limit, `Expect: 100-continue` with a late body), and query strings.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An HTTP response read off a raw connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// Header names (lower-cased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body as sent (Content-Length framed, or everything up to the close).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Reads one response head (up to the blank line), then, for a final response, the body:
    /// `Content-Length` bytes, or everything until the peer closes. Panics after `within`.
    pub async fn read(stream: &mut TcpStream, within: Duration) -> RawResponse {
        tokio::time::timeout(within, async {
            let head = read_head(stream).await;
            let mut response = parse_head(&head);
            if response.status >= 200 {
                match response
                    .header("content-length")
                    .and_then(|v| v.parse::<usize>().ok())
                {
                    Some(len) => {
                        let mut body = vec![0; len];
                        stream
                            .read_exact(&mut body)
                            .await
                            .expect("the response body arrives whole");
                        response.body = body;
                    }
                    None => {
                        stream
                            .read_to_end(&mut response.body)
                            .await
                            .expect("the response body arrives");
                    }
                }
            }
            response
        })
        .await
        .unwrap_or_else(|_| panic!("no complete response within {within:?}"))
    }
}

/// Reads bytes up to and including the first `\r\n\r\n`, one at a time so nothing after
/// the head is consumed.
async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = stream
            .read_u8()
            .await
            .unwrap_or_else(|e| panic!("connection ended inside a response head: {e}"));
        head.push(byte);
        assert!(head.len() < 64 * 1024, "response head too long");
    }
    head
}

fn parse_head(head: &[u8]) -> RawResponse {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP status line: {status_line:?}"));
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    RawResponse {
        status,
        headers,
        body: Vec::new(),
    }
}

/// Sends `request` (complete, with `Connection: close`) on a new connection to `addr` and
/// reads the response. Panics when there is none within `within`.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], within: Duration) -> RawResponse {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    stream
        .write_all(request)
        .await
        .expect("the request can be sent");
    RawResponse::read(&mut stream, within).await
}

/// An `application/x-www-form-urlencoded` query string: a space becomes `+`, every byte but
/// `[A-Za-z0-9*._-]` becomes `%XX`.
pub fn query(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Reads from `stream` (a connection or its read half) until the peer closes (or resets) the
/// connection; panics after `within`. For attacks whose answer is a close.
pub async fn read_until_closed<R>(stream: &mut R, within: Duration) -> Vec<u8>
where
    R: AsyncRead + Unpin,
{
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the connection is still open after {within:?}"));
    seen
}

/// The status codes of the HTTP/1.1 responses in `raw`, in order.
pub fn statuses(raw: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(raw);
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| text[at + 9..].get(..3)?.parse().ok())
        .collect()
}

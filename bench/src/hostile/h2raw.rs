//! Just enough HTTP/2 written by hand (RFC 9113, HPACK of RFC 7541) to send what no
//! well-behaved client library sends: streams past the server's limit, a header block split
//! into CONTINUATION frames, HEADERS followed at once by RST_STREAM, bytes that are not a
//! preface. Header fields are literals without indexing and without Huffman coding, which
//! every HPACK decoder must accept.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types used here.
pub const DATA: u8 = 0x0;
/// HEADERS.
pub const HEADERS: u8 = 0x1;
/// RST_STREAM.
pub const RST_STREAM: u8 = 0x3;
/// SETTINGS.
pub const SETTINGS: u8 = 0x4;
/// GOAWAY.
pub const GOAWAY: u8 = 0x7;
/// CONTINUATION.
pub const CONTINUATION: u8 = 0x9;

/// END_STREAM (DATA, HEADERS).
pub const END_STREAM: u8 = 0x1;
/// END_HEADERS (HEADERS, CONTINUATION).
pub const END_HEADERS: u8 = 0x4;

/// RST_STREAM and GOAWAY error code CANCEL.
pub const CANCEL: u32 = 0x8;

/// The largest frame payload a peer must accept before it says otherwise.
pub const MAX_FRAME: usize = 16_384;

/// One frame: the 9-byte header, then `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = Vec::with_capacity(9 + len);
    // A frame length is 24 bits; every caller here stays within MAX_FRAME.
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A SETTINGS frame with `settings` (identifier, value).
pub fn settings(settings: &[(u16, u32)]) -> Vec<u8> {
    let payload: Vec<u8> = settings
        .iter()
        .flat_map(|(id, value)| id.to_be_bytes().into_iter().chain(value.to_be_bytes()))
        .collect();
    frame(SETTINGS, 0, 0, &payload)
}

/// The preface and an empty SETTINGS frame: the start of every client connection.
pub fn client_start() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend_from_slice(&settings(&[]));
    out
}

/// An HPACK integer with an `prefix`-bit prefix, the high bits of its first byte `first`.
fn integer(prefix: u8, first: u8, value: usize, out: &mut Vec<u8>) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A header field as a literal without indexing, new name, no Huffman coding.
pub fn literal(name: &str, value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    integer(7, 0, name.len(), out);
    out.extend_from_slice(name.as_bytes());
    integer(7, 0, value.len(), out);
    out.extend_from_slice(value);
}

/// The header block of a gRPC call to `path` (`/package.Service/Method`) with `extra`
/// metadata.
pub fn grpc_request(path: &str, extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", &b"POST"[..]),
        (":scheme", b"http"),
        (":path", path.as_bytes()),
        (":authority", b"wx-worker"),
        ("content-type", b"application/grpc"),
        ("te", b"trailers"),
    ] {
        literal(name, value, &mut block);
    }
    for (name, value) in extra {
        literal(name, value, &mut block);
    }
    block
}

/// `block` on `stream` as one HEADERS frame and as many CONTINUATION frames as it needs.
pub fn headers(stream: u32, block: &[u8], end_stream: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(block.len() + 9 * (block.len() / MAX_FRAME + 1));
    let chunks: Vec<&[u8]> = if block.is_empty() {
        vec![&[][..]]
    } else {
        block.chunks(MAX_FRAME).collect()
    };
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        let mut flags = if i == last { END_HEADERS } else { 0 };
        if i == 0 && end_stream {
            flags |= END_STREAM;
        }
        out.extend_from_slice(&frame(kind, flags, stream, chunk));
    }
    out
}

/// A DATA frame carrying one gRPC message: the 5-byte length prefix, then `message`.
pub fn grpc_data(stream: u32, message: &[u8], end_stream: bool) -> Vec<u8> {
    let mut payload = vec![0u8];
    payload.extend_from_slice(&(message.len() as u32).to_be_bytes());
    payload.extend_from_slice(message);
    frame(
        DATA,
        if end_stream { END_STREAM } else { 0 },
        stream,
        &payload,
    )
}

/// RST_STREAM of `stream` with `code`.
pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// What a server sent on one connection until it closed it or the reader stopped looking.
#[derive(Debug, Default)]
pub struct Tally {
    /// RST_STREAM frames by error code.
    pub resets: BTreeMap<u32, usize>,
    /// HEADERS frames (answers and trailers).
    pub headers: usize,
    /// DATA frames.
    pub data: usize,
    /// The GOAWAY error code, if one came.
    pub goaway: Option<u32>,
    /// Whether the server closed the connection (EOF or reset) before the reader stopped.
    pub closed: bool,
}

/// Reads frames from `reader` for at most `within` (until the close or a GOAWAY followed by
/// the close) and tallies them.
pub async fn tally<R: AsyncRead + Unpin>(reader: &mut R, within: Duration) -> Tally {
    let mut tally = Tally::default();
    let read = async {
        let mut header = [0u8; 9];
        loop {
            if reader.read_exact(&mut header).await.is_err() {
                tally.closed = true;
                return;
            }
            let len =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let mut payload = vec![0u8; len];
            if reader.read_exact(&mut payload).await.is_err() {
                tally.closed = true;
                return;
            }
            let code = |at: usize| {
                payload
                    .get(at..at + 4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            };
            match header[3] {
                RST_STREAM => *tally.resets.entry(code(0).unwrap_or(0)).or_default() += 1,
                GOAWAY => tally.goaway = code(4),
                HEADERS => tally.headers += 1,
                DATA => tally.data += 1,
                _ => {}
            }
        }
    };
    let _ = tokio::time::timeout(within, read).await;
    tally
}

/// The name of an HTTP/2 error code (RFC 9113 §7).
pub fn error_name(code: u32) -> String {
    match code {
        0x0 => "NO_ERROR".into(),
        0x1 => "PROTOCOL_ERROR".into(),
        0x2 => "INTERNAL_ERROR".into(),
        0x3 => "FLOW_CONTROL_ERROR".into(),
        0x5 => "STREAM_CLOSED".into(),
        0x6 => "FRAME_SIZE_ERROR".into(),
        0x7 => "REFUSED_STREAM".into(),
        0x8 => "CANCEL".into(),
        0x9 => "COMPRESSION_ERROR".into(),
        0xb => "ENHANCE_YOUR_CALM".into(),
        other => format!("0x{other:x}"),
    }
}

/// Sums the tallies of many connections into one line: GOAWAYs by code, resets by code,
/// answers, closes.
pub fn summary(tallies: &[Tally]) -> String {
    let mut goaways = BTreeMap::<String, usize>::new();
    let mut resets = BTreeMap::<String, usize>::new();
    let (mut headers, mut closed) = (0, 0);
    for tally in tallies {
        if let Some(code) = tally.goaway {
            *goaways.entry(error_name(code)).or_default() += 1;
        }
        for (code, n) in &tally.resets {
            *resets.entry(error_name(*code)).or_default() += n;
        }
        headers += tally.headers;
        closed += usize::from(tally.closed);
    }
    let mut parts = Vec::new();
    for (name, n) in goaways {
        parts.push(format!("GOAWAY {name} ×{n}"));
    }
    for (name, n) in resets {
        parts.push(format!("RST_STREAM {name} ×{n}"));
    }
    if headers > 0 {
        parts.push(format!("HEADERS ×{headers}"));
    }
    parts.push(format!("closed {closed}/{}", tallies.len()));
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_follow_rfc_7541_c_1() {
        // C.1.1: 10 with a 5-bit prefix; C.1.2: 1337 with a 5-bit prefix.
        let mut out = Vec::new();
        integer(5, 0, 10, &mut out);
        assert_eq!(out, [0x0a]);
        out.clear();
        integer(5, 0, 1337, &mut out);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
    }

    #[test]
    fn a_large_block_is_split_into_continuations() {
        let block = vec![0u8; MAX_FRAME * 2 + 1];
        let out = headers(1, &block, false);
        assert_eq!(out.len(), block.len() + 3 * 9);
        assert_eq!((out[3], out[4]), (HEADERS, 0));
        let last = MAX_FRAME * 2 + 18;
        assert_eq!((out[last + 3], out[last + 4]), (CONTINUATION, END_HEADERS));
    }
}

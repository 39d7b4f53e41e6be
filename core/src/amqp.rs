//! A lean confirm-mode AMQP 0-9-1 publisher that lives on the tokio runtime.
//!
//! Why not lapin's publish path: lapin drives its socket from a dedicated I/O thread, so each
//! publish and each confirm crosses threads (a futex wake-up either way), and it allocates a
//! frame object per publish: a large share of the gateway's CPU per callback. Here a publish
//! encodes its three frames
//! straight into a shared write buffer under one short lock; one writer task flushes whatever
//! accumulated with a single `write`, and one reader task resolves confirms (`multiple` acks
//! settle a whole batch at once). lapin still declares the topology and consumes.
//!
//! One connection, one channel (1) in confirm mode, `mandatory` publishes. Any protocol
//! error, missed heartbeat or socket error fails every unconfirmed publish and marks the
//! publisher dead; [`crate::rabbit::RabbitBus`]'s supervisor then connects a new one. A
//! publish is reported `Ok` only after the broker's `basic.ack` for its delivery tag, never
//! when its fate is unknown.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, basic, channel, confirm, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use amq_protocol::uri::{AMQPScheme, AMQPUri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bus::{Cause, HeaderValue, Properties, PublishError};

/// The channel every publish goes on.
const CHANNEL: u16 = 1;
/// Frame type octets and the end marker (AMQP 0-9-1 §4.2.3).
const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// Largest frame we accept or send; the broker may lower it in `connection.tune`.
const FRAME_MAX: u32 = 131_072;
/// Most encoded bytes waiting for the socket, buffered or in the write in progress. Reached
/// only when the broker stops reading (`connection.blocked` on a memory or disk alarm) while
/// callbacks keep coming; publishes then fail at once instead of queueing memory for as long as the alarm lasts.
const MAX_UNSENT: usize = 64 * 1024 * 1024;
/// Bound on the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Writes whose publishes are not all confirmed yet, at most; further publishes collect in the
/// buffer until a confirm comes back and then go out together (see [`write_loop`]).
const WRITES_IN_FLIGHT: usize = 2;
/// Unless this many bytes have collected: then they are written anyway.
const COALESCE_BYTES: usize = 256 * 1024;
/// Nor are frames held longer than this after the write they wait behind.
const MAX_HOLD: Duration = Duration::from_millis(2);

/// Why a publisher could not be connected.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The AMQP URL did not parse (amq-protocol describes why in text only).
    #[error("invalid AMQP url: {0}")]
    Url(String),
    /// `amqps://` is served by lapin's publish path, not this one.
    #[error("TLS (amqps) is not supported by the lean publisher")]
    Tls,
    /// TCP connect or I/O failed.
    #[error("cannot reach the broker")]
    Io(#[from] std::io::Error),
    /// The broker refused or broke the handshake.
    #[error("AMQP handshake failed")]
    Handshake(#[source] HandshakeError),
    /// The handshake did not finish in time.
    #[error("handshake timed out")]
    Timeout,
}

/// What went wrong in the AMQP handshake.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The broker closed the connection with a reason (wrong credentials, unknown vhost).
    #[error("broker closed the connection: {code} {text}")]
    Closed {
        /// AMQP reply code (403 access refused, 530 not allowed, …).
        code: u16,
        /// The broker's reply text.
        text: String,
    },
    /// The broker closed the socket without a reason (often an AMQP version mismatch).
    #[error("broker closed the socket during the handshake")]
    Eof,
    /// The broker does not offer PLAIN authentication.
    #[error("broker does not offer PLAIN authentication")]
    NoPlainAuth,
    /// The broker sent a frame out of order.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        /// The frame the handshake needed.
        expected: &'static str,
        /// What came instead (a short description of the frame).
        got: String,
    },
    /// A frame that cannot be parsed, or one larger than the handshake allows.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A handshake frame could not be encoded.
    #[error("cannot encode frame: {0}")]
    Encode(String),
}

impl From<HandshakeError> for ConnectError {
    fn from(e: HandshakeError) -> Self {
        Self::Handshake(e)
    }
}

/// Why the publisher's connection ended; every unconfirmed publish fails with it as the
/// source of [`PublishError::Connection`].
#[derive(Debug, thiserror::Error)]
pub enum LinkFailure {
    /// Writing to the socket failed.
    #[error("socket write failed")]
    Write(#[source] std::io::Error),
    /// Reading from the socket failed.
    #[error("socket read failed")]
    Read(#[source] std::io::Error),
    /// The broker closed the socket.
    #[error("broker closed the socket")]
    Eof,
    /// The broker closed the connection or the channel (`connection.close`,
    /// `channel.close`) with a reason.
    #[error("broker closed the {scope}: {code} {text}")]
    BrokerClosed {
        /// `connection` or `channel`.
        scope: &'static str,
        /// AMQP reply code.
        code: u16,
        /// The broker's reply text.
        text: String,
    },
    /// Nothing arrived for two heartbeat intervals: a partition or a hung broker.
    #[error("broker missed two heartbeats")]
    MissedHeartbeats,
    /// The broker sent something this publisher cannot parse or does not expect.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Closed by [`Publisher::close`] (or shutdown).
    #[error("publisher closed")]
    Closed,
}

/// Why a message cannot be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// An AMQP short string (exchange, routing key, message id, header name, …) over 255
    /// bytes.
    #[error("{0}-byte value does not fit an AMQP short string (255 bytes)")]
    ShortString(usize),
    /// A header value or frame over 4 GiB.
    #[error("value does not fit an AMQP frame")]
    TooLong,
}

/// A confirm-mode publisher on one AMQP connection. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer when the write buffer goes from empty to non-empty.
    wake_writer: Notify,
    /// Cancelled when the connection is dead (or closed by us).
    dead: CancellationToken,
    /// Largest body chunk per frame (`frame_max` − 8).
    body_chunk: usize,
    /// Socket writes so far.
    writes: AtomicU64,
}

struct State {
    /// Encoded frames not yet handed to the socket.
    out: Vec<u8>,
    /// Bytes of the write in progress (taken from `out` by the writer, not yet accepted by the
    /// socket): they count against [`MAX_UNSENT`] as much as `out` does.
    writing: usize,
    /// The delivery tag of the last publish (the broker counts from 1 after `confirm.select`).
    last_tag: u64,
    /// The last delivery tag and the time of each write whose publishes are not all settled
    /// yet, oldest first.
    writes_in_flight: VecDeque<(u64, Instant)>,
    /// Publishes waiting for their confirm, by delivery tag.
    pending: BTreeMap<u64, Pending>,
    /// Set once the connection failed; every later publish fails at once.
    failure: Option<Cause>,
}

/// Where a publish learns its fate.
type Done = oneshot::Sender<Result<(), PublishError>>;

/// A publish waiting for its confirm.
struct Pending {
    done: Done,
    /// [`fingerprint`] of what was published, to recognise it in a `basic.return`.
    fingerprint: u64,
    /// Whether a `basic.return` came for it.
    returned: Returned,
}

/// What the returns received so far say about one open publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Returned {
    /// None matched it: its ack means "confirmed".
    No,
    /// A return matched it and no other open publish: its ack means "unroutable".
    Yes,
    /// A return matched it and other open publishes of the same message: one of them came
    /// back, which one is unknown, so its ack proves nothing ("not confirmed").
    Maybe,
}

/// What identifies a published message when the broker returns it: exchange, routing key,
/// message id and body size (a return carries them all back, but not the delivery tag).
fn fingerprint(exchange: &str, routing_key: &str, message_id: Option<&str>, body_len: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (exchange, routing_key, message_id, body_len).hash(&mut hasher);
    hasher.finish()
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves the state consistent enough to fail everything.
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Publisher {
    /// Connects to `url` (`amqp://user:pass@host:port/vhost?heartbeat=N&frame_max=N`), opens
    /// channel 1 in confirm mode and starts the reader and writer tasks. `stop` closes it.
    pub async fn connect(url: &str, stop: CancellationToken) -> Result<Publisher, ConnectError> {
        let uri: AMQPUri = url.parse().map_err(ConnectError::Url)?;
        if uri.scheme == AMQPScheme::AMQPS {
            return Err(ConnectError::Tls);
        }
        let (stream, tune) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&uri))
            .await
            .map_err(|_| ConnectError::Timeout)??;
        let (reader, writer) = stream.into_split();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                out: Vec::with_capacity(64 * 1024),
                writing: 0,
                last_tag: 0,
                writes_in_flight: VecDeque::new(),
                pending: BTreeMap::new(),
                failure: None,
            }),
            wake_writer: Notify::new(),
            dead: stop.child_token(),
            body_chunk: (tune.frame_max as usize).saturating_sub(8).max(1),
            writes: AtomicU64::new(0),
        });
        let heartbeat =
            (tune.heartbeat > 0).then(|| Duration::from_secs(u64::from(tune.heartbeat)));
        tokio::spawn(write_loop(Arc::clone(&shared), writer, heartbeat));
        tokio::spawn(read_loop(Arc::clone(&shared), reader, heartbeat));
        Ok(Publisher { shared })
    }

    /// How many times the writer has written to the socket so far: with publishes in flight
    /// this grows much slower than the number of publishes (group commit, [`write_loop`]).
    pub fn writes(&self) -> u64 {
        self.shared.writes.load(Ordering::Relaxed)
    }

    /// Whether the connection is still usable.
    pub fn is_alive(&self) -> bool {
        !self.shared.dead.is_cancelled()
    }

    /// Resolves when the connection dies.
    pub async fn died(&self) {
        self.shared.dead.cancelled().await;
    }

    /// Waits until every publish made so far is settled, or `deadline` passes; then closes.
    pub async fn drain_and_close(&self, deadline: Duration) {
        let until = tokio::time::Instant::now() + deadline;
        while !lock(&self.shared).pending.is_empty() && tokio::time::Instant::now() < until {
            if self.shared.dead.is_cancelled() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.close();
    }

    /// Closes the connection at once; unconfirmed publishes fail with
    /// [`PublishError::Connection`] ([`LinkFailure::Closed`]).
    pub fn close(&self) {
        // Cancelled first: a deliberate close is not worth a warning.
        self.shared.dead.cancel();
        fail(&self.shared, LinkFailure::Closed);
    }

    /// Publishes `body` persistently and `mandatory` to `exchange` with `routing_key`, and
    /// waits for the broker's confirm. `Ok` means the broker took responsibility for it;
    /// [`PublishError::Unroutable`] that no queue was bound; any other error that its fate
    /// is unknown or negative, so the caller must not report it accepted.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: &Properties,
        body: &[u8],
    ) -> Result<(), PublishError> {
        let (done, confirmed) = oneshot::channel();
        let wake = {
            let mut state = lock(&self.shared);
            if let Some(failure) = &state.failure {
                return Err(PublishError::Connection(Arc::clone(failure)));
            }
            if state.out.len() + state.writing >= MAX_UNSENT {
                return Err(PublishError::Backlogged);
            }
            let start = state.out.len();
            if let Err(e) = encode_publish(
                &mut state.out,
                exchange,
                routing_key,
                properties,
                body,
                self.shared.body_chunk,
            ) {
                state.out.truncate(start);
                return Err(PublishError::Encode(Arc::new(e)));
            }
            state.last_tag += 1;
            let tag = state.last_tag;
            let fingerprint = fingerprint(
                exchange,
                routing_key,
                properties.message_id.as_deref(),
                body.len() as u64,
            );
            state.pending.insert(
                tag,
                Pending {
                    done,
                    fingerprint,
                    returned: Returned::No,
                },
            );
            // The writer waits for work when the buffer was empty, and may hold a buffer
            // back behind unconfirmed writes until it is large.
            start == 0 || (start < COALESCE_BYTES && state.out.len() >= COALESCE_BYTES)
        };
        if wake {
            self.shared.wake_writer.notify_one();
        }
        match confirmed.await {
            Ok(result) => result,
            // Senders are only dropped by `fail`, which sends first; be safe anyway.
            Err(_) => Err(PublishError::Connection(Arc::new(LinkFailure::Closed))),
        }
    }
}

/// Marks the publisher dead and fails every unconfirmed publish. The first failure is the
/// one every later publish reports.
fn fail(shared: &Shared, why: LinkFailure) {
    let (cause, pending) = {
        let mut state = lock(shared);
        let cause = Arc::clone(state.failure.get_or_insert_with(|| Arc::new(why)));
        state.out.clear();
        (cause, std::mem::take(&mut state.pending))
    };
    if !shared.dead.is_cancelled() {
        tracing::warn!(
            error = %cause,
            unconfirmed = pending.len(),
            "amqp publisher connection lost"
        );
    }
    shared.dead.cancel();
    for (_, p) in pending {
        let _ = p
            .done
            .send(Err(PublishError::Connection(Arc::clone(&cause))));
    }
}

fn encode_publish(
    out: &mut Vec<u8>,
    exchange: &str,
    routing_key: &str,
    properties: &Properties,
    body: &[u8],
    body_chunk: usize,
) -> Result<(), EncodeError> {
    // basic.publish, encoded by hand: it is the hot path and the layout is fixed.
    let size = 2 + 2 + 2 + 1 + exchange.len() + 1 + routing_key.len() + 1;
    out.push(FRAME_METHOD);
    out.extend_from_slice(&CHANNEL.to_be_bytes());
    out.extend_from_slice(
        &u32::try_from(size)
            .map_err(|_| EncodeError::TooLong)?
            .to_be_bytes(),
    );
    out.extend_from_slice(&60u16.to_be_bytes());
    out.extend_from_slice(&40u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    short_string(out, exchange)?;
    short_string(out, routing_key)?;
    out.push(0b01); // mandatory, not immediate
    out.push(FRAME_END);
    encode_content_header(out, properties, body.len() as u64)?;
    for chunk in body.chunks(body_chunk) {
        out.push(FRAME_BODY);
        out.extend_from_slice(&CHANNEL.to_be_bytes());
        out.extend_from_slice(
            &u32::try_from(chunk.len())
                .map_err(|_| EncodeError::TooLong)?
                .to_be_bytes(),
        );
        out.extend_from_slice(chunk);
        out.push(FRAME_END);
    }
    Ok(())
}

/// The content header frame of a `basic` message (AMQP 0-9-1 §4.2.6.1) with the properties
/// [`Properties`] can carry; always persistent (`delivery-mode` 2).
fn encode_content_header(
    out: &mut Vec<u8>,
    properties: &Properties,
    body_size: u64,
) -> Result<(), EncodeError> {
    const CONTENT_TYPE: u16 = 1 << 15;
    const HEADERS: u16 = 1 << 13;
    const DELIVERY_MODE: u16 = 1 << 12;
    const MESSAGE_ID: u16 = 1 << 7;
    const TIMESTAMP: u16 = 1 << 6;
    const TYPE: u16 = 1 << 5;

    out.push(FRAME_HEADER);
    out.extend_from_slice(&CHANNEL.to_be_bytes());
    let size_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let payload_at = out.len();
    out.extend_from_slice(&60u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&body_size.to_be_bytes());
    let mut flags = DELIVERY_MODE;
    if properties.content_type.is_some() {
        flags |= CONTENT_TYPE;
    }
    if !properties.headers.is_empty() {
        flags |= HEADERS;
    }
    if properties.message_id.is_some() {
        flags |= MESSAGE_ID;
    }
    if properties.timestamp_s.is_some() {
        flags |= TIMESTAMP;
    }
    if properties.kind.is_some() {
        flags |= TYPE;
    }
    out.extend_from_slice(&flags.to_be_bytes());
    if let Some(content_type) = &properties.content_type {
        short_string(out, content_type)?;
    }
    if !properties.headers.is_empty() {
        let table_at = out.len();
        out.extend_from_slice(&[0; 4]);
        for (name, value) in &properties.headers {
            short_string(out, name)?;
            match value {
                HeaderValue::Str(s) => {
                    out.push(b'S');
                    let len = u32::try_from(s.len()).map_err(|_| EncodeError::TooLong)?;
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
                HeaderValue::Int(i) => {
                    out.push(b'l');
                    out.extend_from_slice(&i.to_be_bytes());
                }
            }
        }
        patch_len(out, table_at)?;
    }
    out.push(2);
    if let Some(message_id) = &properties.message_id {
        short_string(out, message_id)?;
    }
    if let Some(timestamp) = properties.timestamp_s {
        out.extend_from_slice(&timestamp.to_be_bytes());
    }
    if let Some(kind) = &properties.kind {
        short_string(out, kind)?;
    }
    debug_assert_eq!(payload_at, size_at + 4);
    patch_len(out, size_at)?;
    out.push(FRAME_END);
    Ok(())
}

fn short_string(out: &mut Vec<u8>, s: &str) -> Result<(), EncodeError> {
    let len = u8::try_from(s.len()).map_err(|_| EncodeError::ShortString(s.len()))?;
    out.push(len);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Writes the length of what follows the 4 bytes at `at` into them.
fn patch_len(out: &mut [u8], at: usize) -> Result<(), EncodeError> {
    let len = u32::try_from(out.len() - at - 4).map_err(|_| EncodeError::TooLong)?;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

fn write_frame(out: &mut Vec<u8>, frame: &AMQPFrame) -> Result<(), String> {
    let buffer = std::mem::take(out);
    match gen_frame(frame)(WriteContext::from(buffer)) {
        Ok(context) => {
            *out = context.write;
            Ok(())
        }
        Err(e) => Err(format!("{e:?}")),
    }
}

async fn write_loop(shared: Arc<Shared>, mut socket: OwnedWriteHalf, heartbeat: Option<Duration>) {
    let mut spare = Vec::with_capacity(64 * 1024);
    // Heartbeats go out at half the negotiated interval whatever the traffic: cheap, and the
    // broker never has to tell a busy writer from a dead one.
    let mut beat = heartbeat.map(|hb| tokio::time::interval(hb / 2));
    // Set while frames are held back: when to write them even if no confirm has come.
    let mut hold_until: Option<Instant> = None;
    loop {
        let heartbeat_due = tokio::select! {
            () = shared.dead.cancelled() => break,
            () = shared.wake_writer.notified() => false,
            () = async {
                match hold_until {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            } => false,
            _ = async {
                match beat.as_mut() {
                    Some(beat) => beat.tick().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        hold_until = None;
        {
            let mut state = lock(&shared);
            // Group commit: while earlier writes wait for their confirms, publishes collect
            // and go out in one write when a confirm arrives (the reader wakes us), instead
            // of one write each. With nothing unconfirmed a publish is written at once, and
            // nothing is held past MAX_HOLD after the older unconfirmed write, so a slow
            // broker delays a publish by at most that, not by a confirm round trip.
            let settled_below = state.pending.keys().next().copied().unwrap_or(u64::MAX);
            while state
                .writes_in_flight
                .front()
                .is_some_and(|&(last, _)| last < settled_below)
            {
                state.writes_in_flight.pop_front();
            }
            let now = Instant::now();
            let hold_ends = state
                .writes_in_flight
                .iter()
                .rev()
                .nth(WRITES_IN_FLIGHT - 1)
                .map(|&(_, written)| written + MAX_HOLD);
            if let Some(hold_ends) = hold_ends
                && !heartbeat_due
                && hold_ends > now
                && state.out.len() < COALESCE_BYTES
            {
                hold_until = Some(hold_ends);
                continue;
            }
            if !state.out.is_empty()
                && state.writes_in_flight.back().map(|&(last, _)| last) != Some(state.last_tag)
            {
                let last = state.last_tag;
                state.writes_in_flight.push_back((last, now));
            }
            std::mem::swap(&mut state.out, &mut spare);
            if heartbeat_due {
                spare.extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
            }
            state.writing = spare.len();
        }
        if spare.is_empty() {
            continue;
        }
        shared.writes.fetch_add(1, Ordering::Relaxed);
        // A broker that stops reading (partitioned, or blocked) leaves this write waiting for
        // socket space: the reader notices missed heartbeats and marks the link dead, which
        // ends the write too.
        let written = tokio::select! {
            written = socket.write_all(&spare) => written,
            () = shared.dead.cancelled() => break,
        };
        if let Err(e) = written {
            fail(&shared, LinkFailure::Write(e));
            break;
        }
        lock(&shared).writing = 0;
        spare.clear();
        if spare.capacity() > 1024 * 1024 {
            spare.shrink_to(64 * 1024);
        }
    }
    // Closed or dead: nothing pending may wait for a confirm that cannot come.
    fail(&shared, LinkFailure::Closed);
    // Best effort: tell the broker we are going.
    let close = AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: ShortString::from("bye"),
            class_id: 0,
            method_id: 0,
        })),
    );
    let mut out = Vec::new();
    if write_frame(&mut out, &close).is_ok() {
        let _ = tokio::time::timeout(Duration::from_millis(200), socket.write_all(&out)).await;
    }
    let _ = socket.shutdown().await;
}

async fn read_loop(shared: Arc<Shared>, mut socket: OwnedReadHalf, heartbeat: Option<Duration>) {
    // The broker sends heartbeats at the negotiated interval; two missed ones mean it is gone
    // (a partition with the TCP connection still open).
    let silence = heartbeat.map_or(Duration::from_secs(3600), |hb| hb * 2);
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut confirms = ConfirmReader::default();
    loop {
        let read = tokio::select! {
            () = shared.dead.cancelled() => return,
            read = tokio::time::timeout(silence, socket.read_buf(&mut buf)) => read,
        };
        match read {
            Err(_) => return fail(&shared, LinkFailure::MissedHeartbeats),
            Ok(Err(e)) => return fail(&shared, LinkFailure::Read(e)),
            Ok(Ok(0)) => return fail(&shared, LinkFailure::Eof),
            Ok(Ok(_)) => {}
        }
        let mut consumed = 0;
        let mut acks: Vec<Confirm> = Vec::new();
        while consumed < buf.len() {
            let input = &buf[consumed..];
            match parse_frame(input) {
                Ok((rest, frame)) => {
                    consumed += input.len() - rest.len();
                    if let Err(why) = confirms.on_frame(frame, &mut acks) {
                        settle(&shared, &acks);
                        return fail(&shared, why);
                    }
                }
                Err(e) if e.is_incomplete() => break,
                Err(e) => {
                    settle(&shared, &acks);
                    return fail(
                        &shared,
                        LinkFailure::Protocol(format!("bad frame from broker: {e:?}")),
                    );
                }
            }
        }
        buf.drain(..consumed);
        settle(&shared, &acks);
    }
}

/// What the reader learned from the broker about unconfirmed publishes, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Confirm {
    /// A `basic.ack` (`positive`) or `basic.nack` for `tag`, or every tag up to it.
    Ack {
        tag: u64,
        multiple: bool,
        positive: bool,
    },
    /// A `basic.return` of the message with this [`fingerprint`].
    Returned(u64),
}

/// Turns the broker's frames into [`Confirm`]s.
///
/// A return does not carry the delivery tag. The broker sends it before the confirm of the
/// same message, but coalesces confirms: the next ack may cover several publishes, routed
/// and returned ones alike (seen with RabbitMQ 3.10), so "the next confirm" does not say
/// which. A return is matched to the open publish with the same exchange, routing key,
/// message id and body size; when the same message is in flight more than once, none of its
/// copies can be reported confirmed (see [`Returned::Maybe`]).
#[derive(Debug, Default)]
struct ConfirmReader {
    /// The `basic.return` being received: its exchange and routing key, then (after the
    /// content header) the message id and the body bytes still to come.
    returning: Option<Returning>,
}

#[derive(Debug)]
struct Returning {
    exchange: String,
    routing_key: String,
    /// Set by the content header: (message id, body size, body bytes still to come).
    content: Option<(Option<String>, u64, u64)>,
}

impl ConfirmReader {
    fn on_frame(
        &mut self,
        frame: AMQPFrame,
        confirms: &mut Vec<Confirm>,
    ) -> Result<(), LinkFailure> {
        match frame {
            AMQPFrame::Heartbeat | AMQPFrame::InvalidHeartbeat(_) => Ok(()),
            AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Ack(ack))) => {
                confirms.push(Confirm::Ack {
                    tag: ack.delivery_tag,
                    multiple: ack.multiple,
                    positive: true,
                });
                Ok(())
            }
            AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Nack(nack))) => {
                confirms.push(Confirm::Ack {
                    tag: nack.delivery_tag,
                    multiple: nack.multiple,
                    positive: false,
                });
                Ok(())
            }
            AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Return(ret))) => {
                tracing::warn!(
                    reply_code = ret.reply_code,
                    reply_text = %ret.reply_text,
                    exchange = %ret.exchange,
                    routing_key = %ret.routing_key,
                    "broker returned an unroutable message"
                );
                self.returning = Some(Returning {
                    exchange: ret.exchange.to_string(),
                    routing_key: ret.routing_key.to_string(),
                    content: None,
                });
                Ok(())
            }
            AMQPFrame::Header(_, header) => {
                let Some(returning) = self.returning.as_mut().filter(|r| r.content.is_none())
                else {
                    return Err(LinkFailure::Protocol(
                        "content header without basic.return".into(),
                    ));
                };
                let message_id = header
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.as_str().to_owned());
                returning.content = Some((message_id, header.body_size, header.body_size));
                self.body_received(0, confirms);
                Ok(())
            }
            AMQPFrame::Body(_, data) => {
                if self.returning.as_ref().is_none_or(|r| r.content.is_none()) {
                    return Err(LinkFailure::Protocol("content body without header".into()));
                }
                self.body_received(data.len() as u64, confirms);
                Ok(())
            }
            AMQPFrame::Method(_, AMQPClass::Connection(connection::AMQPMethod::Close(close))) => {
                Err(LinkFailure::BrokerClosed {
                    scope: "connection",
                    code: close.reply_code,
                    text: close.reply_text.to_string(),
                })
            }
            AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::Close(close))) => {
                Err(LinkFailure::BrokerClosed {
                    scope: "channel",
                    code: close.reply_code,
                    text: close.reply_text.to_string(),
                })
            }
            AMQPFrame::Method(
                _,
                AMQPClass::Connection(connection::AMQPMethod::Blocked(blocked)),
            ) => {
                // Publishes queue up (and time out at the caller) until unblocked.
                tracing::warn!(reason = %blocked.reason, "broker blocked publishing");
                Ok(())
            }
            AMQPFrame::Method(_, AMQPClass::Connection(connection::AMQPMethod::Unblocked(_))) => {
                tracing::info!("broker unblocked publishing");
                Ok(())
            }
            other => {
                tracing::debug!(frame = ?other, "ignoring frame");
                Ok(())
            }
        }
    }

    fn body_received(&mut self, len: u64, confirms: &mut Vec<Confirm>) {
        let Some(returning) = self.returning.as_mut() else {
            return;
        };
        let Some((_, _, remaining)) = returning.content.as_mut() else {
            return;
        };
        *remaining = remaining.saturating_sub(len);
        if *remaining > 0 {
            return;
        }
        if let Some(Returning {
            exchange,
            routing_key,
            content: Some((message_id, body_size, _)),
        }) = self.returning.take()
        {
            confirms.push(Confirm::Returned(fingerprint(
                &exchange,
                &routing_key,
                message_id.as_deref(),
                body_size,
            )));
        }
    }
}

/// Applies one [`Confirm`] to `pending`: a return marks its publish, an ack or nack takes the
/// publishes it settles out, each with its result, lowest tag first.
fn resolve(
    pending: &mut BTreeMap<u64, Pending>,
    confirm: Confirm,
) -> Vec<(Done, Result<(), PublishError>)> {
    let (tag, multiple, positive) = match confirm {
        Confirm::Returned(fingerprint) => {
            let mut candidates: Vec<&mut Pending> = pending
                .values_mut()
                .filter(|p| p.fingerprint == fingerprint && p.returned == Returned::No)
                .collect();
            match candidates.as_mut_slice() {
                [] => tracing::debug!("a returned message matches no unconfirmed publish"),
                [only] => only.returned = Returned::Yes,
                // The same message is in flight more than once (a retried event): confirms
                // may come in any order, so none of them can be reported confirmed.
                several => {
                    for p in several {
                        p.returned = Returned::Maybe;
                    }
                }
            }
            return Vec::new();
        }
        Confirm::Ack {
            tag,
            multiple,
            positive,
        } => (tag, multiple, positive),
    };
    let settled: Vec<Pending> = if multiple {
        let rest = pending.split_off(&(tag.saturating_add(1)));
        std::mem::replace(pending, rest).into_values().collect()
    } else {
        pending.remove(&tag).into_iter().collect()
    };
    settled
        .into_iter()
        .map(|p| {
            let result = match (positive, p.returned) {
                (true, Returned::No) => Ok(()),
                (true, Returned::Yes) => Err(PublishError::Unroutable),
                (false, _) | (true, Returned::Maybe) => Err(PublishError::NotConfirmed),
            };
            (p.done, result)
        })
        .collect()
}

/// Applies `confirms` in order, outside the frame loop so the lock is taken once per read,
/// and resolves the publishes they settle.
fn settle(shared: &Shared, confirms: &[Confirm]) {
    if confirms.is_empty() {
        return;
    }
    let mut done = Vec::new();
    let waiting;
    {
        let mut state = lock(shared);
        for &confirm in confirms {
            done.extend(resolve(&mut state.pending, confirm));
        }
        // Publishes held back behind unconfirmed writes can go now.
        waiting = !state.out.is_empty();
    }
    if waiting {
        shared.wake_writer.notify_one();
    }
    for (sender, result) in done {
        let _ = sender.send(result);
    }
}

struct Tuned {
    frame_max: u32,
    heartbeat: u16,
}

async fn handshake(uri: &AMQPUri) -> Result<(TcpStream, Tuned), ConnectError> {
    let mut stream = TcpStream::connect((uri.authority.host.as_str(), uri.authority.port)).await?;
    stream.set_nodelay(true)?;
    stream.write_all(b"AMQP\x00\x00\x09\x01").await?;
    let mut buf = Vec::new();

    let start = match read_frame(&mut stream, &mut buf).await? {
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Start(start))) => start,
        other => return Err(unexpected("connection.start", &other)),
    };
    if !String::from_utf8_lossy(start.mechanisms.as_bytes())
        .split(' ')
        .any(|m| m == "PLAIN")
    {
        return Err(HandshakeError::NoPlainAuth.into());
    }
    let mut capabilities = FieldTable::default();
    for capability in ["publisher_confirms", "connection.blocked", "basic.nack"] {
        capabilities.insert(ShortString::from(capability), AMQPValue::Boolean(true));
    }
    let mut client = FieldTable::default();
    client.insert(
        ShortString::from("product"),
        AMQPValue::LongString(LongString::from(b"wxgate".to_vec())),
    );
    client.insert(
        ShortString::from("capabilities"),
        AMQPValue::FieldTable(capabilities),
    );
    let user = &uri.authority.userinfo;
    let response = format!("\0{}\0{}", user.username, user.password);
    send(
        &mut stream,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: client,
            mechanism: ShortString::from("PLAIN"),
            response: LongString::from(response.into_bytes()),
            locale: ShortString::from("en_US"),
        })),
        0,
    )
    .await?;

    let tune = match read_frame(&mut stream, &mut buf).await? {
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Tune(tune))) => tune,
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(close))) => {
            return Err(HandshakeError::Closed {
                code: close.reply_code,
                text: close.reply_text.to_string(),
            }
            .into());
        }
        other => return Err(unexpected("connection.tune", &other)),
    };
    let negotiate = |ours: u32, theirs: u32| match (ours, theirs) {
        (0, t) => t,
        (o, 0) => o,
        (o, t) => o.min(t),
    };
    let frame_max = negotiate(uri.query.frame_max.unwrap_or(FRAME_MAX), tune.frame_max).max(4096);
    let heartbeat = match uri.query.heartbeat {
        Some(hb) => hb,
        None => tune.heartbeat,
    };
    send(
        &mut stream,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 1,
            frame_max,
            heartbeat,
        })),
        0,
    )
    .await?;
    send(
        &mut stream,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: ShortString::from(uri.vhost.as_str()),
        })),
        0,
    )
    .await?;
    expect(&mut stream, &mut buf, "connection.open-ok", |f| {
        matches!(
            f,
            AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)))
        )
    })
    .await?;
    send(
        &mut stream,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        CHANNEL,
    )
    .await?;
    expect(&mut stream, &mut buf, "channel.open-ok", |f| {
        matches!(
            f,
            AMQPFrame::Method(CHANNEL, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)))
        )
    })
    .await?;
    send(
        &mut stream,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
        CHANNEL,
    )
    .await?;
    expect(&mut stream, &mut buf, "confirm.select-ok", |f| {
        matches!(
            f,
            AMQPFrame::Method(
                CHANNEL,
                AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))
            )
        )
    })
    .await?;
    if !buf.is_empty() {
        return Err(HandshakeError::Unexpected {
            expected: "nothing after confirm.select-ok",
            got: format!("{} bytes", buf.len()),
        }
        .into());
    }
    Ok((
        stream,
        Tuned {
            frame_max,
            heartbeat,
        },
    ))
}

fn unexpected(expected: &'static str, got: &AMQPFrame) -> ConnectError {
    HandshakeError::Unexpected {
        expected,
        got: format!("{got:?}"),
    }
    .into()
}

async fn expect(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    wanted: &'static str,
    is: impl Fn(&AMQPFrame) -> bool,
) -> Result<(), ConnectError> {
    loop {
        let frame = read_frame(stream, buf).await?;
        if is(&frame) {
            return Ok(());
        }
        match frame {
            AMQPFrame::Heartbeat => continue,
            AMQPFrame::Method(_, AMQPClass::Connection(connection::AMQPMethod::Close(close))) => {
                return Err(HandshakeError::Closed {
                    code: close.reply_code,
                    text: close.reply_text.to_string(),
                }
                .into());
            }
            other => return Err(unexpected(wanted, &other)),
        }
    }
}

async fn send(stream: &mut TcpStream, method: AMQPClass, channel: u16) -> Result<(), ConnectError> {
    let mut out = Vec::new();
    write_frame(&mut out, &AMQPFrame::Method(channel, method)).map_err(HandshakeError::Encode)?;
    stream.write_all(&out).await?;
    Ok(())
}

async fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<AMQPFrame, ConnectError> {
    loop {
        if !buf.is_empty() {
            match parse_frame(buf.as_slice()) {
                Ok((rest, frame)) => {
                    let consumed = buf.len() - rest.len();
                    buf.drain(..consumed);
                    return Ok(frame);
                }
                Err(e) if e.is_incomplete() => {}
                Err(e) => {
                    return Err(HandshakeError::Malformed(format!("{e:?}")).into());
                }
            }
        }
        if buf.len() > FRAME_MAX as usize {
            return Err(HandshakeError::Malformed("frame over frame_max".into()).into());
        }
        if stream.read_buf(buf).await? == 0 {
            // A broker answering the protocol header with its own means a version mismatch.
            return Err(HandshakeError::Eof.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use amq_protocol::frame::AMQPContentHeader;

    use super::*;

    /// What amq-protocol (lapin's codec) writes for the same header.
    fn reference(properties: &Properties, body_size: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let frame = AMQPFrame::Header(
            CHANNEL,
            AMQPContentHeader {
                class_id: 60,
                body_size,
                properties: crate::rabbit::to_amqp(properties),
            },
        );
        write_frame(&mut out, &frame).unwrap();
        out
    }

    #[test]
    fn content_header_is_encoded_like_amq_protocol() {
        let full = Properties {
            message_id: Some("0123456789abcdef0123456789abcdef".into()),
            timestamp_s: Some(1_700_000_000),
            content_type: Some("application/x-protobuf".into()),
            kind: Some("wxgate.v1.Event".into()),
            // Sorted by name: amq-protocol's table is a BTreeMap.
            headers: vec![
                ("account_id".into(), HeaderValue::Str("demo".into())),
                ("x-wxgate-attempt".into(), HeaderValue::Int(-3)),
            ],
        };
        let cases = [
            full.clone(),
            Properties::default(),
            Properties {
                headers: Vec::new(),
                ..full.clone()
            },
            Properties {
                message_id: None,
                kind: None,
                ..full
            },
        ];
        for (i, properties) in cases.iter().enumerate() {
            for body_size in [0, 1, 300_000] {
                let mut ours = Vec::new();
                encode_content_header(&mut ours, properties, body_size).unwrap();
                assert_eq!(ours, reference(properties, body_size), "case {i}");
            }
        }
    }

    #[test]
    fn publish_frames_are_encoded_like_amq_protocol() {
        let properties = Properties::default();
        let body: Vec<u8> = (0..250u8).collect();
        let mut ours = Vec::new();
        encode_publish(&mut ours, "ns.events", "demo.text", &properties, &body, 100).unwrap();
        let mut expected = Vec::new();
        let method = AMQPFrame::Method(
            CHANNEL,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: ShortString::from("ns.events"),
                routing_key: ShortString::from("demo.text"),
                mandatory: true,
                immediate: false,
            })),
        );
        write_frame(&mut expected, &method).unwrap();
        expected.extend_from_slice(&reference(&properties, body.len() as u64));
        for chunk in body.chunks(100) {
            write_frame(&mut expected, &AMQPFrame::Body(CHANNEL, chunk.to_vec())).unwrap();
        }
        assert_eq!(ours, expected);
    }

    type Outcome = oneshot::Receiver<Result<(), PublishError>>;

    /// Publishes pending under `(tag, fingerprint)`, each with a receiver for its result.
    fn pending(publishes: &[(u64, u64)]) -> (BTreeMap<u64, Pending>, Vec<(u64, Outcome)>) {
        let mut pending = BTreeMap::new();
        let mut receivers = Vec::new();
        for &(tag, fingerprint) in publishes {
            let (done, result) = oneshot::channel();
            pending.insert(
                tag,
                Pending {
                    done,
                    fingerprint,
                    returned: Returned::No,
                },
            );
            receivers.push((tag, result));
        }
        (pending, receivers)
    }

    /// Applies `confirms` to `publishes` and compares what each publish was told (`ok`,
    /// `unroutable`, `nack`, or `open` when not settled) with `expected`.
    fn check(publishes: &[(u64, u64)], confirms: &[Confirm], expected: &[(u64, &str)]) {
        let (mut pending, mut receivers) = pending(publishes);
        for &confirm in confirms {
            for (done, result) in resolve(&mut pending, confirm) {
                let _ = done.send(result);
            }
        }
        let outcomes: Vec<(u64, &str)> = receivers
            .iter_mut()
            .map(|(tag, result)| {
                let outcome = match result.try_recv() {
                    Ok(Ok(())) => "ok",
                    Ok(Err(PublishError::Unroutable)) => "unroutable",
                    Ok(Err(PublishError::NotConfirmed)) => "nack",
                    Ok(Err(_)) => "failed",
                    Err(_) => "open",
                };
                (*tag, outcome)
            })
            .collect();
        assert_eq!(outcomes, expected);
    }

    fn ack(tag: u64, multiple: bool) -> Confirm {
        Confirm::Ack {
            tag,
            multiple,
            positive: true,
        }
    }

    #[test]
    fn a_return_marks_the_one_open_publish_of_the_same_message() {
        const ROUTED: u64 = 1;
        const LOST: u64 = 2;
        // The broker coalesced the confirms of a routed and a returned publish into one
        // multiple ack: only the returned one is unroutable.
        check(
            &[(1, ROUTED), (2, LOST), (3, ROUTED)],
            &[Confirm::Returned(LOST), ack(3, true)],
            &[(1, "ok"), (2, "unroutable"), (3, "ok")],
        );
        // The same message in flight twice: a return cannot tell which one came back, and
        // confirms may come in any order (the older one waiting for a quorum while the
        // returned one is acked at once), so neither is reported confirmed.
        check(
            &[(1, LOST), (2, LOST), (3, ROUTED)],
            &[
                Confirm::Returned(LOST),
                ack(2, false),
                ack(1, false),
                ack(3, true),
            ],
            &[(1, "nack"), (2, "nack"), (3, "ok")],
        );
        check(
            &[(1, LOST), (2, LOST)],
            &[
                Confirm::Returned(LOST),
                Confirm::Returned(LOST),
                ack(2, true),
            ],
            &[(1, "nack"), (2, "nack")],
        );
        // Once the older one is settled, a return of the same message is unambiguous.
        check(
            &[(1, LOST), (2, LOST)],
            &[ack(1, false), Confirm::Returned(LOST), ack(2, false)],
            &[(1, "ok"), (2, "unroutable")],
        );
    }

    #[test]
    fn a_returned_message_that_is_nacked_leaves_nothing_behind() {
        const SAME: u64 = 7;
        let nack = Confirm::Ack {
            tag: 1,
            multiple: false,
            positive: false,
        };
        // The return of 1 goes with its nack; 2, the same message published afterwards, is
        // confirmed plainly: nothing stale is left to spoil it.
        let (mut pending, mut receivers) = pending(&[(1, SAME)]);
        let settle = |pending: &mut BTreeMap<u64, Pending>, confirm| {
            for (done, result) in resolve(pending, confirm) {
                let _ = done.send(result);
            }
        };
        settle(&mut pending, Confirm::Returned(SAME));
        settle(&mut pending, nack);
        let (done, mut second) = oneshot::channel();
        pending.insert(
            2,
            Pending {
                done,
                fingerprint: SAME,
                returned: Returned::No,
            },
        );
        settle(&mut pending, ack(2, false));
        assert!(matches!(
            receivers[0].1.try_recv(),
            Ok(Err(PublishError::NotConfirmed))
        ));
        assert!(matches!(second.try_recv(), Ok(Ok(()))));
        // A return that matches nothing open changes nothing.
        check(
            &[(1, SAME)],
            &[Confirm::Returned(SAME + 1), ack(1, false)],
            &[(1, "ok")],
        );
    }

    #[test]
    fn a_return_is_read_with_its_header_and_body() {
        use amq_protocol::frame::AMQPContentHeader;

        let mut reader = ConfirmReader::default();
        let mut confirms = Vec::new();
        let properties = Properties {
            message_id: Some("m1".into()),
            ..Properties::default()
        };
        let frames = [
            AMQPFrame::Method(
                CHANNEL,
                AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                    reply_code: 312,
                    reply_text: ShortString::from("NO_ROUTE"),
                    exchange: ShortString::from("ns.events"),
                    routing_key: ShortString::from("nowhere"),
                })),
            ),
            AMQPFrame::Header(
                CHANNEL,
                AMQPContentHeader {
                    class_id: 60,
                    body_size: 5,
                    properties: crate::rabbit::to_amqp(&properties),
                },
            ),
            AMQPFrame::Body(CHANNEL, b"ab".to_vec()),
            AMQPFrame::Body(CHANNEL, b"cde".to_vec()),
            AMQPFrame::Method(
                CHANNEL,
                AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: 9,
                    multiple: true,
                })),
            ),
        ];
        for frame in frames {
            reader.on_frame(frame, &mut confirms).unwrap();
        }
        let returned = fingerprint("ns.events", "nowhere", Some("m1"), 5);
        assert_eq!(confirms, [Confirm::Returned(returned), ack(9, true)]);
        // A body with no return before it is a protocol violation.
        let stray = reader.on_frame(AMQPFrame::Body(CHANNEL, b"x".to_vec()), &mut confirms);
        assert!(matches!(stray, Err(LinkFailure::Protocol(_))), "{stray:?}");
    }

    #[test]
    fn over_long_short_strings_are_refused() {
        let properties = Properties {
            message_id: Some("x".repeat(256)),
            ..Properties::default()
        };
        let mut out = Vec::new();
        assert!(encode_content_header(&mut out, &properties, 0).is_err());
        let mut out = Vec::new();
        let long = "e".repeat(256);
        assert!(encode_publish(&mut out, &long, "k", &Properties::default(), b"", 100).is_err());
    }
}

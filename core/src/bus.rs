//! The event bus (docs/contract.md §1): publish with confirm, consume with ack/nack, as a trait with
//! a RabbitMQ implementation ([`crate::rabbit::RabbitBus`]) and an in-memory one with the same
//! semantics ([`crate::memory_bus::MemoryBus`], for `wxgate dev`).
//!
//! Delayed retry and dead-lettering are expressed with plain queues of the topology
//! ([`crate::topology`]): publishing to `""` with a queue name as routing key puts a message
//! straight into that queue.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A header value. AMQP tables carry more types; wxgate only writes these two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// A UTF-8 string.
    Str(String),
    /// A signed integer.
    Int(i64),
}

/// The AMQP properties wxgate sets and reads (docs/contract.md §1.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// `message_id`: the event id.
    pub message_id: Option<String>,
    /// `timestamp`, Unix seconds.
    pub timestamp_s: Option<u64>,
    /// `content_type`.
    pub content_type: Option<String>,
    /// `type`.
    pub kind: Option<String>,
    /// Application headers, in order.
    pub headers: Vec<(String, HeaderValue)>,
}

impl Properties {
    /// The header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&HeaderValue> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The header `name` as an integer, if present and numeric.
    pub fn header_int(&self, name: &str) -> Option<i64> {
        match self.header(name)? {
            HeaderValue::Int(i) => Some(*i),
            HeaderValue::Str(s) => s.parse().ok(),
        }
    }

    /// Sets (replaces) header `name`.
    pub fn set_header(&mut self, name: &str, value: HeaderValue) {
        self.headers.retain(|(k, _)| k != name);
        self.headers.push((name.to_owned(), value));
    }
}

/// A message to publish or a delivered one. Published messages are always persistent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The body (a protobuf `wxgate.v1.Event` for events).
    pub body: Bytes,
    /// Its properties.
    pub properties: Properties,
}

/// The underlying cause of a bus failure, shared: one broken connection fails every publish
/// it carried.
pub type Cause = std::sync::Arc<dyn std::error::Error + Send + Sync>;

/// Why a publish did not end in a broker confirm. Every variant but
/// [`PublishError::Unroutable`] means the message's fate is unknown or negative: the caller
/// must not report it accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// No connection to the broker right now.
    #[error("broker is not connected")]
    Unavailable,
    /// The broker refused the message (nack).
    #[error("broker did not confirm the message")]
    NotConfirmed,
    /// No queue is bound for the routing key (mandatory publish came back).
    #[error("message is unroutable")]
    Unroutable,
    /// The broker stopped reading (a memory or disk alarm) and the publish buffer is full.
    #[error("broker is not reading; publish buffer full")]
    Backlogged,
    /// The message cannot be sent as given: a name or property over AMQP's limits.
    #[error("message cannot be encoded")]
    Encode(#[source] Cause),
    /// The connection or channel failed before the broker's answer; the bus reconnects.
    #[error("connection to the broker failed during the publish")]
    Connection(#[source] Cause),
}

/// A failure to set up a consumer, settle a delivery or declare something.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// No connection to the broker right now.
    #[error("broker is not connected")]
    Unavailable,
    /// The broker did not answer `operation` within its deadline.
    #[error("broker did not answer {operation} in time")]
    Timeout {
        /// The AMQP operation (`basic.ack`, `queue.declare`, …).
        operation: &'static str,
    },
    /// The broker refused the operation or the connection failed while it ran.
    #[error("broker operation {operation} failed")]
    Failed {
        /// The AMQP operation.
        operation: &'static str,
        /// The client library's error.
        #[source]
        source: Cause,
    },
}

/// Settles one delivery. Implemented per bus.
#[async_trait]
pub trait Acker: Send + Sync {
    /// Acknowledges: the broker forgets the message.
    async fn ack(&self) -> Result<(), BusError>;
    /// Negative-acknowledges; `requeue` puts it back in its queue.
    async fn nack(&self, requeue: bool) -> Result<(), BusError>;
}

/// One message handed to a consumer. Dropping it unsettled leaves it with the broker, which
/// redelivers it when the consumer's channel closes.
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Whether the broker delivered it before (the previous consumer did not settle it).
    pub redelivered: bool,
    acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("routing_key", &self.routing_key)
            .field("redelivered", &self.redelivered)
            .field("message_id", &self.message.properties.message_id)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Builds a delivery; for bus implementations.
    pub fn new(
        message: Message,
        routing_key: String,
        redelivered: bool,
        acker: Box<dyn Acker>,
    ) -> Self {
        Self {
            message,
            routing_key,
            redelivered,
            acker,
        }
    }

    /// Acknowledges the delivery.
    pub async fn ack(self) -> Result<(), BusError> {
        self.acker.ack().await
    }

    /// Rejects the delivery; `requeue` puts it back in its queue.
    pub async fn nack(self, requeue: bool) -> Result<(), BusError> {
        self.acker.nack(requeue).await
    }
}

/// A stream of deliveries from one queue that survives broker reconnects.
///
/// `recv` is cancel safe. After [`DeliveryStream::stop`], no new deliveries are taken from
/// the broker; those already buffered are still returned by `recv` (settle or drop them).
pub struct DeliveryStream {
    receiver: mpsc::Receiver<Delivery>,
    stop: CancellationToken,
}

impl DeliveryStream {
    /// Builds a stream; for bus implementations. `stop` is cancelled by [`Self::stop`].
    pub fn new(receiver: mpsc::Receiver<Delivery>, stop: CancellationToken) -> Self {
        Self { receiver, stop }
    }

    /// The next delivery; `None` once stopped and drained.
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.receiver.recv().await
    }

    /// A buffered delivery, without waiting.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        self.receiver.try_recv().ok()
    }

    /// Stops consuming (AMQP `basic.cancel`); buffered deliveries remain readable.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for DeliveryStream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What [`Bus::sweep`] does with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Leave it in the queue.
    Keep,
    /// Remove it.
    Remove,
    /// Publish `message` straight to queue `queue` (confirmed), then remove the original.
    Move {
        /// The target queue.
        queue: String,
        /// What to publish there.
        message: Message,
    },
}

/// Decides what [`Bus::sweep`] does with each message; implemented for every
/// `FnMut(&Message) -> Disposition + Send` closure.
pub trait Decide: Send {
    /// The disposition of `message`.
    fn decide(&mut self, message: &Message) -> Disposition;

    /// Whether the walk may end now (checked before each message is taken); never, for
    /// closures.
    fn done(&self) -> bool {
        false
    }
}

impl<F: FnMut(&Message) -> Disposition + Send> Decide for F {
    fn decide(&mut self, message: &Message) -> Disposition {
        self(message)
    }
}

/// What a [`Bus::sweep`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Messages looked at.
    pub scanned: usize,
    /// Messages removed (including moved ones).
    pub removed: usize,
    /// Messages moved.
    pub moved: usize,
    /// Messages that were in the queue when the walk began and were not looked at.
    pub behind: u64,
}

/// A consumer group's queue as [`Bus::declare_group`] declares it (docs/contract.md §1.2,
/// §1.5): durable, bound to the events exchange with `bindings`, bounded by `max_length` and
/// `message_ttl` with the oldest events dropped first, and every dropped event dead-lettered
/// to `dead_letter_exchange` (so it can be counted; nothing is dropped silently).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    /// The queue, `{ns}.group.{group}`.
    pub queue: String,
    /// Routing-key patterns bound from the events exchange (topic syntax: `*`, `#`).
    pub bindings: Vec<String>,
    /// At most this many messages wait; when full, the oldest is dropped (`drop-head`).
    pub max_length: u64,
    /// Messages older than this are dropped. Whole milliseconds count.
    pub message_ttl: Duration,
    /// Where dropped, expired and rejected (`nack` without requeue) messages go, with the
    /// header `x-first-death-reason` (`maxlen`, `expired`, `rejected`) and
    /// `x-first-death-queue` (this queue).
    pub dead_letter_exchange: String,
    /// The queue type (`quorum` or `classic`; `rabbitmq.queue_type`). An in-memory bus may
    /// ignore it.
    pub queue_type: String,
}

/// What a group's queue holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupStats {
    /// Messages ready for delivery (not counting those delivered and not yet settled).
    pub depth: u64,
    /// Consumers attached, across every process.
    pub consumers: u32,
}

/// Why a group operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The queue exists with other arguments than the spec (RabbitMQ cannot change a queue's
    /// arguments): delete the group first. Not retryable.
    #[error("queue `{queue}` exists with a different `{argument}`")]
    Mismatch {
        /// The queue.
        queue: String,
        /// The argument that differs, as the broker names it (`x-max-length`, …), or `unknown`.
        argument: String,
    },
    /// The broker failed or did not answer in time.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// The bus operations.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes `message` to `exchange` with `routing_key` (mandatory, persistent) and waits
    /// for the broker's confirm. Not bounded in time: wrap it in a timeout. Cancel safe in
    /// the sense that dropping it leaves the broker's outcome unknown, never half a message.
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Message,
    ) -> Result<(), PublishError>;

    /// Starts consuming `queue` with `prefetch` unacknowledged deliveries at most; keeps
    /// consuming across reconnects until the stream is stopped or dropped.
    async fn consume(&self, queue: &str, prefetch: u16) -> Result<DeliveryStream, BusError>;

    /// Declares a consumer group's queue per `spec` and makes its bindings exactly
    /// `spec.bindings`: binds each of them and unbinds each of `unbind` that is not among
    /// them (the caller knows which keys it bound before; the broker cannot list them
    /// cheaply). Idempotent: declaring the same spec again changes nothing. A queue that
    /// exists with other arguments (retention, queue type) is [`GroupError::Mismatch`] and
    /// is left as it was. Each broker operation is bounded by the bus's deadline.
    async fn declare_group(&self, spec: &GroupSpec, unbind: &[String]) -> Result<(), GroupError>;

    /// Deletes a group's queue with the messages in it (its consumers are cancelled);
    /// returns how many messages it held. A queue that does not exist is `Ok(0)`.
    async fn delete_group(&self, queue: &str) -> Result<u64, GroupError>;

    /// The depth and consumer count of a group's queue; `None` when it does not exist.
    async fn group_stats(&self, queue: &str) -> Result<Option<GroupStats>, GroupError>;

    /// Whether the bus is connected and the topology is declared.
    fn is_ready(&self) -> bool;

    /// Walks `queue` from its head, at most `max` messages and never past those it held when
    /// the walk began, asking `decide` about each: [`Disposition::Keep`] puts a copy at the
    /// queue's tail (confirmed) and removes the original, [`Disposition::Remove`] removes it,
    /// [`Disposition::Move`] publishes a new message to another queue (confirmed) and only
    /// then removes the original. Keeping by re-publishing, not by returning the message,
    /// means a walk never counts as a delivery (brokers that limit deliveries would drop a
    /// message listed often enough), at the cost of the queue's order. A walk that fails or
    /// is interrupted leaves every message it had not settled in the queue, so a message may
    /// end up twice (kept or moved, and still there) but never nowhere. Other consumers of the
    /// queue do not see the message under inspection until it is settled. Bounded: every
    /// broker operation has a deadline.
    async fn sweep(
        &self,
        queue: &str,
        max: usize,
        decide: &mut dyn Decide,
    ) -> Result<Swept, BusError>;

    /// Waits up to `deadline` for [`Bus::is_ready`]; true when ready.
    async fn wait_ready(&self, deadline: Duration) -> bool {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            if self.is_ready() {
                return true;
            }
            if tokio::time::Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

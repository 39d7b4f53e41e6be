//! RabbitMQ implementation of [`Bus`]: one connection, a few confirm-mode channels with many
//! publishes in flight on each, and a supervisor task that reconnects and re-declares the
//! topology whenever the connection is lost.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::amqp::{ConnectError, Publisher};
use crate::bus::{
    Acker, Bus, BusError, Decide, Delivery, DeliveryStream, Disposition, GroupError, GroupSpec,
    GroupStats, HeaderValue, Message, Properties, PublishError, Swept,
};
use crate::topology::{Arg, Topology};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};

/// Publisher channels per connection. Each carries many publishes in flight; a few spread
/// the broker-side work of confirms.
const PUBLISH_CHANNELS: usize = 4;
/// How long a stopped consumer keeps its channel open for deliveries still being settled.
const SETTLE_AFTER_STOP: Duration = Duration::from_secs(60);
/// Deadline on every AMQP operation the bus waits for other than a publish's confirm (which
/// its caller bounds): connect, channel open/close, declare, qos, consume, cancel, ack, nack.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// The broker refused to declare part of the topology because it already exists with other
/// arguments (AMQP `PRECONDITION_FAILED`), e.g. `{ns}.worker` declared as a classic queue
/// while `rabbitmq.queue_type` says quorum. A configuration error: retrying cannot fix it.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{kind} `{name}` already exists with a different `{argument}` than this configuration \
     declares ({reply}); delete the {kind} or change the configuration to match it"
)]
pub struct TopologyMismatch {
    /// `queue` or `exchange`.
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// The argument that differs (`x-queue-type`, `x-message-ttl`, `type`, `durable`, …), as
    /// the broker names it; `unknown` when its reply does not say.
    pub argument: String,
    /// The broker's reply text.
    pub reply: String,
}

impl TopologyMismatch {
    /// `Some` when `error` is the broker's `PRECONDITION_FAILED` answer to declaring `name`.
    fn from_declare(kind: &'static str, name: &str, error: &lapin::Error) -> Option<Self> {
        let lapin::ErrorKind::ProtocolError(amqp) = error.kind() else {
            return None;
        };
        if !matches!(
            amqp.kind(),
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
        ) {
            return None;
        }
        let reply = amqp.get_message().to_string();
        Some(Self {
            kind,
            name: name.to_owned(),
            argument: inequivalent_arg(&reply).unwrap_or("unknown").to_owned(),
            reply,
        })
    }
}

/// The argument RabbitMQ names in "inequivalent arg 'x-queue-type' for queue …".
fn inequivalent_arg(reply: &str) -> Option<&str> {
    let rest = reply.split_once("inequivalent arg '")?.1;
    Some(rest.split_once('\'')?.0)
}

/// Watches a bus for [`RabbitBus::gave_up`]; see [`RabbitBus::stop_on_give_up`].
pub struct GiveUpWatch {
    bus: RabbitBus,
    task: tokio::task::JoinHandle<()>,
}

impl GiveUpWatch {
    /// Ends the watch: the mismatch if the bus gave up, else `None`. Reads the bus itself,
    /// so a give-up is reported even when the watch task has not finished yet.
    pub async fn finish(self) -> Option<TopologyMismatch> {
        self.task.abort();
        self.bus.mismatch()
    }
}

/// Why a declare failed.
#[derive(Debug, thiserror::Error)]
pub enum DeclareError {
    /// Something exists with other arguments: fatal, see [`TopologyMismatch`].
    #[error(transparent)]
    Mismatch(#[from] TopologyMismatch),
    /// The broker failed or did not answer; worth retrying.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
enum EstablishError {
    #[error("cannot connect to the broker")]
    Connect(#[source] BusError),
    #[error("cannot declare the topology")]
    Declare(#[source] DeclareError),
    #[error("cannot connect the publisher")]
    Publisher(#[source] ConnectError),
    #[error("cannot open a publish channel")]
    Channel(#[source] BusError),
}

/// Runs one AMQP operation under [`OPERATION_TIMEOUT`].
async fn bounded<T>(
    operation: &'static str,
    future: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, BusError> {
    match tokio::time::timeout(OPERATION_TIMEOUT, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(failed(operation, e)),
        Err(_) => Err(BusError::Timeout { operation }),
    }
}

fn failed(operation: &'static str, error: lapin::Error) -> BusError {
    BusError::Failed {
        operation,
        source: Arc::new(error),
    }
}

/// RabbitMQ bus. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct RabbitBus {
    shared: Arc<Shared>,
}

struct Shared {
    live: RwLock<Option<Arc<Live>>>,
    ready: AtomicBool,
    /// Index (into the URLs) of the node of the live connection; `usize::MAX` when none.
    node: AtomicUsize,
    /// Since when every publish on the live connection has been nacked (none acked since).
    nacked_since: Mutex<Option<Instant>>,
    /// Set by a publish that found the connection refusing everything for [`NACK_STREAK`]:
    /// the supervisor reconnects (to the next node).
    reconnect: AtomicBool,
    /// Set by [`RabbitBus::close`]: the supervisor stops instead of reconnecting.
    closing: AtomicBool,
    /// Woken when a publish sees a broken channel, so the supervisor reconnects at once.
    broken: Notify,
    /// Woken when a new connection is live, for consumers waiting to resubscribe.
    connected: Notify,
    shutdown: CancellationToken,
    /// Set when the broker refused the topology; the supervisor has stopped.
    mismatch: Mutex<Option<TopologyMismatch>>,
    /// Cancelled together with setting `mismatch`.
    gave_up: CancellationToken,
}

struct Live {
    connection: Connection,
    /// The lean publisher ([`crate::amqp`]); `None` for `amqps://`, where lapin's confirm
    /// channels below publish instead.
    publisher: Option<Publisher>,
    channels: Vec<Channel>,
    next: AtomicUsize,
    /// The events exchange, `{ns}.events`, that group queues are bound to.
    exchange: String,
}

impl Live {
    fn healthy(&self) -> bool {
        self.connection.status().connected()
            && self.channels.iter().all(|c| c.status().connected())
            && self.publisher.as_ref().is_none_or(Publisher::is_alive)
    }

    async fn publisher_died(&self) {
        match &self.publisher {
            Some(p) => p.died().await,
            None => std::future::pending().await,
        }
    }
}

impl RabbitBus {
    /// Starts connecting to `url` in the background; every (re)connection declares
    /// `topology` before the bus reports ready. Stops when `shutdown` is cancelled.
    pub fn connect(url: &str, topology: Topology, shutdown: CancellationToken) -> Self {
        Self::connect_any(&[url.to_owned()], topology, shutdown)
    }

    /// [`RabbitBus::connect`] to one of the nodes of a cluster (`rabbitmq.urls`): starts at
    /// a random node, so the processes of a deployment spread over the nodes, and moves on
    /// to the next one whenever a connection attempt fails or a live connection is lost.
    /// Consumers resubscribe on the new connection; declaring the topology again on another
    /// node is idempotent.
    ///
    /// # Panics
    /// When `urls` is empty (the configuration never is).
    pub fn connect_any(urls: &[String], topology: Topology, shutdown: CancellationToken) -> Self {
        assert!(
            !urls.is_empty(),
            "RabbitBus::connect_any needs at least one URL"
        );
        let urls: Vec<String> = urls.iter().map(|url| with_heartbeat(url)).collect();
        let shared = Arc::new(Shared {
            live: RwLock::new(None),
            ready: AtomicBool::new(false),
            node: AtomicUsize::new(usize::MAX),
            nacked_since: Mutex::new(None),
            reconnect: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            broken: Notify::new(),
            connected: Notify::new(),
            shutdown,
            mismatch: Mutex::new(None),
            gave_up: CancellationToken::new(),
        });
        tokio::spawn(supervise(urls, topology, Arc::clone(&shared)));
        Self { shared }
    }

    /// Resolves when the bus has given up for good because the broker refused the topology
    /// ([`TopologyMismatch`]); never resolves otherwise. The binaries exit on it with the
    /// error, since no retry can fix a configuration that disagrees with the broker.
    pub async fn gave_up(&self) -> TopologyMismatch {
        self.shared.gave_up.cancelled().await;
        // The mismatch is stored before `gave_up` is cancelled.
        match self.mismatch() {
            Some(mismatch) => mismatch,
            None => std::future::pending().await,
        }
    }

    /// Cancels `stop` when the bus gives up ([`RabbitBus::gave_up`]), so a process stops as on
    /// a shutdown signal; [`GiveUpWatch::finish`] then says whether that was why.
    pub fn stop_on_give_up(&self, stop: CancellationToken) -> GiveUpWatch {
        let bus = self.clone();
        GiveUpWatch {
            bus: self.clone(),
            task: tokio::spawn(async move {
                bus.gave_up().await;
                stop.cancel();
            }),
        }
    }

    /// Which of the URLs given to [`RabbitBus::connect_any`] the live connection goes to
    /// (0-based); `None` while not connected.
    pub fn node(&self) -> Option<usize> {
        match self.shared.node.load(Ordering::Relaxed) {
            usize::MAX => None,
            node => Some(node),
        }
    }

    /// The mismatch the bus gave up on, if it did.
    pub fn mismatch(&self) -> Option<TopologyMismatch> {
        self.shared
            .mismatch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Keeps the nack streak: a connection whose every publish has been nacked for
    /// [`NACK_STREAK`] is replaced. Seen on RabbitMQ 3.10 with quorum queues: a channel opened
    /// on a surviving node while the queue's leader is being re-elected (its node killed) gets
    /// every publish nacked for as long as that node stays down; a new channel opened after
    /// the election is served. An ack ends the streak.
    fn track_nacks(&self, result: &Result<(), PublishError>) {
        let mut since = lock_unpoisoned(&self.shared.nacked_since);
        match result {
            Err(PublishError::NotConfirmed) => {
                let started = *since.get_or_insert_with(Instant::now);
                if started.elapsed() >= NACK_STREAK {
                    *since = None;
                    self.shared.reconnect.store(true, Ordering::Relaxed);
                    self.shared.broken.notify_one();
                }
            }
            Ok(()) | Err(PublishError::Unroutable) => *since = None,
            Err(_) => {}
        }
    }

    fn live(&self) -> Option<Arc<Live>> {
        self.shared.live.read().ok().and_then(|l| l.clone())
    }

    /// Closes the connection (after in-flight confirms settle or 2 s pass). Use at shutdown,
    /// after the last publish.
    pub async fn close(&self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        self.shared.ready.store(false, Ordering::Relaxed);
        self.shared.node.store(usize::MAX, Ordering::Relaxed);
        let live = self.shared.live.write().ok().and_then(|mut l| l.take());
        if let Some(live) = live {
            if let Some(publisher) = &live.publisher {
                publisher.drain_and_close(Duration::from_secs(2)).await;
            }
            for channel in &live.channels {
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), channel.wait_for_confirms()).await;
            }
            // Best effort at shutdown: the broker settles a vanished connection by itself.
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                live.connection.close(200, ShortString::from("shutdown")),
            )
            .await;
        }
    }
}

/// How long every publish on a connection may be nacked before it is replaced (see
/// [`RabbitBus::track_nacks`]).
const NACK_STREAK: Duration = Duration::from_secs(1);

fn lock_unpoisoned<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Heartbeat asked for when the URL names none. A silent connection (a partition with TCP
/// still open) is only noticed through missed heartbeats; the server's default of 60 s kept a
/// dead broker "ready" for two minutes.
const HEARTBEAT_S: u16 = 5;

fn with_heartbeat(url: &str) -> String {
    if url.contains("heartbeat=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&heartbeat={HEARTBEAT_S}")
    } else {
        format!("{url}?heartbeat={HEARTBEAT_S}")
    }
}

async fn supervise(urls: Vec<String>, topology: Topology, shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(100);
    let mut failed_in_row = 0_usize;
    let mut node = if urls.len() > 1 {
        rand::random_range(0..urls.len())
    } else {
        0
    };
    loop {
        if shared.shutdown.is_cancelled() || shared.closing.load(Ordering::Relaxed) {
            return;
        }
        let url = &urls[node];
        // Whatever happens next, the following attempt goes to the next node.
        let this_node = node;
        node = (node + 1) % urls.len();
        match establish(url, &topology, &shared.shutdown).await {
            Ok(live) => {
                backoff = Duration::from_millis(100);
                failed_in_row = 0;
                let live = Arc::new(live);
                if let Ok(mut slot) = shared.live.write() {
                    *slot = Some(Arc::clone(&live));
                }
                shared.node.store(this_node, Ordering::Relaxed);
                *lock_unpoisoned(&shared.nacked_since) = None;
                shared.ready.store(true, Ordering::Relaxed);
                shared.connected.notify_waiters();
                tracing::info!(
                    node = this_node + 1,
                    nodes = urls.len(),
                    "rabbitmq connected; topology declared"
                );
                loop {
                    tokio::select! {
                        () = shared.shutdown.cancelled() => return,
                        () = shared.broken.notified() => {}
                        () = live.publisher_died() => {}
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                    if shared.closing.load(Ordering::Relaxed) {
                        // `close` owns the connection from here.
                        return;
                    }
                    if shared.reconnect.swap(false, Ordering::Relaxed) {
                        tracing::warn!(
                            node = this_node + 1,
                            nodes = urls.len(),
                            "rabbitmq nacks every publish on this connection; reconnecting"
                        );
                        break;
                    }
                    if !live.healthy() {
                        break;
                    }
                }
                shared.ready.store(false, Ordering::Relaxed);
                shared.node.store(usize::MAX, Ordering::Relaxed);
                if let Ok(mut slot) = shared.live.write() {
                    *slot = None;
                }
                tracing::warn!(
                    node = this_node + 1,
                    nodes = urls.len(),
                    "rabbitmq connection lost; reconnecting"
                );
                if let Some(publisher) = &live.publisher {
                    publisher.close();
                }
                let _ = tokio::time::timeout(
                    Duration::from_millis(500),
                    live.connection
                        .close(320, ShortString::from("reconnecting")),
                )
                .await;
            }
            Err(EstablishError::Declare(DeclareError::Mismatch(mismatch))) => {
                tracing::error!(
                    kind = mismatch.kind,
                    name = %mismatch.name,
                    argument = %mismatch.argument,
                    reply = %mismatch.reply,
                    "rabbitmq refused the topology: an existing {} has other arguments; giving up",
                    mismatch.kind
                );
                *shared
                    .mismatch
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(mismatch);
                shared.gave_up.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(
                    node = this_node + 1,
                    nodes = urls.len(),
                    error = %crate::ErrorChain(&e),
                    "rabbitmq connect failed; retrying"
                );
                failed_in_row += 1;
                if !failed_in_row.is_multiple_of(urls.len()) {
                    // Other nodes not tried yet this round: no reason to wait.
                    continue;
                }
            }
        }
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn establish(
    url: &str,
    topology: &Topology,
    shutdown: &CancellationToken,
) -> Result<Live, EstablishError> {
    let connection = bounded(
        "connection.open",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .map_err(EstablishError::Connect)?;
    let setup = bounded("channel.open", connection.create_channel())
        .await
        .map_err(EstablishError::Connect)?;
    declare(&setup, topology)
        .await
        .map_err(EstablishError::Declare)?;
    // The channel was only for declaring; a failed close changes nothing.
    let _ = bounded(
        "channel.close",
        setup.close(200, ShortString::from("declared")),
    )
    .await;
    let publisher = match Publisher::connect(url, shutdown.child_token()).await {
        Ok(publisher) => Some(publisher),
        Err(ConnectError::Tls) => None,
        Err(e) => return Err(EstablishError::Publisher(e)),
    };
    let lapin_channels = if publisher.is_some() {
        0
    } else {
        PUBLISH_CHANNELS
    };
    let mut channels = Vec::with_capacity(lapin_channels);
    for _ in 0..lapin_channels {
        let channel = bounded("channel.open", connection.create_channel())
            .await
            .map_err(EstablishError::Channel)?;
        bounded(
            "confirm.select",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await
        .map_err(EstablishError::Channel)?;
        channels.push(channel);
    }
    Ok(Live {
        connection,
        publisher,
        channels,
        next: AtomicUsize::new(0),
        exchange: topology.exchange.clone(),
    })
}

/// Declares the exchange, the queues and their bindings (idempotent: same arguments every
/// time, so every process can do it at start). Each step is bounded by a deadline; a
/// declare the broker refuses because the exchange or a queue exists with other arguments
/// is a [`DeclareError::Mismatch`]. After one, the channel is closed by the broker.
pub async fn declare(channel: &Channel, topology: &Topology) -> Result<(), DeclareError> {
    let exchange = topology.exchange.as_str();
    declare_exchange(channel, exchange, ExchangeKind::Topic).await?;
    for queue in &topology.queues {
        declare_queue(channel, &queue.name, &queue.args)
            .await
            .map_err(|e| mismatch_or("queue", &queue.name, e))?;
        for key in &queue.bindings {
            bind(channel, &queue.name, exchange, key).await?;
        }
    }
    for fanout in &topology.fanouts {
        let exchange = fanout.exchange.as_str();
        declare_exchange(channel, exchange, ExchangeKind::Fanout).await?;
        let queue = &fanout.queue;
        declare_queue(channel, &queue.name, &queue.args)
            .await
            .map_err(|e| mismatch_or("queue", &queue.name, e))?;
        bind(channel, &queue.name, exchange, "").await?;
    }
    Ok(())
}

/// Declares durable exchange `name` of `kind`, under the operation deadline; other
/// arguments on the broker are a [`DeclareError::Mismatch`].
async fn declare_exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
) -> Result<(), DeclareError> {
    bounded(
        "exchange.declare",
        channel.exchange_declare(
            ShortString::from(name),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .map_err(|e| mismatch_or("exchange", name, e))
}

/// Binds `queue` to `exchange` with routing key `key`, under the operation deadline.
async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str) -> Result<(), BusError> {
    bounded(
        "queue.bind",
        channel.queue_bind(
            ShortString::from(queue),
            ShortString::from(exchange),
            ShortString::from(key),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
}

/// Declares durable queue `name` with `args`, under the operation deadline.
async fn declare_queue(channel: &Channel, name: &str, args: &[Arg]) -> Result<(), BusError> {
    let mut table = FieldTable::default();
    for arg in args {
        match arg {
            Arg::Str(k, v) => table.insert(
                ShortString::from(*k),
                AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())),
            ),
            Arg::Int(k, v) => table.insert(ShortString::from(*k), AMQPValue::LongLongInt(*v)),
        };
    }
    bounded(
        "queue.declare",
        channel.queue_declare(
            ShortString::from(name),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            table,
        ),
    )
    .await
    .map(|_| ())
}

/// The declaration arguments of a group's queue (docs/contract.md §1.2).
fn group_args(spec: &GroupSpec) -> Vec<Arg> {
    vec![
        Arg::Str("x-queue-type", spec.queue_type.clone()),
        Arg::Int(
            "x-max-length",
            i64::try_from(spec.max_length).unwrap_or(i64::MAX),
        ),
        Arg::Int(
            "x-message-ttl",
            i64::try_from(spec.message_ttl.as_millis()).unwrap_or(i64::MAX),
        ),
        Arg::Str("x-overflow", "drop-head".to_owned()),
        Arg::Str("x-dead-letter-exchange", spec.dead_letter_exchange.clone()),
    ]
}

/// Whether `error` is the broker's `NOT_FOUND` (a passive declare or delete of a queue that
/// does not exist).
fn is_not_found(error: &BusError) -> bool {
    let BusError::Failed { source, .. } = error else {
        return false;
    };
    let Some(lapin_error) = source.downcast_ref::<lapin::Error>() else {
        return false;
    };
    matches!(
        lapin_error.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
    )
}

/// A [`TopologyMismatch`] when the broker said `PRECONDITION_FAILED` to declaring `name`, else
/// the failure as it was.
fn mismatch_or(kind: &'static str, name: &str, error: BusError) -> DeclareError {
    if let BusError::Failed { source, .. } = &error
        && let Some(lapin_error) = source.downcast_ref::<lapin::Error>()
        && let Some(mismatch) = TopologyMismatch::from_declare(kind, name, lapin_error)
    {
        return mismatch.into();
    }
    error.into()
}

/// The AMQP properties of a message as lapin takes them: persistent (`delivery-mode` 2), plus
/// what `properties` sets.
pub fn to_amqp(properties: &Properties) -> BasicProperties {
    let mut p = BasicProperties::default().with_delivery_mode(2);
    if let Some(id) = &properties.message_id {
        p = p.with_message_id(ShortString::from(id.as_str()));
    }
    if let Some(ts) = properties.timestamp_s {
        p = p.with_timestamp(ts);
    }
    if let Some(ct) = &properties.content_type {
        p = p.with_content_type(ShortString::from(ct.as_str()));
    }
    if let Some(kind) = &properties.kind {
        p = p.with_type(ShortString::from(kind.as_str()));
    }
    if !properties.headers.is_empty() {
        let mut table = FieldTable::default();
        for (k, v) in &properties.headers {
            let value = match v {
                HeaderValue::Str(s) => {
                    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
                }
                HeaderValue::Int(i) => AMQPValue::LongLongInt(*i),
            };
            table.insert(ShortString::from(k.as_str()), value);
        }
        p = p.with_headers(table);
    }
    p
}

fn from_amqp(p: &BasicProperties) -> Properties {
    let headers = p
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .filter_map(|(k, v)| {
                    let value = match v {
                        AMQPValue::LongString(s) => {
                            HeaderValue::Str(String::from_utf8_lossy(s.as_bytes()).into_owned())
                        }
                        AMQPValue::ShortString(s) => HeaderValue::Str(s.as_str().to_owned()),
                        AMQPValue::LongLongInt(i) => HeaderValue::Int(*i),
                        AMQPValue::LongInt(i) => HeaderValue::Int(i64::from(*i)),
                        AMQPValue::LongUInt(i) => HeaderValue::Int(i64::from(*i)),
                        AMQPValue::ShortInt(i) => HeaderValue::Int(i64::from(*i)),
                        AMQPValue::ShortUInt(i) => HeaderValue::Int(i64::from(*i)),
                        AMQPValue::ShortShortInt(i) => HeaderValue::Int(i64::from(*i)),
                        AMQPValue::ShortShortUInt(i) => HeaderValue::Int(i64::from(*i)),
                        _ => return None,
                    };
                    Some((k.as_str().to_owned(), value))
                })
                .collect()
        })
        .unwrap_or_default();
    Properties {
        message_id: p.message_id().as_ref().map(|s| s.as_str().to_owned()),
        timestamp_s: *p.timestamp(),
        content_type: p.content_type().as_ref().map(|s| s.as_str().to_owned()),
        kind: p.kind().as_ref().map(|s| s.as_str().to_owned()),
        headers,
    }
}

struct RabbitAcker(lapin::Acker);

#[async_trait]
impl Acker for RabbitAcker {
    async fn ack(&self) -> Result<(), BusError> {
        bounded("basic.ack", self.0.ack(BasicAckOptions::default()))
            .await
            .map(|_| ())
    }

    async fn nack(&self, requeue: bool) -> Result<(), BusError> {
        bounded(
            "basic.nack",
            self.0.nack(BasicNackOptions {
                requeue,
                ..BasicNackOptions::default()
            }),
        )
        .await
        .map(|_| ())
    }
}

#[async_trait]
impl Bus for RabbitBus {
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Message,
    ) -> Result<(), PublishError> {
        let live = self.live().ok_or(PublishError::Unavailable)?;
        if let Some(publisher) = &live.publisher {
            let result = publisher
                .publish(exchange, routing_key, &message.properties, &message.body)
                .await;
            if matches!(result, Err(PublishError::Connection(_))) {
                self.shared.broken.notify_one();
            }
            self.track_nacks(&result);
            return result;
        }
        let i = live.next.fetch_add(1, Ordering::Relaxed) % live.channels.len().max(1);
        let channel = live.channels.get(i).ok_or(PublishError::Unavailable)?;
        let broken = |e: lapin::Error| {
            self.shared.broken.notify_one();
            PublishError::Connection(Arc::new(e))
        };
        let confirm = channel
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &message.body,
                to_amqp(&message.properties),
            )
            .await
            .map_err(broken)?
            .await
            .map_err(broken)?;
        let result = match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable),
            Confirmation::Nack(_) | Confirmation::NotRequested => Err(PublishError::NotConfirmed),
        };
        self.track_nacks(&result);
        result
    }

    async fn consume(&self, queue: &str, prefetch: u16) -> Result<DeliveryStream, BusError> {
        let (sender, receiver) = mpsc::channel(usize::from(prefetch).max(1));
        let stop = self.shared.shutdown.child_token();
        tokio::spawn(consume_loop(
            self.clone(),
            queue.to_owned(),
            prefetch,
            sender,
            stop.clone(),
        ));
        Ok(DeliveryStream::new(receiver, stop))
    }

    async fn declare_group(&self, spec: &GroupSpec, unbind: &[String]) -> Result<(), GroupError> {
        let (live, channel) = self.operation_channel().await?;
        let result = declare_group_on(&channel, &live.exchange, spec, unbind).await;
        close_operation_channel(&channel).await;
        result
    }

    async fn delete_group(&self, queue: &str) -> Result<u64, GroupError> {
        let (_live, channel) = self.operation_channel().await?;
        let result = bounded(
            "queue.delete",
            channel.queue_delete(ShortString::from(queue), QueueDeleteOptions::default()),
        )
        .await;
        close_operation_channel(&channel).await;
        match result {
            Ok(count) => Ok(u64::from(count)),
            Err(e) if is_not_found(&e) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    async fn group_stats(&self, queue: &str) -> Result<Option<GroupStats>, GroupError> {
        let (_live, channel) = self.operation_channel().await?;
        let result = bounded(
            "queue.declare",
            channel.queue_declare(
                ShortString::from(queue),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await;
        close_operation_channel(&channel).await;
        match result {
            Ok(found) => Ok(Some(GroupStats {
                depth: u64::from(found.message_count()),
                consumers: found.consumer_count(),
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Relaxed)
    }

    async fn sweep(
        &self,
        queue: &str,
        max: usize,
        decide: &mut dyn Decide,
    ) -> Result<Swept, BusError> {
        let live = self.live().ok_or(BusError::Unavailable)?;
        // A channel of its own: whatever it took and did not settle (a failed walk) returns
        // to the queue when it closes.
        let channel = bounded("channel.open", live.connection.create_channel()).await?;
        let result = sweep_on(self, &channel, queue, max, decide).await;
        let _ = bounded(
            "channel.close",
            channel.close(200, ShortString::from("sweep done")),
        )
        .await;
        result
    }
}

async fn sweep_on(
    bus: &RabbitBus,
    channel: &Channel,
    queue: &str,
    max: usize,
    decide: &mut dyn Decide,
) -> Result<Swept, BusError> {
    let mut swept = Swept::default();
    // The messages in the queue when the walk began: kept ones go to its tail, so the walk
    // stops before it would meet them again.
    let mut total: Option<usize> = None;
    while swept.scanned < total.map_or(max, |t| t.min(max)) && !decide.done() {
        let got = bounded(
            "basic.get",
            channel.basic_get(ShortString::from(queue), BasicGetOptions { no_ack: false }),
        )
        .await?;
        let Some(got) = got else { break };
        let total = *total.get_or_insert(got.message_count as usize + 1);
        swept.scanned += 1;
        swept.behind = (total - swept.scanned) as u64;
        let delivery = got.delivery;
        let message = Message {
            body: Bytes::from(delivery.data),
            properties: from_amqp(&delivery.properties),
        };
        match decide.decide(&message) {
            Disposition::Keep => {
                // A copy to the tail, confirmed, then the original acked: a message taken and
                // returned counts as a delivery where the broker limits those (quorum
                // queues' delivery-limit, 20 by default on RabbitMQ 4), and enough listings
                // would make it drop the message.
                confirmed_publish(bus, queue, &message).await?;
                bounded("basic.ack", delivery.acker.ack(BasicAckOptions::default())).await?;
            }
            Disposition::Remove => {
                bounded("basic.ack", delivery.acker.ack(BasicAckOptions::default())).await?;
                swept.removed += 1;
            }
            Disposition::Move {
                queue: target,
                message,
            } => {
                confirmed_publish(bus, &target, &message).await?;
                bounded("basic.ack", delivery.acker.ack(BasicAckOptions::default())).await?;
                swept.removed += 1;
                swept.moved += 1;
            }
        }
    }
    Ok(swept)
}

/// Publishes `message` straight to `queue` and waits (within [`OPERATION_TIMEOUT`]) for the
/// broker's confirm.
async fn confirmed_publish(
    bus: &RabbitBus,
    queue: &str,
    message: &Message,
) -> Result<(), BusError> {
    match tokio::time::timeout(OPERATION_TIMEOUT, bus.publish("", queue, message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(BusError::Failed {
            operation: "publish",
            source: Arc::new(e),
        }),
        Err(_) => Err(BusError::Timeout {
            operation: "publish",
        }),
    }
}

impl RabbitBus {
    /// A fresh channel for one management operation: a refused operation closes its channel,
    /// so none is shared.
    async fn operation_channel(&self) -> Result<(Arc<Live>, Channel), BusError> {
        let live = self.live().ok_or(BusError::Unavailable)?;
        let channel = bounded("channel.open", live.connection.create_channel()).await?;
        Ok((live, channel))
    }
}

/// Closes a management channel; the broker may have closed it already after a refusal.
async fn close_operation_channel(channel: &Channel) {
    if channel.status().connected() {
        let _ = bounded(
            "channel.close",
            channel.close(200, ShortString::from("done")),
        )
        .await;
    }
}

async fn declare_group_on(
    channel: &Channel,
    exchange: &str,
    spec: &GroupSpec,
    unbind: &[String],
) -> Result<(), GroupError> {
    declare_queue(channel, &spec.queue, &group_args(spec))
        .await
        .map_err(|e| match mismatch_or("queue", &spec.queue, e) {
            DeclareError::Mismatch(m) => GroupError::Mismatch {
                queue: m.name,
                argument: m.argument,
            },
            DeclareError::Bus(e) => GroupError::Bus(e),
        })?;
    for key in &spec.bindings {
        bind(channel, &spec.queue, exchange, key).await?;
    }
    for key in unbind.iter().filter(|key| !spec.bindings.contains(key)) {
        // Unbinding a key that is not bound is a no-op for the broker.
        bounded(
            "queue.unbind",
            channel.queue_unbind(
                ShortString::from(spec.queue.as_str()),
                ShortString::from(exchange),
                ShortString::from(key.as_str()),
                FieldTable::default(),
            ),
        )
        .await?;
    }
    Ok(())
}

async fn consume_loop(
    bus: RabbitBus,
    queue: String,
    prefetch: u16,
    sender: mpsc::Sender<Delivery>,
    stop: CancellationToken,
) {
    use futures_util::StreamExt;

    let tag = format!("wxgate-{}", rand::random::<u64>());
    while !stop.is_cancelled() {
        let Some(live) = bus.live() else {
            tokio::select! {
                () = stop.cancelled() => return,
                () = bus.shared.connected.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            continue;
        };
        let started = async {
            let channel = bounded("channel.open", live.connection.create_channel()).await?;
            bounded(
                "basic.qos",
                channel.basic_qos(prefetch, BasicQosOptions::default()),
            )
            .await?;
            let consumer = bounded(
                "basic.consume",
                channel.basic_consume(
                    ShortString::from(queue.as_str()),
                    ShortString::from(tag.as_str()),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
            Ok::<_, BusError>((channel, consumer))
        }
        .await;
        let (channel, mut consumer) = match started {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%queue, error = %crate::ErrorChain(&e), "cannot start consumer; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
        };
        tracing::info!(%queue, prefetch, "consuming");
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => {
                    // Unsettled deliveries stay with the broker whether or not the cancel
                    // is answered; it only stops new ones sooner.
                    let _ = bounded(
                        "basic.cancel",
                        channel.basic_cancel(ShortString::from(tag.as_str()), BasicCancelOptions::default()),
                    )
                    .await;
                    // Deliveries already handed out are settled through this channel: it
                    // stays open until the stream is dropped (its consumer finished or
                    // requeued them), or SETTLE_AFTER_STOP passes. Closing it earlier made
                    // the broker requeue them and their acks fail.
                    let _ = tokio::time::timeout(SETTLE_AFTER_STOP, sender.closed()).await;
                    let _ = bounded(
                        "channel.close",
                        channel.close(200, ShortString::from("consumer stopped")),
                    )
                    .await;
                    return;
                }
                next = consumer.next() => next,
            };
            match next {
                Some(Ok(d)) => {
                    let delivery = Delivery::new(
                        Message {
                            body: Bytes::from(d.data),
                            properties: from_amqp(&d.properties),
                        },
                        d.routing_key.as_str().to_owned(),
                        d.redelivered,
                        Box::new(RabbitAcker(d.acker)),
                    );
                    if sender.send(delivery).await.is_err() {
                        // The stream was dropped: its unsettled deliveries go back when the
                        // channel closes.
                        let _ = bounded(
                            "channel.close",
                            channel.close(200, ShortString::from("consumer dropped")),
                        )
                        .await;
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(%queue, error = %crate::ErrorChain(&e), "consumer failed; resubscribing");
                    break;
                }
                None => {
                    tracing::warn!(%queue, "consumer ended; resubscribing");
                    break;
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_operation_the_broker_never_answers_times_out_naming_it() {
        let never = std::future::pending::<Result<(), lapin::Error>>();
        let result = bounded("basic.ack", never).await;
        assert!(
            matches!(
                result,
                Err(BusError::Timeout {
                    operation: "basic.ack"
                })
            ),
            "{result:?}"
        );
    }

    #[test]
    fn the_argument_is_read_from_the_brokers_reply() {
        let reply = "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'ns.worker' \
                     in vhost '/': received 'quorum' but current is 'classic'";
        assert_eq!(inequivalent_arg(reply), Some("x-queue-type"));
        assert_eq!(
            inequivalent_arg("PRECONDITION_FAILED - something else"),
            None
        );
    }
}

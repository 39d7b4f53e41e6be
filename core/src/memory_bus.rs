//! In-memory implementation of [`Bus`] with the semantics of [`crate::rabbit::RabbitBus`], so
//! gateway, worker and gRPC API can run in one process without a broker (`wxgate dev`), and
//! tests can run without one.
//!
//! It models what wxgate relies on (docs/contract.md §1.2): a topic exchange and fanout
//! exchanges with bindings, the default exchange `""`, mandatory publishes, FIFO queues with
//! `x-message-ttl`, `x-max-length` (`x-overflow` `drop-head` or `reject-publish`) and
//! dead-lettering (`x-dead-letter-exchange`, `x-dead-letter-routing-key`, the headers
//! `x-first-death-reason`, `x-first-death-queue`, `x-first-death-exchange`), prefetch,
//! round-robin between consumers, requeue with `redelivered`, consumer groups and sweeps.
//!
//! It does not persist anything, does not replicate, ignores `x-queue-type`, and does not
//! write RabbitMQ's `x-death` header (wxgate's header type cannot hold its array).
//!
//! Memory is bounded only by the queues' own limits, as on a broker: a queue without
//! `x-max-length` grows for as long as messages are published to it and nobody consumes them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bus::{
    Acker, Bus, BusError, Decide, Delivery, DeliveryStream, Disposition, GroupError, GroupSpec,
    GroupStats, HeaderValue, Message, PublishError, Swept,
};
use crate::topology::{Arg, Topology};

/// Header RabbitMQ sets on a message's first dead-lettering: why (`maxlen`, `expired`,
/// `rejected`).
const FIRST_DEATH_REASON: &str = "x-first-death-reason";
/// Header RabbitMQ sets on a message's first dead-lettering: the queue it died in.
const FIRST_DEATH_QUEUE: &str = "x-first-death-queue";
/// Header RabbitMQ sets on a message's first dead-lettering: the exchange it had been
/// published to.
const FIRST_DEATH_EXCHANGE: &str = "x-first-death-exchange";

/// Unsettled deliveries a consumer may hold when it asks for prefetch 0 (AMQP: no limit).
const UNLIMITED_PREFETCH: usize = u16::MAX as usize;
/// Bound on the dead-letterings one operation may set off (a chain of full queues that
/// dead-letter into each other); past it, further dead letters are dropped with a warning.
const DEAD_LETTER_HOPS: usize = 100_000;
/// A sweep yields to the runtime after this many messages, between two of them.
const SWEEP_YIELD_EVERY: usize = 64;

/// Why a [`MemoryBus`] operation failed: the source of the [`BusError`] or [`PublishError`]
/// it returns, for callers that downcast it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryBusError {
    /// No queue of that name (RabbitMQ: `NOT_FOUND`).
    #[error("no queue `{queue}`")]
    NoQueue {
        /// The queue asked for.
        queue: String,
    },
    /// No exchange of that name (RabbitMQ closes the channel with `NOT_FOUND`).
    #[error("no exchange `{exchange}`")]
    NoExchange {
        /// The exchange asked for.
        exchange: String,
    },
    /// The delivery was settled already, or its queue was deleted since.
    #[error("delivery {tag} of queue `{queue}` is not in flight")]
    NotInFlight {
        /// Its queue.
        queue: String,
        /// Its delivery tag within the queue.
        tag: u64,
    },
}

fn failed(operation: &'static str, error: MemoryBusError) -> BusError {
    BusError::Failed {
        operation,
        source: Arc::new(error),
    }
}

/// In-memory bus. Cheap to clone; clones share the exchanges and queues.
///
/// Needs a Tokio runtime for [`Bus::consume`] and for messages to expire on time (one timer
/// task per queue with `x-message-ttl`, started with its first message); the other
/// operations complete without waiting. Every operation takes one short lock; none holds it
/// across an `.await`.
///
/// Differences from RabbitMQ worth knowing: a [`Delivery`] still held when its stream is
/// dropped can still be settled (RabbitMQ would have returned it when the channel closed,
/// and fail the ack); a delivery dropped unsettled after [`DeliveryStream::stop`] returns to
/// its queue at once rather than when the stream is dropped; [`Bus::delete_group`] ends its
/// consumers' streams (the RabbitMQ bus resubscribes until its stream is stopped).
#[derive(Clone)]
pub struct MemoryBus {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBus")
            .field("closed", &self.shared.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct Shared {
    state: Mutex<State>,
    closed: AtomicBool,
    /// Parent of every queue's `gone` token: cancelled by [`MemoryBus::close`] or when the
    /// last handle goes, so timer and watcher tasks end.
    root: CancellationToken,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

impl Shared {
    /// Runs `f` on the state under the lock; what it put in the [`Garbage`] is dropped after
    /// the lock is released.
    fn with<T>(&self, f: impl FnOnce(&mut State, &mut Garbage) -> T) -> T {
        let mut garbage = Garbage::default();
        let result = {
            // A poisoned lock means a panic elsewhere mid-operation; the queues are still
            // usable data structures, so keep serving rather than take the process down.
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut state, &mut garbage)
        };
        drop(garbage);
        result
    }
}

/// What must not be dropped under the lock: a dropped [`Delivery`] settles itself through
/// the lock, and the last sender of a channel drops the deliveries still in it.
#[derive(Default)]
struct Garbage {
    senders: Vec<mpsc::Sender<Delivery>>,
    deliveries: Vec<Delivery>,
    queues: Vec<Queue>,
}

impl MemoryBus {
    /// A bus with `topology` declared: the topic exchange `topology.exchange`, every queue of
    /// `topology.queues` with its arguments and bindings, every fanout exchange with its
    /// queue. Arguments it does not know are ignored (logged at debug level).
    pub fn new(topology: Topology) -> MemoryBus {
        let root = CancellationToken::new();
        let shared = Arc::new_cyclic(|me| Shared {
            state: Mutex::new(State::new(me.clone(), root.clone(), &topology)),
            closed: AtomicBool::new(false),
            root,
        });
        MemoryBus { shared }
    }

    /// Closes the bus: [`Bus::is_ready`] turns false, every later operation fails with
    /// `Unavailable`, consumers' streams end once drained and messages stop expiring.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.with(|state, garbage| {
            for queue in state.queues.values_mut() {
                garbage
                    .senders
                    .extend(queue.consumers.drain(..).map(|c| c.sender));
            }
        });
        self.shared.root.cancel();
    }

    fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Relaxed)
    }

    /// Puts a message taken by a sweep back at the head of `queue` (if it still exists).
    fn put_back(&self, queue: &str, incarnation: u64, item: Queued) {
        self.shared.with(|state, garbage| {
            if let Some(q) = state.queue_mut(queue, incarnation) {
                q.requeue(item);
                state.run([Step::pump(queue.to_owned())], Instant::now(), garbage);
            }
        });
    }
}

/// Why a message is dead-lettered, as RabbitMQ names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    MaxLen,
    Expired,
    Rejected,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::MaxLen => "maxlen",
            Reason::Expired => "expired",
            Reason::Rejected => "rejected",
        }
    }
}

/// What a full queue does with one more message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Overflow {
    /// Drops (dead-letters) the oldest.
    #[default]
    DropHead,
    /// Refuses the publish (a nack).
    RejectPublish,
}

/// The arguments of a queue that change its behaviour.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct QueueArgs {
    message_ttl_ms: Option<u64>,
    max_length: Option<u64>,
    overflow: Overflow,
    dead_letter_exchange: Option<String>,
    dead_letter_routing_key: Option<String>,
}

impl QueueArgs {
    fn from_args(queue: &str, args: &[Arg]) -> QueueArgs {
        let mut parsed = QueueArgs::default();
        for arg in args {
            match arg {
                Arg::Int("x-message-ttl", ms) => parsed.message_ttl_ms = u64::try_from(*ms).ok(),
                Arg::Int("x-max-length", n) => parsed.max_length = u64::try_from(*n).ok(),
                Arg::Str("x-overflow", v) if v == "drop-head" => {
                    parsed.overflow = Overflow::DropHead;
                }
                // `reject-publish-dlx` also dead-letters the refused message; not modelled.
                Arg::Str("x-overflow", v) if v == "reject-publish" || v == "reject-publish-dlx" => {
                    parsed.overflow = Overflow::RejectPublish;
                }
                Arg::Str("x-dead-letter-exchange", v) => {
                    parsed.dead_letter_exchange = Some(v.clone());
                }
                Arg::Str("x-dead-letter-routing-key", v) => {
                    parsed.dead_letter_routing_key = Some(v.clone());
                }
                Arg::Str("x-queue-type", _) => {}
                other => tracing::debug!(%queue, argument = ?other, "queue argument ignored"),
            }
        }
        parsed
    }

    /// The arguments of a consumer group's queue (docs/contract.md §1.2).
    fn of_group(spec: &GroupSpec) -> QueueArgs {
        QueueArgs {
            message_ttl_ms: Some(u64::try_from(spec.message_ttl.as_millis()).unwrap_or(u64::MAX)),
            max_length: Some(spec.max_length),
            overflow: Overflow::DropHead,
            dead_letter_exchange: Some(spec.dead_letter_exchange.clone()),
            dead_letter_routing_key: None,
        }
    }

    /// The first argument, as RabbitMQ names it, in which `other` differs.
    fn first_difference(&self, other: &QueueArgs) -> Option<&'static str> {
        if self.dead_letter_exchange != other.dead_letter_exchange {
            Some("x-dead-letter-exchange")
        } else if self.dead_letter_routing_key != other.dead_letter_routing_key {
            Some("x-dead-letter-routing-key")
        } else if self.max_length != other.max_length {
            Some("x-max-length")
        } else if self.message_ttl_ms != other.message_ttl_ms {
            Some("x-message-ttl")
        } else if self.overflow != other.overflow {
            Some("x-overflow")
        } else {
            None
        }
    }

    fn max_length(&self) -> Option<usize> {
        self.max_length
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
    }
}

/// A message in a queue.
#[derive(Debug, Clone)]
struct Queued {
    message: Message,
    routing_key: String,
    /// The exchange it was last published (or dead-lettered) to.
    exchange: String,
    redelivered: bool,
    /// Set when it enters a queue with a TTL; kept when it is requeued, as RabbitMQ does.
    expires_at: Option<Instant>,
    /// The queues it was dead-lettered from since it was published, and why (RabbitMQ's
    /// `x-death`, kept internally).
    deaths: Vec<(String, Reason)>,
}

impl Queued {
    fn new(message: Message, routing_key: &str, exchange: &str) -> Queued {
        Queued {
            message,
            routing_key: routing_key.to_owned(),
            exchange: exchange.to_owned(),
            redelivered: false,
            expires_at: None,
            deaths: Vec::new(),
        }
    }

    fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// One consumer of a queue: a live [`DeliveryStream`] that was not stopped.
struct Consumer {
    id: u64,
    sender: mpsc::Sender<Delivery>,
    /// The stream's stop token: cancelled by [`DeliveryStream::stop`] and on drop.
    stop: CancellationToken,
    /// Unsettled deliveries it may hold.
    limit: usize,
    /// Unsettled deliveries it holds.
    in_flight: usize,
}

/// A delivery handed out and not settled.
struct InFlight {
    item: Queued,
    consumer: u64,
    /// The [`Delivery`] was dropped unsettled while its consumer was live: it returns to the
    /// queue when the consumer stops.
    abandoned: bool,
}

struct Queue {
    name: String,
    /// Distinguishes a queue from an earlier one of the same name (deleted and declared
    /// again): deliveries of the earlier one cannot be settled on it.
    incarnation: u64,
    args: QueueArgs,
    ready: VecDeque<Queued>,
    consumers: Vec<Consumer>,
    /// Where the round robin over `consumers` goes on.
    next_consumer: usize,
    /// By delivery tag, so returned deliveries keep their order.
    in_flight: BTreeMap<u64, InFlight>,
    next_tag: u64,
    /// Cancelled when the queue is deleted (or the bus closed).
    gone: CancellationToken,
    /// Wakes the expiry timer task, once started.
    timer: Option<Arc<Notify>>,
    me: Weak<Shared>,
}

impl Queue {
    fn push_back(&mut self, mut item: Queued, now: Instant) {
        item.expires_at = self
            .args
            .message_ttl_ms
            .and_then(|ms| now.checked_add(Duration::from_millis(ms)));
        let was_empty = self.ready.is_empty();
        self.ready.push_back(item);
        if self.args.message_ttl_ms.is_some() {
            self.ensure_timer();
            if was_empty {
                self.wake_timer();
            }
        }
    }

    /// Puts a message back at the head, marked redelivered; it keeps its expiry.
    fn requeue(&mut self, mut item: Queued) {
        item.redelivered = true;
        self.ready.push_front(item);
        self.wake_timer();
    }

    fn wake_timer(&self) {
        if let Some(timer) = &self.timer {
            timer.notify_one();
        }
    }

    /// Starts the task that expires messages on time, unless it runs already.
    fn ensure_timer(&mut self) {
        if self.timer.is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Messages still expire whenever the queue is used; the timer starts with the
            // next message published from inside a runtime.
            tracing::debug!(queue = %self.name, "no runtime; messages expire when the queue is used");
            return;
        };
        let wake = Arc::new(Notify::new());
        runtime.spawn(expire_on_time(
            self.me.clone(),
            self.name.clone(),
            self.incarnation,
            Arc::clone(&wake),
            self.gone.clone(),
        ));
        self.timer = Some(wake);
    }

    /// Removes consumer `index`: no more deliveries to it, and those it dropped unsettled
    /// return to the queue, oldest first.
    fn remove_consumer(&mut self, index: usize, garbage: &mut Garbage) {
        if index >= self.consumers.len() {
            return;
        }
        let consumer = self.consumers.remove(index);
        let abandoned: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.consumer == consumer.id && f.abandoned)
            .map(|(tag, _)| *tag)
            .collect();
        for tag in abandoned.into_iter().rev() {
            if let Some(flight) = self.in_flight.remove(&tag) {
                self.requeue(flight.item);
            }
        }
        garbage.senders.push(consumer.sender);
    }

    /// Removes the consumers whose stream was stopped or dropped.
    fn prune_stopped(&mut self, garbage: &mut Garbage) {
        while let Some(index) = self
            .consumers
            .iter()
            .position(|c| c.stop.is_cancelled() || c.sender.is_closed())
        {
            self.remove_consumer(index, garbage);
        }
    }

    /// Drops stopped consumers, enforces the length limit, expires messages at the head, and
    /// hands ready messages to consumers with room; returns what must be dead-lettered.
    fn pump(&mut self, now: Instant, garbage: &mut Garbage) -> Vec<(Queued, Reason)> {
        self.prune_stopped(garbage);
        let mut dead = Vec::new();
        if let (Some(max), Overflow::DropHead) = (self.args.max_length(), self.args.overflow) {
            while self.ready.len() > max {
                if let Some(item) = self.ready.pop_front() {
                    dead.push((item, Reason::MaxLen));
                }
            }
        }
        loop {
            while self.ready.front().is_some_and(|item| item.expired(now)) {
                if let Some(item) = self.ready.pop_front() {
                    dead.push((item, Reason::Expired));
                }
            }
            if self.ready.is_empty() {
                break;
            }
            let Some(index) = self.consumer_with_room() else {
                break;
            };
            let Some(item) = self.ready.pop_front() else {
                break;
            };
            self.deliver(index, item, garbage);
        }
        dead
    }

    /// The next consumer, round robin, that may take one more delivery.
    fn consumer_with_room(&mut self) -> Option<usize> {
        let count = self.consumers.len();
        let start = self.next_consumer % count.max(1);
        let found = self
            .consumers
            .iter()
            .enumerate()
            .cycle()
            .skip(start)
            .take(count)
            .find(|(_, c)| c.in_flight < c.limit)
            .map(|(index, _)| index)?;
        self.next_consumer = found + 1;
        Some(found)
    }

    fn deliver(&mut self, index: usize, item: Queued, garbage: &mut Garbage) {
        let Some(consumer) = self.consumers.get_mut(index) else {
            self.ready.push_front(item);
            return;
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        let delivery = Delivery::new(
            item.message.clone(),
            item.routing_key.clone(),
            item.redelivered,
            Box::new(MemoryAcker {
                shared: self.me.clone(),
                queue: self.name.clone(),
                incarnation: self.incarnation,
                tag,
                settled: AtomicBool::new(false),
            }),
        );
        consumer.in_flight += 1;
        let consumer_id = consumer.id;
        let sent = consumer.sender.try_send(delivery);
        self.in_flight.insert(
            tag,
            InFlight {
                item,
                consumer: consumer_id,
                abandoned: false,
            },
        );
        if let Err(error) = sent {
            // The stream was dropped (its capacity is the consumer's limit, so it is never
            // full): stop feeding it. The delivery, dropped after the lock is released,
            // returns to the queue.
            let delivery = match error {
                mpsc::error::TrySendError::Full(d) | mpsc::error::TrySendError::Closed(d) => d,
            };
            garbage.deliveries.push(delivery);
            self.remove_consumer(index, garbage);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExchangeKind {
    Topic,
    Fanout,
}

struct Exchange {
    kind: ExchangeKind,
    /// `(queue, binding key)`, each pair once.
    bindings: Vec<(String, String)>,
}

/// One unit of work of [`State::run`]: append `item` (if any) to `queue`, then pump the
/// queue (see [`Queue::pump`]).
struct Step {
    queue: String,
    item: Option<Queued>,
}

impl Step {
    fn enqueue(queue: String, item: Queued) -> Step {
        Step {
            queue,
            item: Some(item),
        }
    }

    fn pump(queue: String) -> Step {
        Step { queue, item: None }
    }
}

/// How a delivery is settled.
#[derive(Debug, Clone, Copy)]
enum Settle {
    Ack,
    Requeue,
    Reject,
}

struct State {
    me: Weak<Shared>,
    root: CancellationToken,
    /// The topic exchange consumer groups are bound to.
    events_exchange: String,
    exchanges: HashMap<String, Exchange>,
    queues: HashMap<String, Queue>,
    next_incarnation: u64,
    next_consumer: u64,
}

impl State {
    fn new(me: Weak<Shared>, root: CancellationToken, topology: &Topology) -> State {
        let mut state = State {
            me,
            root,
            events_exchange: topology.exchange.clone(),
            exchanges: HashMap::new(),
            queues: HashMap::new(),
            next_incarnation: 0,
            next_consumer: 0,
        };
        state.declare_exchange(&topology.exchange, ExchangeKind::Topic);
        for queue in &topology.queues {
            state.declare_queue(&queue.name, QueueArgs::from_args(&queue.name, &queue.args));
            for key in &queue.bindings {
                state.bind(&topology.exchange, &queue.name, key);
            }
        }
        for fanout in &topology.fanouts {
            state.declare_exchange(&fanout.exchange, ExchangeKind::Fanout);
            let queue = &fanout.queue;
            state.declare_queue(&queue.name, QueueArgs::from_args(&queue.name, &queue.args));
            state.bind(&fanout.exchange, &queue.name, "");
        }
        state
    }

    fn declare_exchange(&mut self, name: &str, kind: ExchangeKind) {
        self.exchanges
            .entry(name.to_owned())
            .or_insert_with(|| Exchange {
                kind,
                bindings: Vec::new(),
            });
    }

    fn declare_queue(&mut self, name: &str, args: QueueArgs) {
        if self.queues.contains_key(name) {
            return;
        }
        self.next_incarnation += 1;
        self.queues.insert(
            name.to_owned(),
            Queue {
                name: name.to_owned(),
                incarnation: self.next_incarnation,
                args,
                ready: VecDeque::new(),
                consumers: Vec::new(),
                next_consumer: 0,
                in_flight: BTreeMap::new(),
                next_tag: 1,
                gone: self.root.child_token(),
                timer: None,
                me: self.me.clone(),
            },
        );
    }

    fn bind(&mut self, exchange: &str, queue: &str, key: &str) {
        if let Some(exchange) = self.exchanges.get_mut(exchange)
            && !exchange
                .bindings
                .iter()
                .any(|(q, k)| q == queue && k == key)
        {
            exchange.bindings.push((queue.to_owned(), key.to_owned()));
        }
    }

    fn unbind(&mut self, exchange: &str, queue: &str, key: &str) {
        if let Some(exchange) = self.exchanges.get_mut(exchange) {
            exchange.bindings.retain(|(q, k)| !(q == queue && k == key));
        }
    }

    fn queue_mut(&mut self, name: &str, incarnation: u64) -> Option<&mut Queue> {
        self.queues
            .get_mut(name)
            .filter(|q| q.incarnation == incarnation)
    }

    /// The queues a message published to `exchange` with `routing_key` goes to, each once.
    fn route(&self, exchange: &str, routing_key: &str) -> Result<Vec<String>, MemoryBusError> {
        if exchange.is_empty() {
            return Ok(if self.queues.contains_key(routing_key) {
                vec![routing_key.to_owned()]
            } else {
                Vec::new()
            });
        }
        let found = self
            .exchanges
            .get(exchange)
            .ok_or_else(|| MemoryBusError::NoExchange {
                exchange: exchange.to_owned(),
            })?;
        let mut targets: Vec<String> = Vec::new();
        for (queue, key) in &found.bindings {
            let matches = match found.kind {
                ExchangeKind::Fanout => true,
                ExchangeKind::Topic => topic_matches(key, routing_key),
            };
            if matches && !targets.contains(queue) {
                targets.push(queue.clone());
            }
        }
        Ok(targets)
    }

    fn publish(
        &mut self,
        exchange: &str,
        routing_key: &str,
        message: &Message,
        now: Instant,
        garbage: &mut Garbage,
    ) -> Result<(), PublishError> {
        let targets = self
            .route(exchange, routing_key)
            .map_err(|e| PublishError::Connection(Arc::new(e)))?;
        if targets.is_empty() {
            return Err(PublishError::Unroutable);
        }
        let mut rejected = false;
        let mut steps = Vec::with_capacity(targets.len());
        for queue in targets {
            let full = self.queues.get(&queue).is_some_and(|q| {
                q.args.overflow == Overflow::RejectPublish
                    && q.args.max_length().is_some_and(|max| q.ready.len() >= max)
            });
            if full {
                rejected = true;
            } else {
                steps.push(Step::enqueue(
                    queue,
                    Queued::new(message.clone(), routing_key, exchange),
                ));
            }
        }
        self.run(steps, now, garbage);
        if rejected {
            Err(PublishError::NotConfirmed)
        } else {
            Ok(())
        }
    }

    /// Runs `steps` and every dead-lettering they cause.
    fn run(&mut self, steps: impl IntoIterator<Item = Step>, now: Instant, garbage: &mut Garbage) {
        let mut work: VecDeque<Step> = steps.into_iter().collect();
        let mut hops = 0_usize;
        while let Some(step) = work.pop_front() {
            let Step { queue: name, item } = step;
            let Some(queue) = self.queues.get_mut(&name) else {
                continue;
            };
            if let Some(item) = item {
                queue.push_back(item, now);
            }
            for (item, reason) in queue.pump(now, garbage) {
                hops += 1;
                if hops > DEAD_LETTER_HOPS {
                    tracing::warn!(queue = %name, "too many dead-letterings at once; message dropped");
                    continue;
                }
                work.extend(
                    self.dead_letter(&name, item, reason)
                        .into_iter()
                        .map(|(target, item)| Step::enqueue(target, item)),
                );
            }
        }
    }

    /// Where `item`, dying in `queue` for `reason`, goes: the queues its dead-letter exchange
    /// routes it to, with RabbitMQ's headers. None without a dead-letter exchange (dropped).
    fn dead_letter(&self, queue: &str, mut item: Queued, reason: Reason) -> Vec<(String, Queued)> {
        let Some(args) = self.queues.get(queue).map(|q| &q.args) else {
            return Vec::new();
        };
        let Some(exchange) = args.dead_letter_exchange.clone() else {
            return Vec::new();
        };
        // RabbitMQ drops a message that would die in the same queue a second time with no
        // rejection on the way: dead-lettering cycles end.
        if reason != Reason::Rejected
            && item.deaths.iter().any(|(q, _)| q == queue)
            && item.deaths.iter().all(|(_, r)| *r != Reason::Rejected)
        {
            tracing::debug!(%queue, "dead-lettering cycle; message dropped");
            return Vec::new();
        }
        if item.deaths.is_empty() {
            let properties = &mut item.message.properties;
            properties.set_header(FIRST_DEATH_REASON, HeaderValue::Str(reason.as_str().into()));
            properties.set_header(FIRST_DEATH_QUEUE, HeaderValue::Str(queue.to_owned()));
            properties.set_header(
                FIRST_DEATH_EXCHANGE,
                HeaderValue::Str(item.exchange.clone()),
            );
        }
        item.deaths.push((queue.to_owned(), reason));
        let routing_key = args
            .dead_letter_routing_key
            .clone()
            .unwrap_or_else(|| item.routing_key.clone());
        // A dead-letter exchange that does not exist, or routes nowhere, drops the message,
        // as on RabbitMQ.
        let targets = self.route(&exchange, &routing_key).unwrap_or_default();
        item.routing_key = routing_key;
        item.exchange = exchange;
        item.redelivered = false;
        targets
            .into_iter()
            .map(|target| (target, item.clone()))
            .collect()
    }

    fn settle(
        &mut self,
        queue: &str,
        incarnation: u64,
        tag: u64,
        how: Settle,
        now: Instant,
        garbage: &mut Garbage,
    ) -> Result<(), MemoryBusError> {
        let not_in_flight = || MemoryBusError::NotInFlight {
            queue: queue.to_owned(),
            tag,
        };
        let q = self
            .queue_mut(queue, incarnation)
            .ok_or_else(not_in_flight)?;
        let flight = q.in_flight.remove(&tag).ok_or_else(not_in_flight)?;
        if let Some(consumer) = q.consumers.iter_mut().find(|c| c.id == flight.consumer) {
            consumer.in_flight = consumer.in_flight.saturating_sub(1);
        }
        let mut steps = Vec::new();
        match how {
            Settle::Ack => {}
            Settle::Requeue => q.requeue(flight.item),
            Settle::Reject => steps.extend(
                self.dead_letter(queue, flight.item, Reason::Rejected)
                    .into_iter()
                    .map(|(target, item)| Step::enqueue(target, item)),
            ),
        }
        steps.push(Step::pump(queue.to_owned()));
        self.run(steps, now, garbage);
        Ok(())
    }

    /// A [`Delivery`] was dropped unsettled: it returns to its queue now if its consumer has
    /// stopped, else when it stops.
    fn abandon(
        &mut self,
        queue: &str,
        incarnation: u64,
        tag: u64,
        now: Instant,
        garbage: &mut Garbage,
    ) {
        let Some(q) = self.queue_mut(queue, incarnation) else {
            return;
        };
        q.prune_stopped(garbage);
        let Some(flight) = q.in_flight.get_mut(&tag) else {
            return;
        };
        if q.consumers.iter().any(|c| c.id == flight.consumer) {
            flight.abandoned = true;
            return;
        }
        if let Some(flight) = q.in_flight.remove(&tag) {
            q.requeue(flight.item);
        }
        self.run([Step::pump(queue.to_owned())], now, garbage);
    }

    fn add_consumer(
        &mut self,
        queue: &str,
        sender: mpsc::Sender<Delivery>,
        stop: CancellationToken,
        limit: usize,
        now: Instant,
        garbage: &mut Garbage,
    ) -> Result<(u64, CancellationToken), MemoryBusError> {
        self.next_consumer += 1;
        let id = self.next_consumer;
        let q = self
            .queues
            .get_mut(queue)
            .ok_or_else(|| MemoryBusError::NoQueue {
                queue: queue.to_owned(),
            })?;
        q.consumers.push(Consumer {
            id,
            sender,
            stop,
            limit,
            in_flight: 0,
        });
        let found = (q.incarnation, q.gone.clone());
        self.run([Step::pump(queue.to_owned())], now, garbage);
        Ok(found)
    }

    /// Pumps `queue` once a consumer's stream was stopped or dropped, so the consumer goes
    /// and what it dropped unsettled returns even if nothing else touches the queue.
    fn stop_consumer(
        &mut self,
        queue: &str,
        incarnation: u64,
        now: Instant,
        garbage: &mut Garbage,
    ) {
        if self.queue_mut(queue, incarnation).is_some() {
            self.run([Step::pump(queue.to_owned())], now, garbage);
        }
    }

    fn declare_group(&mut self, spec: &GroupSpec, unbind: &[String]) -> Result<(), GroupError> {
        let args = QueueArgs::of_group(spec);
        match self.queues.get(&spec.queue) {
            Some(existing) => {
                if let Some(argument) = existing.args.first_difference(&args) {
                    return Err(GroupError::Mismatch {
                        queue: spec.queue.clone(),
                        argument: argument.to_owned(),
                    });
                }
            }
            None => self.declare_queue(&spec.queue, args),
        }
        let exchange = self.events_exchange.clone();
        for key in &spec.bindings {
            self.bind(&exchange, &spec.queue, key);
        }
        for key in unbind.iter().filter(|key| !spec.bindings.contains(key)) {
            self.unbind(&exchange, &spec.queue, key);
        }
        Ok(())
    }

    fn delete_queue(&mut self, name: &str, now: Instant, garbage: &mut Garbage) -> u64 {
        // Expired messages go first, as the broker would have dropped them already.
        self.run([Step::pump(name.to_owned())], now, garbage);
        let Some(queue) = self.queues.remove(name) else {
            return 0;
        };
        for exchange in self.exchanges.values_mut() {
            exchange.bindings.retain(|(q, _)| q != name);
        }
        queue.gone.cancel();
        let count = u64::try_from(queue.ready.len()).unwrap_or(u64::MAX);
        garbage.queues.push(queue);
        count
    }

    fn stats(&mut self, name: &str, now: Instant, garbage: &mut Garbage) -> Option<GroupStats> {
        self.run([Step::pump(name.to_owned())], now, garbage);
        self.queues.get(name).map(|q| GroupStats {
            depth: u64::try_from(q.ready.len()).unwrap_or(u64::MAX),
            consumers: u32::try_from(q.consumers.len()).unwrap_or(u32::MAX),
        })
    }

    /// The incarnation of `name` and its ready messages.
    fn ready_count(
        &mut self,
        name: &str,
        now: Instant,
        garbage: &mut Garbage,
    ) -> Result<(u64, usize), MemoryBusError> {
        self.run([Step::pump(name.to_owned())], now, garbage);
        self.queues
            .get(name)
            .map(|q| (q.incarnation, q.ready.len()))
            .ok_or_else(|| MemoryBusError::NoQueue {
                queue: name.to_owned(),
            })
    }

    /// Takes the head of `name` out of the queue, for a sweep.
    fn take_head(
        &mut self,
        name: &str,
        incarnation: u64,
        now: Instant,
        garbage: &mut Garbage,
    ) -> Result<Option<Queued>, MemoryBusError> {
        self.run([Step::pump(name.to_owned())], now, garbage);
        let queue = self
            .queue_mut(name, incarnation)
            .ok_or_else(|| MemoryBusError::NoQueue {
                queue: name.to_owned(),
            })?;
        Ok(queue.ready.pop_front())
    }

    /// Expires what is due in `name`; the next expiry, or `Err` when the queue is gone.
    fn expire(
        &mut self,
        name: &str,
        incarnation: u64,
        now: Instant,
        garbage: &mut Garbage,
    ) -> Result<Option<Instant>, ()> {
        if self.queue_mut(name, incarnation).is_none() {
            return Err(());
        }
        self.run([Step::pump(name.to_owned())], now, garbage);
        let queue = self.queue_mut(name, incarnation).ok_or(())?;
        Ok(queue.ready.front().and_then(|item| item.expires_at))
    }
}

/// Expires the messages of one queue on time, whether or not anyone uses the queue; ends
/// when the queue is deleted or the bus goes.
async fn expire_on_time(
    shared: Weak<Shared>,
    queue: String,
    incarnation: u64,
    wake: Arc<Notify>,
    gone: CancellationToken,
) {
    loop {
        let next = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            shared.with(|state, garbage| state.expire(&queue, incarnation, Instant::now(), garbage))
        };
        let Ok(next) = next else {
            return;
        };
        match next {
            Some(deadline) => tokio::select! {
                () = gone.cancelled() => return,
                () = wake.notified() => {}
                () = tokio::time::sleep_until(deadline) => {}
            },
            None => tokio::select! {
                () = gone.cancelled() => return,
                () = wake.notified() => {}
            },
        }
    }
}

/// Stops a consumer when its stream is stopped or dropped.
async fn watch_consumer(
    shared: Weak<Shared>,
    queue: String,
    incarnation: u64,
    stop: CancellationToken,
    gone: CancellationToken,
) {
    tokio::select! {
        () = gone.cancelled() => return,
        () = stop.cancelled() => {}
    }
    if let Some(shared) = shared.upgrade() {
        shared.with(|state, garbage| {
            state.stop_consumer(&queue, incarnation, Instant::now(), garbage);
        });
    }
}

/// Settles one delivery of a [`MemoryBus`]; dropped unsettled, it gives the delivery back.
struct MemoryAcker {
    shared: Weak<Shared>,
    queue: String,
    incarnation: u64,
    tag: u64,
    settled: AtomicBool,
}

impl MemoryAcker {
    fn settle(&self, how: Settle, operation: &'static str) -> Result<(), BusError> {
        if self.settled.swap(true, Ordering::AcqRel) {
            return Err(failed(
                operation,
                MemoryBusError::NotInFlight {
                    queue: self.queue.clone(),
                    tag: self.tag,
                },
            ));
        }
        let shared = self.shared.upgrade().ok_or(BusError::Unavailable)?;
        if shared.closed.load(Ordering::Relaxed) {
            return Err(BusError::Unavailable);
        }
        shared
            .with(|state, garbage| {
                state.settle(
                    &self.queue,
                    self.incarnation,
                    self.tag,
                    how,
                    Instant::now(),
                    garbage,
                )
            })
            .map_err(|e| failed(operation, e))
    }
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(&self) -> Result<(), BusError> {
        self.settle(Settle::Ack, "basic.ack")
    }

    async fn nack(&self, requeue: bool) -> Result<(), BusError> {
        let how = if requeue {
            Settle::Requeue
        } else {
            Settle::Reject
        };
        self.settle(how, "basic.nack")
    }
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        if *self.settled.get_mut() {
            return;
        }
        if let Some(shared) = self.shared.upgrade() {
            shared.with(|state, garbage| {
                state.abandon(
                    &self.queue,
                    self.incarnation,
                    self.tag,
                    Instant::now(),
                    garbage,
                );
            });
        }
    }
}

/// A message a sweep took from its queue; back at the head if the sweep ends (panics or is
/// dropped) before settling it.
struct InHand<'a> {
    bus: &'a MemoryBus,
    queue: &'a str,
    incarnation: u64,
    item: Option<Queued>,
}

impl InHand<'_> {
    fn take(&mut self) -> Option<Queued> {
        self.item.take()
    }
}

impl Drop for InHand<'_> {
    fn drop(&mut self) {
        if let Some(item) = self.item.take() {
            self.bus.put_back(self.queue, self.incarnation, item);
        }
    }
}

/// AMQP topic matching: words are separated by `.`, `*` matches exactly one word and `#`
/// zero or more; an empty key has no words.
fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    fn words(s: &str) -> Vec<&str> {
        if s.is_empty() {
            Vec::new()
        } else {
            s.split('.').collect()
        }
    }
    let key = words(routing_key);
    // `reachable[j]`: the pattern so far matches the first `j` words of the key.
    let mut reachable: Vec<bool> = std::iter::once(true)
        .chain(key.iter().map(|_| false))
        .collect();
    for word in words(pattern) {
        reachable = match word {
            "#" => reachable
                .iter()
                .scan(false, |any, &r| {
                    *any |= r;
                    Some(*any)
                })
                .collect(),
            "*" => std::iter::once(false)
                .chain(reachable.iter().take(key.len()).copied())
                .collect(),
            literal => std::iter::once(false)
                .chain(reachable.iter().zip(&key).map(|(&r, &k)| r && k == literal))
                .collect(),
        };
    }
    reachable.last().copied().unwrap_or(false)
}

#[async_trait]
impl Bus for MemoryBus {
    /// Routes `message` and puts it in every target queue before returning: that is the
    /// confirm. `Unroutable` when no queue matches; an unknown exchange is a
    /// `Connection` error whose source ([`MemoryBusError::NoExchange`]) names it; a queue
    /// with `x-overflow` `reject-publish` that is full makes it `NotConfirmed`.
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Message,
    ) -> Result<(), PublishError> {
        if self.is_closed() {
            return Err(PublishError::Unavailable);
        }
        self.shared.with(|state, garbage| {
            state.publish(exchange, routing_key, message, Instant::now(), garbage)
        })
    }

    /// Fails when `queue` does not exist. Prefetch 0 means 65,535.
    async fn consume(&self, queue: &str, prefetch: u16) -> Result<DeliveryStream, BusError> {
        if self.is_closed() {
            return Err(BusError::Unavailable);
        }
        let limit = if prefetch == 0 {
            UNLIMITED_PREFETCH
        } else {
            usize::from(prefetch)
        };
        // The watcher below needs a Tokio runtime; without one there is no consumer.
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BusError::Unavailable)?;
        let (sender, receiver) = mpsc::channel(limit);
        let stop = CancellationToken::new();
        let (incarnation, gone) = self
            .shared
            .with(|state, garbage| {
                state.add_consumer(queue, sender, stop.clone(), limit, Instant::now(), garbage)
            })
            .map_err(|e| failed("basic.consume", e))?;
        runtime.spawn(watch_consumer(
            Arc::downgrade(&self.shared),
            queue.to_owned(),
            incarnation,
            stop.clone(),
            gone,
        ));
        Ok(DeliveryStream::new(receiver, stop))
    }

    /// Compares `x-dead-letter-exchange`, `x-max-length` and `x-message-ttl` (and the other
    /// arguments the bus models) with an existing queue; the queue type is not compared.
    async fn declare_group(&self, spec: &GroupSpec, unbind: &[String]) -> Result<(), GroupError> {
        if self.is_closed() {
            return Err(BusError::Unavailable.into());
        }
        self.shared
            .with(|state, _| state.declare_group(spec, unbind))
    }

    /// Counts ready messages only; deliveries in flight are lost with the queue, and their
    /// settling fails. The consumers' streams end once drained.
    async fn delete_group(&self, queue: &str) -> Result<u64, GroupError> {
        if self.is_closed() {
            return Err(BusError::Unavailable.into());
        }
        Ok(self
            .shared
            .with(|state, garbage| state.delete_queue(queue, Instant::now(), garbage)))
    }

    async fn group_stats(&self, queue: &str) -> Result<Option<GroupStats>, GroupError> {
        if self.is_closed() {
            return Err(BusError::Unavailable.into());
        }
        Ok(self
            .shared
            .with(|state, garbage| state.stats(queue, Instant::now(), garbage)))
    }

    /// True until [`MemoryBus::close`].
    fn is_ready(&self) -> bool {
        !self.is_closed()
    }

    /// `behind` counts from the messages ready when the walk began, also when `max` is 0.
    async fn sweep(
        &self,
        queue: &str,
        max: usize,
        decide: &mut dyn Decide,
    ) -> Result<Swept, BusError> {
        if self.is_closed() {
            return Err(BusError::Unavailable);
        }
        let (incarnation, start) = self
            .shared
            .with(|state, garbage| state.ready_count(queue, Instant::now(), garbage))
            .map_err(|e| failed("basic.get", e))?;
        let limit = max.min(start);
        let mut swept = Swept::default();
        while swept.scanned < limit && !decide.done() {
            if swept.scanned > 0 && swept.scanned % SWEEP_YIELD_EVERY == 0 {
                tokio::task::yield_now().await;
            }
            let taken = self
                .shared
                .with(|state, garbage| state.take_head(queue, incarnation, Instant::now(), garbage))
                .map_err(|e| failed("basic.get", e))?;
            let mut in_hand = InHand {
                bus: self,
                queue,
                incarnation,
                item: taken,
            };
            let Some(message) = in_hand.item.as_ref().map(|item| &item.message) else {
                break;
            };
            swept.scanned += 1;
            let (target, copy, moved) = match decide.decide(message) {
                Disposition::Keep => (queue.to_owned(), message.clone(), false),
                Disposition::Remove => {
                    in_hand.take();
                    swept.removed += 1;
                    continue;
                }
                Disposition::Move {
                    queue: target,
                    message,
                } => (target, message, true),
            };
            // The original stays in hand, and goes back to the queue, unless the publish
            // succeeds.
            self.shared
                .with(|state, garbage| state.publish("", &target, &copy, Instant::now(), garbage))
                .map_err(|e| BusError::Failed {
                    operation: "publish",
                    source: Arc::new(e),
                })?;
            in_hand.take();
            if moved {
                swept.removed += 1;
                swept.moved += 1;
            }
        }
        swept.behind = u64::try_from(start.saturating_sub(swept.scanned)).unwrap_or(u64::MAX);
        Ok(swept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::topology::{Names, QueueSpec};
    use bytes::Bytes;

    fn topology(ns: &str) -> Topology {
        let config = Config::from_toml(
            &format!("namespace = \"{ns}\"\n[worker]\nretry_delays_ms = [50, 100]\n"),
            |_| None,
        )
        .unwrap();
        Topology::for_config(&config)
    }

    fn message(id: &str) -> Message {
        Message {
            body: Bytes::from(id.to_owned()),
            properties: crate::bus::Properties {
                message_id: Some(id.to_owned()),
                ..crate::bus::Properties::default()
            },
        }
    }

    fn id(delivery: &Delivery) -> &str {
        delivery
            .message
            .properties
            .message_id
            .as_deref()
            .unwrap_or("")
    }

    fn source(error: &dyn std::error::Error) -> String {
        error.source().map(ToString::to_string).unwrap_or_default()
    }

    #[track_caller]
    fn check(pattern: &str, key: &str, expected: bool) {
        assert_eq!(
            topic_matches(pattern, key),
            expected,
            "{pattern:?} against {key:?}"
        );
    }

    #[test]
    fn topic_patterns_match_like_amqp() {
        check("a.b.c", "a.b.c", true);
        check("a.b.c", "a.b", false);
        check("a.*.c", "a.b.c", true);
        check("a.*.c", "a.c", false);
        check("a.*", "a.b.c", false);
        check("*", "", false);
        check("#", "", true);
        check("#", "a.b.c", true);
        check("a.#", "a", true);
        check("a.#", "a.b.c", true);
        check("a.#", "b.a", false);
        check("#.c", "a.b.c", true);
        check("#.c", "c", true);
        check("a.#.c", "a.c", true);
        check("a.#.c", "a.b.b.c", true);
        check("a.#.c", "a.b.b.d", false);
        check("#.#", "a", true);
        check("*.#", "", false);
        check("*.msg.#", "demo.msg.text", true);
        check("", "", true);
        check("", "a", false);
        check("a..b", "a..b", true);
        check("a.*.b", "a..b", true);
    }

    #[tokio::test]
    async fn consuming_an_unknown_queue_fails_naming_it() {
        let bus = MemoryBus::new(topology("m1"));
        let error = bus.consume("m1.nope", 1).await.map(|_| ()).unwrap_err();
        assert!(
            matches!(
                error,
                BusError::Failed {
                    operation: "basic.consume",
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(source(&error), "no queue `m1.nope`");
        assert!(
            bus.sweep("m1.nope", 10, &mut |_: &Message| Disposition::Keep)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn publishing_to_an_unknown_exchange_fails_naming_it() {
        let bus = MemoryBus::new(topology("m2"));
        let error = bus
            .publish("m2.nope", "k", &message("a"))
            .await
            .unwrap_err();
        assert!(matches!(error, PublishError::Connection(_)), "{error:?}");
        assert_eq!(source(&error), "no exchange `m2.nope`");
        assert!(matches!(
            bus.publish("", "m2.nope", &message("a")).await,
            Err(PublishError::Unroutable)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_queue_sends_its_messages_back_after_the_delay_with_nobody_consuming_it() {
        let names = Names::new("m3");
        let bus = MemoryBus::new(topology("m3"));
        let mut worker = bus.consume(&names.worker_queue(), 10).await.unwrap();
        let start = Instant::now();
        bus.publish("", &names.retry_queue(1), &message("r"))
            .await
            .unwrap();
        let delivery = worker.recv().await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert!(start.elapsed() < Duration::from_millis(150));
        assert_eq!(id(&delivery), "r");
        assert_eq!(delivery.routing_key, names.worker_queue());
        let properties = &delivery.message.properties;
        assert_eq!(
            properties.header(FIRST_DEATH_REASON),
            Some(&HeaderValue::Str("expired".into()))
        );
        assert_eq!(
            properties.header(FIRST_DEATH_QUEUE),
            Some(&HeaderValue::Str(names.retry_queue(1)))
        );
        assert_eq!(
            properties.header(FIRST_DEATH_EXCHANGE),
            Some(&HeaderValue::Str(String::new()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_requeued_message_keeps_its_expiry() {
        let names = Names::new("m4");
        let bus = MemoryBus::new(topology("m4"));
        let spec = GroupSpec {
            queue: names.group_queue("g"),
            bindings: vec!["#".into()],
            max_length: 10,
            message_ttl: Duration::from_millis(100),
            dead_letter_exchange: names.groups_dropped(),
            queue_type: "quorum".into(),
        };
        bus.declare_group(&spec, &[]).await.unwrap();
        let mut dropped = bus.consume(&names.groups_dropped(), 10).await.unwrap();
        bus.publish(&names.events_exchange(), "a.b", &message("x"))
            .await
            .unwrap();
        let start = Instant::now();
        let mut group = bus.consume(&spec.queue, 1).await.unwrap();
        let delivery = group.recv().await.unwrap();
        drop(group);
        tokio::time::sleep(Duration::from_millis(60)).await;
        delivery.nack(true).await.unwrap();
        let record = dropped.recv().await.unwrap();
        assert_eq!(id(&record), "x");
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert!(
            start.elapsed() < Duration::from_millis(150),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn deleting_a_group_ends_its_streams_and_its_deliveries_cannot_be_settled() {
        let names = Names::new("m5");
        let bus = MemoryBus::new(topology("m5"));
        let spec = GroupSpec {
            queue: names.group_queue("g"),
            bindings: vec!["#".into()],
            max_length: 10,
            message_ttl: Duration::from_secs(60),
            dead_letter_exchange: names.groups_dropped(),
            queue_type: "quorum".into(),
        };
        bus.declare_group(&spec, &[]).await.unwrap();
        for i in 0..3 {
            bus.publish(&names.events_exchange(), "a.b", &message(&i.to_string()))
                .await
                .unwrap();
        }
        let mut stream = bus.consume(&spec.queue, 1).await.unwrap();
        let held = stream.recv().await.unwrap();
        assert_eq!(bus.delete_group(&spec.queue).await.unwrap(), 2);
        assert!(stream.recv().await.is_none());
        let error = held.ack().await.unwrap_err();
        assert!(source(&error).contains("not in flight"), "{error}");
        // Declared again, it is a new, empty queue.
        bus.declare_group(&spec, &[]).await.unwrap();
        let stats = bus.group_stats(&spec.queue).await.unwrap().unwrap();
        assert_eq!((stats.depth, stats.consumers), (0, 0));
    }

    #[tokio::test]
    async fn a_delivery_held_past_its_stream_can_still_be_settled() {
        let names = Names::new("m6");
        let bus = MemoryBus::new(topology("m6"));
        bus.publish("", &names.dead_queue(), &message("a"))
            .await
            .unwrap();
        let mut stream = bus.consume(&names.dead_queue(), 1).await.unwrap();
        let delivery = stream.recv().await.unwrap();
        drop(stream);
        delivery.ack().await.unwrap();
        let stats = bus.group_stats(&names.dead_queue()).await.unwrap().unwrap();
        assert_eq!((stats.depth, stats.consumers), (0, 0));
    }

    #[tokio::test]
    async fn a_stopped_stream_yields_what_it_buffered_then_ends() {
        let names = Names::new("m7");
        let bus = MemoryBus::new(topology("m7"));
        for i in 0..5 {
            bus.publish("", &names.dead_queue(), &message(&i.to_string()))
                .await
                .unwrap();
        }
        let mut stream = bus.consume(&names.dead_queue(), 2).await.unwrap();
        stream.stop();
        let first = stream.recv().await.unwrap();
        let second = stream.recv().await.unwrap();
        assert_eq!((id(&first), id(&second)), ("0", "1"));
        assert!(stream.recv().await.is_none());
        first.ack().await.unwrap();
        // Dropped unsettled after the stop: back at once, at the head.
        drop(second);
        let stats = bus.group_stats(&names.dead_queue()).await.unwrap().unwrap();
        assert_eq!((stats.depth, stats.consumers), (4, 0));
        let mut next = bus.consume(&names.dead_queue(), 1).await.unwrap();
        let again = next.recv().await.unwrap();
        assert_eq!(id(&again), "1");
        assert!(again.redelivered);
    }

    #[tokio::test]
    async fn prefetch_zero_is_no_limit() {
        let names = Names::new("m8");
        let bus = MemoryBus::new(topology("m8"));
        for i in 0..300 {
            bus.publish("", &names.dead_queue(), &message(&i.to_string()))
                .await
                .unwrap();
        }
        let mut stream = bus.consume(&names.dead_queue(), 0).await.unwrap();
        let mut held = Vec::new();
        while let Some(delivery) = stream.try_recv() {
            held.push(delivery);
        }
        assert_eq!(held.len(), 300);
    }

    #[tokio::test]
    async fn a_closed_bus_refuses_everything_and_ends_its_streams() {
        let names = Names::new("m9");
        let bus = MemoryBus::new(topology("m9"));
        let mut stream = bus.consume(&names.dead_queue(), 1).await.unwrap();
        assert!(bus.is_ready());
        bus.close();
        assert!(!bus.is_ready());
        assert!(stream.recv().await.is_none());
        assert!(matches!(
            bus.publish("", &names.dead_queue(), &message("a")).await,
            Err(PublishError::Unavailable)
        ));
        assert!(matches!(
            bus.consume(&names.dead_queue(), 1).await.map(|_| ()),
            Err(BusError::Unavailable)
        ));
        assert!(bus.group_stats(&names.dead_queue()).await.is_err());
    }

    fn queue(name: &str, args: Vec<Arg>) -> QueueSpec {
        QueueSpec {
            name: name.into(),
            args,
            bindings: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_full_reject_publish_queue_refuses_the_publish() {
        let bus = MemoryBus::new(Topology {
            exchange: "x".into(),
            queues: vec![queue(
                "q",
                vec![
                    Arg::Int("x-max-length", 1),
                    Arg::Str("x-overflow", "reject-publish".into()),
                ],
            )],
            fanouts: Vec::new(),
        });
        bus.publish("", "q", &message("a")).await.unwrap();
        assert!(matches!(
            bus.publish("", "q", &message("b")).await,
            Err(PublishError::NotConfirmed)
        ));
        let mut stream = bus.consume("q", 5).await.unwrap();
        assert_eq!(id(&stream.recv().await.unwrap()), "a");
        assert!(stream.try_recv().is_none());
    }

    #[tokio::test]
    async fn full_queues_dead_lettering_into_each_other_do_not_loop() {
        let full = |name: &str, other: &str| {
            queue(
                name,
                vec![
                    Arg::Int("x-max-length", 1),
                    Arg::Str("x-dead-letter-exchange", String::new()),
                    Arg::Str("x-dead-letter-routing-key", other.into()),
                ],
            )
        };
        let bus = MemoryBus::new(Topology {
            exchange: "x".into(),
            queues: vec![full("a", "b"), full("b", "a")],
            fanouts: Vec::new(),
        });
        for i in 0..5 {
            bus.publish("", "a", &message(&i.to_string()))
                .await
                .unwrap();
        }
        let depth = |queue: &'static str| {
            let bus = bus.clone();
            async move { bus.group_stats(queue).await.unwrap().unwrap().depth }
        };
        assert_eq!((depth("a").await, depth("b").await), (1, 1));
    }

    #[tokio::test]
    async fn a_sweep_whose_decider_panics_leaves_the_message_in_the_queue() {
        let names = Names::new("m10");
        let bus = MemoryBus::new(topology("m10"));
        bus.publish("", &names.dead_queue(), &message("a"))
            .await
            .unwrap();
        let swept = {
            let bus = bus.clone();
            let queue = names.dead_queue();
            tokio::spawn(async move {
                bus.sweep(&queue, 10, &mut |_: &Message| -> Disposition {
                    panic!("decider failed")
                })
                .await
            })
            .await
        };
        assert!(swept.is_err(), "the task panicked");
        let stats = bus.group_stats(&names.dead_queue()).await.unwrap().unwrap();
        assert_eq!(stats.depth, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn every_message_is_acked_once_through_churning_consumers() {
        use std::collections::HashSet;
        use std::sync::atomic::AtomicUsize;

        const MESSAGES: usize = 2_000;
        let names = Names::new("m11");
        let bus = MemoryBus::new(topology("m11"));
        let queue = names.dead_queue();
        let acked = Arc::new(Mutex::new(HashSet::new()));
        let handled = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..4_usize {
            let (bus, queue, acked, handled) = (
                bus.clone(),
                queue.clone(),
                Arc::clone(&acked),
                Arc::clone(&handled),
            );
            tasks.spawn(async move {
                let mut round = 0_usize;
                let mut stop_first = false;
                while acked.lock().unwrap().len() < MESSAGES {
                    round += 1;
                    stop_first = !stop_first;
                    let mut stream = bus.consume(&queue, 8).await.unwrap();
                    // Each round handles a few deliveries, then the stream goes with some
                    // deliveries still unsettled.
                    let mut kept = Vec::new();
                    for step in 0..(5 + (worker + round) % 7) {
                        let next =
                            tokio::time::timeout(Duration::from_millis(20), stream.recv()).await;
                        let Ok(Some(delivery)) = next else { break };
                        let n = handled.fetch_add(1, Ordering::Relaxed);
                        match (n + step) % 5 {
                            0 => kept.push(delivery),
                            1 => delivery.nack(true).await.unwrap(),
                            2 => drop(delivery),
                            _ => {
                                let id = id(&delivery).to_owned();
                                delivery.ack().await.unwrap();
                                assert!(acked.lock().unwrap().insert(id), "acked twice");
                            }
                        }
                    }
                    if stop_first {
                        stream.stop();
                    }
                    drop(stream);
                    drop(kept);
                }
            });
        }
        for i in 0..MESSAGES {
            bus.publish("", &queue, &message(&i.to_string()))
                .await
                .unwrap();
        }
        let all = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(result) = tasks.join_next().await {
                result.unwrap();
            }
        })
        .await;
        assert!(
            all.is_ok(),
            "stuck with {} acked",
            acked.lock().unwrap().len()
        );
        assert_eq!(acked.lock().unwrap().len(), MESSAGES);
        let stats = bus.group_stats(&queue).await.unwrap().unwrap();
        assert_eq!((stats.depth, stats.consumers), (0, 0));
    }
}

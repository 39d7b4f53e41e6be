//! `wxgate.v1.Events`: consumer groups over the bus (docs/contract.md §1.2, §1.5).
//!
//! A group is the queue `{ns}.group.{group}` plus its record in the Redis hash `{ns}:groups`
//! (filter, retention, bound routing keys, creation time). The record is how `ListGroups`
//! finds groups and how a start with another filter knows which keys to unbind. Events a
//! group drops (retention, `nack` without requeue) are dead-lettered to `{ns}.groups.dropped`
//! and counted by [`count_dropped`]. Starts and deletes of one group hold the Redis lock
//! `{ns}:group-lock:{group}` around their read-modify-write of the record and the broker
//! calls. Every delivery is checked against the stream's key. The semantics are written down in
//! `proto/wxgate/v1/events.proto` and `docs/api.md`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use wxgate_core::bus::{Bus, Delivery, DeliveryStream, GroupError, GroupStats, HeaderValue};
use wxgate_core::metrics::{GroupReason, WorkerMetrics};
use wxgate_core::topology::{Names, group_spec};
use wxgate_proto::v1::events_server::Events;
use wxgate_proto::v1::{
    EventsDeleteGroupRequest, EventsDeleteGroupResponse, EventsDelivery, EventsFilter, EventsGroup,
    EventsListGroupsRequest, EventsListGroupsResponse, EventsStart, EventsStarted,
    SubscribeRequest, SubscribeResponse, subscribe_request, subscribe_response,
};

use super::{Api, ApiError, Caller};

/// `max_in_flight` when the start leaves it 0.
pub const DEFAULT_MAX_IN_FLIGHT: u16 = 64;
/// The largest `max_in_flight` accepted.
pub const MAX_MAX_IN_FLIGHT: u16 = 1024;
/// How long a new stream may take to send its `start`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an open stream checks that its group still exists (was not deleted).
const GROUP_CHECK_EVERY: Duration = Duration::from_secs(1);
/// At most this many values in each filter list.
const MAX_FILTER_VALUES: usize = 64;
/// Limits of the retention overrides (the same as `worker.group_*`).
const MAX_LENGTH_RANGE: std::ops::RangeInclusive<u64> = 1..=100_000_000;
const MESSAGE_TTL_S_RANGE: std::ops::RangeInclusive<u64> = 1..=90 * 86_400;
/// Prefetch of the worker's consumer of `{ns}.groups.dropped`.
const DROPPED_PREFETCH: u16 = 256;
/// How long a group's lock (`{ns}:group-lock:{group}`) lives if its holder never releases it.
const GROUP_LOCK_TTL: Duration = Duration::from_secs(10);
/// How long a start or delete waits for a group's lock.
const GROUP_LOCK_WAIT: Duration = Duration::from_secs(5);
/// How often a waiting start or delete tries the group's lock again.
const GROUP_LOCK_POLL: Duration = Duration::from_millis(50);
/// How long an ending stream may wait to queue its final status for the subscriber.
const FINAL_STATUS_WAIT: Duration = Duration::from_secs(1);

/// The `Events` service.
pub struct EventsService {
    api: Arc<Api>,
}

impl EventsService {
    /// The service on `api`.
    pub fn new(api: Arc<Api>) -> Self {
        Self { api }
    }
}

/// A group's filter, validated and normalised: duplicates removed, event names lower-cased.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Account ids; empty means every account.
    pub accounts: Vec<String>,
    /// WeChat `MsgType` values, as given.
    pub msg_types: Vec<String>,
    /// WeChat `Event` values, lower-cased.
    pub events: Vec<String>,
}

impl Filter {
    /// Validates `filter` (absent = every event of every account); the error names the
    /// field and the limit.
    pub fn parse(filter: Option<&EventsFilter>) -> Result<Self, ApiError> {
        let Some(filter) = filter else {
            return Ok(Self::default());
        };
        Ok(Self {
            accounts: values("filter.accounts", &filter.accounts, false)?,
            msg_types: values("filter.msg_types", &filter.msg_types, false)?,
            events: values("filter.events", &filter.events, true)?,
        })
    }

    /// The binding patterns this filter expands to, sorted (the table in
    /// `proto/wxgate/v1/events.proto`).
    pub fn routing_keys(&self) -> Vec<String> {
        let every = ["*".to_owned()];
        let accounts: &[String] = if self.accounts.is_empty() {
            &every
        } else {
            &self.accounts
        };
        let mut keys = BTreeSet::new();
        for account in accounts {
            if self.msg_types.is_empty() && self.events.is_empty() {
                keys.insert(format!("{account}.#"));
                continue;
            }
            for msg_type in &self.msg_types {
                if msg_type == "event" {
                    // Event names, when given, narrow `event` (added below).
                    if self.events.is_empty() {
                        keys.insert(format!("{account}.event.*"));
                    }
                } else {
                    keys.insert(format!("{account}.msg.{msg_type}"));
                }
            }
            for event in &self.events {
                keys.insert(format!("{account}.event.{event}"));
            }
        }
        keys.into_iter().collect()
    }

    fn to_proto(&self) -> EventsFilter {
        EventsFilter {
            accounts: self.accounts.clone(),
            msg_types: self.msg_types.clone(),
            events: self.events.clone(),
        }
    }
}

/// Whether `value` matches `[A-Za-z0-9_-]{1,64}`.
fn is_name(value: &str) -> bool {
    (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A validated, de-duplicated list (`lower` lower-cases each value first).
fn values(field: &str, given: &[String], lower: bool) -> Result<Vec<String>, ApiError> {
    if given.len() > MAX_FILTER_VALUES {
        return Err(ApiError::invalid(
            field,
            format!("at most {MAX_FILTER_VALUES} values"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(given.len());
    for (i, value) in given.iter().enumerate() {
        if !is_name(value) {
            return Err(ApiError::invalid(
                format!("{field}[{i}]"),
                "must match [A-Za-z0-9_-]{1,64} (no dots, `*` or `#`)",
            ));
        }
        let value = if lower {
            value.to_ascii_lowercase()
        } else {
            value.clone()
        };
        if !out.contains(&value) {
            out.push(value);
        }
    }
    Ok(out)
}

/// A valid group name, else `INVALID_ARGUMENT` naming `field`.
fn group_name(field: &str, group: &str) -> Result<(), ApiError> {
    if is_name(group) {
        Ok(())
    } else {
        Err(ApiError::invalid(field, "must match [A-Za-z0-9_-]{1,64}"))
    }
}

/// A group's record in `{ns}:groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The filter of the latest start.
    pub filter: Filter,
    /// The routing keys the queue may be bound with: those of `filter`, or during a rebind
    /// the old and new ones together (so a crash mid-way leaves no key unknown).
    pub bindings: Vec<String>,
    /// Retention: at most this many events.
    pub max_length: u64,
    /// Retention: seconds an event may wait.
    pub message_ttl_s: u64,
    /// When the group was created, Unix milliseconds.
    pub created_at_ms: i64,
}

impl GroupRecord {
    fn encode(&self) -> Vec<u8> {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// `PERMISSION_DENIED` unless `caller` may use a group of `accounts`: a non-empty subset of
/// the key's accounts, or any filter for an admin key.
fn check_scope(caller: &Caller, group: &str, accounts: &[String]) -> Result<(), ApiError> {
    if accounts.is_empty() {
        return caller.require_admin().map_err(|_| {
            ApiError::PermissionDenied(format!(
                "group {group:?} receives every account: only an admin key (accounts = [\"*\"]) \
                 may use it; name the accounts in filter.accounts"
            ))
        });
    }
    match accounts.iter().find(|a| !caller.may_act_for(a)) {
        None => Ok(()),
        Some(account) => Err(ApiError::PermissionDenied(format!(
            "api key {:?} may not act for account {account:?} of group {group:?}",
            caller.name
        ))),
    }
}

fn may_see(caller: &Caller, record: &GroupRecord) -> bool {
    caller.is_admin()
        || (!record.filter.accounts.is_empty()
            && record.filter.accounts.iter().all(|a| caller.may_act_for(a)))
}

impl Api {
    /// The record of `group`, if any. An unreadable record is `FAILED_PRECONDITION`.
    async fn group_record(&self, group: &str) -> Result<Option<GroupRecord>, ApiError> {
        let Some(raw) = self.store.hget(&self.keys.groups(), group).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&raw).map(Some).map_err(|e| {
            ApiError::FailedPrecondition(format!(
                "the record of group {group:?} in {} is unreadable ({e}); an admin key can \
                 DeleteGroup it",
                self.keys.groups()
            ))
        })
    }

    async fn put_group_record(&self, group: &str, record: &GroupRecord) -> Result<(), ApiError> {
        self.store
            .hset(&self.keys.groups(), group, &record.encode())
            .await?;
        Ok(())
    }

    /// Takes `{ns}:group-lock:{group}` (`SET NX PX`, random owner), trying every
    /// [`GROUP_LOCK_POLL`] for up to [`GROUP_LOCK_WAIT`]: `DEADLINE_EXCEEDED` when another
    /// start or delete of the group holds it that long, `UNAVAILABLE` on shutdown or when
    /// Redis fails. Release it with [`Api::unlock_group`]; it expires after
    /// [`GROUP_LOCK_TTL`] if its holder dies.
    async fn lock_group(&self, group: &str) -> Result<GroupLock, ApiError> {
        let lock = GroupLock {
            key: self.keys.group_lock(group),
            owner: format!("{:032x}", rand::random::<u128>()),
        };
        let deadline = tokio::time::Instant::now() + GROUP_LOCK_WAIT;
        loop {
            if self
                .store
                .set_nx(&lock.key, lock.owner.as_bytes(), GROUP_LOCK_TTL)
                .await?
            {
                return Ok(lock);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::DeadlineExceeded(format!(
                    "group {group:?} is being started or deleted by another request (lock {} \
                     held for {} s); try again",
                    lock.key,
                    GROUP_LOCK_WAIT.as_secs()
                )));
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return Err(ApiError::ShuttingDown),
                () = tokio::time::sleep(GROUP_LOCK_POLL) => {}
            }
        }
    }

    /// Releases `lock` if this worker still owns it. A failure is logged: the lock then
    /// expires on its own.
    async fn unlock_group(&self, lock: GroupLock) {
        if let Err(error) = self
            .store
            .compare_and_delete(&lock.key, lock.owner.as_bytes())
            .await
        {
            tracing::warn!(key = %lock.key, error = %wxgate_core::ErrorChain(&error), "cannot release a group's lock; it expires on its own");
        }
    }
}

/// A held `{ns}:group-lock:{group}`.
struct GroupLock {
    key: String,
    owner: String,
}

/// A group bound and ready to consume.
struct Opened {
    started: EventsStarted,
    queue: String,
    created_at_ms: i64,
}

/// Validates a start, checks the caller, declares or rebinds the group and records it.
async fn open_group(api: &Api, caller: &Caller, start: &EventsStart) -> Result<Opened, ApiError> {
    group_name("start.group", &start.group)?;
    let group = start.group.as_str();
    let filter = Filter::parse(start.filter.as_ref())?;
    let max_in_flight = match start.max_in_flight {
        0 => DEFAULT_MAX_IN_FLIGHT,
        n => u16::try_from(n)
            .ok()
            .filter(|n| *n <= MAX_MAX_IN_FLIGHT)
            .ok_or_else(|| {
                ApiError::invalid(
                    "start.max_in_flight",
                    format!("at most {MAX_MAX_IN_FLIGHT} (0 means {DEFAULT_MAX_IN_FLIGHT})"),
                )
            })?,
    };
    if let Some(n) = start.max_length
        && !MAX_LENGTH_RANGE.contains(&n)
    {
        return Err(ApiError::invalid(
            "start.max_length",
            "must be 1 to 100000000",
        ));
    }
    if let Some(n) = start.message_ttl_s
        && !MESSAGE_TTL_S_RANGE.contains(&n)
    {
        return Err(ApiError::invalid(
            "start.message_ttl_s",
            "must be 1 to 7776000 (90 days)",
        ));
    }
    check_scope(caller, group, &filter.accounts)?;
    // Read, declare or rebind, and write under the group's lock: concurrent starts of a new
    // group then agree on one `created_at_ms` (the later ones find the record), and the
    // record's `bindings` always list every key the queue may be bound with.
    let lock = api.lock_group(group).await?;
    let opened = open_locked(api, caller, start, filter, max_in_flight).await;
    api.unlock_group(lock).await;
    opened
}

/// The part of [`open_group`] that runs under the group's lock.
async fn open_locked(
    api: &Api,
    caller: &Caller,
    start: &EventsStart,
    filter: Filter,
    max_in_flight: u16,
) -> Result<Opened, ApiError> {
    let group = start.group.as_str();
    let existing = api.group_record(group).await?;
    if let Some(existing) = &existing {
        check_scope(caller, group, &existing.filter.accounts)?;
        for (field, given, current) in [
            ("max_length", start.max_length, existing.max_length),
            ("message_ttl_s", start.message_ttl_s, existing.message_ttl_s),
        ] {
            if let Some(given) = given
                && given != current
            {
                return Err(ApiError::FailedPrecondition(format!(
                    "start.{field}: group {group:?} exists with {field} = {current}; the \
                     retention of a group cannot change (RabbitMQ cannot change a queue's \
                     arguments): DeleteGroup first, or leave {field} unset"
                )));
            }
        }
    }
    let worker = &api.config.worker;
    let max_length = existing
        .as_ref()
        .map(|r| r.max_length)
        .or(start.max_length)
        .unwrap_or(worker.group_max_length);
    let message_ttl_s = existing
        .as_ref()
        .map(|r| r.message_ttl_s)
        .or(start.message_ttl_s)
        .unwrap_or(worker.group_message_ttl.as_secs());
    let keys = filter.routing_keys();
    let created_at_ms = existing
        .as_ref()
        .map_or_else(wxgate_core::now_ms, |r| r.created_at_ms);
    let old_keys = existing
        .as_ref()
        .map(|r| r.bindings.clone())
        .unwrap_or_default();
    let mut record = GroupRecord {
        filter,
        bindings: keys
            .iter()
            .chain(&old_keys)
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        max_length,
        message_ttl_s,
        created_at_ms,
    };
    // Recorded before the broker is touched, with every key the queue may end up bound
    // with, so a stop anywhere below leaves no binding the next start does not know.
    api.put_group_record(group, &record).await?;
    let spec = group_spec(
        &api.config,
        group,
        keys.clone(),
        max_length,
        Duration::from_secs(message_ttl_s),
    );
    if let Err(error) = api.bus.declare_group(&spec, &old_keys).await {
        // A refused declare changed nothing on the broker: put the record back as it was.
        // After a broker failure the keys may be half bound: the record keeps them all.
        let restored = match (&existing, &error) {
            (_, GroupError::Bus(_)) => Ok(()),
            (Some(existing), GroupError::Mismatch { .. }) => {
                api.put_group_record(group, existing).await
            }
            (None, GroupError::Mismatch { .. }) => api
                .store
                .hdel(&api.keys.groups(), group)
                .await
                .map(|_| ())
                .map_err(ApiError::from),
        };
        if let Err(e) = restored {
            tracing::warn!(group, error = %wxgate_core::ErrorChain(&e), "cannot restore the group's record");
        }
        return Err(error.into());
    }
    record.bindings.clone_from(&keys);
    api.put_group_record(group, &record).await?;
    tracing::info!(
        group,
        created = existing.is_none(),
        bindings = keys.len(),
        max_in_flight,
        "group bound"
    );
    Ok(Opened {
        started: EventsStarted {
            group: group.to_owned(),
            routing_keys: keys,
            max_in_flight: u32::from(max_in_flight),
            max_length,
            message_ttl_s,
            created: existing.is_none(),
        },
        queue: spec.queue,
        created_at_ms,
    })
}

impl EventsService {
    /// The part of `DeleteGroup` that runs under the group's lock: checks the record and
    /// the caller, deletes the queue, then the record; the events that were waiting.
    async fn delete_locked(&self, caller: &Caller, group: &str) -> Result<u64, ApiError> {
        match self.api.group_record(group).await {
            Ok(Some(record)) => check_scope(caller, group, &record.filter.accounts)?,
            Ok(None) => return Err(ApiError::NotFound(format!("no group {group:?}"))),
            // An unreadable record: only an admin may remove it.
            Err(ApiError::FailedPrecondition(_)) => caller.require_admin()?,
            Err(e) => return Err(e),
        }
        // The queue first: if its deletion fails, the record stays and DeleteGroup can be
        // retried; the lock keeps starts out until the record is gone too.
        let dropped_events = self
            .api
            .bus
            .delete_group(&self.api.names.group_queue(group))
            .await?;
        self.api.store.hdel(&self.api.keys.groups(), group).await?;
        Ok(dropped_events)
    }
}

type SubscribeItem = Result<SubscribeResponse, Status>;

#[tonic::async_trait]
impl Events for EventsService {
    type SubscribeStream = ReceiverStream<SubscribeItem>;

    async fn subscribe(
        &self,
        request: Request<Streaming<SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = Caller::of(&request)?;
        let mut inbound = request.into_inner();
        let first = tokio::select! {
            () = self.api.shutdown.cancelled() => return Err(ApiError::ShuttingDown.into()),
            first = tokio::time::timeout(START_TIMEOUT, inbound.next()) => first,
        };
        let start = match first {
            Err(_) => {
                return Err(ApiError::DeadlineExceeded(format!(
                    "no start request within {} s",
                    START_TIMEOUT.as_secs()
                ))
                .into());
            }
            Ok(None) => return Err(ApiError::invalid("start", "the stream ended before it").into()),
            Ok(Some(Err(status))) => return Err(status),
            Ok(Some(Ok(SubscribeRequest {
                kind: Some(subscribe_request::Kind::Start(start)),
            }))) => start,
            Ok(Some(Ok(_))) => {
                return Err(ApiError::invalid("start", "the first request must be start").into());
            }
        };
        let opened = open_group(&self.api, &caller, &start).await?;
        let max_in_flight =
            u16::try_from(opened.started.max_in_flight).unwrap_or(DEFAULT_MAX_IN_FLIGHT);
        let deliveries = self
            .api
            .bus
            .consume(&opened.queue, max_in_flight)
            .await
            .map_err(ApiError::from)?;
        // At most `max_in_flight` deliveries are unsettled, and a subscriber cannot settle
        // one it has not read: this buffer never fills.
        let (sender, receiver) = mpsc::channel(usize::from(max_in_flight) + 2);
        let group = opened.started.group.clone();
        let started = SubscribeResponse {
            kind: Some(subscribe_response::Kind::Started(opened.started)),
        };
        if sender.send(Ok(started)).await.is_err() {
            return Err(Status::cancelled("subscriber left"));
        }
        tracing::info!(group = %group, caller = %caller.name, "subscription started");
        let session = Session {
            api: Arc::clone(&self.api),
            caller,
            group,
            created_at_ms: opened.created_at_ms,
            inbound,
            deliveries,
            sender,
            pending: HashMap::new(),
            next_id: 0,
        };
        tokio::spawn(session.run());
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn delete_group(
        &self,
        request: Request<EventsDeleteGroupRequest>,
    ) -> Result<Response<EventsDeleteGroupResponse>, Status> {
        let caller = Caller::of(&request)?;
        let group = request.into_inner().group;
        group_name("group", &group)?;
        // Under the group's lock, so no start re-declares the queue between its deletion and
        // the record's (which would leave a queue no record lists).
        let lock = self.api.lock_group(&group).await?;
        let deleted = self.delete_locked(&caller, &group).await;
        self.api.unlock_group(lock).await;
        let dropped_events = deleted?;
        tracing::info!(group = %group, caller = %caller.name, dropped_events, "group deleted");
        Ok(Response::new(EventsDeleteGroupResponse { dropped_events }))
    }

    async fn list_groups(
        &self,
        request: Request<EventsListGroupsRequest>,
    ) -> Result<Response<EventsListGroupsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let all = self
            .api
            .store
            .hgetall(&self.api.keys.groups())
            .await
            .map_err(ApiError::from)?;
        let mut groups = Vec::new();
        for (name, raw) in all {
            let record: GroupRecord = match serde_json::from_slice(&raw) {
                Ok(record) => record,
                Err(e) => {
                    tracing::warn!(group = %name, error = %e, "unreadable group record; skipped");
                    continue;
                }
            };
            if !may_see(&caller, &record) {
                continue;
            }
            // One group RabbitMQ cannot tell about does not fail the list: it is listed with
            // depth and consumers 0 (its queue is not known to be missing).
            let stats = match self
                .api
                .bus
                .group_stats(&self.api.names.group_queue(&name))
                .await
            {
                Ok(stats) => stats,
                Err(error) => {
                    tracing::warn!(group = %name, error = %wxgate_core::ErrorChain(&error), "cannot read a group's depth; listed with depth 0");
                    Some(GroupStats {
                        depth: 0,
                        consumers: 0,
                    })
                }
            };
            groups.push(EventsGroup {
                group: name,
                filter: Some(record.filter.to_proto()),
                routing_keys: record.bindings,
                max_length: record.max_length,
                message_ttl_s: record.message_ttl_s,
                created_at_ms: record.created_at_ms,
                depth: stats.map_or(0, |s| s.depth),
                consumers: stats.map_or(0, |s| s.consumers),
                queue_present: stats.is_some(),
            });
        }
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        Ok(Response::new(EventsListGroupsResponse { groups }))
    }
}

/// One open subscription: forwards deliveries, settles them by id, ends on the subscriber
/// leaving, on a protocol error, on the group's deletion or on shutdown. Dropping it drops
/// the bus consumer, which returns every unsettled delivery to the group.
struct Session {
    api: Arc<Api>,
    /// The key that opened the stream: a delivery of an account it may not act for (queued
    /// under an earlier, wider filter) is rejected, not delivered.
    caller: Caller,
    group: String,
    created_at_ms: i64,
    inbound: Streaming<SubscribeRequest>,
    deliveries: DeliveryStream,
    sender: mpsc::Sender<SubscribeItem>,
    pending: HashMap<u64, Delivery>,
    next_id: u64,
}

/// Why a session ended.
enum End {
    /// The subscriber left or closed its request stream: nothing to tell it.
    Left,
    /// End the stream with this error.
    Error(ApiError),
}

impl Session {
    #[tracing::instrument(skip_all, fields(group = %self.group))]
    async fn run(mut self) {
        let shutdown = self.api.shutdown.clone();
        let mut check = tokio::time::interval(GROUP_CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            // Every branch is cancel safe: `recv`, `next`, `closed` and `tick` keep their
            // state in their owners.
            let step = tokio::select! {
                () = shutdown.cancelled() => Err(End::Error(ApiError::ShuttingDown)),
                () = self.sender.closed() => Err(End::Left),
                request = self.inbound.next() => self.on_request(request).await,
                delivery = self.deliveries.recv() => self.on_delivery(delivery).await,
                _ = check.tick() => self.check_group().await,
            };
            if let Err(end) = step {
                break end;
            }
        };
        self.deliveries.stop();
        let unsettled = self.pending.len();
        match end {
            End::Left => tracing::info!(unsettled, "subscription ended by the subscriber"),
            End::Error(error) => {
                tracing::info!(unsettled, error = %wxgate_core::ErrorChain(&error), "subscription ended");
                // A subscriber that stopped reading must not hold the task: give up after
                // a moment (the stream then just ends).
                let sent =
                    tokio::time::timeout(FINAL_STATUS_WAIT, self.sender.send(Err(error.into())))
                        .await;
                if !matches!(sent, Ok(Ok(()))) {
                    tracing::debug!("the final status could not be queued for the subscriber");
                }
            }
        }
    }

    async fn on_request(
        &mut self,
        request: Option<Result<SubscribeRequest, Status>>,
    ) -> Result<(), End> {
        let kind = match request {
            None => return Err(End::Left),
            Some(Err(status)) => {
                tracing::debug!(status = %status, "request stream failed");
                return Err(End::Left);
            }
            Some(Ok(request)) => request.kind,
        };
        let (field, id, requeue) = match kind {
            Some(subscribe_request::Kind::Ack(ack)) => ("ack.delivery_id", ack.delivery_id, None),
            Some(subscribe_request::Kind::Nack(nack)) => {
                ("nack.delivery_id", nack.delivery_id, Some(nack.requeue))
            }
            Some(subscribe_request::Kind::Start(_)) => {
                return Err(End::Error(ApiError::invalid(
                    "start",
                    "only the first request may be start",
                )));
            }
            None => {
                return Err(End::Error(ApiError::invalid(
                    "kind",
                    "a request must be start, ack or nack",
                )));
            }
        };
        let Some(delivery) = self.pending.remove(&id) else {
            return Err(End::Error(ApiError::invalid(
                field,
                format!(
                    "delivery {id} is not in flight on this stream (never delivered, or settled already)"
                ),
            )));
        };
        let result = match requeue {
            None => delivery.ack().await,
            Some(requeue) => delivery.nack(requeue).await,
        };
        if let Err(error) = result {
            // The broker returns the event to the group when the channel is gone; the
            // subscriber may see it again.
            tracing::warn!(delivery_id = id, error = %wxgate_core::ErrorChain(&error), "cannot settle a delivery");
        }
        Ok(())
    }

    async fn on_delivery(&mut self, delivery: Option<Delivery>) -> Result<(), End> {
        let Some(delivery) = delivery else {
            return Err(End::Error(ApiError::ShuttingDown));
        };
        let event = match wxgate_proto::v1::Event::decode(delivery.message.body.as_ref()) {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(
                    message_id = ?delivery.message.properties.message_id,
                    routing_key = %delivery.routing_key,
                    error = %error,
                    "undecodable event; rejected (counted as dropped, reason rejected)"
                );
                if let Err(error) = delivery.nack(false).await {
                    tracing::warn!(error = %wxgate_core::ErrorChain(&error), "cannot reject an undecodable event");
                }
                return Ok(());
            }
        };
        if !self.caller.may_act_for(&event.account_id) {
            tracing::warn!(
                event_id = %event.event_id,
                account_id = %event.account_id,
                caller = %self.caller.name,
                "event of an account the key may not act for (queued under an earlier filter); \
                 rejected (counted as dropped, reason rejected)"
            );
            if let Err(error) = delivery.nack(false).await {
                tracing::warn!(error = %wxgate_core::ErrorChain(&error), "cannot reject an event out of the key's scope");
            }
            return Ok(());
        }
        self.next_id += 1;
        let delivery_id = self.next_id;
        let redelivered = delivery.redelivered;
        self.pending.insert(delivery_id, delivery);
        let response = SubscribeResponse {
            kind: Some(subscribe_response::Kind::Delivery(EventsDelivery {
                delivery_id,
                event: Some(event),
                redelivered,
            })),
        };
        // Cancel safe against shutdown and the subscriber leaving: a subscriber that stops
        // reading (HTTP/2 flow control) must not hold the task and its consumer forever.
        tokio::select! {
            sent = self.sender.send(Ok(response)) => sent.map_err(|_| End::Left),
            () = self.api.shutdown.cancelled() => Err(End::Error(ApiError::ShuttingDown)),
            () = self.sender.closed() => Err(End::Left),
        }
    }

    /// Ends the stream when the group was deleted (or deleted and created again).
    async fn check_group(&self) -> Result<(), End> {
        match self.api.group_record(&self.group).await {
            Ok(Some(record)) if record.created_at_ms == self.created_at_ms => Ok(()),
            Ok(_) => Err(End::Error(ApiError::NotFound(format!(
                "group {:?} was deleted",
                self.group
            )))),
            // Redis unavailable for a moment: the group is not known to be gone.
            Err(error) => {
                tracing::debug!(error = %wxgate_core::ErrorChain(&error), "cannot check the group");
                Ok(())
            }
        }
    }
}

/// Counts the events consumer groups dropped: consumes `{ns}.groups.dropped` (where group
/// queues dead-letter) and increments `wxgate_group_dropped_total{group,reason}` per record,
/// then acks it. Runs until `shutdown`; every worker runs one, so each counts a share.
pub async fn count_dropped(
    bus: Arc<dyn Bus>,
    names: Names,
    metrics: Arc<WorkerMetrics>,
    shutdown: CancellationToken,
) {
    let queue = names.groups_dropped();
    let mut stream = match bus.consume(&queue, DROPPED_PREFETCH).await {
        Ok(stream) => stream,
        Err(error) => {
            tracing::error!(%queue, error = %wxgate_core::ErrorChain(&error), "cannot count dropped group events");
            return;
        }
    };
    loop {
        let delivery = tokio::select! {
            () = shutdown.cancelled() => break,
            delivery = stream.recv() => delivery,
        };
        let Some(delivery) = delivery else { break };
        count_one(&names, &metrics, delivery).await;
    }
    stream.stop();
    while let Some(delivery) = stream.try_recv() {
        count_one(&names, &metrics, delivery).await;
    }
}

async fn count_one(names: &Names, metrics: &WorkerMetrics, delivery: Delivery) {
    let header = |name: &str| match delivery.message.properties.header(name) {
        Some(HeaderValue::Str(s)) => s.clone(),
        _ => String::new(),
    };
    let queue = header("x-first-death-queue");
    let group = names.group_of_queue(&queue).unwrap_or_default().to_owned();
    let reason = match header("x-first-death-reason").as_str() {
        "maxlen" => "maxlen",
        "expired" => "expired",
        "rejected" => "rejected",
        _ => "other",
    };
    metrics
        .group_dropped
        .get_or_create(&GroupReason { group, reason })
        .inc();
    if let Err(error) = delivery.ack().await {
        // Redelivered and counted again later: a metric off by one, nothing lost.
        tracing::warn!(error = %wxgate_core::ErrorChain(&error), "cannot ack a dropped-event record");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(accounts: &[&str], msg_types: &[&str], events: &[&str]) -> Vec<String> {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Filter::parse(Some(&EventsFilter {
            accounts: owned(accounts),
            msg_types: owned(msg_types),
            events: owned(events),
        }))
        .unwrap()
        .routing_keys()
    }

    #[test]
    fn every_row_of_the_filter_table_expands_as_documented() {
        for (accounts, msg_types, events, expected) in [
            (&[][..], &[][..], &[][..], &["*.#"][..]),
            (&[], &["text"], &[], &["*.msg.text"]),
            (&["a"], &[], &[], &["a.#"]),
            (&["a", "b"], &[], &[], &["a.#", "b.#"]),
            (
                &["a"],
                &["text", "image"],
                &[],
                &["a.msg.image", "a.msg.text"],
            ),
            (&["a"], &["event"], &[], &["a.event.*"]),
            (
                &["a"],
                &["text", "event"],
                &[],
                &["a.event.*", "a.msg.text"],
            ),
            (&["a"], &[], &["subscribe"], &["a.event.subscribe"]),
            (
                &["a"],
                &["text"],
                &["subscribe"],
                &["a.event.subscribe", "a.msg.text"],
            ),
            (
                &["a"],
                &["text", "event"],
                &["subscribe"],
                &["a.event.subscribe", "a.msg.text"],
            ),
            (&["a"], &["event"], &["SCAN"], &["a.event.scan"]),
            (&["a", "a"], &["text", "text"], &[], &["a.msg.text"]),
        ] {
            assert_eq!(
                keys(accounts, msg_types, events),
                expected,
                "{accounts:?} {msg_types:?} {events:?}"
            );
        }
    }

    #[test]
    fn values_that_would_change_a_pattern_are_refused_naming_the_field() {
        for (filter, field) in [
            (
                EventsFilter {
                    accounts: vec!["de.mo".into()],
                    ..EventsFilter::default()
                },
                "filter.accounts[0]",
            ),
            (
                EventsFilter {
                    msg_types: vec!["text".into(), "*".into()],
                    ..EventsFilter::default()
                },
                "filter.msg_types[1]",
            ),
            (
                EventsFilter {
                    events: vec!["#".into()],
                    ..EventsFilter::default()
                },
                "filter.events[0]",
            ),
            (
                EventsFilter {
                    events: vec![String::new()],
                    ..EventsFilter::default()
                },
                "filter.events[0]",
            ),
            (
                EventsFilter {
                    msg_types: vec!["x".into(); 65],
                    ..EventsFilter::default()
                },
                "filter.msg_types",
            ),
        ] {
            match Filter::parse(Some(&filter)) {
                Err(ApiError::Invalid { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{filter:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn group_names_are_limited() {
        assert!(is_name("crm-1_a"));
        assert!(is_name(&"a".repeat(64)));
        assert!(!is_name(&"a".repeat(65)));
        assert!(!is_name(""));
        assert!(!is_name("a.b"));
        assert!(!is_name("a b"));
    }
}

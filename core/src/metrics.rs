//! Every Prometheus metric of wxgate, registered in one place (docs/contract.md §1.1, §1.3).
//!
//! Label values come from small fixed sets. On the gateway's metrics `account` is set only when
//! `gateway.metrics_per_account` is on (otherwise it is the empty string, which Prometheus
//! treats as an absent label). The worker's token metrics always carry it: they are per
//! appid, one series per configured account and result at most.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels `{account, outcome}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountOutcome {
    /// Account id, or "" when per-account metrics are off.
    pub account: String,
    /// A fixed outcome name.
    pub outcome: &'static str,
}

/// Labels `{account}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountLabel {
    /// Account id; on the gateway's metrics "" when per-account metrics are off.
    pub account: String,
}

/// Labels `{result}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// A fixed result name.
    pub result: &'static str,
}

/// Labels `{origin}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OriginLabel {
    /// `file` or `runtime`.
    pub origin: &'static str,
}

/// The accounts a process serves (docs/contract.md §1.5), on the gateway's and the worker's
/// `/metrics` alike. Cheap to clone: clones share their values.
#[derive(Debug, Clone, Default)]
pub struct AccountsMetrics {
    /// `wxgate_accounts{origin}`: accounts served, by origin (`file`, `runtime`).
    pub accounts: Family<OriginLabel, Gauge>,
    /// `wxgate_accounts_version_lost`: 1 while `{ns}:accounts:version` has vanished from Redis
    /// although this process had loaded runtime accounts (Redis lost its data; the process
    /// keeps serving what it had), else 0.
    pub version_lost: Gauge,
}

impl AccountsMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "wxgate_accounts",
            "Accounts served, by origin (file, runtime)",
            self.accounts.clone(),
        );
        registry.register(
            "wxgate_accounts_version_lost",
            "1 while the runtime accounts version key has vanished from Redis (Redis lost its data); the last accounts loaded are still served",
            self.version_lost.clone(),
        );
    }
}

/// The gateway's metrics.
pub struct GatewayMetrics {
    registry: Registry,
    per_account: bool,
    /// `wxgate_gateway_requests_total{account,outcome}`.
    pub requests: Family<AccountOutcome, Counter>,
    /// `wxgate_gateway_request_seconds`.
    pub request_seconds: Histogram,
    /// `wxgate_gateway_publish_total{result}`.
    pub publish: Family<ResultLabel, Counter>,
    /// `wxgate_gateway_dedup_hits_total`.
    pub dedup_hits: Counter,
    /// `wxgate_gateway_passive_replies_total{account}`.
    pub passive_replies: Family<AccountLabel, Counter>,
    /// `wxgate_accounts{origin}`, `wxgate_accounts_version_lost`.
    pub accounts: AccountsMetrics,
}

impl GatewayMetrics {
    /// Registers the gateway's metrics; `per_account` is `gateway.metrics_per_account`.
    pub fn new(per_account: bool) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<AccountOutcome, Counter>::default();
        let request_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let publish = Family::<ResultLabel, Counter>::default();
        let dedup_hits = Counter::default();
        let passive_replies = Family::<AccountLabel, Counter>::default();
        registry.register(
            "wxgate_gateway_requests",
            "Callbacks answered, by account and outcome",
            requests.clone(),
        );
        registry.register(
            "wxgate_gateway_request_seconds",
            "Time to answer a callback",
            request_seconds.clone(),
        );
        registry.register(
            "wxgate_gateway_publish",
            "Event publishes by broker result",
            publish.clone(),
        );
        registry.register(
            "wxgate_gateway_dedup_hits",
            "WeChat retries answered from the dedup store",
            dedup_hits.clone(),
        );
        registry.register(
            "wxgate_gateway_passive_replies",
            "Callbacks answered with a passive reply",
            passive_replies.clone(),
        );
        let accounts = AccountsMetrics::default();
        accounts.register(&mut registry);
        Self {
            registry,
            per_account,
            accounts,
            requests,
            request_seconds,
            publish,
            dedup_hits,
            passive_replies,
        }
    }

    /// The `account` label value for `account_id`.
    pub fn account_label(&self, account_id: &str) -> String {
        if self.per_account {
            account_id.to_owned()
        } else {
            String::new()
        }
    }

    /// Counts one answered request.
    pub fn request(&self, account_id: &str, outcome: &'static str) {
        self.requests
            .get_or_create(&AccountOutcome {
                account: self.account_label(account_id),
                outcome,
            })
            .inc();
    }

    /// The OpenMetrics text exposition, served as [`CONTENT_TYPE`].
    pub fn encode(&self) -> String {
        encode(&self.registry)
    }
}

/// The `Content-Type` of every `/metrics` answer. [`encode`] renders OpenMetrics text (the
/// format Prometheus negotiates first; it ends with `# EOF`), so the answer says so.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders a registry as OpenMetrics text, the format [`CONTENT_TYPE`] names.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Labels `{account, result}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountResult {
    /// Account id (always set: the token metrics are per account).
    pub account: String,
    /// A fixed result name.
    pub result: &'static str,
}

/// Labels `{outcome}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// A fixed outcome name.
    pub outcome: &'static str,
}

/// Labels `{errcode}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrcodeLabel {
    /// WeChat's errcode, or "" when the failure had none (network, undecodable, …).
    pub errcode: String,
}

/// Labels `{group, reason}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupReason {
    /// The consumer group's name (one series per group and reason; groups are few and named
    /// by operators).
    pub group: String,
    /// Why it was dropped: `maxlen`, `expired`, `rejected` or `other`.
    pub reason: &'static str,
}

/// The worker's metrics (docs/contract.md §1.3).
pub struct WorkerMetrics {
    registry: Registry,
    /// `wxgate_worker_events_total{outcome}`: sent, skipped, retried, dead.
    pub events: Family<OutcomeLabel, Counter>,
    /// `wxgate_worker_dead_total{errcode}`.
    pub dead: Family<ErrcodeLabel, Counter>,
    /// `wxgate_worker_send_seconds`: one `custom/send` call.
    pub send_seconds: Histogram,
    /// `wxgate_worker_end_to_end_seconds`: from `received_at_ms` to WeChat's answer.
    pub end_to_end_seconds: Histogram,
    /// `wxgate_token_refresh_total{account,result}`.
    pub token_refresh: Family<AccountResult, Counter>,
    /// `wxgate_token_requests_today{account}`: token endpoint calls today (Beijing date), as
    /// last counted by this process.
    pub token_requests_today: Family<AccountLabel, Gauge>,
    /// `wxgate_group_dropped_total{group,reason}`: events a consumer group dropped (over its
    /// retention, or nacked without requeue), as counted by this worker.
    pub group_dropped: Family<GroupReason, Counter>,
    /// `wxgate_accounts{origin}`, `wxgate_accounts_version_lost`.
    pub accounts: AccountsMetrics,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerMetrics {
    /// Registers the worker's metrics.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let events = Family::<OutcomeLabel, Counter>::default();
        let dead = Family::<ErrcodeLabel, Counter>::default();
        let send_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let end_to_end_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 18));
        let token_refresh = Family::<AccountResult, Counter>::default();
        let token_requests_today = Family::<AccountLabel, Gauge>::default();
        let group_dropped = Family::<GroupReason, Counter>::default();
        registry.register(
            "wxgate_worker_events",
            "Events settled, by outcome",
            events.clone(),
        );
        registry.register(
            "wxgate_worker_dead",
            "Events parked in the dead-letter queue, by WeChat errcode",
            dead.clone(),
        );
        registry.register(
            "wxgate_worker_send_seconds",
            "Time of one customer-service send call",
            send_seconds.clone(),
        );
        registry.register(
            "wxgate_worker_end_to_end_seconds",
            "Time from the gateway accepting an event to WeChat answering its send",
            end_to_end_seconds.clone(),
        );
        registry.register(
            "wxgate_token_refresh",
            "Access token refreshes, by account and result",
            token_refresh.clone(),
        );
        registry.register(
            "wxgate_token_requests_today",
            "Calls to WeChat's token endpoints today (Beijing date)",
            token_requests_today.clone(),
        );
        registry.register(
            "wxgate_group_dropped",
            "Events consumer groups dropped, by group and reason",
            group_dropped.clone(),
        );
        let accounts = AccountsMetrics::default();
        accounts.register(&mut registry);
        Self {
            registry,
            accounts,
            events,
            dead,
            send_seconds,
            end_to_end_seconds,
            token_refresh,
            token_requests_today,
            group_dropped,
        }
    }

    /// Counts one settled event.
    pub fn event(&self, outcome: &'static str) {
        self.events.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Counts one dead-lettered event.
    pub fn dead_letter(&self, errcode: Option<i64>) {
        let errcode = errcode.map(|c| c.to_string()).unwrap_or_default();
        self.dead.get_or_create(&ErrcodeLabel { errcode }).inc();
    }

    /// The OpenMetrics text exposition, served as [`CONTENT_TYPE`].
    pub fn encode(&self) -> String {
        encode(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`CONTENT_TYPE`] says OpenMetrics; the rendering must be that format, which ends with
    /// `# EOF` (the older Prometheus text format has no such line).
    #[test]
    fn encode_renders_what_content_type_names() {
        assert!(CONTENT_TYPE.starts_with("application/openmetrics-text;"));
        let gateway = GatewayMetrics::new(true);
        gateway.request("demo", "accepted");
        for text in [gateway.encode(), WorkerMetrics::new().encode()] {
            assert!(text.ends_with("# EOF\n"), "{text}");
        }
    }
}

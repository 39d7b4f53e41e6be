//! Redis key names (docs/contract.md §1.1–§1.5). Every key starts with `{ns}:`.

/// The Redis keys of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    ns: String,
}

impl Keys {
    /// Keys under namespace `ns`.
    pub fn new(ns: &str) -> Self {
        Self { ns: ns.to_owned() }
    }

    /// `{ns}:dedup:{event_id}`: the gateway's dedup record.
    pub fn dedup(&self, event_id: &str) -> String {
        // On every callback: built without the formatting machinery.
        let mut key = String::with_capacity(self.ns.len() + 7 + event_id.len());
        key.push_str(&self.ns);
        key.push_str(":dedup:");
        key.push_str(event_id);
        key
    }

    /// `{ns}:sent:{event_id}`: the worker's sent marker.
    pub fn sent(&self, event_id: &str) -> String {
        format!("{}:sent:{event_id}", self.ns)
    }

    /// `{ns}:sent:{event_id}:{part}`: part `part` (from 0) of a reply sent as several
    /// customer-service messages (news, one per article) went out; lets a redelivery resume
    /// after the parts already sent. Same lifetime as [`Keys::sent`].
    pub fn sent_part(&self, event_id: &str, part: usize) -> String {
        format!("{}:sent:{event_id}:{part}", self.ns)
    }

    /// `{ns}:token:{appid}`: the shared access token.
    pub fn token(&self, appid: &str) -> String {
        format!("{}:token:{appid}", self.ns)
    }

    /// `{ns}:token-lock:{appid}`: the single-refresher lock.
    pub fn token_lock(&self, appid: &str) -> String {
        format!("{}:token-lock:{appid}", self.ns)
    }

    /// `{ns}:token-backoff:{appid}`: set while WeChat's token endpoint is failing.
    pub fn token_backoff(&self, appid: &str) -> String {
        format!("{}:token-backoff:{appid}", self.ns)
    }

    /// `{ns}:token-refused:{appid}`: set for a minute after WeChat refused the credentials
    /// (40164 IP not whitelisted, 40125 wrong secret, …), so callers fail fast without
    /// spending the endpoint's daily quota.
    pub fn token_refused(&self, appid: &str) -> String {
        format!("{}:token-refused:{appid}", self.ns)
    }

    /// `{ns}:token-force:{appid}`: set for 30 s after a `force_refresh`.
    pub fn token_force(&self, appid: &str) -> String {
        format!("{}:token-force:{appid}", self.ns)
    }

    /// `{ns}:token-quota:{appid}:{yyyymmdd}`: token endpoint calls per day.
    pub fn token_quota(&self, appid: &str, yyyymmdd: &str) -> String {
        format!("{}:token-quota:{appid}:{yyyymmdd}", self.ns)
    }

    /// `{ns}:ticket:{appid}:jsapi`: the shared JS-SDK ticket.
    pub fn jsapi_ticket(&self, appid: &str) -> String {
        format!("{}:ticket:{appid}:jsapi", self.ns)
    }

    /// `{ns}:ticket-lock:{appid}:jsapi`: the single-refresher lock of the JS-SDK ticket.
    pub fn jsapi_ticket_lock(&self, appid: &str) -> String {
        format!("{}:ticket-lock:{appid}:jsapi", self.ns)
    }

    /// `{ns}:accounts`: runtime accounts, a hash id → JSON.
    pub fn accounts(&self) -> String {
        format!("{}:accounts", self.ns)
    }

    /// `{ns}:accounts:version`: bumped on every runtime account change.
    pub fn accounts_version(&self) -> String {
        format!("{}:accounts:version", self.ns)
    }

    /// `{ns}:accounts:generation`: a random value set whenever `{ns}:accounts:version` is
    /// created (its `INCR` answered 1), so a counter rebuilt after Redis lost its data is
    /// told apart from the old one even when it reaches the same number.
    pub fn accounts_generation(&self) -> String {
        format!("{}:accounts:generation", self.ns)
    }

    /// `{ns}:groups`: consumer groups of the gRPC `Events` API, a hash group name → JSON
    /// (filter, retention, bound routing keys, `created_at_ms`).
    pub fn groups(&self) -> String {
        format!("{}:groups", self.ns)
    }

    /// `{ns}:group-lock:{group}`: held (with a random owner, `PX` 10 s) while a worker reads,
    /// rebinds and rewrites a group's record or deletes the group, so starts and deletes of
    /// one group on several workers run one at a time.
    pub fn group_lock(&self, group: &str) -> String {
        format!("{}:group-lock:{group}", self.ns)
    }
}

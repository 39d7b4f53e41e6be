//! The one configuration of every binary (docs/contract.md §2): a TOML file overridden by
//! `WXGATE__SECTION__KEY` environment variables, validated before anything listens.
//!
//! Loading goes raw → typed: the file is deserialized into `Raw*` structs that refuse unknown
//! keys, then converted into [`Config`], attaching the key path to every error.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use wechat::crypto::AesKey;
use wechat::rules::{RulePath, RuleSpec, Rules};

/// A configuration error. `key` names the offending key (`gateway.listen`, `accounts[2].id`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not have the expected shape (unknown key, wrong type).
    #[error("invalid config: {0}")]
    Syntax(String),
    /// A value is present but not acceptable.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The key path.
        key: String,
        /// What is wrong, without the value when the key is a secret.
        reason: String,
    },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// A secret string (AppSecret, callback token). `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// An account id: `[A-Za-z0-9_-]{1,64}` (no dots: it is part of routing keys).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(String);

/// Why a string is not an [`AccountId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccountIdError {
    /// Empty or longer than 64 bytes.
    #[error("must be 1 to 64 characters")]
    Length,
    /// A character outside `[A-Za-z0-9_-]` (a dot would change routing keys).
    #[error("must match [A-Za-z0-9_-]")]
    Characters,
}

impl AccountId {
    /// Checks the syntax of an account id.
    pub fn parse(id: &str) -> Result<Self, AccountIdError> {
        if id.is_empty() || id.len() > 64 {
            return Err(AccountIdError::Length);
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(AccountIdError::Characters);
        }
        Ok(Self(id.to_owned()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How an account's callbacks are encrypted (docs/protocol.md §1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// 明文: plain XML only.
    Plain,
    /// 兼容: plain and encrypted both accepted.
    Compat,
    /// 安全: encrypted only.
    Safe,
}

/// RabbitMQ queue type of `{ns}.worker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Replicated quorum queue (default).
    Quorum,
    /// Classic queue.
    Classic,
}

impl QueueType {
    /// The `x-queue-type` argument value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quorum => "quorum",
            Self::Classic => "classic",
        }
    }
}

/// Which WeChat token endpoint refreshes access tokens (docs/contract.md §1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenMode {
    /// `POST /cgi-bin/stable_token` (default).
    Stable,
    /// `GET /cgi-bin/token`.
    Classic,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Prefix of every RabbitMQ name (`{ns}.…`) and Redis key (`{ns}:…`).
    pub namespace: String,
    /// `[redis]`.
    pub redis: RedisConfig,
    /// `[rabbitmq]`.
    pub rabbitmq: RabbitConfig,
    /// `[gateway]`.
    pub gateway: GatewayConfig,
    /// `[worker]`.
    pub worker: WorkerConfig,
    /// `[wechat]`.
    pub wechat: WechatConfig,
    /// `[[accounts]]`, ids unique. Read-only after load: [`Config::account`] looks ids up in
    /// an index built by [`Config::load`].
    pub accounts: Vec<Account>,
    /// `[[api_keys]]`.
    pub api_keys: Vec<ApiKey>,
    /// Position in `accounts` by id, for [`Config::account`] (10,000 accounts is a test case).
    index: HashMap<String, usize>,
}

/// How wxgate reaches Redis (`redis.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One server (`redis.url`, or a `redis.urls` of one), default.
    Standalone,
    /// A Redis Cluster: `redis.urls` (or `redis.url`) are seed nodes; the client learns the
    /// rest and follows slot moves and failovers.
    Cluster,
    /// A master found through Sentinel: `redis.urls` are the sentinels, `redis.sentinel_master`
    /// the master's name; the client moves to the new master after a failover.
    Sentinel,
}

impl RedisMode {
    /// The config value (`standalone`, `cluster`, `sentinel`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::Cluster => "cluster",
            Self::Sentinel => "sentinel",
        }
    }
}

/// `[redis]`.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db`: the server in standalone mode, else the first of
    /// [`RedisConfig::urls`]. May contain a password: never log it.
    pub url: String,
    /// Standalone, cluster or sentinel.
    pub mode: RedisMode,
    /// Every URL to try: `[url]` in standalone mode, the seed nodes of a cluster, the
    /// sentinels. Never empty.
    pub urls: Vec<String>,
    /// The master's name known to the sentinels (sentinel mode only).
    pub sentinel_master: Option<String>,
}

impl RedisConfig {
    /// Standalone Redis at `url` (no validation: for tools and tests that build a config by
    /// hand).
    pub fn standalone(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            mode: RedisMode::Standalone,
            urls: vec![url.to_owned()],
            sentinel_master: None,
        }
    }
}

/// `[rabbitmq]`.
#[derive(Debug, Clone)]
pub struct RabbitConfig {
    /// `amqp://user:pass@host:port/vhost`: the first of [`RabbitConfig::urls`]. Contains a
    /// password: never log it.
    pub url: String,
    /// The nodes of the cluster (or the one node): a process connects to one and moves to
    /// the next when it goes away. Never empty.
    pub urls: Vec<String>,
    /// Queue type of every durable queue (`{ns}.worker`, its retry queues, `{ns}.worker.dead`).
    pub queue_type: QueueType,
}

/// `[gateway]`.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Address of the callback listener.
    pub listen: SocketAddr,
    /// Route prefix, `/wx` by default; starts with `/`, no trailing `/`.
    pub path_prefix: String,
    /// Time budget of one callback (< 5 s).
    pub request_budget: Duration,
    /// Time allowed for a publisher confirm.
    pub publish_timeout: Duration,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Allowed clock skew of `timestamp`; `None` turns the check off.
    pub timestamp_window: Option<Duration>,
    /// How long a stored answer is kept for WeChat's retries.
    pub dedup_ttl: Duration,
    /// Whether metrics carry an `account` label.
    pub metrics_per_account: bool,
    /// Threads that serve callbacks (`gateway.threads`, 0..=256, default 1). `1` runs the
    /// whole gateway on one thread (a current-thread runtime): no cross-thread wake-ups, the
    /// least CPU per callback, one core at most. `N > 1` is a work-stealing runtime with `N`
    /// threads; `0` one thread per CPU. Scale past one core with more threads or processes.
    pub threads: usize,
    /// Connections open at most (`gateway.max_connections`, default 16,384); further ones
    /// wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Time a connection has to send a request's complete headers; also how long an idle
    /// keep-alive connection is kept (`gateway.header_timeout_ms`, default 10,000).
    pub header_timeout: Duration,
    /// Length of the listen queue asked of the kernel (`gateway.listen_backlog`, default
    /// 1024); the kernel caps it at `net.core.somaxconn`.
    pub listen_backlog: u32,
}

/// `[worker]`.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Address of the worker's `/healthz`, `/readyz`, `/metrics` listener.
    pub http_listen: SocketAddr,
    /// Address of the gRPC API.
    pub grpc_listen: SocketAddr,
    /// Connections open at most on `http_listen` (`worker.http_max_connections`, default
    /// 16,384); further ones wait in the listen backlog.
    pub http_max_connections: usize,
    /// Time a connection to `http_listen` has to send complete request headers, and how
    /// long an idle one is kept (`worker.http_header_timeout_ms`, default 10,000).
    pub http_header_timeout: Duration,
    /// Connections open at most on `grpc_listen` (`worker.grpc_max_connections`, default
    /// 16,384); further ones wait in the listen backlog.
    pub grpc_max_connections: usize,
    /// Time a new connection to `grpc_listen` has to send its first bytes, the HTTP/2
    /// preface or a TLS ClientHello (`worker.grpc_preface_timeout_ms`, default 10,000).
    pub grpc_preface_timeout: Duration,
    /// Length of the listen queue of `http_listen` and `grpc_listen` asked of the kernel
    /// (`worker.listen_backlog`, default 1024); the kernel caps it at `net.core.somaxconn`.
    pub listen_backlog: u32,
    /// AMQP prefetch of the `{ns}.worker` consumer.
    pub prefetch: u16,
    /// Events in progress at most.
    pub concurrency: usize,
    /// Delay of each retry queue `{ns}.worker.retry.{i}`; never empty.
    pub retry_delays: Vec<Duration>,
    /// Attempts before an event is dead-lettered (>= 1).
    pub max_attempts: u32,
    /// Lifetime of `{ns}:sent:{event_id}` markers.
    pub sent_ttl: Duration,
    /// TLS for the gRPC API (`worker.grpc_tls_cert` and `worker.grpc_tls_key`, PEM files);
    /// `None` serves plain HTTP/2.
    pub grpc_tls: Option<GrpcTls>,
    /// Default retention of each consumer group's queue: at most this many events
    /// (`x-max-length`; the oldest are dropped beyond it).
    pub group_max_length: u64,
    /// Default retention of each consumer group's queue: events older than this are dropped
    /// (`x-message-ttl`).
    pub group_message_ttl: Duration,
}

/// TLS of the gRPC API. Paths are checked to exist at load; their contents are read (and
/// refused with a clear error when they are not PEM) when the worker starts.
#[derive(Debug, Clone)]
pub struct GrpcTls {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// `[wechat]`.
#[derive(Debug, Clone)]
pub struct WechatConfig {
    /// Base URL of WeChat's API (the simulator in tests), without a trailing `/`.
    pub api_base: String,
    /// Token endpoint used for refreshes.
    pub token_mode: TokenMode,
    /// A token with less than this left is refreshed ahead of time.
    pub refresh_ahead: Duration,
    /// Timeout of every WeChat API call.
    pub http_timeout: Duration,
    /// Base URL of `showqrcode` (QR code images), without a trailing `/`.
    pub mp_base: String,
    /// Base URL of the OAuth authorize page users open, without a trailing `/`.
    pub open_base: String,
}

/// One Official Account.
#[derive(Debug, Clone)]
pub struct Account {
    /// The id in `/wx/{id}` and in routing keys.
    pub id: AccountId,
    /// WeChat AppID.
    pub appid: String,
    /// AppSecret.
    pub secret: Secret,
    /// The callback Token.
    pub token: Secret,
    /// The AES key (required for compat and safe).
    pub aes_key: Option<AesKey>,
    /// Encryption mode.
    pub mode: Mode,
    /// Token accepted on inbound callbacks during rotation.
    pub previous_token: Option<Secret>,
    /// AES key accepted on inbound callbacks during rotation.
    pub previous_aes_key: Option<AesKey>,
    /// Rules answered in the HTTP response.
    pub passive: Rules,
    /// Rules answered later by the worker.
    pub custom: Rules,
    /// `passive` as written (for `Accounts.Get`).
    pub passive_specs: Vec<RuleSpec>,
    /// `custom` as written (for `Accounts.Get`).
    pub custom_specs: Vec<RuleSpec>,
}

/// One gRPC API key.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// Name, for logs.
    pub name: String,
    /// Lower-case hex SHA-256 of the bearer key.
    pub sha256: String,
    /// Accounts the key may act for; `["*"]` means all and Accounts admin.
    pub accounts: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    namespace: Option<String>,
    #[serde(default)]
    redis: RawRedis,
    #[serde(default)]
    rabbitmq: RawRabbit,
    #[serde(default)]
    gateway: RawGateway,
    #[serde(default)]
    worker: RawWorker,
    #[serde(default)]
    wechat: RawWechat,
    #[serde(default)]
    accounts: Vec<AccountSpec>,
    #[serde(default)]
    api_keys: Vec<RawApiKey>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: Option<String>,
    mode: Option<RedisMode>,
    urls: Option<Vec<String>>,
    sentinel_master: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRabbit {
    url: Option<String>,
    urls: Option<Vec<String>>,
    queue_type: Option<QueueType>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    listen: Option<String>,
    path_prefix: Option<String>,
    request_budget_ms: Option<u64>,
    publish_timeout_ms: Option<u64>,
    max_body_bytes: Option<u64>,
    timestamp_window_s: Option<u64>,
    dedup_ttl_s: Option<u64>,
    metrics_per_account: Option<bool>,
    threads: Option<u64>,
    max_connections: Option<u64>,
    header_timeout_ms: Option<u64>,
    listen_backlog: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorker {
    http_listen: Option<String>,
    grpc_listen: Option<String>,
    http_max_connections: Option<u64>,
    http_header_timeout_ms: Option<u64>,
    grpc_max_connections: Option<u64>,
    grpc_preface_timeout_ms: Option<u64>,
    listen_backlog: Option<u64>,
    prefetch: Option<u64>,
    concurrency: Option<u64>,
    retry_delays_ms: Option<Vec<u64>>,
    max_attempts: Option<u64>,
    sent_ttl_s: Option<u64>,
    grpc_tls_cert: Option<String>,
    grpc_tls_key: Option<String>,
    grpc_tls_client_ca: Option<String>,
    group_max_length: Option<u64>,
    group_message_ttl_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWechat {
    api_base: Option<String>,
    token_mode: Option<TokenMode>,
    refresh_ahead_s: Option<u64>,
    http_timeout_ms: Option<u64>,
    mp_base: Option<String>,
    open_base: Option<String>,
}

/// One account as written: an `[[accounts]]` table of the config file, and the JSON of a
/// runtime account in `{ns}:accounts` (docs/contract.md §1.5). [`AccountSpec::validate`] is
/// the one validation of both.
///
/// Holds secrets in the clear (it is what Redis stores): `Debug` redacts them, and it must
/// never be logged otherwise.
#[derive(Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSpec {
    /// `[A-Za-z0-9_-]{1,64}`.
    pub id: String,
    /// WeChat AppID, 1 to 64 printable ASCII characters.
    pub appid: String,
    /// AppSecret; may be empty (no access tokens then).
    #[serde(default)]
    pub secret: String,
    /// The callback Token, 1 to 128 characters.
    pub token: String,
    /// 43 characters; required unless `mode` is plain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_aes_key: Option<String>,
    /// `safe` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Token also accepted on inbound callbacks during rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_token: Option<String>,
    /// AES key also accepted on inbound callbacks during rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_encoding_aes_key: Option<String>,
    /// Rules answered in the HTTP response.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passive: Vec<RuleSpec>,
    /// Rules answered later by the worker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom: Vec<RuleSpec>,
}

impl fmt::Debug for AccountSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |present: bool| if present { "[redacted]" } else { "" };
        f.debug_struct("AccountSpec")
            .field("id", &self.id)
            .field("appid", &self.appid)
            .field("secret", &redacted(!self.secret.is_empty()))
            .field("token", &redacted(!self.token.is_empty()))
            .field(
                "encoding_aes_key",
                &redacted(self.encoding_aes_key.is_some()),
            )
            .field("mode", &self.mode)
            .field("previous_token", &redacted(self.previous_token.is_some()))
            .field(
                "previous_encoding_aes_key",
                &redacted(self.previous_encoding_aes_key.is_some()),
            )
            .field("passive", &self.passive)
            .field("custom", &self.custom)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKey {
    name: String,
    sha256: String,
    #[serde(default)]
    accounts: Vec<String>,
}

/// How an environment override is typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnvKind {
    Str,
    Int,
    Bool,
    IntList,
    /// Comma-separated in the environment (`a,b`); `[…]` around the list is allowed.
    StrList,
}

/// Every key that `WXGATE__SECTION__KEY` can override: each scalar key of the `Raw*` structs
/// (a test reads them off the structs and compares). Accounts and API keys come from the
/// file only (they are tables in arrays).
const ENV_KEYS: &[(&str, &str, EnvKind)] = &[
    ("", "namespace", EnvKind::Str),
    ("redis", "url", EnvKind::Str),
    ("redis", "mode", EnvKind::Str),
    ("redis", "urls", EnvKind::StrList),
    ("redis", "sentinel_master", EnvKind::Str),
    ("rabbitmq", "url", EnvKind::Str),
    ("rabbitmq", "urls", EnvKind::StrList),
    ("rabbitmq", "queue_type", EnvKind::Str),
    ("gateway", "listen", EnvKind::Str),
    ("gateway", "path_prefix", EnvKind::Str),
    ("gateway", "request_budget_ms", EnvKind::Int),
    ("gateway", "publish_timeout_ms", EnvKind::Int),
    ("gateway", "max_body_bytes", EnvKind::Int),
    ("gateway", "timestamp_window_s", EnvKind::Int),
    ("gateway", "dedup_ttl_s", EnvKind::Int),
    ("gateway", "metrics_per_account", EnvKind::Bool),
    ("gateway", "threads", EnvKind::Int),
    ("gateway", "max_connections", EnvKind::Int),
    ("gateway", "header_timeout_ms", EnvKind::Int),
    ("gateway", "listen_backlog", EnvKind::Int),
    ("worker", "http_listen", EnvKind::Str),
    ("worker", "grpc_listen", EnvKind::Str),
    ("worker", "http_max_connections", EnvKind::Int),
    ("worker", "http_header_timeout_ms", EnvKind::Int),
    ("worker", "grpc_max_connections", EnvKind::Int),
    ("worker", "grpc_preface_timeout_ms", EnvKind::Int),
    ("worker", "listen_backlog", EnvKind::Int),
    ("worker", "prefetch", EnvKind::Int),
    ("worker", "concurrency", EnvKind::Int),
    ("worker", "retry_delays_ms", EnvKind::IntList),
    ("worker", "max_attempts", EnvKind::Int),
    ("worker", "sent_ttl_s", EnvKind::Int),
    ("worker", "grpc_tls_cert", EnvKind::Str),
    ("worker", "grpc_tls_key", EnvKind::Str),
    ("worker", "grpc_tls_client_ca", EnvKind::Str),
    ("worker", "group_max_length", EnvKind::Int),
    ("worker", "group_message_ttl_s", EnvKind::Int),
    ("wechat", "api_base", EnvKind::Str),
    ("wechat", "token_mode", EnvKind::Str),
    ("wechat", "refresh_ahead_s", EnvKind::Int),
    ("wechat", "http_timeout_ms", EnvKind::Int),
    ("wechat", "mp_base", EnvKind::Str),
    ("wechat", "open_base", EnvKind::Str),
];

impl Config {
    /// Reads `path`, applies the environment overrides found through `env`
    /// (pass `|k| std::env::var(k).ok()` in binaries, a map in tests) and validates.
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, env)
    }

    /// Like [`Config::load`], from the TOML text itself.
    pub fn from_toml(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax(e.message().to_owned()))?;
        apply_env(&mut table, &env)?;
        let raw: RawConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Syntax(e.message().to_owned()))?;
        Self::try_from(raw)
    }

    /// The account with this id, if configured.
    pub fn account(&self, id: &str) -> Option<&Account> {
        self.accounts.get(*self.index.get(id)?)
    }

    /// Bounds for parsing a callback's XML: at most `gateway.max_body_bytes`, with the
    /// parser's default depth and element count. The gateway parses callbacks with them and
    /// the worker re-parses each event's `raw_xml` with them, so the worker never refuses an
    /// event the gateway accepted (the XML is never longer than the body it came in).
    pub fn message_limits(&self) -> wechat::Limits {
        wechat::Limits {
            max_bytes: self.gateway.max_body_bytes,
            ..wechat::Limits::default()
        }
    }
}

fn apply_env(
    table: &mut toml::Table,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let mut set_by_env: Vec<(&str, &str)> = Vec::new();
    for &(section, key, kind) in ENV_KEYS {
        let var = if section.is_empty() {
            format!("WXGATE__{}", key.to_ascii_uppercase())
        } else {
            format!(
                "WXGATE__{}__{}",
                section.to_ascii_uppercase(),
                key.to_ascii_uppercase()
            )
        };
        let Some(text) = env(&var) else { continue };
        let key_path = key_path(section, key);
        let value = match kind {
            EnvKind::Str => toml::Value::String(text),
            EnvKind::Int => toml::Value::Integer(text.trim().parse().map_err(|_| {
                ConfigError::invalid(&key_path, format!("{var} must be an integer"))
            })?),
            EnvKind::Bool => toml::Value::Boolean(text.trim().parse().map_err(|_| {
                ConfigError::invalid(&key_path, format!("{var} must be true or false"))
            })?),
            EnvKind::IntList => {
                let items = text
                    .trim()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse::<i64>().map(toml::Value::Integer))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| {
                        ConfigError::invalid(
                            &key_path,
                            format!("{var} must be a comma-separated list of integers"),
                        )
                    })?;
                toml::Value::Array(items)
            }
            EnvKind::StrList => toml::Value::Array(
                text.trim()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            ),
        };
        let target = if section.is_empty() {
            &mut *table
        } else {
            let entry = table
                .entry(section.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => t,
                _ => return Err(ConfigError::invalid(section, "must be a table")),
            }
        };
        // `url` and `urls` are two spellings of one setting: the one the environment gives
        // replaces the other from the file (given both ways in the environment, loading says
        // so).
        if matches!(section, "redis" | "rabbitmq") {
            let other = match key {
                "url" => Some("urls"),
                "urls" => Some("url"),
                _ => None,
            };
            if let Some(other) = other
                && !set_by_env.contains(&(section, other))
            {
                target.remove(other);
            }
        }
        set_by_env.push((section, key));
        target.insert(key.to_owned(), value);
    }
    Ok(())
}

/// `section.key`, or `key` for a top-level key.
fn key_path(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_owned()
    } else {
        format!("{section}.{key}")
    }
}

/// `value` of `key` if it lies in `range`, converted to the type the config holds. The one
/// range check of every bounded numeric key: the error names the key and both bounds.
/// [`in_range`] for a duration key in milliseconds (`…_ms`).
fn millis_in(key: &str, value: u64, range: RangeInclusive<u64>) -> Result<Duration, ConfigError> {
    in_range(key, value, range).map(Duration::from_millis)
}

/// [`in_range`] for a duration key in seconds (`…_s`).
fn secs_in(key: &str, value: u64, range: RangeInclusive<u64>) -> Result<Duration, ConfigError> {
    in_range(key, value, range).map(Duration::from_secs)
}

fn in_range<T: TryFrom<u64>>(
    key: &str,
    value: u64,
    range: RangeInclusive<u64>,
) -> Result<T, ConfigError> {
    let out_of_range = || {
        ConfigError::invalid(
            key,
            format!("must be between {} and {}", range.start(), range.end()),
        )
    };
    if !range.contains(&value) {
        return Err(out_of_range());
    }
    T::try_from(value).map_err(|_| out_of_range())
}

/// Refuses `key` with `reason` unless `holds`.
fn ensure(holds: bool, key: &str, reason: &str) -> Result<(), ConfigError> {
    if holds {
        Ok(())
    } else {
        Err(ConfigError::invalid(key, reason))
    }
}

/// `value` of `key` if it starts with one of `schemes`.
fn with_scheme(key: &str, value: &str, schemes: &[&str]) -> Result<String, ConfigError> {
    ensure(
        schemes.iter().any(|scheme| value.starts_with(scheme)),
        key,
        &format!("must start with {}", schemes.join(" or ")),
    )?;
    Ok(value.to_owned())
}

fn addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError::invalid(key, "must be an address like 0.0.0.0:8080"))
}

fn parse_aes_key(key: &str, value: &str) -> Result<AesKey, ConfigError> {
    AesKey::from_encoding_aes_key(value).map_err(|e| {
        ConfigError::invalid(key, format!("{e} (expected 43 characters of [A-Za-z0-9])"))
    })
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let namespace = namespace(raw.namespace)?;
        let redis = redis(raw.redis)?;
        let rabbitmq = rabbitmq(raw.rabbitmq)?;
        let gateway = gateway(raw.gateway)?;
        let worker = worker(raw.worker)?;
        let wechat = wechat(raw.wechat)?;
        let accounts = accounts(raw.accounts)?;
        let index = accounts
            .iter()
            .enumerate()
            .map(|(i, a)| (a.id.as_str().to_owned(), i))
            .collect();
        let api_keys = api_keys(raw.api_keys)?;
        Ok(Config {
            namespace,
            redis,
            rabbitmq,
            gateway,
            worker,
            wechat,
            accounts,
            api_keys,
            index,
        })
    }
}

/// The top-level `namespace`.
fn namespace(raw: Option<String>) -> Result<String, ConfigError> {
    let namespace = raw.unwrap_or_else(|| "wxgate".to_owned());
    let valid = (1..=64).contains(&namespace.len())
        && namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ensure(
        valid,
        "namespace",
        "must be 1 to 64 characters of [A-Za-z0-9_-]",
    )?;
    Ok(namespace)
}

/// `[redis]`.
fn redis(raw: RawRedis) -> Result<RedisConfig, ConfigError> {
    let mode = raw.mode.unwrap_or(RedisMode::Standalone);
    let urls = match (mode, raw.url, raw.urls) {
        (_, Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                "redis.urls",
                "give redis.url or redis.urls, not both",
            ));
        }
        // One URL in the list form is a standalone server too, so that a deployment can set
        // `WXGATE__REDIS__URLS` whatever the mode (the compose file does).
        (RedisMode::Standalone, _, Some(urls)) if urls.len() > 1 => {
            return Err(ConfigError::invalid(
                "redis.urls",
                "lists several servers but redis.mode is \"standalone\", which takes one: set redis.mode = \"cluster\" or \"sentinel\"",
            ));
        }
        (RedisMode::Sentinel, _, None) => {
            return Err(ConfigError::invalid(
                "redis.urls",
                "must list the sentinels (redis://host:26379) when redis.mode = \"sentinel\"",
            ));
        }
        (_, _, Some(urls)) => urls,
        (_, url, None) => vec![url.unwrap_or_else(|| "redis://127.0.0.1:6379/0".to_owned())],
    };
    ensure(!urls.is_empty(), "redis.urls", "must not be empty")?;
    let key = if mode == RedisMode::Standalone {
        "redis.url"
    } else {
        "redis.urls"
    };
    for url in &urls {
        // TLS to Redis (`rediss://`) is not built in: refused here rather than at connect time.
        with_scheme(key, url, &["redis://"])?;
        // Parsed, not connected: a bad host, port or database fails here, before anything
        // listens. The reason never repeats the URL (it may hold a password).
        let info = redis::IntoConnectionInfo::into_connection_info(url.as_str());
        ensure(
            info.is_ok(),
            key,
            "is not a Redis URL this build can use (redis://[:password@]host[:port][/db])",
        )?;
        if mode == RedisMode::Cluster {
            ensure(
                info.is_ok_and(|info| info.redis_settings().db() == 0),
                key,
                "names a database other than 0: a Redis Cluster has only database 0",
            )?;
        }
    }
    let sentinel_master = match (mode, raw.sentinel_master) {
        (RedisMode::Sentinel, Some(name)) => {
            ensure(
                !name.trim().is_empty(),
                "redis.sentinel_master",
                "must name the master the sentinels watch",
            )?;
            Some(name)
        }
        (RedisMode::Sentinel, None) => {
            return Err(ConfigError::invalid(
                "redis.sentinel_master",
                "must name the master the sentinels watch when redis.mode = \"sentinel\"",
            ));
        }
        (_, Some(_)) => {
            return Err(ConfigError::invalid(
                "redis.sentinel_master",
                "is only for redis.mode = \"sentinel\"",
            ));
        }
        (_, None) => None,
    };
    Ok(RedisConfig {
        url: urls[0].clone(),
        mode,
        urls,
        sentinel_master,
    })
}

/// `[rabbitmq]`.
fn rabbitmq(raw: RawRabbit) -> Result<RabbitConfig, ConfigError> {
    let (key, urls) = match (raw.url, raw.urls) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                "rabbitmq.urls",
                "give rabbitmq.url or rabbitmq.urls, not both",
            ));
        }
        (None, Some(urls)) => ("rabbitmq.urls", urls),
        (url, None) => (
            "rabbitmq.url",
            vec![url.unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())],
        ),
    };
    ensure(
        !urls.is_empty(),
        key,
        "must list at least one node (amqp://user:pass@host:5672/vhost)",
    )?;
    for url in &urls {
        with_scheme(key, url, &["amqp://", "amqps://"])?;
    }
    Ok(RabbitConfig {
        url: urls[0].clone(),
        urls,
        queue_type: raw.queue_type.unwrap_or(QueueType::Quorum),
    })
}

/// `[gateway]`.
fn gateway(raw: RawGateway) -> Result<GatewayConfig, ConfigError> {
    let path_prefix = raw.path_prefix.unwrap_or_else(|| "/wx".to_owned());
    ensure(
        path_prefix.starts_with('/') && !path_prefix.ends_with('/') && !path_prefix.contains("//"),
        "gateway.path_prefix",
        "must start with / and not end with /",
    )?;
    let gateway = GatewayConfig {
        listen: addr(
            "gateway.listen",
            raw.listen.as_deref().unwrap_or("0.0.0.0:8080"),
        )?,
        path_prefix,
        // WeChat gives up on a callback after 5 s.
        request_budget: millis_in(
            "gateway.request_budget_ms",
            raw.request_budget_ms.unwrap_or(3000),
            100..=4999,
        )?,
        publish_timeout: millis_in(
            "gateway.publish_timeout_ms",
            raw.publish_timeout_ms.unwrap_or(2000),
            10..=4999,
        )?,
        max_body_bytes: in_range(
            "gateway.max_body_bytes",
            raw.max_body_bytes.unwrap_or(65536),
            256..=16 * 1024 * 1024,
        )?,
        timestamp_window: match raw.timestamp_window_s.unwrap_or(300) {
            0 => None,
            s => Some(Duration::from_secs(s)),
        },
        // WeChat's retries of one callback span about 15 s.
        dedup_ttl: secs_in(
            "gateway.dedup_ttl_s",
            raw.dedup_ttl_s.unwrap_or(600),
            30..=7 * 86400,
        )?,
        metrics_per_account: raw.metrics_per_account.unwrap_or(true),
        // 0 is one thread per CPU.
        threads: in_range("gateway.threads", raw.threads.unwrap_or(1), 0..=256)?,
        max_connections: in_range(
            "gateway.max_connections",
            raw.max_connections.unwrap_or(16_384),
            1..=1_048_576,
        )?,
        header_timeout: millis_in(
            "gateway.header_timeout_ms",
            raw.header_timeout_ms.unwrap_or(10_000),
            100..=60_000,
        )?,
        listen_backlog: in_range(
            "gateway.listen_backlog",
            raw.listen_backlog.unwrap_or(1024),
            1..=65_535,
        )?,
    };
    ensure(
        gateway.publish_timeout < gateway.request_budget,
        "gateway.publish_timeout_ms",
        "must be less than gateway.request_budget_ms",
    )?;
    Ok(gateway)
}

/// `[worker]`.
fn worker(raw: RawWorker) -> Result<WorkerConfig, ConfigError> {
    let retry_delays_ms = raw
        .retry_delays_ms
        .unwrap_or_else(|| vec![1000, 5000, 30000, 120000, 600000]);
    ensure(
        (1..=32).contains(&retry_delays_ms.len()),
        "worker.retry_delays_ms",
        "must list 1 to 32 delays",
    )?;
    let retry_delays = retry_delays_ms
        .iter()
        .enumerate()
        .map(|(i, &delay)| {
            let key = format!("worker.retry_delays_ms[{i}]");
            in_range(&key, delay, 1..=86_400_000).map(Duration::from_millis)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(WorkerConfig {
        http_listen: addr(
            "worker.http_listen",
            raw.http_listen.as_deref().unwrap_or("127.0.0.1:9091"),
        )?,
        grpc_listen: addr(
            "worker.grpc_listen",
            raw.grpc_listen.as_deref().unwrap_or("0.0.0.0:50051"),
        )?,
        http_max_connections: in_range(
            "worker.http_max_connections",
            raw.http_max_connections.unwrap_or(16_384),
            1..=1_048_576,
        )?,
        http_header_timeout: millis_in(
            "worker.http_header_timeout_ms",
            raw.http_header_timeout_ms.unwrap_or(10_000),
            100..=60_000,
        )?,
        grpc_max_connections: in_range(
            "worker.grpc_max_connections",
            raw.grpc_max_connections.unwrap_or(16_384),
            1..=1_048_576,
        )?,
        grpc_preface_timeout: millis_in(
            "worker.grpc_preface_timeout_ms",
            raw.grpc_preface_timeout_ms.unwrap_or(10_000),
            100..=60_000,
        )?,
        listen_backlog: in_range(
            "worker.listen_backlog",
            raw.listen_backlog.unwrap_or(1024),
            1..=65_535,
        )?,
        prefetch: in_range("worker.prefetch", raw.prefetch.unwrap_or(256), 1..=65535)?,
        concurrency: in_range(
            "worker.concurrency",
            raw.concurrency.unwrap_or(64),
            1..=65536,
        )?,
        retry_delays,
        max_attempts: in_range(
            "worker.max_attempts",
            raw.max_attempts.unwrap_or(6),
            1..=1000,
        )?,
        sent_ttl: secs_in(
            "worker.sent_ttl_s",
            raw.sent_ttl_s.unwrap_or(86400),
            60..=30 * 86400,
        )?,
        grpc_tls: grpc_tls(
            raw.grpc_tls_cert.as_deref(),
            raw.grpc_tls_key.as_deref(),
            raw.grpc_tls_client_ca.as_deref(),
        )?,
        group_max_length: in_range(
            "worker.group_max_length",
            raw.group_max_length.unwrap_or(1_000_000),
            1..=100_000_000,
        )?,
        group_message_ttl: secs_in(
            "worker.group_message_ttl_s",
            raw.group_message_ttl_s.unwrap_or(604_800),
            1..=90 * 86400,
        )?,
    })
}

/// `worker.grpc_tls_*`: cert and key both or neither; a client CA only with them.
fn grpc_tls(
    cert: Option<&str>,
    key: Option<&str>,
    client_ca: Option<&str>,
) -> Result<Option<GrpcTls>, ConfigError> {
    let existing = |key: &str, path: &str| -> Result<PathBuf, ConfigError> {
        ensure(Path::new(path).is_file(), key, "names no readable file")?;
        Ok(PathBuf::from(path))
    };
    match (cert, key) {
        (None, None) => {
            ensure(
                client_ca.is_none(),
                "worker.grpc_tls_client_ca",
                "needs worker.grpc_tls_cert and worker.grpc_tls_key",
            )?;
            Ok(None)
        }
        (Some(cert), Some(key)) => Ok(Some(GrpcTls {
            cert: existing("worker.grpc_tls_cert", cert)?,
            key: existing("worker.grpc_tls_key", key)?,
            client_ca: client_ca
                .map(|ca| existing("worker.grpc_tls_client_ca", ca))
                .transpose()?,
        })),
        (Some(_), None) => Err(ConfigError::Invalid {
            key: "worker.grpc_tls_key".to_owned(),
            reason: "must be set with worker.grpc_tls_cert (both or neither)".to_owned(),
        }),
        (None, Some(_)) => Err(ConfigError::Invalid {
            key: "worker.grpc_tls_cert".to_owned(),
            reason: "must be set with worker.grpc_tls_key (both or neither)".to_owned(),
        }),
    }
}

/// `[wechat]`.
fn wechat(raw: RawWechat) -> Result<WechatConfig, ConfigError> {
    let api_base = raw
        .api_base
        .as_deref()
        .unwrap_or("https://api.weixin.qq.com")
        .trim_end_matches('/');
    Ok(WechatConfig {
        api_base: with_scheme("wechat.api_base", api_base, &["http://", "https://"])?,
        token_mode: raw.token_mode.unwrap_or(TokenMode::Stable),
        refresh_ahead: secs_in(
            "wechat.refresh_ahead_s",
            raw.refresh_ahead_s.unwrap_or(300),
            0..=3600,
        )?,
        http_timeout: millis_in(
            "wechat.http_timeout_ms",
            raw.http_timeout_ms.unwrap_or(5000),
            10..=120_000,
        )?,
        mp_base: with_scheme(
            "wechat.mp_base",
            raw.mp_base
                .as_deref()
                .unwrap_or("https://mp.weixin.qq.com")
                .trim_end_matches('/'),
            &["http://", "https://"],
        )?,
        open_base: with_scheme(
            "wechat.open_base",
            raw.open_base
                .as_deref()
                .unwrap_or("https://open.weixin.qq.com")
                .trim_end_matches('/'),
            &["http://", "https://"],
        )?,
    })
}

/// `[[accounts]]`: each valid, ids unique.
fn accounts(raw: Vec<AccountSpec>) -> Result<Vec<Account>, ConfigError> {
    let mut seen = HashSet::new();
    raw.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let account = a.validate(&format!("accounts[{i}]"))?;
            if !seen.insert(account.id.clone()) {
                return Err(ConfigError::invalid(
                    format!("accounts[{i}].id"),
                    format!("duplicate account id {}", account.id),
                ));
            }
            Ok(account)
        })
        .collect()
}

/// `[[api_keys]]`: 64 hex characters of SHA-256 and well-formed account ids (not necessarily in
/// the file: accounts added at run time may be named before they exist).
fn api_keys(raw: Vec<RawApiKey>) -> Result<Vec<ApiKey>, ConfigError> {
    raw.into_iter()
        .enumerate()
        .map(|(i, k)| {
            if k.sha256.len() != 64 || !k.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError::invalid(
                    format!("api_keys[{i}].sha256"),
                    "must be 64 hex characters",
                ));
            }
            // Accounts added at run time are not in the file: any well-formed id may be named
            // (a typo shows as NOT_FOUND for that key's calls).
            for (j, acc) in k.accounts.iter().enumerate() {
                if acc != "*" {
                    AccountId::parse(acc).map_err(|e| {
                        ConfigError::invalid(format!("api_keys[{i}].accounts[{j}]"), e.to_string())
                    })?;
                }
            }
            Ok(ApiKey {
                name: k.name,
                sha256: k.sha256.to_ascii_lowercase(),
                accounts: k.accounts,
            })
        })
        .collect()
}

impl AccountSpec {
    /// Validates this account into an [`Account`]: the id syntax, the appid, the token
    /// lengths, the AES keys (43 characters), the mode rules (compat and safe need a key), the
    /// `previous_*` keys, and compiles the rules. Errors name the key as `{prefix}.{field}`
    /// (`accounts[2].encoding_aes_key` for the file, `account.encoding_aes_key` for the
    /// API; just `{field}` when `prefix` is empty); the reasons never contain a secret.
    ///
    /// Does not check that the id is unique: the caller knows the other accounts.
    pub fn validate(&self, prefix: &str) -> Result<Account, ConfigError> {
        let key = |field: &str| {
            if prefix.is_empty() {
                field.to_owned()
            } else {
                format!("{prefix}.{field}")
            }
        };
        let a = self;
        let id =
            AccountId::parse(&a.id).map_err(|e| ConfigError::invalid(key("id"), e.to_string()))?;
        if a.appid.is_empty()
            || a.appid.len() > 64
            || !a.appid.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ConfigError::invalid(
                key("appid"),
                "must be 1 to 64 printable ASCII characters",
            ));
        }
        if a.token.is_empty() || a.token.len() > 128 {
            return Err(ConfigError::invalid(
                key("token"),
                "must be 1 to 128 characters",
            ));
        }
        let mode = a.mode.unwrap_or(Mode::Safe);
        let aes_key = a
            .encoding_aes_key
            .as_deref()
            .map(|k| parse_aes_key(&key("encoding_aes_key"), k))
            .transpose()?;
        if mode != Mode::Plain && aes_key.is_none() {
            return Err(ConfigError::invalid(
                key("encoding_aes_key"),
                "is required for compat and safe mode",
            ));
        }
        let previous_aes_key = a
            .previous_encoding_aes_key
            .as_deref()
            .map(|k| parse_aes_key(&key("previous_encoding_aes_key"), k))
            .transpose()?;
        if let Some(t) = &a.previous_token
            && (t.is_empty() || t.len() > 128)
        {
            return Err(ConfigError::invalid(
                key("previous_token"),
                "must be 1 to 128 characters",
            ));
        }
        let passive = wechat::rules::compile(&a.passive, RulePath::Passive)
            .map_err(|e| ConfigError::invalid(key("passive"), e.to_string()))?;
        let custom = wechat::rules::compile(&a.custom, RulePath::Custom)
            .map_err(|e| ConfigError::invalid(key("custom"), e.to_string()))?;
        Ok(Account {
            id,
            appid: a.appid.clone(),
            secret: Secret::new(a.secret.clone()),
            token: Secret::new(a.token.clone()),
            aes_key,
            mode,
            previous_token: a.previous_token.clone().map(Secret::new),
            previous_aes_key,
            passive,
            custom,
            passive_specs: a.passive.clone(),
            custom_specs: a.custom.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_toml(text, |k| env.get(k).cloned())
    }

    fn err_key(text: &str) -> String {
        match load(text, &[]) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid-value error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_apply_to_an_empty_file() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.namespace, "wxgate");
        assert_eq!(c.gateway.listen.port(), 8080);
        assert_eq!(c.gateway.path_prefix, "/wx");
        assert_eq!(c.gateway.request_budget, Duration::from_millis(3000));
        assert_eq!(c.gateway.max_body_bytes, 65536);
        assert_eq!(c.gateway.threads, 1);
        assert_eq!(c.worker.retry_delays.len(), 5);
        assert_eq!(c.rabbitmq.queue_type, QueueType::Quorum);
        assert_eq!(c.wechat.token_mode, TokenMode::Stable);
    }

    #[test]
    fn env_overrides_file_values() {
        let c = load(
            "namespace = \"a\"\n[gateway]\nlisten = \"127.0.0.1:1\"\n",
            &[
                ("WXGATE__NAMESPACE", "b"),
                ("WXGATE__GATEWAY__LISTEN", "127.0.0.1:2"),
                ("WXGATE__GATEWAY__METRICS_PER_ACCOUNT", "false"),
                ("WXGATE__WORKER__RETRY_DELAYS_MS", "10,20"),
                ("WXGATE__REDIS__URL", "redis://10.0.0.1:6379/1"),
            ],
        )
        .unwrap();
        assert_eq!(c.namespace, "b");
        assert_eq!(c.gateway.listen.port(), 2);
        assert!(!c.gateway.metrics_per_account);
        assert_eq!(
            c.worker.retry_delays,
            vec![Duration::from_millis(10), Duration::from_millis(20)]
        );
        assert_eq!(c.redis.url, "redis://10.0.0.1:6379/1");
    }

    #[test]
    fn bad_env_value_names_the_key() {
        match load("", &[("WXGATE__GATEWAY__REQUEST_BUDGET_MS", "soon")]) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "gateway.request_budget_ms"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn gateway_threads_are_bounded() {
        assert_eq!(
            load("[gateway]\nthreads = 0\n", &[])
                .unwrap()
                .gateway
                .threads,
            0
        );
        let c = load("", &[("WXGATE__GATEWAY__THREADS", "4")]).unwrap();
        assert_eq!(c.gateway.threads, 4);
        match load("[gateway]\nthreads = 257\n", &[]) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "gateway.threads"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_redis_url_that_does_not_parse_is_refused_without_echoing_it() {
        for url in [
            "redis://127.0.0.1:notaport/0",
            "redis://:secret@127.0.0.1:6379/x",
        ] {
            let refused = load(&format!("[redis]\nurl = \"{url}\"\n"), &[]);
            match refused {
                Err(ConfigError::Invalid { key, reason }) => {
                    assert_eq!(key, "redis.url");
                    assert!(!reason.contains("secret"), "{reason}");
                }
                other => panic!("{url} was accepted: {other:?}"),
            }
        }
    }

    #[test]
    fn grpc_tls_needs_cert_and_key_and_existing_files() {
        let dir = std::env::temp_dir().join(format!("wxgate-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("x.pem");
        std::fs::write(&file, "pem").unwrap();
        let file = file.display().to_string();
        let missing = dir.join("missing.pem").display().to_string();
        assert_eq!(
            err_key(&format!("[worker]\ngrpc_tls_cert = \"{file}\"\n")),
            "worker.grpc_tls_key"
        );
        assert_eq!(
            err_key(&format!("[worker]\ngrpc_tls_key = \"{file}\"\n")),
            "worker.grpc_tls_cert"
        );
        assert_eq!(
            err_key(&format!("[worker]\ngrpc_tls_client_ca = \"{file}\"\n")),
            "worker.grpc_tls_client_ca"
        );
        assert_eq!(
            err_key(&format!(
                "[worker]\ngrpc_tls_cert = \"{missing}\"\ngrpc_tls_key = \"{file}\"\n"
            )),
            "worker.grpc_tls_cert"
        );
        let config = load(
            &format!(
                "[worker]\ngrpc_tls_cert = \"{file}\"\ngrpc_tls_key = \"{file}\"\ngrpc_tls_client_ca = \"{file}\"\n"
            ),
            &[],
        )
        .unwrap();
        let tls = config.worker.grpc_tls.unwrap();
        assert_eq!(tls.client_ca.unwrap(), PathBuf::from(&file));
        let defaults = load("", &[]).unwrap();
        assert!(defaults.worker.grpc_tls.is_none());
        assert_eq!(defaults.worker.group_max_length, 1_000_000);
        assert_eq!(
            defaults.worker.group_message_ttl,
            Duration::from_secs(604_800)
        );
        assert_eq!(defaults.wechat.mp_base, "https://mp.weixin.qq.com");
        assert_eq!(defaults.wechat.open_base, "https://open.weixin.qq.com");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn api_keys_may_name_runtime_accounts_but_only_well_formed_ids() {
        let sha = "0".repeat(64);
        let config = load(
            &format!("[[api_keys]]\nname = \"crm\"\nsha256 = \"{sha}\"\naccounts = [\"later\"]\n"),
            &[],
        )
        .unwrap();
        assert_eq!(config.api_keys[0].accounts, vec!["later".to_owned()]);
        assert_eq!(
            err_key(&format!(
                "[[api_keys]]\nname = \"crm\"\nsha256 = \"{sha}\"\naccounts = [\"a.b\"]\n"
            )),
            "api_keys[0].accounts[0]"
        );
    }

    #[test]
    fn unknown_key_is_refused() {
        assert!(
            matches!(load("[gateway]\nlistne = \"x\"\n", &[]), Err(ConfigError::Syntax(m)) if m.contains("listne"))
        );
    }

    #[test]
    fn budget_must_stay_under_five_seconds() {
        assert_eq!(
            err_key("[gateway]\nrequest_budget_ms = 5000\n"),
            "gateway.request_budget_ms"
        );
    }

    #[test]
    fn accounts_are_found_by_id() {
        let text: String = (0..500)
            .map(|i| format!("[[accounts]]\nid = \"a{i}\"\nappid = \"wx{i}\"\ntoken = \"t\"\nmode = \"plain\"\n"))
            .collect();
        let c = load(&text, &[]).unwrap();
        for i in [0, 1, 250, 499] {
            assert_eq!(c.account(&format!("a{i}")).unwrap().appid, format!("wx{i}"));
        }
        assert!(c.account("a500").is_none());
        assert!(c.account("").is_none());
    }

    #[test]
    fn accounts_are_validated() {
        let ok = format!(
            "[[accounts]]\nid = \"demo\"\nappid = \"wx1\"\ntoken = \"t\"\nencoding_aes_key = \"{KEY}\"\nmode = \"safe\"\n"
        );
        let c = load(&ok, &[]).unwrap();
        assert_eq!(c.account("demo").unwrap().mode, Mode::Safe);

        assert_eq!(
            err_key(
                "[[accounts]]\nid = \"de.mo\"\nappid = \"wx1\"\ntoken = \"t\"\nmode = \"plain\"\n"
            ),
            "accounts[0].id"
        );
        assert_eq!(
            err_key(
                "[[accounts]]\nid = \"demo\"\nappid = \"wx1\"\ntoken = \"t\"\nmode = \"safe\"\n"
            ),
            "accounts[0].encoding_aes_key"
        );
        assert_eq!(
            err_key(
                "[[accounts]]\nid = \"demo\"\nappid = \"wx1\"\ntoken = \"t\"\nencoding_aes_key = \"short\"\n"
            ),
            "accounts[0].encoding_aes_key"
        );
        let dup = format!("{ok}{ok}");
        assert_eq!(err_key(&dup), "accounts[1].id");
    }

    #[test]
    fn file_and_api_accounts_get_the_same_reasons() {
        let file = |extra: &str| {
            format!("[[accounts]]\nid = \"demo\"\nappid = \"wx1\"\ntoken = \"t\"\n{extra}")
        };
        let base = AccountSpec {
            id: "demo".into(),
            appid: "wx1".into(),
            token: "t".into(),
            ..AccountSpec::default()
        };
        let cases: Vec<(String, AccountSpec, &str)> = vec![
            (
                file("encoding_aes_key = \"short\"\n"),
                AccountSpec {
                    encoding_aes_key: Some("short".into()),
                    ..base.clone()
                },
                "encoding_aes_key",
            ),
            (file(""), base.clone(), "encoding_aes_key"),
            (
                file("mode = \"plain\"\nprevious_token = \"\"\n"),
                AccountSpec {
                    mode: Some(Mode::Plain),
                    previous_token: Some(String::new()),
                    ..base.clone()
                },
                "previous_token",
            ),
        ];
        for (text, spec, field) in cases {
            let Err(ConfigError::Invalid { key, reason }) = load(&text, &[]) else {
                panic!("{text} was accepted");
            };
            assert_eq!(key, format!("accounts[0].{field}"));
            let Err(ConfigError::Invalid {
                key: api_key,
                reason: api_reason,
            }) = spec.validate("account")
            else {
                panic!("{spec:?} was accepted");
            };
            assert_eq!(api_key, format!("account.{field}"));
            assert_eq!(api_reason, reason);
        }
    }

    #[test]
    fn account_specs_redact_secrets_in_debug() {
        let spec = AccountSpec {
            secret: "topsecret".into(),
            token: "tokentoken".into(),
            encoding_aes_key: Some("aeskeyaeskey".into()),
            previous_token: Some("oldtoken".into()),
            ..AccountSpec::default()
        };
        let debug = format!("{spec:?}");
        for secret in ["topsecret", "tokentoken", "aeskeyaeskey", "oldtoken"] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }

    #[test]
    fn rules_with_unknown_placeholders_are_refused() {
        let text = "[[accounts]]\nid = \"demo\"\nappid = \"wx1\"\ntoken = \"t\"\nmode = \"plain\"\n[[accounts.passive]]\nmatch = { msg_type = \"text\" }\nreply = { text = \"{nope}\" }\n";
        assert_eq!(err_key(text), "accounts[0].passive");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let text = "[[accounts]]\nid = \"demo\"\nappid = \"wx1\"\nsecret = \"topsecret\"\ntoken = \"tokentoken\"\nmode = \"plain\"\n";
        let c = load(text, &[]).unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("topsecret"));
        assert!(!debug.contains("tokentoken"));
    }

    #[test]
    fn the_example_configs_load() {
        for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../config")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(&path, |_| None).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        }
    }

    /// Loading `[section] key = value` just outside each bound of a bounded key is refused,
    /// naming the key (`reported`) and both bounds.
    fn check_bounds(section: &str, key: &str, reported: &str, low: u64, high: u64) {
        let list = key == "retry_delays_ms";
        let mut values = vec![high + 1];
        if low > 0 {
            values.push(low - 1);
        }
        for value in values {
            let value_text = if list {
                format!("[{value}]")
            } else {
                value.to_string()
            };
            match load(&format!("[{section}]\n{key} = {value_text}\n"), &[]) {
                Err(ConfigError::Invalid {
                    key: error_key,
                    reason,
                }) => {
                    assert_eq!(error_key, reported, "{key} = {value}");
                    assert_eq!(reason, format!("must be between {low} and {high}"));
                }
                other => panic!("{key} = {value}: {other:?}"),
            }
        }
    }

    #[test]
    fn bounded_keys_name_the_key_and_both_bounds() {
        for (section, key, low, high) in [
            ("gateway", "request_budget_ms", 100, 4999),
            ("gateway", "publish_timeout_ms", 10, 4999),
            ("gateway", "max_body_bytes", 256, 16_777_216),
            ("gateway", "dedup_ttl_s", 30, 604_800),
            ("gateway", "threads", 0, 256),
            ("worker", "prefetch", 1, 65535),
            ("worker", "concurrency", 1, 65536),
            ("worker", "max_attempts", 1, 1000),
            ("worker", "sent_ttl_s", 60, 2_592_000),
            ("worker", "grpc_max_connections", 1, 1_048_576),
            ("worker", "grpc_preface_timeout_ms", 100, 60_000),
            ("wechat", "refresh_ahead_s", 0, 3600),
            ("wechat", "http_timeout_ms", 10, 120_000),
        ] {
            check_bounds(section, key, &format!("{section}.{key}"), low, high);
        }
        check_bounds(
            "worker",
            "retry_delays_ms",
            "worker.retry_delays_ms[0]",
            1,
            86_400_000,
        );
    }

    #[test]
    fn redis_modes_take_their_urls() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.redis.mode, RedisMode::Standalone);
        assert_eq!(c.redis.urls, ["redis://127.0.0.1:6379/0"]);

        let c = load(
            "[redis]\nmode = \"cluster\"\nurls = [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"]\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.redis.mode, RedisMode::Cluster);
        assert_eq!(c.redis.url, "redis://10.0.0.1:7000");
        assert_eq!(c.redis.urls.len(), 2);
        // One seed in `url` is enough for a cluster.
        let c = load(
            "[redis]\nmode = \"cluster\"\nurl = \"redis://10.0.0.1:7000\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.redis.urls, ["redis://10.0.0.1:7000"]);
        // A list of one is a standalone server too.
        let c = load("", &[("WXGATE__REDIS__URLS", "redis://10.0.0.9:6379/2")]).unwrap();
        assert_eq!(c.redis.mode, RedisMode::Standalone);
        assert_eq!(c.redis.url, "redis://10.0.0.9:6379/2");

        let c = load(
            "[redis]\nmode = \"sentinel\"\nurls = [\"redis://10.0.0.1:26379\"]\nsentinel_master = \"wxgate\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.redis.mode, RedisMode::Sentinel);
        assert_eq!(c.redis.sentinel_master.as_deref(), Some("wxgate"));

        // From the environment, as compose files set them.
        let c = load(
            "",
            &[
                ("WXGATE__REDIS__MODE", "cluster"),
                (
                    "WXGATE__REDIS__URLS",
                    "redis://10.0.0.1:7000, redis://10.0.0.2:7000,redis://10.0.0.3:7000",
                ),
            ],
        )
        .unwrap();
        assert_eq!(
            c.redis.urls,
            [
                "redis://10.0.0.1:7000",
                "redis://10.0.0.2:7000",
                "redis://10.0.0.3:7000"
            ]
        );
    }

    #[test]
    fn url_lists_from_the_environment_replace_the_files_url() {
        let file =
            "[redis]\nurl = \"redis://file:6379/0\"\n[rabbitmq]\nurl = \"amqp://file:5672/%2f\"\n";
        let c = load(
            file,
            &[
                ("WXGATE__REDIS__URLS", "redis://env:6379/0"),
                (
                    "WXGATE__RABBITMQ__URLS",
                    "amqp://a:5672/%2f,amqp://b:5672/%2f",
                ),
            ],
        )
        .unwrap();
        assert_eq!(c.redis.urls, ["redis://env:6379/0"]);
        assert_eq!(c.rabbitmq.urls, ["amqp://a:5672/%2f", "amqp://b:5672/%2f"]);
        // And the other way round.
        let file =
            "[redis]\nmode = \"cluster\"\nurls = [\"redis://f1:7000\", \"redis://f2:7000\"]\n";
        let c = load(file, &[("WXGATE__REDIS__URL", "redis://env:7000")]).unwrap();
        assert_eq!(c.redis.urls, ["redis://env:7000"]);
        // Both spellings in the environment are still a mistake.
        let e = load(
            "",
            &[
                ("WXGATE__RABBITMQ__URL", "amqp://a:5672/%2f"),
                ("WXGATE__RABBITMQ__URLS", "amqp://b:5672/%2f"),
            ],
        )
        .unwrap_err();
        assert!(e.to_string().contains("rabbitmq.urls"), "{e}");
    }

    #[test]
    fn redis_mode_mistakes_name_the_key() {
        for (text, key) in [
            // Both forms at once.
            (
                "[redis]\nmode = \"cluster\"\nurl = \"redis://a:1\"\nurls = [\"redis://b:1\"]\n",
                "redis.urls",
            ),
            // Several servers for a standalone Redis.
            (
                "[redis]\nurls = [\"redis://a:1\", \"redis://b:1\"]\n",
                "redis.urls",
            ),
            // Sentinels missing, or the master's name.
            (
                "[redis]\nmode = \"sentinel\"\nsentinel_master = \"m\"\n",
                "redis.urls",
            ),
            (
                "[redis]\nmode = \"sentinel\"\nurls = [\"redis://a:26379\"]\n",
                "redis.sentinel_master",
            ),
            (
                "[redis]\nmode = \"sentinel\"\nurls = [\"redis://a:26379\"]\nsentinel_master = \" \"\n",
                "redis.sentinel_master",
            ),
            // A master name without sentinel mode.
            (
                "[redis]\nsentinel_master = \"m\"\n",
                "redis.sentinel_master",
            ),
            // A cluster has only database 0; an empty list; TLS.
            (
                "[redis]\nmode = \"cluster\"\nurls = [\"redis://a:7000/2\"]\n",
                "redis.urls",
            ),
            ("[redis]\nmode = \"cluster\"\nurls = []\n", "redis.urls"),
            (
                "[redis]\nmode = \"cluster\"\nurls = [\"redis://a:7000\", \"rediss://b:7000\"]\n",
                "redis.urls",
            ),
        ] {
            assert_eq!(err_key(text), key, "{text}");
        }
        assert!(matches!(
            load("[redis]\nmode = \"replicated\"\n", &[]),
            Err(ConfigError::Syntax(_))
        ));
    }

    #[test]
    fn rabbitmq_takes_one_url_or_a_list_of_nodes() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.rabbitmq.urls, ["amqp://guest:guest@127.0.0.1:5672/%2f"]);
        let c = load(
            "[rabbitmq]\nurls = [\"amqp://u:p@n1:5672/%2f\", \"amqp://u:p@n2:5672/%2f\"]\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.rabbitmq.url, "amqp://u:p@n1:5672/%2f");
        assert_eq!(c.rabbitmq.urls.len(), 2);
        let c = load(
            "",
            &[(
                "WXGATE__RABBITMQ__URLS",
                "[amqp://u:p@n1:5672/%2f,amqp://u:p@n2:5672/%2f,amqp://u:p@n3:5672/%2f]",
            )],
        )
        .unwrap();
        assert_eq!(c.rabbitmq.urls.len(), 3);
        for (text, key) in [
            (
                "[rabbitmq]\nurl = \"amqp://a/%2f\"\nurls = [\"amqp://b/%2f\"]\n",
                "rabbitmq.urls",
            ),
            ("[rabbitmq]\nurls = []\n", "rabbitmq.urls"),
            (
                "[rabbitmq]\nurls = [\"amqp://a/%2f\", \"redis://b\"]\n",
                "rabbitmq.urls",
            ),
        ] {
            assert_eq!(err_key(text), key, "{text}");
        }
    }

    #[test]
    fn urls_need_one_of_their_schemes() {
        for (section, key, bad, good) in [
            (
                "redis",
                "url",
                "rediss://127.0.0.1:6379/0",
                "redis://127.0.0.1:6379/0",
            ),
            (
                "rabbitmq",
                "url",
                "redis://127.0.0.1",
                "amqps://127.0.0.1/%2f",
            ),
            (
                "wechat",
                "api_base",
                "ftp://example.com",
                "http://127.0.0.1:9099/",
            ),
        ] {
            assert_eq!(
                err_key(&format!("[{section}]\n{key} = \"{bad}\"\n")),
                format!("{section}.{key}")
            );
            load(&format!("[{section}]\n{key} = \"{good}\"\n"), &[])
                .unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }

    /// Top-level keys that are arrays of tables: set in the file only.
    const FILE_ONLY: &[&str] = &["accounts", "api_keys"];

    /// How `env_keys` differs from the schema: keys of the `Raw*` structs without an entry of
    /// their kind, and entries that are no such key. Empty when they agree.
    fn env_keys_mismatch(env_keys: &[(&str, &str, EnvKind)]) -> Vec<String> {
        let schema: Vec<(String, EnvKind)> = schema::keys()
            .into_iter()
            .filter(|(path, _)| !FILE_ONLY.contains(&path.as_str()))
            .collect();
        let listed: Vec<(String, EnvKind)> = env_keys
            .iter()
            .map(|&(section, key, kind)| (key_path(section, key), kind))
            .collect();
        let missing = schema
            .iter()
            .filter(|entry| !listed.contains(entry))
            .map(|(path, kind)| format!("{path} ({kind:?}) has no ENV_KEYS entry"));
        let unknown = listed
            .iter()
            .filter(|entry| !schema.contains(entry))
            .map(|(path, kind)| format!("ENV_KEYS entry {path} ({kind:?}) is not a key"));
        missing.chain(unknown).collect()
    }

    #[test]
    fn the_readme_documents_every_key_and_no_other() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let table = readme
            .split("#### Configuration reference")
            .nth(1)
            .expect("README.md has a \"Configuration reference\" section");
        let documented: std::collections::BTreeSet<String> = table
            .lines()
            .skip_while(|line| !line.starts_with("| key"))
            .skip(2)
            .take_while(|line| line.starts_with("| `"))
            .filter_map(|line| line.split('`').nth(1).map(str::to_owned))
            .collect();
        let accepted: std::collections::BTreeSet<String> =
            schema::keys().into_iter().map(|(path, _)| path).collect();
        let undocumented: Vec<_> = accepted.difference(&documented).collect();
        let unaccepted: Vec<_> = documented.difference(&accepted).collect();
        assert!(
            undocumented.is_empty() && unaccepted.is_empty(),
            "README.md's configuration reference misses {undocumented:?} and documents keys the loader refuses: {unaccepted:?}"
        );
    }

    #[test]
    fn env_keys_are_every_scalar_key_of_the_schema() {
        assert_eq!(env_keys_mismatch(ENV_KEYS), Vec::<String>::new());
        let schema = schema::keys();
        for key in FILE_ONLY {
            assert!(
                schema.iter().any(|(path, _)| path == key),
                "{key} is not in the schema any more"
            );
        }
    }

    #[test]
    fn a_missing_unknown_or_mistyped_env_key_is_reported() {
        let missing: Vec<_> = ENV_KEYS
            .iter()
            .copied()
            .filter(|&(_, key, _)| key != "threads")
            .collect();
        assert_eq!(
            env_keys_mismatch(&missing),
            ["gateway.threads (Int) has no ENV_KEYS entry"]
        );
        let mut unknown = ENV_KEYS.to_vec();
        unknown.push(("gateway", "thread", EnvKind::Int));
        assert_eq!(
            env_keys_mismatch(&unknown),
            ["ENV_KEYS entry gateway.thread (Int) is not a key"]
        );
        let mistyped: Vec<_> = ENV_KEYS
            .iter()
            .map(|&(section, key, kind)| match key {
                "prefetch" => (section, key, EnvKind::Str),
                _ => (section, key, kind),
            })
            .collect();
        assert_eq!(
            env_keys_mismatch(&mistyped),
            [
                "worker.prefetch (Int) has no ENV_KEYS entry",
                "ENV_KEYS entry worker.prefetch (Str) is not a key",
            ]
        );
    }

    /// Reads the keys of the config schema off the `Raw*` structs: their derived
    /// `Deserialize` runs against a deserializer that answers every field with a placeholder
    /// and records the field's path and the kind of value it asked for. A key added to a
    /// struct shows up without being listed anywhere.
    mod schema {
        use std::cell::RefCell;
        use std::fmt;

        use serde::de::value::StrDeserializer;
        use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};

        use super::super::{EnvKind, RawConfig, key_path};

        /// Every field of [`RawConfig`] and its sections that holds a value, as `section.key`
        /// (top-level keys bare), with its kind. Lists count as [`EnvKind::IntList`]; arrays
        /// of tables (accounts) appear as one list key, their fields are not visited.
        pub(super) fn keys() -> Vec<(String, EnvKind)> {
            let keys = RefCell::new(Vec::new());
            let probe = Probe {
                path: String::new(),
                keys: &keys,
            };
            <RawConfig as serde::Deserialize>::deserialize(probe)
                .unwrap_or_else(|e| panic!("the schema probe failed: {e}"));
            keys.into_inner()
        }

        #[derive(Debug)]
        pub(super) struct ProbeError(String);

        impl fmt::Display for ProbeError {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::error::Error for ProbeError {}

        impl de::Error for ProbeError {
            fn custom<T: fmt::Display>(msg: T) -> Self {
                Self(msg.to_string())
            }
        }

        struct Probe<'a> {
            path: String,
            keys: &'a RefCell<Vec<(String, EnvKind)>>,
        }

        impl Probe<'_> {
            fn record(&self, kind: EnvKind) {
                self.keys.borrow_mut().push((self.path.clone(), kind));
            }
        }

        impl<'de> de::Deserializer<'de> for Probe<'_> {
            type Error = ProbeError;

            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, ProbeError> {
                Err(ProbeError(format!(
                    "{}: a type the probe does not know",
                    self.path
                )))
            }

            fn deserialize_option<V: Visitor<'de>>(
                self,
                visitor: V,
            ) -> Result<V::Value, ProbeError> {
                visitor.visit_some(self)
            }

            fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
                self.record(EnvKind::Str);
                visitor.visit_str("")
            }

            fn deserialize_string<V: Visitor<'de>>(
                self,
                visitor: V,
            ) -> Result<V::Value, ProbeError> {
                self.deserialize_str(visitor)
            }

            fn deserialize_enum<V: Visitor<'de>>(
                self,
                _name: &'static str,
                variants: &'static [&'static str],
                visitor: V,
            ) -> Result<V::Value, ProbeError> {
                self.record(EnvKind::Str);
                let variant: StrDeserializer<'_, ProbeError> =
                    variants.first().copied().unwrap_or("").into_deserializer();
                visitor.visit_enum(variant)
            }

            fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
                self.record(EnvKind::Int);
                visitor.visit_u64(0)
            }

            fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
                self.record(EnvKind::Bool);
                visitor.visit_bool(false)
            }

            fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
                if super::FILE_ONLY.contains(&self.path.as_str()) {
                    // Arrays of tables: their fields are not keys of their own.
                    self.record(EnvKind::IntList);
                    return visitor.visit_seq(OneElement { probe: None });
                }
                // One element, probed on the side, tells a list of strings from the rest.
                let element = RefCell::new(Vec::new());
                let value = visitor.visit_seq(OneElement {
                    probe: Some(Probe {
                        path: String::new(),
                        keys: &element,
                    }),
                })?;
                let strings = matches!(element.into_inner().first(), Some((_, EnvKind::Str)));
                self.record(if strings {
                    EnvKind::StrList
                } else {
                    EnvKind::IntList
                });
                Ok(value)
            }

            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _name: &'static str,
                fields: &'static [&'static str],
                visitor: V,
            ) -> Result<V::Value, ProbeError> {
                visitor.visit_map(Fields {
                    fields: fields.iter(),
                    field: "",
                    path: self.path,
                    keys: self.keys,
                })
            }

            serde::forward_to_deserialize_any! {
                i8 i16 i32 i64 i128 u8 u16 u32 u128 f32 f64 char bytes byte_buf unit
                unit_struct newtype_struct tuple tuple_struct map identifier ignored_any
            }
        }

        /// A sequence of one element, a [`Probe`] of its own.
        struct OneElement<'a> {
            probe: Option<Probe<'a>>,
        }

        impl<'de> de::SeqAccess<'de> for OneElement<'_> {
            type Error = ProbeError;

            fn next_element_seed<T: DeserializeSeed<'de>>(
                &mut self,
                seed: T,
            ) -> Result<Option<T::Value>, ProbeError> {
                self.probe
                    .take()
                    .map(|probe| seed.deserialize(probe))
                    .transpose()
            }
        }

        /// Hands a struct's visitor each of its fields once, each value a [`Probe`].
        struct Fields<'a> {
            fields: std::slice::Iter<'static, &'static str>,
            field: &'static str,
            path: String,
            keys: &'a RefCell<Vec<(String, EnvKind)>>,
        }

        impl<'de> MapAccess<'de> for Fields<'_> {
            type Error = ProbeError;

            fn next_key_seed<K: DeserializeSeed<'de>>(
                &mut self,
                seed: K,
            ) -> Result<Option<K::Value>, ProbeError> {
                let Some(&field) = self.fields.next() else {
                    return Ok(None);
                };
                self.field = field;
                let name: StrDeserializer<'_, ProbeError> = field.into_deserializer();
                seed.deserialize(name).map(Some)
            }

            fn next_value_seed<V: DeserializeSeed<'de>>(
                &mut self,
                seed: V,
            ) -> Result<V::Value, ProbeError> {
                seed.deserialize(Probe {
                    path: key_path(&self.path, self.field),
                    keys: self.keys,
                })
            }
        }
    }
}

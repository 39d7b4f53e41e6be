//! Helpers for wxgate's integration tests (`tests/it`): a gateway per test in its own random
//! namespace against the real Redis and RabbitMQ, a consumer of `{ns}.events`, a TCP proxy
//! that cuts a service off and brings it back, polling with a deadline, and clusters of a
//! test's own (a RabbitMQ cluster, a Redis Cluster, a Sentinel set) through
//! `scripts/testbed.sh`. `wxgate-core`'s
//! own tests use its clean-up ([`RedisKeys`], [`on_own_runtime`]) and service URLs.
//!
//! Must not share state between tests, skip a test when a service is down, or sleep to
//! synchronise: every wait is a poll with a deadline or a wait on a signal.
//!
//! This crate is not a test target, so clippy's allowance for `unwrap`/`expect` in tests does
//! not reach it; but its functions run only inside tests, where a panic with a message is
//! exactly how a broken environment or a failed expectation should be reported.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod binaries;
mod cleanup;
mod consumer;
mod env;
mod http;
mod poll;
mod proxy;
mod testbed;

pub use binaries::built_binaries;
pub use cleanup::{Namespace, RedisKeys, on_own_runtime, ready_redis_store};
pub use consumer::{EventConsumer, ReceivedEvent};
pub use env::{
    DEFAULT_RABBITMQ_URL, DEFAULT_REDIS_URL, Options, TestEnv, rabbitmq_url, redis_url,
    remove_namespace,
};
pub use http::{RawResponse, query, raw_exchange, read_until_closed, statuses};
pub use poll::{bounded, eventually};
pub use proxy::TcpProxy;
pub use testbed::{RabbitCluster, RedisCluster, SentinelSet, Status, TestbedError};

use std::time::{SystemTime, UNIX_EPOCH};

/// The current Unix time in seconds, as WeChat stamps pushes.
pub fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The current Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A random numeric nonce, as WeChat sends.
pub fn nonce() -> String {
    rand::random_range(100_000_000_u64..10_000_000_000).to_string()
}

/// The event id (docs/contract.md §3) the gateway must give the plain push `xml` for `account_id`,
/// recomputed with the `wechat` crate.
pub fn event_id_of(account_id: &str, xml: &str) -> String {
    let message = wechat::parse(xml.as_bytes(), &wechat::Limits::default())
        .expect("the expected event id is computed from a valid push");
    wechat::event_id(account_id, &message).as_str().to_owned()
}

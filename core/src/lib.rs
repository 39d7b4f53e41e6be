//! Shared runtime of wxgate: configuration, the event bus and key-value store traits with
//! their RabbitMQ/Redis and in-memory implementations, the RabbitMQ topology, Redis key
//! names, the shared access tokens, metrics and logging.
//!
//! No HTTP routes and no rules live here: the gateway and worker own their edges (the
//! `connections` module only serves connections for the handler they pass), the `wechat`
//! crate owns the protocol.

pub mod amqp;
pub mod bus;
pub mod config;
pub mod connections;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod rabbit;
pub mod store;
pub mod tokens;
pub mod topology;

pub use bus::{Bus, Delivery, DeliveryStream, Message, Properties, PublishError};
pub use config::Config;
pub use store::{MemoryStore, RedisStore, SetNx, Store, StoreError};

/// Milliseconds since the Unix epoch, from the system clock (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

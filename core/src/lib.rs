//! Shared runtime of wxgate: configuration, the event bus and key-value store traits with
//! their RabbitMQ/Redis and in-memory implementations, the RabbitMQ topology, Redis key
//! names, the shared access tokens, metrics and logging.
//!
//! No HTTP server code and no rules live here: the gateway and worker own their edges (both
//! serve through `wxgate-serve`), the `wechat` crate owns the protocol.

pub mod accounts;
pub mod amqp;
pub mod bus;
pub mod config;
pub mod keys;
pub mod logging;
pub mod memory_bus;
pub mod metrics;
pub mod rabbit;
mod refresh_lock;
pub mod store;
pub mod tickets;
pub mod tokens;
pub mod topology;

pub use bus::{Bus, Delivery, DeliveryStream, Message, Properties, PublishError};
pub use config::Config;
pub use memory_bus::MemoryBus;
pub use store::{MemoryStore, RedisStore, SetNx, Store, StoreError};

/// Milliseconds since the Unix epoch, from the system clock (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Displays an error with its chain of sources, `outer: cause: root cause`, for one log
/// field: `tracing::warn!(error = %ErrorChain(&e), "…")`. Errors keep their sources as
/// `#[source]` and never repeat them in their own message, so the chain shows each cause
/// once, in the text and the JSON log format alike.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    /// Some libraries (redis, lapin) print their cause in their own message and return it as
    /// the source too; a cause whose text the previous level already ends with is skipped.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut previous = self.0.to_string();
        f.write_str(&previous)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !previous.ends_with(&text) {
                write!(f, ": {text}")?;
            }
            previous = text;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn error_chain_shows_every_cause_once() {
        let error = Outer(Middle(std::io::Error::other("root")));
        assert_eq!(ErrorChain(&error).to_string(), "outer: middle: root");
        let alone = std::io::Error::other("alone");
        assert_eq!(ErrorChain(&alone).to_string(), "alone");
    }

    #[test]
    fn a_cause_a_library_already_printed_is_not_repeated() {
        let refused = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let redis =
            crate::StoreError::Command(std::sync::Arc::new(redis::RedisError::from(refused())));
        let chain = ErrorChain(&redis).to_string();
        assert_eq!(chain.matches("refused").count(), 1, "{chain}");
        assert!(chain.starts_with("store command failed: "), "{chain}");
        let lapin = crate::bus::BusError::Failed {
            operation: "basic.ack",
            source: std::sync::Arc::new(lapin::Error::from(refused())),
        };
        let chain = ErrorChain(&lapin).to_string();
        assert_eq!(chain.matches("refused").count(), 1, "{chain}");
    }
}

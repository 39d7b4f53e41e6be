//! A test consumer of `{ns}.events`: an exclusive, auto-delete queue bound with `#`, each
//! delivery decoded as `wxgate.v1.Event` with its AMQP properties and routing key.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection};
use prost::Message as _;
use wxgate_proto::v1 as pb;

/// One delivery, decoded.
#[derive(Debug, Clone)]
pub struct ReceivedEvent {
    /// The body, decoded.
    pub event: pb::Event,
    /// The exchange it was published to.
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// AMQP `message_id`.
    pub message_id: Option<String>,
    /// AMQP `type`.
    pub kind: Option<String>,
    /// AMQP `content_type`.
    pub content_type: Option<String>,
    /// AMQP `delivery_mode` (2 = persistent).
    pub delivery_mode: Option<u8>,
    /// AMQP `timestamp` (Unix seconds).
    pub timestamp: Option<u64>,
    /// The headers with string values.
    pub headers: BTreeMap<String, String>,
}

impl ReceivedEvent {
    /// Decodes a delivery; panics when the body is not a `wxgate.v1.Event`.
    pub(crate) fn decode(delivery: &lapin::message::Delivery) -> ReceivedEvent {
        let event = pb::Event::decode(delivery.data.as_slice())
            .expect("every message on the bus is a wxgate.v1.Event");
        let p = &delivery.properties;
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
                                String::from_utf8_lossy(s.as_bytes()).into_owned()
                            }
                            AMQPValue::ShortString(s) => s.as_str().to_owned(),
                            _ => return None,
                        };
                        Some((k.as_str().to_owned(), value))
                    })
                    .collect()
            })
            .unwrap_or_default();
        ReceivedEvent {
            event,
            exchange: delivery.exchange.as_str().to_owned(),
            routing_key: delivery.routing_key.as_str().to_owned(),
            message_id: p.message_id().as_ref().map(|s| s.as_str().to_owned()),
            kind: p.kind().as_ref().map(|s| s.as_str().to_owned()),
            content_type: p.content_type().as_ref().map(|s| s.as_str().to_owned()),
            delivery_mode: *p.delivery_mode(),
            timestamp: *p.timestamp(),
            headers,
        }
    }

    /// The string header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// Receives every event published to one namespace's `{ns}.events` from the moment it is
/// created (create it before pushing). Its queue goes away with its connection.
pub struct EventConsumer {
    consumer: lapin::Consumer,
    queue: String,
    // Kept so the channel, and with it the consumer, lives as long as this value.
    _channel: Channel,
}

impl EventConsumer {
    pub(crate) async fn bind(connection: &Connection, exchange: &str) -> EventConsumer {
        crate::bounded(
            Duration::from_secs(10),
            "starting the test consumer",
            Self::start(connection, exchange),
        )
        .await
    }

    async fn start(connection: &Connection, exchange: &str) -> EventConsumer {
        let channel = connection
            .create_channel()
            .await
            .expect("a channel for the test consumer");
        let queue = channel
            .queue_declare(
                ShortString::from(""),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the test consumer's queue can be declared");
        let queue = queue.name().as_str().to_owned();
        channel
            .queue_bind(
                ShortString::from(queue.as_str()),
                ShortString::from(exchange),
                ShortString::from("#"),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| {
                panic!("cannot bind to {exchange} (declared by the gateway?): {e}")
            });
        let consumer = channel
            .basic_consume(
                ShortString::from(queue.as_str()),
                ShortString::from(""),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the test consumer can start");
        EventConsumer {
            consumer,
            queue,
            _channel: channel,
        }
    }

    /// The next event, or `None` when none arrives within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<ReceivedEvent> {
        match tokio::time::timeout(within, self.consumer.next()).await {
            Err(_) => None,
            Ok(Some(Ok(delivery))) => Some(ReceivedEvent::decode(&delivery)),
            Ok(Some(Err(e))) => panic!("test consumer on {} failed: {e}", self.queue),
            Ok(None) => panic!("test consumer on {} ended", self.queue),
        }
    }

    /// The next event; panics when none arrives within `within`.
    pub async fn expect(&mut self, within: Duration) -> ReceivedEvent {
        self.next(within)
            .await
            .unwrap_or_else(|| panic!("no event published within {within:?}"))
    }

    /// Receives until the event `event_id` arrives; returns the events before it and it.
    /// Panics when it does not arrive within `within`.
    pub async fn until(
        &mut self,
        event_id: &str,
        within: Duration,
    ) -> (Vec<ReceivedEvent>, ReceivedEvent) {
        let deadline = tokio::time::Instant::now() + within;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(received) = self.next(left).await else {
                panic!(
                    "event {event_id} not published within {within:?}; {} others were: {:?}",
                    before.len(),
                    before
                        .iter()
                        .map(|r: &ReceivedEvent| r.event.event_id.as_str())
                        .collect::<Vec<_>>()
                );
            };
            if received.event.event_id == event_id {
                return (before, received);
            }
            before.push(received);
        }
    }
}

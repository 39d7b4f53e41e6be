//! The RabbitMQ names and topology of docs/contract.md §1.2, derived from the config in one place so
//! gateway and worker declare exactly the same thing.

use crate::bus::GroupSpec;
use crate::config::Config;

/// One argument of a queue declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// A string argument.
    Str(&'static str, String),
    /// An integer argument.
    Int(&'static str, i64),
}

/// One durable queue with its bindings to the events exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// Queue name.
    pub name: String,
    /// Declaration arguments.
    pub args: Vec<Arg>,
    /// Routing-key patterns bound from the events exchange.
    pub bindings: Vec<String>,
}

/// A durable fanout exchange and the one queue bound to it (its `bindings` are unused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutSpec {
    /// The exchange's name.
    pub exchange: String,
    /// The queue bound to it.
    pub queue: QueueSpec,
}

/// Everything declared at start: the topic exchange, the worker queues and the fanout that
/// collects what consumer groups drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// `{ns}.events`, a durable topic exchange.
    pub exchange: String,
    /// `{ns}.worker`, its retry queues and `{ns}.worker.dead`.
    pub queues: Vec<QueueSpec>,
    /// `{ns}.groups.dropped` (exchange and queue).
    pub fanouts: Vec<FanoutSpec>,
}

/// How long a record of a dropped group event waits in `{ns}.groups.dropped` for a worker to
/// count it (ms). Records are only counted, so losing old ones while no worker runs loses
/// only metric increments.
pub const GROUPS_DROPPED_TTL_MS: i64 = 600_000;
/// At most this many records wait in `{ns}.groups.dropped`; older ones are dropped uncounted.
pub const GROUPS_DROPPED_MAX_LENGTH: i64 = 100_000;

/// The RabbitMQ names of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    ns: String,
}

impl Names {
    /// Names under namespace `ns`.
    pub fn new(ns: &str) -> Self {
        Self { ns: ns.to_owned() }
    }

    /// `{ns}.events`.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.ns)
    }

    /// `{ns}.worker`.
    pub fn worker_queue(&self) -> String {
        format!("{}.worker", self.ns)
    }

    /// `{ns}.worker.retry.{i}`.
    pub fn retry_queue(&self, i: usize) -> String {
        format!("{}.worker.retry.{i}", self.ns)
    }

    /// `{ns}.worker.dead`.
    pub fn dead_queue(&self) -> String {
        format!("{}.worker.dead", self.ns)
    }

    /// `{ns}.group.{group}`.
    pub fn group_queue(&self, group: &str) -> String {
        format!("{}.group.{group}", self.ns)
    }

    /// The group whose queue is `queue` (`{ns}.group.{group}`), if it is one of this
    /// namespace's group queues.
    pub fn group_of_queue<'a>(&self, queue: &'a str) -> Option<&'a str> {
        queue
            .strip_prefix(self.ns.as_str())?
            .strip_prefix(".group.")
            .filter(|group| !group.is_empty())
    }

    /// `{ns}.groups.dropped`: the fanout exchange consumer-group queues dead-letter to, and
    /// the queue bound to it that the worker counts from. Plural `groups`, so it cannot be
    /// a group's queue (`{ns}.group.…`).
    pub fn groups_dropped(&self) -> String {
        format!("{}.groups.dropped", self.ns)
    }
}

/// The routing key of an event: `{account}.msg.{MsgType}` for messages and
/// `{account}.event.{event lower-cased}` for events (docs/contract.md §1.2).
///
/// `msg_type` and `event` come from the callback: characters that would change the meaning
/// of a topic pattern (`.`, `*`, `#`) are replaced by `_`.
pub fn routing_key(account_id: &str, msg_type: &str, event: Option<&str>) -> String {
    // On every callback: one allocation, no formatting machinery.
    let (kind, name, lower) = match (msg_type, event) {
        ("event", Some(event)) => (".event.", event, true),
        _ => (".msg.", msg_type, false),
    };
    let mut key = String::with_capacity(account_id.len() + kind.len() + name.len());
    key.push_str(account_id);
    key.push_str(kind);
    key.extend(name.chars().map(|c| match c {
        '.' | '*' | '#' => '_',
        c if lower => c.to_ascii_lowercase(),
        c => c,
    }));
    key
}

impl Topology {
    /// The topology of docs/contract.md §1.2 for `config`.
    ///
    /// Every queue takes `rabbitmq.queue_type`, so with `quorum` every event that waits, waits
    /// for a retry or is parked is replicated. The hop from a retry queue back to
    /// `{ns}.worker` is RabbitMQ's dead-lettering, at-most-once by default: an event whose
    /// delay ends just as a node is lost can be dropped (a crash window, not a steady loss).
    pub fn for_config(config: &Config) -> Self {
        let names = Names::new(&config.namespace);
        let queue_type = || {
            Arg::Str(
                "x-queue-type",
                config.rabbitmq.queue_type.as_str().to_owned(),
            )
        };
        let mut queues = vec![QueueSpec {
            name: names.worker_queue(),
            args: vec![queue_type()],
            bindings: vec!["#".to_owned()],
        }];
        for (i, delay) in config.worker.retry_delays.iter().enumerate() {
            queues.push(QueueSpec {
                name: names.retry_queue(i),
                args: vec![
                    Arg::Int(
                        "x-message-ttl",
                        i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
                    ),
                    Arg::Str("x-dead-letter-exchange", String::new()),
                    Arg::Str("x-dead-letter-routing-key", names.worker_queue()),
                    queue_type(),
                ],
                bindings: Vec::new(),
            });
        }
        queues.push(QueueSpec {
            name: names.dead_queue(),
            args: vec![queue_type()],
            bindings: Vec::new(),
        });
        let dropped = names.groups_dropped();
        let fanouts = vec![FanoutSpec {
            exchange: dropped.clone(),
            queue: QueueSpec {
                name: dropped,
                args: vec![
                    Arg::Int("x-message-ttl", GROUPS_DROPPED_TTL_MS),
                    Arg::Int("x-max-length", GROUPS_DROPPED_MAX_LENGTH),
                    Arg::Str("x-overflow", "drop-head".to_owned()),
                    queue_type(),
                ],
                bindings: Vec::new(),
            },
        }];
        Self {
            exchange: names.events_exchange(),
            queues,
            fanouts,
        }
    }
}

/// The queue of consumer group `group` as docs/contract.md §1.2 declares it: bound with
/// `bindings`, `rabbitmq.queue_type`, the given retention, dead-lettering to
/// `{ns}.groups.dropped`.
pub fn group_spec(
    config: &Config,
    group: &str,
    bindings: Vec<String>,
    max_length: u64,
    message_ttl: std::time::Duration,
) -> GroupSpec {
    let names = Names::new(&config.namespace);
    GroupSpec {
        queue: names.group_queue(group),
        bindings,
        max_length,
        message_ttl,
        dead_letter_exchange: names.groups_dropped(),
        queue_type: config.rabbitmq.queue_type.as_str().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_follow_the_contract() {
        assert_eq!(routing_key("demo", "text", None), "demo.msg.text");
        assert_eq!(routing_key("demo", "voice", None), "demo.msg.voice");
        assert_eq!(
            routing_key("demo", "event", Some("subscribe")),
            "demo.event.subscribe"
        );
        assert_eq!(
            routing_key("demo", "event", Some("SCAN")),
            "demo.event.scan"
        );
        assert_eq!(
            routing_key("demo", "event", Some("CLICK")),
            "demo.event.click"
        );
        assert_eq!(routing_key("demo", "te.x#t", None), "demo.msg.te_x_t");
    }

    #[test]
    fn group_queues_are_recognised_by_name() {
        let names = Names::new("t1");
        assert_eq!(names.group_of_queue(&names.group_queue("crm")), Some("crm"));
        assert_eq!(names.group_of_queue("t1.group."), None);
        assert_eq!(names.group_of_queue("t2.group.crm"), None);
        assert_eq!(names.group_of_queue(&names.groups_dropped()), None);
    }

    #[test]
    fn topology_has_worker_retry_and_dead_queues() {
        let config = Config::from_toml(
            "namespace = \"t1\"\n[worker]\nretry_delays_ms = [10, 20]\n",
            |_| None,
        )
        .unwrap();
        let t = Topology::for_config(&config);
        assert_eq!(t.exchange, "t1.events");
        let names: Vec<_> = t.queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "t1.worker",
                "t1.worker.retry.0",
                "t1.worker.retry.1",
                "t1.worker.dead"
            ]
        );
        assert_eq!(t.fanouts.len(), 1);
        assert_eq!(t.fanouts[0].exchange, "t1.groups.dropped");
        assert_eq!(t.fanouts[0].queue.name, "t1.groups.dropped");
        assert!(t.queues[1].args.contains(&Arg::Int("x-message-ttl", 10)));
        let every_queue_is = |t: &Topology, queue_type: &str| {
            for queue in t.queues.iter().chain(t.fanouts.iter().map(|f| &f.queue)) {
                assert!(
                    queue
                        .args
                        .contains(&Arg::Str("x-queue-type", queue_type.into())),
                    "{} takes rabbitmq.queue_type",
                    queue.name
                );
            }
        };
        every_queue_is(&t, "quorum");
        let classic = Config::from_toml(
            "namespace = \"t1\"\n[rabbitmq]\nqueue_type = \"classic\"\n",
            |_| None,
        )
        .unwrap();
        every_queue_is(&Topology::for_config(&classic), "classic");
        assert!(
            t.queues[1]
                .args
                .contains(&Arg::Str("x-dead-letter-routing-key", "t1.worker".into()))
        );
    }
}

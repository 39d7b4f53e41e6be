//! The cluster test bed (`scripts/testbed.sh`, `wxgate_tests::{RabbitCluster, RedisCluster,
//! SentinelSet}`) proves itself: each kind comes up and answers, survives its fault, and is
//! torn down with no process and no directory left.
//!
//! The durations printed (`testbed timing: …`, seen with `--nocapture`) are what the issue's
//! CI tests will pay; they are reported in bench/README.md, never asserted.

// Test code: a step that cannot be done should fail the test at once, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use redis::AsyncCommands;
use wxgate_tests::{RabbitCluster, RedisCluster, SentinelSet, Status, bounded, eventually};

/// How long one client call (connect, declare, publish, command) may take.
const CALL: Duration = Duration::from_secs(10);

/// How long a cluster may take to serve again after its fault, seen from a client.
const RECOVERY: Duration = Duration::from_secs(60);

fn timing(what: &str, since: Instant) {
    eprintln!(
        "testbed timing: {what}: {:.1} s",
        since.elapsed().as_secs_f64()
    );
}

/// A name no other test run uses.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// What a bed ran, taken before `down`, to check afterwards that none of it is left.
struct Footprint {
    pids: Vec<u32>,
    dir: PathBuf,
    ports: Vec<u16>,
}

impl Footprint {
    fn of(status: &Status, dir: &Path, ports: &[u16]) -> Footprint {
        assert!(!status.pids.is_empty(), "status lists the bed's processes");
        Footprint {
            pids: status.pids.clone(),
            dir: dir.to_owned(),
            ports: ports.to_vec(),
        }
    }

    /// No process alive (a zombie waiting for its reaper counts as gone), no directory, no
    /// listener on the bed's ports.
    async fn assert_gone(&self) {
        for pid in &self.pids {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state follows the parenthesised command name.
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            assert!(
                stat.is_empty() || state.starts_with('Z'),
                "process {pid} of the bed still runs after down: {stat}"
            );
        }
        assert!(
            !self.dir.exists(),
            "{} is still there after down",
            self.dir.display()
        );
        for port in &self.ports {
            let connected =
                tokio::time::timeout(CALL, tokio::net::TcpStream::connect(("127.0.0.1", *port)))
                    .await;
            assert!(
                !matches!(connected, Ok(Ok(_))),
                "something still listens on 127.0.0.1:{port} after down"
            );
        }
    }
}

async fn amqp(url: &str) -> Connection {
    bounded(
        CALL,
        "connecting to a test bed node",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// Publishes `payload` to `queue` on a new confirm channel of `connection`; `Ok` only for the
/// broker's ack.
async fn publish_confirmed(
    connection: &Connection,
    queue: &str,
    payload: &[u8],
) -> Result<(), String> {
    let publish = async {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| format!("channel: {e}"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| format!("confirm.select: {e}"))?;
        let confirmation = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                payload,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .map_err(|e| format!("publish: {e}"))?
            .await
            .map_err(|e| format!("confirm: {e}"))?;
        let _ = channel.close(200, "published".into()).await;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            other => Err(format!("not acked: {other:?}")),
        }
    };
    tokio::time::timeout(CALL, publish)
        .await
        .map_err(|_| format!("no confirm within {CALL:?}"))?
}

async fn declare_quorum_queue(connection: &Connection, queue: &str, passive: bool) -> u32 {
    let channel = bounded(CALL, "a channel", connection.create_channel())
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(b"quorum".to_vec())),
    );
    let declared = bounded(
        CALL,
        "queue.declare",
        channel.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                passive,
                ..QueueDeclareOptions::default()
            },
            args,
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("declaring the quorum queue {queue}: {e}"));
    let _ = channel.close(200, "declared".into()).await;
    declared.message_count()
}

#[tokio::test]
async fn rabbit_cluster_keeps_a_quorum_queue_when_its_leader_stops_or_crashes() {
    let started = Instant::now();
    let cluster = RabbitCluster::up().await.unwrap();
    timing("rabbit up (3 nodes, joined)", started);
    assert_eq!(cluster.amqp_urls().len(), 3);
    assert_eq!(cluster.node_names().len(), 3);
    let footprint = Footprint::of(
        &cluster.status().await.unwrap(),
        cluster.dir(),
        cluster.ports(),
    );

    // Declared through node 0, which makes it the queue's first leader.
    let queue = unique("wxgate-testbed");
    let on_first = amqp(&cluster.amqp_urls()[0]).await;
    declare_quorum_queue(&on_first, &queue, false).await;
    publish_confirmed(&on_first, &queue, b"before")
        .await
        .unwrap();
    let on_second = amqp(&cluster.amqp_urls()[1]).await;

    let stopping = Instant::now();
    cluster.stop_node(0).await.unwrap();
    timing("rabbit stop-node", stopping);
    assert_eq!(
        cluster.status().await.unwrap().running,
        ["1", "2"],
        "only node 0 stopped"
    );
    let electing = Instant::now();
    eventually(
        RECOVERY,
        "a confirmed publish to the quorum queue through node 1",
        || publish_confirmed(&on_second, &queue, b"after"),
    )
    .await;
    timing(
        "rabbit: stop of the leader to a confirmed publish",
        electing,
    );
    assert_eq!(
        declare_quorum_queue(&on_second, &queue, true).await,
        2,
        "both messages are in the queue"
    );

    let restarting = Instant::now();
    cluster.start_node(0).await.unwrap();
    timing("rabbit start-node (back in the cluster)", restarting);
    assert_eq!(cluster.status().await.unwrap().running, ["0", "1", "2"]);
    let _ = on_second.close(200, "done".into()).await;

    // A crash of the leader now: no handover, the followers elect a new one.
    let leader = cluster.queue_leader(&queue).await.unwrap();
    let survivor = (leader + 1) % 3;
    let on_survivor = amqp(&cluster.amqp_urls()[survivor]).await;
    let crashing = Instant::now();
    cluster.kill_node(leader).await.unwrap();
    eventually(
        RECOVERY,
        "a confirmed publish to the quorum queue after its leader's SIGKILL",
        || publish_confirmed(&on_survivor, &queue, b"after the crash"),
    )
    .await;
    timing(
        "rabbit: SIGKILL of the leader to a confirmed publish",
        crashing,
    );
    eventually(RECOVERY, "list_queues naming a new leader", || async {
        match cluster.queue_leader(&queue).await {
            Ok(now) if now != leader => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(
        declare_quorum_queue(&on_survivor, &queue, true).await,
        3,
        "no message was lost"
    );
    let _ = on_survivor.close(200, "done".into()).await;
    let stopping = Instant::now();
    cluster.down().await.unwrap();
    timing("rabbit down", stopping);
    footprint.assert_gone().await;
}

/// The port of the master serving `key`: the one master that answers GET instead of MOVED.
async fn owner_of(key: &str, masters: &[u16]) -> u16 {
    let mut owners = Vec::new();
    for port in masters {
        let mut node = plain_redis(*port).await;
        let answer: redis::RedisResult<Option<String>> =
            bounded(CALL, "GET on one master", node.get(key)).await;
        if answer.is_ok() {
            owners.push(*port);
        }
    }
    match owners.as_slice() {
        [port] => *port,
        _ => panic!("{key} should be served by exactly one of the masters {masters:?}: {owners:?}"),
    }
}

async fn plain_redis(port: u16) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    bounded(
        CALL,
        "connecting to a test bed Redis node",
        client.get_multiplexed_async_connection(),
    )
    .await
    .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port}: {e}"))
}

/// `key`'s value as a replica on `port` holds it; `cluster`: a Redis Cluster replica, which
/// answers for its master's slots only after READONLY (and with MOVED for the others').
async fn on_replica(port: u16, key: &str, cluster: bool) -> Result<Option<String>, String> {
    let mut node = plain_redis(port).await;
    let read = async {
        if cluster {
            redis::cmd("READONLY").query_async::<()>(&mut node).await?;
        }
        node.get::<_, Option<String>>(key).await
    };
    tokio::time::timeout(CALL, read)
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn redis_cluster_serves_a_killed_masters_keys_after_failover() {
    let started = Instant::now();
    let cluster = RedisCluster::up().await.unwrap();
    timing("redis-cluster up (6 nodes)", started);
    assert_eq!(cluster.urls().len(), 6);
    let status = cluster.status().await.unwrap();
    assert_eq!(status.master_ports.len(), 3, "three masters hold the slots");
    let footprint = Footprint::of(&status, cluster.dir(), cluster.ports());

    let client = redis::cluster::ClusterClient::builder(cluster.urls().to_vec())
        .connection_timeout(CALL)
        .response_timeout(CALL)
        .build()
        .unwrap();
    let mut connection = bounded(CALL, "a cluster connection", client.get_async_connection())
        .await
        .unwrap();
    let key = unique("wxgate-testbed");
    let value = unique("value");
    bounded(
        CALL,
        "SET through the cluster client",
        connection.set::<_, _, ()>(&key, &value),
    )
    .await
    .unwrap();
    let owner = owner_of(&key, &status.master_ports).await;
    // Replication is asynchronous: kill the master only once its replica has the key.
    let replicas: Vec<u16> = cluster
        .ports()
        .iter()
        .copied()
        .filter(|port| !status.master_ports.contains(port))
        .collect();
    eventually(RECOVERY, "the owner's replica holds the key", || async {
        let mut answers = Vec::new();
        for port in &replicas {
            match on_replica(*port, &key, true).await {
                Ok(Some(read)) if read == value => return Ok(()),
                answer => answers.push(format!("{port}: {answer:?}")),
            }
        }
        Err(answers)
    })
    .await;

    let failing_over = Instant::now();
    let killed = cluster.kill_master(Some(owner)).await.unwrap();
    assert_eq!(killed, owner);
    let masters = cluster.wait_failover().await.unwrap();
    timing(
        "redis-cluster: SIGKILL of a master to cluster_state:ok",
        failing_over,
    );
    assert!(
        !masters.contains(&killed) && masters.len() == 3,
        "a replica took over from {killed}: masters now {masters:?}"
    );
    let read: Option<String> = eventually(
        RECOVERY,
        "the key, through the cluster client, after failover",
        || async {
            tokio::time::timeout(CALL, connection.clone().get::<_, Option<String>>(&key))
                .await
                .map_err(|_| "no answer".to_owned())?
                .map_err(|e| e.to_string())
        },
    )
    .await;
    timing(
        "redis-cluster: SIGKILL of a master to the key read",
        failing_over,
    );
    assert_eq!(read, Some(value.clone()));
    let same_slot = format!("{{{key}}}-after");
    bounded(
        CALL,
        "SET in the failed-over slot",
        connection.set::<_, _, ()>(&same_slot, "written"),
    )
    .await
    .unwrap();

    let restarting = Instant::now();
    cluster.start_node(killed).await.unwrap();
    assert_eq!(
        role_of(killed).await,
        "slave",
        "the old master is back as a replica"
    );
    timing("redis-cluster: start-node to a replica again", restarting);

    let stopping = Instant::now();
    cluster.down().await.unwrap();
    timing("redis-cluster down", stopping);
    footprint.assert_gone().await;
}

/// What the Redis node on `port` says it is: `master`, `slave` or `sentinel`.
async fn role_of(port: u16) -> String {
    let mut node = plain_redis(port).await;
    let role: redis::Value = bounded(CALL, "ROLE", redis::cmd("ROLE").query_async(&mut node))
        .await
        .unwrap();
    match role {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::BulkString(name)) => String::from_utf8_lossy(name).into_owned(),
            other => panic!("ROLE on {port} answered {other:?} first"),
        },
        other => panic!("ROLE on {port} answered {other:?}"),
    }
}

/// The master `sentinel_url` names for `name`.
async fn named_master(sentinel_url: &str, name: &str) -> Result<u16, String> {
    let client = redis::Client::open(sentinel_url).map_err(|e| e.to_string())?;
    let ask = async {
        let mut sentinel = client.get_multiplexed_async_connection().await?;
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(name)
            .query_async::<(String, u16)>(&mut sentinel)
            .await
    };
    let (host, port) = tokio::time::timeout(CALL, ask)
        .await
        .map_err(|_| format!("{sentinel_url}: no answer"))?
        .map_err(|e| format!("{sentinel_url}: {e}"))?;
    if host != "127.0.0.1" {
        return Err(format!("{sentinel_url} names host {host}"));
    }
    Ok(port)
}

#[tokio::test]
async fn sentinel_set_promotes_the_replica_which_accepts_writes() {
    let started = Instant::now();
    let set = SentinelSet::up().await.unwrap();
    timing("sentinel up (master, replica, 3 sentinels)", started);
    assert_eq!(set.master_name(), "wxgate");
    assert_eq!(set.sentinel_urls().len(), 3);
    let (first_master, replica) = (set.redis_ports()[0], set.redis_ports()[1]);
    let footprint = Footprint::of(
        &set.status().await.unwrap(),
        set.dir(),
        &[set.redis_ports(), set.sentinel_ports()].concat(),
    );
    for url in set.sentinel_urls() {
        assert_eq!(
            named_master(url, set.master_name()).await.unwrap(),
            first_master
        );
    }

    let key = unique("wxgate-testbed");
    let mut master = plain_redis(first_master).await;
    bounded(
        CALL,
        "SET on the master",
        master.set::<_, _, ()>(&key, "before"),
    )
    .await
    .unwrap();
    eventually(RECOVERY, "the replica holds the key", || async {
        match on_replica(replica, &key, false).await? {
            Some(value) if value == "before" => Ok(()),
            other => Err(format!("replica has {other:?}")),
        }
    })
    .await;

    let failing_over = Instant::now();
    assert_eq!(set.kill_master().await.unwrap(), first_master);
    let promoted = set.wait_failover().await.unwrap();
    timing(
        "sentinel: SIGKILL of the master to a new master named",
        failing_over,
    );
    assert_eq!(promoted, replica, "the only replica is promoted");
    for url in set.sentinel_urls() {
        assert_eq!(
            named_master(url, set.master_name()).await.unwrap(),
            promoted
        );
    }
    let mut new_master = plain_redis(promoted).await;
    bounded(
        CALL,
        "SET on the new master",
        new_master.set::<_, _, ()>(&key, "after"),
    )
    .await
    .unwrap();
    let read: Option<String> = bounded(CALL, "GET on the new master", new_master.get(&key))
        .await
        .unwrap();
    assert_eq!(read.as_deref(), Some("after"));
    assert_eq!(set.status().await.unwrap().master_ports, [promoted]);

    let restarting = Instant::now();
    set.start_node(first_master).await.unwrap();
    timing(
        "sentinel: start-node of the old master to a replica",
        restarting,
    );
    assert_eq!(role_of(first_master).await, "slave");
    let replicated: Option<String> = bounded(
        CALL,
        "GET on the old master",
        plain_redis(first_master).await.get(&key),
    )
    .await
    .unwrap();
    assert_eq!(
        replicated.as_deref(),
        Some("after"),
        "it follows the new master"
    );

    let stopping = Instant::now();
    set.down().await.unwrap();
    timing("sentinel down", stopping);
    footprint.assert_gone().await;
}

#[tokio::test]
async fn a_bed_is_torn_down_when_its_test_panics() {
    let (footprint_sender, footprint_receiver) = tokio::sync::oneshot::channel();
    let test = tokio::spawn(async move {
        let set = SentinelSet::up().await.unwrap();
        let footprint = Footprint::of(
            &set.status().await.unwrap(),
            set.dir(),
            &[set.redis_ports(), set.sentinel_ports()].concat(),
        );
        footprint_sender
            .send(footprint)
            .unwrap_or_else(|_| panic!("the test waits for the footprint"));
        panic!("a failing test (expected: this panic unwinds through the bed's Drop)");
    });
    let footprint = footprint_receiver
        .await
        .expect("the bed came up and sent its footprint");
    let ended = test.await.expect_err("the test panicked");
    assert!(ended.is_panic(), "{ended}");
    footprint.assert_gone().await;
}

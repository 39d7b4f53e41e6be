//! Store behaviour, written once and run against the in-memory store and real Redis
//! (`WXGATE__REDIS__URL`, default redis://127.0.0.1:6379/0). The keys a test writes to Redis
//! are deleted however it ends.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::time::Duration;

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;
use wxgate_core::config::Config;
use wxgate_core::store::{MemoryStore, RedisStore, SetNx, Store};
use wxgate_tests::{RedisKeys, redis_url};

fn namespace() -> String {
    format!("t{:016x}", rand::random::<u64>())
}

async fn redis() -> (RedisStore, CancellationToken) {
    let shutdown = CancellationToken::new();
    (wxgate_tests::ready_redis_store(&shutdown).await, shutdown)
}

async fn behaves_like_redis(store: &dyn Store, ns: &str) {
    let key = format!("{ns}:k");
    assert_eq!(store.get(&key).await.unwrap(), None);
    assert_eq!(
        store
            .set_nx_get(&key, b"P", Duration::from_secs(5))
            .await
            .unwrap(),
        SetNx::Set
    );
    assert_eq!(
        store
            .set_nx_get(&key, b"Q", Duration::from_secs(5))
            .await
            .unwrap(),
        SetNx::Exists(b"P".to_vec())
    );
    assert!(
        !store
            .set_nx(&key, b"Q", Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert!(
        store
            .set_xx(&key, b"Aok", Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert_eq!(store.get(&key).await.unwrap(), Some(b"Aok".to_vec()));
    let ttl = store.pttl(&key).await.unwrap().unwrap();
    assert!(ttl <= Duration::from_secs(5) && ttl > Duration::from_secs(3));

    // Only the holder of the value extends the key.
    let extend = Duration::from_secs(60);
    assert!(
        !store
            .compare_and_expire(&key, b"other", extend)
            .await
            .unwrap()
    );
    assert!(store.pttl(&key).await.unwrap().unwrap() <= Duration::from_secs(5));
    assert!(
        store
            .compare_and_expire(&key, b"Aok", extend)
            .await
            .unwrap()
    );
    let ttl = store.pttl(&key).await.unwrap().unwrap();
    assert!(ttl > Duration::from_secs(55), "extended to {ttl:?}");
    let absent = format!("{ns}:absent");
    assert!(
        !store
            .compare_and_expire(&absent, b"", extend)
            .await
            .unwrap()
    );

    assert!(!store.compare_and_delete(&key, b"other").await.unwrap());
    assert!(store.compare_and_delete(&key, b"Aok").await.unwrap());
    assert!(
        !store
            .set_xx(&key, b"x", Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert!(!store.del(&key).await.unwrap());

    // Batched SET … NX GET: each key claimed or its value returned, in order.
    let (fresh, taken) = (format!("{ns}:fresh"), format!("{ns}:taken"));
    store
        .set(&taken, b"Aok", Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(
        store
            .set_nx_get_many(
                &[fresh.clone(), taken.clone()],
                b"P",
                Duration::from_secs(5)
            )
            .await
            .unwrap(),
        vec![SetNx::Set, SetNx::Exists(b"Aok".to_vec())]
    );
    assert_eq!(store.get(&fresh).await.unwrap(), Some(b"P".to_vec()));
    assert!(
        store
            .set_nx_get_many(&[], b"P", Duration::from_secs(5))
            .await
            .unwrap()
            .is_empty()
    );

    // Batched SET … XX: only existing keys are overwritten, each with the TTL.
    let (held, gone) = (format!("{ns}:held"), format!("{ns}:gone"));
    store
        .set(&held, b"P", Some(Duration::from_secs(5)))
        .await
        .unwrap();
    let entries = [
        (held.clone(), b"Ayes".to_vec()),
        (gone.clone(), b"Ano".to_vec()),
    ];
    assert_eq!(
        store
            .set_xx_many(&entries, Duration::from_secs(60))
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.get(&held).await.unwrap(), Some(b"Ayes".to_vec()));
    assert!(store.pttl(&held).await.unwrap().unwrap() > Duration::from_secs(50));
    assert_eq!(store.get(&gone).await.unwrap(), None);
    assert_eq!(
        store
            .set_xx_many(&[], Duration::from_secs(1))
            .await
            .unwrap(),
        0
    );

    let counter = format!("{ns}:n");
    assert_eq!(
        store
            .incr(&counter, Some(Duration::from_secs(60)))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .incr(&counter, Some(Duration::from_secs(60)))
            .await
            .unwrap(),
        2
    );
    assert!(store.pttl(&counter).await.unwrap().is_some());

    let short = format!("{ns}:short");
    store
        .set(&short, b"v", Some(Duration::from_millis(30)))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.get(&short).await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "key did not expire");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let hash = format!("{ns}:h");
    store.hset(&hash, "a", b"1").await.unwrap();
    store.hset(&hash, "b", b"2").await.unwrap();
    assert_eq!(store.hget(&hash, "a").await.unwrap(), Some(b"1".to_vec()));
    let mut all = store.hgetall(&hash).await.unwrap();
    all.sort();
    assert_eq!(
        all,
        vec![("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())]
    );
    assert!(store.hdel(&hash, "a").await.unwrap());
    assert_eq!(store.hget(&hash, "a").await.unwrap(), None);
}

#[tokio::test]
async fn memory_store_behaves_like_redis() {
    behaves_like_redis(&MemoryStore::new(), &namespace()).await;
}

#[tokio::test]
async fn redis_store_behaves_like_redis() {
    let (store, shutdown) = redis().await;
    let ns = namespace();
    let keys = RedisKeys::guard(&ns, &redis_url());
    behaves_like_redis(&store, &ns).await;
    keys.remove().await;
    shutdown.cancel();
}

/// Polls `store` until it reports ready, or panics after `within`.
async fn wait_ready(store: &RedisStore, within: Duration, what: &str) {
    let deadline = tokio::time::Instant::now() + within;
    while !store.is_ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: the store is not ready after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Claims `count` keys of `ns` in one batch (spread over every slot range) and checks each
/// answer is in order: the even ones were taken before, so they return their value.
async fn batches_cross_slots(store: &dyn Store, ns: &str, count: usize) {
    let keys: Vec<String> = (0..count).map(|i| format!("{ns}:batch:{i}")).collect();
    for key in keys.iter().step_by(2) {
        store
            .set(key, key.as_bytes(), Some(Duration::from_secs(60)))
            .await
            .unwrap();
    }
    let answers = store
        .set_nx_get_many(&keys, b"P", Duration::from_secs(60))
        .await
        .unwrap();
    for (i, (key, answer)) in keys.iter().zip(&answers).enumerate() {
        let expected = if i % 2 == 0 {
            SetNx::Exists(key.as_bytes().to_vec())
        } else {
            SetNx::Set
        };
        assert_eq!(answer, &expected, "{key}");
    }
    let entries: Vec<(String, Vec<u8>)> = keys.iter().map(|k| (k.clone(), b"X".to_vec())).collect();
    assert_eq!(
        store
            .set_xx_many(&entries, Duration::from_secs(60))
            .await
            .unwrap(),
        count
    );
}

/// Writes `key` until a write succeeds, or panics after `within`: how long the store takes
/// to serve again after a failover.
async fn writes_again(store: &dyn Store, key: &str, within: Duration) -> Duration {
    let started = tokio::time::Instant::now();
    loop {
        match store
            .set(key, b"after", Some(Duration::from_secs(60)))
            .await
        {
            Ok(()) => return started.elapsed(),
            Err(e) => assert!(
                started.elapsed() < within,
                "no write succeeded within {within:?} of the failover: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_store_behaves_like_redis_and_survives_a_master_failover() {
    let cluster = wxgate_tests::RedisCluster::up()
        .await
        .expect("a Redis Cluster of the test's own");
    let config = Config::from_toml(
        &format!(
            "[redis]\nmode = \"cluster\"\nurls = {:?}\n",
            &cluster.urls()[..2]
        ),
        |_| None,
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let store = RedisStore::connect_config(&config.redis, Duration::from_secs(2), shutdown.clone())
        .unwrap();
    wait_ready(&store, Duration::from_secs(30), "cluster").await;
    let ns = namespace();
    behaves_like_redis(&store, &ns).await;
    batches_cross_slots(&store, &ns, 200).await;

    // A master dies: its replica takes over; the store serves every slot again.
    let marker = format!("{ns}:marker");
    store.set(&marker, b"before", None).await.unwrap();
    let killed = Instant::now();
    cluster.kill_master(None).await.expect("a master killed");
    cluster.wait_failover().await.expect("a replica took over");
    println!(
        "cluster: the testbed saw the failover {:?} after the kill",
        killed.elapsed()
    );
    // Every slot is served again, once the client has learnt the new owner: a batch over
    // all the masters succeeds. Each attempt gets 500 ms, so that what is measured is when new
    // commands succeed: one sent on the connection the store has just replaced waits out its
    // own timeout.
    let keys: Vec<String> = (0..200).map(|i| format!("{ns}:after:{i}")).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = store.set_nx_get_many(&keys, b"P", Duration::from_secs(60));
        let e = match tokio::time::timeout(Duration::from_millis(500), attempt).await {
            Ok(Ok(_)) => break,
            Ok(Err(e)) => format!("{e:?}"),
            Err(_) => "no answer within 500 ms".to_owned(),
        };
        assert!(
            Instant::now() < deadline,
            "the cluster's slots are not all served 60 s after the failover: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "cluster: every slot served again {:?} after the kill",
        killed.elapsed()
    );
    batches_cross_slots(&store, &format!("{ns}:again"), 200).await;
    assert_eq!(
        store.get(&marker).await.unwrap().as_deref(),
        Some(&b"before"[..])
    );
    wait_ready(
        &store,
        Duration::from_secs(30),
        "cluster after the failover",
    )
    .await;
    shutdown.cancel();
    cluster.down().await.expect("the cluster stopped");
}

/// A store in sentinel mode on every sentinel of `set`, in their order, and what stops it.
fn sentinel_store(set: &wxgate_tests::SentinelSet) -> (RedisStore, CancellationToken) {
    let config = Config::from_toml(
        &format!(
            "[redis]\nmode = \"sentinel\"\nurls = {:?}\nsentinel_master = {:?}\n",
            set.sentinel_urls(),
            set.master_name()
        ),
        |_| None,
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let store = RedisStore::connect_config(&config.redis, Duration::from_secs(2), shutdown.clone())
        .unwrap();
    (store, shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_that_does_not_know_the_master_is_skipped() {
    let set = wxgate_tests::SentinelSet::up()
        .await
        .expect("a Sentinel set of the test's own");
    // The first sentinel forgets the master (as after `SENTINEL REMOVE`, or a restart without
    // its config): it answers nil, and the store must ask the next one.
    let first = format!("redis://127.0.0.1:{}", set.sentinel_ports()[0]);
    let mut sentinel = redis::Client::open(first.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SENTINEL")
        .arg("REMOVE")
        .arg(set.master_name())
        .query_async(&mut sentinel)
        .await
        .unwrap();
    assert_eq!(
        set.sentinel_urls()[0],
        first,
        "the forgetful sentinel is asked first"
    );
    let (store, shutdown) = sentinel_store(&set);
    wait_ready(
        &store,
        Duration::from_secs(30),
        "sentinel, the first one forgetful",
    )
    .await;
    let key = format!("{}:k", namespace());
    store
        .set(&key, b"v", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(store.get(&key).await.unwrap().as_deref(), Some(&b"v"[..]));
    shutdown.cancel();
    set.down().await.expect("the Sentinel set stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_store_behaves_like_redis_and_follows_the_new_master() {
    let set = wxgate_tests::SentinelSet::up()
        .await
        .expect("a Sentinel set of the test's own");
    let (store, shutdown) = sentinel_store(&set);
    wait_ready(&store, Duration::from_secs(30), "sentinel").await;
    let ns = namespace();
    behaves_like_redis(&store, &ns).await;
    batches_cross_slots(&store, &ns, 50).await;

    let marker = format!("{ns}:marker");
    store.set(&marker, b"before", None).await.unwrap();
    let old = set.kill_master().await.expect("the master killed");
    let new = set
        .wait_failover()
        .await
        .expect("the sentinels promote the replica");
    assert_ne!(old, new);
    let served_again = writes_again(&store, &marker, Duration::from_secs(60)).await;
    println!("sentinel: writes served again {served_again:?} after the sentinels named {new}");
    // The write went to the new master, not to a stale connection.
    let mut direct = redis::Client::open(format!("redis://127.0.0.1:{new}/0"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let value: Option<Vec<u8>> = redis::cmd("GET")
        .arg(&marker)
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(value.as_deref(), Some(&b"after"[..]));
    shutdown.cancel();
    set.down().await.expect("the sentinel set stopped");
}

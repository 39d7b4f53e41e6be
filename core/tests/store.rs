//! Store behaviour, written once and run against the in-memory store and real Redis
//! (`WXGATE__REDIS__URL`, default redis://127.0.0.1:6379/0). The keys a test writes to Redis
//! are deleted however it ends.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::time::Duration;

use tokio_util::sync::CancellationToken;
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

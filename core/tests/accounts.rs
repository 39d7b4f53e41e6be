//! Runtime accounts (docs/contract.md §1.5) against real Redis: what the sync loads, keeps
//! and reports. Each test runs in a random namespace whose keys are deleted however it ends.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wxgate_core::Config;
use wxgate_core::accounts::{Origin, Registry, RuntimeAccounts, RuntimeSync};
use wxgate_core::config::AccountSpec;
use wxgate_core::keys::Keys;
use wxgate_core::metrics::{AccountsMetrics, OriginLabel};
use wxgate_core::store::{RedisStore, Store};
use wxgate_tests::{Namespace, TcpProxy, eventually, redis_url};

const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const OTHER_KEY: &str = "ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlkj";

/// One namespace with a file account `file`, its registry, a sync and a direct Redis handle.
struct World {
    namespace: Namespace,
    store: Arc<dyn Store>,
    runtime: RuntimeAccounts,
    registry: Arc<Registry>,
    metrics: AccountsMetrics,
    sync: RuntimeSync,
    _shutdown: tokio_util::sync::DropGuard,
}

impl World {
    async fn new() -> World {
        Self::on(None).await
    }

    /// A world whose store reaches Redis through `proxy`, when given.
    async fn on(proxy: Option<&TcpProxy>) -> World {
        let namespace = Namespace::random(0);
        let shutdown = CancellationToken::new();
        let store: Arc<dyn Store> = match proxy {
            None => Arc::new(wxgate_tests::ready_redis_store(&shutdown).await),
            Some(proxy) => {
                let store = RedisStore::connect(
                    &proxy.url_for(&redis_url()),
                    Duration::from_secs(1),
                    shutdown.clone(),
                )
                .unwrap();
                eventually(Duration::from_secs(10), "redis through the proxy", || {
                    let ready = store.is_ready();
                    async move { if ready { Ok(()) } else { Err("not ready") } }
                })
                .await;
                Arc::new(store)
            }
        };
        let config = Config::from_toml(
            &format!(
                "namespace = \"{}\"\n[[accounts]]\nid = \"file\"\nappid = \"wxfile\"\ntoken = \"t\"\nmode = \"plain\"\n",
                namespace.ns
            ),
            |_| None,
        )
        .unwrap();
        let runtime = RuntimeAccounts::new(Arc::clone(&store), Keys::new(&namespace.ns));
        let registry = Arc::new(Registry::from_config(&config));
        let metrics = AccountsMetrics::default();
        let sync = RuntimeSync::new(Arc::clone(&registry), runtime.clone(), metrics.clone());
        World {
            namespace,
            store,
            runtime,
            registry,
            metrics,
            sync,
            _shutdown: shutdown.drop_guard(),
        }
    }

    fn runtime_gauge(&self) -> i64 {
        self.metrics
            .accounts
            .get_or_create(&OriginLabel { origin: "runtime" })
            .get()
    }
}

fn spec(id: &str, token: &str) -> AccountSpec {
    AccountSpec {
        id: id.to_owned(),
        appid: format!("wx{id}"),
        secret: "s".to_owned(),
        token: token.to_owned(),
        encoding_aes_key: Some(KEY.to_owned()),
        ..AccountSpec::default()
    }
}

#[tokio::test]
async fn added_changed_and_removed_accounts_are_served_after_a_check() {
    let mut w = World::new().await;
    w.sync.check().await;
    assert!(w.registry.is_loaded(), "a first check with nothing stored");
    assert_eq!(w.registry.snapshot().len(), 1);

    assert_eq!(w.runtime.put(&spec("a", "t1")).await.unwrap(), 1);
    w.sync.check().await;
    let a = w.registry.snapshot().get("a").cloned().unwrap();
    assert_eq!(a.origin, Origin::Runtime);
    assert_eq!(a.account.token.expose(), "t1");
    assert_eq!(
        w.registry.snapshot().by_appid("wxa").unwrap().id.as_str(),
        "a"
    );
    assert_eq!(w.runtime_gauge(), 1);

    let mut rotated = spec("a", "t2");
    rotated.previous_token = Some("t1".to_owned());
    rotated.encoding_aes_key = Some(OTHER_KEY.to_owned());
    rotated.previous_encoding_aes_key = Some(KEY.to_owned());
    w.runtime.put(&rotated).await.unwrap();
    w.sync.check().await;
    let a = w.registry.get("a").unwrap();
    assert_eq!(a.token.expose(), "t2");
    assert_eq!(a.previous_token.as_ref().unwrap().expose(), "t1");
    assert!(a.previous_aes_key.is_some());

    assert_eq!(w.runtime.remove("a").await.unwrap(), Some(3));
    assert_eq!(w.runtime.remove("a").await.unwrap(), None);
    w.sync.check().await;
    assert!(w.registry.get("a").is_none());
    assert_eq!(w.registry.status().version, Some(3));
    assert_eq!(w.runtime_gauge(), 0);
    drop(w.namespace);
}

#[tokio::test]
async fn invalid_and_file_shadowing_entries_are_skipped_and_the_rest_served() {
    let mut w = World::new().await;
    let keys = Keys::new(&w.namespace.ns);
    w.runtime.put(&spec("good", "t")).await.unwrap();
    // Not JSON, a bad AES key, another id inside than the field, a file account's id.
    w.store
        .hset(
            &keys.accounts(),
            "garbage",
            b"{\"id\": \"garbage\", \"token\": 12",
        )
        .await
        .unwrap();
    let mut bad_key = spec("badkey", "t");
    bad_key.encoding_aes_key = Some("short".to_owned());
    w.store
        .hset(
            &keys.accounts(),
            "badkey",
            &serde_json::to_vec(&bad_key).unwrap(),
        )
        .await
        .unwrap();
    w.store
        .hset(
            &keys.accounts(),
            "alias",
            &serde_json::to_vec(&spec("other", "t")).unwrap(),
        )
        .await
        .unwrap();
    w.store
        .hset(
            &keys.accounts(),
            "file",
            &serde_json::to_vec(&spec("file", "t")).unwrap(),
        )
        .await
        .unwrap();
    w.runtime.put(&spec("good2", "t")).await.unwrap();
    w.sync.check().await;
    let snapshot = w.registry.snapshot();
    assert!(snapshot.get("good").is_some() && snapshot.get("good2").is_some());
    for skipped in ["garbage", "badkey", "alias", "other"] {
        assert!(snapshot.get(skipped).is_none(), "{skipped} was served");
    }
    let file = snapshot.get("file").unwrap();
    assert_eq!(file.origin, Origin::File);
    assert_eq!(file.account.appid, "wxfile");
    assert_eq!(snapshot.runtime_len(), 2);
}

#[tokio::test]
async fn a_vanished_version_keeps_the_accounts_and_is_reported_until_a_new_one() {
    let mut w = World::new().await;
    let keys = Keys::new(&w.namespace.ns);
    w.runtime.put(&spec("a", "t")).await.unwrap();
    w.sync.check().await;
    assert!(w.registry.problem().is_none());

    // Redis restarted without persistence: everything is gone.
    w.store.del(&keys.accounts_version()).await.unwrap();
    w.store.del(&keys.accounts()).await.unwrap();
    w.sync.check().await;
    assert!(w.registry.get("a").is_some(), "the account is still served");
    let status = w.registry.status();
    assert!(status.version_lost);
    assert_eq!(w.metrics.version_lost.get(), 1);
    let problem = w.registry.problem().unwrap();
    assert!(problem.contains("vanished"), "{problem}");
    assert!(problem.contains("1 runtime accounts"), "{problem}");
    w.sync.check().await;
    assert!(w.registry.status().version_lost, "still reported");

    // The next change starts a new history at version 1 (the version loaded before was 1
    // too): it is loaded, and the loss is over.
    w.runtime.put(&spec("b", "t")).await.unwrap();
    w.sync.check().await;
    assert!(!w.registry.status().version_lost);
    assert_eq!(w.metrics.version_lost.get(), 0);
    assert!(w.registry.problem().is_none());
    assert!(w.registry.get("b").is_some());
    assert!(
        w.registry.get("a").is_none(),
        "redis holds only b now: a has to be re-added"
    );
}

#[tokio::test]
async fn a_fresh_process_without_a_version_reports_nothing() {
    let mut w = World::new().await;
    w.sync.check().await;
    let status = w.registry.status();
    assert!(status.loaded && !status.version_lost && status.version.is_none());
    assert_eq!(w.metrics.version_lost.get(), 0);
}

#[tokio::test]
async fn redis_down_keeps_the_last_snapshot() {
    let proxy = TcpProxy::in_front_of(&redis_url()).await;
    let mut w = World::on(Some(&proxy)).await;
    w.runtime.put(&spec("a", "t")).await.unwrap();
    w.sync.check().await;
    assert!(w.registry.get("a").is_some());
    proxy.cut();
    w.sync.check().await;
    let status = w.registry.status();
    assert!(status.store_failing);
    assert!(!status.version_lost);
    assert!(
        w.registry.get("a").is_some(),
        "still served with redis down"
    );
    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        w.sync.check().await;
        if !w.registry.status().store_failing {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sync never reached redis again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(w.registry.get("a").is_some());
}

#[tokio::test]
async fn watch_picks_a_change_up_within_a_second() {
    let w = World::new().await;
    let shutdown = CancellationToken::new();
    tokio::spawn(Arc::clone(&w.registry).watch(
        w.runtime.clone(),
        w.metrics.clone(),
        shutdown.clone(),
    ));
    eventually(Duration::from_secs(3), "the watch's first check", || {
        let loaded = w.registry.is_loaded();
        async move { if loaded { Ok(()) } else { Err("not yet") } }
    })
    .await;
    // The contract's bound is one second (the watch checks every 500 ms); the extra 500 ms
    // are for a loaded machine.
    const WITHIN: Duration = Duration::from_millis(1500);
    w.runtime.put(&spec("late", "t")).await.unwrap();
    eventually(WITHIN, "the watch to load `late`", || {
        let found = w.registry.get("late").is_some();
        async move { if found { Ok(()) } else { Err("not yet") } }
    })
    .await;
    w.runtime.remove("late").await.unwrap();
    eventually(WITHIN, "the watch to drop `late`", || {
        let found = w.registry.get("late").is_some();
        async move { if found { Err("still served") } else { Ok(()) } }
    })
    .await;
    shutdown.cancel();
}

#[tokio::test]
async fn a_hash_without_a_version_is_served_and_reported() {
    let mut w = World::new().await;
    let keys = Keys::new(&w.namespace.ns);
    // The version key was evicted or deleted, or a restore left it out.
    w.store
        .hset(
            &keys.accounts(),
            "orphan",
            &serde_json::to_vec(&spec("orphan", "t")).unwrap(),
        )
        .await
        .unwrap();
    assert!(
        w.store
            .get(&keys.accounts_version())
            .await
            .unwrap()
            .is_none()
    );
    w.sync.check().await;
    let status = w.registry.status();
    assert!(status.loaded && status.version_lost && status.version.is_none());
    assert_eq!(w.registry.get("orphan").unwrap().appid, "wxorphan");
    assert_eq!(w.runtime_gauge(), 1);
    assert_eq!(w.metrics.version_lost.get(), 1);
    let problem = w.registry.problem().unwrap();
    assert!(problem.contains("1 runtime accounts"), "{problem}");
    w.sync.check().await;
    assert!(w.registry.get("orphan").is_some(), "still served");

    // Any change recreates the version: the hash is loaded as usual and the report ends.
    w.runtime.put(&spec("b", "t")).await.unwrap();
    w.sync.check().await;
    assert!(w.registry.problem().is_none());
    assert_eq!(w.metrics.version_lost.get(), 0);
    assert!(w.registry.get("orphan").is_some() && w.registry.get("b").is_some());
}

#[tokio::test]
async fn a_counter_rebuilt_to_the_same_version_is_reloaded() {
    let mut w = World::new().await;
    let keys = Keys::new(&w.namespace.ns);
    w.runtime.put(&spec("a", "t")).await.unwrap();
    w.sync.check().await;
    assert_eq!(w.registry.status().version, Some(1));

    // Redis loses its data between two checks, and an account is re-added: the counter is
    // back at 1, the version this process loaded, but with another generation.
    for key in [
        keys.accounts(),
        keys.accounts_version(),
        keys.accounts_generation(),
    ] {
        w.store.del(&key).await.unwrap();
    }
    assert_eq!(w.runtime.put(&spec("b", "t")).await.unwrap(), 1);
    w.sync.check().await;
    assert!(w.registry.get("b").is_some(), "the new history is loaded");
    assert!(w.registry.get("a").is_none(), "redis holds only b now");
    assert_eq!(w.registry.status().version, Some(1));
    assert!(!w.registry.status().version_lost);
}

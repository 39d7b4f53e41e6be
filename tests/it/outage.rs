//! Losing RabbitMQ or Redis (docs/contract.md §1.1, §6): callbacks answer 503 and `/readyz` 503
//! while it is gone, the gateway reconnects by itself, and every callback answered 200 is
//! in the queue. The service is taken away through a proxy, so other tests keep it.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;
use wxgate_sim::Answer;
use wxgate_tests::{Options, TcpProxy, TestEnv, event_id_of, eventually, rabbitmq_url, redis_url};

const WAIT: Duration = Duration::from_secs(10);
/// How long the gateway may take to notice a lost or returned service.
const NOTICE: Duration = Duration::from_secs(20);
/// Concurrent pushers.
const PUSHERS: usize = 4;
/// Each pusher pushes at most once per this (pacing the load, not synchronising).
const PACE: Duration = Duration::from_millis(5);
/// A bound on pushes, should a phase never end.
const MAX_PUSHES: usize = 20_000;

/// One push and how it ended.
struct Pushed {
    xml: String,
    event_id: String,
    started: Instant,
    finished: Instant,
    statuses: Vec<u16>,
    acknowledged: bool,
}

/// Number of pushes that started after `since` and have finished (the log holds finished
/// pushes only).
fn finished_since(log: &Mutex<Vec<Pushed>>, since: Instant) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|p| p.started > since)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_answers_503_and_keeps_every_accepted_callback() {
    let proxy = TcpProxy::in_front_of(&rabbitmq_url()).await;
    let owned_env = TestEnv::with(
        Options::new()
            .rabbitmq_url(&proxy.url_for(&rabbitmq_url()))
            .gateway("request_budget_ms = 2000")
            .gateway("publish_timeout_ms = 1000"),
    )
    .await;
    let env = &owned_env;
    let log: Mutex<Vec<Pushed>> = Mutex::new(Vec::new());
    let log = &log;
    let stop = AtomicBool::new(false);
    let stop = &stop;
    let counter = AtomicUsize::new(0);
    let counter = &counter;

    let pusher = |_| async move {
        let mut pace = tokio::time::interval(PACE);
        while !stop.load(Ordering::Relaxed) && counter.fetch_add(1, Ordering::Relaxed) < MAX_PUSHES
        {
            pace.tick().await;
            let xml = env.text(&env.plain, "during the outage test");
            let started = Instant::now();
            let outcome = env.push(&env.plain, &xml).await;
            log.lock().unwrap().push(Pushed {
                event_id: event_id_of("plain", &xml),
                xml,
                started,
                finished: Instant::now(),
                statuses: outcome.statuses,
                acknowledged: outcome.answer == Answer::Acknowledged,
            });
        }
    };
    let controller = async {
        let start = Instant::now();
        eventually(NOTICE, "30 pushes before the cut", || async move {
            let n = finished_since(log, start);
            if n >= 30 { Ok(()) } else { Err(n) }
        })
        .await;
        proxy.cut();
        env.wait_readyz(503, NOTICE, "/readyz 503 with the broker cut off")
            .await;
        let down = Instant::now();
        eventually(
            NOTICE,
            "20 pushes while the broker is cut off",
            || async move {
                let n = finished_since(log, down);
                if n >= 20 { Ok(()) } else { Err(n) }
            },
        )
        .await;
        assert_eq!(env.readyz().await, 503, "still not ready while cut off");
        let restored = Instant::now();
        proxy.restore();
        env.wait_readyz(200, NOTICE, "/readyz 200 after the broker is back")
            .await;
        let up = Instant::now();
        eventually(
            NOTICE,
            "30 pushes after the broker is back",
            || async move {
                let n = finished_since(log, up);
                if n >= 30 { Ok(()) } else { Err(n) }
            },
        )
        .await;
        stop.store(true, Ordering::Relaxed);
        (down, restored, up)
    };
    let ((down, restored, up), _) = tokio::join!(controller, join_all((0..PUSHERS).map(pusher)));

    let log = std::mem::take(&mut *log.lock().unwrap());
    let mut accepted = HashSet::new();
    let mut refused_while_down = Vec::new();
    for pushed in &log {
        match pushed.statuses.as_slice() {
            [200] => {
                assert!(pushed.acknowledged, "a 200 answer is `success`");
                accepted.insert(pushed.event_id.clone());
            }
            [503] => {}
            other => panic!("answered {other:?}: only 200 or 503 are acceptable"),
        }
        if pushed.started > down && pushed.finished < restored {
            assert_eq!(
                pushed.statuses,
                [503],
                "a callback while the broker is cut off is answered 503"
            );
            refused_while_down.push(pushed);
        }
        if pushed.started > up {
            assert_eq!(
                pushed.statuses,
                [200],
                "a callback after recovery is accepted"
            );
        }
    }
    assert!(refused_while_down.len() >= 20);

    // A refused callback leaves no dedup record, so WeChat's retry is accepted at once.
    for pushed in &refused_while_down {
        assert_eq!(
            env.redis_get(&env.dedup_key(&pushed.event_id)).await,
            None,
            "dedup claim of a refused callback was not released"
        );
    }
    for pushed in refused_while_down.iter().take(5) {
        let retry = env.push(&env.plain, &pushed.xml).await;
        assert_eq!(retry.statuses, [200], "WeChat's retry after recovery");
        accepted.insert(pushed.event_id.clone());
    }

    let in_queue = env.worker_queue_ids(&accepted, WAIT).await;
    let missing: Vec<_> = accepted.difference(&in_queue).collect();
    assert!(
        missing.is_empty(),
        "{} of {} callbacks answered 200 are not in {}: {missing:?}",
        missing.len(),
        accepted.len(),
        env.worker_queue()
    );
    owned_env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_answers_503_publishes_nothing_and_recovers() {
    let proxy = TcpProxy::in_front_of(&redis_url()).await;
    let env = TestEnv::with(Options::new().redis_url(&proxy.url_for(&redis_url()))).await;
    let mut events = env.consumer().await;

    let before = env.text(&env.plain, "before the outage");
    assert_eq!(env.push(&env.plain, &before).await.statuses, [200]);
    let (others, _) = events.until(&event_id_of("plain", &before), WAIT).await;
    assert!(others.is_empty());

    proxy.cut();
    env.wait_readyz(503, NOTICE, "/readyz 503 with Redis cut off")
        .await;
    let mut refused = Vec::new();
    for i in 0..5 {
        let xml = env.text(&env.plain, &format!("during the outage {i}"));
        let outcome = env.push(&env.plain, &xml).await;
        assert_eq!(outcome.statuses, [503], "push {i} with Redis cut off");
        refused.push(xml);
    }

    proxy.restore();
    env.wait_readyz(200, NOTICE, "/readyz 200 after Redis is back")
        .await;
    let after = env.text(&env.plain, "after the outage");
    assert_eq!(env.push(&env.plain, &after).await.statuses, [200]);
    let (others, _) = events.until(&event_id_of("plain", &after), WAIT).await;
    assert!(
        others.is_empty(),
        "callbacks answered 503 were published: {others:?}"
    );

    // WeChat's retry of a refused callback is accepted and published now.
    let retry = env.push(&env.plain, &refused[0]).await;
    assert_eq!(retry.statuses, [200]);
    let (others, _) = events.until(&event_id_of("plain", &refused[0]), WAIT).await;
    assert!(others.is_empty());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_partition_answers_503_within_the_budget_and_recovers() {
    let proxy = TcpProxy::in_front_of(&redis_url()).await;
    let env = TestEnv::with(
        Options::new()
            .redis_url(&proxy.url_for(&redis_url()))
            .gateway("request_budget_ms = 1000")
            .gateway("publish_timeout_ms = 500"),
    )
    .await;
    let mut events = env.consumer().await;
    let before = env.text(&env.plain, "before the partition");
    assert_eq!(env.push(&env.plain, &before).await.statuses, [200]);

    // Redis stops answering but no connection closes: only timeouts can tell.
    proxy.stall();
    let silent = env.text(&env.plain, "while Redis is silent");
    let outcome = env.push(&env.plain, &silent).await;
    assert_eq!(
        outcome.statuses,
        [503],
        "answered within the budget, not held"
    );
    env.wait_readyz(503, NOTICE, "/readyz 503 with Redis silent")
        .await;
    let outcome = env
        .push(&env.plain, &env.text(&env.plain, "still silent"))
        .await;
    assert_eq!(outcome.statuses, [503]);

    proxy.resume();
    env.wait_readyz(200, NOTICE, "/readyz 200 after the partition")
        .await;
    let after = env.text(&env.plain, "after the partition");
    assert_eq!(env.push(&env.plain, &after).await.statuses, [200]);
    let (others, _) = events.until(&event_id_of("plain", &after), WAIT).await;
    let ids: Vec<_> = others.iter().map(|r| r.event.event_id.as_str()).collect();
    assert_eq!(
        ids,
        [event_id_of("plain", &before)],
        "only the callback answered 200 before the partition was published"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_partition_is_noticed_and_recovered() {
    let proxy = TcpProxy::in_front_of(&rabbitmq_url()).await;
    let env = TestEnv::with(
        Options::new()
            .rabbitmq_url(&proxy.url_for(&rabbitmq_url()))
            .gateway("request_budget_ms = 1000")
            .gateway("publish_timeout_ms = 500"),
    )
    .await;
    let mut events = env.consumer().await;

    // The broker stops answering but no connection closes: only heartbeats can tell.
    proxy.stall();
    let silent = env.text(&env.plain, "while the broker is silent");
    assert_eq!(env.push(&env.plain, &silent).await.statuses, [503]);
    let env_ref = &env;
    env.wait_readyz(503, NOTICE, "/readyz 503 with the broker silent")
        .await;

    proxy.resume();
    env.wait_readyz(200, NOTICE, "/readyz 200 after the partition")
        .await;
    let after = env.text(&env.plain, "after the partition");
    eventually(WAIT, "a callback accepted after the partition", || async {
        match env_ref
            .push(&env_ref.plain, &after)
            .await
            .statuses
            .as_slice()
        {
            [200] => Ok(()),
            other => Err(other.to_vec()),
        }
    })
    .await;
    events.until(&event_id_of("plain", &after), WAIT).await;
    env.cleanup().await;
}

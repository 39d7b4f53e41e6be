//! WeChat's retries of one callback (same event id) are answered alike and published once
//! (docs/contract.md §1.1 step 6, §3).

use std::time::Duration;

use futures_util::future::join_all;
use wxgate_tests::{Options, TestEnv, event_id_of};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_msg_id_is_published_once_and_answered_alike() {
    let env = TestEnv::start().await;
    let mut events = env.consumer().await;
    // `ping` in safe mode: the answer is an encrypted envelope with a random IV, so equal
    // bodies prove the stored answer was repeated, not a new one rendered.
    let xml = env.text(&env.safe, "ping");
    let event_id = event_id_of("safe", &xml);

    let first = env.push(&env.safe, &xml).await;
    assert_eq!(first.statuses, [200]);
    assert!(first.answer.reply().is_some(), "{:?}", first.answer);
    let (before, received) = events.until(&event_id, WAIT).await;
    assert!(before.is_empty(), "unexpected events: {before:?}");
    assert!(received.event.passive_reply.is_some());

    for retry in 1..=2 {
        let again = env.push(&env.safe, &xml).await;
        assert_eq!(again.statuses, [200], "retry {retry}");
        assert_eq!(
            again.body, first.body,
            "retry {retry} gets the stored answer"
        );
        assert_eq!(again.answer, first.answer, "retry {retry}");
    }
    let later = env.marker(&mut events).await;
    assert!(later.is_empty(), "a retry was published again: {later:?}");
    assert_eq!(
        env.metric("wxgate_gateway_dedup_hits_total").await,
        Some(2.0)
    );

    let key = env.dedup_key(&event_id);
    let stored = env.stored_answer(&key).await;
    assert_eq!(stored, [b"A".as_slice(), &first.body].concat());
    let ttl_ms = env.redis_pttl(&key).await;
    assert!(
        (590_000..=600_000).contains(&ttl_ms),
        "dedup record TTL is dedup_ttl_s (600 s): {ttl_ms} ms left"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_are_published_once() {
    let env = TestEnv::start().await;
    let mut events = env.consumer().await;
    let xml = env.text(&env.plain, "ten at once");
    let event_id = event_id_of("plain", &xml);

    let outcomes = join_all((0..10).map(|_| env.push(&env.plain, &xml))).await;
    for (i, outcome) in outcomes.iter().enumerate() {
        assert_eq!(outcome.statuses, [200], "push {i}: {:?}", outcome.body);
        assert_eq!(outcome.body, "success", "push {i}");
    }
    let (before, _) = events.until(&event_id, WAIT).await;
    assert!(before.is_empty(), "unexpected events: {before:?}");
    let later = env.marker(&mut events).await;
    assert!(
        later.is_empty(),
        "a concurrent duplicate was published: {:?}",
        later
            .iter()
            .map(|r| r.event.event_id.as_str())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        env.metric("wxgate_gateway_dedup_hits_total").await,
        Some(9.0)
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_msg_id_from_another_user_is_a_different_event() {
    let env = TestEnv::start().await;
    let mut events = env.consumer().await;
    let msg_id = env.msg_ids.next_id();
    let first = env.inbound(&env.plain).text(msg_id, "same id");
    let second = env.inbound(&env.plain).text(msg_id, "same id");
    let (first_id, second_id) = (event_id_of("plain", &first), event_id_of("plain", &second));
    assert_ne!(first_id, second_id);

    for xml in [&first, &second] {
        assert_eq!(env.push(&env.plain, xml).await.statuses, [200]);
    }
    let (_, one) = events.until(&first_id, WAIT).await;
    let (between, two) = events.until(&second_id, WAIT).await;
    assert!(between.is_empty(), "unexpected events: {between:?}");
    assert_eq!((one.event.msg_id, two.event.msg_id), (msg_id, msg_id));
    assert_eq!(
        env.metric("wxgate_gateway_dedup_hits_total").await,
        Some(0.0)
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_stored_by_another_gateway_is_repeated() {
    let env = TestEnv::start().await;
    let mut events = env.consumer().await;
    let xml = env.text(&env.plain, "answered elsewhere");
    let key = env.dedup_key(&event_id_of("plain", &xml));
    env.redis_set(&key, b"Asuccess", Duration::from_secs(60))
        .await;

    let outcome = env.push(&env.plain, &xml).await;
    assert_eq!(outcome.statuses, [200]);
    assert_eq!(outcome.body, "success");
    let published = env.marker(&mut events).await;
    assert!(published.is_empty(), "published again: {published:?}");
    assert_eq!(
        env.metric("wxgate_gateway_dedup_hits_total").await,
        Some(1.0)
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_of_a_vanished_gateway_is_taken_over_when_it_expires() {
    let env = TestEnv::start().await;
    let mut events = env.consumer().await;
    let xml = env.text(&env.plain, "claimed by a gateway that died");
    let event_id = event_id_of("plain", &xml);
    // Shorter than the request budget (3 s): the gateway waits it out and takes over.
    env.redis_set(&env.dedup_key(&event_id), b"P", Duration::from_millis(800))
        .await;

    let outcome = env.push(&env.plain, &xml).await;
    assert_eq!(outcome.statuses, [200], "{:?}", outcome.body);
    assert_eq!(outcome.body, "success");
    let (before, _) = events.until(&event_id, WAIT).await;
    assert!(before.is_empty());
    assert_eq!(
        env.stored_answer(&env.dedup_key(&event_id)).await,
        b"Asuccess"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_held_past_the_budget_answers_503_and_publishes_nothing() {
    let env = TestEnv::with(
        Options::new()
            .gateway("request_budget_ms = 1000")
            .gateway("publish_timeout_ms = 500"),
    )
    .await;
    let mut events = env.consumer().await;
    let xml = env.text(&env.plain, "claimed for longer than the budget");
    let event_id = event_id_of("plain", &xml);
    let key = env.dedup_key(&event_id);
    env.redis_set(&key, b"P", Duration::from_secs(30)).await;

    let outcome = env.push(&env.plain, &xml).await;
    assert_eq!(outcome.statuses, [503]);
    let published = env.marker(&mut events).await;
    assert!(published.is_empty(), "published: {published:?}");
    assert_eq!(
        env.redis_get(&key).await.as_deref(),
        Some(b"P".as_slice()),
        "another request's claim is not ours to release"
    );
    env.cleanup().await;
}

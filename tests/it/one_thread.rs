//! The gateway on one thread, as `gateway.threads = 1` (the default) runs it: its claim
//! rounds, answer log and publisher share the thread with every connection. Here they also
//! share it with the test itself, so anything that needs a second thread would hang or panic.

use std::time::Duration;

use futures_util::future::join_all;
use wxgate_sim::Answer;
use wxgate_tests::{TestEnv, event_id_of};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "current_thread")]
async fn one_thread_answers_publishes_and_deduplicates_in_every_mode() {
    let env = TestEnv::start().await;
    let mut events = env.consumer().await;
    for account in [&env.plain, &env.compat, &env.safe] {
        let xml = env.text(account, "on one thread");
        let first = env.push(account, &xml).await;
        assert_eq!(first.statuses, [200], "{}: {:?}", account.id, first.body);
        assert_eq!(first.answer, Answer::Acknowledged, "{}", account.id);
        let (before, received) = events.until(&event_id_of(&account.id, &xml), WAIT).await;
        assert!(before.is_empty(), "unexpected events: {before:?}");
        assert_eq!(received.event.account_id, account.id);

        let again = env.push(account, &xml).await;
        assert_eq!(again.statuses, [200], "{}: retry", account.id);
        assert_eq!(
            again.body, first.body,
            "{}: the retry gets the stored answer",
            account.id
        );
    }

    // Concurrent callbacks share claim rounds and publisher writes on the one thread.
    let texts: Vec<String> = (0..50)
        .map(|n| env.text(&env.plain, &format!("together {n}")))
        .collect();
    let outcomes = join_all(texts.iter().map(|xml| env.push(&env.plain, xml))).await;
    for outcome in &outcomes {
        assert_eq!(outcome.statuses, [200], "{:?}", outcome.body);
    }
    let mut ids: Vec<String> = texts.iter().map(|xml| event_id_of("plain", xml)).collect();
    while !ids.is_empty() {
        let received = events.expect(WAIT).await;
        let id = &received.event.event_id;
        let at = ids.iter().position(|wanted| wanted == id);
        assert!(at.is_some(), "unexpected or repeated event {id}");
        if let Some(at) = at {
            ids.swap_remove(at);
        }
    }
    let later = env.marker(&mut events).await;
    assert!(later.is_empty(), "a retry was published again: {later:?}");
    env.cleanup().await;
}

//! A passive rule (`ping` → `pong`) is answered in the HTTP response: plain XML to a plain
//! push, the encrypted reply envelope to an encrypted one; the event records the reply.

use std::time::Duration;

use wxgate_proto::v1 as pb;
use wxgate_sim::{Answer, PushAccount, PushOutcome, Reply};
use wxgate_tests::{TestEnv, event_id_of};

const WAIT: Duration = Duration::from_secs(10);

/// Pushes `ping` to `account`; checks the answer is the `pong` reply and the event records
/// it; returns the push outcome for the mode-specific checks.
async fn ping(env: &TestEnv, account: &PushAccount) -> PushOutcome {
    let mut events = env.consumer().await;
    let xml = env.text(account, "ping");
    let outcome = env.push(account, &xml).await;
    assert_eq!(outcome.statuses, [200]);
    assert_eq!(
        outcome.answer,
        Answer::Reply(Reply::Text {
            content: "pong".to_owned()
        }),
        "body: {:?}",
        outcome.body
    );
    let (before, received) = events.until(&event_id_of(&account.id, &xml), WAIT).await;
    assert!(before.is_empty(), "unexpected events: {before:?}");
    assert_eq!(
        received.event.passive_reply,
        Some(pb::Reply {
            kind: Some(pb::reply::Kind::Text("pong".to_owned()))
        })
    );
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_ping_gets_a_plain_pong() {
    let env = TestEnv::start().await;
    let outcome = ping(&env, &env.plain).await;
    assert!(!outcome.reply_encrypted);
    let body = String::from_utf8(outcome.body.to_vec()).unwrap();
    assert!(
        body.starts_with("<xml>") && body.contains("pong") && !body.contains("<Encrypt>"),
        "plain reply XML expected: {body}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_ping_gets_an_encrypted_pong() {
    let env = TestEnv::start().await;
    let outcome = ping(&env, &env.safe).await;
    assert!(outcome.reply_encrypted);
    let body = String::from_utf8(outcome.body.to_vec()).unwrap();
    assert!(
        body.contains("<Encrypt>") && body.contains("<MsgSignature>") && !body.contains("pong"),
        "encrypted reply envelope expected: {body}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_ping_gets_an_encrypted_pong() {
    let env = TestEnv::start().await;
    let outcome = ping(&env, &env.compat).await;
    assert!(
        outcome.reply_encrypted,
        "an encrypted request is answered encrypted"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_other_than_ping_gets_success_and_no_reply() {
    let env = TestEnv::start().await;
    let mut events = env.consumer().await;
    let xml = env.text(&env.safe, "ping please");
    let outcome = env.push(&env.safe, &xml).await;
    assert_eq!(outcome.statuses, [200]);
    assert_eq!(outcome.answer, Answer::Acknowledged);
    assert_eq!(outcome.body, "success");
    let (_, received) = events.until(&event_id_of("safe", &xml), WAIT).await;
    assert_eq!(received.event.passive_reply, None);
    env.cleanup().await;
}

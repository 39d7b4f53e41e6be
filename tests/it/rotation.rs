//! Key rotation (docs/contract.md §1.1 step 4): during a rotation the account's previous Token and
//! EncodingAESKey are accepted after the current ones, and a reply is sealed with the pair
//! the request verified with.

use std::time::Duration;

use wxgate_sim::{Answer, PushAccount, PushMode, Reply};
use wxgate_tests::{Options, TestEnv, event_id_of};

const WAIT: Duration = Duration::from_secs(10);
const NEW_KEY: &str = "NewNewNewNewNewNewNewNewNewNewNewNewNewNewA";
const OLD_KEY: &str = "OldOldOldOldOldOldOldOldOldOldOldOldOldOldA";

const ROTATING: &str = r#"
[[accounts]]
id = "rotating"
appid = "wx4444444444444444"
token = "newtoken"
previous_token = "oldtoken"
encoding_aes_key = "NewNewNewNewNewNewNewNewNewNewNewNewNewNewA"
previous_encoding_aes_key = "OldOldOldOldOldOldOldOldOldOldOldOldOldOldA"
mode = "safe"

[[accounts.passive]]
match = { msg_type = "text", content = "ping" }
reply = { text = "pong" }
"#;

fn rotating(token: &str, key: &str) -> PushAccount {
    PushAccount {
        id: "rotating".to_owned(),
        appid: "wx4444444444444444".to_owned(),
        token: token.to_owned(),
        encoding_aes_key: Some(key.to_owned()),
        mode: PushMode::Safe,
        original_id: "gh_rotating000".to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_token_and_key_are_accepted_during_rotation() {
    let env = TestEnv::with(Options::new().accounts(ROTATING)).await;
    let mut events = env.consumer().await;
    for (token, key) in [
        ("newtoken", NEW_KEY),
        ("oldtoken", OLD_KEY),
        ("oldtoken", NEW_KEY),
        ("newtoken", OLD_KEY),
    ] {
        let account = rotating(token, key);
        let key_name = if key == NEW_KEY { "new key" } else { "old key" };
        let xml = env.text(&account, "ping");
        let outcome = env.push(&account, &xml).await;
        assert_eq!(outcome.statuses, [200], "{token} with the {key_name}");
        assert_eq!(
            outcome.answer,
            Answer::Reply(Reply::Text {
                content: "pong".to_owned()
            }),
            "{token} with the {key_name}: the reply opens with the pair the push used"
        );
        let (before, received) = events.until(&event_id_of("rotating", &xml), WAIT).await;
        assert!(before.is_empty());
        assert_eq!(received.event.raw_xml, xml);
    }

    let stranger = rotating("sometoken", NEW_KEY);
    let outcome = env.push(&stranger, &env.text(&stranger, "ping")).await;
    assert_eq!(outcome.statuses, [403], "a token that is neither");
    let stranger = rotating("newtoken", "StrangerStrangerStrangerStrangerStrangerSAA");
    let outcome = env.push(&stranger, &env.text(&stranger, "ping")).await;
    assert_eq!(outcome.statuses, [400], "a key that is neither");
    let published = env.marker(&mut events).await;
    assert!(published.is_empty(), "refused pushes were published");
    env.cleanup().await;
}

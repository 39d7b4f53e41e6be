//! Every way a callback can arrive (plain, compat, safe; messages and events) is answered
//! `success` and published once, as the event of docs/contract.md §4 with the routing key and
//! AMQP properties of §1.2.

use std::collections::HashMap;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wxgate_proto::v1 as pb;
use wxgate_proto::v1::event::Payload;
use wxgate_sim::{Answer, PicsEvent, PushAccount, PushMode, ScanCodeEvent};
use wxgate_tests::{ReceivedEvent, TestEnv, event_id_of, now_ms};

const WAIT: Duration = Duration::from_secs(10);

fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Pushes `xml` to `account`, checks the answer is `success`, receives the one event it
/// published and checks what every event carries; the caller checks the rest.
async fn push_and_receive(
    env: &TestEnv,
    account: &PushAccount,
    xml: &str,
    encrypt_mode: pb::EncryptMode,
) -> ReceivedEvent {
    let mut events = env.consumer().await;
    let before_ms = now_ms();
    let outcome = env.push(account, xml).await;
    let after_ms = now_ms();
    assert_eq!(outcome.statuses, [200], "answer: {:?}", outcome.body);
    assert_eq!(outcome.answer, Answer::Acknowledged);
    assert_eq!(outcome.body, "success");

    let received = events.expect(WAIT).await;
    let event_id = event_id_of(&account.id, xml);
    let event = &received.event;
    assert_eq!(event.event_id, event_id);
    assert_eq!(event.account_id, account.id);
    assert_eq!(event.appid, account.appid);
    assert_eq!(event.to_user, account.original_id);
    assert_eq!(
        event.raw_xml, xml,
        "raw_xml is the (decrypted) XML as pushed"
    );
    assert_eq!(event.encrypt_mode, encrypt_mode as i32);
    assert_eq!(event.passive_reply, None);
    assert!(
        (before_ms..=after_ms).contains(&event.received_at_ms),
        "received_at_ms {} not within the push ({before_ms}..={after_ms})",
        event.received_at_ms
    );

    assert_eq!(received.exchange, env.exchange());
    assert_eq!(received.message_id.as_deref(), Some(event_id.as_str()));
    assert_eq!(received.kind.as_deref(), Some("wxgate.v1.Event"));
    assert_eq!(
        received.content_type.as_deref(),
        Some("application/x-protobuf")
    );
    assert_eq!(received.delivery_mode, Some(2));
    assert_eq!(received.header("account_id"), Some(account.id.as_str()));
    let timestamp = received.timestamp.expect("AMQP timestamp is set");
    let (before_s, after_s) = (before_ms / 1000, after_ms / 1000);
    assert!(
        (before_s..=after_s).contains(&i64::try_from(timestamp).unwrap()),
        "AMQP timestamp {timestamp} not within the push"
    );

    let others = env.marker(&mut events).await;
    assert!(others.is_empty(), "published more than once: {others:?}");
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_is_published_and_acknowledged() {
    let env = TestEnv::start().await;
    let user = env.inbound(&env.plain);
    let msg_id = env.msg_ids.next_id();
    let content = "hello, 世界 <&> ]]";
    let xml = user.text(msg_id, content);

    let received = push_and_receive(&env, &env.plain, &xml, pb::EncryptMode::Plain).await;

    assert_eq!(received.routing_key, "plain.msg.text");
    let event = received.event;
    assert_eq!(event.from_user, user.from_user_name);
    assert_eq!(event.create_time, user.create_time);
    assert_eq!(event.msg_type, "text");
    assert_eq!(event.event, "");
    assert_eq!(event.msg_id, msg_id);
    assert_eq!(event.fields, fields(&[("Content", content)]));
    assert_eq!(
        event.payload,
        Some(Payload::Text(pb::Text {
            content: content.to_owned(),
            bizmsgmenuid: String::new(),
        }))
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_text_is_published_decrypted() {
    let env = TestEnv::start().await;
    let user = env.inbound(&env.compat);
    let msg_id = env.msg_ids.next_id();
    let xml = user.text(msg_id, "compat hello");

    let received = push_and_receive(&env, &env.compat, &xml, pb::EncryptMode::Compat).await;

    assert_eq!(received.routing_key, "compat.msg.text");
    let event = received.event;
    assert_eq!(event.from_user, user.from_user_name);
    assert_eq!(event.create_time, user.create_time);
    assert_eq!(event.msg_type, "text");
    assert_eq!(event.msg_id, msg_id);
    assert_eq!(event.fields, fields(&[("Content", "compat hello")]));
    assert_eq!(
        event.payload,
        Some(Payload::Text(pb::Text {
            content: "compat hello".to_owned(),
            bizmsgmenuid: String::new(),
        }))
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_account_accepts_a_plain_push() {
    let env = TestEnv::start().await;
    let as_plain = PushAccount {
        mode: PushMode::Plain,
        ..env.compat.clone()
    };
    let user = env.inbound(&as_plain);
    let msg_id = env.msg_ids.next_id();
    let xml = user.text(msg_id, "plain to compat");

    let received = push_and_receive(&env, &as_plain, &xml, pb::EncryptMode::Plain).await;

    assert_eq!(received.routing_key, "compat.msg.text");
    assert_eq!(received.event.msg_id, msg_id);
    assert_eq!(
        received.event.fields,
        fields(&[("Content", "plain to compat")])
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_text_is_published_decrypted() {
    let env = TestEnv::start().await;
    let user = env.inbound(&env.safe);
    let msg_id = env.msg_ids.next_id();
    let xml = user.text(msg_id, "safe hello");

    let received = push_and_receive(&env, &env.safe, &xml, pb::EncryptMode::Safe).await;

    assert_eq!(received.routing_key, "safe.msg.text");
    let event = received.event;
    assert_eq!(event.from_user, user.from_user_name);
    assert_eq!(event.create_time, user.create_time);
    assert_eq!(event.msg_type, "text");
    assert_eq!(event.msg_id, msg_id);
    assert_eq!(event.fields, fields(&[("Content", "safe hello")]));
    assert_eq!(
        event.payload,
        Some(Payload::Text(pb::Text {
            content: "safe hello".to_owned(),
            bizmsgmenuid: String::new(),
        }))
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_subscribe_event_is_published() {
    let env = TestEnv::start().await;
    let user = env.inbound(&env.safe);
    let xml = user.subscribe();

    let received = push_and_receive(&env, &env.safe, &xml, pb::EncryptMode::Safe).await;

    assert_eq!(received.routing_key, "safe.event.subscribe");
    let event = received.event;
    assert_eq!(event.from_user, user.from_user_name);
    assert_eq!(event.create_time, user.create_time);
    assert_eq!(event.msg_type, "event");
    assert_eq!(event.event, "subscribe");
    assert_eq!(event.msg_id, 0);
    assert_eq!(event.fields, fields(&[("EventKey", "")]));
    assert_eq!(
        event.payload,
        Some(Payload::Subscribe(pb::Subscribe {
            event_key: String::new(),
            ticket: String::new(),
        }))
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_event_routing_key_is_lower_cased() {
    let env = TestEnv::start().await;
    let user = env.inbound(&env.safe);
    let xml = user.scan("42", "gQH47joAAAAAAAAAASxodHRwOi8v");

    let received = push_and_receive(&env, &env.safe, &xml, pb::EncryptMode::Safe).await;

    assert_eq!(received.routing_key, "safe.event.scan");
    let event = received.event;
    assert_eq!(event.event, "SCAN", "Event as sent");
    assert_eq!(
        event.fields,
        fields(&[
            ("EventKey", "42"),
            ("Ticket", "gQH47joAAAAAAAAAASxodHRwOi8v")
        ])
    );
    assert_eq!(
        event.payload,
        Some(Payload::Scan(pb::Scan {
            event_key: "42".to_owned(),
            ticket: "gQH47joAAAAAAAAAASxodHRwOi8v".to_owned(),
        }))
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_voice_is_published_with_recognition() {
    let env = TestEnv::start().await;
    let user = env.inbound(&env.plain);
    let msg_id = env.msg_ids.next_id();
    let xml = user.voice(msg_id, "media-voice-1", "amr", Some("你好"));

    let received = push_and_receive(&env, &env.plain, &xml, pb::EncryptMode::Plain).await;

    assert_eq!(received.routing_key, "plain.msg.voice");
    let event = received.event;
    assert_eq!(event.from_user, user.from_user_name);
    assert_eq!(event.msg_type, "voice");
    assert_eq!(event.msg_id, msg_id);
    assert_eq!(
        event.fields,
        fields(&[
            ("MediaId", "media-voice-1"),
            ("Format", "amr"),
            ("Recognition", "你好"),
        ])
    );
    assert_eq!(
        event.payload,
        Some(Payload::Voice(pb::Voice {
            media_id: "media-voice-1".to_owned(),
            format: "amr".to_owned(),
            recognition: "你好".to_owned(),
            media_id_16k: String::new(),
        }))
    );
    env.cleanup().await;
}

/// docs/contract.md §3 written out: the first 16 bytes of the SHA-256 of the lines joined by `\n`.
fn contract_event_id(lines: &[&str]) -> String {
    let digest = Sha256::digest(lines.join("\n").as_bytes());
    hex::encode(&digest[..16])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_ids_follow_the_contract_formula() {
    let env = TestEnv::start().await;
    let mut events = env.consumer().await;
    let user = env.inbound(&env.plain);
    let (from, created) = (user.from_user_name.as_str(), user.create_time.to_string());
    let msg_id = env.msg_ids.next_id();
    let job_id = env.msg_ids.next_id();
    let cases = [
        (
            "a message with MsgId",
            user.text(msg_id, "id"),
            contract_event_id(&["m", "plain", from, &created, &msg_id.to_string()]),
            "plain.msg.text",
        ),
        (
            "an event with EventKey",
            user.click("MENU_KEY"),
            contract_event_id(&["e", "plain", from, &created, "CLICK", "MENU_KEY"]),
            "plain.event.click",
        ),
        (
            "an event without EventKey",
            user.location_report(23.1, 113.3, 65.0),
            contract_event_id(&["e", "plain", from, &created, "LOCATION", ""]),
            "plain.event.location",
        ),
        (
            "an event with MsgID",
            user.template_job_finish(job_id, "success"),
            contract_event_id(&["m", "plain", from, &created, &job_id.to_string()]),
            "plain.event.templatesendjobfinish",
        ),
    ];
    for (what, xml, event_id, routing_key) in &cases {
        let outcome = env.push(&env.plain, xml).await;
        assert_eq!(outcome.statuses, [200], "{what}");
        let (before, received) = events.until(event_id, WAIT).await;
        assert!(before.is_empty(), "{what}: other events {before:?}");
        assert_eq!(
            received.message_id.as_deref(),
            Some(event_id.as_str()),
            "{what}"
        );
        assert_eq!(&received.routing_key, routing_key, "{what}");
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_elements_are_dotted_paths_in_fields() {
    let env = TestEnv::start().await;
    let user = env.inbound(&env.safe);

    let scan = user.scancode(
        ScanCodeEvent::WaitMsg,
        "scan_key",
        "qrcode",
        "https://e.com/?a=1&b=2",
    );
    let received = push_and_receive(&env, &env.safe, &scan, pb::EncryptMode::Safe).await;
    assert_eq!(received.routing_key, "safe.event.scancode_waitmsg");
    assert_eq!(
        received.event.fields,
        fields(&[
            ("EventKey", "scan_key"),
            ("ScanCodeInfo.ScanType", "qrcode"),
            ("ScanCodeInfo.ScanResult", "https://e.com/?a=1&b=2"),
        ])
    );
    assert_eq!(
        received.event.payload,
        Some(Payload::Scancode(pb::ScanCodeEvent {
            event_key: "scan_key".to_owned(),
            scan_type: "qrcode".to_owned(),
            scan_result: "https://e.com/?a=1&b=2".to_owned(),
        }))
    );

    let pics = user.pics(PicsEvent::SysPhoto, "pic_key", &["md5a", "md5b"]);
    let received = push_and_receive(&env, &env.safe, &pics, pb::EncryptMode::Safe).await;
    assert_eq!(received.routing_key, "safe.event.pic_sysphoto");
    assert_eq!(
        received.event.fields,
        fields(&[
            ("EventKey", "pic_key"),
            ("SendPicsInfo.Count", "2"),
            ("SendPicsInfo.PicList.item.PicMd5Sum", "md5a"),
            ("SendPicsInfo.PicList.item[1].PicMd5Sum", "md5b"),
        ])
    );
    assert_eq!(
        received.event.payload,
        Some(Payload::Pics(pb::PicsEvent {
            event_key: "pic_key".to_owned(),
            count: 2,
            pic_md5_sums: vec!["md5a".to_owned(), "md5b".to_owned()],
        }))
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypt_type_raw_is_a_plain_push() {
    let env = TestEnv::start().await;
    let mut events = env.consumer().await;
    let xml = env.text(&env.plain, "raw");
    let timestamp = wxgate_tests::now_s().to_string();
    let nonce = wxgate_tests::nonce();
    let signature = wechat::url_signature(&env.plain.token, &timestamp, &nonce);
    let path = format!(
        "/wx/plain?{}",
        wxgate_tests::query(&[
            ("signature", &signature),
            ("timestamp", &timestamp),
            ("nonce", &nonce),
            ("openid", "oRawRawRawRawRawRawRawRawRaw"),
            ("encrypt_type", "raw"),
        ])
    );
    let (status, body) = env.post(&path, xml.clone()).await;
    assert_eq!((status, body.as_ref()), (200, b"success".as_slice()));
    let (_, received) = events.until(&event_id_of("plain", &xml), WAIT).await;
    assert_eq!(received.event.encrypt_mode, pb::EncryptMode::Plain as i32);
    env.cleanup().await;
}

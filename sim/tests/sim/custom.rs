//! Customer-service messages: every msgtype, OpenID policies and windows,
//! typing, faults and the call log.

use std::time::Duration;

use serde_json::{Value, json};
use wxgate_sim::{ANY_PATH, Fault, Interaction, SimConfig, WindowRules};

use crate::support::*;

const SEND: &str = "/cgi-bin/message/custom/send";

async fn send(sim: &wxgate_sim::Sim, token: &str, body: &Value) -> i64 {
    post_json(sim, &format!("{SEND}?access_token={token}"), body)
        .await
        .errcode()
}

fn every_msgtype(touser: &str) -> Vec<Value> {
    vec![
        json!({"touser": touser, "msgtype": "text", "text": {"content": "Hello <a href=\"https://example.com\">link</a>"}}),
        json!({"touser": touser, "msgtype": "image", "image": {"media_id": "MEDIA_ID"}}),
        json!({"touser": touser, "msgtype": "voice", "voice": {"media_id": "MEDIA_ID"}}),
        json!({"touser": touser, "msgtype": "video", "video": {"media_id": "M", "thumb_media_id": "T", "title": "TITLE", "description": "D"}}),
        json!({"touser": touser, "msgtype": "music", "music": {"title": "T", "description": "D", "musicurl": "U", "hqmusicurl": "HQ", "thumb_media_id": "T"}}),
        json!({"touser": touser, "msgtype": "news", "news": {"articles": [{"title": "T", "description": "D", "url": "URL", "picurl": "PIC"}]}}),
        json!({"touser": touser, "msgtype": "mpnews", "mpnews": {"media_id": "MEDIA_ID"}}),
        json!({"touser": touser, "msgtype": "mpnewsarticle", "mpnewsarticle": {"article_id": "ARTICLE_ID"}}),
        json!({"touser": touser, "msgtype": "msgmenu", "msgmenu": {"head_content": "Are you satisfied?", "list": [{"id": "101", "content": "Yes"}, {"id": "102", "content": "No"}], "tail_content": "Thank you"}}),
        json!({"touser": touser, "msgtype": "wxcard", "wxcard": {"card_id": "CARD_ID"}}),
        json!({"touser": touser, "msgtype": "miniprogrampage", "miniprogrampage": {"title": "T", "appid": "MINI", "pagepath": "pages/index/index", "thumb_media_id": "T"}}),
        json!({"touser": touser, "msgtype": "text", "text": {"content": "as agent"}, "customservice": {"kf_account": "agent1@gh_account"}}),
    ]
}

#[tokio::test]
async fn every_msgtype_is_accepted() {
    let sim = start(config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    for body in every_msgtype(&openid(1)) {
        assert_eq!(send(&sim, &token, &body).await, 0, "{body}");
    }
    let answer = post_json(
        &sim,
        &format!("{SEND}?access_token={token}"),
        &every_msgtype(&openid(1))[0],
    )
    .await
    .json();
    assert_eq!(answer, json!({"errcode": 0, "errmsg": "ok"}));
}

#[tokio::test]
async fn content_errors() {
    let sim = start(config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    let user = openid(1);
    let check = |body: Value, expected: i64| {
        let sim = sim.clone();
        let token = token.clone();
        async move { assert_eq!(send(&sim, &token, &body).await, expected, "{body}") }
    };
    let article = json!({"title": "T", "url": "U"});
    check(
        json!({"touser": user, "msgtype": "news", "news": {"articles": [article, article]}}),
        45008,
    )
    .await;
    check(
        json!({"touser": user, "msgtype": "file", "file": {}}),
        40008,
    )
    .await;
    check(
        json!({"touser": user, "msgtype": "text", "text": {"content": ""}}),
        44004,
    )
    .await;
    check(
        json!({"touser": "not-an-openid", "msgtype": "text", "text": {"content": "x"}}),
        40003,
    )
    .await;
    check(
        json!({"touser": user, "msgtype": "image", "image": {}}),
        40007,
    )
    .await;
    check(
        json!({"touser": user, "msgtype": "text", "text": {"content": "x"}, "customservice": {"kf_account": "nobody"}}),
        61452,
    )
    .await;

    let url = format!("{SEND}?access_token={token}");
    let escaped =
        format!(r#"{{"touser":"{user}","msgtype":"text","text":{{"content":"\u4f60\u597d"}}}}"#);
    assert_eq!(post(&sim, &url, &escaped).await.errcode(), 40033);
    assert_eq!(post(&sim, &url, "").await.errcode(), 44002);
    assert_eq!(post(&sim, &url, "{not json").await.errcode(), 47001);
    assert_eq!(get(&sim, &url).await.errcode(), 43002);
}

#[tokio::test]
async fn strict_policy_needs_known_users_and_open_windows() {
    let sim = start(strict_config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    let user = openid(7);
    assert_eq!(send_text(&sim, &token, &user).await, 40003, "unknown user");

    sim.add_user(APP, &user).unwrap();
    assert_eq!(send_text(&sim, &token, &user).await, 45015, "no window yet");

    // A user message opens 5 messages for 48 hours (docs/protocol.md §6.4).
    sim.record_interaction(APP, &user, Interaction::Message)
        .unwrap();
    for _ in 0..5 {
        assert_eq!(send_text(&sim, &token, &user).await, 0);
    }
    assert_eq!(send_text(&sim, &token, &user).await, 45047);

    // A new interaction opens a new window.
    sim.record_interaction(APP, &user, Interaction::Message)
        .unwrap();
    assert_eq!(send_text(&sim, &token, &user).await, 0);
    sim.advance_clock(Duration::from_secs(48 * 3600));
    let token = classic_token(&sim, APP, SECRET).await;
    assert_eq!(send_text(&sim, &token, &user).await, 45015, "window closed");

    // Users are per account.
    let other = classic_token(&sim, APP2, SECRET2).await;
    assert_eq!(send_text(&sim, &other, &user).await, 40003);
}

#[tokio::test]
async fn strict_menu_click_and_follow_windows_are_3_per_minute() {
    let sim = start(strict_config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    let user = openid(8);
    for interaction in [
        Interaction::MenuClick,
        Interaction::Follow,
        Interaction::QrScan,
    ] {
        sim.record_interaction(APP, &user, interaction).unwrap();
        for _ in 0..3 {
            assert_eq!(send_text(&sim, &token, &user).await, 0, "{interaction:?}");
        }
        assert_eq!(
            send_text(&sim, &token, &user).await,
            45047,
            "{interaction:?}"
        );
        sim.advance_clock(Duration::from_secs(60));
        assert_eq!(
            send_text(&sim, &token, &user).await,
            45015,
            "{interaction:?}"
        );
    }
}

#[tokio::test]
async fn strict_unfollow_closes_windows() {
    let sim = start(strict_config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    let user = openid(9);
    sim.record_interaction(APP, &user, Interaction::Message)
        .unwrap();
    sim.record_interaction(APP, &user, Interaction::Unfollow)
        .unwrap();
    assert_eq!(send_text(&sim, &token, &user).await, 45015);
}

#[tokio::test]
async fn window_rules_are_configurable() {
    let sim = start(SimConfig {
        windows: WindowRules::from_2021(),
        ..strict_config()
    })
    .await;
    let token = classic_token(&sim, APP, SECRET).await;
    let user = openid(10);
    sim.record_interaction(APP, &user, Interaction::Message)
        .unwrap();
    for _ in 0..20 {
        assert_eq!(send_text(&sim, &token, &user).await, 0);
    }
    assert_eq!(send_text(&sim, &token, &user).await, 45047);
}

#[tokio::test]
async fn any_follower_policy_honours_unfollow() {
    let sim = start(config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    let user = openid(11);
    for _ in 0..30 {
        assert_eq!(send_text(&sim, &token, &user).await, 0);
    }
    sim.record_interaction(APP, &user, Interaction::Unfollow)
        .unwrap();
    assert_eq!(send_text(&sim, &token, &user).await, 45015);
}

#[tokio::test]
async fn typing_rules() {
    let sim = start(strict_config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    let user = openid(12);
    let url = format!("/cgi-bin/message/custom/typing?access_token={token}");
    let typing = |command: &str| json!({"touser": user, "command": command});

    sim.record_interaction(APP, &user, Interaction::Message)
        .unwrap();
    assert_eq!(
        post_json(&sim, &url, &typing("Dance")).await.errcode(),
        45072
    );
    assert_eq!(post_json(&sim, &url, &typing("Typing")).await.errcode(), 0);
    assert_eq!(
        post_json(&sim, &url, &typing("Typing")).await.errcode(),
        45081
    );
    assert_eq!(
        post_json(&sim, &url, &typing("CancelTyping"))
            .await
            .errcode(),
        0
    );
    assert_eq!(post_json(&sim, &url, &typing("Typing")).await.errcode(), 0);
    // Sending a message ends typing.
    assert_eq!(send_text(&sim, &token, &user).await, 0);
    sim.advance_clock(Duration::from_secs(31));
    assert_eq!(
        post_json(&sim, &url, &typing("Typing")).await.errcode(),
        45080
    );
}

#[tokio::test]
async fn injected_errcodes_apply_the_given_number_of_times() {
    let sim = start(config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    sim.inject(SEND, Fault::errcode(-1).times(2));
    let user = openid(1);
    assert_eq!(send_text(&sim, &token, &user).await, -1);
    assert_eq!(send_text(&sim, &token, &user).await, -1);
    assert_eq!(send_text(&sim, &token, &user).await, 0);

    sim.inject(SEND, Fault::errcode(45011).with_errmsg("slow down"));
    for _ in 0..3 {
        let answer = post_json(
            &sim,
            &format!("{SEND}?access_token={token}"),
            &json!({"touser": user, "msgtype": "text", "text": {"content": "x"}}),
        )
        .await
        .json();
        assert_eq!(answer["errcode"], 45011);
        assert!(
            answer["errmsg"]
                .as_str()
                .unwrap()
                .starts_with("slow down rid: ")
        );
    }
    sim.clear_faults();
    assert_eq!(send_text(&sim, &token, &user).await, 0);
    // A fault on another path does not apply.
    sim.inject("/cgi-bin/menu/get", Fault::errcode(-1));
    assert_eq!(send_text(&sim, &token, &user).await, 0);
}

#[tokio::test]
async fn injected_http_status_latency_and_drop() {
    let sim = start(config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    let url = format!("{SEND}?access_token={token}");
    let body = json!({"touser": openid(1), "msgtype": "text", "text": {"content": "x"}});

    sim.inject(SEND, Fault::status(500).times(1));
    assert_eq!(post_json(&sim, &url, &body).await.status, 500);
    assert_eq!(post_json(&sim, &url, &body).await.errcode(), 0);

    sim.inject(ANY_PATH, Fault::latency(Duration::from_millis(50)).times(1));
    let started = std::time::Instant::now();
    assert_eq!(post_json(&sim, &url, &body).await.errcode(), 0);
    assert!(started.elapsed() >= Duration::from_millis(50));

    sim.inject(SEND, Fault::drop_connection().times(1));
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let request = http::Request::post(format!("{}{url}", sim.base_url()))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    assert!(client.request(request).await.is_err(), "connection dropped");

    let statuses: Vec<u16> = sim.calls_to(SEND).iter().map(|c| c.http_status).collect();
    assert_eq!(statuses, vec![500, 200, 200, 0]);
}

#[tokio::test]
async fn a_late_answer_takes_effect_although_the_caller_gave_up() {
    let sim = start(config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    let url = format!("{SEND}?access_token={token}");
    let body = json!({"touser": openid(1), "msgtype": "text", "text": {"content": "late"}});

    sim.inject(SEND, Fault::late_answer(Duration::from_secs(60)).times(1));
    let gave_up = tokio::time::timeout(Duration::from_millis(200), post_json(&sim, &url, &body));
    assert!(gave_up.await.is_err(), "the answer is held back for 60 s");
    // The message was delivered all the same, as WeChat does when its answer comes late.
    let calls = sim
        .wait_for_calls(SEND, 1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].errcode, Some(0));
    assert_eq!(calls[0].http_status, 200);
    assert_eq!(calls[0].answer_delay_ms, 60_000);
    assert_eq!(calls[0].body["text"]["content"], "late");

    // Used up: the next call is answered without delay.
    assert_eq!(post_json(&sim, &url, &body).await.errcode(), 0);
    let delays: Vec<u64> = sim
        .calls_to(SEND)
        .iter()
        .map(|c| c.answer_delay_ms)
        .collect();
    assert_eq!(delays, vec![60_000, 0]);
}

#[tokio::test]
async fn call_log_records_each_call() {
    let sim = start(config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    let user = openid(3);
    assert_eq!(send_text(&sim, &token, &user).await, 0);
    assert_eq!(send_text(&sim, "bogus", &user).await, 40001);

    let token_calls = sim.calls_to("/cgi-bin/token");
    assert_eq!(token_calls.len(), 1);
    assert_eq!(token_calls[0].appid.as_deref(), Some(APP));
    assert_eq!(token_calls[0].query_param("secret"), Some("[redacted]"));

    let calls = sim.calls_to(SEND);
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].method, "POST");
    assert_eq!(calls[0].appid.as_deref(), Some(APP));
    assert_eq!(calls[0].access_token.as_deref(), Some(token.as_str()));
    assert_eq!(calls[0].body["touser"], user.as_str());
    assert_eq!(calls[0].body["text"]["content"], "你好");
    assert_eq!(calls[0].errcode, Some(0));
    assert_eq!(calls[0].http_status, 200);
    assert!(calls[0].at_ms >= START_UNIX_S * 1000);
    assert_eq!(calls[1].appid, None);
    assert_eq!(calls[1].errcode, Some(40001));
    assert!(calls[0].seq < calls[1].seq);
    assert_eq!(sim.call_count(SEND), 2);
    assert_eq!(sim.calls().len(), 3);
}

#[tokio::test]
async fn call_log_is_bounded_but_counters_are_not() {
    let sim = start(SimConfig {
        call_log_capacity: 2,
        ..config()
    })
    .await;
    let token = classic_token(&sim, APP, SECRET).await;
    for _ in 0..4 {
        send_text(&sim, &token, &openid(1)).await;
    }
    assert_eq!(sim.calls().len(), 2);
    assert_eq!(sim.call_count(SEND), 4);
    assert_eq!(sim.call_count("/cgi-bin/token"), 1);
}

#[tokio::test]
async fn wait_for_calls_wakes_on_new_calls_and_times_out() {
    let sim = start(config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    let sender = {
        let sim = sim.clone();
        let token = token.clone();
        tokio::spawn(async move {
            for n in 0..3 {
                send_text(&sim, &token, &openid(n)).await;
            }
        })
    };
    let calls = sim
        .wait_for_calls(SEND, 3, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(calls.len(), 3);
    sender.await.unwrap();

    let timeout = sim
        .wait_for_calls(SEND, 4, Duration::from_millis(20))
        .await
        .unwrap_err();
    assert_eq!((timeout.wanted, timeout.seen), (4, 3));
}

#[tokio::test]
async fn subscribers_get_each_call_in_order_with_its_arrival_time() {
    // Bounded by a log of one call: subscribers do not depend on the log.
    let sim = start(SimConfig {
        call_log_capacity: 1,
        ..config()
    })
    .await;
    let mut live = sim.subscribe();
    let before = std::time::Instant::now();
    let token = classic_token(&sim, APP, SECRET).await;
    assert_eq!(send_text(&sim, &token, &openid(1)).await, 0);
    let after = std::time::Instant::now();

    let within = Duration::from_secs(10);
    let first = tokio::time::timeout(within, live.recv())
        .await
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(within, live.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.call.path, "/cgi-bin/token");
    assert_eq!(first.call.query_param("secret"), Some("[redacted]"));
    assert_eq!(second.call, sim.calls_to(SEND)[0]);
    assert_eq!(second.call.body["text"]["content"], "你好");
    assert_eq!((first.call.seq, second.call.seq), (1, 2));
    assert!(before <= first.received_at);
    assert!(first.received_at <= second.received_at);
    assert!(second.received_at <= after);
    assert!(live.try_recv().is_err());
}

//! Access tokens: classic and stable issuance, grace, force refresh,
//! quotas, invalidation and expiry.

use std::time::Duration;

use serde_json::json;
use wxgate_sim::{Fault, Quotas, SimConfig};

use crate::support::*;

#[tokio::test]
async fn classic_issues_a_new_token_per_call_and_the_old_one_dies_after_the_grace_period() {
    let sim = start(config()).await;
    let first = classic_token(&sim, APP, SECRET).await;
    let second = classic_token(&sim, APP, SECRET).await;
    assert_ne!(first, second);
    assert!(first.len() >= 100);

    assert_eq!(
        send_text(&sim, &first, &openid(1)).await,
        0,
        "old token within grace"
    );
    sim.advance_clock(Duration::from_secs(299));
    assert_eq!(send_text(&sim, &first, &openid(1)).await, 0);
    sim.advance_clock(Duration::from_secs(2));
    assert_eq!(send_text(&sim, &first, &openid(1)).await, 40001);
    assert_eq!(send_text(&sim, &second, &openid(1)).await, 0);
    assert_eq!(sim.token_requests(APP), 2);
}

#[tokio::test]
async fn classic_answer_has_expires_in_and_no_errcode() {
    let sim = start(config()).await;
    let answer = get(
        &sim,
        &format!("/cgi-bin/token?grant_type=client_credential&appid={APP}&secret={SECRET}"),
    )
    .await;
    let json = answer.json();
    assert_eq!(json["expires_in"], 7200);
    assert!(json.get("errcode").is_none());
    assert!(answer.content_type.unwrap().starts_with("application/json"));
}

#[tokio::test]
async fn tokens_expire_with_42001() {
    let sim = start(config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    sim.advance_clock(Duration::from_secs(7199));
    assert_eq!(send_text(&sim, &token, &openid(1)).await, 0);
    sim.advance_clock(Duration::from_secs(1));
    assert_eq!(send_text(&sim, &token, &openid(1)).await, 42001);
}

#[tokio::test]
async fn classic_credential_errors() {
    let sim = start(config()).await;
    let check = |query: String, expected: i64| {
        let sim = sim.clone();
        async move {
            let answer = get(&sim, &format!("/cgi-bin/token?{query}")).await;
            assert_eq!(answer.errcode(), expected, "{query}");
            assert_rid(&answer.json());
        }
    };
    check(
        format!("grant_type=client_credential&appid={APP}&secret=wrong"),
        40001,
    )
    .await;
    check(
        format!("grant_type=client_credential&appid=wxunknown&secret={SECRET}"),
        40013,
    )
    .await;
    check(
        format!("grant_type=password&appid={APP}&secret={SECRET}"),
        40002,
    )
    .await;
    check(
        format!("grant_type=client_credential&secret={SECRET}"),
        41002,
    )
    .await;
    check(format!("grant_type=client_credential&appid={APP}"), 41004).await;
    // Another account's secret is a wrong secret too.
    check(
        format!("grant_type=client_credential&appid={APP}&secret={SECRET2}"),
        40001,
    )
    .await;
    assert_eq!(sim.token_requests(APP), 4);
}

#[tokio::test]
async fn classic_quota_answers_45009_until_the_next_day() {
    let mut config = config();
    config.quotas.set("/cgi-bin/token", 3);
    let sim = start(config).await;
    for _ in 0..3 {
        classic_token(&sim, APP, SECRET).await;
    }
    let url = format!("/cgi-bin/token?grant_type=client_credential&appid={APP}&secret={SECRET}");
    assert_eq!(get(&sim, &url).await.errcode(), 45009);
    // Quotas are per account.
    classic_token(&sim, APP2, SECRET2).await;
    sim.advance_clock(Duration::from_secs(24 * 3600));
    assert_eq!(get(&sim, &url).await.errcode(), 0);
}

#[tokio::test]
async fn stable_returns_the_same_token_until_renew_ahead() {
    let sim = start(config()).await;
    let first = stable_token(&sim, APP, SECRET, false).await;
    let token = first["access_token"].as_str().unwrap().to_owned();
    assert_eq!(first["expires_in"], 7200);

    sim.advance_clock(Duration::from_secs(1000));
    let again = stable_token(&sim, APP, SECRET, false).await;
    assert_eq!(again["access_token"], token.as_str());
    // The simulated clock also runs in real time: allow the second started.
    let remaining = again["expires_in"].as_i64().unwrap();
    assert!((6199..=6200).contains(&remaining), "{remaining}");

    // Within the last 300 s a new token comes; the old one lives to its expiry.
    sim.advance_clock(Duration::from_secs(5900));
    let renewed = stable_token(&sim, APP, SECRET, false).await;
    let new_token = renewed["access_token"].as_str().unwrap().to_owned();
    assert_ne!(new_token, token);
    assert_eq!(renewed["expires_in"], 7200);
    assert_eq!(send_text(&sim, &token, &openid(1)).await, 0);
    sim.advance_clock(Duration::from_secs(300));
    assert_eq!(send_text(&sim, &token, &openid(1)).await, 42001);
    assert_eq!(send_text(&sim, &new_token, &openid(1)).await, 0);
}

#[tokio::test]
async fn stable_and_classic_tokens_are_independent() {
    let sim = start(config()).await;
    let stable = stable_token(&sim, APP, SECRET, false).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    classic_token(&sim, APP, SECRET).await;
    classic_token(&sim, APP, SECRET).await;
    sim.advance_clock(Duration::from_secs(400));
    assert_eq!(send_text(&sim, &stable, &openid(1)).await, 0);
}

#[tokio::test]
async fn force_refresh_invalidates_and_is_limited_to_one_per_30_s() {
    let sim = start(config()).await;
    let token = |answer: serde_json::Value| answer["access_token"].as_str().unwrap().to_owned();
    let first = token(stable_token(&sim, APP, SECRET, false).await);
    let forced = token(stable_token(&sim, APP, SECRET, true).await);
    assert_ne!(forced, first);
    assert_eq!(send_text(&sim, &first, &openid(1)).await, 40001);

    // A second force within 30 s changes nothing.
    sim.advance_clock(Duration::from_secs(29));
    assert_eq!(token(stable_token(&sim, APP, SECRET, true).await), forced);
    assert_eq!(send_text(&sim, &forced, &openid(1)).await, 0);

    sim.advance_clock(Duration::from_secs(1));
    let again = token(stable_token(&sim, APP, SECRET, true).await);
    assert_ne!(again, forced);
    assert_eq!(send_text(&sim, &forced, &openid(1)).await, 40001);
}

#[tokio::test]
async fn force_refresh_daily_limit_answers_45009() {
    let config = SimConfig {
        force_refresh_per_day: 2,
        force_refresh_min_interval: Duration::ZERO,
        ..config()
    };
    let sim = start(config).await;
    for _ in 0..2 {
        assert!(stable_token(&sim, APP, SECRET, true).await["access_token"].is_string());
    }
    assert_eq!(
        stable_token(&sim, APP, SECRET, true).await["errcode"],
        45009
    );
    // Normal mode is unaffected.
    assert!(stable_token(&sim, APP, SECRET, false).await["access_token"].is_string());
}

#[tokio::test]
async fn stable_errors() {
    let sim = start(config()).await;
    let check = |body: serde_json::Value, expected: i64| {
        let sim = sim.clone();
        async move {
            let answer = post_json(&sim, "/cgi-bin/stable_token", &body).await;
            assert_eq!(answer.errcode(), expected, "{body}");
        }
    };
    check(
        json!({"grant_type": "client_credential", "appid": APP, "secret": "x"}),
        40125,
    )
    .await;
    check(
        json!({"grant_type": "client_credential", "appid": "wxnope", "secret": "x"}),
        40013,
    )
    .await;
    check(
        json!({"grant_type": "nope", "appid": APP, "secret": SECRET}),
        40002,
    )
    .await;
    check(
        json!({"grant_type": "client_credential", "secret": SECRET}),
        41002,
    )
    .await;
    assert_eq!(
        post(&sim, "/cgi-bin/stable_token", "").await.errcode(),
        44002
    );
    assert_eq!(
        post(&sim, "/cgi-bin/stable_token", "appid=x")
            .await
            .errcode(),
        47001
    );
    assert_eq!(get(&sim, "/cgi-bin/stable_token").await.errcode(), 43002);
    assert_eq!(sim.token_requests(APP), 2);
}

#[tokio::test]
async fn invalidate_and_expire_tokens() {
    let sim = start(config()).await;
    let a = classic_token(&sim, APP, SECRET).await;
    let b = classic_token(&sim, APP2, SECRET2).await;
    assert_eq!(sim.invalidate_tokens(APP), 1);
    assert_eq!(send_text(&sim, &a, &openid(1)).await, 40001);
    assert_eq!(
        send_text(&sim, &b, &openid(1)).await,
        0,
        "other accounts untouched"
    );

    let a = stable_token(&sim, APP, SECRET, false).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(sim.expire_tokens(APP), 1);
    assert_eq!(send_text(&sim, &a, &openid(1)).await, 42001);
    // The next stable call issues a fresh token.
    let fresh = stable_token(&sim, APP, SECRET, false).await;
    assert_ne!(fresh["access_token"], a.as_str());
}

#[tokio::test]
async fn missing_and_unknown_access_tokens() {
    let sim = start(config()).await;
    let body = json!({"touser": openid(1), "msgtype": "text", "text": {"content": "x"}});
    let answer = post_json(&sim, "/cgi-bin/message/custom/send", &body).await;
    assert_eq!(answer.errcode(), 41001);
    let answer = post_json(
        &sim,
        "/cgi-bin/message/custom/send?access_token=forged",
        &body,
    )
    .await;
    assert_eq!(answer.errcode(), 40001);
    assert_rid(&answer.json());
}

#[tokio::test]
async fn faults_on_the_token_endpoint_count_as_requests() {
    let sim = start(SimConfig {
        quotas: Quotas::unlimited(),
        ..config()
    })
    .await;
    sim.inject("/cgi-bin/token", Fault::errcode(-1).times(1));
    let url = format!("/cgi-bin/token?grant_type=client_credential&appid={APP}&secret={SECRET}");
    assert_eq!(get(&sim, &url).await.errcode(), -1);
    assert_eq!(get(&sim, &url).await.errcode(), 0);
    assert_eq!(sim.token_requests(APP), 2);
}

#[tokio::test]
async fn rejected_tokens_need_a_force_refresh() {
    let sim = start(config()).await;
    let token = |answer: serde_json::Value| answer["access_token"].as_str().unwrap().to_owned();
    let first = token(stable_token(&sim, APP, SECRET, false).await);
    assert_eq!(sim.reject_tokens(APP), 1);
    assert_eq!(send_text(&sim, &first, &openid(1)).await, 40001);
    // Normal mode keeps handing out the rejected token…
    assert_eq!(token(stable_token(&sim, APP, SECRET, false).await), first);
    // …until a force refresh replaces it.
    let forced = token(stable_token(&sim, APP, SECRET, true).await);
    assert_ne!(forced, first);
    assert_eq!(send_text(&sim, &forced, &openid(1)).await, 0);
    let over_http = post(&sim, &format!("/_sim/reject/{APP}"), "").await.json();
    assert_eq!(over_http["rejected"], 1);
    assert_eq!(send_text(&sim, &forced, &openid(1)).await, 40001);
}

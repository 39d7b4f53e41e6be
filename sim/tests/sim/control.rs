//! The `/_sim/` control API.

use http::Method;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn faults_calls_and_stats_over_http() {
    let sim = start(config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    let fault = json!({"path": "/cgi-bin/message/custom/send", "errcode": -1, "times": 1});
    assert_eq!(post_json(&sim, "/_sim/faults", &fault).await.status, 200);
    assert_eq!(send_text(&sim, &token, &openid(1)).await, -1);
    assert_eq!(send_text(&sim, &token, &openid(1)).await, 0);

    let always = json!({"path": "*", "status": 503});
    post_json(&sim, "/_sim/faults", &always).await;
    assert_eq!(get(&sim, "/cgi-bin/menu/get").await.status, 503);
    let cleared = request(&sim, Method::DELETE, "/_sim/faults", "").await;
    assert_eq!(cleared.status, 200);
    assert_eq!(send_text(&sim, &token, &openid(1)).await, 0);

    let bad = json!({"path": "*", "errcode": 1, "status": 500});
    assert_eq!(post_json(&sim, "/_sim/faults", &bad).await.status, 400);
    assert_eq!(post(&sim, "/_sim/faults", "{").await.status, 400);

    let calls = get(&sim, "/_sim/calls?path=/cgi-bin/message/custom/send")
        .await
        .json();
    let errcodes: Vec<i64> = calls
        .as_array()
        .unwrap()
        .iter()
        .map(|call| call["errcode"].as_i64().unwrap())
        .collect();
    assert_eq!(errcodes, vec![-1, 0, 0]);
    let last = get(&sim, "/_sim/calls?limit=1").await.json();
    assert_eq!(last.as_array().unwrap().len(), 1);
    assert_eq!(last[0]["path"], "/cgi-bin/message/custom/send");

    let stats = get(&sim, "/_sim/stats").await.json();
    assert_eq!(stats["calls"]["/cgi-bin/message/custom/send"], 3);
    assert_eq!(stats["calls"]["/cgi-bin/menu/get"], 1);
    assert!(
        stats["calls"].get("/_sim/stats").is_none(),
        "control calls are not logged"
    );

    let late = json!({"path": "/cgi-bin/message/custom/send", "late_answer_ms": 1, "times": 1});
    assert_eq!(post_json(&sim, "/_sim/faults", &late).await.status, 200);
    assert_eq!(send_text(&sim, &token, &openid(1)).await, 0);
    let last = get(&sim, "/_sim/calls?limit=1").await.json();
    assert_eq!(last[0]["answer_delay_ms"], 1);
    let both = json!({"path": "*", "late_answer_ms": 1, "latency_ms": 1});
    assert_eq!(post_json(&sim, "/_sim/faults", &both).await.status, 400);
}

#[tokio::test]
async fn tokens_users_clock_and_codes_over_http() {
    let sim = start(strict_config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    let user = openid(1);

    let answer = post(&sim, &format!("/_sim/invalidate/{APP}"), "")
        .await
        .json();
    assert_eq!(answer["invalidated"], 1);
    assert_eq!(send_text(&sim, &token, &user).await, 40001);

    let token = classic_token(&sim, APP, SECRET).await;
    let body = json!({"appid": APP, "openid": user, "interaction": "message"});
    assert_eq!(post_json(&sim, "/_sim/users", &body).await.status, 200);
    assert_eq!(send_text(&sim, &token, &user).await, 0);

    let before = sim.now_unix_ms();
    let clock = post_json(&sim, "/_sim/clock", &json!({"advance_s": 7200}))
        .await
        .json();
    assert!(clock["now_ms"].as_i64().unwrap() >= before + 7_200_000);
    assert_eq!(send_text(&sim, &token, &user).await, 42001);

    let token = classic_token(&sim, APP, SECRET).await;
    assert_eq!(
        post(&sim, &format!("/_sim/expire/{APP}"), "").await.json()["expired"],
        1
    );
    assert_eq!(send_text(&sim, &token, &user).await, 42001);

    let code = post_json(
        &sim,
        "/_sim/oauth/code",
        &json!({"appid": APP, "openid": user, "scope": "snsapi_userinfo"}),
    )
    .await
    .json();
    assert!(code["code"].is_string());
    let unknown = post_json(
        &sim,
        "/_sim/users",
        &json!({"appid": "wxnope", "openid": user}),
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(get(&sim, "/_sim/nothing").await.status, 404);
}

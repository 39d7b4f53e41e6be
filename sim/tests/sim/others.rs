//! Templates, mass sends, JS-SDK tickets, users and OAuth.

use std::time::Duration;

use serde_json::{Value, json};
use wxgate_sim::{Interaction, OAuthScope, Sim};

use crate::support::*;

async fn call(sim: &Sim, token: &str, path: &str, body: &Value) -> Value {
    post_json(
        sim,
        &format!("/cgi-bin/message/{path}?access_token={token}"),
        body,
    )
    .await
    .json()
}

#[tokio::test]
async fn template_send_returns_a_msgid_and_honours_client_msg_id() {
    let sim = start(config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    let body = json!({
        "touser": openid(1),
        "template_id": "TEMPLATE_ID",
        "url": "https://www.example.com/order/123",
        "client_msg_id": "order-123-shipped",
        "data": {"thing1": {"value": "Order shipped"}, "character_string2": {"value": "SO20240101001", "color": "#173177"}},
    });
    let first = call(&sim, &token, "template/send", &body).await;
    assert_eq!(first["errcode"], 0);
    assert!(first["msgid"].is_u64());
    let again = call(&sim, &token, "template/send", &body).await;
    assert_eq!(
        again["msgid"], first["msgid"],
        "same client_msg_id, same message"
    );
    sim.advance_clock(Duration::from_secs(601));
    let later = call(&sim, &token, "template/send", &body).await;
    assert_ne!(later["msgid"], first["msgid"]);

    let too_long = json!({"touser": openid(1), "template_id": "T", "data": {"thing1": {"value": "x".repeat(21)}}});
    let answer = call(&sim, &token, "template/send", &too_long).await;
    assert_eq!(answer["errcode"], 47003);
    assert!(
        answer["errmsg"]
            .as_str()
            .unwrap()
            .contains("data.thing1.value")
    );
    let no_template = json!({"touser": openid(1), "data": {}});
    assert_eq!(
        call(&sim, &token, "template/send", &no_template).await["errcode"],
        40037
    );
}

#[tokio::test]
async fn template_send_needs_a_follower() {
    let sim = start(strict_config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    let user = openid(2);
    let body = json!({"touser": user, "template_id": "T", "data": {}});
    assert_eq!(
        call(&sim, &token, "template/send", &body).await["errcode"],
        40003
    );
    sim.add_user(APP, &user).unwrap();
    assert_eq!(
        call(&sim, &token, "template/send", &body).await["errcode"],
        0,
        "no window needed"
    );
    sim.record_interaction(APP, &user, Interaction::Unfollow)
        .unwrap();
    assert_eq!(
        call(&sim, &token, "template/send", &body).await["errcode"],
        43004
    );
}

#[tokio::test]
async fn mass_sends() {
    let sim = start(config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    let sendall = json!({"filter": {"is_to_all": true}, "msgtype": "mpnews", "mpnews": {"media_id": "M"}, "clientmsgid": "campaign-1"});
    let accepted = call(&sim, &token, "mass/sendall", &sendall).await;
    assert_eq!(accepted["errcode"], 0);
    assert!(accepted["msg_id"].is_u64() && accepted["msg_data_id"].is_u64());
    let duplicate = call(&sim, &token, "mass/sendall", &sendall).await;
    assert_eq!(duplicate["errcode"], 45065);
    assert_eq!(duplicate["msg_id"], accepted["msg_id"]);

    let list = |n: u32| (0..n).map(openid).collect::<Vec<_>>();
    let send = |touser: Vec<String>| json!({"touser": touser, "msgtype": "text", "text": {"content": "hi"}});
    assert_eq!(
        call(&sim, &token, "mass/send", &send(list(1))).await["errcode"],
        40130
    );
    assert_eq!(
        call(&sim, &token, "mass/send", &send(list(10_001))).await["errcode"],
        40032
    );
    let ok = call(&sim, &token, "mass/send", &send(list(2))).await;
    assert_eq!(ok["errcode"], 0);
    assert!(ok.get("msg_data_id").is_none());

    let images =
        json!({"touser": list(2), "msgtype": "image", "images": {"media_ids": ["A", "B"]}});
    assert_eq!(call(&sim, &token, "mass/send", &images).await["errcode"], 0);
    let long_id = json!({"filter": {"is_to_all": true}, "msgtype": "text", "text": {"content": "x"}, "clientmsgid": "x".repeat(65)});
    assert_eq!(
        call(&sim, &token, "mass/sendall", &long_id).await["errcode"],
        45067
    );
    let preview = json!({"touser": openid(1), "msgtype": "text", "text": {"content": "x"}});
    assert_eq!(
        call(&sim, &token, "mass/preview", &preview).await["errcode"],
        0
    );
    let unknown = json!({"touser": list(2), "msgtype": "file"});
    assert_eq!(
        call(&sim, &token, "mass/send", &unknown).await["errcode"],
        40008
    );
}

#[tokio::test]
async fn jsapi_ticket_is_cached_until_it_expires() {
    let sim = start(config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    let url = format!("/cgi-bin/ticket/getticket?access_token={token}&type=jsapi");
    let first = get(&sim, &url).await.json();
    assert_eq!(first["errcode"], 0);
    assert_eq!(first["expires_in"], 7200);
    sim.advance_clock(Duration::from_secs(100));
    let second = get(&sim, &url).await.json();
    assert_eq!(second["ticket"], first["ticket"]);
    let remaining = second["expires_in"].as_i64().unwrap();
    assert!((7099..=7100).contains(&remaining), "{remaining}");
    sim.advance_clock(Duration::from_secs(7100));
    let third = classic_token(&sim, APP, SECRET).await;
    let renewed = get(
        &sim,
        &format!("/cgi-bin/ticket/getticket?access_token={third}&type=jsapi"),
    )
    .await;
    assert_ne!(renewed.json()["ticket"], first["ticket"]);
    assert_eq!(sim.call_count("/cgi-bin/ticket/getticket"), 3);
    let bad = get(
        &sim,
        &format!("/cgi-bin/ticket/getticket?access_token={third}&type=x"),
    )
    .await;
    assert_eq!(bad.errcode(), 40097);
}

#[tokio::test]
async fn user_info() {
    let sim = start(strict_config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    let user = openid(4);
    let url = format!("/cgi-bin/user/info?access_token={token}&openid={user}&lang=zh_CN");
    assert_eq!(get(&sim, &url).await.errcode(), 40003);
    sim.record_interaction(APP, &user, Interaction::QrScan)
        .unwrap();
    let info = get(&sim, &url).await.json();
    assert_eq!(info["subscribe"], 1);
    assert_eq!(info["openid"], user.as_str());
    assert_eq!(info["subscribe_scene"], "ADD_SCENE_QR_CODE");
    assert_eq!(info["subscribe_time"], START_UNIX_S);
    sim.record_interaction(APP, &user, Interaction::Unfollow)
        .unwrap();
    assert_eq!(
        get(&sim, &url).await.json(),
        json!({"subscribe": 0, "openid": user})
    );
}

#[tokio::test]
async fn oauth_codes_are_single_use() {
    let sim = start(config()).await;
    let user = openid(5);
    let code = sim
        .mint_oauth_code(APP, &user, OAuthScope::UserInfo)
        .unwrap();
    let exchange = |code: String| {
        let sim = sim.clone();
        async move {
            get(
                &sim,
                &format!("/sns/oauth2/access_token?appid={APP}&secret={SECRET}&code={code}&grant_type=authorization_code"),
            )
            .await
            .json()
        }
    };
    let answer = exchange(code.clone()).await;
    assert_eq!(answer["openid"], user.as_str());
    assert_eq!(answer["scope"], "snsapi_userinfo");
    assert!(answer["refresh_token"].is_string());
    let web_token = answer["access_token"].as_str().unwrap().to_owned();
    assert_eq!(exchange(code).await["errcode"], 40163);
    assert_eq!(exchange("unknown".to_owned()).await["errcode"], 40029);

    let profile = get(
        &sim,
        &format!("/sns/userinfo?access_token={web_token}&openid={user}&lang=zh_CN"),
    )
    .await;
    assert_eq!(profile.json()["openid"], user.as_str());
    let wrong_user = get(
        &sim,
        &format!(
            "/sns/userinfo?access_token={web_token}&openid={}",
            openid(6)
        ),
    )
    .await;
    assert_eq!(wrong_user.errcode(), 40003);
    // A web token is not an account token, and the other way round.
    assert_eq!(send_text(&sim, &web_token, &user).await, 40001);
    let account_token = classic_token(&sim, APP, SECRET).await;
    let misuse = get(
        &sim,
        &format!("/sns/userinfo?access_token={account_token}&openid={user}"),
    )
    .await;
    assert_eq!(misuse.errcode(), 40001);
    let calls = sim.calls_to("/sns/userinfo");
    assert_eq!(calls[0].appid.as_deref(), Some(APP));

    let base = sim.mint_oauth_code(APP, &user, OAuthScope::Base).unwrap();
    let base_token = exchange(base).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let denied = get(
        &sim,
        &format!("/sns/userinfo?access_token={base_token}&openid={user}"),
    )
    .await;
    assert_eq!(denied.errcode(), 48001);

    let late = sim.mint_oauth_code(APP, &user, OAuthScope::Base).unwrap();
    sim.advance_clock(Duration::from_secs(300));
    assert_eq!(exchange(late).await["errcode"], 42003);
    let other_app = sim.mint_oauth_code(APP2, &user, OAuthScope::Base).unwrap();
    assert_eq!(exchange(other_app).await["errcode"], 40029);
    assert!(
        sim.mint_oauth_code("wxnope", &user, OAuthScope::Base)
            .is_err()
    );
}

#[tokio::test]
async fn unknown_paths_are_404_and_logged() {
    let sim = start(config()).await;
    assert_eq!(get(&sim, "/cgi-bin/nope").await.status, 404);
    assert_eq!(sim.call_count("/cgi-bin/nope"), 1);
}

#[tokio::test]
async fn method_is_checked() {
    let sim = start(config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    let answer = post(
        &sim,
        &format!("/cgi-bin/menu/get?access_token={token}"),
        "{}",
    )
    .await;
    assert_eq!(answer.errcode(), 43001);
}

#[tokio::test]
async fn accounts_can_be_added_at_run_time() {
    let sim = start(config()).await;
    sim.add_account("wxnewnewnewnewnew1", "s3");
    classic_token(&sim, "wxnewnewnewnewnew1", "s3").await;
    assert!(sim.add_user("wxunknown", &openid(1)).is_err());
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let sim = start(config()).await;
    let addr = sim.addr();
    assert!(sim.base_url().starts_with("http://127.0.0.1:"));
    sim.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    sim.shutdown().await;
}

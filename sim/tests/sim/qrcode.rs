//! QR codes: creation rules and the image endpoint.

use std::time::Duration;

use serde_json::{Value, json};
use wxgate_sim::{QrScene, Sim};

use crate::support::*;

async fn create(sim: &Sim, token: &str, body: Value) -> Value {
    post_json(
        sim,
        &format!("/cgi-bin/qrcode/create?access_token={token}"),
        &body,
    )
    .await
    .json()
}

/// The ticket as a query value, with `+`, `/` and `=` percent-encoded as WeChat requires.
fn encode(ticket: &str) -> String {
    form_urlencoded::byte_serialize(ticket.as_bytes()).collect()
}

#[tokio::test]
async fn temporary_code_is_shown_until_it_expires() {
    let sim = start(config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    let answer = create(
        &sim,
        &token,
        json!({"expire_seconds": 604800, "action_name": "QR_SCENE", "action_info": {"scene": {"scene_id": 123}}}),
    )
    .await;
    let ticket = answer["ticket"].as_str().unwrap().to_owned();
    assert!(ticket.contains('+') && ticket.contains('/') && ticket.ends_with('='));
    assert_eq!(answer["expire_seconds"], 604800);
    assert!(
        answer["url"]
            .as_str()
            .unwrap()
            .starts_with("http://weixin.qq.com/q/")
    );
    assert!(answer.get("errcode").is_none());

    let stored = sim.qr_ticket(&ticket).unwrap();
    assert_eq!(stored.appid, APP);
    assert_eq!(stored.scene, QrScene::Id(123));
    assert_eq!(stored.scene.event_value(), "123");

    let image = get(
        &sim,
        &format!("/cgi-bin/showqrcode?ticket={}", encode(&ticket)),
    )
    .await;
    assert_eq!(image.status, 200);
    assert_eq!(image.content_type.as_deref(), Some("image/jpg"));
    assert_eq!(&image.body[..2], &[0xFF, 0xD8]);

    assert_eq!(
        get(&sim, "/cgi-bin/showqrcode?ticket=nope").await.status,
        404
    );
    assert_eq!(get(&sim, "/cgi-bin/showqrcode").await.status, 404);

    sim.advance_clock(Duration::from_secs(604800));
    let expired = get(
        &sim,
        &format!("/cgi-bin/showqrcode?ticket={}", encode(&ticket)),
    )
    .await;
    assert_eq!(expired.status, 404);
}

#[tokio::test]
async fn permanent_and_string_codes() {
    let sim = start(config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    let answer = create(
        &sim,
        &token,
        json!({"action_name": "QR_LIMIT_STR_SCENE", "action_info": {"scene": {"scene_str": "promo-2024"}}}),
    )
    .await;
    assert!(answer.get("expire_seconds").is_none());
    let ticket = answer["ticket"].as_str().unwrap();
    assert_eq!(
        sim.qr_ticket(ticket).unwrap().scene,
        QrScene::Str("promo-2024".to_owned())
    );
    assert_eq!(sim.qr_ticket(ticket).unwrap().expires_at_ms, None);

    let default_expiry = create(
        &sim,
        &token,
        json!({"action_name": "QR_STR_SCENE", "action_info": {"scene": {"scene_str": "x"}}}),
    )
    .await;
    assert_eq!(default_expiry["expire_seconds"], 60);
}

#[tokio::test]
async fn creation_errors() {
    let sim = start(config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    let cases = [
        (
            json!({"action_name": "QR_LIMIT_SCENE", "action_info": {"scene": {"scene_id": 100001}}}),
            40053,
        ),
        (
            json!({"action_name": "QR_LIMIT_SCENE", "action_info": {"scene": {"scene_id": 0}}}),
            40053,
        ),
        (
            json!({"action_name": "QR_SCENE", "action_info": {"scene": {"scene_id": 4294967296_u64}}}),
            40053,
        ),
        (
            json!({"action_name": "QR_STR_SCENE", "action_info": {"scene": {"scene_str": "x".repeat(65)}}}),
            40053,
        ),
        (
            json!({"action_name": "QR_STR_SCENE", "action_info": {"scene": {"scene_id": 1}}}),
            40053,
        ),
        (
            json!({"action_name": "QR_NOPE", "action_info": {"scene": {"scene_id": 1}}}),
            40053,
        ),
        (json!({"action_name": "QR_SCENE"}), 40053),
        (
            json!({"expire_seconds": 2592001, "action_name": "QR_SCENE", "action_info": {"scene": {"scene_id": 1}}}),
            40035,
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(
            create(&sim, &token, body.clone()).await["errcode"],
            expected,
            "{body}"
        );
    }
    let max = create(
        &sim,
        &token,
        json!({"expire_seconds": 2592000, "action_name": "QR_SCENE", "action_info": {"scene": {"scene_id": 4294967295_u64}}}),
    )
    .await;
    assert_eq!(max["expire_seconds"], 2592000);
}

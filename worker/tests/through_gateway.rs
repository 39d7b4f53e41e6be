//! The whole way: WeChat (the simulator's push client) → wx-gateway → RabbitMQ → wx-worker →
//! the simulator's custom/send, for a safe-mode and a plain-mode account.

mod common;

use std::time::Duration;

use common::*;
use tokio_util::sync::CancellationToken;
use wxgate_sim::{Answer, Inbound, PushAccount, PushClient, PushMode, random_openid};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pushed_message_is_answered_through_custom_send_in_safe_and_plain_mode() {
    let mut h = Harness::new(&[]).await;
    h.sim
        .add_account("wxfedcba9876543210", "plain-secret-for-the-simulator");
    h.start_worker().await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway_addr = listener.local_addr().unwrap();
    let gateway_stop = CancellationToken::new();
    let gateway = tokio::spawn(wx_gateway::serve(
        h.config.clone(),
        listener,
        gateway_stop.clone(),
    ));
    let base = format!("http://{gateway_addr}/wx");

    let safe = PushAccount {
        id: "demo".into(),
        appid: APPID.into(),
        token: "demo-callback-token".into(),
        encoding_aes_key: Some("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG".into()),
        mode: PushMode::Safe,
        original_id: ORIGINAL_ID.into(),
    };
    let plain = PushAccount {
        id: "plain".into(),
        appid: "wxfedcba9876543210".into(),
        token: "plain-callback-token".into(),
        encoding_aes_key: None,
        mode: PushMode::Plain,
        original_id: "gh_fedcba987654".into(),
    };
    let client = PushClient::new().timeout(Duration::from_secs(4));
    let safe_user = random_openid();
    let plain_user = random_openid();
    // The gateway may still be connecting: WeChat would retry a 503, so does this loop.
    let deadline = tokio::time::Instant::now() + WAIT;
    for (account, user, text) in [
        (&safe, &safe_user, "hello safe"),
        (&plain, &plain_user, "hello plain"),
    ] {
        let xml = Inbound::now(&account.original_id, user).text(4242, text);
        loop {
            let outcome = client.push(&base, account, &xml).await.unwrap();
            if matches!(outcome.answer, Answer::Acknowledged) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "push never acknowledged: {:?}",
                outcome.statuses
            );
        }
    }

    let calls = h.sim.wait_for_calls(SEND, 2, WAIT).await.unwrap();
    let mut sent: Vec<(String, String)> = calls
        .iter()
        .map(|c| {
            (
                c.body["touser"].as_str().unwrap_or_default().to_owned(),
                c.body["text"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    sent.sort();
    let mut expected = vec![
        (safe_user.clone(), "hello safe".to_owned()),
        (plain_user.clone(), "hello plain".to_owned()),
    ];
    expected.sort();
    assert_eq!(sent, expected);

    gateway_stop.cancel();
    gateway.await.unwrap().unwrap();
    h.finish().await;
}

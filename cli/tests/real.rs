//! The main `wxgate` commands (tail, send, qrcode, menu, accounts, dead) against
//! `wxgate dev --redis … --amqp …`: the machine's Redis and RabbitMQ in a random namespace,
//! removed afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{DevEnv, USER};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use wxgate_sim::{Fault, FaultKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_main_commands_work_on_redis_and_rabbitmq() {
    let env = DevEnv::start_real().await;

    // tail sees a push; the worker answers it.
    let mut tail = env
        .command(&["tail", "--json", "--count", "1", "--group", "smoke"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(tail.stderr.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains("tailing group") {
                return;
            }
        }
        panic!("tail ended before it started");
    })
    .await
    .expect("tail started within 30 s");
    let out = env.push("demo", &["text", "你好"]).await;
    assert!(out.contains("the worker replied"), "{out}");
    let output = tail.wait_with_output().await.unwrap();
    let event: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(event["fields"]["Content"], "你好");

    // send, qrcode, menu.
    assert!(
        env.ok(&["send", "text", "demo", USER, "hello"])
            .await
            .contains("sent")
    );
    let qr: Value =
        serde_json::from_str(&env.ok(&["qrcode", "create", "demo", "--scene", "9"]).await).unwrap();
    assert!(qr["ticket"].is_string());
    let menu = env.dir.join("menu.json");
    std::fs::write(
        &menu,
        r#"{"button":[{"type":"click","name":"Hi","key":"HI"}]}"#,
    )
    .unwrap();
    env.ok(&["menu", "create", "demo", menu.to_str().unwrap()])
        .await;
    let got: Value = serde_json::from_str(&env.ok(&["menu", "get", "demo"]).await).unwrap();
    assert_eq!(got["menu"]["button"][0]["key"], "HI");

    // accounts: add, list, export, remove.
    let file = env.dir.join("shop.toml");
    std::fs::write(
        &file,
        "[[accounts]]\nid = \"shop\"\nappid = \"wx7777777777777777\"\nsecret = \"s\"\n\
         token = \"shop-token\"\nmode = \"plain\"\n",
    )
    .unwrap();
    env.ok(&["accounts", "add", file.to_str().unwrap()]).await;
    assert!(env.ok(&["accounts", "list"]).await.contains("shop"));
    assert!(
        env.ok(&["accounts", "export"])
            .await
            .contains("wx7777777777777777")
    );
    env.ok(&["accounts", "remove", "shop"]).await;

    // dead: a permanent WeChat error parks the event; replay sends it.
    env.sim().inject(
        "/cgi-bin/message/custom/send",
        Fault {
            kind: FaultKind::Errcode {
                errcode: 40003,
                errmsg: None,
            },
            times: Some(1),
            probability: 1.0,
        },
    );
    env.push("plain", &["text", "parked", "--wait", "0"]).await;
    wxgate_tests::eventually(Duration::from_secs(30), "a dead letter", || async {
        let json: Value = serde_json::from_str(&env.ok(&["dead", "list", "--json"]).await).unwrap();
        if json["dead_letters"].as_array().unwrap().len() == 1 {
            Ok(())
        } else {
            Err(json)
        }
    })
    .await;
    let before = env.calls("/cgi-bin/message/custom/send");
    env.ok(&["dead", "replay", "--all"]).await;
    let calls = env
        .wait_calls("/cgi-bin/message/custom/send", before + 1)
        .await;
    assert_eq!(calls.last().unwrap().body["text"]["content"], "parked");
    env.ok(&["dead", "discard", "--all"]).await;
}

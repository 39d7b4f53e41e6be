//! Every `wxgate` subcommand against a `wxgate dev` on the in-memory bus and store: what a
//! newcomer does first (push, see the passive answer, the worker's reply and the event in
//! `tail`), then each client command, checked at the simulated WeChat.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{DevEnv, USER, bare, run};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader, Lines};
use wxgate_sim::{Fault, FaultKind, OAuthScope};

const CUSTOM_SEND: &str = "/cgi-bin/message/custom/send";

/// Reads lines until one contains `needle`; fails after 20 s.
async fn line_with<R: AsyncRead + Unpin>(lines: &mut Lines<BufReader<R>>, needle: &str) -> String {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match lines.next_line().await.unwrap() {
                Some(line) if line.contains(needle) => return line,
                Some(_) => {}
                None => panic!("output ended before a line with {needle:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no line with {needle:?} within 20 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_shows_the_answer_the_workers_reply_and_the_event_in_tail() {
    let env = DevEnv::start().await;
    let mut tail = env
        .command(&["tail", "--json", "--count", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(tail.stderr.take().unwrap()).lines();
    line_with(&mut stderr, "tailing group \"tail\"").await;

    let out = env.push("demo", &["text", "你好"]).await;
    assert!(out.contains("gateway answered"), "{out}");
    assert!(out.contains("success"), "{out}");
    assert!(
        out.contains("the worker replied through WeChat's customer-service API: text \"你好\""),
        "{out}"
    );
    let out = env.push("demo", &["text", "ping"]).await;
    assert!(
        out.contains("passive reply text \"pong\" (encrypted)"),
        "{out}"
    );

    let output = tail.wait_with_output().await.unwrap();
    assert!(output.status.success());
    let events: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["fields"]["Content"], "你好");
    assert_eq!(events[0]["account_id"], "demo");
    assert_eq!(events[0]["from_user"], USER);
    assert_eq!(events[0]["encrypt_mode"], "safe");
    assert_eq!(events[1]["passive_reply"], "text \"pong\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_push_kind_reaches_the_gateway_and_the_tutorial_bot_answers() {
    let env = DevEnv::start().await;
    for (account, what, reply) in [
        ("plain", vec!["text", "hi"], Some("\"hi\"")),
        (
            "compat",
            vec!["voice", "--recognition", "今天天气"],
            Some("今天天气"),
        ),
        (
            "demo",
            vec!["subscribe", "--scene", "123"],
            Some("场景值是:123"),
        ),
        ("demo", vec!["scan", "777"], Some("\"777\"")),
        ("demo", vec!["image"], Some("哈哈哈哈")),
        (
            "demo",
            vec!["location", "39.9", "116.4", "--label", "北京"],
            Some("哈哈哈哈"),
        ),
        (
            "demo",
            vec!["link", "a title", "https://example.com"],
            Some("哈哈哈哈"),
        ),
        ("demo", vec!["click", "V1001"], None),
        ("demo", vec!["view", "https://example.com"], None),
        ("demo", vec!["unsubscribe"], None),
    ] {
        let out = env.push(account, &what).await;
        assert!(out.contains("gateway answered"), "{what:?}: {out}");
        match reply {
            Some(reply) => assert!(
                out.contains("the worker replied") && out.contains(reply),
                "{what:?}: {out}"
            ),
            None => assert!(!out.contains("the worker replied"), "{what:?}: {out}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_typing_reach_wechat() {
    let env = DevEnv::start().await;
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["send", "text", "demo", USER, "hello"], CUSTOM_SEND),
        (vec!["send", "image", "demo", USER, "MEDIA"], CUSTOM_SEND),
        (vec!["send", "voice", "demo", USER, "MEDIA"], CUSTOM_SEND),
        (
            vec![
                "send", "video", "demo", USER, "MEDIA", "--title", "t", "--thumb", "T",
            ],
            CUSTOM_SEND,
        ),
        (
            vec![
                "send",
                "music",
                "demo",
                USER,
                "--thumb",
                "T",
                "--url",
                "https://e.com/a.mp3",
            ],
            CUSTOM_SEND,
        ),
        (
            vec![
                "send",
                "news",
                "demo",
                USER,
                "--title",
                "News",
                "--url",
                "https://e.com",
            ],
            CUSTOM_SEND,
        ),
        (
            vec!["typing", "demo", USER],
            "/cgi-bin/message/custom/typing",
        ),
        (
            vec![
                "send",
                "template",
                "demo",
                USER,
                "TEMPLATE_1",
                "--data",
                "first=Hi",
                "--data",
                "keyword1=42:#173177",
                "--url",
                "https://e.com",
            ],
            "/cgi-bin/message/template/send",
        ),
        (
            vec!["send", "mass", "demo", "--preview", USER, "--text", "sale"],
            "/cgi-bin/message/mass/preview",
        ),
        (
            vec![
                "send",
                "mass",
                "demo",
                "--tag",
                "2",
                "--text",
                "sale",
                "--clientmsgid",
                "k1",
            ],
            "/cgi-bin/message/mass/sendall",
        ),
    ];
    for (args, path) in cases {
        let before = env.calls(path);
        let out = env.ok(&args).await;
        assert!(
            out.contains("sent") || out.contains("typing"),
            "{args:?}: {out}"
        );
        assert_eq!(env.calls(path), before + 1, "{args:?} calls {path} once");
    }
    let template = env.sim().calls_to("/cgi-bin/message/template/send");
    let body = &template[0].body;
    assert_eq!(body["data"]["keyword1"]["value"], "42");
    assert_eq!(body["data"]["keyword1"]["color"], "#173177");
    // A second mass send with the same key is not sent again.
    let out = env
        .ok(&[
            "send",
            "mass",
            "demo",
            "--tag",
            "2",
            "--text",
            "sale",
            "--clientmsgid",
            "k1",
        ])
        .await;
    assert!(out.contains("already sent"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_jssdk_and_oauth() {
    let env = DevEnv::start().await;
    let token = env.ok(&["token", "demo"]).await;
    assert!(token.trim().len() > 20, "{token}");
    assert_eq!(env.ok(&["token", "demo"]).await, token, "one shared token");
    // A forced refresh within 30 s of a fetch costs no WeChat call: the same token comes back.
    assert_eq!(env.ok(&["token", "demo", "--force"]).await, token);
    let json: Value = serde_json::from_str(&env.ok(&["token", "demo", "--json"]).await).unwrap();
    assert!(json["expires_at_ms"].as_i64().unwrap() > 0);

    let sign: Value = serde_json::from_str(
        &env.ok(&["jssdk", "demo", "https://shop.example.com/a?b=1#frag"])
            .await,
    )
    .unwrap();
    assert_eq!(sign["appId"], "wx0123456789abcdef");
    assert_eq!(sign["url"], "https://shop.example.com/a?b=1");
    assert_eq!(sign["signature"].as_str().unwrap().len(), 40);

    let url = env
        .ok(&[
            "oauth",
            "url",
            "demo",
            "https://shop.example.com/cb",
            "--scope",
            "userinfo",
        ])
        .await;
    assert!(
        url.contains("snsapi_userinfo") && url.contains("wx0123456789abcdef"),
        "{url}"
    );
    let code = env
        .sim()
        .mint_oauth_code("wx0123456789abcdef", USER, OAuthScope::UserInfo)
        .unwrap();
    let user: Value =
        serde_json::from_str(&env.ok(&["oauth", "exchange", "demo", &code]).await).unwrap();
    assert_eq!(user["openid"], USER);
    assert_eq!(user["scope"], "snsapi_userinfo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qrcode_saves_the_image() {
    let env = DevEnv::start().await;
    let file = env.dir.join("qr.jpg");
    let out = env
        .ok(&[
            "qrcode",
            "create",
            "demo",
            "--scene",
            "123",
            "--expire",
            "7d",
            "--png",
            file.to_str().unwrap(),
        ])
        .await;
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["expire_seconds"], 604_800);
    let image = std::fs::read(&file).unwrap();
    assert!(image.starts_with(&[0xff, 0xd8]), "a JPEG");
    assert_eq!(json["saved"]["bytes"], image.len());
    let permanent: Value = serde_json::from_str(
        &env.ok(&[
            "qrcode",
            "create",
            "demo",
            "--scene-str",
            "spring",
            "--permanent",
        ])
        .await,
    )
    .unwrap();
    assert_eq!(permanent["expire_seconds"], 0);
    let calls = env.sim().calls_to("/cgi-bin/qrcode/create");
    assert_eq!(calls[1].body["action_name"], "QR_LIMIT_STR_SCENE");
    // Usage errors exit 2 before anything is sent.
    let output = env
        .run(&["qrcode", "create", "demo", "--scene", "1", "--expire", "7w"])
        .await;
    assert_eq!(output.status.code(), Some(2));
    let output = env.run(&["qrcode", "create", "demo"]).await;
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(env.calls("/cgi-bin/qrcode/create"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn menu_create_get_try_match_current_and_delete() {
    let env = DevEnv::start().await;
    let file = env.dir.join("menu.json");
    std::fs::write(
        &file,
        r#"{"button":[{"type":"click","name":"今日歌曲","key":"V1001_TODAY_MUSIC"},
            {"name":"菜单","sub_button":[{"type":"view","name":"搜索","url":"http://www.soso.com/"}]}]}"#,
    )
    .unwrap();
    assert!(
        env.ok(&["menu", "create", "demo", file.to_str().unwrap()])
            .await
            .contains("created")
    );
    let menu: Value = serde_json::from_str(&env.ok(&["menu", "get", "demo"]).await).unwrap();
    assert_eq!(menu["menu"]["button"][0]["key"], "V1001_TODAY_MUSIC");
    assert_eq!(
        menu["menu"]["button"][1]["sub_button"][0]["url"],
        "http://www.soso.com/"
    );
    let seen: Value =
        serde_json::from_str(&env.ok(&["menu", "try-match", "demo", USER]).await).unwrap();
    assert_eq!(seen["button"][0]["name"], "今日歌曲");
    let current: Value = serde_json::from_str(&env.ok(&["menu", "current", "demo"]).await).unwrap();
    assert_eq!(current["is_menu_open"], true);
    let conditional = env.dir.join("vip.json");
    std::fs::write(
        &conditional,
        r#"{"button":[{"type":"click","name":"VIP","key":"VIP"}],"matchrule":{"tag_id":"2"}}"#,
    )
    .unwrap();
    let out = env
        .ok(&[
            "menu",
            "add-conditional",
            "demo",
            conditional.to_str().unwrap(),
        ])
        .await;
    let menuid = out.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(
        env.ok(&["menu", "delete-conditional", "demo", &menuid])
            .await
            .contains("deleted")
    );
    assert!(
        env.ok(&["menu", "delete", "demo"])
            .await
            .contains("deleted")
    );
    let output = env.run(&["menu", "get", "demo"]).await;
    assert_eq!(output.status.code(), Some(1));
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("46003"), "{error}");
    // A bad file names the button and exits 2.
    std::fs::write(&file, r#"{"button":[{"type":"tap","name":"x"}]}"#).unwrap();
    let output = env
        .run(&["menu", "create", "demo", file.to_str().unwrap()])
        .await;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("button[0].type"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_add_rotate_export_import_and_remove() {
    let env = DevEnv::start().await;
    let file = env.dir.join("shop.toml");
    std::fs::write(
        &file,
        "[[accounts]]\nid = \"shop\"\nappid = \"wx5555555555555555\"\nsecret = \"shop-secret\"\n\
         token = \"shop-token\"\nencoding_aes_key = \"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\"\n\
         [[accounts.custom]]\nmatch = { msg_type = \"text\" }\nreply = { echo = true }\n",
    )
    .unwrap();
    env.sim().add_account("wx5555555555555555", "shop-secret");
    assert!(
        env.ok(&["accounts", "add", file.to_str().unwrap()])
            .await
            .contains("created shop")
    );
    let output = env.run(&["accounts", "add", file.to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(1), "exists without --replace");
    assert!(env.ok(&["accounts", "list"]).await.contains("shop"));
    let info: Value = serde_json::from_str(&env.ok(&["accounts", "get", "shop"]).await).unwrap();
    assert_eq!(info["origin"], "runtime");
    assert_eq!(info["has_secret"], true);
    assert!(
        !info.to_string().contains("shop-secret"),
        "secrets are write-only"
    );

    // Served within a second: a push with the file's token and key is answered.
    let push = |token: String| {
        let env = &env;
        async move {
            let config = env.config.display().to_string();
            let gateway = env.gateway();
            env.run(&[
                "sim",
                "push",
                "--config",
                &config,
                "--gateway",
                &gateway,
                "--appid",
                "wx5555555555555555",
                "--token",
                &token,
                "--aes-key",
                "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
                "--wait",
                "0",
                "--attempts",
                "1",
                "shop",
                "text",
                "hi",
            ])
            .await
        }
    };
    wxgate_tests::eventually(Duration::from_secs(10), "shop served", || async {
        let output = push("shop-token".into()).await;
        if output.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&output.stdout).into_owned())
        }
    })
    .await;

    // Rotation: the new token is printed; both are accepted until --finish.
    let out = env.ok(&["accounts", "rotate", "shop", "--new-token"]).await;
    let new_token = out
        .lines()
        .find_map(|l| l.strip_prefix("new Token: "))
        .unwrap()
        .to_owned();
    wxgate_tests::eventually(Duration::from_secs(10), "the new token", || async {
        if push(new_token.clone()).await.status.success() {
            Ok(())
        } else {
            Err(())
        }
    })
    .await;
    assert!(
        push("shop-token".into()).await.status.success(),
        "the old token still works"
    );
    env.ok(&["accounts", "rotate", "shop", "--finish"]).await;
    wxgate_tests::eventually(Duration::from_secs(30), "the old token refused", || async {
        if push("shop-token".into()).await.status.success() {
            Err(())
        } else {
            Ok(())
        }
    })
    .await;

    // Export without secrets leaves them out; with them, it restores everything.
    let plain = env.ok(&["accounts", "export"]).await;
    assert!(
        plain.contains("id = \"shop\"") && !plain.contains(&new_token),
        "{plain}"
    );
    let backup = env.dir.join("backup.toml");
    env.ok(&[
        "accounts",
        "export",
        "--with-secrets",
        "-o",
        backup.to_str().unwrap(),
    ])
    .await;
    let text = std::fs::read_to_string(&backup).unwrap();
    assert!(text.contains(&new_token));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&backup).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(
        env.ok(&["accounts", "remove", "shop"])
            .await
            .contains("removed shop")
    );
    let output = env.run(&["accounts", "get", "shop"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        env.ok(&["accounts", "import", backup.to_str().unwrap()])
            .await
            .contains("created shop")
    );
    wxgate_tests::eventually(Duration::from_secs(10), "restored", || async {
        if push(new_token.clone()).await.status.success() {
            Ok(())
        } else {
            Err(())
        }
    })
    .await;
    // File accounts cannot be changed here.
    let output = env.run(&["accounts", "remove", "demo"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_list_replay_and_discard() {
    let env = DevEnv::start().await;
    let fault = || Fault {
        kind: FaultKind::Errcode {
            errcode: 40003,
            errmsg: None,
        },
        times: Some(1),
        probability: 1.0,
    };
    env.sim().inject(CUSTOM_SEND, fault());
    env.push("demo", &["text", "one", "--wait", "0"]).await;
    env.sim().inject(CUSTOM_SEND, fault());
    env.push("plain", &["text", "two", "--wait", "0"]).await;
    let listed = wxgate_tests::eventually(Duration::from_secs(20), "two dead letters", || async {
        let out = env.ok(&["dead", "list", "--json"]).await;
        let json: Value = serde_json::from_str(&out).unwrap();
        if json["dead_letters"].as_array().unwrap().len() == 2 {
            Ok(json)
        } else {
            Err(out)
        }
    })
    .await;
    let demo = listed["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["account_id"] == "demo")
        .unwrap()
        .clone();
    assert_eq!(demo["errcode"], 40003);
    assert_eq!(demo["event"]["fields"]["Content"], "one");
    let human = env.ok(&["dead", "list", "--account", "plain"]).await;
    assert!(
        human.contains("plain") && human.contains("40003") && human.contains("two"),
        "{human}"
    );

    let output = env.run(&["dead", "replay"]).await;
    assert_eq!(
        output.status.code(),
        Some(2),
        "replay needs a filter or --all"
    );
    let sent = env.calls(CUSTOM_SEND);
    let replayed = env.ok(&["dead", "replay", "--account", "demo"]).await;
    assert!(replayed.contains(demo["event_id"].as_str().unwrap()));
    let calls = env.wait_calls(CUSTOM_SEND, sent + 1).await;
    assert_eq!(calls.last().unwrap().body["text"]["content"], "one");
    assert_eq!(calls.last().unwrap().errcode, Some(0));
    let discarded = env.ok(&["dead", "discard", "--all"]).await;
    assert_eq!(discarded.lines().count(), 1);
    let json: Value = serde_json::from_str(&env.ok(&["dead", "list", "--json"]).await).unwrap();
    assert!(json["dead_letters"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_upload() {
    let env = DevEnv::start().await;
    let png = env.dir.join("photo.png");
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend_from_slice(&[0u8; 64]);
    std::fs::write(&png, &bytes).unwrap();
    let json: Value = serde_json::from_str(
        &env.ok(&["media", "upload", "demo", png.to_str().unwrap()])
            .await,
    )
    .unwrap();
    assert_eq!(json["type"], "image");
    let media_id = json["media_id"].as_str().unwrap();
    assert!(env.sim().media("wx0123456789abcdef", media_id).is_some());
    let url: Value = serde_json::from_str(
        &env.ok(&[
            "media",
            "upload",
            "demo",
            png.to_str().unwrap(),
            "--article-image",
        ])
        .await,
    )
    .unwrap();
    assert!(url["url"].as_str().unwrap().starts_with("http"));
    let unknown = env.dir.join("notes.txt");
    std::fs::write(&unknown, "x").unwrap();
    let output = env
        .run(&["media", "upload", "demo", unknown.to_str().unwrap()])
        .await;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--type"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_serve_answers_as_wechat() {
    let mut child = bare(&["sim", "serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = line_with(&mut lines, "WeChat simulator at").await;
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    let client = wx_worker::WechatClient::new(&base, Duration::from_secs(5)).unwrap();
    let answer = client
        .post(
            "/cgi-bin/stable_token",
            &[],
            &serde_json::json!({"grant_type": "client_credential", "appid": "wx0123456789abcdef",
                "secret": "demo-secret-for-the-simulator"}),
        )
        .await
        .unwrap();
    assert_eq!(
        answer.errcode, 0,
        "the built-in config's accounts are known"
    );
    assert!(answer.body["access_token"].is_string());
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_what_to_do_and_exit_with_their_status() {
    // Nothing listens: exit 1 and a hint to start wxgate dev.
    let output = run(bare(&["--api", "http://127.0.0.1:1", "token", "demo"])).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("wxgate dev"));
    // Usage errors: exit 2.
    for args in [
        vec!["send", "text", "demo"],
        vec!["nonsense"],
        vec!["--api", "not a url", "token", "demo"],
        vec!["sim", "push", "nobody", "text", "x"],
    ] {
        let output = run(bare(&args)).await;
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let env = DevEnv::start().await;
    let mut command = env.command(&["token", "demo"]);
    command.env("WXGATE_API_KEY", "wrong-key");
    let output = run(command).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--api-key"));
    let output = env.run(&["token", "nobody"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("nobody"));
}

#[tokio::test]
async fn every_subcommand_has_help_with_an_example() {
    let leaves: &[&[&str]] = &[
        &["dev"],
        &["tail"],
        &["typing"],
        &["token"],
        &["jssdk"],
        &["send", "text"],
        &["send", "image"],
        &["send", "voice"],
        &["send", "video"],
        &["send", "music"],
        &["send", "news"],
        &["send", "template"],
        &["send", "mass"],
        &["oauth", "url"],
        &["oauth", "exchange"],
        &["qrcode", "create"],
        &["menu", "create"],
        &["menu", "get"],
        &["menu", "delete"],
        &["menu", "current"],
        &["menu", "try-match"],
        &["menu", "add-conditional"],
        &["menu", "delete-conditional"],
        &["accounts", "list"],
        &["accounts", "get"],
        &["accounts", "add"],
        &["accounts", "remove"],
        &["accounts", "rotate"],
        &["accounts", "export"],
        &["accounts", "import"],
        &["dead", "list"],
        &["dead", "replay"],
        &["dead", "discard"],
        &["media", "upload"],
        &["sim", "push"],
        &["sim", "serve"],
    ];
    for leaf in leaves {
        let mut args = leaf.to_vec();
        args.push("--help");
        let output = run(bare(&args)).await;
        assert!(output.status.success(), "{args:?}");
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(help.contains("Example"), "{args:?} has no example:\n{help}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_binary_prints_what_to_do_next_and_stops_on_ctrl_c() {
    let mut child = bare(&["dev"])
        .env("WXGATE__GATEWAY__LISTEN", "127.0.0.1:0")
        .env("WXGATE__WORKER__HTTP_LISTEN", "127.0.0.1:0")
        .env("WXGATE__WORKER__GRPC_LISTEN", "127.0.0.1:0")
        .env("WXGATE__WECHAT__API_BASE", "http://127.0.0.1:0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains("Ctrl-C stops it");
            banner.push(line);
            if done {
                return;
            }
        }
        panic!("wxgate dev ended early: {banner:?}");
    })
    .await
    .expect("the banner within 30 s");
    let text = banner.join("\n");
    for expected in [
        "/wx/demo",
        "/wx/plain",
        "/wx/compat",
        "key: wxgate-dev-key",
        "export WXGATE_API=http://127.0.0.1:",
        "wxgate tail",
        "wxgate sim push demo text 你好",
        "wxgate send text demo",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    assert!(!text.contains(":0/"), "real ports, not 0:\n{text}");
    // The API it names answers with the key it prints.
    let api = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("WXGATE_API="))
        .unwrap()
        .to_owned();
    let mut token = bare(&["token", "demo"]);
    token
        .env("WXGATE_API", &api)
        .env("WXGATE_API_KEY", "wxgate-dev-key");
    assert!(run(token).await.status.success());
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("wxgate dev stops within 30 s of Ctrl-C")
        .unwrap();
    assert!(exit.success(), "{exit}");
}

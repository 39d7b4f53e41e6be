//! Server URL verification (`GET /wx/{account}`, docs/protocol.md §1.2) and the operational routes.

use std::time::Duration;

use wxgate_sim::PushAccount;
use wxgate_tests::{Options, TestEnv, nonce, now_s, query, raw_exchange};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_verification_echoes_echostr_in_every_mode() {
    let env = TestEnv::start().await;
    for account in [&env.plain, &env.compat, &env.safe] {
        for echostr in ["4735862185948374617", "a b+c/=&?%25 世"] {
            let outcome = env
                .pusher
                .verify_get(&env.base(), account, echostr)
                .await
                .unwrap();
            assert_eq!(outcome.status, 200, "{}: {echostr:?}", account.id);
            assert_eq!(
                outcome.body, echostr,
                "{}: body is echostr exactly",
                account.id
            );
        }
    }

    let timestamp = now_s().to_string();
    let nonce = nonce();
    let signature = wechat::url_signature(&env.plain.token, &timestamp, &nonce);
    let path = format!(
        "/wx/plain?{}",
        query(&[
            ("signature", &signature),
            ("timestamp", &timestamp),
            ("nonce", &nonce),
            ("echostr", "12345"),
        ])
    );
    let request = format!("GET {path} HTTP/1.1\r\nHost: wxgate\r\nConnection: close\r\n\r\n");
    let response = raw_exchange(env.addr, request.as_bytes(), WAIT).await;
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "content-type: {:?}",
        response.header("content-type")
    );
    assert_eq!(response.body, b"12345");
    env.cleanup().await;
}

/// `GET /wx/plain?signature&timestamp&nonce&echostr` with `nonce` and `echostr` written into
/// the query as given (not encoded), signed over `signed_nonce`.
async fn get_as_written(
    env: &TestEnv,
    nonce: &str,
    signed_nonce: &str,
    echostr: &str,
) -> (u16, String) {
    let timestamp = now_s().to_string();
    let signature = wechat::url_signature(&env.plain.token, &timestamp, signed_nonce);
    let (status, body) = env
        .get(&format!(
            "/wx/plain?signature={signature}&timestamp={timestamp}&nonce={nonce}&echostr={echostr}"
        ))
        .await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_verification_decodes_the_query_once_and_refuses_what_is_not_utf8() {
    let env = TestEnv::start().await;
    let mut failures = Vec::new();
    // `+` is a space and `%2B` a plus, as in every form decoder (WeChat's reference servers
    // included); a `%` without two hex digits after it stays as written; what is not UTF-8
    // once decoded (a lone byte, a character cut short) is refused, not rewritten.
    for (echostr, want) in [
        ("a+b", (200, "a b")),
        ("a%2Bb", (200, "a+b")),
        ("%E4%B8%96", (200, "世")),
        ("%G1", (200, "%G1")),
        ("12%", (200, "12%")),
        ("%FF", (400, "Bad Request")),
        ("%E4%B8", (400, "Bad Request")),
    ] {
        let (status, body) = get_as_written(&env, "1", "1", echostr).await;
        if (status, body.as_str()) != want {
            failures.push(format!(
                "echostr={echostr}: got {status} {body:?}, want {want:?}"
            ));
        }
    }
    // The signature covers the nonce as decoded: a plus kept as written fails it.
    for (nonce, signed_nonce, want) in [
        ("1+2", "1 2", 200),
        ("1%2B2", "1+2", 200),
        ("%G1", "%G1", 200),
        ("1+2", "1+2", 403),
        ("%FF", "\u{fffd}", 400),
    ] {
        let (status, _) = get_as_written(&env, nonce, signed_nonce, "e").await;
        if status != want {
            failures.push(format!(
                "nonce={nonce} signed as {signed_nonce:?}: got {status}, want {want}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_verification_with_a_bad_signature_is_403() {
    let env = TestEnv::start().await;
    for account in [&env.plain, &env.safe] {
        let wrong = PushAccount {
            token: "not-the-token".to_owned(),
            ..account.clone()
        };
        let outcome = env
            .pusher
            .verify_get(&env.base(), &wrong, "4735862185948374617")
            .await
            .unwrap();
        assert_eq!(outcome.status, 403, "{}", account.id);
        assert_ne!(outcome.body, "4735862185948374617");
    }

    let unsigned = format!(
        "/wx/plain?{}",
        query(&[
            ("timestamp", &now_s().to_string()),
            ("nonce", "1"),
            ("echostr", "e"),
        ])
    );
    assert_eq!(env.get(&unsigned).await.0, 403, "no signature");

    let unknown = env
        .pusher
        .verify_get(
            &env.base(),
            &PushAccount {
                id: "nobody".to_owned(),
                ..env.plain.clone()
            },
            "e",
        )
        .await
        .unwrap();
    assert_eq!(unknown.status, 404, "unknown account");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_metrics_routes_answer() {
    let env = TestEnv::start().await;
    assert_eq!(env.get("/healthz").await.0, 200);
    assert_eq!(env.readyz().await, 200);

    let ping = env.text(&env.plain, "ping");
    assert_eq!(env.push(&env.plain, &ping).await.statuses, [200]);
    let (status, body) = env.get("/metrics").await;
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    for name in [
        "wxgate_gateway_requests_total{",
        "wxgate_gateway_request_seconds_bucket{",
        "wxgate_gateway_publish_total{",
        "wxgate_gateway_dedup_hits_total ",
        "wxgate_gateway_passive_replies_total{",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "/metrics has no {name}…:\n{text}"
        );
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_prefix_and_per_account_metrics_follow_the_config() {
    let env = TestEnv::with(
        Options::new()
            .gateway("path_prefix = \"/hooks/wechat\"")
            .gateway("metrics_per_account = false"),
    )
    .await;
    let base = format!("http://{}/hooks/wechat", env.addr);
    let xml = env.text(&env.plain, "ping");
    let outcome = env.pusher.push(&base, &env.plain, &xml).await.unwrap();
    assert_eq!(outcome.statuses, [200], "callbacks live under the prefix");
    let outcome = env.push(&env.plain, &env.text(&env.plain, "hi")).await;
    assert_eq!(outcome.statuses, [404], "/wx is not the prefix here");
    let verified = env
        .pusher
        .verify_get(&base, &env.safe, "777")
        .await
        .unwrap();
    assert_eq!((verified.status, verified.body.as_str()), (200, "777"));

    let (_, body) = env.get("/metrics").await;
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.lines()
            .any(|l| l.starts_with("wxgate_gateway_requests_total{")),
        "{text}"
    );
    assert!(
        !text.contains("account=\"plain\""),
        "metrics_per_account = false leaves out the account label:\n{text}"
    );
    env.cleanup().await;
}

//! `wxgate.v1.Tokens` against a running worker and the simulator: the shared access token and
//! JS-SDK ticket (one WeChat call for many callers), JS-SDK signatures, OAuth, WeChat's errors
//! and authorization.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tonic::Code;
use tonic::transport::Channel;
use wxgate_proto::v1::tokens_client::TokensClient;
use wxgate_proto::v1::{
    GetAccessTokenRequest, GetJsapiTicketRequest, OAuthAuthorizeUrlRequest,
    OAuthExchangeCodeRequest, OAuthScope, SignJsSdkRequest,
};
use wxgate_sim::Fault;

const STABLE: &str = "/cgi-bin/stable_token";
const GETTICKET: &str = "/cgi-bin/ticket/getticket";

fn get_token(account: &str, force_refresh: bool) -> GetAccessTokenRequest {
    GetAccessTokenRequest {
        account_id: account.into(),
        force_refresh,
    }
}

fn ticket(account: &str) -> GetJsapiTicketRequest {
    GetJsapiTicketRequest {
        account_id: account.into(),
    }
}

/// The AppID of config account `id`.
fn appid_of(h: &Harness, id: &str) -> String {
    h.config
        .accounts
        .iter()
        .find(|a| a.id.as_str() == id)
        .unwrap()
        .appid
        .clone()
}

#[tokio::test]
async fn concurrent_callers_share_one_token_call() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let mut client = TokensClient::new(h.channel(0).await);
        tasks.spawn(async move {
            client
                .get_access_token(authed(DEMO_KEY, get_token(ACCOUNT, false)))
                .await
                .map(tonic::Response::into_inner)
        });
    }
    let mut tokens = Vec::new();
    while let Some(result) = tasks.join_next().await {
        tokens.push(result.unwrap().unwrap());
    }
    assert_eq!(h.sim.token_requests(APPID), 1);
    let first = &tokens[0];
    assert!(tokens.iter().all(|t| t == first));
    let issued = h.sim.calls_to(STABLE);
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].body["force_refresh"], false);
    let now = wxgate_core::now_ms();
    assert!(first.expires_at_ms > now + 7_000_000 && first.expires_at_ms <= now + 7_200_000);
    // The token is WeChat's: an API call with it succeeds.
    let mut client = TokensClient::new(h.channel(0).await);
    client
        .get_jsapi_ticket(authed(DEMO_KEY, ticket(ACCOUNT)))
        .await
        .unwrap();
    assert_eq!(
        h.sim.calls_to(GETTICKET)[0].access_token.as_deref(),
        Some(first.access_token.as_str())
    );
    h.finish().await;
}

/// Makes the shared token of `appid` look fetched a minute ago, so a force refresh is due.
async fn age_stored_token(h: &Harness, appid: &str) {
    let mut redis = redis_connection().await;
    let key = format!("{}:token:{appid}", h.ns);
    let raw: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&raw).unwrap();
    value["fetched_at_ms"] = (wxgate_core::now_ms() - 60_000).into();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(value.to_string())
        .arg("PX")
        .arg(3_600_000)
        .query_async(&mut redis)
        .await
        .unwrap();
}

#[tokio::test]
async fn force_refresh_replaces_the_token_once_per_30_s() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let mut client = TokensClient::new(h.channel(0).await);
    let old = client
        .get_access_token(authed(DEMO_KEY, get_token(ACCOUNT, false)))
        .await
        .unwrap()
        .into_inner();

    // Fetched just now: a force refresh is rate-limited and hands out the same token.
    let same = client
        .get_access_token(authed(DEMO_KEY, get_token(ACCOUNT, true)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(same, old);
    assert_eq!(h.sim.token_requests(APPID), 1);

    // Older than 30 s: concurrent force refreshes make one forced call and share its token.
    age_stored_token(&h, APPID).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let mut client = TokensClient::new(h.channel(0).await);
        tasks.spawn(async move {
            client
                .get_access_token(authed(DEMO_KEY, get_token(ACCOUNT, true)))
                .await
                .map(tonic::Response::into_inner)
        });
    }
    let mut fresh = Vec::new();
    while let Some(result) = tasks.join_next().await {
        fresh.push(result.unwrap().unwrap());
    }
    assert!(fresh.iter().all(|t| t == &fresh[0]));
    assert_ne!(fresh[0].access_token, old.access_token);
    assert_eq!(h.sim.token_requests(APPID), 2);
    assert_eq!(h.sim.calls_to(STABLE)[1].body["force_refresh"], true);
    // WeChat invalidated the old token; the new one works.
    client
        .get_jsapi_ticket(authed(DEMO_KEY, ticket(ACCOUNT)))
        .await
        .unwrap();
    assert_eq!(
        h.sim.calls_to(GETTICKET)[0].access_token.as_deref(),
        Some(fresh[0].access_token.as_str())
    );
    h.finish().await;
}

#[tokio::test]
async fn the_jsapi_ticket_is_shared_by_two_workers() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    h.start_ready_worker().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let mut client = TokensClient::new(h.channel(i % 2).await);
        tasks.spawn(async move {
            client
                .get_jsapi_ticket(authed(DEMO_KEY, ticket(ACCOUNT)))
                .await
                .map(tonic::Response::into_inner)
        });
    }
    let mut tickets = Vec::new();
    while let Some(result) = tasks.join_next().await {
        tickets.push(result.unwrap().unwrap());
    }
    assert!(tickets.iter().all(|t| t == &tickets[0]));
    assert!(!tickets[0].ticket.is_empty());
    assert_eq!(h.sim.call_count(GETTICKET), 1);
    assert_eq!(
        h.sim.calls_to(GETTICKET)[0].query_param("type"),
        Some("jsapi")
    );
    assert_eq!(h.sim.token_requests(APPID), 1);
    let mut redis = redis_connection().await;
    let stored: String = redis::cmd("GET")
        .arg(format!("{}:ticket:{APPID}:jsapi", h.ns))
        .query_async(&mut redis)
        .await
        .unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["ticket"], tickets[0].ticket.as_str());
    assert_eq!(stored["expires_at_ms"], tickets[0].expires_at_ms);
    h.finish().await;
}

#[tokio::test]
async fn sign_js_sdk_signs_the_page_without_its_fragment() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let mut client = TokensClient::new(h.channel(0).await);
    let page = "https://example.com/shop?item=1&from=menu";
    let signed = client
        .sign_js_sdk(authed(
            DEMO_KEY,
            SignJsSdkRequest {
                account_id: ACCOUNT.into(),
                url: format!("{page}#/cart"),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let ticket = client
        .get_jsapi_ticket(authed(DEMO_KEY, ticket(ACCOUNT)))
        .await
        .unwrap()
        .into_inner()
        .ticket;
    assert_eq!(signed.app_id, APPID);
    assert_eq!(signed.url, page);
    assert_eq!(signed.nonce_str.len(), 16);
    assert!(signed.nonce_str.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert!((signed.timestamp - wxgate_core::now_ms() / 1000).abs() < 60);
    // Recomputed independently: sha1 of the four pairs in order, raw values.
    let expected = sha1_hex(&format!(
        "jsapi_ticket={ticket}&noncestr={}&timestamp={}&url={page}",
        signed.nonce_str, signed.timestamp
    ));
    assert_eq!(signed.signature, expected);
    assert_eq!(h.sim.call_count(GETTICKET), 1);

    for (url, reason) in [
        ("", "url: is required"),
        (
            "ftp://example.com/",
            "url: must start with http:// or https://",
        ),
    ] {
        let status = status_of(
            client
                .sign_js_sdk(authed(
                    DEMO_KEY,
                    SignJsSdkRequest {
                        account_id: ACCOUNT.into(),
                        url: url.into(),
                    },
                ))
                .await,
        );
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), reason);
    }
    let long = format!("https://example.com/{}", "a".repeat(4077));
    let status = status_of(
        client
            .sign_js_sdk(authed(
                DEMO_KEY,
                SignJsSdkRequest {
                    account_id: ACCOUNT.into(),
                    url: long,
                },
            ))
            .await,
    );
    assert_eq!(status.message(), "url: at most 4096 bytes, got 4097");
    assert_eq!(h.sim.call_count(GETTICKET), 1);
    h.finish().await;
}

/// Lower-case hex SHA-1, computed here with the `sha1` crate directly rather than through
/// the `wechat` code under test.
fn sha1_hex(text: &str) -> String {
    use sha1::Digest as _;
    hex::encode(sha1::Sha1::digest(text.as_bytes()))
}

#[tokio::test]
async fn oauth_authorize_url_is_built_as_the_protocol_shows() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let mut client = TokensClient::new(h.channel(0).await);
    let request = |redirect_uri: &str, scope: OAuthScope, state: &str| {
        authed(
            DEMO_KEY,
            OAuthAuthorizeUrlRequest {
                account_id: ACCOUNT.into(),
                redirect_uri: redirect_uri.into(),
                scope: scope as i32,
                state: state.into(),
            },
        )
    };
    let url = client
        .o_auth_authorize_url(request(
            "https://example.com/cb?next=/shop&x=1",
            OAuthScope::SnsapiUserinfo,
            "csrf123",
        ))
        .await
        .unwrap()
        .into_inner()
        .url;
    assert_eq!(
        url,
        "https://open.weixin.qq.com/connect/oauth2/authorize?appid=wx0123456789abcdef\
         &redirect_uri=https%3A%2F%2Fexample.com%2Fcb%3Fnext%3D%2Fshop%26x%3D1\
         &response_type=code&scope=snsapi_userinfo&state=csrf123#wechat_redirect"
    );
    for (redirect_uri, scope, state, message) in [
        ("", OAuthScope::SnsapiBase, "s", "redirect_uri: is required"),
        (
            "example.com/cb",
            OAuthScope::SnsapiBase,
            "s",
            "redirect_uri: must start with http:// or https://",
        ),
        (
            "https://example.com/cb",
            OAuthScope::OauthScopeUnspecified,
            "s",
            "scope: SNSAPI_BASE or SNSAPI_USERINFO is required",
        ),
        (
            "https://example.com/cb",
            OAuthScope::SnsapiBase,
            "",
            "state: 1 to 128 characters, got 0",
        ),
        (
            "https://example.com/cb",
            OAuthScope::SnsapiBase,
            "a-b",
            "state: only [A-Za-z0-9] allowed",
        ),
    ] {
        let status = status_of(
            client
                .o_auth_authorize_url(request(redirect_uri, scope, state))
                .await,
        );
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), message);
    }
    let long_state = "a".repeat(129);
    let status = status_of(
        client
            .o_auth_authorize_url(request(
                "https://example.com/cb",
                OAuthScope::SnsapiBase,
                &long_state,
            ))
            .await,
    );
    assert_eq!(status.message(), "state: 1 to 128 characters, got 129");
    assert!(h.sim.calls().is_empty());
    h.finish().await;
}

#[tokio::test]
async fn oauth_codes_are_exchanged_for_the_user() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let mut client = TokensClient::new(h.channel(0).await);
    let exchange = |code: &str| {
        authed(
            DEMO_KEY,
            OAuthExchangeCodeRequest {
                account_id: ACCOUNT.into(),
                code: code.into(),
                lang: String::new(),
            },
        )
    };
    let openid = wxgate_sim::random_openid();

    let code = h
        .sim
        .mint_oauth_code(APPID, &openid, wxgate_sim::OAuthScope::Base)
        .unwrap();
    let base = client
        .o_auth_exchange_code(exchange(&code))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(base.openid, openid);
    assert_eq!(base.scope, OAuthScope::SnsapiBase as i32);
    assert!(base.profile.is_none());
    assert_eq!(h.sim.call_count("/sns/userinfo"), 0);
    let call = &h.sim.calls_to("/sns/oauth2/access_token")[0];
    assert_eq!(call.query_param("code"), Some(code.as_str()));
    assert_eq!(call.query_param("grant_type"), Some("authorization_code"));

    let code = h
        .sim
        .mint_oauth_code(APPID, &openid, wxgate_sim::OAuthScope::UserInfo)
        .unwrap();
    let full = client
        .o_auth_exchange_code(exchange(&code))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(full.openid, openid);
    assert_eq!(full.scope, OAuthScope::SnsapiUserinfo as i32);
    let profile = full.profile.unwrap();
    assert_eq!(profile.nickname, "Simulated User");
    assert!(profile.headimgurl.starts_with("https://"));
    let userinfo = &h.sim.calls_to("/sns/userinfo")[0];
    assert_eq!(userinfo.query_param("openid"), Some(openid.as_str()));
    assert_eq!(userinfo.query_param("lang"), Some("zh_CN"));
    // The web token is not the account's shared token.
    assert_eq!(h.sim.token_requests(APPID), 0);

    // A used code: WeChat's 40163, the caller's mistake.
    let status = status_of(client.o_auth_exchange_code(exchange(&code)).await);
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(errcode_trailer(&status), Some(40163));

    let before = h.sim.calls().len();
    let status = status_of(client.o_auth_exchange_code(exchange("")).await);
    assert_eq!(status.message(), "code: 1 to 512 bytes, got 0");
    let status = status_of(
        client
            .o_auth_exchange_code(authed(
                DEMO_KEY,
                OAuthExchangeCodeRequest {
                    account_id: ACCOUNT.into(),
                    code: "c".into(),
                    lang: "fr".into(),
                },
            ))
            .await,
    );
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "lang: one of zh_CN, zh_TW, en; got \"fr\""
    );
    assert_eq!(h.sim.calls().len(), before);
    h.finish().await;
}

#[tokio::test]
async fn an_invalid_token_is_refreshed_once_and_the_call_succeeds() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let mut client = TokensClient::new(h.channel(0).await);
    let token = client
        .get_access_token(authed(DEMO_KEY, get_token(ACCOUNT, false)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.sim.invalidate_tokens(APPID), 1);
    let ticket = client
        .get_jsapi_ticket(authed(DEMO_KEY, ticket(ACCOUNT)))
        .await
        .unwrap()
        .into_inner();
    assert!(!ticket.ticket.is_empty());
    assert_eq!(h.sim.token_requests(APPID), 2);
    let calls = h.sim.calls_to(GETTICKET);
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].errcode, Some(40001));
    assert_eq!(
        calls[0].access_token.as_deref(),
        Some(token.access_token.as_str())
    );
    assert_eq!(calls[1].errcode, Some(0));
    // Everyone now gets the refreshed token.
    let fresh = client
        .get_access_token(authed(DEMO_KEY, get_token(ACCOUNT, false)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        calls[1].access_token.as_deref(),
        Some(fresh.access_token.as_str())
    );
    h.finish().await;
}

#[tokio::test]
async fn wechat_errors_map_by_class_with_the_errcode_trailer() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let mut client = TokensClient::new(h.channel(0).await);

    // The token endpoint's daily quota, on account `plain`.
    let plain = appid_of(&h, "plain");
    h.sim.inject(STABLE, Fault::errcode(45009).times(1));
    let status = status_of(
        client
            .get_access_token(authed(PLAIN_KEY, get_token("plain", false)))
            .await,
    );
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(errcode_trailer(&status), Some(45009));
    assert!(status.message().contains("45009"), "{}", status.message());
    assert_eq!(h.sim.token_requests(&plain), 1);

    // A wrong AppSecret (40125) on account `compat`: permanent.
    let compat = appid_of(&h, "compat");
    h.sim.add_account(&compat, "not-the-configured-secret");
    let status = status_of(
        client
            .get_access_token(authed(ADMIN_KEY, get_token("compat", false)))
            .await,
    );
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(errcode_trailer(&status), Some(40125));

    // The ticket endpoint's quota and a permanent refusal, on account `demo`.
    h.sim.inject(GETTICKET, Fault::errcode(45009).times(1));
    let status = status_of(
        client
            .get_jsapi_ticket(authed(DEMO_KEY, ticket(ACCOUNT)))
            .await,
    );
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(errcode_trailer(&status), Some(45009));
    h.sim.inject(GETTICKET, Fault::errcode(48001).times(1));
    let status = status_of(
        client
            .sign_js_sdk(authed(
                DEMO_KEY,
                SignJsSdkRequest {
                    account_id: ACCOUNT.into(),
                    url: "https://example.com/".into(),
                },
            ))
            .await,
    );
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(errcode_trailer(&status), Some(48001));
    // Failures were not cached: the next call fetches the ticket.
    client
        .get_jsapi_ticket(authed(DEMO_KEY, ticket(ACCOUNT)))
        .await
        .unwrap();
    assert_eq!(h.sim.call_count(GETTICKET), 3);

    // The OAuth endpoint's errors: an unknown code.
    let status = status_of(
        client
            .o_auth_exchange_code(authed(
                DEMO_KEY,
                OAuthExchangeCodeRequest {
                    account_id: ACCOUNT.into(),
                    code: "never-minted".into(),
                    lang: String::new(),
                },
            ))
            .await,
    );
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(errcode_trailer(&status), Some(40029));
    h.sim
        .inject("/sns/oauth2/access_token", Fault::errcode(45011).times(1));
    let status = status_of(
        client
            .o_auth_exchange_code(authed(
                DEMO_KEY,
                OAuthExchangeCodeRequest {
                    account_id: ACCOUNT.into(),
                    code: "whatever".into(),
                    lang: String::new(),
                },
            ))
            .await,
    );
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(errcode_trailer(&status), Some(45011));
    h.finish().await;
}

/// Every Tokens RPC for `account` with `key`: the status code of each, in a fixed order.
async fn every_rpc(channel: Channel, key: &str, account: &str) -> Vec<(&'static str, Code)> {
    let mut client = TokensClient::new(channel);
    let code = |result: Result<_, tonic::Status>| match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    };
    vec![
        (
            "GetAccessToken",
            code(
                client
                    .get_access_token(authed(key, get_token(account, false)))
                    .await
                    .map(|_| ()),
            ),
        ),
        (
            "GetJsapiTicket",
            code(
                client
                    .get_jsapi_ticket(authed(key, ticket(account)))
                    .await
                    .map(|_| ()),
            ),
        ),
        (
            "SignJsSdk",
            code(
                client
                    .sign_js_sdk(authed(
                        key,
                        SignJsSdkRequest {
                            account_id: account.into(),
                            url: "https://example.com/".into(),
                        },
                    ))
                    .await
                    .map(|_| ()),
            ),
        ),
        (
            "OAuthAuthorizeUrl",
            code(
                client
                    .o_auth_authorize_url(authed(
                        key,
                        OAuthAuthorizeUrlRequest {
                            account_id: account.into(),
                            redirect_uri: "https://example.com/cb".into(),
                            scope: OAuthScope::SnsapiBase as i32,
                            state: "s".into(),
                        },
                    ))
                    .await
                    .map(|_| ()),
            ),
        ),
        (
            "OAuthExchangeCode",
            code(
                client
                    .o_auth_exchange_code(authed(
                        key,
                        OAuthExchangeCodeRequest {
                            account_id: account.into(),
                            code: "c".into(),
                            lang: String::new(),
                        },
                    ))
                    .await
                    .map(|_| ()),
            ),
        ),
    ]
}

#[tokio::test]
async fn keys_act_only_for_their_accounts() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    for (key, account, expected) in [
        (DEMO_KEY, "plain", Code::PermissionDenied),
        (DEMO_KEY, "nope", Code::PermissionDenied),
        (ADMIN_KEY, "nope", Code::NotFound),
        ("not-a-key", ACCOUNT, Code::Unauthenticated),
    ] {
        for (rpc, code) in every_rpc(h.channel(0).await, key, account).await {
            assert_eq!(code, expected, "{rpc} with {key} for {account}");
        }
    }
    assert!(h.sim.calls().is_empty(), "nothing reached WeChat");
    // The admin key acts for every account.
    client_ok(&h, "plain").await;
    h.finish().await;
}

async fn client_ok(h: &Harness, account: &str) {
    let mut client = TokensClient::new(h.channel(0).await);
    client
        .get_access_token(authed(ADMIN_KEY, get_token(account, false)))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_token_endpoint_that_fails_backs_off_and_recovers() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let mut client = TokensClient::new(h.channel(0).await);
    h.sim.inject(STABLE, Fault::errcode(-1).times(1));
    let status = status_of(
        client
            .get_access_token(authed(DEMO_KEY, get_token(ACCOUNT, false)))
            .await,
    );
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(errcode_trailer(&status), Some(-1));
    // During the back-off (1 s) callers fail fast without calling WeChat; after it, it works.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match client
            .get_access_token(authed(DEMO_KEY, get_token(ACCOUNT, false)))
            .await
        {
            Ok(_) => break,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable);
                assert!(tokio::time::Instant::now() < deadline, "{status:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(h.sim.token_requests(APPID), 2);
    h.finish().await;
}

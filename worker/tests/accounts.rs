//! `wxgate.v1.Accounts` (docs/contract.md §1.5, §5) with a real client, a running gateway and
//! worker: accounts added at run time answer callbacks within a second, changes and key
//! rotation take effect, removal answers 404, a vanished version key is survived and
//! reported; admin keys only; secrets never come back and never reach a log.

// Test support: a failed step should fail the test at once, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;
use prost::Message as _;
use tonic::Code;
use tonic::transport::Channel;
use wxgate_proto::v1::account_rule_reply::Kind;
use wxgate_proto::v1::accounts_client::AccountsClient;
use wxgate_proto::v1::{
    AccountMode, AccountOrigin, AccountRule, AccountRuleMatch, AccountRuleReply, AccountSettings,
    GetAccountRequest, ListAccountsRequest, RemoveAccountRequest, UpsertAccountRequest,
};
use wxgate_sim::{Answer, Inbound, PushAccount, PushClient, PushMode, Reply, random_openid};

const KEY_1: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const KEY_2: &str = "ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlkj";
const TOKEN_1: &str = "tok1-runtime-secret";
const TOKEN_2: &str = "tok2-runtime-secret";
const APP_SECRET: &str = "appsecret-runtime-secret";

/// Every log line of this test binary, to look for secrets in.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    Arc::clone(LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || Sink(Arc::clone(&sink)))
            .try_init();
        logs
    }))
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn client(channel: Channel) -> AccountsClient<Channel> {
    AccountsClient::new(channel)
}

/// The address of a gateway from its callback base `http://addr/wx`.
fn gateway_addr(base: &str) -> SocketAddr {
    base.strip_prefix("http://")
        .and_then(|b| b.strip_suffix("/wx"))
        .unwrap()
        .parse()
        .unwrap()
}

fn appid_of(id: &str) -> String {
    format!("wx{:0>16}", id.replace(['-', '_'], ""))
}

/// A safe-mode runtime account with a passive `ping` → `pong` rule and a custom echo rule.
fn settings(id: &str, token: &str, key: &str) -> AccountSettings {
    AccountSettings {
        id: id.to_owned(),
        appid: appid_of(id),
        secret: APP_SECRET.to_owned(),
        token: token.to_owned(),
        encoding_aes_key: key.to_owned(),
        mode: AccountMode::Safe.into(),
        passive: vec![AccountRule {
            r#match: Some(AccountRuleMatch {
                msg_type: vec!["text".to_owned()],
                content: Some("ping".to_owned()),
                ..AccountRuleMatch::default()
            }),
            reply: Some(AccountRuleReply {
                kind: Some(Kind::Text("pong {from}".to_owned())),
            }),
        }],
        custom: vec![AccountRule {
            r#match: Some(AccountRuleMatch {
                msg_type: vec!["text".to_owned()],
                ..AccountRuleMatch::default()
            }),
            reply: Some(AccountRuleReply {
                kind: Some(Kind::Echo(true)),
            }),
        }],
        ..AccountSettings::default()
    }
}

/// How the simulator pushes as WeChat for account `id` with `token` and `key`.
fn push_account(id: &str, token: &str, key: &str) -> PushAccount {
    let appid = appid_of(id);
    PushAccount {
        id: id.to_owned(),
        original_id: format!("gh_{}", &appid[2..14]),
        appid,
        token: token.to_owned(),
        encoding_aes_key: Some(key.to_owned()),
        mode: PushMode::Safe,
    }
}

/// One delivery of a `ping` from a new user: the HTTP status and how WeChat judged it.
async fn ping(base: &str, account: &PushAccount) -> (u16, Answer) {
    let client = PushClient::new()
        .attempts(1)
        .timeout(Duration::from_secs(4));
    let xml = Inbound::now(&account.original_id, random_openid()).text(rand::random(), "ping");
    let outcome = client.push(base, account, &xml).await.unwrap();
    (*outcome.statuses.last().unwrap(), outcome.answer)
}

/// Pings until the gateway answers `status`, within [`WAIT`]; returns the last answer.
async fn ping_until(base: &str, account: &PushAccount, status: u16, what: &str) -> Answer {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (got, answer) = ping(base, account).await;
        if got == status {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still {got} ({answer:?}), wanted {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn upsert(
    accounts: &mut AccountsClient<Channel>,
    account: AccountSettings,
    clear_previous: bool,
) -> wxgate_proto::v1::UpsertAccountResponse {
    accounts
        .upsert(authed(
            ADMIN_KEY,
            UpsertAccountRequest {
                account: Some(account),
                clear_previous,
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runtime_account_is_served_changed_rotated_and_removed() {
    let logs = captured_logs();
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let base = h.start_gateway().await;
    let mut accounts = client(h.channel(0).await);
    let id = "rt-served";
    h.sim.add_account(&appid_of(id), APP_SECRET);

    let stored = upsert(&mut accounts, settings(id, TOKEN_1, KEY_1), false).await;
    assert!(stored.created);
    assert!(stored.version >= 1);
    let old = push_account(id, TOKEN_1, KEY_1);
    let answer = ping_until(&base, &old, 200, "the new account to be served").await;
    assert!(
        matches!(&answer, Answer::Reply(Reply::Text { content }) if content.starts_with("pong ")),
        "the passive rule answers: {answer:?}"
    );

    // The worker serves it too: its custom rule echoes through custom/send.
    let user = random_openid();
    let xml = Inbound::now(&old.original_id, &user).text(rand::random(), "hello runtime");
    let outcome = PushClient::new().push(&base, &old, &xml).await.unwrap();
    assert_eq!(outcome.answer, Answer::Acknowledged);
    h.sim.wait_for_calls(SEND, 1, WAIT).await.unwrap();
    let sent = h.sim.calls_to(SEND);
    assert_eq!(sent[0].body["touser"], user.as_str());
    assert_eq!(sent[0].body["text"]["content"], "hello runtime");

    // Rotation: new token and key, the old ones still accepted meanwhile.
    let mut rotated = settings(id, TOKEN_2, KEY_2);
    rotated.previous_token = TOKEN_1.to_owned();
    rotated.previous_encoding_aes_key = KEY_1.to_owned();
    rotated.secret = String::new();
    let stored = upsert(&mut accounts, rotated, false).await;
    assert!(!stored.created);
    let info = stored.account.unwrap();
    assert!(info.has_secret, "an empty secret keeps the stored one");
    assert!(info.has_previous_token && info.has_previous_encoding_aes_key);
    let new = push_account(id, TOKEN_2, KEY_2);
    ping_until(&base, &new, 200, "the new token and key to be accepted").await;
    assert_eq!(
        ping(&base, &old).await.0,
        200,
        "the previous ones still are"
    );

    // End of the rotation: the old token is refused, the new one keeps working.
    let mut done = settings(id, "", "");
    done.secret = String::new();
    let stored = upsert(&mut accounts, done, true).await;
    let info = stored.account.unwrap();
    assert!(info.has_token && info.has_encoding_aes_key && info.has_secret);
    assert!(!info.has_previous_token && !info.has_previous_encoding_aes_key);
    ping_until(&base, &old, 403, "the old token to be refused").await;
    assert_eq!(ping(&base, &new).await.0, 200);

    // Removal: 404 within a second, and the API no longer knows it.
    let removed = accounts
        .remove(authed(
            ADMIN_KEY,
            RemoveAccountRequest {
                account_id: id.to_owned(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(removed.version > stored.version);
    ping_until(&base, &new, 404, "the removed account to be unknown").await;
    let status = accounts
        .get(authed(
            ADMIN_KEY,
            GetAccountRequest {
                account_id: id.to_owned(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    h.finish().await;
    assert_no_secret_logged(&logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vanished_version_key_keeps_accounts_served_and_is_reported() {
    let logs = captured_logs();
    let mut h = Harness::new(&[]).await;
    let worker = h.start_ready_worker().await;
    let base = h.start_gateway().await;
    let gateway = gateway_addr(&base);
    let mut accounts = client(h.channel(0).await);
    let id = "rt-kept";
    upsert(&mut accounts, settings(id, TOKEN_1, KEY_1), false).await;
    let account = push_account(id, TOKEN_1, KEY_1);
    ping_until(&base, &account, 200, "the new account to be served").await;
    // Both have loaded it (a process that never saw the version has nothing to lose).
    for addr in [gateway, worker] {
        wait_metric(addr, "wxgate_accounts{origin=\"runtime\"}", 1.0).await;
    }

    // Redis restarted without persistence: the runtime accounts are gone from it.
    let mut redis = redis_connection().await;
    let _: () = redis::cmd("DEL")
        .arg(format!("{}:accounts:version", h.ns))
        .arg(format!("{}:accounts", h.ns))
        .query_async(&mut redis)
        .await
        .unwrap();
    for addr in [gateway, worker] {
        wait_metric(addr, "wxgate_accounts_version_lost", 1.0).await;
        let (status, body) = http_get(addr, "/readyz").await;
        assert_eq!(status, 200, "{addr}: traffic keeps flowing: {body}");
        assert!(body.contains("vanished"), "{addr}: {body}");
        assert!(body.contains("1 runtime accounts"), "{addr}: {body}");
    }
    assert_eq!(
        metric(gateway, "wxgate_accounts{origin=\"runtime\"}").await,
        1.0
    );
    assert_eq!(ping(&base, &account).await.0, 200, "still served");
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logged.contains("ERROR") && logged.contains("version key vanished"),
        "the loss is logged as an error"
    );

    h.finish().await;
    assert_no_secret_logged(&logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_admin_keys_and_never_file_accounts() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let channel = h.channel(0).await;
    let mut accounts = client(channel);
    let list = || ListAccountsRequest::default();
    let get = |id: &str| GetAccountRequest {
        account_id: id.to_owned(),
    };
    let upsert_of = |settings: AccountSettings| UpsertAccountRequest {
        account: Some(settings),
        clear_previous: false,
    };
    let remove = |id: &str| RemoveAccountRequest {
        account_id: id.to_owned(),
    };

    for (key, code) in [
        (None, Code::Unauthenticated),
        (Some("not-a-key"), Code::Unauthenticated),
        (Some(DEMO_KEY), Code::PermissionDenied),
    ] {
        let request = |message| match key {
            None => tonic::Request::new(message),
            Some(key) => authed(key, message),
        };
        let codes = [
            accounts.list(request(list())).await.unwrap_err().code(),
            accounts
                .get(match key {
                    None => tonic::Request::new(get("demo")),
                    Some(key) => authed(key, get("demo")),
                })
                .await
                .unwrap_err()
                .code(),
            accounts
                .upsert(match key {
                    None => tonic::Request::new(upsert_of(settings("x", TOKEN_1, KEY_1))),
                    Some(key) => authed(key, upsert_of(settings("x", TOKEN_1, KEY_1))),
                })
                .await
                .unwrap_err()
                .code(),
            accounts
                .remove(match key {
                    None => tonic::Request::new(remove("demo")),
                    Some(key) => authed(key, remove("demo")),
                })
                .await
                .unwrap_err()
                .code(),
        ];
        assert_eq!(codes, [code; 4], "key {key:?}");
    }
    // Nothing was stored by the refused upserts.
    let mut redis = redis_connection().await;
    let stored: usize = redis::cmd("HLEN")
        .arg(format!("{}:accounts", h.ns))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(stored, 0);

    // File accounts: listed and readable, never changed or removed.
    for status in [
        accounts
            .upsert(authed(
                ADMIN_KEY,
                upsert_of(settings("demo", TOKEN_1, KEY_1)),
            ))
            .await
            .unwrap_err(),
        accounts
            .remove(authed(ADMIN_KEY, remove("demo")))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains("config file"), "{status:?}");
    }
    let demo = accounts
        .get(authed(ADMIN_KEY, get("demo")))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(demo.origin, i32::from(AccountOrigin::File));
    assert_eq!(demo.mode, i32::from(AccountMode::Safe));
    assert_eq!(demo.appid, APPID);
    assert!(demo.has_token && demo.has_secret && demo.has_encoding_aes_key);
    assert_eq!(
        demo.custom.len(),
        h.config.accounts[0].custom_specs.len(),
        "the tutorial rules"
    );
    for (status, code) in [
        (
            accounts
                .get(authed(ADMIN_KEY, get("nope")))
                .await
                .unwrap_err(),
            Code::NotFound,
        ),
        (
            accounts
                .remove(authed(ADMIN_KEY, remove("nope")))
                .await
                .unwrap_err(),
            Code::NotFound,
        ),
        (
            accounts
                .get(authed(ADMIN_KEY, get("de.mo")))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
        ),
    ] {
        assert_eq!(status.code(), code, "{status:?}");
    }

    // List: file and runtime accounts, sorted, in pages.
    upsert_ok(&mut accounts, settings("aaa-runtime", TOKEN_1, KEY_1)).await;
    upsert_ok(&mut accounts, settings("zzz-runtime", TOKEN_1, KEY_1)).await;
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = accounts
            .list(authed(
                ADMIN_KEY,
                ListAccountsRequest {
                    page_size: 2,
                    page_token: page_token.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.accounts.len() <= 2);
        for account in &page.accounts {
            let origin = if account.id.ends_with("-runtime") {
                AccountOrigin::Runtime
            } else {
                AccountOrigin::File
            };
            assert_eq!(account.origin, i32::from(origin), "{}", account.id);
        }
        ids.extend(page.accounts.into_iter().map(|a| a.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        ids,
        ["aaa-runtime", "compat", "demo", "plain", "zzz-runtime"]
    );

    h.finish().await;
}

/// Access tokens are shared by appid: an appid taken by another account (file or runtime)
/// is refused, naming that account, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_appid_of_another_account_is_refused() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let mut accounts = client(h.channel(0).await);
    upsert_ok(&mut accounts, settings("one", TOKEN_1, KEY_1)).await;
    // The same account keeps its own appid.
    upsert_ok(&mut accounts, settings("one", TOKEN_2, KEY_1)).await;

    for (appid, owner) in [(appid_of("one"), "one"), (APPID.to_owned(), "demo")] {
        let mut two = settings("two", TOKEN_1, KEY_1);
        two.appid = appid;
        let status = accounts
            .upsert(authed(
                ADMIN_KEY,
                UpsertAccountRequest {
                    account: Some(two),
                    clear_previous: false,
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().contains(&format!("account {owner:?}")),
            "{status:?}"
        );
    }
    let status = accounts
        .get(authed(
            ADMIN_KEY,
            GetAccountRequest {
                account_id: "two".to_owned(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "nothing stored: {status:?}");
    upsert_ok(&mut accounts, settings("two", TOKEN_1, KEY_1)).await;

    h.finish().await;
}

async fn upsert_ok(accounts: &mut AccountsClient<Channel>, settings: AccountSettings) {
    upsert(accounts, settings, false).await;
}

/// The reason the config file gets for account `toml` (an `[[accounts]]` table), as the API
/// reports it: `account.{field}: {reason}`.
fn file_reason(toml: &str) -> String {
    match wxgate_core::Config::from_toml(toml, |_| None) {
        Err(wxgate_core::config::ConfigError::Invalid { key, reason }) => {
            format!("{}: {reason}", key.replacen("accounts[0]", "account", 1))
        }
        other => panic!("the file was not refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_accounts_get_the_config_files_reasons_and_secrets_never_come_back() {
    let logs = captured_logs();
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let mut accounts = client(h.channel(0).await);
    let table = |extra: &str| {
        format!(
            "[[accounts]]\nid = \"v\"\nappid = \"{}\"\ntoken = \"{TOKEN_1}\"\n{extra}",
            appid_of("v")
        )
    };
    let base = || {
        let mut s = settings("v", TOKEN_1, "");
        s.passive.clear();
        s.custom.clear();
        s.secret = String::new();
        s
    };
    let rule = |reply: Option<Kind>, msg_type: &str| AccountRule {
        r#match: Some(AccountRuleMatch {
            msg_type: vec![msg_type.to_owned()],
            ..AccountRuleMatch::default()
        }),
        reply: Some(AccountRuleReply { kind: reply }),
    };
    let cases: Vec<(AccountSettings, String)> = vec![
        (
            AccountSettings {
                encoding_aes_key: "short".into(),
                ..base()
            },
            table("encoding_aes_key = \"short\"\n"),
        ),
        (base(), table("mode = \"safe\"\n")),
        (
            AccountSettings {
                mode: AccountMode::Plain.into(),
                token: String::new(),
                ..base()
            },
            format!(
                "[[accounts]]\nid = \"v\"\nappid = \"{}\"\ntoken = \"\"\nmode = \"plain\"\n",
                appid_of("v")
            ),
        ),
        (
            AccountSettings {
                mode: AccountMode::Plain.into(),
                appid: String::new(),
                ..base()
            },
            "[[accounts]]\nid = \"v\"\nappid = \"\"\ntoken = \"t\"\nmode = \"plain\"\n".to_owned(),
        ),
        (
            AccountSettings {
                mode: AccountMode::Plain.into(),
                passive: vec![rule(Some(Kind::Text("{nope}".into())), "text")],
                ..base()
            },
            table(
                "mode = \"plain\"\n[[accounts.passive]]\nmatch = { msg_type = \"text\" }\nreply = { text = \"{nope}\" }\n",
            ),
        ),
        (
            AccountSettings {
                mode: AccountMode::Plain.into(),
                custom: vec![rule(None, "text")],
                ..base()
            },
            table(
                "mode = \"plain\"\n[[accounts.custom]]\nmatch = { msg_type = \"text\" }\nreply = {}\n",
            ),
        ),
        (
            AccountSettings {
                mode: AccountMode::Plain.into(),
                custom: vec![rule(Some(Kind::Echo(true)), "sticker")],
                ..base()
            },
            table(
                "mode = \"plain\"\n[[accounts.custom]]\nmatch = { msg_type = \"sticker\" }\nreply = { echo = true }\n",
            ),
        ),
        (
            AccountSettings {
                mode: AccountMode::Plain.into(),
                custom: vec![rule(
                    Some(Kind::TransferCustomerService(Default::default())),
                    "text",
                )],
                ..base()
            },
            table(
                "mode = \"plain\"\n[[accounts.custom]]\nmatch = { msg_type = \"text\" }\nreply = { transfer_customer_service = {} }\n",
            ),
        ),
    ];
    for (settings, toml) in cases {
        let status = accounts
            .upsert(authed(
                ADMIN_KEY,
                UpsertAccountRequest {
                    account: Some(settings),
                    clear_previous: false,
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(status.message(), file_reason(&toml));
    }
    let status = accounts
        .upsert(authed(
            ADMIN_KEY,
            UpsertAccountRequest {
                account: Some(AccountSettings {
                    id: "de.mo".into(),
                    ..base()
                }),
                clear_previous: false,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        file_reason("[[accounts]]\nid = \"de.mo\"\nappid = \"wx\"\ntoken = \"t\"\n")
    );
    let mut redis = redis_connection().await;
    let stored: usize = redis::cmd("HLEN")
        .arg(format!("{}:accounts", h.ns))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(stored, 0, "nothing invalid was stored");

    // Secrets go in and never come out: not in any field of any answer.
    let mut full = settings("secretive", TOKEN_2, KEY_2);
    full.previous_token = TOKEN_1.to_owned();
    full.previous_encoding_aes_key = KEY_1.to_owned();
    let stored = upsert(&mut accounts, full, false).await;
    let listed = accounts
        .list(authed(ADMIN_KEY, ListAccountsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let got = accounts
        .get(authed(
            ADMIN_KEY,
            GetAccountRequest {
                account_id: "secretive".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let info = got.account.clone().unwrap();
    assert!(
        info.has_secret
            && info.has_token
            && info.has_encoding_aes_key
            && info.has_previous_token
            && info.has_previous_encoding_aes_key
    );
    let answers = [
        stored.encode_to_vec(),
        listed.encode_to_vec(),
        got.encode_to_vec(),
    ];
    let file_secrets: Vec<String> = h
        .config
        .accounts
        .iter()
        .flat_map(|a| [a.secret.expose().to_owned(), a.token.expose().to_owned()])
        .filter(|s| !s.is_empty())
        .collect();
    for answer in &answers {
        let text = String::from_utf8_lossy(answer);
        for secret in [TOKEN_1, TOKEN_2, KEY_1, KEY_2, APP_SECRET]
            .into_iter()
            .chain(file_secrets.iter().map(String::as_str))
        {
            assert!(!text.contains(secret), "an answer holds a secret");
        }
    }

    h.finish().await;
    assert_no_secret_logged(&logs);
}

/// No secret of these tests is in any log line written so far.
fn assert_no_secret_logged(logs: &Arc<Mutex<Vec<u8>>>) {
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(!logged.is_empty(), "logs are captured");
    for secret in [TOKEN_1, TOKEN_2, KEY_1, KEY_2, APP_SECRET] {
        assert!(!logged.contains(secret), "a secret was logged");
    }
}

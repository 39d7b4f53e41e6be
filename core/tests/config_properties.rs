//! The properties of the `config` fuzz target (`fuzz/src/lib.rs`) as bounded proptests:
//! `Config::from_toml` never panics, whatever the text and the environment, and a file that
//! is a TOML table loads the same way after `toml` re-serialises it. Inputs are the shipped
//! configs (`config/*.toml`) with lines dropped or values replaced, and tables built from
//! the schema's keys with values of every TOML type.

// The helpers are test code too; a panic is how they fail a test.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use wxgate_core::config::Config;

const SHIPPED: [&str; 5] = [
    include_str!("../../config/example.toml"),
    include_str!("../../config/dev.toml"),
    include_str!("../../config/compose.toml"),
    include_str!("../../config/compose-demo.toml"),
    include_str!("../../config/tutorial.toml"),
];

/// Every field but the private id index, whose `HashMap` `Debug` order varies.
fn summary(config: &Config) -> String {
    format!(
        "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
        config.namespace,
        config.redis,
        config.rabbitmq,
        config.gateway,
        config.worker,
        config.wechat,
        config.accounts,
        config.api_keys
    )
}

/// Loads `text`, re-serialises it through `toml::Table` and checks both loads agree.
fn loads_the_same_after_reserialising(text: &str) -> Result<(), TestCaseError> {
    let first = Config::from_toml(text, |_| None);
    let Ok(table) = text.parse::<toml::Table>() else {
        return Ok(());
    };
    let again = Config::from_toml(&toml::to_string(&table).unwrap(), |_| None);
    match (&first, &again) {
        (Ok(a), Ok(b)) => prop_assert_eq!(summary(a), summary(b)),
        (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
        _ => prop_assert!(
            false,
            "loads differ: {:?} vs {:?}",
            first.err(),
            again.err()
        ),
    }
    Ok(())
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0u64..100_000).prop_map(|n| n.to_string()),
        Just("18446744073709551616".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<String>().prop_map(|s| toml::Value::String(s).to_string()),
        "(\"127.0.0.1:[0-9]{1,6}\"|\"/wx/?\"|\"quorum\"|\"classic\"|\"stable\"|\"safe\"|\"plain\"|\"compat\"|\"\")",
        Just("\"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\"".to_owned()),
        Just("[1000, 0, -1]".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("1.5".to_owned()),
    ]
}

fn key() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "namespace",
        "url",
        "queue_type",
        "listen",
        "path_prefix",
        "request_budget_ms",
        "publish_timeout_ms",
        "max_body_bytes",
        "timestamp_window_s",
        "dedup_ttl_s",
        "metrics_per_account",
        "threads",
        "http_listen",
        "grpc_listen",
        "prefetch",
        "concurrency",
        "retry_delays_ms",
        "max_attempts",
        "sent_ttl_s",
        "group_max_length",
        "group_message_ttl_s",
        "api_base",
        "token_mode",
        "refresh_ahead_s",
        "http_timeout_ms",
        "id",
        "appid",
        "secret",
        "token",
        "encoding_aes_key",
        "mode",
        "previous_token",
        "previous_encoding_aes_key",
        "name",
        "sha256",
        "accounts",
        "bogus",
    ])
}

fn section() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "",
        "[redis]",
        "[rabbitmq]",
        "[gateway]",
        "[worker]",
        "[wechat]",
        "[[accounts]]",
        "[[accounts.passive]]",
        "[[api_keys]]",
        "[bogus]",
    ])
}

/// A TOML document: sections with a few `key = value` lines each.
fn document() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        (section(), proptest::collection::vec((key(), value()), 0..5)),
        0..6,
    )
    .prop_map(|sections| {
        let mut text = String::new();
        for (header, pairs) in sections {
            text.push_str(header);
            text.push('\n');
            for (key, value) in pairs {
                text.push_str(&format!("{key} = {value}\n"));
            }
        }
        text
    })
}

/// A shipped config with some lines dropped and some values replaced.
fn edited_shipped() -> impl Strategy<Value = String> {
    (
        prop::sample::select(SHIPPED.to_vec()),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<bool>(), value()), 0..6),
    )
        .prop_map(|(text, edits)| {
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            for (at, drop, value) in edits {
                if lines.is_empty() {
                    break;
                }
                let i = at.index(lines.len());
                if drop {
                    lines.remove(i);
                } else if let Some((key, _)) = lines[i].split_once(" = ") {
                    lines[i] = format!("{key} = {value}");
                }
            }
            lines.join("\n")
        })
}

#[test]
fn shipped_configs_load_the_same_after_reserialising() {
    for text in SHIPPED {
        let table: toml::Table = text.parse().unwrap();
        let first = Config::from_toml(text, |_| None);
        let again = Config::from_toml(&toml::to_string(&table).unwrap(), |_| None);
        match (first, again) {
            (Ok(a), Ok(b)) => assert_eq!(summary(&a), summary(&b)),
            (a, b) => panic!("{:?} vs {:?}", a.err(), b.err()),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn from_toml_never_panics_on_text(text in any::<String>()) {
        let _ = Config::from_toml(&text, |_| None);
    }

    #[test]
    fn built_documents_load_the_same_after_reserialising(text in document()) {
        loads_the_same_after_reserialising(&text)?;
    }

    #[test]
    fn edited_shipped_configs_load_the_same_after_reserialising(text in edited_shipped()) {
        loads_the_same_after_reserialising(&text)?;
    }

    #[test]
    fn env_overrides_never_panic(
        text in edited_shipped(),
        overrides in proptest::collection::vec(
            (
                prop::sample::select(vec![
                    "WXGATE__NAMESPACE", "WXGATE__GATEWAY__LISTEN", "WXGATE__GATEWAY__THREADS",
                    "WXGATE__GATEWAY__METRICS_PER_ACCOUNT", "WXGATE__WORKER__RETRY_DELAYS_MS",
                    "WXGATE__WORKER__PREFETCH", "WXGATE__RABBITMQ__QUEUE_TYPE",
                    "WXGATE__WECHAT__TOKEN_MODE",
                ]),
                prop_oneof![any::<String>(), "[0-9,]{0,12}", "(true|false|-1|99999999999999999999)"],
            ),
            0..4,
        ),
    ) {
        let env: std::collections::HashMap<&str, String> = overrides.into_iter().collect();
        let _ = Config::from_toml(&text, |k| env.get(k).cloned());
    }
}

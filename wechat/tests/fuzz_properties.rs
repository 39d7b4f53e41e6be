//! The properties of the fuzz targets (`fuzz/src/lib.rs`: `message`, `envelope`,
//! `signature`, `rules`) as bounded proptests, so `cargo test` checks them on every run.
//! Inputs are built from protocol tokens and arbitrary text, so most reach past the first
//! syntax check.

// The helpers are test code too; a panic is how they fail a test.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use wechat::{
    AesKey, ArticleSpec, Decision, Limits, MatchSpec, MediaSpec, MusicSpec, OneOrMany, Reply,
    ReplySpec, RulePath, RuleSpec, TransferSpec, VideoSpec,
};

const ENCODING_AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const APPID: &str = "wx2c2769f8efd9abc2";
const TOKEN: &str = "spamtest";

const TIGHT: Limits = Limits {
    max_bytes: 300,
    max_depth: 3,
    max_elements: 12,
};

fn key() -> AesKey {
    AesKey::from_encoding_aes_key(ENCODING_AES_KEY).unwrap()
}

/// XML-ish documents: protocol tokens, element names and arbitrary text, concatenated.
fn xmlish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("<xml>".to_owned()),
        Just("</xml>".to_owned()),
        Just("<![CDATA[".to_owned()),
        Just("]]>".to_owned()),
        Just("</".to_owned()),
        Just(">".to_owned()),
        Just("&#".to_owned()),
        Just("&amp;".to_owned()),
        Just("<!DOCTYPE x>".to_owned()),
        Just("<?xml version=\"1.0\"?>".to_owned()),
        Just("<!-- c -->".to_owned()),
        Just("<item>".to_owned()),
        Just("</item>".to_owned()),
        "<(ToUserName|FromUserName|CreateTime|MsgType|Content|MsgId|Event|MediaId|Encrypt|ArticleCount|Articles|Title)>",
        "</(ToUserName|FromUserName|CreateTime|MsgType|Content|MsgId|Event|MediaId|Encrypt|ArticleCount|Articles|Title)>",
        "(text|image|news|music|event|[0-9]{1,20})",
        any::<String>(),
    ];
    proptest::collection::vec(token, 0..24).prop_map(|parts| parts.concat())
}

/// Arbitrary text without the characters XML 1.0 forbids (the renderers drop those).
fn text() -> impl Strategy<Value = String> {
    "[^\u{0}-\u{8}\u{b}\u{c}\u{e}-\u{1f}\u{fffe}\u{ffff}]{0,24}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_under_tight_limits_implies_parse_under_defaults(doc in xmlish()) {
        let loose = wechat::parse(doc.as_bytes(), &Limits::default());
        if let Ok(tight) = wechat::parse(doc.as_bytes(), &TIGHT) {
            prop_assert_eq!(loose.as_ref().ok(), Some(&tight));
        }
        prop_assert_eq!(wechat::parse_str(&doc, &Limits::default()), loose.clone());
        if let Ok(msg) = &loose {
            prop_assert_eq!(wechat::event_id("a", msg), wechat::event_id("a", msg));
        }
    }

    #[test]
    fn parsed_replies_render_to_a_fixpoint(doc in xmlish()) {
        if let Ok(parsed) = wechat::parse_reply(doc.as_bytes()) {
            let rendered =
                wechat::render(&parsed.reply, &parsed.to_user, &parsed.from_user, parsed.create_time);
            let again = wechat::parse_reply(rendered.as_bytes()).unwrap();
            let rendered_again =
                wechat::render(&again.reply, &again.to_user, &again.from_user, again.create_time);
            prop_assert_eq!(rendered, rendered_again);
        }
    }

    #[test]
    fn envelope_parsers_and_decrypt_never_panic(doc in xmlish()) {
        let key = key();
        if let Ok(envelope) = wechat::parse_envelope(doc.as_bytes(), &Limits::default())
            && let Some(encrypt) = envelope.encrypt
        {
            let _ = wechat::decrypt_utf8(&key, APPID, &encrypt);
        }
        if let Ok(sealed) = wechat::parse_sealed_reply(doc.as_bytes()) {
            let _ = wechat::decrypt_utf8(&key, APPID, &sealed.encrypt);
        }
        let _ = wechat::decrypt(&key, APPID, &doc);
        let _ = AesKey::from_encoding_aes_key(&doc);
    }

    #[test]
    fn decrypt_never_panics_on_base64ish_text(encrypt in "[A-Za-z0-9+/=]{0,200}") {
        let _ = wechat::decrypt(&key(), APPID, &encrypt);
    }

    #[test]
    fn encrypt_then_decrypt_round_trips(
        random in any::<[u8; 16]>(),
        msg in proptest::collection::vec(any::<u8>(), 0..600),
        appid in "[ -~]{0,40}",
    ) {
        let key = key();
        let sealed = wechat::encrypt(&key, &appid, random, &msg);
        prop_assert_eq!(wechat::decrypt(&key, &appid, &sealed), Ok(msg));
        let other = format!("{appid}x");
        prop_assert!(wechat::decrypt(&key, &other, &sealed).is_err());
    }

    #[test]
    fn sealed_replies_parse_verify_and_decrypt(
        random in any::<[u8; 16]>(),
        timestamp in any::<String>(),
        nonce in any::<String>(),
        reply in any::<String>(),
    ) {
        let key = key();
        let envelope = wechat::seal_reply(&key, APPID, TOKEN, random, &timestamp, &nonce, &reply);
        let parsed = wechat::parse_sealed_reply(envelope.as_bytes()).unwrap();
        prop_assert!(wechat::verify_msg_signature(
            TOKEN, &parsed.timestamp, &parsed.nonce, &parsed.encrypt, &parsed.msg_signature
        ).is_ok());
        prop_assert_eq!(wechat::decrypt_utf8(&key, APPID, &parsed.encrypt), Ok(reply));
    }

    #[test]
    fn signatures_verify_and_any_changed_byte_is_refused(
        token in any::<String>(),
        timestamp in any::<String>(),
        nonce in any::<String>(),
        encrypt in any::<String>(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..,
    ) {
        let url = wechat::url_signature(&token, &timestamp, &nonce);
        prop_assert!(wechat::verify_url_signature(&token, &timestamp, &nonce, &url).is_ok());
        let changed = change_one_byte(&url, at.index(url.len()), mask);
        prop_assert!(wechat::verify_url_signature(&token, &timestamp, &nonce, &changed).is_err());

        let msg = wechat::msg_signature(&token, &timestamp, &nonce, &encrypt);
        prop_assert!(wechat::verify_msg_signature(&token, &timestamp, &nonce, &encrypt, &msg).is_ok());
        let changed = change_one_byte(&msg, at.index(msg.len()), mask);
        prop_assert!(
            wechat::verify_msg_signature(&token, &timestamp, &nonce, &encrypt, &changed).is_err()
        );
    }

    #[test]
    fn rules_survive_toml_and_passive_decisions_render(
        specs in proptest::collection::vec(rule_spec(), 0..4),
        msg_type in "(text|image|voice|video|event|location)",
        event in "(subscribe|SCAN|CLICK)",
        value in text(),
    ) {
        let file: RuleFile =
            toml::from_str(&toml::to_string(&RuleFile { rule: specs.clone() }).unwrap()).unwrap();
        prop_assert_eq!(&file.rule, &specs);

        let xml = format!(
            "<xml><ToUserName>gh_1</ToUserName><FromUserName>o1</FromUserName>\
             <CreateTime>1</CreateTime><MsgType>{msg_type}</MsgType><Event>{event}</Event>\
             <EventKey><![CDATA[{v}]]></EventKey><Content><![CDATA[{v}]]></Content>\
             <MediaId><![CDATA[{v}]]></MediaId><MsgId>5</MsgId></xml>",
            v = value.replace("]]>", "")
        );
        let msg = wechat::parse_str(&xml, &Limits::default()).unwrap();
        for path in [RulePath::Passive, RulePath::Custom] {
            let Ok(rules) = wechat::compile(&specs, path) else { continue };
            let decision = rules.decide(&msg);
            prop_assert_eq!(&decision, &rules.decide(&msg));
            if let (RulePath::Passive, Decision::Reply(reply)) = (path, &decision) {
                if let Reply::News { articles } = reply {
                    prop_assert!((1..=wechat::reply::MAX_NEWS_ARTICLES).contains(&articles.len()));
                    if msg_type != "event" {
                        prop_assert_eq!(articles.len(), 1);
                    }
                }
                let rendered = wechat::render(reply, "o1", "gh_1", 1);
                prop_assert!(wechat::parse_reply(rendered.as_bytes()).is_ok());
            }
        }
    }
}

fn change_one_byte(signature: &str, at: usize, mask: u8) -> String {
    let mut bytes = signature.as_bytes().to_vec();
    bytes[at] ^= mask;
    String::from_utf8_lossy(&bytes).into_owned()
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct RuleFile {
    #[serde(default)]
    rule: Vec<RuleSpec>,
}

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        "(text|image|voice|video|shortvideo|event|subscribe|SCAN|qrscene_|hello|nope)",
        "(\\{content\\}|\\{scene\\|none\\}|\\{\\{|\\}\\}|\\{|\\{from\\}\\{msg_id\\}|\\{bogus\\})",
        "(\\^h.*o\\$|\\(a\\+\\)\\+|\\[|.*)",
        text(),
    ]
}

fn one_or_many() -> impl Strategy<Value = Option<OneOrMany>> {
    proptest::option::of(prop_oneof![
        word().prop_map(OneOrMany::One),
        proptest::collection::vec(word(), 0..3).prop_map(OneOrMany::Many),
    ])
}

fn article() -> impl Strategy<Value = ArticleSpec> {
    (word(), word(), word(), word()).prop_map(|(title, description, pic_url, url)| ArticleSpec {
        title,
        description,
        pic_url,
        url,
    })
}

fn reply_spec() -> impl Strategy<Value = ReplySpec> {
    let opt = || proptest::option::of(word());
    let one = prop_oneof![
        word().prop_map(|t| ReplySpec {
            text: Some(t),
            ..ReplySpec::default()
        }),
        any::<bool>().prop_map(|b| ReplySpec {
            echo: Some(b),
            ..ReplySpec::default()
        }),
        word().prop_map(|media_id| ReplySpec {
            image: Some(MediaSpec { media_id }),
            ..ReplySpec::default()
        }),
        (word(), opt(), opt()).prop_map(|(media_id, title, description)| ReplySpec {
            video: Some(VideoSpec {
                media_id,
                title,
                description
            }),
            ..ReplySpec::default()
        }),
        (opt(), opt(), word()).prop_map(|(title, music_url, thumb_media_id)| ReplySpec {
            music: Some(MusicSpec {
                title,
                description: None,
                music_url,
                hq_music_url: None,
                thumb_media_id
            }),
            ..ReplySpec::default()
        }),
        proptest::collection::vec(article(), 0..10).prop_map(|news| ReplySpec {
            news: Some(news),
            ..ReplySpec::default()
        }),
        opt().prop_map(|kf_account| ReplySpec {
            transfer_customer_service: Some(TransferSpec { kf_account }),
            ..ReplySpec::default()
        }),
        any::<bool>().prop_map(|b| ReplySpec {
            success: Some(b),
            ..ReplySpec::default()
        }),
    ];
    // Sometimes a second kind (a compile error), sometimes none.
    (one.clone(), proptest::option::of(one), any::<u8>()).prop_map(
        |(first, second, choice)| match (choice % 8, second) {
            (0, _) => ReplySpec::default(),
            (1, Some(second)) => ReplySpec {
                text: second.text.or(Some("x".into())),
                ..first
            },
            _ => first,
        },
    )
}

fn rule_spec() -> impl Strategy<Value = RuleSpec> {
    let opt = || proptest::option::of(word());
    (
        one_or_many(),
        one_or_many(),
        (opt(), opt(), opt(), opt(), opt(), opt()),
        reply_spec(),
    )
        .prop_map(
            |(
                msg_type,
                event,
                (
                    event_key,
                    event_key_prefix,
                    content,
                    content_prefix,
                    content_contains,
                    content_regex,
                ),
                reply,
            )| RuleSpec {
                match_spec: MatchSpec {
                    msg_type,
                    event,
                    event_key,
                    event_key_prefix,
                    content,
                    content_prefix,
                    content_contains,
                    content_regex,
                },
                reply,
            },
        )
}

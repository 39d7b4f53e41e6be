//! Fuzz targets for wxgate's input parsers, as plain functions of bytes.
//!
//! Each target must never panic on any input, and checks an oracle where there is one
//! (a failed check is a panic with a message saying which property broke). The same
//! functions are driven by libFuzzer (`fuzz_targets/`, `cargo fuzz`) and by the
//! coverage-less mutation harness `src/bin/mutate.rs`; the crates' own proptests
//! (`wechat/tests/fuzz_properties.rs`, `core/tests/config_properties.rs`,
//! `gateway/tests/query_properties.rs`) check the same properties in CI.
//!
//! Test-only code: it panics on purpose, so `unwrap`/`expect` are allowed here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use wechat::{
    AesKey, Decision, InboundMessage, Limits, MatchSpec, Reply, ReplySpec, RulePath, RuleSpec,
};

/// The names of the targets, in the order the harness runs them.
pub const TARGETS: [&str; 5] = ["message", "envelope", "signature", "rules", "config"];

/// Runs the target called `name` on `data`; `false` when there is no such target.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "message" => message(data),
        "envelope" => envelope(data),
        "signature" => signature(data),
        "rules" => rules(data),
        "config" => config(data),
        _ => return false,
    }
    true
}

/// Tight bounds, all at or below [`Limits::default`], to reach the limit checks.
const TIGHT: Limits = Limits {
    max_bytes: 300,
    max_depth: 3,
    max_elements: 12,
};

/// The XML parsers: pushes ([`wechat::parse`] under default and tight [`Limits`]),
/// [`wechat::event_id`], and reply XML ([`wechat::parse_reply`]).
///
/// Oracles: a document accepted under tight limits is accepted, identically, under the
/// defaults; [`wechat::parse_str`] agrees with [`wechat::parse`]; a parsed reply renders
/// to XML that parses again and renders to the same text (render ∘ parse is idempotent).
pub fn message(data: &[u8]) {
    let loose = wechat::parse(data, &Limits::default());
    let tight = wechat::parse(data, &TIGHT);
    if let Ok(tight_msg) = &tight {
        assert_eq!(
            loose.as_ref().ok(),
            Some(tight_msg),
            "accepted under tight limits but not under the defaults"
        );
    }
    if let Ok(text) = std::str::from_utf8(data) {
        assert_eq!(
            wechat::parse_str(text, &Limits::default()),
            loose,
            "parse_str and parse disagree"
        );
    }
    if let Ok(msg) = &loose {
        let first = wechat::event_id("acct", msg);
        assert_eq!(
            first,
            wechat::event_id("acct", msg),
            "event_id not deterministic"
        );
    }

    if let Ok(parsed) = wechat::parse_reply(data) {
        let rendered = wechat::render(
            &parsed.reply,
            &parsed.to_user,
            &parsed.from_user,
            parsed.create_time,
        );
        let again = wechat::parse_reply(rendered.as_bytes())
            .unwrap_or_else(|e| panic!("a rendered reply does not parse: {e}"));
        let rendered_again = wechat::render(
            &again.reply,
            &again.to_user,
            &again.from_user,
            again.create_time,
        );
        assert_eq!(rendered, rendered_again, "render(parse(render(r))) differs");
    }
}

/// The test key of the crypto vectors (`wechat/testdata/wechat-crypto.json`).
pub const ENCODING_AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
/// The AppID the encrypted seeds are sealed for.
pub const APPID: &str = "wx2c2769f8efd9abc2";
/// The token the encrypted seeds are signed with.
pub const TOKEN: &str = "spamtest";

fn test_key() -> AesKey {
    AesKey::from_encoding_aes_key(ENCODING_AES_KEY).expect("the test key is valid")
}

/// The encrypted envelope and the decryptor: [`wechat::parse_envelope`],
/// [`wechat::parse_sealed_reply`], [`wechat::decrypt`] of the input and of any `Encrypt`
/// found, and [`AesKey::from_encoding_aes_key`].
///
/// Oracles: `decrypt(encrypt(m)) == m` for a message and random bytes taken from the input;
/// a [`wechat::seal_reply`] envelope parses back with the same values, its signature
/// verifies and its plaintext decrypts back.
pub fn envelope(data: &[u8]) {
    let key = test_key();
    let _ = AesKey::from_encoding_aes_key(&String::from_utf8_lossy(data));
    if let Ok(envelope) = wechat::parse_envelope(data, &Limits::default())
        && let Some(encrypt) = &envelope.encrypt
    {
        let _ = wechat::decrypt_utf8(&key, APPID, encrypt);
    }
    if let Ok(sealed) = wechat::parse_sealed_reply(data) {
        let _ = wechat::verify_msg_signature(
            TOKEN,
            &sealed.timestamp,
            &sealed.nonce,
            &sealed.encrypt,
            &sealed.msg_signature,
        );
        let _ = wechat::decrypt_utf8(&key, APPID, &sealed.encrypt);
    }
    let text = String::from_utf8_lossy(data);
    let _ = wechat::decrypt(&key, APPID, &text);
    let _ = wechat::decrypt(&key, "", &text);

    // Round trips: the first 16 bytes (zero-padded) are the random prefix, the rest the
    // message.
    let mut random = [0u8; 16];
    let split = data.len().min(16);
    random[..split].copy_from_slice(&data[..split]);
    let msg = &data[split..];
    let sealed = wechat::encrypt(&key, APPID, random, msg);
    assert_eq!(
        wechat::decrypt(&key, APPID, &sealed).as_deref(),
        Ok(msg),
        "decrypt(encrypt(m)) != m"
    );
    assert!(
        wechat::decrypt(&key, "wx0000000000000000", &sealed).is_err(),
        "decrypt accepted another app id"
    );

    let (timestamp, rest) = split_field(&text);
    let (nonce, reply) = split_field(rest);
    let envelope = wechat::seal_reply(&key, APPID, TOKEN, random, timestamp, nonce, reply);
    let parsed = wechat::parse_sealed_reply(envelope.as_bytes())
        .unwrap_or_else(|e| panic!("a sealed reply does not parse: {e}"));
    wechat::verify_msg_signature(
        TOKEN,
        &parsed.timestamp,
        &parsed.nonce,
        &parsed.encrypt,
        &parsed.msg_signature,
    )
    .expect("a sealed reply's signature does not verify");
    assert_eq!(
        wechat::decrypt_utf8(&key, APPID, &parsed.encrypt).as_deref(),
        Ok(reply),
        "a sealed reply does not decrypt back"
    );
}

/// Splits `text` at its first NUL: the field and the rest (empty when there is none).
fn split_field(text: &str) -> (&str, &str) {
    text.split_once('\0').unwrap_or((text, ""))
}

/// Signatures and the gateway's query parsing ([`wx_gateway::pipeline::CallbackQuery`]).
///
/// The input is NUL-separated: token, timestamp, nonce, encrypt, then two bytes choosing a
/// position and an XOR mask. Oracles: `verify_*` accept what `*_signature` produced and
/// refuse it with any one byte changed; a query built by form-encoding the values parses
/// back to exactly those values; parsing the raw input as a query never panics.
pub fn signature(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = wx_gateway::pipeline::CallbackQuery::parse(&text);

    let (token, rest) = split_field(&text);
    let (timestamp, rest) = split_field(rest);
    let (nonce, rest) = split_field(rest);
    let (encrypt, _) = split_field(rest);
    let (at, mask) = match data {
        [.., at, mask] => (usize::from(*at), if *mask == 0 { 1 } else { *mask }),
        _ => (0, 1),
    };

    let url = wechat::url_signature(token, timestamp, nonce);
    assert!(wechat::verify_url_signature(token, timestamp, nonce, &url).is_ok());
    let changed = change_one_byte(&url, at, mask);
    assert!(
        wechat::verify_url_signature(token, timestamp, nonce, &changed).is_err(),
        "a changed url signature verified"
    );
    let msg = wechat::msg_signature(token, timestamp, nonce, encrypt);
    assert!(wechat::verify_msg_signature(token, timestamp, nonce, encrypt, &msg).is_ok());
    let changed = change_one_byte(&msg, at, mask);
    assert!(
        wechat::verify_msg_signature(token, timestamp, nonce, encrypt, &changed).is_err(),
        "a changed msg_signature verified"
    );
    assert!(
        wechat::verify_msg_signature(token, timestamp, nonce, encrypt, &msg.to_uppercase())
            .is_err()
            || !msg.bytes().any(|b| b.is_ascii_alphabetic()),
        "an upper-case msg_signature verified"
    );

    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("openid", token)
        .append_pair("signature", &url)
        .append_pair("timestamp", timestamp)
        .append_pair("nonce", nonce)
        .append_pair("echostr", encrypt)
        .append_pair("encrypt_type", "aes")
        .append_pair("msg_signature", &msg)
        .finish();
    let parsed = wx_gateway::pipeline::CallbackQuery::parse(&query)
        .unwrap_or_else(|e| panic!("an encoded query does not parse: {e}"));
    assert_eq!(parsed.signature.as_deref(), Some(url.as_str()));
    assert_eq!(parsed.timestamp.as_deref(), Some(timestamp));
    assert_eq!(parsed.nonce.as_deref(), Some(nonce));
    assert_eq!(parsed.echostr.as_deref(), Some(encrypt));
    assert_eq!(parsed.encrypt_type.as_deref(), Some("aes"));
    assert_eq!(parsed.msg_signature.as_deref(), Some(msg.as_str()));
}

/// `signature` with the byte at `at % len` XOR-ed by `mask` (non-zero), as a string
/// (lossy: a hex signature is ASCII, so a changed byte may become U+FFFD, still a change).
fn change_one_byte(signature: &str, at: usize, mask: u8) -> String {
    let mut bytes = signature.as_bytes().to_vec();
    let i = at % bytes.len().max(1);
    if let Some(byte) = bytes.get_mut(i) {
        *byte ^= mask;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A rule file as the `rules` target writes it to TOML (`[[rule]]` tables).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct RuleFile {
    #[serde(default)]
    rule: Vec<RuleSpec>,
}

/// Rule compilation and evaluation: [`wechat::compile`] and [`wechat::Rules::decide`].
///
/// Inputs starting with `[` are a TOML rule file (`[[rule]]` tables) followed, after a
/// NUL, by a push; other inputs build the rules and the message from their bytes, so most
/// mutations still compile. Oracles: a spec list survives a TOML round trip and compiles
/// the same way; a passive decision renders to reply XML that [`wechat::parse_reply`]
/// accepts, with at most one article when answering a user message.
pub fn rules(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (specs, xml) = if text.starts_with('[') {
        let (file, xml) = split_field(&text);
        let Ok(file) = toml::from_str::<RuleFile>(file) else {
            return;
        };
        (file.rule, Cow::Borrowed(xml))
    } else {
        let mut bytes = Bytes(data);
        let specs = (0..bytes.next() % 4)
            .map(|_| rule_spec(&mut bytes))
            .collect();
        (specs, Cow::Owned(push_xml(&mut bytes)))
    };

    let round_trip: RuleFile = toml::to_string(&RuleFile {
        rule: specs.clone(),
    })
    .ok()
    .and_then(|s| toml::from_str(&s).ok())
    .expect("a rule list does not survive a toml round trip");
    assert_eq!(round_trip.rule, specs, "toml round trip changed the rules");

    let msg = wechat::parse_str(&xml, &Limits::default()).ok();
    for path in [RulePath::Passive, RulePath::Custom] {
        let compiled = wechat::compile(&specs, path);
        let Ok(rules) = compiled else { continue };
        assert_eq!(rules.len(), specs.len());
        let Some(msg) = &msg else { continue };
        let decision = rules.decide(msg);
        assert_eq!(decision, rules.decide(msg), "decide is not deterministic");
        if let (RulePath::Passive, Decision::Reply(reply)) = (path, &decision) {
            check_passive_reply(reply, msg);
        }
    }
}

fn check_passive_reply(reply: &Reply, msg: &InboundMessage) {
    if let Reply::News { articles } = reply {
        assert!(!articles.is_empty() && articles.len() <= wechat::reply::MAX_NEWS_ARTICLES);
        if msg.msg_type != "event" {
            assert_eq!(
                articles.len(),
                1,
                "a user message got more than one article"
            );
        }
    }
    let xml = wechat::render(reply, &msg.from_user_name, &msg.to_user_name, 1);
    if let Err(e) = wechat::parse_reply(xml.as_bytes()) {
        panic!("a passive decision renders to a reply that does not parse: {e}");
    }
}

/// A byte reader that never runs out (zeros after the end).
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn next(&mut self) -> u8 {
        match self.0.split_first() {
            Some((first, rest)) => {
                self.0 = rest;
                *first
            }
            None => 0,
        }
    }

    /// A string: a dictionary word, or up to 15 raw bytes (lossy UTF-8).
    fn string(&mut self) -> String {
        const WORDS: [&str; 24] = [
            "",
            "text",
            "image",
            "voice",
            "video",
            "shortvideo",
            "location",
            "link",
            "file",
            "event",
            "subscribe",
            "SCAN",
            "qrscene_",
            "qrscene_42",
            "hello",
            "{content}",
            "{scene|none}",
            "{{",
            "}}",
            "{",
            "^h.*o$",
            "(a+)+",
            "{from}{to}{msg_id}",
            "]]>",
        ];
        let choice = self.next();
        if choice < 200 {
            WORDS[usize::from(choice) % WORDS.len()].to_owned()
        } else {
            let len = usize::from(choice - 200) % 16;
            let raw: Vec<u8> = (0..len).map(|_| self.next()).collect();
            String::from_utf8_lossy(&raw).into_owned()
        }
    }

    fn maybe_string(&mut self) -> Option<String> {
        (self.next() % 2 == 1).then(|| self.string())
    }

    fn maybe_list(&mut self) -> Option<wechat::OneOrMany> {
        match self.next() % 3 {
            0 => None,
            1 => Some(wechat::OneOrMany::One(self.string())),
            _ => {
                let len = self.next() % 3;
                Some(wechat::OneOrMany::Many(
                    (0..len).map(|_| self.string()).collect(),
                ))
            }
        }
    }
}

fn rule_spec(bytes: &mut Bytes<'_>) -> RuleSpec {
    let match_spec = MatchSpec {
        msg_type: bytes.maybe_list(),
        event: bytes.maybe_list(),
        event_key: bytes.maybe_string(),
        event_key_prefix: bytes.maybe_string(),
        content: bytes.maybe_string(),
        content_prefix: bytes.maybe_string(),
        content_contains: bytes.maybe_string(),
        content_regex: bytes.maybe_string(),
    };
    let mut reply = ReplySpec::default();
    // Usually one reply kind, sometimes two (a compile error), sometimes none.
    for _ in 0..(bytes.next() % 4).clamp(1, 2) {
        match bytes.next() % 9 {
            0 => reply.text = Some(bytes.string()),
            1 => reply.echo = Some(bytes.next().is_multiple_of(2)),
            2 => {
                reply.image = Some(wechat::MediaSpec {
                    media_id: bytes.string(),
                })
            }
            3 => {
                reply.voice = Some(wechat::MediaSpec {
                    media_id: bytes.string(),
                })
            }
            4 => {
                reply.video = Some(wechat::VideoSpec {
                    media_id: bytes.string(),
                    title: bytes.maybe_string(),
                    description: bytes.maybe_string(),
                })
            }
            5 => {
                reply.music = Some(wechat::MusicSpec {
                    title: bytes.maybe_string(),
                    description: bytes.maybe_string(),
                    music_url: bytes.maybe_string(),
                    hq_music_url: bytes.maybe_string(),
                    thumb_media_id: bytes.string(),
                })
            }
            6 => {
                let count = bytes.next() % 10;
                reply.news = Some(
                    (0..count)
                        .map(|_| wechat::ArticleSpec {
                            title: bytes.string(),
                            description: bytes.string(),
                            pic_url: bytes.string(),
                            url: bytes.string(),
                        })
                        .collect(),
                )
            }
            7 => {
                reply.transfer_customer_service = Some(wechat::TransferSpec {
                    kf_account: bytes.maybe_string(),
                })
            }
            _ => reply.success = Some(bytes.next().is_multiple_of(2)),
        }
    }
    RuleSpec { match_spec, reply }
}

/// A push built from the input: `MsgType`, `Event`, `EventKey`, `Content`, `MediaId`, in
/// CDATA (a `]]>` in a value may make it malformed, which is fine: then no decision runs).
fn push_xml(bytes: &mut Bytes<'_>) -> String {
    let mut xml = String::from(
        "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[o1]]>\
         </FromUserName><CreateTime>1</CreateTime><MsgId>7</MsgId>",
    );
    for name in [
        "MsgType", "Event", "EventKey", "Content", "MediaId", "Ticket",
    ] {
        if let Some(value) = bytes.maybe_string() {
            xml.push_str(&format!("<{name}><![CDATA[{value}]]></{name}>"));
        }
    }
    xml.push_str("</xml>");
    xml
}

/// Config loading: [`wxgate_core::config::Config::from_toml`] with no environment.
///
/// Oracle: text that is a TOML table loads the same way (same error text, or a config
/// with the same fields) after the table is re-serialised by `toml`.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = wxgate_core::config::Config::from_toml(text, |_| None);
    let Ok(table) = text.parse::<toml::Table>() else {
        return;
    };
    let Ok(again_text) = toml::to_string(&table) else {
        return;
    };
    let again = wxgate_core::config::Config::from_toml(&again_text, |_| None);
    match (&first, &again) {
        (Ok(a), Ok(b)) => assert_eq!(summary(a), summary(b), "re-serialised config differs"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "errors differ"),
        _ => panic!(
            "re-serialised config loads differently: {:?} vs {:?}",
            first.as_ref().err().map(ToString::to_string),
            again.as_ref().err().map(ToString::to_string)
        ),
    }
}

/// Every field of a config except the private id index (a `HashMap`, whose `Debug` order
/// varies between instances).
pub fn summary(config: &wxgate_core::config::Config) -> String {
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

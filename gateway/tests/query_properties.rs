//! The query half of the `signature` fuzz target (`fuzz/src/lib.rs`) as bounded proptests:
//! `CallbackQuery::parse` never panics, and a query built by form-encoding the signed
//! parameters parses back to exactly those values, which then verify.

// The helpers are test code too; a panic is how they fail a test.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use wx_gateway::pipeline::CallbackQuery;

/// Query-ish text: separators, escapes and parameter names among arbitrary text.
fn queryish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("&".to_owned()),
        Just("=".to_owned()),
        Just("+".to_owned()),
        "%[0-9A-Fa-fG-Zg-z]{0,2}",
        "(signature|timestamp|nonce|echostr|encrypt_type|msg_signature|openid)",
        any::<String>(),
    ];
    proptest::collection::vec(token, 0..24).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_never_panics(query in queryish()) {
        if let Ok(parsed) = CallbackQuery::parse(&query) {
            // Whatever parsed is usable as is by the verifier.
            let _ = wechat::verify_url_signature(
                "t",
                parsed.timestamp.as_deref().unwrap_or(""),
                parsed.nonce.as_deref().unwrap_or(""),
                parsed.signature.as_deref().unwrap_or(""),
            );
        }
    }

    #[test]
    fn encoded_parameters_parse_back_and_verify(
        token in any::<String>(),
        timestamp in any::<String>(),
        nonce in any::<String>(),
        echostr in any::<String>(),
        encrypt in any::<String>(),
    ) {
        let signature = wechat::url_signature(&token, &timestamp, &nonce);
        let msg_signature = wechat::msg_signature(&token, &timestamp, &nonce, &encrypt);
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("openid", &token)
            .append_pair("signature", &signature)
            .append_pair("timestamp", &timestamp)
            .append_pair("nonce", &nonce)
            .append_pair("echostr", &echostr)
            .append_pair("encrypt_type", "aes")
            .append_pair("msg_signature", &msg_signature)
            .finish();
        let parsed = CallbackQuery::parse(&query).unwrap();
        prop_assert_eq!(parsed.timestamp.as_deref(), Some(timestamp.as_str()));
        prop_assert_eq!(parsed.nonce.as_deref(), Some(nonce.as_str()));
        prop_assert_eq!(parsed.echostr.as_deref(), Some(echostr.as_str()));
        prop_assert_eq!(parsed.encrypt_type.as_deref(), Some("aes"));
        prop_assert!(wechat::verify_url_signature(
            &token,
            parsed.timestamp.as_deref().unwrap_or(""),
            parsed.nonce.as_deref().unwrap_or(""),
            parsed.signature.as_deref().unwrap_or(""),
        ).is_ok());
        prop_assert!(wechat::verify_msg_signature(
            &token,
            parsed.timestamp.as_deref().unwrap_or(""),
            parsed.nonce.as_deref().unwrap_or(""),
            &encrypt,
            parsed.msg_signature.as_deref().unwrap_or(""),
        ).is_ok());
    }
}

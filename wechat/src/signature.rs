//! SHA-1 signatures: push `signature` (docs/protocol.md §1.2), `msg_signature`
//! (§2.5) and the JS-SDK signature (§11.2).
//!
//! These run on every request: inputs are hashed in place, the only
//! allocation is the returned hex string (none when verifying).

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// A signature did not match.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The given signature differs from the expected one (compared exactly,
    /// lower-case hex, in constant time).
    #[error("signature mismatch")]
    Mismatch,
}

/// The push `signature`: 40 lower-case hex characters of the SHA-1 of
/// `token`, `timestamp` and `nonce` sorted by bytes and concatenated.
///
/// Inputs are used exactly as received (no trimming, no decoding).
pub fn url_signature(token: &str, timestamp: &str, nonce: &str) -> String {
    hex::encode(sorted_sha1([token, timestamp, nonce]))
}

/// The `msg_signature` of an encrypted push or reply envelope: like
/// [`url_signature`] with `encrypt` (the base64 text exactly as carried in
/// the XML) as a fourth element.
pub fn msg_signature(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> String {
    hex::encode(sorted_sha1([token, timestamp, nonce, encrypt]))
}

/// Checks a push `signature` in constant time.
///
/// The comparison is exact: an upper-case hex signature is a mismatch.
/// Does not check that `timestamp` is recent; the caller owns the clock.
pub fn verify_url_signature(
    token: &str,
    timestamp: &str,
    nonce: &str,
    signature: &str,
) -> Result<(), SignatureError> {
    compare(&sorted_sha1([token, timestamp, nonce]), signature)
}

/// Checks the `msg_signature` of an encrypted push (query `msg_signature`
/// against the body's `Encrypt`) in constant time; exact lower-case hex.
///
/// Does not check that `timestamp` is recent; the caller owns the clock.
pub fn verify_msg_signature(
    token: &str,
    timestamp: &str,
    nonce: &str,
    encrypt: &str,
    msg_signature: &str,
) -> Result<(), SignatureError> {
    compare(
        &sorted_sha1([token, timestamp, nonce, encrypt]),
        msg_signature,
    )
}

/// The JS-SDK `signature` for `wx.config` (docs/protocol.md §11.2): SHA-1 of
/// `jsapi_ticket=…&noncestr=…&timestamp=…&url=…`, values raw (no URL
/// encoding), with `url` cut at its first `#`.
pub fn jsapi_signature(jsapi_ticket: &str, noncestr: &str, timestamp: &str, url: &str) -> String {
    let url = url.split_once('#').map_or(url, |(before, _)| before);
    let mut hasher = Sha1::new();
    for part in [
        "jsapi_ticket=",
        jsapi_ticket,
        "&noncestr=",
        noncestr,
        "&timestamp=",
        timestamp,
        "&url=",
        url,
    ] {
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// SHA-1 of the parts sorted by byte value and concatenated.
fn sorted_sha1<const N: usize>(mut parts: [&str; N]) -> [u8; 20] {
    // `str` ordering is byte-wise (UTF-8 code unit order), as WeChat sorts.
    parts.sort_unstable();
    let mut hasher = Sha1::new();
    for part in parts {
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

fn compare(expected: &[u8; 20], given: &str) -> Result<(), SignatureError> {
    let mut hex = [0u8; 40];
    // Cannot fail: 20 bytes are 40 hex digits. Were it to, nothing would match.
    let encoded = hex::encode_to_slice(expected, &mut hex).is_ok();
    if encoded && bool::from(hex.as_slice().ct_eq(given.as_bytes())) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn vectors() -> Value {
        serde_json::from_str(include_str!("../testdata/wechat-crypto.json")).unwrap()
    }

    fn s<'v>(case: &'v Value, key: &str) -> &'v str {
        case[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} missing"))
    }

    fn check_url(token: &str, timestamp: &str, nonce: &str, expected: &str) {
        assert_eq!(url_signature(token, timestamp, nonce), expected);
        assert_eq!(
            verify_url_signature(token, timestamp, nonce, expected),
            Ok(())
        );
    }

    fn check_msg(token: &str, timestamp: &str, nonce: &str, encrypt: &str, expected: &str) {
        assert_eq!(msg_signature(token, timestamp, nonce, encrypt), expected);
        assert_eq!(
            verify_msg_signature(token, timestamp, nonce, encrypt, expected),
            Ok(())
        );
    }

    #[test]
    fn url_signature_vectors() {
        let v = vectors();
        let cases = v["url_signature"].as_array().unwrap();
        assert_eq!(cases.len(), 14);
        for case in cases {
            check_url(
                s(case, "token"),
                s(case, "timestamp"),
                s(case, "nonce"),
                s(case, "signature"),
            );
        }
    }

    #[test]
    fn msg_signature_vectors() {
        let v = vectors();
        let cases = v["msg_signature"].as_array().unwrap();
        assert_eq!(cases.len(), 11);
        for case in cases {
            check_msg(
                s(case, "token"),
                s(case, "timestamp"),
                s(case, "nonce"),
                s(case, "encrypt"),
                s(case, "msg_signature"),
            );
        }
    }

    #[test]
    fn jsapi_signature_vectors() {
        let v = vectors();
        let cases = v["jsapi_signature"].as_array().unwrap();
        assert_eq!(cases.len(), 9);
        for case in cases {
            assert_eq!(
                jsapi_signature(
                    s(case, "jsapi_ticket"),
                    s(case, "noncestr"),
                    s(case, "timestamp"),
                    s(case, "url"),
                ),
                s(case, "signature"),
                "{}",
                s(case, "name")
            );
        }
    }

    #[test]
    fn protocol_worked_examples() {
        check_url(
            "AAAAA",
            "1714036504",
            "1514711492",
            "f464b24fc39322e44b38aa78f5edd27bd1441696",
        );
        check_url(
            "AAAAA",
            "1714037059",
            "486452656",
            "899cf89e464efb63f54ddac96b0a0a235f53aa78",
        );
        check_url(
            "spamtest",
            "1409735669",
            "1320562132",
            "16120ec1b8dbb870f510d87ce6bc2463eae6ca1a",
        );
    }

    #[test]
    fn verify_is_exact() {
        let good = url_signature("AAAAA", "1714036504", "1514711492");
        let upper = good.to_ascii_uppercase();
        let short = &good[..39];
        for bad in [upper.as_str(), short, "", "x"] {
            assert_eq!(
                verify_url_signature("AAAAA", "1714036504", "1514711492", bad),
                Err(SignatureError::Mismatch)
            );
        }
        assert_eq!(
            verify_url_signature("AAAAB", "1714036504", "1514711492", &good),
            Err(SignatureError::Mismatch)
        );
    }
}

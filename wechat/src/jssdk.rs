//! JS-SDK page signatures (docs/protocol.md §11.2): what a page passes to `wx.config`.
//!
//! The caller supplies the ticket, the nonce and the time; nothing here reads a clock or an
//! RNG.

use crate::signature::jsapi_signature;

/// The values a page passes to `wx.config` besides `appId` and `jsApiList`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsSdkSignature {
    /// The URL that was signed: the page URL with any `#fragment` cut off.
    pub url: String,
    /// `timestamp`, Unix seconds, as given.
    pub timestamp: i64,
    /// `nonceStr`, as given.
    pub nonce_str: String,
    /// `signature`: lower-case hex SHA-1 of
    /// `jsapi_ticket=…&noncestr=…&timestamp=…&url=…` (raw values, no URL encoding).
    pub signature: String,
}

/// The page URL as it is signed: everything before the first `#`, as the WeChat client signs
/// `location.href.split('#')[0]`.
pub fn signed_url(url: &str) -> &str {
    url.split_once('#').map_or(url, |(before, _)| before)
}

/// Signs `url` for `wx.config` with `jsapi_ticket`, `nonce_str` and `timestamp` (Unix
/// seconds). A `#fragment` of `url` is cut off first. Does not check that the URL is
/// well-formed or that the ticket is current.
pub fn sign(jsapi_ticket: &str, nonce_str: &str, timestamp: i64, url: &str) -> JsSdkSignature {
    let url = signed_url(url);
    JsSdkSignature {
        url: url.to_owned(),
        timestamp,
        nonce_str: nonce_str.to_owned(),
        signature: jsapi_signature(jsapi_ticket, nonce_str, &timestamp.to_string(), url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICKET: &str =
        "sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg";

    fn check(url: &str, expected_url: &str, expected_signature: &str) {
        let signed = sign(TICKET, "Wm3WZYTPz0wzccnW", 1_414_587_457, url);
        assert_eq!(signed.url, expected_url);
        assert_eq!(signed.signature, expected_signature);
        assert_eq!(signed.timestamp, 1_414_587_457);
        assert_eq!(signed.nonce_str, "Wm3WZYTPz0wzccnW");
    }

    #[test]
    fn official_example() {
        // docs/protocol.md §11.2, recomputed there with Python hashlib.
        check(
            "http://mp.weixin.qq.com?params=value",
            "http://mp.weixin.qq.com?params=value",
            "0f9de62fce790f9a083d5c99e95740ceb90c27ed",
        );
    }

    #[test]
    fn the_fragment_is_not_signed() {
        check(
            "http://mp.weixin.qq.com?params=value#/route?x=1",
            "http://mp.weixin.qq.com?params=value",
            "0f9de62fce790f9a083d5c99e95740ceb90c27ed",
        );
    }
}

//! Web authorization (docs/protocol.md §12.1): the authorize URL a user's browser is sent to
//! inside WeChat.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Characters left as they are in a query value: RFC 3986's unreserved set, as JavaScript's
/// `encodeURIComponent` (which WeChat's own examples use) leaves them, minus `!'()*`.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The scope asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `snsapi_base`: silent, the OpenID only.
    Base,
    /// `snsapi_userinfo`: a consent page, then the profile through `/sns/userinfo`.
    UserInfo,
}

impl Scope {
    /// `snsapi_base` or `snsapi_userinfo`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Base => "snsapi_base",
            Self::UserInfo => "snsapi_userinfo",
        }
    }

    /// The scope WeChat names `name`, if it is one of the two.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "snsapi_base" => Some(Self::Base),
            "snsapi_userinfo" => Some(Self::UserInfo),
            _ => None,
        }
    }
}

/// `{open_base}/connect/oauth2/authorize?appid=…&redirect_uri=…&response_type=code&scope=…
/// &state=…#wechat_redirect`, with `redirect_uri` and `state` percent-encoded.
///
/// `open_base` is `https://open.weixin.qq.com` in production (a trailing `/` is ignored).
/// Checks nothing: the caller validates `redirect_uri` and `state` (`[A-Za-z0-9]{1,128}`).
pub fn authorize_url(
    open_base: &str,
    appid: &str,
    redirect_uri: &str,
    scope: Scope,
    state: &str,
) -> String {
    format!(
        "{}/connect/oauth2/authorize?appid={}&redirect_uri={}&response_type=code&scope={}&state={}#wechat_redirect",
        open_base.trim_end_matches('/'),
        utf8_percent_encode(appid, QUERY_VALUE),
        utf8_percent_encode(redirect_uri, QUERY_VALUE),
        scope.as_str(),
        utf8_percent_encode(state, QUERY_VALUE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorize_url_as_the_protocol_shows_it() {
        assert_eq!(
            authorize_url(
                "https://open.weixin.qq.com/",
                "wx520c15f417810387",
                "https://chong.qq.com/php/index.php?d=&c=wxAdapter&m=mobileDeal&showwxpaytitle=1&vb2ctag=4_2030_5_1194_60",
                Scope::Base,
                "123",
            ),
            "https://open.weixin.qq.com/connect/oauth2/authorize?appid=wx520c15f417810387\
             &redirect_uri=https%3A%2F%2Fchong.qq.com%2Fphp%2Findex.php%3Fd%3D%26c%3DwxAdapter%26m%3DmobileDeal%26showwxpaytitle%3D1%26vb2ctag%3D4_2030_5_1194_60\
             &response_type=code&scope=snsapi_base&state=123#wechat_redirect"
        );
    }

    #[test]
    fn scopes_round_trip() {
        for scope in [Scope::Base, Scope::UserInfo] {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
        }
        assert_eq!(Scope::parse("snsapi_login"), None);
    }
}

//! The endpoints of the fake WeChat API and the steps every call goes
//! through: method, credential, quota, body checks, then the handler.

use bytes::Bytes;
use http::Method;
use serde_json::{Map, Value};

use crate::errcode::ApiError;
use crate::state::State;
use crate::{media, menu, message, qrcode, token, user};

/// An endpoint of the simulated API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Token,
    StableToken,
    CustomSend,
    CustomTyping,
    TemplateSend,
    MassSendAll,
    MassSend,
    MassPreview,
    QrCreate,
    ShowQr,
    MenuCreate,
    MenuGet,
    SelfMenuInfo,
    MenuDelete,
    MenuAddConditional,
    MenuDelConditional,
    MenuTryMatch,
    GetTicket,
    UserInfo,
    OAuthAccessToken,
    SnsUserInfo,
    MediaUpload,
    MediaUploadImg,
}

/// How an endpoint is authorised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    /// The handler checks credentials itself (token endpoints, OAuth, QR image).
    Own,
    /// `access_token` query parameter holding an account access token.
    AccessToken,
}

const ALL: [Endpoint; 23] = [
    Endpoint::Token,
    Endpoint::StableToken,
    Endpoint::CustomSend,
    Endpoint::CustomTyping,
    Endpoint::TemplateSend,
    Endpoint::MassSendAll,
    Endpoint::MassSend,
    Endpoint::MassPreview,
    Endpoint::QrCreate,
    Endpoint::ShowQr,
    Endpoint::MenuCreate,
    Endpoint::MenuGet,
    Endpoint::SelfMenuInfo,
    Endpoint::MenuDelete,
    Endpoint::MenuAddConditional,
    Endpoint::MenuDelConditional,
    Endpoint::MenuTryMatch,
    Endpoint::GetTicket,
    Endpoint::UserInfo,
    Endpoint::OAuthAccessToken,
    Endpoint::SnsUserInfo,
    Endpoint::MediaUpload,
    Endpoint::MediaUploadImg,
];

impl Endpoint {
    pub(crate) fn from_path(path: &str) -> Option<Endpoint> {
        ALL.into_iter().find(|endpoint| endpoint.path() == path)
    }

    pub(crate) fn path(self) -> &'static str {
        match self {
            Endpoint::Token => "/cgi-bin/token",
            Endpoint::StableToken => "/cgi-bin/stable_token",
            Endpoint::CustomSend => "/cgi-bin/message/custom/send",
            Endpoint::CustomTyping => "/cgi-bin/message/custom/typing",
            Endpoint::TemplateSend => "/cgi-bin/message/template/send",
            Endpoint::MassSendAll => "/cgi-bin/message/mass/sendall",
            Endpoint::MassSend => "/cgi-bin/message/mass/send",
            Endpoint::MassPreview => "/cgi-bin/message/mass/preview",
            Endpoint::QrCreate => "/cgi-bin/qrcode/create",
            Endpoint::ShowQr => "/cgi-bin/showqrcode",
            Endpoint::MenuCreate => "/cgi-bin/menu/create",
            Endpoint::MenuGet => "/cgi-bin/menu/get",
            Endpoint::SelfMenuInfo => "/cgi-bin/get_current_selfmenu_info",
            Endpoint::MenuDelete => "/cgi-bin/menu/delete",
            Endpoint::MenuAddConditional => "/cgi-bin/menu/addconditional",
            Endpoint::MenuDelConditional => "/cgi-bin/menu/delconditional",
            Endpoint::MenuTryMatch => "/cgi-bin/menu/trymatch",
            Endpoint::GetTicket => "/cgi-bin/ticket/getticket",
            Endpoint::UserInfo => "/cgi-bin/user/info",
            Endpoint::OAuthAccessToken => "/sns/oauth2/access_token",
            Endpoint::SnsUserInfo => "/sns/userinfo",
            Endpoint::MediaUpload => "/cgi-bin/media/upload",
            Endpoint::MediaUploadImg => "/cgi-bin/media/uploadimg",
        }
    }

    fn is_post(self) -> bool {
        matches!(
            self,
            Endpoint::StableToken
                | Endpoint::CustomSend
                | Endpoint::CustomTyping
                | Endpoint::TemplateSend
                | Endpoint::MassSendAll
                | Endpoint::MassSend
                | Endpoint::MassPreview
                | Endpoint::QrCreate
                | Endpoint::MenuCreate
                | Endpoint::MenuAddConditional
                | Endpoint::MenuDelConditional
                | Endpoint::MenuTryMatch
                | Endpoint::MediaUpload
                | Endpoint::MediaUploadImg
        )
    }

    /// Whether the body is `multipart/form-data` rather than JSON.
    pub(crate) fn is_multipart(self) -> bool {
        matches!(self, Endpoint::MediaUpload | Endpoint::MediaUploadImg)
    }

    fn auth(self) -> Auth {
        match self {
            Endpoint::Token
            | Endpoint::StableToken
            | Endpoint::ShowQr
            | Endpoint::OAuthAccessToken
            | Endpoint::SnsUserInfo => Auth::Own,
            _ => Auth::AccessToken,
        }
    }

    /// Endpoints that refuse `\uXXXX` escapes with `40033` (protocol: menus,
    /// custom messages, templates; mass sends alike).
    fn refuses_unicode_escapes(self) -> bool {
        matches!(
            self,
            Endpoint::CustomSend
                | Endpoint::CustomTyping
                | Endpoint::TemplateSend
                | Endpoint::MassSendAll
                | Endpoint::MassSend
                | Endpoint::MassPreview
                | Endpoint::MenuCreate
                | Endpoint::MenuAddConditional
        )
    }

    /// Whether the AppID of a call is in its query or body (token and
    /// OAuth endpoints) rather than implied by its access token.
    pub(crate) fn names_appid(self) -> bool {
        matches!(
            self,
            Endpoint::Token | Endpoint::StableToken | Endpoint::OAuthAccessToken
        )
    }
}

/// A request body, parsed before the state lock is taken.
#[derive(Debug)]
pub(crate) struct Body {
    pub(crate) raw: Bytes,
    /// `None` when the body is empty; `Some(Err(()))` when it is not JSON.
    pub(crate) json: Option<Result<Value, ()>>,
    pub(crate) has_unicode_escape: bool,
}

impl Body {
    pub(crate) fn parse(raw: Bytes) -> Body {
        let blank = raw.iter().all(u8::is_ascii_whitespace);
        let json = (!blank).then(|| serde_json::from_slice::<Value>(&raw).map_err(|_| ()));
        let has_unicode_escape = has_unicode_escape(&raw);
        Body {
            raw,
            json,
            has_unicode_escape,
        }
    }
}

/// One call as the handlers see it.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub(crate) method: &'a Method,
    pub(crate) query: &'a [(String, String)],
    pub(crate) body: &'a Body,
    /// The request's `Content-Type` header, if it is valid text.
    pub(crate) content_type: Option<&'a str>,
    pub(crate) now_ms: i64,
}

impl Ctx<'_> {
    pub(crate) fn query(&self, name: &str) -> Option<&str> {
        crate::query::find(self.query, name)
    }

    /// The JSON object body: `44002` when empty, `47001` when not a JSON object.
    pub(crate) fn object(&self) -> Result<&Map<String, Value>, ApiError> {
        match &self.body.json {
            None => Err(ApiError::new(44002)),
            Some(Err(())) => Err(ApiError::new(47001)),
            Some(Ok(Value::Object(map))) => Ok(map),
            Some(Ok(_)) => Err(ApiError::new(47001)),
        }
    }
}

/// What a handler answers.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// HTTP 200 JSON.
    Json(Value),
    /// HTTP 200 `image/jpg`.
    Image(Bytes),
    /// HTTP 404.
    NotFound,
}

/// Runs one API call against the state.
pub(crate) fn handle(state: &mut State, endpoint: Endpoint, ctx: &Ctx<'_>) -> Outcome {
    match run(state, endpoint, ctx) {
        Ok(outcome) => outcome,
        Err(error) => Outcome::Json(error.to_json()),
    }
}

fn run(state: &mut State, endpoint: Endpoint, ctx: &Ctx<'_>) -> Result<Outcome, ApiError> {
    if endpoint.is_post() && ctx.method != Method::POST {
        return Err(ApiError::new(43002));
    }
    if !endpoint.is_post() && ctx.method != Method::GET {
        return Err(ApiError::new(43001));
    }
    let appid = match endpoint.auth() {
        Auth::Own => None,
        Auth::AccessToken => {
            let appid = authenticate(state, ctx)?;
            state.charge_quota(&appid, endpoint.path(), ctx.now_ms)?;
            Some(appid)
        }
    };
    if endpoint.is_post() && endpoint != Endpoint::StableToken && !endpoint.is_multipart() {
        if ctx.body.json.is_none() {
            return Err(ApiError::new(44002));
        }
        if endpoint.refuses_unicode_escapes() && ctx.body.has_unicode_escape {
            return Err(ApiError::new(40033));
        }
    }
    let appid = appid.as_deref().unwrap_or_default();
    let json = match endpoint {
        Endpoint::Token => token::classic(state, ctx)?,
        Endpoint::StableToken => token::stable(state, ctx)?,
        Endpoint::GetTicket => token::jsapi_ticket(state, appid, ctx)?,
        Endpoint::CustomSend => message::custom_send(state, appid, ctx)?,
        Endpoint::CustomTyping => message::typing(state, appid, ctx)?,
        Endpoint::TemplateSend => message::template_send(state, appid, ctx)?,
        Endpoint::MassSendAll => message::mass_sendall(state, appid, ctx)?,
        Endpoint::MassSend => message::mass_send(state, appid, ctx)?,
        Endpoint::MassPreview => message::mass_preview(state, appid, ctx)?,
        Endpoint::QrCreate => qrcode::create(state, appid, ctx)?,
        Endpoint::ShowQr => return Ok(qrcode::show(state, ctx)),
        Endpoint::MenuCreate => menu::create(state, appid, ctx)?,
        Endpoint::MenuGet => menu::get(state, appid)?,
        Endpoint::SelfMenuInfo => menu::selfmenu_info(state, appid),
        Endpoint::MenuDelete => menu::delete(state, appid),
        Endpoint::MenuAddConditional => menu::add_conditional(state, appid, ctx)?,
        Endpoint::MenuDelConditional => menu::del_conditional(state, appid, ctx)?,
        Endpoint::MenuTryMatch => menu::try_match(state, appid, ctx)?,
        Endpoint::MediaUpload => media::upload(state, appid, ctx)?,
        Endpoint::MediaUploadImg => media::upload_image(state, appid, ctx)?,
        Endpoint::UserInfo => user::info(state, appid, ctx)?,
        Endpoint::OAuthAccessToken => user::oauth_access_token(state, ctx)?,
        Endpoint::SnsUserInfo => user::sns_userinfo(state, ctx)?,
    };
    Ok(Outcome::Json(json))
}

/// Checks the `access_token` query parameter; returns the owning AppID.
fn authenticate(state: &State, ctx: &Ctx<'_>) -> Result<String, ApiError> {
    let token = match ctx.query("access_token") {
        None | Some("") => return Err(ApiError::new(41001)),
        Some(token) => token,
    };
    let record = state.tokens.get(token).ok_or(ApiError::new(40001))?;
    record.check(ctx.now_ms)?;
    Ok(record.appid.clone())
}

/// The `errcode` a JSON answer carries for the call log (0 when absent).
pub(crate) fn answered_errcode(outcome: &Outcome) -> Option<i64> {
    match outcome {
        Outcome::Json(json) => Some(json.get("errcode").and_then(Value::as_i64).unwrap_or(0)),
        Outcome::Image(_) | Outcome::NotFound => None,
    }
}

/// Whether a JSON text contains a `\uXXXX` escape (inside a string).
pub(crate) fn has_unicode_escape(raw: &[u8]) -> bool {
    let mut bytes = raw.iter();
    while let Some(byte) = bytes.next() {
        if *byte == b'\\' {
            // The escaped character is consumed, so `\\u` is a literal
            // backslash followed by `u`, not an escape.
            if bytes.next() == Some(&b'u') {
                return true;
            }
        }
    }
    false
}

/// A non-empty string field.
pub(crate) fn str_field<'v>(object: &'v Map<String, Value>, name: &str) -> Option<&'v str> {
    object
        .get(name)
        .and_then(Value::as_str)
        .filter(|value| !value.is_empty())
}

/// A field given as a JSON string or number, as text (`"123"` or `123`).
pub(crate) fn text_or_number(object: &Map<String, Value>, name: &str) -> Option<String> {
    match object.get(name)? {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unicode_escapes_are_found_only_as_escapes() {
        assert!(has_unicode_escape(br#"{"a":"\u4f60"}"#));
        assert!(!has_unicode_escape(br#"{"a":"\\u4f60"}"#));
        assert!(!has_unicode_escape("{\"a\":\"你好 \\n\"}".as_bytes()));
        assert!(has_unicode_escape(br#"{"a":"\\\u4f60"}"#));
    }

    #[test]
    fn every_endpoint_path_routes_back() {
        for endpoint in ALL {
            assert_eq!(Endpoint::from_path(endpoint.path()), Some(endpoint));
        }
        assert_eq!(Endpoint::from_path("/cgi-bin/nope"), None);
    }
}

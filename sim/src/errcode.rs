//! WeChat errcodes as the simulator answers them: the errmsg texts and the
//! ` rid: …` suffix (docs/protocol.md §13).

use rand::Rng;
use serde_json::{Value, json};

/// A WeChat error answer: HTTP 200 with `{"errcode": N, "errmsg": "… rid: …"}`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub(crate) errcode: i64,
    pub(crate) errmsg: Option<String>,
    /// Extra fields of the answer (`45065` carries the existing `msg_id`).
    pub(crate) extra: Option<Value>,
}

impl ApiError {
    pub(crate) fn new(errcode: i64) -> ApiError {
        ApiError {
            errcode,
            errmsg: None,
            extra: None,
        }
    }

    pub(crate) fn with_msg(errcode: i64, errmsg: impl Into<String>) -> ApiError {
        ApiError {
            errcode,
            errmsg: Some(errmsg.into()),
            extra: None,
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        let text = self
            .errmsg
            .clone()
            .unwrap_or_else(|| errmsg(self.errcode).to_owned());
        let mut body = json!({
            "errcode": self.errcode,
            "errmsg": format!("{text} rid: {}", rid()),
        });
        if let (Some(Value::Object(extra)), Value::Object(map)) = (&self.extra, &mut body) {
            for (key, value) in extra {
                map.insert(key.clone(), value.clone());
            }
        }
        body
    }
}

impl From<i64> for ApiError {
    fn from(errcode: i64) -> Self {
        ApiError::new(errcode)
    }
}

/// A request id like WeChat's: three groups of 8 lower-case hex digits.
pub(crate) fn rid() -> String {
    let mut rng = rand::rng();
    format!(
        "{:08x}-{:08x}-{:08x}",
        rng.random::<u32>(),
        rng.random::<u32>(),
        rng.random::<u32>()
    )
}

/// The usual English errmsg of an errcode (clients must not rely on it).
pub(crate) fn errmsg(errcode: i64) -> &'static str {
    match errcode {
        -1 => "system error",
        0 => "ok",
        40001 => "invalid credential, access_token is invalid or not latest",
        40002 => "invalid grant_type",
        40003 => "invalid openid",
        40007 => "invalid media_id",
        40008 => "invalid message type",
        40013 => "invalid appid",
        40014 => "invalid access_token",
        40016 => "invalid button size",
        40017 => "invalid button type",
        40018 => "invalid button name size",
        40019 => "invalid button key size",
        40020 => "invalid button url size",
        40022 => "invalid sub button level",
        40023 => "invalid sub button size",
        40024 => "invalid sub button type",
        40025 => "invalid sub button name size",
        40026 => "invalid sub button key size",
        40027 => "invalid sub button url size",
        40029 => "invalid code",
        40031 => "invalid openid list",
        40032 => "invalid openid list size",
        40033 => "invalid charset. please check your request, if include \\uxxxx will create fail!",
        40035 => "invalid args",
        40036 => "invalid template_id size",
        40037 => "invalid template_id",
        40053 => "invalid action info, please check document",
        40054 => "invalid sub button url domain",
        40055 => "invalid button url domain",
        40125 => "invalid appsecret",
        40130 => "invalid openid list size, at least two openid",
        40163 => "code been used",
        41001 => "access_token missing",
        41002 => "appid missing",
        41004 => "appsecret missing",
        41007 => "missing submenu data",
        41008 => "missing code",
        41009 => "missing openid",
        42001 => "access_token expired",
        42003 => "code expired",
        43001 => "require GET method",
        43002 => "require POST method",
        43004 => "require subscribe",
        44002 => "empty post data",
        44003 => "empty news data",
        44004 => "empty content",
        45002 => "content size out of limit",
        45008 => "article size out of limit",
        45009 => "reach max api daily quota limit",
        45011 => "api minute-quota reach limit, must slower, retry next minute",
        45015 => "response out of time limit or subscription is canceled",
        45047 => "out of response count limit",
        45064 => "no permission to use weapp in menu",
        45065 => "clientmsgid exist",
        45067 => "clientmsgid size out of limit",
        45072 => "command field content is invalid",
        45080 => "has not sent message to user in 30 seconds",
        45081 => "already typing",
        46003 => "menu no exist",
        47001 => "data format error",
        47003 => "argument invalid!",
        48001 => "api unauthorized",
        61452 => "invalid kf_account",
        65301 => "menuid not exist",
        65302 => "no such user",
        65303 => "there is no selfmenu, please create selfmenu first",
        65304 => "match rule empty",
        65308 => "button is empty",
        65320 => "match rule sex, country, province, city or language no longer supported",
        _ => "error",
    }
}

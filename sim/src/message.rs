//! Outbound messages: customer-service messages and typing (docs/protocol.md §6),
//! templates (§7) and mass sends (§8).

use serde_json::{Map, Value, json};

use crate::api::{Ctx, str_field};
use crate::errcode::ApiError;
use crate::state::State;

/// Typing lasts this long (docs/protocol.md §6.3).
const TYPING_MS: i64 = 15_000;
/// Typing needs an interaction this recent (docs/protocol.md §6.3).
const TYPING_INTERACTION_MS: i64 = 30_000;
/// `client_msg_id` of templates is remembered this long (docs/protocol.md §7.1).
const TEMPLATE_IDEMPOTENCY_MS: i64 = 10 * 60 * 1000;

/// `POST /cgi-bin/message/custom/send`.
pub(crate) fn custom_send(
    state: &mut State,
    appid: &str,
    ctx: &Ctx<'_>,
) -> Result<Value, ApiError> {
    let body = ctx.object()?;
    let touser = str_field(body, "touser").ok_or(ApiError::new(40003))?;
    state.check_openid(appid, touser)?;
    let msgtype = str_field(body, "msgtype").ok_or(ApiError::new(40008))?;
    check_custom_content(msgtype, body, state.config.text_limit_bytes)?;
    if let Some(customservice) = body.get("customservice") {
        let kf_account = customservice
            .get("kf_account")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !is_kf_account(kf_account) {
            return Err(ApiError::new(61452));
        }
    }
    state.use_window(appid, touser, ctx.now_ms)?;
    Ok(ok())
}

/// Validates the type-specific object of a custom message (docs/protocol.md §6.2).
fn check_custom_content(
    msgtype: &str,
    body: &Map<String, Value>,
    text_limit_bytes: usize,
) -> Result<(), ApiError> {
    let content = |name: &str| body.get(name).and_then(Value::as_object);
    let object = |name: &str| content(name).ok_or(ApiError::new(47001));
    match msgtype {
        "text" => {
            let text = content("text")
                .and_then(|text| str_field(text, "content"))
                .ok_or(ApiError::new(44004))?;
            if text.len() > text_limit_bytes {
                return Err(ApiError::new(45002));
            }
        }
        "image" | "voice" | "mpnews" => {
            media_id(object(msgtype)?, "media_id")?;
        }
        "video" => {
            let video = object("video")?;
            media_id(video, "media_id")?;
            optional_strings(video, &["thumb_media_id", "title", "description"])?;
        }
        "music" => {
            let music = object("music")?;
            media_id(music, "thumb_media_id")?;
            optional_strings(music, &["title", "description", "musicurl", "hqmusicurl"])?;
        }
        "news" => {
            let articles = object("news")?
                .get("articles")
                .and_then(Value::as_array)
                .ok_or(ApiError::new(44003))?;
            match articles.len() {
                0 => return Err(ApiError::new(44003)),
                1 => {}
                _ => return Err(ApiError::new(45008)),
            }
            for article in articles {
                let article = article.as_object().ok_or(ApiError::new(47001))?;
                optional_strings(article, &["title", "description", "url", "picurl"])?;
            }
        }
        "mpnewsarticle" => {
            str_field(object("mpnewsarticle")?, "article_id").ok_or(ApiError::new(40007))?;
        }
        "msgmenu" => {
            let menu = object("msgmenu")?;
            optional_strings(menu, &["head_content", "tail_content"])?;
            let items = menu
                .get("list")
                .and_then(Value::as_array)
                .filter(|items| !items.is_empty())
                .ok_or(ApiError::new(44004))?;
            for item in items {
                let item = item.as_object().ok_or(ApiError::new(47001))?;
                if str_field(item, "id").is_none() || str_field(item, "content").is_none() {
                    return Err(ApiError::new(47001));
                }
            }
        }
        "wxcard" => {
            str_field(object("wxcard")?, "card_id").ok_or(ApiError::new(47001))?;
        }
        "miniprogrampage" => {
            let page = object("miniprogrampage")?;
            if str_field(page, "appid").is_none() || str_field(page, "pagepath").is_none() {
                return Err(ApiError::new(47001));
            }
            media_id(page, "thumb_media_id")?;
            optional_strings(page, &["title"])?;
        }
        _ => return Err(ApiError::new(40008)),
    }
    Ok(())
}

fn media_id(object: &Map<String, Value>, name: &str) -> Result<(), ApiError> {
    str_field(object, name)
        .map(|_| ())
        .ok_or(ApiError::new(40007))
}

/// Fields that may be absent but must be strings when present.
fn optional_strings(object: &Map<String, Value>, names: &[&str]) -> Result<(), ApiError> {
    for name in names {
        match object.get(*name) {
            None | Some(Value::Null | Value::String(_)) => {}
            Some(_) => return Err(ApiError::new(47001)),
        }
    }
    Ok(())
}

/// `prefix@account`, prefix 1..=10 letters or digits (docs/protocol.md §6.1).
fn is_kf_account(kf_account: &str) -> bool {
    match kf_account.split_once('@') {
        Some((prefix, account)) => {
            (1..=10).contains(&prefix.len())
                && prefix.bytes().all(|b| b.is_ascii_alphanumeric())
                && !account.is_empty()
        }
        None => false,
    }
}

/// `POST /cgi-bin/message/custom/typing`.
pub(crate) fn typing(state: &mut State, appid: &str, ctx: &Ctx<'_>) -> Result<Value, ApiError> {
    let body = ctx.object()?;
    let touser = str_field(body, "touser").ok_or(ApiError::new(40003))?;
    state.check_openid(appid, touser)?;
    let typing = match body.get("command").and_then(Value::as_str) {
        Some("Typing") => true,
        Some("CancelTyping") => false,
        _ => return Err(ApiError::new(45072)),
    };
    let now = ctx.now_ms;
    let strict = state.config.openid_policy == crate::OpenIdPolicy::Strict;
    let account = state.accounts.get_mut(appid).ok_or(ApiError::new(40013))?;
    let user = match account.users.get_mut(touser) {
        Some(user) => user,
        // A follower the simulator has never seen: nothing to remember.
        None if !strict => return Ok(ok()),
        None => return Err(ApiError::new(40003)),
    };
    if !user.following {
        return Err(ApiError::new(45015));
    }
    if !typing {
        user.typing_until_ms = 0;
        return Ok(ok());
    }
    let recent = user
        .last_interaction_ms
        .is_some_and(|at| now.saturating_sub(at) <= TYPING_INTERACTION_MS);
    if strict && !recent {
        return Err(ApiError::new(45080));
    }
    if user.typing_until_ms > now {
        return Err(ApiError::new(45081));
    }
    user.typing_until_ms = now.saturating_add(TYPING_MS);
    Ok(ok())
}

/// `POST /cgi-bin/message/template/send`.
pub(crate) fn template_send(
    state: &mut State,
    appid: &str,
    ctx: &Ctx<'_>,
) -> Result<Value, ApiError> {
    let body = ctx.object()?;
    let touser = str_field(body, "touser").ok_or(ApiError::new(40003))?;
    state.check_openid(appid, touser)?;
    if !state.follows(appid, touser) {
        return Err(ApiError::new(43004));
    }
    let template_id = str_field(body, "template_id").ok_or(ApiError::new(40037))?;
    if template_id.len() > 64 {
        return Err(ApiError::new(40036));
    }
    optional_strings(body, &["url", "client_msg_id"])?;
    if let Some(miniprogram) = body.get("miniprogram") {
        let miniprogram = miniprogram.as_object().ok_or(ApiError::new(47001))?;
        str_field(miniprogram, "appid").ok_or(ApiError::new(47001))?;
    }
    let data = body
        .get("data")
        .and_then(Value::as_object)
        .ok_or(ApiError::new(47001))?;
    for (key, field) in data {
        let value = field
            .get("value")
            .and_then(Value::as_str)
            .ok_or_else(|| data_invalid(key))?;
        if !template_value_ok(key, value) {
            return Err(data_invalid(key));
        }
    }

    let now = ctx.now_ms;
    let client_msg_id = str_field(body, "client_msg_id").map(str::to_owned);
    let account = state.accounts.get_mut(appid).ok_or(ApiError::new(40013))?;
    if let Some(client_msg_id) = &client_msg_id {
        account
            .template_client_ids
            .retain(|_, (_, at)| now.saturating_sub(*at) < TEMPLATE_IDEMPOTENCY_MS);
        let key = (touser.to_owned(), client_msg_id.clone());
        if let Some((msgid, _)) = account.template_client_ids.get(&key) {
            return Ok(json!({"errcode": 0, "errmsg": "ok", "msgid": msgid}));
        }
    }
    let msgid = state.next_msg_id();
    if let (Some(client_msg_id), Some(account)) = (client_msg_id, state.accounts.get_mut(appid)) {
        account
            .template_client_ids
            .insert((touser.to_owned(), client_msg_id), (msgid, now));
    }
    Ok(json!({"errcode": 0, "errmsg": "ok", "msgid": msgid}))
}

fn data_invalid(key: &str) -> ApiError {
    ApiError::with_msg(47003, format!("argument invalid! data.{key}.value invalid"))
}

/// The category-template value rules (docs/protocol.md §7.1) for keys named
/// `thing3`, `number1`, …; other keys (industry templates) accept anything.
fn template_value_ok(key: &str, value: &str) -> bool {
    let kind = key.trim_end_matches(|c: char| c.is_ascii_digit());
    if kind.len() == key.len() {
        return true;
    }
    let chars = value.chars().count();
    match kind {
        "thing" | "const" => chars <= 20,
        "number" => chars <= 32 && value.chars().all(|c| c.is_ascii_digit() || c == '.'),
        "letter" => chars <= 32 && value.chars().all(|c| c.is_ascii_alphabetic()),
        "symbol" | "phrase" => chars <= 5,
        "character_string" => chars <= 32 && value.is_ascii(),
        "phone_number" => chars <= 17,
        "car_number" => chars <= 8,
        "name" => chars <= 20,
        _ => true,
    }
}

/// `POST /cgi-bin/message/mass/sendall`.
pub(crate) fn mass_sendall(
    state: &mut State,
    appid: &str,
    ctx: &Ctx<'_>,
) -> Result<Value, ApiError> {
    let body = ctx.object()?;
    let filter = body
        .get("filter")
        .and_then(Value::as_object)
        .ok_or(ApiError::new(47001))?;
    let to_all = filter
        .get("is_to_all")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if !to_all && filter.get("tag_id").is_none_or(Value::is_null) {
        return Err(ApiError::new(47001));
    }
    mass_job(state, appid, body)
}

/// `POST /cgi-bin/message/mass/send`: 2 to 10,000 OpenIDs.
pub(crate) fn mass_send(state: &mut State, appid: &str, ctx: &Ctx<'_>) -> Result<Value, ApiError> {
    let body = ctx.object()?;
    let openids = body
        .get("touser")
        .and_then(Value::as_array)
        .ok_or(ApiError::new(40031))?;
    if openids.len() < 2 {
        return Err(ApiError::new(40130));
    }
    if openids.len() > 10_000 {
        return Err(ApiError::new(40032));
    }
    if openids.iter().any(|openid| openid.as_str().is_none()) {
        return Err(ApiError::new(40031));
    }
    mass_job(state, appid, body)
}

/// `POST /cgi-bin/message/mass/preview`.
pub(crate) fn mass_preview(
    state: &mut State,
    appid: &str,
    ctx: &Ctx<'_>,
) -> Result<Value, ApiError> {
    let body = ctx.object()?;
    if str_field(body, "towxname").is_none() {
        let touser = str_field(body, "touser").ok_or(ApiError::new(40003))?;
        state.check_openid(appid, touser)?;
        if !state.follows(appid, touser) {
            return Err(ApiError::new(43004));
        }
    }
    let msgtype = str_field(body, "msgtype").ok_or(ApiError::new(40008))?;
    check_mass_content(msgtype, body)?;
    let msg_id = state.next_msg_id();
    Ok(json!({"errcode": 0, "errmsg": "preview success", "msg_id": msg_id}))
}

/// Accepts a mass job: content checks, `clientmsgid` idempotency, ids.
fn mass_job(state: &mut State, appid: &str, body: &Map<String, Value>) -> Result<Value, ApiError> {
    let msgtype = str_field(body, "msgtype").ok_or(ApiError::new(40008))?;
    check_mass_content(msgtype, body)?;
    let client_msg_id = match body.get("clientmsgid") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if id.len() > 64 => return Err(ApiError::new(45067)),
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => return Err(ApiError::new(47001)),
    };
    if let Some(id) = &client_msg_id {
        let existing = state
            .accounts
            .get(appid)
            .and_then(|account| account.mass_client_ids.get(id));
        if let Some(msg_id) = existing {
            let mut error = ApiError::new(45065);
            error.extra = Some(json!({"msg_id": msg_id}));
            return Err(error);
        }
    }
    let msg_id = state.next_msg_id();
    if let (Some(id), Some(account)) = (client_msg_id, state.accounts.get_mut(appid)) {
        account.mass_client_ids.insert(id, msg_id);
    }
    let mut answer = json!({
        "errcode": 0,
        "errmsg": "send job submission success",
        "msg_id": msg_id,
    });
    if msgtype == "mpnews"
        && let Value::Object(map) = &mut answer
    {
        let msg_data_id = state.next_msg_id();
        map.insert("msg_data_id".to_owned(), json!(msg_data_id));
    }
    Ok(answer)
}

/// Validates the type-specific object of a mass message (docs/protocol.md §8.2).
fn check_mass_content(msgtype: &str, body: &Map<String, Value>) -> Result<(), ApiError> {
    let object = |name: &str| {
        body.get(name)
            .and_then(Value::as_object)
            .ok_or(ApiError::new(47001))
    };
    match msgtype {
        "text" => {
            body.get("text")
                .and_then(Value::as_object)
                .and_then(|text| str_field(text, "content"))
                .ok_or(ApiError::new(44004))?;
        }
        "mpnews" | "voice" | "mpvideo" => media_id(object(msgtype)?, "media_id")?,
        "image" => match body.get("images").and_then(Value::as_object) {
            Some(images) => {
                let ids = images
                    .get("media_ids")
                    .and_then(Value::as_array)
                    .filter(|ids| !ids.is_empty())
                    .ok_or(ApiError::new(40007))?;
                if ids.iter().any(|id| id.as_str().is_none_or(str::is_empty)) {
                    return Err(ApiError::new(40007));
                }
            }
            None => media_id(object("image")?, "media_id")?,
        },
        "wxcard" => {
            str_field(object("wxcard")?, "card_id").ok_or(ApiError::new(47001))?;
        }
        _ => return Err(ApiError::new(40008)),
    }
    Ok(())
}

fn ok() -> Value {
    json!({"errcode": 0, "errmsg": "ok"})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(msgtype: &str, body: Value, expected: Result<(), i64>) {
        let Value::Object(map) = body else {
            panic!("body must be an object");
        };
        assert_eq!(
            check_custom_content(msgtype, &map, 2048).map_err(|e| e.errcode),
            expected,
            "{msgtype}"
        );
    }

    #[test]
    fn custom_content_rules() {
        check("text", json!({"text": {"content": "hi"}}), Ok(()));
        check("text", json!({"text": {"content": ""}}), Err(44004));
        check("text", json!({}), Err(44004));
        check(
            "text",
            json!({"text": {"content": "x".repeat(2049)}}),
            Err(45002),
        );
        check("image", json!({"image": {}}), Err(40007));
        check(
            "video",
            json!({"video": {"media_id": "m", "title": 3}}),
            Err(47001),
        );
        check("news", json!({"news": {"articles": []}}), Err(44003));
        check("msgmenu", json!({"msgmenu": {"list": []}}), Err(44004));
        check("file", json!({}), Err(40008));
    }

    #[test]
    fn kf_accounts_need_a_short_prefix() {
        assert!(is_kf_account("agent1@gh_account"));
        assert!(!is_kf_account("agent1"));
        assert!(!is_kf_account("toolongprefix1@gh"));
        assert!(!is_kf_account("@gh"));
    }

    #[test]
    fn template_values_follow_category_rules() {
        assert!(template_value_ok("thing1", "Order shipped"));
        assert!(!template_value_ok("thing1", &"x".repeat(21)));
        assert!(template_value_ok("number2", "12.5"));
        assert!(!template_value_ok("number2", "12a"));
        assert!(!template_value_ok("character_string3", "订单"));
        assert!(template_value_ok("first", &"x".repeat(200)));
    }
}

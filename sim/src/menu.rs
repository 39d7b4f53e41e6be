//! Custom menus (docs/protocol.md §10): validation with WeChat's errcodes, the
//! default menu and conditional menus.

use serde_json::{Map, Value, json};

use crate::api::{Ctx, str_field, text_or_number};
use crate::errcode::ApiError;
use crate::state::{State, StoredMenu, is_openid};

const KEY_TYPES: [&str; 7] = [
    "click",
    "scancode_push",
    "scancode_waitmsg",
    "pic_sysphoto",
    "pic_photo_or_album",
    "pic_weixin",
    "location_select",
];
const URL_TYPES: [&str; 2] = ["view", "miniprogram"];
const MEDIA_TYPES: [&str; 2] = ["media_id", "view_limited"];
const ARTICLE_TYPES: [&str; 2] = ["article_id", "article_view_limited"];

/// Which call is validating: the missing-sub-button code differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Default,
    Conditional,
}

/// Whether a button is validated as a top-level button or a sub-button;
/// the errcodes differ (docs/protocol.md §10.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Top,
    Sub,
}

impl Level {
    fn name_limit(self) -> usize {
        match self {
            Level::Top => 16,
            Level::Sub => 60,
        }
    }
    fn code_name(self) -> i64 {
        match self {
            Level::Top => 40018,
            Level::Sub => 40025,
        }
    }
    fn code_type(self) -> i64 {
        match self {
            Level::Top => 40017,
            Level::Sub => 40024,
        }
    }
    fn code_key(self) -> i64 {
        match self {
            Level::Top => 40019,
            Level::Sub => 40026,
        }
    }
    fn code_url_size(self) -> i64 {
        match self {
            Level::Top => 40020,
            Level::Sub => 40027,
        }
    }
    fn code_url_domain(self) -> i64 {
        match self {
            Level::Top => 40055,
            Level::Sub => 40054,
        }
    }
}

/// Validates a `button` array (docs/protocol.md §10.2–10.4).
fn check_buttons(buttons: Option<&Value>, kind: Kind) -> Result<(), ApiError> {
    let buttons = buttons
        .and_then(Value::as_array)
        .ok_or(ApiError::new(40016))?;
    if buttons.is_empty() || buttons.len() > 3 {
        return Err(ApiError::new(40016));
    }
    for button in buttons {
        let button = button.as_object().ok_or(ApiError::new(47001))?;
        let sub_buttons = button.get("sub_button").and_then(Value::as_array);
        match sub_buttons {
            Some(subs) if !subs.is_empty() => {
                check_name(button, Level::Top)?;
                if subs.len() > 5 {
                    return Err(ApiError::new(40023));
                }
                for sub in subs {
                    let sub = sub.as_object().ok_or(ApiError::new(47001))?;
                    let nested = sub
                        .get("sub_button")
                        .and_then(Value::as_array)
                        .is_some_and(|nested| !nested.is_empty());
                    if nested {
                        return Err(ApiError::new(40022));
                    }
                    check_leaf(sub, Level::Sub)?;
                }
            }
            _ if button.get("type").is_some_and(|t| !t.is_null()) => {
                check_leaf(button, Level::Top)?;
            }
            Some(_) => return Err(ApiError::new(40023)),
            None => {
                return Err(ApiError::new(match kind {
                    Kind::Default => 41007,
                    Kind::Conditional => 65308,
                }));
            }
        }
    }
    Ok(())
}

fn check_name(button: &Map<String, Value>, level: Level) -> Result<(), ApiError> {
    match str_field(button, "name") {
        Some(name) if name.len() <= level.name_limit() => Ok(()),
        _ => Err(ApiError::new(level.code_name())),
    }
}

fn check_leaf(button: &Map<String, Value>, level: Level) -> Result<(), ApiError> {
    check_name(button, level)?;
    let kind = str_field(button, "type").ok_or(ApiError::new(level.code_type()))?;
    if KEY_TYPES.contains(&kind) {
        match str_field(button, "key") {
            Some(key) if key.len() <= 128 => {}
            _ => return Err(ApiError::new(level.code_key())),
        }
    } else if URL_TYPES.contains(&kind) {
        let url = match str_field(button, "url") {
            Some(url) if url.len() <= 1024 => url,
            _ => return Err(ApiError::new(level.code_url_size())),
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ApiError::new(level.code_url_domain()));
        }
        if kind == "miniprogram" {
            // An absent appid cannot name a linked mini program.
            str_field(button, "appid").ok_or(ApiError::new(45064))?;
            str_field(button, "pagepath").ok_or(ApiError::new(47001))?;
        }
    } else if MEDIA_TYPES.contains(&kind) {
        str_field(button, "media_id").ok_or(ApiError::new(40007))?;
    } else if ARTICLE_TYPES.contains(&kind) {
        // WeChat's code for a bad article_id is unconfirmed; 40007 is the
        // closest documented one.
        str_field(button, "article_id").ok_or(ApiError::new(40007))?;
    } else {
        return Err(ApiError::new(level.code_type()));
    }
    Ok(())
}

/// Validates a conditional menu's `matchrule` (docs/protocol.md §10.5).
fn check_matchrule(rule: Option<&Value>) -> Result<(), ApiError> {
    let rule = rule
        .and_then(Value::as_object)
        .ok_or(ApiError::new(65304))?;
    for retired in ["sex", "country", "province", "city", "language"] {
        if text_or_number(rule, retired).is_some() {
            return Err(ApiError::new(65320));
        }
    }
    let tag = text_or_number(rule, "tag_id").or_else(|| text_or_number(rule, "group_id"));
    let platform = text_or_number(rule, "client_platform_type");
    if tag.is_none() && platform.is_none() {
        return Err(ApiError::new(65304));
    }
    if let Some(platform) = platform
        && !matches!(platform.as_str(), "1" | "2" | "3")
    {
        return Err(ApiError::new(40035));
    }
    Ok(())
}

/// `POST /cgi-bin/menu/create`: replaces the default menu.
pub(crate) fn create(state: &mut State, appid: &str, ctx: &Ctx<'_>) -> Result<Value, ApiError> {
    let body = ctx.object()?;
    check_buttons(body.get("button"), Kind::Default)?;
    let account = state.accounts.get_mut(appid).ok_or(ApiError::new(40013))?;
    let menuid = account.next_menuid();
    account.menu = Some(StoredMenu {
        button: body.get("button").cloned().unwrap_or(Value::Null),
        matchrule: None,
        menuid,
    });
    Ok(json!({"errcode": 0, "errmsg": "ok"}))
}

/// `GET /cgi-bin/menu/get`.
pub(crate) fn get(state: &State, appid: &str) -> Result<Value, ApiError> {
    let account = state.accounts.get(appid).ok_or(ApiError::new(40013))?;
    let menu = account.menu.as_ref().ok_or(ApiError::new(46003))?;
    let mut answer = json!({"menu": {"button": menu.button, "menuid": menu.menuid}});
    if !account.conditional_menus.is_empty()
        && let Value::Object(map) = &mut answer
    {
        let conditional: Vec<Value> = account
            .conditional_menus
            .iter()
            .map(|menu| {
                json!({
                    "button": menu.button,
                    "matchrule": menu.matchrule,
                    "menuid": menu.menuid,
                })
            })
            .collect();
        map.insert("conditionalmenu".to_owned(), Value::Array(conditional));
    }
    Ok(answer)
}

/// `GET /cgi-bin/get_current_selfmenu_info`: sub-buttons as `{"list": […]}`.
pub(crate) fn selfmenu_info(state: &State, appid: &str) -> Value {
    let menu = state
        .accounts
        .get(appid)
        .and_then(|account| account.menu.as_ref());
    let Some(menu) = menu else {
        return json!({"is_menu_open": 0, "selfmenu_info": {"button": []}});
    };
    let buttons: Vec<Value> = menu
        .button
        .as_array()
        .map(|buttons| {
            buttons
                .iter()
                .map(|button| {
                    let mut button = button.clone();
                    if let Value::Object(map) = &mut button
                        && let Some(subs) = map.remove("sub_button")
                        && subs.as_array().is_some_and(|subs| !subs.is_empty())
                    {
                        map.insert("sub_button".to_owned(), json!({"list": subs}));
                    }
                    button
                })
                .collect()
        })
        .unwrap_or_default();
    json!({"is_menu_open": 1, "selfmenu_info": {"button": buttons}})
}

/// `GET /cgi-bin/menu/delete`: the default and every conditional menu.
pub(crate) fn delete(state: &mut State, appid: &str) -> Value {
    if let Some(account) = state.accounts.get_mut(appid) {
        account.menu = None;
        account.conditional_menus.clear();
    }
    json!({"errcode": 0, "errmsg": "ok"})
}

/// `POST /cgi-bin/menu/addconditional`.
pub(crate) fn add_conditional(
    state: &mut State,
    appid: &str,
    ctx: &Ctx<'_>,
) -> Result<Value, ApiError> {
    let body = ctx.object()?;
    let account = state.accounts.get_mut(appid).ok_or(ApiError::new(40013))?;
    if account.menu.is_none() {
        return Err(ApiError::new(65303));
    }
    check_buttons(body.get("button"), Kind::Conditional)?;
    check_matchrule(body.get("matchrule"))?;
    let menuid = account.next_menuid();
    account.conditional_menus.push(StoredMenu {
        button: body.get("button").cloned().unwrap_or(Value::Null),
        matchrule: body.get("matchrule").cloned(),
        menuid,
    });
    Ok(json!({"menuid": menuid.to_string()}))
}

/// `POST /cgi-bin/menu/delconditional`.
pub(crate) fn del_conditional(
    state: &mut State,
    appid: &str,
    ctx: &Ctx<'_>,
) -> Result<Value, ApiError> {
    let body = ctx.object()?;
    let menuid = text_or_number(body, "menuid")
        .and_then(|id| id.parse::<u64>().ok())
        .ok_or(ApiError::new(65301))?;
    let account = state.accounts.get_mut(appid).ok_or(ApiError::new(40013))?;
    let before = account.conditional_menus.len();
    account
        .conditional_menus
        .retain(|menu| menu.menuid != menuid);
    if account.conditional_menus.len() == before {
        return Err(ApiError::new(65301));
    }
    Ok(json!({"errcode": 0, "errmsg": "ok"}))
}

/// `POST /cgi-bin/menu/trymatch`: the simulator keeps no user tags or
/// platforms, so every user sees the default menu.
pub(crate) fn try_match(state: &State, appid: &str, ctx: &Ctx<'_>) -> Result<Value, ApiError> {
    let body = ctx.object()?;
    let user_id = str_field(body, "user_id").ok_or(ApiError::new(65302))?;
    let known = state
        .accounts
        .get(appid)
        .is_some_and(|account| account.users.contains_key(user_id));
    let exists = match state.config.openid_policy {
        crate::OpenIdPolicy::AnyFollower => known || is_openid(user_id),
        crate::OpenIdPolicy::Strict => known,
    };
    if !exists {
        return Err(ApiError::new(65302));
    }
    let menu = state
        .accounts
        .get(appid)
        .and_then(|account| account.menu.as_ref())
        .ok_or(ApiError::new(46003))?;
    Ok(json!({"button": menu.button}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(menu: Value, expected: Result<(), i64>) {
        assert_eq!(
            check_buttons(menu.get("button"), Kind::Default).map_err(|e| e.errcode),
            expected,
            "{menu}"
        );
    }

    fn click(name: &str) -> Value {
        json!({"type": "click", "name": name, "key": "K"})
    }

    #[test]
    fn protocol_example_is_valid() {
        check(
            json!({"button":[
                {"type":"click","name":"Today","key":"V1001_TODAY"},
                {"name":"Menu","sub_button":[
                    {"type":"view","name":"Search","url":"https://www.example.com/"},
                    {"type":"miniprogram","name":"App","url":"https://www.example.com/","appid":"MINI_APPID","pagepath":"pages/index/index"},
                    {"type":"scancode_waitmsg","name":"Scan","key":"rselfmenu_0_0","sub_button":[]}]},
                {"type":"article_view_limited","name":"News","article_id":"ARTICLE_ID"}]}),
            Ok(()),
        );
    }

    #[test]
    fn button_counts() {
        check(json!({"button": []}), Err(40016));
        check(json!({}), Err(40016));
        check(
            json!({"button": [click("a"), click("b"), click("c"), click("d")]}),
            Err(40016),
        );
        let six: Vec<Value> = (0..6).map(|i| click(&i.to_string())).collect();
        check(
            json!({"button": [{"name": "M", "sub_button": six}]}),
            Err(40023),
        );
        check(
            json!({"button": [{"name": "M", "sub_button": []}]}),
            Err(40023),
        );
        check(json!({"button": [{"name": "M"}]}), Err(41007));
    }

    #[test]
    fn top_level_rules() {
        check(json!({"button": [click("")]}), Err(40018));
        check(json!({"button": [click(&"x".repeat(17))]}), Err(40018));
        check(json!({"button": [click("一二三四五")]}), Ok(()));
        check(json!({"button": [click("一二三四五六")]}), Err(40018));
        check(
            json!({"button": [{"type": "bogus", "name": "a"}]}),
            Err(40017),
        );
        check(
            json!({"button": [{"type": "click", "name": "a"}]}),
            Err(40019),
        );
        check(
            json!({"button": [{"type": "click", "name": "a", "key": "k".repeat(129)}]}),
            Err(40019),
        );
        check(
            json!({"button": [{"type": "view", "name": "a"}]}),
            Err(40020),
        );
        check(
            json!({"button": [{"type": "view", "name": "a", "url": format!("https://{}", "u".repeat(1024))}]}),
            Err(40020),
        );
        check(
            json!({"button": [{"type": "view", "name": "a", "url": "ftp://x"}]}),
            Err(40055),
        );
        check(
            json!({"button": [{"type": "media_id", "name": "a"}]}),
            Err(40007),
        );
        check(
            json!({"button": [{"type": "miniprogram", "name": "a", "url": "https://x", "pagepath": "p"}]}),
            Err(45064),
        );
    }

    #[test]
    fn sub_button_rules() {
        let sub = |button: Value| json!({"button": [{"name": "M", "sub_button": [button]}]});
        check(sub(click(&"x".repeat(60))), Ok(()));
        check(sub(click(&"x".repeat(61))), Err(40025));
        check(sub(json!({"type": "bogus", "name": "a"})), Err(40024));
        check(sub(json!({"type": "click", "name": "a"})), Err(40026));
        check(sub(json!({"type": "view", "name": "a"})), Err(40027));
        check(
            sub(json!({"type": "view", "name": "a", "url": "x"})),
            Err(40054),
        );
        check(
            sub(json!({"name": "a", "sub_button": [click("b")]})),
            Err(40022),
        );
    }

    #[test]
    fn matchrules() {
        let check = |rule: Value, expected: Result<(), i64>| {
            assert_eq!(
                check_matchrule(Some(&rule)).map_err(|e| e.errcode),
                expected,
                "{rule}"
            );
        };
        check(json!({"tag_id": "2"}), Ok(()));
        check(json!({"client_platform_type": 1}), Ok(()));
        check(json!({}), Err(65304));
        check(json!({"tag_id": ""}), Err(65304));
        check(json!({"sex": "1"}), Err(65320));
        check(json!({"tag_id": "2", "language": "zh_CN"}), Err(65320));
        assert_eq!(
            check_buttons(Some(&json!([{"name": "M"}])), Kind::Conditional).map_err(|e| e.errcode),
            Err(65308)
        );
    }
}

//! `wxgate menu …`: the custom menu (Menus API), read and written in WeChat's own JSON shape
//! (`{"button": [{"type": "click", "name": "…", "key": "…", "sub_button": […]}]}`), so a menu
//! from WeChat's documentation or console works as it is.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::{Map, Value, json};
use wxgate_proto::v1 as pb;
use wxgate_proto::v1::MenuButtonType as T;

use crate::api::Api;
use crate::{Failure, Outcome, print_json, println_checked, read_file};

/// `wxgate menu`.
#[derive(Debug, Clone, Subcommand)]
pub enum MenuCommand {
    /// Sets the default menu from a JSON file in WeChat's shape.
    #[command(
        after_help = "Example:\n  echo '{\"button\":[{\"type\":\"click\",\"name\":\"今日歌曲\",\"key\":\"V1001_TODAY_MUSIC\"}]}' > menu.json\n  wxgate menu create demo menu.json"
    )]
    Create {
        /// The account.
        account: String,
        /// The menu: `{"button": [...]}`.
        file: PathBuf,
    },
    /// Prints the menus set through the API (default and conditional) as JSON.
    #[command(after_help = "Example:\n  wxgate menu get demo > menu.json")]
    Get {
        /// The account.
        account: String,
    },
    /// Deletes every menu of the account (default and conditional).
    #[command(after_help = "Example:\n  wxgate menu delete demo")]
    Delete {
        /// The account.
        account: String,
    },
    /// Prints the menu in effect, however it was set (API or the WeChat website).
    #[command(after_help = "Example:\n  wxgate menu current demo")]
    Current {
        /// The account.
        account: String,
    },
    /// Prints the menu a given user sees (conditional menus applied).
    #[command(after_help = "Example:\n  wxgate menu try-match demo oUser123")]
    TryMatch {
        /// The account.
        account: String,
        /// The user's OpenID or WeChat ID.
        user: String,
    },
    /// Adds a conditional menu from a JSON file with `button` and `matchrule`.
    #[command(
        after_help = "Example:\n  wxgate menu add-conditional demo vip-menu.json   # {\"button\":[…],\"matchrule\":{\"tag_id\":\"2\"}}"
    )]
    AddConditional {
        /// The account.
        account: String,
        /// The menu: `{"button": [...], "matchrule": {...}}`.
        file: PathBuf,
    },
    /// Deletes one conditional menu by its menuid.
    #[command(after_help = "Example:\n  wxgate menu delete-conditional demo 208379533")]
    DeleteConditional {
        /// The account.
        account: String,
        /// The conditional menu's id.
        menuid: u64,
    },
}

/// Runs `wxgate menu …`.
pub async fn menu(api: &Api, command: MenuCommand) -> Outcome {
    let mut menus = api.menus();
    let fail = |status| api.failure(status);
    match command {
        MenuCommand::Create { account, file } => {
            let menu = read_json(&file)?;
            let button = buttons_of(&menu, "button")?;
            menus
                .create(pb::MenusCreateRequest {
                    account_id: account,
                    button,
                })
                .await
                .map_err(fail)?;
            println_checked("menu created")
        }
        MenuCommand::Get { account } => {
            let answer = menus
                .get(pb::MenusGetRequest {
                    account_id: account,
                })
                .await
                .map_err(fail)?
                .into_inner();
            let conditional: Vec<Value> = answer
                .conditional
                .iter()
                .map(|c| {
                    json!({
                        "button": c.button.iter().map(button_json).collect::<Vec<_>>(),
                        "matchrule": c.matchrule.as_ref().map(matchrule_json),
                        "menuid": c.menuid,
                    })
                })
                .collect();
            print_json(&json!({
                "menu": {
                    "button": answer.button.iter().map(button_json).collect::<Vec<_>>(),
                    "menuid": answer.menuid,
                },
                "conditionalmenu": conditional,
            }))
        }
        MenuCommand::Delete { account } => {
            menus
                .delete(pb::MenusDeleteRequest {
                    account_id: account,
                })
                .await
                .map_err(fail)?;
            println_checked("menu deleted")
        }
        MenuCommand::Current { account } => {
            let answer = menus
                .get_current_selfmenu_info(pb::MenusGetCurrentSelfmenuInfoRequest {
                    account_id: account,
                })
                .await
                .map_err(fail)?
                .into_inner();
            print_json(&json!({
                "is_menu_open": answer.is_menu_open,
                "button": answer.button.iter().map(selfmenu_json).collect::<Vec<_>>(),
            }))
        }
        MenuCommand::TryMatch { account, user } => {
            let answer = menus
                .try_match(pb::MenusTryMatchRequest {
                    account_id: account,
                    user_id: user,
                })
                .await
                .map_err(fail)?
                .into_inner();
            print_json(&json!({
                "button": answer.button.iter().map(button_json).collect::<Vec<_>>(),
            }))
        }
        MenuCommand::AddConditional { account, file } => {
            let menu = read_json(&file)?;
            let button = buttons_of(&menu, "button")?;
            let matchrule = menu
                .get("matchrule")
                .ok_or_else(|| {
                    Failure::usage(format!(
                        "{}: a conditional menu needs a `matchrule` object",
                        file.display()
                    ))
                })
                .and_then(matchrule_of)?;
            let answer = menus
                .add_conditional(pb::MenusAddConditionalRequest {
                    account_id: account,
                    button,
                    matchrule: Some(matchrule),
                })
                .await
                .map_err(fail)?
                .into_inner();
            println_checked(&format!("conditional menu added: menuid {}", answer.menuid))
        }
        MenuCommand::DeleteConditional { account, menuid } => {
            menus
                .delete_conditional(pb::MenusDeleteConditionalRequest {
                    account_id: account,
                    menuid,
                })
                .await
                .map_err(fail)?;
            println_checked("conditional menu deleted")
        }
    }
}

fn read_json(file: &std::path::Path) -> Result<Value, Failure> {
    let bytes = read_file(file, "the menu file")?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Failure::usage(format!("{}: not JSON: {e}", file.display())))
}

const TYPES: [(&str, T); 13] = [
    ("click", T::Click),
    ("view", T::View),
    ("scancode_push", T::ScancodePush),
    ("scancode_waitmsg", T::ScancodeWaitmsg),
    ("pic_sysphoto", T::PicSysphoto),
    ("pic_photo_or_album", T::PicPhotoOrAlbum),
    ("pic_weixin", T::PicWeixin),
    ("location_select", T::LocationSelect),
    ("media_id", T::MediaId),
    ("view_limited", T::ViewLimited),
    ("article_id", T::ArticleId),
    ("article_view_limited", T::ArticleViewLimited),
    ("miniprogram", T::Miniprogram),
];

/// The buttons under `field` of a menu object; errors name the button (`button[1].sub_button[0]`).
pub fn buttons_of(menu: &Value, field: &str) -> Result<Vec<pb::MenuButton>, Failure> {
    let list = menu
        .get(field)
        .and_then(Value::as_array)
        .ok_or_else(|| Failure::usage(format!("the menu needs a `{field}` array")))?;
    list.iter()
        .enumerate()
        .map(|(i, b)| button_of(b, &format!("{field}[{i}]")))
        .collect()
}

fn button_of(value: &Value, at: &str) -> Result<pb::MenuButton, Failure> {
    let object = value
        .as_object()
        .ok_or_else(|| Failure::usage(format!("{at}: a button is an object")))?;
    let text = |name: &str| -> Result<String, Failure> {
        match object.get(name) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(Failure::usage(format!("{at}.{name}: must be a string"))),
        }
    };
    let kind = text("type")?;
    let button_type = if kind.is_empty() {
        T::Unspecified
    } else {
        TYPES
            .iter()
            .find(|(name, _)| *name == kind)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                Failure::usage(format!(
                    "{at}.type: unknown button type {kind:?}; one of {}",
                    TYPES.map(|(name, _)| name).join(", ")
                ))
            })?
    };
    // WeChat's own `get` answers nest sub-buttons as `{"list": [...]}`.
    let sub = match object.get("sub_button") {
        Some(Value::Object(o)) => o.get("list").cloned().unwrap_or(Value::Array(Vec::new())),
        Some(other) => other.clone(),
        None => Value::Array(Vec::new()),
    };
    let sub_button = match sub {
        Value::Array(list) => list
            .iter()
            .enumerate()
            .map(|(i, b)| button_of(b, &format!("{at}.sub_button[{i}]")))
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(Failure::usage(format!("{at}.sub_button: must be an array"))),
    };
    Ok(pb::MenuButton {
        r#type: button_type.into(),
        name: text("name")?,
        key: text("key")?,
        url: text("url")?,
        media_id: text("media_id")?,
        appid: text("appid")?,
        pagepath: text("pagepath")?,
        article_id: text("article_id")?,
        sub_button,
    })
}

/// Adds each `(name, value)` whose value is not empty to `object`.
fn insert_nonempty(object: &mut Map<String, Value>, fields: &[(&str, &String)]) {
    for (name, value) in fields {
        if !value.is_empty() {
            object.insert((*name).into(), json!(value));
        }
    }
}

/// A button in WeChat's JSON shape, empty fields left out.
pub fn button_json(button: &pb::MenuButton) -> Value {
    let mut object = Map::new();
    if let Some((name, _)) = TYPES.iter().find(|(_, t)| i32::from(*t) == button.r#type) {
        object.insert("type".into(), json!(name));
    }
    insert_nonempty(
        &mut object,
        &[
            ("name", &button.name),
            ("key", &button.key),
            ("url", &button.url),
            ("media_id", &button.media_id),
            ("appid", &button.appid),
            ("pagepath", &button.pagepath),
            ("article_id", &button.article_id),
        ],
    );
    if !button.sub_button.is_empty() {
        object.insert(
            "sub_button".into(),
            Value::Array(button.sub_button.iter().map(button_json).collect()),
        );
    }
    Value::Object(object)
}

fn matchrule_of(value: &Value) -> Result<pb::MenuMatchRule, Failure> {
    let text = |name: &str| -> Result<String, Failure> {
        match value.get(name) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            Some(_) => Err(Failure::usage(format!(
                "matchrule.{name}: must be a string"
            ))),
        }
    };
    let platform = text("client_platform_type")?;
    Ok(pb::MenuMatchRule {
        tag_id: text("tag_id")?,
        client_platform_type: if platform.is_empty() {
            0
        } else {
            platform.parse().map_err(|_| {
                Failure::usage("matchrule.client_platform_type: must be 1 (iOS), 2 (Android) or 3")
            })?
        },
        sex: text("sex")?,
        country: text("country")?,
        province: text("province")?,
        city: text("city")?,
        language: text("language")?,
    })
}

fn matchrule_json(rule: &pb::MenuMatchRule) -> Value {
    let mut object = Map::new();
    insert_nonempty(
        &mut object,
        &[
            ("tag_id", &rule.tag_id),
            ("sex", &rule.sex),
            ("country", &rule.country),
            ("province", &rule.province),
            ("city", &rule.city),
            ("language", &rule.language),
        ],
    );
    if rule.client_platform_type != 0 {
        object.insert(
            "client_platform_type".into(),
            json!(rule.client_platform_type.to_string()),
        );
    }
    Value::Object(object)
}

fn selfmenu_json(button: &pb::SelfmenuButton) -> Value {
    let mut object = Map::new();
    insert_nonempty(
        &mut object,
        &[
            ("type", &button.r#type),
            ("name", &button.name),
            ("key", &button.key),
            ("url", &button.url),
            ("value", &button.value),
            ("appid", &button.appid),
            ("pagepath", &button.pagepath),
            ("media_id", &button.media_id),
            ("article_id", &button.article_id),
        ],
    );
    if !button.sub_button.is_empty() {
        object.insert(
            "sub_button".into(),
            Value::Array(button.sub_button.iter().map(selfmenu_json).collect()),
        );
    }
    if !button.news_info.is_empty() {
        object.insert(
            "news_info".into(),
            Value::Array(
                button
                    .news_info
                    .iter()
                    .map(|n| {
                        json!({
                            "title": n.title, "author": n.author, "digest": n.digest,
                            "show_cover": n.show_cover, "cover_url": n.cover_url,
                            "content_url": n.content_url, "source_url": n.source_url,
                        })
                    })
                    .collect(),
            ),
        );
    }
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_menu_round_trips_through_wechats_shape() {
        let menu = json!({"button": [
            {"type": "click", "name": "今日歌曲", "key": "V1001_TODAY_MUSIC"},
            {"name": "菜单", "sub_button": [
                {"type": "view", "name": "搜索", "url": "http://www.soso.com/"},
                {"type": "miniprogram", "name": "wxa", "url": "http://mp.weixin.qq.com",
                 "appid": "wx286b93c14bbf93aa", "pagepath": "pages/lunar/index"}
            ]}
        ]});
        let buttons = buttons_of(&menu, "button").unwrap();
        assert_eq!(buttons[0].r#type, i32::from(T::Click));
        assert_eq!(buttons[1].sub_button.len(), 2);
        let back: Vec<Value> = buttons.iter().map(button_json).collect();
        assert_eq!(json!({ "button": back }), menu);
    }

    #[test]
    fn errors_name_the_button() {
        let menu = json!({"button": [{"name": "x", "sub_button": [{"type": "tap", "name": "y"}]}]});
        let error = buttons_of(&menu, "button").unwrap_err().to_string();
        assert!(
            error.starts_with("button[0].sub_button[0].type: unknown button type \"tap\""),
            "{error}"
        );
        assert!(buttons_of(&json!({}), "button").is_err());
    }
}

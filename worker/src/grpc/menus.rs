//! `wxgate.v1.Menus` (docs/contract.md §5): the custom menu and conditional menus
//! (docs/protocol.md §10). Menus are checked against WeChat's limits before any call; an error
//! names the button and the limit (`button[1].sub_button[4].name: at most 60 bytes, got 61`).

use std::sync::Arc;

use serde_json::{Map, Value, json};
use tonic::{Request, Response, Status};
use wxgate_core::config::Account;
use wxgate_proto::v1::menus_server::Menus;
use wxgate_proto::v1::{
    MenuButton, MenuButtonType, MenuConditional, MenuMatchRule, MenusAddConditionalRequest,
    MenusAddConditionalResponse, MenusCreateRequest, MenusCreateResponse,
    MenusDeleteConditionalRequest, MenusDeleteConditionalResponse, MenusDeleteRequest,
    MenusDeleteResponse, MenusGetCurrentSelfmenuInfoRequest, MenusGetCurrentSelfmenuInfoResponse,
    MenusGetRequest, MenusGetResponse, MenusTryMatchRequest, MenusTryMatchResponse, SelfmenuButton,
    SelfmenuNewsItem,
};

use super::{Api, ApiError, Caller};
use crate::client::{ApiAnswer, CallError};

/// Top-level buttons a menu has, at most.
const MAX_BUTTONS: usize = 3;
/// Sub-buttons a top-level button has, at most.
const MAX_SUB_BUTTONS: usize = 5;
/// Longest top-level name, in UTF-8 bytes.
const MAX_TOP_NAME_BYTES: usize = 16;
/// Longest sub-button name, in UTF-8 bytes.
const MAX_SUB_NAME_BYTES: usize = 60;
/// Longest `key`, in bytes.
const MAX_KEY_BYTES: usize = 128;
/// Longest `url`, in bytes.
const MAX_URL_BYTES: usize = 1024;
/// Longest `user_id` for TryMatch.
const MAX_USER_ID_BYTES: usize = 64;

/// The Menus service.
pub struct MenusService {
    api: Arc<Api>,
}

impl MenusService {
    /// The service over `api`.
    pub fn new(api: Arc<Api>) -> Self {
        Self { api }
    }

    fn account<T>(&self, request: &Request<T>, account_id: &str) -> Result<Arc<Account>, ApiError> {
        Caller::of(request)?.account(&self.api.accounts, account_id)
    }

    async fn get(&self, account: &Account, path: &'static str) -> Result<ApiAnswer, ApiError> {
        self.api
            .call(account, |token| {
                let client = self.api.client.clone();
                async move { client.get(path, &[("access_token", token.expose())]).await }
            })
            .await
    }

    async fn post(
        &self,
        account: &Account,
        path: &'static str,
        body: &Value,
    ) -> Result<ApiAnswer, ApiError> {
        self.api
            .call(account, |token| {
                let client = self.api.client.clone();
                let body = body.clone();
                async move {
                    client
                        .post(path, &[("access_token", token.expose())], &body)
                        .await
                }
            })
            .await
    }
}

#[tonic::async_trait]
impl Menus for MenusService {
    async fn create(
        &self,
        request: Request<MenusCreateRequest>,
    ) -> Result<Response<MenusCreateResponse>, Status> {
        let account = self.account(&request, &request.get_ref().account_id)?;
        let buttons = buttons_json(&request.get_ref().button)?;
        self.post(
            &account,
            "/cgi-bin/menu/create",
            &json!({ "button": buttons }),
        )
        .await?;
        Ok(Response::new(MenusCreateResponse {}))
    }

    async fn get(
        &self,
        request: Request<MenusGetRequest>,
    ) -> Result<Response<MenusGetResponse>, Status> {
        let account = self.account(&request, &request.get_ref().account_id)?;
        let answer = MenusService::get(self, &account, "/cgi-bin/menu/get").await?;
        let menu = answer.body.get("menu").unwrap_or(&Value::Null);
        let conditional = answer
            .body
            .get("conditionalmenu")
            .and_then(Value::as_array)
            .map(|menus| {
                menus
                    .iter()
                    .map(|menu| MenuConditional {
                        button: buttons_of(menu.get("button")),
                        matchrule: menu.get("matchrule").map(matchrule_of),
                        menuid: menuid_of(menu.get("menuid")).unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(MenusGetResponse {
            button: buttons_of(menu.get("button")),
            menuid: menuid_of(menu.get("menuid")).unwrap_or(0),
            conditional,
        }))
    }

    async fn delete(
        &self,
        request: Request<MenusDeleteRequest>,
    ) -> Result<Response<MenusDeleteResponse>, Status> {
        let account = self.account(&request, &request.get_ref().account_id)?;
        MenusService::get(self, &account, "/cgi-bin/menu/delete").await?;
        Ok(Response::new(MenusDeleteResponse {}))
    }

    async fn add_conditional(
        &self,
        request: Request<MenusAddConditionalRequest>,
    ) -> Result<Response<MenusAddConditionalResponse>, Status> {
        let account = self.account(&request, &request.get_ref().account_id)?;
        let message = request.get_ref();
        let buttons = buttons_json(&message.button)?;
        let matchrule = matchrule_json(message.matchrule.as_ref())?;
        let answer = self
            .post(
                &account,
                "/cgi-bin/menu/addconditional",
                &json!({ "button": buttons, "matchrule": matchrule }),
            )
            .await?;
        let menuid =
            menuid_of(answer.body.get("menuid")).ok_or(ApiError::Call(CallError::BadAnswer {
                what: "the addconditional answer has no menuid",
            }))?;
        Ok(Response::new(MenusAddConditionalResponse { menuid }))
    }

    async fn delete_conditional(
        &self,
        request: Request<MenusDeleteConditionalRequest>,
    ) -> Result<Response<MenusDeleteConditionalResponse>, Status> {
        let account = self.account(&request, &request.get_ref().account_id)?;
        let menuid = request.get_ref().menuid;
        if menuid == 0 {
            return Err(ApiError::invalid("menuid", "is required").into());
        }
        self.post(
            &account,
            "/cgi-bin/menu/delconditional",
            &json!({ "menuid": menuid.to_string() }),
        )
        .await?;
        Ok(Response::new(MenusDeleteConditionalResponse {}))
    }

    async fn try_match(
        &self,
        request: Request<MenusTryMatchRequest>,
    ) -> Result<Response<MenusTryMatchResponse>, Status> {
        let account = self.account(&request, &request.get_ref().account_id)?;
        let user_id = request.get_ref().user_id.as_str();
        if user_id.is_empty() || user_id.len() > MAX_USER_ID_BYTES {
            return Err(ApiError::invalid(
                "user_id",
                format!("1 to {MAX_USER_ID_BYTES} bytes, got {}", user_id.len()),
            )
            .into());
        }
        let answer = self
            .post(
                &account,
                "/cgi-bin/menu/trymatch",
                &json!({ "user_id": user_id }),
            )
            .await?;
        // docs/protocol.md §10.1 shows `{"button": […]}`; some answers nest it in `menu`.
        let buttons = answer
            .body
            .get("button")
            .or_else(|| answer.body.get("menu").and_then(|m| m.get("button")));
        Ok(Response::new(MenusTryMatchResponse {
            button: buttons_of(buttons),
        }))
    }

    async fn get_current_selfmenu_info(
        &self,
        request: Request<MenusGetCurrentSelfmenuInfoRequest>,
    ) -> Result<Response<MenusGetCurrentSelfmenuInfoResponse>, Status> {
        let account = self.account(&request, &request.get_ref().account_id)?;
        let answer =
            MenusService::get(self, &account, "/cgi-bin/get_current_selfmenu_info").await?;
        let buttons = answer
            .body
            .get("selfmenu_info")
            .and_then(|info| info.get("button"))
            .and_then(Value::as_array)
            .map(|list| list.iter().map(selfmenu_button_of).collect())
            .unwrap_or_default();
        Ok(Response::new(MenusGetCurrentSelfmenuInfoResponse {
            is_menu_open: answer.body.get("is_menu_open").and_then(Value::as_i64) == Some(1),
            button: buttons,
        }))
    }
}

/// WeChat's name of a button type; `None` for [`MenuButtonType::Unspecified`].
fn type_name(kind: MenuButtonType) -> Option<&'static str> {
    Some(match kind {
        MenuButtonType::Unspecified => return None,
        MenuButtonType::Click => "click",
        MenuButtonType::View => "view",
        MenuButtonType::ScancodePush => "scancode_push",
        MenuButtonType::ScancodeWaitmsg => "scancode_waitmsg",
        MenuButtonType::PicSysphoto => "pic_sysphoto",
        MenuButtonType::PicPhotoOrAlbum => "pic_photo_or_album",
        MenuButtonType::PicWeixin => "pic_weixin",
        MenuButtonType::LocationSelect => "location_select",
        MenuButtonType::MediaId => "media_id",
        MenuButtonType::ViewLimited => "view_limited",
        MenuButtonType::ArticleId => "article_id",
        MenuButtonType::ArticleViewLimited => "article_view_limited",
        MenuButtonType::Miniprogram => "miniprogram",
    })
}

/// The button type WeChat calls `name`; unknown names are [`MenuButtonType::Unspecified`].
fn type_of(name: &str) -> MenuButtonType {
    match name {
        "click" => MenuButtonType::Click,
        "view" => MenuButtonType::View,
        "scancode_push" => MenuButtonType::ScancodePush,
        "scancode_waitmsg" => MenuButtonType::ScancodeWaitmsg,
        "pic_sysphoto" => MenuButtonType::PicSysphoto,
        "pic_photo_or_album" => MenuButtonType::PicPhotoOrAlbum,
        "pic_weixin" => MenuButtonType::PicWeixin,
        "location_select" => MenuButtonType::LocationSelect,
        "media_id" => MenuButtonType::MediaId,
        "view_limited" => MenuButtonType::ViewLimited,
        "article_id" => MenuButtonType::ArticleId,
        "article_view_limited" => MenuButtonType::ArticleViewLimited,
        "miniprogram" => MenuButtonType::Miniprogram,
        _ => MenuButtonType::Unspecified,
    }
}

/// The `button` array WeChat takes for `buttons`, or the first limit broken
/// (docs/protocol.md §10.2, §10.3).
fn buttons_json(buttons: &[MenuButton]) -> Result<Vec<Value>, ApiError> {
    if buttons.is_empty() || buttons.len() > MAX_BUTTONS {
        return Err(ApiError::invalid(
            "button",
            format!("1 to {MAX_BUTTONS} buttons, got {}", buttons.len()),
        ));
    }
    buttons
        .iter()
        .enumerate()
        .map(|(i, button)| {
            let path = format!("button[{i}]");
            let kind = MenuButtonType::try_from(button.r#type).map_err(|_| {
                ApiError::invalid(
                    format!("{path}.type"),
                    format!("unknown type {}", button.r#type),
                )
            })?;
            check_name(&path, &button.name, MAX_TOP_NAME_BYTES)?;
            if button.sub_button.is_empty() {
                if kind == MenuButtonType::Unspecified {
                    return Err(ApiError::invalid(
                        path,
                        format!("needs a type or 1 to {MAX_SUB_BUTTONS} sub_button"),
                    ));
                }
                return leaf_json(&path, kind, button);
            }
            if kind != MenuButtonType::Unspecified {
                return Err(ApiError::invalid(
                    path,
                    "a button has either a type or sub_button, not both",
                ));
            }
            if button.sub_button.len() > MAX_SUB_BUTTONS {
                return Err(ApiError::invalid(
                    format!("{path}.sub_button"),
                    format!(
                        "at most {MAX_SUB_BUTTONS} sub-buttons, got {}",
                        button.sub_button.len()
                    ),
                ));
            }
            let subs = button
                .sub_button
                .iter()
                .enumerate()
                .map(|(j, sub)| {
                    let path = format!("{path}.sub_button[{j}]");
                    if !sub.sub_button.is_empty() {
                        return Err(ApiError::invalid(
                            format!("{path}.sub_button"),
                            "menus have two levels only: a sub-button has no sub_button",
                        ));
                    }
                    let kind = MenuButtonType::try_from(sub.r#type).map_err(|_| {
                        ApiError::invalid(
                            format!("{path}.type"),
                            format!("unknown type {}", sub.r#type),
                        )
                    })?;
                    check_name(&path, &sub.name, MAX_SUB_NAME_BYTES)?;
                    if kind == MenuButtonType::Unspecified {
                        return Err(ApiError::invalid(format!("{path}.type"), "is required"));
                    }
                    leaf_json(&path, kind, sub)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(json!({ "name": button.name, "sub_button": subs }))
        })
        .collect()
}

fn check_name(path: &str, name: &str, max: usize) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::invalid(format!("{path}.name"), "is required"));
    }
    if name.len() > max {
        return Err(ApiError::invalid(
            format!("{path}.name"),
            format!("at most {max} bytes, got {}", name.len()),
        ));
    }
    Ok(())
}

/// `field` of the button at `path` must be non-empty and at most `max` bytes (`None`: no
/// documented limit).
fn required(path: &str, field: &str, value: &str, max: Option<usize>) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::invalid(
            format!("{path}.{field}"),
            "is required for this type",
        ));
    }
    if let Some(max) = max.filter(|max| value.len() > *max) {
        return Err(ApiError::invalid(
            format!("{path}.{field}"),
            format!("at most {max} bytes, got {}", value.len()),
        ));
    }
    Ok(())
}

/// An actionable button's JSON: its name, type and the fields its type needs.
fn leaf_json(path: &str, kind: MenuButtonType, button: &MenuButton) -> Result<Value, ApiError> {
    let mut map = Map::new();
    map.insert("type".into(), json!(type_name(kind)));
    map.insert("name".into(), json!(button.name));
    match kind {
        MenuButtonType::Click
        | MenuButtonType::ScancodePush
        | MenuButtonType::ScancodeWaitmsg
        | MenuButtonType::PicSysphoto
        | MenuButtonType::PicPhotoOrAlbum
        | MenuButtonType::PicWeixin
        | MenuButtonType::LocationSelect => {
            required(path, "key", &button.key, Some(MAX_KEY_BYTES))?;
            map.insert("key".into(), json!(button.key));
        }
        MenuButtonType::View | MenuButtonType::Miniprogram => {
            required(path, "url", &button.url, Some(MAX_URL_BYTES))?;
            if !(button.url.starts_with("http://") || button.url.starts_with("https://")) {
                return Err(ApiError::invalid(
                    format!("{path}.url"),
                    "must start with http:// or https://",
                ));
            }
            map.insert("url".into(), json!(button.url));
            if kind == MenuButtonType::Miniprogram {
                required(path, "appid", &button.appid, None)?;
                required(path, "pagepath", &button.pagepath, None)?;
                map.insert("appid".into(), json!(button.appid));
                map.insert("pagepath".into(), json!(button.pagepath));
            }
        }
        MenuButtonType::MediaId | MenuButtonType::ViewLimited => {
            required(path, "media_id", &button.media_id, None)?;
            map.insert("media_id".into(), json!(button.media_id));
        }
        MenuButtonType::ArticleId | MenuButtonType::ArticleViewLimited => {
            required(path, "article_id", &button.article_id, None)?;
            map.insert("article_id".into(), json!(button.article_id));
        }
        MenuButtonType::Unspecified => {
            return Err(ApiError::invalid(format!("{path}.type"), "is required"));
        }
    }
    Ok(Value::Object(map))
}

/// The `matchrule` WeChat takes, or the first rule broken (docs/protocol.md §10.5).
fn matchrule_json(rule: Option<&MenuMatchRule>) -> Result<Value, ApiError> {
    let rule = rule.ok_or_else(|| ApiError::invalid("matchrule", "is required"))?;
    for (field, value) in [
        ("sex", &rule.sex),
        ("country", &rule.country),
        ("province", &rule.province),
        ("city", &rule.city),
        ("language", &rule.language),
    ] {
        if !value.is_empty() {
            return Err(ApiError::invalid(
                format!("matchrule.{field}"),
                "no longer accepted by WeChat (65320); use tag_id or client_platform_type",
            ));
        }
    }
    if !rule.tag_id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::invalid("matchrule.tag_id", "decimal digits only"));
    }
    if rule.client_platform_type > 3 {
        return Err(ApiError::invalid(
            "matchrule.client_platform_type",
            format!("0 (any) to 3, got {}", rule.client_platform_type),
        ));
    }
    if rule.tag_id.is_empty() && rule.client_platform_type == 0 {
        return Err(ApiError::invalid(
            "matchrule",
            "needs tag_id or client_platform_type",
        ));
    }
    let mut map = Map::new();
    if !rule.tag_id.is_empty() {
        map.insert("tag_id".into(), json!(rule.tag_id));
    }
    if rule.client_platform_type != 0 {
        map.insert(
            "client_platform_type".into(),
            json!(rule.client_platform_type.to_string()),
        );
    }
    Ok(Value::Object(map))
}

/// A field given as a JSON string or number, as text.
fn text(value: &Value, name: &str) -> String {
    match value.get(name) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(number)) => number.to_string(),
        _ => String::new(),
    }
}

/// A `menuid`, given as a string or a number.
fn menuid_of(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::String(text) => text.parse().ok(),
        Value::Number(number) => number.as_u64(),
        _ => None,
    }
}

/// The buttons of a `button` array WeChat answered.
fn buttons_of(buttons: Option<&Value>) -> Vec<MenuButton> {
    buttons
        .and_then(Value::as_array)
        .map(|list| list.iter().map(button_of).collect())
        .unwrap_or_default()
}

fn button_of(value: &Value) -> MenuButton {
    MenuButton {
        r#type: type_of(&text(value, "type")) as i32,
        name: text(value, "name"),
        key: text(value, "key"),
        url: text(value, "url"),
        media_id: text(value, "media_id"),
        appid: text(value, "appid"),
        pagepath: text(value, "pagepath"),
        article_id: text(value, "article_id"),
        sub_button: buttons_of(value.get("sub_button")),
    }
}

fn matchrule_of(value: &Value) -> MenuMatchRule {
    let tag_id = match text(value, "tag_id") {
        tag if tag.is_empty() => text(value, "group_id"),
        tag => tag,
    };
    MenuMatchRule {
        tag_id,
        client_platform_type: text(value, "client_platform_type").parse().unwrap_or(0),
        sex: text(value, "sex"),
        country: text(value, "country"),
        province: text(value, "province"),
        city: text(value, "city"),
        language: text(value, "language"),
    }
}

/// A button of `get_current_selfmenu_info`, where sub-buttons and news are under `list`.
fn selfmenu_button_of(value: &Value) -> SelfmenuButton {
    let list = |name: &str| {
        value
            .get(name)
            .and_then(|v| v.get("list"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    SelfmenuButton {
        r#type: text(value, "type"),
        name: text(value, "name"),
        key: text(value, "key"),
        url: text(value, "url"),
        value: text(value, "value"),
        appid: text(value, "appid"),
        pagepath: text(value, "pagepath"),
        media_id: text(value, "media_id"),
        article_id: text(value, "article_id"),
        sub_button: list("sub_button").iter().map(selfmenu_button_of).collect(),
        news_info: list("news_info")
            .iter()
            .map(|news| SelfmenuNewsItem {
                title: text(news, "title"),
                author: text(news, "author"),
                digest: text(news, "digest"),
                show_cover: text(news, "show_cover") == "1",
                cover_url: text(news, "cover_url"),
                content_url: text(news, "content_url"),
                source_url: text(news, "source_url"),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(kind: MenuButtonType, name: &str) -> MenuButton {
        MenuButton {
            r#type: kind as i32,
            name: name.into(),
            ..Default::default()
        }
    }

    fn click(name: &str) -> MenuButton {
        MenuButton {
            key: "K".into(),
            ..leaf(MenuButtonType::Click, name)
        }
    }

    fn parent(name: &str, subs: Vec<MenuButton>) -> MenuButton {
        MenuButton {
            name: name.into(),
            sub_button: subs,
            ..Default::default()
        }
    }

    fn check_err(buttons: Vec<MenuButton>, expected: &str) {
        let err = buttons_json(&buttons).unwrap_err();
        assert_eq!(err.to_string(), expected);
    }

    #[test]
    fn the_protocol_example_converts_to_wechat_json() {
        let menu = vec![
            MenuButton {
                key: "V1001_TODAY".into(),
                ..leaf(MenuButtonType::Click, "Today")
            },
            parent(
                "Menu",
                vec![
                    MenuButton {
                        url: "https://www.example.com/".into(),
                        ..leaf(MenuButtonType::View, "Search")
                    },
                    MenuButton {
                        url: "https://www.example.com/".into(),
                        appid: "MINI_APPID".into(),
                        pagepath: "pages/index/index".into(),
                        ..leaf(MenuButtonType::Miniprogram, "App")
                    },
                ],
            ),
            MenuButton {
                article_id: "ARTICLE_ID".into(),
                ..leaf(MenuButtonType::ArticleViewLimited, "News")
            },
        ];
        let json = Value::Array(buttons_json(&menu).unwrap());
        assert_eq!(
            json,
            json!([
              {"type":"click","name":"Today","key":"V1001_TODAY"},
              {"name":"Menu","sub_button":[
                 {"type":"view","name":"Search","url":"https://www.example.com/"},
                 {"type":"miniprogram","name":"App","url":"https://www.example.com/","appid":"MINI_APPID","pagepath":"pages/index/index"}]},
              {"type":"article_view_limited","name":"News","article_id":"ARTICLE_ID"}])
        );
        assert_eq!(buttons_of(Some(&json)), menu);
    }

    #[test]
    fn errors_name_the_button_and_the_limit() {
        check_err(vec![], "button: 1 to 3 buttons, got 0");
        check_err(
            vec![click("a"), click("b"), click("c"), click("d")],
            "button: 1 to 3 buttons, got 4",
        );
        check_err(
            vec![click(&"x".repeat(17))],
            "button[0].name: at most 16 bytes, got 17",
        );
        check_err(vec![click("")], "button[0].name: is required");
        check_err(
            vec![
                click("a"),
                parent("M", (0..6).map(|i| click(&i.to_string())).collect()),
            ],
            "button[1].sub_button: at most 5 sub-buttons, got 6",
        );
        let mut subs: Vec<MenuButton> = (0..4).map(|i| click(&i.to_string())).collect();
        subs.push(click(&"x".repeat(61)));
        check_err(
            vec![click("a"), parent("M", subs)],
            "button[1].sub_button[4].name: at most 60 bytes, got 61",
        );
        check_err(
            vec![parent("M", vec![parent("N", vec![click("c")])])],
            "button[0].sub_button[0].sub_button: menus have two levels only: a sub-button has no sub_button",
        );
        check_err(
            vec![leaf(MenuButtonType::Unspecified, "a")],
            "button[0]: needs a type or 1 to 5 sub_button",
        );
        check_err(
            vec![MenuButton {
                sub_button: vec![click("s")],
                ..click("a")
            }],
            "button[0]: a button has either a type or sub_button, not both",
        );
        check_err(
            vec![leaf(MenuButtonType::Click, "a")],
            "button[0].key: is required for this type",
        );
        check_err(
            vec![MenuButton {
                key: "k".repeat(129),
                ..leaf(MenuButtonType::Click, "a")
            }],
            "button[0].key: at most 128 bytes, got 129",
        );
        check_err(
            vec![MenuButton {
                url: format!("https://{}", "u".repeat(1017)),
                ..leaf(MenuButtonType::View, "a")
            }],
            "button[0].url: at most 1024 bytes, got 1025",
        );
        check_err(
            vec![MenuButton {
                url: "ftp://x".into(),
                ..leaf(MenuButtonType::View, "a")
            }],
            "button[0].url: must start with http:// or https://",
        );
        check_err(
            vec![MenuButton {
                url: "https://x".into(),
                appid: "wx1".into(),
                ..leaf(MenuButtonType::Miniprogram, "a")
            }],
            "button[0].pagepath: is required for this type",
        );
        check_err(
            vec![leaf(MenuButtonType::MediaId, "a")],
            "button[0].media_id: is required for this type",
        );
        check_err(
            vec![leaf(MenuButtonType::ArticleId, "a")],
            "button[0].article_id: is required for this type",
        );
        check_err(
            vec![parent("M", vec![leaf(MenuButtonType::Unspecified, "s")])],
            "button[0].sub_button[0].type: is required",
        );
        // Names count UTF-8 bytes: five Chinese characters are 15 bytes, six are 18.
        assert!(buttons_json(&[click("一二三四五")]).is_ok());
        check_err(
            vec![click("一二三四五六")],
            "button[0].name: at most 16 bytes, got 18",
        );
    }

    #[test]
    fn matchrules() {
        let rule = |tag: &str, platform: u32| MenuMatchRule {
            tag_id: tag.into(),
            client_platform_type: platform,
            ..Default::default()
        };
        assert_eq!(
            matchrule_json(Some(&rule("2", 1))).unwrap(),
            json!({"tag_id": "2", "client_platform_type": "1"})
        );
        let err = |rule: Option<&MenuMatchRule>| matchrule_json(rule).unwrap_err().to_string();
        assert_eq!(err(None), "matchrule: is required");
        assert_eq!(
            err(Some(&rule("", 0))),
            "matchrule: needs tag_id or client_platform_type"
        );
        assert_eq!(
            err(Some(&rule("", 4))),
            "matchrule.client_platform_type: 0 (any) to 3, got 4"
        );
        assert_eq!(
            err(Some(&rule("x", 0))),
            "matchrule.tag_id: decimal digits only"
        );
        let legacy = MenuMatchRule {
            sex: "1".into(),
            ..rule("2", 0)
        };
        assert!(err(Some(&legacy)).starts_with("matchrule.sex: no longer accepted"));
    }

    #[test]
    fn selfmenu_buttons_flatten_lists() {
        let value = json!({"type": "news", "name": "N", "value": "v",
            "news_info": {"list": [{"title": "T", "show_cover": 1, "content_url": "u"}]},
            "sub_button": {"list": [{"type": "text", "name": "t", "value": "hello"}]}});
        let button = selfmenu_button_of(&value);
        assert_eq!(button.news_info.len(), 1);
        assert!(button.news_info[0].show_cover);
        assert_eq!(button.sub_button[0].value, "hello");
    }
}

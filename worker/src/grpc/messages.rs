//! `wxgate.v1.Messages` (docs/contract.md §5): customer-service messages and typing
//! (docs/protocol.md §6), templates (§7) and mass sends (§8).
//!
//! Every request is checked before WeChat is called (INVALID_ARGUMENT naming the field and
//! the limit), converted from the wire types to WeChat's JSON here and nowhere else, and sent
//! through [`Api::call`]. A WeChat `45065` (the idempotency key was used already) is an
//! answer, not an error: the RPC succeeds with `already_sent`.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use tonic::{Request, Response, Status};
use wxgate_core::config::Account;
use wxgate_proto::v1 as pb;
use wxgate_proto::v1::messages_server::Messages;

use super::{Api, ApiError, Caller};
use crate::client::{ApiAnswer, CallError};
use crate::custom::{
    ArticleId, Card, CustomBody, CustomMessage, Media, MiniProgramPage, MsgMenu, MsgMenuItem,
    Music, News, NewsArticle, TextContent, Video,
};

/// WeChat's "this idempotency key already led to a send" (docs/protocol.md §8.2, §13).
pub const ALREADY_SENT: i64 = 45065;
/// Longest text content, in bytes (docs/protocol.md §4.1: WeChat's practical limit; `45002`).
pub const MAX_TEXT_BYTES: usize = 2048;
/// Longest idempotency key (`client_msg_id`, `clientmsgid`), in bytes (docs/protocol.md §8.2).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 64;
/// OpenIDs of an OpenID-list mass send (docs/protocol.md §8.3).
pub const MASS_OPENIDS: std::ops::RangeInclusive<usize> = 2..=10_000;

const MAX_ID_BYTES: usize = 256;
const MAX_TITLE_BYTES: usize = 1024;
const MAX_DESCRIPTION_BYTES: usize = 2048;
const MAX_URL_BYTES: usize = 1024;
const MAX_OPENID_BYTES: usize = 64;
const MAX_APPID_BYTES: usize = 64;
const MAX_MENU_ITEMS: usize = 10;
const MAX_TEMPLATE_ID_BYTES: usize = 64;
const MAX_TEMPLATE_FIELDS: usize = 64;
const MAX_TEMPLATE_VALUE_BYTES: usize = 1024;
const MAX_MASS_IMAGES: usize = 20;

/// The Messages service.
pub struct MessagesService {
    api: Arc<Api>,
}

impl MessagesService {
    /// The service over `api`.
    pub fn new(api: Arc<Api>) -> Self {
        Self { api }
    }

    fn account<T>(&self, request: &Request<T>, account_id: &str) -> Result<Arc<Account>, Status> {
        let caller = Caller::of(request)?;
        Ok(caller.account(&self.api.accounts, account_id)?)
    }

    /// POSTs `body` to `path` for `account`; a `45065` answer counts as success.
    async fn post(&self, account: &Account, path: &str, body: &Value) -> Result<ApiAnswer, Status> {
        let client = &self.api.client;
        let answer = self
            .api
            .call(account, |token| async move {
                let answer = client
                    .post(path, &[("access_token", token.expose())], body)
                    .await?;
                Ok::<_, CallError>(accept_already_sent(answer))
            })
            .await?;
        Ok(answer)
    }
}

/// A `45065` answer as a success; its `body` keeps the real errcode (see [`wechat_errcode`]).
fn accept_already_sent(mut answer: ApiAnswer) -> ApiAnswer {
    if answer.errcode == ALREADY_SENT {
        answer.errcode = 0;
    }
    answer
}

/// The errcode WeChat really answered (0 when absent).
fn wechat_errcode(answer: &ApiAnswer) -> i64 {
    answer
        .body
        .get("errcode")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// A numeric id of an answer (`msgid`, `msg_id`), given by WeChat as a number or a string.
fn answer_id(answer: &ApiAnswer, name: &str) -> u64 {
    match answer.body.get(name) {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

#[tonic::async_trait]
impl Messages for MessagesService {
    async fn send_custom(
        &self,
        request: Request<pb::SendCustomRequest>,
    ) -> Result<Response<pb::SendCustomResponse>, Status> {
        let account = self.account(&request, &request.get_ref().account_id)?;
        let message = custom_message(request.get_ref())?;
        let client = &self.api.client;
        let message = &message;
        let answer = self
            .api
            .call(&account, |token| async move {
                client.custom_send(&token, message).await
            })
            .await?;
        Ok(Response::new(pb::SendCustomResponse {
            errcode: answer.errcode,
            errmsg: answer.errmsg,
        }))
    }

    async fn typing(
        &self,
        request: Request<pb::TypingRequest>,
    ) -> Result<Response<pb::TypingResponse>, Status> {
        let account = self.account(&request, &request.get_ref().account_id)?;
        let typing = request.get_ref();
        openid("touser", &typing.touser)?;
        let on = match pb::TypingCommand::try_from(typing.command) {
            Ok(pb::TypingCommand::Typing) => true,
            Ok(pb::TypingCommand::Cancel) => false,
            _ => {
                return Err(ApiError::invalid("command", "must be TYPING or CANCEL").into());
            }
        };
        let client = &self.api.client;
        let touser = typing.touser.as_str();
        let answer = self
            .api
            .call(&account, |token| async move {
                client.custom_typing(&token, touser, on).await
            })
            .await?;
        Ok(Response::new(pb::TypingResponse {
            errcode: answer.errcode,
            errmsg: answer.errmsg,
        }))
    }

    async fn send_template(
        &self,
        request: Request<pb::SendTemplateRequest>,
    ) -> Result<Response<pb::SendTemplateResponse>, Status> {
        let account = self.account(&request, &request.get_ref().account_id)?;
        let body = template_body(request.get_ref())?;
        let answer = self
            .post(&account, "/cgi-bin/message/template/send", &body)
            .await?;
        let errcode = wechat_errcode(&answer);
        Ok(Response::new(pb::SendTemplateResponse {
            msgid: answer_id(&answer, "msgid"),
            errcode,
            errmsg: answer.errmsg,
            already_sent: errcode == ALREADY_SENT,
        }))
    }

    async fn send_mass(
        &self,
        request: Request<pb::SendMassRequest>,
    ) -> Result<Response<pb::SendMassResponse>, Status> {
        let account = self.account(&request, &request.get_ref().account_id)?;
        let (path, body) = mass_body(request.get_ref())?;
        let answer = self.post(&account, path, &body).await?;
        let errcode = wechat_errcode(&answer);
        Ok(Response::new(pb::SendMassResponse {
            msg_id: answer_id(&answer, "msg_id"),
            msg_data_id: answer_id(&answer, "msg_data_id"),
            errcode,
            errmsg: answer.errmsg,
            already_sent: errcode == ALREADY_SENT,
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Checks shared with the Media service.

/// `value` is 1 to `max` bytes.
pub(crate) fn required(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::invalid(field, "is required"));
    }
    at_most(field, value, max)
}

/// `value` is at most `max` bytes.
pub(crate) fn at_most(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.len() > max {
        return Err(ApiError::invalid(
            field,
            format!("is {} bytes, at most {max} allowed", value.len()),
        ));
    }
    Ok(())
}

/// An OpenID: 1 to 64 characters of `[A-Za-z0-9_-]`.
fn openid(field: &str, value: &str) -> Result<(), ApiError> {
    required(field, value, MAX_OPENID_BYTES)?;
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ApiError::invalid(
            field,
            "is not an OpenID (letters, digits, `_` and `-` only)",
        ));
    }
    Ok(())
}

fn optional(field: &str, value: Option<&String>, max: usize) -> Result<(), ApiError> {
    value.map_or(Ok(()), |value| at_most(field, value, max))
}

/// `prefix@account`, prefix 1 to 10 ASCII letters or digits (docs/protocol.md §6.1).
fn kf_account(value: &str) -> Result<(), ApiError> {
    let valid = value.split_once('@').is_some_and(|(prefix, account)| {
        (1..=10).contains(&prefix.len())
            && prefix.bytes().all(|b| b.is_ascii_alphanumeric())
            && !account.is_empty()
            && account.len() <= MAX_OPENID_BYTES
    });
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "kf_account",
            "must be `prefix@account_wechat_id` with a prefix of 1 to 10 letters or digits",
        ))
    }
}

fn text(field: &str, content: &str) -> Result<(), ApiError> {
    required(field, content, MAX_TEXT_BYTES)
}

fn media_id(field: &str, value: &str) -> Result<Media, ApiError> {
    required(field, value, MAX_ID_BYTES)?;
    Ok(Media {
        media_id: value.to_owned(),
    })
}

// ---------------------------------------------------------------------------------------------
// SendCustom

/// The `custom/send` message of a request, checked (docs/protocol.md §6.2).
pub(crate) fn custom_message(request: &pb::SendCustomRequest) -> Result<CustomMessage, ApiError> {
    use pb::send_custom_request::Message as M;
    openid("touser", &request.touser)?;
    let body = match &request.message {
        None => {
            return Err(ApiError::invalid(
                "message",
                "is required: set one of text, image, voice, video, music, news, mpnews, mpnewsarticle, msgmenu, wxcard, miniprogrampage",
            ));
        }
        Some(M::Text(t)) => {
            text("text.content", &t.content)?;
            CustomBody::Text {
                text: TextContent {
                    content: t.content.clone(),
                },
            }
        }
        Some(M::Image(m)) => CustomBody::Image {
            image: media_id("image.media_id", &m.media_id)?,
        },
        Some(M::Voice(m)) => CustomBody::Voice {
            voice: media_id("voice.media_id", &m.media_id)?,
        },
        Some(M::Mpnews(m)) => CustomBody::Mpnews {
            mpnews: media_id("mpnews.media_id", &m.media_id)?,
        },
        Some(M::Video(v)) => {
            media_id("video.media_id", &v.media_id)?;
            optional(
                "video.thumb_media_id",
                v.thumb_media_id.as_ref(),
                MAX_ID_BYTES,
            )?;
            optional("video.title", v.title.as_ref(), MAX_TITLE_BYTES)?;
            optional(
                "video.description",
                v.description.as_ref(),
                MAX_DESCRIPTION_BYTES,
            )?;
            CustomBody::Video {
                video: Video {
                    media_id: v.media_id.clone(),
                    thumb_media_id: v.thumb_media_id.clone(),
                    title: v.title.clone(),
                    description: v.description.clone(),
                },
            }
        }
        Some(M::Music(m)) => {
            media_id("music.thumb_media_id", &m.thumb_media_id)?;
            optional("music.title", m.title.as_ref(), MAX_TITLE_BYTES)?;
            optional(
                "music.description",
                m.description.as_ref(),
                MAX_DESCRIPTION_BYTES,
            )?;
            optional("music.musicurl", m.musicurl.as_ref(), MAX_URL_BYTES)?;
            optional("music.hqmusicurl", m.hqmusicurl.as_ref(), MAX_URL_BYTES)?;
            CustomBody::Music {
                music: Music {
                    title: m.title.clone(),
                    description: m.description.clone(),
                    musicurl: m.musicurl.clone(),
                    hqmusicurl: m.hqmusicurl.clone(),
                    thumb_media_id: m.thumb_media_id.clone(),
                },
            }
        }
        Some(M::News(a)) => {
            required("news.title", &a.title, MAX_TITLE_BYTES)?;
            at_most("news.description", &a.description, MAX_DESCRIPTION_BYTES)?;
            at_most("news.url", &a.url, MAX_URL_BYTES)?;
            at_most("news.picurl", &a.picurl, MAX_URL_BYTES)?;
            CustomBody::News {
                news: News {
                    articles: vec![NewsArticle {
                        title: a.title.clone(),
                        description: a.description.clone(),
                        url: a.url.clone(),
                        picurl: a.picurl.clone(),
                    }],
                },
            }
        }
        Some(M::Mpnewsarticle(a)) => {
            required("mpnewsarticle.article_id", &a.article_id, MAX_ID_BYTES)?;
            CustomBody::Mpnewsarticle {
                mpnewsarticle: ArticleId {
                    article_id: a.article_id.clone(),
                },
            }
        }
        Some(M::Msgmenu(menu)) => {
            at_most("msgmenu.head_content", &menu.head_content, MAX_TITLE_BYTES)?;
            at_most("msgmenu.tail_content", &menu.tail_content, MAX_TITLE_BYTES)?;
            if menu.list.is_empty() || menu.list.len() > MAX_MENU_ITEMS {
                return Err(ApiError::invalid(
                    "msgmenu.list",
                    format!(
                        "has {} items, 1 to {MAX_MENU_ITEMS} allowed",
                        menu.list.len()
                    ),
                ));
            }
            let mut list = Vec::with_capacity(menu.list.len());
            for (i, item) in menu.list.iter().enumerate() {
                required(&format!("msgmenu.list[{i}].id"), &item.id, 64)?;
                required(&format!("msgmenu.list[{i}].content"), &item.content, 256)?;
                list.push(MsgMenuItem {
                    id: item.id.clone(),
                    content: item.content.clone(),
                });
            }
            CustomBody::Msgmenu {
                msgmenu: MsgMenu {
                    head_content: menu.head_content.clone(),
                    list,
                    tail_content: menu.tail_content.clone(),
                },
            }
        }
        Some(M::Wxcard(card)) => {
            required("wxcard.card_id", &card.card_id, MAX_ID_BYTES)?;
            CustomBody::Wxcard {
                wxcard: Card {
                    card_id: card.card_id.clone(),
                },
            }
        }
        Some(M::Miniprogrampage(page)) => {
            at_most("miniprogrampage.title", &page.title, MAX_TITLE_BYTES)?;
            required("miniprogrampage.appid", &page.appid, MAX_APPID_BYTES)?;
            required("miniprogrampage.pagepath", &page.pagepath, MAX_URL_BYTES)?;
            media_id("miniprogrampage.thumb_media_id", &page.thumb_media_id)?;
            CustomBody::Miniprogrampage {
                miniprogrampage: MiniProgramPage {
                    title: page.title.clone(),
                    appid: page.appid.clone(),
                    pagepath: page.pagepath.clone(),
                    thumb_media_id: page.thumb_media_id.clone(),
                },
            }
        }
    };
    let message = CustomMessage::new(request.touser.clone(), body);
    match &request.kf_account {
        Some(agent) => {
            kf_account(agent)?;
            Ok(message.as_agent(agent.clone()))
        }
        None => Ok(message),
    }
}

// ---------------------------------------------------------------------------------------------
// SendTemplate

/// The `template/send` body of a request, checked (docs/protocol.md §7.1).
fn template_body(request: &pb::SendTemplateRequest) -> Result<Value, ApiError> {
    openid("touser", &request.touser)?;
    required("template_id", &request.template_id, MAX_TEMPLATE_ID_BYTES)?;
    let mut body = Map::new();
    body.insert("touser".into(), json!(request.touser));
    body.insert("template_id".into(), json!(request.template_id));
    if let Some(url) = &request.url {
        required("url", url, MAX_URL_BYTES)?;
        body.insert("url".into(), json!(url));
    }
    if let Some(mini) = &request.miniprogram {
        required("miniprogram.appid", &mini.appid, MAX_APPID_BYTES)?;
        at_most("miniprogram.pagepath", &mini.pagepath, MAX_URL_BYTES)?;
        body.insert(
            "miniprogram".into(),
            json!({"appid": mini.appid, "pagepath": mini.pagepath}),
        );
    }
    if request.data.is_empty() || request.data.len() > MAX_TEMPLATE_FIELDS {
        return Err(ApiError::invalid(
            "data",
            format!(
                "has {} entries, 1 to {MAX_TEMPLATE_FIELDS} allowed",
                request.data.len()
            ),
        ));
    }
    let mut data = Map::new();
    for (key, field) in &request.data {
        required("data key", key, 64)?;
        required(
            &format!("data[{key}].value"),
            &field.value,
            MAX_TEMPLATE_VALUE_BYTES,
        )?;
        let mut entry = Map::new();
        entry.insert("value".into(), json!(field.value));
        if let Some(color) = &field.color {
            if !is_colour(color) {
                return Err(ApiError::invalid(
                    format!("data[{key}].color"),
                    "must be #RRGGBB",
                ));
            }
            entry.insert("color".into(), json!(color));
        }
        data.insert(key.clone(), Value::Object(entry));
    }
    body.insert("data".into(), Value::Object(data));
    if !request.client_msg_id.is_empty() {
        at_most(
            "client_msg_id",
            &request.client_msg_id,
            MAX_IDEMPOTENCY_KEY_BYTES,
        )?;
        body.insert("client_msg_id".into(), json!(request.client_msg_id));
    }
    Ok(Value::Object(body))
}

/// `#RRGGBB`.
fn is_colour(value: &str) -> bool {
    value
        .strip_prefix('#')
        .is_some_and(|hex| hex.len() == 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

// ---------------------------------------------------------------------------------------------
// SendMass

/// The endpoint and body of a mass request, checked (docs/protocol.md §8.2–§8.4).
fn mass_body(request: &pb::SendMassRequest) -> Result<(&'static str, Value), ApiError> {
    use pb::send_mass_request::Target as T;
    let mut body = mass_content(request)?;
    let preview = matches!(
        request.target,
        Some(T::PreviewOpenid(_) | T::PreviewWxname(_))
    );
    let path = match &request.target {
        None => {
            return Err(ApiError::invalid(
                "target",
                "is required: set one of to_all, tag_id, openids, preview_openid, preview_wxname",
            ));
        }
        Some(T::ToAll(false)) => {
            return Err(ApiError::invalid(
                "to_all",
                "must be true (use tag_id or openids to narrow)",
            ));
        }
        Some(T::ToAll(true)) => {
            body.insert("filter".into(), json!({"is_to_all": true}));
            "/cgi-bin/message/mass/sendall"
        }
        Some(T::TagId(tag)) => {
            body.insert("filter".into(), json!({"is_to_all": false, "tag_id": tag}));
            "/cgi-bin/message/mass/sendall"
        }
        Some(T::Openids(list)) => {
            if !MASS_OPENIDS.contains(&list.openids.len()) {
                return Err(ApiError::invalid(
                    "openids.openids",
                    format!(
                        "has {} OpenIDs, {} to {} allowed",
                        list.openids.len(),
                        MASS_OPENIDS.start(),
                        MASS_OPENIDS.end()
                    ),
                ));
            }
            for (i, id) in list.openids.iter().enumerate() {
                openid(&format!("openids.openids[{i}]"), id)?;
            }
            body.insert("touser".into(), json!(list.openids));
            "/cgi-bin/message/mass/send"
        }
        Some(T::PreviewOpenid(id)) => {
            openid("preview_openid", id)?;
            body.insert("touser".into(), json!(id));
            "/cgi-bin/message/mass/preview"
        }
        Some(T::PreviewWxname(name)) => {
            required("preview_wxname", name, 64)?;
            body.insert("towxname".into(), json!(name));
            "/cgi-bin/message/mass/preview"
        }
    };
    if !preview {
        if matches!(
            request.message,
            Some(pb::send_mass_request::Message::Mpnews(_))
        ) {
            body.insert(
                "send_ignore_reprint".into(),
                json!(i32::from(request.send_ignore_reprint)),
            );
        }
        if !request.clientmsgid.is_empty() {
            at_most(
                "clientmsgid",
                &request.clientmsgid,
                MAX_IDEMPOTENCY_KEY_BYTES,
            )?;
            body.insert("clientmsgid".into(), json!(request.clientmsgid));
        }
    }
    Ok((path, Value::Object(body)))
}

/// `msgtype` and its object of a mass message.
fn mass_content(request: &pb::SendMassRequest) -> Result<Map<String, Value>, ApiError> {
    use pb::send_mass_request::Message as M;
    let list_send = matches!(
        request.target,
        Some(pb::send_mass_request::Target::Openids(_))
    );
    let (msgtype, key, object) = match &request.message {
        None => {
            return Err(ApiError::invalid(
                "message",
                "is required: set one of mpnews, text, voice, image, mpvideo, wxcard",
            ));
        }
        Some(M::Mpnews(m)) => (
            "mpnews",
            "mpnews",
            json!(media_id("mpnews.media_id", &m.media_id)?),
        ),
        Some(M::Voice(m)) => (
            "voice",
            "voice",
            json!(media_id("voice.media_id", &m.media_id)?),
        ),
        Some(M::Text(t)) => {
            text("text.content", &t.content)?;
            ("text", "text", json!({"content": t.content}))
        }
        Some(M::Image(images)) => {
            if images.media_ids.is_empty() || images.media_ids.len() > MAX_MASS_IMAGES {
                return Err(ApiError::invalid(
                    "image.media_ids",
                    format!(
                        "has {} ids, 1 to {MAX_MASS_IMAGES} allowed",
                        images.media_ids.len()
                    ),
                ));
            }
            for (i, id) in images.media_ids.iter().enumerate() {
                required(&format!("image.media_ids[{i}]"), id, MAX_ID_BYTES)?;
            }
            optional(
                "image.recommend",
                images.recommend.as_ref(),
                MAX_DESCRIPTION_BYTES,
            )?;
            let mut object = json!({
                "media_ids": images.media_ids,
                "need_open_comment": i32::from(images.need_open_comment),
                "only_fans_can_comment": i32::from(images.only_fans_can_comment),
            });
            if let (Some(recommend), Value::Object(map)) = (&images.recommend, &mut object) {
                map.insert("recommend".into(), json!(recommend));
            }
            ("image", "images", object)
        }
        Some(M::Mpvideo(video)) => {
            required("mpvideo.media_id", &video.media_id, MAX_ID_BYTES)?;
            optional("mpvideo.title", video.title.as_ref(), MAX_TITLE_BYTES)?;
            optional(
                "mpvideo.description",
                video.description.as_ref(),
                MAX_DESCRIPTION_BYTES,
            )?;
            let mut object = Map::new();
            object.insert("media_id".into(), json!(video.media_id));
            // Title and description travel only with OpenID-list sends (docs/protocol.md §8.3).
            if list_send {
                if let Some(title) = &video.title {
                    object.insert("title".into(), json!(title));
                }
                if let Some(description) = &video.description {
                    object.insert("description".into(), json!(description));
                }
            }
            ("mpvideo", "mpvideo", Value::Object(object))
        }
        Some(M::Wxcard(card)) => {
            required("wxcard.card_id", &card.card_id, MAX_ID_BYTES)?;
            ("wxcard", "wxcard", json!({"card_id": card.card_id}))
        }
    };
    let mut body = Map::new();
    body.insert("msgtype".into(), json!(msgtype));
    body.insert(key.into(), object);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mass(target: pb::send_mass_request::Target) -> pb::SendMassRequest {
        pb::SendMassRequest {
            account_id: "demo".into(),
            target: Some(target),
            message: Some(pb::send_mass_request::Message::Mpnews(pb::MassMediaId {
                media_id: "M".into(),
            })),
            send_ignore_reprint: true,
            clientmsgid: "k1".into(),
        }
    }

    #[test]
    fn mass_targets_pick_the_endpoint_and_shape() {
        use pb::send_mass_request::Target as T;
        let (path, body) = mass_body(&mass(T::TagId(2))).unwrap();
        assert_eq!(path, "/cgi-bin/message/mass/sendall");
        assert_eq!(
            body,
            json!({"filter":{"is_to_all":false,"tag_id":2},"msgtype":"mpnews","mpnews":{"media_id":"M"},"send_ignore_reprint":1,"clientmsgid":"k1"})
        );
        let (path, body) = mass_body(&mass(T::PreviewWxname("wx".into()))).unwrap();
        assert_eq!(path, "/cgi-bin/message/mass/preview");
        assert_eq!(
            body,
            json!({"towxname":"wx","msgtype":"mpnews","mpnews":{"media_id":"M"}})
        );
        let one = T::Openids(pb::MassOpenIds {
            openids: vec!["o1".into()],
        });
        assert!(matches!(
            mass_body(&mass(one)),
            Err(ApiError::Invalid { field, .. }) if field == "openids.openids"
        ));
        assert!(mass_body(&mass(T::ToAll(false))).is_err());
    }

    #[test]
    fn colours_are_hex_triplets() {
        assert!(is_colour("#173177"));
        assert!(!is_colour("173177"));
        assert!(!is_colour("#17317"));
        assert!(!is_colour("#17317g"));
    }
}

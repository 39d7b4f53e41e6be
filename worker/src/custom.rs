//! Customer-service messages (docs/protocol.md §6.2): the JSON body of `custom/send` for every
//! `msgtype`, and the mapping from a rule's [`wechat::Reply`]. The worker's rule replies and
//! the gRPC `Messages.SendCustom` both build a [`CustomMessage`] and send it with
//! [`crate::client::WechatClient::custom_send`].

use serde::Serialize;
use wechat::Reply;

/// A `custom/send` body: `{"touser", "msgtype", "<msgtype>": {…}, "customservice"?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CustomMessage {
    /// The recipient's OpenID.
    pub touser: String,
    /// `msgtype` and its object.
    #[serde(flatten)]
    pub body: CustomBody,
    /// Send as this customer-service agent (`prefix@account`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customservice: Option<KfAccount>,
}

/// `customservice`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KfAccount {
    /// `kf_account`: `prefix@account`.
    pub kf_account: String,
}

/// The `msgtype` and its object, one variant per type of docs/protocol.md §6.2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "msgtype", rename_all = "lowercase")]
pub enum CustomBody {
    /// `text`.
    Text {
        /// The object.
        text: TextContent,
    },
    /// `image`.
    Image {
        /// The object.
        image: Media,
    },
    /// `voice`.
    Voice {
        /// The object.
        voice: Media,
    },
    /// `video`.
    Video {
        /// The object.
        video: Video,
    },
    /// `music`.
    Music {
        /// The object.
        music: Music,
    },
    /// `news`: exactly one article with an external link (more → `45008`).
    News {
        /// The object.
        news: News,
    },
    /// `mpnews`: an article page by (legacy material/draft) media id.
    Mpnews {
        /// The object.
        mpnews: Media,
    },
    /// `mpnewsarticle`: a published article by `article_id`.
    Mpnewsarticle {
        /// The object.
        mpnewsarticle: ArticleId,
    },
    /// `msgmenu`: a menu message (verified accounts only).
    Msgmenu {
        /// The object.
        msgmenu: MsgMenu,
    },
    /// `wxcard`: a card.
    Wxcard {
        /// The object.
        wxcard: Card,
    },
    /// `miniprogrampage`: a mini-program card.
    Miniprogrampage {
        /// The object.
        miniprogrampage: MiniProgramPage,
    },
}

/// `text`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TextContent {
    /// `content`; may hold `<a href="…">` links.
    pub content: String,
}

/// An object holding one `media_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Media {
    /// `media_id`.
    pub media_id: String,
}

/// `video`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Video {
    /// `media_id`.
    pub media_id: String,
    /// `thumb_media_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thumb_media_id: Option<String>,
    /// `title`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// `description`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `music`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Music {
    /// `title`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// `description`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `musicurl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub musicurl: Option<String>,
    /// `hqmusicurl`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hqmusicurl: Option<String>,
    /// `thumb_media_id` (required).
    pub thumb_media_id: String,
}

/// `news`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct News {
    /// `articles`: exactly one.
    pub articles: Vec<NewsArticle>,
}

/// One article of `news`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewsArticle {
    /// `title`.
    pub title: String,
    /// `description`.
    pub description: String,
    /// `url`: where a tap leads.
    pub url: String,
    /// `picurl`: the cover.
    pub picurl: String,
}

/// `mpnewsarticle`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArticleId {
    /// `article_id`.
    pub article_id: String,
}

/// `msgmenu`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MsgMenu {
    /// `head_content`.
    pub head_content: String,
    /// `list`: the choices.
    pub list: Vec<MsgMenuItem>,
    /// `tail_content`.
    pub tail_content: String,
}

/// One choice of `msgmenu`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MsgMenuItem {
    /// `id`, pushed back as `bizmsgmenuid` when tapped.
    pub id: String,
    /// `content`.
    pub content: String,
}

/// `wxcard`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Card {
    /// `card_id`.
    pub card_id: String,
}

/// `miniprogrampage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MiniProgramPage {
    /// `title`.
    pub title: String,
    /// `appid`: the mini program's.
    pub appid: String,
    /// `pagepath`.
    pub pagepath: String,
    /// `thumb_media_id`.
    pub thumb_media_id: String,
}

impl CustomMessage {
    /// A message of `body` to `touser`.
    pub fn new(touser: impl Into<String>, body: CustomBody) -> Self {
        Self {
            touser: touser.into(),
            body,
            customservice: None,
        }
    }

    /// A text message.
    pub fn text(touser: impl Into<String>, content: impl Into<String>) -> Self {
        Self::new(
            touser,
            CustomBody::Text {
                text: TextContent {
                    content: content.into(),
                },
            },
        )
    }

    /// An `mpnews` message (article page by media id).
    pub fn mpnews(touser: impl Into<String>, media_id: impl Into<String>) -> Self {
        Self::new(
            touser,
            CustomBody::Mpnews {
                mpnews: Media {
                    media_id: media_id.into(),
                },
            },
        )
    }

    /// An `mpnewsarticle` message (published article by `article_id`).
    pub fn mpnewsarticle(touser: impl Into<String>, article_id: impl Into<String>) -> Self {
        Self::new(
            touser,
            CustomBody::Mpnewsarticle {
                mpnewsarticle: ArticleId {
                    article_id: article_id.into(),
                },
            },
        )
    }

    /// A `wxcard` message.
    pub fn wxcard(touser: impl Into<String>, card_id: impl Into<String>) -> Self {
        Self::new(
            touser,
            CustomBody::Wxcard {
                wxcard: Card {
                    card_id: card_id.into(),
                },
            },
        )
    }

    /// Sends as customer-service agent `kf_account` (`prefix@account`).
    pub fn as_agent(mut self, kf_account: impl Into<String>) -> Self {
        self.customservice = Some(KfAccount {
            kf_account: kf_account.into(),
        });
        self
    }

    /// The customer-service messages answering with `reply`, to be sent in order: one for
    /// most replies; one `news` message per article for news, since `custom/send` takes
    /// exactly one article per message (docs/protocol.md §6.2), at most
    /// [`wechat::reply::MAX_NEWS_ARTICLES`]; none for a reply without such a form (transfer
    /// to customer service, news without articles).
    ///
    /// Each message counts against the user's window quota (docs/protocol.md §6.4: 3 after a
    /// follow or menu tap, 5 after a user message); WeChat refuses the ones beyond it.
    pub fn from_reply(touser: impl Into<String>, reply: &Reply) -> Vec<Self> {
        let touser = touser.into();
        let body = match reply {
            Reply::Text { content } => CustomBody::Text {
                text: TextContent {
                    content: content.clone(),
                },
            },
            Reply::Image { media_id } => CustomBody::Image {
                image: Media {
                    media_id: media_id.clone(),
                },
            },
            Reply::Voice { media_id } => CustomBody::Voice {
                voice: Media {
                    media_id: media_id.clone(),
                },
            },
            Reply::Video {
                media_id,
                title,
                description,
            } => CustomBody::Video {
                video: Video {
                    media_id: media_id.clone(),
                    thumb_media_id: None,
                    title: title.clone(),
                    description: description.clone(),
                },
            },
            Reply::Music {
                title,
                description,
                music_url,
                hq_music_url,
                thumb_media_id,
            } => CustomBody::Music {
                music: Music {
                    title: title.clone(),
                    description: description.clone(),
                    musicurl: music_url.clone(),
                    hqmusicurl: hq_music_url.clone(),
                    thumb_media_id: thumb_media_id.clone(),
                },
            },
            Reply::News { articles } => {
                return articles
                    .iter()
                    .take(wechat::reply::MAX_NEWS_ARTICLES)
                    .map(|article| {
                        Self::new(
                            touser.clone(),
                            CustomBody::News {
                                news: News {
                                    articles: vec![NewsArticle {
                                        title: article.title.clone(),
                                        description: article.description.clone(),
                                        url: article.url.clone(),
                                        picurl: article.pic_url.clone(),
                                    }],
                                },
                            },
                        )
                    })
                    .collect();
            }
            Reply::TransferCustomerService { .. } => return Vec::new(),
        };
        vec![Self::new(touser, body)]
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use wechat::Article;

    use super::*;

    fn check(reply: Reply, expected: Value) {
        let messages = CustomMessage::from_reply("OPENID", &reply);
        let json: Vec<Value> = messages
            .iter()
            .map(|m| serde_json::to_value(m).unwrap())
            .collect();
        let expected = match expected {
            Value::Array(all) => all,
            one => vec![one],
        };
        assert_eq!(json, expected);
    }

    #[test]
    fn replies_become_the_json_of_protocol_6_2() {
        check(
            Reply::Text {
                content: "Hello".into(),
            },
            json!({"touser":"OPENID","msgtype":"text","text":{"content":"Hello"}}),
        );
        check(
            Reply::Image {
                media_id: "M".into(),
            },
            json!({"touser":"OPENID","msgtype":"image","image":{"media_id":"M"}}),
        );
        check(
            Reply::Voice {
                media_id: "M".into(),
            },
            json!({"touser":"OPENID","msgtype":"voice","voice":{"media_id":"M"}}),
        );
        check(
            Reply::Video {
                media_id: "M".into(),
                title: Some("T".into()),
                description: None,
            },
            json!({"touser":"OPENID","msgtype":"video","video":{"media_id":"M","title":"T"}}),
        );
        check(
            Reply::Music {
                title: Some("T".into()),
                description: Some("D".into()),
                music_url: Some("U".into()),
                hq_music_url: Some("H".into()),
                thumb_media_id: "TH".into(),
            },
            json!({"touser":"OPENID","msgtype":"music","music":{"title":"T","description":"D","musicurl":"U","hqmusicurl":"H","thumb_media_id":"TH"}}),
        );
        let article = |n: &str| Article {
            title: format!("T{n}"),
            description: format!("D{n}"),
            pic_url: format!("P{n}"),
            url: format!("U{n}"),
        };
        check(
            Reply::News {
                articles: vec![article("1"), article("2")],
            },
            json!([
                {"touser":"OPENID","msgtype":"news","news":{"articles":[{"title":"T1","description":"D1","url":"U1","picurl":"P1"}]}},
                {"touser":"OPENID","msgtype":"news","news":{"articles":[{"title":"T2","description":"D2","url":"U2","picurl":"P2"}]}},
            ]),
        );
        assert!(CustomMessage::from_reply("O", &Reply::News { articles: vec![] }).is_empty());
        assert!(
            CustomMessage::from_reply("O", &Reply::TransferCustomerService { kf_account: None })
                .is_empty()
        );
    }

    #[test]
    fn other_msgtypes_serialize_with_their_object() {
        let json = |m: &CustomMessage| serde_json::to_value(m).unwrap();
        assert_eq!(
            json(&CustomMessage::mpnews("O", "M")),
            json!({"touser":"O","msgtype":"mpnews","mpnews":{"media_id":"M"}})
        );
        assert_eq!(
            json(&CustomMessage::mpnewsarticle("O", "A")),
            json!({"touser":"O","msgtype":"mpnewsarticle","mpnewsarticle":{"article_id":"A"}})
        );
        assert_eq!(
            json(&CustomMessage::wxcard("O", "C")),
            json!({"touser":"O","msgtype":"wxcard","wxcard":{"card_id":"C"}})
        );
        assert_eq!(
            json(&CustomMessage::text("O", "hi").as_agent("a@gh")),
            json!({"touser":"O","msgtype":"text","text":{"content":"hi"},"customservice":{"kf_account":"a@gh"}})
        );
        let menu = CustomMessage::new(
            "O",
            CustomBody::Msgmenu {
                msgmenu: MsgMenu {
                    head_content: "H".into(),
                    list: vec![MsgMenuItem {
                        id: "101".into(),
                        content: "Yes".into(),
                    }],
                    tail_content: "T".into(),
                },
            },
        );
        assert_eq!(
            json(&menu),
            json!({"touser":"O","msgtype":"msgmenu","msgmenu":{"head_content":"H","list":[{"id":"101","content":"Yes"}],"tail_content":"T"}})
        );
        let page = CustomMessage::new(
            "O",
            CustomBody::Miniprogrampage {
                miniprogrampage: MiniProgramPage {
                    title: "T".into(),
                    appid: "wxmini".into(),
                    pagepath: "pages/index".into(),
                    thumb_media_id: "TH".into(),
                },
            },
        );
        assert_eq!(
            json(&page),
            json!({"touser":"O","msgtype":"miniprogrampage","miniprogrampage":{"title":"T","appid":"wxmini","pagepath":"pages/index","thumb_media_id":"TH"}})
        );
    }
}

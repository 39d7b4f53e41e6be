//! Passive replies (docs/protocol.md §4): the seven reply types, rendering them as
//! reply XML, and parsing reply XML back (for the simulator).

use crate::message::{Limits, ParseError, field_of, split_repeated};
use crate::xml;

/// Most articles a news reply may carry (docs/protocol.md §4.2).
pub const MAX_NEWS_ARTICLES: usize = 8;

/// A passive reply, sent as the HTTP body of the push (docs/protocol.md §4.2).
///
/// `MediaId`s must have been uploaded beforehand. Strings may contain
/// anything; rendering drops characters XML 1.0 forbids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `text`; `content` may contain `<a href="…">…</a>` links.
    Text {
        /// `Content`.
        content: String,
    },
    /// `image`.
    Image {
        /// `Image/MediaId`.
        media_id: String,
    },
    /// `voice`.
    Voice {
        /// `Voice/MediaId`.
        media_id: String,
    },
    /// `video`.
    Video {
        /// `Video/MediaId`.
        media_id: String,
        /// `Video/Title`, left out when `None`.
        title: Option<String>,
        /// `Video/Description`, left out when `None`.
        description: Option<String>,
    },
    /// `music`.
    Music {
        /// `Music/Title`, left out when `None`.
        title: Option<String>,
        /// `Music/Description`, left out when `None`.
        description: Option<String>,
        /// `Music/MusicUrl`, left out when `None`.
        music_url: Option<String>,
        /// `Music/HQMusicUrl`, left out when `None`.
        hq_music_url: Option<String>,
        /// `Music/ThumbMediaId` (required by WeChat).
        thumb_media_id: String,
    },
    /// `news`: 1 article when answering a user message, up to 8 otherwise
    /// (docs/protocol.md §4.2); [`render`] writes whatever it is given.
    News {
        /// The `Articles/item`s.
        articles: Vec<Article>,
    },
    /// `transfer_customer_service`: hand the conversation to customer service.
    TransferCustomerService {
        /// `TransInfo/KfAccount`: one agent (`prefix@account`), or any when `None`.
        kf_account: Option<String>,
    },
}

impl Reply {
    /// The reply's `MsgType` (`text`, `image`, …, `transfer_customer_service`).
    pub fn msg_type(&self) -> &'static str {
        match self {
            Reply::Text { .. } => "text",
            Reply::Image { .. } => "image",
            Reply::Voice { .. } => "voice",
            Reply::Video { .. } => "video",
            Reply::Music { .. } => "music",
            Reply::News { .. } => "news",
            Reply::TransferCustomerService { .. } => "transfer_customer_service",
        }
    }
}

/// One item of a news reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Article {
    /// `Title`.
    pub title: String,
    /// `Description`.
    pub description: String,
    /// `PicUrl`: JPG or PNG cover.
    pub pic_url: String,
    /// `Url`: where a tap leads.
    pub url: String,
}

/// Renders the reply XML of docs/protocol.md §4.2, compact (no newlines).
///
/// `to_user` is the push's `FromUserName` (the user), `from_user` its
/// `ToUserName` (the account), `create_time` Unix seconds. Strings go in
/// CDATA with `]]>` split and XML-forbidden characters removed.
/// `ArticleCount` is the number of articles given. Encrypt the result with
/// [`crate::seal_reply`] when the push was encrypted.
pub fn render(reply: &Reply, to_user: &str, from_user: &str, create_time: i64) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("<xml>");
    cdata_element(&mut out, "ToUserName", to_user);
    cdata_element(&mut out, "FromUserName", from_user);
    out.push_str("<CreateTime>");
    out.push_str(&create_time.to_string());
    out.push_str("</CreateTime>");
    cdata_element(&mut out, "MsgType", reply.msg_type());
    match reply {
        Reply::Text { content } => cdata_element(&mut out, "Content", content),
        Reply::Image { media_id } => {
            out.push_str("<Image>");
            cdata_element(&mut out, "MediaId", media_id);
            out.push_str("</Image>");
        }
        Reply::Voice { media_id } => {
            out.push_str("<Voice>");
            cdata_element(&mut out, "MediaId", media_id);
            out.push_str("</Voice>");
        }
        Reply::Video {
            media_id,
            title,
            description,
        } => {
            out.push_str("<Video>");
            cdata_element(&mut out, "MediaId", media_id);
            optional_element(&mut out, "Title", title.as_deref());
            optional_element(&mut out, "Description", description.as_deref());
            out.push_str("</Video>");
        }
        Reply::Music {
            title,
            description,
            music_url,
            hq_music_url,
            thumb_media_id,
        } => {
            out.push_str("<Music>");
            optional_element(&mut out, "Title", title.as_deref());
            optional_element(&mut out, "Description", description.as_deref());
            optional_element(&mut out, "MusicUrl", music_url.as_deref());
            optional_element(&mut out, "HQMusicUrl", hq_music_url.as_deref());
            cdata_element(&mut out, "ThumbMediaId", thumb_media_id);
            out.push_str("</Music>");
        }
        Reply::News { articles } => {
            out.push_str("<ArticleCount>");
            out.push_str(&articles.len().to_string());
            out.push_str("</ArticleCount><Articles>");
            for article in articles {
                out.push_str("<item>");
                cdata_element(&mut out, "Title", &article.title);
                cdata_element(&mut out, "Description", &article.description);
                cdata_element(&mut out, "PicUrl", &article.pic_url);
                cdata_element(&mut out, "Url", &article.url);
                out.push_str("</item>");
            }
            out.push_str("</Articles>");
        }
        Reply::TransferCustomerService { kf_account } => {
            if let Some(kf_account) = kf_account {
                out.push_str("<TransInfo>");
                cdata_element(&mut out, "KfAccount", kf_account);
                out.push_str("</TransInfo>");
            }
        }
    }
    out.push_str("</xml>");
    out
}

fn cdata_element(out: &mut String, name: &str, value: &str) {
    out.push('<');
    out.push_str(name);
    out.push('>');
    xml::push_cdata(out, value);
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

fn optional_element(out: &mut String, name: &str, value: Option<&str>) {
    if let Some(value) = value {
        cdata_element(out, name, value);
    }
}

/// A parsed passive reply with its addressing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedReply {
    /// `ToUserName`: the user's OpenID.
    pub to_user: String,
    /// `FromUserName`: the account's original id.
    pub from_user: String,
    /// `CreateTime`, Unix seconds.
    pub create_time: i64,
    /// The reply itself.
    pub reply: Reply,
}

/// Parses reply XML strictly, as WeChat would judge it (the simulator's check
/// of gateway answers). Values may be CDATA or entity-escaped text.
///
/// Requires `ToUserName`, `FromUserName`, `CreateTime` and `MsgType`, and per
/// type `Content`, `Image/MediaId`, `Voice/MediaId`, `Video/MediaId`,
/// `Music/ThumbMediaId`, or `ArticleCount` equal to the number of
/// `Articles/item`s (1..=8). Errors: [`ParseError::Missing`],
/// [`ParseError::UnknownReplyType`], [`ParseError::BadArticleCount`],
/// [`ParseError::BadNumber`], and the XML errors of [`crate::parse`].
/// The bodies `success` and empty are not XML: check for them first.
pub fn parse_reply(xml: &[u8]) -> Result<RenderedReply, ParseError> {
    let mut fields: Vec<(String, String)> = Vec::with_capacity(8);
    xml::walk(xml, &Limits::default(), |leaf| {
        fields.push((leaf.path.to_owned(), leaf.value.to_owned()));
        Ok(())
    })?;
    let get = |name: &str| field_of(&fields, name).map(str::to_owned);
    let require = |name: &'static str| get(name).ok_or(ParseError::Missing(name));

    let to_user = require("ToUserName")?;
    let from_user = require("FromUserName")?;
    let create_time = require("CreateTime")?
        .trim()
        .parse::<i64>()
        .map_err(|_| ParseError::BadNumber("CreateTime"))?;
    let msg_type = require("MsgType")?;
    let reply = match msg_type.as_str() {
        "text" => Reply::Text {
            content: require("Content")?,
        },
        "image" => Reply::Image {
            media_id: require("Image.MediaId")?,
        },
        "voice" => Reply::Voice {
            media_id: require("Voice.MediaId")?,
        },
        "video" => Reply::Video {
            media_id: require("Video.MediaId")?,
            title: get("Video.Title"),
            description: get("Video.Description"),
        },
        "music" => Reply::Music {
            title: get("Music.Title"),
            description: get("Music.Description"),
            music_url: get("Music.MusicUrl"),
            hq_music_url: get("Music.HQMusicUrl"),
            thumb_media_id: require("Music.ThumbMediaId")?,
        },
        "news" => {
            let count = require("ArticleCount")?
                .trim()
                .parse::<usize>()
                .map_err(|_| ParseError::BadNumber("ArticleCount"))?;
            let articles = news_articles(&fields);
            if count != articles.len() || !(1..=MAX_NEWS_ARTICLES).contains(&count) {
                return Err(ParseError::BadArticleCount);
            }
            Reply::News { articles }
        }
        "transfer_customer_service" => Reply::TransferCustomerService {
            kf_account: get("TransInfo.KfAccount"),
        },
        _ => return Err(ParseError::UnknownReplyType),
    };
    Ok(RenderedReply {
        to_user,
        from_user,
        create_time,
        reply,
    })
}

/// Groups `Articles.item[n].{Title,Description,PicUrl,Url}` into articles,
/// in document order.
fn news_articles(fields: &[(String, String)]) -> Vec<Article> {
    let mut items: Vec<(u32, Article)> = Vec::new();
    for (key, value) in fields {
        let Some((index, leaf)) = key.strip_prefix("Articles.item").and_then(split_repeated) else {
            continue;
        };
        let position = match items.iter().position(|(i, _)| *i == index) {
            Some(position) => position,
            None => {
                items.push((index, Article::default()));
                items.len() - 1
            }
        };
        let Some((_, article)) = items.get_mut(position) else {
            continue;
        };
        let slot = match leaf {
            "Title" => &mut article.title,
            "Description" => &mut article.description,
            "PicUrl" => &mut article.pic_url,
            "Url" => &mut article.url,
            _ => continue,
        };
        slot.clone_from(value);
    }
    items.into_iter().map(|(_, article)| article).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HDR: &str = "<ToUserName><![CDATA[oUSER]]></ToUserName><FromUserName><![CDATA[gh_0123456789ab]]></FromUserName><CreateTime>1700000100</CreateTime>";

    /// Renders `reply`, compares with `<xml>{HDR}{body}</xml>`, and parses it back.
    fn check(reply: Reply, body: &str) {
        let xml = render(&reply, "oUSER", "gh_0123456789ab", 1700000100);
        assert_eq!(xml, format!("<xml>{HDR}{body}</xml>"));
        assert_eq!(
            parse_reply(xml.as_bytes()).unwrap(),
            RenderedReply {
                to_user: "oUSER".into(),
                from_user: "gh_0123456789ab".into(),
                create_time: 1700000100,
                reply,
            }
        );
    }

    fn article(n: u32) -> Article {
        Article {
            title: format!("T{n}"),
            description: format!("D{n}"),
            pic_url: format!("https://e.com/{n}.jpg"),
            url: format!("https://e.com/{n}"),
        }
    }

    #[test]
    fn renders_every_type() {
        check(
            Reply::Text {
                content: "Hello".into(),
            },
            "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[Hello]]></Content>",
        );
        check(
            Reply::Image {
                media_id: "MEDIA_ID".into(),
            },
            "<MsgType><![CDATA[image]]></MsgType><Image><MediaId><![CDATA[MEDIA_ID]]></MediaId></Image>",
        );
        check(
            Reply::Voice {
                media_id: "MEDIA_ID".into(),
            },
            "<MsgType><![CDATA[voice]]></MsgType><Voice><MediaId><![CDATA[MEDIA_ID]]></MediaId></Voice>",
        );
        check(
            Reply::Video {
                media_id: "M".into(),
                title: Some("TITLE".into()),
                description: Some("DESCRIPTION".into()),
            },
            "<MsgType><![CDATA[video]]></MsgType><Video><MediaId><![CDATA[M]]></MediaId><Title><![CDATA[TITLE]]></Title><Description><![CDATA[DESCRIPTION]]></Description></Video>",
        );
        check(
            Reply::Video {
                media_id: "M".into(),
                title: None,
                description: None,
            },
            "<MsgType><![CDATA[video]]></MsgType><Video><MediaId><![CDATA[M]]></MediaId></Video>",
        );
        check(
            Reply::Music {
                title: Some("TITLE".into()),
                description: Some("DESCRIPTION".into()),
                music_url: Some("https://example.com/song.mp3".into()),
                hq_music_url: Some("https://example.com/song-hq.mp3".into()),
                thumb_media_id: "THUMB_MEDIA_ID".into(),
            },
            "<MsgType><![CDATA[music]]></MsgType><Music><Title><![CDATA[TITLE]]></Title><Description><![CDATA[DESCRIPTION]]></Description><MusicUrl><![CDATA[https://example.com/song.mp3]]></MusicUrl><HQMusicUrl><![CDATA[https://example.com/song-hq.mp3]]></HQMusicUrl><ThumbMediaId><![CDATA[THUMB_MEDIA_ID]]></ThumbMediaId></Music>",
        );
        check(
            Reply::News {
                articles: vec![article(1), article(2)],
            },
            "<MsgType><![CDATA[news]]></MsgType><ArticleCount>2</ArticleCount><Articles><item><Title><![CDATA[T1]]></Title><Description><![CDATA[D1]]></Description><PicUrl><![CDATA[https://e.com/1.jpg]]></PicUrl><Url><![CDATA[https://e.com/1]]></Url></item><item><Title><![CDATA[T2]]></Title><Description><![CDATA[D2]]></Description><PicUrl><![CDATA[https://e.com/2.jpg]]></PicUrl><Url><![CDATA[https://e.com/2]]></Url></item></Articles>",
        );
        check(
            Reply::TransferCustomerService {
                kf_account: Some("agent1@gh_account".into()),
            },
            "<MsgType><![CDATA[transfer_customer_service]]></MsgType><TransInfo><KfAccount><![CDATA[agent1@gh_account]]></KfAccount></TransInfo>",
        );
        check(
            Reply::TransferCustomerService { kf_account: None },
            "<MsgType><![CDATA[transfer_customer_service]]></MsgType>",
        );
    }

    #[test]
    fn cdata_is_split_and_controls_stripped() {
        let check_text = |content: &str, rendered: &str, read_back: &str| {
            let xml = render(
                &Reply::Text {
                    content: content.into(),
                },
                "oUSER",
                "gh_0123456789ab",
                1700000100,
            );
            assert_eq!(
                xml,
                format!(
                    "<xml>{HDR}<MsgType><![CDATA[text]]></MsgType><Content>{rendered}</Content></xml>"
                )
            );
            assert_eq!(
                parse_reply(xml.as_bytes()).unwrap().reply,
                Reply::Text {
                    content: read_back.into()
                }
            );
        };
        check_text(
            "a]]>b\u{1}c\td\r\n]]]>",
            "<![CDATA[a]]]]><![CDATA[>bc\td\r\n]]]]]><![CDATA[>]]>",
            "a]]>bc\td\r\n]]]>",
        );
        // Stripping first cannot leave a `]]>` unsplit.
        check_text("]]\u{0}>", "<![CDATA[]]]]><![CDATA[>]]>", "]]>");
        check_text("\u{b}\u{c}\u{fffe}\u{ffff}", "<![CDATA[]]>", "");
        check_text(" ", "<![CDATA[ ]]>", " ");
    }

    #[test]
    fn parses_pretty_and_entity_escaped_replies() {
        let xml = "<xml>\n  <ToUserName>oUSER</ToUserName>\n  <FromUserName>gh_1</FromUserName>\n  <CreateTime>1700000100</CreateTime>\n  <MsgType>text</MsgType>\n  <Content>&lt;a href=&quot;https://e.com&quot;&gt;go&lt;/a&gt; &amp; more</Content>\n</xml>";
        assert_eq!(
            parse_reply(xml.as_bytes()).unwrap(),
            RenderedReply {
                to_user: "oUSER".into(),
                from_user: "gh_1".into(),
                create_time: 1700000100,
                reply: Reply::Text {
                    content: "<a href=\"https://e.com\">go</a> & more".into()
                },
            }
        );
    }

    #[test]
    fn invalid_replies_are_refused() {
        let check_err = |body: &str, expected: ParseError| {
            assert_eq!(
                parse_reply(format!("<xml>{HDR}{body}</xml>").as_bytes()),
                Err(expected),
                "{body}"
            );
        };
        check_err("<MsgType>mpnews</MsgType>", ParseError::UnknownReplyType);
        check_err("<MsgType>location</MsgType>", ParseError::UnknownReplyType);
        check_err("<Content>x</Content>", ParseError::Missing("MsgType"));
        check_err("<MsgType>text</MsgType>", ParseError::Missing("Content"));
        check_err(
            "<MsgType>image</MsgType><MediaId>m</MediaId>",
            ParseError::Missing("Image.MediaId"),
        );
        check_err(
            "<MsgType>voice</MsgType><Voice/>",
            ParseError::Missing("Voice.MediaId"),
        );
        check_err(
            "<MsgType>video</MsgType>",
            ParseError::Missing("Video.MediaId"),
        );
        check_err(
            "<MsgType>music</MsgType><Music><Title>t</Title></Music>",
            ParseError::Missing("Music.ThumbMediaId"),
        );
        check_err(
            "<MsgType>news</MsgType><Articles/>",
            ParseError::Missing("ArticleCount"),
        );
        check_err(
            "<MsgType>news</MsgType><ArticleCount>x</ArticleCount>",
            ParseError::BadNumber("ArticleCount"),
        );
        let item = "<item><Title>t</Title><Description>d</Description><PicUrl>p</PicUrl><Url>u</Url></item>";
        check_err(
            &format!(
                "<MsgType>news</MsgType><ArticleCount>2</ArticleCount><Articles>{item}</Articles>"
            ),
            ParseError::BadArticleCount,
        );
        check_err(
            "<MsgType>news</MsgType><ArticleCount>0</ArticleCount><Articles></Articles>",
            ParseError::BadArticleCount,
        );
        check_err(
            &format!(
                "<MsgType>news</MsgType><ArticleCount>9</ArticleCount><Articles>{}</Articles>",
                item.repeat(9)
            ),
            ParseError::BadArticleCount,
        );
        assert_eq!(
            parse_reply(b"<xml><FromUserName>a</FromUserName><CreateTime>1</CreateTime><MsgType>text</MsgType><Content>c</Content></xml>"),
            Err(ParseError::Missing("ToUserName"))
        );
        assert_eq!(
            parse_reply(b"<xml><ToUserName>u</ToUserName><FromUserName>a</FromUserName><CreateTime>now</CreateTime><MsgType>text</MsgType><Content>c</Content></xml>"),
            Err(ParseError::BadNumber("CreateTime"))
        );
        assert!(parse_reply(b"success").is_err());
        assert!(parse_reply(b"").is_err());
        assert!(parse_reply(b"{\"errcode\":0}").is_err());
        assert_eq!(
            parse_reply(b"<html><body/></html>"),
            Err(ParseError::NotXmlRoot)
        );
    }

    fn stripped(text: &str) -> String {
        crate::xml::strip_illegal(text).into_owned()
    }

    fn stripped_opt(text: &Option<String>) -> Option<String> {
        text.as_deref().map(stripped)
    }

    /// The reply as it reads back after rendering: forbidden characters removed.
    fn expected_after_round_trip(reply: &Reply) -> Reply {
        match reply {
            Reply::Text { content } => Reply::Text {
                content: stripped(content),
            },
            Reply::Image { media_id } => Reply::Image {
                media_id: stripped(media_id),
            },
            Reply::Voice { media_id } => Reply::Voice {
                media_id: stripped(media_id),
            },
            Reply::Video {
                media_id,
                title,
                description,
            } => Reply::Video {
                media_id: stripped(media_id),
                title: stripped_opt(title),
                description: stripped_opt(description),
            },
            Reply::Music {
                title,
                description,
                music_url,
                hq_music_url,
                thumb_media_id,
            } => Reply::Music {
                title: stripped_opt(title),
                description: stripped_opt(description),
                music_url: stripped_opt(music_url),
                hq_music_url: stripped_opt(hq_music_url),
                thumb_media_id: stripped(thumb_media_id),
            },
            Reply::News { articles } => Reply::News {
                articles: articles
                    .iter()
                    .map(|a| Article {
                        title: stripped(&a.title),
                        description: stripped(&a.description),
                        pic_url: stripped(&a.pic_url),
                        url: stripped(&a.url),
                    })
                    .collect(),
            },
            Reply::TransferCustomerService { kf_account } => Reply::TransferCustomerService {
                kf_account: stripped_opt(kf_account),
            },
        }
    }

    /// Arbitrary text, biased towards the troublesome: `]]>`, markup, CJK, controls.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "([\\]>&<]|]]>|你好|😀|[\\x00-\\x1f]|\\r\\n|[a-z ]){0,24}",
        ]
    }

    fn article_strategy() -> impl Strategy<Value = Article> {
        (text(), text(), text(), text()).prop_map(|(title, description, pic_url, url)| Article {
            title,
            description,
            pic_url,
            url,
        })
    }

    fn reply_strategy() -> impl Strategy<Value = Reply> {
        let opt = || proptest::option::of(text());
        prop_oneof![
            text().prop_map(|content| Reply::Text { content }),
            text().prop_map(|media_id| Reply::Image { media_id }),
            text().prop_map(|media_id| Reply::Voice { media_id }),
            (text(), opt(), opt()).prop_map(|(media_id, title, description)| Reply::Video {
                media_id,
                title,
                description
            }),
            (opt(), opt(), opt(), opt(), text()).prop_map(
                |(title, description, music_url, hq_music_url, thumb_media_id)| Reply::Music {
                    title,
                    description,
                    music_url,
                    hq_music_url,
                    thumb_media_id
                }
            ),
            proptest::collection::vec(article_strategy(), 1..=MAX_NEWS_ARTICLES)
                .prop_map(|articles| Reply::News { articles }),
            opt().prop_map(|kf_account| Reply::TransferCustomerService { kf_account }),
        ]
    }

    proptest! {
        #[test]
        fn render_then_parse_round_trips(
            reply in reply_strategy(),
            to_user in text(),
            from_user in text(),
            create_time in any::<i64>(),
        ) {
            let xml = render(&reply, &to_user, &from_user, create_time);
            let parsed = parse_reply(xml.as_bytes()).unwrap();
            prop_assert_eq!(parsed.reply, expected_after_round_trip(&reply));
            prop_assert_eq!(parsed.to_user, stripped(&to_user));
            prop_assert_eq!(parsed.from_user, stripped(&from_user));
            prop_assert_eq!(parsed.create_time, create_time);
        }

        #[test]
        fn parse_reply_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_reply(&bytes);
            let _ = crate::parse_sealed_reply(&bytes);
        }

        #[test]
        fn parse_reply_never_panics_on_mutations(
            reply in reply_strategy(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..8),
        ) {
            let mut bytes = render(&reply, "u", "a", 1).into_bytes();
            for (at, byte, op) in edits {
                if bytes.is_empty() {
                    break;
                }
                let i = at.index(bytes.len());
                match op {
                    0 => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    2 => { bytes.remove(i); }
                    _ => bytes.truncate(i),
                }
            }
            let _ = parse_reply(&bytes);
            let _ = crate::parse_sealed_reply(&bytes);
        }
    }
}

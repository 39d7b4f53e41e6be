//! Reply rules (docs/contract.md §2): the configuration shapes, their validation
//! into [`Rules`], and the pure decision "which reply, if any, for this
//! message".

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::message::InboundMessage;
use crate::reply::{Article, MAX_NEWS_ARTICLES, Reply};

/// The `msg_type` values a rule may name.
pub const KNOWN_MSG_TYPES: [&str; 9] = [
    "text",
    "image",
    "voice",
    "video",
    "shortvideo",
    "location",
    "link",
    "file",
    "event",
];

/// One rule as written in the configuration (`[[accounts.passive]]`,
/// `[[accounts.custom]]`): a `match` and a `reply`. Validated by [`compile`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// The conditions; an empty (or absent) `match` matches everything.
    #[serde(rename = "match", default)]
    pub match_spec: MatchSpec,
    /// What to answer.
    pub reply: ReplySpec,
}

/// A string or a list of strings (`msg_type = "text"` or `msg_type = ["image", "video"]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single value.
    One(String),
    /// Any of several values.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values, one or many.
    pub fn values(&self) -> &[String] {
        match self {
            OneOrMany::One(value) => std::slice::from_ref(value),
            OneOrMany::Many(values) => values,
        }
    }
}

/// The `match` table of a rule: every key given must hold.
///
/// A value the message lacks counts as `""` (a plain `subscribe` has an
/// empty `EventKey`; an image has an empty `Content`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// `MsgType` is one of these (from [`KNOWN_MSG_TYPES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_type: Option<OneOrMany>,
    /// `Event` is one of these, ignoring ASCII case (`subscribe`, `SCAN`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<OneOrMany>,
    /// `EventKey` equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_key: Option<String>,
    /// `EventKey` starts with this (`qrscene_`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_key_prefix: Option<String>,
    /// `Content` equals this exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// `Content` starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_prefix: Option<String>,
    /// `Content` contains this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_contains: Option<String>,
    /// `Content` matches this regular expression (`regex` crate syntax,
    /// unanchored: use `^…$` for a whole-content match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_regex: Option<String>,
}

/// The `reply` table of a rule: exactly one key must be set.
///
/// Kept as a struct of options so a mistake gets a precise error from
/// [`compile`] rather than serde's "no variant matched".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplySpec {
    /// A text reply; a template with placeholders (`{content}`, `{scene}`,
    /// `{name|fallback}`, `{{`, `}}`; see [`compile`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `echo = true`: text → the same text; image, voice → the same
    /// `MediaId`; video, shortvideo → a video reply with that `MediaId`;
    /// anything else → no reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    /// An image reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<MediaSpec>,
    /// A voice reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<MediaSpec>,
    /// A video reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoSpec>,
    /// A music reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub music: Option<MusicSpec>,
    /// A news reply with 1 to 8 articles (a passive answer to a user message
    /// keeps only the first, docs/protocol.md §4.2; custom rules keep all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub news: Option<Vec<ArticleSpec>>,
    /// Hand the conversation to customer service (passive rules only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_customer_service: Option<TransferSpec>,
    /// `success = true`: explicitly no reply (stops at this rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
}

/// `{ media_id }` of an image or voice reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaSpec {
    /// An uploaded media id.
    pub media_id: String,
}

/// `{ media_id, title, description }` of a video reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoSpec {
    /// An uploaded media id.
    pub media_id: String,
    /// Optional title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Optional description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `{ title, description, music_url, hq_music_url, thumb_media_id }` of a music reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MusicSpec {
    /// Optional title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Optional description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Optional music URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub music_url: Option<String>,
    /// Optional high-quality music URL (used on Wi-Fi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hq_music_url: Option<String>,
    /// Required thumbnail media id.
    pub thumb_media_id: String,
}

/// One article of a news reply; only `title` is required.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArticleSpec {
    /// Title.
    pub title: String,
    /// Description, empty when absent.
    #[serde(default)]
    pub description: String,
    /// Cover picture URL, empty when absent.
    #[serde(default)]
    pub pic_url: String,
    /// Link target, empty when absent.
    #[serde(default)]
    pub url: String,
}

/// `{ kf_account }` of a transfer to customer service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferSpec {
    /// One agent (`prefix@account`), or any agent when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kf_account: Option<String>,
}

/// Where a rule list is used: it decides which reply kinds are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RulePath {
    /// `accounts.passive`: answered in the HTTP response.
    Passive,
    /// `accounts.custom`: sent later by the worker as a customer-service
    /// message (no `transfer_customer_service`).
    Custom,
}

/// A rule that failed validation: its index in the list and the problem.
///
/// The config crate prefixes the key path (`accounts[0].passive[3]`);
/// [`RuleProblem::key`] names the key inside the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule {index}: {problem}")]
pub struct RuleError {
    /// Zero-based index of the rule in the list given to [`compile`].
    pub index: usize,
    /// What is wrong.
    pub problem: RuleProblem,
}

/// What is wrong with a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleProblem {
    /// `reply` sets none of the reply keys.
    #[error(
        "reply sets no kind; set exactly one of text, echo, image, voice, video, music, news, transfer_customer_service, success"
    )]
    NoReplyKind,
    /// `reply` sets two (or more) reply keys; names the first two.
    #[error("reply sets both {0} and {1}; set exactly one")]
    TwoReplyKinds(&'static str, &'static str),
    /// `echo = false` or `success = false`; names the key.
    #[error("{0} can only be true")]
    FalseFlag(&'static str),
    /// A `{name}` in the text template that is not a known placeholder.
    #[error("unknown placeholder {{{0}}} in reply.text")]
    UnknownPlaceholder(String),
    /// A `{` without its `}`, or a lone `}`; gives the byte offset.
    #[error("unbalanced brace at byte {0} in reply.text (write {{{{ or }}}} for a literal brace)")]
    UnbalancedBrace(usize),
    /// `content_regex` does not compile; the regex crate's explanation.
    #[error("invalid content_regex: {0}")]
    BadRegex(String),
    /// A `msg_type` outside [`KNOWN_MSG_TYPES`].
    #[error(
        "unknown msg_type {0:?}; expected one of text, image, voice, video, shortvideo, location, link, file, event"
    )]
    UnknownMsgType(String),
    /// `msg_type = []` or `event = []`; names the key.
    #[error("{0} is an empty list")]
    EmptyList(&'static str),
    /// `transfer_customer_service` in a custom rule.
    #[error("transfer_customer_service is only allowed in passive rules")]
    TransferOnCustomPath,
    /// News with no article or more than 8.
    #[error("news needs 1 to 8 articles, got {0}")]
    NewsArticleCount(usize),
}

impl RuleProblem {
    /// The key inside the rule that is wrong (`reply.text`, `match.msg_type`, …).
    pub fn key(&self) -> &'static str {
        match self {
            RuleProblem::NoReplyKind | RuleProblem::TwoReplyKinds(..) => "reply",
            RuleProblem::FalseFlag("echo") => "reply.echo",
            RuleProblem::FalseFlag(_) => "reply.success",
            RuleProblem::UnknownPlaceholder(_) | RuleProblem::UnbalancedBrace(_) => "reply.text",
            RuleProblem::BadRegex(_) => "match.content_regex",
            RuleProblem::UnknownMsgType(_) | RuleProblem::EmptyList("msg_type") => "match.msg_type",
            RuleProblem::EmptyList(_) => "match.event",
            RuleProblem::TransferOnCustomPath => "reply.transfer_customer_service",
            RuleProblem::NewsArticleCount(_) => "reply.news",
        }
    }
}

/// What the rules decided for a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answer with this reply (passive XML, or a customer-service message).
    Reply(Reply),
    /// No reply: no rule matched, `success = true`, or nothing to echo.
    Nothing,
}

/// A validated rule list, cheap to evaluate and to clone.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<Rule>,
    /// Custom rules: news keeps every article, also for user messages (the
    /// passive one-article limit of docs/protocol.md §4.2 does not apply).
    keep_all_articles: bool,
}

#[derive(Debug, Clone)]
struct Rule {
    conditions: Conditions,
    action: Action,
}

#[derive(Debug, Clone, Default)]
struct Conditions {
    msg_types: Option<Vec<String>>,
    events: Option<Vec<String>>,
    event_key: Option<String>,
    event_key_prefix: Option<String>,
    content: Option<String>,
    content_prefix: Option<String>,
    content_contains: Option<String>,
    content_regex: Option<Regex>,
}

#[derive(Debug, Clone)]
enum Action {
    Text(Template),
    Echo,
    Fixed(Reply),
    News(Vec<Article>),
    Nothing,
}

/// Validates `specs` for `path` into [`Rules`].
///
/// Checks each rule in order and reports the first problem: exactly one
/// reply kind (`echo`/`success` only `true`); `msg_type` values known;
/// non-empty lists; `content_regex` compiles; the text template has balanced
/// braces and only known placeholders — `{content}`, `{recognition}`,
/// `{event}`, `{event_key}`, `{scene}`, `{ticket}`, `{from}`, `{to}`,
/// `{msg_type}`, `{msg_id}`, `{label}`, `{url}`, `{title}`, `{latitude}`,
/// `{longitude}`, each also as `{name|fallback}`; news has 1 to 8 articles;
/// `transfer_customer_service` only on [`RulePath::Passive`].
pub fn compile(specs: &[RuleSpec], path: RulePath) -> Result<Rules, RuleError> {
    let rules = specs
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            compile_rule(spec, path).map_err(|problem| RuleError { index, problem })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Rules {
        rules,
        keep_all_articles: path == RulePath::Custom,
    })
}

fn compile_rule(spec: &RuleSpec, path: RulePath) -> Result<Rule, RuleProblem> {
    Ok(Rule {
        conditions: compile_conditions(&spec.match_spec)?,
        action: compile_action(&spec.reply, path)?,
    })
}

fn compile_conditions(spec: &MatchSpec) -> Result<Conditions, RuleProblem> {
    let msg_types = match &spec.msg_type {
        None => None,
        Some(list) => {
            let values = list.values();
            if values.is_empty() {
                return Err(RuleProblem::EmptyList("msg_type"));
            }
            if let Some(unknown) = values
                .iter()
                .find(|value| !KNOWN_MSG_TYPES.contains(&value.as_str()))
            {
                return Err(RuleProblem::UnknownMsgType(unknown.clone()));
            }
            Some(values.to_vec())
        }
    };
    let events = match &spec.event {
        None => None,
        Some(list) if list.values().is_empty() => return Err(RuleProblem::EmptyList("event")),
        Some(list) => Some(list.values().to_vec()),
    };
    let content_regex = spec
        .content_regex
        .as_deref()
        .map(Regex::new)
        .transpose()
        .map_err(|error| RuleProblem::BadRegex(error.to_string()))?;
    Ok(Conditions {
        msg_types,
        events,
        event_key: spec.event_key.clone(),
        event_key_prefix: spec.event_key_prefix.clone(),
        content: spec.content.clone(),
        content_prefix: spec.content_prefix.clone(),
        content_contains: spec.content_contains.clone(),
        content_regex,
    })
}

fn compile_action(spec: &ReplySpec, path: RulePath) -> Result<Action, RuleProblem> {
    let set: Vec<&'static str> = [
        ("text", spec.text.is_some()),
        ("echo", spec.echo.is_some()),
        ("image", spec.image.is_some()),
        ("voice", spec.voice.is_some()),
        ("video", spec.video.is_some()),
        ("music", spec.music.is_some()),
        ("news", spec.news.is_some()),
        (
            "transfer_customer_service",
            spec.transfer_customer_service.is_some(),
        ),
        ("success", spec.success.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, is_set)| is_set.then_some(name))
    .collect();
    match set.as_slice() {
        [] => return Err(RuleProblem::NoReplyKind),
        [_] => {}
        [first, second, ..] => return Err(RuleProblem::TwoReplyKinds(first, second)),
    }

    if let Some(text) = &spec.text {
        return Ok(Action::Text(Template::parse(text)?));
    }
    if let Some(echo) = spec.echo {
        return if echo {
            Ok(Action::Echo)
        } else {
            Err(RuleProblem::FalseFlag("echo"))
        };
    }
    if let Some(success) = spec.success {
        return if success {
            Ok(Action::Nothing)
        } else {
            Err(RuleProblem::FalseFlag("success"))
        };
    }
    if let Some(image) = &spec.image {
        return Ok(Action::Fixed(Reply::Image {
            media_id: image.media_id.clone(),
        }));
    }
    if let Some(voice) = &spec.voice {
        return Ok(Action::Fixed(Reply::Voice {
            media_id: voice.media_id.clone(),
        }));
    }
    if let Some(video) = &spec.video {
        return Ok(Action::Fixed(Reply::Video {
            media_id: video.media_id.clone(),
            title: video.title.clone(),
            description: video.description.clone(),
        }));
    }
    if let Some(music) = &spec.music {
        return Ok(Action::Fixed(Reply::Music {
            title: music.title.clone(),
            description: music.description.clone(),
            music_url: music.music_url.clone(),
            hq_music_url: music.hq_music_url.clone(),
            thumb_media_id: music.thumb_media_id.clone(),
        }));
    }
    if let Some(news) = &spec.news {
        if !(1..=MAX_NEWS_ARTICLES).contains(&news.len()) {
            return Err(RuleProblem::NewsArticleCount(news.len()));
        }
        return Ok(Action::News(
            news.iter()
                .map(|article| Article {
                    title: article.title.clone(),
                    description: article.description.clone(),
                    pic_url: article.pic_url.clone(),
                    url: article.url.clone(),
                })
                .collect(),
        ));
    }
    if let Some(transfer) = &spec.transfer_customer_service {
        if path == RulePath::Custom {
            return Err(RuleProblem::TransferOnCustomPath);
        }
        return Ok(Action::Fixed(Reply::TransferCustomerService {
            kf_account: transfer.kf_account.clone(),
        }));
    }
    // Exactly one key is set and every key is handled above.
    Err(RuleProblem::NoReplyKind)
}

impl Rules {
    /// True when there are no rules (every message gives [`Decision::Nothing`]).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Applies the first rule whose `match` holds.
    ///
    /// No rule matches, `success = true`, an echo of a kind that cannot be
    /// echoed (or of an empty value), or a text that renders to `""` (WeChat
    /// shows nothing for it) → [`Decision::Nothing`]. A news reply to a user
    /// message (`MsgType` other than `event`) keeps only its first article.
    pub fn decide(&self, msg: &InboundMessage) -> Decision {
        let subject = Subject {
            msg,
            event: msg.event.as_deref().unwrap_or_default(),
            event_key: msg.field("EventKey").unwrap_or_default(),
            content: msg.field("Content").unwrap_or_default(),
        };
        let Some(rule) = self
            .rules
            .iter()
            .find(|rule| rule.conditions.hold(&subject))
        else {
            return Decision::Nothing;
        };
        let reply = match &rule.action {
            Action::Nothing => None,
            Action::Text(template) => Some(template.render(msg))
                .filter(|content| !content.is_empty())
                .map(|content| Reply::Text { content }),
            Action::Echo => echo(msg),
            Action::Fixed(reply) => Some(reply.clone()),
            Action::News(articles) => {
                let keep = if self.keep_all_articles || msg.msg_type == "event" {
                    articles.len()
                } else {
                    1
                };
                Some(Reply::News {
                    articles: articles.iter().take(keep).cloned().collect(),
                })
            }
        };
        reply.map_or(Decision::Nothing, Decision::Reply)
    }
}

fn echo(msg: &InboundMessage) -> Option<Reply> {
    let value = |name: &str| {
        msg.field(name)
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
    };
    match msg.msg_type.as_str() {
        "text" => value("Content").map(|content| Reply::Text { content }),
        "image" => value("MediaId").map(|media_id| Reply::Image { media_id }),
        "voice" => value("MediaId").map(|media_id| Reply::Voice { media_id }),
        "video" | "shortvideo" => value("MediaId").map(|media_id| Reply::Video {
            media_id,
            title: None,
            description: None,
        }),
        _ => None,
    }
}

/// The message values the conditions look at, looked up once per decision.
#[derive(Clone, Copy)]
struct Subject<'m> {
    msg: &'m InboundMessage,
    event: &'m str,
    event_key: &'m str,
    content: &'m str,
}

impl Conditions {
    fn hold(&self, subject: &Subject<'_>) -> bool {
        let Subject {
            msg,
            event,
            event_key,
            content,
        } = *subject;
        if self
            .msg_types
            .as_ref()
            .is_some_and(|types| !types.contains(&msg.msg_type))
        {
            return false;
        }
        if self
            .events
            .as_ref()
            .is_some_and(|events| !events.iter().any(|e| e.eq_ignore_ascii_case(event)))
        {
            return false;
        }
        if self
            .event_key
            .as_deref()
            .is_some_and(|key| key != event_key)
        {
            return false;
        }
        if self
            .event_key_prefix
            .as_deref()
            .is_some_and(|prefix| !event_key.starts_with(prefix))
        {
            return false;
        }
        if self.content.as_deref().is_some_and(|c| c != content) {
            return false;
        }
        if self
            .content_prefix
            .as_deref()
            .is_some_and(|prefix| !content.starts_with(prefix))
        {
            return false;
        }
        if self
            .content_contains
            .as_deref()
            .is_some_and(|needle| !content.contains(needle))
        {
            return false;
        }
        if self
            .content_regex
            .as_ref()
            .is_some_and(|regex| !regex.is_match(content))
        {
            return false;
        }
        true
    }
}

/// A message value a template can insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholder {
    Content,
    Recognition,
    Event,
    EventKey,
    Scene,
    Ticket,
    From,
    To,
    MsgType,
    MsgId,
    Label,
    Url,
    Title,
    Latitude,
    Longitude,
}

impl Placeholder {
    fn from_name(name: &str) -> Option<Placeholder> {
        Some(match name {
            "content" => Placeholder::Content,
            "recognition" => Placeholder::Recognition,
            "event" => Placeholder::Event,
            "event_key" => Placeholder::EventKey,
            "scene" => Placeholder::Scene,
            "ticket" => Placeholder::Ticket,
            "from" => Placeholder::From,
            "to" => Placeholder::To,
            "msg_type" => Placeholder::MsgType,
            "msg_id" => Placeholder::MsgId,
            "label" => Placeholder::Label,
            "url" => Placeholder::Url,
            "title" => Placeholder::Title,
            "latitude" => Placeholder::Latitude,
            "longitude" => Placeholder::Longitude,
            _ => return None,
        })
    }

    /// Appends the value for `msg` to `out`; returns false when it is absent or empty.
    fn write(self, msg: &InboundMessage, out: &mut String) -> bool {
        let before = out.len();
        let first_of = |names: &[&str]| {
            names
                .iter()
                .find_map(|name| msg.field(name).filter(|value| !value.is_empty()))
        };
        match self {
            Placeholder::Content => out.push_str(msg.field("Content").unwrap_or_default()),
            Placeholder::Recognition => out.push_str(msg.field("Recognition").unwrap_or_default()),
            Placeholder::Event => out.push_str(msg.event.as_deref().unwrap_or_default()),
            Placeholder::EventKey => out.push_str(msg.field("EventKey").unwrap_or_default()),
            Placeholder::Scene => {
                let key = msg.field("EventKey").unwrap_or_default();
                out.push_str(key.strip_prefix("qrscene_").unwrap_or(key));
            }
            Placeholder::Ticket => out.push_str(msg.field("Ticket").unwrap_or_default()),
            Placeholder::From => out.push_str(&msg.from_user_name),
            Placeholder::To => out.push_str(&msg.to_user_name),
            Placeholder::MsgType => out.push_str(&msg.msg_type),
            Placeholder::MsgId => {
                if let Some(id) = msg.msg_id {
                    out.push_str(&id.to_string());
                }
            }
            Placeholder::Label => {
                out.push_str(first_of(&["Label", "SendLocationInfo.Label"]).unwrap_or_default());
            }
            Placeholder::Url => out.push_str(msg.field("Url").unwrap_or_default()),
            Placeholder::Title => out.push_str(msg.field("Title").unwrap_or_default()),
            Placeholder::Latitude => out.push_str(
                first_of(&["Location_X", "Latitude", "SendLocationInfo.Location_X"])
                    .unwrap_or_default(),
            ),
            Placeholder::Longitude => out.push_str(
                first_of(&["Location_Y", "Longitude", "SendLocationInfo.Location_Y"])
                    .unwrap_or_default(),
            ),
        }
        out.len() > before
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Value {
        placeholder: Placeholder,
        fallback: Option<String>,
    },
}

/// A compiled text template.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    segments: Vec<Segment>,
}

impl Template {
    fn parse(text: &str) -> Result<Template, RuleProblem> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        let offset = |rest: &str| text.len() - rest.len();
        while let Some(position) = rest.find(['{', '}']) {
            let (before, from_brace) = rest.split_at(position);
            literal.push_str(before);
            if let Some(after) = from_brace.strip_prefix("{{") {
                literal.push('{');
                rest = after;
            } else if let Some(after) = from_brace.strip_prefix("}}") {
                literal.push('}');
                rest = after;
            } else if let Some(inner_and_rest) = from_brace.strip_prefix('{') {
                let Some(close) = inner_and_rest.find(['{', '}']) else {
                    return Err(RuleProblem::UnbalancedBrace(offset(from_brace)));
                };
                let (inner, after) = inner_and_rest.split_at(close);
                let Some(after) = after.strip_prefix('}') else {
                    return Err(RuleProblem::UnbalancedBrace(offset(from_brace)));
                };
                let (name, fallback) = match inner.split_once('|') {
                    Some((name, fallback)) => (name, Some(fallback.to_owned())),
                    None => (inner, None),
                };
                let placeholder = Placeholder::from_name(name)
                    .ok_or_else(|| RuleProblem::UnknownPlaceholder(name.to_owned()))?;
                if !literal.is_empty() {
                    segments.push(Segment::Literal(std::mem::take(&mut literal)));
                }
                segments.push(Segment::Value {
                    placeholder,
                    fallback,
                });
                rest = after;
            } else {
                // A lone `}`.
                return Err(RuleProblem::UnbalancedBrace(offset(from_brace)));
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Template { segments })
    }

    fn render(&self, msg: &InboundMessage) -> String {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Value {
                    placeholder,
                    fallback,
                } => {
                    if !placeholder.write(msg, &mut out)
                        && let Some(fallback) = fallback
                    {
                        out.push_str(fallback);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Limits, parse};
    use proptest::prelude::*;

    const HDR: &str = "<ToUserName><![CDATA[gh_0123456789ab]]></ToUserName><FromUserName><![CDATA[oUSER]]></FromUserName><CreateTime>1700000000</CreateTime>";

    fn msg(body: &str) -> InboundMessage {
        parse(
            format!("<xml>{HDR}{body}</xml>").as_bytes(),
            &Limits::default(),
        )
        .unwrap()
    }

    fn text_msg(content: &str) -> InboundMessage {
        msg(&format!(
            "<MsgType>text</MsgType><Content><![CDATA[{content}]]></Content><MsgId>24000000000000001</MsgId>"
        ))
    }

    fn event_msg(event: &str, event_key: Option<&str>) -> InboundMessage {
        let key = event_key.map_or(String::new(), |key| format!("<EventKey>{key}</EventKey>"));
        msg(&format!(
            "<MsgType>event</MsgType><Event>{event}</Event>{key}"
        ))
    }

    /// Rules from a TOML document holding `[[rule]]` tables.
    fn rules_from_toml(toml_text: &str, path: RulePath) -> Result<Rules, RuleError> {
        #[derive(Deserialize)]
        struct Doc {
            rule: Vec<RuleSpec>,
        }
        let doc: Doc = toml::from_str(toml_text).unwrap();
        compile(&doc.rule, path)
    }

    fn text(content: &str) -> Decision {
        Decision::Reply(Reply::Text {
            content: content.into(),
        })
    }

    fn check(rules: &Rules, message: &InboundMessage, expected: Decision) {
        assert_eq!(rules.decide(message), expected, "{message:?}");
    }

    fn one_text_rule(template: &str) -> Rules {
        compile(
            &[RuleSpec {
                match_spec: MatchSpec::default(),
                reply: ReplySpec {
                    text: Some(template.into()),
                    ..ReplySpec::default()
                },
            }],
            RulePath::Passive,
        )
        .unwrap()
    }

    fn check_template(template: &str, message: &InboundMessage, expected: &str) {
        let decision = one_text_rule(template).decide(message);
        let expected = if expected.is_empty() {
            Decision::Nothing
        } else {
            text(expected)
        };
        assert_eq!(decision, expected, "{template}");
    }

    #[test]
    fn tutorial_bot_behaves_as_documented() {
        #[derive(Deserialize)]
        struct Config {
            accounts: Accounts,
        }
        #[derive(Deserialize)]
        struct Accounts {
            custom: Vec<RuleSpec>,
        }
        // docs/contract.md §2, verbatim.
        let config: Config = toml::from_str(
            r#"
[[accounts.custom]]
match = { msg_type = "text" }
reply = { echo = true }
[[accounts.custom]]
match = { msg_type = "voice" }
reply = { text = "{recognition|未识别}" }
[[accounts.custom]]
match = { event = "subscribe", event_key_prefix = "qrscene_" }
reply = { text = "感谢您的关注!场景值是:{scene}" }
[[accounts.custom]]
match = { event = "subscribe" }
reply = { text = "感谢您的关注!" }
[[accounts.custom]]
match = { event = "SCAN" }
reply = { text = "{event_key}" }
[[accounts.custom]]
match = { msg_type = ["image", "video", "shortvideo", "location", "link", "file"] }
reply = { text = "哈哈哈哈" }
"#,
        )
        .unwrap();
        let rules = compile(&config.accounts.custom, RulePath::Custom).unwrap();
        assert_eq!(rules.len(), 6);

        check(&rules, &text_msg("你好 hello"), text("你好 hello"));
        check(
            &rules,
            &msg(
                "<MsgType>voice</MsgType><MediaId>m</MediaId><Format>amr</Format><Recognition><![CDATA[今天天气]]></Recognition><MsgId>2</MsgId>",
            ),
            text("今天天气"),
        );
        check(
            &rules,
            &msg(
                "<MsgType>voice</MsgType><MediaId>m</MediaId><Format>amr</Format><Recognition><![CDATA[]]></Recognition><MsgId>2</MsgId>",
            ),
            text("未识别"),
        );
        check(
            &rules,
            &msg("<MsgType>voice</MsgType><MediaId>m</MediaId><MsgId>2</MsgId>"),
            text("未识别"),
        );
        check(
            &rules,
            &event_msg("subscribe", Some("qrscene_123")),
            text("感谢您的关注!场景值是:123"),
        );
        check(&rules, &event_msg("subscribe", None), text("感谢您的关注!"));
        check(
            &rules,
            &event_msg("subscribe", Some("")),
            text("感谢您的关注!"),
        );
        check(&rules, &event_msg("SCAN", Some("123")), text("123"));
        for body in [
            "<MsgType>image</MsgType><PicUrl>p</PicUrl><MediaId>m</MediaId><MsgId>3</MsgId>",
            "<MsgType>video</MsgType><MediaId>m</MediaId><MsgId>3</MsgId>",
            "<MsgType>shortvideo</MsgType><MediaId>m</MediaId><MsgId>3</MsgId>",
            "<MsgType>location</MsgType><Location_X>1</Location_X><Location_Y>2</Location_Y><MsgId>3</MsgId>",
            "<MsgType>link</MsgType><Title>t</Title><MsgId>3</MsgId>",
            "<MsgType>file</MsgType><Title>a.pdf</Title><MsgId>3</MsgId>",
        ] {
            check(&rules, &msg(body), text("哈哈哈哈"));
        }
        check(&rules, &event_msg("unsubscribe", None), Decision::Nothing);
        check(
            &rules,
            &event_msg("CLICK", Some("V1001")),
            Decision::Nothing,
        );
        check(
            &rules,
            &msg("<MsgType>event</MsgType><Event>LOCATION</Event><Latitude>1</Latitude>"),
            Decision::Nothing,
        );
    }

    #[test]
    fn every_placeholder() {
        let location = msg(
            "<MsgType>location</MsgType><Location_X>23.134521</Location_X><Location_Y>113.358803</Location_Y><Scale>20</Scale><Label><![CDATA[Some street]]></Label><MsgId>6</MsgId>",
        );
        check_template(
            "{latitude},{longitude} {label}",
            &location,
            "23.134521,113.358803 Some street",
        );
        check_template(
            "{msg_type} #{msg_id} {from}->{to}",
            &location,
            "location #6 oUSER->gh_0123456789ab",
        );
        let report = msg(
            "<MsgType>event</MsgType><Event>LOCATION</Event><Latitude>23.137466</Latitude><Longitude>113.352425</Longitude><Precision>119.385040</Precision>",
        );
        check_template(
            "{latitude}/{longitude} [{msg_id}] {event}",
            &report,
            "23.137466/113.352425 [] LOCATION",
        );
        let link = msg(
            "<MsgType>link</MsgType><Title><![CDATA[T]]></Title><Description>D</Description><Url><![CDATA[https://e.com/]]></Url><MsgId>7</MsgId>",
        );
        check_template("{title} <{url}>", &link, "T <https://e.com/>");
        let text_message = text_msg("ping");
        check_template("pong: {content}", &text_message, "pong: ping");
        check_template("{content|x}", &text_message, "ping");
        let scan = msg(
            "<MsgType>event</MsgType><Event>SCAN</Event><EventKey>123</EventKey><Ticket>TK</Ticket>",
        );
        check_template(
            "{event}:{event_key}:{scene}:{ticket}",
            &scan,
            "SCAN:123:123:TK",
        );
        let follow = event_msg("subscribe", Some("qrscene_promo-2024"));
        check_template(
            "{scene} from {event_key}",
            &follow,
            "promo-2024 from qrscene_promo-2024",
        );
        let voice = msg("<MsgType>voice</MsgType><Recognition>hi</Recognition><MsgId>1</MsgId>");
        check_template("{recognition}", &voice, "hi");
        let select = msg(
            "<MsgType>event</MsgType><Event>location_select</Event><SendLocationInfo><Location_X>23</Location_X><Location_Y>113</Location_Y><Label>GZ</Label></SendLocationInfo>",
        );
        check_template("{latitude},{longitude} {label}", &select, "23,113 GZ");
    }

    #[test]
    fn fallbacks_and_literal_braces() {
        let plain = event_msg("subscribe", None);
        check_template("[{scene|none}]", &plain, "[none]");
        check_template("[{scene}]", &plain, "[]");
        check_template("{ticket|a|b}", &plain, "a|b");
        check_template("{ticket|}", &plain, "");
        check_template("{{scene}} {{{scene|x}}}", &plain, "{scene} {x}");
        check_template("}}{{", &plain, "}{");
        check_template("no placeholders", &plain, "no placeholders");
        // Renders to nothing → no reply.
        check_template("{content}", &plain, "");
    }

    #[test]
    fn template_errors() {
        let check_problem = |template: &str, problem: RuleProblem| {
            let error = compile(
                &[RuleSpec {
                    match_spec: MatchSpec::default(),
                    reply: ReplySpec {
                        text: Some(template.into()),
                        ..ReplySpec::default()
                    },
                }],
                RulePath::Passive,
            )
            .unwrap_err();
            assert_eq!(
                error,
                RuleError {
                    index: 0,
                    problem: problem.clone()
                },
                "{template}"
            );
            assert_eq!(problem.key(), "reply.text");
        };
        check_problem("hi {nmae}", RuleProblem::UnknownPlaceholder("nmae".into()));
        check_problem("{}", RuleProblem::UnknownPlaceholder(String::new()));
        check_problem(
            "{Content}",
            RuleProblem::UnknownPlaceholder("Content".into()),
        );
        check_problem(
            "{ content }",
            RuleProblem::UnknownPlaceholder(" content ".into()),
        );
        check_problem("open {content", RuleProblem::UnbalancedBrace(5));
        check_problem("a } b", RuleProblem::UnbalancedBrace(2));
        check_problem("{con{tent}", RuleProblem::UnbalancedBrace(0));
        check_problem("{content|a{b}", RuleProblem::UnbalancedBrace(0));
        let error = compile(
            &[RuleSpec {
                match_spec: MatchSpec::default(),
                reply: ReplySpec {
                    text: Some("{oops}".into()),
                    ..ReplySpec::default()
                },
            }],
            RulePath::Passive,
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "rule 0: unknown placeholder {oops} in reply.text"
        );
    }

    #[test]
    fn first_match_wins_and_success_stops() {
        let rules = rules_from_toml(
            r#"
[[rule]]
match = { content = "quiet" }
reply = { success = true }
[[rule]]
match = { msg_type = "text", content_prefix = "hi" }
reply = { text = "first" }
[[rule]]
match = { msg_type = "text" }
reply = { text = "second" }
[[rule]]
reply = { text = "anything" }
"#,
            RulePath::Passive,
        )
        .unwrap();
        check(&rules, &text_msg("hi there"), text("first"));
        check(&rules, &text_msg("hello"), text("second"));
        check(&rules, &text_msg("quiet"), Decision::Nothing);
        check(&rules, &event_msg("CLICK", Some("k")), text("anything"));
        assert!(!rules.is_empty());
        let empty = compile(&[], RulePath::Passive).unwrap();
        assert!(empty.is_empty());
        check(&empty, &text_msg("hi"), Decision::Nothing);
    }

    #[test]
    fn match_conditions() {
        let rules = rules_from_toml(
            r#"
[[rule]]
match = { event = ["click", "view"], event_key = "K1" }
reply = { text = "menu K1" }
[[rule]]
match = { event_key_prefix = "qrscene_" }
reply = { text = "qr" }
[[rule]]
match = { content = "exact" }
reply = { text = "exact" }
[[rule]]
match = { content_contains = "needle" }
reply = { text = "contains" }
[[rule]]
match = { content_regex = '^\d{6}$' }
reply = { text = "code" }
[[rule]]
match = { msg_type = ["image", "voice"] }
reply = { text = "media" }
"#,
            RulePath::Passive,
        )
        .unwrap();
        check(&rules, &event_msg("CLICK", Some("K1")), text("menu K1"));
        check(&rules, &event_msg("view", Some("K1")), text("menu K1"));
        check(&rules, &event_msg("CLICK", Some("K2")), Decision::Nothing);
        check(&rules, &event_msg("SCAN", Some("qrscene_9")), text("qr"));
        check(&rules, &text_msg("exact"), text("exact"));
        check(&rules, &text_msg("Exact"), Decision::Nothing);
        check(&rules, &text_msg("a needle here"), text("contains"));
        check(&rules, &text_msg("123456"), text("code"));
        check(&rules, &text_msg("1234567"), Decision::Nothing);
        check(
            &rules,
            &msg("<MsgType>voice</MsgType><MsgId>1</MsgId>"),
            text("media"),
        );
        check(
            &rules,
            &msg("<MsgType>video</MsgType><MsgId>1</MsgId>"),
            Decision::Nothing,
        );
        // An event condition never holds for a message without Event.
        let rules = rules_from_toml(
            "[[rule]]\nmatch = { event = \"subscribe\" }\nreply = { text = \"x\" }",
            RulePath::Passive,
        )
        .unwrap();
        check(&rules, &text_msg("subscribe"), Decision::Nothing);
    }

    #[test]
    fn echo_per_type() {
        let rules = rules_from_toml("[[rule]]\nreply = { echo = true }", RulePath::Custom).unwrap();
        check(&rules, &text_msg("same"), text("same"));
        check(
            &rules,
            &msg(
                "<MsgType>image</MsgType><PicUrl>p</PicUrl><MediaId>IMG</MediaId><MsgId>1</MsgId>",
            ),
            Decision::Reply(Reply::Image {
                media_id: "IMG".into(),
            }),
        );
        check(
            &rules,
            &msg(
                "<MsgType>voice</MsgType><MediaId>VOI</MediaId><Format>amr</Format><MsgId>1</MsgId>",
            ),
            Decision::Reply(Reply::Voice {
                media_id: "VOI".into(),
            }),
        );
        for msg_type in ["video", "shortvideo"] {
            check(
                &rules,
                &msg(&format!(
                    "<MsgType>{msg_type}</MsgType><MediaId>VID</MediaId><ThumbMediaId>T</ThumbMediaId><MsgId>1</MsgId>"
                )),
                Decision::Reply(Reply::Video {
                    media_id: "VID".into(),
                    title: None,
                    description: None,
                }),
            );
        }
        check(
            &rules,
            &msg("<MsgType>location</MsgType><Location_X>1</Location_X><MsgId>1</MsgId>"),
            Decision::Nothing,
        );
        check(
            &rules,
            &msg("<MsgType>link</MsgType><Url>u</Url><MsgId>1</MsgId>"),
            Decision::Nothing,
        );
        check(&rules, &event_msg("subscribe", None), Decision::Nothing);
        check(
            &rules,
            &msg("<MsgType>image</MsgType><MsgId>1</MsgId>"),
            Decision::Nothing,
        );
        check(&rules, &text_msg(""), Decision::Nothing);
    }

    #[test]
    fn fixed_replies_and_news_truncation() {
        let rules = rules_from_toml(
            r#"
[[rule]]
match = { content = "img" }
reply = { image = { media_id = "M1" } }
[[rule]]
match = { content = "voice" }
reply = { voice = { media_id = "M2" } }
[[rule]]
match = { content = "video" }
reply = { video = { media_id = "M3", title = "T" } }
[[rule]]
match = { content = "music" }
reply = { music = { title = "Song", thumb_media_id = "TH", hq_music_url = "https://e.com/hq.mp3" } }
[[rule]]
match = { content = "kf" }
reply = { transfer_customer_service = { kf_account = "a@gh" } }
[[rule]]
match = { content = "kf any" }
reply = { transfer_customer_service = {} }
[[rule]]
reply = { news = [
  { title = "A", description = "a", pic_url = "https://e.com/a.jpg", url = "https://e.com/a" },
  { title = "B" },
] }
"#,
            RulePath::Passive,
        )
        .unwrap();
        check(
            &rules,
            &text_msg("img"),
            Decision::Reply(Reply::Image {
                media_id: "M1".into(),
            }),
        );
        check(
            &rules,
            &text_msg("voice"),
            Decision::Reply(Reply::Voice {
                media_id: "M2".into(),
            }),
        );
        check(
            &rules,
            &text_msg("video"),
            Decision::Reply(Reply::Video {
                media_id: "M3".into(),
                title: Some("T".into()),
                description: None,
            }),
        );
        check(
            &rules,
            &text_msg("music"),
            Decision::Reply(Reply::Music {
                title: Some("Song".into()),
                description: None,
                music_url: None,
                hq_music_url: Some("https://e.com/hq.mp3".into()),
                thumb_media_id: "TH".into(),
            }),
        );
        check(
            &rules,
            &text_msg("kf"),
            Decision::Reply(Reply::TransferCustomerService {
                kf_account: Some("a@gh".into()),
            }),
        );
        check(
            &rules,
            &text_msg("kf any"),
            Decision::Reply(Reply::TransferCustomerService { kf_account: None }),
        );
        let a = Article {
            title: "A".into(),
            description: "a".into(),
            pic_url: "https://e.com/a.jpg".into(),
            url: "https://e.com/a".into(),
        };
        let b = Article {
            title: "B".into(),
            ..Article::default()
        };
        // A user message may only get one article; an event may get all.
        check(
            &rules,
            &text_msg("news"),
            Decision::Reply(Reply::News {
                articles: vec![a.clone()],
            }),
        );
        check(
            &rules,
            &event_msg("CLICK", Some("k")),
            Decision::Reply(Reply::News {
                articles: vec![a.clone(), b.clone()],
            }),
        );
        // Custom rules send every article (one customer-service message each).
        let custom = rules_from_toml(
            "[[rule]]\nreply = { news = [{ title = \"A\", description = \"a\", pic_url = \"https://e.com/a.jpg\", url = \"https://e.com/a\" }, { title = \"B\" }] }\n",
            RulePath::Custom,
        )
        .unwrap();
        check(
            &custom,
            &text_msg("news"),
            Decision::Reply(Reply::News {
                articles: vec![a, b],
            }),
        );
    }

    #[test]
    fn config_errors_name_the_problem() {
        let check_problem =
            |toml_text: &str, path: RulePath, index: usize, problem: RuleProblem, key: &str| {
                let error = rules_from_toml(toml_text, path).unwrap_err();
                assert_eq!(error, RuleError { index, problem }, "{toml_text}");
                assert_eq!(error.problem.key(), key);
            };
        let ok_rule = "[[rule]]\nreply = { text = \"ok\" }\n";
        check_problem(
            &format!(
                "{ok_rule}[[rule]]\nreply = {{ text = \"x\", image = {{ media_id = \"m\" }} }}"
            ),
            RulePath::Passive,
            1,
            RuleProblem::TwoReplyKinds("text", "image"),
            "reply",
        );
        check_problem(
            "[[rule]]\nreply = {}",
            RulePath::Passive,
            0,
            RuleProblem::NoReplyKind,
            "reply",
        );
        let error = rules_from_toml(
            "[[rule]]\nmatch = { content_regex = \"(unclosed\" }\nreply = { text = \"x\" }",
            RulePath::Passive,
        )
        .unwrap_err();
        assert!(matches!(error.problem, RuleProblem::BadRegex(_)), "{error}");
        assert_eq!(error.problem.key(), "match.content_regex");
        check_problem(
            "[[rule]]\nreply = { transfer_customer_service = {} }",
            RulePath::Custom,
            0,
            RuleProblem::TransferOnCustomPath,
            "reply.transfer_customer_service",
        );
        check_problem(
            "[[rule]]\nmatch = { msg_type = [\"text\", \"Text\"] }\nreply = { text = \"x\" }",
            RulePath::Passive,
            0,
            RuleProblem::UnknownMsgType("Text".into()),
            "match.msg_type",
        );
        check_problem(
            "[[rule]]\nmatch = { msg_type = [] }\nreply = { text = \"x\" }",
            RulePath::Passive,
            0,
            RuleProblem::EmptyList("msg_type"),
            "match.msg_type",
        );
        check_problem(
            "[[rule]]\nmatch = { event = [] }\nreply = { text = \"x\" }",
            RulePath::Passive,
            0,
            RuleProblem::EmptyList("event"),
            "match.event",
        );
        check_problem(
            "[[rule]]\nreply = { echo = false }",
            RulePath::Passive,
            0,
            RuleProblem::FalseFlag("echo"),
            "reply.echo",
        );
        check_problem(
            "[[rule]]\nreply = { success = false }",
            RulePath::Passive,
            0,
            RuleProblem::FalseFlag("success"),
            "reply.success",
        );
        check_problem(
            "[[rule]]\nreply = { news = [] }",
            RulePath::Passive,
            0,
            RuleProblem::NewsArticleCount(0),
            "reply.news",
        );
        let nine = ["{ title = \"t\" }"; 9].join(", ");
        check_problem(
            &format!("[[rule]]\nreply = {{ news = [{nine}] }}"),
            RulePath::Passive,
            0,
            RuleProblem::NewsArticleCount(9),
            "reply.news",
        );
        check_problem(
            "[[rule]]\nreply = { text = \"{nope}\" }",
            RulePath::Custom,
            0,
            RuleProblem::UnknownPlaceholder("nope".into()),
            "reply.text",
        );
        // Transfer is fine on the passive path.
        assert!(
            rules_from_toml(
                "[[rule]]\nreply = { transfer_customer_service = {} }",
                RulePath::Passive
            )
            .is_ok()
        );
    }

    #[test]
    fn unknown_keys_are_refused_by_serde() {
        for bad in [
            "match = { msgtype = \"text\" }\nreply = { text = \"x\" }",
            "reply = { txt = \"x\" }",
            "reply = { image = { media = \"m\" } }",
            "reply = { text = \"x\" }\nextra = 1",
            "match = { msg_type = 3 }\nreply = { text = \"x\" }",
        ] {
            assert!(toml::from_str::<RuleSpec>(bad).is_err(), "{bad}");
        }
        let spec: RuleSpec = toml::from_str("reply = { text = \"x\" }").unwrap();
        assert_eq!(spec.match_spec, MatchSpec::default());
    }

    #[test]
    fn specs_round_trip_through_json() {
        let spec: RuleSpec = toml::from_str(
            "match = { msg_type = [\"text\"], event = \"SCAN\", content_regex = \"a+\" }\nreply = { video = { media_id = \"m\" } }",
        )
        .unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<RuleSpec>(&json).unwrap(), spec);
    }

    fn arbitrary_message() -> impl Strategy<Value = InboundMessage> {
        let name = prop_oneof![
            Just("Content".to_owned()),
            Just("EventKey".to_owned()),
            Just("MediaId".to_owned()),
            Just("Recognition".to_owned()),
            Just("Location_X".to_owned()),
            Just("Label".to_owned()),
            ".{0,8}",
        ];
        (
            prop_oneof![
                Just("text".to_owned()),
                Just("event".to_owned()),
                Just("image".to_owned()),
                Just("video".to_owned()),
                ".{0,6}"
            ],
            proptest::option::of(prop_oneof![
                Just("subscribe".to_owned()),
                Just("SCAN".to_owned()),
                ".{0,6}"
            ]),
            proptest::option::of(any::<u64>()),
            proptest::collection::vec((name, ".{0,12}"), 0..6),
            ".{0,8}",
            any::<i64>(),
        )
            .prop_map(|(msg_type, event, msg_id, fields, from, create_time)| {
                InboundMessage {
                    to_user_name: "gh".into(),
                    from_user_name: from,
                    create_time,
                    msg_type,
                    event,
                    msg_id,
                    fields,
                    kind: crate::message::MessageKind::Other,
                }
            })
    }

    proptest! {
        #[test]
        fn decide_never_panics(message in arbitrary_message()) {
            let rules = rules_from_toml(
                r#"
[[rule]]
match = { content_regex = "^a.*z$" }
reply = { text = "{content}{{}}{scene|s}{latitude}{msg_id}{label|l}" }
[[rule]]
match = { event = "subscribe", event_key_prefix = "qrscene_" }
reply = { text = "{scene}" }
[[rule]]
match = { msg_type = ["image", "video"] }
reply = { echo = true }
[[rule]]
match = { event = "scan" }
reply = { news = [{ title = "a" }, { title = "b" }] }
[[rule]]
reply = { echo = true }
"#,
                RulePath::Passive,
            )
            .unwrap();
            let _ = rules.decide(&message);
            let _ = crate::event_id(".", &message);
        }
    }
}

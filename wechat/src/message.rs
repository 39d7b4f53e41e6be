//! Inbound pushes (docs/protocol.md §3): the encrypted envelope, and the full typed
//! message with every element kept by its WeChat name.

use crate::xml::{self, Leaf};

/// Bounds applied to every XML document before and while it is read.
///
/// A document over any bound is refused with [`ParseError::TooLarge`],
/// [`ParseError::TooDeep`] or [`ParseError::TooManyElements`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted document, in bytes.
    pub max_bytes: usize,
    /// Deepest accepted nesting; the root `<xml>` is depth 1, so
    /// `<xml><SendPicsInfo><PicList><item><PicMd5Sum>` is depth 5.
    pub max_depth: usize,
    /// Most elements (root included) in one document.
    pub max_elements: usize,
}

impl Default for Limits {
    /// 1 MiB, depth 8, 1024 elements: far above any real push (typically
    /// under 2 KB, compat mode about three times that).
    fn default() -> Self {
        Limits {
            max_bytes: 1024 * 1024,
            max_depth: 8,
            max_elements: 1024,
        }
    }
}

/// Why an XML document (push, reply or reply envelope) was refused.
///
/// Messages never contain the document or its values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not well-formed XML, an undefined entity, text outside the root, …;
    /// the string is a short fixed reason.
    #[error("malformed xml: {0}")]
    Malformed(String),
    /// The root element is not `<xml>`.
    #[error("root element is not <xml>")]
    NotXmlRoot,
    /// A DOCTYPE, a markup declaration such as `<!ENTITY`, or a processing
    /// instruction other than the leading XML declaration (XXE protection).
    #[error("doctype, entity declaration or processing instruction refused")]
    Doctype,
    /// Longer than [`Limits::max_bytes`].
    #[error("document too large")]
    TooLarge,
    /// Nested deeper than [`Limits::max_depth`].
    #[error("document nested too deeply")]
    TooDeep,
    /// More elements than [`Limits::max_elements`].
    #[error("document has too many elements")]
    TooManyElements,
    /// A required element is absent; names the element (`"MsgType"`).
    #[error("missing element {0}")]
    Missing(&'static str),
    /// An element that must hold a number does not; names the element.
    #[error("element {0} is not a valid number")]
    BadNumber(&'static str),
    /// The document is not valid UTF-8.
    #[error("document is not valid utf-8")]
    BadUtf8,
    /// A reply's `MsgType` is not one of the seven passive reply types (§4.3).
    #[error("unknown reply MsgType")]
    UnknownReplyType,
    /// A news reply whose `ArticleCount` differs from its number of items,
    /// or has no item, or more than 8.
    #[error("news ArticleCount does not match its items or is out of 1..=8")]
    BadArticleCount,
}

/// The outer body of an encrypted push (docs/protocol.md §2.6): `ToUserName` and
/// `Encrypt` as found directly under the root, each `None` when absent.
///
/// Works on safe-mode bodies and on compat-mode bodies (which also carry the
/// plain fields, ignored here). Nothing is verified: check `msg_signature`
/// over `encrypt` before decrypting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The account's original id (`gh_…`), usable as a cross-check.
    pub to_user_name: Option<String>,
    /// The base64 ciphertext exactly as carried (no trimming).
    pub encrypt: Option<String>,
}

/// Reads the top-level `ToUserName` and `Encrypt` of an encrypted push body.
///
/// The same XML rules and `limits` as [`parse`] apply (root `<xml>`, no
/// DOCTYPE, …). A missing `Encrypt` is not an error here; the caller decides.
pub fn parse_envelope(xml: &[u8], limits: &Limits) -> Result<Envelope, ParseError> {
    let mut envelope = Envelope {
        to_user_name: None,
        encrypt: None,
    };
    xml::walk(xml, limits, |leaf| {
        if leaf.top_level {
            match leaf.path {
                "ToUserName" => envelope.to_user_name = Some(leaf.value.to_owned()),
                "Encrypt" => envelope.encrypt = Some(leaf.value.to_owned()),
                _ => {}
            }
        }
        Ok(())
    })?;
    Ok(envelope)
}

/// A parsed push: the common elements, every other element by name, and a
/// typed view of the known kinds.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundMessage {
    /// `ToUserName`: the account's original id (`gh_…`).
    pub to_user_name: String,
    /// `FromUserName`: the user's OpenID.
    pub from_user_name: String,
    /// `CreateTime`, Unix seconds.
    pub create_time: i64,
    /// `MsgType` as sent (`text`, `image`, …, `event`, or anything new).
    pub msg_type: String,
    /// `Event` as sent (case preserved), for `MsgType=event`.
    pub event: Option<String>,
    /// `MsgId`, or `MsgID` (job-finish events); `None` when absent or empty.
    pub msg_id: Option<u64>,
    /// Every other element in document order, by WeChat name: nested
    /// elements as dotted paths (`ScanCodeInfo.ScanResult`), the n-th
    /// repetition (n ≥ 1) of a name among its siblings with `[n]`
    /// (`SendPicsInfo.PicList.item[1].PicMd5Sum`). Elements with children
    /// have no entry of their own; empty elements give `""`. The `Encrypt`
    /// of a compat-mode body is left out.
    pub fields: Vec<(String, String)>,
    /// Typed view of the message; [`MessageKind::Other`] for unknown kinds.
    pub kind: MessageKind,
}

impl InboundMessage {
    /// The first value of `name` in [`InboundMessage::fields`] (a WeChat
    /// element name or dotted path); the common elements are not in there.
    pub fn field(&self, name: &str) -> Option<&str> {
        field_of(&self.fields, name)
    }
}

/// `scancode_push` or `scancode_waitmsg` (docs/protocol.md §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanCodeEvent {
    /// `scancode_push`: the client shows the result itself.
    Push,
    /// `scancode_waitmsg`: the client waits for the account's answer.
    WaitMsg,
}

/// Which picture button sent a `SendPicsInfo` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PicsEvent {
    /// `pic_sysphoto`.
    SysPhoto,
    /// `pic_photo_or_album`.
    PhotoOrAlbum,
    /// `pic_weixin`.
    Weixin,
}

/// Customer-service session events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KfSessionEvent {
    /// `kf_create_session`: an agent accepted the session.
    Create,
    /// `kf_close_session`: the agent closed the session.
    Close,
    /// `kf_switch_session`: the session moved between agents.
    Switch,
}

/// Subscription-notification events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeMsgEvent {
    /// `subscribe_msg_popup_event` (`SubscribeMsgPopupEvent/List`).
    Popup,
    /// `subscribe_msg_change_event` (`SubscribeMsgChangeEvent/List`).
    Change,
    /// `subscribe_msg_sent_event` (`SubscribeMsgSentEvent/List`).
    Sent,
}

/// One `List` entry of a subscription-notification event; absent elements
/// are `""`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeMsgItem {
    /// `TemplateId`.
    pub template_id: String,
    /// `SubscribeStatusString`: `accept` or `reject` (popup and change events).
    pub subscribe_status: String,
    /// `PopupScene`: 1 H5 page, 2 article (popup events).
    pub popup_scene: String,
    /// `MsgID` (sent events).
    pub msg_id: String,
    /// `ErrorCode` (sent events).
    pub error_code: String,
    /// `ErrorStatus` (sent events).
    pub error_status: String,
}

/// Typed view of a push (docs/protocol.md §3.2, §3.3).
///
/// Type-specific elements that are absent give `""`, `None` or `0`; only the
/// four common elements are required. A type-specific number that is present
/// but does not parse makes [`parse`] fail with [`ParseError::BadNumber`].
/// Event names are matched ignoring ASCII case.
#[derive(Debug, Clone, PartialEq)]
pub enum MessageKind {
    /// `text`: `Content`, and `bizmsgmenuid` when the user tapped a menu-message item.
    Text {
        /// `Content`.
        content: String,
        /// `bizmsgmenuid`: id of the tapped `msgmenu` item.
        bizmsgmenuid: Option<String>,
    },
    /// `image`.
    Image {
        /// `PicUrl`.
        pic_url: String,
        /// `MediaId` (temporary media).
        media_id: String,
    },
    /// `voice`.
    Voice {
        /// `MediaId`.
        media_id: String,
        /// `Format` (`amr`, `speex`, …).
        format: String,
        /// `Recognition` (speech to text), often present but empty.
        recognition: Option<String>,
        /// `MediaId16K`.
        media_id_16k: Option<String>,
    },
    /// `video`.
    Video {
        /// `MediaId`.
        media_id: String,
        /// `ThumbMediaId`.
        thumb_media_id: String,
    },
    /// `shortvideo`.
    ShortVideo {
        /// `MediaId`.
        media_id: String,
        /// `ThumbMediaId`.
        thumb_media_id: String,
    },
    /// `location` (a location message sent by the user).
    Location {
        /// `Location_X`, degrees.
        latitude: f64,
        /// `Location_Y`, degrees.
        longitude: f64,
        /// `Scale`, map zoom.
        scale: u32,
        /// `Label`, place description.
        label: String,
    },
    /// `link`.
    Link {
        /// `Title`.
        title: String,
        /// `Description`.
        description: String,
        /// `Url`.
        url: String,
    },
    /// Event `subscribe`; `event_key` is `qrscene_…` for a QR-code follow.
    Subscribe {
        /// `EventKey`; `None` when absent or empty.
        event_key: Option<String>,
        /// `Ticket`; `None` when absent or empty.
        ticket: Option<String>,
    },
    /// Event `unsubscribe`.
    Unsubscribe,
    /// Event `SCAN`: a follower scanned a parametric QR code.
    Scan {
        /// `EventKey`: the bare scene value.
        event_key: String,
        /// `Ticket`.
        ticket: String,
    },
    /// Event `LOCATION`: periodic location report.
    LocationReport {
        /// `Latitude`, degrees.
        latitude: f64,
        /// `Longitude`, degrees.
        longitude: f64,
        /// `Precision`, metres.
        precision: f64,
    },
    /// Event `CLICK`.
    Click {
        /// `EventKey`: the button key.
        event_key: String,
    },
    /// Event `VIEW`.
    View {
        /// `EventKey`: the button URL.
        event_key: String,
        /// `MenuId`.
        menu_id: String,
    },
    /// Events `scancode_push` / `scancode_waitmsg`.
    ScanCode {
        /// Which of the two.
        event: ScanCodeEvent,
        /// `EventKey`: the button key.
        event_key: String,
        /// `ScanCodeInfo.ScanType` (`qrcode`, …).
        scan_type: String,
        /// `ScanCodeInfo.ScanResult`: the decoded text.
        scan_result: String,
    },
    /// Events `pic_sysphoto` / `pic_photo_or_album` / `pic_weixin`.
    Pics {
        /// Which button.
        event: PicsEvent,
        /// `EventKey`: the button key.
        event_key: String,
        /// `SendPicsInfo.Count`.
        count: u32,
        /// Every `SendPicsInfo.PicList.item…PicMd5Sum`, in order.
        pic_md5_sums: Vec<String>,
    },
    /// Event `location_select`; values as sent (they arrive as text).
    LocationSelect {
        /// `EventKey`: the button key.
        event_key: String,
        /// `SendLocationInfo.Location_X` (latitude).
        location_x: String,
        /// `SendLocationInfo.Location_Y` (longitude).
        location_y: String,
        /// `SendLocationInfo.Scale`.
        scale: String,
        /// `SendLocationInfo.Label`.
        label: String,
        /// `SendLocationInfo.Poiname`, may be empty.
        poiname: String,
    },
    /// Event `view_miniprogram`.
    ViewMiniprogram {
        /// `EventKey`: the page path.
        event_key: String,
        /// `MenuId`.
        menu_id: String,
    },
    /// Event `TEMPLATESENDJOBFINISH`; the `MsgID` is in [`InboundMessage::msg_id`].
    TemplateSendJobFinish {
        /// `Status`: `success`, or starting with `failed`.
        status: String,
    },
    /// Event `MASSSENDJOBFINISH`; the `MsgID` is in [`InboundMessage::msg_id`].
    MassSendJobFinish {
        /// `Status`: `send success`, `send fail` or `err(N)`.
        status: String,
        /// `TotalCount`.
        total_count: u64,
        /// `FilterCount`.
        filter_count: u64,
        /// `SentCount`.
        sent_count: u64,
        /// `ErrorCount`.
        error_count: u64,
    },
    /// Events `kf_create_session` / `kf_close_session` / `kf_switch_session`.
    KfSession {
        /// Which of the three.
        event: KfSessionEvent,
        /// `KfAccount` (create, close).
        kf_account: String,
        /// `FromKfAccount` (switch).
        from_kf_account: String,
        /// `ToKfAccount` (switch).
        to_kf_account: String,
    },
    /// Events `subscribe_msg_popup_event` / `_change_event` / `_sent_event`.
    SubscribeMsg {
        /// Which of the three.
        event: SubscribeMsgEvent,
        /// One per repeated `List` element, in order.
        items: Vec<SubscribeMsgItem>,
    },
    /// Event `PUBLISHJOBFINISH` (also `FREEPUBLISHJOBFINISH`), from `PublishEventInfo`.
    PublishJobFinish {
        /// `publish_id`.
        publish_id: String,
        /// `publish_status`: 0 success, 1 publishing, 2–6 failures; `None` when absent.
        publish_status: Option<i64>,
        /// `article_id`.
        article_id: String,
        /// Every `article_detail.item…article_url`, in order.
        article_urls: Vec<String>,
    },
    /// Any other `MsgType` or event (including `file`): use
    /// [`InboundMessage::fields`]. Never an error.
    Other,
}

/// Parses a plain push (or the decrypted message of an encrypted one).
///
/// Requires root `<xml>` and `ToUserName`, `FromUserName`, `CreateTime` (an
/// integer) and `MsgType` directly under it; values may be CDATA, plain
/// text with entities, or a mix. Text is returned as written: line ends are
/// not normalised and plain text is not trimmed (numbers are). Refuses
/// DOCTYPE and entity declarations, documents over `limits`, invalid UTF-8,
/// and a present but unparsable `MsgId`/`MsgID` or type-specific number.
pub fn parse(xml: &[u8], limits: &Limits) -> Result<InboundMessage, ParseError> {
    if xml.len() > limits.max_bytes {
        return Err(ParseError::TooLarge);
    }
    parse_str(
        std::str::from_utf8(xml).map_err(|_| ParseError::BadUtf8)?,
        limits,
    )
}

/// [`parse`] for a message already held as text (a decrypted one, or a body the caller has
/// checked to be UTF-8), which is then not validated a second time.
pub fn parse_str(xml: &str, limits: &Limits) -> Result<InboundMessage, ParseError> {
    let mut to_user_name = None;
    let mut from_user_name = None;
    let mut create_time = None;
    let mut msg_type = None;
    let mut event = None;
    let mut msg_id = None;
    let mut fields = Vec::with_capacity(8);
    xml::walk_str(xml, limits, |leaf: Leaf<'_>| {
        if leaf.top_level {
            let slot = match leaf.path {
                "ToUserName" => &mut to_user_name,
                "FromUserName" => &mut from_user_name,
                "CreateTime" => &mut create_time,
                "MsgType" => &mut msg_type,
                "Event" => &mut event,
                "MsgId" | "MsgID" => &mut msg_id,
                // The encrypted copy of a compat-mode body is not a field.
                "Encrypt" => return Ok(()),
                _ => {
                    fields.push((leaf.path.to_owned(), leaf.value.to_owned()));
                    return Ok(());
                }
            };
            // `MsgId` and `MsgID` share a slot: the first one wins.
            if slot.is_none() {
                *slot = Some(leaf.value.to_owned());
            }
        } else {
            fields.push((leaf.path.to_owned(), leaf.value.to_owned()));
        }
        Ok(())
    })?;

    let to_user_name = to_user_name.ok_or(ParseError::Missing("ToUserName"))?;
    let from_user_name = from_user_name.ok_or(ParseError::Missing("FromUserName"))?;
    let create_time = create_time.ok_or(ParseError::Missing("CreateTime"))?;
    let create_time = create_time
        .trim()
        .parse::<i64>()
        .map_err(|_| ParseError::BadNumber("CreateTime"))?;
    let msg_type = msg_type.ok_or(ParseError::Missing("MsgType"))?;
    let msg_id = match msg_id.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(
            text.parse::<u64>()
                .map_err(|_| ParseError::BadNumber("MsgId"))?,
        ),
    };
    let kind = kind_of(&msg_type, event.as_deref(), &fields)?;
    Ok(InboundMessage {
        to_user_name,
        from_user_name,
        create_time,
        msg_type,
        event,
        msg_id,
        fields,
        kind,
    })
}

pub(crate) fn field_of<'f>(fields: &'f [(String, String)], name: &str) -> Option<&'f str> {
    fields
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// Typed-view builder over the collected fields.
struct View<'f> {
    fields: &'f [(String, String)],
}

impl View<'_> {
    fn text(&self, name: &str) -> String {
        field_of(self.fields, name).unwrap_or_default().to_owned()
    }

    fn non_empty(&self, name: &str) -> Option<String> {
        field_of(self.fields, name)
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
    }

    fn present(&self, name: &str) -> Option<String> {
        field_of(self.fields, name).map(str::to_owned)
    }

    /// A number: absent or blank → `None`; unparsable → `BadNumber(name)`.
    fn number<T: std::str::FromStr>(&self, name: &'static str) -> Result<Option<T>, ParseError> {
        match field_of(self.fields, name).map(str::trim) {
            None | Some("") => Ok(None),
            Some(text) => text
                .parse::<T>()
                .map(Some)
                .map_err(|_| ParseError::BadNumber(name)),
        }
    }

    fn degrees(&self, name: &'static str) -> Result<f64, ParseError> {
        match self.number::<f64>(name)? {
            Some(value) if !value.is_finite() => Err(ParseError::BadNumber(name)),
            value => Ok(value.unwrap_or(0.0)),
        }
    }

    /// Values of `{container}`, `{container}[n]`, … followed by `.{leaf}`, in order.
    fn repeated(&self, container: &str, leaf: &str) -> Vec<String> {
        self.fields
            .iter()
            .filter(|(key, _)| {
                key.strip_prefix(container)
                    .and_then(|rest| rest.strip_suffix(leaf))
                    .and_then(|rest| rest.strip_suffix('.'))
                    .is_some_and(|index| index.is_empty() || repetition_index(index).is_some())
            })
            .map(|(_, value)| value.clone())
            .collect()
    }
}

/// Parses a path suffix `[n]` (n ≥ 1) into `n`.
pub(crate) fn repetition_index(suffix: &str) -> Option<u32> {
    let digits = suffix.strip_prefix('[')?.strip_suffix(']')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|n| *n > 0)
}

/// Splits `rest` = `""` / `"[n]"` followed by `.key` into (n, key); n = 0 for the first.
pub(crate) fn split_repeated(rest: &str) -> Option<(u32, &str)> {
    if let Some(key) = rest.strip_prefix('.') {
        return Some((0, key));
    }
    let close = rest.find("].")?;
    let index = repetition_index(rest.get(..=close)?)?;
    Some((index, rest.get(close + 2..)?))
}

fn kind_of(
    msg_type: &str,
    event: Option<&str>,
    fields: &[(String, String)],
) -> Result<MessageKind, ParseError> {
    let v = View { fields };
    let kind = match msg_type {
        "text" => MessageKind::Text {
            content: v.text("Content"),
            bizmsgmenuid: v.present("bizmsgmenuid"),
        },
        "image" => MessageKind::Image {
            pic_url: v.text("PicUrl"),
            media_id: v.text("MediaId"),
        },
        "voice" => MessageKind::Voice {
            media_id: v.text("MediaId"),
            format: v.text("Format"),
            recognition: v.present("Recognition"),
            media_id_16k: v.present("MediaId16K"),
        },
        "video" => MessageKind::Video {
            media_id: v.text("MediaId"),
            thumb_media_id: v.text("ThumbMediaId"),
        },
        "shortvideo" => MessageKind::ShortVideo {
            media_id: v.text("MediaId"),
            thumb_media_id: v.text("ThumbMediaId"),
        },
        "location" => MessageKind::Location {
            latitude: v.degrees("Location_X")?,
            longitude: v.degrees("Location_Y")?,
            scale: v.number("Scale")?.unwrap_or(0),
            label: v.text("Label"),
        },
        "link" => MessageKind::Link {
            title: v.text("Title"),
            description: v.text("Description"),
            url: v.text("Url"),
        },
        "event" => event_kind(event.unwrap_or_default(), &v)?,
        _ => MessageKind::Other,
    };
    Ok(kind)
}

fn event_kind(event: &str, v: &View<'_>) -> Result<MessageKind, ParseError> {
    let is = |name: &str| event.eq_ignore_ascii_case(name);
    let kind = if is("subscribe") {
        MessageKind::Subscribe {
            event_key: v.non_empty("EventKey"),
            ticket: v.non_empty("Ticket"),
        }
    } else if is("unsubscribe") {
        MessageKind::Unsubscribe
    } else if is("SCAN") {
        MessageKind::Scan {
            event_key: v.text("EventKey"),
            ticket: v.text("Ticket"),
        }
    } else if is("LOCATION") {
        MessageKind::LocationReport {
            latitude: v.degrees("Latitude")?,
            longitude: v.degrees("Longitude")?,
            precision: v.degrees("Precision")?,
        }
    } else if is("CLICK") {
        MessageKind::Click {
            event_key: v.text("EventKey"),
        }
    } else if is("VIEW") {
        MessageKind::View {
            event_key: v.text("EventKey"),
            menu_id: v.text("MenuId"),
        }
    } else if let Some(scan_event) = [
        ("scancode_push", ScanCodeEvent::Push),
        ("scancode_waitmsg", ScanCodeEvent::WaitMsg),
    ]
    .into_iter()
    .find_map(|(name, e)| is(name).then_some(e))
    {
        MessageKind::ScanCode {
            event: scan_event,
            event_key: v.text("EventKey"),
            scan_type: v.text("ScanCodeInfo.ScanType"),
            scan_result: v.text("ScanCodeInfo.ScanResult"),
        }
    } else if let Some(pics_event) = [
        ("pic_sysphoto", PicsEvent::SysPhoto),
        ("pic_photo_or_album", PicsEvent::PhotoOrAlbum),
        ("pic_weixin", PicsEvent::Weixin),
    ]
    .into_iter()
    .find_map(|(name, e)| is(name).then_some(e))
    {
        MessageKind::Pics {
            event: pics_event,
            event_key: v.text("EventKey"),
            count: v.number("SendPicsInfo.Count")?.unwrap_or(0),
            pic_md5_sums: v.repeated("SendPicsInfo.PicList.item", "PicMd5Sum"),
        }
    } else if is("location_select") {
        MessageKind::LocationSelect {
            event_key: v.text("EventKey"),
            location_x: v.text("SendLocationInfo.Location_X"),
            location_y: v.text("SendLocationInfo.Location_Y"),
            scale: v.text("SendLocationInfo.Scale"),
            label: v.text("SendLocationInfo.Label"),
            poiname: v.text("SendLocationInfo.Poiname"),
        }
    } else if is("view_miniprogram") {
        MessageKind::ViewMiniprogram {
            event_key: v.text("EventKey"),
            menu_id: v.text("MenuId"),
        }
    } else if is("TEMPLATESENDJOBFINISH") {
        MessageKind::TemplateSendJobFinish {
            status: v.text("Status"),
        }
    } else if is("MASSSENDJOBFINISH") {
        MessageKind::MassSendJobFinish {
            status: v.text("Status"),
            total_count: v.number("TotalCount")?.unwrap_or(0),
            filter_count: v.number("FilterCount")?.unwrap_or(0),
            sent_count: v.number("SentCount")?.unwrap_or(0),
            error_count: v.number("ErrorCount")?.unwrap_or(0),
        }
    } else if let Some(kf_event) = [
        ("kf_create_session", KfSessionEvent::Create),
        ("kf_close_session", KfSessionEvent::Close),
        ("kf_switch_session", KfSessionEvent::Switch),
    ]
    .into_iter()
    .find_map(|(name, e)| is(name).then_some(e))
    {
        MessageKind::KfSession {
            event: kf_event,
            kf_account: v.text("KfAccount"),
            from_kf_account: v.text("FromKfAccount"),
            to_kf_account: v.text("ToKfAccount"),
        }
    } else if let Some((sub_event, container)) = [
        (
            "subscribe_msg_popup_event",
            SubscribeMsgEvent::Popup,
            "SubscribeMsgPopupEvent.List",
        ),
        (
            "subscribe_msg_change_event",
            SubscribeMsgEvent::Change,
            "SubscribeMsgChangeEvent.List",
        ),
        (
            "subscribe_msg_sent_event",
            SubscribeMsgEvent::Sent,
            "SubscribeMsgSentEvent.List",
        ),
    ]
    .into_iter()
    .find_map(|(name, e, container)| is(name).then_some((e, container)))
    {
        MessageKind::SubscribeMsg {
            event: sub_event,
            items: subscribe_items(v.fields, container),
        }
    } else if is("PUBLISHJOBFINISH") || is("FREEPUBLISHJOBFINISH") {
        MessageKind::PublishJobFinish {
            publish_id: v.text("PublishEventInfo.publish_id"),
            publish_status: v.number("PublishEventInfo.publish_status")?,
            article_id: v.text("PublishEventInfo.article_id"),
            article_urls: v.repeated("PublishEventInfo.article_detail.item", "article_url"),
        }
    } else {
        MessageKind::Other
    };
    Ok(kind)
}

fn subscribe_items(fields: &[(String, String)], container: &str) -> Vec<SubscribeMsgItem> {
    let mut items: Vec<(u32, SubscribeMsgItem)> = Vec::new();
    for (key, value) in fields {
        let Some((index, leaf)) = key.strip_prefix(container).and_then(split_repeated) else {
            continue;
        };
        let item = match items.iter().position(|(i, _)| *i == index) {
            Some(position) => items.get_mut(position).map(|(_, item)| item),
            None => {
                items.push((index, SubscribeMsgItem::default()));
                items.last_mut().map(|(_, item)| item)
            }
        };
        let Some(item) = item else { continue };
        let slot = match leaf {
            "TemplateId" => &mut item.template_id,
            "SubscribeStatusString" => &mut item.subscribe_status,
            "PopupScene" => &mut item.popup_scene,
            "MsgID" | "MsgId" => &mut item.msg_id,
            "ErrorCode" => &mut item.error_code,
            "ErrorStatus" => &mut item.error_status,
            _ => continue,
        };
        slot.clone_from(value);
    }
    items.into_iter().map(|(_, item)| item).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HDR: &str = "<ToUserName><![CDATA[gh_0123456789ab]]></ToUserName><FromUserName><![CDATA[oUSER_OPENID_xxxxxxxxxxxxxxx]]></FromUserName><CreateTime>1700000000</CreateTime>";

    fn parse_str(xml: &str) -> Result<InboundMessage, ParseError> {
        parse(xml.as_bytes(), &Limits::default())
    }

    /// Parses `<xml>{HDR}{body}</xml>`.
    fn with_hdr(body: &str) -> InboundMessage {
        parse_str(&format!("<xml>{HDR}{body}</xml>")).unwrap()
    }

    fn check_kind(body: &str, expected: MessageKind) -> InboundMessage {
        let msg = with_hdr(body);
        assert_eq!(msg.kind, expected, "{body}");
        assert_eq!(msg.to_user_name, "gh_0123456789ab");
        assert_eq!(msg.from_user_name, "oUSER_OPENID_xxxxxxxxxxxxxxx");
        assert_eq!(msg.create_time, 1700000000);
        msg
    }

    fn check_err(xml: &str, expected: ParseError) {
        assert_eq!(parse_str(xml), Err(expected), "{xml}");
    }

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn event(name: &str, rest: &str) -> String {
        format!("<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[{name}]]></Event>{rest}")
    }

    #[test]
    fn text_message_pretty_printed() {
        let msg = parse_str(
            "<xml>\n  <ToUserName><![CDATA[gh_0123456789ab]]></ToUserName>\n  <FromUserName><![CDATA[oUSER_OPENID_xxxxxxxxxxxxxxx]]></FromUserName>\n  <CreateTime>1700000000</CreateTime>\n  <MsgType><![CDATA[text]]></MsgType>\n  <Content><![CDATA[hello]]></Content>\n  <MsgId>24000000000000001</MsgId>\n</xml>",
        )
        .unwrap();
        assert_eq!(
            msg,
            InboundMessage {
                to_user_name: "gh_0123456789ab".into(),
                from_user_name: "oUSER_OPENID_xxxxxxxxxxxxxxx".into(),
                create_time: 1700000000,
                msg_type: "text".into(),
                event: None,
                msg_id: Some(24000000000000001),
                fields: fields(&[("Content", "hello")]),
                kind: MessageKind::Text {
                    content: "hello".into(),
                    bizmsgmenuid: None
                },
            }
        );
        assert_eq!(msg.field("Content"), Some("hello"));
        assert_eq!(msg.field("MsgType"), None);
    }

    #[test]
    fn normal_messages() {
        check_kind(
            "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[满意]]></Content><bizmsgmenuid>101</bizmsgmenuid><MsgId>1</MsgId>",
            MessageKind::Text {
                content: "满意".into(),
                bizmsgmenuid: Some("101".into()),
            },
        );
        check_kind(
            "<MsgType><![CDATA[image]]></MsgType><PicUrl><![CDATA[http://mmbiz.qpic.cn/x]]></PicUrl><MediaId><![CDATA[MEDIA_ID]]></MediaId><MsgId>2</MsgId>",
            MessageKind::Image {
                pic_url: "http://mmbiz.qpic.cn/x".into(),
                media_id: "MEDIA_ID".into(),
            },
        );
        let voice = check_kind(
            "<MsgType><![CDATA[voice]]></MsgType><MediaId><![CDATA[MEDIA_ID]]></MediaId><Format><![CDATA[amr]]></Format><MediaId16K><![CDATA[MEDIA_ID_16K]]></MediaId16K><Recognition><![CDATA[]]></Recognition><MsgId>3</MsgId>",
            MessageKind::Voice {
                media_id: "MEDIA_ID".into(),
                format: "amr".into(),
                recognition: Some(String::new()),
                media_id_16k: Some("MEDIA_ID_16K".into()),
            },
        );
        assert_eq!(voice.field("Recognition"), Some(""));
        check_kind(
            "<MsgType><![CDATA[voice]]></MsgType><MediaId><![CDATA[M]]></MediaId><Format><![CDATA[speex]]></Format><MsgId>3</MsgId>",
            MessageKind::Voice {
                media_id: "M".into(),
                format: "speex".into(),
                recognition: None,
                media_id_16k: None,
            },
        );
        check_kind(
            "<MsgType><![CDATA[video]]></MsgType><MediaId><![CDATA[MEDIA_ID]]></MediaId><ThumbMediaId><![CDATA[THUMB_ID]]></ThumbMediaId><MsgId>4</MsgId>",
            MessageKind::Video {
                media_id: "MEDIA_ID".into(),
                thumb_media_id: "THUMB_ID".into(),
            },
        );
        check_kind(
            "<MsgType><![CDATA[shortvideo]]></MsgType><MediaId><![CDATA[MEDIA_ID]]></MediaId><ThumbMediaId><![CDATA[THUMB_ID]]></ThumbMediaId><MsgId>5</MsgId>",
            MessageKind::ShortVideo {
                media_id: "MEDIA_ID".into(),
                thumb_media_id: "THUMB_ID".into(),
            },
        );
        check_kind(
            "<MsgType><![CDATA[location]]></MsgType><Location_X>23.134521</Location_X><Location_Y>113.358803</Location_Y><Scale>20</Scale><Label><![CDATA[Some street]]></Label><MsgId>6</MsgId>",
            MessageKind::Location {
                latitude: 23.134521,
                longitude: 113.358803,
                scale: 20,
                label: "Some street".into(),
            },
        );
        check_kind(
            "<MsgType><![CDATA[link]]></MsgType><Title><![CDATA[T]]></Title><Description><![CDATA[D]]></Description><Url><![CDATA[https://e.com/]]></Url><MsgId>7</MsgId>",
            MessageKind::Link {
                title: "T".into(),
                description: "D".into(),
                url: "https://e.com/".into(),
            },
        );
    }

    #[test]
    fn article_message_fields_and_unknown_elements_are_kept() {
        let msg = with_hdr(
            "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi]]></Content><MsgId>8</MsgId><MsgDataId>100</MsgDataId><Idx>1</Idx><Brand_New><A>x</A><B/></Brand_New>",
        );
        assert_eq!(
            msg.fields,
            fields(&[
                ("Content", "hi"),
                ("MsgDataId", "100"),
                ("Idx", "1"),
                ("Brand_New.A", "x"),
                ("Brand_New.B", ""),
            ])
        );
    }

    #[test]
    fn missing_type_specific_elements_are_tolerated() {
        check_kind(
            "<MsgType><![CDATA[location]]></MsgType>",
            MessageKind::Location {
                latitude: 0.0,
                longitude: 0.0,
                scale: 0,
                label: String::new(),
            },
        );
        check_kind(
            "<MsgType>text</MsgType>",
            MessageKind::Text {
                content: String::new(),
                bizmsgmenuid: None,
            },
        );
        check_kind(
            &event("MASSSENDJOBFINISH", "<MsgID>1</MsgID>"),
            MessageKind::MassSendJobFinish {
                status: String::new(),
                total_count: 0,
                filter_count: 0,
                sent_count: 0,
                error_count: 0,
            },
        );
    }

    #[test]
    fn subscribe_events() {
        let msg = parse_str(
            "<xml>\n  <ToUserName><![CDATA[gh_0123456789ab]]></ToUserName>\n  <FromUserName><![CDATA[oUSER_OPENID_xxxxxxxxxxxxxxx]]></FromUserName>\n  <CreateTime>1700000010</CreateTime>\n  <MsgType><![CDATA[event]]></MsgType>\n  <Event><![CDATA[subscribe]]></Event>\n  <EventKey><![CDATA[qrscene_123]]></EventKey>\n  <Ticket><![CDATA[QR_TICKET]]></Ticket>\n</xml>",
        )
        .unwrap();
        assert_eq!(msg.event.as_deref(), Some("subscribe"));
        assert_eq!(msg.msg_id, None);
        assert_eq!(
            msg.kind,
            MessageKind::Subscribe {
                event_key: Some("qrscene_123".into()),
                ticket: Some("QR_TICKET".into()),
            }
        );
        assert_eq!(
            msg.fields,
            fields(&[("EventKey", "qrscene_123"), ("Ticket", "QR_TICKET")])
        );
        check_kind(
            &event("subscribe", "<EventKey><![CDATA[]]></EventKey>"),
            MessageKind::Subscribe {
                event_key: None,
                ticket: None,
            },
        );
        check_kind(&event("unsubscribe", ""), MessageKind::Unsubscribe);
        check_kind(
            &event(
                "SCAN",
                "<EventKey><![CDATA[123]]></EventKey><Ticket><![CDATA[QR_TICKET]]></Ticket>",
            ),
            MessageKind::Scan {
                event_key: "123".into(),
                ticket: "QR_TICKET".into(),
            },
        );
    }

    #[test]
    fn menu_and_location_events() {
        check_kind(
            &event(
                "LOCATION",
                "<Latitude>23.137466</Latitude><Longitude>113.352425</Longitude><Precision>119.385040</Precision>",
            ),
            MessageKind::LocationReport {
                latitude: 23.137466,
                longitude: 113.352425,
                precision: 119.38504,
            },
        );
        check_kind(
            &event("CLICK", "<EventKey><![CDATA[V1001_TODAY]]></EventKey>"),
            MessageKind::Click {
                event_key: "V1001_TODAY".into(),
            },
        );
        check_kind(
            &event(
                "VIEW",
                "<EventKey><![CDATA[https://www.example.com/page]]></EventKey><MenuId>410418124</MenuId>",
            ),
            MessageKind::View {
                event_key: "https://www.example.com/page".into(),
                menu_id: "410418124".into(),
            },
        );
        check_kind(
            &event(
                "view_miniprogram",
                "<EventKey><![CDATA[pages/index/index]]></EventKey><MenuId>MENUID</MenuId>",
            ),
            MessageKind::ViewMiniprogram {
                event_key: "pages/index/index".into(),
                menu_id: "MENUID".into(),
            },
        );
    }

    #[test]
    fn scancode_event_has_nested_fields() {
        let msg = check_kind(
            &event(
                "scancode_waitmsg",
                "\n  <EventKey><![CDATA[rselfmenu_0_0]]></EventKey>\n  <ScanCodeInfo>\n    <ScanType><![CDATA[qrcode]]></ScanType>\n    <ScanResult><![CDATA[https://example.com/decoded-text]]></ScanResult>\n  </ScanCodeInfo>\n",
            ),
            MessageKind::ScanCode {
                event: ScanCodeEvent::WaitMsg,
                event_key: "rselfmenu_0_0".into(),
                scan_type: "qrcode".into(),
                scan_result: "https://example.com/decoded-text".into(),
            },
        );
        assert_eq!(
            msg.fields,
            fields(&[
                ("EventKey", "rselfmenu_0_0"),
                ("ScanCodeInfo.ScanType", "qrcode"),
                (
                    "ScanCodeInfo.ScanResult",
                    "https://example.com/decoded-text"
                ),
            ])
        );
        check_kind(
            &event("scancode_push", "<EventKey>k</EventKey>"),
            MessageKind::ScanCode {
                event: ScanCodeEvent::Push,
                event_key: "k".into(),
                scan_type: String::new(),
                scan_result: String::new(),
            },
        );
    }

    #[test]
    fn pics_event_with_one_and_many_items() {
        let msg = check_kind(
            &event(
                "pic_photo_or_album",
                "<EventKey><![CDATA[rselfmenu_1_1]]></EventKey><SendPicsInfo><Count>1</Count><PicList><item><PicMd5Sum><![CDATA[5a75aaca956d97be686719218f275c6b]]></PicMd5Sum></item></PicList></SendPicsInfo>",
            ),
            MessageKind::Pics {
                event: PicsEvent::PhotoOrAlbum,
                event_key: "rselfmenu_1_1".into(),
                count: 1,
                pic_md5_sums: vec!["5a75aaca956d97be686719218f275c6b".into()],
            },
        );
        assert_eq!(msg.field("SendPicsInfo.Count"), Some("1"));
        let msg = check_kind(
            &event(
                "pic_weixin",
                "<EventKey>k</EventKey><SendPicsInfo><Count>3</Count><PicList><item><PicMd5Sum>a</PicMd5Sum></item><item><PicMd5Sum>b</PicMd5Sum></item><item><PicMd5Sum>c</PicMd5Sum></item></PicList></SendPicsInfo>",
            ),
            MessageKind::Pics {
                event: PicsEvent::Weixin,
                event_key: "k".into(),
                count: 3,
                pic_md5_sums: vec!["a".into(), "b".into(), "c".into()],
            },
        );
        assert_eq!(
            msg.fields,
            fields(&[
                ("EventKey", "k"),
                ("SendPicsInfo.Count", "3"),
                ("SendPicsInfo.PicList.item.PicMd5Sum", "a"),
                ("SendPicsInfo.PicList.item[1].PicMd5Sum", "b"),
                ("SendPicsInfo.PicList.item[2].PicMd5Sum", "c"),
            ])
        );
        check_kind(
            &event("pic_sysphoto", ""),
            MessageKind::Pics {
                event: PicsEvent::SysPhoto,
                event_key: String::new(),
                count: 0,
                pic_md5_sums: vec![],
            },
        );
    }

    #[test]
    fn location_select_event() {
        check_kind(
            &event(
                "location_select",
                "<EventKey><![CDATA[rselfmenu_2_0]]></EventKey><SendLocationInfo><Location_X><![CDATA[23]]></Location_X><Location_Y><![CDATA[113]]></Location_Y><Scale><![CDATA[15]]></Scale><Label><![CDATA[Guangzhou, Haizhu District]]></Label><Poiname><![CDATA[]]></Poiname></SendLocationInfo>",
            ),
            MessageKind::LocationSelect {
                event_key: "rselfmenu_2_0".into(),
                location_x: "23".into(),
                location_y: "113".into(),
                scale: "15".into(),
                label: "Guangzhou, Haizhu District".into(),
                poiname: String::new(),
            },
        );
    }

    #[test]
    fn job_finish_events_use_capital_d_msg_id() {
        let msg = check_kind(
            &event(
                "TEMPLATESENDJOBFINISH",
                "<MsgID>3487542469355618313</MsgID><Status><![CDATA[failed:user block]]></Status>",
            ),
            MessageKind::TemplateSendJobFinish {
                status: "failed:user block".into(),
            },
        );
        assert_eq!(msg.msg_id, Some(3487542469355618313));
        assert_eq!(msg.fields, fields(&[("Status", "failed:user block")]));

        let msg = check_kind(
            &event(
                "MASSSENDJOBFINISH",
                "<MsgID>1000001625</MsgID><Status><![CDATA[send success]]></Status><TotalCount>100</TotalCount><FilterCount>80</FilterCount><SentCount>75</SentCount><ErrorCount>5</ErrorCount><CopyrightCheckResult><Count>1</Count><ResultList><item><ArticleIdx>1</ArticleIdx><UserDeclareState>0</UserDeclareState><AuditState>2</AuditState><OriginalArticleUrl><![CDATA[URL]]></OriginalArticleUrl><OriginalArticleType>1</OriginalArticleType><CanReprint>1</CanReprint><NeedReplaceContent>1</NeedReplaceContent><NeedShowReprintSource>1</NeedShowReprintSource></item></ResultList><CheckState>2</CheckState></CopyrightCheckResult><ArticleUrlResult><Count>1</Count><ResultList><item><ArticleIdx>1</ArticleIdx><ArticleUrl><![CDATA[https://mp.weixin.qq.com/s/XXXX]]></ArticleUrl></item></ResultList></ArticleUrlResult>",
            ),
            MessageKind::MassSendJobFinish {
                status: "send success".into(),
                total_count: 100,
                filter_count: 80,
                sent_count: 75,
                error_count: 5,
            },
        );
        assert_eq!(msg.msg_id, Some(1000001625));
        assert_eq!(
            msg.field("CopyrightCheckResult.ResultList.item.OriginalArticleUrl"),
            Some("URL")
        );
        assert_eq!(msg.field("CopyrightCheckResult.CheckState"), Some("2"));
        assert_eq!(
            msg.field("ArticleUrlResult.ResultList.item.ArticleUrl"),
            Some("https://mp.weixin.qq.com/s/XXXX")
        );
    }

    #[test]
    fn kf_session_events() {
        check_kind(
            &event(
                "kf_create_session",
                "<KfAccount><![CDATA[agent1@gh_account]]></KfAccount>",
            ),
            MessageKind::KfSession {
                event: KfSessionEvent::Create,
                kf_account: "agent1@gh_account".into(),
                from_kf_account: String::new(),
                to_kf_account: String::new(),
            },
        );
        check_kind(
            &event(
                "kf_switch_session",
                "<FromKfAccount><![CDATA[agent1@gh_account]]></FromKfAccount><ToKfAccount><![CDATA[agent2@gh_account]]></ToKfAccount>",
            ),
            MessageKind::KfSession {
                event: KfSessionEvent::Switch,
                kf_account: String::new(),
                from_kf_account: "agent1@gh_account".into(),
                to_kf_account: "agent2@gh_account".into(),
            },
        );
        check_kind(
            &event("kf_close_session", "<KfAccount>a</KfAccount>"),
            MessageKind::KfSession {
                event: KfSessionEvent::Close,
                kf_account: "a".into(),
                from_kf_account: String::new(),
                to_kf_account: String::new(),
            },
        );
    }

    #[test]
    fn subscribe_msg_events_with_repeated_lists() {
        let msg = check_kind(
            &event(
                "subscribe_msg_popup_event",
                "\n  <SubscribeMsgPopupEvent>\n    <List><TemplateId><![CDATA[TEMPLATE_ID_1]]></TemplateId><SubscribeStatusString><![CDATA[accept]]></SubscribeStatusString><PopupScene>2</PopupScene></List>\n    <List><TemplateId><![CDATA[TEMPLATE_ID_2]]></TemplateId><SubscribeStatusString><![CDATA[reject]]></SubscribeStatusString><PopupScene>2</PopupScene></List>\n  </SubscribeMsgPopupEvent>\n",
            ),
            MessageKind::SubscribeMsg {
                event: SubscribeMsgEvent::Popup,
                items: vec![
                    SubscribeMsgItem {
                        template_id: "TEMPLATE_ID_1".into(),
                        subscribe_status: "accept".into(),
                        popup_scene: "2".into(),
                        ..SubscribeMsgItem::default()
                    },
                    SubscribeMsgItem {
                        template_id: "TEMPLATE_ID_2".into(),
                        subscribe_status: "reject".into(),
                        popup_scene: "2".into(),
                        ..SubscribeMsgItem::default()
                    },
                ],
            },
        );
        assert_eq!(
            msg.field("SubscribeMsgPopupEvent.List.TemplateId"),
            Some("TEMPLATE_ID_1")
        );
        assert_eq!(
            msg.field("SubscribeMsgPopupEvent.List[1].TemplateId"),
            Some("TEMPLATE_ID_2")
        );
        let msg = check_kind(
            &event(
                "subscribe_msg_sent_event",
                "<SubscribeMsgSentEvent><List><TemplateId>T</TemplateId><MsgID>1700</MsgID><ErrorCode>0</ErrorCode><ErrorStatus>success</ErrorStatus></List></SubscribeMsgSentEvent>",
            ),
            MessageKind::SubscribeMsg {
                event: SubscribeMsgEvent::Sent,
                items: vec![SubscribeMsgItem {
                    template_id: "T".into(),
                    msg_id: "1700".into(),
                    error_code: "0".into(),
                    error_status: "success".into(),
                    ..SubscribeMsgItem::default()
                }],
            },
        );
        // A nested MsgID is a field, not the message id.
        assert_eq!(msg.msg_id, None);
        check_kind(
            &event(
                "subscribe_msg_change_event",
                "<SubscribeMsgChangeEvent><List><TemplateId>T</TemplateId><SubscribeStatusString>reject</SubscribeStatusString></List></SubscribeMsgChangeEvent>",
            ),
            MessageKind::SubscribeMsg {
                event: SubscribeMsgEvent::Change,
                items: vec![SubscribeMsgItem {
                    template_id: "T".into(),
                    subscribe_status: "reject".into(),
                    ..SubscribeMsgItem::default()
                }],
            },
        );
    }

    #[test]
    fn publish_job_finish_event() {
        check_kind(
            &event(
                "PUBLISHJOBFINISH",
                "<PublishEventInfo><publish_id>2247503051</publish_id><publish_status>0</publish_status><article_id><![CDATA[b5O2OUs25HBxRceL7hfReg-U9QGeq9zQjiDvy]]></article_id><article_detail><count>2</count><item><idx>1</idx><article_url><![CDATA[URL1]]></article_url></item><item><idx>2</idx><article_url><![CDATA[URL2]]></article_url></item></article_detail></PublishEventInfo>",
            ),
            MessageKind::PublishJobFinish {
                publish_id: "2247503051".into(),
                publish_status: Some(0),
                article_id: "b5O2OUs25HBxRceL7hfReg-U9QGeq9zQjiDvy".into(),
                article_urls: vec!["URL1".into(), "URL2".into()],
            },
        );
    }

    #[test]
    fn unknown_types_and_events_are_other() {
        let msg = check_kind(
            "<MsgType><![CDATA[file]]></MsgType><Title>a.pdf</Title><FileKey>k</FileKey><MsgId>9</MsgId>",
            MessageKind::Other,
        );
        assert_eq!(msg.field("FileKey"), Some("k"));
        check_kind(
            &event("user_info_modified", "<OpenID>o</OpenID><AppID>wx</AppID>"),
            MessageKind::Other,
        );
        check_kind("<MsgType>brand_new</MsgType>", MessageKind::Other);
        // Event names match ignoring ASCII case.
        check_kind(
            &event("click", "<EventKey>K</EventKey>"),
            MessageKind::Click {
                event_key: "K".into(),
            },
        );
    }

    #[test]
    fn cdata_plain_text_entities_and_mixes() {
        let content = |value: &str| {
            with_hdr(&format!(
                "<MsgType>text</MsgType><Content>{value}</Content>"
            ))
            .field("Content")
            .map(str::to_owned)
            .unwrap()
        };
        assert_eq!(content("plain"), "plain");
        assert_eq!(content("<![CDATA[<b>&amp;</b>]]>"), "<b>&amp;</b>");
        assert_eq!(content("<![CDATA[a]]]]><![CDATA[>b]]>"), "a]]>b");
        assert_eq!(content("a &lt;&gt;&amp;&apos;&quot; b"), "a <>&'\" b");
        assert_eq!(content("&#20320;&#x597D;&#x1F600;"), "你好😀");
        assert_eq!(content("x<![CDATA[y]]>z"), "xyz");
        assert_eq!(content("\n   <![CDATA[v]]>\n"), "v");
        assert_eq!(content("  spaced  "), "  spaced  ");
        assert_eq!(content("&lt; &gt;"), "< >");
        assert_eq!(content("<![CDATA[a]]>&#32;<![CDATA[b]]> "), "a b");
        assert_eq!(content("a\r\nb"), "a\r\nb");
        assert_eq!(content("<!-- note -->c"), "c");
        assert_eq!(content(""), "");
        let numbers = parse_str(
            "<xml><ToUserName>t</ToUserName><FromUserName>f</FromUserName><CreateTime> 17 </CreateTime><MsgType><![CDATA[text]]></MsgType><MsgId><![CDATA[42]]></MsgId></xml>",
        )
        .unwrap();
        assert_eq!((numbers.create_time, numbers.msg_id), (17, Some(42)));
    }

    #[test]
    fn declaration_bom_and_comments_are_accepted() {
        let msg = parse_str(&format!(
            "\u{feff}<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- c -->\n<xml>{HDR}<MsgType>text</MsgType></xml>\n<!-- d -->\n"
        ))
        .unwrap();
        assert_eq!(msg.msg_type, "text");
    }

    #[test]
    fn dangerous_markup_is_refused() {
        let inner = format!("{HDR}<MsgType>text</MsgType>");
        for xml in [
            format!(
                "<!DOCTYPE xml [<!ENTITY x \"boom\">]><xml>{inner}<Content>&x;</Content></xml>"
            ),
            format!("<!DOCTYPE xml SYSTEM \"file:///etc/passwd\"><xml>{inner}</xml>"),
            format!("<!ENTITY x \"y\"><xml>{inner}</xml>"),
            format!("<xml><!ENTITY x \"y\">{inner}</xml>"),
            format!("<xml>{inner}<!DOCTYPE x></xml>"),
            format!("<?xml-stylesheet href=\"a\"?><xml>{inner}</xml>"),
            format!("<xml>{inner}<?php echo 1; ?></xml>"),
            format!("<!doctype xml><xml>{inner}</xml>"),
        ] {
            check_err(&xml, ParseError::Doctype);
        }
        // An undefined entity without a DOCTYPE is simply malformed.
        assert!(matches!(
            parse_str(&format!("<xml>{inner}<Content>&x;</Content></xml>")),
            Err(ParseError::Malformed(_))
        ));
        // The same text inside CDATA is just text.
        let msg = with_hdr(
            "<MsgType>text</MsgType><Content><![CDATA[<!DOCTYPE x><!ENTITY y>]]></Content>",
        );
        assert_eq!(msg.field("Content"), Some("<!DOCTYPE x><!ENTITY y>"));
    }

    #[test]
    fn required_elements() {
        let parts = [
            ("ToUserName", "<ToUserName>t</ToUserName>"),
            ("FromUserName", "<FromUserName>f</FromUserName>"),
            ("CreateTime", "<CreateTime>1</CreateTime>"),
            ("MsgType", "<MsgType>text</MsgType>"),
        ];
        for (missing, _) in parts {
            let body: String = parts
                .iter()
                .filter(|(name, _)| *name != missing)
                .map(|(_, xml)| *xml)
                .collect();
            check_err(&format!("<xml>{body}</xml>"), ParseError::Missing(missing));
        }
        // Nested elements of the same name do not count.
        check_err(
            &format!("<xml>{HDR}<X><MsgType>text</MsgType></X></xml>"),
            ParseError::Missing("MsgType"),
        );
        check_err("<xml/>", ParseError::Missing("ToUserName"));
    }

    #[test]
    fn bad_numbers() {
        let check = |body: &str, field: &'static str| {
            check_err(
                &format!("<xml>{HDR}{body}</xml>"),
                ParseError::BadNumber(field),
            );
        };
        check("<MsgType>text</MsgType><MsgId>12a</MsgId>", "MsgId");
        check("<MsgType>text</MsgType><MsgId>-1</MsgId>", "MsgId");
        check(
            "<MsgType>text</MsgType><MsgId>18446744073709551616</MsgId>",
            "MsgId",
        );
        check(
            "<MsgType>event</MsgType><Event>x</Event><MsgID>x</MsgID>",
            "MsgId",
        );
        check(
            "<MsgType>location</MsgType><Location_X>abc</Location_X>",
            "Location_X",
        );
        check(
            "<MsgType>location</MsgType><Location_Y>NaN</Location_Y>",
            "Location_Y",
        );
        check("<MsgType>location</MsgType><Scale>1.5</Scale>", "Scale");
        check(&event("LOCATION", "<Precision>p</Precision>"), "Precision");
        check(
            &event(
                "pic_weixin",
                "<SendPicsInfo><Count>x</Count></SendPicsInfo>",
            ),
            "SendPicsInfo.Count",
        );
        check(
            &event("MASSSENDJOBFINISH", "<SentCount>-1</SentCount>"),
            "SentCount",
        );
        check_err(
            "<xml><ToUserName>t</ToUserName><FromUserName>f</FromUserName><CreateTime>soon</CreateTime><MsgType>text</MsgType></xml>",
            ParseError::BadNumber("CreateTime"),
        );
        // Empty MsgId counts as absent.
        assert_eq!(
            with_hdr("<MsgType>text</MsgType><MsgId></MsgId>").msg_id,
            None
        );
    }

    #[test]
    fn structure_errors() {
        check_err(
            &format!("<root>{HDR}<MsgType>text</MsgType></root>"),
            ParseError::NotXmlRoot,
        );
        check_err(
            &format!("<XML>{HDR}<MsgType>text</MsgType></XML>"),
            ParseError::NotXmlRoot,
        );
        for xml in [
            String::new(),
            "   ".to_owned(),
            "success".to_owned(),
            format!("<xml>{HDR}<MsgType>text</MsgType>"),
            format!("<xml>{HDR}<MsgType>text</MsgType></xml><xml></xml>"),
            format!("<xml>{HDR}<MsgType>text</MsgType></xml>trailing"),
            format!("<xml>{HDR}<MsgType>text</Content></xml>"),
            format!("<xml>{HDR}<MsgType>a & b</MsgType></xml>"),
            format!("<xml>{HDR}<MsgType>&#0;</MsgType></xml>"),
            format!("<xml>{HDR}<MsgType>&#1;</MsgType></xml>"),
            format!("<xml>{HDR}<?xml version=\"1.0\"?><MsgType>t</MsgType></xml>"),
        ] {
            assert!(
                matches!(parse_str(&xml), Err(ParseError::Malformed(_))),
                "{xml:?} gave {:?}",
                parse_str(&xml)
            );
        }
        assert_eq!(
            parse(
                b"<xml><ToUserName>\xff</ToUserName></xml>",
                &Limits::default()
            ),
            Err(ParseError::BadUtf8)
        );
    }

    #[test]
    fn limits_are_enforced() {
        let xml = format!(
            "<xml>{HDR}<MsgType>text</MsgType><A><B><C><D><E>deep</E></D></C></B></A></xml>"
        );
        let ok = Limits::default();
        assert!(parse(xml.as_bytes(), &ok).is_ok());
        let check = |limits: Limits, expected: ParseError| {
            assert_eq!(parse(xml.as_bytes(), &limits), Err(expected));
        };
        check(
            Limits {
                max_bytes: xml.len() - 1,
                ..ok
            },
            ParseError::TooLarge,
        );
        check(Limits { max_depth: 5, ..ok }, ParseError::TooDeep);
        check(
            Limits {
                max_elements: 9,
                ..ok
            },
            ParseError::TooManyElements,
        );
        assert!(
            parse(
                xml.as_bytes(),
                &Limits {
                    max_depth: 6,
                    max_elements: 10,
                    max_bytes: xml.len()
                }
            )
            .is_ok()
        );
        let wide = format!(
            "<xml>{HDR}<MsgType>text</MsgType>{}</xml>",
            "<a/>".repeat(2000)
        );
        assert_eq!(
            parse(wide.as_bytes(), &ok),
            Err(ParseError::TooManyElements)
        );
        let deep = format!(
            "<xml>{}{}</xml>",
            "<a>".repeat(100_000),
            "</a>".repeat(100_000)
        );
        assert_eq!(parse(deep.as_bytes(), &ok), Err(ParseError::TooDeep));
    }

    #[test]
    fn compat_body_drops_encrypt_and_envelope_reads_it() {
        let body = format!(
            "<xml>{HDR}<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[abcdteT]]></Content><MsgId>6054768590064713728</MsgId><Encrypt><![CDATA[AAAA+/==]]></Encrypt></xml>"
        );
        let msg = parse_str(&body).unwrap();
        assert_eq!(msg.fields, fields(&[("Content", "abcdteT")]));
        assert_eq!(
            parse_envelope(body.as_bytes(), &Limits::default()).unwrap(),
            Envelope {
                to_user_name: Some("gh_0123456789ab".into()),
                encrypt: Some("AAAA+/==".into()),
            }
        );
        let safe = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<xml>\n    <ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>\n    <Encrypt><![CDATA[BASE64]]></Encrypt>\n</xml>";
        assert_eq!(
            parse_envelope(safe.as_bytes(), &Limits::default()).unwrap(),
            Envelope {
                to_user_name: Some("gh_10f6c3c3ac5a".into()),
                encrypt: Some("BASE64".into()),
            }
        );
        assert_eq!(
            parse_envelope(
                b"<xml><A><Encrypt>x</Encrypt></A></xml>",
                &Limits::default()
            )
            .unwrap(),
            Envelope {
                to_user_name: None,
                encrypt: None,
            }
        );
        assert_eq!(
            parse_envelope(b"<!DOCTYPE x><xml/>", &Limits::default()),
            Err(ParseError::Doctype)
        );
        assert_eq!(parse_str(safe), Err(ParseError::Missing("FromUserName")));
    }

    #[test]
    fn first_of_repeated_common_elements_wins() {
        let msg = with_hdr(
            "<MsgType>text</MsgType><MsgType>image</MsgType><MsgId>1</MsgId><MsgID>2</MsgID>",
        );
        assert_eq!(msg.msg_type, "text");
        assert_eq!(msg.msg_id, Some(1));
        assert_eq!(msg.fields, fields(&[("MsgType[1]", "image")]));
    }

    fn valid_samples() -> Vec<String> {
        vec![
            format!(
                "<xml>{HDR}<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[a]]]]><![CDATA[>b &amp;]]></Content><MsgId>1</MsgId></xml>"
            ),
            format!(
                "<xml>{HDR}{}</xml>",
                event(
                    "pic_weixin",
                    "<EventKey>k</EventKey><SendPicsInfo><Count>2</Count><PicList><item><PicMd5Sum>a</PicMd5Sum></item><item><PicMd5Sum>b</PicMd5Sum></item></PicList></SendPicsInfo>"
                )
            ),
            format!(
                "<xml>{HDR}<MsgType>location</MsgType><Location_X>23.1</Location_X><Location_Y>113.3</Location_Y><Scale>20</Scale><Label>&lt;x&gt;</Label></xml>"
            ),
        ]
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes, &Limits::default());
            let _ = parse_envelope(&bytes, &Limits::default());
        }

        #[test]
        fn parse_never_panics_on_xmlish_text(text in "[<>/!?\\[\\]&;#a-zA-Z0-9 \"'=-]{0,200}") {
            let xml = format!("<xml>{text}</xml>");
            let from_bytes = parse(xml.as_bytes(), &Limits::default());
            let from_text = super::parse_str(&xml, &Limits::default());
            prop_assert_eq!(format!("{from_bytes:?}"), format!("{from_text:?}"));
            let _ = parse_envelope(xml.as_bytes(), &Limits::default());
        }

        #[test]
        fn parse_never_panics_on_mutations(
            sample in 0usize..3,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..8),
        ) {
            let mut bytes = valid_samples()[sample].clone().into_bytes();
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
            let _ = parse(&bytes, &Limits::default());
            let _ = parse_envelope(&bytes, &Limits::default());
        }
    }
}

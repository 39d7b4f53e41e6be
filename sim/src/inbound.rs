//! The XML of pushes, written the way WeChat writes them (docs/protocol.md §3):
//! strings in CDATA, numbers bare, one element per line.

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;
use wechat::{PicsEvent, ScanCodeEvent};

/// Hands out `MsgId`s: increasing, 17-digit like current pushes, unique per
/// generator. Shareable between tasks.
#[derive(Debug)]
pub struct MsgIdGen {
    next: AtomicU64,
}

impl Default for MsgIdGen {
    fn default() -> Self {
        MsgIdGen::new()
    }
}

impl MsgIdGen {
    /// Starts at a random 17-digit id, so two runs rarely collide.
    pub fn new() -> MsgIdGen {
        MsgIdGen::starting_at(
            rand::rng().random_range(24_000_000_000_000_000..25_000_000_000_000_000),
        )
    }

    /// Starts at `first` (deterministic tests).
    pub fn starting_at(first: u64) -> MsgIdGen {
        MsgIdGen {
            next: AtomicU64::new(first),
        }
    }

    /// The next id.
    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

/// A random OpenID-shaped string: `o` and 27 characters of `[A-Za-z0-9_-]`.
pub fn random_openid() -> String {
    format!("o{}", crate::state::random_string(27))
}

/// The outcome fields of a `MASSSENDJOBFINISH` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MassJobResult {
    /// `Status`: `send success`, `send fail` or `err(N)`.
    pub status: String,
    /// `TotalCount`.
    pub total_count: u64,
    /// `FilterCount`.
    pub filter_count: u64,
    /// `SentCount`.
    pub sent_count: u64,
    /// `ErrorCount`.
    pub error_count: u64,
}

/// Builds push XML from one user to one account at one time.
///
/// `to_user_name` is the account's original id (`gh_…`), `from_user_name`
/// the user's OpenID. Every builder returns the complete plain XML
/// (encrypt it with [`crate::PushClient::push`], which does that per mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// `ToUserName`: the account's original id.
    pub to_user_name: String,
    /// `FromUserName`: the user's OpenID.
    pub from_user_name: String,
    /// `CreateTime`, Unix seconds.
    pub create_time: i64,
}

impl Inbound {
    /// Pushes from `openid` to the account `original_id` at `create_time`.
    pub fn new(
        original_id: impl Into<String>,
        openid: impl Into<String>,
        create_time: i64,
    ) -> Inbound {
        Inbound {
            to_user_name: original_id.into(),
            from_user_name: openid.into(),
            create_time,
        }
    }

    /// Like [`Inbound::new`] at the current system time.
    pub fn now(original_id: impl Into<String>, openid: impl Into<String>) -> Inbound {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Inbound::new(original_id, openid, now)
    }

    fn message(&self, msg_type: &str) -> Xml {
        let mut xml = Xml::start();
        xml.text("ToUserName", &self.to_user_name);
        xml.text("FromUserName", &self.from_user_name);
        xml.number("CreateTime", self.create_time);
        xml.text("MsgType", msg_type);
        xml
    }

    fn event(&self, event: &str) -> Xml {
        let mut xml = self.message("event");
        xml.text("Event", event);
        xml
    }

    /// A `text` message.
    pub fn text(&self, msg_id: u64, content: &str) -> String {
        let mut xml = self.message("text");
        xml.text("Content", content);
        xml.number("MsgId", msg_id);
        xml.finish()
    }

    /// A `text` message sent by tapping a `msgmenu` item (`bizmsgmenuid`).
    pub fn text_menu_reply(&self, msg_id: u64, content: &str, menu_item_id: &str) -> String {
        let mut xml = self.message("text");
        xml.text("Content", content);
        xml.number("MsgId", msg_id);
        xml.text("bizmsgmenuid", menu_item_id);
        xml.finish()
    }

    /// An `image` message.
    pub fn image(&self, msg_id: u64, pic_url: &str, media_id: &str) -> String {
        let mut xml = self.message("image");
        xml.text("PicUrl", pic_url);
        xml.text("MediaId", media_id);
        xml.number("MsgId", msg_id);
        xml.finish()
    }

    /// A `voice` message; `recognition` `None` leaves the element out
    /// (speech recognition off), `Some("")` sends it empty.
    pub fn voice(
        &self,
        msg_id: u64,
        media_id: &str,
        format: &str,
        recognition: Option<&str>,
    ) -> String {
        let mut xml = self.message("voice");
        xml.text("MediaId", media_id);
        xml.text("Format", format);
        if let Some(recognition) = recognition {
            xml.text("Recognition", recognition);
        }
        xml.number("MsgId", msg_id);
        xml.finish()
    }

    /// A `video` message.
    pub fn video(&self, msg_id: u64, media_id: &str, thumb_media_id: &str) -> String {
        self.video_like("video", msg_id, media_id, thumb_media_id)
    }

    /// A `shortvideo` message.
    pub fn short_video(&self, msg_id: u64, media_id: &str, thumb_media_id: &str) -> String {
        self.video_like("shortvideo", msg_id, media_id, thumb_media_id)
    }

    fn video_like(
        &self,
        msg_type: &str,
        msg_id: u64,
        media_id: &str,
        thumb_media_id: &str,
    ) -> String {
        let mut xml = self.message(msg_type);
        xml.text("MediaId", media_id);
        xml.text("ThumbMediaId", thumb_media_id);
        xml.number("MsgId", msg_id);
        xml.finish()
    }

    /// A `location` message (`Location_X` latitude, `Location_Y` longitude).
    pub fn location(
        &self,
        msg_id: u64,
        latitude: f64,
        longitude: f64,
        scale: u32,
        label: &str,
    ) -> String {
        let mut xml = self.message("location");
        xml.number("Location_X", format_args!("{latitude:.6}"));
        xml.number("Location_Y", format_args!("{longitude:.6}"));
        xml.number("Scale", scale);
        xml.text("Label", label);
        xml.number("MsgId", msg_id);
        xml.finish()
    }

    /// A `link` message.
    pub fn link(&self, msg_id: u64, title: &str, description: &str, url: &str) -> String {
        let mut xml = self.message("link");
        xml.text("Title", title);
        xml.text("Description", description);
        xml.text("Url", url);
        xml.number("MsgId", msg_id);
        xml.finish()
    }

    /// A plain `subscribe` event (empty `EventKey`).
    pub fn subscribe(&self) -> String {
        let mut xml = self.event("subscribe");
        xml.text("EventKey", "");
        xml.finish()
    }

    /// A `subscribe` through a parametric QR code: `EventKey` is
    /// `qrscene_` + `scene`, with the `Ticket`.
    pub fn subscribe_qr(&self, scene: &str, ticket: &str) -> String {
        let mut xml = self.event("subscribe");
        xml.text("EventKey", &format!("qrscene_{scene}"));
        xml.text("Ticket", ticket);
        xml.finish()
    }

    /// An `unsubscribe` event.
    pub fn unsubscribe(&self) -> String {
        let mut xml = self.event("unsubscribe");
        xml.text("EventKey", "");
        xml.finish()
    }

    /// A `SCAN` event: a follower scanned a QR code (bare scene value).
    pub fn scan(&self, scene: &str, ticket: &str) -> String {
        let mut xml = self.event("SCAN");
        xml.text("EventKey", scene);
        xml.text("Ticket", ticket);
        xml.finish()
    }

    /// A `LOCATION` event (periodic location report).
    pub fn location_report(&self, latitude: f64, longitude: f64, precision: f64) -> String {
        let mut xml = self.event("LOCATION");
        xml.number("Latitude", format_args!("{latitude:.6}"));
        xml.number("Longitude", format_args!("{longitude:.6}"));
        xml.number("Precision", format_args!("{precision:.6}"));
        xml.finish()
    }

    /// A `CLICK` event for the menu button `key`.
    pub fn click(&self, key: &str) -> String {
        let mut xml = self.event("CLICK");
        xml.text("EventKey", key);
        xml.finish()
    }

    /// A `VIEW` event for the menu button `url`.
    pub fn view(&self, url: &str, menu_id: u64) -> String {
        let mut xml = self.event("VIEW");
        xml.text("EventKey", url);
        xml.number("MenuId", menu_id);
        xml.finish()
    }

    /// A `view_miniprogram` event for the menu button's `pagepath`.
    pub fn view_miniprogram(&self, pagepath: &str, menu_id: u64) -> String {
        let mut xml = self.event("view_miniprogram");
        xml.text("EventKey", pagepath);
        xml.number("MenuId", menu_id);
        xml.finish()
    }

    /// A `scancode_push` / `scancode_waitmsg` event with nested `ScanCodeInfo`.
    pub fn scancode(
        &self,
        kind: ScanCodeEvent,
        key: &str,
        scan_type: &str,
        scan_result: &str,
    ) -> String {
        let event = match kind {
            ScanCodeEvent::Push => "scancode_push",
            ScanCodeEvent::WaitMsg => "scancode_waitmsg",
        };
        let mut xml = self.event(event);
        xml.text("EventKey", key);
        let mut info = String::new();
        cdata_element(&mut info, "ScanType", scan_type);
        cdata_element(&mut info, "ScanResult", scan_result);
        xml.nested("ScanCodeInfo", &info);
        xml.finish()
    }

    /// A `pic_sysphoto` / `pic_photo_or_album` / `pic_weixin` event with one
    /// `PicList/item` per MD5 sum.
    pub fn pics(&self, kind: PicsEvent, key: &str, pic_md5_sums: &[&str]) -> String {
        let event = match kind {
            PicsEvent::SysPhoto => "pic_sysphoto",
            PicsEvent::PhotoOrAlbum => "pic_photo_or_album",
            PicsEvent::Weixin => "pic_weixin",
        };
        let mut xml = self.event(event);
        xml.text("EventKey", key);
        let mut info = format!("<Count>{}</Count><PicList>", pic_md5_sums.len());
        for md5 in pic_md5_sums {
            info.push_str("<item>");
            cdata_element(&mut info, "PicMd5Sum", md5);
            info.push_str("</item>");
        }
        info.push_str("</PicList>");
        xml.nested("SendPicsInfo", &info);
        xml.finish()
    }

    /// A `location_select` event with nested `SendLocationInfo` (values as
    /// text, the way WeChat sends them).
    pub fn location_select(
        &self,
        key: &str,
        location_x: &str,
        location_y: &str,
        scale: &str,
        label: &str,
        poiname: &str,
    ) -> String {
        let mut xml = self.event("location_select");
        xml.text("EventKey", key);
        let mut info = String::new();
        cdata_element(&mut info, "Location_X", location_x);
        cdata_element(&mut info, "Location_Y", location_y);
        cdata_element(&mut info, "Scale", scale);
        cdata_element(&mut info, "Label", label);
        cdata_element(&mut info, "Poiname", poiname);
        xml.nested("SendLocationInfo", &info);
        xml.finish()
    }

    /// A `TEMPLATESENDJOBFINISH` event (`MsgID` with a capital D).
    pub fn template_job_finish(&self, msg_id: u64, status: &str) -> String {
        let mut xml = self.event("TEMPLATESENDJOBFINISH");
        xml.number("MsgID", msg_id);
        xml.text("Status", status);
        xml.finish()
    }

    /// A `MASSSENDJOBFINISH` event (`MsgID` with a capital D), with an empty
    /// originality-check result.
    pub fn mass_job_finish(&self, msg_id: u64, result: &MassJobResult) -> String {
        let mut xml = self.event("MASSSENDJOBFINISH");
        xml.number("MsgID", msg_id);
        xml.text("Status", &result.status);
        xml.number("TotalCount", result.total_count);
        xml.number("FilterCount", result.filter_count);
        xml.number("SentCount", result.sent_count);
        xml.number("ErrorCount", result.error_count);
        xml.nested(
            "CopyrightCheckResult",
            "<Count>0</Count><ResultList></ResultList><CheckState>1</CheckState>",
        );
        xml.finish()
    }
}

/// A push document under construction: `<xml>`, one element per line.
struct Xml(String);

impl Xml {
    fn start() -> Xml {
        let mut out = String::with_capacity(320);
        out.push_str("<xml>");
        Xml(out)
    }

    fn text(&mut self, name: &str, value: &str) {
        cdata_element(&mut self.0, name, value);
        self.0.push('\n');
    }

    fn number(&mut self, name: &str, value: impl Display) {
        self.0.push_str(&format!("<{name}>{value}</{name}>\n"));
    }

    /// An element whose content is already XML.
    fn nested(&mut self, name: &str, inner: &str) {
        self.0.push_str(&format!("<{name}>{inner}</{name}>\n"));
    }

    fn finish(mut self) -> String {
        self.0.push_str("</xml>");
        self.0
    }
}

/// `<name><![CDATA[value]]></name>`, with `]]>` split across two CDATA
/// sections and characters XML 1.0 forbids removed (docs/protocol.md §4.5).
fn cdata_element(out: &mut String, name: &str, value: &str) {
    out.push('<');
    out.push_str(name);
    out.push_str("><![CDATA[");
    let cleaned: String = value.chars().filter(|c| xml_allowed(*c)).collect();
    out.push_str(&cleaned.replace("]]>", "]]]]><![CDATA[>"));
    out.push_str("]]></");
    out.push_str(name);
    out.push('>');
}

fn xml_allowed(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wechat::{Limits, MessageKind, parse};

    fn inbound() -> Inbound {
        Inbound::new(
            "gh_0123456789ab",
            "oUSER_OPENID_xxxxxxxxxxxxxxx",
            1_700_000_000,
        )
    }

    fn check(xml: &str, expected: MessageKind) -> wechat::InboundMessage {
        let message = parse(xml.as_bytes(), &Limits::default()).unwrap();
        assert_eq!(message.to_user_name, "gh_0123456789ab");
        assert_eq!(message.from_user_name, "oUSER_OPENID_xxxxxxxxxxxxxxx");
        assert_eq!(message.create_time, 1_700_000_000);
        assert_eq!(message.kind, expected, "{xml}");
        message
    }

    #[test]
    fn text_matches_wechat_layout() {
        assert_eq!(
            inbound().text(24_000_000_000_000_001, "hello"),
            "<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName>\n\
             <FromUserName><![CDATA[oUSER_OPENID_xxxxxxxxxxxxxxx]]></FromUserName>\n\
             <CreateTime>1700000000</CreateTime>\n\
             <MsgType><![CDATA[text]]></MsgType>\n\
             <Content><![CDATA[hello]]></Content>\n\
             <MsgId>24000000000000001</MsgId>\n\
             </xml>"
        );
    }

    #[test]
    fn every_builder_parses_back() {
        let m = inbound();
        let text = check(
            &m.text(1, "a ]]> b\u{1}"),
            MessageKind::Text {
                content: "a ]]> b".to_owned(),
                bizmsgmenuid: None,
            },
        );
        assert_eq!(text.msg_id, Some(1));
        check(
            &m.text_menu_reply(2, "Yes", "101"),
            MessageKind::Text {
                content: "Yes".to_owned(),
                bizmsgmenuid: Some("101".to_owned()),
            },
        );
        check(
            &m.image(3, "http://mmbiz.qpic.cn/x", "MEDIA"),
            MessageKind::Image {
                pic_url: "http://mmbiz.qpic.cn/x".to_owned(),
                media_id: "MEDIA".to_owned(),
            },
        );
        check(
            &m.voice(4, "MEDIA", "amr", Some("你好")),
            MessageKind::Voice {
                media_id: "MEDIA".to_owned(),
                format: "amr".to_owned(),
                recognition: Some("你好".to_owned()),
                media_id_16k: None,
            },
        );
        check(
            &m.voice(5, "MEDIA", "amr", None),
            MessageKind::Voice {
                media_id: "MEDIA".to_owned(),
                format: "amr".to_owned(),
                recognition: None,
                media_id_16k: None,
            },
        );
        check(
            &m.video(6, "M", "T"),
            MessageKind::Video {
                media_id: "M".to_owned(),
                thumb_media_id: "T".to_owned(),
            },
        );
        check(
            &m.short_video(7, "M", "T"),
            MessageKind::ShortVideo {
                media_id: "M".to_owned(),
                thumb_media_id: "T".to_owned(),
            },
        );
        check(
            &m.location(8, 23.134521, 113.358803, 20, "Some street"),
            MessageKind::Location {
                latitude: 23.134521,
                longitude: 113.358803,
                scale: 20,
                label: "Some street".to_owned(),
            },
        );
        check(
            &m.link(9, "T", "D", "https://x"),
            MessageKind::Link {
                title: "T".to_owned(),
                description: "D".to_owned(),
                url: "https://x".to_owned(),
            },
        );
        check(
            &m.subscribe(),
            MessageKind::Subscribe {
                event_key: None,
                ticket: None,
            },
        );
        check(
            &m.subscribe_qr("123", "TICKET"),
            MessageKind::Subscribe {
                event_key: Some("qrscene_123".to_owned()),
                ticket: Some("TICKET".to_owned()),
            },
        );
        check(&m.unsubscribe(), MessageKind::Unsubscribe);
        check(
            &m.scan("123", "TICKET"),
            MessageKind::Scan {
                event_key: "123".to_owned(),
                ticket: "TICKET".to_owned(),
            },
        );
        check(
            &m.location_report(23.137466, 113.352425, 119.38504),
            MessageKind::LocationReport {
                latitude: 23.137466,
                longitude: 113.352425,
                precision: 119.38504,
            },
        );
        check(
            &m.click("V1001_TODAY"),
            MessageKind::Click {
                event_key: "V1001_TODAY".to_owned(),
            },
        );
        check(
            &m.view("https://x/page", 410418124),
            MessageKind::View {
                event_key: "https://x/page".to_owned(),
                menu_id: "410418124".to_owned(),
            },
        );
        check(
            &m.view_miniprogram("pages/index/index", 7),
            MessageKind::ViewMiniprogram {
                event_key: "pages/index/index".to_owned(),
                menu_id: "7".to_owned(),
            },
        );
        check(
            &m.scancode(
                ScanCodeEvent::WaitMsg,
                "rselfmenu_0_0",
                "qrcode",
                "https://x",
            ),
            MessageKind::ScanCode {
                event: ScanCodeEvent::WaitMsg,
                event_key: "rselfmenu_0_0".to_owned(),
                scan_type: "qrcode".to_owned(),
                scan_result: "https://x".to_owned(),
            },
        );
        check(
            &m.pics(PicsEvent::PhotoOrAlbum, "rselfmenu_1_1", &["aa", "bb"]),
            MessageKind::Pics {
                event: PicsEvent::PhotoOrAlbum,
                event_key: "rselfmenu_1_1".to_owned(),
                count: 2,
                pic_md5_sums: vec!["aa".to_owned(), "bb".to_owned()],
            },
        );
        check(
            &m.location_select("rselfmenu_2_0", "23", "113", "15", "Guangzhou", ""),
            MessageKind::LocationSelect {
                event_key: "rselfmenu_2_0".to_owned(),
                location_x: "23".to_owned(),
                location_y: "113".to_owned(),
                scale: "15".to_owned(),
                label: "Guangzhou".to_owned(),
                poiname: String::new(),
            },
        );
        let finish = check(
            &m.template_job_finish(3_487_542_469_355_618_313, "success"),
            MessageKind::TemplateSendJobFinish {
                status: "success".to_owned(),
            },
        );
        assert_eq!(finish.msg_id, Some(3_487_542_469_355_618_313));
        let result = MassJobResult {
            status: "send success".to_owned(),
            total_count: 100,
            filter_count: 80,
            sent_count: 75,
            error_count: 5,
        };
        check(
            &m.mass_job_finish(1_000_001_625, &result),
            MessageKind::MassSendJobFinish {
                status: "send success".to_owned(),
                total_count: 100,
                filter_count: 80,
                sent_count: 75,
                error_count: 5,
            },
        );
    }

    #[test]
    fn msg_ids_increase() {
        let ids = MsgIdGen::starting_at(10);
        assert_eq!((ids.next_id(), ids.next_id()), (10, 11));
        assert!(MsgIdGen::new().next_id() >= 24_000_000_000_000_000);
        assert!(crate::state::is_openid(&random_openid()));
    }
}

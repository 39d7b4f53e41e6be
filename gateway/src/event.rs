//! Conversion of an accepted callback into the wire `wxgate.v1.Event` (docs/contract.md §4). The only
//! module of the gateway that knows the protobuf types.

use wechat::{InboundMessage, MessageKind, Reply};
use wxgate_core::Properties;
use wxgate_core::bus::HeaderValue;
use wxgate_proto::v1 as pb;

/// How the callback arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// No `encrypt_type=aes`.
    Plain,
    /// Encrypted, with the plain fields beside `<Encrypt>`.
    Compat,
    /// Encrypted, only `<Encrypt>`.
    Safe,
}

/// Everything the event carries besides the parsed message.
pub struct Envelope<'a> {
    /// The event id (docs/contract.md §3).
    pub event_id: &'a str,
    /// The account's id.
    pub account_id: &'a str,
    /// The account's AppID.
    pub appid: &'a str,
    /// The (decrypted) XML as received.
    pub raw_xml: String,
    /// When the gateway accepted it, Unix ms.
    pub received_at_ms: i64,
    /// The passive reply answered, if any.
    pub passive_reply: Option<&'a Reply>,
    /// How it arrived.
    pub arrival: Arrival,
}

/// The AMQP properties of an event (docs/contract.md §1.2): `message_id` the event id, `timestamp`
/// the receipt in Unix seconds, the protobuf content type and message type, header
/// `account_id`.
pub fn properties(event_id: &str, account_id: &str, received_s: i64) -> Properties {
    Properties {
        message_id: Some(event_id.to_owned()),
        timestamp_s: u64::try_from(received_s).ok(),
        content_type: Some(wxgate_proto::EVENT_CONTENT_TYPE.to_owned()),
        kind: Some(wxgate_proto::EVENT_TYPE.to_owned()),
        headers: vec![(
            "account_id".to_owned(),
            HeaderValue::Str(account_id.to_owned()),
        )],
    }
}

/// Builds the protobuf event, taking the message apart (it is not needed afterwards).
pub fn to_proto(msg: InboundMessage, env: Envelope<'_>) -> pb::Event {
    pb::Event {
        event_id: env.event_id.to_owned(),
        account_id: env.account_id.to_owned(),
        appid: env.appid.to_owned(),
        to_user: msg.to_user_name,
        from_user: msg.from_user_name,
        create_time: msg.create_time,
        msg_type: msg.msg_type,
        event: msg.event.unwrap_or_default(),
        msg_id: msg.msg_id.unwrap_or(0),
        fields: msg.fields.into_iter().collect(),
        raw_xml: env.raw_xml,
        received_at_ms: env.received_at_ms,
        passive_reply: env.passive_reply.map(reply_to_proto),
        encrypt_mode: match env.arrival {
            Arrival::Plain => pb::EncryptMode::Plain,
            Arrival::Compat => pb::EncryptMode::Compat,
            Arrival::Safe => pb::EncryptMode::Safe,
        } as i32,
        payload: payload(msg.kind),
    }
}

/// The protobuf form of a reply.
pub fn reply_to_proto(reply: &Reply) -> pb::Reply {
    use pb::reply::Kind;
    let kind = match reply {
        Reply::Text { content } => Kind::Text(content.clone()),
        Reply::Image { media_id } => Kind::ImageMediaId(media_id.clone()),
        Reply::Voice { media_id } => Kind::VoiceMediaId(media_id.clone()),
        Reply::Video {
            media_id,
            title,
            description,
        } => Kind::Video(pb::VideoReply {
            media_id: media_id.clone(),
            title: title.clone().unwrap_or_default(),
            description: description.clone().unwrap_or_default(),
            thumb_media_id: String::new(),
        }),
        Reply::Music {
            title,
            description,
            music_url,
            hq_music_url,
            thumb_media_id,
        } => Kind::Music(pb::MusicReply {
            title: title.clone().unwrap_or_default(),
            description: description.clone().unwrap_or_default(),
            music_url: music_url.clone().unwrap_or_default(),
            hq_music_url: hq_music_url.clone().unwrap_or_default(),
            thumb_media_id: thumb_media_id.clone(),
        }),
        Reply::News { articles } => Kind::News(pb::NewsReply {
            articles: articles
                .iter()
                .map(|a| pb::Article {
                    title: a.title.clone(),
                    description: a.description.clone(),
                    pic_url: a.pic_url.clone(),
                    url: a.url.clone(),
                })
                .collect(),
        }),
        Reply::TransferCustomerService { kf_account } => {
            Kind::TransferCustomerService(pb::TransferCustomerService {
                kf_account: kf_account.clone().unwrap_or_default(),
            })
        }
    };
    pb::Reply { kind: Some(kind) }
}

fn payload(kind: MessageKind) -> Option<pb::event::Payload> {
    use pb::event::Payload as P;
    Some(match kind {
        MessageKind::Text {
            content,
            bizmsgmenuid,
        } => P::Text(pb::Text {
            content,
            bizmsgmenuid: bizmsgmenuid.unwrap_or_default(),
        }),
        MessageKind::Image { pic_url, media_id } => P::Image(pb::Image { media_id, pic_url }),
        MessageKind::Voice {
            media_id,
            format,
            recognition,
            media_id_16k,
        } => P::Voice(pb::Voice {
            media_id,
            format,
            recognition: recognition.unwrap_or_default(),
            media_id_16k: media_id_16k.unwrap_or_default(),
        }),
        MessageKind::Video {
            media_id,
            thumb_media_id,
        } => P::Video(pb::Video {
            media_id,
            thumb_media_id,
        }),
        MessageKind::ShortVideo {
            media_id,
            thumb_media_id,
        } => P::Shortvideo(pb::Video {
            media_id,
            thumb_media_id,
        }),
        MessageKind::Location {
            latitude,
            longitude,
            scale,
            label,
        } => P::Location(pb::Location {
            location_x: latitude,
            location_y: longitude,
            scale: i64::from(scale),
            label,
        }),
        MessageKind::Link {
            title,
            description,
            url,
        } => P::Link(pb::Link {
            title,
            description,
            url,
        }),
        MessageKind::Subscribe { event_key, ticket } => P::Subscribe(pb::Subscribe {
            event_key: event_key.unwrap_or_default(),
            ticket: ticket.unwrap_or_default(),
        }),
        MessageKind::Unsubscribe => P::Unsubscribe(pb::Unsubscribe {}),
        MessageKind::Scan { event_key, ticket } => P::Scan(pb::Scan { event_key, ticket }),
        MessageKind::LocationReport {
            latitude,
            longitude,
            precision,
        } => P::LocationReport(pb::LocationReport {
            latitude,
            longitude,
            precision,
        }),
        MessageKind::Click { event_key } => P::Click(pb::MenuClick { event_key }),
        MessageKind::View { event_key, menu_id } => P::View(pb::MenuView { event_key, menu_id }),
        MessageKind::ScanCode {
            event_key,
            scan_type,
            scan_result,
            ..
        } => P::Scancode(pb::ScanCodeEvent {
            event_key,
            scan_type,
            scan_result,
        }),
        MessageKind::Pics {
            event_key,
            count,
            pic_md5_sums,
            ..
        } => P::Pics(pb::PicsEvent {
            event_key,
            count: i64::from(count),
            pic_md5_sums,
        }),
        MessageKind::LocationSelect {
            event_key,
            location_x,
            location_y,
            scale,
            label,
            poiname,
        } => P::LocationSelect(pb::LocationSelect {
            event_key,
            location_x,
            location_y,
            scale,
            label,
            poiname,
        }),
        MessageKind::ViewMiniprogram { event_key, menu_id } => {
            P::ViewMiniprogram(pb::MenuView { event_key, menu_id })
        }
        MessageKind::TemplateSendJobFinish { status } => {
            P::TemplateSendJobFinish(pb::TemplateSendJobFinish { status })
        }
        MessageKind::MassSendJobFinish {
            status,
            total_count,
            filter_count,
            sent_count,
            error_count,
        } => P::MassSendJobFinish(pb::MassSendJobFinish {
            status,
            total_count: i64::try_from(total_count).unwrap_or(i64::MAX),
            filter_count: i64::try_from(filter_count).unwrap_or(i64::MAX),
            sent_count: i64::try_from(sent_count).unwrap_or(i64::MAX),
            error_count: i64::try_from(error_count).unwrap_or(i64::MAX),
        }),
        MessageKind::KfSession {
            kf_account,
            from_kf_account,
            to_kf_account,
            ..
        } => P::KfSession(pb::KfSession {
            kf_account,
            from_kf_account,
            to_kf_account,
        }),
        MessageKind::SubscribeMsg { items, .. } => P::SubscribeMsg(pb::SubscribeMsgEvent {
            items: items
                .into_iter()
                .map(|i| pb::SubscribeMsgItem {
                    template_id: i.template_id,
                    subscribe_status_string: i.subscribe_status,
                    popup_scene: i.popup_scene.parse().unwrap_or(0),
                    msg_id: i.msg_id,
                    error_code: i.error_code,
                    error_status: i.error_status,
                })
                .collect(),
        }),
        MessageKind::PublishJobFinish {
            publish_id,
            publish_status,
            article_id,
            ..
        } => P::PublishJobFinish(pb::PublishJobFinish {
            publish_id,
            publish_status: publish_status.unwrap_or(0),
            article_id,
        }),
        MessageKind::Other => return None,
    })
}

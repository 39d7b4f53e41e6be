//! `wxgate tail`: subscribe to a consumer group and print each event as it comes, acking it
//! once printed.

use clap::Args;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use wxgate_proto::v1 as pb;
use wxgate_proto::v1::subscribe_request::Kind as RequestKind;
use wxgate_proto::v1::subscribe_response::Kind as ResponseKind;

use crate::api::Api;
use crate::{Failure, Outcome, println_checked};

/// The group `wxgate tail` joins without `--group`.
pub const DEFAULT_GROUP: &str = "tail";
/// Retention of the default group: a tail is for watching, not for keeping a backlog.
const DEFAULT_GROUP_MAX_LENGTH: u64 = 10_000;
const DEFAULT_GROUP_TTL_S: u64 = 3600;

/// `wxgate tail`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Examples:\n  wxgate tail\n  wxgate tail --account demo --json | jq .fields.Content\n  wxgate tail --group crm --msg-type text --event subscribe"
)]
pub struct TailArgs {
    /// The consumer group (durable: events wait in it while no tail runs). Tails of one
    /// group share its events; give each watcher its own group to see every event.
    #[arg(long, value_name = "GROUP", default_value = DEFAULT_GROUP)]
    pub group: String,
    /// Only events of this account (repeatable).
    #[arg(long = "account", value_name = "ACCOUNT")]
    pub accounts: Vec<String>,
    /// Only messages of this MsgType (text, image, voice, …; repeatable).
    #[arg(long = "msg-type", value_name = "TYPE")]
    pub msg_types: Vec<String>,
    /// Only events of this Event (subscribe, SCAN, CLICK, …; repeatable).
    #[arg(long = "event", value_name = "EVENT")]
    pub events: Vec<String>,
    /// One JSON object per line instead of one readable line per event.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many events (default: run until Ctrl-C).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Events delivered and not yet acked at most.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_in_flight: u32,
}

/// Runs `wxgate tail` until Ctrl-C, `--count` events, or the stream ends.
pub async fn tail(api: &Api, args: TailArgs) -> Outcome {
    let (requests, receiver) = mpsc::channel::<pb::SubscribeRequest>(256);
    let default_group = args.group == DEFAULT_GROUP;
    let start = pb::EventsStart {
        group: args.group.clone(),
        filter: Some(pb::EventsFilter {
            accounts: args.accounts.clone(),
            msg_types: args.msg_types.clone(),
            events: args.events.clone(),
        }),
        max_in_flight: args.max_in_flight,
        max_length: default_group.then_some(DEFAULT_GROUP_MAX_LENGTH),
        message_ttl_s: default_group.then_some(DEFAULT_GROUP_TTL_S),
    };
    send(&requests, RequestKind::Start(start)).await?;
    let mut responses = api
        .events()
        .subscribe(ReceiverStream::new(receiver))
        .await
        .map_err(|status| api.failure(status))?
        .into_inner();
    let mut seen = 0u64;
    loop {
        let message = tokio::select! {
            message = responses.message() => message,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(response) = message.map_err(|status| api.failure(status))? else {
            return Err(Failure::failed(
                "the API ended the subscription (the worker is shutting down?); run wxgate tail again",
            ));
        };
        match response.kind {
            Some(ResponseKind::Started(started)) => {
                // On stderr, so `--json` output stays one object per line.
                {
                    eprintln!(
                        "tailing group {:?} ({}; {}); Ctrl-C to stop",
                        started.group,
                        if started.routing_keys.is_empty() {
                            "every event".to_owned()
                        } else {
                            started.routing_keys.join(", ")
                        },
                        if started.created {
                            "new group"
                        } else {
                            "events that waited come first"
                        }
                    );
                }
            }
            Some(ResponseKind::Delivery(delivery)) => {
                let Some(event) = &delivery.event else {
                    continue;
                };
                let line = if args.json {
                    json_line(event, delivery.redelivered)
                } else {
                    human_line(event, delivery.redelivered)
                };
                // Printed first, acked after: an event nobody saw is delivered again.
                println_checked(&line)?;
                send(
                    &requests,
                    RequestKind::Ack(pb::EventsAck {
                        delivery_id: delivery.delivery_id,
                    }),
                )
                .await?;
                seen += 1;
                if args.count.is_some_and(|count| seen >= count) {
                    // The ack must reach the API before the stream closes.
                    drop(requests);
                    while let Ok(Some(_)) = responses.message().await {}
                    return Ok(());
                }
            }
            None => {}
        }
    }
}

async fn send(requests: &mpsc::Sender<pb::SubscribeRequest>, kind: RequestKind) -> Outcome {
    requests
        .send(pb::SubscribeRequest { kind: Some(kind) })
        .await
        .map_err(|_| Failure::failed("the subscription closed"))
}

/// The encryption mode's name.
fn mode(event: &pb::Event) -> &'static str {
    match pb::EncryptMode::try_from(event.encrypt_mode) {
        Ok(pb::EncryptMode::Plain) => "plain",
        Ok(pb::EncryptMode::Compat) => "compat",
        Ok(pb::EncryptMode::Safe) => "safe",
        _ => "unspecified",
    }
}

/// One event as a JSON object on one line.
pub fn json_line(event: &pb::Event, redelivered: bool) -> String {
    let value = json!({
        "event_id": event.event_id,
        "account_id": event.account_id,
        "appid": event.appid,
        "to_user": event.to_user,
        "from_user": event.from_user,
        "create_time": event.create_time,
        "msg_type": event.msg_type,
        "event": event.event,
        "msg_id": event.msg_id,
        "fields": event.fields,
        "received_at_ms": event.received_at_ms,
        "encrypt_mode": mode(event),
        "passive_reply": event.passive_reply.as_ref().map(reply_summary),
        "redelivered": redelivered,
        "raw_xml": event.raw_xml,
    });
    Value::to_string(&value)
}

/// One event as a line for a person: time (UTC), account, kind, user, what it says.
pub fn human_line(event: &pb::Event, redelivered: bool) -> String {
    let ms = event.received_at_ms.rem_euclid(86_400_000);
    let time = format!(
        "{:02}:{:02}:{:02}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60
    );
    let field = |name: &str| event.fields.get(name).map(String::as_str).unwrap_or("");
    let (kind, detail) = if event.msg_type == "event" {
        let key = field("EventKey");
        (
            format!("event {}", event.event),
            if key.is_empty() {
                String::new()
            } else {
                format!(" key={key}")
            },
        )
    } else {
        let detail = match event.msg_type.as_str() {
            "text" => format!(": {}", field("Content")),
            "voice" => format!(": {}", field("Recognition")),
            "image" => format!(": {}", field("PicUrl")),
            "location" => format!(
                ": {} ({}, {})",
                field("Label"),
                field("Location_X"),
                field("Location_Y")
            ),
            "link" => format!(": {} {}", field("Title"), field("Url")),
            _ => String::new(),
        };
        (event.msg_type.clone(), detail)
    };
    let mut line = format!(
        "{time} {} {kind} from {}{detail}",
        event.account_id, event.from_user
    );
    if let Some(reply) = &event.passive_reply {
        line.push_str(&format!("  [answered: {}]", reply_summary(reply)));
    }
    if redelivered {
        line.push_str("  [redelivered]");
    }
    line
}

fn reply_summary(reply: &pb::Reply) -> String {
    use pb::reply::Kind;
    match &reply.kind {
        Some(Kind::Text(text)) => format!("text {text:?}"),
        Some(Kind::ImageMediaId(id)) => format!("image {id}"),
        Some(Kind::VoiceMediaId(id)) => format!("voice {id}"),
        Some(Kind::Video(video)) => format!("video {}", video.media_id),
        Some(Kind::Music(music)) => format!("music {:?}", music.title),
        Some(Kind::News(news)) => format!("news ({} articles)", news.articles.len()),
        Some(Kind::TransferCustomerService(_)) => "transfer to customer service".to_owned(),
        None => "nothing".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_reads_as_a_line_and_as_json() {
        let mut event = pb::Event {
            event_id: "e".repeat(32),
            account_id: "demo".into(),
            from_user: "oUser".into(),
            msg_type: "text".into(),
            received_at_ms: 3_723_000,
            encrypt_mode: pb::EncryptMode::Safe.into(),
            ..Default::default()
        };
        event.fields.insert("Content".into(), "你好".into());
        event.passive_reply = Some(pb::Reply {
            kind: Some(pb::reply::Kind::Text("pong".into())),
        });
        assert_eq!(
            human_line(&event, false),
            "01:02:03 demo text from oUser: 你好  [answered: text \"pong\"]"
        );
        let json: Value = serde_json::from_str(&json_line(&event, true)).unwrap();
        assert_eq!(json["fields"]["Content"], "你好");
        assert_eq!(json["encrypt_mode"], "safe");
        assert_eq!(json["redelivered"], true);
        assert!(!json_line(&event, true).contains('\n'));
    }

    #[test]
    fn an_event_shows_its_key() {
        let mut event = pb::Event {
            account_id: "demo".into(),
            from_user: "oUser".into(),
            msg_type: "event".into(),
            event: "SCAN".into(),
            ..Default::default()
        };
        event.fields.insert("EventKey".into(), "123".into());
        assert_eq!(
            human_line(&event, true),
            "00:00:00 demo event SCAN from oUser key=123  [redelivered]"
        );
    }
}

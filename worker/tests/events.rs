//! `wxgate.v1.Events` against real RabbitMQ and Redis through a tonic client: groups, filters
//! (every row of the table in proto/wxgate/v1/events.proto), ack/nack, redelivery, prefetch,
//! retention, DeleteGroup, ListGroups and auth.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{ADMIN_KEY, DEMO_KEY, Harness, PLAIN_KEY, WAIT, authed, event_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use wxgate_proto::v1::events_client::EventsClient;
use wxgate_proto::v1::{
    EventsAck, EventsDeleteGroupRequest, EventsDelivery, EventsFilter, EventsGroup,
    EventsListGroupsRequest, EventsNack, EventsStart, EventsStarted, SubscribeRequest,
    SubscribeResponse, subscribe_request, subscribe_response,
};

/// How long a test waits to be sure something does not arrive (only where the absence
/// cannot be proven by a marker or a queue count).
const QUIET: Duration = Duration::from_millis(500);

/// One open subscription.
struct Sub {
    requests: mpsc::Sender<SubscribeRequest>,
    responses: Streaming<SubscribeResponse>,
    started: EventsStarted,
}

fn start(group: &str, accounts: &[&str], msg_types: &[&str], events: &[&str]) -> EventsStart {
    let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
    EventsStart {
        group: group.to_owned(),
        filter: Some(EventsFilter {
            accounts: owned(accounts),
            msg_types: owned(msg_types),
            events: owned(events),
        }),
        ..EventsStart::default()
    }
}

fn request(kind: subscribe_request::Kind) -> SubscribeRequest {
    SubscribeRequest { kind: Some(kind) }
}

/// Opens a stream with `first` as its first request; the status when the server refuses.
async fn open(
    channel: &Channel,
    key: Option<&str>,
    first: SubscribeRequest,
) -> Result<Sub, Status> {
    let (requests, outbound) = mpsc::channel(64);
    requests.send(first).await.unwrap();
    let outbound = ReceiverStream::new(outbound);
    let call = match key {
        Some(key) => authed(key, outbound),
        None => tonic::Request::new(outbound),
    };
    let mut responses = EventsClient::new(channel.clone())
        .subscribe(call)
        .await?
        .into_inner();
    let first = tokio::time::timeout(WAIT, responses.message())
        .await
        .expect("the first answer arrives")?;
    match first.and_then(|r| r.kind) {
        Some(subscribe_response::Kind::Started(started)) => Ok(Sub {
            requests,
            responses,
            started,
        }),
        other => panic!("the first answer is not `started`: {other:?}"),
    }
}

async fn subscribe(channel: &Channel, key: &str, start: EventsStart) -> Result<Sub, Status> {
    open(
        channel,
        Some(key),
        request(subscribe_request::Kind::Start(start)),
    )
    .await
}

impl Sub {
    /// The next delivery, within [`WAIT`].
    async fn next(&mut self) -> EventsDelivery {
        match tokio::time::timeout(WAIT, self.responses.message()).await {
            Ok(Ok(Some(SubscribeResponse {
                kind: Some(subscribe_response::Kind::Delivery(d)),
            }))) => d,
            other => panic!("expected a delivery: {other:?}"),
        }
    }

    /// `n` deliveries.
    async fn take(&mut self, n: usize) -> Vec<EventsDelivery> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }

    /// Nothing arrives within [`QUIET`].
    async fn nothing_within_quiet(&mut self) {
        if let Ok(answer) = tokio::time::timeout(QUIET, self.responses.message()).await {
            panic!("nothing should have arrived: {answer:?}");
        }
    }

    async fn ack(&self, id: u64) {
        self.requests
            .send(request(subscribe_request::Kind::Ack(EventsAck {
                delivery_id: id,
            })))
            .await
            .unwrap();
    }

    async fn nack(&self, id: u64, requeue: bool) {
        self.requests
            .send(request(subscribe_request::Kind::Nack(EventsNack {
                delivery_id: id,
                requeue,
            })))
            .await
            .unwrap();
    }

    /// The status the stream ends with.
    async fn end(mut self) -> Status {
        loop {
            match tokio::time::timeout(WAIT, self.responses.message())
                .await
                .expect("the stream ends")
            {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the stream ended without an error"),
                Err(status) => return status,
            }
        }
    }
}

fn ids(deliveries: &[EventsDelivery]) -> BTreeSet<String> {
    deliveries
        .iter()
        .map(|d| d.event.as_ref().unwrap().event_id.clone())
        .collect()
}

fn text_xml(n: u64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName><FromUserName><![CDATA[user{n}]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hello {n}]]></Content><MsgId>{}</MsgId></xml>",
        1_700_000_000 + n,
        9_000_000 + n
    )
}

fn image_xml(n: u64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName><FromUserName><![CDATA[user{n}]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[image]]></MsgType><PicUrl><![CDATA[http://x/p.jpg]]></PicUrl><MediaId><![CDATA[m{n}]]></MediaId><MsgId>{}</MsgId></xml>",
        1_700_000_000 + n,
        9_000_000 + n
    )
}

fn event_xml(n: u64, event: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName><FromUserName><![CDATA[user{n}]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[{event}]]></Event><EventKey><![CDATA[k{n}]]></EventKey></xml>",
        1_700_000_000 + n
    )
}

/// Publishes `xml` as an event of `account` (the routing key names the account; the body is
/// built for `demo`, which the groups do not look at); returns its event id.
async fn publish_as(h: &Harness, account: &str, xml: &str) -> String {
    let (key, message) = event_message(xml, None);
    let key = format!("{account}{}", key.strip_prefix("demo").unwrap());
    h.publish(&key, &message).await;
    message.properties.message_id.unwrap()
}

async fn list(channel: &Channel, key: &str) -> Vec<EventsGroup> {
    EventsClient::new(channel.clone())
        .list_groups(authed(key, EventsListGroupsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .groups
}

async fn group(channel: &Channel, name: &str) -> EventsGroup {
    list(channel, ADMIN_KEY)
        .await
        .into_iter()
        .find(|g| g.group == name)
        .unwrap_or_else(|| panic!("ListGroups has no group {name}"))
}

/// Polls ListGroups until `check` holds for group `name`.
async fn wait_group(channel: &Channel, name: &str, check: impl Fn(&EventsGroup) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let g = group(channel, name).await;
        if check(&g) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "group {name} never reached the expected state: {g:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates group `start.group` and leaves it, waiting until its consumer is gone.
async fn create(channel: &Channel, key: &str, start: EventsStart) -> EventsStarted {
    let group_name = start.group.clone();
    let sub = subscribe(channel, key, start).await.unwrap();
    let started = sub.started.clone();
    drop(sub);
    wait_group(channel, &group_name, |g| g.consumers == 0).await;
    started
}

async fn delete(channel: &Channel, key: &str, group: &str) -> Result<u64, Status> {
    EventsClient::new(channel.clone())
        .delete_group(authed(
            key,
            EventsDeleteGroupRequest {
                group: group.to_owned(),
            },
        ))
        .await
        .map(|r| r.into_inner().dropped_events)
}

/// A harness with one worker whose Redis and RabbitMQ are connected (`/readyz` 200); the
/// worker's health address and a channel to its API.
async fn ready_worker(overrides: &[(&str, &str)]) -> (Harness, std::net::SocketAddr, Channel) {
    let mut h = Harness::new(overrides).await;
    let addr = h.start_worker().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while common::http_get(addr, "/readyz").await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "the worker never got ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let channel = h.stream_channel(0).await;
    (h, addr, channel)
}

#[tokio::test]
async fn every_row_of_the_filter_table_gets_what_it_says() {
    let (h, _, channel) = ready_worker(&[]).await;
    // (group, accounts, msg types, events, expected routing keys)
    let rows: &[(&str, &[&str], &[&str], &[&str], &[&str])] = &[
        ("all", &[], &[], &[], &["*.#"]),
        ("all-text", &[], &["text"], &[], &["*.msg.text"]),
        ("demo-all", &["demo"], &[], &[], &["demo.#"]),
        (
            "demo-msgs",
            &["demo"],
            &["text", "image"],
            &[],
            &["demo.msg.image", "demo.msg.text"],
        ),
        ("demo-events", &["demo"], &["event"], &[], &["demo.event.*"]),
        (
            "demo-text-events",
            &["demo"],
            &["text", "event"],
            &[],
            &["demo.event.*", "demo.msg.text"],
        ),
        (
            "demo-subscribe",
            &["demo"],
            &[],
            &["subscribe"],
            &["demo.event.subscribe"],
        ),
        (
            "demo-text-subscribe",
            &["demo"],
            &["text"],
            &["subscribe"],
            &["demo.event.subscribe", "demo.msg.text"],
        ),
        (
            "demo-narrowed",
            &["demo"],
            &["text", "event"],
            &["subscribe"],
            &["demo.event.subscribe", "demo.msg.text"],
        ),
        ("demo-scan", &["demo"], &["event"], &["SCAN"], &["demo.event.scan"]),
        (
            "two-accounts",
            &["demo", "plain"],
            &["text"],
            &[],
            &["demo.msg.text", "plain.msg.text"],
        ),
    ];
    for (name, accounts, msg_types, events, keys) in rows {
        let started = create(&channel, ADMIN_KEY, start(name, accounts, msg_types, events)).await;
        assert_eq!(started.routing_keys, *keys, "{name}");
        assert!(started.created);
    }
    let demo_text = publish_as(&h, "demo", &text_xml(1)).await;
    let demo_image = publish_as(&h, "demo", &image_xml(2)).await;
    let demo_subscribe = publish_as(&h, "demo", &event_xml(3, "subscribe")).await;
    let demo_scan = publish_as(&h, "demo", &event_xml(4, "SCAN")).await;
    let plain_text = publish_as(&h, "plain", &text_xml(5)).await;
    let plain_subscribe = publish_as(&h, "plain", &event_xml(6, "subscribe")).await;
    let expected: &[(&str, &[&String])] = &[
        (
            "all",
            &[
                &demo_text,
                &demo_image,
                &demo_subscribe,
                &demo_scan,
                &plain_text,
                &plain_subscribe,
            ],
        ),
        ("all-text", &[&demo_text, &plain_text]),
        (
            "demo-all",
            &[&demo_text, &demo_image, &demo_subscribe, &demo_scan],
        ),
        ("demo-msgs", &[&demo_text, &demo_image]),
        ("demo-events", &[&demo_subscribe, &demo_scan]),
        (
            "demo-text-events",
            &[&demo_text, &demo_subscribe, &demo_scan],
        ),
        ("demo-subscribe", &[&demo_subscribe]),
        ("demo-text-subscribe", &[&demo_text, &demo_subscribe]),
        ("demo-narrowed", &[&demo_text, &demo_subscribe]),
        ("demo-scan", &[&demo_scan]),
        ("two-accounts", &[&demo_text, &plain_text]),
    ];
    for ((name, accounts, msg_types, events, _), (expected_name, want)) in rows.iter().zip(expected) {
        assert_eq!(name, expected_name);
        // The publishes were confirmed, so routing is done: the depth is exact, and proves
        // that nothing else was routed to the group.
        let g = group(&channel, name).await;
        assert_eq!(g.depth, want.len() as u64, "{name}: {g:?}");
        let mut sub = subscribe(&channel, ADMIN_KEY, start(name, accounts, msg_types, events))
            .await
            .unwrap();
        assert!(!sub.started.created);
        let got = sub.take(want.len()).await;
        let want: BTreeSet<String> = want.iter().map(|id| (*id).clone()).collect();
        assert_eq!(ids(&got), want, "{name}");
        for d in &got {
            sub.ack(d.delivery_id).await;
        }
        drop(sub);
    }
    h.finish().await;
}

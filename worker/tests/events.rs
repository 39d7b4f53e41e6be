//! `wxgate.v1.Events` against real RabbitMQ and Redis through a tonic client: groups, filters
//! (every row of the table in proto/wxgate/v1/events.proto), ack/nack, redelivery, prefetch,
//! retention, DeleteGroup, ListGroups and auth.

// Test support: a failed step should fail the test at once, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

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

/// A row of the filter table: group, accounts, msg types, events, expected routing keys.
type Row<'a> = (
    &'a str,
    &'a [&'a str],
    &'a [&'a str],
    &'a [&'a str],
    &'a [&'a str],
);

/// A harness with one worker whose Redis and RabbitMQ are connected (`/readyz` 200); the
/// worker's health address and a channel to its API.
async fn ready_worker(overrides: &[(&str, &str)]) -> (Harness, std::net::SocketAddr, Channel) {
    let mut h = Harness::new(overrides).await;
    let addr = h.start_worker().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while common::http_get(addr, "/readyz").await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never got ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let channel = h.stream_channel(0).await;
    (h, addr, channel)
}

#[tokio::test]
async fn every_row_of_the_filter_table_gets_what_it_says() {
    let (h, _, channel) = ready_worker(&[]).await;
    // (group, accounts, msg types, events, expected routing keys)
    let rows: &[Row] = &[
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
        (
            "demo-scan",
            &["demo"],
            &["event"],
            &["SCAN"],
            &["demo.event.scan"],
        ),
        (
            "two-accounts",
            &["demo", "plain"],
            &["text"],
            &[],
            &["demo.msg.text", "plain.msg.text"],
        ),
    ];
    for (name, accounts, msg_types, events, keys) in rows {
        let started = create(
            &channel,
            ADMIN_KEY,
            start(name, accounts, msg_types, events),
        )
        .await;
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
    for ((name, accounts, msg_types, events, _), (expected_name, want)) in rows.iter().zip(expected)
    {
        assert_eq!(name, expected_name);
        // The publishes were confirmed, so routing is done: the depth is exact, and proves
        // that nothing else was routed to the group.
        let g = group(&channel, name).await;
        assert_eq!(g.depth, want.len() as u64, "{name}: {g:?}");
        let mut sub = subscribe(
            &channel,
            ADMIN_KEY,
            start(name, accounts, msg_types, events),
        )
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

#[tokio::test]
async fn two_groups_each_get_every_event_and_one_groups_subscribers_share() {
    let (h, _, channel) = ready_worker(&[]).await;
    let mut other = subscribe(&channel, DEMO_KEY, start("other", &["demo"], &[], &[]))
        .await
        .unwrap();
    let mut first = subscribe(&channel, DEMO_KEY, start("shared", &["demo"], &[], &[]))
        .await
        .unwrap();
    let mut second = subscribe(&channel, DEMO_KEY, start("shared", &["demo"], &[], &[]))
        .await
        .unwrap();
    assert!(first.started.created && !second.started.created);
    wait_group(&channel, "shared", |g| g.consumers == 2).await;
    let mut published = BTreeSet::new();
    for n in 0..20 {
        published.insert(h.publish_xml(&text_xml(n)).await);
    }
    let everything = other.take(20).await;
    assert_eq!(ids(&everything), published);
    // The shared group's events are split between its two subscribers, each once.
    let mut shared = Vec::new();
    let mut per_subscriber = [0, 0];
    while shared.len() < 20 {
        let d = tokio::select! {
            d = first.next() => { per_subscriber[0] += 1; first.ack(d.delivery_id).await; d }
            d = second.next() => { per_subscriber[1] += 1; second.ack(d.delivery_id).await; d }
        };
        shared.push(d);
    }
    assert_eq!(ids(&shared), published);
    assert!(
        per_subscriber[0] > 0 && per_subscriber[1] > 0,
        "both subscribers got some: {per_subscriber:?}"
    );
    h.finish().await;
}

#[tokio::test]
async fn ack_nack_and_redelivery_after_a_disconnect() {
    let (h, addr, channel) = ready_worker(&[]).await;
    let mut sub = subscribe(&channel, DEMO_KEY, start("g", &["demo"], &[], &[]))
        .await
        .unwrap();
    let acked = h.publish_xml(&text_xml(1)).await;
    let requeued = h.publish_xml(&text_xml(2)).await;
    let rejected = h.publish_xml(&text_xml(3)).await;
    let got = sub.take(3).await;
    let id_of = |event_id: &str| {
        got.iter()
            .find(|d| d.event.as_ref().unwrap().event_id == event_id)
            .unwrap()
            .delivery_id
    };
    assert!(got.iter().all(|d| !d.redelivered));
    assert_eq!(
        got.iter().map(|d| d.delivery_id).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    sub.ack(id_of(&acked)).await;
    sub.nack(id_of(&requeued), true).await;
    sub.nack(id_of(&rejected), false).await;
    // The requeued one comes back, marked; the others do not.
    let again = sub.next().await;
    assert_eq!(again.event.as_ref().unwrap().event_id, requeued);
    assert!(again.redelivered);
    assert_eq!(again.delivery_id, 4);
    common::wait_metric(
        addr,
        "wxgate_group_dropped_total{group=\"g\",reason=\"rejected\"}",
        1.0,
    )
    .await;
    // Disconnected with it unacked: it returns to the group and comes to the next subscriber.
    drop(sub);
    wait_group(&channel, "g", |g| g.consumers == 0 && g.depth == 1).await;
    let mut sub = subscribe(&channel, DEMO_KEY, start("g", &["demo"], &[], &[]))
        .await
        .unwrap();
    let back = sub.next().await;
    assert_eq!(back.event.as_ref().unwrap().event_id, requeued);
    assert!(back.redelivered);
    assert_eq!(back.delivery_id, 1, "ids count per stream");
    sub.ack(back.delivery_id).await;
    // Settling an id twice ends the stream, naming the field.
    sub.ack(back.delivery_id).await;
    let status = sub.end().await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("ack.delivery_id"), "{status:?}");
    wait_group(&channel, "g", |g| g.consumers == 0 && g.depth == 0).await;
    assert_eq!(
        common::metric(
            addr,
            "wxgate_group_dropped_total{group=\"g\",reason=\"rejected\"}"
        )
        .await,
        1.0
    );
    h.finish().await;
}

#[tokio::test]
async fn events_wait_while_nobody_is_connected() {
    let (h, _, channel) = ready_worker(&[]).await;
    create(&channel, DEMO_KEY, start("later", &["demo"], &[], &[])).await;
    let mut published = BTreeSet::new();
    for n in 0..5 {
        published.insert(h.publish_xml(&text_xml(n)).await);
    }
    let g = group(&channel, "later").await;
    assert_eq!((g.depth, g.consumers), (5, 0));
    let mut sub = subscribe(&channel, DEMO_KEY, start("later", &["demo"], &[], &[]))
        .await
        .unwrap();
    let got = sub.take(5).await;
    assert_eq!(ids(&got), published);
    h.finish().await;
}

#[tokio::test]
async fn max_in_flight_bounds_the_unacked_deliveries() {
    let (h, _, channel) = ready_worker(&[]).await;
    let mut sub = subscribe(
        &channel,
        DEMO_KEY,
        EventsStart {
            max_in_flight: 3,
            ..start("slow", &["demo"], &[], &[])
        },
    )
    .await
    .unwrap();
    assert_eq!(sub.started.max_in_flight, 3);
    for n in 0..5 {
        h.publish_xml(&text_xml(n)).await;
    }
    let got = sub.take(3).await;
    // The broker holds the other two back.
    wait_group(&channel, "slow", |g| g.depth == 2).await;
    sub.nothing_within_quiet().await;
    sub.ack(got[0].delivery_id).await;
    let fourth = sub.next().await;
    assert_eq!(fourth.delivery_id, 4);
    sub.nothing_within_quiet().await;
    assert_eq!(group(&channel, "slow").await.depth, 1);
    // The default and the bound.
    let other = subscribe(&channel, DEMO_KEY, start("default", &["demo"], &[], &[]))
        .await
        .unwrap();
    assert_eq!(other.started.max_in_flight, 64);
    let status = subscribe(
        &channel,
        DEMO_KEY,
        EventsStart {
            max_in_flight: 1025,
            ..start("big", &["demo"], &[], &[])
        },
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("start.max_in_flight"),
        "{status:?}"
    );
    h.finish().await;
}

#[tokio::test]
async fn delete_group_removes_it_and_ends_its_streams() {
    let (h, _, channel) = ready_worker(&[]).await;
    create(&channel, DEMO_KEY, start("gone", &["demo"], &[], &[])).await;
    h.publish_xml(&text_xml(1)).await;
    h.publish_xml(&text_xml(2)).await;
    wait_group(&channel, "gone", |g| g.depth == 2).await;
    let sub = subscribe(
        &channel,
        DEMO_KEY,
        EventsStart {
            max_in_flight: 1,
            ..start("gone", &["demo"], &[], &[])
        },
    )
    .await
    .unwrap();
    wait_group(&channel, "gone", |g| g.depth == 1).await;
    assert_eq!(delete(&channel, DEMO_KEY, "gone").await.unwrap(), 1);
    let status = sub.end().await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(
        list(&channel, ADMIN_KEY)
            .await
            .iter()
            .all(|g| g.group != "gone")
    );
    let status = delete(&channel, DEMO_KEY, "gone").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = delete(&channel, DEMO_KEY, "bad.name").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    h.finish().await;
}

#[tokio::test]
async fn list_groups_shows_filters_retention_depth_and_consumers() {
    let (h, _, channel) = ready_worker(&[]).await;
    let _open = subscribe(
        &channel,
        DEMO_KEY,
        EventsStart {
            max_length: Some(50),
            message_ttl_s: Some(3600),
            ..start("listed", &["demo"], &["text"], &["SCAN"])
        },
    )
    .await
    .unwrap();
    create(&channel, PLAIN_KEY, start("plains", &["plain"], &[], &[])).await;
    publish_as(&h, "plain", &text_xml(1)).await;
    wait_group(&channel, "plains", |g| g.depth == 1).await;
    let all = list(&channel, ADMIN_KEY).await;
    assert_eq!(
        all.iter().map(|g| g.group.as_str()).collect::<Vec<_>>(),
        ["listed", "plains"]
    );
    let listed = &all[0];
    assert_eq!(
        listed.filter,
        Some(EventsFilter {
            accounts: vec!["demo".into()],
            msg_types: vec!["text".into()],
            events: vec!["scan".into()],
        })
    );
    assert_eq!(listed.routing_keys, ["demo.event.scan", "demo.msg.text"]);
    assert_eq!((listed.max_length, listed.message_ttl_s), (50, 3600));
    assert_eq!((listed.depth, listed.consumers), (0, 1));
    assert!(listed.queue_present && listed.created_at_ms > 0);
    assert_eq!((all[1].depth, all[1].consumers), (1, 0));
    assert_eq!(
        (all[1].max_length, all[1].message_ttl_s),
        (
            h.config.worker.group_max_length,
            h.config.worker.group_message_ttl.as_secs()
        )
    );
    // A key sees only the groups of its accounts.
    let demo = list(&channel, DEMO_KEY).await;
    assert_eq!(
        demo.iter().map(|g| g.group.as_str()).collect::<Vec<_>>(),
        ["listed"]
    );
    h.finish().await;
}

#[tokio::test]
async fn a_start_with_another_filter_rebinds_the_group() {
    let (h, _, channel) = ready_worker(&[]).await;
    create(
        &channel,
        DEMO_KEY,
        start("moving", &["demo"], &["text"], &[]),
    )
    .await;
    let started = create(
        &channel,
        DEMO_KEY,
        start("moving", &["demo"], &["event"], &[]),
    )
    .await;
    assert_eq!(started.routing_keys, ["demo.event.*"]);
    h.publish_xml(&text_xml(1)).await;
    let event = h.publish_xml(&event_xml(2, "subscribe")).await;
    let g = group(&channel, "moving").await;
    assert_eq!(g.depth, 1, "the text key was unbound: {g:?}");
    assert_eq!(g.routing_keys, ["demo.event.*"]);
    let mut sub = subscribe(
        &channel,
        DEMO_KEY,
        start("moving", &["demo"], &["event"], &[]),
    )
    .await
    .unwrap();
    assert_eq!(sub.next().await.event.unwrap().event_id, event);
    h.finish().await;
}

#[tokio::test]
async fn a_full_group_drops_its_oldest_events_and_counts_them() {
    let (h, addr, channel) = ready_worker(&[]).await;
    let started = create(
        &channel,
        DEMO_KEY,
        EventsStart {
            max_length: Some(3),
            ..start("small", &["demo"], &[], &[])
        },
    )
    .await;
    assert_eq!(started.max_length, 3);
    let mut published = Vec::new();
    for n in 0..5 {
        published.push(h.publish_xml(&text_xml(n)).await);
    }
    common::wait_metric(
        addr,
        "wxgate_group_dropped_total{group=\"small\",reason=\"maxlen\"}",
        2.0,
    )
    .await;
    assert_eq!(group(&channel, "small").await.depth, 3);
    let mut sub = subscribe(&channel, DEMO_KEY, start("small", &["demo"], &[], &[]))
        .await
        .unwrap();
    let got = sub.take(3).await;
    let newest: BTreeSet<String> = published[2..].iter().cloned().collect();
    assert_eq!(ids(&got), newest);
    drop(sub);
    // Retention cannot change on an existing group.
    let status = subscribe(
        &channel,
        DEMO_KEY,
        EventsStart {
            max_length: Some(4),
            ..start("small", &["demo"], &[], &[])
        },
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("max_length") && status.message().contains("DeleteGroup"),
        "{status:?}"
    );
    assert_eq!(
        common::metric(
            addr,
            "wxgate_group_dropped_total{group=\"small\",reason=\"maxlen\"}"
        )
        .await,
        2.0
    );
    h.finish().await;
}

#[tokio::test]
async fn keys_may_only_use_groups_of_their_accounts() {
    let (h, _, channel) = ready_worker(&[]).await;
    let first = request(subscribe_request::Kind::Start(start(
        "g",
        &["demo"],
        &[],
        &[],
    )));
    let status = open(&channel, None, first.clone()).await.err().unwrap();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = open(&channel, Some("wrong-key"), first)
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = subscribe(&channel, PLAIN_KEY, start("g", &["demo"], &[], &[]))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = subscribe(&channel, DEMO_KEY, start("g", &["demo", "plain"], &[], &[]))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = subscribe(&channel, DEMO_KEY, start("g", &[], &[], &[]))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("admin"), "{status:?}");
    // A group of another account cannot be rebound, deleted or listed by this key.
    create(&channel, PLAIN_KEY, start("theirs", &["plain"], &[], &[])).await;
    let status = subscribe(&channel, DEMO_KEY, start("theirs", &["demo"], &[], &[]))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(group(&channel, "theirs").await.routing_keys, ["plain.#"]);
    let status = delete(&channel, DEMO_KEY, "theirs").await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(list(&channel, DEMO_KEY).await.is_empty());
    let status = EventsClient::new(channel.clone())
        .list_groups(EventsListGroupsRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    h.finish().await;
}

#[tokio::test]
async fn invalid_starts_are_refused_naming_the_field() {
    let (h, _, channel) = ready_worker(&[]).await;
    let cases = [
        (start("a.b", &["demo"], &[], &[]), "start.group"),
        (start("", &["demo"], &[], &[]), "start.group"),
        (start("g", &["de*mo"], &[], &[]), "filter.accounts[0]"),
        (
            start("g", &["demo"], &["text", "te.xt"], &[]),
            "filter.msg_types[1]",
        ),
        (start("g", &["demo"], &[], &["#"]), "filter.events[0]"),
        (
            EventsStart {
                max_length: Some(0),
                ..start("g", &["demo"], &[], &[])
            },
            "start.max_length",
        ),
        (
            EventsStart {
                message_ttl_s: Some(90 * 86_400 + 1),
                ..start("g", &["demo"], &[], &[])
            },
            "start.message_ttl_s",
        ),
    ];
    for (start, field) in cases {
        let status = subscribe(&channel, DEMO_KEY, start.clone())
            .await
            .err()
            .unwrap();
        assert_eq!(status.code(), Code::InvalidArgument, "{start:?}");
        assert!(status.message().starts_with(field), "{field}: {status:?}");
    }
    let ack_first = request(subscribe_request::Kind::Ack(EventsAck { delivery_id: 1 }));
    let status = open(&channel, Some(DEMO_KEY), ack_first)
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("start"), "{status:?}");
    assert!(
        list(&channel, ADMIN_KEY).await.is_empty(),
        "nothing was created"
    );
    h.finish().await;
}

#[tokio::test]
async fn streams_end_when_the_worker_shuts_down_and_events_stay() {
    let (mut h, _, channel) = ready_worker(&[]).await;
    let mut sub = subscribe(&channel, DEMO_KEY, start("stay", &["demo"], &[], &[]))
        .await
        .unwrap();
    let event = h.publish_xml(&text_xml(1)).await;
    assert_eq!(sub.next().await.event.unwrap().event_id, event);
    h.stop_worker(0).await;
    let status = sub.end().await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // The unacked event went back to the group.
    h.start_worker().await;
    let channel = h.stream_channel(0).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut sub = loop {
        match subscribe(&channel, DEMO_KEY, start("stay", &["demo"], &[], &[])).await {
            Ok(sub) => break sub,
            Err(status) if status.code() == Code::Unavailable => {
                assert!(tokio::time::Instant::now() < deadline, "{status:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    };
    let again = sub.next().await;
    assert_eq!(again.event.unwrap().event_id, event);
    assert!(again.redelivered);
    h.finish().await;
}

#[tokio::test]
async fn an_undecodable_event_is_rejected_and_counted_not_delivered() {
    let (h, addr, channel) = ready_worker(&[]).await;
    let mut sub = subscribe(&channel, DEMO_KEY, start("strict", &["demo"], &[], &[]))
        .await
        .unwrap();
    let (key, mut garbage) = event_message(&text_xml(1), None);
    garbage.body = bytes::Bytes::from_static(b"\xff\xff\xff not protobuf");
    h.publish(&key, &garbage).await;
    let good = h.publish_xml(&text_xml(2)).await;
    let first = sub.next().await;
    assert_eq!(first.event.unwrap().event_id, good);
    assert_eq!(first.delivery_id, 1, "the rejected one took no id");
    common::wait_metric(
        addr,
        "wxgate_group_dropped_total{group=\"strict\",reason=\"rejected\"}",
        1.0,
    )
    .await;
    h.finish().await;
}

#[tokio::test]
async fn concurrent_starts_of_a_new_group_all_stay_open() {
    let (h, _, channel) = ready_worker(&[]).await;
    let starts = (0..5).map(|_| subscribe(&channel, DEMO_KEY, start("race", &["demo"], &[], &[])));
    let mut subs: Vec<Sub> = futures_util::future::join_all(starts)
        .await
        .into_iter()
        .map(|s| s.unwrap())
        .collect();
    assert_eq!(
        subs.iter().filter(|s| s.started.created).count(),
        1,
        "exactly one start created the group"
    );
    wait_group(&channel, "race", |g| g.consumers == 5).await;
    // Every stream checks its group once a second: two checks each must pass. Polled so a
    // stream that ends shows up at once.
    let until = tokio::time::Instant::now() + Duration::from_millis(2200);
    while tokio::time::Instant::now() < until {
        assert_eq!(group(&channel, "race").await.consumers, 5, "a stream ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each stream still gets events: enough that the broker gives every one some.
    let mut published = BTreeSet::new();
    for n in 0..50 {
        published.insert(h.publish_xml(&text_xml(n)).await);
    }
    let mut got = BTreeSet::new();
    let mut per_stream = [0usize; 5];
    while got.len() < published.len() {
        let (i, d) = {
            let nexts = subs
                .iter_mut()
                .enumerate()
                .map(|(i, s)| Box::pin(async move { (i, s.next().await) }));
            futures_util::future::select_all(nexts).await.0
        };
        subs[i].ack(d.delivery_id).await;
        per_stream[i] += 1;
        got.insert(d.event.unwrap().event_id);
    }
    assert_eq!(got, published);
    assert!(per_stream.iter().all(|n| *n > 0), "{per_stream:?}");
    h.finish().await;
}

/// Publishes `xml` as an event of `account`, its body naming `account` too; its event id.
async fn publish_for(h: &Harness, account: &str, xml: &str) -> String {
    use prost::Message as _;
    let (key, mut message) = event_message(xml, None);
    let mut event = wxgate_proto::v1::Event::decode(message.body.as_ref()).unwrap();
    event.account_id = account.to_owned();
    message.body = bytes::Bytes::from(event.encode_to_vec());
    let key = format!("{account}{}", key.strip_prefix("demo").unwrap());
    h.publish(&key, &message).await;
    message.properties.message_id.unwrap()
}

#[tokio::test]
async fn events_queued_under_a_wider_filter_reach_only_keys_of_their_account() {
    let (h, addr, channel) = ready_worker(&[]).await;
    create(&channel, ADMIN_KEY, start("narrowed", &[], &[], &[])).await;
    let plain = publish_for(&h, "plain", &text_xml(1)).await;
    let demo = publish_for(&h, "demo", &text_xml(2)).await;
    wait_group(&channel, "narrowed", |g| g.depth == 2).await;
    // Narrowed to demo by an admin: the plain event stays queued. (Events the short-lived
    // stream of `create` took are back in the queue once the broker has seen it close.)
    create(&channel, ADMIN_KEY, start("narrowed", &["demo"], &[], &[])).await;
    wait_group(&channel, "narrowed", |g| g.depth == 2).await;
    let mut sub = subscribe(&channel, DEMO_KEY, start("narrowed", &["demo"], &[], &[]))
        .await
        .unwrap();
    let first = sub.next().await;
    assert_eq!(
        first.event.as_ref().unwrap().event_id,
        demo,
        "{plain} skipped"
    );
    assert_eq!(first.delivery_id, 1, "the rejected one took no id");
    common::wait_metric(
        addr,
        "wxgate_group_dropped_total{group=\"narrowed\",reason=\"rejected\"}",
        1.0,
    )
    .await;
    sub.ack(first.delivery_id).await;
    wait_group(&channel, "narrowed", |g| g.depth == 0).await;
    sub.nothing_within_quiet().await;
    h.finish().await;
}

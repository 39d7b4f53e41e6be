//! The worker re-parses an event's XML within the limits the gateway accepted it under,
//! against real Redis and RabbitMQ and the WeChat simulator.

mod common;

use bytes::Bytes;
use common::*;
use prost::Message as _;
use serde_json::json;
use wxgate_sim::{Inbound, random_openid};

/// 1.5 MiB of extra element: over the XML parser's 1 MiB default, under the configured limit.
const PADDING_BYTES: usize = 3 * 512 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_over_one_mib_within_max_body_bytes_is_answered() {
    let mut h = Harness::new(&[("WXGATE__GATEWAY__MAX_BODY_BYTES", "4194304")]).await;
    h.start_worker().await;
    let user = random_openid();
    let xml = Inbound::now(ORIGINAL_ID, &user).text(77, "large");
    let (key, mut message) = event_message(&xml, None);
    // WeChat adds elements over time; the gateway keeps unknown ones in `raw_xml`.
    let large = xml.replacen(
        "</xml>",
        &format!("<Padding>{}</Padding></xml>", "x".repeat(PADDING_BYTES)),
        1,
    );
    assert!(large.len() > 1024 * 1024 && large.len() <= h.config.gateway.max_body_bytes);
    let mut event = wxgate_proto::v1::Event::decode(message.body.clone()).unwrap();
    event.raw_xml = large;
    message.body = Bytes::from(event.encode_to_vec());
    h.publish(&key, &message).await;

    let calls = h.sim.wait_for_calls(SEND, 1, WAIT).await.unwrap();
    assert_eq!(
        calls[0].body,
        json!({"touser": user, "msgtype": "text", "text": {"content": "large"}})
    );
    h.finish().await;
}

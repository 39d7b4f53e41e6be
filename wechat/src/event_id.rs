//! The event id of docs/contract.md §3: the dedup key, AMQP `message_id` and
//! `Event.event_id` of every accepted callback.

use sha2::{Digest, Sha256};

use crate::message::InboundMessage;

/// 32 lower-case hex characters: the first 16 bytes of a SHA-256 over the
/// fields that WeChat repeats unchanged on retries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(String);

impl EventId {
    /// The 32 hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for EventId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The event id of `msg` received for `account_id`.
///
/// With a `MsgId`/`MsgID`: SHA-256 of `m\n{account_id}\n{FromUserName}\n{CreateTime}\n{MsgId}`;
/// otherwise of `e\n{account_id}\n{FromUserName}\n{CreateTime}\n{Event}\n{EventKey}`
/// (`Event`, `EventKey` empty when absent); numbers in decimal. Retries of
/// one callback get the same id.
pub fn event_id(account_id: &str, msg: &InboundMessage) -> EventId {
    let create_time = msg.create_time.to_string();
    match msg.msg_id {
        Some(msg_id) => hash_lines(&[
            "m",
            account_id,
            &msg.from_user_name,
            &create_time,
            &msg_id.to_string(),
        ]),
        None => hash_lines(&[
            "e",
            account_id,
            &msg.from_user_name,
            &create_time,
            msg.event.as_deref().unwrap_or_default(),
            msg.field("EventKey").unwrap_or_default(),
        ]),
    }
}

/// SHA-256 of the lines joined by `\n` (no trailing newline), first 16 bytes in hex.
fn hash_lines(lines: &[&str]) -> EventId {
    let mut hasher = Sha256::new();
    for (index, line) in lines.iter().enumerate() {
        if index > 0 {
            hasher.update(b"\n");
        }
        hasher.update(line.as_bytes());
    }
    let digest = hasher.finalize();
    EventId(hex::encode(digest.get(..16).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Limits, parse};

    const HDR: &str = "<ToUserName><![CDATA[gh_0123456789ab]]></ToUserName><FromUserName><![CDATA[oUSER_OPENID_xxxxxxxxxxxxxxx]]></FromUserName>";

    /// Parses `<xml>{HDR}{body}</xml>` and checks its id for account `demo`.
    /// Expected values were computed once with Python's hashlib, e.g.
    /// `hashlib.sha256(b"m\ndemo\n…\n1700000000\n24000000000000001").hexdigest()[:32]`.
    fn check(body: &str, expected: &str) {
        let msg = parse(
            format!("<xml>{HDR}{body}</xml>").as_bytes(),
            &Limits::default(),
        )
        .unwrap();
        let id = event_id("demo", &msg);
        assert_eq!(id.as_str(), expected, "{body}");
        assert_eq!(id.to_string(), expected);
        assert_eq!(id.as_str().len(), 32);
    }

    #[test]
    fn message_with_msg_id() {
        check(
            "<CreateTime>1700000000</CreateTime><MsgType>text</MsgType><Content>hello</Content><MsgId>24000000000000001</MsgId>",
            "d95ebfc0b325a8c3b254e6494eda2cc6",
        );
        // Content does not take part: a retry is the same event.
        check(
            "<CreateTime>1700000000</CreateTime><MsgType>text</MsgType><Content>other</Content><MsgId>24000000000000001</MsgId>",
            "d95ebfc0b325a8c3b254e6494eda2cc6",
        );
    }

    #[test]
    fn job_finish_event_uses_capital_d_msg_id() {
        check(
            "<CreateTime>1700000000</CreateTime><MsgType>event</MsgType><Event>TEMPLATESENDJOBFINISH</Event><MsgID>3487542469355618313</MsgID><Status>success</Status>",
            "387569c7475c15e1cb11fe356c79bc41",
        );
    }

    #[test]
    fn events_use_event_and_event_key() {
        check(
            "<CreateTime>1700000010</CreateTime><MsgType>event</MsgType><Event>subscribe</Event><EventKey>qrscene_123</EventKey><Ticket>T</Ticket>",
            "dc58eebb8243c18a6b1af62fdf929343",
        );
        check(
            "<CreateTime>1700000010</CreateTime><MsgType>event</MsgType><Event>unsubscribe</Event>",
            "a737d3501f7e01a42597aacd00c248d9",
        );
        // An empty EventKey equals an absent one.
        check(
            "<CreateTime>1700000010</CreateTime><MsgType>event</MsgType><Event>unsubscribe</Event><EventKey></EventKey>",
            "a737d3501f7e01a42597aacd00c248d9",
        );
    }

    #[test]
    fn account_separates_ids() {
        let msg = parse(
            format!(
                "<xml>{HDR}<CreateTime>1</CreateTime><MsgType>text</MsgType><MsgId>1</MsgId></xml>"
            )
            .as_bytes(),
            &Limits::default(),
        )
        .unwrap();
        assert_ne!(event_id("a", &msg), event_id("b", &msg));
    }
}

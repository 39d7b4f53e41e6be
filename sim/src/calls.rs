//! The call log: every API call the simulator answered, bounded, plus
//! per-path counters that are never dropped.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use serde::Serialize;

/// One API call as the simulator saw and answered it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Call {
    /// Position in the log, from 1, increasing.
    pub seq: u64,
    /// HTTP method (`GET`, `POST`).
    pub method: String,
    /// The request path (`/cgi-bin/message/custom/send`).
    pub path: String,
    /// Decoded query parameters in order; a `secret` value is replaced by
    /// `[redacted]`.
    pub query: Vec<(String, String)>,
    /// The AppID concerned: the `appid` of the query or body on token and
    /// OAuth endpoints, else the owner of `access_token` when the simulator
    /// issued it.
    pub appid: Option<String>,
    /// The `access_token` query parameter.
    pub access_token: Option<String>,
    /// The JSON body; `Null` when there was none, a JSON string holding
    /// the raw text when it was not JSON. A `secret` field is redacted.
    pub body: serde_json::Value,
    /// The errcode answered: 0 for success (with or without an `errcode`
    /// field), `None` when no JSON was answered (image, HTTP error status,
    /// dropped connection).
    pub errcode: Option<i64>,
    /// HTTP status answered; 0 when the connection was dropped.
    pub http_status: u16,
    /// Simulated Unix time of the call, in milliseconds.
    pub at_ms: i64,
    /// How long the answer was held back after the call was carried out
    /// (an injected [`crate::FaultKind::LateAnswer`]), in milliseconds; 0
    /// normally. A client with a shorter timeout never saw the answer,
    /// although the call took effect.
    pub answer_delay_ms: u64,
}

impl Call {
    /// The first query parameter named `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        crate::query::find(&self.query, name)
    }
}

/// A call as [`crate::Sim::subscribe`] delivers it, the moment it is logged.
#[derive(Debug, Clone)]
pub struct LiveCall {
    /// When the request reached the simulator (its headers were read), on
    /// the real monotonic clock: not the simulated clock of [`Call::at_ms`],
    /// and not frozen by `tokio::time::pause`.
    pub received_at: Instant,
    /// The call as logged, with the same `seq` as in the log.
    pub call: Call,
}

#[derive(Debug)]
pub(crate) struct CallLog {
    capacity: usize,
    next_seq: u64,
    calls: VecDeque<Call>,
    per_path: HashMap<String, u64>,
}

impl CallLog {
    pub(crate) fn new(capacity: usize) -> CallLog {
        CallLog {
            capacity,
            next_seq: 1,
            calls: VecDeque::with_capacity(capacity.min(4096)),
            per_path: HashMap::new(),
        }
    }

    /// Logs `call` and returns the `seq` it was given.
    pub(crate) fn push(&mut self, mut call: Call) -> u64 {
        let seq = self.next_seq;
        call.seq = seq;
        self.next_seq = self.next_seq.saturating_add(1);
        match self.per_path.get_mut(call.path.as_str()) {
            Some(count) => *count = count.saturating_add(1),
            None => {
                self.per_path.insert(call.path.clone(), 1);
            }
        }
        if self.capacity == 0 {
            return seq;
        }
        while self.calls.len() >= self.capacity {
            self.calls.pop_front();
        }
        self.calls.push_back(call);
        seq
    }

    pub(crate) fn all(&self) -> Vec<Call> {
        self.calls.iter().cloned().collect()
    }

    pub(crate) fn to_path(&self, path: &str) -> Vec<Call> {
        self.calls
            .iter()
            .filter(|call| call.path == path)
            .cloned()
            .collect()
    }

    /// The last `limit` calls, optionally only to `path`, oldest first.
    pub(crate) fn last(&self, path: Option<&str>, limit: usize) -> Vec<Call> {
        let mut out: Vec<Call> = self
            .calls
            .iter()
            .rev()
            .filter(|call| path.is_none_or(|p| call.path == p))
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        out
    }

    pub(crate) fn count(&self, path: &str) -> u64 {
        self.per_path.get(path).copied().unwrap_or(0)
    }

    pub(crate) fn counts(&self) -> HashMap<String, u64> {
        self.per_path.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(path: &str) -> Call {
        Call {
            seq: 0,
            method: "POST".to_owned(),
            path: path.to_owned(),
            query: Vec::new(),
            appid: None,
            access_token: None,
            body: serde_json::Value::Null,
            errcode: Some(0),
            http_status: 200,
            at_ms: 0,
            answer_delay_ms: 0,
        }
    }

    #[test]
    fn push_numbers_calls_from_one_even_when_nothing_is_kept() {
        for (capacity, kept) in [(0, vec![]), (1, vec![3]), (10, vec![1, 2, 3])] {
            let mut log = CallLog::new(capacity);
            let seqs: Vec<u64> = ["/a", "/b", "/a"]
                .into_iter()
                .map(|path| log.push(call(path)))
                .collect();
            assert_eq!(seqs, [1, 2, 3], "capacity {capacity}");
            assert_eq!(log.count("/a"), 2, "capacity {capacity}");
            let logged: Vec<u64> = log.all().iter().map(|c| c.seq).collect();
            assert_eq!(logged, kept, "capacity {capacity}");
        }
    }
}

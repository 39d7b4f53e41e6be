//! Injected faults: errcodes, HTTP statuses, latency, late answers and
//! dropped connections, per endpoint path.

use std::time::Duration;

use serde::Deserialize;

/// Matches every API path in [`crate::Sim::inject`].
pub const ANY_PATH: &str = "*";

/// A fault the simulator applies to calls of one path, before doing
/// anything else (the call changes no state and is logged with the fault),
/// except [`FaultKind::LateAnswer`], which lets the call take effect and
/// holds back its answer.
///
/// Built with one of the constructors, then optionally limited:
/// `Fault::errcode(-1).times(2)`, `Fault::status(502).with_probability(0.1)`.
/// Without [`Fault::times`] it applies to every matching call until
/// [`crate::Sim::clear_faults`].
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// What happens.
    pub kind: FaultKind,
    /// How many more calls it applies to; `None` is always.
    pub times: Option<u32>,
    /// Chance, 0.0..=1.0, that a matching call is affected (an unaffected
    /// call does not use up `times`).
    pub probability: f64,
}

/// What an injected fault does to a call.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// Answer HTTP 200 with this errcode (and errmsg, or the usual one).
    Errcode {
        /// The errcode.
        errcode: i64,
        /// The errmsg before the ` rid: …` suffix; `None` uses the usual text.
        errmsg: Option<String>,
    },
    /// Answer this HTTP status with a short non-JSON body.
    Status(u16),
    /// Wait this long, then handle the call normally (or apply the next
    /// matching fault). Latencies of several matching faults add up.
    ///
    /// A client that gives up during the wait closes its connection, and
    /// the call is then neither carried out nor logged: WeChat slow to
    /// *receive* a call. For WeChat slow to *answer* one it has carried out,
    /// use [`FaultKind::LateAnswer`].
    Latency(Duration),
    /// Handle the call normally (or apply the next matching fault) and log
    /// it, then hold the answer back this long: the call takes effect (a
    /// message is delivered, a token issued) whether or not the client is
    /// still waiting, as with real WeChat when its answer outlasts the
    /// caller's timeout. Logged in [`crate::Call::answer_delay_ms`]; delays
    /// of several matching faults add up.
    LateAnswer(Duration),
    /// Close the connection without answering.
    Drop,
}

impl Fault {
    fn new(kind: FaultKind) -> Fault {
        Fault {
            kind,
            times: None,
            probability: 1.0,
        }
    }

    /// Answer `errcode` with its usual errmsg.
    pub fn errcode(errcode: i64) -> Fault {
        Fault::new(FaultKind::Errcode {
            errcode,
            errmsg: None,
        })
    }

    /// Answer HTTP `status`.
    pub fn status(status: u16) -> Fault {
        Fault::new(FaultKind::Status(status))
    }

    /// Delay the answer by `delay`.
    pub fn latency(delay: Duration) -> Fault {
        Fault::new(FaultKind::Latency(delay))
    }

    /// Carry the call out, then answer `delay` later ([`FaultKind::LateAnswer`]).
    pub fn late_answer(delay: Duration) -> Fault {
        Fault::new(FaultKind::LateAnswer(delay))
    }

    /// Drop the connection without an answer.
    pub fn drop_connection() -> Fault {
        Fault::new(FaultKind::Drop)
    }

    /// Apply to the next `n` matching calls only.
    pub fn times(mut self, n: u32) -> Fault {
        self.times = Some(n);
        self
    }

    /// Affect a matching call with probability `p` (clamped to 0.0..=1.0).
    pub fn with_probability(mut self, p: f64) -> Fault {
        self.probability = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        self
    }

    /// Use `errmsg` instead of the usual text (errcode faults only).
    pub fn with_errmsg(mut self, errmsg: impl Into<String>) -> Fault {
        if let FaultKind::Errcode { errmsg: slot, .. } = &mut self.kind {
            *slot = Some(errmsg.into());
        }
        self
    }
}

/// The JSON accepted by `POST /_sim/faults`: `path` plus exactly one of
/// `errcode` (with optional `errmsg`), `status`, `latency_ms`,
/// `late_answer_ms`, `drop`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultSpec {
    pub(crate) path: String,
    errcode: Option<i64>,
    errmsg: Option<String>,
    status: Option<u16>,
    latency_ms: Option<u64>,
    late_answer_ms: Option<u64>,
    #[serde(default)]
    drop: bool,
    times: Option<u32>,
    probability: Option<f64>,
}

impl FaultSpec {
    pub(crate) fn into_fault(self) -> Result<Fault, String> {
        let mut kinds = Vec::new();
        if let Some(errcode) = self.errcode {
            kinds.push(FaultKind::Errcode {
                errcode,
                errmsg: self.errmsg,
            });
        }
        if let Some(status) = self.status {
            if !(100..=999).contains(&status) {
                return Err("status must be 100..=999".to_owned());
            }
            kinds.push(FaultKind::Status(status));
        }
        if let Some(ms) = self.latency_ms {
            kinds.push(FaultKind::Latency(Duration::from_millis(ms)));
        }
        if let Some(ms) = self.late_answer_ms {
            kinds.push(FaultKind::LateAnswer(Duration::from_millis(ms)));
        }
        if self.drop {
            kinds.push(FaultKind::Drop);
        }
        let kind = match kinds.len() {
            1 => kinds.pop().ok_or_else(|| "no fault kind".to_owned())?,
            _ => {
                return Err(
                    "give exactly one of errcode, status, latency_ms, late_answer_ms, drop"
                        .to_owned(),
                );
            }
        };
        let mut fault = Fault::new(kind);
        fault.times = self.times;
        if let Some(p) = self.probability {
            fault = fault.with_probability(p);
        }
        Ok(fault)
    }
}

/// What the faults decided for one call.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    pub(crate) latency: Duration,
    /// How long to hold the answer back once the call is carried out.
    pub(crate) late_answer: Duration,
    pub(crate) terminal: Option<FaultKind>,
}

#[derive(Debug, Default)]
pub(crate) struct FaultSet {
    rules: Vec<(String, Fault)>,
}

impl FaultSet {
    pub(crate) fn add(&mut self, path: String, fault: Fault) {
        self.rules.push((path, fault));
    }

    pub(crate) fn clear(&mut self) {
        self.rules.clear();
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Applies the matching faults in the order they were injected: all
    /// latencies add up, so do all late answers, and the first
    /// errcode/status/drop ends the search.
    pub(crate) fn evaluate(&mut self, path: &str) -> Verdict {
        let mut verdict = Verdict::default();
        let mut rng = rand::rng();
        for (rule_path, fault) in &mut self.rules {
            if rule_path != ANY_PATH && rule_path != path {
                continue;
            }
            if fault.times == Some(0) {
                continue;
            }
            if fault.probability < 1.0 && !rand::Rng::random_bool(&mut rng, fault.probability) {
                continue;
            }
            if let Some(times) = &mut fault.times {
                *times = times.saturating_sub(1);
            }
            match &fault.kind {
                FaultKind::Latency(delay) => {
                    verdict.latency = verdict.latency.saturating_add(*delay)
                }
                FaultKind::LateAnswer(delay) => {
                    verdict.late_answer = verdict.late_answer.saturating_add(*delay)
                }
                other => {
                    verdict.terminal = Some(other.clone());
                    break;
                }
            }
        }
        self.rules.retain(|(_, fault)| fault.times != Some(0));
        verdict
    }
}

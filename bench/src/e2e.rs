//! `wxgate-e2e`: the end-to-end benchmark. Plays WeChat on both sides of a running
//! `wx-gateway` and `wx-worker`: pushes text messages to the gateway like WeChat does, and
//! serves WeChat's API (the simulator, in this process) that the worker answers through,
//! then reports the time from each push to the matching `custom/send`.
//!
//! It reads the same configuration file as the gateway and worker (with the same
//! `WXGATE__…` overrides), so it knows the accounts, their callback tokens, keys and
//! AppSecrets, the gateway's address and the simulator's (`wechat.api_base`). Only accounts
//! whose rules echo a text message through the worker (no passive rule matches, the `custom`
//! rules reply with the same text) are pushed to. Every push carries a unique content
//! `e2e {phase} {seq}`, which the worker echoes; the simulator timestamps each call when its
//! request arrives ([`wxgate_sim::Sim::subscribe`]).
//!
//! It is a measuring tool, not a test: it asserts nothing, never touches Redis or RabbitMQ,
//! and leaves cleaning up the namespace to its caller (`bench/e2e.sh`).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::Parser;
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore, broadcast};
use tokio::task::JoinSet;
use wechat::{Decision, Limits, Reply};
use wxgate_bench::{
    Watched, gateway_base, nearest_rank, parse_duration, parse_watch, push_account,
};
use wxgate_core::config::Config;
use wxgate_sim::{
    Answer, Inbound, LiveCall, MsgIdGen, PushAccount, PushClient, PushMode, Quotas, Sim, SimConfig,
};

/// The API path the worker replies through.
const SEND_PATH: &str = "/cgi-bin/message/custom/send";
/// Content prefix of every pushed message; the rest is `{phase} {seq}`.
const CONTENT_PREFIX: &str = "e2e";
/// Calls the simulator keeps in its own log (the benchmark reads its live feed instead).
const SIM_CALL_LOG: usize = 1024;
/// A phase kept up when its last reply arrived at most this long after its last push.
const KEPT_UP_DRAIN: Duration = Duration::from_secs(1);

/// End-to-end benchmark of wx-gateway and wx-worker: WeChat pushes in, customer-service
/// replies out, with the WeChat API simulated in this process.
#[derive(Debug, Parser)]
#[command(
    name = "wxgate-e2e",
    version,
    after_long_help = "Example (gateway and worker already running on e2e.toml):\n  wxgate-e2e --config e2e.toml --gateway-pid $(pidof wx-gateway) --worker-pid $(pidof wx-worker) \\\n    --phase warmup=each:1000 --phase steady=rate:1000:30s --phase max=closed:128:20s\n\nTwo gateways, round robin, a per-push timeline:\n  wxgate-e2e --config e2e.toml --gateway http://127.0.0.1:8080/wx --gateway http://127.0.0.1:8081/wx \\\n    --watch gateway-1=PID --timeline pushes.csv --phase load=rate:300:90s"
)]
struct Args {
    /// The configuration the gateway and worker run with; WXGATE__SECTION__KEY overrides
    /// apply here too.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,

    /// Callback base URL (pushes go to {URL}/{account_id}); repeat it to spread the pushes
    /// over several gateways, round robin (push k goes to the (k mod n)-th URL given).
    /// Default: gateway.listen and gateway.path_prefix of the config.
    #[arg(long = "gateway", value_name = "URL")]
    gateways: Vec<String>,

    /// Address the simulated WeChat API listens on; default: the host:port of
    /// wechat.api_base, which must then be http://IP:PORT.
    #[arg(long, value_name = "ADDR")]
    sim_listen: Option<SocketAddr>,

    /// A load phase, run in the order given: NAME=rate:EVENTS_PER_S:DURATION (open loop),
    /// NAME=closed:CONCURRENCY:DURATION (closed loop), or NAME=each:EVENTS_PER_S (one event
    /// per account, open loop).
    #[arg(
        long = "phase",
        value_name = "SPEC",
        default_values_t = [PhaseSpec::default()]
    )]
    phases: Vec<PhaseSpec>,

    /// How long to wait for a phase's replies after its last push was answered.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,

    /// Most pushes in flight in an open-loop phase; a push that falls due waits for a free
    /// slot (its latency from the schedule shows the wait).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_in_flight: usize,

    /// Timeout of one push; a push is delivered once (WeChat's retries would hide errors).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    push_timeout: Duration,

    /// Distinct sender openids.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    openids: usize,

    /// Push to the first N echo accounts only (0 = all of them).
    #[arg(long, value_name = "N", default_value_t = 0)]
    accounts: usize,

    /// wx-gateway process to report CPU per event and RSS for (0 = none).
    #[arg(long, value_name = "PID", default_value_t = 0)]
    gateway_pid: u32,

    /// wx-worker process to report CPU per event and RSS for (0 = none).
    #[arg(long, value_name = "PID", default_value_t = 0)]
    worker_pid: u32,

    /// Another process to report CPU per event and RSS for, e.g. redis=PID (repeatable).
    #[arg(long = "watch", value_name = "NAME=PID", value_parser = parse_watch)]
    watch: Vec<(String, u32)>,

    /// Tokio worker threads of this process (pusher and simulator); keep it small when
    /// sharing cores with the gateway, worker, Redis and RabbitMQ.
    #[arg(long, value_name = "N", default_value_t = 1)]
    threads: usize,

    /// Print the summary as one line of JSON.
    #[arg(long, default_value_t = false)]
    json: bool,

    /// Also write one CSV line per push to FILE (with a header): phase, seq, gateway (index
    /// into the --gateway list), due, start, answer and reply times as Unix milliseconds
    /// (due and reply empty when there is none), and the result (`ok`, `status_N`,
    /// `no_answer`, `bad_answer`). For timelines around a fault.
    #[arg(long, value_name = "FILE")]
    timeline: Option<PathBuf>,
}

/// How a phase pushes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Load {
    /// Open loop: push *k* is due at start + *k* / rate, whatever the answers.
    Rate { per_s: f64, duration: Duration },
    /// Closed loop: this many tasks, each pushing again as soon as it has an answer.
    Closed {
        concurrency: usize,
        duration: Duration,
    },
    /// Open loop at this rate, one push per account.
    Each { per_s: f64 },
}

/// One `--phase`.
#[derive(Debug, Clone, PartialEq)]
struct PhaseSpec {
    name: String,
    load: Load,
}

impl Default for PhaseSpec {
    fn default() -> Self {
        Self {
            name: "steady".to_owned(),
            load: Load::Rate {
                per_s: 1000.0,
                duration: Duration::from_secs(30),
            },
        }
    }
}

impl std::fmt::Display for PhaseSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = &self.name;
        match self.load {
            Load::Rate { per_s, duration } => {
                write!(f, "{name}=rate:{per_s}:{}s", duration.as_secs_f64())
            }
            Load::Closed {
                concurrency,
                duration,
            } => write!(f, "{name}=closed:{concurrency}:{}s", duration.as_secs_f64()),
            Load::Each { per_s } => write!(f, "{name}=each:{per_s}"),
        }
    }
}

impl FromStr for PhaseSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let usage = "expected NAME=rate:EVENTS_PER_S:DURATION, NAME=closed:CONCURRENCY:DURATION or NAME=each:EVENTS_PER_S";
        let (name, spec) = text.split_once('=').ok_or(usage)?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(format!("phase name `{name}`: use letters, digits and `-`"));
        }
        let parts: Vec<&str> = spec.split(':').collect();
        let rate = |text: &str| -> Result<f64, String> {
            match text.parse::<f64>() {
                Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
                _ => Err(format!(
                    "rate `{text}`: must be a positive number of events/s"
                )),
            }
        };
        let load = match parts.as_slice() {
            ["rate", per_s, duration] => Load::Rate {
                per_s: rate(per_s)?,
                duration: parse_duration(duration)?,
            },
            ["closed", concurrency, duration] => Load::Closed {
                concurrency: match concurrency.parse::<usize>() {
                    Ok(n) if n > 0 => n,
                    _ => return Err(format!("concurrency `{concurrency}`: must be at least 1")),
                },
                duration: parse_duration(duration)?,
            },
            ["each", per_s] => Load::Each {
                per_s: rate(per_s)?,
            },
            _ => return Err(usage.to_owned()),
        };
        Ok(Self {
            name: name.to_owned(),
            load,
        })
    }
}

/// Everything the pushing tasks share.
struct Ctx {
    client: PushClient,
    /// Pushes go round robin over these callback base URLs (never empty).
    gateways: Vec<String>,
    accounts: Vec<PushAccount>,
    openids: Vec<String>,
    msg_ids: MsgIdGen,
    next_seq: AtomicU64,
    receipts: Arc<Receipts>,
}

/// How one push ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PushResult {
    /// 200 with `success`: the event is in RabbitMQ.
    Ok,
    /// A non-200 status.
    Status(u16),
    /// Timeout or connection failure.
    NoAnswer,
    /// 200 with a passive reply or an answer WeChat would not accept.
    BadAnswer,
}

impl PushResult {
    fn label(&self) -> String {
        match self {
            Self::Ok => "ok".to_owned(),
            Self::Status(status) => format!("status_{status}"),
            Self::NoAnswer => "no_answer".to_owned(),
            Self::BadAnswer => "bad_answer".to_owned(),
        }
    }
}

/// One push as the pusher saw it.
struct Sent {
    seq: u64,
    /// Index into [`Ctx::gateways`] of the gateway pushed to.
    gateway: usize,
    /// When it fell due (open loop only).
    scheduled: Option<Instant>,
    /// Just before the push was signed, encrypted and sent.
    started: Instant,
    /// When the whole answer had arrived (or the push failed).
    answered: Instant,
    result: PushResult,
}

/// Replies seen by the simulator, by sequence number.
struct Receipts {
    state: Mutex<ReceiptState>,
    /// Woken on every accepted reply.
    changed: Notify,
}

#[derive(Default)]
struct ReceiptState {
    /// Arrival of the first accepted (errcode 0) `custom/send` of each push.
    first: HashMap<u64, Instant>,
    /// Per phase index.
    phases: BTreeMap<usize, PhaseReceipts>,
    /// Calls the live feed dropped because this process fell behind.
    lagged: u64,
    /// `custom/send` calls whose content is not one of ours.
    foreign: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct PhaseReceipts {
    /// Distinct pushes answered with an accepted `custom/send`.
    unique: u64,
    /// Accepted `custom/send` calls beyond the first for a push.
    duplicates: u64,
    /// `custom/send` calls the simulator refused (the worker retries them).
    rejected: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Receipts {
    fn new() -> Self {
        Self {
            state: Mutex::new(ReceiptState::default()),
            changed: Notify::new(),
        }
    }

    fn record(&self, received_at: Instant, call: &wxgate_sim::Call) {
        let content = call.body["text"]["content"].as_str().unwrap_or_default();
        let mut state = lock(&self.state);
        let Some((phase, seq)) = parse_content(content) else {
            state.foreign += 1;
            return;
        };
        if call.errcode != Some(0) {
            state.phases.entry(phase).or_default().rejected += 1;
            return;
        }
        let first = match state.first.entry(seq) {
            Entry::Vacant(entry) => {
                entry.insert(received_at);
                true
            }
            Entry::Occupied(_) => false,
        };
        let phase_receipts = state.phases.entry(phase).or_default();
        if first {
            phase_receipts.unique += 1;
        } else {
            phase_receipts.duplicates += 1;
        }
        drop(state);
        self.changed.notify_waiters();
    }

    fn phase(&self, phase: usize) -> PhaseReceipts {
        lock(&self.state)
            .phases
            .get(&phase)
            .copied()
            .unwrap_or_default()
    }

    fn missing(&self, seqs: &[u64]) -> usize {
        let state = lock(&self.state);
        seqs.iter()
            .filter(|seq| !state.first.contains_key(seq))
            .count()
    }
}

fn content(phase: usize, seq: u64) -> String {
    format!("{CONTENT_PREFIX} {phase} {seq}")
}

fn parse_content(content: &str) -> Option<(usize, u64)> {
    let mut words = content.split(' ');
    if words.next() != Some(CONTENT_PREFIX) {
        return None;
    }
    let phase = words.next()?.parse().ok()?;
    let seq = words.next()?.parse().ok()?;
    words.next().is_none().then_some((phase, seq))
}

/// Feeds the simulator's `custom/send` calls into `receipts` until the feed closes.
async fn collect_receipts(mut live: broadcast::Receiver<LiveCall>, receipts: Arc<Receipts>) {
    loop {
        match live.recv().await {
            Ok(LiveCall { received_at, call }) if call.path == SEND_PATH => {
                receipts.record(received_at, &call);
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                lock(&receipts.state).lagged += missed;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}

async fn push_one(ctx: &Ctx, phase: usize, scheduled: Option<Instant>) -> anyhow::Result<Sent> {
    let seq = ctx.next_seq.fetch_add(1, Ordering::Relaxed);
    let accounts = u64::try_from(ctx.accounts.len()).unwrap_or(u64::MAX).max(1);
    let account = usize::try_from(seq % accounts)
        .ok()
        .and_then(|index| ctx.accounts.get(index))
        .context("no account to push to")?;
    let openids = u64::try_from(ctx.openids.len()).unwrap_or(u64::MAX).max(1);
    let openid = usize::try_from(seq / accounts % openids)
        .ok()
        .and_then(|index| ctx.openids.get(index))
        .context("no openid to push from")?;
    let gateways = u64::try_from(ctx.gateways.len()).unwrap_or(u64::MAX).max(1);
    let gateway = usize::try_from(seq % gateways).unwrap_or(0);
    let base = ctx.gateways.get(gateway).context("no gateway to push to")?;
    let xml = Inbound::now(&account.original_id, openid)
        .text(ctx.msg_ids.next_id(), &content(phase, seq));
    let started = Instant::now();
    let outcome = ctx
        .client
        .push(base, account, &xml)
        .await
        .with_context(|| format!("pushing to account {}", account.id))?;
    let answered = Instant::now();
    let result = match (&outcome.answer, outcome.statuses.last()) {
        (Answer::Acknowledged, _) => PushResult::Ok,
        (Answer::Reply(_), _) => PushResult::BadAnswer,
        (Answer::ServiceUnavailable(_), Some(200)) => PushResult::BadAnswer,
        (Answer::ServiceUnavailable(_), Some(0) | None) => PushResult::NoAnswer,
        (Answer::ServiceUnavailable(_), Some(&status)) => PushResult::Status(status),
    };
    Ok(Sent {
        seq,
        gateway,
        scheduled,
        started,
        answered,
        result,
    })
}

/// Pushes of an open-loop phase: `count` pushes, push *k* due at start + *k* × `interval`.
async fn push_open_loop(
    ctx: &Arc<Ctx>,
    phase: usize,
    per_s: f64,
    count: u64,
    max_in_flight: usize,
) -> anyhow::Result<Vec<Sent>> {
    let interval = Duration::from_secs_f64(1.0 / per_s);
    let start = Instant::now();
    let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let mut tasks = JoinSet::new();
    let mut sent = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for k in 0..count {
        let offset = u32::try_from(k)
            .ok()
            .and_then(|k| interval.checked_mul(k))
            .context("phase too long")?;
        let due = start + offset;
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = Arc::clone(&permits).acquire_owned().await?;
        let ctx = Arc::clone(ctx);
        tasks.spawn(async move {
            let sent = push_one(&ctx, phase, Some(due)).await;
            drop(permit);
            sent
        });
        while let Some(done) = tasks.try_join_next() {
            sent.push(done.context("push task panicked")??);
        }
    }
    while let Some(done) = tasks.join_next().await {
        sent.push(done.context("push task panicked")??);
    }
    Ok(sent)
}

/// Pushes of a closed-loop phase: `concurrency` tasks pushing back to back until `duration`
/// has passed.
async fn push_closed_loop(
    ctx: &Arc<Ctx>,
    phase: usize,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Vec<Sent>> {
    let end = Instant::now() + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let ctx = Arc::clone(ctx);
        tasks.spawn(async move {
            let mut sent = Vec::new();
            while Instant::now() < end {
                sent.push(push_one(&ctx, phase, None).await?);
            }
            anyhow::Ok(sent)
        });
    }
    let mut sent = Vec::new();
    while let Some(done) = tasks.join_next().await {
        sent.extend(done.context("push task panicked")??);
    }
    Ok(sent)
}

/// The per-push CSV of `--timeline`.
struct Timeline {
    /// One moment read on both clocks, to turn an `Instant` into Unix time.
    anchor: Instant,
    anchor_unix_ms: f64,
    out: std::io::BufWriter<std::fs::File>,
}

impl Timeline {
    const HEADER: &'static str = "phase,seq,gateway,due_ms,start_ms,answer_ms,reply_ms,result";

    fn create(path: &std::path::Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("creating the timeline {}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        writeln!(out, "{}", Self::HEADER)?;
        let anchor = Instant::now();
        let anchor_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
            * 1000.0;
        Ok(Self {
            anchor,
            anchor_unix_ms,
            out,
        })
    }

    fn unix_ms(&self, at: Instant) -> f64 {
        if at >= self.anchor {
            self.anchor_unix_ms + (at - self.anchor).as_secs_f64() * 1000.0
        } else {
            self.anchor_unix_ms - (self.anchor - at).as_secs_f64() * 1000.0
        }
    }

    /// One line per push of phase `phase`; `replies[i]` is the first accepted reply to
    /// `sent[i]`.
    fn write(
        &mut self,
        phase: &str,
        sent: &[Sent],
        replies: &[Option<Instant>],
    ) -> anyhow::Result<()> {
        let optional = |this: &Self, at: Option<Instant>| {
            at.map_or_else(String::new, |at| format!("{:.3}", this.unix_ms(at)))
        };
        for (push, reply) in sent.iter().zip(replies) {
            let line = format!(
                "{phase},{},{},{},{:.3},{:.3},{},{}",
                push.seq,
                push.gateway,
                optional(self, push.scheduled),
                self.unix_ms(push.started),
                self.unix_ms(push.answered),
                optional(self, *reply),
                push.result.label(),
            );
            writeln!(self.out, "{line}")?;
        }
        self.out.flush().context("writing the timeline")
    }
}

/// Waits until every push in `seqs` has an accepted reply, or `deadline`.
async fn drain(receipts: &Receipts, phase: usize, seqs: &[u64], deadline: Instant) {
    let wanted = u64::try_from(seqs.len()).unwrap_or(u64::MAX);
    loop {
        let notified = receipts.changed.notified();
        tokio::pin!(notified);
        // Registered before checking, so a reply recorded in between wakes us.
        notified.as_mut().enable();
        // The exact check is O(pushes): only made once the count says it can succeed.
        if receipts.phase(phase).unique >= wanted && receipts.missing(seqs) == 0 {
            return;
        }
        if tokio::time::timeout_at(deadline.into(), notified)
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Exact percentiles (nearest rank) of µs samples, in ms.
#[derive(Debug, Clone, Copy)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Latency {
    fn of(samples: &mut [u64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |fraction: f64| ms(nearest_rank(samples, fraction));
        Some(Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        })
    }

    fn json(this: Option<Self>) -> Value {
        this.map_or(Value::Null, |l| {
            json!({"p50": round3(l.p50), "p90": round3(l.p90), "p99": round3(l.p99), "max": round3(l.max)})
        })
    }

    fn text(this: Option<Self>) -> String {
        this.map_or_else(
            || "-".to_owned(),
            |l| {
                format!(
                    "p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
                    l.p50, l.p90, l.p99, l.max
                )
            },
        )
    }
}

fn ms(us: u64) -> f64 {
    as_f64(us) / 1000.0
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[allow(clippy::cast_precision_loss)] // Counts stay far below 2^52.
fn as_f64(count: u64) -> f64 {
    count as f64
}

fn ratio(numerator: u64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        as_f64(numerator) / denominator
    } else {
        0.0
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// What one phase measured.
struct PhaseReport {
    spec: PhaseSpec,
    pushes: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    /// From the phase start to the last push's answer.
    push_window: Duration,
    /// From the phase start to the last accepted reply.
    reply_window: Duration,
    /// Last accepted reply minus last push answer (negative when the last reply came first).
    drain_ms: f64,
    replies: PhaseReceipts,
    /// Successful pushes without an accepted reply at the drain deadline.
    missing: u64,
    /// Replies to pushes that did not get a 200 (published anyway, e.g. a timeout after the
    /// confirm).
    replies_to_failed: u64,
    end_to_end: Option<Latency>,
    from_schedule: Option<Latency>,
    push_answer: Option<Latency>,
    cpu_us_per_event: BTreeMap<String, f64>,
    memory_kib: BTreeMap<String, (u64, u64)>,
}

impl PhaseReport {
    fn pushes_per_s(&self) -> f64 {
        ratio(self.ok, self.push_window.as_secs_f64())
    }

    fn replies_per_s(&self) -> f64 {
        ratio(self.replies.unique, self.reply_window.as_secs_f64())
    }

    fn kept_up(&self) -> bool {
        self.missing == 0 && self.ok > 0 && self.drain_ms <= ms(micros(KEPT_UP_DRAIN))
    }

    fn json(&self) -> Value {
        let (kind, rate, concurrency, duration_s) = match self.spec.load {
            Load::Rate { per_s, duration } => ("rate", Some(per_s), None, duration.as_secs_f64()),
            Load::Closed {
                concurrency,
                duration,
            } => ("closed", None, Some(concurrency), duration.as_secs_f64()),
            Load::Each { per_s } => ("each", Some(per_s), None, 0.0),
        };
        let errors: u64 = self.errors.values().sum();
        let memory: serde_json::Map<String, Value> = self
            .memory_kib
            .iter()
            .map(|(name, (rss, peak))| (name.clone(), json!({"rss_kib": rss, "peak_kib": peak})))
            .collect();
        let cpu: serde_json::Map<String, Value> = self
            .cpu_us_per_event
            .iter()
            .map(|(name, us)| (name.clone(), json!(round3(*us))))
            .collect();
        json!({
            "name": self.spec.name,
            "kind": kind,
            "rate_target": rate,
            "concurrency": concurrency,
            "duration_s": duration_s,
            "pushes": self.pushes,
            "ok": self.ok,
            "errors": {"total": errors, "by_kind": self.errors},
            "push_window_s": round3(self.push_window.as_secs_f64()),
            "pushes_per_s": round3(self.pushes_per_s()),
            "replies": self.replies.unique,
            "replies_per_s": round3(self.replies_per_s()),
            "missing": self.missing,
            "duplicates": self.replies.duplicates,
            "rejected_sends": self.replies.rejected,
            "replies_to_failed_pushes": self.replies_to_failed,
            "drain_ms": round3(self.drain_ms),
            "kept_up": self.kept_up(),
            "latency_ms": {
                "end_to_end": Latency::json(self.end_to_end),
                "from_schedule": Latency::json(self.from_schedule),
                "push_answer": Latency::json(self.push_answer),
            },
            "cpu_us_per_event": cpu,
            "memory": memory,
        })
    }

    fn print(&self) {
        let load = match self.spec.load {
            Load::Rate { per_s, duration } => {
                format!("open loop {per_s}/s for {:.1} s", duration.as_secs_f64())
            }
            Load::Closed {
                concurrency,
                duration,
            } => format!(
                "closed loop, {concurrency} concurrent pushes for {:.1} s",
                duration.as_secs_f64()
            ),
            Load::Each { per_s } => format!("open loop {per_s}/s, one push per account"),
        };
        println!("phase {}: {load}", self.spec.name);
        let errors: u64 = self.errors.values().sum();
        let kinds: Vec<String> = self
            .errors
            .iter()
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect();
        println!(
            "  pushes        {} (ok {}, errors {errors}{}) {:.1}/s",
            self.pushes,
            self.ok,
            if kinds.is_empty() {
                String::new()
            } else {
                format!(": {}", kinds.join(", "))
            },
            self.pushes_per_s()
        );
        println!(
            "  replies       {} (missing {}, duplicates {}, rejected {}, to failed pushes {}) {:.1}/s; last {:.1} ms after the last push{}",
            self.replies.unique,
            self.missing,
            self.replies.duplicates,
            self.replies.rejected,
            self.replies_to_failed,
            self.replies_per_s(),
            self.drain_ms,
            if self.kept_up() {
                ""
            } else {
                "  (did not keep up)"
            }
        );
        println!("  push → send   {}", Latency::text(self.end_to_end));
        if self.from_schedule.is_some() {
            println!("  from sched.   {}", Latency::text(self.from_schedule));
        }
        println!("  push answer   {}", Latency::text(self.push_answer));
        if !self.cpu_us_per_event.is_empty() {
            let cpu: Vec<String> = self
                .cpu_us_per_event
                .iter()
                .map(|(name, us)| format!("{name} {us:.1}"))
                .collect();
            println!("  cpu µs/event  {}", cpu.join("  "));
        }
        if !self.memory_kib.is_empty() {
            #[allow(clippy::cast_precision_loss)] // KiB counts stay far below 2^52.
            let memory: Vec<String> = self
                .memory_kib
                .iter()
                .map(|(name, (rss, peak))| {
                    format!(
                        "{name} {:.1} (peak {:.1})",
                        *rss as f64 / 1024.0,
                        *peak as f64 / 1024.0
                    )
                })
                .collect();
            println!("  rss MiB       {}", memory.join("  "));
        }
    }
}

async fn run_phase(
    ctx: &Arc<Ctx>,
    watched: &Watched,
    index: usize,
    spec: &PhaseSpec,
    args: &Args,
    timeline: Option<&mut Timeline>,
) -> anyhow::Result<PhaseReport> {
    let cpu_before = watched.cpu()?;
    let start = Instant::now();
    let sent = match spec.load {
        Load::Rate { per_s, duration } => {
            #[allow(
                clippy::cast_precision_loss,
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss
            )] // A positive rate times a duration, far below 2^52.
            let count = (per_s * duration.as_secs_f64()).round() as u64;
            push_open_loop(ctx, index, per_s, count, args.max_in_flight).await?
        }
        Load::Each { per_s } => {
            let count = u64::try_from(ctx.accounts.len()).unwrap_or(u64::MAX);
            push_open_loop(ctx, index, per_s, count, args.max_in_flight).await?
        }
        Load::Closed {
            concurrency,
            duration,
        } => push_closed_loop(ctx, index, concurrency, duration).await?,
    };
    let last_answer = sent.iter().map(|s| s.answered).max().unwrap_or(start);
    let ok_seqs: Vec<u64> = sent
        .iter()
        .filter(|s| s.result == PushResult::Ok)
        .map(|s| s.seq)
        .collect();
    drain(
        &ctx.receipts,
        index,
        &ok_seqs,
        Instant::now() + args.drain_timeout,
    )
    .await;
    let cpu_after = watched.cpu()?;
    let memory_kib = watched.memory()?;

    let ok = u64::try_from(ok_seqs.len()).unwrap_or(u64::MAX);
    let mut errors = BTreeMap::new();
    let mut end_to_end = Vec::with_capacity(ok_seqs.len());
    let mut from_schedule = Vec::new();
    let mut push_answer = Vec::with_capacity(sent.len());
    let mut missing = 0;
    let mut replies_to_failed = 0;
    let mut last_reply = None::<Instant>;
    let mut replies = Vec::with_capacity(sent.len());
    {
        let state = lock(&ctx.receipts.state);
        for push in &sent {
            let reply = state.first.get(&push.seq).copied();
            replies.push(reply);
            if let Some(at) = reply {
                last_reply = Some(last_reply.map_or(at, |last| last.max(at)));
            }
            if push.result != PushResult::Ok {
                *errors.entry(push.result.label()).or_insert(0) += 1;
                replies_to_failed += u64::from(reply.is_some());
                continue;
            }
            push_answer.push(micros(push.answered - push.started));
            let Some(at) = reply else {
                missing += 1;
                continue;
            };
            end_to_end.push(micros(at.saturating_duration_since(push.started)));
            if let Some(scheduled) = push.scheduled {
                from_schedule.push(micros(at.saturating_duration_since(scheduled)));
            }
        }
    }
    if let Some(timeline) = timeline {
        timeline.write(&spec.name, &sent, &replies)?;
    }
    let drain_ms = match last_reply {
        Some(at) if at >= last_answer => ms(micros(at - last_answer)),
        Some(at) => -ms(micros(last_answer - at)),
        None => 0.0,
    };
    let cpu_us_per_event: BTreeMap<String, f64> = if ok > 0 {
        cpu_after
            .since(&cpu_before)
            .into_iter()
            .map(|(name, used)| (name, ratio(used, as_f64(ok))))
            .collect()
    } else {
        BTreeMap::new()
    };
    Ok(PhaseReport {
        spec: spec.clone(),
        pushes: u64::try_from(sent.len()).unwrap_or(u64::MAX),
        ok,
        errors,
        push_window: last_answer - start,
        reply_window: last_reply.map_or(Duration::ZERO, |at| at - start),
        drain_ms,
        replies: ctx.receipts.phase(index),
        missing,
        replies_to_failed,
        end_to_end: Latency::of(&mut end_to_end),
        from_schedule: Latency::of(&mut from_schedule),
        push_answer: Latency::of(&mut push_answer),
        cpu_us_per_event,
        memory_kib,
    })
}

/// The accounts that answer a text message by echoing it through the worker, as WeChat's
/// pushing side knows them.
fn echo_accounts(config: &Config) -> anyhow::Result<Vec<PushAccount>> {
    let mut accounts = Vec::new();
    for (index, account) in config.accounts.iter().enumerate() {
        let original_id = format!("gh_{index:012x}");
        let probe_content = content(0, 0);
        let probe =
            Inbound::now(&original_id, "oE2Eprobe00000000000000000000").text(1, &probe_content);
        let message = wechat::parse(probe.as_bytes(), &Limits::default())
            .context("parsing the probe message")?;
        let echoes = matches!(account.passive.decide(&message), Decision::Nothing)
            && matches!(
                account.custom.decide(&message),
                Decision::Reply(Reply::Text { content }) if content == probe_content
            );
        if echoes {
            accounts.push(push_account(account, original_id));
        }
    }
    Ok(accounts)
}

fn sim_listen(config: &Config) -> anyhow::Result<SocketAddr> {
    let base = config.wechat.api_base.trim_end_matches('/');
    base.strip_prefix("http://")
        .and_then(|addr| addr.parse().ok())
        .with_context(|| {
            format!("wechat.api_base `{base}` is not http://IP:PORT; pass --sim-listen")
        })
}

/// Token requests the simulator saw per AppID that had at least one push.
fn token_report(sim: &Sim, accounts: &[PushAccount], pushed: u64) -> Value {
    let pushed = usize::try_from(pushed).unwrap_or(usize::MAX);
    let mut appids: Vec<&str> = accounts
        .iter()
        .take(pushed)
        .map(|a| a.appid.as_str())
        .collect();
    appids.sort_unstable();
    appids.dedup();
    let mut histogram: BTreeMap<u64, u64> = BTreeMap::new();
    let mut offenders = Vec::new();
    for appid in &appids {
        let requests = sim.token_requests(appid);
        *histogram.entry(requests).or_insert(0) += 1;
        if requests != 1 && offenders.len() < 5 {
            offenders.push(json!({"appid": appid, "requests": requests}));
        }
    }
    let exactly_one = histogram.get(&1).copied().unwrap_or(0);
    json!({
        "appids": appids.len(),
        "exactly_one": exactly_one,
        "none": histogram.get(&0).copied().unwrap_or(0),
        "more": histogram.range(2..).map(|(_, n)| n).sum::<u64>(),
        "max": histogram.keys().next_back().copied().unwrap_or(0),
        "total": histogram.iter().map(|(requests, n)| requests * n).sum::<u64>(),
        "examples": offenders,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("starting the tokio runtime")
        .and_then(|runtime| runtime.block_on(run(args)));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("wxgate-e2e: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs every phase and prints the summary; false when an error, a missing reply or a
/// lagging feed was seen.
async fn run(args: Args) -> anyhow::Result<bool> {
    let config = Config::load(&args.config, |key| std::env::var(key).ok())
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    let mut accounts = echo_accounts(&config)?;
    if accounts.is_empty() {
        bail!(
            "no account in {} echoes text through custom rules (match = {{ msg_type = \"text\" }}, reply = {{ echo = true }}, and no passive rule for text)",
            args.config.display()
        );
    }
    if args.accounts > 0 {
        accounts.truncate(args.accounts);
    }
    let gateways = if args.gateways.is_empty() {
        vec![gateway_base(&config)]
    } else {
        args.gateways
            .iter()
            .map(|url| url.trim_end_matches('/').to_owned())
            .collect()
    };
    let gateway = gateways.join(" ");
    let mut timeline = args.timeline.as_deref().map(Timeline::create).transpose()?;
    let listen = match args.sim_listen {
        Some(addr) => addr,
        None => sim_listen(&config)?,
    };

    let mut sim_config = SimConfig {
        quotas: Quotas::unlimited(),
        call_log_capacity: SIM_CALL_LOG,
        ..SimConfig::default()
    };
    for account in &config.accounts {
        sim_config = sim_config.with_account(&account.appid, account.secret.expose());
    }
    let sim = wxgate_sim::start(sim_config, listen)
        .await
        .with_context(|| format!("starting the simulator on {listen}"))?;
    let receipts = Arc::new(Receipts::new());
    let collector = tokio::spawn(collect_receipts(sim.subscribe(), Arc::clone(&receipts)));

    let watched = Watched::new("e2e", &args.watch)?
        .with("gateway", args.gateway_pid)?
        .with("worker", args.worker_pid)?;
    let ctx = Arc::new(Ctx {
        client: PushClient::new().attempts(1).timeout(args.push_timeout),
        gateways: gateways.clone(),
        openids: (0..args.openids.max(1))
            .map(|n| format!("oE2Euser{n:020}"))
            .collect(),
        accounts,
        msg_ids: MsgIdGen::new(),
        next_seq: AtomicU64::new(0),
        receipts: Arc::clone(&receipts),
    });
    let mode = {
        let mut modes: Vec<&str> = ctx
            .accounts
            .iter()
            .map(|a| match a.mode {
                PushMode::Plain => "plain",
                PushMode::Compat => "compat",
                PushMode::Safe => "safe",
            })
            .collect();
        modes.sort_unstable();
        modes.dedup();
        modes.join("+")
    };
    if !args.json {
        println!(
            "wxgate-e2e: {} echo account(s) ({mode}) | gateway(s) {gateway} | simulator {}",
            ctx.accounts.len(),
            sim.base_url()
        );
    }

    let mut reports = Vec::new();
    for (index, spec) in args.phases.iter().enumerate() {
        let report = run_phase(&ctx, &watched, index, spec, &args, timeline.as_mut()).await?;
        if !args.json {
            report.print();
        }
        reports.push(report);
    }

    let pushed = ctx.next_seq.load(Ordering::Relaxed);
    let tokens = token_report(&sim, &ctx.accounts, pushed);
    let (lagged, foreign) = {
        let state = lock(&receipts.state);
        (state.lagged, state.foreign)
    };
    let healthy = lagged == 0
        && reports
            .iter()
            .all(|r| r.missing == 0 && r.errors.is_empty());
    if args.json {
        let summary = json!({
            "accounts": ctx.accounts.len(),
            "mode": mode,
            "gateway": gateways.first(),
            "gateways": gateways,
            "simulator": sim.base_url(),
            "phases": reports.iter().map(PhaseReport::json).collect::<Vec<_>>(),
            "tokens": tokens,
            "stable_token_calls": sim.call_count("/cgi-bin/stable_token"),
            "classic_token_calls": sim.call_count("/cgi-bin/token"),
            "custom_send_calls": sim.call_count(SEND_PATH),
            "feed_lagged": lagged,
            "foreign_sends": foreign,
        });
        println!("{summary}");
    } else {
        println!(
            "tokens: {} appid(s) pushed to; token requests per appid: {} exactly one, {} none, {} more (max {}); {} in all",
            tokens["appids"],
            tokens["exactly_one"],
            tokens["none"],
            tokens["more"],
            tokens["max"],
            tokens["total"]
        );
        println!(
            "simulator: {} custom/send calls, {} foreign, {} missed by this process's feed",
            sim.call_count(SEND_PATH),
            foreign,
            lagged
        );
    }
    collector.abort();
    sim.shutdown().await;
    Ok(healthy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_phase(text: &str, expected: Result<Load, ()>) {
        let parsed = text
            .parse::<PhaseSpec>()
            .map(|spec| spec.load)
            .map_err(|_| ());
        assert_eq!(parsed, expected, "{text}");
    }

    #[test]
    fn phases_parse() {
        check_phase(
            "steady=rate:1000:30s",
            Ok(Load::Rate {
                per_s: 1000.0,
                duration: Duration::from_secs(30),
            }),
        );
        check_phase(
            "max=closed:128:2m",
            Ok(Load::Closed {
                concurrency: 128,
                duration: Duration::from_secs(120),
            }),
        );
        check_phase("warmup=each:500", Ok(Load::Each { per_s: 500.0 }));
        check_phase("steady=rate:0:30s", Err(()));
        check_phase("max=closed:0:10s", Err(()));
        check_phase("rate:1000:30s", Err(()));
        check_phase("a.b=each:1", Err(()));
        check_phase("x=each:1:2s", Err(()));
    }

    #[test]
    fn default_phase_round_trips() {
        let spec = PhaseSpec::default();
        assert_eq!(spec.to_string().parse::<PhaseSpec>(), Ok(spec));
    }

    #[test]
    fn content_round_trips_and_rejects_others() {
        assert_eq!(parse_content(&content(3, 123_456)), Some((3, 123_456)));
        assert_eq!(parse_content("e2e 3"), None);
        assert_eq!(parse_content("e2e 3 4 5"), None);
        assert_eq!(parse_content("hello 3 4"), None);
    }

    #[test]
    fn timeline_has_one_line_per_push_in_unix_ms() {
        let dir = std::env::temp_dir().join(format!(
            "wxgate-e2e-timeline-{}-{:x}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.csv");
        let mut timeline = Timeline::create(&path).unwrap();
        let anchor = timeline.anchor;
        let at = |ms: u64| anchor + Duration::from_millis(ms);
        let sent = vec![
            Sent {
                seq: 7,
                gateway: 1,
                scheduled: Some(at(10)),
                started: at(11),
                answered: at(13),
                result: PushResult::Ok,
            },
            Sent {
                seq: 8,
                gateway: 0,
                scheduled: None,
                started: at(20),
                answered: at(25),
                result: PushResult::Status(503),
            },
        ];
        timeline
            .write("load", &sent, &[Some(at(40)), None])
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
        assert_eq!(lines[0].join(","), Timeline::HEADER);
        assert_eq!(lines.len(), 3);
        let ms = |field: &str| field.parse::<f64>().unwrap() - timeline.anchor_unix_ms;
        let first = &lines[1];
        assert_eq!(first[..3], ["load", "7", "1"]);
        assert!((ms(first[3]) - 10.0).abs() < 0.01);
        assert!((ms(first[5]) - 13.0).abs() < 0.01);
        assert!((ms(first[6]) - 40.0).abs() < 0.01);
        assert_eq!(first[7], "ok");
        let second = &lines[2];
        assert_eq!((second[3], second[6], second[7]), ("", "", "status_503"));
    }

    fn rand_suffix() -> u128 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut samples: Vec<u64> = (1..=100).rev().map(|n| n * 1000).collect();
        let latency = Latency::of(&mut samples).unwrap();
        assert_eq!(
            (latency.p50, latency.p90, latency.p99, latency.max),
            (50.0, 90.0, 99.0, 100.0)
        );
        assert!(Latency::of(&mut []).is_none());
    }
}

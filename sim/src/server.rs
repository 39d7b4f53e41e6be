//! The HTTP server of the simulated WeChat and the in-process handle
//! [`Sim`] that tests use to watch and steer it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::api::{self, Body, Ctx, Endpoint, Outcome};
use crate::calls::{Call, CallLog, LiveCall};
use crate::clock::SimClock;
use crate::config::{Interaction, SimConfig};
use crate::errcode::ApiError;
use crate::fault::{Fault, FaultKind, FaultSet};
use crate::qrcode::QrTicket;
use crate::state::State;
use crate::user::OAuthScope;
use crate::{control, query};

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 8192;
/// How long a connection may wait for (the rest of) request headers.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long shutdown waits for open connections to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Calls buffered per [`Sim::subscribe`] receiver before it lags.
pub const LIVE_CALLS_CAPACITY: usize = 16_384;

/// Why the simulator could not start or do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The bound address could not be read back.
    #[error("cannot read the bound address")]
    LocalAddr(#[source] std::io::Error),
    /// The AppID is not one of the simulator's accounts.
    #[error("unknown appid {0}")]
    UnknownAccount(String),
}

/// [`Sim::wait_for_calls`] gave up before enough calls arrived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timed out waiting for {wanted} calls to {path}; {seen} arrived")]
pub struct Timeout {
    /// The path waited for.
    pub path: String,
    /// How many calls were wanted.
    pub wanted: u64,
    /// How many had arrived at the deadline.
    pub seen: u64,
}

/// Handle to a running simulator: cheap to clone, shared by every clone.
///
/// Every method is synchronous and quick except [`Sim::wait_for_calls`]
/// and [`Sim::shutdown`]. Dropping the handles does not stop the server;
/// call [`Sim::shutdown`] (the runtime ending stops it too).
#[derive(Clone)]
pub struct Sim {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("addr", &self.inner.addr)
            .finish()
    }
}

pub(crate) struct Inner {
    addr: SocketAddr,
    max_body_bytes: usize,
    clock: SimClock,
    state: Mutex<State>,
    calls: Mutex<CallLog>,
    /// Created by the first [`Sim::subscribe`]; until then logging sends nothing.
    live: OnceLock<broadcast::Sender<LiveCall>>,
    faults: Mutex<FaultSet>,
    has_faults: AtomicBool,
    notify: Notify,
    shutdown: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// Locks a mutex; a panic elsewhere while it was held does not make the
/// simulator unusable (its state stays consistent per call).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts a simulated WeChat API server on `listen` (port 0 picks a free
/// port; see [`Sim::addr`]) and returns its handle once it accepts
/// connections.
///
/// Serves WeChat's API paths (`/cgi-bin/…`, `/sns/…`) and the control API
/// under `/_sim/`. Must be called inside a Tokio runtime.
pub async fn start(config: SimConfig, listen: SocketAddr) -> Result<Sim, SimError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| SimError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(SimError::LocalAddr)?;
    let (shutdown, stop) = watch::channel(false);
    let inner = Arc::new(Inner {
        addr,
        max_body_bytes: config.max_body_bytes,
        clock: SimClock::new(config.start_unix_s),
        calls: Mutex::new(CallLog::new(config.call_log_capacity)),
        live: OnceLock::new(),
        state: Mutex::new(State::new(config)),
        faults: Mutex::new(FaultSet::default()),
        has_faults: AtomicBool::new(false),
        notify: Notify::new(),
        shutdown,
        task: Mutex::new(None),
    });
    let task = tokio::spawn(accept_loop(listener, Arc::clone(&inner), stop));
    *lock(&inner.task) = Some(task);
    tracing::info!(%addr, "wechat simulator listening");
    Ok(Sim { inner })
}

impl Sim {
    /// The address the server is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `http://IP:PORT` to use as WeChat's API base; an unspecified listen
    /// address (`0.0.0.0`, `::`) is given as loopback.
    pub fn base_url(&self) -> String {
        let addr = self.inner.addr;
        let ip = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, addr.port()))
    }

    /// Every call still in the log, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.inner.calls).all()
    }

    /// The calls to `path` still in the log, oldest first.
    pub fn calls_to(&self, path: &str) -> Vec<Call> {
        lock(&self.inner.calls).to_path(path)
    }

    /// How many calls `path` has had since start (never reset, not bounded
    /// by the log's capacity).
    pub fn call_count(&self, path: &str) -> u64 {
        lock(&self.inner.calls).count(path)
    }

    /// Every call logged from now on, as it is logged, with the real time
    /// its request arrived ([`LiveCall::received_at`]): what a benchmark
    /// needs to time replies more finely than [`Call::at_ms`], and without
    /// the log's capacity limit.
    ///
    /// Calls come in `seq` order. Each receiver buffers
    /// [`LIVE_CALLS_CAPACITY`] calls; one further behind gets
    /// [`broadcast::error::RecvError::Lagged`] with the number it missed.
    /// Nothing is copied while no receiver exists.
    pub fn subscribe(&self) -> broadcast::Receiver<LiveCall> {
        self.inner
            .live
            .get_or_init(|| broadcast::channel(LIVE_CALLS_CAPACITY).0)
            .subscribe()
    }

    /// Waits until `path` has had at least `n` calls since start, then
    /// returns the calls to it still in the log. Wakes on each logged call,
    /// no polling; gives up after `within`. Cancel-safe.
    pub async fn wait_for_calls(
        &self,
        path: &str,
        n: u64,
        within: Duration,
    ) -> Result<Vec<Call>, Timeout> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            // Registered before checking, so a call logged in between wakes us.
            notified.as_mut().enable();
            let seen = self.call_count(path);
            if seen >= n {
                return Ok(self.calls_to(path));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Timeout {
                    path: path.to_owned(),
                    wanted: n,
                    seen: self.call_count(path),
                });
            }
        }
    }

    /// Adds a fault for calls to `path` (or [`crate::ANY_PATH`]); faults
    /// apply in the order injected.
    pub fn inject(&self, path: &str, fault: Fault) {
        let mut faults = lock(&self.inner.faults);
        faults.add(path.to_owned(), fault);
        self.inner.has_faults.store(true, Ordering::Release);
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        let mut faults = lock(&self.inner.faults);
        faults.clear();
        self.inner.has_faults.store(false, Ordering::Release);
    }

    /// Makes every currently valid access token of `appid` invalid: the next
    /// API call with one answers `40001`. Returns how many there were.
    pub fn invalidate_tokens(&self, appid: &str) -> usize {
        let now = self.inner.clock.now_ms();
        lock(&self.inner.state).invalidate_tokens(appid, now)
    }

    /// Reproduces WeChat rejecting a token it still hands out: API calls
    /// with any current token of `appid` answer `40001`, yet
    /// `/cgi-bin/stable_token` in normal mode keeps returning the current
    /// stable token until it is renewed or force-refreshed (docs/protocol.md §5.5,
    /// item 5). Returns how many tokens were marked.
    pub fn reject_tokens(&self, appid: &str) -> usize {
        let now = self.inner.clock.now_ms();
        lock(&self.inner.state).reject_tokens(appid, now)
    }

    /// Makes every currently valid access token of `appid` expire now: the
    /// next API call with one answers `42001`. Returns how many there were.
    pub fn expire_tokens(&self, appid: &str) -> usize {
        let now = self.inner.clock.now_ms();
        lock(&self.inner.state).expire_tokens(appid, now)
    }

    /// Requests to `/cgi-bin/token` and `/cgi-bin/stable_token` naming
    /// `appid`, whatever they were answered (faults included).
    pub fn token_requests(&self, appid: &str) -> u64 {
        lock(&self.inner.state)
            .token_requests
            .get(appid)
            .copied()
            .unwrap_or(0)
    }

    /// Moves the simulated clock forward (tokens, windows, codes, quotas).
    pub fn advance_clock(&self, by: Duration) {
        self.inner.clock.advance(by);
    }

    /// The simulated Unix time in milliseconds.
    pub fn now_unix_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// Adds (or re-keys) an account at run time.
    pub fn add_account(&self, appid: &str, secret: &str) {
        lock(&self.inner.state).add_account(appid, secret);
    }

    /// Makes `openid` a follower of `appid` without opening a window (a
    /// custom message then answers `45015` under the strict policy).
    pub fn add_user(&self, appid: &str, openid: &str) -> Result<(), SimError> {
        let now = self.inner.clock.now_ms();
        if lock(&self.inner.state).add_user(appid, openid, now) {
            Ok(())
        } else {
            Err(SimError::UnknownAccount(appid.to_owned()))
        }
    }

    /// Records that `openid` interacted with `appid` now: the user follows
    /// and a new window opens per [`crate::WindowRules`] (or, for
    /// [`Interaction::Unfollow`], the user unfollows).
    pub fn record_interaction(
        &self,
        appid: &str,
        openid: &str,
        interaction: Interaction,
    ) -> Result<(), SimError> {
        let now = self.inner.clock.now_ms();
        if lock(&self.inner.state).record_interaction(appid, openid, interaction, now) {
            Ok(())
        } else {
            Err(SimError::UnknownAccount(appid.to_owned()))
        }
    }

    /// Mints a single-use OAuth `code` for `openid`, as the authorize page
    /// would; exchange it at `/sns/oauth2/access_token`.
    pub fn mint_oauth_code(
        &self,
        appid: &str,
        openid: &str,
        scope: OAuthScope,
    ) -> Result<String, SimError> {
        let now = self.inner.clock.now_ms();
        crate::user::mint_code(&mut lock(&self.inner.state), appid, openid, scope, now)
            .ok_or_else(|| SimError::UnknownAccount(appid.to_owned()))
    }

    /// The QR ticket issued as `ticket`, if any (expired ones included).
    pub fn qr_ticket(&self, ticket: &str) -> Option<QrTicket> {
        lock(&self.inner.state).qr_tickets.get(ticket).cloned()
    }

    /// A file `appid` uploaded: a temporary medium by its `media_id` (or `thumb_media_id`), or
    /// an article image by its URL.
    pub fn media(&self, appid: &str, id: &str) -> Option<crate::UploadedMedia> {
        lock(&self.inner.state)
            .accounts
            .get(appid)
            .and_then(|account| account.media.get(id))
            .cloned()
    }

    /// The default menu's `button` array of `appid`, if one was created.
    pub fn menu(&self, appid: &str) -> Option<Value> {
        lock(&self.inner.state)
            .accounts
            .get(appid)
            .and_then(|account| account.menu.as_ref())
            .map(|menu| menu.button.clone())
    }

    /// Stops accepting, lets open connections finish (up to 5 s), and
    /// returns when the server is down. Later calls return at once.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        let task = lock(&self.inner.task).take();
        if let Some(task) = task
            && let Err(error) = task.await
        {
            tracing::warn!(%error, "simulator server task failed");
        }
    }

    /// The last `limit` calls, optionally only to `path`, oldest first.
    pub(crate) fn recent_calls(&self, path: Option<&str>, limit: usize) -> Vec<Call> {
        lock(&self.inner.calls).last(path, limit)
    }

    /// Calls per path since start.
    pub(crate) fn call_counts(&self) -> std::collections::HashMap<String, u64> {
        lock(&self.inner.calls).counts()
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn log(&self, call: Call, received_at: Instant) {
        let live = self.live.get().filter(|live| live.receiver_count() > 0);
        let copy = live.map(|_| call.clone());
        {
            let mut calls = lock(&self.calls);
            let seq = calls.push(call);
            // Sent under the lock, so subscribers see calls in `seq` order.
            if let (Some(live), Some(mut copy)) = (live, copy) {
                copy.seq = seq;
                // An error only means every receiver has gone meanwhile.
                let _ = live.send(LiveCall {
                    received_at,
                    call: copy,
                });
            }
        }
        self.notify.notify_waiters();
    }
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        match accepted {
            Ok((stream, _)) => {
                // Small JSON answers: send them at once.
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%error, "set_nodelay failed");
                }
                connections.spawn(serve_connection(
                    stream,
                    Arc::clone(&inner),
                    stop.clone(),
                    permit,
                ));
            }
            Err(error) => tracing::warn!(%error, "accept failed"),
        }
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        tracing::warn!("simulator drain deadline passed");
    }
    tracing::info!("wechat simulator stopped");
}

async fn serve_connection(
    stream: TcpStream,
    inner: Arc<Inner>,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let service = service_fn(move |request| {
        let inner = Arc::clone(&inner);
        async move { handle(inner, request).await }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        // Also the keep-alive idle limit: longer than the usual client pool
        // idle timeout (90 s), so clients close idle connections first and
        // never reuse one the simulator is closing.
        .header_read_timeout(IDLE_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let stopping = async {
        // An error means the sender is gone: stop as well.
        let _ = stop.wait_for(|stop| *stop).await;
    };
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "simulator connection ended with an error");
            }
        }
        () = stopping => {
            connection.as_mut().graceful_shutdown();
            if let Err(error) = connection.await {
                tracing::debug!(%error, "simulator connection ended with an error");
            }
        }
    }
}

/// Returned by the service to make hyper close the connection unanswered.
#[derive(Debug, thiserror::Error)]
#[error("connection dropped by an injected fault")]
struct DroppedByFault;

type HttpResponse = Response<Full<Bytes>>;

async fn handle(
    inner: Arc<Inner>,
    request: Request<Incoming>,
) -> Result<HttpResponse, DroppedByFault> {
    let mut late_answer = Duration::ZERO;
    let answer = carry_out(inner, request, &mut late_answer).await;
    // The call has taken effect and is logged: a client giving up now (hyper then drops this
    // future) changes nothing, as with WeChat answering after the caller's timeout.
    if !late_answer.is_zero() {
        tokio::time::sleep(late_answer).await;
    }
    answer
}

/// Handles one request up to its answer; sets `late_answer` to how long the answer is to be
/// held back afterwards.
async fn carry_out(
    inner: Arc<Inner>,
    request: Request<Incoming>,
    late_answer: &mut Duration,
) -> Result<HttpResponse, DroppedByFault> {
    let received_at = Instant::now();
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let query = query::parse(parts.uri.query().unwrap_or(""));
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let raw = match Limited::new(body, inner.max_body_bytes).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(text_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body too large",
            ));
        }
    };
    if path == "/_sim" || path.starts_with("/_sim/") {
        let sim = Sim { inner };
        return Ok(control::handle(&sim, &parts.method, &path, &query, &raw));
    }
    let body = Body::parse(raw);
    let endpoint = Endpoint::from_path(&path);
    if matches!(endpoint, Some(Endpoint::Token | Endpoint::StableToken))
        && let Some(appid) = named_appid(endpoint, &query, &body)
    {
        *inner.state().token_requests.entry(appid).or_insert(0) += 1;
    }

    let verdict = if inner.has_faults.load(Ordering::Acquire) {
        let mut faults = lock(&inner.faults);
        let verdict = faults.evaluate(&path);
        if faults.is_empty() {
            // Changed under the lock, so a concurrent inject cannot be lost.
            inner.has_faults.store(false, Ordering::Release);
        }
        verdict
    } else {
        Default::default()
    };
    if !verdict.latency.is_zero() {
        tokio::time::sleep(verdict.latency).await;
    }
    *late_answer = verdict.late_answer;

    let now_ms = inner.clock.now_ms();
    let mut record = Record {
        method: &parts.method,
        content_type: content_type.as_deref(),
        path,
        query,
        appid: None,
        at_ms: now_ms,
        answer_delay_ms: u64::try_from(verdict.late_answer.as_millis()).unwrap_or(u64::MAX),
    };
    match verdict.terminal {
        Some(FaultKind::Errcode { errcode, errmsg }) => {
            record.appid = call_appid(&inner.state(), endpoint, &record.query, &body);
            let error = ApiError {
                errcode,
                errmsg,
                extra: None,
            };
            let json = error.to_json();
            inner.log(record.finish(body, Some(errcode), 200), received_at);
            return Ok(json_response(&json));
        }
        Some(FaultKind::Status(status)) => {
            record.appid = call_appid(&inner.state(), endpoint, &record.query, &body);
            inner.log(record.finish(body, None, status), received_at);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Ok(text_response(status, "simulated failure"));
        }
        Some(FaultKind::Drop) => {
            record.appid = call_appid(&inner.state(), endpoint, &record.query, &body);
            inner.log(record.finish(body, None, 0), received_at);
            return Err(DroppedByFault);
        }
        Some(FaultKind::Latency(_) | FaultKind::LateAnswer(_)) | None => {}
    }

    let Some(endpoint) = endpoint else {
        inner.log(record.finish(body, None, 404), received_at);
        return Ok(text_response(StatusCode::NOT_FOUND, "not found"));
    };
    let outcome = {
        let mut state = inner.state();
        let ctx = Ctx {
            method: &parts.method,
            query: &record.query,
            body: &body,
            content_type: content_type.as_deref(),
            now_ms,
        };
        let outcome = api::handle(&mut state, endpoint, &ctx);
        record.appid = call_appid(&state, Some(endpoint), &record.query, &body);
        outcome
    };
    let errcode = api::answered_errcode(&outcome);
    let response = match &outcome {
        Outcome::Json(json) => json_response(json),
        Outcome::Image(image) => {
            let mut response = Response::new(Full::new(image.clone()));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("image/jpg"));
            response
                .headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("max-age=604800"));
            response
        }
        Outcome::NotFound => text_response(StatusCode::NOT_FOUND, ""),
    };
    let status = response.status().as_u16();
    inner.log(record.finish(body, errcode, status), received_at);
    Ok(response)
}

/// The parts of a call log entry known before the answer.
struct Record<'a> {
    method: &'a Method,
    content_type: Option<&'a str>,
    path: String,
    query: Vec<(String, String)>,
    appid: Option<String>,
    at_ms: i64,
    answer_delay_ms: u64,
}

impl Record<'_> {
    fn finish(self, body: Body, errcode: Option<i64>, http_status: u16) -> Call {
        let access_token = self
            .query
            .iter()
            .find(|(key, _)| key == "access_token")
            .map(|(_, value)| value.clone());
        let query = self
            .query
            .into_iter()
            .map(|(key, value)| {
                let value = if key == "secret" {
                    "[redacted]".to_owned()
                } else {
                    value
                };
                (key, value)
            })
            .collect();
        let multipart = self
            .content_type
            .filter(|content_type| crate::media::is_multipart(content_type));
        let body = match body.json {
            // A file upload: what was uploaded, never the bytes.
            _ if multipart.is_some() => multipart
                .and_then(|content_type| crate::media::summary(content_type, &body.raw))
                .unwrap_or_else(|| Value::String("[malformed multipart]".to_owned())),
            None => Value::Null,
            Some(Ok(mut json)) => {
                if let Some(secret) = json.get_mut("secret") {
                    *secret = Value::String("[redacted]".to_owned());
                }
                json
            }
            Some(Err(())) => Value::String(String::from_utf8_lossy(&body.raw).into_owned()),
        };
        Call {
            seq: 0,
            method: self.method.as_str().to_owned(),
            path: self.path,
            query,
            appid: self.appid,
            access_token,
            body,
            errcode,
            http_status,
            at_ms: self.at_ms,
            answer_delay_ms: self.answer_delay_ms,
        }
    }
}

/// The AppID a token or OAuth call names in its query or body.
fn named_appid(
    endpoint: Option<Endpoint>,
    query: &[(String, String)],
    body: &Body,
) -> Option<String> {
    let from_query = || {
        query
            .iter()
            .find(|(key, _)| key == "appid")
            .map(|(_, value)| value.clone())
    };
    match endpoint {
        Some(Endpoint::StableToken) => body
            .json
            .as_ref()
            .and_then(|json| json.as_ref().ok())
            .and_then(|json| json.get("appid"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        Some(endpoint) if endpoint.names_appid() => from_query(),
        _ => None,
    }
}

/// The AppID to log for a call: named, or the owner of its token.
fn call_appid(
    state: &State,
    endpoint: Option<Endpoint>,
    query: &[(String, String)],
    body: &Body,
) -> Option<String> {
    if let Some(appid) = named_appid(endpoint, query, body) {
        return Some(appid);
    }
    let token = query
        .iter()
        .find(|(key, _)| key == "access_token")
        .map(|(_, value)| value.as_str())?;
    match endpoint {
        Some(Endpoint::SnsUserInfo) => state.web_tokens.get(token).map(|web| web.appid.clone()),
        _ => state.tokens.get(token).map(|record| record.appid.clone()),
    }
}

pub(crate) fn json_response(json: &Value) -> HttpResponse {
    // Serialising a `Value` cannot fail (all keys are strings).
    let bytes = serde_json::to_vec(json).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; encoding=utf-8"),
    );
    response
}

pub(crate) fn text_response(status: StatusCode, text: &'static str) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

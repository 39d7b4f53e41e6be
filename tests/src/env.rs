//! One test's world: a gateway in its own namespace, served on a free port, with three
//! accounts (plain, compat, safe), and the connections to check and clean up after it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Once};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::join_all;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lapin::options::{BasicConsumeOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wx_gateway::ServeError;
use wxgate_core::Config;
use wxgate_sim::{Inbound, MsgIdGen, PushAccount, PushClient, PushMode, PushOutcome};

use crate::cleanup::{on_own_runtime, purge_redis};
use crate::consumer::{EventConsumer, ReceivedEvent};
use crate::poll::{bounded, eventually};

/// Redis when `WXGATE__REDIS__URL` is not set (docker-compose's port).
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";
/// RabbitMQ when `WXGATE__RABBITMQ__URL` is not set (docker-compose's port).
pub const DEFAULT_RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How long a gateway may take to become ready, and a service to answer a connect.
const STARTUP: Duration = Duration::from_secs(20);
/// How long one expected event, answer or clean-up step may take.
const WAIT: Duration = Duration::from_secs(10);
/// How long deleting a namespace may take: a busy broker with a backlog in another namespace
/// has taken over 10 s to delete the quorum queues of 34 tests at once.
const CLEANUP: Duration = Duration::from_secs(120);
/// Bound on each broker operation of the clean-up: a stuck one fails alone, naming itself,
/// instead of eating the whole [`CLEANUP`].
const CLEANUP_OPERATION: Duration = Duration::from_secs(30);
/// The EncodingAESKey of the compat account.
const COMPAT_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
/// The EncodingAESKey of the safe account.
const SAFE_KEY: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";

/// The Redis the tests use: `WXGATE__REDIS__URL`, else [`DEFAULT_REDIS_URL`].
pub fn redis_url() -> String {
    std::env::var("WXGATE__REDIS__URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned())
}

/// The RabbitMQ the tests use: `WXGATE__RABBITMQ__URL`, else [`DEFAULT_RABBITMQ_URL`].
pub fn rabbitmq_url() -> String {
    std::env::var("WXGATE__RABBITMQ__URL").unwrap_or_else(|_| DEFAULT_RABBITMQ_URL.to_owned())
}

/// What a test changes in the standard configuration.
#[derive(Debug, Clone, Default)]
pub struct Options {
    gateway: Vec<String>,
    accounts: String,
    redis_url: Option<String>,
    rabbitmq_url: Option<String>,
}

impl Options {
    /// The standard configuration.
    pub fn new() -> Options {
        Options::default()
    }

    /// Adds a `key = value` line to `[gateway]` (e.g. `max_body_bytes = 1024`).
    pub fn gateway(mut self, line: &str) -> Options {
        self.gateway.push(line.to_owned());
        self
    }

    /// Adds `[[accounts]]` tables (TOML text) after the three standard accounts.
    pub fn accounts(mut self, toml: &str) -> Options {
        self.accounts.push_str(toml);
        self.accounts.push('\n');
        self
    }

    /// The Redis URL the gateway gets (a [`crate::TcpProxy`], say); checks and clean-up
    /// still use the real one.
    pub fn redis_url(mut self, url: &str) -> Options {
        self.redis_url = Some(url.to_owned());
        self
    }

    /// The RabbitMQ URL the gateway gets (a [`crate::TcpProxy`], say); the test consumer,
    /// checks and clean-up still use the real one.
    pub fn rabbitmq_url(mut self, url: &str) -> Options {
        self.rabbitmq_url = Some(url.to_owned());
        self
    }
}

/// A running gateway in namespace `t{16 hex}` with the accounts `plain`, `compat` and `safe`
/// (each with the passive rule `ping` → `pong`), ready (`/readyz` 200) when returned.
///
/// Call [`TestEnv::cleanup`] at the end of the test. If the test panics first, dropping the
/// value does the same clean-up on a thread of its own, as well as it can.
pub struct TestEnv {
    /// The namespace: every RabbitMQ name starts with `{ns}.`, every Redis key with `{ns}:`.
    pub ns: String,
    /// Where the gateway listens.
    pub addr: SocketAddr,
    /// The gateway's configuration.
    pub config: Arc<Config>,
    /// The plain-mode account `plain`, as WeChat knows it.
    pub plain: PushAccount,
    /// The compat-mode account `compat`.
    pub compat: PushAccount,
    /// The safe-mode account `safe`.
    pub safe: PushAccount,
    /// Pushes like WeChat, but once (no retries), with a 10 s timeout.
    pub pusher: PushClient,
    /// `MsgId`s for this test's pushes.
    pub msg_ids: MsgIdGen,
    redis_url: String,
    rabbitmq_url: String,
    redis: redis::aio::MultiplexedConnection,
    amqp: Connection,
    http: Client<HttpConnector, Full<Bytes>>,
    shutdown: CancellationToken,
    server: Option<JoinHandle<Result<(), ServeError>>>,
    cleaned: bool,
}

fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,wx_gateway=info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

fn push_account(
    id: &str,
    appid: &str,
    token: &str,
    key: Option<&str>,
    mode: PushMode,
) -> PushAccount {
    PushAccount {
        id: id.to_owned(),
        appid: appid.to_owned(),
        token: token.to_owned(),
        encoding_aes_key: key.map(str::to_owned),
        mode,
        original_id: format!("gh_{id}0000000"),
    }
}

fn account_toml(account: &PushAccount, mode: &str) -> String {
    let key = account
        .encoding_aes_key
        .as_deref()
        .map(|k| format!("encoding_aes_key = \"{k}\"\n"))
        .unwrap_or_default();
    format!(
        r#"
[[accounts]]
id = "{id}"
appid = "{appid}"
secret = "secret-{id}"
token = "{token}"
{key}mode = "{mode}"

[[accounts.passive]]
match = {{ msg_type = "text", content = "ping" }}
reply = {{ text = "pong" }}
"#,
        id = account.id,
        appid = account.appid,
        token = account.token,
    )
}

async fn connect_redis(url: &str) -> redis::aio::MultiplexedConnection {
    let how = "start it with `docker compose up -d redis` or \
               `redis-server --daemonize yes --port 6379 --save ''`, or point WXGATE__REDIS__URL at one";
    let client = redis::Client::open(url)
        .unwrap_or_else(|e| panic!("WXGATE__REDIS__URL {url:?} is not a Redis URL: {e}"));
    match tokio::time::timeout(STARTUP, client.get_multiplexed_async_connection()).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => panic!("Redis at {url} is not reachable ({e}); {how}"),
        Err(_) => panic!("Redis at {url} did not answer within {STARTUP:?}; {how}"),
    }
}

async fn connect_rabbitmq(url: &str) -> Connection {
    let how = "start it with `docker compose up -d rabbitmq` or `rabbitmq-server -detached`, \
               or point WXGATE__RABBITMQ__URL at one";
    match tokio::time::timeout(
        STARTUP,
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => panic!("RabbitMQ at {url} is not reachable ({e}); {how}"),
        Err(_) => panic!("RabbitMQ at {url} did not answer within {STARTUP:?}; {how}"),
    }
}

impl TestEnv {
    /// A gateway with the standard configuration.
    pub async fn start() -> TestEnv {
        TestEnv::with(Options::new()).await
    }

    /// A gateway with the standard configuration changed by `options`.
    pub async fn with(options: Options) -> TestEnv {
        init_tracing();
        let ns = format!("t{:016x}", rand::random::<u64>());
        let redis_url = redis_url();
        let rabbitmq_url = rabbitmq_url();
        let redis = connect_redis(&redis_url).await;
        let amqp = connect_rabbitmq(&rabbitmq_url).await;

        let plain = push_account(
            "plain",
            "wx1111111111111111",
            "plaintoken1",
            None,
            PushMode::Plain,
        );
        let compat = push_account(
            "compat",
            "wx2222222222222222",
            "compattoken2",
            Some(COMPAT_KEY),
            PushMode::Compat,
        );
        let safe = push_account(
            "safe",
            "wx3333333333333333",
            "safetoken3",
            Some(SAFE_KEY),
            PushMode::Safe,
        );
        let toml = format!(
            r#"namespace = "{ns}"

[redis]
url = "{redis}"

[rabbitmq]
url = "{rabbit}"
queue_type = "classic"

[gateway]
listen = "127.0.0.1:0"
{gateway}
{plain}{compat}{safe}{extra}"#,
            redis = options.redis_url.as_deref().unwrap_or(&redis_url),
            rabbit = options.rabbitmq_url.as_deref().unwrap_or(&rabbitmq_url),
            gateway = options.gateway.join("\n"),
            plain = account_toml(&plain, "plain"),
            compat = account_toml(&compat, "compat"),
            safe = account_toml(&safe, "safe"),
            extra = options.accounts,
        );
        // No environment overrides: the URLs above are the point (a proxy, say).
        let config = Arc::new(
            Config::from_toml(&toml, |_| None)
                .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{toml}")),
        );

        // As wx-gateway binds: tokio's `bind` asks for a backlog of 128 only.
        let listener = wxgate_serve::bind(
            "127.0.0.1:0".parse().expect("a socket address"),
            config.gateway.listen_backlog,
        )
        .expect("a free local port for the gateway");
        let addr = listener.local_addr().expect("the gateway's address");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(wx_gateway::serve(
            Arc::clone(&config),
            listener,
            shutdown.clone(),
        ));
        let http = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let mut env = TestEnv {
            ns,
            addr,
            config,
            plain,
            compat,
            safe,
            pusher: PushClient::new().attempts(1).timeout(WAIT),
            msg_ids: MsgIdGen::new(),
            redis_url,
            rabbitmq_url,
            redis,
            amqp,
            http,
            shutdown,
            server: Some(server),
            cleaned: false,
        };
        env.wait_ready().await;
        env
    }

    /// Waits until `/readyz` answers 200; panics if the gateway stops or the deadline passes.
    pub async fn wait_ready(&mut self) {
        if let Some(server) = &self.server
            && server.is_finished()
            && let Some(server) = self.server.take()
        {
            panic!("the gateway stopped: {:?}", server.await);
        }
        self.wait_readyz(200, STARTUP, "/readyz to answer 200")
            .await;
    }

    /// The callback base URL, `http://{addr}/wx`.
    pub fn base(&self) -> String {
        format!("http://{}/wx", self.addr)
    }

    /// `{ns}.events`.
    pub fn exchange(&self) -> String {
        format!("{}.events", self.ns)
    }

    /// `{ns}.worker`.
    pub fn worker_queue(&self) -> String {
        format!("{}.worker", self.ns)
    }

    /// `{ns}:dedup:{event_id}`.
    pub fn dedup_key(&self, event_id: &str) -> String {
        format!("{}:dedup:{event_id}", self.ns)
    }

    /// Pushes from a new user (a random OpenID) to `account`, now.
    pub fn inbound(&self, account: &PushAccount) -> Inbound {
        Inbound::now(account.original_id.clone(), wxgate_sim::random_openid())
    }

    /// A text message `content` from a new user to `account`, with a fresh `MsgId`.
    pub fn text(&self, account: &PushAccount, content: &str) -> String {
        self.inbound(account).text(self.msg_ids.next_id(), content)
    }

    /// Pushes `xml` to `account` once, as WeChat would; panics only when the push cannot be
    /// attempted at all (delivery failures are in the outcome).
    pub async fn push(&self, account: &PushAccount, xml: &str) -> PushOutcome {
        self.pusher
            .push(&self.base(), account, xml)
            .await
            .unwrap_or_else(|e| panic!("push to {} not attempted: {e}", account.id))
    }

    async fn request(&self, method: Method, path_and_query: &str, body: Bytes) -> (u16, Bytes) {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path_and_query}", self.addr))
            .header(http::header::CONTENT_TYPE, "text/xml")
            .body(Full::new(body))
            .expect("a valid request");
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        match tokio::time::timeout(WAIT, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => panic!("{path_and_query}: no answer: {e}"),
            Err(_) => panic!("{path_and_query}: no answer within {WAIT:?}"),
        }
    }

    /// `GET {path_and_query}` on the gateway: status and body.
    pub async fn get(&self, path_and_query: &str) -> (u16, Bytes) {
        self.request(Method::GET, path_and_query, Bytes::new())
            .await
    }

    /// `POST {path_and_query}` on the gateway with `body`: status and body.
    pub async fn post(&self, path_and_query: &str, body: impl Into<Bytes>) -> (u16, Bytes) {
        self.request(Method::POST, path_and_query, body.into())
            .await
    }

    /// The status of `GET /readyz`.
    pub async fn readyz(&self) -> u16 {
        self.get("/readyz").await.0
    }

    /// Polls `/readyz` until it answers `status`, within `within`; `what` names the wait in
    /// the panic message.
    pub async fn wait_readyz(&self, status: u16, within: Duration, what: &str) {
        eventually(within, what, || async move {
            match self.readyz().await {
                s if s == status => Ok(()),
                other => Err(other),
            }
        })
        .await;
    }

    /// The value of the unlabelled sample `name` in `/metrics` (e.g.
    /// `wxgate_gateway_dedup_hits_total`), if present.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "/metrics");
        String::from_utf8_lossy(&body).lines().find_map(|line| {
            let (sample, value) = line.split_once(' ')?;
            (sample == name).then(|| value.trim().parse().ok())?
        })
    }

    /// A consumer of every event published from now on in this namespace.
    pub async fn consumer(&self) -> EventConsumer {
        EventConsumer::bind(&self.amqp, &self.exchange()).await
    }

    /// Pushes a fresh text message `marker` to the plain account and waits for its event;
    /// returns the events published before it. Since a refused or deduplicated callback is
    /// answered only after whatever it published is confirmed, an empty result proves that
    /// every callback answered before this call published nothing.
    pub async fn marker(&self, events: &mut EventConsumer) -> Vec<ReceivedEvent> {
        let xml = self.text(&self.plain, "marker");
        let outcome = self.push(&self.plain, &xml).await;
        assert_eq!(outcome.statuses, [200], "the marker push must be accepted");
        let (before, _) = events
            .until(&crate::event_id_of(&self.plain.id, &xml), WAIT)
            .await;
        before
    }

    /// `GET key` on the real Redis.
    pub async fn redis_get(&self, key: &str) -> Option<Vec<u8>> {
        let mut redis = self.redis.clone();
        bounded(
            WAIT,
            "Redis GET",
            redis::cmd("GET").arg(key).query_async(&mut redis),
        )
        .await
        .expect("Redis GET")
    }

    /// Polls `GET key` until it holds an answer record (`A…`) and returns it; the gateway
    /// records answers just after sending them. Panics after [`WAIT`].
    pub async fn stored_answer(&self, key: &str) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let value = self.redis_get(key).await;
            if let Some(value) = value.filter(|v| v.starts_with(b"A")) {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no answer recorded under {key} within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `SET key value PX ttl` on the real Redis (to stand in for another gateway).
    pub async fn redis_set(&self, key: &str, value: &[u8], ttl: Duration) {
        let mut redis = self.redis.clone();
        let mut set = redis::cmd("SET");
        set.arg(key)
            .arg(value)
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        bounded(WAIT, "Redis SET", set.query_async::<()>(&mut redis))
            .await
            .expect("Redis SET");
    }

    /// `PTTL key` on the real Redis (-2: no key, -1: no expiry).
    pub async fn redis_pttl(&self, key: &str) -> i64 {
        let mut redis = self.redis.clone();
        bounded(
            WAIT,
            "Redis PTTL",
            redis::cmd("PTTL").arg(key).query_async(&mut redis),
        )
        .await
        .expect("Redis PTTL")
    }

    /// Consumes `{ns}.worker` (taking the messages off it) until every id in `want` has
    /// been seen as a `message_id`, or `within` passes; returns the ids seen.
    pub async fn worker_queue_ids(
        &self,
        want: &HashSet<String>,
        within: Duration,
    ) -> HashSet<String> {
        let (channel, mut consumer) = bounded(WAIT, "consuming the worker queue", async {
            let channel = self
                .amqp
                .create_channel()
                .await
                .expect("a channel to read the worker queue");
            let consumer = channel
                .basic_consume(
                    ShortString::from(self.worker_queue().as_str()),
                    ShortString::from(""),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("the worker queue can be consumed");
            (channel, consumer)
        })
        .await;
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = HashSet::new();
        while !want.is_subset(&seen) {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Err(_) => break,
                Ok(Some(Ok(delivery))) => {
                    if let Some(id) = delivery.properties.message_id() {
                        seen.insert(id.as_str().to_owned());
                    }
                }
                Ok(Some(Err(e))) => panic!("reading the worker queue failed: {e}"),
                Ok(None) => panic!("the worker queue consumer ended"),
            }
        }
        let _ = tokio::time::timeout(WAIT, channel.close(200, ShortString::from("done"))).await;
        seen
    }

    /// Cancels the gateway's shutdown token (as SIGTERM does).
    pub fn cancel(&self) {
        self.shutdown.cancel();
    }

    /// Waits for the gateway's `serve` to return, at most `within`; panics when it does not.
    pub async fn stopped(&mut self, within: Duration) -> Result<(), ServeError> {
        let Some(server) = self.server.take() else {
            return Ok(());
        };
        match tokio::time::timeout(within, server).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => panic!("the gateway task failed: {e}"),
            Err(_) => panic!("the gateway did not stop within {within:?} of the cancel"),
        }
    }

    /// Stops the gateway, then deletes this namespace's queues, exchange and Redis keys.
    /// Panics when the gateway does not stop or something cannot be deleted.
    pub async fn cleanup(mut self) {
        self.cancel();
        let stopped = self.stopped(WAIT + WAIT).await;
        let _ =
            tokio::time::timeout(WAIT, self.amqp.close(200, ShortString::from("test done"))).await;
        let purged = tokio::time::timeout(
            CLEANUP,
            remove_namespace(
                &self.ns,
                &self.redis_url,
                &self.rabbitmq_url,
                self.config.worker.retry_delays.len(),
            ),
        )
        .await
        .unwrap_or_else(|_| Err(format!("not done within {CLEANUP:?}")));
        self.cleaned = true;
        stopped.unwrap_or_else(|e| panic!("the gateway stopped with an error: {e}"));
        purged.unwrap_or_else(|e| panic!("cleanup of namespace {}: {e}", self.ns));
    }
}

impl Drop for TestEnv {
    /// Clean-up when the test ended without [`TestEnv::cleanup`] (a failed assertion): on a
    /// thread with its own runtime, since this one may be unwinding; errors are ignored.
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        self.shutdown.cancel();
        let ns = self.ns.clone();
        let redis_url = self.redis_url.clone();
        let rabbitmq_url = self.rabbitmq_url.clone();
        let retry_queues = self.config.worker.retry_delays.len();
        on_own_runtime(async move {
            let _ = tokio::time::timeout(
                WAIT,
                remove_namespace(&ns, &redis_url, &rabbitmq_url, retry_queues),
            )
            .await;
        });
    }
}

/// Deletes `{ns}.worker`, `{ns}.worker.retry.{0..retry_queues}`, `{ns}.worker.dead`, every
/// consumer group's queue `{ns}.group.{group}` listed in `{ns}:groups`, the queue and
/// exchange `{ns}.groups.dropped`, the exchange `{ns}.events` and every Redis key `{ns}:*`;
/// the error lists what failed. Not bounded in time: wrap it in a timeout.
pub async fn remove_namespace(
    ns: &str,
    redis_url: &str,
    rabbitmq_url: &str,
    retry_queues: usize,
) -> Result<(), String> {
    // The groups are known from Redis: read them before the keys go.
    let groups = tokio::time::timeout(CLEANUP_OPERATION, group_names(ns, redis_url))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "Redis HKEYS {ns}:groups took over {CLEANUP_OPERATION:?}"
            ))
        });
    let rabbitmq = purge_rabbitmq(
        ns,
        rabbitmq_url,
        retry_queues,
        groups.as_deref().unwrap_or(&[]),
    )
    .await;
    let redis = purge_redis(ns, redis_url).await;
    let errors: Vec<String> = [groups.map(|_| ()), rabbitmq, redis]
        .into_iter()
        .filter_map(Result::err)
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// `operation` bounded by [`CLEANUP_OPERATION`]; a timeout is an error naming `what`.
async fn bounded_operation<T>(
    what: &str,
    operation: impl std::future::Future<Output = Result<T, lapin::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(CLEANUP_OPERATION, operation).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("{what} took over {CLEANUP_OPERATION:?}")),
    }
}

/// The consumer groups named in the hash `{ns}:groups`.
async fn group_names(ns: &str, redis_url: &str) -> Result<Vec<String>, String> {
    let client = redis::Client::open(redis_url).map_err(|e| format!("Redis: {e}"))?;
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("Redis: {e}"))?;
    redis::cmd("HKEYS")
        .arg(format!("{ns}:groups"))
        .query_async(&mut redis)
        .await
        .map_err(|e| format!("Redis HKEYS {ns}:groups: {e}"))
}

async fn purge_rabbitmq(
    ns: &str,
    rabbitmq_url: &str,
    retry_queues: usize,
    groups: &[String],
) -> Result<(), String> {
    let amqp = bounded_operation(
        "connect",
        Connection::connect(rabbitmq_url, ConnectionProperties::default()),
    )
    .await
    .map_err(|e| format!("RabbitMQ: {e}"))?;
    let mut queues = vec![
        format!("{ns}.worker"),
        format!("{ns}.worker.dead"),
        format!("{ns}.groups.dropped"),
    ];
    queues.extend((0..retry_queues).map(|i| format!("{ns}.worker.retry.{i}")));
    queues.extend(groups.iter().map(|group| format!("{ns}.group.{group}")));
    // A failed operation closes its channel: one channel each, all at once, each closed after.
    let deletions = queues.iter().map(|queue| {
        let amqp = &amqp;
        async move {
            let channel = bounded_operation("channel.open", amqp.create_channel()).await?;
            let deleted = bounded_operation(
                "queue.delete",
                channel.queue_delete(
                    ShortString::from(queue.as_str()),
                    QueueDeleteOptions::default(),
                ),
            )
            .await;
            let _ = tokio::time::timeout(
                CLEANUP_OPERATION,
                channel.close(200, ShortString::from("deleted")),
            )
            .await;
            deleted.map(|_| ())
        }
    });
    let mut errors = Vec::new();
    for (queue, deleted) in queues.iter().zip(join_all(deletions).await) {
        if let Err(e) = deleted {
            errors.push(format!("delete queue {queue}: {e}"));
        }
    }
    for exchange in [format!("{ns}.events"), format!("{ns}.groups.dropped")] {
        let deleted = async {
            let channel = bounded_operation("channel.open", amqp.create_channel()).await?;
            let deleted = bounded_operation(
                "exchange.delete",
                channel.exchange_delete(
                    ShortString::from(exchange.as_str()),
                    ExchangeDeleteOptions::default(),
                ),
            )
            .await;
            let _ = tokio::time::timeout(
                CLEANUP_OPERATION,
                channel.close(200, ShortString::from("deleted")),
            )
            .await;
            deleted
        }
        .await;
        if let Err(e) = deleted {
            errors.push(format!("delete exchange {exchange}: {e}"));
        }
    }
    let _ = tokio::time::timeout(
        CLEANUP_OPERATION,
        amqp.close(200, ShortString::from("cleanup")),
    )
    .await;
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

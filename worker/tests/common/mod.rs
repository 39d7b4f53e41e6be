//! Test harness: a simulator, the shipped tutorial config under a random namespace, real
//! Redis and RabbitMQ, workers started in-process, and cleanup of every queue and key.

// Test support: a failed step should fail the test at once, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use wechat::Limits;
use wx_worker::Worker;
use wxgate_core::bus::{Bus, HeaderValue, Message, Properties};
use wxgate_core::config::Config;
use wxgate_core::rabbit::RabbitBus;
use wxgate_core::topology::{Names, Topology, routing_key};
use wxgate_sim::{PushAccount, PushMode, Sim, SimConfig};

pub const ACCOUNT: &str = "demo";
pub const APPID: &str = "wx0123456789abcdef";
pub const SECRET: &str = "demo-secret-for-the-simulator";
pub const ORIGINAL_ID: &str = "gh_0123456789ab";
pub const SEND: &str = "/cgi-bin/message/custom/send";
pub const WAIT: Duration = Duration::from_secs(20);
/// An API key with `accounts = ["*"]` (every account, Accounts and DeadLetters).
pub const ADMIN_KEY: &str = "test-admin-key";
/// An API key for account `demo` only.
pub const DEMO_KEY: &str = "test-demo-key";
/// An API key for account `plain` only.
pub const PLAIN_KEY: &str = "test-plain-key";
/// How long removing a test's namespace may take.
const CLEANUP: Duration = Duration::from_secs(60);

pub fn redis_url() -> String {
    std::env::var("WXGATE__REDIS__URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

pub fn rabbit_url() -> String {
    std::env::var("WXGATE__RABBITMQ__URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub struct Harness {
    pub ns: String,
    pub sim: Sim,
    pub config: Arc<Config>,
    pub bus: RabbitBus,
    bus_shutdown: CancellationToken,
    workers: Vec<(CancellationToken, Worker)>,
    grpc_addrs: Vec<std::net::SocketAddr>,
    gateways: Vec<(
        CancellationToken,
        tokio::task::JoinHandle<Result<(), wx_gateway::ServeError>>,
    )>,
    cleanup: CleanupGuard,
}

/// Deletes the test's queues and keys when dropped, so a failing test leaves nothing behind.
struct CleanupGuard {
    ns: String,
    retry_queues: usize,
    done: bool,
}

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let ns = self.ns.clone();
        let retry_queues = self.retry_queues;
        // Inside a panicking test's runtime: clean up on a runtime of our own.
        wxgate_tests::on_own_runtime(async move {
            let _ = tokio::time::timeout(CLEANUP, remove(&ns, retry_queues)).await;
        });
    }
}

impl Harness {
    /// The tutorial config with `overrides` (env-style keys, e.g. `WXGATE__WORKER__MAX_ATTEMPTS`).
    pub async fn new(overrides: &[(&str, &str)]) -> Harness {
        Self::new_with(overrides, |_| {}).await
    }

    /// As [`Harness::new`], with `edit` applied to the loaded config (rules, accounts) before
    /// anything starts.
    pub async fn new_with(overrides: &[(&str, &str)], edit: impl FnOnce(&mut Config)) -> Harness {
        let sim = wxgate_sim::start(
            SimConfig::default().with_account(APPID, SECRET),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let ns = format!("t{:016x}", rand::random::<u64>());
        let mut env: HashMap<String, String> = [
            ("WXGATE__NAMESPACE", ns.clone()),
            ("WXGATE__REDIS__URL", redis_url()),
            ("WXGATE__RABBITMQ__URL", rabbit_url()),
            ("WXGATE__RABBITMQ__QUEUE_TYPE", "classic".into()),
            ("WXGATE__WECHAT__API_BASE", sim.base_url()),
            ("WXGATE__WECHAT__HTTP_TIMEOUT_MS", "3000".into()),
            ("WXGATE__WORKER__HTTP_LISTEN", "127.0.0.1:0".into()),
            ("WXGATE__WORKER__GRPC_LISTEN", "127.0.0.1:0".into()),
            ("WXGATE__WORKER__RETRY_DELAYS_MS", "50,100".into()),
            ("WXGATE__WORKER__MAX_ATTEMPTS", "4".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in overrides {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/tutorial.toml");
        let mut config = Config::load(std::path::Path::new(path), |k| env.get(k).cloned()).unwrap();
        for (name, key, accounts) in [
            ("admin", ADMIN_KEY, "*"),
            ("demo", DEMO_KEY, "demo"),
            ("plain", PLAIN_KEY, "plain"),
        ] {
            config.api_keys.push(wxgate_core::config::ApiKey {
                name: name.to_owned(),
                sha256: sha256_hex(key),
                accounts: vec![accounts.to_owned()],
            });
        }
        edit(&mut config);
        let config = Arc::new(config);
        // WeChat knows every account of the config.
        for account in &config.accounts {
            sim.add_account(&account.appid, account.secret.expose());
        }
        let bus_shutdown = CancellationToken::new();
        let bus = RabbitBus::connect(
            &config.rabbitmq.url,
            Topology::for_config(&config),
            bus_shutdown.clone(),
        );
        assert!(
            bus.wait_ready(Duration::from_secs(10)).await,
            "RabbitMQ is not reachable at {}: start it (docker compose up -d rabbitmq)",
            config.rabbitmq.url
        );
        let mut redis = redis_connection().await;
        let pong: String = redis::cmd("PING").query_async(&mut redis).await.unwrap();
        assert_eq!(pong, "PONG");
        Harness {
            sim,
            bus,
            bus_shutdown,
            workers: Vec::new(),
            grpc_addrs: Vec::new(),
            gateways: Vec::new(),
            cleanup: CleanupGuard {
                ns: ns.clone(),
                retry_queues: config.worker.retry_delays.len(),
                done: false,
            },
            ns,
            config,
        }
    }

    /// Starts one more worker in this process; returns its health address.
    pub async fn start_worker(&mut self) -> std::net::SocketAddr {
        let shutdown = CancellationToken::new();
        let worker = wx_worker::start(Arc::clone(&self.config), shutdown.clone())
            .await
            .unwrap();
        let addr = worker.http_addr();
        self.grpc_addrs.push(worker.grpc_addr());
        self.workers.push((shutdown, worker));
        addr
    }

    /// The `i`-th started worker's gRPC address.
    pub fn grpc_addr(&self, i: usize) -> std::net::SocketAddr {
        self.grpc_addrs[i]
    }

    /// A gRPC channel to the `i`-th started worker's API (plain HTTP/2).
    pub async fn channel(&self, i: usize) -> tonic::transport::Channel {
        let addr = self.grpc_addrs[i];
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(WAIT)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the grpc api at {addr}: {e}"))
    }

    /// Starts a gateway in this process on the harness config; returns the callback base
    /// `http://addr/wx` (append `/{account_id}`).
    pub async fn start_gateway(&mut self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(wx_gateway::serve(
            Arc::clone(&self.config),
            listener,
            shutdown.clone(),
        ));
        self.gateways.push((shutdown, task));
        format!("http://{addr}/wx")
    }

    /// The simulator's view of config account `id` (callback token, key, mode, original id).
    pub fn push_account(&self, id: &str) -> PushAccount {
        let account = self
            .config
            .accounts
            .iter()
            .find(|a| a.id.as_str() == id)
            .unwrap_or_else(|| panic!("no account {id} in config/tutorial.toml"));
        let (mode, key) = match id {
            "demo" => (
                PushMode::Safe,
                Some("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"),
            ),
            "compat" => (
                PushMode::Compat,
                Some("ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlkj"),
            ),
            _ => (PushMode::Plain, None),
        };
        PushAccount {
            id: id.to_owned(),
            appid: account.appid.clone(),
            token: account.token.expose().to_owned(),
            encoding_aes_key: key.map(str::to_owned),
            mode,
            original_id: format!("gh_{}", &account.appid[2..14]),
        }
    }

    /// Stops the `i`-th started worker and waits for it (it must return Ok).
    pub async fn stop_worker(&mut self, i: usize) {
        self.grpc_addrs.remove(i);
        let (shutdown, worker) = self.workers.remove(i);
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), worker.wait())
            .await
            .expect("worker stops within 20 s")
            .expect("worker stops cleanly");
    }

    pub fn names(&self) -> Names {
        Names::new(&self.ns)
    }

    /// Publishes `xml` as the gateway would (docs/contract.md §1.2, §4); returns the event id.
    pub async fn publish_xml(&self, xml: &str) -> String {
        let (key, message) = event_message(xml, None);
        self.bus
            .publish(&self.names().events_exchange(), &key, &message)
            .await
            .unwrap();
        message.properties.message_id.unwrap()
    }

    /// Publishes a prepared message to the events exchange.
    pub async fn publish(&self, key: &str, message: &Message) {
        self.bus
            .publish(&self.names().events_exchange(), key, message)
            .await
            .unwrap();
    }

    /// Takes `n` messages from `{ns}.worker.dead`, acking them.
    pub async fn dead_letters(&self, n: usize) -> Vec<Message> {
        let mut stream = self
            .bus
            .consume(&self.names().dead_queue(), 64)
            .await
            .unwrap();
        let mut out = Vec::new();
        while out.len() < n {
            let delivery = tokio::time::timeout(WAIT, stream.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} of {n} dead letters arrived", out.len()))
                .unwrap();
            out.push(delivery.message.clone());
            delivery.ack().await.unwrap();
        }
        stream.stop();
        out
    }

    /// Stops every worker (each must return Ok), then deletes the queues and keys.
    pub async fn finish(mut self) {
        for (shutdown, task) in std::mem::take(&mut self.gateways) {
            shutdown.cancel();
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("gateway stops within 20 s")
                .expect("gateway task")
                .expect("gateway stops cleanly");
        }
        for (shutdown, _) in &self.workers {
            shutdown.cancel();
        }
        for (_, worker) in std::mem::take(&mut self.workers) {
            tokio::time::timeout(Duration::from_secs(20), worker.wait())
                .await
                .expect("worker stops within 20 s")
                .expect("worker stops cleanly");
        }
        self.bus.close().await;
        self.bus_shutdown.cancel();
        self.cleanup.done = true;
        tokio::time::timeout(
            CLEANUP,
            remove(&self.ns, self.config.worker.retry_delays.len()),
        )
        .await
        .expect("the namespace is removed within 60 s")
        .unwrap_or_else(|e| panic!("removing namespace {}: {e}", self.ns));
        self.sim.shutdown().await;
    }
}

/// Lower-case hex SHA-256 of `key`, as `[[api_keys]].sha256` holds it.
pub fn sha256_hex(key: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

/// `request` with `authorization: Bearer {key}`.
pub fn authed<T>(key: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

pub async fn redis_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Redis is not reachable at {}: {e}; start it (docker compose up -d redis)",
                redis_url()
            )
        })
}

/// Deletes the namespace's queues, exchange and Redis keys.
async fn remove(ns: &str, retry_queues: usize) -> Result<(), String> {
    wxgate_tests::remove_namespace(ns, &redis_url(), &rabbit_url(), retry_queues).await
}

/// The routing key and AMQP message the gateway publishes for `xml` of account `demo`.
pub fn event_message(
    xml: &str,
    passive_reply: Option<wxgate_proto::v1::Reply>,
) -> (String, Message) {
    let msg = wechat::parse(xml.as_bytes(), &Limits::default()).unwrap();
    let event_id = wechat::event_id(ACCOUNT, &msg).as_str().to_owned();
    let received_at_ms = wxgate_core::now_ms();
    let event = wxgate_proto::v1::Event {
        event_id: event_id.clone(),
        account_id: ACCOUNT.into(),
        appid: APPID.into(),
        to_user: msg.to_user_name.clone(),
        from_user: msg.from_user_name.clone(),
        create_time: msg.create_time,
        msg_type: msg.msg_type.clone(),
        event: msg.event.clone().unwrap_or_default(),
        msg_id: msg.msg_id.unwrap_or(0),
        fields: msg.fields.iter().cloned().collect(),
        raw_xml: xml.to_owned(),
        received_at_ms,
        passive_reply,
        encrypt_mode: wxgate_proto::v1::EncryptMode::Safe as i32,
        payload: None,
    };
    let key = routing_key(ACCOUNT, &msg.msg_type, msg.event.as_deref());
    let message = Message {
        body: Bytes::from(event.encode_to_vec()),
        properties: Properties {
            message_id: Some(event_id),
            timestamp_s: u64::try_from(received_at_ms / 1000).ok(),
            content_type: Some(wxgate_proto::EVENT_CONTENT_TYPE.into()),
            kind: Some(wxgate_proto::EVENT_TYPE.into()),
            headers: vec![("account_id".into(), HeaderValue::Str(ACCOUNT.into()))],
        },
    };
    (key, message)
}

/// `GET path` on the worker's health server; (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Every sample in the `/metrics` of `addr` whose series starts with `prefix` (e.g.
/// `wxgate_worker_events_total{`), by series.
pub async fn samples(addr: std::net::SocketAddr, prefix: &str) -> BTreeMap<String, f64> {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "GET /metrics on {addr}");
    body.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The value of series `name{labels}` in `/metrics`; panics, naming it, when it is absent. A
/// labelled counter appears with its first increment: to check that something never happened,
/// compare all of [`samples`] instead.
pub async fn metric(addr: std::net::SocketAddr, series: &str) -> f64 {
    let all = samples(addr, series).await;
    match all.get(series) {
        Some(value) => *value,
        None => panic!("{addr}/metrics has no series {series}"),
    }
}

/// Polls `/metrics` until `series` exists and reaches `at_least`, within [`WAIT`].
pub async fn wait_metric(addr: std::net::SocketAddr, series: &str, at_least: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let value = samples(addr, series).await.get(series).copied();
        if value.is_some_and(|value| value >= at_least) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} stayed at {value:?}, wanted {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The header `name` of a message as an integer.
pub fn header_int(message: &Message, name: &str) -> Option<i64> {
    message.properties.header_int(name)
}

/// The header `name` of a message as a string.
pub fn header_str(message: &Message, name: &str) -> Option<String> {
    match message.properties.header(name)? {
        HeaderValue::Str(s) => Some(s.clone()),
        HeaderValue::Int(i) => Some(i.to_string()),
    }
}

impl Harness {
    /// A gRPC channel to the `i`-th started worker's API without a per-call deadline, for
    /// long-lived streams (the deadline of [`Harness::channel`] would end them).
    pub async fn stream_channel(&self, i: usize) -> tonic::transport::Channel {
        let addr = self.grpc_addrs[i];
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the grpc api at {addr}: {e}"))
    }
}

/// WeChat's errcode from the `x-wechat-errcode` trailer of an error status, if any.
pub fn errcode_trailer(status: &tonic::Status) -> Option<i64> {
    status
        .metadata()
        .get("x-wechat-errcode")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The `.code()` of `result`'s error, panicking (with the value) when it succeeded.
pub fn status_of<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> tonic::Status {
    match result {
        Ok(value) => panic!("expected an error status, got {value:?}"),
        Err(status) => status,
    }
}

impl Harness {
    /// Starts one more worker and waits (within [`WAIT`]) until its `/readyz` answers 200, i.e.
    /// Redis and RabbitMQ are connected, so RPCs do not fail with "store is not connected".
    pub async fn start_ready_worker(&mut self) -> std::net::SocketAddr {
        let addr = self.start_worker().await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (status, body) = http_get(addr, "/readyz").await;
            if status == 200 {
                return addr;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "worker at {addr} not ready: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

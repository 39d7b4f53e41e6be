//! One scenario's world: the simulator (WeChat), a wx-gateway and a wx-worker as child
//! processes on the tutorial config in a random namespace, steady load through the
//! simulator's push client, and the tally of what became of every push.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use prost::Message as _;
use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wxgate_core::Config;
use wxgate_core::topology::Names;
use wxgate_proto::v1 as pb;
use wxgate_sim::{Inbound, MsgIdGen, PushAccount, PushClient, PushMode, Quotas, Sim, SimConfig};

use crate::procs::{self, OwnRabbit, OwnRedis};

/// The customer-service send path at the simulator.
pub const SEND: &str = "/cgi-bin/message/custom/send";
/// The tutorial account the load goes to (plain mode, echo rule).
const ACCOUNT: &str = "plain";
/// `worker.concurrency` of every worker: how many events one may be in the middle of.
pub const CONCURRENCY: usize = 16;
/// `worker.retry_delays_ms`: long enough together to outlast a short WeChat fault window.
const RETRY_DELAYS_MS: &str = "500,1000,2000,4000";
/// `worker.max_attempts` of every worker: the most times one event is tried, so the most
/// times one reply can reach WeChat when every attempt is delivered but not answered in time.
pub const MAX_ATTEMPTS: u32 = 6;
/// How long the system may take to settle after the load stopped.
const SETTLE: Duration = Duration::from_secs(120);
/// How long a child process may take to become ready.
const READY: Duration = Duration::from_secs(60);

/// Load and fault timing; the short form by default, longer through the environment
/// (`FAULTS_RATE` pushes/s, `FAULTS_LOAD_S`, `FAULTS_WINDOW_S`), as bench/faults.sh does.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Pushes per second.
    pub rate: u32,
    /// Least time the load runs.
    pub load: Duration,
    /// When the fault starts, from the start of the load.
    pub fault_at: Duration,
    /// How long the fault lasts (where it has a duration).
    pub window: Duration,
}

impl Timing {
    /// From the environment, with the short-form defaults.
    pub fn from_env() -> Timing {
        let get = |key: &str, default: u64| {
            std::env::var(key)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(default)
        };
        let load = Duration::from_secs(get("FAULTS_LOAD_S", 12));
        Timing {
            rate: u32::try_from(get("FAULTS_RATE", 50)).unwrap_or(50).max(1),
            load,
            fault_at: load / 4,
            window: Duration::from_secs(get("FAULTS_WINDOW_S", 4)),
        }
    }
}

/// What one push came to, by WeChat's final verdict.
#[derive(Debug, Clone)]
pub struct Push {
    /// The unique text pushed, which the echo rule sends back.
    pub content: String,
    /// Its event id (docs/contract.md §3).
    pub event_id: String,
    /// Whether some delivery was answered 200.
    pub answered: bool,
}

/// Where the world's Redis and RabbitMQ are.
pub enum Services {
    /// The shared ones (127.0.0.1:6379 and 5672), never stopped.
    Shared,
    /// A Redis of the test's own; RabbitMQ shared.
    OwnRedis(OwnRedis),
    /// A RabbitMQ node of the test's own; Redis shared.
    OwnRabbit(OwnRabbit),
}

/// A scenario's world; call [`World::finish`] at the end.
pub struct World {
    /// Namespace of every key and queue.
    pub ns: String,
    /// The simulated WeChat.
    pub sim: Sim,
    /// Where Redis and RabbitMQ are.
    pub services: Services,
    /// The worker's `wechat.http_timeout_ms`: a send WeChat answers later than this timed out
    /// at the worker, although WeChat carried it out.
    pub http_timeout: Duration,
    http_timeout_overridden: bool,
    account: PushAccount,
    config_path: PathBuf,
    redis_url: String,
    rabbit_url: String,
    gateway_port: u16,
    worker_http_port: u16,
    worker_grpc_port: u16,
    gateway: Option<Child>,
    worker: Option<Child>,
    retry_queues: usize,
    cleaned: bool,
}

fn tutorial_path() -> PathBuf {
    procs::workspace().join("config/tutorial.toml")
}

/// The admin API key the world's config accepts (its SHA-256 is config/dev.toml's).
pub const API_KEY: &str = "wxgate-dev-key";
const API_KEY_SHA256: &str = "6966b461027f516f83830190c8d72f3e349c35f3d4a275796712dc6b02e6d830";

/// config/tutorial.toml with an admin API key, written to a file of the world's own.
fn write_config(ns: &str) -> PathBuf {
    let tutorial = std::fs::read_to_string(tutorial_path()).expect("config/tutorial.toml");
    let text = format!(
        "{tutorial}\n[[api_keys]]\nname = \"faults\"\nsha256 = \"{API_KEY_SHA256}\"\naccounts = [\"*\"]\n"
    );
    let path = std::env::temp_dir().join(format!("wxgate-faults-{ns}.toml"));
    std::fs::write(&path, text).expect("the world's config file");
    path
}

impl World {
    /// Starts the simulator, then a gateway and a worker (ready when returned); with
    /// `http_timeout`, the worker's `wechat.http_timeout_ms` is that instead of the config's.
    pub async fn start(services: Services, http_timeout: Option<Duration>) -> World {
        let config = Config::load(&tutorial_path(), |_| None).expect("config/tutorial.toml loads");
        let account = config
            .accounts
            .iter()
            .find(|a| a.id.as_str() == ACCOUNT)
            .expect("the tutorial config has the plain account");
        let mut sim_config = SimConfig {
            quotas: Quotas::unlimited(),
            call_log_capacity: 2_000_000,
            ..SimConfig::default()
        };
        for a in &config.accounts {
            sim_config = sim_config.with_account(a.appid.as_str(), a.secret.expose());
        }
        let sim = wxgate_sim::start(sim_config, "127.0.0.1:0".parse().unwrap())
            .await
            .expect("the simulator starts");
        let push_account = PushAccount {
            id: ACCOUNT.to_owned(),
            appid: account.appid.clone(),
            token: account.token.expose().to_owned(),
            encoding_aes_key: None,
            mode: PushMode::Plain,
            original_id: "gh_fau1t5000000".to_owned(),
        };
        let (redis_url, rabbit_url) = match &services {
            Services::Shared => (wxgate_tests::redis_url(), wxgate_tests::rabbitmq_url()),
            Services::OwnRedis(redis) => (redis.url(), wxgate_tests::rabbitmq_url()),
            Services::OwnRabbit(rabbit) => (wxgate_tests::redis_url(), rabbit.url()),
        };
        let ns = format!("t{:016x}", rand::random::<u64>());
        let mut world = World {
            config_path: write_config(&ns),
            ns,
            sim,
            services,
            http_timeout: http_timeout.unwrap_or(config.wechat.http_timeout),
            http_timeout_overridden: http_timeout.is_some(),
            account: push_account,
            redis_url,
            rabbit_url,
            gateway_port: procs::free_port(),
            worker_http_port: procs::free_port(),
            worker_grpc_port: procs::free_port(),
            gateway: None,
            worker: None,
            retry_queues: RETRY_DELAYS_MS.split(',').count(),
            cleaned: false,
        };
        world.start_worker().await;
        world.start_gateway().await;
        world
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(procs::bin_dir().join(program));
        command
            .arg("--config")
            .arg(&self.config_path)
            .env("WXGATE__NAMESPACE", &self.ns)
            .env("WXGATE__REDIS__URL", &self.redis_url)
            .env("WXGATE__RABBITMQ__URL", &self.rabbit_url)
            .env("WXGATE__RABBITMQ__QUEUE_TYPE", "classic")
            .env(
                "WXGATE__GATEWAY__LISTEN",
                format!("127.0.0.1:{}", self.gateway_port),
            )
            .env("WXGATE__WECHAT__API_BASE", self.sim.base_url())
            .env(
                "WXGATE__WORKER__HTTP_LISTEN",
                format!("127.0.0.1:{}", self.worker_http_port),
            )
            .env(
                "WXGATE__WORKER__GRPC_LISTEN",
                format!("127.0.0.1:{}", self.worker_grpc_port),
            )
            .env("WXGATE__WORKER__CONCURRENCY", CONCURRENCY.to_string())
            .env("WXGATE__WORKER__RETRY_DELAYS_MS", RETRY_DELAYS_MS)
            .env("WXGATE__WORKER__MAX_ATTEMPTS", MAX_ATTEMPTS.to_string())
            .env(
                "RUST_LOG",
                std::env::var("FAULTS_LOG").unwrap_or("error".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if self.http_timeout_overridden {
            command.env(
                "WXGATE__WECHAT__HTTP_TIMEOUT_MS",
                self.http_timeout.as_millis().to_string(),
            );
        }
        command
    }

    /// Starts the gateway (again) and waits until `/readyz` answers 200.
    pub async fn start_gateway(&mut self) {
        let child = self
            .command("wx-gateway")
            .spawn()
            .expect("wx-gateway starts");
        self.gateway = Some(child);
        self.wait_ready(self.gateway_port, "wx-gateway").await;
    }

    /// Starts the worker (again) and waits until `/readyz` answers 200.
    pub async fn start_worker(&mut self) {
        let child = self.command("wx-worker").spawn().expect("wx-worker starts");
        self.worker = Some(child);
        self.wait_ready(self.worker_http_port, "wx-worker").await;
    }

    async fn wait_ready(&self, port: u16, what: &str) {
        let url = format!("http://127.0.0.1:{port}/readyz");
        let url = &url;
        wxgate_tests::eventually(READY, &format!("{what} to be ready"), || async move {
            let (status, _) = http_get(url).await?;
            if status == 200 {
                Ok(())
            } else {
                Err(format!("readyz {status}"))
            }
        })
        .await;
    }

    /// The worker's gRPC API, `http://127.0.0.1:{port}`.
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.worker_grpc_port)
    }

    /// Pushes one text message once (no retries); whether it was answered 200.
    pub async fn push_once(&self, content: &str) -> bool {
        let xml = Inbound::now(&self.account.original_id, wxgate_sim::random_openid())
            .text(MsgIdGen::new().next_id(), content);
        let base = format!("http://127.0.0.1:{}/wx", self.gateway_port);
        PushClient::new()
            .attempts(1)
            .push(&base, &self.account, &xml)
            .await
            .is_ok_and(|o| o.statuses.last() == Some(&200))
    }

    /// Kills the gateway with SIGKILL and waits for it to be gone.
    pub async fn kill_gateway(&mut self) {
        if let Some(mut child) = self.gateway.take() {
            child.start_kill().expect("SIGKILL to the gateway");
            procs::reap(&mut child, "wx-gateway").await;
        }
    }

    /// Kills the worker with SIGKILL and waits for it to be gone.
    pub async fn kill_worker(&mut self) {
        if let Some(mut child) = self.worker.take() {
            child.start_kill().expect("SIGKILL to the worker");
            procs::reap(&mut child, "wx-worker").await;
        }
    }

    /// Stops the worker gracefully (SIGTERM: it drains and requeues).
    async fn stop_worker(&mut self) {
        if let Some(mut child) = self.worker.take() {
            procs::terminate(&child);
            procs::reap(&mut child, "wx-worker").await;
        }
    }

    /// Pushes distinct text messages at `timing.rate` until `stop` is cancelled; returns every
    /// push with WeChat's final verdict (after its retries).
    pub fn load(
        &self,
        tag: &str,
        rate: u32,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<Vec<Push>> {
        let client = PushClient::new();
        let base = format!("http://127.0.0.1:{}/wx", self.gateway_port);
        let account = Arc::new(self.account.clone());
        let tag = tag.to_owned();
        tokio::spawn(async move {
            let msg_ids = MsgIdGen::new();
            let mut pushes = JoinSet::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
            let mut i = 0_u64;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let content = format!("{tag}-{i:07}");
                i += 1;
                let user = wxgate_sim::random_openid();
                let xml =
                    Inbound::now(&account.original_id, &user).text(msg_ids.next_id(), &content);
                let event_id = wxgate_tests::event_id_of(ACCOUNT, &xml);
                let client = client.clone();
                let base = base.clone();
                let account = Arc::clone(&account);
                pushes.spawn(async move {
                    let answered = match client.push(&base, &account, &xml).await {
                        Ok(outcome) => outcome.statuses.last() == Some(&200),
                        Err(e) => panic!("push could not be attempted: {e}"),
                    };
                    Push {
                        content,
                        event_id,
                        answered,
                    }
                });
            }
            let mut done = Vec::new();
            while let Some(push) = pushes.join_next().await {
                done.push(push.expect("a push task"));
            }
            done
        })
    }

    /// Sends WeChat carried out (errcode 0, answered in time or not), by content (only this
    /// scenario's tag).
    fn sends(&self, tag: &str) -> HashMap<String, Sends> {
        let timeout_ms = u64::try_from(self.http_timeout.as_millis()).unwrap_or(u64::MAX);
        let mut sends: HashMap<String, Sends> = HashMap::new();
        for call in self.sim.calls_to(SEND) {
            if call.errcode != Some(0) {
                continue;
            }
            if let Some(content) = call.body["text"]["content"].as_str()
                && content.starts_with(tag)
            {
                let entry = sends.entry(content.to_owned()).or_insert(Sends {
                    count: 0,
                    first_ms: call.at_ms,
                    timed_out: 0,
                });
                entry.count += 1;
                entry.first_ms = entry.first_ms.min(call.at_ms);
                // The answer left the simulator after the worker had given up on it.
                if call.answer_delay_ms >= timeout_ms {
                    entry.timed_out += 1;
                }
            }
        }
        sends
    }

    /// Waits until every answered push is sent or parked dead, stops the worker, and counts.
    pub async fn settle(&mut self, name: &str, tag: &str, pushes: &[Push]) -> Tally {
        let amqp = tokio::time::timeout(
            READY,
            Connection::connect(&self.rabbit_url, ConnectionProperties::default()),
        )
        .await
        .expect("RabbitMQ answers within the deadline")
        .expect("RabbitMQ is reachable after the fault");
        let names = Names::new(&self.ns);
        let answered: HashSet<&str> = pushes
            .iter()
            .filter(|p| p.answered)
            .map(|p| p.content.as_str())
            .collect();
        let deadline = Instant::now() + SETTLE;
        loop {
            let sent = self.sends(tag);
            let missing = answered.iter().filter(|c| !sent.contains_key(**c)).count();
            let dead = ready_count(&amqp, &names.dead_queue()).await;
            let queued = ready_count(&amqp, &names.worker_queue()).await;
            if missing as u32 <= dead && queued == 0 {
                break;
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "{name}: not settled after {SETTLE:?}: {missing} unsent, {dead} dead, {queued} queued"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // No consumer from here on: what is left in a queue is ready to be counted.
        self.stop_worker().await;
        let dead = drain(&amqp, &names.dead_queue(), tag).await;
        let mut queued = drain(&amqp, &names.worker_queue(), tag).await;
        for i in 0..self.retry_queues {
            queued.extend(drain(&amqp, &names.retry_queue(i), tag).await);
        }
        let _ = amqp.close(200, "done".into()).await;

        let sends = self.sends(tag);
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for (_, reason) in &dead {
            *reasons.entry(reason.clone()).or_default() += 1;
        }
        let dead: HashSet<String> = dead.into_iter().map(|(c, _)| c).collect();
        let queued: HashSet<String> = queued.into_iter().map(|(c, _)| c).collect();
        let ids: HashMap<&str, &str> = pushes
            .iter()
            .map(|p| (p.content.as_str(), p.event_id.as_str()))
            .collect();
        let with_id = |c: &str| (c.to_owned(), ids.get(c).copied().unwrap_or("?").to_owned());
        let mut duplicates: Vec<Duplicate> = sends
            .iter()
            .filter(|(_, s)| s.count > 1)
            .map(|(c, s)| {
                let (content, event_id) = with_id(c);
                Duplicate {
                    content,
                    event_id,
                    sends: s.count,
                    timed_out: s.timed_out,
                    first_sent_ms: s.first_ms,
                }
            })
            .collect();
        duplicates.sort_by(|a, b| a.content.cmp(&b.content));
        let mut lost: Vec<(String, String)> = answered
            .iter()
            .filter(|c| !sends.contains_key(**c) && !dead.contains(**c) && !queued.contains(**c))
            .map(|c| with_id(c))
            .collect();
        lost.sort();
        let published: HashSet<&String> = sends.keys().chain(&dead).chain(&queued).collect();
        let timed_out = sends.values().map(|s| s.timed_out).sum();
        let first_sent_ms = sends.iter().map(|(c, s)| (c.clone(), s.first_ms)).collect();
        Tally {
            scenario: name.to_owned(),
            pushes: pushes.len(),
            answered: answered.len(),
            published: published.len(),
            sent: sends.len(),
            dead: dead.len(),
            queued: queued.len(),
            dead_reasons: reasons,
            timed_out,
            first_sent_ms,
            duplicates,
            lost,
        }
    }

    /// Stops the children and removes the namespace (or the test's own services).
    pub async fn finish(mut self) {
        self.kill_gateway().await;
        self.stop_worker().await;
        let removed = tokio::time::timeout(
            Duration::from_secs(60),
            wxgate_tests::remove_namespace(
                &self.ns,
                &self.redis_url,
                &self.rabbit_url,
                self.retry_queues,
            ),
        )
        .await;
        self.cleaned = true;
        if let Services::OwnRabbit(rabbit) = &mut self.services {
            rabbit.stop().await;
        }
        if let Services::OwnRedis(redis) = &mut self.services {
            redis.stop().await;
        }
        self.sim.shutdown().await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("removing namespace {}: {e}", self.ns),
            Err(_) => panic!("removing namespace {} took over 60 s", self.ns),
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config_path);
        if self.cleaned {
            return;
        }
        for child in [&mut self.gateway, &mut self.worker].into_iter().flatten() {
            let _ = child.start_kill();
        }
        let (ns, redis, rabbit, retry) = (
            self.ns.clone(),
            self.redis_url.clone(),
            self.rabbit_url.clone(),
            self.retry_queues,
        );
        // A panicking test: clean up on a runtime of our own.
        wxgate_tests::on_own_runtime(async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(60),
                wxgate_tests::remove_namespace(&ns, &redis, &rabbit, retry),
            )
            .await;
        });
    }
}

/// What became of a scenario's pushes.
#[derive(Debug)]
pub struct Tally {
    /// The scenario's name.
    pub scenario: String,
    /// Pushes made.
    pub pushes: usize,
    /// Pushes WeChat got a 200 for (after its retries).
    pub answered: usize,
    /// Distinct events that reached the worker queue: sent, dead or still queued.
    pub published: usize,
    /// Distinct contents sent.
    pub sent: usize,
    /// Distinct events parked in `{ns}.worker.dead`.
    pub dead: usize,
    /// Distinct events still in the worker or retry queues.
    pub queued: usize,
    /// Dead letters by reason.
    pub dead_reasons: BTreeMap<String, usize>,
    /// Sends WeChat carried out but answered after the worker's `wechat.http_timeout_ms`, so
    /// the worker counted them as failed.
    pub timed_out: usize,
    /// When each content was first sent, simulated Unix ms.
    pub first_sent_ms: HashMap<String, i64>,
    /// Contents sent more than once.
    pub duplicates: Vec<Duplicate>,
    /// Answered 200 but neither sent, dead nor queued: (content, event id).
    pub lost: Vec<(String, String)>,
}

impl Tally {
    /// The table header.
    pub const HEADER: &str = "| scenario | pushes | 200s | published | sent | dead | queued | duplicates | lost |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|";

    /// One table row.
    pub fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.scenario,
            self.pushes,
            self.answered,
            self.published,
            self.sent,
            self.dead,
            self.queued,
            self.duplicates.len(),
            self.lost.len()
        )
    }

    /// Distinct contents first sent within `from_ms..=to_ms` (simulated Unix ms).
    pub fn first_sent_between(&self, from_ms: i64, to_ms: i64) -> usize {
        self.first_sent_ms
            .values()
            .filter(|&&at| (from_ms..=to_ms).contains(&at))
            .count()
    }

    /// Prints the row and the details (dead reasons, duplicates, losses).
    pub fn print(&self) {
        println!("{}\n{}", Tally::HEADER, self.row());
        if !self.dead_reasons.is_empty() {
            println!("  dead by reason: {:?}", self.dead_reasons);
        }
        if self.timed_out > 0 {
            println!(
                "  sends carried out by WeChat but answered after the worker's timeout: {}",
                self.timed_out
            );
        }
        for d in self.duplicates.iter().take(SHOWN) {
            println!(
                "  duplicate: {} (event {}) sent {} times, {} of them timed out, first at {} ms",
                d.content, d.event_id, d.sends, d.timed_out, d.first_sent_ms
            );
        }
        if self.duplicates.len() > SHOWN {
            let mut by_sends: BTreeMap<usize, usize> = BTreeMap::new();
            for d in &self.duplicates {
                *by_sends.entry(d.sends).or_default() += 1;
            }
            println!(
                "  … {} more duplicates; replies by times sent: {by_sends:?}",
                self.duplicates.len() - SHOWN
            );
        }
        for (content, id) in &self.lost {
            println!("  LOST: {content} (event {id})");
        }
    }
}

/// How many duplicates [`Tally::print`] lists one by one.
const SHOWN: usize = 10;

/// The sends of one content at the simulator.
struct Sends {
    count: usize,
    first_ms: i64,
    timed_out: usize,
}

/// A reply sent more than once.
#[derive(Debug)]
pub struct Duplicate {
    /// The pushed text.
    pub content: String,
    /// Its event id.
    pub event_id: String,
    /// How many times WeChat carried the send out.
    pub sends: usize,
    /// How many of those it answered after the worker's timeout.
    pub timed_out: usize,
    /// When it was first sent, simulated Unix ms.
    pub first_sent_ms: i64,
}

/// Ready messages in `queue` (0 when it cannot be read).
async fn ready_count(amqp: &Connection, queue: &str) -> u32 {
    let Ok(channel) = amqp.create_channel().await else {
        return 0;
    };
    let count = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map(|q| q.message_count())
        .unwrap_or(0);
    let _ = channel.close(200, "done".into()).await;
    count
}

/// Takes every message out of `queue`; returns (content, dead-letter reason) of each of this
/// scenario's events.
async fn drain(amqp: &Connection, queue: &str, tag: &str) -> Vec<(String, String)> {
    let channel = amqp.create_channel().await.expect("an AMQP channel");
    let mut found = Vec::new();
    while let Ok(Some(message)) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
    {
        let delivery = &message.delivery;
        if let Ok(event) = pb::Event::decode(delivery.data.as_slice())
            && let Some(content) = content_of(&event.raw_xml, tag)
        {
            let reason = delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("x-wxgate-reason").cloned())
                .map(|v| match v {
                    AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                    AMQPValue::ShortString(s) => s.as_str().to_owned(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            found.push((content, reason));
        }
        let _ = delivery.ack(BasicAckOptions::default()).await;
    }
    let _ = channel.close(200, "done".into()).await;
    found
}

/// The `{tag}-NNNNNNN` content inside a push's XML.
fn content_of(xml: &str, tag: &str) -> Option<String> {
    let start = xml.find(&format!("{tag}-"))?;
    let len = tag.len() + 8;
    xml.get(start..start + len).map(str::to_owned)
}

/// GET `url` once, with a 2 s deadline: (status, body).
async fn http_get(url: &str) -> Result<(u16, String), String> {
    let (host, path) = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split_once('/'))
        .ok_or_else(|| format!("bad url {url}"))?;
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let exchange = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(host)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| "no status line".to_owned())?;
        Ok((status, text))
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| "no answer within 2 s".to_owned())?
}

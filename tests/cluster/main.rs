//! wxgate on clusters, the short forms CI runs: gateways and workers (in this process) against
//! a three-node RabbitMQ cluster and a Redis Cluster or Sentinel set of the test's own
//! (`scripts/testbed.sh`), with WeChat simulated.
//!
//! - 2 gateways + 3 workers give exactly what 1 + 1 give for the same pushes: the same
//!   replies, one send per event, one token call per AppID; an account added through one
//!   worker's gRPC API is served by every gateway.
//! - A RabbitMQ node (the worker queue's leader) killed and a Redis master killed under load:
//!   no callback answered 200 is lost; every reply is sent.
//! - The Sentinel master killed under load: the same.

// Test code: a step that cannot be done should fail the test at once, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wxgate_core::Config;
use wxgate_sim::{Inbound, MsgIdGen, PushAccount, PushClient, PushMode, Quotas, Sim, SimConfig};
use wxgate_tests::{RabbitCluster, RedisCluster, SentinelSet};

/// The customer-service send path at the simulator.
const SEND: &str = "/cgi-bin/message/custom/send";
/// The token endpoints at the simulator (`wechat.token_mode` stable and classic).
const STABLE_TOKEN: &str = "/cgi-bin/stable_token";
const CLASSIC_TOKEN: &str = "/cgi-bin/token";
/// The admin key the fleet's config accepts, and its SHA-256.
const API_KEY: &str = "wxgate-dev-key";
const API_KEY_SHA256: &str = "6966b461027f516f83830190c8d72f3e349c35f3d4a275796712dc6b02e6d830";
/// The AppID of the fleets under load.
const LOAD_APPID: &str = "wxc1u5ter0000009";
/// `worker.retry_delays_ms` of every fleet, and so its retry queues.
const RETRY_DELAYS_MS: &str = "200, 500, 1000, 2000, 4000";
const RETRY_QUEUES: usize = 5;
/// How long anything may take to become ready or to settle.
const WAIT: Duration = Duration::from_secs(90);

/// How the fleet reaches Redis.
enum RedisBed<'a> {
    Cluster(&'a RedisCluster),
    Sentinel(&'a SentinelSet),
}

impl RedisBed<'_> {
    fn toml(&self) -> String {
        match self {
            Self::Cluster(cluster) => format!(
                "[redis]\nmode = \"cluster\"\nurls = {:?}\n",
                &cluster.urls()[..2]
            ),
            Self::Sentinel(set) => format!(
                "[redis]\nmode = \"sentinel\"\nurls = {:?}\nsentinel_master = {:?}\n",
                set.sentinel_urls(),
                set.master_name()
            ),
        }
    }
}

/// A plain account with the echo rule, `appid` of the fleet's own.
fn account_toml(id: &str, appid: &str) -> String {
    format!(
        "[[accounts]]\nid = \"{id}\"\nappid = \"{appid}\"\nsecret = \"secret-{appid}\"\n\
         token = \"token-{id}\"\nmode = \"plain\"\n\
         [[accounts.custom]]\nmatch = {{ msg_type = \"text\" }}\nreply = {{ echo = true }}\n"
    )
}

fn push_account(id: &str, appid: &str) -> PushAccount {
    PushAccount {
        id: id.to_owned(),
        appid: appid.to_owned(),
        token: format!("token-{id}"),
        encoding_aes_key: None,
        mode: PushMode::Plain,
        original_id: "gh_c1u5ter00000".to_owned(),
    }
}

/// Gateways and workers of one namespace, in this process.
struct Fleet {
    gateways: Vec<SocketAddr>,
    workers: Vec<wx_worker::Worker>,
    shutdown: CancellationToken,
}

impl Fleet {
    async fn start(config: &Arc<Config>, gateways: usize, workers: usize) -> Fleet {
        let shutdown = CancellationToken::new();
        let mut fleet = Fleet {
            gateways: Vec::new(),
            workers: Vec::new(),
            shutdown: shutdown.clone(),
        };
        for _ in 0..workers {
            let worker = wx_worker::start(Arc::clone(config), shutdown.clone())
                .await
                .expect("a worker starts");
            ready(worker.http_addr(), "a worker").await;
            fleet.workers.push(worker);
        }
        for _ in 0..gateways {
            let listener = wxgate_serve::bind("127.0.0.1:0".parse().unwrap(), 1024)
                .expect("a port for a gateway");
            let addr = listener.local_addr().unwrap();
            tokio::spawn(wx_gateway::serve(
                Arc::clone(config),
                listener,
                shutdown.clone(),
            ));
            ready(addr, "a gateway").await;
            fleet.gateways.push(addr);
        }
        fleet
    }

    fn base(&self, i: usize) -> String {
        format!("http://{}/wx", self.gateways[i % self.gateways.len()])
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for worker in self.workers {
            let _ = tokio::time::timeout(WAIT, worker.wait()).await;
        }
    }
}

/// Polls `GET /readyz` on `addr` until it answers 200.
async fn ready(addr: SocketAddr, what: &str) {
    wxgate_tests::eventually(
        WAIT,
        &format!("{what} on {addr} to be ready"),
        || async move {
            let answer = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::spawn(wxgate_tests::raw_exchange(
                    addr,
                    b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                    Duration::from_secs(5),
                )),
            )
            .await;
            match answer {
                Ok(Ok(response)) if response.status == 200 => Ok(()),
                Ok(Ok(response)) => Err(format!(
                    "{} {}",
                    response.status,
                    String::from_utf8_lossy(&response.body)
                )),
                _ => Err("no answer".to_owned()),
            }
        },
    )
    .await;
}

/// A config of namespace `ns` on the beds, WeChat at `sim`.
fn config(
    ns: &str,
    redis: &RedisBed<'_>,
    amqp_urls: &[String],
    sim: &Sim,
    accounts: &str,
    token_mode: &str,
) -> Arc<Config> {
    let text = format!(
        "namespace = \"{ns}\"\n{redis}\n[rabbitmq]\nurls = {amqp_urls:?}\nqueue_type = \"quorum\"\n\
         [gateway]\nlisten = \"127.0.0.1:0\"\n\
         [worker]\nhttp_listen = \"127.0.0.1:0\"\ngrpc_listen = \"127.0.0.1:0\"\n\
         retry_delays_ms = [{RETRY_DELAYS_MS}]\nmax_attempts = 8\n\
         [wechat]\ntoken_mode = \"{token_mode}\"\napi_base = \"{base}\"\nmp_base = \"{base}\"\nopen_base = \"{base}\"\n\
         {accounts}\n[[api_keys]]\nname = \"cluster\"\nsha256 = \"{API_KEY_SHA256}\"\naccounts = [\"*\"]\n",
        redis = redis.toml(),
        base = sim.base_url(),
    );
    Arc::new(Config::from_toml(&text, |_| None).unwrap_or_else(|e| panic!("{e}\n{text}")))
}

/// What became of one push.
struct Push {
    content: String,
    answered: bool,
}

/// Pushes `count` distinct texts `{tag}-{i}` over the fleet's gateways in turn, `parallel` at a
/// time, each retried as WeChat does.
async fn push_many(fleet: &Fleet, account: &PushAccount, tag: &str, count: usize) -> Vec<Push> {
    let client = PushClient::new();
    let ids = MsgIdGen::new();
    let mut pushes = JoinSet::new();
    let mut done = Vec::new();
    for i in 0..count {
        pushes.spawn(push_text(
            client.clone(),
            fleet.base(i),
            account.clone(),
            format!("{tag}-{i:05}"),
            ids.next_id(),
        ));
        if pushes.len() >= 16 {
            done.push(pushes.join_next().await.unwrap().unwrap());
        }
    }
    while let Some(push) = pushes.join_next().await {
        done.push(push.unwrap());
    }
    done
}

/// Pushes one text `content` from a new user to `base`, retried as WeChat does.
async fn push_text(
    client: PushClient,
    base: String,
    account: PushAccount,
    content: String,
    msg_id: u64,
) -> Push {
    let xml =
        Inbound::now(&account.original_id, wxgate_sim::random_openid()).text(msg_id, &content);
    let answered = client
        .push(&base, &account, &xml)
        .await
        .is_ok_and(|o| o.statuses.last() == Some(&200));
    Push { content, answered }
}

/// Pushes at `rate` per second over the fleet's gateways until `stop`.
fn load(
    gateways: Vec<SocketAddr>,
    account: PushAccount,
    tag: String,
    rate: u32,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Vec<Push>> {
    tokio::spawn(async move {
        let client = PushClient::new();
        let ids = MsgIdGen::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
        let mut pushes = JoinSet::new();
        let mut i = 0_usize;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            pushes.spawn(push_text(
                client.clone(),
                format!("http://{}/wx", gateways[i % gateways.len()]),
                account.clone(),
                format!("{tag}-{i:06}"),
                ids.next_id(),
            ));
            i += 1;
        }
        let mut done = Vec::new();
        while let Some(push) = pushes.join_next().await {
            done.push(push.unwrap());
        }
        done
    })
}

/// Successful sends at the simulator with a content of `tag`: content → how many times.
fn sends(sim: &Sim, tag: &str) -> HashMap<String, usize> {
    let mut sends = HashMap::new();
    for call in sim.calls_to(SEND) {
        if call.errcode == Some(0)
            && let Some(content) = call.body["text"]["content"].as_str()
            && content.starts_with(tag)
        {
            *sends.entry(content.to_owned()).or_default() += 1;
        }
    }
    sends
}

/// Waits until every answered push of `pushes` has been sent at least once; the sends.
async fn every_answer_sent(sim: &Sim, tag: &str, pushes: &[Push]) -> HashMap<String, usize> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let sent = sends(sim, tag);
        let lost: Vec<&str> = pushes
            .iter()
            .filter(|p| p.answered && !sent.contains_key(&p.content))
            .map(|p| p.content.as_str())
            .collect();
        if lost.is_empty() {
            return sent;
        }
        assert!(
            Instant::now() < deadline,
            "{} pushes answered 200 have no reply sent after 180 s: {:?}",
            lost.len(),
            &lost[..lost.len().min(20)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Successful token calls for `appid`, at either endpoint (stable and classic).
fn token_calls(sim: &Sim, appid: &str) -> usize {
    [STABLE_TOKEN, CLASSIC_TOKEN]
        .iter()
        .flat_map(|path| sim.calls_to(path))
        .filter(|c| c.appid.as_deref() == Some(appid) && c.errcode == Some(0))
        .count()
}

async fn start_sim(appids: &[&str]) -> Sim {
    let mut config = SimConfig {
        quotas: Quotas::unlimited(),
        call_log_capacity: 1_000_000,
        ..SimConfig::default()
    };
    for appid in appids {
        config = config.with_account(*appid, format!("secret-{appid}"));
    }
    wxgate_sim::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("the simulator starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_and_three_workers_do_what_one_and_one_do() {
    let (rabbit, redis) = tokio::join!(RabbitCluster::up(), RedisCluster::up());
    let (rabbit, redis) = (
        rabbit.expect("a RabbitMQ cluster"),
        redis.expect("a Redis Cluster"),
    );
    let bed = RedisBed::Cluster(&redis);
    let (one_appid, many_appid, late_appid) =
        ("wxc1u5ter0000001", "wxc1u5ter0000002", "wxc1u5ter0000003");
    let sim = start_sim(&[one_appid, many_appid, late_appid]).await;
    let count = 150;

    let mut results = Vec::new();
    for (gateways, workers, appid) in [(1, 1, one_appid), (2, 3, many_appid)] {
        let ns = format!("t{:016x}", rand::random::<u64>());
        let config = config(
            &ns,
            &bed,
            rabbit.amqp_urls(),
            &sim,
            &account_toml("shop", appid),
            "stable",
        );
        let fleet = Fleet::start(&config, gateways, workers).await;
        let account = push_account("shop", appid);
        let tag = format!("g{gateways}w{workers}");
        let pushes = push_many(&fleet, &account, &tag, count).await;
        assert!(
            pushes.iter().all(|p| p.answered),
            "{gateways}+{workers}: every push answered 200"
        );
        let sent = wxgate_tests::eventually(WAIT, "every reply sent", || {
            let (sim, tag) = (&sim, &tag);
            async move {
                let sent = sends(sim, tag);
                if sent.len() == count {
                    Ok(sent)
                } else {
                    Err(format!("{} of {count} sent", sent.len()))
                }
            }
        })
        .await;
        let twice: Vec<_> = sent.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "{gateways}+{workers}: sent twice: {twice:?}"
        );
        assert_eq!(
            token_calls(&sim, appid),
            1,
            "{gateways}+{workers}: one token call for the AppID"
        );
        let mut replies: Vec<String> = sent
            .into_keys()
            .map(|content| content[tag.len()..].to_owned())
            .collect();
        replies.sort();
        results.push(replies);

        if gateways == 2 {
            // An account added through the first worker's API is served by every gateway.
            add_account(&fleet.workers[0], "late", late_appid).await;
            let late = push_account("late", late_appid);
            for (i, gateway) in fleet.gateways.iter().enumerate() {
                let base = format!("http://{gateway}/wx");
                let late = &late;
                wxgate_tests::eventually(
                    Duration::from_secs(30),
                    &format!("gateway {i} to serve the new account"),
                    || {
                        let base = base.clone();
                        async move {
                            let xml = Inbound::now(&late.original_id, wxgate_sim::random_openid())
                                .text(MsgIdGen::new().next_id(), &format!("late-{i}"));
                            let outcome = PushClient::new()
                                .attempts(1)
                                .push(&base, late, &xml)
                                .await
                                .map_err(|e| e.to_string())?;
                            match outcome.statuses.last() {
                                Some(200) => Ok(()),
                                other => Err(format!("answered {other:?}")),
                            }
                        }
                    },
                )
                .await;
            }
            every_answer_sent(
                &sim,
                "late-",
                &[
                    Push {
                        content: "late-0".into(),
                        answered: true,
                    },
                    Push {
                        content: "late-1".into(),
                        answered: true,
                    },
                ],
            )
            .await;
        }
        fleet.stop().await;
    }
    assert_eq!(results[0], results[1], "1+1 and 2+3 sent the same replies");
    redis.down().await.expect("the Redis Cluster stopped");
    rabbit.down().await.expect("the RabbitMQ cluster stopped");
}

/// `Accounts.Upsert` of a plain echo account through `worker`'s gRPC API.
async fn add_account(worker: &wx_worker::Worker, id: &str, appid: &str) {
    use wxgate_proto::v1 as pb;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", worker.grpc_addr()))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("the worker's gRPC API");
    let mut client = pb::accounts_client::AccountsClient::new(channel);
    let spec: wxgate_core::config::AccountSpec = toml::from_str(
        &account_toml(id, appid)
            .replacen("[[accounts]]\n", "", 1)
            .replace("[[accounts.custom]]", "[[custom]]"),
    )
    .expect("the account spec");
    let mut request = tonic::Request::new(pb::UpsertAccountRequest {
        account: Some(wx_worker::grpc::accounts::settings_of(&spec, true)),
        clear_previous: false,
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {API_KEY}").parse().unwrap(),
    );
    client.upsert(request).await.expect("Accounts.Upsert");
}

/// A gRPC `Events.Subscribe` client of group `group` on a worker, as `wxgate tail` is: it
/// records the text of every event delivered and acks it, and subscribes again whenever the
/// stream ends or fails, until `stop`. `started` is notified once the group exists.
fn subscriber(
    grpc: SocketAddr,
    group: &'static str,
    seen: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    started: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    use pb::subscribe_request::Kind as RequestKind;
    use pb::subscribe_response::Kind as ResponseKind;
    use wxgate_proto::v1 as pb;
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
                .unwrap()
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await
            else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let (requests, receiver) = tokio::sync::mpsc::channel::<pb::SubscribeRequest>(1024);
            let start = pb::EventsStart {
                group: group.to_owned(),
                max_in_flight: 256,
                ..pb::EventsStart::default()
            };
            requests
                .send(pb::SubscribeRequest {
                    kind: Some(RequestKind::Start(start)),
                })
                .await
                .unwrap();
            let mut request =
                tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {API_KEY}").parse().unwrap(),
            );
            let mut client = pb::events_client::EventsClient::new(channel);
            let Ok(response) = client.subscribe(request).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let mut responses = response.into_inner();
            loop {
                let message = tokio::select! {
                    () = stop.cancelled() => return,
                    message = responses.message() => message,
                };
                let Ok(Some(message)) = message else { break };
                match message.kind {
                    Some(ResponseKind::Started(_)) => started.notify_one(),
                    Some(ResponseKind::Delivery(delivery)) => {
                        if let Some(pb::event::Payload::Text(text)) =
                            delivery.event.and_then(|e| e.payload)
                        {
                            *seen.lock().unwrap().entry(text.content).or_default() += 1;
                        }
                        let ack = pb::SubscribeRequest {
                            kind: Some(RequestKind::Ack(pb::EventsAck {
                                delivery_id: delivery.delivery_id,
                            })),
                        };
                        if requests.send(ack).await.is_err() {
                            break;
                        }
                    }
                    None => {}
                }
            }
        }
    })
}

/// Under load (50 pushes/s over 2 gateways and 2 workers, namespace `ns` or a fresh one),
/// `fault` happens; then every push answered 200 must have its reply sent, and no send may be
/// refused for its token. Prints the tally; returns the token calls made.
async fn under_load<F, Fut>(
    bed: &RedisBed<'_>,
    amqp_urls: &[String],
    ns: Option<&str>,
    token_mode: &str,
    name: &str,
    fault: F,
) -> usize
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let appid = LOAD_APPID;
    let sim = start_sim(&[appid]).await;
    let ns = ns.map_or_else(|| format!("t{:016x}", rand::random::<u64>()), str::to_owned);
    let config = config(
        &ns,
        bed,
        amqp_urls,
        &sim,
        &account_toml("shop", appid),
        token_mode,
    );
    let fleet = Fleet::start(&config, 2, 2).await;
    // A consumer group subscribed through the first worker's API, as other teams' services
    // are: it must see every event answered 200 too, across the fault.
    let seen = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let (started, subscribed) = (
        Arc::new(tokio::sync::Notify::new()),
        CancellationToken::new(),
    );
    let subscription = subscriber(
        fleet.workers[0].grpc_addr(),
        "audit",
        Arc::clone(&seen),
        Arc::clone(&started),
        subscribed.clone(),
    );
    tokio::time::timeout(WAIT, started.notified())
        .await
        .expect("the group subscribed");
    let stop = CancellationToken::new();
    let load = load(
        fleet.gateways.clone(),
        push_account("shop", appid),
        "load".to_owned(),
        50,
        stop.clone(),
    );
    // Some load before the fault, and some after it.
    wxgate_tests::eventually(WAIT, "the first replies", || {
        let sim = &sim;
        async move {
            if sends(sim, "load").len() >= 50 {
                Ok(())
            } else {
                Err("fewer than 50 sent")
            }
        }
    })
    .await;
    let fault_started = Instant::now();
    fault(ns.clone()).await;
    let fault_took = fault_started.elapsed();
    let sent_at_recovery = sends(&sim, "load").len();
    wxgate_tests::eventually(WAIT, "replies after the fault", || {
        let sim = &sim;
        async move {
            if sends(sim, "load").len() >= sent_at_recovery + 100 {
                Ok(())
            } else {
                Err("fewer than 100 more sent")
            }
        }
    })
    .await;
    stop.cancel();
    let pushes = load.await.unwrap();
    let sent = every_answer_sent(&sim, "load", &pushes).await;
    let answered_contents: Vec<&str> = pushes
        .iter()
        .filter(|p| p.answered)
        .map(|p| p.content.as_str())
        .collect();
    let (seen_ref, answered_ref) = (&seen, &answered_contents);
    wxgate_tests::eventually(
        WAIT,
        "the group to receive every event answered 200",
        || async move {
            let seen = seen_ref.lock().unwrap();
            let missing = answered_ref
                .iter()
                .filter(|c| !seen.contains_key(**c))
                .count();
            if missing == 0 {
                Ok(())
            } else {
                Err(format!("{missing} not received"))
            }
        },
    )
    .await;
    subscribed.cancel();
    let _ = subscription.await;
    let group_twice = seen.lock().unwrap().values().filter(|n| **n > 1).count();
    let answered = pushes.iter().filter(|p| p.answered).count();
    let duplicates = sent.values().filter(|n| **n > 1).count();
    // A token another refresher replaced keeps working (stable mode: the same token comes
    // back; classic mode: the old one has a grace period), so no send is refused for it.
    let refused_token = sim
        .calls_to(SEND)
        .iter()
        .filter(|c| matches!(c.errcode, Some(40001 | 40014 | 42001)))
        .count();
    println!(
        "| {name} | {} pushes | {answered} answered 200 | {} sent | {duplicates} sent more than once | 0 lost | fault done in {fault_took:?} | {} token calls ({token_mode}) | {refused_token} sends refused for the token | group: every event, {group_twice} twice |",
        pushes.len(),
        sent.len(),
        token_calls(&sim, appid)
    );
    assert!(answered > 0);
    assert_eq!(refused_token, 0, "no send refused for its access token");
    fleet.stop().await;
    token_calls(&sim, appid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rabbitmq_node_and_a_redis_master_lost_under_load_lose_nothing() {
    let (rabbit, redis) = tokio::join!(RabbitCluster::up(), RedisCluster::up());
    let (rabbit, redis) = (
        rabbit.expect("a RabbitMQ cluster"),
        redis.expect("a Redis Cluster"),
    );
    let (rabbit_ref, redis_ref) = (&rabbit, &redis);
    let _ = under_load(
        &RedisBed::Cluster(&redis),
        rabbit.amqp_urls(),
        None,
        "stable",
        "RabbitMQ leader SIGKILL, a Redis Cluster master SIGKILL, the node started again",
        |ns| async move {
            let leader = rabbit_ref
                .queue_leader(&format!("{ns}.worker"))
                .await
                .expect("the worker queue's leader");
            rabbit_ref
                .kill_node(leader)
                .await
                .expect("the leader killed");
            redis_ref.kill_master(None).await.expect("a master killed");
            redis_ref
                .wait_failover()
                .await
                .expect("a replica took over");
            // The node comes back and rejoins; the load goes on throughout.
            rabbit_ref
                .start_node(leader)
                .await
                .expect("the node started again");
        },
    )
    .await;
    redis.down().await.expect("the Redis Cluster stopped");
    rabbit.down().await.expect("the RabbitMQ cluster stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sentinel_failover_under_load_loses_nothing() {
    let set = SentinelSet::up().await.expect("a Sentinel set");
    // RabbitMQ is not what fails here: the machine's broker, in a namespace removed at the end.
    let namespace = wxgate_tests::Namespace::random(RETRY_QUEUES);
    let set_ref = &set;
    let token_calls = under_load(
        &RedisBed::Sentinel(&set),
        &[wxgate_tests::rabbitmq_url()],
        Some(&namespace.ns),
        "classic",
        "Sentinel master SIGKILL; the token and its lock lost",
        |ns| async move {
            set_ref.kill_master().await.expect("the master killed");
            let master = set_ref
                .wait_failover()
                .await
                .expect("the sentinels promoted the replica");
            // What an unreplicated write lost in a failover looks like: the token and its
            // lock are gone, so the next caller refreshes while sends with the old token are
            // still under way.
            let mut direct = redis::Client::open(format!("redis://127.0.0.1:{master}/0"))
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .expect("the new master");
            for key in [
                format!("{ns}:token:{LOAD_APPID}"),
                format!("{ns}:token-lock:{LOAD_APPID}"),
            ] {
                let _: i64 = redis::cmd("DEL")
                    .arg(&key)
                    .query_async(&mut direct)
                    .await
                    .expect("DEL on the new master");
            }
        },
    )
    .await;
    assert_eq!(
        token_calls, 2,
        "the lost token was fetched again, once, while the old one kept working"
    );
    set.down().await.expect("the Sentinel set stopped");
}

//! wxgate's promise under faults (docs/contract.md §6): WeChat pushes at a steady rate through
//! a wx-gateway and a wx-worker running as child processes, while one thing misbehaves; then
//! every push answered 200 must be sent, or parked dead with its reason, and a reply sent
//! twice must fall in a documented crash window.
//!
//! These are the short forms (a few seconds of load, a few seconds of fault). `bench/faults.sh`
//! runs the same scenarios with minutes-long windows through `FAULTS_RATE`, `FAULTS_LOAD_S`
//! and `FAULTS_WINDOW_S`, and prints the table.

// Test code: a step that cannot be done should fail the test at once, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod procs;
mod world;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wxgate_sim::Fault;

use procs::{OwnRabbit, OwnRedis};
use world::{CONCURRENCY, SEND, Services, Tally, Timing, World};

/// How long a send takes in the worker-kill scenario (WeChat's own latency, roughly).
const SEND_LATENCY: Duration = Duration::from_millis(100);

/// How long the load goes on after the system is whole again.
const AFTER_RECOVERY: Duration = Duration::from_secs(3);

/// The one thing that goes wrong in a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trouble {
    /// The RabbitMQ node stopped for the window, then started again.
    RabbitRestart,
    /// Redis stopped for the window, then started again.
    RedisRestart,
    /// The gateway killed with SIGKILL and started again.
    GatewayKill,
    /// The worker killed with SIGKILL and started again.
    WorkerKill,
    /// Every send takes 4 s for the window.
    WechatSlow,
    /// Sends answer HTTP 502 or errcode -1 for the window.
    WechatErrors,
}

/// Runs `trouble` under load and returns the tally; asserts nothing.
async fn scenario(name: &str, trouble: Trouble) -> Tally {
    let timing = Timing::from_env();
    let services = match trouble {
        Trouble::RabbitRestart => Services::OwnRabbit(OwnRabbit::start().await),
        Trouble::RedisRestart => Services::OwnRedis(OwnRedis::start().await),
        _ => Services::Shared,
    };
    let mut world = World::start(services).await;
    if trouble == Trouble::WorkerKill {
        // Sends that take as long as WeChat's keep several in progress, so the kill lands in
        // the middle of some.
        world.sim.inject(SEND, Fault::latency(SEND_LATENCY));
    }
    let tag = format!("f{:08x}", rand::random::<u32>());
    let stop = CancellationToken::new();
    let started = Instant::now();
    let load = world.load(&tag, timing.rate, stop.clone());
    // The fault windows are timed on purpose: they are the scenario, not a synchronisation.
    tokio::time::sleep(timing.fault_at).await;
    match trouble {
        Trouble::RabbitRestart => {
            if let Services::OwnRabbit(rabbit) = &mut world.services {
                rabbit.stop().await;
                tokio::time::sleep(timing.window).await;
                rabbit.resume().await;
            }
        }
        Trouble::RedisRestart => {
            if let Services::OwnRedis(redis) = &mut world.services {
                redis.stop().await;
                tokio::time::sleep(timing.window).await;
                redis.resume().await;
            }
        }
        Trouble::GatewayKill => {
            world.kill_gateway().await;
            world.start_gateway().await;
        }
        Trouble::WorkerKill => {
            world.kill_worker().await;
            world.start_worker().await;
        }
        Trouble::WechatSlow => {
            world
                .sim
                .inject(SEND, Fault::latency(Duration::from_secs(4)));
            tokio::time::sleep(timing.window).await;
            world.sim.clear_faults();
        }
        Trouble::WechatErrors => {
            world
                .sim
                .inject(SEND, Fault::status(502).with_probability(0.5));
            world.sim.inject(SEND, Fault::errcode(-1));
            tokio::time::sleep(timing.window).await;
            world.sim.clear_faults();
        }
    }
    let recovered = Instant::now();
    tokio::time::sleep_until((started + timing.load).max(recovered + AFTER_RECOVERY)).await;
    stop.cancel();
    let pushes = load.await.expect("the load task");
    let tally = world.settle(name, &tag, &pushes).await;
    tally.print();
    world.finish().await;
    tally
}

/// The promise: nothing answered 200 is lost, and at most `duplicates` replies go twice.
fn assert_promise(tally: &Tally, duplicates: usize, why: &str) {
    assert!(
        tally.lost.is_empty(),
        "{}: {} answered 200 but neither sent nor dead nor queued: {:?}",
        tally.scenario,
        tally.lost.len(),
        tally.lost
    );
    assert_eq!(
        tally.queued, 0,
        "{}: events left queued after settling",
        tally.scenario
    );
    assert!(
        tally.duplicates.len() <= duplicates && tally.duplicates.iter().all(|d| d.2 == 2),
        "{}: {} replies sent more than once (allowed {duplicates}: {why}): {:?}",
        tally.scenario,
        tally.duplicates.len(),
        tally.duplicates
    );
    assert!(
        tally.answered > 0,
        "{}: no push was answered 200",
        tally.scenario
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_stopped_and_started_loses_nothing() {
    let tally = scenario("rabbitmq stopped+started", Trouble::RabbitRestart).await;
    assert_promise(&tally, 0, "none expected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_stopped_and_started_loses_nothing() {
    let tally = scenario("redis stopped+started", Trouble::RedisRestart).await;
    assert_promise(&tally, 0, "none expected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_killed_and_restarted_loses_nothing() {
    let tally = scenario("gateway SIGKILL", Trouble::GatewayKill).await;
    assert_promise(
        &tally,
        0,
        "none expected: the sent marker stops a republished event",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_killed_and_restarted_loses_nothing() {
    let tally = scenario("worker SIGKILL", Trouble::WorkerKill).await;
    assert_promise(
        &tally,
        CONCURRENCY,
        "a send in progress at the kill, delivered although the worker died before marking it \
         sent, goes again on redelivery; at most one per event in progress",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wechat_slow_loses_nothing() {
    let tally = scenario("wechat 4 s per call", Trouble::WechatSlow).await;
    assert_promise(&tally, 0, "none expected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wechat_failing_loses_nothing() {
    let tally = scenario("wechat 502 / errcode -1", Trouble::WechatErrors).await;
    assert_promise(&tally, 0, "none expected");
}

/// A `wxgate tail --json` child of group `faults`, counting the event ids it prints.
struct Tail {
    child: tokio::process::Child,
    reader: tokio::task::JoinHandle<()>,
}

impl Tail {
    fn start(world: &World, seen: &Arc<Mutex<HashMap<String, usize>>>) -> Tail {
        let mut child = tokio::process::Command::new(procs::bin_dir().join("wxgate"))
            .args(["tail", "--group", "faults", "--json"])
            .args(["--api", &world.api_url(), "--api-key", world::API_KEY])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("wxgate tail starts");
        let stdout = child.stdout.take().expect("the tail's stdout is piped");
        let seen = Arc::clone(seen);
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if let Some(id) = value["event_id"].as_str() {
                    *seen.lock().unwrap().entry(id.to_owned()).or_default() += 1;
                }
            }
        });
        Tail { child, reader }
    }

    /// SIGKILL, then waits until its output is read to the end.
    async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL to the tail");
        procs::reap(&mut self.child, "wxgate tail").await;
        let _ = self.reader.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tail_killed_and_restarted_sees_every_event() {
    let timing = Timing::from_env();
    let world = World::start(Services::Shared).await;
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let first = Tail::start(&world, &seen);
    // The group exists once the first tail has subscribed: wait until a marker comes through.
    let (world_ref, seen_ref) = (&world, &seen);
    wxgate_tests::eventually(
        Duration::from_secs(30),
        "the tail to print a marker",
        || async move {
            world_ref.push_once("marker").await;
            if seen_ref.lock().unwrap().is_empty() {
                Err("nothing printed yet")
            } else {
                Ok(())
            }
        },
    )
    .await;

    let tag = format!("f{:08x}", rand::random::<u32>());
    let stop = CancellationToken::new();
    let started = Instant::now();
    let load = world.load(&tag, timing.rate, stop.clone());
    tokio::time::sleep(timing.fault_at).await;
    first.kill().await;
    let second = Tail::start(&world, &seen);
    tokio::time::sleep_until(started + timing.load).await;
    stop.cancel();
    let pushes = load.await.expect("the load task");
    let answered: Vec<&world::Push> = pushes.iter().filter(|p| p.answered).collect();
    let answered_ref = &answered;
    wxgate_tests::eventually(
        Duration::from_secs(60),
        "the tail to print every event",
        || async move {
            let seen = seen_ref.lock().unwrap();
            let missing = answered_ref
                .iter()
                .filter(|p| !seen.contains_key(&p.event_id))
                .count();
            if missing == 0 {
                Ok(())
            } else {
                Err(format!("{missing} of {} not printed", answered_ref.len()))
            }
        },
    )
    .await;
    second.kill().await;
    let twice = {
        let seen = seen.lock().unwrap();
        answered
            .iter()
            .filter(|p| seen.get(&p.event_id).is_some_and(|&n| n > 1))
            .count()
    };
    println!(
        "| wxgate tail SIGKILL | {} pushes | {} answered 200 | every one printed, {twice} twice |",
        pushes.len(),
        answered.len()
    );
    world.finish().await;
}

//! wxgate's promise under faults (docs/contract.md §6): WeChat pushes at a steady rate through
//! a wx-gateway and a wx-worker running as child processes, while one thing misbehaves; then
//! every push answered 200 must be sent, or parked dead with its reason, and a reply sent
//! more than once must fall in a window docs/operating.md §4.3 documents, which the test
//! checks as far as the tally can tell (an extra send is a timed-out one; a duplicate after a
//! Redis kill was first sent in the seconds the kill could lose).
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
use world::{CONCURRENCY, MAX_ATTEMPTS, SEND, Services, Tally, Timing, World};

/// How long a send takes in the worker-kill scenario (WeChat's own latency, roughly).
const SEND_LATENCY: Duration = Duration::from_millis(100);

/// The worker's `wechat.http_timeout_ms` in the slower-than-the-timeout scenario (1 s rather
/// than the default 5 s, so the short form stays short).
const SHORT_HTTP_TIMEOUT: Duration = Duration::from_millis(1000);

/// How late WeChat answers sends it has carried out, in that scenario: past the timeout.
const LATE_ANSWER: Duration = Duration::from_millis(1500);

/// How long before a SIGKILL Redis may have acknowledged writes it had not yet written to its
/// append-only file: with `appendfsync everysec` it writes its buffer before answering, except
/// while the previous second's fsync is still running, when it postpones the write for up to
/// 2 s (whole seconds of its clock, so just under 3 s).
const AOF_UNWRITTEN: Duration = Duration::from_secs(3);

/// How long the load goes on after the system is whole again.
const AFTER_RECOVERY: Duration = Duration::from_secs(3);

/// The one thing that goes wrong in a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trouble {
    /// The RabbitMQ node stopped for the window, then started again.
    RabbitRestart,
    /// Redis stopped for the window, then started again.
    RedisRestart,
    /// Redis killed with SIGKILL, started again after the window.
    RedisKill,
    /// The gateway killed with SIGKILL and started again.
    GatewayKill,
    /// The worker killed with SIGKILL and started again.
    WorkerKill,
    /// Every send takes 4 s for the window.
    WechatSlow,
    /// Sends answer HTTP 502 or errcode -1 for the window.
    WechatErrors,
    /// For the window, WeChat carries every send out (the user gets the message) but answers
    /// it after the worker's `wechat.http_timeout_ms`.
    WechatSlowerThanTimeout,
}

/// A scenario's tally, and when its fault began and ended.
struct Run {
    tally: Tally,
    /// The simulator's clock (Unix ms) just before the fault.
    fault_began_ms: i64,
    /// The simulator's clock (Unix ms) when the fault was lifted (before a stopped or killed
    /// service was started again).
    fault_ended_ms: i64,
}

/// Runs `trouble` under load and returns the tally; asserts nothing.
async fn scenario(name: &str, trouble: Trouble) -> Run {
    let timing = Timing::from_env();
    let services = match trouble {
        Trouble::RabbitRestart => Services::OwnRabbit(OwnRabbit::start().await),
        Trouble::RedisRestart | Trouble::RedisKill => Services::OwnRedis(OwnRedis::start().await),
        _ => Services::Shared,
    };
    let http_timeout = (trouble == Trouble::WechatSlowerThanTimeout).then_some(SHORT_HTTP_TIMEOUT);
    let mut world = World::start(services, http_timeout).await;
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
    let fault_began_ms = world.sim.now_unix_ms();
    let mut fault_ended_ms = None;
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
        Trouble::RedisKill => {
            if let Services::OwnRedis(redis) = &mut world.services {
                redis.kill().await;
                tokio::time::sleep(timing.window).await;
                fault_ended_ms = Some(world.sim.now_unix_ms());
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
        Trouble::WechatSlowerThanTimeout => {
            world.sim.inject(SEND, Fault::late_answer(LATE_ANSWER));
            tokio::time::sleep(timing.window).await;
            world.sim.clear_faults();
        }
    }
    let fault_ended_ms = fault_ended_ms.unwrap_or_else(|| world.sim.now_unix_ms());
    let recovered = Instant::now();
    tokio::time::sleep_until((started + timing.load).max(recovered + AFTER_RECOVERY)).await;
    stop.cancel();
    let pushes = load.await.expect("the load task");
    let tally = world.settle(name, &tag, &pushes).await;
    tally.print();
    world.finish().await;
    Run {
        tally,
        fault_began_ms,
        fault_ended_ms,
    }
}

/// The promise: nothing answered 200 is lost, and at most `duplicates` replies go more than
/// once, each at most `sends_each` times.
fn assert_promise(tally: &Tally, duplicates: usize, sends_each: usize, why: &str) {
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
        tally.duplicates.len() <= duplicates
            && tally.duplicates.iter().all(|d| d.sends <= sends_each),
        "{}: {} replies sent more than once (allowed {duplicates}, each at most {sends_each} \
         times: {why}): {:?}",
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
    let run = scenario("rabbitmq stopped+started", Trouble::RabbitRestart).await;
    assert_promise(&run.tally, 0, 1, "none expected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_stopped_and_started_loses_nothing() {
    let run = scenario("redis stopped+started", Trouble::RedisRestart).await;
    assert_promise(&run.tally, 0, 1, "none expected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_killed_and_restarted_loses_nothing() {
    let run = scenario("gateway SIGKILL", Trouble::GatewayKill).await;
    assert_promise(
        &run.tally,
        0,
        1,
        "none expected: the sent marker stops a republished event",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_killed_and_restarted_loses_nothing() {
    let run = scenario("worker SIGKILL", Trouble::WorkerKill).await;
    assert_promise(
        &run.tally,
        CONCURRENCY,
        2,
        "a send in progress at the kill, delivered although the worker died before marking it \
         sent, goes again on redelivery; at most one per event in progress",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wechat_slow_loses_nothing() {
    let run = scenario("wechat 4 s per call", Trouble::WechatSlow).await;
    assert_promise(&run.tally, 0, 1, "none expected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wechat_failing_loses_nothing() {
    let run = scenario("wechat 502 / errcode -1", Trouble::WechatErrors).await;
    assert_promise(&run.tally, 0, 1, "none expected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_and_restarted_loses_nothing() {
    let Run {
        tally,
        fault_began_ms,
        fault_ended_ms,
    } = scenario("redis SIGKILL", Trouble::RedisKill).await;
    // A reply goes twice only if its sent marker was lost and its event came again. The marker
    // is written after WeChat answered the send, so a lost one belongs to a send made at most
    // AOF_UNWRITTEN before the kill (acknowledged, but its write postponed), or to one in
    // progress at the kill (its marker refused by the dead server). While Redis is down no send
    // starts (the marker cannot be checked), and sends answer in milliseconds here, so one in
    // progress at the kill reached WeChat before the restart; sends after the restart have
    // their markers on a server that is not killed again.
    let from_ms = fault_began_ms - millis(AOF_UNWRITTEN);
    let to_ms = fault_ended_ms;
    let exposed = tally.first_sent_between(from_ms, to_ms);
    println!("  sends whose sent marker the kill could lose: {exposed}");
    assert_promise(
        &tally,
        exposed,
        2,
        "a sent marker lost with the unwritten end of the append-only file, or refused at \
         the kill, and the event delivered again",
    );
    for d in &tally.duplicates {
        assert!(
            (from_ms..=to_ms).contains(&d.first_sent_ms),
            "{}: {} was first sent at {} ms, outside the kill's window {from_ms}..={to_ms}: \
             no lost write explains its second send",
            tally.scenario,
            d.content,
            d.first_sent_ms
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wechat_slower_than_the_timeout_loses_nothing() {
    let run = scenario(
        "wechat answers after the worker's timeout",
        Trouble::WechatSlowerThanTimeout,
    )
    .await;
    let tally = &run.tally;
    assert!(
        tally.timed_out > 0,
        "{}: no send outlasted the worker's timeout; the scenario tested nothing",
        tally.scenario
    );
    assert_promise(
        tally,
        tally.timed_out,
        MAX_ATTEMPTS as usize,
        "WeChat delivered a send whose answer came after the worker's timeout, so the worker \
         tried it again; once per attempt at most",
    );
    // Every extra send is one the worker gave up on: at most one send per content was
    // answered in time.
    for d in &tally.duplicates {
        assert!(
            d.sends - d.timed_out <= 1,
            "{}: {} was sent {} times but only {} timed out",
            tally.scenario,
            d.content,
            d.sends,
            d.timed_out
        );
    }
}

/// A duration in whole milliseconds, as the simulator's clock counts.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
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
    let world = World::start(Services::Shared, None).await;
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

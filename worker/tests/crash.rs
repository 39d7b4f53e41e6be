//! A wx-worker process killed with SIGKILL in the middle of a batch and started again:
//! every event still gets its reply (docs/contract.md §6 crash windows).

#![allow(clippy::expect_used)] // test code: a worker that cannot start should fail the test

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use wxgate_sim::{Fault, Inbound, random_openid};

const EVENTS: usize = 500;
/// `worker.concurrency` of the killed worker: how many events it may be in the middle of.
const CONCURRENCY: usize = 4;

fn spawn_worker(h: &Harness) -> tokio::process::Child {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/tutorial.toml");
    tokio::process::Command::new(env!("CARGO_BIN_EXE_wx-worker"))
        .args(["--config", config])
        .env("WXGATE__NAMESPACE", &h.ns)
        .env("WXGATE__REDIS__URL", redis_url())
        .env("WXGATE__RABBITMQ__URL", rabbit_url())
        .env("WXGATE__RABBITMQ__QUEUE_TYPE", "classic")
        .env("WXGATE__WECHAT__API_BASE", h.sim.base_url())
        .env("WXGATE__WORKER__HTTP_LISTEN", "127.0.0.1:0")
        .env("WXGATE__WORKER__CONCURRENCY", CONCURRENCY.to_string())
        .env("WXGATE__WORKER__RETRY_DELAYS_MS", "50,100")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("wx-worker starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_batch_and_restarted_delivers_every_reply() {
    let h = Harness::new(&[]).await;
    // Slow sends keep the batch in progress long enough to kill the worker in the middle.
    h.sim
        .inject(SEND, Fault::latency(Duration::from_millis(10)));
    let users: Vec<String> = (0..EVENTS).map(|_| random_openid()).collect();
    for (i, user) in users.iter().enumerate() {
        let msg_id = 900_000 + u64::try_from(i).unwrap();
        h.publish_xml(&Inbound::now(ORIGINAL_ID, user).text(msg_id, "crash test"))
            .await;
    }

    let mut first = spawn_worker(&h);
    h.sim.wait_for_calls(SEND, 100, WAIT).await.unwrap();
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let sent_before_restart = h.sim.call_count(SEND);
    assert!(
        sent_before_restart < EVENTS as u64,
        "the batch finished before the kill; slow the sends down"
    );

    let mut second = spawn_worker(&h);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let expected: HashSet<&str> = users.iter().map(String::as_str).collect();
    loop {
        let answered: HashSet<String> = h
            .sim
            .calls_to(SEND)
            .iter()
            .filter(|c| c.errcode == Some(0))
            .filter_map(|c| c.body["touser"].as_str().map(str::to_owned))
            .collect();
        if expected.iter().all(|u| answered.contains(*u)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {EVENTS} replies arrived",
            answered.len()
        );
        h.sim
            .wait_for_calls(SEND, h.sim.call_count(SEND) + 1, Duration::from_secs(5))
            .await
            .ok();
    }
    second.start_kill().unwrap();
    second.wait().await.unwrap();

    // The crash window: a worker killed after WeChat accepted a send but before it wrote the
    // sent marker leaves the delivery unacked, and the next worker sends it again. Once the
    // marker is written a redelivery is skipped, and an acked event is never redelivered.
    // So only the events in progress at the kill, at most CONCURRENCY, may go twice, and
    // none more than twice (the second worker is the last one).
    let mut sends: HashMap<String, usize> = HashMap::new();
    for call in h.sim.calls_to(SEND).iter().filter(|c| c.errcode == Some(0)) {
        if let Some(user) = call.body["touser"].as_str() {
            *sends.entry(user.to_owned()).or_default() += 1;
        }
    }
    let twice: Vec<_> = sends.iter().filter(|&(_, &n)| n > 1).collect();
    assert!(
        twice.len() <= CONCURRENCY && twice.iter().all(|&(_, &n)| n == 2),
        "{} events sent more than once (user, sends): {twice:?}; the crash window allows \
         one duplicate for each of the {CONCURRENCY} events in progress at the kill",
        twice.len()
    );
    h.finish().await;
}

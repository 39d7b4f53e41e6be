//! wxgate's integration tests: each test runs its own gateway (`wx_gateway::serve`) in its
//! own namespace against the real Redis and RabbitMQ (`WXGATE__REDIS__URL`,
//! `WXGATE__RABBITMQ__URL`), pushes to it as WeChat would, and checks what it answered and
//! what it published. The helpers are the `wxgate-tests` library (`tests/src`).

// clippy.toml allows unwrap/expect inside `#[test]` functions only; the helpers of these
// test modules are test code too, and a panic is how they fail a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bad_input;
mod callbacks;
mod dedup;
mod hostile;
mod one_thread;
mod outage;
mod passive;
mod publisher;
mod rotation;
mod shutdown;
mod topology;
mod vectors;
mod verify;

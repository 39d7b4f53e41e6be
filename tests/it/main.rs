//! wxgate's integration tests: each test runs its own gateway (`wx_gateway::serve`) in its
//! own namespace against the real Redis and RabbitMQ (`WXGATE__REDIS__URL`,
//! `WXGATE__RABBITMQ__URL`), pushes to it as WeChat would, and checks what it answered and
//! what it published. The helpers are the `wxgate-tests` library (`tests/src`).

mod bad_input;
mod callbacks;
mod dedup;
mod outage;
mod passive;
mod rotation;
mod shutdown;
mod vectors;
mod verify;

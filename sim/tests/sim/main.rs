//! Behaviour tests of the simulator, through HTTP as its users see it.

// Test helpers outside `#[test]` functions panic on purpose too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod control;
mod custom;
mod menu;
mod others;
mod push;
mod qrcode;
mod support;
mod token;

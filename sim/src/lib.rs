//! The WeChat simulator: what tests, benchmarks and `wxgate dev` use as
//! "WeChat".
//!
//! Two halves:
//!
//! - a fake WeChat API server ([`start`] → [`Sim`]): access tokens with
//!   WeChat's renewal, grace and force-refresh rules, customer-service,
//!   template and mass messages, media uploads, QR codes, menus, JS-SDK tickets, users and
//!   OAuth, each validated with WeChat's errcodes (docs/protocol.md §5–§13); with a
//!   call log, fault injection, a controllable clock and an HTTP control
//!   API under `/_sim/`;
//! - WeChat's pushing side ([`PushClient`], [`Inbound`]): builds the XML
//!   of every inbound message and event, signs and encrypts it as WeChat
//!   does (plain, compat, safe), delivers it with WeChat's timeout and
//!   retries, and judges the answer as WeChat would (docs/protocol.md §1–§4).
//!
//! It must not be used against real WeChat or hold real secrets: state is
//! in memory only, the control API has no authentication, and the call log
//! (served by `GET /_sim/calls`) keeps access tokens. Protocol rules
//! (signatures, crypto, XML) come from the `wechat` crate, never
//! re-implemented here.

mod api;
mod calls;
mod clock;
mod config;
mod control;
mod errcode;
mod fault;
mod inbound;
mod media;
mod menu;
mod message;
mod push;
mod qrcode;
mod query;
mod server;
mod state;
mod token;
mod user;

pub use calls::{Call, LiveCall};
pub use config::{Interaction, OpenIdPolicy, Quotas, SimConfig, WindowRule, WindowRules};
pub use fault::{ANY_PATH, Fault, FaultKind};
pub use inbound::{Inbound, MassJobResult, MsgIdGen, random_openid};
pub use media::{MediaLimits, UploadedMedia};
pub use push::{Answer, PushAccount, PushClient, PushError, PushMode, PushOutcome, VerifyOutcome};
pub use qrcode::{QrScene, QrTicket};
pub use server::{LIVE_CALLS_CAPACITY, Sim, SimError, Timeout, start};
pub use user::OAuthScope;
/// Protocol types that appear in this crate's API, re-exported so callers
/// need not depend on `wechat` for them.
pub use wechat::{PicsEvent, Reply, ScanCodeEvent};

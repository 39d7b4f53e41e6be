//! WeChat Official Account protocol: signatures, AES message crypto,
//! typed messages, passive replies, rules, event ids.
//!
//! No I/O, no async runtime, no clock, no RNG. `sim`, `cli` and the
//! tests rely on that: callers pass in times, nonces and random bytes, so
//! every function is deterministic. Nothing here panics on input data.
//!
//! A callback, in order: [`verify_url_signature`] or
//! [`parse_envelope`] + [`verify_msg_signature`] + [`decrypt_utf8`]; then
//! [`parse`] into an [`InboundMessage`], [`event_id()`] for dedup,
//! [`Rules::decide`] for a [`Reply`], [`render`] and, for encrypted
//! callbacks, [`seal_reply`].

pub mod crypto;
pub mod errcode;
pub mod event_id;
pub mod jssdk;
pub mod message;
pub mod oauth;
pub mod reply;
pub mod rules;
pub mod signature;
mod xml;

pub use crypto::{
    AesKey, DecryptError, KeyError, SealedReply, decrypt, decrypt_utf8, encrypt,
    parse_sealed_reply, seal_reply,
};
pub use event_id::{EventId, event_id};
pub use message::{
    Envelope, InboundMessage, KfSessionEvent, Limits, MessageKind, ParseError, PicsEvent,
    ScanCodeEvent, SubscribeMsgEvent, SubscribeMsgItem, parse, parse_envelope, parse_str,
};
pub use reply::{Article, RenderedReply, Reply, parse_reply, render};
pub use rules::{
    ArticleSpec, Decision, MatchSpec, MediaSpec, MusicSpec, OneOrMany, ReplySpec, RuleError,
    RulePath, RuleProblem, RuleSpec, Rules, TransferSpec, VideoSpec, compile,
};
pub use signature::{
    SignatureError, jsapi_signature, msg_signature, url_signature, verify_msg_signature,
    verify_url_signature,
};

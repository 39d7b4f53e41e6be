//! Parametric QR codes (docs/protocol.md §9): `/cgi-bin/qrcode/create` and the
//! image at `/cgi-bin/showqrcode`.

use bytes::Bytes;
use rand::Rng;
use serde::Serialize;
use serde_json::{Value, json};

use crate::api::{Ctx, Outcome, str_field};
use crate::errcode::ApiError;
use crate::state::{State, random_string};

/// Longest lifetime of a temporary code, in seconds (30 days).
const MAX_EXPIRE_SECONDS: i64 = 2_592_000;
/// Lifetime of a temporary code created without `expire_seconds`.
const DEFAULT_EXPIRE_SECONDS: i64 = 60;
/// Permanent codes an account may create.
const MAX_PERMANENT: u64 = 100_000;

/// A QR ticket the simulator issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QrTicket {
    /// The account that created it.
    pub appid: String,
    /// The ticket, as returned (contains `+`, `/`, `=`).
    pub ticket: String,
    /// The URL encoded in the image.
    pub url: String,
    /// The scene value.
    pub scene: QrScene,
    /// Simulated Unix ms at which it stops working; `None` for permanent codes.
    pub expires_at_ms: Option<i64>,
}

/// The scene of a QR code: `scene_id` or `scene_str`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QrScene {
    /// `QR_SCENE` / `QR_LIMIT_SCENE`.
    Id(u64),
    /// `QR_STR_SCENE` / `QR_LIMIT_STR_SCENE`.
    Str(String),
}

impl QrScene {
    /// The scene as it appears in `EventKey` (after `qrscene_` for follows).
    pub fn event_value(&self) -> String {
        match self {
            QrScene::Id(id) => id.to_string(),
            QrScene::Str(text) => text.clone(),
        }
    }
}

/// `POST /cgi-bin/qrcode/create`.
pub(crate) fn create(state: &mut State, appid: &str, ctx: &Ctx<'_>) -> Result<Value, ApiError> {
    let body = ctx.object()?;
    let action = str_field(body, "action_name").ok_or(ApiError::new(40053))?;
    let (permanent, by_id) = match action {
        "QR_SCENE" => (false, true),
        "QR_STR_SCENE" => (false, false),
        "QR_LIMIT_SCENE" => (true, true),
        "QR_LIMIT_STR_SCENE" => (true, false),
        _ => return Err(ApiError::new(40053)),
    };
    let scene = body
        .get("action_info")
        .and_then(|info| info.get("scene"))
        .and_then(Value::as_object)
        .ok_or(ApiError::new(40053))?;
    let scene = if by_id {
        let id = scene
            .get("scene_id")
            .and_then(Value::as_u64)
            .ok_or(ApiError::new(40053))?;
        let max = if permanent {
            100_000
        } else {
            u64::from(u32::MAX)
        };
        if !(1..=max).contains(&id) {
            return Err(ApiError::new(40053));
        }
        QrScene::Id(id)
    } else {
        let text = str_field(scene, "scene_str").ok_or(ApiError::new(40053))?;
        if text.len() > 64 {
            return Err(ApiError::new(40053));
        }
        QrScene::Str(text.to_owned())
    };
    let expire_seconds = if permanent {
        None
    } else {
        let seconds = match body.get("expire_seconds") {
            None | Some(Value::Null) => DEFAULT_EXPIRE_SECONDS,
            Some(value) => value.as_i64().ok_or(ApiError::new(40035))?,
        };
        if !(1..=MAX_EXPIRE_SECONDS).contains(&seconds) {
            return Err(ApiError::new(40035));
        }
        Some(seconds)
    };

    let account = state.accounts.get_mut(appid).ok_or(ApiError::new(40013))?;
    if permanent {
        // Exceeding the permanent-code limit is reported as 40053 (unconfirmed).
        if account.permanent_qr_codes >= MAX_PERMANENT {
            return Err(ApiError::new(40053));
        }
        account.permanent_qr_codes += 1;
    }
    let ticket = new_ticket();
    let url = format!("http://weixin.qq.com/q/{}", random_string(22));
    let expires_at_ms =
        expire_seconds.map(|seconds| ctx.now_ms.saturating_add(seconds.saturating_mul(1000)));
    state.qr_tickets.insert(
        ticket.clone(),
        QrTicket {
            appid: appid.to_owned(),
            ticket: ticket.clone(),
            url: url.clone(),
            scene,
            expires_at_ms,
        },
    );
    let mut answer = json!({"ticket": ticket, "url": url});
    if let (Some(seconds), Value::Object(map)) = (expire_seconds, &mut answer) {
        map.insert("expire_seconds".to_owned(), json!(seconds));
    }
    Ok(answer)
}

/// `GET /cgi-bin/showqrcode?ticket=`: a JPEG for a live ticket, else 404.
pub(crate) fn show(state: &State, ctx: &Ctx<'_>) -> Outcome {
    let live = ctx
        .query("ticket")
        .and_then(|ticket| state.qr_tickets.get(ticket))
        .is_some_and(|ticket| ticket.expires_at_ms.is_none_or(|at| at > ctx.now_ms));
    if live {
        Outcome::Image(Bytes::from_static(JPEG))
    } else {
        Outcome::NotFound
    }
}

/// An opaque base64-looking ticket like WeChat's, with `+`, `/` and `=`.
fn new_ticket() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = rand::rng();
    let mut ticket = String::from("gQ");
    for position in 0..90 {
        // Every ticket carries a `+` and a `/`, so clients must URL-encode it.
        let byte = match position {
            10 => b'+',
            20 => b'/',
            _ => ALPHABET
                .get(rng.random_range(0..ALPHABET.len()))
                .copied()
                .unwrap_or(b'A'),
        };
        ticket.push(char::from(byte));
    }
    ticket.push_str("==");
    ticket
}

/// A tiny JPEG-shaped body (SOI, JFIF header, EOI); not a decodable image.
const JPEG: &[u8] = &[
    0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00, 0x01, 0x01, 0x00, 0x00, 0x01,
    0x00, 0x01, 0x00, 0x00, 0xFF, 0xD9,
];

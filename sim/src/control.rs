//! The control API under `/_sim/`, so a running simulator can be driven
//! with curl. Calls to it are not logged.
//!
//! | route | does |
//! |---|---|
//! | `GET /_sim/calls[?path=P][&limit=N]` | the last N (default 1000) logged calls, oldest first |
//! | `GET /_sim/stats` | calls per path since start, and the simulated time |
//! | `POST /_sim/faults` | inject: `{"path": P, "errcode": N \| "status": S \| "latency_ms": D \| "late_answer_ms": D \| "drop": true, "times": K, "probability": F}` |
//! | `DELETE /_sim/faults` | remove every fault |
//! | `POST /_sim/invalidate/{appid}` | current tokens → `40001` |
//! | `POST /_sim/expire/{appid}` | current tokens → `42001` |
//! | `POST /_sim/reject/{appid}` | current tokens → `40001`, but `stable_token` keeps returning its token |
//! | `POST /_sim/clock` | `{"advance_s": N}` or `{"advance_ms": N}` |
//! | `POST /_sim/users` | `{"appid", "openid", "interaction"?: "message" \| "menu_click" \| "follow" \| "qr_scan" \| "payment" \| "unfollow"}` |
//! | `POST /_sim/oauth/code` | `{"appid", "openid", "scope"?: "snsapi_base" \| "snsapi_userinfo"}` → `{"code"}` |

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde::Deserialize;
use serde_json::json;

use crate::config::Interaction;
use crate::fault::FaultSpec;
use crate::server::{Sim, json_response};
use crate::user::OAuthScope;

const DEFAULT_CALL_LIMIT: usize = 1000;

pub(crate) fn handle(
    sim: &Sim,
    method: &Method,
    path: &str,
    query: &[(String, String)],
    body: &Bytes,
) -> Response<Full<Bytes>> {
    let param = |name: &str| {
        query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let route = path.trim_start_matches("/_sim").trim_end_matches('/');
    let result = match (method.as_str(), route) {
        ("GET", "/calls") => {
            let limit = param("limit")
                .and_then(|limit| limit.parse().ok())
                .unwrap_or(DEFAULT_CALL_LIMIT);
            Ok(json!(sim.recent_calls(param("path"), limit)))
        }
        ("GET", "/stats") => Ok(json!({
            "calls": sim.call_counts(),
            "now_ms": sim.now_unix_ms(),
        })),
        ("POST", "/faults") => parse::<FaultSpec>(body).and_then(|spec| {
            let path = spec.path.clone();
            let fault = spec.into_fault().map_err(bad_request)?;
            sim.inject(&path, fault);
            Ok(json!({"ok": true}))
        }),
        ("DELETE", "/faults") => {
            sim.clear_faults();
            Ok(json!({"ok": true}))
        }
        ("POST", "/clock") => parse::<ClockSpec>(body).map(|spec| {
            let by = Duration::from_secs(spec.advance_s.unwrap_or(0))
                + Duration::from_millis(spec.advance_ms.unwrap_or(0));
            sim.advance_clock(by);
            json!({"now_ms": sim.now_unix_ms()})
        }),
        ("POST", "/users") => parse::<UserSpec>(body).and_then(|spec| {
            let result = match spec.interaction {
                Some(interaction) => sim.record_interaction(&spec.appid, &spec.openid, interaction),
                None => sim.add_user(&spec.appid, &spec.openid),
            };
            result.map_err(|error| not_found(error.to_string()))?;
            Ok(json!({"ok": true}))
        }),
        ("POST", "/oauth/code") => parse::<CodeSpec>(body).and_then(|spec| {
            let scope = spec.scope.unwrap_or(OAuthScope::Base);
            let code = sim
                .mint_oauth_code(&spec.appid, &spec.openid, scope)
                .map_err(|error| not_found(error.to_string()))?;
            Ok(json!({"code": code}))
        }),
        ("POST", route) if route.starts_with("/invalidate/") => {
            let appid = route.trim_start_matches("/invalidate/");
            Ok(json!({"invalidated": sim.invalidate_tokens(appid)}))
        }
        ("POST", route) if route.starts_with("/reject/") => {
            let appid = route.trim_start_matches("/reject/");
            Ok(json!({"rejected": sim.reject_tokens(appid)}))
        }
        ("POST", route) if route.starts_with("/expire/") => {
            let appid = route.trim_start_matches("/expire/");
            Ok(json!({"expired": sim.expire_tokens(appid)}))
        }
        _ => Err((StatusCode::NOT_FOUND, "no such control route".to_owned())),
    };
    match result {
        Ok(json) => json_response(&json),
        Err((status, message)) => {
            let mut response = json_response(&json!({"error": message}));
            *response.status_mut() = status;
            response
        }
    }
}

type ControlError = (StatusCode, String);

fn parse<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ControlError> {
    serde_json::from_slice(body).map_err(|error| bad_request(error.to_string()))
}

fn bad_request(message: String) -> ControlError {
    (StatusCode::BAD_REQUEST, message)
}

fn not_found(message: String) -> ControlError {
    (StatusCode::NOT_FOUND, message)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockSpec {
    advance_s: Option<u64>,
    advance_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserSpec {
    appid: String,
    openid: String,
    interaction: Option<Interaction>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeSpec {
    appid: String,
    openid: String,
    scope: Option<OAuthScope>,
}

//! Access tokens (docs/protocol.md §5): `/cgi-bin/token`, `/cgi-bin/stable_token`,
//! and the JS-SDK ticket (§11.1).

use serde_json::{Value, json};

use crate::api::{Ctx, str_field};
use crate::clock::{duration_ms, quota_day};
use crate::errcode::ApiError;
use crate::state::{State, random_string};

/// `GET /cgi-bin/token`: a new token on every call; the previous one keeps
/// working for the grace period.
pub(crate) fn classic(state: &mut State, ctx: &Ctx<'_>) -> Result<Value, ApiError> {
    if ctx.query("grant_type") != Some("client_credential") {
        return Err(ApiError::new(40002));
    }
    let appid = non_empty(ctx.query("appid")).ok_or(ApiError::new(41002))?;
    let secret = non_empty(ctx.query("secret")).ok_or(ApiError::new(41004))?;
    let account = state.accounts.get(appid).ok_or(ApiError::new(40013))?;
    if account.secret != secret {
        // On the token endpoint 40001 means a wrong AppSecret (docs/protocol.md §5.4).
        return Err(ApiError::with_msg(
            40001,
            "invalid credential, access_token is invalid or not latest",
        ));
    }
    let now = ctx.now_ms;
    state.charge_quota(appid, "/cgi-bin/token", now)?;
    let token = state.issue_token(appid, now);
    let previous = state
        .accounts
        .get_mut(appid)
        .and_then(|account| account.classic_current.replace(token.clone()));
    if let Some(previous) = previous {
        let grace = duration_ms(state.config.classic_grace);
        state.revoke_token(&previous, now.saturating_add(grace));
    }
    Ok(json!({
        "access_token": token,
        "expires_in": state.config.token_expires_in.as_secs(),
    }))
}

/// `POST /cgi-bin/stable_token`: the same token until it is within the
/// renew-ahead time of expiry; `force_refresh` replaces it at most once per
/// interval and a limited number of times per day.
pub(crate) fn stable(state: &mut State, ctx: &Ctx<'_>) -> Result<Value, ApiError> {
    let body = ctx.object()?;
    if body.get("grant_type").and_then(Value::as_str) != Some("client_credential") {
        return Err(ApiError::new(40002));
    }
    let appid = str_field(body, "appid").ok_or(ApiError::new(41002))?;
    let secret = str_field(body, "secret").ok_or(ApiError::new(41004))?;
    let force = match body.get("force_refresh") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(force)) => *force,
        Some(_) => return Err(ApiError::new(47001)),
    };
    let account = state.accounts.get(appid).ok_or(ApiError::new(40013))?;
    if account.secret != secret {
        return Err(ApiError::new(40125));
    }
    let now = ctx.now_ms;
    state.charge_quota(appid, "/cgi-bin/stable_token", now)?;

    let renew_ahead = duration_ms(state.config.stable_renew_ahead);
    let min_interval = duration_ms(state.config.force_refresh_min_interval);
    let per_day = state.config.force_refresh_per_day;
    let current = state
        .accounts
        .get(appid)
        .and_then(|account| account.stable_current.clone())
        .and_then(|token| {
            let record = state.tokens.get(&token)?;
            // A rejected token is still current for WeChat's stable endpoint.
            record.check_lifetime(now).ok()?;
            Some((token, record.expires_at_ms))
        });

    let account = state.accounts.get_mut(appid).ok_or(ApiError::new(40013))?;
    let too_soon = account
        .last_force_ms
        .is_some_and(|last| now.saturating_sub(last) < min_interval);
    let (token, expires_at_ms) = if force && !too_soon {
        let day = quota_day(now);
        if account.force_day != day {
            account.force_day = day;
            account.forces_today = 0;
        }
        if account.forces_today >= per_day {
            return Err(ApiError::new(45009));
        }
        account.forces_today += 1;
        account.last_force_ms = Some(now);
        if let Some((old, _)) = &current {
            state.revoke_token(old, now);
        }
        new_stable_token(state, appid, now)
    } else {
        // Normal mode, or a force refresh too soon after the last one (which
        // WeChat answers without refreshing).
        match current {
            Some((token, expires_at_ms)) if expires_at_ms.saturating_sub(now) > renew_ahead => {
                (token, expires_at_ms)
            }
            // Renewal: the old token stays valid until its own expiry.
            _ => new_stable_token(state, appid, now),
        }
    };
    Ok(json!({
        "access_token": token,
        "expires_in": expires_at_ms.saturating_sub(now).max(0) / 1000,
    }))
}

fn new_stable_token(state: &mut State, appid: &str, now: i64) -> (String, i64) {
    let token = state.issue_token(appid, now);
    if let Some(account) = state.accounts.get_mut(appid) {
        account.stable_current = Some(token.clone());
    }
    let expires_at_ms = now.saturating_add(duration_ms(state.config.token_expires_in));
    (token, expires_at_ms)
}

/// `GET /cgi-bin/ticket/getticket?type=jsapi`: the account's JS-SDK ticket,
/// the same one until it expires.
pub(crate) fn jsapi_ticket(
    state: &mut State,
    appid: &str,
    ctx: &Ctx<'_>,
) -> Result<Value, ApiError> {
    let now = ctx.now_ms;
    let lifetime = duration_ms(state.config.jsapi_ticket_expires_in);
    let account = state.accounts.get_mut(appid).ok_or(ApiError::new(40013))?;
    let (ticket, expires_at_ms) = match ctx.query("type") {
        Some("jsapi") => match &account.jsapi_ticket {
            Some((ticket, expires_at)) if *expires_at > now => (ticket.clone(), *expires_at),
            _ => {
                let fresh = (random_string(86), now.saturating_add(lifetime));
                account.jsapi_ticket = Some(fresh.clone());
                fresh
            }
        },
        Some("wx_card") => (random_string(86), now.saturating_add(lifetime)),
        _ => return Err(ApiError::with_msg(40097, "invalid args")),
    };
    Ok(json!({
        "errcode": 0,
        "errmsg": "ok",
        "ticket": ticket,
        "expires_in": expires_at_ms.saturating_sub(now) / 1000,
    }))
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|value| !value.is_empty())
}

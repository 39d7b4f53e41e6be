//! Users: `/cgi-bin/user/info` (docs/protocol.md §12.7) and web authorization
//! (§12.2, §12.4) with codes minted by the simulator.

use serde_json::{Value, json};

use crate::api::Ctx;
use crate::clock::duration_ms;
use crate::errcode::ApiError;
use crate::state::{OAuthCode, State, WebToken, random_string};

/// The scope an OAuth code was granted with (docs/protocol.md §12.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum OAuthScope {
    /// `snsapi_base`: OpenID only; `/sns/userinfo` answers `48001`.
    #[serde(rename = "snsapi_base")]
    Base,
    /// `snsapi_userinfo`: the profile via `/sns/userinfo`.
    #[serde(rename = "snsapi_userinfo")]
    UserInfo,
}

impl OAuthScope {
    /// `snsapi_base` or `snsapi_userinfo`.
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthScope::Base => "snsapi_base",
            OAuthScope::UserInfo => "snsapi_userinfo",
        }
    }
}

/// `GET /cgi-bin/user/info?openid=`.
pub(crate) fn info(state: &State, appid: &str, ctx: &Ctx<'_>) -> Result<Value, ApiError> {
    let openid = ctx
        .query("openid")
        .filter(|openid| !openid.is_empty())
        .ok_or(ApiError::new(41009))?;
    state.check_openid(appid, openid)?;
    let user = state
        .accounts
        .get(appid)
        .and_then(|account| account.users.get(openid));
    match user {
        Some(user) if !user.following => Ok(json!({"subscribe": 0, "openid": openid})),
        Some(user) => Ok(profile(
            openid,
            user.followed_at_ms / 1000,
            user.subscribe_scene,
        )),
        None => Ok(profile(openid, ctx.now_ms / 1000, "ADD_SCENE_SEARCH")),
    }
}

fn profile(openid: &str, subscribe_time: i64, scene: &str) -> Value {
    json!({
        "subscribe": 1,
        "openid": openid,
        "language": "zh_CN",
        "subscribe_time": subscribe_time,
        "remark": "",
        "groupid": 0,
        "tagid_list": [],
        "subscribe_scene": scene,
        "qr_scene": 0,
        "qr_scene_str": "",
    })
}

/// Mints a single-use code, as WeChat's authorize page would redirect with.
pub(crate) fn mint_code(
    state: &mut State,
    appid: &str,
    openid: &str,
    scope: OAuthScope,
    now_ms: i64,
) -> Option<String> {
    if !state.accounts.contains_key(appid) {
        return None;
    }
    let code = random_string(32);
    let expires_at_ms = now_ms.saturating_add(duration_ms(state.config.oauth_code_lifetime));
    state.oauth_codes.insert(
        code.clone(),
        OAuthCode {
            appid: appid.to_owned(),
            openid: openid.to_owned(),
            scope,
            expires_at_ms,
            used: false,
        },
    );
    Some(code)
}

/// `GET /sns/oauth2/access_token?appid&secret&code&grant_type=authorization_code`.
pub(crate) fn oauth_access_token(state: &mut State, ctx: &Ctx<'_>) -> Result<Value, ApiError> {
    let non_empty = |name: &str| ctx.query(name).filter(|value| !value.is_empty());
    let appid = non_empty("appid").ok_or(ApiError::new(41002))?;
    let secret = non_empty("secret").ok_or(ApiError::new(41004))?;
    let code = non_empty("code").ok_or(ApiError::new(41008))?;
    if ctx.query("grant_type") != Some("authorization_code") {
        return Err(ApiError::new(40002));
    }
    let account = state.accounts.get(appid).ok_or(ApiError::new(40013))?;
    if account.secret != secret {
        return Err(ApiError::new(40125));
    }
    let now = ctx.now_ms;
    let minted = state
        .oauth_codes
        .get_mut(code)
        .filter(|minted| minted.appid == appid)
        .ok_or(ApiError::new(40029))?;
    if minted.used {
        return Err(ApiError::new(40163));
    }
    if minted.expires_at_ms <= now {
        return Err(ApiError::new(42003));
    }
    minted.used = true;
    let openid = minted.openid.clone();
    let scope = minted.scope;
    let access_token = random_string(110);
    let refresh_token = random_string(110);
    let expires_in = state.config.token_expires_in;
    state.web_tokens.insert(
        access_token.clone(),
        WebToken {
            appid: appid.to_owned(),
            openid: openid.clone(),
            scope,
            expires_at_ms: now.saturating_add(duration_ms(expires_in)),
        },
    );
    Ok(json!({
        "access_token": access_token,
        "expires_in": expires_in.as_secs(),
        "refresh_token": refresh_token,
        "openid": openid,
        "scope": scope.as_str(),
    }))
}

/// `GET /sns/userinfo?access_token=WEB_TOKEN&openid=`.
pub(crate) fn sns_userinfo(state: &State, ctx: &Ctx<'_>) -> Result<Value, ApiError> {
    let token = ctx
        .query("access_token")
        .filter(|token| !token.is_empty())
        .ok_or(ApiError::new(41001))?;
    // A global access token is not a web token: 40001 as WeChat answers.
    let web = state.web_tokens.get(token).ok_or(ApiError::new(40001))?;
    if web.expires_at_ms <= ctx.now_ms {
        return Err(ApiError::new(42001));
    }
    if web.scope != OAuthScope::UserInfo {
        return Err(ApiError::new(48001));
    }
    if ctx.query("openid") != Some(web.openid.as_str()) {
        return Err(ApiError::new(40003));
    }
    Ok(json!({
        "openid": web.openid,
        "nickname": "Simulated User",
        "sex": 0,
        "province": "",
        "city": "",
        "country": "",
        "headimgurl": "https://thirdwx.qlogo.cn/mmopen/sim/132",
        "privilege": [],
    }))
}

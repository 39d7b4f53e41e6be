//! Everything the simulated WeChat remembers, kept behind one mutex that is
//! never held across an `.await`.

use std::collections::HashMap;

use rand::Rng;
use serde_json::Value;

use crate::clock::{duration_ms, quota_day};
use crate::config::{Interaction, OpenIdPolicy, SimConfig};
use crate::errcode::ApiError;
use crate::qrcode::QrTicket;

/// Characters of access tokens, tickets' opaque parts and codes.
const TOKEN_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
/// Most windows remembered per user; the ones closing first go.
const MAX_WINDOWS: usize = 16;
/// Dead tokens are forgotten this long after they stopped working.
const TOKEN_MEMORY_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) config: SimConfig,
    pub(crate) accounts: HashMap<String, Account>,
    pub(crate) tokens: HashMap<String, TokenRecord>,
    pub(crate) web_tokens: HashMap<String, WebToken>,
    pub(crate) oauth_codes: HashMap<String, OAuthCode>,
    pub(crate) qr_tickets: HashMap<String, QrTicket>,
    /// Requests to the token endpoints per AppID, whatever the answer.
    pub(crate) token_requests: HashMap<String, u64>,
    /// The next template / mass message id.
    pub(crate) next_msg_id: u64,
}

#[derive(Debug)]
pub(crate) struct TokenRecord {
    pub(crate) appid: String,
    pub(crate) expires_at_ms: i64,
    /// From this time on the token answers `40001`.
    pub(crate) revoked_at_ms: Option<i64>,
    /// API calls answer `40001` although the token is current: see
    /// `Sim::reject_tokens`.
    pub(crate) rejected: bool,
}

impl TokenRecord {
    /// `Ok` while API calls may use it; else `40001` (revoked or rejected)
    /// or `42001` (expired first).
    pub(crate) fn check(&self, now_ms: i64) -> Result<(), ApiError> {
        self.check_lifetime(now_ms)?;
        if self.rejected {
            return Err(ApiError::new(40001));
        }
        Ok(())
    }

    /// Like [`TokenRecord::check`] but blind to rejection: whether WeChat
    /// itself still considers the token current.
    pub(crate) fn check_lifetime(&self, now_ms: i64) -> Result<(), ApiError> {
        let revoked = self.revoked_at_ms.filter(|at| *at <= now_ms);
        let expired = self.expires_at_ms <= now_ms;
        match (revoked, expired) {
            (Some(at), true) if at > self.expires_at_ms => Err(ApiError::new(42001)),
            (Some(_), _) => Err(ApiError::new(40001)),
            (None, true) => Err(ApiError::new(42001)),
            (None, false) => Ok(()),
        }
    }

    fn dead_since(&self) -> i64 {
        self.revoked_at_ms
            .map_or(self.expires_at_ms, |at| at.min(self.expires_at_ms))
    }
}

#[derive(Debug)]
pub(crate) struct WebToken {
    pub(crate) appid: String,
    pub(crate) openid: String,
    pub(crate) scope: crate::OAuthScope,
    pub(crate) expires_at_ms: i64,
}

#[derive(Debug)]
pub(crate) struct OAuthCode {
    pub(crate) appid: String,
    pub(crate) openid: String,
    pub(crate) scope: crate::OAuthScope,
    pub(crate) expires_at_ms: i64,
    pub(crate) used: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct StoredMenu {
    pub(crate) button: Value,
    pub(crate) matchrule: Option<Value>,
    pub(crate) menuid: u64,
}

#[derive(Debug)]
pub(crate) struct Account {
    pub(crate) secret: String,
    pub(crate) classic_current: Option<String>,
    pub(crate) stable_current: Option<String>,
    /// Every token issued and not yet forgotten (for invalidation and pruning).
    pub(crate) issued: Vec<String>,
    quota_day: i64,
    quota_used: HashMap<&'static str, u64>,
    /// Quota paths already warned about today.
    quota_warned: Vec<&'static str>,
    pub(crate) force_day: i64,
    pub(crate) forces_today: u32,
    pub(crate) last_force_ms: Option<i64>,
    pub(crate) users: HashMap<String, User>,
    pub(crate) menu: Option<StoredMenu>,
    pub(crate) conditional_menus: Vec<StoredMenu>,
    pub(crate) next_menuid: u64,
    pub(crate) jsapi_ticket: Option<(String, i64)>,
    pub(crate) permanent_qr_codes: u64,
    /// `(touser, client_msg_id)` → (msgid, first use) for template idempotency.
    pub(crate) template_client_ids: HashMap<(String, String), (u64, i64)>,
    /// `clientmsgid` → msg_id of mass sends.
    pub(crate) mass_client_ids: HashMap<String, u64>,
    /// Uploaded temporary media by `media_id`, and article images by URL.
    pub(crate) media: HashMap<String, crate::media::UploadedMedia>,
}

impl Account {
    fn new(secret: String) -> Account {
        Account {
            secret,
            classic_current: None,
            stable_current: None,
            issued: Vec::new(),
            quota_day: 0,
            quota_used: HashMap::new(),
            quota_warned: Vec::new(),
            force_day: 0,
            forces_today: 0,
            last_force_ms: None,
            users: HashMap::new(),
            menu: None,
            conditional_menus: Vec::new(),
            next_menuid: rand::rng().random_range(400_000_000..500_000_000),
            jsapi_ticket: None,
            permanent_qr_codes: 0,
            template_client_ids: HashMap::new(),
            mass_client_ids: HashMap::new(),
            media: HashMap::new(),
        }
    }

    pub(crate) fn next_menuid(&mut self) -> u64 {
        self.next_menuid = self.next_menuid.saturating_add(1);
        self.next_menuid
    }
}

/// A user as the simulator knows them (per account).
#[derive(Debug)]
pub(crate) struct User {
    pub(crate) following: bool,
    pub(crate) followed_at_ms: i64,
    pub(crate) windows: Vec<Window>,
    pub(crate) last_interaction_ms: Option<i64>,
    pub(crate) typing_until_ms: i64,
    /// How the user followed: `ADD_SCENE_QR_CODE` after a QR scan.
    pub(crate) subscribe_scene: &'static str,
}

impl User {
    fn new(now_ms: i64) -> User {
        User {
            following: true,
            followed_at_ms: now_ms,
            windows: Vec::new(),
            last_interaction_ms: None,
            typing_until_ms: 0,
            subscribe_scene: "ADD_SCENE_SEARCH",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    closes_at_ms: i64,
    /// Messages left; `None` is unlimited.
    remaining: Option<u32>,
}

impl State {
    pub(crate) fn new(config: SimConfig) -> State {
        let accounts = config
            .accounts
            .iter()
            .map(|(appid, secret)| (appid.clone(), Account::new(secret.clone())))
            .collect();
        State {
            config,
            accounts,
            tokens: HashMap::new(),
            web_tokens: HashMap::new(),
            oauth_codes: HashMap::new(),
            qr_tickets: HashMap::new(),
            token_requests: HashMap::new(),
            next_msg_id: rand::rng().random_range(2_000_000_000..3_000_000_000),
        }
    }

    pub(crate) fn add_account(&mut self, appid: &str, secret: &str) {
        match self.accounts.get_mut(appid) {
            Some(account) => account.secret = secret.to_owned(),
            None => {
                self.accounts
                    .insert(appid.to_owned(), Account::new(secret.to_owned()));
            }
        }
    }

    pub(crate) fn next_msg_id(&mut self) -> u64 {
        self.next_msg_id = self.next_msg_id.saturating_add(1);
        self.next_msg_id
    }

    /// Counts one call of `path` against the account's daily quota.
    pub(crate) fn charge_quota(
        &mut self,
        appid: &str,
        path: &'static str,
        now_ms: i64,
    ) -> Result<(), ApiError> {
        let Some(limit) = self.config.quotas.get(path) else {
            return Ok(());
        };
        let Some(account) = self.accounts.get_mut(appid) else {
            return Ok(());
        };
        let day = quota_day(now_ms);
        if account.quota_day != day {
            account.quota_day = day;
            account.quota_used.clear();
            account.quota_warned.clear();
        }
        let used = account.quota_used.entry(path).or_insert(0);
        if *used >= limit {
            if !account.quota_warned.contains(&path) {
                account.quota_warned.push(path);
                tracing::warn!(appid, path, limit, "simulated daily quota used up");
            }
            return Err(ApiError::new(45009));
        }
        *used += 1;
        Ok(())
    }

    /// Issues a fresh access token for `appid` valid for the configured lifetime.
    pub(crate) fn issue_token(&mut self, appid: &str, now_ms: i64) -> String {
        let token = random_token();
        let expires_at_ms = now_ms.saturating_add(duration_ms(self.config.token_expires_in));
        self.tokens.insert(
            token.clone(),
            TokenRecord {
                appid: appid.to_owned(),
                expires_at_ms,
                revoked_at_ms: None,
                rejected: false,
            },
        );
        if let Some(account) = self.accounts.get_mut(appid) {
            let tokens = &mut self.tokens;
            account.issued.retain(|issued| {
                let keep = tokens.get(issued).is_some_and(|record| {
                    record.dead_since().saturating_add(TOKEN_MEMORY_MS) > now_ms
                });
                if !keep {
                    tokens.remove(issued);
                }
                keep
            });
            account.issued.push(token.clone());
        }
        token
    }

    /// Revokes `token` at `at_ms` (or keeps an earlier revocation).
    pub(crate) fn revoke_token(&mut self, token: &str, at_ms: i64) {
        if let Some(record) = self.tokens.get_mut(token) {
            record.revoked_at_ms = Some(record.revoked_at_ms.map_or(at_ms, |old| old.min(at_ms)));
        }
    }

    /// Every live token of `appid` becomes invalid now (`40001`); returns how many.
    pub(crate) fn invalidate_tokens(&mut self, appid: &str, now_ms: i64) -> usize {
        self.for_live_tokens(appid, now_ms, |record| record.revoked_at_ms = Some(now_ms))
    }

    /// Every live token of `appid` answers `40001` on API calls while
    /// `stable_token` keeps returning it; returns how many.
    pub(crate) fn reject_tokens(&mut self, appid: &str, now_ms: i64) -> usize {
        self.for_live_tokens(appid, now_ms, |record| record.rejected = true)
    }

    /// Every live token of `appid` expires now (`42001`); returns how many.
    pub(crate) fn expire_tokens(&mut self, appid: &str, now_ms: i64) -> usize {
        self.for_live_tokens(appid, now_ms, |record| {
            record.expires_at_ms = now_ms;
            // A pending grace-period revocation must not turn 42001 into 40001.
            record.revoked_at_ms = None;
        })
    }

    fn for_live_tokens(
        &mut self,
        appid: &str,
        now_ms: i64,
        mut change: impl FnMut(&mut TokenRecord),
    ) -> usize {
        let Some(account) = self.accounts.get(appid) else {
            return 0;
        };
        let mut changed = 0;
        for token in &account.issued {
            if let Some(record) = self.tokens.get_mut(token)
                && record.check_lifetime(now_ms).is_ok()
            {
                change(record);
                changed += 1;
            }
        }
        changed
    }

    pub(crate) fn record_interaction(
        &mut self,
        appid: &str,
        openid: &str,
        interaction: Interaction,
        now_ms: i64,
    ) -> bool {
        let rule = self.config.windows.for_interaction(interaction);
        let Some(account) = self.accounts.get_mut(appid) else {
            return false;
        };
        let user = account
            .users
            .entry(openid.to_owned())
            .or_insert_with(|| User::new(now_ms));
        match rule {
            None => {
                user.following = false;
                user.windows.clear();
                user.typing_until_ms = 0;
            }
            Some(rule) => {
                if !user.following {
                    user.following = true;
                    user.followed_at_ms = now_ms;
                }
                if interaction == Interaction::QrScan {
                    user.subscribe_scene = "ADD_SCENE_QR_CODE";
                }
                user.last_interaction_ms = Some(now_ms);
                user.windows.retain(|window| window.closes_at_ms > now_ms);
                if user.windows.len() >= MAX_WINDOWS {
                    user.windows.sort_by_key(|window| window.closes_at_ms);
                    user.windows.remove(0);
                }
                user.windows.push(Window {
                    closes_at_ms: now_ms.saturating_add(duration_ms(rule.valid_for)),
                    remaining: rule.messages,
                });
            }
        }
        true
    }

    pub(crate) fn add_user(&mut self, appid: &str, openid: &str, now_ms: i64) -> bool {
        let Some(account) = self.accounts.get_mut(appid) else {
            return false;
        };
        let user = account
            .users
            .entry(openid.to_owned())
            .or_insert_with(|| User::new(now_ms));
        if !user.following {
            user.following = true;
            user.followed_at_ms = now_ms;
        }
        true
    }

    /// Whether `openid` may be addressed at all: `40003` when unknown (strict)
    /// or malformed (any follower). Does not look at following or windows.
    pub(crate) fn check_openid(&self, appid: &str, openid: &str) -> Result<(), ApiError> {
        match self.config.openid_policy {
            OpenIdPolicy::AnyFollower if is_openid(openid) => Ok(()),
            OpenIdPolicy::Strict
                if self
                    .accounts
                    .get(appid)
                    .is_some_and(|account| account.users.contains_key(openid)) =>
            {
                Ok(())
            }
            _ => Err(ApiError::new(40003)),
        }
    }

    /// Whether the user follows the account; unknown users follow under
    /// [`OpenIdPolicy::AnyFollower`].
    pub(crate) fn follows(&self, appid: &str, openid: &str) -> bool {
        match self
            .accounts
            .get(appid)
            .and_then(|account| account.users.get(openid))
        {
            Some(user) => user.following,
            None => self.config.openid_policy == OpenIdPolicy::AnyFollower,
        }
    }

    /// The customer-service window check of one custom message (protocol
    /// §6.4); on success uses one message of a window and stops typing.
    pub(crate) fn use_window(
        &mut self,
        appid: &str,
        openid: &str,
        now_ms: i64,
    ) -> Result<(), ApiError> {
        let policy = self.config.openid_policy;
        let user = self
            .accounts
            .get_mut(appid)
            .and_then(|account| account.users.get_mut(openid));
        let Some(user) = user else {
            return match policy {
                OpenIdPolicy::AnyFollower => Ok(()),
                OpenIdPolicy::Strict => Err(ApiError::new(40003)),
            };
        };
        if !user.following {
            return Err(ApiError::new(45015));
        }
        user.typing_until_ms = 0;
        if policy == OpenIdPolicy::AnyFollower {
            return Ok(());
        }
        user.windows.retain(|window| window.closes_at_ms > now_ms);
        if user.windows.is_empty() {
            return Err(ApiError::new(45015));
        }
        let chosen = user
            .windows
            .iter_mut()
            .filter(|window| window.remaining != Some(0))
            .min_by_key(|window| window.closes_at_ms);
        match chosen {
            None => Err(ApiError::new(45047)),
            Some(window) => {
                if let Some(remaining) = &mut window.remaining {
                    *remaining -= 1;
                }
                Ok(())
            }
        }
    }
}

/// 28 characters of `[A-Za-z0-9_-]`.
pub(crate) fn is_openid(openid: &str) -> bool {
    openid.len() == 28
        && openid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `len` random characters of `[A-Za-z0-9_-]`.
pub(crate) fn random_string(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| {
            let index = rng.random_range(0..TOKEN_CHARS.len());
            char::from(TOKEN_CHARS.get(index).copied().unwrap_or(b'A'))
        })
        .collect()
}

/// An access token shaped like WeChat's (`NN_` and ~150 characters).
fn random_token() -> String {
    let prefix: u8 = rand::rng().random_range(80..100);
    format!("{prefix}_{}", random_string(150))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(expires_at_ms: i64, revoked_at_ms: Option<i64>) -> TokenRecord {
        TokenRecord {
            appid: "wx".to_owned(),
            expires_at_ms,
            revoked_at_ms,
            rejected: false,
        }
    }

    fn check(token: &TokenRecord, now_ms: i64, expected: Option<i64>) {
        assert_eq!(token.check(now_ms).err().map(|e| e.errcode), expected);
    }

    #[test]
    fn token_check_reports_whichever_happened_first() {
        check(&record(1000, None), 999, None);
        check(&record(1000, None), 1000, Some(42001));
        check(&record(1000, Some(500)), 600, Some(40001));
        check(&record(1000, Some(500)), 400, None);
        check(&record(1000, Some(500)), 2000, Some(40001));
        check(&record(1000, Some(1500)), 2000, Some(42001));
    }

    #[test]
    fn openids_are_28_safe_characters() {
        assert!(is_openid("oUSER_OPENID_xxxxxxxxxxxxxxx"));
        assert!(is_openid("oJqxQwYRyZMXFTc8sipB5TSe6Vw4"));
        assert!(!is_openid("short"));
        assert!(!is_openid("oUSER_OPENID_xxxxxxxxxxxxxx!"));
    }
}

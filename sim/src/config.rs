//! What the simulated WeChat is told at start: accounts, token timings,
//! quotas, the OpenID policy and the customer-service window rules.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::Duration;

/// Configuration of a simulated WeChat API server (see [`crate::start`]).
///
/// `SimConfig::default()` has no accounts and WeChat's documented timings
/// and quotas; add accounts with [`SimConfig::with_account`].
#[derive(Clone)]
pub struct SimConfig {
    /// The accounts WeChat knows: AppID → AppSecret.
    pub accounts: BTreeMap<String, String>,
    /// Lifetime of every access token, reported as `expires_in` (WeChat: 7200 s).
    pub token_expires_in: Duration,
    /// How long the previous `/cgi-bin/token` token stays usable after a new
    /// one was issued (docs/protocol.md §5.3; WeChat: 300 s).
    pub classic_grace: Duration,
    /// `/cgi-bin/stable_token` renews a token this long before it expires
    /// (docs/protocol.md §5.2; WeChat: 300 s).
    pub stable_renew_ahead: Duration,
    /// Least time between two effective `force_refresh` calls (WeChat: 30 s);
    /// a force refresh sooner returns the current token unchanged.
    pub force_refresh_min_interval: Duration,
    /// Effective `force_refresh` calls allowed per day and account (WeChat: 20);
    /// more are answered `45009`.
    pub force_refresh_per_day: u32,
    /// Daily call quotas per endpoint path; `45009` once used up.
    pub quotas: Quotas,
    /// Which OpenIDs count as followers that may be messaged.
    pub openid_policy: OpenIdPolicy,
    /// Customer-service window rules used by [`OpenIdPolicy::Strict`].
    pub windows: WindowRules,
    /// The simulated Unix time at start, in seconds; `None` starts at the
    /// real time. The simulated clock then runs with `tokio::time` (so
    /// `tokio::time::pause` freezes it) plus [`crate::Sim::advance_clock`].
    pub start_unix_s: Option<i64>,
    /// How many calls the in-memory call log keeps (oldest dropped first);
    /// the per-path counters are never dropped.
    pub call_log_capacity: usize,
    /// Longest `text.content` of a custom message, in bytes (`45002` beyond).
    pub text_limit_bytes: usize,
    /// Lifetime of a JS-SDK ticket (WeChat: 7200 s).
    pub jsapi_ticket_expires_in: Duration,
    /// Lifetime of an unused OAuth code (WeChat: 300 s; `42003` after).
    pub oauth_code_lifetime: Duration,
    /// Largest accepted request body, in bytes (HTTP 413 beyond); the default, 12 MiB, holds
    /// the largest media upload.
    pub max_body_bytes: usize,
    /// Largest media uploads (docs/protocol.md §15; `45001` beyond).
    pub media_limits: crate::media::MediaLimits,
}

impl std::fmt::Debug for SimConfig {
    // Secrets stay out of debug output: only the AppIDs are printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConfig")
            .field("accounts", &self.accounts.keys().collect::<Vec<_>>())
            .field("token_expires_in", &self.token_expires_in)
            .field("classic_grace", &self.classic_grace)
            .field("stable_renew_ahead", &self.stable_renew_ahead)
            .field(
                "force_refresh_min_interval",
                &self.force_refresh_min_interval,
            )
            .field("force_refresh_per_day", &self.force_refresh_per_day)
            .field("quotas", &self.quotas)
            .field("openid_policy", &self.openid_policy)
            .field("windows", &self.windows)
            .field("start_unix_s", &self.start_unix_s)
            .field("call_log_capacity", &self.call_log_capacity)
            .finish_non_exhaustive()
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            accounts: BTreeMap::new(),
            token_expires_in: Duration::from_secs(7200),
            classic_grace: Duration::from_secs(300),
            stable_renew_ahead: Duration::from_secs(300),
            force_refresh_min_interval: Duration::from_secs(30),
            force_refresh_per_day: 20,
            quotas: Quotas::default(),
            openid_policy: OpenIdPolicy::AnyFollower,
            windows: WindowRules::default(),
            start_unix_s: None,
            call_log_capacity: 100_000,
            text_limit_bytes: 2048,
            jsapi_ticket_expires_in: Duration::from_secs(7200),
            oauth_code_lifetime: Duration::from_secs(300),
            max_body_bytes: 12 * 1024 * 1024,
            media_limits: crate::media::MediaLimits::default(),
        }
    }
}

impl SimConfig {
    /// Adds (or replaces) an account.
    pub fn with_account(mut self, appid: impl Into<String>, secret: impl Into<String>) -> Self {
        self.accounts.insert(appid.into(), secret.into());
        self
    }

    /// Sets the OpenID policy.
    pub fn with_openid_policy(mut self, policy: OpenIdPolicy) -> Self {
        self.openid_policy = policy;
        self
    }
}

/// Daily call quotas, per endpoint path (e.g. `/cgi-bin/token` → 2000).
///
/// Days are counted on the simulated clock in Beijing time (UTC+8), as
/// WeChat resets quotas at local midnight. A path without an entry is
/// unlimited. The defaults are WeChat's classic figures (docs/protocol.md §14), so a
/// long benchmark can reach `45009` on `custom/send` after 500,000 calls:
/// raise it with [`Quotas::set`] or use [`Quotas::unlimited`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    daily: HashMap<String, u64>,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas::wechat_defaults()
    }
}

impl Quotas {
    /// WeChat's documented per-account daily quotas (docs/protocol.md §5.3, §10.5, §14).
    pub fn wechat_defaults() -> Quotas {
        let daily = [
            ("/cgi-bin/token", 2000),
            ("/cgi-bin/stable_token", 500_000),
            ("/cgi-bin/message/custom/send", 500_000),
            ("/cgi-bin/message/template/send", 100_000),
            ("/cgi-bin/message/mass/sendall", 100),
            ("/cgi-bin/message/mass/preview", 100),
            ("/cgi-bin/qrcode/create", 100_000),
            ("/cgi-bin/menu/create", 1000),
            ("/cgi-bin/menu/get", 10_000),
            ("/cgi-bin/menu/delete", 1000),
            ("/cgi-bin/menu/addconditional", 2000),
            ("/cgi-bin/menu/delconditional", 2000),
            ("/cgi-bin/menu/trymatch", 20_000),
            ("/cgi-bin/user/info", 5_000_000),
            ("/cgi-bin/media/upload", 100_000),
        ]
        .into_iter()
        .map(|(path, limit)| (path.to_owned(), limit))
        .collect();
        Quotas { daily }
    }

    /// No quota on any endpoint.
    pub fn unlimited() -> Quotas {
        Quotas {
            daily: HashMap::new(),
        }
    }

    /// Sets the daily quota of `path` (e.g. `/cgi-bin/token`).
    pub fn set(&mut self, path: impl Into<String>, per_day: u64) -> &mut Quotas {
        self.daily.insert(path.into(), per_day);
        self
    }

    /// Removes the quota of `path`, making it unlimited.
    pub fn remove(&mut self, path: &str) -> &mut Quotas {
        self.daily.remove(path);
        self
    }

    /// The daily quota of `path`, `None` when unlimited.
    pub fn get(&self, path: &str) -> Option<u64> {
        self.daily.get(path).copied()
    }
}

/// Which OpenIDs the simulator treats as reachable followers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpenIdPolicy {
    /// Any well-formed OpenID (28 characters of `[A-Za-z0-9_-]`) is a
    /// follower with an always-open window and no per-window limit; anything
    /// else is `40003`. Users recorded as unfollowed get `45015`. Meant for
    /// benchmarks and `wxgate dev`.
    #[default]
    AnyFollower,
    /// Only users added with [`crate::Sim::add_user`] or seen through
    /// [`crate::Sim::record_interaction`] exist (`40003` otherwise), and
    /// custom messages obey the windows of [`WindowRules`] on the simulated
    /// clock (`45015` outside a window, `45047` past its count).
    Strict,
}

impl FromStr for OpenIdPolicy {
    type Err = String;

    /// `any` or `strict`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "any" | "any-follower" => Ok(OpenIdPolicy::AnyFollower),
            "strict" => Ok(OpenIdPolicy::Strict),
            other => Err(format!(
                "unknown openid policy {other:?}: use any or strict"
            )),
        }
    }
}

/// A user action that WeChat treats as an interaction (docs/protocol.md §6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interaction {
    /// The user sent a message (text, image, voice, …).
    Message,
    /// A `click`, `scancode_push` or `scancode_waitmsg` menu button.
    MenuClick,
    /// The user followed the account.
    Follow,
    /// The user scanned a parametric QR code (follows if not following yet).
    QrScan,
    /// A payment succeeded.
    Payment,
    /// The user unfollowed: the user's windows close and sends fail with `45015`.
    Unfollow,
}

impl FromStr for Interaction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "message" => Ok(Interaction::Message),
            "menu_click" | "click" => Ok(Interaction::MenuClick),
            "follow" | "subscribe" => Ok(Interaction::Follow),
            "qr_scan" | "scan" => Ok(Interaction::QrScan),
            "payment" => Ok(Interaction::Payment),
            "unfollow" | "unsubscribe" => Ok(Interaction::Unfollow),
            other => Err(format!("unknown interaction {other:?}")),
        }
    }
}

/// One kind of customer-service window: how many messages it allows and
/// for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowRule {
    /// Messages allowed in the window; `None` is unlimited.
    pub messages: Option<u32>,
    /// How long the window stays open after the interaction.
    pub valid_for: Duration,
}

impl WindowRule {
    /// A window of `messages` messages open for `valid_for`.
    pub const fn new(messages: u32, valid_for: Duration) -> WindowRule {
        WindowRule {
            messages: Some(messages),
            valid_for,
        }
    }
}

/// The windows opened by each interaction (docs/protocol.md §6.4). Each interaction
/// opens a new window with its own count; a send uses the open window that
/// closes first and still has room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowRules {
    /// After a user message (since 2023-06-12: 5 messages, 48 h).
    pub message: WindowRule,
    /// After a `click`/`scancode_*` menu event (3 messages, 1 minute).
    pub menu_click: WindowRule,
    /// After a follow (3 messages, 1 minute).
    pub follow: WindowRule,
    /// After a QR scan (3 messages, 1 minute).
    pub qr_scan: WindowRule,
    /// After a payment (unlimited, 48 h).
    pub payment: WindowRule,
}

impl Default for WindowRules {
    fn default() -> Self {
        WindowRules::since_2023()
    }
}

const HOURS_48: Duration = Duration::from_secs(48 * 3600);
const MINUTE: Duration = Duration::from_secs(60);

impl WindowRules {
    /// The rules in force since 2023-06-12 (docs/protocol.md §6.4).
    pub const fn since_2023() -> WindowRules {
        WindowRules {
            message: WindowRule::new(5, HOURS_48),
            menu_click: WindowRule::new(3, MINUTE),
            follow: WindowRule::new(3, MINUTE),
            qr_scan: WindowRule::new(3, MINUTE),
            payment: WindowRule {
                messages: None,
                valid_for: HOURS_48,
            },
        }
    }

    /// The rules of 2021-06 to 2023-06-12: 20 messages per 48 h after a
    /// message or payment, 3 per minute otherwise.
    pub const fn from_2021() -> WindowRules {
        WindowRules {
            message: WindowRule::new(20, HOURS_48),
            menu_click: WindowRule::new(3, MINUTE),
            follow: WindowRule::new(3, MINUTE),
            qr_scan: WindowRule::new(3, MINUTE),
            payment: WindowRule::new(20, HOURS_48),
        }
    }

    /// The window an interaction opens; `None` for [`Interaction::Unfollow`].
    pub fn for_interaction(&self, interaction: Interaction) -> Option<WindowRule> {
        match interaction {
            Interaction::Message => Some(self.message),
            Interaction::MenuClick => Some(self.menu_click),
            Interaction::Follow => Some(self.follow),
            Interaction::QrScan => Some(self.qr_scan),
            Interaction::Payment => Some(self.payment),
            Interaction::Unfollow => None,
        }
    }
}

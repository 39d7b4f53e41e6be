//! `wxgate sim push …` (play WeChat against a gateway: sign, encrypt and push as WeChat does,
//! judge the answer as WeChat would, then show the worker's asynchronous reply when the
//! WeChat API is the simulator) and `wxgate sim serve` (the fake WeChat API).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;
use wxgate_core::config::{AccountSpec, Config, Mode};
use wxgate_sim::{
    Answer, Inbound, MsgIdGen, OpenIdPolicy, PushAccount, PushClient, PushMode, Quotas, Reply,
    SimConfig,
};

use crate::{Failure, Outcome, println_checked};

/// The configuration `wxgate dev` and `wxgate sim push` use without `--config`
/// (`config/dev.toml`, built in).
pub const DEV_CONFIG: &str = include_str!("../../config/dev.toml");

/// `wxgate sim`.
#[derive(Debug, Clone, Subcommand)]
pub enum SimCommand {
    /// Pushes one message or event to a gateway as WeChat does, prints the answer as WeChat
    /// would judge it, then the reply the worker sent (when WeChat's API is the simulator).
    #[command(
        after_help = "Examples:\n  wxgate sim push demo text 你好\n  wxgate sim push demo voice --recognition 今天天气\n  wxgate sim push demo subscribe --scene 123\n  wxgate sim push demo scan 123\n  wxgate sim push demo click V1001_TODAY_MUSIC\n  wxgate sim push shop text hi --config prod.toml --gateway https://wx.example.com/wx"
    )]
    Push(PushArgs),
    /// Runs the fake WeChat API (tokens, customer-service, templates, mass, media, QR codes,
    /// menus, JS-SDK, OAuth) with a control API under /_sim/.
    #[command(
        after_help = "Example:\n  wxgate sim serve --listen 127.0.0.1:9099 --account wx0123456789abcdef:SECRET\n  curl 'http://127.0.0.1:9099/_sim/calls?path=/cgi-bin/message/custom/send'"
    )]
    Serve(ServeArgs),
}

/// `wxgate sim push`.
#[derive(Debug, Clone, Args)]
pub struct PushArgs {
    /// The account id (the last segment of its callback URL).
    pub account: String,
    /// What to push.
    #[command(subcommand)]
    pub what: Push,
    /// The config with the account's Token and keys and the gateway's address
    /// [default: the built-in config/dev.toml].
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The gateway's callback prefix [default: from the config, http://{gateway.listen}{path_prefix}].
    #[arg(long, global = true, value_name = "URL")]
    pub gateway: Option<String>,
    /// The user's OpenID [default: a fixed demo user, so replies can be followed].
    #[arg(
        long = "from",
        global = true,
        value_name = "OPENID",
        default_value = "oDEMOuser0000000000000000000"
    )]
    pub from: String,
    /// How long to wait for the worker's reply at the simulator (0: don't).
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 5)]
    pub wait: u64,
    /// For an account not in the config (added at run time): its AppID.
    #[arg(long, global = true, value_name = "APPID")]
    pub appid: Option<String>,
    /// For an account not in the config: its callback Token.
    #[arg(
        long,
        global = true,
        value_name = "TOKEN",
        env = "WXGATE_SIM_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// For an account not in the config: its EncodingAESKey.
    #[arg(
        long,
        global = true,
        value_name = "KEY",
        env = "WXGATE_SIM_AES_KEY",
        hide_env_values = true
    )]
    pub aes_key: Option<String>,
    /// plain, compat or safe [default: the account's mode].
    #[arg(long, global = true, value_name = "MODE")]
    pub mode: Option<PushMode>,
    /// Deliveries at most, as WeChat's retries (each waits up to 5 s for the answer).
    #[arg(long, global = true, value_name = "N", default_value_t = 3)]
    pub attempts: u32,
}

/// One thing WeChat pushes.
#[derive(Debug, Clone, Subcommand)]
pub enum Push {
    /// A text message.
    Text {
        /// The text.
        content: String,
    },
    /// A voice message, optionally with WeChat's speech recognition.
    Voice {
        /// The recognised text (empty: none).
        #[arg(long)]
        recognition: Option<String>,
    },
    /// An image message.
    Image {
        /// The picture's URL.
        #[arg(long, default_value = "http://mmbiz.qpic.cn/demo.jpg")]
        pic_url: String,
    },
    /// A location message.
    Location {
        /// Latitude.
        #[arg(allow_negative_numbers = true)]
        latitude: f64,
        /// Longitude.
        #[arg(allow_negative_numbers = true)]
        longitude: f64,
        /// The place's name.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// A link message.
    Link {
        /// Title.
        title: String,
        /// URL.
        url: String,
    },
    /// A follow (subscribe) event, optionally through a QR code's scene.
    Subscribe {
        /// The QR code's scene (EventKey becomes qrscene_SCENE).
        #[arg(long)]
        scene: Option<String>,
    },
    /// An unfollow event.
    Unsubscribe,
    /// A follower scanned a QR code with this scene.
    Scan {
        /// The scene.
        scene: String,
    },
    /// A menu CLICK with this key.
    Click {
        /// The button's key.
        key: String,
    },
    /// A menu VIEW of this URL.
    View {
        /// The URL.
        url: String,
    },
    /// This file's XML, as it is.
    Xml {
        /// The file.
        file: PathBuf,
    },
}

/// `wxgate sim serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9099")]
    pub listen: SocketAddr,
    /// An account WeChat knows, as APPID:SECRET (repeatable) [default: the config's].
    #[arg(long = "account", value_name = "APPID:SECRET", value_parser = parse_account)]
    pub accounts: Vec<(String, String)>,
    /// Take the accounts from this config [default: the built-in config/dev.toml, when no
    /// --account is given].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Which OpenIDs are followers: `any` or `strict` (only known users, with
    /// customer-service windows).
    #[arg(long, value_name = "POLICY", default_value = "any")]
    pub openid_policy: OpenIdPolicy,
    /// No daily quotas.
    #[arg(long)]
    pub no_quotas: bool,
}

fn parse_account(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((appid, secret)) if !appid.is_empty() && !secret.is_empty() => {
            Ok((appid.to_owned(), secret.to_owned()))
        }
        _ => Err("expected APPID:SECRET".to_owned()),
    }
}

/// A config and the accounts as written in it (their keys as text, which the push needs).
pub struct LoadedConfig {
    /// The validated config, environment overrides applied.
    pub config: Config,
    /// `[[accounts]]` as written.
    pub specs: Vec<AccountSpec>,
    /// Where it came from, for messages.
    pub source: String,
}

/// Loads `path`, or the built-in dev config; `WXGATE__…` overrides apply.
pub fn load_config(path: Option<&PathBuf>) -> Result<LoadedConfig, Failure> {
    let (text, source) = match path {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|e| {
                Failure::usage(format!("cannot read the config {}: {e}", path.display()))
            })?,
            path.display().to_string(),
        ),
        None => (
            DEV_CONFIG.to_owned(),
            "the built-in config/dev.toml".to_owned(),
        ),
    };
    let config = Config::from_toml(&text, |k| std::env::var(k).ok())
        .map_err(|e| Failure::usage(format!("{source}: {e}")))?;
    #[derive(serde::Deserialize)]
    struct Accounts {
        #[serde(default)]
        accounts: Vec<AccountSpec>,
    }
    let specs = toml::from_str::<Accounts>(&text)
        .map(|a| a.accounts)
        .map_err(|e| Failure::usage(format!("{source}: {e}")))?;
    Ok(LoadedConfig {
        config,
        specs,
        source,
    })
}

/// `http://{addr}`, with an unspecified address made dialable.
pub fn http_base(addr: SocketAddr) -> String {
    format!("http://{}", wx_worker::grpc::dialable(addr))
}

/// Runs `wxgate sim …`.
pub async fn sim(command: SimCommand) -> Outcome {
    match command {
        SimCommand::Push(args) => push(args).await,
        SimCommand::Serve(args) => serve(args).await,
    }
}

async fn push(args: PushArgs) -> Outcome {
    let loaded = load_config(args.config.as_ref())?;
    let spec = loaded.specs.iter().find(|s| s.id == args.account);
    let account = match (spec, &args.appid, &args.token) {
        (_, Some(appid), Some(token)) => PushAccount {
            id: args.account.clone(),
            appid: appid.clone(),
            token: token.clone(),
            encoding_aes_key: args.aes_key.clone(),
            mode: args.mode.unwrap_or(if args.aes_key.is_some() {
                PushMode::Safe
            } else {
                PushMode::Plain
            }),
            original_id: "gh_0123456789ab".to_owned(),
        },
        (Some(spec), _, _) => PushAccount {
            id: spec.id.clone(),
            appid: spec.appid.clone(),
            token: args.token.clone().unwrap_or_else(|| spec.token.clone()),
            encoding_aes_key: args
                .aes_key
                .clone()
                .or_else(|| spec.encoding_aes_key.clone()),
            mode: args.mode.unwrap_or(match spec.mode.unwrap_or(Mode::Safe) {
                Mode::Plain => PushMode::Plain,
                Mode::Compat => PushMode::Compat,
                Mode::Safe => PushMode::Safe,
            }),
            original_id: "gh_0123456789ab".to_owned(),
        },
        (None, _, _) => {
            let known: Vec<&str> = loaded.specs.iter().map(|s| s.id.as_str()).collect();
            return Err(Failure::usage(format!(
                "account {:?} is not in {} (it has: {}); for an account added at run time give --appid, --token and --aes-key",
                args.account,
                loaded.source,
                known.join(", ")
            )));
        }
    };
    let gateway = args.gateway.clone().unwrap_or_else(|| {
        format!(
            "{}{}",
            http_base(loaded.config.gateway.listen),
            loaded.config.gateway.path_prefix
        )
    });
    let inbound = Inbound::now(account.original_id.clone(), args.from.clone());
    let msg_id = MsgIdGen::new().next_id();
    let (xml, what) = match &args.what {
        Push::Text { content } => (inbound.text(msg_id, content), format!("text {content:?}")),
        Push::Voice { recognition } => (
            inbound.voice(msg_id, "SIM_VOICE_MEDIA", "amr", recognition.as_deref()),
            "voice".to_owned(),
        ),
        Push::Image { pic_url } => (
            inbound.image(msg_id, pic_url, "SIM_IMAGE_MEDIA"),
            "image".to_owned(),
        ),
        Push::Location {
            latitude,
            longitude,
            label,
        } => (
            inbound.location(msg_id, *latitude, *longitude, 15, label),
            "location".to_owned(),
        ),
        Push::Link { title, url } => (inbound.link(msg_id, title, "", url), "link".to_owned()),
        Push::Subscribe { scene: None } => (inbound.subscribe(), "subscribe".to_owned()),
        Push::Subscribe { scene: Some(scene) } => (
            inbound.subscribe_qr(scene, "SIM_TICKET"),
            format!("subscribe through QR scene {scene}"),
        ),
        Push::Unsubscribe => (inbound.unsubscribe(), "unsubscribe".to_owned()),
        Push::Scan { scene } => (inbound.scan(scene, "SIM_TICKET"), format!("SCAN {scene}")),
        Push::Click { key } => (inbound.click(key), format!("CLICK {key}")),
        Push::View { url } => (inbound.view(url, 0), format!("VIEW {url}")),
        Push::Xml { file } => (
            String::from_utf8(crate::read_file(file, "the XML file")?)
                .map_err(|_| Failure::usage(format!("{}: not UTF-8", file.display())))?,
            format!("{}", file.display()),
        ),
    };
    // The simulator's call log before the push, so only the reply to this push is shown.
    let api_base = loaded.config.wechat.api_base.clone();
    let watcher = CallWatcher::new(&api_base, &args.from).await;
    println_checked(&format!(
        "→ WeChat pushes {what} from {} to {gateway}/{} ({} mode)",
        args.from,
        account.id,
        format!("{:?}", account.mode).to_ascii_lowercase()
    ))?;
    let outcome = PushClient::new()
        .attempts(args.attempts.max(1))
        .push(&gateway, &account, &xml)
        .await
        .map_err(|e| Failure::failed(format!("cannot push: {}", wxgate_core::ErrorChain(&e))))?;
    let statuses: Vec<String> = outcome.statuses.iter().map(u16::to_string).collect();
    let tries = if outcome.attempts > 1 {
        format!(
            " after {} tries (statuses {})",
            outcome.attempts,
            statuses.join(", ")
        )
    } else {
        String::new()
    };
    let ok = match &outcome.answer {
        Answer::Acknowledged => {
            println_checked(&format!(
                "← gateway answered in {} ms{tries}: success (no passive reply; the worker answers later)",
                outcome.latency.as_millis()
            ))?;
            true
        }
        Answer::Reply(reply) => {
            println_checked(&format!(
                "← gateway answered in {} ms{tries}: passive reply {}{}",
                outcome.latency.as_millis(),
                describe_reply(reply),
                if outcome.reply_encrypted {
                    " (encrypted)"
                } else {
                    ""
                }
            ))?;
            true
        }
        Answer::ServiceUnavailable(why) => {
            println_checked(&format!(
                "← WeChat would show the user \"service unavailable\"{tries}: {why}"
            ))?;
            false
        }
    };
    if !ok {
        return Err(Failure::failed(format!(
            "the gateway at {gateway} did not accept the push; is `wxgate dev` (or a gateway) running, and does {} hold account {:?} with the same Token and key?",
            loaded.source, account.id
        )));
    }
    // A passive reply is the whole answer: the worker skips events answered that way.
    let answered = matches!(outcome.answer, Answer::Reply(_));
    if let Some(watcher) = watcher
        && args.wait > 0
        && !answered
    {
        let replies = watcher.wait(Duration::from_secs(args.wait)).await;
        if replies.is_empty() {
            println_checked(&format!(
                "  (no customer-service message to {} within {} s; the account's custom rules may not answer this)",
                args.from, args.wait
            ))?;
        }
        for reply in replies {
            println_checked(&format!(
                "← the worker replied through WeChat's customer-service API: {reply}"
            ))?;
        }
    }
    Ok(())
}

fn describe_reply(reply: &Reply) -> String {
    match reply {
        Reply::Text { content } => format!("text {content:?}"),
        other => format!("{other:?}"),
    }
}

/// Follows the simulator's call log for customer-service messages to one user.
struct CallWatcher {
    client: wx_worker::WechatClient,
    url: String,
    openid: String,
    after: u64,
}

impl CallWatcher {
    /// `None` when `api_base` is not a simulator (its call log does not answer).
    async fn new(api_base: &str, openid: &str) -> Option<CallWatcher> {
        let client = wx_worker::WechatClient::new(api_base, Duration::from_millis(1500)).ok()?;
        let url = format!(
            "{}/_sim/calls?path=/cgi-bin/message/custom/send&limit=1000",
            api_base.trim_end_matches('/')
        );
        let mut watcher = CallWatcher {
            client,
            url,
            openid: openid.to_owned(),
            after: 0,
        };
        let calls = watcher.calls().await?;
        watcher.after = calls
            .iter()
            .filter_map(|c| c["seq"].as_u64())
            .max()
            .unwrap_or(0);
        Some(watcher)
    }

    async fn calls(&self) -> Option<Vec<Value>> {
        let (_, body) = self.client.download(&self.url, 16 << 20).await.ok()?;
        serde_json::from_slice::<Vec<Value>>(&body).ok()
    }

    /// The messages sent to the user since the watcher began, waiting up to `deadline` for
    /// the first and a moment for more (a news reply is several messages).
    async fn wait(&self, deadline: Duration) -> Vec<String> {
        let end = tokio::time::Instant::now() + deadline;
        let mut found: Vec<String> = Vec::new();
        let mut settle_until = None;
        loop {
            if let Some(calls) = self.calls().await {
                let new: Vec<String> = calls
                    .iter()
                    .filter(|c| c["seq"].as_u64().unwrap_or(0) > self.after)
                    .filter(|c| c["body"]["touser"].as_str() == Some(self.openid.as_str()))
                    .map(describe_custom)
                    .collect();
                if new.len() > found.len() {
                    found = new;
                    settle_until = Some(tokio::time::Instant::now() + Duration::from_millis(300));
                }
            }
            let now = tokio::time::Instant::now();
            if now >= end || settle_until.is_some_and(|t| now >= t) {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A customer-service message as the simulator logged it, in a line.
fn describe_custom(call: &Value) -> String {
    let body = &call["body"];
    let kind = body["msgtype"].as_str().unwrap_or("?");
    let detail = match kind {
        "text" => format!("{:?}", body["text"]["content"].as_str().unwrap_or("")),
        "news" => body["news"]["articles"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| format!("{:?}", x["title"].as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default(),
        _ => body[kind].to_string(),
    };
    let result = match call["errcode"].as_i64() {
        Some(0) => String::new(),
        Some(code) => format!(" (WeChat answered errcode {code})"),
        None => " (no answer)".to_owned(),
    };
    format!("{kind} {detail}{result}")
}

/// The simulator's settings for the accounts of `specs` (every one with a secret).
pub fn sim_config(
    specs: &[AccountSpec],
    openid_policy: OpenIdPolicy,
    no_quotas: bool,
) -> SimConfig {
    let mut config = SimConfig {
        openid_policy,
        quotas: if no_quotas {
            Quotas::unlimited()
        } else {
            Quotas::wechat_defaults()
        },
        ..SimConfig::default()
    };
    for spec in specs.iter().filter(|s| !s.secret.is_empty()) {
        config = config.with_account(spec.appid.clone(), spec.secret.clone());
    }
    config
}

async fn serve(args: ServeArgs) -> Outcome {
    let mut config = if args.accounts.is_empty() || args.config.is_some() {
        let loaded = load_config(args.config.as_ref())?;
        sim_config(&loaded.specs, args.openid_policy, args.no_quotas)
    } else {
        sim_config(&[], args.openid_policy, args.no_quotas)
    };
    for (appid, secret) in args.accounts {
        config = config.with_account(appid, secret);
    }
    let sim = wxgate_sim::start(config, args.listen).await.map_err(|e| {
        Failure::failed(format!(
            "cannot start the simulator on {}: {}",
            args.listen,
            wxgate_core::ErrorChain(&e)
        ))
    })?;
    println_checked(&format!(
        "WeChat simulator at {} (calls: {}/_sim/calls); Ctrl-C to stop",
        sim.base_url(),
        sim.base_url()
    ))?;
    let _ = tokio::signal::ctrl_c().await;
    sim.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every config shipped in config/ loads, and the simulator started with it knows every
    /// account that has a secret (so `wxgate sim serve --config F` matches the gateway's F).
    #[test]
    fn the_shipped_configs_load_and_the_simulator_knows_their_accounts() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let loaded = load_config(Some(&path)).unwrap_or_else(|e| panic!("{e}"));
            let sim = sim_config(&loaded.specs, OpenIdPolicy::AnyFollower, true);
            for account in &loaded.config.accounts {
                if !account.secret.expose().is_empty() {
                    assert!(
                        sim.accounts.contains_key(&account.appid),
                        "{}: {}",
                        path.display(),
                        account.id.as_str()
                    );
                }
            }
            seen += 1;
        }
        assert!(seen >= 3, "config/*.toml");
        let builtin = load_config(None).unwrap();
        assert_eq!(builtin.specs.len(), builtin.config.accounts.len());
    }

    #[test]
    fn the_dev_config_holds_the_printed_key() {
        use sha2::Digest;
        let loaded = load_config(None).unwrap();
        let hash = hex::encode(sha2::Sha256::digest(crate::dev::DEV_API_KEY.as_bytes()));
        assert!(
            loaded
                .config
                .api_keys
                .iter()
                .any(|k| k.sha256 == hash && k.accounts == ["*"])
        );
    }
}

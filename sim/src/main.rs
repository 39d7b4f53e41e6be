//! `wxgate-sim`: run the fake WeChat API server, or push one message to a
//! gateway as WeChat would.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{ArgGroup, Args, Parser, Subcommand};
use wxgate_sim::{
    Answer, Inbound, MsgIdGen, OpenIdPolicy, PushAccount, PushClient, PushMode, Quotas, SimConfig,
    random_openid,
};

/// The WeChat simulator: a fake WeChat API server (default), and WeChat's
/// pushing side (`push`).
///
/// Example:
///
///   wxgate-sim --listen 127.0.0.1:9099 --account wx0123456789abcdef:SECRET --openid-policy strict
///
/// then point `wechat.api_base` at http://127.0.0.1:9099. Drive it with curl
/// under /_sim/: `curl localhost:9099/_sim/calls?path=/cgi-bin/token`,
/// `curl -XPOST localhost:9099/_sim/invalidate/wx0123456789abcdef`,
/// `curl -XPOST localhost:9099/_sim/faults -d '{"path":"*","errcode":-1,"times":3}'`.
#[derive(Debug, Parser)]
#[command(
    name = "wxgate-sim",
    version,
    args_conflicts_with_subcommands = true,
    verbatim_doc_comment
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Push one message or event to a gateway as WeChat would, and print
    /// how WeChat would judge the answer.
    ///
    /// Example:
    ///
    ///   wxgate-sim push --gateway http://127.0.0.1:8080/wx --account-id demo --appid wx0123456789abcdef --token TOKEN --aes-key KEY --mode safe --text hello
    ///
    /// Exits 0 when the answer is `success`, empty or a valid reply, 1 when
    /// WeChat would show "service unavailable".
    #[command(verbatim_doc_comment)]
    Push(PushArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9099")]
    listen: SocketAddr,
    /// An account WeChat knows, as APPID:SECRET (repeatable).
    #[arg(long = "account", value_name = "APPID:SECRET", value_parser = parse_account)]
    accounts: Vec<(String, String)>,
    /// Which OpenIDs are followers: `any` (every well-formed OpenID, no
    /// windows) or `strict` (only known users, with customer-service windows).
    #[arg(long, value_name = "POLICY", default_value = "any")]
    openid_policy: OpenIdPolicy,
    /// Access token lifetime in seconds (`expires_in`).
    #[arg(long, value_name = "SECONDS", default_value_t = 7200)]
    expires_in: u64,
    /// How long the previous /cgi-bin/token token keeps working, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    grace: u64,
    /// Daily quota of an endpoint, as PATH=N (repeatable; e.g. /cgi-bin/token=2000).
    #[arg(long = "quota", value_name = "PATH=N", value_parser = parse_quota)]
    quotas: Vec<(String, u64)>,
    /// No daily quotas at all (for long benchmarks); --quota still applies.
    #[arg(long)]
    no_quotas: bool,
    /// Start the simulated clock at this Unix time instead of now.
    #[arg(long, value_name = "SECONDS")]
    start_unix: Option<i64>,
    /// Calls kept in the call log.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    log_capacity: usize,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").args(["text", "click", "subscribe", "subscribe_qr", "unsubscribe", "xml", "verify"])))]
struct PushArgs {
    /// The gateway's callback prefix; the push goes to GATEWAY/ACCOUNT_ID.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080/wx")]
    gateway: String,
    /// The gateway's account id (the last path segment).
    #[arg(long, value_name = "ID")]
    account_id: String,
    /// The account's AppID.
    #[arg(long, value_name = "APPID")]
    appid: String,
    /// The callback Token.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "WXGATE_SIM_TOKEN",
        hide_env_values = true
    )]
    token: String,
    /// The 43-character EncodingAESKey (compat and safe mode).
    #[arg(
        long,
        value_name = "KEY",
        env = "WXGATE_SIM_AES_KEY",
        hide_env_values = true
    )]
    aes_key: Option<String>,
    /// plain, compat or safe [default: safe with --aes-key, else plain].
    #[arg(long, value_name = "MODE")]
    mode: Option<PushMode>,
    /// The account's original id, used as ToUserName.
    #[arg(long, value_name = "GH_ID", default_value = "gh_0123456789ab")]
    original_id: String,
    /// The user's OpenID [default: a random one].
    #[arg(long = "from", value_name = "OPENID")]
    from: Option<String>,
    /// Push a text message with this content (the default, "hello").
    #[arg(long, value_name = "TEXT")]
    text: Option<String>,
    /// Push a CLICK event for this menu key.
    #[arg(long, value_name = "KEY")]
    click: Option<String>,
    /// Push a plain subscribe event.
    #[arg(long)]
    subscribe: bool,
    /// Push a subscribe event through a QR code with this scene.
    #[arg(long, value_name = "SCENE")]
    subscribe_qr: Option<String>,
    /// Push an unsubscribe event.
    #[arg(long)]
    unsubscribe: bool,
    /// Push this file's XML as it is.
    #[arg(long, value_name = "FILE")]
    xml: Option<PathBuf>,
    /// Do the GET URL verification with this echostr instead of a push.
    #[arg(long, value_name = "ECHOSTR")]
    verify: Option<String>,
    /// Deliveries in total.
    #[arg(long, value_name = "N", default_value_t = 3)]
    attempts: u32,
    /// Timeout of each delivery, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    timeout_ms: u64,
    /// Least time between the starts of two deliveries, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    retry_interval_ms: u64,
}

fn parse_account(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((appid, secret)) if !appid.is_empty() && !secret.is_empty() => {
            Ok((appid.to_owned(), secret.to_owned()))
        }
        _ => Err("expected APPID:SECRET".to_owned()),
    }
}

fn parse_quota(text: &str) -> Result<(String, u64), String> {
    let (path, limit) = text.split_once('=').ok_or("expected PATH=N")?;
    let limit = limit.parse().map_err(|_| "N must be a number")?;
    Ok((path.to_owned(), limit))
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Push(args)) => push(args).await,
        None => serve(cli.serve).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut quotas = if args.no_quotas {
        Quotas::unlimited()
    } else {
        Quotas::wechat_defaults()
    };
    for (path, limit) in args.quotas {
        quotas.set(path, limit);
    }
    let mut config = SimConfig {
        token_expires_in: Duration::from_secs(args.expires_in),
        classic_grace: Duration::from_secs(args.grace),
        quotas,
        openid_policy: args.openid_policy,
        start_unix_s: args.start_unix,
        call_log_capacity: args.log_capacity,
        ..SimConfig::default()
    };
    for (appid, secret) in args.accounts {
        config = config.with_account(appid, secret);
    }
    if config.accounts.is_empty() {
        tracing::warn!("no --account given: every token request will answer 40013");
    }
    let sim = wxgate_sim::start(config, args.listen)
        .await
        .context("starting the simulator")?;
    println!("wechat simulator at {}", sim.base_url());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    sim.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let mode = args.mode.unwrap_or(if args.aes_key.is_some() {
        PushMode::Safe
    } else {
        PushMode::Plain
    });
    let account = PushAccount {
        id: args.account_id,
        appid: args.appid,
        token: args.token,
        encoding_aes_key: args.aes_key,
        mode,
        original_id: args.original_id,
    };
    let client = PushClient::new()
        .attempts(args.attempts)
        .timeout(Duration::from_millis(args.timeout_ms))
        .retry_interval(Duration::from_millis(args.retry_interval_ms));

    if let Some(echostr) = args.verify {
        let outcome = client.verify_get(&args.gateway, &account, &echostr).await?;
        println!("status: {}", outcome.status);
        println!("body: {}", outcome.body);
        let ok = outcome.status == 200 && outcome.body == echostr;
        println!("verification: {}", if ok { "passed" } else { "failed" });
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }

    let from = args.from.unwrap_or_else(random_openid);
    let inbound = Inbound::now(account.original_id.clone(), from);
    let xml = if let Some(path) = args.xml {
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?
    } else if let Some(key) = args.click {
        inbound.click(&key)
    } else if args.subscribe {
        inbound.subscribe()
    } else if let Some(scene) = args.subscribe_qr {
        inbound.subscribe_qr(&scene, "SIM_TICKET")
    } else if args.unsubscribe {
        inbound.unsubscribe()
    } else {
        let text = args.text.unwrap_or_else(|| "hello".to_owned());
        inbound.text(MsgIdGen::new().next_id(), &text)
    };
    if xml.is_empty() {
        bail!("nothing to push");
    }
    let outcome = client.push(&args.gateway, &account, &xml).await?;
    println!("attempts: {}", outcome.attempts);
    println!("statuses: {:?}", outcome.statuses);
    println!("latency: {} ms", outcome.latency.as_millis());
    let ok = match &outcome.answer {
        Answer::Acknowledged => {
            println!("answer: acknowledged");
            true
        }
        Answer::Reply(reply) => {
            let how = if outcome.reply_encrypted {
                "encrypted"
            } else {
                "plain"
            };
            println!("answer: {how} reply {reply:?}");
            true
        }
        Answer::ServiceUnavailable(why) => {
            println!("answer: service unavailable ({why})");
            if !outcome.body.is_empty() {
                println!("body: {}", String::from_utf8_lossy(&outcome.body));
            }
            false
        }
    };
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

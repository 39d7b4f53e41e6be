//! `wxgate`: the command line of wxgate. See `wxgate --help`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wxgate::api::{Api, ApiArgs};
use wxgate::{Outcome, accounts, dead, dev, events, media, menu, qrcode, send, sim, tokens};

/// wxgate: the callback side of many WeChat Official Accounts.
///
/// Start here:
///
///   wxgate dev                          # everything in one process, nothing to install
///   wxgate sim push demo text 你好       # in another terminal: WeChat pushes a message
///
/// Every other command talks to the gRPC API at --api (WXGATE_API) with the key --api-key
/// (WXGATE_API_KEY); `wxgate dev` prints both. Exit status: 0 done, 1 failed, 2 bad usage.
#[derive(Debug, Parser)]
#[command(name = "wxgate", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs gateway, worker, gRPC API and a simulated WeChat in one process, in memory.
    Dev(dev::DevArgs),
    /// Prints events as they arrive (a consumer group of the Events API), acking each.
    Tail(events::TailArgs),
    /// Sends a customer-service, template or mass message.
    #[command(subcommand)]
    Send(send::SendCommand),
    /// Shows "typing…" to a user (or stops it).
    Typing(send::TypingArgs),
    /// Prints an account's shared access token.
    Token(tokens::TokenArgs),
    /// Prints the JS-SDK `wx.config` signature for a page.
    Jssdk(tokens::JssdkArgs),
    /// Web authorization (OAuth): the authorize URL, and the code exchange.
    #[command(subcommand)]
    Oauth(tokens::OauthCommand),
    /// Parametric QR codes.
    #[command(subcommand)]
    Qrcode(qrcode::QrcodeCommand),
    /// The custom menu.
    #[command(subcommand)]
    Menu(menu::MenuCommand),
    /// Accounts at run time: list, add, remove, rotate keys, export and import.
    #[command(subcommand)]
    Accounts(accounts::AccountsCommand),
    /// Dead letters: list, replay, discard.
    #[command(subcommand)]
    Dead(dead::DeadCommand),
    /// Media uploads.
    #[command(subcommand)]
    Media(MediaCommand),
    /// Plays WeChat: push messages to a gateway, or serve the fake WeChat API.
    #[command(subcommand)]
    Sim(sim::SimCommand),
}

#[derive(Debug, Subcommand)]
enum MediaCommand {
    /// Uploads a file as temporary media (3 days) and prints its media_id.
    Upload(media::UploadArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.command);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("wxgate: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

/// `dev` and `sim serve` run services: their logs go to stdout as the services' do (warnings
/// only by default, so the banner and the call log stay readable). Client commands log
/// nothing unless RUST_LOG asks.
fn init_logging(command: &Command) {
    let default = match command {
        Command::Dev(_) | Command::Sim(sim::SimCommand::Serve(_)) => "warn",
        _ => "off",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

async fn run(cli: Cli) -> Outcome {
    let api_args = cli.api;
    let connect = || Api::connect(&api_args);
    match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Sim(command) => sim::sim(command).await,
        Command::Tail(args) => events::tail(&connect().await?, args).await,
        Command::Send(command) => send::send(&connect().await?, command).await,
        Command::Typing(args) => send::typing(&connect().await?, args).await,
        Command::Token(args) => tokens::token(&connect().await?, args).await,
        Command::Jssdk(args) => tokens::jssdk(&connect().await?, args).await,
        Command::Oauth(command) => tokens::oauth(&connect().await?, command).await,
        Command::Qrcode(command) => qrcode::qrcode(&connect().await?, command).await,
        Command::Menu(command) => menu::menu(&connect().await?, command).await,
        Command::Accounts(command) => accounts::accounts(&connect().await?, command).await,
        Command::Dead(command) => dead::dead(&connect().await?, command).await,
        Command::Media(MediaCommand::Upload(args)) => media::upload(&connect().await?, args).await,
    }
}

//! The connection to a wxgate gRPC API (a worker's `worker.grpc_listen`, or `wxgate dev`):
//! address, API key and TLS from the command line or the environment, one channel, and the
//! one place where a `tonic::Status` becomes a message that says what to do next.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};
use wxgate_proto::v1 as pb;

use crate::Failure;

/// The API address `wxgate dev` serves and the CLI uses by default.
pub const DEFAULT_API: &str = "http://127.0.0.1:50051";

/// How long connecting to the API may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one unary call may take: the worker's own WeChat calls are bounded by
/// `wechat.http_timeout_ms` (5 s by default) and may be retried once with a fresh token.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the API is and how to authenticate (`--api`, `--api-key`, TLS files).
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// The gRPC API: a worker's `worker.grpc_listen`, `http://` or `https://`.
    #[arg(long, global = true, env = "WXGATE_API", value_name = "URL", default_value = DEFAULT_API)]
    pub api: String,
    /// The API key (a `[[api_keys]]` entry holds its SHA-256); `wxgate dev` prints one.
    #[arg(
        long,
        global = true,
        env = "WXGATE_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// PEM file of the CA that signed the API's certificate (https only; default: the
    /// system's roots are not used, so give it for https).
    #[arg(long, global = true, env = "WXGATE_API_CA", value_name = "FILE")]
    pub api_ca: Option<PathBuf>,
    /// PEM certificate and key files for mutual TLS, as `CERT,KEY`.
    #[arg(
        long,
        global = true,
        env = "WXGATE_API_CLIENT_CERT",
        value_name = "CERT,KEY"
    )]
    pub api_client_cert: Option<String>,
}

/// Adds `authorization: Bearer <key>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel through [`Bearer`].
pub type Authed = InterceptedService<Channel, Bearer>;

/// A connected API: one channel shared by every client made from it.
#[derive(Clone)]
pub struct Api {
    address: String,
    channel: Channel,
    bearer: Bearer,
}

macro_rules! client {
    ($name:ident, $module:ident :: $client:ident) => {
        #[doc = concat!("A `", stringify!($client), "` on this connection.")]
        pub fn $name(&self) -> pb::$module::$client<Authed> {
            pb::$module::$client::with_interceptor(self.channel.clone(), self.bearer.clone())
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20)
        }
    };
}

impl Api {
    /// Connects to the API `args` name. Fails with a message naming the address when it
    /// cannot be reached.
    pub async fn connect(args: &ApiArgs) -> Result<Api, Failure> {
        let bearer = match &args.api_key {
            None => Bearer(None),
            Some(key) => Bearer(Some(format!("Bearer {key}").parse().map_err(|_| {
                Failure::usage("--api-key / WXGATE_API_KEY must be printable ASCII")
            })?)),
        };
        let mut endpoint = Endpoint::from_shared(args.api.clone())
            .map_err(|e| {
                Failure::usage(format!(
                    "--api {:?} is not a URL ({e}); e.g. {DEFAULT_API}",
                    args.api
                ))
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        if args.api.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &args.api_ca {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca, "--api-ca")?));
            }
            if let Some(pair) = &args.api_client_cert {
                let (cert, key) = pair.split_once(',').ok_or_else(|| {
                    Failure::usage("--api-client-cert takes CERT,KEY (two PEM files)")
                })?;
                tls = tls.identity(Identity::from_pem(
                    read(&PathBuf::from(cert), "--api-client-cert")?,
                    read(&PathBuf::from(key), "--api-client-cert")?,
                ));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Failure::usage(format!("TLS settings for --api: {e}")))?;
        }
        let channel = endpoint.connect().await.map_err(|e| {
            Failure::failed(format!(
                "cannot reach the wxgate API at {} ({}). Is it running? Start one with `wxgate dev`, or point --api / WXGATE_API at a worker's grpc_listen",
                args.api,
                wxgate_core::ErrorChain(&e)
            ))
        })?;
        Ok(Api {
            address: args.api.clone(),
            channel,
            bearer,
        })
    }

    /// The address connected to, for messages.
    pub fn address(&self) -> &str {
        &self.address
    }

    client!(events, events_client::EventsClient);
    client!(messages, messages_client::MessagesClient);
    client!(media, media_client::MediaClient);
    client!(tokens, tokens_client::TokensClient);
    client!(qrcodes, qrcodes_client::QrcodesClient);
    client!(menus, menus_client::MenusClient);
    client!(accounts, accounts_client::AccountsClient);
    client!(dead_letters, dead_letters_client::DeadLettersClient);

    /// `status` as a failure that says what went wrong and what to do next.
    pub fn failure(&self, status: Status) -> Failure {
        let message = status.message();
        let errcode = status
            .metadata()
            .get("x-wechat-errcode")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = match status.code() {
            Code::Unavailable => format!(
                "the wxgate API at {} is unavailable ({message}). Is it running and connected to Redis and RabbitMQ? `wxgate dev` runs one",
                self.address
            ),
            Code::Unauthenticated => format!(
                "the API refused the key ({message}). Pass one with --api-key or WXGATE_API_KEY (`wxgate dev` prints its key)"
            ),
            Code::PermissionDenied => format!(
                "not allowed: {message}. Use a key whose `accounts` include this account, or an admin key (accounts = [\"*\"])"
            ),
            Code::InvalidArgument => format!("invalid request: {message}"),
            Code::NotFound => format!("not found: {message}"),
            Code::FailedPrecondition => format!("refused: {message}"),
            Code::DeadlineExceeded => format!(
                "no answer from {} in time ({message}); WeChat or the API may be slow, try again",
                self.address
            ),
            Code::ResourceExhausted => format!("rate limited: {message}; try again later"),
            Code::Unimplemented => format!(
                "the API at {} does not offer this call ({message}); is it an older wxgate?",
                self.address
            ),
            code => format!("{code:?}: {message}"),
        };
        match errcode {
            Some(errcode) if !text.contains(&errcode) => {
                Failure::failed(format!("{text} (WeChat errcode {errcode})"))
            }
            _ => Failure::failed(text),
        }
    }
}

fn read(path: &std::path::Path, flag: &str) -> Result<Vec<u8>, Failure> {
    std::fs::read(path)
        .map_err(|e| Failure::usage(format!("{flag}: cannot read {}: {e}", path.display())))
}

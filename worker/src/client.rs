//! The WeChat API client: HTTP(S) calls to `wechat.api_base` with a timeout, JSON in and out,
//! and WeChat's token endpoints as the [`TokenFetcher`] of the shared token service.
//!
//! It never logs query strings or bodies: they carry access tokens and secrets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use wxgate_core::config::{Secret, TokenMode};
use wxgate_core::tokens::{FetchError, FetchedToken, TokenFetcher};

use crate::custom::CustomMessage;

/// Largest answer body read from WeChat.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Why a call got no usable answer from WeChat.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// Connection failed, or no complete answer within `wechat.http_timeout_ms`; the source
    /// says which.
    #[error("wechat unreachable")]
    Unreachable(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// WeChat answered with a non-success HTTP status.
    #[error("wechat answered http status {0}")]
    Status(u16),
    /// The answer was not JSON.
    #[error("wechat answered a body that is not json")]
    NotJson(#[source] Arc<serde_json::Error>),
    /// The answer was JSON without the shape every WeChat answer has.
    #[error("wechat answered json where {what}")]
    BadAnswer {
        /// What was wrong, e.g. `errcode is not an integer`.
        what: &'static str,
    },
    /// The request could not be encoded as JSON (a bug, not WeChat's doing).
    #[error("cannot encode the request as json")]
    Encode(#[source] Arc<serde_json::Error>),
}

impl CallError {
    /// Whether a later attempt may succeed: network errors, timeouts, 5xx and 429.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable(_) => true,
            Self::Status(status) => *status >= 500 || *status == 429,
            Self::NotJson(_) | Self::BadAnswer { .. } | Self::Encode(_) => false,
        }
    }
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TLS configuration could not be built.
    #[error("cannot set up TLS")]
    Tls(#[source] rustls::Error),
}

/// WeChat's JSON answer to an API call.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiAnswer {
    /// `errcode`; 0 when absent (successful answers of some endpoints carry none).
    pub errcode: i64,
    /// `errmsg`, empty when absent. Never contains secrets; may contain a `rid`.
    pub errmsg: String,
    /// The whole answer.
    pub body: Value,
}

/// The WeChat API client. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct WechatClient {
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    api_base: Arc<str>,
    timeout: Duration,
}

impl std::fmt::Debug for WechatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WechatClient")
            .field("api_base", &self.api_base)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl WechatClient {
    /// A client for `api_base` (`https://api.weixin.qq.com`, or a simulator's `http://…`),
    /// every call bounded by `timeout`. HTTPS verifies against the system's root
    /// certificates.
    pub fn new(api_base: &str, timeout: Duration) -> Result<Self, ClientError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(Arc::clone(&provider))
        {
            Ok(builder) => builder,
            Err(e) => {
                // No system roots (a bare container): plain HTTP still works; HTTPS calls
                // will fail certificate verification and say so.
                tracing::warn!(error = %e, "no system root certificates; https calls will fail");
                let tls = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(ClientError::Tls)?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls)
            }
        };
        let connector = builder.https_or_http().enable_http1().build();
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self {
            http,
            api_base: Arc::from(api_base.trim_end_matches('/')),
            timeout,
        })
    }

    /// `GET {api_base}{path}?{query}`.
    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<ApiAnswer, CallError> {
        self.call(Method::GET, path, query, None).await
    }

    /// `POST {api_base}{path}?{query}` with `body` as JSON.
    pub async fn post(
        &self,
        path: &str,
        query: &[(&str, &str)],
        body: &Value,
    ) -> Result<ApiAnswer, CallError> {
        let body = serde_json::to_vec(body).map_err(|e| CallError::Encode(Arc::new(e)))?;
        let content_type = HeaderValue::from_static("application/json; charset=utf-8");
        self.call(
            Method::POST,
            path,
            query,
            Some((Bytes::from(body), content_type)),
        )
        .await
    }

    /// `POST {api_base}{path}?{query}` as `multipart/form-data` with one file part (WeChat's
    /// media uploads, docs/protocol.md §15), answered as JSON like every other call.
    ///
    /// The boundary is random (128 bits), so file bytes cannot realistically contain it. The
    /// caller checks sizes; the whole file is held in memory.
    pub async fn post_multipart(
        &self,
        path: &str,
        query: &[(&str, &str)],
        file: &MultipartFile<'_>,
    ) -> Result<ApiAnswer, CallError> {
        let boundary = format!("wxgate-{:032x}", rand::random::<u128>());
        let body = multipart_body(&boundary, file);
        let content_type =
            HeaderValue::from_str(&format!("multipart/form-data; boundary={boundary}"))
                .map_err(|e| CallError::Unreachable(Arc::new(e)))?;
        self.call(Method::POST, path, query, Some((body, content_type)))
            .await
    }

    /// `POST /cgi-bin/message/custom/send` (docs/protocol.md §6.1).
    pub async fn custom_send(
        &self,
        access_token: &Secret,
        message: &CustomMessage,
    ) -> Result<ApiAnswer, CallError> {
        let body = serde_json::to_value(message).map_err(|e| CallError::Encode(Arc::new(e)))?;
        self.post(
            "/cgi-bin/message/custom/send",
            &[("access_token", access_token.expose())],
            &body,
        )
        .await
    }

    /// `POST /cgi-bin/message/custom/typing` (docs/protocol.md §6.3); `typing` false cancels.
    pub async fn custom_typing(
        &self,
        access_token: &Secret,
        touser: &str,
        typing: bool,
    ) -> Result<ApiAnswer, CallError> {
        let command = if typing { "Typing" } else { "CancelTyping" };
        self.post(
            "/cgi-bin/message/custom/typing",
            &[("access_token", access_token.expose())],
            &json!({ "touser": touser, "command": command }),
        )
        .await
    }

    /// `GET url` (absolute, e.g. a QR code's `showqrcode` image) with the client's timeout:
    /// the body (at most `max_bytes`) and its `Content-Type`. Not an API call: the answer is
    /// not parsed, and any status but 200 is [`CallError::Status`].
    pub async fn download(
        &self,
        url: &str,
        max_bytes: usize,
    ) -> Result<(Option<String>, Bytes), CallError> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(url)
            .body(Full::new(Bytes::new()))
            .map_err(|e| CallError::Unreachable(Arc::new(e)))?;
        let (status, content_type, bytes) = self.exchange(request, max_bytes).await?;
        if status != StatusCode::OK {
            return Err(CallError::Status(status.as_u16()));
        }
        Ok((content_type, bytes))
    }

    /// Sends `request` and reads the answer (status, `Content-Type`, at most `max_bytes` of
    /// body), all within the client's timeout.
    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        max_bytes: usize,
    ) -> Result<(StatusCode, Option<String>, Bytes), CallError> {
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| CallError::Unreachable(Arc::new(e)))?;
            let status = response.status();
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let bytes = Limited::new(response.into_body(), max_bytes)
                .collect()
                .await
                .map_err(|e| CallError::Unreachable(Arc::from(e)))?
                .to_bytes();
            Ok::<_, CallError>((status, content_type, bytes))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|e| CallError::Unreachable(Arc::new(e)))?
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<(Bytes, HeaderValue)>,
    ) -> Result<ApiAnswer, CallError> {
        let uri = uri(&self.api_base, path, query);
        let mut request = Request::builder().method(method).uri(uri);
        let body = match body {
            Some((body, content_type)) => {
                request = request.header(header::CONTENT_TYPE, content_type);
                body
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(body))
            .map_err(|e| CallError::Unreachable(Arc::new(e)))?;
        let (status, _, bytes) = self.exchange(request, MAX_ANSWER_BYTES).await?;
        if status != StatusCode::OK {
            return Err(CallError::Status(status.as_u16()));
        }
        let body: Value =
            serde_json::from_slice(&bytes).map_err(|e| CallError::NotJson(Arc::new(e)))?;
        let errcode = match body.get("errcode") {
            None | Some(Value::Null) => 0,
            Some(code) => code.as_i64().ok_or(CallError::BadAnswer {
                what: "errcode is not an integer",
            })?,
        };
        let errmsg = body
            .get("errmsg")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Ok(ApiAnswer {
            errcode,
            errmsg,
            body,
        })
    }
}

#[async_trait]
impl TokenFetcher for WechatClient {
    async fn fetch(
        &self,
        mode: TokenMode,
        appid: &str,
        secret: &Secret,
        force_refresh: bool,
    ) -> Result<FetchedToken, FetchError> {
        let started = Instant::now();
        let answer = match mode {
            TokenMode::Stable => {
                self.post(
                    "/cgi-bin/stable_token",
                    &[],
                    &json!({
                        "grant_type": "client_credential",
                        "appid": appid,
                        "secret": secret.expose(),
                        "force_refresh": force_refresh,
                    }),
                )
                .await
            }
            TokenMode::Classic => {
                self.get(
                    "/cgi-bin/token",
                    &[
                        ("grant_type", "client_credential"),
                        ("appid", appid),
                        ("secret", secret.expose()),
                    ],
                )
                .await
            }
        };
        let answer = answer.map_err(|e| match e {
            CallError::NotJson(_) => FetchError::BadAnswer { what: "not json" },
            CallError::BadAnswer { what } => FetchError::BadAnswer { what },
            other => FetchError::Unreachable(Arc::new(other)),
        })?;
        tracing::debug!(
            appid,
            errcode = answer.errcode,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "token endpoint answered"
        );
        if answer.errcode != 0 {
            return Err(FetchError::Errcode {
                errcode: answer.errcode,
                errmsg: answer.errmsg,
            });
        }
        let access_token = answer
            .body
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or(FetchError::BadAnswer {
                what: "no access_token",
            })?;
        let expires_in = answer
            .body
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(7200);
        Ok(FetchedToken {
            access_token: Secret::new(access_token),
            expires_in: Duration::from_secs(expires_in),
        })
    }
}

/// One file part of a `multipart/form-data` upload.
#[derive(Debug, Clone, Copy)]
pub struct MultipartFile<'a> {
    /// The form field's name (`media` for WeChat's uploads).
    pub field: &'a str,
    /// The file name sent in `Content-Disposition`; `"`, `\`, CR and LF become `_`.
    pub filename: &'a str,
    /// The part's `Content-Type` (`image/jpeg`); CR and LF become `_`.
    pub content_type: &'a str,
    /// The file's bytes.
    pub data: &'a [u8],
}

/// The body of a `multipart/form-data` request holding `file` alone (RFC 7578).
fn multipart_body(boundary: &str, file: &MultipartFile<'_>) -> Bytes {
    let quoted = |text: &str| text.replace(['"', '\\', '\r', '\n'], "_");
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"; filename=\"{}\"\r\nContent-Type: {}\r\n\r\n",
        quoted(file.field),
        quoted(file.filename),
        file.content_type.replace(['\r', '\n'], "_"),
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let mut body = Vec::with_capacity(head.len() + file.data.len() + tail.len());
    body.extend_from_slice(head.as_bytes());
    body.extend_from_slice(file.data);
    body.extend_from_slice(tail.as_bytes());
    Bytes::from(body)
}

/// `{api_base}{path}?{query}`, the query form-encoded.
fn uri(api_base: &str, path: &str, query: &[(&str, &str)]) -> String {
    let mut uri = format!("{api_base}{path}");
    if !query.is_empty() {
        uri.push('?');
        let start = uri.len();
        form_urlencoded::Serializer::for_suffix(&mut uri, start).extend_pairs(query);
    }
    uri
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_form_encoded() {
        assert_eq!(uri("http://x", "/p", &[]), "http://x/p");
        assert_eq!(
            uri(
                "http://x",
                "/p",
                &[("access_token", "abc-_.*09"), ("k", "a b&c=d/é+")]
            ),
            "http://x/p?access_token=abc-_.*09&k=a+b%26c%3Dd%2F%C3%A9%2B"
        );
    }

    #[test]
    fn a_multipart_body_has_one_file_part() {
        let file = MultipartFile {
            field: "media",
            filename: "a\"b.jpg",
            content_type: "image/jpeg",
            data: b"\x00\xffJPEG",
        };
        let body = multipart_body("B", &file);
        assert_eq!(
            &body[..],
            &b"--B\r\nContent-Disposition: form-data; name=\"media\"; filename=\"a_b.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n\x00\xffJPEG\r\n--B--\r\n"[..]
        );
    }

    #[test]
    fn transient_call_errors() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let unreachable = CallError::Unreachable(Arc::new(refused));
        assert!(unreachable.is_transient());
        // The cause is the source, not part of the message: a log prints each once.
        assert_eq!(unreachable.to_string(), "wechat unreachable");
        let source = std::error::Error::source(&unreachable).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("connection refused"));
        assert!(CallError::Status(500).is_transient());
        assert!(CallError::Status(429).is_transient());
        assert!(!CallError::Status(404).is_transient());
        assert!(!CallError::BadAnswer { what: "x" }.is_transient());
    }
}

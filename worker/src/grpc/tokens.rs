//! `wxgate.v1.Tokens` (docs/contract.md §1.4, §5): the shared access token and JS-SDK ticket,
//! JS-SDK signatures and web authorization (docs/protocol.md §11, §12).
//!
//! Tokens, tickets, OAuth codes and web tokens are never logged.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use serde_json::Value;
use tonic::{Request, Response, Status};
use wechat::oauth::Scope;
use wxgate_core::config::{Account, Secret};
use wxgate_core::tickets::{FetchedTicket, GetTicketError, Ticket, TicketService};
use wxgate_proto::v1::tokens_server::Tokens;
use wxgate_proto::v1::{
    GetAccessTokenRequest, GetAccessTokenResponse, GetJsapiTicketRequest, GetJsapiTicketResponse,
    OAuthAuthorizeUrlRequest, OAuthAuthorizeUrlResponse, OAuthExchangeCodeRequest,
    OAuthExchangeCodeResponse, OAuthScope, OAuthUserProfile, SignJsSdkRequest, SignJsSdkResponse,
};

use super::{Api, ApiError, Caller};
use crate::client::{ApiAnswer, CallError};

/// Longest page URL [`Tokens::sign_js_sdk`] signs.
const MAX_PAGE_URL_BYTES: usize = 4096;
/// Longest OAuth `redirect_uri`.
const MAX_REDIRECT_URI_BYTES: usize = 1024;
/// Longest OAuth `state` (WeChat's rule, docs/protocol.md §12.1).
const MAX_STATE_BYTES: usize = 128;
/// Longest OAuth `code` accepted.
const MAX_CODE_BYTES: usize = 512;
/// Length of a generated `nonceStr` (docs/protocol.md §11.2).
const NONCE_LEN: usize = 16;

/// The Tokens service.
pub struct TokensService {
    api: Arc<Api>,
    tickets: TicketService,
}

impl TokensService {
    /// The service over `api`. JS-SDK tickets are shared in the same store as the tokens;
    /// a caller waits for another process's ticket refresh at most three WeChat calls (a token
    /// refresh, the ticket call and its retry) plus 1 s.
    pub fn new(api: Arc<Api>) -> Self {
        let wechat = &api.config.wechat;
        let tickets = TicketService::new(
            Arc::clone(&api.store),
            &api.config.namespace,
            wechat.refresh_ahead,
            wechat.http_timeout * 3 + Duration::from_secs(1),
        );
        Self { api, tickets }
    }

    fn account<T>(&self, request: &Request<T>, account_id: &str) -> Result<Arc<Account>, ApiError> {
        Caller::of(request)?.account(&self.api.accounts, account_id)
    }

    /// The shared ticket, fetched with the shared access token when this process refreshes.
    async fn jsapi_ticket(&self, account: &Account) -> Result<Ticket, ApiError> {
        let fetch = || async {
            let answer = self
                .api
                .call(account, |token| {
                    let client = self.api.client.clone();
                    async move {
                        client
                            .get(
                                "/cgi-bin/ticket/getticket",
                                &[("access_token", token.expose()), ("type", "jsapi")],
                            )
                            .await
                    }
                })
                .await?;
            let ticket = str_of(&answer.body, "ticket")
                .filter(|t| !t.is_empty())
                .ok_or(ApiError::Call(CallError::BadAnswer {
                    what: "the ticket answer has no ticket",
                }))?;
            let expires_in = answer
                .body
                .get("expires_in")
                .and_then(Value::as_u64)
                .unwrap_or(7200);
            Ok::<_, ApiError>(FetchedTicket {
                ticket: Secret::new(ticket),
                expires_in: Duration::from_secs(expires_in),
            })
        };
        self.tickets
            .get_jsapi(&account.appid, fetch)
            .await
            .map_err(|e| match e {
                GetTicketError::Fetch(e) => e,
                GetTicketError::Ticket(e) => ApiError::Ticket(e),
            })
    }

    async fn get_access_token_inner(
        &self,
        request: Request<GetAccessTokenRequest>,
    ) -> Result<GetAccessTokenResponse, ApiError> {
        let account = self.account(&request, &request.get_ref().account_id)?;
        let tokens = &self.api.tokens;
        let token = if request.get_ref().force_refresh {
            tracing::info!(account = %account.id, "force refresh asked for through the api");
            tokens
                .force_refresh(&account.appid, &account.secret)
                .await?
        } else {
            tokens.get(&account.appid, &account.secret).await?
        };
        Ok(GetAccessTokenResponse {
            access_token: token.token.expose().to_owned(),
            expires_at_ms: token.expires_at_ms,
        })
    }

    async fn get_jsapi_ticket_inner(
        &self,
        request: Request<GetJsapiTicketRequest>,
    ) -> Result<GetJsapiTicketResponse, ApiError> {
        let account = self.account(&request, &request.get_ref().account_id)?;
        let ticket = self.jsapi_ticket(&account).await?;
        Ok(GetJsapiTicketResponse {
            ticket: ticket.ticket.expose().to_owned(),
            expires_at_ms: ticket.expires_at_ms,
        })
    }

    async fn sign_js_sdk_inner(
        &self,
        request: Request<SignJsSdkRequest>,
    ) -> Result<SignJsSdkResponse, ApiError> {
        let account = self.account(&request, &request.get_ref().account_id)?;
        let url = request.get_ref().url.as_str();
        check_http_url("url", url, MAX_PAGE_URL_BYTES)?;
        let ticket = self.jsapi_ticket(&account).await?;
        let nonce: String = rand::rng()
            .sample_iter(&rand::distr::Alphanumeric)
            .take(NONCE_LEN)
            .map(char::from)
            .collect();
        let timestamp = wxgate_core::now_ms() / 1000;
        let signed = wechat::jssdk::sign(ticket.ticket.expose(), &nonce, timestamp, url);
        Ok(SignJsSdkResponse {
            app_id: account.appid.clone(),
            timestamp: signed.timestamp,
            nonce_str: signed.nonce_str,
            signature: signed.signature,
            url: signed.url,
        })
    }

    fn oauth_authorize_url_inner(
        &self,
        request: Request<OAuthAuthorizeUrlRequest>,
    ) -> Result<OAuthAuthorizeUrlResponse, ApiError> {
        let account = self.account(&request, &request.get_ref().account_id)?;
        let message = request.get_ref();
        check_http_url(
            "redirect_uri",
            &message.redirect_uri,
            MAX_REDIRECT_URI_BYTES,
        )?;
        let scope = scope_of(message.scope)?;
        let state = message.state.as_str();
        if state.is_empty() || state.len() > MAX_STATE_BYTES {
            return Err(ApiError::invalid(
                "state",
                format!("1 to {MAX_STATE_BYTES} characters, got {}", state.len()),
            ));
        }
        if !state.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ApiError::invalid("state", "only [A-Za-z0-9] allowed"));
        }
        Ok(OAuthAuthorizeUrlResponse {
            url: wechat::oauth::authorize_url(
                &self.api.config.wechat.open_base,
                &account.appid,
                &message.redirect_uri,
                scope,
                state,
            ),
        })
    }

    async fn oauth_exchange_code_inner(
        &self,
        request: Request<OAuthExchangeCodeRequest>,
    ) -> Result<OAuthExchangeCodeResponse, ApiError> {
        let account = self.account(&request, &request.get_ref().account_id)?;
        let message = request.get_ref();
        let code = message.code.as_str();
        if code.is_empty() || code.len() > MAX_CODE_BYTES {
            return Err(ApiError::invalid(
                "code",
                format!("1 to {MAX_CODE_BYTES} bytes, got {}", code.len()),
            ));
        }
        let lang = match message.lang.as_str() {
            "" => "zh_CN",
            lang @ ("zh_CN" | "zh_TW" | "en") => lang,
            other => {
                return Err(ApiError::invalid(
                    "lang",
                    format!("one of zh_CN, zh_TW, en; got {other:?}"),
                ));
            }
        };
        // The web token is the user's, not the account's: no shared token, no retry.
        let answer = wechat_ok(
            self.api
                .client
                .get(
                    "/sns/oauth2/access_token",
                    &[
                        ("appid", account.appid.as_str()),
                        ("secret", account.secret.expose()),
                        ("code", code),
                        ("grant_type", "authorization_code"),
                    ],
                )
                .await?,
        )?;
        let body = &answer.body;
        let openid = str_of(body, "openid")
            .filter(|o| !o.is_empty())
            .ok_or(ApiError::Call(CallError::BadAnswer {
                what: "the oauth answer has no openid",
            }))?;
        let granted = str_of(body, "scope").unwrap_or_default();
        // WeChat may list several scopes, comma-separated.
        let scope = if granted.split(',').any(|s| s == "snsapi_userinfo") {
            Scope::UserInfo
        } else {
            Scope::Base
        };
        let unionid = str_of(body, "unionid").unwrap_or_default();
        let is_snapshot_user = body.get("is_snapshotuser").and_then(Value::as_i64) == Some(1);
        let profile = match scope {
            Scope::Base => None,
            Scope::UserInfo => {
                let web_token = str_of(body, "access_token").unwrap_or_default();
                let info = wechat_ok(
                    self.api
                        .client
                        .get(
                            "/sns/userinfo",
                            &[
                                ("access_token", web_token),
                                ("openid", openid),
                                ("lang", lang),
                            ],
                        )
                        .await?,
                )?;
                Some(profile_of(&info.body))
            }
        };
        tracing::debug!(account = %account.id, scope = scope.as_str(), "oauth code exchanged");
        Ok(OAuthExchangeCodeResponse {
            openid: openid.to_owned(),
            scope: match scope {
                Scope::Base => OAuthScope::SnsapiBase,
                Scope::UserInfo => OAuthScope::SnsapiUserinfo,
            } as i32,
            unionid: unionid.to_owned(),
            is_snapshot_user,
            profile,
        })
    }
}

#[tonic::async_trait]
impl Tokens for TokensService {
    async fn get_access_token(
        &self,
        request: Request<GetAccessTokenRequest>,
    ) -> Result<Response<GetAccessTokenResponse>, Status> {
        Ok(Response::new(self.get_access_token_inner(request).await?))
    }

    async fn get_jsapi_ticket(
        &self,
        request: Request<GetJsapiTicketRequest>,
    ) -> Result<Response<GetJsapiTicketResponse>, Status> {
        Ok(Response::new(self.get_jsapi_ticket_inner(request).await?))
    }

    async fn sign_js_sdk(
        &self,
        request: Request<SignJsSdkRequest>,
    ) -> Result<Response<SignJsSdkResponse>, Status> {
        Ok(Response::new(self.sign_js_sdk_inner(request).await?))
    }

    async fn o_auth_authorize_url(
        &self,
        request: Request<OAuthAuthorizeUrlRequest>,
    ) -> Result<Response<OAuthAuthorizeUrlResponse>, Status> {
        Ok(Response::new(self.oauth_authorize_url_inner(request)?))
    }

    async fn o_auth_exchange_code(
        &self,
        request: Request<OAuthExchangeCodeRequest>,
    ) -> Result<Response<OAuthExchangeCodeResponse>, Status> {
        Ok(Response::new(
            self.oauth_exchange_code_inner(request).await?,
        ))
    }
}

/// `field` must be an `http://` or `https://` URL of at most `max` bytes.
fn check_http_url(field: &str, url: &str, max: usize) -> Result<(), ApiError> {
    if url.is_empty() {
        return Err(ApiError::invalid(field, "is required"));
    }
    if url.len() > max {
        return Err(ApiError::invalid(
            field,
            format!("at most {max} bytes, got {}", url.len()),
        ));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ApiError::invalid(
            field,
            "must start with http:// or https://",
        ));
    }
    Ok(())
}

fn scope_of(scope: i32) -> Result<Scope, ApiError> {
    match OAuthScope::try_from(scope) {
        Ok(OAuthScope::SnsapiBase) => Ok(Scope::Base),
        Ok(OAuthScope::SnsapiUserinfo) => Ok(Scope::UserInfo),
        _ => Err(ApiError::invalid(
            "scope",
            "SNSAPI_BASE or SNSAPI_USERINFO is required",
        )),
    }
}

/// An answer of an endpoint called without the shared token: a non-zero errcode is an error.
fn wechat_ok(answer: ApiAnswer) -> Result<ApiAnswer, ApiError> {
    if answer.errcode == 0 {
        Ok(answer)
    } else {
        Err(ApiError::Wechat {
            errcode: answer.errcode,
            errmsg: answer.errmsg,
        })
    }
}

fn str_of<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body.get(name).and_then(Value::as_str)
}

/// The profile of a `/sns/userinfo` answer (docs/protocol.md §12.4).
fn profile_of(body: &Value) -> OAuthUserProfile {
    let text = |name: &str| str_of(body, name).unwrap_or_default().to_owned();
    OAuthUserProfile {
        nickname: text("nickname"),
        sex: body
            .get("sex")
            .and_then(Value::as_i64)
            .and_then(|sex| i32::try_from(sex).ok())
            .unwrap_or(0),
        province: text("province"),
        city: text("city"),
        country: text("country"),
        headimgurl: text("headimgurl"),
        privilege: body
            .get("privilege")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        unionid: text("unionid"),
    }
}

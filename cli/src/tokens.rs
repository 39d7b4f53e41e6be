//! `wxgate token`, `wxgate jssdk`, `wxgate oauth url|exchange`: the Tokens API.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use wxgate_proto::v1 as pb;

use crate::api::Api;
use crate::{Outcome, print_json, println_checked};

/// `wxgate token`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Examples:\n  wxgate token demo\n  curl \"https://api.weixin.qq.com/cgi-bin/user/get?access_token=$(wxgate token demo)\"\n  wxgate token demo --force"
)]
pub struct TokenArgs {
    /// The account.
    pub account: String,
    /// Fetch a new token from WeChat even if the shared one is valid (rate-limited; only
    /// when WeChat rejected the current one).
    #[arg(long)]
    pub force: bool,
    /// Print the expiry too, as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `wxgate jssdk`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "Example:\n  wxgate jssdk demo 'https://shop.example.com/cart?id=7'")]
pub struct JssdkArgs {
    /// The account whose JS-interface safe domain serves the page.
    pub account: String,
    /// The page's URL, as the browser has it (a fragment is dropped).
    pub url: String,
}

/// `wxgate oauth`.
#[derive(Debug, Clone, Subcommand)]
pub enum OauthCommand {
    /// The URL that sends a user through WeChat's authorization page to REDIRECT_URI.
    #[command(
        after_help = "Example:\n  wxgate oauth url demo https://shop.example.com/login --scope userinfo --state s1"
    )]
    Url {
        /// The account.
        account: String,
        /// Where WeChat sends the user back with `code` (its domain must be configured).
        redirect_uri: String,
        /// `base` (silent, openid only) or `userinfo` (consent, profile).
        #[arg(long, value_enum, default_value = "base")]
        scope: Scope,
        /// Echoed back to the redirect URI (1 to 128 characters; check it on return).
        #[arg(long, default_value = "wxgate")]
        state: String,
    },
    /// Exchanges the `code` of a redirect for the user's OpenID (and profile with userinfo).
    #[command(after_help = "Example:\n  wxgate oauth exchange demo 061AbCdE")]
    Exchange {
        /// The account.
        account: String,
        /// The `code` from the redirect (valid 5 minutes, once).
        code: String,
        /// Language of the profile: zh_CN, zh_TW or en.
        #[arg(long, default_value = "")]
        lang: String,
    },
}

/// An OAuth scope.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Scope {
    /// snsapi_base.
    Base,
    /// snsapi_userinfo.
    Userinfo,
}

/// Runs `wxgate token`: prints the account's shared access token.
pub async fn token(api: &Api, args: TokenArgs) -> Outcome {
    let answer = api
        .tokens()
        .get_access_token(pb::GetAccessTokenRequest {
            account_id: args.account,
            force_refresh: args.force,
        })
        .await
        .map_err(|status| api.failure(status))?
        .into_inner();
    if args.json {
        print_json(&json!({
            "access_token": answer.access_token,
            "expires_at_ms": answer.expires_at_ms,
        }))
    } else {
        println_checked(&answer.access_token)
    }
}

/// Runs `wxgate jssdk`: prints the `wx.config` parameters for the page.
pub async fn jssdk(api: &Api, args: JssdkArgs) -> Outcome {
    let answer = api
        .tokens()
        .sign_js_sdk(pb::SignJsSdkRequest {
            account_id: args.account,
            url: args.url,
        })
        .await
        .map_err(|status| api.failure(status))?
        .into_inner();
    print_json(&json!({
        "appId": answer.app_id,
        "timestamp": answer.timestamp,
        "nonceStr": answer.nonce_str,
        "signature": answer.signature,
        "url": answer.url,
    }))
}

/// Runs `wxgate oauth …`.
pub async fn oauth(api: &Api, command: OauthCommand) -> Outcome {
    match command {
        OauthCommand::Url {
            account,
            redirect_uri,
            scope,
            state,
        } => {
            let scope = match scope {
                Scope::Base => pb::OAuthScope::SnsapiBase,
                Scope::Userinfo => pb::OAuthScope::SnsapiUserinfo,
            };
            let answer = api
                .tokens()
                .o_auth_authorize_url(pb::OAuthAuthorizeUrlRequest {
                    account_id: account,
                    redirect_uri,
                    scope: scope.into(),
                    state,
                })
                .await
                .map_err(|status| api.failure(status))?
                .into_inner();
            println_checked(&answer.url)
        }
        OauthCommand::Exchange {
            account,
            code,
            lang,
        } => {
            let answer = api
                .tokens()
                .o_auth_exchange_code(pb::OAuthExchangeCodeRequest {
                    account_id: account,
                    code,
                    lang,
                })
                .await
                .map_err(|status| api.failure(status))?
                .into_inner();
            let scope = match pb::OAuthScope::try_from(answer.scope) {
                Ok(pb::OAuthScope::SnsapiUserinfo) => "snsapi_userinfo",
                Ok(pb::OAuthScope::SnsapiBase) => "snsapi_base",
                _ => "",
            };
            let profile = answer.profile.map(|p| {
                json!({
                    "nickname": p.nickname,
                    "sex": p.sex,
                    "province": p.province,
                    "city": p.city,
                    "country": p.country,
                    "headimgurl": p.headimgurl,
                    "privilege": p.privilege,
                    "unionid": p.unionid,
                })
            });
            print_json(&json!({
                "openid": answer.openid,
                "scope": scope,
                "unionid": answer.unionid,
                "is_snapshot_user": answer.is_snapshot_user,
                "profile": profile,
            }))
        }
    }
}

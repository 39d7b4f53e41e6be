//! `wxgate.v1.Accounts` (docs/contract.md §1.5, §5): list, get, upsert and remove accounts
//! at run time. Admin keys only.
//!
//! Runtime accounts are read from and written to Redis ([`RuntimeAccounts`]), so an answer
//! reflects every change made through any worker; the accounts each process *serves* follow
//! within a second ([`wxgate_core::accounts::Registry::watch`]). Upsert validates with
//! [`AccountSpec::validate`], the config file's own validation, so the reasons are the
//! file's. Secrets are write-only: they never appear in an answer or a log.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use wechat::rules::{
    ArticleSpec, MatchSpec, MediaSpec, MusicSpec, OneOrMany, ReplySpec, RuleSpec, TransferSpec,
    VideoSpec,
};
use wxgate_core::accounts::{Origin, RuntimeAccounts, RuntimeError, parse_spec};
use wxgate_core::config::{Account, AccountSpec, ConfigError, Mode};
use wxgate_proto::v1 as pb;
use wxgate_proto::v1::account_rule_reply::Kind;
use wxgate_proto::v1::accounts_server::Accounts;

use super::{Api, ApiError, Caller};

/// Accounts per page of `List` at most (and when `page_size` is 0).
const MAX_PAGE: usize = 1000;

/// The `Accounts` service.
pub struct AccountsService {
    api: Arc<Api>,
    runtime: RuntimeAccounts,
}

impl AccountsService {
    /// The service on `api`'s store and namespace.
    pub fn new(api: Arc<Api>) -> Self {
        let runtime = RuntimeAccounts::new(Arc::clone(&api.store), api.keys.clone());
        Self { api, runtime }
    }

    /// Every account, file and runtime, sorted by id. A runtime entry that cannot be read
    /// is left out with a log naming its id (Get reports it).
    async fn all(&self) -> Result<Vec<pb::AccountInfo>, ApiError> {
        let mut accounts: Vec<pb::AccountInfo> = self
            .api
            .accounts
            .file_accounts()
            .iter()
            .map(|account| file_info(account))
            .collect();
        for (id, json) in self.runtime.entries().await? {
            if self.api.accounts.is_file_account(&id) {
                continue;
            }
            match parse_spec(&id, &json) {
                Ok(spec) => accounts.push(runtime_info(&spec)),
                Err(e) => {
                    tracing::warn!(account_id = %id, error = %wxgate_core::ErrorChain(&e), "rpc: runtime account in redis is unreadable; not listed");
                }
            }
        }
        accounts.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(accounts)
    }
}

/// An [`ApiError::Invalid`] from the config validation's error, key and reason kept.
fn invalid(error: ConfigError) -> ApiError {
    match error {
        ConfigError::Invalid { key, reason } => ApiError::invalid(key, reason),
        other => ApiError::invalid("account", other.to_string()),
    }
}

/// The id an RPC names: required, checked like the config file checks it.
fn account_id(field: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() {
        return Err(ApiError::invalid(field, "is required"));
    }
    wxgate_core::config::AccountId::parse(id)
        .map(drop)
        .map_err(|e| ApiError::invalid(field, e.to_string()))
}

fn file_account(id: &str) -> ApiError {
    ApiError::FailedPrecondition(format!(
        "account {id:?} is defined in the config file; change it there"
    ))
}

impl AccountsService {
    /// The id of another account, file or runtime (as stored in Redis, not as served), that
    /// has the appid of `spec`. An unreadable runtime entry is not counted.
    async fn appid_owner(&self, spec: &AccountSpec) -> Result<Option<String>, ApiError> {
        /// The one field this check needs: the rest of a stored entry is not parsed.
        #[derive(serde::Deserialize)]
        struct Appid {
            appid: String,
        }
        let file = self
            .api
            .accounts
            .file_accounts()
            .iter()
            .find(|a| a.appid == spec.appid && a.id.as_str() != spec.id);
        if let Some(file) = file {
            return Ok(Some(file.id.as_str().to_owned()));
        }
        Ok(self
            .runtime
            .entries()
            .await?
            .into_iter()
            .filter(|(id, _)| *id != spec.id && !self.api.accounts.is_file_account(id))
            .find(|(_, json)| {
                serde_json::from_slice::<Appid>(json).is_ok_and(|a| a.appid == spec.appid)
            })
            .map(|(id, _)| id))
    }
}

#[tonic::async_trait]
impl Accounts for AccountsService {
    async fn list(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        Caller::of(&request)?.require_admin()?;
        let request = request.into_inner();
        let page = match usize::try_from(request.page_size).unwrap_or(usize::MAX) {
            0 => MAX_PAGE,
            n if n > MAX_PAGE => {
                return Err(ApiError::invalid("page_size", "must be at most 1000").into());
            }
            n => n,
        };
        let mut accounts: Vec<pb::AccountInfo> = self
            .all()
            .await?
            .into_iter()
            .filter(|a| request.page_token.is_empty() || a.id > request.page_token)
            .collect();
        let next_page_token = if accounts.len() > page {
            accounts.truncate(page);
            accounts.last().map(|a| a.id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListAccountsResponse {
            accounts,
            next_page_token,
        }))
    }

    async fn get(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::GetAccountResponse>, Status> {
        Caller::of(&request)?.require_admin()?;
        let id = request.into_inner().account_id;
        account_id("account_id", &id)?;
        let account = match self.api.accounts.snapshot().get(&id) {
            Some(entry) if entry.origin == Origin::File => file_info(&entry.account),
            _ => match self.runtime.get(&id).await.map_err(ApiError::from)? {
                Some(spec) => runtime_info(&spec),
                None => return Err(ApiError::UnknownAccount(id).into()),
            },
        };
        Ok(Response::new(pb::GetAccountResponse {
            account: Some(account),
        }))
    }

    async fn upsert(
        &self,
        request: Request<pb::UpsertAccountRequest>,
    ) -> Result<Response<pb::UpsertAccountResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller.require_admin()?;
        let request = request.into_inner();
        let settings = request
            .account
            .ok_or_else(|| ApiError::invalid("account", "is required"))?;
        account_id("account.id", &settings.id)?;
        if self.api.accounts.is_file_account(&settings.id) {
            return Err(file_account(&settings.id).into());
        }
        if request.clear_previous
            && (!settings.previous_token.is_empty()
                || !settings.previous_encoding_aes_key.is_empty())
        {
            return Err(ApiError::invalid(
                "clear_previous",
                "cannot be combined with account.previous_token or account.previous_encoding_aes_key",
            )
            .into());
        }
        let stored = match self.runtime.get(&settings.id).await {
            Ok(stored) => stored,
            // An unreadable entry is replaced: Upsert is how it gets repaired.
            Err(RuntimeError::Entry { id, source }) => {
                tracing::warn!(account_id = %id, error = %wxgate_core::ErrorChain(&source), "rpc: replacing an unreadable runtime account");
                None
            }
            Err(e) => return Err(ApiError::from(e).into()),
        };
        let created = stored.is_none();
        let spec = merge(settings, stored.unwrap_or_default(), request.clear_previous)?;
        spec.validate("account").map_err(invalid)?;
        if let Some(other) = self.appid_owner(&spec).await? {
            return Err(ApiError::FailedPrecondition(format!(
                "appid {:?} is already used by account {other:?}; access tokens are shared by appid, so an appid belongs to one account only",
                spec.appid
            ))
            .into());
        }
        let version = self.runtime.put(&spec).await.map_err(ApiError::from)?;
        tracing::info!(account_id = %spec.id, caller = %caller.name, created, version, "runtime account stored");
        Ok(Response::new(pb::UpsertAccountResponse {
            account: Some(runtime_info(&spec)),
            created,
            version,
        }))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveAccountRequest>,
    ) -> Result<Response<pb::RemoveAccountResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller.require_admin()?;
        let id = request.into_inner().account_id;
        account_id("account_id", &id)?;
        if self.api.accounts.is_file_account(&id) {
            return Err(file_account(&id).into());
        }
        let Some(version) = self.runtime.remove(&id).await.map_err(ApiError::from)? else {
            return Err(ApiError::UnknownAccount(id).into());
        };
        tracing::info!(account_id = %id, caller = %caller.name, version, "runtime account removed");
        Ok(Response::new(pb::RemoveAccountResponse { version }))
    }

    async fn export(
        &self,
        request: Request<pb::ExportAccountsRequest>,
    ) -> Result<Response<pb::ExportAccountsResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller.require_admin()?;
        let request = request.into_inner();
        for (i, id) in request.account_ids.iter().enumerate() {
            account_id(&format!("account_ids[{i}]"), id)?;
        }
        // The version first: a change between the two reads shows as a newer version on the
        // next export, never as an older one that hides it.
        let version = self
            .runtime
            .version()
            .await
            .map_err(ApiError::from)?
            .unwrap_or(0);
        let mut specs = Vec::new();
        for (id, json) in self.runtime.entries().await.map_err(ApiError::from)? {
            if !request.account_ids.is_empty() && !request.account_ids.contains(&id) {
                continue;
            }
            match parse_spec(&id, &json) {
                Ok(spec) => specs.push(spec),
                Err(e) => {
                    return Err(ApiError::FailedPrecondition(format!(
                        "runtime account {id:?} in redis is unreadable ({}); repair it with Upsert or Remove, then export again",
                        wxgate_core::ErrorChain(&e)
                    ))
                    .into());
                }
            }
        }
        if let Some(missing) = request
            .account_ids
            .iter()
            .find(|id| !specs.iter().any(|spec| &spec.id == *id))
        {
            return Err(ApiError::UnknownAccount(missing.clone()).into());
        }
        specs.sort_by(|a, b| a.id.cmp(&b.id));
        tracing::info!(caller = %caller.name, accounts = specs.len(), with_secrets = request.with_secrets, "runtime accounts exported");
        Ok(Response::new(pb::ExportAccountsResponse {
            accounts: specs
                .iter()
                .map(|spec| settings_of(spec, request.with_secrets))
                .collect(),
            version,
        }))
    }
}

/// `spec` as the settings `Upsert` takes, so that upserting them stores `spec` again; the
/// secrets left empty unless `with_secrets`. For exports, and for clients (the `wxgate`
/// CLI) that read accounts in the config file's form.
pub fn settings_of(spec: &AccountSpec, with_secrets: bool) -> pb::AccountSettings {
    let secret = |value: &str| {
        if with_secrets {
            value.to_owned()
        } else {
            String::new()
        }
    };
    let optional = |value: &Option<String>| value.as_deref().map(secret).unwrap_or_default();
    pb::AccountSettings {
        id: spec.id.clone(),
        appid: spec.appid.clone(),
        secret: secret(&spec.secret),
        token: secret(&spec.token),
        encoding_aes_key: optional(&spec.encoding_aes_key),
        mode: spec
            .mode
            .map_or(pb::AccountMode::Unspecified, mode_of)
            .into(),
        previous_token: optional(&spec.previous_token),
        previous_encoding_aes_key: optional(&spec.previous_encoding_aes_key),
        passive: spec.passive.iter().map(rule_message).collect(),
        custom: spec.custom.iter().map(rule_message).collect(),
    }
}

/// The inverse of [`settings_of`]: `settings` in the config file's form (empty secrets
/// become absent ones). Not validated: [`AccountSpec::validate`] does that. An unknown mode
/// number is left absent (the default, `safe`).
pub fn spec_of(settings: pb::AccountSettings) -> AccountSpec {
    let optional = |value: String| (!value.is_empty()).then_some(value);
    let mode = match pb::AccountMode::try_from(settings.mode) {
        Ok(pb::AccountMode::Plain) => Some(Mode::Plain),
        Ok(pb::AccountMode::Compat) => Some(Mode::Compat),
        Ok(pb::AccountMode::Safe) => Some(Mode::Safe),
        Ok(pb::AccountMode::Unspecified) | Err(_) => None,
    };
    AccountSpec {
        id: settings.id,
        appid: settings.appid,
        secret: settings.secret,
        token: settings.token,
        encoding_aes_key: optional(settings.encoding_aes_key),
        mode,
        previous_token: optional(settings.previous_token),
        previous_encoding_aes_key: optional(settings.previous_encoding_aes_key),
        passive: settings.passive.into_iter().map(rule_spec).collect(),
        custom: settings.custom.into_iter().map(rule_spec).collect(),
    }
}

/// The spec to store: `settings`, with the secrets it leaves empty taken from `stored`
/// (the default spec on a create), and the previous ones dropped when `clear_previous`.
fn merge(
    settings: pb::AccountSettings,
    stored: AccountSpec,
    clear_previous: bool,
) -> Result<AccountSpec, ApiError> {
    let keep = |new: String, old: String| if new.is_empty() { old } else { new };
    let keep_optional = |new: String, old: Option<String>| {
        if new.is_empty() { old } else { Some(new) }
    };
    let mode = match pb::AccountMode::try_from(settings.mode) {
        Ok(pb::AccountMode::Unspecified) => None,
        Ok(pb::AccountMode::Plain) => Some(Mode::Plain),
        Ok(pb::AccountMode::Compat) => Some(Mode::Compat),
        Ok(pb::AccountMode::Safe) => Some(Mode::Safe),
        Err(_) => return Err(ApiError::invalid("account.mode", "is not an AccountMode")),
    };
    let (previous_token, previous_encoding_aes_key) = if clear_previous {
        (None, None)
    } else {
        (
            keep_optional(settings.previous_token, stored.previous_token),
            keep_optional(
                settings.previous_encoding_aes_key,
                stored.previous_encoding_aes_key,
            ),
        )
    };
    Ok(AccountSpec {
        id: settings.id,
        appid: settings.appid,
        secret: keep(settings.secret, stored.secret),
        token: keep(settings.token, stored.token),
        encoding_aes_key: keep_optional(settings.encoding_aes_key, stored.encoding_aes_key),
        mode,
        previous_token,
        previous_encoding_aes_key,
        passive: settings.passive.into_iter().map(rule_spec).collect(),
        custom: settings.custom.into_iter().map(rule_spec).collect(),
    })
}

fn mode_of(mode: Mode) -> pb::AccountMode {
    match mode {
        Mode::Plain => pb::AccountMode::Plain,
        Mode::Compat => pb::AccountMode::Compat,
        Mode::Safe => pb::AccountMode::Safe,
    }
}

/// A config-file account as answered: secrets only as set or not.
fn file_info(account: &Account) -> pb::AccountInfo {
    pb::AccountInfo {
        id: account.id.as_str().to_owned(),
        appid: account.appid.clone(),
        mode: mode_of(account.mode).into(),
        origin: pb::AccountOrigin::File.into(),
        has_secret: !account.secret.expose().is_empty(),
        has_token: !account.token.expose().is_empty(),
        has_encoding_aes_key: account.aes_key.is_some(),
        has_previous_token: account.previous_token.is_some(),
        has_previous_encoding_aes_key: account.previous_aes_key.is_some(),
        passive: account.passive_specs.iter().map(rule_message).collect(),
        custom: account.custom_specs.iter().map(rule_message).collect(),
    }
}

/// A runtime account as answered: secrets only as set or not.
fn runtime_info(spec: &AccountSpec) -> pb::AccountInfo {
    pb::AccountInfo {
        id: spec.id.clone(),
        appid: spec.appid.clone(),
        mode: mode_of(spec.mode.unwrap_or(Mode::Safe)).into(),
        origin: pb::AccountOrigin::Runtime.into(),
        has_secret: !spec.secret.is_empty(),
        has_token: !spec.token.is_empty(),
        has_encoding_aes_key: spec.encoding_aes_key.is_some(),
        has_previous_token: spec.previous_token.is_some(),
        has_previous_encoding_aes_key: spec.previous_encoding_aes_key.is_some(),
        passive: spec.passive.iter().map(rule_message).collect(),
        custom: spec.custom.iter().map(rule_message).collect(),
    }
}

/// A rule message as the config's rule spec; validated later by the same compile as the
/// file's rules. An empty `msg_type`/`event` list means "any" (protobuf cannot tell an
/// empty list from an absent one).
fn rule_spec(rule: pb::AccountRule) -> RuleSpec {
    let list = |values: Vec<String>| match values.len() {
        0 => None,
        _ => Some(OneOrMany::Many(values)),
    };
    let conditions = rule.r#match.unwrap_or_default();
    let mut reply = ReplySpec::default();
    match rule.reply.and_then(|r| r.kind) {
        None => {}
        Some(Kind::Text(text)) => reply.text = Some(text),
        Some(Kind::Echo(echo)) => reply.echo = Some(echo),
        Some(Kind::Image(media)) => {
            reply.image = Some(MediaSpec {
                media_id: media.media_id,
            });
        }
        Some(Kind::Voice(media)) => {
            reply.voice = Some(MediaSpec {
                media_id: media.media_id,
            });
        }
        Some(Kind::Video(video)) => {
            reply.video = Some(VideoSpec {
                media_id: video.media_id,
                title: video.title,
                description: video.description,
            });
        }
        Some(Kind::Music(music)) => {
            reply.music = Some(MusicSpec {
                title: music.title,
                description: music.description,
                music_url: music.music_url,
                hq_music_url: music.hq_music_url,
                thumb_media_id: music.thumb_media_id,
            });
        }
        Some(Kind::News(news)) => {
            reply.news = Some(
                news.articles
                    .into_iter()
                    .map(|a| ArticleSpec {
                        title: a.title,
                        description: a.description,
                        pic_url: a.pic_url,
                        url: a.url,
                    })
                    .collect(),
            );
        }
        Some(Kind::TransferCustomerService(transfer)) => {
            reply.transfer_customer_service = Some(TransferSpec {
                kf_account: transfer.kf_account,
            });
        }
        Some(Kind::Success(success)) => reply.success = Some(success),
    }
    RuleSpec {
        match_spec: MatchSpec {
            msg_type: list(conditions.msg_type),
            event: list(conditions.event),
            event_key: conditions.event_key,
            event_key_prefix: conditions.event_key_prefix,
            content: conditions.content,
            content_prefix: conditions.content_prefix,
            content_contains: conditions.content_contains,
            content_regex: conditions.content_regex,
        },
        reply,
    }
}

/// A rule spec (valid: compiled before it was stored or loaded) as a rule message.
fn rule_message(rule: &RuleSpec) -> pb::AccountRule {
    let list = |values: &Option<OneOrMany>| {
        values
            .as_ref()
            .map(|v| v.values().to_vec())
            .unwrap_or_default()
    };
    let m = &rule.match_spec;
    let r = &rule.reply;
    let media = |spec: &MediaSpec| pb::AccountRuleMedia {
        media_id: spec.media_id.clone(),
    };
    // A valid reply sets exactly one kind; the order only matters for invalid ones.
    let kind = if let Some(text) = &r.text {
        Some(Kind::Text(text.clone()))
    } else if let Some(echo) = r.echo {
        Some(Kind::Echo(echo))
    } else if let Some(image) = &r.image {
        Some(Kind::Image(media(image)))
    } else if let Some(voice) = &r.voice {
        Some(Kind::Voice(media(voice)))
    } else if let Some(video) = &r.video {
        Some(Kind::Video(pb::AccountRuleVideo {
            media_id: video.media_id.clone(),
            title: video.title.clone(),
            description: video.description.clone(),
        }))
    } else if let Some(music) = &r.music {
        Some(Kind::Music(pb::AccountRuleMusic {
            title: music.title.clone(),
            description: music.description.clone(),
            music_url: music.music_url.clone(),
            hq_music_url: music.hq_music_url.clone(),
            thumb_media_id: music.thumb_media_id.clone(),
        }))
    } else if let Some(news) = &r.news {
        Some(Kind::News(pb::AccountRuleNews {
            articles: news
                .iter()
                .map(|a| pb::AccountRuleArticle {
                    title: a.title.clone(),
                    description: a.description.clone(),
                    pic_url: a.pic_url.clone(),
                    url: a.url.clone(),
                })
                .collect(),
        }))
    } else if let Some(transfer) = &r.transfer_customer_service {
        Some(Kind::TransferCustomerService(pb::AccountRuleTransfer {
            kf_account: transfer.kf_account.clone(),
        }))
    } else {
        r.success.map(Kind::Success)
    };
    pb::AccountRule {
        r#match: Some(pb::AccountRuleMatch {
            msg_type: list(&m.msg_type),
            event: list(&m.event),
            event_key: m.event_key.clone(),
            event_key_prefix: m.event_key_prefix.clone(),
            content: m.content.clone(),
            content_prefix: m.content_prefix.clone(),
            content_contains: m.content_contains.clone(),
            content_regex: m.content_regex.clone(),
        }),
        reply: Some(pb::AccountRuleReply { kind }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rule of the tutorial config goes to a message and back unchanged.
    #[test]
    fn rules_survive_the_message_round_trip() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/tutorial.toml"
        ))
        .unwrap();
        let config = wxgate_core::Config::from_toml(&text, |_| None).unwrap();
        let mut seen = 0;
        for account in &config.accounts {
            for spec in account.passive_specs.iter().chain(&account.custom_specs) {
                let back = rule_spec(rule_message(spec));
                // A single msg_type comes back as a list of one: the same rule.
                let normalise = |mut s: RuleSpec| {
                    for list in [&mut s.match_spec.msg_type, &mut s.match_spec.event] {
                        if let Some(one) = list.take() {
                            *list = Some(OneOrMany::Many(one.values().to_vec()));
                        }
                    }
                    s
                };
                assert_eq!(normalise(back), normalise(spec.clone()));
                seen += 1;
            }
        }
        assert!(seen > 5, "the tutorial has rules");
        let music = RuleSpec {
            match_spec: MatchSpec::default(),
            reply: ReplySpec {
                music: Some(MusicSpec {
                    title: Some("t".into()),
                    thumb_media_id: "m".into(),
                    ..MusicSpec::default()
                }),
                ..ReplySpec::default()
            },
        };
        assert_eq!(rule_spec(rule_message(&music)), music);
    }

    #[test]
    fn empty_secrets_keep_the_stored_ones_and_clear_previous_drops_both() {
        let stored = AccountSpec {
            id: "a".into(),
            appid: "wx1".into(),
            secret: "s".into(),
            token: "t".into(),
            encoding_aes_key: Some("k".into()),
            previous_token: Some("pt".into()),
            previous_encoding_aes_key: Some("pk".into()),
            ..AccountSpec::default()
        };
        let settings = pb::AccountSettings {
            id: "a".into(),
            appid: "wx2".into(),
            token: "t2".into(),
            ..pb::AccountSettings::default()
        };
        let kept = merge(settings.clone(), stored.clone(), false).unwrap();
        assert_eq!(kept.appid, "wx2");
        assert_eq!(kept.token, "t2");
        assert_eq!(kept.secret, "s");
        assert_eq!(kept.encoding_aes_key.as_deref(), Some("k"));
        assert_eq!(kept.previous_token.as_deref(), Some("pt"));
        let cleared = merge(settings, stored, true).unwrap();
        assert_eq!(cleared.previous_token, None);
        assert_eq!(cleared.previous_encoding_aes_key, None);
    }
}

//! API keys (docs/contract.md §5): `authorization: Bearer <key>` metadata whose hex SHA-256
//! equals an `[[api_keys]].sha256`. The interceptor authenticates every call of every wxgate
//! service and leaves a [`Caller`] in the request's extensions; each RPC then asks the caller
//! for the account it acts on ([`Caller::account`]) or for admin rights
//! ([`Caller::require_admin`]). gRPC health and reflection are open.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tonic::service::Interceptor;
use tonic::{Request, Status};
use wxgate_core::accounts::Registry;
use wxgate_core::config::{Account, ApiKey};

use super::status::ApiError;

/// Who is calling: the key's name and what it may act on.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `[[api_keys]].name`, for logs.
    pub name: Arc<str>,
    scope: Arc<Scope>,
}

#[derive(Debug)]
enum Scope {
    /// `accounts = ["*"]`: every account, and the Accounts and DeadLetters admin services.
    All,
    /// These account ids only.
    Some(Vec<String>),
}

impl Caller {
    /// Whether this key has `accounts = ["*"]`.
    pub fn is_admin(&self) -> bool {
        matches!(*self.scope, Scope::All)
    }

    /// Whether this key may act for `account_id` (whether or not it exists).
    pub fn may_act_for(&self, account_id: &str) -> bool {
        match &*self.scope {
            Scope::All => true,
            Scope::Some(ids) => ids.iter().any(|id| id == account_id),
        }
    }

    /// `PERMISSION_DENIED` unless the key has `accounts = ["*"]`.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::PermissionDenied(format!(
                "api key {:?} is not an admin key (accounts = [\"*\"])",
                self.name
            )))
        }
    }

    /// The account `account_id`, if this key may act for it (`PERMISSION_DENIED` otherwise,
    /// whether or not it exists, so a key learns nothing about other accounts) and it is
    /// served (`NOT_FOUND`). An empty id is `INVALID_ARGUMENT`.
    pub fn account(&self, accounts: &Registry, account_id: &str) -> Result<Arc<Account>, ApiError> {
        if account_id.is_empty() {
            return Err(ApiError::invalid("account_id", "is required"));
        }
        if !self.may_act_for(account_id) {
            return Err(ApiError::PermissionDenied(format!(
                "api key {:?} may not act for account {account_id:?}",
                self.name
            )));
        }
        accounts
            .get(account_id)
            .ok_or_else(|| ApiError::UnknownAccount(account_id.to_owned()))
    }

    /// The caller a request carries (set by [`Auth`]). Services are only reachable through
    /// the interceptor, so a request without one is a wiring bug, refused as unauthenticated.
    pub fn of<T>(request: &Request<T>) -> Result<Self, ApiError> {
        request
            .extensions()
            .get::<Self>()
            .cloned()
            .ok_or(ApiError::Unauthenticated("no api key"))
    }
}

/// The interceptor: maps a bearer key to its [`Caller`].
#[derive(Debug, Clone)]
pub struct Auth {
    by_hash: Arc<HashMap<String, Caller>>,
}

impl Auth {
    /// The keys of `[[api_keys]]`.
    pub fn new(keys: &[ApiKey]) -> Self {
        let by_hash = keys
            .iter()
            .map(|key| {
                let scope = if key.accounts.iter().any(|a| a == "*") {
                    Scope::All
                } else {
                    Scope::Some(key.accounts.clone())
                };
                let caller = Caller {
                    name: Arc::from(key.name.as_str()),
                    scope: Arc::new(scope),
                };
                (key.sha256.to_ascii_lowercase(), caller)
            })
            .collect();
        Self {
            by_hash: Arc::new(by_hash),
        }
    }

    /// The caller of a bearer `key`, if any `[[api_keys]]` entry has its hash. The hash, not
    /// the key, is compared, so the lookup's timing says nothing about the key.
    pub fn caller(&self, key: &str) -> Option<&Caller> {
        self.by_hash
            .get(&hex::encode(Sha256::digest(key.as_bytes())))
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .ok_or(ApiError::Unauthenticated(
                "missing `authorization: Bearer <api key>` metadata",
            ))?;
        let key = header
            .to_str()
            .ok()
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(ApiError::Unauthenticated(
                "`authorization` metadata must be `Bearer <api key>`",
            ))?;
        let caller = self
            .caller(key)
            .cloned()
            .ok_or(ApiError::Unauthenticated("unknown api key"))?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    fn auth() -> Auth {
        Auth::new(&[
            ApiKey {
                name: "crm".to_owned(),
                sha256: hex::encode(Sha256::digest(b"crm-key")),
                accounts: vec!["demo".to_owned()],
            },
            ApiKey {
                name: "ops".to_owned(),
                sha256: hex::encode(Sha256::digest(b"ops-key")).to_ascii_uppercase(),
                accounts: vec!["*".to_owned()],
            },
        ])
    }

    fn call(auth: &mut Auth, header: Option<&str>) -> Result<Caller, Status> {
        let mut request = Request::new(());
        if let Some(header) = header {
            request
                .metadata_mut()
                .insert("authorization", header.parse().unwrap());
        }
        let request = auth.call(request)?;
        Ok(request.extensions().get::<Caller>().unwrap().clone())
    }

    #[test]
    fn keys_are_recognised_by_their_hash() {
        let mut auth = auth();
        let crm = call(&mut auth, Some("Bearer crm-key")).unwrap();
        assert_eq!(&*crm.name, "crm");
        assert!(crm.may_act_for("demo") && !crm.may_act_for("other"));
        assert!(crm.require_admin().is_err());
        let ops = call(&mut auth, Some("Bearer ops-key")).unwrap();
        assert!(ops.is_admin() && ops.may_act_for("anything"));
    }

    #[test]
    fn missing_malformed_and_unknown_keys_are_unauthenticated() {
        let mut auth = auth();
        for header in [
            None,
            Some("crm-key"),
            Some("Basic crm-key"),
            Some("Bearer nope"),
        ] {
            let status = call(&mut auth, header).unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated, "{header:?}");
        }
    }
}

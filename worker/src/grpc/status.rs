//! The one place where errors of the gRPC API become `tonic::Status` (docs/contract.md §5,
//! §6). Services return [`ApiError`]; nothing else builds a `Status` by hand.

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};
use wechat::errcode::{Class, classify};
use wxgate_core::ErrorChain;
use wxgate_core::accounts::RuntimeError;
use wxgate_core::bus::{BusError, GroupError};
use wxgate_core::store::StoreError;
use wxgate_core::tickets::TicketError;
use wxgate_core::tokens::TokenError;

use crate::client::CallError;

/// The trailer that carries WeChat's errcode on an error answer.
pub const ERRCODE_TRAILER: &str = "x-wechat-errcode";

/// Why an RPC failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request field is missing or out of its limits; nothing was sent to WeChat.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, as named in the proto (`scene_str`, `button[1].sub_button[0].name`).
        field: String,
        /// What is wrong and what the limit is.
        reason: String,
    },
    /// The account is not served (neither in the file nor added at run time).
    #[error("unknown account {0:?}")]
    UnknownAccount(String),
    /// Something else named in the request does not exist (a group, a dead letter).
    #[error("{0}")]
    NotFound(String),
    /// No `authorization: Bearer …` metadata, or a key no `[[api_keys]]` entry has.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The key exists but may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The request is valid but the system's state refuses it (a file account through the
    /// Accounts API, say).
    #[error("{0}")]
    FailedPrecondition(String),
    /// WeChat answered with a non-zero errcode (after one retry with a fresh token when the
    /// token was rejected).
    #[error("wechat errcode {errcode}: {errmsg}")]
    Wechat {
        /// WeChat's errcode.
        errcode: i64,
        /// WeChat's errmsg.
        errmsg: String,
    },
    /// No access token could be had.
    #[error("no access token")]
    Token(#[source] TokenError),
    /// The shared JS-SDK ticket could not be read, stored or waited for.
    #[error("no jsapi ticket")]
    Ticket(#[source] TicketError),
    /// WeChat could not be reached or answered garbage.
    #[error("wechat call failed")]
    Call(#[source] CallError),
    /// The caller did not send something in time (the first request of a stream).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The worker is shutting down; the caller should reconnect (to another worker).
    #[error("worker is shutting down")]
    ShuttingDown,
    /// Redis failed.
    #[error("store failed")]
    Store(#[source] StoreError),
    /// RabbitMQ failed.
    #[error("bus failed")]
    Bus(#[source] BusError),
    /// The runtime accounts in Redis could not be read or written: Redis failed or timed
    /// out (`UNAVAILABLE`), or a stored entry is unreadable (`FAILED_PRECONDITION`: an
    /// Upsert of that id replaces it).
    #[error("runtime accounts")]
    RuntimeAccounts(#[source] RuntimeError),
}

impl ApiError {
    /// An [`ApiError::Invalid`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        Self::Token(e)
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        Self::Call(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<GroupError> for ApiError {
    /// A group queue that exists with other arguments is [`ApiError::FailedPrecondition`]
    /// naming the argument; a broker failure is [`ApiError::Bus`].
    fn from(e: GroupError) -> Self {
        match e {
            GroupError::Mismatch { .. } => Self::FailedPrecondition(format!(
                "{e}: RabbitMQ cannot change a queue's arguments; DeleteGroup first"
            )),
            GroupError::Bus(e) => Self::Bus(e),
        }
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        Self::RuntimeAccounts(e)
    }
}

impl From<BusError> for ApiError {
    fn from(e: BusError) -> Self {
        Self::Bus(e)
    }
}

/// The gRPC code of a WeChat errcode (docs/contract.md §6): rate limits are
/// `RESOURCE_EXHAUSTED`, other transient answers and a token still rejected after a refresh
/// `UNAVAILABLE`, errors in what the caller sent `INVALID_ARGUMENT`, the rest (the account's
/// state or rights: reply window closed, not authorised, user unsubscribed)
/// `FAILED_PRECONDITION`.
pub fn code_of_errcode(errcode: i64) -> Code {
    match classify(errcode) {
        Class::Ok => Code::Ok,
        Class::TokenInvalid => Code::Unavailable,
        Class::Transient => match errcode {
            45009 | 45011 | 45066 => Code::ResourceExhausted,
            _ => Code::Unavailable,
        },
        Class::Permanent => match errcode {
            // Bad openid, media id, template id, message type, url, parameters, JSON …
            40003
            | 40004
            | 40005
            | 40006
            | 40007
            | 40008
            | 40016..=40028
            | 40033
            | 40035
            | 40037
            | 40039
            | 40029
            | 40163
            | 42003
            | 40053
            | 40054
            | 40055
            | 40097
            | 40113
            | 40117
            | 40118
            | 40130
            | 41001..=41099
            | 44001..=44004
            | 45001..=45004
            | 45008
            | 45010
            | 45064
            | 45065
            | 46001
            | 46004
            | 47001
            | 47003
            | 65301..=65400 => Code::InvalidArgument,
            _ => Code::FailedPrecondition,
        },
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        let message = ErrorChain(&error).to_string();
        match &error {
            ApiError::Invalid { .. } => Status::invalid_argument(message),
            ApiError::UnknownAccount(_) | ApiError::NotFound(_) => Status::not_found(message),
            ApiError::Unauthenticated(_) => Status::unauthenticated(message),
            ApiError::PermissionDenied(_) => Status::permission_denied(message),
            ApiError::FailedPrecondition(_) => Status::failed_precondition(message),
            ApiError::DeadlineExceeded(_) => Status::deadline_exceeded(message),
            ApiError::ShuttingDown => Status::unavailable(message),
            ApiError::Wechat { errcode, .. } => {
                let mut trailers = MetadataMap::new();
                trailers.insert(ERRCODE_TRAILER, MetadataValue::from(*errcode));
                Status::with_metadata(code_of_errcode(*errcode), message, trailers)
            }
            ApiError::Token(e) => {
                let code = match e.errcode() {
                    // From the token endpoint itself 40001 means a wrong AppSecret.
                    Some(errcode) if classify(errcode) == Class::TokenInvalid => {
                        Code::FailedPrecondition
                    }
                    Some(errcode) => code_of_errcode(errcode),
                    None if e.is_transient() => Code::Unavailable,
                    None => Code::FailedPrecondition,
                };
                let mut trailers = MetadataMap::new();
                if let Some(errcode) = e.errcode() {
                    trailers.insert(ERRCODE_TRAILER, MetadataValue::from(errcode));
                }
                tracing::warn!(error = %message, "rpc: no access token");
                Status::with_metadata(code, message, trailers)
            }
            ApiError::Call(e) => {
                tracing::warn!(error = %message, "rpc: wechat call failed");
                if e.is_transient() {
                    Status::unavailable(message)
                } else {
                    Status::internal(message)
                }
            }
            ApiError::RuntimeAccounts(RuntimeError::Entry { .. }) => {
                tracing::warn!(error = %message, "rpc: unreadable runtime account");
                Status::failed_precondition(message)
            }
            ApiError::Store(_)
            | ApiError::Bus(_)
            | ApiError::RuntimeAccounts(_)
            | ApiError::Ticket(_) => {
                tracing::warn!(error = %message, "rpc: backend failed");
                Status::unavailable(message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wechat_errors_map_by_class_and_carry_the_errcode() {
        for (errcode, code) in [
            (40003, Code::InvalidArgument),
            (45015, Code::FailedPrecondition),
            (45047, Code::FailedPrecondition),
            (48001, Code::FailedPrecondition),
            (43004, Code::FailedPrecondition),
            (45009, Code::ResourceExhausted),
            (45011, Code::ResourceExhausted),
            (-1, Code::Unavailable),
            (40001, Code::Unavailable),
            (99999, Code::FailedPrecondition),
        ] {
            let status = Status::from(ApiError::Wechat {
                errcode,
                errmsg: "x".to_owned(),
            });
            assert_eq!(status.code(), code, "{errcode}");
            assert_eq!(
                status.metadata().get(ERRCODE_TRAILER).unwrap(),
                &errcode.to_string()
            );
            assert!(status.message().contains(&errcode.to_string()));
        }
    }

    #[test]
    fn token_endpoint_errors_map_by_errcode() {
        use wxgate_core::tokens::FetchError;
        for (errcode, code) in [
            (45009, Code::ResourceExhausted),
            (-1, Code::Unavailable),
            (40001, Code::FailedPrecondition),
            (40125, Code::FailedPrecondition),
            (40164, Code::FailedPrecondition),
        ] {
            let error = TokenError::Fetch(FetchError::Errcode {
                errcode,
                errmsg: "x".to_owned(),
            });
            let status = Status::from(ApiError::Token(error));
            assert_eq!(status.code(), code, "{errcode}");
            assert_eq!(
                status.metadata().get(ERRCODE_TRAILER).unwrap(),
                &errcode.to_string()
            );
        }
    }

    #[test]
    fn validation_errors_name_the_field() {
        let status = Status::from(ApiError::invalid("scene_str", "at most 64 bytes"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "scene_str: at most 64 bytes");
    }
}

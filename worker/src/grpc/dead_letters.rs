//! `DeadLetters` (docs/contract.md §5, §6): list, replay and discard what the worker parked in
//! `{ns}.worker.dead`, through [`Bus::sweep`](wxgate_core::bus::Bus::sweep).

use std::collections::HashSet;
use std::sync::Arc;

use prost::Message as _;
use tonic::{Request, Response, Status};
use wxgate_core::bus::{Decide, Disposition, HeaderValue, Message, Swept};
use wxgate_proto::v1::dead_letters_server::DeadLetters;
use wxgate_proto::v1::{
    DeadLetter, DeadLetterFilter, DiscardDeadLettersRequest, DiscardDeadLettersResponse, Event,
    ListDeadLettersRequest, ListDeadLettersResponse, ReplayDeadLettersRequest,
    ReplayDeadLettersResponse,
};

use super::{Api, ApiError, Caller};
use crate::consumer::{
    ATTEMPT_HEADER, ATTEMPTS_HEADER, DEAD_AT_HEADER, ERRCODE_HEADER, REASON_HEADER,
};

/// Default and largest `limit` of `List`.
const LIST_LIMIT: (u32, u32) = (100, 1000);
/// Default and largest `scan_limit`.
const SCAN_LIMIT: (u32, u32) = (10_000, 100_000);

/// The `DeadLetters` service.
pub struct DeadLettersService {
    api: Arc<Api>,
}

impl DeadLettersService {
    /// The service over `api`'s bus.
    pub fn new(api: Arc<Api>) -> Self {
        Self { api }
    }
}

/// A validated filter, narrowed to what the caller may see.
struct Filter {
    /// `None`: every account.
    accounts: Option<HashSet<String>>,
    event_ids: HashSet<String>,
    errcodes: HashSet<i64>,
    reason: String,
}

impl Filter {
    fn new(caller: &Caller, filter: Option<DeadLetterFilter>) -> Result<Self, ApiError> {
        let filter = filter.unwrap_or_default();
        for (i, id) in filter.account_ids.iter().enumerate() {
            wxgate_core::config::AccountId::parse(id).map_err(|e| {
                ApiError::invalid(format!("filter.account_ids[{i}]"), e.to_string())
            })?;
            if !caller.may_act_for(id) {
                return Err(ApiError::PermissionDenied(format!(
                    "api key {:?} may not act for account {id:?}",
                    caller.name
                )));
            }
        }
        if filter.account_ids.is_empty() && !caller.is_admin() {
            return Err(ApiError::PermissionDenied(format!(
                "api key {:?} must name its accounts in filter.account_ids",
                caller.name
            )));
        }
        for (i, id) in filter.event_ids.iter().enumerate() {
            if id.len() != 32
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(ApiError::invalid(
                    format!("filter.event_ids[{i}]"),
                    "must be 32 lower-case hex characters",
                ));
            }
        }
        Ok(Self {
            accounts: (!filter.account_ids.is_empty())
                .then(|| filter.account_ids.into_iter().collect()),
            event_ids: filter.event_ids.into_iter().collect(),
            errcodes: filter.errcodes.into_iter().collect(),
            reason: filter.reason,
        })
    }

    /// Whether anything narrows the selection (beyond the caller's own accounts).
    fn is_empty(&self) -> bool {
        self.event_ids.is_empty() && self.errcodes.is_empty() && self.reason.is_empty()
    }

    fn matches(&self, letter: &DeadLetter) -> bool {
        self.accounts
            .as_ref()
            .is_none_or(|ids| ids.contains(&letter.account_id))
            && (self.event_ids.is_empty() || self.event_ids.contains(&letter.event_id))
            && (self.errcodes.is_empty()
                || (letter.has_errcode && self.errcodes.contains(&letter.errcode)))
            && (self.reason.is_empty() || self.reason == letter.reason)
    }
}

/// `value`, or `default` when 0; INVALID_ARGUMENT above `max`.
fn limit(field: &str, value: u32, (default, max): (u32, u32)) -> Result<usize, ApiError> {
    match value {
        0 => Ok(default as usize),
        v if v <= max => Ok(v as usize),
        _ => Err(ApiError::invalid(field, format!("at most {max}"))),
    }
}

/// The dead letter a parked message describes.
fn describe(message: &Message) -> DeadLetter {
    let headers = &message.properties;
    let event = Event::decode(message.body.as_ref()).ok();
    let account_id = match headers.header("account_id") {
        Some(HeaderValue::Str(id)) => id.clone(),
        _ => event
            .as_ref()
            .map(|e| e.account_id.clone())
            .unwrap_or_default(),
    };
    let errcode = headers.header_int(ERRCODE_HEADER);
    DeadLetter {
        event_id: headers.message_id.clone().unwrap_or_default(),
        account_id,
        reason: match headers.header(REASON_HEADER) {
            Some(HeaderValue::Str(reason)) => reason.clone(),
            _ => String::new(),
        },
        errcode: errcode.unwrap_or_default(),
        has_errcode: errcode.is_some(),
        attempts: headers
            .header_int(ATTEMPTS_HEADER)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or_default(),
        dead_at_ms: headers.header_int(DEAD_AT_HEADER).unwrap_or_default(),
        event,
    }
}

/// The event as it first went to the worker: the dead-letter headers and the attempt count
/// removed, so the worker starts again at attempt 1.
fn replayable(message: &Message) -> Message {
    let mut copy = message.clone();
    copy.properties.headers.retain(|(name, _)| {
        !matches!(
            name.as_str(),
            REASON_HEADER | ERRCODE_HEADER | ATTEMPTS_HEADER | ATTEMPT_HEADER | DEAD_AT_HEADER
        ) && !name.starts_with("x-death")
            && !name.starts_with("x-first-death")
            && !name.starts_with("x-last-death")
    });
    copy
}

impl DeadLettersService {
    /// Sweeps the dead-letter queue, acting on the matches with `act`; returns the matched
    /// event ids.
    async fn act(
        &self,
        filter: &Filter,
        scan_limit: usize,
        act: impl Fn(&Message) -> Disposition + Send + Sync,
    ) -> Result<(Vec<String>, Swept), ApiError> {
        let mut ids = Vec::new();
        let mut decide = |message: &Message| {
            let letter = describe(message);
            if filter.matches(&letter) {
                ids.push(letter.event_id);
                act(message)
            } else {
                Disposition::Keep
            }
        };
        let swept = self
            .api
            .bus
            .sweep(&self.api.names.dead_queue(), scan_limit, &mut decide)
            .await?;
        Ok((ids, swept))
    }

    fn guarded(
        &self,
        caller: &Caller,
        filter: Option<DeadLetterFilter>,
        all: bool,
    ) -> Result<Filter, ApiError> {
        let filter = Filter::new(caller, filter)?;
        if filter.is_empty() && filter.accounts.is_none() && !all {
            return Err(ApiError::FailedPrecondition(
                "name event_ids, errcodes, a reason or account_ids, or set all = true to act on every dead letter".to_owned(),
            ));
        }
        Ok(filter)
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[tonic::async_trait]
impl DeadLetters for DeadLettersService {
    async fn list(
        &self,
        request: Request<ListDeadLettersRequest>,
    ) -> Result<Response<ListDeadLettersResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let filter = Filter::new(&caller, request.filter)?;
        let limit = limit("limit", request.limit, LIST_LIMIT)?;
        let scan_limit = limit_scan(request.scan_limit)?;
        let mut page = Page {
            filter: &filter,
            limit,
            found: Vec::new(),
        };
        let swept = self
            .api
            .bus
            .sweep(&self.api.names.dead_queue(), scan_limit, &mut page)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(caller = %caller.name, listed = page.found.len(), scanned = swept.scanned, "dead letters listed");
        Ok(Response::new(ListDeadLettersResponse {
            dead_letters: page.found,
            scanned: count(swept.scanned),
            not_scanned: swept.behind,
        }))
    }

    async fn replay(
        &self,
        request: Request<ReplayDeadLettersRequest>,
    ) -> Result<Response<ReplayDeadLettersResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let filter = self.guarded(&caller, request.filter, request.all)?;
        let scan_limit = limit_scan(request.scan_limit)?;
        let worker_queue = self.api.names.worker_queue();
        let (event_ids, swept) = self
            .act(&filter, scan_limit, |message| Disposition::Move {
                queue: worker_queue.clone(),
                message: replayable(message),
            })
            .await?;
        tracing::warn!(caller = %caller.name, replayed = event_ids.len(), scanned = swept.scanned, "dead letters replayed");
        Ok(Response::new(ReplayDeadLettersResponse {
            event_ids,
            scanned: count(swept.scanned),
            not_scanned: swept.behind,
        }))
    }

    async fn discard(
        &self,
        request: Request<DiscardDeadLettersRequest>,
    ) -> Result<Response<DiscardDeadLettersResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let filter = self.guarded(&caller, request.filter, request.all)?;
        let scan_limit = limit_scan(request.scan_limit)?;
        let (event_ids, swept) = self
            .act(&filter, scan_limit, |_| Disposition::Remove)
            .await?;
        tracing::warn!(caller = %caller.name, discarded = event_ids.len(), scanned = swept.scanned, "dead letters discarded");
        Ok(Response::new(DiscardDeadLettersResponse {
            event_ids,
            scanned: count(swept.scanned),
            not_scanned: swept.behind,
        }))
    }
}

/// One page of `List`: keeps every message, collects the matches, and ends the walk once
/// `limit` matched (every message looked at costs the broker a re-publish).
struct Page<'a> {
    filter: &'a Filter,
    limit: usize,
    found: Vec<DeadLetter>,
}

impl Decide for Page<'_> {
    fn decide(&mut self, message: &Message) -> Disposition {
        let letter = describe(message);
        if self.filter.matches(&letter) {
            self.found.push(letter);
        }
        Disposition::Keep
    }

    fn done(&self) -> bool {
        self.found.len() >= self.limit
    }
}

fn limit_scan(value: u32) -> Result<usize, ApiError> {
    limit("scan_limit", value, SCAN_LIMIT)
}

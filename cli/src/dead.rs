//! `wxgate dead list|replay|discard`: the dead letters (`{ns}.worker.dead`) through the
//! DeadLetters API.

use clap::{Args, Subcommand};
use serde_json::json;
use wxgate_proto::v1 as pb;

use crate::api::Api;
use crate::{Failure, Outcome, print_json, println_checked};

/// `wxgate dead`.
#[derive(Debug, Clone, Subcommand)]
pub enum DeadCommand {
    /// Lists dead letters (reason, errcode, attempts, when).
    #[command(
        after_help = "Examples:\n  wxgate dead list\n  wxgate dead list --account demo --errcode 45015 --json"
    )]
    List {
        /// Which dead letters.
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: u32,
        /// As JSON, with each event.
        #[arg(long)]
        json: bool,
    },
    /// Puts matching dead letters back in the worker's queue, attempts reset; each is sent
    /// once at most (sent markers stay).
    #[command(
        after_help = "Examples:\n  wxgate dead replay --event 0f1e…\n  wxgate dead replay --account demo --reason wechat_transient\n  wxgate dead replay --all"
    )]
    Replay {
        /// Which dead letters.
        #[command(flatten)]
        filter: FilterArgs,
        /// Every dead letter (required when no filter is given).
        #[arg(long)]
        all: bool,
    },
    /// Deletes matching dead letters for good.
    #[command(
        after_help = "Examples:\n  wxgate dead discard --account old-shop\n  wxgate dead discard --all"
    )]
    Discard {
        /// Which dead letters.
        #[command(flatten)]
        filter: FilterArgs,
        /// Every dead letter (required when no filter is given).
        #[arg(long)]
        all: bool,
    },
}

/// Which dead letters.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Of this account (repeatable).
    #[arg(long = "account", value_name = "ACCOUNT")]
    pub accounts: Vec<String>,
    /// With this event id (repeatable).
    #[arg(long = "event", value_name = "EVENT_ID")]
    pub events: Vec<String>,
    /// With this WeChat errcode (repeatable).
    #[arg(long = "errcode", value_name = "N", allow_negative_numbers = true)]
    pub errcodes: Vec<i64>,
    /// With this reason (e.g. wechat_permanent, attempts_exhausted, unknown_account).
    #[arg(long, value_name = "REASON", default_value = "")]
    pub reason: String,
}

impl FilterArgs {
    fn is_empty(&self) -> bool {
        self.accounts.is_empty()
            && self.events.is_empty()
            && self.errcodes.is_empty()
            && self.reason.is_empty()
    }

    fn message(self) -> pb::DeadLetterFilter {
        pb::DeadLetterFilter {
            account_ids: self.accounts,
            event_ids: self.events,
            errcodes: self.errcodes,
            reason: self.reason,
        }
    }
}

/// Runs `wxgate dead …`.
pub async fn dead(api: &Api, command: DeadCommand) -> Outcome {
    let fail = |status| api.failure(status);
    match command {
        DeadCommand::List {
            filter,
            limit,
            json,
        } => {
            let answer = api
                .dead_letters()
                .list(pb::ListDeadLettersRequest {
                    filter: Some(filter.message()),
                    limit,
                    scan_limit: 0,
                })
                .await
                .map_err(fail)?
                .into_inner();
            if json {
                let letters: Vec<_> = answer
                    .dead_letters
                    .iter()
                    .map(|d| {
                        json!({
                            "event_id": d.event_id,
                            "account_id": d.account_id,
                            "reason": d.reason,
                            "errcode": d.has_errcode.then_some(d.errcode),
                            "attempts": d.attempts,
                            "dead_at_ms": d.dead_at_ms,
                            "event": d.event.as_ref().map(|e| serde_json::from_str::<serde_json::Value>(&crate::events::json_line(e, false)).unwrap_or_default()),
                        })
                    })
                    .collect();
                return print_json(&json!({
                    "dead_letters": letters,
                    "scanned": answer.scanned,
                    "not_scanned": answer.not_scanned,
                }));
            }
            for d in &answer.dead_letters {
                let errcode = if d.has_errcode {
                    format!(" errcode {}", d.errcode)
                } else {
                    String::new()
                };
                let what = d
                    .event
                    .as_ref()
                    .map(|e| crate::events::human_line(e, false))
                    .unwrap_or_default();
                println_checked(&format!(
                    "{} {} {}{} after {} attempts: {what}",
                    d.event_id, d.account_id, d.reason, errcode, d.attempts
                ))?;
            }
            eprintln!(
                "{} dead letters listed ({} looked at, {} not looked at)",
                answer.dead_letters.len(),
                answer.scanned,
                answer.not_scanned
            );
            Ok(())
        }
        DeadCommand::Replay { filter, all } => {
            let filter = chosen("replay", filter, all)?;
            let answer = api
                .dead_letters()
                .replay(pb::ReplayDeadLettersRequest {
                    filter,
                    all,
                    scan_limit: 0,
                })
                .await
                .map_err(fail)?
                .into_inner();
            report("replayed", &answer.event_ids, answer.not_scanned)
        }
        DeadCommand::Discard { filter, all } => {
            let filter = chosen("discard", filter, all)?;
            let answer = api
                .dead_letters()
                .discard(pb::DiscardDeadLettersRequest {
                    filter,
                    all,
                    scan_limit: 0,
                })
                .await
                .map_err(fail)?
                .into_inner();
            report("discarded", &answer.event_ids, answer.not_scanned)
        }
    }
}

/// The filter of a replay or discard; one that picks nothing needs `--all`, so a bare
/// command never touches every dead letter by accident.
fn chosen(
    what: &str,
    filter: FilterArgs,
    all: bool,
) -> Result<Option<pb::DeadLetterFilter>, Failure> {
    if filter.is_empty() && !all {
        return Err(Failure::usage(format!(
            "{what} what? give --account, --event, --errcode or --reason, or --all"
        )));
    }
    Ok(Some(filter.message()))
}

fn report(what: &str, event_ids: &[String], not_scanned: u64) -> Outcome {
    for id in event_ids {
        println_checked(id)?;
    }
    eprintln!("{what} {} dead letters", event_ids.len());
    if not_scanned > 0 {
        eprintln!("{not_scanned} were not looked at; run the command again for the rest");
    }
    Ok(())
}

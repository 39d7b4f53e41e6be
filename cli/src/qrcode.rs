//! `wxgate qrcode create`: parametric QR codes (Qrcodes API), optionally saving the image.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;
use wxgate_proto::v1 as pb;

use crate::api::Api;
use crate::{Failure, Outcome, print_json};

/// Largest image accepted from `showqrcode`.
const MAX_IMAGE_BYTES: usize = 4 << 20;

/// `wxgate qrcode`.
#[derive(Debug, Clone, Subcommand)]
pub enum QrcodeCommand {
    /// Creates a QR code that pushes `subscribe`/`SCAN` with its scene when scanned.
    #[command(
        after_help = "Examples:\n  wxgate qrcode create demo --scene 123 --expire 7d --png qr.jpg\n  wxgate qrcode create demo --scene-str spring-sale --permanent"
    )]
    Create(CreateArgs),
}

/// `wxgate qrcode create`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("scene_kind").required(true).args(["scene", "scene_str"])))]
pub struct CreateArgs {
    /// The account.
    pub account: String,
    /// An integer scene (1 to 4294967295 temporary; 1 to 100000 permanent).
    #[arg(long, value_name = "N")]
    pub scene: Option<i64>,
    /// A string scene (1 to 64 characters).
    #[arg(long, value_name = "TEXT")]
    pub scene_str: Option<String>,
    /// How long a temporary code lives: seconds, or with a unit (30m, 12h, 7d); at most 30d.
    #[arg(long, value_name = "DURATION", conflicts_with = "permanent", value_parser = parse_duration)]
    pub expire: Option<Duration>,
    /// A permanent code (100,000 per account, never expire).
    #[arg(long)]
    pub permanent: bool,
    /// Save the image WeChat serves for the ticket to FILE (WeChat serves JPEG; saved as
    /// served).
    #[arg(long, value_name = "FILE", alias = "image")]
    pub png: Option<PathBuf>,
}

/// `30`, `30s`, `15m`, `12h`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number with an optional unit s, m, h or d"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    number
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// Runs `wxgate qrcode …`.
pub async fn qrcode(api: &Api, command: QrcodeCommand) -> Outcome {
    let QrcodeCommand::Create(args) = command;
    let kind = match (args.permanent, args.scene.is_some()) {
        (false, true) => pb::QrcodeKind::QrScene,
        (false, false) => pb::QrcodeKind::QrStrScene,
        (true, true) => pb::QrcodeKind::QrLimitScene,
        (true, false) => pb::QrcodeKind::QrLimitStrScene,
    };
    let expire_seconds = match args.expire {
        Some(expire) => i64::try_from(expire.as_secs())
            .map_err(|_| Failure::usage("--expire is too long; at most 30d"))?,
        None => 0,
    };
    let answer = api
        .qrcodes()
        .create(pb::QrcodesCreateRequest {
            account_id: args.account,
            kind: kind.into(),
            scene_id: args.scene.unwrap_or_default(),
            scene_str: args.scene_str.unwrap_or_default(),
            expire_seconds,
        })
        .await
        .map_err(|status| api.failure(status))?
        .into_inner();
    let mut saved = None;
    if let Some(path) = &args.png {
        let client = wx_worker::WechatClient::new("", Duration::from_secs(10))
            .map_err(|e| Failure::failed(format!("cannot set up HTTPS: {e}")))?;
        let (content_type, image) = client
            .download(&answer.image_url, MAX_IMAGE_BYTES)
            .await
            .map_err(|e| {
                Failure::failed(format!(
                    "the QR code was created (ticket {}) but its image could not be fetched from {}: {}",
                    answer.ticket,
                    answer.image_url,
                    wxgate_core::ErrorChain(&e)
                ))
            })?;
        std::fs::write(path, &image).map_err(|e| {
            Failure::failed(format!("cannot write the image to {}: {e}", path.display()))
        })?;
        saved = Some(json!({
            "file": path.display().to_string(),
            "bytes": image.len(),
            "content_type": content_type,
        }));
    }
    print_json(&json!({
        "ticket": answer.ticket,
        "url": answer.url,
        "expire_seconds": answer.expire_seconds,
        "image_url": answer.image_url,
        "saved": saved,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("7w").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}

//! `wxgate media upload`: temporary media (3 days) and article images through the Media API.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde_json::json;
use wxgate_proto::v1 as pb;

use crate::api::Api;
use crate::{Failure, Outcome, print_json, read_file};

/// `wxgate media upload`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Examples:\n  wxgate media upload demo photo.jpg            # prints the media_id for `wxgate send image`\n  wxgate media upload demo cover.jpg --type thumb\n  wxgate media upload demo inline.png --article-image   # a URL for article bodies"
)]
pub struct UploadArgs {
    /// The account.
    pub account: String,
    /// The file (image: png/jpg/gif ≤ 10 MB; voice: amr/mp3 ≤ 2 MB; video: mp4 ≤ 10 MB;
    /// thumb: jpg ≤ 64 KB).
    pub file: PathBuf,
    /// The media type [default: from the extension: image, voice or video].
    #[arg(long = "type", value_enum)]
    pub media_type: Option<MediaType>,
    /// Upload as an image for article bodies (permanent URL, not a media id).
    #[arg(long, conflicts_with = "media_type")]
    pub article_image: bool,
}

/// A temporary media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MediaType {
    /// Images.
    Image,
    /// Voice.
    Voice,
    /// Video.
    Video,
    /// Thumbnails (covers).
    Thumb,
}

/// The type a file's extension suggests.
pub fn type_of(file: &std::path::Path) -> Option<MediaType> {
    let extension = file.extension()?.to_str()?.to_ascii_lowercase();
    match extension.as_str() {
        "png" | "jpg" | "jpeg" | "gif" => Some(MediaType::Image),
        "amr" | "mp3" => Some(MediaType::Voice),
        "mp4" => Some(MediaType::Video),
        _ => None,
    }
}

/// Runs `wxgate media upload`.
pub async fn upload(api: &Api, args: UploadArgs) -> Outcome {
    let data = read_file(&args.file, "the media file")?;
    let filename = args
        .file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("upload")
        .to_owned();
    if args.article_image {
        let answer = api
            .media()
            .upload_image(pb::MediaUploadImageRequest {
                account_id: args.account,
                filename,
                content_type: String::new(),
                data,
            })
            .await
            .map_err(|status| api.failure(status))?
            .into_inner();
        return print_json(&json!({ "url": answer.url }));
    }
    let media_type = match args.media_type.or_else(|| type_of(&args.file)) {
        Some(t) => t,
        None => {
            return Err(Failure::usage(format!(
                "{}: cannot tell the media type from the extension; give --type image|voice|video|thumb",
                args.file.display()
            )));
        }
    };
    let kind = match media_type {
        MediaType::Image => pb::MediaType::Image,
        MediaType::Voice => pb::MediaType::Voice,
        MediaType::Video => pb::MediaType::Video,
        MediaType::Thumb => pb::MediaType::Thumb,
    };
    let answer = api
        .media()
        .upload(pb::MediaUploadRequest {
            account_id: args.account,
            r#type: kind.into(),
            filename,
            content_type: String::new(),
            data,
        })
        .await
        .map_err(|status| api.failure(status))?
        .into_inner();
    print_json(&json!({
        "media_id": answer.media_id,
        "type": format!("{media_type:?}").to_ascii_lowercase(),
        "created_at": answer.created_at,
    }))
}

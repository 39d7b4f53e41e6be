//! `wxgate.v1.Media` (docs/contract.md §5): temporary media and article images
//! (docs/protocol.md §15), uploaded as `multipart/form-data`.
//!
//! Type, size and format (by file extension, as WeChat judges it) are checked before WeChat
//! is called, so a file WeChat would refuse never leaves wxgate.

use std::sync::Arc;

use serde_json::Value;
use tonic::{Request, Response, Status};
use wxgate_core::config::Account;
use wxgate_proto::v1 as pb;
use wxgate_proto::v1::media_server::Media;

use super::messages::{at_most, required};
use super::{Api, ApiError, Caller};
use crate::client::{ApiAnswer, CallError, MultipartFile};

const MB: usize = 1024 * 1024;
/// Largest `image`, `video` (docs/protocol.md §15).
pub const MAX_IMAGE_BYTES: usize = 10 * MB;
/// Largest `voice`.
pub const MAX_VOICE_BYTES: usize = 2 * MB;
/// Largest `video`.
pub const MAX_VIDEO_BYTES: usize = 10 * MB;
/// Largest `thumb`.
pub const MAX_THUMB_BYTES: usize = 64 * 1024;
/// Largest article image (`uploadimg`).
pub const MAX_ARTICLE_IMAGE_BYTES: usize = MB;
/// Largest gRPC request message the Media server accepts: the largest file plus room for the
/// other fields (tonic's default of 4 MiB would refuse a 10 MiB image).
pub const MAX_REQUEST_BYTES: usize = 11 * MB;

const MAX_FILENAME_BYTES: usize = 128;
const MAX_CONTENT_TYPE_BYTES: usize = 128;

/// The Media service.
pub struct MediaService {
    api: Arc<Api>,
}

impl MediaService {
    /// The service over `api`.
    pub fn new(api: Arc<Api>) -> Self {
        Self { api }
    }

    fn account<T>(&self, request: &Request<T>, account_id: &str) -> Result<Arc<Account>, Status> {
        let caller = Caller::of(request)?;
        Ok(caller.account(&self.api.accounts, account_id)?)
    }

    async fn upload(
        &self,
        account: &Account,
        path: &str,
        query: &[(&str, &str)],
        file: &MultipartFile<'_>,
    ) -> Result<ApiAnswer, Status> {
        let client = &self.api.client;
        let answer = self
            .api
            .call(account, |token| async move {
                let mut full = vec![("access_token", token.expose())];
                full.extend_from_slice(query);
                client.post_multipart(path, &full, file).await
            })
            .await?;
        Ok(answer)
    }
}

/// WeChat's name, the largest size and the allowed extensions of a media type.
fn rules(kind: pb::MediaType) -> Option<(&'static str, usize, &'static [&'static str])> {
    match kind {
        pb::MediaType::Image => Some(("image", MAX_IMAGE_BYTES, &["png", "jpeg", "jpg", "gif"])),
        pb::MediaType::Voice => Some(("voice", MAX_VOICE_BYTES, &["amr", "mp3"])),
        pb::MediaType::Video => Some(("video", MAX_VIDEO_BYTES, &["mp4"])),
        pb::MediaType::Thumb => Some(("thumb", MAX_THUMB_BYTES, &["jpg", "jpeg"])),
        pb::MediaType::Unspecified => None,
    }
}

/// The usual Content-Type of an allowed extension.
fn content_type_of(extension: &str) -> &'static str {
    match extension {
        "png" => "image/png",
        "gif" => "image/gif",
        "amr" => "audio/amr",
        "mp3" => "audio/mpeg",
        "mp4" => "video/mp4",
        _ => "image/jpeg",
    }
}

/// Checks a file against `max` bytes and `extensions`; returns its Content-Type.
fn check_file(
    filename: &str,
    content_type: &str,
    data: &[u8],
    what: &str,
    max: usize,
    extensions: &[&str],
) -> Result<String, ApiError> {
    required("filename", filename, MAX_FILENAME_BYTES)?;
    if filename
        .chars()
        .any(|c| matches!(c, '"' | '\\' | '\r' | '\n'))
    {
        return Err(ApiError::invalid(
            "filename",
            "must not contain `\"`, `\\`, CR or LF",
        ));
    }
    let extension = filename
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    if !extensions.contains(&extension.as_str()) {
        return Err(ApiError::invalid(
            "filename",
            format!(
                "a {what} must be a .{} file",
                extensions.join(", .").to_owned()
            ),
        ));
    }
    if data.is_empty() {
        return Err(ApiError::invalid("data", "is empty"));
    }
    if data.len() > max {
        return Err(ApiError::invalid(
            "data",
            format!(
                "is {} bytes; a {what} may have at most {max} bytes",
                data.len()
            ),
        ));
    }
    if content_type.is_empty() {
        return Ok(content_type_of(&extension).to_owned());
    }
    at_most("content_type", content_type, MAX_CONTENT_TYPE_BYTES)?;
    if !content_type.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(ApiError::invalid("content_type", "must be printable ASCII"));
    }
    Ok(content_type.to_owned())
}

fn string_field(answer: &ApiAnswer, name: &str) -> Option<String> {
    answer
        .body
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

#[tonic::async_trait]
impl Media for MediaService {
    async fn upload(
        &self,
        request: Request<pb::MediaUploadRequest>,
    ) -> Result<Response<pb::MediaUploadResponse>, Status> {
        let account = self.account(&request, &request.get_ref().account_id)?;
        let upload = request.get_ref();
        let kind = pb::MediaType::try_from(upload.r#type).unwrap_or(pb::MediaType::Unspecified);
        let (name, max, extensions) = rules(kind)
            .ok_or_else(|| ApiError::invalid("type", "must be IMAGE, VOICE, VIDEO or THUMB"))?;
        let content_type = check_file(
            &upload.filename,
            &upload.content_type,
            &upload.data,
            name,
            max,
            extensions,
        )?;
        let file = MultipartFile {
            field: "media",
            filename: &upload.filename,
            content_type: &content_type,
            data: &upload.data,
        };
        let answer = self
            .upload(&account, "/cgi-bin/media/upload", &[("type", name)], &file)
            .await?;
        // `thumb` answers `thumb_media_id` (docs/protocol.md §15).
        let media_id = string_field(&answer, "media_id")
            .or_else(|| string_field(&answer, "thumb_media_id"))
            .ok_or(ApiError::Call(CallError::BadAnswer {
                what: "an upload answer has no media_id",
            }))?;
        let created_at = answer
            .body
            .get("created_at")
            .and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()))
            .unwrap_or(0);
        Ok(Response::new(pb::MediaUploadResponse {
            media_id,
            r#type: kind.into(),
            created_at,
        }))
    }

    async fn upload_image(
        &self,
        request: Request<pb::MediaUploadImageRequest>,
    ) -> Result<Response<pb::MediaUploadImageResponse>, Status> {
        let account = self.account(&request, &request.get_ref().account_id)?;
        let upload = request.get_ref();
        let content_type = check_file(
            &upload.filename,
            &upload.content_type,
            &upload.data,
            "article image",
            MAX_ARTICLE_IMAGE_BYTES,
            &["jpg", "jpeg", "png"],
        )?;
        let file = MultipartFile {
            field: "media",
            filename: &upload.filename,
            content_type: &content_type,
            data: &upload.data,
        };
        let answer = self
            .upload(&account, "/cgi-bin/media/uploadimg", &[], &file)
            .await?;
        let url = string_field(&answer, "url").ok_or(ApiError::Call(CallError::BadAnswer {
            what: "an uploadimg answer has no url",
        }))?;
        Ok(Response::new(pb::MediaUploadImageResponse { url }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(filename: &str, data: &[u8], kind: pb::MediaType) -> Result<String, String> {
        let (name, max, extensions) = rules(kind).unwrap();
        check_file(filename, "", data, name, max, extensions).map_err(|e| e.to_string())
    }

    #[test]
    fn files_are_checked_by_extension_and_size() {
        assert_eq!(
            check("a.JPG", b"x", pb::MediaType::Thumb).unwrap(),
            "image/jpeg"
        );
        assert_eq!(
            check("a.mp3", b"x", pb::MediaType::Voice).unwrap(),
            "audio/mpeg"
        );
        assert_eq!(
            check("a.png", b"x", pb::MediaType::Thumb).unwrap_err(),
            "filename: a thumb must be a .jpg, .jpeg file"
        );
        let big = vec![0; MAX_THUMB_BYTES + 1];
        assert_eq!(
            check("a.jpg", &big, pb::MediaType::Thumb).unwrap_err(),
            "data: is 65537 bytes; a thumb may have at most 65536 bytes"
        );
        assert!(check("a\".jpg", b"x", pb::MediaType::Image).is_err());
        assert!(check("a.jpg", b"", pb::MediaType::Image).is_err());
    }
}

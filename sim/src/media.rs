//! Temporary media and article images (docs/protocol.md §15): `multipart/form-data` uploads
//! with one file part named `media`, checked for type, format and size like WeChat.

use serde_json::{Value, json};

use crate::api::Ctx;
use crate::errcode::ApiError;
use crate::state::State;

/// Largest file of each kind, in bytes (docs/protocol.md §15; WeChat has changed these over
/// time, hence configurable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaLimits {
    /// `image`: 10 MB.
    pub image_bytes: usize,
    /// `voice`: 2 MB.
    pub voice_bytes: usize,
    /// `video`: 10 MB.
    pub video_bytes: usize,
    /// `thumb`: 64 KB.
    pub thumb_bytes: usize,
    /// `uploadimg` (images for news articles): 1 MB.
    pub article_image_bytes: usize,
}

impl Default for MediaLimits {
    fn default() -> Self {
        const MB: usize = 1024 * 1024;
        MediaLimits {
            image_bytes: 10 * MB,
            voice_bytes: 2 * MB,
            video_bytes: 10 * MB,
            thumb_bytes: 64 * 1024,
            article_image_bytes: MB,
        }
    }
}

/// A file the simulator accepted, as [`crate::Sim::media`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedMedia {
    /// `image`, `voice`, `video`, `thumb`, or `uploadimg` for an article image.
    pub kind: String,
    /// The part's `filename`.
    pub filename: String,
    /// The part's `Content-Type` (empty when absent).
    pub content_type: String,
    /// The file's bytes.
    pub data: Vec<u8>,
    /// Simulated Unix time of the upload, in seconds.
    pub created_at: i64,
}

/// One part of a `multipart/form-data` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Part<'a> {
    pub(crate) name: String,
    pub(crate) filename: Option<String>,
    pub(crate) content_type: Option<String>,
    pub(crate) data: &'a [u8],
}

/// `POST /cgi-bin/media/upload?type=TYPE`.
pub(crate) fn upload(state: &mut State, appid: &str, ctx: &Ctx<'_>) -> Result<Value, ApiError> {
    let kind = ctx.query("type").unwrap_or_default();
    let limits = state.config.media_limits;
    let (limit, extensions): (usize, &[&str]) = match kind {
        "image" => (limits.image_bytes, &["png", "jpeg", "jpg", "gif"]),
        "voice" => (limits.voice_bytes, &["amr", "mp3"]),
        "video" => (limits.video_bytes, &["mp4"]),
        "thumb" => (limits.thumb_bytes, &["jpg", "jpeg"]),
        _ => return Err(ApiError::new(40004)),
    };
    let media = accept(state, appid, ctx, kind, limit, extensions)?;
    let media_id = format!("sim-{kind}-{:x}", state.next_msg_id());
    let created_at = media.created_at;
    store(state, appid, &media_id, media)?;
    let id_key = if kind == "thumb" {
        "thumb_media_id"
    } else {
        "media_id"
    };
    Ok(json!({"type": kind, id_key: media_id, "created_at": created_at}))
}

/// `POST /cgi-bin/media/uploadimg`.
pub(crate) fn upload_image(
    state: &mut State,
    appid: &str,
    ctx: &Ctx<'_>,
) -> Result<Value, ApiError> {
    let limit = state.config.media_limits.article_image_bytes;
    let media = accept(
        state,
        appid,
        ctx,
        "uploadimg",
        limit,
        &["jpg", "jpeg", "png"],
    )?;
    let url = format!(
        "http://mmbiz.qpic.cn/sim_mmbiz/{appid}/{:x}/0",
        state.next_msg_id()
    );
    store(state, appid, &url, media)?;
    Ok(json!({"url": url}))
}

/// The `media` part of the request, checked: present and non-empty (`41005`), an allowed
/// extension (`40005`), at most `limit` bytes (`45001`).
fn accept(
    state: &State,
    appid: &str,
    ctx: &Ctx<'_>,
    kind: &str,
    limit: usize,
    extensions: &[&str],
) -> Result<UploadedMedia, ApiError> {
    if !state.accounts.contains_key(appid) {
        return Err(ApiError::new(40013));
    }
    let parts = ctx
        .content_type
        .and_then(|content_type| parse(content_type, &ctx.body.raw))
        .ok_or(ApiError::new(41005))?;
    let part = parts
        .into_iter()
        .find(|part| part.name == "media")
        .ok_or(ApiError::new(41005))?;
    if part.data.is_empty() {
        return Err(ApiError::new(41005));
    }
    let filename = part.filename.unwrap_or_default();
    let extension = filename
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    if !extensions.contains(&extension.as_str()) {
        return Err(ApiError::new(40005));
    }
    if part.data.len() > limit {
        return Err(ApiError::new(45001));
    }
    Ok(UploadedMedia {
        kind: kind.to_owned(),
        filename,
        content_type: part.content_type.unwrap_or_default(),
        data: part.data.to_vec(),
        created_at: ctx.now_ms.div_euclid(1000),
    })
}

fn store(state: &mut State, appid: &str, id: &str, media: UploadedMedia) -> Result<(), ApiError> {
    let account = state.accounts.get_mut(appid).ok_or(ApiError::new(40013))?;
    account.media.insert(id.to_owned(), media);
    Ok(())
}

/// What the call log keeps of a multipart body: each part's name, filename, content type and
/// size, never the bytes. `None` when the body is not valid multipart.
pub(crate) fn summary(content_type: &str, raw: &[u8]) -> Option<Value> {
    let parts = parse(content_type, raw)?;
    let parts: Vec<Value> = parts
        .iter()
        .map(|part| {
            json!({
                "name": part.name,
                "filename": part.filename,
                "content_type": part.content_type,
                "bytes": part.data.len(),
            })
        })
        .collect();
    Some(json!({ "multipart": parts }))
}

/// Whether `content_type` is `multipart/form-data`.
pub(crate) fn is_multipart(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("multipart/form-data"))
}

/// The parts of a `multipart/form-data` body (RFC 7578), or `None` when the content type has
/// no boundary or the body is malformed.
pub(crate) fn parse<'a>(content_type: &str, raw: &'a [u8]) -> Option<Vec<Part<'a>>> {
    if !is_multipart(content_type) {
        return None;
    }
    let boundary = parameter(content_type, "boundary").filter(|b| !b.is_empty())?;
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let start = find(raw, delimiter)?;
    let mut rest = raw.get(start + delimiter.len()..)?;
    let mut parts = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            return Some(parts);
        }
        rest = rest.strip_prefix(b"\r\n")?;
        let header_end = find(rest, b"\r\n\r\n")?;
        let headers = std::str::from_utf8(rest.get(..header_end)?).ok()?;
        let body = rest.get(header_end + 4..)?;
        let mut close = b"\r\n".to_vec();
        close.extend_from_slice(delimiter);
        let end = find(body, &close)?;
        let mut part = Part {
            name: String::new(),
            filename: None,
            content_type: None,
            data: body.get(..end)?,
        };
        for line in headers.split("\r\n") {
            let (name, value) = line.split_once(':')?;
            let value = value.trim();
            if name.trim().eq_ignore_ascii_case("content-disposition") {
                part.name = parameter(value, "name")?;
                part.filename = parameter(value, "filename");
            } else if name.trim().eq_ignore_ascii_case("content-type") {
                part.content_type = Some(value.to_owned());
            }
        }
        parts.push(part);
        rest = body.get(end + close.len()..)?;
    }
}

/// The value of `; name=value` or `; name="value"` in a header value.
fn parameter(header: &str, name: &str) -> Option<String> {
    header.split(';').skip(1).find_map(|param| {
        let (key, value) = param.split_once('=')?;
        key.trim().eq_ignore_ascii_case(name).then(|| {
            let value = value.trim();
            value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value)
                .to_owned()
        })
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TYPE: &str = "multipart/form-data; boundary=\"XyZ\"";

    #[test]
    fn parses_file_and_field_parts() {
        let raw = b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"media\"; filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n\x00\r\n--X\xff\r\n--XyZ\r\ncontent-disposition: form-data; name=note\r\n\r\nhi\r\n--XyZ--\r\n";
        let parts = parse(TYPE, raw).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "media");
        assert_eq!(parts[0].filename.as_deref(), Some("a.jpg"));
        assert_eq!(parts[0].content_type.as_deref(), Some("image/jpeg"));
        assert_eq!(parts[0].data, b"\x00\r\n--X\xff");
        assert_eq!(parts[1].name, "note");
        assert_eq!(parts[1].data, b"hi");
    }

    #[test]
    fn malformed_bodies_are_refused() {
        assert!(parse("application/json", b"{}").is_none());
        assert!(parse("multipart/form-data", b"--x--").is_none());
        assert!(parse(TYPE, b"--XyZ\r\nno end of headers").is_none());
        assert!(
            parse(
                TYPE,
                b"--XyZ\r\nContent-Disposition: form-data; name=\"m\"\r\n\r\nunterminated"
            )
            .is_none()
        );
    }
}

//! `wxgate.v1.Qrcodes` (docs/contract.md §5): parametric QR codes (docs/protocol.md §9), with
//! every documented limit checked before WeChat is called.

use std::sync::Arc;

use serde_json::{Value, json};
use tonic::{Request, Response, Status};
use wxgate_proto::v1::qrcodes_server::Qrcodes;
use wxgate_proto::v1::{QrcodeKind, QrcodesCreateRequest, QrcodesCreateResponse};

use super::{Api, ApiError, Caller};
use crate::client::CallError;

/// Largest `scene_id` of a temporary code: WeChat documents a 32-bit integer; wxgate keeps to
/// the signed range every SDK accepts (docs/protocol.md §9.1).
const MAX_TEMPORARY_SCENE_ID: i64 = 2_147_483_647;
/// Largest `scene_id` of a permanent code.
const MAX_PERMANENT_SCENE_ID: i64 = 100_000;
/// Longest `scene_str`, in bytes.
const MAX_SCENE_STR_BYTES: usize = 64;
/// Longest lifetime of a temporary code, in seconds (30 days).
const MAX_EXPIRE_SECONDS: i64 = 2_592_000;
/// Lifetime of a temporary code when the request gives none: WeChat's documented default,
/// sent explicitly.
const DEFAULT_EXPIRE_SECONDS: i64 = 60;

/// The Qrcodes service.
pub struct QrcodesService {
    api: Arc<Api>,
}

impl QrcodesService {
    /// The service over `api`.
    pub fn new(api: Arc<Api>) -> Self {
        Self { api }
    }

    async fn create_inner(
        &self,
        request: Request<QrcodesCreateRequest>,
    ) -> Result<QrcodesCreateResponse, ApiError> {
        let caller = Caller::of(&request)?;
        let message = request.into_inner();
        let account = caller.account(&self.api.accounts, &message.account_id)?;
        let body = create_body(&message)?;
        let answer = self
            .api
            .call(&account, |token| {
                let client = self.api.client.clone();
                let body = body.clone();
                async move {
                    client
                        .post(
                            "/cgi-bin/qrcode/create",
                            &[("access_token", token.expose())],
                            &body,
                        )
                        .await
                }
            })
            .await?;
        let ticket = answer
            .body
            .get("ticket")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Call(CallError::BadAnswer {
                what: "the qrcode answer has no ticket",
            }))?;
        let encoded: String = form_urlencoded::byte_serialize(ticket.as_bytes()).collect();
        Ok(QrcodesCreateResponse {
            ticket: ticket.to_owned(),
            url: answer
                .body
                .get("url")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            expire_seconds: answer
                .body
                .get("expire_seconds")
                .and_then(Value::as_i64)
                .unwrap_or(0),
            image_url: format!(
                "{}/cgi-bin/showqrcode?ticket={encoded}",
                self.api.config.wechat.mp_base.trim_end_matches('/')
            ),
        })
    }
}

#[tonic::async_trait]
impl Qrcodes for QrcodesService {
    async fn create(
        &self,
        request: Request<QrcodesCreateRequest>,
    ) -> Result<Response<QrcodesCreateResponse>, Status> {
        Ok(Response::new(self.create_inner(request).await?))
    }
}

/// The `/cgi-bin/qrcode/create` body of a request, or the first limit it breaks
/// (docs/protocol.md §9.1).
fn create_body(request: &QrcodesCreateRequest) -> Result<Value, ApiError> {
    let (action, permanent, by_id) = match QrcodeKind::try_from(request.kind) {
        Ok(QrcodeKind::QrScene) => ("QR_SCENE", false, true),
        Ok(QrcodeKind::QrStrScene) => ("QR_STR_SCENE", false, false),
        Ok(QrcodeKind::QrLimitScene) => ("QR_LIMIT_SCENE", true, true),
        Ok(QrcodeKind::QrLimitStrScene) => ("QR_LIMIT_STR_SCENE", true, false),
        _ => {
            return Err(ApiError::invalid(
                "kind",
                "one of QR_SCENE, QR_STR_SCENE, QR_LIMIT_SCENE, QR_LIMIT_STR_SCENE is required",
            ));
        }
    };
    let scene = if by_id {
        if !request.scene_str.is_empty() {
            return Err(ApiError::invalid(
                "scene_str",
                format!("must be empty for {action} (it takes scene_id)"),
            ));
        }
        let max = if permanent {
            MAX_PERMANENT_SCENE_ID
        } else {
            MAX_TEMPORARY_SCENE_ID
        };
        if !(1..=max).contains(&request.scene_id) {
            return Err(ApiError::invalid(
                "scene_id",
                format!("1 to {max} for {action}, got {}", request.scene_id),
            ));
        }
        json!({ "scene_id": request.scene_id })
    } else {
        if request.scene_id != 0 {
            return Err(ApiError::invalid(
                "scene_id",
                format!("must be 0 for {action} (it takes scene_str)"),
            ));
        }
        let len = request.scene_str.len();
        if !(1..=MAX_SCENE_STR_BYTES).contains(&len) {
            return Err(ApiError::invalid(
                "scene_str",
                format!("1 to {MAX_SCENE_STR_BYTES} bytes, got {len}"),
            ));
        }
        json!({ "scene_str": request.scene_str })
    };
    let mut body = json!({ "action_name": action, "action_info": { "scene": scene } });
    if permanent {
        if request.expire_seconds != 0 {
            return Err(ApiError::invalid(
                "expire_seconds",
                format!("must be 0 for the permanent {action}"),
            ));
        }
    } else {
        let seconds = match request.expire_seconds {
            0 => DEFAULT_EXPIRE_SECONDS,
            seconds if (1..=MAX_EXPIRE_SECONDS).contains(&seconds) => seconds,
            seconds => {
                return Err(ApiError::invalid(
                    "expire_seconds",
                    format!(
                        "1 to {MAX_EXPIRE_SECONDS} (30 days), or 0 for {DEFAULT_EXPIRE_SECONDS}; got {seconds}"
                    ),
                ));
            }
        };
        if let Value::Object(map) = &mut body {
            map.insert("expire_seconds".to_owned(), json!(seconds));
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        kind: QrcodeKind,
        scene_id: i64,
        scene_str: &str,
        expire: i64,
    ) -> QrcodesCreateRequest {
        QrcodesCreateRequest {
            account_id: "demo".into(),
            kind: kind as i32,
            scene_id,
            scene_str: scene_str.into(),
            expire_seconds: expire,
        }
    }

    #[test]
    fn bodies_follow_the_protocol_examples() {
        assert_eq!(
            create_body(&request(QrcodeKind::QrScene, 123, "", 604_800)).unwrap(),
            json!({"expire_seconds": 604800, "action_name": "QR_SCENE", "action_info": {"scene": {"scene_id": 123}}})
        );
        assert_eq!(
            create_body(&request(QrcodeKind::QrStrScene, 0, "promo-2024", 0)).unwrap(),
            json!({"expire_seconds": 60, "action_name": "QR_STR_SCENE", "action_info": {"scene": {"scene_str": "promo-2024"}}})
        );
        assert_eq!(
            create_body(&request(QrcodeKind::QrLimitScene, 100_000, "", 0)).unwrap(),
            json!({"action_name": "QR_LIMIT_SCENE", "action_info": {"scene": {"scene_id": 100000}}})
        );
        assert_eq!(
            create_body(&request(QrcodeKind::QrLimitStrScene, 0, &"x".repeat(64), 0)).unwrap(),
            json!({"action_name": "QR_LIMIT_STR_SCENE", "action_info": {"scene": {"scene_str": "x".repeat(64)}}})
        );
    }
}

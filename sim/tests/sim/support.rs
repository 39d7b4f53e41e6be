//! Helpers shared by the simulator tests: starting a simulator and calling
//! it over HTTP.

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use wxgate_sim::{OpenIdPolicy, Sim, SimConfig};

pub const APP: &str = "wx0123456789abcdef";
pub const SECRET: &str = "secret-a";
pub const APP2: &str = "wxfedcba9876543210";
pub const SECRET2: &str = "secret-b";

/// A fixed simulated start time (2024-01-01T12:00:00+08:00), so quota days
/// are predictable.
pub const START_UNIX_S: i64 = 1_704_081_600;

pub fn config() -> SimConfig {
    SimConfig {
        start_unix_s: Some(START_UNIX_S),
        ..SimConfig::default()
    }
    .with_account(APP, SECRET)
    .with_account(APP2, SECRET2)
}

pub fn strict_config() -> SimConfig {
    config().with_openid_policy(OpenIdPolicy::Strict)
}

pub async fn start(config: SimConfig) -> Sim {
    wxgate_sim::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// A well-formed OpenID numbered `n`.
pub fn openid(n: u32) -> String {
    format!("oUSER_{n:0>22}")
}

/// An HTTP answer: status, content type and body.
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not json ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The errcode of a JSON answer, 0 when absent.
    pub fn errcode(&self) -> i64 {
        assert_eq!(
            self.status,
            200,
            "{:?}",
            String::from_utf8_lossy(&self.body)
        );
        self.json()["errcode"].as_i64().unwrap_or(0)
    }
}

pub async fn request(sim: &Sim, method: Method, path_and_query: &str, body: &str) -> Answer {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let request = Request::builder()
        .method(method)
        .uri(format!("{}{path_and_query}", sim.base_url()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        content_type,
        body,
    }
}

pub async fn get(sim: &Sim, path_and_query: &str) -> Answer {
    request(sim, Method::GET, path_and_query, "").await
}

pub async fn post(sim: &Sim, path_and_query: &str, body: &str) -> Answer {
    request(sim, Method::POST, path_and_query, body).await
}

pub async fn post_json(sim: &Sim, path_and_query: &str, body: &Value) -> Answer {
    post(sim, path_and_query, &serde_json::to_string(body).unwrap()).await
}

/// A token from `/cgi-bin/token`.
pub async fn classic_token(sim: &Sim, appid: &str, secret: &str) -> String {
    let answer = get(
        sim,
        &format!("/cgi-bin/token?grant_type=client_credential&appid={appid}&secret={secret}"),
    )
    .await
    .json();
    answer["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token: {answer}"))
        .to_owned()
}

/// The answer of `/cgi-bin/stable_token`.
pub async fn stable_token(sim: &Sim, appid: &str, secret: &str, force: bool) -> Value {
    post_json(
        sim,
        "/cgi-bin/stable_token",
        &json!({"grant_type": "client_credential", "appid": appid, "secret": secret, "force_refresh": force}),
    )
    .await
    .json()
}

/// Sends a text custom message; returns the errcode.
pub async fn send_text(sim: &Sim, token: &str, touser: &str) -> i64 {
    post_json(
        sim,
        &format!("/cgi-bin/message/custom/send?access_token={token}"),
        &json!({"touser": touser, "msgtype": "text", "text": {"content": "你好"}}),
    )
    .await
    .errcode()
}

/// Asserts the `errmsg` ends with ` rid: xxxxxxxx-xxxxxxxx-xxxxxxxx`.
pub fn assert_rid(answer: &Value) {
    let errmsg = answer["errmsg"].as_str().unwrap();
    let (_, rid) = errmsg
        .rsplit_once(" rid: ")
        .unwrap_or_else(|| panic!("{errmsg}"));
    let groups: Vec<&str> = rid.split('-').collect();
    assert_eq!(groups.len(), 3, "{rid}");
    for group in groups {
        assert_eq!(group.len(), 8, "{rid}");
        assert!(
            group
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    }
}

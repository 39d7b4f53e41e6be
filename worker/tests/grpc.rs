//! The gRPC server itself (docs/contract.md §5): health and reflection without a key, API keys,
//! TLS and mTLS; and the `DeadLetters` service against real RabbitMQ, Redis and the simulator.

// Test support: a failed step fails the test at once, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use wxgate_core::config::GrpcTls;
use wxgate_proto::v1::dead_letters_client::DeadLettersClient;
use wxgate_proto::v1::{
    DeadLetterFilter, DiscardDeadLettersRequest, ListDeadLettersRequest, ReplayDeadLettersRequest,
};
use wxgate_sim::{Fault, Inbound, random_openid};

/// Polls gRPC health until SERVING.
async fn wait_serving(channel: tonic::transport::Channel) {
    let mut health = HealthClient::new(channel);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status);
        if matches!(status, Ok(s) if s == ServingStatus::Serving as i32) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never said SERVING: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_open_and_the_services_want_a_key() {
    let mut h = Harness::new(&[]).await;
    h.start_worker().await;
    let channel = h.channel(0).await;
    wait_serving(channel.clone()).await;

    // Reflection lists every wxgate service.
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("no service list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in ["wxgate.v1.DeadLetters", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == service),
            "{service} not in {names:?}"
        );
    }

    // No key, a malformed header and an unknown key are UNAUTHENTICATED.
    let mut client = DeadLettersClient::new(channel);
    let status = client
        .list(ListDeadLettersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("authorization"), "{status:?}");
    let status = client
        .list(authed("not-a-key", ListDeadLettersRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    h.finish().await;
}

/// A CA, a server certificate for `localhost` and a client certificate, all PEM.
struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
    stranger: (String, String),
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let stranger = rcgen::generate_simple_self_signed(vec!["client".to_owned()]).unwrap();
    Pki {
        ca: ca.pem(),
        server: leaf("localhost"),
        client: leaf("client"),
        stranger: (stranger.cert.pem(), stranger.signing_key.serialize_pem()),
    }
}

/// Starts a worker of `h`'s config with `tls`; returns its gRPC port and its stop token.
async fn tls_worker(h: &Harness, tls: GrpcTls) -> (u16, CancellationToken, wx_worker::Worker) {
    let mut config = (*h.config).clone();
    config.worker.grpc_tls = Some(tls);
    let shutdown = CancellationToken::new();
    let worker = wx_worker::start(Arc::new(config), shutdown.clone())
        .await
        .unwrap();
    (worker.grpc_addr().port(), shutdown, worker)
}

async fn connect(port: u16, tls: ClientTlsConfig) -> Result<tonic::transport::Channel, String> {
    Endpoint::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(WAIT)
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// Whether a call gets through the TLS channel (any answer from the server counts).
async fn answers(channel: tonic::transport::Channel) -> Result<(), tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls_handshakes() {
    let h = Harness::new(&[]).await;
    let pki = pki();
    let dir = std::env::temp_dir().join(format!("wxgate-tls-{}", h.ns));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let cert = write("server.crt", &pki.server.0);
    let key = write("server.key", &pki.server.1);
    let ca_path = write("ca.crt", &pki.ca);
    let trust = || {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.ca))
            .domain_name("localhost")
    };

    // TLS: a client trusting the CA talks; a plain-text client does not.
    let (port, stop, worker) = tls_worker(
        &h,
        GrpcTls {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: None,
        },
    )
    .await;
    let channel = connect(port, trust()).await.unwrap();
    answers(channel).await.unwrap();
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(plain) = plain {
        assert!(
            answers(plain).await.is_err(),
            "plain text was served over TLS"
        );
    }
    stop.cancel();
    worker.wait().await.unwrap();

    // mTLS: a client certificate from the CA talks; none, or one from elsewhere, does not.
    let (port, stop, worker) = tls_worker(
        &h,
        GrpcTls {
            cert,
            key,
            client_ca: Some(ca_path),
        },
    )
    .await;
    let with_client = trust().identity(Identity::from_pem(&pki.client.0, &pki.client.1));
    answers(connect(port, with_client).await.unwrap())
        .await
        .unwrap();
    for (what, tls) in [
        ("no client certificate", trust()),
        (
            "a certificate of another CA",
            trust().identity(Identity::from_pem(&pki.stranger.0, &pki.stranger.1)),
        ),
    ] {
        // The handshake fails at connect or at the first call, depending on TLS 1.3 timing.
        if let Ok(channel) = connect(port, tls).await {
            assert!(answers(channel).await.is_err(), "{what} was accepted");
        }
    }
    stop.cancel();
    worker.wait().await.unwrap();
    std::fs::remove_dir_all(&dir).ok();
    h.finish().await;
}

#[tokio::test]
async fn unreadable_tls_files_stop_the_worker_naming_the_key() {
    let h = Harness::new(&[]).await;
    let dir = std::env::temp_dir().join(format!("wxgate-badtls-{}", h.ns));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("server.crt");
    std::fs::write(&cert, "not a certificate").unwrap();
    let mut config = (*h.config).clone();
    config.worker.grpc_tls = Some(GrpcTls {
        cert: cert.clone(),
        key: cert,
        client_ca: None,
    });
    let error = wx_worker::start(Arc::new(config), CancellationToken::new())
        .await
        .unwrap_err();
    let text = wxgate_core::ErrorChain(&error).to_string();
    assert!(text.contains("worker.grpc_tls_cert"), "{text}");
    std::fs::remove_dir_all(&dir).ok();
    h.finish().await;
}

fn dead_client(channel: tonic::transport::Channel) -> DeadLettersClient<tonic::transport::Channel> {
    DeadLettersClient::new(channel)
}

fn filter(accounts: &[&str], event_ids: &[&str], errcodes: &[i64]) -> Option<DeadLetterFilter> {
    Some(DeadLetterFilter {
        account_ids: accounts.iter().map(|s| (*s).to_owned()).collect(),
        event_ids: event_ids.iter().map(|s| (*s).to_owned()).collect(),
        errcodes: errcodes.to_vec(),
        reason: String::new(),
    })
}

/// Sends to `user` WeChat accepted.
fn sent_to(h: &Harness, user: &str) -> usize {
    h.sim
        .calls_to(SEND)
        .iter()
        .filter(|c| c.errcode == Some(0) && c.body["touser"] == user)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_listed_replayed_once_and_discarded() {
    let mut h = Harness::new(&[]).await;
    h.start_worker().await;
    let channel = h.channel(0).await;
    wait_serving(channel.clone()).await;
    let mut client = dead_client(channel);
    // 48001 (not authorised) is permanent: each event is parked at its first attempt.
    h.sim.inject(SEND, Fault::errcode(48001));
    let users: Vec<String> = (0..3).map(|_| random_openid()).collect();
    let mut ids = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let xml = Inbound::now(ORIGINAL_ID, user).text(7000 + i as u64, "hello");
        ids.push(h.publish_xml(&xml).await);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let listed = loop {
        let listed = client
            .list(authed(ADMIN_KEY, ListDeadLettersRequest::default()))
            .await
            .unwrap()
            .into_inner();
        if listed.dead_letters.len() == 3 {
            break listed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} dead letters parked",
            listed.dead_letters.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(listed.scanned, 3);
    assert_eq!(listed.not_scanned, 0);
    // The worker handles events concurrently: they are parked in any order.
    let mut parked: Vec<String> = listed
        .dead_letters
        .iter()
        .map(|l| l.event_id.clone())
        .collect();
    parked.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(parked, expected);
    for letter in &listed.dead_letters {
        let id = &letter.event_id;
        assert_eq!(letter.account_id, ACCOUNT);
        assert_eq!(letter.reason, "wechat_refused");
        assert!(letter.has_errcode);
        assert_eq!(letter.errcode, 48001);
        assert_eq!(letter.attempts, 1);
        assert!(letter.dead_at_ms > 0);
        let event = letter.event.as_ref().expect("the event decodes");
        assert_eq!(&event.event_id, id);
    }
    // Listing leaves them in place (re-published to the tail: the order may change), also
    // when listed more often than a quorum queue's default delivery limit (20).
    for _ in 0..25 {
        let listed = client
            .list(authed(ADMIN_KEY, ListDeadLettersRequest::default()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.dead_letters.len(), 3);
    }
    let again = client
        .list(authed(ADMIN_KEY, ListDeadLettersRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let mut again: Vec<String> = again
        .dead_letters
        .iter()
        .map(|l| l.event_id.clone())
        .collect();
    again.sort();
    assert_eq!(again, expected);

    // Scoped keys: must name their accounts, and only their own.
    let status = client
        .list(authed(DEMO_KEY, ListDeadLettersRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = client
        .list(authed(
            PLAIN_KEY,
            ListDeadLettersRequest {
                filter: filter(&["demo"], &[], &[]),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let mine = client
        .list(authed(
            DEMO_KEY,
            ListDeadLettersRequest {
                filter: filter(&["demo"], &[], &[48001]),
                limit: 2,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.dead_letters.len(), 2, "limit honoured");
    assert_eq!(mine.scanned, 2, "the walk ends once the page is full");
    assert_eq!(mine.not_scanned, 1);
    let status = client
        .list(authed(
            ADMIN_KEY,
            ListDeadLettersRequest {
                filter: filter(&[], &["nothex"], &[]),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("filter.event_ids[0]"),
        "{status:?}"
    );

    // Replaying everything must be asked for.
    let status = client
        .replay(authed(ADMIN_KEY, ReplayDeadLettersRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    // The cause is fixed: replay the first; it is sent exactly once.
    h.sim.clear_faults();
    let replayed = client
        .replay(authed(
            ADMIN_KEY,
            ReplayDeadLettersRequest {
                filter: filter(&[], &[&ids[0]], &[]),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed.event_ids, vec![ids[0].clone()]);
    let deadline = tokio::time::Instant::now() + WAIT;
    while sent_to(&h, &users[0]) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replay was not sent"
        );
        h.sim
            .wait_for_calls(SEND, h.sim.call_count(SEND) + 1, Duration::from_millis(200))
            .await
            .ok();
    }
    // Replaying it again finds nothing: it is no longer parked.
    let none = client
        .replay(authed(
            ADMIN_KEY,
            ReplayDeadLettersRequest {
                filter: filter(&[], &[&ids[0]], &[]),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(none.event_ids.is_empty());

    // Discard the rest by errcode.
    let discarded = client
        .discard(authed(
            DEMO_KEY,
            DiscardDeadLettersRequest {
                filter: filter(&["demo"], &[], &[48001]),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut discarded = discarded.event_ids;
    discarded.sort();
    let mut rest = ids[1..].to_vec();
    rest.sort();
    assert_eq!(discarded, rest);
    let left = client
        .list(authed(ADMIN_KEY, ListDeadLettersRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(left.dead_letters.is_empty(), "{left:?}");
    // The replayed event was sent once, the discarded ones never.
    let sends = h.sim.calls_to(SEND);
    assert_eq!(sent_to(&h, &users[0]), 1, "{sends:?}");
    assert_eq!(sent_to(&h, &users[1]) + sent_to(&h, &users[2]), 0);
    h.finish().await;
}

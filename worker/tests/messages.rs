//! The Messages and Media gRPC services against a running worker and the WeChat simulator:
//! every RPC's success path with the JSON (or upload) WeChat received, idempotency keys,
//! WeChat's error classes, checks that never reach WeChat, and API-key scope.

mod common;

use common::*;
use serde_json::{Value, json};
use tonic::Code;
use wxgate_proto::v1 as pb;
use wxgate_proto::v1::media_client::MediaClient;
use wxgate_proto::v1::messages_client::MessagesClient;
use wxgate_sim::{Fault, Inbound, random_openid};

const TYPING: &str = "/cgi-bin/message/custom/typing";
const TEMPLATE: &str = "/cgi-bin/message/template/send";
const SENDALL: &str = "/cgi-bin/message/mass/sendall";
const MASS_SEND: &str = "/cgi-bin/message/mass/send";
const PREVIEW: &str = "/cgi-bin/message/mass/preview";
const UPLOAD: &str = "/cgi-bin/media/upload";
const UPLOADIMG: &str = "/cgi-bin/media/uploadimg";
const MESSAGE_PATHS: [&str; 6] = [SEND, TYPING, TEMPLATE, SENDALL, MASS_SEND, PREVIEW];

async fn clients(
    h: &Harness,
) -> (
    MessagesClient<tonic::transport::Channel>,
    MediaClient<tonic::transport::Channel>,
) {
    let channel = h.channel(0).await;
    (
        MessagesClient::new(channel.clone()),
        MediaClient::new(channel).max_encoding_message_size(16 * 1024 * 1024),
    )
}

fn custom(touser: &str, message: pb::send_custom_request::Message) -> pb::SendCustomRequest {
    pb::SendCustomRequest {
        account_id: ACCOUNT.into(),
        touser: touser.into(),
        kf_account: None,
        message: Some(message),
    }
}

fn text(touser: &str, content: &str) -> pb::SendCustomRequest {
    custom(
        touser,
        pb::send_custom_request::Message::Text(pb::CustomText {
            content: content.into(),
        }),
    )
}

/// The body of the last call to `path`.
fn last_body(h: &Harness, path: &str) -> Value {
    h.sim
        .calls_to(path)
        .last()
        .unwrap_or_else(|| panic!("no call to {path}"))
        .body
        .clone()
}

/// Every call to the message and media endpoints so far.
fn outbound_calls(h: &Harness) -> u64 {
    MESSAGE_PATHS
        .iter()
        .chain([UPLOAD, UPLOADIMG].iter())
        .map(|path| h.sim.call_count(path))
        .sum()
}

fn errcode_trailer(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get("x-wechat-errcode")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn send_custom_sends_every_msgtype_as_wechat_json() {
    use pb::send_custom_request::Message as M;
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let (mut messages, _) = clients(&h).await;
    let user = random_openid();
    let media = |id: &str| pb::CustomMediaId {
        media_id: id.into(),
    };
    let cases: Vec<(M, Value)> = vec![
        (
            M::Text(pb::CustomText {
                content: "你好 <a href=\"https://e.com\">link</a>".into(),
            }),
            json!({"msgtype":"text","text":{"content":"你好 <a href=\"https://e.com\">link</a>"}}),
        ),
        (
            M::Image(media("IMG")),
            json!({"msgtype":"image","image":{"media_id":"IMG"}}),
        ),
        (
            M::Voice(media("VOI")),
            json!({"msgtype":"voice","voice":{"media_id":"VOI"}}),
        ),
        (
            M::Video(pb::CustomVideo {
                media_id: "VID".into(),
                thumb_media_id: Some("TH".into()),
                title: Some("T".into()),
                description: None,
            }),
            json!({"msgtype":"video","video":{"media_id":"VID","thumb_media_id":"TH","title":"T"}}),
        ),
        (
            M::Music(pb::CustomMusic {
                thumb_media_id: "TH".into(),
                title: Some("Song".into()),
                description: Some("D".into()),
                musicurl: Some("https://e.com/a.mp3".into()),
                hqmusicurl: None,
            }),
            json!({"msgtype":"music","music":{"thumb_media_id":"TH","title":"Song","description":"D","musicurl":"https://e.com/a.mp3"}}),
        ),
        (
            M::News(pb::CustomNewsArticle {
                title: "T".into(),
                description: "D".into(),
                url: "https://e.com/a".into(),
                picurl: "https://e.com/a.jpg".into(),
            }),
            json!({"msgtype":"news","news":{"articles":[{"title":"T","description":"D","url":"https://e.com/a","picurl":"https://e.com/a.jpg"}]}}),
        ),
        (
            M::Mpnews(media("MPN")),
            json!({"msgtype":"mpnews","mpnews":{"media_id":"MPN"}}),
        ),
        (
            M::Mpnewsarticle(pb::CustomMpNewsArticle {
                article_id: "ART".into(),
            }),
            json!({"msgtype":"mpnewsarticle","mpnewsarticle":{"article_id":"ART"}}),
        ),
        (
            M::Msgmenu(pb::CustomMsgMenu {
                head_content: "Satisfied?".into(),
                list: vec![
                    pb::CustomMsgMenuItem {
                        id: "101".into(),
                        content: "Yes".into(),
                    },
                    pb::CustomMsgMenuItem {
                        id: "102".into(),
                        content: "No".into(),
                    },
                ],
                tail_content: "Thanks".into(),
            }),
            json!({"msgtype":"msgmenu","msgmenu":{"head_content":"Satisfied?","list":[{"id":"101","content":"Yes"},{"id":"102","content":"No"}],"tail_content":"Thanks"}}),
        ),
        (
            M::Wxcard(pb::CustomWxCard {
                card_id: "CARD".into(),
            }),
            json!({"msgtype":"wxcard","wxcard":{"card_id":"CARD"}}),
        ),
        (
            M::Miniprogrampage(pb::CustomMiniProgramPage {
                title: "Shop".into(),
                appid: "wxmini0123456789".into(),
                pagepath: "pages/index/index".into(),
                thumb_media_id: "TH".into(),
            }),
            json!({"msgtype":"miniprogrampage","miniprogrampage":{"title":"Shop","appid":"wxmini0123456789","pagepath":"pages/index/index","thumb_media_id":"TH"}}),
        ),
    ];
    for (message, expected) in cases {
        let answer = messages
            .send_custom(authed(DEMO_KEY, custom(&user, message)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.errcode, 0);
        let mut expected = expected;
        expected["touser"] = json!(user);
        assert_eq!(last_body(&h, SEND), expected);
    }
    // As a customer-service agent.
    let mut request = text(&user, "from an agent");
    request.kf_account = Some("agent1@gh_0123456789ab".into());
    messages
        .send_custom(authed(DEMO_KEY, request))
        .await
        .unwrap();
    assert_eq!(
        last_body(&h, SEND)["customservice"],
        json!({"kf_account": "agent1@gh_0123456789ab"})
    );
    assert_eq!(h.sim.call_count(SEND), 12);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typing_and_cancel() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let (mut messages, _) = clients(&h).await;
    let user = random_openid();
    for (command, expected) in [
        (pb::TypingCommand::Typing, "Typing"),
        (pb::TypingCommand::Cancel, "CancelTyping"),
    ] {
        let request = pb::TypingRequest {
            account_id: ACCOUNT.into(),
            touser: user.clone(),
            command: command.into(),
        };
        let answer = messages.typing(authed(DEMO_KEY, request)).await.unwrap();
        assert_eq!(answer.into_inner().errcode, 0);
        assert_eq!(
            last_body(&h, TYPING),
            json!({"touser": user, "command": expected})
        );
    }
    h.finish().await;
}

fn template(user: &str, key: &str) -> pb::SendTemplateRequest {
    pb::SendTemplateRequest {
        account_id: ACCOUNT.into(),
        touser: user.into(),
        template_id: "TPL_order_shipped".into(),
        url: Some("https://e.com/order/1".into()),
        miniprogram: None,
        data: [
            ("thing1", "Order shipped", None),
            ("character_string2", "SO2024", Some("#173177")),
        ]
        .into_iter()
        .map(|(k, v, c)| {
            (
                k.to_owned(),
                pb::TemplateData {
                    value: v.into(),
                    color: c.map(str::to_owned),
                },
            )
        })
        .collect(),
        client_msg_id: key.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn send_template_with_url_miniprogram_colours_and_idempotency_key() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let (mut messages, _) = clients(&h).await;
    let user = random_openid();

    let first = messages
        .send_template(authed(DEMO_KEY, template(&user, "order-1-shipped")))
        .await
        .unwrap()
        .into_inner();
    assert!(first.msgid > 0 && first.errcode == 0 && !first.already_sent);
    assert_eq!(
        last_body(&h, TEMPLATE),
        json!({
            "touser": user, "template_id": "TPL_order_shipped", "url": "https://e.com/order/1",
            "client_msg_id": "order-1-shipped",
            "data": {"thing1": {"value": "Order shipped"},
                     "character_string2": {"value": "SO2024", "color": "#173177"}},
        })
    );
    // A retry with the same key: WeChat sends nothing new and answers the first msgid.
    let again = messages
        .send_template(authed(DEMO_KEY, template(&user, "order-1-shipped")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.msgid, first.msgid);

    let mut mini = template(&user, "");
    mini.url = None;
    mini.miniprogram = Some(pb::TemplateMiniProgram {
        appid: "wxmini0123456789".into(),
        pagepath: "pages/order?id=1".into(),
    });
    let answer = messages
        .send_template(authed(DEMO_KEY, mini))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(answer.msgid, first.msgid);
    let body = last_body(&h, TEMPLATE);
    assert_eq!(
        body["miniprogram"],
        json!({"appid": "wxmini0123456789", "pagepath": "pages/order?id=1"})
    );
    assert!(body.get("url").is_none() && body.get("client_msg_id").is_none());
    h.finish().await;
}

fn mass(
    target: pb::send_mass_request::Target,
    message: pb::send_mass_request::Message,
    key: &str,
) -> pb::SendMassRequest {
    pb::SendMassRequest {
        account_id: ACCOUNT.into(),
        target: Some(target),
        message: Some(message),
        send_ignore_reprint: false,
        clientmsgid: key.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn send_mass_to_all_tag_list_and_preview() {
    use pb::send_mass_request::{Message as M, Target as T};
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let (mut messages, _) = clients(&h).await;
    let (a, b) = (random_openid(), random_openid());
    let mpnews = || {
        M::Mpnews(pb::MassMediaId {
            media_id: "DRAFT".into(),
        })
    };

    let mut request = mass(T::ToAll(true), mpnews(), "campaign-1");
    request.send_ignore_reprint = true;
    let all = messages
        .send_mass(authed(DEMO_KEY, request))
        .await
        .unwrap()
        .into_inner();
    assert!(all.msg_id > 0 && all.msg_data_id > 0 && !all.already_sent);
    assert_eq!(
        last_body(&h, SENDALL),
        json!({"filter": {"is_to_all": true}, "msgtype": "mpnews", "mpnews": {"media_id": "DRAFT"},
               "send_ignore_reprint": 1, "clientmsgid": "campaign-1"})
    );

    let tag = messages
        .send_mass(authed(
            DEMO_KEY,
            mass(
                T::TagId(2),
                M::Text(pb::MassText {
                    content: "hello tag".into(),
                }),
                "",
            ),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(tag.msg_id > 0 && tag.msg_data_id == 0);
    assert_eq!(
        last_body(&h, SENDALL),
        json!({"filter": {"is_to_all": false, "tag_id": 2}, "msgtype": "text", "text": {"content": "hello tag"}})
    );

    let images = M::Image(pb::MassImages {
        media_ids: vec!["I1".into(), "I2".into()],
        recommend: Some("two pictures".into()),
        need_open_comment: true,
        only_fans_can_comment: false,
    });
    let list = T::Openids(pb::MassOpenIds {
        openids: vec![a.clone(), b.clone()],
    });
    messages
        .send_mass(authed(DEMO_KEY, mass(list, images, "")))
        .await
        .unwrap();
    assert_eq!(
        last_body(&h, MASS_SEND),
        json!({"touser": [a, b], "msgtype": "image",
               "images": {"media_ids": ["I1", "I2"], "recommend": "two pictures",
                          "need_open_comment": 1, "only_fans_can_comment": 0}})
    );
    let video = M::Mpvideo(pb::MassVideo {
        media_id: "MV".into(),
        title: Some("T".into()),
        description: None,
    });
    let list = T::Openids(pb::MassOpenIds {
        openids: vec![a.clone(), b.clone()],
    });
    messages
        .send_mass(authed(DEMO_KEY, mass(list, video, "")))
        .await
        .unwrap();
    assert_eq!(
        last_body(&h, MASS_SEND)["mpvideo"],
        json!({"media_id": "MV", "title": "T"})
    );

    let voice = M::Voice(pb::MassMediaId {
        media_id: "V".into(),
    });
    messages
        .send_mass(authed(
            DEMO_KEY,
            mass(T::PreviewOpenid(a.clone()), voice, ""),
        ))
        .await
        .unwrap();
    assert_eq!(
        last_body(&h, PREVIEW),
        json!({"touser": a, "msgtype": "voice", "voice": {"media_id": "V"}})
    );
    let card = M::Wxcard(pb::MassWxCard {
        card_id: "CARD".into(),
    });
    messages
        .send_mass(authed(
            DEMO_KEY,
            mass(T::PreviewWxname("alice_wx".into()), card, ""),
        ))
        .await
        .unwrap();
    assert_eq!(
        last_body(&h, PREVIEW),
        json!({"towxname": "alice_wx", "msgtype": "wxcard", "wxcard": {"card_id": "CARD"}})
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_clientmsgid_answers_ok_already_sent_with_the_first_msg_id() {
    use pb::send_mass_request::{Message as M, Target as T};
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let (mut messages, _) = clients(&h).await;
    let request = || {
        mass(
            T::TagId(7),
            M::Text(pb::MassText {
                content: "once".into(),
            }),
            "retry-after-deadline",
        )
    };
    let first = messages
        .send_mass(authed(DEMO_KEY, request()))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.already_sent);
    let second = messages
        .send_mass(authed(DEMO_KEY, request()))
        .await
        .unwrap()
        .into_inner();
    assert!(second.already_sent);
    assert_eq!(second.errcode, 45065);
    assert_eq!(second.msg_id, first.msg_id);
    let answered: Vec<Option<i64>> = h.sim.calls_to(SENDALL).iter().map(|c| c.errcode).collect();
    assert_eq!(
        answered,
        [Some(0), Some(45065)],
        "one job accepted, the repeat refused"
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wechat_errors_map_to_status_codes_with_the_errcode_trailer() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let (mut messages, _) = clients(&h).await;
    let user = random_openid();
    // Warm the token, then make WeChat reject it: exactly one refresh, then success.
    messages
        .send_custom(authed(DEMO_KEY, text(&user, "warm")))
        .await
        .unwrap();
    let tokens = h.sim.token_requests(APPID);
    assert!(h.sim.invalidate_tokens(APPID) > 0);
    let answer = messages
        .send_custom(authed(DEMO_KEY, text(&user, "after refresh")))
        .await;
    assert_eq!(answer.unwrap().into_inner().errcode, 0);
    assert_eq!(h.sim.token_requests(APPID), tokens + 1);
    let answered: Vec<Option<i64>> = h.sim.calls_to(SEND).iter().map(|c| c.errcode).collect();
    assert_eq!(answered, [Some(0), Some(40001), Some(0)]);

    for (path, errcode, code) in [
        (SEND, 45009, Code::ResourceExhausted),
        (SEND, 40003, Code::InvalidArgument),
        (SEND, 45015, Code::FailedPrecondition),
        (TEMPLATE, 43004, Code::FailedPrecondition),
        (SENDALL, 45028, Code::FailedPrecondition),
        (UPLOAD, 45009, Code::ResourceExhausted),
    ] {
        h.sim.inject(path, Fault::errcode(errcode).times(1));
        let status = match path {
            SEND => messages
                .send_custom(authed(DEMO_KEY, text(&user, "x")))
                .await
                .unwrap_err(),
            TEMPLATE => messages
                .send_template(authed(DEMO_KEY, template(&user, "")))
                .await
                .unwrap_err(),
            SENDALL => {
                use pb::send_mass_request::{Message as M, Target as T};
                let request = mass(
                    T::ToAll(true),
                    M::Text(pb::MassText {
                        content: "x".into(),
                    }),
                    "",
                );
                messages
                    .send_mass(authed(DEMO_KEY, request))
                    .await
                    .unwrap_err()
            }
            _ => {
                let (_, mut media) = clients(&h).await;
                media
                    .upload(authed(DEMO_KEY, upload(pb::MediaType::Image, "a.jpg", 10)))
                    .await
                    .unwrap_err()
            }
        };
        assert_eq!(status.code(), code, "{path} {errcode}: {status:?}");
        assert_eq!(
            errcode_trailer(&status),
            Some(errcode.to_string()),
            "{path}"
        );
        assert!(status.message().contains(&errcode.to_string()));
    }
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_requests_never_reach_wechat() {
    use pb::send_custom_request::Message as CM;
    use pb::send_mass_request::{Message as M, Target as T};
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let (mut messages, _) = clients(&h).await;
    let user = random_openid();
    let before = outbound_calls(&h);

    let mut customs: Vec<(pb::SendCustomRequest, &str)> = vec![
        (text("", "hi"), "touser"),
        (text("not an openid!", "hi"), "touser"),
        (text(&user, ""), "text.content"),
        (text(&user, &"x".repeat(2049)), "text.content"),
        (
            custom(
                &user,
                CM::Image(pb::CustomMediaId {
                    media_id: String::new(),
                }),
            ),
            "image.media_id",
        ),
        (
            custom(&user, CM::Msgmenu(pb::CustomMsgMenu::default())),
            "msgmenu.list",
        ),
        (
            custom(
                &user,
                CM::News(pb::CustomNewsArticle {
                    title: String::new(),
                    ..Default::default()
                }),
            ),
            "news.title",
        ),
    ];
    let mut no_message = text(&user, "x");
    no_message.message = None;
    customs.push((no_message, "message"));
    let mut bad_agent = text(&user, "x");
    bad_agent.kf_account = Some("no-at-sign".into());
    customs.push((bad_agent, "kf_account"));
    for (request, field) in customs {
        let status = messages
            .send_custom(authed(DEMO_KEY, request))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(
            status.message().starts_with(field),
            "{field}: {}",
            status.message()
        );
    }

    let typing = pb::TypingRequest {
        account_id: ACCOUNT.into(),
        touser: user.clone(),
        command: 0,
    };
    let status = messages.typing(authed(DEMO_KEY, typing)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let mut empty_data = template(&user, "");
    empty_data.data.clear();
    let mut long_key = template(&user, &"k".repeat(65));
    long_key.url = None;
    let mut bad_colour = template(&user, "");
    bad_colour.data.get_mut("thing1").unwrap().color = Some("red".into());
    for (request, field) in [
        (empty_data, "data"),
        (long_key, "client_msg_id"),
        (bad_colour, "data[thing1].color"),
    ] {
        let status = messages
            .send_template(authed(DEMO_KEY, request))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(
            status.message().starts_with(field),
            "{field}: {}",
            status.message()
        );
    }

    let text_msg = || {
        M::Text(pb::MassText {
            content: "x".into(),
        })
    };
    let mut no_target = mass(T::ToAll(true), text_msg(), "");
    no_target.target = None;
    for (request, field) in [
        (no_target, "target"),
        (mass(T::ToAll(false), text_msg(), ""), "to_all"),
        (
            mass(
                T::Openids(pb::MassOpenIds {
                    openids: vec![user.clone()],
                }),
                text_msg(),
                "",
            ),
            "openids.openids",
        ),
        (
            mass(T::TagId(1), text_msg(), &"k".repeat(65)),
            "clientmsgid",
        ),
        (
            mass(T::TagId(1), M::Image(pb::MassImages::default()), ""),
            "image.media_ids",
        ),
    ] {
        let status = messages
            .send_mass(authed(DEMO_KEY, request))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(
            status.message().starts_with(field),
            "{field}: {}",
            status.message()
        );
    }
    assert_eq!(outbound_calls(&h), before, "nothing reached WeChat");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_for_another_account_is_permission_denied() {
    use pb::send_mass_request::{Message as M, Target as T};
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let (mut messages, mut media) = clients(&h).await;
    let user = random_openid();
    let typing = pb::TypingRequest {
        account_id: ACCOUNT.into(),
        touser: user.clone(),
        command: pb::TypingCommand::Typing.into(),
    };
    let statuses = [
        messages
            .send_custom(authed(PLAIN_KEY, text(&user, "x")))
            .await
            .unwrap_err(),
        messages
            .typing(authed(PLAIN_KEY, typing))
            .await
            .unwrap_err(),
        messages
            .send_template(authed(PLAIN_KEY, template(&user, "")))
            .await
            .unwrap_err(),
        messages
            .send_mass(authed(
                PLAIN_KEY,
                mass(
                    T::ToAll(true),
                    M::Text(pb::MassText {
                        content: "x".into(),
                    }),
                    "",
                ),
            ))
            .await
            .unwrap_err(),
        media
            .upload(authed(PLAIN_KEY, upload(pb::MediaType::Image, "a.jpg", 10)))
            .await
            .unwrap_err(),
        media
            .upload_image(authed(PLAIN_KEY, upload_image("a.png", 10)))
            .await
            .unwrap_err(),
    ];
    for status in statuses {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    assert_eq!(outbound_calls(&h), 0);
    h.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Media

/// Deterministic file bytes, including CR LF and dashes (boundary look-alikes).
fn file(len: usize) -> Vec<u8> {
    (0..len).map(|i| b"\r\n--ab\x00\xff"[i % 8]).collect()
}

fn upload(kind: pb::MediaType, filename: &str, len: usize) -> pb::MediaUploadRequest {
    pb::MediaUploadRequest {
        account_id: ACCOUNT.into(),
        r#type: kind.into(),
        filename: filename.into(),
        content_type: String::new(),
        data: file(len),
    }
}

fn upload_image(filename: &str, len: usize) -> pb::MediaUploadImageRequest {
    pb::MediaUploadImageRequest {
        account_id: ACCOUNT.into(),
        filename: filename.into(),
        content_type: String::new(),
        data: file(len),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_reach_wechat_as_multipart_for_every_type() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let (_, mut media) = clients(&h).await;
    for (kind, name, filename, len, content_type) in [
        // Larger than tonic's default 4 MiB message limit.
        (
            pb::MediaType::Image,
            "image",
            "photo.JPG",
            5 * 1024 * 1024,
            "image/jpeg",
        ),
        (
            pb::MediaType::Voice,
            "voice",
            "hello.mp3",
            2 * 1024 * 1024,
            "audio/mpeg",
        ),
        (pb::MediaType::Video, "video", "clip.mp4", 1000, "video/mp4"),
        (
            pb::MediaType::Thumb,
            "thumb",
            "cover.jpg",
            64 * 1024,
            "image/jpeg",
        ),
    ] {
        let answer = media
            .upload(authed(DEMO_KEY, upload(kind, filename, len)))
            .await
            .unwrap()
            .into_inner();
        assert!(!answer.media_id.is_empty());
        assert_eq!(answer.r#type, i32::from(kind));
        assert!(answer.created_at > 1_600_000_000, "{}", answer.created_at);
        let stored = h.sim.media(APPID, &answer.media_id).expect("stored");
        assert_eq!(
            (stored.kind.as_str(), stored.filename.as_str()),
            (name, filename)
        );
        assert_eq!(stored.content_type, content_type);
        assert_eq!(stored.data, file(len), "{name}: bytes arrive intact");
        let call = h.sim.calls_to(UPLOAD).pop().unwrap();
        assert_eq!(call.query_param("type"), Some(name));
        assert_eq!(call.body["multipart"][0]["bytes"], json!(len));
    }
    let mut request = upload_image("inline.png", 1024 * 1024);
    request.content_type = "image/x-png".into();
    let url = media
        .upload_image(authed(DEMO_KEY, request))
        .await
        .unwrap()
        .into_inner()
        .url;
    assert!(url.starts_with("http://mmbiz.qpic.cn/"), "{url}");
    let stored = h.sim.media(APPID, &url).unwrap();
    assert_eq!(
        (stored.kind.as_str(), stored.content_type.as_str()),
        ("uploadimg", "image/x-png")
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn media_of_the_wrong_type_or_size_is_refused_before_the_call() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let (_, mut media) = clients(&h).await;
    for (request, needle) in [
        (upload(pb::MediaType::Unspecified, "a.jpg", 10), "type"),
        (
            upload(pb::MediaType::Image, "a.bmp", 10),
            ".png, .jpeg, .jpg, .gif",
        ),
        (upload(pb::MediaType::Voice, "a.wav", 10), ".amr, .mp3"),
        (
            upload(pb::MediaType::Thumb, "a.jpg", 64 * 1024 + 1),
            "at most 65536 bytes",
        ),
        (
            upload(pb::MediaType::Voice, "a.amr", 2 * 1024 * 1024 + 1),
            "at most 2097152 bytes",
        ),
        (
            upload(pb::MediaType::Video, "a.mp4", 10 * 1024 * 1024 + 1),
            "at most 10485760 bytes",
        ),
        (upload(pb::MediaType::Image, "a.jpg", 0), "data: is empty"),
        (upload(pb::MediaType::Image, "noextension", 10), "filename"),
    ] {
        let status = media.upload(authed(DEMO_KEY, request)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{needle}");
        assert!(
            status.message().contains(needle),
            "{needle}: {}",
            status.message()
        );
    }
    for (request, needle) in [
        (upload_image("a.gif", 10), ".jpg, .jpeg, .png"),
        (
            upload_image("a.jpg", 1024 * 1024 + 1),
            "at most 1048576 bytes",
        ),
    ] {
        let status = media
            .upload_image(authed(DEMO_KEY, request))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{needle}");
        assert!(
            status.message().contains(needle),
            "{needle}: {}",
            status.message()
        );
    }
    assert_eq!(h.sim.call_count(UPLOAD) + h.sim.call_count(UPLOADIMG), 0);
    h.finish().await;
}

// ---------------------------------------------------------------------------------------------
// The worker's own rule replies use the same sending code.

/// The harness with one custom rule for `demo`: text `news` → a news reply of three articles.
async fn news_harness() -> Harness {
    Harness::new_with(&[], |config| {
        let specs: Vec<wechat::rules::RuleSpec> = serde_json::from_value(json!([{
            "match": {"content": "news"},
            "reply": {"news": [
                {"title": "A", "description": "a", "pic_url": "https://e.com/a.jpg", "url": "https://e.com/a"},
                {"title": "B", "url": "https://e.com/b"},
                {"title": "C"},
            ]},
        }]))
        .unwrap_or_else(|e| panic!("rule specs: {e}"));
        let Some(account) = config.accounts.iter_mut().find(|a| a.id.as_str() == ACCOUNT) else {
            panic!("no account {ACCOUNT} in the tutorial config");
        };
        account.custom = wechat::rules::compile(&specs, wechat::rules::RulePath::Custom)
            .unwrap_or_else(|e| panic!("rules: {e}"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_news_rule_sends_every_article_one_message_each() {
    let mut h = news_harness().await;
    h.start_ready_worker().await;
    let user = random_openid();
    h.publish_xml(&Inbound::now(ORIGINAL_ID, &user).text(77, "news"))
        .await;
    let calls = h.sim.wait_for_calls(SEND, 3, WAIT).await.unwrap();
    let titles: Vec<Value> = calls
        .iter()
        .map(|call| {
            assert_eq!(call.body["touser"], json!(user));
            assert_eq!(call.body["msgtype"], json!("news"));
            let articles = call.body["news"]["articles"].as_array().unwrap();
            assert_eq!(articles.len(), 1, "custom news carries exactly one article");
            articles[0]["title"].clone()
        })
        .collect();
    assert_eq!(titles, [json!("A"), json!("B"), json!("C")]);
    assert_eq!(
        calls[1].body["news"]["articles"][0],
        json!({"title": "B", "description": "", "url": "https://e.com/b", "picurl": ""})
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivered_news_reply_resumes_after_the_articles_already_sent() {
    let mut h = news_harness().await;
    let user = random_openid();
    let (key, message) = event_message(&Inbound::now(ORIGINAL_ID, &user).text(78, "news"), None);
    let event_id = message.properties.message_id.clone().unwrap();
    // A previous delivery sent the first article, then failed (a crash, or WeChat busy).
    let mut redis = redis_connection().await;
    let () = redis::cmd("SET")
        .arg(format!("{}:sent:{event_id}:0", h.ns))
        .arg("1")
        .arg("EX")
        .arg(600)
        .query_async(&mut redis)
        .await
        .unwrap();
    let addr = h.start_ready_worker().await;
    h.publish(&key, &message).await;
    let calls = h.sim.wait_for_calls(SEND, 2, WAIT).await.unwrap();
    let titles: Vec<Value> = calls
        .iter()
        .map(|call| call.body["news"]["articles"][0]["title"].clone())
        .collect();
    assert_eq!(titles, [json!("B"), json!("C")]);
    // Once every part is out the event's sent marker stands for the whole reply.
    wait_metric(addr, "wxgate_worker_events_total{outcome=\"sent\"}", 1.0).await;
    let sent: Option<String> = redis::cmd("GET")
        .arg(format!("{}:sent:{event_id}", h.ns))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(sent.as_deref(), Some("1"));
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_news_reply_cut_short_by_the_reply_window_is_settled_not_parked() {
    let mut h = news_harness().await;
    let user = random_openid();
    let (key, message) = event_message(&Inbound::now(ORIGINAL_ID, &user).text(79, "news"), None);
    let event_id = message.properties.message_id.clone().unwrap();
    // The first article went out; then the user's window has no messages left (45047).
    let mut redis = redis_connection().await;
    let () = redis::cmd("SET")
        .arg(format!("{}:sent:{event_id}:0", h.ns))
        .arg("1")
        .arg("EX")
        .arg(600)
        .query_async(&mut redis)
        .await
        .unwrap();
    h.sim.inject(SEND, Fault::errcode(45047));
    let addr = h.start_ready_worker().await;
    h.publish(&key, &message).await;
    wait_metric(addr, "wxgate_worker_events_total{outcome=\"sent\"}", 1.0).await;
    // One try of the second article, none of the third, nothing parked.
    assert_eq!(h.sim.call_count(SEND), 1);
    let outcomes = samples(addr, "wxgate_worker_events_total{").await;
    assert!(
        outcomes.keys().all(|series| !series.contains("dead")),
        "{outcomes:?}"
    );
    let sent: Option<String> = redis::cmd("GET")
        .arg(format!("{}:sent:{event_id}", h.ns))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(sent.as_deref(), Some("1"));
    h.finish().await;
}

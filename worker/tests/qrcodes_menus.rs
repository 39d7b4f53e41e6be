//! `wxgate.v1.Qrcodes` and `wxgate.v1.Menus` against a running worker and the simulator:
//! every RPC's success path, limits refused before WeChat is called, WeChat's errors and
//! authorization.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;
use wxgate_proto::v1::menus_client::MenusClient;
use wxgate_proto::v1::qrcodes_client::QrcodesClient;
use wxgate_proto::v1::{
    MenuButton, MenuButtonType, MenuMatchRule, MenusAddConditionalRequest, MenusCreateRequest,
    MenusDeleteConditionalRequest, MenusDeleteRequest, MenusGetCurrentSelfmenuInfoRequest,
    MenusGetRequest, MenusTryMatchRequest, QrcodeKind, QrcodesCreateRequest,
};
use wxgate_sim::{Fault, QrScene};

const QR_CREATE: &str = "/cgi-bin/qrcode/create";
const MENU_CREATE: &str = "/cgi-bin/menu/create";
const MENU_ADD_CONDITIONAL: &str = "/cgi-bin/menu/addconditional";

fn qr(
    kind: QrcodeKind,
    scene_id: i64,
    scene_str: &str,
    expire_seconds: i64,
) -> QrcodesCreateRequest {
    QrcodesCreateRequest {
        account_id: ACCOUNT.into(),
        kind: kind as i32,
        scene_id,
        scene_str: scene_str.into(),
        expire_seconds,
    }
}

fn leaf(kind: MenuButtonType, name: &str) -> MenuButton {
    MenuButton {
        r#type: kind as i32,
        name: name.into(),
        ..Default::default()
    }
}

fn click(name: &str, key: &str) -> MenuButton {
    MenuButton {
        key: key.into(),
        ..leaf(MenuButtonType::Click, name)
    }
}

/// docs/protocol.md §10.3's example menu.
fn example_menu() -> Vec<MenuButton> {
    vec![
        click("Today", "V1001_TODAY"),
        MenuButton {
            name: "Menu".into(),
            sub_button: vec![
                MenuButton {
                    url: "https://www.example.com/".into(),
                    ..leaf(MenuButtonType::View, "Search")
                },
                MenuButton {
                    url: "https://www.example.com/".into(),
                    appid: "MINI_APPID".into(),
                    pagepath: "pages/index/index".into(),
                    ..leaf(MenuButtonType::Miniprogram, "App")
                },
                MenuButton {
                    key: "rselfmenu_0_0".into(),
                    ..leaf(MenuButtonType::ScancodeWaitmsg, "Scan")
                },
            ],
            ..Default::default()
        },
        MenuButton {
            article_id: "ARTICLE_ID".into(),
            ..leaf(MenuButtonType::ArticleViewLimited, "News")
        },
    ]
}

fn example_json() -> serde_json::Value {
    json!([
      {"type":"click","name":"Today","key":"V1001_TODAY"},
      {"name":"Menu","sub_button":[
         {"type":"view","name":"Search","url":"https://www.example.com/"},
         {"type":"miniprogram","name":"App","url":"https://www.example.com/","appid":"MINI_APPID","pagepath":"pages/index/index"},
         {"type":"scancode_waitmsg","name":"Scan","key":"rselfmenu_0_0"}]},
      {"type":"article_view_limited","name":"News","article_id":"ARTICLE_ID"}])
}

#[tokio::test]
async fn qr_codes_of_every_kind_are_created() {
    let mut h = Harness::new(&[]).await;
    // Point the image host at the simulator, which serves `showqrcode` too.
    let mut config = (*h.config).clone();
    config.wechat.mp_base = h.sim.base_url();
    h.config = std::sync::Arc::new(config);
    h.start_ready_worker().await;
    let mut client = QrcodesClient::new(h.channel(0).await);
    for (request, scene, expire) in [
        (
            qr(QrcodeKind::QrScene, 123, "", 604_800),
            QrScene::Id(123),
            604_800,
        ),
        (
            qr(QrcodeKind::QrScene, 2_147_483_647, "", 0),
            QrScene::Id(2_147_483_647),
            60,
        ),
        (
            qr(QrcodeKind::QrStrScene, 0, "promo-2024", 2_592_000),
            QrScene::Str("promo-2024".into()),
            2_592_000,
        ),
        (
            qr(QrcodeKind::QrLimitScene, 100_000, "", 0),
            QrScene::Id(100_000),
            0,
        ),
        (
            qr(QrcodeKind::QrLimitStrScene, 0, &"码".repeat(21), 0),
            QrScene::Str("码".repeat(21)),
            0,
        ),
    ] {
        let created = client
            .create(authed(DEMO_KEY, request.clone()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(created.expire_seconds, expire, "{request:?}");
        let issued = h.sim.qr_ticket(&created.ticket).unwrap();
        assert_eq!(issued.scene, scene);
        assert_eq!(issued.url, created.url);
        assert_eq!(issued.appid, APPID);
        // The image URL carries the ticket URL-encoded (tickets contain `+`, `/`, `=`).
        let encoded = created
            .ticket
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D");
        let path = format!("/cgi-bin/showqrcode?ticket={encoded}");
        assert_eq!(created.image_url, format!("{}{path}", h.sim.base_url()));
        let (status, _) = http_get(h.sim.addr(), &path).await;
        assert_eq!(status, 200, "{path}");
    }
    let calls = h.sim.calls_to(QR_CREATE);
    assert_eq!(calls.len(), 5);
    assert_eq!(
        calls[1].body,
        json!({"expire_seconds": 60, "action_name": "QR_SCENE", "action_info": {"scene": {"scene_id": 2147483647}}})
    );
    assert_eq!(
        calls[3].body,
        json!({"action_name": "QR_LIMIT_SCENE", "action_info": {"scene": {"scene_id": 100000}}})
    );
    h.finish().await;
}

#[tokio::test]
async fn qr_limits_are_refused_before_any_call() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let mut client = QrcodesClient::new(h.channel(0).await);
    for (request, message) in [
        (
            qr(QrcodeKind::Unspecified, 1, "", 0),
            "kind: one of QR_SCENE, QR_STR_SCENE, QR_LIMIT_SCENE, QR_LIMIT_STR_SCENE is required",
        ),
        (
            qr(QrcodeKind::QrScene, 0, "", 0),
            "scene_id: 1 to 2147483647 for QR_SCENE, got 0",
        ),
        (
            qr(QrcodeKind::QrScene, -5, "", 0),
            "scene_id: 1 to 2147483647 for QR_SCENE, got -5",
        ),
        (
            qr(QrcodeKind::QrScene, 2_147_483_648, "", 0),
            "scene_id: 1 to 2147483647 for QR_SCENE, got 2147483648",
        ),
        (
            qr(QrcodeKind::QrLimitScene, 0, "", 0),
            "scene_id: 1 to 100000 for QR_LIMIT_SCENE, got 0",
        ),
        (
            qr(QrcodeKind::QrLimitScene, 100_001, "", 0),
            "scene_id: 1 to 100000 for QR_LIMIT_SCENE, got 100001",
        ),
        (
            qr(QrcodeKind::QrScene, 1, "x", 0),
            "scene_str: must be empty for QR_SCENE (it takes scene_id)",
        ),
        (
            qr(QrcodeKind::QrStrScene, 1, "x", 0),
            "scene_id: must be 0 for QR_STR_SCENE (it takes scene_str)",
        ),
        (
            qr(QrcodeKind::QrStrScene, 0, "", 0),
            "scene_str: 1 to 64 bytes, got 0",
        ),
        (
            qr(QrcodeKind::QrLimitStrScene, 0, &"x".repeat(65), 0),
            "scene_str: 1 to 64 bytes, got 65",
        ),
        (
            qr(QrcodeKind::QrStrScene, 0, &"码".repeat(22), 0),
            "scene_str: 1 to 64 bytes, got 66",
        ),
        (
            qr(QrcodeKind::QrScene, 1, "", 2_592_001),
            "expire_seconds: 1 to 2592000 (30 days), or 0 for 60; got 2592001",
        ),
        (
            qr(QrcodeKind::QrStrScene, 0, "a", -1),
            "expire_seconds: 1 to 2592000 (30 days), or 0 for 60; got -1",
        ),
        (
            qr(QrcodeKind::QrLimitScene, 1, "", 60),
            "expire_seconds: must be 0 for the permanent QR_LIMIT_SCENE",
        ),
        (
            qr(QrcodeKind::QrLimitStrScene, 0, "a", 60),
            "expire_seconds: must be 0 for the permanent QR_LIMIT_STR_SCENE",
        ),
    ] {
        let status = status_of(client.create(authed(DEMO_KEY, request)).await);
        assert_eq!(status.code(), Code::InvalidArgument, "{message}");
        assert_eq!(status.message(), message);
    }
    assert!(h.sim.calls().is_empty(), "nothing reached WeChat");
    h.finish().await;
}

#[tokio::test]
async fn menus_are_created_read_matched_and_deleted() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let mut client = MenusClient::new(h.channel(0).await);
    client
        .create(authed(
            DEMO_KEY,
            MenusCreateRequest {
                account_id: ACCOUNT.into(),
                button: example_menu(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(h.sim.menu(APPID), Some(example_json()));

    let conditional = vec![click("VIP", "VIP_KEY")];
    let menuid = client
        .add_conditional(authed(
            DEMO_KEY,
            MenusAddConditionalRequest {
                account_id: ACCOUNT.into(),
                button: conditional.clone(),
                matchrule: Some(MenuMatchRule {
                    tag_id: "2".into(),
                    client_platform_type: 2,
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .menuid;
    assert_ne!(menuid, 0);
    assert_eq!(
        h.sim.calls_to(MENU_ADD_CONDITIONAL)[0].body["matchrule"],
        json!({"tag_id": "2", "client_platform_type": "2"})
    );

    let menus = client
        .get(authed(
            DEMO_KEY,
            MenusGetRequest {
                account_id: ACCOUNT.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(menus.button, example_menu());
    assert_ne!(menus.menuid, 0);
    assert_eq!(menus.conditional.len(), 1);
    assert_eq!(menus.conditional[0].button, conditional);
    assert_eq!(menus.conditional[0].menuid, menuid);
    let rule = menus.conditional[0].matchrule.clone().unwrap();
    assert_eq!((rule.tag_id.as_str(), rule.client_platform_type), ("2", 2));

    let user = wxgate_sim::random_openid();
    let matched = client
        .try_match(authed(
            DEMO_KEY,
            MenusTryMatchRequest {
                account_id: ACCOUNT.into(),
                user_id: user.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(matched.button, example_menu());

    let current = client
        .get_current_selfmenu_info(authed(
            DEMO_KEY,
            MenusGetCurrentSelfmenuInfoRequest {
                account_id: ACCOUNT.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(current.is_menu_open);
    assert_eq!(current.button.len(), 3);
    assert_eq!(current.button[0].r#type, "click");
    assert_eq!(current.button[0].key, "V1001_TODAY");
    let subs = &current.button[1].sub_button;
    assert_eq!(subs.len(), 3);
    assert_eq!(
        (subs[1].r#type.as_str(), subs[1].pagepath.as_str()),
        ("miniprogram", "pages/index/index")
    );

    client
        .delete_conditional(authed(
            DEMO_KEY,
            MenusDeleteConditionalRequest {
                account_id: ACCOUNT.into(),
                menuid,
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        h.sim.calls_to("/cgi-bin/menu/delconditional")[0].body,
        json!({"menuid": menuid.to_string()})
    );
    // Deleted already: WeChat's 65301, the caller's mistake.
    let status = status_of(
        client
            .delete_conditional(authed(
                DEMO_KEY,
                MenusDeleteConditionalRequest {
                    account_id: ACCOUNT.into(),
                    menuid,
                },
            ))
            .await,
    );
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(errcode_trailer(&status), Some(65301));

    client
        .delete(authed(
            DEMO_KEY,
            MenusDeleteRequest {
                account_id: ACCOUNT.into(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(h.sim.menu(APPID), None);
    // No menu any more: WeChat's 46003.
    let status = status_of(
        client
            .get(authed(
                DEMO_KEY,
                MenusGetRequest {
                    account_id: ACCOUNT.into(),
                },
            ))
            .await,
    );
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(errcode_trailer(&status), Some(46003));
    let current = client
        .get_current_selfmenu_info(authed(
            DEMO_KEY,
            MenusGetCurrentSelfmenuInfoRequest {
                account_id: ACCOUNT.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!current.is_menu_open);
    assert!(current.button.is_empty());
    // One token for the whole session.
    assert_eq!(h.sim.token_requests(APPID), 1);
    h.finish().await;
}

#[tokio::test]
async fn invalid_menus_are_refused_before_any_call() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let mut client = MenusClient::new(h.channel(0).await);
    let parent = |name: &str, subs: Vec<MenuButton>| MenuButton {
        name: name.into(),
        sub_button: subs,
        ..Default::default()
    };
    let mut long_sub: Vec<MenuButton> = (0..4).map(|i| click(&i.to_string(), "k")).collect();
    long_sub.push(click(&"x".repeat(61), "k"));
    let cases: Vec<(Vec<MenuButton>, &str)> = vec![
        (vec![], "button: 1 to 3 buttons, got 0"),
        (
            (0..4).map(|i| click(&i.to_string(), "k")).collect(),
            "button: 1 to 3 buttons, got 4",
        ),
        (vec![click("", "k")], "button[0].name: is required"),
        (
            vec![click("a", "k"), click("一二三四五六", "k")],
            "button[1].name: at most 16 bytes, got 18",
        ),
        (
            vec![click("a", "k"), parent("M", long_sub)],
            "button[1].sub_button[4].name: at most 60 bytes, got 61",
        ),
        (
            vec![parent(
                "M",
                (0..6).map(|i| click(&i.to_string(), "k")).collect(),
            )],
            "button[0].sub_button: at most 5 sub-buttons, got 6",
        ),
        (
            vec![parent("M", vec![parent("N", vec![click("c", "k")])])],
            "button[0].sub_button[0].sub_button: menus have two levels only: a sub-button has no sub_button",
        ),
        (
            vec![parent("M", vec![])],
            "button[0]: needs a type or 1 to 5 sub_button",
        ),
        (
            vec![MenuButton {
                sub_button: vec![click("s", "k")],
                ..click("a", "k")
            }],
            "button[0]: a button has either a type or sub_button, not both",
        ),
        (
            vec![parent("M", vec![leaf(MenuButtonType::Unspecified, "s")])],
            "button[0].sub_button[0].type: is required",
        ),
        (
            vec![MenuButton {
                r#type: 99,
                ..click("a", "k")
            }],
            "button[0].type: unknown type 99",
        ),
        (
            vec![leaf(MenuButtonType::LocationSelect, "a")],
            "button[0].key: is required for this type",
        ),
        (
            vec![parent("M", vec![click("s", &"k".repeat(129))])],
            "button[0].sub_button[0].key: at most 128 bytes, got 129",
        ),
        (
            vec![leaf(MenuButtonType::View, "a")],
            "button[0].url: is required for this type",
        ),
        (
            vec![parent(
                "M",
                vec![MenuButton {
                    url: format!("https://{}", "u".repeat(1017)),
                    ..leaf(MenuButtonType::View, "s")
                }],
            )],
            "button[0].sub_button[0].url: at most 1024 bytes, got 1025",
        ),
        (
            vec![MenuButton {
                url: "www.example.com".into(),
                ..leaf(MenuButtonType::View, "a")
            }],
            "button[0].url: must start with http:// or https://",
        ),
        (
            vec![MenuButton {
                url: "https://x".into(),
                pagepath: "p".into(),
                ..leaf(MenuButtonType::Miniprogram, "a")
            }],
            "button[0].appid: is required for this type",
        ),
        (
            vec![MenuButton {
                url: "https://x".into(),
                appid: "wx1".into(),
                ..leaf(MenuButtonType::Miniprogram, "a")
            }],
            "button[0].pagepath: is required for this type",
        ),
        (
            vec![leaf(MenuButtonType::ViewLimited, "a")],
            "button[0].media_id: is required for this type",
        ),
        (
            vec![leaf(MenuButtonType::ArticleId, "a")],
            "button[0].article_id: is required for this type",
        ),
    ];
    for (button, message) in cases {
        let status = status_of(
            client
                .create(authed(
                    DEMO_KEY,
                    MenusCreateRequest {
                        account_id: ACCOUNT.into(),
                        button: button.clone(),
                    },
                ))
                .await,
        );
        assert_eq!(status.code(), Code::InvalidArgument, "{message}");
        assert_eq!(status.message(), message);
        // The same buttons are checked for a conditional menu.
        let status = status_of(
            client
                .add_conditional(authed(
                    DEMO_KEY,
                    MenusAddConditionalRequest {
                        account_id: ACCOUNT.into(),
                        button,
                        matchrule: Some(MenuMatchRule {
                            tag_id: "1".into(),
                            ..Default::default()
                        }),
                    },
                ))
                .await,
        );
        assert_eq!(status.message(), message);
    }
    let rule_cases = [
        (None, "matchrule: is required"),
        (
            Some(MenuMatchRule::default()),
            "matchrule: needs tag_id or client_platform_type",
        ),
        (
            Some(MenuMatchRule {
                client_platform_type: 4,
                ..Default::default()
            }),
            "matchrule.client_platform_type: 0 (any) to 3, got 4",
        ),
        (
            Some(MenuMatchRule {
                tag_id: "vip".into(),
                ..Default::default()
            }),
            "matchrule.tag_id: decimal digits only",
        ),
        (
            Some(MenuMatchRule {
                tag_id: "1".into(),
                language: "zh_CN".into(),
                ..Default::default()
            }),
            "matchrule.language: no longer accepted by WeChat (65320); use tag_id or client_platform_type",
        ),
    ];
    for (matchrule, message) in rule_cases {
        let status = status_of(
            client
                .add_conditional(authed(
                    DEMO_KEY,
                    MenusAddConditionalRequest {
                        account_id: ACCOUNT.into(),
                        button: vec![click("a", "k")],
                        matchrule,
                    },
                ))
                .await,
        );
        assert_eq!(status.code(), Code::InvalidArgument, "{message}");
        assert_eq!(status.message(), message);
    }
    for (user_id, message) in [
        (String::new(), "user_id: 1 to 64 bytes, got 0"),
        ("u".repeat(65), "user_id: 1 to 64 bytes, got 65"),
    ] {
        let status = status_of(
            client
                .try_match(authed(
                    DEMO_KEY,
                    MenusTryMatchRequest {
                        account_id: ACCOUNT.into(),
                        user_id,
                    },
                ))
                .await,
        );
        assert_eq!(status.message(), message);
    }
    let status = status_of(
        client
            .delete_conditional(authed(
                DEMO_KEY,
                MenusDeleteConditionalRequest {
                    account_id: ACCOUNT.into(),
                    menuid: 0,
                },
            ))
            .await,
    );
    assert_eq!(status.message(), "menuid: is required");
    assert!(h.sim.calls().is_empty(), "nothing reached WeChat");
    h.finish().await;
}

/// One call of each Qrcodes and Menus RPC that reaches WeChat: (name, WeChat path, the
/// call's outcome).
async fn every_rpc(
    channel: Channel,
    key: &str,
    account: &str,
) -> Vec<(&'static str, &'static str, Result<(), tonic::Status>)> {
    some_rpcs(channel, key, account, None).await
}

/// Like [`every_rpc`], only the RPC named `only` when given.
async fn some_rpcs(
    channel: Channel,
    key: &str,
    account: &str,
    only: Option<&str>,
) -> Vec<(&'static str, &'static str, Result<(), tonic::Status>)> {
    let want = |name: &str| only.is_none_or(|only| only == name);
    let mut qrcodes = QrcodesClient::new(channel.clone());
    let mut menus = MenusClient::new(channel);
    let id = || account.to_owned();
    let mut out = Vec::new();
    let mut request = qr(QrcodeKind::QrScene, 7, "", 0);
    request.account_id = id();
    if want("Qrcodes.Create") {
        out.push((
            "Qrcodes.Create",
            QR_CREATE,
            qrcodes.create(authed(key, request)).await.map(|_| ()),
        ));
    }
    if want("Menus.Create") {
        out.push((
            "Menus.Create",
            MENU_CREATE,
            menus
                .create(authed(
                    key,
                    MenusCreateRequest {
                        account_id: id(),
                        button: example_menu(),
                    },
                ))
                .await
                .map(|_| ()),
        ));
    }
    if want("Menus.AddConditional") {
        out.push((
            "Menus.AddConditional",
            MENU_ADD_CONDITIONAL,
            menus
                .add_conditional(authed(
                    key,
                    MenusAddConditionalRequest {
                        account_id: id(),
                        button: vec![click("VIP", "k")],
                        matchrule: Some(MenuMatchRule {
                            tag_id: "1".into(),
                            ..Default::default()
                        }),
                    },
                ))
                .await
                .map(|_| ()),
        ));
    }
    if want("Menus.Get") {
        out.push((
            "Menus.Get",
            "/cgi-bin/menu/get",
            menus
                .get(authed(key, MenusGetRequest { account_id: id() }))
                .await
                .map(|_| ()),
        ));
    }
    if want("Menus.TryMatch") {
        out.push((
            "Menus.TryMatch",
            "/cgi-bin/menu/trymatch",
            menus
                .try_match(authed(
                    key,
                    MenusTryMatchRequest {
                        account_id: id(),
                        user_id: wxgate_sim::random_openid(),
                    },
                ))
                .await
                .map(|_| ()),
        ));
    }
    if want("Menus.GetCurrentSelfmenuInfo") {
        out.push((
            "Menus.GetCurrentSelfmenuInfo",
            "/cgi-bin/get_current_selfmenu_info",
            menus
                .get_current_selfmenu_info(authed(
                    key,
                    MenusGetCurrentSelfmenuInfoRequest { account_id: id() },
                ))
                .await
                .map(|_| ()),
        ));
    }
    if want("Menus.DeleteConditional") {
        out.push((
            "Menus.DeleteConditional",
            "/cgi-bin/menu/delconditional",
            menus
                .delete_conditional(authed(
                    key,
                    MenusDeleteConditionalRequest {
                        account_id: id(),
                        menuid: 1,
                    },
                ))
                .await
                .map(|_| ()),
        ));
    }
    if want("Menus.Delete") {
        out.push((
            "Menus.Delete",
            "/cgi-bin/menu/delete",
            menus
                .delete(authed(key, MenusDeleteRequest { account_id: id() }))
                .await
                .map(|_| ()),
        ));
    }
    out
}

#[tokio::test]
async fn wechat_errors_map_by_class_for_every_rpc() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    let paths = [
        QR_CREATE,
        MENU_CREATE,
        MENU_ADD_CONDITIONAL,
        "/cgi-bin/menu/get",
        "/cgi-bin/menu/trymatch",
        "/cgi-bin/get_current_selfmenu_info",
        "/cgi-bin/menu/delconditional",
        "/cgi-bin/menu/delete",
    ];
    for (errcode, code) in [
        (45009, Code::ResourceExhausted),
        (45011, Code::ResourceExhausted),
        (-1, Code::Unavailable),
        (48001, Code::FailedPrecondition),
        (40016, Code::InvalidArgument),
    ] {
        for path in paths {
            h.sim.inject(path, Fault::errcode(errcode).times(1));
        }
        for (rpc, path, result) in every_rpc(h.channel(0).await, DEMO_KEY, ACCOUNT).await {
            let status = status_of(result);
            assert_eq!(status.code(), code, "{rpc} with {errcode}");
            assert_eq!(errcode_trailer(&status), Some(errcode), "{rpc}");
            assert!(status.message().contains(&errcode.to_string()), "{rpc}");
            // Answered once, without a retry.
            assert_eq!(h.sim.calls_to(path).last().unwrap().errcode, Some(errcode));
        }
        h.sim.clear_faults();
    }
    assert_eq!(h.sim.token_requests(APPID), 1);
    h.finish().await;
}

#[tokio::test]
async fn an_invalid_token_is_refreshed_once_for_every_rpc() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    // A default menu and a conditional one first, so that every RPC can succeed.
    let mut menus = MenusClient::new(h.channel(0).await);
    menus
        .create(authed(
            DEMO_KEY,
            MenusCreateRequest {
                account_id: ACCOUNT.into(),
                button: example_menu(),
            },
        ))
        .await
        .unwrap();
    let mut tokens = h.sim.token_requests(APPID);
    assert_eq!(tokens, 1);
    for (rpc, path) in [
        ("Qrcodes.Create", QR_CREATE),
        ("Menus.Create", MENU_CREATE),
        ("Menus.Get", "/cgi-bin/menu/get"),
        ("Menus.TryMatch", "/cgi-bin/menu/trymatch"),
        (
            "Menus.GetCurrentSelfmenuInfo",
            "/cgi-bin/get_current_selfmenu_info",
        ),
        ("Menus.AddConditional", MENU_ADD_CONDITIONAL),
    ] {
        assert_eq!(h.sim.invalidate_tokens(APPID), 1, "{rpc}");
        let before = h.sim.call_count(path);
        let outcome = some_rpcs(h.channel(0).await, DEMO_KEY, ACCOUNT, Some(rpc))
            .await
            .into_iter()
            .find(|(name, _, _)| *name == rpc)
            .unwrap()
            .2;
        outcome.unwrap_or_else(|status| panic!("{rpc}: {status:?}"));
        tokens += 1;
        assert_eq!(h.sim.token_requests(APPID), tokens, "{rpc}: one refresh");
        let calls = h.sim.calls_to(path);
        let mine = &calls[calls.len() - (h.sim.call_count(path) - before) as usize..];
        assert_eq!(mine[0].errcode, Some(40001), "{rpc}");
        assert_eq!(mine[1].errcode, Some(0), "{rpc}");
    }
    // Last, as it removes the menus the others need.
    for (rpc, path) in [
        ("Menus.DeleteConditional", "/cgi-bin/menu/delconditional"),
        ("Menus.Delete", "/cgi-bin/menu/delete"),
    ] {
        let menuid = menus
            .get(authed(
                DEMO_KEY,
                MenusGetRequest {
                    account_id: ACCOUNT.into(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .conditional
            .first()
            .map_or(0, |menu| menu.menuid);
        assert_eq!(h.sim.invalidate_tokens(APPID), 1, "{rpc}");
        let before = h.sim.call_count(path);
        let result = if rpc == "Menus.Delete" {
            menus
                .delete(authed(
                    DEMO_KEY,
                    MenusDeleteRequest {
                        account_id: ACCOUNT.into(),
                    },
                ))
                .await
                .map(|_| ())
        } else {
            menus
                .delete_conditional(authed(
                    DEMO_KEY,
                    MenusDeleteConditionalRequest {
                        account_id: ACCOUNT.into(),
                        menuid,
                    },
                ))
                .await
                .map(|_| ())
        };
        result.unwrap_or_else(|status| panic!("{rpc}: {status:?}"));
        tokens += 1;
        assert_eq!(h.sim.token_requests(APPID), tokens, "{rpc}: one refresh");
        let calls = h.sim.calls_to(path);
        assert_eq!(h.sim.call_count(path) - before, 2, "{rpc}");
        assert_eq!(calls[calls.len() - 2].errcode, Some(40001), "{rpc}");
        assert_eq!(calls[calls.len() - 1].errcode, Some(0), "{rpc}");
    }
    h.finish().await;
}

#[tokio::test]
async fn keys_act_only_for_their_accounts() {
    let mut h = Harness::new(&[]).await;
    h.start_ready_worker().await;
    for (key, account, expected) in [
        (DEMO_KEY, "plain", Code::PermissionDenied),
        (PLAIN_KEY, ACCOUNT, Code::PermissionDenied),
        (ADMIN_KEY, "nope", Code::NotFound),
        ("not-a-key", ACCOUNT, Code::Unauthenticated),
    ] {
        for (rpc, _, result) in every_rpc(h.channel(0).await, key, account).await {
            assert_eq!(
                status_of(result).code(),
                expected,
                "{rpc} with {key} for {account}"
            );
        }
    }
    assert!(h.sim.calls().is_empty(), "nothing reached WeChat");
    // The admin key acts for any account.
    let mut qrcodes = QrcodesClient::new(h.channel(0).await);
    let mut request = qr(QrcodeKind::QrLimitStrScene, 0, "admin", 0);
    request.account_id = "plain".into();
    qrcodes.create(authed(ADMIN_KEY, request)).await.unwrap();
    h.finish().await;
}

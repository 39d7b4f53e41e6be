//! Menus through HTTP: validation errcodes, default and conditional menus.

use serde_json::{Value, json};
use wxgate_sim::Sim;

use crate::support::*;

fn example_menu() -> Value {
    json!({"button": [
        {"type": "click", "name": "今日歌曲", "key": "V1001_TODAY"},
        {"name": "菜单", "sub_button": [
            {"type": "view", "name": "搜索", "url": "https://www.example.com/"},
            {"type": "scancode_waitmsg", "name": "扫码", "key": "rselfmenu_0_0", "sub_button": []}
        ]}
    ]})
}

async fn call(sim: &Sim, token: &str, path: &str, body: Option<&Value>) -> serde_json::Value {
    let url = format!("/cgi-bin/{path}?access_token={token}");
    match body {
        Some(body) => post_json(sim, &url, body).await.json(),
        None => get(sim, &url).await.json(),
    }
}

#[tokio::test]
async fn create_get_delete() {
    let sim = start(config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    assert_eq!(call(&sim, &token, "menu/get", None).await["errcode"], 46003);
    let created = call(&sim, &token, "menu/create", Some(&example_menu())).await;
    assert_eq!(created, json!({"errcode": 0, "errmsg": "ok"}));

    let menu = call(&sim, &token, "menu/get", None).await;
    assert_eq!(menu["menu"]["button"], example_menu()["button"]);
    assert!(menu["menu"]["menuid"].is_u64());
    assert!(menu.get("conditionalmenu").is_none());
    assert_eq!(sim.menu(APP), Some(example_menu()["button"].clone()));

    let info = call(&sim, &token, "get_current_selfmenu_info", None).await;
    assert_eq!(info["is_menu_open"], 1);
    assert_eq!(
        info["selfmenu_info"]["button"][1]["sub_button"]["list"][0]["name"],
        "搜索"
    );

    assert_eq!(call(&sim, &token, "menu/delete", None).await["errcode"], 0);
    assert_eq!(call(&sim, &token, "menu/get", None).await["errcode"], 46003);
}

#[tokio::test]
async fn create_validation_errcodes() {
    let sim = start(config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    let cases = [
        (json!({"button": []}), 40016),
        (json!({"button": [{"type": "nope", "name": "a"}]}), 40017),
        (
            json!({"button": [{"type": "click", "name": "一二三四五六", "key": "k"}]}),
            40018,
        ),
        (json!({"button": [{"type": "click", "name": "a"}]}), 40019),
        (json!({"button": [{"type": "view", "name": "a"}]}), 40020),
        (
            json!({"button": [{"name": "a", "sub_button": [{"name": "b", "sub_button": [{"type": "click", "name": "c", "key": "k"}]}]}]}),
            40022,
        ),
        (json!({"button": [{"name": "a", "sub_button": []}]}), 40023),
        (
            json!({"button": [{"name": "a", "sub_button": [{"type": "nope", "name": "b"}]}]}),
            40024,
        ),
        (
            json!({"button": [{"name": "a", "sub_button": [{"type": "click", "name": "b".repeat(61), "key": "k"}]}]}),
            40025,
        ),
        (
            json!({"button": [{"name": "a", "sub_button": [{"type": "click", "name": "b"}]}]}),
            40026,
        ),
        (
            json!({"button": [{"name": "a", "sub_button": [{"type": "view", "name": "b"}]}]}),
            40027,
        ),
        (json!({"button": [{"name": "a"}]}), 41007),
    ];
    for (menu, expected) in cases {
        assert_eq!(
            call(&sim, &token, "menu/create", Some(&menu)).await["errcode"],
            expected,
            "{menu}"
        );
    }
    let escaped = r#"{"button":[{"type":"click","name":"\u4eca\u65e5","key":"k"}]}"#;
    let answer = post(
        &sim,
        &format!("/cgi-bin/menu/create?access_token={token}"),
        escaped,
    )
    .await;
    assert_eq!(answer.errcode(), 40033);
    assert_eq!(sim.menu(APP), None);
}

#[tokio::test]
async fn conditional_menus() {
    let sim = start(config()).await;
    let token = classic_token(&sim, APP, SECRET).await;
    let conditional = |rule: Value| json!({"button": [{"type": "click", "name": "VIP", "key": "vip"}], "matchrule": rule});
    let tag_rule = conditional(json!({"tag_id": "2"}));
    assert_eq!(
        call(&sim, &token, "menu/addconditional", Some(&tag_rule)).await["errcode"],
        65303,
        "needs a default menu"
    );
    call(&sim, &token, "menu/create", Some(&example_menu())).await;
    for (rule, expected) in [
        (json!({}), 65304),
        (json!({"sex": "1"}), 65320),
        (json!({"tag_id": "2", "city": "Guangzhou"}), 65320),
    ] {
        let answer = call(
            &sim,
            &token,
            "menu/addconditional",
            Some(&conditional(rule.clone())),
        )
        .await;
        assert_eq!(answer["errcode"], expected, "{rule}");
    }
    let no_type = json!({"button": [{"name": "x"}], "matchrule": {"tag_id": "2"}});
    assert_eq!(
        call(&sim, &token, "menu/addconditional", Some(&no_type)).await["errcode"],
        65308
    );

    let added = call(&sim, &token, "menu/addconditional", Some(&tag_rule)).await;
    let menuid = added["menuid"].as_str().unwrap().to_owned();
    let menu = call(&sim, &token, "menu/get", None).await;
    assert_eq!(menu["conditionalmenu"][0]["matchrule"]["tag_id"], "2");
    assert_eq!(menu["conditionalmenu"][0]["menuid"].to_string(), menuid);

    let matched = call(
        &sim,
        &token,
        "menu/trymatch",
        Some(&json!({"user_id": openid(1)})),
    )
    .await;
    assert_eq!(matched["button"], example_menu()["button"]);
    let unknown = call(
        &sim,
        &token,
        "menu/trymatch",
        Some(&json!({"user_id": "nobody"})),
    )
    .await;
    assert_eq!(unknown["errcode"], 65302);

    let delete = |id: Value| json!({"menuid": id});
    assert_eq!(
        call(
            &sim,
            &token,
            "menu/delconditional",
            Some(&delete(json!("1")))
        )
        .await["errcode"],
        65301
    );
    assert_eq!(
        call(
            &sim,
            &token,
            "menu/delconditional",
            Some(&delete(json!(menuid)))
        )
        .await["errcode"],
        0
    );
    assert!(
        call(&sim, &token, "menu/get", None)
            .await
            .get("conditionalmenu")
            .is_none()
    );
}

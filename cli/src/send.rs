//! `wxgate send …` and `wxgate typing`: customer-service, template and mass messages through
//! the Messages API.

use clap::{Args, Subcommand};
use wxgate_proto::v1 as pb;
use wxgate_proto::v1::send_custom_request::Message as Custom;

use crate::api::Api;
use crate::{Failure, Outcome, println_checked};

/// `wxgate send`.
#[derive(Debug, Clone, Subcommand)]
pub enum SendCommand {
    /// A text customer-service message.
    #[command(after_help = "Example:\n  wxgate send text demo oUser123 '您好,订单已发货'")]
    Text {
        /// The account.
        account: String,
        /// The user's OpenID.
        openid: String,
        /// The text (at most 2048 bytes).
        content: String,
        /// Options of every customer-service message.
        #[command(flatten)]
        custom: CustomArgs,
    },
    /// An image by media id (`wxgate media upload` makes one).
    #[command(after_help = "Example:\n  wxgate send image demo oUser123 MEDIA_ID")]
    Image {
        /// The account.
        account: String,
        /// The user's OpenID.
        openid: String,
        /// The image's media id.
        media_id: String,
        /// Options of every customer-service message.
        #[command(flatten)]
        custom: CustomArgs,
    },
    /// A voice message by media id.
    #[command(after_help = "Example:\n  wxgate send voice demo oUser123 MEDIA_ID")]
    Voice {
        /// The account.
        account: String,
        /// The user's OpenID.
        openid: String,
        /// The voice's media id.
        media_id: String,
        /// Options of every customer-service message.
        #[command(flatten)]
        custom: CustomArgs,
    },
    /// A video by media id.
    #[command(
        after_help = "Example:\n  wxgate send video demo oUser123 MEDIA_ID --title 'How to' --thumb THUMB_ID"
    )]
    Video {
        /// The account.
        account: String,
        /// The user's OpenID.
        openid: String,
        /// The video's media id.
        media_id: String,
        /// The cover's media id.
        #[arg(long, value_name = "MEDIA_ID")]
        thumb: Option<String>,
        /// Title.
        #[arg(long)]
        title: Option<String>,
        /// Description.
        #[arg(long)]
        description: Option<String>,
        /// Options of every customer-service message.
        #[command(flatten)]
        custom: CustomArgs,
    },
    /// A music message.
    #[command(
        after_help = "Example:\n  wxgate send music demo oUser123 --thumb THUMB_ID --url https://example.com/a.mp3 --title Song"
    )]
    Music {
        /// The account.
        account: String,
        /// The user's OpenID.
        openid: String,
        /// The cover's media id (required by WeChat).
        #[arg(long, value_name = "MEDIA_ID")]
        thumb: String,
        /// Title.
        #[arg(long)]
        title: Option<String>,
        /// Description.
        #[arg(long)]
        description: Option<String>,
        /// The music's URL.
        #[arg(long)]
        url: Option<String>,
        /// The high-quality (Wi-Fi) URL.
        #[arg(long)]
        hq_url: Option<String>,
        /// Options of every customer-service message.
        #[command(flatten)]
        custom: CustomArgs,
    },
    /// A news message: one article with a link.
    #[command(
        after_help = "Example:\n  wxgate send news demo oUser123 --title 'New menu' --url https://example.com --pic-url https://example.com/p.jpg"
    )]
    News {
        /// The account.
        account: String,
        /// The user's OpenID.
        openid: String,
        /// Title (required).
        #[arg(long)]
        title: String,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
        /// Where a tap leads.
        #[arg(long, default_value = "")]
        url: String,
        /// The cover image's URL.
        #[arg(long, default_value = "")]
        pic_url: String,
        /// Options of every customer-service message.
        #[command(flatten)]
        custom: CustomArgs,
    },
    /// A template message (outside the 48-hour window).
    #[command(
        after_help = "Example:\n  wxgate send template demo oUser123 TEMPLATE_ID --data first=Hello --data keyword1=42:#173177 --url https://example.com"
    )]
    Template {
        /// The account.
        account: String,
        /// The user's OpenID.
        openid: String,
        /// The template's id.
        template_id: String,
        /// A template field as NAME=VALUE or NAME=VALUE:#COLOR (repeatable).
        #[arg(long = "data", value_name = "NAME=VALUE[:#COLOR]")]
        data: Vec<String>,
        /// Where a tap leads.
        #[arg(long)]
        url: Option<String>,
        /// A mini program to open instead, as APPID or APPID:PAGEPATH.
        #[arg(long, value_name = "APPID[:PAGEPATH]")]
        miniprogram: Option<String>,
        /// An idempotency key: the same key sends once (WeChat's `client_msg_id`).
        #[arg(long, value_name = "KEY")]
        client_msg_id: Option<String>,
    },
    /// A mass (broadcast) message to every follower, a tag, a list of OpenIDs, or a preview.
    #[command(
        after_help = "Examples:\n  wxgate send mass demo --preview oUser123 --text 'Sale starts Monday'\n  wxgate send mass demo --tag 2 --mpnews MEDIA_ID --clientmsgid sale-2026-12\n  wxgate send mass demo --openid oA --openid oB --text hello"
    )]
    Mass(MassArgs),
}

/// Options every customer-service message takes.
#[derive(Debug, Clone, Args)]
pub struct CustomArgs {
    /// Send as this customer-service agent (prefix@account).
    #[arg(long, value_name = "KF_ACCOUNT")]
    pub kf: Option<String>,
}

/// `wxgate send mass`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["all", "tag", "openid", "preview", "preview_wxname"])))]
#[command(group(clap::ArgGroup::new("message").required(true).args(["text", "mpnews", "voice", "image", "video", "wxcard"])))]
pub struct MassArgs {
    /// The account.
    pub account: String,
    /// Every follower.
    #[arg(long)]
    pub all: bool,
    /// Followers with this tag id.
    #[arg(long, value_name = "TAG_ID")]
    pub tag: Option<u32>,
    /// These OpenIDs (repeatable; 2 to 10,000).
    #[arg(long, value_name = "OPENID")]
    pub openid: Vec<String>,
    /// Preview to one user only (by OpenID).
    #[arg(long, value_name = "OPENID")]
    pub preview: Option<String>,
    /// Preview to one user only (by WeChat ID).
    #[arg(long, value_name = "WXNAME")]
    pub preview_wxname: Option<String>,
    /// A text.
    #[arg(long)]
    pub text: Option<String>,
    /// An article (draft or material media id).
    #[arg(long, value_name = "MEDIA_ID")]
    pub mpnews: Option<String>,
    /// A voice media id.
    #[arg(long, value_name = "MEDIA_ID")]
    pub voice: Option<String>,
    /// Image media ids (repeatable).
    #[arg(long, value_name = "MEDIA_ID")]
    pub image: Vec<String>,
    /// A video media id.
    #[arg(long, value_name = "MEDIA_ID")]
    pub video: Option<String>,
    /// A card id.
    #[arg(long, value_name = "CARD_ID")]
    pub wxcard: Option<String>,
    /// Send even when WeChat judges the article a reprint.
    #[arg(long)]
    pub send_ignore_reprint: bool,
    /// An idempotency key: the same key sends once.
    #[arg(long, value_name = "KEY", default_value = "")]
    pub clientmsgid: String,
}

/// `wxgate typing`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Example:\n  wxgate typing demo oUser123\n  wxgate typing demo oUser123 --cancel"
)]
pub struct TypingArgs {
    /// The account.
    pub account: String,
    /// The user's OpenID.
    pub openid: String,
    /// Stop showing "typing…" instead.
    #[arg(long)]
    pub cancel: bool,
}

/// Runs `wxgate send …`.
pub async fn send(api: &Api, command: SendCommand) -> Outcome {
    let custom = |account: String, openid: String, custom: CustomArgs, message: Custom| {
        pb::SendCustomRequest {
            account_id: account,
            touser: openid,
            kf_account: custom.kf,
            message: Some(message),
        }
    };
    let request = match command {
        SendCommand::Text {
            account,
            openid,
            content,
            custom: c,
        } => custom(account, openid, c, Custom::Text(pb::CustomText { content })),
        SendCommand::Image {
            account,
            openid,
            media_id,
            custom: c,
        } => custom(
            account,
            openid,
            c,
            Custom::Image(pb::CustomMediaId { media_id }),
        ),
        SendCommand::Voice {
            account,
            openid,
            media_id,
            custom: c,
        } => custom(
            account,
            openid,
            c,
            Custom::Voice(pb::CustomMediaId { media_id }),
        ),
        SendCommand::Video {
            account,
            openid,
            media_id,
            thumb,
            title,
            description,
            custom: c,
        } => custom(
            account,
            openid,
            c,
            Custom::Video(pb::CustomVideo {
                media_id,
                thumb_media_id: thumb,
                title,
                description,
            }),
        ),
        SendCommand::Music {
            account,
            openid,
            thumb,
            title,
            description,
            url,
            hq_url,
            custom: c,
        } => custom(
            account,
            openid,
            c,
            Custom::Music(pb::CustomMusic {
                thumb_media_id: thumb,
                title,
                description,
                musicurl: url,
                hqmusicurl: hq_url,
            }),
        ),
        SendCommand::News {
            account,
            openid,
            title,
            description,
            url,
            pic_url,
            custom: c,
        } => custom(
            account,
            openid,
            c,
            Custom::News(pb::CustomNewsArticle {
                title,
                description,
                url,
                picurl: pic_url,
            }),
        ),
        SendCommand::Template {
            account,
            openid,
            template_id,
            data,
            url,
            miniprogram,
            client_msg_id,
        } => {
            return template(
                api,
                account,
                openid,
                template_id,
                data,
                url,
                miniprogram,
                client_msg_id,
            )
            .await;
        }
        SendCommand::Mass(args) => return mass(api, args).await,
    };
    let answer = api
        .messages()
        .send_custom(request)
        .await
        .map_err(|status| api.failure(status))?
        .into_inner();
    println_checked(&format!("sent ({})", answer.errmsg))
}

#[allow(clippy::too_many_arguments)]
async fn template(
    api: &Api,
    account: String,
    openid: String,
    template_id: String,
    data: Vec<String>,
    url: Option<String>,
    miniprogram: Option<String>,
    client_msg_id: Option<String>,
) -> Outcome {
    let mut fields = std::collections::HashMap::new();
    for entry in data {
        let (name, value) = entry.split_once('=').ok_or_else(|| {
            Failure::usage(format!(
                "--data {entry:?}: expected NAME=VALUE or NAME=VALUE:#COLOR"
            ))
        })?;
        let (value, color) = match value.rsplit_once(":#") {
            Some((value, color)) => (value, Some(format!("#{color}"))),
            None => (value, None),
        };
        fields.insert(
            name.to_owned(),
            pb::TemplateData {
                value: value.to_owned(),
                color,
            },
        );
    }
    let miniprogram = miniprogram.map(|text| match text.split_once(':') {
        Some((appid, pagepath)) => pb::TemplateMiniProgram {
            appid: appid.to_owned(),
            pagepath: pagepath.to_owned(),
        },
        None => pb::TemplateMiniProgram {
            appid: text,
            pagepath: String::new(),
        },
    });
    let answer = api
        .messages()
        .send_template(pb::SendTemplateRequest {
            account_id: account,
            touser: openid,
            template_id,
            url,
            miniprogram,
            data: fields,
            client_msg_id: client_msg_id.unwrap_or_default(),
        })
        .await
        .map_err(|status| api.failure(status))?
        .into_inner();
    if answer.already_sent {
        println_checked(&format!(
            "already sent with this client_msg_id (msgid {})",
            answer.msgid
        ))
    } else {
        println_checked(&format!("sent (msgid {})", answer.msgid))
    }
}

async fn mass(api: &Api, args: MassArgs) -> Outcome {
    use pb::send_mass_request::{Message, Target};
    let target = if args.all {
        Target::ToAll(true)
    } else if let Some(tag) = args.tag {
        Target::TagId(tag)
    } else if let Some(openid) = args.preview {
        Target::PreviewOpenid(openid)
    } else if let Some(wxname) = args.preview_wxname {
        Target::PreviewWxname(wxname)
    } else {
        Target::Openids(pb::MassOpenIds {
            openids: args.openid,
        })
    };
    let message = if let Some(content) = args.text {
        Message::Text(pb::MassText { content })
    } else if let Some(media_id) = args.mpnews {
        Message::Mpnews(pb::MassMediaId { media_id })
    } else if let Some(media_id) = args.voice {
        Message::Voice(pb::MassMediaId { media_id })
    } else if let Some(media_id) = args.video {
        Message::Mpvideo(pb::MassVideo {
            media_id,
            title: None,
            description: None,
        })
    } else if let Some(card_id) = args.wxcard {
        Message::Wxcard(pb::MassWxCard { card_id })
    } else {
        Message::Image(pb::MassImages {
            media_ids: args.image,
            recommend: None,
            need_open_comment: false,
            only_fans_can_comment: false,
        })
    };
    let answer = api
        .messages()
        .send_mass(pb::SendMassRequest {
            account_id: args.account,
            target: Some(target),
            message: Some(message),
            send_ignore_reprint: args.send_ignore_reprint,
            clientmsgid: args.clientmsgid,
        })
        .await
        .map_err(|status| api.failure(status))?
        .into_inner();
    let what = if answer.already_sent {
        "already sent with this clientmsgid"
    } else {
        "sent"
    };
    println_checked(&format!(
        "{what} (msg_id {}, msg_data_id {})",
        answer.msg_id, answer.msg_data_id
    ))
}

/// Runs `wxgate typing`.
pub async fn typing(api: &Api, args: TypingArgs) -> Outcome {
    let command = if args.cancel {
        pb::TypingCommand::Cancel
    } else {
        pb::TypingCommand::Typing
    };
    api.messages()
        .typing(pb::TypingRequest {
            account_id: args.account,
            touser: args.openid,
            command: command.into(),
        })
        .await
        .map_err(|status| api.failure(status))?;
    println_checked(if args.cancel {
        "typing cancelled"
    } else {
        "typing shown"
    })
}

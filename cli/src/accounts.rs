//! `wxgate accounts …`: accounts at run time (Accounts API; admin key), read and written in
//! the config file's `[[accounts]]` TOML form, so a file account can become a runtime one
//! and an export can go back into a config file.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use rand::Rng;
use serde_json::json;
use wxgate_core::config::AccountSpec;
use wxgate_proto::v1 as pb;

use crate::api::Api;
use crate::{Failure, Outcome, print_json, println_checked, read_file};

/// `wxgate accounts`.
#[derive(Debug, Clone, Subcommand)]
pub enum AccountsCommand {
    /// Lists every account served (config file and runtime).
    #[command(after_help = "Example:\n  wxgate accounts list")]
    List {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Shows one account (secrets only as set or not).
    #[command(after_help = "Example:\n  wxgate accounts get shop")]
    Get {
        /// The account id.
        id: String,
    },
    /// Adds the accounts of a TOML file (`[[accounts]]` tables as in the config file) at run
    /// time; every gateway and worker serves them within a second. An existing runtime
    /// account is only replaced with --replace.
    #[command(
        after_help = "Example:\n  cat > shop.toml <<'EOF'\n  [[accounts]]\n  id = \"shop\"\n  appid = \"wx1234567890abcdef\"\n  secret = \"…\"\n  token = \"…\"\n  encoding_aes_key = \"…43 characters…\"\n  [[accounts.custom]]\n  match = { msg_type = \"text\" }\n  reply = { echo = true }\n  EOF\n  wxgate accounts add shop.toml"
    )]
    Add {
        /// The TOML file.
        file: PathBuf,
        /// Replace runtime accounts that exist.
        #[arg(long)]
        replace: bool,
    },
    /// Removes a runtime account; its callbacks answer 404 within a second.
    #[command(after_help = "Example:\n  wxgate accounts remove shop")]
    Remove {
        /// The account id.
        id: String,
    },
    /// Rotates the callback Token and/or EncodingAESKey (the old ones stay accepted until
    /// --finish), or replaces the AppSecret.
    #[command(
        after_help = "Examples:\n  wxgate accounts rotate shop --new-token --new-aes-key   # prints the new values for WeChat's console\n  wxgate accounts rotate shop --finish                   # once WeChat uses the new ones\n  wxgate accounts rotate shop --secret NEW_APPSECRET"
    )]
    Rotate(RotateArgs),
    /// Writes the runtime accounts as TOML (a backup); secrets only with --with-secrets.
    #[command(
        after_help = "Example:\n  wxgate accounts export --with-secrets -o accounts.toml && chmod 600 accounts.toml"
    )]
    Export {
        /// Include every secret in the clear (treat the file as a secret).
        #[arg(long)]
        with_secrets: bool,
        /// Write to FILE (created with mode 0600) instead of stdout.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Restores an export: creates or replaces every account in the file.
    #[command(after_help = "Example:\n  wxgate accounts import accounts.toml")]
    Import {
        /// A file written by `wxgate accounts export`.
        file: PathBuf,
    },
}

/// `wxgate accounts rotate`.
#[derive(Debug, Clone, Args)]
pub struct RotateArgs {
    /// The account id.
    pub id: String,
    /// The new callback Token.
    #[arg(long, value_name = "TOKEN", conflicts_with_all = ["new_token", "finish"])]
    pub token: Option<String>,
    /// Generate a new callback Token (32 letters and digits) and print it.
    #[arg(long, conflicts_with = "finish")]
    pub new_token: bool,
    /// The new EncodingAESKey (43 characters).
    #[arg(long, value_name = "KEY", conflicts_with_all = ["new_aes_key", "finish"])]
    pub aes_key: Option<String>,
    /// Generate a new EncodingAESKey and print it.
    #[arg(long, conflicts_with = "finish")]
    pub new_aes_key: bool,
    /// The new AppSecret (reset in WeChat's console first; the old one stops working there).
    #[arg(long, value_name = "SECRET", conflicts_with = "finish")]
    pub secret: Option<String>,
    /// End a rotation: stop accepting the previous Token and EncodingAESKey.
    #[arg(long)]
    pub finish: bool,
}

/// The accounts of a TOML file.
#[derive(serde::Deserialize, serde::Serialize)]
struct AccountsFile {
    #[serde(default)]
    accounts: Vec<AccountSpec>,
}

/// Runs `wxgate accounts …`.
pub async fn accounts(api: &Api, command: AccountsCommand) -> Outcome {
    let fail = |status| api.failure(status);
    match command {
        AccountsCommand::List { json } => {
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = api
                    .accounts()
                    .list(pb::ListAccountsRequest {
                        page_size: 0,
                        page_token,
                    })
                    .await
                    .map_err(fail)?
                    .into_inner();
                all.extend(page.accounts);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            if json {
                return print_json(&serde_json::Value::Array(
                    all.iter().map(info_json).collect(),
                ));
            }
            println_checked(&format!(
                "{:<24} {:<20} {:<7} {:<8} {}",
                "ID", "APPID", "MODE", "ORIGIN", "RULES (passive/custom)"
            ))?;
            for a in &all {
                println_checked(&format!(
                    "{:<24} {:<20} {:<7} {:<8} {}/{}",
                    a.id,
                    a.appid,
                    mode_name(a.mode),
                    origin_name(a.origin),
                    a.passive.len(),
                    a.custom.len()
                ))?;
            }
            Ok(())
        }
        AccountsCommand::Get { id } => {
            let answer = api
                .accounts()
                .get(pb::GetAccountRequest { account_id: id })
                .await
                .map_err(fail)?
                .into_inner();
            let account = answer.account.unwrap_or_default();
            print_json(&info_json(&account))
        }
        AccountsCommand::Add { file, replace } => {
            let specs = read_accounts(&file)?;
            for spec in specs {
                if !replace {
                    match api
                        .accounts()
                        .get(pb::GetAccountRequest {
                            account_id: spec.id.clone(),
                        })
                        .await
                    {
                        Ok(_) => {
                            return Err(Failure::failed(format!(
                                "account {:?} exists; give --replace to replace it",
                                spec.id
                            )));
                        }
                        Err(status) if status.code() == tonic::Code::NotFound => {}
                        Err(status) => return Err(fail(status)),
                    }
                }
                upsert(api, &spec, false).await?;
            }
            Ok(())
        }
        AccountsCommand::Remove { id } => {
            let answer = api
                .accounts()
                .remove(pb::RemoveAccountRequest {
                    account_id: id.clone(),
                })
                .await
                .map_err(fail)?
                .into_inner();
            println_checked(&format!(
                "removed {id} (accounts version {})",
                answer.version
            ))
        }
        AccountsCommand::Rotate(args) => rotate(api, args).await,
        AccountsCommand::Export {
            with_secrets,
            output,
        } => {
            let answer = api
                .accounts()
                .export(pb::ExportAccountsRequest {
                    with_secrets,
                    account_ids: Vec::new(),
                })
                .await
                .map_err(fail)?
                .into_inner();
            let file = AccountsFile {
                accounts: answer
                    .accounts
                    .into_iter()
                    .map(wx_worker::grpc::accounts::spec_of)
                    .collect(),
            };
            let body = toml::to_string(&file)
                .map_err(|e| Failure::failed(format!("cannot write TOML: {e}")))?;
            let text = format!(
                "# wxgate runtime accounts, {} of them, at accounts version {}; {}.\n# Restore with `wxgate accounts import FILE`.\n{body}",
                file.accounts.len(),
                answer.version,
                if with_secrets {
                    "SECRETS INCLUDED: keep this file secret"
                } else {
                    "secrets left out (import keeps the stored ones)"
                }
            );
            match output {
                None => println_checked(text.trim_end()),
                Some(path) => {
                    write_private(&path, text.as_bytes())?;
                    eprintln!(
                        "exported {} accounts to {}",
                        file.accounts.len(),
                        path.display()
                    );
                    Ok(())
                }
            }
        }
        AccountsCommand::Import { file } => {
            for spec in read_accounts(&file)? {
                upsert(api, &spec, false).await?;
            }
            Ok(())
        }
    }
}

async fn upsert(api: &Api, spec: &AccountSpec, clear_previous: bool) -> Outcome {
    let answer = api
        .accounts()
        .upsert(pb::UpsertAccountRequest {
            account: Some(wx_worker::grpc::accounts::settings_of(spec, true)),
            clear_previous,
        })
        .await
        .map_err(|status| api.failure(status))?
        .into_inner();
    println_checked(&format!(
        "{} {} (accounts version {})",
        if answer.created {
            "created"
        } else {
            "replaced"
        },
        spec.id,
        answer.version
    ))
}

async fn rotate(api: &Api, args: RotateArgs) -> Outcome {
    let token = match (args.token, args.new_token) {
        (Some(token), _) => Some(token),
        (None, true) => Some(random_text(32)),
        (None, false) => None,
    };
    let aes_key = match (args.aes_key, args.new_aes_key) {
        (Some(key), _) => Some(key),
        (None, true) => Some(random_text(43)),
        (None, false) => None,
    };
    if token.is_none() && aes_key.is_none() && args.secret.is_none() && !args.finish {
        return Err(Failure::usage(
            "nothing to rotate: give --new-token, --token, --new-aes-key, --aes-key, --secret or --finish",
        ));
    }
    let exported = api
        .accounts()
        .export(pb::ExportAccountsRequest {
            with_secrets: true,
            account_ids: vec![args.id.clone()],
        })
        .await
        .map_err(|status| api.failure(status))?
        .into_inner();
    let Some(settings) = exported.accounts.into_iter().next() else {
        return Err(Failure::failed(format!(
            "runtime account {:?} not found",
            args.id
        )));
    };
    let mut spec = wx_worker::grpc::accounts::spec_of(settings);
    if let Some(token) = &token {
        spec.previous_token = Some(std::mem::replace(&mut spec.token, token.clone()));
    }
    if let Some(key) = &aes_key {
        spec.previous_encoding_aes_key = spec.encoding_aes_key.replace(key.clone());
    }
    if let Some(secret) = args.secret {
        spec.secret = secret;
    }
    if args.finish {
        spec.previous_token = None;
        spec.previous_encoding_aes_key = None;
    }
    upsert(api, &spec, args.finish).await?;
    if let Some(token) = token {
        println_checked(&format!("new Token: {token}"))?;
    }
    if let Some(key) = aes_key {
        println_checked(&format!("new EncodingAESKey: {key}"))?;
    }
    if spec.previous_token.is_some() || spec.previous_encoding_aes_key.is_some() {
        eprintln!(
            "callbacks signed with the previous values are still accepted: set the new ones in WeChat's console, then run `wxgate accounts rotate {} --finish`",
            spec.id
        );
    }
    Ok(())
}

/// `n` random characters of `[A-Za-z0-9]`: a callback Token (any length up to 128) or an
/// EncodingAESKey (43).
fn random_text(n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

fn read_accounts(file: &std::path::Path) -> Result<Vec<AccountSpec>, Failure> {
    let bytes = read_file(file, "the accounts file")?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Failure::usage(format!("{}: not UTF-8", file.display())))?;
    let parsed: AccountsFile =
        toml::from_str(&text).map_err(|e| Failure::usage(format!("{}: {e}", file.display())))?;
    if parsed.accounts.is_empty() {
        return Err(Failure::usage(format!(
            "{}: no [[accounts]] table",
            file.display()
        )));
    }
    Ok(parsed.accounts)
}

#[cfg(unix)]
fn write_private(path: &std::path::Path, bytes: &[u8]) -> Outcome {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| Failure::failed(format!("cannot write {}: {e}", path.display())))
}

#[cfg(not(unix))]
fn write_private(path: &std::path::Path, bytes: &[u8]) -> Outcome {
    std::fs::write(path, bytes)
        .map_err(|e| Failure::failed(format!("cannot write {}: {e}", path.display())))
}

fn mode_name(mode: i32) -> &'static str {
    match pb::AccountMode::try_from(mode) {
        Ok(pb::AccountMode::Plain) => "plain",
        Ok(pb::AccountMode::Compat) => "compat",
        Ok(pb::AccountMode::Safe) => "safe",
        _ => "?",
    }
}

fn origin_name(origin: i32) -> &'static str {
    match pb::AccountOrigin::try_from(origin) {
        Ok(pb::AccountOrigin::File) => "file",
        Ok(pb::AccountOrigin::Runtime) => "runtime",
        _ => "?",
    }
}

fn info_json(a: &pb::AccountInfo) -> serde_json::Value {
    let spec = wx_worker::grpc::accounts::spec_of(pb::AccountSettings {
        passive: a.passive.clone(),
        custom: a.custom.clone(),
        ..Default::default()
    });
    json!({
        "id": a.id,
        "appid": a.appid,
        "mode": mode_name(a.mode),
        "origin": origin_name(a.origin),
        "has_secret": a.has_secret,
        "has_token": a.has_token,
        "has_encoding_aes_key": a.has_encoding_aes_key,
        "has_previous_token": a.has_previous_token,
        "has_previous_encoding_aes_key": a.has_previous_encoding_aes_key,
        "passive": serde_json::to_value(&spec.passive).unwrap_or_default(),
        "custom": serde_json::to_value(&spec.custom).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_values_have_the_shapes_wechat_takes() {
        let key = random_text(43);
        assert_eq!(key.len(), 43);
        assert!(key.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(wechat::crypto::AesKey::from_encoding_aes_key(&key).is_ok());
        assert_ne!(random_text(32), random_text(32));
    }
}

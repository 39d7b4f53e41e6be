//! The `wx-gateway` binary refuses a bad config before it listens: exit status 2 and a
//! message naming the key (README "Configuration"). No Redis or RabbitMQ needed.

// The helpers are test code too; a panic is how they fail a test.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use tokio::process::Command;

/// How long a refusal may take; a gateway still running by then took the config.
const REFUSED_WITHIN: Duration = Duration::from_secs(20);

/// Runs `wx-gateway --config FILE` on `config` written to a fresh temporary file.
async fn run_with_config(name: &str, config: &str) -> Output {
    let dir = std::env::temp_dir().join(format!(
        "wx-gateway-cli-{}-{name}-{:x}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file: PathBuf = dir.join("config.toml");
    std::fs::write(&file, config).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_wx-gateway"));
    command
        .arg("--config")
        .arg(&file)
        .env_remove("WXGATE__GATEWAY__THREADS")
        .env_remove("WXGATE__GATEWAY__LISTEN");
    let output = run(command).await;
    let _ = std::fs::remove_dir_all(&dir);
    output
}

/// Runs `command` to its end; fails the test if it is still running after
/// [`REFUSED_WITHIN`] (then it is killed).
async fn run(mut command: Command) -> Output {
    let output = command.kill_on_drop(true).output();
    match tokio::time::timeout(REFUSED_WITHIN, output).await {
        Ok(output) => output.unwrap(),
        Err(_) => panic!("wx-gateway still runs after {REFUSED_WITHIN:?}: the config was taken"),
    }
}

/// Distinct enough for parallel test processes; not security relevant.
fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Exit status 2, and every one of `fragments` in the message.
fn assert_refused(output: &Output, fragments: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    for fragment in fragments {
        assert!(
            stderr.contains(fragment),
            "the message says {fragment}: {stderr}"
        );
    }
}

#[tokio::test]
async fn too_many_threads_are_refused_naming_the_key_and_the_bound() {
    // One over the bound; an accepted config would listen on a free port, not on 8080.
    let output = run_with_config(
        "threads",
        "[gateway]\nlisten = \"127.0.0.1:0\"\nthreads = 257\n",
    )
    .await;
    assert_refused(&output, &["invalid value for `gateway.threads`", "and 256"]);
}

#[tokio::test]
async fn a_misspelt_key_is_refused_naming_it() {
    let output = run_with_config("typo", "[gateway]\nlisten = \"127.0.0.1:0\"\nthread = 1\n").await;
    // Not just "thread": the list of expected keys holds `threads` too.
    assert_refused(&output, &["unknown field `thread`"]);
}

#[tokio::test]
async fn a_missing_file_is_refused() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wx-gateway"));
    command.args(["--config", "/nonexistent/wxgate/config.toml"]);
    let output = run(command).await;
    assert_refused(&output, &["/nonexistent/wxgate/config.toml"]);
}

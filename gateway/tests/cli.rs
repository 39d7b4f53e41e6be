//! The `wx-gateway` binary refuses a bad config before it listens: exit status 2 and a
//! message naming the key (README "Configuration"). No Redis or RabbitMQ needed.

// The helpers are test code too; a panic is how they fail a test.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs `wx-gateway --config FILE` on `config` written to a fresh temporary file.
fn run_with_config(name: &str, config: &str) -> Output {
    let dir = std::env::temp_dir().join(format!(
        "wx-gateway-cli-{}-{name}-{:x}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file: PathBuf = dir.join("config.toml");
    std::fs::write(&file, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_wx-gateway"))
        .arg("--config")
        .arg(&file)
        .env_remove("WXGATE__GATEWAY__THREADS")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    output
}

/// Distinct enough for parallel test processes; not security relevant.
fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn assert_refused(output: &Output, key: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains(key), "the message names {key}: {stderr}");
}

#[test]
fn too_many_threads_are_refused_naming_the_key() {
    let output = run_with_config("threads", "[gateway]\nthreads = 1000\n");
    assert_refused(&output, "gateway.threads");
}

#[test]
fn a_misspelt_key_is_refused_naming_it() {
    let output = run_with_config("typo", "[gateway]\nthread = 1\n");
    assert_refused(&output, "thread");
}

#[test]
fn a_missing_file_is_refused() {
    let output = Command::new(env!("CARGO_BIN_EXE_wx-gateway"))
        .args(["--config", "/nonexistent/wxgate/config.toml"])
        .output()
        .unwrap();
    assert_refused(&output, "/nonexistent/wxgate/config.toml");
}

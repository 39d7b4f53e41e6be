//! The workspace's binaries for the running test's profile, built from the current sources:
//! for tests that start wx-gateway, wx-worker or wxgate as child processes.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The directory (`target/{profile}`) holding `programs`, built from the current sources.
///
/// `cargo test --workspace` builds every binary before any test runs; `cargo test -p
/// wxgate-tests` does not, and leaves old ones in place. So when a program is missing or older
/// than any file under `sources`, `cargo build --bins -p …` of `packages` runs (into the same
/// target directory and profile). Building always would cost a second build in the first
/// case: without the other packages' dev-dependencies, cargo resolves features differently.
/// Call it once per test binary (behind a `OnceLock`).
pub fn built_binaries(programs: &[&str], packages: &[&str], sources: &[PathBuf]) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/{profile}/deps/NAME-HASH → target/{profile}
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable sits in target/{profile}/deps")
        .to_path_buf();
    let newest_source = sources.iter().filter_map(|s| newest(s)).max();
    let up_to_date = programs.iter().all(|program| {
        let built = std::fs::metadata(dir.join(program)).and_then(|m| m.modified());
        matches!((built, newest_source), (Ok(built), Some(newest)) if built >= newest)
    });
    if !up_to_date {
        build(&dir, packages);
    }
    dir
}

/// The latest modification time of `path` or of any file under it.
fn newest(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .flatten()
        .filter_map(|entry| newest(&entry.path()))
        .max()
}

/// `cargo build --bins` of `packages` into `dir`'s target directory and profile.
fn build(dir: &Path, packages: &[&str]) {
    let mut cargo = std::process::Command::new(env!("CARGO"));
    cargo
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--quiet", "--bins"]);
    if let Some(target) = dir.parent() {
        cargo.arg("--target-dir").arg(target);
    }
    match dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug") {
        "debug" => {}
        "release" => {
            cargo.arg("--release");
        }
        other => {
            cargo.args(["--profile", other]);
        }
    }
    for package in packages {
        cargo.args(["-p", package]);
    }
    let output = cargo
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the binaries: {e}"));
    assert!(
        output.status.success(),
        "building {packages:?} ({cargo:?}) failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

//! The workspace's packages and the binaries each builds, read from the `Cargo.toml` files the
//! way cargo finds binary targets: `[[bin]]` entries, `src/main.rs` (named after the package)
//! and `src/bin/*` unless `autobins = false`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Package name → its binary targets.
pub type Binaries = BTreeMap<String, BTreeSet<String>>;

fn read_toml(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.parse()
        .unwrap_or_else(|e| panic!("{} is not TOML: {e}", path.display()))
}

/// Every workspace member's binaries.
pub fn binaries(root: &Path) -> Binaries {
    let manifest = read_toml(&root.join("Cargo.toml"));
    let members = manifest
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(toml::Value::as_array)
        .expect("the root Cargo.toml lists [workspace] members");
    let mut out = Binaries::new();
    for member in members.iter().filter_map(toml::Value::as_str) {
        let dir = root.join(member);
        let package = read_toml(&dir.join("Cargo.toml"));
        let Some(name) = package
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(toml::Value::as_str)
        else {
            continue;
        };
        let explicit: Vec<(String, Option<String>)> = package
            .get("bin")
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|bin| {
                let bin_name = bin.get("name")?.as_str()?.to_owned();
                let path = bin
                    .get("path")
                    .and_then(toml::Value::as_str)
                    .map(str::to_owned);
                Some((bin_name, path))
            })
            .collect();
        let mut bins: BTreeSet<String> = explicit.iter().map(|(n, _)| n.clone()).collect();
        let autobins = package
            .get("package")
            .and_then(|p| p.get("autobins"))
            .and_then(toml::Value::as_bool)
            .unwrap_or(true);
        if autobins {
            let main_claimed = explicit
                .iter()
                .any(|(_, path)| path.as_deref() == Some("src/main.rs"));
            if dir.join("src/main.rs").is_file() && !main_claimed {
                bins.insert(name.to_owned());
            }
            if let Ok(entries) = std::fs::read_dir(dir.join("src/bin")) {
                for entry in entries.flatten() {
                    let path = entry.path();
                    let stem = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned);
                    let is_bin = path.extension().is_some_and(|e| e == "rs")
                        || path.join("main.rs").is_file();
                    if let (true, Some(stem)) = (is_bin, stem) {
                        bins.insert(stem);
                    }
                }
            }
        }
        out.insert(name.to_owned(), bins);
    }
    out
}

//! The workspace's packages, read from the `Cargo.toml` files: the binaries each builds (the
//! way cargo finds binary targets: `[[bin]]` entries, `src/main.rs` named after the package,
//! and `src/bin/*` unless `autobins = false`) and the workspace packages each is built from.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One workspace member.
#[derive(Debug, Clone)]
pub struct Package {
    /// Its directory.
    pub dir: PathBuf,
    /// Its binary targets.
    pub bins: BTreeSet<String>,
    /// Directories of the workspace packages it depends on (normal and build dependencies).
    pub path_deps: BTreeSet<PathBuf>,
}

/// Package name → package.
pub type Workspace = BTreeMap<String, Package>;

fn read_toml(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.parse()
        .unwrap_or_else(|e| panic!("{} is not TOML: {e}", path.display()))
}

/// Every workspace member.
pub fn read(root: &Path) -> Workspace {
    let manifest = read_toml(&root.join("Cargo.toml"));
    let workspace = manifest
        .get("workspace")
        .expect("the root Cargo.toml has a [workspace]");
    let members = workspace
        .get("members")
        .and_then(toml::Value::as_array)
        .expect("the root Cargo.toml lists [workspace] members");
    // `name = { path = "dir" }` of [workspace.dependencies]: what `name.workspace = true` means.
    let shared_paths: BTreeMap<String, PathBuf> = workspace
        .get("dependencies")
        .and_then(toml::Value::as_table)
        .into_iter()
        .flatten()
        .filter_map(|(name, spec)| Some((name.clone(), root.join(spec.get("path")?.as_str()?))))
        .collect();
    let mut out = Workspace::new();
    for member in members.iter().filter_map(toml::Value::as_str) {
        let dir = root.join(member);
        let manifest = read_toml(&dir.join("Cargo.toml"));
        let Some(name) = manifest
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(toml::Value::as_str)
        else {
            continue;
        };
        let path_deps = ["dependencies", "build-dependencies"]
            .iter()
            .filter_map(|section| manifest.get(*section).and_then(toml::Value::as_table))
            .flatten()
            .filter_map(|(dep, spec)| {
                if let Some(path) = spec.get("path").and_then(toml::Value::as_str) {
                    return Some(dir.join(path));
                }
                let shared = spec.get("workspace").and_then(toml::Value::as_bool) == Some(true);
                shared.then(|| shared_paths.get(dep).cloned()).flatten()
            })
            .collect();
        let bins = binaries(name, &dir, &manifest);
        out.insert(
            name.to_owned(),
            Package {
                dir,
                bins,
                path_deps,
            },
        );
    }
    out
}

fn binaries(name: &str, dir: &Path, manifest: &toml::Table) -> BTreeSet<String> {
    let explicit: Vec<(String, Option<String>)> = manifest
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
    let autobins = manifest
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
                let is_bin =
                    path.extension().is_some_and(|e| e == "rs") || path.join("main.rs").is_file();
                if let (true, Some(stem)) = (is_bin, stem) {
                    bins.insert(stem);
                }
            }
        }
    }
    bins
}

/// The directories of `packages` and of every workspace package they are built from.
pub fn source_dirs(workspace: &Workspace, packages: &[String]) -> BTreeSet<PathBuf> {
    let by_dir: BTreeMap<&Path, &Package> =
        workspace.values().map(|p| (p.dir.as_path(), p)).collect();
    let mut todo: Vec<PathBuf> = packages
        .iter()
        .filter_map(|p| workspace.get(p))
        .map(|p| p.dir.clone())
        .collect();
    let mut seen = BTreeSet::new();
    while let Some(dir) = todo.pop() {
        if !seen.insert(dir.clone()) {
            continue;
        }
        if let Some(package) = by_dir.get(dir.as_path()) {
            todo.extend(package.path_deps.iter().cloned());
        }
    }
    seen
}

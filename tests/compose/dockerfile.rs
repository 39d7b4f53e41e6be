//! The `Dockerfile`, read for what the image holds: the packages `cargo build -p` builds, the
//! binaries copied into the final stage, the apt packages installed there, its user, exposed
//! ports and command.

use std::collections::BTreeSet;

/// What the final image is made of.
#[derive(Debug, Default)]
pub struct Image {
    /// `-p`/`--package` arguments of every `cargo build` in a build stage.
    pub built_packages: BTreeSet<String>,
    /// File names copied from another stage into the final stage's `/usr/local/bin`.
    pub binaries: BTreeSet<String>,
    /// Packages named by `apt-get install` in the final stage.
    pub apt_packages: BTreeSet<String>,
    /// Sources of `COPY`/`ADD` in the final stage that come from the build context (not from
    /// another stage).
    pub context_copies: Vec<String>,
    /// The final stage's `USER`, if any.
    pub user: Option<String>,
    /// The final stage's `EXPOSE` ports.
    pub exposed: BTreeSet<u16>,
    /// The final stage's `CMD`, if any, as written.
    pub cmd: Option<String>,
}

impl Image {
    /// Commands the final image has: the copied binaries, what the apt packages install, and
    /// the base image's shell.
    pub fn commands(&self) -> BTreeSet<String> {
        let mut commands: BTreeSet<String> = self.binaries.clone();
        for package in &self.apt_packages {
            // Package → the commands it brings; packages that bring none (ca-certificates)
            // map to nothing.
            let from_package: &[&str] = match package.as_str() {
                "curl" => &["curl"],
                "wget" => &["wget"],
                "netcat-openbsd" => &["nc"],
                _ => &[],
            };
            commands.extend(from_package.iter().map(|c| (*c).to_owned()));
        }
        commands.extend(["sh", "grep"].map(str::to_owned));
        commands
    }
}

/// Joins continuation lines (`\` at the end) and drops comments and blank lines.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            if !current.trim().is_empty() {
                out.push(std::mem::take(&mut current));
            }
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

/// Reads the Dockerfile `text`.
pub fn parse(text: &str) -> Image {
    let instructions = instructions(text);
    let last_from = instructions
        .iter()
        .rposition(|i| {
            i.split_whitespace().next().map(str::to_ascii_uppercase) == Some("FROM".into())
        })
        .unwrap_or(0);
    let mut image = Image::default();
    for (index, instruction) in instructions.iter().enumerate() {
        let final_stage = index > last_from;
        let words: Vec<&str> = instruction.split_whitespace().collect();
        let Some((op, args)) = words.split_first() else {
            continue;
        };
        match op.to_ascii_uppercase().as_str() {
            "RUN" => {
                for command in instruction.split("&&") {
                    let words: Vec<&str> = command.split_whitespace().collect();
                    if let Some(at) = words.windows(2).position(|w| w == ["cargo", "build"]) {
                        let mut rest = words[at + 2..].iter();
                        while let Some(word) = rest.next() {
                            if *word == "-p" || *word == "--package" {
                                image
                                    .built_packages
                                    .extend(rest.next().map(|p| (*p).to_owned()));
                            } else if let Some(p) = word.strip_prefix("--package=") {
                                image.built_packages.insert(p.to_owned());
                            }
                        }
                    }
                    if final_stage
                        && let Some(at) = words.windows(2).position(|w| w == ["apt-get", "install"])
                    {
                        image.apt_packages.extend(
                            words[at + 2..]
                                .iter()
                                .filter(|w| !w.starts_with('-'))
                                .map(|w| (*w).to_owned()),
                        );
                    }
                }
            }
            "COPY" | "ADD" if final_stage => {
                let from_stage = args.iter().any(|a| a.starts_with("--from="));
                let paths: Vec<&str> = args
                    .iter()
                    .filter(|a| !a.starts_with("--"))
                    .copied()
                    .collect();
                let Some((dest, sources)) = paths.split_last() else {
                    continue;
                };
                if !from_stage {
                    image
                        .context_copies
                        .extend(sources.iter().map(|s| (*s).to_owned()));
                    continue;
                }
                for source in sources {
                    let file = source.rsplit('/').next().unwrap_or(source);
                    let in_bin = if dest.ends_with('/') {
                        dest.trim_end_matches('/') == "/usr/local/bin"
                    } else {
                        dest.rsplit_once('/').map(|(dir, _)| dir) == Some("/usr/local/bin")
                    };
                    if in_bin {
                        let name = if dest.ends_with('/') {
                            file
                        } else {
                            dest.rsplit('/').next().unwrap_or(file)
                        };
                        image.binaries.insert(name.to_owned());
                    }
                }
            }
            "USER" if final_stage => image.user = args.first().map(|u| (*u).to_owned()),
            "EXPOSE" if final_stage => image.exposed.extend(
                args.iter()
                    .filter_map(|p| p.trim_end_matches("/tcp").parse::<u16>().ok()),
            ),
            "CMD" if final_stage => image.cmd = Some(args.join(" ")),
            _ => {}
        }
    }
    image
}

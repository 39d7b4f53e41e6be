//! `docker-compose.yml` read the way `docker compose` reads it, as far as these tests need: YAML
//! with anchors and `<<` merge keys, `${VAR:-default}` interpolation (nested defaults too; with
//! an empty environment, as on a fresh checkout without `.env`, or the variables a test sets),
//! and each service's fields in their short and long syntaxes.

use std::collections::{BTreeMap, BTreeSet};

use yaml_rust2::{Yaml, YamlLoader};

/// The whole file.
#[derive(Debug)]
pub struct Compose {
    /// Services by name.
    pub services: BTreeMap<String, Service>,
    /// The top-level named volumes.
    pub volumes: BTreeSet<String>,
}

/// One service.
#[derive(Debug, Default)]
pub struct Service {
    pub name: String,
    pub image: Option<String>,
    /// The build context (`build: .` or `build: { context: . }`).
    pub build: Option<String>,
    /// `command` as a list (the string form is refused: its shell-like splitting is ambiguous).
    pub command: Option<Vec<String>>,
    pub environment: BTreeMap<String, String>,
    pub volumes: Vec<Mount>,
    pub ports: Vec<PortMapping>,
    pub expose: Vec<u16>,
    pub healthcheck: Option<HealthTest>,
    pub profiles: Vec<String>,
    /// Dependency → condition (`service_started` when only the name is given).
    pub depends_on: BTreeMap<String, String>,
    pub container_name: Option<String>,
    pub replicas: Option<i64>,
}

/// A `volumes` entry.
#[derive(Debug, Clone)]
pub enum Mount {
    /// A host path (relative to the compose file's directory) mounted at `target`.
    Bind {
        source: String,
        target: String,
        read_only: bool,
    },
    /// A named volume mounted at `target`.
    Volume { name: String, target: String },
}

/// A `ports` entry.
#[derive(Debug, Clone)]
pub struct PortMapping {
    /// The host address it is published on; `None` means every address.
    pub host_ip: Option<String>,
    /// The host port; `None` means an ephemeral one.
    pub published: Option<u16>,
    /// The container port.
    pub target: u16,
}

/// A healthcheck's `test`.
#[derive(Debug, Clone)]
pub enum HealthTest {
    /// `["CMD", program, args...]`: run without a shell.
    Exec(Vec<String>),
    /// `["CMD-SHELL", "..."]` or a plain string: run with `/bin/sh -c`.
    Shell(String),
}

impl HealthTest {
    /// The programs the test runs: the exec form's first word, or the first word of every
    /// command of a shell pipeline or list.
    pub fn programs(&self) -> Vec<String> {
        match self {
            HealthTest::Exec(argv) => argv.first().cloned().into_iter().collect(),
            HealthTest::Shell(script) => script
                .split(['|', '&', ';'])
                .filter_map(|command| command.split_whitespace().next())
                .map(str::to_owned)
                .collect(),
        }
    }

    /// Every `http://` URL among the words of the test.
    pub fn urls(&self) -> Vec<String> {
        let words: Vec<String> = match self {
            HealthTest::Exec(argv) => argv.clone(),
            HealthTest::Shell(script) => script.split_whitespace().map(str::to_owned).collect(),
        };
        words
            .into_iter()
            .map(|w| w.trim_matches(['\'', '"']).to_owned())
            .filter(|w| w.starts_with("http://"))
            .collect()
    }
}

impl Service {
    /// The program `command` runs (its first word).
    pub fn program(&self) -> Option<&str> {
        self.command.as_ref()?.first().map(String::as_str)
    }

    /// Whether the service is built from the repository (`build: .`).
    pub fn built_here(&self) -> bool {
        self.build.as_deref().is_some_and(|c| c == "." || c == "./")
    }

    /// The value after `flag` in `command` (`--flag VALUE` or `--flag=VALUE`).
    pub fn arg(&self, flag: &str) -> Option<String> {
        let argv = self.command.as_ref()?;
        let eq = format!("{flag}=");
        argv.iter().enumerate().find_map(|(i, a)| {
            if a == flag {
                argv.get(i + 1).cloned()
            } else {
                a.strip_prefix(&eq).map(str::to_owned)
            }
        })
    }

    /// Every value of a repeatable `flag` in `command`.
    pub fn args(&self, flag: &str) -> Vec<String> {
        let Some(argv) = self.command.as_ref() else {
            return Vec::new();
        };
        let eq = format!("{flag}=");
        let mut values = Vec::new();
        for (i, a) in argv.iter().enumerate() {
            if a == flag {
                values.extend(argv.get(i + 1).cloned());
            } else if let Some(v) = a.strip_prefix(&eq) {
                values.push(v.to_owned());
            }
        }
        values
    }

    /// The host path bound at `target` (or at the directory holding it), as mounted.
    pub fn host_path_of(&self, target: &str) -> Option<String> {
        self.volumes.iter().find_map(|m| match m {
            Mount::Bind {
                source, target: t, ..
            } if t == target => Some(source.clone()),
            Mount::Bind {
                source, target: t, ..
            } => target
                .strip_prefix(t.as_str())
                .filter(|rest| rest.starts_with('/'))
                .map(|rest| format!("{source}{rest}")),
            Mount::Volume { .. } => None,
        })
    }
}

/// Parses `text` as a compose file, with the variables of `vars` set (as a `.env` file
/// would); `Err` names the field that is wrong.
pub fn parse(text: &str, vars: &BTreeMap<String, String>) -> Result<Compose, String> {
    let mut docs = YamlLoader::load_from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    if docs.len() != 1 {
        return Err(format!("expected one YAML document, found {}", docs.len()));
    }
    let root = docs.remove(0);
    let root = interpolate(merge_keys(root), vars)?;
    let Yaml::Hash(top) = &root else {
        return Err("the top level is not a mapping".into());
    };
    let mut services = BTreeMap::new();
    let Some(Yaml::Hash(raw_services)) = top.get(&key("services")) else {
        return Err("no `services` mapping".into());
    };
    for (name, body) in raw_services {
        let name = scalar(name).ok_or("a service name is not a string")?;
        let service = service(&name, body).map_err(|e| format!("services.{name}.{e}"))?;
        services.insert(name, service);
    }
    let volumes = match top.get(&key("volumes")) {
        Some(Yaml::Hash(v)) => v.keys().filter_map(scalar).collect(),
        _ => BTreeSet::new(),
    };
    Ok(Compose { services, volumes })
}

fn key(name: &str) -> Yaml {
    Yaml::String(name.to_owned())
}

/// A scalar as compose reads it: strings, numbers and booleans alike.
fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn strings(y: &Yaml, field: &str) -> Result<Vec<String>, String> {
    match y {
        Yaml::Array(items) => items
            .iter()
            .map(|i| scalar(i).ok_or_else(|| format!("{field}: an item is not a scalar")))
            .collect(),
        _ => Err(format!("{field}: expected a list")),
    }
}

fn service(name: &str, body: &Yaml) -> Result<Service, String> {
    let Yaml::Hash(fields) = body else {
        return Err("not a mapping".into());
    };
    let mut s = Service {
        name: name.to_owned(),
        ..Service::default()
    };
    for (k, v) in fields {
        let field = scalar(k).unwrap_or_default();
        match field.as_str() {
            "image" => s.image = scalar(v),
            "build" => {
                s.build = match v {
                    Yaml::Hash(b) => b.get(&key("context")).and_then(scalar),
                    other => scalar(other),
                }
            }
            "command" => match v {
                Yaml::Array(_) => s.command = Some(strings(v, "command")?),
                _ => return Err("command: write it as a list of words".into()),
            },
            "environment" => s.environment = environment(v)?,
            "volumes" => {
                s.volumes = match v {
                    Yaml::Array(items) => items.iter().map(mount).collect::<Result<_, _>>()?,
                    _ => return Err("volumes: expected a list".into()),
                }
            }
            "ports" => {
                s.ports = match v {
                    Yaml::Array(items) => items.iter().map(port).collect::<Result<_, _>>()?,
                    _ => return Err("ports: expected a list".into()),
                }
            }
            "expose" => {
                s.expose = strings(v, "expose")?
                    .iter()
                    .map(|p| port_number(p.trim_end_matches("/tcp"), "expose"))
                    .collect::<Result<_, _>>()?
            }
            "healthcheck" => s.healthcheck = healthcheck(v)?,
            "profiles" => s.profiles = strings(v, "profiles")?,
            "depends_on" => s.depends_on = depends_on(v)?,
            "container_name" => s.container_name = scalar(v),
            "deploy" => {
                s.replicas = match v {
                    Yaml::Hash(d) => d.get(&key("replicas")).and_then(Yaml::as_i64),
                    _ => None,
                }
            }
            _ => {}
        }
    }
    Ok(s)
}

fn environment(v: &Yaml) -> Result<BTreeMap<String, String>, String> {
    match v {
        Yaml::Hash(h) => h
            .iter()
            .map(|(k, v)| {
                let k = scalar(k).ok_or("environment: a name is not a string")?;
                // `NAME:` with no value passes the host's variable through; none here.
                Ok((k, scalar(v).unwrap_or_default()))
            })
            .collect(),
        Yaml::Array(items) => items
            .iter()
            .map(|i| {
                let entry = scalar(i).ok_or("environment: an entry is not a string")?;
                let (k, v) = entry.split_once('=').unwrap_or((&entry, ""));
                Ok((k.to_owned(), v.to_owned()))
            })
            .collect(),
        _ => Err("environment: expected a mapping or a list".into()),
    }
}

fn mount(v: &Yaml) -> Result<Mount, String> {
    match v {
        Yaml::String(short) => {
            let parts: Vec<&str> = short.split(':').collect();
            let (source, target, options) = match parts.as_slice() {
                [source, target] => (*source, *target, ""),
                [source, target, options] => (*source, *target, *options),
                _ => return Err(format!("volumes: {short:?} is not SOURCE:TARGET[:MODE]")),
            };
            let is_path = source.starts_with('.') || source.starts_with('/');
            Ok(if is_path {
                Mount::Bind {
                    source: source.to_owned(),
                    target: target.to_owned(),
                    read_only: options.split(',').any(|o| o == "ro"),
                }
            } else {
                Mount::Volume {
                    name: source.to_owned(),
                    target: target.to_owned(),
                }
            })
        }
        Yaml::Hash(long) => {
            let get = |k: &str| long.get(&key(k)).and_then(scalar);
            let target = get("target").ok_or("volumes: an entry has no target")?;
            let source = get("source").ok_or("volumes: an entry has no source")?;
            Ok(match get("type").as_deref() {
                Some("bind") => Mount::Bind {
                    source,
                    target,
                    read_only: get("read_only").as_deref() == Some("true"),
                },
                _ => Mount::Volume {
                    name: source,
                    target,
                },
            })
        }
        _ => Err("volumes: an entry is neither a string nor a mapping".into()),
    }
}

fn port_number(text: &str, field: &str) -> Result<u16, String> {
    text.parse()
        .map_err(|_| format!("{field}: {text:?} is not a port number (ranges are not used here)"))
}

fn port(v: &Yaml) -> Result<PortMapping, String> {
    match v {
        Yaml::Hash(long) => {
            let get = |k: &str| long.get(&key(k)).and_then(scalar);
            Ok(PortMapping {
                host_ip: get("host_ip"),
                published: get("published")
                    .map(|p| port_number(&p, "ports"))
                    .transpose()?,
                target: port_number(&get("target").ok_or("ports: no target")?, "ports")?,
            })
        }
        other => {
            let short = scalar(other).ok_or("ports: an entry is not a string")?;
            let spec = short.trim_end_matches("/tcp");
            // [HOST_IP:][PUBLISHED:]TARGET; an IPv6 host address would come in brackets.
            let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
            match parts.as_slice() {
                [target] => Ok(PortMapping {
                    host_ip: None,
                    published: None,
                    target: port_number(target, "ports")?,
                }),
                [target, published] => Ok(PortMapping {
                    host_ip: None,
                    published: Some(port_number(published, "ports")?),
                    target: port_number(target, "ports")?,
                }),
                [target, published, ip] => Ok(PortMapping {
                    host_ip: Some((*ip).to_owned()),
                    published: Some(port_number(published, "ports")?),
                    target: port_number(target, "ports")?,
                }),
                _ => Err(format!("ports: cannot read {short:?}")),
            }
        }
    }
}

fn healthcheck(v: &Yaml) -> Result<Option<HealthTest>, String> {
    let Yaml::Hash(h) = v else {
        return Err("healthcheck: expected a mapping".into());
    };
    if h.get(&key("disable")).and_then(Yaml::as_bool) == Some(true) {
        return Ok(None);
    }
    match h.get(&key("test")) {
        None => Err("healthcheck: no test".into()),
        Some(Yaml::String(s)) => Ok(Some(HealthTest::Shell(s.clone()))),
        Some(t) => {
            let argv = strings(t, "healthcheck.test")?;
            match argv.split_first() {
                Some((kind, rest)) if kind == "CMD" => Ok(Some(HealthTest::Exec(rest.to_vec()))),
                Some((kind, rest)) if kind == "CMD-SHELL" => {
                    Ok(Some(HealthTest::Shell(rest.join(" "))))
                }
                Some((kind, _)) if kind == "NONE" => Ok(None),
                _ => Err("healthcheck.test: starts with neither CMD nor CMD-SHELL".into()),
            }
        }
    }
}

fn depends_on(v: &Yaml) -> Result<BTreeMap<String, String>, String> {
    match v {
        Yaml::Array(_) => Ok(strings(v, "depends_on")?
            .into_iter()
            .map(|name| (name, "service_started".to_owned()))
            .collect()),
        Yaml::Hash(h) => h
            .iter()
            .map(|(k, v)| {
                let name = scalar(k).ok_or("depends_on: a name is not a string")?;
                let condition = match v {
                    Yaml::Hash(d) => d.get(&key("condition")).and_then(scalar),
                    _ => None,
                };
                Ok((name, condition.unwrap_or_else(|| "service_started".into())))
            })
            .collect(),
        _ => Err("depends_on: expected a list or a mapping".into()),
    }
}

/// Applies YAML merge keys (`<<: *anchor`, `<<: [*a, *b]`) everywhere: keys of the merged
/// mappings that the mapping does not set itself are added. The loader has already replaced
/// aliases with copies of what they point at.
fn merge_keys(y: Yaml) -> Yaml {
    match y {
        Yaml::Array(items) => Yaml::Array(items.into_iter().map(merge_keys).collect()),
        Yaml::Hash(hash) => {
            let mut own = yaml_rust2::yaml::Hash::new();
            let mut merged = Vec::new();
            for (k, v) in hash {
                if k == key("<<") {
                    match merge_keys(v) {
                        Yaml::Array(sources) => merged.extend(sources),
                        source => merged.push(source),
                    }
                } else {
                    own.insert(k, merge_keys(v));
                }
            }
            for source in merged {
                if let Yaml::Hash(source) = source {
                    for (k, v) in source {
                        own.entry(k).or_insert(v);
                    }
                }
            }
            Yaml::Hash(own)
        }
        other => other,
    }
}

/// Replaces `${NAME:-default}`, `${NAME-default}` (defaults may nest: `${A:-x${B:-y}}`) and
/// `$$` in every string value with what compose would use when the variables are as in `vars`
/// (a `.env` file), unset otherwise. `${NAME}` or `$NAME` without a default is an error: a
/// plain `docker compose up` must work without any variable set.
fn interpolate(y: Yaml, vars: &BTreeMap<String, String>) -> Result<Yaml, String> {
    Ok(match y {
        Yaml::String(s) => Yaml::String(interpolate_str(&s, vars)?),
        Yaml::Array(items) => Yaml::Array(
            items
                .into_iter()
                .map(|item| interpolate(item, vars))
                .collect::<Result<_, _>>()?,
        ),
        Yaml::Hash(hash) => {
            let mut out = yaml_rust2::yaml::Hash::new();
            for (k, v) in hash {
                out.insert(k, interpolate(v, vars)?);
            }
            Yaml::Hash(out)
        }
        other => other,
    })
}

/// [`interpolate`] for one string.
fn interpolate_str(s: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let (out, rest) = expand(s, s, vars, false)?;
    debug_assert!(rest.is_empty());
    Ok(out)
}

/// Expands `text` up to its end, or (`in_default`) up to the `}` closing the expression it is
/// the default of; returns the expansion and what follows that `}`. `whole` is the string
/// being expanded, for messages.
fn expand<'a>(
    whole: &str,
    mut text: &'a str,
    vars: &BTreeMap<String, String>,
    in_default: bool,
) -> Result<(String, &'a str), String> {
    let mut out = String::new();
    loop {
        let stop = text.find(|c| c == '$' || (in_default && c == '}'));
        let Some(at) = stop else {
            if in_default {
                return Err(format!("unclosed ${{ in {whole:?}"));
            }
            out.push_str(text);
            return Ok((out, ""));
        };
        out.push_str(&text[..at]);
        let after = &text[at + 1..];
        if text[at..].starts_with('}') {
            return Ok((out, after));
        }
        if let Some(after) = after.strip_prefix('$') {
            out.push('$');
            text = after;
        } else if let Some(inner) = after.strip_prefix('{') {
            let name_len = inner
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .ok_or_else(|| format!("unclosed ${{ in {whole:?}"))?;
            let (name, op) = inner.split_at(name_len);
            if !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
                return Err(format!(
                    "${{{name}…}} in {whole:?}: a variable name is [_A-Za-z][_A-Za-z0-9]*"
                ));
            }
            let value = vars.get(name);
            // `:-` uses the default for an empty value too, `-` only for an unset one.
            let (empty_counts, default) = match (op.strip_prefix(":-"), op.strip_prefix('-')) {
                (Some(default), _) => (true, default),
                (None, Some(default)) => (false, default),
                (None, None) => {
                    return Err(format!(
                        "${{{name}…}} in {whole:?} has no default: give it one \
                         (${{NAME:-value}}) so `docker compose up` works without .env"
                    ));
                }
            };
            let (default, rest) = expand(whole, default, vars, true)?;
            match value {
                Some(v) if !(empty_counts && v.is_empty()) => out.push_str(v),
                _ => out.push_str(&default),
            }
            text = rest;
        } else {
            return Err(format!(
                "a bare $ in {whole:?}: write $$ for a dollar sign or ${{NAME:-default}}"
            ));
        }
    }
}

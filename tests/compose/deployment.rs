//! The deployment as the repository describes it: `docker-compose.yml`, the `Dockerfile`,
//! `deploy/nginx.conf` and the workspace, plus what each service is (gateway, worker, simulator
//! or a third-party image) and the configuration it would load in its container.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use wxgate_core::Config;

use crate::dockerfile::{self, Image};
use crate::model::{self, Compose, Service};
use crate::nginx::{self, Directive};
use crate::workspace::{self, Workspace};

/// What a service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// `wx-gateway`.
    Gateway,
    /// `wx-worker`.
    Worker,
    /// `wxgate-sim`, the fake WeChat API.
    Sim,
    /// Anything else (RabbitMQ, Redis, nginx).
    Other,
}

/// Everything read from the repository.
pub struct Deployment {
    /// The repository's root.
    pub root: PathBuf,
    pub compose: Compose,
    pub image: Image,
    pub nginx: Directive,
    pub workspace: Workspace,
}

/// A port a service listens on inside its container, and which setting says so.
#[derive(Debug, Clone)]
pub struct Listener {
    /// The key or flag (`gateway.listen`, `--listen`, `nginx.conf listen`, ...).
    pub what: String,
    pub addr: SocketAddr,
}

impl Deployment {
    /// Reads every file, as on a fresh checkout (no `.env`); panics naming the file that
    /// cannot be read or parsed.
    pub fn load() -> Deployment {
        Self::load_with(&BTreeMap::new())
    }

    /// [`Deployment::load`] with the compose variables of `vars` set, as a `.env` file beside
    /// docker-compose.yml would set them.
    pub fn load_with(vars: &BTreeMap<String, String>) -> Deployment {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ sits in the repository")
            .to_path_buf();
        let read = |name: &str| {
            std::fs::read_to_string(root.join(name))
                .unwrap_or_else(|e| panic!("cannot read {name}: {e}"))
        };
        let compose = model::parse(&read("docker-compose.yml"), vars)
            .unwrap_or_else(|e| panic!("docker-compose.yml: {e}"));
        let image = dockerfile::parse(&read("Dockerfile"));
        let nginx = nginx::parse(&read("deploy/nginx.conf"))
            .unwrap_or_else(|e| panic!("deploy/nginx.conf: {e}"));
        let workspace = workspace::read(&root);
        Deployment {
            root,
            compose,
            image,
            nginx,
            workspace,
        }
    }

    /// The service `name`; panics when docker-compose.yml has none.
    pub fn service(&self, name: &str) -> &Service {
        self.compose.services.get(name).unwrap_or_else(|| {
            panic!(
                "docker-compose.yml has no service {name:?} (it has {:?})",
                self.compose.services.keys().collect::<Vec<_>>()
            )
        })
    }

    /// What `service` runs, by its command's program.
    pub fn role(&self, service: &Service) -> Role {
        match service.program() {
            Some("wx-gateway") => Role::Gateway,
            Some("wx-worker") => Role::Worker,
            Some("wxgate-sim") => Role::Sim,
            _ => Role::Other,
        }
    }

    /// Services built from the repository, in name order.
    pub fn built_here(&self) -> impl Iterator<Item = &Service> {
        self.compose.services.values().filter(|s| s.built_here())
    }

    /// The repository file `service` gets as its `--config`; panics when it has none or the
    /// path is not mounted.
    pub fn config_path(&self, service: &Service) -> PathBuf {
        let name = &service.name;
        let in_container = service.arg("--config").unwrap_or_else(|| {
            panic!("services.{name}: its command has no --config FILE (the binaries need one)")
        });
        let on_host = service.host_path_of(&in_container).unwrap_or_else(|| {
            panic!(
                "services.{name}: --config {in_container} is not in a bind mount; mount the \
                 file there (volumes: - ./config/x.toml:{in_container}:ro)"
            )
        });
        self.root.join(on_host)
    }

    /// The configuration `service` loads in its container: its mounted file with its
    /// `environment` as the overrides, exactly as `Config::load` in the binaries.
    pub fn config(&self, service: &Service) -> Config {
        let path = self.config_path(service);
        Config::load(&path, |key| service.environment.get(key).cloned()).unwrap_or_else(|e| {
            panic!(
                "services.{}: {} with its environment does not load: {e}",
                service.name,
                path.display()
            )
        })
    }

    /// Ports `service` listens on in its container.
    pub fn listeners(&self, service: &Service) -> Vec<Listener> {
        let listener = |what: &str, addr: SocketAddr| Listener {
            what: what.to_owned(),
            addr,
        };
        let any = |port: u16| SocketAddr::from(([0, 0, 0, 0], port));
        match self.role(service) {
            Role::Gateway => {
                let config = self.config(service);
                vec![listener("gateway.listen", config.gateway.listen)]
            }
            Role::Worker => {
                let config = self.config(service);
                vec![
                    listener("worker.http_listen", config.worker.http_listen),
                    listener("worker.grpc_listen", config.worker.grpc_listen),
                ]
            }
            Role::Sim => {
                let addr = service.arg("--listen").unwrap_or_else(|| {
                    panic!(
                        "services.{}: wxgate-sim needs --listen 0.0.0.0:PORT (its default is \
                         127.0.0.1, unreachable from other containers)",
                        service.name
                    )
                });
                let addr = addr.parse().unwrap_or_else(|e| {
                    panic!("services.{}: --listen {addr:?}: {e}", service.name)
                });
                vec![listener("--listen", addr)]
            }
            Role::Other => match image_name(service).as_str() {
                "rabbitmq" => vec![
                    listener("AMQP", any(5672)),
                    listener("management", any(15672)),
                ],
                "redis" => vec![listener("redis", any(6379))],
                "nginx" => self
                    .nginx_servers()
                    .flat_map(|server| server.children("listen"))
                    .filter_map(nginx::listen_port)
                    .map(|port| listener("nginx.conf listen", any(port)))
                    .collect(),
                _ => Vec::new(),
            },
        }
    }

    /// The `server` blocks of nginx.conf's `http` block.
    pub fn nginx_servers(&self) -> impl Iterator<Item = &Directive> {
        self.nginx
            .children("http")
            .flat_map(|http| http.children("server"))
    }

    /// The `upstream NAME` block of nginx.conf.
    pub fn nginx_upstream(&self, name: &str) -> Option<&Directive> {
        self.nginx
            .children("http")
            .flat_map(|http| http.children("upstream"))
            .find(|u| u.args.first().map(String::as_str) == Some(name))
    }

    /// Commands that exist in `service`'s image.
    pub fn commands(&self, service: &Service) -> BTreeSet<String> {
        if service.built_here() {
            return self.image.commands();
        }
        // Third-party images: the commands their official images are known to have.
        let known: &[&str] = match image_name(service).as_str() {
            "rabbitmq" => &[
                "rabbitmq-diagnostics",
                "rabbitmqctl",
                "rabbitmq-plugins",
                "sh",
            ],
            "redis" => &["redis-cli", "redis-server", "sh", "grep"],
            "nginx" => &["nginx", "curl", "sh"],
            _ => &[],
        };
        known.iter().map(|c| (*c).to_owned()).collect()
    }

    /// Services in the default profile (no `profiles`) and in each named profile.
    pub fn profiles(&self) -> BTreeMap<String, Vec<&Service>> {
        let mut out: BTreeMap<String, Vec<&Service>> = BTreeMap::new();
        for service in self.compose.services.values() {
            if service.profiles.is_empty() {
                out.entry(String::new()).or_default().push(service);
            }
            for profile in &service.profiles {
                out.entry(profile.clone()).or_default().push(service);
            }
        }
        out
    }
}

/// The image's repository name without registry, namespace or tag (`rabbitmq`, `nginx`).
pub fn image_name(service: &Service) -> String {
    let image = service.image.as_deref().unwrap_or_default();
    let without_tag = image.split(':').next().unwrap_or(image);
    without_tag
        .rsplit('/')
        .next()
        .unwrap_or(without_tag)
        .to_owned()
}

/// `(host, port, path)` of an `http://` or `grpc://`-like URL; the port defaults by scheme.
pub fn split_url(url: &str) -> Option<(String, u16, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    // Credentials (amqp://user:pass@host) are not part of the address.
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        "redis" => 6379,
        "amqp" => 5672,
        "amqps" => 5671,
        _ => return None,
    };
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().ok()?),
        None => (host_port, default_port),
    };
    Some((host.to_owned(), port, path.to_owned()))
}

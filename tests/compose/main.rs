//! Checks `docker-compose.yml`, the `Dockerfile`, `deploy/nginx.conf` and the compose config
//! files against each other and against the workspace, without a Docker engine: the programs
//! the services run are in the image and are real binaries, mounted files exist, healthchecks
//! use commands the images have and the ports the services really listen on, nginx reaches
//! every replica, and nothing that scales publishes a host port. Then it starts the services
//! of each profile as local processes (as compose would, against the local Redis and RabbitMQ
//! in a random namespace) and waits for their healthchecks to pass.
//!
//! Failure messages name the file and service and say what to change.

// clippy.toml allows unwrap/expect inside `#[test]` functions only; the helpers of this test
// target are test code too, and a panic is how they fail a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod deployment;
mod dockerfile;
mod model;
mod nginx;
mod stack;
mod workspace;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wxgate_sim::{Inbound, MsgIdGen, PushAccount, PushClient, PushMode};

use deployment::{Deployment, Role, image_name, split_url};
use model::Mount;

/// The demo's documented admin key (config/compose-demo.toml holds its SHA-256).
const DEMO_KEY: &str = "demo-admin-key";
/// Where production talks to WeChat.
const WECHAT_API: &str = "https://api.weixin.qq.com";
/// Docker's embedded DNS server.
const DOCKER_DNS: &str = "127.0.0.11";
/// WeChat's wait for a callback's answer, in milliseconds.
const WECHAT_WAIT_MS: u64 = 5000;

/// Panics with every problem found, one per line, when there is any.
fn report(what: &str, problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{what}:\n  - {}",
        problems.join("\n  - ")
    );
}

#[test]
fn services_built_here_run_binaries_the_image_installs() {
    let d = Deployment::load();
    let mut problems = Vec::new();
    for service in d.compose.services.values() {
        let name = &service.name;
        if !service.built_here() {
            if service.image.is_none() {
                problems.push(format!("services.{name}: neither `build: .` nor an image"));
            }
            continue;
        }
        match service.program() {
            None => problems.push(format!(
                "services.{name}: no command; name the binary explicitly (the image's CMD is \
                 only the gateway)"
            )),
            Some(program) if !d.image.binaries.contains(program) => problems.push(format!(
                "services.{name}: runs {program}, which the Dockerfile does not copy to \
                 /usr/local/bin (it copies {:?}); add its package to `cargo build -p` and a \
                 `COPY --from=build` line",
                d.image.binaries
            )),
            Some(_) => {}
        }
    }
    report("docker-compose.yml runs programs the image lacks", problems);
}

#[test]
fn the_image_installs_real_workspace_binaries() {
    let d = Deployment::load();
    let mut problems = Vec::new();
    for package in &d.image.built_packages {
        if !d.workspace.contains_key(package) {
            problems.push(format!(
                "Dockerfile: `cargo build -p {package}`, but no workspace member is named \
                 {package} (members: {:?}); add the crate to [workspace] members or drop the -p",
                d.workspace.keys().collect::<Vec<_>>()
            ));
        }
    }
    let built_bins: BTreeSet<&String> = d
        .image
        .built_packages
        .iter()
        .filter_map(|p| d.workspace.get(p))
        .flat_map(|p| &p.bins)
        .collect();
    for binary in &d.image.binaries {
        if !built_bins.contains(binary) {
            let owner = d
                .workspace
                .iter()
                .find(|(_, p)| p.bins.contains(binary))
                .map(|(name, _)| name.as_str());
            problems.push(match owner {
                Some(package) => format!(
                    "Dockerfile: copies {binary}, a binary of {package}, which `cargo build` \
                     does not build; add `-p {package}`"
                ),
                None => format!(
                    "Dockerfile: copies {binary}, which is no binary target of the workspace"
                ),
            });
        }
    }
    for package in &d.image.built_packages {
        let Some(bins) = d.workspace.get(package).map(|p| &p.bins) else {
            continue;
        };
        if !bins.iter().any(|b| d.image.binaries.contains(b)) {
            problems.push(format!(
                "Dockerfile: builds {package} but copies none of its binaries {bins:?} to \
                 /usr/local/bin"
            ));
        }
    }
    report("the Dockerfile and the workspace disagree", problems);
}

#[test]
fn the_image_bakes_in_no_config_and_runs_unprivileged() {
    let d = Deployment::load();
    let mut problems = Vec::new();
    if !d.image.context_copies.is_empty() {
        problems.push(format!(
            "Dockerfile: the final stage copies {:?} from the build context; configuration and \
             secrets are mounted at run time, only binaries come from the build stage",
            d.image.context_copies
        ));
    }
    match d.image.user.as_deref() {
        None => problems.push("Dockerfile: no USER; run as a fixed non-root uid".into()),
        Some(user) => {
            let uid = user.split(':').next().unwrap_or(user);
            if uid == "0" || uid == "root" || uid.parse::<u32>().is_err() {
                problems.push(format!(
                    "Dockerfile: USER {user}; use a fixed non-root numeric uid (e.g. 10001)"
                ));
            }
        }
    }
    if d.image.cmd.is_none() {
        problems.push("Dockerfile: no default CMD".into());
    }
    for service in d.built_here() {
        for listener in d.listeners(service) {
            if !d.image.exposed.contains(&listener.addr.port()) {
                problems.push(format!(
                    "Dockerfile: EXPOSE lacks {} ({} of services.{})",
                    listener.addr.port(),
                    listener.what,
                    service.name
                ));
            }
        }
    }
    report("the image", problems);
}

#[test]
fn mounted_files_exist_and_state_is_kept_in_named_volumes() {
    let d = Deployment::load();
    let mut problems = Vec::new();
    for service in d.compose.services.values() {
        let name = &service.name;
        for mount in &service.volumes {
            match mount {
                Mount::Bind {
                    source,
                    target,
                    read_only,
                } => {
                    if !d.root.join(source).exists() {
                        problems.push(format!(
                            "services.{name}: mounts {source}, which is not in the repository"
                        ));
                    }
                    if !read_only {
                        problems.push(format!(
                            "services.{name}: mount {source} at {target} read-only (`:ro`)"
                        ));
                    }
                }
                Mount::Volume { name: volume, .. } => {
                    if !d.compose.volumes.contains(volume) {
                        problems.push(format!(
                            "services.{name}: named volume {volume} is not declared under the \
                             top-level `volumes:`"
                        ));
                    }
                }
            }
        }
    }
    let volume_at = |image: &str, target: &str| {
        d.compose
            .services
            .values()
            .filter(|s| image_name(s) == image)
            .all(|s| {
                s.volumes
                    .iter()
                    .any(|m| matches!(m, Mount::Volume { target: t, .. } if t == target))
            })
    };
    if !volume_at("rabbitmq", "/var/lib/rabbitmq") {
        problems.push("rabbitmq: keep /var/lib/rabbitmq in a named volume (the queues)".into());
    }
    if !volume_at("redis", "/data") {
        problems.push("redis: keep /data in a named volume (runtime accounts)".into());
    }
    for redis in d
        .compose
        .services
        .values()
        .filter(|s| image_name(s) == "redis")
    {
        if redis.arg("--appendonly").as_deref() != Some("yes") {
            problems.push(format!(
                "services.{}: run redis-server with `--appendonly yes`: accounts added at run \
                 time live only in Redis",
                redis.name
            ));
        }
    }
    report("mounts and volumes", problems);
}

#[test]
fn healthchecks_run_commands_their_image_has() {
    let d = Deployment::load();
    let mut problems = Vec::new();
    for service in d.compose.services.values() {
        let name = &service.name;
        let Some(test) = &service.healthcheck else {
            problems.push(format!(
                "services.{name}: no healthcheck; dependents wait for `service_healthy`"
            ));
            continue;
        };
        let commands = d.commands(service);
        for program in test.programs() {
            if !commands.contains(&program) {
                problems.push(format!(
                    "services.{name}: the healthcheck runs {program}, which its image ({}) \
                     does not have (it has {commands:?}); install it or use another command",
                    service.image.as_deref().unwrap_or("built here")
                ));
            }
        }
        for (dependency, condition) in &service.depends_on {
            let Some(dep) = d.compose.services.get(dependency) else {
                problems.push(format!(
                    "services.{name}: depends on {dependency}, which does not exist"
                ));
                continue;
            };
            if condition == "service_healthy" && dep.healthcheck.is_none() {
                problems.push(format!(
                    "services.{name}: waits for {dependency} to be healthy, which has no \
                     healthcheck"
                ));
            }
            if service.profiles.is_empty() && !dep.profiles.is_empty() {
                problems.push(format!(
                    "services.{name}: is in the default profile but depends on {dependency} of \
                     profile(s) {:?}; plain `docker compose up` would not start it",
                    dep.profiles
                ));
            }
        }
    }
    report("healthchecks and dependencies", problems);
}

/// The listener a service's healthcheck must ask: the gateway's callback port, the worker's
/// HTTP port, the simulator's only port.
fn health_port(d: &Deployment, service: &model::Service) -> Option<(String, u16)> {
    let listeners = d.listeners(service);
    let pick = |what: &str| {
        listeners
            .iter()
            .find(|l| l.what == what)
            .map(|l| (l.what.clone(), l.addr.port()))
    };
    match d.role(service) {
        Role::Gateway => pick("gateway.listen"),
        Role::Worker => pick("worker.http_listen"),
        Role::Sim => pick("--listen"),
        Role::Other => None,
    }
}

#[test]
fn ports_agree_between_configs_healthchecks_and_compose() {
    let d = Deployment::load();
    let mut problems = Vec::new();
    for service in d.built_here() {
        let name = &service.name;
        let listeners = d.listeners(service);
        let ports: BTreeSet<u16> = listeners.iter().map(|l| l.addr.port()).collect();
        for listener in &listeners {
            if !listener.addr.ip().is_unspecified() {
                problems.push(format!(
                    "services.{name}: {} is {}; in a container listen on 0.0.0.0 (set it in \
                     `environment` or the command), or nothing outside it can connect",
                    listener.what, listener.addr
                ));
            }
        }
        // The healthcheck asks the port the service listens on, at /readyz.
        if let (Some(test), Some((what, port))) = (&service.healthcheck, health_port(&d, service)) {
            let urls = test.urls();
            if urls.is_empty() {
                problems.push(format!(
                    "services.{name}: the healthcheck asks no http:// URL; use curl on \
                     http://127.0.0.1:{port}/readyz"
                ));
            }
            for url in urls {
                let Some((host, url_port, path)) = split_url(&url) else {
                    problems.push(format!(
                        "services.{name}: cannot read healthcheck URL {url}"
                    ));
                    continue;
                };
                if host != "127.0.0.1" && host != "localhost" {
                    problems.push(format!(
                        "services.{name}: the healthcheck asks {host}; ask 127.0.0.1"
                    ));
                }
                if url_port != port {
                    problems.push(format!(
                        "services.{name}: the healthcheck asks port {url_port}, but {what} is \
                         port {port}"
                    ));
                }
                if matches!(d.role(service), Role::Gateway | Role::Worker) && path != "/readyz" {
                    problems.push(format!(
                        "services.{name}: the healthcheck asks {path}; ask /readyz (ready means \
                         Redis and RabbitMQ are connected)"
                    ));
                }
            }
        }
        // expose/ports name only ports it listens on, and every one it listens on.
        let declared: BTreeSet<u16> = service
            .expose
            .iter()
            .copied()
            .chain(service.ports.iter().map(|p| p.target))
            .collect();
        for port in declared.difference(&ports) {
            problems.push(format!(
                "services.{name}: `expose`/`ports` name container port {port}, but it listens \
                 on {ports:?}"
            ));
        }
        for listener in &listeners {
            if !declared.contains(&listener.addr.port()) {
                problems.push(format!(
                    "services.{name}: listens on {} ({}) but neither `expose` nor `ports` \
                     names it",
                    listener.addr.port(),
                    listener.what
                ));
            }
        }
        // Redis, RabbitMQ and WeChat: services of the file, on the ports they listen on.
        if matches!(d.role(service), Role::Gateway | Role::Worker) {
            let config = d.config(service);
            let mut backends = vec![
                ("redis.url", config.redis.url.clone()),
                ("rabbitmq.url", config.rabbitmq.url.clone()),
            ];
            if d.role(service) == Role::Worker {
                backends.push(("wechat.api_base", config.wechat.api_base.clone()));
            }
            for (key, url) in backends {
                check_backend(&d, service, key, &url, &mut problems);
            }
        }
    }
    report("ports and addresses", problems);
}

/// `url` (the value of `key` in `service`'s config) names a service of the file on a port it
/// listens on, which `service` waits for; or, for WeChat, a public host name.
fn check_backend(
    d: &Deployment,
    service: &model::Service,
    key: &str,
    url: &str,
    problems: &mut Vec<String>,
) {
    let name = &service.name;
    let Some((host, port, _)) = split_url(url) else {
        problems.push(format!("services.{name}: {key} = {url:?} is not a URL"));
        return;
    };
    let Some(target) = d.compose.services.get(&host) else {
        if !host.contains('.') {
            problems.push(format!(
                "services.{name}: {key} names host {host}, which is no service of the file"
            ));
        }
        return;
    };
    let ports: Vec<u16> = d.listeners(target).iter().map(|l| l.addr.port()).collect();
    if !ports.contains(&port) {
        problems.push(format!(
            "services.{name}: {key} names {host}:{port}, but {host} listens on {ports:?}"
        ));
    }
    if !service.depends_on.contains_key(&host) {
        problems.push(format!(
            "services.{name}: uses {host} ({key}) but does not `depends_on` it"
        ));
    }
    if !target.profiles.is_empty() && target.profiles != service.profiles {
        problems.push(format!(
            "services.{name}: uses {host} of profile(s) {:?} from profile(s) {:?}",
            target.profiles, service.profiles
        ));
    }
}

#[test]
fn nginx_reaches_every_gateway_and_worker_replica() {
    let d = Deployment::load();
    let mut problems = Vec::new();
    let nginx_services: Vec<_> = d
        .compose
        .services
        .values()
        .filter(|s| image_name(s) == "nginx")
        .collect();
    if nginx_services.len() != 1 {
        problems.push(format!(
            "docker-compose.yml: expected one nginx service, found {}",
            nginx_services.len()
        ));
    }
    let resolvers: Vec<String> = d
        .nginx
        .children("http")
        .flat_map(|h| h.children("resolver"))
        .flat_map(|r| r.args.clone())
        .collect();
    if !resolvers.iter().any(|r| r == DOCKER_DNS) {
        problems.push(format!(
            "deploy/nginx.conf: `resolver {DOCKER_DNS}` (Docker's DNS) is missing in `http`; \
             without it nginx never learns of replicas started later"
        ));
    }
    let listen_ports: BTreeSet<u16> = d
        .nginx_servers()
        .flat_map(|s| s.children("listen"))
        .filter_map(nginx::listen_port)
        .collect();
    for service in &nginx_services {
        let published: BTreeSet<u16> = service.ports.iter().map(|p| p.target).collect();
        if published != listen_ports {
            problems.push(format!(
                "services.{}: publishes container ports {published:?}, nginx.conf listens on \
                 {listen_ports:?}; make them the same",
                service.name
            ));
        }
        if let Some(test) = &service.healthcheck {
            for url in test.urls() {
                let Some((_, port, path)) = split_url(&url) else {
                    continue;
                };
                let has_location = d.nginx_servers().any(|server| {
                    server
                        .children("listen")
                        .filter_map(nginx::listen_port)
                        .any(|p| p == port)
                        && server
                            .children("location")
                            .any(|l| l.args.last().map(String::as_str) == Some(path.as_str()))
                });
                if !has_location {
                    problems.push(format!(
                        "services.{}: the healthcheck asks {url}, which no nginx.conf server \
                         on port {port} has a location for",
                        service.name
                    ));
                }
            }
        }
    }

    let mut reached: BTreeMap<Role, usize> = BTreeMap::new();
    for server in d.nginx_servers() {
        for location in server.children("location") {
            for (pass, role) in [("proxy_pass", Role::Gateway), ("grpc_pass", Role::Worker)] {
                let Some(target) = location.value(pass) else {
                    continue;
                };
                let upstream_name = target.split("://").nth(1).unwrap_or(target);
                let where_ = format!(
                    "deploy/nginx.conf: location {} {pass} {target}",
                    location.args.join(" ")
                );
                let Some(upstream) = d.nginx_upstream(upstream_name) else {
                    problems.push(format!(
                        "{where_}: no `upstream {upstream_name}`; pass to an upstream block \
                         whose servers are `resolve`d"
                    ));
                    continue;
                };
                if upstream.value("zone").is_none() {
                    problems.push(format!(
                        "deploy/nginx.conf: upstream {upstream_name} needs a `zone` for `resolve`"
                    ));
                }
                for server_line in upstream.children("server") {
                    let address = server_line.args.first().cloned().unwrap_or_default();
                    if !server_line.args.iter().any(|a| a == "resolve") {
                        problems.push(format!(
                            "deploy/nginx.conf: upstream {upstream_name}: `server {address}` \
                             lacks `resolve`, so replicas started later are never reached"
                        ));
                    }
                    let Some((host, port)) = address
                        .rsplit_once(':')
                        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
                    else {
                        problems.push(format!(
                            "deploy/nginx.conf: upstream {upstream_name}: write `server \
                             SERVICE:PORT`, not {address}"
                        ));
                        continue;
                    };
                    let Some(service) = d.compose.services.get(&host) else {
                        problems.push(format!(
                            "deploy/nginx.conf: upstream {upstream_name} names {host}, which is \
                             no service of docker-compose.yml"
                        ));
                        continue;
                    };
                    if d.role(service) != role {
                        problems.push(format!(
                            "{where_}: {host} runs {:?}, expected a {role:?}",
                            service.program()
                        ));
                        continue;
                    }
                    let config = d.config(service);
                    let (what, expected) = match role {
                        Role::Gateway => ("gateway.listen", config.gateway.listen.port()),
                        _ => ("worker.grpc_listen", config.worker.grpc_listen.port()),
                    };
                    if port != expected {
                        problems.push(format!(
                            "deploy/nginx.conf: upstream {upstream_name} uses {host}:{port}, but \
                             {host}'s {what} is port {expected}"
                        ));
                    }
                    if !service.profiles.is_empty() {
                        problems.push(format!(
                            "deploy/nginx.conf: upstream {upstream_name} names {host}, which only \
                             runs in profile(s) {:?}",
                            service.profiles
                        ));
                    }
                    *reached.entry(role).or_default() += 1;
                    if role == Role::Gateway {
                        check_callback_location(server, location, &config, &where_, &mut problems);
                    }
                }
            }
        }
    }
    for role in [Role::Gateway, Role::Worker] {
        if !reached.contains_key(&role) {
            problems.push(format!(
                "deploy/nginx.conf: nothing passes to the {role:?} service (proxy_pass for the \
                 gateways, grpc_pass for the workers)"
            ));
        }
    }
    report("nginx", problems);
}

/// The callback location: under `gateway.path_prefix`, bodies up to the gateway's limit, and
/// an answer before WeChat gives up.
fn check_callback_location(
    server: &nginx::Directive,
    location: &nginx::Directive,
    config: &wxgate_core::Config,
    where_: &str,
    problems: &mut Vec<String>,
) {
    let prefix = format!("{}/", config.gateway.path_prefix);
    if location.args.last() != Some(&prefix) {
        problems.push(format!(
            "{where_}: the location should be `{prefix}` (gateway.path_prefix), so only \
             callbacks reach the gateways"
        ));
    }
    let body_limit = location
        .value("client_max_body_size")
        .or_else(|| server.value("client_max_body_size"))
        .and_then(nginx::size)
        .unwrap_or(1024 * 1024);
    let gateway_limit = config.gateway.max_body_bytes as u64;
    if body_limit != 0 && body_limit < gateway_limit {
        problems.push(format!(
            "{where_}: client_max_body_size ({body_limit} bytes) is below \
             gateway.max_body_bytes ({gateway_limit}); let the gateway refuse large bodies"
        ));
    }
    let read_timeout = location
        .value("proxy_read_timeout")
        .or_else(|| server.value("proxy_read_timeout"))
        .and_then(nginx::millis)
        .unwrap_or(60_000);
    let budget = config.gateway.request_budget.as_millis() as u64;
    if read_timeout >= WECHAT_WAIT_MS || read_timeout <= budget {
        problems.push(format!(
            "{where_}: proxy_read_timeout is {read_timeout} ms; keep it above \
             gateway.request_budget_ms ({budget}) and below WeChat's {WECHAT_WAIT_MS} ms"
        ));
    }
}

#[test]
fn scaled_services_publish_no_host_ports() {
    let d = Deployment::load();
    let mut problems = Vec::new();
    let balanced: BTreeSet<String> = d
        .nginx
        .children("http")
        .flat_map(|h| h.children("upstream"))
        .flat_map(|u| u.children("server"))
        .filter_map(|s| s.args.first())
        .filter_map(|a| a.rsplit_once(':').map(|(h, _)| h.to_owned()))
        .collect();
    for name in &balanced {
        let Some(service) = d.compose.services.get(name) else {
            continue;
        };
        if !service.ports.is_empty() {
            problems.push(format!(
                "services.{name}: publishes host ports, so `--scale {name}=2` fails on the \
                 second replica; nginx reaches it, use `expose` instead"
            ));
        }
        if service.container_name.is_some() {
            problems.push(format!(
                "services.{name}: has a container_name, which forbids `--scale`"
            ));
        }
    }
    let mut taken: BTreeMap<(String, u16), String> = BTreeMap::new();
    for service in d.compose.services.values() {
        let name = &service.name;
        if !service.ports.is_empty() && service.replicas.is_some_and(|r| r > 1) {
            problems.push(format!(
                "services.{name}: publishes host ports and asks for several replicas"
            ));
        }
        for port in &service.ports {
            let Some(published) = port.published else {
                continue;
            };
            let ip = port.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into());
            if let Some(other) = taken.insert((ip.clone(), published), name.clone()) {
                problems.push(format!(
                    "services.{name} and services.{other} both publish {ip}:{published}"
                ));
            }
        }
    }
    for gateway_or_worker in ["gateway", "worker"] {
        if !balanced.contains(gateway_or_worker) {
            problems.push(format!(
                "deploy/nginx.conf: no upstream names the {gateway_or_worker} service"
            ));
        }
    }
    report("scaling", problems);
}

#[test]
fn demo_profile_is_complete_and_kept_apart_from_production() {
    let d = Deployment::load();
    let mut problems = Vec::new();
    let profiles = d.profiles();
    let default = profiles.get("").cloned().unwrap_or_default();
    let demo = profiles.get("demo").cloned().unwrap_or_default();
    let pair = |services: &[&model::Service]| -> Vec<String> {
        services
            .iter()
            .filter(|s| matches!(d.role(s), Role::Gateway | Role::Worker))
            .map(|s| s.name.clone())
            .collect()
    };
    let (production, demo_pair) = (pair(&default), pair(&demo));
    for (label, names) in [("default", &production), ("demo", &demo_pair)] {
        let roles: BTreeSet<String> = names
            .iter()
            .map(|n| format!("{:?}", d.role(d.service(n))))
            .collect();
        if roles.len() != 2 {
            problems.push(format!(
                "profile {label}: needs a gateway and a worker, has {names:?}"
            ));
        }
    }
    let namespaces = |names: &[String]| -> BTreeSet<String> {
        names
            .iter()
            .map(|n| d.config(d.service(n)).namespace)
            .collect()
    };
    let (production_ns, demo_ns) = (namespaces(&production), namespaces(&demo_pair));
    if production_ns.len() != 1 || demo_ns.len() != 1 {
        problems.push(format!(
            "a gateway and its worker share one namespace: production uses {production_ns:?}, \
             the demo {demo_ns:?}"
        ));
    }
    if !production_ns.is_disjoint(&demo_ns) {
        problems.push(format!(
            "the demo and production share namespace {:?}: the demo would read production's \
             queues and keys; give config/compose-demo.toml its own",
            production_ns.intersection(&demo_ns).collect::<Vec<_>>()
        ));
    }

    // Production: the real WeChat, no accounts, no keys.
    for name in &production {
        let config = d.config(d.service(name));
        if config.wechat.api_base != WECHAT_API {
            problems.push(format!(
                "services.{name}: wechat.api_base is {}; production talks to {WECHAT_API}",
                config.wechat.api_base
            ));
        }
        if !config.accounts.is_empty() || !config.api_keys.is_empty() {
            problems.push(format!(
                "services.{name}: its config has accounts or API keys; production's file ships \
                 with none (commented examples only)"
            ));
        }
    }

    // The demo: WeChat is the simulator, which knows every account; the admin key works.
    let sims: Vec<_> = demo.iter().filter(|s| d.role(s) == Role::Sim).collect();
    let sim_accounts: BTreeSet<String> = sims.iter().flat_map(|s| s.args("--account")).collect();
    if sims.is_empty() {
        problems.push("profile demo: no wxgate-sim service".into());
    }
    for name in &demo_pair {
        let config = d.config(d.service(name));
        for account in &config.accounts {
            let pair = format!("{}:{}", account.appid, account.secret.expose());
            if !sim_accounts.contains(&pair) {
                problems.push(format!(
                    "services.{name}: account {} (appid {}) is unknown to the simulator; add \
                     `--account APPID:SECRET` with its appid and secret to the sim's command",
                    account.id.as_str(),
                    account.appid
                ));
            }
        }
        if config.accounts.is_empty() {
            problems.push(format!("services.{name}: the demo has no accounts"));
        }
        let demo_hash = hex::encode(Sha256::digest(DEMO_KEY.as_bytes()));
        if !config
            .api_keys
            .iter()
            .any(|k| k.sha256 == demo_hash && k.accounts == ["*"])
        {
            problems.push(format!(
                "services.{name}: no admin key with the SHA-256 of {DEMO_KEY:?} \
                 ({demo_hash}) in its config"
            ));
        }
    }
    for service in &demo {
        if service.profiles != ["demo"] {
            problems.push(format!(
                "services.{}: profiles {:?}; the demo's services are in [\"demo\"] only",
                service.name, service.profiles
            ));
        }
        for port in &service.ports {
            if port.host_ip.as_deref() != Some("127.0.0.1") {
                problems.push(format!(
                    "services.{}: publishes {} on every address; the demo's key is public, \
                     publish on 127.0.0.1 only",
                    service.name, port.target
                ));
            }
        }
    }
    for name in &demo_pair {
        let service = d.service(name);
        if service.ports.is_empty() {
            problems.push(format!(
                "services.{name}: publishes no port; the demo is driven from the host"
            ));
        }
    }
    let readme = std::fs::read_to_string(d.root.join("deploy/README.md")).unwrap_or_default();
    if !readme.contains(DEMO_KEY) {
        problems.push(format!(
            "deploy/README.md: document the demo key {DEMO_KEY:?}"
        ));
    }
    report("profiles", problems);
}

#[test]
fn dockerignore_keeps_every_build_input() {
    let d = Deployment::load();
    let text = std::fs::read_to_string(d.root.join(".dockerignore"))
        .expect(".dockerignore exists (keeps target/ and .git out of the build context)");
    let patterns: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches('/').trim_end_matches('/').to_owned())
        .collect();
    let mut problems = Vec::new();
    for needed in ["target", ".git"] {
        if !patterns.iter().any(|p| p == needed) {
            problems.push(format!(".dockerignore: add {needed}/"));
        }
    }
    let manifest: toml::Table = std::fs::read_to_string(d.root.join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let members: Vec<String> = manifest["workspace"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect();
    let inputs = members
        .iter()
        .map(String::as_str)
        .chain(["Cargo.toml", "Cargo.lock", ".cargo"]);
    for input in inputs {
        if patterns
            .iter()
            .any(|p| p == input || p == "*" || p == "**" || input.starts_with(&format!("{p}/")))
        {
            problems.push(format!(
                ".dockerignore: excludes {input}, which `cargo build --locked` needs"
            ));
        }
    }
    report(".dockerignore", problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_services_start_and_become_ready() {
    let d = Deployment::load();
    let stack = stack::Stack::start(&d, &["gateway", "worker"]).await;
    stack.stop().await;
}

/// `deploy/clusters.env.example`: its variables, as compose reads a `.env` file.
fn clusters_env() -> BTreeMap<String, String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/clusters.env.example"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (name, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{path}: {line:?} is not NAME=value"));
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

#[test]
fn variables_interpolate_as_compose_does() {
    let vars: BTreeMap<String, String> = [("SET", "s"), ("EMPTY", "")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let compose = |value: &str| {
        model::parse(
            &format!("services:\n  a:\n    image: x\n    environment:\n      V: \"{value}\"\n"),
            &vars,
        )
        .map(|c| c.services["a"].environment["V"].clone())
    };
    for (value, expected) in [
        ("${SET:-d}", "s"),
        ("${UNSET:-d}", "d"),
        ("${EMPTY:-d}", "d"),
        ("${EMPTY-d}", ""),
        ("a${UNSET:-b${SET:-c}d}e", "absde"),
        ("${UNSET:-x${UNSET2:-y}}/z", "xy/z"),
        ("$$NOT", "$NOT"),
    ] {
        assert_eq!(compose(value).as_deref(), Ok(expected), "{value}");
    }
    for bad in ["${SET}", "$SET", "${UNSET:-open", "${:-x}", "${1A:-x}"] {
        assert!(compose(bad).is_err(), "{bad} should be refused");
    }
}

#[test]
fn the_clusters_example_configures_every_gateway_and_worker_for_clusters() {
    let vars = clusters_env();
    for name in [
        "WXGATE_RABBITMQ_URLS",
        "WXGATE_REDIS_MODE",
        "WXGATE_REDIS_URLS",
    ] {
        assert!(
            vars.contains_key(name),
            "deploy/clusters.env.example does not set {name}"
        );
    }
    let d = Deployment::load_with(&vars);
    let mut problems = Vec::new();
    for service in d.built_here() {
        if !matches!(d.role(service), Role::Gateway | Role::Worker) {
            continue;
        }
        let config = d.config(service);
        let name = &service.name;
        if config.rabbitmq.urls.len() < 2 {
            problems.push(format!(
                "services.{name}: rabbitmq.urls has {} node(s) with the clusters example",
                config.rabbitmq.urls.len()
            ));
        }
        if config.redis.mode != wxgate_core::config::RedisMode::Cluster
            || config.redis.urls.len() < 2
        {
            problems.push(format!(
                "services.{name}: redis is {} with {} URL(s) with the clusters example",
                config.redis.mode.as_str(),
                config.redis.urls.len()
            ));
        }
    }
    report(
        "docker-compose.yml with deploy/clusters.env.example",
        problems,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_tier_starts_against_clusters_named_in_env() {
    // The example's variables, pointed at a Redis Cluster started here and at two RabbitMQ
    // "nodes", the first of which is down: the processes must skip it.
    let redis = wxgate_tests::RedisCluster::up()
        .await
        .expect("start a Redis Cluster (scripts/testbed.sh)");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let mut vars = clusters_env();
    vars.insert(
        "WXGATE_RABBITMQ_URLS".into(),
        format!(
            "amqp://guest:guest@{dead}/%2f,{}",
            wxgate_tests::rabbitmq_url()
        ),
    );
    vars.insert("WXGATE_REDIS_URLS".into(), redis.urls().join(","));
    let d = Deployment::load_with(&vars);
    let stack = stack::Stack::start(&d, &["gateway", "worker"]).await;
    stack.stop().await;
    redis.down().await.expect("stop the Redis Cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_profile_starts_and_answers_like_the_tutorial() {
    let d = Deployment::load();
    let stack = stack::Stack::start(&d, &["sim", "demo-gateway", "demo-worker"]).await;

    let gateway = d.service("demo-gateway");
    let config = d.config(gateway);
    let base = format!(
        "http://{}{}",
        stack.addr("demo-gateway", config.gateway.listen.port()),
        config.gateway.path_prefix
    );
    let account = |id: &str| {
        let account = config
            .account(id)
            .unwrap_or_else(|| panic!("config/compose-demo.toml has no account {id:?}"));
        PushAccount {
            id: id.to_owned(),
            appid: account.appid.clone(),
            token: account.token.expose().to_owned(),
            encoding_aes_key: raw_aes_key(&d, gateway, id),
            mode: match account.mode {
                wxgate_core::config::Mode::Plain => PushMode::Plain,
                wxgate_core::config::Mode::Compat => PushMode::Compat,
                wxgate_core::config::Mode::Safe => PushMode::Safe,
            },
            original_id: format!("gh_{id}0000000"),
        }
    };
    let pusher = PushClient::new()
        .attempts(1)
        .timeout(Duration::from_secs(10));
    let msg_ids = MsgIdGen::new();
    let from = wxgate_sim::random_openid();

    // Safe mode: the passive rule answers in the HTTP response, encrypted.
    let safe = account("demo");
    let xml = Inbound::now(safe.original_id.clone(), from.clone()).text(msg_ids.next_id(), "ping");
    let outcome = pusher.push(&base, &safe, &xml).await.unwrap();
    assert!(
        format!("{:?}", outcome.answer).contains("pong") && outcome.reply_encrypted,
        "demo-gateway: a `ping` to the safe account `demo` should get an encrypted `pong`, got \
         {:?}; its output:\n{}",
        outcome.answer,
        stack.output("demo-gateway")
    );

    // Plain mode: the worker echoes through the simulator's customer-service API.
    let plain = account("plain");
    let marker = format!("compose-demo-{:08x}", rand::random::<u32>());
    let xml = Inbound::now(plain.original_id.clone(), from).text(msg_ids.next_id(), &marker);
    let outcome = pusher.push(&base, &plain, &xml).await.unwrap();
    assert_eq!(
        outcome.statuses,
        vec![200],
        "demo-gateway: the push to `plain` was not accepted ({:?}); its output:\n{}",
        outcome.answer,
        stack.output("demo-gateway")
    );
    let sim = d.service("sim");
    let sim_port = d.listeners(sim)[0].addr.port();
    let calls = format!(
        "http://{}/_sim/calls?path=/cgi-bin/message/custom/send",
        stack.addr("sim", sim_port)
    );
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let last = stack::get(&client, &calls).await;
        if let Ok((200, body)) = &last
            && body.contains(&marker)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "demo-worker: the echo of {marker:?} never reached the simulator's \
             message/custom/send (last: {last:?}); check wechat.api_base and the sim's \
             --account list. demo-worker's output:\n{}",
            stack.output("demo-worker")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.stop().await;
}

/// The `encoding_aes_key` of account `id` as written in `service`'s config file (the loaded
/// key does not give its text back).
fn raw_aes_key(d: &Deployment, service: &model::Service, id: &str) -> Option<String> {
    let text = std::fs::read_to_string(d.config_path(service)).unwrap();
    let table: toml::Table = text.parse().unwrap();
    table
        .get("accounts")?
        .as_array()?
        .iter()
        .find(|a| a.get("id").and_then(|v| v.as_str()) == Some(id))?
        .get("encoding_aes_key")?
        .as_str()
        .map(str::to_owned)
}

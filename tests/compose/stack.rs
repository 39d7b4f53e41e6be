//! Runs compose services as local processes, the way `docker compose` would start them: each
//! service's `command` and `environment`, its mounted config file read from the repository,
//! with service host names replaced by 127.0.0.1, the real Redis and RabbitMQ of the tests, a
//! random namespace and free ports. Processes are killed and the namespace removed however the
//! test ends.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::deployment::{Deployment, Role, split_url};
use crate::model::Service;
use crate::workspace;

/// How long a service may take to answer its healthcheck with 200 (a debug build declaring
/// quorum queues on a busy machine).
const READY: Duration = Duration::from_secs(90);
/// How long one health request may take.
const REQUEST: Duration = Duration::from_secs(3);
/// How long a killed process may take to be reaped.
const EXIT: Duration = Duration::from_secs(10);
/// How long removing the namespace may take.
const CLEANUP: Duration = Duration::from_secs(60);
/// Lines of a process's output kept for failure messages.
const LOG_LINES: usize = 60;

type Log = Arc<Mutex<VecDeque<String>>>;

/// One started service.
struct Process {
    service: String,
    child: Child,
    log: Log,
    /// Its healthcheck URL with the local port.
    health: Option<String>,
}

/// Services running as local processes in namespace `ns`.
pub struct Stack {
    /// The random namespace every process of the stack uses.
    pub ns: String,
    /// Local address of each (service, container port).
    ports: BTreeMap<(String, u16), SocketAddr>,
    processes: Vec<Process>,
    retry_queues: usize,
    cleaned: bool,
}

/// The directory of the workspace's binaries for this test's profile, holding the programs of
/// every service built here, built from the current sources.
///
/// `cargo test --workspace` builds them before any test runs; `cargo test -p wxgate-tests`
/// does not, and leaves old ones in place. So when a program is missing or older than a
/// source file of the packages it is built from, `cargo build` runs once per test binary.
/// (Building them always would cost a second build in the first case: without the other
/// packages' dev-dependencies, cargo resolves features differently.)
fn bin_dir(deployment: &Deployment) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let runnable: Vec<&Service> = deployment
                .built_here()
                .filter(|s| deployment.role(s) != Role::Other)
                .collect();
            let programs: BTreeSet<String> = runnable
                .iter()
                .filter_map(|s| s.program().map(str::to_owned))
                .collect();
            let packages: Vec<String> = runnable
                .iter()
                .map(|s| package_of(deployment, s))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let mut sources = workspace::source_dirs(&deployment.workspace, &packages);
            sources.extend(["Cargo.toml", "Cargo.lock", ".cargo"].map(|f| deployment.root.join(f)));
            let programs: Vec<&str> = programs.iter().map(String::as_str).collect();
            let packages: Vec<&str> = packages.iter().map(String::as_str).collect();
            let sources: Vec<PathBuf> = sources.into_iter().collect();
            wxgate_tests::built_binaries(&programs, &packages, &sources)
        })
        .clone()
}

/// A free local port: bound, read and released (a process started right after takes it).
fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free local port");
    listener.local_addr().expect("the port's address")
}

fn collect(stream: impl AsyncRead + Unpin + Send + 'static, log: Log) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            if log.len() == LOG_LINES {
                log.pop_front();
            }
            log.push_back(line);
        }
    });
}

fn tail(log: &Log) -> String {
    let log = log.lock().unwrap_or_else(|e| e.into_inner());
    if log.is_empty() {
        return "(no output)".into();
    }
    log.iter().cloned().collect::<Vec<_>>().join("\n")
}

impl Stack {
    /// Starts `names` (in order) and waits until each answers its healthcheck URL with 200.
    /// Panics naming the service that exited or never became ready, with its output.
    pub async fn start(deployment: &Deployment, names: &[&str]) -> Stack {
        let services: Vec<&Service> = names.iter().map(|n| deployment.service(n)).collect();
        // May run cargo for minutes: off the runtime's async work.
        let bins = tokio::task::block_in_place(|| bin_dir(deployment));
        require(
            &wxgate_tests::redis_url(),
            "Redis",
            "start it with `redis-server --daemonize yes --port 6379 --save ''`, or point \
             WXGATE__REDIS__URL at one",
        )
        .await;
        require(
            &wxgate_tests::rabbitmq_url(),
            "RabbitMQ",
            "start it with `rabbitmq-server -detached`, or point WXGATE__RABBITMQ__URL at one",
        )
        .await;

        let mut stack = Stack {
            ns: format!("t{:016x}", rand::random::<u64>()),
            ports: BTreeMap::new(),
            processes: Vec::new(),
            retry_queues: 0,
            cleaned: false,
        };
        for service in &services {
            for listener in deployment.listeners(service) {
                stack
                    .ports
                    .insert((service.name.clone(), listener.addr.port()), free_port());
            }
            if matches!(deployment.role(service), Role::Gateway | Role::Worker) {
                let retries = deployment.config(service).worker.retry_delays.len();
                stack.retry_queues = stack.retry_queues.max(retries);
            }
        }
        for service in &services {
            stack.spawn(deployment, service, &bins);
        }
        stack.wait_ready().await;
        stack
    }

    /// The local address of `service`'s container port `port`.
    pub fn addr(&self, service: &str, port: u16) -> SocketAddr {
        *self
            .ports
            .get(&(service.to_owned(), port))
            .unwrap_or_else(|| panic!("{service} does not listen on {port} in this stack"))
    }

    /// `url` (naming a compose service) rewritten to the local address of that service.
    fn local_url(&self, url: &str, user: &str) -> String {
        let (host, port, path) =
            split_url(url).unwrap_or_else(|| panic!("services.{user}: cannot read URL {url:?}"));
        let addr = self.ports.get(&(host.clone(), port)).unwrap_or_else(|| {
            panic!(
                "services.{user}: {url} names {host}:{port}, which is not started with it \
                 (start that service too, or fix the URL)"
            )
        });
        let scheme = url.split("://").next().unwrap_or("http");
        let path = if path == "/" && !url.ends_with('/') {
            String::new()
        } else {
            path
        };
        format!("{scheme}://{addr}{path}")
    }

    fn spawn(&mut self, deployment: &Deployment, service: &Service, bins: &Path) {
        let name = service.name.clone();
        let program = service
            .program()
            .unwrap_or_else(|| panic!("services.{name} has no command"));
        let role = deployment.role(service);
        let mut args: Vec<String> = service.command.clone().unwrap_or_default()[1..].to_vec();
        let mut env = service.environment.clone();
        let local = |port: u16| self.addr(&name, port).to_string();
        match role {
            Role::Gateway | Role::Worker => {
                let config_path = deployment.config_path(service);
                let config = deployment.config(service);
                if let Some(at) = args.iter().position(|a| a == "--config") {
                    args[at + 1] = config_path.display().to_string();
                }
                env.insert("WXGATE__NAMESPACE".into(), self.ns.clone());
                // The backends: a URL naming a compose service (the bundled RabbitMQ or Redis)
                // becomes the test's own; others (clusters a test names through compose
                // variables) are left as they are.
                let backends = [
                    ("RABBITMQ", wxgate_tests::rabbitmq_url()),
                    ("REDIS", wxgate_tests::redis_url()),
                ];
                for (backend, test_url) in backends {
                    let (one, list) = (
                        format!("WXGATE__{backend}__URL"),
                        format!("WXGATE__{backend}__URLS"),
                    );
                    let Some((var, urls)) = [one.clone(), list]
                        .into_iter()
                        .find_map(|var| env.get(&var).cloned().map(|urls| (var, urls)))
                    else {
                        env.insert(one, test_url);
                        continue;
                    };
                    let local: Vec<String> = urls
                        .split(',')
                        .map(|url| match split_url(url.trim()) {
                            Some((host, _, _))
                                if deployment.compose.services.contains_key(&host) =>
                            {
                                test_url.clone()
                            }
                            _ => url.trim().to_owned(),
                        })
                        .collect();
                    env.insert(var, local.join(","));
                }
                if role == Role::Gateway {
                    env.insert(
                        "WXGATE__GATEWAY__LISTEN".into(),
                        local(config.gateway.listen.port()),
                    );
                } else {
                    env.insert(
                        "WXGATE__WORKER__HTTP_LISTEN".into(),
                        local(config.worker.http_listen.port()),
                    );
                    env.insert(
                        "WXGATE__WORKER__GRPC_LISTEN".into(),
                        local(config.worker.grpc_listen.port()),
                    );
                }
                // WeChat: a compose service (the simulator) is reached locally; the real
                // api.weixin.qq.com is left alone (nothing calls it without accounts).
                let api_base = &config.wechat.api_base;
                if let Some((host, _, _)) = split_url(api_base)
                    && deployment.compose.services.contains_key(&host)
                {
                    env.insert(
                        "WXGATE__WECHAT__API_BASE".into(),
                        self.local_url(api_base, &name),
                    );
                }
            }
            Role::Sim => {
                let at = args
                    .iter()
                    .position(|a| a == "--listen")
                    .unwrap_or_else(|| panic!("services.{name}: wxgate-sim needs --listen"));
                let port = deployment
                    .listeners(service)
                    .first()
                    .map(|l| l.addr.port())
                    .unwrap_or_default();
                args[at + 1] = local(port);
            }
            Role::Other => panic!("services.{name} is not a wxgate binary; it cannot run here"),
        }
        let health = service
            .healthcheck
            .as_ref()
            .and_then(|h| h.urls().into_iter().next())
            .map(|url| {
                let (_, port, path) = split_url(&url)
                    .unwrap_or_else(|| panic!("services.{name}: healthcheck URL {url:?}"));
                let addr = self.ports.get(&(name.clone(), port)).unwrap_or_else(|| {
                    panic!(
                        "services.{name}: the healthcheck asks {url}, but nothing of {name} \
                         listens on port {port}; Docker would mark it unhealthy forever"
                    )
                });
                format!("http://{addr}{path}")
            });

        let mut command = Command::new(bins.join(program));
        command
            .args(&args)
            .env_clear()
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "services.{name}: cannot start {} ({e}); it is built by `cargo build -p {}`",
                bins.join(program).display(),
                package_of(deployment, service)
            )
        });
        let log: Log = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stdout) = child.stdout.take() {
            collect(stdout, Arc::clone(&log));
        }
        if let Some(stderr) = child.stderr.take() {
            collect(stderr, Arc::clone(&log));
        }
        self.processes.push(Process {
            service: name,
            child,
            log,
            health,
        });
    }

    async fn wait_ready(&mut self) {
        let client: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let deadline = Instant::now() + READY;
        for process in &mut self.processes {
            let Some(url) = process.health.clone() else {
                continue;
            };
            loop {
                if let Ok(Some(status)) = process.child.try_wait() {
                    panic!(
                        "services.{}: the process exited ({status}) before {url} answered 200; \
                         fix its command, environment or config file. Its last output:\n{}",
                        process.service,
                        tail(&process.log)
                    );
                }
                let last = match get(&client, &url).await {
                    Ok((200, _)) => break,
                    Ok((status, body)) => format!("{status}: {body}"),
                    Err(e) => e,
                };
                if Instant::now() >= deadline {
                    panic!(
                        "services.{}: {url} did not answer 200 within {READY:?} (last: {last}); \
                         its healthcheck would fail the same way. Its last output:\n{}",
                        process.service,
                        tail(&process.log)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The last lines `service` printed.
    pub fn output(&self, service: &str) -> String {
        self.processes
            .iter()
            .find(|p| p.service == service)
            .map(|p| tail(&p.log))
            .unwrap_or_default()
    }

    /// Kills every process, waits for them to exit, and removes the namespace; panics when the
    /// clean-up fails.
    pub async fn stop(mut self) {
        for process in &mut self.processes {
            let _ = process.child.start_kill();
            let _ = tokio::time::timeout(EXIT, process.child.wait()).await;
        }
        self.cleaned = true;
        match tokio::time::timeout(
            CLEANUP,
            wxgate_tests::remove_namespace(
                &self.ns,
                &wxgate_tests::redis_url(),
                &wxgate_tests::rabbitmq_url(),
                self.retry_queues,
            ),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("removing namespace {}: {e}", self.ns),
            Err(_) => panic!("removing namespace {} took over {CLEANUP:?}", self.ns),
        }
    }
}

impl Drop for Stack {
    /// When the test failed before [`Stack::stop`]: kill the processes and remove the
    /// namespace as well as possible.
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        for process in &mut self.processes {
            let _ = process.child.start_kill();
        }
        let (ns, retry_queues) = (self.ns.clone(), self.retry_queues);
        wxgate_tests::on_own_runtime(async move {
            let _ = tokio::time::timeout(
                CLEANUP,
                wxgate_tests::remove_namespace(
                    &ns,
                    &wxgate_tests::redis_url(),
                    &wxgate_tests::rabbitmq_url(),
                    retry_queues,
                ),
            )
            .await;
        });
    }
}

/// Panics with `how` to start it when nothing answers a TCP connect at `url`'s address.
async fn require(url: &str, what: &str, how: &str) {
    let (host, port, _) =
        split_url(url).unwrap_or_else(|| panic!("the {what} URL {url:?} cannot be read"));
    let connect = tokio::net::TcpStream::connect((host.as_str(), port));
    match tokio::time::timeout(REQUEST, connect).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("{what} at {host}:{port} is not reachable ({e}); {how}"),
        Err(_) => panic!("{what} at {host}:{port} did not answer within {REQUEST:?}; {how}"),
    }
}

/// The workspace package whose binary `service` runs.
fn package_of(deployment: &Deployment, service: &Service) -> String {
    let program = service.program().unwrap_or_default();
    deployment
        .workspace
        .iter()
        .find(|(_, p)| p.bins.contains(program))
        .map(|(package, _)| package.clone())
        .unwrap_or_else(|| {
            panic!(
                "services.{}: {program} is not a binary of any workspace package",
                service.name
            )
        })
}

/// `GET url`: status and body, or why there was none.
pub async fn get(
    client: &Client<HttpConnector, Empty<Bytes>>,
    url: &str,
) -> Result<(u16, String), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let exchange = async {
        let response = client.get(uri).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(REQUEST, exchange)
        .await
        .map_err(|_| format!("no answer within {REQUEST:?}"))?
}

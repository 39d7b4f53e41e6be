//! The processes a fault scenario starts, stops and kills: wx-gateway and wx-worker as child
//! processes (so SIGKILL is real), and a Redis and a RabbitMQ node of the test's own on other
//! ports (the shared ones on 6379/5672 are never touched).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long a process may take to start or stop.
const START: Duration = Duration::from_secs(60);

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// The directory holding `wx-gateway`, `wx-worker` and `wxgate` for this test's profile,
/// built from the current sources.
///
/// `cargo test -p wxgate-tests` does not build other packages' binaries, so when one is
/// missing or older than a source file, `cargo build` runs once per test binary.
pub fn bin_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = workspace();
            let sources: Vec<PathBuf> = [
                "gateway",
                "worker",
                "cli",
                "core",
                "wechat",
                "proto",
                "serve",
                "sim",
                "Cargo.toml",
                "Cargo.lock",
            ]
            .iter()
            .map(|p| root.join(p))
            .collect();
            wxgate_tests::built_binaries(
                &["wx-gateway", "wx-worker", "wxgate"],
                &["wx-gateway", "wx-worker", "wxgate"],
                &sources,
            )
        })
        .clone()
}

/// A local TCP port nobody listens on now, below the ephemeral range (32768 and up on
/// Linux), so an outgoing connection cannot be holding it when a child binds it later.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = rand::random_range(20_000_u16..32_000);
        // 25672 is the shared broker's distribution port.
        if port == 25_672 {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free local port in 20000..32000");
}

/// Waits until something accepts TCP connections on `port`.
pub async fn wait_listening(port: u16, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} is not listening on 127.0.0.1:{port} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends SIGTERM to a child (a graceful stop).
pub fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
}

/// Waits for a child to exit, at most [`START`]; kills it when it takes longer.
pub async fn reap(child: &mut Child, what: &str) {
    if tokio::time::timeout(START, child.wait()).await.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
        panic!("{what} did not exit within {START:?}");
    }
}

/// A `redis-server` child with an append-only file in a directory of its own, fsynced once a
/// second (`appendfsync everysec`, Redis's default and the usual production setting).
pub struct OwnRedis {
    /// Its port.
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnRedis {
    /// Starts one on a free port and waits until it answers.
    pub async fn start() -> OwnRedis {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("wxgate-faults-redis-{port}"));
        std::fs::create_dir_all(&dir).expect("a directory for the test's Redis");
        let mut redis = OwnRedis {
            port,
            dir,
            child: None,
        };
        redis.resume().await;
        redis
    }

    /// `redis://127.0.0.1:{port}/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server again on the same port and data.
    pub async fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts (is it installed?)");
        self.child = Some(child);
        wait_listening(self.port, START, "the test's Redis").await;
    }

    /// Stops the server (SIGTERM: it writes its append-only file and exits).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&child);
            reap(&mut child, "the test's Redis").await;
        }
    }

    /// Kills the server with SIGKILL, as a crash would: what it had not yet written to its
    /// append-only file is gone; what it had written survives (the kernel still holds it).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().expect("SIGKILL to the test's Redis");
            reap(&mut child, "the test's Redis").await;
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A second RabbitMQ node, `{name}@localhost`, with no plugins, listening on 127.0.0.1 only.
pub struct OwnRabbit {
    /// Its AMQP port.
    pub port: u16,
    dist_port: u16,
    node: String,
    dir: PathBuf,
    running: bool,
}

impl OwnRabbit {
    /// Starts a node and waits until it is booted.
    pub async fn start() -> OwnRabbit {
        let port = free_port();
        let mut dist_port = free_port();
        while dist_port == port {
            dist_port = free_port();
        }
        let name = format!("wxgatefaults{port}");
        let dir = std::env::temp_dir().join(format!("wxgate-faults-rabbit-{port}"));
        std::fs::create_dir_all(&dir).expect("a directory for the test's RabbitMQ");
        // The packaged scripts run the node as the `rabbitmq` user when started by root.
        allow_everyone(&dir);
        // An empty config file replaces the system one, which names the shared listener.
        std::fs::write(dir.join("rabbitmq.conf"), "").expect("the node's config file");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("the node's plugin file");
        allow_everyone(&dir.join("rabbitmq.conf"));
        allow_everyone(&dir.join("enabled_plugins"));
        let mut rabbit = OwnRabbit {
            port,
            dist_port,
            node: format!("{name}@localhost"),
            dir,
            running: false,
        };
        rabbit.resume().await;
        rabbit
    }

    /// `amqp://guest:guest@127.0.0.1:{port}/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Starts the node again (same data directory, so durable queues and persistent
    /// messages are back).
    pub async fn resume(&mut self) {
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_PID_FILE", self.dir.join("pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .expect("rabbitmq-server starts (is it installed?)");
        assert!(
            status.success(),
            "rabbitmq-server -detached failed: {status}"
        );
        self.running = true;
        // `await_startup` fails at once while the node has not registered with epmd yet.
        let deadline = Instant::now() + START;
        loop {
            let up = Command::new("rabbitmqctl")
                .args(["-q", "-n", &self.node, "await_startup", "--timeout", "60"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .is_ok_and(|s| s.success());
            if up {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the test's RabbitMQ node {} did not boot within {START:?}; see {}",
                self.node,
                self.dir.join("log").display()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        wait_listening(self.port, START, "the test's RabbitMQ").await;
    }

    /// Stops the node and waits until its process is gone.
    pub async fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        let pid_file = self.dir.join("pid");
        let _ = tokio::time::timeout(
            START,
            Command::new("rabbitmqctl")
                .args(["-q", "-n", &self.node, "stop"])
                .arg(&pid_file)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status(),
        )
        .await;
    }
}

impl Drop for OwnRabbit {
    fn drop(&mut self) {
        if self.running {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["-q", "-n", &self.node, "stop"])
                .arg(self.dir.join("pid"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn allow_everyone(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = if path.is_dir() { 0o777 } else { 0o666 };
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

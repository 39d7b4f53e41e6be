//! A `wxgate dev` per test (in this process, on ports the OS picks) and the `wxgate` binary
//! run against it as a user would: `WXGATE_API`, `WXGATE_API_KEY`, and for `sim push` the
//! config file with the gateway's address.

// Test helpers: a panic with a message is how they fail a test.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use tokio::process::Command;
use wxgate::dev::{DEV_API_KEY, Dev, DevArgs};
use wxgate::sim::{DEV_CONFIG, http_base, load_config};
use wxgate_tests::Namespace;

/// How long one `wxgate` command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// The user the simulator pushes as.
pub const USER: &str = "oDEMOuser0000000000000000000";

/// A running `wxgate dev` and a temporary directory with its config.
pub struct DevEnv {
    pub dev: Option<Dev>,
    pub dir: PathBuf,
    pub config: PathBuf,
    /// Set on the real services: their queues and keys go when it drops.
    pub namespace: Option<Namespace>,
}

/// The built-in dev config on ports the OS picks, under namespace `ns`.
fn config_text(ns: &str) -> String {
    DEV_CONFIG
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9091", "127.0.0.1:0")
        .replace("127.0.0.1:50051", "127.0.0.1:0")
        .replace("http://127.0.0.1:9099", "http://127.0.0.1:0")
        .replace("namespace = \"wxdev\"", &format!("namespace = \"{ns}\""))
}

impl DevEnv {
    /// `wxgate dev` on the in-memory bus and store.
    pub async fn start() -> DevEnv {
        Self::start_with(false).await
    }

    /// `wxgate dev --redis … --amqp …` on the machine's Redis and RabbitMQ, in a random
    /// namespace removed afterwards.
    pub async fn start_real() -> DevEnv {
        Self::start_with(true).await
    }

    async fn start_with(real: bool) -> DevEnv {
        let namespace = real.then(|| Namespace::random(3));
        let ns = namespace
            .as_ref()
            .map_or_else(|| "wxdev".to_owned(), |n| n.ns.clone());
        let dir = std::env::temp_dir().join(format!(
            "wxgate-cli-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("dev.toml");
        std::fs::write(&config, config_text(&ns)).unwrap();
        let args = DevArgs {
            config: Some(config.clone()),
            redis: real.then(wxgate_tests::redis_url),
            amqp: real.then(wxgate_tests::rabbitmq_url),
            no_sim: false,
        };
        let dev = wxgate::dev::start_with(load_config(Some(&config)).unwrap(), &args)
            .await
            .unwrap_or_else(|e| panic!("wxgate dev did not start: {e}"));
        let env = DevEnv {
            dev: Some(dev),
            dir,
            config,
            namespace,
        };
        env.wait_ready().await;
        env
    }

    pub fn dev(&self) -> &Dev {
        self.dev.as_ref().unwrap()
    }

    pub fn sim(&self) -> &wxgate_sim::Sim {
        self.dev().sim.as_ref().unwrap()
    }

    /// The gateway's callback prefix.
    pub fn gateway(&self) -> String {
        format!(
            "{}{}",
            http_base(self.dev().gateway_addr),
            self.dev().config.gateway.path_prefix
        )
    }

    /// The gRPC API's address.
    pub fn api(&self) -> String {
        http_base(self.dev().api_addr)
    }

    async fn wait_ready(&self) {
        let url = format!("{}/readyz", http_base(self.dev().worker_http_addr));
        let gateway = format!("{}/readyz", http_base(self.dev().gateway_addr));
        wxgate_tests::eventually(Duration::from_secs(30), "wxgate dev ready", || {
            let (url, gateway) = (url.clone(), gateway.clone());
            async move {
                for url in [url, gateway] {
                    let client = wx_worker::WechatClient::new("", Duration::from_secs(2)).unwrap();
                    client
                        .download(&url, 1 << 20)
                        .await
                        .map_err(|e| format!("{url}: {e}"))?;
                }
                Ok::<_, String>(())
            }
        })
        .await;
    }

    /// `wxgate ARGS` as a user who exported the API address and key.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wxgate"));
        command
            .args(args)
            .env("WXGATE_API", self.api())
            .env("WXGATE_API_KEY", DEV_API_KEY)
            .env("WXGATE__WECHAT__API_BASE", self.sim().base_url())
            .env_remove("RUST_LOG")
            .kill_on_drop(true);
        command
    }

    /// Runs `wxgate ARGS` to its end (bounded).
    pub async fn run(&self, args: &[&str]) -> Output {
        run(self.command(args)).await
    }

    /// Runs `wxgate ARGS`, expects exit status 0, returns stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args).await;
        assert!(
            output.status.success(),
            "wxgate {args:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// `wxgate sim push ACCOUNT WHAT…` against this dev.
    pub async fn push(&self, account: &str, what: &[&str]) -> String {
        let config = self.config.display().to_string();
        let gateway = self.gateway();
        let mut args = vec![
            "sim",
            "push",
            "--config",
            &config,
            "--gateway",
            &gateway,
            account,
        ];
        args.extend_from_slice(what);
        self.ok(&args).await
    }

    /// The number of calls the simulator logged to `path`.
    pub fn calls(&self, path: &str) -> usize {
        self.sim().calls_to(path).len()
    }

    /// Waits for the simulator to have logged `n` calls to `path`.
    pub async fn wait_calls(&self, path: &str, n: usize) -> Vec<wxgate_sim::Call> {
        wxgate_tests::eventually(Duration::from_secs(20), path, || async move {
            let calls = self.sim().calls_to(path);
            if calls.len() >= n {
                Ok(calls)
            } else {
                Err(format!("{} calls", calls.len()))
            }
        })
        .await
    }
}

impl Drop for DevEnv {
    fn drop(&mut self) {
        if let Some(dev) = self.dev.take() {
            wxgate_tests::on_own_runtime(async move {
                let _ = tokio::time::timeout(Duration::from_secs(30), dev.stop()).await;
            });
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `command` to its end; fails the test if it runs longer than [`COMMAND_LIMIT`].
pub async fn run(mut command: Command) -> Output {
    tokio::time::timeout(COMMAND_LIMIT, command.output())
        .await
        .expect("wxgate took too long")
        .expect("wxgate runs")
}

/// `wxgate ARGS` with no API configured (the environment's WXGATE_* removed).
pub fn bare(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wxgate"));
    command
        .args(args)
        .env_remove("WXGATE_API")
        .env_remove("WXGATE_API_KEY")
        .kill_on_drop(true);
    command
}

//! Clusters of a test's own on this machine — a three-node RabbitMQ cluster
//! ([`RabbitCluster`]), a six-node Redis Cluster ([`RedisCluster`]), a Redis Sentinel set
//! ([`SentinelSet`]) — started, faulted and stopped through `scripts/testbed.sh`, on free
//! ports, never touching the shared Redis (6379) and RabbitMQ (5672).
//!
//! Each value owns its bed: dropping it (also when the test panics) runs `testbed.sh down`,
//! which stops every process the bed started and removes its directory. A test killed with
//! SIGKILL leaves the bed running; `scripts/testbed.sh down KIND DIR` removes it by hand.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::Command;

/// The longest an `up` may take, beyond the script's own deadlines (a RabbitMQ node may take
/// 90 s to boot on a loaded machine, and the cluster a minute to form).
const UP_LIMIT: Duration = Duration::from_secs(420);

/// The longest any other operation may take, beyond the script's own deadlines.
const OPERATION_LIMIT: Duration = Duration::from_secs(240);

/// How many lines of the script's stderr an error quotes.
const STDERR_TAIL_LINES: usize = 40;

/// What went wrong running `scripts/testbed.sh`.
#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    /// The script could not be started (missing, not executable, no `bash`).
    #[error("could not run {script} {command}")]
    Spawn {
        /// The script's path.
        script: String,
        /// The operation and its arguments.
        command: String,
        /// Why it could not start.
        #[source]
        source: std::io::Error,
    },
    /// The script ran and failed; `stderr` ends with its error message, which names what it
    /// waited for or what was missing (and, for a failed `up`, the tails of the nodes' logs).
    #[error("testbed.sh {command} failed ({status}); its stderr ends with:\n{stderr}")]
    Failed {
        /// The operation and its arguments.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// The last lines of its stderr.
        stderr: String,
    },
    /// The script did not finish within the wrapper's limit (it was killed).
    #[error("testbed.sh {command} did not finish within {limit:?}")]
    Timeout {
        /// The operation and its arguments.
        command: String,
        /// The limit it passed.
        limit: Duration,
    },
    /// The script succeeded but did not print a `KEY=value` line the wrapper needs, or
    /// printed a value it cannot read.
    #[error("testbed.sh {command} printed no usable {key} (output: {output:?})")]
    Output {
        /// The operation and its arguments.
        command: String,
        /// The key missing or unreadable.
        key: &'static str,
        /// Everything it printed on stdout.
        output: String,
    },
}

/// What `testbed.sh status` says runs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The nodes running now: RabbitMQ node indexes, or Redis ports, as decimal strings.
    pub running: Vec<String>,
    /// The operating-system processes of the bed that are alive (not zombies).
    pub pids: Vec<u32>,
    /// The Redis masters now (ports): those holding slots, or the sentinels' master. Empty for
    /// RabbitMQ.
    pub master_ports: Vec<u16>,
}

/// One bed: its kind, its directory, and whether `down` is still owed.
#[derive(Debug)]
struct Bed {
    kind: &'static str,
    dir: PathBuf,
    up: bool,
}

/// The `KEY=value` lines of one run of the script.
#[derive(Debug)]
struct Printed {
    command: String,
    stdout: String,
    values: HashMap<String, String>,
}

impl Printed {
    fn get(&self, key: &'static str) -> Result<&str, TestbedError> {
        self.values
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| self.unusable(key))
    }

    fn list(&self, key: &'static str) -> Result<Vec<String>, TestbedError> {
        let value = self.get(key)?;
        Ok(value
            .split(',')
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect())
    }

    fn numbers<T: std::str::FromStr>(&self, key: &'static str) -> Result<Vec<T>, TestbedError> {
        self.list(key)?
            .iter()
            .map(|item| item.parse().map_err(|_| self.unusable(key)))
            .collect()
    }

    fn unusable(&self, key: &'static str) -> TestbedError {
        TestbedError::Output {
            command: self.command.clone(),
            key,
            output: self.stdout.clone(),
        }
    }
}

/// `scripts/testbed.sh` in this workspace.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|root| root.join("scripts").join("testbed.sh"))
        .unwrap_or_else(|| PathBuf::from("scripts/testbed.sh"))
}

impl Bed {
    /// Starts a bed of `kind` in a new directory under the system's temporary directory.
    async fn up(kind: &'static str) -> Result<(Bed, Printed), TestbedError> {
        let dir = std::env::temp_dir().join(format!(
            "wxgate-testbed-{kind}-{:016x}",
            rand::random::<u64>()
        ));
        // Owned before the script runs, so a failed or timed-out `up` is still cleaned up.
        let mut bed = Bed {
            kind,
            dir,
            up: true,
        };
        let printed = bed.run("up", &[], UP_LIMIT).await;
        match printed {
            Ok(printed) => Ok((bed, printed)),
            Err(e) => {
                bed.down_now();
                Err(e)
            }
        }
    }

    /// Runs `testbed.sh OPERATION KIND DIR ARGS…` and collects its `KEY=value` lines.
    async fn run(
        &self,
        operation: &str,
        args: &[String],
        limit: Duration,
    ) -> Result<Printed, TestbedError> {
        let script = script();
        let command = std::iter::once(operation.to_owned())
            .chain([self.kind.to_owned(), self.dir.display().to_string()])
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        let child = Command::new(&script)
            .arg(operation)
            .arg(self.kind)
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| TestbedError::Spawn {
                script: script.display().to_string(),
                command: command.clone(),
                source,
            })?;
        let output = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .map_err(|_| TestbedError::Timeout {
                command: command.clone(),
                limit,
            })?
            .map_err(|source| TestbedError::Spawn {
                script: script.display().to_string(),
                command: command.clone(),
                source,
            })?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            let lines: Vec<&str> = stderr.lines().collect();
            let tail = lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n");
            return Err(TestbedError::Failed {
                command,
                status: output.status,
                stderr: tail,
            });
        }
        // Through the test harness, which shows it only for a failing test or --nocapture.
        eprint!("{stderr}");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let values = stdout
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect();
        Ok(Printed {
            command,
            stdout,
            values,
        })
    }

    /// `testbed.sh {op} {kind} {dir} {node}`: an operation on one node (an index or a port)
    /// that prints nothing the caller needs.
    async fn node_op(&self, op: &str, node: impl ToString) -> Result<(), TestbedError> {
        self.run(op, &[node.to_string()], OPERATION_LIMIT)
            .await
            .map(|_| ())
    }

    async fn status(&self) -> Result<Status, TestbedError> {
        let printed = self.run("status", &[], OPERATION_LIMIT).await?;
        Ok(Status {
            running: printed.list("RUNNING")?,
            pids: printed.numbers("PIDS")?,
            master_ports: if self.kind == "rabbit" {
                Vec::new()
            } else {
                printed.numbers("MASTER_PORTS")?
            },
        })
    }

    async fn down(mut self) -> Result<(), TestbedError> {
        self.up = false;
        self.run("down", &[], OPERATION_LIMIT).await.map(|_| ())
    }

    /// `testbed.sh down`, blocking: for `Drop` and a failed `up`, which cannot await. The
    /// script bounds every wait of its own, so this ends.
    fn down_now(&mut self) {
        if !std::mem::replace(&mut self.up, false) {
            return;
        }
        let stopped = std::process::Command::new(script())
            .arg("down")
            .arg(self.kind)
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status();
        if !stopped.is_ok_and(|status| status.success()) {
            eprintln!(
                "testbed: `scripts/testbed.sh down {} {}` failed; processes may be left",
                self.kind,
                self.dir.display()
            );
        }
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.down_now();
    }
}

/// A three-node RabbitMQ cluster of the test's own (nodes `wxgatetb…n0..n2@localhost`, no
/// plugins, user guest/guest, listening on 127.0.0.1 only). Stopped and removed on drop.
#[derive(Debug)]
pub struct RabbitCluster {
    bed: Bed,
    amqp_urls: Vec<String>,
    node_names: Vec<String>,
    ports: Vec<u16>,
}

impl RabbitCluster {
    /// Starts three nodes, joins them into one cluster and returns once `cluster_status`
    /// shows three running nodes (about 20–40 s here, see bench/README.md). On error
    /// nothing is left running.
    pub async fn up() -> Result<RabbitCluster, TestbedError> {
        let (bed, printed) = Bed::up("rabbit").await?;
        Ok(RabbitCluster {
            amqp_urls: printed.list("AMQP_URLS")?,
            node_names: printed.list("RABBIT_NODES")?,
            ports: printed.numbers("RABBIT_PORTS")?,
            bed,
        })
    }

    /// `amqp://guest:guest@127.0.0.1:{port}/%2f` of each node, in node-index order.
    pub fn amqp_urls(&self) -> &[String] {
        &self.amqp_urls
    }

    /// The Erlang node names (`…@localhost`), in node-index order, for `rabbitmqctl -n`.
    pub fn node_names(&self) -> &[String] {
        &self.node_names
    }

    /// The AMQP port of each node, in node-index order.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Stops node `index` (0, 1 or 2) gracefully and returns once its process is gone. Its
    /// clients' connections are closed by the node.
    pub async fn stop_node(&self, index: usize) -> Result<(), TestbedError> {
        self.bed.node_op("stop-node", index).await
    }

    /// SIGKILLs node `index` (a crash: no goodbye to clients or peers) and returns once its
    /// process is gone.
    pub async fn kill_node(&self, index: usize) -> Result<(), TestbedError> {
        self.bed.node_op("kill-node", index).await
    }

    /// The index of the node leading quorum queue `queue` in vhost `/`, as the first
    /// running node's `list_queues` says now (a leader that has just died may still be
    /// named until the others elect a new one).
    pub async fn queue_leader(&self, queue: &str) -> Result<usize, TestbedError> {
        let printed = self
            .bed
            .run("queue-leader", &[queue.to_owned()], OPERATION_LIMIT)
            .await?;
        match printed.numbers("LEADER")?.as_slice() {
            [index] => Ok(*index),
            _ => Err(printed.unusable("LEADER")),
        }
    }

    /// Starts node `index` again on its data and returns once it has booted and the
    /// cluster lists it running along with the other nodes that run.
    pub async fn start_node(&self, index: usize) -> Result<(), TestbedError> {
        self.bed.node_op("start-node", index).await
    }

    /// Which nodes run now (indexes) and their processes.
    pub async fn status(&self) -> Result<Status, TestbedError> {
        self.bed.status().await
    }

    /// The bed's directory (data, logs, pid files); gone after [`RabbitCluster::down`].
    pub fn dir(&self) -> &Path {
        &self.bed.dir
    }

    /// Stops every node and removes the directory, reporting failure (dropping does the
    /// same, but can only print it).
    pub async fn down(self) -> Result<(), TestbedError> {
        self.bed.down().await
    }
}

/// A Redis Cluster of the test's own: six nodes, three masters with one replica each,
/// append-only files on, `cluster-node-timeout` 1000 ms, announcing 127.0.0.1. Stopped and
/// removed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    bed: Bed,
    urls: Vec<String>,
    ports: Vec<u16>,
}

impl RedisCluster {
    /// Starts six nodes, creates the cluster and returns once every node says
    /// `cluster_state:ok` with all slots served and every replica is in sync. On error
    /// nothing is left running.
    pub async fn up() -> Result<RedisCluster, TestbedError> {
        let (bed, printed) = Bed::up("redis-cluster").await?;
        Ok(RedisCluster {
            urls: printed.list("REDIS_CLUSTER_URLS")?,
            ports: printed.numbers("REDIS_CLUSTER_PORTS")?,
            bed,
        })
    }

    /// `redis://127.0.0.1:{port}` of every node (masters and replicas), the seed list a
    /// cluster client needs.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The port of every node.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// SIGKILLs a master holding slots — the one on `port` when given (an error if it is
    /// not such a master), else any — and returns its port. Call
    /// [`RedisCluster::wait_failover`] next.
    pub async fn kill_master(&self, port: Option<u16>) -> Result<u16, TestbedError> {
        let args: Vec<String> = port.iter().map(u16::to_string).collect();
        let printed = self.bed.run("kill-master", &args, OPERATION_LIMIT).await?;
        single(&printed, "KILLED_PORT")
    }

    /// Waits until the killed master's replica has taken over its slots: every live node says
    /// `cluster_state:ok`, all slots are served, every master holding slots answers.
    /// Returns the masters' ports.
    pub async fn wait_failover(&self) -> Result<Vec<u16>, TestbedError> {
        let printed = self.bed.run("wait-failover", &[], OPERATION_LIMIT).await?;
        printed.numbers("MASTER_PORTS")
    }

    /// Stops the node on `port` (SIGTERM: it writes its append-only file) and waits until its
    /// process is gone.
    pub async fn stop_node(&self, port: u16) -> Result<(), TestbedError> {
        self.bed.node_op("stop-node", port).await
    }

    /// SIGKILLs the node on `port`, master or replica, and returns once its process is gone.
    pub async fn kill_node(&self, port: u16) -> Result<(), TestbedError> {
        self.bed.node_op("kill-node", port).await
    }

    /// Starts the node on `port` again on its data and returns once it says
    /// `cluster_state:ok`; a former master is then a replica, in sync, of the node that took
    /// over.
    pub async fn start_node(&self, port: u16) -> Result<(), TestbedError> {
        self.bed.node_op("start-node", port).await
    }

    /// Which nodes run now (ports), their processes, and the masters holding slots.
    pub async fn status(&self) -> Result<Status, TestbedError> {
        self.bed.status().await
    }

    /// The bed's directory (data, logs, pid files); gone after [`RedisCluster::down`].
    pub fn dir(&self) -> &Path {
        &self.bed.dir
    }

    /// Stops every node and removes the directory, reporting failure.
    pub async fn down(self) -> Result<(), TestbedError> {
        self.bed.down().await
    }
}

/// A Redis Sentinel set of the test's own: one master, one replica, three sentinels
/// watching master name [`SentinelSet::master_name`] with quorum 2,
/// `down-after-milliseconds` 1000 and `failover-timeout` 5000. Stopped and removed on drop.
#[derive(Debug)]
pub struct SentinelSet {
    bed: Bed,
    sentinel_urls: Vec<String>,
    master_name: String,
    sentinel_ports: Vec<u16>,
    redis_ports: Vec<u16>,
}

impl SentinelSet {
    /// Starts the master, the replica and the sentinels and returns once the replica is in
    /// sync and every sentinel knows the master, the replica and the two other sentinels.
    /// On error nothing is left running.
    pub async fn up() -> Result<SentinelSet, TestbedError> {
        let (bed, printed) = Bed::up("sentinel").await?;
        Ok(SentinelSet {
            sentinel_urls: printed.list("SENTINEL_URLS")?,
            master_name: printed.get("SENTINEL_MASTER")?.to_owned(),
            sentinel_ports: printed.numbers("SENTINEL_PORTS")?,
            redis_ports: printed.numbers("REDIS_PORTS")?,
            bed,
        })
    }

    /// `redis://127.0.0.1:{port}` of each sentinel.
    pub fn sentinel_urls(&self) -> &[String] {
        &self.sentinel_urls
    }

    /// The master name the sentinels watch (`wxgate`).
    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// The sentinels' ports.
    pub fn sentinel_ports(&self) -> &[u16] {
        &self.sentinel_ports
    }

    /// The data nodes' ports: the master at `up` first, then the replica.
    pub fn redis_ports(&self) -> &[u16] {
        &self.redis_ports
    }

    /// SIGKILLs the node the sentinels name master now and returns its port. Call
    /// [`SentinelSet::wait_failover`] next.
    pub async fn kill_master(&self) -> Result<u16, TestbedError> {
        let printed = self.bed.run("kill-master", &[], OPERATION_LIMIT).await?;
        single(&printed, "KILLED_PORT")
    }

    /// Waits until every running sentinel names the same new master and that node says it is
    /// a master; returns its port.
    pub async fn wait_failover(&self) -> Result<u16, TestbedError> {
        let printed = self.bed.run("wait-failover", &[], OPERATION_LIMIT).await?;
        single(&printed, "MASTER_PORTS")
    }

    /// Stops the data node or sentinel on `port` (SIGTERM) and waits until its process is
    /// gone.
    pub async fn stop_node(&self, port: u16) -> Result<(), TestbedError> {
        self.bed.node_op("stop-node", port).await
    }

    /// SIGKILLs the data node or sentinel on `port` and returns once its process is gone.
    pub async fn kill_node(&self, port: u16) -> Result<(), TestbedError> {
        self.bed.node_op("kill-node", port).await
    }

    /// Starts the node on `port` again and returns once it answers PING; a former master
    /// only once the sentinels have made it a replica of the new master, in sync (about ten
    /// seconds: until then it is a master of its own, and writes to it would be lost).
    pub async fn start_node(&self, port: u16) -> Result<(), TestbedError> {
        self.bed.node_op("start-node", port).await
    }

    /// Which nodes run now (ports), their processes, and the sentinels' master.
    pub async fn status(&self) -> Result<Status, TestbedError> {
        self.bed.status().await
    }

    /// The bed's directory (data, logs, pid files); gone after [`SentinelSet::down`].
    pub fn dir(&self) -> &Path {
        &self.bed.dir
    }

    /// Stops every node and sentinel and removes the directory, reporting failure.
    pub async fn down(self) -> Result<(), TestbedError> {
        self.bed.down().await
    }
}

/// The one port in `key`.
fn single(printed: &Printed, key: &'static str) -> Result<u16, TestbedError> {
    match printed.numbers(key)?.as_slice() {
        [port] => Ok(*port),
        _ => Err(printed.unusable(key)),
    }
}

//! Helpers shared by the load generators: duration arguments and per-process CPU and memory
//! from `/proc`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;

/// Parses `500ms`, `10s`, `2m`, `1h`, `1.5s`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration `{text}` (examples: 500ms, 10s, 2m)"))?;
    Duration::try_from_secs_f64(value * scale)
        .map_err(|e| format!("invalid duration `{text}`: {e}"))
}

/// CPU time of a process in µs (utime + stime of all its threads), from `/proc/{pid}/stat`.
pub fn process_cpu_us(pid: &str, ticks_per_second: u64) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // `comm` (field 2) may hold spaces and parentheses; the fields after its last `)` start
    // with `state` (field 3), so utime (14) and stime (15) are at indexes 11 and 12.
    let after_comm = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let parse = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index)
            .context("short /proc stat")?
            .parse::<u64>()
            .context("malformed /proc stat field")
    };
    let ticks = parse(11)? + parse(12)?;
    Ok(ticks.saturating_mul(1_000_000) / ticks_per_second.max(1))
}

/// A `kB` line of `/proc/{pid}/status` (`VmRSS:`, `VmHWM:`), in KiB.
pub fn status_kib(pid: &str, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .with_context(|| format!("no {field} line in /proc/{pid}/status"))?;
    line.trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("malformed {field} in /proc/{pid}/status"))
}

/// `USER_HZ`, the unit of `/proc/*/stat` CPU times (100 on every common Linux build).
pub fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|&hz| hz > 0)
        .unwrap_or(100)
}

/// Parses a `--watch NAME=PID` argument: a process to report CPU time (and memory) for.
pub fn parse_watch(text: &str) -> Result<(String, u32), String> {
    let (name, pid) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}`: expected NAME=PID"))?;
    let pid = pid
        .parse::<u32>()
        .ok()
        .filter(|&pid| pid > 0)
        .ok_or_else(|| format!("`{text}`: the PID must be a positive number"))?;
    if name.is_empty() {
        return Err(format!("`{text}`: the name must not be empty"));
    }
    Ok((name.to_owned(), pid))
}

/// CPU time (µs) of each watched process, by name.
#[derive(Debug, Clone)]
pub struct CpuSample(pub BTreeMap<String, u64>);

impl CpuSample {
    /// The CPU time (µs) each process used since `before`, by name.
    pub fn since(&self, before: &CpuSample) -> BTreeMap<String, u64> {
        self.0
            .iter()
            .map(|(name, &after)| {
                let earlier = before.0.get(name).copied().unwrap_or(0);
                (name.clone(), after.saturating_sub(earlier))
            })
            .collect()
    }
}

/// The processes whose CPU time and memory a benchmark reports.
#[derive(Debug, Clone)]
pub struct Watched {
    /// Name and `/proc` entry (`self` for the benchmark's own process).
    pub pids: Vec<(String, String)>,
    /// `USER_HZ`, from [`ticks_per_second`].
    pub ticks_per_second: u64,
}

impl Watched {
    /// The benchmark itself as `own_name`, then each `NAME=PID` of `others`; fails naming
    /// a duplicate name, so no two rows of a report are summed into one.
    pub fn new(own_name: &str, others: &[(String, u32)]) -> anyhow::Result<Self> {
        let mut watched = Self {
            pids: vec![(own_name.to_owned(), "self".to_owned())],
            ticks_per_second: ticks_per_second(),
        };
        for (name, pid) in others {
            watched = watched.with(name, *pid)?;
        }
        Ok(watched)
    }

    /// Adds a process unless `pid` is 0; fails naming a name already in use.
    pub fn with(mut self, name: &str, pid: u32) -> anyhow::Result<Self> {
        if self.pids.iter().any(|(seen, _)| seen == name) {
            anyhow::bail!("--watch {name}={pid}: the name `{name}` is already in use");
        }
        if pid > 0 {
            self.pids.push((name.to_owned(), pid.to_string()));
        }
        Ok(self)
    }

    /// The CPU time of every watched process now; fails if one has exited.
    pub fn cpu(&self) -> anyhow::Result<CpuSample> {
        let mut sample = BTreeMap::new();
        for (name, pid) in &self.pids {
            sample.insert(name.clone(), process_cpu_us(pid, self.ticks_per_second)?);
        }
        Ok(CpuSample(sample))
    }

    /// `VmRSS` and `VmHWM` (peak) in KiB of the watched processes other than this one.
    pub fn memory(&self) -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
        let mut memory = BTreeMap::new();
        for (name, pid) in &self.pids {
            if pid != "self" {
                memory.insert(
                    name.clone(),
                    (status_kib(pid, "VmRSS:")?, status_kib(pid, "VmHWM:")?),
                );
            }
        }
        Ok(memory)
    }
}

/// The nearest-rank percentile (`fraction` in 0..=1) of samples sorted ascending; the
/// default (0) for none.
pub fn nearest_rank<T: Copy + Default>(sorted: &[T], fraction: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    // Sample counts stay far below 2^52 and the rank is clamped to the slice.
    let rank = ((fraction * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The simulator's view of configured `account`, pushing as original id `original_id`. The
/// 43-character key is re-encoded: the first 42 characters are the same, the last may differ
/// only in bits WeChat ignores.
pub fn push_account(
    account: &wxgate_core::config::Account,
    original_id: String,
) -> wxgate_sim::PushAccount {
    use base64::Engine as _;
    use wxgate_core::config::Mode;
    use wxgate_sim::PushMode;
    wxgate_sim::PushAccount {
        id: account.id.as_str().to_owned(),
        appid: account.appid.clone(),
        token: account.token.expose().to_owned(),
        encoding_aes_key: account
            .aes_key
            .as_ref()
            .map(|key| base64::engine::general_purpose::STANDARD_NO_PAD.encode(key.as_bytes())),
        mode: match account.mode {
            Mode::Plain => PushMode::Plain,
            Mode::Compat => PushMode::Compat,
            Mode::Safe => PushMode::Safe,
        },
        original_id,
    }
}

/// `http://{listen}{path_prefix}` of the gateway of `config`, an unspecified listen address
/// as loopback.
pub fn gateway_base(config: &wxgate_core::config::Config) -> String {
    let listen = config.gateway.listen;
    let ip = if listen.ip().is_unspecified() {
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
    } else {
        listen.ip()
    };
    format!(
        "http://{}{}",
        std::net::SocketAddr::new(ip, listen.port()),
        config.gateway.path_prefix.trim_end_matches('/')
    )
}

/// `message` as a gRPC request carrying `key` as `authorization: Bearer {key}`. A key that is
/// not valid metadata is left out, so the call fails with `UNAUTHENTICATED`.
pub fn authed<T>(key: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {key}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Ready messages and consumers of `queue` (a passive declare on a channel of its own, closed
/// again).
pub async fn queue_depth(amqp: &lapin::Connection, queue: &str) -> anyhow::Result<(u32, u32)> {
    let channel = amqp.create_channel().await?;
    let declared = channel
        .queue_declare(
            lapin::types::ShortString::from(queue),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..lapin::options::QueueDeclareOptions::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await;
    channel
        .close(200, lapin::types::ShortString::from("looked"))
        .await
        .ok();
    let declared = declared.with_context(|| format!("queue {queue}"))?;
    Ok((declared.message_count(), declared.consumer_count()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn this_process_has_cpu_time_and_rss() {
        let pid = std::process::id().to_string();
        assert!(process_cpu_us(&pid, ticks_per_second()).is_ok());
        assert!(status_kib(&pid, "VmRSS:").unwrap() > 0);
        assert!(status_kib(&pid, "NoSuchField:").is_err());
    }

    #[test]
    fn watch_arguments_and_duplicate_names_are_refused() {
        assert_eq!(parse_watch("redis=42"), Ok(("redis".to_owned(), 42)));
        assert!(parse_watch("redis").is_err());
        assert!(parse_watch("redis=0").is_err());
        assert!(parse_watch("=42").is_err());
        let twice = [("redis".to_owned(), 1), ("redis".to_owned(), 2)];
        assert!(Watched::new("e2e", &twice).is_err());
        assert!(Watched::new("e2e", &[("e2e".to_owned(), 1)]).is_err());
        let watched = Watched::new("e2e", &[])
            .unwrap()
            .with("gateway", 0)
            .unwrap();
        assert!(watched.clone().with("e2e", 7).is_err());
        assert_eq!(watched.pids.len(), 1);
        let before = watched.cpu().unwrap();
        assert!(before.0.contains_key("e2e"));
        let used = watched.cpu().unwrap().since(&before);
        assert_eq!(used.keys().collect::<Vec<_>>(), ["e2e"]);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&samples, 0.5), 50);
        assert_eq!(nearest_rank(&samples, 0.99), 99);
        assert_eq!(nearest_rank(&samples, 1.0), 100);
        assert_eq!(nearest_rank(&samples, 0.0), 1);
        assert_eq!(nearest_rank::<u32>(&[], 0.5), 0);
    }
}

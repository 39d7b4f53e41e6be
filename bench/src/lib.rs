//! Helpers shared by the load generators: duration arguments and per-process CPU and memory
//! from `/proc`.

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
}

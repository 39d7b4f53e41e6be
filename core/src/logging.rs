//! How every wxgate binary writes its log: `tracing` to stdout, filtered by `RUST_LOG`
//! (default `info`), as text or as one JSON object a line when `WXGATE_LOG_FORMAT=json`.

use std::io::IsTerminal;

/// The environment variable that chooses the log format.
pub const FORMAT_VAR: &str = "WXGATE_LOG_FORMAT";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogFormat {
    /// One JSON object a line (for log collectors) rather than text.
    pub json: bool,
    /// ANSI colour codes in text lines.
    pub ansi: bool,
}

impl LogFormat {
    /// The format for the value of [`FORMAT_VAR`] (`json`, or anything else / unset for
    /// text) when the log goes to a terminal or not. Colour only on a terminal: escape codes
    /// in a file or a collector are noise.
    pub fn choose(format_var: Option<&str>, is_terminal: bool) -> Self {
        let json = format_var.is_some_and(|f| f.trim() == "json");
        Self {
            json,
            ansi: is_terminal && !json,
        }
    }
}

/// Installs the process's log subscriber, with the format [`FORMAT_VAR`] asks for. Call it
/// once, first thing in `main`; a second call changes nothing.
pub fn init() {
    let format = LogFormat::choose(
        std::env::var(FORMAT_VAR).ok().as_deref(),
        std::io::stdout().is_terminal(),
    );
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stdout)
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(format.ansi);
    // Fails only when a subscriber is already installed; that one stays.
    let _ = if format.json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(format_var: Option<&str>, is_terminal: bool, json: bool, ansi: bool) {
        assert_eq!(
            LogFormat::choose(format_var, is_terminal),
            LogFormat { json, ansi },
            "{format_var:?} on a terminal: {is_terminal}"
        );
    }

    #[test]
    fn json_when_asked_colour_only_on_a_terminal() {
        check(None, true, false, true);
        check(None, false, false, false);
        check(Some("text"), true, false, true);
        check(Some("json"), true, true, false);
        check(Some("json"), false, true, false);
        check(Some(" json\n"), false, true, false);
        check(Some("JSONL"), false, false, false);
    }
}

//! `wxgate`, the command line of wxgate: `wxgate dev` runs the whole system in one process on
//! the in-memory bus and store with a simulated WeChat; the other subcommands are clients of
//! the gRPC API (`tail`, `send`, `token`, `qrcode`, `menu`, `accounts`, `dead`, `media`, …)
//! and of WeChat's pushing side (`sim push`, `sim serve`).
//!
//! Every subcommand returns a [`Failure`] that says what went wrong and what to do next;
//! `main` turns it into the exit status (1 failure, 2 usage). Nothing here prints a secret
//! it was not asked for (`accounts export --with-secrets`, `token`).

pub mod accounts;
pub mod api;
pub mod dead;
pub mod dev;
pub mod events;
pub mod media;
pub mod menu;
pub mod qrcode;
pub mod send;
pub mod sim;
pub mod tokens;

use std::fmt;

/// Why a subcommand did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The command line or a file it names is wrong: exit status 2.
    Usage,
    /// The command was well-formed and did not work: exit status 1.
    Failed,
}

/// A subcommand's failure: a message for a person (what went wrong, what to do) and its kind.
#[derive(Debug, Clone)]
pub struct Failure {
    kind: FailureKind,
    message: String,
}

impl Failure {
    /// A bad command line or input file (exit status 2).
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            kind: FailureKind::Usage,
            message: message.into(),
        }
    }

    /// A well-formed command that failed (exit status 1).
    pub fn failed(message: impl Into<String>) -> Failure {
        Failure {
            kind: FailureKind::Failed,
            message: message.into(),
        }
    }

    /// Which kind of failure.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The process exit status for it.
    pub fn exit_code(&self) -> u8 {
        match self.kind {
            FailureKind::Usage => 2,
            FailureKind::Failed => 1,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// The result of a subcommand.
pub type Outcome = Result<(), Failure>;

/// Writes `line` and a newline to stdout and flushes it; a closed stdout (`| head`) is a
/// failure, so a loop printing events stops instead of acknowledging what nobody saw.
pub fn println_checked(line: &str) -> Outcome {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| Failure::failed(format!("cannot write to stdout: {e}")))
}

/// `value` as pretty JSON on stdout.
pub fn print_json(value: &serde_json::Value) -> Outcome {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::failed(format!("cannot encode JSON: {e}")))?;
    println_checked(&text)
}

/// Reads a file the command line names; a missing or unreadable file is a usage error.
pub fn read_file(path: &std::path::Path, what: &str) -> Result<Vec<u8>, Failure> {
    std::fs::read(path)
        .map_err(|e| Failure::usage(format!("cannot read {what} {}: {e}", path.display())))
}

//! A coverage-less mutation fuzzer for the `wxgate_fuzz` targets, for when libFuzzer is
//! not available: mutates the seeds of `corpus/<target>/` (bit flips, byte inserts and
//! deletes, block copies, splices, dictionary tokens) and runs each mutant, reporting
//! executions per second and saving any input that panics to `artifacts/<target>/`.
//!
//! `mutate <target|all> [runs] [seed]`: runs defaults to 1,000,000 per target.
//! `mutate replay <target> <file>`: runs one saved input (with the panic's message).
//! Exits non-zero when a target panicked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Tokens that matter to the parsers under test.
const DICTIONARY: &[&[u8]] = &[
    b"<xml>",
    b"</xml>",
    b"<![CDATA[",
    b"]]>",
    b"</",
    b"/>",
    b"&#",
    b"&#x",
    b"&amp;",
    b"&lt;",
    b"&#0;",
    b"&#xFFFE;",
    b"<!DOCTYPE",
    b"<!ENTITY",
    b"<?xml version=\"1.0\"?>",
    b"<?pi?>",
    b"<!--",
    b"-->",
    b"<Encrypt>",
    b"<MsgType>",
    b"<item>",
    b"<ArticleCount>",
    b"[[accounts]]",
    b"[[accounts.passive]]",
    b"[[rule]]",
    b"[gateway]",
    b"[worker]",
    b" = ",
    b"\"\"\"",
    b"'''",
    b"{ ",
    b" }",
    b"[]",
    b"content_regex",
    b"%",
    b"%2B",
    b"%FF",
    b"+",
    b"&",
    b"=",
    b"signature=",
    b"echostr=",
    b"\0",
    b"\xff\xfe",
    b"\xef\xbb\xbf",
    b"{content}",
    b"{{",
    b"}}",
    b"|",
    b"18446744073709551616",
    b"-9223372036854775809",
];

/// Largest mutant; real pushes are a few KB.
const MAX_LEN: usize = 8192;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(10) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(16)).min(len);
                input.drain(start..end);
            }
            4 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(64)).min(len);
                let block = input[start..end].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, block);
            }
            5 => {
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let start = rng.below(other.len());
                    let end = (start + 1 + rng.below(other.len() - start)).min(other.len());
                    let at = rng.below(len + 1);
                    let cut = (at + rng.below(len - at + 1)).min(len);
                    input.splice(at..cut, other[start..end].iter().copied());
                }
            }
            6 | 7 => {
                let token = DICTIONARY[rng.below(DICTIONARY.len())];
                let at = rng.below(len + 1);
                if rng.below(2) == 0 {
                    input.splice(at..at, token.iter().copied());
                } else {
                    let end = (at + token.len()).min(len);
                    input.splice(at..end, token.iter().copied());
                }
            }
            8 if len > 0 => input.truncate(rng.below(len)),
            _ if len > 0 => {
                let i = rng.below(len);
                input[i] =
                    [0, 0x7f, 0x80, 0xff, b'<', b'>', b'&', b';', b'"', b'\n'][rng.below(10)];
            }
            _ => input.push(rng.next() as u8),
        }
    }
    input.truncate(MAX_LEN);
}

fn load_seeds(dir: &Path) -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_file())
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    if seeds.is_empty() {
        seeds.push(Vec::new());
    }
    seeds
}

fn save_crash(target: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("artifacts")
        .join(target);
    std::fs::create_dir_all(&dir).expect("create artifacts dir");
    // FNV-1a, for a stable name per input.
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let path = dir.join(format!("crash-{hash:016x}"));
    std::fs::write(&path, input).expect("write crash input");
    path
}

/// Runs `runs` mutants of `target`; returns the number of panics.
fn fuzz(target: &str, runs: u64, seed: u64) -> u64 {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let seeds = load_seeds(&corpus);
    let mut rng = Rng(seed | 1);
    let mut crashes = 0;
    let started = Instant::now();
    for seed in &seeds {
        wxgate_fuzz::run(target, seed);
    }
    let mut input = Vec::new();
    for run in 1..=runs {
        // Usually start again from a seed; sometimes keep mutating the last mutant to
        // wander further from the seeds.
        if run % 8 != 0 {
            input.clone_from(&seeds[rng.below(seeds.len())]);
        }
        mutate(&mut rng, &mut input, &seeds);
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| wxgate_fuzz::run(target, &input)));
        if outcome.is_err() {
            crashes += 1;
            let path = save_crash(target, &input);
            eprintln!("{target}: panic on input saved to {}", path.display());
        }
        if run % 1_000_000 == 0 {
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "{target}: {run} execs, {:.0} execs/s, {crashes} crashes",
                run as f64 / secs
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{target}: {runs} execs in {secs:.1} s ({:.0} execs/s), {} seeds, {crashes} crashes",
        runs as f64 / secs,
        seeds.len()
    );
    crashes
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [replay, target, file] = args.as_slice()
        && replay == "replay"
    {
        let input = std::fs::read(file).expect("read the input");
        if !wxgate_fuzz::run(target, &input) {
            eprintln!("unknown target {target}; one of {:?}", wxgate_fuzz::TARGETS);
            std::process::exit(2);
        }
        println!("{target}: {file} ran without a panic");
        return;
    }
    let which = args.first().map(String::as_str).unwrap_or("all");
    let runs = args
        .get(1)
        .map(|r| r.replace('_', "").parse().expect("runs is a number"))
        .unwrap_or(1_000_000);
    let seed = args
        .get(2)
        .map(|s| s.parse().expect("seed is a number"))
        .unwrap_or(0x5EED);
    let targets: Vec<&str> = if which == "all" {
        wxgate_fuzz::TARGETS.to_vec()
    } else if wxgate_fuzz::TARGETS.contains(&which) {
        vec![which]
    } else {
        eprintln!(
            "unknown target {which}; one of {:?} or all",
            wxgate_fuzz::TARGETS
        );
        std::process::exit(2);
    };
    // One line per panic is enough; the input is saved.
    panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    let crashes: u64 = targets.iter().map(|t| fuzz(t, runs, seed)).sum();
    if crashes > 0 {
        std::process::exit(1);
    }
}

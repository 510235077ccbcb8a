//! Random-UCI fuzz of config loading (issue 17), through `config::load`, which both
//! `bpfqos check-config` and the daemon's (re)load use: 20,000 configs made by mutating the shipped
//! config and the test corpus (lines deleted, duplicated, swapped, truncated; values replaced by
//! hostile tokens; random statements inserted; bytes flipped, invalid UTF-8 included), fixed
//! seed. None may panic, and every error and warning must name the file and a line within it.

// A test: a failure to set up is a test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::path::PathBuf;

use bpfqos::config;

const SEED: u64 = 0x0bad_c0f1_9000;
const CASES: usize = 20_000;

/// Values a user (or a broken tool) could put in an option.
const TOKENS: &[&str] = &[
    "",
    "0",
    "1",
    "-1",
    "65535",
    "4294967296",
    "18446744073709551616",
    "99999999999999999999999",
    "1e3",
    "1.5",
    "0x10",
    "nan",
    "abc",
    "'",
    "\"",
    "\\",
    "''",
    "a b c",
    "${x}",
    "$(reboot)",
    "ütf-8 ✓",
    "198.18.0.1",
    "198.18.0.1/33",
    "198.18.0.0/15",
    "256.1.1.1",
    "fd00::1",
    "fd00::/129",
    "::",
    "cake",
    "fq_codel",
    "fifo",
    "auto",
    "yes",
    "off",
    "ethernet",
    "atm",
    "diffserv4",
    "0-1",
    "1,2,3",
    "-",
    "br-lan",
    "pppoe-wan",
    "verylongdevicename_over_ifnamsiz",
];

/// Statements inserted at random.
const LINES: &[&str] = &[
    "config interface 'x'",
    "config interface",
    "config circuit",
    "config globals 'globals'",
    "config unknown 'u'",
    "config",
    "option",
    "option device",
    "option upload '1000",
    "list address '198.18.1.0/24'",
    "list",
    "\toption download 'x' 'y'",
    "# comment",
    "option interface 'wan'",
    "config interface 'wan'\n\toption network 'wan'",
    "\u{0}",
    "'",
];

fn seeds() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = vec![std::fs::read_to_string(root.join("files/etc/config/bpfqos")).unwrap()];
    for kind in ["valid", "errors", "syntax"] {
        let dir = root.join("tests/data/config").join(kind);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "conf"))
            .collect();
        files.sort();
        out.extend(files.iter().map(|f| std::fs::read_to_string(f).unwrap()));
    }
    out
}

fn mutate(rng: &mut fastrand::Rng, text: &str) -> Vec<u8> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for _ in 0..rng.usize(1..=4) {
        let n = lines.len();
        match rng.u8(0..7) {
            0 if n > 0 => {
                lines.remove(rng.usize(0..n));
            }
            1 if n > 0 => {
                let l = lines[rng.usize(0..n)].clone();
                lines.insert(rng.usize(0..=n), l);
            }
            2 if n > 1 => lines.swap(rng.usize(0..n), rng.usize(0..n)),
            3 if n > 0 => {
                // Replace the value of an option/list line (or append one).
                let i = rng.usize(0..n);
                let tok = TOKENS[rng.usize(0..TOKENS.len())];
                let l = &lines[i];
                let head: Vec<&str> = l.split_whitespace().take(2).collect();
                let quoted = match rng.u8(0..3) {
                    0 => format!("'{tok}'"),
                    1 => format!("\"{tok}\""),
                    _ => tok.to_string(),
                };
                lines[i] = format!("\t{} {quoted}", head.join(" "));
            }
            4 => {
                let l = LINES[rng.usize(0..LINES.len())];
                lines.insert(rng.usize(0..=n), l.to_string());
            }
            5 if n > 0 => {
                let i = rng.usize(0..n);
                let cut = rng.usize(0..=lines[i].len());
                let cut = (0..=cut)
                    .rev()
                    .find(|c| lines[i].is_char_boundary(*c))
                    .unwrap_or(0);
                lines[i].truncate(cut);
            }
            _ => {}
        }
    }
    let mut bytes = lines.join("\n").into_bytes();
    if rng.u8(0..10) == 0 && !bytes.is_empty() {
        // A flipped byte: can make the file invalid UTF-8 or break a quote.
        let i = rng.usize(0..bytes.len());
        bytes[i] ^= 1 << rng.u8(0..8);
    }
    if rng.u8(0..20) == 0 {
        bytes.truncate(rng.usize(0..=bytes.len()));
    }
    bytes
}

#[test]
fn random_configs_never_panic_and_every_finding_has_file_and_line() {
    let seeds = seeds();
    assert!(seeds.len() >= 10, "the corpus is missing");
    let dir = std::env::temp_dir().join(format!("bpfqos-config-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bpfqos");
    let prefix = format!("{}:", path.display());
    let mut rng = fastrand::Rng::with_seed(SEED);
    let (mut errors, mut valid) = (0usize, 0usize);
    for case in 0..CASES {
        let pick = rng.usize(0..seeds.len());
        let text = mutate(&mut rng, &seeds[pick]);
        std::fs::write(&path, &text).unwrap();
        let lines = text.iter().filter(|&&b| b == b'\n').count() as u32 + 1;
        let result = std::panic::catch_unwind(|| config::load(&dir));
        let shown = String::from_utf8_lossy(&text);
        let result = result.unwrap_or_else(|_| panic!("case {case}: load panicked on:\n{shown}"));
        let findings = match &result {
            Ok(loaded) => {
                valid += 1;
                loaded.warnings.clone()
            }
            Err(e) => {
                errors += 1;
                assert!(!e.0.is_empty(), "case {case}: an error without a finding");
                e.0.clone()
            }
        };
        for d in findings {
            let line = d
                .line
                .unwrap_or_else(|| panic!("case {case}: no line in '{d}' for:\n{shown}"));
            assert!(
                (1..=lines).contains(&line),
                "case {case}: line {line} of {lines} in '{d}'"
            );
            let msg = d.to_string();
            assert!(
                msg.starts_with(&format!("{prefix}{line}: ")),
                "case {case}: '{msg}' does not start with file:line"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    // The fuzz must reach both sides of validation, or it tests little.
    assert!(
        errors > CASES / 4 && valid > CASES / 20,
        "{errors} rejected, {valid} accepted of {CASES}"
    );
}

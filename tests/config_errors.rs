//! Corpus tests of config validation, through the same `parse_str`/`load` the daemon and
//! `bpfqos check-config` use.
//!
//! - `tests/data/config/errors/NAME.conf`: a broken config; `NAME.expected` holds the exact
//!   error lines (one precise error per problem, all problems of the file).
//! - `tests/data/config/valid/NAME.conf`: a valid config; `NAME.json` is the typed config as
//!   JSON, `NAME.warnings` the exact warning lines (absent: no warnings).
//! - `tests/data/config/syntax/NAME.conf`: UCI syntax corner cases; `NAME.show` is what the real
//!   `uci show` prints for it (written by the oracle, checked again by tests/config_oracle.rs).
//!
//! Diagnostics name the file `/etc/config/bpfqos`, as on a router. After an intended change of
//! messages, `BPFQOS_BLESS=1 cargo test --test config_errors` rewrites `.expected`, `.json` and
//! `.warnings` files; review the diff before committing it.

use bpfqos::config;

use std::path::Path;
use std::path::PathBuf;

use config::uci;

const ROUTER_PATH: &str = "/etc/config/bpfqos";

fn corpus(kind: &str, ext: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/config")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn bless() -> bool {
    std::env::var("BPFQOS_BLESS").is_ok_and(|v| v == "1")
}

/// Compares `got` with the file `expected` (missing file = empty), or rewrites it when
/// blessing. Returns a description of a mismatch.
fn check_golden(expected: &Path, got: &str) -> Option<String> {
    if bless() {
        if got.is_empty() {
            let _ = std::fs::remove_file(expected);
        } else {
            std::fs::write(expected, got).unwrap_or_else(|e| panic!("{}: {e}", expected.display()));
        }
        return None;
    }
    let want = std::fs::read_to_string(expected).unwrap_or_default();
    (want != got).then(|| format!("--- {}\nexpected:\n{want}\ngot:\n{got}", expected.display()))
}

fn lines<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(|d| format!("{d}\n")).collect()
}

#[test]
fn broken_configs_report_exactly_their_errors() {
    let files = corpus("errors", "conf");
    assert!(files.len() >= 20, "only {} error cases", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let got = match config::parse_str(Path::new(ROUTER_PATH), &read(file)) {
            Ok(loaded) => {
                failures.push(format!(
                    "--- {}: accepted: {:?}",
                    file.display(),
                    loaded.config
                ));
                continue;
            }
            Err(errors) => {
                // Display is one line per error, the same lines as the diagnostics.
                assert_eq!(errors.to_string() + "\n", lines(&errors.0));
                lines(&errors.0)
            }
        };
        failures.extend(check_golden(&file.with_extension("expected"), &got));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn valid_configs_give_typed_config_and_warnings() {
    let files = corpus("valid", "conf");
    assert!(!files.is_empty());
    let mut failures = Vec::new();
    for file in &files {
        let loaded = match config::parse_str(Path::new(ROUTER_PATH), &read(file)) {
            Ok(l) => l,
            Err(e) => {
                failures.push(format!("--- {}: rejected:\n{e}", file.display()));
                continue;
            }
        };
        let json =
            serde_json::to_string_pretty(&loaded.config).unwrap_or_else(|e| panic!("{e}")) + "\n";
        failures.extend(check_golden(&file.with_extension("json"), &json));
        failures.extend(check_golden(
            &file.with_extension("warnings"),
            &lines(&loaded.warnings),
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn syntax_corner_cases_read_like_uci_show() {
    let files = corpus("syntax", "conf");
    assert!(!files.is_empty());
    let mut failures = Vec::new();
    for file in &files {
        let (package, errors) = uci::parse(&read(file));
        assert!(errors.is_empty(), "{}: {errors:?}", file.display());
        let want = read(&file.with_extension("show"));
        let got = package.show("bpfqos", true);
        if want != got {
            failures.push(format!(
                "--- {}\nuci show:\n{want}\nours:\n{got}",
                file.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A scratch config directory, removed on drop.
struct ConfigDir(PathBuf);

impl ConfigDir {
    fn new(name: &str) -> ConfigDir {
        let dir = std::env::temp_dir().join(format!("bpfqos-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        ConfigDir(dir)
    }
}

impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn load_reads_bpfqos_in_the_config_dir() {
    let dir = ConfigDir::new("load");
    let file = dir.0.join("bpfqos");
    std::fs::write(
        &file,
        "config interface 'wan'\n\toption device 'eth0'\n\toption upload 'x'\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let errors = config::load(&dir.0).err().map(|e| e.to_string());
    assert_eq!(
        errors,
        Some(format!(
            "{}:3: interface 'wan': option upload: expected kbit/s integer, got 'x'",
            file.display()
        ))
    );
    std::fs::write(&file, "config interface 'wan'\n\toption device 'eth0'\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let loaded = config::load(&dir.0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.config.interfaces[0].device.as_deref(), Some("eth0"));
}

#[test]
fn load_reports_a_missing_file_once() {
    let dir = ConfigDir::new("missing");
    let errors = config::load(&dir.0).err().map(|e| e.0);
    let errors = errors.unwrap_or_default();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].to_string(),
        format!("{}: file not found", dir.0.join("bpfqos").display())
    );
}

#[test]
fn load_rejects_binary_garbage_with_a_line() {
    let dir = ConfigDir::new("binary");
    std::fs::write(dir.0.join("bpfqos"), b"config globals\n\toption x '\xff'\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let errors = config::load(&dir.0).err().map(|e| e.to_string());
    assert_eq!(
        errors,
        Some(format!(
            "{}:2: not valid UTF-8 text",
            dir.0.join("bpfqos").display()
        ))
    );
    std::fs::write(
        dir.0.join("bpfqos"),
        b"config globals\n\n\toption x 'a\0b'\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let errors = config::load(&dir.0).err().map(|e| e.to_string());
    assert_eq!(
        errors,
        Some(format!(
            "{}:3: contains a NUL byte",
            dir.0.join("bpfqos").display()
        ))
    );
}

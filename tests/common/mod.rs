//! What the integration tests share, one module per concern:
//! - [`bpf`]: the built BPF objects, loading them, BPF_PROG_TEST_RUN;
//! - [`frames`]: frames and flow entries built independently of the code under test;
//! - [`netns`]: throw-away network namespaces and bpffs mounts;
//! - [`daemon`]: a `bpfqos daemon` under test;
//! - [`lab`]: the namespace router (LAN client, router with NAT, WAN server);
//! - [`packaging`]: the OpenWrt package files and the POSIX shells that run them;
//!
//! and, here, the basics: the CI rule (a missing prerequisite fails under `CI=true`, skips
//! elsewhere), commands, temporary directories, bounded waits.
//!
//! Addresses used by tests live only in 198.18.0.0/15 and fd00::/8, inside namespaces the test
//! creates; nothing reaches the root namespace's links.

// Each test binary includes this module and uses a different part of it; test helpers fail by
// panicking, with the reason.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

pub mod bpf;
pub mod daemon;
pub mod frames;
pub mod lab;
pub mod netns;
pub mod packaging;

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Output;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

/// Whether this run must not skip anything (CI sets `CI=true`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Reports a missing prerequisite: a failure under CI, a skip (false) with a message otherwise.
pub fn missing(test: &str, what: &str) -> bool {
    if in_ci() {
        panic!("{test}: {what} is missing, and CI=true forbids skipping");
    }
    eprintln!("SKIP {test}: {what} is missing");
    false
}

/// True when running as root; otherwise see [`missing`].
pub fn require_root(test: &str) -> bool {
    nix::unistd::geteuid().is_root() || missing(test, "root (run `sudo -E cargo test`)")
}

/// The repository root (the crate root).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Reads a repository file, panicking with its path.
pub fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Parses a repository JSON file, panicking with its path.
pub fn json(rel: &str) -> serde_json::Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The executable `name` on PATH, if any.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Runs a command, returning its output; panics with the command and stderr on failure.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `sh -c script`, panicking on failure.
pub fn sh(script: &str) -> String {
    String::from_utf8_lossy(&run("sh", &["-ec", script]).stdout).into_owned()
}

/// Stdout and stderr of a finished command, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short unique prefix for names (netns, links) of one test: ifnames have 15 bytes at most.
pub fn unique(tag: &str) -> String {
    format!(
        "{tag}{}{}",
        std::process::id() % 10000,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh, empty directory under the system temp dir, removed on drop.
pub struct TempDir {
    /// The directory.
    pub path: PathBuf,
}

impl TempDir {
    /// Creates one whose name starts with `tag`.
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(unique(&format!("{tag}-")));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `name` inside it.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Resident memory of process `pid`, KiB (`VmRSS`; 0 when it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A KiB figure of /proc/PID/status (`field` with its colon, e.g. `RssAnon:`); 0 if absent.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

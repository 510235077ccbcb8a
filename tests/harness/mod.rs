//! Shared test scaffolding: root checks, throw-away network namespaces and a bpffs mount, a
//! daemon under test. Everything created here is removed on drop, also when a test panics.
//!
//! Addresses used by tests live only in 198.18.0.0/15 and fd00::/8, inside namespaces the test
//! creates; nothing reaches the root namespace's links.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Output;
use std::process::Stdio;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

/// Whether this run must not skip anything (CI sets `CI=true`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Returns false (and says why) when a root-only test cannot run here; panics instead under CI,
/// where a missing prerequisite is a failure, not a skip.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if in_ci() {
        panic!("{test}: needs root, and CI=true forbids skipping");
    }
    eprintln!("SKIP {test}: needs root");
    false
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

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short unique prefix for names (netns, links) of one test: ifnames have 15 bytes at most.
pub fn unique(tag: &str) -> String {
    format!(
        "{tag}{}{}",
        std::process::id() % 10000,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace, deleted on drop.
pub struct Netns {
    /// Its name (`ip netns` name).
    pub name: String,
}

impl Netns {
    /// Creates a namespace with loopback up.
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NS ...`
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// Runs a shell script inside the namespace.
    pub fn sh(&self, script: &str) -> String {
        String::from_utf8_lossy(
            &run("ip", &["netns", "exec", &self.name, "sh", "-ec", script]).stdout,
        )
        .into_owned()
    }

    /// A command prepared to run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A private bpffs mount for pinning, unmounted on drop.
pub struct Bpffs {
    /// Mount point.
    pub dir: PathBuf,
}

impl Bpffs {
    /// Mounts a fresh bpffs under a temporary directory.
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("bpfqos-bpffs-"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        run("mount", &["-t", "bpf", "bpf", &dir.display().to_string()]);
        Self { dir }
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A temporary directory removed on drop.
pub struct TempDir {
    /// The directory.
    pub path: PathBuf,
}

impl TempDir {
    /// Creates one.
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
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

/// The binary under test.
pub fn bpfqos_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bpfqos"))
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

/// A daemon started for a test; killed on drop if still running. Its stderr goes to a log file
/// that is printed when the test fails.
pub struct Daemon {
    /// The process (`ip netns exec ... bpfqos daemon`).
    pub child: Option<Child>,
    /// Control socket.
    pub socket: PathBuf,
    /// Log file.
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `bpfqos daemon` in `ns` (or the root namespace) and waits for its socket.
    pub fn start(
        ns: Option<&Netns>,
        config_dir: &Path,
        pin_dir: &Path,
        work: &Path,
        extra: &[&str],
    ) -> Self {
        let socket = work.join("bpfqos.sock");
        let log = work.join("daemon.log");
        let logf = std::fs::File::create(&log).unwrap_or_else(|e| panic!("log file: {e}"));
        let bin = bpfqos_bin();
        let mut cmd = match ns {
            Some(ns) => ns.command(&bin.display().to_string()),
            None => Command::new(&bin),
        };
        cmd.arg("daemon")
            .arg("--config-dir")
            .arg(config_dir)
            .arg("--socket")
            .arg(&socket)
            .arg("--pin-dir")
            .arg(pin_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting daemon: {e}"));
        let d = Self {
            child: Some(child),
            socket,
            log,
        };
        let up = wait_for(Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&d.socket).is_ok()
        });
        assert!(up, "daemon did not come up; log:\n{}", d.log_text());
        d
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a client subcommand against this daemon.
    pub fn client(&self, args: &[&str]) -> Output {
        Command::new(bpfqos_bin())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .unwrap_or_else(|e| panic!("running client: {e}"))
    }

    /// `bpfqos status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let out = self.client(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}\nlog:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status JSON: {e}"))
    }

    /// Sends a signal to the daemon process (the `ip netns exec` wrapper execs it, same pid).
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            run("kill", &[&format!("-{sig}"), &c.id().to_string()]);
        }
    }

    /// Waits (bounded) for the daemon to exit, returning its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.child = None;
                    return st.code();
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- daemon log ---\n{}", self.log_text());
        }
    }
}

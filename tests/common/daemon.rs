//! A `bpfqos daemon` under test: started in a namespace with its own config, socket and pin
//! directories, asked for its status, signalled, killed on drop (its log printed when the test
//! failed).

use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Output;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use super::netns::Netns;
use super::run;
use super::wait_for;

/// The binary under test.
pub fn bpfqos_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bpfqos"))
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

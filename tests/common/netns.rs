//! Throw-away network namespaces and bpffs mounts, removed on drop (panics included).

use std::path::PathBuf;
use std::process::Command;
use std::process::Output;

use super::run;
use super::unique;

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

//! Throw-away network namespaces and bpffs mounts, removed on drop (panics included).

use std::future::Future;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;
use std::process::Output;

use serde_json::Value;

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

    /// Runs a shell script inside the namespace and says whether it succeeded.
    pub fn try_sh(&self, script: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", script])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Runs a command printing JSON (`ip -j`, `tc -j`) inside the namespace and parses it.
    pub fn json(&self, script: &str) -> Value {
        serde_json::from_str(&self.sh(script)).unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// The ifindex of `dev` in the namespace.
    pub fn ifindex(&self, dev: &str) -> u32 {
        let v = self.json(&format!("ip -j link show dev {dev}"));
        v[0]["ifindex"]
            .as_u64()
            .unwrap_or_else(|| panic!("{dev}: no ifindex")) as u32
    }

    /// The MAC of `dev` in the namespace.
    pub fn mac(&self, dev: &str) -> [u8; 6] {
        let v = self.json(&format!("ip -j link show dev {dev}"));
        let text = v[0]["address"].as_str().unwrap_or_default();
        let mut mac = [0u8; 6];
        for (b, part) in mac.iter_mut().zip(text.split(':')) {
            *b = u8::from_str_radix(part, 16).unwrap_or_else(|e| panic!("{dev} MAC {text}: {e}"));
        }
        mac
    }

    /// A command prepared to run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `f` on a thread of its own that has entered the namespace (netlink and BPF
    /// sockets belong to the namespace of the thread that creates them).
    pub fn run_in<F, T>(&self, f: F) -> T
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let path = format!("/run/netns/{}", self.name);
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        });
        match thread.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// [`Netns::run_in`] for async code, on a current-thread tokio runtime (the daemon's kind).
    pub fn block_on_in<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        self.run_in(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
            rt.block_on(f())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes a test started in its namespace (pppd, servers) die with it.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
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

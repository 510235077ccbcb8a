//! Reads of procfs and sysfs through a root path, so that tests can stand a fixture directory in
//! for `/` (`proc/net/pppoe`, `sys/class/net/<dev>/dsa/tagging`, `proc/<pid>/cmdline`).

use std::io;
use std::path::Path;
use std::path::PathBuf;

/// The root under which `proc/` and `sys/` are read: `/` on a router, a fixture dir in tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFs {
    root: PathBuf,
}

impl Default for HostFs {
    fn default() -> Self {
        Self::system()
    }
}

impl HostFs {
    /// The running system's `/proc` and `/sys`.
    pub fn system() -> Self {
        HostFs {
            root: PathBuf::from("/"),
        }
    }

    /// A fixture tree: `<root>/proc/...`, `<root>/sys/...`.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        HostFs { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads `<root>/<rel>` as text.
    pub fn read(&self, rel: &str) -> io::Result<String> {
        std::fs::read_to_string(self.root.join(rel))
    }

    /// Reads `<root>/<rel>` as bytes (for NUL-separated files such as `cmdline`).
    pub fn read_bytes(&self, rel: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.root.join(rel))
    }

    /// Names of the entries of the directory `<root>/<rel>`.
    pub fn list(&self, rel: &str) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(self.root.join(rel))? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    /// The DSA tagger of a conduit (`sys/class/net/<dev>/dsa/tagging`), if `dev` is one.
    pub fn dsa_tagging(&self, dev: &str) -> Option<String> {
        if dev.contains('/') || dev.is_empty() {
            return None;
        }
        let t = self
            .read(&format!("sys/class/net/{dev}/dsa/tagging"))
            .ok()?;
        let t = t.trim();
        (!t.is_empty()).then(|| t.to_string())
    }
}

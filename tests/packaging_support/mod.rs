//! Helpers shared by the packaging tests (`tests/packaging.rs`, `tests/init_script.rs`): repository
//! paths, the CI skip-or-fail rule for external tools, POSIX shells, throw-away directories, and
//! reading the OpenWrt package Makefile.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::BTreeSet;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Output;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;

/// The repository root (the crate root).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Reads a repository file, panicking with its path.
pub fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

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

/// The executable `name` on PATH, if any.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The POSIX shells the router scripts are run under: dash (Debian's sh, strict POSIX plus
/// `local`) and busybox ash (OpenWrt's /bin/sh). A missing one is a skip, or a failure under CI.
pub fn posix_shells(test: &str) -> Vec<(&'static str, Vec<PathBuf>)> {
    let mut shells = Vec::new();
    match which("dash") {
        Some(dash) => shells.push(("dash", vec![dash])),
        None => {
            missing(test, "dash (Debian package dash)");
        }
    }
    match which("busybox") {
        Some(bb) => shells.push(("busybox sh", vec![bb, PathBuf::from("sh")])),
        None => {
            missing(test, "busybox (Debian package busybox-static)");
        }
    }
    shells
}

/// A command running `argv` (a shell from [`posix_shells`]) with `args` appended.
pub fn shell_command(argv: &[PathBuf], args: &[&Path]) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).args(args);
    cmd
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

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh, empty directory whose name starts with `tag`.
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self(path)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The OpenWrt package recipe of bpfqos.
pub const PACKAGE_MAKEFILE: &str = "openwrt/bpfqos/Makefile";

/// The value of a simple `NAME:=value` assignment in a Makefile.
pub fn makefile_var(makefile: &str, name: &str) -> Option<String> {
    makefile.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix(name)?;
        let value = rest
            .trim_start()
            .strip_prefix(":=")
            .or_else(|| rest.trim_start().strip_prefix('='))?;
        Some(value.trim().to_string())
    })
}

/// Like [`makefile_var`], panicking when the variable is not assigned.
pub fn required_var(makefile: &str, name: &str) -> String {
    makefile_var(makefile, name).unwrap_or_else(|| panic!("{PACKAGE_MAKEFILE}: no {name}"))
}

/// Parses a repository JSON file, panicking with its path.
pub fn json(rel: &str) -> serde_json::Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// ubus methods an rpcd ACL file grants on the object `bpfqos`, over all groups, read and write.
pub fn acl_bpfqos_methods(acl: &serde_json::Value) -> BTreeSet<String> {
    let mut methods = BTreeSet::new();
    for group in acl.as_object().into_iter().flat_map(|o| o.values()) {
        for access in ["read", "write"] {
            if let Some(list) = group[access]["ubus"]["bpfqos"].as_array() {
                methods.extend(list.iter().filter_map(|m| m.as_str().map(str::to_string)));
            }
        }
    }
    methods
}

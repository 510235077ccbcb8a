//! The OpenWrt package as tests see it: the POSIX shells its scripts run under, the package
//! Makefile's variables, the rpcd ACL files.

use std::collections::BTreeSet;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;

use super::missing;
use super::which;

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

/// Renders the LuCI status view with tests/luci/render.js (LuCI's runtime stubbed) over the
/// given status documents (paths, or "null" for a daemon that does not answer); its text.
pub fn render_status_view(docs: &[&str]) -> String {
    let node = super::which("node")
        .or_else(|| super::which("nodejs"))
        .unwrap_or_else(|| panic!("node (Debian package nodejs) is needed"));
    let out = Command::new(node)
        .arg(super::repo().join("tests/luci/render.js"))
        .arg(
            super::repo()
                .join("openwrt/luci-app-bpfqos/htdocs/luci-static/resources/view/bpfqos/status.js"),
        )
        .args(docs)
        .output()
        .unwrap_or_else(|e| panic!("node: {e}"));
    assert!(
        out.status.success(),
        "status view: {}",
        super::describe(&out)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

//! Packaging lint: the OpenWrt recipe (openwrt/bpfqos/Makefile), the files it installs (files/),
//! and the LuCI app (openwrt/luci-app-bpfqos/) agree with each other and with the crate.
//!
//! No OpenWrt tree is needed: the Makefile is read as text. External linters (shellcheck, node,
//! dash, busybox) are skipped with a message when missing, and fail the test under `CI=true`.

// A test: a failure to set up is a test failure.
#![allow(clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::json;
use common::missing;
use common::packaging::acl_bpfqos_methods;
use common::packaging::makefile_var;
use common::packaging::render_status_view;
use common::packaging::required_var;
use common::packaging::PACKAGE_MAKEFILE;
use common::read;
use common::repo;
use common::which;

const LUCI_APP: &str = "openwrt/luci-app-bpfqos";
const INIT_SCRIPT: &str = "files/etc/init.d/bpfqos";
const RPCD_PLUGIN: &str = "files/usr/libexec/rpcd/bpfqos";
const PROCD_HARNESS: &str = "tests/data/packaging/procd-harness.sh";

// --- apk version grammar ---------------------------------------------------------------------

/// Suffixes apk-tools orders versions by (`1.0_rc1` < `1.0`< `1.0_p1`).
const APK_SUFFIXES: &[&str] = &["alpha", "beta", "pre", "rc", "cvs", "svn", "git", "hg", "p"];

/// Whether `v` is a version apk accepts, per apk-tools' grammar:
/// `digits ('.' digits)* [a-z]? ('_' suffix digits*)* ('~' hex+)? ('-r' digits+)?`.
/// `-r<release>` only when `with_release` (OpenWrt appends it as `PKG_VERSION-rPKG_RELEASE`).
fn apk_version_valid(v: &str, with_release: bool) -> bool {
    fn digits(s: &str) -> usize {
        s.bytes().take_while(u8::is_ascii_digit).count()
    }
    let mut rest = v;
    // digits ('.' digits)*
    loop {
        let n = digits(rest);
        if n == 0 {
            return false;
        }
        rest = &rest[n..];
        match rest.strip_prefix('.') {
            Some(r) => rest = r,
            None => break,
        }
    }
    // one optional letter
    if rest.as_bytes().first().is_some_and(u8::is_ascii_lowercase) {
        rest = &rest[1..];
    }
    // ('_' suffix digits*)*
    while let Some(r) = rest.strip_prefix('_') {
        // Longest match first: "pre" before "p".
        let Some(suffix) = APK_SUFFIXES
            .iter()
            .filter(|s| r.starts_with(**s))
            .max_by_key(|s| s.len())
        else {
            return false;
        };
        rest = &r[suffix.len()..];
        rest = &rest[digits(rest)..];
    }
    // '~' hash
    if let Some(r) = rest.strip_prefix('~') {
        let n = r.bytes().take_while(u8::is_ascii_hexdigit).count();
        if n == 0 {
            return false;
        }
        rest = &r[n..];
    }
    // '-r' release
    if with_release {
        if let Some(r) = rest.strip_prefix("-r") {
            let n = digits(r);
            if n == 0 {
                return false;
            }
            rest = &r[n..];
        }
    }
    rest.is_empty()
}

#[test]
fn apk_grammar_accepts_and_rejects_what_apk_does() {
    for ok in [
        "0.1.0",
        "1",
        "1.2.3a",
        "1.0_rc1",
        "1.0_alpha",
        "2.4_pre2_p1",
        "1.0_p3",
        "1.2~abc12",
        "10.20.30",
    ] {
        assert!(apk_version_valid(ok, false), "{ok} should be valid");
    }
    assert!(apk_version_valid("0.1.0-r1", true));
    for bad in [
        "",
        "v0.1.0",
        "0.1.0-rc1",
        "0.1.",
        ".1",
        "1..2",
        "1.0_gamma",
        "1.0-1",
        "1.0ab",
        "1.0 ",
        "0.1.0+git",
        "1.0~",
        "1.0~xyz",
    ] {
        assert!(!apk_version_valid(bad, false), "{bad:?} should be invalid");
    }
    assert!(!apk_version_valid("0.1.0-r", true));
    assert!(!apk_version_valid("0.1.0-r1", false));
}

// --- the package Makefile --------------------------------------------------------------------

/// The lines between `define <name>` and its `endef`.
fn define_block<'a>(makefile: &'a str, name: &str) -> Option<Vec<&'a str>> {
    let mut lines = makefile.lines();
    lines.find(|l| l.trim() == format!("define {name}"))?;
    Some(lines.take_while(|l| l.trim() != "endef").collect())
}

fn package_makefile() -> String {
    read(PACKAGE_MAKEFILE)
}

/// `[[bin]]` target names of the crate.
fn cargo_bins() -> BTreeSet<String> {
    let toml = read("Cargo.toml");
    let mut bins = BTreeSet::new();
    let mut in_bin = false;
    for line in toml.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin {
            if let Some(v) = line.strip_prefix("name").map(str::trim) {
                if let Some(v) = v.strip_prefix('=') {
                    bins.insert(v.trim().trim_matches('"').to_string());
                }
            }
        }
    }
    bins
}

/// One file the recipe installs.
#[derive(Debug)]
struct Installed {
    /// The install macro (`$(INSTALL_BIN)`, `$(INSTALL_CONF)`, ...).
    how: String,
    /// Source as written in the Makefile.
    source: String,
    /// Path on the router.
    dest: String,
}

/// The files `Package/<pkg>/install` installs, from its `$(INSTALL_*)`/`$(CP)` lines.
fn installed_files(makefile: &str, pkg: &str) -> Vec<Installed> {
    let block = define_block(makefile, &format!("Package/{pkg}/install"))
        .unwrap_or_else(|| panic!("no Package/{pkg}/install in {PACKAGE_MAKEFILE}"));
    let mut files = Vec::new();
    for line in block {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&how, args)) = words.split_first() else {
            continue;
        };
        if how == "$(INSTALL_DIR)" {
            continue;
        }
        assert!(
            matches!(
                how,
                "$(INSTALL_BIN)" | "$(INSTALL_DATA)" | "$(INSTALL_CONF)" | "$(CP)"
            ),
            "unexpected install line (teach this lint about it): {line}"
        );
        let (dest, sources) = args
            .split_last()
            .unwrap_or_else(|| panic!("install line without destination: {line}"));
        let dest = dest
            .strip_prefix("$(1)")
            .unwrap_or_else(|| panic!("destination outside $(1): {line}"));
        for source in sources {
            let name = source.rsplit('/').next().unwrap_or(source);
            let dest = match dest.strip_suffix('/') {
                Some(dir) => format!("{dir}/{name}"),
                None => dest.to_string(),
            };
            files.push(Installed {
                how: how.to_string(),
                source: source.to_string(),
                dest,
            });
        }
    }
    files
}

/// Where an installed file comes from in this repository, or the cargo binary it is.
enum Origin {
    /// A repository file (Build/Prepare copies the whole tree into $(PKG_BUILD_DIR)).
    File(String),
    /// `cargo install` output: a `[[bin]]` name.
    CargoBin(String),
}

fn origin(source: &str) -> Origin {
    if let Some(rel) = source.strip_prefix("$(PKG_BUILD_DIR)/") {
        Origin::File(rel.to_string())
    } else if let Some(bin) = source.strip_prefix("$(PKG_INSTALL_DIR)/bin/") {
        Origin::CargoBin(bin.to_string())
    } else if let Some(rel) = source.strip_prefix("./") {
        Origin::File(format!("openwrt/bpfqos/{rel}"))
    } else {
        panic!("install source {source}: unknown location (teach this lint about it)")
    }
}

#[test]
fn pkg_version_equals_cargo_version_and_is_apk_valid() {
    let mk = package_makefile();
    let version = required_var(&mk, "PKG_VERSION");
    let release = required_var(&mk, "PKG_RELEASE");
    assert_eq!(
        version,
        env!("CARGO_PKG_VERSION"),
        "PKG_VERSION in {PACKAGE_MAKEFILE} must equal version in Cargo.toml"
    );
    assert!(
        apk_version_valid(&version, false),
        "PKG_VERSION {version:?} is not a valid apk version"
    );
    assert!(
        !release.is_empty()
            && release.bytes().all(|b| b.is_ascii_digit())
            && !release.starts_with('0'),
        "PKG_RELEASE {release:?} must be a positive integer"
    );
    let full = format!("{version}-r{release}");
    assert!(apk_version_valid(&full, true), "{full} is not apk-valid");
}

#[test]
fn recipe_has_the_required_parts() {
    let mk = package_makefile();
    assert_eq!(makefile_var(&mk, "PKG_NAME").as_deref(), Some("bpfqos"));
    assert_eq!(
        makefile_var(&mk, "PKG_LICENSE").as_deref(),
        Some("GPL-2.0-only")
    );
    assert!(makefile_var(&mk, "PKG_MAINTAINER").is_some_and(|m| m.contains('@')));
    let build_deps = required_var(&mk, "PKG_BUILD_DEPENDS");
    for dep in ["rust/host", "bpf-headers"] {
        assert!(
            build_deps.split_whitespace().any(|d| d == dep),
            "PKG_BUILD_DEPENDS lacks {dep}"
        );
    }
    for include in [
        "include $(INCLUDE_DIR)/bpf.mk",
        "include $(TOPDIR)/feeds/packages/lang/rust/rust-package.mk",
        "$(eval $(call BuildPackage,bpfqos))",
    ] {
        assert!(
            mk.lines().any(|l| l.trim() == include),
            "missing line: {include}"
        );
    }
    // build.rs gets its BPF toolchain from bpf.mk through these two variables.
    for var in ["BPFQOS_CLANG=\"$(CLANG)\"", "BPFQOS_BPF_CFLAGS="] {
        assert!(mk.contains(var), "{var} is not passed to cargo");
    }
    // Cargo.lock must be honoured: rust-package.mk adds --locked unless RUST_PKG_LOCKED is 0.
    assert!(
        makefile_var(&mk, "RUST_PKG_LOCKED").is_none_or(|v| v == "1"),
        "the build must stay --locked"
    );
    let deps = define_block(&mk, "Package/bpfqos")
        .unwrap_or_else(|| panic!("no define Package/bpfqos"))
        .join("\n");
    for dep in [
        "$(BPF_DEPENDS)",
        "$(RUST_ARCH_DEPENDS)",
        "+kmod-sched-bpf",
        "+kmod-nf-conntrack-netlink",
    ] {
        assert!(deps.contains(dep), "DEPENDS lacks {dep}");
    }
}

/// The recipe builds the way openwrt/cross/build.sh proves on aarch64, armv7 and MIPS musl: the
/// same libbpf-rs features, the same elfutils-on-musl settings, panic=abort without unwind tables.
#[test]
fn recipe_uses_the_settings_the_cross_build_proves() {
    let mk = package_makefile();
    let script = read("openwrt/cross/build.sh");
    let features = script
        .lines()
        .find_map(|l| l.strip_prefix("FEATURES="))
        .expect("FEATURES= in build.sh");
    let recipe_features = required_var(&mk, "RUST_PKG_FEATURES");
    let recipe: BTreeSet<&str> = recipe_features
        .split([' ', ','])
        .filter(|f| !f.is_empty())
        .collect();
    let cross: BTreeSet<&str> = features.split(',').collect();
    assert_eq!(
        recipe, cross,
        "RUST_PKG_FEATURES against build.sh's FEATURES"
    );
    for var in [
        "ac_cv_search_argp_parse='none required'",
        "ac_cv_search_fts_close='none required'",
        "ac_cv_search__obstack_free='none required'",
    ] {
        assert!(script.contains(var), "build.sh lacks {var}");
        assert!(mk.contains(var), "the recipe lacks {var}");
    }
    assert!(
        script.contains("CFLAGS_$low=-I$HERE"),
        "build.sh: argp.h include"
    );
    assert!(
        mk.contains("-I$(PKG_BUILD_DIR)/openwrt/cross"),
        "the recipe: argp.h include"
    );
    assert!(mk.contains("CARGO_PROFILE_RELEASE_PANIC=abort"));
    assert!(
        script.contains("-C force-unwind-tables=no") && mk.contains("-Cforce-unwind-tables=no")
    );
    assert!(
        script.contains("-C target-feature=+thumb-mode")
            && mk.contains("-Ctarget-feature=+thumb-mode"),
        "ARMv7 in Thumb-2 in both"
    );
    let cargo = read("Cargo.toml");
    assert!(cargo.contains("opt-level = \"z\"") && cargo.contains("panic = \"abort\""));
}

#[test]
fn every_installed_file_exists_and_every_router_file_is_installed() {
    let mk = package_makefile();
    let files = installed_files(&mk, "bpfqos");
    assert!(!files.is_empty());
    let bins = cargo_bins();
    let mut sources = BTreeSet::new();
    for f in &files {
        match origin(&f.source) {
            Origin::File(rel) => {
                assert!(
                    repo().join(&rel).is_file(),
                    "{} installs {rel}, which does not exist",
                    f.dest
                );
                sources.insert(rel);
            }
            Origin::CargoBin(name) => assert!(
                bins.contains(&name),
                "{} is cargo binary {name}, but Cargo.toml's [[bin]] targets are {bins:?}",
                f.dest
            ),
        }
    }
    let by_dest: BTreeMap<&str, &Installed> = files.iter().map(|f| (f.dest.as_str(), f)).collect();
    assert_eq!(
        by_dest.len(),
        files.len(),
        "a destination is installed twice"
    );

    // files/ mirrors the router's file system: files/<path> lands at /<path>.
    let mut on_router = Vec::new();
    walk(&repo().join("files"), &mut on_router);
    for path in on_router {
        let rel = path
            .strip_prefix(repo())
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        let dest = rel.strip_prefix("files").unwrap_or(&rel);
        let f = by_dest
            .get(dest)
            .unwrap_or_else(|| panic!("{rel} is never installed (expected at {dest})"));
        assert_eq!(
            origin(&f.source).file(),
            Some(rel.as_str()),
            "{dest} should come from {rel}"
        );
    }

    // Modes: programs with INSTALL_BIN, the UCI config as a conffile.
    for (dest, how) in [
        ("/usr/sbin/bpfqos", "$(INSTALL_BIN)"),
        ("/etc/init.d/bpfqos", "$(INSTALL_BIN)"),
        ("/usr/libexec/rpcd/bpfqos", "$(INSTALL_BIN)"),
        ("/etc/config/bpfqos", "$(INSTALL_CONF)"),
        ("/usr/share/rpcd/acl.d/bpfqos.json", "$(INSTALL_DATA)"),
    ] {
        let f = by_dest
            .get(dest)
            .unwrap_or_else(|| panic!("{dest} is not installed"));
        assert_eq!(f.how, how, "{dest}");
    }
}

impl Origin {
    fn file(&self) -> Option<&str> {
        match self {
            Origin::File(rel) => Some(rel),
            Origin::CargoBin(_) => None,
        }
    }
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn conffiles_are_installed() {
    let mk = package_makefile();
    let conffiles = define_block(&mk, "Package/bpfqos/conffiles")
        .unwrap_or_else(|| panic!("no Package/bpfqos/conffiles"));
    let dests: BTreeSet<String> = installed_files(&mk, "bpfqos")
        .into_iter()
        .map(|f| f.dest)
        .collect();
    let conffiles: Vec<&str> = conffiles
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    assert!(conffiles.contains(&"/etc/config/bpfqos"));
    for c in conffiles {
        assert!(dests.contains(c), "conffile {c} is not installed");
    }
}

// --- shell scripts ---------------------------------------------------------------------------

#[test]
fn router_scripts_are_executable_in_git() {
    let test = "router_scripts_are_executable_in_git";
    if which("git").is_none() || !repo().join(".git").exists() {
        missing(test, "git or a git checkout");
        return;
    }
    for script in [INIT_SCRIPT, RPCD_PLUGIN] {
        let out = Command::new("git")
            .arg("-C")
            .arg(repo())
            .args(["ls-files", "--stage", "--", script])
            .output()
            .unwrap_or_else(|e| panic!("git: {e}"));
        let stage = String::from_utf8_lossy(&out.stdout);
        assert!(
            stage.starts_with("100755 "),
            "{script} must be tracked with mode 100755, git has: {stage:?}"
        );
    }
}

#[test]
fn router_scripts_parse_under_posix_shells() {
    let test = "router_scripts_parse_under_posix_shells";
    for (name, argv) in common::packaging::posix_shells(test) {
        for script in [INIT_SCRIPT, RPCD_PLUGIN, PROCD_HARNESS] {
            let out =
                common::packaging::shell_command(&argv, &[Path::new("-n"), &repo().join(script)])
                    .output()
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                out.status.success(),
                "{name} -n {script}: {}",
                common::describe(&out)
            );
        }
    }
}

#[test]
fn router_scripts_pass_shellcheck() {
    let test = "router_scripts_pass_shellcheck";
    let Some(shellcheck) = which("shellcheck") else {
        missing(test, "shellcheck (Debian package shellcheck)");
        return;
    };
    // dash dialect: POSIX plus `local`, which busybox ash (OpenWrt's /bin/sh) has too.
    // SC2034: USE_PROCD, START and STOP are read by /etc/rc.common, not by the script.
    let out = Command::new(&shellcheck)
        .args(["--shell=dash", "--exclude=SC2034"])
        .args([INIT_SCRIPT, RPCD_PLUGIN].map(|s| repo().join(s)))
        .output()
        .unwrap_or_else(|e| panic!("shellcheck: {e}"));
    assert!(out.status.success(), "{}", common::describe(&out));
    let out = Command::new(&shellcheck)
        .arg("--shell=dash")
        .arg(repo().join(PROCD_HARNESS))
        .output()
        .unwrap_or_else(|e| panic!("shellcheck: {e}"));
    assert!(out.status.success(), "{}", common::describe(&out));
    // checkbashisms (Debian devscripts) is a second opinion, run where installed.
    if let Some(cb) = which("checkbashisms") {
        let out = Command::new(cb)
            .arg("--force")
            .args([INIT_SCRIPT, RPCD_PLUGIN].map(|s| repo().join(s)))
            .output()
            .unwrap_or_else(|e| panic!("checkbashisms: {e}"));
        assert!(out.status.success(), "{}", common::describe(&out));
    }
}

// --- JSON and LuCI ---------------------------------------------------------------------------

#[test]
fn acl_files_parse_and_grant_the_bpfqos_object() {
    for (rel, group) in [
        ("files/usr/share/rpcd/acl.d/bpfqos.json", "bpfqos"),
        (
            "openwrt/luci-app-bpfqos/root/usr/share/rpcd/acl.d/luci-app-bpfqos.json",
            "luci-app-bpfqos",
        ),
    ] {
        let acl = json(rel);
        let g = &acl[group];
        assert!(g.is_object(), "{rel}: no group {group}");
        assert!(g["description"].is_string(), "{rel}: description");
        let methods = acl_bpfqos_methods(&acl);
        for m in ["status", "reload", "check_config"] {
            assert!(methods.contains(m), "{rel}: ubus bpfqos.{m} not granted");
        }
        // Reading status must not need write access; reloading must.
        let read: Vec<&str> = g["read"]["ubus"]["bpfqos"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(
            read.contains(&"status") && !read.contains(&"reload"),
            "{rel}"
        );
        for access in ["read", "write"] {
            assert!(
                g[access]["uci"]
                    .as_array()
                    .is_some_and(|u| u.iter().any(|c| c == "bpfqos")),
                "{rel}: {access} access to uci bpfqos"
            );
        }
    }
}

#[test]
fn luci_menu_points_at_existing_views() {
    let menu = json(&format!(
        "{LUCI_APP}/root/usr/share/luci/menu.d/luci-app-bpfqos.json"
    ));
    let views_dir = format!("{LUCI_APP}/htdocs/luci-static/resources/view");
    let mut referenced = BTreeSet::new();
    let entries = menu
        .as_object()
        .unwrap_or_else(|| panic!("menu.d is not an object"));
    assert!(!entries.is_empty());
    for (path, entry) in entries {
        assert!(path.starts_with("admin/"), "{path}");
        assert!(entry["title"].is_string(), "{path}: title");
        if entry["action"]["type"] == "view" {
            let view = entry["action"]["path"]
                .as_str()
                .unwrap_or_else(|| panic!("{path}: view without path"));
            let file = format!("{views_dir}/{view}.js");
            assert!(repo().join(&file).is_file(), "{path}: {file} missing");
            referenced.insert(file);
        }
    }
    let mut views = Vec::new();
    walk(&repo().join(&views_dir), &mut views);
    for v in views {
        let rel = v
            .strip_prefix(repo())
            .unwrap_or(&v)
            .to_string_lossy()
            .into_owned();
        assert!(referenced.contains(&rel), "{rel} is not in the menu");
    }
    // The top entry is guarded by the app's ACL group.
    let top = &menu["admin/network/bpfqos"];
    assert!(top["depends"]["acl"]
        .as_array()
        .is_some_and(|a| a.iter().any(|g| g == "luci-app-bpfqos")));
}

#[test]
fn luci_app_recipe_and_views() {
    let mk = read(&format!("{LUCI_APP}/Makefile"));
    assert!(mk
        .lines()
        .any(|l| l.trim() == "include $(TOPDIR)/feeds/luci/luci.mk"));
    assert!(makefile_var(&mk, "LUCI_DEPENDS").is_some_and(|d| d.contains("+bpfqos")));
    assert_eq!(makefile_var(&mk, "LUCI_PKGARCH").as_deref(), Some("all"));

    let views = format!("{LUCI_APP}/htdocs/luci-static/resources/view/bpfqos");
    let status = read(&format!("{views}/status.js"));
    let config = read(&format!("{views}/config.js"));
    for (name, src, requires) in [
        ("status.js", &status, &["view", "rpc", "poll"][..]),
        ("config.js", &config, &["view", "form", "uci"][..]),
    ] {
        assert!(src.starts_with("'use strict';\n"), "{name}");
        for r in requires {
            assert!(
                src.contains(&format!("'require {r}';")),
                "{name}: require {r}"
            );
        }
    }
    // The status page asks the ubus object the package's plugin serves.
    assert!(status.contains("object: 'bpfqos'") && status.contains("method: 'status'"));
    assert!(status.contains("poll.add("));
    // The form covers the three section types of /etc/config/bpfqos.
    assert!(config.contains("new form.Map('bpfqos'"));
    // Every option the daemon accepts can be set in the form.
    for (section, options) in bpfqos::config::OPTIONS {
        for o in *options {
            assert!(
                config.contains(&format!("'{o}'")),
                "config.js: option {o} of config {section} missing"
            );
        }
    }
    for s in ["'globals'", "'interface'", "'circuit'"] {
        assert!(config.contains(s), "config.js: section {s}");
    }
}

#[test]
fn luci_views_are_valid_javascript() {
    let test = "luci_views_are_valid_javascript";
    let Some(node) = which("node").or_else(|| which("nodejs")) else {
        missing(test, "node (Debian package nodejs)");
        return;
    };
    // LuCI evaluates a view as a function body (it ends in `return view.extend(...)`), so
    // parse it the same way; the 'require' strings are plain expression statements.
    let views = repo().join(format!(
        "{LUCI_APP}/htdocs/luci-static/resources/view/bpfqos"
    ));
    for name in ["status.js", "config.js"] {
        let out = Command::new(&node)
            .arg("-e")
            .arg("new Function(require('fs').readFileSync(process.argv[1], 'utf8'))")
            .arg(views.join(name))
            .output()
            .unwrap_or_else(|e| panic!("node: {e}"));
        assert!(out.status.success(), "{name}: {}", common::describe(&out));
    }
}

#[test]
fn luci_status_view_renders_whatever_the_daemon_sends() {
    let test = "luci_status_view_renders_whatever_the_daemon_sends";
    if which("node").or_else(|| which("nodejs")).is_none() {
        missing(test, "node (Debian package nodejs)");
        return;
    }
    let dir = common::TempDir::new("luci-view-");
    // The daemon is down: the rpcd plugin answers with an error.
    let down = dir.write(
        "down.json",
        r#"{"error": "bpfqos: talking to the daemon: No such file"}"#,
    );
    let text = render_status_view(&[down.to_str().unwrap_or_default()]);
    assert!(text.contains("not running"), "{text}");
    assert!(render_status_view(&["null"]).contains("not running"));
    // A daemon from before shaping (no shaper, circuits or shaping sections), and fields of
    // unexpected types: rendered, nothing thrown.
    let old = dir.write(
        "old.json",
        r#"{"version": "0.0.9", "uptime_s": 5, "offload": {"enabled": true, "bytes": 1000},
            "interfaces": [{"name": "wan", "device": "eth1", "offload": true}],
            "attach": [{"device": "eth1", "ifindex": 3, "hook": "xdp", "mode": "native"}],
            "flows": "not a list", "circuits": {"also": "wrong"}, "datapath": null}"#,
    );
    let text = render_status_view(&[old.to_str().unwrap_or_default()]);
    assert!(text.contains("eth1") && text.contains("0.0.9"), "{text}");
    assert!(!text.contains("Shaper:"), "{text}");
    // Shaping and circuits, two polls 5 s apart: rates from the byte counters, a chart, tins.
    let doc = |up: u64, guest: u64| {
        format!(
            r#"{{"version": "0.1.0", "offload": {{"enabled": true, "bytes": {up}}},
            "interfaces": [{{"name": "wan", "upload_kbit": 8000, "download_kbit": 0,
              "shaper": {{"upload": {{"device": "pppoe-wan", "qdisc": "cake", "rate_kbit": 8000,
                "bytes": {up}, "packets": 10, "drops": 1, "ecn_marks": null, "backlog_bytes": 0,
                "backlog_packets": 0, "circuit_classes": 1,
                "tins": [{{"bytes": 1}}, {{"bytes": 2, "avg_delay_us": 1500}}]}}}}}}],
            "circuits": [{{"name": "guest", "ips": ["198.18.1.50"], "upload_kbit": 2000,
              "download_kbit": 0, "upload": {{"bytes": {guest}, "packets": 1, "drops": 0}},
              "download": null}}],
            "circuits_total": 1,
            "shaping": {{"datapath": {{"circuit_upload": 7}}, "circuit_nat_entries": 2}}}}"#
        )
    };
    let a = dir.write("a.json", &doc(1_000_000, 0));
    let b = dir.write("b.json", &doc(6_000_000, 1_250_000));
    let text = render_status_view(&[
        a.to_str().unwrap_or_default(),
        b.to_str().unwrap_or_default(),
    ]);
    // 5 MB in 5 s: 8 Mbit/s on the upload shaper, 100 % of its rate; 2 Mbit/s for guest.
    assert!(text.contains("Shaper: wan"), "{text}");
    assert!(text.contains("8.0 Mbit/s | 100%"), "{text}");
    assert!(
        text.contains("guest") && text.contains("2.0 Mbit/s"),
        "{text}"
    );
    assert!(text.contains("[chart]") && text.contains("Tin"), "{text}");
    assert!(
        text.contains("Connections of circuits behind NAT | 2"),
        "{text}"
    );
    assert!(
        !text.contains("Slowest connections"),
        "no rtt section: {text}"
    );

    // Passive latency: per interface (one side without samples: nulls), per connection, the
    // slowest halves, per circuit.
    let lat = dir.write(
        "lat.json",
        r#"{"version": "0.1.0", "offload": {"enabled": true},
            "interfaces": [{"name": "wan", "device": "wan0", "offload": true, "wan": true,
              "rtt": {"wan": {"min_us": 40100, "median_us": 41000, "p95_us": 45000, "samples": 120,
                              "packets": 1000, "retransmits": 20},
                      "lan": {"min_us": null, "median_us": null, "p95_us": null, "samples": 0}}}],
            "flows": [{"proto": "tcp", "orig": "tcp 198.18.1.11:40000 -> 198.19.0.1:443",
              "bytes": 10, "packets_orig": 1, "packets_reply": 1,
              "rtt": {"wan_us": 40500, "lan_us": 5200, "wan_min_us": 40100, "lan_min_us": 5000,
                      "samples": 30, "retransmits": 2}}],
            "circuits": [{"name": "guest", "ips": [], "rtt": {"wan": {"median_us": 42000,
              "samples": 3}, "lan": {"median_us": null, "samples": 0}}}],
            "rtt": {"enabled": true, "window_s": 30, "halves": 2, "halves_max": 16384,
              "samples": 150, "top": [{"src": "198.18.100.10:61000", "dst": "198.19.0.1:443",
              "side": "wan", "srtt_us": 40500, "min_us": 40100, "samples": 30,
              "retransmits": 2, "packets": 200}]}}"#,
    );
    let text = render_status_view(&[lat.to_str().unwrap_or_default()]);
    assert!(
        text.contains("wan (WAN)") && text.contains("40.1 / 41.0 / 45.0 ms (120), 2% resent"),
        "{text}"
    );
    assert!(text.contains("40.5 ms / 5.20 ms"), "per connection: {text}");
    assert!(
        text.contains("Slowest connections") && text.contains("198.18.100.10:61000"),
        "{text}"
    );
    assert!(text.contains("2 (1%)"), "retransmit rate: {text}");
    assert!(text.contains("42.0 ms / -"), "per circuit: {text}");

    // Autorate: one direction under it, the other fixed (null); its history and decisions;
    // and a broken one (wrong types) that must not throw.
    let ar = dir.write(
        "ar.json",
        r#"{"version": "0.1.0", "offload": {"enabled": true},
            "interfaces": [{"name": "wan", "upload_kbit": 2000, "download_kbit": 8000,
              "shaper": {"download": {"device": "bqd-wan", "qdisc": "cake", "rate_kbit": 7400}},
              "autorate": {"upload": null, "download": {"rate_kbit": 7400, "applied_kbit": 7400,
                "base_kbit": 8000, "min_kbit": 1600, "max_kbit": 9600, "achieved_kbit": 7100,
                "load_pct": 95}, "bloated": true, "threshold_us": 8000, "excess_p25_us": 12500,
                "excess_median_us": null, "samples": 4, "changes": 12, "cuts": 3, "failures": 0,
                "decisions": [{"ago_s": 0.6, "direction": "download", "from_kbit": 8000,
                  "to_kbit": 7400, "reason": "bufferbloat", "why": "latency 12.5 ms above base"}],
                "history": {"step_s": 2, "download_kbit": [8000, null, 7400],
                  "download_achieved_kbit": [7900, 7100, 7100], "excess_us": [null, 12500, 3000]}}},
              {"name": "wan2", "upload_kbit": 1000, "download_kbit": 0,
               "shaper": {"upload": {"device": "wan2", "qdisc": "cake", "rate_kbit": 1000}},
               "autorate": {"upload": 5, "decisions": "x", "history": null}}]}"#,
    );
    let text = render_status_view(&[ar.to_str().unwrap_or_default()]);
    assert!(text.contains("Autorate"), "{text}");
    assert!(text.contains("bufferbloat: cutting"), "{text}");
    assert!(text.contains("12.5 ms / -"), "excess, median null: {text}");
    assert!(
        text.contains("Download | 7.4 Mbit/s | 8.0 Mbit/s | 1.6 Mbit/s"),
        "{text}"
    );
    assert!(text.contains("95 %"), "{text}");
    assert!(text.contains("latency 12.5 ms above base"), "{text}");
    assert!(text.contains("No direction under autorate"), "{text}");

    // CPU steering: the per-device decisions, per-CPU counters (queue losses), a held PPPoE
    // session; and a broken section that must not throw.
    let sg = dir.write(
        "sg.json",
        r#"{"version": "0.1.0", "offload": {"enabled": true},
            "steering": {"mode": "auto", "active": true, "cpus": [0, 1], "queue": 1024,
              "problem": null,
              "devices": [{"device": "eth0", "steering": true, "in_place": true,
                "reason": "on: carries PPPoE, which NIC receive hashing does not look into"},
                {"device": "eth1", "steering": false, "in_place": false,
                 "reason": "off: receive VLAN offload is on"}],
              "per_cpu": [{"cpu": 0, "steered": 0, "kept": 500, "delivered": 0},
                {"cpu": 1, "steered": 700, "kept": 0, "delivered": 690}],
              "held_pppoe_sessions": [{"ifindex": 3, "session": 4660}]}}"#,
    );
    let text = render_status_view(&[sg.to_str().unwrap_or_default()]);
    assert!(text.contains("CPU steering"), "{text}");
    assert!(text.contains("yes (in place on its own CPU)"), "{text}");
    assert!(text.contains("receive VLAN offload is on"), "{text}");
    assert!(text.contains("1 | 700 | 0 | 690 | 10"), "per CPU: {text}");
    assert!(text.contains("PPPoE session 0x1234"), "{text}");
    let bad = dir.write(
        "sg-bad.json",
        r#"{"version": "0.1.0", "steering": {"devices": "x", "per_cpu": [null, 3], "cpus": 5,
            "held_pppoe_sessions": [{"a": 1}, null]}}"#,
    );
    let text = render_status_view(&[bad.to_str().unwrap_or_default()]);
    assert!(text.contains("CPU steering"), "{text}");
}

// --- the .ipk built from a cross binary (openwrt/cross/mkipk.py) ------------------------------

/// `tar -tzv` of `archive` (GNU tar as the oracle): (mode string, owner/group, path) per entry.
fn tar_listing(archive: &Path) -> Vec<(String, String, String)> {
    let out = Command::new("tar")
        .arg("-tzvf")
        .arg(archive)
        .arg("--numeric-owner")
        .output()
        .expect("run tar");
    assert!(out.status.success(), "tar -tzvf {}", archive.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (
                w[0].to_string(),
                w[1].to_string(),
                w[w.len() - 1].to_string(),
            )
        })
        .collect()
}

fn untar(archive: &Path, into: &Path) {
    std::fs::create_dir_all(into).expect("mkdir");
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(into)
        .status()
        .expect("run tar");
    assert!(st.success(), "tar -xzf {}", archive.display());
}

/// The .ipk holds exactly what the recipe's install block installs, with its macros' modes and
/// root ownership, the control fields OpenWrt writes, the recipe's conffiles and postinst; and
/// it is reproducible. Unpacked with tar, compared with this file's own reading of the recipe.
#[test]
fn ipk_holds_what_the_recipe_installs() {
    let test = "ipk_holds_what_the_recipe_installs";
    if which("tar").is_none() || which("python3").is_none() {
        missing(test, "tar and python3");
        return;
    }
    let dir = std::env::temp_dir().join(format!("bpfqos-ipk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let binary = dir.join("bpfqos-bin");
    let bin_bytes = b"\x7fELF not really: the packaging test's stand-in binary\n".to_vec();
    std::fs::write(&binary, &bin_bytes).expect("write binary");
    let build = |out: &str| -> std::path::PathBuf {
        let o = Command::new("python3")
            .arg(repo().join("openwrt/cross/mkipk.py"))
            .arg("--binary")
            .arg(&binary)
            .args(["--arch", "mips_24kc", "--out"])
            .arg(dir.join(out))
            .output()
            .expect("run mkipk.py");
        assert!(
            o.status.success(),
            "mkipk.py: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let ipk = build("a");
    let again = build("b");
    assert_eq!(
        std::fs::read(&ipk).expect("read ipk"),
        std::fs::read(&again).expect("read ipk"),
        "two builds differ: not reproducible"
    );

    let mk = package_makefile();
    let version = format!(
        "{}-r{}",
        required_var(&mk, "PKG_VERSION"),
        required_var(&mk, "PKG_RELEASE")
    );
    assert_eq!(
        ipk.file_name().and_then(|n| n.to_str()),
        Some(format!("bpfqos_{version}_mips_24kc.ipk").as_str())
    );
    let outer: Vec<String> = tar_listing(&ipk).into_iter().map(|e| e.2).collect();
    assert_eq!(
        outer,
        ["./debian-binary", "./data.tar.gz", "./control.tar.gz"],
        "opkg's member order"
    );
    let unpacked = dir.join("unpacked");
    untar(&ipk, &unpacked);
    assert_eq!(read_path(&unpacked.join("debian-binary")), "2.0\n");

    // data: exactly the recipe's files, modes by macro, owned by root, contents from the tree.
    let listing = tar_listing(&unpacked.join("data.tar.gz"));
    for (mode, owner, path) in &listing {
        assert_eq!(owner, "0/0", "{path} is not owned by root");
        if mode.starts_with('d') {
            assert_eq!(mode, "drwxr-xr-x", "directory {path}");
        }
    }
    let files: BTreeMap<String, String> = listing
        .iter()
        .filter(|e| e.0.starts_with('-'))
        .map(|e| (e.2.trim_start_matches('.').to_string(), e.0.clone()))
        .collect();
    let installed = installed_files(&mk, "bpfqos");
    let want: BTreeSet<String> = installed.iter().map(|f| f.dest.clone()).collect();
    assert_eq!(
        files.keys().cloned().collect::<BTreeSet<_>>(),
        want,
        "the .ipk's files against the recipe's install list"
    );
    let data = dir.join("data");
    untar(&unpacked.join("data.tar.gz"), &data);
    let mut size = 0;
    for f in &installed {
        let mode = match f.how.as_str() {
            "$(INSTALL_BIN)" => "-rwxr-xr-x",
            "$(INSTALL_CONF)" => "-rw-------",
            "$(INSTALL_DATA)" => "-rw-r--r--",
            other => panic!("install macro {other}: teach this test its mode"),
        };
        assert_eq!(files[&f.dest], mode, "mode of {}", f.dest);
        let got = std::fs::read(data.join(f.dest.trim_start_matches('/'))).expect("read file");
        let expected = match origin(&f.source) {
            Origin::File(rel) => std::fs::read(repo().join(rel)).expect("read source"),
            Origin::CargoBin(_) => bin_bytes.clone(),
        };
        assert_eq!(got, expected, "content of {}", f.dest);
        size += got.len();
    }

    // control: the fields OpenWrt's package-ipkg.mk writes, from the recipe.
    let control_dir = dir.join("control");
    untar(&unpacked.join("control.tar.gz"), &control_dir);
    let control = read_path(&control_dir.join("control"));
    let field = |name: &str| -> String {
        control
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("control lacks {name}:\n{control}"))
            .to_string()
    };
    assert_eq!(field("Package"), "bpfqos");
    assert_eq!(field("Version"), version);
    assert_eq!(field("Architecture"), "mips_24kc");
    assert_eq!(field("License"), required_var(&mk, "PKG_LICENSE"));
    assert_eq!(field("Installed-Size"), size.to_string());
    let pkg_block = define_block(&mk, "Package/bpfqos")
        .unwrap_or_else(|| panic!("no define Package/bpfqos"))
        .join("\n");
    let recipe_deps: BTreeSet<String> = pkg_block
        .split_whitespace()
        .filter_map(|w| w.strip_prefix('+'))
        .map(str::to_string)
        .collect();
    let ipk_deps: BTreeSet<String> = field("Depends")
        .split(',')
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty())
        .collect();
    assert!(recipe_deps.contains("kmod-sched-bpf"));
    assert_eq!(
        ipk_deps, recipe_deps,
        "Depends against the recipe's +packages"
    );
    let conffiles: Vec<String> = define_block(&mk, "Package/bpfqos/conffiles")
        .unwrap_or_else(|| panic!("no conffiles"))
        .iter()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let ipk_conffiles: Vec<String> = read_path(&control_dir.join("conffiles"))
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(ipk_conffiles, conffiles);
    let postinst_pkg = define_block(&mk, "Package/bpfqos/postinst")
        .unwrap_or_else(|| panic!("no postinst"))
        .join("\n")
        .replace("$$", "$");
    assert_eq!(
        read_path(&control_dir.join("postinst-pkg")).trim_end(),
        postinst_pkg.trim_end()
    );
    let scripts = tar_listing(&unpacked.join("control.tar.gz"));
    for script in ["./postinst", "./postinst-pkg", "./prerm"] {
        let e = scripts
            .iter()
            .find(|e| e.2 == script)
            .unwrap_or_else(|| panic!("control.tar.gz lacks {script}"));
        assert_eq!(e.0, "-rwxr-xr-x", "{script} must be executable");
    }
    assert!(read_path(&control_dir.join("postinst")).contains("default_postinst $0 $@"));
    assert!(read_path(&control_dir.join("prerm")).contains("default_prerm $0 $@"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn read_path(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

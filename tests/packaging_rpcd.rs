//! The rpcd exec-plugin contract, end to end: files/usr/libexec/rpcd/bpfqos run under dash and
//! busybox sh against the freshly built binary, as rpcd would run it (`list`, then
//! `call <method>` with JSON arguments on stdin). rpcd and ubusd are not available off OpenWrt,
//! so the test plays rpcd's part and checks what rpcd relies on.
//!
//! The plugin finds the binary through `BPFQOS_BIN` (unset on a router). The test points it at a
//! wrapper that appends `--socket <nonexistent> --config-dir <test dir>`, so no daemon running on
//! this machine can answer and the config under test is the one checked.

mod common;

use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::process::Output;
use std::process::Stdio;

use common::describe;
use common::json;
use common::packaging::acl_bpfqos_methods;
use common::packaging::posix_shells;
use common::packaging::required_var;
use common::packaging::PACKAGE_MAKEFILE;
use common::read;
use common::repo;
use common::TempDir;
use serde_json::Value;

const PLUGIN: &str = "files/usr/libexec/rpcd/bpfqos";

/// A wrapper around the built binary and the config directory it checks.
struct Setup {
    dir: TempDir,
    wrapper: PathBuf,
}

impl Setup {
    fn new(config: &str) -> Self {
        let dir = TempDir::new("bpfqos-rpcd");
        let confdir = dir.path().join("config");
        std::fs::create_dir(&confdir).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(confdir.join("bpfqos"), config).unwrap_or_else(|e| panic!("{e}"));
        let wrapper = dir.path().join("bpfqos");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec '{}' \"$@\" --socket '{}' --config-dir '{}'\n",
                env!("CARGO_BIN_EXE_bpfqos"),
                dir.path().join("no-daemon.sock").display(),
                confdir.display()
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
        Self { dir, wrapper }
    }

    /// Runs the plugin under `shell` with `args` and `stdin`, as rpcd does.
    fn plugin(&self, shell: &[PathBuf], args: &[&str], stdin: &str) -> Output {
        let plugin = repo().join(PLUGIN);
        let mut argv: Vec<&Path> = vec![&plugin];
        argv.extend(args.iter().map(Path::new));
        let mut child = common::packaging::shell_command(shell, &argv)
            .env("BPFQOS_BIN", &self.wrapper)
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        if let Some(mut input) = child.stdin.take() {
            // The plugin may exit without reading (usage errors): a broken pipe is fine.
            let _ = input.write_all(stdin.as_bytes());
        }
        child.wait_with_output().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The single JSON object rpcd requires on stdout, after a zero exit.
fn one_object(out: &Output, what: &str) -> serde_json::Map<String, Value> {
    assert!(
        out.status.success(),
        "{what}: rpcd wants exit 0: {}",
        describe(out)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut values = serde_json::Deserializer::from_str(&text).into_iter::<Value>();
    let first = values
        .next()
        .unwrap_or_else(|| panic!("{what}: no JSON on stdout: {}", describe(out)))
        .unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}): {}", describe(out)));
    assert!(
        values.next().is_none(),
        "{what}: more than one JSON value: {}",
        describe(out)
    );
    match first {
        Value::Object(o) => o,
        other => panic!("{what}: expected a JSON object, got {other}"),
    }
}

fn shipped_config() -> String {
    read("files/etc/config/bpfqos")
}

/// The shipped config with its commented-out examples (`#config ...` and their `#\t...` lines)
/// turned on; comments inside the examples (`#\t# ...`, `#\t#option ...`) stay comments.
fn example_config() -> String {
    shipped_config()
        .lines()
        .map(|l| {
            if l.starts_with("#config") || l.starts_with("#\t") {
                &l[1..]
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn list_is_rpcds_method_signature_map() {
    let setup = Setup::new(&shipped_config());
    let luci_methods = [
        "openwrt/luci-app-bpfqos/htdocs/luci-static/resources/view/bpfqos/status.js",
        "openwrt/luci-app-bpfqos/htdocs/luci-static/resources/view/bpfqos/config.js",
    ]
    .iter()
    .flat_map(|f| {
        read(f)
            .split("method: '")
            .skip(1)
            .filter_map(|rest| rest.split('\'').next().map(str::to_string))
            .collect::<Vec<_>>()
    })
    .collect::<Vec<_>>();
    assert!(!luci_methods.is_empty());
    for (name, shell) in posix_shells("list_is_rpcds_method_signature_map") {
        let methods = one_object(&setup.plugin(&shell, &["list"], ""), name);
        for m in ["status", "reload", "check_config"] {
            assert!(
                methods.contains_key(m),
                "{name}: list lacks {m}: {methods:?}"
            );
        }
        // Each method maps to its argument signature: an object of argument name to an example
        // value whose JSON type gives the blobmsg type (string, number, boolean, object, array).
        for (m, sig) in &methods {
            let sig = sig
                .as_object()
                .unwrap_or_else(|| panic!("{name}: signature of {m} is not an object: {sig}"));
            for (arg, ty) in sig {
                assert!(!ty.is_null(), "{name}: {m}.{arg} has type null");
            }
        }
        // Everything the ACLs grant and LuCI calls exists.
        for acl in [
            "files/usr/share/rpcd/acl.d/bpfqos.json",
            "openwrt/luci-app-bpfqos/root/usr/share/rpcd/acl.d/luci-app-bpfqos.json",
        ] {
            for m in acl_bpfqos_methods(&json(acl)) {
                assert!(methods.contains_key(&m), "{acl} grants unknown method {m}");
            }
        }
        for m in &luci_methods {
            assert!(methods.contains_key(m), "LuCI calls unknown method {m}");
        }
    }
}

#[test]
fn call_status_without_daemon_is_a_json_error() {
    let setup = Setup::new(&shipped_config());
    for (name, shell) in posix_shells("call_status_without_daemon_is_a_json_error") {
        // rpcd sends `{}` for a call without arguments; accept no input at all too.
        for stdin in ["{}", ""] {
            let what = format!("{name}, call status, stdin {stdin:?}");
            let reply = one_object(&setup.plugin(&shell, &["call", "status"], stdin), &what);
            assert!(
                reply.get("error").is_some_and(Value::is_string),
                "{what}: no error string: {reply:?}"
            );
        }
    }
}

#[test]
fn call_passes_stdin_through() {
    let setup = Setup::new(&shipped_config());
    for (name, shell) in posix_shells("call_passes_stdin_through") {
        let reply = one_object(&setup.plugin(&shell, &["call", "status"], "{nope"), name);
        let error = reply
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{name}: {reply:?}"));
        assert!(
            error.to_ascii_lowercase().contains("json"),
            "{name}: malformed arguments should be reported as such: {error}"
        );
    }
}

#[test]
fn call_check_config_accepts_the_shipped_config_and_its_examples() {
    for (label, config) in [
        ("shipped", shipped_config()),
        ("examples uncommented", example_config()),
    ] {
        assert!(
            label == "shipped" || config.contains("\nconfig interface 'wan'"),
            "the example interface section was not found in files/etc/config/bpfqos"
        );
        let setup = Setup::new(&config);
        for (name, shell) in posix_shells("call_check_config_accepts_the_shipped_config") {
            let what = format!("{name}, {label} config");
            let reply = one_object(
                &setup.plugin(&shell, &["call", "check_config"], "{}"),
                &what,
            );
            assert_eq!(
                reply.get("valid"),
                Some(&Value::Bool(true)),
                "{what}: {reply:?}\n{config}"
            );
        }
    }
    // And a broken one is reported, still as a JSON object with exit 0.
    let setup =
        Setup::new("config interface 'wan'\n\toption device 'eth1'\n\toption upload '40M'\n");
    for (name, shell) in posix_shells("call_check_config_reports_errors") {
        let reply = one_object(&setup.plugin(&shell, &["call", "check_config"], "{}"), name);
        assert_eq!(
            reply.get("valid"),
            Some(&Value::Bool(false)),
            "{name}: {reply:?}"
        );
        let errors = reply.get("errors").and_then(Value::as_array);
        assert!(
            errors.is_some_and(|e| e
                .iter()
                .any(|e| e.as_str().is_some_and(|s| s.contains("upload")))),
            "{name}: {reply:?}"
        );
    }
}

#[test]
fn plugin_usage_error_prints_no_json() {
    let setup = Setup::new(&shipped_config());
    for (name, shell) in posix_shells("plugin_usage_error_prints_no_json") {
        for args in [&[][..], &["frobnicate"][..]] {
            let out = setup.plugin(&shell, args, "");
            assert!(!out.status.success(), "{name} {args:?}: {}", describe(&out));
            assert!(out.stdout.is_empty(), "{name} {args:?}: {}", describe(&out));
        }
    }
}

#[test]
fn version_is_pkg_version() {
    let mk = read(PACKAGE_MAKEFILE);
    let version = required_var(&mk, "PKG_VERSION");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bpfqos"))
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        format!("bpfqos {version}")
    );
}

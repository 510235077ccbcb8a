//! files/etc/init.d/bpfqos run under dash and busybox sh, as /etc/rc.common would run it, with
//! real UCI and recorded procd calls.
//!
//! procd, ubusd and /lib/functions.sh are OpenWrt's and not available here. The harness
//! (tests/data/packaging/procd-harness.sh) stubs the `procd_*` functions so they record their
//! arguments, and implements `config_load`/`config_get`/`config_get_bool`/`config_foreach` as a
//! small, clearly labelled test shim on top of the real `uci` CLI, built from libuci's sources by
//! tests/tools/build-uci.sh. So the config file is parsed by real UCI; only the shell glue is
//! ours. Without that uci binary the tests skip, or fail under `CI=true`.

mod common;

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use common::describe;
use common::missing;
use common::packaging::posix_shells;
use common::read;
use common::repo;
use common::TempDir;

const INIT_SCRIPT: &str = "files/etc/init.d/bpfqos";
const HARNESS: &str = "tests/data/packaging/procd-harness.sh";

/// The uci oracle: `$UCI_BIN`, else `<target>/uci-oracle/bin/uci`, building it with
/// tests/tools/build-uci.sh (once per test process) when the script is there and the binary is
/// not.
fn uci(test: &str) -> Option<PathBuf> {
    static UCI: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = UCI.get_or_init(|| {
        if let Some(bin) = std::env::var_os("UCI_BIN").map(PathBuf::from) {
            return if bin.is_file() {
                Ok(bin)
            } else {
                Err(format!("the uci CLI at UCI_BIN={}", bin.display()))
            };
        }
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|t| if t.is_absolute() { t } else { repo().join(t) })
            .unwrap_or_else(|| repo().join("target"));
        let bin = target.join("uci-oracle/bin/uci");
        let build = repo().join("tests/tools/build-uci.sh");
        if !bin.is_file() && build.is_file() {
            let out = Command::new("bash")
                .arg(&build)
                .output()
                .map_err(|e| format!("{}: {e}", build.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "tests/tools/build-uci.sh failed: {}",
                    describe(&out)
                ));
            }
        }
        if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!(
                "the uci CLI ({}; see tests/tools/build-uci.sh)",
                bin.display()
            ))
        }
    });
    match found {
        Ok(bin) => Some(bin.clone()),
        Err(what) => {
            missing(test, what);
            None
        }
    }
}

/// One recorded call: function name and arguments.
type Call = Vec<String>;

/// Runs the init script through the harness for `action` with `config` as
/// `<confdir>/bpfqos`, under every available POSIX shell; returns each shell's recorded calls.
/// Asserts the runs succeeded, printed nothing, and agree across shells.
fn run(test: &str, config: &str, action: &str) -> Option<Vec<Call>> {
    let uci = uci(test)?;
    let shells = posix_shells(test);
    if shells.is_empty() {
        return None;
    }
    let mut results: Vec<(&str, Vec<Call>)> = Vec::new();
    for (name, argv) in &shells {
        let dir = TempDir::new("bpfqos-init");
        let confdir = dir.path().join("config");
        std::fs::create_dir(&confdir).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(confdir.join("bpfqos"), config).unwrap_or_else(|e| panic!("{e}"));
        let log = dir.path().join("procd.log");
        std::fs::write(&log, "").unwrap_or_else(|e| panic!("{e}"));
        let out = common::packaging::shell_command(
            argv,
            &[
                &repo().join(HARNESS),
                &repo().join(INIT_SCRIPT),
                Path::new(action),
            ],
        )
        .env("UCI_BIN", &uci)
        .env("UCI_CONFIG_DIR", &confdir)
        .env("PROCD_LOG", &log)
        .output()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "{name}, {action}: {}",
            describe(&out)
        );
        let calls = std::fs::read_to_string(&log)
            .unwrap_or_else(|e| panic!("{e}"))
            .lines()
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect();
        results.push((name, calls));
    }
    let (first_name, first) = &results[0];
    for (name, calls) in &results[1..] {
        assert_eq!(calls, first, "{name} and {first_name} disagree");
    }
    Some(first.clone())
}

fn calls_named<'a>(calls: &'a [Call], name: &str) -> Vec<&'a [String]> {
    calls
        .iter()
        .filter(|c| c[0] == name)
        .map(|c| &c[1..])
        .collect()
}

/// `procd_set_param <param> ...` values within the one instance, asserting there is exactly one.
fn single_instance(calls: &[Call]) -> Vec<&[String]> {
    let opens: Vec<usize> = (0..calls.len())
        .filter(|&i| calls[i][0] == "procd_open_instance")
        .collect();
    assert_eq!(opens.len(), 1, "expected one instance: {calls:?}");
    let close = (opens[0]..calls.len())
        .find(|&i| calls[i][0] == "procd_close_instance")
        .unwrap_or_else(|| panic!("instance never closed: {calls:?}"));
    calls[opens[0] + 1..close]
        .iter()
        .filter(|c| c[0] == "procd_set_param")
        .map(|c| &c[1..])
        .collect()
}

fn param<'a>(params: &[&'a [String]], name: &str) -> Option<&'a [String]> {
    params.iter().find(|p| p[0] == name).map(|p| &p[1..])
}

fn shipped_config() -> String {
    read("files/etc/config/bpfqos")
}

fn with_enabled(value: &str) -> String {
    format!("config globals 'globals'\n\toption enabled '{value}'\n\toption offload '1'\n")
}

#[test]
fn sourcing_runs_nothing() {
    let Some(calls) = run("sourcing_runs_nothing", &shipped_config(), "source") else {
        return;
    };
    assert!(calls.is_empty(), "{calls:?}");
    let script = read(INIT_SCRIPT);
    assert!(script.starts_with("#!/bin/sh /etc/rc.common\n"));
    assert!(script.lines().any(|l| l == "USE_PROCD=1"));
}

#[test]
fn enabled_config_starts_one_supervised_daemon() {
    let Some(calls) = run(
        "enabled_config_starts_one_supervised_daemon",
        &shipped_config(),
        "start",
    ) else {
        return;
    };
    let params = single_instance(&calls);
    let command = param(&params, "command").unwrap_or_else(|| panic!("no command: {params:?}"));
    assert_eq!(command[..2], ["/usr/sbin/bpfqos", "daemon"], "{command:?}");
    // The daemon's own defaults (/etc/config, /var/run/bpfqos.sock, /sys/fs/bpf/bpfqos) are the
    // router's paths; any extra argument must be one of its options.
    for arg in &command[2..] {
        assert!(
            ["--config-dir", "--socket", "--pin-dir"].contains(&arg.as_str())
                || !arg.starts_with('-'),
            "unexpected daemon argument {arg}"
        );
    }
    assert!(param(&params, "respawn").is_some(), "respawn not set");
    assert_eq!(
        param(&params, "stderr"),
        Some(&["1".to_string()][..]),
        "stderr to syslog"
    );
    // A config change reloads through procd's config trigger.
    assert_eq!(
        calls_named(&calls, "procd_add_reload_trigger"),
        vec![&["bpfqos".to_string()][..]]
    );
    // The shipped config names no network: no interface trigger.
    assert!(calls_named(&calls, "procd_add_interface_trigger").is_empty());
}

#[test]
fn enabled_spellings_and_default() {
    for (value, runs) in [
        ("1", true),
        ("yes", true),
        ("on", true),
        ("true", true),
        ("0", false),
        ("off", false),
        ("no", false),
        ("false", false),
    ] {
        let Some(calls) = run(
            "enabled_spellings_and_default",
            &with_enabled(value),
            "start",
        ) else {
            return;
        };
        let instances = calls_named(&calls, "procd_open_instance").len();
        assert_eq!(instances, usize::from(runs), "enabled '{value}': {calls:?}");
        // Disabled or not, the reload trigger is registered, so enabling it later (uci set +
        // commit, or LuCI) starts the daemon.
        assert_eq!(calls_named(&calls, "procd_add_reload_trigger").len(), 1);
    }
    // Without the option (or the whole globals section) the daemon runs: the package ships
    // enabled, and the daemon's own default is the same.
    for config in ["config globals 'globals'\n\toption offload '1'\n", ""] {
        let Some(calls) = run("enabled_spellings_and_default", config, "start") else {
            return;
        };
        assert_eq!(
            calls_named(&calls, "procd_open_instance").len(),
            1,
            "{config:?}"
        );
    }
}

#[test]
fn networks_get_interface_triggers() {
    let config = "\
config globals 'globals'
\toption enabled '1'

config interface 'wan'
\toption network 'wan'
\toption upload '40000'

config interface
\toption device 'eth1'

config interface 'lte'
\toption network 'wwan'
";
    let Some(calls) = run("networks_get_interface_triggers", config, "start") else {
        return;
    };
    let triggers: Vec<Vec<&str>> = calls_named(&calls, "procd_add_interface_trigger")
        .iter()
        .map(|args| args.iter().map(String::as_str).collect())
        .collect();
    let expected: Vec<Vec<&str>> = ["wan", "wwan"]
        .iter()
        .map(|n| vec!["interface.*.up", n, "/etc/init.d/bpfqos", "reload"])
        .collect();
    assert_eq!(triggers, expected, "{calls:?}");
    // Triggers are declared inside the trigger list rc.common opens.
    let open = calls.iter().position(|c| c[0] == "procd_open_trigger");
    let close = calls.iter().position(|c| c[0] == "procd_close_trigger");
    for (i, c) in calls.iter().enumerate() {
        if c[0].starts_with("procd_add_") {
            assert!(open < Some(i) && Some(i) < close, "{c:?} outside triggers");
        }
    }
}

#[test]
fn reload_signals_the_daemon() {
    let Some(calls) = run("reload_signals_the_daemon", &shipped_config(), "reload") else {
        return;
    };
    // `start` first (procd adds or drops the instance if `enabled` changed; an unchanged
    // instance keeps running), then SIGHUP: the daemon re-reads its config in place.
    let names: Vec<&str> = calls.iter().map(|c| c[0].as_str()).collect();
    assert_eq!(names, ["start", "procd_send_signal"], "{calls:?}");
    assert_eq!(calls[1][1..], ["bpfqos", "*", "HUP"]);
}

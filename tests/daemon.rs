//! The daemon's life cycle, end to end, as root in a throw-away namespace: start, attach XDP to
//! the configured devices, answer status, reload (good and bad config), exit cleanly on SIGTERM
//! leaving nothing attached or pinned. `ip` is the independent oracle for what is attached.

mod common;

use std::time::Duration;

use common::daemon::Daemon;
use common::netns::Bpffs;
use common::netns::Netns;
use common::TempDir;

fn config(devices: &[&str]) -> String {
    let mut s = String::from(
        "config globals 'globals'\n\toption enabled '1'\n\toption offload '1'\n\toption log_level 'debug'\n",
    );
    for (i, d) in devices.iter().enumerate() {
        s.push_str(&format!(
            "\nconfig interface 'if{i}'\n\toption device '{d}'\n"
        ));
    }
    s
}

/// The XDP program id attached to `dev` in `ns`, from `ip -j -d link` (the oracle).
fn xdp_attached(ns: &Netns, dev: &str) -> Option<String> {
    let out = ns.ip(&["-j", "-d", "link", "show", "dev", dev]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let xdp = v.get(0)?.get("xdp")?;
    Some(xdp.get("mode").map(|m| m.to_string()).unwrap_or_default())
}

fn veth_pair(ns: &Netns) {
    ns.ip(&[
        "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p",
    ]);
    ns.ip(&[
        "link", "add", "wan0", "type", "veth", "peer", "name", "wan0p",
    ]);
    for d in ["lan0", "lan0p", "wan0", "wan0p"] {
        ns.ip(&["link", "set", d, "up"]);
    }
}

/// A test's world: a namespace (with the lan0/wan0 veth pairs if asked), a work directory
/// holding the `bpfqos` config, and a private bpffs with the daemon's pin directory in it.
/// Fields drop in declaration order: the namespace goes last.
struct World {
    pin_dir: std::path::PathBuf,
    config_dir: std::path::PathBuf,
    /// Mounted while the world lives.
    _bpffs: Bpffs,
    work: TempDir,
    ns: Netns,
}

impl World {
    /// Starts `bpfqos daemon` in the namespace with the world's config and pin directory.
    fn start(&self, extra: &[&str]) -> Daemon {
        Daemon::start(
            Some(&self.ns),
            &self.config_dir,
            &self.pin_dir,
            &self.work.path,
            extra,
        )
    }
}

fn world(tag: &str, veths: bool, bpfqos_config: &str) -> World {
    let ns = Netns::new(&format!("bq{tag}"));
    if veths {
        veth_pair(&ns);
    }
    let work = TempDir::new(&format!("bpfqos-{tag}-"));
    let bpffs = Bpffs::new();
    let cfg = work.write("bpfqos", bpfqos_config);
    let config_dir = cfg.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    let pin_dir = bpffs.dir.join("bpfqos");
    World {
        ns,
        work,
        _bpffs: bpffs,
        config_dir,
        pin_dir,
    }
}

#[test]
fn daemon_lifecycle_attach_status_reload_exit() {
    if !common::require_root("daemon_lifecycle_attach_status_reload_exit") {
        return;
    }
    let w = world("d", true, &config(&["lan0"]));

    let mut d = w.start(&[]);
    let st = d.status();
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    assert!(st["uptime_s"].is_u64());
    assert_eq!(st["offload"]["enabled"], true, "{st}");
    assert_eq!(st["attach"].as_array().map(Vec::len), Some(1), "{st}");
    assert_eq!(st["attach"][0]["device"], "lan0");
    assert_eq!(st["attach"][0]["hook"], "xdp");
    assert_eq!(
        st["attach"][0]["mode"], "native",
        "veth supports native XDP: {st}"
    );
    assert!(
        xdp_attached(&w.ns, "lan0").is_some(),
        "ip link shows no XDP on lan0"
    );
    assert!(xdp_attached(&w.ns, "wan0").is_none());
    // Maps are pinned for re-adoption after a restart.
    assert!(w.pin_dir.join("control").exists(), "control map not pinned");
    // The event loop reports its longest handler (the status request just answered counts).
    let ev = d.status()["event_loop"].clone();
    assert!(ev["handled"].as_u64().is_some_and(|n| n >= 1), "{ev}");
    assert!(
        ev["max_ms"].as_f64().is_some_and(|m| m >= 0.0) && ev["max_what"].is_string(),
        "{ev}"
    );

    // Human status names the attach point.
    let out = d.client(&["status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("lan0") && text.contains("native"), "{text}");

    // A bad config is rejected by `reload`, with file, line and option; the running one stays.
    let bad = config(&["lan0"]).replace("option log_level 'debug'", "option log_level 'loud'");
    w.work.write("bpfqos", &bad);
    let out = d.client(&["reload"]);
    assert!(!out.status.success(), "bad reload must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    let cfg = w.config_dir.join("bpfqos");
    assert!(err.contains(&format!("{}:4:", cfg.display())), "{err}");
    assert!(err.contains("log_level"), "{err}");
    let st = d.status();
    assert_eq!(st["attach"].as_array().map(Vec::len), Some(1));
    assert!(st["config"]["last_reload_error"]
        .as_str()
        .is_some_and(|e| e.contains("log_level")));
    assert!(
        xdp_attached(&w.ns, "lan0").is_some(),
        "bad reload must not detach"
    );

    // A good config via SIGHUP: wan0 is attached too.
    w.work.write("bpfqos", &config(&["lan0", "wan0"]));
    d.signal("HUP");
    let ok = common::wait_for(Duration::from_secs(5), || {
        d.status()["attach"].as_array().map(Vec::len) == Some(2)
    });
    assert!(ok, "SIGHUP reload did not attach wan0: {}", d.status());
    assert!(xdp_attached(&w.ns, "wan0").is_some());
    assert_eq!(d.status()["config"]["reloads"], 1);
    assert!(d.status()["config"].get("last_reload_error").is_none());

    // Removing an interface from the config detaches it on `reload`.
    w.work.write("bpfqos", &config(&["wan0"]));
    assert!(d.client(&["reload"]).status.success());
    assert!(
        xdp_attached(&w.ns, "lan0").is_none(),
        "lan0 still attached after removal"
    );

    // SIGTERM: clean exit, nothing left attached, pinned or listening.
    d.signal("TERM");
    assert_eq!(
        d.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        d.log_text()
    );
    assert!(
        xdp_attached(&w.ns, "wan0").is_none(),
        "XDP left attached after exit"
    );
    assert!(!w.pin_dir.join("control").exists(), "pins left after exit");
    assert!(!d.socket.exists(), "socket left after exit");
}

#[test]
fn keep_leaves_attached_and_restart_readopts() {
    if !common::require_root("keep_leaves_attached_and_restart_readopts") {
        return;
    }
    let w = world("k", true, &config(&["lan0"]));

    let mut d = w.start(&["--keep"]);
    d.signal("TERM");
    assert_eq!(
        d.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        d.log_text()
    );
    assert!(
        xdp_attached(&w.ns, "lan0").is_some(),
        "--keep must leave XDP attached"
    );
    assert!(
        w.pin_dir.join("control").exists(),
        "--keep must leave maps pinned"
    );

    let mut d2 = w.start(&[]);
    // The socket is bound before the data path is loaded; status answers once the loop runs.
    assert_eq!(d2.status()["attach"][0]["device"], "lan0");
    assert!(
        d2.log_text().contains("re-adopted pinned maps"),
        "{}",
        d2.log_text()
    );
    // All of the flow tables' maps (and the seeds in `control`) came back, not only some.
    assert!(
        d2.log_text().contains("flow tables adopted"),
        "{}",
        d2.log_text()
    );
    assert_eq!(d2.status()["attach"][0]["device"], "lan0");
    d2.signal("TERM");
    assert_eq!(d2.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(xdp_attached(&w.ns, "lan0").is_none());
}

#[test]
fn missing_device_is_reported_not_fatal() {
    if !common::require_root("missing_device_is_reported_not_fatal") {
        return;
    }
    let w = world("m", false, &config(&["nosuch0"]));
    let d = w.start(&[]);
    let st = d.status();
    assert_eq!(st["attach"].as_array().map(Vec::len), Some(0));
    assert!(
        st["interfaces"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no such device")),
        "{st}"
    );
    // The device appears later (hotplug): it gets attached without a reload.
    w.ns.ip(&[
        "link", "add", "nosuch0", "type", "veth", "peer", "name", "nosuch0p",
    ]);
    w.ns.ip(&["link", "set", "nosuch0", "up"]);
    let ok = common::wait_for(Duration::from_secs(5), || {
        d.status()["attach"].as_array().map(Vec::len) == Some(1)
    });
    assert!(ok, "late device not attached: {}", d.status());
}

/// `option network`: resolved from the network config beside ours (netifd's naming, `@alias`
/// included), then walked down to the lowest devices like `option device`; what cannot be
/// resolved is reported. (No 8021q/ppp on the host: VLAN and PPPoE names are unit-tested.)
#[test]
fn logical_networks_resolve_through_etc_config_network() {
    if !common::require_root("logical_networks_resolve_through_etc_config_network") {
        return;
    }
    let w = world(
        "n",
        true,
        "config globals 'globals'\n\toption enabled '1'\n\toption offload '1'\n\
         \nconfig interface 'lan'\n\toption network 'lan'\n\
         \nconfig interface 'wan'\n\toption network 'wan6'\n\
         \nconfig interface 'lte'\n\toption network 'lte'\n",
    );
    w.ns.ip(&["link", "add", "br-lan", "type", "bridge"]);
    w.ns.ip(&["link", "set", "lan0", "master", "br-lan"]);
    w.ns.ip(&["link", "set", "br-lan", "up"]);
    w.work.write(
        "network",
        "config device\n\toption name 'br-lan'\n\toption type 'bridge'\n\tlist ports 'lan0'\n\
         \nconfig interface 'lan'\n\toption device 'br-lan'\n\toption proto 'static'\n\
         \nconfig interface 'wan'\n\toption device 'wan0'\n\toption proto 'dhcp'\n\
         \nconfig interface 'wan6'\n\toption device '@wan'\n\toption proto 'dhcpv6'\n\
         \nconfig interface 'lte'\n\toption proto 'qmi'\n\toption device '/dev/cdc-wdm0'\n",
    );

    // check-config says what each network is, and warns about the one it cannot resolve.
    let out = std::process::Command::new(common::daemon::bpfqos_bin())
        .args(["check-config", "--config-dir"])
        .arg(&w.config_dir)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("interface 'lan': network 'lan' is device 'br-lan'"),
        "{stdout}"
    );
    assert!(
        stdout.contains("interface 'wan': network 'wan6' is device 'wan0'"),
        "{stdout}"
    );
    assert!(
        stderr.contains("warning: interface 'lte': network 'lte':")
            && stderr.contains("proto 'qmi'"),
        "{stderr}"
    );

    let d = w.start(&[]);
    let st = d.status();
    let mut attached: Vec<&str> = st["attach"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["device"].as_str()).collect())
        .unwrap_or_default();
    attached.sort_unstable();
    // br-lan's port (the lowest device) and the alias's device.
    assert_eq!(attached, ["lan0", "wan0"], "{st}");
    assert!(xdp_attached(&w.ns, "lan0").is_some() && xdp_attached(&w.ns, "wan0").is_some());
    let iface = |name: &str| {
        st["interfaces"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["name"] == name))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(iface("lan")["device"], "br-lan", "{st}");
    assert_eq!(iface("wan")["device"], "wan0", "{st}");
    assert!(
        iface("lan")["error"].is_null() && iface("wan")["error"].is_null(),
        "{st}"
    );
    assert!(
        iface("lte")["error"]
            .as_str()
            .is_some_and(|e| e.contains("proto 'qmi' gets its device from netifd")),
        "{st}"
    );
}

#[test]
fn clients_without_daemon_fail_clearly() {
    let sock = std::env::temp_dir().join(common::unique("bpfqos-nosock-"));
    let out = std::process::Command::new(common::daemon::bpfqos_bin())
        .args(["status", "--socket"])
        .arg(&sock)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
    let out = std::process::Command::new(common::daemon::bpfqos_bin())
        .args(["status", "--json", "--socket"])
        .arg(&sock)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(v["running"], false, "{v}");
}

#[test]
fn rpcd_contract() {
    let out = std::process::Command::new(common::daemon::bpfqos_bin())
        .args(["rpcd", "list"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    for m in ["status", "reload", "check_config"] {
        assert!(v[m].is_object(), "{m} missing from {v}");
    }
    let out = std::process::Command::new(common::daemon::bpfqos_bin())
        .args([
            "rpcd",
            "call",
            "status",
            "--socket",
            "/nonexistent/bpfqos.sock",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "rpcd wants exit 0 and a JSON error");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(v["error"].is_string(), "{v}");
}

#[test]
fn version_matches_cargo() {
    let out = std::process::Command::new(common::daemon::bpfqos_bin())
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("bpfqos {}", env!("CARGO_PKG_VERSION"))
    );
}

/// One raw request on the control socket: writes `bytes`, returns the reply line (or "" when
/// the daemon closed without one). Bounded by a 10 s read timeout.
fn raw_request(socket: &std::path::Path, bytes: &[u8]) -> String {
    use std::io::BufRead;
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("read timeout: {e}"));
    s.write_all(bytes)
        .unwrap_or_else(|e| panic!("write request: {e}"));
    let mut line = String::new();
    let _ = std::io::BufReader::new(s).read_line(&mut line);
    line
}

/// Hostile or broken clients of the control socket (issue 17): an oversized line, invalid JSON,
/// bytes that are not UTF-8 and an unknown command get clear error replies; a pile of clients
/// that connect and say nothing gets "busy" past the connection limit without starving a real
/// client once they go; a flood of requests is answered with memory bounded. Pinned maps and
/// their directory are root-only, the socket too.
#[test]
fn control_socket_survives_hostile_clients() {
    use std::os::unix::fs::PermissionsExt;
    if !common::require_root("control_socket_survives_hostile_clients") {
        return;
    }
    let w = world("h", true, &config(&["lan0"]));
    let d = w.start(&[]);
    // The socket answers once the data plane is set up and its maps pinned.
    assert_eq!(d.status()["attach"].as_array().map(Vec::len), Some(1));
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    };
    assert_eq!(mode(&w.pin_dir), 0o700, "pin directory");
    assert_eq!(mode(&w.pin_dir.join("control")), 0o600, "pinned map");
    assert_eq!(mode(&d.socket), 0o600, "control socket");

    let long = vec![b'x'; 70_000];
    let r = raw_request(&d.socket, &long);
    assert!(r.contains("longer than 65536 bytes"), "oversized line: {r}");
    for (what, req) in [
        ("invalid JSON", &b"{not json\n"[..]),
        ("not UTF-8", &b"\xff\xfe\xfd\n"[..]),
        ("unknown command", &b"{\"cmd\":\"format_disk\"}\n"[..]),
        ("wrong type", &b"[1,2,3]\n"[..]),
    ] {
        let r = raw_request(&d.socket, req);
        let v: serde_json::Value = serde_json::from_str(&r).unwrap_or_default();
        assert!(
            v["error"]
                .as_str()
                .is_some_and(|e| e.contains("bad request")),
            "{what}: {r}"
        );
    }

    // 40 silent clients: the first 32 hold every slot, the rest are told "busy" at once.
    let mut silent = Vec::new();
    let mut busy = 0;
    for _ in 0..40 {
        let s = std::os::unix::net::UnixStream::connect(&d.socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        silent.push(s);
    }
    for s in &silent {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line);
        if line.contains("busy") {
            busy += 1;
        }
    }
    assert_eq!(
        busy, 8,
        "connections past the limit of 32 must be told busy"
    );
    drop(silent);
    let answered = common::wait_for(Duration::from_secs(5), || {
        raw_request(&d.socket, b"{\"cmd\":\"status\"}\n").contains("\"version\"")
    });
    assert!(
        answered,
        "status not answered after the silent clients left"
    );

    // A flood: 500 status requests back to back, all answered, memory flat.
    let pid = d.child.as_ref().map(|c| c.id()).unwrap_or(0);
    for _ in 0..200 {
        raw_request(&d.socket, b"{\"cmd\":\"status\"}\n");
    }
    let before = common::rss_kib(pid);
    let mut ok = 0;
    for _ in 0..500 {
        if raw_request(&d.socket, b"{\"cmd\":\"status\"}\n").contains("\"version\"") {
            ok += 1;
        }
    }
    let after = common::rss_kib(pid);
    assert_eq!(ok, 500, "every request of the flood answered");
    assert!(
        before > 0 && after < before + 2048,
        "RSS grew from {before} KiB to {after} KiB over 500 requests"
    );
    assert!(d.log_text().lines().all(|l| !l.contains("panicked")));
}

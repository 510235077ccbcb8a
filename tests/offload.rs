//! Flow offload end to end on the host kernel: a namespace router (LAN bridge, NAT to a WAN
//! port) running the daemon, real TCP and UDP through it, checked from outside: payload hashes
//! (xfer.py), the peer address the server saw (NAT), the TTL it received, `conntrack`, and the
//! daemon's own counters. Root only.

mod harness;

use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;

use harness::Bpffs;
use harness::Daemon;
use harness::Netns;
use harness::TempDir;

fn xfer() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vm/tools/xfer.py")
}

/// LAN client — router (br-lan with port lan1, wan0, masquerade) — WAN server.
struct Lab {
    lan: Netns,
    rtr: Netns,
    srv: Netns,
    work: TempDir,
    _bpffs: Bpffs,
    pin_dir: PathBuf,
}

impl Lab {
    fn new(tag: &str) -> Self {
        let lan = Netns::new(&format!("{tag}l"));
        let rtr = Netns::new(&format!("{tag}r"));
        let srv = Netns::new(&format!("{tag}s"));
        lan.ip(&[
            "link", "add", "c0", "type", "veth", "peer", "name", "lan1", "netns", &rtr.name,
        ]);
        srv.ip(&[
            "link", "add", "s0", "type", "veth", "peer", "name", "wan0", "netns", &rtr.name,
        ]);
        rtr.ip(&["link", "add", "br-lan", "type", "bridge"]);
        rtr.ip(&["link", "set", "lan1", "master", "br-lan"]);
        rtr.sh(
            "for d in lan1 br-lan wan0; do ip link set $d up; done
             ip addr add 198.18.1.1/24 dev br-lan
             ip addr add fd00:1::1/64 dev br-lan nodad
             ip addr add 198.19.0.1/24 dev wan0
             ip addr add fd00:2::1/64 dev wan0 nodad
             sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
             sysctl -qw net.netfilter.nf_conntrack_acct=1
             nft -f - <<'NFT'
table inet lab_nat {
	chain post { type nat hook postrouting priority srcnat; oifname \"wan0\" meta nfproto ipv4 masquerade; }
}
NFT",
        );
        lan.sh("ip link set c0 up
             ip addr add 198.18.1.2/24 dev c0
             ip addr add fd00:1::2/64 dev c0 nodad
             ip route add default via 198.18.1.1
             ip -6 route add default via fd00:1::1
             ethtool -K c0 tx off tso off gso off gro on >/dev/null");
        srv.sh("ip link set s0 up
             ip addr add 198.19.0.2/24 dev s0
             ip addr add fd00:2::2/64 dev s0 nodad
             ip -6 route add default via fd00:2::1
             ethtool -K s0 tx off tso off gso off gro on >/dev/null");
        // Resolve neighbours both ways before any flow needs them (bounded pings).
        lan.sh("ping -c 1 -W 2 198.18.1.1 >/dev/null; ping -c 1 -W 2 fd00:1::1 >/dev/null");
        srv.sh("ping -c 1 -W 2 198.19.0.1 >/dev/null; ping -c 1 -W 2 fd00:2::1 >/dev/null");
        let work = TempDir::new("bpfqos-offload-");
        let bpffs = Bpffs::new();
        let pin_dir = bpffs.dir.join("bpfqos");
        work.write(
            "bpfqos",
            "config globals 'globals'\n\toption log_level 'debug'\n\n\
             config interface 'lan'\n\toption device 'br-lan'\n\n\
             config interface 'wan'\n\toption device 'wan0'\n",
        );
        Self {
            lan,
            rtr,
            srv,
            work,
            _bpffs: bpffs,
            pin_dir,
        }
    }

    fn daemon(&self) -> Daemon {
        Daemon::start(
            Some(&self.rtr),
            &self.work.path,
            &self.pin_dir,
            &self.work.path,
            &[],
        )
    }

    /// Starts xfer.py's server in the WAN namespace.
    fn server(&self, bind: &str, extra: &[&str]) -> (Child, PathBuf) {
        let peers = self.work.path.join(harness::unique("peers-"));
        let child = self
            .srv
            .command("/usr/bin/python3")
            .arg(xfer())
            .args(["server", "--bind", bind, "--timeout", "60", "--peers"])
            .arg(&peers)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("xfer server: {e}"));
        std::thread::sleep(Duration::from_millis(300));
        (child, peers)
    }

    fn client(&self, connect: &str, extra: &[&str]) -> Child {
        self.lan
            .command("/usr/bin/python3")
            .arg(xfer())
            .args(["client", "--connect", connect, "--timeout", "60"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("xfer client: {e}"))
    }
}

fn finish(child: Child, what: &str) -> String {
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed: {text}");
    text
}

/// Packets the client's interface sent and received (the whole conversation, both directions).
fn client_packets(lab: &Lab) -> u64 {
    let out = lab.lan.ip(&["-j", "-s", "link", "show", "dev", "c0"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let s = &v[0]["stats64"];
    s["rx"]["packets"].as_u64().unwrap_or(0) + s["tx"]["packets"].as_u64().unwrap_or(0)
}

#[test]
fn tcp_ipv4_nat_is_offloaded_and_intact() {
    if !harness::require_root("tcp_ipv4_nat_is_offloaded_and_intact") {
        return;
    }
    let lab = Lab::new("bqo");
    let d = lab.daemon();
    let (server, peers) = lab.server("198.19.0.2", &[]);
    let before = client_packets(&lab);
    // 24 MiB each way, hashed end to end by xfer.py.
    let client = lab.client("198.19.0.2", &["--up", "25165824", "--down", "25165824"]);
    // While the transfer runs, the daemon shows the connection as offloaded.
    let mut seen = serde_json::Value::Null;
    harness::wait_for(Duration::from_secs(20), || {
        let st = d.status();
        if st["offload"]["connections"].as_u64().unwrap_or(0) >= 1 {
            seen = st;
            true
        } else {
            false
        }
    });
    finish(client, "client");
    finish(server, "server");
    assert!(
        !seen.is_null(),
        "connection never offloaded:\n{}\n{}",
        d.status(),
        d.log_text()
    );
    let flow = &seen["flows"][0];
    assert_eq!(flow["proto"], "tcp", "{seen}");
    assert!(
        flow["orig"]
            .as_str()
            .is_some_and(|o| o.contains("198.18.1.2")),
        "{flow}"
    );
    // NAT: the server saw the router's WAN address.
    let peer = std::fs::read_to_string(&peers).unwrap_or_default();
    assert!(
        peer.contains("198.19.0.1"),
        "server saw {peer:?}, not the NAT address"
    );
    // The data path, not the kernel, carried (nearly) all of it.
    let total = client_packets(&lab) - before;
    let st = d.status();
    let offloaded = st["offload"]["packets"].as_u64().unwrap_or(0);
    eprintln!(
        "offloaded {offloaded} of {total} packets; data path: {}",
        st["datapath"]
    );
    assert!(
        offloaded * 10 >= total * 9,
        "only {offloaded} of {total} packets offloaded\n{st}\n{}",
        d.log_text()
    );
}

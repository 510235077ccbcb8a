//! The namespace router most end-to-end tests run on: a LAN client, a router with a bridge and
//! a NAT to its WAN port, a WAN server; the daemon started in the router, xfer.py for traffic.

use std::path::PathBuf;
use std::process::Child;
use std::process::Stdio;
use std::time::Duration;

use super::daemon::Daemon;
use super::netns::Bpffs;
use super::netns::Netns;
use super::TempDir;

/// The test traffic tool (bounded transfers and pings, payload hashed end to end).
pub fn xfer() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vm/tools/xfer.py")
}

/// LAN client — router (br-lan with port lan1, wan0, masquerade) — WAN server.
pub struct Lab {
    /// The LAN client (198.18.1.2, fd00:1::2 on c0).
    pub lan: Netns,
    /// The router (br-lan 198.18.1.1 with port lan1; wan0 198.19.0.1).
    pub rtr: Netns,
    /// The WAN server (198.19.0.2, fd00:2::2 on s0).
    pub srv: Netns,
    /// Config and socket directory.
    pub work: TempDir,
    _bpffs: Bpffs,
    /// The daemon's pin directory.
    pub pin_dir: PathBuf,
}

impl Lab {
    /// Builds it, with a config offloading `lan` (br-lan) and `wan` (wan0).
    pub fn new(tag: &str) -> Self {
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

    /// Replaces the daemon's config file.
    pub fn config(&self, text: &str) {
        self.work.write("bpfqos", text);
    }

    /// Starts the daemon in the router.
    pub fn daemon(&self) -> Daemon {
        Daemon::start(
            Some(&self.rtr),
            &self.work.path,
            &self.pin_dir,
            &self.work.path,
            &[],
        )
    }

    /// Starts xfer.py's server in the WAN namespace.
    pub fn server(&self, bind: &str, extra: &[&str]) -> (Child, PathBuf) {
        let peers = self.work.path.join(super::unique("peers-"));
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

    /// UDP ping-pong with xfer.py, 20 datagrams a second, every echo checked: (server, client).
    pub fn udp_pingpong(&self, addr: &str, count: u32, extra: &[&str]) -> (Child, Child) {
        // The client waits up to its --io-timeout (10 s) for an echo: the server outlasts it.
        let (server, _) = self.server(addr, &["--udp", "--idle", "12"]);
        let count = count.to_string();
        let mut args = vec!["--udp", "--count", &count, "--interval", "0.05"];
        args.extend_from_slice(extra);
        (server, self.client(addr, &args))
    }

    /// Starts xfer.py's client in the LAN namespace.
    pub fn client(&self, connect: &str, extra: &[&str]) -> Child {
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

/// Waits for `child`, asserts it succeeded, returns what it printed.
pub fn finish(child: Child, what: &str) -> String {
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

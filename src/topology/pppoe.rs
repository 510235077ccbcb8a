//! Kernel-mode PPPoE sessions: `/proc/net/pppoe`, and which session a PPP unit runs over.
//!
//! The kernel prints one line per bound session (`pppoe_seq_show` in
//! drivers/net/ppp/pppoe.c) as `"%08X %pM %8s\n"` of `sid`, the peer MAC and the Ethernet device,
//! under the header `Id       Address              Device`. `sid` is a `__be16` (wire order)
//! printed as a host integer, so the text depends on the byte order of the machine: session 1
//! reads `00000100` on a little-endian router and `00000001` on a big-endian (MIPS) one. The
//! parser takes that byte order explicitly; [`ProcByteOrder::Native`] is the running system's.
//!
//! Tying a PPP unit to its session: the kernel exposes no link from a `ppp` netdev to its
//! channel outside the owning pppd's file descriptors (PPPIOCGCHAN on the pppd's socket), so:
//! 1. one session in the namespace (the home router case): it is the one;
//! 2. several: find the pppd that owns the unit (`/proc/<pid>/comm` is `pppd`, and its command line
//!    has `ifname <unit>`, as OpenWrt's netifd passes `ifname pppoe-<iface>`, or `unit <N>` for
//!    `ppp<N>`), take its Ethernet device from the `nic-<dev>` option (netifd's form) or a bare
//!    argument naming a session's device, and keep the sessions on that device;
//! 3. still not exactly one: refuse ([`Unsupported`]); the flows stay in the kernel.

use super::hostfs::HostFs;
use super::parse_mac;
use super::Mac;
use super::Unsupported;

/// Where the kernel's session table lives under the host root: the calling thread's network
/// namespace (`/proc/net` is the thread-group leader's, which differs for a thread that entered
/// another namespace), then the classic path (older kernels, fixture trees).
pub const PROC_NET_PPPOE: [&str; 2] = ["proc/thread-self/net/pppoe", "proc/net/pppoe"];

/// Byte order of the machine that printed a `/proc/net/pppoe` text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcByteOrder {
    /// The machine this code runs on (the live file).
    Native,
    /// Printed by a little-endian kernel (x86, most ARM).
    Little,
    /// Printed by a big-endian kernel (MIPS routers).
    Big,
}

/// One line of `/proc/net/pppoe`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcSession {
    /// Session id as carried on the wire, in host order (`ntohs` of the header field).
    pub sid: u16,
    /// The access concentrator's MAC.
    pub peer_mac: Mac,
    /// Name of the Ethernet device the session runs over.
    pub device: String,
}

/// Parses the text of `/proc/net/pppoe`. Malformed lines are errors: a misread session id would
/// put frames into a wrong session.
pub fn parse_proc_pppoe(text: &str, order: ProcByteOrder) -> Result<Vec<ProcSession>, String> {
    let mut sessions = Vec::new();
    for (no, line) in text.lines().enumerate() {
        let mut fields = line.split_whitespace();
        let Some(id) = fields.next() else {
            continue;
        };
        if no == 0 && id == "Id" {
            continue;
        }
        let (Some(addr), Some(device), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(format!(
                "line {}: expected `Id Address Device`: {line:?}",
                no + 1
            ));
        };
        let printed = u32::from_str_radix(id, 16)
            .ok()
            .and_then(|v| u16::try_from(v).ok())
            .ok_or_else(|| format!("line {}: bad session id {id:?}", no + 1))?;
        // The kernel printed the big-endian field as the printing machine's integer.
        let sid = match order {
            ProcByteOrder::Native => u16::from_be(printed),
            ProcByteOrder::Little => printed.swap_bytes(),
            ProcByteOrder::Big => printed,
        };
        let peer_mac =
            parse_mac(addr).ok_or_else(|| format!("line {}: bad MAC {addr:?}", no + 1))?;
        sessions.push(ProcSession {
            sid,
            peer_mac,
            device: device.to_string(),
        });
    }
    Ok(sessions)
}

/// Reads and parses `/proc/net/pppoe` under `fs` (native byte order). A missing file (no pppoe
/// module) means no sessions.
pub fn read_sessions(fs: &HostFs) -> Result<Vec<ProcSession>, Unsupported> {
    for path in PROC_NET_PPPOE {
        match fs.read(path) {
            Ok(text) => {
                return parse_proc_pppoe(&text, ProcByteOrder::Native)
                    .map_err(|e| Unsupported(format!("/{path}: {e}")))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Unsupported(format!("/{path}: {e}"))),
        }
    }
    Ok(Vec::new())
}

/// The session the PPP unit `ifname` runs over (see the module docs for how it is chosen).
/// `device_exists` filters out sessions over devices the model does not know.
pub fn session_for(
    fs: &HostFs,
    ifname: &str,
    device_exists: impl Fn(&str) -> bool,
) -> Result<ProcSession, Unsupported> {
    let sessions: Vec<ProcSession> = read_sessions(fs)?
        .into_iter()
        .filter(|s| device_exists(&s.device))
        .collect();
    if sessions.len() == 1 {
        return sessions
            .into_iter()
            .next()
            .ok_or_else(|| Unsupported(format!("{ifname}: no PPPoE session")));
    }
    if sessions.is_empty() {
        return Err(Unsupported(format!(
            "{ifname}: no kernel PPPoE session (PPPoA, L2TP or user-space PPPoE are not offloaded)"
        )));
    }
    let n = sessions.len();
    let device = pppd_device(fs, ifname, &sessions).ok_or_else(|| {
        Unsupported(format!(
            "{ifname}: {n} PPPoE sessions and no pppd for it names its Ethernet device"
        ))
    })?;
    let mut on_dev = sessions.into_iter().filter(|s| s.device == device);
    match (on_dev.next(), on_dev.next()) {
        (Some(s), None) => Ok(s),
        (None, _) => Err(Unsupported(format!(
            "{ifname}: its pppd uses {device}, which has no session"
        ))),
        (Some(_), Some(_)) => Err(Unsupported(format!(
            "{ifname}: several PPPoE sessions on {device}, cannot tell which is its"
        ))),
    }
}

/// The Ethernet device named on the command line of the pppd that owns `ifname`.
fn pppd_device(fs: &HostFs, ifname: &str, sessions: &[ProcSession]) -> Option<String> {
    let unit = ifname
        .strip_prefix("ppp")
        .and_then(|n| n.parse::<u32>().ok());
    let mut found: Option<String> = None;
    for pid in fs.list("proc").ok()? {
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        match fs.read(&format!("proc/{pid}/comm")) {
            Ok(comm) if comm.trim() == "pppd" => {}
            _ => continue,
        }
        let Ok(raw) = fs.read_bytes(&format!("proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !owns_unit(&args, ifname, unit) {
            continue;
        }
        let dev = args.iter().find_map(|a| {
            a.strip_prefix("nic-")
                .map(str::to_string)
                .or_else(|| sessions.iter().any(|s| s.device == *a).then(|| a.clone()))
        });
        if let Some(dev) = dev {
            if found.as_ref().is_some_and(|f| *f != dev) {
                // Two pppds claim the unit: do not guess.
                return None;
            }
            found = Some(dev);
        }
    }
    found
}

/// Whether a pppd command line creates `ifname`: `ifname <name>`, or `unit <N>` for `ppp<N>`.
fn owns_unit(args: &[String], ifname: &str, unit: Option<u32>) -> bool {
    let value_of = |opt: &str| {
        args.windows(2)
            .rev()
            .find(|w| w[0] == opt)
            .map(|w| w[1].as_str())
    };
    match value_of("ifname") {
        Some(name) => name == ifname,
        None => match (unit, value_of("unit")) {
            (Some(u), Some(v)) => v.parse::<u32>().ok() == Some(u),
            _ => false,
        },
    }
}

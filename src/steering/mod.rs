//! CPU steering: which lowest devices spread the receive work of the frames the kernel handles
//! over which CPUs (`option steering`, `steering_cpus`, `steering_queue`), and its status.
//!
//! The data path is `bpf/include/steer.h`: the XDP program hashes the inner 5-tuple of a
//! frame it hands to the kernel and redirects it to that CPU through a cpumap. This module
//! decides where that runs, from facts about each device ([`DeviceFacts`], read from sysfs):
//!
//! - `auto` (the default) steers a NIC when it is likely the only thing spreading its
//!   work: it has one receive queue (most SoC Ethernet, a DSA conduit), or it carries PPPoE
//!   (NIC RSS hashes on the outer header, which for PPPoE is the same for every frame), and
//!   nobody configured RPS on it (then the kernel already spreads it, and doing it twice only
//!   costs). A multi-queue NIC carrying plain IP is left to its RSS.
//! - Never a device that may take received VLAN tags out of the frame (receive VLAN offload
//!   on, or its features unreadable): XDP does not see such a tag and a redirected frame is
//!   rebuilt from its data, so the tag would be lost. Virtual devices (veth) only with `1`:
//!   whether their frames carry tags outside the data depends on the sender, out of sight.
//! - `1` steers every device the XDP program runs on, within the rule above; `0` none.
//! - Never on a one-CPU router (a configured `steering_cpus` may name one CPU: all of the
//!   work moved off the receiving CPUs), and never where the offload fell back to TC (no XDP:
//!   no cpumap; said so in status).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::Serialize;

use crate::config::Globals;
use crate::config::Steering;
use crate::dataplane::abi;
pub use crate::dataplane::steering::CpuCounters;
use crate::topology::hostfs::HostFs;

/// What decides whether a device steers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFacts {
    /// Device name.
    pub name: String,
    /// Its ifindex.
    pub ifindex: u32,
    /// Receive queues (`/sys/class/net/<dev>/queues/rx-*`).
    pub rx_queues: u32,
    /// Some receive queue has a non-empty `rps_cpus` mask.
    pub rps: bool,
    /// The device carries PPPoE (the lowest device of a PPP interface).
    pub pppoe: bool,
    /// The XDP program runs on it (native or generic); `false`: TC fallback or nothing.
    pub xdp: bool,
    /// A NIC (`/sys/class/net/<dev>/device` exists): it receives on the CPU its interrupt is
    /// bound to. Virtual devices (veth) receive where the sender ran.
    pub nic: bool,
    /// Whether it takes received VLAN tags out of the frame data (`rx-vlan-hw-parse` or
    /// `rx-vlan-stag-hw-parse` active); `None`: its features could not be read.
    pub vlan_offload: Option<bool>,
}

impl DeviceFacts {
    /// Reads the queue facts of `name` from sysfs; `vlan_offload` comes from the caller
    /// (`topology::ethtool::vlan_rx_offload`).
    pub fn read(
        fs: &HostFs,
        name: &str,
        ifindex: u32,
        pppoe: bool,
        xdp: bool,
        vlan_offload: Option<bool>,
    ) -> Self {
        let dir = format!("sys/class/net/{name}/queues");
        let rx: Vec<String> = fs
            .list(&dir)
            .unwrap_or_default()
            .into_iter()
            .filter(|q| q.starts_with("rx-"))
            .collect();
        let rps = rx.iter().any(|q| {
            fs.read(&format!("{dir}/{q}/rps_cpus"))
                .is_ok_and(|m| m.trim().chars().any(|c| c.is_ascii_hexdigit() && c != '0'))
        });
        DeviceFacts {
            name: name.to_string(),
            ifindex,
            rx_queues: u32::try_from(rx.len()).unwrap_or(u32::MAX).max(1),
            rps,
            pppoe,
            xdp,
            nic: fs
                .root()
                .join(format!("sys/class/net/{name}/device"))
                .exists(),
            vlan_offload,
        }
    }
}

/// The online CPUs (`/sys/devices/system/cpu/online`), empty if unreadable.
pub fn online_cpus(fs: &HostFs) -> Vec<u32> {
    fs.read("sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| crate::config::parse_cpu_list(s.trim()).ok())
        .unwrap_or_default()
}

/// One device's decision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceDecision {
    /// Device name.
    pub device: String,
    /// Its ifindex.
    #[serde(skip)]
    pub ifindex: u32,
    /// Whether it steers.
    pub steering: bool,
    /// Frames whose hash picks the CPU that received them are passed there, no queue (a NIC:
    /// it receives on one CPU, so this keeps a flow's order); otherwise every steered frame
    /// goes through its CPU's queue.
    pub in_place: bool,
    /// Why (or why not), in words.
    pub reason: String,
}

/// Where steering runs and over which CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The CPU set (configured ∩ online, ascending); empty when steering is off everywhere.
    pub cpus: Vec<u32>,
    /// Frames each CPU's queue holds.
    pub queue: u32,
    /// Per device.
    pub devices: Vec<DeviceDecision>,
    /// Why the CPU set is unusable, if it is.
    pub cpus_problem: Option<String>,
}

impl Plan {
    /// The devices that steer: ifindex and whether frames may stay in place.
    pub fn steering_devices(&self) -> Vec<(u32, bool)> {
        self.devices
            .iter()
            .filter(|d| d.steering)
            .map(|d| (d.ifindex, d.in_place))
            .collect()
    }
}

/// Decides, from the config, the online CPUs and each device's facts. Pure.
pub fn plan(g: &Globals, online: &[u32], devices: &[DeviceFacts]) -> Plan {
    let configured = g.steering_cpus.clone();
    let cpus: Vec<u32> = match &configured {
        Some(list) => list
            .iter()
            .copied()
            .filter(|c| online.contains(c) && *c < abi::MAX_CPUS)
            .collect(),
        None => online
            .iter()
            .copied()
            .filter(|c| *c < abi::MAX_CPUS)
            .collect(),
    };
    // The default set needs two CPUs to spread over; a configured one may name a single CPU
    // (all the kernel's receive work moved off the CPUs that receive, as with RPS on a
    // two-core router).
    let cpus_problem = match (&configured, cpus.len()) {
        _ if g.steering == Steering::Off => None,
        (Some(list), 0) => Some(format!("steering_cpus {list:?}: none of them is online")),
        (None, n) if n < 2 => Some(format!("{n} online CPU: nothing to spread over")),
        _ => None,
    };
    let decisions: Vec<DeviceDecision> = devices
        .iter()
        .map(|d| {
            let (steering, reason) = decide(g.steering, cpus_problem.as_deref(), d);
            DeviceDecision {
                device: d.name.clone(),
                ifindex: d.ifindex,
                steering,
                in_place: steering && d.nic,
                reason,
            }
        })
        .collect();
    let any = decisions.iter().any(|d| d.steering);
    Plan {
        cpus: if any { cpus } else { Vec::new() },
        queue: g.steering_queue,
        devices: decisions,
        cpus_problem,
    }
}

fn decide(mode: Steering, cpus_problem: Option<&str>, d: &DeviceFacts) -> (bool, String) {
    if mode == Steering::Off {
        return (false, "off (option steering '0')".into());
    }
    if let Some(p) = cpus_problem {
        return (false, format!("off: {p}"));
    }
    let (steer, reason) = rule(mode, d);
    // Checked last: where nothing else needs XDP, it is attached only if steering wants it.
    if steer && !d.xdp {
        return (
            false,
            "off: no XDP on this device (TC fallback); steering needs XDP".into(),
        );
    }
    (steer, reason)
}

/// Whether the device should steer, by its facts (XDP aside).
fn rule(mode: Steering, d: &DeviceFacts) -> (bool, String) {
    // A VLAN tag the device took out of the frame is invisible to XDP, and a redirected frame
    // is rebuilt from its data: the tag would be lost (a tagged frame turned untagged, even one
    // of a VLAN the router does not have, which the kernel would have dropped).
    if d.nic {
        match d.vlan_offload {
            Some(false) => {}
            Some(true) => {
                return (
                    false,
                    format!(
                        "off: receive VLAN offload is on, XDP cannot see a tag it strips and a \
                         redirect would lose it (`ethtool -K {} rxvlan off` lets it steer)",
                        d.name
                    ),
                )
            }
            None => {
                return (
                    false,
                    "off: its features could not be read (ethtool netlink), so a VLAN tag \
                     taken out of the frame cannot be ruled out"
                        .into(),
                )
            }
        }
    } else if mode == Steering::Auto {
        return (
            false,
            "off: a virtual device, whose frames may carry a VLAN tag outside the data \
             depending on the sender (veth: the peer's tx VLAN offload), which bpfqos cannot \
             see from here; option steering '1' steers it"
                .into(),
        );
    }
    if mode == Steering::On {
        return (true, "on (option steering '1')".into());
    }
    if d.rps {
        return (
            false,
            "off: RPS is configured on it (the kernel spreads its work already)".into(),
        );
    }
    if d.pppoe {
        return (
            true,
            "on: carries PPPoE, which NIC receive hashing does not look into".into(),
        );
    }
    if d.rx_queues == 1 {
        return (
            true,
            "on: one receive queue, all its work would land on one CPU".into(),
        );
    }
    (
        false,
        format!(
            "off: {} receive queues (its RSS spreads the work)",
            d.rx_queues
        ),
    )
}

/// `steering` in the status JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SteeringStatus {
    /// The configured mode: `auto`, `on`, `off`.
    pub mode: String,
    /// Whether some device steers.
    pub active: bool,
    /// The CPU set in use (empty when inactive).
    pub cpus: Vec<u32>,
    /// Frames each CPU's queue holds.
    pub queue: u32,
    /// Why the CPU set is unusable, if it is (`null` otherwise).
    pub problem: Option<String>,
    /// Per device: steering or not, and why.
    pub devices: Vec<DeviceDecision>,
    /// Per CPU that has counted something or is in the set.
    pub per_cpu: Vec<CpuCounters>,
    /// PPPoE sessions kept on their receiving CPU because their PPP stream carries state
    /// from frame to frame (compression, VJ, multilink, encryption: order matters).
    pub held_pppoe_sessions: Vec<HeldSession>,
}

/// A PPPoE session steering leaves alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HeldSession {
    /// The device it arrives on.
    pub ifindex: u32,
    /// Its session id.
    pub session: u16,
}

impl SteeringStatus {
    /// The status from the plan in force and the counters read now.
    pub fn of(
        g: &Globals,
        plan: &Plan,
        counters: &BTreeMap<u32, CpuCounters>,
        held: &[(u32, u16)],
    ) -> Self {
        let mut per_cpu: Vec<CpuCounters> = counters.values().copied().collect();
        for &c in &plan.cpus {
            if !counters.contains_key(&c) {
                per_cpu.push(CpuCounters {
                    cpu: c,
                    ..Default::default()
                });
            }
        }
        per_cpu.sort_by_key(|c| c.cpu);
        SteeringStatus {
            mode: match g.steering {
                Steering::Auto => "auto",
                Steering::On => "on",
                Steering::Off => "off",
            }
            .into(),
            active: !plan.cpus.is_empty(),
            cpus: plan.cpus.clone(),
            queue: plan.queue,
            problem: plan.cpus_problem.clone(),
            devices: plan.devices.clone(),
            per_cpu,
            held_pppoe_sessions: held
                .iter()
                .map(|&(ifindex, session)| HeldSession { ifindex, session })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;

//! Where programs are attached: per device, any of the XDP hook (native or generic), TC ingress
//! and TC egress, each holding at most one bpfqos program. The offload uses XDP (or TC ingress
//! where XDP cannot run); shaping adds TC egress classifiers and the TC-ingress twin next to XDP
//! for flows whose egress is shaped; a cpumap program sits behind XDP.
//!
//! XDP is attached through netlink, not a bpf_link: a link dies with the process, a netlink
//! attach stays, which is what lets `--keep` hand the data path to the next daemon without a gap
//! (the heartbeat makes a dead daemon's programs pass everything).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::os::fd::BorrowedFd;

use anyhow::anyhow;
use anyhow::Context;
use libbpf_rs::TcAttachPoint;
use libbpf_rs::TcHookBuilder;
use libbpf_rs::Xdp;
use libbpf_rs::XdpFlags;
use libbpf_rs::TC_EGRESS;
use libbpf_rs::TC_INGRESS;
use log::debug;
use log::info;
use serde::Deserialize;
use serde::Serialize;

/// Our TC filters' handle on clsact; each program role has its own priority ([`TcSlot`]), so
/// that only our own filters are ever replaced or removed (other users of clsact keep theirs).
const TC_HANDLE: u32 = 0xb9f0;

/// XDP attach mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver.
    Native,
    /// In the generic (skb) path.
    Generic,
}

impl XdpMode {
    fn flags(self) -> XdpFlags {
        match self {
            XdpMode::Native => XdpFlags::DRV_MODE,
            XdpMode::Generic => XdpFlags::SKB_MODE,
        }
    }
}

/// A TC direction on the device's clsact qdisc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TcDir {
    /// Packets received.
    Ingress,
    /// Packets sent.
    Egress,
}

impl TcDir {
    fn attach_point(self) -> TcAttachPoint {
        match self {
            TcDir::Ingress => TC_INGRESS,
            TcDir::Egress => TC_EGRESS,
        }
    }
}

/// Where on a device's clsact one bpfqos program role sits: direction and filter priority
/// (lower runs first). Roles on the same hook run in priority order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TcSlot {
    /// Ingress or egress.
    pub dir: TcDir,
    /// Filter priority.
    pub priority: u16,
}

impl TcSlot {
    /// The offload's TC twin (ingress of lowest devices): first, it forwards offloaded flows.
    pub const OFFLOAD: TcSlot = TcSlot {
        dir: TcDir::Ingress,
        priority: 0xb9f,
    };
    /// The download shaper's steering (ingress of a shaped L3 device, and of the shaper's far
    /// end).
    pub const SHAPE: TcSlot = TcSlot {
        dir: TcDir::Ingress,
        priority: 0xba0,
    };
    /// The upload's circuit classifier (egress of a shaped L3 device).
    pub const CLASSIFY: TcSlot = TcSlot {
        dir: TcDir::Egress,
        priority: 0xba1,
    };
    /// Passive RTT's departures (egress of every lowest device the offload runs on). It only
    /// looks, and lets the filters behind it run.
    pub const RTT: TcSlot = TcSlot {
        dir: TcDir::Egress,
        priority: 0xba2,
    };
}

/// The hooks bpfqos holds on one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceHooks {
    /// Interface index.
    pub ifindex: u32,
    /// XDP program and mode, if any.
    pub xdp: Option<XdpMode>,
    /// The TC slots holding a bpfqos program.
    pub tc: BTreeSet<TcSlot>,
    /// Why the offload did not get a better hook than the one it has.
    pub fallback_reason: Option<String>,
}

impl DeviceHooks {
    fn is_empty(&self) -> bool {
        self.xdp.is_none() && self.tc.is_empty()
    }

    /// The offload runs here (XDP, or its TC twin).
    pub fn has_offload(&self) -> bool {
        self.xdp.is_some() || self.tc.contains(&TcSlot::OFFLOAD)
    }
}

/// Every device bpfqos has programs on.
#[derive(Debug, Default)]
pub struct Attachments {
    devices: BTreeMap<String, DeviceHooks>,
}

fn ifindex_of(device: &str) -> anyhow::Result<u32> {
    nix::net::if_::if_nametoindex(device).map_err(|e| anyhow!("{device}: no such device ({e})"))
}

impl Attachments {
    /// The hooks held on `device`.
    pub fn get(&self, device: &str) -> Option<&DeviceHooks> {
        self.devices.get(device)
    }

    /// Every device with at least one hook, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &DeviceHooks)> {
        self.devices.iter()
    }

    /// Names of the devices with at least one hook.
    pub fn devices(&self) -> Vec<String> {
        self.devices.keys().cloned().collect()
    }

    fn entry(&mut self, device: &str, ifindex: u32) -> &mut DeviceHooks {
        let hooks = self.devices.entry(device.to_string()).or_default();
        hooks.ifindex = ifindex;
        hooks
    }

    /// Attaches `prog` to XDP of `device` in `mode` (replacing a program of ours there).
    pub fn attach_xdp(
        &mut self,
        device: &str,
        prog: BorrowedFd<'_>,
        mode: XdpMode,
    ) -> anyhow::Result<()> {
        let ifindex = ifindex_of(device)?;
        Xdp::new(prog).attach(ifindex as i32, mode.flags())?;
        self.entry(device, ifindex).xdp = Some(mode);
        Ok(())
    }

    /// Attaches `prog` to `slot` of `device` (creating clsact if needed; replacing our own
    /// filter there, never another user's).
    pub fn attach_tc(
        &mut self,
        device: &str,
        prog: BorrowedFd<'_>,
        slot: TcSlot,
    ) -> anyhow::Result<()> {
        let ifindex = ifindex_of(device)?;
        let mut hook = TcHookBuilder::new(prog)
            .ifindex(ifindex as i32)
            .replace(true)
            .handle(TC_HANDLE)
            .priority(u32::from(slot.priority))
            .hook(slot.dir.attach_point());
        // Already there (a re-apply): nothing to change, no netlink churn.
        let held = self
            .devices
            .get(device)
            .is_some_and(|h| h.ifindex == ifindex && h.tc.contains(&slot));
        if held && hook.query().is_ok() {
            return Ok(());
        }
        if hook.attach().is_err() {
            // No clsact yet (it is shared with other users once there).
            let _ = hook.create();
            hook.attach()
                .with_context(|| format!("{device}: TC {:?} attach", slot.dir))?;
        }
        self.entry(device, ifindex).tc.insert(slot);
        Ok(())
    }

    /// Records why `device` did not get a better hook.
    pub fn set_fallback_reason(&mut self, device: &str, reason: Option<String>) {
        if let Some(h) = self.devices.get_mut(device) {
            h.fallback_reason = reason;
        }
    }

    /// Detaches our XDP program from `device`, if any.
    pub fn detach_xdp(&mut self, device: &str, prog: BorrowedFd<'_>) {
        let Some(h) = self.devices.get_mut(device) else {
            return;
        };
        if let Some(mode) = h.xdp.take() {
            if let Err(e) = Xdp::new(prog).detach(h.ifindex as i32, mode.flags()) {
                debug!("{device}: XDP detach: {e}");
            }
        }
        self.forget_if_empty(device);
    }

    /// Detaches our filter from `slot` of `device`, if any (clsact stays: others may use it).
    pub fn detach_tc(&mut self, device: &str, prog: BorrowedFd<'_>, slot: TcSlot) {
        let Some(h) = self.devices.get_mut(device) else {
            return;
        };
        if h.tc.remove(&slot) {
            let r = TcHookBuilder::new(prog)
                .ifindex(h.ifindex as i32)
                .handle(TC_HANDLE)
                .priority(u32::from(slot.priority))
                .hook(slot.dir.attach_point())
                .detach();
            if let Err(e) = r {
                debug!("{device}: TC {:?} detach: {e}", slot.dir);
            }
        }
        self.forget_if_empty(device);
    }

    fn forget_if_empty(&mut self, device: &str) {
        if self.devices.get(device).is_some_and(DeviceHooks::is_empty) {
            self.devices.remove(device);
            info!("{device}: detached");
        }
    }
}

/// Hook the offload program of an attach point runs at (status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// eXpress Data Path.
    Xdp,
    /// Traffic control (clsact ingress).
    Tc,
}

/// How the offload program of an attach point is attached (status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// XDP in the driver.
    Native,
    /// XDP in the generic (skb) path.
    Generic,
    /// TC clsact ingress.
    Tc,
}

impl AttachMode {
    /// Its name in `bpfqos status`.
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
            AttachMode::Tc => "tc",
        }
    }
}

/// One attach point in `bpfqos status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachPoint {
    /// Device name.
    pub device: String,
    /// Device index.
    pub ifindex: u32,
    /// Hook of the offload program.
    pub hook: Hook,
    /// Mode of the offload program.
    pub mode: AttachMode,
    /// Why a better mode was not used, when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    /// The offload's TC twin sits on TC ingress (beside XDP: for flows whose egress is
    /// shaped; alone: XDP was not available).
    #[serde(default)]
    pub tc_ingress: bool,
    /// A bpfqos program sits on TC egress.
    #[serde(default)]
    pub tc_egress: bool,
    /// Passive RTT's departure hook sits on TC egress.
    #[serde(default)]
    pub rtt: bool,
    /// Offloaded packets received on this device.
    #[serde(default)]
    pub rx_packets: u64,
    /// Offloaded bytes received on this device.
    #[serde(default)]
    pub rx_bytes: u64,
    /// Offloaded packets sent out of this device.
    #[serde(default)]
    pub tx_packets: u64,
    /// Offloaded bytes sent out of this device.
    #[serde(default)]
    pub tx_bytes: u64,
}

impl AttachPoint {
    /// The status of `device`'s hooks; `None` when it has no offload hook (XDP or TC twin).
    pub fn of(device: &str, h: &DeviceHooks) -> Option<Self> {
        let tc_ingress = h.tc.contains(&TcSlot::OFFLOAD);
        let (hook, mode) = match (h.xdp, tc_ingress) {
            (Some(XdpMode::Native), _) => (Hook::Xdp, AttachMode::Native),
            (Some(XdpMode::Generic), _) => (Hook::Xdp, AttachMode::Generic),
            (None, true) => (Hook::Tc, AttachMode::Tc),
            (None, false) => return None,
        };
        Some(AttachPoint {
            device: device.to_string(),
            ifindex: h.ifindex,
            hook,
            mode,
            fallback_reason: h.fallback_reason.clone(),
            tc_ingress,
            tc_egress: h.tc.iter().any(|s| s.dir == TcDir::Egress),
            rtt: h.tc.contains(&TcSlot::RTT),
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 0,
            tx_bytes: 0,
        })
    }
}

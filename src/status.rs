//! The status document: what `bpfqos status`, `ubus call bpfqos status` and LuCI show.
//!
//! The daemon builds it; clients render it. The JSON shape is a public interface (the rpcd plugin
//! and the LuCI page read it), so fields are only ever added.

use std::fmt::Write;

use serde::Deserialize;
use serde::Serialize;

/// The whole status document.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    /// bpfqos version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// Configuration state.
    pub config: ConfigStatus,
    /// Flow offload summary.
    pub offload: OffloadStatus,
    /// Where the data path is attached.
    pub attach: Vec<AttachPoint>,
    /// Configured interfaces.
    pub interfaces: Vec<InterfaceStatus>,
    /// Offloaded connections with their counters.
    #[serde(default)]
    pub flows: serde_json::Value,
    /// The data path's own counters (packets seen, passed by reason, redirected).
    #[serde(default)]
    pub datapath: std::collections::BTreeMap<String, u64>,
}

/// Configuration state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConfigStatus {
    /// The UCI file in use.
    pub file: String,
    /// Warnings from the running configuration (unknown options...).
    pub warnings: Vec<String>,
    /// Error of the last rejected reload, if the last reload failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reload_error: Option<String>,
    /// Number of successful reloads since start.
    pub reloads: u64,
}

/// Flow offload summary.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OffloadStatus {
    /// Offload is configured on and the data path is loaded.
    pub enabled: bool,
    /// Flow entries currently installed (one per direction).
    pub flows: u64,
    /// Connections offloaded (each is two flow entries).
    #[serde(default)]
    pub connections: u64,
    /// The flow manager's decisions: admitted, removed, rejected by reason.
    #[serde(default)]
    pub manager: serde_json::Value,
    /// Packets forwarded by the data path.
    pub packets: u64,
    /// Bytes forwarded by the data path.
    pub bytes: u64,
}

/// Hook a program is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// eXpress Data Path.
    Xdp,
    /// Traffic control (clsact ingress).
    Tc,
}

/// How the program is attached.
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

/// One attach point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachPoint {
    /// Device name.
    pub device: String,
    /// Device index.
    pub ifindex: u32,
    /// Hook.
    pub hook: Hook,
    /// Mode.
    pub mode: AttachMode,
    /// Why a better mode was not used, when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
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

/// A configured interface.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InterfaceStatus {
    /// UCI section name.
    pub name: String,
    /// Device, when resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Whether offload is enabled on it.
    pub offload: bool,
    /// Configured upload shaping rate (kbit/s, 0 = none).
    pub upload_kbit: u64,
    /// Configured download shaping rate (kbit/s, 0 = none).
    pub download_kbit: u64,
    /// Problem preventing it from being used, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn mode_name(m: AttachMode) -> &'static str {
    match m {
        AttachMode::Native => "native",
        AttachMode::Generic => "generic",
        AttachMode::Tc => "tc",
    }
}

fn kbit(k: u64) -> String {
    match k {
        0 => "-".to_string(),
        k if k >= 1000 && k % 1000 == 0 => format!("{} Mbit/s", k / 1000),
        k => format!("{k} kbit/s"),
    }
}

impl Status {
    /// Renders the human-readable view.
    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = writeln!(s, "bpfqos {}, up {} s", self.version, self.uptime_s);
        let _ = writeln!(
            s,
            "offload: {}  connections {}  flow entries {}  packets {}  bytes {}",
            if self.offload.enabled { "on" } else { "off" },
            self.offload.connections,
            self.offload.flows,
            self.offload.packets,
            self.offload.bytes
        );
        let _ = writeln!(s, "\nattach points:");
        if self.attach.is_empty() {
            let _ = writeln!(s, "  (none)");
        }
        for a in &self.attach {
            let _ = write!(
                s,
                "  {:<16} ifindex {:<5} {:<4} {}",
                a.device,
                a.ifindex,
                if a.hook == Hook::Xdp { "xdp" } else { "tc" },
                mode_name(a.mode)
            );
            let _ = write!(
                s,
                "  rx {} pkts / {} B  tx {} pkts / {} B",
                a.rx_packets, a.rx_bytes, a.tx_packets, a.tx_bytes
            );
            if let Some(r) = &a.fallback_reason {
                let _ = write!(s, "  ({r})");
            }
            s.push('\n');
        }
        if let Some(flows) = self.flows.as_array().filter(|f| !f.is_empty()) {
            let _ = writeln!(s, "\noffloaded connections ({}):", flows.len());
            for f in flows.iter().take(20) {
                let _ = writeln!(
                    s,
                    "  {}  pkts {}/{}  bytes {}",
                    f["orig"].as_str().unwrap_or("?"),
                    f["packets_orig"],
                    f["packets_reply"],
                    f["bytes"]
                );
            }
            if flows.len() > 20 {
                let _ = writeln!(s, "  ... {} more (bpfqos status --json)", flows.len() - 20);
            }
        }
        let _ = writeln!(s, "\ninterfaces:");
        if self.interfaces.is_empty() {
            let _ = writeln!(s, "  (none configured)");
        }
        for i in &self.interfaces {
            let _ = write!(
                s,
                "  {:<12} {:<16} offload {:<3} up {:<14} down {}",
                i.name,
                i.device.as_deref().unwrap_or("?"),
                if i.offload { "on" } else { "off" },
                kbit(i.upload_kbit),
                kbit(i.download_kbit)
            );
            if let Some(e) = &i.error {
                let _ = write!(s, "  error: {e}");
            }
            s.push('\n');
        }
        let _ = writeln!(
            s,
            "\nconfig: {} (reloads: {})",
            self.config.file, self.config.reloads
        );
        for w in &self.config.warnings {
            let _ = writeln!(s, "  warning: {w}");
        }
        if let Some(e) = &self.config.last_reload_error {
            let _ = writeln!(s, "  last reload rejected, running config kept: {e}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_documented_shape() {
        let st = Status {
            version: "0.1.0".into(),
            uptime_s: 3,
            attach: vec![AttachPoint {
                device: "eth0".into(),
                ifindex: 2,
                hook: Hook::Xdp,
                mode: AttachMode::Native,
                fallback_reason: None,
                rx_packets: 0,
                rx_bytes: 0,
                tx_packets: 0,
                tx_bytes: 0,
            }],
            ..Default::default()
        };
        let v = serde_json::to_value(&st).unwrap_or_default();
        assert_eq!(v["version"], "0.1.0");
        assert_eq!(v["uptime_s"], 3);
        assert_eq!(v["offload"]["enabled"], false);
        assert_eq!(v["offload"]["flows"], 0);
        assert_eq!(v["attach"][0]["hook"], "xdp");
        assert_eq!(v["attach"][0]["mode"], "native");
        assert!(st.render().contains("eth0"));
    }

    #[test]
    fn rates_are_human() {
        assert_eq!(kbit(0), "-");
        assert_eq!(kbit(40000), "40 Mbit/s");
        assert_eq!(kbit(1500), "1500 kbit/s");
    }
}

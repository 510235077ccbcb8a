//! `option network`: an OpenWrt logical interface (a `config interface` section of
//! `/etc/config/network`), resolved to the Linux device that carries its IP traffic — what netifd
//! reports as `l3_device` in `ubus call network.interface.NAME status`.
//!
//! The resolution reads `/etc/config/network` (next to our own file) and applies netifd's naming
//! rules, instead of asking netifd over ubus: bpfqos has no ubus client (no registry ships ubusd
//! to test one against) and the rules below cover the protocols a WAN or LAN uses:
//! - PPP family (`pppoe`, `pppoa`, `ppp`, `pptp`, `l2tp`, `3g`): pppd is started with
//!   `ifname "${proto}-${interface}"` (netifd's `ppp.sh`, `ppp_generic_setup`), e.g. `pppoe-wan`;
//! - `static`, `dhcp`, `dhcpv6`, `none` (the default): the interface's `device` (`ifname` before
//!   OpenWrt 21.02), or `br-NAME` for a pre-21.02 `option type 'bridge'`; a `@other` alias takes
//!   the l3 device of the interface it names;
//! - `wireguard`: the device is named after the interface.
//!
//! Any other protocol (qmi, mbim, modemmanager, tunnels, ...) gets its device from its netifd
//! handler at run time: it is an error that says to set `option device` instead.
//!
//! The init script reloads bpfqos when such a network comes up (`procd_add_interface_trigger`),
//! so a device recreated on reconnect (`pppoe-wan`) is picked up again.

use std::path::Path;

use super::uci;
use super::uci::Value;

/// netifd's `@alias` chains are short; this bounds a loop in a broken file.
const MAX_ALIAS_DEPTH: usize = 8;
/// IFNAMSIZ - 1.
const MAX_IFNAME: usize = 15;

/// The file of the network configuration inside the UCI config directory.
pub const NETWORK_PACKAGE: &str = "network";

/// The device an interface section stands for: its `device`, else its `network` resolved from
/// `<config_dir>/network`.
pub fn interface_device(i: &super::Interface, config_dir: &Path) -> Result<String, String> {
    match (&i.device, &i.network) {
        (Some(dev), _) => Ok(dev.clone()),
        (None, Some(net)) => resolve(config_dir, net),
        // The config parser rejects a section with neither.
        (None, None) => Err("neither option device nor option network".to_owned()),
    }
}

/// Resolves `network` to its l3 device from `<config_dir>/network`.
pub fn resolve(config_dir: &Path, network: &str) -> Result<String, String> {
    let path = config_dir.join(NETWORK_PACKAGE);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("network '{network}': cannot read {}: {e}", path.display()))?;
    resolve_in(&text, network).map_err(|e| format!("network '{network}': {}: {e}", path.display()))
}

/// Resolves `network` within the text of a network config file.
pub fn resolve_in(text: &str, network: &str) -> Result<String, String> {
    let (package, errors) = uci::parse(text);
    if let Some(e) = errors.first() {
        return Err(format!("line {}: {}", e.line, e.message));
    }
    let mut name = network.to_owned();
    let mut seen: Vec<String> = Vec::new();
    loop {
        if seen.len() >= MAX_ALIAS_DEPTH || seen.contains(&name) {
            return Err(format!("alias loop: {} -> @{name}", seen.join(" -> @")));
        }
        seen.push(name.clone());
        match l3_device(&package, &name)? {
            Resolved::Device(d) => return checked_ifname(d),
            Resolved::Alias(other) => name = other,
        }
    }
}

enum Resolved {
    Device(String),
    /// `option device '@other'`: the l3 device of interface `other`.
    Alias(String),
}

fn l3_device(package: &uci::Package, name: &str) -> Result<Resolved, String> {
    let section = package
        .sections
        .iter()
        .rev() // libuci: a redefined section is the same section; the last word counts
        .find(|s| s.section_type == "interface" && !s.anonymous && s.name == name)
        .ok_or_else(|| format!("no 'config interface '{name}'' section"))?;
    let get = |option: &str| {
        section
            .options
            .iter()
            .find(|o| o.name == option)
            .map(|o| &o.value)
    };
    let single = |option: &str| match get(option) {
        Some(Value::Single(v)) => Some(v.as_str()),
        _ => None,
    };
    let proto = single("proto").unwrap_or("none");
    match proto {
        "pppoe" | "pppoa" | "ppp" | "pptp" | "l2tp" | "3g" => {
            Ok(Resolved::Device(format!("{proto}-{name}")))
        }
        "wireguard" => Ok(Resolved::Device(name.to_owned())),
        "static" | "dhcp" | "dhcpv6" | "none" => {
            if single("type") == Some("bridge") {
                // Pre-21.02 bridge: netifd creates br-NAME over the listed ports.
                return Ok(Resolved::Device(format!("br-{name}")));
            }
            let (option, value) = match (get("device"), get("ifname")) {
                (Some(v), _) => ("device", v),
                (None, Some(v)) => ("ifname", v),
                (None, None) => {
                    return Err(format!(
                        "interface '{name}' (proto {proto}) has no device"
                    ))
                }
            };
            let value = match value {
                Value::Single(v) => v.trim(),
                Value::List(_) => {
                    return Err(format!(
                        "interface '{name}': option {option} is a list (bridge ports?); set option device in /etc/config/bpfqos"
                    ))
                }
            };
            if value.is_empty() || value.contains(char::is_whitespace) {
                return Err(format!(
                    "interface '{name}': option {option} '{value}' is not one device; set option device in /etc/config/bpfqos"
                ));
            }
            Ok(match value.strip_prefix('@') {
                Some(other) => Resolved::Alias(other.to_owned()),
                None => Resolved::Device(value.to_owned()),
            })
        }
        other => Err(format!(
            "interface '{name}': proto '{other}' gets its device from netifd at run time; set option device in /etc/config/bpfqos"
        )),
    }
}

fn checked_ifname(d: String) -> Result<String, String> {
    if d.len() > MAX_IFNAME || d.contains('/') || d.contains(':') {
        return Err(format!(
            "'{d}' cannot be a Linux device name (at most {MAX_IFNAME} characters, no '/' or ':')"
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::resolve_in;

    /// A 21.02+ style config: `config device` bridge, VLAN device, PPPoE WAN, alias, wireguard.
    const MODERN: &str = "
config interface 'loopback'
\toption device 'lo'
\toption proto 'static'

config device
\toption name 'br-lan'
\toption type 'bridge'
\tlist ports 'lan1'
\tlist ports 'lan2'

config interface 'lan'
\toption device 'br-lan'
\toption proto 'static'

config interface 'wan'
\toption device 'wan.7'
\toption proto 'pppoe'
\toption username 'u'

config interface 'wan6'
\toption device '@wan'
\toption proto 'dhcpv6'

config interface 'wg0'
\toption proto 'wireguard'

config interface 'lte'
\toption proto 'qmi'
\toption device '/dev/cdc-wdm0'

config interface 'dsl'
\toption proto 'pppoa'

config interface 'guest'
\toption proto 'none'
";

    /// A 19.07 style config: `ifname`, `type bridge` on the interface.
    const LEGACY: &str = "
config interface 'lan'
\toption type 'bridge'
\toption ifname 'eth0.1 wlan0'
\toption proto 'static'

config interface 'wan'
\toption ifname 'eth0.2'
\toption proto 'dhcp'

config interface 'ports'
\toption ifname 'eth0.3 eth0.4'
\toption proto 'static'

config interface 'a'
\toption device '@b'

config interface 'b'
\toption device '@a'

config interface 'averyveryverylongname'
\toption proto 'pppoe'
";

    #[test]
    fn modern_configs_resolve_like_netifd() {
        for (net, dev) in [
            ("loopback", "lo"),
            ("lan", "br-lan"),
            ("wan", "pppoe-wan"),
            ("wan6", "pppoe-wan"),
            ("wg0", "wg0"),
            ("dsl", "pppoa-dsl"),
        ] {
            assert_eq!(resolve_in(MODERN, net), Ok(dev.to_owned()), "{net}");
        }
    }

    #[test]
    fn legacy_configs_resolve_like_netifd() {
        assert_eq!(resolve_in(LEGACY, "lan"), Ok("br-lan".to_owned()));
        assert_eq!(resolve_in(LEGACY, "wan"), Ok("eth0.2".to_owned()));
    }

    #[test]
    fn what_cannot_be_resolved_says_why() {
        let cases = [
            (MODERN, "lte", "proto 'qmi' gets its device from netifd"),
            (MODERN, "guest", "(proto none) has no device"),
            (MODERN, "nope", "no 'config interface 'nope'' section"),
            (LEGACY, "ports", "'eth0.3 eth0.4' is not one device"),
            (LEGACY, "a", "alias loop: a -> @b"),
            (
                LEGACY,
                "averyveryverylongname",
                "cannot be a Linux device name",
            ),
            (
                "config interface 'x'\n\toption proto 'pppoe\n",
                "x",
                "line ",
            ),
        ];
        for (text, net, want) in cases {
            match resolve_in(text, net) {
                Ok(d) => panic!("{net}: resolved to {d}, want an error containing {want:?}"),
                Err(e) => assert!(e.contains(want), "{net}: {e:?} lacks {want:?}"),
            }
        }
    }
}

//! From `config interface` sections to devices: each section's L3 device (`option device`, or
//! `option network` resolved from `/etc/config/network`), and the lowest devices below it where
//! the data path attaches (bridge ports, VLAN parents, PPPoE's Ethernet, DSA conduits), or why
//! there are none. Offload, shaping and steering all start from this one answer.
//!
//! The device name of a logical network is read once per [`Interfaces::resolve`] (the config
//! was applied, or a link changed: PPPoE reconnects recreate `pppoe-wan`); the walk to the
//! lowest devices follows the current topology.

use std::path::Path;

use crate::config;
use crate::config::Config;
use crate::dataplane::entry::dsa_proto;
use crate::dataplane::OffloadDevice;
use crate::topology::Topology;

/// One configured interface, as far as it could be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// UCI section name.
    pub name: String,
    /// Its L3 device, or why it has none.
    pub device: Result<String, String>,
    /// The ifindex of the L3 device, when it exists now.
    pub ifindex: Option<u32>,
    /// The lowest devices below it, or why there are none.
    pub lowest: Result<Vec<OffloadDevice>, String>,
    /// Offload is enabled for it (`option offload`).
    pub offload: bool,
}

/// Every configured interface, resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interfaces {
    list: Vec<Interface>,
}

impl Interfaces {
    /// Resolves every interface of `config` (logical networks from `<config_dir>/network`)
    /// against `topo`.
    pub fn resolve(config: &Config, config_dir: &Path, topo: &Topology) -> Self {
        let list = config
            .interfaces
            .iter()
            .map(|i| {
                let device = config::network::interface_device(i, config_dir);
                Self::walk(&i.name, device, i.offload, topo)
            })
            .collect();
        Self { list }
    }

    /// Resolves one interface whose device is known (or known to be missing).
    pub fn walk(
        name: &str,
        device: Result<String, String>,
        offload: bool,
        topo: &Topology,
    ) -> Interface {
        let link = device.as_ref().ok().and_then(|d| topo.link_by_name(d));
        let lowest = match (&device, link) {
            (Err(e), _) => Err(e.clone()),
            (Ok(dev), None) => Err(format!("{dev}: no such device")),
            (Ok(dev), Some(link)) => {
                let points: Vec<OffloadDevice> = topo
                    .attach_points(link.ifindex)
                    .into_iter()
                    .filter_map(|ix| topo.link(ix))
                    .map(|l| OffloadDevice {
                        name: l.name.clone(),
                        ifindex: l.ifindex,
                        dsa_proto: l.dsa_tagger.as_ref().and_then(dsa_proto),
                    })
                    .collect();
                if points.is_empty() {
                    Err(format!("{dev}: no device below it can carry the data path"))
                } else {
                    Ok(points)
                }
            }
        };
        Interface {
            name: name.to_string(),
            ifindex: link.map(|l| l.ifindex),
            device,
            lowest,
            offload,
        }
    }

    /// All interfaces, in config order.
    pub fn iter(&self) -> impl Iterator<Item = &Interface> {
        self.list.iter()
    }

    /// The interface of section `name`.
    pub fn get(&self, name: &str) -> Option<&Interface> {
        self.list.iter().find(|i| i.name == name)
    }

    /// The lowest devices of every offload-enabled interface (each device once), and per
    /// interface that has none, why.
    pub fn offload_devices(&self) -> (Vec<OffloadDevice>, Vec<(String, String)>) {
        self.lowest_devices(|i| i.offload)
    }

    /// The lowest devices of every interface `include` accepts (each device once), and per
    /// such interface that has none, why.
    pub fn lowest_devices(
        &self,
        include: impl Fn(&Interface) -> bool,
    ) -> (Vec<OffloadDevice>, Vec<(String, String)>) {
        let mut devices: Vec<OffloadDevice> = Vec::new();
        let mut errors = Vec::new();
        for i in self.list.iter().filter(|i| include(i)) {
            match &i.lowest {
                Ok(points) => {
                    for p in points {
                        if !devices.iter().any(|d| d.ifindex == p.ifindex) {
                            devices.push(p.clone());
                        }
                    }
                }
                Err(e) => errors.push((i.name.clone(), e.clone())),
            }
        }
        (devices, errors)
    }

    /// The interfaces whose lowest devices include `device`.
    pub fn owners_of<'a>(&'a self, device: &'a str) -> impl Iterator<Item = &'a Interface> {
        self.list.iter().filter(move |i| {
            i.lowest
                .as_ref()
                .is_ok_and(|l| l.iter().any(|d| d.name == device))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Link;
    use crate::topology::LinkKind;
    use crate::topology::VlanProto;

    fn topo() -> Topology {
        Topology::from_parts(
            vec![
                Link::new(2, "eth0", LinkKind::Ethernet),
                Link::new(3, "lan1", LinkKind::Veth).with_master(10),
                Link::new(4, "lan2", LinkKind::Veth).with_master(10),
                Link::new(10, "br-lan", LinkKind::Bridge),
                Link::new(
                    11,
                    "eth0.7",
                    LinkKind::Vlan {
                        id: 7,
                        proto: VlanProto::Dot1Q,
                    },
                )
                .with_lower(2),
                Link::new(12, "tun0", LinkKind::Other("tun".into())),
            ],
            vec![],
        )
    }

    #[test]
    fn bridges_give_their_ports_vlans_their_parent() {
        let t = topo();
        let br = Interfaces::walk("lan", Ok("br-lan".into()), true, &t);
        assert_eq!(br.ifindex, Some(10));
        let names: Vec<String> = br
            .lowest
            .unwrap_or_default()
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(names, ["lan1", "lan2"]);
        let vlan = Interfaces::walk("wan", Ok("eth0.7".into()), true, &t);
        assert_eq!(vlan.lowest.map(|l| l[0].ifindex), Ok(2));
    }

    #[test]
    fn reasons_when_there_is_nothing_to_attach_to() {
        let t = topo();
        let gone = Interfaces::walk("wan", Ok("pppoe-wan".into()), true, &t);
        assert_eq!(gone.lowest, Err("pppoe-wan: no such device".to_string()));
        assert_eq!(gone.ifindex, None);
        let tun = Interfaces::walk("vpn", Ok("tun0".into()), true, &t);
        assert_eq!(
            tun.lowest,
            Err("tun0: no device below it can carry the data path".to_string())
        );
        let unresolved = Interfaces::walk("x", Err("network 'x': no such".into()), true, &t);
        assert_eq!(unresolved.lowest, Err("network 'x': no such".to_string()));
    }

    #[test]
    fn offload_devices_skip_disabled_interfaces_and_duplicates() {
        let t = topo();
        let set = Interfaces {
            list: vec![
                Interfaces::walk("lan", Ok("br-lan".into()), true, &t),
                Interfaces::walk("lan-again", Ok("lan1".into()), true, &t),
                Interfaces::walk("wan", Ok("eth0.7".into()), false, &t),
                Interfaces::walk("vpn", Ok("tun0".into()), true, &t),
            ],
        };
        let (devices, errors) = set.offload_devices();
        let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["lan1", "lan2"]);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, "vpn");
        assert_eq!(set.owners_of("lan1").count(), 2);
    }
}

//! A device's offload features, from ethtool's generic netlink family (`ETHTOOL_MSG_FEATURES_GET`,
//! what `ethtool -k` reads). CPU steering needs one answer: whether the device may take VLAN
//! tags out of the frame data on receive (`rx-vlan-hw-parse`, `rx-vlan-stag-hw-parse`). An XDP
//! program does not see such a tag, and a frame it redirects is rebuilt from its data alone: the
//! tag would be lost.

use anyhow::Context;

use crate::nl;

const NETLINK_GENERIC: isize = 16;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const ETHTOOL_GENL_VERSION: u8 = 1;
const ETHTOOL_MSG_FEATURES_GET: u8 = 11;
const ETHTOOL_A_FEATURES_HEADER: u16 = 1;
const ETHTOOL_A_FEATURES_ACTIVE: u16 = 4;
const ETHTOOL_A_HEADER_DEV_NAME: u16 = 2;
const ETHTOOL_A_BITSET_NOMASK: u16 = 1;
const ETHTOOL_A_BITSET_BITS: u16 = 3;
const ETHTOOL_A_BITSET_BITS_BIT: u16 = 1;
const ETHTOOL_A_BITSET_BIT_NAME: u16 = 2;
const ETHTOOL_A_BITSET_BIT_VALUE: u16 = 3;

/// The features that move a received VLAN tag out of the frame data.
pub const VLAN_RX_OFFLOADS: &[&str] = &["rx-vlan-hw-parse", "rx-vlan-stag-hw-parse"];

/// The names of the active features of `ifname` (in the caller's network namespace).
pub fn active_features(ifname: &str) -> anyhow::Result<Vec<String>> {
    let sock = nl::RequestSocket::open(NETLINK_GENERIC, "ethtool")?;
    let family = family_id(&sock, "ethtool")?;
    let seq = sock.next_seq();
    let mut b = nl::Builder::new(
        family,
        nl::NLM_F_REQUEST,
        seq,
        &[ETHTOOL_MSG_FEATURES_GET, ETHTOOL_GENL_VERSION, 0, 0],
    );
    let h = b.nest(ETHTOOL_A_FEATURES_HEADER);
    b.attr_str(ETHTOOL_A_HEADER_DEV_NAME, ifname);
    b.end_nest(h);
    sock.send(&b.finish())?;
    let mut out: Option<Vec<String>> = None;
    sock.recv_until(4, |m| {
        if m.seq != seq {
            return Ok(true);
        }
        if m.ty == nl::NLMSG_ERROR {
            let ack = nl::Ack::parse(m)?;
            anyhow::ensure!(ack.errno == 0, "{ifname}: {}", ack.describe());
            return Ok(out.is_none());
        }
        if m.ty == family {
            let attrs = m.body.get(4..).unwrap_or(&[]);
            let active = nl::find_attr(attrs, ETHTOOL_A_FEATURES_ACTIVE)
                .context("no active features in the answer")?;
            out = Some(bitset_names(active));
            return Ok(false);
        }
        Ok(true)
    })?;
    out.with_context(|| format!("{ifname}: no features answer"))
}

/// Whether `ifname` may take received VLAN tags out of the frame data.
pub fn vlan_rx_offload(ifname: &str) -> anyhow::Result<bool> {
    let active = active_features(ifname)?;
    Ok(active
        .iter()
        .any(|f| VLAN_RX_OFFLOADS.contains(&f.as_str())))
}

/// The names of the set bits of a verbose ethtool bitset: in a list (`NOMASK`), every bit
/// named; otherwise those with the `VALUE` flag.
pub fn bitset_names(set: &[u8]) -> Vec<String> {
    let list = nl::find_attr(set, ETHTOOL_A_BITSET_NOMASK).is_some();
    let Some(bits) = nl::find_attr(set, ETHTOOL_A_BITSET_BITS) else {
        return Vec::new();
    };
    nl::attrs(bits)
        .filter_map(Result::ok)
        .filter(|(ty, _)| *ty == ETHTOOL_A_BITSET_BITS_BIT)
        .filter(|(_, bit)| list || nl::find_attr(bit, ETHTOOL_A_BITSET_BIT_VALUE).is_some())
        .filter_map(|(_, bit)| nl::find_attr(bit, ETHTOOL_A_BITSET_BIT_NAME).map(nl::string))
        .collect()
}

/// The id of generic netlink family `name`.
fn family_id(sock: &nl::RequestSocket, name: &str) -> anyhow::Result<u16> {
    let seq = sock.next_seq();
    let mut b = nl::Builder::new(
        GENL_ID_CTRL,
        nl::NLM_F_REQUEST,
        seq,
        &[CTRL_CMD_GETFAMILY, 1, 0, 0],
    );
    b.attr_str(CTRL_ATTR_FAMILY_NAME, name);
    sock.send(&b.finish())?;
    let mut id = None;
    sock.recv_until(4, |m| {
        if m.seq != seq {
            return Ok(true);
        }
        if m.ty == nl::NLMSG_ERROR {
            let ack = nl::Ack::parse(m)?;
            anyhow::ensure!(
                ack.errno == 0,
                "generic netlink family {name}: {}",
                ack.describe()
            );
            return Ok(id.is_none());
        }
        if m.ty == GENL_ID_CTRL {
            let attrs = m.body.get(4..).unwrap_or(&[]);
            id = nl::find_attr(attrs, CTRL_ATTR_FAMILY_ID).and_then(|v| nl::u16_ne(v, 0).ok());
            return Ok(false);
        }
        Ok(true)
    })?;
    id.with_context(|| format!("generic netlink family {name}: no id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bit(b: &mut nl::Builder, name: &str, value: bool) {
        let n = b.nest(ETHTOOL_A_BITSET_BITS_BIT);
        b.attr(1, &7u32.to_ne_bytes());
        b.attr_str(ETHTOOL_A_BITSET_BIT_NAME, name);
        if value {
            b.attr(ETHTOOL_A_BITSET_BIT_VALUE, &[]);
        }
        b.end_nest(n);
    }

    fn bitset(list: bool, bits: &[(&str, bool)]) -> Vec<u8> {
        let mut b = nl::Builder::new(1, 0, 0, &[]);
        if list {
            b.attr(ETHTOOL_A_BITSET_NOMASK, &[]);
        }
        let n = b.nest(ETHTOOL_A_BITSET_BITS);
        for (name, v) in bits {
            bit(&mut b, name, *v);
        }
        b.end_nest(n);
        b.finish()[16..].to_vec()
    }

    #[test]
    fn a_list_names_the_set_bits_and_a_masked_set_flags_them() {
        let l = bitset(true, &[("rx-vlan-hw-parse", false), ("rx-gro", false)]);
        assert_eq!(bitset_names(&l), vec!["rx-vlan-hw-parse", "rx-gro"]);
        let m = bitset(false, &[("rx-vlan-hw-parse", false), ("rx-gro", true)]);
        assert_eq!(bitset_names(&m), vec!["rx-gro"]);
        assert!(bitset_names(&[1, 2, 3]).is_empty());
    }
}

//! Flow-table entries as whole values: a key or an entry of either address family, and the
//! data path's code for a DSA tagger. The offload builds them (`offload::encode`); the data
//! plane stores them and tells them apart.

use std::hash::Hash;
use std::hash::Hasher;

use super::abi;
use crate::topology::DsaTagger;

/// A flow-table key of either family.
#[derive(Clone, Copy)]
pub enum FlowKey {
    /// IPv4.
    V4(abi::FlowKey4),
    /// IPv6.
    V6(abi::FlowKey6),
}

impl FlowKey {
    /// Its bytes, as the data path compares them.
    pub fn bytes(&self) -> &[u8] {
        match self {
            FlowKey::V4(k) => abi::bytes_of(k),
            FlowKey::V6(k) => abi::bytes_of(k),
        }
    }

    /// The key an event or a dump carries as bytes; `None` for any other length.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        abi::from_bytes::<abi::FlowKey4>(b)
            .map(FlowKey::V4)
            .or_else(|| abi::from_bytes::<abi::FlowKey6>(b).map(FlowKey::V6))
    }
}

// Keys are compared and hashed as the data path compares them: byte for byte (every padding
// byte is a named field of the ABI structs, so there are no uninitialised bytes).
impl PartialEq for FlowKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for FlowKey {}

impl Hash for FlowKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.bytes().hash(state);
    }
}

impl std::fmt::Debug for FlowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlowKey::V4(k) => write!(f, "FlowKey::V4({:?})", k),
            FlowKey::V6(k) => write!(f, "FlowKey::V6({:?})", k),
        }
    }
}

/// A flow-table entry of either family (its key included).
#[derive(Clone, Copy, Debug)]
pub enum FlowValue {
    /// IPv4.
    V4(abi::Flow4),
    /// IPv6.
    V6(abi::Flow6),
}

impl FlowValue {
    /// Its bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            FlowValue::V4(v) => abi::bytes_of(v),
            FlowValue::V6(v) => abi::bytes_of(v),
        }
    }

    /// The key inside it.
    pub fn key(&self) -> FlowKey {
        match self {
            FlowValue::V4(v) => FlowKey::V4(v.key),
            FlowValue::V6(v) => FlowKey::V6(v.key),
        }
    }

    /// The next hop inside it.
    pub fn next_hop(&self) -> &abi::NextHop {
        match self {
            FlowValue::V4(v) => &v.nh,
            FlowValue::V6(v) => &v.nh,
        }
    }
}

/// The data path's code for a DSA tagger (`enum bpfqos_dsa_proto`); `None` for taggers it
/// cannot parse or build.
pub fn dsa_proto(t: &DsaTagger) -> Option<u8> {
    let p = match t {
        DsaTagger::Mtk => abi::DsaProto::BPFQOS_DSA_MTK,
        DsaTagger::Qca => abi::DsaProto::BPFQOS_DSA_QCA,
        DsaTagger::Gswip => abi::DsaProto::BPFQOS_DSA_GSWIP,
        DsaTagger::Other(_) => return None,
    };
    u8::try_from(p.0).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_bytes_and_compare_bytewise() {
        let k4 = FlowKey::V4(abi::FlowKey4 {
            ifindex: 7,
            sport: abi::be16(40000),
            ..Default::default()
        });
        let k6 = FlowKey::V6(abi::FlowKey6 {
            ifindex: 7,
            ..Default::default()
        });
        assert_eq!(FlowKey::from_bytes(k4.bytes()), Some(k4));
        assert_eq!(FlowKey::from_bytes(k6.bytes()), Some(k6));
        assert_ne!(k4, FlowKey::from_bytes(&[0u8; 32]).unwrap_or(k6));
        assert_eq!(FlowKey::from_bytes(&[0u8; 33]), None);
    }

    #[test]
    fn only_known_taggers_have_a_code() {
        assert_eq!(dsa_proto(&DsaTagger::Mtk), Some(1));
        assert_eq!(dsa_proto(&DsaTagger::Qca), Some(2));
        assert_eq!(dsa_proto(&DsaTagger::Gswip), Some(3));
        assert_eq!(dsa_proto(&DsaTagger::Other("ocelot".into())), None);
    }
}

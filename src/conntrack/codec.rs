//! ctnetlink wire format: parsing conntrack messages and building the few requests bpfqos sends
//! (dump, get, refresh timeout).
//!
//! Written here rather than taken from `netlink-packet-netfilter`: that crate does not expose
//! CTA_ID, CTA_ZONE or CTA_HELP, which admission needs, and the subset used is small. Layout
//! references: include/uapi/linux/netfilter/nfnetlink_conntrack.h and nfnetlink.h.

use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;

use crate::nl::attrs;
use crate::nl::be16;
use crate::nl::be32;
use crate::nl::Builder;
pub use crate::nl::DecodeError;
use crate::nl::NLMSG_DONE;
use crate::nl::NLMSG_ERROR;
use crate::nl::NLM_F_ACK;
use crate::nl::NLM_F_CREATE;
use crate::nl::NLM_F_DUMP;
use crate::nl::NLM_F_REQUEST;

/// nfnetlink subsystem id of ctnetlink.
pub const NFNL_SUBSYS_CTNETLINK: u16 = 1;
/// nfnetlink subsystem id of nf_tables (generation events on ruleset changes).
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `IPCTNL_MSG_CT_NEW`: new or updated entry (events), create/update (requests).
pub const IPCTNL_MSG_CT_NEW: u16 = 0;
/// `IPCTNL_MSG_CT_GET`.
pub const IPCTNL_MSG_CT_GET: u16 = 1;
/// `IPCTNL_MSG_CT_DELETE`: destroyed entry (events).
pub const IPCTNL_MSG_CT_DELETE: u16 = 2;
/// `NFT_MSG_NEWGEN`: a new nf_tables ruleset generation was committed.
pub const NFT_MSG_NEWGEN: u16 = 15;

/// Multicast groups (`NFNLGRP_*`).
pub const NFNLGRP_CONNTRACK_NEW: u32 = 1;
/// Updates (state changes) of existing entries.
pub const NFNLGRP_CONNTRACK_UPDATE: u32 = 2;
/// Destroyed entries.
pub const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;
/// nf_tables ruleset changes.
pub const NFNLGRP_NFTABLES: u32 = 7;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_HELP: u16 = 5;
const CTA_TIMEOUT: u16 = 7;
const CTA_MARK: u16 = 8;
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_COUNTERS_PACKETS: u16 = 1;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;

const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const CTA_PROTOINFO_TCP_FLAGS_ORIGINAL: u16 = 4;
const CTA_PROTOINFO_TCP_FLAGS_REPLY: u16 = 5;
/// `IP_CT_TCP_FLAG_BE_LIBERAL`: window tracking accepts any in-connection sequence number.
const IP_CT_TCP_FLAG_BE_LIBERAL: u8 = 0x08;
/// `IP_CT_TCP_FLAG_MAXACK_SET`: `td_maxack` holds the highest ACK conntrack saw.
const IP_CT_TCP_FLAG_MAXACK_SET: u8 = 0x20;
const CTA_HELP_NAME: u16 = 1;

/// `IPS_*` status bits that admission looks at.
pub mod status {
    /// The connection will not be early-dropped (UDP: assured stream).
    pub const ASSURED: u32 = 1 << 2;
    /// In the main table (not a template or unconfirmed).
    pub const CONFIRMED: u32 = 1 << 3;
    /// Sequence numbers are adjusted (helpers): payload-altering, never offload.
    pub const SEQ_ADJUST: u32 = 1 << 6;
    /// Being destroyed.
    pub const DYING: u32 = 1 << 9;
    /// Untracked.
    pub const UNTRACKED: u32 = 1 << 12;
    /// A helper is attached.
    pub const HELPER: u32 = 1 << 13;
}

/// TCP conntrack state `TCP_CONNTRACK_ESTABLISHED`.
pub const TCP_CONNTRACK_ESTABLISHED: u8 = 3;

/// IP protocol numbers that can be offloaded.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;

/// One direction of a connection as conntrack sees it (ports in host order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol.
    pub proto: u8,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

impl Tuple {
    /// The same flow seen from the other end.
    pub fn reversed(&self) -> Tuple {
        Tuple {
            src: self.dst,
            dst: self.src,
            proto: self.proto,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

impl std::fmt::Display for Tuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = match self.proto {
            IPPROTO_TCP => "tcp",
            IPPROTO_UDP => "udp",
            _ => "ip",
        };
        write!(
            f,
            "{p} {}:{} -> {}:{}",
            self.src, self.sport, self.dst, self.dport
        )
    }
}

/// A conntrack entry, as much of it as admission needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conn {
    /// CTA_ID: stable identifier of the entry while it lives.
    pub id: u32,
    /// Original direction.
    pub orig: Tuple,
    /// Reply direction (its reverse is what the original direction looks like after NAT).
    pub reply: Tuple,
    /// IPS_* bits.
    pub status: u32,
    /// TCP state, for TCP.
    pub tcp_state: Option<u8>,
    /// Connection mark.
    pub mark: u32,
    /// Conntrack zone.
    pub zone: u16,
    /// Seconds left before the entry expires.
    pub timeout: Option<u32>,
    /// Name of an attached helper (ftp, sip...), if any.
    pub helper: Option<String>,
    /// Packets conntrack itself has seen, [original, reply] (only with nf_conntrack_acct on).
    pub packets: Option<[u64; 2]>,
}

impl Conn {
    /// A connection of these two tuples with nothing else known yet (no status bits, state,
    /// mark, zone, timeout, helper or counters).
    pub fn new(id: u32, orig: Tuple, reply: Tuple) -> Self {
        Self {
            id,
            orig,
            reply,
            status: 0,
            tcp_state: None,
            mark: 0,
            zone: 0,
            timeout: None,
            helper: None,
            packets: None,
        }
    }

    /// Whether the entry is in the state where bpfqos may offload it: confirmed, not dying, no
    /// helper or sequence adjustment, and TCP established / UDP assured.
    pub fn offloadable_state(&self) -> bool {
        let bad = status::DYING | status::UNTRACKED | status::SEQ_ADJUST | status::HELPER;
        if self.status & status::CONFIRMED == 0 || self.status & bad != 0 || self.helper.is_some() {
            return false;
        }
        match self.orig.proto {
            IPPROTO_TCP => {
                self.tcp_state == Some(TCP_CONNTRACK_ESTABLISHED)
                    && self.status & status::ASSURED != 0
            }
            IPPROTO_UDP => self.status & status::ASSURED != 0,
            _ => false,
        }
    }
}

/// What a message from the conntrack socket means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A new entry (event) or a dump/get result.
    New(Conn),
    /// An existing entry changed.
    Update(Conn),
    /// An entry was destroyed.
    Destroy(Conn),
    /// nf_tables committed a new ruleset generation (firewall reload).
    RulesetChanged,
    /// End of a dump.
    Done,
    /// An ack (errno 0) or error (negative errno) for request `seq`.
    Ack {
        /// Sequence number of the request.
        seq: u32,
        /// 0 or a negative errno.
        errno: i32,
    },
    /// Something else (ignored).
    Other,
}

fn parse_tuple(b: &[u8]) -> Result<Tuple, DecodeError> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, 0, 0);
    for a in attrs(b) {
        let (ty, v) = a?;
        match ty {
            CTA_TUPLE_IP => {
                for a in attrs(v) {
                    let (ty, v) = a?;
                    let addr = match ty {
                        CTA_IP_V4_SRC | CTA_IP_V4_DST => <[u8; 4]>::try_from(v)
                            .map(|o| IpAddr::V4(Ipv4Addr::from(o)))
                            .map_err(|_| DecodeError("IPv4 address is not 4 bytes"))?,
                        CTA_IP_V6_SRC | CTA_IP_V6_DST => <[u8; 16]>::try_from(v)
                            .map(|o| IpAddr::V6(Ipv6Addr::from(o)))
                            .map_err(|_| DecodeError("IPv6 address is not 16 bytes"))?,
                        _ => continue,
                    };
                    if ty == CTA_IP_V4_SRC || ty == CTA_IP_V6_SRC {
                        src = Some(addr);
                    } else {
                        dst = Some(addr);
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for a in attrs(v) {
                    let (ty, v) = a?;
                    match ty {
                        CTA_PROTO_NUM => proto = v.first().copied(),
                        CTA_PROTO_SRC_PORT => sport = be16(v)?,
                        CTA_PROTO_DST_PORT => dport = be16(v)?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    match (src, dst, proto) {
        (Some(src), Some(dst), Some(proto)) => Ok(Tuple {
            src,
            dst,
            proto,
            sport,
            dport,
        }),
        _ => Err(DecodeError("tuple without addresses or protocol")),
    }
}

fn parse_conn(b: &[u8]) -> Result<Conn, DecodeError> {
    let (mut orig, mut reply) = (None, None);
    let unspecified = Tuple {
        src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        proto: 0,
        sport: 0,
        dport: 0,
    };
    let mut c = Conn::new(0, unspecified, unspecified);
    for a in attrs(b) {
        let (ty, v) = a?;
        match ty {
            CTA_TUPLE_ORIG => orig = Some(parse_tuple(v)?),
            CTA_TUPLE_REPLY => reply = Some(parse_tuple(v)?),
            CTA_STATUS => c.status = be32(v)?,
            CTA_TIMEOUT => c.timeout = Some(be32(v)?),
            CTA_MARK => c.mark = be32(v)?,
            CTA_ID => c.id = be32(v)?,
            CTA_ZONE => c.zone = be16(v)?,
            CTA_PROTOINFO => {
                for a in attrs(v) {
                    let (ty, v) = a?;
                    if ty != CTA_PROTOINFO_TCP {
                        continue;
                    }
                    for a in attrs(v) {
                        let (ty, v) = a?;
                        if ty == CTA_PROTOINFO_TCP_STATE {
                            c.tcp_state = v.first().copied();
                        }
                    }
                }
            }
            CTA_COUNTERS_ORIG | CTA_COUNTERS_REPLY => {
                let ty_outer = ty;
                for a in attrs(v) {
                    let (ty, v) = a?;
                    if ty == CTA_COUNTERS_PACKETS {
                        let n = <[u8; 8]>::try_from(v)
                            .map(u64::from_be_bytes)
                            .map_err(|_| DecodeError("counter is not 8 bytes"))?;
                        let mut p = c.packets.unwrap_or([0, 0]);
                        p[usize::from(ty_outer == CTA_COUNTERS_REPLY)] = n;
                        c.packets = Some(p);
                    }
                }
            }
            CTA_HELP => {
                for a in attrs(v) {
                    let (ty, v) = a?;
                    if ty == CTA_HELP_NAME {
                        let name = v.split(|&b| b == 0).next().unwrap_or_default();
                        c.helper = Some(String::from_utf8_lossy(name).into_owned());
                    }
                }
            }
            _ => {}
        }
    }
    c.orig = orig.ok_or(DecodeError("no original tuple"))?;
    c.reply = reply.ok_or(DecodeError("no reply tuple"))?;
    Ok(c)
}

/// Splits a datagram into netlink messages and decodes each. A malformed message yields an
/// error item; the rest of the datagram is still decoded when its framing allows.
pub fn parse_datagram(buf: &[u8]) -> Vec<Result<Message, DecodeError>> {
    crate::nl::messages(buf)
        .map(|m| m.and_then(|m| parse_message(&m)))
        .collect()
}

/// Decodes one netlink message.
pub fn parse_message(m: &crate::nl::Msg<'_>) -> Result<Message, DecodeError> {
    match m.ty {
        NLMSG_DONE => return Ok(Message::Done),
        NLMSG_ERROR => {
            let errno = crate::nl::u32_ne(m.body, 0)? as i32;
            return Ok(Message::Ack { seq: m.seq, errno });
        }
        _ => {}
    }
    let subsys = m.ty >> 8;
    let msg = m.ty & 0xff;
    // 4 bytes nfgenmsg.
    let body = m.body.get(4..).ok_or(DecodeError("no nfgenmsg"))?;
    match (subsys, msg) {
        (NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWGEN) => Ok(Message::RulesetChanged),
        (NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_NEW) => {
            let c = parse_conn(body)?;
            // Events for new entries carry NLM_F_CREATE; dump results carry neither it nor
            // anything else distinctive and are treated as "new" too.
            if m.flags & NLM_F_CREATE != 0 || m.seq != 0 {
                Ok(Message::New(c))
            } else {
                Ok(Message::Update(c))
            }
        }
        (NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE) => Ok(Message::Destroy(parse_conn(body)?)),
        _ => Ok(Message::Other),
    }
}

/// ctnetlink's additions to the message builder.
trait TupleAttr {
    fn tuple(&mut self, ty: u16, t: &Tuple);
}

impl TupleAttr for Builder {
    fn tuple(&mut self, ty: u16, t: &Tuple) {
        let outer = self.nest(ty);
        let ip = self.nest(CTA_TUPLE_IP);
        match (t.src, t.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                self.attr(CTA_IP_V4_SRC, &s.octets());
                self.attr(CTA_IP_V4_DST, &d.octets());
            }
            (s, d) => {
                self.attr(CTA_IP_V6_SRC, &to_v6(s).octets());
                self.attr(CTA_IP_V6_DST, &to_v6(d).octets());
            }
        }
        self.end_nest(ip);
        let proto = self.nest(CTA_TUPLE_PROTO);
        self.attr(CTA_PROTO_NUM, &[t.proto]);
        self.attr(CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes());
        self.attr(CTA_PROTO_DST_PORT, &t.dport.to_be_bytes());
        self.end_nest(proto);
        self.end_nest(outer);
    }
}

fn to_v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// struct nfgenmsg: family, version 0, res_id 0.
fn nfgenmsg(family: u8) -> [u8; 4] {
    [family, 0, 0, 0]
}

fn family_of(t: &Tuple) -> u8 {
    match t.src {
        IpAddr::V4(_) => libc_af::INET,
        IpAddr::V6(_) => libc_af::INET6,
    }
}

/// Address family numbers (AF_INET, AF_INET6, AF_UNSPEC).
pub mod libc_af {
    /// AF_UNSPEC: both families.
    pub const UNSPEC: u8 = 0;
    /// AF_INET.
    pub const INET: u8 = 2;
    /// AF_INET6.
    pub const INET6: u8 = 10;
}

/// A request to dump the whole conntrack table of `family` (AF_UNSPEC: both).
pub fn dump_request(seq: u32, family: u8) -> Vec<u8> {
    Builder::new(
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        &nfgenmsg(family),
    )
    .finish()
}

/// An acked request about one existing entry, addressed by its original tuple and zone.
fn entry_request(msg: u16, seq: u32, orig: &Tuple, zone: u16) -> Builder {
    let mut b = Builder::new(
        (NFNL_SUBSYS_CTNETLINK << 8) | msg,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        &nfgenmsg(family_of(orig)),
    );
    b.tuple(CTA_TUPLE_ORIG, orig);
    if zone != 0 {
        b.attr(CTA_ZONE, &zone.to_be_bytes());
    }
    b
}

/// A request to fetch one entry by its original tuple (ENOENT when it is gone).
pub fn get_request(seq: u32, orig: &Tuple, zone: u16) -> Vec<u8> {
    entry_request(IPCTNL_MSG_CT_GET, seq, orig, zone).finish()
}

/// A request to set an existing entry's timeout (keeps offloaded connections alive in conntrack
/// while their packets bypass it). Without NLM_F_CREATE it never creates an entry.
pub fn refresh_request(seq: u32, orig: &Tuple, zone: u16, timeout_s: u32) -> Vec<u8> {
    let mut b = entry_request(IPCTNL_MSG_CT_NEW, seq, orig, zone);
    b.attr(CTA_TIMEOUT, &timeout_s.to_be_bytes());
    b.finish()
}

/// A request that makes conntrack's TCP window tracking liberal in both directions for one
/// entry, as the kernel's own flowtable does when it offloads a connection: packets that bypass
/// conntrack leave its sequence tracking behind, and without this, the first packets that take
/// the kernel path again (after a FIN, a too-big packet, a re-resolution, a daemon restart)
/// would be INVALID: not NATed, possibly answered with a reset.
///
/// It also forgets the highest ACK conntrack saw (clears `IP_CT_TCP_FLAG_MAXACK_SET`, as the
/// flowtable's `flow_offload_fixup_tcp` does): conntrack accepts an RST only when its sequence
/// number equals that ACK, which packets bypassing it make stale; a client's RST then left the
/// entry ESTABLISHED with a 10 s timeout ("kept for a challenge ACK"), the client reused the
/// port at once, and the new connection's FIN met an expired entry: not NATed, lost (found by
/// the churn soak). Without the flag conntrack takes the RST as it comes, as the kernel path
/// would have.
pub fn liberal_request(seq: u32, orig: &Tuple, zone: u16) -> Vec<u8> {
    let mut b = entry_request(IPCTNL_MSG_CT_NEW, seq, orig, zone);
    let pi = b.nest(CTA_PROTOINFO);
    let tcp = b.nest(CTA_PROTOINFO_TCP);
    // struct nf_ct_tcp_flags { flags, mask }: liberal set, max-ACK cleared.
    let liberal = [
        IP_CT_TCP_FLAG_BE_LIBERAL,
        IP_CT_TCP_FLAG_BE_LIBERAL | IP_CT_TCP_FLAG_MAXACK_SET,
    ];
    b.attr(CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, &liberal);
    b.attr(CTA_PROTOINFO_TCP_FLAGS_REPLY, &liberal);
    b.end_nest(tcp);
    b.end_nest(pi);
    b.finish()
}

/// The number of messages in a datagram when every one of them is ctnetlink's (read from the
/// headers only), else None (something else is in it, or it is malformed).
pub fn count_if_conntrack_only(buf: &[u8]) -> Option<usize> {
    let mut n = 0;
    for m in crate::nl::messages(buf) {
        if m.ok()?.ty >> 8 != NFNL_SUBSYS_CTNETLINK {
            return None;
        }
        n += 1;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_of_conntrack_messages_is_counted_from_headers() {
        let t = tuple4([198, 18, 1, 2], [198, 19, 0, 2], 40000, 443);
        // Lengths that are not multiples of 4 are padded to the next message.
        let mut two = get_request(1, &t, 0);
        two.extend(get_request(2, &t, 0));
        assert_eq!(count_if_conntrack_only(&two), Some(2));
        assert_eq!(count_if_conntrack_only(&[]), Some(0));
        // nf_tables' message (a firewall reload) in it: decode the whole datagram instead.
        let mut other = Builder::new(10 << 8, 0, 0, &nfgenmsg(0)).finish();
        other.extend(get_request(3, &t, 0));
        assert_eq!(count_if_conntrack_only(&other), None);
        // Truncated or a bogus length: not counted.
        assert_eq!(count_if_conntrack_only(&two[..two.len() - 30]), None);
        let mut bad = two.clone();
        bad[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(count_if_conntrack_only(&bad), None);
    }

    fn tuple4(s: [u8; 4], d: [u8; 4], sp: u16, dp: u16) -> Tuple {
        Tuple {
            src: IpAddr::V4(s.into()),
            dst: IpAddr::V4(d.into()),
            proto: IPPROTO_TCP,
            sport: sp,
            dport: dp,
        }
    }

    /// Builds a conntrack event the way the kernel lays it out, with this module's builder.
    fn event(ty: u16, flags: u16, c: &Conn) -> Vec<u8> {
        let mut b = Builder::new((NFNL_SUBSYS_CTNETLINK << 8) | ty, flags, 0, &nfgenmsg(2));
        b.tuple(CTA_TUPLE_ORIG, &c.orig);
        b.tuple(CTA_TUPLE_REPLY, &c.reply);
        b.attr(CTA_STATUS, &c.status.to_be_bytes());
        b.attr(CTA_MARK, &c.mark.to_be_bytes());
        b.attr(CTA_ID, &c.id.to_be_bytes());
        if let Some(t) = c.timeout {
            b.attr(CTA_TIMEOUT, &t.to_be_bytes());
        }
        let pi = b.nest(CTA_PROTOINFO);
        let tcp = b.nest(CTA_PROTOINFO_TCP);
        b.attr(CTA_PROTOINFO_TCP_STATE, &[c.tcp_state.unwrap_or(0)]);
        b.end_nest(tcp);
        b.end_nest(pi);
        b.finish()
    }

    fn conn() -> Conn {
        Conn {
            id: 0xdead_beef,
            orig: tuple4([198, 18, 1, 2], [198, 19, 0, 1], 40000, 80),
            reply: tuple4([198, 19, 0, 1], [198, 18, 255, 1], 80, 61000),
            status: status::CONFIRMED | status::ASSURED,
            tcp_state: Some(TCP_CONNTRACK_ESTABLISHED),
            mark: 7,
            zone: 0,
            timeout: Some(431999),
            helper: None,
            packets: None,
        }
    }

    #[test]
    fn roundtrip_new_update_destroy() {
        let c = conn();
        let new = event(IPCTNL_MSG_CT_NEW, NLM_F_CREATE, &c);
        let upd = event(IPCTNL_MSG_CT_NEW, 0, &c);
        let del = event(IPCTNL_MSG_CT_DELETE, 0, &c);
        let mut all = new.clone();
        all.extend_from_slice(&upd);
        all.extend_from_slice(&del);
        let got = parse_datagram(&all);
        assert_eq!(
            got,
            vec![
                Ok(Message::New(c.clone())),
                Ok(Message::Update(c.clone())),
                Ok(Message::Destroy(c.clone()))
            ]
        );
        assert!(c.offloadable_state());
    }

    #[test]
    fn offloadable_state_rules() {
        let mut c = conn();
        c.tcp_state = Some(2);
        assert!(!c.offloadable_state(), "SYN_RECV");
        c = conn();
        c.status |= status::DYING;
        assert!(!c.offloadable_state());
        c = conn();
        c.helper = Some("ftp".into());
        assert!(!c.offloadable_state());
        c = conn();
        c.orig.proto = IPPROTO_UDP;
        c.tcp_state = None;
        assert!(c.offloadable_state());
        c.status &= !status::ASSURED;
        assert!(!c.offloadable_state(), "unassured UDP");
    }

    #[test]
    fn truncated_and_garbage_input_is_an_error_not_a_panic() {
        let full = event(IPCTNL_MSG_CT_NEW, NLM_F_CREATE, &conn());
        for cut in 0..full.len() {
            let mut m = full[..cut].to_vec();
            if m.len() >= 4 {
                m[0..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            }
            // Must not panic; either an error or (rarely) a partial parse.
            let _ = parse_datagram(&m);
        }
        let mut seed = 0x1234_5678u32;
        for _ in 0..2000 {
            let mut m = full.clone();
            for _ in 0..4 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let i = (seed as usize >> 8) % m.len();
                m[i] = (seed >> 24) as u8;
            }
            let _ = parse_datagram(&m);
        }
    }

    #[test]
    fn refresh_request_layout() {
        let c = conn();
        let r = refresh_request(9, &c.orig, 0, 120);
        assert_eq!(crate::nl::u32_ne(&r, 0), Ok(r.len() as u32));
        assert_eq!(crate::nl::u16_ne(&r, 4), Ok(NFNL_SUBSYS_CTNETLINK << 8));
        // The tuple we encode parses back to the same tuple.
        let body = &r[20..];
        let mut seen_timeout = None;
        let mut seen_tuple = None;
        for a in attrs(body) {
            let (ty, v) = a.unwrap_or((0, &[]));
            match ty {
                CTA_TUPLE_ORIG => seen_tuple = parse_tuple(v).ok(),
                CTA_TIMEOUT => seen_timeout = be32(v).ok(),
                _ => {}
            }
        }
        assert_eq!(seen_tuple, Some(c.orig));
        assert_eq!(seen_timeout, Some(120));
    }

    #[test]
    fn the_liberal_request_also_forgets_the_highest_ack_both_ways() {
        let c = conn();
        let r = liberal_request(3, &c.orig, 0);
        let tcp = crate::nl::find_attr(&r[20..], CTA_PROTOINFO)
            .and_then(|pi| crate::nl::find_attr(pi, CTA_PROTOINFO_TCP))
            .unwrap_or_default();
        let flags: Vec<(u16, Vec<u8>)> = attrs(tcp)
            .map(|a| a.map(|(ty, v)| (ty, v.to_vec())).unwrap_or_default())
            .collect();
        // struct nf_ct_tcp_flags { flags, mask }: BE_LIBERAL set, MAXACK_SET cleared.
        let want = vec![0x08, 0x28];
        assert_eq!(
            flags,
            vec![
                (CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, want.clone()),
                (CTA_PROTOINFO_TCP_FLAGS_REPLY, want)
            ]
        );
    }
}

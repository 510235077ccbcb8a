//! Netlink framing shared by the codecs of our own (ctnetlink in `conntrack`, tc in `qos`):
//! building a message with (nested) attributes, walking attributes and the messages of a
//! datagram, and a request socket that reads acks with the kernel's extended ack message.
//!
//! Why not the netlink-packet-* crates for these: they do not cover the conntrack attributes
//! and tc qdisc kinds bpfqos needs (HTB, CAKE options and stats), and rtnetlink's error type
//! does not carry the extended ack message (the text that says which attribute the kernel
//! refused), which the user must see.

use std::cell::Cell;
use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::time::Duration;

use anyhow::Context;
use netlink_sys::Socket;
use netlink_sys::SocketAddr;
use thiserror::Error;

/// `NLM_F_REQUEST`.
pub const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_MULTI`.
pub const NLM_F_MULTI: u16 = 0x2;
/// `NLM_F_ACK`.
pub const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_ROOT`.
pub const NLM_F_ROOT: u16 = 0x100;
/// `NLM_F_MATCH`.
pub const NLM_F_MATCH: u16 = 0x200;
/// `NLM_F_DUMP`.
pub const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
/// `NLM_F_REPLACE`.
pub const NLM_F_REPLACE: u16 = 0x100;
/// `NLM_F_EXCL`.
pub const NLM_F_EXCL: u16 = 0x200;
/// `NLM_F_CREATE`.
pub const NLM_F_CREATE: u16 = 0x400;
/// `NLMSG_ERROR`: an ack (errno 0) or an error.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: end of a dump.
pub const NLMSG_DONE: u16 = 3;
/// `NLA_F_NESTED`.
pub const NLA_F_NESTED: u16 = 0x8000;
/// Attribute type bits without the flags.
pub const NLA_TYPE_MASK: u16 = 0x3fff;
/// `NLM_F_ACK_TLVS` in an error message's flags: extended ack attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLM_F_CAPPED`: the error message carries only the header of the request.
const NLM_F_CAPPED: u16 = 0x100;
/// `NLMSGERR_ATTR_MSG`: the kernel's error string.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// `NETLINK_EXT_ACK` socket option (SOL_NETLINK).
const NETLINK_EXT_ACK: i32 = 11;
/// `SOL_NETLINK`.
const SOL_NETLINK: i32 = 270;

/// A malformed netlink message or attribute.
#[derive(Debug, Error, PartialEq, Eq, Clone)]
#[error("malformed netlink message: {0}")]
pub struct DecodeError(pub &'static str);

/// A native-endian u16 at `at`.
pub fn u16_ne(b: &[u8], at: usize) -> Result<u16, DecodeError> {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_ne_bytes)
        .ok_or(DecodeError("truncated u16"))
}

/// A native-endian u32 at `at`.
pub fn u32_ne(b: &[u8], at: usize) -> Result<u32, DecodeError> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_ne_bytes)
        .ok_or(DecodeError("truncated u32"))
}

/// A native-endian u64 at `at`.
pub fn u64_ne(b: &[u8], at: usize) -> Result<u64, DecodeError> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_ne_bytes)
        .ok_or(DecodeError("truncated u64"))
}

/// A 2-byte big-endian attribute.
pub fn be16(v: &[u8]) -> Result<u16, DecodeError> {
    v.try_into()
        .map(u16::from_be_bytes)
        .map_err(|_| DecodeError("attribute is not 2 bytes"))
}

/// A 4-byte big-endian attribute.
pub fn be32(v: &[u8]) -> Result<u32, DecodeError> {
    v.try_into()
        .map(u32::from_be_bytes)
        .map_err(|_| DecodeError("attribute is not 4 bytes"))
}

/// A 4-byte native-endian attribute.
pub fn ne32(v: &[u8]) -> Result<u32, DecodeError> {
    v.try_into()
        .map(u32::from_ne_bytes)
        .map_err(|_| DecodeError("attribute is not 4 bytes"))
}

/// An 8-byte native-endian attribute.
pub fn ne64(v: &[u8]) -> Result<u64, DecodeError> {
    v.try_into()
        .map(u64::from_ne_bytes)
        .map_err(|_| DecodeError("attribute is not 8 bytes"))
}

/// A NUL-terminated string attribute.
pub fn string(v: &[u8]) -> String {
    let s = v.split(|&b| b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(s).into_owned()
}

/// Iterates netlink attributes: (type without flags, payload).
pub fn attrs(mut b: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), DecodeError>> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            b = &[];
            return Some(Err(DecodeError("attribute length out of bounds")));
        }
        let payload = &b[4..len];
        let adv = (len + 3) & !3;
        b = b.get(adv..).unwrap_or(&[]);
        Some(Ok((ty, payload)))
    })
}

/// The first attribute of type `ty`, if any (errors skipped).
pub fn find_attr(b: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(b)
        .filter_map(Result::ok)
        .find(|(t, _)| *t == ty)
        .map(|(_, v)| v)
}

/// One message of a datagram, its header split out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msg<'a> {
    /// `nlmsg_type`.
    pub ty: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// Everything after the 16-byte header.
    pub body: &'a [u8],
    /// The whole message, header included.
    pub raw: &'a [u8],
}

/// Splits a datagram into messages. A message whose length is out of bounds ends the walk with
/// an error item.
pub fn messages(mut buf: &[u8]) -> impl Iterator<Item = Result<Msg<'_>, DecodeError>> {
    std::iter::from_fn(move || {
        if buf.len() < 16 {
            return None;
        }
        let len = u32_ne(buf, 0).ok()? as usize;
        if len < 16 || len > buf.len() {
            buf = &[];
            return Some(Err(DecodeError("netlink message length out of bounds")));
        }
        let raw = &buf[..len];
        buf = buf.get((len + 3) & !3..).unwrap_or(&[]);
        Some(Ok(Msg {
            ty: u16_ne(raw, 4).unwrap_or(0),
            flags: u16_ne(raw, 6).unwrap_or(0),
            seq: u32_ne(raw, 8).unwrap_or(0),
            body: &raw[16..],
            raw,
        }))
    })
}

/// An NLMSG_ERROR message: 0 for an ack, a negative errno otherwise, and the kernel's extended
/// ack message when it sent one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// 0 or a negative errno.
    pub errno: i32,
    /// `NLMSGERR_ATTR_MSG`, if any.
    pub message: Option<String>,
}

impl Ack {
    /// Decodes the body of an NLMSG_ERROR message with `flags`.
    pub fn parse(m: &Msg<'_>) -> Result<Self, DecodeError> {
        let errno = u32_ne(m.body, 0)? as i32;
        let mut message = None;
        if m.flags & NLM_F_ACK_TLVS != 0 {
            // struct nlmsgerr: error, then the request's header (and, not capped, its body).
            let req_len = if m.flags & NLM_F_CAPPED != 0 {
                16
            } else {
                u32_ne(m.body, 4)? as usize
            };
            let tlvs = m.body.get(4 + ((req_len + 3) & !3)..).unwrap_or(&[]);
            message = find_attr(tlvs, NLMSGERR_ATTR_MSG).map(string);
        }
        Ok(Ack { errno, message })
    }

    /// Why the kernel refused, for people: errno text and the extended ack message.
    pub fn describe(&self) -> String {
        let text = nix::errno::Errno::from_raw(-self.errno).desc();
        match &self.message {
            Some(m) if !m.is_empty() => format!("{m} ({text})"),
            _ => text.to_string(),
        }
    }
}

/// Builds one netlink message: header, a fixed family header, attributes.
pub struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    /// Starts a message of type `ty` with `flags` and sequence number `seq`, followed by the
    /// family header `fixed` (nfgenmsg, tcmsg, ...).
    pub fn new(ty: u16, flags: u16, seq: u32, fixed: &[u8]) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in finish()
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        buf.extend_from_slice(fixed);
        Self { buf }
    }

    /// Appends an attribute.
    pub fn attr(&mut self, ty: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    /// Appends a NUL-terminated string attribute.
    pub fn attr_str(&mut self, ty: u16, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(ty, &v);
    }

    /// Starts a nested attribute; returns its offset for [`Builder::end_nest`].
    pub fn nest(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    /// Starts an attribute holding other attributes without the nested flag (some tc options,
    /// e.g. TCA_OPTIONS, are parsed by old kernels that reject the flag).
    pub fn open(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        at
    }

    /// Ends the attribute started at `at`.
    pub fn end_nest(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// The finished message.
    pub fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// A request socket of one netlink protocol: blocking with a timeout (the kernel answers these
/// from memory), extended acks on.
pub struct RequestSocket {
    sock: Socket,
    seq: Cell<u32>,
    buf: RefCell<Vec<u8>>,
    what: &'static str,
}

impl RequestSocket {
    /// Opens a socket of `protocol`; `what` names it in errors ("ctnetlink", "tc").
    pub fn open(protocol: isize, what: &'static str) -> anyhow::Result<Self> {
        let mut sock =
            Socket::new(protocol).with_context(|| format!("opening a {what} netlink socket"))?;
        sock.bind_auto()
            .with_context(|| format!("binding the {what} netlink socket"))?;
        set_timeout(&sock, Duration::from_secs(2), what)?;
        // Best effort: without it, errors come without the kernel's message.
        let on: i32 = 1;
        // SAFETY: setsockopt reads exactly size_of::<i32>() bytes from a live i32 on the
        // stack, on an fd `sock` owns for the duration of the call.
        let _ = unsafe {
            nix::libc::setsockopt(
                sock.as_raw_fd(),
                SOL_NETLINK,
                NETLINK_EXT_ACK,
                (&on as *const i32).cast(),
                std::mem::size_of::<i32>() as u32,
            )
        };
        Ok(Self {
            sock,
            seq: Cell::new(1),
            buf: RefCell::new(Vec::with_capacity(256 << 10)),
            what,
        })
    }

    /// The next sequence number (never 0: events carry 0).
    pub fn next_seq(&self) -> u32 {
        let s = self.seq.get().wrapping_add(1).max(1);
        self.seq.set(s);
        s
    }

    /// Sends a datagram of one or more messages.
    pub fn send(&self, datagram: &[u8]) -> anyhow::Result<()> {
        let kernel = SocketAddr::new(0, 0);
        self.sock
            .send_to(datagram, &kernel, 0)
            .with_context(|| format!("sending a {} request", self.what))?;
        Ok(())
    }

    /// Reads datagrams and hands every message to `each` until it returns `false` ("done").
    /// Bounded: at most `max_datagrams` reads, each under the socket's timeout.
    pub fn recv_until(
        &self,
        max_datagrams: usize,
        mut each: impl FnMut(&Msg<'_>) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let mut buf = self.buf.borrow_mut();
        for _ in 0..max_datagrams {
            buf.clear();
            self.sock
                .recv(&mut *buf, 0)
                .with_context(|| format!("reading the {} answer", self.what))?;
            for m in messages(&buf) {
                match m {
                    Ok(m) => {
                        if !each(&m)? {
                            return Ok(());
                        }
                    }
                    Err(e) => log::debug!("{}: {e}", self.what),
                }
            }
        }
        anyhow::bail!("{} answer did not end", self.what)
    }

    /// Sends `msgs` (each built with NLM_F_ACK and the sequence number at its index in
    /// `seqs`) in datagrams of `per_datagram`, and returns every ack in order.
    pub fn transact(
        &self,
        msgs: &[(u32, Vec<u8>)],
        per_datagram: usize,
    ) -> anyhow::Result<Vec<Ack>> {
        let mut acks: Vec<Option<Ack>> = vec![None; msgs.len()];
        for (c, chunk) in msgs.chunks(per_datagram.max(1)).enumerate() {
            let datagram: Vec<u8> = chunk.iter().flat_map(|(_, m)| m.iter().copied()).collect();
            self.send(&datagram)?;
            let mut pending = chunk.len();
            self.recv_until(1 + 4 * chunk.len(), |m| {
                if m.ty == NLMSG_ERROR {
                    if let Some(i) = chunk.iter().position(|(s, _)| *s == m.seq) {
                        if acks[c * per_datagram.max(1) + i].is_none() {
                            acks[c * per_datagram.max(1) + i] = Some(Ack::parse(m)?);
                            pending -= 1;
                        }
                    }
                }
                Ok(pending > 0)
            })?;
        }
        acks.into_iter()
            .map(|a| a.ok_or_else(|| anyhow::anyhow!("{}: an ack is missing", self.what)))
            .collect()
    }
}

fn set_timeout(sock: &Socket, d: Duration, what: &str) -> anyhow::Result<()> {
    let tv = nix::sys::time::TimeVal::new(d.as_secs() as _, d.subsec_micros() as _);
    // SAFETY: the fd is owned by `sock`, open for the duration of this borrow; setsockopt only
    // reads the TimeVal we pass.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(sock.as_raw_fd()) };
    nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
        .with_context(|| format!("setting the {what} receive timeout"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_and_nest() {
        let mut b = Builder::new(20, NLM_F_REQUEST, 7, &[1, 2, 3, 4]);
        b.attr(1, &[9, 9, 9]);
        let n = b.nest(2);
        b.attr(3, &5u32.to_ne_bytes());
        b.attr_str(4, "htb");
        b.end_nest(n);
        let m = b.finish();
        let msgs: Vec<Msg<'_>> = messages(&m).filter_map(Result::ok).collect();
        assert_eq!(msgs.len(), 1);
        assert_eq!((msgs[0].ty, msgs[0].seq), (20, 7));
        let body = &msgs[0].body[4..];
        let top: Vec<(u16, &[u8])> = attrs(body).filter_map(Result::ok).collect();
        assert_eq!(top.len(), 2);
        assert_eq!(top[0], (1, &[9u8, 9, 9][..]));
        assert_eq!(find_attr(top[1].1, 3).map(ne32), Some(Ok(5)));
        assert_eq!(find_attr(top[1].1, 4).map(string), Some("htb".to_string()));
    }

    #[test]
    fn an_extended_ack_carries_the_kernels_message() {
        // NLMSG_ERROR, capped, with NLMSGERR_ATTR_MSG.
        let mut body = Vec::new();
        body.extend_from_slice(&(-22i32).to_ne_bytes());
        body.extend_from_slice(&[0u8; 16]); // the request's header
        let mut b = Builder::new(NLMSG_ERROR, NLM_F_ACK_TLVS | NLM_F_CAPPED, 3, &body);
        b.attr_str(NLMSGERR_ATTR_MSG, "Specified qdisc kind is unknown");
        let m = b.finish();
        let msg = messages(&m).next().and_then(Result::ok);
        let ack = msg.map(|m| Ack::parse(&m));
        let Some(Ok(ack)) = ack else {
            panic!("no ack parsed");
        };
        assert_eq!(ack.errno, -22);
        assert_eq!(
            ack.describe(),
            "Specified qdisc kind is unknown (Invalid argument)"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut seed = 0x9e37_79b9u32;
        for len in 0..200usize {
            let mut v = vec![0u8; len];
            for x in &mut v {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *x = (seed >> 24) as u8;
            }
            for m in messages(&v).flatten() {
                let _ = attrs(m.body).count();
                let _ = Ack::parse(&m);
            }
        }
    }
}

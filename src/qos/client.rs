//! tc over rtnetlink: dumps of qdiscs and classes, and batches of changes whose every ack is
//! checked, with the kernel's extended ack message in the error.

use anyhow::Context;
use netlink_sys::protocols::NETLINK_ROUTE;
use thiserror::Error;

use super::tc;
use super::tc::Class;
use super::tc::Dumped;
use super::tc::Handle;
use super::tc::Qdisc;
use crate::nl::Ack;
use crate::nl::RequestSocket;
use crate::nl::NLMSG_DONE;
use crate::nl::NLMSG_ERROR;

/// One change to the tc configuration of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcOp {
    /// Create or replace a qdisc (`exclusive`: fail if one is there, `tc qdisc add`).
    Qdisc {
        /// The qdisc.
        qdisc: Qdisc,
        /// Fail when a qdisc already sits at that parent.
        exclusive: bool,
    },
    /// Change an existing qdisc's options in place (no queue reset).
    ChangeQdisc(Qdisc),
    /// Delete the qdisc at `parent` (its classes and children go with it).
    DeleteQdisc {
        /// Device.
        ifindex: u32,
        /// Handle of the qdisc.
        handle: Handle,
        /// Its parent.
        parent: Handle,
    },
    /// Create an HTB class or change one in place.
    Class(Class),
    /// Delete an HTB class.
    DeleteClass {
        /// Device.
        ifindex: u32,
        /// Class id.
        handle: Handle,
    },
}

impl TcOp {
    /// What it does, for errors and logs.
    pub fn describe(&self) -> String {
        match self {
            TcOp::Qdisc { qdisc, .. } => format!(
                "qdisc {} {} parent {} on ifindex {}",
                qdisc.kind.name(),
                qdisc.handle,
                qdisc.parent,
                qdisc.ifindex
            ),
            TcOp::ChangeQdisc(q) => format!(
                "change of qdisc {} {} on ifindex {}",
                q.kind.name(),
                q.handle,
                q.ifindex
            ),
            TcOp::DeleteQdisc {
                ifindex,
                handle,
                parent,
            } => format!("deletion of qdisc {handle} parent {parent} on ifindex {ifindex}"),
            TcOp::Class(c) => format!("class {} on ifindex {}", c.handle, c.ifindex),
            TcOp::DeleteClass { ifindex, handle } => {
                format!("deletion of class {handle} on ifindex {ifindex}")
            }
        }
    }

    fn encode(&self, seq: u32) -> Vec<u8> {
        match self {
            TcOp::Qdisc { qdisc, exclusive } => tc::qdisc_request(seq, qdisc, *exclusive),
            TcOp::ChangeQdisc(q) => tc::qdisc_change_request(seq, q),
            TcOp::DeleteQdisc {
                ifindex,
                handle,
                parent,
            } => tc::qdisc_delete_request(seq, *ifindex, *handle, *parent),
            TcOp::Class(c) => tc::class_request(seq, c),
            TcOp::DeleteClass { ifindex, handle } => {
                tc::class_delete_request(seq, *ifindex, *handle)
            }
        }
    }
}

/// A change the kernel refused.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{op}: {reason}")]
pub struct TcError {
    /// What was asked.
    pub op: String,
    /// The kernel's answer: its message and the errno's text.
    pub reason: String,
    /// The negative errno.
    pub errno: i32,
}

/// A tc request socket in the caller's network namespace.
pub struct TcSocket {
    sock: RequestSocket,
}

impl TcSocket {
    /// Opens it.
    pub fn open() -> anyhow::Result<Self> {
        Ok(Self {
            sock: RequestSocket::open(NETLINK_ROUTE, "tc")?,
        })
    }

    /// Applies `ops` in order, in batches, and returns each one's outcome. The kernel applies
    /// them one after the other; a refused one does not stop the others (the caller decides
    /// what to roll back).
    pub fn apply(&self, ops: &[TcOp]) -> anyhow::Result<Vec<Result<(), TcError>>> {
        let msgs: Vec<(u32, Vec<u8>)> = ops
            .iter()
            .map(|op| {
                let seq = self.sock.next_seq();
                (seq, op.encode(seq))
            })
            .collect();
        let acks = self.sock.transact(&msgs, 32)?;
        Ok(ops
            .iter()
            .zip(acks)
            .map(|(op, ack)| outcome(op, &ack))
            .collect())
    }

    /// Applies `ops` and fails on the first refusal (the ones after it were still applied).
    pub fn apply_all(&self, ops: &[TcOp]) -> anyhow::Result<()> {
        for r in self.apply(ops)? {
            r?;
        }
        Ok(())
    }

    /// Dumps qdiscs or classes (`ty`) and decodes those of `ifindex` (a message of another
    /// device is skipped before decoding; one of this device that does not decode is an
    /// error: its shaper's state would be unknown).
    fn dump<T>(
        &self,
        ty: u16,
        ifindex: u32,
        decode: impl Fn(&[u8]) -> Result<Option<T>, crate::nl::DecodeError>,
    ) -> anyhow::Result<Vec<T>> {
        let seq = self.sock.next_seq();
        self.sock.send(&tc::dump_request(seq, ty, ifindex))?;
        let mut out = Vec::new();
        let mut failed = None;
        self.sock.recv_until(100_000, |m| {
            if m.seq != seq {
                return Ok(true);
            }
            match m.ty {
                NLMSG_DONE => return Ok(false),
                NLMSG_ERROR => {
                    let ack = Ack::parse(m)?;
                    if ack.errno != 0 {
                        failed = Some(ack.describe());
                    }
                    return Ok(false);
                }
                _ => {}
            }
            if crate::nl::u32_ne(m.body, 4).ok() != Some(ifindex) {
                return Ok(true);
            }
            match decode(m.body) {
                Ok(Some(item)) => out.push(item),
                Ok(None) => {}
                Err(e) => failed = failed.take().or(Some(e.to_string())),
            }
            Ok(true)
        })?;
        match failed {
            Some(why) => anyhow::bail!("tc dump of ifindex {ifindex}: {why}"),
            None => Ok(out),
        }
    }

    /// The qdiscs of `ifindex` with their counters.
    pub fn qdiscs(&self, ifindex: u32) -> anyhow::Result<Vec<Dumped<Qdisc>>> {
        self.dump(tc::RTM_GETQDISC, ifindex, |b| tc::decode_qdisc(b).map(Some))
            .context("dumping qdiscs")
    }

    /// The HTB classes of `ifindex` with their counters.
    pub fn classes(&self, ifindex: u32) -> anyhow::Result<Vec<Dumped<Class>>> {
        self.dump(tc::RTM_GETTCLASS, ifindex, tc::decode_class)
            .context("dumping classes")
    }
}

fn outcome(op: &TcOp, ack: &Ack) -> Result<(), TcError> {
    if ack.errno == 0 {
        return Ok(());
    }
    Err(TcError {
        op: op.describe(),
        reason: ack.describe(),
        errno: ack.errno,
    })
}

//! Conntrack over ctnetlink: the event subscription that drives admission (new, updated and
//! destroyed connections, plus nf_tables ruleset generations, which mean "firewall reloaded"),
//! and a request socket for dumps, lookups and timeout refreshes.
//!
//! Events are the main path; the dump at start (and after an event-queue overflow) catches up
//! with what happened while nobody listened.

pub mod codec;

use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;
use netlink_sys::protocols::NETLINK_NETFILTER;
use netlink_sys::Socket;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

pub use codec::Conn;
pub use codec::Message;
pub use codec::Tuple;

use crate::nl::RequestSocket;

/// Receive buffer asked for on the event socket: bursts of thousands of new connections must not
/// overflow it in normal operation (overflow is survivable: see [`Recv::Overflow`]).
const EVENT_RCVBUF: usize = 8 << 20;

/// What one read from the event socket produced.
pub enum Recv {
    /// Decoded messages (malformed ones are logged and dropped).
    Messages(Vec<Message>),
    /// The kernel dropped events (ENOBUFS): the caller must resynchronise with a dump.
    Overflow,
}

fn recv_some(sock: &Socket, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    buf.clear();
    sock.recv(buf, 0)
}

fn decode(buf: &[u8]) -> Vec<Message> {
    codec::parse_datagram(buf)
        .into_iter()
        .filter_map(|r| r.map_err(|e| log::debug!("conntrack: {e}")).ok())
        .collect()
}

/// The multicast subscription.
pub struct EventSocket {
    fd: AsyncFd<Socket>,
    buf: Vec<u8>,
}

impl EventSocket {
    /// Subscribes to conntrack new/update/destroy events and nf_tables generation changes.
    pub fn subscribe() -> anyhow::Result<Self> {
        let mut sock = Socket::new(NETLINK_NETFILTER).context("opening a ctnetlink socket")?;
        sock.bind_auto().context("binding the ctnetlink socket")?;
        for g in [
            codec::NFNLGRP_CONNTRACK_NEW,
            codec::NFNLGRP_CONNTRACK_UPDATE,
            codec::NFNLGRP_CONNTRACK_DESTROY,
        ] {
            sock.add_membership(g)
                .context("subscribing to conntrack events (is nf_conntrack_netlink loaded?)")?;
        }
        if let Err(e) = sock.add_membership(codec::NFNLGRP_NFTABLES) {
            log::warn!(
                "no nf_tables events ({e}): firewall reloads will not flush offloaded flows"
            );
        }
        // As root the daemon may go past net.core.rmem_max (SO_RCVBUFFORCE), which on many
        // systems is far below what a burst of new connections needs; SO_RCVBUF otherwise.
        // SAFETY: the fd belongs to `sock`, which outlives this borrow.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(sock.as_raw_fd()) };
        if let Err(e) =
            nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::RcvBufForce, &EVENT_RCVBUF)
        {
            log::debug!("conntrack event buffer (SO_RCVBUFFORCE): {e}");
            if let Err(e) = sock.set_rx_buf_sz(EVENT_RCVBUF) {
                log::debug!("conntrack event buffer: {e}");
            }
        }
        sock.set_non_blocking(true)
            .context("making the ctnetlink socket non-blocking")?;
        // SAFETY: `sock` owns its fd and is moved into the AsyncFd, which keeps it open, and
        // netlink_sys::Socket::as_raw_fd always returns that same fd.
        let fd = unsafe { AsyncFd::register_with_interest(sock, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("registering the ctnetlink socket")?;
        Ok(Self {
            fd,
            buf: Vec::with_capacity(256 << 10),
        })
    }

    /// Empties the socket's queue, keeping firewall reloads; called after an overflow, before
    /// the dump that replaces what was lost. Two reasons, both found by the churn soak:
    /// - after an overflow the kernel drops events *silently* until the queue has been empty
    ///   once (it reports ENOBUFS once per congestion): a dump taken before that misses the
    ///   events dropped after its snapshot (a UDP flow assured then is never offloaded);
    /// - what is queued predates the dump, and the events that followed it were lost: applied
    ///   after the dump, an old "not established yet" would undo the dump's newer state.
    ///
    /// Only the message headers are read (a full queue is 8 MiB); reads until the queue is
    /// empty, or `limit` as a safety valve against an event storm (false then: the caller
    /// should expect another overflow). Returns whether it emptied, the messages kept and how
    /// many were thrown away.
    pub fn discard_queued(&mut self, limit: Duration) -> (bool, Vec<Message>, usize) {
        let start = Instant::now();
        let (mut kept, mut discarded) = (Vec::new(), 0);
        while start.elapsed() < limit {
            match recv_some(self.fd.get_ref(), &mut self.buf) {
                Ok(_) => match codec::count_if_conntrack_only(&self.buf) {
                    Some(n) => discarded += n,
                    None => {
                        for m in decode(&self.buf) {
                            match m {
                                Message::New(_) | Message::Update(_) | Message::Destroy(_) => {
                                    discarded += 1
                                }
                                other => kept.push(other),
                            }
                        }
                    }
                },
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return (true, kept, discarded),
                Err(e) => {
                    log::warn!("discarding queued conntrack events: {e}");
                    break;
                }
            }
        }
        (false, kept, discarded)
    }

    /// Waits for the next batch of events.
    pub async fn recv(&mut self) -> anyhow::Result<Recv> {
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .context("waiting for conntrack events")?;
            let buf = &mut self.buf;
            match guard.try_io(|s| recv_some(s.get_ref(), buf)) {
                Ok(Ok(_)) => return Ok(Recv::Messages(decode(&self.buf))),
                Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                    return Ok(Recv::Overflow)
                }
                Ok(Err(e)) if e.kind() == ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e).context("reading conntrack events"),
                Err(_would_block) => {}
            }
        }
    }
}

/// Connections conntrack holds now (this network namespace's `nf_conntrack_count`).
fn current_count() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Request/response socket for dumps, lookups and refreshes. Blocking with a short timeout: the
/// kernel answers these from memory, so they complete in microseconds to milliseconds.
pub struct Client {
    sock: RequestSocket,
}

impl Client {
    /// Opens the socket.
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            sock: RequestSocket::open(NETLINK_NETFILTER, "ctnetlink")?,
        })
    }

    /// Every conntrack entry (both families).
    pub fn dump(&self) -> anyhow::Result<Vec<Conn>> {
        let seq = self.sock.next_seq();
        self.sock
            .send(&codec::dump_request(seq, codec::libc_af::UNSPEC))?;
        // Sized for what conntrack holds now and a little more: a vector doubling its way up
        // to 64k connections would hold room for 128k (20 MiB) at its peak.
        let expected = current_count().map_or(0, |n| (n + n / 16 + 64).min(1 << 20));
        let mut out = Vec::with_capacity(expected);
        // Bounded: a table of a million entries is ~4000 datagrams.
        self.sock.recv_until(1_000_000, |m| {
            match codec::parse_message(m) {
                Ok(Message::New(c)) | Ok(Message::Update(c)) => out.push(c),
                Ok(Message::Done) => return Ok(false),
                Ok(Message::Ack { errno, .. }) if errno != 0 => {
                    bail!("conntrack dump failed: errno {}", -errno)
                }
                Ok(_) => {}
                Err(e) => log::debug!("conntrack dump: {e}"),
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// Sets the timeout of each entry (by original tuple and zone) in one batch; returns, in
    /// order, whether each one still exists (ENOENT: it is gone).
    pub fn refresh(&self, entries: &[(Tuple, u16)], timeout_s: u32) -> anyhow::Result<Vec<bool>> {
        self.batch(entries, |seq, t, zone| {
            codec::refresh_request(seq, t, zone, timeout_s)
        })
    }

    /// Whether each entry still exists, without changing it.
    pub fn exists(&self, entries: &[(Tuple, u16)]) -> anyhow::Result<Vec<bool>> {
        self.batch(entries, codec::get_request)
    }

    /// Makes TCP window tracking liberal for these entries (see [`codec::liberal_request`]).
    pub fn set_liberal(&self, entries: &[(Tuple, u16)]) -> anyhow::Result<Vec<bool>> {
        self.batch(entries, codec::liberal_request)
    }

    /// Sends one acked request per entry, 64 per datagram, and maps the acks back to entries:
    /// `false` where the kernel answered ENOENT.
    fn batch(
        &self,
        entries: &[(Tuple, u16)],
        build: impl Fn(u32, &Tuple, u16) -> Vec<u8>,
    ) -> anyhow::Result<Vec<bool>> {
        let msgs: Vec<(u32, Vec<u8>)> = entries
            .iter()
            .map(|(t, zone)| {
                let seq = self.sock.next_seq();
                (seq, build(seq, t, *zone))
            })
            .collect();
        let acks = self.sock.transact(&msgs, 64)?;
        for (a, (t, _)) in acks.iter().zip(entries) {
            if a.errno != 0 {
                log::debug!(
                    "conntrack request for {t}: errno {} {:?}",
                    a.errno,
                    a.message
                );
            }
        }
        Ok(acks.iter().map(|a| a.errno != -nix::libc::ENOENT).collect())
    }
}

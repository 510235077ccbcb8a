//! The data path's ring buffer (`events`): a FIN or RST on an offloaded flow is reported once,
//! so that the flow goes back to the kernel within one event-loop turn instead of waiting for a
//! scan. A full ring loses events; the flow manager's periodic refresh reads the entry's
//! teardown flag as well, so a lost event only delays the teardown.

use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::os::fd::RawFd;
use std::rc::Rc;

use anyhow::Context;
use libbpf_rs::MapCore;
use libbpf_rs::RingBuffer;
use libbpf_rs::RingBufferBuilder;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::abi;
use super::entry::FlowKey;

/// The ring buffer's epoll fd, borrowed from the [`RingBuffer`] that owns (and closes) it.
struct EpollFd(RawFd);

impl AsRawFd for EpollFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Teardown requests from the data path, as an async source for the event loop.
pub struct TeardownEvents {
    // Dropped before `ring`, which owns the fd the registration refers to.
    fd: AsyncFd<EpollFd>,
    ring: RingBuffer<'static>,
    keys: Rc<RefCell<Vec<FlowKey>>>,
}

/// The flow key of a teardown event; `None` for anything else.
pub fn teardown_key(data: &[u8]) -> Option<FlowKey> {
    let ev = abi::from_bytes::<abi::Event>(data)?;
    match abi::skel::types::bpfqos_event_type(ev.r#type) {
        abi::EventType::BPFQOS_EV_TEARDOWN4 => Some(FlowKey::V4(ev.k4)),
        abi::EventType::BPFQOS_EV_TEARDOWN6 => Some(FlowKey::V6(ev.k6)),
        _ => None,
    }
}

impl TeardownEvents {
    /// Subscribes to `map` (the object's `events` ring buffer). Call inside the tokio runtime.
    pub fn open(map: &dyn MapCore) -> anyhow::Result<Self> {
        let keys: Rc<RefCell<Vec<FlowKey>>> = Rc::default();
        let sink = Rc::clone(&keys);
        let mut builder = RingBufferBuilder::new();
        builder
            .add(map, move |data: &[u8]| {
                if let Some(k) = teardown_key(data) {
                    sink.borrow_mut().push(k);
                }
                0
            })
            .context("subscribing to the events ring buffer")?;
        let ring = builder.build().context("creating the ring buffer reader")?;
        // SAFETY: the fd stays open as long as the registration: `ring` owns it and is
        // dropped after `fd` (field order of Self), and nothing else closes it.
        let fd = unsafe {
            AsyncFd::register_with_interest(EpollFd(ring.epoll_fd()), Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)
        .context("registering the ring buffer with the event loop")?;
        Ok(Self { fd, ring, keys })
    }

    /// Waits for the next teardown requests (at least one key).
    pub async fn recv(&mut self) -> anyhow::Result<Vec<FlowKey>> {
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .context("waiting for data-path events")?;
            self.ring.consume().context("reading data-path events")?;
            guard.clear_ready();
            let keys = std::mem::take(&mut *self.keys.borrow_mut());
            if !keys.is_empty() {
                return Ok(keys);
            }
        }
    }
}

//! The flow tables as user space keeps them (layout, hash and protocol: `bpfqos_abi.h`).
//!
//! Each family has an entry array (`flows4`/`flows6`, written through the bpf() syscall) and
//! a hash index of 16-slot buckets (`buckets4`/`buckets6`), mmap'ed so that a slot is
//! published with one atomic 32-bit store while the data path reads it on other CPUs. This
//! module owns which entries are in use, which slot points at which entry, and the rule that
//! makes it safe without locks: an entry is written only while no slot points at it, and an
//! entry that was unlinked is written again only after an RCU grace period (see
//! [`FlowTables::synchronize`]). Grace periods take milliseconds (9-17 ms measured on an idle
//! 2-core VM), so the heartbeat only asks for one ([`FlowTables::reclaim`]): a worker thread
//! waits it out, and a later heartbeat frees what it covered. The event loop blocks on one
//! only when every entry is taken and some await a grace period.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;

use anyhow::anyhow;
use anyhow::bail;
use anyhow::Context;
use libbpf_rs::MapCore;
use libbpf_rs::MapFlags;
use libbpf_rs::MapHandle;

use super::abi;
use super::abi::FlowCounters;

/// Entries read per bpf() call for a counter snapshot.
const SNAPSHOT_BATCH: u32 = 1024;

/// Entries zeroed per bpf() call when their grace period is over.
const ZERO_BATCH: usize = 1024;

/// Why a flow could not be placed: the caller keeps it on the kernel path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlaceError {
    /// Every entry of the family is in use.
    #[error("flow table full")]
    Full,
    /// The key's bucket has no free slot.
    #[error("hash bucket {0} full ({n} slots)", n = abi::BUCKET_SLOTS)]
    BucketFull(u32),
    /// Another flow in the key's bucket has the same tag (the data path takes the first).
    #[error("tag collision in hash bucket {0}")]
    TagCollision(u32),
}

/// A shared mapping of a whole `BPF_F_MMAPABLE` array map, unmapped on drop.
struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is shared memory of the whole process, valid until Drop, and every
// access goes through atomics; moving the owner to another thread changes nothing about that.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps all of `map` (elements of `value_size` rounded up to 8 bytes, as the kernel lays
    /// out an array), read-only unless `write`.
    fn of(map: &MapHandle, write: bool) -> anyhow::Result<Self> {
        let stride = (map.value_size() as usize).next_multiple_of(8);
        let len = NonZeroUsize::new(stride * map.max_entries() as usize)
            .ok_or_else(|| anyhow!("empty map"))?;
        let mut prot = nix::sys::mman::ProtFlags::PROT_READ;
        if write {
            prot |= nix::sys::mman::ProtFlags::PROT_WRITE;
        }
        // SAFETY: a fresh shared mapping of the whole BPF_F_MMAPABLE array (the kernel checks
        // the length and the flag); nothing in this process aliases it as non-atomic memory.
        // It stays valid until munmap in Drop, independent of the fd's lifetime.
        let p = unsafe {
            nix::sys::mman::mmap(
                None,
                len,
                prot,
                nix::sys::mman::MapFlags::MAP_SHARED,
                map.as_fd(),
                0,
            )
        }?;
        Ok(Self {
            base: p.cast(),
            len: len.get(),
        })
    }

    /// The 32-bit word at byte `at` (4-aligned, within the mapping: the caller's to check).
    fn word(&self, at: usize) -> &AtomicU32 {
        let at = at.min(self.len - 4) & !3;
        // SAFETY: `at + 4 <= len`, 4-aligned (page-aligned base), inside the mapping; it is
        // only ever accessed atomically from this process (BPF uses single loads/stores or
        // atomic adds of aligned words).
        unsafe { &*self.base.as_ptr().add(at).cast::<AtomicU32>() }
    }

    /// The 64-bit counter at byte `at` (8-aligned), which BPF increments with atomic adds.
    /// 64-bit targets load it in one go. 32-bit ones read its two halves (a 64-bit atomic
    /// load there may be a compare-and-swap, which would write to this read-only mapping)
    /// until two reads in a row agree, at most a few times: a busy counter may still be read
    /// torn, as bpf() copies it on those targets too.
    fn counter(&self, at: usize) -> u64 {
        #[cfg(target_pointer_width = "64")]
        {
            let at = at.min(self.len - 8) & !7;
            // SAFETY: as in `word`, for an 8-aligned 8-byte word inside the mapping.
            let w = unsafe {
                &*self
                    .base
                    .as_ptr()
                    .add(at)
                    .cast::<std::sync::atomic::AtomicU64>()
            };
            w.load(Ordering::Relaxed)
        }
        #[cfg(not(target_pointer_width = "64"))]
        {
            let (lo_at, hi_at) = if cfg!(target_endian = "little") {
                (at, at + 4)
            } else {
                (at + 4, at)
            };
            let read = || {
                let hi = self.word(hi_at).load(Ordering::Acquire);
                let lo = self.word(lo_at).load(Ordering::Acquire);
                u64::from(hi) << 32 | u64::from(lo)
            };
            let mut last = read();
            for _ in 0..4 {
                let again = read();
                if again == last {
                    break;
                }
                last = again;
            }
            last
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: base/len describe exactly the mapping made in `of`, unmapped only here.
        let _ = unsafe { nix::sys::mman::munmap(self.base.cast(), self.len) };
    }
}

/// The mmap'ed hash index of one family: `FLOW_BUCKETS * BUCKET_SLOTS` atomic slots.
struct SlotIndex {
    map: Mapping,
}

impl SlotIndex {
    fn map(buckets: &MapHandle) -> anyhow::Result<Self> {
        let len = abi::FLOW_BUCKETS as usize * abi::BUCKET_SLOTS;
        if buckets.value_size() as usize * buckets.max_entries() as usize != len * 4 {
            bail!("bucket map has an unexpected size");
        }
        let map = Mapping::of(buckets, true).context("mmap of a flow-table bucket map")?;
        Ok(Self { map })
    }

    fn slot(&self, bucket: u32, i: usize) -> &AtomicU32 {
        self.map.word((bucket as usize * abi::BUCKET_SLOTS + i) * 4)
    }

    fn load(&self, bucket: u32, i: usize) -> u32 {
        self.slot(bucket, i).load(Ordering::Acquire)
    }

    /// Publishes a slot: everything this thread wrote before (the entry, through bpf()) is
    /// visible to a reader that sees the new value.
    fn store(&self, bucket: u32, i: usize, v: u32) {
        self.slot(bucket, i).store(v, Ordering::Release);
    }
}

// The counters and flags BPF writes sit at the same offsets in both families' entries, 8- and
// 4-aligned.
const CNT_AT: usize = std::mem::offset_of!(abi::Flow4, cnt);
const FLAGS_AT: usize = std::mem::offset_of!(abi::Flow4, flags);
const _: () = assert!(
    CNT_AT == std::mem::offset_of!(abi::Flow6, cnt)
        && FLAGS_AT == std::mem::offset_of!(abi::Flow6, flags)
        && CNT_AT % 8 == 0
        && FLAGS_AT % 4 == 0
);

/// The entry array of one family, mapped read-only: counters and flags read from memory
/// instead of one bpf() call per entry (a status document at 64k connections reads 128k
/// entries; a refresh round as many).
struct EntryView {
    map: Mapping,
    stride: usize,
    capacity: u32,
}

impl EntryView {
    fn of(entries: &MapHandle) -> anyhow::Result<Self> {
        Ok(Self {
            map: Mapping::of(entries, false).context("mmap of a flow entry map")?,
            stride: (entries.value_size() as usize).next_multiple_of(8),
            capacity: entries.max_entries(),
        })
    }

    fn counters(&self, index: u32) -> Option<FlowCounters> {
        if index >= self.capacity {
            return None;
        }
        let at = index as usize * self.stride;
        Some(FlowCounters {
            packets: self.map.counter(at + CNT_AT),
            bytes: self.map.counter(at + CNT_AT + 8),
            flags: self.map.word(at + FLAGS_AT).load(Ordering::Relaxed),
        })
    }
}

/// The owner of an entry installed without one ([`FlowTables::install`]) or adopted from an
/// earlier daemon.
pub const NO_OWNER: u32 = u32::MAX;

// A bucket number is kept in 16 bits ([`Placed::bucket`]).
const _: () = assert!(abi::FLOW_BUCKETS <= 1 << 16);

/// Where a live flow sits, and whose it is.
#[derive(Clone, Copy, Debug)]
struct Placed {
    index: u32,
    /// What the installer gave to find its own record from a key ([`FlowTables::owner`]).
    owner: u32,
    bucket: u32,
    slot: usize,
}

/// What [`Live`] keeps per entry besides the key: 8 bytes.
#[derive(Clone, Copy, Default)]
struct Seat {
    owner: u32,
    bucket: u16,
    slot: u8,
    live: bool,
}

/// The live flows of one family, by entry index: each one's key and where its slot is. A key
/// is found through the hash index the data path reads (its bucket, the one slot there with
/// its tag: [`Table::install`] refuses a second) and checked against the key kept here, so
/// there is no hash map of keys: at 64k connections (128k entries) a map at its load factor
/// took twice the memory of these arrays, which grow with the highest index in use.
struct Live<const N: usize> {
    keys: Vec<[u8; N]>,
    seats: Vec<Seat>,
    len: usize,
}

impl<const N: usize> Live<N> {
    fn new() -> Self {
        Self {
            keys: Vec::new(),
            seats: Vec::new(),
            len: 0,
        }
    }

    /// Makes entry `p.index` the live flow `key`.
    fn set(&mut self, key: [u8; N], p: Placed) {
        let i = p.index as usize;
        if self.seats.len() <= i {
            self.seats.resize(i + 1, Seat::default());
            self.keys.resize(i + 1, [0; N]);
        }
        if !self.seats[i].live {
            self.len += 1;
        }
        self.keys[i] = key;
        self.seats[i] = Seat {
            owner: p.owner,
            bucket: p.bucket as u16,
            slot: p.slot as u8,
            live: true,
        };
    }

    /// Entry `index` no longer holds a live flow.
    fn unset(&mut self, index: u32) {
        if let Some(seat) = self.seats.get_mut(index as usize) {
            if seat.live {
                seat.live = false;
                self.len -= 1;
            }
        }
    }

    /// The live flow in entry `index`, if it is `key` in slot `slot` of `bucket`.
    fn check(&self, index: u32, key: &[u8; N], bucket: u32, slot: usize) -> Option<Placed> {
        let seat = self.seats.get(index as usize)?;
        let same = seat.live
            && u32::from(seat.bucket) == bucket
            && usize::from(seat.slot) == slot
            && self.keys.get(index as usize) == Some(key);
        same.then_some(Placed {
            index,
            owner: seat.owner,
            bucket,
            slot,
        })
    }

    fn iter(&self) -> impl Iterator<Item = &[u8; N]> {
        self.seats
            .iter()
            .zip(&self.keys)
            .filter(|(s, _)| s.live)
            .map(|(_, k)| k)
    }

    fn clear(&mut self) {
        *self = Self::new();
    }
}

/// An entry unlinked from the index, not to be rewritten before a grace period. (A replaced
/// entry's key, for its counts, is in [`Table::carry_for`].)
#[derive(Clone, Copy)]
struct Unlinked {
    index: u32,
    /// Written by this process: zeroed on release, so that dumps show only live flows.
    dirty: bool,
    /// The grace period asked for after this entry was unlinked ([`GraceWorker`] ticket,
    /// numbered from 1); 0 until a heartbeat asks for one.
    ticket: u64,
}

impl Unlinked {
    fn new(index: u32, dirty: bool) -> Self {
        Self {
            index,
            dirty,
            ticket: 0,
        }
    }
}

/// One family's table; `N` is the family's key size. Keys are kept inline (a heap allocation
/// per key would double the memory at 64k flows).
struct Table<const N: usize> {
    entries: MapHandle,
    /// The entries mapped, for their counters (None where the kernel would not map them:
    /// counters are then read through bpf()).
    view: Option<EntryView>,
    index: SlotIndex,
    entry_size: usize,
    /// The hash seeds (the index's, the data path's).
    seed: [u32; abi::HASH_SEEDS],
    live: Live<N>,
    free: Vec<u32>,
    unlinked: Vec<Unlinked>,
    /// Replaced entries awaiting their grace period, by entry index: the key they were
    /// replaced for (their counts wait in [`Table::replaced`] until they are final).
    carry_for: HashMap<u32, [u8; N]>,
    /// Packets and bytes counted by replaced entries after their replacement was written.
    carried: HashMap<[u8; N], (u64, u64)>,
    /// Replaced entries still counting, by the key of their live replacement: (entry index,
    /// packets, bytes) copied into the replacement. Looked up by key, so that reading or
    /// removing one flow costs the same with thousands of entries awaiting a grace period.
    replaced: HashMap<[u8; N], Vec<(u32, u64, u64)>>,
    /// Every entry's counters, by index, while a status document is being made
    /// ([`FlowTables::begin_snapshot`]).
    snapshot: Option<Vec<FlowCounters>>,
    /// One past the highest entry index ever handed out.
    high: u32,
    /// Entries in the map (its `max_entries`, sized at load).
    capacity: u32,
}

/// `key` as a table of key size `N` keeps it; None for another length.
fn inline_key<const N: usize>(key: &[u8]) -> Option<[u8; N]> {
    key.try_into().ok()
}

impl<const N: usize> Table<N> {
    fn open(
        entries: MapHandle,
        buckets: &MapHandle,
        seed: [u32; abi::HASH_SEEDS],
    ) -> anyhow::Result<Self> {
        let entry_size = entries.value_size() as usize;
        let capacity = entries.max_entries();
        if capacity == 0 || capacity > abi::MAX_FLOWS {
            bail!(
                "flow entry map has {capacity} entries (1 to {} allowed)",
                abi::MAX_FLOWS
            );
        }
        let view = EntryView::of(&entries)
            .map_err(|e| log::warn!("flow counters read through bpf(): {e:#}"))
            .ok();
        Ok(Self {
            index: SlotIndex::map(buckets)?,
            view,
            entries,
            entry_size,
            seed,
            live: Live::new(),
            free: Vec::new(),
            unlinked: Vec::new(),
            carry_for: HashMap::new(),
            carried: HashMap::new(),
            replaced: HashMap::new(),
            snapshot: None,
            high: 0,
            capacity,
        })
    }

    /// Where the live flow `key` is: its bucket's slot with its tag, if that points at an
    /// entry holding this key.
    fn find(&self, key: &[u8; N]) -> Option<Placed> {
        let (bucket, tag) = abi::flow_hash(key, &self.seed);
        (0..abi::BUCKET_SLOTS).find_map(|i| {
            let s = self.index.load(bucket, i);
            (s != 0 && abi::slot_tag(s) == tag)
                .then(|| self.live.check(abi::slot_index(s), key, bucket, i))
                .flatten()
        })
    }

    fn read(&self, index: u32) -> Option<Vec<u8>> {
        self.entries
            .lookup(&index.to_ne_bytes(), MapFlags::ANY)
            .ok()
            .flatten()
    }

    fn write(&self, index: u32, entry: &[u8]) -> anyhow::Result<()> {
        self.entries
            .update(&index.to_ne_bytes(), entry, MapFlags::ANY)
            .with_context(|| format!("writing flow entry {index}"))
    }

    /// Rebuilds the bookkeeping from the maps (a restarted daemon adopting pinned tables):
    /// every slot that points at an entry whose key hashes to that very bucket and tag is a
    /// live flow; anything else is cleared. Every other entry is unlinked (a grace period
    /// must pass before it is reused: the previous daemon may have unlinked it just now).
    fn adopt(&mut self) {
        let seed = self.seed;
        let mut used = vec![false; self.capacity as usize];
        for bucket in 0..abi::FLOW_BUCKETS {
            let mut tags = Vec::new();
            for i in 0..abi::BUCKET_SLOTS {
                let s = self.index.load(bucket, i);
                if s == 0 {
                    continue;
                }
                let index = abi::slot_index(s);
                let key = self
                    .read(index)
                    .filter(|e| e.len() == self.entry_size)
                    .and_then(|e| abi::entry_key(&e).and_then(inline_key::<N>));
                let ok = key.as_ref().is_some_and(|k| {
                    index < self.capacity
                        && !used[index as usize]
                        && !tags.contains(&abi::slot_tag(s))
                        // (A key twice would be in the same bucket with the same tag.)
                        && abi::flow_hash(k, &seed) == (bucket, abi::slot_tag(s))
                });
                match key {
                    Some(k) if ok => {
                        used[index as usize] = true;
                        self.high = self.high.max(index + 1);
                        tags.push(abi::slot_tag(s));
                        self.live.set(
                            k,
                            Placed {
                                index,
                                owner: NO_OWNER,
                                bucket,
                                slot: i,
                            },
                        );
                    }
                    _ => self.index.store(bucket, i, 0),
                }
            }
        }
        self.unlink_all_but(&used);
    }

    /// Every entry not `used` becomes unlinked (free after the next grace period).
    fn unlink_all_but(&mut self, used: &[bool]) {
        self.unlinked = (0..self.capacity)
            .rev()
            .filter(|&i| !used.get(i as usize).copied().unwrap_or(false))
            .map(|index| Unlinked::new(index, false))
            .collect();
    }

    /// Clears the whole index; every entry becomes unlinked.
    fn reset(&mut self) {
        for bucket in 0..abi::FLOW_BUCKETS {
            for i in 0..abi::BUCKET_SLOTS {
                if self.index.load(bucket, i) != 0 {
                    self.index.store(bucket, i, 0);
                }
            }
        }
        self.live.clear();
        self.carry_for.clear();
        self.carried.clear();
        self.replaced.clear();
        self.free.clear();
        self.unlink_all_but(&[]);
    }

    /// Counters and flags of a live entry: from the mapped entries, or else from the snapshot
    /// while there is one, or else through bpf().
    fn counters_at(&self, index: u32) -> Option<FlowCounters> {
        if let Some(view) = &self.view {
            return view.counters(index);
        }
        if let Some(snap) = &self.snapshot {
            return snap.get(index as usize).copied();
        }
        abi::flow_counters(&self.read(index)?)
    }

    /// Reads the counters of every entry with batched lookups: a few dozen bpf() calls for the
    /// whole table instead of one per flow. None where the kernel cannot (batch lookups of
    /// arrays: 5.6+) or the answer is short; counters are then read one by one as usual.
    fn read_snapshot(&self) -> Option<Vec<FlowCounters>> {
        use libbpf_rs::libbpf_sys;
        // Entries are handed out lowest index first: above `high` nothing was ever used.
        let n = (self.high as usize).min(self.entries.max_entries() as usize);
        let mut out = Vec::with_capacity(n);
        // One batch at a time through small buffers: the whole table at once would be megabytes.
        let batch = SNAPSHOT_BATCH as usize;
        let mut keys = vec![0u32; batch];
        let mut values = vec![0u8; batch * self.entry_size];
        let opts = libbpf_sys::bpf_map_batch_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
            elem_flags: 0,
            flags: 0,
        };
        let (mut token, mut next) = (0u32, 0u32);
        while out.len() < n {
            let mut count = SNAPSHOT_BATCH.min((n - out.len()) as u32);
            let first = out.is_empty();
            // SAFETY: `keys` holds `batch` u32 keys and `values` `batch` values of the map's
            // value size (`entry_size`, checked against the map at open), `count` is at most
            // `batch`, the batch tokens are u32 (an array's key), and `opts` is a complete
            // bpf_map_batch_opts with its size; the kernel writes at most `count` of each.
            let ret = unsafe {
                libbpf_sys::bpf_map_lookup_batch(
                    self.entries.as_fd().as_raw_fd(),
                    if first {
                        std::ptr::null_mut()
                    } else {
                        (&raw mut token).cast()
                    },
                    (&raw mut next).cast(),
                    keys.as_mut_ptr().cast(),
                    values.as_mut_ptr().cast(),
                    &mut count,
                    &opts,
                )
            };
            let end = ret == -nix::libc::ENOENT;
            if ret != 0 && !end {
                return None;
            }
            for (i, v) in values
                .chunks_exact(self.entry_size)
                .take(count as usize)
                .enumerate()
            {
                // An array answers in index order; anything else is not what was asked.
                if keys[i] as usize != out.len() {
                    return None;
                }
                out.push(abi::flow_counters(v)?);
            }
            if end || count == 0 {
                break;
            }
            token = next;
        }
        (out.len() == n).then_some(out)
    }

    /// What a replaced entry (index, packets and bytes copied into its replacement) counted
    /// after its replacement was written (stragglers on other CPUs).
    fn counted_since_replaced(&self, (index, before_p, before_b): (u32, u64, u64)) -> (u64, u64) {
        self.counters_at(index).map_or((0, 0), |c| {
            (
                c.packets.saturating_sub(before_p),
                c.bytes.saturating_sub(before_b),
            )
        })
    }

    fn counters(&self, key: &[u8; N]) -> Option<FlowCounters> {
        let p = self.find(key)?;
        let mut c = self.counters_at(p.index)?;
        // (Both maps are empty unless flows were rewritten lately: no lookup then.)
        let carried = (!self.carried.is_empty())
            .then(|| self.carried.get(key))
            .flatten();
        if let Some((cp, cb)) = carried {
            c.packets += cp;
            c.bytes += cb;
        }
        // Replaced entries still counting (no grace period since): what they added so far.
        let replaced = (!self.replaced.is_empty())
            .then(|| self.replaced.get(key))
            .flatten();
        for r in replaced.into_iter().flatten() {
            let (dp, db) = self.counted_since_replaced(*r);
            c.packets += dp;
            c.bytes += db;
        }
        Some(c)
    }

    /// Installs or replaces the entry for `entry`'s key ([`abi::entry_key`]). A
    /// replacement goes to a fresh entry and keeps the counters and flags of the old one.
    fn install(
        &mut self,
        mut entry: Vec<u8>,
        owner: u32,
    ) -> anyhow::Result<Result<(), PlaceError>> {
        let key = match abi::entry_key(&entry).and_then(inline_key::<N>) {
            Some(k) if entry.len() == self.entry_size => k,
            _ => bail!(
                "flow entry of {} bytes, expected {}",
                entry.len(),
                self.entry_size
            ),
        };
        let (bucket, tag) = abi::flow_hash(&key, &self.seed);
        let old = self.find(&key);
        let slot = match old {
            Some(p) => p.slot,
            None => {
                let mut empty = None;
                for i in 0..abi::BUCKET_SLOTS {
                    let s = self.index.load(bucket, i);
                    if s == 0 {
                        empty = empty.or(Some(i));
                    } else if abi::slot_tag(s) == tag {
                        return Ok(Err(PlaceError::TagCollision(bucket)));
                    }
                }
                match empty {
                    Some(i) => i,
                    None => return Ok(Err(PlaceError::BucketFull(bucket))),
                }
            }
        };
        let Some(index) = self.free.pop() else {
            return Ok(Err(PlaceError::Full));
        };
        self.high = self.high.max(index + 1);
        let mut carry = None;
        if let Some(p) = old {
            if let Some(prev) = self.read(p.index) {
                let was = abi::flow_counters(&prev).unwrap_or_default();
                let keep = abi::ENTRY_BPF_WRITTEN;
                entry[keep.clone()].copy_from_slice(&prev[keep]);
                carry = Some((p.index, was.packets, was.bytes));
            }
        }
        if let Err(e) = self.write(index, &entry) {
            self.free.push(index);
            return Err(e);
        }
        self.index.store(bucket, slot, abi::slot_word(tag, index));
        if let Some(p) = old {
            if let Some(c) = carry {
                self.replaced.entry(key).or_default().push(c);
                self.carry_for.insert(p.index, key);
            }
            self.unlinked.push(Unlinked::new(p.index, true));
            self.live.unset(p.index);
        }
        self.live.set(
            key,
            Placed {
                index,
                owner,
                bucket,
                slot,
            },
        );
        Ok(Ok(()))
    }

    fn remove(&mut self, key: &[u8; N]) {
        let Some(p) = self.find(key) else {
            return;
        };
        self.live.unset(p.index);
        self.index.store(p.bucket, p.slot, 0);
        self.carried.remove(key);
        // What replaced entries count from now on belongs to no live flow.
        self.replaced.remove(key);
        self.unlinked.push(Unlinked::new(p.index, true));
    }

    /// After a grace period: replaced entries' final counts are carried over, unlinked
    /// entries are zeroed and free again. `done`: the last grace period that completed
    /// (ticket); None: one completed after every unlink so far.
    fn release_unlinked(&mut self, done: Option<u64>) {
        let (ready, waiting) = std::mem::take(&mut self.unlinked)
            .into_iter()
            .partition(|u| match done {
                None => true,
                Some(d) => u.ticket != 0 && u.ticket <= d,
            });
        self.unlinked = waiting;
        let mut zero = Vec::new();
        for u in ready {
            if let Some(key) = &self.carry_for.remove(&u.index) {
                let mut carried = None;
                if let Some(list) = self.replaced.get_mut(key) {
                    if let Some(at) = list.iter().position(|r| r.0 == u.index) {
                        carried = Some(list.swap_remove(at));
                    }
                    if list.is_empty() {
                        self.replaced.remove(key);
                    }
                }
                if let Some(r) = carried {
                    let (dp, db) = self.counted_since_replaced(r);
                    if self.find(key).is_some() {
                        let c = self.carried.entry(*key).or_default();
                        c.0 += dp;
                        c.1 += db;
                    }
                }
            }
            if u.dirty {
                zero.push(u.index);
            }
            self.free.push(u.index);
        }
        self.zero_entries(&zero);
    }

    /// Zeroes entries (best effort: a stale entry is unreachable anyway; this is for dump
    /// readers), [`ZERO_BATCH`] per bpf() call where the kernel has batch updates (5.6+).
    fn zero_entries(&self, indexes: &[u32]) {
        let zero = vec![0u8; self.entry_size * ZERO_BATCH];
        for chunk in indexes.chunks(ZERO_BATCH) {
            let keys: Vec<u8> = chunk.iter().flat_map(|i| i.to_ne_bytes()).collect();
            let values = &zero[..chunk.len() * self.entry_size];
            let batched = self.entries.update_batch(
                &keys,
                values,
                chunk.len() as u32,
                MapFlags::ANY,
                MapFlags::ANY,
            );
            if batched.is_err() {
                for &i in chunk {
                    let _ = self.write(i, &zero[..self.entry_size]);
                }
            }
        }
    }
}

/// Waits for an RCU grace period: updating a map-in-map returns only after every BPF
/// program that was running has finished (the kernel's synchronize_rcu(), 4.20+).
fn wait_grace_period(grace: &MapHandle, inner: &MapHandle) -> anyhow::Result<()> {
    let fd = inner.as_fd().as_raw_fd() as u32;
    grace
        .update(&0u32.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
        .context("waiting for an RCU grace period (map-in-map update)")
}

/// A thread that waits out grace periods for the event loop. Tickets are numbered from 1 in
/// the order they are asked for; `completed` is the highest ticket covered by a grace period
/// that began after the ticket was asked for (requests that queue up share one). A mutex, not
/// an `AtomicU64`: 32-bit MIPS and PowerPC have no 64-bit atomics, and it is touched a few
/// times a second.
struct GraceWorker {
    requests: Option<mpsc::Sender<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
    asked: u64,
    completed: Arc<Mutex<u64>>,
    failed: Arc<AtomicBool>,
}

impl GraceWorker {
    fn start(grace: &MapHandle, inner: &MapHandle) -> anyhow::Result<Self> {
        let grace = MapHandle::try_from(grace).context("duplicating the grace map fd")?;
        let inner = MapHandle::try_from(inner).context("duplicating the grace map fd")?;
        let (tx, rx) = mpsc::channel::<u64>();
        let completed = Arc::new(Mutex::new(0u64));
        let failed = Arc::new(AtomicBool::new(false));
        let (c, f) = (completed.clone(), failed.clone());
        let thread = std::thread::Builder::new()
            .name("bpfqos-grace".into())
            .spawn(move || {
                // Ends when the tables (the sender) are dropped.
                while let Ok(mut ticket) = rx.recv() {
                    while let Ok(t) = rx.try_recv() {
                        ticket = t;
                    }
                    if wait_grace_period(&grace, &inner).is_ok() {
                        // The mutex orders it: the entries are reused only after this is seen.
                        *c.lock().unwrap_or_else(PoisonError::into_inner) = ticket;
                    } else {
                        // Not retried here: the event loop's own wait reports the error.
                        f.store(true, Ordering::Relaxed);
                    }
                }
            })
            .context("starting the grace-period thread")?;
        Ok(Self {
            requests: Some(tx),
            thread: Some(thread),
            asked: 0,
            completed,
            failed,
        })
    }

    /// Asks for a grace period beginning from now; its ticket, or None if the worker is gone.
    fn ask(&mut self) -> Option<u64> {
        let ticket = self.asked + 1;
        self.requests.as_ref()?.send(ticket).ok()?;
        self.asked = ticket;
        Some(ticket)
    }

    fn completed(&self) -> u64 {
        *self
            .completed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a wait failed since the last call.
    fn take_failure(&self) -> bool {
        self.failed.swap(false, Ordering::Relaxed)
    }
}

impl Drop for GraceWorker {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(t) = self.thread.take() {
            // At most one grace period (milliseconds) to wait for.
            let _ = t.join();
        }
    }
}

/// Both families' tables, their seeds and the grace-period barrier.
pub struct FlowTables {
    v4: Table<KEY4>,
    v6: Table<KEY6>,
    seed: [u32; abi::HASH_SEEDS],
    grace: MapHandle,
    grace_inner: MapHandle,
    worker: GraceWorker,
}

/// Key sizes of the two families.
const KEY4: usize = std::mem::size_of::<abi::FlowKey4>();
const KEY6: usize = std::mem::size_of::<abi::FlowKey6>();

impl FlowTables {
    /// Opens the tables of a loaded object, given its maps by name. With `adopt_seed` (the
    /// `control` map and the tables were re-adopted from pins, `control` holding these seeds)
    /// the live flows are recovered from the maps; otherwise the index is cleared and `seed`
    /// (fresh random words) is used.
    pub fn open(
        map: &dyn Fn(&str) -> anyhow::Result<MapHandle>,
        adopt_seed: Option<[u32; abi::HASH_SEEDS]>,
        fresh_seed: [u32; abi::HASH_SEEDS],
    ) -> anyhow::Result<Self> {
        let seed = adopt_seed.unwrap_or(fresh_seed);
        let v4 = Table::open(map(abi::FLOWS4_MAP)?, &map(abi::BUCKETS4_MAP)?, seed)?;
        let v6 = Table::open(map(abi::FLOWS6_MAP)?, &map(abi::BUCKETS6_MAP)?, seed)?;
        let grace = map(abi::GRACE_MAP)?;
        let grace_inner = map(abi::GRACE_INNER_MAP)?;
        let worker = GraceWorker::start(&grace, &grace_inner)?;
        let mut t = Self {
            v4,
            v6,
            seed,
            grace,
            grace_inner,
            worker,
        };
        match adopt_seed {
            Some(_) => {
                t.v4.adopt();
                t.v6.adopt();
            }
            None => {
                t.v4.reset();
                t.v6.reset();
            }
        }
        t.synchronize()?;
        Ok(t)
    }

    /// The hash seeds (the `control` map must carry them).
    pub fn seed(&self) -> &[u32; abi::HASH_SEEDS] {
        &self.seed
    }

    /// Installs (or replaces, keeping its counters) the flow whose entry is `entry` (key
    /// last), with no owner. `Ok(Err(_))`: no room, the flow stays in the kernel. When all
    /// entries are in use but some await a grace period, waits for one.
    pub fn install(&mut self, entry: &[u8]) -> anyhow::Result<Result<(), PlaceError>> {
        self.install_owned(entry, NO_OWNER)
    }

    /// [`Self::install`], remembering `owner` for the key ([`Self::owner`]): the flow manager
    /// finds a connection from the key a FIN/RST event names without a map of its own.
    pub fn install_owned(
        &mut self,
        entry: &[u8],
        owner: u32,
    ) -> anyhow::Result<Result<(), PlaceError>> {
        let v6 = entry.len() == std::mem::size_of::<abi::Flow6>();
        let waiting = if v6 {
            self.v6.free.is_empty() && !self.v6.unlinked.is_empty()
        } else {
            self.v4.free.is_empty() && !self.v4.unlinked.is_empty()
        };
        if waiting {
            self.synchronize()?;
        }
        if v6 {
            self.v6.install(entry.to_vec(), owner)
        } else {
            self.v4.install(entry.to_vec(), owner)
        }
    }

    /// Unlinks a flow (absent: nothing to do). Its entry is reused after a grace period.
    pub fn remove(&mut self, key: &[u8]) {
        match key.len() {
            KEY4 => inline_key(key).map(|k| self.v4.remove(&k)),
            KEY6 => inline_key(key).map(|k| self.v6.remove(&k)),
            _ => None,
        };
    }

    /// Packets, bytes and flags of a live flow (what replaced entries counted included).
    pub fn counters(&self, key: &[u8]) -> Option<FlowCounters> {
        match key.len() {
            KEY4 => self.v4.counters(&inline_key(key)?),
            KEY6 => self.v6.counters(&inline_key(key)?),
            _ => None,
        }
    }

    /// The owner given when the live flow `key` was installed; None for none or no such flow.
    pub fn owner(&self, key: &[u8]) -> Option<u32> {
        let p = match key.len() {
            KEY4 => self.v4.find(&inline_key::<KEY4>(key)?),
            KEY6 => self.v6.find(&inline_key::<KEY6>(key)?),
            _ => None,
        }?;
        Some(p.owner).filter(|&o| o != NO_OWNER)
    }

    /// Where the entries are not mapped: reads every entry's counters at once; until
    /// [`Self::end_snapshot`], counters come from that copy (for documents that read every
    /// flow, like the status: one pass of batched lookups instead of a bpf() call per flow and
    /// direction). Mapped entries are read as they are.
    pub fn begin_snapshot(&mut self) {
        // (Mapped entries are read from memory: no copy is faster.)
        if self.v4.view.is_none() {
            self.v4.snapshot = self.v4.read_snapshot();
        }
        if self.v6.view.is_none() {
            self.v6.snapshot = self.v6.read_snapshot();
        }
    }

    /// Counters through bpf() from now on, as where the kernel would not map the entries (for
    /// tests of that path).
    pub fn unmap_counters(&mut self) {
        self.v4.view = None;
        self.v6.view = None;
    }

    /// Back to reading counters from the maps.
    pub fn end_snapshot(&mut self) {
        self.v4.snapshot = None;
        self.v6.snapshot = None;
    }

    /// Keys of the live flows, both families.
    pub fn keys(&self) -> Vec<Vec<u8>> {
        let v4 = self.v4.live.iter().map(|k| k.to_vec());
        v4.chain(self.v6.live.iter().map(|k| k.to_vec())).collect()
    }

    /// Entries each family's table holds.
    pub fn capacity(&self) -> u32 {
        self.v4.capacity.min(self.v6.capacity)
    }

    /// Number of live flows.
    pub fn len(&self) -> usize {
        self.v4.live.len + self.v6.live.len
    }

    /// Whether there are no live flows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether unlinked entries wait for a grace period.
    pub fn has_unlinked(&self) -> bool {
        !self.v4.unlinked.is_empty() || !self.v6.unlinked.is_empty()
    }

    /// Waits until no BPF program that might have read an unlinked entry is still running
    /// (the kernel's RCU grace period behind a map-in-map update), then frees those entries.
    /// Blocks for the grace period: the event loop uses [`FlowTables::reclaim`].
    pub fn synchronize(&mut self) -> anyhow::Result<()> {
        if !self.has_unlinked() {
            return Ok(());
        }
        wait_grace_period(&self.grace, &self.grace_inner)?;
        self.v4.release_unlinked(None);
        self.v6.release_unlinked(None);
        Ok(())
    }

    /// Without blocking: frees the unlinked entries that a completed grace period covers, and
    /// asks the worker for one covering those unlinked since the last call. Entries unlinked
    /// now are free after two calls at the earliest (one heartbeat apart: ample time).
    pub fn reclaim(&mut self) -> anyhow::Result<()> {
        if !self.has_unlinked() {
            return Ok(());
        }
        let done = self.worker.completed();
        self.v4.release_unlinked(Some(done));
        self.v6.release_unlinked(Some(done));
        let unasked = |u: &[Unlinked]| u.iter().any(|u| u.ticket == 0);
        if unasked(&self.v4.unlinked) || unasked(&self.v6.unlinked) {
            let Some(ticket) = self.worker.ask() else {
                return self.synchronize();
            };
            for u in self
                .v4
                .unlinked
                .iter_mut()
                .chain(self.v6.unlinked.iter_mut())
            {
                if u.ticket == 0 {
                    u.ticket = ticket;
                }
            }
        }
        if self.worker.take_failure() {
            // The worker could not wait (it never should): wait here, which reports why.
            return self.synchronize();
        }
        Ok(())
    }
}

/// Fresh random hash seeds, from the kernel's generator.
pub fn random_seed() -> anyhow::Result<[u32; abi::HASH_SEEDS]> {
    use std::io::Read;
    let mut b = [0u8; abi::HASH_SEEDS * 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    let mut seed = [0u32; abi::HASH_SEEDS];
    for (s, c) in seed.iter_mut().zip(b.chunks_exact(4)) {
        *s = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
    }
    Ok(seed)
}

//! The offloaded connections, kept compact: the records in a slab, and an index from
//! connection to slot that holds slot numbers only (4 bytes a cell; the key is the record's).
//! The slot number is the owner the flow entries are installed for, so the key a FIN/RST
//! event names leads back to its connection through the data path's own table
//! ([`super::ports::FlowTable::owner`]) instead of a second map here. At 64k connections a
//! map of records at its load factor held twice the records' memory in empty buckets, and a
//! map from key to slot 6 MiB; this index is half a MiB.

use std::hash::BuildHasher;
use std::hash::RandomState;

use super::ConnKey;
use super::Offloaded;

/// A free cell of [`SlotIndex`].
const EMPTY: u32 = u32::MAX;

/// Slot numbers in open addressing (linear probing from the key's hash, at most 3/4 full,
/// removal by shifting back: no tombstones). Every lookup takes the slab that holds the keys.
#[derive(Default)]
struct SlotIndex {
    cells: Vec<u32>,
    len: usize,
    hasher: RandomState,
}

impl SlotIndex {
    fn mask(&self) -> usize {
        self.cells.len().wrapping_sub(1)
    }

    fn home(&self, key: &ConnKey) -> usize {
        self.hasher.hash_one(key) as usize & self.mask()
    }

    /// The cell holding `key`'s slot, and that slot.
    fn find(&self, key: &ConnKey, slab: &[Option<Offloaded>]) -> Option<(usize, u32)> {
        if self.len == 0 {
            return None;
        }
        let mut at = self.home(key);
        // At most 3/4 full: an empty cell ends every probe.
        for _ in 0..self.cells.len() {
            let slot = self.cells[at];
            if slot == EMPTY {
                return None;
            }
            if key_in(slab, slot).as_ref() == Some(key) {
                return Some((at, slot));
            }
            at = (at + 1) & self.mask();
        }
        None
    }

    /// Adds `slot` (its record already in `slab`; its key not in the index yet).
    fn insert(&mut self, slot: u32, slab: &[Option<Offloaded>]) {
        if (self.len + 1) * 4 > self.cells.len() * 3 {
            self.rebuild((self.len + 1) * 2, slab);
        }
        let Some(key) = key_in(slab, slot) else {
            return;
        };
        let mut at = self.home(&key);
        while self.cells[at] != EMPTY {
            at = (at + 1) & self.mask();
        }
        self.cells[at] = slot;
        self.len += 1;
    }

    /// Takes `key` out (its record still in `slab`); its slot.
    fn remove(&mut self, key: &ConnKey, slab: &[Option<Offloaded>]) -> Option<u32> {
        let (mut hole, slot) = self.find(key, slab)?;
        let mask = self.mask();
        let mut at = (hole + 1) & mask;
        // Shift back every cell of the run after the hole that may sit in it (its home is not
        // cyclically between the hole and itself).
        while self.cells[at] != EMPTY {
            let here = self.cells[at];
            let home = key_in(slab, here).map_or(at, |k| self.home(&k));
            if (at.wrapping_sub(home) & mask) >= (at.wrapping_sub(hole) & mask) {
                self.cells[hole] = here;
                hole = at;
            }
            at = (at + 1) & mask;
        }
        self.cells[hole] = EMPTY;
        self.len -= 1;
        Some(slot)
    }

    /// Room for `n` keys at most 3/4 full (a power of two, 16 at least), every slot placed again.
    fn rebuild(&mut self, n: usize, slab: &[Option<Offloaded>]) {
        let cells = (n * 4 / 3 + 1).next_power_of_two().max(16);
        let old = std::mem::replace(&mut self.cells, vec![EMPTY; cells]);
        self.len = 0;
        for slot in old.into_iter().filter(|&s| s != EMPTY) {
            self.insert(slot, slab);
        }
    }

    /// Room beyond four times what it holds goes back.
    fn shrink(&mut self, slab: &[Option<Offloaded>]) {
        if self.cells.len() > 4 * (self.len * 4 / 3).max(1024) {
            self.rebuild(self.len, slab);
        }
    }
}

/// The key of the connection in `slot`.
fn key_in(slab: &[Option<Offloaded>], slot: u32) -> Option<ConnKey> {
    let f = slab.get(slot as usize)?.as_ref()?;
    Some(f.conn.key())
}

/// Offloaded connections by [`ConnKey`], each in a numbered slot.
#[derive(Default)]
pub(super) struct Flows {
    index: SlotIndex,
    slab: Vec<Option<Offloaded>>,
    /// Empty slots, the most recently emptied last (taken first).
    free: Vec<u32>,
}

impl Flows {
    pub(super) fn len(&self) -> usize {
        self.index.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.index.len == 0
    }

    pub(super) fn contains_key(&self, key: &ConnKey) -> bool {
        self.index.find(key, &self.slab).is_some()
    }

    pub(super) fn get(&self, key: &ConnKey) -> Option<&Offloaded> {
        self.by_slot(self.index.find(key, &self.slab)?.1)
    }

    /// The connection in slot `slot`, if any.
    pub(super) fn by_slot(&self, slot: u32) -> Option<&Offloaded> {
        self.slab.get(slot as usize)?.as_ref()
    }

    pub(super) fn by_slot_mut(&mut self, slot: u32) -> Option<&mut Offloaded> {
        self.slab.get_mut(slot as usize)?.as_mut()
    }

    /// The connections in slots `range` (of [`Self::slots_len`]).
    pub(super) fn in_slots(
        &self,
        range: std::ops::Range<usize>,
    ) -> impl Iterator<Item = &Offloaded> {
        let end = range.end.min(self.slab.len());
        self.slab[range.start.min(end)..end].iter().flatten()
    }

    /// One past the highest slot.
    pub(super) fn slots_len(&self) -> usize {
        self.slab.len()
    }

    /// The connections with their slots.
    pub(super) fn slotted(&self) -> impl Iterator<Item = (u32, &Offloaded)> {
        let used = self.slab.iter().enumerate();
        used.filter_map(|(slot, f)| Some((slot as u32, f.as_ref()?)))
    }

    /// The slots holding a connection.
    pub(super) fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.slotted().map(|(slot, _)| slot)
    }

    /// The slot the next [`Self::insert`] fills (the owner to install its entries for).
    pub(super) fn vacant_slot(&self) -> u32 {
        match self.free.last() {
            Some(&s) => s,
            None => self.slab.len() as u32,
        }
    }

    /// Adds (or replaces) the connection `f` is; its slot.
    pub(super) fn insert(&mut self, f: Offloaded) -> u32 {
        let key = f.conn.key();
        if let Some((_, slot)) = self.index.find(&key, &self.slab) {
            if let Some(s) = self.slab.get_mut(slot as usize) {
                *s = Some(f);
                return slot;
            }
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                if let Some(s) = self.slab.get_mut(slot as usize) {
                    *s = Some(f);
                }
                slot
            }
            None => {
                self.slab.push(Some(f));
                (self.slab.len() - 1) as u32
            }
        };
        self.index.insert(slot, &self.slab);
        slot
    }

    pub(super) fn remove(&mut self, key: &ConnKey) -> Option<Offloaded> {
        let slot = self.index.remove(key, &self.slab)?;
        let f = self.slab.get_mut(slot as usize)?.take();
        self.free.push(slot);
        if self.index.len == 0 {
            // Back to nothing: the memory of a busy hour goes back too.
            *self = Self::default();
        }
        f
    }

    /// Gives back what most connections ending left: the index's room beyond four times
    /// what it holds, and the empty slots at the end of the slab.
    pub(super) fn shrink(&mut self) {
        self.index.shrink(&self.slab);
        let used = self
            .slab
            .iter()
            .rposition(Option::is_some)
            .map_or(0, |i| i + 1);
        if used < self.slab.len() {
            self.slab.truncate(used);
            self.free.retain(|&s| (s as usize) < used);
        }
        if self.slab.capacity() > 4 * self.slab.len().max(1024) {
            self.slab.shrink_to_fit();
            self.free.shrink_to_fit();
        }
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Offloaded> {
        self.slab.iter().flatten()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (ConnKey, &Offloaded)> {
        self.values().map(|f| (f.conn.key(), f))
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = ConnKey> + '_ {
        self.values().map(|f| f.conn.key())
    }
}

#[cfg(test)]
impl std::ops::Index<&ConnKey> for Flows {
    type Output = Offloaded;

    fn index(&self, key: &ConnKey) -> &Offloaded {
        self.get(key)
            .unwrap_or_else(|| panic!("{} is not offloaded", key.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connection of a numbered key (ports from `n`, both families, two zones).
    fn numbered(n: u32) -> Offloaded {
        let mut f = super::super::tests::offloaded(1);
        f.conn.orig.sport = (n % 50_000) as u16;
        f.conn.orig.dport = (n / 50_000) as u16;
        f.conn.zone = (n % 2) as u16;
        if n % 3 == 0 {
            f.conn.orig.src = "fd00::1".parse().unwrap_or(f.conn.orig.src);
        }
        f
    }

    #[test]
    fn the_index_agrees_with_a_map_through_growth_removal_and_shrinking() {
        let mut flows = Flows::default();
        let mut model = std::collections::HashMap::new();
        // A fixed pseudo-random walk: inserts win at first, removals later.
        let mut x = 0x2545_f491_u32;
        for step in 0..60_000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let n = x % 20_000;
            let f = numbered(n);
            let key = f.conn.key();
            let grow = step < 30_000;
            if (x >> 20) % 4 != 0 || (grow && (x >> 24) % 2 == 0) {
                if let std::collections::hash_map::Entry::Vacant(e) = model.entry(key) {
                    e.insert(flows.insert(f));
                }
            } else {
                assert_eq!(flows.remove(&key).is_some(), model.remove(&key).is_some());
            }
            if step % 10_000 == 0 {
                flows.shrink();
            }
        }
        assert_eq!(flows.len(), model.len());
        for (key, slot) in &model {
            assert_eq!(
                flows.index.find(key, &flows.slab).map(|(_, s)| s),
                Some(*slot)
            );
        }
        for n in 20_000..20_100 {
            assert!(!flows.contains_key(&numbered(n).conn.key()));
        }
        for key in model.keys() {
            assert!(flows.remove(key).is_some());
        }
        assert!(flows.is_empty());
        assert!(flows.index.cells.is_empty(), "an empty set holds no cells");
    }

    #[test]
    fn slots_are_reused_and_found_again() {
        let mut flows = Flows::default();
        let (a, b, c) = (
            super::super::tests::offloaded(1),
            super::super::tests::offloaded(2),
            super::super::tests::offloaded(3),
        );
        let (ka, kb, kc) = (a.conn.key(), b.conn.key(), c.conn.key());
        assert_eq!(flows.vacant_slot(), 0);
        assert_eq!(flows.insert(a), 0);
        assert_eq!(flows.insert(b), 1);
        assert_eq!(flows.len(), 2);
        assert!(flows.remove(&ka).is_some());
        assert!(flows.remove(&ka).is_none());
        assert_eq!(flows.vacant_slot(), 0, "the emptied slot is taken next");
        assert_eq!(flows.insert(c), 0);
        assert_eq!(flows.by_slot(0).map(|f| f.conn.key()), Some(kc));
        assert_eq!(flows.get(&kb).map(|f| f.conn.key()), Some(kb));
        let mut keys: Vec<ConnKey> = flows.keys().collect();
        keys.sort_by_key(|k| k.0.sport);
        assert_eq!(keys.len(), 2);
        // Slots at the end that emptied go; one in the middle stays free for reuse.
        let d = super::super::tests::offloaded(4);
        let kd = d.conn.key();
        assert_eq!(flows.insert(d), 2);
        assert!(flows.remove(&kb).is_some() && flows.remove(&kd).is_some());
        flows.shrink();
        assert_eq!((flows.slab.len(), flows.free.clone()), (1, vec![]));
        assert_eq!(flows.vacant_slot(), 1);
        assert!(flows.remove(&kc).is_some());
        assert!(flows.is_empty());
        assert_eq!(
            flows.vacant_slot(),
            0,
            "an empty set starts again from slot 0"
        );
        assert!(flows.by_slot(1).is_none());
    }
}

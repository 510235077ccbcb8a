//! The offloaded connections, kept compact: the records in a slab, one index from connection
//! to slot. The slot number is the owner the flow entries are installed for, so the key a
//! FIN/RST event names leads back to its connection through the data path's own table
//! ([`super::ports::FlowTable::owner`]) instead of a second map here. At 64k connections a
//! map of records sized for its load factor held twice the records' memory in empty buckets;
//! empty slots of the index cost 48 bytes here instead.

use std::collections::HashMap;

use super::ConnKey;
use super::Offloaded;

/// Offloaded connections by [`ConnKey`], each in a numbered slot.
#[derive(Default)]
pub(super) struct Flows {
    index: HashMap<ConnKey, u32>,
    slab: Vec<Option<Offloaded>>,
    /// Empty slots, the most recently emptied last (taken first).
    free: Vec<u32>,
}

impl Flows {
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub(super) fn contains_key(&self, key: &ConnKey) -> bool {
        self.index.contains_key(key)
    }

    pub(super) fn get(&self, key: &ConnKey) -> Option<&Offloaded> {
        self.by_slot(*self.index.get(key)?)
    }

    /// The connection in slot `slot`, if any.
    pub(super) fn by_slot(&self, slot: u32) -> Option<&Offloaded> {
        self.slab.get(slot as usize)?.as_ref()
    }

    pub(super) fn by_slot_mut(&mut self, slot: u32) -> Option<&mut Offloaded> {
        self.slab.get_mut(slot as usize)?.as_mut()
    }

    /// The slots holding a connection.
    pub(super) fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        let used = self.slab.iter().enumerate().filter(|(_, f)| f.is_some());
        used.map(|(slot, _)| slot as u32)
    }

    /// The slot the next [`Self::insert`] fills (the owner to install its entries for).
    pub(super) fn vacant_slot(&self) -> u32 {
        match self.free.last() {
            Some(&s) => s,
            None => self.slab.len() as u32,
        }
    }

    /// Adds (or replaces) the connection `key`; its slot.
    pub(super) fn insert(&mut self, key: ConnKey, f: Offloaded) -> u32 {
        if let Some(&slot) = self.index.get(&key) {
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
        self.index.insert(key, slot);
        slot
    }

    pub(super) fn remove(&mut self, key: &ConnKey) -> Option<Offloaded> {
        let slot = self.index.remove(key)?;
        let f = self.slab.get_mut(slot as usize)?.take();
        self.free.push(slot);
        if self.index.is_empty() {
            // Back to nothing: the memory of a busy hour goes back too.
            *self = Self::default();
        }
        f
    }

    /// Gives back what most connections ending left: the index's room beyond four times
    /// what it holds, and the empty slots at the end of the slab.
    pub(super) fn shrink(&mut self) {
        if self.index.capacity() > 4 * self.index.len().max(1024) {
            self.index.shrink_to_fit();
        }
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
        assert_eq!(flows.insert(ka, a), 0);
        assert_eq!(flows.insert(kb, b), 1);
        assert_eq!(flows.len(), 2);
        assert!(flows.remove(&ka).is_some());
        assert!(flows.remove(&ka).is_none());
        assert_eq!(flows.vacant_slot(), 0, "the emptied slot is taken next");
        assert_eq!(flows.insert(kc, c), 0);
        assert_eq!(flows.by_slot(0).map(|f| f.conn.key()), Some(kc));
        assert_eq!(flows.get(&kb).map(|f| f.conn.key()), Some(kb));
        let mut keys: Vec<ConnKey> = flows.keys().collect();
        keys.sort_by_key(|k| k.0.sport);
        assert_eq!(keys.len(), 2);
        // Slots at the end that emptied go; one in the middle stays free for reuse.
        let d = super::super::tests::offloaded(4);
        let kd = d.conn.key();
        assert_eq!(flows.insert(kd, d), 2);
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

//! The daemon's flow-table code (src/dataplane/flowtable.rs) against the real data path
//! (root only): the Rust hash finds what BPF looks up with random seeds; replacement, removal
//! and reuse follow the publication protocol of bpfqos_abi.h (fresh entry, old one untouched
//! until a grace period, counters carried); a restarted daemon adopts the tables and clears
//! slots that do not check out; and packets racing a writer that keeps replacing a flow on the
//! other CPU only ever see a complete entry.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use bpfqos::dataplane::abi;
use bpfqos::dataplane::flowtable::FlowTables;
use bpfqos::dataplane::flowtable::PlaceError;
use common::bpf::run_xdp;
use common::bpf::Env;
use common::bpf::XDP_REDIRECT;
use common::bpf::XDP_TX;
use common::frames::buckets_of;
use common::frames::find_map;
use common::frames::map_update;
use common::frames::now_ns;
use common::frames::read_bucket;
use common::frames::Encap;
use common::frames::FlowSpec;
use common::frames::Tcp;
use common::frames::Tuple;
use libbpf_rs::MapCore;
use libbpf_rs::MapFlags;
use libbpf_rs::MapHandle;
use libbpf_rs::Object;

const PAYLOAD: &[u8] = b"flow table test payload";

fn handles(obj: &Object) -> impl Fn(&str) -> anyhow::Result<MapHandle> + '_ {
    |name| MapHandle::try_from(&find_map(obj, name)).map_err(anyhow::Error::from)
}

fn seed_of(n: u32) -> [u32; abi::HASH_SEEDS] {
    let mut s = [0u32; abi::HASH_SEEDS];
    let mut x = 0x9e37_79b9u32 ^ n;
    for w in &mut s {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *w = x;
    }
    s
}

/// Heartbeat, offload on, and the tables' seeds: what the daemon writes every second.
fn control(obj: &Object, t: &FlowTables) {
    heartbeat(obj, t.seed());
}

fn heartbeat(obj: &Object, seed: &[u32; abi::HASH_SEEDS]) {
    map_update(
        obj,
        abi::CONTROL_MAP,
        &0u32.to_ne_bytes(),
        &abi::control_value(now_ns(), true, false, 0, seed),
    );
}

/// New tables with seeds `seed_of(n)`, and the control word carrying them.
fn fresh_tables(env: &Env, n: u32) -> FlowTables {
    let t = FlowTables::open(&handles(&env.obj), None, seed_of(n)).unwrap();
    control(&env.obj, &t);
    t
}

/// Two veth devices, both redirect targets.
fn setup(test: &str) -> Option<Env> {
    let env = common::bpf::setup(test, 2)?;
    for d in &env.dev {
        map_update(
            &env.obj,
            abi::TX_PORTS_MAP,
            &d.to_ne_bytes(),
            &d.to_ne_bytes(),
        );
    }
    Some(env)
}

/// The bucket slot currently holding `key` (read from the map, as BPF sees it).
fn slot_of(obj: &Object, v6: bool, key: &[u8], seed: &[u32; abi::HASH_SEEDS]) -> Option<u32> {
    let (b, tag) = abi::flow_hash(key, seed);
    let entries = if v6 { abi::FLOWS6_MAP } else { abi::FLOWS4_MAP };
    read_bucket(obj, buckets_of(entries), b)
        .slot
        .iter()
        .copied()
        .find(|&s| s != 0 && abi::slot_tag(s) == tag)
}

fn entry_at(obj: &Object, v6: bool, index: u32) -> Vec<u8> {
    let m = if v6 { abi::FLOWS6_MAP } else { abi::FLOWS4_MAP };
    find_map(obj, m)
        .lookup(&index.to_ne_bytes(), MapFlags::ANY)
        .unwrap()
        .unwrap()
}

fn forward(env: &mut Env, spec: &FlowSpec, n: u32) {
    let (input, expected) = spec.frames(Tcp::Ack, PAYLOAD);
    for _ in 0..n {
        let r = run_xdp(&mut env.obj, &input, spec.ingress, 1);
        assert_eq!(
            r.ret,
            XDP_REDIRECT,
            "not forwarded: {:?}",
            common::bpf::stats(&env.obj)
        );
        assert_eq!(r.data, expected, "forwarded frame");
    }
}

type Versions = (FlowSpec, FlowSpec, Vec<u8>, Vec<u8>, Vec<u8>);

/// A flow from dev[0] to dev[1], plain both ways, `orig` leaving as `new`.
fn plain_flow(env: &Env, orig: Tuple, new: Tuple) -> FlowSpec {
    FlowSpec::new(
        env.dev[0],
        Encap::plain(),
        orig,
        env.dev[1],
        Encap::plain(),
        new,
    )
}

/// A SNAT [`plain_flow`] and a second version of it that only differs in the egress encapsulation:
/// both, the key, and their entries.
fn two_versions(env: &Env, orig: Tuple, out_b: Encap) -> Versions {
    let a = plain_flow(env, orig, orig.snat());
    let b = FlowSpec {
        out_encap: out_b,
        ..a.clone()
    };
    let (_, key, entry_a) = a.entry();
    let (_, _, entry_b) = b.entry();
    (a, b, key, entry_a, entry_b)
}

#[test]
fn rust_and_bpf_agree_replacement_waits_for_a_grace_period_and_counters_carry() {
    let Some(mut env) = setup("rust_and_bpf_agree_replacement_waits_for_a_grace_period") else {
        return;
    };
    let mut t = fresh_tables(&env, 1);
    // Counters read from the mapped entries, then through bpf() (kernels that cannot map them).
    let (v4, v6) = (Tuple::v4(false), Tuple::v6(true));
    for (orig, mapped) in [(v4, true), (v6, true), (v4, false), (v6, false)] {
        if !mapped {
            t.unmap_counters();
        }
        let v6 = orig.is_v6();
        let (a, b, key, entry_a, entry_b) = two_versions(&env, orig, Encap::vlan(7));
        t.install(&entry_a).unwrap().unwrap();
        assert_eq!(t.owner(&key), None, "installed without an owner");
        forward(&mut env, &a, 5);
        let first = slot_of(&env.obj, v6, &key, t.seed()).expect("slot");
        assert_eq!(t.counters(&key).map(|c| c.packets), Some(5));

        // Replacement: a fresh entry, the slot repointed, the old entry left as it was; the
        // owner is the replacement's.
        t.install_owned(&entry_b, 7).unwrap().unwrap();
        assert_eq!(t.owner(&key), Some(7));
        assert_eq!(t.owner(&key[1..]), None, "a key of another length");
        let second = slot_of(&env.obj, v6, &key, t.seed()).expect("slot");
        assert_eq!(abi::slot_tag(first), abi::slot_tag(second));
        assert_ne!(
            abi::slot_index(first),
            abi::slot_index(second),
            "replaced in place"
        );
        let old = entry_at(&env.obj, v6, abi::slot_index(first));
        assert_eq!(
            abi::entry_key(&old),
            Some(key.as_slice()),
            "old entry touched"
        );
        forward(&mut env, &b, 3);
        assert_eq!(
            t.counters(&key).map(|c| c.packets),
            Some(8),
            "counters not carried"
        );

        // A packet still on the old entry (another CPU, before the grace period): counted.
        let mut straggler = old.clone();
        let cnt = abi::ENTRY_BPF_WRITTEN.start + 4;
        let packets = u64::from_ne_bytes(straggler[cnt..cnt + 8].try_into().unwrap());
        straggler[cnt..cnt + 8].copy_from_slice(&(packets + 2).to_ne_bytes());
        let m = if v6 { abi::FLOWS6_MAP } else { abi::FLOWS4_MAP };
        map_update(
            &env.obj,
            m,
            &abi::slot_index(first).to_ne_bytes(),
            &straggler,
        );
        assert_eq!(t.counters(&key).map(|c| c.packets), Some(10));
        // The status reads every flow from one batched snapshot (through bpf()): the same
        // figures, the replaced entry's stragglers included; a later packet shows once it is
        // over. Mapped entries are read as they are (no copy is faster).
        t.begin_snapshot();
        assert_eq!(t.counters(&key).map(|c| c.packets), Some(10), "snapshot");
        forward(&mut env, &b, 1);
        let seen = if mapped { 11 } else { 10 };
        assert_eq!(
            t.counters(&key).map(|c| c.packets),
            Some(seen),
            "a snapshot"
        );
        t.end_snapshot();
        assert_eq!(t.counters(&key).map(|c| c.packets), Some(11));
        assert!(t.has_unlinked());
        t.synchronize().unwrap();
        assert!(!t.has_unlinked());
        assert_eq!(
            t.counters(&key).map(|c| c.packets),
            Some(11),
            "straggler lost"
        );
        // Released: zeroed, and free for the next flow.
        let released = entry_at(&env.obj, v6, abi::slot_index(first));
        assert!(
            released.iter().all(|&x| x == 0),
            "released entry not zeroed"
        );

        // Removal: the slot is cleared at once, packets go to the kernel.
        t.remove(&key);
        assert_eq!(t.owner(&key), None);
        assert!(slot_of(&env.obj, v6, &key, t.seed()).is_none());
        let (input, _) = b.frames(Tcp::Ack, PAYLOAD);
        let r = run_xdp(&mut env.obj, &input, b.ingress, 1);
        assert_eq!(r.data, input, "removed flow still forwarded");
        assert_eq!(t.counters(&key), None);
        t.synchronize().unwrap();
    }
    assert!(t.is_empty());
}

#[test]
fn reclaim_frees_an_entry_only_after_a_grace_period_asked_for_after_its_unlink() {
    let Some(mut env) = setup("reclaim_frees_an_entry_only_after_a_grace_period") else {
        return;
    };
    let mut t = fresh_tables(&env, 5);
    let (a, _, key, entry_a, entry_b) = two_versions(&env, Tuple::v4(false), Encap::pppoe(3));
    t.install(&entry_a).unwrap().unwrap();
    forward(&mut env, &a, 2);
    let old_index = abi::slot_index(slot_of(&env.obj, false, &key, t.seed()).unwrap());
    t.install(&entry_b).unwrap().unwrap();
    // A packet that was still on the old entry when it was unlinked.
    let mut old = entry_at(&env.obj, false, old_index);
    let cnt = abi::ENTRY_BPF_WRITTEN.start + 4;
    old[cnt..cnt + 8].copy_from_slice(&3u64.to_ne_bytes());
    map_update(&env.obj, abi::FLOWS4_MAP, &old_index.to_ne_bytes(), &old);

    // The first call only asks: nothing unlinked since the last grace period is freed.
    let started = Instant::now();
    t.reclaim().unwrap();
    eprintln!("reclaim() returned after {:?}", started.elapsed());
    assert!(t.has_unlinked(), "freed without a grace period");
    assert_eq!(
        entry_at(&env.obj, false, old_index),
        old,
        "unlinked entry rewritten before a grace period"
    );
    // Later calls free it once the worker's grace period is over (bounded wait).
    let mut calls = 1;
    while t.has_unlinked() && calls < 1000 {
        std::thread::sleep(Duration::from_millis(5));
        t.reclaim().unwrap();
        calls += 1;
    }
    eprintln!("freed after {calls} calls, {:?}", started.elapsed());
    assert!(!t.has_unlinked(), "never freed");
    assert!(
        entry_at(&env.obj, false, old_index).iter().all(|&x| x == 0),
        "released entry not zeroed"
    );
    assert_eq!(
        t.counters(&key).map(|c| c.packets),
        Some(3),
        "the straggler's packet was not carried over"
    );
    // The freed entry is reused, and the new flow forwards from it.
    t.remove(&key);
    let c = FlowSpec::new(
        env.dev[0],
        Encap::vlan(9),
        Tuple::v6(false),
        env.dev[1],
        Encap::plain(),
        Tuple::v6(false),
    );
    let (_, _, entry_c) = c.entry();
    t.install(&entry_c).unwrap().unwrap();
    forward(&mut env, &c, 1);
    let d = FlowSpec {
        in_encap: Encap::vlan(10),
        ..a.clone()
    };
    let (_, key_d, entry_d) = d.entry();
    t.install(&entry_d).unwrap().unwrap();
    assert_eq!(
        abi::slot_index(slot_of(&env.obj, false, &key_d, t.seed()).unwrap()),
        old_index,
        "the freed entry was not reused"
    );
    forward(&mut env, &d, 2);
}

#[test]
fn a_restarted_daemon_adopts_the_tables_and_clears_what_does_not_check_out() {
    let Some(mut env) = setup("a_restarted_daemon_adopts_the_tables") else {
        return;
    };
    let seed = seed_of(2);
    let mut t = FlowTables::open(&handles(&env.obj), None, seed).unwrap();
    control(&env.obj, &t);
    let orig = Tuple::v4(true);
    let a = FlowSpec::new(
        env.dev[0],
        Encap::vlan(5),
        orig,
        env.dev[1],
        Encap::pppoe(9),
        orig.snat(),
    );
    let (_, key, entry) = a.entry();
    t.install(&entry).unwrap().unwrap();
    forward(&mut env, &a, 4);
    let slot = slot_of(&env.obj, false, &key, &seed).unwrap();
    drop(t);

    // A slot whose entry's key hashes elsewhere (a stale or foreign slot): must be cleared.
    let other = FlowSpec::new(
        env.dev[0],
        Encap::plain(),
        Tuple::v4(false),
        env.dev[1],
        Encap::plain(),
        Tuple::v4(false),
    );
    let (_, okey, _) = other.entry();
    let (ob, otag) = abi::flow_hash(&okey, &seed);
    let buckets = find_map(&env.obj, abi::BUCKETS4_MAP);
    let mut bucket: abi::Bucket = abi::from_bytes(
        &buckets
            .lookup(&ob.to_ne_bytes(), MapFlags::ANY)
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    let free = bucket.slot.iter().position(|&s| s == 0).unwrap();
    bucket.slot[free] = abi::slot_word(otag, abi::slot_index(slot));
    buckets
        .update(&ob.to_ne_bytes(), abi::bytes_of(&bucket), MapFlags::ANY)
        .unwrap();

    let t = FlowTables::open(&handles(&env.obj), Some(seed), seed_of(99)).unwrap();
    assert_eq!(t.seed(), &seed);
    assert_eq!(t.len(), 1, "adopted flows");
    assert_eq!(t.counters(&key).map(|c| c.packets), Some(4));
    assert_eq!(slot_of(&env.obj, false, &key, &seed), Some(slot));
    assert_eq!(
        slot_of(&env.obj, false, &okey, &seed),
        None,
        "stale slot kept"
    );
    forward(&mut env, &a, 1);
}

#[test]
fn full_buckets_tag_collisions_and_a_full_table_are_refused() {
    let Some(env) = setup("full_buckets_tag_collisions_and_a_full_table_are_refused") else {
        return;
    };
    let seed = seed_of(3);
    let mut t = FlowTables::open(&handles(&env.obj), None, seed).unwrap();
    // Keys that differ in their ports only (more than the table holds); group them by bucket.
    let spec = |n: u32| {
        let mut orig = Tuple::v4(false);
        orig.sport = (n % 60000 + 1) as u16;
        orig.dport = 1000 + (n / 60000) as u16;
        plain_flow(&env, orig, orig).entry()
    };
    const KEYS: u32 = 72000;
    type Keyed = Vec<(Vec<u8>, Vec<u8>, u16)>;
    let mut by_bucket: std::collections::HashMap<u32, Keyed> = Default::default();
    for n in 0..KEYS {
        let (_, k, e) = spec(n);
        let (b, tag) = abi::flow_hash(&k, &seed);
        by_bucket.entry(b).or_default().push((k, e, tag));
    }
    // A bucket with enough keys to fill it, taking only distinct tags.
    let (&b, keys) = by_bucket.iter().max_by_key(|(_, v)| v.len()).unwrap();
    let mut tags = Vec::new();
    let mut placed = 0;
    let mut collision = None;
    for (k, e, tag) in keys {
        if tags.contains(tag) {
            collision.get_or_insert((k.clone(), e.clone()));
            continue;
        }
        if placed == abi::BUCKET_SLOTS {
            assert_eq!(t.install(e).unwrap(), Err(PlaceError::BucketFull(b)));
            break;
        }
        t.install(e).unwrap().unwrap();
        tags.push(*tag);
        placed += 1;
    }
    assert_eq!(placed, abi::BUCKET_SLOTS, "bucket {b} never filled");
    // Same tag as a flow already in the bucket: refused (the data path would find the other).
    // A key is found through its bucket's slot with its tag: the other flow's slot is not
    // this key's (not found, no owner, not removed in its name).
    if let Some((k, e)) = collision {
        assert!(t.counters(&k).is_none(), "found through another key's slot");
        assert!(t.owner(&k).is_none());
        let before = t.len();
        t.remove(&k);
        assert_eq!(t.len(), before, "removed the flow that shares its tag");
        let r = t.install(&e).unwrap();
        assert!(
            r == Err(PlaceError::TagCollision(b)) || r == Err(PlaceError::BucketFull(b)),
            "{r:?}"
        );
    }
    // The table itself: as many entries as the map was made with (the largest here), then Full.
    assert_eq!(t.capacity(), abi::MAX_FLOWS);
    fill_until_full(&mut t, by_bucket.values().flatten());
    assert_eq!(
        t.len(),
        abi::MAX_FLOWS as usize,
        "{KEYS} keys did not fill it"
    );
}

/// Installs `keys` until one is refused for want of an entry (not of a bucket slot); that
/// happens exactly when the table holds its capacity.
fn fill_until_full<'a>(
    t: &mut FlowTables,
    keys: impl Iterator<Item = &'a (Vec<u8>, Vec<u8>, u16)>,
) {
    for (k, e, _) in keys {
        if t.counters(k).is_some() {
            continue;
        }
        match t.install(e).unwrap() {
            Ok(_) | Err(PlaceError::BucketFull(_) | PlaceError::TagCollision(_)) => {}
            Err(PlaceError::Full) => {
                assert_eq!(t.len(), t.capacity() as usize, "full before its capacity");
                return;
            }
        }
        assert!(
            t.len() <= t.capacity() as usize,
            "more entries than its capacity"
        );
    }
    panic!("never full: {} of {} entries", t.len(), t.capacity());
}

#[test]
fn a_table_sized_at_load_holds_that_many_entries() {
    let Some(env) = setup("a_table_sized_at_load_holds_that_many_entries") else {
        return;
    };
    // The daemon sizes the entry arrays from nf_conntrack_max; the tables follow the maps.
    let mut open = libbpf_rs::ObjectBuilder::default()
        .open_memory(abi::OFFLOAD_OBJ)
        .unwrap();
    for m in open.maps_mut() {
        if m.name() == abi::FLOWS4_MAP || m.name() == abi::FLOWS6_MAP {
            let mut m = m;
            m.set_max_entries(abi::MIN_FLOWS).unwrap();
        }
    }
    let obj = open.load().unwrap();
    let mut t = FlowTables::open(&handles(&obj), None, seed_of(7)).unwrap();
    assert_eq!(t.capacity(), abi::MIN_FLOWS);
    let keys: Vec<_> = (0..2 * abi::MIN_FLOWS)
        .map(|n| {
            let mut orig = Tuple::v4(false);
            orig.sport = 10000 + n as u16;
            let (_, k, e) = plain_flow(&env, orig, orig).entry();
            (k, e, 0)
        })
        .collect();
    fill_until_full(&mut t, keys.iter());
    // Removing one makes room for it again (install waits for the grace period that frees
    // the removed entry).
    let (k, e, _) = keys
        .iter()
        .find(|(k, _, _)| t.counters(k).is_some())
        .unwrap();
    t.remove(k);
    assert_eq!(t.install(e).unwrap(), Ok(()));
    assert_eq!(t.len(), abi::MIN_FLOWS as usize);
}

#[test]
fn packets_racing_replacements_only_see_complete_entries() {
    let Some(mut env) = setup("packets_racing_replacements_only_see_complete_entries") else {
        return;
    };
    let mut t = fresh_tables(&env, 4);
    let orig = Tuple::v4(false);
    // Two versions that differ in egress device (and so in verdict), encapsulation (frame
    // length) and NAT: a packet that mixed them would show.
    let a = plain_flow(&env, orig, orig.snat());
    let b = FlowSpec::new(
        env.dev[0],
        Encap::plain(),
        orig,
        env.dev[0],
        Encap::qinq(10, 20),
        orig.dnat(),
    );
    let (_, key, entry_a) = a.entry();
    let (_, _, entry_b) = b.entry();
    t.install(&entry_a).unwrap().unwrap();
    let (input, want_a) = a.frames(Tcp::Ack, PAYLOAD);
    let (_, want_b) = b.frames(Tcp::Ack, PAYLOAD);
    let seed = *t.seed();

    // The writer: replace, replace back, and every few rounds a grace period, which frees (and
    // zeroes) the old entries for reuse: a reader still on one would see a zeroed or reused
    // entry and pass or mangle the packet.
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let stop = stop.clone();
        let progress = progress.clone();
        std::thread::spawn(move || {
            let mut rounds = 0u64;
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let e = if rounds % 2 == 0 { &entry_b } else { &entry_a };
                t.install(e).unwrap().unwrap();
                // Both ways of freeing: the event loop's (a worker thread waits out the
                // grace period, a later call frees) and the blocking one.
                if rounds % 8 == 3 {
                    t.reclaim().unwrap();
                } else if rounds % 8 == 7 {
                    t.synchronize().unwrap();
                }
                rounds += 1;
                progress.store(rounds, Ordering::Relaxed);
            }
            (t, rounds)
        })
    };
    let started = Instant::now();
    let (mut seen_a, mut seen_b) = (0u64, 0u64);
    // At least 2 s of racing, and on until the race really happened (a busy machine may
    // starve either side for a while), within a bound.
    let raced = |a: u64, b: u64| progress.load(Ordering::Relaxed) > 100 && a > 0 && b > 0;
    while started.elapsed() < Duration::from_secs(2)
        || (!raced(seen_a, seen_b) && started.elapsed() < Duration::from_secs(100))
    {
        // The daemon's heartbeat: without it the data path passes everything after 3 s,
        // which a loaded machine's race can outlast.
        heartbeat(&env.obj, &seed);
        // Version a redirects to dev[1], version b sends back out of dev[0] (XDP_TX).
        let r = run_xdp(&mut env.obj, &input, a.ingress, 1);
        if r.ret == XDP_REDIRECT && r.data == want_a {
            seen_a += 1;
        } else if r.ret == XDP_TX && r.data == want_b {
            seen_b += 1;
        } else {
            panic!(
                "a racing packet saw a mixed or stale entry: ret {} {:02x?}",
                r.ret, r.data
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (t, rounds) = writer.join().unwrap();
    eprintln!("{rounds} replacements, {seen_a} + {seen_b} packets");
    assert!(rounds > 100 && seen_a > 0 && seen_b > 0, "no race happened");
    assert_eq!(
        t.counters(&key).map(|c| c.packets),
        Some(seen_a + seen_b),
        "packets counted across replacements"
    );
    let passes: u64 = common::bpf::stats(&env.obj)
        .iter()
        .filter(|(i, _)| {
            *i != abi::Stat::BPFQOS_STAT_REDIRECT.0 && *i != abi::Stat::BPFQOS_STAT_TX.0
        })
        .map(|(_, n)| n)
        .sum();
    assert_eq!(passes, 0, "{:?}", common::bpf::stats(&env.obj));
}

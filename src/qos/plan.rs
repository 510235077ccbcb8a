//! What a shaped direction looks like in tc terms, computed from the configuration alone (pure,
//! unit-tested): the qdisc tree bpfqos wants on a device.
//!
//! - `qdisc 'cake'` (sqm's piece_of_cake): one CAKE as the root qdisc, shaping at the rate, with
//!   the link's overhead, per-host fairness behind NAT (`dual-srchost nat` for upload,
//!   `dual-dsthost nat ingress` for download), the configured tiers (besteffort by default)
//!   and GSO super-packets split into segments.
//! - `qdisc 'fq_codel'` (sqm's simple.qos) and `qdisc 'fifo'`: an HTB root with one class at the
//!   rate and, for fq_codel, an fq_codel leaf (ECN on download, off on upload, as sqm does).
//!
//! Overhead means what it means to CAKE and sqm users: the bytes the link adds to each IP
//! packet. CAKE replaces the L2 header a packet carries with it by itself; HTB charges
//! `skb->len`, which on an Ethernet device already holds 14 bytes of header, so those are
//! taken off the configured overhead there (and, when that goes below zero, a size table with a
//! negative overhead does it).

use super::tc::Cake;
use super::tc::Class;
use super::tc::Diffserv;
use super::tc::FlowMode;
use super::tc::FqCodel;
use super::tc::Handle;
use super::tc::HtbClass;
use super::tc::HtbQdisc;
use super::tc::LinkLayer;
use super::tc::Qdisc;
use super::tc::QdiscKind;
use super::tc::Stab;
use crate::config;

/// Major number of every qdisc and class bpfqos creates: what makes them recognisably ours
/// (the data path names circuit classes with it: `BPFQOS_SHAPER_MAJOR`).
pub const MAJOR: u16 = crate::dataplane::abi::SHAPER_MAJOR;
/// Major of the leaf qdisc under the default class; a circuit's leaf has this plus its id.
pub const LEAF_MAJOR: u16 = 0xba0;
/// A circuit's class minor is this plus its id (`BPFQOS_CIRCUIT_MINOR_BASE`).
pub const CIRCUIT_MINOR_BASE: u16 = crate::dataplane::abi::CIRCUIT_MINOR_BASE;
/// What every class under the link class is guaranteed, bytes/s (1 kbit/s): next to nothing,
/// so that they all share the link by borrowing, in equal turns, each up to its own ceiling.
/// HTB lets a class below its guarantee send whatever its parent has left, so the guarantees
/// must add up to (almost) nothing for the link rate to hold: with every class busy at once
/// they add 1 kbit/s per class. Constant, so that a rate change (autorate) touches the link
/// class only and a circuit's class depends on its own limit only.
pub const GUARANTEE_BYTES: u64 = 125;
/// The HTB class every packet of a direction goes through (the interface's rate).
pub const CLASS_LINK: u16 = 1;
/// The HTB class of traffic no circuit claims (the default class).
pub const CLASS_DEFAULT: u16 = 0x10;

/// Which way a shaper limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Out of the router into the link.
    Upload,
    /// From the link into the router.
    Download,
}

/// One direction of an interface's configuration, as the plan needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Upload or download.
    pub direction: Direction,
    /// Rate, kbit/s (> 0).
    pub rate_kbit: u64,
    /// Leaf / shaper kind.
    pub qdisc: config::Qdisc,
    /// Link-layer overhead per packet, bytes.
    pub overhead: i32,
    /// Minimum packet unit, bytes.
    pub mpu: u32,
    /// Link framing.
    pub linklayer: config::LinkLayer,
    /// CAKE tiers.
    pub diffserv: config::Diffserv,
    /// Bytes of L2 header in `skb->len` on the shaping device (14 on Ethernet, 0 on PPP).
    pub l2_len: u32,
}

impl Params {
    /// The direction's settings of `i`; `None` when that direction is not shaped.
    pub fn of(i: &config::Interface, direction: Direction, l2_len: u32) -> Option<Self> {
        let rate_kbit = match direction {
            Direction::Upload => i.upload_kbit,
            Direction::Download => i.download_kbit,
        };
        (rate_kbit > 0).then_some(Params {
            direction,
            rate_kbit,
            qdisc: i.qdisc,
            overhead: i.overhead,
            mpu: i.mpu,
            linklayer: i.linklayer,
            diffserv: i.diffserv,
            l2_len,
        })
    }

    /// The rate in bytes per second.
    pub fn rate_bytes(&self) -> u64 {
        kbit_to_bytes(self.rate_kbit)
    }
}

/// kbit/s (1000 bit/s) in bytes per second.
pub fn kbit_to_bytes(kbit: u64) -> u64 {
    kbit.saturating_mul(125)
}

/// A circuit's limit in one direction, as a shaper needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CircuitLimit {
    /// Its id (1..=`MAX_CIRCUITS`): the class minor is [`CIRCUIT_MINOR_BASE`] plus it.
    pub id: u16,
    /// The limit, kbit/s (> 0).
    pub rate_kbit: u64,
}

/// The class of circuit `id`.
pub fn circuit_class(id: u16) -> Handle {
    Handle::new(MAJOR, CIRCUIT_MINOR_BASE.saturating_add(id))
}

/// The leaf qdisc handle under circuit `id`'s class.
pub fn circuit_leaf(id: u16) -> Handle {
    Handle::new(LEAF_MAJOR.saturating_add(id), 0)
}

/// The tree of qdiscs and classes bpfqos wants on one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// The root qdisc (handle `MAJOR:`).
    pub root: Qdisc,
    /// HTB classes, parents before children.
    pub classes: Vec<Class>,
    /// Qdiscs under the leaf classes.
    pub leaves: Vec<Qdisc>,
}

fn link_layer(l: config::LinkLayer) -> LinkLayer {
    match l {
        config::LinkLayer::Ethernet => LinkLayer::Ethernet,
        config::LinkLayer::Atm => LinkLayer::Atm,
        config::LinkLayer::Ptm => LinkLayer::Ptm,
    }
}

fn diffserv(d: config::Diffserv) -> Diffserv {
    match d {
        config::Diffserv::Besteffort => Diffserv::Besteffort,
        config::Diffserv::Diffserv3 => Diffserv::Diffserv3,
        config::Diffserv::Diffserv4 => Diffserv::Diffserv4,
        config::Diffserv::Diffserv8 => Diffserv::Diffserv8,
        config::Diffserv::Precedence => Diffserv::Precedence,
    }
}

/// The CAKE of a direction, shaping at `rate_bytes` (0: unlimited, an HTB class shapes).
pub fn cake(p: &Params, rate_bytes: u64) -> Cake {
    let download = p.direction == Direction::Download;
    Cake {
        rate_bytes,
        diffserv: diffserv(p.diffserv),
        flow_mode: if download {
            FlowMode::DualDsthost
        } else {
            FlowMode::DualSrchost
        },
        nat: true,
        overhead: p.overhead,
        mpu: p.mpu,
        link_layer: link_layer(p.linklayer),
        ingress: download,
        wash: false,
        split_gso: true,
        ack_filter: false,
        // CAKE's own defaults ("internet", 5 ms), stated: a replace of a CAKE keeps what it
        // is not told, so values set by someone else would otherwise stay.
        rtt_us: 100_000,
        target_us: 5_000,
    }
}

/// The AQM target and interval (µs) for a queue drained at `rate_bytes`: at least 1.5
/// serialisation times of a full packet (a single packet must not look like a standing
/// queue), 5 ms otherwise, and an interval of at least 20 targets (sqm's rule for slow links).
fn aqm_times(rate_bytes: u64) -> (u32, u32) {
    let mtu_us = 1514 * 1_000_000 / rate_bytes.max(1);
    let target_us = (mtu_us * 3 / 2).max(5_000).min(u64::from(u32::MAX)) as u32;
    let interval_us = (u64::from(target_us) * 20)
        .max(100_000)
        .min(u64::from(u32::MAX)) as u32;
    (target_us, interval_us)
}

/// The CAKE leaf under an HTB class shaped at `ceil` bytes/s: no rate of its own (the class
/// shapes), and told the AQM times of the rate it is drained at.
pub fn cake_leaf(p: &Params, ceil: u64) -> Cake {
    let (target_us, rtt_us) = aqm_times(ceil);
    Cake {
        target_us,
        rtt_us,
        ..cake(p, 0)
    }
}

/// fq_codel for a direction at `rate_bytes`, with sqm's adjustments for slow links: a target
/// of at least 1.5 MTU-serialisation times (a single full packet must not look like a
/// standing queue), an interval to match, and a small quantum below 100 Mbit/s.
pub fn fq_codel(p: &Params, rate_bytes: u64) -> FqCodel {
    let (target_us, interval_us) = aqm_times(rate_bytes);
    FqCodel {
        target_us,
        interval_us,
        quantum: if rate_bytes < kbit_to_bytes(100_000) {
            300
        } else {
            1514
        },
        ecn: p.direction == Direction::Download,
        ..FqCodel::default()
    }
}

/// HTB's accounting of the link for a direction: per-packet overhead in the rate spec where
/// it is positive after the header `skb->len` already counts, a size table where negative.
fn htb_accounting(p: &Params) -> (u16, Option<Stab>) {
    let effective = p.overhead - p.l2_len as i32;
    if effective >= 0 {
        (effective.min(i32::from(u16::MAX)) as u16, None)
    } else {
        (
            0,
            Some(Stab {
                overhead: effective,
                mpu: 0,
                link_layer: LinkLayer::Ethernet,
            }),
        )
    }
}

/// An HTB class at `rate`/`ceil` bytes/s with the direction's accounting. PTM (64/65
/// encoding, which HTB cannot model) is charged by lowering the rate accordingly.
pub fn htb_class(
    p: &Params,
    ifindex: u32,
    minor: u16,
    parent: Handle,
    rate: u64,
    ceil: u64,
) -> Class {
    let (overhead, _) = htb_accounting(p);
    let ptm = |r: u64| {
        if p.linklayer == config::LinkLayer::Ptm {
            r * 64 / 65
        } else {
            r
        }
    };
    let (rate, ceil) = (ptm(rate), ptm(ceil));
    // Four milliseconds at the rate, at least two full frames: one millisecond (sqm's rule)
    // lost up to 6 % of the rate at 50 Mbit/s on a busy 2-core test machine (timer latency
    // eats the credit); a few milliseconds of line-rate burst is what every link queue adds.
    let burst = |r: u64| (r / 250).clamp(3028, u64::from(u32::MAX)) as u32;
    Class {
        ifindex,
        handle: Handle::new(MAJOR, minor),
        parent,
        htb: HtbClass {
            rate_bytes: rate,
            ceil_bytes: ceil,
            burst: burst(rate),
            cburst: burst(ceil),
            quantum: 1514,
            prio: 0,
            overhead,
            mpu: p.mpu.min(u32::from(u16::MAX)) as u16,
            link_layer: if p.linklayer == config::LinkLayer::Atm {
                LinkLayer::Atm
            } else {
                LinkLayer::Ethernet
            },
        },
    }
}

/// The leaf qdisc of a class shaped at `ceil` bytes/s (`None`: HTB's own FIFO).
fn leaf(p: &Params, ifindex: u32, handle: Handle, parent: Handle, ceil: u64) -> Option<Qdisc> {
    let kind = match p.qdisc {
        // The HTB class shapes; CAKE (unlimited) queues, with its per-host fairness.
        config::Qdisc::Cake => QdiscKind::Cake(cake_leaf(p, ceil)),
        config::Qdisc::FqCodel => QdiscKind::FqCodel(fq_codel(p, ceil)),
        config::Qdisc::Fifo => return None,
    };
    Some(Qdisc {
        ifindex,
        handle,
        parent,
        kind,
        stab: None,
    })
}

/// The tree for one shaped direction on device `ifindex`, with a class for each of
/// `circuits` (those limited in this direction).
///
/// - `qdisc 'cake'` without circuits: one CAKE at the root, shaping (sqm's piece_of_cake);
/// - otherwise an HTB root, its link class at the rate, and under it the default class and
///   one class per circuit, each guaranteed [`GUARANTEE_BYTES`] and ceiled at the link rate
///   (default) or the circuit's limit: busy classes share the link in equal turns (HTB's
///   round robin over borrowing classes), none beyond its ceiling, and what one cannot use
///   the others get. Leaves: CAKE without a rate of its own, fq_codel, or HTB's FIFO.
pub fn tree(ifindex: u32, p: &Params, circuits: &[CircuitLimit]) -> Tree {
    let root_handle = Handle::new(MAJOR, 0);
    let rate = p.rate_bytes();
    if p.qdisc == config::Qdisc::Cake && circuits.is_empty() {
        return Tree {
            root: Qdisc {
                ifindex,
                handle: root_handle,
                parent: Handle::ROOT,
                kind: QdiscKind::Cake(cake(p, rate)),
                stab: None,
            },
            classes: Vec::new(),
            leaves: Vec::new(),
        };
    }
    let (_, stab) = htb_accounting(p);
    let link = htb_class(p, ifindex, CLASS_LINK, root_handle, rate, rate);
    let guarantee = |ceil: u64| GUARANTEE_BYTES.min(ceil);
    let default = htb_class(
        p,
        ifindex,
        CLASS_DEFAULT,
        link.handle,
        guarantee(rate),
        rate,
    );
    let mut leaves: Vec<Qdisc> = leaf(p, ifindex, Handle::new(LEAF_MAJOR, 0), default.handle, rate)
        .into_iter()
        .collect();
    let mut classes = vec![link.clone(), default];
    for c in circuits {
        let ceil = kbit_to_bytes(c.rate_kbit);
        let mut class = htb_class(p, ifindex, 0, link.handle, guarantee(ceil), ceil);
        class.handle = circuit_class(c.id);
        leaves.extend(leaf(p, ifindex, circuit_leaf(c.id), class.handle, ceil));
        classes.push(class);
    }
    Tree {
        root: Qdisc {
            ifindex,
            handle: root_handle,
            parent: Handle::ROOT,
            kind: QdiscKind::Htb(HtbQdisc {
                default_class: CLASS_DEFAULT,
                direct_qlen: 0,
            }),
            stab,
        },
        classes,
        leaves,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(qdisc: config::Qdisc, direction: Direction, overhead: i32, l2: u32) -> Params {
        Params {
            direction,
            rate_kbit: 40_000,
            qdisc,
            overhead,
            mpu: 0,
            linklayer: config::LinkLayer::Ethernet,
            diffserv: config::Diffserv::Besteffort,
            l2_len: l2,
        }
    }

    #[test]
    fn cake_is_sqms_piece_of_cake() {
        let up = tree(
            5,
            &params(config::Qdisc::Cake, Direction::Upload, 34, 0),
            &[],
        );
        let QdiscKind::Cake(c) = &up.root.kind else {
            panic!("not cake: {up:?}");
        };
        assert_eq!(c.rate_bytes, 5_000_000);
        assert_eq!(
            (c.flow_mode, c.nat, c.ingress, c.overhead, c.split_gso),
            (FlowMode::DualSrchost, true, false, 34, true)
        );
        assert_eq!(c.diffserv, Diffserv::Besteffort);
        assert!(up.classes.is_empty() && up.leaves.is_empty());
        let down = tree(
            6,
            &params(config::Qdisc::Cake, Direction::Download, 34, 14),
            &[],
        );
        let QdiscKind::Cake(c) = &down.root.kind else {
            panic!("not cake");
        };
        // CAKE takes the carried header off by itself: the overhead is the configured one.
        assert_eq!(
            (c.flow_mode, c.ingress, c.overhead),
            (FlowMode::DualDsthost, true, 34)
        );
        assert_eq!(down.root.handle, Handle::new(MAJOR, 0));
    }

    #[test]
    fn htb_takes_the_carried_header_off_the_overhead() {
        let eth = tree(
            5,
            &params(config::Qdisc::FqCodel, Direction::Upload, 34, 14),
            &[],
        );
        assert_eq!(eth.classes[0].htb.overhead, 20);
        assert_eq!(eth.root.stab, None);
        let ppp = tree(
            5,
            &params(config::Qdisc::Fifo, Direction::Upload, 34, 0),
            &[],
        );
        assert_eq!(ppp.classes[0].htb.overhead, 34);
        assert!(ppp.leaves.is_empty(), "fifo: HTB's own queue");
        // Overhead 0 on Ethernet: the 14 header bytes must not be charged.
        let neg = tree(
            5,
            &params(config::Qdisc::FqCodel, Direction::Upload, 0, 14),
            &[],
        );
        assert_eq!(neg.classes[0].htb.overhead, 0);
        assert_eq!(neg.root.stab.map(|s| s.overhead), Some(-14));
    }

    #[test]
    fn htb_tree_shape_and_fq_codel_defaults() {
        let t = tree(
            9,
            &params(config::Qdisc::FqCodel, Direction::Download, 18, 14),
            &[],
        );
        assert_eq!(t.classes.len(), 2);
        assert_eq!(t.classes[0].parent, t.root.handle);
        assert_eq!(t.classes[1].parent, t.classes[0].handle);
        assert_eq!(t.classes[1].handle, Handle::new(MAJOR, CLASS_DEFAULT));
        let QdiscKind::Htb(h) = &t.root.kind else {
            panic!("not htb");
        };
        assert_eq!(h.default_class, CLASS_DEFAULT);
        assert_eq!(t.classes[0].htb.rate_bytes, 5_000_000);
        assert_eq!(t.classes[0].htb.burst, 20_000);
        let QdiscKind::FqCodel(f) = &t.leaves[0].kind else {
            panic!("not fq_codel");
        };
        assert!(f.ecn, "download marks");
        assert_eq!(
            (f.quantum, f.target_us, f.interval_us),
            (300, 5_000, 100_000)
        );
        assert_eq!(t.leaves[0].parent, t.classes[1].handle);
    }

    #[test]
    fn slow_links_get_a_longer_codel_target_and_ptm_a_lower_htb_rate() {
        let mut p = params(config::Qdisc::FqCodel, Direction::Upload, 0, 0);
        p.rate_kbit = 1_000; // 125 kB/s: a 1514-byte frame takes 12.1 ms.
        let t = tree(1, &p, &[]);
        let QdiscKind::FqCodel(f) = &t.leaves[0].kind else {
            panic!("not fq_codel");
        };
        assert_eq!(f.target_us, 18_168);
        assert_eq!(f.interval_us, 363_360);
        assert!(!f.ecn, "upload drops");
        p.linklayer = config::LinkLayer::Ptm;
        p.rate_kbit = 65_000;
        assert_eq!(tree(1, &p, &[]).classes[0].htb.rate_bytes, 8_000_000);
        p.linklayer = config::LinkLayer::Atm;
        assert_eq!(tree(1, &p, &[]).classes[0].htb.link_layer, LinkLayer::Atm);
    }

    #[test]
    fn circuits_get_a_class_each_that_depends_on_their_own_limit_only() {
        let p = params(config::Qdisc::Cake, Direction::Upload, 34, 0);
        let limits = [
            CircuitLimit {
                id: 1,
                rate_kbit: 10_000,
            },
            CircuitLimit {
                id: 7,
                rate_kbit: 90_000,
            },
        ];
        let t = tree(5, &p, &limits);
        // CAKE with circuits: HTB shapes, CAKE leaves queue without a rate.
        assert!(matches!(t.root.kind, QdiscKind::Htb(_)));
        assert_eq!(t.classes.len(), 4);
        let c1 = &t.classes[2];
        assert_eq!(c1.handle, Handle::new(MAJOR, 0x101));
        assert_eq!(c1.parent, Handle::new(MAJOR, CLASS_LINK));
        assert_eq!(
            (c1.htb.rate_bytes, c1.htb.ceil_bytes),
            (GUARANTEE_BYTES, 1_250_000)
        );
        // A limit above the link's stays as configured: the link class caps it anyway, and
        // the class does not change when the link rate does.
        assert_eq!(t.classes[3].htb.ceil_bytes, 11_250_000);
        let default = &t.classes[1];
        assert_eq!(
            (default.htb.rate_bytes, default.htb.ceil_bytes),
            (GUARANTEE_BYTES, 5_000_000)
        );
        assert_eq!(t.leaves.len(), 3);
        let QdiscKind::Cake(leaf) = &t.leaves[1].kind else {
            panic!("not cake");
        };
        assert_eq!(leaf.rate_bytes, 0, "the leaf does not shape");
        // Told the AQM times of its 10 Mbit/s class (a 1514-byte packet: 1.2 ms).
        assert_eq!((leaf.target_us, leaf.rtt_us), (5_000, 100_000));
        let QdiscKind::Cake(slow) = &tree(
            5,
            &p,
            &[CircuitLimit {
                id: 2,
                rate_kbit: 1_000,
            }],
        )
        .leaves[1]
            .kind
        else {
            panic!("not cake");
        };
        assert_eq!((slow.target_us, slow.rtt_us), (18_168, 363_360));
        assert_eq!(leaf.flow_mode, FlowMode::DualSrchost);
        assert_eq!(t.leaves[1].handle, Handle::new(LEAF_MAJOR + 1, 0));
        assert_eq!(t.leaves[1].parent, c1.handle);
        // Another link rate: only the link and default classes differ.
        let mut q = p.clone();
        q.rate_kbit = 20_000;
        let u = tree(5, &q, &limits);
        assert_eq!(t.classes[2..], u.classes[2..]);
        assert_eq!(t.leaves, u.leaves);
        // The guarantees add up to a negligible share of the link.
        let sum: u64 = t.classes[1..].iter().map(|c| c.htb.rate_bytes).sum();
        assert!(sum * 1000 < p.rate_bytes());
    }

    #[test]
    fn fq_codel_circuit_leaves_are_tuned_to_the_circuit_rate() {
        let p = params(config::Qdisc::FqCodel, Direction::Download, 0, 14);
        let t = tree(
            5,
            &p,
            &[CircuitLimit {
                id: 3,
                rate_kbit: 1_000,
            }],
        );
        let QdiscKind::FqCodel(f) = &t.leaves[1].kind else {
            panic!("not fq_codel");
        };
        assert_eq!(
            f.target_us, 18_168,
            "a 1 Mbit/s circuit gets the slow-link target"
        );
        let fifo = tree(
            5,
            &params(config::Qdisc::Fifo, Direction::Upload, 0, 0),
            &[CircuitLimit {
                id: 3,
                rate_kbit: 1_000,
            }],
        );
        assert!(fifo.leaves.is_empty() && fifo.classes.len() == 3);
    }
}

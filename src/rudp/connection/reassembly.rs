//! Reassembly of fragmented messages, in memory proportional to what
//! arrived.
//!
//! Every fragment but the last carries exactly the connection's fragment
//! size `F`, so fragment `i` starts at byte `i * F` of the message and the
//! message's length is known once the last one has arrived. A fragment's
//! header also claims how many fragments the message has; nothing here is
//! sized by that claim (a peer could claim 65,535 fragments and send one):
//!
//! - the **prefix** holds fragments `0..next`, back to back: the in-order
//!   fast path appends to it, and it *is* the message once complete (no
//!   copy at completion). Its capacity doubles with what was appended and
//!   jumps to the claimed length once a quarter of it is there, so it is
//!   at most four times the bytes received (twice below a quarter) and
//!   ends with less than `F` bytes of slack;
//! - fragments that arrive beyond the prefix wait in a sorted map, each in
//!   an allocation of its own size, and move into the prefix (one copy)
//!   when the gap before them closes.
//!
//! [`Reassembly::held`] is what all of it occupies: capacities, not
//! lengths, plus a per-fragment and per-message overhead that covers the
//! allocator's headers and the map's nodes.

use std::collections::BTreeMap;

use crate::rudp::wire::{FragInfo, SetInfo};
use crate::rudp::Guarantee;

/// Charged for a reassembly itself (its fields, or its box).
pub(super) const REASSEMBLY_OVERHEAD: usize = 128;
/// Charged once while any fragment waits beyond the prefix: the map's
/// first node.
pub(super) const OOO_NODE_OVERHEAD: usize = 256;
/// Charged per fragment waiting beyond the prefix: its allocation's header
/// and its share of the map's nodes.
pub(super) const OOO_FRAG_OVERHEAD: usize = 64;
/// Charged per allocation of a small buffer (the allocator's header and
/// rounding: glibc's smallest chunk is 32 bytes).
pub(super) const ALLOC_OVERHEAD: usize = 32;

/// What a buffer of `cap` bytes of capacity is charged.
#[inline]
pub(super) fn vec_charge(cap: usize) -> usize {
    if cap == 0 {
        0
    } else {
        cap + ALLOC_OVERHEAD
    }
}

/// A message being reassembled from fragments.
#[derive(Debug)]
pub(super) struct Reassembly {
    /// Fragments the message has, as its fragments claim.
    count: u16,
    /// Fragments `0..next` are in `prefix`.
    next: u16,
    /// Fragments `0..next`, back to back.
    prefix: Vec<u8>,
    /// Fragments received beyond `next`, by index.
    ooo: BTreeMap<u16, Box<[u8]>>,
    /// Payload bytes in `ooo`.
    ooo_bytes: usize,
    set: Option<SetInfo>,
}

/// What [`Reassembly::insert`] did with a fragment.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum FragInsert {
    /// Stored.
    Added,
    /// Already received.
    Duplicate,
    /// Does not belong to this message (another fragment count).
    Mismatch,
    /// Storing it would grow what is held by more than the room given:
    /// nothing changed. `need` is the least growth that would do.
    NoRoom { need: usize },
}

impl Reassembly {
    /// An empty reassembly of a message of `count` fragments.
    pub(super) fn new(count: u16, set: Option<SetInfo>) -> Self {
        Reassembly {
            count,
            next: 0,
            prefix: Vec::new(),
            ooo: BTreeMap::new(),
            ooo_bytes: 0,
            set,
        }
    }

    /// A reassembly holding one fragment already (`data`, fragment `index`),
    /// moved in without a copy.
    pub(super) fn with_fragment(
        count: u16,
        set: Option<SetInfo>,
        index: u16,
        data: Box<[u8]>,
    ) -> Self {
        let mut r = Reassembly::new(count, set);
        if index == 0 {
            r.prefix = data.into_vec();
            r.next = 1;
        } else {
            r.ooo_bytes = data.len();
            r.ooo.insert(index, data);
        }
        r
    }

    /// Bytes held: capacities and overheads (see the module docs).
    pub(super) fn held(&self) -> usize {
        let ooo = if self.ooo.is_empty() {
            0
        } else {
            OOO_NODE_OVERHEAD + self.ooo_bytes + self.ooo.len() * OOO_FRAG_OVERHEAD
        };
        REASSEMBLY_OVERHEAD + vec_charge(self.prefix.capacity()) + ooo
    }

    /// Stores fragment `f` (whose payload is `payload`) if what is held
    /// grows by at most `room`. The caller checked the fragment's size
    /// against `frag_size` (every fragment but the last carries exactly
    /// that).
    pub(super) fn insert(
        &mut self,
        f: FragInfo,
        payload: &[u8],
        frag_size: usize,
        room: usize,
    ) -> FragInsert {
        if f.count != self.count || f.index >= self.count {
            return FragInsert::Mismatch;
        }
        if f.index < self.next || self.ooo.contains_key(&f.index) {
            return FragInsert::Duplicate;
        }
        if f.index > self.next {
            let cost = payload.len()
                + OOO_FRAG_OVERHEAD
                + if self.ooo.is_empty() {
                    OOO_NODE_OVERHEAD
                } else {
                    0
                };
            if cost > room {
                return FragInsert::NoRoom { need: cost };
            }
            self.ooo.insert(f.index, Box::from(payload));
            self.ooo_bytes += payload.len();
            return FragInsert::Added;
        }
        // The next fragment of the prefix: it and the fragments waiting
        // right after it join the prefix.
        let mut run_bytes = 0;
        let mut run_len = 0usize;
        let mut expect = f.index.wrapping_add(1);
        for (&i, d) in self.ooo.range(expect..) {
            if i != expect {
                break;
            }
            run_bytes += d.len();
            run_len += 1;
            expect = expect.wrapping_add(1);
        }
        let freed = if run_len == 0 {
            0
        } else {
            run_bytes
                + run_len * OOO_FRAG_OVERHEAD
                + if run_len == self.ooo.len() {
                    OOO_NODE_OVERHEAD
                } else {
                    0
                }
        };
        let needed = self.prefix.len() + payload.len() + run_bytes;
        let cap = self.prefix.capacity();
        if needed > cap {
            // Geometric growth, never past the claimed length, nor past
            // the room (as long as what is needed fits).
            let min_cost = vec_charge(needed) - vec_charge(cap);
            if min_cost > room.saturating_add(freed) {
                return FragInsert::NoRoom {
                    need: min_cost - freed,
                };
            }
            // Doubling; and once a quarter of the claimed length is here,
            // the claimed length at once (one large copy fewer on the
            // in-order path, at most four times what arrived).
            let claimed = usize::from(self.count) * frag_size;
            let grown = if needed.saturating_mul(4) >= claimed {
                claimed
            } else {
                (2 * cap).max(needed)
            };
            let target = grown
                .min(claimed)
                .min(
                    room.saturating_add(freed)
                        .saturating_add(cap)
                        .saturating_sub(ALLOC_OVERHEAD),
                )
                .max(needed);
            self.prefix.reserve_exact(target - self.prefix.len());
        }
        self.prefix.extend_from_slice(payload);
        self.next = f.index + 1;
        while self
            .ooo
            .first_key_value()
            .is_some_and(|(&i, _)| i == self.next)
        {
            if let Some((_, d)) = self.ooo.pop_first() {
                self.ooo_bytes -= d.len();
                self.prefix.extend_from_slice(&d);
            }
            self.next += 1;
        }
        FragInsert::Added
    }

    /// The fragment held, when exactly one is (undoes
    /// [`with_fragment`](Self::with_fragment)).
    pub(super) fn into_single(mut self) -> Result<(u16, Box<[u8]>), Self> {
        if self.next == 1 && self.ooo.is_empty() {
            return Ok((0, self.prefix.into_boxed_slice()));
        }
        if self.next == 0 && self.ooo.len() == 1 {
            if let Some(f) = self.ooo.pop_first() {
                return Ok(f);
            }
        }
        Err(self)
    }

    /// The set the message belongs to, if any.
    pub(super) fn set(&self) -> Option<SetInfo> {
        self.set
    }

    /// Every fragment arrived.
    pub(super) fn is_complete(&self) -> bool {
        self.next == self.count
    }

    /// The whole message (once complete): the prefix, moved.
    pub(super) fn finish(self) -> Vec<u8> {
        self.prefix
    }
}

/// An unreliable (None or Order) message being reassembled.
#[derive(Debug)]
pub(super) struct UnrelPartial {
    pub(super) guarantee: Guarantee,
    pub(super) seq: u32,
    pub(super) r: Reassembly,
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: usize = 100;

    fn frag(index: u16, count: u16) -> FragInfo {
        FragInfo { index, count }
    }

    fn payload(index: u16, count: u16, last_len: usize) -> Vec<u8> {
        let len = if index + 1 == count { last_len } else { F };
        (0..len)
            .map(|k| (usize::from(index) * 7 + k) as u8)
            .collect()
    }

    fn expected(count: u16, last_len: usize) -> Vec<u8> {
        (0..count)
            .flat_map(|i| payload(i, count, last_len))
            .collect()
    }

    #[test]
    fn in_order_grows_geometrically_and_ends_with_little_slack() {
        let count = 900;
        let mut r = Reassembly::new(count, None);
        let mut reallocs = 0;
        let mut cap = 0;
        for i in 0..count {
            let p = payload(i, count, 37);
            assert_eq!(
                r.insert(frag(i, count), &p, F, usize::MAX),
                FragInsert::Added
            );
            if r.prefix.capacity() != cap {
                reallocs += 1;
                cap = r.prefix.capacity();
            }
            // Never more than four times what arrived.
            assert!(r.prefix.capacity() <= 4 * r.prefix.len().max(F));
        }
        assert!(r.is_complete());
        assert!(reallocs <= 10, "{reallocs} reallocations");
        let held = r.held();
        let m = r.finish();
        assert_eq!(m, expected(count, 37));
        assert!(m.capacity() - m.len() < F);
        assert!(held <= m.len() + F + REASSEMBLY_OVERHEAD + ALLOC_OVERHEAD);
    }

    #[test]
    fn a_far_fragment_costs_its_bytes_not_its_index() {
        let count = 65_535;
        let mut r = Reassembly::new(count, None);
        let before = r.held();
        let p = [9u8];
        assert_eq!(
            r.insert(frag(count - 1, count), &p, F, usize::MAX),
            FragInsert::Added
        );
        assert_eq!(r.held() - before, 1 + OOO_FRAG_OVERHEAD + OOO_NODE_OVERHEAD);
        assert_eq!(
            r.insert(frag(count - 1, count), &p, F, usize::MAX),
            FragInsert::Duplicate
        );
        assert_eq!(
            r.insert(frag(3, 4), &p, F, usize::MAX),
            FragInsert::Mismatch
        );
    }

    #[test]
    fn any_order_reassembles_the_same_message() {
        let count = 50u16;
        // Reverse, interleaved, and in order with the first one last.
        let orders: Vec<Vec<u16>> = vec![
            (0..count).rev().collect(),
            (0..count).step_by(2).chain((1..count).step_by(2)).collect(),
            (1..count).chain([0]).collect(),
        ];
        for order in orders {
            let mut r = Reassembly::new(count, None);
            for &i in &order {
                let p = payload(i, count, 5);
                assert_eq!(
                    r.insert(frag(i, count), &p, F, usize::MAX),
                    FragInsert::Added
                );
                assert_eq!(
                    r.insert(frag(i, count), &p, F, usize::MAX),
                    FragInsert::Duplicate
                );
            }
            assert!(r.is_complete());
            assert!(r.ooo.is_empty() && r.ooo_bytes == 0);
            assert_eq!(r.finish(), expected(count, 5));
        }
    }

    #[test]
    fn no_room_changes_nothing_and_says_what_would_do() {
        let count = 10;
        let mut r = Reassembly::new(count, None);
        let p = payload(5, count, 5);
        let FragInsert::NoRoom { need } = r.insert(frag(5, count), &p, F, 10) else {
            panic!("stored without room");
        };
        assert_eq!(r.held(), REASSEMBLY_OVERHEAD);
        assert_eq!(r.insert(frag(5, count), &p, F, need), FragInsert::Added);
        // The prefix takes only what is needed when the room is tight.
        let p0 = payload(0, count, 5);
        let held = r.held();
        let FragInsert::NoRoom { need } = r.insert(frag(0, count), &p0, F, 0) else {
            panic!("stored without room");
        };
        assert_eq!(r.insert(frag(0, count), &p0, F, need), FragInsert::Added);
        assert!(r.held() <= held + need);
    }
}

//! The reactor's one deadline structure: a binary heap of deadlines with
//! lazy cancellation, plus a slab of live timers.
//!
//! Cancelling is O(1) (the heap entry goes stale); stale entries are popped
//! when they reach the top, and the heap is rebuilt from the live timers
//! whenever stale entries outnumber live ones, so a program that sets and
//! cancels timers forever keeps a bounded store.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use slab::Slab;

/// A key into [`Timers`]: slab index plus the generation that guards
/// against a reused slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TimerKey {
    pub(crate) index: u32,
    pub(crate) gen: u32,
}

#[derive(Debug)]
struct Slot<T> {
    gen: u32,
    deadline: Instant,
    value: T,
}

/// Deadlines in order; see the module docs.
#[derive(Debug)]
pub(crate) struct Timers<T> {
    /// (deadline, insertion order, index, generation).
    heap: BinaryHeap<Reverse<(Instant, u64, u32, u32)>>,
    slots: Slab<Slot<T>>,
    seq: u64,
    next_gen: u32,
}

impl<T> Timers<T> {
    pub(crate) fn new() -> Timers<T> {
        Timers {
            heap: BinaryHeap::new(),
            slots: Slab::new(),
            seq: 0,
            next_gen: 0,
        }
    }

    /// Schedules `value` at `deadline`.
    pub(crate) fn insert(&mut self, deadline: Instant, value: T) -> TimerKey {
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        let index = self.slots.insert(Slot {
            gen,
            deadline,
            value,
        }) as u32;
        self.seq += 1;
        self.heap.push(Reverse((deadline, self.seq, index, gen)));
        TimerKey { index, gen }
    }

    /// Cancels a timer; `None` if it already fired or was cancelled.
    pub(crate) fn cancel(&mut self, key: TimerKey) -> Option<T> {
        match self.slots.get(key.index as usize) {
            Some(slot) if slot.gen == key.gen => {}
            _ => return None,
        }
        let slot = self.slots.remove(key.index as usize);
        self.maybe_compact();
        Some(slot.value)
    }

    /// The deadline of `key`, if it is live.
    pub(crate) fn deadline(&self, key: TimerKey) -> Option<Instant> {
        match self.slots.get(key.index as usize) {
            Some(slot) if slot.gen == key.gen => Some(slot.deadline),
            _ => None,
        }
    }

    /// The earliest live deadline.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        self.drop_stale_head();
        self.heap.peek().map(|Reverse((d, ..))| *d)
    }

    /// Removes and returns the earliest timer due at `now`, if any.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(TimerKey, T)> {
        self.drop_stale_head();
        let &Reverse((deadline, _, index, gen)) = self.heap.peek()?;
        if deadline > now {
            return None;
        }
        self.heap.pop();
        let slot = self.slots.remove(index as usize);
        Some((TimerKey { index, gen }, slot.value))
    }

    /// Live timers.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Heap entries, live and stale (for tests of boundedness).
    #[cfg(test)]
    pub(crate) fn heap_len(&self) -> usize {
        self.heap.len()
    }

    fn is_live(&self, index: u32, gen: u32) -> bool {
        matches!(self.slots.get(index as usize), Some(s) if s.gen == gen)
    }

    fn drop_stale_head(&mut self) {
        while let Some(&Reverse((_, _, index, gen))) = self.heap.peek() {
            if self.is_live(index, gen) {
                break;
            }
            self.heap.pop();
        }
    }

    fn maybe_compact(&mut self) {
        if self.heap.len() > 64 && self.heap.len() > 2 * self.slots.len() {
            let slots = &self.slots;
            self.heap
                .retain(|Reverse((_, _, index, gen))| matches!(slots.get(*index as usize), Some(s) if s.gen == *gen));
        }
        if self.slots.is_empty() && self.slots.capacity() > 1024 {
            self.slots = Slab::new();
            self.heap = BinaryHeap::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fires_in_deadline_order_and_fifo_on_ties() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        t.insert(t0 + Duration::from_millis(30), "c");
        t.insert(t0 + Duration::from_millis(10), "a");
        t.insert(t0 + Duration::from_millis(20), "b1");
        t.insert(t0 + Duration::from_millis(20), "b2");
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(10)));
        assert!(t.pop_due(t0).is_none());
        let order: Vec<_> = std::iter::from_fn(|| t.pop_due(t0 + Duration::from_secs(1)))
            .map(|(_, v)| v)
            .collect();
        assert_eq!(order, ["a", "b1", "b2", "c"]);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn cancelled_never_fire_and_stale_keys_are_rejected() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        let a = t.insert(t0, 1);
        let b = t.insert(t0, 2);
        assert_eq!(t.cancel(a), Some(1));
        assert_eq!(t.cancel(a), None);
        // The slot is reused; the old key must not cancel the new timer.
        let c = t.insert(t0, 3);
        assert_eq!(c.index, a.index);
        assert_eq!(t.cancel(a), None);
        let fired: Vec<_> = std::iter::from_fn(|| t.pop_due(t0))
            .map(|(_, v)| v)
            .collect();
        assert_eq!(fired, [2, 3]);
        assert_eq!(t.cancel(b), None);
    }

    #[test]
    fn set_cancel_cycles_keep_the_store_bounded() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        let keep = t.insert(t0 + Duration::from_secs(3600), 0u32);
        for i in 0..100_000u32 {
            let k = t.insert(t0 + Duration::from_secs(60 + u64::from(i % 7)), i);
            assert_eq!(t.cancel(k), Some(i));
            assert!(t.heap_len() <= 130, "heap grew to {}", t.heap_len());
        }
        assert_eq!(t.len(), 1);
        assert!(t.slots.capacity() < 16);
        assert_eq!(t.deadline(keep), Some(t0 + Duration::from_secs(3600)));
    }
}

//! The events a connection hands to its owner, and the arena that holds the
//! bytes of small messages until they are polled.
//!
//! A message reaches the application by one of three routes, chosen when it
//! is delivered and told apart by [`MsgData`]:
//!
//! - in-order unfragmented messages are copied once, into the inbox's arena
//!   (`poll_event_ref` then lends them out: no allocation per message);
//! - reassembled or reordered messages already have a vector of their own,
//!   which is moved;
//! - while a packet is handled in place (the reactor's path,
//!   [`Connection::handle_packet_in_place`](super::Connection::handle_packet_in_place)),
//!   messages lying whole in it are not copied at all: the event records
//!   where they are in the caller's receive buffer.

use super::reassembly::vec_charge;
use super::stats::PerGuarantee;
use crate::rudp::{Event, EventRef, Guarantee, RudpCloseReason};

/// Arena capacity kept once every message in it was polled, whatever it
/// held; a larger arena is kept only while it was used to a quarter at
/// least (an idle connection keeps at most this much, or four times the
/// bytes of its last burst; counted as held either way).
const ARENA_KEEP: usize = 64 << 10;
/// Event queue capacity kept once every event was polled.
const EVENTS_KEEP: usize = 256;
/// Bytes an event takes in the queue.
const EVENT_SIZE: usize = core::mem::size_of::<PendingEvent>();
/// The queue's first allocation (`Vec`'s smallest, made when the
/// connection reports `Connected`): part of the connection's fixed cost,
/// not charged to the receive budgets.
const EVENTS_BASE: usize = 4;

/// What an event queue of capacity `cap` is charged.
#[inline]
fn events_charge(cap: usize) -> usize {
    if cap <= EVENTS_BASE {
        0
    } else {
        vec_charge(cap * EVENT_SIZE)
    }
}

/// Data handed to the application, waiting in the event queue.
#[derive(Debug)]
enum MsgData {
    Arena {
        start: usize,
        len: usize,
    },
    Owned(Vec<u8>),
    /// Still in the caller's receive buffer, at `offset` (a packet handled
    /// with [`Connection::handle_packet_in_place`](super::Connection::handle_packet_in_place)):
    /// not copied at all.
    InPlace {
        offset: usize,
        len: usize,
    },
}

/// A packet being handled where it lies in the caller's receive buffer:
/// the address and length of its bytes, and their offset in that buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InPlace {
    pub(crate) base: usize,
    pub(crate) len: usize,
    pub(crate) origin: usize,
}

/// A message's bytes as [`Connection::poll_event_raw`](super::Connection::poll_event_raw)
/// gives them.
#[derive(Debug)]
pub(crate) enum MsgRef<'a> {
    /// Here.
    Bytes(&'a [u8]),
    /// In the caller's receive buffer, `buf[offset..offset + len]`.
    InPlace { offset: usize, len: usize },
}

/// [`EventRef`] with message bytes possibly left in
/// the caller's buffer.
#[derive(Debug)]
pub(crate) enum RawEvent<'a> {
    Connected,
    Message {
        data: MsgRef<'a>,
        guarantee: Guarantee,
    },
    Writable,
    Closed(RudpCloseReason),
}

#[derive(Debug)]
enum PendingEvent {
    Connected,
    Message { guarantee: Guarantee, data: MsgData },
    Writable,
    Closed(RudpCloseReason),
}

/// A first-in first-out queue of events that is drained far more often
/// than it wraps: a vector read from `head` on, emptied (O(1) but for
/// the messages' own vectors) when the last event is taken, and
/// compacted in place when full with at least half of it taken. Unlike
/// `VecDeque`, pushing never leaves the caller (the hot path: one per
/// message) and capacities grow by doubling from 4 all the same.
#[derive(Debug, Default)]
struct EventQueue {
    buf: Vec<PendingEvent>,
    /// Index of the oldest event; those before it were taken.
    head: usize,
}

impl EventQueue {
    #[inline]
    fn is_empty(&self) -> bool {
        self.head >= self.buf.len()
    }

    /// Slots in use, taken ones included (what fills the capacity).
    #[inline]
    fn used(&self) -> usize {
        self.buf.len()
    }

    #[inline]
    fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Drops the slots already taken.
    fn compact(&mut self) {
        if self.head > 0 {
            self.buf.drain(..self.head.min(self.buf.len()));
            self.head = 0;
        }
    }

    /// Makes sure `n` more events fit without growing, compacting first if
    /// half the slots or more were taken.
    #[inline(always)]
    fn reserve(&mut self, n: usize) {
        if self.buf.capacity() - self.buf.len() < n {
            self.reserve_slow(n);
        }
    }

    #[cold]
    fn reserve_slow(&mut self, n: usize) {
        if self.head * 2 >= self.buf.len() {
            self.compact();
        }
        self.buf.reserve(n);
    }

    #[inline(always)]
    fn push(&mut self, ev: PendingEvent) {
        self.reserve(1);
        self.buf.push(ev);
    }

    #[inline]
    fn pop_front(&mut self) -> Option<PendingEvent> {
        let slot = self.buf.get_mut(self.head)?;
        let ev = core::mem::replace(slot, PendingEvent::Writable);
        self.head += 1;
        if self.head == self.buf.len() {
            self.buf.clear();
            self.head = 0;
        }
        Some(ev)
    }

    fn retain(&mut self, f: impl FnMut(&PendingEvent) -> bool) {
        self.compact();
        self.buf.retain(f);
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut PendingEvent> {
        self.buf.iter_mut().skip(self.head)
    }

    fn shrink_to(&mut self, cap: usize) {
        self.compact();
        self.buf.shrink_to(cap);
    }
}

/// Events waiting for `poll_event`, with an arena for in-order small messages.
///
/// The arena is only cleared when no queued event points into it.
///
/// What the inbox holds counts toward the connection's receive budgets:
/// [`mem_held`](Self::mem_held) (the arena's capacity, messages with a
/// vector of their own, the last one lent out) and
/// [`in_place_bytes`](Self::in_place_bytes) (messages left in the
/// caller's buffer: not our memory, but not yet taken either).
#[derive(Debug, Default)]
pub(super) struct Inbox {
    events: EventQueue,
    arena: Vec<u8>,
    /// What the owned messages waiting in `events` are charged.
    owned: usize,
    /// Bytes of the in-place messages waiting in `events`.
    in_place: usize,
    delivered: PerGuarantee,
    /// Set while a packet is handled in place: messages that lie whole in
    /// it are queued by position instead of copied.
    place: Option<InPlace>,
    /// The message most recently returned by `pop_raw`, kept alive for the
    /// borrow.
    last: Option<Vec<u8>>,
}

impl Inbox {
    /// Events are waiting.
    pub(super) fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Memory held: the arena, owned messages waiting, and the message
    /// last lent out by `pop_raw`.
    #[inline]
    pub(super) fn mem_held(&self) -> usize {
        vec_charge(self.arena.capacity())
            + events_charge(self.events.capacity())
            + self.owned
            + self.last.as_ref().map_or(0, |v| vec_charge(v.capacity()))
    }

    /// How much the queue grows by its next doubling if `n` more events,
    /// and the two queued without asking for room (`Writable`, `Closed`),
    /// would not fit in it, else 0 (a message's record costs memory of
    /// ours even when its bytes are not).
    #[inline]
    pub(super) fn event_headroom(&self, n: usize) -> usize {
        let cap = self.events.capacity();
        if self.events.used() + n + 2 <= cap {
            0
        } else {
            // The queue doubles (at least 4).
            events_charge((2 * cap).max(EVENTS_BASE)) - events_charge(cap)
        }
    }

    /// Bytes of messages waiting in the caller's receive buffer.
    #[inline]
    pub(super) fn in_place_bytes(&self) -> usize {
        self.in_place
    }

    /// Where `data` is in the caller's receive buffer if it lies in the
    /// packet being handled in place (it is then queued by position, not
    /// copied).
    #[inline(always)]
    pub(super) fn place_of(&self, data: &[u8]) -> Option<usize> {
        let p = self.place?;
        let at = (data.as_ptr() as usize).wrapping_sub(p.base);
        (at <= p.len && data.len() <= p.len - at).then_some(p.origin + at)
    }

    /// The arena's capacity after taking `n` more bytes.
    #[inline]
    fn arena_target(&self, n: usize) -> Option<usize> {
        let len = if self.events.is_empty() {
            0
        } else {
            self.arena.len()
        };
        let cap = self.arena.capacity();
        (len + n > cap).then(|| (2 * cap).max(len + n).max(256))
    }

    /// How much copying `n` bytes into the arena grows what is held.
    #[inline]
    pub(super) fn arena_growth(&self, n: usize) -> usize {
        self.arena_target(n)
            .map_or(0, |t| vec_charge(t) - vec_charge(self.arena.capacity()))
    }

    /// Frees an arena larger than [`ARENA_KEEP`] once nothing refers to
    /// it, and shrinks the event queue to [`EVENTS_KEEP`].
    fn trim_arena(&mut self) {
        // Kept while it is used to a quarter at least: a steady flow of
        // bursts keeps its arena, one large burst gives it back.
        let used = self.arena.len();
        self.arena.clear();
        if self.arena.capacity() > ARENA_KEEP.max(4 * used) {
            self.arena = Vec::new();
        }
        if self.events.is_empty() && self.events.capacity() > EVENTS_KEEP {
            self.events.shrink_to(EVENTS_KEEP);
        }
    }

    /// With no event waiting, frees the arena and the message last lent
    /// out (the endpoint wants the room).
    pub(super) fn release_idle(&mut self) {
        if self.events.is_empty() {
            self.arena = Vec::new();
            self.events = EventQueue::default();
            self.last = None;
        }
    }

    /// Drops every message waiting (the connection is being closed for
    /// want of room), keeping the other events.
    pub(super) fn discard_messages(&mut self) {
        self.events
            .retain(|e| !matches!(e, PendingEvent::Message { .. }));
        self.events.shrink_to(0);
        self.arena = Vec::new();
        self.last = None;
        self.owned = 0;
        self.in_place = 0;
    }

    /// Messages handed to the application so far.
    pub(super) fn delivered(&self) -> PerGuarantee {
        self.delivered
    }

    /// Reuses the arena from its start when no event refers to it.
    pub(super) fn recycle(&mut self) {
        if self.events.is_empty() && !self.arena.is_empty() {
            self.trim_arena();
        }
    }

    /// Sets (or, with `None`, ends) the packet being handled in place.
    pub(super) fn set_place(&mut self, place: Option<InPlace>) {
        self.place = place;
    }

    /// Queues a message, keeping room in the queue for the two events
    /// queued without asking for room (`Writable`, `Closed`): the queue
    /// grows here, where the caller checked the budget for it (see
    /// `event_headroom`), never when the connection closes.
    #[inline(always)]
    fn push_message(&mut self, guarantee: Guarantee, data: MsgData) {
        self.events.push(PendingEvent::Message { guarantee, data });
        self.events.reserve(2);
    }

    /// Queues `Connected`.
    pub(super) fn push_connected(&mut self) {
        self.events.push(PendingEvent::Connected);
    }

    /// Queues `Writable`.
    pub(super) fn push_writable(&mut self) {
        self.events.push(PendingEvent::Writable);
    }

    /// Forgets a queued `Writable` (the connection takes no more sends).
    pub(super) fn drop_writable(&mut self) {
        self.events.retain(|e| !matches!(e, PendingEvent::Writable));
    }

    /// Queues `Closed`.
    pub(super) fn push_closed(&mut self, reason: RudpCloseReason) {
        self.events.push(PendingEvent::Closed(reason));
    }

    /// Queues a message from borrowed bytes: by position when they lie in
    /// the packet handled in place (`at`, from [`place_of`](Self::place_of)),
    /// else copied into the arena.
    #[inline(always)]
    pub(super) fn deliver_slice(&mut self, g: Guarantee, data: &[u8], at: Option<usize>) {
        if let Some(offset) = at {
            self.in_place += data.len();
            self.delivered.add(g);
            self.push_message(
                g,
                MsgData::InPlace {
                    offset,
                    len: data.len(),
                },
            );
            return;
        }
        // Grown exactly as `arena_growth` said (the budget was checked
        // with it).
        if let Some(t) = self.arena_target(data.len()) {
            if self.events.is_empty() {
                self.arena.clear();
            }
            self.arena.reserve_exact(t - self.arena.len());
        } else if self.events.is_empty() {
            self.arena.clear();
        }
        let start = self.arena.len();
        self.arena.extend_from_slice(data);
        self.delivered.add(g);
        self.push_message(
            g,
            MsgData::Arena {
                start,
                len: data.len(),
            },
        );
    }

    /// Queues a message that has a vector of its own.
    pub(super) fn deliver_vec(&mut self, g: Guarantee, data: Vec<u8>) {
        self.owned += vec_charge(data.capacity());
        self.delivered.add(g);
        self.push_message(g, MsgData::Owned(data));
    }

    /// The next event, with message bytes copied out (or moved, for messages
    /// that have a vector of their own).
    #[inline]
    pub(super) fn pop_event(&mut self) -> Option<Event> {
        let Some(ev) = self.events.pop_front() else {
            self.trim_arena();
            return None;
        };
        Some(match ev {
            PendingEvent::Connected => Event::Connected,
            PendingEvent::Writable => Event::Writable,
            PendingEvent::Closed(r) => Event::Closed(r),
            PendingEvent::Message { guarantee, data } => {
                let data = match data {
                    MsgData::Owned(v) => {
                        self.owned -= vec_charge(v.capacity());
                        v
                    }
                    MsgData::Arena { start, len } => {
                        self.arena.get(start..start + len).unwrap_or(&[]).to_vec()
                    }
                    MsgData::InPlace { len, .. } => {
                        self.in_place -= len;
                        // Only the reactor handles packets in place, and it
                        // polls with `poll_event_raw`.
                        debug_assert!(false, "in-place message polled by copy");
                        log::error!("rudp: a {len} B message left in a receive buffer was lost");
                        Vec::new()
                    }
                };
                Event::Message { data, guarantee }
            }
        })
    }

    /// The next event, borrowing message bytes from the inbox.
    #[inline]
    pub(super) fn pop_ref(&mut self) -> Option<EventRef<'_>> {
        Some(match self.pop_raw()? {
            RawEvent::Connected => EventRef::Connected,
            RawEvent::Writable => EventRef::Writable,
            RawEvent::Closed(r) => EventRef::Closed(r),
            RawEvent::Message { data, guarantee } => EventRef::Message {
                data: match data {
                    MsgRef::Bytes(d) => d,
                    MsgRef::InPlace { len, .. } => {
                        // As in `pop_event`: only the reactor's path makes these.
                        debug_assert!(false, "in-place message polled by reference");
                        log::error!("rudp: a {len} B message left in a receive buffer was lost");
                        &[]
                    }
                },
                guarantee,
            },
        })
    }

    /// The next event, borrowing message bytes from the inbox, or leaving
    /// them in the caller's buffer ([`MsgRef::InPlace`]).
    #[inline]
    pub(super) fn pop_raw(&mut self) -> Option<RawEvent<'_>> {
        let Some(ev) = self.events.pop_front() else {
            self.drained();
            return None;
        };
        Some(match ev {
            PendingEvent::Message { guarantee, data } => {
                let data = match data {
                    MsgData::Arena { start, len } => {
                        MsgRef::Bytes(self.arena.get(start..start + len).unwrap_or(&[]))
                    }
                    MsgData::Owned(v) => {
                        self.owned -= vec_charge(v.capacity());
                        MsgRef::Bytes(self.last.insert(v))
                    }
                    MsgData::InPlace { offset, len } => {
                        self.in_place -= len;
                        MsgRef::InPlace { offset, len }
                    }
                };
                RawEvent::Message { data, guarantee }
            }
            PendingEvent::Connected => RawEvent::Connected,
            PendingEvent::Writable => RawEvent::Writable,
            PendingEvent::Closed(r) => RawEvent::Closed(r),
        })
    }

    /// Every event was taken: the arena starts over, and the message last
    /// lent out is freed.
    #[cold]
    fn drained(&mut self) {
        self.trim_arena();
        self.last = None;
    }

    /// Copies every queued in-place message out of `buf` (the caller's
    /// receive buffer, still holding the packets) into the arena.
    pub(super) fn materialize(&mut self, buf: &[u8]) {
        let Inbox {
            events,
            arena,
            in_place,
            ..
        } = self;
        for ev in events.iter_mut() {
            if let PendingEvent::Message { data, .. } = ev {
                if let MsgData::InPlace { offset, len } = *data {
                    *in_place -= len;
                    let bytes = buf.get(offset..offset + len).unwrap_or(&[]);
                    let start = arena.len();
                    arena.extend_from_slice(bytes);
                    *data = MsgData::Arena {
                        start,
                        len: bytes.len(),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: usize) -> PendingEvent {
        PendingEvent::Message {
            guarantee: Guarantee::Delivery,
            data: MsgData::Arena { start: n, len: 0 },
        }
    }

    fn number(ev: PendingEvent) -> usize {
        match ev {
            PendingEvent::Message {
                data: MsgData::Arena { start, .. },
                ..
            } => start,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// First in, first out, whatever the mix of pushes and pops, and the
    /// capacity stays within twice the most events ever waiting (rounded
    /// up to a power of two): a queue never drained completely still
    /// compacts instead of growing.
    #[test]
    fn the_event_queue_is_fifo_and_bounded() {
        let mut q = EventQueue::default();
        let (mut pushed, mut popped, mut most) = (0, 0, 0);
        let mut rng = crate::rudp::rng::Rng::new(7);
        for _ in 0..100_000 {
            if rng.next_u64() % 2 == 0 {
                q.push(msg(pushed));
                pushed += 1;
            } else if let Some(ev) = q.pop_front() {
                assert_eq!(number(ev), popped);
                popped += 1;
            } else {
                assert_eq!(pushed, popped);
            }
            most = most.max(pushed - popped);
            assert_eq!(q.is_empty(), pushed == popped);
            assert!(q.capacity() <= (2 * most + 2).next_power_of_two().max(4));
        }
        while let Some(ev) = q.pop_front() {
            assert_eq!(number(ev), popped);
            popped += 1;
        }
        assert_eq!(popped, pushed);
    }

    #[test]
    fn retain_and_iteration_see_only_waiting_events() {
        let mut q = EventQueue::default();
        for n in 0..5 {
            q.push(msg(n));
        }
        q.push(PendingEvent::Writable);
        assert_eq!(number(q.pop_front().expect("one")), 0);
        assert_eq!(q.iter_mut().count(), 5);
        q.retain(|e| !matches!(e, PendingEvent::Writable));
        let left: Vec<_> = core::iter::from_fn(|| q.pop_front()).map(number).collect();
        assert_eq!(left, [1, 2, 3, 4]);
    }
}

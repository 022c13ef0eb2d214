//! The receive side: duplicate detection, acknowledgements, and delivery of
//! messages in their guarantee's order.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::events::Inbox;
use super::reassembly::{
    vec_charge, FragInsert, Reassembly, UnrelPartial, ALLOC_OVERHEAD, REASSEMBLY_OVERHEAD,
};
use super::stats::ConnectionStats;
use crate::rudp::config::RudpConfig;
use crate::rudp::seq::{seq_dist, seq_ge, seq_gt, seq_le, seq_lt};
use crate::rudp::wire::{AckRepr, ChunkRepr, Chunks, FragInfo, SetInfo};
use crate::rudp::Guarantee;

/// Packets remembered by the receiver for duplicate detection and acks.
///
/// A packet arriving further than this behind the largest received is
/// dropped as stale, so reordering deeper than 128 packets (high-rate flows
/// with hundreds of packets in flight and a few milliseconds of
/// reordering) costs a retransmission. Its Delivery and Order chunks have
/// deduplication of their own and could be accepted; only None chunks need
/// the packet window.
const PN_WINDOW: u32 = 128;

/// Ack snapshots kept at most (see `RecvState::ack_snapshots`).
const MAX_ACK_SNAPSHOTS: usize = 16;

/// A Delivery message completed by a fragment: its bytes, and its set's
/// membership if it belongs to one.
type Completed = (Vec<u8>, Option<SetInfo>);

/// Received packet numbers: `largest` and a bitmap of the 127 before it.
#[derive(Debug, Default, Clone)]
struct PnWindow {
    largest: Option<u32>,
    /// Bit `i` set: packet `largest - i` received.
    bits: u128,
}

/// Whether a packet number was seen before.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PnStatus {
    New,
    Duplicate,
    /// Older than the window: cannot tell.
    TooOld,
}

impl PnWindow {
    fn check(&self, pn: u32) -> PnStatus {
        let Some(l) = self.largest else {
            return PnStatus::New;
        };
        if seq_gt(pn, l) {
            return PnStatus::New;
        }
        let k = seq_dist(pn, l);
        if k >= PN_WINDOW {
            PnStatus::TooOld
        } else if (self.bits >> k) & 1 == 1 {
            PnStatus::Duplicate
        } else {
            PnStatus::New
        }
    }

    /// Records `pn`; returns true when it became the new largest.
    fn insert(&mut self, pn: u32) -> bool {
        match self.largest {
            None => {
                self.largest = Some(pn);
                self.bits = 1;
                true
            }
            Some(l) if seq_gt(pn, l) => {
                let shift = seq_dist(l, pn);
                // The next one (the common case) shifts by a constant.
                self.bits = if shift == 1 {
                    self.bits << 1
                } else if shift >= PN_WINDOW {
                    0
                } else {
                    self.bits << shift
                };
                self.bits |= 1;
                self.largest = Some(pn);
                true
            }
            Some(l) => {
                let k = seq_dist(pn, l);
                if k < PN_WINDOW {
                    self.bits |= 1u128 << k;
                }
                false
            }
        }
    }
}

/// Charged per message in the Delivery window: its entry's share of the
/// window's map nodes (a key and a [`Slot`], in nodes at least half full).
pub(super) const ENTRY_OVERHEAD: usize = 128;

/// A Delivery message in the receive window (a message with nothing
/// received has no entry).
#[derive(Debug)]
enum Slot {
    /// One fragment received: kept as it came (no reassembly yet), so a
    /// lone far fragment costs its bytes and one entry.
    Frag {
        count: u16,
        index: u16,
        set: Option<SetInfo>,
        data: Box<[u8]>,
    },
    /// Some fragments received.
    Partial(Box<Reassembly>),
    /// Received whole, not yet delivered (waiting for an earlier message, or
    /// for its set to open).
    Complete { data: Vec<u8>, set: Option<SetInfo> },
    /// Delivered ahead of the front as a member of an open set.
    Delivered,
}

impl Slot {
    /// What the slot holds, its entry included.
    fn charge(&self) -> usize {
        ENTRY_OVERHEAD
            + match self {
                Slot::Frag { data, .. } => vec_charge(data.len()),
                Slot::Partial(r) => r.held(),
                Slot::Complete { data, .. } => vec_charge(data.capacity()),
                Slot::Delivered => 0,
            }
    }
}

/// What became of a reliable chunk.
#[derive(Debug)]
pub(super) enum ChunkOutcome {
    Accepted,
    Duplicate,
    /// Could not be buffered: the packet must not be acknowledged.
    Rejected,
}

/// Receive-budget events since the owner last looked
/// ([`RecvState::take_budget_events`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BudgetEvents {
    /// Unreliable messages (or partial reassemblies) dropped for a budget.
    pub(crate) drops: u64,
    /// Reliable chunks refused (left unacknowledged) for a budget.
    pub(crate) refusals: u64,
    /// The most bytes a chunk needed that the connection's own budget had
    /// room for but the allowance (the endpoint's or the source's share)
    /// had not: the endpoint may reclaim that much elsewhere.
    pub(crate) starved: usize,
}

/// What the receiver accepts: its configuration and the fragment size
/// negotiated in the handshake.
#[derive(Debug, Clone, Copy)]
pub(super) struct RecvLimits {
    /// Fragment payload size: every fragment of a message but the last
    /// carries exactly this.
    frag_size: usize,
    /// Largest message (`RudpConfig::max_message_len`).
    max_message: usize,
    /// Delivery messages accepted past the cumulative ack
    /// (`RudpConfig::recv_window`).
    window: u32,
    /// Bytes held at most (`RudpConfig::max_recv_buffer_bytes`).
    budget: usize,
    /// Room of `budget` that only the message at the front of the window
    /// may use, so that it always fits whatever waits behind it (else a
    /// window full of later messages would wait forever for it).
    reserve: usize,
    /// Unreliable messages reassembled at once
    /// (`RudpConfig::max_unreliable_partials`).
    max_partials: usize,
    /// The `max_ack_delay` announced to the peer: the largest ack delay
    /// reported.
    max_ack_delay: Duration,
}

impl RecvLimits {
    /// The limits of `cfg` (sanitized), with fragments of `frag_size` bytes.
    pub(super) fn new(cfg: &RudpConfig, frag_size: usize) -> Self {
        let max_message = cfg.max_message_len;
        RecvLimits {
            frag_size,
            max_message,
            window: cfg.recv_window,
            budget: cfg.max_recv_buffer_bytes,
            // The front message's reassembly: its capacity (less than one
            // fragment past its length) and overheads.
            reserve: max_message
                + frag_size
                + REASSEMBLY_OVERHEAD
                + ENTRY_OVERHEAD
                + ALLOC_OVERHEAD,
            max_partials: cfg.max_unreliable_partials,
            max_ack_delay: Duration::from_millis(
                cfg.max_ack_delay.as_millis().min(u128::from(u16::MAX)) as u64,
            ),
        }
    }
}

/// Receive side of a connection: which packets arrived (for duplicate
/// detection and acks), when to ack, and the Delivery window in which
/// messages wait for the ones before them.
#[derive(Debug)]
pub(super) struct RecvState {
    limits: RecvLimits,
    /// Every numbered packet processed.
    seen: PnWindow,
    /// The packets acknowledged: those `seen` whose reliable chunks could
    /// all be buffered.
    ackable: PnWindow,
    largest_time: Option<Instant>,
    eliciting_unacked: u32,
    ack_pending: bool,
    ack_immediate: bool,
    /// Next Delivery message to hand out: every one before it was delivered.
    next_deliver: u32,
    /// `next_deliver`, not wrapping: the key of its entry in `window`.
    next_key: u64,
    /// The Delivery messages past `next_deliver` that something arrived
    /// for, by key (`next_key` + distance from `next_deliver`): sparse, so
    /// a far message costs one entry, not the slots before it.
    window: BTreeMap<u64, Slot>,
    /// End (exclusive) of the message set being delivered, if one is open.
    set_end: Option<u32>,
    /// Bytes held in `window` and `partials` (see [`Slot::charge`] and
    /// [`Reassembly::held`]).
    held: usize,
    /// Of `held`, what the unreliable partial reassemblies hold.
    unrel_held: usize,
    /// Most bytes the connection may hold (here and in the inbox, messages
    /// handled in place excepted): its share of the endpoint's and its
    /// source's receive budgets, set by the endpoint before each packet.
    allowance: usize,
    /// Growth the fast path (a whole message delivered at once) may still
    /// take without the full budget check: the room a full check found,
    /// less what fast-path deliveries took since. It stays valid across
    /// packets while what is held only shrinks or grows through the fast
    /// path and the allowance does not shrink; it is zeroed by a smaller
    /// allowance, by every other kind of chunk, and when messages handled
    /// in place are copied into the inbox (see [`RecvState::forget_credit`]).
    credit: usize,
    /// Budget events not yet taken by the endpoint.
    budget_events: BudgetEvents,
    order_latest: Option<u32>,
    partials: VecDeque<UnrelPartial>,
    /// Lowest ackable packet number not yet named by any ack sent.
    unreported: Option<u32>,
    /// Acks taken before the bitmap would have dropped packets never
    /// reported (more than 64 received between two acks sent), sent first.
    ack_snapshots: VecDeque<AckRepr>,
}

impl RecvState {
    /// Expecting Delivery message `next_deliver` first.
    pub(super) fn new(next_deliver: u32, limits: RecvLimits) -> Self {
        RecvState {
            limits,
            seen: PnWindow::default(),
            ackable: PnWindow::default(),
            largest_time: None,
            eliciting_unacked: 0,
            ack_pending: false,
            ack_immediate: false,
            next_deliver,
            next_key: 0,
            window: BTreeMap::new(),
            set_end: None,
            held: 0,
            unrel_held: 0,
            allowance: usize::MAX,
            credit: 0,
            budget_events: BudgetEvents::default(),
            order_latest: None,
            partials: VecDeque::new(),
            unreported: None,
            ack_snapshots: VecDeque::new(),
        }
    }

    /// Drops every buffered message, partial reassembly and ack snapshot,
    /// releasing their memory (the connection closed). The packet and
    /// message numbering is kept.
    pub(super) fn clear(&mut self) {
        self.window = BTreeMap::new();
        self.partials = VecDeque::new();
        self.ack_snapshots = VecDeque::new();
        self.held = 0;
        self.unrel_held = 0;
    }

    /// Bytes held by the receive window and the partial reassemblies.
    pub(super) fn held(&self) -> usize {
        self.held
    }

    /// Of [`held`](Self::held), what unreliable partial reassemblies hold.
    pub(super) fn unreliable_held(&self) -> usize {
        self.unrel_held
    }

    /// Sets the most bytes the connection may hold (see `allowance`). The
    /// fast path's credit survives a larger or equal allowance: it was
    /// room under the old one.
    #[inline]
    pub(super) fn set_allowance(&mut self, bytes: usize) {
        if bytes < self.allowance {
            self.credit = 0;
        }
        self.allowance = bytes;
    }

    /// Whether budget events happened since the last
    /// [`take_budget_events`](Self::take_budget_events).
    #[inline]
    pub(super) fn has_budget_events(&self) -> bool {
        self.budget_events != BudgetEvents::default()
    }

    /// The budget events since the last call.
    #[inline]
    pub(super) fn take_budget_events(&mut self) -> Option<BudgetEvents> {
        let e = self.budget_events;
        if e == BudgetEvents::default() {
            return None;
        }
        self.budget_events = BudgetEvents::default();
        Some(e)
    }

    /// Drops every unreliable partial reassembly (the endpoint needs the
    /// room); returns how many.
    pub(super) fn drop_unreliable_partials(&mut self, stats: &mut ConnectionStats) -> usize {
        let n = self.partials.len();
        self.partials = VecDeque::new();
        self.held -= self.unrel_held;
        self.unrel_held = 0;
        stats.unreliable_dropped += n as u64;
        stats.recv_budget_drops += n as u64;
        self.budget_events.drops += n as u64;
        n
    }

    /// Whether packet `pn` was processed before.
    pub(super) fn check(&self, pn: u32) -> PnStatus {
        self.seen.check(pn)
    }

    /// Records packet `pn` as processed; returns whether it came in order
    /// (right after the largest so far, or the first).
    pub(super) fn record(&mut self, pn: u32) -> bool {
        let in_order = self.seen.largest.is_none_or(|l| pn == l.wrapping_add(1));
        self.seen.insert(pn);
        in_order
    }

    /// A duplicate packet arrived: our ack may have been lost, repeat it
    /// soon.
    pub(super) fn repeat_ack(&mut self) {
        self.ack_pending = true;
        self.ack_immediate = true;
    }

    /// An ack-eliciting packet was processed. Returns true when the ack is
    /// due at once (a packet out of order, or `threshold` unacknowledged
    /// ones), false when it may be delayed.
    pub(super) fn on_eliciting(&mut self, in_order: bool, threshold: u32) -> bool {
        self.ack_pending = true;
        self.eliciting_unacked += 1;
        if !in_order || self.eliciting_unacked >= threshold {
            self.ack_immediate = true;
            return true;
        }
        false
    }

    /// The ack delay expired: a pending ack is due.
    pub(super) fn on_ack_timer(&mut self) {
        if self.ack_pending {
            self.ack_immediate = true;
        }
    }

    /// Something arrived since the last ack sent.
    pub(super) fn ack_pending(&self) -> bool {
        self.ack_pending
    }

    /// An ack is pending and may not wait for a packet to ride on.
    pub(super) fn ack_due(&self) -> bool {
        self.ack_pending && self.ack_immediate
    }

    /// The oldest ack snapshot, to be sent before the current ack.
    pub(super) fn take_ack_snapshot(&mut self) -> Option<AckRepr> {
        self.ack_snapshots.pop_front()
    }

    /// Records an ackable packet. When it would push a packet that no ack
    /// has named yet out of the 64-packet bitmap, the ack as it stands is
    /// kept for sending first: every packet received is named by some ack,
    /// however many arrive between two calls to `poll_transmit` (else the
    /// sender, not hearing of them, would resend them).
    #[inline]
    pub(super) fn insert_ackable(&mut self, pn: u32, now: Instant) {
        if let (Some(u), Some(l)) = (self.unreported, self.ackable.largest) {
            if seq_gt(pn, l) && seq_dist(u, pn) > 64 {
                if let Some(a) = self.ack_repr(now) {
                    if self.ack_snapshots.len() >= MAX_ACK_SNAPSHOTS {
                        self.ack_snapshots.pop_front();
                    }
                    self.ack_snapshots.push_back(a);
                }
                self.unreported = None;
            }
        }
        if self.ackable.insert(pn) {
            self.largest_time = Some(now);
        }
        match (self.unreported, self.ackable.largest) {
            (None, _) => self.unreported = Some(pn),
            (Some(u), Some(l)) if seq_lt(pn, u) && seq_dist(pn, l) <= 64 => {
                self.unreported = Some(pn);
            }
            _ => {}
        }
    }

    /// The ack as it stands, once anything was received.
    pub(super) fn ack_repr(&self, now: Instant) -> Option<AckRepr> {
        let largest = self.ackable.largest?;
        let delay = self
            .largest_time
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        Some(AckRepr {
            largest,
            bitmap: (self.ackable.bits >> 1) as u64,
            // Never more than announced: an ack sent late (a timer that
            // fired late, a host that was busy) reports the announced
            // maximum (docs/rudp.md §5).
            delay: AckRepr::encode_delay(delay.min(self.limits.max_ack_delay)),
            cum_seq: self.next_deliver,
        })
    }

    /// An ack carrying [`ack_repr`](Self::ack_repr) was sent.
    pub(super) fn on_ack_sent(&mut self) {
        self.ack_pending = false;
        self.ack_immediate = false;
        self.eliciting_unacked = 0;
        self.unreported = None;
    }

    /// Checks every chunk of a packet against the limits, without changing
    /// anything.
    #[inline]
    pub(super) fn validate_chunks(&self, chunks: &Chunks<'_>) -> Result<(), &'static str> {
        for c in chunks.iter() {
            self.validate_chunk(&c)?;
        }
        Ok(())
    }

    #[inline]
    pub(super) fn validate_chunk(&self, c: &ChunkRepr<'_>) -> Result<(), &'static str> {
        let RecvLimits {
            frag_size,
            max_message: max_msg,
            window: recv_window,
            ..
        } = self.limits;
        match c.frag {
            None => {
                if c.payload.len() > max_msg {
                    return Err("message larger than max_message_len");
                }
            }
            Some(f) => {
                let before = (usize::from(f.count) - 1) * frag_size;
                if f.index + 1 < f.count {
                    if c.payload.len() != frag_size {
                        return Err("fragment size differs from the negotiated one");
                    }
                    if before >= max_msg {
                        return Err("fragmented message larger than max_message_len");
                    }
                } else if c.payload.is_empty()
                    || c.payload.len() > frag_size
                    || before + c.payload.len() > max_msg
                {
                    return Err("bad last fragment size");
                }
            }
        }
        if c.guarantee == Guarantee::Delivery
            && seq_ge(c.seq, self.next_deliver)
            && seq_dist(self.next_deliver, c.seq) >= recv_window
        {
            return Err("message beyond the receive window");
        }
        Ok(())
    }

    // -- budget ------------------------------------------------------------------

    /// What must stay free beyond a chunk's own growth: the front's
    /// reserve unless `front` (so that the message the others wait for
    /// always fits, whatever waits behind it here or, for the allowance,
    /// elsewhere), and the growth of the inbox's event queue if `pending`
    /// more events would not fit in it (messages waiting in the window are
    /// queued there without a check when the message before them arrives:
    /// one doubling of the queue must fit, and the window entries they
    /// free pay for the next ones).
    #[inline]
    fn keep(&self, inbox: &Inbox, front: bool, pending: usize) -> usize {
        let reserve = if front { 0 } else { self.limits.reserve };
        reserve + inbox.event_headroom(pending)
    }

    /// Room left, in bytes: under the connection's own budget (everything
    /// it holds, messages handled in place included), and under its
    /// allowance (memory only), less [`keep`](Self::keep) with the window's
    /// messages and one more pending.
    #[inline]
    fn rooms(&self, inbox: &Inbox, front: bool) -> (usize, usize) {
        let mem = self.held + inbox.mem_held();
        let total = mem + inbox.in_place_bytes();
        let keep = self.keep(inbox, front, self.window.len() + 1);
        (
            self.limits.budget.saturating_sub(keep + total),
            self.allowance.saturating_sub(keep + mem),
        )
    }

    /// Makes room for `total` more bytes under the connection's budget, of
    /// which `mem` under its allowance, keeping [`keep`](Self::keep) free
    /// with `pending` more messages, by dropping unreliable partial
    /// reassemblies (oldest first) if need be. False when that is not
    /// enough; a shortfall of the allowance alone is recorded as starving.
    #[inline]
    fn make_room(
        &mut self,
        inbox: &Inbox,
        (front, pending): (bool, usize),
        mem: usize,
        total: usize,
        stats: &mut ConnectionStats,
    ) -> bool {
        let (own, allowed) = self.fits(inbox, (front, pending), mem, total);
        (own && allowed) || self.make_room_slow(inbox, (front, pending), mem, total, stats)
    }

    /// Whether `total` more bytes fit the connection's budget and `mem` its
    /// allowance, keeping [`keep`](Self::keep) free.
    #[inline]
    fn fits(
        &self,
        inbox: &Inbox,
        (front, pending): (bool, usize),
        mem: usize,
        total: usize,
    ) -> (bool, bool) {
        let held = self.held + inbox.mem_held();
        let keep = self.keep(inbox, front, pending);
        (
            held + inbox.in_place_bytes() + keep + total <= self.limits.budget,
            held.saturating_add(keep + mem) <= self.allowance,
        )
    }

    #[cold]
    fn make_room_slow(
        &mut self,
        inbox: &Inbox,
        (front, pending): (bool, usize),
        mem: usize,
        total: usize,
        stats: &mut ConnectionStats,
    ) -> bool {
        loop {
            let (own, allowed) = self.fits(inbox, (front, pending), mem, total);
            if own && allowed {
                return true;
            }
            let Some(old) = self.partials.pop_front() else {
                if own {
                    let keep = self.keep(inbox, front, pending);
                    self.budget_events.starved = self.budget_events.starved.max(mem + keep);
                }
                return false;
            };
            let h = old.r.held();
            self.held -= h;
            self.unrel_held -= h;
            stats.unreliable_dropped += 1;
            stats.recv_budget_drops += 1;
            self.budget_events.drops += 1;
        }
    }

    /// Room for a message queued from borrowed bytes: handled in place it
    /// costs its length under the connection's budget (not under the
    /// allowance: the bytes are the caller's); copied into the inbox's
    /// arena it costs the arena's growth; either way, the event queue's
    /// growth if it has no room for it and the window's messages it may
    /// release.
    #[inline(always)]
    fn room_to_deliver(
        &mut self,
        inbox: &Inbox,
        data: &[u8],
        in_place: bool,
        stats: &mut ConnectionStats,
    ) -> bool {
        let e = inbox.event_headroom(self.window.len() + 1);
        let (mem, total) = if in_place {
            (e, e + data.len())
        } else {
            let g = e + inbox.arena_growth(data.len());
            (g, g)
        };
        // What the last full check left covers it: `total` is charged to
        // both budgets (it is at least `mem`).
        if total <= self.credit {
            self.credit -= total;
            return true;
        }
        // `fits` with nothing to keep (front, no other event pending).
        let held = self.held + inbox.mem_held();
        let all = held + inbox.in_place_bytes() + total;
        if all <= self.limits.budget && held.saturating_add(mem) <= self.allowance {
            // This delivery takes `total`; what is left of both budgets
            // after it covers the next ones of this packet.
            self.credit = (self.limits.budget - all)
                .min(self.allowance.saturating_sub(held.saturating_add(total)));
            return true;
        }
        self.credit = 0;
        self.make_room_slow(inbox, (true, 0), mem, total, stats)
    }

    /// Forgets the fast path's credit: what is held grew outside the fast
    /// path (messages handled in place were copied into the inbox).
    #[inline]
    pub(super) fn forget_credit(&mut self) {
        self.credit = 0;
    }

    fn refuse(&mut self, stats: &mut ConnectionStats) -> ChunkOutcome {
        stats.recv_budget_refusals += 1;
        self.budget_events.refusals += 1;
        ChunkOutcome::Rejected
    }

    // -- Delivery ----------------------------------------------------------------

    /// Takes a Delivery chunk into the window, delivering what it
    /// completes, within the byte budgets (messages waiting in `inbox`
    /// included).
    #[inline]
    pub(super) fn on_reliable(
        &mut self,
        c: &ChunkRepr<'_>,
        inbox: &mut Inbox,
        stats: &mut ConnectionStats,
    ) -> ChunkOutcome {
        let seq = c.seq;
        if seq_lt(seq, self.next_deliver) {
            stats.duplicate_chunks += 1;
            return ChunkOutcome::Duplicate;
        }
        let off = u64::from(seq_dist(self.next_deliver, seq));
        let key = self.next_key + off;
        // Fast path: the next message, whole, nothing special pending.
        if off == 0
            && c.frag.is_none()
            && c.set.is_none()
            && self.set_end.is_none()
            && self.window.first_key_value().is_none_or(|(&k, _)| k != key)
        {
            let at = inbox.place_of(c.payload);
            if !self.room_to_deliver(inbox, c.payload, at.is_some(), stats) {
                return self.refuse(stats);
            }
            inbox.deliver_slice(Guarantee::Delivery, c.payload, at);
            self.advance();
            if !self.window.is_empty() {
                self.credit = 0;
                self.release(inbox);
            }
            return ChunkOutcome::Accepted;
        }
        self.credit = 0;
        let front = off == 0;
        let (data, set) = match c.frag {
            None => {
                if self.window.contains_key(&key) {
                    stats.duplicate_chunks += 1;
                    return ChunkOutcome::Duplicate;
                }
                let charge = ENTRY_OVERHEAD + vec_charge(c.payload.len());
                if !self.make_room(inbox, (front, self.window.len() + 1), charge, charge, stats) {
                    return self.refuse(stats);
                }
                self.held += ENTRY_OVERHEAD;
                (c.payload.to_vec(), c.set)
            }
            Some(f) => match self.on_fragment(key, front, f, c, inbox, stats) {
                Ok(Some(done)) => done,
                Ok(None) => return ChunkOutcome::Accepted,
                Err(outcome) => return outcome,
            },
        };
        // `data` is charged as the slot it becomes.
        let slot = Slot::Complete { data, set };
        self.held += slot.charge() - ENTRY_OVERHEAD;
        self.window.insert(key, slot);
        if let Some(s) = set {
            let start = seq.wrapping_sub(u32::from(s.index));
            if self.set_end.is_none() && start == self.next_deliver {
                self.open_set(start.wrapping_add(u32::from(s.len)), inbox);
            } else if self.set_end.is_some_and(|end| seq_lt(seq, end)) {
                self.deliver_key(key, inbox);
            }
        }
        self.release(inbox);
        ChunkOutcome::Accepted
    }

    /// Stores a fragment of the Delivery message at `key`. `Ok(Some)`: the
    /// message is complete (its entry removed, its bytes returned and no
    /// longer charged but for the entry); `Ok(None)`: stored.
    fn on_fragment(
        &mut self,
        key: u64,
        front: bool,
        f: FragInfo,
        c: &ChunkRepr<'_>,
        inbox: &Inbox,
        stats: &mut ConnectionStats,
    ) -> Result<Option<Completed>, ChunkOutcome> {
        let frag_size = self.limits.frag_size;
        let dup = |stats: &mut ConnectionStats| {
            stats.duplicate_chunks += 1;
            Err(ChunkOutcome::Duplicate)
        };
        // The in-order path of a large message: the next fragment of a
        // reassembly under way, appended where its prefix has room.
        if let Some(Slot::Partial(r)) = self.window.get_mut(&key) {
            let before = r.held();
            match r.insert(f, c.payload, frag_size, 0) {
                FragInsert::Added => {
                    let after = r.held();
                    let complete = r.is_complete();
                    self.held = self.held + after - before;
                    if !complete {
                        return Ok(None);
                    }
                    let Some(Slot::Partial(r)) = self.window.remove(&key) else {
                        return Ok(None);
                    };
                    self.held -= after;
                    let set = r.set();
                    return Ok(Some((r.finish(), set)));
                }
                FragInsert::Duplicate | FragInsert::Mismatch => return dup(stats),
                FragInsert::NoRoom { .. } => {
                    return self.on_partial(key, front, f, c, inbox, stats);
                }
            }
        }
        match self.window.get(&key) {
            None if front && f.index == 0 => {
                // The start of the message everything waits for: a
                // reassembly at once, its prefix allocated last (it grows
                // in place while nothing is allocated after it).
                let charge = ENTRY_OVERHEAD + REASSEMBLY_OVERHEAD + vec_charge(c.payload.len());
                let pending = self.window.len() + 1;
                if !self.make_room(inbox, (front, pending), charge, charge, stats) {
                    return Err(self.refuse(stats));
                }
                self.held += ENTRY_OVERHEAD + REASSEMBLY_OVERHEAD;
                self.window.insert(
                    key,
                    Slot::Partial(Box::new(Reassembly::new(f.count, c.set))),
                );
                return self.on_partial(key, front, f, c, inbox, stats);
            }
            None => {
                // The first fragment: kept as it is.
                let charge = ENTRY_OVERHEAD + vec_charge(c.payload.len());
                if !self.make_room(inbox, (front, self.window.len() + 1), charge, charge, stats) {
                    return Err(self.refuse(stats));
                }
                let slot = Slot::Frag {
                    count: f.count,
                    index: f.index,
                    set: c.set,
                    data: Box::from(c.payload),
                };
                self.held += slot.charge();
                self.window.insert(key, slot);
                return Ok(None);
            }
            Some(Slot::Frag { count, index, .. }) => {
                if *count != f.count || *index == f.index {
                    return dup(stats);
                }
            }
            Some(Slot::Partial(_)) => return self.on_partial(key, front, f, c, inbox, stats),
            Some(Slot::Complete { .. } | Slot::Delivered) => return dup(stats),
        }
        // A second fragment turns the entry into a reassembly.
        let Some(slot) = self.window.remove(&key) else {
            return dup(stats);
        };
        let before = slot.charge();
        let mut r = match slot {
            Slot::Frag {
                count,
                index,
                set,
                data,
            } => Box::new(Reassembly::with_fragment(count, set, index, data)),
            other => {
                self.window.insert(key, other);
                return dup(stats);
            }
        };
        // What the reassembly itself costs beyond the lone fragment: it
        // must fit first (the fragment's insertion may free some of it, but
        // is checked against what is left).
        let upgrade = (ENTRY_OVERHEAD + r.held()).saturating_sub(before);
        let mut tries = 0;
        let outcome = loop {
            tries += 1;
            let (own, allowed) = self.rooms(inbox, front);
            let room = own.min(allowed);
            let need = if room < upgrade {
                upgrade
            } else {
                match r.insert(f, c.payload, frag_size, room - upgrade) {
                    FragInsert::Added => break Ok(()),
                    FragInsert::Duplicate | FragInsert::Mismatch => {
                        stats.duplicate_chunks += 1;
                        break Err(ChunkOutcome::Duplicate);
                    }
                    FragInsert::NoRoom { need } => need + upgrade,
                }
            };
            let pending = self.window.len() + 1;
            if tries > 2 || !self.make_room(inbox, (front, pending), need, need, stats) {
                break Err(self.refuse(stats));
            }
        };
        if let Err(e) = outcome {
            // Put the entry back as it was.
            let set = r.set();
            let slot = match (*r).into_single() {
                Ok((index, data)) => Slot::Frag {
                    count: f.count,
                    index,
                    set,
                    data,
                },
                Err(r) => Slot::Partial(Box::new(r)),
            };
            let after = slot.charge();
            self.held = self.held + after - before;
            self.window.insert(key, slot);
            return Err(e);
        }
        let after = ENTRY_OVERHEAD + r.held();
        self.held = self.held + after - before;
        if !r.is_complete() {
            self.window.insert(key, Slot::Partial(r));
            return Ok(None);
        }
        // Complete: the entry's bytes leave the charge (the caller charges
        // them again as the slot they become).
        self.held -= after - ENTRY_OVERHEAD;
        let set = r.set();
        Ok(Some((r.finish(), set)))
    }

    /// Stores a fragment of the message at `key`, which is being
    /// reassembled: in place (the in-order path of large messages).
    fn on_partial(
        &mut self,
        key: u64,
        front: bool,
        f: FragInfo,
        c: &ChunkRepr<'_>,
        inbox: &Inbox,
        stats: &mut ConnectionStats,
    ) -> Result<Option<Completed>, ChunkOutcome> {
        let frag_size = self.limits.frag_size;
        let mut tries = 0;
        // No room at first: most fragments need none (the prefix has
        // capacity), and the room is worked out only for those that do.
        let mut room = 0;
        loop {
            tries += 1;
            let Some(Slot::Partial(r)) = self.window.get_mut(&key) else {
                return Err(ChunkOutcome::Duplicate);
            };
            let before = r.held();
            match r.insert(f, c.payload, frag_size, room) {
                FragInsert::Added => {
                    let after = r.held();
                    self.held = self.held + after - before;
                    if !r.is_complete() {
                        return Ok(None);
                    }
                    // Complete: the entry's bytes leave the charge (the
                    // caller charges them again as the slot they become).
                    let Some(Slot::Partial(r)) = self.window.remove(&key) else {
                        return Ok(None);
                    };
                    self.held -= after;
                    let set = r.set();
                    return Ok(Some((r.finish(), set)));
                }
                FragInsert::Duplicate | FragInsert::Mismatch => {
                    stats.duplicate_chunks += 1;
                    return Err(ChunkOutcome::Duplicate);
                }
                FragInsert::NoRoom { need } => {
                    let (own, allowed) = self.rooms(inbox, front);
                    let pending = self.window.len() + 1;
                    if own.min(allowed) >= need {
                        room = own.min(allowed);
                    } else if tries > 3
                        || !self.make_room(inbox, (front, pending), need, need, stats)
                    {
                        return Err(self.refuse(stats));
                    } else {
                        let (own, allowed) = self.rooms(inbox, front);
                        room = own.min(allowed);
                    }
                }
            }
        }
    }

    /// Moves the front of the window one message on.
    #[inline]
    fn advance(&mut self) {
        self.next_deliver = self.next_deliver.wrapping_add(1);
        self.next_key += 1;
        if let Some(end) = self.set_end {
            if seq_ge(self.next_deliver, end) {
                self.set_end = None;
            }
        }
    }

    /// Delivers the complete message at `key` ahead of the front (a member
    /// of the open set), leaving a `Delivered` mark.
    fn deliver_key(&mut self, key: u64, inbox: &mut Inbox) {
        if let Some(slot) = self.window.get_mut(&key) {
            if let Slot::Complete { .. } = slot {
                if let Slot::Complete { data, .. } = core::mem::replace(slot, Slot::Delivered) {
                    self.held -= vec_charge(data.capacity());
                    inbox.deliver_vec(Guarantee::Delivery, data);
                }
            }
        }
    }

    fn open_set(&mut self, end: u32, inbox: &mut Inbox) {
        let end = if seq_gt(end, self.next_deliver) {
            end
        } else {
            self.next_deliver.wrapping_add(1)
        };
        self.set_end = Some(end);
        let range = self.next_key..self.next_key + u64::from(seq_dist(self.next_deliver, end));
        let RecvState { window, held, .. } = self;
        for (_, slot) in window.range_mut(range) {
            if let Slot::Complete { .. } = slot {
                if let Slot::Complete { data, .. } = core::mem::replace(slot, Slot::Delivered) {
                    *held -= vec_charge(data.capacity());
                    inbox.deliver_vec(Guarantee::Delivery, data);
                }
            }
        }
    }

    /// Hands out everything deliverable at the front of the window.
    fn release(&mut self, inbox: &mut Inbox) {
        loop {
            let open = match self.window.first_key_value() {
                Some((&k, slot)) if k == self.next_key => match slot {
                    Slot::Delivered => None,
                    Slot::Complete { set, .. } => match (*set, self.set_end) {
                        (Some(s), None) => {
                            let start = self.next_deliver.wrapping_sub(u32::from(s.index));
                            Some(start.wrapping_add(u32::from(s.len)))
                        }
                        _ => None,
                    },
                    _ => break,
                },
                _ => break,
            };
            if let Some(end) = open {
                // Delivers the front too (it becomes `Delivered`).
                self.open_set(end, inbox);
                continue;
            }
            if let Some((_, slot)) = self.window.pop_first() {
                self.held -= slot.charge();
                if let Slot::Complete { data, .. } = slot {
                    inbox.deliver_vec(Guarantee::Delivery, data);
                }
            }
            self.advance();
        }
    }

    // -- None and Order ----------------------------------------------------------

    /// Delivers a None or Order chunk (once its message is whole), within
    /// the byte budgets and the number of partial reassemblies; drops it
    /// otherwise.
    #[inline]
    pub(super) fn on_unreliable(
        &mut self,
        c: &ChunkRepr<'_>,
        inbox: &mut Inbox,
        stats: &mut ConnectionStats,
    ) {
        let g = c.guarantee;
        if g == Guarantee::Order && self.order_latest.is_some_and(|l| seq_le(c.seq, l)) {
            stats.stale_order_dropped += 1;
            return;
        }
        let Some(f) = c.frag else {
            let at = inbox.place_of(c.payload);
            if !self.room_to_deliver(inbox, c.payload, at.is_some(), stats) {
                stats.unreliable_dropped += 1;
                stats.recv_budget_drops += 1;
                self.budget_events.drops += 1;
                return;
            }
            if g == Guarantee::Order {
                self.order_latest = Some(c.seq);
                self.drop_stale_partials(stats);
            }
            inbox.deliver_slice(g, c.payload, at);
            return;
        };
        self.credit = 0;
        let mut p = match self
            .partials
            .iter()
            .position(|p| p.guarantee == g && p.seq == c.seq)
        {
            Some(i) => match self.partials.remove(i) {
                Some(p) => p,
                None => return,
            },
            None => {
                if self.partials.len() >= self.limits.max_partials {
                    if let Some(old) = self.partials.pop_front() {
                        let h = old.r.held();
                        self.held -= h;
                        self.unrel_held -= h;
                        stats.unreliable_dropped += 1;
                    }
                }
                let pending = self.window.len() + 1;
                if !self.make_room(
                    inbox,
                    (false, pending),
                    REASSEMBLY_OVERHEAD,
                    REASSEMBLY_OVERHEAD,
                    stats,
                ) {
                    stats.unreliable_dropped += 1;
                    stats.recv_budget_drops += 1;
                    self.budget_events.drops += 1;
                    return;
                }
                self.held += REASSEMBLY_OVERHEAD;
                self.unrel_held += REASSEMBLY_OVERHEAD;
                UnrelPartial {
                    guarantee: g,
                    seq: c.seq,
                    r: Reassembly::new(f.count, None),
                }
            }
        };
        // `p` is out of `partials` (so that making room cannot drop it)
        // but still charged.
        let before = p.r.held();
        let mut tries = 0;
        let stored = loop {
            tries += 1;
            let (own, allowed) = self.rooms(inbox, false);
            match p
                .r
                .insert(f, c.payload, self.limits.frag_size, own.min(allowed))
            {
                FragInsert::Added => break true,
                FragInsert::Duplicate | FragInsert::Mismatch => break true,
                FragInsert::NoRoom { need } => {
                    if tries > 2
                        || !self.make_room(inbox, (false, self.window.len() + 1), need, need, stats)
                    {
                        stats.unreliable_dropped += 1;
                        stats.recv_budget_drops += 1;
                        self.budget_events.drops += 1;
                        break false;
                    }
                }
            }
        };
        let after = p.r.held();
        self.held = self.held + after - before;
        self.unrel_held = self.unrel_held + after - before;
        if !stored {
            // The message cannot be completed: its other fragments go too.
            self.held -= after;
            self.unrel_held -= after;
            return;
        }
        if !p.r.is_complete() {
            self.partials.push_back(p);
            return;
        }
        self.held -= after;
        self.unrel_held -= after;
        let data = p.r.finish();
        if g == Guarantee::Order {
            self.order_latest = Some(c.seq);
            self.drop_stale_partials(stats);
        }
        inbox.deliver_vec(g, data);
    }

    fn drop_stale_partials(&mut self, stats: &mut ConnectionStats) {
        let Some(latest) = self.order_latest else {
            return;
        };
        let before = self.partials.len();
        let mut freed = 0;
        self.partials.retain(|p| {
            let stale = p.guarantee == Guarantee::Order && seq_le(p.seq, latest);
            if stale {
                freed += p.r.held();
            }
            !stale
        });
        self.held -= freed;
        self.unrel_held -= freed;
        stats.stale_order_dropped += (before - self.partials.len()) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: usize = 100;

    fn state(budget: usize) -> RecvState {
        RecvState::new(
            0,
            RecvLimits {
                frag_size: F,
                max_message: 10 * F,
                window: 64,
                budget,
                reserve: 10 * F,
                max_partials: 8,
                max_ack_delay: Duration::from_millis(10),
            },
        )
    }

    fn frag(seq: u32, index: u16, count: u16, payload: &[u8]) -> ChunkRepr<'_> {
        ChunkRepr {
            guarantee: Guarantee::Delivery,
            seq,
            frag: Some(FragInfo { index, count }),
            set: None,
            payload,
        }
    }

    /// Regression (found by the `rudp_sparse_fragments` fuzz target): a
    /// lone fragment becoming a reassembly when a second one arrives was
    /// checked without the reassembly's own cost, so the budget could be
    /// exceeded by it.
    #[test]
    fn a_second_fragment_pays_for_the_reassembly() {
        let last = [7u8; 40];
        let budget = ENTRY_OVERHEAD + vec_charge(last.len()) + 50;
        let mut rx = state(budget);
        let mut inbox = Inbox::default();
        let mut stats = ConnectionStats::default();
        let c = frag(0, 1, 2, &last);
        assert!(matches!(
            rx.on_reliable(&c, &mut inbox, &mut stats),
            ChunkOutcome::Accepted
        ));
        let held = rx.held();
        assert!(held <= budget);
        let first = [8u8; F];
        let c = frag(0, 0, 2, &first);
        assert!(matches!(
            rx.on_reliable(&c, &mut inbox, &mut stats),
            ChunkOutcome::Rejected
        ));
        assert_eq!(rx.held(), held, "nothing changed");
        assert_eq!(stats.recv_budget_refusals, 1);
        // With room, the message completes and is delivered.
        let mut rx2 = state(4 * budget);
        for c in [frag(0, 1, 2, &last), frag(0, 0, 2, &first)] {
            assert!(matches!(
                rx2.on_reliable(&c, &mut inbox, &mut stats),
                ChunkOutcome::Accepted
            ));
        }
        assert_eq!(rx2.held(), 0);
        assert!(inbox.has_events());
    }

    /// Whatever arrives, in any order, what is held stays within the
    /// budget, and a far fragment costs its bytes, not its index.
    #[test]
    fn held_stays_within_the_budget() {
        let budget = 4096;
        let mut rx = state(budget);
        let mut inbox = Inbox::default();
        let mut stats = ConnectionStats::default();
        let full = [1u8; F];
        let mut rng = crate::rudp::rng::Rng::new(9);
        for _ in 0..5000 {
            let seq = rng.next_u32() % 64;
            let count = 2 + (rng.next_u32() % 9) as u16;
            let index = (rng.next_u32() % u32::from(count)) as u16;
            let len = if index + 1 == count {
                1 + (rng.next_u32() as usize % F)
            } else {
                F
            };
            let c = frag(seq, index, count, &full[..len]);
            let _ = rx.on_reliable(&c, &mut inbox, &mut stats);
            assert!(
                rx.held() + inbox.mem_held() <= budget,
                "{} + {}",
                rx.held(),
                inbox.mem_held()
            );
            if rng.next_u32() % 8 == 0 {
                while inbox.pop_event().is_some() {}
            }
        }
        assert!(stats.recv_budget_refusals > 0);
    }
}

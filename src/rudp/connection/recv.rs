//! The receive side: duplicate detection, acknowledgements, and delivery of
//! messages in their guarantee's order.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::events::Inbox;
use super::reassembly::{FragInsert, Reassembly, UnrelPartial};
use super::stats::ConnectionStats;
use crate::rudp::config::RudpConfig;
use crate::rudp::seq::{seq_dist, seq_ge, seq_gt, seq_le, seq_lt};
use crate::rudp::wire::{AckRepr, ChunkRepr, Chunks, SetInfo};
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
                self.bits = if shift >= PN_WINDOW {
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

/// A Delivery message in the receive window.
#[derive(Debug)]
enum Slot {
    /// Nothing received yet.
    Empty,
    /// Some fragments received.
    Partial(Reassembly),
    /// Received whole, not yet delivered (waiting for an earlier message, or
    /// for its set to open).
    Complete { data: Vec<u8>, set: Option<SetInfo> },
    /// Delivered ahead of the front as a member of an open set.
    Delivered,
}

/// What became of a reliable chunk.
#[derive(Debug)]
pub(super) enum ChunkOutcome {
    Accepted,
    Duplicate,
    /// Could not be buffered: the packet must not be acknowledged.
    Rejected,
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
    /// Unreliable messages reassembled at once
    /// (`RudpConfig::max_unreliable_partials`).
    max_partials: usize,
}

impl RecvLimits {
    /// The limits of `cfg` (sanitized), with fragments of `frag_size` bytes.
    pub(super) fn new(cfg: &RudpConfig, frag_size: usize) -> Self {
        RecvLimits {
            frag_size,
            max_message: cfg.max_message_len,
            window: cfg.recv_window,
            budget: cfg.max_recv_buffer_bytes,
            max_partials: cfg.max_unreliable_partials,
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
    /// Slot `i` is message `next_deliver + i`.
    window: VecDeque<Slot>,
    /// End (exclusive) of the message set being delivered, if one is open.
    set_end: Option<u32>,
    /// Bytes held in `window` and `partials`.
    buffered: usize,
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
            window: VecDeque::new(),
            set_end: None,
            buffered: 0,
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
        self.window = VecDeque::new();
        self.partials = VecDeque::new();
        self.ack_snapshots = VecDeque::new();
        self.buffered = 0;
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
            delay: AckRepr::encode_delay(delay),
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

    fn validate_chunk(&self, c: &ChunkRepr<'_>) -> Result<(), &'static str> {
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

    /// Takes a Delivery chunk into the window, delivering what it
    /// completes, within the byte budget (messages waiting in `inbox`
    /// included).
    #[inline]
    pub(super) fn on_reliable(
        &mut self,
        c: &ChunkRepr<'_>,
        inbox: &mut Inbox,
        stats: &mut ConnectionStats,
    ) -> ChunkOutcome {
        let RecvLimits {
            frag_size, budget, ..
        } = self.limits;
        let seq = c.seq;
        if seq_lt(seq, self.next_deliver) {
            stats.duplicate_chunks += 1;
            return ChunkOutcome::Duplicate;
        }
        let off = seq_dist(self.next_deliver, seq) as usize;
        // Fast path: the next message, whole, nothing special pending.
        if off == 0
            && c.frag.is_none()
            && c.set.is_none()
            && self.set_end.is_none()
            && self.window.front().is_none_or(|s| matches!(s, Slot::Empty))
        {
            if self.buffered + inbox.bytes() + c.payload.len() > budget {
                return ChunkOutcome::Rejected;
            }
            inbox.deliver_slice(Guarantee::Delivery, c.payload);
            self.window.pop_front();
            self.next_deliver = self.next_deliver.wrapping_add(1);
            self.release(inbox);
            return ChunkOutcome::Accepted;
        }
        while self.window.len() <= off {
            self.window.push_back(Slot::Empty);
        }
        let used = self.buffered + inbox.bytes();
        let slot = &mut self.window[off];
        let (data, set) = match (c.frag, slot) {
            (_, Slot::Delivered | Slot::Complete { .. }) => {
                stats.duplicate_chunks += 1;
                return ChunkOutcome::Duplicate;
            }
            (None, Slot::Partial(_)) => {
                stats.duplicate_chunks += 1;
                return ChunkOutcome::Duplicate;
            }
            (None, s @ Slot::Empty) => {
                if used + c.payload.len() > budget {
                    return ChunkOutcome::Rejected;
                }
                *s = Slot::Empty;
                self.buffered += c.payload.len();
                (c.payload.to_vec(), c.set)
            }
            (Some(f), s) => {
                if let Slot::Empty = s {
                    *s = Slot::Partial(Reassembly::new(f.count, c.set));
                }
                let Slot::Partial(r) = s else {
                    return ChunkOutcome::Duplicate;
                };
                if used + r.growth(f, c.payload.len(), frag_size) > budget {
                    return ChunkOutcome::Rejected;
                }
                match r.insert(f, c.payload, frag_size) {
                    FragInsert::Added { grown } => self.buffered += grown,
                    FragInsert::Duplicate | FragInsert::Mismatch => {
                        stats.duplicate_chunks += 1;
                        return ChunkOutcome::Duplicate;
                    }
                }
                if !r.is_complete() {
                    return ChunkOutcome::Accepted;
                }
                let Slot::Partial(r) = core::mem::replace(s, Slot::Empty) else {
                    return ChunkOutcome::Accepted;
                };
                let set = r.set();
                let held = r.held();
                let data = r.finish();
                // `held` was counted; the finished vector is at most that long.
                self.buffered = self.buffered - held + data.len();
                (data, set)
            }
        };
        self.window[off] = Slot::Complete { data, set };
        if let Some(s) = set {
            let start = seq.wrapping_sub(u32::from(s.index));
            if self.set_end.is_none() && start == self.next_deliver {
                self.open_set(start.wrapping_add(u32::from(s.len)), inbox);
            } else if self.set_end.is_some_and(|end| seq_lt(seq, end)) {
                self.deliver_slot(off, inbox);
            }
        }
        self.release(inbox);
        ChunkOutcome::Accepted
    }

    fn deliver_slot(&mut self, off: usize, inbox: &mut Inbox) {
        if let Some(slot) = self.window.get_mut(off) {
            if let Slot::Complete { .. } = slot {
                if let Slot::Complete { data, .. } = core::mem::replace(slot, Slot::Delivered) {
                    self.buffered -= data.len();
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
        let n = (seq_dist(self.next_deliver, end) as usize).min(self.window.len());
        for off in 0..n {
            self.deliver_slot(off, inbox);
        }
    }

    /// Hands out everything deliverable at the front of the window.
    fn release(&mut self, inbox: &mut Inbox) {
        loop {
            match self.window.front() {
                Some(Slot::Delivered) => {}
                Some(Slot::Complete { set, .. }) => {
                    if self.set_end.is_none() {
                        if let Some(s) = *set {
                            let start = self.next_deliver.wrapping_sub(u32::from(s.index));
                            self.open_set(start.wrapping_add(u32::from(s.len)), inbox);
                            continue;
                        }
                    }
                    self.deliver_slot(0, inbox);
                }
                _ => break,
            }
            self.window.pop_front();
            self.next_deliver = self.next_deliver.wrapping_add(1);
            if let Some(end) = self.set_end {
                if seq_ge(self.next_deliver, end) {
                    self.set_end = None;
                }
            }
        }
    }

    /// Delivers a None or Order chunk (once its message is whole), within
    /// the byte budget and the number of partial reassemblies; drops it
    /// otherwise.
    #[inline]
    pub(super) fn on_unreliable(
        &mut self,
        c: &ChunkRepr<'_>,
        inbox: &mut Inbox,
        stats: &mut ConnectionStats,
    ) {
        let RecvLimits {
            frag_size,
            budget,
            max_partials,
            ..
        } = self.limits;
        let g = c.guarantee;
        if g == Guarantee::Order && self.order_latest.is_some_and(|l| seq_le(c.seq, l)) {
            stats.stale_order_dropped += 1;
            return;
        }
        let Some(f) = c.frag else {
            if self.buffered + inbox.bytes() + c.payload.len() > budget {
                stats.unreliable_dropped += 1;
                return;
            }
            if g == Guarantee::Order {
                self.order_latest = Some(c.seq);
                self.drop_stale_partials(stats);
            }
            inbox.deliver_slice(g, c.payload);
            return;
        };
        let idx = match self
            .partials
            .iter()
            .position(|p| p.guarantee == g && p.seq == c.seq)
        {
            Some(i) => i,
            None => {
                if self.partials.len() >= max_partials {
                    if let Some(old) = self.partials.pop_front() {
                        self.buffered -= old.r.held();
                        stats.unreliable_dropped += 1;
                    }
                }
                self.partials.push_back(UnrelPartial {
                    guarantee: g,
                    seq: c.seq,
                    r: Reassembly::new(f.count, None),
                });
                self.partials.len() - 1
            }
        };
        let used = self.buffered + inbox.bytes();
        let Some(p) = self.partials.get_mut(idx) else {
            return;
        };
        if used + p.r.growth(f, c.payload.len(), frag_size) > budget {
            stats.unreliable_dropped += 1;
            return;
        }
        match p.r.insert(f, c.payload, frag_size) {
            FragInsert::Added { grown } => self.buffered += grown,
            FragInsert::Duplicate | FragInsert::Mismatch => return,
        }
        if p.r.is_complete() {
            if let Some(p) = self.partials.remove(idx) {
                self.buffered -= p.r.held();
                let data = p.r.finish();
                if g == Guarantee::Order {
                    self.order_latest = Some(c.seq);
                    self.drop_stale_partials(stats);
                }
                inbox.deliver_vec(g, data);
            }
        }
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
        self.buffered -= freed;
        stats.stale_order_dropped += (before - self.partials.len()) as u64;
    }
}

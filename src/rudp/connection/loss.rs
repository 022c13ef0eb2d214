//! What loss detection learns from its mistakes.
//!
//! A packet is declared lost by a packet threshold (enough later packets
//! acked) or a time threshold (RFC 9002 §6.1). Reordering or a delay spike
//! makes such a declaration wrong: the packet is acknowledged afterwards.
//! Losses are therefore remembered a while, and one found spurious widens
//! the reordering tolerance to what it would have needed (RACK, RFC 8985
//! §6.2: the packet threshold to the reordering degree seen, the time
//! window to the time the packet took), until 16 loss epochs in a row go by
//! without a spurious loss.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::rudp::seq::{seq_dist, seq_gt, seq_lt};

/// Packets declared lost remembered for spurious-loss detection.
const LOST_HISTORY: usize = 1024;
/// Largest packet-reordering threshold learnt from spurious losses: the
/// ack bitmap covers 64 packets below the largest.
const MAX_REORDER_THRESHOLD: u32 = 64;
/// Loss epochs in a row without a spurious loss after which the learnt
/// reordering tolerance is forgotten (RACK keeps its window for 16
/// recoveries, RFC 8985 §6.2).
const REORDER_DECAY_EPOCHS: u32 = 16;

/// A packet declared lost, kept a while to recognise a late ack for it.
#[derive(Debug, Clone, Copy)]
pub(super) struct LostPacket {
    pub(super) pn: u32,
    pub(super) sent: Instant,
    pub(super) lost_at: Instant,
    /// Largest sequence number of its reliable chunks, when some were not
    /// yet acknowledged as it was declared lost: the cumulative ack passing
    /// it sooner than a retransmission could arrive proves the original
    /// did (how late packets beyond the reach of the ack bitmap are found).
    pub(super) top_seq: Option<u32>,
    /// Loss epoch of the congestion controller it was counted in.
    pub(super) epoch: u32,
}

/// The reordering tolerance of loss detection, and the recent losses that
/// may still prove it too tight.
#[derive(Debug)]
pub(super) struct Reordering {
    /// Recently lost packets, increasing packet numbers (packets are
    /// declared lost oldest first, so this is also the order in which they
    /// were declared).
    lost: VecDeque<LostPacket>,
    /// Packet threshold of loss detection.
    threshold: u32,
    /// Extra time threshold of loss detection.
    window: Duration,
    /// The configured packet threshold, to which `threshold` decays.
    initial_threshold: u32,
}

impl Reordering {
    /// Starting with packet threshold `packet_threshold` and no time window.
    pub(super) fn new(packet_threshold: u32) -> Self {
        Reordering {
            lost: VecDeque::new(),
            threshold: packet_threshold,
            window: Duration::ZERO,
            initial_threshold: packet_threshold,
        }
    }

    /// Packet threshold: a packet is lost once a packet this many numbers
    /// later was acked (`u32::MAX`: time only).
    pub(super) fn threshold(&self) -> u32 {
        self.threshold
    }

    /// Extra time threshold learnt from spurious losses.
    pub(super) fn window(&self) -> Duration {
        self.window
    }

    /// No loss is remembered.
    pub(super) fn is_empty(&self) -> bool {
        self.lost.is_empty()
    }

    /// Remembers a packet just declared lost (the newest; the oldest
    /// remembered is forgotten beyond [`LOST_HISTORY`]).
    pub(super) fn record(&mut self, lost: LostPacket) {
        if self.lost.len() >= LOST_HISTORY {
            self.lost.pop_front();
        }
        self.lost.push_back(lost);
    }

    /// A congestion loss: after [`REORDER_DECAY_EPOCHS`] loss epochs in a
    /// row without a spurious loss, the learnt tolerance is forgotten.
    pub(super) fn on_congestion_loss(&mut self, clean_epochs: u32) {
        if clean_epochs >= REORDER_DECAY_EPOCHS {
            self.threshold = self.initial_threshold;
            self.window = Duration::ZERO;
        }
    }

    /// `pn` is older than every loss remembered.
    pub(super) fn older_than_all(&self, pn: u32) -> bool {
        self.lost.front().is_none_or(|l| seq_lt(pn, l.pn))
    }

    /// A cursor for [`take_named`](Self::take_named) and
    /// [`take_covered`](Self::take_covered): they walk from the newest
    /// loss down.
    pub(super) fn cursor(&self) -> usize {
        self.lost.len()
    }

    /// For the packet numbers named by one ack, in decreasing order: removes
    /// and returns `pn` if it was declared lost. `cursor` (from
    /// [`cursor`](Self::cursor)) merges the walk with the history: entries
    /// before it are at or below the packet number asked last.
    pub(super) fn take_named(&mut self, cursor: &mut usize, pn: u32) -> Option<LostPacket> {
        while *cursor > 0 && self.lost.get(*cursor - 1).is_some_and(|l| seq_gt(l.pn, pn)) {
            *cursor -= 1;
        }
        if *cursor > 0 && self.lost.get(*cursor - 1).is_some_and(|l| l.pn == pn) {
            *cursor -= 1;
            return self.lost.remove(*cursor);
        }
        None
    }

    /// The cumulative ack moved to `una`: removes and returns the next
    /// loss, walking from the newest down to the first declared `min_rtt`
    /// or longer before `now`, whose reliable chunks are all below `una`
    /// (covered sooner than a retransmission could have arrived: the
    /// original did).
    pub(super) fn take_covered(
        &mut self,
        cursor: &mut usize,
        now: Instant,
        min_rtt: Duration,
        una: u32,
    ) -> Option<LostPacket> {
        while *cursor > 0 {
            *cursor -= 1;
            let l = self.lost.get(*cursor)?;
            if now.saturating_duration_since(l.lost_at) >= min_rtt {
                *cursor = 0;
                return None;
            }
            if l.top_seq.is_some_and(|t| seq_lt(t, una)) {
                return self.lost.remove(*cursor);
            }
        }
        None
    }

    /// A loss was spurious: the packet was acknowledged after `overtaken`
    /// later packets were, `took` after it was sent. Widens the packet
    /// threshold to that reordering degree (beyond the ack bitmap, time
    /// only) and the time window to 9/8 of `took`, at most `cap`.
    pub(super) fn widen(&mut self, overtaken: u32, took: Duration, cap: Duration) {
        let degree = overtaken.saturating_add(1);
        self.threshold = if degree > MAX_REORDER_THRESHOLD {
            u32::MAX
        } else {
            self.threshold.max(degree)
        };
        self.window = self.window.max(took + took / 8).min(cap);
    }

    /// Forgets the losses that can no longer be found spurious, given the
    /// largest packet acked: acks name at most 64 packets below their
    /// largest, and the cumulative test needs an answer within the minimum
    /// RTT.
    pub(super) fn prune(&mut self, largest: u32, now: Instant, min_rtt: Duration) {
        while self.lost.front().is_some_and(|l| {
            seq_lt(l.pn, largest)
                && seq_dist(l.pn, largest) > 64
                && (l.top_seq.is_none() || now.saturating_duration_since(l.lost_at) >= min_rtt)
        }) {
            self.lost.pop_front();
        }
    }
}

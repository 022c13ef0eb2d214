//! What acknowledgements, and their absence, tell the sender: packets
//! acknowledged (RTT samples, delivery-rate samples for the congestion
//! controller, messages released), packets declared lost (RFC 9002 §6.1:
//! packet and time thresholds, widened by spurious losses) and their
//! chunks queued again, the retransmission timeout and the tail-loss probe.

use std::time::{Duration, Instant};

use log::{debug, trace};

use super::congestion::{AckedPacket, RateSample};
use super::loss::LostPacket;
use super::rtt::GRANULARITY;
use super::{later, Connection, State, MAX_BACKOFF_SHIFT, PERSISTENT_RTO};
use crate::rudp::seq::{seq_dist, seq_ge, seq_lt};
use crate::rudp::timer::Timer;
use crate::rudp::wire::AckRepr;
use crate::rudp::RudpCloseReason;

impl Connection {
    #[inline]
    pub(super) fn current_rto(&self) -> Duration {
        self.rtt
            .rto(self.peer_max_ack_delay, self.cfg.min_rto, self.cfg.max_rto)
    }

    /// Applies a validated ack.
    #[inline]
    pub(super) fn on_ack(&mut self, now: Instant, ack: &AckRepr) {
        // The cumulative ack first: it releases most messages at once, and
        // chunks below it need no individual acknowledgement.
        if self.tx.on_cum_ack(ack.cum_seq) && !self.reorder.is_empty() {
            self.check_cumulative_spurious(now);
        }
        let mut newly_acked = false;
        let mut rtt_sample = None;
        // Merge cursor into the loss history for the packet numbers of this
        // ack, visited in decreasing order.
        let mut lost_cursor = self.reorder.cursor();
        // Bit `i` of `named`: packet `largest - i` (the largest, then the
        // bitmap); visited set bit by set bit, newest first.
        let mut named = (u128::from(ack.bitmap) << 1) | 1;
        while named != 0 {
            let i = named.trailing_zeros();
            named &= named - 1;
            let pn = ack.largest.wrapping_sub(i);
            let p = if seq_lt(pn, self.tx.sent_base()) {
                // Older packets are resolved: only a spurious loss can be
                // left to find among them.
                if self.reorder.older_than_all(pn) {
                    break;
                }
                None
            } else {
                self.tx.ack_packet(pn)
            };
            let Some(p) = p else {
                if let Some(lost) = self.reorder.take_named(&mut lost_cursor, pn) {
                    // Declared lost, yet acknowledged: reordering or a
                    // delay spike, not loss.
                    self.on_spurious_loss(now, lost, seq_dist(pn, ack.largest));
                }
                continue;
            };
            let (sent, size, cwnd_limited, chunks) = (p.time, p.size, p.cwnd_limited, p.chunks());
            if !newly_acked {
                // Acks are walked newest first: the first packet newly
                // acked is the one the delivery-rate sample may be taken
                // from.
                self.rate.offer(sent, &p.rate);
            }
            newly_acked = true;
            if i == 0 {
                let sample = now.saturating_duration_since(sent);
                self.rtt
                    .update(sample, ack.delay(), self.peer_max_ack_delay);
                rtt_sample = Some(sample);
            }
            self.on_packet_acked(now, pn, size, cwnd_limited);
            self.tx.ack_chunks(chunks);
        }
        self.tx.on_largest_acked(ack.largest);
        if newly_acked {
            self.consecutive_rto = 0;
            self.rto_backoff = 0;
            self.probe_sent = false;
            // The RTT or the backoff changed: the deadline may move forward.
            self.arm_rto(true);
        }
        self.tx.release_acked();
        self.tx.pop_resolved();
        self.detect_lost(now);
        self.on_ack_sample(now, rtt_sample);
        self.check_writable();
        self.check_close_flush();
    }

    /// Packet `pn`, of `size` bytes, was newly acknowledged: the rate
    /// sample and the controller learn of it.
    #[inline]
    pub(super) fn on_packet_acked(&mut self, now: Instant, pn: u32, size: u32, cwnd_limited: bool) {
        self.rate.on_acked(now, u64::from(size));
        if self.cc.wants_packet_acks() {
            self.cc.on_packet_acked(&AckedPacket {
                in_recovery: self.epochs.in_recovery(pn),
                cwnd_limited,
            });
        }
    }

    /// The end of an ack's processing: its delivery-rate sample goes to the
    /// controller.
    #[inline]
    pub(super) fn on_ack_sample(&mut self, now: Instant, rtt: Option<Duration>) {
        // Snapshots older than every packet kept cannot be offered any more.
        self.rate.release(self.tx.oldest().map(|(_, p)| &p.rate));
        let min_rtt = self.rtt.min_rtt.unwrap_or_default();
        let Some(rate) = self.rate.take(min_rtt) else {
            return;
        };
        let mut rs = RateSample {
            acked: rate.delivered_total - self.acked_before,
            rate,
            rtt,
            min_rtt,
            srtt: self.rtt.srtt,
            in_flight: self.tx.bytes_in_flight(),
            window_full: false,
        };
        self.acked_before = rate.delivered_total;
        self.cc.on_ack(now, &mut rs);
    }

    /// Declares the packet at `idx` of the send state lost (if in flight),
    /// with a congestion response of its own or (`congestion` false:
    /// persistent RTO) within the current one.
    pub(super) fn mark_lost(&mut self, now: Instant, idx: usize, congestion: bool) {
        let Some((pn, p)) = self.tx.declare_lost(idx) else {
            return;
        };
        self.stats.packets_lost += 1;
        trace!("rudp: {:08x} packet {pn} lost", self.conn_id);
        let bytes = u64::from(p.size);
        self.rate.on_lost(bytes);
        self.cc
            .on_packet_lost(now, bytes, self.tx.bytes_in_flight());
        if congestion {
            if self.epochs.on_loss(pn, self.tx.next_pn()) {
                self.cc.on_congestion_event(now, false);
            }
            self.reorder.on_congestion_loss(self.epochs.clean_epochs());
        } else {
            self.epochs.count_lost();
        }
        let una = self.tx.una();
        self.reorder.record(LostPacket {
            pn,
            sent: p.time,
            lost_at: now,
            top_seq: p.top_seq.filter(|&t| seq_ge(t, una)),
            epoch: self.epochs.epoch(),
        });
    }

    /// The cumulative ack moved: a lost packet whose reliable chunks it now
    /// covers, sooner than one RTT after the loss was declared, was not
    /// lost (the retransmission cannot have arrived yet).
    pub(super) fn check_cumulative_spurious(&mut self, now: Instant) {
        let (Some(min_rtt), Some(largest)) = (self.rtt.min_rtt, self.tx.largest_acked()) else {
            return;
        };
        let una = self.tx.una();
        let mut cursor = self.reorder.cursor();
        while let Some(lost) = self.reorder.take_covered(&mut cursor, now, min_rtt, una) {
            self.on_spurious_loss(now, lost, seq_dist(lost.pn, largest));
        }
    }

    /// Widens the reordering tolerance to what `lost` needed, and undoes
    /// the congestion-window cut when every loss of its epoch was spurious.
    pub(super) fn on_spurious_loss(&mut self, now: Instant, lost: LostPacket, overtaken: u32) {
        let pn = lost.pn;
        self.stats.spurious_losses += 1;
        let took = now.saturating_duration_since(lost.sent);
        let cap = self.current_rto().max(self.rtt.srtt * 2);
        self.reorder.widen(overtaken, took, cap);
        if self.epochs.on_spurious(lost.epoch) {
            self.cc.on_spurious_congestion();
            self.stats.cwnd_undos += 1;
            debug!(
                "rudp: {:08x} spurious loss: congestion window restored to {} bytes",
                self.conn_id,
                self.cc.window()
            );
        }
        trace!(
            "rudp: {:08x} packet {pn} was not lost: threshold {}, window {:?}",
            self.conn_id,
            self.reorder.threshold(),
            self.reorder.window()
        );
    }

    /// Packet- and time-threshold loss detection (RFC 9002 §6.1).
    #[inline]
    pub(super) fn detect_lost(&mut self, now: Instant) {
        let Some(largest) = self.tx.largest_acked() else {
            self.timers.stop(Timer::Loss);
            return;
        };
        let delay = self.rtt.loss_delay(self.reorder.window());
        loop {
            self.tx.pop_resolved();
            let Some((pn, p)) = self.tx.oldest() else {
                break;
            };
            if !seq_lt(pn, largest) {
                break;
            }
            let dist = seq_dist(pn, largest);
            // Beyond the ack bitmap the ack says nothing about this packet
            // (a receiver that got more than 64 packets between two acks
            // never names the older ones): if everything reliable in it is
            // known delivered (cumulative or chunk acks), it was delivered;
            // otherwise only time can tell, not packets acked after it.
            let beyond = dist > 64;
            if beyond && !p.unreliable && self.tx.content_acked(p) {
                if let Some(p) = self.tx.ack_packet(pn) {
                    let (size, cwnd_limited) = (p.size, p.cwnd_limited);
                    self.on_packet_acked(now, pn, size, cwnd_limited);
                }
                continue;
            }
            let by_count = !beyond && dist >= self.reorder.threshold();
            let by_time = now.saturating_duration_since(p.time) >= delay;
            if !(by_count || by_time) {
                break;
            }
            self.mark_lost(now, 0, true);
        }
        match self.tx.oldest() {
            Some((pn, p)) if seq_lt(pn, largest) => {
                self.timers.set(Timer::Loss, later(p.time, delay));
            }
            _ => self.timers.stop(Timer::Loss),
        }
        let min_rtt = self.rtt.min_rtt.unwrap_or_default();
        self.reorder.prune(largest, now, min_rtt);
    }

    pub(super) fn on_rto(&mut self, now: Instant) {
        if self.tx.in_flight() == 0 {
            return;
        }
        self.consecutive_rto += 1;
        self.stats.rto_count += 1;
        if self.consecutive_rto > self.cfg.max_retransmits {
            self.close_now(RudpCloseReason::Timeout);
            return;
        }
        debug!(
            "rudp: {:08x} retransmission timeout #{} ({} in flight)",
            self.conn_id,
            self.consecutive_rto,
            self.tx.in_flight()
        );
        self.rto_backoff = (self.rto_backoff + 1).min(MAX_BACKOFF_SHIFT);
        if self.consecutive_rto < PERSISTENT_RTO {
            // A probe, as QUIC's PTO (RFC 9002 §6.2): one packet regardless
            // of the congestion window, nothing declared lost yet. If the
            // flight was lost, the probe's ack reveals it (time threshold)
            // and ordinary recovery halves the window; if it was only late,
            // nothing is lost.
            self.probe_pending = true;
            self.probe_oldest = true;
            return;
        }
        // Persistent: every packet in flight is lost, the window collapses.
        self.epochs.on_rto(self.tx.next_pn());
        self.cc.on_congestion_event(now, true);
        for idx in 0..self.tx.unresolved() {
            self.mark_lost(now, idx, false);
        }
        self.tx.pop_resolved();
        self.probe_pending = false;
        if !self.tx.has_retransmissions() {
            // Nothing to resend (only pings were in flight): probe.
            self.ping_pending = true;
        }
        self.detect_lost(now);
    }

    /// When the retransmission timer should fire: the backed-off RTO after
    /// the last ack-eliciting packet.
    #[inline]
    pub(super) fn rto_deadline(&self) -> Instant {
        let rto = self
            .current_rto()
            .saturating_mul(1 << self.rto_backoff.min(MAX_BACKOFF_SHIFT))
            .min(self.cfg.max_rto);
        later(self.last_eliciting_sent, rto)
    }

    /// Arms (or stops) the retransmission timer.
    ///
    /// Lazy unless `exact`: an armed timer is left alone, because the
    /// callers that are not exact can only push the true deadline back (a
    /// packet was sent); the timer then fires early and
    /// [`handle_timeout`](Self::handle_timeout) re-arms it at the true
    /// deadline. This keeps timer arithmetic off the per-packet path.
    /// Callers that may bring the deadline forward (an ack that reset the
    /// backoff or changed the RTT) pass `exact`.
    ///
    /// Inlined: per packet, the common cases (a sender's timers armed
    /// already, a receiver's not armed at all) cost no call.
    #[inline(always)]
    pub(super) fn arm_rto(&mut self, exact: bool) {
        let (rto, probe) = (
            self.timers.is_set(Timer::Rto),
            self.timers.is_set(Timer::Probe),
        );
        if self.tx.in_flight() == 0 || self.state != State::Established {
            if rto || probe {
                self.timers.stop(Timer::Rto);
                self.timers.stop(Timer::Probe);
            }
        } else if exact || !rto || !probe {
            self.set_rto_timers(exact, rto, probe);
        }
    }

    /// Sets the retransmission timer unless it is armed (`rto`) and the
    /// probe timer unless it is (`probe`); both with `exact`.
    fn set_rto_timers(&mut self, exact: bool, rto: bool, probe: bool) {
        if exact || !rto {
            let at = self.rto_deadline();
            self.timers.set(Timer::Rto, at);
        }
        if exact || !probe {
            match self.probe_deadline() {
                Some(at) => self.timers.set(Timer::Probe, at),
                None => self.timers.stop(Timer::Probe),
            }
        }
    }

    /// When a tail-loss probe is due (RFC 8985 §7): two smoothed RTTs after
    /// the last ack-eliciting packet, plus the peer's ack delay when a
    /// single packet is in flight (its ack may be delayed); `None` when it
    /// would not come before the RTO, before the first RTT sample, or when
    /// a probe is already out. (At WAN RTTs the RTO usually comes first:
    /// see `docs/rudp.md` §12.)
    #[inline]
    pub(super) fn probe_deadline(&self) -> Option<Instant> {
        if self.probe_sent || !self.rtt.has_sample || self.tx.in_flight() == 0 {
            return None;
        }
        let mut pto = (self.rtt.srtt * 2).max(GRANULARITY * 2);
        if self.tx.in_flight() == 1 {
            pto += self.peer_max_ack_delay;
        }
        let at = later(self.last_eliciting_sent, pto);
        (at < self.rto_deadline()).then_some(at)
    }
}

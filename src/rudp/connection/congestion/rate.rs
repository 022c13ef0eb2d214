//! Delivery-rate estimation, as in draft-cheng-iccrg-delivery-rate-estimation
//! and Linux's `tcp_rate.c`.
//!
//! Every packet sent remembers how much had been delivered (acknowledged)
//! when it left, and when; its ack then tells how much was delivered while
//! it was in flight and over what interval. The interval is the longer of
//! the send interval (from the packet that opened the window of the sample
//! to this one) and the ack interval, so that neither a burst of sends nor
//! a burst of acks inflates the rate. Samples taken while the sender had
//! nothing to send (*application-limited*) say only that the path carries
//! at least that much; the controller treats them so.
//!
//! The state a packet leaves under changes only with acks, losses and idle
//! periods, so the packets sent in between (a reactor pass, a pacer's
//! train) share one snapshot of it: a packet stores the snapshot's number
//! and its own bytes in flight, eight bytes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What a packet remembers of the connection's delivery state when sent.
#[derive(Debug, Clone, Copy)]
pub(in crate::rudp::connection) struct RateMark {
    /// Number of the [`Snapshot`] it was sent under.
    snapshot: u32,
    /// Bytes in flight just after it was sent (itself included; saturating).
    tx_in_flight: u32,
}

/// The delivery state packets were sent under.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    /// Bytes delivered.
    delivered: u64,
    /// When the last of those was delivered (or the flight started).
    delivered_time: Instant,
    /// When the first packet of the sample window was sent.
    first_sent: Instant,
    /// Bytes declared lost.
    lost: u64,
    /// The application had nothing more to send.
    app_limited: bool,
}

/// One delivery-rate sample, from an ack.
#[derive(Debug, Clone, Copy)]
pub(in crate::rudp::connection) struct Sample {
    /// Bytes delivered over the sample's interval (the longer of its send
    /// and ack intervals; at least 1 µs).
    pub(in crate::rudp::connection) delivered: u64,
    /// `delivered / interval`, bytes per second; `None` when the interval
    /// is shorter than the minimum RTT (acks compressed: not a valid sample).
    pub(in crate::rudp::connection) rate: Option<u64>,
    /// The newest packet acked was sent application-limited.
    pub(in crate::rudp::connection) app_limited: bool,
    /// Bytes in flight when the newest packet acked was sent.
    pub(in crate::rudp::connection) tx_in_flight: u64,
    /// Bytes declared lost since the newest packet acked was sent.
    pub(in crate::rudp::connection) lost: u64,
    /// Connection's delivered bytes when the newest packet acked was sent.
    pub(in crate::rudp::connection) prior_delivered: u64,
    /// Connection's delivered bytes now.
    pub(in crate::rudp::connection) delivered_total: u64,
}

/// The connection's delivery state, the snapshots the packets in flight
/// were sent under, and the sample being built from the packets one ack
/// acknowledges.
#[derive(Debug)]
pub(in crate::rudp::connection) struct RateSampler {
    delivered: u64,
    delivered_time: Instant,
    first_sent: Instant,
    lost: u64,
    /// While non-zero: samples are application-limited until this much is
    /// delivered (the bubble left by having nothing to send is acked).
    app_limited_until: u64,
    /// Snapshots `base ..` (numbers wrap), oldest first.
    snapshots: VecDeque<Snapshot>,
    base: u32,
    /// The state changed since the newest snapshot.
    changed: bool,
    /// Number of the newest snapshot.
    current: u32,
    /// The newest packet acknowledged since the last sample, if any: its
    /// snapshot, bytes in flight, and when it was sent.
    newest: Option<(Snapshot, u32, Instant)>,
}

impl RateSampler {
    pub(in crate::rudp::connection) fn new(now: Instant) -> Self {
        RateSampler {
            delivered: 0,
            delivered_time: now,
            first_sent: now,
            lost: 0,
            app_limited_until: 0,
            snapshots: VecDeque::new(),
            base: 0,
            changed: true,
            current: 0,
            newest: None,
        }
    }

    /// A packet of `size` bytes is sent at `now` with `in_flight` bytes in
    /// flight before it: what it must remember.
    #[inline]
    pub(in crate::rudp::connection) fn on_sent(
        &mut self,
        now: Instant,
        in_flight: u64,
        size: u64,
    ) -> RateMark {
        if in_flight == 0 {
            // A new flight: its samples start now, not at the last ack
            // before the idle period.
            self.first_sent = now;
            self.delivered_time = now;
            self.changed = true;
        }
        if self.changed {
            self.changed = false;
            self.snapshots.push_back(Snapshot {
                delivered: self.delivered,
                delivered_time: self.delivered_time,
                first_sent: self.first_sent,
                lost: self.lost,
                app_limited: self.app_limited_until != 0,
            });
            self.current = self
                .base
                .wrapping_add(self.snapshots.len() as u32)
                .wrapping_sub(1);
        }
        RateMark {
            snapshot: self.current,
            tx_in_flight: (in_flight + size).min(u64::from(u32::MAX)) as u32,
        }
    }

    /// A packet of `size` bytes was acknowledged at `now`.
    #[inline]
    pub(in crate::rudp::connection) fn on_acked(&mut self, now: Instant, size: u64) {
        self.delivered += size;
        self.delivered_time = now;
        self.changed = true;
    }

    /// An acknowledged packet, sent at `sent` carrying `m`, that may be
    /// the newest acknowledged since the last sample: the sample is taken
    /// from the packet sent last (the most delivered when it left; of
    /// equals, the latest sent). The connection offers the first packet of
    /// each ack (acks are walked newest first).
    #[inline]
    pub(in crate::rudp::connection) fn offer(&mut self, sent: Instant, m: &RateMark) {
        let i = m.snapshot.wrapping_sub(self.base) as usize;
        let Some(&snap) = self.snapshots.get(i) else {
            return;
        };
        if self.newest.is_none_or(|(n, _, t)| {
            snap.delivered > n.delivered || (snap.delivered == n.delivered && sent > t)
        }) {
            self.newest = Some((snap, m.tx_in_flight, sent));
            self.first_sent = sent;
            self.changed = true;
        }
    }

    /// Forgets the snapshots older than `oldest`'s, the mark of the oldest
    /// packet kept (`None`: no packet is kept).
    pub(in crate::rudp::connection) fn release(&mut self, oldest: Option<&RateMark>) {
        let n = match oldest {
            Some(m) => (m.snapshot.wrapping_sub(self.base) as usize).min(self.snapshots.len()),
            None => {
                self.changed = true;
                self.snapshots.len()
            }
        };
        self.snapshots.drain(..n);
        self.base = self.base.wrapping_add(n as u32);
    }

    /// `size` bytes were declared lost.
    #[inline]
    pub(in crate::rudp::connection) fn on_lost(&mut self, size: u64) {
        self.lost += size;
        self.changed = true;
    }

    /// The sender had a chance to send and nothing to send (and room in its
    /// window): samples are application-limited until what is in flight
    /// now has been delivered.
    #[inline]
    pub(in crate::rudp::connection) fn on_app_limited(&mut self, in_flight: u64) {
        self.app_limited_until = (self.delivered + in_flight).max(1);
        self.changed = true;
    }

    /// The sample of the packets acknowledged since the last call, if any;
    /// `min_rtt` rejects intervals shorter than a round trip.
    pub(in crate::rudp::connection) fn take(&mut self, min_rtt: Duration) -> Option<Sample> {
        let (m, tx_in_flight, sent) = self.newest.take()?;
        if self.app_limited_until != 0 && self.delivered > self.app_limited_until {
            self.app_limited_until = 0;
            self.changed = true;
        }
        let delivered = self.delivered - m.delivered;
        let send_elapsed = sent.saturating_duration_since(m.first_sent);
        let ack_elapsed = self
            .delivered_time
            .saturating_duration_since(m.delivered_time);
        let interval = send_elapsed.max(ack_elapsed);
        // A zero interval (everything within one instant: the simulator's
        // zero-latency links) counts as 1 µs, the clock's resolution.
        let interval = interval.max(Duration::from_micros(1));
        let rate = (interval >= min_rtt).then(|| super::rate_of(delivered, interval));
        Some(Sample {
            delivered,
            rate,
            app_limited: m.app_limited,
            tx_in_flight: u64::from(tx_in_flight),
            lost: self.lost - m.lost,
            prior_delivered: m.delivered,
            delivered_total: self.delivered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(r: &mut RateSampler, now: Instant, sent: Instant, mark: &RateMark) {
        r.on_acked(now, 1000);
        r.offer(sent, mark);
    }

    /// Ten packets sent 1 ms apart, each acked 50 ms after it was sent: the
    /// rate is one packet per millisecond, whatever the RTT.
    #[test]
    fn paced_flight_measures_the_send_rate() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut r = RateSampler::new(t0);
        let mut marks = Vec::new();
        for i in 0..10u64 {
            marks.push((ms(i), r.on_sent(ms(i), i * 1000, 1000)));
        }
        let mut last = None;
        for (i, (sent, m)) in marks.iter().enumerate() {
            ack(&mut r, ms(50 + i as u64), *sent, m);
            last = r.take(Duration::from_millis(50));
        }
        let s = last.unwrap();
        // The last sample spans the acks of packets 0..=9 after the first:
        // 10 packets over max(9 ms send, 59 ms ack) since the flight start.
        assert_eq!(s.delivered, 10_000);
        assert_eq!(s.rate, Some(10_000 * 1000 / 59));
        assert!(!s.app_limited);
        assert_eq!(s.tx_in_flight, 10_000);
    }

    /// A sample spans the longer of its send and ack intervals, measured
    /// from the packet acked last before its flight began.
    #[test]
    fn a_sample_spans_the_longer_of_send_and_ack_intervals() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut r = RateSampler::new(t0);
        let a = r.on_sent(ms(0), 0, 1000);
        ack(&mut r, ms(10), ms(0), &a);
        r.take(Duration::from_millis(10)).unwrap();
        let b = r.on_sent(ms(10), 0, 1000);
        let c = r.on_sent(ms(30), 1000, 1000);
        // Both acked at once 10 ms after the second was sent.
        ack(&mut r, ms(40), ms(10), &b);
        ack(&mut r, ms(40), ms(30), &c);
        let s = r.take(Duration::from_millis(10)).unwrap();
        assert_eq!(s.delivered, 2000);
        assert_eq!(s.rate, Some(2000 * 1000 / 30));
    }

    /// Packets sent between two changes of the state share a snapshot;
    /// released snapshots are forgotten.
    #[test]
    fn packets_sent_without_a_change_share_a_snapshot() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut r = RateSampler::new(t0);
        let a = r.on_sent(ms(0), 0, 1000);
        let b = r.on_sent(ms(1), 1000, 1000);
        assert_eq!(a.snapshot, b.snapshot);
        assert_eq!(b.tx_in_flight, 2000);
        r.on_acked(ms(5), 1000);
        let c = r.on_sent(ms(5), 1000, 1000);
        assert_ne!(b.snapshot, c.snapshot);
        r.on_lost(1000);
        let d = r.on_sent(ms(5), 1000, 1000);
        assert_ne!(c.snapshot, d.snapshot);
        assert_eq!(r.snapshots.len(), 3);
        r.release(Some(&c));
        assert_eq!(r.snapshots.len(), 2);
        // A released snapshot is no sample; a kept one is.
        r.offer(ms(1), &b);
        assert!(r.take(Duration::ZERO).is_none());
        r.offer(ms(5), &d);
        assert_eq!(r.take(Duration::ZERO).unwrap().tx_in_flight, 2000);
        r.release(None);
        assert!(r.snapshots.is_empty());
        let e = r.on_sent(ms(9), 0, 1000);
        r.on_acked(ms(10), 1000);
        r.offer(ms(9), &e);
        assert_eq!(r.take(Duration::ZERO).unwrap().delivered, 1000);
    }

    #[test]
    fn app_limited_marks_until_the_bubble_is_delivered() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut r = RateSampler::new(t0);
        let a = r.on_sent(ms(0), 0, 1000);
        r.on_app_limited(1000);
        let b = r.on_sent(ms(1), 1000, 1000);
        ack(&mut r, ms(10), ms(0), &a);
        assert!(!r.take(Duration::ZERO).unwrap().app_limited);
        ack(&mut r, ms(11), ms(1), &b);
        assert!(r.take(Duration::ZERO).unwrap().app_limited);
        let c = r.on_sent(ms(12), 0, 1000);
        ack(&mut r, ms(22), ms(12), &c);
        assert!(!r.take(Duration::ZERO).unwrap().app_limited);
        // An interval shorter than the minimum RTT is not a rate.
        let d = r.on_sent(ms(30), 0, 1000);
        ack(&mut r, ms(31), ms(30), &d);
        assert_eq!(r.take(Duration::from_millis(5)).unwrap().rate, None);
        assert!(r.take(Duration::ZERO).is_none(), "one sample per ack");
    }
}

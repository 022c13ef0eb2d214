//! Congestion control: how much may be in flight and how fast it may go.
//!
//! A connection owns one [`Controller`], built from
//! [`CongestionControl`] (`RudpConfig::congestion`), and feeds it:
//!
//! - every packet sent ([`Controller::on_sent`]);
//! - every packet newly acknowledged ([`Controller::on_packet_acked`]), then
//!   once per ack a [`RateSample`]: bytes acked, a delivery-rate sample
//!   (`rate`), the RTT sample, what is in flight ([`Controller::on_ack`]);
//! - every packet declared lost ([`Controller::on_packet_lost`]), and the
//!   start of each *loss epoch* ([`Controller::on_congestion_event`]): at
//!   most one per round trip, the first loss of a packet sent after the
//!   previous epoch began, or a persistent retransmission timeout;
//! - an epoch found spurious — every loss in it acknowledged after all
//!   ([`Controller::on_spurious_congestion`]), to undo its response.
//!
//! and asks it for the window ([`Controller::window`], bytes) and the
//! pacing rate ([`Controller::pacing_rate`], bytes per second) that the
//! connection's pacer enforces. Congestion control is the sender's own
//! business: nothing of it is on the wire.
//!
//! The loss-epoch bookkeeping is shared ([`LossEpochs`]), so that every
//! controller gets the same "one response per round trip" and the same
//! undo of responses to spurious losses.

mod aimd;
mod bbr;
pub(super) mod rate;

use std::fmt;
use std::time::{Duration, Instant};

use crate::rudp::config::RudpConfig;
use crate::rudp::seq::seq_lt;

pub(super) use aimd::Aimd;
pub(super) use bbr::Bbr;

/// The congestion controller of a connection
/// ([`RudpConfig::congestion`](crate::rudp::RudpConfig::congestion)).
///
/// Congestion control is a sender's local choice: the two ends of a
/// connection may use different ones, and nothing changes on the wire.
/// Both are paced (`docs/rudp.md` §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CongestionControl {
    /// Model-based, of the BBR family (default): estimates the path's
    /// bottleneck bandwidth and minimum RTT from delivery-rate samples,
    /// paces at that bandwidth and keeps about one to two bandwidth-delay
    /// products in flight. Random loss on an unloaded path does not slow it
    /// down; loss together with a standing queue (the RTT well above its
    /// minimum) bounds it, as do retransmission timeouts.
    #[default]
    Bbr,
    /// Loss-based AIMD (NewReno-like) window in packets: slow start, then
    /// one packet more per window acked, halved on loss (once per round
    /// trip). Paced at 1.25 × window / smoothed RTT. Its throughput under
    /// random loss `p` is about `MSS / RTT × 1.22 / √p`.
    Aimd,
}

impl CongestionControl {
    /// A controller of this kind for a connection sending datagrams of at
    /// most `mtu` bytes; `seed` randomizes its probing (BBR).
    pub(super) fn build(
        self,
        cfg: &RudpConfig,
        mtu: usize,
        now: Instant,
        seed: u64,
    ) -> Box<dyn Controller> {
        match self {
            CongestionControl::Bbr => Box::new(Bbr::new(cfg, mtu as u64, now, seed)),
            CongestionControl::Aimd => Box::new(Aimd::new(cfg, mtu as u64)),
        }
    }
}

/// A packet newly acknowledged.
#[derive(Debug, Clone, Copy)]
pub(super) struct AckedPacket {
    /// It was sent before the current loss epoch began (its ack says
    /// nothing about the response to that loss).
    pub(super) in_recovery: bool,
    /// It was sent while the window was at least half used.
    pub(super) cwnd_limited: bool,
}

/// What one ack told, after its packets were processed and loss detection
/// ran.
#[derive(Debug, Clone, Copy)]
pub(super) struct RateSample {
    /// Bytes newly acknowledged by this ack.
    pub(super) acked: u64,
    /// The delivery-rate sample (see [`rate`]).
    pub(super) rate: rate::Sample,
    /// The ack's RTT sample (its largest packet number newly acknowledged),
    /// ack delay not subtracted; `None` if it had none.
    pub(super) rtt: Option<Duration>,
    /// Smallest RTT ever sampled on the connection.
    pub(super) min_rtt: Duration,
    /// Smoothed RTT.
    pub(super) srtt: Duration,
    /// Bytes in flight after this ack (and the losses it revealed).
    pub(super) in_flight: u64,
    /// Since the previous sample, data was waiting while the window was
    /// full: the flow is limited by its window.
    pub(super) window_full: bool,
}

/// A congestion controller (see the module docs for who calls what, when).
/// Windows are in bytes, rates in bytes per second.
pub(super) trait Controller: fmt::Debug + Send {
    /// Whether [`on_sent`](Self::on_sent) and
    /// [`on_packet_acked`](Self::on_packet_acked) are of use: they run for
    /// every packet, and are skipped for a controller that says no (what
    /// it needs of them comes with each [`RateSample`]).
    fn wants_packet_calls(&self) -> bool {
        true
    }

    /// A numbered packet of `bytes` was sent; `in_flight` bytes are in
    /// flight now, it included. Changes neither the window nor the pacing
    /// rate (they are read once per packet and cached between events).
    fn on_sent(&mut self, _now: Instant, _bytes: u64, _in_flight: u64) {}

    /// One packet was newly acknowledged (before the ack's [`on_ack`](Self::on_ack)).
    fn on_packet_acked(&mut self, _p: &AckedPacket) {}

    /// An ack was processed: its sample.
    fn on_ack(&mut self, now: Instant, rs: &RateSample);

    /// A packet of `bytes` was declared lost, `in_flight` bytes remain in flight.
    fn on_packet_lost(&mut self, _now: Instant, _bytes: u64, _in_flight: u64) {}

    /// A loss epoch began: the first loss of a packet sent after the
    /// previous epoch began (`persistent` false), or a persistent
    /// retransmission timeout (`persistent`: every packet in flight lost).
    fn on_congestion_event(&mut self, now: Instant, persistent: bool);

    /// Every loss of the current epoch was spurious: undo its response.
    fn on_spurious_congestion(&mut self) {}

    /// The datagram size was settled by the handshake.
    fn set_mtu(&mut self, mtu: u64);

    /// Bytes that may be in flight.
    fn window(&self) -> u64;

    /// Pacing rate, bytes per second.
    fn pacing_rate(&self) -> u64;

    /// The controller's estimate of the path's bandwidth, bytes per second
    /// (statistics).
    fn bandwidth(&self) -> u64;

    /// What it is doing, in a word (statistics, logs).
    fn state(&self) -> &'static str;
}

/// A connection's controller, with the outputs it reads for every packet
/// (window, pacing rate) cached and refreshed after each event that may
/// change them.
#[derive(Debug)]
pub(super) struct Cc {
    ctl: Box<dyn Controller>,
    window: u64,
    pacing_rate: u64,
    per_packet: bool,
    /// Data waited on a full window since the last sample.
    window_full: bool,
}

impl Cc {
    pub(super) fn new(ctl: Box<dyn Controller>) -> Self {
        let per_packet = ctl.wants_packet_calls();
        let mut cc = Cc {
            ctl,
            window: 0,
            pacing_rate: 0,
            per_packet,
            window_full: false,
        };
        cc.refresh();
        cc
    }

    fn refresh(&mut self) {
        self.window = self.ctl.window();
        self.pacing_rate = self.ctl.pacing_rate();
    }

    /// See [`Controller::window`].
    #[inline]
    pub(super) fn window(&self) -> u64 {
        self.window
    }

    /// See [`Controller::pacing_rate`].
    #[inline]
    pub(super) fn pacing_rate(&self) -> u64 {
        self.pacing_rate
    }

    /// The controller itself (statistics).
    pub(super) fn controller(&self) -> &dyn Controller {
        &*self.ctl
    }

    /// See [`Controller::on_sent`].
    #[inline]
    pub(super) fn on_sent(&mut self, now: Instant, bytes: u64, in_flight: u64) {
        if self.per_packet {
            self.ctl.on_sent(now, bytes, in_flight);
        }
    }

    /// Data is waiting and the window is full.
    #[inline]
    pub(super) fn on_window_full(&mut self) {
        self.window_full = true;
    }

    /// Whether [`on_packet_acked`](Self::on_packet_acked) is wanted.
    #[inline]
    pub(super) fn wants_packet_acks(&self) -> bool {
        self.per_packet
    }

    /// See [`Controller::on_packet_acked`].
    #[inline]
    pub(super) fn on_packet_acked(&mut self, p: &AckedPacket) {
        if self.per_packet {
            self.ctl.on_packet_acked(p);
            self.refresh();
        }
    }

    /// See [`Controller::on_ack`]; fills in
    /// [`RateSample::window_full`].
    pub(super) fn on_ack(&mut self, now: Instant, rs: &mut RateSample) {
        rs.window_full = core::mem::take(&mut self.window_full);
        self.ctl.on_ack(now, rs);
        self.refresh();
    }

    /// See [`Controller::on_packet_lost`].
    pub(super) fn on_packet_lost(&mut self, now: Instant, bytes: u64, in_flight: u64) {
        self.ctl.on_packet_lost(now, bytes, in_flight);
        self.refresh();
    }

    /// See [`Controller::on_congestion_event`].
    pub(super) fn on_congestion_event(&mut self, now: Instant, persistent: bool) {
        self.ctl.on_congestion_event(now, persistent);
        self.refresh();
    }

    /// See [`Controller::on_spurious_congestion`].
    pub(super) fn on_spurious_congestion(&mut self) {
        self.ctl.on_spurious_congestion();
        self.refresh();
    }

    /// See [`Controller::set_mtu`].
    pub(super) fn set_mtu(&mut self, mtu: u64) {
        self.ctl.set_mtu(mtu);
        self.refresh();
    }
}

/// Loss epochs: one congestion response per round trip, and the undo of a
/// response whose every loss turns out spurious (Eifel-style, RFC 3522 /
/// RFC 4015).
///
/// An epoch begins with the first loss of a packet sent after the previous
/// epoch began (the *recovery* period lasts until a packet sent after the
/// response is acknowledged), or with a persistent retransmission timeout.
#[derive(Debug, Default)]
pub(super) struct LossEpochs {
    /// Packets numbered before this were sent before the current response.
    recovery_start: Option<u32>,
    /// Number of the current epoch.
    epoch: u32,
    /// Losses of the current epoch, and how many turned out spurious
    /// (`None`: nothing to undo).
    undo: Option<(u32, u32)>,
    /// Epochs in a row without a spurious loss.
    clean_epochs: u32,
}

impl LossEpochs {
    /// Number of the current epoch.
    pub(super) fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Epochs in a row without a spurious loss (decays the reordering
    /// tolerance of loss detection).
    pub(super) fn clean_epochs(&self) -> u32 {
        self.clean_epochs
    }

    /// Packet `pn` was sent before the current response.
    #[inline]
    pub(super) fn in_recovery(&self, pn: u32) -> bool {
        self.recovery_start.is_some_and(|r| seq_lt(pn, r))
    }

    fn new_epoch(&mut self, lost: u32, next_pn: u32) {
        let clean = self.undo.is_none_or(|(_, spurious)| spurious == 0);
        self.clean_epochs = if clean { self.clean_epochs + 1 } else { 0 };
        self.epoch = self.epoch.wrapping_add(1);
        self.undo = Some((lost, 0));
        self.recovery_start = Some(next_pn);
    }

    /// Packet `pn` was lost (`next_pn`: the next to be sent). Returns true
    /// when this begins an epoch (the controller responds).
    pub(super) fn on_loss(&mut self, pn: u32, next_pn: u32) -> bool {
        if self.in_recovery(pn) {
            self.count_lost();
            return false;
        }
        self.new_epoch(1, next_pn);
        true
    }

    /// A persistent retransmission timeout begins an epoch; the packets it
    /// declares lost are counted with [`count_lost`](Self::count_lost).
    pub(super) fn on_rto(&mut self, next_pn: u32) {
        self.new_epoch(0, next_pn);
    }

    /// A packet lost within the current epoch.
    pub(super) fn count_lost(&mut self) {
        if let Some((lost, _)) = &mut self.undo {
            *lost += 1;
        }
    }

    /// A packet lost in epoch `epoch` was acknowledged after all. Returns
    /// true when every loss of the current epoch has now been found
    /// spurious: the response is to be undone (and recovery ends).
    pub(super) fn on_spurious(&mut self, epoch: u32) -> bool {
        if epoch != self.epoch {
            return false;
        }
        let Some((lost, spurious)) = &mut self.undo else {
            return false;
        };
        *spurious += 1;
        if *spurious < *lost {
            return false;
        }
        self.undo = None;
        self.recovery_start = None;
        true
    }
}

/// Bytes per second of `bytes` per `d` (saturating; `d` zero: `u64::MAX`).
/// In floating point: this runs for every ack, and a 128-bit division is
/// a slow library call.
#[inline]
pub(super) fn rate_of(bytes: u64, d: Duration) -> u64 {
    let secs = d.as_secs_f64();
    if secs <= 0.0 {
        return u64::MAX;
    }
    // `as` saturates (and maps NaN to 0).
    (bytes as f64 / secs) as u64
}

/// Bytes sent in `d` at `rate` bytes per second (saturating).
#[inline]
pub(super) fn bytes_in(rate: u64, d: Duration) -> u64 {
    (rate as f64 * d.as_secs_f64()) as u64
}

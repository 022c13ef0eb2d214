//! Congestion control: an AIMD window in packets.

use crate::rudp::config::RudpConfig;
use crate::rudp::seq::seq_lt;

/// What a congestion-window reduction replaced, to undo it if every loss
/// behind it turns out spurious.
#[derive(Debug, Clone, Copy)]
struct Undo {
    cwnd: u32,
    ssthresh: u32,
    /// Packets declared lost in this epoch.
    lost: u32,
    /// Of those, acknowledged afterwards.
    spurious: u32,
}

/// AIMD (NewReno-like) congestion window in packets, with undo of
/// reductions caused by spurious losses (Eifel-style, RFC 3522 / RFC 4015).
///
/// Halving on every loss epoch keeps the window small under heavy random
/// loss (about `sqrt(1.5 / p)` packets: ten or so at 10% loss); a gentler
/// decrease (CUBIC's β = 0.7) would help there.
#[derive(Debug)]
pub(super) struct Congestion {
    /// The window, packets.
    cwnd: u32,
    ssthresh: u32,
    acc: u32,
    recovery_start: Option<u32>,
    min: u32,
    max: u32,
    /// Number of the current loss epoch (one reduction each).
    epoch: u32,
    undo: Option<Undo>,
    /// Loss epochs in a row without a spurious loss (decays the
    /// reordering tolerance).
    clean_epochs: u32,
}

impl Congestion {
    pub(super) fn new(cfg: &RudpConfig) -> Self {
        Congestion {
            cwnd: cfg.initial_cwnd,
            ssthresh: cfg.max_in_flight,
            acc: 0,
            recovery_start: None,
            min: cfg.min_cwnd,
            max: cfg.max_in_flight,
            epoch: 0,
            undo: None,
            clean_epochs: 0,
        }
    }

    /// The congestion window, packets.
    pub(super) fn cwnd(&self) -> u32 {
        self.cwnd
    }

    /// Number of the current loss epoch.
    pub(super) fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Loss epochs in a row without a spurious loss.
    pub(super) fn clean_epochs(&self) -> u32 {
        self.clean_epochs
    }

    /// Starts a loss epoch: remembers what to restore.
    fn new_epoch(&mut self, lost: u32) {
        let clean = self.undo.is_none_or(|u| u.spurious == 0);
        self.clean_epochs = if clean { self.clean_epochs + 1 } else { 0 };
        self.epoch = self.epoch.wrapping_add(1);
        self.undo = Some(Undo {
            cwnd: self.cwnd,
            ssthresh: self.ssthresh,
            lost,
            spurious: 0,
        });
    }

    /// A packet lost without a reduction of its own (inside a recovery, or
    /// by a retransmission timeout).
    pub(super) fn count_lost(&mut self) {
        if let Some(u) = &mut self.undo {
            u.lost += 1;
        }
    }

    /// A packet of loss epoch `epoch` was acknowledged after all. Returns
    /// true when the reduction of that epoch was undone.
    pub(super) fn on_spurious(&mut self, epoch: u32) -> bool {
        if epoch != self.epoch {
            return false;
        }
        let Some(u) = &mut self.undo else {
            return false;
        };
        u.spurious += 1;
        if u.spurious < u.lost {
            return false;
        }
        let u = *u;
        self.undo = None;
        self.cwnd = self.cwnd.max(u.cwnd).min(self.max);
        self.ssthresh = self.ssthresh.max(u.ssthresh);
        self.recovery_start = None;
        self.acc = 0;
        true
    }

    fn in_recovery(&self, pn: u32) -> bool {
        self.recovery_start.is_some_and(|r| seq_lt(pn, r))
    }

    #[inline]
    pub(super) fn on_ack(&mut self, pn: u32, cwnd_limited: bool) {
        if self.in_recovery(pn) || !cwnd_limited {
            return;
        }
        if self.cwnd < self.ssthresh {
            self.cwnd += 1;
        } else {
            self.acc += 1;
            if self.acc >= self.cwnd {
                self.acc = 0;
                self.cwnd += 1;
            }
        }
        self.cwnd = self.cwnd.min(self.max);
    }

    pub(super) fn on_loss(&mut self, pn: u32, next_pn: u32) {
        if self.in_recovery(pn) {
            self.count_lost();
            return;
        }
        self.new_epoch(1);
        self.cwnd = (self.cwnd / 2).max(self.min);
        self.ssthresh = self.cwnd;
        self.acc = 0;
        self.recovery_start = Some(next_pn);
    }

    /// A retransmission timeout; the packets it declares lost are counted
    /// with [`count_lost`](Self::count_lost).
    pub(super) fn on_rto(&mut self, next_pn: u32) {
        self.new_epoch(0);
        self.ssthresh = (self.cwnd / 2).max(self.min);
        self.cwnd = self.min;
        self.acc = 0;
        self.recovery_start = Some(next_pn);
    }
}

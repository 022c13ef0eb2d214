//! AIMD: a NewReno-like window in packets (`CongestionControl::Aimd`).

use std::time::{Duration, Instant};

use super::{AckedPacket, Controller, RateSample};
use crate::rudp::config::RudpConfig;

/// AIMD (NewReno-like) congestion window in packets, with undo of
/// reductions caused by spurious losses (the connection's loss epochs say
/// when).
///
/// Slow start (+1 packet per packet acked) up to `ssthresh`, then +1 per
/// window of packets acked; growth only while the window is at least half
/// used and not for packets sent before the current loss response. Halved
/// at the start of each loss epoch; down to the minimum on a persistent
/// retransmission timeout. Paced at 1.25 × window / smoothed RTT.
///
/// Halving on every loss epoch keeps the window small under heavy random
/// loss (about `sqrt(1.5 / p)` packets: ten or so at 10% loss).
#[derive(Debug)]
pub(crate) struct Aimd {
    /// The window, packets.
    cwnd: u32,
    ssthresh: u32,
    acc: u32,
    min: u32,
    max: u32,
    /// The window and threshold before the current epoch's reduction.
    undo: Option<(u32, u32)>,
    mtu: u64,
    srtt: Duration,
}

impl Aimd {
    pub(crate) fn new(cfg: &RudpConfig, mtu: u64) -> Self {
        Aimd {
            cwnd: cfg.initial_cwnd,
            ssthresh: cfg.max_in_flight,
            acc: 0,
            min: cfg.min_cwnd,
            max: cfg.max_in_flight,
            undo: None,
            mtu,
            srtt: cfg.initial_rtt,
        }
    }
}

impl Controller for Aimd {
    #[inline]
    fn on_packet_acked(&mut self, p: &AckedPacket) {
        if p.in_recovery || !p.cwnd_limited {
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

    fn on_ack(&mut self, _now: Instant, rs: &RateSample) {
        self.srtt = rs.srtt;
    }

    fn on_congestion_event(&mut self, _now: Instant, persistent: bool) {
        self.undo = Some((self.cwnd, self.ssthresh));
        self.acc = 0;
        if persistent {
            self.ssthresh = (self.cwnd / 2).max(self.min);
            self.cwnd = self.min;
        } else {
            self.cwnd = (self.cwnd / 2).max(self.min);
            self.ssthresh = self.cwnd;
        }
    }

    fn on_spurious_congestion(&mut self) {
        if let Some((cwnd, ssthresh)) = self.undo.take() {
            self.cwnd = self.cwnd.max(cwnd).min(self.max);
            self.ssthresh = self.ssthresh.max(ssthresh);
            self.acc = 0;
        }
    }

    fn set_mtu(&mut self, mtu: u64) {
        self.mtu = mtu;
    }

    fn window(&self) -> u64 {
        u64::from(self.cwnd) * self.mtu
    }

    fn pacing_rate(&self) -> u64 {
        // 1.25 windows per smoothed RTT (RFC 9002 §7.7's N = 1.25).
        super::rate_of(self.window() * 5 / 4, self.srtt)
    }

    fn bandwidth(&self) -> u64 {
        super::rate_of(self.window(), self.srtt)
    }

    fn state(&self) -> &'static str {
        if self.cwnd < self.ssthresh {
            "slow_start"
        } else {
            "congestion_avoidance"
        }
    }
}

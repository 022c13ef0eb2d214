//! Round-trip time estimation (RFC 6298 / RFC 9002 §5).

use std::time::Duration;

/// Timer granularity assumed by RTT and loss computations.
pub(super) const GRANULARITY: Duration = Duration::from_millis(1);

/// Smoothed RTT, its variation and minimum, from the samples of acks.
#[derive(Debug)]
pub(super) struct RttEstimator {
    pub(super) srtt: Duration,
    pub(super) rttvar: Duration,
    pub(super) min_rtt: Option<Duration>,
    latest: Duration,
    pub(super) has_sample: bool,
}

impl RttEstimator {
    pub(super) fn new(initial: Duration) -> Self {
        RttEstimator {
            srtt: initial,
            rttvar: initial / 2,
            min_rtt: None,
            latest: initial,
            has_sample: false,
        }
    }

    /// RFC 6298 / RFC 9002 update. `ack_delay` is subtracted when it does not
    /// make the sample smaller than the minimum RTT.
    #[inline]
    pub(super) fn update(
        &mut self,
        sample: Duration,
        ack_delay: Duration,
        max_ack_delay: Duration,
    ) {
        self.latest = sample;
        let min = self.min_rtt.map_or(sample, |m| m.min(sample));
        self.min_rtt = Some(min);
        let ack_delay = ack_delay.min(max_ack_delay);
        let adjusted = if sample >= min + ack_delay {
            sample - ack_delay
        } else {
            sample
        };
        if !self.has_sample {
            self.has_sample = true;
            self.srtt = adjusted;
            self.rttvar = adjusted / 2;
        } else {
            let diff = self.srtt.abs_diff(adjusted);
            self.rttvar = (self.rttvar * 3 + diff) / 4;
            self.srtt = (self.srtt * 7 + adjusted) / 8;
        }
    }

    #[inline]
    pub(super) fn rto(
        &self,
        peer_max_ack_delay: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        (self.srtt + (self.rttvar * 4).max(GRANULARITY) + peer_max_ack_delay).clamp(min, max)
    }

    /// Time threshold of loss detection: 9/8 of the RTT (RFC 9002), or the
    /// reordering window learnt from spurious losses, whichever is larger.
    #[inline]
    pub(super) fn loss_delay(&self, reorder_window: Duration) -> Duration {
        (self.srtt.max(self.latest) * 9 / 8)
            .max(reorder_window)
            .max(GRANULARITY)
    }
}

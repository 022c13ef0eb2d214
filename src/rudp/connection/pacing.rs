//! Pacing: a token bucket that spreads the data packets of a connection
//! over time at the congestion controller's pacing rate.
//!
//! The bucket fills at the pacing rate up to a burst of
//! [`BURST_INTERVAL`] worth of it (at least [`MIN_BURST_PACKETS`]
//! datagrams). A data packet may go while a datagram's worth of tokens is
//! left. When the bucket runs dry the connection arms its pacing timer for
//! the moment half a burst has refilled, so that it wakes for a *train* of
//! datagrams, not for each one: at 200 Mbit/s a burst is 2 ms, about 40
//! datagrams of 1,200 bytes, and a wake-up sends about 20 — one UDP
//! segmentation-offload train, and little enough that a reactor waking in
//! whole milliseconds neither loses rate (the bucket holds two of its
//! ticks) nor sends a window at line rate (a window is a round trip of the
//! rate, and the burst 2 ms of it).
//!
//! Acks and probes are not paced (probes take tokens when there are some).

use std::time::{Duration, Instant};

/// The bucket holds this much of the pacing rate.
pub(super) const BURST_INTERVAL: Duration = Duration::from_millis(2);
/// … but at least this many datagrams.
pub(super) const MIN_BURST_PACKETS: u64 = 2;

/// A token bucket in bytes.
#[derive(Debug)]
pub(super) struct Pacer {
    /// Bytes that may be sent now (negative: owed, after a probe went
    /// out with too few).
    tokens: i64,
    /// The bucket's size at the last refill.
    cap: i64,
    /// Tokens have been earned up to here. Refills are lazy: a partly
    /// full bucket is brought up to date only when it runs short, which
    /// is exact as long as `last` moves whenever a packet leaves a full
    /// bucket (the time it sat full earned nothing).
    last: Instant,
}

impl Pacer {
    /// A pacer that lets `initial` bytes go at once (the initial window).
    pub(super) fn new(now: Instant, initial: u64) -> Self {
        let tokens = i64::try_from(initial).unwrap_or(i64::MAX);
        Pacer {
            tokens,
            cap: tokens,
            last: now,
        }
    }

    fn capacity(rate: u64, mtu: u64) -> i64 {
        let burst = (rate as f64 * BURST_INTERVAL.as_secs_f64()) as i64;
        burst.max((MIN_BURST_PACKETS * mtu) as i64)
    }

    fn refill(&mut self, now: Instant, rate: u64, mtu: u64) {
        let Some(dt) = now.checked_duration_since(self.last) else {
            return;
        };
        let cap = Self::capacity(rate, mtu);
        self.cap = cap;
        if self.tokens < cap {
            // (An initial allowance above the capacity stays until spent.)
            // Rounded: a wait computed for `n` bytes earns `n`.
            let add = (rate as f64 * dt.as_secs_f64()).round() as i64;
            self.tokens = self.tokens.saturating_add(add).min(cap);
        }
        self.last = now;
    }

    /// Whether a data packet of up to `mtu` bytes may be sent at `now`
    /// under `rate` (bytes per second); if not, when to try again: when
    /// half a burst will have refilled.
    #[inline]
    pub(super) fn check(&mut self, now: Instant, rate: u64, mtu: u64) -> Result<(), Instant> {
        if self.tokens >= mtu as i64 {
            if self.tokens >= self.cap {
                // Full: the time it sat full earned nothing.
                self.last = now;
            }
            return Ok(());
        }
        self.check_slow(now, rate, mtu)
    }

    #[cold]
    #[inline(never)]
    fn check_slow(&mut self, now: Instant, rate: u64, mtu: u64) -> Result<(), Instant> {
        self.refill(now, rate, mtu);
        if self.tokens >= mtu as i64 {
            return Ok(());
        }
        let cap = Self::capacity(rate, mtu);
        let want = (cap / 2).max(mtu as i64).min(cap);
        let need = want.saturating_sub(self.tokens).max(1);
        let nanos = (need as f64 * 1e9 / rate.max(1) as f64).ceil();
        let wait = Duration::try_from_secs_f64(nanos / 1e9)
            .unwrap_or(Duration::from_secs(1))
            .max(Duration::from_nanos(1));
        Err(now.checked_add(wait).unwrap_or(now))
    }

    /// `bytes` were sent (paced or not).
    #[inline]
    pub(super) fn on_sent(&mut self, bytes: u64) {
        // (Never near the range: at most a window owed.)
        self.tokens -= bytes as i64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At 6.25 MB/s (50 Mbit/s) with 1,200-byte datagrams, a second of
    /// sending whenever allowed, waking exactly at the deadlines, moves
    /// the rate (within one burst) in trains of about half a burst.
    #[test]
    fn paces_at_the_rate_in_trains() {
        let t0 = Instant::now();
        let rate = 6_250_000u64;
        let mtu = 1200u64;
        let mut p = Pacer::new(t0, 12_000);
        let mut now = t0;
        let mut sent = 0u64;
        let mut wakeups = 0u64;
        let end = t0 + Duration::from_secs(1);
        while now < end {
            match p.check(now, rate, mtu) {
                Ok(()) => {
                    p.on_sent(mtu);
                    sent += mtu;
                }
                Err(at) => {
                    assert!(at > now, "a deadline in the future");
                    now = at;
                    wakeups += 1;
                }
            }
        }
        let burst = Pacer::capacity(rate, mtu) as u64;
        assert!(
            sent.abs_diff(rate) <= burst + 12_000,
            "sent {sent} in 1 s at {rate} B/s"
        );
        // Half a burst (6,250 B, 5 datagrams) per wake-up.
        let per_wakeup = sent as f64 / wakeups as f64 / mtu as f64;
        assert!(
            (4.0..=6.0).contains(&per_wakeup),
            "{per_wakeup} per wake-up"
        );
    }

    /// A sender waking late (a reactor's millisecond rounding) loses no
    /// rate: the bucket holds two milliseconds.
    #[test]
    fn late_wakeups_within_the_burst_lose_nothing() {
        let t0 = Instant::now();
        let rate = 25_000_000u64; // 200 Mbit/s
        let mtu = 1200u64;
        let mut p = Pacer::new(t0, 0);
        let mut sent = 0u64;
        for ms in 1..=1000u64 {
            let now = t0 + Duration::from_micros(ms * 1000 + 700);
            while p.check(now, rate, mtu).is_ok() {
                p.on_sent(mtu);
                sent += mtu;
            }
        }
        // 1 s at 25 MB/s, less what the first 1.7 ms and the last partial
        // datagram leave.
        assert!(sent >= 24_900_000, "sent {sent}");
        assert!(sent <= 25_100_000, "sent {sent}");
    }

    /// Waking at the deadline always lets a datagram go (no wake-up that
    /// finds a byte short, whatever the rounding).
    #[test]
    fn the_deadline_is_never_a_byte_short() {
        let t0 = Instant::now();
        for rate in [
            1_000u64,
            332_400,
            1_234_567,
            6_250_000,
            25_000_000,
            999_999_937,
        ] {
            let mut p = Pacer::new(t0, 0);
            let mut now = t0;
            for _ in 0..200 {
                let at = p.check(now, rate, 1200).expect_err("empty");
                now = at;
                assert!(p.check(now, rate, 1200).is_ok(), "rate {rate}");
                while p.check(now, rate, 1200).is_ok() {
                    p.on_sent(1200);
                }
            }
        }
    }

    #[test]
    fn tiny_and_huge_rates_are_safe() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, 0);
        let at = p.check(t0, 1, 1200).unwrap_err();
        // 1,200 bytes at 1 B/s: twenty minutes.
        assert_eq!(at, t0 + Duration::from_secs(1200));
        let mut p = Pacer::new(t0, 0);
        let at = p.check(t0, u64::MAX, 1200).unwrap_err();
        assert!(at > t0);
        assert!(p.check(at, u64::MAX, 1200).is_ok());
    }
}

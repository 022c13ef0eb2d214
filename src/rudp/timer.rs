//! Per-connection timer table: one `Option<Instant>` per [`Timer`] kind,
//! indexed by the enum (no heap per connection).

use std::time::Instant;

/// The timers a connection runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// Client: retransmit INITIAL / ECHO.
    Handshake = 0,
    /// Delayed acknowledgement.
    Ack = 1,
    /// Time-threshold loss detection.
    Loss = 2,
    /// Retransmission timeout (probe timeout).
    Rto = 3,
    /// Send a PING when nothing ack-eliciting was sent for a while.
    Heartbeat = 4,
    /// Idle timeout (and handshake deadline): close with `Timeout`.
    Idle = 5,
    /// Tail-loss probe: send one probe packet before the RTO fires.
    Probe = 6,
    /// The pacer lets the next data packet go.
    Pace = 7,
}

/// Deadlines, one slot per [`Timer`], with the earliest cached (the owner
/// asks for it after every datagram).
#[derive(Debug, Clone, Default)]
pub(crate) struct TimerTable {
    deadlines: [Option<Instant>; 8],
    /// The earliest of `deadlines`.
    earliest: Option<Instant>,
    /// `earliest` changed since the last [`take_changed`](Self::take_changed).
    changed: bool,
}

impl TimerTable {
    pub(crate) fn set(&mut self, t: Timer, at: Instant) {
        let old = self.deadlines[t as usize].replace(at);
        if old == Some(at) {
            return;
        }
        if old.is_some() && old == self.earliest {
            self.recompute();
        } else if self.earliest.is_none_or(|e| at < e) {
            self.earliest = Some(at);
            self.changed = true;
        }
    }

    pub(crate) fn stop(&mut self, t: Timer) {
        if let Some(old) = self.deadlines[t as usize].take() {
            if Some(old) == self.earliest {
                self.recompute();
            }
        }
    }

    pub(crate) fn is_set(&self, t: Timer) -> bool {
        self.deadlines[t as usize].is_some()
    }

    pub(crate) fn stop_all(&mut self) {
        self.deadlines = [None; 8];
        self.recompute();
    }

    fn recompute(&mut self) {
        let e = self.deadlines.iter().flatten().min().copied();
        if e != self.earliest {
            self.earliest = e;
            self.changed = true;
        }
    }

    /// Earliest deadline of all.
    #[inline]
    pub(crate) fn next(&self) -> Option<Instant> {
        self.earliest
    }

    /// Whether [`next`](Self::next) changed since the last call.
    #[inline]
    pub(crate) fn take_changed(&mut self) -> bool {
        core::mem::take(&mut self.changed)
    }

    /// Clears and returns `t` if it is due at `now`.
    pub(crate) fn take_expired(&mut self, t: Timer, now: Instant) -> bool {
        match self.deadlines[t as usize] {
            Some(d) if d <= now => {
                self.stop(t);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn table_basics() {
        let now = Instant::now();
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        t.set(Timer::Rto, now + Duration::from_millis(5));
        t.set(Timer::Ack, now + Duration::from_millis(1));
        assert_eq!(t.next(), Some(now + Duration::from_millis(1)));
        assert!(!t.take_expired(Timer::Ack, now));
        assert!(t.take_expired(Timer::Ack, now + Duration::from_millis(1)));
        assert!(!t.take_expired(Timer::Ack, now + Duration::from_millis(1)));
        assert!(t.is_set(Timer::Rto));
        t.stop_all();
        assert_eq!(t.next(), None);
    }

    #[test]
    fn cached_earliest_follows_every_change() {
        let now = Instant::now();
        let ms = |n| now + Duration::from_millis(n);
        let mut t = TimerTable::default();
        assert!(!t.take_changed());
        t.set(Timer::Rto, ms(5));
        assert!(t.take_changed());
        t.set(Timer::Idle, ms(9));
        assert!(
            !t.take_changed(),
            "a later timer does not move the earliest"
        );
        assert_eq!(t.next(), Some(ms(5)));
        t.set(Timer::Rto, ms(7)); // the earliest moves later
        assert_eq!(t.next(), Some(ms(7)));
        assert!(t.take_changed());
        t.set(Timer::Ack, ms(1));
        t.stop(Timer::Ack);
        assert_eq!(t.next(), Some(ms(7)));
        assert!(t.take_expired(Timer::Rto, ms(8)));
        assert_eq!(t.next(), Some(ms(9)));
        t.stop(Timer::Idle);
        assert_eq!(t.next(), None);
        assert!(t.take_changed());
    }
}

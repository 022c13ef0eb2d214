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
}

/// Deadlines, one slot per [`Timer`].
#[derive(Debug, Clone, Default)]
pub(crate) struct TimerTable {
    deadlines: [Option<Instant>; 6],
}

impl TimerTable {
    pub(crate) fn set(&mut self, t: Timer, at: Instant) {
        self.deadlines[t as usize] = Some(at);
    }

    pub(crate) fn stop(&mut self, t: Timer) {
        self.deadlines[t as usize] = None;
    }

    pub(crate) fn is_set(&self, t: Timer) -> bool {
        self.deadlines[t as usize].is_some()
    }

    pub(crate) fn stop_all(&mut self) {
        self.deadlines = [None; 6];
    }

    /// Earliest deadline of all.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().min().copied()
    }

    /// Clears and returns `t` if it is due at `now`.
    pub(crate) fn take_expired(&mut self, t: Timer, now: Instant) -> bool {
        match self.deadlines[t as usize] {
            Some(d) if d <= now => {
                self.deadlines[t as usize] = None;
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
}

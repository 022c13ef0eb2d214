//! What one hostile source runs into: where a connection comes from, the
//! per-source counts listeners keep, the reactor-wide budget of bytes that
//! peers make it buffer, and the descriptor reserve.
//!
//! The resource model as a whole — every bound per peer, per source and
//! reactor-wide — is the table in `docs/security.md`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::ctx::TimerTarget;
use crate::handler::SocketId;
use crate::timer::{TimerKey, Timers};

pub(super) use crate::source::Source;

/// The source of a TCP peer: its IPv4 address, or its IPv6 address's
/// leading `v6_prefix` bits.
pub(super) fn source_of_ip(ip: IpAddr, v6_prefix: u8) -> Source {
    Source::of_ip(ip, 32, v6_prefix)
}

/// Open connections per source, for one listener. Entries go when their
/// count drops to zero: the map holds one entry per source with a live
/// connection, never more.
#[derive(Debug, Default)]
pub(super) struct PerSource(HashMap<Source, usize>);

impl PerSource {
    pub(super) fn count(&self, s: Source) -> usize {
        self.0.get(&s).copied().unwrap_or(0)
    }

    pub(super) fn add(&mut self, s: Source) {
        *self.0.entry(s).or_insert(0) += 1;
    }

    pub(super) fn remove(&mut self, s: Source) {
        if let Some(n) = self.0.get_mut(&s) {
            *n -= 1;
            if *n == 0 {
                self.0.remove(&s);
            }
        }
    }
}

/// The least a read may take when the budget is spent on a connection that
/// holds no partial frame (it may only complete frames and leave a short
/// tail): how far past the budget one connection can take the reactor.
pub(super) const MIN_READ: usize = 4096;

/// The reactor-wide budget of bytes peers make it buffer — TCP partial
/// frames and send queues — with a share per source.
///
/// A connection charges what it holds (capacity, not length) to its source
/// and to the reactor. Reads of a connection that holds a partial frame
/// pause while its source or the reactor has no room (TCP flow control then
/// pushes back on the peer); a send is refused with `WouldBlock` while the
/// connection already has data waiting for the kernel and there is no room.
/// A connection with no partial frame is read in pieces of at most the room
/// left (at least [`MIN_READ`]), so the budget is exceeded by at most that
/// much per connection.
#[derive(Debug)]
pub(super) struct Budget {
    limit: usize,
    per_source: usize,
    used: usize,
    peak: usize,
    by_source: HashMap<Source, usize>,
    /// Connections whose reads are paused for room, to retry when some is
    /// freed.
    paused: Vec<SocketId>,
}

impl Budget {
    pub(super) fn new(limit: usize, per_source: usize) -> Budget {
        Budget {
            limit,
            per_source: per_source.min(limit),
            used: 0,
            peak: 0,
            by_source: HashMap::new(),
            paused: Vec::new(),
        }
    }

    /// Moves `src`'s charge from `old` to `new` bytes; `true` if that freed
    /// room while readers wait for it.
    pub(super) fn charge(&mut self, src: Source, old: usize, new: usize) -> bool {
        if old == new {
            return false;
        }
        self.used = self.used - old.min(self.used) + new;
        self.peak = self.peak.max(self.used);
        let e = self.by_source.entry(src).or_insert(0);
        *e = *e - old.min(*e) + new;
        if *e == 0 {
            self.by_source.remove(&src);
        }
        new < old && !self.paused.is_empty()
    }

    /// Bytes `src` may still make the reactor hold.
    pub(super) fn room(&self, src: Source) -> usize {
        let mine = self.by_source.get(&src).copied().unwrap_or(0);
        self.limit
            .saturating_sub(self.used)
            .min(self.per_source.saturating_sub(mine))
    }

    /// Remembers a connection paused for room.
    pub(super) fn pause(&mut self, id: SocketId) {
        if !self.paused.contains(&id) {
            self.paused.push(id);
        }
    }

    /// The paused connections, to try again.
    pub(super) fn take_paused(&mut self) -> Vec<SocketId> {
        std::mem::take(&mut self.paused)
    }

    pub(super) fn used(&self) -> usize {
        self.used
    }

    pub(super) fn peak(&self) -> usize {
        self.peak
    }
}

/// A connection's inactivity timer (`idle_timeout`): one entry in the
/// reactor's timer heap per connection, re-armed lazily — activity only
/// moves `last`; when the timer fires early it is set again for the real
/// deadline.
#[derive(Debug)]
pub(super) struct Idle {
    timeout: Duration,
    last: Instant,
    key: Option<TimerKey>,
}

impl Idle {
    pub(super) fn new(timeout: Duration, now: Instant) -> Idle {
        Idle {
            timeout,
            last: now,
            key: None,
        }
    }

    /// Something was received or sent.
    pub(super) fn touch(&mut self, now: Instant) {
        self.last = now;
    }

    /// Arms the timer if it is not.
    pub(super) fn arm(&mut self, timers: &mut Timers<TimerTarget>, id: SocketId) {
        if self.key.is_none() {
            let at = self.last + self.timeout;
            self.key = Some(timers.insert(at, TimerTarget::Idle(id)));
        }
    }

    /// The timer fired: `true` if the connection has been idle for the
    /// whole timeout; otherwise the timer is set for the new deadline.
    pub(super) fn expired(
        &mut self,
        now: Instant,
        timers: &mut Timers<TimerTarget>,
        id: SocketId,
    ) -> bool {
        self.key = None;
        if self.last + self.timeout <= now {
            return true;
        }
        self.arm(timers, id);
        false
    }

    /// The connection closes: its timer goes.
    pub(super) fn cancel(&mut self, timers: &mut Timers<TimerTarget>) {
        if let Some(key) = self.key.take() {
            timers.cancel(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn tcp_sources_are_whole_ipv4_addresses() {
        let s = |a: [u8; 4]| source_of_ip(IpAddr::V4(Ipv4Addr::from(a)), 64);
        assert_ne!(s([127, 0, 0, 1]), s([127, 0, 0, 2]));
        let v6: Ipv6Addr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let w6: Ipv6Addr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(source_of_ip(v6.into(), 64), source_of_ip(w6.into(), 64));
    }

    #[test]
    fn per_source_counts_forget_sources_at_zero() {
        let mut p = PerSource::default();
        let s = Source::Uid(7);
        p.add(s);
        p.add(s);
        p.remove(s);
        assert_eq!(p.count(s), 1);
        p.remove(s);
        assert_eq!(p.count(s), 0);
        assert!(p.0.is_empty());
    }

    #[test]
    fn the_budget_shares_room_per_source_and_reports_freed_room() {
        let mut b = Budget::new(100, 40);
        let (x, y) = (Source::Uid(1), Source::Uid(2));
        assert!(!b.charge(x, 0, 40));
        assert_eq!(b.room(x), 0);
        assert_eq!(b.room(y), 40);
        b.charge(y, 0, 40);
        assert_eq!(b.room(Source::Uid(3)), 20);
        b.pause(SocketId { index: 1, gen: 1 });
        assert!(b.charge(x, 40, 10), "freed room with a reader waiting");
        assert_eq!(b.take_paused().len(), 1);
        assert_eq!((b.used(), b.peak()), (50, 80));
        b.charge(x, 10, 0);
        assert!(!b.by_source.contains_key(&x));
    }
}

//! What one source may hold of an endpoint, and what all of them may: the
//! per-source table, the admission of handshakes and half-open eviction,
//! and the receive and send budgets (`docs/rudp.md` §3, §6, §11; the
//! table is `docs/security.md`).
//!
//! A source is an IPv4 or IPv6 prefix (`RudpConfig::source_prefix_v4`,
//! `source_prefix_v6`). Its entry lives while one of its connections does.

use std::net::SocketAddr;
use std::time::Instant;

use log::debug;

use super::{
    Connection, ConnectionHandle, Endpoint, SourceKey, CLOSE_RESOURCE_LIMIT, MAX_STATELESS_QUEUE,
    RECLAIM_INTERVAL,
};
use crate::rudp::wire::{field, CloseCode, PacketRepr};
use crate::rudp::{RudpCloseReason, RudpError, SendError};

/// What one source holds.
#[derive(Debug)]
pub(super) struct Source {
    pub(super) key: SourceKey,
    /// Live connections (either side): the entry goes when this is 0.
    pub(super) entries: u32,
    /// Live server connections (half-open included).
    pub(super) accepted: u32,
    /// Half-open server connections.
    pub(super) half_open: u32,
    /// Bytes the receive sides of its connections hold.
    pub(super) held: usize,
    /// Bytes the send queues of its connections hold, and their leases.
    pub(super) send_held: usize,
}

/// The most of the send budgets a connection reserves ahead of its sends
/// (see [`Endpoint::take_send_lease`]).
const SEND_LEASE: usize = 64 << 10;

impl Endpoint {
    pub(super) fn source_key(&self, addr: &SocketAddr) -> SourceKey {
        SourceKey::of_ip(
            addr.ip(),
            self.cfg.source_prefix_v4,
            self.cfg.source_prefix_v6,
        )
    }

    /// The source entry of `key`, created if need be.
    pub(super) fn source_of(&mut self, key: SourceKey) -> u32 {
        if let Some(&i) = self.source_index.get(&key) {
            return i;
        }
        let src = Source {
            key,
            entries: 0,
            accepted: 0,
            half_open: 0,
            held: 0,
            send_held: 0,
        };
        let i = match self.free_sources.pop() {
            Some(i) => {
                if let Some(s) = self.sources.get_mut(i as usize) {
                    *s = src;
                }
                i
            }
            None => {
                self.sources.push(src);
                (self.sources.len() - 1) as u32
            }
        };
        self.source_index.insert(key, i);
        i
    }

    /// Adds `held - old` to a source's and the endpoint's totals.
    pub(super) fn recharge(&mut self, source: u32, old: usize, held: usize) {
        self.recv_held = self.recv_held - old + held;
        self.stats.recv_bytes_held_peak =
            self.stats.recv_bytes_held_peak.max(self.recv_held as u64);
        if let Some(src) = self.sources.get_mut(source as usize) {
            let was = src.held;
            src.held = src.held - old + held;
            match (was, src.held) {
                (0, 1..) => self.sources_holding += 1,
                (1.., 0) => self.sources_holding -= 1,
                _ => {}
            }
        }
    }

    /// Brings the endpoint's view of connection `idx` up to date: the
    /// bytes its receive side holds and its budget events. Returns how
    /// many bytes it was starved of, if any (see `BudgetEvents::starved`).
    #[inline]
    pub(super) fn sync(&mut self, idx: u32) -> Option<usize> {
        self.sync_both(idx, false)
    }

    /// [`sync`](Self::sync), and with `send` the send queue's charge too
    /// ([`sync_send`](Self::sync_send)): one lookup for both after a
    /// datagram or a timeout.
    #[inline(always)]
    pub(super) fn sync_both(&mut self, idx: u32, send: bool) -> Option<usize> {
        let e = self.entry_at(idx)?;
        let held = e.conn.recv_held();
        let queued = if send {
            e.conn.send_queue_len().0
        } else {
            e.send_charged
        };
        // The common case after a datagram: nothing to move.
        if held == e.charged && queued == e.send_charged && !e.conn.has_budget_events() {
            return None;
        }
        self.apply_sync(idx, held, queued)
    }

    /// The charges of [`sync_both`](Self::sync_both) when something
    /// changed.
    fn apply_sync(&mut self, idx: u32, held: usize, queued: usize) -> Option<usize> {
        let e = self.entry_at(idx)?;
        let ev = e.conn.take_budget_events();
        let source = e.source;
        let old = std::mem::replace(&mut e.charged, held);
        let old_queued = std::mem::replace(&mut e.send_charged, queued);
        if held != old {
            self.recharge(source, old, held);
        }
        if queued != old_queued {
            self.recharge_queue(idx, source, old_queued, queued);
        }
        let ev = ev?;
        self.stats.recv_budget_drops += ev.drops;
        self.stats.recv_budget_refusals += ev.refusals;
        Some(ev.starved).filter(|&n| n > 0)
    }

    /// Adds `held - old` to a source's and the endpoint's send totals, and
    /// owes `Writable` to the connections a send budget refused once both
    /// totals have drained to half.
    pub(super) fn recharge_send(&mut self, source: u32, old: usize, held: usize) {
        self.send_held = self.send_held - old + held;
        self.stats.send_bytes_held_peak =
            self.stats.send_bytes_held_peak.max(self.send_held as u64);
        if let Some(src) = self.sources.get_mut(source as usize) {
            src.send_held = src.send_held - old + held;
        }
        if held < old
            && !self.send_waiters.is_empty()
            && self.send_held * 2 <= self.cfg.max_endpoint_send_bytes
        {
            self.wake_senders();
        }
    }

    /// Queues `Writable` for every connection refused a send whose source
    /// has drained to half its budget; the others keep waiting.
    #[cold]
    pub(super) fn wake_senders(&mut self) {
        let mut waiters = std::mem::take(&mut self.send_waiters);
        let half = self.cfg.max_source_send_bytes / 2;
        let mut woken = Vec::new();
        waiters.retain(|&(idx, generation)| {
            let Some(slot) = self.slots.get_mut(idx as usize) else {
                return false;
            };
            if slot.generation != generation {
                return false;
            }
            let Some(e) = slot.entry.as_deref_mut() else {
                return false;
            };
            let src_held = self
                .sources
                .get(e.source as usize)
                .map_or(0, |s| s.send_held);
            if src_held > half {
                return true;
            }
            e.send_waiting = false;
            e.conn.notify_writable();
            woken.push(idx);
            false
        });
        self.send_waiters = waiters;
        for idx in woken {
            self.refile(idx, false);
        }
    }

    /// Brings the endpoint's view of connection `idx`'s send queue up to
    /// date.
    #[inline]
    pub(super) fn sync_send(&mut self, idx: u32) {
        let Some(e) = self.entry_at(idx) else {
            return;
        };
        let held = e.conn.send_queue_len().0;
        if held != e.send_charged {
            let (old, source) = (e.send_charged, e.source);
            e.send_charged = held;
            self.recharge_queue(idx, source, old, held);
        }
    }

    /// Whether a valid ECHO from `from` may create a connection: the
    /// per-source limits, then the endpoint's; a full half-open table
    /// evicts the oldest half-open connection of the source holding the
    /// most when `from`'s source holds less than its share.
    pub(super) fn admit(&mut self, from: SocketAddr, now: Instant) -> Result<(), RudpError> {
        let key = self.source_key(&from);
        let (accepted, half_open) = self
            .source_index
            .get(&key)
            .and_then(|&i| self.sources.get(i as usize))
            .map_or((0, 0), |s| (s.accepted as usize, s.half_open as usize));
        if accepted >= self.cfg.max_connections_per_source {
            self.stats.refused_per_source += 1;
            return Err(RudpError::TooManyConnections);
        }
        if half_open >= self.cfg.max_half_open_per_source {
            self.stats.refused_half_open_per_source += 1;
            return Err(RudpError::TooManyConnections);
        }
        if self.live >= self.cfg.max_connections {
            self.stats.refused_connections += 1;
            return Err(RudpError::TooManyConnections);
        }
        if self.half_open >= self.cfg.max_half_open && !self.evict_half_open(key, half_open, now) {
            self.stats.refused_half_open += 1;
            return Err(RudpError::TooManyConnections);
        }
        Ok(())
    }

    /// The half-open table is full and a source holding `holds` of them
    /// wants one more: when that is less than its share (the table divided
    /// among the sources holding some, itself included), the oldest
    /// half-open connection of the source holding the most is closed, if
    /// that source holds more than its share. Returns whether one was.
    pub(super) fn evict_half_open(&mut self, key: SourceKey, holds: usize, now: Instant) -> bool {
        let mut holding = usize::from(holds == 0);
        let mut top: Option<(usize, u32)> = None;
        for (&k, &i) in &self.source_index {
            let Some(src) = self.sources.get(i as usize) else {
                continue;
            };
            let n = src.half_open as usize;
            if n == 0 {
                continue;
            }
            holding += 1;
            if k != key && top.is_none_or(|(m, _)| n > m) {
                top = Some((n, i));
            }
        }
        let share = (self.cfg.max_half_open / holding.max(1)).max(1);
        let Some((most, victim)) = top else {
            return false;
        };
        if holds >= share || most <= share {
            return false;
        }
        // Its oldest half-open connection.
        while let Some(&(i, g)) = self.half_open_order.front() {
            if self.is_half_open(i, g) {
                break;
            }
            self.half_open_order.pop_front();
        }
        let found = self.half_open_order.iter().position(|&(i, g)| {
            self.is_half_open(i, g)
                && self
                    .slots
                    .get(i as usize)
                    .and_then(|s| s.entry.as_ref())
                    .is_some_and(|e| e.source == victim)
        });
        let Some((idx, _)) = found.and_then(|p| self.half_open_order.remove(p)) else {
            return false;
        };
        debug!("rudp: evicting half-open connection in slot {idx}");
        self.end_connection(idx, RudpCloseReason::Evicted, now);
        self.stats.half_open_evicted += 1;
        true
    }

    pub(super) fn is_half_open(&self, idx: u32, generation: u32) -> bool {
        self.slots.get(idx as usize).is_some_and(|s| {
            s.generation == generation && s.entry.as_ref().is_some_and(|e| e.half_open)
        })
    }

    /// Closes connection `idx` at once for `reason`, freeing what it
    /// received, and tells the peer with a CLOSE (resource limit).
    pub(super) fn end_connection(&mut self, idx: u32, reason: RudpCloseReason, _now: Instant) {
        let Some(e) = self.entry_at(idx) else {
            return;
        };
        if e.conn.is_closed() {
            return;
        }
        let (remote, conn_id) = (e.remote, e.conn.conn_id());
        e.conn.abort(reason);
        let mut out = [0u8; field::CHALLENGE_LEN];
        let close = PacketRepr::Close {
            conn_id,
            reason: CloseCode::Other(CLOSE_RESOURCE_LIMIT),
        };
        match close.emit(&mut out) {
            Ok(n) if self.stateless.len() < MAX_STATELESS_QUEUE => {
                self.stateless.push_back((remote, out, n));
            }
            _ => self.stats.stateless_dropped += 1,
        }
        self.sync(idx);
        self.touched(idx);
    }

    /// Connection `idx` was refused `need` bytes by the endpoint's or its
    /// source's receive budget. When the endpoint's is what is short and
    /// the connection's source holds less than its fair share (the budget
    /// divided among the sources holding some), room is made elsewhere: idle
    /// buffers kept for reuse are freed, then unreliable partial
    /// reassemblies (largest holders first), then, as a last resort, the
    /// connection holding the most of the source holding the most (if that
    /// source holds more than its share) is closed. The refused data comes
    /// again (reliable data is retransmitted).
    pub(super) fn reclaim(&mut self, idx: u32, need: usize, now: Instant) {
        if self
            .last_reclaim
            .is_some_and(|t| now < t + RECLAIM_INTERVAL && now >= t)
        {
            return;
        }
        let limit = self.cfg.max_endpoint_recv_bytes;
        let short = (self.recv_held + need).saturating_sub(limit);
        if short == 0 {
            // Its source's budget, not the endpoint's: its own business.
            return;
        }
        let Some(source) = self
            .slots
            .get(idx as usize)
            .and_then(|s| s.entry.as_ref())
            .map(|e| e.source)
        else {
            return;
        };
        let holds = self.sources.get(source as usize).map_or(0, |s| s.held);
        let share = limit / (self.sources_holding + usize::from(holds == 0)).max(1);
        if holds >= share {
            return;
        }
        self.last_reclaim = Some(now);
        let start = self.recv_held;
        let freed = |ep: &Self| start.saturating_sub(ep.recv_held);
        // Idle buffers, and who holds unreliable partials.
        let mut unrel = Vec::new();
        for i in 0..self.slots.len() as u32 {
            let Some(e) = self.entry_at(i) else {
                continue;
            };
            e.conn.release_idle();
            let u = e.conn.unreliable_held();
            if u > 0 {
                unrel.push((u, i));
            }
            self.sync(i);
        }
        unrel.sort_unstable_by(|a, b| b.cmp(a));
        for (_, i) in unrel {
            if freed(self) >= short {
                break;
            }
            if let Some(e) = self.entry_at(i) {
                e.conn.drop_unreliable_partials();
            }
            self.sync(i);
        }
        if freed(self) >= short {
            return;
        }
        // The last resort.
        let Some((most, victim_source)) = self
            .source_index
            .values()
            .filter_map(|&i| self.sources.get(i as usize).map(|s| (s.held, i)))
            .max()
        else {
            return;
        };
        if most <= share || victim_source == source {
            return;
        }
        let victim = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let e = s.entry.as_ref()?;
                (e.source == victim_source && !e.conn.is_closed()).then_some((e.charged, i as u32))
            })
            .max();
        if let Some((_, v)) = victim {
            debug!("rudp: receive budget exhausted: closing the connection in slot {v}");
            self.end_connection(v, RudpCloseReason::OverBudget, now);
            self.stats.closed_over_budget += 1;
        }
    }

    /// Runs `f` if `bytes` more fit the send budget `peer` reserved ahead
    /// (its lease: no total needs touching); gives `f` back if not.
    #[inline(always)]
    pub(super) fn try_send<F: FnOnce(&mut Connection) -> Result<(), SendError>>(
        &mut self,
        peer: ConnectionHandle,
        bytes: usize,
        f: F,
    ) -> Result<Result<(), SendError>, F> {
        let Some(e) = self.entry_mut(peer) else {
            return Ok(Err(SendError::UnknownPeer));
        };
        if bytes > e.send_lease {
            return Err(f);
        }
        if let Err(err) = f(&mut e.conn) {
            return Ok(Err(err));
        }
        // A send queues exactly its bytes, charged already as its lease.
        e.send_lease -= bytes;
        e.send_charged += bytes;
        debug_assert_eq!(e.send_charged, e.conn.send_queue_len().0);
        if !e.in_transmit_queue {
            e.in_transmit_queue = true;
            self.transmit_queue.push_back(peer.index);
        }
        self.send_leased -= bytes;
        Ok(Ok(()))
    }

    /// Extends `peer`'s lease to cover a send of `bytes`, if they fit its
    /// source's and the endpoint's send budgets. While both budgets are
    /// less than three quarters used and no connection waits for room, the
    /// lease takes up to [`SEND_LEASE`] more (an eighth of the room left
    /// at most), so that the next sends need not look at the totals. (A
    /// refusal takes every lease back first, so while connections wait,
    /// the totals are exactly what is queued, and they are woken as
    /// before.)
    pub(super) fn take_send_lease(
        &mut self,
        peer: ConnectionHandle,
        bytes: usize,
    ) -> Result<bool, SendError> {
        let (max_ep, max_src) = (
            self.cfg.max_endpoint_send_bytes,
            self.cfg.max_source_send_bytes,
        );
        let e = self.entry(peer).ok_or(SendError::UnknownPeer)?;
        let (lease, source) = (e.send_lease, e.source as usize);
        let src_held = self.sources.get(source).map_or(0, |s| s.send_held);
        let need = bytes.saturating_sub(lease);
        let ep_room = max_ep.saturating_sub(self.send_held);
        let src_room = max_src.saturating_sub(src_held);
        if need > ep_room.min(src_room) {
            return Ok(false);
        }
        let extra =
            if ep_room >= max_ep / 4 && src_room >= max_src / 4 && self.send_waiters.is_empty() {
                SEND_LEASE
                    .min((ep_room - need) / 8)
                    .min((src_room - need) / 8)
            } else {
                0
            };
        let grant = need + extra;
        if let Some(e) = self.entry_mut(peer) {
            e.send_lease += grant;
        }
        if let Some(src) = self.sources.get_mut(source) {
            src.send_held += grant;
        }
        self.send_held += grant;
        self.send_leased += grant;
        self.stats.send_bytes_held_peak =
            self.stats.send_bytes_held_peak.max(self.send_held as u64);
        Ok(true)
    }

    /// Connection `idx`'s queue went from `old` to `queued` bytes: the
    /// totals follow, and an emptied queue gives its lease back too.
    fn recharge_queue(&mut self, idx: u32, source: u32, old: usize, queued: usize) {
        let mut lease = 0;
        if queued == 0 {
            if let Some(e) = self.entry_at(idx) {
                lease = std::mem::take(&mut e.send_lease);
            }
            self.send_leased -= lease;
        }
        self.recharge_send(source, old + lease, queued);
    }

    /// Takes back every connection's lease (a send found no room while
    /// some was reserved).
    #[cold]
    fn reclaim_send_leases(&mut self) {
        for s in self.slots.iter_mut() {
            let Some(e) = s.entry.as_deref_mut() else {
                continue;
            };
            let lease = std::mem::take(&mut e.send_lease);
            if lease > 0 {
                if let Some(src) = self.sources.get_mut(e.source as usize) {
                    src.send_held -= lease;
                }
                self.send_held -= lease;
            }
        }
        self.send_leased = 0;
    }

    /// A send beyond `peer`'s lease: syncs the connection's charge and
    /// extends the lease, taking the others' back if that is what it
    /// takes.
    #[cold]
    pub(super) fn send_room(
        &mut self,
        peer: ConnectionHandle,
        bytes: usize,
        lens: impl Iterator<Item = usize>,
    ) -> Result<(), SendError> {
        self.sync_send(peer.index);
        if self.take_send_lease(peer, bytes)? {
            return Ok(());
        }
        if self.send_leased > 0 {
            self.reclaim_send_leases();
            if self.take_send_lease(peer, bytes)? {
                return Ok(());
            }
        }
        self.refuse_send(peer, lens)
    }

    /// A send over a budget: the connection's own verdict if it has one
    /// other than "wait" (closed, too large), else `QueueFull` and
    /// `Writable` owed.
    #[cold]
    pub(super) fn refuse_send(
        &mut self,
        peer: ConnectionHandle,
        lens: impl Iterator<Item = usize>,
    ) -> Result<(), SendError> {
        let e = self.entry_mut(peer).ok_or(SendError::UnknownPeer)?;
        e.conn.check_sendable(lens)?;
        let first = !std::mem::replace(&mut e.send_waiting, true);
        self.stats.send_budget_refusals += 1;
        if first {
            self.send_waiters.push((peer.index, peer.generation));
        }
        Err(SendError::QueueFull)
    }
}

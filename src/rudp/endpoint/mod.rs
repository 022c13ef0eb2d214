//! Many connections on one UDP socket.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use log::{debug, trace};

use crate::source::Source as SourceKey;

use super::connection::{Connection, InPlace, RawEvent};
use super::rng::{siphash24, Rng};
use super::wire::{field, PacketRepr};
mod limits;

use limits::Source;

use super::{ConnectionStats, Event, EventRef, Guarantee, RudpConfig, RudpError, SendError};

/// Stateless responses (CHALLENGE, and the CLOSE of a connection the
/// endpoint ended) queued at most; more are dropped.
const MAX_STATELESS_QUEUE: usize = 256;

/// CLOSE reason sent when the endpoint ends a connection for want of room
/// (half-open eviction, receive budget): "resource limit".
pub(crate) const CLOSE_RESOURCE_LIMIT: u8 = 2;

/// A starved connection makes the endpoint look for room elsewhere at most
/// this often (each look is a pass over the connections).
const RECLAIM_INTERVAL: Duration = Duration::from_millis(1);

/// Identifies a connection of an [`Endpoint`]. Carries a generation: once the
/// connection is gone, its id is rejected even if the slot is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionHandle {
    index: u32,
    generation: u32,
}

impl ConnectionHandle {
    /// Slot index (stable while the connection lives; reused afterwards).
    pub fn index(&self) -> u32 {
        self.index
    }
}

/// A datagram to send: `buf[..len]` of the buffer passed to
/// [`Endpoint::poll_transmit`], to `dest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub dest: SocketAddr,
    /// How many bytes of the buffer to send.
    pub len: usize,
}

/// Endpoint-wide counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// Datagrams passed to `handle_datagram`.
    pub datagrams_received: u64,
    /// Datagrams that did not parse.
    pub malformed: u64,
    /// Datagrams for no known connection (and not a handshake start).
    pub unknown_connection: u64,
    /// CHALLENGEs sent.
    pub challenges_sent: u64,
    /// Stateless responses dropped because their queue was full.
    pub stateless_dropped: u64,
    /// ECHOs with a wrong or expired cookie.
    pub invalid_cookies: u64,
    /// ECHOs refused, whatever the limit (the sum of the `refused_*`
    /// counters).
    pub refused: u64,
    /// ECHOs refused because `max_connections` connections were live.
    pub refused_connections: u64,
    /// ECHOs refused because `max_half_open` connections were half-open and
    /// none could be evicted (no source held more than its share).
    pub refused_half_open: u64,
    /// ECHOs refused because their source had `max_connections_per_source`
    /// server connections.
    pub refused_per_source: u64,
    /// ECHOs refused because their source had `max_half_open_per_source`
    /// half-open connections.
    pub refused_half_open_per_source: u64,
    /// Half-open connections closed (`RudpCloseReason::Evicted`) to make
    /// room for a handshake from a source holding fewer.
    pub half_open_evicted: u64,
    /// Unreliable messages or partial reassemblies dropped for a receive
    /// budget (summed over connections, and those the endpoint dropped to
    /// make room for another source).
    pub recv_budget_drops: u64,
    /// Reliable chunks refused (left unacknowledged) for a receive budget,
    /// summed over connections.
    pub recv_budget_refusals: u64,
    /// Connections closed because the endpoint's receive budget was
    /// exhausted (`RudpCloseReason::OverBudget`): the last resort.
    pub closed_over_budget: u64,
    /// Bytes held now by the receive side of every connection (see
    /// `ConnectionStats::recv_bytes_held`); at most
    /// `max_endpoint_recv_bytes`.
    pub recv_bytes_held: u64,
    /// Most bytes ever held at once by the receive side of the connections.
    pub recv_bytes_held_peak: u64,
    /// Sends refused (`SendError::QueueFull`) because the source's
    /// (`max_source_send_bytes`) or the endpoint's
    /// (`max_endpoint_send_bytes`) send budget was spent.
    pub send_budget_refusals: u64,
    /// Bytes charged to the send budget now: those queued, unacknowledged,
    /// over every connection's send queue, and what sending connections
    /// reserved ahead (at most 64 KiB each, and only while both budgets
    /// are less than three quarters used and no send waits for room; given
    /// back when a connection's queue empties, or when another send needs
    /// it). At most `max_endpoint_send_bytes`.
    pub send_bytes_held: u64,
    /// Most bytes ever charged at once to the send budget (as
    /// `send_bytes_held`).
    pub send_bytes_held_peak: u64,
    /// Sources (see `RudpConfig::source_prefix_v4`) with a live connection
    /// now: the entries of the per-source table.
    pub sources: u64,
    /// Server connections created.
    pub accepted: u64,
    /// Client connections created.
    pub connected: u64,
    /// Protocol violations reported by connections.
    pub protocol_violations: u64,
    /// Connections freed.
    pub closed: u64,
    /// Connections open now (both directions, including closed ones whose
    /// events were not yet polled).
    pub connections: u64,
    /// Server connections accepted but not yet confirmed by the client, now.
    pub half_open: u64,
}

#[derive(Debug)]
struct Entry {
    conn: Connection,
    remote: SocketAddr,
    /// Index of its source in `Endpoint::sources`.
    source: u32,
    /// A server connection (counts toward `max_connections_per_source`).
    accepted: bool,
    /// What `conn.recv_held()` was when last looked at: its share of the
    /// endpoint's and its source's totals.
    charged: usize,
    /// What `conn.send_queue_len().0` was when last looked at.
    send_charged: usize,
    /// Send budget reserved ahead for this connection's next sends
    /// (counted in its source's and the endpoint's totals like queued
    /// bytes): a send within it touches neither total.
    send_lease: usize,
    /// A send was refused for the source's or the endpoint's send budget:
    /// `Writable` is owed (the entry is in `send_waiters`).
    send_waiting: bool,
    half_open: bool,
    /// Deadline of this connection's live heap entry.
    scheduled: Option<Instant>,
    in_transmit_queue: bool,
    in_event_queue: bool,
}

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    entry: Option<Box<Entry>>,
}

/// Many rudp connections multiplexed on one socket: routes datagrams by
/// (source address, connection id), runs the stateless cookie handshake,
/// and keeps one timer heap for all connections.
///
/// # Call order
///
/// Like [`Connection`]: feed [`handle_datagram`](Self::handle_datagram) for
/// every received datagram and [`handle_timeout`](Self::handle_timeout) when
/// [`poll_timeout`](Self::poll_timeout) has passed; issue [`connect`](Self::connect),
/// [`send`](Self::send), [`send_set`](Self::send_set), [`close`](Self::close)
/// at any time; then drain [`poll_transmit`](Self::poll_transmit) (send each
/// datagram) and [`poll_event`](Self::poll_event) /
/// [`poll_event_ref`](Self::poll_event_ref) until `None`.
///
/// # Costs
///
/// `poll_timeout` is O(1) amortised and `handle_timeout` is O(due
/// connections × log n): connections are kept in a binary heap keyed by their
/// next deadline, with lazy invalidation: a deadline that moved earlier gets
/// a new entry (the old one is skipped when popped); one that moved later
/// (every packet sent pushes the retransmission timer back) costs nothing
/// until its early entry reaches the top, where `poll_timeout` replaces it
/// with the true deadline. `poll_timeout` is therefore exact.
///
/// # Handshake
///
/// A server answers an INITIAL with a CHALLENGE carrying a cookie — SipHash-2-4
/// keyed with a secret derived from the endpoint's seed, over the peer's
/// address, the connection id and a time bucket — and keeps no state. Only an
/// ECHO with a valid cookie creates a connection, so a spoofed source costs
/// the server nothing; at most `max_half_open` accepted connections may wait
/// for the client's first numbered packet.
///
/// # Limits per source
///
/// A source (an IPv4 address or an IPv6 /64, see
/// `RudpConfig::source_prefix_v6`) may hold at most
/// `max_connections_per_source` connections, `max_half_open_per_source`
/// half-open ones and `max_source_recv_bytes` of received data; a full
/// half-open table makes room for a source holding fewer by evicting the
/// oldest half-open connection of the source holding the most. What every
/// connection receives is bounded by `max_endpoint_recv_bytes` with fair
/// shares among sources (`docs/rudp.md` §3, §6). Refusals, evictions and
/// budget events are counted in [`EndpointStats`].
#[derive(Debug)]
pub struct Endpoint {
    cfg: RudpConfig,
    k0: u64,
    k1: u64,
    rng: Rng,
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_key: HashMap<(SocketAddr, u32), u32>,
    /// The last `by_key` hit: datagrams come in batches from one peer, so
    /// this spares most lookups (cleared when a connection is removed).
    last_route: Option<((SocketAddr, u32), u32)>,
    heap: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    transmit_queue: VecDeque<u32>,
    /// Datagrams a connection writes per turn in `poll_transmit`.
    transmit_burst: u32,
    /// Datagrams the front of `transmit_queue` wrote in its current turn.
    turn: u32,
    event_queue: VecDeque<u32>,
    /// Datagrams sent without a connection: (to, bytes, length).
    stateless: VecDeque<(SocketAddr, [u8; field::CHALLENGE_LEN], usize)>,
    epoch: Option<Instant>,
    live: usize,
    half_open: usize,
    /// Half-open connections (index, generation) in the order they were
    /// accepted, with stale entries skipped lazily.
    half_open_order: VecDeque<(u32, u32)>,
    /// Sources with a live connection (a slab; `source_index` finds them).
    sources: Vec<Source>,
    free_sources: Vec<u32>,
    source_index: HashMap<SourceKey, u32>,
    /// Sources holding received bytes now.
    sources_holding: usize,
    /// Bytes the receive sides of all connections hold.
    recv_held: usize,
    /// Bytes the send queues of all connections hold, and their leases.
    send_held: usize,
    /// Of which leases (`Entry::send_lease`).
    send_leased: usize,
    /// Connections (index, generation) refused a send for a send budget.
    send_waiters: Vec<(u32, u32)>,
    last_reclaim: Option<Instant>,
    stats: EndpointStats,
}

impl Endpoint {
    /// A new endpoint. `seed` keys the cookie hash and seeds connection ids
    /// and initial sequence numbers: give each endpoint a secret random value
    /// (e.g. from `/dev/urandom`); tests may pass constants for determinism.
    /// Out-of-range config values are clamped ([`RudpConfig::sanitized`]).
    pub fn new(config: RudpConfig, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let k0 = rng.next_u64();
        let k1 = rng.next_u64();
        Endpoint {
            cfg: config.sanitized(),
            k0,
            k1,
            rng,
            slots: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::new(),
            last_route: None,
            heap: BinaryHeap::new(),
            transmit_queue: VecDeque::new(),
            transmit_burst: 1,
            turn: 0,
            event_queue: VecDeque::new(),
            stateless: VecDeque::new(),
            epoch: None,
            live: 0,
            half_open: 0,
            half_open_order: VecDeque::new(),
            sources: Vec::new(),
            free_sources: Vec::new(),
            source_index: HashMap::new(),
            sources_holding: 0,
            recv_held: 0,
            send_held: 0,
            send_leased: 0,
            send_waiters: Vec::new(),
            last_reclaim: None,
            stats: EndpointStats::default(),
        }
    }

    /// The (sanitized) configuration.
    pub fn config(&self) -> &RudpConfig {
        &self.cfg
    }

    /// Endpoint-wide counters, and the connections open now.
    pub fn stats(&self) -> EndpointStats {
        EndpointStats {
            connections: self.live as u64,
            half_open: self.half_open as u64,
            recv_bytes_held: self.recv_held as u64,
            send_bytes_held: self.send_held as u64,
            sources: self.source_index.len() as u64,
            ..self.stats.clone()
        }
    }

    /// Live connections (including closed ones whose events were not yet polled).
    pub fn len(&self) -> usize {
        self.live
    }

    /// No live connections.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Server connections accepted but not yet confirmed by the client.
    pub fn half_open(&self) -> usize {
        self.half_open
    }

    /// The connection behind `peer`, if it is live.
    pub fn connection(&self, peer: ConnectionHandle) -> Option<&Connection> {
        self.entry(peer).map(|e| &e.conn)
    }

    /// Statistics of `peer`'s connection.
    pub fn peer_stats(&self, peer: ConnectionHandle) -> Option<ConnectionStats> {
        self.connection(peer).map(Connection::stats)
    }

    /// The remote address of `peer`.
    pub fn remote_addr(&self, peer: ConnectionHandle) -> Option<SocketAddr> {
        self.entry(peer).map(|e| e.remote)
    }

    /// Every live peer (unspecified order).
    pub fn peers(&self) -> impl Iterator<Item = ConnectionHandle> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.entry.as_ref().map(|_| ConnectionHandle {
                index: i as u32,
                generation: s.generation,
            })
        })
    }

    fn entry(&self, peer: ConnectionHandle) -> Option<&Entry> {
        let s = self.slots.get(peer.index as usize)?;
        if s.generation != peer.generation {
            return None;
        }
        s.entry.as_deref()
    }

    fn entry_mut(&mut self, peer: ConnectionHandle) -> Option<&mut Entry> {
        let s = self.slots.get_mut(peer.index as usize)?;
        if s.generation != peer.generation {
            return None;
        }
        s.entry.as_deref_mut()
    }

    /// The live connection in slot `idx`, if any.
    #[inline]
    fn entry_at(&mut self, idx: u32) -> Option<&mut Entry> {
        self.slots
            .get_mut(idx as usize)
            .and_then(|s| s.entry.as_deref_mut())
    }

    fn peer_id(&self, idx: u32) -> ConnectionHandle {
        ConnectionHandle {
            index: idx,
            generation: self.slots.get(idx as usize).map_or(0, |s| s.generation),
        }
    }

    fn insert(&mut self, conn: Connection, remote: SocketAddr, half_open: bool) -> u32 {
        let key = (remote, conn.conn_id());
        let accepted = half_open;
        let source = self.source_of(self.source_key(&remote));
        if let Some(src) = self.sources.get_mut(source as usize) {
            src.entries += 1;
            src.accepted += u32::from(accepted);
            src.half_open += u32::from(half_open);
        }
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        if let Some(s) = self.slots.get_mut(idx as usize) {
            s.entry = Some(Box::new(Entry {
                conn,
                remote,
                source,
                accepted,
                charged: 0,
                send_charged: 0,
                send_lease: 0,
                send_waiting: false,
                half_open,
                scheduled: None,
                in_transmit_queue: false,
                in_event_queue: false,
            }));
        }
        self.by_key.insert(key, idx);
        self.live += 1;
        if half_open {
            self.half_open += 1;
            let generation = self.slots.get(idx as usize).map_or(0, |s| s.generation);
            self.half_open_order.push_back((idx, generation));
            if self.half_open_order.len() > 2 * self.half_open + 64 {
                let slots = &self.slots;
                self.half_open_order.retain(|&(i, g)| {
                    slots.get(i as usize).is_some_and(|s| {
                        s.generation == g && s.entry.as_ref().is_some_and(|e| e.half_open)
                    })
                });
            }
        }
        self.touched(idx);
        idx
    }

    fn remove(&mut self, idx: u32) {
        let Some(s) = self.slots.get_mut(idx as usize) else {
            return;
        };
        let Some(e) = s.entry.take() else {
            return;
        };
        s.generation = s.generation.wrapping_add(1);
        self.by_key.remove(&(e.remote, e.conn.conn_id()));
        self.last_route = None;
        self.free.push(idx);
        self.live -= 1;
        if e.half_open {
            self.half_open -= 1;
        }
        self.recharge(e.source, e.charged, 0);
        self.send_leased -= e.send_lease;
        self.recharge_send(e.source, e.send_charged + e.send_lease, 0);
        if let Some(src) = self.sources.get_mut(e.source as usize) {
            src.entries -= 1;
            src.accepted -= u32::from(e.accepted);
            src.half_open -= u32::from(e.half_open);
            if src.entries == 0 {
                self.source_index.remove(&src.key);
                self.free_sources.push(e.source);
            }
        }
        self.stats.closed += 1;
        trace!("rudp: endpoint freed slot {idx}");
    }

    /// Re-files a connection after anything touched it: transmit queue,
    /// event queue, timer heap, half-open accounting.
    #[inline]
    fn touched(&mut self, idx: u32) {
        self.refile(idx, true);
    }

    /// Once per datagram: inlined, without a call.
    #[inline(always)]
    fn refile(&mut self, idx: u32, queue_transmit: bool) {
        let Some(slot) = self.slots.get_mut(idx as usize) else {
            return;
        };
        let generation = slot.generation;
        let Some(e) = slot.entry.as_deref_mut() else {
            return;
        };
        if queue_transmit && !e.in_transmit_queue {
            e.in_transmit_queue = true;
            self.transmit_queue.push_back(idx);
        }
        if !e.in_event_queue && e.conn.has_pending_events() {
            e.in_event_queue = true;
            self.event_queue.push_back(idx);
        }
        if e.half_open && (e.conn.is_confirmed() || e.conn.is_closed()) {
            e.half_open = false;
            self.half_open -= 1;
            if let Some(src) = self.sources.get_mut(e.source as usize) {
                src.half_open -= 1;
            }
        }

        // Only a deadline earlier than the heap entry needs a new entry. A
        // later one (the common case: every packet sent pushes the
        // retransmission timer back) leaves the entry early; `poll_timeout`
        // and `handle_timeout` correct it when it reaches the top.
        let t = if e.conn.take_timeout_changed() || e.scheduled.is_none() {
            e.conn.poll_timeout()
        } else {
            None
        };
        if let Some(t) = t {
            if e.scheduled.is_none_or(|s| t < s) {
                e.scheduled = Some(t);
                self.heap.push(Reverse((t, idx, generation)));
            }
        }
        if self.heap.len() > 2 * self.live + 64 {
            self.rebuild_heap();
        }
    }

    fn rebuild_heap(&mut self) {
        let mut v = Vec::with_capacity(self.live);
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(t) = s.entry.as_ref().and_then(|e| e.scheduled) {
                v.push(Reverse((t, i as u32, s.generation)));
            }
        }
        self.heap = BinaryHeap::from(v);
    }

    fn heap_entry_valid(&self, t: Instant, idx: u32, generation: u32) -> bool {
        self.slots.get(idx as usize).is_some_and(|s| {
            s.generation == generation && s.entry.as_ref().is_some_and(|e| e.scheduled == Some(t))
        })
    }

    // -- handshake cookies -------------------------------------------------------

    fn bucket(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        let elapsed = now.saturating_duration_since(epoch).as_nanos();
        (elapsed / self.cfg.cookie_lifetime.as_nanos().max(1)) as u64
    }

    fn cookie(&self, addr: SocketAddr, conn_id: u32, bucket: u64) -> u64 {
        let mut b = [0u8; 16 + 2 + 4 + 8];
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        b[..16].copy_from_slice(&ip.octets());
        b[16..18].copy_from_slice(&addr.port().to_be_bytes());
        b[18..22].copy_from_slice(&conn_id.to_be_bytes());
        b[22..30].copy_from_slice(&bucket.to_be_bytes());
        siphash24(self.k0, self.k1, &b)
    }

    // -- input -------------------------------------------------------------------

    /// Processes one datagram received from `from`.
    ///
    /// Never panics. An error says why the datagram was ignored (for logging;
    /// it is also counted in [`stats`](Self::stats)); no error is fatal to the
    /// endpoint or to other connections.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
    ) -> Result<(), RudpError> {
        self.handle(now, from, data, None)
    }

    /// Like [`handle_datagram`](Self::handle_datagram) for a datagram that
    /// stays in the caller's receive buffer, at `origin`, until the events
    /// it causes are polled: messages lying whole in it are not copied.
    /// Before that buffer is reused, poll every event with
    /// [`poll_event_raw`](Self::poll_event_raw) (reading in-place messages
    /// from the buffer) or copy them out with
    /// [`materialize`](Self::materialize).
    pub(crate) fn handle_datagram_in_place(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        origin: usize,
    ) -> Result<(), RudpError> {
        self.handle(now, from, data, Some(origin))
    }

    fn handle(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
        origin: Option<usize>,
    ) -> Result<(), RudpError> {
        self.stats.datagrams_received += 1;
        let pkt = match PacketRepr::parse(data) {
            Ok(p) => p,
            Err(e) => {
                self.stats.malformed += 1;
                return Err(e.into());
            }
        };
        let key = (from, pkt.conn_id());
        let route = match self.last_route {
            Some((k, idx)) if k == key => Some(idx),
            _ => {
                let r = self.by_key.get(&key).copied();
                if let Some(idx) = r {
                    self.last_route = Some((key, idx));
                }
                r
            }
        };
        if let Some(idx) = route {
            // `charged` may be stale (events polled since): it is then too
            // high, which only makes the allowance smaller than it could be.
            let ep_free = self
                .cfg
                .max_endpoint_recv_bytes
                .saturating_sub(self.recv_held);
            let r = match self
                .slots
                .get_mut(idx as usize)
                .and_then(|s| s.entry.as_deref_mut())
            {
                Some(e) => {
                    let src_free = self
                        .sources
                        .get(e.source as usize)
                        .map_or(0, |s| self.cfg.max_source_recv_bytes.saturating_sub(s.held));
                    e.conn.set_recv_allowance(e.charged + ep_free.min(src_free));
                    match origin {
                        None => e.conn.handle_packet(now, &pkt, data.len()),
                        Some(origin) => {
                            let place = InPlace {
                                base: data.as_ptr() as usize,
                                len: data.len(),
                                origin,
                            };
                            e.conn.handle_packet_in_place(now, &pkt, data.len(), place)
                        }
                    }
                }
                None => Err(RudpError::UnknownConnection),
            };
            if let Err(RudpError::ProtocolViolation(_)) = r {
                self.stats.protocol_violations += 1;
            }
            if let Some(starved) = self.sync_both(idx, true) {
                self.reclaim(idx, starved, now);
            }
            self.touched(idx);
            return r;
        }
        match pkt {
            PacketRepr::Initial { conn_id, nonce } if self.cfg.accept_incoming => {
                if self.stateless.len() >= MAX_STATELESS_QUEUE {
                    self.stats.stateless_dropped += 1;
                    return Ok(());
                }
                let bucket = self.bucket(now);
                let cookie = self.cookie(from, conn_id, bucket);
                let mut out = [0u8; field::CHALLENGE_LEN];
                if let Ok(n) = (PacketRepr::Challenge {
                    conn_id,
                    nonce,
                    cookie,
                })
                .emit(&mut out)
                {
                    self.stateless.push_back((from, out, n));
                    self.stats.challenges_sent += 1;
                }
                Ok(())
            }
            PacketRepr::Echo {
                conn_id,
                cookie,
                params,
            } if self.cfg.accept_incoming => {
                let bucket = self.bucket(now);
                let ok = cookie == self.cookie(from, conn_id, bucket)
                    || (bucket > 0 && cookie == self.cookie(from, conn_id, bucket - 1));
                if !ok {
                    self.stats.invalid_cookies += 1;
                    return Err(RudpError::InvalidCookie);
                }
                if let Err(e) = self.admit(from, now) {
                    self.stats.refused += 1;
                    return Err(e);
                }
                let seed = self.rng.next_u64();
                let conn = Connection::accept(self.cfg.clone(), conn_id, now, params, seed);
                self.stats.accepted += 1;
                debug!("rudp: accepted connection {conn_id:08x} from {from}");
                self.insert(conn, from, true);
                Ok(())
            }
            _ => {
                self.stats.unknown_connection += 1;
                Err(RudpError::UnknownConnection)
            }
        }
    }

    /// Processes every connection whose deadline is at or before `now`.
    /// Spurious and repeated calls are no-ops.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some(&Reverse((t, idx, generation))) = self.heap.peek() {
            if t > now {
                break;
            }
            self.heap.pop();
            if self.heap_entry_valid(t, idx, generation) {
                due.push(idx);
            }
        }
        for idx in due {
            if let Some(e) = self.entry_at(idx) {
                e.conn.handle_timeout(now);
                e.scheduled = None;
            }
            // A connection that timed out frees what it held.
            self.sync_both(idx, true);
            self.touched(idx);
        }
    }

    /// The earliest deadline over all connections.
    #[must_use]
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(&Reverse((t, idx, generation))) = self.heap.peek() {
            let actual = if self.heap_entry_valid(t, idx, generation) {
                let e = self.entry_at(idx);
                match e {
                    Some(e) => {
                        let actual = e.conn.poll_timeout();
                        if actual == Some(t) {
                            return Some(t);
                        }
                        // The entry is early (see `refile`): replace it by
                        // the connection's true deadline.
                        e.scheduled = actual;
                        actual
                    }
                    None => None,
                }
            } else {
                None
            };
            self.heap.pop();
            if let Some(a) = actual {
                self.heap.push(Reverse((a, idx, generation)));
            }
        }
        None
    }

    // -- commands ----------------------------------------------------------------

    /// Starts a connection to `remote`. The returned id is usable at once:
    /// messages sent before [`Event::Connected`] are queued.
    pub fn connect(
        &mut self,
        now: Instant,
        remote: SocketAddr,
    ) -> Result<ConnectionHandle, RudpError> {
        if self.live >= self.cfg.max_connections {
            return Err(RudpError::TooManyConnections);
        }
        let conn_id = loop {
            let id = self.rng.next_u32();
            if id != 0 && !self.by_key.contains_key(&(remote, id)) {
                break id;
            }
        };
        let seed = self.rng.next_u64();
        let conn = Connection::connect(self.cfg.clone(), conn_id, now, seed);
        self.stats.connected += 1;
        let idx = self.insert(conn, remote, false);
        Ok(self.peer_id(idx))
    }

    fn with_conn<T>(
        &mut self,
        peer: ConnectionHandle,
        f: impl FnOnce(&mut Connection) -> Result<T, SendError>,
    ) -> Result<T, SendError> {
        let e = self.entry_mut(peer).ok_or(SendError::UnknownPeer)?;
        let r = f(&mut e.conn);
        self.touched(peer.index);
        r
    }

    /// Runs a send of `lens` on `peer`'s connection, within the source's
    /// and the endpoint's send budgets. Queuing messages changes neither
    /// timers nor events, so only the transmit queue needs the connection.
    #[inline]
    fn with_conn_send<F: FnOnce(&mut Connection) -> Result<(), SendError>>(
        &mut self,
        peer: ConnectionHandle,
        lens: impl Iterator<Item = usize> + Clone,
        f: F,
    ) -> Result<(), SendError> {
        let bytes = lens.clone().fold(0usize, usize::saturating_add);
        let f = match self.try_send(peer, bytes, f) {
            Ok(r) => return r,
            Err(f) => f,
        };
        self.send_room(peer, bytes, lens)?;
        self.try_send(peer, bytes, f)
            .unwrap_or(Err(SendError::QueueFull))
    }

    /// Queues a message for `peer`.
    #[inline]
    pub fn send(
        &mut self,
        peer: ConnectionHandle,
        data: &[u8],
        guarantee: Guarantee,
    ) -> Result<(), SendError> {
        self.with_conn_send(peer, core::iter::once(data.len()), |c| {
            c.send(data, guarantee)
        })
    }

    /// Queues a message set for `peer` (see [`Connection::send_set`]).
    pub fn send_set(&mut self, peer: ConnectionHandle, msgs: &[&[u8]]) -> Result<(), SendError> {
        if msgs.len() > usize::from(u16::MAX) {
            return Err(SendError::SetTooLarge { len: msgs.len() });
        }
        self.with_conn_send(peer, msgs.iter().map(|m| m.len()), |c| c.send_set(msgs))
    }

    /// Closes `peer` gracefully (see [`Connection::close`]). Unknown ids are ignored.
    pub fn close(&mut self, peer: ConnectionHandle) {
        let _ = self.with_conn(peer, |c| {
            c.close();
            Ok(())
        });
    }

    // -- output ------------------------------------------------------------------

    /// How many datagrams a connection writes per turn in
    /// [`poll_transmit`](Self::poll_transmit) (default 1; at least 1). A
    /// sender that can put consecutive datagrams to one address into one
    /// kernel packet (UDP segmentation offload) raises it: a connection's
    /// datagrams then come in runs of up to `burst`.
    pub fn set_transmit_burst(&mut self, burst: u32) {
        self.transmit_burst = burst.max(1);
    }

    /// Writes the next datagram into `buf` (at least `mtu` bytes) and says
    /// where to send it. Connections take turns, one datagram each (or up
    /// to [`set_transmit_burst`](Self::set_transmit_burst)); one that its
    /// pacer holds back is skipped, and its pacing deadline is part of
    /// [`poll_timeout`](Self::poll_timeout).
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(&(dest, ref bytes, len)) = self.stateless.front() {
            if let Some(dst) = buf.get_mut(..len) {
                dst.copy_from_slice(&bytes[..len]);
                let t = Transmit { dest, len };
                self.stateless.pop_front();
                return Some(t);
            }
        }
        while let Some(&idx) = self.transmit_queue.front() {
            let Some(e) = self.entry_at(idx) else {
                self.turn = 0;
                self.transmit_queue.pop_front();
                continue;
            };
            match e.conn.poll_transmit(now, buf) {
                Some(len) => {
                    let dest = e.remote;
                    // Round robin: `transmit_burst` datagrams per
                    // connection per turn.
                    self.turn += 1;
                    if self.turn >= self.transmit_burst {
                        self.turn = 0;
                        self.transmit_queue.pop_front();
                        self.transmit_queue.push_back(idx);
                    }
                    self.touched(idx);
                    return Some(Transmit { dest, len });
                }
                None => {
                    e.in_transmit_queue = false;
                    self.turn = 0;
                    self.transmit_queue.pop_front();
                    // Unreliable messages leave the queue once sent.
                    self.sync_send(idx);
                    self.refile(idx, false);
                }
            }
        }
        None
    }

    /// Index of the next connection with events, dropping drained ones (and
    /// freeing connections that are closed and drained).
    #[inline]
    fn next_event_conn(&mut self) -> Option<u32> {
        let idx = *self.event_queue.front()?;
        // Fast path: the front connection still has events.
        if self
            .slots
            .get(idx as usize)
            .and_then(|s| s.entry.as_deref())
            .is_some_and(|e| e.conn.has_pending_events())
        {
            return Some(idx);
        }
        self.next_event_conn_slow()
    }

    /// [`next_event_conn`](Self::next_event_conn) past a drained front.
    #[cold]
    fn next_event_conn_slow(&mut self) -> Option<u32> {
        loop {
            let idx = *self.event_queue.front()?;
            let state = self
                .entry_at(idx)
                .map(|e| (e.conn.has_pending_events(), e.conn.is_closed()));
            match state {
                Some((true, _)) => return Some(idx),
                Some((false, closed)) => {
                    // Drained: what its events held is free.
                    self.sync(idx);
                    self.event_queue.pop_front();
                    if let Some(e) = self.entry_at(idx) {
                        e.in_event_queue = false;
                    }
                    if closed {
                        self.remove(idx);
                    }
                }
                None => {
                    self.event_queue.pop_front();
                }
            }
        }
    }

    /// The next event of any connection. After `Closed`, the id is dead.
    ///
    /// A closed connection is freed when its last event (`Closed`) is
    /// polled, by this or [`poll_event_ref`](Self::poll_event_ref); until
    /// then it counts toward `RudpConfig::max_connections`.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<(ConnectionHandle, Event)> {
        let idx = self.next_event_conn()?;
        let peer = self.peer_id(idx);
        let e = self.entry_at(idx)?;
        let ev = e.conn.poll_event()?;
        if e.conn.is_closed() && !e.conn.has_pending_events() {
            self.event_queue.pop_front();
            self.remove(idx);
        }
        Some((peer, ev))
    }

    /// Like [`poll_event`](Self::poll_event) but borrows message bytes (no
    /// allocation per message). The borrow ends at the next call.
    #[must_use]
    pub fn poll_event_ref(&mut self) -> Option<(ConnectionHandle, EventRef<'_>)> {
        let (peer, conn) = self.next_event_connection()?;
        Some((peer, conn.poll_event_ref()?))
    }

    /// The connection whose events come next, and its id.
    #[inline(always)]
    fn next_event_connection(&mut self) -> Option<(ConnectionHandle, &mut Connection)> {
        let idx = self.next_event_conn()?;
        let slot = self.slots.get_mut(idx as usize)?;
        let peer = ConnectionHandle {
            index: idx,
            generation: slot.generation,
        };
        Some((peer, &mut slot.entry.as_deref_mut()?.conn))
    }

    /// Like [`poll_event_ref`](Self::poll_event_ref), leaving messages of
    /// datagrams handled in place in the caller's buffer
    /// ([`MsgRef::InPlace`]).
    #[inline]
    pub(crate) fn poll_event_raw(&mut self) -> Option<(ConnectionHandle, RawEvent<'_>)> {
        let (peer, conn) = self.next_event_connection()?;
        Some((peer, conn.poll_event_raw()?))
    }

    /// Copies every message still queued in place out of `buf` (the
    /// receive buffer given to [`handle_datagram_in_place`](Self::handle_datagram_in_place),
    /// unchanged since) into the connections, so that `buf` may be reused.
    pub(crate) fn materialize(&mut self, buf: &[u8]) {
        for k in 0..self.event_queue.len() {
            let Some(&idx) = self.event_queue.get(k) else {
                break;
            };
            if let Some(e) = self.entry_at(idx) {
                e.conn.materialize(buf);
            }
            self.sync(idx);
        }
    }
}

//! The per-peer state machine.
//!
//! [`Connection`] runs the handshake, turns datagrams into events and
//! messages into datagrams, and keeps the timers. The structures it drives
//! keep their own invariants, each in a file of its own:
//!
//! - `send`: the send queue, fragmentation and packing of chunks, the
//!   packets in flight and what they carried;
//! - `recv`: duplicate detection, the acks owed to the peer, the Delivery
//!   window (order and sets);
//! - `reassembly`: fragmented messages put back together;
//! - `events`: events waiting for the application, and where their bytes are;
//! - `recovery`: what acks and their absence tell the sender — packets
//!   acknowledged, packets lost, the retransmission timeout and probes;
//! - `rtt`, `loss`: the RTT estimate and the reordering tolerance that
//!   spurious losses teach;
//! - `congestion`: the congestion controller (BBR or AIMD, behind one
//!   trait), the delivery-rate samples that feed it, and the loss epochs
//!   (one response per round trip, undone when spurious);
//! - `pacing`: the token bucket that spreads data packets at the
//!   controller's pacing rate;
//! - `stats`: the counters.
//!
//! The methods the connection calls per message or per packet across these
//! files are `#[inline]`: files can land in different codegen units, which
//! LLVM does not inline between (without it the `rudp_core` benchmarks ran
//! 10–20% slower).

use std::time::{Duration, Instant};

use log::{debug, trace};

use super::config::RudpConfig;
use super::rng::Rng;
use super::timer::{Timer, TimerTable};
use super::wire::{
    emit_header, emit_pn_ack, field, AckRepr, ChunkRepr, Chunks, CloseCode, PacketRepr, PacketType,
    Params, FLAG_ACK,
};
use super::{Event, EventRef, Guarantee, RudpCloseReason, RudpError, SendError};

mod congestion;
mod events;
mod loss;
mod pacing;
mod reassembly;
mod recovery;
mod recv;
mod rtt;
mod send;
mod stats;

use congestion::rate::RateSampler;
pub use congestion::CongestionControl;
use congestion::{Cc, LossEpochs};
use events::Inbox;
pub(crate) use events::{InPlace, MsgRef, RawEvent};
use loss::Reordering;
use pacing::Pacer;
pub(crate) use recv::BudgetEvents;
use recv::{ChunkOutcome, PnStatus, RecvLimits, RecvState};
use rtt::RttEstimator;
use send::{SendState, SentInfo};
pub use stats::{ConnectionStats, PerGuarantee};

/// Cap of the exponent in RTO backoff.
const MAX_BACKOFF_SHIFT: u32 = 16;
/// Consecutive retransmission timeouts from which the flight is declared
/// lost and the congestion window collapses; the ones before only probe.
const PERSISTENT_RTO: u32 = 2;

#[inline]
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or(now)
}

/// Which side of the handshake a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Sent the INITIAL.
    Client,
    /// Accepted an ECHO.
    Server,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Client: INITIAL sent, waiting for CHALLENGE.
    Initial,
    /// Client: ECHO sent, waiting for ACCEPT.
    Echo,
    Established,
    Closed,
}

/// One reliable-UDP connection: a sans-IO state machine.
///
/// # Call order
///
/// The owner feeds input and drains output; nothing happens on its own:
///
/// 1. Every received datagram for this connection: [`handle_datagram`](Self::handle_datagram).
/// 2. When [`poll_timeout`](Self::poll_timeout)'s instant has passed:
///    [`handle_timeout`](Self::handle_timeout). Calling it early, twice for
///    the same instant, or with a clock that went backwards is harmless.
/// 3. Application commands at any time: [`send`](Self::send),
///    [`send_set`](Self::send_set), [`close`](Self::close).
/// 4. After any of the above: [`poll_transmit`](Self::poll_transmit) until
///    it returns `None` (send each datagram), then
///    [`poll_event`](Self::poll_event) (or [`poll_event_ref`](Self::poll_event_ref))
///    until `None`, then re-read [`poll_timeout`](Self::poll_timeout).
///
/// `poll_transmit` may return `None` with data queued and the congestion
/// window open: the pacer holds data packets to the pacing rate, and
/// `poll_timeout` then includes the moment it lets the next train go
/// (`docs/rudp.md` §5).
///
/// Time is always passed in; the connection never reads a clock. Most
/// programs use an [`Endpoint`](super::Endpoint), which owns the
/// connections and routes datagrams; `Connection` is public for embedding and
/// testing (see [`Connection::connect`]).
#[derive(Debug)]
pub struct Connection {
    cfg: RudpConfig,
    side: Side,
    conn_id: u32,
    state: State,
    timers: TimerTable,
    nonce: u64,
    cookie: u64,
    hs_attempts: u32,
    hs_send_pending: bool,
    accept_pending: bool,
    confirmed: bool,
    local: Params,
    /// Effective datagram size: the smaller of both ends' `max_datagram`.
    mtu: usize,
    frag_size: usize,
    peer_window: u32,
    peer_max_message: usize,
    peer_max_ack_delay: Duration,
    tx: SendState,
    rx: RecvState,
    rtt: RttEstimator,
    /// The congestion controller.
    cc: Cc,
    /// Loss epochs: when the controller responds, and undoes.
    epochs: LossEpochs,
    /// Delivery-rate samples for the controller.
    rate: RateSampler,
    pacer: Pacer,
    /// Bytes delivered as of the last rate sample.
    acked_before: u64,
    rto_backoff: u32,
    consecutive_rto: u32,
    /// Recent losses and the reordering tolerance they taught.
    reorder: Reordering,
    /// A probe is to be sent (one packet, cwnd permitting or not): a
    /// tail-loss probe or the first retransmission timeout.
    probe_pending: bool,
    /// The pending probe repeats the oldest packet in flight (RTO) rather
    /// than the newest (tail-loss probe) when there is no new data.
    probe_oldest: bool,
    /// A tail-loss probe was sent and nothing new was acknowledged since.
    probe_sent: bool,
    last_recv: Instant,
    last_eliciting_sent: Instant,
    ping_pending: bool,
    closing: bool,
    close_packet: Option<CloseCode>,
    close_reason: Option<RudpCloseReason>,
    inbox: Inbox,
    want_writable: bool,
    violations: u32,
    stats: ConnectionStats,
}

impl Connection {
    fn new(cfg: RudpConfig, side: Side, conn_id: u32, now: Instant, seed: u64) -> Self {
        let cfg = cfg.sanitized();
        let mut rng = Rng::new(seed ^ u64::from(conn_id).rotate_left(32));
        let initial = cfg
            .forced_initial_sequence()
            .unwrap_or_else(|| rng.next_u32());
        let local = Params {
            initial_seq: initial,
            recv_window: cfg.recv_window,
            max_datagram: cfg.mtu.min(usize::from(u16::MAX)) as u16,
            max_ack_delay_ms: cfg.max_ack_delay.as_millis().min(u128::from(u16::MAX)) as u16,
            max_message_len: cfg.max_message_len as u32,
        };
        let mut timers = TimerTable::default();
        timers.set(Timer::Idle, later(now, cfg.handshake_timeout));
        Connection {
            side,
            conn_id,
            state: State::Initial,
            timers,
            nonce: rng.next_u64(),
            cookie: 0,
            hs_attempts: 0,
            hs_send_pending: false,
            accept_pending: false,
            confirmed: false,
            local,
            mtu: cfg.mtu,
            frag_size: RudpConfig::frag_payload(cfg.mtu),
            peer_window: 0,
            peer_max_message: cfg.max_message_len,
            peer_max_ack_delay: cfg.max_ack_delay,
            tx: SendState::new(initial),
            rx: RecvState::new(0, RecvLimits::new(&cfg, RudpConfig::frag_payload(cfg.mtu))),
            rtt: RttEstimator::new(cfg.initial_rtt),
            cc: Cc::new(
                cfg.congestion
                    .build(&cfg, cfg.mtu, now, seed ^ 0xbb_c0_c0_a5_5e_ed_00_01),
            ),
            epochs: LossEpochs::default(),
            rate: RateSampler::new(now),
            pacer: Pacer::new(
                now,
                u64::from(cfg.initial_cwnd).saturating_mul(cfg.mtu as u64),
            ),
            acked_before: 0,
            rto_backoff: 0,
            consecutive_rto: 0,
            reorder: Reordering::new(cfg.packet_threshold),
            probe_pending: false,
            probe_oldest: false,
            probe_sent: false,
            last_recv: now,
            last_eliciting_sent: now,
            ping_pending: false,
            closing: false,
            close_packet: None,
            close_reason: None,
            inbox: Inbox::default(),
            want_writable: false,
            violations: 0,
            stats: ConnectionStats::default(),
            cfg,
        }
    }

    /// A client connection that starts the handshake with connection id
    /// `conn_id` (must be non-zero; 0 is replaced by 1). `seed` seeds the
    /// nonce and initial sequence numbers.
    ///
    /// The first [`poll_transmit`](Self::poll_transmit) yields the INITIAL.
    /// Messages may be sent right away; they are queued until the handshake
    /// completes.
    pub fn connect(config: RudpConfig, conn_id: u32, now: Instant, seed: u64) -> Self {
        let mut c = Connection::new(config, Side::Client, conn_id.max(1), now, seed);
        c.hs_send_pending = true;
        c.timers
            .set(Timer::Handshake, later(now, c.handshake_interval()));
        c
    }

    /// A server connection for a validated ECHO carrying `peer` parameters.
    pub(crate) fn accept(
        config: RudpConfig,
        conn_id: u32,
        now: Instant,
        peer: Params,
        seed: u64,
    ) -> Self {
        let mut c = Connection::new(config, Side::Server, conn_id, now, seed);
        c.accept_pending = true;
        c.establish(now, peer);
        // Not confirmed until the client sends a numbered packet or an ack:
        // until then the handshake deadline applies, not the idle timeout.
        c.confirmed = false;
        c.ping_pending = false;
        c.timers
            .set(Timer::Idle, later(now, c.cfg.handshake_timeout));
        // No heartbeats before the client confirms: its PINGs would be
        // ignored (§3), and a half-open flood would make us send them.
        c.timers.stop(Timer::Heartbeat);
        c
    }

    fn handshake_interval(&self) -> Duration {
        let base = self.cfg.initial_rtt.saturating_mul(3).max(self.cfg.min_rto);
        base.saturating_mul(1 << self.hs_attempts.min(MAX_BACKOFF_SHIFT))
            .min(self.cfg.max_rto)
    }

    fn establish(&mut self, now: Instant, peer: Params) {
        self.mtu = self.cfg.mtu.min(usize::from(peer.max_datagram));
        self.frag_size = RudpConfig::frag_payload(self.mtu);
        self.cc.set_mtu(self.mtu as u64);
        self.peer_window = peer.recv_window;
        self.peer_max_message = peer.max_message_len as usize;
        self.peer_max_ack_delay = Duration::from_millis(u64::from(peer.max_ack_delay_ms));
        self.rx = RecvState::new(peer.initial_seq, RecvLimits::new(&self.cfg, self.frag_size));
        self.state = State::Established;
        self.confirmed = true;
        self.ping_pending = true;
        self.last_recv = now;
        self.timers.stop(Timer::Handshake);
        self.timers
            .set(Timer::Idle, later(now, self.cfg.idle_timeout));
        self.timers
            .set(Timer::Heartbeat, later(now, self.cfg.heartbeat_interval));
        self.inbox.push_connected();
        self.check_close_flush();
        debug!(
            "rudp: connection {:08x} established ({:?}, mtu {})",
            self.conn_id, self.side, self.mtu
        );
    }

    /// The connection id (chosen by the client).
    pub fn conn_id(&self) -> u32 {
        self.conn_id
    }

    /// Client or server.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The handshake completed and the connection is not closed.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// The connection is closed (a `Closed` event was queued).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Server side: the client has proven it received ACCEPT.
    pub(crate) fn is_confirmed(&self) -> bool {
        self.confirmed
    }

    /// Events are waiting for `poll_event`.
    pub fn has_pending_events(&self) -> bool {
        self.inbox.has_events()
    }

    /// Queued bytes and messages (reliable until acked, unreliable until sent).
    pub fn send_queue_len(&self) -> (usize, usize) {
        (self.tx.queued_bytes(), self.tx.queued_msgs())
    }

    /// Statistics snapshot.
    pub fn stats(&self) -> ConnectionStats {
        let mut s = self.stats.clone();
        s.srtt = self.rtt.srtt;
        s.rttvar = self.rtt.rttvar;
        s.min_rtt = self.rtt.min_rtt.unwrap_or_default();
        s.rto = self.current_rto();
        let window = self.cc.window();
        s.cwnd = (window / (self.mtu as u64).max(1)).min(u64::from(u32::MAX)) as u32;
        s.cwnd_bytes = window;
        s.pacing_rate = self.cc.pacing_rate();
        s.bandwidth = self.cc.controller().bandwidth();
        s.congestion_state = self.cc.controller().state();
        s.in_flight = self.tx.in_flight();
        s.bytes_in_flight = self.tx.bytes_in_flight();
        s.reorder_threshold = self.reorder.threshold();
        s.reorder_window = self.reorder.window();
        s.messages_delivered = self.inbox.delivered();
        s.recv_bytes_held = self.recv_held();
        s
    }

    // -- receive budgets (the endpoint's side) --------------------------------

    /// Bytes the receive side holds: the window, partial reassemblies and
    /// messages waiting to be polled (those left in the caller's receive
    /// buffer excepted).
    #[inline]
    pub(crate) fn recv_held(&self) -> usize {
        self.rx.held() + self.inbox.mem_held()
    }

    /// Of [`recv_held`](Self::recv_held), what unreliable partial
    /// reassemblies hold (the endpoint may drop them for room).
    #[inline]
    pub(crate) fn unreliable_held(&self) -> usize {
        self.rx.unreliable_held()
    }

    /// The most [`recv_held`](Self::recv_held) may reach while handling
    /// the next datagrams (the connection's share of the endpoint's and its
    /// source's budgets); unlimited by default, `max_recv_buffer_bytes`
    /// applies regardless.
    #[inline]
    pub(crate) fn set_recv_allowance(&mut self, bytes: usize) {
        self.rx.set_allowance(bytes);
    }

    /// Whether [`take_budget_events`](Self::take_budget_events) has any.
    #[inline]
    pub(crate) fn has_budget_events(&self) -> bool {
        self.rx.has_budget_events()
    }

    /// Budget events since the last call, if any.
    #[inline]
    pub(crate) fn take_budget_events(&mut self) -> Option<BudgetEvents> {
        self.rx.take_budget_events()
    }

    /// Drops every unreliable partial reassembly (counted); returns how
    /// many.
    pub(crate) fn drop_unreliable_partials(&mut self) -> usize {
        self.rx.drop_unreliable_partials(&mut self.stats)
    }

    /// Frees buffers kept for reuse while no event waits.
    pub(crate) fn release_idle(&mut self) {
        self.inbox.release_idle();
    }

    /// Closes at once for `reason`, freeing everything received, messages
    /// not yet polled included; only `Closed(reason)` (and events other
    /// than messages queued before it) remain to be polled. Sends nothing:
    /// the endpoint tells the peer.
    pub(crate) fn abort(&mut self, reason: RudpCloseReason) {
        self.inbox.discard_messages();
        self.close_now(reason);
    }

    // -- application commands ------------------------------------------------

    /// What a send of messages of `lens` would fail with, the room in
    /// the queue aside: `Closed` or `TooLarge`.
    pub(crate) fn check_sendable(
        &self,
        lens: impl Iterator<Item = usize>,
    ) -> Result<usize, SendError> {
        if self.state == State::Closed || self.closing {
            return Err(SendError::Closed);
        }
        let max = self.cfg.max_message_len.min(self.peer_max_message);
        let mut total = 0usize;
        for len in lens {
            if len > max {
                return Err(SendError::TooLarge { len, max });
            }
            total = total.saturating_add(len);
        }
        Ok(total)
    }

    fn check_send(&mut self, lens: impl Iterator<Item = usize>, n: usize) -> Result<(), SendError> {
        let total = self.check_sendable(lens)?;
        if self.tx.queued_bytes().saturating_add(total) > self.cfg.max_send_queue_bytes
            || self.tx.queued_msgs() + n > self.cfg.max_send_queue_messages
        {
            self.want_writable = true;
            return Err(SendError::QueueFull);
        }
        Ok(())
    }

    /// Queues one message. Fails with [`SendError::QueueFull`] when the send
    /// queue is full ([`Event::Writable`] follows once it has drained to half).
    pub fn send(&mut self, data: &[u8], guarantee: Guarantee) -> Result<(), SendError> {
        self.check_send(core::iter::once(data.len()), 1)?;
        match guarantee {
            Guarantee::Delivery => self.tx.push_reliable(data, None),
            g => self.tx.push_unreliable(g, data),
        }
        self.stats.messages_sent.add(guarantee);
        Ok(())
    }

    /// Queues a message set: reliable messages that may be delivered in any
    /// order among themselves, but ordered as a whole relative to other
    /// `Delivery` messages. All or nothing: on error none is queued. An empty
    /// set is a no-op.
    pub fn send_set(&mut self, msgs: &[&[u8]]) -> Result<(), SendError> {
        if msgs.is_empty() {
            return Ok(());
        }
        if msgs.len() > usize::from(u16::MAX) {
            return Err(SendError::SetTooLarge { len: msgs.len() });
        }
        self.check_send(msgs.iter().map(|m| m.len()), msgs.len())?;
        self.tx.push_set(msgs);
        for _ in msgs {
            self.stats.messages_sent.add(Guarantee::Delivery);
        }
        Ok(())
    }

    /// Closes the connection gracefully: no new messages are accepted (and
    /// no `Writable` is reported, not even one already queued); once
    /// every queued message has been sent and every reliable one acknowledged,
    /// a CLOSE is sent and `Closed(Local)` is reported. A client still in its
    /// handshake with nothing queued closes at once; with messages queued it
    /// completes the handshake and flushes them first. The usual timeouts
    /// still apply while draining.
    pub fn close(&mut self) {
        // No more sends are taken (none can set `want_writable` again): a
        // `Writable` owed or not yet polled is void.
        self.want_writable = false;
        self.inbox.drop_writable();
        match self.state {
            State::Closed => {}
            State::Initial | State::Echo => {
                if self.tx.is_flushed() {
                    self.close_now(RudpCloseReason::Local);
                } else {
                    self.closing = true;
                }
            }
            State::Established => {
                self.closing = true;
                self.check_close_flush();
            }
        }
    }

    fn check_close_flush(&mut self) {
        if self.closing && self.close_packet.is_none() && self.tx.is_flushed() {
            self.close_packet = Some(CloseCode::Normal);
            self.close_reason = Some(RudpCloseReason::Local);
        }
    }

    fn close_now(&mut self, reason: RudpCloseReason) {
        if self.state == State::Closed {
            return;
        }
        debug!("rudp: connection {:08x} closed: {:?}", self.conn_id, reason);
        self.state = State::Closed;
        self.timers.stop_all();
        self.close_packet = None;
        self.tx.clear();
        self.rate.release(None);
        self.rx.clear();
        self.inbox.push_closed(reason);
    }

    fn violation(&mut self, what: &'static str) -> RudpError {
        self.stats.protocol_violations += 1;
        self.violations += 1;
        debug!(
            "rudp: connection {:08x}: protocol violation: {what}",
            self.conn_id
        );
        if self.violations >= self.cfg.max_protocol_violations && self.state == State::Established {
            self.close_packet = Some(CloseCode::ProtocolViolation);
            self.close_reason = Some(RudpCloseReason::ProtocolViolation(what));
            self.closing = true;
        }
        RudpError::ProtocolViolation(what)
    }

    // -- input -----------------------------------------------------------------

    /// Processes one datagram received from the peer.
    ///
    /// Errors describe why the datagram was ignored (for logging and
    /// counting); the connection stays usable unless it reported `Closed`.
    pub fn handle_datagram(&mut self, now: Instant, data: &[u8]) -> Result<(), RudpError> {
        let pkt = PacketRepr::parse(data)?;
        self.handle_packet(now, &pkt, data.len())
    }

    pub(crate) fn handle_packet(
        &mut self,
        now: Instant,
        pkt: &PacketRepr<'_>,
        len: usize,
    ) -> Result<(), RudpError> {
        if self.state == State::Closed {
            return Err(RudpError::Closed);
        }
        if pkt.conn_id() != self.conn_id {
            return Err(RudpError::UnknownConnection);
        }
        self.inbox.recycle();
        let res = match *pkt {
            PacketRepr::Initial { .. } => Err(RudpError::Unexpected("INITIAL on a connection")),
            PacketRepr::Challenge { nonce, cookie, .. } => {
                if matches!(self.state, State::Initial | State::Echo) && nonce == self.nonce {
                    self.cookie = cookie;
                    if self.state == State::Initial {
                        self.hs_attempts = 0;
                    }
                    self.state = State::Echo;
                    self.hs_send_pending = true;
                    self.timers
                        .set(Timer::Handshake, later(now, self.handshake_interval()));
                    Ok(())
                } else {
                    Err(RudpError::Unexpected("CHALLENGE not matching our INITIAL"))
                }
            }
            PacketRepr::Echo { .. } => {
                if self.side == Side::Server {
                    // Our ACCEPT was lost: send it again.
                    self.accept_pending = true;
                    Ok(())
                } else {
                    Err(RudpError::Unexpected("ECHO at a client"))
                }
            }
            PacketRepr::Accept { params, .. } => match self.state {
                State::Initial | State::Echo if self.side == Side::Client => {
                    self.establish(now, params);
                    Ok(())
                }
                _ => Ok(()), // duplicate
            },
            PacketRepr::Data {
                pn, ack, chunks, ..
            } => self.on_numbered(now, pn, ack, Some(chunks)),
            PacketRepr::Ping { pn, ack, .. } => self.on_numbered(now, pn, ack, None),
            PacketRepr::Ack { ack, .. } => {
                if self.state != State::Established {
                    Err(RudpError::Unexpected("ACK before the handshake completed"))
                } else {
                    match self.tx.validate_ack(&ack) {
                        Err(what) => Err(self.violation(what)),
                        Ok(()) => {
                            self.on_ack(now, &ack);
                            Ok(())
                        }
                    }
                }
            }
            PacketRepr::Close { .. } => {
                self.close_now(RudpCloseReason::ClosedByPeer);
                Ok(())
            }
        };
        if res.is_ok() {
            self.stats.datagrams_received += 1;
            self.stats.bytes_received += len as u64;
            if self.state == State::Established {
                let numbered = matches!(
                    pkt.packet_type(),
                    PacketType::Data | PacketType::Ping | PacketType::Ack
                );
                if numbered && !self.confirmed {
                    // The handshake deadline gives way to the idle timeout,
                    // and heartbeats begin.
                    self.confirmed = true;
                    self.timers
                        .set(Timer::Idle, later(now, self.cfg.idle_timeout));
                    self.timers
                        .set(Timer::Heartbeat, later(now, self.cfg.heartbeat_interval));
                }
                if self.confirmed {
                    // The idle timer is re-armed lazily: when it fires,
                    // `handle_timeout` checks `last_recv`.
                    self.last_recv = now;
                }
            }
        }
        if self.state != State::Closed {
            self.arm_rto(false);
        }
        res
    }

    fn on_numbered(
        &mut self,
        now: Instant,
        pn: u32,
        ack: Option<AckRepr>,
        chunks: Option<Chunks<'_>>,
    ) -> Result<(), RudpError> {
        if self.state != State::Established {
            // Before ACCEPT we do not know the peer's initial sequence number;
            // the peer retransmits.
            return Err(RudpError::Unexpected("data before the handshake completed"));
        }
        match self.rx.check(pn) {
            PnStatus::New => {}
            PnStatus::Duplicate => {
                self.stats.duplicate_packets += 1;
                self.rx.repeat_ack();
                return Ok(());
            }
            PnStatus::TooOld => {
                self.stats.stale_packets += 1;
                return Ok(());
            }
        }
        // Validate everything before changing anything.
        if let Some(a) = &ack {
            if let Err(what) = self.tx.validate_ack(a) {
                return Err(self.violation(what));
            }
        }
        // A packet of one chunk (large messages) is parsed once more, not
        // twice.
        let mut only = None;
        if let Some(ch) = &chunks {
            let mut it = ch.iter();
            let checked = match it.next() {
                Some(c) if it.is_done() => self.rx.validate_chunk(&c).map(|()| only = Some(c)),
                _ => self.rx.validate_chunks(ch),
            };
            if let Err(what) = checked {
                return Err(self.violation(what));
            }
        }
        let in_order = self.rx.record(pn);
        self.stats.packets_received += 1;
        if let Some(a) = &ack {
            self.on_ack(now, a);
        }
        let mut rejected = false;
        // One call site, so that the chunk path is inlined here once (a
        // `chain` of the two costs more per chunk).
        let mut rest = chunks.filter(|_| only.is_none()).map(|ch| ch.iter());
        let mut next = only;
        while let Some(c) = next
            .take()
            .or_else(|| rest.as_mut().and_then(Iterator::next))
        {
            rejected |= self.on_chunk(&c);
        }
        if rejected {
            self.stats.rejected_packets += 1;
        } else {
            self.rx.insert_ackable(pn, now);
        }
        // Ack scheduling: at once for reordering or every N packets, else delayed.
        if self
            .rx
            .on_eliciting(in_order, self.cfg.ack_eliciting_threshold)
        {
            self.timers.stop(Timer::Ack);
        } else if !self.timers.is_set(Timer::Ack) {
            self.timers
                .set(Timer::Ack, later(now, self.cfg.max_ack_delay));
        }
        Ok(())
    }

    /// Takes one chunk of a validated packet; true if the receive budget
    /// refused it.
    #[inline(always)]
    fn on_chunk(&mut self, c: &ChunkRepr<'_>) -> bool {
        trace!(
            "rudp: {:08x} rx chunk {:?} seq {} frag {:?} len {}",
            self.conn_id,
            c.guarantee,
            c.seq,
            c.frag,
            c.payload.len()
        );
        if c.guarantee == Guarantee::Delivery {
            let outcome = self.rx.on_reliable(c, &mut self.inbox, &mut self.stats);
            matches!(outcome, ChunkOutcome::Rejected)
        } else {
            self.rx.on_unreliable(c, &mut self.inbox, &mut self.stats);
            false
        }
    }

    /// Queues `Event::Writable` for a send the endpoint refused (its
    /// source's or its own send budget), now that there is room again.
    pub(crate) fn notify_writable(&mut self) {
        if self.state != State::Closed && !self.closing {
            self.inbox.push_writable();
        }
    }

    fn check_writable(&mut self) {
        if self.want_writable
            && self.tx.queued_bytes() * 2 <= self.cfg.max_send_queue_bytes
            && self.tx.queued_msgs() * 2 <= self.cfg.max_send_queue_messages
        {
            self.want_writable = false;
            self.inbox.push_writable();
        }
    }

    /// Processes expired timers. Spurious calls (nothing due), repeated calls
    /// at the same instant and instants earlier than before are no-ops.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        if self.timers.take_expired(Timer::Idle, now) {
            // Re-armed lazily (see `handle_packet`): the true deadline may
            // be later than the one that fired.
            let deadline = later(self.last_recv, self.cfg.idle_timeout);
            if self.state == State::Established && self.confirmed && deadline > now {
                self.timers.set(Timer::Idle, deadline);
            } else {
                self.close_now(RudpCloseReason::Timeout);
                return;
            }
        }
        if self.timers.take_expired(Timer::Handshake, now)
            && matches!(self.state, State::Initial | State::Echo)
        {
            self.hs_send_pending = true;
            self.hs_attempts += 1;
            self.timers
                .set(Timer::Handshake, later(now, self.handshake_interval()));
        }
        if self.timers.take_expired(Timer::Ack, now) {
            self.rx.on_ack_timer();
        }
        // The pacer's deadline: nothing to do but let `poll_transmit` ask
        // the pacer again.
        let _ = self.timers.take_expired(Timer::Pace, now);
        if self.timers.take_expired(Timer::Loss, now) {
            self.detect_lost(now);
        }
        if self.timers.take_expired(Timer::Probe, now) {
            match self.probe_deadline() {
                Some(at) if now < at => self.timers.set(Timer::Probe, at),
                Some(_) => {
                    self.probe_pending = true;
                    self.probe_oldest = false;
                    self.probe_sent = true;
                }
                None => {}
            }
        }
        if self.timers.take_expired(Timer::Rto, now) {
            if self.tx.in_flight() > 0 && now < self.rto_deadline() {
                // Fired early (armed lazily): wait for the true deadline.
                self.arm_rto(true);
            } else {
                self.on_rto(now);
                if self.state == State::Closed {
                    return;
                }
            }
        }
        if self.timers.take_expired(Timer::Heartbeat, now)
            && self.state == State::Established
            && self.confirmed
        {
            let deadline = later(self.last_eliciting_sent, self.cfg.heartbeat_interval);
            if deadline > now {
                // Armed lazily (see `on_packet_sent`).
                self.timers.set(Timer::Heartbeat, deadline);
            } else {
                self.ping_pending = true;
            }
        }
        self.arm_rto(false);
    }

    /// The next instant at which [`handle_timeout`](Self::handle_timeout)
    /// should be called, if any.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        self.timers.next()
    }

    /// Whether [`poll_timeout`](Self::poll_timeout) may have changed since
    /// the last call (the endpoint re-files only those connections).
    pub(crate) fn take_timeout_changed(&mut self) -> bool {
        self.timers.take_changed()
    }

    // -- output ----------------------------------------------------------------

    /// Writes the next datagram to send into `buf` and returns its length,
    /// or `None` when there is nothing to send now. `buf` should be at least
    /// `RudpConfig::mtu` bytes; with a shorter one only handshake and control
    /// packets are produced.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let n = self.poll_transmit_inner(now, buf)?;
        self.stats.datagrams_sent += 1;
        self.stats.bytes_sent += n as u64;
        Some(n)
    }

    fn poll_transmit_inner(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        match self.state {
            State::Closed => None,
            State::Initial | State::Echo => {
                if !self.hs_send_pending {
                    return None;
                }
                let pkt = if self.state == State::Initial {
                    PacketRepr::Initial {
                        conn_id: self.conn_id,
                        nonce: self.nonce,
                    }
                } else {
                    PacketRepr::Echo {
                        conn_id: self.conn_id,
                        cookie: self.cookie,
                        params: self.local,
                    }
                };
                let n = pkt.emit(buf).ok()?;
                self.hs_send_pending = false;
                Some(n)
            }
            State::Established => self.transmit_established(now, buf),
        }
    }

    fn transmit_established(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if let Some(code) = self.close_packet {
            let n = PacketRepr::Close {
                conn_id: self.conn_id,
                reason: code,
            }
            .emit(buf)
            .ok()?;
            let reason = self.close_reason.take().unwrap_or(RudpCloseReason::Local);
            self.close_now(reason);
            return Some(n);
        }
        if let Some(ack) = self.rx.take_ack_snapshot() {
            let n = PacketRepr::Ack {
                conn_id: self.conn_id,
                ack,
            }
            .emit(buf)
            .ok()?;
            self.stats.acks_sent += 1;
            return Some(n);
        }
        if self.accept_pending {
            let n = PacketRepr::Accept {
                conn_id: self.conn_id,
                params: self.local,
            }
            .emit(buf)
            .ok()?;
            self.accept_pending = false;
            return Some(n);
        }
        if self.probe_pending {
            // One packet regardless of the congestion window: new data if
            // there is any, else the newest packet's chunks, else a PING.
            self.probe_pending = false;
            if !self.probe_oldest {
                self.stats.tail_probes += 1;
            }
            if buf.len() >= self.mtu {
                if !self.tx.has_sendable(self.peer_window) {
                    self.tx.queue_probe(self.probe_oldest);
                }
                if self.tx.has_sendable(self.peer_window) {
                    if let Some(n) = self.build_data(now, buf) {
                        return Some(n);
                    }
                }
            }
            self.ping_pending = true;
        }
        if buf.len() >= self.mtu && self.window_open() {
            if self.tx.has_sendable(self.peer_window) {
                let mtu = self.mtu as u64;
                match self.pacer.check(now, self.cc.pacing_rate(), mtu) {
                    Ok(()) => {
                        if let Some(n) = self.build_data(now, buf) {
                            return Some(n);
                        }
                    }
                    Err(at) => {
                        if !self.timers.is_set(Timer::Pace) {
                            self.stats.pacing_delays += 1;
                        }
                        self.timers.set(Timer::Pace, at);
                    }
                }
            } else {
                // Room in the window and nothing to send: the rate samples
                // of what is in flight say little about the path.
                self.rate.on_app_limited(self.tx.bytes_in_flight());
            }
        } else if buf.len() >= self.mtu && self.tx.has_sendable(self.peer_window) {
            self.cc.on_window_full();
        }
        if self.ping_pending {
            let ack = self.rx.ack_repr(now);
            let n = PacketRepr::Ping {
                conn_id: self.conn_id,
                pn: self.tx.next_pn(),
                ack,
            }
            .emit(buf)
            .ok()?;
            if ack.is_some() {
                self.on_ack_sent();
            }
            self.stats.pings_sent += 1;
            let log_end = self.tx.chunk_log_end();
            self.on_packet_sent(now, log_end, n, false, None);
            return Some(n);
        }
        if self.rx.ack_due() {
            let ack = self.rx.ack_repr(now)?;
            let n = PacketRepr::Ack {
                conn_id: self.conn_id,
                ack,
            }
            .emit(buf)
            .ok()?;
            self.on_ack_sent();
            self.stats.acks_sent += 1;
            return Some(n);
        }
        None
    }

    /// The congestion window (and the packet cap) leave room for a datagram.
    #[inline]
    fn window_open(&self) -> bool {
        self.tx.in_flight() < self.cfg.max_in_flight
            && self.tx.bytes_in_flight() + self.mtu as u64 <= self.cc.window()
    }

    /// A packet carrying the current ack was built: nothing is owed until
    /// more arrives.
    fn on_ack_sent(&mut self) {
        self.rx.on_ack_sent();
        self.timers.stop(Timer::Ack);
    }

    fn build_data(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let out = buf.get_mut(..self.mtu)?;
        // An ack rides along only when there is something new to ack: a
        // repeated one costs 18 bytes and the peer a pass over its bitmap.
        let ack = if self.rx.ack_pending() {
            self.rx.ack_repr(now)
        } else {
            None
        };
        let start = field::PN_END
            + if ack.is_some() {
                field::ACK_BLOCK_LEN
            } else {
                0
            };
        let log_start = self.tx.chunk_log_end();
        let filled = self.tx.fill(
            out,
            start,
            self.frag_size,
            self.peer_window,
            &mut self.stats,
        );
        if filled.end == start {
            return None;
        }
        let end = filled.end;
        let flags = if ack.is_some() { FLAG_ACK } else { 0 };
        emit_header(out, PacketType::Data, flags, self.conn_id);
        emit_pn_ack(out, self.tx.next_pn(), ack.as_ref());
        if ack.is_some() {
            self.on_ack_sent();
        }
        self.pacer.on_sent(end as u64);
        self.on_packet_sent(now, log_start, end, filled.unreliable, filled.top_seq);
        self.check_writable();
        self.check_close_flush();
        Some(end)
    }

    fn on_packet_sent(
        &mut self,
        now: Instant,
        log_start: u64,
        size: usize,
        unreliable: bool,
        top_seq: Option<u32>,
    ) {
        let size = size as u64;
        let in_flight = self.tx.bytes_in_flight();
        let cwnd_limited = (in_flight + size) * 2 >= self.cc.window();
        let info = SentInfo {
            cwnd_limited,
            unreliable,
            top_seq,
            size: size as u32,
            rate: self.rate.on_sent(now, in_flight, size),
        };
        let pn = self.tx.on_packet_sent(now, log_start, info);
        self.cc.on_sent(now, size, in_flight + size);
        trace!("rudp: {:08x} sent packet {pn}", self.conn_id);
        self.stats.packets_sent += 1;
        self.stats.peak_in_flight = self.stats.peak_in_flight.max(self.tx.in_flight());
        self.last_eliciting_sent = now;
        self.ping_pending = false;
        // Heartbeat and RTO only move later here: both are re-armed lazily
        // when they fire (see `handle_timeout`).
        if self.confirmed && !self.timers.is_set(Timer::Heartbeat) {
            self.timers
                .set(Timer::Heartbeat, later(now, self.cfg.heartbeat_interval));
        }
        self.arm_rto(false);
    }

    // -- events ----------------------------------------------------------------

    /// The next event, with message bytes copied out (or moved, for messages
    /// that were reassembled or reordered).
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.inbox.pop_event()
    }

    /// The next event, borrowing message bytes from the connection (no
    /// allocation per message for in-order small messages).
    #[must_use]
    pub fn poll_event_ref(&mut self) -> Option<EventRef<'_>> {
        self.inbox.pop_ref()
    }

    /// The next event; a message handled in place is left where it is
    /// ([`MsgRef::InPlace`]): the caller reads it from its buffer, which
    /// must still hold what [`handle_packet_in_place`](Self::handle_packet_in_place)
    /// saw.
    #[inline]
    pub(crate) fn poll_event_raw(&mut self) -> Option<RawEvent<'_>> {
        self.inbox.pop_raw()
    }

    /// Like [`handle_packet`](Self::handle_packet) for a packet that stays
    /// in the caller's receive buffer (`place`) until the events it causes
    /// are polled: messages lying whole in it are queued by position, not
    /// copied. Before that buffer is reused, every such event must be
    /// polled with [`poll_event_raw`](Self::poll_event_raw) or copied with
    /// [`materialize`](Self::materialize).
    pub(crate) fn handle_packet_in_place(
        &mut self,
        now: Instant,
        pkt: &PacketRepr<'_>,
        len: usize,
        place: InPlace,
    ) -> Result<(), RudpError> {
        self.inbox.set_place(Some(place));
        let r = self.handle_packet(now, pkt, len);
        self.inbox.set_place(None);
        r
    }

    /// Copies every queued in-place message out of `buf` (the caller's
    /// receive buffer, still holding the packets) into the connection.
    pub(crate) fn materialize(&mut self, buf: &[u8]) {
        self.inbox.materialize(buf);
        self.rx.forget_credit();
    }
}

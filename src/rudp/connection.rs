//! The per-peer state machine.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use log::{debug, trace};

use super::config::RudpConfig;
use super::rng::Rng;
use super::seq::{seq_dist, seq_ge, seq_gt, seq_le, seq_lt};
use super::timer::{Timer, TimerTable};
use super::wire::{
    emit_header, emit_pn_ack, field, AckRepr, ChunkRepr, Chunks, CloseCode, FragInfo, PacketRepr,
    PacketType, Params, SetInfo, FLAG_ACK,
};
use super::{CloseReason, Event, EventRef, Guarantee, RudpError, SendError};

/// Packets remembered by the receiver for duplicate detection and acks.
const PN_WINDOW: u32 = 128;
/// Cap of the exponent in RTO backoff.
const MAX_BACKOFF_SHIFT: u32 = 16;
/// Timer granularity assumed by RTT and loss computations.
const GRANULARITY: Duration = Duration::from_millis(1);
/// Numbers further apart than this are not compared against the first ever
/// sent (wrapping would make "older than the first" meaningless).
const OLD_LIMIT: u32 = 1 << 30;
/// Largest packet-reordering threshold learnt from spurious losses: the
/// ack bitmap covers 64 packets below the largest.
const MAX_REORDER_THRESHOLD: u32 = 64;
/// Consecutive retransmission timeouts from which the flight is declared
/// lost and the congestion window collapses; the ones before only probe.
const PERSISTENT_RTO: u32 = 2;
/// Packets declared lost remembered for spurious-loss detection.
const LOST_HISTORY: usize = 1024;
/// Loss epochs in a row without a spurious loss after which the learnt
/// reordering tolerance is forgotten (RACK keeps its window for 16
/// recoveries, RFC 8985 §6.2).
const REORDER_DECAY_EPOCHS: u32 = 16;

/// A packet declared lost, kept a while to recognise a late ack for it.
#[derive(Debug, Clone, Copy)]
struct LostPacket {
    pn: u32,
    sent: Instant,
    lost_at: Instant,
    /// Largest sequence number of its reliable chunks, when some were not
    /// yet acknowledged as it was declared lost: the cumulative ack passing
    /// it sooner than a retransmission could arrive proves the original
    /// did (how late packets beyond the reach of the ack bitmap are found).
    top_seq: Option<u32>,
    /// Loss epoch of the congestion controller it was counted in.
    epoch: u32,
}

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

/// Counters per delivery guarantee.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerGuarantee {
    /// `Guarantee::None`.
    pub none: u64,
    /// `Guarantee::Order`.
    pub order: u64,
    /// `Guarantee::Delivery`.
    pub delivery: u64,
}

impl PerGuarantee {
    fn add(&mut self, g: Guarantee) {
        match g {
            Guarantee::None => self.none += 1,
            Guarantee::Order => self.order += 1,
            Guarantee::Delivery => self.delivery += 1,
        }
    }

    /// Sum over all guarantees.
    pub fn total(&self) -> u64 {
        self.none + self.order + self.delivery
    }
}

/// Statistics of one connection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectionStats {
    /// Smoothed round-trip time.
    pub srtt: Duration,
    /// Round-trip time variation.
    pub rttvar: Duration,
    /// Smallest RTT sample (zero before the first one).
    pub min_rtt: Duration,
    /// Current retransmission timeout (before backoff).
    pub rto: Duration,
    /// Congestion window, packets.
    pub cwnd: u32,
    /// Ack-eliciting packets in flight.
    pub in_flight: u32,
    /// Most packets ever in flight at once.
    pub peak_in_flight: u32,
    /// Datagrams handed out by `poll_transmit` (all types).
    pub datagrams_sent: u64,
    /// Datagrams accepted by `handle_datagram` (all types, duplicates included).
    pub datagrams_received: u64,
    /// Bytes handed out by `poll_transmit`.
    pub bytes_sent: u64,
    /// Bytes of accepted datagrams.
    pub bytes_received: u64,
    /// Numbered (DATA and PING) packets sent.
    pub packets_sent: u64,
    /// Pure ACK packets sent.
    pub acks_sent: u64,
    /// PING packets sent (heartbeats and probes).
    pub pings_sent: u64,
    /// New numbered packets received.
    pub packets_received: u64,
    /// Packets declared lost.
    pub packets_lost: u64,
    /// Chunks sent for the first time.
    pub chunks_sent: u64,
    /// Reliable chunks sent again after a loss.
    pub chunks_retransmitted: u64,
    /// Retransmission timeouts that fired.
    pub rto_count: u64,
    /// Packets declared lost that were acknowledged afterwards (reordering
    /// or a delay spike, not loss); each widens the reordering tolerance.
    pub spurious_losses: u64,
    /// Congestion-window reductions undone because every loss that caused
    /// them turned out spurious.
    pub cwnd_undos: u64,
    /// Tail-loss probes sent (one packet before the RTO, see `docs/rudp.md`).
    pub tail_probes: u64,
    /// Current packet-reordering threshold (starts at
    /// `RudpConfig::packet_threshold`, raised by spurious losses; `u32::MAX`
    /// once reordering deeper than the ack bitmap was seen: time only).
    pub reorder_threshold: u32,
    /// Current extra reordering time window (zero until a spurious loss).
    pub reorder_window: Duration,
    /// Messages queued by `send` / `send_set`.
    pub messages_sent: PerGuarantee,
    /// Messages handed to the application.
    pub messages_delivered: PerGuarantee,
    /// Datagrams dropped because the same packet number was already received.
    pub duplicate_packets: u64,
    /// Reliable chunks dropped because their message was already received.
    pub duplicate_chunks: u64,
    /// Packets older than the duplicate-detection window, dropped.
    pub stale_packets: u64,
    /// `Order` messages dropped because a newer one was already delivered.
    pub stale_order_dropped: u64,
    /// Unreliable messages dropped by the receiver (buffer limits, evicted
    /// partial reassemblies).
    pub unreliable_dropped: u64,
    /// Packets left unacknowledged because the receive buffer was full.
    pub rejected_packets: u64,
    /// Protocol violations seen (each discarded its datagram).
    pub protocol_violations: u64,
}

// ---------------------------------------------------------------------------
// Send side

/// A FIFO byte store with absolute offsets, released from the front: a ring
/// whose capacity is a power of two, in which no message straddles the end
/// (a message that would is placed at the start of the next lap, leaving a
/// gap), so every message is one contiguous slice. Releasing is O(1) and
/// never moves bytes; growing copies the live bytes once.
#[derive(Debug, Default)]
struct ByteQueue {
    /// The ring; `data.len()` is 0 or a power of two.
    data: Vec<u8>,
    /// Absolute offset of the oldest byte still held.
    head: u64,
    /// Absolute offset just past the newest byte.
    tail: u64,
    /// Message bytes held (gaps excluded).
    bytes: usize,
}

impl ByteQueue {
    const MIN_CAPACITY: usize = 4096;

    /// Appends `bytes` contiguously; returns their absolute offset.
    fn push(&mut self, bytes: &[u8]) -> u64 {
        let n = bytes.len() as u64;
        if n == 0 {
            return self.tail;
        }
        loop {
            let cap = self.data.len() as u64;
            if cap > 0 {
                let pos = self.tail & (cap - 1);
                let start = if pos + n > cap {
                    self.tail + (cap - pos)
                } else {
                    self.tail
                };
                if start + n - self.head <= cap {
                    let p = (start & (cap - 1)) as usize;
                    if let Some(dst) = self.data.get_mut(p..p + bytes.len()) {
                        dst.copy_from_slice(bytes);
                    }
                    self.tail = start + n;
                    self.bytes += bytes.len();
                    return start;
                }
            }
            self.grow((self.tail - self.head + 2 * n) as usize);
        }
    }

    /// Grows to at least `need` bytes, keeping every live byte at its
    /// absolute offset (capacities stay powers of two and only double, so a
    /// message contiguous in the old ring is contiguous in the new one).
    fn grow(&mut self, need: usize) {
        let old = self.data.len();
        let mut cap = old.max(Self::MIN_CAPACITY);
        while cap < need {
            cap *= 2;
        }
        if cap == old {
            cap *= 2;
        }
        let mut data = vec![0u8; cap];
        let mut p = self.head;
        if old > 0 {
            let old_mask = old as u64 - 1;
            while p < self.tail {
                // Up to the end of the old lap.
                let lap_end = (p | old_mask) + 1;
                let end = lap_end.min(self.tail);
                let (src, dst) = ((p & old_mask) as usize, (p & (cap as u64 - 1)) as usize);
                let len = (end - p) as usize;
                if let (Some(d), Some(s)) =
                    (data.get_mut(dst..dst + len), self.data.get(src..src + len))
                {
                    d.copy_from_slice(s);
                }
                p = end;
            }
        }
        self.data = data;
    }

    fn end(&self) -> u64 {
        self.tail
    }

    fn slice(&self, off: u64, len: usize) -> &[u8] {
        let cap = self.data.len() as u64;
        let start = (off & cap.wrapping_sub(1)) as usize;
        let s = self.data.get(start..start + len);
        debug_assert!(
            s.is_some() && off >= self.head && off + len as u64 <= self.tail,
            "send buffer bookkeeping"
        );
        s.unwrap_or(&[])
    }

    /// Message bytes held.
    fn live_len(&self) -> usize {
        self.bytes
    }

    /// Releases everything before `off`, of which `bytes` message bytes.
    fn release_to(&mut self, off: u64, bytes: usize) {
        self.head = self.head.max(off.min(self.tail));
        self.bytes = self.bytes.saturating_sub(bytes);
        if self.head == self.tail {
            debug_assert_eq!(self.bytes, 0, "send buffer byte count");
            self.bytes = 0;
        }
    }

    fn clear(&mut self) {
        self.data = Vec::new();
        self.head = self.tail;
        self.bytes = 0;
    }
}

/// A reliable message until it is fully acknowledged.
#[derive(Debug)]
struct OutMsg {
    offset: u64,
    len: u32,
    /// Fragment payload size; 0 until first transmission decides it.
    frag_size: u32,
    /// 1 for an unfragmented message; 0 until decided.
    frag_count: u16,
    acked_frags: u16,
    set: Option<SetInfo>,
    done: bool,
    /// Acked-fragment bitmap, only for fragmented messages.
    frag_bits: Vec<u64>,
}

impl OutMsg {
    fn fragment(&mut self, frag_size: usize) {
        let len = self.len as usize;
        if len <= frag_size {
            self.frag_size = len as u32;
            self.frag_count = 1;
        } else {
            self.frag_size = frag_size as u32;
            self.frag_count = len.div_ceil(frag_size).min(usize::from(u16::MAX)) as u16;
            self.frag_bits = vec![0; usize::from(self.frag_count).div_ceil(64)];
        }
    }

    fn frag_info(&self, f: u16) -> Option<FragInfo> {
        (self.frag_count > 1).then_some(FragInfo {
            index: f,
            count: self.frag_count,
        })
    }

    fn frag_range(&self, f: u16) -> (u64, usize) {
        let start = u64::from(f) * u64::from(self.frag_size);
        let end = (start + u64::from(self.frag_size)).min(u64::from(self.len));
        (start, (end.saturating_sub(start)) as usize)
    }

    fn frag_acked(&self, f: u16) -> bool {
        if self.done {
            return true;
        }
        if self.frag_count <= 1 {
            return false;
        }
        self.frag_bits
            .get(usize::from(f / 64))
            .is_some_and(|w| (w >> (f % 64)) & 1 == 1)
    }

    fn ack_frag(&mut self, f: u16) {
        if self.done || f >= self.frag_count.max(1) {
            return;
        }
        if self.frag_count <= 1 {
            self.done = true;
            return;
        }
        if let Some(w) = self.frag_bits.get_mut(usize::from(f / 64)) {
            let bit = 1u64 << (f % 64);
            if *w & bit == 0 {
                *w |= bit;
                self.acked_frags += 1;
                if self.acked_frags >= self.frag_count {
                    self.done = true;
                    self.frag_bits = Vec::new();
                }
            }
        }
    }
}

/// An unreliable message until it is sent.
#[derive(Debug)]
struct UnrelMsg {
    guarantee: Guarantee,
    seq: u32,
    offset: u64,
    len: u32,
    frag_size: u32,
    frag_count: u16,
    next_frag: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PktState {
    InFlight,
    Acked,
    Lost,
}

#[derive(Debug)]
struct SentPacket {
    time: Instant,
    /// Absolute indexes into the chunk log: the reliable chunks it carried.
    log_start: u64,
    log_end: u64,
    state: PktState,
    /// Sent while the congestion window was at least half used.
    cwnd_limited: bool,
    /// Carried unreliable chunks (whose fate only an explicit ack tells).
    unreliable: bool,
    /// Largest sequence number among its reliable chunks (None: none).
    top_seq: Option<u32>,
}

/// What [`SendState::fill`] put into a packet.
#[derive(Debug, Clone, Copy)]
struct Filled {
    /// New end of the packet.
    end: usize,
    /// An unreliable chunk was written.
    unreliable: bool,
    /// Largest sequence number among the reliable chunks written.
    top_seq: Option<u32>,
}

#[inline]
fn seq_max(a: Option<u32>, b: u32) -> Option<u32> {
    Some(match a {
        Some(a) if seq_gt(a, b) => a,
        _ => b,
    })
}

#[derive(Debug)]
struct SendState {
    buf: ByteQueue,
    ubuf: ByteQueue,
    /// Reliable messages `una ..` not yet fully acknowledged.
    msgs: VecDeque<OutMsg>,
    una: u32,
    next_seq: u32,
    initial_seq: u32,
    /// Next reliable chunk never sent.
    cursor_seq: u32,
    cursor_frag: u16,
    /// Reliable chunks to send again, oldest loss first.
    retx: VecDeque<(u32, u16)>,
    unrel: VecDeque<UnrelMsg>,
    order_seq: u32,
    none_seq: u32,
    /// The peer's latest cumulative ack (its next expected Delivery message).
    peer_cum: u32,
    /// Numbered packets `sent_base ..` not yet resolved (acked or lost).
    sent: VecDeque<SentPacket>,
    sent_base: u32,
    next_pn: u32,
    first_pn: u32,
    /// Reliable chunks carried by the packets in `sent`.
    chunk_log: VecDeque<(u32, u16)>,
    chunk_log_base: u64,
    largest_acked: Option<u32>,
    in_flight: u32,
}

impl SendState {
    fn new(initial: u32) -> Self {
        SendState {
            buf: ByteQueue::default(),
            ubuf: ByteQueue::default(),
            msgs: VecDeque::new(),
            una: initial,
            next_seq: initial,
            initial_seq: initial,
            cursor_seq: initial,
            cursor_frag: 0,
            retx: VecDeque::new(),
            unrel: VecDeque::new(),
            order_seq: initial,
            none_seq: initial,
            peer_cum: initial,
            sent: VecDeque::new(),
            sent_base: initial,
            next_pn: initial,
            first_pn: initial,
            chunk_log: VecDeque::new(),
            chunk_log_base: 0,
            largest_acked: None,
            in_flight: 0,
        }
    }

    fn queued_bytes(&self) -> usize {
        self.buf.live_len() + self.ubuf.live_len()
    }

    fn queued_msgs(&self) -> usize {
        self.msgs.len() + self.unrel.len()
    }

    fn chunk_log_end(&self) -> u64 {
        self.chunk_log_base + self.chunk_log.len() as u64
    }

    fn push_reliable(&mut self, data: &[u8], set: Option<SetInfo>) {
        let offset = self.buf.push(data);
        self.msgs.push_back(OutMsg {
            offset,
            len: data.len() as u32,
            frag_size: 0,
            frag_count: 0,
            acked_frags: 0,
            set,
            done: false,
            frag_bits: Vec::new(),
        });
        self.next_seq = self.next_seq.wrapping_add(1);
    }

    fn push_unreliable(&mut self, g: Guarantee, data: &[u8]) {
        let offset = self.ubuf.push(data);
        let seq = match g {
            Guarantee::Order => &mut self.order_seq,
            _ => &mut self.none_seq,
        };
        let s = *seq;
        *seq = seq.wrapping_add(1);
        self.unrel.push_back(UnrelMsg {
            guarantee: g,
            seq: s,
            offset,
            len: data.len() as u32,
            frag_size: 0,
            frag_count: 0,
            next_frag: 0,
        });
    }

    fn new_data_allowed(&self, window: u32) -> bool {
        self.cursor_seq != self.next_seq
            && seq_lt(self.cursor_seq, self.peer_cum.wrapping_add(window))
    }

    fn has_sendable(&self, window: u32) -> bool {
        !self.retx.is_empty() || !self.unrel.is_empty() || self.new_data_allowed(window)
    }

    fn msg(&self, seq: u32) -> Option<&OutMsg> {
        if seq_lt(seq, self.una) {
            return None;
        }
        self.msgs.get(seq_dist(self.una, seq) as usize)
    }

    /// Packs chunks into `out[pos..]` (retransmissions, then unreliable
    /// messages, then new reliable ones).
    fn fill(
        &mut self,
        out: &mut [u8],
        mut pos: usize,
        frag_size: usize,
        window: u32,
        stats: &mut ConnectionStats,
    ) -> Filled {
        let mut unreliable = false;
        let mut top_seq = None;
        // 1. Retransmissions.
        while let Some(&(seq, frag)) = self.retx.front() {
            let chunk = match self.msg(seq) {
                Some(m) if !m.frag_acked(frag) => {
                    let (start, len) = m.frag_range(frag);
                    ChunkRepr {
                        guarantee: Guarantee::Delivery,
                        seq,
                        frag: m.frag_info(frag),
                        set: m.set,
                        payload: self.buf.slice(m.offset + start, len),
                    }
                }
                _ => {
                    self.retx.pop_front();
                    continue;
                }
            };
            let Some(dst) = out.get_mut(pos..pos + chunk.buffer_len()) else {
                break;
            };
            pos += chunk.emit(dst).unwrap_or(0);
            self.retx.pop_front();
            self.chunk_log.push_back((seq, frag));
            top_seq = seq_max(top_seq, seq);
            stats.chunks_retransmitted += 1;
        }
        // 2. Unreliable messages, each sent once.
        'unrel: while let Some(u) = self.unrel.front_mut() {
            if u.frag_count == 0 {
                let len = u.len as usize;
                if len <= frag_size {
                    u.frag_size = u.len;
                    u.frag_count = 1;
                } else {
                    u.frag_size = frag_size as u32;
                    u.frag_count = len.div_ceil(frag_size).min(usize::from(u16::MAX)) as u16;
                }
            }
            while u.next_frag < u.frag_count {
                let start = u64::from(u.next_frag) * u64::from(u.frag_size);
                let end = (start + u64::from(u.frag_size)).min(u64::from(u.len));
                let chunk = ChunkRepr {
                    guarantee: u.guarantee,
                    seq: u.seq,
                    frag: (u.frag_count > 1).then_some(FragInfo {
                        index: u.next_frag,
                        count: u.frag_count,
                    }),
                    set: None,
                    payload: self.ubuf.slice(u.offset + start, (end - start) as usize),
                };
                let Some(dst) = out.get_mut(pos..pos + chunk.buffer_len()) else {
                    break 'unrel;
                };
                pos += chunk.emit(dst).unwrap_or(0);
                unreliable = true;
                u.next_frag += 1;
                stats.chunks_sent += 1;
            }
            let (end, len) = (u.offset + u64::from(u.len), u.len as usize);
            self.unrel.pop_front();
            match self.unrel.front() {
                Some(next) => self.ubuf.release_to(next.offset, len),
                None => self.ubuf.release_to(end, len),
            }
        }
        // 3. New reliable chunks, within the peer's receive window.
        while self.new_data_allowed(window) {
            let seq = self.cursor_seq;
            let idx = seq_dist(self.una, seq) as usize;
            let Some(m) = self.msgs.get_mut(idx) else {
                break;
            };
            if m.frag_count == 0 {
                m.fragment(frag_size);
            }
            let frag = self.cursor_frag;
            let (start, len) = m.frag_range(frag);
            let chunk = ChunkRepr {
                guarantee: Guarantee::Delivery,
                seq,
                frag: m.frag_info(frag),
                set: m.set,
                payload: self.buf.slice(m.offset + start, len),
            };
            let Some(dst) = out.get_mut(pos..pos + chunk.buffer_len()) else {
                break;
            };
            pos += chunk.emit(dst).unwrap_or(0);
            let count = m.frag_count;
            self.chunk_log.push_back((seq, frag));
            top_seq = Some(seq);
            stats.chunks_sent += 1;
            self.cursor_frag += 1;
            if self.cursor_frag >= count {
                self.cursor_frag = 0;
                self.cursor_seq = self.cursor_seq.wrapping_add(1);
            }
        }
        Filled {
            end: pos,
            unreliable,
            top_seq,
        }
    }

    fn ack_chunk(&mut self, seq: u32, frag: u16) {
        if seq_lt(seq, self.una) {
            return;
        }
        if let Some(m) = self.msgs.get_mut(seq_dist(self.una, seq) as usize) {
            m.ack_frag(frag);
        }
    }

    /// Releases messages below the cumulative ack and fully acked ones at the front.
    fn advance_una(&mut self, cum: u32) {
        let mut freed = 0usize;
        while seq_lt(self.una, cum) {
            let Some(m) = self.msgs.pop_front() else {
                break;
            };
            freed += m.len as usize;
            self.una = self.una.wrapping_add(1);
        }
        while self.msgs.front().is_some_and(|m| m.done) {
            if let Some(m) = self.msgs.pop_front() {
                freed += m.len as usize;
            }
            self.una = self.una.wrapping_add(1);
        }
        if freed > 0 || self.msgs.is_empty() {
            match self.msgs.front() {
                Some(m) => self.buf.release_to(m.offset, freed),
                None => self.buf.release_to(self.buf.end(), freed),
            }
        }
    }

    /// Drops resolved packets from the front, and their chunk-log entries.
    fn pop_resolved(&mut self) {
        while self
            .sent
            .front()
            .is_some_and(|p| p.state != PktState::InFlight)
        {
            self.sent.pop_front();
            self.sent_base = self.sent_base.wrapping_add(1);
        }
        let keep_from = self
            .sent
            .front()
            .map_or(self.chunk_log_end(), |p| p.log_start);
        let n = keep_from.saturating_sub(self.chunk_log_base) as usize;
        let n = n.min(self.chunk_log.len());
        self.chunk_log.drain(..n);
        self.chunk_log_base += n as u64;
    }

    fn log_entry(&self, i: u64) -> Option<(u32, u16)> {
        self.chunk_log
            .get(i.checked_sub(self.chunk_log_base)? as usize)
            .copied()
    }
}

// ---------------------------------------------------------------------------
// Receive side

/// Received packet numbers: `largest` and a bitmap of the 127 before it.
#[derive(Debug, Default, Clone)]
struct PnWindow {
    largest: Option<u32>,
    /// Bit `i` set: packet `largest - i` received.
    bits: u128,
}

#[derive(Debug, PartialEq, Eq)]
enum PnStatus {
    New,
    Duplicate,
    TooOld,
}

impl PnWindow {
    fn check(&self, pn: u32) -> PnStatus {
        let Some(l) = self.largest else {
            return PnStatus::New;
        };
        if seq_gt(pn, l) {
            return PnStatus::New;
        }
        let k = seq_dist(pn, l);
        if k >= PN_WINDOW {
            PnStatus::TooOld
        } else if (self.bits >> k) & 1 == 1 {
            PnStatus::Duplicate
        } else {
            PnStatus::New
        }
    }

    /// Records `pn`; returns true when it became the new largest.
    fn insert(&mut self, pn: u32) -> bool {
        match self.largest {
            None => {
                self.largest = Some(pn);
                self.bits = 1;
                true
            }
            Some(l) if seq_gt(pn, l) => {
                let shift = seq_dist(l, pn);
                self.bits = if shift >= PN_WINDOW {
                    0
                } else {
                    self.bits << shift
                };
                self.bits |= 1;
                self.largest = Some(pn);
                true
            }
            Some(l) => {
                let k = seq_dist(pn, l);
                if k < PN_WINDOW {
                    self.bits |= 1u128 << k;
                }
                false
            }
        }
    }
}

/// A message being reassembled from fragments. Every fragment but the last
/// carries exactly `frag_size` bytes, so fragment `i` goes to `i * frag_size`.
#[derive(Debug)]
struct Reassembly {
    count: u16,
    received: u16,
    bits: Vec<u64>,
    data: Vec<u8>,
    total: Option<usize>,
    set: Option<SetInfo>,
}

enum FragInsert {
    Added { grown: usize },
    Duplicate,
    Mismatch,
}

impl Reassembly {
    fn new(count: u16, set: Option<SetInfo>) -> Self {
        Reassembly {
            count,
            received: 0,
            bits: vec![0; usize::from(count).div_ceil(64)],
            data: Vec::new(),
            total: None,
            set,
        }
    }

    fn growth(&self, f: FragInfo, len: usize, frag_size: usize) -> usize {
        (usize::from(f.index) * frag_size + len).saturating_sub(self.data.len())
    }

    fn insert(&mut self, f: FragInfo, payload: &[u8], frag_size: usize) -> FragInsert {
        if f.count != self.count {
            return FragInsert::Mismatch;
        }
        let (w, bit) = (usize::from(f.index / 64), 1u64 << (f.index % 64));
        let Some(word) = self.bits.get_mut(w) else {
            return FragInsert::Mismatch;
        };
        if *word & bit != 0 {
            return FragInsert::Duplicate;
        }
        *word |= bit;
        self.received += 1;
        let start = usize::from(f.index) * frag_size;
        let end = start + payload.len();
        let mut grown = 0;
        if self.data.len() < end {
            grown = end - self.data.len();
            self.data.resize(end, 0);
        }
        if let Some(dst) = self.data.get_mut(start..end) {
            dst.copy_from_slice(payload);
        }
        if f.index + 1 == f.count {
            self.total = Some(end);
        }
        FragInsert::Added { grown }
    }

    fn is_complete(&self) -> bool {
        self.received == self.count
    }

    fn finish(mut self) -> Vec<u8> {
        if let Some(t) = self.total {
            self.data.truncate(t);
        }
        self.data
    }

    fn held(&self) -> usize {
        self.data.len()
    }
}

#[derive(Debug)]
enum Slot {
    Empty,
    Partial(Reassembly),
    Complete { data: Vec<u8>, set: Option<SetInfo> },
    Delivered,
}

#[derive(Debug)]
struct UnrelPartial {
    guarantee: Guarantee,
    seq: u32,
    r: Reassembly,
}

#[derive(Debug)]
enum ChunkOutcome {
    Accepted,
    Duplicate,
    /// Could not be buffered: the packet must not be acknowledged.
    Rejected,
}

/// Data handed to the application, waiting in the event queue.
#[derive(Debug)]
enum MsgData {
    Arena {
        start: usize,
        len: usize,
    },
    Owned(Vec<u8>),
    /// Still in the caller's receive buffer, at `offset` (a packet handled
    /// with [`Connection::handle_packet_in_place`]): not copied at all.
    InPlace {
        offset: usize,
        len: usize,
    },
}

/// A packet being handled where it lies in the caller's receive buffer:
/// the address and length of its bytes, and their offset in that buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InPlace {
    pub(crate) base: usize,
    pub(crate) len: usize,
    pub(crate) origin: usize,
}

/// A message's bytes as [`Connection::poll_event_raw`] gives them.
#[derive(Debug)]
pub(crate) enum MsgRef<'a> {
    /// Here.
    Bytes(&'a [u8]),
    /// In the caller's receive buffer, `buf[offset..offset + len]`.
    InPlace { offset: usize, len: usize },
}

/// [`EventRef`] with message bytes possibly left in the caller's buffer.
#[derive(Debug)]
pub(crate) enum RawEvent<'a> {
    Connected,
    Message {
        data: MsgRef<'a>,
        guarantee: Guarantee,
    },
    Writable,
    Closed(CloseReason),
}

#[derive(Debug)]
enum PendingEvent {
    Connected,
    Message { guarantee: Guarantee, data: MsgData },
    Writable,
    Closed(CloseReason),
}

/// Events waiting for `poll_event`, with an arena for in-order small messages.
#[derive(Debug, Default)]
struct Inbox {
    events: VecDeque<PendingEvent>,
    arena: Vec<u8>,
    /// Message bytes waiting in `events`.
    bytes: usize,
    delivered: PerGuarantee,
    /// Set while a packet is handled in place: messages that lie whole in
    /// it are queued by position instead of copied.
    place: Option<InPlace>,
}

impl Inbox {
    fn deliver_slice(&mut self, g: Guarantee, data: &[u8]) {
        if let Some(p) = self.place {
            let at = (data.as_ptr() as usize).wrapping_sub(p.base);
            if at <= p.len && data.len() <= p.len - at {
                self.bytes += data.len();
                self.delivered.add(g);
                self.events.push_back(PendingEvent::Message {
                    guarantee: g,
                    data: MsgData::InPlace {
                        offset: p.origin + at,
                        len: data.len(),
                    },
                });
                return;
            }
        }
        if self.events.is_empty() {
            self.arena.clear();
        }
        let start = self.arena.len();
        self.arena.extend_from_slice(data);
        self.bytes += data.len();
        self.delivered.add(g);
        self.events.push_back(PendingEvent::Message {
            guarantee: g,
            data: MsgData::Arena {
                start,
                len: data.len(),
            },
        });
    }

    fn deliver_vec(&mut self, g: Guarantee, data: Vec<u8>) {
        self.bytes += data.len();
        self.delivered.add(g);
        self.events.push_back(PendingEvent::Message {
            guarantee: g,
            data: MsgData::Owned(data),
        });
    }
}

#[derive(Debug)]
struct RecvState {
    seen: PnWindow,
    ackable: PnWindow,
    largest_time: Option<Instant>,
    eliciting_unacked: u32,
    ack_pending: bool,
    ack_immediate: bool,
    /// Next Delivery message to hand out: every one before it was delivered.
    next_deliver: u32,
    /// Slot `i` is message `next_deliver + i`.
    window: VecDeque<Slot>,
    /// End (exclusive) of the message set being delivered, if one is open.
    set_end: Option<u32>,
    /// Bytes held in `window` and `partials`.
    buffered: usize,
    order_latest: Option<u32>,
    partials: VecDeque<UnrelPartial>,
    /// Lowest ackable packet number not yet named by any ack sent.
    unreported: Option<u32>,
    /// Acks taken before the bitmap would have dropped packets never
    /// reported (more than 64 received between two acks sent), sent first.
    ack_snapshots: VecDeque<AckRepr>,
}

/// Ack snapshots kept at most (see `RecvState::ack_snapshots`).
const MAX_ACK_SNAPSHOTS: usize = 16;

impl RecvState {
    fn new(next_deliver: u32) -> Self {
        RecvState {
            seen: PnWindow::default(),
            ackable: PnWindow::default(),
            largest_time: None,
            eliciting_unacked: 0,
            ack_pending: false,
            ack_immediate: false,
            next_deliver,
            window: VecDeque::new(),
            set_end: None,
            buffered: 0,
            order_latest: None,
            partials: VecDeque::new(),
            unreported: None,
            ack_snapshots: VecDeque::new(),
        }
    }

    /// Records an ackable packet. When it would push a packet that no ack
    /// has named yet out of the 64-packet bitmap, the ack as it stands is
    /// kept for sending first: every packet received is named by some ack,
    /// however many arrive between two calls to `poll_transmit` (else the
    /// sender, not hearing of them, would resend them).
    fn insert_ackable(&mut self, pn: u32, now: Instant) {
        if let (Some(u), Some(l)) = (self.unreported, self.ackable.largest) {
            if seq_gt(pn, l) && seq_dist(u, pn) > 64 {
                if let Some(a) = self.ack_repr(now) {
                    if self.ack_snapshots.len() >= MAX_ACK_SNAPSHOTS {
                        self.ack_snapshots.pop_front();
                    }
                    self.ack_snapshots.push_back(a);
                }
                self.unreported = None;
            }
        }
        if self.ackable.insert(pn) {
            self.largest_time = Some(now);
        }
        match (self.unreported, self.ackable.largest) {
            (None, _) => self.unreported = Some(pn),
            (Some(u), Some(l)) if seq_lt(pn, u) && seq_dist(pn, l) <= 64 => {
                self.unreported = Some(pn);
            }
            _ => {}
        }
    }

    fn ack_repr(&self, now: Instant) -> Option<AckRepr> {
        let largest = self.ackable.largest?;
        let delay = self
            .largest_time
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        Some(AckRepr {
            largest,
            bitmap: (self.ackable.bits >> 1) as u64,
            delay: AckRepr::encode_delay(delay),
            cum_seq: self.next_deliver,
        })
    }

    fn on_ack_sent(&mut self) {
        self.ack_pending = false;
        self.ack_immediate = false;
        self.eliciting_unacked = 0;
        self.unreported = None;
    }

    /// Checks a chunk against the limits without changing anything.
    fn validate_chunk(
        &self,
        c: &ChunkRepr<'_>,
        frag_size: usize,
        max_msg: usize,
        recv_window: u32,
    ) -> Result<(), &'static str> {
        match c.frag {
            None => {
                if c.payload.len() > max_msg {
                    return Err("message larger than max_message_len");
                }
            }
            Some(f) => {
                let before = (usize::from(f.count) - 1) * frag_size;
                if f.index + 1 < f.count {
                    if c.payload.len() != frag_size {
                        return Err("fragment size differs from the negotiated one");
                    }
                    if before >= max_msg {
                        return Err("fragmented message larger than max_message_len");
                    }
                } else if c.payload.is_empty()
                    || c.payload.len() > frag_size
                    || before + c.payload.len() > max_msg
                {
                    return Err("bad last fragment size");
                }
            }
        }
        if c.guarantee == Guarantee::Delivery
            && seq_ge(c.seq, self.next_deliver)
            && seq_dist(self.next_deliver, c.seq) >= recv_window
        {
            return Err("message beyond the receive window");
        }
        Ok(())
    }

    fn on_reliable(
        &mut self,
        c: &ChunkRepr<'_>,
        frag_size: usize,
        budget: usize,
        inbox: &mut Inbox,
        stats: &mut ConnectionStats,
    ) -> ChunkOutcome {
        let seq = c.seq;
        if seq_lt(seq, self.next_deliver) {
            stats.duplicate_chunks += 1;
            return ChunkOutcome::Duplicate;
        }
        let off = seq_dist(self.next_deliver, seq) as usize;
        // Fast path: the next message, whole, nothing special pending.
        if off == 0
            && c.frag.is_none()
            && c.set.is_none()
            && self.set_end.is_none()
            && self.window.front().is_none_or(|s| matches!(s, Slot::Empty))
        {
            if self.buffered + inbox.bytes + c.payload.len() > budget {
                return ChunkOutcome::Rejected;
            }
            inbox.deliver_slice(Guarantee::Delivery, c.payload);
            self.window.pop_front();
            self.next_deliver = self.next_deliver.wrapping_add(1);
            self.release(inbox);
            return ChunkOutcome::Accepted;
        }
        while self.window.len() <= off {
            self.window.push_back(Slot::Empty);
        }
        let used = self.buffered + inbox.bytes;
        let slot = &mut self.window[off];
        let (data, set) = match (c.frag, slot) {
            (_, Slot::Delivered | Slot::Complete { .. }) => {
                stats.duplicate_chunks += 1;
                return ChunkOutcome::Duplicate;
            }
            (None, Slot::Partial(_)) => {
                stats.duplicate_chunks += 1;
                return ChunkOutcome::Duplicate;
            }
            (None, s @ Slot::Empty) => {
                if used + c.payload.len() > budget {
                    return ChunkOutcome::Rejected;
                }
                *s = Slot::Empty;
                self.buffered += c.payload.len();
                (c.payload.to_vec(), c.set)
            }
            (Some(f), s) => {
                if let Slot::Empty = s {
                    *s = Slot::Partial(Reassembly::new(f.count, c.set));
                }
                let Slot::Partial(r) = s else {
                    return ChunkOutcome::Duplicate;
                };
                if used + r.growth(f, c.payload.len(), frag_size) > budget {
                    return ChunkOutcome::Rejected;
                }
                match r.insert(f, c.payload, frag_size) {
                    FragInsert::Added { grown } => self.buffered += grown,
                    FragInsert::Duplicate | FragInsert::Mismatch => {
                        stats.duplicate_chunks += 1;
                        return ChunkOutcome::Duplicate;
                    }
                }
                if !r.is_complete() {
                    return ChunkOutcome::Accepted;
                }
                let Slot::Partial(r) = core::mem::replace(s, Slot::Empty) else {
                    return ChunkOutcome::Accepted;
                };
                let set = r.set;
                let held = r.held();
                let data = r.finish();
                // `held` was counted; the finished vector is at most that long.
                self.buffered = self.buffered - held + data.len();
                (data, set)
            }
        };
        self.window[off] = Slot::Complete { data, set };
        if let Some(s) = set {
            let start = seq.wrapping_sub(u32::from(s.index));
            if self.set_end.is_none() && start == self.next_deliver {
                self.open_set(start.wrapping_add(u32::from(s.len)), inbox);
            } else if self.set_end.is_some_and(|end| seq_lt(seq, end)) {
                self.deliver_slot(off, inbox);
            }
        }
        self.release(inbox);
        ChunkOutcome::Accepted
    }

    fn deliver_slot(&mut self, off: usize, inbox: &mut Inbox) {
        if let Some(slot) = self.window.get_mut(off) {
            if let Slot::Complete { .. } = slot {
                if let Slot::Complete { data, .. } = core::mem::replace(slot, Slot::Delivered) {
                    self.buffered -= data.len();
                    inbox.deliver_vec(Guarantee::Delivery, data);
                }
            }
        }
    }

    fn open_set(&mut self, end: u32, inbox: &mut Inbox) {
        let end = if seq_gt(end, self.next_deliver) {
            end
        } else {
            self.next_deliver.wrapping_add(1)
        };
        self.set_end = Some(end);
        let n = (seq_dist(self.next_deliver, end) as usize).min(self.window.len());
        for off in 0..n {
            self.deliver_slot(off, inbox);
        }
    }

    /// Hands out everything deliverable at the front of the window.
    fn release(&mut self, inbox: &mut Inbox) {
        loop {
            match self.window.front() {
                Some(Slot::Delivered) => {}
                Some(Slot::Complete { set, .. }) => {
                    if self.set_end.is_none() {
                        if let Some(s) = *set {
                            let start = self.next_deliver.wrapping_sub(u32::from(s.index));
                            self.open_set(start.wrapping_add(u32::from(s.len)), inbox);
                            continue;
                        }
                    }
                    self.deliver_slot(0, inbox);
                }
                _ => break,
            }
            self.window.pop_front();
            self.next_deliver = self.next_deliver.wrapping_add(1);
            if let Some(end) = self.set_end {
                if seq_ge(self.next_deliver, end) {
                    self.set_end = None;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_unreliable(
        &mut self,
        c: &ChunkRepr<'_>,
        frag_size: usize,
        budget: usize,
        max_partials: usize,
        inbox: &mut Inbox,
        stats: &mut ConnectionStats,
    ) {
        let g = c.guarantee;
        if g == Guarantee::Order && self.order_latest.is_some_and(|l| seq_le(c.seq, l)) {
            stats.stale_order_dropped += 1;
            return;
        }
        let Some(f) = c.frag else {
            if self.buffered + inbox.bytes + c.payload.len() > budget {
                stats.unreliable_dropped += 1;
                return;
            }
            if g == Guarantee::Order {
                self.order_latest = Some(c.seq);
                self.drop_stale_partials(stats);
            }
            inbox.deliver_slice(g, c.payload);
            return;
        };
        let idx = match self
            .partials
            .iter()
            .position(|p| p.guarantee == g && p.seq == c.seq)
        {
            Some(i) => i,
            None => {
                if self.partials.len() >= max_partials {
                    if let Some(old) = self.partials.pop_front() {
                        self.buffered -= old.r.held();
                        stats.unreliable_dropped += 1;
                    }
                }
                self.partials.push_back(UnrelPartial {
                    guarantee: g,
                    seq: c.seq,
                    r: Reassembly::new(f.count, None),
                });
                self.partials.len() - 1
            }
        };
        let used = self.buffered + inbox.bytes;
        let Some(p) = self.partials.get_mut(idx) else {
            return;
        };
        if used + p.r.growth(f, c.payload.len(), frag_size) > budget {
            stats.unreliable_dropped += 1;
            return;
        }
        match p.r.insert(f, c.payload, frag_size) {
            FragInsert::Added { grown } => self.buffered += grown,
            FragInsert::Duplicate | FragInsert::Mismatch => return,
        }
        if p.r.is_complete() {
            if let Some(p) = self.partials.remove(idx) {
                self.buffered -= p.r.held();
                let data = p.r.finish();
                if g == Guarantee::Order {
                    self.order_latest = Some(c.seq);
                    self.drop_stale_partials(stats);
                }
                inbox.deliver_vec(g, data);
            }
        }
    }

    fn drop_stale_partials(&mut self, stats: &mut ConnectionStats) {
        let Some(latest) = self.order_latest else {
            return;
        };
        let before = self.partials.len();
        let mut freed = 0;
        self.partials.retain(|p| {
            let stale = p.guarantee == Guarantee::Order && seq_le(p.seq, latest);
            if stale {
                freed += p.r.held();
            }
            !stale
        });
        self.buffered -= freed;
        stats.stale_order_dropped += (before - self.partials.len()) as u64;
    }
}

// ---------------------------------------------------------------------------
// Recovery and congestion

#[derive(Debug)]
struct RttEstimator {
    srtt: Duration,
    rttvar: Duration,
    min_rtt: Option<Duration>,
    latest: Duration,
    has_sample: bool,
}

impl RttEstimator {
    fn new(initial: Duration) -> Self {
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
    fn update(&mut self, sample: Duration, ack_delay: Duration, max_ack_delay: Duration) {
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

    fn rto(&self, peer_max_ack_delay: Duration, min: Duration, max: Duration) -> Duration {
        (self.srtt + (self.rttvar * 4).max(GRANULARITY) + peer_max_ack_delay).clamp(min, max)
    }

    /// Time threshold of loss detection: 9/8 of the RTT (RFC 9002), or the
    /// reordering window learnt from spurious losses, whichever is larger.
    fn loss_delay(&self, reorder_window: Duration) -> Duration {
        (self.srtt.max(self.latest) * 9 / 8)
            .max(reorder_window)
            .max(GRANULARITY)
    }
}

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
#[derive(Debug)]
struct Congestion {
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
    fn new(cfg: &RudpConfig) -> Self {
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
    fn count_lost(&mut self) {
        if let Some(u) = &mut self.undo {
            u.lost += 1;
        }
    }

    /// A packet of loss epoch `epoch` was acknowledged after all. Returns
    /// true when the reduction of that epoch was undone.
    fn on_spurious(&mut self, epoch: u32) -> bool {
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

    fn on_ack(&mut self, pn: u32, cwnd_limited: bool) {
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

    fn on_loss(&mut self, pn: u32, next_pn: u32) {
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
    fn on_rto(&mut self, next_pn: u32) {
        self.new_epoch(0);
        self.ssthresh = (self.cwnd / 2).max(self.min);
        self.cwnd = self.min;
        self.acc = 0;
        self.recovery_start = Some(next_pn);
    }
}

// ---------------------------------------------------------------------------
// Connection

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
    cc: Congestion,
    rto_backoff: u32,
    consecutive_rto: u32,
    /// Packet threshold of loss detection (adaptive, see `on_spurious_loss`).
    reorder_threshold: u32,
    /// Extra time threshold of loss detection learnt from spurious losses.
    reorder_window: Duration,
    /// Recently lost packets, increasing packet numbers.
    lost_history: VecDeque<LostPacket>,
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
    close_reason: Option<CloseReason>,
    inbox: Inbox,
    /// The message most recently returned by `poll_event_ref`, kept alive
    /// for the borrow.
    inbox_last: Option<Vec<u8>>,
    want_writable: bool,
    violations: u32,
    stats: ConnectionStats,
}

impl Connection {
    fn new(cfg: RudpConfig, side: Side, conn_id: u32, now: Instant, seed: u64) -> Self {
        let cfg = cfg.sanitized();
        let mut rng = Rng::new(seed ^ u64::from(conn_id).rotate_left(32));
        let initial = cfg.initial_sequence.unwrap_or_else(|| rng.next_u32());
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
            rx: RecvState::new(0),
            rtt: RttEstimator::new(cfg.initial_rtt),
            cc: Congestion::new(&cfg),
            rto_backoff: 0,
            consecutive_rto: 0,
            reorder_threshold: cfg.packet_threshold,
            reorder_window: Duration::ZERO,
            lost_history: VecDeque::new(),
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
            inbox_last: None,
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
        self.peer_window = peer.recv_window;
        self.peer_max_message = peer.max_message_len as usize;
        self.peer_max_ack_delay = Duration::from_millis(u64::from(peer.max_ack_delay_ms));
        self.rx = RecvState::new(peer.initial_seq);
        self.state = State::Established;
        self.confirmed = true;
        self.ping_pending = true;
        self.last_recv = now;
        self.timers.stop(Timer::Handshake);
        self.timers
            .set(Timer::Idle, later(now, self.cfg.idle_timeout));
        self.timers
            .set(Timer::Heartbeat, later(now, self.cfg.heartbeat_interval));
        self.inbox.events.push_back(PendingEvent::Connected);
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
        !self.inbox.events.is_empty()
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
        s.cwnd = self.cc.cwnd;
        s.in_flight = self.tx.in_flight;
        s.reorder_threshold = self.reorder_threshold;
        s.reorder_window = self.reorder_window;
        s.messages_delivered = self.inbox.delivered;
        s
    }

    fn current_rto(&self) -> Duration {
        self.rtt
            .rto(self.peer_max_ack_delay, self.cfg.min_rto, self.cfg.max_rto)
    }

    // -- application commands ------------------------------------------------

    fn check_send(&mut self, lens: impl Iterator<Item = usize>, n: usize) -> Result<(), SendError> {
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
        let len = msgs.len() as u16;
        for (i, m) in msgs.iter().enumerate() {
            let set = (len > 1).then_some(SetInfo {
                index: i as u16,
                len,
            });
            self.tx.push_reliable(m, set);
            self.stats.messages_sent.add(Guarantee::Delivery);
        }
        Ok(())
    }

    /// Closes the connection gracefully: no new messages are accepted; once
    /// every queued message has been sent and every reliable one acknowledged,
    /// a CLOSE is sent and `Closed(Local)` is reported. A client still in its
    /// handshake with nothing queued closes at once; with messages queued it
    /// completes the handshake and flushes them first. The usual timeouts
    /// still apply while draining.
    pub fn close(&mut self) {
        match self.state {
            State::Closed => {}
            State::Initial | State::Echo => {
                if self.tx.msgs.is_empty() && self.tx.unrel.is_empty() {
                    self.close_now(CloseReason::Local);
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
        if self.closing
            && self.close_packet.is_none()
            && self.tx.msgs.is_empty()
            && self.tx.unrel.is_empty()
        {
            self.close_packet = Some(CloseCode::Normal);
            self.close_reason = Some(CloseReason::Local);
        }
    }

    fn close_now(&mut self, reason: CloseReason) {
        if self.state == State::Closed {
            return;
        }
        debug!("rudp: connection {:08x} closed: {:?}", self.conn_id, reason);
        self.state = State::Closed;
        self.timers.stop_all();
        self.close_packet = None;
        self.tx.buf.clear();
        self.tx.ubuf.clear();
        self.tx.msgs = VecDeque::new();
        self.tx.unrel = VecDeque::new();
        self.tx.retx = VecDeque::new();
        self.tx.sent = VecDeque::new();
        self.tx.chunk_log = VecDeque::new();
        self.tx.in_flight = 0;
        self.rx.window = VecDeque::new();
        self.rx.partials = VecDeque::new();
        self.rx.ack_snapshots = VecDeque::new();
        self.rx.buffered = 0;
        self.inbox.events.push_back(PendingEvent::Closed(reason));
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
            self.close_reason = Some(CloseReason::ProtocolViolation(what));
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
        if self.inbox.events.is_empty() {
            self.inbox.arena.clear();
        }
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
                    match self.validate_ack(&ack) {
                        Err(what) => Err(self.violation(what)),
                        Ok(()) => {
                            self.on_ack(now, &ack);
                            Ok(())
                        }
                    }
                }
            }
            PacketRepr::Close { .. } => {
                self.close_now(CloseReason::ClosedByPeer);
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
                    // The handshake deadline gives way to the idle timeout.
                    self.confirmed = true;
                    self.timers
                        .set(Timer::Idle, later(now, self.cfg.idle_timeout));
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
        match self.rx.seen.check(pn) {
            PnStatus::New => {}
            PnStatus::Duplicate => {
                self.stats.duplicate_packets += 1;
                // Our ack may have been lost: repeat it soon.
                self.rx.ack_pending = true;
                self.rx.ack_immediate = true;
                return Ok(());
            }
            PnStatus::TooOld => {
                self.stats.stale_packets += 1;
                return Ok(());
            }
        }
        // Validate everything before changing anything.
        if let Some(a) = &ack {
            if let Err(what) = self.validate_ack(a) {
                return Err(self.violation(what));
            }
        }
        if let Some(ch) = &chunks {
            let max_msg = self.cfg.max_message_len;
            for c in ch.iter() {
                if let Err(what) =
                    self.rx
                        .validate_chunk(&c, self.frag_size, max_msg, self.cfg.recv_window)
                {
                    return Err(self.violation(what));
                }
            }
        }
        let in_order = self.rx.seen.largest.is_none_or(|l| pn == l.wrapping_add(1));
        self.rx.seen.insert(pn);
        self.stats.packets_received += 1;
        if let Some(a) = &ack {
            self.on_ack(now, a);
        }
        let mut rejected = false;
        if let Some(ch) = chunks {
            let budget = self.cfg.max_recv_buffer_bytes;
            for c in ch.iter() {
                trace!(
                    "rudp: {:08x} rx chunk {:?} seq {} frag {:?} len {}",
                    self.conn_id,
                    c.guarantee,
                    c.seq,
                    c.frag,
                    c.payload.len()
                );
                match c.guarantee {
                    Guarantee::Delivery => {
                        match self.rx.on_reliable(
                            &c,
                            self.frag_size,
                            budget,
                            &mut self.inbox,
                            &mut self.stats,
                        ) {
                            ChunkOutcome::Rejected => rejected = true,
                            ChunkOutcome::Accepted | ChunkOutcome::Duplicate => {}
                        }
                    }
                    _ => self.rx.on_unreliable(
                        &c,
                        self.frag_size,
                        budget,
                        self.cfg.max_unreliable_partials,
                        &mut self.inbox,
                        &mut self.stats,
                    ),
                }
            }
        }
        if rejected {
            self.stats.rejected_packets += 1;
        } else {
            self.rx.insert_ackable(pn, now);
        }
        // Ack scheduling: at once for reordering or every N packets, else delayed.
        self.rx.ack_pending = true;
        self.rx.eliciting_unacked += 1;
        if !in_order || self.rx.eliciting_unacked >= self.cfg.ack_eliciting_threshold {
            self.rx.ack_immediate = true;
            self.timers.stop(Timer::Ack);
        } else if !self.timers.is_set(Timer::Ack) {
            self.timers
                .set(Timer::Ack, later(now, self.cfg.max_ack_delay));
        }
        Ok(())
    }

    fn validate_ack(&self, ack: &AckRepr) -> Result<(), &'static str> {
        let tx = &self.tx;
        if seq_ge(ack.largest, tx.next_pn) {
            return Err("ack for a packet never sent");
        }
        if seq_lt(ack.largest, tx.first_pn) && seq_dist(tx.first_pn, tx.next_pn) < OLD_LIMIT {
            return Err("ack older than any packet sent");
        }
        if seq_gt(ack.cum_seq, tx.cursor_seq) {
            return Err("cumulative ack beyond the messages sent");
        }
        if seq_lt(ack.cum_seq, tx.initial_seq) && seq_dist(tx.initial_seq, tx.next_seq) < OLD_LIMIT
        {
            return Err("cumulative ack before the first message");
        }
        Ok(())
    }

    /// Applies a validated ack.
    fn on_ack(&mut self, now: Instant, ack: &AckRepr) {
        // The cumulative ack first: it releases most messages at once, and
        // chunks below it need no individual acknowledgement.
        if seq_gt(ack.cum_seq, self.tx.peer_cum) {
            self.tx.peer_cum = ack.cum_seq;
        }
        let una = self.tx.una;
        self.tx.advance_una(self.tx.peer_cum);
        if una != self.tx.una && !self.lost_history.is_empty() {
            self.check_cumulative_spurious(now);
        }
        let mut newly_acked = false;
        // Merge cursor into `lost_history` (sorted by packet number) for the
        // packet numbers of this ack, visited in decreasing order: entries
        // `..lost_hi` are at or below the current one.
        let mut lost_hi = self.lost_history.len();
        // Bit `i` of `named`: packet `largest - i` (the largest, then the
        // bitmap); visited set bit by set bit, newest first.
        let mut named = (u128::from(ack.bitmap) << 1) | 1;
        while named != 0 {
            let i = named.trailing_zeros();
            named &= named - 1;
            let pn = ack.largest.wrapping_sub(i);
            let p = if seq_lt(pn, self.tx.sent_base) {
                // Older packets are resolved: only a spurious loss can be
                // left to find among them.
                if self.lost_history.front().is_none_or(|l| seq_lt(pn, l.pn)) {
                    break;
                }
                None
            } else {
                let idx = seq_dist(self.tx.sent_base, pn) as usize;
                self.tx
                    .sent
                    .get_mut(idx)
                    .filter(|p| p.state == PktState::InFlight)
            };
            let Some(p) = p else {
                while lost_hi > 0
                    && self
                        .lost_history
                        .get(lost_hi - 1)
                        .is_some_and(|l| seq_gt(l.pn, pn))
                {
                    lost_hi -= 1;
                }
                if lost_hi > 0
                    && self
                        .lost_history
                        .get(lost_hi - 1)
                        .is_some_and(|l| l.pn == pn)
                {
                    lost_hi -= 1;
                    if let Some(lost) = self.lost_history.remove(lost_hi) {
                        // Declared lost, yet acknowledged: reordering or a
                        // delay spike, not loss.
                        self.on_spurious_loss(now, lost, seq_dist(pn, ack.largest));
                    }
                }
                continue;
            };
            p.state = PktState::Acked;
            let (start, end, time, cwnd_limited, top) =
                (p.log_start, p.log_end, p.time, p.cwnd_limited, p.top_seq);
            self.tx.in_flight = self.tx.in_flight.saturating_sub(1);
            newly_acked = true;
            if i == 0 {
                let sample = now.saturating_duration_since(time);
                self.rtt
                    .update(sample, ack.delay(), self.peer_max_ack_delay);
            }
            self.cc.on_ack(pn, cwnd_limited);
            // When even the packet's largest sequence number is below `una`,
            // every chunk in it is released already.
            if top.is_some_and(|t| seq_ge(t, self.tx.una)) {
                for li in start..end {
                    if let Some((seq, frag)) = self.tx.log_entry(li) {
                        self.tx.ack_chunk(seq, frag);
                    }
                }
            }
        }
        if self.tx.largest_acked.is_none_or(|l| seq_gt(ack.largest, l)) {
            self.tx.largest_acked = Some(ack.largest);
        }
        if newly_acked {
            self.consecutive_rto = 0;
            self.rto_backoff = 0;
            self.probe_sent = false;
            // The RTT or the backoff changed: the deadline may move forward.
            self.arm_rto(true);
        }
        self.tx.advance_una(self.tx.peer_cum);
        self.tx.pop_resolved();
        self.detect_lost(now);
        self.check_writable();
        self.check_close_flush();
    }

    fn mark_lost(&mut self, now: Instant, idx: usize, congestion: bool) {
        let Some(p) = self.tx.sent.get_mut(idx) else {
            return;
        };
        if p.state != PktState::InFlight {
            return;
        }
        p.state = PktState::Lost;
        let (start, end, sent, top_seq) = (p.log_start, p.log_end, p.time, p.top_seq);
        let pn = self.tx.sent_base.wrapping_add(idx as u32);
        self.tx.in_flight = self.tx.in_flight.saturating_sub(1);
        self.stats.packets_lost += 1;
        trace!("rudp: {:08x} packet {pn} lost", self.conn_id);
        for li in start..end {
            if let Some((seq, frag)) = self.tx.log_entry(li) {
                if self.tx.msg(seq).is_some_and(|m| !m.frag_acked(frag)) {
                    self.tx.retx.push_back((seq, frag));
                }
            }
        }
        if congestion {
            self.cc.on_loss(pn, self.tx.next_pn);
            if self.cc.clean_epochs >= REORDER_DECAY_EPOCHS {
                self.reorder_threshold = self.cfg.packet_threshold;
                self.reorder_window = Duration::ZERO;
            }
        } else {
            self.cc.count_lost();
        }
        if self.lost_history.len() >= LOST_HISTORY {
            self.lost_history.pop_front();
        }
        let una = self.tx.una;
        self.lost_history.push_back(LostPacket {
            pn,
            sent,
            lost_at: now,
            top_seq: top_seq.filter(|&t| seq_ge(t, una)),
            epoch: self.cc.epoch,
        });
    }

    /// The cumulative ack moved: a lost packet whose reliable chunks it now
    /// covers, sooner than one RTT after the loss was declared, was not
    /// lost (the retransmission cannot have arrived yet).
    fn check_cumulative_spurious(&mut self, now: Instant) {
        let (Some(min_rtt), Some(largest)) = (self.rtt.min_rtt, self.tx.largest_acked) else {
            return;
        };
        let una = self.tx.una;
        // Only losses declared within the last minimum RTT qualify: scan
        // from the newest (declared in time order) and stop at the first
        // older one.
        let mut i = self.lost_history.len();
        while i > 0 {
            i -= 1;
            let Some(l) = self.lost_history.get(i) else {
                break;
            };
            if now.saturating_duration_since(l.lost_at) >= min_rtt {
                break;
            }
            if l.top_seq.is_some_and(|t| seq_lt(t, una)) {
                let pn = l.pn;
                if let Some(lost) = self.lost_history.remove(i) {
                    self.on_spurious_loss(now, lost, seq_dist(pn, largest));
                }
            }
        }
    }

    /// Widens the reordering tolerance to what `lost` needed (RACK, RFC
    /// 8985 §6.2: packet threshold to the reordering degree seen — beyond
    /// the ack bitmap, time only — and time window to the time it took),
    /// and undoes the congestion-window cut when every loss of its epoch
    /// was spurious.
    fn on_spurious_loss(&mut self, now: Instant, lost: LostPacket, overtaken: u32) {
        let pn = lost.pn;
        self.stats.spurious_losses += 1;
        let degree = overtaken.saturating_add(1);
        self.reorder_threshold = if degree > MAX_REORDER_THRESHOLD {
            u32::MAX
        } else {
            self.reorder_threshold.max(degree)
        };
        let took = now.saturating_duration_since(lost.sent);
        let cap = self.current_rto().max(self.rtt.srtt * 2);
        self.reorder_window = self.reorder_window.max(took + took / 8).min(cap);
        if self.cc.on_spurious(lost.epoch) {
            self.stats.cwnd_undos += 1;
            debug!(
                "rudp: {:08x} spurious loss: congestion window restored to {}",
                self.conn_id, self.cc.cwnd
            );
        }
        trace!(
            "rudp: {:08x} packet {pn} was not lost: threshold {}, window {:?}",
            self.conn_id,
            self.reorder_threshold,
            self.reorder_window
        );
    }

    fn reliable_content_acked(&self, idx: usize) -> bool {
        let Some(p) = self.tx.sent.get(idx) else {
            return true;
        };
        (p.log_start..p.log_end).all(|li| match self.tx.log_entry(li) {
            Some((seq, frag)) => self.tx.msg(seq).is_none_or(|m| m.frag_acked(frag)),
            None => true,
        })
    }

    fn mark_implicitly_acked(&mut self, idx: usize) {
        let pn = self.tx.sent_base.wrapping_add(idx as u32);
        if let Some(p) = self.tx.sent.get_mut(idx) {
            if p.state == PktState::InFlight {
                p.state = PktState::Acked;
                let cwnd_limited = p.cwnd_limited;
                self.tx.in_flight = self.tx.in_flight.saturating_sub(1);
                self.cc.on_ack(pn, cwnd_limited);
            }
        }
    }

    /// Packet- and time-threshold loss detection (RFC 9002 §6.1).
    fn detect_lost(&mut self, now: Instant) {
        let Some(largest) = self.tx.largest_acked else {
            self.timers.stop(Timer::Loss);
            return;
        };
        let delay = self.rtt.loss_delay(self.reorder_window);
        loop {
            self.tx.pop_resolved();
            let pn = self.tx.sent_base;
            let Some(p) = self.tx.sent.front() else {
                break;
            };
            if !seq_lt(pn, largest) {
                break;
            }
            let dist = seq_dist(pn, largest);
            // Beyond the ack bitmap the ack says nothing about this packet
            // (a receiver that got more than 64 packets between two acks
            // never names the older ones): if everything reliable in it is
            // known delivered (cumulative or chunk acks), it was delivered;
            // otherwise only time can tell, not packets acked after it.
            let beyond = dist > 64;
            if beyond && !p.unreliable && self.reliable_content_acked(0) {
                self.mark_implicitly_acked(0);
                continue;
            }
            let by_count = !beyond && dist >= self.reorder_threshold;
            let by_time = now.saturating_duration_since(p.time) >= delay;
            if !(by_count || by_time) {
                break;
            }
            self.mark_lost(now, 0, true);
        }
        match self.tx.sent.front() {
            Some(p) if seq_lt(self.tx.sent_base, largest) => {
                self.timers.set(Timer::Loss, later(p.time, delay));
            }
            _ => self.timers.stop(Timer::Loss),
        }
        // Acks name at most 64 packets below their largest, and the
        // cumulative test needs an answer within the minimum RTT: older
        // losses can no longer be found spurious.
        let min_rtt = self.rtt.min_rtt.unwrap_or_default();
        while self.lost_history.front().is_some_and(|l| {
            seq_lt(l.pn, largest)
                && seq_dist(l.pn, largest) > 64
                && (l.top_seq.is_none() || now.saturating_duration_since(l.lost_at) >= min_rtt)
        }) {
            self.lost_history.pop_front();
        }
    }

    fn on_rto(&mut self, now: Instant) {
        if self.tx.in_flight == 0 {
            return;
        }
        self.consecutive_rto += 1;
        self.stats.rto_count += 1;
        if self.consecutive_rto > self.cfg.max_retransmits {
            self.close_now(CloseReason::Timeout);
            return;
        }
        debug!(
            "rudp: {:08x} retransmission timeout #{} ({} in flight)",
            self.conn_id, self.consecutive_rto, self.tx.in_flight
        );
        self.rto_backoff = (self.rto_backoff + 1).min(MAX_BACKOFF_SHIFT);
        if self.consecutive_rto < PERSISTENT_RTO {
            // A probe, as QUIC's PTO (RFC 9002 §6.2): one packet regardless
            // of the congestion window, nothing declared lost yet. If the
            // flight was lost, the probe's ack reveals it (time threshold)
            // and ordinary recovery halves the window; if it was only late,
            // nothing is lost.
            self.probe_pending = true;
            self.probe_oldest = true;
            return;
        }
        // Persistent: every packet in flight is lost, the window collapses.
        self.cc.on_rto(self.tx.next_pn);
        for idx in 0..self.tx.sent.len() {
            self.mark_lost(now, idx, false);
        }
        self.tx.pop_resolved();
        self.probe_pending = false;
        if self.tx.retx.is_empty() {
            // Nothing to resend (only pings were in flight): probe.
            self.ping_pending = true;
        }
        self.detect_lost(now);
    }

    /// When the retransmission timer should fire: the backed-off RTO after
    /// the last ack-eliciting packet.
    fn rto_deadline(&self) -> Instant {
        let rto = self
            .current_rto()
            .saturating_mul(1 << self.rto_backoff.min(MAX_BACKOFF_SHIFT))
            .min(self.cfg.max_rto);
        later(self.last_eliciting_sent, rto)
    }

    /// Arms (or stops) the retransmission timer.
    ///
    /// Lazy unless `exact`: an armed timer is left alone, because the
    /// callers that are not exact can only push the true deadline back (a
    /// packet was sent); the timer then fires early and
    /// [`handle_timeout`](Self::handle_timeout) re-arms it at the true
    /// deadline. This keeps timer arithmetic off the per-packet path.
    /// Callers that may bring the deadline forward (an ack that reset the
    /// backoff or changed the RTT) pass `exact`.
    fn arm_rto(&mut self, exact: bool) {
        if self.tx.in_flight == 0 || self.state != State::Established {
            self.timers.stop(Timer::Rto);
            self.timers.stop(Timer::Probe);
            return;
        }
        if exact || !self.timers.is_set(Timer::Rto) {
            let at = self.rto_deadline();
            self.timers.set(Timer::Rto, at);
        }
        if exact || !self.timers.is_set(Timer::Probe) {
            match self.probe_deadline() {
                Some(at) => self.timers.set(Timer::Probe, at),
                None => self.timers.stop(Timer::Probe),
            }
        }
    }

    /// When a tail-loss probe is due (RFC 8985 §7): two smoothed RTTs after
    /// the last ack-eliciting packet, plus the peer's ack delay when a
    /// single packet is in flight (its ack may be delayed); `None` when it
    /// would not come before the RTO, before the first RTT sample, or when
    /// a probe is already out.
    fn probe_deadline(&self) -> Option<Instant> {
        if self.probe_sent || !self.rtt.has_sample || self.tx.in_flight == 0 {
            return None;
        }
        let mut pto = (self.rtt.srtt * 2).max(GRANULARITY * 2);
        if self.tx.in_flight == 1 {
            pto += self.peer_max_ack_delay;
        }
        let at = later(self.last_eliciting_sent, pto);
        (at < self.rto_deadline()).then_some(at)
    }

    /// A probe without new data: sends the reliable chunks of the newest
    /// (tail-loss probe) or oldest (retransmission timeout) packet in flight
    /// again. The packet stays in flight; if it was lost, the probe repairs
    /// it and the probe's ack reveals the loss.
    fn queue_probe_retransmission(&mut self, oldest: bool) {
        let carries = |p: &&SentPacket| p.state == PktState::InFlight && p.log_end > p.log_start;
        let p = if oldest {
            self.tx.sent.iter().find(carries)
        } else {
            self.tx.sent.iter().rev().find(carries)
        };
        let Some(p) = p else {
            return;
        };
        for li in (p.log_start..p.log_end).rev() {
            if let Some((seq, frag)) = self.tx.log_entry(li) {
                if self.tx.msg(seq).is_some_and(|m| !m.frag_acked(frag)) {
                    self.tx.retx.push_front((seq, frag));
                }
            }
        }
    }

    fn check_writable(&mut self) {
        if self.want_writable
            && self.tx.queued_bytes() * 2 <= self.cfg.max_send_queue_bytes
            && self.tx.queued_msgs() * 2 <= self.cfg.max_send_queue_messages
        {
            self.want_writable = false;
            self.inbox.events.push_back(PendingEvent::Writable);
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
                self.close_now(CloseReason::Timeout);
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
        if self.timers.take_expired(Timer::Ack, now) && self.rx.ack_pending {
            self.rx.ack_immediate = true;
        }
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
            if self.tx.in_flight > 0 && now < self.rto_deadline() {
                // Fired early (armed lazily): wait for the true deadline.
                self.arm_rto(true);
            } else {
                self.on_rto(now);
                if self.state == State::Closed {
                    return;
                }
            }
        }
        if self.timers.take_expired(Timer::Heartbeat, now) && self.state == State::Established {
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
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let n = self.poll_transmit_inner(now, buf)?;
        self.stats.datagrams_sent += 1;
        self.stats.bytes_sent += n as u64;
        Some(n)
    }

    fn poll_transmit_inner(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        match self.state {
            State::Closed => None,
            State::Initial => {
                if !self.hs_send_pending {
                    return None;
                }
                let n = PacketRepr::Initial {
                    conn_id: self.conn_id,
                    nonce: self.nonce,
                }
                .emit(buf)
                .ok()?;
                self.hs_send_pending = false;
                Some(n)
            }
            State::Echo => {
                if !self.hs_send_pending {
                    return None;
                }
                let n = PacketRepr::Echo {
                    conn_id: self.conn_id,
                    cookie: self.cookie,
                    params: self.local,
                }
                .emit(buf)
                .ok()?;
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
            let reason = self.close_reason.take().unwrap_or(CloseReason::Local);
            self.close_now(reason);
            return Some(n);
        }
        if let Some(ack) = self.rx.ack_snapshots.pop_front() {
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
                    self.queue_probe_retransmission(self.probe_oldest);
                }
                if self.tx.has_sendable(self.peer_window) {
                    if let Some(n) = self.build_data(now, buf) {
                        return Some(n);
                    }
                }
            }
            self.ping_pending = true;
        }
        if buf.len() >= self.mtu
            && self.tx.in_flight < self.cc.cwnd
            && self.tx.has_sendable(self.peer_window)
        {
            if let Some(n) = self.build_data(now, buf) {
                return Some(n);
            }
        }
        if self.ping_pending {
            let ack = self.rx.ack_repr(now);
            let n = PacketRepr::Ping {
                conn_id: self.conn_id,
                pn: self.tx.next_pn,
                ack,
            }
            .emit(buf)
            .ok()?;
            if ack.is_some() {
                self.rx.on_ack_sent();
                self.timers.stop(Timer::Ack);
            }
            self.stats.pings_sent += 1;
            let log_end = self.tx.chunk_log_end();
            self.on_packet_sent(now, log_end, false, None);
            return Some(n);
        }
        if self.rx.ack_pending && self.rx.ack_immediate {
            let ack = self.rx.ack_repr(now)?;
            let n = PacketRepr::Ack {
                conn_id: self.conn_id,
                ack,
            }
            .emit(buf)
            .ok()?;
            self.rx.on_ack_sent();
            self.timers.stop(Timer::Ack);
            self.stats.acks_sent += 1;
            return Some(n);
        }
        None
    }

    fn build_data(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        let out = buf.get_mut(..self.mtu)?;
        // An ack rides along only when there is something new to ack: a
        // repeated one costs 18 bytes and the peer a pass over its bitmap.
        let ack = if self.rx.ack_pending {
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
        emit_pn_ack(out, self.tx.next_pn, ack.as_ref());
        if ack.is_some() {
            self.rx.on_ack_sent();
            self.timers.stop(Timer::Ack);
        }
        self.on_packet_sent(now, log_start, filled.unreliable, filled.top_seq);
        self.check_writable();
        self.check_close_flush();
        Some(end)
    }

    fn on_packet_sent(
        &mut self,
        now: Instant,
        log_start: u64,
        unreliable: bool,
        top_seq: Option<u32>,
    ) {
        let cwnd_limited = (self.tx.in_flight + 1) * 2 >= self.cc.cwnd;
        self.tx.sent.push_back(SentPacket {
            time: now,
            log_start,
            log_end: self.tx.chunk_log_end(),
            state: PktState::InFlight,
            cwnd_limited,
            unreliable,
            top_seq,
        });
        trace!("rudp: {:08x} sent packet {}", self.conn_id, self.tx.next_pn);
        self.tx.next_pn = self.tx.next_pn.wrapping_add(1);
        self.tx.in_flight += 1;
        self.stats.packets_sent += 1;
        self.stats.peak_in_flight = self.stats.peak_in_flight.max(self.tx.in_flight);
        self.last_eliciting_sent = now;
        self.ping_pending = false;
        // Heartbeat and RTO only move later here: both are re-armed lazily
        // when they fire (see `handle_timeout`).
        if !self.timers.is_set(Timer::Heartbeat) {
            self.timers
                .set(Timer::Heartbeat, later(now, self.cfg.heartbeat_interval));
        }
        self.arm_rto(false);
    }

    // -- events ----------------------------------------------------------------

    /// The next event, with message bytes copied out (or moved, for messages
    /// that were reassembled or reordered).
    pub fn poll_event(&mut self) -> Option<Event> {
        let Some(ev) = self.inbox.events.pop_front() else {
            self.inbox.arena.clear();
            return None;
        };
        Some(match ev {
            PendingEvent::Connected => Event::Connected,
            PendingEvent::Writable => Event::Writable,
            PendingEvent::Closed(r) => Event::Closed(r),
            PendingEvent::Message { guarantee, data } => {
                let data = match data {
                    MsgData::Owned(v) => v,
                    MsgData::Arena { start, len } => self
                        .inbox
                        .arena
                        .get(start..start + len)
                        .unwrap_or(&[])
                        .to_vec(),
                    MsgData::InPlace { len, .. } => {
                        // Only the reactor handles packets in place, and it
                        // polls with `poll_event_raw`.
                        debug_assert!(false, "in-place message polled by copy");
                        log::error!("rudp: a {len} B message left in a receive buffer was lost");
                        Vec::new()
                    }
                };
                self.inbox.bytes -= data.len();
                Event::Message { data, guarantee }
            }
        })
    }

    /// The next event, borrowing message bytes from the connection (no
    /// allocation per message for in-order small messages).
    pub fn poll_event_ref(&mut self) -> Option<EventRef<'_>> {
        Some(match self.poll_event_raw()? {
            RawEvent::Connected => EventRef::Connected,
            RawEvent::Writable => EventRef::Writable,
            RawEvent::Closed(r) => EventRef::Closed(r),
            RawEvent::Message { data, guarantee } => EventRef::Message {
                data: match data {
                    MsgRef::Bytes(d) => d,
                    MsgRef::InPlace { len, .. } => {
                        // As in `poll_event`: only the reactor's path makes these.
                        debug_assert!(false, "in-place message polled by reference");
                        log::error!("rudp: a {len} B message left in a receive buffer was lost");
                        &[]
                    }
                },
                guarantee,
            },
        })
    }

    /// The next event; a message handled in place is left where it is
    /// ([`MsgRef::InPlace`]): the caller reads it from its buffer, which
    /// must still hold what [`handle_packet_in_place`](Self::handle_packet_in_place)
    /// saw.
    pub(crate) fn poll_event_raw(&mut self) -> Option<RawEvent<'_>> {
        let Some(ev) = self.inbox.events.pop_front() else {
            self.inbox.arena.clear();
            self.inbox_last = None;
            return None;
        };
        Some(match ev {
            PendingEvent::Message { guarantee, data } => {
                let data = match data {
                    MsgData::Arena { start, len } => {
                        self.inbox.bytes -= len;
                        MsgRef::Bytes(self.inbox.arena.get(start..start + len).unwrap_or(&[]))
                    }
                    MsgData::Owned(v) => {
                        self.inbox.bytes -= v.len();
                        MsgRef::Bytes(self.inbox_last.insert(v))
                    }
                    MsgData::InPlace { offset, len } => {
                        self.inbox.bytes -= len;
                        MsgRef::InPlace { offset, len }
                    }
                };
                RawEvent::Message { data, guarantee }
            }
            PendingEvent::Connected => RawEvent::Connected,
            PendingEvent::Writable => RawEvent::Writable,
            PendingEvent::Closed(r) => RawEvent::Closed(r),
        })
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
        self.inbox.place = Some(place);
        let r = self.handle_packet(now, pkt, len);
        self.inbox.place = None;
        r
    }

    /// Copies every queued in-place message out of `buf` (the caller's
    /// receive buffer, still holding the packets) into the connection.
    pub(crate) fn materialize(&mut self, buf: &[u8]) {
        let Inbox { events, arena, .. } = &mut self.inbox;
        for ev in events.iter_mut() {
            if let PendingEvent::Message { data, .. } = ev {
                if let MsgData::InPlace { offset, len } = *data {
                    let bytes = buf.get(offset..offset + len).unwrap_or(&[]);
                    let start = arena.len();
                    arena.extend_from_slice(bytes);
                    *data = MsgData::Arena {
                        start,
                        len: bytes.len(),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model check of the send ring: messages of many sizes pushed and
    /// released in FIFO order stay intact across laps and growth.
    #[test]
    fn byte_queue_keeps_messages_contiguous_across_laps_and_growth() {
        let mut q = ByteQueue::default();
        let mut rng = Rng::new(7);
        let mut live: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
        let mut held = 0usize;
        for round in 0..20_000u32 {
            let push = live.is_empty() || rng.next_u32() % 3 != 0;
            if push && held < 200_000 {
                let len = match rng.next_u32() % 10 {
                    0 => 0,
                    1 => 5000 + (rng.next_u32() % 20_000) as usize,
                    _ => 1 + (rng.next_u32() % 300) as usize,
                };
                let msg: Vec<u8> = (0..len).map(|i| (i as u32 ^ round) as u8).collect();
                let off = q.push(&msg);
                held += len;
                live.push_back((off, msg));
            } else if let Some((_, m)) = live.pop_front() {
                held -= m.len();
                let next = live.front().map_or(q.end(), |(o, _)| *o);
                q.release_to(next, m.len());
            }
            assert_eq!(q.live_len(), held);
            if round % 97 == 0 {
                for (off, m) in &live {
                    assert_eq!(q.slice(*off, m.len()), &m[..]);
                }
            }
        }
    }
}

//! The send side: queued messages, their fragmentation into chunks, packing
//! chunks into packets, and the packets in flight until acked or lost.

use std::collections::VecDeque;
use std::time::Instant;

use super::congestion::rate::RateMark;
use super::stats::ConnectionStats;
use crate::rudp::seq::{seq_dist, seq_ge, seq_gt, seq_lt};
use crate::rudp::wire::{AckRepr, ChunkRepr, FragInfo, SetInfo};
use crate::rudp::Guarantee;

/// Numbers further apart than this are not compared against the first ever
/// sent (wrapping would make "older than the first" meaningless).
const OLD_LIMIT: u32 = 1 << 30;

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
    #[inline]
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

/// Fate of a numbered packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PktState {
    InFlight,
    Acked,
    Lost,
}

/// A numbered (DATA or PING) packet until it is resolved: acked or lost.
#[derive(Debug, Clone, Copy)]
pub(super) struct SentPacket {
    pub(super) time: Instant,
    /// Absolute indexes into the chunk log: the reliable chunks it carried.
    log_start: u64,
    log_end: u64,
    state: PktState,
    /// Sent while the congestion window was at least half used.
    pub(super) cwnd_limited: bool,
    /// Carried unreliable chunks (whose fate only an explicit ack tells).
    pub(super) unreliable: bool,
    /// Largest sequence number among its reliable chunks (None: none).
    pub(super) top_seq: Option<u32>,
    /// Its size, bytes.
    pub(super) size: u32,
    /// The connection's delivery state when it was sent.
    pub(super) rate: RateMark,
}

impl SentPacket {
    /// The reliable chunks it carried, for [`SendState::ack_chunks`].
    #[inline]
    pub(super) fn chunks(&self) -> ChunkSpan {
        ChunkSpan {
            log_start: self.log_start,
            log_end: self.log_end,
            top_seq: self.top_seq,
        }
    }
}

/// The reliable chunks of a packet: a span of the chunk log.
#[derive(Debug, Clone, Copy)]
pub(super) struct ChunkSpan {
    log_start: u64,
    log_end: u64,
    top_seq: Option<u32>,
}

/// What the connection tells [`SendState::on_packet_sent`] of a packet.
#[derive(Debug, Clone, Copy)]
pub(super) struct SentInfo {
    /// See [`SentPacket::cwnd_limited`].
    pub(super) cwnd_limited: bool,
    /// See [`SentPacket::unreliable`].
    pub(super) unreliable: bool,
    /// See [`SentPacket::top_seq`].
    pub(super) top_seq: Option<u32>,
    /// See [`SentPacket::size`].
    pub(super) size: u32,
    /// See [`SentPacket::rate`].
    pub(super) rate: RateMark,
}

/// What [`SendState::fill`] put into a packet.
#[derive(Debug, Clone, Copy)]
pub(super) struct Filled {
    /// New end of the packet.
    pub(super) end: usize,
    /// An unreliable chunk was written.
    pub(super) unreliable: bool,
    /// Largest sequence number among the reliable chunks written.
    pub(super) top_seq: Option<u32>,
}

#[inline]
fn seq_max(a: Option<u32>, b: u32) -> Option<u32> {
    Some(match a {
        Some(a) if seq_gt(a, b) => a,
        _ => b,
    })
}

/// Send side of a connection.
///
/// Messages: reliable ones stay in `buf` (bytes) and `msgs` until every
/// fragment is acknowledged, individually or by the peer's cumulative ack;
/// unreliable ones stay in `ubuf` and `unrel` until sent once.
///
/// Packets: every numbered packet sent is in `sent` until resolved (acked
/// or declared lost); `in_flight` counts those still in flight, and the
/// reliable chunks each carried are in `chunk_log`, so that an ack can
/// acknowledge them and a loss queue them for retransmission (`retx`).
/// Retransmitted chunks go in new packets with new numbers.
#[derive(Debug)]
pub(super) struct SendState {
    /// Bytes of the reliable messages `msgs`.
    buf: ByteQueue,
    /// Bytes of the unreliable messages `unrel`.
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
    /// Packets of `sent` in flight.
    in_flight: u32,
    /// Their bytes.
    bytes_in_flight: u64,
}

impl SendState {
    /// Messages and packets numbered from `initial` (in every space).
    pub(super) fn new(initial: u32) -> Self {
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
            bytes_in_flight: 0,
        }
    }

    /// Drops every queued message and every packet in flight, releasing
    /// their memory (the connection closed). The numbering is kept.
    pub(super) fn clear(&mut self) {
        self.buf.clear();
        self.ubuf.clear();
        self.msgs = VecDeque::new();
        self.unrel = VecDeque::new();
        self.retx = VecDeque::new();
        self.sent = VecDeque::new();
        self.chunk_log = VecDeque::new();
        self.in_flight = 0;
        self.bytes_in_flight = 0;
    }

    /// Queued bytes (reliable until acked, unreliable until sent).
    pub(super) fn queued_bytes(&self) -> usize {
        self.buf.live_len() + self.ubuf.live_len()
    }

    /// Queued messages (reliable until acked, unreliable until sent).
    pub(super) fn queued_msgs(&self) -> usize {
        self.msgs.len() + self.unrel.len()
    }

    /// Every message was sent, and every reliable one acknowledged.
    pub(super) fn is_flushed(&self) -> bool {
        self.msgs.is_empty() && self.unrel.is_empty()
    }

    /// Packets in flight.
    pub(super) fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Bytes of the packets in flight.
    #[inline]
    pub(super) fn bytes_in_flight(&self) -> u64 {
        self.bytes_in_flight
    }

    /// Number of the next packet to send.
    pub(super) fn next_pn(&self) -> u32 {
        self.next_pn
    }

    /// Oldest reliable message not yet acknowledged (or the next one).
    pub(super) fn una(&self) -> u32 {
        self.una
    }

    /// Largest packet number the peer acknowledged.
    pub(super) fn largest_acked(&self) -> Option<u32> {
        self.largest_acked
    }

    /// Packets before this one are resolved and forgotten.
    pub(super) fn sent_base(&self) -> u32 {
        self.sent_base
    }

    /// Packets kept (in flight, or resolved behind one in flight).
    pub(super) fn unresolved(&self) -> usize {
        self.sent.len()
    }

    /// The oldest packet kept, and its number.
    #[inline]
    pub(super) fn oldest(&self) -> Option<(u32, &SentPacket)> {
        self.sent.front().map(|p| (self.sent_base, p))
    }

    /// Reliable chunks are waiting for retransmission.
    pub(super) fn has_retransmissions(&self) -> bool {
        !self.retx.is_empty()
    }

    /// End of the chunk log: where the chunks of the next packet will go.
    pub(super) fn chunk_log_end(&self) -> u64 {
        self.chunk_log_base + self.chunk_log.len() as u64
    }

    /// Queues a reliable message (a member of `set`, if any).
    pub(super) fn push_reliable(&mut self, data: &[u8], set: Option<SetInfo>) {
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

    /// Queues the members of a message set (at most `u16::MAX`; a set of
    /// one is a plain message).
    pub(super) fn push_set(&mut self, msgs: &[&[u8]]) {
        let len = msgs.len() as u16;
        for (i, m) in msgs.iter().enumerate() {
            let set = (len > 1).then_some(SetInfo {
                index: i as u16,
                len,
            });
            self.push_reliable(m, set);
        }
    }

    /// Queues an unreliable message.
    pub(super) fn push_unreliable(&mut self, g: Guarantee, data: &[u8]) {
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

    /// Something may be sent: a retransmission, an unreliable message, or a
    /// new reliable chunk within the peer's receive `window`.
    pub(super) fn has_sendable(&self, window: u32) -> bool {
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
    #[inline]
    pub(super) fn fill(
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
    #[inline]
    pub(super) fn pop_resolved(&mut self) {
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

    /// Records a numbered packet just sent, whose reliable chunks were
    /// logged from `log_start` on; returns its packet number.
    #[inline]
    pub(super) fn on_packet_sent(&mut self, now: Instant, log_start: u64, info: SentInfo) -> u32 {
        self.sent.push_back(SentPacket {
            time: now,
            log_start,
            log_end: self.chunk_log_end(),
            state: PktState::InFlight,
            cwnd_limited: info.cwnd_limited,
            unreliable: info.unreliable,
            top_seq: info.top_seq,
            size: info.size,
            rate: info.rate,
        });
        let pn = self.next_pn;
        self.next_pn = self.next_pn.wrapping_add(1);
        self.in_flight += 1;
        self.bytes_in_flight += u64::from(info.size);
        pn
    }

    /// Checks an ack against what was sent, without changing anything.
    pub(super) fn validate_ack(&self, ack: &AckRepr) -> Result<(), &'static str> {
        if seq_ge(ack.largest, self.next_pn) {
            return Err("ack for a packet never sent");
        }
        if seq_lt(ack.largest, self.first_pn) && seq_dist(self.first_pn, self.next_pn) < OLD_LIMIT {
            return Err("ack older than any packet sent");
        }
        if seq_gt(ack.cum_seq, self.cursor_seq) {
            return Err("cumulative ack beyond the messages sent");
        }
        if seq_lt(ack.cum_seq, self.initial_seq)
            && seq_dist(self.initial_seq, self.next_seq) < OLD_LIMIT
        {
            return Err("cumulative ack before the first message");
        }
        Ok(())
    }

    /// Takes the peer's cumulative ack `cum` (ignored if older than one
    /// already taken) and releases the messages it covers. Returns true
    /// when some were released.
    ///
    /// Every ack carries it, so messages are freed even when the acks that
    /// named their packets were lost.
    #[inline]
    pub(super) fn on_cum_ack(&mut self, cum: u32) -> bool {
        if seq_gt(cum, self.peer_cum) {
            self.peer_cum = cum;
        }
        let una = self.una;
        self.advance_una(self.peer_cum);
        una != self.una
    }

    /// Releases the messages at the front that are fully acknowledged.
    #[inline]
    pub(super) fn release_acked(&mut self) {
        self.advance_una(self.peer_cum);
    }

    /// Marks packet `pn` acknowledged if it is in flight, and returns it
    /// (borrowed: the record is large, and mostly not needed). Its chunks
    /// are acknowledged by [`ack_chunks`](Self::ack_chunks).
    #[inline]
    pub(super) fn ack_packet(&mut self, pn: u32) -> Option<&SentPacket> {
        let idx = seq_dist(self.sent_base, pn) as usize;
        let p = self
            .sent
            .get_mut(idx)
            .filter(|p| p.state == PktState::InFlight)?;
        p.state = PktState::Acked;
        // (Both count exactly the packets in flight, this one included.)
        self.in_flight -= 1;
        self.bytes_in_flight -= u64::from(p.size);
        Some(p)
    }

    /// Acknowledges the reliable chunks of an acknowledged packet.
    #[inline]
    pub(super) fn ack_chunks(&mut self, p: ChunkSpan) {
        // When even the packet's largest sequence number is below `una`,
        // every chunk in it is released already.
        if p.top_seq.is_some_and(|t| seq_ge(t, self.una)) {
            for li in p.log_start..p.log_end {
                if let Some((seq, frag)) = self.log_entry(li) {
                    self.ack_chunk(seq, frag);
                }
            }
        }
    }

    /// An ack named `largest` as the largest packet received.
    #[inline]
    pub(super) fn on_largest_acked(&mut self, largest: u32) {
        if self.largest_acked.is_none_or(|l| seq_gt(largest, l)) {
            self.largest_acked = Some(largest);
        }
    }

    /// Declares the packet at `idx` in `sent` lost if it is in flight: its
    /// reliable chunks not yet acknowledged are queued for retransmission.
    /// Returns its number and the packet.
    pub(super) fn declare_lost(&mut self, idx: usize) -> Option<(u32, SentPacket)> {
        let p = self.sent.get_mut(idx)?;
        if p.state != PktState::InFlight {
            return None;
        }
        p.state = PktState::Lost;
        let p = *p;
        self.in_flight = self.in_flight.saturating_sub(1);
        self.bytes_in_flight = self.bytes_in_flight.saturating_sub(u64::from(p.size));
        for li in p.log_start..p.log_end {
            if let Some((seq, frag)) = self.log_entry(li) {
                if self.msg(seq).is_some_and(|m| !m.frag_acked(frag)) {
                    self.retx.push_back((seq, frag));
                }
            }
        }
        Some((self.sent_base.wrapping_add(idx as u32), p))
    }

    /// Every reliable chunk of `p` is known delivered (acknowledged, or
    /// below the cumulative ack).
    #[inline]
    pub(super) fn content_acked(&self, p: &SentPacket) -> bool {
        (p.log_start..p.log_end).all(|li| match self.log_entry(li) {
            Some((seq, frag)) => self.msg(seq).is_none_or(|m| m.frag_acked(frag)),
            None => true,
        })
    }

    /// A probe without new data: queues the reliable chunks of the newest
    /// (tail-loss probe) or oldest (retransmission timeout) packet in
    /// flight for sending again, first. The packet stays in flight; if it
    /// was lost, the probe repairs it and the probe's ack reveals the loss.
    pub(super) fn queue_probe(&mut self, oldest: bool) {
        let carries = |p: &&SentPacket| p.state == PktState::InFlight && p.log_end > p.log_start;
        let p = if oldest {
            self.sent.iter().find(carries)
        } else {
            self.sent.iter().rev().find(carries)
        };
        let Some(&p) = p else {
            return;
        };
        for li in (p.log_start..p.log_end).rev() {
            if let Some((seq, frag)) = self.log_entry(li) {
                if self.msg(seq).is_some_and(|m| !m.frag_acked(frag)) {
                    self.retx.push_front((seq, frag));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rudp::rng::Rng;

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

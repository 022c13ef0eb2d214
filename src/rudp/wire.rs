//! Wire codec for rudp datagrams (smoltcp style).
//!
//! [`Packet`] is a checked view over a byte buffer: [`Packet::new_checked`]
//! validates the length for the declared packet type once, after which no
//! accessor can panic (accessors are additionally total: they read through
//! `get` and yield 0 for bytes that are not there). [`PacketRepr`] is the
//! parsed, owned-ish representation with `parse` / `emit` / `buffer_len`.
//! Data chunks inside a DATA packet are described by [`ChunkRepr`] and iterated
//! by [`Chunks`], which is validated as a whole when the packet is parsed.
//!
//! Parsing is total: any `&[u8]` gives `Ok` or `Err`, never a panic.
//! The byte layout is specified in `docs/rudp.md`; the constants in `field`
//! are that specification in code. All integers are big-endian.

use core::fmt;
use core::time::Duration;

use super::Guarantee;

/// Protocol version carried in byte 0 of every datagram.
pub const VERSION: u8 = 1;

/// Smallest datagram size (MTU) a peer may announce or be configured with.
pub const MIN_MTU: usize = 128;

/// Largest UDP payload over IPv4; the largest MTU that can be configured.
pub const MAX_MTU: usize = 65_507;

/// Largest receive window (in messages) a peer may announce.
pub const MAX_RECV_WINDOW: u32 = 1 << 20;

/// Largest `max_ack_delay` (milliseconds) a peer may announce.
pub const MAX_ACK_DELAY_MS: u16 = 16_384;

/// Byte offsets of every field (`docs/rudp.md` is the prose version).
pub(crate) mod field {
    #![allow(dead_code)]
    use core::ops::Range;

    /// A byte range inside a buffer.
    pub(crate) type Field = Range<usize>;

    // Common header, every packet.
    pub(crate) const VERSION: usize = 0;
    pub(crate) const TYPE: usize = 1;
    pub(crate) const FLAGS: usize = 2;
    pub(crate) const RESERVED: usize = 3;
    pub(crate) const CONN_ID: Field = 4..8;
    pub(crate) const HEADER_LEN: usize = 8;

    // INITIAL (client -> server): nonce, then zero padding up to INITIAL_MIN_LEN.
    pub(crate) const INITIAL_NONCE: Field = 8..16;
    pub(crate) const INITIAL_MIN_LEN: usize = 32;

    // CHALLENGE (server -> client).
    pub(crate) const CHALLENGE_NONCE: Field = 8..16;
    pub(crate) const CHALLENGE_COOKIE: Field = 16..24;
    pub(crate) const CHALLENGE_LEN: usize = 24;

    // ECHO (client -> server).
    pub(crate) const ECHO_COOKIE: Field = 8..16;
    pub(crate) const ECHO_PARAMS: Field = 16..32;
    pub(crate) const ECHO_LEN: usize = 32;

    // ACCEPT (server -> client).
    pub(crate) const ACCEPT_PARAMS: Field = 8..24;
    pub(crate) const ACCEPT_LEN: usize = 24;

    // Transport parameters, relative to the start of the params block.
    pub(crate) const P_INITIAL_SEQ: Field = 0..4;
    pub(crate) const P_RECV_WINDOW: Field = 4..8;
    pub(crate) const P_MAX_DATAGRAM: Field = 8..10;
    pub(crate) const P_MAX_ACK_DELAY: Field = 10..12;
    pub(crate) const P_MAX_MESSAGE: Field = 12..16;
    pub(crate) const PARAMS_LEN: usize = 16;

    // DATA and PING: packet number, then an optional ack block.
    pub(crate) const PN: Field = 8..12;
    pub(crate) const PN_END: usize = 12;

    // Ack block, relative to its start.
    pub(crate) const A_LARGEST: Field = 0..4;
    pub(crate) const A_BITMAP: Field = 4..12;
    pub(crate) const A_DELAY: Field = 12..14;
    pub(crate) const A_CUM_SEQ: Field = 14..18;
    pub(crate) const ACK_BLOCK_LEN: usize = 18;

    // ACK packet: header + ack block.
    pub(crate) const ACK_LEN: usize = 8 + ACK_BLOCK_LEN;

    // CLOSE: reason code + 3 reserved bytes.
    pub(crate) const CLOSE_REASON: usize = 8;
    pub(crate) const CLOSE_LEN: usize = 12;

    // Chunk (inside DATA), relative to the chunk start.
    pub(crate) const C_FLAGS: usize = 0;
    pub(crate) const C_SEQ: Field = 1..5;
    pub(crate) const C_LEN: Field = 5..7;
    pub(crate) const C_BASE_LEN: usize = 7;
    /// Length of the optional fragment block and of the optional set block.
    pub(crate) const C_EXT_LEN: usize = 4;
}

/// Flag bit in byte 2 of DATA / PING: an ack block follows the packet number.
pub(crate) const FLAG_ACK: u8 = 0x01;
/// Chunk flag bits.
pub(crate) const CHUNK_GUARANTEE_MASK: u8 = 0x03;
pub(crate) const CHUNK_FRAG: u8 = 0x04;
pub(crate) const CHUNK_SET: u8 = 0x08;

/// Largest chunk header: base + fragment block + set block.
pub const MAX_CHUNK_HEADER: usize = field::C_BASE_LEN + 2 * field::C_EXT_LEN;
/// Largest DATA packet overhead before the chunks: header, packet number, ack block.
pub const MAX_DATA_OVERHEAD: usize = field::PN_END + field::ACK_BLOCK_LEN;

/// A wire-format error: the bytes are not a valid rudp datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// The datagram is shorter than its type requires (or longer, for fixed-size types).
    Truncated,
    /// Byte 0 is not [`VERSION`].
    BadVersion(u8),
    /// Byte 1 is not a known packet type.
    UnknownType(u8),
    /// A field holds a value the specification forbids.
    Malformed(&'static str),
    /// The output buffer passed to `emit` is too small.
    BufferTooSmall,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated => f.write_str("datagram length does not match its type"),
            WireError::BadVersion(v) => write!(f, "unsupported protocol version {v}"),
            WireError::UnknownType(t) => write!(f, "unknown packet type 0x{t:02x}"),
            WireError::Malformed(m) => write!(f, "malformed datagram: {m}"),
            WireError::BufferTooSmall => f.write_str("output buffer too small"),
        }
    }
}

impl std::error::Error for WireError {}

/// Packet type, byte 1 of every datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// Client opens a handshake.
    Initial = 0x01,
    /// Server answers with a stateless cookie.
    Challenge = 0x02,
    /// Client echoes the cookie with its transport parameters.
    Echo = 0x03,
    /// Server accepts, with its transport parameters.
    Accept = 0x04,
    /// Message chunks (ack-eliciting), optionally with an ack block.
    Data = 0x10,
    /// A pure acknowledgement (not ack-eliciting, no packet number).
    Ack = 0x11,
    /// Heartbeat / probe (ack-eliciting, no chunks), optionally with an ack block.
    Ping = 0x12,
    /// The sender closes the connection.
    Close = 0x13,
}

impl PacketType {
    /// Decodes byte 1.
    pub fn from_u8(b: u8) -> Result<Self, WireError> {
        Ok(match b {
            0x01 => PacketType::Initial,
            0x02 => PacketType::Challenge,
            0x03 => PacketType::Echo,
            0x04 => PacketType::Accept,
            0x10 => PacketType::Data,
            0x11 => PacketType::Ack,
            0x12 => PacketType::Ping,
            0x13 => PacketType::Close,
            other => return Err(WireError::UnknownType(other)),
        })
    }
}

#[inline]
fn get_u16(b: &[u8], r: field::Field) -> u16 {
    match b.get(r) {
        Some(&[x, y]) => u16::from_be_bytes([x, y]),
        _ => 0,
    }
}

#[inline]
fn get_u32(b: &[u8], r: field::Field) -> u32 {
    match b.get(r) {
        Some(&[a, b2, c, d]) => u32::from_be_bytes([a, b2, c, d]),
        _ => 0,
    }
}

#[inline]
fn get_u64(b: &[u8], r: field::Field) -> u64 {
    match b.get(r) {
        Some(s) if s.len() == 8 => {
            let mut w = [0u8; 8];
            w.copy_from_slice(s);
            u64::from_be_bytes(w)
        }
        _ => 0,
    }
}

#[inline]
fn get_u8(b: &[u8], i: usize) -> u8 {
    b.get(i).copied().unwrap_or(0)
}

/// A read-only view of a datagram whose length was validated for its type.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it. Accessors stay total (they never
    /// panic) but may return 0 for missing bytes.
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer and validates version, type, flags and the length the
    /// type requires.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Validates the header and the type-specific length.
    pub fn check_len(&self) -> Result<(), WireError> {
        let b = self.buffer.as_ref();
        if b.len() < field::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if b[field::VERSION] != VERSION {
            return Err(WireError::BadVersion(b[field::VERSION]));
        }
        let ty = PacketType::from_u8(b[field::TYPE])?;
        let flags = b[field::FLAGS];
        if self.conn_id() == 0 {
            return Err(WireError::Malformed("connection id 0 is reserved"));
        }
        let allowed_flags = match ty {
            PacketType::Data | PacketType::Ping => FLAG_ACK,
            _ => 0,
        };
        if flags & !allowed_flags != 0 {
            return Err(WireError::Malformed("reserved flag bit set"));
        }
        let len = b.len();
        let ok = match ty {
            PacketType::Initial => len >= field::INITIAL_MIN_LEN,
            PacketType::Challenge => len == field::CHALLENGE_LEN,
            PacketType::Echo => len == field::ECHO_LEN,
            PacketType::Accept => len == field::ACCEPT_LEN,
            PacketType::Ack => len == field::ACK_LEN,
            PacketType::Close => len == field::CLOSE_LEN,
            PacketType::Data | PacketType::Ping => {
                let need = self.payload_offset_raw(flags);
                if ty == PacketType::Ping {
                    len == need
                } else {
                    // At least one chunk header.
                    len >= need + field::C_BASE_LEN
                }
            }
        };
        if ok {
            Ok(())
        } else {
            Err(WireError::Truncated)
        }
    }

    fn payload_offset_raw(&self, flags: u8) -> usize {
        if flags & FLAG_ACK != 0 {
            field::PN_END + field::ACK_BLOCK_LEN
        } else {
            field::PN_END
        }
    }

    /// Byte 0.
    pub fn version(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::VERSION)
    }

    /// Byte 1, decoded.
    pub fn packet_type(&self) -> Result<PacketType, WireError> {
        PacketType::from_u8(get_u8(self.buffer.as_ref(), field::TYPE))
    }

    /// Byte 2.
    pub fn flags(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::FLAGS)
    }

    /// Bytes 4..8.
    pub fn conn_id(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::CONN_ID)
    }

    /// INITIAL / CHALLENGE nonce.
    pub fn nonce(&self) -> u64 {
        get_u64(self.buffer.as_ref(), field::INITIAL_NONCE)
    }

    /// CHALLENGE / ECHO cookie (0 for other types).
    pub fn cookie(&self) -> u64 {
        let b = self.buffer.as_ref();
        match self.packet_type() {
            Ok(PacketType::Challenge) => get_u64(b, field::CHALLENGE_COOKIE),
            Ok(PacketType::Echo) => get_u64(b, field::ECHO_COOKIE),
            _ => 0,
        }
    }

    /// DATA / PING packet number.
    pub fn pn(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::PN)
    }

    /// The ack block's bytes, when this packet carries one.
    pub fn ack_block(&self) -> Option<&[u8]> {
        let b = self.buffer.as_ref();
        match self.packet_type() {
            Ok(PacketType::Ack) => b.get(field::HEADER_LEN..field::ACK_LEN),
            Ok(PacketType::Data | PacketType::Ping) if self.flags() & FLAG_ACK != 0 => {
                b.get(field::PN_END..field::PN_END + field::ACK_BLOCK_LEN)
            }
            _ => None,
        }
    }

    /// The transport-parameter block of ECHO / ACCEPT.
    pub fn params_block(&self) -> Option<&[u8]> {
        let b = self.buffer.as_ref();
        match self.packet_type() {
            Ok(PacketType::Echo) => b.get(field::ECHO_PARAMS),
            Ok(PacketType::Accept) => b.get(field::ACCEPT_PARAMS),
            _ => None,
        }
    }

    /// CLOSE reason byte.
    pub fn close_reason(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::CLOSE_REASON)
    }

    /// The chunk region of a DATA packet (empty for other types).
    pub fn chunk_bytes(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        match self.packet_type() {
            Ok(PacketType::Data) => b
                .get(self.payload_offset_raw(self.flags())..)
                .unwrap_or(&[]),
            _ => &[],
        }
    }
}

/// Transport parameters exchanged in ECHO (client's) and ACCEPT (server's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Sequence number of the sender's first Delivery message.
    pub initial_seq: u32,
    /// How many Delivery messages past its cumulative ack the sender of these
    /// parameters will buffer (the peer must not send beyond it).
    pub recv_window: u32,
    /// Largest datagram the sender of these parameters accepts and sends.
    pub max_datagram: u16,
    /// Longest the sender of these parameters delays an ack, in milliseconds.
    pub max_ack_delay_ms: u16,
    /// Largest message the sender of these parameters accepts.
    pub max_message_len: u32,
}

impl Params {
    fn parse(b: &[u8]) -> Result<Self, WireError> {
        if b.len() != field::PARAMS_LEN {
            return Err(WireError::Truncated);
        }
        let p = Params {
            initial_seq: get_u32(b, field::P_INITIAL_SEQ),
            recv_window: get_u32(b, field::P_RECV_WINDOW),
            max_datagram: get_u16(b, field::P_MAX_DATAGRAM),
            max_ack_delay_ms: get_u16(b, field::P_MAX_ACK_DELAY),
            max_message_len: get_u32(b, field::P_MAX_MESSAGE),
        };
        if p.recv_window == 0 || p.recv_window > MAX_RECV_WINDOW {
            return Err(WireError::Malformed("receive window out of range"));
        }
        if (p.max_datagram as usize) < MIN_MTU {
            return Err(WireError::Malformed("max datagram below minimum"));
        }
        if p.max_ack_delay_ms > MAX_ACK_DELAY_MS {
            return Err(WireError::Malformed("max ack delay out of range"));
        }
        Ok(p)
    }

    fn emit(&self, b: &mut [u8]) {
        b[field::P_INITIAL_SEQ].copy_from_slice(&self.initial_seq.to_be_bytes());
        b[field::P_RECV_WINDOW].copy_from_slice(&self.recv_window.to_be_bytes());
        b[field::P_MAX_DATAGRAM].copy_from_slice(&self.max_datagram.to_be_bytes());
        b[field::P_MAX_ACK_DELAY].copy_from_slice(&self.max_ack_delay_ms.to_be_bytes());
        b[field::P_MAX_MESSAGE].copy_from_slice(&self.max_message_len.to_be_bytes());
    }
}

/// Unit of the ack-delay field.
pub const ACK_DELAY_UNIT: Duration = Duration::from_micros(16);

/// An acknowledgement block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckRepr {
    /// Largest packet number received (and accepted).
    pub largest: u32,
    /// Bit `i` set: packet `largest - 1 - i` was received too.
    pub bitmap: u64,
    /// Time between receiving `largest` and sending this ack, in
    /// [`ACK_DELAY_UNIT`]s (saturating).
    pub delay: u16,
    /// Cumulative message ack: every Delivery message with a sequence number
    /// before this one has been received and delivered.
    pub cum_seq: u32,
}

impl AckRepr {
    fn parse(b: &[u8]) -> Result<Self, WireError> {
        if b.len() != field::ACK_BLOCK_LEN {
            return Err(WireError::Truncated);
        }
        Ok(AckRepr {
            largest: get_u32(b, field::A_LARGEST),
            bitmap: get_u64(b, field::A_BITMAP),
            delay: get_u16(b, field::A_DELAY),
            cum_seq: get_u32(b, field::A_CUM_SEQ),
        })
    }

    fn emit(&self, b: &mut [u8]) {
        b[field::A_LARGEST].copy_from_slice(&self.largest.to_be_bytes());
        b[field::A_BITMAP].copy_from_slice(&self.bitmap.to_be_bytes());
        b[field::A_DELAY].copy_from_slice(&self.delay.to_be_bytes());
        b[field::A_CUM_SEQ].copy_from_slice(&self.cum_seq.to_be_bytes());
    }

    /// The delay as a duration.
    pub fn delay(&self) -> Duration {
        ACK_DELAY_UNIT * u32::from(self.delay)
    }

    /// Encodes a duration as a saturating ack-delay field.
    pub fn encode_delay(d: Duration) -> u16 {
        let units = d.as_micros() / ACK_DELAY_UNIT.as_micros();
        units.min(u128::from(u16::MAX)) as u16
    }
}

/// CLOSE reason codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// The application closed the connection.
    Normal,
    /// The sender saw a protocol violation from the receiver.
    ProtocolViolation,
    /// A code this implementation does not know (still a close).
    Other(u8),
}

impl CloseCode {
    /// Wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            CloseCode::Normal => 0,
            CloseCode::ProtocolViolation => 1,
            CloseCode::Other(x) => x,
        }
    }

    /// From the wire value.
    pub fn from_u8(b: u8) -> Self {
        match b {
            0 => CloseCode::Normal,
            1 => CloseCode::ProtocolViolation,
            x => CloseCode::Other(x),
        }
    }
}

/// Fragment position of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragInfo {
    /// Index of this fragment, `< count`.
    pub index: u16,
    /// Number of fragments of the message, `>= 2`.
    pub count: u16,
}

/// Set membership of a Delivery chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetInfo {
    /// Index of this message in its set, `< len`.
    pub index: u16,
    /// Number of messages in the set, `>= 1`.
    pub len: u16,
}

/// One message chunk (a whole small message or one fragment of a large one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRepr<'a> {
    /// Delivery guarantee (selects the sequence space of `seq`).
    pub guarantee: Guarantee,
    /// Message sequence number in the guarantee's sequence space.
    pub seq: u32,
    /// Present when the message is split into fragments.
    pub frag: Option<FragInfo>,
    /// Present for members of a message set (Delivery only).
    pub set: Option<SetInfo>,
    /// Chunk payload.
    pub payload: &'a [u8],
}

impl<'a> ChunkRepr<'a> {
    /// Parses one chunk from the start of `b`; returns it and its encoded length.
    #[inline]
    pub fn parse(b: &'a [u8]) -> Result<(Self, usize), WireError> {
        let Some(&[flags, s0, s1, s2, s3, l0, l1]) = b.get(..field::C_BASE_LEN) else {
            return Err(WireError::Truncated);
        };
        if flags & !(CHUNK_GUARANTEE_MASK | CHUNK_FRAG | CHUNK_SET) != 0 {
            return Err(WireError::Malformed("reserved chunk flag set"));
        }
        let guarantee = match flags & CHUNK_GUARANTEE_MASK {
            0 => Guarantee::None,
            1 => Guarantee::Order,
            2 => Guarantee::Delivery,
            _ => return Err(WireError::Malformed("invalid guarantee")),
        };
        let seq = u32::from_be_bytes([s0, s1, s2, s3]);
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        let mut pos = field::C_BASE_LEN;
        // The common case: a whole Delivery/None/Order message.
        if flags & (CHUNK_FRAG | CHUNK_SET) == 0 {
            let payload = b.get(pos..pos + len).ok_or(WireError::Truncated)?;
            let chunk = ChunkRepr {
                guarantee,
                seq,
                frag: None,
                set: None,
                payload,
            };
            return Ok((chunk, pos + len));
        }
        let frag = if flags & CHUNK_FRAG != 0 {
            let Some(&[i0, i1, c0, c1]) = b.get(pos..pos + field::C_EXT_LEN) else {
                return Err(WireError::Truncated);
            };
            pos += field::C_EXT_LEN;
            let fi = FragInfo {
                index: u16::from_be_bytes([i0, i1]),
                count: u16::from_be_bytes([c0, c1]),
            };
            if fi.count < 2 || fi.index >= fi.count {
                return Err(WireError::Malformed("fragment index/count"));
            }
            Some(fi)
        } else {
            None
        };
        let set = if flags & CHUNK_SET != 0 {
            if guarantee != Guarantee::Delivery {
                return Err(WireError::Malformed("set on unreliable chunk"));
            }
            let Some(&[i0, i1, n0, n1]) = b.get(pos..pos + field::C_EXT_LEN) else {
                return Err(WireError::Truncated);
            };
            pos += field::C_EXT_LEN;
            let si = SetInfo {
                index: u16::from_be_bytes([i0, i1]),
                len: u16::from_be_bytes([n0, n1]),
            };
            if si.len == 0 || si.index >= si.len {
                return Err(WireError::Malformed("set index/len"));
            }
            Some(si)
        } else {
            None
        };
        let payload = b.get(pos..pos + len).ok_or(WireError::Truncated)?;
        Ok((
            ChunkRepr {
                guarantee,
                seq,
                frag,
                set,
                payload,
            },
            pos + len,
        ))
    }

    /// Header length of a chunk with these options.
    #[inline]
    pub fn header_len(frag: bool, set: bool) -> usize {
        field::C_BASE_LEN + field::C_EXT_LEN * (frag as usize + set as usize)
    }

    /// Encoded length.
    #[inline]
    pub fn buffer_len(&self) -> usize {
        Self::header_len(self.frag.is_some(), self.set.is_some()) + self.payload.len()
    }

    /// Writes the chunk at the start of `b`; returns its length.
    #[inline]
    pub fn emit(&self, b: &mut [u8]) -> Result<usize, WireError> {
        let plen = self.payload.len();
        let hlen = Self::header_len(self.frag.is_some(), self.set.is_some());
        if plen > usize::from(u16::MAX) {
            return Err(WireError::BufferTooSmall);
        }
        let Some(b) = b.get_mut(..hlen + plen) else {
            return Err(WireError::BufferTooSmall);
        };
        let mut flags = match self.guarantee {
            Guarantee::None => 0,
            Guarantee::Order => 1,
            Guarantee::Delivery => 2,
        };
        if self.frag.is_some() {
            flags |= CHUNK_FRAG;
        }
        if self.set.is_some() {
            flags |= CHUNK_SET;
        }
        let (head, body) = b.split_at_mut(hlen);
        let seq = self.seq.to_be_bytes();
        let len = (plen as u16).to_be_bytes();
        if let Some(base) = head.get_mut(..field::C_BASE_LEN) {
            base.copy_from_slice(&[flags, seq[0], seq[1], seq[2], seq[3], len[0], len[1]]);
        }
        let mut pos = field::C_BASE_LEN;
        for ext in [
            self.frag.map(|f| (f.index, f.count)),
            self.set.map(|s| (s.index, s.len)),
        ]
        .into_iter()
        .flatten()
        {
            let (x, y) = (ext.0.to_be_bytes(), ext.1.to_be_bytes());
            if let Some(e) = head.get_mut(pos..pos + field::C_EXT_LEN) {
                e.copy_from_slice(&[x[0], x[1], y[0], y[1]]);
            }
            pos += field::C_EXT_LEN;
        }
        body.copy_from_slice(self.payload);
        Ok(hlen + plen)
    }
}

/// The validated chunk region of a DATA packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunks<'a> {
    bytes: &'a [u8],
}

impl<'a> Chunks<'a> {
    /// Validates that `bytes` is a sequence of one or more well-formed chunks
    /// that exactly fills it.
    #[inline]
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, WireError> {
        if bytes.is_empty() {
            return Err(WireError::Malformed("data packet without chunks"));
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let (_, used) = ChunkRepr::parse(rest)?;
            rest = rest.get(used..).unwrap_or(&[]);
        }
        Ok(Chunks { bytes })
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Iterates over the chunks.
    pub fn iter(&self) -> ChunkIter<'a> {
        ChunkIter { rest: self.bytes }
    }
}

impl<'a> IntoIterator for Chunks<'a> {
    type Item = ChunkRepr<'a>;
    type IntoIter = ChunkIter<'a>;
    fn into_iter(self) -> ChunkIter<'a> {
        self.iter()
    }
}

/// Iterator over the chunks of a validated [`Chunks`] region.
#[derive(Debug, Clone)]
pub struct ChunkIter<'a> {
    rest: &'a [u8],
}

impl ChunkIter<'_> {
    /// Every chunk was taken.
    #[inline]
    pub(crate) fn is_done(&self) -> bool {
        self.rest.is_empty()
    }
}

impl<'a> Iterator for ChunkIter<'a> {
    type Item = ChunkRepr<'a>;
    #[inline]
    fn next(&mut self) -> Option<ChunkRepr<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        // Validated up front; an error here is impossible but ends iteration
        // rather than panicking.
        match ChunkRepr::parse(self.rest) {
            Ok((c, used)) => {
                self.rest = self.rest.get(used..).unwrap_or(&[]);
                Some(c)
            }
            Err(_) => {
                self.rest = &[];
                None
            }
        }
    }
}

/// A parsed datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketRepr<'a> {
    /// Client opens a handshake.
    Initial {
        /// Connection id chosen by the client (non-zero).
        conn_id: u32,
        /// Client nonce, echoed in the challenge.
        nonce: u64,
    },
    /// Server's stateless answer.
    Challenge {
        /// Connection id from the INITIAL.
        conn_id: u32,
        /// The INITIAL's nonce.
        nonce: u64,
        /// Cookie to echo.
        cookie: u64,
    },
    /// Client proves it received the challenge.
    Echo {
        /// Connection id.
        conn_id: u32,
        /// The challenge's cookie.
        cookie: u64,
        /// Client's transport parameters.
        params: Params,
    },
    /// Server accepts the connection.
    Accept {
        /// Connection id.
        conn_id: u32,
        /// Server's transport parameters.
        params: Params,
    },
    /// Message chunks.
    Data {
        /// Connection id.
        conn_id: u32,
        /// Packet number.
        pn: u32,
        /// Piggybacked ack.
        ack: Option<AckRepr>,
        /// The chunks.
        chunks: Chunks<'a>,
    },
    /// A pure ack.
    Ack {
        /// Connection id.
        conn_id: u32,
        /// The ack.
        ack: AckRepr,
    },
    /// Heartbeat / probe.
    Ping {
        /// Connection id.
        conn_id: u32,
        /// Packet number.
        pn: u32,
        /// Piggybacked ack.
        ack: Option<AckRepr>,
    },
    /// Connection close.
    Close {
        /// Connection id.
        conn_id: u32,
        /// Why.
        reason: CloseCode,
    },
}

impl<'a> PacketRepr<'a> {
    /// Parses a datagram. Total: never panics.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        let p = Packet::new_checked(bytes)?;
        let conn_id = p.conn_id();
        let ty = p.packet_type()?;
        let ack = match p.ack_block() {
            Some(a) => Some(AckRepr::parse(a)?),
            None => None,
        };
        Ok(match ty {
            PacketType::Initial => PacketRepr::Initial {
                conn_id,
                nonce: p.nonce(),
            },
            PacketType::Challenge => PacketRepr::Challenge {
                conn_id,
                nonce: p.nonce(),
                cookie: p.cookie(),
            },
            PacketType::Echo => PacketRepr::Echo {
                conn_id,
                cookie: p.cookie(),
                params: Params::parse(p.params_block().ok_or(WireError::Truncated)?)?,
            },
            PacketType::Accept => PacketRepr::Accept {
                conn_id,
                params: Params::parse(p.params_block().ok_or(WireError::Truncated)?)?,
            },
            PacketType::Data => {
                // Re-slice from the original borrow so the chunks live for 'a.
                let start = if p.flags() & FLAG_ACK != 0 {
                    field::PN_END + field::ACK_BLOCK_LEN
                } else {
                    field::PN_END
                };
                PacketRepr::Data {
                    conn_id,
                    pn: p.pn(),
                    ack,
                    chunks: Chunks::new_checked(bytes.get(start..).unwrap_or(&[]))?,
                }
            }
            PacketType::Ack => PacketRepr::Ack {
                conn_id,
                ack: ack.ok_or(WireError::Truncated)?,
            },
            PacketType::Ping => PacketRepr::Ping {
                conn_id,
                pn: p.pn(),
                ack,
            },
            PacketType::Close => PacketRepr::Close {
                conn_id,
                reason: CloseCode::from_u8(p.close_reason()),
            },
        })
    }

    /// The connection id.
    pub fn conn_id(&self) -> u32 {
        match *self {
            PacketRepr::Initial { conn_id, .. }
            | PacketRepr::Challenge { conn_id, .. }
            | PacketRepr::Echo { conn_id, .. }
            | PacketRepr::Accept { conn_id, .. }
            | PacketRepr::Data { conn_id, .. }
            | PacketRepr::Ack { conn_id, .. }
            | PacketRepr::Ping { conn_id, .. }
            | PacketRepr::Close { conn_id, .. } => conn_id,
        }
    }

    /// The packet type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            PacketRepr::Initial { .. } => PacketType::Initial,
            PacketRepr::Challenge { .. } => PacketType::Challenge,
            PacketRepr::Echo { .. } => PacketType::Echo,
            PacketRepr::Accept { .. } => PacketType::Accept,
            PacketRepr::Data { .. } => PacketType::Data,
            PacketRepr::Ack { .. } => PacketType::Ack,
            PacketRepr::Ping { .. } => PacketType::Ping,
            PacketRepr::Close { .. } => PacketType::Close,
        }
    }

    /// Encoded length.
    pub fn buffer_len(&self) -> usize {
        match self {
            PacketRepr::Initial { .. } => field::INITIAL_MIN_LEN,
            PacketRepr::Challenge { .. } => field::CHALLENGE_LEN,
            PacketRepr::Echo { .. } => field::ECHO_LEN,
            PacketRepr::Accept { .. } => field::ACCEPT_LEN,
            PacketRepr::Ack { .. } => field::ACK_LEN,
            PacketRepr::Close { .. } => field::CLOSE_LEN,
            PacketRepr::Ping { ack, .. } => field::PN_END + ack.map_or(0, |_| field::ACK_BLOCK_LEN),
            PacketRepr::Data { ack, chunks, .. } => {
                field::PN_END + ack.map_or(0, |_| field::ACK_BLOCK_LEN) + chunks.bytes.len()
            }
        }
    }

    /// Writes the datagram at the start of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let len = self.buffer_len();
        let b = buf.get_mut(..len).ok_or(WireError::BufferTooSmall)?;
        let (ty, flags) = match self {
            PacketRepr::Data { ack, .. } | PacketRepr::Ping { ack, .. } => {
                (self.packet_type(), if ack.is_some() { FLAG_ACK } else { 0 })
            }
            _ => (self.packet_type(), 0),
        };
        emit_header(b, ty, flags, self.conn_id());
        match self {
            PacketRepr::Initial { nonce, .. } => {
                b[field::INITIAL_NONCE].copy_from_slice(&nonce.to_be_bytes());
                b[field::INITIAL_NONCE.end..].fill(0);
            }
            PacketRepr::Challenge { nonce, cookie, .. } => {
                b[field::CHALLENGE_NONCE].copy_from_slice(&nonce.to_be_bytes());
                b[field::CHALLENGE_COOKIE].copy_from_slice(&cookie.to_be_bytes());
            }
            PacketRepr::Echo { cookie, params, .. } => {
                b[field::ECHO_COOKIE].copy_from_slice(&cookie.to_be_bytes());
                params.emit(&mut b[field::ECHO_PARAMS]);
            }
            PacketRepr::Accept { params, .. } => params.emit(&mut b[field::ACCEPT_PARAMS]),
            PacketRepr::Ack { ack, .. } => ack.emit(&mut b[field::HEADER_LEN..field::ACK_LEN]),
            PacketRepr::Close { reason, .. } => {
                b[field::CLOSE_REASON] = reason.to_u8();
                b[field::CLOSE_REASON + 1..field::CLOSE_LEN].fill(0);
            }
            PacketRepr::Ping { pn, ack, .. } => {
                emit_pn_ack(b, *pn, ack.as_ref());
            }
            PacketRepr::Data {
                pn, ack, chunks, ..
            } => {
                let at = emit_pn_ack(b, *pn, ack.as_ref());
                b[at..].copy_from_slice(chunks.bytes);
            }
        }
        Ok(len)
    }
}

/// Writes the 8-byte common header. `b` must be at least 8 bytes.
pub(crate) fn emit_header(b: &mut [u8], ty: PacketType, flags: u8, conn_id: u32) {
    b[field::VERSION] = VERSION;
    b[field::TYPE] = ty as u8;
    b[field::FLAGS] = flags;
    b[field::RESERVED] = 0;
    b[field::CONN_ID].copy_from_slice(&conn_id.to_be_bytes());
}

/// Writes packet number and optional ack block after the header; returns the
/// offset where chunks start. `b` must be long enough.
pub(crate) fn emit_pn_ack(b: &mut [u8], pn: u32, ack: Option<&AckRepr>) -> usize {
    b[field::PN].copy_from_slice(&pn.to_be_bytes());
    match ack {
        Some(a) => {
            a.emit(&mut b[field::PN_END..field::PN_END + field::ACK_BLOCK_LEN]);
            field::PN_END + field::ACK_BLOCK_LEN
        }
        None => field::PN_END,
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;

//! Length-prefixed message framing, sans-IO.
//!
//! Every frame on the wire is a fixed-width unsigned length field followed by
//! the payload:
//!
//! ```text
//! +----------------------+---------------------------+
//! | length (1/2/4/8 B)   | payload (length bytes)    |
//! +----------------------+---------------------------+
//! ```
//!
//! The width, byte order, maximum payload length and whether the length value
//! counts the header itself are set by a [`FrameConfig`]. One config drives
//! both directions: [`FrameConfig::encode_header`] refuses exactly what
//! [`FrameConfig::decode`] would reject.
//!
//! # Design
//!
//! * **Zero copy.** [`FrameDecoder::feed`] hands every frame that lies wholly
//!   inside the input slice to the callback as a subslice of that input. Only
//!   a frame split across reads is copied, into the decoder's own storage.
//! * **Bounded memory.** The decoder never reserves the length a header
//!   declares; its storage grows only with bytes actually received (amortised
//!   doubling, never past the declared frame length). When no partial frame is
//!   pending it holds no allocation at all, so idle connections cost nothing.
//! * **Decided from the header alone.** As soon as the length field is
//!   complete the declared length is checked against the limit, before any
//!   body byte is buffered. A peer announcing a huge frame is rejected after
//!   at most `header_len` bytes.
//! * **No panics on untrusted input.** All length arithmetic is checked and no
//!   slice is indexed with a peer-controlled value.

use std::fmt;
use std::ops::ControlFlow;

/// Default maximum payload length: 8 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 8 * 1024 * 1024;

/// Width of the length field that prefixes each frame.
///
/// Only the widths that exist on the wire are representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LengthWidth {
    /// 1-byte length field.
    U8,
    /// 2-byte length field.
    U16,
    /// 4-byte length field.
    U32,
    /// 8-byte length field.
    U64,
}

impl LengthWidth {
    /// Number of bytes the length field occupies.
    #[must_use]
    pub const fn bytes(self) -> usize {
        match self {
            LengthWidth::U8 => 1,
            LengthWidth::U16 => 2,
            LengthWidth::U32 => 4,
            LengthWidth::U64 => 8,
        }
    }

    /// Largest value the length field can hold.
    #[must_use]
    pub const fn max_value(self) -> u64 {
        match self {
            LengthWidth::U8 => u8::MAX as u64,
            LengthWidth::U16 => u16::MAX as u64,
            LengthWidth::U32 => u32::MAX as u64,
            LengthWidth::U64 => u64::MAX,
        }
    }
}

/// Byte order of the length field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Endian {
    /// Most significant byte first (network order). The default.
    #[default]
    Big,
    /// Least significant byte first.
    Little,
}

/// Framing error: the stream cannot be decoded (or a frame cannot be encoded).
///
/// A decoding error means the peer violated the protocol; the stream cannot be
/// resynchronised and the connection should be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The (declared) payload length exceeds the configured maximum.
    ///
    /// When decoding, this is decided from the header alone. With
    /// `length_includes_header`, `len` is the payload length, i.e. the
    /// declared value minus the header length.
    TooLarge {
        /// Payload length that was declared (or asked to be encoded).
        len: u64,
        /// Effective maximum payload length ([`FrameConfig::max_frame_len`]).
        max: usize,
    },
    /// With `length_includes_header`, the declared length is smaller than the
    /// header itself.
    InvalidLength {
        /// Raw value of the length field.
        len: u64,
        /// Length of the header in bytes.
        header_len: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FrameError::TooLarge { len, max } => {
                write!(f, "frame payload length {len} exceeds maximum {max}")
            }
            FrameError::InvalidLength { len, header_len } => write!(
                f,
                "declared frame length {len} is smaller than the {header_len}-byte header"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// Framing parameters shared by the decoder and the encoder.
///
/// The default is a 4-byte big-endian length that does not count the header,
/// with an 8 MiB payload limit.
///
/// # Example
///
/// ```
/// use msgloop::framing::{Decoded, FrameConfig, LengthWidth};
///
/// let cfg = FrameConfig::new()
///     .with_length_width(LengthWidth::U16)
///     .little_endian()
///     .with_max_frame_len(1024);
/// assert_eq!(cfg.header_len(), 2);
///
/// let mut wire = Vec::new();
/// cfg.encode_into(b"hello", &mut wire)?;
/// assert_eq!(wire, b"\x05\x00hello");
///
/// // Decoding is a pure function of the bytes seen so far.
/// assert_eq!(
///     cfg.decode(&wire[..3])?,
///     Decoded::NeedMore { frame_len: Some(7) }
/// );
/// assert_eq!(
///     cfg.decode(&wire)?,
///     Decoded::Frame { header_len: 2, payload_len: 5 }
/// );
///
/// // A header declaring more than the limit is rejected on its own.
/// assert!(cfg.decode(&[0x01, 0x04]).is_err()); // 1025 bytes
/// # Ok::<(), msgloop::framing::FrameError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameConfig {
    width: LengthWidth,
    endian: Endian,
    max_frame_len: usize,
    length_includes_header: bool,
}

impl Default for FrameConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameConfig {
    /// Default config: 4-byte big-endian length, not counting the header,
    /// 8 MiB maximum payload.
    #[must_use]
    pub const fn new() -> Self {
        FrameConfig {
            width: LengthWidth::U32,
            endian: Endian::Big,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            length_includes_header: false,
        }
    }

    /// Sets the width of the length field.
    #[must_use]
    pub const fn with_length_width(mut self, width: LengthWidth) -> Self {
        self.width = width;
        self
    }

    /// Sets the byte order of the length field.
    #[must_use]
    pub const fn with_endian(mut self, endian: Endian) -> Self {
        self.endian = endian;
        self
    }

    /// Big-endian length field (the default).
    #[must_use]
    pub const fn big_endian(self) -> Self {
        self.with_endian(Endian::Big)
    }

    /// Little-endian length field.
    #[must_use]
    pub const fn little_endian(self) -> Self {
        self.with_endian(Endian::Little)
    }

    /// Sets the maximum payload length (header excluded).
    ///
    /// The value is clamped to what the length field can express; see
    /// [`FrameConfig::max_frame_len`].
    #[must_use]
    pub const fn with_max_frame_len(mut self, max: usize) -> Self {
        self.max_frame_len = max;
        self
    }

    /// Sets whether the length value counts the header bytes too.
    #[must_use]
    pub const fn with_length_includes_header(mut self, includes: bool) -> Self {
        self.length_includes_header = includes;
        self
    }

    /// Width of the length field.
    #[must_use]
    pub const fn length_width(&self) -> LengthWidth {
        self.width
    }

    /// Byte order of the length field.
    #[must_use]
    pub const fn endian(&self) -> Endian {
        self.endian
    }

    /// Whether the length value counts the header bytes too.
    #[must_use]
    pub const fn length_includes_header(&self) -> bool {
        self.length_includes_header
    }

    /// Length of the frame header in bytes (1, 2, 4 or 8).
    #[must_use]
    pub const fn header_len(&self) -> usize {
        self.width.bytes()
    }

    /// Effective maximum payload length.
    ///
    /// This is the configured value clamped so that the length field can
    /// express it (minus the header when `length_includes_header`) and so
    /// that header plus payload fits in a `usize`.
    #[must_use]
    pub const fn max_frame_len(&self) -> usize {
        let hl = self.header_len();
        let mut field_max = self.width.max_value();
        if self.length_includes_header {
            // max_value() >= 255 > header_len, so this cannot underflow.
            field_max -= hl as u64;
        }
        let mut max = self.max_frame_len;
        if field_max < max as u64 {
            // field_max < max <= usize::MAX, so the cast is lossless.
            max = field_max as usize;
        }
        let total_max = usize::MAX - hl;
        if max > total_max {
            max = total_max;
        }
        max
    }

    /// Decodes the frame starting at `buf[0]`, without copying.
    ///
    /// Returns [`Decoded::Frame`] when a whole frame is present (it occupies
    /// `buf[..header_len + payload_len]`, payload after the header), or
    /// [`Decoded::NeedMore`] otherwise. Errors are reported as soon as the
    /// header is complete, whether or not any body byte is present.
    pub fn decode(&self, buf: &[u8]) -> Result<Decoded, FrameError> {
        Ok(match self.split_frame(buf)? {
            Split::Frame { payload, .. } => Decoded::Frame {
                header_len: self.header_len(),
                payload_len: payload.len(),
            },
            Split::Partial { frame_len } => Decoded::NeedMore { frame_len },
        })
    }

    /// Encodes the header for a payload of `payload_len` bytes.
    ///
    /// Write `header.as_bytes()` followed by the payload (e.g. as two iovecs).
    /// Fails with [`FrameError::TooLarge`] if the decoder would reject it.
    pub fn encode_header(&self, payload_len: usize) -> Result<FrameHeader, FrameError> {
        let max = self.max_frame_len();
        let too_large = FrameError::TooLarge {
            len: u64::try_from(payload_len).unwrap_or(u64::MAX),
            max,
        };
        if payload_len > max {
            return Err(too_large);
        }
        let hl = self.header_len();
        let value = if self.length_includes_header {
            payload_len.checked_add(hl).ok_or(too_large)?
        } else {
            payload_len
        };
        // value <= field max by the clamping in max_frame_len().
        let value = u64::try_from(value).map_err(|_| too_large)?;
        let mut bytes = [0u8; 8];
        let src = match self.endian {
            Endian::Big => value.to_be_bytes(),
            Endian::Little => value.to_le_bytes(),
        };
        let src = match self.endian {
            Endian::Big => src.get(8 - hl..),
            Endian::Little => src.get(..hl),
        };
        if let (Some(dst), Some(src)) = (bytes.get_mut(..hl), src) {
            dst.copy_from_slice(src);
        }
        Ok(FrameHeader {
            bytes,
            width: self.width,
        })
    }

    /// Appends header and payload to `out`.
    ///
    /// On error `out` is left unchanged.
    pub fn encode_into(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        let header = self.encode_header(payload.len())?;
        let header = header.as_bytes();
        out.reserve(header.len().saturating_add(payload.len()));
        out.extend_from_slice(header);
        out.extend_from_slice(payload);
        Ok(())
    }

    /// Parses a complete header (exactly `header_len` bytes) into the payload
    /// length, validating it.
    fn parse_header(&self, header: &[u8]) -> Result<usize, FrameError> {
        let fold = |acc: u64, &b: &u8| (acc << 8) | u64::from(b);
        let raw = match self.endian {
            Endian::Big => header.iter().fold(0, fold),
            Endian::Little => header.iter().rev().fold(0, fold),
        };
        let hl = self.header_len();
        let payload = if self.length_includes_header {
            // hl <= 8, so the cast is lossless.
            raw.checked_sub(hl as u64)
                .ok_or(FrameError::InvalidLength {
                    len: raw,
                    header_len: hl,
                })?
        } else {
            raw
        };
        let max = self.max_frame_len();
        let too_large = FrameError::TooLarge { len: payload, max };
        let payload = usize::try_from(payload).map_err(|_| too_large)?;
        if payload > max {
            return Err(too_large);
        }
        Ok(payload)
    }

    /// Splits the frame at the start of `buf` off, if complete.
    fn split_frame<'a>(&self, buf: &'a [u8]) -> Result<Split<'a>, FrameError> {
        let Some((header, body)) = buf.split_at_checked(self.header_len()) else {
            return Ok(Split::Partial { frame_len: None });
        };
        let payload_len = self.parse_header(header)?;
        Ok(match body.split_at_checked(payload_len) {
            Some((payload, rest)) => Split::Frame { payload, rest },
            // payload_len <= max_frame_len() <= usize::MAX - header_len.
            None => Split::Partial {
                frame_len: Some(header.len().saturating_add(payload_len)),
            },
        })
    }
}

/// Internal result of splitting one frame off a buffer.
enum Split<'a> {
    Frame { payload: &'a [u8], rest: &'a [u8] },
    Partial { frame_len: Option<usize> },
}

/// Result of [`FrameConfig::decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// A complete frame starts at `buf[0]`; it is
    /// `header_len + payload_len` bytes long and its payload is
    /// `buf[header_len..header_len + payload_len]`.
    Frame {
        /// Length of the header in bytes.
        header_len: usize,
        /// Length of the payload in bytes.
        payload_len: usize,
    },
    /// The buffer holds only the start of a frame.
    NeedMore {
        /// Total length of the frame (header included) once the header is
        /// complete; `None` while the header itself is incomplete.
        frame_len: Option<usize>,
    },
}

/// Encoded frame header: a small stack value.
///
/// Obtained from [`FrameConfig::encode_header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    bytes: [u8; 8],
    width: LengthWidth,
}

impl FrameHeader {
    /// The header bytes to put on the wire before the payload.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.width.bytes()).unwrap_or(&self.bytes)
    }
}

impl AsRef<[u8]> for FrameHeader {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// What one call to [`FrameDecoder::feed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FeedOutcome {
    /// Number of frames delivered to the callback.
    pub frames: usize,
    /// The callback returned [`ControlFlow::Break`]; the rest of the input
    /// was discarded.
    pub stopped: bool,
}

/// Per-connection streaming decoder.
///
/// Holds only the trailing partial frame of the stream, if any. It is fed
/// whatever was just read from the socket, typically straight out of one
/// buffer shared by all connections, and calls back with each complete
/// payload. Frames wholly inside the input are delivered as subslices of it
/// (no copy); only a frame split across reads is copied into the decoder,
/// which allocates as the bytes arrive, never ahead of them, and frees its
/// storage as soon as that frame is delivered.
///
/// The same [`FrameConfig`] must be passed to every call.
///
/// # Example
///
/// ```
/// use std::ops::ControlFlow;
/// use msgloop::framing::{FrameConfig, FrameDecoder};
///
/// let cfg = FrameConfig::new(); // 4-byte big-endian length
/// let mut wire = Vec::new();
/// cfg.encode_into(b"ping", &mut wire)?;
/// cfg.encode_into(b"", &mut wire)?;
/// cfg.encode_into(b"pong", &mut wire)?;
///
/// let mut decoder = FrameDecoder::new();
/// let mut got = Vec::new();
/// // Simulate the socket delivering the stream in arbitrary reads.
/// for read in wire.chunks(5) {
///     let outcome = decoder.feed(&cfg, read, |payload| {
///         got.push(payload.to_vec());
///         ControlFlow::Continue(())
///     })?;
///     assert!(!outcome.stopped);
/// }
/// assert_eq!(got, [&b"ping"[..], b"", b"pong"]);
/// // Nothing pending: the idle connection holds no buffer.
/// assert!(!decoder.has_partial());
/// assert_eq!(decoder.buffered_capacity(), 0);
/// # Ok::<(), msgloop::framing::FrameError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct FrameDecoder {
    /// Bytes of the trailing partial frame (header included). Empty with
    /// capacity 0 when nothing is pending.
    partial: Vec<u8>,
    /// Set once the stream is known to be malformed; sticky.
    error: Option<FrameError>,
}

impl FrameDecoder {
    /// Creates an empty decoder. Does not allocate.
    #[must_use]
    pub const fn new() -> Self {
        FrameDecoder {
            partial: Vec::new(),
            error: None,
        }
    }

    /// Feeds bytes just read from the stream, calling `on_frame` with the
    /// payload of every frame completed by them, in order.
    ///
    /// A pending partial frame is completed first, copying only the bytes it
    /// needs from `input`. Then every complete frame in the rest of `input`
    /// is delivered as a subslice of `input`, without copying. A trailing
    /// partial frame (possibly just part of a header) is copied into the
    /// decoder.
    ///
    /// If `on_frame` returns [`ControlFlow::Break`], delivery stops at once,
    /// the rest of `input` is discarded and the decoder is left empty;
    /// [`FeedOutcome::stopped`] is set. Use this when the callback closes
    /// the connection.
    ///
    /// # Errors
    ///
    /// [`FrameError::TooLarge`] or [`FrameError::InvalidLength`] as soon as a
    /// bad header is complete; no byte of its body is buffered. Frames before
    /// it have already been delivered. The error is sticky: every later call
    /// returns it again until [`FrameDecoder::reset`].
    pub fn feed<F>(
        &mut self,
        cfg: &FrameConfig,
        mut input: &[u8],
        mut on_frame: F,
    ) -> Result<FeedOutcome, FrameError>
    where
        F: FnMut(&[u8]) -> ControlFlow<()>,
    {
        if let Some(err) = self.error {
            return Err(err);
        }
        let mut outcome = FeedOutcome::default();
        let hl = cfg.header_len();

        // 1. Complete the pending partial frame, if any.
        if !self.partial.is_empty() {
            if self.partial.len() < hl {
                let (head, rest) = split_at_most(input, hl - self.partial.len());
                self.append(head, hl);
                input = rest;
            }
            let Some((header, _)) = self.partial.split_at_checked(hl) else {
                // Header still incomplete: all input was consumed.
                return Ok(outcome);
            };
            let payload_len = match cfg.parse_header(header) {
                Ok(len) => len,
                Err(err) => return Err(self.fail(err)),
            };
            let frame_len = hl.saturating_add(payload_len);
            let (body, rest) = split_at_most(input, frame_len.saturating_sub(self.partial.len()));
            self.append(body, frame_len);
            input = rest;
            if self.partial.len() < frame_len {
                // Frame still incomplete: all input was consumed.
                return Ok(outcome);
            }
            let frame = std::mem::take(&mut self.partial);
            outcome.frames += 1;
            if on_frame(frame.get(hl..).unwrap_or_default()).is_break() {
                outcome.stopped = true;
                return Ok(outcome);
            }
        }

        // 2. Deliver complete frames straight from the input.
        loop {
            match cfg.split_frame(input) {
                Ok(Split::Frame { payload, rest }) => {
                    outcome.frames += 1;
                    if on_frame(payload).is_break() {
                        outcome.stopped = true;
                        return Ok(outcome);
                    }
                    input = rest;
                }
                Ok(Split::Partial { frame_len }) => {
                    // 3. Keep the trailing partial frame.
                    self.append(input, frame_len.unwrap_or(hl));
                    return Ok(outcome);
                }
                Err(err) => return Err(self.fail(err)),
            }
        }
    }

    /// Number of bytes of a partial frame currently buffered.
    #[must_use]
    pub fn pending_len(&self) -> usize {
        self.partial.len()
    }

    /// Bytes the pending partial frame still lacks, once its header is
    /// complete (`None` while it is not, and when nothing is pending).
    #[must_use]
    pub fn missing(&self, cfg: &FrameConfig) -> Option<usize> {
        let header = self.partial.get(..cfg.header_len())?;
        let frame_len = cfg
            .header_len()
            .saturating_add(cfg.parse_header(header).ok()?);
        Some(frame_len.saturating_sub(self.partial.len()))
    }

    /// Makes room for `additional` more bytes of the pending frame exactly,
    /// so that feeding them grows the buffer by no more than that (feeding
    /// otherwise grows it by doubling). A caller that bounds memory reserves
    /// before it reads.
    pub fn reserve_exact(&mut self, additional: usize) {
        if !self.partial.is_empty() {
            self.partial.reserve_exact(additional);
        }
    }

    /// Whether part of a frame has been received but not yet delivered.
    ///
    /// A connection that stays in this state too long may be a slow-loris.
    #[must_use]
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Bytes of heap memory held by this decoder (0 when idle).
    #[must_use]
    pub fn buffered_capacity(&self) -> usize {
        self.partial.capacity()
    }

    /// Discards any partial frame and error, freeing the storage.
    pub fn reset(&mut self) {
        *self = FrameDecoder::new();
    }

    /// Records a fatal error and frees the storage.
    fn fail(&mut self, err: FrameError) -> FrameError {
        self.partial = Vec::new();
        self.error = Some(err);
        err
    }

    /// Appends received bytes to the partial frame, whose total length will
    /// be `limit`. Capacity grows by doubling but never beyond `limit`, and
    /// never ahead of `2 * pending_len()`.
    fn append(&mut self, bytes: &[u8], limit: usize) {
        let needed = self.partial.len().saturating_add(bytes.len());
        if needed > self.partial.capacity() {
            let target = self
                .partial
                .capacity()
                .saturating_mul(2)
                .min(limit)
                .max(needed);
            self.partial.reserve_exact(target - self.partial.len());
        }
        self.partial.extend_from_slice(bytes);
    }
}

/// Splits `buf` after at most `n` bytes.
fn split_at_most(buf: &[u8], n: usize) -> (&[u8], &[u8]) {
    buf.split_at(n.min(buf.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIDTHS: [LengthWidth; 4] = [
        LengthWidth::U8,
        LengthWidth::U16,
        LengthWidth::U32,
        LengthWidth::U64,
    ];

    fn all_configs() -> Vec<FrameConfig> {
        let mut v = Vec::new();
        for w in WIDTHS {
            for e in [Endian::Big, Endian::Little] {
                for inc in [false, true] {
                    v.push(
                        FrameConfig::new()
                            .with_length_width(w)
                            .with_endian(e)
                            .with_length_includes_header(inc),
                    );
                }
            }
        }
        v
    }

    /// Feeds `chunks` and collects payloads; returns the first error.
    fn feed_all(
        cfg: &FrameConfig,
        dec: &mut FrameDecoder,
        chunks: &[&[u8]],
    ) -> (Vec<Vec<u8>>, Result<(), FrameError>) {
        let mut got = Vec::new();
        for chunk in chunks {
            let res = dec.feed(cfg, chunk, |p| {
                got.push(p.to_vec());
                ControlFlow::Continue(())
            });
            if let Err(e) = res {
                return (got, Err(e));
            }
        }
        (got, Ok(()))
    }

    #[test]
    fn defaults() {
        let cfg = FrameConfig::default();
        assert_eq!(cfg, FrameConfig::new());
        assert_eq!(cfg.header_len(), 4);
        assert_eq!(cfg.endian(), Endian::Big);
        assert_eq!(cfg.length_width(), LengthWidth::U32);
        assert_eq!(cfg.max_frame_len(), 8 * 1024 * 1024);
        assert!(!cfg.length_includes_header());
        assert_eq!(cfg.encode_header(5).unwrap().as_bytes(), [0, 0, 0, 5]);
    }

    #[test]
    fn header_bytes_are_exact() {
        let cfg = FrameConfig::new().with_length_width(LengthWidth::U16);
        assert_eq!(cfg.encode_header(0x0102).unwrap().as_bytes(), [1, 2]);
        let cfg = cfg.little_endian();
        assert_eq!(cfg.encode_header(0x0102).unwrap().as_bytes(), [2, 1]);
        let cfg = cfg.with_length_includes_header(true);
        assert_eq!(cfg.encode_header(0x0102).unwrap().as_bytes(), [4, 1]);
        let cfg = FrameConfig::new().with_length_width(LengthWidth::U64);
        assert_eq!(
            cfg.encode_header(0x0102).unwrap().as_bytes(),
            [0, 0, 0, 0, 0, 0, 1, 2]
        );
        let cfg = cfg.little_endian();
        assert_eq!(
            cfg.encode_header(0x0102).unwrap().as_bytes(),
            [2, 1, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn round_trip_every_config() {
        let payloads: [&[u8]; 4] = [b"", b"a", b"hello world", &[0xAB; 254]];
        for cfg in all_configs() {
            let mut wire = Vec::new();
            for p in payloads {
                cfg.encode_into(p, &mut wire).unwrap();
            }
            // Pure decode walks the frames.
            let mut buf = &wire[..];
            for p in payloads {
                let Decoded::Frame {
                    header_len,
                    payload_len,
                } = cfg.decode(buf).unwrap()
                else {
                    panic!("{cfg:?}: expected a frame");
                };
                assert_eq!(header_len, cfg.header_len());
                assert_eq!(&buf[header_len..header_len + payload_len], p, "{cfg:?}");
                buf = &buf[header_len + payload_len..];
            }
            assert!(buf.is_empty());
            // Streaming decode, in one go.
            let mut dec = FrameDecoder::new();
            let (got, res) = feed_all(&cfg, &mut dec, &[&wire]);
            res.unwrap();
            assert_eq!(got, payloads, "{cfg:?}");
            assert_eq!(dec.buffered_capacity(), 0);
        }
    }

    #[test]
    fn huge_header_rejected_without_buffering() {
        let cfg = FrameConfig::new();
        let mut dec = FrameDecoder::new();
        let err = dec
            .feed(&cfg, &[0xFF; 4], |_| panic!("no frame expected"))
            .unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: 0xFFFF_FFFF,
                max: 8 * 1024 * 1024
            }
        );
        assert!(dec.buffered_capacity() < 64);
        assert_eq!(dec.pending_len(), 0);
        // Same when the header arrives split across reads.
        let mut dec = FrameDecoder::new();
        dec.feed(&cfg, &[0xFF; 3], |_| ControlFlow::Continue(()))
            .unwrap();
        assert!(dec.buffered_capacity() < 64);
        let err2 = dec
            .feed(&cfg, &[0xFF, 1, 2, 3], |_| ControlFlow::Continue(()))
            .unwrap_err();
        assert_eq!(err2, err);
        assert_eq!(dec.buffered_capacity(), 0);
        // The pure decoder decides from the header alone too.
        assert_eq!(cfg.decode(&[0xFF; 4]), Err(err));
    }

    #[test]
    fn error_is_sticky_until_reset() {
        let cfg = FrameConfig::new().with_max_frame_len(3);
        let mut dec = FrameDecoder::new();
        let err = dec
            .feed(&cfg, &[0, 0, 0, 4], |_| ControlFlow::Continue(()))
            .unwrap_err();
        let again = dec
            .feed(&cfg, &[0, 0, 0, 0], |_| panic!("must not decode"))
            .unwrap_err();
        assert_eq!(again, err);
        dec.reset();
        let out = dec
            .feed(&cfg, &[0, 0, 0, 0], |_| ControlFlow::Continue(()))
            .unwrap();
        assert_eq!(out.frames, 1);
    }

    #[test]
    fn max_boundary() {
        for cfg in all_configs() {
            let cfg = cfg.with_max_frame_len(100);
            let max = cfg.max_frame_len();
            assert_eq!(max, 100);
            // Exactly max is accepted by both sides.
            let mut wire = Vec::new();
            cfg.encode_into(&[7; 100], &mut wire).unwrap();
            assert_eq!(
                cfg.decode(&wire),
                Ok(Decoded::Frame {
                    header_len: cfg.header_len(),
                    payload_len: 100
                })
            );
            // max + 1 is refused by both sides, decoder from header alone.
            let err = FrameError::TooLarge { len: 101, max: 100 };
            assert_eq!(cfg.encode_header(101), Err(err));
            assert_eq!(cfg.encode_into(&[7; 101], &mut wire), Err(err));
            assert_eq!(wire.len(), cfg.header_len() + 100, "unchanged on error");
            let bigger = cfg.with_max_frame_len(101);
            let header = bigger.encode_header(101).unwrap();
            assert_eq!(cfg.decode(header.as_bytes()), Err(err));
            let mut dec = FrameDecoder::new();
            assert_eq!(
                dec.feed(&cfg, header.as_bytes(), |_| ControlFlow::Continue(())),
                Err(err)
            );
        }
    }

    #[test]
    fn max_clamping() {
        let u8cfg = FrameConfig::new().with_length_width(LengthWidth::U8);
        assert_eq!(u8cfg.max_frame_len(), 255);
        assert!(u8cfg.encode_header(255).is_ok());
        assert_eq!(
            u8cfg.encode_header(256),
            Err(FrameError::TooLarge { len: 256, max: 255 })
        );
        let inc = u8cfg.with_length_includes_header(true);
        assert_eq!(inc.max_frame_len(), 254);
        assert_eq!(inc.encode_header(254).unwrap().as_bytes(), [255]);
        assert_eq!(
            inc.encode_header(255),
            Err(FrameError::TooLarge { len: 255, max: 254 })
        );
        assert_eq!(
            inc.decode(&[255]),
            Ok(Decoded::NeedMore {
                frame_len: Some(255)
            })
        );
        // A smaller explicit limit wins over the field limit.
        assert_eq!(u8cfg.with_max_frame_len(10).max_frame_len(), 10);
        // U16 clamps the 8 MiB default too.
        let u16cfg = FrameConfig::new().with_length_width(LengthWidth::U16);
        assert_eq!(u16cfg.max_frame_len(), 65535);
        assert_eq!(
            u16cfg.with_length_includes_header(true).max_frame_len(),
            65533
        );
        // U64 with no limit: total length must still fit in usize.
        let u64cfg = FrameConfig::new()
            .with_length_width(LengthWidth::U64)
            .with_max_frame_len(usize::MAX);
        assert_eq!(u64cfg.max_frame_len(), usize::MAX - 8);
        assert_eq!(
            u64cfg.decode(&[0xFF; 8]),
            Err(FrameError::TooLarge {
                len: u64::MAX,
                max: usize::MAX - 8
            })
        );
        assert!(u64cfg.encode_header(usize::MAX).is_err());
        assert!(u64cfg
            .with_length_includes_header(true)
            .encode_header(usize::MAX - 8)
            .is_ok());
    }

    #[test]
    fn invalid_length_when_including_header() {
        for w in WIDTHS {
            let cfg = FrameConfig::new()
                .with_length_width(w)
                .with_length_includes_header(true);
            let hl = cfg.header_len();
            for len in 0..hl as u64 {
                let header = FrameConfig::new()
                    .with_length_width(w)
                    .encode_header(len as usize)
                    .unwrap();
                let err = FrameError::InvalidLength {
                    len,
                    header_len: hl,
                };
                assert_eq!(cfg.decode(header.as_bytes()), Err(err));
                let mut dec = FrameDecoder::new();
                assert_eq!(
                    dec.feed(&cfg, header.as_bytes(), |_| ControlFlow::Continue(())),
                    Err(err)
                );
            }
            // len == header_len is an empty frame.
            let header = cfg.encode_header(0).unwrap();
            assert_eq!(
                cfg.decode(header.as_bytes()),
                Ok(Decoded::Frame {
                    header_len: hl,
                    payload_len: 0
                })
            );
        }
    }

    #[test]
    fn need_more_reports_frame_len() {
        let cfg = FrameConfig::new();
        assert_eq!(cfg.decode(&[]), Ok(Decoded::NeedMore { frame_len: None }));
        assert_eq!(
            cfg.decode(&[0, 0, 0]),
            Ok(Decoded::NeedMore { frame_len: None })
        );
        assert_eq!(
            cfg.decode(&[0, 0, 0, 3, 1]),
            Ok(Decoded::NeedMore { frame_len: Some(7) })
        );
    }

    #[test]
    fn zero_length_frames() {
        let cfg = FrameConfig::new().with_length_width(LengthWidth::U16);
        let mut dec = FrameDecoder::new();
        let (got, res) = feed_all(&cfg, &mut dec, &[&[0, 0]]);
        res.unwrap();
        assert_eq!(got, [Vec::<u8>::new()]);
        // Split header of an empty frame.
        let (got, res) = feed_all(&cfg, &mut dec, &[&[0], &[0]]);
        res.unwrap();
        assert_eq!(got, [Vec::<u8>::new()]);
        assert_eq!(dec.buffered_capacity(), 0);
    }

    #[test]
    fn thousand_zero_length_frames_in_one_feed() {
        let cfg = FrameConfig::new();
        let wire = vec![0u8; 4 * 1000];
        let mut dec = FrameDecoder::new();
        let mut calls = 0;
        let out = dec
            .feed(&cfg, &wire, |p| {
                assert!(p.is_empty());
                calls += 1;
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(calls, 1000);
        assert_eq!(
            out,
            FeedOutcome {
                frames: 1000,
                stopped: false
            }
        );
        assert_eq!(dec.buffered_capacity(), 0);
    }

    #[test]
    fn one_byte_at_a_time() {
        for cfg in all_configs() {
            let mut wire = Vec::new();
            cfg.encode_into(b"abc", &mut wire).unwrap();
            cfg.encode_into(b"", &mut wire).unwrap();
            cfg.encode_into(&[9; 40], &mut wire).unwrap();
            let mut dec = FrameDecoder::new();
            let mut got = Vec::new();
            for (i, b) in wire.iter().enumerate() {
                dec.feed(&cfg, std::slice::from_ref(b), |p| {
                    got.push(p.to_vec());
                    ControlFlow::Continue(())
                })
                .unwrap();
                // Memory tracks bytes received, never the declared length.
                assert!(dec.pending_len() <= i + 1);
                assert!(dec.buffered_capacity() <= 2 * dec.pending_len());
            }
            assert_eq!(got, [b"abc".to_vec(), vec![], vec![9; 40]], "{cfg:?}");
            assert!(!dec.has_partial());
            assert_eq!(dec.buffered_capacity(), 0);
        }
    }

    #[test]
    fn partial_is_completed_then_rest_is_zero_copy() {
        let cfg = FrameConfig::new().with_length_width(LengthWidth::U8);
        let mut wire = Vec::new();
        for p in [&b"first"[..], b"second", b"third"] {
            cfg.encode_into(p, &mut wire).unwrap();
        }
        let mut dec = FrameDecoder::new();
        let (a, b) = wire.split_at(3);
        let (got, res) = feed_all(&cfg, &mut dec, &[a]);
        res.unwrap();
        assert!(got.is_empty());
        assert_eq!(dec.pending_len(), 3);
        let input = b;
        let range = input.as_ptr_range();
        let mut n = 0;
        let out = dec
            .feed(&cfg, input, |p| {
                n += 1;
                // Frames after the first lie inside the caller's buffer.
                let inside = range.contains(&p.as_ptr());
                assert_eq!(inside, n > 1, "frame {n}");
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(out.frames, 3);
        assert_eq!(dec.buffered_capacity(), 0);
    }

    #[test]
    fn break_stops_delivery() {
        let cfg = FrameConfig::new();
        let mut wire = Vec::new();
        for p in [&b"a"[..], b"b", b"c"] {
            cfg.encode_into(p, &mut wire).unwrap();
        }
        wire.extend_from_slice(&[0, 0]); // trailing partial header
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        let out = dec
            .feed(&cfg, &wire, |p| {
                got.push(p.to_vec());
                if p == b"b" {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
        assert_eq!(got, [b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(
            out,
            FeedOutcome {
                frames: 2,
                stopped: true
            }
        );
        assert!(!dec.has_partial(), "rest of input discarded");
        assert_eq!(dec.buffered_capacity(), 0);

        // Break while delivering a completed partial frame.
        let mut dec = FrameDecoder::new();
        let (x, y) = wire.split_at(3);
        dec.feed(&cfg, x, |_| ControlFlow::Continue(())).unwrap();
        let mut calls = 0;
        let out = dec
            .feed(&cfg, y, |_| {
                calls += 1;
                ControlFlow::Break(())
            })
            .unwrap();
        assert_eq!((calls, out.frames, out.stopped), (1, 1, true));
        assert_eq!(dec.buffered_capacity(), 0);
    }

    #[test]
    fn idle_decoder_holds_nothing() {
        let cfg = FrameConfig::new();
        let mut dec = FrameDecoder::new();
        assert_eq!(dec.buffered_capacity(), 0);
        let mut wire = Vec::new();
        cfg.encode_into(&[1; 1000], &mut wire).unwrap();
        let (a, b) = wire.split_at(500);
        let (_, res) = feed_all(&cfg, &mut dec, &[a]);
        res.unwrap();
        assert!(dec.has_partial());
        assert!(dec.buffered_capacity() >= 500);
        assert!(dec.buffered_capacity() <= wire.len());
        let (got, res) = feed_all(&cfg, &mut dec, &[b]);
        res.unwrap();
        assert_eq!(got.len(), 1);
        assert!(!dec.has_partial());
        assert_eq!(dec.buffered_capacity(), 0);
    }

    #[test]
    fn large_declared_length_does_not_reserve() {
        // Header declares 8 MiB; only 10 body bytes arrive.
        let cfg = FrameConfig::new();
        let header = cfg.encode_header(8 * 1024 * 1024).unwrap();
        let mut input = header.as_bytes().to_vec();
        input.extend_from_slice(&[0; 10]);
        let mut dec = FrameDecoder::new();
        dec.feed(&cfg, &input, |_| ControlFlow::Continue(()))
            .unwrap();
        assert_eq!(dec.pending_len(), 14);
        assert!(dec.buffered_capacity() < 64);
    }

    #[test]
    fn frames_before_bad_header_are_delivered() {
        let cfg = FrameConfig::new().with_max_frame_len(16);
        let mut wire = Vec::new();
        cfg.encode_into(b"ok1", &mut wire).unwrap();
        cfg.encode_into(b"ok2", &mut wire).unwrap();
        wire.extend_from_slice(&[0, 0, 0, 17]);
        wire.extend_from_slice(&[0; 17]);
        for split in [0, 5, 9, 15] {
            let mut dec = FrameDecoder::new();
            let (a, b) = wire.split_at(split);
            let (got, res) = feed_all(&cfg, &mut dec, &[a, b]);
            assert_eq!(got, [b"ok1".to_vec(), b"ok2".to_vec()]);
            assert_eq!(res, Err(FrameError::TooLarge { len: 17, max: 16 }));
            assert_eq!(dec.buffered_capacity(), 0);
        }
    }

    #[test]
    fn error_display() {
        assert_eq!(
            FrameError::TooLarge { len: 10, max: 5 }.to_string(),
            "frame payload length 10 exceeds maximum 5"
        );
        assert_eq!(
            FrameError::InvalidLength {
                len: 1,
                header_len: 4
            }
            .to_string(),
            "declared frame length 1 is smaller than the 4-byte header"
        );
        let e: Box<dyn std::error::Error> = Box::new(FrameError::TooLarge { len: 1, max: 0 });
        assert!(e.source().is_none());
    }
}

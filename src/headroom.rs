//! [`HeadroomBuf`]: a datagram buffer with room in front of its bytes.

use std::fmt;
use std::io;
use std::ops::{Deref, DerefMut};

/// A datagram buffer with room in front of its bytes (its *headroom*), as
/// protocol layers want it: write the payload first, then prepend each
/// layer's header in front of it without moving a byte of it; on receive,
/// strip each layer's header by moving the start, without copying.
///
/// It dereferences to the bytes (`&[u8]`), so it goes straight to
/// [`Ctx::send_to`](crate::Ctx::send_to) and friends. Nothing here
/// allocates except [`new`](HeadroomBuf::new) and an
/// [`extend_from_slice`](HeadroomBuf::extend_from_slice) past the capacity.
///
/// ```
/// use msgloop::HeadroomBuf;
///
/// // Sending: payload first, then the headers, innermost first.
/// let mut out = HeadroomBuf::new(16, 1200);
/// out.extend_from_slice(b"payload");
/// out.prepend(&[0xAA, 0xBB])?; // an inner header
/// out.prepend(&[1])?;          // an outer one
/// assert_eq!(&out[..], &[1, 0xAA, 0xBB, b'p', b'a', b'y', b'l', b'o', b'a', b'd']);
///
/// // Receiving: read into it, then strip the headers one layer at a time.
/// let mut inp = HeadroomBuf::new(0, 1500);
/// inp.recv_with(|buf| { buf[..4].copy_from_slice(&[1, 0xAA, 0xBB, b'x']); Ok(4) })?;
/// assert_eq!(inp.strip(1), Some(&[1][..]));
/// assert_eq!(inp.strip(2), Some(&[0xAA, 0xBB][..]));
/// assert_eq!(&inp[..], b"x");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct HeadroomBuf {
    /// `buf[start..]` are the bytes; `buf[..start]` is the headroom.
    buf: Vec<u8>,
    start: usize,
}

/// A header did not fit the headroom left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoHeadroom {
    /// The header's length.
    pub needed: usize,
    /// The headroom there was.
    pub headroom: usize,
}

impl fmt::Display for NoHeadroom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a {} B header does not fit the {} B of headroom",
            self.needed, self.headroom
        )
    }
}

impl std::error::Error for NoHeadroom {}

impl HeadroomBuf {
    /// An empty buffer with `headroom` bytes in front and room for
    /// `capacity` bytes after them.
    pub fn new(headroom: usize, capacity: usize) -> HeadroomBuf {
        let mut buf = Vec::with_capacity(headroom + capacity);
        buf.resize(headroom, 0);
        HeadroomBuf {
            buf,
            start: headroom,
        }
    }

    /// The room in front of the bytes.
    pub fn headroom(&self) -> usize {
        self.start
    }

    /// Room after the bytes, before the buffer must grow.
    pub fn tailroom(&self) -> usize {
        self.buf.capacity() - self.buf.len()
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..]
    }

    /// Appends `data` after the bytes (grows the buffer if the tailroom is
    /// too small).
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Puts `header` in front of the bytes, in the headroom: nothing moves.
    pub fn prepend(&mut self, header: &[u8]) -> Result<(), NoHeadroom> {
        self.prepend_with(header.len())?.copy_from_slice(header);
        Ok(())
    }

    /// Takes `n` bytes of headroom in front of the bytes and returns them to
    /// be written (a header serialized in place).
    pub fn prepend_with(&mut self, n: usize) -> Result<&mut [u8], NoHeadroom> {
        if n > self.start {
            return Err(NoHeadroom {
                needed: n,
                headroom: self.start,
            });
        }
        self.start -= n;
        Ok(&mut self.buf[self.start..self.start + n])
    }

    /// Removes the first `n` bytes — a header just parsed — by moving the
    /// start (they become headroom); returns them, or `None` (and removes
    /// nothing) if there are fewer.
    pub fn strip(&mut self, n: usize) -> Option<&[u8]> {
        if n > self.len() {
            return None;
        }
        let at = self.start;
        self.start += n;
        Some(&self.buf[at..at + n])
    }

    /// Keeps the first `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        self.buf.truncate(self.start + len);
    }

    /// Empties the buffer, with `headroom` in front again (within what it
    /// holds: no allocation).
    pub fn clear(&mut self, headroom: usize) {
        let headroom = headroom.min(self.buf.capacity());
        self.buf.truncate(headroom);
        self.buf.resize(headroom, 0);
        self.start = headroom;
    }

    /// Receives into the buffer: `recv` gets the tailroom (after the bytes
    /// already there) and returns how many bytes it wrote, which become
    /// part of the bytes. Nothing is allocated: the tailroom is what the
    /// buffer was made with.
    pub fn recv_with(
        &mut self,
        recv: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let len = self.buf.len();
        let room = self.buf.capacity() - len;
        self.buf.resize(len + room, 0);
        let n = match recv(&mut self.buf[len..]) {
            Ok(n) => n.min(room),
            Err(e) => {
                self.buf.truncate(len);
                return Err(e);
            }
        };
        self.buf.truncate(len + n);
        Ok(n)
    }
}

impl Deref for HeadroomBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl DerefMut for HeadroomBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl AsRef<[u8]> for HeadroomBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl fmt::Debug for HeadroomBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeadroomBuf")
            .field("headroom", &self.start)
            .field("len", &self.len())
            .field("tailroom", &self.tailroom())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_go_in_front_without_moving_the_payload() {
        let mut b = HeadroomBuf::new(4, 8);
        b.extend_from_slice(b"data");
        let payload_at = b.as_slice().as_ptr();
        b.prepend(b"hd").unwrap();
        assert_eq!(&b[..], b"hddata");
        // The payload did not move.
        assert_eq!(unsafe_free_offset(&b, payload_at), 2);
        assert_eq!(
            b.prepend(b"xyz"),
            Err(NoHeadroom {
                needed: 3,
                headroom: 2
            })
        );
        assert_eq!(&b[..], b"hddata", "a refused header changes nothing");
        b.prepend_with(2).unwrap().copy_from_slice(b"HH");
        assert_eq!((&b[..], b.headroom()), (&b"HHhddata"[..], 0));
    }

    /// Where `p` lies in `b`'s bytes (by address arithmetic on integers).
    fn unsafe_free_offset(b: &HeadroomBuf, p: *const u8) -> usize {
        p as usize - b.as_slice().as_ptr() as usize
    }

    #[test]
    fn strip_moves_the_start_and_clear_restores_headroom() {
        let mut b = HeadroomBuf::new(0, 16);
        assert_eq!(
            b.recv_with(|buf| {
                buf[..5].copy_from_slice(b"hello");
                Ok(5)
            })
            .unwrap(),
            5
        );
        assert_eq!(b.strip(2), Some(&b"he"[..]));
        assert_eq!(b.strip(9), None);
        assert_eq!((&b[..], b.headroom()), (&b"llo"[..], 2));
        b.clear(8);
        assert_eq!((b.len(), b.headroom()), (0, 8));
        assert!(b
            .recv_with(|_| Err(io::Error::from(io::ErrorKind::WouldBlock)))
            .is_err());
        assert!(b.is_empty());
    }
}

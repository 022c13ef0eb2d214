//! Truncation-free receiving of datagrams and other messages.
//!
//! A datagram socket hands out whole messages. Receive one into a buffer
//! that is too small and the kernel silently cuts it. This module makes that
//! impossible to miss, at the cost of at most one extra system call:
//!
//! - [`TruncatingRecvMsg`] receives (or peeks) one message into a buffer and
//!   reports whether it was cut;
//! - [`TruncatingRecvMsgWithFullSize`] also reports the full size (Linux,
//!   `MSG_TRUNC`);
//! - [`RecvMsg`] never cuts: the [`MsgBuf`] grows to fit the message, within
//!   an optional quota. A message over the quota is consumed and reported as
//!   [`RecvResult::QuotaExceeded`] — never left at the head of the queue,
//!   where it would wedge the socket.
//!
//! They are implemented for std's and mio's `UdpSocket` and `UnixDatagram`
//! (and for msgloop's seqpacket socket), and work outside the reactor.
//!
//! # Cost
//!
//! With a buffer at least as large as the limit — the quota, or 65,535 bytes
//! for UDP — `recv_msg` is one receive system call (`recvfrom` on Linux, which
//! reports the full length with `MSG_TRUNC` like `recvmsg` at a lower kernel
//! cost; `recvmsg` elsewhere). Otherwise it first asks the size of
//! the next message with a zero-length `MSG_PEEK|MSG_TRUNC` (nothing is
//! copied), then reads the message into a buffer grown to fit, or discards it
//! when it is over quota: two system calls, never more.
//!
//! ```
//! use msgloop::{MsgBuf, RecvMsg, RecvResult};
//! use std::net::UdpSocket;
//!
//! let a = UdpSocket::bind("127.0.0.1:0")?;
//! let b = UdpSocket::bind("127.0.0.1:0")?;
//! a.send_to(&[7u8; 3000], b.local_addr()?)?;
//! a.send_to(b"", b.local_addr()?)?;
//!
//! let mut small = [0u8; 16];
//! let mut buf = MsgBuf::from(&mut small[..]);
//! match b.recv_msg(&mut buf)? {
//!     RecvResult::Spilled(from) => assert_eq!(from, a.local_addr()?),
//!     other => panic!("expected a spill, got {other:?}"),
//! }
//! assert_eq!(buf.filled().len(), 3000); // grown to fit: nothing was cut
//!
//! // A zero-length datagram is a message, delivered empty.
//! assert!(matches!(b.recv_msg(&mut buf)?, RecvResult::Fit(_)));
//! assert!(buf.filled().is_empty());
//! # Ok::<(), std::io::Error>(())
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use crate::addr::UnixAddr;
use crate::sys;

/// The largest UDP payload (the IPv4/IPv6 length field's limit less the
/// 8-byte UDP header rounds to this bound): a 65,535-byte buffer always fits.
pub const MAX_UDP_PAYLOAD: usize = 65_535;

/// A receive buffer: a borrowed slice or an owned `Vec<u8>`, with an
/// optional size quota.
///
/// It starts borrowed (from a stack array, or a buffer you reuse) and
/// becomes owned only when a message does not fit, so the common case
/// allocates nothing. The quota bounds how far it may grow.
///
/// ```
/// use msgloop::MsgBuf;
/// let mut storage = [0u8; 512];
/// let buf = MsgBuf::from(&mut storage[..]).with_quota(Some(64 * 1024));
/// assert_eq!(buf.capacity(), 512);
/// assert!(!buf.is_owned());
/// assert!(buf.filled().is_empty());
/// ```
pub struct MsgBuf<'a> {
    store: Store<'a>,
    len: usize,
    quota: Option<usize>,
}

enum Store<'a> {
    Borrowed(&'a mut [u8]),
    /// Always fully initialised: `vec.len()` is the capacity we use.
    Owned(Vec<u8>),
}

impl<'a> MsgBuf<'a> {
    /// A buffer over a borrowed slice; it becomes owned if it must grow.
    pub fn borrowed(slice: &'a mut [u8]) -> MsgBuf<'a> {
        MsgBuf {
            store: Store::Borrowed(slice),
            len: 0,
            quota: None,
        }
    }

    /// A buffer that owns `vec`'s allocation (all of its capacity is used).
    pub fn owned(mut vec: Vec<u8>) -> MsgBuf<'static> {
        let cap = vec.capacity();
        vec.resize(cap, 0);
        MsgBuf {
            store: Store::Owned(vec),
            len: 0,
            quota: None,
        }
    }

    /// An owned buffer of `capacity` zeroed bytes.
    pub fn with_capacity(capacity: usize) -> MsgBuf<'static> {
        MsgBuf::owned(vec![0; capacity])
    }

    /// Sets the quota: the largest message this buffer may grow to hold.
    /// `None` means no limit beyond the socket kind's own.
    #[must_use]
    pub fn with_quota(mut self, quota: Option<usize>) -> MsgBuf<'a> {
        self.quota = quota;
        self
    }

    /// Changes the quota.
    pub fn set_quota(&mut self, quota: Option<usize>) {
        self.quota = quota;
    }

    /// The quota, if any.
    pub fn quota(&self) -> Option<usize> {
        self.quota
    }

    /// How many bytes a message may have without the buffer growing.
    pub fn capacity(&self) -> usize {
        match &self.store {
            Store::Borrowed(s) => s.len(),
            Store::Owned(v) => v.len(),
        }
    }

    /// `true` once the buffer owns its memory (it started owned, or grew).
    pub fn is_owned(&self) -> bool {
        matches!(self.store, Store::Owned(_))
    }

    /// The message last received (empty before the first receive).
    pub fn filled(&self) -> &[u8] {
        &self.storage()[..self.len]
    }

    /// The message last received, mutably.
    pub fn filled_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut self.storage_mut()[..len]
    }

    /// The length of the message last received.
    pub fn len(&self) -> usize {
        self.len
    }

    /// `true` when no bytes are held (no message yet, or an empty one).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets the message held; capacity and ownership are kept.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Makes room for a message of `size` bytes, growing into an owned
    /// buffer if needed. The message held is kept.
    ///
    /// Fails, changing nothing, when `size` is over the quota.
    pub fn reserve_total(&mut self, size: usize) -> Result<(), QuotaExceeded> {
        if let Some(quota) = self.quota {
            if size > quota {
                return Err(QuotaExceeded { size, quota });
            }
        }
        if size <= self.capacity() {
            return Ok(());
        }
        // `vec![0; n]` asks the allocator for zeroed memory, which for large
        // sizes is fresh pages: nothing is touched until the kernel writes.
        let mut grown = vec![0u8; size];
        grown[..self.len].copy_from_slice(self.filled());
        self.store = Store::Owned(grown);
        Ok(())
    }

    /// The message as an owned `Vec<u8>` (copied if the buffer is borrowed).
    pub fn into_vec(self) -> Vec<u8> {
        match self.store {
            Store::Borrowed(s) => s[..self.len].to_vec(),
            Store::Owned(mut v) => {
                v.truncate(self.len);
                v
            }
        }
    }

    fn storage(&self) -> &[u8] {
        match &self.store {
            Store::Borrowed(s) => s,
            Store::Owned(v) => v,
        }
    }

    /// The whole capacity, for a receive call to write into.
    pub(crate) fn storage_mut(&mut self) -> &mut [u8] {
        match &mut self.store {
            Store::Borrowed(s) => s,
            Store::Owned(v) => v,
        }
    }

    /// Records that the first `len` bytes hold a message.
    pub(crate) fn set_len(&mut self, len: usize) {
        debug_assert!(len <= self.capacity());
        self.len = len.min(self.capacity());
    }
}

impl<'a> From<&'a mut [u8]> for MsgBuf<'a> {
    fn from(slice: &'a mut [u8]) -> MsgBuf<'a> {
        MsgBuf::borrowed(slice)
    }
}

impl From<Vec<u8>> for MsgBuf<'static> {
    fn from(vec: Vec<u8>) -> MsgBuf<'static> {
        MsgBuf::owned(vec)
    }
}

impl fmt::Debug for MsgBuf<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MsgBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .field("owned", &self.is_owned())
            .field("quota", &self.quota)
            .finish()
    }
}

/// A message was larger than the buffer's quota. It was consumed (removed
/// from the socket's queue) and not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaExceeded {
    /// The message's full size. Exact on Linux; elsewhere a lower bound.
    pub size: usize,
    /// The quota in force.
    pub quota: usize,
}

impl fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "message of {} bytes exceeds the quota of {} bytes (it was discarded)",
            self.size, self.quota
        )
    }
}

impl StdError for QuotaExceeded {}

impl From<QuotaExceeded> for io::Error {
    fn from(e: QuotaExceeded) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// The outcome of [`RecvMsg::recv_msg`]. `A` is the sender's address type
/// (`SocketAddr` for UDP, [`UnixAddr`] for Unix datagrams, `()` for
/// connection-oriented sockets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecvResult<A> {
    /// The message fit the buffer as it was.
    Fit(A),
    /// The message did not fit: the buffer grew (and now owns its memory).
    Spilled(A),
    /// The message was over the quota: consumed, not delivered.
    QuotaExceeded(QuotaExceeded, A),
    /// The peer closed the stream (connection-oriented sockets only; a
    /// datagram socket never reports it — an empty datagram is [`Fit`](RecvResult::Fit)).
    EndOfStream,
}

impl<A> RecvResult<A> {
    /// The sender, when a message (delivered or discarded) was read.
    pub fn addr(&self) -> Option<&A> {
        match self {
            RecvResult::Fit(a) | RecvResult::Spilled(a) | RecvResult::QuotaExceeded(_, a) => {
                Some(a)
            }
            RecvResult::EndOfStream => None,
        }
    }

    /// `true` when the buffer now holds a complete message.
    pub fn is_message(&self) -> bool {
        matches!(self, RecvResult::Fit(_) | RecvResult::Spilled(_))
    }
}

/// The outcome of [`TruncatingRecvMsg::recv_trunc`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TruncResult<A> {
    /// The whole message is in the buffer.
    Fit(A),
    /// The buffer holds only the start of the message; with `peek == false`
    /// the rest is gone.
    Truncated(A),
    /// The peer closed the stream (connection-oriented sockets only).
    EndOfStream,
}

/// The outcome of [`TruncatingRecvMsgWithFullSize::recv_trunc_with_full_size`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FullSizeResult<A> {
    /// The whole message is in the buffer.
    Fit(A),
    /// The buffer holds the first `capacity` bytes of a message of
    /// `full_size` bytes.
    Truncated {
        /// The sender.
        addr: A,
        /// The message's size before it was cut.
        full_size: usize,
    },
    /// The peer closed the stream (connection-oriented sockets only).
    EndOfStream,
}

/// Receives one message into a fixed buffer, reporting truncation.
pub trait TruncatingRecvMsg {
    /// The sender's address type.
    type Addr;

    /// Receives one message — or with `peek`, copies it leaving it queued —
    /// into `buf` without growing it. One system call. `buf.filled()` is the
    /// (possibly cut) message afterwards.
    fn recv_trunc(&self, peek: bool, buf: &mut MsgBuf<'_>) -> io::Result<TruncResult<Self::Addr>>;
}

/// Like [`TruncatingRecvMsg`], also reporting the full size of a cut
/// message (Linux: `MSG_TRUNC` makes the kernel return it).
#[cfg(target_os = "linux")]
pub trait TruncatingRecvMsgWithFullSize: TruncatingRecvMsg {
    /// As [`recv_trunc`](TruncatingRecvMsg::recv_trunc), with the full size.
    fn recv_trunc_with_full_size(
        &self,
        peek: bool,
        buf: &mut MsgBuf<'_>,
    ) -> io::Result<FullSizeResult<Self::Addr>>;
}

/// Receives whole messages: never truncates (see the [crate docs](crate#what-you-get)
/// and `RecvResult`).
pub trait RecvMsg {
    /// The sender's address type.
    type Addr;

    /// Receives one message into `buf`, growing it within its quota.
    ///
    /// A message over the quota is consumed and reported as
    /// [`RecvResult::QuotaExceeded`]; the next call reads the next message.
    /// An empty queue gives `Err` of kind `WouldBlock` on a non-blocking
    /// socket.
    fn recv_msg(&self, buf: &mut MsgBuf<'_>) -> io::Result<RecvResult<Self::Addr>>;
}

/// One receive into `buf`'s capacity; `(bytes stored, full size if known, truncated)`.
pub(crate) fn recv_trunc_fd(
    fd: RawFd,
    peek: bool,
    buf: &mut MsgBuf<'_>,
    addr: &mut sys::RawAddr,
) -> io::Result<(usize, usize, bool)> {
    let flags = sys::MSG_TRUNC | if peek { sys::MSG_PEEK } else { 0 };
    let cap = buf.capacity();
    let r = sys::recv_from(fd, buf.storage_mut(), flags, addr)?;
    let stored = r.ret.min(cap);
    let truncated = r.ret > cap || r.msg_flags & sys::MSG_TRUNC_OUT != 0;
    buf.set_len(stored);
    Ok((stored, r.ret, truncated))
}

/// The `RecvMsg` algorithm over a raw datagram fd; `kind_max` is the largest
/// message the socket kind can carry, when it has one.
pub(crate) fn recv_msg_fd(
    fd: RawFd,
    kind_max: Option<usize>,
    buf: &mut MsgBuf<'_>,
    addr: &mut sys::RawAddr,
) -> io::Result<RecvResult<()>> {
    let cap = buf.capacity();
    let limit = match (buf.quota, kind_max) {
        (Some(q), Some(k)) => Some(q.min(k)),
        (q, k) => q.or(k),
    };
    if limit.is_some_and(|l| cap >= l) {
        // Nothing that may be delivered can be cut: one system call. What
        // is over the quota (cut or not) is consumed and reported.
        let (stored, full, truncated) = recv_trunc_fd(fd, false, buf, addr)?;
        let size = if truncated {
            full.max(stored + 1)
        } else {
            stored
        };
        match buf.quota {
            Some(quota) if size > quota => {}
            _ if !truncated => return Ok(RecvResult::Fit(())),
            _ => {}
        }
        buf.set_len(0);
        let quota = buf.quota.unwrap_or(cap);
        return Ok(RecvResult::QuotaExceeded(QuotaExceeded { size, quota }, ()));
    }
    if cfg!(target_os = "linux") {
        recv_msg_sized(fd, buf, addr)
    } else {
        recv_msg_doubling(fd, buf, addr)
    }
}

/// Linux: a zero-length `MSG_PEEK|MSG_TRUNC` tells the size, then one read.
fn recv_msg_sized(
    fd: RawFd,
    buf: &mut MsgBuf<'_>,
    addr: &mut sys::RawAddr,
) -> io::Result<RecvResult<()>> {
    let size = sys::recv_from(fd, &mut [], sys::MSG_PEEK | sys::MSG_TRUNC, addr)?.ret;
    let spilled = size > buf.capacity();
    buf.set_len(0);
    if let Err(e) = buf.reserve_total(size) {
        sys::recv_from(fd, &mut [], 0, addr)?; // consume it: never wedge
        return Ok(RecvResult::QuotaExceeded(e, ()));
    }
    let (_, full, truncated) = recv_trunc_fd(fd, false, buf, addr)?;
    if truncated {
        // Only another reader of the same socket can change the head of the
        // queue between our two calls. Say so rather than deliver a cut message.
        buf.set_len(0);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "message changed between peek ({size} B) and read ({full} B): concurrent reader?"
            ),
        ));
    }
    Ok(if spilled {
        RecvResult::Spilled(())
    } else {
        RecvResult::Fit(())
    })
}

/// Elsewhere: peek into a doubling buffer until the message fits.
fn recv_msg_doubling(
    fd: RawFd,
    buf: &mut MsgBuf<'_>,
    addr: &mut sys::RawAddr,
) -> io::Result<RecvResult<()>> {
    let start_cap = buf.capacity();
    loop {
        let cap = buf.capacity();
        let (_, _, truncated) = recv_trunc_fd(fd, true, buf, addr)?;
        if !truncated {
            break;
        }
        let want = cap.saturating_mul(2).max(1024);
        let want = buf.quota.map_or(want, |q| want.min(q));
        if want <= cap {
            sys::recv_from(fd, &mut [], 0, addr)?;
            buf.set_len(0);
            let quota = buf.quota.unwrap_or(cap);
            return Ok(RecvResult::QuotaExceeded(
                QuotaExceeded {
                    size: cap + 1,
                    quota,
                },
                (),
            ));
        }
        buf.set_len(0);
        buf.reserve_total(want).map_err(io::Error::from)?;
    }
    recv_trunc_fd(fd, false, buf, addr)?;
    Ok(if buf.capacity() > start_cap {
        RecvResult::Spilled(())
    } else {
        RecvResult::Fit(())
    })
}

fn map_result<A>(r: RecvResult<()>, addr: A) -> RecvResult<A> {
    match r {
        RecvResult::Fit(()) => RecvResult::Fit(addr),
        RecvResult::Spilled(()) => RecvResult::Spilled(addr),
        RecvResult::QuotaExceeded(e, ()) => RecvResult::QuotaExceeded(e, addr),
        RecvResult::EndOfStream => RecvResult::EndOfStream,
    }
}

macro_rules! impl_recv_traits {
    ($ty:ty, $addr:ty, $kind_max:expr, $conv:expr) => {
        impl TruncatingRecvMsg for $ty {
            type Addr = $addr;
            fn recv_trunc(
                &self,
                peek: bool,
                buf: &mut MsgBuf<'_>,
            ) -> io::Result<TruncResult<$addr>> {
                let mut raw = sys::RawAddr::new();
                let (_, _, truncated) = recv_trunc_fd(self.as_raw_fd(), peek, buf, &mut raw)?;
                let addr = $conv(&raw)?;
                Ok(if truncated {
                    TruncResult::Truncated(addr)
                } else {
                    TruncResult::Fit(addr)
                })
            }
        }

        #[cfg(target_os = "linux")]
        impl TruncatingRecvMsgWithFullSize for $ty {
            fn recv_trunc_with_full_size(
                &self,
                peek: bool,
                buf: &mut MsgBuf<'_>,
            ) -> io::Result<FullSizeResult<$addr>> {
                let mut raw = sys::RawAddr::new();
                let (_, full, truncated) = recv_trunc_fd(self.as_raw_fd(), peek, buf, &mut raw)?;
                let addr = $conv(&raw)?;
                Ok(if truncated {
                    FullSizeResult::Truncated {
                        addr,
                        full_size: full,
                    }
                } else {
                    FullSizeResult::Fit(addr)
                })
            }
        }

        impl RecvMsg for $ty {
            type Addr = $addr;
            fn recv_msg(&self, buf: &mut MsgBuf<'_>) -> io::Result<RecvResult<$addr>> {
                let mut raw = sys::RawAddr::new();
                let r = recv_msg_fd(self.as_raw_fd(), $kind_max, buf, &mut raw)?;
                Ok(map_result(r, $conv(&raw)?))
            }
        }
    };
}

fn conv_inet(raw: &sys::RawAddr) -> io::Result<std::net::SocketAddr> {
    raw.to_inet().ok_or_else(crate::addr::not_inet)
}

fn conv_unix(raw: &sys::RawAddr) -> io::Result<UnixAddr> {
    Ok(UnixAddr::from_received(raw.to_sock_addr()))
}

impl_recv_traits!(
    std::net::UdpSocket,
    std::net::SocketAddr,
    Some(MAX_UDP_PAYLOAD),
    conv_inet
);
impl_recv_traits!(
    mio::net::UdpSocket,
    std::net::SocketAddr,
    Some(MAX_UDP_PAYLOAD),
    conv_inet
);
impl_recv_traits!(std::os::unix::net::UnixDatagram, UnixAddr, None, conv_unix);
impl_recv_traits!(mio::net::UnixDatagram, UnixAddr, None, conv_unix);

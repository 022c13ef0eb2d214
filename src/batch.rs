//! Batched datagram I/O (Linux): many datagrams per system call with
//! `sendmmsg` / `recvmmsg`, on any datagram socket (std, mio or socket2).
//!
//! ```
//! use msgloop::batch;
//! use std::net::UdpSocket;
//!
//! let a = UdpSocket::bind("127.0.0.1:0")?;
//! let b = UdpSocket::bind("127.0.0.1:0")?;
//! let to = msgloop::socket2::SockAddr::from(b.local_addr()?);
//! let sent = batch::send_batch(&a, &[b"one", b"two", b""], Some(&to))?;
//! assert_eq!(sent, 3);
//!
//! let mut storage = [[0u8; 64]; 3];
//! let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|b| &mut b[..]).collect();
//! let mut meta = vec![batch::RecvMeta::default(); 3];
//! let mut got = 0;
//! while got < 3 {
//!     got += batch::recv_batch(&b, &mut bufs[got..], &mut meta[got..])?;
//! }
//! assert_eq!(&bufs[1][..meta[1].len], b"two");
//! assert_eq!(meta[2].len, 0);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use socket2::SockAddr;

use crate::sys;

/// The most datagrams one call moves; longer slices are cut to this.
pub const MAX_BATCH: usize = sys::mmsg::MAX_BATCH;

/// Sends each payload as one datagram, to `to` (or the connected peer when
/// `None`), with one `sendmmsg`. Returns how many were sent: a prefix of
/// `payloads`, at most [`MAX_BATCH`].
pub fn send_batch<S: AsFd>(
    socket: &S,
    payloads: &[&[u8]],
    to: Option<&SockAddr>,
) -> io::Result<usize> {
    let n = payloads.len().min(MAX_BATCH);
    let dest = to.map(sys::RawDest::Sock);
    let mut items = [sys::Outgoing::datagram(&[], None); MAX_BATCH];
    for (item, p) in items.iter_mut().zip(&payloads[..n]) {
        *item = sys::Outgoing::datagram(p, dest.as_ref());
    }
    sys::mmsg::send_batch(socket.as_fd().as_raw_fd(), &items[..n])
}

/// What [`recv_batch`] reports for one datagram.
#[derive(Debug, Clone)]
pub struct RecvMeta {
    /// Bytes stored in the buffer.
    pub len: usize,
    /// The datagram was longer than its buffer and was cut.
    pub truncated: bool,
    /// The sender.
    pub addr: SockAddr,
}

impl Default for RecvMeta {
    fn default() -> RecvMeta {
        RecvMeta {
            len: 0,
            truncated: false,
            addr: sys::empty_sockaddr(),
        }
    }
}

/// Receives up to `min(bufs.len(), meta.len(), MAX_BATCH)` datagrams with
/// one non-blocking `recvmmsg`. Returns how many arrived; an empty queue is
/// `Err` of kind `WouldBlock`. Size your buffers for the largest datagram
/// (65,535 bytes for UDP): this call reports truncation but cannot undo it.
pub fn recv_batch<S: AsFd>(
    socket: &S,
    bufs: &mut [&mut [u8]],
    meta: &mut [RecvMeta],
) -> io::Result<usize> {
    let n = bufs.len().min(meta.len()).min(MAX_BATCH);
    let mut raw = [const { std::mem::MaybeUninit::uninit() }; MAX_BATCH];
    let got = sys::mmsg::recv_batch(socket.as_fd().as_raw_fd(), &mut bufs[..n], &mut raw, false)?;
    for (m, r) in meta.iter_mut().zip(got) {
        m.len = r.len;
        m.truncated = r.truncated;
        m.addr = r.addr.to_sock_addr();
    }
    Ok(got.len())
}

//! `sendmmsg` / `recvmmsg` (Linux): many datagrams per system call.

use std::io;
use std::mem;
use std::os::fd::RawFd;

use std::mem::MaybeUninit;

use super::{RawAddr, RawDest};

/// The most datagrams one call moves; larger batches are cut to this.
pub(crate) const MAX_BATCH: usize = 64;

/// One `msghdr` over one iovec (everything else zero: no address, no
/// control data).
pub(super) fn header(iov: *mut libc::iovec) -> libc::mmsghdr {
    // SAFETY: `mmsghdr` is a plain C struct; all-zero is a valid value (and
    // keeps any private padding zero).
    let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
    h.msg_hdr.msg_iov = iov;
    h.msg_hdr.msg_iovlen = 1;
    h
}

/// Sends up to [`MAX_BATCH`] datagrams with one `sendmmsg`. Each datagram
/// goes to its own address, or to the connected peer when it has none.
/// Returns how many the kernel took (a prefix of `msgs`).
///
/// Only the `msgs.len()` headers in use are written: a call costs what it
/// sends, not [`MAX_BATCH`].
pub(crate) fn send_batch(fd: RawFd, msgs: &[(&[u8], Option<&RawDest<'_>>)]) -> io::Result<usize> {
    let n = msgs.len().min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    let mut iovs = [const { MaybeUninit::<libc::iovec>::uninit() }; MAX_BATCH];
    let mut hdrs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; MAX_BATCH];
    for (i, (buf, addr)) in msgs[..n].iter().enumerate() {
        let iov = iovs[i].write(libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        });
        let h = hdrs[i].write(header(iov));
        if let Some(a) = addr {
            let (name, len) = a.as_ptr_len();
            h.msg_hdr.msg_name = name as *mut libc::c_void;
            h.msg_hdr.msg_namelen = len;
        }
    }
    // SAFETY: the first `n` headers are initialised (above) and point at
    // iovecs over live, borrowed payloads and at live addresses; the kernel
    // only reads them, and reads no header past `n`.
    let sent = syscall!(sendmmsg(
        fd,
        hdrs.as_mut_ptr().cast::<libc::mmsghdr>(),
        n as libc::c_uint,
        super::SEND_FLAGS
    ))?;
    Ok(sent as usize)
}

/// What [`recv_batch`] reports for one datagram.
pub(crate) struct BatchMeta {
    /// Bytes stored in the buffer.
    pub(crate) len: usize,
    /// The datagram did not fit its buffer and was cut.
    pub(crate) truncated: bool,
    /// The sender, as the kernel wrote it.
    pub(crate) addr: RawAddr,
}

impl BatchMeta {
    pub(crate) const fn new() -> BatchMeta {
        BatchMeta {
            len: 0,
            truncated: false,
            addr: RawAddr::new(),
        }
    }
}

/// Receives up to `min(bufs.len(), meta.len(), MAX_BATCH)` datagrams with
/// one non-blocking `recvmmsg`; returns what arrived (at least one, or an
/// error such as `WouldBlock`), as the initialised prefix of `meta`. The
/// kernel writes each sender's address straight into its `meta` entry;
/// nothing is zeroed or copied beforehand.
pub(crate) fn recv_batch<'m>(
    fd: RawFd,
    bufs: &mut [&mut [u8]],
    meta: &'m mut [MaybeUninit<BatchMeta>],
) -> io::Result<&'m [BatchMeta]> {
    let n = bufs.len().min(meta.len()).min(MAX_BATCH);
    if n == 0 {
        return Ok(&[]);
    }
    let mut iovs = [const { MaybeUninit::<libc::iovec>::uninit() }; MAX_BATCH];
    let mut hdrs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; MAX_BATCH];
    for i in 0..n {
        let iov = iovs[i].write(libc::iovec {
            iov_base: bufs[i].as_mut_ptr().cast(),
            iov_len: bufs[i].len(),
        });
        let h = hdrs[i].write(header(iov));
        let m = meta[i].write(BatchMeta::new());
        let (name, namelen) = m.addr.as_out();
        h.msg_hdr.msg_name = name;
        h.msg_hdr.msg_namelen = namelen;
    }
    // SAFETY: the first `n` headers are initialised (above) and point at
    // iovecs over distinct, mutably borrowed buffers and at address storage
    // of the declared size in distinct, mutably borrowed `meta` entries; all
    // outlive the call, and the kernel touches no header past `n`. A null
    // timeout with MSG_DONTWAIT never blocks.
    let got = syscall!(recvmmsg(
        fd,
        hdrs.as_mut_ptr().cast::<libc::mmsghdr>(),
        n as libc::c_uint,
        libc::MSG_DONTWAIT,
        std::ptr::null_mut()
    ))? as usize;
    let got = got.min(n);
    for i in 0..got {
        // SAFETY: header `i < n` and meta entry `i` were initialised above
        // (the kernel only wrote lengths, flags and the address bytes).
        let (h, m) = unsafe { (hdrs[i].assume_init_ref(), meta[i].assume_init_mut()) };
        m.len = (h.msg_len as usize).min(bufs[i].len());
        m.truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        m.addr.set_len(h.msg_hdr.msg_namelen);
    }
    // SAFETY: the first `got <= n` entries of `meta` are initialised (above);
    // `MaybeUninit<T>` has the layout of `T`; the view borrows `meta`.
    Ok(unsafe { std::slice::from_raw_parts(meta.as_ptr().cast::<BatchMeta>(), got) })
}

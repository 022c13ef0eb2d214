//! `sendmmsg` / `recvmmsg` (Linux): many datagrams per system call.

use std::io;
use std::mem;
use std::os::fd::RawFd;

use socket2::{SockAddr, SockAddrStorage};

/// The most datagrams one call moves; larger batches are cut to this.
pub(crate) const MAX_BATCH: usize = 64;

/// Sends up to [`MAX_BATCH`] datagrams with one `sendmmsg`. Each datagram
/// goes to its own address, or to the connected peer when it has none.
/// Returns how many the kernel took (a prefix of `msgs`).
pub(crate) fn send_batch(fd: RawFd, msgs: &[(&[u8], Option<&SockAddr>)]) -> io::Result<usize> {
    let n = msgs.len().min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: iovec and mmsghdr are plain C structs; all-zero is valid.
    let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { mem::zeroed() };
    for (i, (buf, addr)) in msgs[..n].iter().enumerate() {
        iovs[i] = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
        if let Some(a) = addr {
            hdrs[i].msg_hdr.msg_name = a.as_ptr() as *mut libc::c_void;
            hdrs[i].msg_hdr.msg_namelen = a.len();
        }
    }
    // SAFETY: the first `n` headers point at iovecs over live, borrowed
    // payloads and at live addresses; the kernel only reads them.
    let sent = syscall!(sendmmsg(
        fd,
        hdrs.as_mut_ptr(),
        n as libc::c_uint,
        super::SEND_FLAGS
    ))?;
    Ok(sent as usize)
}

/// What [`recv_batch`] reports for one datagram.
#[derive(Debug, Clone)]
pub(crate) struct BatchMeta {
    /// Bytes stored in the buffer.
    pub(crate) len: usize,
    /// The datagram did not fit its buffer and was cut.
    pub(crate) truncated: bool,
    /// The sender.
    pub(crate) addr: SockAddr,
}

/// Receives up to `min(bufs.len(), meta.len(), MAX_BATCH)` datagrams with
/// one non-blocking `recvmmsg`; returns how many arrived (at least one, or an
/// error such as `WouldBlock`).
pub(crate) fn recv_batch(
    fd: RawFd,
    bufs: &mut [&mut [u8]],
    meta: &mut [BatchMeta],
) -> io::Result<usize> {
    let n = bufs.len().min(meta.len()).min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: plain C structs; all-zero is valid.
    let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut names: [libc::sockaddr_storage; MAX_BATCH] = unsafe { mem::zeroed() };
    for i in 0..n {
        iovs[i] = libc::iovec {
            iov_base: bufs[i].as_mut_ptr().cast(),
            iov_len: bufs[i].len(),
        };
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
        hdrs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
        hdrs[i].msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    }
    // SAFETY: the first `n` headers point at iovecs over distinct, mutably
    // borrowed buffers and at address storage of the declared size; all
    // outlive the call. A null timeout with MSG_DONTWAIT never blocks.
    let got = syscall!(recvmmsg(
        fd,
        hdrs.as_mut_ptr(),
        n as libc::c_uint,
        libc::MSG_DONTWAIT,
        std::ptr::null_mut()
    ))? as usize;
    for i in 0..got {
        let h = &hdrs[i];
        let mut storage = SockAddrStorage::zeroed();
        // SAFETY: `sockaddr_storage` is one of the platform's sockaddr types
        // and fits the storage (socket2 asserts it).
        unsafe { *storage.view_as::<libc::sockaddr_storage>() = names[i] };
        // SAFETY: the kernel initialised `msg_namelen` bytes of the address.
        let addr = unsafe { SockAddr::new(storage, h.msg_hdr.msg_namelen) };
        meta[i] = BatchMeta {
            len: (h.msg_len as usize).min(bufs[i].len()),
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            addr,
        };
    }
    Ok(got)
}

//! Every `unsafe` block and every raw `libc` call of the crate lives here.
//!
//! The rest of the crate calls the small safe functions below. Each one maps
//! a libc return code to `io::Result` through [`syscall!`], which also retries
//! `EINTR` — nowhere else in the crate needs to think about it.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::os::fd::RawFd;

use socket2::{SockAddr, SockAddrStorage};

/// Calls a libc function, turning `-1` into the thread's `errno` and
/// retrying `EINTR`.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        loop {
            // SAFETY: each call site documents why its arguments are valid.
            let res = unsafe { libc::$fn($($arg),*) };
            if res == -1 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                break Err(err);
            }
            break Ok(res);
        }
    }};
}

#[cfg(target_os = "linux")]
pub(crate) mod mmsg;

/// What one `recvmsg` call reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recvd {
    /// The return value of `recvmsg`: bytes copied, or — with `MSG_TRUNC`
    /// on Linux — the full length of the message.
    pub(crate) ret: usize,
    /// `msg_flags` as set by the kernel (`MSG_TRUNC`, `MSG_CTRUNC`, ...).
    pub(crate) msg_flags: libc::c_int,
}

/// `recvmsg(fd, [buf], flags)` with the sender's address written to `addr`.
///
/// `buf` may be empty (a zero-length peek reports the size with `MSG_TRUNC`).
pub(crate) fn recv_from(
    fd: RawFd,
    buf: &mut [u8],
    flags: libc::c_int,
    addr: &mut SockAddr,
) -> io::Result<Recvd> {
    // SAFETY: `try_init` hands us zeroed storage of `size_of::<SockAddrStorage>()`
    // bytes and a pointer to its length; `recvmsg_into` lets the kernel write
    // at most that many bytes and stores the real length back, which
    // `try_init` then records as the address length.
    let (res, new_addr) =
        unsafe { SockAddr::try_init(|storage, len| recvmsg_into(fd, buf, flags, storage, len)) }?;
    *addr = new_addr;
    Ok(res)
}

/// One `recvmsg` with a single iovec over `buf` and the address written to
/// `storage` (`*len` bytes of room, updated to the address length).
fn recvmsg_into(
    fd: RawFd,
    buf: &mut [u8],
    flags: libc::c_int,
    storage: *mut SockAddrStorage,
    len: *mut libc::socklen_t,
) -> io::Result<Recvd> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `msghdr` is a plain C struct; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = storage.cast();
    // SAFETY: `len` comes from `SockAddr::try_init` and points at a live socklen_t.
    msg.msg_namelen = unsafe { *len };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: `msg` points at `iov` (valid for `buf.len()` bytes of `buf`,
    // which we borrow mutably) and at `msg_namelen` bytes of address storage;
    // both outlive the call.
    let n = syscall!(recvmsg(fd, &mut msg, flags))?;
    // SAFETY: as above, `len` is valid for writes.
    unsafe { *len = msg.msg_namelen };
    Ok(Recvd {
        ret: n as usize,
        msg_flags: msg.msg_flags,
    })
}

/// Flags used for every datagram send: never raise `SIGPIPE`.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) const SEND_FLAGS: libc::c_int = 0;

/// `MSG_TRUNC` as an input flag makes Linux return a datagram's full length.
#[cfg(target_os = "linux")]
pub(crate) const MSG_TRUNC: libc::c_int = libc::MSG_TRUNC;
#[cfg(not(target_os = "linux"))]
pub(crate) const MSG_TRUNC: libc::c_int = 0;

/// The `MSG_TRUNC` bit of `msg_flags`: the message was cut.
pub(crate) const MSG_TRUNC_OUT: libc::c_int = libc::MSG_TRUNC;

/// `MSG_PEEK`.
pub(crate) const MSG_PEEK: libc::c_int = libc::MSG_PEEK;

/// An empty `SockAddr`, to be filled by [`recv_from`].
pub(crate) fn empty_sockaddr() -> SockAddr {
    // SAFETY: zeroed storage is a valid (AF_UNSPEC) address and length 0
    // claims no initialised bytes.
    unsafe { SockAddr::new(SockAddrStorage::zeroed(), 0) }
}

/// Forces a socket buffer size past `net.core.{r,w}mem_max`
/// (`SO_RCVBUFFORCE` / `SO_SNDBUFFORCE`, needs `CAP_NET_ADMIN`).
#[cfg(target_os = "linux")]
pub(crate) fn set_buffer_force(fd: RawFd, recv: bool, size: usize) -> io::Result<()> {
    let opt = if recv {
        libc::SO_RCVBUFFORCE
    } else {
        libc::SO_SNDBUFFORCE
    };
    let val: libc::c_int = size.min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: `val` is a live c_int and we pass its exact size.
    syscall!(setsockopt(
        fd,
        libc::SOL_SOCKET,
        opt,
        (&val as *const libc::c_int).cast(),
        mem::size_of::<libc::c_int>() as libc::socklen_t,
    ))?;
    Ok(())
}

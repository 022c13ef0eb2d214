//! Unix-domain socket calls for `SOCK_SEQPACKET` (Linux): creation,
//! `bind` / `listen` / `accept4` / `connect`, addresses, `SO_PEERCRED`,
//! `SO_PASSCRED` and the other socket options the seqpacket types need.
//!
//! Every new descriptor becomes an `OwnedFd` on the line that creates it.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use socket2::SockAddr;

use super::cmsg::Cred;
use super::RawAddr;

/// Flags every socket we create or accept gets.
const NEW_FLAGS: libc::c_int = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;

/// A new non-blocking, close-on-exec `AF_UNIX` socket of type `ty`.
fn unix_socket(ty: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments.
    let fd = syscall!(socket(libc::AF_UNIX, ty | NEW_FLAGS, 0))?;
    // SAFETY: `socket` succeeded: `fd` is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A new non-blocking, close-on-exec `AF_UNIX` `SOCK_SEQPACKET` socket.
pub(crate) fn socket() -> io::Result<OwnedFd> {
    unix_socket(libc::SOCK_SEQPACKET)
}

/// A connected pair of non-blocking, close-on-exec seqpacket sockets.
pub(crate) fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds: [RawFd; 2] = [-1, -1];
    let ty = libc::SOCK_SEQPACKET | NEW_FLAGS;
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    syscall!(socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()))?;
    // SAFETY: on success both entries are new descriptors nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `bind(fd, addr)`.
pub(crate) fn bind(fd: RawFd, addr: &SockAddr) -> io::Result<()> {
    // SAFETY: `addr` points at `addr.len()` initialised bytes.
    syscall!(bind(fd, addr.as_ptr().cast(), addr.len()))?;
    Ok(())
}

/// `listen(fd, backlog)`.
pub(crate) fn listen(fd: RawFd, backlog: libc::c_int) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    syscall!(listen(fd, backlog))?;
    Ok(())
}

/// `connect(fd, addr)`. On a non-blocking Unix socket this completes at
/// once or fails; `EAGAIN` means the listener's backlog is full and the
/// socket is still unconnected.
pub(crate) fn connect(fd: RawFd, addr: &SockAddr) -> io::Result<()> {
    // SAFETY: `addr` points at `addr.len()` initialised bytes.
    syscall!(connect(fd, addr.as_ptr().cast(), addr.len()))?;
    Ok(())
}

/// `true` when nothing is bound to the socket file at `addr` any more (a
/// leftover of a process that exited): a probe `connect` is refused.
///
/// The probe is a datagram socket, so a live seqpacket or stream listener
/// sees nothing (the kernel answers `EPROTOTYPE` before queueing a
/// connection), and a live datagram socket sees only a connect.
pub(crate) fn is_stale(addr: &SockAddr) -> io::Result<bool> {
    let probe = unix_socket(libc::SOCK_DGRAM)?;
    match connect(probe.as_raw_fd(), addr) {
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => Ok(false),
        Ok(()) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `accept4(fd, SOCK_NONBLOCK | SOCK_CLOEXEC)`: the new socket and its
/// peer's address.
pub(crate) fn accept(fd: RawFd) -> io::Result<(OwnedFd, RawAddr)> {
    let mut addr = RawAddr::new();
    addr.len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let ptr = addr.storage.as_mut_ptr().cast();
    // SAFETY: `ptr` has `addr.len` bytes of room; the kernel stores the
    // real length back.
    let raw = syscall!(accept4(fd, ptr, &mut addr.len, NEW_FLAGS))?;
    // SAFETY: `accept4` succeeded: `raw` is a new descriptor nothing else owns.
    let new = unsafe { OwnedFd::from_raw_fd(raw) };
    Ok((new, addr))
}

/// `getsockname` (`peer == false`) or `getpeername` (`peer == true`).
pub(crate) fn addr(fd: RawFd, peer: bool) -> io::Result<RawAddr> {
    let mut addr = RawAddr::new();
    addr.len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let ptr = addr.storage.as_mut_ptr().cast();
    if peer {
        // SAFETY: `ptr` has `addr.len` bytes of room; the kernel stores the
        // real length back.
        syscall!(getpeername(fd, ptr, &mut addr.len))?;
    } else {
        // SAFETY: as above.
        syscall!(getsockname(fd, ptr, &mut addr.len))?;
    }
    Ok(addr)
}

/// `SO_PEERCRED`: the peer's credentials at `connect` / `socketpair` time.
pub(crate) fn peer_cred(fd: RawFd) -> io::Result<Cred> {
    // SAFETY: `ucred` is plain integers; all-zero is valid.
    let mut cred: libc::ucred = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` has `len` bytes of room.
    syscall!(getsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_PEERCRED,
        (&mut cred as *mut libc::ucred).cast(),
        &mut len
    ))?;
    Ok(Cred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

fn set_int(fd: RawFd, level: libc::c_int, opt: libc::c_int, val: libc::c_int) -> io::Result<()> {
    // SAFETY: `val` is a live c_int and we pass its exact size.
    syscall!(setsockopt(
        fd,
        level,
        opt,
        (&val as *const libc::c_int).cast(),
        mem::size_of::<libc::c_int>() as libc::socklen_t
    ))?;
    Ok(())
}

/// `SO_PASSCRED`: every message received carries `SCM_CREDENTIALS`.
pub(crate) fn set_passcred(fd: RawFd, on: bool) -> io::Result<()> {
    set_int(
        fd,
        libc::SOL_SOCKET,
        libc::SO_PASSCRED,
        libc::c_int::from(on),
    )
}

/// `FIONBIO`.
pub(crate) fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    let mut v = libc::c_int::from(on);
    // SAFETY: FIONBIO reads one c_int through the pointer.
    syscall!(ioctl(fd, libc::FIONBIO, &mut v))?;
    Ok(())
}

/// `SO_ERROR`: the pending error, cleared.
pub(crate) fn take_error(fd: RawFd) -> io::Result<Option<io::Error>> {
    let mut v: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` has `len` bytes of room.
    syscall!(getsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_ERROR,
        (&mut v as *mut libc::c_int).cast(),
        &mut len
    ))?;
    Ok((v != 0).then(|| io::Error::from_raw_os_error(v)))
}

/// `shutdown(fd, how)`.
pub(crate) fn shutdown(fd: RawFd, how: std::net::Shutdown) -> io::Result<()> {
    let how = match how {
        std::net::Shutdown::Read => libc::SHUT_RD,
        std::net::Shutdown::Write => libc::SHUT_WR,
        std::net::Shutdown::Both => libc::SHUT_RDWR,
    };
    // SAFETY: plain integer arguments.
    syscall!(shutdown(fd, how))?;
    Ok(())
}

/// The calling process's credentials (`getpid`, `getuid`, `getgid`).
pub(crate) fn own_cred() -> Cred {
    // SAFETY: these calls cannot fail and take no arguments.
    unsafe {
        Cred {
            pid: libc::getpid(),
            uid: libc::getuid(),
            gid: libc::getgid(),
        }
    }
}

//! The credential calls the seqpacket types need that socket2 does not
//! offer (Linux).
//!
//! Everything else a `UnixSeqpacket` does — creating sockets and pairs,
//! `bind`, `listen`, `accept4`, `connect`, addresses, `SO_PASSCRED`,
//! non-blocking mode, `SO_ERROR`, `shutdown` — goes through
//! `socket2::Socket` (`src/net/seqpacket.rs`). What stays here:
//!
//! - [`peer_cred`]: socket2 0.6 has no getter for `SO_PEERCRED` (a
//!   `struct ucred`, not an `int`), and its generic `getsockopt` is private.
//! - [`own_cred`]: std exposes the process id but not `getuid` / `getgid`.

use std::io;
use std::mem;
use std::os::fd::RawFd;

use super::cmsg::Cred;

/// `SO_PEERCRED`: the peer's credentials at `connect` / `socketpair` time.
///
/// Here because socket2 0.6 has no `SO_PEERCRED` getter and keeps its
/// generic `getsockopt` private; the option is a `struct ucred`.
pub(crate) fn peer_cred(fd: RawFd) -> io::Result<Cred> {
    // SAFETY: `ucred` is plain integers; all-zero is valid.
    let mut cred: libc::ucred = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` has `len` bytes of room, and `len` is live for the
    // kernel to store the length it wrote.
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

/// The calling process's credentials (`getpid`, `getuid`, `getgid`).
///
/// Here because std has `std::process::id` but no `getuid` / `getgid`, and
/// socket2 has nothing of the kind.
pub(crate) fn own_cred() -> Cred {
    // SAFETY: these calls take no arguments and cannot fail.
    unsafe {
        Cred {
            pid: libc::getpid(),
            uid: libc::getuid(),
            gid: libc::getgid(),
        }
    }
}

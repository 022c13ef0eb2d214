//! Every `unsafe` block and every raw `libc` call of the crate lives here.
//!
//! The rest of the crate calls the small safe functions below. Each one maps
//! a libc return code to `io::Result` through [`syscall!`], which also retries
//! `EINTR` — nowhere else in the crate needs to think about it.
#![allow(unsafe_code)]

use std::io::{self, IoSlice};
use std::mem::{self, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
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

/// Runs `f` again while it fails with `EINTR`: what [`syscall!`] does,
/// for calls made through socket2 (which hands `EINTR` to its caller).
/// Only calls that can block need it: `connect`, `accept`.
#[cfg(target_os = "linux")]
pub(crate) fn retry_eintr<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(target_os = "linux")]
pub(crate) mod cmsg;
#[cfg(target_os = "linux")]
pub(crate) mod mmsg;
#[cfg(target_os = "linux")]
pub(crate) mod seqpacket;

/// What one receive call reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recvd {
    /// The return value: bytes copied, or — with `MSG_TRUNC` on Linux —
    /// the full length of the message.
    pub(crate) ret: usize,
    /// `msg_flags` as set by the kernel (`MSG_TRUNC`, `MSG_CTRUNC`, ...).
    pub(crate) msg_flags: libc::c_int,
}

/// A sender address as the kernel wrote it: filled in place by
/// [`recv_from`], converted only when asked (no zeroing, no 132-byte moves
/// on the hot path).
pub(crate) struct RawAddr {
    storage: MaybeUninit<libc::sockaddr_storage>,
    /// Bytes of `storage` the kernel initialised (0: none, e.g. an
    /// unnamed Unix sender).
    len: libc::socklen_t,
}

impl RawAddr {
    pub(crate) const fn new() -> RawAddr {
        RawAddr {
            storage: MaybeUninit::uninit(),
            len: 0,
        }
    }

    /// Where the kernel may write an address: pointer and room. Follow the
    /// call with [`set_len`](RawAddr::set_len) with what it reported.
    pub(crate) fn as_out(&mut self) -> (*mut libc::c_void, libc::socklen_t) {
        self.len = 0;
        (
            self.storage.as_mut_ptr().cast(),
            mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        )
    }

    /// Records how many bytes of the storage the kernel wrote (clamped to
    /// the storage: a longer length means the address was cut).
    pub(crate) fn set_len(&mut self, len: libc::socklen_t) {
        self.len = len.min(mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t);
    }

    fn family(&self) -> Option<libc::sa_family_t> {
        if (self.len as usize) < mem::size_of::<libc::sa_family_t>() {
            return None;
        }
        // SAFETY: the kernel initialised at least the family field (checked
        // above); `ss_family` is the first field of every sockaddr.
        Some(unsafe { (*self.storage.as_ptr()).ss_family })
    }

    /// The address as an IP socket address, if it is one.
    pub(crate) fn to_inet(&self) -> Option<SocketAddr> {
        let p = self.storage.as_ptr();
        match self.family()? as libc::c_int {
            libc::AF_INET if self.len as usize >= mem::size_of::<libc::sockaddr_in>() => {
                // SAFETY: family and length say a sockaddr_in was written.
                let a = unsafe { &*(p as *const libc::sockaddr_in) };
                let ip = Ipv4Addr::from(a.sin_addr.s_addr.to_ne_bytes());
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 if self.len as usize >= mem::size_of::<libc::sockaddr_in6>() => {
                // SAFETY: family and length say a sockaddr_in6 was written.
                let a = unsafe { &*(p as *const libc::sockaddr_in6) };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    /// The address as a socket2 `SockAddr` (any family; length 0 for an
    /// unnamed sender).
    pub(crate) fn to_sock_addr(&self) -> SockAddr {
        let mut storage = SockAddrStorage::zeroed();
        let n = (self.len as usize).min(mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: `n` bytes of `self.storage` were initialised by the
        // kernel; the destination is a distinct, large enough storage.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.storage.as_ptr().cast::<u8>(),
                (&mut storage as *mut SockAddrStorage).cast::<u8>(),
                n,
            );
        }
        // SAFETY: the first `n` bytes are initialised (copied above; the
        // rest is zeroed).
        unsafe { SockAddr::new(storage, n as libc::socklen_t) }
    }
}

/// Receives one message into `buf`, the sender's address into `addr`.
///
/// On Linux this is `recvfrom`: with `MSG_TRUNC` it returns the full length
/// just as `recvmsg` does, and the kernel's `recvfrom` path skips copying
/// and checking a user `msghdr` — measurably cheaper per datagram. A
/// truncated message shows as a return value larger than `buf`.
#[cfg(target_os = "linux")]
pub(crate) fn recv_from(
    fd: RawFd,
    buf: &mut [u8],
    flags: libc::c_int,
    addr: &mut RawAddr,
) -> io::Result<Recvd> {
    addr.len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `buf` is valid for `buf.len()` writable bytes; `addr.storage`
    // has `addr.len` bytes of room and the kernel stores the real length
    // back into `addr.len`.
    let res = syscall!(recvfrom(
        fd,
        buf.as_mut_ptr().cast(),
        buf.len(),
        flags,
        addr.storage.as_mut_ptr().cast(),
        &mut addr.len
    ));
    match res {
        Ok(n) => Ok(Recvd {
            ret: n as usize,
            msg_flags: if n as usize > buf.len() {
                libc::MSG_TRUNC
            } else {
                0
            },
        }),
        Err(e) => {
            addr.len = 0;
            Err(e)
        }
    }
}

/// Receives one message into `buf` with `recvmsg`, the sender's address
/// into `addr`.
#[cfg(not(target_os = "linux"))]
pub(crate) fn recv_from(
    fd: RawFd,
    buf: &mut [u8],
    flags: libc::c_int,
    addr: &mut RawAddr,
) -> io::Result<Recvd> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `msghdr` is a plain C struct; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = addr.storage.as_mut_ptr().cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: `msg` points at `iov` (valid for `buf.len()` bytes of `buf`,
    // which we borrow mutably) and at `msg_namelen` bytes of address
    // storage; both outlive the call.
    match syscall!(recvmsg(fd, &mut msg, flags)) {
        Ok(n) => {
            addr.len = msg.msg_namelen;
            Ok(Recvd {
                ret: n as usize,
                msg_flags: msg.msg_flags,
            })
        }
        Err(e) => {
            addr.len = 0;
            Err(e)
        }
    }
}

/// A destination address in the form `sendto` takes.
pub(crate) enum RawDest<'a> {
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
    Sock(&'a SockAddr),
}

impl RawDest<'_> {
    pub(crate) fn inet(addr: &SocketAddr) -> RawDest<'static> {
        match addr {
            SocketAddr::V4(a) => {
                // SAFETY: plain C struct; all-zero is valid (sin_zero must be 0).
                let mut sin: libc::sockaddr_in = unsafe { mem::zeroed() };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                RawDest::V4(sin)
            }
            SocketAddr::V6(a) => {
                // SAFETY: plain C struct; all-zero is valid.
                let mut sin6: libc::sockaddr_in6 = unsafe { mem::zeroed() };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_flowinfo = a.flowinfo();
                sin6.sin6_addr.s6_addr = a.ip().octets();
                sin6.sin6_scope_id = a.scope_id();
                RawDest::V6(sin6)
            }
        }
    }

    pub(crate) fn as_ptr_len(&self) -> (*const libc::sockaddr, libc::socklen_t) {
        match self {
            RawDest::V4(a) => (
                (a as *const libc::sockaddr_in).cast(),
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ),
            RawDest::V6(a) => (
                (a as *const libc::sockaddr_in6).cast(),
                mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            ),
            RawDest::Sock(a) => (a.as_ptr().cast(), a.len()),
        }
    }
}

/// `sendto(fd, buf, flags | SEND_FLAGS, dest)`.
pub(crate) fn send_to(fd: RawFd, buf: &[u8], dest: &RawDest<'_>) -> io::Result<usize> {
    let (ptr, len) = dest.as_ptr_len();
    // SAFETY: `buf` is valid for `buf.len()` bytes; `ptr` points at a live
    // address of `len` bytes borrowed from `dest`.
    let n = syscall!(sendto(
        fd,
        buf.as_ptr().cast(),
        buf.len(),
        SEND_FLAGS,
        ptr,
        len
    ))?;
    Ok(n as usize)
}

/// `send`/`sendto` of one buffer, or `sendmsg` for several (no control
/// data): one datagram whose bytes are the concatenation of `bufs`, to
/// `dest` or to the connected peer.
pub(crate) fn send_vectored(
    fd: RawFd,
    bufs: &[IoSlice<'_>],
    dest: Option<&RawDest<'_>>,
    flags: libc::c_int,
) -> io::Result<usize> {
    if let [buf] = bufs {
        let (ptr, len) = match dest {
            Some(d) => d.as_ptr_len(),
            None => (std::ptr::null(), 0),
        };
        // SAFETY: `buf` is valid for `buf.len()` bytes; `ptr`/`len` name a
        // live address borrowed from `dest`, or are null/0.
        let n = syscall!(sendto(fd, buf.as_ptr().cast(), buf.len(), flags, ptr, len))?;
        return Ok(n as usize);
    }
    // SAFETY: `msghdr` is a plain C struct; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    // `IoSlice` is ABI-compatible with `iovec` on Unix; the kernel only reads.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len() as _;
    if let Some(d) = dest {
        let (ptr, len) = d.as_ptr_len();
        msg.msg_name = ptr as *mut libc::c_void;
        msg.msg_namelen = len;
    }
    // SAFETY: `msg` points at live iovecs and (optionally) a live address.
    let n = syscall!(sendmsg(fd, &msg, flags))?;
    Ok(n as usize)
}

/// One entry of a batch send (`mmsg::send_batch`): a datagram, or a train
/// of them.
#[derive(Clone, Copy)]
pub(crate) struct Outgoing<'a> {
    pub(crate) buf: &'a [u8],
    /// `None`: to the connected peer.
    pub(crate) dest: Option<&'a RawDest<'a>>,
    /// Non-zero: `buf` is a train of datagrams of this size (the last one
    /// possibly shorter), sent as one kernel packet with UDP segmentation
    /// offload (`UDP_SEGMENT`) and cut into datagrams by the kernel or the
    /// device. The kernel refuses a train (`EIO`, `EMSGSIZE`, `EINVAL`)
    /// where the device cannot offload or a datagram would exceed the
    /// route's MTU.
    pub(crate) segment: u16,
}

impl<'a> Outgoing<'a> {
    pub(crate) fn datagram(buf: &'a [u8], dest: Option<&'a RawDest<'a>>) -> Outgoing<'a> {
        Outgoing {
            buf,
            dest,
            segment: 0,
        }
    }
}

/// Sets "don't fragment" on a UDP socket's datagrams without consulting
/// the kernel's path-MTU cache (`IP_PMTUDISC_PROBE`, and the IPv6
/// counterpart on IPv6 sockets), as QUIC stacks do: a protocol that sizes
/// its own datagrams never wants IP fragments, and the kernel then skips
/// generating an IP ID per datagram. Best effort.
#[cfg(target_os = "linux")]
pub(crate) fn set_dont_fragment(fd: RawFd, ipv6: bool) -> io::Result<()> {
    let v4 = || {
        setsockopt_int(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )
    };
    if ipv6 {
        setsockopt_int(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )?;
        // IPv4-mapped traffic of a dual-stack socket; refused on v6-only ones.
        let _ = v4();
        Ok(())
    } else {
        v4()
    }
}

/// Turns on UDP receive offload (`UDP_GRO`): the kernel may hand over a
/// train of datagrams from one sender as one buffer, with their size in a
/// `UDP_GRO` control message (see [`mmsg::recv_batch`]). Refused by kernels
/// before 5.0.
#[cfg(target_os = "linux")]
pub(crate) fn set_udp_gro(fd: RawFd) -> io::Result<()> {
    setsockopt_int(fd, libc::SOL_UDP, libc::UDP_GRO, 1)
}

/// Asks for each datagram's traffic class (its ECN bits): `IP_RECVTOS`,
/// and `IPV6_RECVTCLASS` on an IPv6 socket (which may carry IPv4 too).
#[cfg(target_os = "linux")]
pub(crate) fn set_recv_tos(fd: RawFd, ipv6: bool) -> io::Result<()> {
    set_ip_flag(fd, ipv6, libc::IPV6_RECVTCLASS, libc::IP_RECVTOS)
}

/// Sets the IPv4 flag `v4` on an IPv4 socket; on an IPv6 socket, the IPv6
/// flag `v6` and — for the IPv4 datagrams of a dual-stack socket — `v4`
/// if the socket takes it (not every IPv6 socket does).
#[cfg(target_os = "linux")]
fn set_ip_flag(fd: RawFd, ipv6: bool, v6: libc::c_int, v4: libc::c_int) -> io::Result<()> {
    if ipv6 {
        setsockopt_int(fd, libc::SOL_IPV6, v6, 1)?;
        let _ = setsockopt_int(fd, libc::SOL_IP, v4, 1);
        Ok(())
    } else {
        setsockopt_int(fd, libc::SOL_IP, v4, 1)
    }
}

/// Asks for each datagram's destination address: `IP_PKTINFO`, and
/// `IPV6_RECVPKTINFO` on an IPv6 socket.
#[cfg(target_os = "linux")]
pub(crate) fn set_recv_pktinfo(fd: RawFd, ipv6: bool) -> io::Result<()> {
    set_ip_flag(fd, ipv6, libc::IPV6_RECVPKTINFO, libc::IP_PKTINFO)
}

/// Whether the kernel accepts UDP segmentation offload (`UDP_SEGMENT`,
/// Linux 4.18+) on this socket: `getsockopt` knows the option.
#[cfg(target_os = "linux")]
pub(crate) fn udp_gso_supported(fd: RawFd) -> bool {
    let mut val: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `val` and `len` are live and `len` holds `val`'s exact size;
    // the kernel writes at most that many bytes.
    syscall!(getsockopt(
        fd,
        libc::SOL_UDP,
        libc::UDP_SEGMENT,
        (&mut val as *mut libc::c_int).cast(),
        &mut len,
    ))
    .is_ok()
}

/// `setsockopt(fd, level, opt, &val)` for an `int` option.
#[cfg(target_os = "linux")]
fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    val: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `val` is a live c_int and we pass its exact size.
    syscall!(setsockopt(
        fd,
        level,
        opt,
        (&val as *const libc::c_int).cast(),
        mem::size_of::<libc::c_int>() as libc::socklen_t,
    ))?;
    Ok(())
}

/// `send(fd, buf, SEND_FLAGS)` on a connected socket.
pub(crate) fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes.
    let n = syscall!(send(fd, buf.as_ptr().cast(), buf.len(), SEND_FLAGS))?;
    Ok(n as usize)
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
    let val = size.min(libc::c_int::MAX as usize) as libc::c_int;
    setsockopt_int(fd, libc::SOL_SOCKET, opt, val)
}

/// Bytes waiting to be read on a stream socket (`FIONREAD`).
pub(crate) fn readable_bytes(fd: RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: `FIONREAD` stores one `int` through the pointer, which points
    // at `n`, live for the call.
    syscall!(ioctl(fd, libc::FIONREAD, &mut n as *mut libc::c_int))?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// The process's soft limit on open descriptors (`RLIMIT_NOFILE`).
pub(crate) fn open_files_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable `rlimit` for the call.
    syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut lim))?;
    // `rlim_t` is 64 bits on Linux, not everywhere.
    #[allow(clippy::unnecessary_cast)]
    Ok(lim.rlim_cur as u64)
}

/// Blocks `signals` for the calling thread and returns a non-blocking
/// `signalfd` that reports them.
#[cfg(target_os = "linux")]
pub(crate) fn signalfd(signals: &[libc::c_int]) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let set = sigset(signals)?;
    // SAFETY: `set` is an initialised sigset_t; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: -1 asks for a new fd; `set` is valid for the call.
    let fd = syscall!(signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC));
    match fd {
        // SAFETY: signalfd returned a new fd that nothing else owns.
        Ok(fd) => Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }),
        Err(e) => {
            unblock_signals(signals);
            Err(e)
        }
    }
}

/// Unblocks `signals` for the calling thread (pending ones are delivered).
#[cfg(target_os = "linux")]
pub(crate) fn unblock_signals(signals: &[libc::c_int]) {
    if let Ok(set) = sigset(signals) {
        // SAFETY: as in `signalfd`.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    }
}

#[cfg(target_os = "linux")]
fn sigset(signals: &[libc::c_int]) -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    syscall!(sigemptyset(&mut set))?;
    for &s in signals {
        // SAFETY: as above; an invalid signal number gives EINVAL.
        syscall!(sigaddset(&mut set, s))?;
    }
    Ok(set)
}

/// Reads one pending signal from a signalfd; `Ok(None)` when none is left.
#[cfg(target_os = "linux")]
pub(crate) fn read_signal(fd: RawFd) -> io::Result<Option<libc::c_int>> {
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { mem::zeroed() };
    let size = mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: we pass a buffer of exactly `size` writable bytes.
    match syscall!(read(
        fd,
        (&mut info as *mut libc::signalfd_siginfo).cast(),
        size
    )) {
        Ok(n) if n as usize == size => Ok(Some(info.ssi_signo as libc::c_int)),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "short read from signalfd",
        )),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

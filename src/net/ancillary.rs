//! Ancillary data on Unix sockets: passing file descriptors
//! (`SCM_RIGHTS`) and credentials (`SCM_CREDENTIALS`).
//!
//! Sending takes borrowed descriptors ([`SendAncillary`]); the kernel
//! duplicates them into the receiving process. Receiving needs room for the
//! control data ([`AncillaryBuf`]); what arrived is a [`RecvAncillary`],
//! whose descriptors are [`OwnedFd`]s: take the ones you want, and the rest
//! are closed when it is dropped.
//!
//! These functions work on seqpacket sockets ([`UnixSeqpacket`]) and — in
//! the crate — on Unix datagram sockets alike.
//!
//! [`UnixSeqpacket`]: crate::UnixSeqpacket

use std::fmt;
use std::io::{self, IoSlice};
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use crate::addr::UnixAddr;
use crate::recv::{MsgBuf, QuotaExceeded, RecvResult};
use crate::sys::{self, cmsg};

/// The most file descriptors one message can carry on Linux
/// (`SCM_MAX_FD`). Sending more is refused with `InvalidInput`.
pub const SCM_MAX_FD: usize = cmsg::SCM_MAX_FD;

/// Process credentials: what `SO_PEERCRED` reports and `SCM_CREDENTIALS`
/// carries.
///
/// The ids are as seen from the receiver's namespaces; an id with no
/// mapping there reads as the overflow id (65534).
///
/// ```
/// use msgloop::{UCred, UnixSeqpacket};
/// let (a, _b) = UnixSeqpacket::pair()?;
/// // The peer of a pair is the process that created it: us.
/// assert_eq!(a.peer_cred()?, UCred::current());
/// assert_eq!(UCred::current().pid as u32, std::process::id());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UCred {
    /// Process id (0 when the kernel could not report it).
    pub pid: libc::pid_t,
    /// User id.
    pub uid: libc::uid_t,
    /// Group id.
    pub gid: libc::gid_t,
}

impl UCred {
    /// The calling process's credentials (`getpid`, `getuid`, `getgid`):
    /// what an unprivileged process may send.
    pub fn current() -> UCred {
        sys::seqpacket::own_cred().into()
    }
}

impl From<cmsg::Cred> for UCred {
    fn from(c: cmsg::Cred) -> UCred {
        UCred {
            pid: c.pid,
            uid: c.uid,
            gid: c.gid,
        }
    }
}

impl From<UCred> for cmsg::Cred {
    fn from(c: UCred) -> cmsg::Cred {
        cmsg::Cred {
            pid: c.pid,
            uid: c.uid,
            gid: c.gid,
        }
    }
}

/// Room for the control data of one received message: credentials plus up
/// to [`max_fds`](AncillaryBuf::max_fds) file descriptors.
///
/// Reuse one across receives (it is a small heap buffer: about 1 KiB for
/// the default of [`SCM_MAX_FD`] descriptors).
///
/// If a message carries more descriptors than fit, the kernel installs as
/// many as fit, closes the others and sets `MSG_CTRUNC`: the
/// [`RecvAncillary`] reports [`is_truncated`](RecvAncillary::is_truncated)
/// and still owns (and will close) every descriptor that did arrive.
///
/// ```
/// use msgloop::AncillaryBuf;
/// assert_eq!(AncillaryBuf::new().max_fds(), msgloop::SCM_MAX_FD);
/// assert_eq!(AncillaryBuf::with_max_fds(4).max_fds(), 4);
/// ```
pub struct AncillaryBuf {
    pub(crate) words: Vec<u64>,
    max_fds: usize,
}

impl AncillaryBuf {
    /// Room for credentials and [`SCM_MAX_FD`] descriptors: nothing a
    /// sender can pass is ever cut.
    pub fn new() -> AncillaryBuf {
        AncillaryBuf::with_max_fds(SCM_MAX_FD)
    }

    /// Room for credentials and up to `max_fds` descriptors (at most
    /// [`SCM_MAX_FD`]; larger values are clamped). With 0, every passed
    /// descriptor is discarded by the kernel.
    pub fn with_max_fds(max_fds: usize) -> AncillaryBuf {
        let max_fds = max_fds.min(SCM_MAX_FD);
        AncillaryBuf {
            words: vec![0; cmsg::control_words(max_fds)],
            max_fds,
        }
    }

    /// How many descriptors one message may carry without truncation.
    pub fn max_fds(&self) -> usize {
        self.max_fds
    }
}

impl Default for AncillaryBuf {
    fn default() -> AncillaryBuf {
        AncillaryBuf::new()
    }
}

impl fmt::Debug for AncillaryBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AncillaryBuf")
            .field("max_fds", &self.max_fds)
            .field("bytes", &mem::size_of_val(&self.words[..]))
            .finish()
    }
}

/// The ancillary data of one received message.
///
/// The file descriptors are yours: [`take_fds`](RecvAncillary::take_fds)
/// them (or borrow them with [`fds`](RecvAncillary::fds)); whatever is
/// still here when this value is dropped is closed. A descriptor is never
/// leaked, also not when the control data was truncated.
///
/// ```
/// use msgloop::{AncillaryBuf, MsgBuf, UnixSeqpacket};
/// use std::os::fd::AsFd;
///
/// let (a, b) = UnixSeqpacket::pair()?;
/// let (f1, f2) = (std::fs::File::open("/dev/null")?, std::fs::File::open("/dev/null")?);
/// a.send_with_fds(b"two files", &[f1.as_fd(), f2.as_fd()])?;
///
/// let mut buf = MsgBuf::with_capacity(64);
/// let (_, mut received) = b.recv_with_ancillary(&mut buf, &mut AncillaryBuf::new())?;
/// assert_eq!(received.fds().len(), 2);
/// assert!(!received.is_truncated());
/// let mut fds = received.take_fds();
/// let first: std::fs::File = fds.remove(0).into(); // keep this one
/// drop(fds); // close the other
/// # drop(first);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Default)]
pub struct RecvAncillary {
    fds: Vec<OwnedFd>,
    creds: Option<UCred>,
    truncated: bool,
}

impl RecvAncillary {
    /// The descriptors received (and not yet taken), in the order sent.
    pub fn fds(&self) -> &[OwnedFd] {
        &self.fds
    }

    /// Takes the descriptors received, leaving none here.
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        mem::take(&mut self.fds)
    }

    /// The sender's credentials, when the receiving socket has
    /// `SO_PASSCRED` set (msgloop's seqpacket sockets always do).
    pub fn credentials(&self) -> Option<UCred> {
        self.creds
    }

    /// `true` when the control data did not fit the [`AncillaryBuf`]
    /// (`MSG_CTRUNC`): the sender passed descriptors that the kernel
    /// discarded (closed). The ones that did arrive are in
    /// [`fds`](RecvAncillary::fds).
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// `true` when there are no descriptors and no credentials.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty() && self.creds.is_none()
    }

    pub(crate) fn from_received(r: &mut cmsg::Received) -> RecvAncillary {
        RecvAncillary {
            fds: mem::take(&mut r.fds),
            creds: r.creds.map(UCred::from),
            truncated: r.ctrunc || r.malformed,
        }
    }
}

impl Drop for RecvAncillary {
    /// Closes the descriptors nobody took.
    fn drop(&mut self) {
        if !self.fds.is_empty() {
            log::trace!("closing {} received fds nobody took", self.fds.len());
        }
        // Dropping the `OwnedFd`s closes them.
    }
}

impl fmt::Debug for RecvAncillary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvAncillary")
            .field("fds", &self.fds)
            .field("credentials", &self.creds)
            .field("truncated", &self.truncated)
            .finish()
    }
}

/// Ancillary data to send with a message: descriptors to pass and,
/// optionally, credentials.
///
/// ```
/// use msgloop::{SendAncillary, UCred};
/// use std::os::fd::AsFd;
///
/// let file = std::fs::File::open("/dev/null")?;
/// let fds = [file.as_fd()];
/// let anc = SendAncillary::new().with_fds(&fds).with_credentials(UCred::current());
/// assert_eq!(anc.fds().len(), 1);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SendAncillary<'a> {
    fds: &'a [BorrowedFd<'a>],
    creds: Option<UCred>,
}

impl<'a> SendAncillary<'a> {
    /// Nothing to pass.
    pub fn new() -> SendAncillary<'a> {
        SendAncillary::default()
    }

    /// Passes `fds` (at most [`SCM_MAX_FD`]). The receiver gets new
    /// descriptors for the same open files; yours stay open.
    #[must_use]
    pub fn with_fds(mut self, fds: &'a [BorrowedFd<'a>]) -> SendAncillary<'a> {
        self.fds = fds;
        self
    }

    /// Sends `creds` explicitly (`SCM_CREDENTIALS`). Without privileges
    /// only [`UCred::current`] is accepted (`EPERM` otherwise). A receiver
    /// with `SO_PASSCRED` gets the sender's credentials even when none are
    /// sent.
    #[must_use]
    pub fn with_credentials(mut self, creds: UCred) -> SendAncillary<'a> {
        self.creds = Some(creds);
        self
    }

    /// The descriptors to pass.
    pub fn fds(&self) -> &'a [BorrowedFd<'a>] {
        self.fds
    }

    /// The credentials to send, if any.
    pub fn credentials(&self) -> Option<UCred> {
        self.creds
    }
}

/// What kind of socket a receive or send is on: it decides what a 0-byte
/// read means and whether `MSG_EOR` is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MsgKind {
    /// Unix datagram: a 0-byte read is an empty datagram.
    Datagram,
    /// Unix seqpacket with `SO_PASSCRED`: a 0-byte read without
    /// credentials is end of stream.
    Seqpacket,
}

/// One `recvmsg` into `buf`'s capacity.
pub(crate) struct Once {
    /// The message's full length.
    pub(crate) full: usize,
    /// It did not fit and was cut (or, with peek, is only partly copied).
    pub(crate) truncated: bool,
    /// End of stream (seqpacket only).
    pub(crate) eof: bool,
    pub(crate) anc: RecvAncillary,
}

/// Receives (or peeks) one message into `buf` without growing it.
pub(crate) fn recv_once(
    fd: RawFd,
    kind: MsgKind,
    buf: &mut MsgBuf<'_>,
    control: &mut [u64],
    peek: bool,
    addr: Option<&mut sys::RawAddr>,
) -> io::Result<Once> {
    let cap = buf.capacity();
    let mut r = cmsg::recvmsg(fd, buf.storage_mut(), control, peek, addr)?;
    let eof = kind == MsgKind::Seqpacket && r.is_seqpacket_eof();
    let anc = RecvAncillary::from_received(&mut r);
    buf.set_len(r.len.min(cap));
    Ok(Once {
        full: r.len,
        truncated: r.truncated,
        eof,
        anc,
    })
}

/// The [`RecvMsg`](crate::RecvMsg) algorithm with ancillary data: receives
/// one whole message into `buf` (growing it within its quota) and its
/// control data into `control`.
///
/// - With a quota and a buffer at least that large: one `recvmsg`.
/// - Otherwise a zero-length `MSG_PEEK|MSG_TRUNC` without control buffer
///   learns the size (copying nothing and installing no descriptor), then
///   one `recvmsg` into a buffer grown to fit.
/// - A message over the quota is consumed and reported; its descriptors
///   are closed (the credentials are still reported).
pub(crate) fn recv_msg_control(
    fd: RawFd,
    kind: MsgKind,
    buf: &mut MsgBuf<'_>,
    control: &mut [u64],
    mut addr: Option<&mut sys::RawAddr>,
) -> io::Result<(RecvResult<()>, RecvAncillary)> {
    let cap = buf.capacity();
    if let Some(quota) = buf.quota().filter(|&q| cap >= q) {
        // Nothing that may be delivered can be cut: one system call.
        let mut once = recv_once(fd, kind, buf, control, false, addr)?;
        if once.eof {
            return Ok((RecvResult::EndOfStream, once.anc));
        }
        let size = if once.truncated {
            once.full.max(cap + 1)
        } else {
            once.full
        };
        if size <= quota {
            return Ok((RecvResult::Fit(()), once.anc));
        }
        // Over the quota (cut or not): consumed, reported, never delivered.
        buf.set_len(0);
        once.anc.fds.clear(); // discarded with the message: closed
        let e = QuotaExceeded { size, quota };
        return Ok((RecvResult::QuotaExceeded(e, ()), once.anc));
    }

    let mut scratch = sys::RawAddr::new();
    let peek_addr = match addr.as_deref_mut() {
        Some(a) => a,
        None => &mut scratch,
    };
    // No control buffer: a peek with one would install duplicates of any
    // passed descriptors. A 0 here is an empty message or end of stream;
    // the read below tells which.
    let size = sys::recv_from(fd, &mut [], sys::MSG_PEEK | sys::MSG_TRUNC, peek_addr)?.ret;
    buf.set_len(0);
    if let Err(e) = buf.reserve_total(size) {
        // Consume it (never wedge the socket) with room for credentials
        // only: the kernel closes any passed descriptors.
        let mut creds_only = [0u64; cmsg::CREDS_WORDS];
        let once = recv_once(
            fd,
            kind,
            &mut MsgBuf::borrowed(&mut []),
            &mut creds_only,
            false,
            addr,
        )?;
        return Ok((RecvResult::QuotaExceeded(e, ()), once.anc));
    }
    let once = recv_once(fd, kind, buf, control, false, addr)?;
    if once.eof {
        return Ok((RecvResult::EndOfStream, once.anc));
    }
    if once.truncated {
        // Only another reader of the same socket can change the head of the
        // queue between our two calls. Say so rather than deliver a cut
        // message (any descriptors are closed with `once.anc`).
        buf.set_len(0);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "message changed between peek ({size} B) and read ({} B): concurrent reader?",
                once.full
            ),
        ));
    }
    Ok((
        if size > cap {
            RecvResult::Spilled(())
        } else {
            RecvResult::Fit(())
        },
        once.anc,
    ))
}

/// Receives one whole message and its ancillary data from a Unix seqpacket
/// or datagram socket `fd`: the reactor's entry point.
///
/// `buf` grows within its quota ([`RecvResult::Spilled`]); a message over
/// the quota is consumed and reported ([`RecvResult::QuotaExceeded`]) with
/// its descriptors closed. With [`MsgKind::Seqpacket`], a 0-byte read
/// without credentials is [`RecvResult::EndOfStream`] (the socket must have
/// `SO_PASSCRED`, as all of ours do); with [`MsgKind::Datagram`] it is an
/// empty message. The sender's address goes to `addr` when given
/// (datagram sockets). `MSG_CMSG_CLOEXEC` is always set.
pub(crate) fn recv_with_ancillary(
    fd: RawFd,
    kind: MsgKind,
    buf: &mut MsgBuf<'_>,
    anc: &mut AncillaryBuf,
    addr: Option<&mut sys::RawAddr>,
) -> io::Result<(RecvResult<()>, RecvAncillary)> {
    recv_msg_control(fd, kind, buf, &mut anc.words, addr)
}

/// Sends one message with ancillary data on a Unix seqpacket or datagram
/// socket `fd` (`MSG_NOSIGNAL`; plus `MSG_EOR` for seqpacket), to `dest`
/// or to the connected peer. Returns the bytes sent (all of them: these
/// sockets send whole messages or fail).
pub(crate) fn send_with_ancillary(
    fd: RawFd,
    kind: MsgKind,
    bufs: &[IoSlice<'_>],
    anc: &SendAncillary<'_>,
    dest: Option<&sys::RawDest<'_>>,
) -> io::Result<usize> {
    cmsg::sendmsg(
        fd,
        bufs,
        anc.fds,
        anc.creds.map(cmsg::Cred::from),
        dest,
        kind == MsgKind::Seqpacket,
    )
}

mod sealed {
    #[allow(unreachable_pub)] // sealing: nameable only inside the crate
    pub trait Sealed {}
    impl Sealed for std::os::unix::net::UnixDatagram {}
    impl Sealed for mio::net::UnixDatagram {}
}

/// Passing file descriptors and credentials over Unix **datagram**
/// sockets (std's and mio's `UnixDatagram`).
///
/// The same rules as on [`UnixSeqpacket`](crate::UnixSeqpacket): received
/// descriptors are `OwnedFd`s, close-on-exec, closed unless taken;
/// `MSG_CTRUNC` is reported; `buf` grows within its quota. A 0-byte
/// datagram is an empty message (datagram sockets have no end of stream).
/// Credentials arrive only if the receiving socket has `SO_PASSCRED`
/// (socket2's `SockRef::from(&sock).set_passcred(true)`).
///
/// ```
/// use msgloop::{AncillaryBuf, MsgBuf, SendAncillary};
/// use msgloop::net::UnixDatagramExt;
/// use std::io::IoSlice;
/// use std::os::fd::AsFd;
/// use std::os::unix::net::UnixDatagram;
///
/// let (a, b) = UnixDatagram::pair()?;
/// let file = std::fs::File::open("/dev/null")?;
/// let fds = [file.as_fd()];
/// a.send_with_ancillary(&[IoSlice::new(b"fd")], &SendAncillary::new().with_fds(&fds))?;
///
/// let mut buf = MsgBuf::with_capacity(64);
/// let (res, mut anc) = b.recv_with_ancillary(&mut buf, &mut AncillaryBuf::new())?;
/// assert!(res.is_message());
/// assert_eq!(anc.take_fds().len(), 1);
/// # Ok::<(), std::io::Error>(())
/// ```
pub trait UnixDatagramExt: sealed::Sealed {
    /// Sends one datagram to the connected peer, with ancillary data.
    fn send_with_ancillary(
        &self,
        bufs: &[IoSlice<'_>],
        anc: &SendAncillary<'_>,
    ) -> io::Result<usize>;

    /// Sends one datagram to `to`, with ancillary data.
    fn send_to_with_ancillary(
        &self,
        bufs: &[IoSlice<'_>],
        anc: &SendAncillary<'_>,
        to: &UnixAddr,
    ) -> io::Result<usize>;

    /// Receives one whole datagram, its sender and its ancillary data.
    fn recv_with_ancillary(
        &self,
        buf: &mut MsgBuf<'_>,
        anc: &mut AncillaryBuf,
    ) -> io::Result<(RecvResult<UnixAddr>, RecvAncillary)>;
}

macro_rules! impl_dgram_ext {
    ($ty:ty) => {
        impl UnixDatagramExt for $ty {
            fn send_with_ancillary(
                &self,
                bufs: &[IoSlice<'_>],
                anc: &SendAncillary<'_>,
            ) -> io::Result<usize> {
                send_with_ancillary(self.as_raw_fd(), MsgKind::Datagram, bufs, anc, None)
            }

            fn send_to_with_ancillary(
                &self,
                bufs: &[IoSlice<'_>],
                anc: &SendAncillary<'_>,
                to: &UnixAddr,
            ) -> io::Result<usize> {
                if to.is_unnamed() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "cannot send to an unnamed Unix socket",
                    ));
                }
                let dest = sys::RawDest::Sock(to.as_sock_addr());
                send_with_ancillary(self.as_raw_fd(), MsgKind::Datagram, bufs, anc, Some(&dest))
            }

            fn recv_with_ancillary(
                &self,
                buf: &mut MsgBuf<'_>,
                anc: &mut AncillaryBuf,
            ) -> io::Result<(RecvResult<UnixAddr>, RecvAncillary)> {
                let mut raw = sys::RawAddr::new();
                let fd = self.as_raw_fd();
                let (res, got) =
                    recv_with_ancillary(fd, MsgKind::Datagram, buf, anc, Some(&mut raw))?;
                let from = UnixAddr::from_received(raw.to_sock_addr());
                let res = match res {
                    RecvResult::Fit(()) => RecvResult::Fit(from),
                    RecvResult::Spilled(()) => RecvResult::Spilled(from),
                    RecvResult::QuotaExceeded(e, ()) => RecvResult::QuotaExceeded(e, from),
                    RecvResult::EndOfStream => RecvResult::EndOfStream,
                };
                Ok((res, got))
            }
        }
    };
}

impl_dgram_ext!(std::os::unix::net::UnixDatagram);
impl_dgram_ext!(mio::net::UnixDatagram);

//! Unix `SOCK_SEQPACKET` sockets: connection-oriented, message boundaries
//! kept, with file-descriptor passing.

use std::fmt;
use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};

use mio::event::Source;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use socket2::{Domain, Socket, Type};

use super::ancillary::{self, AncillaryBuf, MsgKind, RecvAncillary, SendAncillary, UCred};
use crate::addr::{ToUnixAddr, UnixAddr};
use crate::error::{context, with_message};
use crate::recv::{
    FullSizeResult, MsgBuf, RecvMsg, RecvResult, TruncResult, TruncatingRecvMsg,
    TruncatingRecvMsgWithFullSize,
};
use crate::socket_file::{remove_stale, SocketFile};
use crate::sys::{self, cmsg, seqpacket as sp};

/// The listen backlog [`UnixSeqpacketListener::bind`] uses.
pub const DEFAULT_BACKLOG: i32 = 128;

/// `SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC`: every socket msgloop
/// creates gets the flags atomically, with the socket.
fn seqpacket_type() -> Type {
    Type::SEQPACKET.nonblocking().cloexec()
}

/// A new `AF_UNIX` seqpacket socket (non-blocking, close-on-exec) with
/// `SO_PASSCRED` set.
fn new_socket() -> io::Result<Socket> {
    let sock = Socket::new_raw(Domain::UNIX, seqpacket_type(), None)?;
    sock.set_passcred(true)?;
    Ok(sock)
}

/// A connected Unix `SOCK_SEQPACKET` socket: reliable, ordered, connection-
/// oriented, and every `send` arrives as one message of its own.
///
/// Sockets are created non-blocking and close-on-exec, with `SO_PASSCRED`
/// set. They can be used on their own, registered with a
/// [`mio::Poll`] (this type implements [`mio::event::Source`]), or handed
/// to msgloop's reactor.
///
/// ```
/// use msgloop::{MsgBuf, RecvMsg, RecvResult, UnixSeqpacket};
///
/// let (a, b) = UnixSeqpacket::pair()?;
/// a.send(b"hello")?;
/// a.send(b"")?; // an empty message is a message
/// drop(a);      // end of stream
///
/// let mut storage = [0u8; 64];
/// let mut buf = MsgBuf::from(&mut storage[..]);
/// assert!(b.recv_msg(&mut buf)?.is_message());
/// assert_eq!(buf.filled(), b"hello");
/// assert!(b.recv_msg(&mut buf)?.is_message());
/// assert!(buf.filled().is_empty());
/// assert_eq!(b.recv_msg(&mut buf)?, RecvResult::EndOfStream);
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Empty messages and end of stream
///
/// Linux reports both an empty message and the end of the stream as a
/// 0-byte read. msgloop tells them apart with `SO_PASSCRED`, which it sets
/// on every socket it creates (on listeners before `accept` — accepted
/// sockets inherit it — on connecting sockets before `connect`, and on
/// both ends of a [`pair`](UnixSeqpacket::pair)): then every real message,
/// empty or not, carries the sender's credentials (`SCM_CREDENTIALS`) and
/// end of stream carries none. Every receive here asks for the credentials,
/// so an empty message is delivered as an empty message and end of stream
/// as [`RecvResult::EndOfStream`] (or `None` from [`recv`](UnixSeqpacket::recv)).
///
/// A socket adopted with `From<OwnedFd>` gets `SO_PASSCRED` set too (best
/// effort: if that fails, an empty message reads as end of stream).
///
/// `SO_PASSCRED` also makes Linux give a connecting socket that is not
/// bound an automatic abstract name (`@` and five hex digits): that is its
/// [`local_addr`](UnixSeqpacket::local_addr) and its peer's `peer_addr`.
///
/// # Receiving without truncation
///
/// [`RecvMsg`] never cuts a message: a message larger than the buffer is
/// sized with a zero-length `MSG_PEEK|MSG_TRUNC` and read into a buffer
/// grown to fit (within the [`MsgBuf`]'s quota; a larger message is consumed
/// and reported as [`RecvResult::QuotaExceeded`]). `FIONREAD` is never used:
/// on seqpacket it reports the whole queue, not the next message.
/// Descriptors passed with a message read by `RecvMsg` are discarded (the
/// kernel closes them); use [`recv_with_ancillary`](UnixSeqpacket::recv_with_ancillary)
/// to receive them.
///
/// # With mio
///
/// Register it like any mio source. mio requires a source to be
/// **deregistered before it is closed** (dropped): do so, as with mio's own
/// types. Readiness is edge-triggered: read until `WouldBlock`.
pub struct UnixSeqpacket {
    sock: Socket,
}

impl UnixSeqpacket {
    fn from_socket(sock: Socket) -> UnixSeqpacket {
        UnixSeqpacket { sock }
    }

    fn into_socket(self) -> Socket {
        self.sock
    }

    /// Connects to the listener bound at `path`.
    ///
    /// Unix `connect` never stays in progress: it completes at once or
    /// fails. When the listener's backlog is full it fails with
    /// [`io::ErrorKind::WouldBlock`] — **backlog full, retry later**: no
    /// connection was made (to retry on the same socket, use
    /// [`new`](UnixSeqpacket::new) and [`connect_to`](UnixSeqpacket::connect_to)).
    /// Nobody listening gives `ConnectionRefused`; no file, `NotFound`.
    ///
    /// `addr` is a path or a [`UnixAddr`] (which can be an abstract name).
    pub fn connect<A: ToUnixAddr>(addr: A) -> io::Result<UnixSeqpacket> {
        let s = UnixSeqpacket::new()?;
        s.connect_to(addr)?;
        Ok(s)
    }

    /// A new socket, not connected: non-blocking, close-on-exec, with
    /// `SO_PASSCRED` set. Connect it with [`connect_to`](UnixSeqpacket::connect_to).
    pub fn new() -> io::Result<UnixSeqpacket> {
        new_socket().map(|sock| UnixSeqpacket { sock })
    }

    /// Connects this socket to `addr`.
    ///
    /// Completes at once or fails. [`io::ErrorKind::WouldBlock`] means the
    /// listener's backlog is full: the socket is **not** connected (sending
    /// fails with `NotConnected`), and calling `connect_to` again later may
    /// succeed. It is never an "in progress" connection: waiting for
    /// writability will not complete it.
    ///
    /// Errors name the address (`connect /run/app.seq: Connection refused
    /// (os error 111)`) and keep the kind of the system call's error, which
    /// is their [`source`](std::error::Error::source).
    pub fn connect_to<A: ToUnixAddr>(&self, addr: A) -> io::Result<()> {
        let addr = addr.to_unix_addr()?;
        match sys::retry_eintr(|| self.sock.connect(addr.as_sock_addr())) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let msg = format!(
                    "connect {addr}: the listener's backlog is full: \
                     the socket is NOT connected; retry later"
                );
                Err(with_message(io::ErrorKind::WouldBlock, msg, e))
            }
            Err(e) => Err(context(e, format_args!("connect {addr}"))),
        }
    }

    /// A connected pair of sockets (`socketpair`), both with `SO_PASSCRED`.
    pub fn pair() -> io::Result<(UnixSeqpacket, UnixSeqpacket)> {
        let (a, b) = Socket::pair_raw(Domain::UNIX, seqpacket_type(), None)?;
        a.set_passcred(true)?;
        b.set_passcred(true)?;
        Ok((UnixSeqpacket { sock: a }, UnixSeqpacket { sock: b }))
    }

    /// This socket's address (unnamed for an end of a pair; see the
    /// [type docs](UnixSeqpacket#empty-messages-and-end-of-stream) for
    /// connecting sockets).
    pub fn local_addr(&self) -> io::Result<UnixAddr> {
        self.sock.local_addr().map(UnixAddr::from_received)
    }

    /// The peer's address: the listener's path or abstract name for a
    /// connecting socket; the connecting socket's address for an accepted one.
    pub fn peer_addr(&self) -> io::Result<UnixAddr> {
        self.sock.peer_addr().map(UnixAddr::from_received)
    }

    /// The peer process's credentials when the connection was made
    /// (`SO_PEERCRED`): for a pair, the process that created it.
    pub fn peer_cred(&self) -> io::Result<UCred> {
        sp::peer_cred(self.sock.as_raw_fd()).map(UCred::from)
    }

    /// Shuts down reading, writing or both. After `Shutdown::Write` the
    /// peer reads end of stream once the queued messages are read.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.sock.shutdown(how)
    }

    /// Sends `buf` as one message (`MSG_NOSIGNAL|MSG_EOR`; an empty `buf`
    /// is an empty message). Returns `buf.len()`: a message is sent whole
    /// or not at all. A full peer queue gives `WouldBlock`; a message
    /// larger than the send buffer allows, `EMSGSIZE`; a closed peer,
    /// `BrokenPipe` (never `SIGPIPE`).
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.send_vectored(&[IoSlice::new(buf)])
    }

    /// Sends the concatenation of `bufs` as one message.
    pub fn send_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.send_with_ancillary(bufs, &SendAncillary::new())
    }

    /// Sends `buf` as one message passing `fds` (at most
    /// [`SCM_MAX_FD`](crate::SCM_MAX_FD)). The receiver gets its own
    /// descriptors for the same open files; `fds` stay open here.
    pub fn send_with_fds(&self, buf: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        self.send_with_ancillary(&[IoSlice::new(buf)], &SendAncillary::new().with_fds(fds))
    }

    /// Sends the concatenation of `bufs` as one message with ancillary data
    /// (descriptors, credentials).
    pub fn send_with_ancillary(
        &self,
        bufs: &[IoSlice<'_>],
        anc: &SendAncillary<'_>,
    ) -> io::Result<usize> {
        ancillary::send_with_ancillary(self.sock.as_raw_fd(), MsgKind::Seqpacket, bufs, anc, None)
    }

    /// Receives one message into `buf`: `Some(len)`, or `None` at end of
    /// stream.
    ///
    /// `len` is the message's full length: if it is larger than
    /// `buf.len()`, the message was cut to fit and the rest is lost — use
    /// [`RecvMsg::recv_msg`] to never cut. Passed descriptors are discarded.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let mut control = [0u64; cmsg::CREDS_WORDS];
        let mut buf = MsgBuf::borrowed(buf);
        let once = ancillary::recv_once(
            self.sock.as_raw_fd(),
            MsgKind::Seqpacket,
            &mut buf,
            &mut control,
            false,
            None,
        )?;
        Ok((!once.eof).then_some(once.full))
    }

    /// Receives one whole message into `buf` (grown within its quota, as
    /// [`RecvMsg::recv_msg`] does) and its ancillary data into `anc`.
    ///
    /// The returned [`RecvAncillary`] owns the descriptors that arrived and
    /// closes those you do not take; it reports the sender's credentials
    /// and whether `anc` was too small (`MSG_CTRUNC`). Descriptors are
    /// received close-on-exec. A message over the quota is consumed,
    /// reported as [`RecvResult::QuotaExceeded`], and its descriptors
    /// closed.
    ///
    /// ```
    /// use msgloop::{AncillaryBuf, MsgBuf, UnixSeqpacket};
    /// use std::os::fd::AsFd;
    ///
    /// let (a, b) = UnixSeqpacket::pair()?;
    /// let file = std::fs::File::open("/dev/null")?;
    /// a.send_with_fds(b"a file", &[file.as_fd()])?;
    ///
    /// let mut buf = MsgBuf::with_capacity(256);
    /// let mut anc = AncillaryBuf::new();
    /// let (res, mut received) = b.recv_with_ancillary(&mut buf, &mut anc)?;
    /// assert!(res.is_message());
    /// assert_eq!(buf.filled(), b"a file");
    /// let fds = received.take_fds();
    /// assert_eq!(fds.len(), 1);
    /// assert_eq!(received.credentials().unwrap().pid, std::process::id() as i32);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn recv_with_ancillary(
        &self,
        buf: &mut MsgBuf<'_>,
        anc: &mut AncillaryBuf,
    ) -> io::Result<(RecvResult<()>, RecvAncillary)> {
        ancillary::recv_with_ancillary(self.sock.as_raw_fd(), MsgKind::Seqpacket, buf, anc, None)
    }

    /// Switches non-blocking mode (on by default).
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.sock.set_nonblocking(nonblocking)
    }

    /// Takes the pending socket error (`SO_ERROR`), if any.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.sock.take_error()
    }
}

impl TruncatingRecvMsg for UnixSeqpacket {
    type Addr = ();

    fn recv_trunc(&self, peek: bool, buf: &mut MsgBuf<'_>) -> io::Result<TruncResult<()>> {
        let mut control = [0u64; cmsg::CREDS_WORDS];
        let fd = self.sock.as_raw_fd();
        let once = ancillary::recv_once(fd, MsgKind::Seqpacket, buf, &mut control, peek, None)?;
        Ok(if once.eof {
            TruncResult::EndOfStream
        } else if once.truncated {
            TruncResult::Truncated(())
        } else {
            TruncResult::Fit(())
        })
    }
}

impl TruncatingRecvMsgWithFullSize for UnixSeqpacket {
    fn recv_trunc_with_full_size(
        &self,
        peek: bool,
        buf: &mut MsgBuf<'_>,
    ) -> io::Result<FullSizeResult<()>> {
        let mut control = [0u64; cmsg::CREDS_WORDS];
        let fd = self.sock.as_raw_fd();
        let once = ancillary::recv_once(fd, MsgKind::Seqpacket, buf, &mut control, peek, None)?;
        Ok(if once.eof {
            FullSizeResult::EndOfStream
        } else if once.truncated {
            FullSizeResult::Truncated {
                addr: (),
                full_size: once.full,
            }
        } else {
            FullSizeResult::Fit(())
        })
    }
}

impl RecvMsg for UnixSeqpacket {
    type Addr = ();

    /// Receives one whole message (see the [type docs](UnixSeqpacket)); an
    /// empty message is `Fit` with an empty buffer, end of stream is
    /// [`RecvResult::EndOfStream`].
    fn recv_msg(&self, buf: &mut MsgBuf<'_>) -> io::Result<RecvResult<()>> {
        let mut control = [0u64; cmsg::CREDS_WORDS];
        let fd = self.sock.as_raw_fd();
        let (res, _discarded) =
            ancillary::recv_msg_control(fd, MsgKind::Seqpacket, buf, &mut control, None)?;
        Ok(res)
    }
}

impl fmt::Debug for UnixSeqpacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixSeqpacket")
            .field("fd", &self.sock.as_raw_fd())
            .finish()
    }
}

/// Options for [`UnixSeqpacketListener::bind_with`].
///
/// ```
/// use msgloop::BindOptions;
/// let opts = BindOptions::new().backlog(16).unlink_stale(true);
/// assert_eq!((opts.backlog, opts.unlink_stale), (16, true));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BindOptions {
    /// The `listen` backlog: how many connections may wait for `accept`
    /// (Linux lets one more than this wait). Default [`DEFAULT_BACKLOG`].
    pub backlog: i32,
    /// If the path exists, is a socket file, and nothing is bound to it any
    /// more (a probe connect is refused), remove it and bind again.
    /// Anything else at the path — a regular file, a live socket — is left
    /// alone and binding fails with `AddrInUse`. Default `false`.
    pub unlink_stale: bool,
    /// Remove the socket file when the listener is dropped, if the path
    /// still names the file it created (the rule for every socket file
    /// msgloop creates). Default `true`.
    pub unlink_on_drop: bool,
}

impl BindOptions {
    /// The defaults: [`DEFAULT_BACKLOG`], stale files kept, the file
    /// removed on drop.
    pub fn new() -> BindOptions {
        BindOptions {
            backlog: DEFAULT_BACKLOG,
            unlink_stale: false,
            unlink_on_drop: true,
        }
    }

    /// Sets [`backlog`](BindOptions::backlog).
    #[must_use]
    pub fn backlog(mut self, backlog: i32) -> BindOptions {
        self.backlog = backlog;
        self
    }

    /// Sets [`unlink_stale`](BindOptions::unlink_stale).
    #[must_use]
    pub fn unlink_stale(mut self, unlink_stale: bool) -> BindOptions {
        self.unlink_stale = unlink_stale;
        self
    }

    /// Sets [`unlink_on_drop`](BindOptions::unlink_on_drop).
    #[must_use]
    pub fn unlink_on_drop(mut self, unlink_on_drop: bool) -> BindOptions {
        self.unlink_on_drop = unlink_on_drop;
        self
    }
}

impl Default for BindOptions {
    fn default() -> BindOptions {
        BindOptions::new()
    }
}

/// A listening Unix seqpacket socket.
///
/// Created non-blocking and close-on-exec with `SO_PASSCRED` set before
/// `listen`, so every accepted [`UnixSeqpacket`] inherits it (see
/// [`UnixSeqpacket`] on empty messages and end of stream).
///
/// Binding never removes an existing file: a path that exists gives
/// `AddrInUse`, unless [`BindOptions::unlink_stale`] allows removing a
/// socket file nobody is bound to any more. Dropping the listener removes
/// the file it created (if the path still names it), unless
/// [`BindOptions::unlink_on_drop`] is off.
///
/// It implements [`mio::event::Source`]; deregister it before dropping it.
///
/// ```
/// use msgloop::{UnixSeqpacket, UnixSeqpacketListener};
///
/// let path = std::env::temp_dir().join(format!("msgloop-doc-{}.seq", std::process::id()));
/// let listener = UnixSeqpacketListener::bind(&path)?;
/// let client = UnixSeqpacket::connect(&path)?; // completes at once
/// let (server, _peer) = listener.accept()?;
/// client.send(b"ping")?;
/// let mut buf = [0u8; 16];
/// assert_eq!(server.recv(&mut buf)?, Some(4));
/// drop(listener); // removes its file
/// assert!(!path.exists());
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct UnixSeqpacketListener {
    sock: Socket,
    /// The socket file it created, removed on drop.
    _file: Option<SocketFile>,
}

impl UnixSeqpacketListener {
    fn from_socket(sock: Socket) -> UnixSeqpacketListener {
        UnixSeqpacketListener { sock, _file: None }
    }

    /// The socket, with its file kept: it outlives this value.
    fn into_socket(self) -> Socket {
        if let Some(f) = self._file {
            f.keep();
        }
        self.sock
    }

    /// Binds to `addr` — a path, or a [`UnixAddr`] (which can be an
    /// abstract name) — and listens with [`DEFAULT_BACKLOG`].
    pub fn bind<A: ToUnixAddr>(addr: A) -> io::Result<UnixSeqpacketListener> {
        UnixSeqpacketListener::bind_with(addr, &BindOptions::new())
    }

    /// Binds to `addr` with `opts` (`unlink_stale` and `unlink_on_drop`
    /// concern paths only).
    ///
    /// Errors of `bind` and `listen` name the address (`bind /run/app.seq:
    /// Address already in use (os error 98)`) and keep the kind of the
    /// system call's error, which is their
    /// [`source`](std::error::Error::source). When
    /// [`unlink_stale`](BindOptions::unlink_stale) leaves the file in
    /// place, the error is still the bind's `AddrInUse`, and says why.
    pub fn bind_with<A: ToUnixAddr>(
        addr: A,
        opts: &BindOptions,
    ) -> io::Result<UnixSeqpacketListener> {
        let addr = addr.to_unix_addr()?;
        // SO_PASSCRED is set here, before listen: accepted sockets inherit it.
        let sock = new_socket()?;
        if let Err(e) = sock.bind(addr.as_sock_addr()) {
            let stale_ok = addr.as_pathname().filter(|_| opts.unlink_stale);
            match stale_ok {
                Some(path) if e.kind() == io::ErrorKind::AddrInUse => {
                    if let Err(kept) = remove_stale(path) {
                        let msg = format!("bind {addr}: {e}; {kept}");
                        return Err(with_message(e.kind(), msg, e));
                    }
                    sock.bind(addr.as_sock_addr())
                        .map_err(|e| context(e, format_args!("bind {addr}")))?;
                }
                _ => return Err(context(e, format_args!("bind {addr}"))),
            }
        }
        let file = addr
            .as_pathname()
            .filter(|_| opts.unlink_on_drop)
            .and_then(SocketFile::capture);
        sock.listen(opts.backlog)
            .map_err(|e| context(e, format_args!("listen {addr}")))?;
        Ok(UnixSeqpacketListener { sock, _file: file })
    }

    /// Accepts a connection: the new socket (non-blocking, close-on-exec,
    /// `SO_PASSCRED` inherited) and the peer's address. `WouldBlock` when
    /// none is waiting.
    pub fn accept(&self) -> io::Result<(UnixSeqpacket, UnixAddr)> {
        // Both flags set atomically by accept4, as socket(2) does for ours.
        let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        let (sock, addr) = sys::retry_eintr(|| self.sock.accept4(flags))?;
        Ok((UnixSeqpacket { sock }, UnixAddr::from_received(addr)))
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<UnixAddr> {
        self.sock.local_addr().map(UnixAddr::from_received)
    }

    /// Switches non-blocking mode (on by default).
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.sock.set_nonblocking(nonblocking)
    }

    /// Takes the pending socket error (`SO_ERROR`), if any.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.sock.take_error()
    }
}

impl fmt::Debug for UnixSeqpacketListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixSeqpacketListener")
            .field("fd", &self.sock.as_raw_fd())
            .finish()
    }
}

macro_rules! fd_traits {
    ($ty:ident, $adopt:expr) => {
        impl AsRawFd for $ty {
            fn as_raw_fd(&self) -> RawFd {
                self.sock.as_raw_fd()
            }
        }

        impl AsFd for $ty {
            fn as_fd(&self) -> BorrowedFd<'_> {
                self.sock.as_fd()
            }
        }

        impl IntoRawFd for $ty {
            fn into_raw_fd(self) -> RawFd {
                self.into_socket().into_raw_fd()
            }
        }

        impl From<$ty> for OwnedFd {
            fn from(s: $ty) -> OwnedFd {
                s.into_socket().into()
            }
        }

        impl From<$ty> for Socket {
            fn from(s: $ty) -> Socket {
                s.into_socket()
            }
        }

        impl From<OwnedFd> for $ty {
            /// Adopts a Unix seqpacket socket (it is not checked). It is
            /// used as it is (blocking or not); `SO_PASSCRED` is set so
            /// that empty messages are told from end of stream.
            fn from(fd: OwnedFd) -> $ty {
                let sock = Socket::from(fd);
                let adopt: fn(&Socket) = $adopt;
                adopt(&sock);
                $ty::from_socket(sock)
            }
        }

        /// Delegates to [`SourceFd`]. Deregister before dropping.
        impl Source for $ty {
            fn register(
                &mut self,
                registry: &Registry,
                token: Token,
                interests: Interest,
            ) -> io::Result<()> {
                SourceFd(&self.sock.as_raw_fd()).register(registry, token, interests)
            }

            fn reregister(
                &mut self,
                registry: &Registry,
                token: Token,
                interests: Interest,
            ) -> io::Result<()> {
                SourceFd(&self.sock.as_raw_fd()).reregister(registry, token, interests)
            }

            fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
                SourceFd(&self.sock.as_raw_fd()).deregister(registry)
            }
        }
    };
}

fn adopt_passcred(sock: &Socket) {
    if let Err(e) = sock.set_passcred(true) {
        log::warn!(
            "SO_PASSCRED on adopted seqpacket fd {}: {e}; empty messages will read as end of stream",
            sock.as_raw_fd()
        );
    }
}

fd_traits!(UnixSeqpacket, adopt_passcred);
fd_traits!(UnixSeqpacketListener, adopt_passcred);

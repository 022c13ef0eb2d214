//! The [`Handler`] trait the host implements, and the ids and values its
//! callbacks receive.

use std::fmt;
use std::io;

use crate::addr::PeerAddr;
use crate::error::Error;
use crate::framing::FrameError;
use crate::reactor::Ctx;
use crate::timer::TimerKey;

/// Names one socket of a [`Reactor`](crate::Reactor).
///
/// An id carries a generation: once its socket is closed the id stays dead
/// even when a new socket reuses the slot, so a late event or command for
/// the old socket is ignored (events) or rejected with [`Error::StaleId`]
/// (commands) — never applied to the new one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId {
    pub(crate) index: u32,
    pub(crate) gen: u32,
}

impl SocketId {
    /// The slot index (unique among open sockets; reused after close).
    pub fn index(self) -> usize {
        self.index as usize
    }
}

impl fmt::Debug for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SocketId({}#{})", self.index, self.gen)
    }
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "socket {}#{}", self.index, self.gen)
    }
}

/// Names one timer set with [`Ctx::set_timer`]. Like [`SocketId`] it has a
/// generation: cancelling a timer that already fired is a no-op, even if
/// its slot was reused.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(pub(crate) TimerKey);

impl fmt::Debug for TimerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TimerId({}#{})", self.0.index, self.0.gen)
    }
}

/// The kinds of socket a reactor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SocketKind {
    /// A UDP socket (IPv4 or IPv6).
    Udp,
    /// A Unix-domain datagram socket.
    UnixDatagram,
    /// Signals watched with [`Ctx::watch_signals`] (Linux `signalfd`).
    Signals,
    /// A TCP listener ([`Ctx::listen_tcp`]).
    TcpListener,
    /// A framed TCP connection.
    Tcp,
    /// A UDP socket carrying reliable-UDP peers ([`Ctx::bind_rudp`],
    /// [`Ctx::connect_rudp`]).
    Rudp,
    /// A Unix seqpacket listener ([`Ctx::listen_seqpacket`]).
    SeqpacketListener,
    /// A Unix seqpacket connection.
    Seqpacket,
    /// A file descriptor registered with [`Ctx::add_fd`].
    Fd,
    /// A channel made with [`Ctx::channel`].
    Channel,
}

/// Names one reliable-UDP peer: the socket it talks through and the
/// connection on it. Like [`SocketId`] it carries a generation: a closed
/// peer's id stays dead.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId {
    /// The reliable-UDP socket.
    pub sock: SocketId,
    /// The connection within its endpoint.
    pub peer: crate::rudp::ConnectionHandle,
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PeerId({}#{}/{})",
            self.sock.index,
            self.sock.gen,
            self.peer.index()
        )
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer {} on {}", self.peer.index(), self.sock)
    }
}

/// Why a socket was closed; passed to [`Handler::on_close`].
#[derive(Debug)]
#[non_exhaustive]
pub enum CloseReason {
    /// The handler closed it ([`Ctx::close`]).
    Local,
    /// The peer closed the connection (end of stream). Any partial frame
    /// it left is discarded.
    EndOfStream,
    /// The peer reset the connection (`ECONNRESET`, `EPIPE`).
    Reset,
    /// The peer sent a frame the connection's format rejects — a length
    /// over `max_frame_len`, decided from the header alone — or an invalid
    /// length. Nothing of its body was buffered.
    Frame(FrameError),
    /// A frame that started arriving did not complete within
    /// `frame_idle_timeout` (slow-loris protection).
    FrameTimeout,
    /// Nothing was received or sent for the connection's `idle_timeout`.
    IdleTimeout,
    /// An I/O error the socket cannot recover from (including a failed
    /// TCP connect).
    Error(io::Error),
    /// A handler callback for this socket panicked and
    /// [`Config::catch_panics`](crate::Config::catch_panics) is on.
    HandlerPanicked,
}

impl CloseReason {
    /// The close reason for an I/O error of a connection: `Reset` for a
    /// reset or broken pipe, `Error` for anything else.
    pub(crate) fn from_io(e: io::Error) -> CloseReason {
        match e.raw_os_error() {
            Some(libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED) => CloseReason::Reset,
            _ => CloseReason::Error(e),
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Local => f.write_str("closed locally"),
            CloseReason::EndOfStream => f.write_str("closed by the peer"),
            CloseReason::Reset => f.write_str("reset by the peer"),
            CloseReason::Frame(e) => write!(f, "bad frame from the peer: {e}"),
            CloseReason::FrameTimeout => f.write_str("a frame did not complete in time"),
            CloseReason::IdleTimeout => f.write_str("idle for too long"),
            CloseReason::Error(e) => write!(f, "I/O error: {e}"),
            CloseReason::HandlerPanicked => f.write_str("a handler callback panicked"),
        }
    }
}

/// One received datagram: its bytes and its sender (and, on a Unix socket
/// with [`DgramOptions::pass_fds`](crate::DgramOptions::pass_fds), the
/// file descriptors and credentials that came with it).
///
/// The bytes are borrowed from the reactor's receive buffer for the
/// duration of the callback: receiving allocates nothing. Copy them out
/// (`to_vec`) to keep them. Descriptors you do not
/// [`take`](Datagram::take_fds) are closed when the callback returns and
/// counted in [`SocketStats::fds_closed_unclaimed`](crate::SocketStats::fds_closed_unclaimed).
pub struct Datagram<'a> {
    pub(crate) data: &'a [u8],
    pub(crate) from: &'a PeerAddr,
    #[cfg(target_os = "linux")]
    pub(crate) anc: Option<&'a mut crate::net::RecvAncillary>,
    /// The traffic class byte, if the socket reports it.
    pub(crate) tos: Option<u8>,
    /// The destination address, if the socket reports it.
    pub(crate) dst: Option<std::net::IpAddr>,
}

impl<'a> Datagram<'a> {
    /// The payload (possibly empty: a zero-length datagram is a message).
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The sender. Reply with `cx.send_to(sock, bytes, msg.from())`.
    pub fn from(&self) -> &'a PeerAddr {
        self.from
    }

    /// The payload's length.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// The datagram's ECN codepoint, on a UDP socket with
    /// [`DgramOptions::recv_ecn`](crate::DgramOptions::recv_ecn).
    pub fn ecn(&self) -> Option<crate::Ecn> {
        self.tos.map(crate::Ecn::from_tos)
    }

    /// The address the datagram was sent to — one of the host's, for a
    /// socket bound to `0.0.0.0` or `::` — on a UDP socket with
    /// [`DgramOptions::recv_dst_addr`](crate::DgramOptions::recv_dst_addr).
    /// Answer from it with [`Transmit::source`](crate::Transmit::source).
    pub fn dst_addr(&self) -> Option<std::net::IpAddr> {
        self.dst
    }

    /// `true` for a zero-length datagram.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// File descriptors passed with the datagram (`SCM_RIGHTS`), if the
    /// socket receives them.
    #[cfg(target_os = "linux")]
    pub fn fds(&self) -> &[std::os::fd::OwnedFd] {
        self.anc.as_ref().map_or(&[], |a| a.fds())
    }

    /// Takes the passed descriptors; those left are closed after the
    /// callback.
    #[cfg(target_os = "linux")]
    pub fn take_fds(&mut self) -> Vec<std::os::fd::OwnedFd> {
        self.anc.as_mut().map(|a| a.take_fds()).unwrap_or_default()
    }

    /// The sender's credentials, if they came with the datagram.
    #[cfg(target_os = "linux")]
    pub fn credentials(&self) -> Option<crate::net::UCred> {
        self.anc.as_ref().and_then(|a| a.credentials())
    }

    /// `true` if descriptors were passed but did not fit (`MSG_CTRUNC`):
    /// the kernel closed those.
    #[cfg(target_os = "linux")]
    pub fn fds_truncated(&self) -> bool {
        self.anc.as_ref().is_some_and(|a| a.is_truncated())
    }
}

/// One message received on a Unix seqpacket connection: its bytes, the
/// sender's credentials, and the file descriptors passed with it.
///
/// Descriptors you do not [`take`](SeqpacketMessage::take_fds) are closed when
/// the callback returns — also when the control data was cut
/// ([`fds_truncated`](SeqpacketMessage::fds_truncated)).
#[cfg(target_os = "linux")]
pub struct SeqpacketMessage<'a> {
    pub(crate) data: &'a [u8],
    pub(crate) anc: &'a mut crate::net::RecvAncillary,
}

#[cfg(target_os = "linux")]
impl<'a> SeqpacketMessage<'a> {
    /// The message (possibly empty: an empty message is a message).
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The sender's credentials (pid, uid, gid): every message carries
    /// them, since msgloop's seqpacket sockets set `SO_PASSCRED`.
    pub fn credentials(&self) -> Option<crate::net::UCred> {
        self.anc.credentials()
    }

    /// The descriptors passed with the message, in the order sent.
    pub fn fds(&self) -> &[std::os::fd::OwnedFd] {
        self.anc.fds()
    }

    /// Takes the passed descriptors; those left are closed after the
    /// callback.
    pub fn take_fds(&mut self) -> Vec<std::os::fd::OwnedFd> {
        self.anc.take_fds()
    }

    /// `true` if more descriptors were passed than fit (`MSG_CTRUNC`): the
    /// kernel closed the rest.
    pub fn fds_truncated(&self) -> bool {
        self.anc.is_truncated()
    }
}

#[cfg(target_os = "linux")]
impl fmt::Debug for SeqpacketMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeqpacketMessage")
            .field("len", &self.data.len())
            .field("fds", &self.anc.fds().len())
            .field("credentials", &self.anc.credentials())
            .finish()
    }
}

impl fmt::Debug for Datagram<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Datagram")
            .field("len", &self.data.len())
            .field("from", self.from)
            .finish()
    }
}

/// The host's callbacks. Every method has a default that does nothing
/// (errors are logged at `debug!`), so a UDP-only program writes one
/// method.
///
/// The host owns the value and passes it to each
/// [`run_once`](crate::Reactor::run_once) — no `Rc<RefCell<_>>` needed.
/// Callbacks get a [`Ctx`] to act on the reactor: send, close, add sockets,
/// set timers. Structural changes a callback makes (closing a socket) are
/// applied when it returns, and reported through [`on_close`](Handler::on_close)
/// after it — never re-entrantly.
///
/// ```
/// use msgloop::{Ctx, Datagram, Handler, Reactor, SocketId};
/// use std::time::Duration;
///
/// struct Echo {
///     echoed: usize,
/// }
/// impl Handler for Echo {
///     fn on_datagram(&mut self, cx: &mut Ctx, sock: SocketId, msg: Datagram<'_>) {
///         if cx.send_to(sock, msg.data(), msg.from()).is_ok() {
///             self.echoed += 1;
///         }
///     }
/// }
///
/// let mut reactor = Reactor::new()?;
/// let sock = reactor.bind_udp("127.0.0.1:0")?;
/// let server = reactor.local_addr(sock)?.as_inet().expect("a UDP address");
/// let client = std::net::UdpSocket::bind("127.0.0.1:0")?;
/// client.send_to(b"hi", server)?;
/// let mut app = Echo { echoed: 0 };
/// while app.echoed == 0 {
///     reactor.run_once(&mut app, Some(Duration::from_secs(1)))?;
/// }
/// let mut buf = [0u8; 8];
/// assert_eq!(client.recv(&mut buf)?, 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[allow(unused_variables)]
pub trait Handler {
    /// A datagram arrived on a UDP or Unix datagram socket.
    fn on_datagram(&mut self, cx: &mut Ctx, sock: SocketId, msg: Datagram<'_>) {}

    /// A Unix seqpacket connection delivered a message (possibly empty),
    /// with the sender's credentials and any descriptors passed with it.
    #[cfg(target_os = "linux")]
    fn on_seqpacket(&mut self, cx: &mut Ctx, conn: SocketId, msg: SeqpacketMessage<'_>) {}

    /// A framed TCP connection delivered a frame (possibly empty). The bytes
    /// are borrowed from the reactor's receive buffer, or from the
    /// connection's partial-frame buffer, for the duration of the call.
    fn on_frame(&mut self, cx: &mut Ctx, conn: SocketId, frame: &[u8]) {}

    /// `listener` (TCP or Unix seqpacket) accepted `conn` from `peer`.
    fn on_accept(&mut self, cx: &mut Ctx, listener: SocketId, conn: SocketId, peer: &PeerAddr) {}

    /// An outgoing TCP connection ([`Ctx::connect_tcp`]) completed. (A
    /// failed one gets [`on_close`](Handler::on_close) with the error
    /// instead.)
    fn on_connect(&mut self, cx: &mut Ctx, conn: SocketId) {}

    /// A reliable-UDP message arrived from `peer`, sent with `guarantee`
    /// (borrowed for the duration of the call). Peers of a server socket
    /// announce themselves first with
    /// [`on_rudp_connected`](Handler::on_rudp_connected).
    fn on_rudp(
        &mut self,
        cx: &mut Ctx,
        peer: PeerId,
        msg: &[u8],
        guarantee: crate::rudp::Guarantee,
    ) {
    }

    /// A reliable-UDP peer completed its handshake: a connection of
    /// [`Ctx::connect_rudp`] or [`Ctx::connect_rudp_from`], or a new peer
    /// of a server socket.
    fn on_rudp_connected(&mut self, cx: &mut Ctx, peer: PeerId) {}

    /// A reliable-UDP peer is gone: timed out, closed by the peer, a
    /// protocol violation, or [`Ctx::close_rudp`]. Its id is dead.
    fn on_rudp_closed(&mut self, cx: &mut Ctx, peer: PeerId, reason: crate::rudp::RudpCloseReason) {
    }

    /// A reliable-UDP peer can take messages again after a send failed
    /// with [`Error::WouldBlock`].
    fn on_rudp_writable(&mut self, cx: &mut Ctx, peer: PeerId) {}

    /// Something went wrong on `sock` that does not close it: a message
    /// over the socket's quota (consumed, counted, not delivered), an
    /// ICMP error reported on a UDP socket (`ConnectionRefused`, ...), or a
    /// listener that could not accept (out of descriptors: it pauses).
    fn on_error(&mut self, cx: &mut Ctx, sock: SocketId, error: Error) {
        log::debug!("{sock}: {error}");
    }

    /// `sock` can send again after a send returned [`Error::WouldBlock`]
    /// (datagram and seqpacket sockets: the kernel can take more; TCP: the
    /// connection's queue drained). Called once per refusal, not on every
    /// writable edge.
    fn on_writable(&mut self, cx: &mut Ctx, sock: SocketId) {}

    /// `sock` is gone; its id is dead from now on. Called exactly once for
    /// every socket that closes other than by the host's own
    /// [`Ctx::close`] between passes: by the peer, on an error, on a
    /// timeout, or by [`Ctx::close`] inside a callback.
    fn on_close(&mut self, cx: &mut Ctx, sock: SocketId, reason: CloseReason) {}

    /// A timer set with [`Ctx::set_timer`] is due.
    fn on_timer(&mut self, cx: &mut Ctx, timer: TimerId) {}

    /// A signal watched with [`Ctx::watch_signals`] arrived (`signal` is
    /// its number, e.g. `libc::SIGTERM`). It runs on the reactor's thread
    /// like any callback: no async-signal-safety rules apply.
    fn on_signal(&mut self, cx: &mut Ctx, watcher: SocketId, signal: i32) {
        log::info!("signal {signal} ignored (no on_signal handler)");
    }

    /// A [`Waker`](crate::Waker) was woken (wake-ups that arrive before
    /// `run_once` gets to them are coalesced into one call).
    fn on_wake(&mut self, cx: &mut Ctx) {}

    /// A descriptor registered with [`Ctx::add_fd`] is ready (see
    /// [`Trigger`](crate::Trigger) for how often this is called).
    fn on_ready(&mut self, cx: &mut Ctx, fd: SocketId, ready: crate::Readiness) {}

    /// A message sent into a [`Ctx::channel`] from another thread (or
    /// this one) arrived; [`ChannelMessage::downcast`](crate::ChannelMessage::downcast)
    /// gives back the value sent.
    fn on_channel(&mut self, cx: &mut Ctx, channel: SocketId, msg: crate::ChannelMessage) {
        log::debug!("{channel}: a message with no on_channel handler was dropped");
    }
}

//! The [`Reactor`]: sockets in a slab, driven by the host's `run_once` calls.

use std::fmt;
use std::io;
use std::net::ToSocketAddrs;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use socket2::{Domain, SockRef, Socket, Type};

use crate::addr::private::Dest;
use crate::addr::{Destination, PeerAddr, UnixAddr};
use crate::error::Error;
use crate::handler::{CloseReason, Datagram, Handler, SocketId, SocketKind, TimerId};
use crate::recv::{recv_msg_fd, MsgBuf, RecvResult, MAX_UDP_PAYLOAD};
use crate::sys;
use crate::timer::Timers;

mod listener;
mod rudp;
#[cfg(target_os = "linux")]
mod seqpacket;
mod tcp;
use rudp::RudpSock;
#[cfg(target_os = "linux")]
pub use seqpacket::SeqpacketOptions;
#[cfg(target_os = "linux")]
use seqpacket::{SeqConn, SeqListenerState};
pub use tcp::TcpOptions;
use tcp::{TcpConn, TcpListenerState};

/// The token of the reactor's [`Waker`].
const WAKER_TOKEN: Token = Token(usize::MAX);

/// Reactor-wide settings: `Config { read_budget: 16, ..Config::default() }`.
#[derive(Debug, Clone)]
pub struct Config {
    /// How many readiness events one `poll` may return (default 1,024).
    pub events_capacity: usize,
    /// The most messages read from one socket per `run_once` (default 64).
    /// A socket cut off by its budget is served again on the next call
    /// without waiting for a new readiness edge, so one flooded socket
    /// cannot starve the others. Reliable-UDP sockets count datagrams
    /// read, a train coalesced by receive offload
    /// ([`RudpConfig::offload`](crate::rudp::RudpConfig::offload)) counting
    /// as one.
    pub read_budget: usize,
    /// Default quota for Unix datagram sockets: the largest message
    /// delivered (default 1 MiB). Larger ones are consumed and reported
    /// through [`Handler::on_error`]. Per-socket: [`DgramOptions`].
    pub unix_max_message_len: usize,
    /// Catch a panic in a handler callback instead of letting it leave
    /// `run_once` (default off). The socket being served is closed and
    /// reported with [`CloseReason::HandlerPanicked`] on the next pass (a
    /// panic in a timer or wake-up callback closes nothing), the panic is
    /// logged at `error!`, and `run_once` returns `Ok`. See
    /// [`Reactor`]'s `# Panics in handlers`.
    pub catch_panics: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            events_capacity: 1024,
            read_budget: 64,
            unix_max_message_len: 1 << 20,
            catch_panics: false,
        }
    }
}

/// Options for one datagram socket:
/// `DgramOptions { max_message_len: Some(4096), ..DgramOptions::default() }`.
#[derive(Debug, Clone, Default)]
pub struct DgramOptions {
    /// The largest datagram delivered; larger ones are consumed, counted
    /// and reported to [`Handler::on_error`]. `None`: 65,535 for UDP,
    /// [`Config::unix_max_message_len`] for Unix sockets.
    pub max_message_len: Option<usize>,
    /// Unix sockets: if the path exists and is a socket file (a leftover
    /// of a process that exited without removing it), remove it before
    /// binding. Off by default: binding over an existing path fails with
    /// `AddrInUse`, never silently.
    pub unlink_stale: bool,
    /// Unix sockets: remove the socket file when the socket is closed or
    /// the reactor dropped (default `false` here; the `bind_unix_datagram`
    /// shorthand turns it on). Only a file that is still the one this
    /// socket created is removed.
    pub unlink_on_close: bool,
    /// `SO_RCVBUF`, if set. On Linux, a size past `net.core.rmem_max` is
    /// forced with `SO_RCVBUFFORCE` when the process may (`CAP_NET_ADMIN`);
    /// otherwise the kernel's cap stands.
    pub recv_buffer_size: Option<usize>,
    /// Unix sockets (Linux): receive passed file descriptors and
    /// credentials ([`Datagram::fds`]); each read then carries a control
    /// buffer. Off by default, when the kernel closes any descriptors a
    /// sender passes.
    pub pass_fds: bool,
    /// `SO_REUSEPORT` (UDP and reliable UDP): several sockets — one per
    /// reactor thread — bind the same address and the kernel spreads
    /// peers over them by their address hash. See the crate's README on
    /// using more cores.
    pub reuse_port: bool,
    /// `SO_SNDBUF`, if set (forced past `wmem_max` like the receive side).
    pub send_buffer_size: Option<usize>,
}

/// Counters of one socket, or (in [`ReactorStats`]) of all sockets ever
/// held by a reactor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SocketStats {
    /// Messages delivered to the handler.
    pub messages_in: u64,
    /// Payload bytes delivered to the handler.
    pub bytes_in: u64,
    /// Messages sent.
    pub messages_out: u64,
    /// Payload bytes sent.
    pub bytes_out: u64,
    /// Messages over the quota: consumed, not delivered.
    pub dropped_over_quota: u64,
    /// Receive errors reported to the handler (ICMP errors on UDP, ...).
    pub recv_errors: u64,
    /// Sends that failed (other than `WouldBlock`).
    pub send_errors: u64,
    /// Sends refused with `WouldBlock` (or a full queue or window).
    pub send_would_block: u64,
    /// Received file descriptors the handler did not take (closed).
    pub fds_closed_unclaimed: u64,
    /// Connections closed because the peer sent a frame over the maximum
    /// (or an invalid length).
    pub dropped_too_large: u64,
    /// Datagrams dropped because they were cut (larger than any datagram
    /// the protocol sends: reliable UDP).
    pub dropped_truncated: u64,
    /// Reliable UDP: peers connected now.
    pub rudp_peers: u64,
    /// Reliable UDP: packets declared lost, summed over the peers.
    pub rudp_packets_lost: u64,
    /// Reliable UDP: message chunks retransmitted, summed over the peers.
    pub rudp_retransmitted: u64,
    /// Reliable UDP: the largest smoothed round-trip time among the peers,
    /// in microseconds.
    pub rudp_max_srtt_us: u64,
    /// Reliable UDP: trains of datagrams sent as one kernel packet
    /// (segmentation offload, [`RudpConfig::offload`](crate::rudp::RudpConfig::offload)).
    pub rudp_trains_sent: u64,
    /// Reliable UDP: trains of datagrams read with one copy (receive
    /// offload).
    pub rudp_trains_received: u64,
    /// Reliable UDP: times the kernel refused a train, turning the
    /// socket's segmentation offload off (0 or 1 per socket).
    pub rudp_offload_refused: u64,
}

impl SocketStats {
    fn add(&mut self, o: &SocketStats) {
        self.messages_in += o.messages_in;
        self.bytes_in += o.bytes_in;
        self.messages_out += o.messages_out;
        self.bytes_out += o.bytes_out;
        self.dropped_over_quota += o.dropped_over_quota;
        self.recv_errors += o.recv_errors;
        self.send_errors += o.send_errors;
        self.send_would_block += o.send_would_block;
        self.fds_closed_unclaimed += o.fds_closed_unclaimed;
        self.dropped_too_large += o.dropped_too_large;
        self.dropped_truncated += o.dropped_truncated;
        self.rudp_peers += o.rudp_peers;
        self.rudp_packets_lost += o.rudp_packets_lost;
        self.rudp_retransmitted += o.rudp_retransmitted;
        self.rudp_max_srtt_us = self.rudp_max_srtt_us.max(o.rudp_max_srtt_us);
        self.rudp_trains_sent += o.rudp_trains_sent;
        self.rudp_trains_received += o.rudp_trains_received;
        self.rudp_offload_refused += o.rudp_offload_refused;
    }
}

impl fmt::Display for SocketStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "in={} msgs/{} B out={} msgs/{} B drops: over_quota={} too_large={} truncated={} \
             refused_sends={} | errors: recv={} send={} | fds_closed_unclaimed={}",
            self.messages_in,
            self.bytes_in,
            self.messages_out,
            self.bytes_out,
            self.dropped_over_quota,
            self.dropped_too_large,
            self.dropped_truncated,
            self.send_would_block,
            self.recv_errors,
            self.send_errors,
            self.fds_closed_unclaimed
        )?;
        if self.rudp_peers > 0 || self.rudp_retransmitted > 0 {
            write!(
                f,
                " | rudp peers={} lost={} retransmitted={} max_srtt={} us trains: sent={} \
                 received={} refused={}",
                self.rudp_peers,
                self.rudp_packets_lost,
                self.rudp_retransmitted,
                self.rudp_max_srtt_us,
                self.rudp_trains_sent,
                self.rudp_trains_received,
                self.rudp_offload_refused
            )?;
        }
        Ok(())
    }
}

/// A snapshot of a reactor's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReactorStats {
    /// Sockets open now.
    pub open_sockets: usize,
    /// Sockets closed so far.
    pub closed_sockets: u64,
    /// Timers pending.
    pub pending_timers: usize,
    /// Calls to `run_once`.
    pub run_once_calls: u64,
    /// Handler callbacks made.
    pub callbacks: u64,
    /// Counters summed over every socket, open or closed.
    pub totals: SocketStats,
}

/// Wakes a reactor's `run_once` from any thread; the handler's
/// [`on_wake`](Handler::on_wake) runs on the reactor's thread.
///
/// Cheap to clone; all clones wake the same reactor.
#[derive(Clone, Debug)]
pub struct Waker(Arc<mio::Waker>);

impl Waker {
    /// Wakes the reactor. Wake-ups before it runs are coalesced.
    pub fn wake(&self) -> io::Result<()> {
        self.0.wake()
    }
}

enum Sock {
    Udp(mio::net::UdpSocket),
    UnixDgram(mio::net::UnixDatagram),
    /// A signalfd and the signals it blocked (unblocked again on close).
    #[cfg(target_os = "linux")]
    Signals(std::os::fd::OwnedFd, Vec<libc::c_int>),
    TcpListener(Box<TcpListenerState>),
    Tcp(Box<TcpConn>),
    Rudp(Box<RudpSock>),
    #[cfg(target_os = "linux")]
    SeqListener(Box<SeqListenerState>),
    #[cfg(target_os = "linux")]
    Seq(Box<SeqConn>),
}

impl Drop for Sock {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Sock::Signals(_, signals) = self {
            sys::unblock_signals(signals);
        }
    }
}

impl Sock {
    fn kind(&self) -> SocketKind {
        match self {
            Sock::Udp(_) => SocketKind::Udp,
            Sock::UnixDgram(_) => SocketKind::UnixDatagram,
            #[cfg(target_os = "linux")]
            Sock::Signals(..) => SocketKind::Signals,
            Sock::TcpListener(_) => SocketKind::TcpListener,
            Sock::Tcp(_) => SocketKind::Tcp,
            Sock::Rudp(_) => SocketKind::Rudp,
            #[cfg(target_os = "linux")]
            Sock::SeqListener(_) => SocketKind::SeqpacketListener,
            #[cfg(target_os = "linux")]
            Sock::Seq(_) => SocketKind::Seqpacket,
        }
    }

    fn register(
        &mut self,
        registry: &mio::Registry,
        token: Token,
        interest: Interest,
        re: bool,
    ) -> io::Result<()> {
        match self {
            Sock::Udp(s) => reg(s, registry, token, interest, re),
            Sock::UnixDgram(s) => reg(s, registry, token, interest, re),
            Sock::TcpListener(l) => reg(&mut l.listener, registry, token, interest, re),
            Sock::Tcp(c) => reg(&mut c.stream, registry, token, interest, re),
            Sock::Rudp(r) => reg(&mut r.sock, registry, token, interest, re),
            #[cfg(target_os = "linux")]
            Sock::SeqListener(l) => reg(&mut l.listener, registry, token, interest, re),
            #[cfg(target_os = "linux")]
            Sock::Seq(c) => reg(&mut c.sock, registry, token, interest, re),
            #[cfg(target_os = "linux")]
            Sock::Signals(fd, _) => reg(
                &mut SourceFd(&fd.as_raw_fd()),
                registry,
                token,
                interest,
                re,
            ),
        }
    }

    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        match self {
            Sock::Udp(s) => registry.deregister(s),
            Sock::UnixDgram(s) => registry.deregister(s),
            Sock::TcpListener(l) if l.gate.is_paused() => Ok(()),
            Sock::TcpListener(l) => registry.deregister(&mut l.listener),
            Sock::Tcp(c) => registry.deregister(&mut c.stream),
            Sock::Rudp(r) => registry.deregister(&mut r.sock),
            #[cfg(target_os = "linux")]
            Sock::SeqListener(l) if l.gate.is_paused() => Ok(()),
            #[cfg(target_os = "linux")]
            Sock::SeqListener(l) => registry.deregister(&mut l.listener),
            #[cfg(target_os = "linux")]
            Sock::Seq(c) => registry.deregister(&mut c.sock),
            #[cfg(target_os = "linux")]
            Sock::Signals(fd, _) => registry.deregister(&mut SourceFd(&fd.as_raw_fd())),
        }
    }

    /// What a new socket registers for: readable, plus writable for a TCP
    /// connect in progress (its completion is a writable edge).
    fn initial_interest(&self) -> Interest {
        match self {
            Sock::Tcp(c) if c.connecting => Interest::READABLE | Interest::WRITABLE,
            _ => Interest::READABLE,
        }
    }

    /// A socket2 view for socket calls; `None` for non-sockets.
    fn sock_ref(&self) -> Option<SockRef<'_>> {
        match self {
            Sock::Udp(s) => Some(SockRef::from(s)),
            Sock::UnixDgram(s) => Some(SockRef::from(s)),
            Sock::TcpListener(l) => Some(SockRef::from(&l.listener)),
            Sock::Tcp(c) => Some(SockRef::from(&c.stream)),
            Sock::Rudp(r) => Some(SockRef::from(&r.sock)),
            #[cfg(target_os = "linux")]
            Sock::SeqListener(l) => Some(SockRef::from(&l.listener)),
            #[cfg(target_os = "linux")]
            Sock::Seq(c) => Some(SockRef::from(&c.sock)),
            #[cfg(target_os = "linux")]
            Sock::Signals(..) => None,
        }
    }
}

fn reg<S: mio::event::Source + ?Sized>(
    s: &mut S,
    registry: &mio::Registry,
    token: Token,
    interest: Interest,
    re: bool,
) -> io::Result<()> {
    if re {
        registry.reregister(s, token, interest)
    } else {
        registry.register(s, token, interest)
    }
}

/// The socket file a reactor created, removed on close if unchanged.
struct BoundPath {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl BoundPath {
    fn capture(path: &Path) -> Option<BoundPath> {
        let md = std::fs::symlink_metadata(path).ok()?;
        Some(BoundPath {
            path: path.to_path_buf(),
            dev: md.dev(),
            ino: md.ino(),
        })
    }

    fn remove(&self) {
        if let Ok(md) = std::fs::symlink_metadata(&self.path) {
            if md.dev() == self.dev && md.ino() == self.ino {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    log::warn!("removing {}: {e}", self.path.display());
                }
            }
        }
    }
}

struct Entry {
    gen: u32,
    /// `None` once closed; the slot is freed at the end of `run_once`.
    sock: Option<Sock>,
    kind: SocketKind,
    max_msg: usize,
    /// WRITABLE interest is armed because a send returned `WouldBlock`.
    want_write: bool,
    /// In the carry-over list (cut off by its read budget).
    carried: bool,
    /// The `run_once` tick in which this socket was last drained.
    served_tick: u64,
    stats: SocketStats,
    bound: Option<BoundPath>,
    /// Unix datagram sockets: read with a control buffer (fds, credentials).
    pass_fds: bool,
}

#[derive(Debug, Clone, Copy)]
enum TimerTarget {
    User,
    /// A TCP connection's partial frame may have stalled.
    FrameIdle(SocketId),
    /// A listener paused by `EMFILE` tries again.
    ResumeAccept(SocketId),
    /// A reliable-UDP endpoint's next deadline.
    Rudp(SocketId),
}

/// What a handler callback may do — send, close, add sockets, set timers,
/// read counters — and the reactor's state behind it.
///
/// Callbacks receive `&mut Ctx`; the host reaches the same methods on its
/// [`Reactor`] (which dereferences to `Ctx`) between `run_once` calls.
pub struct Ctx {
    poll: Poll,
    sockets: Slab<Entry>,
    timers: Timers<TimerTarget>,
    config: Config,
    /// The time of this pass, read lazily (one `clock_gettime` per pass at
    /// most, none when nothing asks).
    now: std::cell::Cell<Option<Instant>>,
    next_gen: u32,
    tick: u64,
    /// Inside `run_once`: closes are deferred, `on_close` is queued.
    dispatching: bool,
    /// Sockets cut off by their budget, to serve next call.
    carry: Vec<SocketId>,
    /// Closed during this call; `on_close` still to be delivered.
    closed: Vec<(SocketId, CloseReason)>,
    /// Slots to free at the end of this call.
    to_free: Vec<usize>,
    /// Sockets that hit `WouldBlock`... and were writable, to notify.
    waker: Option<Arc<mio::Waker>>,
    closed_totals: SocketStats,
    closed_count: u64,
    run_once_calls: u64,
    callbacks: u64,
    /// The largest receive buffer any socket needs.
    rbuf_needed: usize,
    /// TCP frames sent during this pass, flushed per connection at its end.
    out: Vec<u8>,
    out_segs: Vec<tcp::Seg>,
    /// Listeners paused because the process ran out of fds.
    paused_listeners: Vec<SocketId>,
    /// Reliable-UDP sockets with output to send at the end of the pass.
    rudp_dirty: Vec<SocketId>,
    /// Datagram slots for `sendmmsg`.
    rudp_tx: Vec<u8>,
    /// Reliable-UDP sockets flushed since their events were last polled.
    rudp_flushed: Vec<SocketId>,
    /// The socket whose callbacks run now (the culprit if one panics).
    current: Option<SocketId>,
    /// A wake-up was lost to a panicking pass: deliver it next pass.
    wake_pending: bool,
}

impl fmt::Debug for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx")
            .field("sockets", &self.sockets.len())
            .field("timers", &self.timers.len())
            .field("tick", &self.tick)
            .finish_non_exhaustive()
    }
}

fn token_of(id: SocketId) -> Token {
    Token(((u64::from(id.gen) << 32) | u64::from(id.index)) as usize)
}

fn id_of(token: Token) -> SocketId {
    let t = token.0 as u64;
    SocketId {
        index: (t & 0xffff_ffff) as u32,
        gen: (t >> 32) as u32,
    }
}

impl Ctx {
    /// The time of the current `run_once` pass (taken once after each
    /// poll, so every callback of a pass sees the same instant).
    pub fn now(&self) -> Instant {
        match self.now.get() {
            Some(t) => t,
            None => {
                let t = Instant::now();
                if self.dispatching {
                    self.now.set(Some(t));
                }
                t
            }
        }
    }

    // ---- sockets -------------------------------------------------------

    /// Binds a UDP socket (IPv4 or IPv6) and adds it; the first address
    /// that binds wins. Port 0 picks a free port ([`local_addr`](Ctx::local_addr) tells which).
    pub fn bind_udp<A: ToSocketAddrs>(&mut self, addr: A) -> Result<SocketId, Error> {
        self.bind_udp_with(addr, &DgramOptions::default())
    }

    /// [`bind_udp`](Ctx::bind_udp) with options.
    pub fn bind_udp_with<A: ToSocketAddrs>(
        &mut self,
        addr: A,
        opts: &DgramOptions,
    ) -> Result<SocketId, Error> {
        let sock = bind_udp_socket(addr, opts)?;
        self.add_udp_with(sock, opts)
    }

    /// Adopts a UDP socket you created and configured (with socket2, or a
    /// std `UdpSocket` via `.into()`). It is made non-blocking.
    pub fn add_udp(&mut self, socket: Socket) -> Result<SocketId, Error> {
        self.add_udp_with(socket, &DgramOptions::default())
    }

    /// [`add_udp`](Ctx::add_udp) with options (buffer sizes are applied).
    pub fn add_udp_with(&mut self, socket: Socket, opts: &DgramOptions) -> Result<SocketId, Error> {
        check_type(&socket, Type::DGRAM, "add_udp")?;
        match socket.local_addr()?.as_socket() {
            Some(_) => {}
            None => {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "add_udp: not an IPv4/IPv6 socket",
                )))
            }
        }
        socket.set_nonblocking(true)?;
        apply_buffers(&socket, opts)?;
        let std_sock: std::net::UdpSocket = socket.into();
        let max = opts
            .max_message_len
            .unwrap_or(MAX_UDP_PAYLOAD)
            .min(MAX_UDP_PAYLOAD);
        self.insert(
            Sock::Udp(mio::net::UdpSocket::from_std(std_sock)),
            max,
            None,
        )
    }

    /// Binds a Unix datagram socket at a filesystem path and adds it. The
    /// file is removed when the socket closes. Binding over an existing
    /// path fails with `AddrInUse`; see [`DgramOptions::unlink_stale`].
    pub fn bind_unix_datagram<P: AsRef<Path>>(&mut self, path: P) -> Result<SocketId, Error> {
        let opts = DgramOptions {
            unlink_on_close: true,
            ..DgramOptions::default()
        };
        self.bind_unix_datagram_with(&UnixAddr::from_pathname(path)?, &opts)
    }

    /// Binds a Unix datagram socket at `addr` — a path, or on Linux an
    /// abstract name ([`UnixAddr::from_abstract_name`]) — with options.
    pub fn bind_unix_datagram_with(
        &mut self,
        addr: &UnixAddr,
        opts: &DgramOptions,
    ) -> Result<SocketId, Error> {
        let sock = Socket::new(Domain::UNIX, Type::DGRAM.nonblocking().cloexec(), None)?;
        apply_buffers(&sock, opts)?;
        let path = addr.as_pathname();
        if let (Some(p), true) = (path, opts.unlink_stale) {
            remove_stale_socket_file(p, Type::DGRAM)?;
        }
        sock.bind(addr.as_sock_addr())?;
        let bound = match (path, opts.unlink_on_close) {
            (Some(p), true) => BoundPath::capture(p),
            _ => None,
        };
        let max = opts
            .max_message_len
            .unwrap_or(self.config.unix_max_message_len);
        let std_sock: std::os::unix::net::UnixDatagram = sock.into();
        let id = self.insert(
            Sock::UnixDgram(mio::net::UnixDatagram::from_std(std_sock)),
            max,
            bound,
        )?;
        self.set_pass_fds(id, opts.pass_fds)?;
        Ok(id)
    }

    /// An unbound Unix datagram socket (it can send, and connect; peers
    /// see it as unnamed and cannot reply unless it is connected to them).
    pub fn unix_datagram_unbound(&mut self) -> Result<SocketId, Error> {
        let sock = Socket::new(Domain::UNIX, Type::DGRAM.nonblocking().cloexec(), None)?;
        self.add_unix_datagram(sock)
    }

    /// Adopts a Unix datagram socket you created (e.g. one end of
    /// `UnixDatagram::pair()`, via `Socket::from(OwnedFd::from(..))`).
    pub fn add_unix_datagram(&mut self, socket: Socket) -> Result<SocketId, Error> {
        self.add_unix_datagram_with(socket, &DgramOptions::default())
    }

    /// [`add_unix_datagram`](Ctx::add_unix_datagram) with options.
    pub fn add_unix_datagram_with(
        &mut self,
        socket: Socket,
        opts: &DgramOptions,
    ) -> Result<SocketId, Error> {
        check_type(&socket, Type::DGRAM, "add_unix_datagram")?;
        if socket.local_addr()?.family() != libc::AF_UNIX as libc::sa_family_t {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "add_unix_datagram: not a Unix-domain socket",
            )));
        }
        socket.set_nonblocking(true)?;
        apply_buffers(&socket, opts)?;
        let max = opts
            .max_message_len
            .unwrap_or(self.config.unix_max_message_len);
        let std_sock: std::os::unix::net::UnixDatagram = socket.into();
        let id = self.insert(
            Sock::UnixDgram(mio::net::UnixDatagram::from_std(std_sock)),
            max,
            None,
        )?;
        self.set_pass_fds(id, opts.pass_fds)?;
        Ok(id)
    }

    /// Delivers `signals` (e.g. `[libc::SIGINT, libc::SIGTERM]`) to
    /// [`Handler::on_signal`] through a `signalfd`, on the reactor's thread.
    ///
    /// The signals are blocked for the calling thread — call this before
    /// spawning threads, which inherit the mask, or block them there too,
    /// else the kernel may deliver a signal to a thread that does not block
    /// it. Closing the returned id unblocks them again.
    #[cfg(target_os = "linux")]
    pub fn watch_signals(&mut self, signals: &[i32]) -> Result<SocketId, Error> {
        let fd = sys::signalfd(signals)?;
        self.insert(Sock::Signals(fd, signals.to_vec()), 0, None)
    }

    /// Connects a datagram socket to `peer`: [`send`](Ctx::send) then goes
    /// there, and only datagrams from `peer` are received.
    pub fn connect<D: Destination>(&mut self, sock: SocketId, peer: D) -> Result<(), Error> {
        let addr = peer.dest()?.to_sock_addr();
        self.dgram(sock, "connect")?.connect(&addr)?;
        Ok(())
    }

    /// The address a socket is bound to.
    pub fn local_addr(&self, sock: SocketId) -> Result<PeerAddr, Error> {
        let raw = self.dgram(sock, "local_addr")?.local_addr()?;
        Ok(if raw.is_unix() || raw.len() == 0 {
            PeerAddr::Unix(UnixAddr::from_received(raw))
        } else {
            PeerAddr::Inet(raw.as_socket().ok_or_else(crate::addr::not_inet)?)
        })
    }

    /// The kind of a socket.
    pub fn kind(&self, sock: SocketId) -> Result<SocketKind, Error> {
        Ok(self.live_entry(sock)?.kind)
    }

    /// `true` while `sock` names an open socket.
    pub fn contains(&self, sock: SocketId) -> bool {
        self.live_entry(sock).is_ok()
    }

    /// Sends one datagram to `to`. Returns the bytes sent (always the whole
    /// message: datagrams are never cut).
    ///
    /// A full queue gives [`Error::WouldBlock`] and arms
    /// [`Handler::on_writable`]; nothing is queued — datagram sockets have
    /// no send queue in msgloop.
    pub fn send_to<D: Destination>(
        &mut self,
        sock: SocketId,
        data: &[u8],
        to: D,
    ) -> Result<usize, Error> {
        let dest = to.dest()?;
        let raw = match &dest {
            Dest::Inet(a) => sys::RawDest::inet(a),
            Dest::Sock(a) => sys::RawDest::Sock(a),
        };
        let res = sys::send_to(self.dgram_fd(sock, "send_to")?, data, &raw);
        self.after_send(sock, res, data.len())
    }

    /// Sends one datagram on a connected socket.
    pub fn send(&mut self, sock: SocketId, data: &[u8]) -> Result<usize, Error> {
        let res = sys::send(self.dgram_fd(sock, "send")?, data);
        self.after_send(sock, res, data.len())
    }

    fn after_send(
        &mut self,
        sock: SocketId,
        res: io::Result<usize>,
        len: usize,
    ) -> Result<usize, Error> {
        let entry = &mut self.sockets[sock.index as usize];
        match res {
            Ok(n) => {
                entry.stats.messages_out += 1;
                entry.stats.bytes_out += n as u64;
                Ok(n)
            }
            Err(e) => {
                let err = Error::from_send(e, len);
                if let Error::WouldBlock = err {
                    entry.stats.send_would_block += 1;
                    if !entry.want_write {
                        entry.want_write = true;
                        self.set_interest(sock, Interest::READABLE | Interest::WRITABLE);
                    }
                } else {
                    entry.stats.send_errors += 1;
                }
                Err(err)
            }
        }
    }

    /// Closes a socket.
    ///
    /// Inside a callback the socket is closed when the callback returns and
    /// [`Handler::on_close`] follows with [`CloseReason::Local`]; the id is
    /// dead at once (a send to it is [`Error::StaleId`]). Between
    /// `run_once` calls the socket is closed at once and no callback runs.
    pub fn close(&mut self, sock: SocketId) -> Result<(), Error> {
        self.live_entry(sock)?;
        self.close_now(sock, CloseReason::Local);
        Ok(())
    }

    fn close_now(&mut self, id: SocketId, reason: CloseReason) {
        let Some(entry) = self.sockets.get_mut(id.index as usize) else {
            return;
        };
        if entry.gen != id.gen {
            return;
        }
        let Some(mut s) = entry.sock.take() else {
            return;
        };
        if let Err(e) = s.deregister(self.poll.registry()) {
            log::debug!("{id}: deregister: {e}");
        }
        if let Some(b) = entry.bound.take() {
            b.remove();
        }
        self.closed_totals.add(&entry.stats);
        self.closed_count += 1;
        if let Sock::Tcp(c) = &mut s {
            tcp::write_before_close(&self.out, &self.out_segs, id, c);
        }
        let listener = match &s {
            Sock::Tcp(c) => {
                if let Some(key) = c.idle_timer_key() {
                    self.timers.cancel(key);
                }
                c.listener
            }
            Sock::Rudp(r) => {
                if let Some(key) = r.timer_key() {
                    self.timers.cancel(key);
                }
                None
            }
            #[cfg(target_os = "linux")]
            Sock::Seq(c) => c.listener,
            _ => None,
        };
        drop(s); // closes the fd
        if self.dispatching {
            self.to_free.push(id.index as usize);
        } else {
            self.sockets.remove(id.index as usize);
        }
        // The handler hears of every close it did not ask for between
        // passes too: on the next pass.
        if self.dispatching || !matches!(reason, CloseReason::Local) {
            self.closed.push((id, reason));
        }
        if let Some(lid) = listener {
            listener::conn_closed(self, lid);
        }
        // An fd was freed: listeners that ran out of fds may accept again.
        while let Some(lid) = self.paused_listeners.pop() {
            listener::resume(self, lid);
        }
    }

    /// Turns on fd/credential reception for a Unix datagram socket.
    fn set_pass_fds(&mut self, id: SocketId, on: bool) -> Result<(), Error> {
        if !on {
            return Ok(());
        }
        #[cfg(target_os = "linux")]
        {
            if let Some(Sock::UnixDgram(s)) = &self.live_entry(id)?.sock {
                SockRef::from(s).set_passcred(true)?;
            }
            if let Some(e) = self.live_entry_mut(id) {
                e.pass_fds = true;
            }
            Ok(())
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = id;
            Err(Error::Io(io::Error::new(
                io::ErrorKind::Unsupported,
                "passing fds through the reactor is implemented on Linux only",
            )))
        }
    }

    /// Heap bytes a socket holds beyond its fixed bookkeeping: a TCP
    /// connection's send queue and partial frame (0 when idle).
    pub fn buffered_bytes(&self, sock: SocketId) -> Result<usize, Error> {
        Ok(match &self.live_entry(sock)?.sock {
            Some(Sock::Tcp(c)) => c.buffered_capacity(),
            _ => 0,
        })
    }

    /// Counters of one socket.
    ///
    /// For a reliable-UDP socket the snapshot includes its peers: how many
    /// are connected, packets lost, chunks retransmitted, the largest
    /// smoothed RTT ([`peer_stats`](Ctx::peer_stats) has one peer's figures).
    pub fn stats(&self, sock: SocketId) -> Result<SocketStats, Error> {
        Ok(snapshot(self.live_entry(sock)?))
    }

    /// Counters of the whole reactor.
    pub fn reactor_stats(&self) -> ReactorStats {
        let mut totals = self.closed_totals;
        for (_, e) in self.sockets.iter() {
            if e.sock.is_some() {
                totals.add(&snapshot(e));
            }
        }
        ReactorStats {
            open_sockets: self
                .sockets
                .iter()
                .filter(|(_, e)| e.sock.is_some())
                .count(),
            closed_sockets: self.closed_count,
            pending_timers: self.timers.len(),
            run_once_calls: self.run_once_calls,
            callbacks: self.callbacks,
            totals,
        }
    }

    /// Open sockets.
    pub fn socket_count(&self) -> usize {
        self.sockets.len() - self.to_free.len()
    }

    /// The ids of every open socket.
    pub fn socket_ids(&self) -> impl Iterator<Item = SocketId> + '_ {
        self.sockets
            .iter()
            .filter(|(_, e)| e.sock.is_some())
            .map(|(i, e)| SocketId {
                index: i as u32,
                gen: e.gen,
            })
    }

    // ---- timers --------------------------------------------------------

    /// Calls [`Handler::on_timer`] once, `delay` from [`now`](Ctx::now).
    pub fn set_timer(&mut self, delay: Duration) -> TimerId {
        let at = self.now() + delay;
        self.set_timer_at(at)
    }

    /// Calls [`Handler::on_timer`] once at `deadline` (at once if it has
    /// passed).
    pub fn set_timer_at(&mut self, deadline: Instant) -> TimerId {
        TimerId(self.timers.insert(deadline, TimerTarget::User))
    }

    /// Cancels a timer; `false` if it already fired or was cancelled.
    /// A cancelled timer never fires, and its memory is reclaimed.
    pub fn cancel_timer(&mut self, timer: TimerId) -> bool {
        self.timers.cancel(timer.0).is_some()
    }

    /// When a pending timer is due, if it is.
    pub fn timer_deadline(&self, timer: TimerId) -> Option<Instant> {
        self.timers.deadline(timer.0)
    }

    /// The earliest moment `run_once` has work to do by itself (a timer),
    /// or `Instant` now if work is pending (sockets cut off by their read
    /// budget, callbacks or output owed). A host with its own poll loop
    /// sleeps until then at most.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        if self.has_work_now() {
            return Some(Instant::now());
        }
        self.timers.next_deadline()
    }

    /// Work the next pass must do at once, without waiting for an event:
    /// sockets cut off by their read budget, `on_close` callbacks owed,
    /// output not yet flushed, a wake-up lost to a panic.
    fn has_work_now(&self) -> bool {
        !self.carry.is_empty()
            || !self.closed.is_empty()
            || !self.out_segs.is_empty()
            || !self.rudp_flushed.is_empty()
            || self.wake_pending
    }

    /// A [`Waker`] for this reactor (the same one each call).
    pub fn waker(&mut self) -> io::Result<Waker> {
        if self.waker.is_none() {
            self.waker = Some(Arc::new(mio::Waker::new(
                self.poll.registry(),
                WAKER_TOKEN,
            )?));
        }
        Ok(Waker(Arc::clone(self.waker.as_ref().expect("set above"))))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    // ---- internals -----------------------------------------------------

    fn insert(
        &mut self,
        mut sock: Sock,
        max_msg: usize,
        bound: Option<BoundPath>,
    ) -> Result<SocketId, Error> {
        self.next_gen = self.next_gen.wrapping_add(1);
        if self.next_gen == u32::MAX {
            self.next_gen = 0;
        }
        let gen = self.next_gen;
        let slot = self.sockets.vacant_entry();
        let index = slot.key();
        if index >= u32::MAX as usize {
            return Err(Error::Io(io::Error::other("too many sockets")));
        }
        let id = SocketId {
            index: index as u32,
            gen,
        };
        if let Err(e) = sock.register(
            self.poll.registry(),
            token_of(id),
            sock.initial_interest(),
            false,
        ) {
            if let Some(b) = bound {
                b.remove();
            }
            return Err(Error::Io(e));
        }
        let kind = sock.kind();
        self.rbuf_needed = self.rbuf_needed.max(max_msg);
        slot.insert(Entry {
            gen,
            sock: Some(sock),
            kind,
            max_msg,
            want_write: false,
            carried: false,
            served_tick: 0,
            stats: SocketStats::default(),
            bound,
            pass_fds: false,
        });
        Ok(id)
    }

    fn entry(&self, id: SocketId) -> Result<&Entry, Error> {
        match self.sockets.get(id.index as usize) {
            Some(e) if e.gen == id.gen => Ok(e),
            _ => Err(Error::StaleId),
        }
    }

    fn live_entry(&self, id: SocketId) -> Result<&Entry, Error> {
        let e = self.entry(id)?;
        if e.sock.is_none() {
            return Err(Error::StaleId);
        }
        Ok(e)
    }

    /// The fd of a datagram socket, for `op`.
    fn dgram_fd(&self, id: SocketId, op: &'static str) -> Result<RawFd, Error> {
        let e = self.live_entry(id)?;
        match &e.sock {
            Some(Sock::Udp(s)) => Ok(s.as_raw_fd()),
            Some(Sock::UnixDgram(s)) => Ok(s.as_raw_fd()),
            _ => Err(Error::WrongKind { op, kind: e.kind }),
        }
    }

    /// A socket2 view of a datagram socket, for `op`.
    fn dgram(&self, id: SocketId, op: &'static str) -> Result<SockRef<'_>, Error> {
        let e = self.live_entry(id)?;
        e.sock
            .as_ref()
            .and_then(Sock::sock_ref)
            .ok_or(Error::WrongKind { op, kind: e.kind })
    }

    /// Re-registers `id` with `interest` (edge-triggered: the kernel
    /// reports the current state at once if it matches).
    fn set_interest(&mut self, id: SocketId, interest: Interest) {
        let Ctx { sockets, poll, .. } = self;
        if let Some(s) = sockets
            .get_mut(id.index as usize)
            .and_then(|e| e.sock.as_mut())
        {
            if let Err(e) = s.register(poll.registry(), token_of(id), interest, true) {
                log::warn!("{id}: reregister: {e}");
            }
        }
    }

    /// Drops WRITABLE interest if a `WouldBlock` armed it; `true` if so
    /// (then the handler is owed an `on_writable`).
    fn disarm_writable(&mut self, id: SocketId) -> bool {
        match self.live_entry_mut(id) {
            Some(e) if e.want_write => e.want_write = false,
            _ => return false,
        }
        self.set_interest(id, Interest::READABLE);
        true
    }

    fn live_entry_mut(&mut self, id: SocketId) -> Option<&mut Entry> {
        match self.sockets.get_mut(id.index as usize) {
            Some(e) if e.gen == id.gen && e.sock.is_some() => Some(e),
            _ => None,
        }
    }
}

/// A socket's counters, with its reliable-UDP peers' figures folded in.
fn snapshot(e: &Entry) -> SocketStats {
    let mut s = e.stats;
    if let Some(Sock::Rudp(r)) = &e.sock {
        for peer in r.ep.peers() {
            if let Some(p) = r.ep.peer_stats(peer) {
                s.rudp_peers += 1;
                s.rudp_packets_lost += p.packets_lost;
                s.rudp_retransmitted += p.chunks_retransmitted;
                s.rudp_max_srtt_us = s.rudp_max_srtt_us.max(p.srtt.as_micros() as u64);
            }
        }
    }
    s
}

fn check_type(socket: &Socket, want: Type, op: &'static str) -> Result<(), Error> {
    if socket.r#type()? != want {
        return Err(Error::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{op}: wrong socket type"),
        )));
    }
    Ok(())
}

/// A non-blocking UDP socket bound to the first of `addr` that binds,
/// with `opts` applied before binding (dual-stack for IPv6 where allowed).
pub(crate) fn bind_udp_socket<A: ToSocketAddrs>(
    addr: A,
    opts: &DgramOptions,
) -> io::Result<Socket> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        let sock = match Socket::new(
            Domain::for_address(a),
            Type::DGRAM.nonblocking().cloexec(),
            None,
        ) {
            Ok(s) => s,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        if a.is_ipv6() {
            // Dual-stack if the system allows it; harmless otherwise.
            let _ = sock.set_only_v6(false);
        }
        apply_buffers(&sock, opts)?;
        match sock.bind(&a.into()) {
            Ok(()) => return Ok(sock),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to bind")))
}

fn apply_buffers(sock: &Socket, opts: &DgramOptions) -> io::Result<()> {
    if opts.reuse_port {
        sock.set_reuse_port(true)?;
    }
    if let Some(n) = opts.recv_buffer_size {
        sock.set_recv_buffer_size(n)?;
        #[cfg(target_os = "linux")]
        if sock.recv_buffer_size()? < n {
            // Past net.core.rmem_max: allowed with CAP_NET_ADMIN.
            if let Err(e) = sys::set_buffer_force(sock.as_raw_fd(), true, n) {
                log::debug!(
                    "SO_RCVBUFFORCE {n}: {e}; keeping {}",
                    sock.recv_buffer_size()?
                );
            }
        }
    }
    if let Some(n) = opts.send_buffer_size {
        sock.set_send_buffer_size(n)?;
        #[cfg(target_os = "linux")]
        if sock.send_buffer_size()? < n {
            if let Err(e) = sys::set_buffer_force(sock.as_raw_fd(), false, n) {
                log::debug!(
                    "SO_SNDBUFFORCE {n}: {e}; keeping {}",
                    sock.send_buffer_size()?
                );
            }
        }
    }
    Ok(())
}

/// Removes `path` if it is a socket file nobody listens on any more: a
/// leftover of a process that exited without removing it. A live socket
/// there (one a connect of type `ty` reaches) is never taken over: that is
/// `AddrInUse`. Anything that is not a socket file is never removed.
pub(crate) fn remove_stale_socket_file(path: &Path, ty: Type) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            let probe = Socket::new(Domain::UNIX, ty.nonblocking().cloexec(), None)?;
            match probe.connect(&socket2::SockAddr::unix(path)?) {
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    std::fs::remove_file(path)
                }
                Ok(()) => Err(in_use(path)),
                // Another socket type, or a full backlog: someone is there.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EPROTOTYPE) | Some(libc::EAGAIN)
                    ) =>
                {
                    Err(in_use(path))
                }
                Err(e) => Err(e),
            }
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket: not removing it",
                path.display()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn in_use(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::AddrInUse,
        format!(
            "{} is in use by a live socket: not removing it",
            path.display()
        ),
    )
}

/// A single-threaded event loop over message-oriented sockets, driven by
/// the host's calls to [`run_once`](Reactor::run_once).
///
/// The reactor owns its sockets (in a slab, named by [`SocketId`]s), one
/// receive buffer shared by all of them, and one deadline structure for
/// every timer. It dereferences to [`Ctx`], so the host calls the same
/// methods — `bind_udp`, `send_to`, `set_timer`, `close` — between
/// `run_once` calls that callbacks call inside them.
///
/// ```
/// use msgloop::{Ctx, Datagram, Handler, Reactor, SocketId};
/// use std::time::Duration;
///
/// struct Echo { seen: usize }
/// impl Handler for Echo {
///     fn on_datagram(&mut self, cx: &mut Ctx, sock: SocketId, msg: Datagram<'_>) {
///         self.seen += 1;
///         cx.send_to(sock, msg.data(), msg.from()).ok();
///     }
/// }
///
/// let mut reactor = Reactor::new()?;
/// let server = reactor.bind_udp("127.0.0.1:0")?;
/// let addr = reactor.local_addr(server)?.as_inet().unwrap();
///
/// let client = std::net::UdpSocket::bind("127.0.0.1:0")?;
/// client.send_to(b"ping", addr)?;
///
/// let mut app = Echo { seen: 0 };
/// while app.seen == 0 {
///     reactor.run_once(&mut app, Some(Duration::from_secs(5)))?;
/// }
/// let mut buf = [0u8; 16];
/// let (n, _) = client.recv_from(&mut buf)?;
/// assert_eq!(&buf[..n], b"ping");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # The `run_once` contract
///
/// 1. It computes the wait: the caller's timeout, shortened to the next
///    timer, or zero if a socket still has unread data from a budget
///    cut-off. Waits are rounded *up* to whole milliseconds (epoll's unit),
///    so a timer 300 µs away costs one 1 ms sleep, never a busy loop.
/// 2. It polls, then drains every ready socket until `WouldBlock` or until
///    the socket's read budget ([`Config::read_budget`]) is spent.
/// 3. It fires due timers.
/// 4. It writes the TCP frames sent during the pass (coalesced, one
///    `writev` per connection), frees the slots of sockets closed during the
///    call, and returns the number of handler callbacks made. (A pass that
///    only buffered part of a TCP frame made none: judge progress by your
///    own state, not by a zero return.)
///
/// An idle reactor sleeps in `epoll_wait`: no periodic wake-ups, no
/// spinning, no hidden threads. `run_once` returns `Err` only if polling
/// itself fails; every error that concerns one socket goes to the handler.
///
/// # Spurious events
///
/// A readiness event with nothing to read makes no callback: the socket is
/// read, `WouldBlock` comes back, and that is all.
///
/// # Draining
///
/// mio is edge-triggered: a socket is read until `WouldBlock`. A socket cut
/// off by its budget is remembered and served on the next call without
/// waiting for a new edge (that call polls with a zero timeout), so no
/// message waits for traffic that may never come, and a flooded socket
/// cannot starve the others: every ready socket is served on every call.
///
/// # Backpressure
///
/// Datagram sends are immediate and never queued by msgloop: a full kernel
/// queue (or a full Unix peer) gives [`Error::WouldBlock`] at once, and
/// [`Handler::on_writable`] is called once the socket can send again. For
/// an *unconnected* Unix datagram socket Linux gives no readiness signal
/// when a particular peer drains; `on_writable` then reflects the socket's
/// own send buffer.
///
/// # Panics in handlers
///
/// By default a panic in a callback unwinds out of `run_once`. The reactor
/// puts itself in order first: slots of sockets closed during the pass are
/// freed, every socket that had an event in the interrupted pass is served
/// on the next call without waiting for a new edge, and a lost wake-up is
/// delivered then. Dropping the reactor closes every socket it holds; or
/// call `run_once` again to keep serving.
///
/// With [`Config::catch_panics`] the panic is caught instead: the socket
/// whose callback panicked is closed (its `on_close` says
/// [`CloseReason::HandlerPanicked`]), the panic is logged, and `run_once`
/// returns `Ok` — one bad message cannot take the server down.
///
/// # Embedding
///
/// The reactor's epoll fd is exposed through [`AsRawFd`]: a host with its
/// own poll loop can watch it for readability and call `run_once(Some(0))`
/// when it fires, sleeping at most until [`next_deadline`](Ctx::next_deadline).
pub struct Reactor {
    cx: Ctx,
    events: Events,
    /// Buffers lent to each pass.
    bufs: Bufs,
    /// The carry list being served this call (swapped with `cx.carry`).
    carry_now: Vec<SocketId>,
}

/// The buffers a pass reads into, lent to the per-kind read paths.
struct Bufs {
    /// The one receive buffer; payloads are borrowed from it.
    rbuf: Vec<u8>,
    /// Reliable-UDP messages are copied here for the handler to borrow.
    scratch: Vec<u8>,
    /// Control-message room for received fds and credentials.
    #[cfg(target_os = "linux")]
    anc: crate::net::AncillaryBuf,
    /// Seqpacket reads take two messages per `recvmmsg`: the second one's
    /// buffer (as large as `rbuf`; allocated with the first seqpacket
    /// read) and control room.
    #[cfg(target_os = "linux")]
    rbuf2: Vec<u8>,
    #[cfg(target_os = "linux")]
    anc2: crate::net::AncillaryBuf,
}

impl fmt::Debug for Reactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reactor")
            .field("cx", &self.cx)
            .field("rbuf", &self.bufs.rbuf.len())
            .finish_non_exhaustive()
    }
}

impl Deref for Reactor {
    type Target = Ctx;
    fn deref(&self) -> &Ctx {
        &self.cx
    }
}

impl DerefMut for Reactor {
    fn deref_mut(&mut self) -> &mut Ctx {
        &mut self.cx
    }
}

impl AsRawFd for Reactor {
    fn as_raw_fd(&self) -> RawFd {
        self.cx.poll.as_raw_fd()
    }
}

impl Reactor {
    /// A reactor with the default [`Config`].
    pub fn new() -> io::Result<Reactor> {
        Reactor::with_config(Config::default())
    }

    /// A reactor with `config`.
    pub fn with_config(mut config: Config) -> io::Result<Reactor> {
        config.events_capacity = config.events_capacity.max(1);
        config.read_budget = config.read_budget.max(1);
        let events = Events::with_capacity(config.events_capacity);
        Ok(Reactor {
            cx: Ctx {
                poll: Poll::new()?,
                sockets: Slab::new(),
                timers: Timers::new(),
                config,
                now: std::cell::Cell::new(None),
                next_gen: 0,
                tick: 0,
                dispatching: false,
                carry: Vec::new(),
                closed: Vec::new(),
                to_free: Vec::new(),
                waker: None,
                closed_totals: SocketStats::default(),
                closed_count: 0,
                run_once_calls: 0,
                callbacks: 0,
                rbuf_needed: MAX_UDP_PAYLOAD,
                out: Vec::new(),
                out_segs: Vec::new(),
                paused_listeners: Vec::new(),
                rudp_dirty: Vec::new(),
                rudp_tx: Vec::new(),
                rudp_flushed: Vec::new(),
                current: None,
                wake_pending: false,
            },
            bufs: Bufs {
                rbuf: Vec::new(),
                scratch: Vec::new(),
                #[cfg(target_os = "linux")]
                anc: crate::net::AncillaryBuf::new(),
                #[cfg(target_os = "linux")]
                rbuf2: Vec::new(),
                #[cfg(target_os = "linux")]
                anc2: crate::net::AncillaryBuf::new(),
            },
            events,
            carry_now: Vec::new(),
        })
    }

    /// Waits for readiness (at most `timeout`; `None` waits for ever),
    /// dispatches every ready socket and due timer to `handler`, and
    /// returns the number of callbacks made. See the [contract](Reactor#the-run_once-contract).
    pub fn run_once<H: Handler + ?Sized>(
        &mut self,
        handler: &mut H,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        // Unwinding costs nothing until a handler panics; then the reactor
        // puts itself back in order before the panic goes on.
        match panic::catch_unwind(AssertUnwindSafe(|| self.pass(handler, timeout))) {
            Ok(result) => result,
            Err(payload) => {
                let culprit = self.cx.current.take();
                self.recover_after_panic();
                if !self.cx.config.catch_panics {
                    panic::resume_unwind(payload)
                }
                let what = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(non-string panic payload)".into());
                match culprit {
                    Some(id) => {
                        log::error!("handler panicked serving {id}: {what}; closing it");
                        // Reported through on_close on the next pass.
                        self.cx.close_now(id, CloseReason::HandlerPanicked);
                    }
                    None => log::error!("handler panicked (timer or wake-up callback): {what}"),
                }
                Ok(0)
            }
        }
    }

    /// Leaves a consistent, idle reactor after a handler panicked mid-pass:
    /// closed sockets' slots are freed, and every socket that had an event
    /// in the interrupted pass is served on the next call without waiting
    /// for a new edge (their events would otherwise be lost: mio is
    /// edge-triggered).
    fn recover_after_panic(&mut self) {
        let cx = &mut self.cx;
        cx.current = None;
        cx.dispatching = false;
        cx.now.set(None);
        for index in cx.to_free.drain(..) {
            cx.sockets.remove(index);
        }
        // Reliable-UDP messages not yet delivered may still lie in the
        // receive buffer, which the next pass reuses: copy them out (they
        // are delivered on the next pass).
        for entry in cx.sockets.iter_mut().map(|(_, e)| e) {
            if let Some(Sock::Rudp(rs)) = entry.sock.as_mut() {
                rs.ep.materialize(&self.bufs.rbuf);
            }
        }
        if self.events.iter().any(|ev| ev.token() == WAKER_TOKEN) {
            cx.wake_pending = true;
        }
        let pending = self
            .carry_now
            .drain(..)
            .chain(self.events.iter().map(|ev| id_of(ev.token())));
        for id in pending {
            if let Some(e) = cx.live_entry_mut(id) {
                if !e.carried {
                    e.carried = true;
                    e.served_tick = 0;
                    cx.carry.push(id);
                }
            }
        }
        self.events.clear();
    }

    fn pass<H: Handler + ?Sized>(
        &mut self,
        handler: &mut H,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let Reactor {
            cx,
            events,
            bufs,
            carry_now,
        } = self;
        cx.run_once_calls += 1;
        let wait = compute_wait(cx, timeout);
        if let Err(e) = cx.poll.poll(events, wait) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
            // A signal: treat as a wake-up with no events.
            events.clear();
        }
        cx.now.set(None);
        cx.tick += 1;
        cx.dispatching = true;
        if bufs.rbuf.len() < cx.rbuf_needed {
            // Zeroed memory straight from the allocator: pages are only
            // touched (made resident) as messages are written into them.
            bufs.rbuf = vec![0; cx.rbuf_needed];
        }
        let before = cx.callbacks;
        // Closes that happened between passes (a failed send, a panic)
        // are reported first.
        finish_callback(cx, handler);

        // Sockets cut off by their budget last call come first.
        std::mem::swap(carry_now, &mut cx.carry);
        for &id in carry_now.iter() {
            if let Some(e) = cx.live_entry_mut(id) {
                e.carried = false;
            }
            cx.current = Some(id);
            serve_readable(cx, bufs, handler, id, false);
        }
        carry_now.clear();

        for ev in events.iter() {
            if ev.token() == WAKER_TOKEN {
                cx.callbacks += 1;
                handler.on_wake(cx);
                finish_callback(cx, handler);
                continue;
            }
            let id = id_of(ev.token());
            let Some(kind) = cx.live_entry_mut(id).map(|e| e.kind) else {
                continue; // a socket closed earlier in this pass
            };
            cx.current = Some(id);
            if kind == SocketKind::Tcp {
                if ev.is_writable() || ev.is_error() || ev.is_write_closed() {
                    tcp::conn_writable(cx, handler, id);
                }
            } else if ev.is_writable() && cx.disarm_writable(id) {
                cx.callbacks += 1;
                handler.on_writable(cx, id);
                finish_callback(cx, handler);
            }
            if ev.is_readable() || ev.is_error() || ev.is_read_closed() {
                let trust_short_read = !(ev.is_error() || ev.is_read_closed());
                serve_readable(cx, bufs, handler, id, trust_short_read);
            }
        }

        // Due timers, in deadline order. Timers set by these callbacks for
        // `now` or earlier fire in this pass too.
        let now = if cx.timers.len() > 0 {
            Some(cx.now())
        } else {
            None
        };
        cx.current = None;
        if std::mem::take(&mut cx.wake_pending) {
            cx.callbacks += 1;
            handler.on_wake(cx);
            finish_callback(cx, handler);
        }
        while let Some((key, target)) = now.and_then(|now| cx.timers.pop_due(now)) {
            cx.current = match target {
                TimerTarget::FrameIdle(id) | TimerTarget::Rudp(id) => Some(id),
                _ => None,
            };
            match target {
                TimerTarget::User => {
                    cx.callbacks += 1;
                    handler.on_timer(cx, TimerId(key));
                    finish_callback(cx, handler);
                }
                TimerTarget::FrameIdle(id) => tcp::frame_idle_due(cx, handler, id, cx.now()),
                TimerTarget::ResumeAccept(lid) => {
                    cx.paused_listeners.retain(|&l| l != lid);
                    listener::resume(cx, lid);
                }
                TimerTarget::Rudp(id) => {
                    let now = cx.now();
                    rudp::timeout_due(cx, &mut bufs.scratch, handler, id, now)
                }
            }
        }

        cx.current = None;
        // Output produced during the pass goes out now, coalesced: TCP
        // frames with one writev per connection, reliable-UDP datagrams
        // with sendmmsg.
        rudp::flush_dirty(cx);
        // Sending can end a reliable-UDP connection (its CLOSE went out):
        // report such events now, and send what the handler sends back.
        while let Some(id) = cx.rudp_flushed.pop() {
            rudp::deliver_events(cx, &[], &mut bufs.scratch, handler, id);
            rudp::flush_dirty(cx);
        }
        tcp::flush_output(cx, handler);

        cx.dispatching = false;
        cx.now.set(None);
        for index in cx.to_free.drain(..) {
            cx.sockets.remove(index);
        }
        Ok((cx.callbacks - before) as usize)
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        let ids: Vec<SocketId> = self.cx.socket_ids().collect();
        self.cx.dispatching = false;
        for id in ids {
            self.cx.close_now(id, CloseReason::Local);
        }
    }
}

fn compute_wait(cx: &mut Ctx, timeout: Option<Duration>) -> Option<Duration> {
    if cx.has_work_now() {
        return Some(Duration::ZERO);
    }
    let mut wait = timeout;
    if let Some(deadline) = cx.timers.next_deadline() {
        let until = deadline.saturating_duration_since(Instant::now());
        wait = Some(wait.map_or(until, |w| w.min(until)));
    }
    // Round up to whole milliseconds (epoll's unit): a timer 300 µs away
    // costs one 1 ms sleep, never a busy loop of zero-timeout polls.
    wait.map(|w| {
        let ms = w.subsec_nanos().div_ceil(1_000_000);
        Duration::from_secs(w.as_secs()) + Duration::from_millis(u64::from(ms))
    })
}

/// Delivers `on_close` for sockets closed by the callback that just ran
/// (and by those callbacks, until none are left).
fn finish_callback<H: Handler + ?Sized>(cx: &mut Ctx, handler: &mut H) {
    while let Some((id, reason)) = cx.closed.pop() {
        cx.callbacks += 1;
        handler.on_close(cx, id, reason);
    }
}

/// Errors a datagram socket reports on receive that concern one earlier
/// datagram (ICMP), not the socket: reported, and reading goes on.
fn is_transient_recv_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNREFUSED
                | libc::ECONNRESET
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::ENETDOWN
                | libc::EPERM
                | libc::EMSGSIZE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EPROTO
                | libc::ETIMEDOUT
        )
    )
}

/// Serves a readable socket once per pass: reads (or accepts) until
/// `WouldBlock` or the budget; a socket cut off by its budget is carried to
/// the next pass.
fn serve_readable<H: Handler + ?Sized>(
    cx: &mut Ctx,
    bufs: &mut Bufs,
    handler: &mut H,
    id: SocketId,
    trust_short_read: bool,
) {
    let tick = cx.tick;
    let kind = match cx.live_entry_mut(id) {
        Some(e) if e.served_tick != tick => {
            e.served_tick = tick;
            e.kind
        }
        _ => return,
    };
    let more = match kind {
        SocketKind::TcpListener => listener::drain(cx, handler, id),
        SocketKind::Tcp => tcp::drain_conn(cx, &mut bufs.rbuf, handler, id, trust_short_read),
        SocketKind::Rudp => rudp::drain(
            cx,
            &mut bufs.rbuf,
            &mut bufs.scratch,
            handler,
            id,
            trust_short_read,
        ),
        #[cfg(target_os = "linux")]
        SocketKind::SeqpacketListener => listener::drain(cx, handler, id),
        #[cfg(target_os = "linux")]
        SocketKind::Seqpacket => seqpacket::drain_conn(cx, bufs, handler, id, trust_short_read),
        _ => drain_dgram(cx, bufs, handler, id),
    };
    if more {
        if let Some(e) = cx.live_entry_mut(id) {
            if !e.carried {
                e.carried = true;
                cx.carry.push(id);
            }
        }
    }
}

/// Reads a datagram socket (or signalfd) until `WouldBlock` or its budget
/// is spent; `true` if the budget ran out.
fn drain_dgram<H: Handler + ?Sized>(
    cx: &mut Ctx,
    bufs: &mut Bufs,
    handler: &mut H,
    id: SocketId,
) -> bool {
    let budget = cx.config.read_budget;
    for _ in 0..budget {
        let Some(entry) = cx.live_entry_mut(id) else {
            return false;
        };
        #[cfg(target_os = "linux")]
        if let Some(Sock::Signals(fd, _)) = entry.sock.as_ref() {
            match sys::read_signal(fd.as_raw_fd()) {
                Ok(Some(signal)) => {
                    cx.callbacks += 1;
                    handler.on_signal(cx, id, signal);
                    finish_callback(cx, handler);
                    continue;
                }
                Ok(None) => return false,
                Err(e) => {
                    cx.close_now(id, CloseReason::Error(e));
                    finish_callback(cx, handler);
                    return false;
                }
            }
        }
        let max = entry.max_msg;
        let mut buf = MsgBuf::borrowed(&mut bufs.rbuf).with_quota(Some(max));
        let mut raw = sys::RawAddr::new();
        let (fd, kind_max) = match entry.sock.as_ref() {
            Some(Sock::Udp(s)) => (s.as_raw_fd(), Some(MAX_UDP_PAYLOAD)),
            Some(Sock::UnixDgram(s)) => (s.as_raw_fd(), None),
            _ => return false,
        };
        #[cfg(target_os = "linux")]
        let (res, mut anc) = if entry.pass_fds {
            match crate::net::recv_with_ancillary(
                fd,
                crate::net::MsgKind::Datagram,
                &mut buf,
                &mut bufs.anc,
                Some(&mut raw),
            ) {
                Ok((r, a)) => (Ok(r), Some(a)),
                Err(e) => (Err(e), None),
            }
        } else {
            (recv_msg_fd(fd, kind_max, &mut buf, &mut raw), None)
        };
        #[cfg(not(target_os = "linux"))]
        let res = recv_msg_fd(fd, kind_max, &mut buf, &mut raw);
        match res {
            Ok(RecvResult::Fit(())) | Ok(RecvResult::Spilled(())) => {
                entry.stats.messages_in += 1;
                entry.stats.bytes_in += buf.len() as u64;
                let from = match peer_addr(entry.kind, &raw) {
                    Ok(a) => a,
                    Err(e) => {
                        entry.stats.recv_errors += 1;
                        cx.callbacks += 1;
                        handler.on_error(cx, id, Error::Io(e));
                        finish_callback(cx, handler);
                        continue;
                    }
                };
                cx.callbacks += 1;
                let msg = Datagram {
                    data: buf.filled(),
                    from: &from,
                    #[cfg(target_os = "linux")]
                    anc: anc.as_mut(),
                };
                handler.on_datagram(cx, id, msg);
                #[cfg(target_os = "linux")]
                if let Some(unclaimed) = anc.take().map(|a| a.fds().len() as u64).filter(|&n| n > 0)
                {
                    if let Some(e) = cx.live_entry_mut(id) {
                        e.stats.fds_closed_unclaimed += unclaimed;
                    }
                }
                finish_callback(cx, handler);
            }
            Ok(RecvResult::QuotaExceeded(q, ())) => {
                entry.stats.dropped_over_quota += 1;
                log::debug!("{id}: dropped a {} B datagram (quota {})", q.size, q.quota);
                cx.callbacks += 1;
                handler.on_error(cx, id, Error::QuotaExceeded(q));
                finish_callback(cx, handler);
            }
            Ok(RecvResult::EndOfStream) => return false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if is_transient_recv_error(&e) => {
                entry.stats.recv_errors += 1;
                cx.callbacks += 1;
                handler.on_error(cx, id, Error::from_send(e, 0));
                finish_callback(cx, handler);
            }
            Err(e) => {
                log::warn!("{id}: receive failed, closing: {e}");
                cx.close_now(id, CloseReason::Error(e));
                finish_callback(cx, handler);
                return false;
            }
        }
    }
    // Budget spent with data possibly left: serve it next call.
    true
}

/// The sender of a datagram just read from a socket of `kind`.
fn peer_addr(kind: SocketKind, raw: &sys::RawAddr) -> io::Result<PeerAddr> {
    match kind {
        SocketKind::Udp => raw
            .to_inet()
            .map(PeerAddr::Inet)
            .ok_or_else(crate::addr::not_inet),
        _ => Ok(PeerAddr::Unix(UnixAddr::from_received(raw.to_sock_addr()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let id = SocketId {
            index: 12345,
            gen: 0xdead_beef,
        };
        assert_eq!(id_of(token_of(id)), id);
        assert_ne!(token_of(id), WAKER_TOKEN);
    }

    #[test]
    fn waits_round_up_to_whole_milliseconds() {
        let mut r = Reactor::new().unwrap();
        assert_eq!(
            compute_wait(&mut r.cx, Some(Duration::from_micros(300))),
            Some(Duration::from_millis(1))
        );
        assert_eq!(
            compute_wait(&mut r.cx, Some(Duration::from_micros(1500))),
            Some(Duration::from_millis(2))
        );
        assert_eq!(
            compute_wait(&mut r.cx, Some(Duration::ZERO)),
            Some(Duration::ZERO)
        );
        assert_eq!(compute_wait(&mut r.cx, None), None);
        r.set_timer(Duration::from_secs(10));
        let w = compute_wait(&mut r.cx, None).unwrap();
        assert!(
            w > Duration::from_secs(9) && w <= Duration::from_secs(10),
            "{w:?}"
        );
    }
}

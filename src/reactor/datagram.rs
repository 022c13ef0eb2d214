//! Datagram sockets in the reactor: UDP (IPv4 and IPv6) and Unix datagram
//! sockets — opening and adopting them, sending, and the read path.
//!
//! # Read path
//!
//! Each datagram is read whole into the reactor's one receive buffer and
//! handed to [`Handler::on_datagram`] borrowed from it: one system call per
//! datagram in the common case, no allocation. A datagram over the
//! socket's quota is consumed and reported ([`Error::QuotaExceeded`]),
//! never cut and never left to wedge the socket. A Unix socket with
//! [`DgramOptions::pass_fds`] reads each datagram with a control buffer, so
//! passed descriptors arrive as `OwnedFd`s.
//!
//! # Sending
//!
//! Sends are immediate and never queued by msgloop: a full kernel queue
//! (or a full Unix peer) gives [`Error::WouldBlock`] at once and
//! [`Handler::on_writable`] follows once the socket can send again.

use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
#[cfg(target_os = "linux")]
use std::os::fd::BorrowedFd;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use socket2::{Domain, SockRef, Socket, Type};

use super::ctx::Ctx;
use super::options::DgramOptions;
use super::table::Sock;
use super::Bufs;
use crate::addr::private::Dest;
use crate::addr::{Destination, PeerAddr, ToUnixAddr, UnixAddr};
use crate::error::{context, AddError, Error};
use crate::handler::{Datagram, Handler, SocketId, SocketKind};
use crate::recv::{recv_msg_fd, MsgBuf, RecvResult, MAX_UDP_PAYLOAD};
use crate::socket_file::{self, SocketFile};
use crate::sys;

/// A UDP or Unix datagram socket and its settings.
pub(super) struct Dgram {
    io: DgramIo,
    /// The largest datagram delivered (the quota).
    max_msg: usize,
    /// Unix sockets: read with a control buffer (fds, credentials).
    pass_fds: bool,
    /// UDP: read with control messages (offload trains, ECN, destination
    /// addresses), in batches.
    control: bool,
    /// UDP: receive offload is on (a read may hold a train).
    gro: bool,
    /// UDP: `send_batch` sends trains (segmentation offload); turned off
    /// for good when the kernel refuses one.
    gso: bool,
    /// UDP: the socket is IPv6 (control messages are `IPV6_*`).
    ipv6: bool,
    /// The socket file it created, removed when it closes.
    _file: Option<SocketFile>,
}

/// The ECN codepoint of a datagram: the low two bits of its IP traffic
/// class (RFC 3168).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ecn {
    /// Not ECN-capable transport (`00`).
    NotEct,
    /// ECN-capable transport, ECT(1) (`01`).
    Ect1,
    /// ECN-capable transport, ECT(0) (`10`).
    Ect0,
    /// Congestion experienced (`11`): a router marked it instead of
    /// dropping it.
    Ce,
}

impl Ecn {
    /// The codepoint of a traffic class byte.
    pub fn from_tos(tos: u8) -> Ecn {
        match tos & 0b11 {
            0b00 => Ecn::NotEct,
            0b01 => Ecn::Ect1,
            0b10 => Ecn::Ect0,
            _ => Ecn::Ce,
        }
    }

    /// The two bits.
    pub fn bits(self) -> u8 {
        match self {
            Ecn::NotEct => 0b00,
            Ecn::Ect1 => 0b01,
            Ecn::Ect0 => 0b10,
            Ecn::Ce => 0b11,
        }
    }
}

/// One outgoing UDP datagram for [`Ctx::send_batch`], with what may be set
/// per datagram: where it goes, its ECN codepoint, the address it is sent
/// from.
///
/// ```
/// use msgloop::{Ecn, Transmit};
/// let to = "127.0.0.1:9".parse().unwrap();
/// let t = Transmit::new(b"hello", to).ecn(Ecn::Ect0);
/// assert_eq!(t.ecn, Some(Ecn::Ect0));
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Transmit<'a> {
    /// The payload.
    pub data: &'a [u8],
    /// The destination; `None`: the connected peer.
    pub to: Option<SocketAddr>,
    /// The ECN codepoint to send with (Linux); `None`: the socket's default.
    pub ecn: Option<Ecn>,
    /// The source address (Linux): for a socket bound to `0.0.0.0` or
    /// `::`, which of the host's addresses the datagram leaves from — the
    /// one a request was sent to ([`Datagram::dst_addr`]).
    pub source: Option<IpAddr>,
}

impl<'a> Transmit<'a> {
    /// `data` to `to`, with the socket's defaults.
    pub fn new(data: &'a [u8], to: SocketAddr) -> Transmit<'a> {
        Transmit {
            data,
            to: Some(to),
            ecn: None,
            source: None,
        }
    }

    /// `data` to the connected peer.
    pub fn connected(data: &'a [u8]) -> Transmit<'a> {
        Transmit {
            data,
            to: None,
            ecn: None,
            source: None,
        }
    }

    /// Sets [`ecn`](field@Transmit::ecn).
    #[must_use]
    pub fn ecn(mut self, ecn: Ecn) -> Transmit<'a> {
        self.ecn = Some(ecn);
        self
    }

    /// Sets [`source`](field@Transmit::source).
    #[must_use]
    pub fn source(mut self, source: IpAddr) -> Transmit<'a> {
        self.source = Some(source);
        self
    }

    /// Whether `next` can follow this one in a train: same destination and
    /// metadata.
    fn same_path(&self, next: &Transmit<'_>) -> bool {
        self.to == next.to && self.ecn == next.ecn && self.source == next.source
    }
}

enum DgramIo {
    Udp(mio::net::UdpSocket),
    Unix(mio::net::UnixDatagram),
}

impl Dgram {
    pub(super) fn source(&mut self) -> &mut dyn mio::event::Source {
        match &mut self.io {
            DgramIo::Udp(s) => s,
            DgramIo::Unix(s) => s,
        }
    }

    pub(super) fn sock_ref(&self) -> SockRef<'_> {
        match &self.io {
            DgramIo::Udp(s) => SockRef::from(s),
            DgramIo::Unix(s) => SockRef::from(s),
        }
    }

    fn fd(&self) -> RawFd {
        match &self.io {
            DgramIo::Udp(s) => s.as_raw_fd(),
            DgramIo::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl Ctx {
    /// Binds a UDP socket (IPv4 or IPv6; an IPv6 one is dual-stack where
    /// the system allows) and adds it; the first address that binds wins.
    /// Port 0 picks a free port ([`local_addr`](Ctx::local_addr) tells
    /// which). Datagrams arrive at [`Handler::on_datagram`].
    pub fn bind_udp<A: ToSocketAddrs>(&mut self, addr: A) -> Result<SocketId, Error> {
        self.bind_udp_with(addr, &DgramOptions::default())
    }

    /// [`bind_udp`](Ctx::bind_udp) with options.
    pub fn bind_udp_with<A: ToSocketAddrs>(
        &mut self,
        addr: A,
        opts: &DgramOptions,
    ) -> Result<SocketId, Error> {
        let sock = bind_udp_socket(addr, opts, "UDP")?;
        Ok(self.add_udp_with(sock, opts)?)
    }

    /// Adopts a bound UDP socket you created and configured (a socket2
    /// `Socket`, a std `UdpSocket`, an `OwnedFd`...). It is made
    /// non-blocking. On failure the socket comes back in the error.
    pub fn add_udp<S: Into<Socket>>(&mut self, socket: S) -> Result<SocketId, AddError> {
        self.add_udp_with(socket, &DgramOptions::default())
    }

    /// [`add_udp`](Ctx::add_udp) with options (buffer sizes are applied).
    pub fn add_udp_with<S: Into<Socket>>(
        &mut self,
        socket: S,
        opts: &DgramOptions,
    ) -> Result<SocketId, AddError> {
        self.add_dgram(socket.into(), opts, false, None)
    }

    /// Binds a Unix datagram socket at `addr` — a path, or on Linux an
    /// abstract name ([`UnixAddr::from_abstract_name`]) — and adds it. The
    /// socket file is removed when the socket closes. Binding over an
    /// existing path fails with `AddrInUse`; see
    /// [`DgramOptions::unlink_stale`].
    ///
    /// A Unix datagram peer can only be answered if it is bound itself: a
    /// client that wants replies binds a path of its own too.
    pub fn bind_unix_datagram<A: ToUnixAddr>(&mut self, addr: A) -> Result<SocketId, Error> {
        self.bind_unix_datagram_with(addr, &DgramOptions::default())
    }

    /// [`bind_unix_datagram`](Ctx::bind_unix_datagram) with options.
    pub fn bind_unix_datagram_with<A: ToUnixAddr>(
        &mut self,
        addr: A,
        opts: &DgramOptions,
    ) -> Result<SocketId, Error> {
        let addr = addr.to_unix_addr()?;
        let bound = (|| {
            let sock = Socket::new(Domain::UNIX, Type::DGRAM.nonblocking().cloexec(), None)?;
            let path = addr.as_pathname();
            if let (Some(p), true) = (path, opts.unlink_stale) {
                socket_file::remove_stale(p)?;
            }
            sock.bind(addr.as_sock_addr())?;
            let file = match (path, opts.unlink_on_close) {
                (Some(p), true) => SocketFile::capture(p),
                _ => None,
            };
            Ok((sock, file))
        })();
        let (sock, file) =
            bound.map_err(|e| context(e, format_args!("bind Unix datagram {addr}")))?;
        Ok(self.add_dgram(sock, opts, true, file)?)
    }

    /// An unbound Unix datagram socket: it can send (and
    /// [`connect`](Ctx::connect)), but peers see it as unnamed and cannot
    /// reply.
    pub fn unbound_unix_datagram(&mut self) -> Result<SocketId, Error> {
        let sock = Socket::new(Domain::UNIX, Type::DGRAM.nonblocking().cloexec(), None)?;
        Ok(self.add_unix_datagram(sock)?)
    }

    /// Adopts a Unix datagram socket you created (e.g. one end of
    /// `UnixDatagram::pair()`). On failure the socket comes back in the
    /// error.
    pub fn add_unix_datagram<S: Into<Socket>>(&mut self, socket: S) -> Result<SocketId, AddError> {
        self.add_unix_datagram_with(socket, &DgramOptions::default())
    }

    /// [`add_unix_datagram`](Ctx::add_unix_datagram) with options.
    pub fn add_unix_datagram_with<S: Into<Socket>>(
        &mut self,
        socket: S,
        opts: &DgramOptions,
    ) -> Result<SocketId, AddError> {
        self.add_dgram(socket.into(), opts, true, None)
    }

    fn add_dgram(
        &mut self,
        socket: Socket,
        opts: &DgramOptions,
        unix: bool,
        file: Option<SocketFile>,
    ) -> Result<SocketId, AddError> {
        let (op, kind) = if unix {
            ("add_unix_datagram", SocketKind::UnixDatagram)
        } else {
            ("add_udp", SocketKind::Udp)
        };
        if let Err(error) = prepare_dgram(&socket, opts, unix, op) {
            return Err(AddError { socket, error });
        }
        let max = opts.max_message_len.unwrap_or(if unix {
            self.config.unix_max_message_len
        } else {
            MAX_UDP_PAYLOAD
        });
        let max = if unix { max } else { max.min(MAX_UDP_PAYLOAD) };
        self.rbuf_needed = self.rbuf_needed.max(max);
        let pass_fds = unix && opts.pass_fds;
        let (gro, gso, ipv6) = if unix {
            (false, false, false)
        } else {
            udp_extras(&socket, opts)
        };
        let control = gro || (!unix && (opts.recv_ecn || opts.recv_dst_addr));
        if gro {
            self.rbuf_needed = self.rbuf_needed.max(GRO_SLOTS * GRO_SLOT);
        }
        let build = move |io| {
            Sock::Dgram(Dgram {
                io,
                max_msg: max,
                pass_fds,
                control,
                gro,
                gso,
                ipv6,
                _file: file,
            })
        };
        let handed_back = |fd: OwnedFd, error| AddError {
            socket: Socket::from(fd),
            error,
        };
        if unix {
            let s = mio::net::UnixDatagram::from_std(socket.into());
            self.insert(kind, s, |s| build(DgramIo::Unix(s)))
                .map_err(|(s, e)| handed_back(s.into(), e))
        } else {
            let s = mio::net::UdpSocket::from_std(socket.into());
            self.insert(kind, s, |s| build(DgramIo::Udp(s)))
                .map_err(|(s, e)| handed_back(s.into(), e))
        }
    }

    /// Connects a datagram socket to `peer`: [`send`](Ctx::send) then goes
    /// there, and only datagrams from `peer` are received.
    pub fn connect<D: Destination>(&mut self, sock: SocketId, peer: D) -> Result<(), Error> {
        let addr = peer.dest()?.to_sock_addr();
        let d = self.dgram(sock, "connect")?;
        d.sock_ref()
            .connect(&addr)
            .map_err(|e| Error::Io(context(e, format_args!("connect {sock}"))))
    }

    /// Sends one datagram to `to`: all of it, or nothing.
    ///
    /// A full queue gives [`Error::WouldBlock`] and arms
    /// [`Handler::on_writable`]; nothing is queued — datagram sockets have
    /// no send queue in msgloop. A datagram larger than the socket can send
    /// gives [`Error::TooLarge`].
    pub fn send_to<D: Destination>(
        &mut self,
        sock: SocketId,
        data: &[u8],
        to: D,
    ) -> Result<(), Error> {
        let dest = to.dest()?;
        let raw = match &dest {
            Dest::Inet(a) => sys::RawDest::inet(a),
            Dest::Sock(a) => sys::RawDest::Sock(a),
        };
        let res = sys::send_to(self.dgram(sock, "send_to")?.fd(), data, &raw);
        self.after_send(sock, res, data.len())
    }

    /// Sends one datagram on a connected socket.
    pub fn send(&mut self, sock: SocketId, data: &[u8]) -> Result<(), Error> {
        let res = sys::send(self.dgram(sock, "send")?.fd(), data);
        self.after_send(sock, res, data.len())
    }

    /// Sends one datagram made of `parts` (a header and a payload, say) to
    /// `to`, without copying them together first.
    pub fn send_to_vectored<D: Destination>(
        &mut self,
        sock: SocketId,
        parts: &[IoSlice<'_>],
        to: D,
    ) -> Result<(), Error> {
        let dest = to.dest()?;
        let raw = match &dest {
            Dest::Inet(a) => sys::RawDest::inet(a),
            Dest::Sock(a) => sys::RawDest::Sock(a),
        };
        self.send_parts(sock, parts, Some(&raw), "send_to_vectored")
    }

    /// Sends one datagram made of `parts` on a connected socket.
    pub fn send_vectored(&mut self, sock: SocketId, parts: &[IoSlice<'_>]) -> Result<(), Error> {
        self.send_parts(sock, parts, None, "send_vectored")
    }

    fn send_parts(
        &mut self,
        sock: SocketId,
        parts: &[IoSlice<'_>],
        dest: Option<&sys::RawDest<'_>>,
        op: &'static str,
    ) -> Result<(), Error> {
        let fd = self.dgram(sock, op)?.fd();
        let len = parts.iter().map(|p| p.len()).sum();
        let res = sys::send_vectored(fd, parts, dest, sys::SEND_FLAGS);
        self.after_send(sock, res, len)
    }

    /// Sends many UDP datagrams with as few system calls as possible
    /// (`sendmmsg`), each with its own destination, ECN codepoint and
    /// source address ([`Transmit`]). With
    /// [`DgramOptions::offload`] on, consecutive datagrams of one size to
    /// one destination (the last may be shorter) leave as one kernel packet
    /// (`UDP_SEGMENT`), cut into datagrams by the kernel or the device;
    /// their bytes are not copied.
    ///
    /// Returns how many of `datagrams` were sent — a prefix — or
    /// [`Error::WouldBlock`] if none could be (then
    /// [`Handler::on_writable`] follows). A datagram the kernel refuses for
    /// its size gives [`Error::TooLarge`] once nothing before it is left.
    pub fn send_batch(
        &mut self,
        sock: SocketId,
        datagrams: &[Transmit<'_>],
    ) -> Result<usize, Error> {
        let d = self.dgram(sock, "send_batch")?;
        if !matches!(d.io, DgramIo::Udp(_)) {
            return Err(Error::WrongKind {
                op: "send_batch",
                kind: SocketKind::UnixDatagram,
            });
        }
        let (fd, ipv6) = (d.fd(), d.ipv6);
        let mut sent = 0;
        let mut bytes = 0u64;
        let mut trains_sent = 0u64;
        let mut refused = false;
        let mut error = None;
        while sent < datagrams.len() {
            let gso = self.dgram(sock, "send_batch")?.gso;
            match send_chunk(fd, ipv6, gso, &datagrams[sent..]) {
                Ok((n, b, t)) => {
                    sent += n;
                    bytes += b;
                    trains_sent += t;
                }
                Err(e) if gso && gso_refused(&e) => {
                    // Sent again datagram by datagram on the next turn.
                    if let Some(Sock::Dgram(d)) = self.entry_mut(sock)?.sock.as_mut() {
                        d.gso = false;
                    }
                    refused = true;
                    log::info!("{sock}: UDP segmentation offload refused ({e}); single datagrams");
                }
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let entry = self.entry_mut(sock)?;
        entry.stats.messages_out += sent as u64;
        entry.stats.bytes_out += bytes;
        entry.stats.trains_sent += trains_sent;
        entry.stats.offload_refused += u64::from(refused);
        match error {
            None => Ok(sent),
            Some(_) if sent > 0 => Ok(sent),
            Some(e) => {
                let len = datagrams.first().map_or(0, |t| t.data.len());
                self.after_send(sock, Err(e), len).map(|()| 0)
            }
        }
    }

    /// Sends one datagram with passed descriptors (`SCM_RIGHTS`) on a Unix
    /// datagram socket, to `to`.
    #[cfg(target_os = "linux")]
    pub fn send_to_with_fds<A: ToUnixAddr>(
        &mut self,
        sock: SocketId,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
        to: A,
    ) -> Result<(), Error> {
        let to = to.to_unix_addr()?;
        self.send_unix_with_fds(sock, data, fds, Some(&to), "send_to_with_fds")
    }

    /// Sends one datagram with passed descriptors on a connected Unix
    /// datagram socket.
    #[cfg(target_os = "linux")]
    pub fn send_with_fds(
        &mut self,
        sock: SocketId,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), Error> {
        self.send_unix_with_fds(sock, data, fds, None, "send_with_fds")
    }

    #[cfg(target_os = "linux")]
    fn send_unix_with_fds(
        &mut self,
        sock: SocketId,
        data: &[u8],
        fds: &[BorrowedFd<'_>],
        to: Option<&UnixAddr>,
        op: &'static str,
    ) -> Result<(), Error> {
        use crate::net::{self, MsgKind, SendAncillary};
        let d = self.dgram(sock, op)?;
        if !matches!(d.io, DgramIo::Unix(_)) {
            return Err(Error::WrongKind {
                op,
                kind: SocketKind::Udp,
            });
        }
        let dest = to.map(|a| sys::RawDest::Sock(a.as_sock_addr()));
        let anc = SendAncillary::new().with_fds(fds);
        let res = net::send_with_ancillary(
            d.fd(),
            MsgKind::Datagram,
            &[io::IoSlice::new(data)],
            &anc,
            dest.as_ref(),
        );
        self.after_send(sock, res, data.len())
    }

    /// The datagram socket `id` names, for `op`.
    fn dgram(&self, id: SocketId, op: &'static str) -> Result<&Dgram, Error> {
        let e = self.entry(id)?;
        match &e.sock {
            Some(Sock::Dgram(d)) => Ok(d),
            _ => Err(Error::WrongKind { op, kind: e.kind }),
        }
    }
}

/// Receive offload slot: room for a whole coalesced train.
const GRO_SLOT: usize = 64 << 10;

/// Receive slots per `recvmmsg` on a socket with receive offload.
const GRO_SLOTS: usize = 8;

/// Most datagrams in a segmentation-offload train (the kernel's
/// `UDP_MAX_SEGMENTS`, 64 before Linux 6.9).
const MAX_TRAIN: usize = 64;

/// Most bytes in one train: one UDP payload, with room to spare.
const MAX_TRAIN_BYTES: usize = 65_000;

/// Turns on what a plain UDP socket's options ask for beyond the basics:
/// receive offload, traffic classes, destination addresses. Returns
/// whether it reads trains, sends trains, and is IPv6. (Best effort for
/// offload: a kernel without it reads and sends single datagrams.)
fn udp_extras(socket: &Socket, opts: &DgramOptions) -> (bool, bool, bool) {
    let ipv6 = socket.local_addr().is_ok_and(|a| a.is_ipv6());
    #[cfg(target_os = "linux")]
    {
        let fd = socket.as_raw_fd();
        let (mut gro, mut gso) = (false, false);
        if opts.offload == Some(true) {
            gso = sys::udp_gso_supported(fd);
            gro = match sys::set_udp_gro(fd) {
                Ok(()) => true,
                Err(e) => {
                    log::debug!("UDP receive offload: {e}");
                    false
                }
            };
        }
        if opts.recv_ecn {
            if let Err(e) = sys::set_recv_tos(fd, ipv6) {
                log::warn!("UDP: ECN codepoints will not be reported: {e}");
            }
        }
        if opts.recv_dst_addr {
            if let Err(e) = sys::set_recv_pktinfo(fd, ipv6) {
                log::warn!("UDP: destination addresses will not be reported: {e}");
            }
        }
        (gro, gso, ipv6)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = opts;
        (false, false, ipv6)
    }
}

/// Errors with which the kernel refuses a segmentation-offload train where
/// single datagrams may still go.
fn gso_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EMSGSIZE | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOPROTOOPT)
    )
}

/// Datagrams handed to one `sendmmsg` at most (iovecs on the stack).
const CHUNK: usize = 256;

/// One `sendmmsg` of the first datagrams of `datagrams`, consecutive
/// equal-size ones to one destination as trains when `gso`. Returns the
/// datagrams sent, their bytes, and the trains among the entries sent.
#[cfg(target_os = "linux")]
fn send_chunk(
    fd: RawFd,
    ipv6: bool,
    gso: bool,
    datagrams: &[Transmit<'_>],
) -> io::Result<(usize, u64, u64)> {
    let datagrams = &datagrams[..datagrams.len().min(CHUNK)];
    let mut iov = [IoSlice::new(&[]); CHUNK];
    for (s, t) in iov.iter_mut().zip(datagrams) {
        *s = IoSlice::new(t.data);
    }
    // Entries: ranges of `datagrams`, each one datagram or a train.
    let mut entries = [(0usize, 0usize); sys::mmsg::MAX_BATCH];
    let mut n = 0;
    let mut i = 0;
    while i < datagrams.len() && n < entries.len() {
        let first = &datagrams[i];
        let seg = first.data.len();
        let mut j = i + 1;
        let mut total = seg;
        if gso && seg > 0 && seg <= usize::from(u16::MAX) {
            while j < datagrams.len()
                && j - i < MAX_TRAIN
                && first.same_path(&datagrams[j])
                && datagrams[j].data.len() <= seg
                && total + datagrams[j].data.len() <= MAX_TRAIN_BYTES
            {
                total += datagrams[j].data.len();
                j += 1;
                if datagrams[j - 1].data.len() < seg {
                    break; // a shorter one ends the train
                }
            }
        }
        entries[n] = (i, j);
        n += 1;
        i = j;
    }
    let dests: Vec<Option<sys::RawDest<'static>>> = entries[..n]
        .iter()
        .map(|&(a, _)| datagrams[a].to.as_ref().map(sys::RawDest::inet))
        .collect();
    let mut out = [sys::mmsg::UdpOut {
        iov: &[],
        dest: None,
        segment: 0,
        tos: None,
        src: None,
        ipv6,
    }; sys::mmsg::MAX_BATCH];
    for (k, &(a, b)) in entries[..n].iter().enumerate() {
        let t = &datagrams[a];
        out[k] = sys::mmsg::UdpOut {
            iov: &iov[a..b],
            dest: dests[k].as_ref(),
            segment: if b - a > 1 { t.data.len() as u16 } else { 0 },
            tos: t.ecn.map(Ecn::bits),
            src: t.source,
            ipv6,
        };
    }
    let took = sys::mmsg::send_udp(fd, &out[..n])?;
    let took = took.max(1).min(n);
    let sent = entries[took - 1].1;
    let bytes = datagrams[..sent].iter().map(|t| t.data.len() as u64).sum();
    let trains = entries[..took].iter().filter(|(a, b)| b - a > 1).count() as u64;
    Ok((sent, bytes, trains))
}

/// One datagram per call where `sendmmsg` is missing.
#[cfg(not(target_os = "linux"))]
fn send_chunk(
    fd: RawFd,
    _ipv6: bool,
    _gso: bool,
    datagrams: &[Transmit<'_>],
) -> io::Result<(usize, u64, u64)> {
    let t = &datagrams[0];
    let dest = t.to.as_ref().map(sys::RawDest::inet);
    sys::send_vectored(fd, &[IoSlice::new(t.data)], dest.as_ref(), sys::SEND_FLAGS)?;
    Ok((1, t.data.len() as u64, 0))
}

/// Checks and configures a datagram socket before it is added.
fn prepare_dgram(
    socket: &Socket,
    opts: &DgramOptions,
    unix: bool,
    op: &'static str,
) -> Result<(), Error> {
    if socket.r#type()? != Type::DGRAM {
        return Err(invalid(op, "not a datagram socket"));
    }
    let family = socket.local_addr()?;
    if unix != (family.is_unix() || family.len() == 0) {
        return Err(invalid(
            op,
            if unix {
                "not a Unix-domain socket"
            } else {
                "not an IPv4/IPv6 socket"
            },
        ));
    }
    socket.set_nonblocking(true)?;
    apply_buffers(socket, opts)?;
    if opts.pass_fds {
        if !unix {
            return Err(invalid(op, "pass_fds applies to Unix sockets only"));
        }
        #[cfg(target_os = "linux")]
        socket.set_passcred(true)?;
        #[cfg(not(target_os = "linux"))]
        return Err(Error::Io(io::Error::new(
            io::ErrorKind::Unsupported,
            "passing fds through the reactor is implemented on Linux only",
        )));
    }
    Ok(())
}

fn invalid(op: &'static str, what: &str) -> Error {
    Error::Io(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{op}: {what}"),
    ))
}

/// A non-blocking UDP socket bound to the first of `addr` that binds,
/// with `opts` applied before binding (dual-stack for IPv6 where allowed).
/// Errors name `what` and the address.
pub(super) fn bind_udp_socket<A: ToSocketAddrs>(
    addr: A,
    opts: &DgramOptions,
    what: &str,
) -> io::Result<Socket> {
    let mut last = None;
    let addrs = addr
        .to_socket_addrs()
        .map_err(|e| context(e, format_args!("bind {what}: resolving the address")))?;
    for a in addrs {
        let attempt = (|| {
            let sock = Socket::new(
                Domain::for_address(a),
                Type::DGRAM.nonblocking().cloexec(),
                None,
            )?;
            if a.is_ipv6() {
                // Dual-stack if the system allows it; harmless otherwise.
                let _ = sock.set_only_v6(false);
            }
            apply_buffers(&sock, opts)?;
            sock.bind(&a.into())?;
            Ok(sock)
        })();
        match attempt {
            Ok(sock) => return Ok(sock),
            Err(e) => last = Some(context(e, format_args!("bind {what} {a}"))),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bind {what}: no address to bind"),
        )
    }))
}

/// Applies the buffer sizes and `SO_REUSEPORT` of `opts`.
pub(super) fn apply_buffers(sock: &Socket, opts: &DgramOptions) -> io::Result<()> {
    if opts.reuse_port {
        sock.set_reuse_port(true)?;
    }
    if let Some(n) = opts.recv_buffer_size {
        set_buffer(SockRef::from(sock), true, n)?;
    }
    if let Some(n) = opts.send_buffer_size {
        set_buffer(SockRef::from(sock), false, n)?;
    }
    Ok(())
}

/// Sets `SO_RCVBUF` (`recv`) or `SO_SNDBUF` to `n`; past the system's cap,
/// forced where the process may (Linux, `CAP_NET_ADMIN`).
pub(super) fn set_buffer(sock: SockRef<'_>, recv: bool, n: usize) -> io::Result<()> {
    let now = |s: &SockRef<'_>| {
        if recv {
            s.recv_buffer_size()
        } else {
            s.send_buffer_size()
        }
    };
    if now(&sock)? >= n {
        return Ok(());
    }
    if recv {
        sock.set_recv_buffer_size(n)?;
    } else {
        sock.set_send_buffer_size(n)?;
    }
    #[cfg(target_os = "linux")]
    if now(&sock)? < n {
        if let Err(e) = sys::set_buffer_force(sock.as_raw_fd(), recv, n) {
            log::debug!(
                "forcing a {n} B socket buffer: {e}; keeping {}",
                now(&sock)?
            );
        }
    }
    Ok(())
}

/// Reads a datagram socket until `WouldBlock` or its budget is spent;
/// `true` if the budget ran out.
pub(super) fn drain<H: Handler + ?Sized>(
    cx: &mut Ctx,
    bufs: &mut Bufs,
    handler: &mut H,
    id: SocketId,
) -> bool {
    #[cfg(target_os = "linux")]
    if matches!(cx.table.get(id).and_then(|e| e.sock.as_ref()), Some(Sock::Dgram(d)) if d.control) {
        return drain_with_control(cx, &mut bufs.rbuf, handler, id);
    }
    for _ in 0..cx.config.read_budget {
        let Some(Sock::Dgram(d)) = cx.table.get_mut(id).and_then(|e| e.sock.as_mut()) else {
            return false;
        };
        let (fd, max, pass_fds) = (d.fd(), d.max_msg, d.pass_fds);
        let is_udp = matches!(d.io, DgramIo::Udp(_));
        let mut buf = MsgBuf::borrowed(&mut bufs.rbuf).with_quota(Some(max));
        let mut raw = sys::RawAddr::new();
        #[cfg(target_os = "linux")]
        let (res, mut anc) = if pass_fds {
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
            (
                recv_msg_fd(fd, is_udp.then_some(MAX_UDP_PAYLOAD), &mut buf, &mut raw),
                None,
            )
        };
        #[cfg(not(target_os = "linux"))]
        let res = {
            let _ = pass_fds;
            recv_msg_fd(fd, is_udp.then_some(MAX_UDP_PAYLOAD), &mut buf, &mut raw)
        };
        let stats = &mut cx.table.get_mut(id).expect("looked up above").stats;
        match res {
            Ok(RecvResult::Fit(())) | Ok(RecvResult::Spilled(())) => {
                let from = if is_udp {
                    match raw.to_inet() {
                        Some(a) => PeerAddr::Inet(a),
                        None => {
                            stats.recv_errors += 1;
                            let e = Error::Io(crate::addr::not_inet());
                            cx.call(handler, |h, cx| h.on_error(cx, id, e));
                            continue;
                        }
                    }
                } else {
                    PeerAddr::Unix(UnixAddr::from_received(raw.to_sock_addr()))
                };
                stats.messages_in += 1;
                stats.bytes_in += buf.len() as u64;
                let msg = Datagram {
                    data: buf.filled(),
                    from: &from,
                    #[cfg(target_os = "linux")]
                    anc: anc.as_mut(),
                    tos: None,
                    dst: None,
                };
                #[cfg(target_os = "linux")]
                if msg.fds_truncated() {
                    stats.fds_cut += 1;
                }
                cx.call(handler, |h, cx| h.on_datagram(cx, id, msg));
                #[cfg(target_os = "linux")]
                if let Some(unclaimed) = anc.map(|a| a.fds().len() as u64).filter(|&n| n > 0) {
                    if let Some(e) = cx.table.get_mut(id) {
                        e.stats.fds_closed_unclaimed += unclaimed;
                    }
                }
            }
            Ok(RecvResult::QuotaExceeded(q, ())) => {
                stats.dropped_over_quota += 1;
                log::debug!("{id}: dropped a {} B datagram (quota {})", q.size, q.quota);
                cx.call(handler, |h, cx| h.on_error(cx, id, Error::QuotaExceeded(q)));
            }
            // Not a datagram socket's answer; nothing more to read.
            Ok(RecvResult::EndOfStream) => return false,
            Err(e) => {
                if !cx.recv_failed(handler, id, e) {
                    return false;
                }
            }
        }
    }
    // Budget spent with data possibly left: serve it next call.
    true
}

/// The datagrams a read with receive offload holds: `len` bytes of
/// `segment`-byte datagrams (the last one possibly shorter), or one
/// datagram (`segment` 0). A read that was cut (`truncated`) keeps only its
/// whole datagrams: the second value says one was cut.
fn segments(
    len: usize,
    segment: usize,
    truncated: bool,
) -> (impl Iterator<Item = std::ops::Range<usize>>, bool) {
    let step = if segment == 0 { len.max(1) } else { segment };
    // A cut read keeps its whole datagrams; without offload there is
    // nothing whole in it.
    let (whole, cut) = match (truncated, segment) {
        (false, _) => (len, false),
        (true, 0) => (0, true),
        (true, s) => (len - len % s, true),
    };
    let empty = len == 0 && !truncated;
    let it = (0..whole)
        .step_by(step)
        .map(move |at| at..(at + step).min(whole))
        .chain(empty.then_some(0..0));
    (it, cut)
}

/// Reads a UDP socket that asked for control messages (receive offload,
/// ECN codepoints, destination addresses) with `recvmmsg`, delivering each
/// datagram — each of a coalesced train — on its own. A train counts as
/// one read of the budget. `true` if the budget ran out.
#[cfg(target_os = "linux")]
fn drain_with_control<H: Handler + ?Sized>(
    cx: &mut Ctx,
    rbuf: &mut [u8],
    handler: &mut H,
    id: SocketId,
) -> bool {
    use std::mem::MaybeUninit;
    let mut budget = cx.config.read_budget;
    while budget > 0 {
        let Some(Sock::Dgram(d)) = cx.table.get(id).and_then(|e| e.sock.as_ref()) else {
            return false;
        };
        let (fd, max, gro) = (d.fd(), d.max_msg, d.gro);
        let slot = if gro { GRO_SLOT } else { MAX_UDP_PAYLOAD + 1 }.min(rbuf.len());
        let n_slots = (rbuf.len() / slot).clamp(1, GRO_SLOTS).min(budget);
        let mut slots: [&mut [u8]; GRO_SLOTS] = receive_slots(rbuf, slot);
        let mut meta = [const { MaybeUninit::uninit() }; GRO_SLOTS];
        let got = match sys::mmsg::recv_batch(fd, &mut slots[..n_slots], &mut meta, true) {
            Ok(got) => got,
            Err(e) => {
                budget -= 1;
                if cx.recv_failed(handler, id, e) {
                    continue;
                }
                return false;
            }
        };
        let n = got.len();
        budget = budget.saturating_sub(n.max(1));
        for (buf, m) in slots.iter().zip(got) {
            let Some(from) = m.addr.to_inet() else {
                continue;
            };
            let from = PeerAddr::Inet(from);
            let (datagrams, cut) = segments(m.len, m.segment, m.truncated);
            if let Some(e) = cx.table.get_mut(id) {
                e.stats.trains_received += u64::from(m.segment != 0);
                e.stats.dropped_truncated += u64::from(cut);
            }
            for at in datagrams {
                let data = &buf[at];
                let Some(entry) = cx.table.get_mut(id) else {
                    return false; // closed by the handler
                };
                if data.len() > max {
                    entry.stats.dropped_over_quota += 1;
                    let q = crate::recv::QuotaExceeded {
                        size: data.len(),
                        quota: max,
                    };
                    cx.call(handler, |h, cx| h.on_error(cx, id, Error::QuotaExceeded(q)));
                    continue;
                }
                entry.stats.messages_in += 1;
                entry.stats.bytes_in += data.len() as u64;
                let msg = Datagram {
                    data,
                    from: &from,
                    anc: None,
                    tos: m.tos,
                    dst: m.dst,
                };
                cx.call(handler, |h, cx| h.on_datagram(cx, id, msg));
            }
        }
        if n < n_slots {
            return false; // a short read: the queue was empty
        }
    }
    true
}

/// The receive buffer cut into `N` slots of `slot` bytes, for one
/// `recvmmsg` (slots past the buffer's end are empty).
pub(super) fn receive_slots<const N: usize>(rbuf: &mut [u8], slot: usize) -> [&mut [u8]; N] {
    let mut chunks = rbuf.chunks_mut(slot);
    std::array::from_fn(|_| chunks.next().unwrap_or(&mut []))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(len: usize, segment: usize, truncated: bool) -> (Vec<(usize, usize)>, bool) {
        let (it, cut) = segments(len, segment, truncated);
        (it.map(|r| (r.start, r.end)).collect(), cut)
    }

    #[test]
    fn a_train_splits_into_its_datagrams_the_last_one_shorter() {
        assert_eq!(
            split(300, 100, false),
            (vec![(0, 100), (100, 200), (200, 300)], false)
        );
        assert_eq!(
            split(250, 100, false),
            (vec![(0, 100), (100, 200), (200, 250)], false)
        );
        assert_eq!(split(70, 0, false), (vec![(0, 70)], false));
        assert_eq!(
            split(0, 0, false),
            (vec![(0, 0)], false),
            "an empty datagram is one"
        );
    }

    #[test]
    fn a_cut_train_keeps_its_whole_datagrams_and_says_one_was_cut() {
        assert_eq!(split(250, 100, true), (vec![(0, 100), (100, 200)], true));
        assert_eq!(split(200, 100, true), (vec![(0, 100), (100, 200)], true));
        assert_eq!(split(70, 0, true), (vec![], true));
    }
}

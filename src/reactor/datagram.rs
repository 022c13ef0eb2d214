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

use std::io;
use std::net::ToSocketAddrs;
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
    /// The socket file it created, removed when it closes.
    _file: Option<SocketFile>,
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
        let build = move |io| {
            Sock::Dgram(Dgram {
                io,
                max_msg: max,
                pass_fds,
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

//! Length-prefixed TCP frames in the reactor: listeners, connections, the
//! zero-copy read path and the bounded, coalescing write path.
//!
//! # Read path
//!
//! A connection reads into the reactor's shared receive buffer; the
//! [`FrameDecoder`] delivers every complete frame straight from it and keeps
//! only a trailing partial frame (an idle connection holds no buffer). A
//! header declaring more than `max_frame_len` closes the connection at once,
//! before any of the body is buffered.
//!
//! # Write path
//!
//! Frames sent inside callbacks are appended to one reactor-wide output
//! arena and written, per connection, with one `writev` at the end of the
//! pass: many frames, few system calls, and no per-connection buffer. A
//! large frame (over [`COALESCE_MAX`]) with nothing ahead of it goes out at
//! once as two iovecs (header, payload) with no copy. Only what the kernel
//! does not take is copied into the connection's queue, bounded by
//! `max_send_queue`; WRITABLE interest is registered only while that queue
//! exists, and a send that would overflow it fails with
//! [`Error::WouldBlock`] — never a spin, never unbounded growth.

use std::io::{self, IoSlice, Read};
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::ControlFlow;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use mio::Interest;
use socket2::{SockRef, Socket, Type};

use super::ctx::{Ctx, TimerTarget};
use super::limits::{source_of_ip, Budget, Idle, Source, MIN_READ};
use super::listener::Accepted;
use super::listener::{ListenIo, Listener};
use super::options::TcpOptions;
use super::table::{token_of, Sock};
use crate::addr::{first_addr, PeerAddr};
use crate::error::{context, AddError, Error};
use crate::framing::{FrameConfig, FrameDecoder, FrameError};
use crate::handler::{CloseReason, Handler, SocketId, SocketKind};
use crate::sys;
use crate::timer::TimerKey;

/// Frames up to this size sent inside a callback are coalesced in the
/// output arena; larger ones are written at once when nothing is queued.
pub(crate) const COALESCE_MAX: usize = 16 * 1024;

/// A queue that drained keeps at most this much capacity for next time.
const KEEP_QUEUE_CAPACITY: usize = 4096;

/// The most bytes a connection may have queued: `max_send_queue`, but at
/// least one maximum-size frame.
fn send_limit(opts: &TcpOptions) -> usize {
    let one_frame = opts
        .frame
        .header_len()
        .saturating_add(opts.frame.max_frame_len());
    opts.max_send_queue.max(one_frame)
}

/// One framed TCP connection.
pub(super) struct TcpConn {
    pub(super) stream: mio::net::TcpStream,
    cfg: FrameConfig,
    send_limit: usize,
    /// `frame_idle_timeout`.
    frame_timeout: Option<Duration>,
    decoder: FrameDecoder,
    /// Bytes the kernel has not taken yet: `queue[head..]`.
    queue: Vec<u8>,
    head: usize,
    /// Bytes of this connection in the output arena (this pass).
    pending: usize,
    /// A non-blocking connect is in progress.
    pub(super) connecting: bool,
    /// The listener that accepted it.
    listener: Option<SocketId>,
    /// The peer's source (per-source limits and budget share).
    source: Source,
    /// What it holds as charged to the budget.
    held: usize,
    /// When the partial frame now buffered started arriving.
    partial_since: Option<Instant>,
    frame_timer: Option<TimerKey>,
    /// The inactivity timeout (`idle_timeout`), if set.
    pub(super) idle: Option<Idle>,
    /// A send was refused (queue full): call `on_writable` once it drains.
    notify_writable: bool,
    /// WRITABLE interest is registered.
    write_armed: bool,
}

impl TcpConn {
    fn new(
        stream: mio::net::TcpStream,
        opts: &TcpOptions,
        connecting: bool,
        listener: Option<SocketId>,
        source: Source,
        now: Instant,
    ) -> TcpConn {
        TcpConn {
            stream,
            cfg: opts.frame,
            send_limit: send_limit(opts),
            frame_timeout: opts.frame_idle_timeout,
            decoder: FrameDecoder::new(),
            queue: Vec::new(),
            head: 0,
            pending: 0,
            connecting,
            listener,
            source,
            held: 0,
            partial_since: None,
            frame_timer: None,
            idle: opts.idle_timeout.map(|t| Idle::new(t, now)),
            notify_writable: false,
            write_armed: connecting,
        }
    }

    /// Makes room in the queue for `additional` more bytes: by doubling
    /// where `room` (what the budget has left) and the send limit allow it,
    /// else exactly.
    fn reserve_queue(&mut self, additional: usize, room: usize) {
        let free = self.queue.capacity() - self.queue.len();
        if free >= additional {
            return;
        }
        let limit = room.min(self.send_limit.saturating_sub(self.queue.len()));
        let grow = self.queue.len().max(additional).min(limit).max(additional);
        self.queue.reserve_exact(grow);
    }

    /// Charges the budget with what the connection holds now; `true` if
    /// that freed room readers wait for.
    fn settle(&mut self, budget: &mut Budget) -> bool {
        // Frames coalesced this pass count too: what the kernel does not
        // take of them at the end of the pass stays in the queue.
        let now = self.buffered_capacity() + self.pending;
        let old = std::mem::replace(&mut self.held, now);
        budget.charge(self.source, old, now)
    }

    fn queued(&self) -> usize {
        self.queue.len() - self.head
    }

    /// Bytes held for this connection: queue and partial frame.
    pub(super) fn buffered_capacity(&self) -> usize {
        self.queue.capacity() + self.decoder.buffered_capacity()
    }

    fn interest(&self) -> Interest {
        if self.write_armed {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        }
    }
}

/// A TCP listening socket and the options its connections get.
pub(super) struct TcpListenIo {
    pub(super) listener: mio::net::TcpListener,
    opts: TcpOptions,
}

impl TcpListenIo {
    pub(super) fn accept(&mut self, lid: SocketId, v6_prefix: u8) -> io::Result<Accepted> {
        let (stream, peer) = self.listener.accept()?;
        if self.opts.nodelay {
            if let Err(e) = stream.set_nodelay(true) {
                log::debug!("{lid}: TCP_NODELAY: {e}");
            }
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        let source = source_of_ip(peer.ip(), v6_prefix);
        let conn = TcpConn::new(stream, &self.opts, false, Some(lid), source, Instant::now());
        Ok(Accepted {
            sock: Sock::Tcp(Box::new(conn)),
            kind: SocketKind::Tcp,
            peer: PeerAddr::Inet(peer),
            source,
            fd,
        })
    }
}

/// The frames sent during a pass, coalesced in one arena and written per
/// connection at its end.
#[derive(Debug, Default)]
pub(super) struct Output {
    bytes: Vec<u8>,
    segs: Vec<Seg>,
}

impl Output {
    pub(super) fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }
}

/// One connection's run of bytes in the output arena.
#[derive(Debug, Clone, Copy)]
struct Seg {
    id: SocketId,
    start: usize,
    end: usize,
}

fn send_iov(stream: &mio::net::TcpStream, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    SockRef::from(stream).send_vectored_with_flags(iov, sys::SEND_FLAGS)
}

/// `Error::TooLarge` for a frame the connection's format cannot carry.
fn frame_too_large(e: FrameError) -> Error {
    match e {
        FrameError::TooLarge { len, max } => Error::TooLarge {
            len: usize::try_from(len).unwrap_or(usize::MAX),
            max: Some(max),
        },
        other => Error::Io(io::Error::new(io::ErrorKind::InvalidInput, other)),
    }
}

impl Ctx {
    /// Listens for TCP connections speaking `frame`; the first address
    /// that binds wins. Accepted connections are reported to
    /// [`Handler::on_accept`]; their frames arrive at [`Handler::on_frame`].
    pub fn listen_tcp<A: ToSocketAddrs>(
        &mut self,
        addr: A,
        frame: FrameConfig,
    ) -> Result<SocketId, Error> {
        self.listen_tcp_with(addr, &TcpOptions::new(frame))
    }

    /// [`listen_tcp`](Ctx::listen_tcp) with options.
    pub fn listen_tcp_with<A: ToSocketAddrs>(
        &mut self,
        addr: A,
        opts: &TcpOptions,
    ) -> Result<SocketId, Error> {
        let mut last = None;
        let addrs = addr
            .to_socket_addrs()
            .map_err(|e| context(e, format_args!("listen TCP: resolving the address")))?;
        for a in addrs {
            match bind_listener(a, opts.backlog, opts.reuse_port) {
                Ok(listener) => {
                    let io = ListenIo::Tcp(TcpListenIo {
                        listener,
                        opts: opts.clone(),
                    });
                    let l =
                        Listener::new(io, opts.max_connections, opts.max_connections_per_source);
                    let l = Sock::Listener(Box::new(l));
                    return self
                        .insert(SocketKind::TcpListener, l, |s| s)
                        .map_err(|(_, e)| e);
                }
                Err(e) => last = Some(context(e, format_args!("listen TCP {a}"))),
            }
        }
        Err(Error::Io(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "listen TCP: no address")
        })))
    }

    /// Starts a non-blocking connect to `addr` (the first address it
    /// resolves to). The id is usable at once (frames sent before the
    /// connection completes are queued); [`Handler::on_connect`] follows,
    /// or [`Handler::on_close`] with the error.
    pub fn connect_tcp<A: ToSocketAddrs>(
        &mut self,
        addr: A,
        frame: FrameConfig,
    ) -> Result<SocketId, Error> {
        self.connect_tcp_with(addr, &TcpOptions::new(frame))
    }

    /// [`connect_tcp`](Ctx::connect_tcp) with options.
    pub fn connect_tcp_with<A: ToSocketAddrs>(
        &mut self,
        addr: A,
        opts: &TcpOptions,
    ) -> Result<SocketId, Error> {
        let addr = first_addr(addr, "connect TCP")?;
        let stream = mio::net::TcpStream::connect(addr)
            .map_err(|e| context(e, format_args!("connect TCP {addr}")))?;
        if opts.nodelay {
            stream.set_nodelay(true)?;
        }
        let source = source_of_ip(addr.ip(), self.config.ipv6_source_prefix);
        let now = self.now();
        let build = |stream| {
            Sock::Tcp(Box::new(TcpConn::new(
                stream, opts, true, None, source, now,
            )))
        };
        // Its completion is a writable edge.
        let interest = Interest::READABLE | Interest::WRITABLE;
        self.insert_with_interest(SocketKind::Tcp, stream, interest, build)
            .map_err(|(_, e)| e)
    }

    /// Adopts a connected TCP stream speaking `frame` (a std `TcpStream`,
    /// a socket2 `Socket`...); it is made non-blocking. On failure the
    /// socket comes back in the error.
    pub fn add_tcp<S: Into<Socket>>(
        &mut self,
        stream: S,
        frame: FrameConfig,
    ) -> Result<SocketId, AddError> {
        self.add_tcp_with(stream, &TcpOptions::new(frame))
    }

    /// [`add_tcp`](Ctx::add_tcp) with options.
    pub fn add_tcp_with<S: Into<Socket>>(
        &mut self,
        stream: S,
        opts: &TcpOptions,
    ) -> Result<SocketId, AddError> {
        let socket = stream.into();
        let v6_prefix = self.config.ipv6_source_prefix;
        let prepared = (|| -> Result<Source, Error> {
            let peer = socket.peer_addr()?.as_socket();
            let (Type::STREAM, Some(peer)) = (socket.r#type()?, peer) else {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "add_tcp: not a connected TCP socket",
                )));
            };
            socket.set_nonblocking(true)?;
            if opts.nodelay {
                socket.set_tcp_nodelay(true)?;
            }
            Ok(source_of_ip(peer.ip(), v6_prefix))
        })();
        let source = match prepared {
            Ok(s) => s,
            Err(error) => return Err(AddError { socket, error }),
        };
        let stream = mio::net::TcpStream::from_std(socket.into());
        let now = self.now();
        let build = |stream| {
            Sock::Tcp(Box::new(TcpConn::new(
                stream, opts, false, None, source, now,
            )))
        };
        self.insert(SocketKind::Tcp, stream, build)
            .map_err(|(stream, error)| AddError {
                socket: Socket::from(OwnedFd::from(stream)),
                error,
            })
    }

    /// Sends one frame (header + `payload`): all of it, or nothing.
    ///
    /// Inside a callback, small frames are coalesced and written when the
    /// pass ends; otherwise the frame goes out at once (header and payload
    /// as two iovecs, no copy) when nothing is queued. What the kernel does
    /// not take is queued. Errors: [`Error::TooLarge`] if the frame is over
    /// the format's maximum (nothing is sent), [`Error::WouldBlock`] if the
    /// queue would pass `max_send_queue` ([`Handler::on_writable`] follows
    /// once it drains), [`Error::StaleId`] for a closed connection.
    pub fn send_frame(&mut self, conn: SocketId, payload: &[u8]) -> Result<(), Error> {
        self.send_frame_vectored(conn, &[IoSlice::new(payload)])
    }

    /// Sends one frame whose payload is the concatenation of `parts`.
    pub fn send_frame_vectored(
        &mut self,
        conn: SocketId,
        parts: &[IoSlice<'_>],
    ) -> Result<(), Error> {
        let len = parts.iter().map(|p| p.len()).sum::<usize>();
        let dispatching = self.dispatching;
        let now = self.now();
        let Ctx {
            table,
            poll,
            tcp_out: out,
            budget,
            ..
        } = self;
        let entry = table.get_mut(conn).ok_or(Error::StaleId)?;
        let kind = entry.kind;
        let Some(Sock::Tcp(c)) = entry.sock.as_mut() else {
            return Err(Error::WrongKind {
                op: "send_frame",
                kind,
            });
        };
        let header = c.cfg.encode_header(len).map_err(frame_too_large)?;
        let header = header.as_bytes();
        let total = header.len() + len;
        let backlog = c.queued() + c.pending;
        if backlog + total > c.send_limit {
            c.notify_writable = true;
            entry.stats.send_would_block += 1;
            return Err(Error::WouldBlock);
        }
        // Data already waits for the kernel (or for the end of the pass),
        // so this frame may be buffered too: only with room in the budget.
        let waiting = c.connecting || c.queued() > 0;
        if (waiting || c.pending > 0) && budget.room(c.source) < total {
            c.notify_writable = true;
            entry.stats.send_would_block += 1;
            entry.stats.sends_refused_budget += 1;
            return Err(Error::WouldBlock);
        }
        entry.stats.messages_out += 1;
        entry.stats.bytes_out += len as u64;
        if let Some(idle) = c.idle.as_mut() {
            idle.touch(now);
        }

        if waiting {
            c.reserve_queue(total, budget.room(c.source));
            c.queue.extend_from_slice(header);
            for p in parts {
                c.queue.extend_from_slice(p);
            }
            c.settle(budget);
            return Ok(());
        }
        if dispatching && (c.pending > 0 || total <= COALESCE_MAX || parts.len() > 15) {
            let start = out.bytes.len();
            out.bytes.extend_from_slice(header);
            for p in parts {
                out.bytes.extend_from_slice(p);
            }
            out.segs.push(Seg {
                id: conn,
                start,
                end: out.bytes.len(),
            });
            c.pending += total;
            c.settle(budget);
            return Ok(());
        }
        if parts.len() > 15 {
            // Outside a callback, with many parts: one copy, one write.
            c.reserve_queue(total, budget.room(c.source));
            c.queue.extend_from_slice(header);
            for p in parts {
                c.queue.extend_from_slice(p);
            }
            let written = write_queue(c).map_err(|e| Error::from_send(e, total));
            c.settle(budget);
            written?;
            arm_if_queued(poll, c, conn);
            return Ok(());
        }
        // At once, no copy: header and payload parts as iovecs.
        let mut iov = [IoSlice::new(&[]); 16];
        iov[0] = IoSlice::new(header);
        iov[1..=parts.len()].copy_from_slice(parts);
        let written = match send_iov(&c.stream, &iov[..=parts.len()]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(Error::from_send(e, total)),
        };
        if written < total {
            c.reserve_queue(total - written, budget.room(c.source));
            queue_remainder(c, written, header, parts);
            c.settle(budget);
            arm_if_queued(poll, c, conn);
        }
        Ok(())
    }
}

/// Copies what `writev` did not take (after `written` bytes) into the queue.
fn queue_remainder(c: &mut TcpConn, mut written: usize, header: &[u8], parts: &[IoSlice<'_>]) {
    for piece in std::iter::once(header).chain(parts.iter().map(|p| &**p)) {
        if written >= piece.len() {
            written -= piece.len();
            continue;
        }
        c.queue.extend_from_slice(&piece[written..]);
        written = 0;
    }
}

fn arm_if_queued(poll: &mio::Poll, c: &mut TcpConn, id: SocketId) {
    if c.queued() > 0 {
        set_write_armed(poll, c, id, true);
    }
}

/// Registers or drops WRITABLE interest (no system call if unchanged).
fn set_write_armed(poll: &mio::Poll, c: &mut TcpConn, id: SocketId, on: bool) {
    if c.write_armed == on {
        return;
    }
    c.write_armed = on;
    let interest = c.interest();
    if let Err(e) = poll
        .registry()
        .reregister(&mut c.stream, token_of(id), interest)
    {
        log::warn!("{id}: reregister: {e}");
    }
}

/// Writes the queue until it is empty or the kernel refuses more.
fn write_queue(c: &mut TcpConn) -> io::Result<()> {
    while c.queued() > 0 {
        match send_iov(&c.stream, &[IoSlice::new(&c.queue[c.head..])]) {
            Ok(n) => c.head += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    if c.queued() == 0 {
        c.queue.clear();
        c.head = 0;
        if c.queue.capacity() > KEEP_QUEUE_CAPACITY {
            c.queue = Vec::new();
        }
    } else if c.head > c.queue.len() / 2 {
        c.queue.drain(..c.head);
        c.head = 0;
    }
    Ok(())
}

fn bind_listener(
    addr: SocketAddr,
    backlog: i32,
    reuse_port: bool,
) -> io::Result<mio::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        let _ = s.set_only_v6(false);
    }
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(mio::net::TcpListener::from_std(s.into()))
}

/// Reads `id` until `WouldBlock`, the budget, or — when `trust_short_read`
/// — a short read; delivers every complete frame. Returns `true` if the
/// budget ran out.
///
/// A short read means the socket's queue was empty at that moment, and any
/// later arrival raises a new edge. That saves the `EAGAIN` read per
/// readiness — but only when the event carried no read-closed or error
/// flag: a FIN or RST that came with the data raises no further edge, so
/// then (and for carried sockets, which have no event) we read on until
/// `WouldBlock` or the end of the stream.
///
/// `hup` says the event reported the peer's close or an error: a
/// connection whose reads are paused for budget checks whether its peer
/// left for good (then it is closed at once rather than at its frame
/// timeout).
pub(super) fn drain<H: Handler + ?Sized>(
    cx: &mut Ctx,
    rbuf: &mut [u8],
    handler: &mut H,
    id: SocketId,
    trust_short_read: bool,
    hup: bool,
) -> bool {
    for _ in 0..cx.config.read_budget {
        let now = cx.now();
        let Ctx { table, budget, .. } = &mut *cx;
        let Some(entry) = table.get_mut(id) else {
            return false;
        };
        let Some(Sock::Tcp(c)) = entry.sock.as_mut() else {
            return false;
        };
        if c.connecting {
            return false;
        }
        // Read no more than the budget has room for; a connection holding a
        // partial frame waits for room (its peer is pushed back by TCP flow
        // control), one without may complete frames in small pieces. A
        // pending frame's buffer grows by doubling: only where the room
        // allows it, else by exactly what is read.
        let room = budget.room(c.source);
        let has_partial = c.decoder.has_partial();
        let doubling = if has_partial {
            c.decoder.buffered_capacity()
        } else {
            0
        };
        let cap = if room >= rbuf.len().max(doubling) {
            rbuf.len()
        } else if room > 0 || !has_partial {
            let n = room.max(MIN_READ).min(rbuf.len());
            c.decoder.reserve_exact(n);
            n
        } else {
            if hup {
                if let Some(reason) = departed(c) {
                    cx.close_now(id, reason);
                    cx.finish_callback(handler);
                    return false;
                }
            }
            entry.stats.reads_paused += 1;
            log::debug!("{id}: buffer budget spent: reading paused");
            budget.pause(id);
            return false;
        };
        let n = match (&c.stream).read(&mut rbuf[..cap]) {
            Ok(0) => {
                cx.close_now(id, CloseReason::EndOfStream);
                cx.finish_callback(handler);
                return false;
            }
            Ok(n) => n,
            Err(e) => {
                if cx.recv_failed(handler, id, e) {
                    continue;
                }
                return false;
            }
        };
        if let Some(idle) = c.idle.as_mut() {
            idle.touch(now);
        }
        let cfg = c.cfg;
        let mut decoder = std::mem::take(&mut c.decoder);
        let mut payload = 0u64;
        // No socket closed since: `id` is still open (no lookup per frame).
        let closed = cx.table.closed();
        let result = decoder.feed(&cfg, &rbuf[..n], |frame| {
            payload += frame.len() as u64;
            cx.call(handler, |h, cx| h.on_frame(cx, id, frame));
            if cx.table.closed() == closed || cx.contains(id) {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        });
        let Ctx { table, budget, .. } = &mut *cx;
        let Some(entry) = table.get_mut(id) else {
            return false; // closed by the handler
        };
        entry.stats.bytes_in += payload;
        let Some(Sock::Tcp(c)) = entry.sock.as_mut() else {
            return false;
        };
        c.decoder = decoder;
        if c.settle(budget) {
            cx.resume_paused_readers();
        }
        let Some(entry) = cx.table.get_mut(id) else {
            return false;
        };
        let Some(Sock::Tcp(c)) = entry.sock.as_mut() else {
            return false;
        };
        match result {
            Ok(outcome) => {
                entry.stats.messages_in += outcome.frames as u64;
                if !c.decoder.has_partial() {
                    c.partial_since = None;
                } else if outcome.frames > 0 || c.partial_since.is_none() {
                    // A new frame started arriving in this read.
                    let now = cx.now();
                    arm_frame_idle(cx, id, now);
                }
            }
            Err(err) => {
                log::debug!("{id}: {err}; closing");
                entry.stats.dropped_too_large += 1;
                cx.close_now(id, CloseReason::Frame(err));
                cx.finish_callback(handler);
                return false;
            }
        }
        if trust_short_read && n < cap {
            return false;
        }
    }
    true
}

/// Why a connection whose reads are paused should close now, if its peer
/// left for good: an error (a reset) is pending, or the peer closed its side
/// before sending what the pending frame lacks (it can never complete).
fn departed(c: &TcpConn) -> Option<CloseReason> {
    match c.stream.take_error() {
        Ok(Some(e)) | Err(e) => return Some(CloseReason::from_io(e)),
        Ok(None) => {}
    }
    let queued = sys::readable_bytes(std::os::fd::AsRawFd::as_raw_fd(&c.stream)).ok()?;
    let hopeless = match c.decoder.missing(&c.cfg) {
        Some(missing) => queued < missing,
        // Still in the header: only certain with nothing left to read.
        None => queued == 0,
    };
    hopeless.then_some(CloseReason::EndOfStream)
}

/// The TCP connection `id` names.
fn conn_mut(cx: &mut Ctx, id: SocketId) -> Option<&mut TcpConn> {
    match cx.table.get_mut(id)?.sock.as_mut()? {
        Sock::Tcp(c) => Some(c),
        _ => None,
    }
}

/// Records that a partial frame started at `now`; arms its timer.
fn arm_frame_idle(cx: &mut Ctx, id: SocketId, now: Instant) {
    let Ctx { table, timers, .. } = cx;
    let Some(Sock::Tcp(c)) = table.get_mut(id).and_then(|e| e.sock.as_mut()) else {
        return;
    };
    let Some(timeout) = c.frame_timeout else {
        return;
    };
    c.partial_since = Some(now);
    if c.frame_timer.is_none() {
        c.frame_timer = Some(timers.insert(now + timeout, TimerTarget::FrameIdle(id)));
    }
}

/// The frame-idle timer of `id` fired.
pub(super) fn frame_idle_due<H: Handler + ?Sized>(
    cx: &mut Ctx,
    handler: &mut H,
    id: SocketId,
    now: Instant,
) {
    let Ctx { table, timers, .. } = cx;
    let Some(Sock::Tcp(c)) = table.get_mut(id).and_then(|e| e.sock.as_mut()) else {
        return;
    };
    c.frame_timer = None;
    let (Some(since), Some(timeout)) = (c.partial_since, c.frame_timeout) else {
        return; // the frame completed since; nothing pending
    };
    let deadline = since + timeout;
    if deadline <= now {
        log::debug!(
            "{id}: a frame started {:?} ago is still incomplete ({} B buffered); closing",
            now.saturating_duration_since(since),
            c.decoder.pending_len()
        );
        cx.close_now(id, CloseReason::FrameTimeout);
        cx.finish_callback(handler);
    } else {
        // A newer partial frame: wait for its own deadline.
        c.frame_timer = Some(timers.insert(deadline, TimerTarget::FrameIdle(id)));
    }
}

/// WRITABLE on a connection: finish a connect, then write the queue; once
/// it drains, drop WRITABLE interest and owe `on_writable` if a send failed.
pub(super) fn writable<H: Handler + ?Sized>(cx: &mut Ctx, handler: &mut H, id: SocketId) {
    let Some(c) = conn_mut(cx, id) else {
        return;
    };
    if c.connecting {
        let failed = match c.stream.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match c.stream.peer_addr() {
                Ok(_) => None,
                // Still in progress.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => Some(e),
            },
        };
        if let Some(e) = failed {
            cx.close_now(id, CloseReason::Error(e));
            cx.finish_callback(handler);
            return;
        }
        c.connecting = false;
        cx.call(handler, |h, cx| h.on_connect(cx, id));
        // Reading may have been waiting for the connect: serve it next.
        cx.carry_over(id);
    }
    let Ctx { table, budget, .. } = cx;
    let Some(Sock::Tcp(c)) = table.get_mut(id).and_then(|e| e.sock.as_mut()) else {
        return;
    };
    let written = write_queue(c);
    let freed = c.settle(budget);
    if let Err(e) = written {
        cx.close_now(id, CloseReason::from_io(e));
        cx.finish_callback(handler);
        return;
    }
    if freed {
        cx.resume_paused_readers();
    }
    let Ctx { table, poll, .. } = cx;
    let Some(Sock::Tcp(c)) = table.get_mut(id).and_then(|e| e.sock.as_mut()) else {
        return;
    };
    if c.queued() > 0 {
        arm_if_queued(poll, c, id);
        return;
    }
    set_write_armed(poll, c, id, false);
    if c.notify_writable && c.pending == 0 {
        c.notify_writable = false;
        cx.call(handler, |h, cx| h.on_writable(cx, id));
    }
}

/// A connection is being closed: cancel its timer and write what it has
/// pending — its queue, then frames coalesced this pass — as far as the
/// kernel takes them now. A frame sent just before `close` in the same
/// callback thus still goes out; what the kernel cannot take at once is
/// discarded with the socket. Returns the listener that accepted it.
pub(super) fn closing(cx: &mut Ctx, id: SocketId, c: &mut TcpConn) -> Option<(SocketId, Source)> {
    if let Some(key) = c.frame_timer.take() {
        cx.timers.cancel(key);
    }
    if let Some(idle) = c.idle.as_mut() {
        idle.cancel(&mut cx.timers);
    }
    if cx.budget.charge(c.source, c.held, 0) {
        cx.resume_paused_readers();
    }
    if !c.connecting {
        let out = &cx.tcp_out;
        let pending = out
            .segs
            .iter()
            .filter(|s| s.id == id)
            .map(|s| &out.bytes[s.start..s.end]);
        let queued = &c.queue[c.head..];
        'write: for bytes in std::iter::once(queued).chain(pending) {
            let mut done = 0;
            while done < bytes.len() {
                match send_iov(&c.stream, &[IoSlice::new(&bytes[done..])]) {
                    Ok(n) => done += n,
                    Err(e) => {
                        log::debug!("{id}: closing with {} B unsent: {e}", bytes.len() - done);
                        break 'write;
                    }
                }
            }
        }
    }
    c.listener.map(|l| (l, c.source))
}

/// Writes the frames coalesced during this pass: one `writev` per
/// connection (more only past `IOV_MAX`), the remainder into its queue.
pub(super) fn flush_output<H: Handler + ?Sized>(cx: &mut Ctx, handler: &mut H) {
    if cx.tcp_out.is_empty() {
        return;
    }
    let Output {
        bytes: out,
        mut segs,
    } = std::mem::take(&mut cx.tcp_out);
    // Group by connection; starts grow with append order, so each
    // connection's frames stay in order.
    segs.sort_unstable_by_key(|s| (s.id.index, s.start));
    let mut i = 0;
    while i < segs.len() {
        let id = segs[i].id;
        let j = i + segs[i..].iter().take_while(|s| s.id == id).count();
        if let Err(e) = flush_conn(cx, id, &out, &segs[i..j]) {
            cx.close_now(id, CloseReason::from_io(e));
        }
        i = j;
    }
    segs.clear();
    let mut bytes = out;
    bytes.clear();
    if bytes.capacity() > 4 << 20 {
        bytes = Vec::new();
    }
    cx.tcp_out = Output { bytes, segs };
    cx.finish_callback(handler);
}

fn flush_conn(cx: &mut Ctx, id: SocketId, out: &[u8], segs: &[Seg]) -> io::Result<()> {
    let Ctx {
        table,
        poll,
        budget,
        ..
    } = cx;
    let Some(Sock::Tcp(c)) = table.get_mut(id).and_then(|e| e.sock.as_mut()) else {
        return Ok(()); // closed during the pass: its output is dropped
    };
    let room = budget.room(c.source);
    let result = flush_segs(poll, c, id, out, segs, room);
    c.settle(budget);
    result
}

/// [`flush_conn`] once the connection is found.
fn flush_segs(
    poll: &mio::Poll,
    c: &mut TcpConn,
    id: SocketId,
    out: &[u8],
    segs: &[Seg],
    room: usize,
) -> io::Result<()> {
    c.pending = 0;
    if c.connecting || c.queued() > 0 {
        c.reserve_queue(segs.iter().map(|s| s.end - s.start).sum(), room);
        for s in segs {
            c.queue.extend_from_slice(&out[s.start..s.end]);
        }
        return Ok(());
    }
    // Merge adjacent runs into as few iovecs as possible.
    const IOV: usize = 64;
    let mut k = 0;
    while k < segs.len() {
        let mut iov = [IoSlice::new(&[]); IOV];
        let mut n_iov = 0;
        let mut batch = 0;
        while k < segs.len() && n_iov < IOV {
            let start = segs[k].start;
            let mut end = segs[k].end;
            k += 1;
            while k < segs.len() && segs[k].start == end {
                end = segs[k].end;
                k += 1;
            }
            iov[n_iov] = IoSlice::new(&out[start..end]);
            n_iov += 1;
            batch += end - start;
        }
        let written = match send_iov(&c.stream, &iov[..n_iov]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if written < batch {
            // Queue what is left of this batch and every later run.
            let later: usize = segs[k..].iter().map(|s| s.end - s.start).sum();
            c.reserve_queue(batch - written + later, room);
            let mut skip = written;
            for s in &iov[..n_iov] {
                if skip >= s.len() {
                    skip -= s.len();
                    continue;
                }
                c.queue.extend_from_slice(&s[skip..]);
                skip = 0;
            }
            for s in &segs[k..] {
                c.queue.extend_from_slice(&out[s.start..s.end]);
            }
            arm_if_queued(poll, c, id);
            return Ok(());
        }
    }
    if c.notify_writable {
        // A send was refused while these frames waited: the queue is empty
        // now, so the owed on_writable comes with the next writable edge.
        set_write_armed(poll, c, id, true);
    }
    Ok(())
}

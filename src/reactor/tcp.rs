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
//! [`Error::QueueFull`] — never a spin, never unbounded growth.

use std::io::{self, IoSlice, Read};
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use mio::Interest;
use socket2::SockRef;

use super::listener::{Accept, AcceptGate};
use super::{finish_callback, token_of, Ctx, Sock, TimerTarget};
use crate::addr::PeerAddr;
use crate::error::Error;
use crate::framing::{FrameConfig, FrameDecoder};
use crate::handler::{CloseReason, Handler, SocketId};
use crate::sys;
use crate::timer::TimerKey;

/// Frames up to this size sent inside a callback are coalesced in the
/// output arena; larger ones are written at once when nothing is queued.
pub(crate) const COALESCE_MAX: usize = 16 * 1024;

/// A queue that drained keeps at most this much capacity for next time.
const KEEP_QUEUE_CAPACITY: usize = 4096;

/// Options for TCP listeners and connections:
/// `TcpOptions { max_send_queue: 1 << 20, ..TcpOptions::new(FrameConfig::default()) }`.
#[derive(Debug, Clone)]
pub struct TcpOptions {
    /// The frame format (length width, endianness, maximum frame length).
    pub frame: FrameConfig,
    /// `TCP_NODELAY` (default on: frames are coalesced by the reactor, so
    /// Nagle's algorithm only adds latency).
    pub nodelay: bool,
    /// The most bytes a connection may have waiting for the kernel; a send
    /// beyond it fails with [`Error::QueueFull`] (default 4 MiB). Raised to
    /// at least one maximum-size frame.
    pub max_send_queue: usize,
    /// A frame that has started arriving must complete within this time,
    /// or the connection is closed with [`CloseReason::IdleTimeout`]
    /// (slow-loris protection; default 30 s). Trickling bytes does not
    /// extend it: set it to cover your largest frame at the slowest rate
    /// you accept. `None` disables it.
    pub frame_idle_timeout: Option<Duration>,
    /// Listeners: the most connections accepted and open at once; at the
    /// cap, accepting pauses (no spinning) until one closes (default 10,000).
    pub max_connections: Option<usize>,
    /// Listeners: the `listen` backlog (default 1,024).
    pub backlog: i32,
    /// Listeners: `SO_REUSEPORT`, so that one listener per reactor thread
    /// can bind the same address; the kernel spreads connections over them.
    pub reuse_port: bool,
}

impl TcpOptions {
    /// Defaults around `frame`.
    pub fn new(frame: FrameConfig) -> TcpOptions {
        TcpOptions {
            frame,
            nodelay: true,
            max_send_queue: 4 << 20,
            frame_idle_timeout: Some(Duration::from_secs(30)),
            max_connections: Some(10_000),
            backlog: 1024,
            reuse_port: false,
        }
    }

    fn send_limit(&self) -> usize {
        let one_frame = self
            .frame
            .header_len()
            .saturating_add(self.frame.max_frame_len());
        self.max_send_queue.max(one_frame)
    }
}

impl Default for TcpOptions {
    fn default() -> TcpOptions {
        TcpOptions::new(FrameConfig::default())
    }
}

/// One framed TCP connection.
pub(super) struct TcpConn {
    pub(super) stream: mio::net::TcpStream,
    cfg: FrameConfig,
    send_limit: usize,
    idle: Option<Duration>,
    decoder: FrameDecoder,
    /// Bytes the kernel has not taken yet: `queue[head..]`.
    queue: Vec<u8>,
    head: usize,
    /// Bytes of this connection in the output arena (this pass).
    pending: usize,
    /// A non-blocking connect is in progress.
    pub(super) connecting: bool,
    /// The listener that accepted it.
    pub(super) listener: Option<SocketId>,
    /// When the partial frame now buffered started arriving.
    partial_since: Option<Instant>,
    idle_timer: Option<TimerKey>,
    /// A send failed with `QueueFull`: call `on_writable` once it drains.
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
    ) -> TcpConn {
        TcpConn {
            stream,
            cfg: opts.frame,
            send_limit: opts.send_limit(),
            idle: opts.frame_idle_timeout,
            decoder: FrameDecoder::new(),
            queue: Vec::new(),
            head: 0,
            pending: 0,
            connecting,
            listener,
            partial_since: None,
            idle_timer: None,
            notify_writable: false,
            write_armed: connecting,
        }
    }

    fn queued(&self) -> usize {
        self.queue.len() - self.head
    }

    pub(super) fn idle_timer_key(&self) -> Option<TimerKey> {
        self.idle_timer
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

/// A listening socket and its accept policy.
pub(super) struct TcpListenerState {
    pub(super) listener: mio::net::TcpListener,
    opts: TcpOptions,
    pub(super) gate: AcceptGate,
}

impl Accept for TcpListenerState {
    fn accept_one(&mut self, lid: SocketId) -> io::Result<(Sock, usize, PeerAddr)> {
        let (stream, peer) = self.listener.accept()?;
        if self.opts.nodelay {
            if let Err(e) = stream.set_nodelay(true) {
                log::debug!("{lid}: TCP_NODELAY: {e}");
            }
        }
        let conn = TcpConn::new(stream, &self.opts, false, Some(lid));
        Ok((Sock::Tcp(Box::new(conn)), 0, PeerAddr::Inet(peer)))
    }

    fn gate(&mut self) -> &mut AcceptGate {
        &mut self.gate
    }

    fn source(&mut self) -> &mut dyn mio::event::Source {
        &mut self.listener
    }
}

/// One connection's run of bytes in the output arena.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seg {
    id: SocketId,
    start: usize,
    end: usize,
}

fn close_reason(e: io::Error) -> CloseReason {
    match e.raw_os_error() {
        Some(libc::ECONNRESET) | Some(libc::EPIPE) | Some(libc::ECONNABORTED) => CloseReason::Reset,
        _ => CloseReason::Error(e),
    }
}

fn send_iov(stream: &mio::net::TcpStream, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    SockRef::from(stream).send_vectored_with_flags(iov, sys::SEND_FLAGS)
}

impl Ctx {
    /// Listens for TCP connections speaking `frame`. Accepted connections
    /// are reported to [`Handler::on_accept`].
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
        for a in addr.to_socket_addrs()? {
            match bind_listener(a, opts.backlog, opts.reuse_port) {
                Ok(l) => {
                    let state = TcpListenerState {
                        listener: l,
                        opts: opts.clone(),
                        gate: AcceptGate::new(opts.max_connections),
                    };
                    return self.insert(Sock::TcpListener(Box::new(state)), 0, None);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(Error::Io(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "no address to listen on")
        })))
    }

    /// Starts a non-blocking connect to `addr`. The id is usable at once
    /// (frames sent before the connection completes are queued);
    /// [`Handler::on_connect`] follows, or [`Handler::on_close`] with the
    /// error.
    pub fn connect_tcp(&mut self, addr: SocketAddr, frame: FrameConfig) -> Result<SocketId, Error> {
        self.connect_tcp_with(addr, &TcpOptions::new(frame))
    }

    /// [`connect_tcp`](Ctx::connect_tcp) with options.
    pub fn connect_tcp_with(
        &mut self,
        addr: SocketAddr,
        opts: &TcpOptions,
    ) -> Result<SocketId, Error> {
        let stream = mio::net::TcpStream::connect(addr)?;
        if opts.nodelay {
            stream.set_nodelay(true)?;
        }
        self.insert(
            Sock::Tcp(Box::new(TcpConn::new(stream, opts, true, None))),
            0,
            None,
        )
    }

    /// Adopts a connected TCP stream speaking `frame` (made non-blocking).
    pub fn add_tcp_stream(
        &mut self,
        stream: std::net::TcpStream,
        frame: FrameConfig,
    ) -> Result<SocketId, Error> {
        self.add_tcp_stream_with(stream, &TcpOptions::new(frame))
    }

    /// [`add_tcp_stream`](Ctx::add_tcp_stream) with options.
    pub fn add_tcp_stream_with(
        &mut self,
        stream: std::net::TcpStream,
        opts: &TcpOptions,
    ) -> Result<SocketId, Error> {
        stream.set_nonblocking(true)?;
        if opts.nodelay {
            stream.set_nodelay(true)?;
        }
        let stream = mio::net::TcpStream::from_std(stream);
        self.insert(
            Sock::Tcp(Box::new(TcpConn::new(stream, opts, false, None))),
            0,
            None,
        )
    }

    /// The remote address of a TCP connection.
    pub fn peer_addr(&self, conn: SocketId) -> Result<PeerAddr, Error> {
        match &self.live_entry(conn)?.sock {
            Some(Sock::Tcp(c)) => Ok(PeerAddr::Inet(c.stream.peer_addr()?)),
            _ => Err(Error::WrongKind {
                op: "peer_addr",
                kind: self.live_entry(conn)?.kind,
            }),
        }
    }

    /// Sends one frame (header + `payload`).
    ///
    /// Inside a callback, small frames are coalesced and written when the
    /// pass ends; otherwise the frame goes out at once (header and payload
    /// as two iovecs, no copy) when nothing is queued. What the kernel does
    /// not take is queued. Errors: [`Error::Frame`] if the frame is over the
    /// maximum (nothing is sent), [`Error::QueueFull`] if the queue would
    /// pass `max_send_queue` ([`Handler::on_writable`] follows once it
    /// drains), [`Error::StaleId`] for a closed connection.
    pub fn send_frame(&mut self, conn: SocketId, payload: &[u8]) -> Result<(), Error> {
        self.send_frame_vectored(conn, &[payload])
    }

    /// Sends one frame whose payload is the concatenation of `parts`.
    pub fn send_frame_vectored(&mut self, conn: SocketId, parts: &[&[u8]]) -> Result<(), Error> {
        let len = parts.iter().map(|p| p.len()).sum::<usize>();
        let dispatching = self.dispatching;
        let Ctx {
            sockets,
            poll,
            out,
            out_segs,
            ..
        } = self;
        let entry = match sockets.get_mut(conn.index as usize) {
            Some(e) if e.gen == conn.gen && e.sock.is_some() => e,
            _ => return Err(Error::StaleId),
        };
        let kind = entry.kind;
        let Some(Sock::Tcp(c)) = entry.sock.as_mut() else {
            return Err(Error::WrongKind {
                op: "send_frame",
                kind,
            });
        };
        let header = c.cfg.encode_header(len).map_err(Error::Frame)?;
        let header = header.as_bytes();
        let total = header.len() + len;
        let backlog = c.queued() + c.pending;
        if backlog + total > c.send_limit {
            c.notify_writable = true;
            entry.stats.send_would_block += 1;
            return Err(Error::QueueFull {
                queued: backlog,
                limit: c.send_limit,
            });
        }
        entry.stats.messages_out += 1;
        entry.stats.bytes_out += len as u64;

        if c.connecting || c.queued() > 0 {
            c.queue.extend_from_slice(header);
            for p in parts {
                c.queue.extend_from_slice(p);
            }
            return Ok(());
        }
        if dispatching && (c.pending > 0 || total <= COALESCE_MAX || parts.len() > 15) {
            let start = out.len();
            out.extend_from_slice(header);
            for p in parts {
                out.extend_from_slice(p);
            }
            out_segs.push(Seg {
                id: conn,
                start,
                end: out.len(),
            });
            c.pending += total;
            return Ok(());
        }
        if parts.len() > 15 {
            // Outside a callback, with many parts: one copy, one write.
            c.queue.extend_from_slice(header);
            for p in parts {
                c.queue.extend_from_slice(p);
            }
            return match write_queue(c) {
                Ok(()) => {
                    arm_if_queued(poll, c, conn);
                    Ok(())
                }
                Err(e) => Err(Error::Io(e)),
            };
        }
        // At once, no copy: header and payload parts as iovecs.
        let mut iov = [IoSlice::new(&[]); 16];
        iov[0] = IoSlice::new(header);
        for (slot, p) in iov[1..].iter_mut().zip(parts) {
            *slot = IoSlice::new(p);
        }
        let written = match send_iov(&c.stream, &iov[..=parts.len()]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(Error::Io(e)),
        };
        if written < total {
            queue_remainder(c, written, header, parts);
            arm_if_queued(poll, c, conn);
        }
        Ok(())
    }
}

/// Copies what `writev` did not take (after `written` bytes) into the queue.
fn queue_remainder(c: &mut TcpConn, mut written: usize, header: &[u8], parts: &[&[u8]]) {
    for piece in std::iter::once(header).chain(parts.iter().copied()) {
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
pub(super) fn drain_conn<H: Handler + ?Sized>(
    cx: &mut Ctx,
    rbuf: &mut [u8],
    handler: &mut H,
    id: SocketId,
    trust_short_read: bool,
) -> bool {
    for _ in 0..cx.config.read_budget {
        let Some(Sock::Tcp(c)) = cx.live_entry_mut(id).and_then(|e| e.sock.as_mut()) else {
            return false;
        };
        if c.connecting {
            return false;
        }
        let n = match (&c.stream).read(rbuf) {
            Ok(0) => {
                cx.close_now(id, CloseReason::EndOfStream);
                finish_callback(cx, handler);
                return false;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                cx.close_now(id, close_reason(e));
                finish_callback(cx, handler);
                return false;
            }
        };
        let cfg = c.cfg;
        let mut decoder = std::mem::take(&mut c.decoder);
        let mut payload = 0u64;
        let result = decoder.feed(&cfg, &rbuf[..n], |frame| {
            payload += frame.len() as u64;
            cx.callbacks += 1;
            handler.on_frame(cx, id, frame);
            finish_callback(cx, handler);
            if cx.contains(id) {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        });
        let Some(entry) = cx.live_entry_mut(id) else {
            return false; // closed by the handler
        };
        entry.stats.bytes_in += payload;
        let Some(Sock::Tcp(c)) = entry.sock.as_mut() else {
            return false;
        };
        c.decoder = decoder;
        match result {
            Ok(outcome) => {
                entry.stats.messages_in += outcome.frames as u64;
                if c.decoder.has_partial() {
                    if outcome.frames > 0 || c.partial_since.is_none() {
                        // A new frame started arriving in this read.
                        c.partial_since = None;
                        let now = cx.now();
                        arm_frame_idle(cx, id, now);
                    }
                } else if let Some(Sock::Tcp(c)) =
                    cx.live_entry_mut(id).and_then(|e| e.sock.as_mut())
                {
                    c.partial_since = None;
                }
            }
            Err(err) => {
                log::debug!("{id}: {err}; closing");
                if let Some(e) = cx.live_entry_mut(id) {
                    e.stats.dropped_too_large += 1;
                }
                cx.close_now(id, CloseReason::Frame(err));
                finish_callback(cx, handler);
                return false;
            }
        }
        if trust_short_read && n < rbuf.len() {
            return false;
        }
    }
    true
}

/// Records that a partial frame started at `now`; arms its timer.
fn arm_frame_idle(cx: &mut Ctx, id: SocketId, now: Instant) {
    let Ctx {
        sockets, timers, ..
    } = cx;
    let Some(Sock::Tcp(c)) = sockets
        .get_mut(id.index as usize)
        .and_then(|e| e.sock.as_mut())
    else {
        return;
    };
    let Some(idle) = c.idle else {
        return;
    };
    c.partial_since = Some(now);
    if c.idle_timer.is_none() {
        c.idle_timer = Some(timers.insert(now + idle, TimerTarget::FrameIdle(id)));
    }
}

/// The frame-idle timer of `id` fired.
pub(super) fn frame_idle_due<H: Handler + ?Sized>(
    cx: &mut Ctx,
    handler: &mut H,
    id: SocketId,
    now: Instant,
) {
    let Ctx {
        sockets, timers, ..
    } = cx;
    let Some(Sock::Tcp(c)) = sockets
        .get_mut(id.index as usize)
        .filter(|e| e.gen == id.gen)
        .and_then(|e| e.sock.as_mut())
    else {
        return;
    };
    c.idle_timer = None;
    let (Some(since), Some(idle)) = (c.partial_since, c.idle) else {
        return; // the frame completed since; nothing pending
    };
    let deadline = since + idle;
    if deadline <= now {
        log::debug!(
            "{id}: a frame started {:?} ago is still incomplete ({} B buffered); closing",
            now.saturating_duration_since(since),
            c.decoder.pending_len()
        );
        cx.close_now(id, CloseReason::IdleTimeout);
        finish_callback(cx, handler);
    } else {
        // A newer partial frame: wait for its own deadline.
        c.idle_timer = Some(timers.insert(deadline, TimerTarget::FrameIdle(id)));
    }
}

/// WRITABLE on a connection: finish a connect, then write the queue; once
/// it drains, drop WRITABLE interest and owe `on_writable` if a send failed.
pub(super) fn conn_writable<H: Handler + ?Sized>(cx: &mut Ctx, handler: &mut H, id: SocketId) {
    let Some(Sock::Tcp(c)) = cx.live_entry_mut(id).and_then(|e| e.sock.as_mut()) else {
        return;
    };
    if c.connecting {
        match c.stream.take_error() {
            Ok(Some(e)) | Err(e) => {
                cx.close_now(id, CloseReason::Error(e));
                finish_callback(cx, handler);
                return;
            }
            Ok(None) => {}
        }
        match c.stream.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // still in progress
            Err(e) => {
                cx.close_now(id, CloseReason::Error(e));
                finish_callback(cx, handler);
                return;
            }
        }
        c.connecting = false;
        cx.callbacks += 1;
        handler.on_connect(cx, id);
        finish_callback(cx, handler);
        // Reading may have been waiting for the connect: serve it next.
        if let Some(e) = cx.live_entry_mut(id) {
            if !e.carried {
                e.carried = true;
                cx.carry.push(id);
            }
        }
    }
    let Ctx { sockets, poll, .. } = cx;
    let Some(Sock::Tcp(c)) = sockets
        .get_mut(id.index as usize)
        .and_then(|e| e.sock.as_mut())
    else {
        return;
    };
    if let Err(e) = write_queue(c) {
        cx.close_now(id, close_reason(e));
        finish_callback(cx, handler);
        return;
    }
    if c.queued() > 0 {
        arm_if_queued(poll, c, id);
        return;
    }
    set_write_armed(poll, c, id, false);
    if c.notify_writable && c.pending == 0 {
        c.notify_writable = false;
        cx.callbacks += 1;
        handler.on_writable(cx, id);
        finish_callback(cx, handler);
    }
}

/// A connection is being closed: write what it has pending — its queue,
/// then frames coalesced this pass — as far as the kernel takes them now.
/// A frame sent just before `close` in the same callback thus still goes
/// out; what the kernel cannot take at once is discarded with the socket.
pub(super) fn write_before_close(out: &[u8], segs: &[Seg], id: SocketId, c: &mut TcpConn) {
    if c.connecting {
        return;
    }
    let pending = segs
        .iter()
        .filter(|s| s.id == id)
        .map(|s| &out[s.start..s.end]);
    let queued = &c.queue[c.head..];
    for bytes in std::iter::once(queued).chain(pending) {
        let mut done = 0;
        while done < bytes.len() {
            match send_iov(&c.stream, &[IoSlice::new(&bytes[done..])]) {
                Ok(n) => done += n,
                Err(e) => {
                    log::debug!("{id}: closing with {} B unsent: {e}", bytes.len() - done);
                    return;
                }
            }
        }
    }
}

/// Writes the frames coalesced during this pass: one `writev` per
/// connection (more only past `IOV_MAX`), the remainder into its queue.
pub(super) fn flush_output<H: Handler + ?Sized>(cx: &mut Ctx, handler: &mut H) {
    if cx.out_segs.is_empty() {
        return;
    }
    let mut segs = std::mem::take(&mut cx.out_segs);
    let out = std::mem::take(&mut cx.out);
    // Group by connection; starts grow with append order, so each
    // connection's frames stay in order.
    segs.sort_unstable_by_key(|s| (s.id.index, s.start));
    let mut i = 0;
    while i < segs.len() {
        let id = segs[i].id;
        let j = i + segs[i..].iter().take_while(|s| s.id == id).count();
        if let Err(e) = flush_conn(cx, id, &out, &segs[i..j]) {
            cx.close_now(id, close_reason(e));
        }
        i = j;
    }
    segs.clear();
    cx.out_segs = segs;
    cx.out = out;
    cx.out.clear();
    if cx.out.capacity() > 4 << 20 {
        cx.out = Vec::new();
    }
    finish_callback(cx, handler);
}

fn flush_conn(cx: &mut Ctx, id: SocketId, out: &[u8], segs: &[Seg]) -> io::Result<()> {
    let Ctx { sockets, poll, .. } = cx;
    let c = match sockets.get_mut(id.index as usize) {
        Some(e) if e.gen == id.gen => match e.sock.as_mut() {
            Some(Sock::Tcp(c)) => c,
            _ => return Ok(()),
        },
        _ => return Ok(()), // closed during the pass: its output is dropped
    };
    c.pending = 0;
    if c.connecting || c.queued() > 0 {
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

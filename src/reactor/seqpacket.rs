//! Unix seqpacket sockets in the reactor (Linux): listeners, connections,
//! messages with credentials and passed file descriptors.
//!
//! Messages are read two at a time with `recvmmsg`, each with a control
//! buffer (`MSG_CMSG_CLOEXEC`), so passed descriptors become `OwnedFd`s the
//! handler may take; the rest are closed when the callback returns. Because
//! our sockets set `SO_PASSCRED`, every real message carries credentials
//! and a 0-byte read without them is the end of the stream: an empty
//! message reaches the handler as an empty message.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use socket2::{SockRef, Socket, Type};

use super::ctx::{Ctx, TimerTarget};
use super::datagram::set_buffer;
use super::limits::{Idle, Source};
use super::listener::{Accepted, ListenIo, Listener};
use super::options::SeqpacketOptions;
use super::table::Sock;
use super::Bufs;
use crate::addr::{PeerAddr, ToUnixAddr};
use crate::error::{AddError, Error};
use crate::handler::{CloseReason, Handler, SeqpacketMessage, SocketId, SocketKind};
use crate::net::{
    self, BindOptions, MsgKind, RecvAncillary, SendAncillary, UnixSeqpacket, UnixSeqpacketListener,
};
use crate::recv::QuotaExceeded;
use crate::sys::cmsg;
use crate::timer::Timers;

/// A listening seqpacket socket (which removes its socket file when it
/// closes) and the settings its connections get.
pub(super) struct SeqListenIo {
    pub(super) listener: UnixSeqpacketListener,
    conn: ConnSettings,
}

/// What every connection of a listener gets.
#[derive(Debug, Clone, Copy)]
struct ConnSettings {
    /// The largest message delivered (the quota).
    max_message_len: usize,
    /// `SO_SNDBUF`: room to send a message of `max_message_len`.
    send_buffer_size: usize,
    /// `idle_timeout`.
    idle_timeout: Option<Duration>,
}

impl ConnSettings {
    fn new(opts: &SeqpacketOptions, default_max: usize) -> ConnSettings {
        let max = opts.max_message_len.unwrap_or(default_max);
        ConnSettings {
            max_message_len: max,
            // The kernel needs some room beyond the payload for its own
            // bookkeeping.
            send_buffer_size: opts
                .send_buffer_size
                .unwrap_or_else(|| max.saturating_add(64 * 1024)),
            idle_timeout: opts.idle_timeout,
        }
    }

    /// A connection with these settings.
    fn conn(&self, sock: UnixSeqpacket, listener: Option<SocketId>, now: Instant) -> SeqConn {
        // Its peer's user: the source per-uid limits count.
        let source = Source::Uid(sock.peer_cred().map_or(u32::MAX, |c| c.uid));
        SeqConn {
            sock,
            listener,
            source,
            max_msg: self.max_message_len,
            idle: self.idle_timeout.map(|t| Idle::new(t, now)),
        }
    }

    /// Sizes the send buffer (best effort: if it stays smaller, larger
    /// sends fail with `TooLarge`).
    fn apply(&self, sock: SockRef<'_>) {
        if let Err(e) = set_buffer(sock, false, self.send_buffer_size) {
            log::debug!("SO_SNDBUF {}: {e}", self.send_buffer_size);
        }
    }
}

impl SeqListenIo {
    pub(super) fn accept(&mut self, lid: SocketId) -> io::Result<Accepted> {
        let (sock, peer) = self.listener.accept()?;
        self.conn.apply(SockRef::from(&sock));
        let fd = sock.as_raw_fd();
        let conn = self.conn.conn(sock, Some(lid), Instant::now());
        Ok(Accepted {
            source: conn.source,
            sock: Sock::Seq(Box::new(conn)),
            kind: SocketKind::Seqpacket,
            peer: PeerAddr::Unix(peer),
            fd,
        })
    }
}

/// One seqpacket connection.
pub(super) struct SeqConn {
    pub(super) sock: UnixSeqpacket,
    /// The listener that accepted it.
    listener: Option<SocketId>,
    /// The peer's user (per-uid limits).
    source: Source,
    /// The largest message delivered (the quota).
    max_msg: usize,
    /// The inactivity timeout (`idle_timeout`), if set.
    pub(super) idle: Option<Idle>,
}

impl SeqConn {
    /// The connection is being closed: its timer goes. Returns the
    /// listener that accepted it, with its source.
    pub(super) fn closing(
        &mut self,
        timers: &mut Timers<TimerTarget>,
    ) -> Option<(SocketId, Source)> {
        if let Some(idle) = self.idle.as_mut() {
            idle.cancel(timers);
        }
        self.listener.map(|l| (l, self.source))
    }
}

impl Ctx {
    /// Listens for Unix seqpacket connections at `addr` — a path (the file
    /// is created, and removed again when the listener closes) or an
    /// abstract name. Accepted connections are reported to
    /// [`Handler::on_accept`]; their messages arrive at
    /// [`Handler::on_seqpacket`]. Binding over an existing path fails with
    /// `AddrInUse`: see [`SeqpacketOptions::unlink_stale`].
    pub fn listen_seqpacket<A: ToUnixAddr>(&mut self, addr: A) -> Result<SocketId, Error> {
        self.listen_seqpacket_with(addr, &SeqpacketOptions::default())
    }

    /// [`listen_seqpacket`](Ctx::listen_seqpacket) with options.
    pub fn listen_seqpacket_with<A: ToUnixAddr>(
        &mut self,
        addr: A,
        opts: &SeqpacketOptions,
    ) -> Result<SocketId, Error> {
        let bind = BindOptions::new()
            .backlog(opts.backlog)
            .unlink_stale(opts.unlink_stale)
            .unlink_on_drop(opts.unlink_on_close);
        let listener = UnixSeqpacketListener::bind_with(addr, &bind)?;
        let conn = ConnSettings::new(opts, self.config.unix_max_message_len);
        self.rbuf_needed = self.rbuf_needed.max(conn.max_message_len);
        let io = ListenIo::Seq(SeqListenIo { listener, conn });
        let l = Listener::new(io, opts.max_connections, opts.max_connections_per_uid);
        self.insert(
            SocketKind::SeqpacketListener,
            Sock::Listener(Box::new(l)),
            |s| s,
        )
        .map_err(|(_, e)| e)
    }

    /// Connects to a seqpacket listener at `addr`. Unix connects complete
    /// at once; a full listen backlog is an error of kind `WouldBlock`
    /// ("retry later") and leaves nothing behind.
    pub fn connect_seqpacket<A: ToUnixAddr>(&mut self, addr: A) -> Result<SocketId, Error> {
        self.connect_seqpacket_with(addr, &SeqpacketOptions::default())
    }

    /// [`connect_seqpacket`](Ctx::connect_seqpacket) with options (the
    /// connection's settings: `max_message_len`, `send_buffer_size`).
    pub fn connect_seqpacket_with<A: ToUnixAddr>(
        &mut self,
        addr: A,
        opts: &SeqpacketOptions,
    ) -> Result<SocketId, Error> {
        let sock = UnixSeqpacket::connect(addr)?;
        Ok(self.add_seqpacket_with(OwnedFd::from(sock), opts)?)
    }

    /// Adopts a connected seqpacket socket (e.g. one end of
    /// [`UnixSeqpacket::pair`], or a socket2 `Socket`); it is made
    /// non-blocking and `SO_PASSCRED` is set, so that an empty message is
    /// told from the end of the stream. On failure the socket comes back
    /// in the error.
    pub fn add_seqpacket<S: Into<Socket>>(&mut self, socket: S) -> Result<SocketId, AddError> {
        self.add_seqpacket_with(socket, &SeqpacketOptions::default())
    }

    /// [`add_seqpacket`](Ctx::add_seqpacket) with options.
    pub fn add_seqpacket_with<S: Into<Socket>>(
        &mut self,
        socket: S,
        opts: &SeqpacketOptions,
    ) -> Result<SocketId, AddError> {
        let socket = socket.into();
        let settings = ConnSettings::new(opts, self.config.unix_max_message_len);
        let prepared = (|| -> Result<(), Error> {
            if socket.r#type()? != Type::SEQPACKET {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "add_seqpacket: not a seqpacket socket",
                )));
            }
            socket.set_nonblocking(true)?;
            socket.set_passcred(true)?;
            settings.apply(SockRef::from(&socket));
            Ok(())
        })();
        if let Err(error) = prepared {
            return Err(AddError { socket, error });
        }
        self.rbuf_needed = self.rbuf_needed.max(settings.max_message_len);
        let sock = UnixSeqpacket::from(OwnedFd::from(socket));
        let now = self.now();
        let build = |sock| Sock::Seq(Box::new(settings.conn(sock, None, now)));
        self.insert(SocketKind::Seqpacket, sock, build)
            .map_err(|(sock, error)| AddError {
                socket: Socket::from(OwnedFd::from(sock)),
                error,
            })
    }

    /// Sends one message on a seqpacket connection: all of it, or nothing.
    /// A full peer gives [`Error::WouldBlock`] — nothing was sent — and
    /// [`Handler::on_writable`] follows once it drains.
    pub fn send_seqpacket(&mut self, conn: SocketId, msg: &[u8]) -> Result<(), Error> {
        self.send_seqpacket_with_fds(conn, msg, &[])
    }

    /// Sends one message on a seqpacket connection, passing `fds` along
    /// (`SCM_RIGHTS`; the receiver gets its own descriptors of the same
    /// open files).
    pub fn send_seqpacket_with_fds(
        &mut self,
        conn: SocketId,
        msg: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), Error> {
        let entry = self.entry(conn)?;
        let Some(Sock::Seq(c)) = &entry.sock else {
            return Err(Error::WrongKind {
                op: "send_seqpacket",
                kind: entry.kind,
            });
        };
        let anc = SendAncillary::new().with_fds(fds);
        let res = net::send_with_ancillary(
            c.sock.as_raw_fd(),
            MsgKind::Seqpacket,
            &[IoSlice::new(msg)],
            &anc,
            None,
        );
        let now = self.now();
        if let (Ok(_), Some(Sock::Seq(c))) = (&res, self.entry_mut(conn)?.sock.as_mut()) {
            if let Some(idle) = c.idle.as_mut() {
                idle.touch(now);
            }
        }
        self.after_send(conn, res, msg.len())
    }
}

/// Messages read per `recvmmsg`. Two is enough for the point of it: a
/// read that returns fewer than asked shows the queue empty, so a drain
/// ends without a second system call to see `WouldBlock`.
const BATCH: usize = cmsg::MAX_RECV_BATCH;

/// Reads messages until the queue is empty or the budget is spent; `true`
/// if the budget ran out.
///
/// A `recvmmsg` that returns fewer messages than asked found the queue
/// empty — or met an error the kernel keeps for the next call, which only
/// happens with the peer's close or reset, whose readiness event carries
/// `RDHUP`/`ERR`. So a short read ends the drain only when the event had
/// neither (`trust_short_read`); otherwise reading goes on to `WouldBlock`.
pub(super) fn drain<H: Handler + ?Sized>(
    cx: &mut Ctx,
    bufs: &mut Bufs,
    handler: &mut H,
    id: SocketId,
    trust_short_read: bool,
) -> bool {
    let mut budget = cx.config.read_budget;
    if bufs.rbuf2.len() < bufs.rbuf.len() {
        // Untouched zeroed pages: resident only once written.
        bufs.rbuf2 = vec![0; bufs.rbuf.len()];
    }
    while budget > 0 {
        let Some(Sock::Seq(c)) = cx.table.get(id).and_then(|e| e.sock.as_ref()) else {
            return false;
        };
        let fd = c.sock.as_raw_fd();
        let max = c.max_msg;
        let want = BATCH.min(budget);
        let res = cmsg::recvmmsg(
            fd,
            &mut [&mut bufs.rbuf[..], &mut bufs.rbuf2[..]][..want],
            &mut [&mut bufs.anc.words[..], &mut bufs.anc2.words[..]][..want],
        );
        let (asked, got) = match res {
            Ok(r) => r,
            Err(e) => {
                budget -= 1; // an EINTR storm must not spin here
                if cx.recv_failed(handler, id, e) {
                    continue;
                }
                return false;
            }
        };
        let mut n = 0;
        for (i, r) in got.into_iter().enumerate() {
            let Some(r) = r else { break };
            n += 1;
            budget = budget.saturating_sub(1);
            let data = if i == 0 {
                &bufs.rbuf[..]
            } else {
                &bufs.rbuf2[..]
            };
            if !deliver(cx, handler, id, data, r, max) {
                return false; // closed: the rest of the batch (fds) is dropped
            }
        }
        if n < asked && trust_short_read {
            return false;
        }
    }
    true
}

/// Hands one received message to the handler (or reports it over quota,
/// or closes on end of stream); `false` once the connection is closed.
fn deliver<H: Handler + ?Sized>(
    cx: &mut Ctx,
    handler: &mut H,
    id: SocketId,
    buf: &[u8],
    mut r: cmsg::Received,
    max: usize,
) -> bool {
    let now = cx.now();
    let Some(entry) = cx.table.get_mut(id) else {
        return false; // closed by the previous message's callback
    };
    if r.is_seqpacket_eof() {
        cx.close_now(id, CloseReason::EndOfStream);
        cx.finish_callback(handler);
        return false;
    }
    let size = r.size(buf.len());
    let mut anc = RecvAncillary::from_received(&mut r);
    if anc.is_truncated() {
        entry.stats.fds_cut += 1;
    }
    if let Some(Sock::Seq(c)) = entry.sock.as_mut() {
        if let Some(idle) = c.idle.as_mut() {
            idle.touch(now);
        }
    }
    if size > max {
        // Consumed and reported, never delivered; its descriptors close.
        entry.stats.dropped_over_quota += 1;
        entry.stats.fds_closed_unclaimed += anc.fds().len() as u64;
        drop(anc);
        let e = Error::QuotaExceeded(QuotaExceeded { size, quota: max });
        cx.call(handler, |h, cx| h.on_error(cx, id, e));
        return true;
    }
    entry.stats.messages_in += 1;
    entry.stats.bytes_in += size as u64;
    let msg = SeqpacketMessage {
        data: &buf[..size],
        anc: &mut anc,
    };
    cx.call(handler, |h, cx| h.on_seqpacket(cx, id, msg));
    let unclaimed = anc.fds().len() as u64;
    drop(anc); // closes what the handler did not take
    if unclaimed > 0 {
        if let Some(e) = cx.table.get_mut(id) {
            e.stats.fds_closed_unclaimed += unclaimed;
        }
    }
    true
}

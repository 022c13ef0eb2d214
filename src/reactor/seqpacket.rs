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
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use super::listener::{Accept, AcceptGate};
use super::{finish_callback, BoundPath, Bufs, Ctx, Sock};
use crate::addr::{PeerAddr, UnixAddr};
use crate::error::Error;
use crate::handler::{CloseReason, Handler, SeqMessage, SocketId};
use crate::net::{
    self, BindOptions, MsgKind, RecvAncillary, SendAncillary, UCred, UnixSeqpacket,
    UnixSeqpacketListener,
};
use crate::recv::QuotaExceeded;
use crate::sys::cmsg;

/// Options for seqpacket listeners and connections:
/// `SeqpacketOptions { unlink_stale: true, ..SeqpacketOptions::default() }`.
#[derive(Debug, Clone)]
pub struct SeqpacketOptions {
    /// The largest message delivered; larger ones are consumed, counted
    /// and reported to [`Handler::on_error`]. `None`:
    /// [`Config::unix_max_message_len`](crate::Config::unix_max_message_len).
    pub max_message_len: Option<usize>,
    /// Listeners: remove a leftover socket file at the path before binding
    /// — only if it is a socket file nobody listens on. Off by default:
    /// binding over an existing path fails with `AddrInUse`, never silently.
    pub unlink_stale: bool,
    /// Listeners: remove the socket file when the listener closes (only if
    /// it is still the one this listener created). Default on.
    pub unlink_on_close: bool,
    /// Listeners: the `listen` backlog (default 128).
    pub backlog: i32,
    /// Listeners: the most connections accepted and open at once; at the
    /// cap, accepting pauses (no spinning) until one closes (default 10,000).
    pub max_connections: Option<usize>,
    /// `SO_SNDBUF` of every connection (accepted ones included). A Unix
    /// socket cannot send a message larger than its send buffer, so `None`
    /// (the default) sizes it to carry a message of `max_message_len`
    /// (forced past `wmem_max` where the process may).
    pub send_buffer_size: Option<usize>,
}

impl Default for SeqpacketOptions {
    fn default() -> SeqpacketOptions {
        SeqpacketOptions {
            max_message_len: None,
            unlink_stale: false,
            unlink_on_close: true,
            backlog: net::DEFAULT_BACKLOG,
            max_connections: Some(10_000),
            send_buffer_size: None,
        }
    }
}

/// A listening seqpacket socket and its accept policy.
pub(super) struct SeqListenerState {
    pub(super) listener: UnixSeqpacketListener,
    max_message_len: usize,
    send_buffer_size: usize,
    pub(super) gate: AcceptGate,
}

impl Accept for SeqListenerState {
    fn accept_one(&mut self, lid: SocketId) -> io::Result<(Sock, usize, PeerAddr)> {
        let (sock, peer) = self.listener.accept()?;
        set_send_buffer(&sock, self.send_buffer_size);
        let conn = SeqConn {
            sock,
            listener: Some(lid),
        };
        Ok((
            Sock::Seq(Box::new(conn)),
            self.max_message_len,
            PeerAddr::Unix(peer),
        ))
    }

    fn gate(&mut self) -> &mut AcceptGate {
        &mut self.gate
    }

    fn source(&mut self) -> &mut dyn mio::event::Source {
        &mut self.listener
    }
}

/// One seqpacket connection.
pub(super) struct SeqConn {
    pub(super) sock: UnixSeqpacket,
    pub(super) listener: Option<SocketId>,
}

impl Ctx {
    /// Listens for Unix seqpacket connections at `path` (created; removed
    /// again when the listener closes). Accepted connections are reported
    /// to [`Handler::on_accept`]. Binding over an existing path fails with
    /// `AddrInUse`: see [`SeqpacketOptions::unlink_stale`].
    pub fn listen_seqpacket<P: AsRef<Path>>(&mut self, path: P) -> Result<SocketId, Error> {
        self.listen_seqpacket_with(
            &UnixAddr::from_pathname(path)?,
            &SeqpacketOptions::default(),
        )
    }

    /// Listens at `addr` — a path, or an abstract name — with options.
    pub fn listen_seqpacket_with(
        &mut self,
        addr: &UnixAddr,
        opts: &SeqpacketOptions,
    ) -> Result<SocketId, Error> {
        let bind = BindOptions::new()
            .backlog(opts.backlog)
            .unlink_stale(opts.unlink_stale);
        let listener = UnixSeqpacketListener::bind_addr_with(addr, bind)?;
        let bound = match (addr.as_pathname(), opts.unlink_on_close) {
            (Some(p), true) => BoundPath::capture(p),
            _ => None,
        };
        let max = opts
            .max_message_len
            .unwrap_or(self.config.unix_max_message_len);
        let state = SeqListenerState {
            listener,
            max_message_len: max,
            send_buffer_size: opts.send_buffer_size.unwrap_or_else(|| room_for(max)),
            gate: AcceptGate::new(opts.max_connections),
        };
        self.insert(Sock::SeqListener(Box::new(state)), max, bound)
    }

    /// Connects to a seqpacket listener at `path`. Unix connects complete at
    /// once; a full listen backlog is an error of kind `WouldBlock`
    /// ("retry later") and leaves nothing behind.
    pub fn connect_seqpacket<P: AsRef<Path>>(&mut self, path: P) -> Result<SocketId, Error> {
        let sock = UnixSeqpacket::connect(path)?;
        self.add_seqpacket(sock)
    }

    /// Adopts a connected seqpacket socket (e.g. one end of
    /// [`UnixSeqpacket::pair`]).
    pub fn add_seqpacket(&mut self, sock: UnixSeqpacket) -> Result<SocketId, Error> {
        sock.set_nonblocking(true)?;
        let max = self.config.unix_max_message_len;
        set_send_buffer(&sock, room_for(max));
        self.insert(
            Sock::Seq(Box::new(SeqConn {
                sock,
                listener: None,
            })),
            max,
            None,
        )
    }

    /// Sends one message on a seqpacket connection, passing `fds` along
    /// (`SCM_RIGHTS`; the receiver gets its own descriptors of the same
    /// open files). A full peer gives [`Error::WouldBlock`] — nothing was
    /// sent — and [`Handler::on_writable`] follows once it drains.
    pub fn send_message(
        &mut self,
        conn: SocketId,
        msg: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), Error> {
        let entry = self.live_entry(conn)?;
        let Some(Sock::Seq(c)) = &entry.sock else {
            return Err(Error::WrongKind {
                op: "send_message",
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
        self.after_send(conn, res, msg.len()).map(drop)
    }

    /// Sends one datagram with passed descriptors on a Unix datagram
    /// socket, to `to` (or the connected peer with `None`).
    pub fn send_to_with_fds(
        &mut self,
        sock: SocketId,
        msg: &[u8],
        fds: &[BorrowedFd<'_>],
        to: Option<&UnixAddr>,
    ) -> Result<usize, Error> {
        let entry = self.live_entry(sock)?;
        let Some(Sock::UnixDgram(s)) = &entry.sock else {
            return Err(Error::WrongKind {
                op: "send_to_with_fds",
                kind: entry.kind,
            });
        };
        let dest = to.map(|a| crate::sys::RawDest::Sock(a.as_sock_addr()));
        let anc = SendAncillary::new().with_fds(fds);
        let res = net::send_with_ancillary(
            s.as_raw_fd(),
            MsgKind::Datagram,
            &[IoSlice::new(msg)],
            &anc,
            dest.as_ref(),
        );
        self.after_send(sock, res, msg.len())
    }

    /// The credentials of a seqpacket connection's peer (`SO_PEERCRED`, as
    /// of connect time).
    pub fn peer_credentials(&self, conn: SocketId) -> Result<UCred, Error> {
        match &self.live_entry(conn)?.sock {
            Some(Sock::Seq(c)) => Ok(c.sock.peer_cred()?),
            _ => Err(Error::WrongKind {
                op: "peer_credentials",
                kind: self.live_entry(conn)?.kind,
            }),
        }
    }
}

/// A send buffer that carries one message of `max` bytes (the kernel
/// needs some room beyond the payload for its own bookkeeping).
fn room_for(max: usize) -> usize {
    max.saturating_add(64 * 1024)
}

/// Raises `SO_SNDBUF` (forced past `wmem_max` where allowed); best effort:
/// if it stays smaller, larger sends fail with `MessageTooLarge`.
fn set_send_buffer(sock: &UnixSeqpacket, size: usize) {
    let s = socket2::SockRef::from(sock);
    if s.send_buffer_size().is_ok_and(|now| now >= size) {
        return;
    }
    if let Err(e) = s.set_send_buffer_size(size) {
        log::debug!("SO_SNDBUF {size}: {e}");
    }
    if s.send_buffer_size().is_ok_and(|now| now < size) {
        if let Err(e) = crate::sys::set_buffer_force(sock.as_raw_fd(), false, size) {
            log::debug!("SO_SNDBUFFORCE {size}: {e}");
        }
    }
}

fn close_reason(e: io::Error) -> CloseReason {
    match e.raw_os_error() {
        Some(libc::ECONNRESET) | Some(libc::EPIPE) => CloseReason::Reset,
        _ => CloseReason::Error(e),
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
pub(super) fn drain_conn<H: Handler + ?Sized>(
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
        let Some(entry) = cx.live_entry(id).ok() else {
            return false;
        };
        let Some(Sock::Seq(c)) = entry.sock.as_ref() else {
            return false;
        };
        let fd = c.sock.as_raw_fd();
        let max = entry.max_msg;
        let want = BATCH.min(budget);
        let res = cmsg::recvmmsg(
            fd,
            &mut [&mut bufs.rbuf[..], &mut bufs.rbuf2[..]][..want],
            &mut [&mut bufs.anc.words[..], &mut bufs.anc2.words[..]][..want],
        );
        let (asked, got) = match res {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                budget -= 1; // an EINTR storm must not spin here
                continue;
            }
            Err(e) => {
                cx.close_now(id, close_reason(e));
                finish_callback(cx, handler);
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
    let Some(entry) = cx.live_entry_mut(id) else {
        return false; // closed by the previous message's callback
    };
    if r.is_seqpacket_eof() {
        cx.close_now(id, CloseReason::EndOfStream);
        finish_callback(cx, handler);
        return false;
    }
    let size = r.size(buf.len());
    let mut anc = RecvAncillary::from_received(&mut r);
    if size > max {
        // Consumed and reported, never delivered; its descriptors close.
        entry.stats.dropped_over_quota += 1;
        entry.stats.fds_closed_unclaimed += anc.fds().len() as u64;
        drop(anc);
        cx.callbacks += 1;
        handler.on_error(
            cx,
            id,
            Error::QuotaExceeded(QuotaExceeded { size, quota: max }),
        );
        finish_callback(cx, handler);
        return true;
    }
    entry.stats.messages_in += 1;
    entry.stats.bytes_in += size as u64;
    cx.callbacks += 1;
    let msg = SeqMessage {
        data: &buf[..size],
        anc: &mut anc,
    };
    handler.on_message(cx, id, msg);
    let unclaimed = anc.fds().len() as u64;
    drop(anc); // closes what the handler did not take
    if unclaimed > 0 {
        if let Some(e) = cx.live_entry_mut(id) {
            e.stats.fds_closed_unclaimed += unclaimed;
        }
    }
    finish_callback(cx, handler);
    true
}

//! Listeners, for every connection kind (TCP, Unix seqpacket): accepting,
//! the connection cap, pausing without spinning, and resuming.
//!
//! A listener at its `max_connections`, or one whose `accept` failed for
//! lack of fds (`EMFILE`, `ENFILE`) or memory, is *deregistered*: it raises
//! no events, so nothing spins. It is registered again — and epoll reports
//! a waiting backlog at once — when one of its connections closes (cap), or
//! when any socket of the reactor closes or [`ACCEPT_RETRY`] passes (fds).

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use mio::Interest;

use super::ctx::{Ctx, TimerTarget};
use super::limits::{PerSource, Source};
use super::table::{token_of, Sock};
use super::tcp::TcpListenIo;
use crate::addr::PeerAddr;
use crate::error::Error;
use crate::handler::{Handler, SocketId, SocketKind};

/// How long an accept paused by `EMFILE`/`ENFILE` waits before trying again
/// (it also resumes as soon as this reactor closes any socket).
pub(super) const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// A listening socket of some connection kind, and its accept policy.
pub(super) struct Listener {
    io: ListenIo,
    /// Connections it accepted that are still open.
    conns: usize,
    max_connections: Option<usize>,
    /// Deregistered: at the cap, or out of fds.
    paused: bool,
    /// Paused by `EMFILE`/`ENFILE` or the descriptor reserve (resumes when
    /// any socket closes).
    out_of_fds: bool,
    /// Open connections per source.
    per_source: PerSource,
    max_per_source: Option<usize>,
    /// The retry timer of an out-of-descriptors pause, while one is set
    /// (never more than one).
    retry: Option<crate::timer::TimerKey>,
}

/// A connection just accepted, before it is added.
pub(super) struct Accepted {
    pub(super) sock: Sock,
    pub(super) kind: SocketKind,
    pub(super) peer: PeerAddr,
    pub(super) source: Source,
    /// Its descriptor number: the lowest free one, so it tells how many
    /// descriptors the process has open at least.
    pub(super) fd: RawFd,
}

/// The listening socket itself; each kind's accept lives with its
/// transport.
pub(super) enum ListenIo {
    Tcp(TcpListenIo),
    #[cfg(target_os = "linux")]
    Seq(super::seqpacket::SeqListenIo),
}

impl ListenIo {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            ListenIo::Tcp(l) => &mut l.listener,
            #[cfg(target_os = "linux")]
            ListenIo::Seq(l) => &mut l.listener,
        }
    }

    /// Accepts one connection (which knows its listener `lid`).
    fn accept(&mut self, lid: SocketId, v6_prefix: u8) -> io::Result<Accepted> {
        match self {
            ListenIo::Tcp(l) => l.accept(lid, v6_prefix),
            #[cfg(target_os = "linux")]
            ListenIo::Seq(l) => l.accept(lid),
        }
    }
}

impl Listener {
    pub(super) fn new(
        io: ListenIo,
        max_connections: Option<usize>,
        max_per_source: Option<usize>,
    ) -> Listener {
        Listener {
            io,
            conns: 0,
            max_connections,
            paused: false,
            out_of_fds: false,
            per_source: PerSource::default(),
            max_per_source,
            retry: None,
        }
    }

    /// The listening socket while it is registered (not paused).
    pub(super) fn registered_source(&mut self) -> Option<&mut dyn mio::event::Source> {
        if self.paused {
            None
        } else {
            Some(self.io.source())
        }
    }

    pub(super) fn sock_ref(&self) -> socket2::SockRef<'_> {
        match &self.io {
            ListenIo::Tcp(l) => socket2::SockRef::from(&l.listener),
            #[cfg(target_os = "linux")]
            ListenIo::Seq(l) => socket2::SockRef::from(&l.listener),
        }
    }

    fn at_cap(&self) -> bool {
        self.max_connections.is_some_and(|max| self.conns >= max)
    }
}

/// Listeners paused because the process ran out of descriptors: any
/// socket that closes frees one, so each close tries them again.
#[derive(Debug, Default)]
pub(super) struct OutOfFds(Vec<SocketId>);

fn listener_mut(cx: &mut Ctx, id: SocketId) -> Option<&mut Listener> {
    match cx.table.get_mut(id)?.sock.as_mut()? {
        Sock::Listener(l) => Some(l),
        _ => None,
    }
}

/// Accepts until `WouldBlock`, the budget, the cap, or fds run out;
/// `true` if the budget ran out.
///
/// A connection that would leave fewer than [`Config::fd_reserve`]
/// descriptors free is closed at once and accepting pauses until a socket
/// closes; one whose source has its maximum open is closed at once.
///
/// [`Config::fd_reserve`]: crate::Config::fd_reserve
pub(super) fn drain<H: Handler + ?Sized>(cx: &mut Ctx, handler: &mut H, lid: SocketId) -> bool {
    let v6_prefix = cx.config.ipv6_source_prefix;
    let fd_limit = match crate::sys::open_files_limit() {
        Ok(n) => n.saturating_sub(cx.config.fd_reserve as u64),
        Err(_) => u64::MAX,
    };
    for _ in 0..cx.config.read_budget {
        let Some(l) = listener_mut(cx, lid) else {
            return false;
        };
        if l.paused {
            return false;
        }
        if l.at_cap() {
            log::debug!(
                "{lid}: {} connections, at the cap: accepting paused",
                l.conns
            );
            pause(cx, lid, false);
            return false;
        }
        match l.io.accept(lid, v6_prefix) {
            Ok(a) if a.fd as u64 >= fd_limit => {
                drop(a); // closes it: the reserve stays free
                log::warn!(
                    "{lid}: fewer than {} descriptors left: accepting paused until a socket closes",
                    cx.config.fd_reserve
                );
                count(cx, lid, |s| s.refused_fd_reserve += 1);
                pause(cx, lid, true);
                return false;
            }
            Ok(a)
                if l.max_per_source
                    .is_some_and(|m| l.per_source.count(a.source) >= m) =>
            {
                log::debug!(
                    "{lid}: {} has its maximum of connections open; closed",
                    a.peer
                );
                drop(a);
                count(cx, lid, |s| s.refused_per_source += 1);
            }
            Ok(Accepted {
                sock,
                kind,
                peer,
                source,
                ..
            }) => {
                l.conns += 1;
                l.per_source.add(source);
                match cx.insert(kind, sock, |s| s) {
                    Ok(cid) => cx.call(handler, |h, cx| h.on_accept(cx, lid, cid, &peer)),
                    Err((_, e)) => {
                        conn_closed(cx, lid, source);
                        cx.call(handler, |h, cx| h.on_error(cx, lid, e));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) =>
            {
                log::warn!("{lid}: accept: {e}; pausing accepts until a socket closes (retry in {ACCEPT_RETRY:?})");
                pause(cx, lid, true);
                cx.call(handler, |h, cx| h.on_error(cx, lid, Error::Io(e)));
                return false;
            }
            // The peer gave up before we accepted (ECONNABORTED), or a
            // per-connection error: nothing to do for the listener.
            Err(e) => log::debug!("{lid}: accept: {e}"),
        }
    }
    true
}

/// Counts something on the listener's stats.
fn count(cx: &mut Ctx, lid: SocketId, f: impl FnOnce(&mut super::SocketStats)) {
    if let Some(e) = cx.table.get_mut(lid) {
        f(&mut e.stats);
    }
}

/// Stops accepting: deregisters the listener (no events, no spinning).
fn pause(cx: &mut Ctx, lid: SocketId, out_of_fds: bool) {
    let now = cx.now();
    let Ctx {
        table,
        poll,
        timers,
        out_of_fds: paused,
        ..
    } = cx;
    let Some(Sock::Listener(l)) = table.get_mut(lid).and_then(|e| e.sock.as_mut()) else {
        return;
    };
    if !l.paused {
        if let Err(e) = poll.registry().deregister(l.io.source()) {
            log::warn!("{lid}: deregister: {e}");
        }
        l.paused = true;
    }
    if out_of_fds && !l.out_of_fds {
        l.out_of_fds = true;
        paused.0.push(lid);
        if l.retry.is_none() {
            l.retry = Some(timers.insert(now + ACCEPT_RETRY, TimerTarget::ResumeAccept(lid)));
        }
    }
}

/// Starts accepting again if paused and below the cap (the new
/// registration reports a waiting backlog at once).
pub(super) fn resume(cx: &mut Ctx, lid: SocketId) {
    let Ctx { table, poll, .. } = cx;
    let Some(Sock::Listener(l)) = table.get_mut(lid).and_then(|e| e.sock.as_mut()) else {
        return;
    };
    if !l.paused || l.at_cap() {
        return;
    }
    l.paused = false;
    l.out_of_fds = false;
    if let Err(e) = poll
        .registry()
        .register(l.io.source(), token_of(lid), Interest::READABLE)
    {
        log::warn!("{lid}: register: {e}");
        l.paused = true;
    }
}

/// The retry timer of a listener paused by `EMFILE` fired.
pub(super) fn retry_due(cx: &mut Ctx, lid: SocketId) {
    if let Some(l) = listener_mut(cx, lid) {
        l.retry = None;
    }
    cx.out_of_fds.0.retain(|&l| l != lid);
    resume(cx, lid);
}

/// A socket closed: a descriptor is free, so listeners that ran out of
/// them may accept again; and if the socket was a connection of a
/// listener, that listener (and the connection's source) has one fewer.
pub(super) fn socket_closed(cx: &mut Ctx, accepted_by: Option<(SocketId, Source)>) {
    if let Some((lid, source)) = accepted_by {
        conn_closed(cx, lid, source);
    }
    while let Some(lid) = cx.out_of_fds.0.pop() {
        resume(cx, lid);
    }
}

/// A connection `lid` accepted closed: one fewer; it may accept again.
fn conn_closed(cx: &mut Ctx, lid: SocketId, source: Source) {
    let Some(l) = listener_mut(cx, lid) else {
        return;
    };
    l.conns = l.conns.saturating_sub(1);
    l.per_source.remove(source);
    if l.paused && !l.out_of_fds {
        resume(cx, lid);
    }
}

//! Accepting connections, for every listener kind (TCP, Unix seqpacket):
//! the connection cap, pausing without spinning, and resuming.
//!
//! A listener at its `max_connections`, or one whose `accept` failed for
//! lack of fds (`EMFILE`, `ENFILE`) or memory, is *deregistered*: it raises
//! no events, so nothing spins. It is registered again — and epoll reports
//! a waiting backlog at once — when one of its connections closes (cap), or
//! when any socket of the reactor closes or [`ACCEPT_RETRY`] passes (fds).

use std::io;
use std::time::{Duration, Instant};

use mio::Interest;

use slab::Slab;

use super::{finish_callback, token_of, Ctx, Entry, Sock, TimerTarget};
use crate::addr::PeerAddr;
use crate::error::Error;
use crate::handler::{Handler, SocketId};

/// How long an accept paused by `EMFILE`/`ENFILE` waits before trying again
/// (it also resumes as soon as this reactor closes any socket).
pub(super) const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// The accept policy state every listener carries.
#[derive(Debug)]
pub(super) struct AcceptGate {
    /// Connections it accepted that are still open.
    conns: usize,
    max_connections: Option<usize>,
    /// Deregistered: at the cap, or out of fds.
    paused: bool,
    /// Paused by `EMFILE`/`ENFILE` (resumes when any socket closes).
    out_of_fds: bool,
}

impl AcceptGate {
    pub(super) fn new(max_connections: Option<usize>) -> AcceptGate {
        AcceptGate {
            conns: 0,
            max_connections,
            paused: false,
            out_of_fds: false,
        }
    }

    pub(super) fn is_paused(&self) -> bool {
        self.paused
    }

    fn at_cap(&self) -> bool {
        self.max_connections.is_some_and(|max| self.conns >= max)
    }
}

/// What a listener kind provides to the shared accept loop.
pub(super) trait Accept {
    /// Accepts one connection: the socket to add (its `listener` set to
    /// `lid`), its message quota, and the peer's address.
    fn accept_one(&mut self, lid: SocketId) -> io::Result<(Sock, usize, PeerAddr)>;
    /// The accept policy state.
    fn gate(&mut self) -> &mut AcceptGate;
    /// The listening socket, to (de)register.
    fn source(&mut self) -> &mut dyn mio::event::Source;
}

/// The listener behind `id` in `sockets`, if it is a live one.
fn listener_in(sockets: &mut Slab<Entry>, id: SocketId) -> Option<&mut dyn Accept> {
    let entry = sockets
        .get_mut(id.index as usize)
        .filter(|e| e.gen == id.gen)?;
    match entry.sock.as_mut()? {
        Sock::TcpListener(l) => Some(&mut **l),
        #[cfg(target_os = "linux")]
        Sock::SeqListener(l) => Some(&mut **l),
        _ => None,
    }
}

fn listener(cx: &mut Ctx, id: SocketId) -> Option<&mut dyn Accept> {
    listener_in(&mut cx.sockets, id)
}

/// Accepts until `WouldBlock`, the budget, the cap, or fds run out;
/// `true` if the budget ran out.
pub(super) fn drain<H: Handler + ?Sized>(cx: &mut Ctx, handler: &mut H, lid: SocketId) -> bool {
    for _ in 0..cx.config.read_budget {
        let Some(l) = listener(cx, lid) else {
            return false;
        };
        if l.gate().paused {
            return false;
        }
        if l.gate().at_cap() {
            log::debug!(
                "{lid}: {} connections, at the cap: accepting paused",
                l.gate().conns
            );
            pause(cx, lid, false);
            return false;
        }
        match l.accept_one(lid) {
            Ok((sock, max_msg, peer)) => {
                l.gate().conns += 1;
                match cx.insert(sock, max_msg, None) {
                    Ok(cid) => {
                        cx.callbacks += 1;
                        handler.on_accept(cx, lid, cid, &peer);
                        finish_callback(cx, handler);
                    }
                    Err(e) => {
                        conn_closed(cx, lid);
                        cx.callbacks += 1;
                        handler.on_error(cx, lid, e);
                        finish_callback(cx, handler);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE)
                        | Some(libc::ENFILE)
                        | Some(libc::ENOBUFS)
                        | Some(libc::ENOMEM)
                ) =>
            {
                log::warn!("{lid}: accept: {e}; pausing accepts until a socket closes (retry in {ACCEPT_RETRY:?})");
                pause(cx, lid, true);
                cx.callbacks += 1;
                handler.on_error(cx, lid, Error::Io(e));
                finish_callback(cx, handler);
                return false;
            }
            // The peer gave up before we accepted (ECONNABORTED), or a
            // per-connection error: nothing to do for the listener.
            Err(e) => log::debug!("{lid}: accept: {e}"),
        }
    }
    true
}

/// Stops accepting: deregisters the listener (no events, no spinning).
fn pause(cx: &mut Ctx, lid: SocketId, out_of_fds: bool) {
    let Ctx {
        sockets,
        poll,
        timers,
        paused_listeners,
        ..
    } = cx;
    let Some(l) = listener_in(sockets, lid) else {
        return;
    };
    if !l.gate().paused {
        l.gate().paused = true;
        if let Err(e) = poll.registry().deregister(l.source()) {
            log::warn!("{lid}: deregister: {e}");
        }
    }
    if out_of_fds && !l.gate().out_of_fds {
        l.gate().out_of_fds = true;
        paused_listeners.push(lid);
        timers.insert(
            Instant::now() + ACCEPT_RETRY,
            TimerTarget::ResumeAccept(lid),
        );
    }
}

/// Starts accepting again if paused and below the cap (the new
/// registration reports a waiting backlog at once).
pub(super) fn resume(cx: &mut Ctx, lid: SocketId) {
    let Ctx { sockets, poll, .. } = cx;
    let Some(l) = listener_in(sockets, lid) else {
        return;
    };
    if !l.gate().paused || l.gate().at_cap() {
        return;
    }
    l.gate().paused = false;
    l.gate().out_of_fds = false;
    if let Err(e) = poll
        .registry()
        .register(l.source(), token_of(lid), Interest::READABLE)
    {
        log::warn!("{lid}: register: {e}");
        l.gate().paused = true;
    }
}

/// A connection `lid` accepted closed: one fewer; it may accept again.
pub(super) fn conn_closed(cx: &mut Ctx, lid: SocketId) {
    let Some(l) = listener(cx, lid) else {
        return;
    };
    let gate = l.gate();
    gate.conns = gate.conns.saturating_sub(1);
    if gate.paused && !gate.out_of_fds {
        resume(cx, lid);
    }
}

//! The socket table: every socket of a reactor in a slab, named by
//! generation-checked [`SocketId`]s, and the mio tokens that carry them.
//!
//! Every lookup goes through [`Table::get`] / [`Table::get_mut`], which
//! check the generation and that the socket is still open: an id whose
//! socket closed — even one whose slot now holds a new socket — finds
//! nothing.

use std::io;

use mio::{Interest, Registry, Token};
use slab::Slab;

use super::datagram::Dgram;
use super::listener::Listener;
use super::rudp::RudpSock;
#[cfg(target_os = "linux")]
use super::seqpacket::SeqConn;
#[cfg(target_os = "linux")]
use super::signals::Signals;
use super::sources::{ChannelSource, FdSource};
use super::stats::SocketStats;
use super::tcp::TcpConn;
use crate::handler::{SocketId, SocketKind};

// A token packs a socket's generation (high 32 bits) and slot (low 32 bits)
// into a `usize`: that needs a 64-bit `usize`.
const _: () = assert!(
    usize::BITS >= 64,
    "msgloop packs socket ids into 64-bit mio tokens"
);

/// The token of the reactor's [`Waker`](crate::Waker).
pub(super) const WAKER_TOKEN: Token = Token(usize::MAX);

/// The mio token of a socket.
pub(super) fn token_of(id: SocketId) -> Token {
    Token(((u64::from(id.gen) << 32) | u64::from(id.index)) as usize)
}

/// The socket a token names.
pub(super) fn id_of(token: Token) -> SocketId {
    let t = token.0 as u64;
    SocketId {
        index: (t & 0xffff_ffff) as u32,
        gen: (t >> 32) as u32,
    }
}

/// One socket's transport state; each variant's type lives in the file of
/// its transport.
pub(super) enum Sock {
    /// UDP and Unix datagram sockets.
    Dgram(Dgram),
    #[cfg(target_os = "linux")]
    Signals(Signals),
    /// TCP and Unix seqpacket listeners.
    Listener(Box<Listener>),
    Tcp(Box<TcpConn>),
    Rudp(Box<RudpSock>),
    #[cfg(target_os = "linux")]
    Seq(Box<SeqConn>),
    /// A descriptor registered with `add_fd`.
    Fd(Box<FdSource>),
    /// A channel's receiving side (no descriptor: woken through the waker).
    Channel(Box<ChannelSource>),
}

impl Sock {
    /// The mio source to (de)register, if it is registered.
    fn source(&mut self) -> Option<&mut dyn mio::event::Source> {
        match self {
            Sock::Dgram(d) => Some(d.source()),
            #[cfg(target_os = "linux")]
            Sock::Signals(s) => Some(s.source()),
            Sock::Listener(l) => l.registered_source(),
            Sock::Tcp(c) => Some(&mut c.stream),
            Sock::Rudp(r) => Some(&mut r.sock),
            #[cfg(target_os = "linux")]
            Sock::Seq(c) => Some(&mut c.sock),
            Sock::Fd(s) => Some(&mut **s),
            Sock::Channel(_) => None,
        }
    }
}

/// A socket registers as its transport's mio source (a paused listener is
/// not registered).
impl mio::event::Source for Sock {
    fn register(&mut self, r: &Registry, token: Token, interest: Interest) -> io::Result<()> {
        match self.source() {
            Some(s) => s.register(r, token, interest),
            None => Ok(()),
        }
    }

    fn reregister(&mut self, r: &Registry, token: Token, interest: Interest) -> io::Result<()> {
        match self.source() {
            Some(s) => s.reregister(r, token, interest),
            None => Ok(()),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self.source() {
            Some(s) => s.deregister(r),
            None => Ok(()),
        }
    }
}

/// One slot of the table.
pub(super) struct Entry {
    pub(super) gen: u32,
    /// `None` once closed; the slot is freed at the end of `run_once`.
    pub(super) sock: Option<Sock>,
    pub(super) kind: SocketKind,
    /// WRITABLE interest is armed because a send returned `WouldBlock`
    /// (datagram and seqpacket sockets; TCP keeps its own).
    pub(super) want_write: bool,
    /// In the carry-over list (cut off by its read budget).
    pub(super) carried: bool,
    /// The `run_once` tick in which this socket was last drained.
    pub(super) served_tick: u64,
    pub(super) stats: SocketStats,
}

impl Entry {
    /// The connection's inactivity timer, if it has one.
    pub(super) fn idle_mut(&mut self) -> Option<&mut super::limits::Idle> {
        match self.sock.as_mut()? {
            Sock::Tcp(c) => c.idle.as_mut(),
            #[cfg(target_os = "linux")]
            Sock::Seq(c) => c.idle.as_mut(),
            _ => None,
        }
    }

    fn new(gen: u32, kind: SocketKind, sock: Sock) -> Entry {
        Entry {
            gen,
            sock: Some(sock),
            kind,
            want_write: false,
            carried: false,
            served_tick: 0,
            stats: SocketStats::default(),
        }
    }
}

/// The sockets of a reactor.
pub(super) struct Table {
    slab: Slab<Entry>,
    next_gen: u32,
    /// Slots closed during this pass, freed at its end.
    to_free: Vec<usize>,
    /// Sockets closed so far: while it is unchanged, every id that named
    /// an open socket still does.
    closed: u64,
}

impl Table {
    pub(super) fn new() -> Table {
        Table {
            slab: Slab::new(),
            next_gen: 0,
            to_free: Vec::new(),
            closed: 0,
        }
    }

    /// Registers `src` with `registry` and stores the socket `build`
    /// makes of it. On failure `src` comes back with the error (so an
    /// adopted socket can be handed back to its owner).
    pub(super) fn insert<S: mio::event::Source>(
        &mut self,
        registry: &Registry,
        kind: SocketKind,
        mut src: S,
        interest: Interest,
        build: impl FnOnce(S) -> Sock,
    ) -> Result<SocketId, (S, io::Error)> {
        let index = self.slab.vacant_key();
        if index >= u32::MAX as usize {
            return Err((src, io::Error::other("too many sockets")));
        }
        let mut gen = self.next_gen.wrapping_add(1);
        if gen == u32::MAX {
            gen = 0;
        }
        let id = SocketId {
            index: index as u32,
            gen,
        };
        if let Err(e) = registry.register(&mut src, token_of(id), interest) {
            return Err((src, e));
        }
        self.next_gen = gen;
        let key = self.slab.insert(Entry::new(gen, kind, build(src)));
        debug_assert_eq!(key, index);
        Ok(id)
    }

    /// Stores a socket that has no descriptor to register (a channel);
    /// `build` learns its id.
    pub(super) fn insert_without_source(
        &mut self,
        kind: SocketKind,
        build: impl FnOnce(SocketId) -> Sock,
    ) -> io::Result<SocketId> {
        let index = self.slab.vacant_key();
        if index >= u32::MAX as usize {
            return Err(io::Error::other("too many sockets"));
        }
        let mut gen = self.next_gen.wrapping_add(1);
        if gen == u32::MAX {
            gen = 0;
        }
        self.next_gen = gen;
        let id = SocketId {
            index: index as u32,
            gen,
        };
        self.slab.insert(Entry::new(gen, kind, build(id)));
        Ok(id)
    }

    /// The open socket `id` names.
    pub(super) fn get(&self, id: SocketId) -> Option<&Entry> {
        self.slab
            .get(id.index as usize)
            .filter(|e| e.gen == id.gen && e.sock.is_some())
    }

    /// The open socket `id` names.
    pub(super) fn get_mut(&mut self, id: SocketId) -> Option<&mut Entry> {
        self.slab
            .get_mut(id.index as usize)
            .filter(|e| e.gen == id.gen && e.sock.is_some())
    }

    /// Takes the socket out of its slot (closing it); the slot is freed at
    /// once, or at the end of the pass when `deferred` (ids of this pass
    /// must not be reused while events for them may still be dispatched).
    pub(super) fn take(&mut self, id: SocketId, deferred: bool) -> Option<(Sock, SocketStats)> {
        let e = self.get_mut(id)?;
        let sock = e.sock.take()?;
        let stats = e.stats;
        self.closed += 1;
        if deferred {
            self.to_free.push(id.index as usize);
        } else {
            self.slab.remove(id.index as usize);
        }
        Some((sock, stats))
    }

    /// Sockets closed so far (see `closed`).
    #[inline]
    pub(super) fn closed(&self) -> u64 {
        self.closed
    }

    /// Frees the slots of sockets closed during the pass.
    pub(super) fn free_closed(&mut self) {
        for index in self.to_free.drain(..) {
            self.slab.remove(index);
        }
    }

    /// Open sockets.
    pub(super) fn len(&self) -> usize {
        self.slab.len() - self.to_free.len()
    }

    /// Every open socket.
    pub(super) fn iter(&self) -> impl Iterator<Item = (SocketId, &Entry)> + '_ {
        self.slab
            .iter()
            .filter(|(_, e)| e.sock.is_some())
            .map(|(i, e)| {
                (
                    SocketId {
                        index: i as u32,
                        gen: e.gen,
                    },
                    e,
                )
            })
    }

    /// Every open socket, mutably.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (SocketId, &mut Entry)> + '_ {
        self.slab
            .iter_mut()
            .filter(|(_, e)| e.sock.is_some())
            .map(|(i, e)| {
                let id = SocketId {
                    index: i as u32,
                    gen: e.gen,
                };
                (id, e)
            })
    }

    /// Changes the interest `id` is registered with (edge-triggered: the
    /// kernel reports the current state at once if it matches).
    pub(super) fn reregister(&mut self, registry: &Registry, id: SocketId, interest: Interest) {
        let Some(src) = self
            .get_mut(id)
            .and_then(|e| e.sock.as_mut())
            .and_then(Sock::source)
        else {
            return;
        };
        if let Err(e) = registry.reregister(src, token_of(id), interest) {
            log::warn!("{id}: reregister: {e}");
        }
    }
}

/// Deregisters a socket being closed (before its fd closes).
pub(super) fn deregister(registry: &Registry, id: SocketId, sock: &mut Sock) {
    if let Some(src) = sock.source() {
        if let Err(e) = registry.deregister(src) {
            log::debug!("{id}: deregister: {e}");
        }
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
}

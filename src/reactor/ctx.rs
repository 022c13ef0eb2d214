//! [`Ctx`]: what a handler callback may do, and the reactor's state behind
//! it — the socket table, the timers, each transport's shared state — with
//! the operations that apply to every kind of socket (close, addresses,
//! counters, timers, the waker).

use std::cell::Cell;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Interest, Poll};
use socket2::SockRef;

use super::limits::Budget;
use super::listener::{self, OutOfFds};
use super::options::Config;
use super::sources::{Wake, Waker};
use super::stats::{ReactorStats, SocketStats};
use super::table::{self, Entry, Sock, Table};
use super::{rudp, tcp};
use crate::addr::{PeerAddr, UnixAddr};
use crate::error::Error;
use crate::handler::{CloseReason, Handler, SocketId, SocketKind, TimerId};
use crate::timer::Timers;

/// What a timer of the reactor's one deadline structure is for.
#[derive(Debug, Clone, Copy)]
pub(super) enum TimerTarget {
    User,
    /// A TCP connection's partial frame may have stalled.
    FrameIdle(SocketId),
    /// A listener paused by `EMFILE` tries again.
    ResumeAccept(SocketId),
    /// A reliable-UDP endpoint's next deadline.
    Rudp(SocketId),
    /// A connection's inactivity timeout may have passed.
    Idle(SocketId),
}

/// What a handler callback may do — send, close, add sockets, set timers,
/// read counters — and the reactor's state behind it.
///
/// Callbacks receive `&mut Ctx`; the host reaches the same methods on its
/// [`Reactor`](crate::Reactor) (which dereferences to `Ctx`) between
/// `run_once` calls. The methods are grouped by transport in the crate's
/// [naming table](crate#the-api-at-a-glance).
pub struct Ctx {
    pub(super) poll: Poll,
    pub(super) table: Table,
    pub(super) timers: Timers<TimerTarget>,
    pub(super) config: Config,
    /// The time of this pass, read lazily (one `clock_gettime` per pass at
    /// most, none when nothing asks).
    now: Cell<Option<Instant>>,
    pub(super) tick: u64,
    /// Inside `run_once`: closes are deferred, `on_close` is queued.
    pub(super) dispatching: bool,
    /// Sockets cut off by their budget, to serve next call.
    pub(super) carry: Vec<SocketId>,
    /// Closed during this call; `on_close` still to be delivered.
    pub(super) closed: Vec<(SocketId, CloseReason)>,
    /// Wake-ups from other threads (wakers, channels), once asked for.
    pub(super) wake: Option<Arc<Wake>>,
    closed_totals: SocketStats,
    closed_count: u64,
    pub(super) run_once_calls: u64,
    pub(super) callbacks: u64,
    /// The largest receive buffer any socket needs.
    pub(super) rbuf_needed: usize,
    /// TCP frames sent during this pass, written at its end.
    pub(super) tcp_out: tcp::Output,
    /// Reliable-UDP sockets with output or events pending.
    pub(super) rudp_pending: rudp::Pending,
    /// Listeners paused because the process ran out of fds.
    pub(super) out_of_fds: OutOfFds,
    /// The bytes peers make the reactor buffer, per source and in all.
    pub(super) budget: Budget,
    /// The socket whose callbacks run now (the culprit if one panics).
    pub(super) current: Option<SocketId>,
    /// A wake-up was lost to a panicking pass: deliver it next pass.
    pub(super) wake_pending: bool,
}

impl fmt::Debug for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx")
            .field("sockets", &self.table.len())
            .field("timers", &self.timers.len())
            .field("tick", &self.tick)
            .finish_non_exhaustive()
    }
}

impl Ctx {
    pub(super) fn new(config: Config) -> io::Result<Ctx> {
        let budget = Budget::new(config.max_buffered_bytes, config.max_buffered_per_source);
        Ok(Ctx {
            poll: Poll::new()?,
            table: Table::new(),
            timers: Timers::new(),
            config,
            now: Cell::new(None),
            tick: 0,
            dispatching: false,
            carry: Vec::new(),
            closed: Vec::new(),
            wake: None,
            closed_totals: SocketStats::default(),
            closed_count: 0,
            run_once_calls: 0,
            callbacks: 0,
            rbuf_needed: crate::recv::MAX_UDP_PAYLOAD,
            tcp_out: tcp::Output::default(),
            rudp_pending: rudp::Pending::default(),
            out_of_fds: OutOfFds::default(),
            budget,
            current: None,
            wake_pending: false,
        })
    }

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

    /// Forgets the pass's time (the next `now()` reads the clock).
    pub(super) fn reset_now(&self) {
        self.now.set(None);
    }

    // ---- every socket --------------------------------------------------

    /// Closes a socket.
    ///
    /// Inside a callback the socket is closed when the callback returns and
    /// [`Handler::on_close`] follows with [`CloseReason::Local`]; the id is
    /// dead at once (a send to it is [`Error::StaleId`]). Between
    /// `run_once` calls the socket is closed at once and no callback runs.
    /// Closing a reliable-UDP socket ends all its peers with it (no
    /// [`Handler::on_rudp_closed`] for them: the socket's `on_close` says
    /// why).
    pub fn close(&mut self, sock: SocketId) -> Result<(), Error> {
        self.entry(sock)?;
        self.close_now(sock, CloseReason::Local);
        Ok(())
    }

    /// The kind of a socket.
    pub fn kind(&self, sock: SocketId) -> Result<SocketKind, Error> {
        Ok(self.entry(sock)?.kind)
    }

    /// `true` while `sock` names an open socket.
    pub fn contains(&self, sock: SocketId) -> bool {
        self.table.get(sock).is_some()
    }

    /// The address a socket is bound to (any kind but signals).
    pub fn local_addr(&self, sock: SocketId) -> Result<PeerAddr, Error> {
        let raw = self.sock_ref(sock, "local_addr")?.local_addr()?;
        peer_addr_of(raw)
    }

    /// The address of the peer a socket is connected to: a TCP or
    /// seqpacket connection, a connected datagram socket.
    ///
    /// An unconnected socket gives [`Error::NotConnected`].
    pub fn peer_addr(&self, sock: SocketId) -> Result<PeerAddr, Error> {
        let kind = self.entry(sock)?.kind;
        if matches!(
            kind,
            SocketKind::TcpListener | SocketKind::SeqpacketListener
        ) {
            return Err(Error::WrongKind {
                op: "peer_addr",
                kind,
            });
        }
        match self.sock_ref(sock, "peer_addr")?.peer_addr() {
            Ok(raw) => peer_addr_of(raw),
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Err(Error::NotConnected),
            Err(e) => Err(Error::Io(e)),
        }
    }

    /// The credentials of a connected Unix socket's peer (`SO_PEERCRED`,
    /// as of connect time): a seqpacket connection, a connected Unix
    /// datagram socket (Linux).
    #[cfg(target_os = "linux")]
    pub fn peer_credentials(&self, sock: SocketId) -> Result<crate::net::UCred, Error> {
        let e = self.entry(sock)?;
        match (e.kind, e.sock.as_ref()) {
            (SocketKind::Seqpacket | SocketKind::UnixDatagram, Some(s)) => {
                let fd = s.raw_fd().ok_or(Error::WrongKind {
                    op: "peer_credentials",
                    kind: e.kind,
                })?;
                Ok(crate::sys::seqpacket::peer_cred(fd)?.into())
            }
            _ => Err(Error::WrongKind {
                op: "peer_credentials",
                kind: e.kind,
            }),
        }
    }

    /// Heap bytes a socket holds beyond its fixed bookkeeping: a TCP
    /// connection's send queue and partial frame (0 when idle).
    pub fn buffered_bytes(&self, sock: SocketId) -> Result<usize, Error> {
        Ok(match &self.entry(sock)?.sock {
            Some(Sock::Tcp(c)) => c.buffered_capacity(),
            _ => 0,
        })
    }

    /// Counters of one socket.
    ///
    /// For a reliable-UDP socket the snapshot includes its peers: how many
    /// are connected, packets lost, chunks retransmitted, the largest
    /// smoothed RTT ([`rudp_peer_stats`](Ctx::rudp_peer_stats) has one
    /// peer's figures).
    pub fn stats(&self, sock: SocketId) -> Result<SocketStats, Error> {
        let e = self.entry(sock)?;
        Ok(snapshot(e.stats, e.sock.as_ref()))
    }

    /// Counters of the whole reactor.
    pub fn reactor_stats(&self) -> ReactorStats {
        let mut totals = self.closed_totals;
        for (_, e) in self.table.iter() {
            totals.add(&snapshot(e.stats, e.sock.as_ref()));
        }
        ReactorStats {
            open_sockets: self.table.len(),
            closed_sockets: self.closed_count,
            pending_timers: self.timers.len(),
            run_once_calls: self.run_once_calls,
            callbacks: self.callbacks,
            buffered_bytes: self.budget.used(),
            buffered_peak: self.budget.peak(),
            totals,
        }
    }

    /// Open sockets.
    pub fn socket_count(&self) -> usize {
        self.table.len()
    }

    /// The ids of every open socket.
    pub fn socket_ids(&self) -> impl Iterator<Item = SocketId> + '_ {
        self.table.iter().map(|(id, _)| id)
    }

    // ---- timers and wake-ups -------------------------------------------

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

    /// A [`Waker`] for this reactor (the same one each call).
    pub fn waker(&mut self) -> io::Result<Waker> {
        Ok(Waker(self.wake()?))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    // ---- for the transports --------------------------------------------

    /// Work the next pass must do at once, without waiting for an event:
    /// sockets cut off by their read budget, `on_close` callbacks owed,
    /// output not yet flushed, a wake-up lost to a panic.
    pub(super) fn has_work_now(&self) -> bool {
        !self.carry.is_empty()
            || !self.closed.is_empty()
            || !self.tcp_out.is_empty()
            || self.rudp_pending.has_events()
            || self.wake_pending
    }

    /// One handler callback: counted, run, and followed by the `on_close`
    /// calls for sockets it closed.
    pub(super) fn call<H: Handler + ?Sized>(
        &mut self,
        handler: &mut H,
        f: impl FnOnce(&mut H, &mut Ctx),
    ) {
        self.callbacks += 1;
        f(handler, self);
        self.finish_callback(handler);
    }

    /// Delivers `on_close` for sockets closed since the last callback (and
    /// by those callbacks, until none are left).
    pub(super) fn finish_callback<H: Handler + ?Sized>(&mut self, handler: &mut H) {
        while let Some((id, reason)) = self.closed.pop() {
            self.callbacks += 1;
            handler.on_close(self, id, reason);
        }
    }

    /// Adds a socket: `src` is registered for readable events, then
    /// `build` makes the socket of it. On failure `src` comes back with the
    /// error.
    pub(super) fn insert<S: mio::event::Source>(
        &mut self,
        kind: SocketKind,
        src: S,
        build: impl FnOnce(S) -> Sock,
    ) -> Result<SocketId, (S, Error)> {
        self.insert_with_interest(kind, src, Interest::READABLE, build)
    }

    /// [`insert`](Ctx::insert) registering for `interest`.
    pub(super) fn insert_with_interest<S: mio::event::Source>(
        &mut self,
        kind: SocketKind,
        src: S,
        interest: Interest,
        build: impl FnOnce(S) -> Sock,
    ) -> Result<SocketId, (S, Error)> {
        let registry = self.poll.registry();
        let id = self
            .table
            .insert(registry, kind, src, interest, build)
            .map_err(|(s, e)| (s, Error::Io(e)))?;
        let Ctx { table, timers, .. } = self;
        if let Some(idle) = table.get_mut(id).and_then(Entry::idle_mut) {
            idle.arm(timers, id);
        }
        Ok(id)
    }

    /// The inactivity timer of `id` fired: closes it if it was idle for the
    /// whole `idle_timeout`.
    pub(super) fn idle_due<H: Handler + ?Sized>(&mut self, handler: &mut H, id: SocketId) {
        let now = self.now();
        let Ctx { table, timers, .. } = self;
        let Some(idle) = table.get_mut(id).and_then(Entry::idle_mut) else {
            return;
        };
        if idle.expired(now, timers, id) {
            log::debug!("{id}: nothing received or sent for its idle timeout; closing");
            self.close_now(id, CloseReason::IdleTimeout);
            self.finish_callback(handler);
        }
    }

    /// Room was freed in the buffer budget: connections whose reads paused
    /// for it try again on the next pass.
    pub(super) fn resume_paused_readers(&mut self) {
        for id in self.budget.take_paused() {
            self.carry_over(id);
        }
    }

    /// The open socket `id` names, or [`Error::StaleId`].
    pub(super) fn entry(&self, id: SocketId) -> Result<&table::Entry, Error> {
        self.table.get(id).ok_or(Error::StaleId)
    }

    /// The open socket `id` names, or [`Error::StaleId`].
    pub(super) fn entry_mut(&mut self, id: SocketId) -> Result<&mut table::Entry, Error> {
        self.table.get_mut(id).ok_or(Error::StaleId)
    }

    /// A socket2 view of any socket (not signals), for `op`.
    fn sock_ref(&self, id: SocketId, op: &'static str) -> Result<SockRef<'_>, Error> {
        let e = self.entry(id)?;
        e.sock
            .as_ref()
            .and_then(Sock::sock_ref)
            .ok_or(Error::WrongKind { op, kind: e.kind })
    }

    /// Closes `id` now (its slot is freed at the end of the pass) and owes
    /// the handler an `on_close` — inside a pass, or when the close was not
    /// the host's own between passes.
    pub(super) fn close_now(&mut self, id: SocketId, reason: CloseReason) {
        let Some((mut s, stats)) = self.table.take(id, self.dispatching) else {
            return;
        };
        table::deregister(self.poll.registry(), id, &mut s);
        self.closed_totals.add(&snapshot(stats, Some(&s)));
        self.closed_count += 1;
        // Each transport finishes its own business with the socket.
        let accepted_by = match &mut s {
            Sock::Tcp(c) => tcp::closing(self, id, c),
            Sock::Rudp(r) => {
                rudp::closing(self, id, r);
                None
            }
            #[cfg(target_os = "linux")]
            Sock::Seq(c) => c.closing(&mut self.timers),
            Sock::Channel(c) => {
                c.close();
                None
            }
            _ => None,
        };
        drop(s); // closes the fd (and removes a socket file it created)
        if self.dispatching || !matches!(reason, CloseReason::Local) {
            self.closed.push((id, reason));
        }
        listener::socket_closed(self, accepted_by);
    }

    /// Handles a receive error of `id` the one way every transport does:
    /// `WouldBlock` ends the drain; `EINTR` is retried; an error about one
    /// earlier datagram (an ICMP report) on a datagram socket is counted
    /// and reported to [`Handler::on_error`], and reading goes on; anything
    /// else closes the socket. Returns `true` if reading may go on.
    pub(super) fn recv_failed<H: Handler + ?Sized>(
        &mut self,
        handler: &mut H,
        id: SocketId,
        e: io::Error,
    ) -> bool {
        match e.kind() {
            io::ErrorKind::WouldBlock => return false,
            io::ErrorKind::Interrupted => return true,
            _ => {}
        }
        let Ok(entry) = self.entry_mut(id) else {
            return false;
        };
        entry.stats.recv_errors += 1;
        let datagrams = matches!(
            entry.kind,
            SocketKind::Udp | SocketKind::UnixDatagram | SocketKind::Rudp
        );
        if datagrams && is_per_datagram_error(&e) {
            self.call(handler, |h, cx| h.on_error(cx, id, Error::from_recv(e)));
            true
        } else {
            log::debug!("{id}: receive failed, closing: {e}");
            self.close_now(id, CloseReason::from_io(e));
            self.finish_callback(handler);
            false
        }
    }

    /// Remembers to serve `id` next pass without waiting for an event.
    pub(super) fn carry_over(&mut self, id: SocketId) {
        if let Some(e) = self.table.get_mut(id) {
            if !e.carried {
                e.carried = true;
                self.carry.push(id);
            }
        }
    }

    /// Arms WRITABLE interest after a send returned `WouldBlock`: the
    /// handler is owed an `on_writable` once the socket can send.
    pub(super) fn arm_writable(&mut self, id: SocketId) {
        match self.table.get_mut(id) {
            Some(e) if !e.want_write => e.want_write = true,
            _ => return,
        }
        let interest = Interest::READABLE | Interest::WRITABLE;
        self.table.reregister(self.poll.registry(), id, interest);
    }

    /// Drops WRITABLE interest if a `WouldBlock` armed it; `true` if so
    /// (then the handler is owed an `on_writable`).
    pub(super) fn disarm_writable(&mut self, id: SocketId) -> bool {
        match self.table.get_mut(id) {
            Some(e) if e.want_write => e.want_write = false,
            _ => return false,
        }
        self.table
            .reregister(self.poll.registry(), id, Interest::READABLE);
        true
    }

    /// Counts the outcome of a send on a datagram or seqpacket socket;
    /// `WouldBlock` arms [`Handler::on_writable`].
    pub(super) fn after_send(
        &mut self,
        sock: SocketId,
        res: io::Result<usize>,
        len: usize,
    ) -> Result<(), Error> {
        let Ok(entry) = self.entry_mut(sock) else {
            return Err(Error::StaleId);
        };
        match res {
            Ok(n) => {
                entry.stats.messages_out += 1;
                entry.stats.bytes_out += n as u64;
                Ok(())
            }
            Err(e) => {
                let err = Error::from_send(e, len);
                if let Error::WouldBlock = err {
                    entry.stats.send_would_block += 1;
                    self.arm_writable(sock);
                } else {
                    entry.stats.send_errors += 1;
                }
                Err(err)
            }
        }
    }
}

impl Sock {
    /// A socket2 view for socket calls; `None` for signals.
    pub(super) fn sock_ref(&self) -> Option<SockRef<'_>> {
        match self {
            Sock::Dgram(d) => Some(d.sock_ref()),
            #[cfg(target_os = "linux")]
            Sock::Signals(_) => None,
            Sock::Listener(l) => Some(l.sock_ref()),
            Sock::Tcp(c) => Some(SockRef::from(&c.stream)),
            Sock::Rudp(r) => Some(SockRef::from(&r.sock)),
            #[cfg(target_os = "linux")]
            Sock::Seq(c) => Some(SockRef::from(&c.sock)),
            Sock::Fd(_) | Sock::Channel(_) => None,
        }
    }

    /// The socket's descriptor; `None` for signals.
    #[cfg(target_os = "linux")]
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.sock_ref().map(|s| s.as_raw_fd())
    }
}

/// A socket's counters, with its reliable-UDP peers' figures folded in.
fn snapshot(stats: SocketStats, sock: Option<&Sock>) -> SocketStats {
    let mut s = stats;
    if let Some(Sock::Rudp(r)) = sock {
        r.add_peer_stats(&mut s);
    }
    s
}

/// The address a socket call reported, as a [`PeerAddr`].
fn peer_addr_of(raw: socket2::SockAddr) -> Result<PeerAddr, Error> {
    if let Some(a) = raw.as_socket() {
        return Ok(PeerAddr::Inet(a));
    }
    match UnixAddr::from_sock_addr(raw) {
        Some(a) => Ok(PeerAddr::Unix(a)),
        None => Err(Error::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            "the kernel reported an address of an unknown family",
        ))),
    }
}

/// Errors a datagram socket reports on receive that concern one earlier
/// datagram (an ICMP report, a transient shortage), not the socket.
fn is_per_datagram_error(e: &io::Error) -> bool {
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

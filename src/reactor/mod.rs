//! The reactor: the loop and its contract.
//!
//! [`Reactor::run_once`] waits for readiness, serves every ready socket,
//! fires due timers and writes the pass's output. This file is only that
//! loop (the pass, the wait computation, dispatch to the transports,
//! recovery from a panicking handler); each transport keeps its API, read
//! path and state in a file of its own:
//!
//! | file | what |
//! |---|---|
//! | `datagram.rs` | UDP and Unix datagram sockets |
//! | `tcp.rs` | length-prefixed TCP frames |
//! | `seqpacket.rs` | Unix seqpacket connections, fd passing |
//! | `rudp.rs` | reliable UDP: one protocol endpoint per socket |
//! | `listener.rs` | accepting, for TCP and seqpacket listeners |
//! | `signals.rs` | signals through a `signalfd` |
//! | `ctx.rs` | [`Ctx`]: what callbacks may do; operations on any socket |
//! | `table.rs` | the socket table and mio tokens |
//! | `options.rs`, `stats.rs` | settings and counters |

use std::fmt;
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use mio::Events;

use crate::handler::{CloseReason, Handler, SocketId, SocketKind, TimerId};

mod ctx;
mod datagram;
mod limits;
mod listener;
mod options;
mod rudp;
#[cfg(target_os = "linux")]
mod seqpacket;
#[cfg(target_os = "linux")]
mod signals;
mod sources;
mod stats;
mod table;
mod tcp;

pub use ctx::Ctx;
use ctx::TimerTarget;
pub use datagram::{Ecn, Transmit};
#[cfg(target_os = "linux")]
pub use options::SeqpacketOptions;
pub use options::{Config, DgramOptions, TcpOptions};
pub use sources::{ChannelError, ChannelMessage, ChannelSender, Readiness, Trigger, Waker};
pub use stats::{ReactorStats, SocketStats};
use table::{id_of, WAKER_TOKEN};

/// A single-threaded event loop over message-oriented sockets, driven by
/// the host's calls to [`run_once`](Reactor::run_once).
///
/// The reactor owns its sockets (in a slab, named by [`SocketId`]s), one
/// receive buffer shared by all of them, and one deadline structure for
/// every timer. It dereferences to [`Ctx`], so the host calls the same
/// methods — `bind_udp`, `send_to`, `set_timer`, `close` — between
/// `run_once` calls that callbacks call inside them.
///
/// ```
/// use msgloop::{Ctx, Datagram, Handler, Reactor, SocketId};
/// use std::time::Duration;
///
/// struct Echo { seen: usize }
/// impl Handler for Echo {
///     fn on_datagram(&mut self, cx: &mut Ctx, sock: SocketId, msg: Datagram<'_>) {
///         self.seen += 1;
///         cx.send_to(sock, msg.data(), msg.from()).ok();
///     }
/// }
///
/// let mut reactor = Reactor::new()?;
/// let server = reactor.bind_udp("127.0.0.1:0")?;
/// let addr = reactor.local_addr(server)?.as_inet().unwrap();
///
/// let client = std::net::UdpSocket::bind("127.0.0.1:0")?;
/// client.send_to(b"ping", addr)?;
///
/// let mut app = Echo { seen: 0 };
/// while app.seen == 0 {
///     reactor.run_once(&mut app, Some(Duration::from_secs(5)))?;
/// }
/// let mut buf = [0u8; 16];
/// let (n, _) = client.recv_from(&mut buf)?;
/// assert_eq!(&buf[..n], b"ping");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # The `run_once` contract
///
/// 1. It computes the wait: the caller's timeout, shortened to the next
///    timer, or zero if a socket still has unread data from a budget
///    cut-off. Waits are rounded *up* to whole milliseconds (epoll's unit),
///    so a timer 300 µs away costs one 1 ms sleep, never a busy loop.
/// 2. It polls, then drains every ready socket until `WouldBlock` or until
///    the socket's read budget ([`Config::read_budget`]) is spent.
/// 3. It fires due timers (and reliable-UDP timers: retransmissions,
///    acks, heartbeats).
/// 4. It writes the output of the pass — TCP frames coalesced into one
///    `writev` per connection, reliable-UDP datagrams with `sendmmsg` —
///    frees the slots of sockets closed during the call, and returns the
///    number of handler callbacks made. (A pass that
///    only buffered part of a TCP frame made none: judge progress by your
///    own state, not by a zero return.)
///
/// An idle reactor sleeps in `epoll_wait`: no periodic wake-ups, no
/// spinning, no hidden threads. `run_once` returns `Err` only if polling
/// itself fails; every error that concerns one socket goes to the handler.
///
/// # Spurious events
///
/// A readiness event with nothing to read makes no callback: the socket is
/// read, `WouldBlock` comes back, and that is all.
///
/// # Draining
///
/// mio is edge-triggered: a socket is read until `WouldBlock`. A socket cut
/// off by its budget is remembered and served on the next call without
/// waiting for a new edge (that call polls with a zero timeout), so no
/// message waits for traffic that may never come, and a flooded socket
/// cannot starve the others: every ready socket is served on every call.
///
/// # Backpressure
///
/// Every send either takes the whole message or refuses it with
/// [`Error::WouldBlock`](crate::Error::WouldBlock) — on every transport —
/// and the writable callback follows once it can take more:
/// [`Handler::on_writable`] for a socket, [`Handler::on_rudp_writable`] for
/// a reliable-UDP peer. Nothing is ever queued without bound:
///
/// - datagram and seqpacket sends are immediate and never queued by
///   msgloop: `WouldBlock` when the kernel's queue (or a Unix peer's) is
///   full. For an *unconnected* Unix datagram socket Linux gives no
///   readiness signal when a particular peer drains; `on_writable` then
///   reflects the socket's own send buffer;
/// - a TCP connection queues what the kernel does not take, up to
///   [`TcpOptions::max_send_queue`];
/// - a reliable-UDP peer queues up to its `max_send_queue_bytes`, within
///   its source's and its socket's send budgets (`max_source_send_bytes`,
///   `max_endpoint_send_bytes`): a peer that withholds acknowledgements
///   pins no more.
///
/// # Panics in handlers
///
/// By default a panic in a callback unwinds out of `run_once`. The reactor
/// puts itself in order first: slots of sockets closed during the pass are
/// freed, every socket that had an event in the interrupted pass is served
/// on the next call without waiting for a new edge, and a lost wake-up is
/// delivered then. Dropping the reactor closes every socket it holds; or
/// call `run_once` again to keep serving.
///
/// With [`Config::catch_panics`] the panic is caught instead: the socket
/// whose callback panicked is closed (its `on_close` says
/// [`CloseReason::HandlerPanicked`]), the panic is logged, and `run_once`
/// returns `Ok` — one bad message cannot take the server down.
///
/// # Embedding
///
/// The reactor's epoll fd is exposed through [`AsRawFd`]: a host with its
/// own poll loop can watch it for readability and call `run_once(Some(0))`
/// when it fires, sleeping at most until [`next_deadline`](Ctx::next_deadline).
pub struct Reactor {
    cx: Ctx,
    events: Events,
    /// Buffers lent to each pass.
    bufs: Bufs,
    /// The carry list being served this call (swapped with `cx.carry`).
    carry_now: Vec<SocketId>,
}

/// The buffers a pass reads into, lent to the transports' read paths.
struct Bufs {
    /// The one receive buffer; payloads are borrowed from it.
    rbuf: Vec<u8>,
    /// Reliable-UDP messages that do not lie whole in one datagram are
    /// copied here for the handler to borrow.
    scratch: Vec<u8>,
    /// Control-message room for received fds and credentials.
    #[cfg(target_os = "linux")]
    anc: crate::net::AncillaryBuf,
    /// Seqpacket reads take two messages per `recvmmsg`: the second one's
    /// buffer (as large as `rbuf`; allocated with the first seqpacket
    /// read) and control room.
    #[cfg(target_os = "linux")]
    rbuf2: Vec<u8>,
    #[cfg(target_os = "linux")]
    anc2: crate::net::AncillaryBuf,
}

impl fmt::Debug for Reactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reactor")
            .field("cx", &self.cx)
            .field("rbuf", &self.bufs.rbuf.len())
            .finish_non_exhaustive()
    }
}

impl Deref for Reactor {
    type Target = Ctx;
    fn deref(&self) -> &Ctx {
        &self.cx
    }
}

impl DerefMut for Reactor {
    fn deref_mut(&mut self) -> &mut Ctx {
        &mut self.cx
    }
}

impl AsRawFd for Reactor {
    fn as_raw_fd(&self) -> RawFd {
        self.cx.poll.as_raw_fd()
    }
}

impl Reactor {
    /// A reactor with the default [`Config`].
    pub fn new() -> io::Result<Reactor> {
        Reactor::with_config(Config::default())
    }

    /// A reactor with `config`.
    pub fn with_config(mut config: Config) -> io::Result<Reactor> {
        config.events_capacity = config.events_capacity.max(1);
        config.read_budget = config.read_budget.max(1);
        let events = Events::with_capacity(config.events_capacity);
        Ok(Reactor {
            cx: Ctx::new(config)?,
            bufs: Bufs {
                rbuf: Vec::new(),
                scratch: Vec::new(),
                #[cfg(target_os = "linux")]
                anc: crate::net::AncillaryBuf::new(),
                #[cfg(target_os = "linux")]
                rbuf2: Vec::new(),
                #[cfg(target_os = "linux")]
                anc2: crate::net::AncillaryBuf::new(),
            },
            events,
            carry_now: Vec::new(),
        })
    }

    /// Waits for readiness (at most `timeout`; `None` waits for ever),
    /// dispatches every ready socket and due timer to `handler`, and
    /// returns the number of callbacks made. See the [contract](Reactor#the-run_once-contract).
    pub fn run_once<H: Handler + ?Sized>(
        &mut self,
        handler: &mut H,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        // Unwinding costs nothing until a handler panics; then the reactor
        // puts itself back in order before the panic goes on.
        match panic::catch_unwind(AssertUnwindSafe(|| self.pass(handler, timeout))) {
            Ok(result) => result,
            Err(payload) => {
                let culprit = self.cx.current.take();
                self.recover_after_panic();
                if !self.cx.config.catch_panics {
                    panic::resume_unwind(payload)
                }
                let what = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(non-string panic payload)".into());
                match culprit {
                    Some(id) => {
                        log::error!("handler panicked serving {id}: {what}; closing it");
                        // Reported through on_close on the next pass.
                        self.cx.close_now(id, CloseReason::HandlerPanicked);
                    }
                    None => log::error!("handler panicked (timer or wake-up callback): {what}"),
                }
                Ok(0)
            }
        }
    }

    /// Leaves a consistent, idle reactor after a handler panicked mid-pass:
    /// closed sockets' slots are freed, and every socket that had an event
    /// in the interrupted pass is served on the next call without waiting
    /// for a new edge (their events would otherwise be lost: mio is
    /// edge-triggered).
    fn recover_after_panic(&mut self) {
        let cx = &mut self.cx;
        cx.current = None;
        cx.dispatching = false;
        cx.reset_now();
        cx.table.free_closed();
        rudp::after_panic(cx, &self.bufs.rbuf);
        if self.events.iter().any(|ev| ev.token() == WAKER_TOKEN) {
            cx.wake_pending = true;
        }
        let pending = self
            .carry_now
            .drain(..)
            .chain(self.events.iter().map(|ev| id_of(ev.token())));
        for id in pending {
            if let Some(e) = cx.table.get_mut(id) {
                if !e.carried {
                    e.carried = true;
                    e.served_tick = 0;
                    cx.carry.push(id);
                }
            }
        }
        self.events.clear();
    }

    fn pass<H: Handler + ?Sized>(
        &mut self,
        handler: &mut H,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let Reactor {
            cx,
            events,
            bufs,
            carry_now,
        } = self;
        cx.run_once_calls += 1;
        let wait = compute_wait(cx, timeout);
        if let Err(e) = cx.poll.poll(events, wait) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
            // A signal: treat as a wake-up with no events.
            events.clear();
        }
        cx.reset_now();
        cx.tick += 1;
        cx.dispatching = true;
        if bufs.rbuf.len() < cx.rbuf_needed {
            // Zeroed memory straight from the allocator: pages are only
            // touched (made resident) as messages are written into them.
            bufs.rbuf = vec![0; cx.rbuf_needed];
        }
        let before = cx.callbacks;
        // Closes that happened between passes (a failed send, a panic)
        // are reported first.
        cx.finish_callback(handler);

        // Sockets cut off by their budget last call come first.
        std::mem::swap(carry_now, &mut cx.carry);
        for &id in carry_now.iter() {
            if let Some(e) = cx.table.get_mut(id) {
                e.carried = false;
            }
            cx.current = Some(id);
            serve_readable(cx, bufs, handler, id, false, true);
        }
        carry_now.clear();

        for ev in events.iter() {
            if ev.token() == WAKER_TOKEN {
                sources::wake_due(cx, handler);
                continue;
            }
            let id = id_of(ev.token());
            let Some(kind) = cx.table.get(id).map(|e| e.kind) else {
                continue; // a socket closed earlier in this pass
            };
            cx.current = Some(id);
            if kind == SocketKind::Fd {
                let ready = Readiness {
                    readable: ev.is_readable(),
                    writable: ev.is_writable(),
                    closed: ev.is_read_closed() || ev.is_write_closed(),
                    error: ev.is_error(),
                };
                sources::fd_ready(cx, handler, id, ready);
                continue;
            }
            if kind == SocketKind::Tcp {
                if ev.is_writable() || ev.is_error() || ev.is_write_closed() {
                    tcp::writable(cx, handler, id);
                }
            } else if ev.is_writable() && cx.disarm_writable(id) {
                cx.call(handler, |h, cx| h.on_writable(cx, id));
            }
            if ev.is_readable() || ev.is_error() || ev.is_read_closed() {
                let hup = ev.is_error() || ev.is_read_closed();
                serve_readable(cx, bufs, handler, id, hup, false);
            }
        }

        cx.current = None;
        if std::mem::take(&mut cx.wake_pending) {
            sources::wake_due(cx, handler);
        }
        // Due timers, in deadline order. Timers set by these callbacks for
        // `now` or earlier fire in this pass too.
        let now = (cx.timers.len() > 0).then(|| cx.now());
        while let Some((key, target)) = now.and_then(|now| cx.timers.pop_due(now)) {
            cx.current = match target {
                TimerTarget::FrameIdle(id) | TimerTarget::Rudp(id) | TimerTarget::Idle(id) => {
                    Some(id)
                }
                _ => None,
            };
            match target {
                TimerTarget::User => cx.call(handler, |h, cx| h.on_timer(cx, TimerId(key))),
                TimerTarget::FrameIdle(id) => tcp::frame_idle_due(cx, handler, id, cx.now()),
                TimerTarget::ResumeAccept(lid) => listener::retry_due(cx, lid),
                TimerTarget::Idle(id) => cx.idle_due(handler, id),
                TimerTarget::Rudp(id) => {
                    let now = cx.now();
                    rudp::timeout_due(cx, &mut bufs.scratch, handler, id, now)
                }
            }
        }

        cx.current = None;
        // Output produced during the pass goes out now, coalesced.
        rudp::finish_pass(cx, &mut bufs.scratch, handler);
        tcp::flush_output(cx, handler);

        cx.dispatching = false;
        cx.reset_now();
        cx.table.free_closed();
        Ok((cx.callbacks - before) as usize)
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        let ids: Vec<SocketId> = self.cx.socket_ids().collect();
        self.cx.dispatching = false;
        for id in ids {
            self.cx.close_now(id, CloseReason::Local);
        }
    }
}

fn compute_wait(cx: &mut Ctx, timeout: Option<Duration>) -> Option<Duration> {
    if cx.has_work_now() {
        return Some(Duration::ZERO);
    }
    let mut wait = timeout;
    if let Some(deadline) = cx.timers.next_deadline() {
        let until = deadline.saturating_duration_since(Instant::now());
        wait = Some(wait.map_or(until, |w| w.min(until)));
    }
    // Round up to whole milliseconds (epoll's unit): a timer 300 µs away
    // costs one 1 ms sleep, never a busy loop of zero-timeout polls.
    wait.map(|w| {
        let ms = w.subsec_nanos().div_ceil(1_000_000);
        Duration::from_secs(w.as_secs()) + Duration::from_millis(u64::from(ms))
    })
}

/// Serves a readable socket once per pass: its transport reads (or
/// accepts) until `WouldBlock` or the read budget; a socket cut off by its
/// budget is carried to the next pass.
///
/// `hup`: the event reported the peer's close or an error (then a short
/// read does not show the queue empty: a FIN or RST raises no later edge).
fn serve_readable<H: Handler + ?Sized>(
    cx: &mut Ctx,
    bufs: &mut Bufs,
    handler: &mut H,
    id: SocketId,
    hup: bool,
    carried: bool,
) {
    let trust_short_read = !hup && !carried;
    let tick = cx.tick;
    // Once per pass — but a close or an error reported for a socket
    // already served in this pass (carried over) is served too: no other
    // edge will come for it (a TCP connection whose reads are paused for
    // room learns here that its peer left).
    let kind = match cx.table.get_mut(id) {
        Some(e) if e.served_tick != tick || hup => {
            e.served_tick = tick;
            e.kind
        }
        _ => return,
    };
    let more = match kind {
        SocketKind::Udp | SocketKind::UnixDatagram => datagram::drain(cx, bufs, handler, id),
        #[cfg(target_os = "linux")]
        SocketKind::Signals => signals::drain(cx, handler, id),
        SocketKind::TcpListener | SocketKind::SeqpacketListener => listener::drain(cx, handler, id),
        SocketKind::Tcp => tcp::drain(cx, &mut bufs.rbuf, handler, id, trust_short_read, hup),
        #[cfg(target_os = "linux")]
        SocketKind::Seqpacket => seqpacket::drain(cx, bufs, handler, id, trust_short_read),
        SocketKind::Channel => sources::drain_channel(cx, handler, id),
        SocketKind::Rudp => rudp::drain(
            cx,
            &mut bufs.rbuf,
            &mut bufs.scratch,
            handler,
            id,
            trust_short_read,
        ),
        #[allow(unreachable_patterns)]
        _ => false,
    };
    if more {
        cx.carry_over(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_round_up_to_whole_milliseconds() {
        let mut r = Reactor::new().unwrap();
        assert_eq!(
            compute_wait(&mut r.cx, Some(Duration::from_micros(300))),
            Some(Duration::from_millis(1))
        );
        assert_eq!(
            compute_wait(&mut r.cx, Some(Duration::from_micros(1500))),
            Some(Duration::from_millis(2))
        );
        assert_eq!(
            compute_wait(&mut r.cx, Some(Duration::ZERO)),
            Some(Duration::ZERO)
        );
        assert_eq!(compute_wait(&mut r.cx, None), None);
        r.set_timer(Duration::from_secs(10));
        let w = compute_wait(&mut r.cx, None).unwrap();
        assert!(
            w > Duration::from_secs(9) && w <= Duration::from_secs(10),
            "{w:?}"
        );
    }
}

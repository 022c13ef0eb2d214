//! Event sources that are not sockets of ours: any file descriptor (a pipe,
//! stdin, an inotify or timer fd, another library's socket) and channels
//! that other threads send into — with the cross-thread [`Waker`] they are
//! built on.
//!
//! # File descriptors
//!
//! [`Ctx::add_fd`] registers anything `AsFd` for readable and/or writable
//! readiness and calls [`Handler::on_ready`] when it is ready. mio is
//! edge-triggered, and so is [`Trigger::Edge`]: one call per readiness
//! edge, after which the handler must read (or write) until `WouldBlock`,
//! or it will not hear of that readiness again. [`Trigger::Level`] calls
//! `on_ready` on every pass while the descriptor stays ready (the reactor
//! asks the kernel again after each call: one system call per call).
//!
//! # Channels
//!
//! [`Ctx::channel`] makes a bounded channel: its [`ChannelSender`] works from any
//! thread, and each message arrives in the loop as a
//! [`Handler::on_channel`] call, in the order sent. A full channel refuses
//! a send ([`ChannelError::Full`]) rather than grow without bound.

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::ctx::Ctx;
use super::table::{Sock, WAKER_TOKEN};
use crate::error::Error;
use crate::handler::{Handler, SocketId, SocketKind};

/// Wakes a reactor's `run_once` from any thread; the handler's
/// [`on_wake`](Handler::on_wake) runs on the reactor's thread.
///
/// Cheap to clone; all clones wake the same reactor.
#[derive(Clone, Debug)]
pub struct Waker(pub(super) Arc<Wake>);

impl Waker {
    /// Wakes the reactor. Wake-ups before it runs are coalesced.
    pub fn wake(&self) -> io::Result<()> {
        self.0.user.store(true, Ordering::Release);
        self.0.waker.wake()
    }
}

/// What a reactor's wake-ups share with other threads: the one mio waker,
/// whether a [`Waker`] was used, and the channels with messages waiting.
#[derive(Debug)]
pub(super) struct Wake {
    waker: mio::Waker,
    /// A [`Waker`] (not a channel) woke the reactor.
    user: AtomicBool,
    /// Channels that were sent to since the reactor last looked.
    ready: Mutex<Vec<SocketId>>,
}

impl Wake {
    pub(super) fn new(registry: &Registry) -> io::Result<Wake> {
        Ok(Wake {
            waker: mio::Waker::new(registry, WAKER_TOKEN)?,
            user: AtomicBool::new(false),
            ready: Mutex::new(Vec::new()),
        })
    }

    /// `true` if a [`Waker`] woke the reactor since the last call.
    pub(super) fn take_user(&self) -> bool {
        self.user.swap(false, Ordering::AcqRel)
    }

    /// The channels sent to since the last call.
    pub(super) fn take_ready(&self) -> Vec<SocketId> {
        std::mem::take(&mut *lock(&self.ready))
    }
}

/// A mutex that a panicking thread cannot poison for the others: the data
/// behind it (queues of messages) stays consistent at every step.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How [`Handler::on_ready`] follows a descriptor's readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Trigger {
    /// Once per readiness edge: read (or write) until `WouldBlock`.
    Edge,
    /// On every pass while the descriptor is ready.
    Level,
}

/// What [`Handler::on_ready`] reports of a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Readiness {
    /// Readable (or the peer closed: a read returns end of file).
    pub readable: bool,
    /// Writable.
    pub writable: bool,
    /// The other end closed (a pipe's writer, a socket's peer).
    pub closed: bool,
    /// An error is pending on the descriptor.
    pub error: bool,
}

/// A registered file descriptor.
pub(super) struct FdSource {
    /// The descriptor's owner, as given (returned by `Ctx::fd_source`).
    owner: Box<dyn AnyFd>,
    fd: RawFd,
    interest: Interest,
    trigger: Trigger,
}

/// `AsFd` and `Any`, for the owner of a registered descriptor.
trait AnyFd: Any {
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<F: AsFd + Any> AnyFd for F {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl mio::event::Source for FdSource {
    fn register(&mut self, r: &Registry, token: Token, interest: Interest) -> io::Result<()> {
        SourceFd(&self.fd).register(r, token, interest)
    }

    fn reregister(&mut self, r: &Registry, token: Token, interest: Interest) -> io::Result<()> {
        SourceFd(&self.fd).reregister(r, token, interest)
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        SourceFd(&self.fd).deregister(r)
    }
}

/// A channel's receiving side, as the reactor holds it (the message type
/// erased).
pub(super) struct ChannelSource {
    inbox: Arc<dyn Inbox>,
}

/// Pops a channel's messages, boxed for the handler.
trait Inbox: Send + Sync {
    /// The reactor is about to look at the queue: a send from now on flags
    /// the channel again.
    fn unflag(&self);
    fn pop(&self) -> Option<ChannelMessage>;
    fn close(&self);
}

/// One channel's queue, shared by its senders and the reactor.
struct Queue<T> {
    items: Mutex<VecDeque<T>>,
    capacity: usize,
    /// The reactor closed the channel: sends fail.
    closed: AtomicBool,
    /// In the reactor's ready list (not yet looked at).
    flagged: AtomicBool,
    id: SocketId,
    wake: Arc<Wake>,
}

impl<T: Send + 'static> Inbox for Queue<T> {
    fn unflag(&self) {
        self.flagged.store(false, Ordering::Release);
    }

    fn pop(&self) -> Option<ChannelMessage> {
        let item = lock(&self.items).pop_front()?;
        Some(ChannelMessage(Box::new(item)))
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        lock(&self.items).clear();
    }
}

/// The sending side of a [`Ctx::channel`]: cheap to clone, usable from any
/// thread. Each message arrives at [`Handler::on_channel`] on the reactor's
/// thread.
pub struct ChannelSender<T> {
    queue: Arc<Queue<T>>,
}

impl<T> Clone for ChannelSender<T> {
    fn clone(&self) -> Self {
        ChannelSender {
            queue: Arc::clone(&self.queue),
        }
    }
}

impl<T> fmt::Debug for ChannelSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelSender")
            .field("channel", &self.queue.id)
            .field("capacity", &self.queue.capacity)
            .finish_non_exhaustive()
    }
}

/// Why [`ChannelSender::send`] gave the message back.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelError<T> {
    /// The channel holds its capacity of messages not yet delivered.
    Full(T),
    /// The channel was closed in the reactor (or the reactor dropped).
    Closed(T),
}

impl<T> fmt::Display for ChannelError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::Full(_) => f.write_str("the channel is full"),
            ChannelError::Closed(_) => f.write_str("the channel is closed"),
        }
    }
}

impl<T: fmt::Debug> std::error::Error for ChannelError<T> {}

impl<T: Send + 'static> ChannelSender<T> {
    /// Queues `msg` and wakes the reactor. A full or closed channel gives
    /// the message back.
    pub fn send(&self, msg: T) -> Result<(), ChannelError<T>> {
        let q = &*self.queue;
        if q.closed.load(Ordering::Acquire) {
            return Err(ChannelError::Closed(msg));
        }
        {
            let mut items = lock(&q.items);
            if items.len() >= q.capacity {
                return Err(ChannelError::Full(msg));
            }
            items.push_back(msg);
        }
        if !q.flagged.swap(true, Ordering::AcqRel) {
            lock(&q.wake.ready).push(q.id);
            // A reactor gone is a closed channel; the message is dropped
            // with it, like every other queued one.
            let _ = q.wake.waker.wake();
        }
        Ok(())
    }
}

/// A message from a [`ChannelSender`]: the sent value, boxed. Take it back with
/// [`downcast`](ChannelMessage::downcast) to the channel's type.
pub struct ChannelMessage(Box<dyn Any + Send>);

impl ChannelMessage {
    /// The message as `T`, or back as itself if it is not one.
    pub fn downcast<T: Any>(self) -> Result<T, ChannelMessage> {
        match self.0.downcast::<T>() {
            Ok(b) => Ok(*b),
            Err(b) => Err(ChannelMessage(b)),
        }
    }

    /// The message as a `&T`, if it is one.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

impl fmt::Debug for ChannelMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChannelMessage(..)")
    }
}

impl ChannelSource {
    /// The reactor closes the channel: later sends fail, queued messages go.
    pub(super) fn close(&self) {
        self.inbox.close();
    }
}

impl Ctx {
    /// Registers a file descriptor — a pipe, stdin, an inotify or timer fd,
    /// another library's socket — for `interest`; [`Handler::on_ready`]
    /// reports its readiness, following `trigger` (see the
    /// [module docs](crate::Trigger)). The reactor owns `fd` from now on:
    /// reach it with [`fd_source`](Ctx::fd_source); [`close`](Ctx::close)
    /// drops it.
    ///
    /// Regular files cannot be watched (epoll refuses them with `EPERM`):
    /// they are always ready.
    pub fn add_fd<F: AsFd + Any>(
        &mut self,
        fd: F,
        interest: Interest,
        trigger: Trigger,
    ) -> Result<SocketId, Error> {
        let raw = fd.as_fd().as_raw_fd();
        let src = FdSource {
            owner: Box::new(fd),
            fd: raw,
            interest,
            trigger,
        };
        self.insert_with_interest(SocketKind::Fd, src, interest, |s| Sock::Fd(Box::new(s)))
            .map_err(|(_, e)| e)
    }

    /// The descriptor's owner given to [`add_fd`](Ctx::add_fd), as its
    /// type `F` (`None` if `id` is not one, or not an `F`).
    pub fn fd_source<F: Any>(&mut self, id: SocketId) -> Option<&mut F> {
        match self.table.get_mut(id)?.sock.as_mut()? {
            Sock::Fd(s) => s.owner.as_any_mut().downcast_mut(),
            _ => None,
        }
    }

    /// A bounded channel into the loop: up to `capacity` messages wait
    /// (a send beyond is refused with [`ChannelError::Full`]); each one
    /// arrives at [`Handler::on_channel`] with the returned id, in the order
    /// sent. [`close`](Ctx::close) closes it: later sends fail with
    /// [`ChannelError::Closed`].
    pub fn channel<T: Send + 'static>(
        &mut self,
        capacity: usize,
    ) -> Result<(ChannelSender<T>, SocketId), Error> {
        let wake = self.wake()?;
        let mut sender = None;
        let id = self
            .table
            .insert_without_source(SocketKind::Channel, |id| {
                let queue = Arc::new(Queue {
                    items: Mutex::new(VecDeque::new()),
                    capacity: capacity.max(1),
                    closed: AtomicBool::new(false),
                    flagged: AtomicBool::new(false),
                    id,
                    wake,
                });
                sender = Some(ChannelSender {
                    queue: Arc::clone(&queue),
                });
                Sock::Channel(Box::new(ChannelSource { inbox: queue }))
            })
            .map_err(Error::Io)?;
        Ok((sender.expect("built with the channel"), id))
    }

    /// The reactor's shared wake-up state, created with its first use.
    pub(super) fn wake(&mut self) -> io::Result<Arc<Wake>> {
        if let Some(w) = &self.wake {
            return Ok(Arc::clone(w));
        }
        let w = Arc::new(Wake::new(self.poll.registry())?);
        self.wake = Some(Arc::clone(&w));
        Ok(w)
    }
}

/// The reactor's waker fired: channels with messages deliver them (up to
/// the read budget each; the rest next pass), and `on_wake` runs if a
/// [`Waker`] was used.
pub(super) fn wake_due<H: Handler + ?Sized>(cx: &mut Ctx, handler: &mut H) {
    let Some(wake) = cx.wake.clone() else {
        return;
    };
    for id in wake.take_ready() {
        cx.carry_over(id);
    }
    if wake.take_user() {
        cx.call(handler, |h, cx| h.on_wake(cx));
    }
}

/// Delivers the waiting messages of channel `id`; `true` if the read
/// budget ran out with more waiting.
pub(super) fn drain_channel<H: Handler + ?Sized>(
    cx: &mut Ctx,
    handler: &mut H,
    id: SocketId,
) -> bool {
    // Cleared before the queue is looked at, so that a send racing with
    // this drain flags the channel again.
    if let Some(Sock::Channel(c)) = cx.table.get(id).and_then(|e| e.sock.as_ref()) {
        c.inbox.unflag();
    }
    for _ in 0..cx.config.read_budget {
        let Some(Sock::Channel(c)) = cx.table.get(id).and_then(|e| e.sock.as_ref()) else {
            return false;
        };
        let Some(msg) = c.inbox.pop() else {
            return false;
        };
        if let Some(e) = cx.table.get_mut(id) {
            e.stats.messages_in += 1;
        }
        cx.call(handler, |h, cx| h.on_channel(cx, id, msg));
    }
    true
}

/// A descriptor registered with `add_fd` is ready.
pub(super) fn fd_ready<H: Handler + ?Sized>(
    cx: &mut Ctx,
    handler: &mut H,
    id: SocketId,
    ready: Readiness,
) {
    cx.call(handler, |h, cx| h.on_ready(cx, id, ready));
    let Some(Sock::Fd(s)) = cx.table.get(id).and_then(|e| e.sock.as_ref()) else {
        return;
    };
    if s.trigger == Trigger::Level {
        // Asking again makes epoll report the descriptor at once if it is
        // still ready: a level-triggered source on an edge-triggered poll.
        let interest = s.interest;
        cx.table.reregister(cx.poll.registry(), id, interest);
    }
}

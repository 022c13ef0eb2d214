//! Signals in the reactor (Linux): a `signalfd` whose signals are blocked
//! for the thread, read like any socket and delivered to
//! [`Handler::on_signal`] on the reactor's thread.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::ctx::Ctx;
use super::table::Sock;
use crate::error::Error;
use crate::handler::{CloseReason, Handler, SocketId, SocketKind};
use crate::sys;

/// A signalfd and the signals it blocked (unblocked again on close).
pub(super) struct Signals {
    fd: OwnedFd,
    signals: Vec<libc::c_int>,
}

impl Signals {
    pub(super) fn source(&mut self) -> &mut dyn mio::event::Source {
        self
    }
}

impl mio::event::Source for Signals {
    fn register(&mut self, r: &Registry, token: Token, interest: Interest) -> io::Result<()> {
        SourceFd(&self.fd.as_raw_fd()).register(r, token, interest)
    }

    fn reregister(&mut self, r: &Registry, token: Token, interest: Interest) -> io::Result<()> {
        SourceFd(&self.fd.as_raw_fd()).reregister(r, token, interest)
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        SourceFd(&self.fd.as_raw_fd()).deregister(r)
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        sys::unblock_signals(&self.signals);
    }
}

impl Ctx {
    /// Delivers `signals` (e.g. `[libc::SIGINT, libc::SIGTERM]`) to
    /// [`Handler::on_signal`] through a `signalfd`, on the reactor's thread.
    ///
    /// The signals are blocked for the calling thread — call this before
    /// spawning threads, which inherit the mask, or block them there too,
    /// else the kernel may deliver a signal to a thread that does not block
    /// it. Closing the returned id unblocks them again.
    pub fn watch_signals(&mut self, signals: &[i32]) -> Result<SocketId, Error> {
        let fd = sys::signalfd(signals)?;
        let s = Signals {
            fd,
            signals: signals.to_vec(),
        };
        self.insert(SocketKind::Signals, Sock::Signals(s), |s| s)
            .map_err(|(_, e)| e)
    }
}

/// Reads pending signals until none is left or the budget is spent;
/// `true` if the budget ran out.
pub(super) fn drain<H: Handler + ?Sized>(cx: &mut Ctx, handler: &mut H, id: SocketId) -> bool {
    for _ in 0..cx.config.read_budget {
        let Some(Sock::Signals(s)) = cx.table.get(id).and_then(|e| e.sock.as_ref()) else {
            return false;
        };
        match sys::read_signal(s.fd.as_raw_fd()) {
            Ok(Some(signal)) => cx.call(handler, |h, cx| h.on_signal(cx, id, signal)),
            Ok(None) => return false,
            Err(e) => {
                cx.close_now(id, CloseReason::Error(e));
                cx.finish_callback(handler);
                return false;
            }
        }
    }
    true
}

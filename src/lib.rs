//! msgloop: a synchronous, single-threaded event loop on [mio] for
//! message-oriented sockets — UDP, Unix datagram, Unix seqpacket (with fd
//! passing), length-prefixed TCP frames and reliable UDP — with no runtime,
//! no hidden threads and no silent data loss.
//!
//! A host program owns its main loop and calls
//! [`Reactor::run_once`]`(&mut handler, timeout)`; the reactor waits on
//! epoll, reads every ready socket, and hands each complete message to the
//! host's [`Handler`].
//!
//! ```no_run
//! use msgloop::{Ctx, Datagram, Handler, Reactor, SocketId};
//! use std::time::Duration;
//!
//! struct Echo;
//! impl Handler for Echo {
//!     fn on_datagram(&mut self, cx: &mut Ctx, sock: SocketId, msg: Datagram<'_>) {
//!         if let Err(e) = cx.send_to(sock, msg.data(), msg.from()) {
//!             eprintln!("reply to {} failed: {e}", msg.from());
//!         }
//!     }
//! }
//!
//! fn main() -> std::io::Result<()> {
//!     let mut reactor = Reactor::new()?;
//!     reactor.bind_udp("127.0.0.1:7000")?;
//!     reactor.bind_unix_datagram(std::env::temp_dir().join("echo.dgram"))?;
//!     let mut app = Echo;
//!     loop {
//!         reactor.run_once(&mut app, Some(Duration::from_millis(100)))?;
//!         // ... the host's own work between passes ...
//!     }
//! }
//! ```
//!
//! # What you get
//!
//! - **Whole messages or a typed error.** Receives never truncate silently:
//!   see [`RecvMsg`] and [`MsgBuf`], usable on plain std/mio sockets too. A
//!   datagram over a socket's quota is consumed, counted and reported to
//!   [`Handler::on_error`] — it never wedges the socket.
//! - **No allocation per message.** One receive buffer per reactor; the
//!   handler borrows each payload for the duration of its callback.
//! - **Fairness and no spinning.** Each socket is read up to a budget per
//!   pass; an idle reactor sleeps in `epoll_wait`. See the contract on
//!   [`Reactor`].
//! - **Every transport in one loop**: datagrams ([`Handler::on_datagram`]),
//!   seqpacket messages with credentials and passed fds
//!   ([`Handler::on_message`], Linux), TCP frames ([`Handler::on_frame`];
//!   [`framing`]), reliable-UDP messages with per-message guarantees
//!   ([`Handler::on_rudp`]; [`rudp`], wire format in `docs/rudp.md`).
//! - **Timers, signals and a cross-thread [`Waker`]**, in the same single loop.
//!
//! [mio]: https://docs.rs/mio
#![deny(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unsafe_code
)]
#![warn(unreachable_pub)]

mod addr;
mod error;
mod handler;
mod reactor;
mod recv;
mod sys;
mod timer;

#[cfg(target_os = "linux")]
pub mod batch;
pub mod framing;
#[cfg(target_os = "linux")]
pub mod net;
pub mod rudp;

pub use addr::{Destination, PeerAddr, UnixAddr};
pub use error::Error;
#[cfg(target_os = "linux")]
pub use handler::SeqMessage;
pub use handler::{CloseReason, Datagram, Handler, PeerId, SocketId, SocketKind, TimerId};
#[cfg(target_os = "linux")]
pub use net::{
    AncillaryBuf, BindOptions, RecvAncillary, SendAncillary, UCred, UnixSeqpacket,
    UnixSeqpacketListener, SCM_MAX_FD,
};
#[cfg(target_os = "linux")]
pub use reactor::SeqpacketOptions;
pub use reactor::{
    Config, Ctx, DgramOptions, Reactor, ReactorStats, SocketStats, TcpOptions, Waker,
};
#[cfg(target_os = "linux")]
pub use recv::TruncatingRecvMsgWithFullSize;
pub use recv::{
    FullSizeResult, MsgBuf, QuotaExceeded, RecvMsg, RecvResult, TruncResult, TruncatingRecvMsg,
    MAX_UDP_PAYLOAD,
};

/// Re-exported so adopting a socket you configured needs no extra import.
pub use socket2;

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
//! fn main() -> Result<(), msgloop::Error> {
//!     let mut reactor = Reactor::new()?;
//!     reactor.bind_udp("127.0.0.1:7000")?;
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
//!   message over a socket's quota is consumed, counted and reported to
//!   [`Handler::on_error`] — it never wedges the socket.
//! - **No allocation per message.** One receive buffer per reactor; the
//!   handler borrows each payload for the duration of its callback.
//! - **Fairness and no spinning.** Each socket is read up to a budget per
//!   pass; an idle reactor sleeps in `epoll_wait`. See the contract on
//!   [`Reactor`].
//! - **Every transport in one loop**, and **timers, signals and a
//!   cross-thread [`Waker`]** beside them.
//!
//! # The API at a glance
//!
//! A *message* is the unit a transport delivers whole: a datagram (UDP,
//! Unix datagram), a frame (TCP), a seqpacket message, a reliable-UDP
//! message. Every transport follows one scheme — open, connect, adopt,
//! send, a receive callback, a writable callback, close — and each name says
//! its transport:
//!
//! | | open | connect | adopt | send | receive | writable | close |
//! |---|---|---|---|---|---|---|---|
//! | UDP | [`bind_udp`](Ctx::bind_udp) | [`connect`](Ctx::connect)`(sock, to)` | [`add_udp`](Ctx::add_udp) | [`send_to`](Ctx::send_to), [`send`](Ctx::send) | [`on_datagram`](Handler::on_datagram) | [`on_writable`](Handler::on_writable) | [`close`](Ctx::close) |
//! | Unix datagram | [`bind_unix_datagram`](Ctx::bind_unix_datagram), [`unbound_unix_datagram`](Ctx::unbound_unix_datagram) | [`connect`](Ctx::connect)`(sock, to)` | [`add_unix_datagram`](Ctx::add_unix_datagram) | `send_to`, `send`, `send_to_with_fds`, `send_with_fds` | [`on_datagram`](Handler::on_datagram) | [`on_writable`](Handler::on_writable) | [`close`](Ctx::close) |
//! | TCP frames | [`listen_tcp`](Ctx::listen_tcp) → [`on_accept`](Handler::on_accept) | [`connect_tcp`](Ctx::connect_tcp) → [`on_connect`](Handler::on_connect) | [`add_tcp`](Ctx::add_tcp) | [`send_frame`](Ctx::send_frame), [`send_frame_vectored`](Ctx::send_frame_vectored) | [`on_frame`](Handler::on_frame) | [`on_writable`](Handler::on_writable) | [`close`](Ctx::close) |
//! | Unix seqpacket | `listen_seqpacket` → [`on_accept`](Handler::on_accept) | `connect_seqpacket` | `add_seqpacket` | `send_seqpacket`, `send_seqpacket_with_fds` | `on_seqpacket` | [`on_writable`](Handler::on_writable) | [`close`](Ctx::close) |
//! | reliable UDP | [`bind_rudp`](Ctx::bind_rudp) → [`on_rudp_connected`](Handler::on_rudp_connected) | [`connect_rudp`](Ctx::connect_rudp), [`connect_rudp_from`](Ctx::connect_rudp_from) → [`on_rudp_connected`](Handler::on_rudp_connected) | [`add_rudp`](Ctx::add_rudp) | [`send_rudp`](Ctx::send_rudp), [`send_rudp_set`](Ctx::send_rudp_set) | [`on_rudp`](Handler::on_rudp) | [`on_rudp_writable`](Handler::on_rudp_writable) | [`close_rudp`](Ctx::close_rudp) → [`on_rudp_closed`](Handler::on_rudp_closed); [`close`](Ctx::close) the socket |
//! | signals | `watch_signals` | | | | `on_signal` | | [`close`](Ctx::close) |
//!
//! (Seqpacket and signals are Linux-only.) The rules behind the table:
//!
//! - **Open** is `bind_*` for datagram sockets and `listen_*` for listeners;
//!   **connect** is `connect_*` and makes a new connected socket (on an
//!   existing datagram socket, [`connect`](Ctx::connect) sets its peer);
//!   **adopt** is `add_*` and takes anything that converts into a
//!   [`socket2::Socket`] (a std or socket2 socket, an `OwnedFd`), handing it
//!   back inside [`AddError`] on failure. Each of these has a `_with`
//!   variant taking the transport's options ([`DgramOptions`],
//!   [`TcpOptions`], `SeqpacketOptions`); IP addresses are anything
//!   [`ToSocketAddrs`](std::net::ToSocketAddrs), Unix addresses anything
//!   [`ToUnixAddr`] (a path, or a [`UnixAddr`]).
//! - Every **send** takes the whole message or nothing and returns
//!   `Result<(), Error>`. Backpressure is [`Error::WouldBlock`] on every
//!   transport, followed by the writable callback; a message that can never
//!   be sent is [`Error::TooLarge`]; a dead id is [`Error::StaleId`].
//! - Every reliable-UDP name contains `rudp`: commands on a peer
//!   ([`PeerId`]) are `verb_rudp` (`send_rudp`, `close_rudp`), queries are
//!   `rudp_*` ([`rudp_peer_stats`](Ctx::rudp_peer_stats),
//!   [`rudp_peer_addr`](Ctx::rudp_peer_addr),
//!   [`rudp_endpoint_stats`](Ctx::rudp_endpoint_stats),
//!   [`rudp_peers`](Ctx::rudp_peers)), callbacks are `on_rudp*`.
//! - Queries on any socket: [`stats`](Ctx::stats) ([`SocketStats`]),
//!   [`local_addr`](Ctx::local_addr), [`peer_addr`](Ctx::peer_addr),
//!   [`kind`](Ctx::kind), [`buffered_bytes`](Ctx::buffered_bytes); for the
//!   whole reactor [`reactor_stats`](Ctx::reactor_stats).
//! - Errors that do not close a socket go to [`Handler::on_error`]; every
//!   socket that closes other than by the host's own `close` between passes
//!   gets one [`Handler::on_close`] with a [`CloseReason`].
//! - Timers: [`set_timer`](Ctx::set_timer) → [`on_timer`](Handler::on_timer);
//!   other threads: [`waker`](Ctx::waker) → [`on_wake`](Handler::on_wake).
//!
//! # Guides
//!
//! The `docs/` folder of the repository has a page per protocol, also
//! here: [`guide::datagrams`], [`guide::framing`], [`guide::seqpacket`],
//! [`guide::rudp`] (the reliable-UDP wire specification),
//! [`guide::rudp_examples`] and [`guide::security`] (what a hostile peer
//! can make a server hold, and the bound on each).
//!
//! [mio]: https://docs.rs/mio
#![deny(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unsafe_code
)]
#![warn(unreachable_pub)]
#![doc(test(attr(deny(warnings))))]

/// A setter per field, `fn field(mut self, value: T) -> Self`; an
/// `Option<T>` field's setter takes `impl Into<Option<T>>` (a plain value or
/// `None`).
macro_rules! setters {
    ($ty:ident { $($field:ident: $head:ident $(<$inner:ty>)?),* $(,)? }) => {
        impl $ty {
            $( setter!($ty, $field, $head $(<$inner>)?); )*
        }
    };
}

macro_rules! setter {
    ($ty:ident, $field:ident, Option<$inner:ty>) => {
        #[doc = concat!("Sets [`", stringify!($field), "`](field@", stringify!($ty), "::", stringify!($field), ").")]
        #[must_use]
        pub fn $field(mut self, value: impl Into<Option<$inner>>) -> $ty {
            self.$field = value.into();
            self
        }
    };
    ($ty:ident, $field:ident, $t:ty) => {
        #[doc = concat!("Sets [`", stringify!($field), "`](field@", stringify!($ty), "::", stringify!($field), ").")]
        #[must_use]
        pub fn $field(mut self, value: $t) -> $ty {
            self.$field = value;
            self
        }
    };
}

mod addr;
mod error;
mod handler;
mod headroom;
mod reactor;
mod recv;
mod socket_file;
mod source;
mod sys;
mod timer;

#[cfg(target_os = "linux")]
pub mod batch;
pub mod framing;
#[cfg(target_os = "linux")]
pub mod net;
pub mod rudp;

// The README's example is compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;

/// The guides of the repository's `docs/` folder.
pub mod guide {
    #[doc = include_str!("../docs/datagrams.md")]
    pub mod datagrams {}
    #[doc = include_str!("../docs/framing.md")]
    pub mod framing {}
    #[cfg(target_os = "linux")]
    #[doc = include_str!("../docs/seqpacket.md")]
    pub mod seqpacket {}
    #[doc = include_str!("../docs/rudp.md")]
    pub mod rudp {}
    #[doc = include_str!("../docs/rudp_examples.md")]
    pub mod rudp_examples {}
    #[doc = include_str!("../docs/security.md")]
    pub mod security {}
}

pub use addr::{Destination, PeerAddr, ToUnixAddr, UnixAddr};
pub use error::{AddError, Error};
pub use framing::FrameConfig;
#[cfg(target_os = "linux")]
pub use handler::SeqpacketMessage;
pub use handler::{CloseReason, Datagram, Handler, PeerId, SocketId, SocketKind, TimerId};
pub use headroom::{HeadroomBuf, NoHeadroom};
#[cfg(target_os = "linux")]
pub use net::{
    AncillaryBuf, BindOptions, RecvAncillary, SendAncillary, UCred, UnixSeqpacket,
    UnixSeqpacketListener, SCM_MAX_FD,
};
#[cfg(target_os = "linux")]
pub use reactor::SeqpacketOptions;
pub use reactor::{
    ChannelError, ChannelMessage, ChannelSender, Config, Ctx, DgramOptions, Ecn, Reactor,
    ReactorStats, Readiness, SocketStats, TcpOptions, Transmit, Trigger, Waker,
};
#[cfg(target_os = "linux")]
pub use recv::TruncatingRecvMsgWithFullSize;
pub use recv::{
    FullSizeResult, MsgBuf, QuotaExceeded, RecvMsg, RecvResult, TruncResult, TruncatingRecvMsg,
    MAX_UDP_PAYLOAD,
};
pub use rudp::{Guarantee, RudpCloseReason, RudpConfig};

/// Re-exported so adopting a socket you configured needs no extra import.
pub use socket2;

/// Readiness interest for [`Ctx::add_fd`] (mio's).
pub use mio::Interest;

//! Sans-IO reliable UDP: the protocol core behind `Reactor::bind_rudp`.
//!
//! No sockets and no clock reads: bytes and an [`Instant`](std::time::Instant)
//! go in, bytes and events come out (the quinn-proto / smoltcp style).
//!
//! - [`wire`] parses and emits datagrams (the format is specified byte by
//!   byte in `docs/rudp.md`);
//! - [`seq`] holds the one wrapping sequence-number comparison;
//! - [`Connection`] is the per-peer state machine;
//! - [`Endpoint`] multiplexes many connections on one socket, with a
//!   stateless cookie handshake.
//!
//! Three delivery guarantees ([`Guarantee`]) share one connection:
//!
//! - `None`: unreliable, any order, never duplicated by the receiver;
//! - `Order`: unreliable, sequenced (a message older than one already
//!   delivered is dropped: latest wins), never retransmitted;
//! - `Delivery`: reliable, exactly once, in order. Messages sent together
//!   with `send_set` form a *set*: its members are delivered as they arrive,
//!   in any order among themselves, but nothing sent after the set is
//!   delivered before the whole set was.
//!
//! ```
//! use std::time::Instant;
//! use msgloop::rudp::{Endpoint, Event, Guarantee, RudpConfig};
//!
//! let now = Instant::now();
//! let mut client = Endpoint::new(RudpConfig::default(), 1);
//! let mut server = Endpoint::new(RudpConfig::default(), 2);
//! let (caddr, saddr) = ("127.0.0.1:1000".parse().unwrap(), "127.0.0.1:2000".parse().unwrap());
//! let peer = client.connect(now, saddr).unwrap();
//! client.send(peer, b"hello", Guarantee::Delivery).unwrap();
//! let mut buf = [0u8; 1500];
//! let mut got = None;
//! for _ in 0..10 {
//!     while let Some(t) = client.poll_transmit(now, &mut buf) {
//!         let _ = server.handle_datagram(now, caddr, &buf[..t.len]);
//!     }
//!     while let Some(t) = server.poll_transmit(now, &mut buf) {
//!         let _ = client.handle_datagram(now, saddr, &buf[..t.len]);
//!     }
//!     while let Some((_, ev)) = server.poll_event() {
//!         if let Event::Message { data, .. } = ev { got = Some(data); }
//!     }
//! }
//! assert_eq!(got.as_deref(), Some(&b"hello"[..]));
//! ```

mod config;
mod connection;
mod endpoint;
mod error;
mod rng;
pub mod seq;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
mod timer;
pub mod wire;

pub use config::RudpConfig;
pub use connection::{CongestionControl, Connection, ConnectionStats, PerGuarantee, Side};
pub(crate) use connection::{MsgRef, RawEvent};
pub use endpoint::{ConnectionHandle, Endpoint, EndpointStats, Transmit};
pub use error::{RudpError, SendError};

/// Delivery guarantee of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Guarantee {
    /// Unreliable, unordered: delivered at most once (the receiver drops
    /// datagrams it has already seen), in any order, possibly never.
    None,
    /// Unreliable, sequenced: delivered at most once and never after a newer
    /// `Order` message was delivered (latest wins); never retransmitted.
    Order,
    /// Reliable: delivered exactly once, in order (sets excepted, see the
    /// module docs).
    Delivery,
}

/// Why a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RudpCloseReason {
    /// Nothing heard for the idle timeout, the handshake did not complete in
    /// time, or too many consecutive retransmission timeouts.
    Timeout,
    /// The peer sent CLOSE.
    ClosedByPeer,
    /// The peer broke the protocol too often (see
    /// `RudpConfig::max_protocol_violations`), with the last violation.
    ProtocolViolation(&'static str),
    /// Closed by this side ([`Connection::close`] / [`Endpoint::close`]).
    Local,
    /// A server connection not yet confirmed by its client, closed to make
    /// room in the half-open table for a handshake from a source holding
    /// fewer (see `RudpConfig::max_half_open`, `docs/rudp.md` §8).
    Evicted,
    /// Closed as a last resort because the endpoint's receive budget was
    /// exhausted and this connection, of the source holding the most,
    /// held the most (see `RudpConfig::max_endpoint_recv_bytes`,
    /// `docs/rudp.md` §6). Messages not yet polled are discarded.
    OverBudget,
}

/// Something that happened on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The handshake completed; messages can flow.
    Connected,
    /// A message arrived.
    Message {
        /// The message bytes.
        data: Vec<u8>,
        /// How it was sent.
        guarantee: Guarantee,
    },
    /// The send queue has room again after a send failed with
    /// [`SendError::QueueFull`] (the connection's queue, and the
    /// endpoint's send budgets, have drained to half).
    Writable,
    /// The connection is closed; it produces no further events.
    Closed(RudpCloseReason),
}

/// A borrowed [`Event`]: messages point into the connection's receive arena,
/// so no allocation happens per message. Valid until the next call on the
/// connection or endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventRef<'a> {
    /// See [`Event::Connected`].
    Connected,
    /// See [`Event::Message`].
    Message {
        /// The message bytes.
        data: &'a [u8],
        /// How it was sent.
        guarantee: Guarantee,
    },
    /// See [`Event::Writable`].
    Writable,
    /// See [`Event::Closed`].
    Closed(RudpCloseReason),
}

impl EventRef<'_> {
    /// Copies into an owned [`Event`].
    pub fn to_owned_event(&self) -> Event {
        match *self {
            EventRef::Connected => Event::Connected,
            EventRef::Message { data, guarantee } => Event::Message {
                data: data.to_vec(),
                guarantee,
            },
            EventRef::Writable => Event::Writable,
            EventRef::Closed(r) => Event::Closed(r),
        }
    }
}

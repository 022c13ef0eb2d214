//! Error types of the rudp core.

use core::fmt;

use super::wire::WireError;

/// Why a datagram (or a command) was not accepted.
///
/// Returned for logging and counted; none of these is fatal to the endpoint,
/// and a peer can never cause a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RudpError {
    /// The bytes are not a valid datagram.
    Wire(WireError),
    /// The peer broke a protocol rule (ack for a packet never sent, data
    /// beyond the receive window, ...). The datagram was discarded without
    /// any state change.
    ProtocolViolation(&'static str),
    /// No connection matches the datagram's source address and connection id.
    UnknownConnection,
    /// An ECHO carried a cookie that is wrong or expired.
    InvalidCookie,
    /// The connection or half-open limit is reached.
    TooManyConnections,
    /// The connection is closed.
    Closed,
    /// A valid packet that makes no sense in the current state (ignored).
    Unexpected(&'static str),
}

impl fmt::Display for RudpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RudpError::Wire(e) => write!(f, "invalid datagram: {e}"),
            RudpError::ProtocolViolation(m) => write!(f, "protocol violation: {m}"),
            RudpError::UnknownConnection => f.write_str("datagram for an unknown connection"),
            RudpError::InvalidCookie => f.write_str("invalid or expired handshake cookie"),
            RudpError::TooManyConnections => f.write_str("connection limit reached"),
            RudpError::Closed => f.write_str("connection closed"),
            RudpError::Unexpected(m) => write!(f, "unexpected packet: {m}"),
        }
    }
}

impl std::error::Error for RudpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RudpError::Wire(e) => Some(e),
            _ => None,
        }
    }
}

impl From<WireError> for RudpError {
    fn from(e: WireError) -> Self {
        RudpError::Wire(e)
    }
}

/// Why a message could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The message is larger than `max_message_len` (ours or the peer's).
    TooLarge {
        /// Length of the message.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The send queue (bytes or messages) is full, or the endpoint's send
    /// budget for the peer's source or for every peer is spent
    /// (`RudpConfig::max_source_send_bytes`, `max_endpoint_send_bytes`):
    /// wait for `Event::Writable`.
    QueueFull,
    /// The set has more members than a set may have (65,535).
    SetTooLarge {
        /// Number of members.
        len: usize,
    },
    /// The connection is closed or closing.
    Closed,
    /// The `ConnectionHandle` names no live connection (closed, or a stale generation).
    UnknownPeer,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::TooLarge { len, max } => {
                write!(f, "message of {len} bytes exceeds the limit of {max}")
            }
            SendError::QueueFull => f.write_str("send queue full"),
            SendError::SetTooLarge { len } => write!(f, "message set of {len} members too large"),
            SendError::Closed => f.write_str("connection closed"),
            SendError::UnknownPeer => f.write_str("unknown or stale peer id"),
        }
    }
}

impl std::error::Error for SendError {}

//! The crate's error type.

use std::fmt;
use std::io;

use crate::framing::FrameError;
use crate::handler::SocketKind;
use crate::recv::QuotaExceeded;

/// What went wrong with one socket operation.
///
/// Errors that concern one socket or peer are values, never panics, and
/// never stop the reactor: `run_once` returns `Err` only when the reactor
/// itself cannot go on (its `epoll` failed).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The [`SocketId`](crate::SocketId) names no open socket: it was closed
    /// (possibly earlier in this callback), or belongs to another reactor.
    StaleId,
    /// The operation does not apply to this kind of socket.
    WrongKind {
        /// What was attempted.
        op: &'static str,
        /// The socket's kind.
        kind: SocketKind,
    },
    /// The kernel — or, for a Unix socket, the peer's queue — cannot take
    /// the message now. Nothing was sent. [`Handler::on_writable`] is called
    /// once the socket can send again.
    ///
    /// [`Handler::on_writable`]: crate::Handler::on_writable
    WouldBlock,
    /// The message is larger than the socket can send (`EMSGSIZE`).
    MessageTooLarge {
        /// The message's length.
        len: usize,
    },
    /// The peer refused the message (`ECONNREFUSED`): on a connected UDP
    /// socket, an ICMP port-unreachable came back for an earlier datagram;
    /// on a Unix socket, nobody is bound at the destination.
    ConnectionRefused,
    /// No destination: the socket is not connected and no address was given.
    NotConnected,
    /// A received message was over the socket's quota; it was consumed and
    /// not delivered.
    QuotaExceeded(QuotaExceeded),
    /// The connection's send queue would pass its bound: nothing was
    /// queued. [`Handler::on_writable`](crate::Handler::on_writable) is
    /// called once the queue drains.
    QueueFull {
        /// Bytes already waiting.
        queued: usize,
        /// The bound (`max_send_queue`).
        limit: usize,
    },
    /// The frame cannot be sent in this connection's frame format (too
    /// large for `max_frame_len` or the length field). Nothing was sent.
    Frame(FrameError),
    /// A reliable-UDP send was refused: the window is full (wait for
    /// `on_rudp_writable`), the message is too large, or the peer is gone.
    RudpSend(crate::rudp::SendError),
    /// A reliable-UDP operation failed (e.g. too many connections).
    Rudp(crate::rudp::RudpError),
    /// Any other I/O error.
    Io(io::Error),
}

impl Error {
    /// Maps an error of a send system call.
    pub(crate) fn from_send(e: io::Error, len: usize) -> Error {
        match e.raw_os_error() {
            Some(libc::EMSGSIZE) => return Error::MessageTooLarge { len },
            Some(libc::ECONNREFUSED) => return Error::ConnectionRefused,
            Some(libc::ENOTCONN) | Some(libc::EDESTADDRREQ) => return Error::NotConnected,
            _ => {}
        }
        if e.kind() == io::ErrorKind::WouldBlock {
            Error::WouldBlock
        } else {
            Error::Io(e)
        }
    }

    /// The closest `io::ErrorKind`.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Error::StaleId => io::ErrorKind::NotFound,
            Error::WrongKind { .. } => io::ErrorKind::InvalidInput,
            Error::WouldBlock => io::ErrorKind::WouldBlock,
            Error::MessageTooLarge { .. } => io::ErrorKind::InvalidInput,
            Error::ConnectionRefused => io::ErrorKind::ConnectionRefused,
            Error::NotConnected => io::ErrorKind::NotConnected,
            Error::QuotaExceeded(_) => io::ErrorKind::InvalidData,
            Error::QueueFull { .. } => io::ErrorKind::WouldBlock,
            Error::Frame(_) => io::ErrorKind::InvalidInput,
            Error::RudpSend(crate::rudp::SendError::QueueFull) => io::ErrorKind::WouldBlock,
            Error::RudpSend(_) => io::ErrorKind::InvalidInput,
            Error::Rudp(_) => io::ErrorKind::Other,
            Error::Io(e) => e.kind(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::StaleId => f.write_str("no such socket (closed, or a stale id)"),
            Error::WrongKind { op, kind } => write!(f, "{op} does not apply to a {kind:?} socket"),
            Error::WouldBlock => f.write_str("send would block (queue full); on_writable follows"),
            Error::MessageTooLarge { len } => {
                write!(f, "message of {len} bytes is too large for the socket")
            }
            Error::ConnectionRefused => f.write_str("connection refused by the peer"),
            Error::NotConnected => f.write_str("socket not connected and no destination given"),
            Error::QuotaExceeded(e) => write!(f, "{e}"),
            Error::QueueFull { queued, limit } => write!(
                f,
                "send queue full ({queued} B queued, limit {limit} B); on_writable follows"
            ),
            Error::Frame(e) => write!(f, "{e}"),
            Error::RudpSend(e) => write!(f, "{e}"),
            Error::Rudp(e) => write!(f, "{e}"),
            Error::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::QuotaExceeded(e) => Some(e),
            Error::Frame(e) => Some(e),
            Error::RudpSend(e) => Some(e),
            Error::Rudp(e) => Some(e),
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        match e {
            Error::Io(e) => e,
            other => io::Error::new(other.kind(), other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_errors_map_to_variants() {
        let m = |errno| Error::from_send(io::Error::from_raw_os_error(errno), 9);
        assert!(matches!(
            m(libc::EMSGSIZE),
            Error::MessageTooLarge { len: 9 }
        ));
        assert!(matches!(m(libc::ECONNREFUSED), Error::ConnectionRefused));
        assert!(matches!(m(libc::EAGAIN), Error::WouldBlock));
        assert!(matches!(m(libc::ENOTCONN), Error::NotConnected));
        assert!(matches!(m(libc::EBADF), Error::Io(_)));
        let io: io::Error = Error::StaleId.into();
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
    }
}

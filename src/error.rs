//! The crate's error type.

use std::fmt;
use std::io;

use crate::handler::SocketKind;
use crate::recv::QuotaExceeded;

/// What went wrong with one socket operation.
///
/// Errors that concern one socket or peer are values, never panics, and
/// never stop the reactor: `run_once` returns `Err` only when the reactor
/// itself cannot go on (its `epoll` failed).
///
/// The common questions have one answer on every transport:
///
/// - *Is this backpressure?* [`Error::WouldBlock`]: nothing was sent or
///   queued, and the writable callback follows
///   ([`Handler::on_writable`](crate::Handler::on_writable),
///   [`Handler::on_rudp_writable`](crate::Handler::on_rudp_writable)).
/// - *Was it too large?* [`Error::TooLarge`]: the message can never be sent
///   as it is.
/// - *Is the id dead?* [`Error::StaleId`], for a [`SocketId`](crate::SocketId)
///   and a [`PeerId`](crate::PeerId) alike.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The [`SocketId`](crate::SocketId) or [`PeerId`](crate::PeerId) names
    /// nothing open: it was closed (possibly earlier in this callback), or
    /// belongs to another reactor.
    StaleId,
    /// The operation does not apply to this kind of socket.
    WrongKind {
        /// What was attempted.
        op: &'static str,
        /// The socket's kind.
        kind: SocketKind,
    },
    /// Backpressure: the socket, connection or peer cannot take the message
    /// now — the kernel's queue (or a Unix peer's) is full, a TCP
    /// connection's queue would pass `max_send_queue`, a reliable-UDP
    /// peer's send queue is full. Nothing was sent or queued. The writable
    /// callback follows once it can take more.
    WouldBlock,
    /// The message is larger than this socket, connection or peer can ever
    /// send (a datagram over the kernel's limit — `EMSGSIZE` —, a frame over
    /// `max_frame_len`, a reliable-UDP message over `max_message_len`). For
    /// a reliable-UDP message set, `len` and `max` count its members.
    TooLarge {
        /// The message's length.
        len: usize,
        /// The limit, where it is known.
        max: Option<usize>,
    },
    /// The peer refused the message (`ECONNREFUSED`): on a connected UDP
    /// socket, an ICMP port-unreachable came back for an earlier datagram;
    /// on a Unix socket, nobody is bound at the destination.
    ConnectionRefused,
    /// No destination: the socket is not connected and no address was given.
    NotConnected,
    /// The reliable-UDP peer is closing or closed (after
    /// [`Ctx::close_rudp`](crate::Ctx::close_rudp), or by the peer):
    /// [`Handler::on_rudp_closed`](crate::Handler::on_rudp_closed) follows.
    Closed,
    /// A received message was over the socket's quota; it was consumed and
    /// not delivered.
    QuotaExceeded(QuotaExceeded),
    /// A reliable-UDP operation failed (e.g. too many connections).
    Rudp(crate::rudp::RudpError),
    /// Any other I/O error. Errors of `bind`, `listen` and `connect` name
    /// the address or path that failed.
    Io(io::Error),
}

impl Error {
    /// Maps an error of a send system call (`len`: the message's length).
    pub(crate) fn from_send(e: io::Error, len: usize) -> Error {
        match e.raw_os_error() {
            Some(libc::EMSGSIZE) => return Error::TooLarge { len, max: None },
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

    /// Maps an error a datagram socket reported on receive.
    pub(crate) fn from_recv(e: io::Error) -> Error {
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => Error::ConnectionRefused,
            _ => Error::Io(e),
        }
    }

    /// The closest `io::ErrorKind`.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Error::StaleId => io::ErrorKind::NotFound,
            Error::WrongKind { .. } => io::ErrorKind::InvalidInput,
            Error::WouldBlock => io::ErrorKind::WouldBlock,
            Error::TooLarge { .. } => io::ErrorKind::InvalidInput,
            Error::ConnectionRefused => io::ErrorKind::ConnectionRefused,
            Error::NotConnected => io::ErrorKind::NotConnected,
            Error::Closed => io::ErrorKind::NotConnected,
            Error::QuotaExceeded(_) => io::ErrorKind::InvalidData,
            Error::Rudp(_) => io::ErrorKind::Other,
            Error::Io(e) => e.kind(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::StaleId => f.write_str("no such socket or peer (closed, or a stale id)"),
            Error::WrongKind { op, kind } => write!(f, "{op} does not apply to a {kind:?} socket"),
            Error::WouldBlock => f.write_str(
                "cannot take the message now (backpressure); a writable callback follows",
            ),
            Error::TooLarge {
                len,
                max: Some(max),
            } => {
                write!(f, "message of {len} bytes is too large (limit {max})")
            }
            Error::TooLarge { len, max: None } => {
                write!(f, "message of {len} bytes is too large for the socket")
            }
            Error::ConnectionRefused => f.write_str("connection refused by the peer"),
            Error::NotConnected => f.write_str("socket not connected and no destination given"),
            Error::Closed => f.write_str("the peer is closing or closed"),
            Error::QuotaExceeded(e) => write!(f, "{e}"),
            Error::Rudp(e) => write!(f, "{e}"),
            Error::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::QuotaExceeded(e) => Some(e),
            Error::Rudp(e) => Some(e),
            Error::Io(e) => e.source(),
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

/// A socket that could not be added to a reactor, handed back with the
/// reason (an `add_*` method failed: wrong kind of socket, a socket option
/// refused, registration with epoll failed).
///
/// Converts into [`Error`] and `io::Error` (dropping the socket), so `?`
/// works where the socket is not wanted back.
#[derive(Debug)]
pub struct AddError {
    /// The socket, as it was given (converted to a socket2 `Socket`).
    pub socket: socket2::Socket,
    /// Why it was not added.
    pub error: Error,
}

impl fmt::Display for AddError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "socket not added: {}", self.error)
    }
}

impl std::error::Error for AddError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<AddError> for Error {
    fn from(e: AddError) -> Error {
        e.error
    }
}

impl From<AddError> for io::Error {
    fn from(e: AddError) -> io::Error {
        e.error.into()
    }
}

/// An I/O error that says what was being done when it happened ("bind UDP
/// 127.0.0.1:7000: Address already in use"); its kind is the original's,
/// and the original (with its raw OS error) is its source.
#[derive(Debug)]
struct Context {
    message: String,
    source: io::Error,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Context {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// `e`, saying what was being done: "`what`: `e`" (keeping its kind).
pub(crate) fn context(e: io::Error, what: fmt::Arguments<'_>) -> io::Error {
    let message = format!("{what}: {e}");
    with_message(e.kind(), message, e)
}

/// An error of `kind` that displays as `message` and has `source` as its
/// source.
pub(crate) fn with_message(kind: io::ErrorKind, message: String, source: io::Error) -> io::Error {
    io::Error::new(kind, Context { message, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_errors_map_to_variants() {
        let m = |errno| Error::from_send(io::Error::from_raw_os_error(errno), 9);
        assert!(matches!(
            m(libc::EMSGSIZE),
            Error::TooLarge { len: 9, max: None }
        ));
        assert!(matches!(m(libc::ECONNREFUSED), Error::ConnectionRefused));
        assert!(matches!(m(libc::EAGAIN), Error::WouldBlock));
        assert!(matches!(m(libc::ENOTCONN), Error::NotConnected));
        assert!(matches!(m(libc::EBADF), Error::Io(_)));
        let io: io::Error = Error::StaleId.into();
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn context_keeps_the_kind_and_names_what_failed() {
        let e = context(
            io::Error::from_raw_os_error(libc::EADDRINUSE),
            format_args!("bind UDP 127.0.0.1:7000"),
        );
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        let text = e.to_string();
        assert!(text.starts_with("bind UDP 127.0.0.1:7000: "), "{text}");
        let err = Error::Io(e);
        let source = std::error::Error::source(&err).expect("the os error");
        let os = source.downcast_ref::<io::Error>().expect("an io::Error");
        assert_eq!(os.raw_os_error(), Some(libc::EADDRINUSE));
    }
}

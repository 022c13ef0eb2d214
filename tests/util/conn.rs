//! The queries that the recording handlers of the connection tests (tcp.rs,
//! seqpacket.rs) share: each records its transport's callbacks in an enum
//! of its own, and shows them here through [`Common`].

use msgloop::{CloseReason, Error, SocketId};

/// A recorded callback, as far as every connection transport has it.
pub enum Common<'a> {
    /// `on_accept`: the new connection.
    Accept(SocketId),
    Writable(SocketId),
    Close(SocketId, &'a CloseReason),
    Error(SocketId, &'a Error),
    /// A message, a connect: the transport's own.
    Other,
}

/// A recording handler's log of callbacks, in order, and the queries on it.
pub trait ConnLog {
    /// The recorded callbacks, in order.
    fn common(&self) -> impl Iterator<Item = Common<'_>>;

    /// The accepted connections, in order.
    fn accepts(&self) -> Vec<SocketId> {
        self.common()
            .filter_map(|e| match e {
                Common::Accept(conn) => Some(conn),
                _ => None,
            })
            .collect()
    }

    /// The close reasons reported for `sock` (one, if any, unless a bug).
    fn closes(&self, sock: SocketId) -> Vec<&CloseReason> {
        self.common()
            .filter_map(|e| match e {
                Common::Close(s, reason) if s == sock => Some(reason),
                _ => None,
            })
            .collect()
    }

    /// `on_close` calls, for any socket.
    fn close_count(&self) -> usize {
        self.common()
            .filter(|e| matches!(e, Common::Close(..)))
            .count()
    }

    /// `on_writable` calls for `sock`.
    fn writables(&self, sock: SocketId) -> usize {
        self.common()
            .filter(|e| matches!(e, Common::Writable(s) if *s == sock))
            .count()
    }

    /// The errors reported to `on_error`, in order.
    fn errors(&self) -> Vec<(SocketId, &Error)> {
        self.common()
            .filter_map(|e| match e {
                Common::Error(sock, error) => Some((sock, error)),
                _ => None,
            })
            .collect()
    }
}

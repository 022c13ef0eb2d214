//! Unix seqpacket sockets and ancillary data, usable on their own with mio
//! (no reactor needed).
//!
//! - [`UnixSeqpacket`] / [`UnixSeqpacketListener`]: connection-oriented
//!   sockets that keep message boundaries, implementing
//!   [`mio::event::Source`] and the crate's [`RecvMsg`](crate::RecvMsg)
//!   family. Empty messages are told from end of stream (see
//!   [`UnixSeqpacket`]).
//! - [`SendAncillary`], [`AncillaryBuf`], [`RecvAncillary`]: passing file
//!   descriptors (`SCM_RIGHTS`) and credentials (`SCM_CREDENTIALS`); a
//!   received descriptor is an `OwnedFd`, closed unless you take it.
//!   [`UnixDatagramExt`] does the same over Unix datagram sockets.
//!
//! Linux only: telling an empty message from end of stream relies on
//! `SO_PASSCRED`, and sizing a message on `MSG_PEEK|MSG_TRUNC`.

mod ancillary;
#[cfg(any(test, fuzzing))]
mod fuzz;
mod seqpacket;

#[allow(unused_imports)] // for the reactor
pub(crate) use ancillary::{recv_with_ancillary, send_with_ancillary, MsgKind};
pub use ancillary::{
    AncillaryBuf, RecvAncillary, SendAncillary, UCred, UnixDatagramExt, SCM_MAX_FD,
};
#[cfg(any(test, fuzzing))]
pub use fuzz::{parse_control, ParsedControl};
pub use seqpacket::{BindOptions, UnixSeqpacket, UnixSeqpacketListener, DEFAULT_BACKLOG};

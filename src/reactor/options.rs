//! Settings: [`Config`] for a reactor, and the options each kind of socket
//! is opened with ([`DgramOptions`], [`TcpOptions`], [`SeqpacketOptions`]).
//!
//! Every options type is `#[non_exhaustive]` with public fields and a
//! setter per field, so new settings can be added without breaking code:
//!
//! ```
//! use msgloop::{DgramOptions, TcpOptions};
//! use std::time::Duration;
//!
//! let udp = DgramOptions::new().max_message_len(4096).reuse_port(true);
//! let mut tcp = TcpOptions::default().frame_idle_timeout(Duration::from_secs(5));
//! tcp.nodelay = false; // fields can be set directly too
//! assert_eq!(udp.max_message_len, Some(4096));
//! assert!(!tcp.nodelay);
//! ```

use std::time::Duration;

use crate::framing::FrameConfig;

/// Reactor-wide settings: `Config::new().read_budget(16)`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// How many readiness events one `poll` may return (default 1,024).
    pub events_capacity: usize,
    /// The most messages read from one socket per `run_once` (default 64).
    /// A socket cut off by its budget is served again on the next call
    /// without waiting for a new readiness edge, so one flooded socket
    /// cannot starve the others. Reliable-UDP sockets count datagrams
    /// read, a train coalesced by receive offload
    /// ([`DgramOptions::offload`]) counting as one.
    pub read_budget: usize,
    /// Default quota for Unix datagram and seqpacket sockets: the largest
    /// message delivered (default 1 MiB). Larger ones are consumed and
    /// reported through [`Handler::on_error`](crate::Handler::on_error).
    /// Per socket: [`DgramOptions::max_message_len`],
    /// [`SeqpacketOptions::max_message_len`].
    pub unix_max_message_len: usize,
    /// Catch a panic in a handler callback instead of letting it leave
    /// `run_once` (default off). The socket being served is closed and
    /// reported with [`CloseReason::HandlerPanicked`](crate::CloseReason::HandlerPanicked)
    /// on the next pass (a panic in a timer or wake-up callback closes
    /// nothing), the panic is logged at `error!`, and `run_once` returns
    /// `Ok`. See [`Reactor`](crate::Reactor)'s `# Panics in handlers`.
    pub catch_panics: bool,
    /// The most bytes peers may make the reactor buffer in TCP partial
    /// frames and send queues, all connections together (default 128 MiB).
    /// At the bound, reading pauses on connections that hold a partial
    /// frame (TCP flow control pushes back on their peers) and a send to a
    /// connection whose queue is not empty is refused with
    /// [`Error::WouldBlock`](crate::Error::WouldBlock); a connection with
    /// no partial frame is still read, in pieces of at most 4 KiB. See
    /// `docs/security.md`.
    pub max_buffered_bytes: usize,
    /// The share of [`max_buffered_bytes`](Config::max_buffered_bytes) one
    /// source may take (default 16 MiB): an IPv4 address, an IPv6 prefix
    /// ([`ipv6_source_prefix`](Config::ipv6_source_prefix)).
    pub max_buffered_per_source: usize,
    /// How many leading bits of an IPv6 address name one source for the
    /// per-source limits (default 64: one subscriber's network).
    pub ipv6_source_prefix: u8,
    /// Descriptors kept free: listeners stop accepting while the process
    /// has fewer than this many left below `RLIMIT_NOFILE` (default 64), so
    /// established connections can still receive passed descriptors and the
    /// process can still open files. A connection accepted into the reserve
    /// is closed at once and counted
    /// ([`SocketStats::refused_fd_reserve`](crate::SocketStats::refused_fd_reserve)); accepting resumes when a
    /// socket closes.
    pub fd_reserve: usize,
}

impl Config {
    /// The defaults.
    pub fn new() -> Config {
        Config {
            events_capacity: 1024,
            read_budget: 64,
            unix_max_message_len: 1 << 20,
            catch_panics: false,
            max_buffered_bytes: 128 << 20,
            max_buffered_per_source: 16 << 20,
            ipv6_source_prefix: 64,
            fd_reserve: 64,
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config::new()
    }
}

setters!(Config {
    events_capacity: usize,
    read_budget: usize,
    unix_max_message_len: usize,
    catch_panics: bool,
    max_buffered_bytes: usize,
    max_buffered_per_source: usize,
    ipv6_source_prefix: u8,
    fd_reserve: usize,
});

/// Options for one datagram socket — UDP, Unix datagram, or the UDP socket
/// of reliable UDP: `DgramOptions::new().max_message_len(4096)`.
///
/// `None` in an `Option` field means "the default of this kind of socket",
/// which the field's documentation gives.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DgramOptions {
    /// The largest datagram delivered; larger ones are consumed, counted
    /// and reported to [`Handler::on_error`](crate::Handler::on_error).
    /// `None`: 65,535 for UDP, [`Config::unix_max_message_len`] for Unix
    /// sockets. (Reliable UDP: does not apply; the protocol's MTU does.)
    pub max_message_len: Option<usize>,
    /// Unix sockets: if the path exists and is a socket file nobody is
    /// bound to any more (a leftover of a process that exited without
    /// removing it), remove it before binding. Off by default: binding over
    /// an existing path fails with `AddrInUse`. Never removes a live socket
    /// or a file that is not a socket.
    pub unlink_stale: bool,
    /// Unix sockets: remove the socket file when the socket closes (or the
    /// reactor is dropped), if it is still the file this socket created.
    /// Default on — the same rule for every socket file msgloop creates.
    pub unlink_on_close: bool,
    /// `SO_RCVBUF`, if set. On Linux, a size past `net.core.rmem_max` is
    /// forced with `SO_RCVBUFFORCE` when the process may (`CAP_NET_ADMIN`);
    /// otherwise the kernel's cap stands. `None`: the kernel's default
    /// (reliable UDP: 4 MiB, so a window of datagrams fits).
    pub recv_buffer_size: Option<usize>,
    /// `SO_SNDBUF`, if set (forced past `wmem_max` like the receive side).
    /// `None`: the kernel's default (reliable UDP: 4 MiB).
    pub send_buffer_size: Option<usize>,
    /// Unix sockets (Linux): receive passed file descriptors and
    /// credentials ([`Datagram::fds`](crate::Datagram::fds)); each read
    /// then carries a control buffer. Off by default, when the kernel
    /// closes any descriptors a sender passes.
    pub pass_fds: bool,
    /// `SO_REUSEPORT` (UDP and reliable UDP): several sockets — one per
    /// reactor thread — bind the same address and the kernel spreads
    /// peers over them by their address hash. See the crate's README on
    /// using more cores.
    pub reuse_port: bool,
    /// UDP segmentation and receive offload (Linux). For reliable UDP:
    /// consecutive datagrams of one size to one peer leave as one kernel
    /// packet (`UDP_SEGMENT`, cut into datagrams by the kernel or the
    /// network card), and a train of datagrams from one sender is read with
    /// one copy (`UDP_GRO`); the wire is the same either way, and sending
    /// falls back to single datagrams for good if the kernel refuses a
    /// train (a device that cannot offload checksums, a smaller path MTU).
    /// `None`: on for reliable UDP; plain UDP sockets do not offload.
    ///
    /// A plain UDP socket with offload on reads coalesced trains and
    /// delivers each datagram of a train to
    /// [`Handler::on_datagram`](crate::Handler::on_datagram) on its own;
    /// [`Ctx::send_batch`](crate::Ctx::send_batch) sends consecutive
    /// equal-size datagrams to one destination as trains.
    pub offload: Option<bool>,
    /// UDP (Linux): report each datagram's ECN codepoint
    /// ([`Datagram::ecn`](crate::Datagram::ecn)). Default off.
    pub recv_ecn: bool,
    /// UDP (Linux): report each datagram's destination address
    /// ([`Datagram::dst_addr`](crate::Datagram::dst_addr)) — what a socket
    /// bound to `0.0.0.0` or `::` was reached on, to answer from it
    /// ([`Transmit::source`](crate::Transmit::source)). Default off.
    pub recv_dst_addr: bool,
}

impl DgramOptions {
    /// The defaults.
    pub fn new() -> DgramOptions {
        DgramOptions {
            max_message_len: None,
            unlink_stale: false,
            unlink_on_close: true,
            recv_buffer_size: None,
            send_buffer_size: None,
            pass_fds: false,
            reuse_port: false,
            offload: None,
            recv_ecn: false,
            recv_dst_addr: false,
        }
    }
}

impl Default for DgramOptions {
    fn default() -> DgramOptions {
        DgramOptions::new()
    }
}

setters!(DgramOptions {
    max_message_len: Option<usize>,
    unlink_stale: bool,
    unlink_on_close: bool,
    recv_buffer_size: Option<usize>,
    send_buffer_size: Option<usize>,
    pass_fds: bool,
    reuse_port: bool,
    offload: Option<bool>,
    recv_ecn: bool,
    recv_dst_addr: bool,
});

/// Options for TCP listeners and connections:
/// `TcpOptions::new(FrameConfig::default()).max_send_queue(1 << 20)`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TcpOptions {
    /// The frame format (length width, endianness, maximum frame length).
    pub frame: FrameConfig,
    /// `TCP_NODELAY` (default on: frames are coalesced by the reactor, so
    /// Nagle's algorithm only adds latency).
    pub nodelay: bool,
    /// The most bytes a connection may have waiting for the kernel; a send
    /// beyond it fails with [`Error::WouldBlock`](crate::Error::WouldBlock)
    /// (default 4 MiB). Raised to at least one maximum-size frame.
    pub max_send_queue: usize,
    /// A frame that has started arriving must complete within this time,
    /// or the connection is closed with
    /// [`CloseReason::FrameTimeout`](crate::CloseReason::FrameTimeout)
    /// (slow-loris protection; default 30 s). Trickling bytes does not
    /// extend it: set it to cover your largest frame at the slowest rate
    /// you accept. `None` disables it.
    pub frame_idle_timeout: Option<Duration>,
    /// A connection on which nothing was received or sent for this long is
    /// closed with [`CloseReason::IdleTimeout`](crate::CloseReason::IdleTimeout)
    /// (default `None`: idle connections stay).
    pub idle_timeout: Option<Duration>,
    /// Listeners: the most connections accepted and open at once; at the
    /// cap, accepting pauses (no spinning) until one closes (default 10,000).
    pub max_connections: Option<usize>,
    /// Listeners: the most connections open at once from one source (an
    /// IPv4 address, an IPv6 prefix: [`Config::ipv6_source_prefix`]); one
    /// more is closed as soon as it is accepted and counted
    /// ([`SocketStats::refused_per_source`](crate::SocketStats::refused_per_source)). Default 256.
    pub max_connections_per_source: Option<usize>,
    /// Listeners: the `listen` backlog (default 1,024).
    pub backlog: i32,
    /// Listeners: `SO_REUSEPORT`, so that one listener per reactor thread
    /// can bind the same address; the kernel spreads connections over them.
    pub reuse_port: bool,
}

impl TcpOptions {
    /// Defaults around `frame`.
    pub fn new(frame: FrameConfig) -> TcpOptions {
        TcpOptions {
            frame,
            nodelay: true,
            max_send_queue: 4 << 20,
            frame_idle_timeout: Some(Duration::from_secs(30)),
            idle_timeout: None,
            max_connections: Some(10_000),
            max_connections_per_source: Some(256),
            backlog: 1024,
            reuse_port: false,
        }
    }
}

impl Default for TcpOptions {
    fn default() -> TcpOptions {
        TcpOptions::new(FrameConfig::default())
    }
}

setters!(TcpOptions {
    frame: FrameConfig,
    nodelay: bool,
    max_send_queue: usize,
    frame_idle_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    max_connections: Option<usize>,
    max_connections_per_source: Option<usize>,
    backlog: i32,
    reuse_port: bool,
});

/// Options for Unix seqpacket listeners and connections:
/// `SeqpacketOptions::new().unlink_stale(true)`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SeqpacketOptions {
    /// The largest message delivered; larger ones are consumed, counted
    /// and reported to [`Handler::on_error`](crate::Handler::on_error).
    /// `None`: [`Config::unix_max_message_len`].
    pub max_message_len: Option<usize>,
    /// Listeners: remove a leftover socket file at the path before binding
    /// — only if it is a socket file nobody is bound to. Off by default:
    /// binding over an existing path fails with `AddrInUse`.
    pub unlink_stale: bool,
    /// Listeners: remove the socket file when the listener closes, if it is
    /// still the one this listener created. Default on.
    pub unlink_on_close: bool,
    /// Listeners: the `listen` backlog (default 128).
    pub backlog: i32,
    /// Listeners: the most connections accepted and open at once; at the
    /// cap, accepting pauses (no spinning) until one closes (default 10,000).
    pub max_connections: Option<usize>,
    /// Listeners: the most connections open at once from one user (the
    /// peer's uid, `SO_PEERCRED`); one more is closed as soon as it is
    /// accepted and counted ([`SocketStats::refused_per_source`](crate::SocketStats::refused_per_source)). Default
    /// 1,024.
    pub max_connections_per_uid: Option<usize>,
    /// A connection on which nothing was received or sent for this long is
    /// closed with [`CloseReason::IdleTimeout`](crate::CloseReason::IdleTimeout)
    /// (default `None`).
    pub idle_timeout: Option<Duration>,
    /// `SO_SNDBUF` of every connection (accepted ones included). A Unix
    /// socket cannot send a message larger than its send buffer, so `None`
    /// (the default) sizes it to carry a message of `max_message_len`
    /// (forced past `wmem_max` where the process may).
    pub send_buffer_size: Option<usize>,
}

impl SeqpacketOptions {
    /// The defaults.
    pub fn new() -> SeqpacketOptions {
        SeqpacketOptions {
            max_message_len: None,
            unlink_stale: false,
            unlink_on_close: true,
            backlog: 128,
            max_connections: Some(10_000),
            max_connections_per_uid: Some(1024),
            idle_timeout: None,
            send_buffer_size: None,
        }
    }
}

impl Default for SeqpacketOptions {
    fn default() -> SeqpacketOptions {
        SeqpacketOptions::new()
    }
}

setters!(SeqpacketOptions {
    max_message_len: Option<usize>,
    unlink_stale: bool,
    unlink_on_close: bool,
    backlog: i32,
    max_connections: Option<usize>,
    max_connections_per_uid: Option<usize>,
    idle_timeout: Option<Duration>,
    send_buffer_size: Option<usize>,
});

//! Configuration: every timer and limit of the protocol, with defaults.

use std::time::Duration;

use super::wire::{MAX_ACK_DELAY_MS, MAX_MTU, MAX_RECV_WINDOW, MIN_MTU};
use super::CongestionControl;

/// Bytes of a DATA datagram that are not fragment payload in the worst case:
/// header + packet number + ack block + largest chunk header.
pub(crate) const FRAG_OVERHEAD: usize =
    super::wire::MAX_DATA_OVERHEAD + super::wire::MAX_CHUNK_HEADER;

/// Tunables of an rudp endpoint and its connections.
///
/// Every field has a documented default ([`RudpConfig::default`]). Values out
/// of range are clamped when an [`Endpoint`](super::Endpoint) or
/// [`Connection`](super::Connection) is created (see [`RudpConfig::sanitized`]),
/// never rejected with a panic.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RudpConfig {
    /// Largest UDP payload sent and accepted. Default 1,200 bytes; clamped to
    /// 128..=65,507. Both ends use the smaller of their two values. In the
    /// reactor (Linux), sockets whose `mtu` fits a 1,500-byte Ethernet path
    /// (at most 1,452) send with don't-fragment, as QUIC does.
    pub mtu: usize,
    /// Largest message accepted for sending and for receiving. Default 1 MiB.
    /// Clamped to at most what 65,535 fragments can carry.
    pub max_message_len: usize,
    /// Bound on queued-but-unacknowledged bytes per connection (reliable
    /// messages until acked, unreliable ones until sent). Default 2 MiB:
    /// room for the largest window (`max_in_flight` packets, about 1.2 MB)
    /// and for refilling it; more only queues latency and memory (and a
    /// send queue that outgrows the CPU cache costs throughput). At least
    /// `max_message_len`.
    pub max_send_queue_bytes: usize,
    /// Bound on queued-but-unacknowledged messages per connection. Default 16,384.
    pub max_send_queue_messages: usize,
    /// Receive window announced to the peer, in Delivery messages past the
    /// cumulative ack. Default 8,192; clamped to 16..=1,048,576.
    pub recv_window: u32,
    /// Bound on received bytes held per connection: out-of-order messages,
    /// partial reassemblies and delivered-but-not-yet-polled messages,
    /// counted as memory held (capacities and bookkeeping, never lengths a
    /// header claims). Default 8 MiB; at least `2 * max_message_len`.
    /// Unreliable data past it is dropped, reliable data left
    /// unacknowledged (the peer retransmits later); see `docs/rudp.md` §6
    /// and the source-wide and endpoint-wide bounds,
    /// `max_source_recv_bytes` and `max_endpoint_recv_bytes`.
    pub max_recv_buffer_bytes: usize,
    /// Congestion window at the start, in packets (both controllers; the
    /// pacer lets it go at once). Default 10.
    pub initial_cwnd: u32,
    /// Smallest congestion window, in packets. Default 2 (`Aimd`; BBR's
    /// window is at least 4 packets, or this if larger).
    pub min_cwnd: u32,
    /// Most ack-eliciting packets in flight, whatever the congestion
    /// window. Default 1,024.
    pub max_in_flight: u32,
    /// The congestion controller, a sender's local choice (nothing changes
    /// on the wire). Default [`CongestionControl::Bbr`]; `Aimd` is the
    /// loss-based window of earlier versions. Both are paced, see
    /// `docs/rudp.md` §5.
    pub congestion: CongestionControl,
    /// RTT assumed before the first sample. Default 100 ms.
    pub initial_rtt: Duration,
    /// Smallest retransmission timeout. Default 50 ms.
    pub min_rto: Duration,
    /// Largest retransmission timeout, also the cap of exponential backoff.
    /// Default 2 s.
    pub max_rto: Duration,
    /// Longest an ack is delayed. Default 10 ms; at most 16,384 ms.
    pub max_ack_delay: Duration,
    /// Ack at once after this many unacknowledged ack-eliciting packets. Default 2.
    pub ack_eliciting_threshold: u32,
    /// A packet is lost once a packet this many numbers later was acked.
    /// Default 3. This is the starting value: a connection raises it when it
    /// finds losses were spurious (reordering), see `docs/rudp.md` §5.
    pub packet_threshold: u32,
    /// Consecutive retransmission timeouts before the peer is declared gone
    /// (`RudpCloseReason::Timeout`). Default 8.
    pub max_retransmits: u32,
    /// A PING is sent when nothing ack-eliciting was sent for this long.
    /// Default 1 s (clamped to at most half the idle timeout).
    pub heartbeat_interval: Duration,
    /// The connection closes with `Timeout` when nothing was received for this
    /// long. Default 10 s.
    pub idle_timeout: Duration,
    /// A handshake (client) or an unconfirmed server connection must complete
    /// within this. Default 10 s.
    pub handshake_timeout: Duration,
    /// Endpoint: most live connections (both directions). Default 4,096.
    pub max_connections: usize,
    /// Endpoint: most server connections accepted but not yet confirmed by a
    /// packet from the client. Default 256.
    pub max_half_open: usize,
    /// Endpoint: answer INITIAL packets (act as a server). Default `true`.
    pub accept_incoming: bool,
    /// Endpoint: length of a cookie time bucket; a cookie is valid in its
    /// bucket and the next one (so for 1–2× this). Default 10 s.
    pub cookie_lifetime: Duration,
    /// Partially reassembled unreliable (None/Order) messages kept per
    /// connection; the oldest is dropped beyond it. Default 8.
    pub max_unreliable_partials: usize,
    /// Endpoint: bound on received bytes held over all connections
    /// (what `max_recv_buffer_bytes` bounds per connection). Default 64 MiB;
    /// at least `2 * max_message_len`. At the bound, unreliable partial
    /// reassemblies are dropped first, reliable data that cannot be
    /// delivered at once is refused (left unacknowledged: the peer sends it
    /// again later), and as a last resort, for a source holding less than
    /// its fair share, the connection holding the most of the source
    /// holding the most is closed (`RudpCloseReason::OverBudget`); see
    /// `docs/rudp.md` §6.
    pub max_endpoint_recv_bytes: usize,
    /// Endpoint: bound on received bytes held over the connections of one
    /// source (see `source_prefix_v4` / `source_prefix_v6`). Default 16 MiB
    /// (a quarter of the endpoint's: one source cannot take it all);
    /// clamped to `2 * max_message_len..=max_endpoint_recv_bytes`.
    pub max_source_recv_bytes: usize,
    /// Endpoint: bound on queued-but-unacknowledged bytes over all
    /// connections (what `max_send_queue_bytes` bounds per connection): a
    /// peer that withholds acknowledgements pins what was sent to it.
    /// Default 64 MiB; at least `max_message_len`. A send that would pass
    /// it fails with `SendError::QueueFull` and `Event::Writable` follows
    /// once the endpoint's total (and the source's) has drained to half.
    pub max_endpoint_send_bytes: usize,
    /// Endpoint: bound on queued-but-unacknowledged bytes over the
    /// connections of one source. Default 16 MiB; clamped to
    /// `max_message_len..=max_endpoint_send_bytes`.
    pub max_source_send_bytes: usize,
    /// Endpoint: most server connections (half-open included) from one
    /// source; ECHOs beyond are ignored. Default 64 (1/64 of the default
    /// `max_connections`); clamped to `1..=max_connections`.
    pub max_connections_per_source: usize,
    /// Endpoint: most half-open server connections from one source.
    /// Default 16 (1/16 of the default `max_half_open`); clamped to
    /// `1..=max_half_open`.
    pub max_half_open_per_source: usize,
    /// Endpoint: IPv4 addresses sharing this many leading bits are one
    /// source for the per-source limits. Default 32 (an address); at most 32.
    pub source_prefix_v4: u8,
    /// Endpoint: IPv6 addresses sharing this many leading bits are one
    /// source for the per-source limits. Default 64 (a /64, what one host or
    /// one site is usually given); at most 128. IPv4-mapped IPv6 addresses
    /// (`::ffff:a.b.c.d`, a dual-stack socket's IPv4 peers) are IPv4.
    pub source_prefix_v6: u8,
    /// Protocol violations tolerated (each discards its datagram) before the
    /// connection is closed with `RudpCloseReason::ProtocolViolation`. Default 16.
    pub max_protocol_violations: u32,
    /// Test support: force the initial packet number and sequence numbers
    /// (instead of random ones), e.g. near `u32::MAX` to test wrapping.
    ///
    /// Only in the crate's own test build: a private field in other builds
    /// would forbid `RudpConfig { .., ..RudpConfig::default() }` outside the
    /// crate.
    #[cfg(test)]
    pub(crate) initial_sequence: Option<u32>,
}

setters!(RudpConfig {
    mtu: usize,
    max_message_len: usize,
    max_send_queue_bytes: usize,
    max_send_queue_messages: usize,
    recv_window: u32,
    max_recv_buffer_bytes: usize,
    initial_cwnd: u32,
    min_cwnd: u32,
    max_in_flight: u32,
    congestion: CongestionControl,
    initial_rtt: Duration,
    min_rto: Duration,
    max_rto: Duration,
    max_ack_delay: Duration,
    ack_eliciting_threshold: u32,
    packet_threshold: u32,
    max_retransmits: u32,
    heartbeat_interval: Duration,
    idle_timeout: Duration,
    handshake_timeout: Duration,
    max_connections: usize,
    max_half_open: usize,
    accept_incoming: bool,
    cookie_lifetime: Duration,
    max_unreliable_partials: usize,
    max_protocol_violations: u32,
    max_endpoint_recv_bytes: usize,
    max_source_recv_bytes: usize,
    max_endpoint_send_bytes: usize,
    max_source_send_bytes: usize,
    max_connections_per_source: usize,
    max_half_open_per_source: usize,
    source_prefix_v4: u8,
    source_prefix_v6: u8,
});

impl Default for RudpConfig {
    fn default() -> Self {
        RudpConfig {
            mtu: 1200,
            max_message_len: 1 << 20,
            max_send_queue_bytes: 2 << 20,
            max_send_queue_messages: 16_384,
            recv_window: 8192,
            max_recv_buffer_bytes: 8 << 20,
            initial_cwnd: 10,
            min_cwnd: 2,
            max_in_flight: 1024,
            congestion: CongestionControl::Bbr,
            initial_rtt: Duration::from_millis(100),
            min_rto: Duration::from_millis(50),
            max_rto: Duration::from_secs(2),
            max_ack_delay: Duration::from_millis(10),
            ack_eliciting_threshold: 2,
            packet_threshold: 3,
            max_retransmits: 8,
            heartbeat_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_half_open: 256,
            accept_incoming: true,
            cookie_lifetime: Duration::from_secs(10),
            max_unreliable_partials: 8,
            max_protocol_violations: 16,
            max_endpoint_recv_bytes: 64 << 20,
            max_source_recv_bytes: 16 << 20,
            max_endpoint_send_bytes: 64 << 20,
            max_source_send_bytes: 16 << 20,
            max_connections_per_source: 64,
            max_half_open_per_source: 16,
            source_prefix_v4: 32,
            source_prefix_v6: 64,
            #[cfg(test)]
            initial_sequence: None,
        }
    }
}

impl RudpConfig {
    /// The defaults ([`RudpConfig::default`]).
    pub fn new() -> RudpConfig {
        RudpConfig::default()
    }

    /// A copy with every value clamped into its valid range.
    pub fn sanitized(&self) -> RudpConfig {
        let mut c = self.clone();
        let hour = Duration::from_secs(3600);
        c.mtu = c.mtu.clamp(MIN_MTU, MAX_MTU);
        let frag = c.mtu - FRAG_OVERHEAD;
        c.max_message_len = c
            .max_message_len
            .clamp(1, frag * usize::from(u16::MAX))
            .min(u32::MAX as usize);
        c.max_send_queue_bytes = c.max_send_queue_bytes.max(c.max_message_len);
        c.max_send_queue_messages = c.max_send_queue_messages.clamp(16, 1 << 24);
        c.recv_window = c.recv_window.clamp(16, MAX_RECV_WINDOW);
        c.max_recv_buffer_bytes = c.max_recv_buffer_bytes.max(2 * c.max_message_len);
        c.min_cwnd = c.min_cwnd.clamp(1, 1 << 16);
        c.max_in_flight = c.max_in_flight.clamp(c.min_cwnd, 1 << 16);
        c.initial_cwnd = c.initial_cwnd.clamp(c.min_cwnd, c.max_in_flight);
        c.min_rto = c.min_rto.clamp(Duration::from_millis(1), hour);
        c.max_rto = c.max_rto.clamp(c.min_rto, hour);
        c.initial_rtt = c.initial_rtt.clamp(Duration::from_micros(100), hour);
        c.max_ack_delay = c
            .max_ack_delay
            .min(Duration::from_millis(u64::from(MAX_ACK_DELAY_MS)));
        c.ack_eliciting_threshold = c.ack_eliciting_threshold.clamp(1, 1024);
        c.packet_threshold = c.packet_threshold.clamp(1, 64);
        c.max_retransmits = c.max_retransmits.clamp(1, 64);
        c.idle_timeout = c.idle_timeout.clamp(Duration::from_millis(10), 24 * hour);
        c.heartbeat_interval = c
            .heartbeat_interval
            .clamp(Duration::from_millis(1), c.idle_timeout / 2);
        c.handshake_timeout = c
            .handshake_timeout
            .clamp(Duration::from_millis(10), 24 * hour);
        c.max_connections = c.max_connections.max(1);
        c.max_half_open = c.max_half_open.clamp(1, c.max_connections);
        c.cookie_lifetime = c
            .cookie_lifetime
            .clamp(Duration::from_millis(100), 24 * hour);
        c.max_unreliable_partials = c.max_unreliable_partials.clamp(1, 1024);
        c.max_protocol_violations = c.max_protocol_violations.max(1);
        c.max_endpoint_recv_bytes = c.max_endpoint_recv_bytes.max(2 * c.max_message_len);
        c.max_source_recv_bytes = c
            .max_source_recv_bytes
            .clamp(2 * c.max_message_len, c.max_endpoint_recv_bytes);
        c.max_endpoint_send_bytes = c.max_endpoint_send_bytes.max(c.max_message_len);
        c.max_source_send_bytes = c
            .max_source_send_bytes
            .clamp(c.max_message_len, c.max_endpoint_send_bytes);
        c.max_connections_per_source = c.max_connections_per_source.clamp(1, c.max_connections);
        c.max_half_open_per_source = c.max_half_open_per_source.clamp(1, c.max_half_open);
        c.source_prefix_v4 = c.source_prefix_v4.min(32);
        c.source_prefix_v6 = c.source_prefix_v6.min(128);
        c
    }

    /// The initial packet and sequence number forced by a test, if any
    /// (never outside the crate's tests).
    pub(crate) fn forced_initial_sequence(&self) -> Option<u32> {
        #[cfg(test)]
        return self.initial_sequence;
        #[cfg(not(test))]
        None
    }

    /// Fragment payload size for an effective datagram size `mtu`.
    pub(crate) fn frag_payload(mtu: usize) -> usize {
        mtu.saturating_sub(FRAG_OVERHEAD).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_survive_sanitizing() {
        let d = RudpConfig::default();
        assert_eq!(d.sanitized(), d);
    }

    #[test]
    fn absurd_values_are_clamped() {
        let c = RudpConfig {
            mtu: 1,
            max_message_len: usize::MAX,
            recv_window: 0,
            min_rto: Duration::ZERO,
            max_rto: Duration::ZERO,
            idle_timeout: Duration::ZERO,
            heartbeat_interval: Duration::MAX,
            max_in_flight: 0,
            ..RudpConfig::default()
        }
        .sanitized();
        assert_eq!(c.mtu, MIN_MTU);
        assert!(c.max_message_len <= (MIN_MTU - FRAG_OVERHEAD) * 65_535);
        assert!(c.recv_window >= 16);
        assert!(c.max_rto >= c.min_rto && c.min_rto > Duration::ZERO);
        assert!(c.heartbeat_interval <= c.idle_timeout / 2);
        assert!(c.max_in_flight >= c.min_cwnd);
        assert!(c.max_recv_buffer_bytes >= 2 * c.max_message_len);
    }

    #[test]
    fn per_source_limits_are_clamped_below_the_endpoint_ones() {
        let c = RudpConfig::new()
            .max_connections(10)
            .max_half_open(4)
            .max_connections_per_source(0)
            .max_half_open_per_source(1000)
            .max_message_len(1000)
            .max_endpoint_recv_bytes(0)
            .max_source_recv_bytes(usize::MAX)
            .source_prefix_v4(200)
            .source_prefix_v6(200)
            .sanitized();
        assert_eq!(c.max_connections_per_source, 1);
        assert_eq!(c.max_half_open_per_source, 4);
        assert_eq!(c.max_endpoint_recv_bytes, 2000);
        assert_eq!(c.max_source_recv_bytes, 2000);
        assert_eq!((c.source_prefix_v4, c.source_prefix_v6), (32, 128));
    }
}

//! Counters: [`SocketStats`] per socket, [`ReactorStats`] for a reactor.

use std::fmt;

/// Counters of one socket, or (in [`ReactorStats`]) of all sockets ever
/// held by a reactor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SocketStats {
    /// Messages delivered to the handler.
    pub messages_in: u64,
    /// Payload bytes delivered to the handler.
    pub bytes_in: u64,
    /// Messages sent.
    pub messages_out: u64,
    /// Payload bytes sent.
    pub bytes_out: u64,
    /// Messages over the quota: consumed, not delivered.
    pub dropped_over_quota: u64,
    /// Receive errors reported to the handler (ICMP errors on UDP, ...).
    pub recv_errors: u64,
    /// Sends that failed (other than `WouldBlock`).
    pub send_errors: u64,
    /// Sends refused with `WouldBlock` (or a full queue or window).
    pub send_would_block: u64,
    /// Received file descriptors the handler did not take (closed).
    pub fds_closed_unclaimed: u64,
    /// Connections closed because the peer sent a frame over the maximum
    /// (or an invalid length).
    pub dropped_too_large: u64,
    /// Datagrams dropped because they were cut (larger than any datagram
    /// the protocol sends: reliable UDP).
    pub dropped_truncated: u64,
    /// Reliable UDP: peers connected now.
    pub rudp_peers: u64,
    /// Reliable UDP: packets declared lost, summed over the peers.
    pub rudp_packets_lost: u64,
    /// Reliable UDP: message chunks retransmitted, summed over the peers.
    pub rudp_retransmitted: u64,
    /// Reliable UDP: the largest smoothed round-trip time among the peers,
    /// in microseconds.
    pub rudp_max_srtt_us: u64,
    /// Reliable UDP: handshakes refused for a limit (`EndpointStats::refused`:
    /// connections or half-open ones, per source or in all); those refused
    /// for a source's limits are also in `refused_per_source`.
    pub rudp_refused: u64,
    /// Reliable UDP: connections closed to make room — half-open ones
    /// evicted for a source holding fewer, and last-resort closes at the
    /// receive budget (`EndpointStats::half_open_evicted`,
    /// `closed_over_budget`).
    pub rudp_evicted: u64,
    /// Reliable UDP: received data dropped (unreliable) or left
    /// unacknowledged (reliable) for a receive budget
    /// (`EndpointStats::recv_budget_drops`, `recv_budget_refusals`).
    pub rudp_recv_budget: u64,
    /// UDP and reliable UDP: trains of datagrams sent as one kernel packet
    /// (segmentation offload, [`DgramOptions::offload`](crate::DgramOptions::offload)).
    pub trains_sent: u64,
    /// UDP and reliable UDP: trains of datagrams read with one copy
    /// (receive offload).
    pub trains_received: u64,
    /// UDP and reliable UDP: times the kernel refused a train, turning the
    /// socket's segmentation offload off (0 or 1 per socket).
    pub offload_refused: u64,
    /// Listeners: connections closed as soon as they were accepted because
    /// their source (an IP address or prefix; a uid for Unix sockets) had
    /// its maximum open. Reliable UDP: handshakes refused for the same
    /// reason (connections or half-open ones).
    pub refused_per_source: u64,
    /// Listeners: connections closed as soon as they were accepted to keep
    /// the descriptor reserve ([`Config::fd_reserve`](crate::Config::fd_reserve)).
    pub refused_fd_reserve: u64,
    /// TCP: times reading paused because the buffer budget of the
    /// connection's source or of the reactor was spent
    /// ([`Config::max_buffered_bytes`](crate::Config::max_buffered_bytes)).
    pub reads_paused: u64,
    /// TCP: sends refused with `WouldBlock` because the buffer budget was
    /// spent (also counted in `send_would_block`). Reliable UDP: sends
    /// refused for the source's or the socket's send budget
    /// (`EndpointStats::send_budget_refusals`).
    pub sends_refused_budget: u64,
    /// Messages whose passed descriptors were cut (`MSG_CTRUNC`: the
    /// process had too few descriptors left, or more than fit were sent);
    /// the kernel closed the ones cut.
    pub fds_cut: u64,
}

impl SocketStats {
    pub(super) fn add(&mut self, o: &SocketStats) {
        self.messages_in += o.messages_in;
        self.bytes_in += o.bytes_in;
        self.messages_out += o.messages_out;
        self.bytes_out += o.bytes_out;
        self.dropped_over_quota += o.dropped_over_quota;
        self.recv_errors += o.recv_errors;
        self.send_errors += o.send_errors;
        self.send_would_block += o.send_would_block;
        self.fds_closed_unclaimed += o.fds_closed_unclaimed;
        self.dropped_too_large += o.dropped_too_large;
        self.dropped_truncated += o.dropped_truncated;
        self.rudp_peers += o.rudp_peers;
        self.rudp_packets_lost += o.rudp_packets_lost;
        self.rudp_retransmitted += o.rudp_retransmitted;
        self.rudp_max_srtt_us = self.rudp_max_srtt_us.max(o.rudp_max_srtt_us);
        self.rudp_refused += o.rudp_refused;
        self.rudp_evicted += o.rudp_evicted;
        self.rudp_recv_budget += o.rudp_recv_budget;
        self.trains_sent += o.trains_sent;
        self.trains_received += o.trains_received;
        self.offload_refused += o.offload_refused;
        self.refused_per_source += o.refused_per_source;
        self.refused_fd_reserve += o.refused_fd_reserve;
        self.reads_paused += o.reads_paused;
        self.sends_refused_budget += o.sends_refused_budget;
        self.fds_cut += o.fds_cut;
    }
}

impl fmt::Display for SocketStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "in={} msgs/{} B out={} msgs/{} B drops: over_quota={} too_large={} truncated={} \
             refused_sends={} | errors: recv={} send={} | fds: not_taken={} cut={}",
            self.messages_in,
            self.bytes_in,
            self.messages_out,
            self.bytes_out,
            self.dropped_over_quota,
            self.dropped_too_large,
            self.dropped_truncated,
            self.send_would_block,
            self.recv_errors,
            self.send_errors,
            self.fds_closed_unclaimed,
            self.fds_cut
        )?;
        let limits = [
            self.refused_per_source,
            self.refused_fd_reserve,
            self.reads_paused,
            self.sends_refused_budget,
            self.rudp_refused,
            self.rudp_evicted,
            self.rudp_recv_budget,
        ];
        if limits.iter().any(|&n| n > 0) {
            write!(
                f,
                " | limits: refused_per_source={} refused_fd_reserve={} reads_paused={} \
                 sends_refused_budget={} rudp_refused={} rudp_evicted={} rudp_recv_budget={}",
                limits[0], limits[1], limits[2], limits[3], limits[4], limits[5], limits[6]
            )?;
        }
        if self.rudp_peers > 0 || self.rudp_retransmitted > 0 {
            write!(
                f,
                " | rudp peers={} lost={} retransmitted={} max_srtt={} us trains: sent={} \
                 received={} refused={}",
                self.rudp_peers,
                self.rudp_packets_lost,
                self.rudp_retransmitted,
                self.rudp_max_srtt_us,
                self.trains_sent,
                self.trains_received,
                self.offload_refused
            )?;
        }
        Ok(())
    }
}

/// A snapshot of a reactor's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReactorStats {
    /// Sockets open now.
    pub open_sockets: usize,
    /// Sockets closed so far.
    pub closed_sockets: u64,
    /// Timers pending.
    pub pending_timers: usize,
    /// Calls to `run_once`.
    pub run_once_calls: u64,
    /// Handler callbacks made.
    pub callbacks: u64,
    /// Bytes peers make the reactor buffer now (TCP partial frames and
    /// send queues), counted against
    /// [`Config::max_buffered_bytes`](crate::Config::max_buffered_bytes).
    pub buffered_bytes: usize,
    /// The most `buffered_bytes` has been.
    pub buffered_peak: usize,
    /// Counters summed over every socket, open or closed.
    pub totals: SocketStats,
}

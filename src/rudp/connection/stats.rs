//! Statistics of a connection, as [`Connection::stats`](super::Connection::stats)
//! reports them.

use std::time::Duration;

use crate::rudp::Guarantee;

/// Counters per delivery guarantee.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PerGuarantee {
    /// `Guarantee::None`.
    pub none: u64,
    /// `Guarantee::Order`.
    pub order: u64,
    /// `Guarantee::Delivery`.
    pub delivery: u64,
}

impl PerGuarantee {
    pub(super) fn add(&mut self, g: Guarantee) {
        match g {
            Guarantee::None => self.none += 1,
            Guarantee::Order => self.order += 1,
            Guarantee::Delivery => self.delivery += 1,
        }
    }

    /// Sum over all guarantees.
    pub fn total(&self) -> u64 {
        self.none + self.order + self.delivery
    }
}

/// Statistics of one connection.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Smoothed round-trip time.
    pub srtt: Duration,
    /// Round-trip time variation.
    pub rttvar: Duration,
    /// Smallest RTT sample (zero before the first one).
    pub min_rtt: Duration,
    /// Current retransmission timeout (before backoff).
    pub rto: Duration,
    /// Congestion window, packets (of the connection's datagram size).
    pub cwnd: u32,
    /// Congestion window, bytes.
    pub cwnd_bytes: u64,
    /// Pacing rate, bytes per second.
    pub pacing_rate: u64,
    /// The congestion controller's estimate of the path's bandwidth, bytes
    /// per second (BBR: the bottleneck bandwidth it paces at, bounds
    /// applied; AIMD: window / smoothed RTT).
    pub bandwidth: u64,
    /// What the congestion controller is doing: `startup`, `drain`,
    /// `probe_bw_down`, `probe_bw_cruise`, `probe_bw_refill`,
    /// `probe_bw_up`, `probe_rtt` (BBR); `slow_start`,
    /// `congestion_avoidance` (AIMD).
    pub congestion_state: &'static str,
    /// Times the pacer held data back (each arms the pacing timer once).
    pub pacing_delays: u64,
    /// Ack-eliciting packets in flight.
    pub in_flight: u32,
    /// Their bytes.
    pub bytes_in_flight: u64,
    /// Most packets ever in flight at once.
    pub peak_in_flight: u32,
    /// Datagrams handed out by `poll_transmit` (all types).
    pub datagrams_sent: u64,
    /// Datagrams accepted by `handle_datagram` (all types, duplicates included).
    pub datagrams_received: u64,
    /// Bytes handed out by `poll_transmit`.
    pub bytes_sent: u64,
    /// Bytes of accepted datagrams.
    pub bytes_received: u64,
    /// Numbered (DATA and PING) packets sent.
    pub packets_sent: u64,
    /// Pure ACK packets sent.
    pub acks_sent: u64,
    /// PING packets sent (heartbeats and probes).
    pub pings_sent: u64,
    /// New numbered packets received.
    pub packets_received: u64,
    /// Packets declared lost.
    pub packets_lost: u64,
    /// Chunks sent for the first time.
    pub chunks_sent: u64,
    /// Reliable chunks sent again after a loss.
    pub chunks_retransmitted: u64,
    /// Retransmission timeouts that fired.
    pub rto_count: u64,
    /// Packets declared lost that were acknowledged afterwards (reordering
    /// or a delay spike, not loss); each widens the reordering tolerance.
    pub spurious_losses: u64,
    /// Congestion-window reductions undone because every loss that caused
    /// them turned out spurious.
    pub cwnd_undos: u64,
    /// Tail-loss probes sent (one packet before the RTO, see `docs/rudp.md`).
    pub tail_probes: u64,
    /// Current packet-reordering threshold (starts at
    /// `RudpConfig::packet_threshold`, raised by spurious losses; `u32::MAX`
    /// once reordering deeper than the ack bitmap was seen: time only).
    pub reorder_threshold: u32,
    /// Current extra reordering time window (zero until a spurious loss).
    pub reorder_window: Duration,
    /// Messages queued by `send` / `send_set`.
    pub messages_sent: PerGuarantee,
    /// Messages handed to the application.
    pub messages_delivered: PerGuarantee,
    /// Datagrams dropped because the same packet number was already received.
    pub duplicate_packets: u64,
    /// Reliable chunks dropped because their message was already received.
    pub duplicate_chunks: u64,
    /// Packets older than the duplicate-detection window, dropped.
    pub stale_packets: u64,
    /// `Order` messages dropped because a newer one was already delivered.
    pub stale_order_dropped: u64,
    /// Unreliable messages dropped by the receiver (buffer limits, evicted
    /// partial reassemblies).
    pub unreliable_dropped: u64,
    /// Packets left unacknowledged because the receive buffer was full.
    pub rejected_packets: u64,
    /// Bytes the receive side holds now: out-of-order and partially
    /// reassembled messages, messages waiting to be polled (capacities and
    /// bookkeeping overheads; messages left in the caller's receive buffer
    /// are not counted). See `docs/rudp.md` §6.
    pub recv_bytes_held: usize,
    /// Unreliable messages, or partial reassemblies of them, dropped for a
    /// receive budget (the connection's, its source's or the endpoint's).
    /// Also counted in `unreliable_dropped`.
    pub recv_budget_drops: u64,
    /// Reliable chunks refused for a receive budget: their packet was not
    /// acknowledged, and the peer sends them again later.
    pub recv_budget_refusals: u64,
    /// Protocol violations seen (each discarded its datagram).
    pub protocol_violations: u64,
}

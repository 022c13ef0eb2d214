//! A model-based controller of the BBR family (`CongestionControl::Bbr`).
//!
//! The model, from delivery-rate samples ([`super::rate`]):
//!
//! - **bottleneck bandwidth** `bw_max`: the largest rate delivered over the
//!   last two bandwidth-probing cycles (application-limited samples only
//!   count when they raise it);
//! - **minimum RTT** `min_rtt`: the smallest RTT seen in the last 10 s,
//!   refreshed by a *ProbeRTT* phase (window down to half a BDP for 200 ms
//!   and a round trip) when no sample came down to it for 5 s;
//! - the bandwidth-delay product `BDP = bw × min_rtt`.
//!
//! The state machine (BBRv1 / BBRv3): *Startup* paces at 2.77 × bw and
//! doubles the rate each round trip until the bandwidth stops growing by
//! 25% for three rounds (or congestive loss says the pipe is full);
//! *Drain* paces at 0.35 × bw until the queue Startup made is gone; then
//! *ProbeBW* cycles through DOWN (0.9 × bw until in flight ≤ BDP), CRUISE
//! (1.0 × bw), REFILL (one round at 1.0, lower bounds lifted) and UP
//! (1.25 × bw for at least a round trip, until 1.25 BDP are in flight;
//! with an `inflight_hi`, raising it by 1, 2, 4, … packets per round while
//! it limits the flow). A probe starts eight round trips after the last
//! one (fewer when the BDP is fewer packets; at most 2–3 s), BBRv1's
//! cadence: a probe gains a small flow relatively more than a large one,
//! so frequent probes bring flows sharing a bottleneck together. The
//! window is `2 × BDP` (2.25 in UP) plus an allowance for ack aggregation
//! (the most acked beyond what the bandwidth explains, over 10 rounds) and
//! for the pacer's bursts.
//!
//! Bounds from congestion (BBRv2/v3's `inflight_hi`, `inflight_lo`,
//! `bw_lo`) respond to *congestive* loss only: loss counts when the RTT
//! shows a **standing queue** — the smallest RTT of each of the last four
//! round trips at least a quarter of the minimum RTT (and 2 ms) above it.
//! A drop-tail queue drops only when full, so loss from congestion comes
//! with the RTT far above its minimum for a while; random loss on an
//! unloaded path comes with the RTT at its minimum (this flow's own probes
//! raise it for a round or two only), and bounds nothing. (BBRv1 ignores
//! loss; BBRv2/v3 respond to any loss, and slow down under random loss.)
//!
//! - Each loss epoch (at most one per round trip) with a standing queue,
//!   in ProbeBW or Drain, cuts `bw_lo` and `inflight_lo` to 0.7 × the
//!   bandwidth and window in use (CUBIC's decrease); they then grow by a
//!   packet, and a packet per round trip of rate, each round (Reno's
//!   increase) until the next probe lifts them. While it competes, the flow
//!   is an AIMD flow, fair to its peers and to loss-based TCP.
//! - When a probe (Startup, UP and the round after) loses more than 2% of
//!   what was in flight with a standing queue, `inflight_hi` falls to
//!   0.7 × that and the probe ends; CRUISE keeps in flight 15% below it.
//!   REFILL forgets it when no queue stands (the path has room again).
//!
//! The pacing rate is the pacing gain × `min(bw_max, bw_lo)`; the window
//! is the model's, capped by `inflight_hi` and `inflight_lo`, at least four
//! packets. Explicit congestion notification would feed the same bounds
//! (see `docs/rudp.md` §5); the wire has none yet.

use std::time::{Duration, Instant};

use super::{bytes_in, rate_of, Controller, RateSample};
use crate::rudp::config::RudpConfig;
use crate::rudp::rng::Rng;

/// Startup pacing gain: 4 ln 2, the smallest that doubles the delivery rate
/// per round trip (BBRv3).
const STARTUP_PACING_GAIN: f64 = 2.77;
/// Window gain in Startup and ProbeBW.
const CWND_GAIN: f64 = 2.0;
/// Window gain while probing up (BBRv3).
const UP_CWND_GAIN: f64 = 2.25;
/// Drain pacing gain (BBRv3).
const DRAIN_PACING_GAIN: f64 = 0.35;
/// Pacing gains of ProbeBW DOWN and UP (BBRv3).
const DOWN_PACING_GAIN: f64 = 0.9;
const UP_PACING_GAIN: f64 = 1.25;
/// Startup ends when the bandwidth grew less than this for
/// [`FULL_BW_ROUNDS`] rounds.
const FULL_BW_GROWTH: f64 = 1.25;
const FULL_BW_ROUNDS: u32 = 3;
/// Loss rate (of what was in flight) that makes a probe too high.
const LOSS_THRESH: f64 = 0.02;
/// Multiplicative decrease of the bounds on congestive loss.
const BETA: f64 = 0.7;
/// CRUISE keeps in flight below this fraction of `inflight_hi`, leaving
/// room to other flows.
const HEADROOM: f64 = 0.85;
/// Pacing a hair below the estimate drains what estimation errors queue.
const PACING_MARGIN: f64 = 0.99;
/// Window of the minimum-RTT filter.
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// ProbeRTT comes when no RTT sample came down to the minimum for this long.
const PROBE_RTT_INTERVAL: Duration = Duration::from_secs(5);
/// ProbeRTT holds its small window this long (and one round trip).
const PROBE_RTT_DURATION: Duration = Duration::from_millis(200);
/// ProbeRTT's window, as a fraction of the BDP (BBRv2/v3).
const PROBE_RTT_CWND_GAIN: f64 = 0.5;
/// Smallest window, in packets (or `RudpConfig::min_cwnd` if larger).
const MIN_PIPE_PACKETS: u64 = 4;
/// ProbeBW waits this long (plus up to 1 s at random) between probes…
const PROBE_WAIT_BASE: Duration = Duration::from_secs(2);
const PROBE_WAIT_RAND_MS: u64 = 1000;
/// … or at most this many round trips (as BBRv1's eight-phase cycle; fewer
/// when the BDP is fewer packets).
const MAX_PROBE_ROUNDS: u64 = 8;
/// The ack-aggregation allowance is the largest excess over this many
/// rounds (two halves), capped at this much of the bandwidth.
const EXTRA_ACKED_HALF_WINDOW: u32 = 5;
const EXTRA_ACKED_MAX: Duration = Duration::from_millis(100);
/// An aggregation epoch longer than this many bytes restarts.
const ACK_EPOCH_RESET: u64 = 1 << 30;
/// A standing queue is an RTT this fraction of the minimum above it …
const QUEUE_FRACTION: u32 = 4;
/// … and at least this much …
const QUEUE_MIN: Duration = Duration::from_millis(2);
/// … for this many round trips.
const QUEUE_ROUNDS: usize = 4;
/// The send quantum: this much of the pacing rate (between two packets
/// and 64 KiB, as Linux's TSO goal); the window allows three.
const QUANTUM_TIME: Duration = Duration::from_millis(1);
const QUANTUM_MAX: u64 = 64 << 10;
/// Bounds not set.
const UNSET: u64 = u64::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Startup,
    Drain,
    ProbeBw(Phase),
    ProbeRtt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Down,
    Cruise,
    Refill,
    Up,
}

/// The congestion bounds, saved when a loss epoch begins so that a
/// response to losses that all turn out spurious can be undone.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    bw_lo: u64,
    inflight_lo: u64,
    inflight_hi: u64,
    cwnd: u64,
}

/// The BBR-family controller (see the module docs).
#[derive(Debug)]
pub(crate) struct Bbr {
    mtu: u64,
    /// Smallest window, packets.
    min_pipe_packets: u64,
    initial_cwnd: u64,
    initial_rtt: Duration,
    mode: Mode,
    rng: Rng,

    // The model.
    /// Largest delivery rate of the previous and the current probe cycle.
    bw_max: [u64; 2],
    bw_lo: u64,
    inflight_lo: u64,
    inflight_hi: u64,
    /// Largest volume delivered (over a sample) in the current round.
    inflight_latest: u64,
    min_rtt: Option<Duration>,
    min_rtt_stamp: Instant,
    probe_rtt_min: Option<Duration>,
    probe_rtt_min_stamp: Instant,

    // Rounds (one per round trip, counted in delivered bytes).
    delivered: u64,
    next_round_delivered: u64,
    round_count: u64,
    round_start: bool,

    // Congestion signals of the current and the previous round.
    round_lost: u64,
    round_acked: u64,
    round_min_rtt: Option<Duration>,
    /// The smallest RTT of each of the last rounds (none: no sample).
    prev_round_min_rtt: [Duration; QUEUE_ROUNDS],
    /// The window was full at some send in this / the previous round.
    cwnd_limited_round: bool,
    cwnd_limited: bool,

    // Startup.
    full_bw: u64,
    full_bw_count: u32,
    full_bw_reached: bool,

    // ProbeBW.
    /// When the current phase (UP) or cycle (DOWN onwards) began.
    cycle_stamp: Instant,
    probe_wait: Duration,
    rounds_since_probe: u64,
    /// Samples up to this round come from a bandwidth probe (loss in them
    /// may lower `inflight_hi`).
    probe_samples_until: u64,
    /// `inflight_hi` already responded to loss in this probe.
    probe_reacted: bool,
    probe_up_cnt: u64,
    probe_up_acked: u64,
    probe_up_rounds: u32,
    /// Bandwidth-growth check of UP (as Startup's).
    up_full_bw: u64,
    up_full_bw_count: u32,

    // ProbeRTT.
    probe_rtt_done: Option<Instant>,
    probe_rtt_round_done: bool,
    prior_cwnd: u64,

    // Ack aggregation.
    extra_acked: [u64; 2],
    extra_acked_idx: usize,
    extra_acked_rounds: u32,
    ack_epoch_start: Instant,
    ack_epoch_acked: u64,

    // Outputs.
    pacing_gain: f64,
    cwnd_gain: f64,
    cwnd: u64,
    pacing_rate: u64,
    /// The connection's minimum RTT (the standing-queue test's base).
    base_rtt: Duration,
    undo: Option<Bounds>,
}

impl Bbr {
    pub(crate) fn new(cfg: &RudpConfig, mtu: u64, now: Instant, seed: u64) -> Self {
        let initial_cwnd = u64::from(cfg.initial_cwnd) * mtu;
        let mut b = Bbr {
            mtu,
            min_pipe_packets: MIN_PIPE_PACKETS.max(u64::from(cfg.min_cwnd)),
            initial_cwnd,
            initial_rtt: cfg.initial_rtt,
            mode: Mode::Startup,
            rng: Rng::new(seed),
            bw_max: [0; 2],
            bw_lo: UNSET,
            inflight_lo: UNSET,
            inflight_hi: UNSET,
            inflight_latest: 0,
            min_rtt: None,
            min_rtt_stamp: now,
            probe_rtt_min: None,
            probe_rtt_min_stamp: now,
            delivered: 0,
            next_round_delivered: 0,
            round_count: 0,
            round_start: false,
            round_lost: 0,
            round_acked: 0,
            round_min_rtt: None,
            prev_round_min_rtt: [Duration::MAX; QUEUE_ROUNDS],
            cwnd_limited_round: false,
            cwnd_limited: false,
            full_bw: 0,
            full_bw_count: 0,
            full_bw_reached: false,
            cycle_stamp: now,
            probe_wait: PROBE_WAIT_BASE,
            rounds_since_probe: 0,
            probe_samples_until: u64::MAX,
            probe_reacted: false,
            probe_up_cnt: u64::MAX,
            probe_up_acked: 0,
            probe_up_rounds: 0,
            up_full_bw: 0,
            up_full_bw_count: 0,
            probe_rtt_done: None,
            probe_rtt_round_done: false,
            prior_cwnd: 0,
            extra_acked: [0; 2],
            extra_acked_idx: 0,
            extra_acked_rounds: 0,
            ack_epoch_start: now,
            ack_epoch_acked: 0,
            pacing_gain: STARTUP_PACING_GAIN,
            cwnd_gain: CWND_GAIN,
            cwnd: initial_cwnd,
            pacing_rate: 0,
            base_rtt: Duration::ZERO,
            undo: None,
        };
        b.pacing_rate = b.initial_pacing_rate(cfg.initial_rtt);
        b
    }

    fn initial_pacing_rate(&self, rtt: Duration) -> u64 {
        let r = rate_of(self.initial_cwnd, rtt.max(Duration::from_micros(1)));
        (r as f64 * STARTUP_PACING_GAIN) as u64
    }

    fn min_pipe(&self) -> u64 {
        self.min_pipe_packets * self.mtu
    }

    /// The bandwidth the model uses: the max filter, bounded by `bw_lo`.
    fn bw(&self) -> u64 {
        self.bw_max[0].max(self.bw_max[1]).min(self.bw_lo)
    }

    fn bw_max(&self) -> u64 {
        self.bw_max[0].max(self.bw_max[1])
    }

    /// `gain` × the bandwidth-delay product (the initial window before the
    /// first RTT sample).
    fn bdp(&self, gain: f64) -> u64 {
        match self.min_rtt {
            Some(rtt) if self.bw() > 0 => (bytes_in(self.bw(), rtt) as f64 * gain) as u64,
            _ => (self.initial_cwnd as f64 * gain) as u64,
        }
    }

    /// The send quantum: about a millisecond of the pacing rate.
    fn quantum(&self) -> u64 {
        bytes_in(self.pacing_rate, QUANTUM_TIME).clamp(2 * self.mtu, QUANTUM_MAX.max(2 * self.mtu))
    }

    /// What may be in flight for `gain`: `gain × BDP` plus three send
    /// quanta, room for the pacer's bursts — at most one BDP of it: on
    /// paths shorter than a burst the window is what limits bursts.
    fn inflight(&self, gain: f64) -> u64 {
        let quanta = (3 * self.quantum()).min(self.bdp(1.0).max(self.min_pipe()));
        self.bdp(gain).saturating_add(quanta)
    }

    fn extra_acked(&self) -> u64 {
        let cap = bytes_in(self.bw(), EXTRA_ACKED_MAX);
        self.extra_acked[0].max(self.extra_acked[1]).min(cap)
    }

    fn is_probing(&self) -> bool {
        matches!(
            self.mode,
            Mode::Startup | Mode::ProbeBw(Phase::Refill) | Mode::ProbeBw(Phase::Up)
        )
    }

    /// The RTT of the last [`QUEUE_ROUNDS`] round trips stayed a quarter
    /// (at least 2 ms) above the minimum: a queue that does not drain (the
    /// queue of this flow's own probe drains within a round or two).
    fn standing_queue(&self, base: Duration) -> bool {
        let recent = self
            .prev_round_min_rtt
            .iter()
            .chain(self.round_min_rtt.iter())
            .min()
            .copied();
        let Some(recent) = recent else {
            return false;
        };
        if self.round_count < QUEUE_ROUNDS as u64 {
            return false;
        }
        let threshold = (base / QUEUE_FRACTION).max(QUEUE_MIN);
        recent.saturating_sub(base) > threshold
    }

    // -- per ack ---------------------------------------------------------------

    fn update_round(&mut self, rs: &RateSample) {
        self.delivered = rs.rate.delivered_total;
        self.round_start = rs.rate.prior_delivered >= self.next_round_delivered;
        if self.round_start {
            self.next_round_delivered = self.delivered;
            self.round_count += 1;
            self.rounds_since_probe += 1;
            self.cwnd_limited = self.cwnd_limited_round;
            self.cwnd_limited_round = false;
        }
    }

    /// Starts a round now (the next ack of a packet sent from now on ends it).
    fn start_round(&mut self) {
        self.next_round_delivered = self.delivered;
    }

    fn update_bw(&mut self, rs: &RateSample) {
        let Some(rate) = rs.rate.rate else {
            return;
        };
        if !rs.rate.app_limited || rate >= self.bw_max() {
            self.bw_max[1] = self.bw_max[1].max(rate);
        }
    }

    /// Per-round congestion signals; at a round's end, the lower bounds
    /// respond to its congestive loss.
    fn update_congestion_signals(&mut self, rs: &RateSample) {
        if self.round_start {
            let lost = self.round_lost;
            let congestive = lost > 0 && self.standing_queue(rs.min_rtt);
            if !congestive && !self.is_probing() {
                // Additive increase of the lower bounds: a packet (and a
                // packet per round trip of rate) per round, as Reno grows.
                if self.inflight_lo != UNSET {
                    self.inflight_lo = self.inflight_lo.saturating_add(self.mtu);
                }
                if self.bw_lo != UNSET {
                    let rtt = self.min_rtt.unwrap_or(self.initial_rtt);
                    self.bw_lo = self.bw_lo.saturating_add(rate_of(self.mtu, rtt));
                }
            }
            if self.mode == Mode::Startup && congestive {
                let total = lost + self.round_acked;
                if lost as f64 > LOSS_THRESH * total as f64 {
                    // The pipe and its queue are full: Startup ends.
                    self.full_bw_reached = true;
                    self.inflight_hi = self.bdp(1.0).max(self.inflight_latest);
                }
            }
            if let Some(m) = self.round_min_rtt.take() {
                self.prev_round_min_rtt.rotate_right(1);
                self.prev_round_min_rtt[0] = m;
            }
            self.round_lost = 0;
            self.round_acked = 0;
            self.inflight_latest = 0;
        }
        if let Some(r) = rs.rtt {
            self.round_min_rtt = Some(self.round_min_rtt.map_or(r, |m| m.min(r)));
        }
        self.inflight_latest = self.inflight_latest.max(rs.rate.delivered);
        self.round_acked += rs.acked;
    }

    fn update_ack_aggregation(&mut self, now: Instant, rs: &RateSample) {
        if self.round_start {
            self.extra_acked_rounds += 1;
            if self.extra_acked_rounds >= EXTRA_ACKED_HALF_WINDOW {
                self.extra_acked_rounds = 0;
                self.extra_acked_idx ^= 1;
                self.extra_acked[self.extra_acked_idx] = 0;
            }
        }
        let elapsed = now.saturating_duration_since(self.ack_epoch_start);
        let mut expected = bytes_in(self.bw(), elapsed);
        if self.ack_epoch_acked <= expected || self.ack_epoch_acked + rs.acked >= ACK_EPOCH_RESET {
            self.ack_epoch_acked = 0;
            self.ack_epoch_start = now;
            expected = 0;
        }
        self.ack_epoch_acked += rs.acked;
        let extra = (self.ack_epoch_acked - expected.min(self.ack_epoch_acked)).min(self.cwnd);
        let slot = &mut self.extra_acked[self.extra_acked_idx];
        *slot = (*slot).max(extra);
    }

    fn check_startup_done(&mut self, rs: &RateSample) {
        if self.full_bw_reached || !self.round_start || rs.rate.app_limited {
            return;
        }
        let bw = self.bw_max();
        if bw as f64 >= self.full_bw as f64 * FULL_BW_GROWTH {
            self.full_bw = bw;
            self.full_bw_count = 0;
            return;
        }
        self.full_bw_count += 1;
        self.full_bw_reached = self.full_bw_count >= FULL_BW_ROUNDS;
    }

    fn check_drain(&mut self, now: Instant, rs: &RateSample) {
        if self.mode == Mode::Startup && self.full_bw_reached {
            self.mode = Mode::Drain;
            self.pacing_gain = DRAIN_PACING_GAIN;
            self.cwnd_gain = CWND_GAIN;
        }
        if self.mode == Mode::Drain && rs.in_flight <= self.inflight(1.0) {
            self.start_down(now);
        }
    }

    // -- ProbeBW -----------------------------------------------------------------

    fn start_down(&mut self, now: Instant) {
        self.mode = Mode::ProbeBw(Phase::Down);
        self.pacing_gain = DOWN_PACING_GAIN;
        self.cwnd_gain = CWND_GAIN;
        self.cycle_stamp = now;
        self.probe_up_cnt = u64::MAX;
        // Up to a whole extra second, and sometimes one round more, so that
        // flows sharing a bottleneck do not probe in step.
        self.probe_wait =
            PROBE_WAIT_BASE + Duration::from_millis(self.rng.next_u64() % (PROBE_WAIT_RAND_MS + 1));
        self.rounds_since_probe = self.rng.next_u64() % 2;
        // Acks in the round after the probe still come from it.
        self.probe_samples_until = self.round_count + 1;
    }

    fn start_cruise(&mut self) {
        self.mode = Mode::ProbeBw(Phase::Cruise);
        self.pacing_gain = 1.0;
        self.cwnd_gain = CWND_GAIN;
    }

    fn start_refill(&mut self) {
        self.bw_lo = UNSET;
        self.inflight_lo = UNSET;
        if !self.standing_queue(self.base_rtt) {
            // No queue stands: the overflow point learnt is stale.
            self.inflight_hi = UNSET;
        }
        self.probe_up_rounds = 0;
        self.probe_up_acked = 0;
        self.mode = Mode::ProbeBw(Phase::Refill);
        self.pacing_gain = 1.0;
        self.cwnd_gain = CWND_GAIN;
        // The refill round's acks still come from cruising.
        self.probe_samples_until = 0;
        self.start_round();
    }

    fn start_up(&mut self, now: Instant) {
        self.mode = Mode::ProbeBw(Phase::Up);
        self.pacing_gain = UP_PACING_GAIN;
        self.cwnd_gain = UP_CWND_GAIN;
        self.cycle_stamp = now;
        self.up_full_bw = self.bw_max();
        self.up_full_bw_count = 0;
        self.probe_samples_until = u64::MAX;
        self.probe_reacted = false;
        // A new cycle of the bandwidth filter: the max of this one and the
        // previous one.
        self.bw_max = [self.bw_max[1], 0];
        self.start_round();
        self.raise_inflight_hi_slope();
    }

    /// In UP, `inflight_hi` grows by 1, 2, 4, … packets per round.
    fn raise_inflight_hi_slope(&mut self) {
        let growth = self.mtu << self.probe_up_rounds.min(30);
        self.probe_up_rounds = (self.probe_up_rounds + 1).min(30);
        self.probe_up_cnt = (self.cwnd / (growth / self.mtu).max(1)).max(1);
    }

    fn probe_inflight_hi_upward(&mut self, rs: &RateSample) {
        if !self.cwnd_limited || self.cwnd < self.inflight_hi {
            return; // not using the room it has
        }
        self.probe_up_acked += rs.acked;
        if self.probe_up_acked >= self.probe_up_cnt {
            let delta = self.probe_up_acked / self.probe_up_cnt;
            self.probe_up_acked -= delta * self.probe_up_cnt;
            self.inflight_hi = self.inflight_hi.saturating_add(delta * self.mtu);
        }
        if self.round_start {
            self.raise_inflight_hi_slope();
        }
    }

    fn time_to_probe(&self, now: Instant) -> bool {
        let rounds = (self.bdp(1.0) / self.mtu.max(1)).min(MAX_PROBE_ROUNDS);
        now.saturating_duration_since(self.cycle_stamp) >= self.probe_wait
            || self.rounds_since_probe >= rounds
    }

    /// The upper bound: loss above the threshold, with a standing queue,
    /// in the samples of a probe.
    fn update_upper_bound(&mut self, now: Instant, rs: &RateSample) {
        let probing_samples =
            self.round_count <= self.probe_samples_until || self.mode == Mode::Startup;
        let too_high = rs.rate.lost > 0
            && rs.rate.lost as f64 > LOSS_THRESH * rs.rate.tx_in_flight as f64
            && self.standing_queue(rs.min_rtt);
        if too_high {
            if !probing_samples || self.probe_reacted {
                return;
            }
            // React once per probe: the overflow point, less the
            // multiplicative decrease.
            self.probe_reacted = true;
            if !rs.rate.app_limited {
                self.inflight_hi =
                    ((rs.rate.tx_in_flight as f64 * BETA) as u64).max(self.min_pipe());
            }
            if self.mode == Mode::ProbeBw(Phase::Up) {
                self.start_down(now);
            }
            return;
        }
        if self.inflight_hi == UNSET {
            return;
        }
        if rs.rate.tx_in_flight > self.inflight_hi {
            self.inflight_hi = rs.rate.tx_in_flight;
        }
        if self.mode == Mode::ProbeBw(Phase::Up) {
            self.probe_inflight_hi_upward(rs);
        }
    }

    fn update_probe_bw(&mut self, now: Instant, rs: &RateSample) {
        let Mode::ProbeBw(phase) = self.mode else {
            return;
        };
        match phase {
            Phase::Down => {
                if self.time_to_probe(now) {
                    self.start_refill();
                } else if rs.in_flight <= self.inflight(1.0).min(self.headroom()) {
                    self.start_cruise();
                }
            }
            Phase::Cruise => {
                if self.time_to_probe(now) {
                    self.start_refill();
                }
            }
            Phase::Refill => {
                if self.round_start {
                    self.start_up(now);
                }
            }
            Phase::Up => {
                // Probing goes on while `inflight_hi` limits it (it grows
                // faster each round) and while the bandwidth grows; it
                // ends with congestive loss (see `update_upper_bound`), or
                // once the bandwidth stopped growing or in flight reached
                // 1.25 BDP a round trip in.
                let min_rtt = self.min_rtt.unwrap_or(self.initial_rtt);
                if self.cwnd_limited && self.cwnd >= self.inflight_hi {
                    self.up_full_bw = self.bw_max();
                    self.up_full_bw_count = 0;
                } else if self.round_start {
                    if self.bw_max() as f64 >= self.up_full_bw as f64 * FULL_BW_GROWTH {
                        self.up_full_bw = self.bw_max();
                        self.up_full_bw_count = 0;
                    } else {
                        self.up_full_bw_count += 1;
                    }
                }
                let plateau = self.up_full_bw_count >= FULL_BW_ROUNDS;
                let reached = now.saturating_duration_since(self.cycle_stamp) >= min_rtt
                    && rs.in_flight + rs.acked >= self.inflight(UP_PACING_GAIN)
                    && self.inflight_hi == UNSET;
                if plateau || reached {
                    self.start_down(now);
                }
            }
        }
    }

    /// CRUISE keeps in flight below 85% of `inflight_hi`.
    fn headroom(&self) -> u64 {
        if self.inflight_hi == UNSET {
            return UNSET;
        }
        ((self.inflight_hi as f64 * HEADROOM) as u64).max(self.min_pipe())
    }

    // -- min RTT and ProbeRTT ------------------------------------------------------

    fn probe_rtt_cwnd(&self) -> u64 {
        self.bdp(PROBE_RTT_CWND_GAIN).max(self.min_pipe())
    }

    fn update_min_rtt(&mut self, now: Instant, rs: &RateSample) {
        let expired = now.saturating_duration_since(self.probe_rtt_min_stamp) > PROBE_RTT_INTERVAL;
        if let Some(rtt) = rs.rtt {
            if self.probe_rtt_min.is_none_or(|m| rtt <= m) || expired {
                self.probe_rtt_min = Some(rtt);
                self.probe_rtt_min_stamp = now;
            }
            let min_expired = now.saturating_duration_since(self.min_rtt_stamp) > MIN_RTT_WINDOW;
            if let Some(p) = self.probe_rtt_min {
                if self.min_rtt.is_none_or(|m| p <= m) || min_expired {
                    self.min_rtt = Some(p);
                    self.min_rtt_stamp = self.probe_rtt_min_stamp;
                }
            }
        }
        if expired && self.mode != Mode::ProbeRtt && self.min_rtt.is_some() {
            self.prior_cwnd = self.prior_cwnd.max(self.cwnd);
            self.mode = Mode::ProbeRtt;
            self.pacing_gain = 1.0;
            self.cwnd_gain = CWND_GAIN;
            self.probe_rtt_done = None;
        }
        if self.mode != Mode::ProbeRtt {
            return;
        }
        match self.probe_rtt_done {
            None => {
                if rs.in_flight <= self.probe_rtt_cwnd() {
                    self.probe_rtt_done = Some(now.checked_add(PROBE_RTT_DURATION).unwrap_or(now));
                    self.probe_rtt_round_done = false;
                    self.start_round();
                }
            }
            Some(done) => {
                if self.round_start {
                    self.probe_rtt_round_done = true;
                }
                if self.probe_rtt_round_done && now >= done {
                    self.probe_rtt_min_stamp = now;
                    self.cwnd = self.cwnd.max(self.prior_cwnd);
                    self.prior_cwnd = 0;
                    if self.full_bw_reached {
                        self.bw_lo = UNSET;
                        self.inflight_lo = UNSET;
                        self.start_down(now);
                        self.start_cruise();
                    } else {
                        self.mode = Mode::Startup;
                        self.pacing_gain = STARTUP_PACING_GAIN;
                        self.cwnd_gain = CWND_GAIN;
                    }
                }
            }
        }
    }

    // -- outputs ---------------------------------------------------------------

    fn set_pacing_rate(&mut self) {
        let bw = self.bw();
        if bw == 0 {
            return; // no sample yet: the initial rate stands
        }
        let rate = (bw as f64 * self.pacing_gain * PACING_MARGIN) as u64;
        if self.full_bw_reached || rate > self.pacing_rate {
            self.pacing_rate = rate;
        }
    }

    fn set_cwnd(&mut self, rs: &RateSample) {
        let mut target = self.inflight(self.cwnd_gain);
        if self.full_bw_reached {
            target = target.saturating_add(self.extra_acked());
        }
        if self.full_bw_reached {
            self.cwnd = self.cwnd.saturating_add(rs.acked).min(target);
        } else if self.cwnd < target || self.delivered < self.initial_cwnd {
            self.cwnd = self.cwnd.saturating_add(rs.acked);
        }
        let hi = if self.is_probing() {
            self.inflight_hi
        } else {
            self.headroom()
        };
        let cap = hi.min(self.inflight_lo);
        self.cwnd = self.cwnd.min(cap).max(self.min_pipe());
        if self.mode == Mode::ProbeRtt {
            self.cwnd = self.cwnd.min(self.probe_rtt_cwnd());
        }
    }
}

impl Controller for Bbr {
    fn wants_packet_calls(&self) -> bool {
        false
    }

    fn on_ack(&mut self, now: Instant, rs: &RateSample) {
        self.cwnd_limited_round |= rs.window_full;
        self.base_rtt = rs.min_rtt;
        self.update_round(rs);
        self.update_bw(rs);
        self.update_congestion_signals(rs);
        self.update_ack_aggregation(now, rs);
        self.check_startup_done(rs);
        self.check_drain(now, rs);
        self.update_upper_bound(now, rs);
        self.update_probe_bw(now, rs);
        self.update_min_rtt(now, rs);
        self.set_pacing_rate();
        self.set_cwnd(rs);
        if self.min_rtt.is_none() {
            // Before any RTT sample the initial rate stands.
            self.pacing_rate = self.pacing_rate.max(self.initial_pacing_rate(rs.srtt));
        }
    }

    fn on_packet_lost(&mut self, _now: Instant, bytes: u64, _in_flight: u64) {
        self.round_lost += bytes;
    }

    fn on_congestion_event(&mut self, _now: Instant, persistent: bool) {
        self.undo = Some(Bounds {
            bw_lo: self.bw_lo,
            inflight_lo: self.inflight_lo,
            inflight_hi: self.inflight_hi,
            cwnd: self.cwnd,
        });
        if !persistent
            && self.standing_queue(self.base_rtt)
            && matches!(self.mode, Mode::ProbeBw(_) | Mode::Drain)
        {
            // Congestive loss: a multiplicative decrease of the lower
            // bounds (at most once per round trip: loss epochs).
            self.bw_lo = (self.bw_lo.min(self.bw()) as f64 * BETA) as u64;
            self.inflight_lo = (self.inflight_lo.min(self.cwnd) as f64 * BETA) as u64;
        }
        if persistent {
            // Everything in flight was lost: start again from a small
            // window, keeping the model; the window regrows by what is
            // acked (doubling per round trip) up to the model's.
            self.prior_cwnd = self.prior_cwnd.max(self.cwnd);
            self.cwnd = self.min_pipe();
            self.full_bw_count = 0;
        }
    }

    fn on_spurious_congestion(&mut self) {
        if let Some(u) = self.undo.take() {
            self.bw_lo = self.bw_lo.max(u.bw_lo);
            self.inflight_lo = self.inflight_lo.max(u.inflight_lo);
            self.inflight_hi = self.inflight_hi.max(u.inflight_hi);
            self.cwnd = self.cwnd.max(u.cwnd);
        }
    }

    fn set_mtu(&mut self, mtu: u64) {
        if mtu > 0 && mtu != self.mtu {
            self.initial_cwnd = self.initial_cwnd / self.mtu * mtu;
            if self.delivered == 0 {
                self.cwnd = self.initial_cwnd;
                self.pacing_rate = self.initial_pacing_rate(self.initial_rtt);
            }
            self.mtu = mtu;
        }
    }

    fn window(&self) -> u64 {
        self.cwnd
    }

    fn pacing_rate(&self) -> u64 {
        self.pacing_rate
    }

    fn bandwidth(&self) -> u64 {
        self.bw()
    }

    fn state(&self) -> &'static str {
        match self.mode {
            Mode::Startup => "startup",
            Mode::Drain => "drain",
            Mode::ProbeBw(Phase::Down) => "probe_bw_down",
            Mode::ProbeBw(Phase::Cruise) => "probe_bw_cruise",
            Mode::ProbeBw(Phase::Refill) => "probe_bw_refill",
            Mode::ProbeBw(Phase::Up) => "probe_bw_up",
            Mode::ProbeRtt => "probe_rtt",
        }
    }
}
